//! A dead-letter partition that never answers (leaderless on librdkafka's
//! mock broker, which the real broker here cannot be made into), through
//! the whole service: before, a batch spanning every partition waited for
//! every letter, so each batch cost every partition the letters' whole
//! retry budget. Now only the partition whose records are owed to the
//! dead-letter topic waits (its committed offset stays below its oldest
//! letter until the letter is given up with the alarm); the other
//! partitions are committed at once.

use std::time::{Duration, Instant};

use notiflow_ingest::codec::json;
use notiflow_ingest::kafka::client_config;
use notiflow_ingest::{IngestConfig, KafkaConfig, Metrics};
use notiflow_schema::{Category, Country, Event, Status};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::support::start_ingest;

fn valid(i: usize) -> (String, Vec<u8>) {
    let message_id = format!("wamid.T{i:04}");
    let ev = Event {
        event_id: format!("ev-t-{i}").into(),
        message_id: message_id.as_str().into(),
        client_id: "acme".into(),
        recipient: "+5511987654321".into(),
        status: Status::Sent,
        category: Category::Utility,
        billable: true,
        country: Country::parse("BR").unwrap(),
        template: None,
        event_time: 1_793_534_400_000_000,
        error_code: None,
        pricing_type: None,
    };
    let mut value = Vec::new();
    json::encode(&ev, &mut value);
    (message_id, value)
}

/// The group's committed offset of `partition` (-1: none yet).
fn committed(c: &BaseConsumer, topic: &str, partition: i32) -> i64 {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let got = c.committed_offsets(tpl, Duration::from_secs(5)).unwrap();
    match got.elements()[0].offset() {
        Offset::Offset(o) => o,
        _ => -1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_topic_that_times_out_holds_only_the_partitions_it_owes() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("src", 2, 1).unwrap();
    mock.create_topic("src.dlq", 2, 1).unwrap();
    for p in 0..2 {
        // Every dead letter waits for a leader that never comes.
        mock.partition_leader("src.dlq", p, None).unwrap();
    }
    let kafka = KafkaConfig {
        brokers: mock.bootstrap_servers(),
        topic: "src".into(),
        dlq_topic: "src.dlq".into(),
        partitions: 2,
        properties: Default::default(),
    };
    // Partition 0: a valid event, three poison records, valid events;
    // partition 1: valid events only.
    let producer: FutureProducer = client_config(&kafka).create().unwrap();
    let send = async |p: i32, key: &str, value: &[u8]| {
        producer
            .send(
                FutureRecord::to("src").partition(p).key(key).payload(value),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    };
    let (k, v) = valid(0);
    send(0, &k, &v).await;
    for i in 0..3 {
        send(0, &format!("wamid.P{i}"), b"not json").await;
    }
    for i in 1..10 {
        let (k, v) = valid(i);
        send(0, &k, &v).await;
    }

    let cfg = IngestConfig {
        group_id: "g".into(),
        batch_max_records: 1000,
        batch_max_wait_ms: 100,
        dlq_max_record_bytes: 1_000_000,
        dlq_max_attempts: 2,
        dlq_timeout_ms: 5000,
    };
    let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let run = start_ingest(&kafka, cfg, &metrics, &shutdown);
    let reader: BaseConsumer = client_config(&kafka).set("group.id", "g").create().unwrap();

    // Partition 0's three letters are in flight (none given up yet).
    // (librdkafka's mock answers no DescribeConfigs: start-up waits 10 s
    // for that warning.)
    let give_up = Instant::now() + Duration::from_secs(60);
    while metrics.dlq_pending.get() < 3 {
        assert!(
            Instant::now() < give_up,
            "the letters never got in flight: pending {}, failures {}",
            metrics.dlq_pending.get(),
            metrics.dlq_failures.get()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Partition 1's records arrive now: it owes nothing, so it is
    // committed to its end while every letter of partition 0 is still in
    // flight. Partition 0 stays below its first poison record (offset 1).
    for i in 10..30 {
        let (k, v) = valid(i);
        send(1, &k, &v).await;
    }
    let give_up = Instant::now() + Duration::from_secs(60);
    while committed(&reader, "src", 1) < 20 {
        assert!(
            Instant::now() < give_up,
            "partition 1 not committed: records {}, valid {}, p0 {}, p1 {}, failures {}",
            metrics.records.get(),
            metrics.valid.get(),
            committed(&reader, "src", 0),
            committed(&reader, "src", 1),
            metrics.dlq_failures.get()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        metrics.dlq_failures.get(),
        0,
        "partition 1 was committed only after the letters were given up ({:?} after start)",
        started.elapsed()
    );
    assert_eq!(metrics.dlq_pending.get(), 3, "the three letters in flight");
    let held = committed(&reader, "src", 0);
    assert!(
        held <= 1,
        "partition 0 committed past a letter in flight: {held}"
    );

    // The letters are given up with the alarm within their bound
    // (2 attempts × 5 s plus the back-off); partition 0 then moves on.
    let give_up = Instant::now() + Duration::from_secs(60);
    while committed(&reader, "src", 0) < 13 {
        assert!(Instant::now() < give_up, "partition 0 not committed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        metrics.dlq_failures.get(),
        3,
        "each letter given up, alarmed"
    );
    assert_eq!(metrics.dlq_pending.get(), 0);
    shutdown.cancel();
    let (stats, valid) = run.await.unwrap();
    assert_eq!(stats.valid, 30);
    assert_eq!(valid.len(), 30, "every valid event handed on");
}
