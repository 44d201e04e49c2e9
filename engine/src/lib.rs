//! Stoa's engine core: facts, the matching network, the agenda, turns,
//! workflows, the timeline, storage and the dispatcher interface.
//!
//! Architecture invariant: nothing here does network I/O or spawns tasks;
//! the only I/O is the store, behind the `Store` trait, and the only
//! thread is `SledStore`'s healer.

pub mod coverage;
pub mod dispatch;
pub mod explain;
pub mod fact;
pub mod harness;
pub mod local;
pub mod network;
pub mod store;
pub mod timeline;
pub mod workflow;

#[cfg(any(test, feature = "conformance"))]
#[cfg_attr(not(test), allow(dead_code))]
mod testing;

pub use fact::{Fact, FactId, InvocationId, WorkflowId};
pub use workflow::{Input, Invocation, Outcome, Rejected, Status, TurnOutput, Workflow};
