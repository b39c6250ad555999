//! Generated records held in memory, for benches and tests that feed a
//! consumer without a broker (the "in-process source").
//!
//! Records get the partition a key-hashing producer would give them and
//! consecutive offsets per partition, so per-partition dedup and offset
//! tracking behave as they do behind Kafka.

use notiflow_ingest::RecordView;
use notiflow_ingest::source::SourceRecord;
use notiflow_schema::Micros;

use crate::generator::{Generator, Shape};

/// One record as a consumer would receive it.
#[derive(Debug, Clone)]
pub struct OwnedRecord {
    /// Partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// `content-type` header.
    pub content_type: Option<String>,
    /// Broker timestamp (the simulated arrival).
    pub timestamp: Micros,
}

impl OwnedRecord {
    /// The decoding view a consumer would build from this record.
    pub fn view(&self) -> RecordView<'_> {
        RecordView {
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            content_type: self.content_type.as_deref().map(str::as_bytes),
            timestamp: self.timestamp,
            clock: self.timestamp,
            producer_clock: false,
        }
    }

    /// The record as the own-offset consumers process it.
    pub fn source(&self) -> SourceRecord<'_> {
        SourceRecord {
            partition: self.partition,
            offset: self.offset,
            view: self.view(),
        }
    }
}

/// An endless, deterministic stream of records over `partitions` partitions.
pub struct RecordStream {
    generator: Generator,
    next_offset: Vec<i64>,
}

impl RecordStream {
    /// Records of `shape` over `partitions` partitions.
    pub fn new(shape: Shape, partitions: i32) -> Self {
        RecordStream {
            generator: Generator::new(shape, None),
            next_offset: vec![0; partitions.max(1) as usize],
        }
    }

    /// The next `n` records.
    pub fn take(&mut self, n: usize) -> Vec<OwnedRecord> {
        (0..n).map(|_| self.next_record()).collect()
    }

    fn next_record(&mut self) -> OwnedRecord {
        let r = self.generator.next_record();
        let partition = r
            .key
            .map_or(0, |k| (fnv1a(k) % self.next_offset.len() as u64) as usize);
        let offset = self.next_offset[partition];
        self.next_offset[partition] += 1;
        OwnedRecord {
            partition: partition as i32,
            offset,
            key: r.key.map(<[u8]>::to_vec),
            value: r.value.map(<[u8]>::to_vec),
            content_type: r.content_type.map(str::to_string),
            timestamp: r.arrival,
        }
    }
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_consecutive_per_partition_and_keys_stick() {
        let shape = Shape {
            seed: 1,
            clients: 50,
            rate: 1000.0,
            start: 1_795_464_000_000_000,
            avro_share: 0.0,
            content_type_share: 0.0,
            duplicate_share: 0.1,
            malformed_share: 0.0,
        };
        let recs = RecordStream::new(shape, 4).take(5000);
        let mut next = [0i64; 4];
        let mut part_of = std::collections::HashMap::new();
        for r in &recs {
            assert_eq!(r.offset, next[r.partition as usize]);
            next[r.partition as usize] += 1;
            let k = r.key.clone().unwrap();
            assert_eq!(*part_of.entry(k).or_insert(r.partition), r.partition);
        }
        assert!(next.iter().all(|&n| n > 500), "{next:?}");
    }
}
