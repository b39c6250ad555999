//! The partition member both sinks are. The aggregator and the lake writer
//! each keep their partitions' next offsets and dedup state *with their
//! output* (Redis, the table), so the sink's own atomic "apply the batch and
//! the offsets" step is the commit point and Kafka's committed offsets are
//! never read. Everything around that step that does not depend on the sink
//! lives here, once: the consumer context that, on assignment, loads the
//! partitions' state from the sink (inside the consumer's poll, so nothing
//! is fetched meanwhile; retried with backoff until the sink answers), starts
//! fetching at the stored offset and hands the state to the service loop;
//! the statistics callback that keeps the high watermarks; and the
//! per-partition position gauges (lag, offset past the log end, dedup size).
//!
//! A sink supplies a [`StateStore`] (how to load its partitions' state) and a
//! state type that is a [`MemberState`] (its stored next offset and dedup).

use std::collections::HashMap;
use std::fmt::Display;

use prometheus::{IntGauge, IntGaugeVec};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use tokio_util::sync::CancellationToken;

use crate::cursor::Cursor;
use crate::dedup::Dedup;
use crate::rebalance::Handoff;
use crate::retry::Backoff;

/// What a sink knows of a partition it owns.
pub trait MemberState: Send + 'static {
    /// The next offset as stored with the sink's output (`None`: nothing
    /// stored yet, so fetching starts at the log's beginning).
    fn stored_next(&self) -> Option<i64>;
    /// The partition's dedup state, as of the stored offset.
    fn dedup(&self) -> &Dedup;
    /// Which records the sink takes: where fetching starts on assignment
    /// (the anchor record, `cursor` module) and whether the partition is
    /// held.
    fn cursor(&self) -> &Cursor;
    /// The same, to change.
    fn cursor_mut(&mut self) -> &mut Cursor;
}

/// Where a sink keeps its partitions' state.
pub trait StateStore: Send + Sync + 'static {
    /// The loaded state of one partition.
    type State: MemberState;
    /// Why a load failed (retried while the member runs).
    type Error: Display;
    /// Loads the state of `parts` (every one of them, or an error). Runs
    /// inside the consumer's poll, on a thread that may belong to an async
    /// runtime: blocking, and not reentrant into that runtime.
    fn load_blocking(&self, parts: &[i32]) -> Result<HashMap<i32, Self::State>, Self::Error>;
}

/// How long an assignment waits for a partition's log start.
const WATERMARK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Consumer settings every sink's member adds: a fetch position outside
/// the log is an error that stops fetching the partition, never a silent
/// jump to its start or end (which would drop, or count again, whatever
/// lies between; `cursor` module).
pub const SINK_CONSUMER: &[(&str, &str)] = &[("auto.offset.reset", "error")];

/// Logs, as an error, that partition `p` of `topic` is held at its stored
/// next offset `stored` (once, when the hold starts; the `held` gauge
/// stays up while it lasts).
pub fn log_hold(topic: &str, p: i32, stored: Option<i64>, why: crate::cursor::Hold) {
    tracing::error!(
        topic,
        partition = p,
        stored_next_offset = ?stored,
        reason = %why,
        "partition held: its log is not the one the stored offset belongs to, so nothing of \
         it is taken (and nothing lost) until an operator accepts the gap from a named \
         offset or re-seeds the log (docs/operations.md)"
    );
}

/// The consumer context of a sink's consumer-group member.
pub struct Member<S: StateStore> {
    handoff: Handoff<S::State>,
    store: S,
    topic: String,
    shutdown: CancellationToken,
}

impl<S: StateStore> Member<S> {
    /// A member of `topic` loading from `store`, with the handoff its
    /// service loop takes partition changes from.
    pub fn new(store: S, topic: &str, shutdown: CancellationToken) -> (Self, Handoff<S::State>) {
        let handoff = Handoff::default();
        let member = Member {
            handoff: handoff.clone(),
            store,
            topic: topic.to_string(),
            shutdown,
        };
        (member, handoff)
    }

    /// Blocks until the store answers; `None` once shutting down (nothing
    /// will be applied, so nothing needs the state).
    fn load_retrying(&self, parts: &[i32]) -> Option<HashMap<i32, S::State>> {
        let mut backoff = Backoff::new();
        loop {
            match self.store.load_blocking(parts) {
                Ok(s) => return Some(s),
                Err(e) => {
                    if self.shutdown.is_cancelled() {
                        return None;
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(partitions = ?parts, error = %e, retry_in_ms = delay.as_millis() as u64,
                        "loading partition state failed, retrying");
                    std::thread::sleep(delay);
                }
            }
        }
    }
}

impl<S: StateStore> ClientContext for Member<S> {
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.handoff.record_highs(&self.topic, &statistics);
    }
}

impl<S: StateStore> ConsumerContext for Member<S> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                if parts.is_empty() {
                    return;
                }
                let Some(mut states) = self.load_retrying(&parts) else {
                    return;
                };
                for mut elem in tpl.elements() {
                    let p = elem.partition();
                    let Some(state) = states.remove(&p) else {
                        tracing::error!(
                            partition = p,
                            "the store loaded no state for an assigned partition"
                        );
                        continue;
                    };
                    tracing::debug!(
                        partition = p,
                        dedup = state.dedup().len(),
                        "dedup state loaded"
                    );
                    let mut state = state;
                    if state.cursor().fetch_from().is_some() {
                        // Where the log starts now: an anchor record taken
                        // by retention cannot be checked (`cursor`).
                        match consumer.fetch_watermarks(&self.topic, p, WATERMARK_TIMEOUT) {
                            Ok((low, _)) => state.cursor_mut().log_starts_at(low),
                            Err(e) => tracing::warn!(partition = p, error = %e,
                                "log start unknown; the anchor record is looked for"),
                        }
                        if let Some(why) = state.cursor().held() {
                            log_hold(&self.topic, p, state.stored_next(), why);
                        }
                    }
                    let from = state.cursor().fetch_from();
                    self.handoff.assign(&mut elem, from, state);
                }
            }
            Rebalance::Revoke(tpl) => self.handoff.revoke(tpl),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// The position gauges of a member's owned partitions: `lag` and
/// `beyond_log_end` per partition (see [`Handoff::set_position_gauges`]),
/// `held` (1 for a partition held on another log, `cursor` module) and
/// the dedup entries held in all.
pub fn set_gauges<St: MemberState, C: ConsumerContext, K: Consumer<C>>(
    handoff: &Handoff<St>,
    consumer: &K,
    topic: &str,
    owned: &HashMap<i32, St>,
    [lag, beyond, held]: [&IntGaugeVec; 3],
    dedup_entries: &IntGauge,
) {
    let mut entries = 0;
    for (p, s) in owned {
        entries += s.dedup().len();
        held.with_label_values(&[p.to_string().as_str()])
            .set(i64::from(s.cursor().held().is_some()));
        handoff.set_position_gauges(
            consumer,
            topic,
            [lag, beyond],
            *p,
            s.stored_next().unwrap_or(0),
        );
    }
    dedup_entries.set(entries as i64);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    struct State(Option<i64>, Dedup, Cursor);

    impl MemberState for State {
        fn stored_next(&self) -> Option<i64> {
            self.0
        }
        fn dedup(&self) -> &Dedup {
            &self.1
        }
        fn cursor(&self) -> &Cursor {
            &self.2
        }
        fn cursor_mut(&mut self) -> &mut Cursor {
            &mut self.2
        }
    }

    /// Fails its first `failures` loads, then loads offset 10 × partition.
    struct Flaky {
        failures: u32,
        calls: AtomicU32,
    }

    impl StateStore for Flaky {
        type State = State;
        type Error = String;
        fn load_blocking(&self, parts: &[i32]) -> Result<HashMap<i32, State>, String> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
                return Err("store down".into());
            }
            Ok(parts
                .iter()
                .map(|&p| {
                    let next = Some(10 * i64::from(p));
                    (p, State(next, Dedup::new(24), Cursor::at(next)))
                })
                .collect())
        }
    }

    #[test]
    fn a_load_is_retried_until_the_store_answers() {
        let store = Flaky {
            failures: 2,
            calls: AtomicU32::new(0),
        };
        let (member, _) = Member::new(store, "t", CancellationToken::new());
        let states = member.load_retrying(&[1, 2]).unwrap();
        assert_eq!(member.store.calls.load(Ordering::SeqCst), 3);
        assert_eq!(states[&2].stored_next(), Some(20));
    }

    #[test]
    fn shutting_down_stops_the_retries() {
        let store = Flaky {
            failures: u32::MAX,
            calls: AtomicU32::new(0),
        };
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let (member, _) = Member::new(store, "t", shutdown);
        assert!(member.load_retrying(&[0]).is_none());
        assert_eq!(member.store.calls.load(Ordering::SeqCst), 1);
    }
}
