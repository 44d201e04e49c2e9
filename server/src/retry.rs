//! Work the server owes must not be lost to a storage failure: a
//! function's outcome, a child's answer, a signal to route, an upgrade
//! step. Each is tried again while it fails with `Unavailable` (the store
//! cannot write now), with backoff, and not at all while the store reports
//! that it is failing: a try then would only be refused. One try per pause,
//! so a failure costs each piece of owed work one cheap refusal per pause.

use std::future::Future;
use std::time::Duration;

use stoa_engine::store::{Health, Store};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::error::ApiError;

/// The first pause, doubled after each failed try up to `MAX_PAUSE`: the
/// store's healer retries as often (100 ms to 2 s).
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// Pauses between the tries of one piece of work.
pub(crate) struct Backoff {
    pause: Duration,
    clock: Clock,
}

impl Backoff {
    pub fn new(clock: &Clock) -> Backoff {
        Backoff { pause: FIRST_PAUSE, clock: clock.clone() }
    }

    /// Waits for the next try: the pause (with jitter), and longer while
    /// the store is failing. `false`: `stop` was cancelled meanwhile.
    pub async fn pause(&mut self, store: &dyn Store, stop: &CancellationToken) -> bool {
        loop {
            let pause = self.clock.jitter(self.pause);
            self.pause = (self.pause * 2).min(MAX_PAUSE);
            tokio::select! {
                biased;
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(pause) => {}
            }
            if store.health() == Health::Serving {
                return true;
            }
        }
    }
}

/// Runs `f` until it ends other than with `Unavailable`, or `stop` is
/// cancelled (then its last `Unavailable`). `what` names the work in logs.
pub(crate) async fn until_stored<T, Fut>(
    store: &dyn Store,
    clock: &Clock,
    stop: &CancellationToken,
    what: &str,
    mut f: impl FnMut() -> Fut,
) -> Result<T, ApiError>
where
    Fut: Future<Output = Result<T, ApiError>>,
{
    let mut backoff = Backoff::new(clock);
    let mut tries = 0u32;
    loop {
        match f().await {
            Err(ApiError::Unavailable(m)) => {
                tries += 1;
                if tries == 1 {
                    tracing::warn!(what, error = %m, "storage is unavailable; retrying until it is back");
                }
                if !backoff.pause(store, stop).await {
                    tracing::warn!(what, tries, "stopped retrying: the server is stopping");
                    return Err(ApiError::Unavailable(m));
                }
            }
            r => {
                if tries > 0 {
                    tracing::info!(what, tries, "done after the storage came back");
                }
                return r;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retries_only_unavailable_and_stops_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let store = stoa_engine::store::SledStore::open(dir.path(), 8).unwrap();
        let clock = Clock::system();
        let stop = CancellationToken::new();
        let mut left = 2;
        let r = until_stored(&store, &clock, &stop, "test", || {
            left -= 1;
            let r = if left >= 0 { Err(ApiError::Unavailable("full".into())) } else { Ok(7) };
            async move { r }
        })
        .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(left, -1, "two refusals, one success");

        let mut tries = 0;
        let r: Result<(), _> = until_stored(&store, &clock, &stop, "test", || {
            tries += 1;
            async { Err(ApiError::NotFound("gone".into())) }
        })
        .await;
        assert!(matches!(r, Err(ApiError::NotFound(_))) && tries == 1, "other errors are not retried");

        stop.cancel();
        let r: Result<(), _> =
            until_stored(&store, &clock, &stop, "test", || async { Err(ApiError::Unavailable("full".into())) }).await;
        assert!(matches!(r, Err(ApiError::Unavailable(_))));
    }
}
