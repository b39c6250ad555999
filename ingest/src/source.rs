//! A Kafka consumer-group member that hands out batches of records.
//!
//! Batches are owned copies of the records (one copy of each payload), so a
//! batch can be decoded, dead-lettered and applied while the consumer keeps
//! fetching. Auto-commit is off: whoever applies a batch decides where its
//! offsets go (Kafka here; Redis or Iceberg for the exactly-once sinks).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notiflow_schema::Micros;
use rdkafka::consumer::{
    CommitMode, Consumer, ConsumerContext, DefaultConsumerContext, StreamConsumer,
};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::codec::RecordView;
use crate::config::KafkaConfig;
use crate::error::IngestError;
use crate::kafka::client_config;

/// A subscribed consumer. `C` is the consumer context: the exactly-once
/// sinks pass one whose rebalance callback seeks to their stored offsets.
pub struct Source<C: ConsumerContext + 'static = DefaultConsumerContext> {
    consumer: StreamConsumer<C>,
    topic: String,
    /// Seeks that failed, retried before each batch: a partition whose
    /// re-seek failed could otherwise wait for a record that never comes.
    failed_seeks: std::sync::Mutex<BTreeMap<i32, (Offset, u32)>>,
}

impl Source {
    /// Joins `group_id` and subscribes to the event topic. `overrides` are
    /// extra librdkafka properties (tests shorten session timeouts with them).
    pub fn subscribe(
        kafka: &KafkaConfig,
        group_id: &str,
        overrides: &[(&str, &str)],
    ) -> Result<Self, IngestError> {
        Source::subscribe_with(kafka, group_id, overrides, DefaultConsumerContext)
    }
}

impl<C: ConsumerContext + 'static> Source<C> {
    /// [`Source::subscribe`] with a consumer context of the caller's.
    pub fn subscribe_with(
        kafka: &KafkaConfig,
        group_id: &str,
        overrides: &[(&str, &str)],
        context: C,
    ) -> Result<Self, IngestError> {
        let mut cfg = client_config(kafka);
        cfg.set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "100");
        for (k, v) in overrides {
            cfg.set(*k, *v);
        }
        let consumer: StreamConsumer<C> = cfg.create_with_context(context)?;
        consumer.subscribe(&[&kafka.topic])?;
        Ok(Source {
            consumer,
            topic: kafka.topic.clone(),
            failed_seeks: Default::default(),
        })
    }

    /// The event topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The underlying consumer (for position, lag and assignment queries).
    pub fn consumer(&self) -> &StreamConsumer<C> {
        &self.consumer
    }

    /// Moves partition `p`'s fetch position to `offset`; false (logged) if
    /// the seek failed: it is tried again before each batch (up to
    /// [`SEEK_RETRIES`] times), and the callers' cursors drop whatever
    /// arrives from the wrong place meanwhile and ask again
    /// ([`crate::cursor::Cursor::seek_failed`]).
    pub fn seek(&self, p: i32, offset: Offset) -> bool {
        let ok = self.try_seek(p, offset);
        if let Ok(mut f) = self.failed_seeks.lock() {
            if ok {
                f.remove(&p);
            } else {
                f.insert(p, (offset, 0));
            }
        }
        ok
    }

    fn try_seek(&self, p: i32, offset: Offset) -> bool {
        match self
            .consumer
            .seek(&self.topic, p, offset, Duration::from_secs(5))
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(partition = p, ?offset, error = %e, "seek failed");
                false
            }
        }
    }

    /// Tries the failed seeks again (a partition no longer assigned keeps
    /// failing: it is given up after [`SEEK_RETRIES`] tries).
    fn retry_seeks(&self) {
        let pending: Vec<(i32, Offset)> = match self.failed_seeks.lock() {
            Ok(f) => f.iter().map(|(p, (o, _))| (*p, *o)).collect(),
            Err(_) => return,
        };
        for (p, offset) in pending {
            let ok = self.try_seek(p, offset);
            if let Ok(mut f) = self.failed_seeks.lock() {
                match f.get_mut(&p) {
                    Some(_) if ok => {
                        f.remove(&p);
                        tracing::info!(partition = p, ?offset, "seek retried: done");
                    }
                    Some((_, tries)) => {
                        *tries += 1;
                        if *tries >= SEEK_RETRIES {
                            tracing::warn!(partition = p, ?offset, "seek given up on");
                            f.remove(&p);
                        }
                    }
                    None => {}
                }
            }
        }
    }

    /// Waits up to `max_wait` for a first record, then takes whatever else
    /// arrives until `max_records` or the deadline. Empty on shutdown or timeout.
    pub async fn next_batch(
        &self,
        max_records: usize,
        max_wait: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Vec<OwnedMessage>, IngestError> {
        self.retry_seeks();
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut batch = Vec::new();
        while batch.len() < max_records {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => break,
                m = self.consumer.recv() => m,
            };
            match next {
                Ok(m) => batch.push(m.detach()),
                // Transient fetch errors are logged by librdkafka and retried by it;
                // a fatal one ends the batch so the caller can back off.
                Err(e) if batch.is_empty() => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(error = %e, "fetch error after a partial batch");
                    break;
                }
            }
        }
        Ok(batch)
    }

    /// Commits, synchronously, the offset after the last record of each
    /// partition in `batch` to the consumer group.
    pub fn commit(&self, batch: &[OwnedMessage]) -> Result<(), IngestError> {
        self.commit_offsets(&next_offsets(batch))
    }

    /// Commits these next offsets, per partition, synchronously.
    pub fn commit_offsets(&self, next: &BTreeMap<i32, i64>) -> Result<(), IngestError> {
        if next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (&partition, &offset) in next {
            tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset))?;
        }
        self.consumer.commit(&tpl, CommitMode::Sync)?;
        Ok(())
    }
}

/// One record with its place in the log, as the consumers that keep their
/// own offsets (aggregator, lake) process it.
#[derive(Debug, Clone, Copy)]
pub struct SourceRecord<'a> {
    /// Kafka partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Key, value, headers and broker timestamp.
    pub view: RecordView<'a>,
}

/// For each partition in `batch`, the offset after its last record.
pub fn next_offsets(batch: &[OwnedMessage]) -> BTreeMap<i32, i64> {
    let mut next = BTreeMap::new();
    for m in batch {
        let e = next.entry(m.partition()).or_insert(0);
        *e = (*e).max(m.offset() + 1);
    }
    next
}

/// [`RecordView::timestamp`] of a record without a broker timestamp: the
/// decoder rejects it (`missing_timestamp`) rather than let each consumer
/// fill in its own clock.
pub const NO_TIMESTAMP: Micros = Micros::MIN;

/// Tries of a failed seek before it is given up (its partition was
/// revoked, most likely; a new owner seeks on assignment anyway).
pub const SEEK_RETRIES: u32 = 100;

/// Set once a record stamped by its producer (`CreateTime`) was seen.
static CREATE_TIME_SEEN: AtomicBool = AtomicBool::new(false);

/// How far ahead of the reading consumer's clock a record's timestamp may
/// be taken: no record was appended after it was read, so a stamp further
/// ahead is a producer's (or a broker's) clock that is wrong. One dedup
/// generation, so a producer clock up to an hour fast is read the same by
/// every group and every replay; only a stamp further ahead is bounded by
/// whichever clock read it.
pub const MAX_AHEAD_OF_READER: Micros = crate::dedup::GENERATION_MICROS;

/// Set once a record stamped further ahead than [`MAX_AHEAD_OF_READER`] was seen.
static AHEAD_SEEN: AtomicBool = AtomicBool::new(false);

/// The decoding view of a record read now: [`view_at`] with the wall clock.
pub fn view(m: &OwnedMessage) -> RecordView<'_> {
    view_at(m, now_micros())
}

/// The decoding views of a batch read now: the wall clock is read once
/// for the whole batch, not once a record.
pub fn views(batch: &[OwnedMessage]) -> Vec<RecordView<'_>> {
    let read_at = now_micros();
    batch.iter().map(|m| view_at(m, read_at)).collect()
}

/// The decoding view of a record read at `read_at`; its timestamp, bounded
/// to [`MAX_AHEAD_OF_READER`] past `read_at`, is the record's `clock`: the
/// reference of the future-time rule, its dedup generation and watermark
/// (so no record, the first of a partition included, moves a clock a year
/// ahead). The first record stamped by its producer's clock (`CreateTime`)
/// is logged as a warning, once per process: a broker may report
/// `LogAppendTime` for a topic and still stamp `CreateTime` (tansu 0.6 does);
/// so is the first stamp bounded.
pub fn view_at(m: &OwnedMessage, read_at: Micros) -> RecordView<'_> {
    let producer_clock = matches!(m.timestamp(), rdkafka::Timestamp::CreateTime(_));
    if producer_clock
        && !CREATE_TIME_SEEN.load(Ordering::Relaxed)
        && !CREATE_TIME_SEEN.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(
            topic = m.topic(),
            partition = m.partition(),
            offset = m.offset(),
            "records carry their producer's clock (CreateTime), not the broker's: the \
             future-time rule allows producer clocks 10 minutes of slack and the dedup \
             generation follows producer clocks bounded by this consumer's. Use a broker \
             that stamps LogAppendTime on the event topic (docs/events.md)"
        );
    }
    let stamp = m
        .timestamp()
        .to_millis()
        .filter(|&ms| ms >= 0)
        .and_then(|ms| ms.checked_mul(1000));
    let bound = read_at.saturating_add(MAX_AHEAD_OF_READER);
    let timestamp = stamp.unwrap_or(NO_TIMESTAMP);
    let clock = match stamp {
        None => NO_TIMESTAMP,
        Some(t) if t > bound => {
            if !AHEAD_SEEN.load(Ordering::Relaxed) && !AHEAD_SEEN.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    topic = m.topic(),
                    partition = m.partition(),
                    offset = m.offset(),
                    ahead_secs = (t - read_at) / 1_000_000,
                    "a record is stamped more than an hour ahead of this consumer's clock: \
                     its clock is taken as this consumer's plus one hour (docs/events.md)"
                );
            }
            bound
        }
        Some(t) => t,
    };
    RecordView {
        key: m.key(),
        value: m.payload(),
        content_type: m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key.eq_ignore_ascii_case("content-type"))
                .and_then(|h| h.value)
        }),
        timestamp,
        clock,
        producer_clock,
    }
}

/// Wall-clock now in UTC microseconds.
pub fn now_micros() -> Micros {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as Micros)
}

/// Waits `d`, or less if `shutdown` comes first.
pub async fn sleep_or_cancel(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    use super::*;
    use crate::codec::{Decoder, json};
    use crate::registry::SchemaRegistry;

    fn record(ts: Timestamp) -> OwnedMessage {
        event_record(ts, 1_795_000_000_000_000, "e")
    }

    /// A valid event `event_id` happening at `event_time`, stamped `ts`.
    fn event_record(ts: Timestamp, event_time: Micros, event_id: &str) -> OwnedMessage {
        let ev = notiflow_schema::Event {
            event_id: event_id.into(),
            message_id: "wamid.1".into(),
            client_id: "acme".into(),
            recipient: "+5511987654321".into(),
            status: notiflow_schema::Status::Sent,
            category: notiflow_schema::Category::Utility,
            billable: true,
            country: notiflow_schema::Country::parse("BR").unwrap(),
            template: None,
            event_time,
            error_code: None,
            pricing_type: None,
        };
        let mut value = Vec::new();
        json::encode(&ev, &mut value);
        OwnedMessage::new(
            Some(value),
            Some(b"wamid.1".to_vec()),
            "t".into(),
            ts,
            0,
            0,
            None,
        )
    }

    #[test]
    fn a_record_without_a_broker_timestamp_is_rejected_not_given_a_clock() {
        let decoder = Decoder::new(SchemaRegistry::builtin());
        let ok = record(Timestamp::LogAppendTime(1_795_000_000_000));
        assert_eq!(view(&ok).timestamp, 1_795_000_000_000_000);
        assert!(decoder.decode(&view(&ok)).is_ok());
        for ts in [
            Timestamp::NotAvailable,
            Timestamp::CreateTime(-1),
            Timestamp::CreateTime(-5000),
        ] {
            let m = record(ts);
            assert_eq!(view(&m).timestamp, NO_TIMESTAMP, "{ts:?}");
            assert_eq!(
                decoder.decode(&view(&m)).unwrap_err().code(),
                "missing_timestamp",
                "{ts:?}"
            );
        }
    }

    /// A producer clock a year fast: its records' clock is the reader's
    /// plus an hour, the first record of a partition included, so it keeps
    /// dedup on, moves no generation past the next hour, and carries no
    /// far-future event in. A producer six minutes slow loses nothing.
    #[test]
    fn no_record_moves_a_clock_past_the_readers_by_more_than_an_hour() {
        use crate::dedup::{Dedup, fingerprint, generation};
        let hour = 3_600_000_000;
        let read = 1_795_000_000_000_000; // 2026-11-18T09:46:40Z
        let year = 365 * 24 * hour;
        let decoder = Decoder::new(SchemaRegistry::builtin());

        // First record of a fresh partition: stamped a year ahead, its
        // event an hour old (valid).
        let first = event_record(
            Timestamp::CreateTime((read + year) / 1000),
            read - hour,
            "a",
        );
        let v = view_at(&first, read);
        assert_eq!(v.timestamp, read + year, "the log's stamp is kept");
        assert_eq!(v.clock, read + hour);
        assert!(v.producer_clock);
        assert!(decoder.decode(&v).is_ok());
        let mut dedup = Dedup::new(24);
        let g = dedup.generation_of(v.clock);
        assert_eq!(
            g,
            generation(read) + 1,
            "one hour past the reader, not a year"
        );
        assert!(dedup.insert(fingerprint("a"), g));
        // An honest record and its retry: counted once (a generation a
        // year ahead made the retry new again).
        for (i, want) in [(0, true), (1, false)] {
            let m = event_record(Timestamp::CreateTime(read / 1000 + i), read, "b");
            let v = view_at(&m, read);
            let g = dedup.generation_of(v.clock);
            assert_eq!(dedup.insert(fingerprint("b"), g), want, "record {i}");
        }

        // Stamped a year ahead, happening a year ahead: a future event.
        let future = event_record(
            Timestamp::CreateTime((read + year) / 1000),
            read + year,
            "c",
        );
        assert_eq!(
            decoder.decode(&view_at(&future, read)).unwrap_err().code(),
            "future_timestamp"
        );

        // A producer six minutes slow: its events are six minutes ahead of
        // its stamps. Valid on its clock; the broker's clock has no slack.
        let six = 6 * 60_000_000;
        let slow = event_record(Timestamp::CreateTime((read - six) / 1000), read, "d");
        assert!(decoder.decode(&view_at(&slow, read)).is_ok());
        let broker = event_record(Timestamp::LogAppendTime((read - six) / 1000), read, "d");
        let v = view_at(&broker, read);
        assert!(!v.producer_clock);
        assert_eq!(decoder.decode(&v).unwrap_err().code(), "future_timestamp");
    }
}
