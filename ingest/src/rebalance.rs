//! What a consumer that keeps its own offsets (aggregator, lake) needs from
//! its consumer context: partition changes handed from the rebalance
//! callback (which runs inside the consumer's poll) to the service loop,
//! and the high watermarks from librdkafka's statistics, for lag gauges.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
}

impl<S> Clone for Handoff<S> {
    fn clone(&self) -> Self {
        Handoff {
            changes: Arc::clone(&self.changes),
            highs: Arc::clone(&self.highs),
        }
    }
}

impl<S> Default for Handoff<S> {
    fn default() -> Self {
        Handoff {
            changes: Arc::new(Mutex::new(Vec::new())),
            highs: Arc::new(Mutex::new(HashMap::new())),
        }
    }
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
}
