//! Poison records of every size up to what the broker takes, through the
//! real broker: no partition stalls, every valid event goes through, and
//! every poison record is dead-lettered whole or as a bounded prefix with
//! its size and sha256. (A dead-letter topic that refuses everything is
//! `service::tests`, on librdkafka's mock cluster, which can refuse.)

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use notiflow_ingest::dlq::{
    OFFSET_HEADER, ORIGINAL_SHA256_HEADER, ORIGINAL_SIZE_HEADER, PARTITION_HEADER, REASON_HEADER,
    TRUNCATED_HEADER,
};
use notiflow_ingest::kafka::{client_config, ensure_topics};
use notiflow_ingest::{IngestConfig, KafkaConfig, Metrics};
use rdkafka::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::dlq::valid_event;
use crate::support::{fresh_kafka, header, read_all, start_ingest};

/// Sizes of poison values: small, around the 1,000,000-byte dead-letter
/// bound, and past it up to 4 MiB. (tansu 0.6.0 takes larger records but
/// never serves them: it caps every fetch response at 5 MiB, so nothing
/// past that reaches any consumer. Kafka's topics bound what they take.)
const SIZES: &[usize] = &[
    1,
    100_000,
    990_000,
    995_904,
    995_905,
    1_000_000,
    1_048_576,
    2_000_000,
    4 * 1024 * 1024,
];

/// A value of `size` bytes that is not JSON (`#` opens no JSON value, so
/// `json_syntax`), different per size.
fn poison(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| {
            if i == 0 {
                b'#'
            } else {
                b'!' + ((i * 7 + size) % 90) as u8
            }
        })
        .collect()
}

fn ingest_config(kafka: &KafkaConfig) -> IngestConfig {
    IngestConfig {
        group_id: format!("{}-ingest", kafka.topic),
        batch_max_records: 50,
        batch_max_wait_ms: 100,
        dlq_max_record_bytes: 1_000_000,
        dlq_max_attempts: 3,
        dlq_timeout_ms: 30_000,
    }
}

/// Produces the poison records the broker accepts (one per size, every
/// partition in turn) with valid events around them; returns the poison
/// values by key and the valid event ids.
async fn produce(kafka: &KafkaConfig) -> (BTreeMap<String, Vec<u8>>, BTreeSet<String>) {
    let producer: FutureProducer = client_config(kafka)
        .set("message.max.bytes", "20000000")
        .create()
        .unwrap();
    let mut poisons = BTreeMap::new();
    let mut valid = BTreeSet::new();
    for (i, &size) in SIZES.iter().enumerate() {
        let key = format!("wamid.POISON{i:02}");
        let value = poison(size);
        let sent = producer
            .send(
                FutureRecord::to(&kafka.topic).key(&key).payload(&value),
                Duration::from_secs(30),
            )
            .await;
        match sent {
            Ok(_) => {
                poisons.insert(key, value);
            }
            Err((e, _)) => eprintln!("the broker refused a {size}-byte record: {e}"),
        }
        for j in 0..3 {
            let (k, v) = valid_event(1000 + i * 3 + j);
            producer
                .send(
                    FutureRecord::to(&kafka.topic).key(&k).payload(&v),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
            valid.insert(format!("ev-valid-{}", 1000 + i * 3 + j));
        }
    }
    (poisons, valid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_of_every_size_are_dead_lettered_and_stall_nothing() {
    let kafka = fresh_kafka(3);
    ensure_topics(&kafka).await.unwrap();
    let (poisons, valid) = produce(&kafka).await;
    assert!(
        poisons.values().any(|v| v.len() >= 2_000_000),
        "the broker took no record of 2 MB: nothing past the bound was tried"
    );
    let shutdown = CancellationToken::new();
    let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
    let service = start_ingest(&kafka, ingest_config(&kafka), &metrics, &shutdown);
    let dead = tokio::task::spawn_blocking({
        let (kafka, n) = (kafka.clone(), poisons.len());
        move || read_all(&kafka, &kafka.dlq_topic, n, Duration::from_secs(120))
    })
    .await
    .unwrap();
    shutdown.cancel();
    let (stats, seen) = service.await.unwrap();

    let lettered: BTreeSet<String> = dead
        .iter()
        .map(|d| String::from_utf8_lossy(d.key().unwrap_or_default()).into_owned())
        .collect();
    let missing: Vec<(String, usize)> = poisons
        .iter()
        .filter(|(k, _)| !lettered.contains(*k))
        .map(|(k, v)| (k.clone(), v.len()))
        .collect();
    assert!(
        missing.is_empty(),
        "no dead letter for (key, size): {missing:?}"
    );
    assert_eq!(
        seen, valid,
        "every valid event went through: no partition stalled"
    );
    assert_eq!(stats.records as usize, poisons.len() + valid.len());
    assert_eq!(
        dead.len(),
        poisons.len(),
        "one dead letter per poison record"
    );
    let mut truncated = 0;
    for d in &dead {
        let key = String::from_utf8(d.key().unwrap().to_vec()).unwrap();
        let original = &poisons[&key];
        assert_eq!(
            header(d, REASON_HEADER).as_deref(),
            Some("json_syntax"),
            "{key}"
        );
        assert!(header(d, PARTITION_HEADER).is_some() && header(d, OFFSET_HEADER).is_some());
        let kept = d.payload().unwrap_or_default();
        let total = d.key().map_or(0, <[u8]>::len)
            + kept.len()
            + d.headers().map_or(0, |h| {
                use rdkafka::message::Headers;
                h.iter()
                    .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                    .sum()
            });
        assert!(total <= 1_000_000, "{key}: a dead letter of {total} bytes");
        if kept.len() == original.len() {
            assert_eq!(kept, &original[..], "{key}: kept whole");
            assert_eq!(header(d, TRUNCATED_HEADER), None, "{key}");
        } else {
            truncated += 1;
            assert!(original.len() > 990_000, "{key}: only large values are cut");
            assert_eq!(kept, &original[..kept.len()], "{key}: a prefix");
            assert!(
                kept.len() >= 900_000,
                "{key}: the prefix uses the room ({})",
                kept.len()
            );
            assert_eq!(
                header(d, TRUNCATED_HEADER).as_deref(),
                Some("value"),
                "{key}"
            );
            assert_eq!(
                header(d, ORIGINAL_SIZE_HEADER),
                Some(original.len().to_string()),
                "{key}"
            );
            assert_eq!(
                header(d, ORIGINAL_SHA256_HEADER),
                Some(hex::encode(Sha256::digest(original))),
                "{key}"
            );
        }
    }
    assert!(
        truncated >= 3,
        "values past the bound were cut: {truncated}"
    );
    assert_eq!(metrics.dlq_truncated.get(), truncated);
    assert_eq!(metrics.dlq_failures.get(), 0);
}
