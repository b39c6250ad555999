//! `notiflow gen` into the broker vs. a bare librdkafka producer, same broker,
//! same run, same producer settings and record sizes (the broker is the
//! ceiling on this machine, so the ratio is what matters).
//!
//! `cargo bench -p notiflow-loadgen --bench produce` (needs infra/up.sh);
//! `PRODUCE_EVENTS` sets the record count (default 1,000,000).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use notiflow_ingest::KafkaConfig;
use notiflow_loadgen::GenConfig;
use notiflow_loadgen::generator::{Generator, Shape};
use notiflow_loadgen::run::{RunOptions, producer, run_blocking, send_blocking};
use rdkafka::producer::Producer;
use tokio_util::sync::CancellationToken;

fn kafka(tag: &str) -> KafkaConfig {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    KafkaConfig {
        brokers: std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        topic: format!("bench.{tag}.{nanos}"),
        dlq_topic: format!("bench.{tag}.{nanos}.dlq"),
        partitions: 8,
        properties: Default::default(),
    }
}

fn main() {
    let n: u64 = std::env::var("PRODUCE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Runtime::new().unwrap();

    let cfg = GenConfig {
        seed: 1,
        ..notiflow_loadgen::bench::gen_cfg()
    };
    // Pre-encode the generator's own records (same config) so the bare
    // producer sends the same bytes.
    let mut g = Generator::new(
        Shape::from_config(&cfg, 1_795_464_000_000_000).unwrap(),
        None,
    );
    let records: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
        .map(|_| {
            let r = g.next_record();
            (r.key.unwrap().to_vec(), r.value.unwrap().to_vec())
        })
        .collect();
    let mean = records.iter().map(|r| r.1.len()).sum::<usize>() as f64 / n as f64;

    let bare = kafka("bare");
    rt.block_on(notiflow_ingest::kafka::ensure_topics(&bare))
        .unwrap();
    let p = producer(&bare).unwrap();
    let t = Instant::now();
    for (k, v) in &records {
        send_blocking(&p, &bare.topic, Some(k), Some(v), None, None).unwrap();
    }
    p.flush(Duration::from_secs(300)).unwrap();
    let bare_rate = n as f64 / t.elapsed().as_secs_f64();
    drop(p);

    let gen_kafka = kafka("gen");
    rt.block_on(notiflow_ingest::kafka::ensure_topics(&gen_kafka))
        .unwrap();
    let opts = RunOptions {
        events: Some(n),
        fast: true,
        ..RunOptions::default()
    };
    let report = run_blocking(&gen_kafka, &cfg, &opts, &CancellationToken::new()).unwrap();

    let encode = run_blocking(
        &gen_kafka,
        &cfg,
        &RunOptions {
            events: Some(5_000_000),
            encode_only: true,
            ..RunOptions::default()
        },
        &CancellationToken::new(),
    )
    .unwrap();

    println!("records: {n}, mean value {mean:.0} bytes, 8 partitions, acks=all, idempotent");
    println!("bare librdkafka producer: {bare_rate:>10.0} records/s");
    println!(
        "notiflow gen:             {:>10.0} records/s ({:.1}% of bare)",
        report.rate(),
        100.0 * report.rate() / bare_rate
    );
    println!(
        "notiflow gen encode-only: {:>10.0} records/s (5,000,000 records, no broker)",
        encode.rate()
    );
}
