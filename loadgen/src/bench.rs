//! What the pipeline benchmark binaries (aggregator, lake) share: the bench
//! traffic, producing it into the broker, a bare consumer's rate on the same
//! broker, the process's RSS, arguments and runtime. Not used by the product itself; a broken
//! bench set-up panics with what failed.
#![allow(clippy::expect_used)]

use std::time::Instant;

use notiflow_ingest::KafkaConfig;
use notiflow_ingest::kafka::{client_config, ensure_topic};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio_util::sync::CancellationToken;

use crate::generator::Shape;
use crate::{GenConfig, RunOptions, run_blocking};

/// Partitions of every bench topic.
pub const PARTITIONS: i32 = 8;

/// An environment variable or a default.
pub fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

/// Milliseconds since the epoch, for names no other run uses.
pub fn stamp() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        .to_string()
}

/// A `kB` line of `/proc/self/status`, MiB (0 when absent).
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The process's resident set, MiB.
pub fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// The process's peak resident set so far, MiB.
pub fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// The bench binary's arguments, without cargo's `--bench`-style flags.
pub fn args() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect()
}

/// The benches' runtime: two workers, as the machine has two cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// In-process traffic: `RATE` events/s of simulated time (default the
/// 100M/day average) over the hour before now.
pub fn shape() -> Shape {
    Shape {
        seed: 5,
        clients: 5000,
        rate: env("RATE", "1160").parse().unwrap_or(1160.0),
        start: notiflow_ingest::source::now_micros() - 3_600_000_000,
        avro_share: 0.3,
        content_type_share: 0.0,
        duplicate_share: 0.005,
        malformed_share: 0.0,
    }
}

/// The generator's config for produced bench traffic.
pub fn gen_cfg() -> GenConfig {
    GenConfig {
        seed: 5,
        clients: 5000,
        rate: "100M/day".into(),
        avro_share: 0.3,
        content_type_share: 0.0,
        duplicate_share: 0.005,
        malformed_share: 0.0,
        billing_tz: "America/Sao_Paulo".into(),
    }
}

/// A bench topic on the broker of `KAFKA_BROKERS`.
pub fn kafka(topic: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: env("KAFKA_BROKERS", "127.0.0.1:9092"),
        topic: topic.into(),
        dlq_topic: format!("{topic}.dlq"),
        partitions: PARTITIONS,
        properties: Default::default(),
    }
}

/// Produces `n` generator records as fast as the broker takes them; records/s.
pub async fn produce(k: &KafkaConfig, n: u64) -> f64 {
    ensure_topic(k, &k.topic, PARTITIONS)
        .await
        .expect("creating the bench topic");
    let k2 = k.clone();
    let report = tokio::task::spawn_blocking(move || {
        run_blocking(
            &k2,
            &gen_cfg(),
            &RunOptions {
                events: Some(n),
                fast: true,
                ..RunOptions::default()
            },
            &CancellationToken::new(),
        )
    })
    .await
    .expect("producer task")
    .expect("producing the bench records");
    report.rate()
}

/// A bare librdkafka consumer reading every partition at once: records/s
/// from its first record to its `n`-th.
pub async fn bare_consumer(k: &KafkaConfig, n: u64) -> f64 {
    let c: StreamConsumer = client_config(k)
        .set("group.id", format!("bare-{}", stamp()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("bare consumer");
    c.subscribe(&[&k.topic]).expect("subscribe");
    let mut seen = 0u64;
    let mut t0 = None;
    while seen < n {
        let m = c.recv().await.expect("fetch");
        std::hint::black_box(m.payload());
        t0.get_or_insert_with(Instant::now);
        seen += 1;
    }
    seen as f64 / t0.map_or(1.0, |t| t.elapsed().as_secs_f64())
}
