//! Why a partition waits for the schema registry.
//!
//! Each consumer group (the validator, the aggregator, the lake writer)
//! asks the registry for an Avro record's schema id on its own, at its own
//! time. A registry learns ids late at times (its replicas lag the
//! registration), so a verdict taken on the first "no such id" made one
//! group dead-letter a record another decoded a minute later, and Redis and
//! the lake disagreed for good. Now a record whose id the registry has not
//! decided ([`Decoder::undecided`]) is neither: its partition stops at it
//! (the records before it are taken, nothing from it on), the id is asked
//! again every second, and the partition is fetched again from that record
//! once the registry knows the id, or has not known it for its whole grace
//! (`schema_registry.unknown_id_grace_secs`): then it is a dead letter, in
//! every group. Only a registry that learns an id after the grace can still
//! split the verdicts. Other partitions go on meanwhile.

use std::collections::BTreeMap;

use rdkafka::Offset;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::message::{Message, OwnedMessage};

use crate::codec::{Decoder, RecordView};
use crate::source::Source;

/// Partitions stopped at a record whose schema id is undecided.
#[derive(Debug, Default)]
pub struct SchemaHolds {
    /// Partition → (offset of the record, its schema id).
    held: BTreeMap<i32, (i64, u32)>,
}

impl SchemaHolds {
    /// Which records of `batch` are taken now: none of a held partition,
    /// and a partition is held at its first record whose schema id is
    /// undecided.
    pub fn keep(
        &mut self,
        batch: &[OwnedMessage],
        views: &[RecordView<'_>],
        decoder: &Decoder,
    ) -> Vec<bool> {
        // The common case, on the hot path: nothing held, nothing to hold.
        if self.held.is_empty() && !decoder.any_undecided() {
            return vec![true; batch.len()];
        }
        batch
            .iter()
            .zip(views)
            .map(|(m, v)| {
                let p = m.partition();
                if self.held.contains_key(&p) {
                    return false;
                }
                match decoder.undecided(v) {
                    None => true,
                    Some(id) => {
                        tracing::warn!(partition = p, offset = m.offset(), schema_id = id,
                            "the schema registry does not know this id (yet): the partition waits at this record, asking again, until it does or its grace passes (then the record is a dead letter)");
                        self.held.insert(p, (m.offset(), id));
                        false
                    }
                }
            })
            .collect()
    }

    /// Asks the registry again for the held ids, forgets partitions no
    /// longer assigned, and fetches the partitions whose id is decided
    /// again from their held record (call it before fetching: a seek drops
    /// what was fetched of the partition). The released partitions; none
    /// while the registry cannot be asked (they stay held).
    pub async fn release<C: ConsumerContext + 'static>(
        &mut self,
        decoder: &mut Decoder,
        source: &Source<C>,
    ) -> Vec<i32> {
        if self.held.is_empty() {
            return Vec::new();
        }
        if let Ok(tpl) = source.consumer().assignment() {
            let assigned: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            self.held.retain(|p, _| assigned.contains(p));
        }
        let ids: Vec<u32> = self.held.values().map(|&(_, id)| id).collect();
        if let Err(e) = decoder.recheck(&ids).await {
            tracing::warn!(error = %e, "the schema registry cannot be asked; held partitions stay held");
            return Vec::new();
        }
        let mut released = Vec::new();
        self.held.retain(|&p, &mut (offset, id)| {
            if decoder.is_decided(id) {
                source.seek(p, Offset::Offset(offset));
                released.push(p);
                false
            } else {
                true
            }
        });
        released
    }

    /// True when no partition waits.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The held partitions and the offsets they wait at.
    pub fn held(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.held.iter().map(|(&p, &(o, _))| (p, o))
    }
}
