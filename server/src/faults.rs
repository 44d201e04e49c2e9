//! Fault points: moments where a test makes the server fail on purpose,
//! injected like the clock instead of read from the environment. The
//! server runs with `Off`, which does nothing; the simulation crashes
//! the server at them, and the end-to-end tests abort a real process.

/// Called at the moments a crash is most telling. Each does nothing by
/// default.
pub trait Faults: Send + Sync {
    /// A schedule's tick started its workflow (`created`: this call made
    /// it), and the tick is not recorded yet: the window that the tick's
    /// deterministic request id protects.
    fn tick_started(&self, _tenant: &str, _schedule: &str, _created: bool) {}
}

/// No faults: what the server runs with.
pub struct Off;

impl Faults for Off {}
