//! Building Kafka clients from config, waiting for the broker, creating topics.
//!
//! Every component (ingest, aggregator, lake, the generator) connects the same
//! way, so the librdkafka settings that matter for correctness live here once.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
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
    let mut backoff = crate::retry::Backoff::new();
    for attempt in 1u32.. {
        let delay = backoff.next_delay();
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
    }
    Err(IngestError::ShutDown)
}

/// Creates the event and dead-letter topics if they do not exist yet, and
/// says loudly when the event topic stamps records with the producers'
/// clocks (see [`TIMESTAMP_TYPE`]).
pub async fn ensure_topics(cfg: &KafkaConfig) -> Result<(), IngestError> {
    ensure_topic(cfg, &cfg.topic, cfg.partitions).await?;
    ensure_topic(cfg, &cfg.dlq_topic, cfg.partitions).await?;
    match timestamp_type(cfg, &cfg.topic).await {
        Ok(Some(t)) if t == "LogAppendTime" => {}
        Ok(found) => tracing::warn!(
            topic = %cfg.topic,
            timestamp_type = found.as_deref().unwrap_or("unknown (the broker did not say)"),
            "the event topic is not {TIMESTAMP_TYPE}=LogAppendTime: the producers' clocks \
             stamp the records, and the future-time rule and the dedup generation follow \
             them (a producer clock minutes slow dead-letters valid events). Set \
             {TIMESTAMP_TYPE}=LogAppendTime on the topic (docs/events.md)"
        ),
        Err(e) => {
            tracing::warn!(topic = %cfg.topic, error = %e, "cannot read the topic's {TIMESTAMP_TYPE}")
        }
    }
    Ok(())
}

/// True if the broker's metadata lists `topic` with partitions (false on
/// any doubt: the caller then asks to create it).
async fn topic_exists(cfg: &KafkaConfig, topic: &str) -> bool {
    let Ok(consumer) = client_config(cfg).create::<BaseConsumer>() else {
        return false;
    };
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .is_ok_and(|md| {
                md.topics()
                    .iter()
                    .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            })
    })
    .await
    .unwrap_or(false)
}

/// How many partitions the broker's metadata lists for `topic` (`None` when
/// it cannot say): what a sink records so that a partition it never
/// committed still counts (the lake's completeness).
pub async fn partition_count(cfg: &KafkaConfig, topic: &str) -> Option<i32> {
    let consumer = client_config(cfg).create::<BaseConsumer>().ok()?;
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let md = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .ok()?;
        md.topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len() as i32)
    })
    .await
    .ok()
    .flatten()
}

/// The topic setting that makes the broker's clock, not a producer's, the
/// record timestamp every consumer group reads: notiflow creates its
/// topics with `LogAppendTime`.
pub const TIMESTAMP_TYPE: &str = "message.timestamp.type";

/// The `message.timestamp.type` of `topic`, as the broker reports it.
pub async fn timestamp_type(cfg: &KafkaConfig, topic: &str) -> Result<Option<String>, IngestError> {
    let admin: AdminClient<DefaultClientContext> = client_config(cfg).create()?;
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &opts)
        .await?;
    for r in results.into_iter().flatten() {
        if let Some(e) = r.get(TIMESTAMP_TYPE) {
            return Ok(e.value.clone());
        }
    }
    Ok(None)
}

/// Creates one topic with `partitions` partitions unless it exists. An
/// existing topic is found in the metadata first, so a deployment whose
/// topics an operator created needs no right to create topics (and no
/// controller round trip).
pub async fn ensure_topic(
    cfg: &KafkaConfig,
    topic: &str,
    partitions: i32,
) -> Result<(), IngestError> {
    if topic_exists(cfg, topic).await {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = client_config(cfg).create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
        .set(TIMESTAMP_TYPE, "LogAppendTime");
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
