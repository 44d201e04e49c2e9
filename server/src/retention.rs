//! Retention: finished workflows (completed or failed) are deleted whole
//! once `retain_finished_ms` has passed since they finished, so that the
//! store, and sled's memory, which grows with it, stay bounded under a
//! steady load. Commits index finished workflows by the time they finished
//! (`Store::finished_before`), so a sweep reads only what it deletes.
//!
//! A delete is not flushed by itself: one a crash loses is found again by
//! the next sweep. A workflow in memory is unloaded under its lock first,
//! and the lock is held until the delete is done.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::runtime::Runtime;

/// How often the sweeper looks.
const EVERY: Duration = Duration::from_secs(1);
/// Workflows deleted per store call: a bounded sled batch, and short
/// holds of their locks.
const BATCH: usize = 256;
/// Workflows deleted per sweep at most, so that a backlog (a retention
/// just shortened) is worked off without taking the store from the turns.
const PER_SWEEP: usize = 20_000;

/// Runs until `shutdown`.
pub async fn run(rt: Arc<Runtime>, shutdown: CancellationToken) {
    crate::clock::every(EVERY, shutdown, || {
        let deleted = sweep(&rt);
        if deleted > 0 {
            tracing::debug!(deleted, "deleted finished workflows past their retention");
        }
    })
    .await
}

/// One sweep: how many workflows it deleted.
fn sweep(rt: &Runtime) -> usize {
    let before = rt.clock.now_ms().saturating_sub(rt.opts.retain_finished_ms);
    let mut deleted = 0;
    while deleted < PER_SWEEP {
        let due = match rt.store.finished_before(before, BATCH) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::debug!(error = %e, "retention: the store cannot be read; trying again later");
                return deleted;
            }
        };
        let full = due.len() == BATCH;
        let (ids, held) = rt.hold_for_delete(due);
        let n = match rt.store.delete_finished(&ids) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "retention: the store cannot write; trying again later");
                return deleted;
            }
        };
        drop(held);
        deleted += n;
        // Fewer than asked: none left. None deleted: the ones left are busy.
        if !full || n == 0 {
            break;
        }
    }
    deleted
}
