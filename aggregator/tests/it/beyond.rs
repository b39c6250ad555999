//! A stored offset past the end of the partition's log, on the real broker:
//! the broker lost its tail (or the topic was created again). Before, every
//! new record below the stored offset was dropped as a stale copy, silently,
//! with a lag of 0. Now the partition is held with an alarm gauge while the
//! others go on, and an operator's explicit choice (docs/operations.md)
//! starts it again.

use std::time::{Duration, Instant};

use notiflow_aggregator::metrics::Metrics;
use notiflow_aggregator::service;
use notiflow_ingest::SchemaRegistry;
use notiflow_ingest::kafka::client_config;
use notiflow_loadgen::bench::{kafka, produce, stamp};
use rdkafka::consumer::{BaseConsumer, Consumer};
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use crate::{agg_cfg, redis_cfg};

/// Polls `f` every 200 ms until it holds or `secs` pass.
pub(crate) async fn eventually(secs: u64, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < give_up, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_offset_past_the_log_end_holds_the_partition_with_an_alarm() {
    let k = kafka(&format!("it.beyond.{}", stamp()));
    produce(&k, 400).await;
    let prefix = format!("it_beyond_{}", stamp());
    let rcfg = redis_cfg(&prefix);
    let mut acfg = agg_cfg();
    acfg.group_id = format!("it-beyond-{}", stamp());
    let target = service::target(&k, &rcfg, &acfg);
    let shutdown = CancellationToken::new();
    let mut conn = service::connect(&rcfg, &shutdown).await.unwrap();
    let offsets = target.keys.offsets(&target.group, &target.topic);
    // Partition 0 was counted up to offset 100000 on a log that has lost it.
    let _: () = conn.hset(&offsets, "0", 100_000).await.unwrap();
    let probe: BaseConsumer = client_config(&k).create().unwrap();
    let (_, high0) = probe
        .fetch_watermarks(&k.topic, 0, Duration::from_secs(10))
        .unwrap();
    assert!(high0 > 0, "partition 0 got records");

    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    let run = crate::spawn_aggregator(
        &k,
        SchemaRegistry::builtin(),
        &rcfg,
        &acfg,
        metrics.clone(),
        &shutdown,
    );
    let beyond = |m: &Metrics| m.beyond_log_end.with_label_values(&["0"]).get();
    eventually(90, "the alarm on partition 0", async || {
        beyond(&metrics) > 0
    })
    .await;
    assert_eq!(beyond(&metrics), 100_000 - high0, "offsets missing");
    // The other partitions are counted meanwhile; partition 0 is not.
    let stats = target.keys.stats(&target.group, &target.topic);
    eventually(60, "the other partitions counted", async || {
        let n: Option<u64> = conn.hget(&stats, "counted").await.unwrap();
        n.is_some_and(|n| n > 0)
    })
    .await;
    let stored0: i64 = conn.hget(&offsets, "0").await.unwrap();
    assert_eq!(stored0, 100_000, "nothing of partition 0 was taken");

    // The operator accepts the gap at the log end (`notiflow aggregator
    // accept-gap`); new records flow again, the running member picks the
    // new offset up by itself.
    let from = notiflow_aggregator::sink::Scripts::default()
        .accept_gap(&mut conn, &target, 0, high0)
        .await
        .unwrap();
    assert_eq!(from, Some(100_000));
    produce(&k, 400).await;
    eventually(60, "partition 0 counted again", async || {
        let o: i64 = conn.hget(&offsets, "0").await.unwrap();
        o > high0
    })
    .await;
    eventually(30, "the alarm cleared", async || beyond(&metrics) == 0).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
}
