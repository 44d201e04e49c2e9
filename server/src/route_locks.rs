//! Signal routing's locks, apart from `signals`: the runtime holds them,
//! and `signals` is built on the runtime.

use tokio::sync::{Mutex, MutexGuard};

/// One signal routes at a time per stripe: enough to make a repeated id
/// wait for the first, without one global lock.
pub struct RouteLocks([Mutex<()>; 64]);

impl Default for RouteLocks {
    fn default() -> Self {
        RouteLocks(std::array::from_fn(|_| Mutex::new(())))
    }
}

impl RouteLocks {
    /// The lock of the stripe a signal id falls in.
    pub async fn lock(&self, signal_id: &str) -> MutexGuard<'_, ()> {
        let stripe = stoa_rules::compile::fnv1a(signal_id.as_bytes(), 0xcbf29ce484222325) as usize % 64;
        self.0[stripe].lock().await
    }
}
