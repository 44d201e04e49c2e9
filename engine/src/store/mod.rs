//! Durable state behind one trait, so the embedded store (sled) can give
//! way to a distributed SQL engine without touching the engine.
//!
//! Invariant: only `store::sled` knows about sled. Every record is encoded
//! with a format version byte first (see `codec`).

mod codec;
mod sled_store;

pub use sled_store::SledStore;

use crate::fact::{InvocationId, WorkflowId};
use crate::timeline::Entry;
use crate::workflow::{Invocation, Meta, Snapshot, TurnOutput};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage I/O: {0}")]
    Io(String),
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("record {key} has format version {found}; this build reads version {expected}")]
    Version { key: String, found: u8, expected: u8 },
}

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

/// A record the engine does not interpret, written by the server (its
/// schedules, for one): JSON under a kind and a key.
pub struct Record<'a> {
    pub kind: &'a str,
    pub key: &'a str,
    /// `None` deletes the record.
    pub value: Option<&'a serde_json::Value>,
}

/// One turn to commit.
pub struct Commit<'a> {
    pub workflow: &'a WorkflowId,
    pub output: &'a TurnOutput,
    /// A client request id that this turn answers (idempotent starts).
    pub request_id: Option<&'a str>,
}

pub trait Store: Send + Sync {
    /// Commits the turns: each one whole or not at all, and all of them
    /// durable when this returns.
    fn commit(&self, turns: &[Commit<'_>]) -> Result<(), Error>;

    /// The stored state of a workflow.
    fn load(&self, id: &WorkflowId) -> Result<Option<Snapshot>, Error>;

    /// Metadata of workflows whose id starts with `prefix`, in id order,
    /// after `after` (exclusive), at most `limit`.
    fn workflows(&self, prefix: &str, after: Option<&WorkflowId>, limit: usize) -> Result<Vec<Meta>, Error>;

    /// Stores a deployed pack version (durably).
    fn put_pack(&self, pack: &PackRecord) -> Result<(), Error>;

    /// Every deployed version of every pack of a tenant, oldest first per pack.
    fn packs(&self, tenant: &str) -> Result<Vec<PackRecord>, Error>;

    /// Timeline entries with `seq >= from`, at most `limit`.
    fn timeline(&self, id: &WorkflowId, from: u64, limit: usize) -> Result<Vec<Entry>, Error>;

    /// Invocations made and not yet answered or cancelled.
    fn outbox(&self) -> Result<Vec<Invocation>, Error>;

    /// The workflow a client request id started, if any.
    fn request(&self, request_id: &str) -> Result<Option<WorkflowId>, Error>;

    /// Whether an invocation is still pending.
    fn pending(&self, id: &InvocationId) -> Result<bool, Error>;

    /// Writes (or deletes) server records: all or none, durable when this
    /// returns.
    fn put_records(&self, records: &[Record<'_>]) -> Result<(), Error>;

    /// Every record of a kind, as (key, value), in key order.
    fn records(&self, kind: &str) -> Result<Vec<(String, serde_json::Value)>, Error>;
}
