//! What a consumer that keeps its own offsets (aggregator, lake) needs from
//! its consumer context: partition changes handed from the rebalance
//! callback (which runs inside the consumer's poll) to the service loop,
//! the high watermarks from librdkafka's statistics, for lag gauges, and
//! the check that a stored offset is still inside the log.
//!
//! **A stored offset past the log end** (the broker lost its tail, the
//! topic was deleted and created again) would otherwise drop every new
//! record below it as a stale copy, silently, with a lag of 0: the
//! partition is stuck until the log grows past the stored offset, and
//! what it writes meanwhile is lost. [`Handoff::beyond_end`] tells it
//! (confirmed by a fresh watermark query, not only the last statistics),
//! the services raise `…_offset_beyond_log_end{partition}` and log an
//! error every minute, and take nothing from that partition until an
//! operator decides (docs/operations.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntGaugeVec;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::topic_partition_list::{TopicPartitionList, TopicPartitionListElem};
use rdkafka::{Offset, Statistics};

/// A partition change seen by the rebalance callback; `S` is the state the
/// service loaded for an assigned partition.
#[derive(Debug)]
pub enum Change<S> {
    /// The partition is ours, with its loaded state.
    Assigned(i32, S),
    /// The partitions are no longer ours.
    Revoked(Vec<i32>),
}

/// Shared between a consumer context and its service loop (cheap to clone).
#[derive(Debug)]
pub struct Handoff<S> {
    changes: Arc<Mutex<Vec<Change<S>>>>,
    highs: Arc<Mutex<HashMap<i32, i64>>>,
    alarms: Arc<Mutex<HashMap<i32, Instant>>>,
    /// Per partition: when it was last looked at, its stored offset then,
    /// and the log end a query answered for that offset (if one was made).
    checks: Arc<Mutex<HashMap<i32, Check>>>,
}

impl<S> Clone for Handoff<S> {
    fn clone(&self) -> Self {
        Handoff {
            changes: Arc::clone(&self.changes),
            highs: Arc::clone(&self.highs),
            alarms: Arc::clone(&self.alarms),
            checks: Arc::clone(&self.checks),
        }
    }
}

impl<S> Default for Handoff<S> {
    fn default() -> Self {
        Handoff {
            changes: Arc::new(Mutex::new(Vec::new())),
            highs: Arc::new(Mutex::new(HashMap::new())),
            alarms: Arc::new(Mutex::new(HashMap::new())),
            checks: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// How often a partition past the log end is logged again.
const ALARM_EVERY: Duration = Duration::from_secs(60);
/// How long a stored offset must stay put before the log end is asked
/// for, and how long the answer is reused.
const CHECK_EVERY: Duration = Duration::from_secs(10);

/// See [`Handoff::beyond_end`].
#[derive(Debug, Clone, Copy)]
struct Check {
    at: Instant,
    next: i64,
    high: Option<i64>,
}

/// A stored next offset past the log's end, by how many offsets.
pub fn past_end(next: i64, high: i64) -> Option<i64> {
    (next > high).then(|| next - high)
}

impl<S> Handoff<S> {
    /// Queues a change for the loop.
    pub fn push(&self, c: Change<S>) {
        if let Ok(mut v) = self.changes.lock() {
            v.push(c);
        }
    }

    /// Starts fetching `elem` at the `next` offset the service keeps (the
    /// beginning when none yet) and queues its loaded `state`.
    pub fn assign(&self, elem: &mut TopicPartitionListElem<'_>, next: Option<i64>, state: S) {
        let p = elem.partition();
        if let Err(e) = elem.set_offset(next.map_or(Offset::Beginning, Offset::Offset)) {
            tracing::error!(partition = p, error = %e, "cannot set start offset");
        }
        tracing::info!(partition = p, offset = ?next, "partition assigned");
        self.push(Change::Assigned(p, state));
    }

    /// Queues the revocation of every partition of `tpl`.
    pub fn revoke(&self, tpl: &TopicPartitionList) {
        let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        tracing::info!(partitions = ?parts, "partitions revoked");
        self.push(Change::Revoked(parts));
    }

    /// The changes queued since the last call, oldest first.
    pub fn take(&self) -> Vec<Change<S>> {
        self.changes
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    /// Records the high watermarks of `topic` from a statistics callback.
    pub fn record_highs(&self, topic: &str, statistics: &Statistics) {
        let Some(topic) = statistics.topics.get(topic) else {
            return;
        };
        if let Ok(mut highs) = self.highs.lock() {
            for (p, part) in &topic.partitions {
                if *p >= 0 && part.hi_offset >= 0 {
                    highs.insert(*p, part.hi_offset);
                }
            }
        }
    }

    /// The latest high watermark per partition.
    pub fn highs(&self) -> HashMap<i32, i64> {
        self.highs.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// The latest high watermark of partition `p` (one lookup, no copy of
    /// the map: this runs for every owned partition on every loop).
    pub fn high(&self, p: i32) -> Option<i64> {
        self.highs.lock().ok().and_then(|h| h.get(&p).copied())
    }

    /// How far partition `p`'s stored next offset `next` lies past the end
    /// of its log, if it does. The statistics' high watermark may be a
    /// second old (records fetched since are past it), so a suspicion is
    /// confirmed with a watermark query before it counts. Logs an error,
    /// at most once a minute per partition.
    pub fn beyond_end<C: ConsumerContext, K: Consumer<C>>(
        &self,
        consumer: &K,
        topic: &str,
        p: i32,
        next: i64,
    ) -> Option<i64> {
        let stale_high = self.high(p)?;
        past_end(next, stale_high)?;
        // A partition whose stored offset moves is taking records: the
        // statistics are merely older than its last batch. Only one that
        // stays put past them is asked about (then every CHECK_EVERY).
        let last = self.checks.lock().ok().and_then(|c| c.get(&p).copied());
        let high = match last {
            Some(c) if c.next == next && c.at.elapsed() < CHECK_EVERY => c.high?,
            Some(c) if c.next != next => {
                self.note_check(p, next, None);
                return None;
            }
            _ => match consumer.fetch_watermarks(topic, p, Duration::from_secs(5)) {
                Ok((_, h)) => {
                    self.note_check(p, next, Some(h));
                    h
                }
                Err(e) => {
                    tracing::debug!(partition = p, error = %e, "watermark query failed");
                    return None;
                }
            },
        };
        let Some(missing) = past_end(next, high) else {
            if let Ok(mut a) = self.alarms.lock() {
                a.remove(&p);
            }
            return None;
        };
        let due = self.alarms.lock().is_ok_and(|mut a| match a.get(&p) {
            Some(t) if t.elapsed() < ALARM_EVERY => false,
            _ => {
                a.insert(p, Instant::now());
                true
            }
        });
        if due {
            tracing::error!(
                topic,
                partition = p,
                stored_next_offset = next,
                log_end_offset = high,
                missing,
                "the stored offset is past the end of the partition's log (the broker lost \
                 its tail, or the topic was created again): nothing of this partition is \
                 taken until an operator re-seeds the log or accepts the gap \
                 (docs/operations.md)"
            );
        }
        Some(missing)
    }

    fn note_check(&self, p: i32, next: i64, high: Option<i64>) {
        if let Ok(mut c) = self.checks.lock() {
            c.insert(
                p,
                Check {
                    at: Instant::now(),
                    next,
                    high,
                },
            );
        }
    }

    /// Sets partition `p`'s `lag` and `beyond_log_end` gauges for its
    /// stored next offset `next`: the one position rule of both sinks.
    pub fn set_position_gauges<C: ConsumerContext, K: Consumer<C>>(
        &self,
        consumer: &K,
        topic: &str,
        gauges: [&IntGaugeVec; 2],
        p: i32,
        next: i64,
    ) {
        let [lag, beyond] = gauges;
        if let Some(high) = self.high(p) {
            crate::metrics::set_lag_to(lag, p, high, next);
        }
        let missing = self.beyond_end(consumer, topic, p, next);
        beyond
            .with_label_values(&[p.to_string().as_str()])
            .set(missing.unwrap_or(0));
    }
}

/// Drops a partition's series from `gauges` (it is no longer ours).
pub fn forget_partition<const N: usize>(gauges: [&IntGaugeVec; N], p: i32) {
    for g in gauges {
        let _ = g.remove_label_values(&[p.to_string().as_str()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_stored_offset_past_the_high_watermark_is_beyond_the_end() {
        assert_eq!(past_end(10, 10), None, "caught up");
        assert_eq!(past_end(5, 10), None, "behind");
        assert_eq!(past_end(1000, 10), Some(990));
        assert_eq!(past_end(1, 0), Some(1), "a topic created again, empty");
    }
}
