//! `notiflow gen --events N` into the real broker; an independent plain
//! consumer reads the topic back and its counts equal the ground truth file.
//!
//! The reader drains one partition at a time: tansu 0.6.0's fetch
//! (`record_fetch.sql`) runs a window sum from the fetch offset to the high
//! watermark on every request, so one request over many deep partitions is
//! slow. The generator sends no `content-type` headers here (its default):
//! tansu's per-record header lookup makes header-heavy topics unreadable
//! at this volume (see BENCHMARKS.md).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use notiflow_ingest::kafka::client_config;
use notiflow_ingest::source::views;
use notiflow_ingest::{Decoder, KafkaConfig, SchemaRegistry};
use notiflow_loadgen::GroundTruth;
use notiflow_schema::time::{MINUTE_MICROS, format_rfc3339, minute_of};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::{brokers, fresh_topic, notiflow};

const EVENTS: u64 = 1_000_000;
const PARTITIONS: i32 = 8;

/// Every record of the topic, partition by partition up to each high watermark.
fn read_topic(kafka: &KafkaConfig, partitions: i32) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = client_config(kafka)
        .set("group.id", "it-plain-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut out = Vec::new();
    for p in 0..partitions {
        let (_, high) = consumer
            .fetch_watermarks(&kafka.topic, p, Duration::from_secs(30))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&kafka.topic, p, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let give_up = Instant::now() + Duration::from_secs(120);
        let mut last = -1;
        while last + 1 < high {
            assert!(
                Instant::now() < give_up,
                "partition {p} stuck at {last} of {high}"
            );
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                let m = m.unwrap().detach();
                last = m.offset();
                out.push(m);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_records_match_their_ground_truth() {
    let topic = fresh_topic("gen");
    let kafka = KafkaConfig {
        brokers: brokers(),
        topic: topic.clone(),
        dlq_topic: format!("{topic}.dlq"),
        partitions: PARTITIONS,
        properties: Default::default(),
    };
    let dir = tempfile::tempdir().unwrap();
    let truth_path = dir.path().join("truth.json");
    let status = notiflow()
        .args([
            "gen",
            "--events",
            &EVENTS.to_string(),
            "--fast",
            "--seed",
            "2026",
        ])
        .args(["--malformed-share", "0.001", "--truth"])
        .arg(&truth_path)
        .env("NOTIFLOW__KAFKA__BROKERS", brokers())
        .env("NOTIFLOW__KAFKA__TOPIC", &topic)
        .env("NOTIFLOW__KAFKA__DLQ_TOPIC", format!("{topic}.dlq"))
        .env("NOTIFLOW__KAFKA__PARTITIONS", PARTITIONS.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let truth = GroundTruth::read(&truth_path).unwrap();
    assert_eq!(truth.records, EVENTS);
    assert!(
        truth.duplicates > 3_000,
        "about 0.5% duplicates: {}",
        truth.duplicates
    );
    assert!(truth.dlq_by_reason.values().sum::<u64>() > 500);
    let records = tokio::task::spawn_blocking({
        let kafka = kafka.clone();
        move || read_topic(&kafka, PARTITIONS)
    })
    .await
    .unwrap();
    assert_eq!(
        records.len() as u64,
        EVENTS,
        "the topic holds exactly what was generated"
    );

    // Count independently: decode, dedup by event_id, bucket by minute.
    let mut decoder = Decoder::new(SchemaRegistry::builtin());
    let views = views(&records);
    decoder.prepare(&views).await.unwrap();
    let mut seen = HashSet::with_capacity(EVENTS as usize);
    let mut minutes: HashMap<(String, i64, String), u64> = HashMap::new();
    let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
    let mut duplicates = 0u64;
    for v in &views {
        match decoder.decode(v) {
            Ok(ev) => {
                if !seen.insert(ev.event_id.to_string()) {
                    duplicates += 1;
                    continue;
                }
                *minutes
                    .entry((
                        ev.client_id.to_string(),
                        minute_of(ev.event_time),
                        ev.status.to_string(),
                    ))
                    .or_default() += 1;
            }
            Err(r) => *rejected.entry(r.code().to_string()).or_default() += 1,
        }
    }
    assert_eq!(seen.len() as u64, truth.valid_events);
    assert_eq!(duplicates, truth.duplicates);
    assert_eq!(rejected, truth.dlq_by_reason);
    let expected: HashMap<(String, i64, String), u64> = truth
        .minute_counts
        .iter()
        .map(|c| {
            let minute = notiflow_schema::time::parse_rfc3339(&c.minute).unwrap() / MINUTE_MICROS;
            ((c.client_id.clone(), minute, c.status.to_string()), c.count)
        })
        .collect();
    assert_eq!(minutes.len(), expected.len());
    for (k, n) in &expected {
        assert_eq!(
            minutes.get(k),
            Some(n),
            "client {} minute {} status {}",
            k.0,
            format_rfc3339(k.1 * MINUTE_MICROS),
            k.2
        );
    }
    // Traffic is skewed: the busiest 1% of clients send about half.
    let mut per_client: HashMap<&str, u64> = HashMap::new();
    for ((c, _, _), n) in &minutes {
        *per_client.entry(c).or_default() += n;
    }
    let mut sizes: Vec<u64> = per_client.values().copied().collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let top: u64 = sizes.iter().take(sizes.len().div_ceil(100)).sum();
    let share = top as f64 / seen.len() as f64;
    assert!((0.4..0.6).contains(&share), "top 1% share {share}");
}
