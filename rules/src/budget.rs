//! The wall-clock budget of the turn running on this thread: its deadline
//! (the pack's `max_turn_ms`) and a stop flag its host may raise (a server
//! shutting down). Scripts consult it through the sandbox's progress hook,
//! and the engine between firings and inside large joins, so that a turn
//! always ends, whatever its rules do.
//!
//! Per thread, because a turn runs on one thread from start to end and the
//! sandbox's Rhai engine is shared by every workflow of a pack.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a turn must stop now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    #[error("the turn ran past its time limit of {0} ms (limit `max_turn_ms`)")]
    Time(u64),
    #[error("the turn was stopped: the server is shutting down")]
    Stopped,
}

impl Exceeded {
    /// Whether the workflow itself is at fault (a deadline), rather than
    /// its host (a shutdown, after which the turn is simply not committed).
    pub fn is_workflow_fault(&self) -> bool {
        matches!(self, Exceeded::Time(_))
    }
}

thread_local! {
    static DEADLINE: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
    static STOP: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
    /// Calls since the clock was last read.
    static TICKS: Cell<u32> = const { Cell::new(0) };
}

/// Reading the clock costs about 20 ns; checks come every few hundred
/// nanoseconds in a busy turn, so every 64th reads it.
const CLOCK_EVERY: u32 = 64;

/// The deadline of a turn, for as long as it lives.
pub struct Turn {
    previous: Option<(Instant, u64)>,
}

/// Starts the budget of a turn of at most `max_ms` on this thread.
pub fn turn(max_ms: u64) -> Turn {
    let deadline = Instant::now().checked_add(Duration::from_millis(max_ms)).map(|d| (d, max_ms));
    TICKS.with(|t| t.set(0));
    Turn { previous: DEADLINE.with(|d| d.replace(deadline)) }
}

impl Drop for Turn {
    fn drop(&mut self) {
        DEADLINE.with(|d| d.set(self.previous));
    }
}

/// Makes every later turn on this thread stop as soon as `flag` is set.
pub fn stop_on(flag: Arc<AtomicBool>) {
    STOP.with(|s| *s.borrow_mut() = Some(flag));
}

/// Whether the turn on this thread must stop. Cheap enough for hot loops.
pub fn check() -> Result<(), Exceeded> {
    let n = TICKS.with(|t| {
        let n = t.get().wrapping_add(1);
        t.set(n);
        n
    });
    if !n.is_multiple_of(CLOCK_EVERY) {
        return Ok(());
    }
    check_now()
}

/// `check`, reading the clock every time.
pub fn check_now() -> Result<(), Exceeded> {
    if STOP.with(|s| s.borrow().as_ref().is_some_and(|f| f.load(Ordering::Relaxed))) {
        return Err(Exceeded::Stopped);
    }
    match DEADLINE.with(Cell::get) {
        Some((at, ms)) if Instant::now() >= at => Err(Exceeded::Time(ms)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_runs_out_and_the_next_starts_afresh() {
        let t = turn(0);
        assert_eq!(check_now(), Err(Exceeded::Time(0)));
        drop(t);
        assert_eq!(check_now(), Ok(()));
        let _t = turn(60_000);
        assert_eq!(check_now(), Ok(()));
    }

    #[test]
    fn a_raised_stop_flag_stops_every_turn_of_the_thread() {
        std::thread::spawn(|| {
            let flag = Arc::new(AtomicBool::new(false));
            stop_on(flag.clone());
            let _t = turn(60_000);
            assert_eq!(check_now(), Ok(()));
            flag.store(true, Ordering::Relaxed);
            assert_eq!(check_now(), Err(Exceeded::Stopped));
            assert!((0..CLOCK_EVERY).any(|_| check().is_err()));
        })
        .join()
        .unwrap();
    }
}
