//! What the background task (`background`) is asked to do, apart from it:
//! the runtime asks, and the background is built on the runtime.

use stoa_engine::store::Parts;
use stoa_engine::workflow::{Invocation, Outcome, Signal};
use stoa_engine::{InvocationId, WorkflowId};

/// What turns (and `health`, with `Healed`: the store healed, re-read the
/// timers and the signals to route) ask of the background.
pub enum Background {
    Timer {
        workflow: WorkflowId,
        id: u64,
        due_ms: u64,
    },
    Signal {
        tenant: String,
        signal: Signal,
    },
    StartChild(Invocation),
    CancelChild(InvocationId),
    ChildDone {
        parent: InvocationId,
        outcome: Outcome,
    },
    Healed,
    /// A workflow of a pack with a run strategy ended: start what its
    /// queue holds, if there is room (see `run_strategy`).
    RunNext {
        tenant: String,
        pack: String,
        ended: (WorkflowId, stoa_engine::workflow::Status, Option<String>),
    },
    /// Partitions came to this server: act on their stored timers and
    /// signals to route.
    Adopt(Parts),
    /// Partitions left this server: drop their timers.
    Forget(Parts),
}
