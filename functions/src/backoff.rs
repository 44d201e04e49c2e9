//! Reconnect delays: exponential, bounded, with jitter so that a fleet of
//! workers cut off by one server restart does not reconnect in lockstep.

use std::time::Duration;

#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        Backoff { min, max, next: min }
    }

    /// The delay before the next attempt: uniformly in [d/2, d] for the
    /// current step d ("equal jitter"), so a delay never collapses to zero
    /// and hammers a server that is coming up.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = step / 2;
        let jitter_nanos = fastrand::u64(0..=half.as_nanos().min(u64::MAX as u128) as u64);
        half + Duration::from_nanos(jitter_nanos)
    }

    /// After a session got as far as `Welcome`, the next break starts over
    /// from the shortest delay.
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_bound_and_resets() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(10));
        let mut backoff = Backoff::new(min, max);
        let first = backoff.next_delay();
        assert!(first >= min / 2 && first <= min, "{first:?}");
        for _ in 0..20 {
            let delay = backoff.next_delay();
            assert!(delay <= max, "{delay:?}");
        }
        let late = backoff.next_delay();
        assert!(late >= max / 2, "{late:?}");
        backoff.reset();
        assert!(backoff.next_delay() <= min);
    }
}
