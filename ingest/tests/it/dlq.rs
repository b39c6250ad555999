//! The malformed corpus mixed with valid events, through the real broker:
//! every bad record lands in the DLQ with its reason and origin, every good
//! one reaches the sink, and nothing else happens.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use notiflow_ingest::codec::json;
use notiflow_ingest::corpus::malformed;
use notiflow_ingest::dlq::{OFFSET_HEADER, PARTITION_HEADER, REASON_HEADER, TOPIC_HEADER};
use notiflow_ingest::kafka::{client_config, ensure_topics};
use notiflow_ingest::{IngestConfig, Metrics};
use notiflow_schema::{Category, Country, Event, Status};
use rdkafka::Message;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::support::{fresh_kafka, header, read_all, start_ingest};

pub(crate) fn valid_event(i: usize) -> (String, Vec<u8>) {
    let message_id = format!("wamid.VALID{i:04}");
    let ev = Event {
        event_id: format!("ev-valid-{i}").into(),
        message_id: message_id.as_str().into(),
        client_id: "acme".into(),
        recipient: "+5511987654321".into(),
        status: Status::ALL[i % 5],
        category: Category::Utility,
        billable: true,
        country: Country::parse("BR").unwrap(),
        template: None,
        event_time: 1_793_534_400_000_000 + i as i64,
        error_code: (i % 5 == 4).then_some(131_026),
        pricing_type: None,
    };
    let mut value = Vec::new();
    json::encode(&ev, &mut value);
    (message_id, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_goes_to_the_dlq_and_valid_events_go_through() {
    let kafka = fresh_kafka(3);
    ensure_topics(&kafka).await.unwrap();
    let producer: FutureProducer = client_config(&kafka).create().unwrap();
    let corpus = malformed();
    let mut expected_valid = BTreeSet::new();
    // Interleave: two valid events, then one corpus record, so a poison record
    // sits between good ones on every partition.
    let mut sent = 0;
    for (i, bad) in corpus.iter().enumerate() {
        for j in 0..2 {
            let (key, value) = valid_event(i * 2 + j);
            producer
                .send(
                    FutureRecord::to(&kafka.topic).key(&key).payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
            expected_valid.insert(format!("ev-valid-{}", i * 2 + j));
            sent += 1;
        }
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&kafka.topic);
        if let Some(k) = &bad.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = &bad.value {
            rec = rec.payload(v.as_slice());
        }
        let headers = OwnedHeaders::new().insert(Header {
            key: "x-trace",
            value: Some(bad.name.as_str()),
        });
        let headers = match &bad.content_type {
            Some(ct) => headers.insert(Header {
                key: "content-type",
                value: Some(ct.as_str()),
            }),
            None => headers,
        };
        producer
            .send(rec.headers(headers), Duration::from_secs(10))
            .await
            .unwrap();
        sent += 1;
    }

    let cfg = IngestConfig {
        group_id: format!("{}-ingest", kafka.topic),
        batch_max_records: 17,
        batch_max_wait_ms: 100,
        dlq_max_record_bytes: 1_000_000,
        dlq_max_attempts: 5,
        dlq_timeout_ms: 30_000,
    };
    let shutdown = CancellationToken::new();
    let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
    let service = start_ingest(&kafka, cfg, &metrics, &shutdown);

    // The DLQ fills as the service works; wait for every dead letter.
    let dead = tokio::task::spawn_blocking({
        let (kafka, n) = (kafka.clone(), corpus.len());
        move || read_all(&kafka, &kafka.dlq_topic, n, Duration::from_secs(90))
    })
    .await
    .unwrap();
    shutdown.cancel();
    let (stats, seen) = service.await.unwrap();

    assert_eq!(
        seen, expected_valid,
        "every valid event reached the sink, once"
    );
    assert_eq!(stats.records, sent as u64);
    assert_eq!(stats.valid, expected_valid.len() as u64);
    // The Prometheus series say the same as the run's own stats.
    assert_eq!(metrics.records.get(), stats.records);
    assert_eq!(metrics.valid.get(), stats.valid);
    for (reason, n) in &stats.rejected {
        assert_eq!(
            metrics.dlq.with_label_values(&[*reason]).get(),
            *n,
            "{reason}"
        );
    }
    assert_eq!(
        metrics.batch_seconds.get_sample_count() > 0,
        stats.records > 0
    );
    assert_eq!(
        dead.len(),
        corpus.len(),
        "one dead letter per corpus record, no more"
    );

    let by_name: BTreeMap<_, _> = corpus.iter().map(|c| (c.name.clone(), c)).collect();
    let mut origins = BTreeSet::new();
    for d in &dead {
        let name = header(d, "x-trace").expect("original headers are kept");
        let c = by_name[&name];
        assert_eq!(
            header(d, REASON_HEADER).as_deref(),
            Some(c.expect.as_str()),
            "{name}"
        );
        assert_eq!(d.key(), c.key.as_deref(), "{name}: key kept");
        assert_eq!(
            d.payload().filter(|p| !p.is_empty()),
            c.value.as_deref().filter(|p| !p.is_empty()),
            "{name}: bytes kept"
        );
        assert_eq!(header(d, "content-type"), c.content_type, "{name}");
        assert_eq!(
            header(d, TOPIC_HEADER).as_deref(),
            Some(kafka.topic.as_str())
        );
        let origin = (
            header(d, PARTITION_HEADER).unwrap().parse::<i32>().unwrap(),
            header(d, OFFSET_HEADER).unwrap().parse::<i64>().unwrap(),
        );
        assert!(origins.insert(origin), "{name}: origin {origin:?} unique");
    }
    let mut reasons = BTreeMap::new();
    for c in &corpus {
        *reasons.entry(c.expect.as_str()).or_insert(0u64) += 1;
    }
    assert_eq!(stats.rejected, reasons);
}
