//! A circuit breaker for counter reads (SPEC §6 degradation). After
//! `failures` consecutive failed or slow reads it opens: reads are not sent
//! to Redis for `cooldown` and callers answer from the last known values,
//! marked stale. Then one probe read is let through (half-open); its
//! success closes the breaker, its failure opens it again. It recovers by
//! itself, and a dead Redis costs a caller nothing but a stale answer.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The breaker's state, for metrics and `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Reads go to Redis.
    Closed,
    /// Reads are refused until the cooldown ends.
    Open,
    /// One probe read is in flight.
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

/// The breaker.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    inner: Mutex<Inner>,
}

impl Breaker {
    /// Opens after `threshold` consecutive failures, for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            inner: Mutex::new(Inner {
                failures: 0,
                open_until: None,
                probing: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a read may go to Redis now.
    pub fn allow(&self, now: Instant) -> bool {
        let mut s = self.lock();
        match s.open_until {
            None => true,
            Some(t) if now < t => false,
            Some(_) if s.probing => false,
            Some(_) => {
                s.probing = true;
                true
            }
        }
    }

    /// A read succeeded.
    pub fn success(&self) {
        let mut s = self.lock();
        s.failures = 0;
        s.open_until = None;
        s.probing = false;
    }

    /// A read failed or was too slow.
    pub fn failure(&self, now: Instant) {
        let mut s = self.lock();
        s.failures = s.failures.saturating_add(1);
        s.probing = false;
        if s.failures >= self.threshold {
            s.open_until = Some(now + self.cooldown);
        }
    }

    /// The state now.
    pub fn state(&self, now: Instant) -> State {
        let s = self.lock();
        match s.open_until {
            None => State::Closed,
            Some(t) if now < t => State::Open,
            Some(_) => State::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_probes_once_and_recovers() {
        let b = Breaker::new(3, Duration::from_secs(2));
        let t0 = Instant::now();
        b.failure(t0);
        b.failure(t0);
        assert!(b.allow(t0), "two failures keep it closed");
        b.failure(t0);
        assert_eq!(b.state(t0), State::Open);
        assert!(!b.allow(t0 + Duration::from_secs(1)));
        let later = t0 + Duration::from_secs(3);
        assert!(b.allow(later), "one probe after the cooldown");
        assert!(!b.allow(later), "only one");
        b.failure(later);
        assert_eq!(b.state(later), State::Open, "a failed probe opens it again");
        let much_later = later + Duration::from_secs(3);
        assert!(b.allow(much_later));
        b.success();
        assert_eq!(b.state(much_later), State::Closed);
        assert!(b.allow(much_later) && b.allow(much_later));
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breaker::new(2, Duration::from_secs(2));
        let t0 = Instant::now();
        b.failure(t0);
        b.success();
        b.failure(t0);
        assert_eq!(b.state(t0), State::Closed);
    }
}
