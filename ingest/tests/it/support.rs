//! Shared test plumbing: fresh topics, producing, reading a topic to its end.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use notiflow_ingest::kafka::client_config;
use notiflow_ingest::service::{EventSink, Stats, run};
use notiflow_ingest::{IngestConfig, KafkaConfig, Metrics, SchemaRegistry};
use notiflow_schema::Event;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

/// Broker address from `KAFKA_BROKERS`, loopback by default.
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A config with topic names no other test (or earlier run) uses.
pub fn fresh_kafka(partitions: i32) -> KafkaConfig {
    static N: AtomicU32 = AtomicU32::new(0);
    let id = format!(
        "{}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    KafkaConfig {
        brokers: brokers(),
        topic: format!("it.status.{id}"),
        dlq_topic: format!("it.status.{id}.dlq"),
        partitions,
        properties: Default::default(),
    }
}

/// Reads every record of `topic` from the start until `expected` arrived
/// (or `timeout` passed), all partitions assigned, no consumer group.
pub fn read_all(
    kafka: &KafkaConfig,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = client_config(kafka)
        .set("group.id", "it-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = std::time::Instant::now() + timeout;
    let mut out = Vec::with_capacity(expected);
    while out.len() < expected && std::time::Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            out.push(m.unwrap().detach());
        }
    }
    // Anything beyond `expected` would be a defect too: look a little longer.
    let grace = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < grace {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            out.push(m.unwrap().detach());
        }
    }
    out
}

/// A header's value as text.
pub fn header(m: &OwnedMessage, key: &str) -> Option<String> {
    use rdkafka::message::Headers;
    m.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A sink that keeps the event ids and fails on a repeat.
#[derive(Default)]
pub struct Collect(pub BTreeSet<String>);

impl EventSink for Collect {
    fn accept(&mut self, ev: &Event<'_>, _: i32, _: i64) {
        assert!(
            self.0.insert(ev.event_id.to_string()),
            "event {} seen twice",
            ev.event_id
        );
    }
}

/// Runs the ingest service (built-in schemas) until `shutdown`; yields its
/// stats and the event ids its sink saw.
pub fn start_ingest(
    kafka: &KafkaConfig,
    cfg: IngestConfig,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<(Stats, BTreeSet<String>)> {
    start_ingest_with(kafka, cfg, SchemaRegistry::builtin(), metrics, shutdown)
}

/// [`start_ingest`] with schemas from `registry`.
pub fn start_ingest_with(
    kafka: &KafkaConfig,
    cfg: IngestConfig,
    registry: SchemaRegistry,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<(Stats, BTreeSet<String>)> {
    let (kafka, metrics, shutdown) = (kafka.clone(), metrics.clone(), shutdown.clone());
    tokio::spawn(async move {
        let mut sink = Collect::default();
        let stats = run(&kafka, registry, &cfg, &mut sink, metrics, shutdown)
            .await
            .unwrap();
        (stats, sink.0)
    })
}
