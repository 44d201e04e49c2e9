//! Time as the server reads it, injected rather than read from the system
//! in each module: wall milliseconds for what is recorded (timelines,
//! timers, schedules, retry times), monotonic instants for what is waited
//! on (leases, heartbeats, backoff), and the jitter of backoffs from a
//! seeded generator, never from the clock's low bits.
//!
//! The server runs on the system's clock. The simulation (`sim`) runs on a
//! virtual one: tokio's paused clock, which moves only when every task
//! waits, straight to the next timer; wall time is a fixed epoch plus how
//! far it moved. Instants are tokio's in both cases, which are the
//! standard library's unless tokio's `test-util` feature (tests only) is
//! on, so production reads time exactly as before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use tokio::time::Instant;

#[derive(Clone)]
pub struct Clock {
    wall: Wall,
    /// State of the jitter generator (SplitMix64), shared by the clones.
    jitter: Arc<AtomicU64>,
}

#[derive(Clone, Copy)]
enum Wall {
    System,
    /// `epoch_ms` at `base`, moving with tokio's clock.
    #[cfg_attr(not(test), allow(dead_code))] // the simulation's
    Virtual {
        epoch_ms: u64,
        base: Instant,
    },
}

impl Clock {
    /// The system's clock; jitter seeded from the time it starts.
    pub fn system() -> Clock {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        Clock { wall: Wall::System, jitter: Arc::new(AtomicU64::new(seed)) }
    }

    /// A clock that reads `epoch_ms` now and moves with tokio's clock from
    /// here (virtual time where the runtime's clock is paused); jitter
    /// from `seed`. Call it inside the runtime.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn starting_at(epoch_ms: u64, seed: u64) -> Clock {
        Clock { wall: Wall::Virtual { epoch_ms, base: Instant::now() }, jitter: Arc::new(AtomicU64::new(seed)) }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.now_us() / 1000
    }

    /// Microseconds since the Unix epoch.
    pub fn now_us(&self) -> u64 {
        match self.wall {
            Wall::System => {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
            }
            Wall::Virtual { epoch_ms, base } => epoch_ms * 1000 + base.elapsed().as_micros() as u64,
        }
    }

    /// A monotonic instant, for deadlines.
    pub fn now(&self) -> Instant {
        Instant::now()
    }

    /// `d` spread by ±20%, so that retries of many invocations that failed
    /// together do not come back together.
    pub fn jitter(&self, d: Duration) -> Duration {
        let x = mix(self.jitter.fetch_add(GOLDEN, Ordering::Relaxed).wrapping_add(GOLDEN)) >> 54;
        d.mul_f64(0.8 + (x as f64 / 1024.0) * 0.4)
    }
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's finalizer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Calls `f` every `period` (on tokio's clock, so on virtual time in the
/// simulation) until `shutdown`; a late tick is not made up.
pub async fn every(period: Duration, shutdown: tokio_util::sync::CancellationToken, mut f: impl FnMut()) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => f(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_virtual_clock_moves_with_tokio_time_and_its_jitter_replays() {
        let c = Clock::starting_at(1_000_000, 7);
        assert_eq!(c.now_ms(), 1_000_000);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(c.now_ms(), 1_001_500);
        let spread: Vec<Duration> = (0..64).map(|_| c.jitter(Duration::from_millis(1000))).collect();
        assert!(spread.iter().all(|d| *d >= Duration::from_millis(800) && *d <= Duration::from_millis(1200)));
        assert!(
            spread.iter().any(|d| *d < Duration::from_millis(950))
                && spread.iter().any(|d| *d > Duration::from_millis(1050))
        );
        let again = Clock::starting_at(0, 7);
        assert_eq!(spread, (0..64).map(|_| again.jitter(Duration::from_millis(1000))).collect::<Vec<_>>());
    }
}
