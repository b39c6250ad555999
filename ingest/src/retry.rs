//! The one retry policy of every loop that waits for a server to come back
//! (the broker, Redis, the catalog and object store, the schema registry,
//! the dead-letter topic, the deltas stream): 100 ms doubling up to 5 s,
//! each delay plus a random jitter of up to itself, so that members
//! restarted together do not retry in lockstep. Built on `backon`; the
//! loops keep their own logging and cancellation.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// First delay.
pub const MIN_DELAY: Duration = Duration::from_millis(100);
/// Longest delay before jitter.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// Delays between attempts, endless.
#[derive(Debug)]
pub struct Backoff {
    delays: ExponentialBackoff,
    attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

fn builder() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(MIN_DELAY)
        .with_max_delay(MAX_DELAY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

impl Backoff {
    /// The policy, from its first delay.
    pub fn new() -> Self {
        Backoff {
            delays: builder().build(),
            attempts: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        self.delays.next().unwrap_or(MAX_DELAY)
    }

    /// Delays handed out since the start (or the last [`Backoff::reset`]).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// True once the delays stopped growing (the server has been away for
    /// several seconds).
    pub fn at_max(&self) -> bool {
        // 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, then 5 s.
        self.attempts >= 7
    }

    /// Starts over from the first delay (after a success).
    pub fn reset(&mut self) {
        *self = Backoff::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_to_the_cap_with_jitter_and_never_end() {
        let mut b = Backoff::new();
        let delays: Vec<Duration> = (0..40).map(|_| b.next_delay()).collect();
        let base = |i: u32| (MIN_DELAY * 2u32.pow(i.min(6))).min(MAX_DELAY);
        for (i, d) in delays.iter().enumerate() {
            let lo = base(i as u32);
            assert!(
                *d >= lo && *d <= lo * 2,
                "attempt {i}: {d:?} not within [{lo:?}, {:?}]",
                lo * 2
            );
        }
        assert!(b.at_max());
        // Jitter: two policies do not retry in lockstep.
        let mut other = Backoff::new();
        let theirs: Vec<Duration> = (0..40).map(|_| other.next_delay()).collect();
        assert_ne!(delays, theirs);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert!(b.next_delay() <= MIN_DELAY * 2);
    }
}
