//! Building Kafka clients from config, waiting for the broker, creating topics.
//!
//! Every component (ingest, aggregator, lake, the generator) connects the same
//! way, so the librdkafka settings that matter for correctness live here once.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::error::IngestError;

/// librdkafka settings for a client of `cfg` (brokers plus the user's extra properties).
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

/// Waits until the broker answers a metadata request, retrying with
/// exponential backoff (capped at 10 s) and a log line per failure.
/// Returns an error only if `shutdown` fires first.
pub async fn wait_for_broker(
    cfg: &KafkaConfig,
    shutdown: &CancellationToken,
) -> Result<(), IngestError> {
    let consumer: Arc<BaseConsumer> = Arc::new(client_config(cfg).create()?);
    let mut delay = Duration::from_millis(200);
    for attempt in 1u32.. {
        let c = Arc::clone(&consumer);
        let probe = tokio::task::spawn_blocking(move || {
            c.fetch_metadata(None, Duration::from_secs(5)).map(|_| ())
        });
        match probe.await {
            Ok(Ok(())) => {
                if attempt > 1 {
                    tracing::info!(brokers = %cfg.brokers, attempt, "broker reachable");
                }
                return Ok(());
            }
            Ok(Err(e)) => tracing::warn!(
                brokers = %cfg.brokers, attempt, retry_in_ms = delay.as_millis() as u64, error = %e,
                "broker unreachable, retrying"
            ),
            Err(e) => return Err(IngestError::Config(format!("metadata probe failed: {e}"))),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(IngestError::ShutDown),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    Err(IngestError::ShutDown)
}

/// Creates the event and dead-letter topics if they do not exist yet.
pub async fn ensure_topics(cfg: &KafkaConfig) -> Result<(), IngestError> {
    ensure_topic(cfg, &cfg.topic, cfg.partitions).await?;
    ensure_topic(cfg, &cfg.dlq_topic, cfg.partitions).await
}

/// Creates one topic with `partitions` partitions unless it exists.
pub async fn ensure_topic(
    cfg: &KafkaConfig,
    topic: &str,
    partitions: i32,
) -> Result<(), IngestError> {
    let admin: AdminClient<DefaultClientContext> = client_config(cfg).create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics([&new], &opts).await? {
        match result {
            Ok(_) => tracing::info!(topic, partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                tracing::error!(topic = t, %code, "cannot create topic");
                return Err(IngestError::Kafka(rdkafka::error::KafkaError::AdminOp(
                    code,
                )));
            }
        }
    }
    Ok(())
}
