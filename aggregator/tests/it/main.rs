//! The aggregator's atomic APPLY against a real Redis (`REDIS_URL`, loopback
//! by default), each test under a fresh key prefix: what Redis refuses is
//! refused before anything is written, so an error reply never leaves
//! advanced offsets behind (which a retry would then take for "applied").
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use notiflow_aggregator::batch::{Owned, PartitionState, Retention, process};
use notiflow_aggregator::config::{AggregatorConfig, RedisConfig};
use notiflow_aggregator::service;
use notiflow_aggregator::sink::{Applied, Scripts};
use notiflow_ingest::dedup::Dedup;
use notiflow_ingest::{Decoder, RecordView, SchemaRegistry};
use notiflow_loadgen::bench::{kafka, shape, stamp};
use notiflow_loadgen::fixture::RecordStream;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

mod beyond;
mod clocks;
mod outage;
mod refused;
mod schema_late;

const PARTITIONS: i32 = 2;

pub(crate) fn redis_cfg(prefix: &str) -> RedisConfig {
    RedisConfig {
        url: std::env::var("REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
            .into(),
        key_prefix: prefix.into(),
        timeout_ms: 2000,
    }
}

/// Runs the aggregator service on `k` in a task of its own until `shutdown`.
pub(crate) fn spawn_aggregator(
    k: &notiflow_ingest::KafkaConfig,
    registry: SchemaRegistry,
    rcfg: &RedisConfig,
    acfg: &AggregatorConfig,
    metrics: notiflow_aggregator::metrics::Metrics,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<
    Result<notiflow_aggregator::service::RunStats, notiflow_aggregator::error::AggregatorError>,
> {
    let (k, rcfg, acfg, shutdown) = (k.clone(), rcfg.clone(), acfg.clone(), shutdown.clone());
    tokio::spawn(
        async move { service::run(&k, registry, &rcfg, &acfg, metrics, &[], shutdown).await },
    )
}

pub(crate) fn agg_cfg() -> AggregatorConfig {
    AggregatorConfig {
        group_id: "it".into(),
        batch_max_records: 10_000,
        batch_max_wait_ms: 200,
        dedup_window_hours: 24,
        minute_retention_hours: 48,
        rollup_retention_days: 400,
        delta_stream_len: 1000,
    }
}

/// A foreign writer left a string where one of the batch's minute hashes
/// goes. Before this was checked up front, APPLY wrote the offsets, then
/// failed on that key: the retry saw its own offsets stored and took the
/// batch for applied, and its counts were lost without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_type_refuses_the_whole_batch_before_any_write() {
    let prefix = format!("it_refuse_{}", stamp());
    let rcfg = redis_cfg(&prefix);
    let acfg = agg_cfg();
    let target = service::target(&kafka("it.refuse"), &rcfg, &acfg);
    let shutdown = CancellationToken::new();
    let mut conn = service::connect(&rcfg, &shutdown).await.unwrap();
    let scripts = Scripts::default();
    let mut decoder = Decoder::new(SchemaRegistry::builtin());
    let mut owned: Owned = (0..PARTITIONS)
        .map(|p| (p, PartitionState::loaded(None, Dedup::new(24))))
        .collect();
    let recs = RecordStream::new(shape(), PARTITIONS).take(3000);
    let plain: Vec<RecordView<'_>> = recs.iter().map(|r| r.view()).collect();
    decoder.prepare(&plain).await.unwrap();
    let pending = process(
        recs.iter().map(|r| r.source()),
        &mut owned,
        &decoder,
        Retention::new(24, 48, 400),
    );
    assert!(pending.stats.counted > 1000, "{:?}", pending.stats);
    // The last minute hash the script will write (after the dedup strings
    // and most of the counters): a string instead.
    let (ix, minute) = *pending.minutes.keys().max().unwrap();
    let client = pending.clients[ix as usize].clone();
    let foreign = target.keys.minutes(&client, minute);
    let _: () = conn.set(&foreign, "not a hash").await.unwrap();

    let call = scripts.prepare(&target, &pending, 0);
    let err = scripts.apply(&mut conn, &call).await.unwrap_err();
    assert!(
        !err.is_retryable(),
        "an error reply that cannot heal: {err}"
    );
    assert!(err.to_string().contains(&foreign), "{err}");
    // Nothing of the batch is stored: no offsets, no totals, no delta, no
    // other client's counters, no dedup fingerprints.
    let offsets = target.keys.offsets(&target.group, &target.topic);
    let stored: i64 = conn.hlen(&offsets).await.unwrap();
    assert_eq!(stored, 0, "offsets advanced by a refused batch");
    let stats = target.keys.stats(&target.group, &target.topic);
    assert!(!conn.exists::<_, bool>(&stats).await.unwrap());
    assert!(!conn.exists::<_, bool>(target.keys.deltas()).await.unwrap());
    let written: Vec<String> = conn.keys(format!("{prefix}:*")).await.unwrap();
    assert_eq!(
        written,
        vec![foreign.clone()],
        "only the foreign key exists"
    );

    // With the foreign key gone, the same call applies, all of it.
    let _: () = conn.del(&foreign).await.unwrap();
    assert!(matches!(
        scripts.apply(&mut conn, &call).await.unwrap(),
        Applied::Ok(_)
    ));
    let stored: i64 = conn.hlen(&offsets).await.unwrap();
    assert_eq!(
        stored,
        3 * i64::from(PARTITIONS),
        "offset, generation and anchor per partition"
    );
    let counted: u64 = conn.hget(&stats, "counted").await.unwrap();
    assert_eq!(counted, pending.stats.counted);
    delete_prefix(&mut conn, &prefix).await;
}

/// Deletes every key under `prefix` (a test's own).
pub(crate) async fn delete_prefix(conn: &mut redis::aio::ConnectionManager, prefix: &str) {
    let _: () = redis::cmd("EVAL")
        .arg("for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end")
        .arg(0)
        .arg(format!("{prefix}:*"))
        .query_async(conn)
        .await
        .unwrap();
}
