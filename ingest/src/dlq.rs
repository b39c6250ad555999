//! The dead-letter topic: rejected records, byte for byte, plus why.
//!
//! Each dead letter keeps the original key, value, headers and timestamp and
//! adds `notiflow.dlq.*` headers: the reason code, a readable detail, and the
//! source topic, partition and offset (which also identify a dead letter
//! uniquely, should a replay after a crash write it twice). A batch's dead
//! letters are acknowledged by the broker before its offsets move on, so a
//! crash can repeat a dead letter but never lose one.
//!
//! A poison record never stalls its partition, nor any other:
//! - a record too large for a dead letter (`max_record_bytes`: a 2 MB value
//!   the source topic took but the dead-letter producer or topic refuses)
//!   is dead-lettered as a bounded prefix, with its original size and
//!   sha256 in headers ([`fit`]);
//! - a dead letter the broker keeps refusing is retried a bounded number of
//!   times, then given up with an alarm (`notiflow_ingest_dlq_failures_total`
//!   and an error log naming partition, offset, size and sha256; the record
//!   itself is still in the source topic), and the batch moves on.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use rdkafka::Message;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{IngestConfig, KafkaConfig};
use crate::error::{IngestError, Reject};
use crate::kafka::client_config;
use crate::metrics::Metrics;
use crate::source::sleep_or_cancel;

/// Header with the [`Reject::code`].
pub const REASON_HEADER: &str = "notiflow.dlq.reason";
/// Header with the human-readable reason.
pub const DETAIL_HEADER: &str = "notiflow.dlq.detail";
/// Header with the source topic.
pub const TOPIC_HEADER: &str = "notiflow.dlq.source.topic";
/// Header with the source partition (decimal).
pub const PARTITION_HEADER: &str = "notiflow.dlq.source.partition";
/// Header with the source offset (decimal).
pub const OFFSET_HEADER: &str = "notiflow.dlq.source.offset";
/// Header saying what was cut to fit: `value`, `key`, `headers`, comma-separated.
pub const TRUNCATED_HEADER: &str = "notiflow.dlq.truncated";
/// Header with the original value's size in bytes (decimal), when cut.
pub const ORIGINAL_SIZE_HEADER: &str = "notiflow.dlq.original.size";
/// Header with the original value's sha256 (lower-case hex), when cut.
pub const ORIGINAL_SHA256_HEADER: &str = "notiflow.dlq.original.sha256";

/// The detail header is cut to this many bytes (a parser's message can
/// quote its input).
const DETAIL_MAX: usize = 1024;
/// Room kept for notiflow's own headers and the record's framing.
const OWN_HEADERS_ROOM: usize = 4096;
/// The bound of the second try when the broker refuses a dead letter for its
/// size though it fits ours (a topic with a lower `max.message.bytes`): a
/// few KiB that identify the record.
const MINIMAL_LIMIT: usize = OWN_HEADERS_ROOM + 4096;

/// A dead letter as it will be sent: the original record, or its bounded form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter<'a> {
    /// The key (a prefix of it, if `key` is in `truncated`).
    pub key: Option<&'a [u8]>,
    /// The value (a prefix of it, if `value` is in `truncated`).
    pub value: Option<&'a [u8]>,
    /// Whether the original headers are carried.
    pub keep_headers: bool,
    /// What was cut, e.g. `["value"]`; empty when the record fits whole.
    pub truncated: Vec<&'static str>,
    /// The original value's size and sha256, when anything was cut.
    pub original: Option<(usize, String)>,
}

/// The dead letter of `key`/`value`/`headers_bytes` (the original headers'
/// total size) within `limit` bytes: the record as it is when it fits,
/// otherwise the original headers dropped if they are large, the key cut if
/// it is large, and the value cut to what is left, with the original value's
/// size and sha256 kept.
pub fn fit<'a>(
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    headers_bytes: usize,
    limit: usize,
) -> Letter<'a> {
    let (k, v) = (key.map_or(0, <[u8]>::len), value.map_or(0, <[u8]>::len));
    let budget = limit.saturating_sub(OWN_HEADERS_ROOM);
    if k + v + headers_bytes <= budget {
        return Letter {
            key,
            value,
            keep_headers: true,
            truncated: Vec::new(),
            original: None,
        };
    }
    let mut truncated = Vec::new();
    // Key and headers are metadata: each may keep at most a quarter.
    let keep_headers = headers_bytes <= budget / 4;
    if !keep_headers {
        truncated.push("headers");
    }
    let key_room = budget / 4;
    let key = key.map(|b| {
        if b.len() > key_room {
            truncated.push("key");
            &b[..key_room]
        } else {
            b
        }
    });
    let used = key.map_or(0, <[u8]>::len) + if keep_headers { headers_bytes } else { 0 };
    let value_room = budget.saturating_sub(used);
    let original = value.map(|b| (b.len(), hex::encode(Sha256::digest(b))));
    let value = value.map(|b| {
        if b.len() > value_room {
            truncated.insert(0, "value");
            &b[..value_room]
        } else {
            b
        }
    });
    Letter {
        key,
        value,
        keep_headers,
        truncated,
        original,
    }
}

/// What became of one batch's dead letters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sent {
    /// Written whole.
    pub whole: u64,
    /// Written as a bounded prefix ([`fit`]).
    pub truncated: u64,
    /// Given up on after the bounded retries (alarmed and logged).
    pub failed: u64,
}

/// Writes rejected records to the dead-letter topic.
pub struct DlqWriter {
    producer: FutureProducer,
    topic: String,
    max_record_bytes: usize,
    max_attempts: u32,
    timeout_ms: u64,
    metrics: Metrics,
}

impl DlqWriter {
    /// An idempotent producer to `kafka.dlq_topic`, with the size bound and
    /// retry budget of `cfg`.
    pub fn new(
        kafka: &KafkaConfig,
        cfg: &IngestConfig,
        metrics: Metrics,
    ) -> Result<Self, IngestError> {
        // The producer's own bound sits above ours, so ours decides.
        let producer_max = (cfg.dlq_max_record_bytes + 64 * 1024).to_string();
        let producer = client_config(kafka)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.max.bytes", &producer_max)
            // One attempt ends within this, so a broker that keeps refusing
            // or never answers costs at most `dlq_max_attempts` ×
            // `dlq_timeout_ms` before the alarm.
            .set("message.timeout.ms", cfg.dlq_timeout_ms.to_string())
            .create()?;
        Ok(DlqWriter {
            producer,
            topic: kafka.dlq_topic.clone(),
            max_record_bytes: cfg.dlq_max_record_bytes,
            max_attempts: cfg.dlq_max_attempts,
            timeout_ms: cfg.dlq_timeout_ms,
            metrics,
        })
    }

    /// Sends every rejected record and waits until the broker has each of
    /// them or it was given up on. Errs only on shutdown, when the batch's
    /// offsets must not move on.
    pub async fn send_all(
        &self,
        rejected: &[(&OwnedMessage, Reject)],
        shutdown: &CancellationToken,
    ) -> Result<Sent, IngestError> {
        let outcomes = join_all(rejected.iter().map(|(m, r)| self.send(m, r, shutdown))).await;
        let mut sent = Sent::default();
        for o in outcomes {
            match o? {
                Outcome::Whole => sent.whole += 1,
                Outcome::Truncated => sent.truncated += 1,
                Outcome::Failed => sent.failed += 1,
            }
        }
        self.metrics.dlq_truncated.inc_by(sent.truncated);
        self.metrics.dlq_failures.inc_by(sent.failed);
        Ok(sent)
    }

    async fn send(
        &self,
        m: &OwnedMessage,
        reason: &Reject,
        shutdown: &CancellationToken,
    ) -> Result<Outcome, IngestError> {
        let headers_bytes = m.headers().map_or(0, |h| {
            h.iter()
                .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                .sum()
        });
        let mut letter = fit(m.key(), m.payload(), headers_bytes, self.max_record_bytes);
        let mut backoff = crate::retry::Backoff::new();
        let mut attempt = 1;
        let mut shrunk = false;
        loop {
            let err = match self.produce(m, reason, &letter).await {
                Ok(()) if letter.truncated.is_empty() => return Ok(Outcome::Whole),
                Ok(()) => return Ok(Outcome::Truncated),
                Err(e) => e,
            };
            if shutdown.is_cancelled() {
                return Err(IngestError::ShutDown);
            }
            if refused_for_size(&err) && !shrunk {
                // The topic's limit is below ours: keep what identifies it.
                tracing::warn!(partition = m.partition(), offset = m.offset(), error = %err,
                    "dead letter refused for its size; sending a few KiB of it");
                letter = fit(m.key(), m.payload(), headers_bytes, MINIMAL_LIMIT);
                shrunk = true;
                continue;
            }
            if attempt >= self.max_attempts || !retryable(&err) {
                let (size, sha256) = letter.original.clone().unwrap_or_else(|| {
                    let v = m.payload().unwrap_or_default();
                    (v.len(), hex::encode(Sha256::digest(v)))
                });
                tracing::error!(
                    topic = m.topic(), partition = m.partition(), offset = m.offset(),
                    reason = reason.code(), value_bytes = size, value_sha256 = %sha256,
                    attempts = attempt, error = %err,
                    "dead letter could not be written; giving up on it (the record is still in the source topic at this offset)"
                );
                return Ok(Outcome::Failed);
            }
            let delay = backoff.next_delay();
            tracing::warn!(partition = m.partition(), offset = m.offset(), attempt, error = %err,
                retry_in_ms = delay.as_millis() as u64, "dead letter not written, retrying");
            sleep_or_cancel(shutdown, delay).await;
            if shutdown.is_cancelled() {
                return Err(IngestError::ShutDown);
            }
            attempt += 1;
        }
    }

    async fn produce(
        &self,
        m: &OwnedMessage,
        reason: &Reject,
        l: &Letter<'_>,
    ) -> Result<(), KafkaError> {
        let mut headers = OwnedHeaders::new();
        if l.keep_headers
            && let Some(h) = m.headers()
        {
            for h in h.iter() {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        let detail = reason.to_string();
        let detail = cut_str(&detail, DETAIL_MAX);
        let partition = m.partition().to_string();
        let offset = m.offset().to_string();
        let truncated = l.truncated.join(",");
        let (size, sha256) = l
            .original
            .as_ref()
            .map(|(s, h)| (s.to_string(), h.as_str()))
            .unwrap_or_default();
        let mut own = vec![
            (REASON_HEADER, reason.code()),
            (DETAIL_HEADER, detail),
            (TOPIC_HEADER, m.topic()),
            (PARTITION_HEADER, partition.as_str()),
            (OFFSET_HEADER, offset.as_str()),
        ];
        if !l.truncated.is_empty() {
            own.push((TRUNCATED_HEADER, truncated.as_str()));
            own.push((ORIGINAL_SIZE_HEADER, size.as_str()));
            own.push((ORIGINAL_SHA256_HEADER, sha256));
        }
        for (key, value) in own {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(k) = l.key {
            record = record.key(k);
        }
        if let Some(v) = l.value {
            record = record.payload(v);
        }
        if let Some(ts) = m.timestamp().to_millis() {
            record = record.timestamp(ts);
        }
        self.producer
            .send(record, Duration::from_millis(self.timeout_ms))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

/// Dead letters on their way, per source partition.
///
/// Each letter is sent by a task of its own, bounded by
/// `ingest.dlq_max_attempts` × `ingest.dlq_timeout_ms`, so a dead-letter
/// partition that times out holds no other partition: the service commits
/// each source partition up to its oldest letter that is neither durable
/// nor given up ([`Letters::commit_bound`]), and every other partition on.
/// What is in flight is bounded ([`Letters::over_budget`]).
pub struct Letters {
    writer: Arc<DlqWriter>,
    tasks: JoinSet<Result<Outcome, IngestError>>,
    /// Task id → source partition, offset and size held.
    ids: HashMap<tokio::task::Id, (i32, i64, usize)>,
    /// Source partition → offset → letters of it in flight.
    pending: BTreeMap<i32, BTreeMap<i64, u32>>,
    bytes: usize,
}

/// Letters in flight at most before the service waits for the oldest: a
/// dead-letter topic that is down for good costs this much memory, not more.
pub const MAX_PENDING_LETTERS: usize = 100_000;
/// Bytes of letters in flight at most (their records are held in memory).
pub const MAX_PENDING_BYTES: usize = 256 * 1024 * 1024;

impl Letters {
    /// Letters sent through `writer`.
    pub fn new(writer: DlqWriter) -> Self {
        Letters {
            writer: Arc::new(writer),
            tasks: JoinSet::new(),
            ids: HashMap::new(),
            pending: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// Starts sending the letter of `m`, rejected for `reason`.
    pub fn send(&mut self, m: &OwnedMessage, reason: Reject, shutdown: &CancellationToken) {
        let size = m.payload().map_or(0, <[u8]>::len) + m.key().map_or(0, <[u8]>::len);
        let (p, offset) = (m.partition(), m.offset());
        let (writer, m, shutdown) = (Arc::clone(&self.writer), m.clone(), shutdown.clone());
        let id = self
            .tasks
            .spawn(async move { writer.send(&m, &reason, &shutdown).await })
            .id();
        self.ids.insert(id, (p, offset, size));
        *self
            .pending
            .entry(p)
            .or_default()
            .entry(offset)
            .or_default() += 1;
        self.bytes += size;
        self.writer.metrics.dlq_pending.set(self.ids.len() as i64);
    }

    /// Books the letters that have finished, without waiting.
    pub fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next_with_id() {
            self.book(done);
        }
    }

    /// Waits for one letter to finish (when [`Letters::over_budget`]).
    pub async fn wait_one(&mut self) {
        if let Some(done) = self.tasks.join_next_with_id().await {
            self.book(done);
        }
    }

    /// True when more letters are in flight than memory allows.
    pub fn over_budget(&self) -> bool {
        self.ids.len() >= MAX_PENDING_LETTERS || self.bytes >= MAX_PENDING_BYTES
    }

    /// Letters in flight.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when no letter is in flight.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The offset source partition `p` may be committed to at most: its
    /// oldest letter in flight (`None`: no bound).
    pub fn commit_bound(&self, p: i32) -> Option<i64> {
        self.pending
            .get(&p)
            .and_then(|s| s.first_key_value())
            .map(|(&o, _)| o)
    }

    fn book(
        &mut self,
        done: Result<(tokio::task::Id, Result<Outcome, IngestError>), tokio::task::JoinError>,
    ) {
        let (id, outcome) = match done {
            Ok((id, o)) => (id, Some(o)),
            Err(e) => (e.id(), None),
        };
        let Some((p, offset, size)) = self.ids.remove(&id) else {
            return;
        };
        self.bytes -= size;
        self.writer.metrics.dlq_pending.set(self.ids.len() as i64);
        let m = &self.writer.metrics;
        match outcome {
            Some(Ok(Outcome::Whole)) => {}
            Some(Ok(Outcome::Truncated)) => m.dlq_truncated.inc(),
            Some(Ok(Outcome::Failed)) => m.dlq_failures.inc(),
            // Shut down: not durable, so its partition's offset stays
            // below it, and it is sent again after the restart.
            Some(Err(_)) => return,
            None => {
                tracing::error!(
                    partition = p,
                    offset,
                    "a dead-letter task failed; the partition's offset stays below its record until a restart sends it again"
                );
                return;
            }
        }
        if let Some(s) = self.pending.get_mut(&p) {
            if let Some(n) = s.get_mut(&offset) {
                *n -= 1;
                if *n == 0 {
                    s.remove(&offset);
                }
            }
            if s.is_empty() {
                self.pending.remove(&p);
            }
        }
    }
}

enum Outcome {
    Whole,
    Truncated,
    Failed,
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn cut_str(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A refusal of the record's size, by the producer or the broker.
fn refused_for_size(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
        )
    )
}

/// Whether sending the same dead letter again can succeed: not when the
/// topic or the record itself is refused.
fn retryable(e: &KafkaError) -> bool {
    !matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::InvalidRequiredAcks
                | RDKafkaErrorCode::PolicyViolation
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_that_fits_is_sent_whole() {
        let v = vec![b'x'; 1000];
        let l = fit(Some(b"wamid.1"), Some(&v), 40, 1_000_000);
        assert_eq!(l.value, Some(&v[..]));
        assert_eq!(l.key, Some(&b"wamid.1"[..]));
        assert!(l.keep_headers && l.truncated.is_empty() && l.original.is_none());
    }

    #[test]
    fn a_value_too_large_becomes_a_bounded_prefix_with_its_size_and_digest() {
        let limit = 1_000_000;
        for size in [996_000, 1_000_000, 2_000_000, 16 * 1024 * 1024] {
            let v: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let l = fit(Some(b"wamid.1"), Some(&v), 100, limit);
            let kept = l.value.unwrap();
            let total = kept.len() + 7 + 100;
            assert!(total <= limit - OWN_HEADERS_ROOM, "{size}: {total}");
            assert_eq!(kept, &v[..kept.len()], "a prefix");
            assert_eq!(l.truncated, vec!["value"], "{size}");
            let (n, sha) = l.original.unwrap();
            assert_eq!(n, size);
            // sha256 written out independently of fit(): of the whole value.
            assert_eq!(sha, hex::encode(Sha256::digest(&v)));
            assert_eq!(sha.len(), 64);
        }
    }

    #[test]
    fn huge_keys_and_headers_are_cut_too() {
        let key = vec![b'k'; 900_000];
        let v = vec![b'v'; 10];
        let l = fit(Some(&key), Some(&v), 700_000, 1_000_000);
        assert_eq!(l.truncated, vec!["headers", "key"]);
        assert!(!l.keep_headers);
        assert!(l.key.unwrap().len() <= (1_000_000 - OWN_HEADERS_ROOM) / 4);
        assert_eq!(l.value, Some(&v[..]), "a small value stays whole");
        assert_eq!(l.original.unwrap().0, 10);
    }

    #[test]
    fn the_minimal_letter_is_a_few_kib_that_identify_the_record() {
        let v = vec![1u8; 5_000_000];
        let l = fit(Some(b"wamid.1"), Some(&v), 10, MINIMAL_LIMIT);
        assert_eq!(l.truncated, vec!["value"]);
        assert_eq!(l.key, Some(&b"wamid.1"[..]));
        assert!(l.value.unwrap().len() <= 4096);
        assert_eq!(l.original.unwrap().0, 5_000_000);
    }

    #[test]
    fn details_are_cut_on_a_char_boundary() {
        assert_eq!(cut_str("ação", 2), "a");
        assert_eq!(cut_str("ação", 3), "aç");
        assert_eq!(cut_str("abc", 10), "abc");
    }

    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use rdkafka::{Offset, Timestamp, TopicPartitionList};

    fn configs(brokers: String) -> (KafkaConfig, IngestConfig) {
        let kafka = KafkaConfig {
            brokers,
            topic: "src".into(),
            dlq_topic: "dlq".into(),
            partitions: 1,
            properties: Default::default(),
        };
        let cfg = IngestConfig {
            group_id: "g".into(),
            batch_max_records: 10,
            batch_max_wait_ms: 100,
            dlq_max_record_bytes: 1_000_000,
            dlq_max_attempts: 3,
            dlq_timeout_ms: 30_000,
        };
        (kafka, cfg)
    }

    fn poison(offset: i64, value: Vec<u8>) -> OwnedMessage {
        OwnedMessage::new(
            Some(value),
            Some(format!("wamid.{offset}").into_bytes()),
            "src".into(),
            Timestamp::LogAppendTime(1_795_000_000_000),
            0,
            offset,
            None,
        )
    }

    /// librdkafka's mock broker answers the dead-letter topic's metadata
    /// with "topic authorization failed", as a broker whose ACLs refuse
    /// notiflow would: every dead letter is given up, alarmed, and the
    /// call returns (the batch moves on) instead of retrying for ever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_topic_that_refuses_everything_is_given_up_with_an_alarm() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("dlq", 1, 1).unwrap();
        mock.topic_error(
            "dlq",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
        let (kafka, cfg) = configs(mock.bootstrap_servers());
        let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
        let w = DlqWriter::new(&kafka, &cfg, metrics.clone()).unwrap();
        let msgs: Vec<_> = (0..5).map(|i| poison(i, b"not json".to_vec())).collect();
        let rejected: Vec<_> = msgs
            .iter()
            .map(|m| (m, Reject::JsonSyntax("expected value".into())))
            .collect();
        let sent = tokio::time::timeout(
            Duration::from_secs(120),
            w.send_all(&rejected, &CancellationToken::new()),
        )
        .await
        .expect("send_all returned: a refusing topic stalls nothing")
        .unwrap();
        assert_eq!(
            sent,
            Sent {
                whole: 0,
                truncated: 0,
                failed: 5
            }
        );
        assert_eq!(metrics.dlq_failures.get(), 5);
    }

    /// The broker refuses a dead letter for its size although it fits our
    /// bound (a topic whose `max.message.bytes` is lower): the second try is
    /// the minimal letter, which the broker takes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_size_refusal_is_answered_with_the_minimal_letter() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("dlq", 1, 1).unwrap();
        let (kafka, cfg) = configs(mock.bootstrap_servers());
        let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
        let w = DlqWriter::new(&kafka, &cfg, metrics.clone()).unwrap();
        let big: Vec<u8> = (0..500_000).map(|i| (i % 200) as u8).collect();
        let msg = poison(7, big.clone());
        mock.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
        );
        let sent = w
            .send_all(
                &[(&msg, Reject::JsonSyntax("x".into()))],
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(
            sent,
            Sent {
                whole: 0,
                truncated: 1,
                failed: 0
            }
        );
        let consumer: BaseConsumer = client_config(&kafka)
            .set("group.id", "reader")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("dlq", 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let give_up = std::time::Instant::now() + Duration::from_secs(30);
        let letter = loop {
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                break m.unwrap().detach();
            }
            assert!(std::time::Instant::now() < give_up, "no dead letter");
        };
        let header = |k: &str| {
            letter
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == k))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(header(TRUNCATED_HEADER).as_deref(), Some("value"));
        assert_eq!(header(ORIGINAL_SIZE_HEADER).as_deref(), Some("500000"));
        assert_eq!(
            header(ORIGINAL_SHA256_HEADER),
            Some(hex::encode(Sha256::digest(&big)))
        );
        assert_eq!(header(OFFSET_HEADER).as_deref(), Some("7"));
        let kept = letter.payload().unwrap();
        assert!(kept.len() <= 4096 && !kept.is_empty(), "{}", kept.len());
        assert_eq!(kept, &big[..kept.len()]);
        assert_eq!(letter.key(), Some(&b"wamid.7"[..]));
    }

    #[test]
    fn refusals_of_the_record_are_not_retried() {
        let size = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(refused_for_size(&size) && !retryable(&size));
        let topic = KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed);
        assert!(!refused_for_size(&topic) && !retryable(&topic));
        let down = KafkaError::MessageProduction(RDKafkaErrorCode::BrokerTransportFailure);
        assert!(retryable(&down));
        let timeout = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert!(retryable(&timeout));
    }
}
