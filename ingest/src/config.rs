//! Configuration of the broker connection and of the ingest service.
//!
//! These sections are part of the one notiflow config file (see the `notiflow`
//! binary); each field's doc comment is the user's reference.

use std::collections::BTreeMap;
use std::path::PathBuf;

use notiflow_schema::secret::{Properties, SecretUrl};
use serde::{Deserialize, Serialize};

/// How to reach the Kafka-protocol broker, and which topics to use.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Topic of status events.
    pub topic: String,
    /// Dead-letter topic for records that break a rule of the event contract.
    pub dlq_topic: String,
    /// Partitions to create the topics with when they do not exist.
    pub partitions: i32,
    /// Extra librdkafka properties (e.g. `security.protocol`, `sasl.*`), passed as is.
    #[serde(default)]
    pub properties: Properties,
}

/// Where Avro writer schemas come from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// URL of a Confluent-compatible Schema Registry. When unset, schemas come
    /// from `files` plus notiflow's built-in schema under id 1.
    #[serde(default)]
    pub url: Option<SecretUrl>,
    /// Schema id → `.avsc` file, used when `url` is unset.
    #[serde(default)]
    pub files: BTreeMap<u32, PathBuf>,
    /// Timeout of one registry request, in milliseconds.
    pub timeout_ms: u64,
    /// How long the registry may not know a record's schema id before the
    /// record is a dead letter, in seconds. Meanwhile its partition waits
    /// at it (asking again every second), so every consumer group reaches
    /// the same verdict when the registry learns an id late.
    #[serde(default = "default_unknown_id_grace_secs")]
    pub unknown_id_grace_secs: u64,
}

fn default_unknown_id_grace_secs() -> u64 {
    crate::registry::UNKNOWN_ID_GRACE.as_secs()
}

/// The ingest service: validates the topic and routes poison records to the DLQ.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Consumer group of the validator.
    pub group_id: String,
    /// Most records in one batch.
    pub batch_max_records: usize,
    /// Longest wait for a batch to fill, in milliseconds.
    pub batch_max_wait_ms: u64,
    /// Largest dead letter (key + value + headers), bytes: a poison record
    /// larger than this is dead-lettered as a prefix of this size with its
    /// original size and sha256 in headers. Keep it at or below the
    /// dead-letter topic's `max.message.bytes`.
    pub dlq_max_record_bytes: usize,
    /// Attempts to write one dead letter while the broker refuses it; then
    /// it is given up with an alarm (`notiflow_ingest_dlq_failures_total`)
    /// and the partition moves on.
    pub dlq_max_attempts: u32,
    /// Longest wait for the broker to acknowledge one attempt of a dead
    /// letter, in milliseconds. Only the source partition of that record
    /// waits (its committed offset stays below the letter); the others
    /// move on.
    pub dlq_timeout_ms: u64,
}

/// A config value that breaks a rule, named by its path (`kafka.partitions`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config field `{field}`: {why}")]
pub struct ConfigError {
    /// Dotted path of the field.
    pub field: String,
    /// What is wrong with it.
    pub why: String,
}

impl ConfigError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, why: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            why: why.into(),
        }
    }
}

impl KafkaConfig {
    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(ConfigError::new(
                "kafka.brokers",
                "must name at least one host:port",
            ));
        }
        for b in self.brokers.split(',') {
            let ok = b
                .trim()
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(ConfigError::new(
                    "kafka.brokers",
                    format!("{b:?} is not host:port"),
                ));
            }
        }
        if self.topic.is_empty() {
            return Err(ConfigError::new("kafka.topic", "must not be empty"));
        }
        if self.dlq_topic.is_empty() || self.dlq_topic == self.topic {
            return Err(ConfigError::new(
                "kafka.dlq_topic",
                "must be set and differ from kafka.topic",
            ));
        }
        if !(1..=10_000).contains(&self.partitions) {
            return Err(ConfigError::new("kafka.partitions", "must be 1..=10000"));
        }
        Ok(())
    }
}

impl SchemaRegistryConfig {
    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.unknown_id_grace_secs > 86_400 {
            return Err(ConfigError::new(
                "schema_registry.unknown_id_grace_secs",
                "must be 0..=86400 (a partition waits this long at a record whose schema id the registry does not know)",
            ));
        }
        if let Some(url) = &self.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::new(
                "schema_registry.url",
                "must start with http:// or https://",
            ));
        }
        for (id, path) in &self.files {
            if !path.is_file() {
                return Err(ConfigError::new(
                    format!("schema_registry.files.{id}"),
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
        if self.timeout_ms == 0 {
            return Err(ConfigError::new(
                "schema_registry.timeout_ms",
                "must be > 0",
            ));
        }
        Ok(())
    }
}

impl IngestConfig {
    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.group_id.is_empty() {
            return Err(ConfigError::new("ingest.group_id", "must not be empty"));
        }
        if !(1..=1_000_000).contains(&self.batch_max_records) {
            return Err(ConfigError::new(
                "ingest.batch_max_records",
                "must be 1..=1000000",
            ));
        }
        if !(1..=60_000).contains(&self.batch_max_wait_ms) {
            return Err(ConfigError::new(
                "ingest.batch_max_wait_ms",
                "must be 1..=60000",
            ));
        }
        if !(16 * 1024..=1024 * 1024 * 1024).contains(&self.dlq_max_record_bytes) {
            return Err(ConfigError::new(
                "ingest.dlq_max_record_bytes",
                "must be 16384..=1073741824",
            ));
        }
        if !(1000..=300_000).contains(&self.dlq_timeout_ms) {
            return Err(ConfigError::new(
                "ingest.dlq_timeout_ms",
                "must be 1000..=300000",
            ));
        }
        if !(1..=100).contains(&self.dlq_max_attempts) {
            return Err(ConfigError::new(
                "ingest.dlq_max_attempts",
                "must be 1..=100",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka() -> KafkaConfig {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "t".into(),
            dlq_topic: "t.dlq".into(),
            partitions: 4,
            properties: Default::default(),
        }
    }

    #[test]
    fn bad_values_name_their_field() {
        assert_eq!(kafka().validate(), Ok(()));
        let mut k = kafka();
        k.brokers = "localhost".into();
        assert_eq!(k.validate().unwrap_err().field, "kafka.brokers");
        let mut k = kafka();
        k.dlq_topic = "t".into();
        assert_eq!(k.validate().unwrap_err().field, "kafka.dlq_topic");
        let mut k = kafka();
        k.partitions = 0;
        assert_eq!(k.validate().unwrap_err().field, "kafka.partitions");
        let r = SchemaRegistryConfig {
            url: Some("ftp://x".into()),
            files: BTreeMap::new(),
            timeout_ms: 1,
            unknown_id_grace_secs: 60,
        };
        assert_eq!(r.validate().unwrap_err().field, "schema_registry.url");
        let r = SchemaRegistryConfig {
            url: None,
            files: BTreeMap::new(),
            timeout_ms: 1,
            unknown_id_grace_secs: 86_401,
        };
        assert_eq!(
            r.validate().unwrap_err().field,
            "schema_registry.unknown_id_grace_secs"
        );
    }
}
