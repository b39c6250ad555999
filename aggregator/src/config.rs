//! The `[aggregator]` and `[redis]` sections of the notiflow config file.
//!
//! Each field's doc comment is the user's reference.

use notiflow_ingest::sink::ConfigError;
use notiflow_schema::secret::SecretUrl;
use serde::{Deserialize, Serialize};

/// Where the counters live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Redis URL, `redis://[:password@]host:port[/db]` (or `rediss://`).
    pub url: SecretUrl,
    /// Prefix of every key notiflow writes (see `aggregator/README.md`);
    /// `{nf}` puts every key in one Redis Cluster slot.
    pub key_prefix: String,
    /// Timeout of one Redis command, milliseconds.
    pub timeout_ms: u64,
}

/// The aggregator: per-minute, per-client counters applied exactly once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorConfig {
    /// Kafka consumer group of the aggregators (several processes share it).
    pub group_id: String,
    /// Most records in one batch.
    pub batch_max_records: usize,
    /// Longest wait for a batch to fill, milliseconds; a batch is applied at
    /// least this often while records flow (at most 500).
    pub batch_max_wait_ms: u64,
    /// Dedup window in hours (SPEC §3; the lake uses the same value).
    pub dedup_window_hours: u32,
    /// How long minute buckets are kept, hours; older events are counted in
    /// `late_dropped` instead of their minute bucket.
    pub minute_retention_hours: u32,
    /// How long hourly and daily roll-ups are kept, days.
    pub rollup_retention_days: u32,
    /// Entries kept in the deltas stream (approximate trim).
    pub delta_stream_len: u64,
}

impl RedisConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.url.starts_with("redis://")
            || self.url.starts_with("rediss://")
            || self.url.starts_with("unix://"))
        {
            return Err(ConfigError::new(
                "redis.url",
                "must start with redis://, rediss:// or unix://",
            ));
        }
        if redis::Client::open(self.url.as_str()).is_err() {
            return Err(ConfigError::new("redis.url", "is not a valid Redis URL"));
        }
        if self.key_prefix.is_empty()
            || !self
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.{}".contains(&b))
        {
            return Err(ConfigError::new(
                "redis.key_prefix",
                "must be non-empty [A-Za-z0-9_.{}-]",
            ));
        }
        if self.timeout_ms == 0 {
            return Err(ConfigError::new("redis.timeout_ms", "must be > 0"));
        }
        Ok(())
    }
}

impl AggregatorConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.group_id.is_empty() {
            return Err(ConfigError::new("aggregator.group_id", "must not be empty"));
        }
        if !(1..=1_000_000).contains(&self.batch_max_records) {
            return Err(ConfigError::new(
                "aggregator.batch_max_records",
                "must be 1..=1000000",
            ));
        }
        if !(1..=500).contains(&self.batch_max_wait_ms) {
            return Err(ConfigError::new(
                "aggregator.batch_max_wait_ms",
                "must be 1..=500 (counters are fresh within a second)",
            ));
        }
        if !(1..=24 * 14).contains(&self.dedup_window_hours) {
            return Err(ConfigError::new(
                "aggregator.dedup_window_hours",
                "must be 1..=336",
            ));
        }
        if self.minute_retention_hours == 0 {
            return Err(ConfigError::new(
                "aggregator.minute_retention_hours",
                "must be > 0",
            ));
        }
        if self.rollup_retention_days == 0 {
            return Err(ConfigError::new(
                "aggregator.rollup_retention_days",
                "must be > 0",
            ));
        }
        if self.delta_stream_len == 0 {
            return Err(ConfigError::new(
                "aggregator.delta_stream_len",
                "must be > 0",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg() -> AggregatorConfig {
        AggregatorConfig {
            group_id: "g".into(),
            batch_max_records: 50_000,
            batch_max_wait_ms: 200,
            dedup_window_hours: 24,
            minute_retention_hours: 48,
            rollup_retention_days: 400,
            delta_stream_len: 10_000,
        }
    }

    #[test]
    fn bad_fields_are_named() {
        assert!(agg().validate().is_ok());
        let mut c = agg();
        c.batch_max_wait_ms = 900;
        assert_eq!(
            c.validate().unwrap_err().field,
            "aggregator.batch_max_wait_ms"
        );
        let r = RedisConfig {
            url: "http://x".into(),
            key_prefix: "nf".into(),
            timeout_ms: 1000,
        };
        assert_eq!(r.validate().unwrap_err().field, "redis.url");
        let r = RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "n f".into(),
            timeout_ms: 1000,
        };
        assert_eq!(r.validate().unwrap_err().field, "redis.key_prefix");
    }
}
