//! A circuit breaker for counter reads (SPEC §6 degradation). After
//! `failures` consecutive failed or slow reads it opens: reads are not sent
//! to Redis for `cooldown` and callers answer from the last known values,
//! marked stale. Then one probe read is let through (half-open); its
//! success closes the breaker, its failure opens it again. It recovers by
//! itself, and a dead Redis costs a caller nothing but a stale answer.
//!
//! A read holds a [`Permit`]. A permit dropped without an outcome (the
//! caller hung up and its request future was dropped mid-read) releases
//! the probe, so one impatient client can never wedge the breaker open for
//! every tenant; [`Breaker::wedged`] tells readiness if that ever failed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The breaker's state, for metrics and `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Reads go to Redis.
    Closed,
    /// Reads are refused until the cooldown ends.
    Open,
    /// The cooldown is over: the next read (or the one in flight) probes.
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    failures: u32,
    open_until: Option<Instant>,
    /// Since when the one probe read has been in flight.
    probing: Option<Instant>,
}

/// The breaker.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    inner: Mutex<Inner>,
}

/// Leave to send one read to Redis. Report its outcome with
/// [`Permit::success`] or [`Permit::failure`]; dropping it says nothing
/// about Redis and only frees the probe slot.
#[derive(Debug)]
#[must_use]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
}

impl Permit<'_> {
    /// Redis answered.
    pub fn success(self) {
        let mut s = self.breaker.lock();
        s.failures = 0;
        s.open_until = None;
        s.probing = None;
    }

    /// Redis failed or was too slow.
    pub fn failure(self, now: Instant) {
        let b = self.breaker;
        let mut s = b.lock();
        s.failures = s.failures.saturating_add(1);
        s.probing = None;
        if s.failures >= b.threshold {
            s.open_until = Some(now + b.cooldown);
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe {
            // After success/failure this is already None; otherwise the
            // probe was abandoned: the next read probes instead.
            self.breaker.lock().probing = None;
        }
    }
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
                probing: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A permit if a read may go to Redis now.
    pub fn allow(&self, now: Instant) -> Option<Permit<'_>> {
        let mut s = self.lock();
        let probe = match s.open_until {
            None => false,
            Some(t) if now < t => return None,
            Some(_) if s.probing.is_some() => return None,
            Some(_) => {
                s.probing = Some(now);
                true
            }
        };
        Some(Permit {
            breaker: self,
            probe,
        })
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

    /// Whether a probe has been in flight longer than `limit` (a read is
    /// bounded by its timeout, so this means the breaker is stuck).
    pub fn wedged(&self, now: Instant, limit: Duration) -> bool {
        self.lock()
            .probing
            .is_some_and(|since| now.saturating_duration_since(since) > limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_probes_once_and_recovers() {
        let b = Breaker::new(3, Duration::from_secs(2));
        let t0 = Instant::now();
        for _ in 0..2 {
            b.allow(t0).unwrap().failure(t0);
        }
        assert!(b.allow(t0).is_some(), "two failures keep it closed");
        b.allow(t0).unwrap().failure(t0);
        assert_eq!(b.state(t0), State::Open);
        assert!(b.allow(t0 + Duration::from_secs(1)).is_none());
        let later = t0 + Duration::from_secs(3);
        let probe = b.allow(later).expect("one probe after the cooldown");
        assert!(b.allow(later).is_none(), "only one");
        probe.failure(later);
        assert_eq!(b.state(later), State::Open, "a failed probe opens it again");
        let much_later = later + Duration::from_secs(3);
        b.allow(much_later).unwrap().success();
        assert_eq!(b.state(much_later), State::Closed);
        assert!(b.allow(much_later).is_some() && b.allow(much_later).is_some());
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breaker::new(2, Duration::from_secs(2));
        let t0 = Instant::now();
        b.allow(t0).unwrap().failure(t0);
        b.allow(t0).unwrap().success();
        b.allow(t0).unwrap().failure(t0);
        assert_eq!(b.state(t0), State::Closed);
    }

    /// The review's defect: a probe whose request was dropped (the caller
    /// hung up) left `probing` set, so every later read was refused until
    /// restart. Now the dropped permit frees the probe slot.
    #[test]
    fn an_abandoned_probe_does_not_wedge_the_breaker() {
        let b = Breaker::new(1, Duration::from_millis(10));
        let t0 = Instant::now();
        b.allow(t0).unwrap().failure(t0);
        let later = t0 + Duration::from_secs(1);
        let probe = b.allow(later).expect("probe");
        assert!(!b.wedged(later, Duration::from_millis(500)));
        assert!(
            b.wedged(later + Duration::from_secs(1), Duration::from_millis(500)),
            "a probe held past the limit is reported"
        );
        drop(probe); // the request future was dropped mid-read
        assert!(!b.wedged(later + Duration::from_secs(1), Duration::from_millis(500)));
        let next = b.allow(later).expect("the next read probes");
        next.success();
        assert_eq!(b.state(later), State::Closed);
    }
}
