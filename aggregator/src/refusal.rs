//! Why one foreign key must not stop every partition.
//!
//! `APPLY` refuses a whole batch, before its first write, when one of its
//! keys holds another type (a foreign writer, an operator's mistake). A
//! batch spans every partition with records, so stopping on that refusal
//! stopped all of them, and a restart crash-looped while the key was
//! there. Instead the refusal is narrowed down to partitions: the
//! partitions of a refused batch are applied one at a time ([`Quarantine`]
//! *isolates* them) until each either applies (it goes back to the shared
//! batches) or is refused on its own. A partition refused on its own is
//! *held*: nothing of it is taken (its stored offset stays where it is, so
//! nothing is lost), it is tried again with the shared back-off, and
//! `notiflow_aggregator_partition_refused{partition,key}` says which key
//! and why until it applies. The other partitions keep counting.
//!
//! A client's counter keys get records from every partition, so a foreign
//! key on a busy client's hour holds every partition that carries that
//! client's records of that hour: no count can be taken past the key
//! without being lost. Deleting (or renaming) the foreign key releases
//! them within the back-off.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use notiflow_ingest::sink::Backoff;

use crate::metrics::Metrics;

/// How long between two error logs of the same refusal.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// A partition held after Redis refused its batch on its own.
#[derive(Debug)]
struct Held {
    key: String,
    reason: String,
    retry_at: Instant,
    backoff: Backoff,
    logged: Instant,
}

/// The partitions whose batches Redis refused, and those being narrowed
/// down.
#[derive(Debug, Default)]
pub struct Quarantine {
    isolated: BTreeSet<i32>,
    held: BTreeMap<i32, Held>,
}

impl Quarantine {
    /// True when no partition is isolated or held (the common case: one
    /// shared batch).
    pub fn is_empty(&self) -> bool {
        self.isolated.is_empty() && self.held.is_empty()
    }

    /// True if records of `p` are not taken now (held, and its back-off
    /// not passed).
    pub fn holds(&self, p: i32) -> bool {
        self.held.contains_key(&p) && !self.isolated.contains(&p)
    }

    /// True if `p` is applied in batches of its own.
    pub fn isolates(&self, p: i32) -> bool {
        self.isolated.contains(&p)
    }

    /// Redis refused a batch of `parts` because of `key` (`reason`). One
    /// partition: it is held (retried after the back-off). Several: each is
    /// isolated, so the next batches find which of them the refusal is
    /// about.
    pub fn refused(&mut self, parts: &[i32], key: &str, reason: &str, metrics: &Metrics) {
        let [p] = parts else {
            self.isolated.extend(parts.iter().copied());
            return;
        };
        let p = *p;
        self.isolated.remove(&p);
        let key = key.to_string();
        let now = Instant::now();
        let h = self.held.entry(p).or_insert_with(|| Held {
            key: String::new(),
            reason: String::new(),
            retry_at: now,
            backoff: Backoff::new(),
            logged: now - LOG_EVERY,
        });
        if h.key != key {
            if !h.key.is_empty() {
                let _ = metrics
                    .refused
                    .remove_label_values(&[&p.to_string(), &h.key]);
            }
            h.logged = now - LOG_EVERY;
        }
        if h.logged.elapsed() >= LOG_EVERY {
            tracing::error!(partition = p, key = %key, reason = %reason,
                "Redis refuses this partition's batch (a key of another type: a foreign writer or an operator's mistake); nothing of the partition is taken until the key is removed, the other partitions go on (docs/operations.md)");
            h.logged = now;
        }
        metrics
            .refused
            .with_label_values(&[&p.to_string(), &key])
            .set(1);
        h.key = key;
        h.reason = reason.to_string();
        h.retry_at = now + h.backoff.next_delay();
    }

    /// Batches of these partitions applied: they go back to the shared
    /// batches, and their alarms clear.
    pub fn applied(&mut self, parts: impl IntoIterator<Item = i32>, metrics: &Metrics) {
        for p in parts {
            self.isolated.remove(&p);
            if let Some(h) = self.held.remove(&p) {
                tracing::info!(partition = p, key = %h.key, "the refused partition applies again");
                let _ = metrics
                    .refused
                    .remove_label_values(&[&p.to_string(), &h.key]);
            }
        }
    }

    /// Held partitions whose back-off has passed: they are tried again,
    /// isolated (the caller reloads them and fetches from their stored
    /// offset). Their alarm stays until a batch of theirs applies.
    pub fn due(&mut self) -> Vec<i32> {
        let now = Instant::now();
        let due: Vec<i32> = self
            .held
            .iter()
            .filter(|(p, h)| h.retry_at <= now && !self.isolated.contains(p))
            .map(|(&p, _)| p)
            .collect();
        self.isolated.extend(due.iter().copied());
        due
    }

    /// `p` is no longer owned (or owned afresh): nothing of it is kept.
    pub fn forget(&mut self, p: i32, metrics: &Metrics) {
        self.isolated.remove(&p);
        if let Some(h) = self.held.remove(&p) {
            let _ = metrics
                .refused
                .remove_label_values(&[&p.to_string(), &h.key]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::core::Collector;

    fn metrics() -> Metrics {
        Metrics::new(&prometheus::Registry::new()).unwrap()
    }

    #[test]
    fn a_refusal_is_narrowed_to_a_partition_and_released_when_it_applies() {
        let m = metrics();
        let mut q = Quarantine::default();
        q.refused(&[0, 1, 2], "k", "k holds a string", &m);
        assert!(q.isolates(0) && q.isolates(1) && q.isolates(2));
        assert!(!q.holds(0));
        q.applied([0, 2], &m);
        q.refused(&[1], "k", "k holds a string", &m);
        assert!(q.holds(1) && !q.isolates(1));
        assert!(!q.isolates(0) && !q.isolates(2));
        assert_eq!(m.refused.with_label_values(&["1", "k"]).get(), 1);
        // Not due before its back-off.
        assert!(q.due().is_empty());
        std::thread::sleep(notiflow_ingest::sink::MIN_DELAY * 3);
        assert_eq!(q.due(), vec![1]);
        assert!(q.isolates(1) && !q.holds(1), "retried on its own");
        assert_eq!(
            m.refused.with_label_values(&["1", "k"]).get(),
            1,
            "still alarmed"
        );
        assert!(q.due().is_empty(), "tried once per back-off");
        q.applied([1], &m);
        assert!(q.is_empty());
        let families = m.refused.collect();
        assert!(
            families.iter().all(|f| f.get_metric().is_empty()),
            "the alarm cleared"
        );
    }
}
