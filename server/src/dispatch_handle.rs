//! The way into the dispatcher: the events its task handles, and the
//! handle that sends them and counts each tenant's pending invocations.
//! Apart from `dispatcher`: the runtime holds the handle, and the task,
//! which hands outcomes back to the runtime, sits above it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use stoa_engine::store::Attempts;
use stoa_engine::workflow::Invocation;
use stoa_engine::InvocationId;
use stoa_proto::v1 as pb;
use tokio::sync::mpsc;

pub type SessionId = u64;

pub enum Event {
    Enqueue {
        tenant: String,
        invocations: Vec<Invocation>,
    },
    /// Invocations from the store after a restart, with how far they got.
    Restore {
        tenant: String,
        invocations: Vec<(Invocation, Attempts)>,
    },
    Cancel(Vec<InvocationId>),
    /// The partitions left this server: drop their invocations (another
    /// server dispatches them now; a worker's late answer is refused here).
    Forget(stoa_engine::store::Parts),
    /// The cluster's servers changed: tell every worker.
    Members(Vec<String>),
    Connect {
        session: SessionId,
        tenant: String,
        functions: Vec<String>,
        max_in_flight: usize,
        tx: mpsc::Sender<pb::ServerMessage>,
    },
    Disconnect(SessionId),
    /// The worker drains: lease it nothing more.
    Drain(SessionId),
    /// A message with no place in the session; the worker is told.
    Unexpected {
        session: SessionId,
        what: String,
    },
    Result {
        session: SessionId,
        result: pb::InvocationResult,
    },
    Heartbeat {
        session: SessionId,
        invocation: String,
        attempt: u32,
    },
    /// A scrape: the dispatcher's gauges (backlog, workers, slots).
    Gauges(tokio::sync::oneshot::Sender<crate::metrics::Gauges>),
    /// The tenant's worker sessions and its backlog per function (the
    /// console's workers page).
    Workers {
        tenant: String,
        tx: tokio::sync::oneshot::Sender<WorkersView>,
    },
    /// What it knows of these invocations of a tenant (each with its
    /// function), in the same order (`stoa describe`).
    Inspect {
        tenant: String,
        invocations: Vec<(InvocationId, String)>,
        tx: tokio::sync::oneshot::Sender<Vec<Inspected>>,
    },
}

/// What the dispatcher knows of one invocation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inspected {
    /// "queued", "running", "backoff", "answered" (its outcome is being
    /// applied), or "" (not here).
    pub state: &'static str,
    /// The attempt being made or to be made next, from 1 (0: not here).
    pub attempt: u32,
    /// When the next attempt is due (ms since the epoch), while backing off.
    pub retry_at_ms: u64,
    /// Failed attempts since this server took it on, oldest first (the
    /// last `KEPT_FAILURES`).
    pub failed: Vec<FailedAttempt>,
    /// Sessions of the tenant serving the function, not draining.
    pub workers: u32,
    /// The worker session running the attempt, while one does.
    pub session: Option<SessionId>,
    /// When the running attempt times out (start-to-close; ms since the
    /// epoch), while one runs.
    pub deadline_ms: u64,
}

/// A tenant's workers as the dispatcher sees them.
#[derive(Clone, Debug, Default)]
pub struct WorkersView {
    pub sessions: Vec<WorkerSession>,
    /// Every function with a session or an invocation, by name.
    pub functions: Vec<FunctionLoad>,
}

#[derive(Clone, Debug)]
pub struct WorkerSession {
    pub session: SessionId,
    pub functions: Vec<String>,
    pub max_in_flight: usize,
    pub in_flight: usize,
    pub draining: bool,
}

#[derive(Clone, Debug, Default)]
pub struct FunctionLoad {
    pub function: String,
    pub queued: usize,
    pub running: usize,
    pub backoff: usize,
    /// Sessions serving it, not draining, and their free slots.
    pub workers: u32,
    pub free_slots: usize,
}

/// An attempt that ended without a final outcome (the engine's type: the
/// outcome carries them to the timeline).
pub use stoa_engine::workflow::FailedAttempt;

/// How many failed attempts an invocation keeps in memory.
pub const KEPT_FAILURES: usize = 10;

/// A cheap, cloneable handle to the dispatcher task.
#[derive(Clone)]
pub struct DispatchHandle {
    tx: mpsc::UnboundedSender<Event>,
    /// Shared with the dispatcher, which counts off what ends.
    pub(crate) pending: Arc<DashMap<String, AtomicUsize>>,
}

impl DispatchHandle {
    /// The dispatcher's gauges; `None` once it has stopped.
    pub async fn gauges(&self) -> Option<crate::metrics::Gauges> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx.send(Event::Gauges(tx)).ok()?;
        rx.await.ok()
    }

    /// The tenant's worker sessions and backlog; `None` once the
    /// dispatcher has stopped.
    pub async fn workers(&self, tenant: String) -> Option<WorkersView> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx.send(Event::Workers { tenant, tx }).ok()?;
        rx.await.ok()
    }

    /// What the dispatcher knows of these invocations (each with its
    /// function), in order; `None` once it has stopped.
    pub async fn inspect(&self, tenant: String, invocations: Vec<(InvocationId, String)>) -> Option<Vec<Inspected>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx.send(Event::Inspect { tenant, invocations, tx }).ok()?;
        rx.await.ok()
    }

    /// Queues invocations; `reserved`: they were counted by `reserve`.
    pub fn enqueue(&self, tenant: String, invocations: Vec<Invocation>, reserved: bool) {
        if !reserved {
            self.pending.entry(tenant.clone()).or_default().fetch_add(invocations.len(), Ordering::Relaxed);
        }
        if !invocations.is_empty() {
            let _ = self.tx.send(Event::Enqueue { tenant, invocations });
        }
    }

    /// Counts `n` invocations a turn is about to commit, if the tenant
    /// stays within `max` with them (exact backpressure: concurrent turns
    /// cannot all pass a check made before any of them counts).
    pub fn reserve(&self, tenant: &str, n: usize, max: usize) -> bool {
        let p = self.pending.entry(tenant.to_string()).or_default();
        n == 0 || p.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| (v + n <= max).then_some(v + n)).is_ok()
    }

    /// Gives back what `reserve` counted for a turn that did not commit.
    pub fn release(&self, tenant: &str, n: usize) {
        if let Some(p) = self.pending.get(tenant) {
            let _ = p.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_sub(n)));
        }
    }

    pub fn restore(&self, tenant: String, invocations: Vec<(Invocation, Attempts)>) {
        self.pending.entry(tenant.clone()).or_default().fetch_add(invocations.len(), Ordering::Relaxed);
        let _ = self.tx.send(Event::Restore { tenant, invocations });
    }

    pub fn cancel(&self, ids: Vec<InvocationId>) {
        let _ = self.tx.send(Event::Cancel(ids));
    }

    pub fn send(&self, e: Event) {
        let _ = self.tx.send(e);
    }

    /// Invocations of a tenant queued, backing off or running.
    pub fn pending(&self, tenant: &str) -> usize {
        self.pending.get(tenant).map(|p| p.load(Ordering::Relaxed)).unwrap_or(0)
    }
}

/// The handle and the receiving end; `dispatcher::run` consumes the latter.
pub fn channel() -> (DispatchHandle, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (DispatchHandle { tx, pending: Arc::new(DashMap::new()) }, rx)
}
