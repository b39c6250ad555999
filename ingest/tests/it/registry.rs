//! The HTTP schema registry client against a minimal Confluent-compatible
//! endpoint served on loopback (`GET /schemas/ids/{id}`), including a writer
//! schema the built-in map does not have.

use notiflow_ingest::codec::avro::{put_long, put_str};
use notiflow_ingest::{Decoder, RecordView, SchemaRegistry};
use notiflow_schema::Status;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const WRITER_V2: &str = r#"{"type":"record","name":"E","fields":[
  {"name":"event_id","type":"string"},{"name":"message_id","type":"string"},
  {"name":"client_id","type":"string"},{"name":"recipient","type":"string"},
  {"name":"status","type":"string"},{"name":"category","type":"string"},
  {"name":"billable","type":"boolean"},{"name":"country","type":"string"},
  {"name":"event_time","type":{"type":"long","logicalType":"timestamp-micros"}},
  {"name":"added_in_v2","type":["null","string"],"default":null}]}"#;

/// Serves `/schemas/ids/42` (v2 schema), 404 for other ids, 500 for id 500.
async fn serve(listener: TcpListener) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/schemas/ids/42" => (
                    "200 OK",
                    serde_json::json!({ "schema": WRITER_V2 }).to_string(),
                ),
                "/schemas/ids/500" => ("500 Internal Server Error", "{}".to_string()),
                _ => (
                    "404 Not Found",
                    r#"{"error_code":40403,"message":"Schema not found"}"#.to_string(),
                ),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/vnd.schemaregistry.v1+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

fn value(schema_id: u32) -> Vec<u8> {
    value_of(schema_id, "ev-1")
}

/// [`value`] with another event id.
fn value_of(schema_id: u32, event_id: &str) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(&schema_id.to_be_bytes());
    for s in [
        event_id,
        "wamid.R",
        "acme",
        "+5511987654321",
        "read",
        "marketing",
    ] {
        put_str(s, &mut v);
    }
    v.push(1);
    put_str("BR", &mut v);
    put_long(1_793_534_400_000_000, &mut v);
    put_long(1, &mut v);
    put_str("new field", &mut v);
    v
}

#[tokio::test]
async fn schemas_come_from_the_registry_by_id() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(listener));
    let registry = SchemaRegistry::http(&url, std::time::Duration::from_secs(5)).unwrap();
    let mut dec = Decoder::new(registry);
    let (good, unknown) = (value(42), value(7));
    let views = [good.as_slice(), unknown.as_slice()].map(|v| RecordView {
        key: Some(b"wamid.R"),
        value: Some(v),
        content_type: None,
        timestamp: 1_793_534_400_000_000,
        clock: 1_793_534_400_000_000,
        producer_clock: false,
    });
    dec.prepare(&views).await.unwrap();
    let ev = dec.decode(&views[0]).unwrap();
    assert_eq!(ev.status, Status::Read);
    assert_eq!(ev.client_id, "acme");
    assert_eq!(
        dec.decode(&views[1]).unwrap_err().code(),
        "unknown_schema_id"
    );

    // A registry that fails is not the record's fault: prepare errors (retry), no reject cached.
    let broken = value(500);
    let view = RecordView {
        value: Some(&broken),
        ..views[0]
    };
    let err = dec.prepare(&[view]).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

/// A registry where id 43 answers 404 to its first request only (a replica
/// that has not seen the registration yet), and id 44 answers 404 until
/// `published` is set; both then serve the v2 schema. Counts requests.
async fn serve_late(
    listener: TcpListener,
    published: std::sync::Arc<std::sync::atomic::AtomicBool>,
    asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    let first_43 = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let (published, asked, first_43) = (published.clone(), asked.clone(), first_43.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("").to_string();
            asked.fetch_add(1, Ordering::SeqCst);
            let known = match path.as_str() {
                "/schemas/ids/43" => !first_43.swap(false, Ordering::SeqCst),
                "/schemas/ids/44" => published.load(Ordering::SeqCst),
                _ => false,
            };
            let (status, body) = if known {
                (
                    "200 OK",
                    serde_json::json!({ "schema": WRITER_V2 }).to_string(),
                )
            } else {
                ("404 Not Found", r#"{"error_code":40403}"#.to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

fn view(v: &[u8]) -> RecordView<'_> {
    RecordView {
        key: Some(b"wamid.R"),
        value: Some(v),
        content_type: None,
        timestamp: 1_793_534_400_000_000,
        clock: 1_793_534_400_000_000,
        producer_clock: false,
    }
}

/// A 404 used to be cached for the process's life: a consumer that asked
/// a moment before the registry had the schema rejected every record of
/// that id for ever, while another group (or a restart) decoded them.
#[tokio::test]
async fn a_schema_the_registry_learns_late_is_decoded_not_rejected_for_ever() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let published = std::sync::Arc::new(AtomicBool::new(false));
    let asked = std::sync::Arc::new(AtomicUsize::new(0));
    tokio::spawn(serve_late(listener, published.clone(), asked.clone()));
    let registry = SchemaRegistry::http(&url, std::time::Duration::from_secs(5)).unwrap();
    let ttl = std::time::Duration::from_millis(1500);
    let mut dec = Decoder::new(registry).with_miss_ttl(ttl);
    let (late, later) = (value(43), value(44));

    // Id 43: 404 once, found on the batch's retry; id 44: not yet there.
    let views = [view(&late), view(&later)];
    dec.prepare(&views).await.unwrap();
    assert_eq!(dec.decode(&views[0]).unwrap().status, Status::Read);
    assert_eq!(
        dec.decode(&views[1]).unwrap_err().code(),
        "unknown_schema_id"
    );

    // Within the miss's lifetime the registry is not asked again.
    let before = asked.load(Ordering::SeqCst);
    dec.prepare(&views).await.unwrap();
    assert_eq!(
        asked.load(Ordering::SeqCst),
        before,
        "a fresh miss is answered from memory"
    );
    assert_eq!(
        dec.decode(&views[1]).unwrap_err().code(),
        "unknown_schema_id"
    );

    // The registry learns id 44; once the miss is older than its lifetime,
    // the next batch asks again and its records decode.
    published.store(true, Ordering::SeqCst);
    tokio::time::sleep(ttl + std::time::Duration::from_millis(100)).await;
    dec.prepare(&views).await.unwrap();
    assert_eq!(dec.decode(&views[1]).unwrap().status, Status::Read);
    assert!(asked.load(Ordering::SeqCst) > before);
}

/// Records with many garbage schema ids cost one bounded wait per batch,
/// not one per id: a poison burst cannot stall its partition.
#[tokio::test]
async fn many_unknown_ids_in_a_batch_share_one_bounded_wait() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(listener));
    let registry = SchemaRegistry::http(&url, std::time::Duration::from_secs(5)).unwrap();
    let mut dec = Decoder::new(registry);
    let values: Vec<Vec<u8>> = (1000..1050).map(value).collect();
    let views: Vec<RecordView<'_>> = values.iter().map(|v| view(v)).collect();
    let started = std::time::Instant::now();
    dec.prepare(&views).await.unwrap();
    let took = started.elapsed();
    // 50 unknown ids, 2 retries of 0.2 + 0.4 s for all of them together;
    // one wait per id would be 30 s.
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    for v in &views {
        assert_eq!(dec.decode(v).unwrap_err().code(), "unknown_schema_id");
    }
}

/// A registry that knows no id (404), counting requests and the most in
/// flight at once (each answer waits 2 ms, as a registry across a network
/// would).
async fn serve_nothing(
    listener: TcpListener,
    asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    most: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let (asked, in_flight, most) = (asked.clone(), in_flight.clone(), most.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let _ = sock.read(&mut buf).await;
            asked.fetch_add(1, Ordering::SeqCst);
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            let body = r#"{"error_code":40403}"#;
            let resp = format!(
                "HTTP/1.1 404 Not Found\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

/// 10,000 distinct garbage schema ids in one batch (each twice): each id is
/// asked once per round (three rounds: the first and two retries), many at
/// once, every record is then an `unknown_schema_id` reject, and within the
/// miss window nothing is asked again. Before, the ids were asked one after
/// another (30,000 round trips in sequence: minutes across a network).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_garbage_ids_are_asked_once_each_and_at_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (asked, in_flight, most) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    tokio::spawn(serve_nothing(
        listener,
        asked.clone(),
        in_flight,
        most.clone(),
    ));
    let registry = SchemaRegistry::http(&url, std::time::Duration::from_secs(30)).unwrap();
    let mut dec = Decoder::new(registry);
    const IDS: u32 = 10_000;
    let values: Vec<Vec<u8>> = (0..2 * IDS)
        .map(|i| {
            let mut v = vec![0];
            v.extend_from_slice(&(1_000_000 + i % IDS).to_be_bytes());
            v.extend_from_slice(b"garbage");
            v
        })
        .collect();
    let views: Vec<RecordView<'_>> = values
        .iter()
        .map(|v| RecordView {
            key: Some(b"wamid.G"),
            value: Some(v),
            content_type: None,
            timestamp: 1_793_534_400_000_000,
            clock: 1_793_534_400_000_000,
            producer_clock: false,
        })
        .collect();
    let t0 = std::time::Instant::now();
    dec.prepare(&views).await.unwrap();
    eprintln!(
        "{} distinct garbage ids: {:?}, {} requests, at most {} at once",
        IDS,
        t0.elapsed(),
        asked.load(Ordering::SeqCst),
        most.load(Ordering::SeqCst)
    );
    assert_eq!(
        asked.load(Ordering::SeqCst),
        3 * IDS as usize,
        "each distinct id asked once per round"
    );
    assert!(
        most.load(Ordering::SeqCst) > 1,
        "the lookups were made one after another"
    );
    for v in &views {
        assert_eq!(dec.decode(v).unwrap_err().code(), "unknown_schema_id");
    }
    dec.prepare(&views).await.unwrap();
    assert_eq!(
        asked.load(Ordering::SeqCst),
        3 * IDS as usize,
        "nothing asked again within the miss window"
    );
}

/// The validator on the real broker, with a registry that learns id 44
/// after the validator first asked: the partition with those records waits
/// (nothing dead-lettered, its offset not committed past them) while the
/// other partition goes on, then every event is valid. Before, they were
/// dead letters at the first 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_validator_waits_for_an_id_the_registry_learns_late() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use notiflow_ingest::kafka::{client_config, ensure_topics};
    use notiflow_ingest::{IngestConfig, Metrics};
    use notiflow_schema::{Category, Country, Event};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{Offset, TopicPartitionList};
    use tokio_util::sync::CancellationToken;

    use crate::support::{fresh_kafka, start_ingest_with};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let published = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(AtomicUsize::new(0));
    tokio::spawn(serve_late(listener, published.clone(), asked.clone()));
    let registry = SchemaRegistry::http(&url, Duration::from_secs(5))
        .unwrap()
        .with_unknown_id_grace(Duration::from_secs(300));

    let kafka = fresh_kafka(2);
    ensure_topics(&kafka).await.unwrap();
    let producer: FutureProducer = client_config(&kafka).create().unwrap();
    // Partition 0: five events under id 44 (the v2 writer schema once
    // published); partition 1: five JSON events.
    for i in 0..5 {
        producer
            .send(
                FutureRecord::to(&kafka.topic)
                    .partition(0)
                    .key("wamid.R")
                    .payload(&value_of(44, &format!("ev-late-{i}"))),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        let ev = Event {
            event_id: format!("ev-json-{i}").into(),
            message_id: format!("wamid.J{i}").into(),
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
        let mut v = Vec::new();
        notiflow_ingest::codec::json::encode(&ev, &mut v);
        producer
            .send(
                FutureRecord::to(&kafka.topic)
                    .partition(1)
                    .key(&format!("wamid.J{i}"))
                    .payload(&v),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let cfg = IngestConfig {
        group_id: format!("{}-ingest", kafka.topic),
        batch_max_records: 100,
        batch_max_wait_ms: 100,
        dlq_max_record_bytes: 1_000_000,
        dlq_max_attempts: 3,
        dlq_timeout_ms: 30_000,
    };
    let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
    let shutdown = CancellationToken::new();
    let run = start_ingest_with(&kafka, cfg.clone(), registry, &metrics, &shutdown);
    let reader: BaseConsumer = client_config(&kafka)
        .set("group.id", &cfg.group_id)
        .create()
        .unwrap();
    let committed = |p: i32| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&kafka.topic, p);
        match reader
            .committed_offsets(tpl, Duration::from_secs(5))
            .unwrap()
            .elements()[0]
            .offset()
        {
            Offset::Offset(o) => o,
            _ => -1,
        }
    };
    let give_up = Instant::now() + Duration::from_secs(60);
    while committed(1) < 5 {
        assert!(Instant::now() < give_up, "partition 1 not committed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The first batch asks three times; each later ask is a recheck of the
    // held id: wait until two rechecks were answered 404 too.
    let give_up = Instant::now() + Duration::from_secs(30);
    while asked.load(Ordering::SeqCst) < 5 {
        assert!(Instant::now() < give_up, "the held id was not asked again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead: u64 = metrics.dlq.with_label_values(&["unknown_schema_id"]).get();
    assert_eq!(dead, 0, "dead-lettered what the registry did not know yet");
    assert!(
        committed(0) <= 0,
        "partition 0 committed past its waiting records"
    );
    assert_eq!(metrics.valid.get(), 5);

    published.store(true, Ordering::SeqCst);
    let give_up = Instant::now() + Duration::from_secs(60);
    while committed(0) < 5 {
        assert!(Instant::now() < give_up, "partition 0 not committed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metrics.valid.get(), 10, "every event valid");
    assert_eq!(
        metrics.dlq.with_label_values(&["unknown_schema_id"]).get(),
        0
    );
    shutdown.cancel();
    let (stats, _) = run.await.unwrap();
    assert_eq!(stats.rejected_total(), 0);
}
