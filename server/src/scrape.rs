//! What one scrape of `/metrics` reads: the gauges of state gathered from
//! the parts that own it (the runtime's workflows, the dispatcher's queues
//! and sessions, the store's size), then everything rendered as Prometheus
//! text. Scrapes run one at a time.

use std::sync::Arc;
use std::time::Duration;

use stoa_engine::store::Store;

use crate::dispatch_handle::DispatchHandle;
use crate::metrics::{name, Metrics};
use crate::runtime::Runtime;

/// How long a scrape waits for a part's gauges; a part that does not
/// answer in time keeps its last values.
const PART_WAIT: Duration = Duration::from_secs(2);

pub struct Scrape {
    pub metrics: Metrics,
    pub runtime: Arc<Runtime>,
    pub dispatch: DispatchHandle,
    pub store: Arc<dyn Store>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Scrape {
    pub fn new(metrics: Metrics, runtime: Arc<Runtime>, dispatch: DispatchHandle, store: Arc<dyn Store>) -> Scrape {
        Scrape { metrics, runtime, dispatch, store, one_at_a_time: Default::default() }
    }

    /// The Prometheus text of every metric, gauges gathered now.
    pub async fn text(&self) -> String {
        let _one = self.one_at_a_time.lock().await;
        let mut gauges = self.runtime.gauges();
        let mut stale: Vec<&'static str> = Vec::new();
        match tokio::time::timeout(PART_WAIT, self.dispatch.gauges()).await {
            Ok(Some(d)) => gauges.extend(d),
            _ => stale.extend([name::INVOCATIONS_PENDING, name::OLDEST_QUEUED, name::WORKERS, name::SLOTS_FREE]),
        }
        // Off the async threads: PostgreSQL answers over the network.
        let store = self.store.clone();
        match tokio::time::timeout(PART_WAIT, tokio::task::spawn_blocking(move || store.size_bytes())).await {
            Ok(Ok(Ok(Some(bytes)))) => gauges.set(name::STORE_SIZE, vec![], bytes as f64),
            Ok(Ok(Ok(None))) => {}
            _ => stale.push(name::STORE_SIZE),
        }
        self.metrics.publish(gauges, &stale);
        self.metrics.render()
    }
}
