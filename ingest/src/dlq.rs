//! The dead-letter topic: rejected records, byte for byte, plus why.
//!
//! Each dead letter keeps the original key, value, headers and timestamp and
//! adds `notiflow.dlq.*` headers: the reason code, a readable detail, and the
//! source topic, partition and offset (which also identify a dead letter
//! uniquely, should a replay after a crash write it twice). A batch's dead
//! letters are acknowledged by the broker before its offsets move on, so a
//! crash can repeat a dead letter but never lose one.

use std::time::Duration;

use futures::future::try_join_all;
use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::KafkaConfig;
use crate::error::{IngestError, Reject};
use crate::kafka::client_config;

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

/// Writes rejected records to the dead-letter topic.
pub struct DlqWriter {
    producer: FutureProducer,
    topic: String,
}

impl DlqWriter {
    /// An idempotent producer to `kafka.dlq_topic`.
    pub fn new(kafka: &KafkaConfig) -> Result<Self, IngestError> {
        let producer = client_config(kafka)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .create()?;
        Ok(DlqWriter {
            producer,
            topic: kafka.dlq_topic.clone(),
        })
    }

    /// Sends every rejected record and waits until the broker has all of them.
    pub async fn send_all(&self, rejected: &[(&OwnedMessage, Reject)]) -> Result<(), IngestError> {
        let sends = rejected.iter().map(|(m, reason)| self.send(m, reason));
        try_join_all(sends).await.map(|_| ())
    }

    async fn send(&self, m: &OwnedMessage, reason: &Reject) -> Result<(), IngestError> {
        let mut headers = OwnedHeaders::new();
        if let Some(h) = m.headers() {
            for h in h.iter() {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        let detail = reason.to_string();
        let partition = m.partition().to_string();
        let offset = m.offset().to_string();
        for (key, value) in [
            (REASON_HEADER, reason.code()),
            (DETAIL_HEADER, detail.as_str()),
            (TOPIC_HEADER, m.topic()),
            (PARTITION_HEADER, partition.as_str()),
            (OFFSET_HEADER, offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        if let Some(v) = m.payload() {
            record = record.payload(v);
        }
        if let Some(ts) = m.timestamp().to_millis() {
            record = record.timestamp(ts);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| {
                IngestError::Dlq(format!("{} offset {}: {e}", m.partition(), m.offset()))
            })
    }
}
