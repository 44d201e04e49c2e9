//! Run strategies (`[run_strategy]` in pack.toml): what a start of a
//! pack's workflow does while others of that pack, of the same tenant, run.
//! A rule sees one workflow's facts only, so this is the server's, at the
//! one place every start goes through (`Runtime::start_as`: requests,
//! schedule ticks, signal subscriptions, child workflows):
//!
//! - `parallel` (with `limit`), `sequential`, `strict_sequential`: a start
//!   beyond the limit waits in a durable queue (aux `run-queue`, one key
//!   per start in order), and the workflow ending that frees a place
//!   starts the oldest (`run_next`, sent by `after_commit`). The queued
//!   start keeps its request id, so its workflow id is known at once and a
//!   repeat of the request neither queues it twice nor starts it twice.
//!   `strict_sequential` also stops the queue at a failed workflow (aux
//!   `run-blocked`) until a restart of it (request id `restart:ID:…`, as
//!   `stoa dag restart` makes) completes; that restart is not queued.
//! - `first_only`: a start while one runs is refused (FAILED_PRECONDITION),
//!   creating nothing.
//! - `last_only`: a start cancels the running ones first.
//!
//! Decisions for a pack are serialized by a lock of its own, and read the
//! running workflows from the store, which is exact on one server. A
//! cluster's servers would each see their own starts race, so a pack with
//! a run strategy is refused there (with the reason) rather than enforced
//! loosely.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use serde::{Deserialize, Serialize};
use stoa_engine::workflow::{Input, Origin, Status};
use stoa_engine::WorkflowId;
use stoa_rules::manifest::RunStrategy;
use stoa_rules::testcase::FactSpec;
use tokio::sync::{Mutex, MutexGuard};

use crate::error::ApiError;
use crate::runtime::Runtime;

const QUEUE: &str = "run-queue";
const BLOCKED: &str = "run-blocked";

/// A start waiting for its turn.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Queued {
    request_id: String,
    facts: Vec<FactSpec>,
    origin: Origin,
}

/// Locks by pack, striped. Their own, not the signal routing locks: a
/// signal's routing holds one of those while it starts workflows.
static LOCKS: LazyLock<[Mutex<()>; 64]> = LazyLock::new(|| std::array::from_fn(|_| Mutex::new(())));

async fn lock(tenant: &str, pack: &str) -> MutexGuard<'static, ()> {
    let key = format!("{tenant}/{pack}");
    LOCKS[stoa_rules::compile::fnv1a(key.as_bytes(), 0xcbf29ce484222325) as usize % 64].lock().await
}

/// Queue keys sort in start order: milliseconds, then a counter.
fn queue_key(tenant: &str, pack: &str, now_ms: u64) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed) % 1_000_000;
    format!("{tenant}/{pack}/{now_ms:015}{n:06}")
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

impl Runtime {
    /// The run strategy of a pack's current version.
    pub(crate) fn run_strategy_of(&self, tenant: &str, pack: &str) -> Option<RunStrategy> {
        self.packs
            .get(&(tenant.to_string(), pack.to_string()))
            .and_then(|v| v.stable())
            .and_then(|p| p.manifest.run_strategy)
    }

    /// Whether a start of this request id waits in its pack's queue.
    pub(crate) fn is_queued(&self, tenant: &str, pack: &str, request_id: &str) -> Result<bool, ApiError> {
        Ok(self.queued(tenant, pack)?.iter().any(|(_, q)| q.request_id == request_id))
    }

    fn queued(&self, tenant: &str, pack: &str) -> Result<Vec<(String, Queued)>, ApiError> {
        let list = self.store.scan_aux(QUEUE, &format!("{tenant}/{pack}/"))?;
        list.into_iter().map(|(k, v)| Ok((k, serde_json::from_value(v).map_err(internal)?))).collect()
    }

    fn blocked_by(&self, tenant: &str, pack: &str) -> Result<Option<String>, ApiError> {
        Ok(self.store.get_aux(BLOCKED, &format!("{tenant}/{pack}"))?.and_then(|v| v.as_str().map(str::to_string)))
    }

    /// `start_as` for a pack with a run strategy.
    pub(crate) async fn start_by_strategy(
        self: &Arc<Self>,
        strategy: RunStrategy,
        tenant: &str,
        pack: &str,
        facts: Vec<FactSpec>,
        request_id: &str,
        origin: Origin,
    ) -> Result<(WorkflowId, bool), ApiError> {
        if self.opts.placement.is_cluster() {
            return Err(ApiError::FailedPrecondition(format!(
                "pack {pack} has a run strategy ({}), which one server enforces; a cluster does not yet",
                strategy.mode()
            )));
        }
        // A repeat of a start that happened is answered as before.
        if self.store.request(&format!("{tenant}/{request_id}"))?.is_some() {
            return self.start_now(tenant, pack, facts, request_id, origin).await;
        }
        let _guard = lock(tenant, pack).await;
        let id = self.workflow_for_request(tenant, request_id)?;
        if self.is_queued(tenant, pack, request_id)? {
            return Ok((id, false));
        }
        let running = self.running_of(tenant, pack)?;
        let limit = match strategy {
            RunStrategy::FirstOnly => {
                if let Some(first) = running.first() {
                    return Err(ApiError::FailedPrecondition(format!(
                        "{first} of pack {pack} is running, and the pack's run strategy is first_only: this start is dropped"
                    )));
                }
                return self.start_now(tenant, pack, facts, request_id, origin).await;
            }
            RunStrategy::LastOnly => {
                for wf in running {
                    let reason = format!("superseded by a newer start of {pack} (run strategy last_only)");
                    match self.turn(tenant, &wf, Input::Cancel { reason, grace_ms: None }).await {
                        // Ended meanwhile.
                        Ok(_) | Err(ApiError::Rejected(_)) | Err(ApiError::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                return self.start_now(tenant, pack, facts, request_id, origin).await;
            }
            s => s.limit().unwrap_or(1) as usize,
        };
        let blocked = match strategy {
            RunStrategy::StrictSequential => self.blocked_by(tenant, pack)?,
            _ => None,
        };
        if let Some(b) = &blocked {
            // A restart of the failed workflow is how the queue goes on.
            if request_id.starts_with(&format!("restart:{b}:")) && running.is_empty() {
                return self.start_now(tenant, pack, facts, request_id, origin).await;
            }
        }
        if blocked.is_none() && running.len() < limit && self.queued(tenant, pack)?.is_empty() {
            return self.start_now(tenant, pack, facts, request_id, origin).await;
        }
        let q = Queued { request_id: request_id.to_string(), facts, origin };
        let key = queue_key(tenant, pack, self.clock.now_ms());
        self.store.put_aux(QUEUE, &key, &serde_json::to_value(&q).map_err(internal)?)?;
        tracing::info!(tenant, pack, workflow = %id, running = running.len(), blocked = ?blocked, "start queued by the pack's run strategy");
        Ok((id, true))
    }

    /// A workflow of a pack with a run strategy ended (or the server
    /// started): record a strict queue's block or its end, then start
    /// queued workflows while there is room.
    pub(crate) async fn run_next(
        self: &Arc<Self>,
        tenant: &str,
        pack: &str,
        ended: Option<(WorkflowId, Status, Option<String>)>,
    ) -> Result<(), ApiError> {
        let Some(strategy) = self.run_strategy_of(tenant, pack) else { return Ok(()) };
        let Some(limit) = strategy.limit() else { return Ok(()) };
        let _guard = lock(tenant, pack).await;
        let block_key = format!("{tenant}/{pack}");
        if let (RunStrategy::StrictSequential, Some((id, status, request))) = (strategy, &ended) {
            match status {
                Status::Failed => {
                    self.store.put_aux(BLOCKED, &block_key, &serde_json::Value::String(id.to_string()))?;
                    tracing::warn!(tenant, pack, workflow = %id, "a strict_sequential queue stops at a failed workflow until a restart of it completes");
                }
                Status::Completed => {
                    let blocked = self.blocked_by(tenant, pack)?;
                    let request = request.as_deref().and_then(|r| r.split_once('/')).map_or("", |(_, r)| r);
                    if blocked.is_some_and(|b| request.starts_with(&format!("restart:{b}:"))) {
                        self.store.delete_aux(BLOCKED, &block_key)?;
                    }
                }
                _ => {}
            }
        }
        if strategy == RunStrategy::StrictSequential && self.blocked_by(tenant, pack)?.is_some() {
            return Ok(());
        }
        loop {
            if self.running_of(tenant, pack)?.len() >= limit as usize {
                return Ok(());
            }
            let Some((key, q)) = self.queued(tenant, pack)?.into_iter().next() else { return Ok(()) };
            // Started, then dropped from the queue: a crash in between
            // starts it again, which its request id makes a repeat.
            match self.start_now(tenant, pack, q.facts, &q.request_id, q.origin).await {
                Ok(_) => {}
                // One that can never start (its pack's schemas refuse its
                // facts) must not hold the queue.
                Err(e @ (ApiError::InvalidArgument(_) | ApiError::Rejected(_) | ApiError::NotFound(_))) => {
                    tracing::error!(tenant, pack, request_id = q.request_id, error = %e, "a queued start cannot start; dropped");
                }
                Err(e) => return Err(e),
            }
            self.store.delete_aux(QUEUE, &key)?;
        }
    }

    /// At start-up: the queues that have waiting starts may have room now
    /// (their workflows ended while the server was down).
    pub(crate) fn resume_run_queues(self: &Arc<Self>) {
        if self.opts.placement.is_cluster() {
            return;
        }
        let keys = match self.store.scan_aux(QUEUE, "") {
            Ok(list) => list.into_iter().map(|(k, _)| k).collect::<Vec<_>>(),
            Err(e) => return tracing::error!(error = %e, "loading run queues"),
        };
        let mut packs: Vec<(String, String)> = keys
            .iter()
            .filter_map(|k| {
                let mut it = k.splitn(3, '/');
                Some((it.next()?.to_string(), it.next()?.to_string()))
            })
            .collect();
        packs.dedup();
        for (tenant, pack) in packs {
            let rt = self.clone();
            tokio::spawn(async move {
                if let Err(e) = rt.run_next(&tenant, &pack, None).await {
                    tracing::error!(tenant, pack, error = %e, "starting queued workflows");
                }
            });
        }
    }
}
