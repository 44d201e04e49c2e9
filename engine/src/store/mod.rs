//! Durable state behind one trait, so the embedded store (sled) can give
//! way to a distributed SQL engine without touching the engine.
//!
//! Invariant: only `store::sled_store` knows about sled (feature `sled`,
//! on by default); stores over a network live in crates of their own
//! (`stoa-pgstore`). Every record is encoded with a format version byte
//! first (see `codec`), under the keys of `layout` in the key-value stores,
//! in the columns of its tables in PostgreSQL.

pub mod codec;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod index;
mod layout;
#[cfg(any(test, feature = "mem"))]
mod mem;
#[cfg(feature = "sled")]
mod sled_store;

pub use index::{Family, ListCounts, ListQuery, ListStatus};
pub use layout::{decode_run, encode_run, timeline_runs, turn_writes, Write};
#[cfg(any(test, feature = "mem"))]
pub use mem::{Fault, FaultHook, Image, MemStore, Op};
#[cfg(feature = "sled")]
pub use sled_store::SledStore;

use crate::fact::{InvocationId, WorkflowId};
use crate::timeline::Entry;
use crate::workflow::{Invocation, Meta, Snapshot, Timer, TurnOutput};

#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error("storage I/O: {0}")]
    Io(String),
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("record {key} has format version {found}; this build reads version {expected}")]
    Version { key: String, found: u8, expected: u8 },
    /// The store belongs to a newer or incompatible build, or cannot be
    /// set up: not a passing failure, and no retry helps.
    #[error("{0}")]
    Setup(String),
    /// The commit touched partitions this server no longer owns (another
    /// server took them over): nothing of it was written. `workflows`: the
    /// commit's workflows in those partitions (the others may commit).
    #[error("partition(s) {partitions:?} moved to another server; nothing was written")]
    Fenced { partitions: Vec<u32>, workflows: Vec<WorkflowId> },
}

/// The partitions whose work a server acts on: their pending invocations,
/// timers and attempts. One server alone owns them all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parts {
    All,
    /// These of `count` partitions (see `WorkflowId::partition`).
    Some {
        count: u32,
        ids: std::collections::BTreeSet<u32>,
    },
}

impl Parts {
    pub fn has(&self, wf: &WorkflowId) -> bool {
        match self {
            Parts::All => true,
            Parts::Some { count, ids } => ids.contains(&wf.partition(*count)),
        }
    }

    /// Whether the invocation's workflow is in one of these partitions.
    pub fn has_invocation(&self, inv: &InvocationId) -> bool {
        match self {
            Parts::All => true,
            Parts::Some { .. } => inv.workflow().is_some_and(|wf| self.has(&wf)),
        }
    }
}

/// Whether a store works now. A failing store refuses every operation with
/// `Error::Io` while it heals (see `Store::on_health`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Serving,
    Failing,
}

/// Told a store's health at each change (`Store::on_health`).
pub type HealthWatcher = Box<dyn Fn(Health) + Send + Sync>;

/// A deployed pack version: its files, as uploaded.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PackRecord {
    pub tenant: String,
    pub name: String,
    pub version: String,
    /// Deploy order within the pack, from 1.
    pub seq: u64,
    pub digest: u64,
    pub deployed_ms: u64,
    pub files: std::collections::BTreeMap<String, String>,
}

/// The delivery history of a pending invocation, kept so that its retry
/// budget and backoff survive a restart of the dispatcher.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attempts {
    /// Attempts delivered that ended without a final outcome.
    pub made: u32,
    /// Those of them that count against the retry policy.
    pub failures: u32,
    /// The next attempt is not due before this (milliseconds since the epoch).
    pub retry_at_ms: u64,
}

/// One turn to commit.
pub struct Commit<'a> {
    pub workflow: &'a WorkflowId,
    pub output: &'a TurnOutput,
    /// A client request id that this turn answers (idempotent starts).
    pub request_id: Option<&'a str>,
    /// In a cluster: the epoch of the workflow's partition when the turn's
    /// state was loaded. A store that fences refuses the turn unless this
    /// server still holds the partition at that epoch (memory from before a
    /// partition moved away and back is not the stored state).
    pub epoch: Option<u64>,
}

pub trait Store: Send + Sync {
    /// Whether the store works now, or fails (and heals by itself).
    fn health(&self) -> Health {
        Health::Serving
    }

    /// Calls `f` with the store's health now, and again at each change
    /// (from the thread that saw it: keep `f` short, and do not call the
    /// store from it). A change may be reported twice. A store that never
    /// fails reports `Serving` once.
    fn on_health(&self, f: HealthWatcher) {
        f(self.health())
    }

    /// Commits the turns: each one whole or not at all, and all of them
    /// durable when this returns. A failed commit (or a crash) may leave a
    /// prefix of them, never a later turn without an earlier one.
    fn commit(&self, turns: &[Commit<'_>]) -> Result<(), Error>;

    /// The stored state of a workflow.
    fn load(&self, id: &WorkflowId) -> Result<Option<Snapshot>, Error>;

    /// Metadata of workflows whose id starts with `prefix`, in id order,
    /// after `after` (exclusive), at most `limit`.
    fn workflows(&self, prefix: &str, after: Option<&WorkflowId>, limit: usize) -> Result<Vec<Meta>, Error>;

    /// A page of a tenant's workflows, newest first, from the list index
    /// (`index`): reads the page, not the workflows before it.
    fn list(&self, q: &ListQuery<'_>) -> Result<Vec<Meta>, Error>;

    /// How many workflows of a tenant's family there are, per status.
    fn list_counts(&self, tenant: &str, family: Family<'_>) -> Result<ListCounts, Error>;

    /// Stores a deployed pack version (durably).
    fn put_pack(&self, pack: &PackRecord) -> Result<(), Error>;

    /// Every deployed version of every pack of a tenant, oldest first per pack.
    fn packs(&self, tenant: &str) -> Result<Vec<PackRecord>, Error>;

    /// The (name, deploy order) of every deployed version of a tenant's
    /// packs: what a server of a cluster compares with what it knows.
    fn pack_seqs(&self, tenant: &str) -> Result<Vec<(String, u64)>, Error> {
        Ok(self.packs(tenant)?.into_iter().map(|p| (p.name, p.seq)).collect())
    }

    /// One deployed version of a pack, by its deploy order.
    fn pack(&self, tenant: &str, name: &str, seq: u64) -> Result<Option<PackRecord>, Error> {
        Ok(self.packs(tenant)?.into_iter().find(|p| p.name == name && p.seq == seq))
    }

    /// Timeline entries with `seq >= from`, at most `limit`.
    fn timeline(&self, id: &WorkflowId, from: u64, limit: usize) -> Result<Vec<Entry>, Error>;

    /// Invocations made and not yet answered or cancelled, of workflows in
    /// `parts`.
    fn outbox(&self, parts: &Parts) -> Result<Vec<Invocation>, Error>;

    /// Records how far pending invocations got; durable with the next
    /// `commit`, and dropped when the invocation stops pending.
    fn record_attempts(&self, attempts: &[(InvocationId, Attempts)]) -> Result<(), Error>;

    /// The recorded attempts of pending invocations of workflows in `parts`.
    fn attempts(&self, parts: &Parts) -> Result<Vec<(InvocationId, Attempts)>, Error>;

    /// The workflow a client request id started, if any.
    fn request(&self, request_id: &str) -> Result<Option<WorkflowId>, Error>;

    /// Client request ids that start with `prefix` and the workflows they
    /// started, in key order, at most `limit` (a parent's children are the
    /// requests `<tenant>/child:<its invocation ids>`).
    fn requests(&self, prefix: &str, limit: usize) -> Result<Vec<(String, WorkflowId)>, Error>;

    /// Whether an invocation is still pending.
    fn pending(&self, id: &InvocationId) -> Result<bool, Error>;

    /// Every pending timer of every workflow in `parts`.
    fn timers(&self, parts: &Parts) -> Result<Vec<Timer>, Error>;

    /// Workflows that finished before `before_ms`, those that finished
    /// first first, at most `limit`.
    fn finished_before(&self, before_ms: u64, limit: usize) -> Result<Vec<WorkflowId>, Error>;

    /// Deletes finished workflows whole: meta, facts, timeline, the record
    /// of the request that started them, their place among the finished.
    /// One still running, or not there, is left alone. Durable with the
    /// next flush (a delete a crash loses is found and made again). Returns
    /// how many it deleted.
    fn delete_finished(&self, ids: &[WorkflowId]) -> Result<usize, Error>;

    /// Server records outside workflows (signals to route, lineage, upgrade
    /// jobs), by kind and key. Turns write kind `signal-out` themselves:
    /// a signal a rule emitted, until it is routed.
    fn put_aux(&self, kind: &str, key: &str, value: &serde_json::Value) -> Result<(), Error>;
    fn get_aux(&self, kind: &str, key: &str) -> Result<Option<serde_json::Value>, Error>;
    /// Records of `kind` whose key starts with `prefix`, in key order.
    fn scan_aux(&self, kind: &str, prefix: &str) -> Result<Vec<(String, serde_json::Value)>, Error>;
    fn delete_aux(&self, kind: &str, key: &str) -> Result<(), Error>;
    /// Writes many server records at once, `None` deleting one (kind, key,
    /// value). `SledStore` makes it all or none with one flush (a scheduler
    /// pass records thousands of schedules); this default writes them one
    /// by one.
    fn put_aux_batch(&self, records: &[(&str, &str, Option<&serde_json::Value>)]) -> Result<(), Error> {
        for (kind, key, value) in records {
            match value {
                Some(v) => self.put_aux(kind, key, v)?,
                None => self.delete_aux(kind, key)?,
            }
        }
        Ok(())
    }

    /// How many bytes the store takes, if it can tell (for a metric).
    fn size_bytes(&self) -> Result<Option<u64>, Error> {
        Ok(None)
    }
}

/// The aux kind under which a commit keeps emitted signals until routed.
pub const SIGNAL_OUTBOX: &str = "signal-out";
