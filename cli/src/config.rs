//! The one typed notiflow config: embedded defaults → file → environment.
//!
//! Each section is owned by the crate that uses it; this module only stacks
//! the sources and validates everything at start-up, so a bad value stops the
//! process with the field's dotted path before any work starts.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use notiflow_aggregator::{AggregatorConfig, RedisConfig};
use notiflow_api::ApiConfig;
use notiflow_ingest::{IngestConfig, KafkaConfig, SchemaRegistryConfig};
use notiflow_lake::LakeConfig;
use notiflow_loadgen::GenConfig;
use notiflow_reports::ReportsConfig;
use notiflow_schema::secret::{REDACTED, names_a_secret, redact_url};
use serde::{Deserialize, Serialize};

/// The config as `notiflow config` prints it, every secret redacted so
/// the output can go into a ticket or a chat: values of keys that name a
/// secret, password or token (the S3 secret key, librdkafka's
/// `sasl.password` and `ssl.key.password`, …) and the password of any URL
/// (`redis://:pw@host`, `postgres://user:pw@host/db`, a registry's
/// `https://user:pw@host`).
pub fn redacted(cfg: &Config) -> Result<toml::Value, toml::ser::Error> {
    let mut v = toml::Value::try_from(cfg)?;
    redact(&mut v, "");
    Ok(v)
}

fn redact(v: &mut toml::Value, key: &str) {
    match v {
        toml::Value::Table(t) => t.iter_mut().for_each(|(k, x)| redact(x, k)),
        toml::Value::Array(a) => a.iter_mut().for_each(|x| redact(x, key)),
        toml::Value::String(s) => {
            if names_a_secret(key) && !s.is_empty() {
                *s = REDACTED.to_string();
            } else if let Some(url) = redact_url(s) {
                *s = url;
            }
        }
        _ => {}
    }
}

/// The embedded defaults (`cli/config/default.toml`).
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// Everything notiflow can be told.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Logging.
    pub log: LogConfig,
    /// Broker connection and topics.
    pub kafka: KafkaConfig,
    /// Where Avro writer schemas come from.
    pub schema_registry: SchemaRegistryConfig,
    /// The ingest (validate + dead-letter) service.
    pub ingest: IngestConfig,
    /// Where the live counters live.
    pub redis: RedisConfig,
    /// The counters service.
    pub aggregator: AggregatorConfig,
    /// The lake writer and its Iceberg table.
    pub lake: LakeConfig,
    /// Billing and detail exports, and their schedule.
    pub reports: ReportsConfig,
    /// The HTTP API and dashboard.
    pub api: ApiConfig,
    /// Prometheus exposition.
    pub metrics: MetricsConfig,
    /// OpenTelemetry span export.
    pub traces: TracesConfig,
    /// The load generator's traffic shape (`[gen]`).
    #[serde(rename = "gen")]
    pub generator: GenConfig,
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Default level or `tracing` filter (`info`, `notiflow_ingest=debug,info`); `RUST_LOG` wins.
    pub level: String,
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
}

/// Prometheus exposition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` serving `/metrics`; empty turns the endpoint off.
    pub listen: String,
}

/// OpenTelemetry span export (off unless an endpoint is set).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracesConfig {
    /// OTLP/HTTP traces URL of a collector, e.g.
    /// `http://otel-collector:4318/v1/traces`; empty: no export.
    pub otlp_endpoint: String,
    /// The `service.name` resource of the spans (one per component, say).
    pub service_name: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// A config that cannot be used, with the field that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file, type or unknown-field problem found while reading.
    #[error("{0}")]
    Read(String),
    /// A value that reads but breaks a rule.
    #[error("config field `{field}`: {why}")]
    Invalid {
        /// Dotted path.
        field: String,
        /// What is wrong.
        why: String,
    },
}

impl Config {
    /// Loads defaults, then `file` (which must exist if given), then `NOTIFLOW__*`
    /// variables from `env` and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Toml::string(DEFAULTS));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Read(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig.merge(Env::prefixed("NOTIFLOW__").split("__"));
        let cfg: Config = fig.extract().map_err(|e| ConfigError::Read(describe(e)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rules serde cannot check, each naming its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: String, why: String| ConfigError::Invalid { field, why };
        self.kafka.validate().map_err(|e| invalid(e.field, e.why))?;
        self.schema_registry
            .validate()
            .map_err(|e| invalid(e.field, e.why))?;
        self.ingest
            .validate()
            .map_err(|e| invalid(e.field, e.why))?;
        self.redis.validate().map_err(|e| invalid(e.field, e.why))?;
        self.aggregator
            .validate()
            .map_err(|e| invalid(e.field, e.why))?;
        self.lake.validate().map_err(|e| invalid(e.field, e.why))?;
        if self.lake.dedup_window_hours != self.aggregator.dedup_window_hours {
            return Err(invalid(
                "lake.dedup_window_hours".into(),
                format!(
                    "must equal aggregator.dedup_window_hours ({}) so that the lake and the counters agree",
                    self.aggregator.dedup_window_hours
                ),
            ));
        }
        self.reports.validate().map_err(|e| match e {
            notiflow_reports::ReportError::Config { field, reason } => invalid(field, reason),
            other => invalid("reports".into(), other.to_string()),
        })?;
        self.api.validate().map_err(|e| invalid(e.field, e.why))?;
        if !self.metrics.listen.is_empty()
            && self.metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid(
                "metrics.listen".into(),
                format!("{:?} is not host:port (or empty)", self.metrics.listen),
            ));
        }
        let ep = &self.traces.otlp_endpoint;
        let is_url = ep.starts_with("http://") || ep.starts_with("https://");
        if !ep.is_empty() && !is_url {
            return Err(invalid(
                "traces.otlp_endpoint".into(),
                format!("{ep:?} is not an http(s) URL (or empty)"),
            ));
        }
        if self.traces.service_name.trim().is_empty() {
            return Err(invalid(
                "traces.service_name".into(),
                "must not be empty".into(),
            ));
        }
        self.generator
            .validate()
            .map_err(|(f, why)| invalid(f.to_string(), why))?;
        if let Err(e) = self.log.level.parse::<tracing_subscriber::EnvFilter>() {
            return Err(invalid("log.level".into(), e.to_string()));
        }
        Ok(())
    }
}

/// Every figment error, each with its key path and where the value came from.
fn describe(err: figment::Error) -> String {
    err.into_iter()
        .map(|e| {
            let path = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .map(|m| m.name.to_string())
                .unwrap_or_default();
            if path.is_empty() {
                format!("config: {} ({source})", e.kind)
            } else {
                format!("config field `{path}`: {} ({source})", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return figment::Error
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_load_and_validate() {
        Jail::expect_with(|_| {
            let cfg = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(cfg.kafka.topic, "whatsapp.status.v1");
            assert_eq!(cfg.generator.billing_tz, "America/Sao_Paulo");
            Ok(())
        });
    }

    #[test]
    fn file_then_env_override_and_bad_fields_are_named() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "n.toml",
                "[kafka]\nbrokers = \"k1:9092,k2:9092\"\npartitions = 3\n",
            )?;
            jail.set_env("NOTIFLOW__KAFKA__PARTITIONS", "12");
            let cfg = Config::load(Some(Path::new("n.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(cfg.kafka.brokers, "k1:9092,k2:9092");
            assert_eq!(cfg.kafka.partitions, 12);

            jail.set_env("NOTIFLOW__KAFKA__PARTITIONS", "many");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("kafka.partitions"), "{err}");

            jail.set_env("NOTIFLOW__KAFKA__PARTITIONS", "0");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("`kafka.partitions`"), "{err}");

            jail.clear_env();
            jail.create_file("typo.toml", "[kafka]\nbroker = \"x:1\"\n")?;
            let err = Config::load(Some(Path::new("typo.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("broker"), "{err}");

            jail.set_env("NOTIFLOW__GEN__RATE", "fast");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("gen.rate"), "{err}");
            Ok(())
        });
    }

    /// Every secret a config can hold, set: a `Debug` print of the config
    /// (what a log line, a panic or an error chain shows) carries none of
    /// them, and the services still get each one.
    #[test]
    fn a_printed_config_shows_no_secret() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "s.toml",
                r#"
[kafka.properties]
"sasl.password" = "kafka-sasl-s3cr3t"
"ssl.key.pem" = "-----BEGIN PRIVATE KEY-----pem-s3cr3t"
"security.protocol" = "SASL_SSL"

[redis]
url = "redis://:redis-s3cr3t@127.0.0.1:6379/0"

[lake]
catalog_uri = "postgres://lake:pg-s3cr3t@db:5432/cat"

[lake.s3]
secret_access_key = "aws-s3cr3t"

[reports]
pseudonym_secret = "pseudo-s3cr3t"

[schema_registry]
url = "https://reg:registry-s3cr3t@registry.example:8081"
"#,
            )?;
            let cfg = Config::load(Some(Path::new("s.toml"))).map_err(|e| e.to_string())?;
            let printed = format!("{cfg:?} {cfg:#?}");
            assert!(!printed.contains("s3cr3t"), "{printed}");
            assert!(printed.contains("SASL_SSL"), "the rest still prints");
            assert_eq!(cfg.lake.s3.secret_access_key.expose(), "aws-s3cr3t");
            assert_eq!(cfg.reports.pseudonym_secret.expose(), "pseudo-s3cr3t");
            assert!(cfg.redis.url.contains("redis-s3cr3t"));
            Ok(())
        });
    }
}
