//! A schema registry that learns an id late, through the real loop: before,
//! the first "no such id" made the records dead letters at once, while a
//! consumer group that read them a minute later decoded them, so Redis and
//! the lake disagreed for good. Now the partition waits at the record until
//! the registry knows the id (then it is counted) or has not known it for
//! the whole grace (then it is a dead letter); other partitions go on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notiflow_aggregator::metrics::Metrics;
use notiflow_aggregator::service;
use notiflow_ingest::SchemaRegistry;
use notiflow_ingest::kafka::ensure_topic;
use notiflow_loadgen::bench::{PARTITIONS, kafka, stamp};
use redis::AsyncCommands;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::beyond::eventually;
use crate::refused::{produce, produce_as};
use crate::{agg_cfg, delete_prefix, redis_cfg};

/// Serves notiflow's schema as id 44 once `published`; 404 otherwise.
async fn serve(listener: TcpListener, published: Arc<AtomicBool>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let published = published.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("").to_string();
            let (status, body) = if path == "/schemas/ids/44" && published.load(Ordering::SeqCst) {
                (
                    "200 OK",
                    serde_json::json!({ "schema": notiflow_schema::AVRO_SCHEMA }).to_string(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_the_registry_learns_late_is_counted_and_an_unknown_one_waits_its_grace() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let published = Arc::new(AtomicBool::new(false));
    tokio::spawn(serve(listener, published.clone()));
    let grace = Duration::from_secs(8);
    let registry = SchemaRegistry::http(&url, Duration::from_secs(5))
        .unwrap()
        .with_unknown_id_grace(grace);

    let k = kafka(&format!("it.schemalate.{}", stamp()));
    ensure_topic(&k, &k.topic, PARTITIONS).await.unwrap();
    let t = notiflow_ingest::source::now_micros() - 600_000_000;
    // Partition 0: three Avro events under id 44, which the registry does
    // not know yet; partition 1: five JSON events; partition 2: one Avro
    // event under id 45, which it never learns, then one JSON event.
    produce_as(&k, "late", 0, 3, t, Some(44));
    produce(&k, "plain", 1, 5, t);
    produce_as(&k, "garbage", 2, 1, t, Some(45));
    produce(&k, "after", 2, 1, t);

    let prefix = format!("it_schemalate_{}", stamp());
    let rcfg = redis_cfg(&prefix);
    let mut acfg = agg_cfg();
    acfg.group_id = format!("it-schemalate-{}", stamp());
    let target = service::target(&k, &rcfg, &acfg);
    let shutdown = CancellationToken::new();
    let mut conn = service::connect(&rcfg, &shutdown).await.unwrap();
    let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
    let started = std::time::Instant::now();
    let run = crate::spawn_aggregator(&k, registry, &rcfg, &acfg, metrics, &shutdown);
    let stats = target.keys.stats(&target.group, &target.topic);
    let field = |f: &'static str| {
        let stats = stats.clone();
        let mut conn = conn.clone();
        async move {
            let n: Option<u64> = conn.hget(&stats, f).await.unwrap();
            n.unwrap_or(0)
        }
    };

    // Partition 1 is counted; partitions 0 and 2 wait, nothing of them
    // dead-lettered.
    eventually(60, "partition 1 counted", async || {
        field("counted").await >= 5
    })
    .await;
    assert_eq!(field("rejected").await, 0, "nothing is a dead letter yet");
    assert_eq!(field("counted").await, 5, "partitions 0 and 2 wait");
    assert!(
        started.elapsed() < grace,
        "the checks above needed to run within the grace"
    );

    // The registry learns id 44: partition 0's events are counted, none
    // rejected; id 45 stays unknown: after its grace it is a dead letter
    // and partition 2 goes on with its JSON event.
    published.store(true, Ordering::SeqCst);
    eventually(30, "partition 0 counted", async || {
        field("counted").await >= 8
    })
    .await;
    eventually(60, "the unknown id's record a dead letter", async || {
        field("rejected").await == 1
    })
    .await;
    eventually(30, "partition 2 went on", async || {
        field("counted").await == 9
    })
    .await;
    assert!(
        started.elapsed() >= grace,
        "the unknown id was a dead letter before its grace"
    );
    let late: u64 = conn
        .hget(
            target
                .keys
                .minutes("late", notiflow_schema::time::minute_of(t)),
            notiflow_schema::counters::minute_field(
                notiflow_schema::time::minute_of(t),
                notiflow_schema::counters::status_slot(notiflow_schema::Status::Accepted),
            ),
        )
        .await
        .unwrap();
    assert_eq!(late, 3, "the late schema's events, once");
    shutdown.cancel();
    run.await.unwrap().unwrap();
    delete_prefix(&mut conn, &prefix).await;
}
