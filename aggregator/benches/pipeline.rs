//! Aggregator figures that need Redis (and, for some, the broker). Prints
//! them; BENCHMARKS.md records them with the machine.
//!
//! ```text
//! cargo bench -p notiflow-aggregator --bench pipeline -- inproc    # in-process source → Redis, events/s
//! cargo bench -p notiflow-aggregator --bench pipeline -- rss       # RSS while 10M events drain (in-process source)
//! cargo bench -p notiflow-aggregator --bench pipeline -- e2e N     # broker → Redis vs a bare consumer, same run
//! cargo bench -p notiflow-aggregator --bench pipeline -- backlog N # RSS while an N-record broker backlog drains
//! cargo bench -p notiflow-aggregator --bench pipeline -- latency S R # p99 event → Redis at R (11,600) events/s for S s
//! ```
//! Servers: `infra/up.sh` (`KAFKA_BROKERS`, `REDIS_URL`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notiflow_aggregator::batch::{Owned, PartitionState, Retention, SourceRecord, process};
use notiflow_aggregator::config::{AggregatorConfig, RedisConfig};
use notiflow_aggregator::sink::{Applied, Scripts};
use notiflow_aggregator::{Metrics, service};
use notiflow_ingest::dedup::Dedup;
use notiflow_ingest::kafka::ensure_topic;
use notiflow_ingest::{Decoder, KafkaConfig, RecordView, SchemaRegistry};
use notiflow_loadgen::bench::{
    PARTITIONS, bare_consumer, env, gen_cfg, kafka, produce, rss_mib, shape, stamp,
};
use notiflow_loadgen::fixture::{OwnedRecord, RecordStream};
use notiflow_loadgen::{RunOptions, run_blocking};
use tokio_util::sync::CancellationToken;

const BATCH: usize = 50_000;

fn batch_size() -> usize {
    env("BATCH", "50000").parse().unwrap()
}

fn redis_cfg(prefix: &str) -> RedisConfig {
    RedisConfig {
        url: env("REDIS_URL", "redis://127.0.0.1:6379").into(),
        key_prefix: prefix.into(),
        timeout_ms: 2000,
    }
}

fn agg_cfg(group: &str) -> AggregatorConfig {
    AggregatorConfig {
        group_id: group.into(),
        batch_max_records: BATCH,
        batch_max_wait_ms: 200,
        dedup_window_hours: 24,
        minute_retention_hours: 48,
        rollup_retention_days: 400,
        delta_stream_len: 10_000,
    }
}

fn views(recs: &[OwnedRecord]) -> Vec<SourceRecord<'_>> {
    recs.iter().map(OwnedRecord::source).collect()
}

/// Processes and applies `recs` batch by batch; returns events counted.
async fn drain_in_process(
    recs: &[OwnedRecord],
    owned: &mut Owned,
    decoder: &mut Decoder,
    conn: &mut redis::aio::ConnectionManager,
    target: &notiflow_aggregator::sink::Target,
    scripts: &Arc<Scripts>,
) -> u64 {
    let views = views(recs);
    let plain: Vec<RecordView<'_>> = views.iter().map(|v| v.view).collect();
    decoder.prepare(&plain).await.unwrap();
    let mut counted = 0;
    let (mut tp, mut tw) = (Duration::ZERO, Duration::ZERO);
    // As the service does: one apply in flight while the next batch is
    // processed (Redis runs on the other core).
    let mut inflight: Option<tokio::task::JoinHandle<Applied>> = None;
    for chunk in views.chunks(batch_size()) {
        let t = Instant::now();
        let pending = process(
            chunk.iter().copied(),
            owned,
            decoder,
            Retention::new(24, 48, 400),
        );
        tp += t.elapsed();
        let t = Instant::now();
        settle(inflight.take()).await;
        tw += t.elapsed();
        for (p, u) in &pending.offsets {
            owned.get_mut(p).unwrap().applied = Some(u.next);
        }
        counted += pending.stats.counted;
        let (scripts, mut conn, target) = (Arc::clone(scripts), conn.clone(), target.clone());
        inflight = Some(tokio::spawn(async move {
            let call = scripts.prepare(&target, &pending, 0);
            scripts.apply(&mut conn, &call).await.unwrap()
        }));
    }
    let t = Instant::now();
    settle(inflight.take()).await;
    tw += t.elapsed();
    eprintln!(
        "  {} records: process {:.2} s, waiting for the apply in flight (call built and run by Redis meanwhile) {:.2} s",
        recs.len(),
        tp.as_secs_f64(),
        tw.as_secs_f64()
    );
    counted
}

/// Waits for the apply in flight, if any; it must have applied.
async fn settle(inflight: Option<tokio::task::JoinHandle<Applied>>) {
    if let Some(f) = inflight {
        let applied = f.await.unwrap();
        assert!(matches!(applied, Applied::Ok(_)), "{applied:?}");
    }
}

/// `chunk` records are generated at a time (the fixture's own memory).
async fn in_process(total: usize, chunk: usize, report_rss_at: &[usize]) {
    let prefix = format!("bench{}", stamp());
    let rcfg = redis_cfg(&prefix);
    let acfg = agg_cfg("bench");
    let target = service::target(&kafka("bench.topic"), &rcfg, &acfg);
    let shutdown = CancellationToken::new();
    let mut conn = service::connect(&rcfg, &shutdown).await.unwrap();
    let scripts = Arc::new(Scripts::default());
    let mut decoder = Decoder::new(SchemaRegistry::builtin());
    let mut owned: Owned = (0..PARTITIONS)
        .map(|p| (p, PartitionState::loaded(None, Dedup::new(24))))
        .collect();
    let mut stream = RecordStream::new(shape(), PARTITIONS);
    let mut done = 0;
    let mut busy = Duration::ZERO;
    let mut counted = 0;
    println!("rss before: {:.0} MiB", rss_mib());
    while done < total {
        let recs = stream.take(chunk);
        let t = Instant::now();
        counted += drain_in_process(
            &recs,
            &mut owned,
            &mut decoder,
            &mut conn,
            &target,
            &scripts,
        )
        .await;
        busy += t.elapsed();
        done += recs.len();
        drop(recs);
        if report_rss_at.contains(&done) {
            let entries: usize = owned.values().map(|s| s.dedup.len()).sum();
            let bytes: usize = owned.values().map(|s| s.dedup.heap_bytes()).sum();
            println!(
                "drained {done}: rss {:.0} MiB, dedup {entries} events in {:.0} MiB ({:.1} B/event)",
                rss_mib(),
                bytes as f64 / 1048576.0,
                bytes as f64 / entries.max(1) as f64
            );
        }
    }
    println!(
        "in-process source → Redis (batch {}, simulated rate {}/s): {done} records, {counted} counted, {:.2} s in process+apply = {:.0} events/s",
        batch_size(),
        shape().rate,
        busy.as_secs_f64(),
        done as f64 / busy.as_secs_f64()
    );
    let _: () = redis::cmd("EVAL")
        .arg("for _,k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('UNLINK', k) end")
        .arg(0)
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// The aggregator service running in this process on a fresh key prefix and group.
struct Running {
    prefix: String,
    rcfg: RedisConfig,
    acfg: AggregatorConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<service::RunStats, notiflow_aggregator::AggregatorError>>,
}

fn start_aggregator(k: &KafkaConfig) -> Running {
    let prefix = format!("bench{}", stamp());
    let rcfg = redis_cfg(&prefix);
    let acfg = agg_cfg(&format!("agg-{prefix}"));
    let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
    let shutdown = CancellationToken::new();
    let task = {
        let (k, rcfg, acfg, m, s) = (
            k.clone(),
            rcfg.clone(),
            acfg.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            service::run(&k, SchemaRegistry::builtin(), &rcfg, &acfg, m, &[], s).await
        })
    };
    Running {
        prefix,
        rcfg,
        acfg,
        metrics,
        shutdown,
        task,
    }
}

/// Runs the aggregator service until Redis holds every high watermark;
/// returns (records/s from its first record, RSS samples).
async fn aggregator_drain(k: &KafkaConfig, n: u64, sample_every: u64) -> (f64, Vec<(u64, f64)>) {
    let Running {
        prefix,
        rcfg,
        acfg,
        metrics,
        shutdown,
        task,
    } = start_aggregator(k);
    let mut samples = Vec::new();
    let mut next_sample = sample_every;
    let mut t0 = None;
    let offsets_key =
        notiflow_schema::counters::Keys::new(&prefix).offsets(&acfg.group_id, &k.topic);
    let mut conn = service::connect(&rcfg, &shutdown).await.unwrap();
    loop {
        let seen = metrics.records.get();
        if seen > 0 {
            t0.get_or_insert_with(Instant::now);
        }
        while seen >= next_sample {
            samples.push((next_sample, rss_mib()));
            next_sample += sample_every;
        }
        if seen >= n {
            let stored: Vec<Option<i64>> = redis::cmd("HMGET")
                .arg(&offsets_key)
                .arg((0..PARTITIONS).collect::<Vec<_>>())
                .query_async(&mut conn)
                .await
                .unwrap();
            if stored.iter().map(|o| o.unwrap_or(0)).sum::<i64>() as u64 >= n {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = n as f64 / t0.unwrap().elapsed().as_secs_f64();
    shutdown.cancel();
    task.await.unwrap().unwrap();
    (rate, samples)
}

async fn e2e(n: u64) {
    let k = kafka(&format!("bench.e2e.{}", stamp()));
    let produced = produce(&k, n).await;
    println!("produced {n} records at {produced:.0}/s");
    let bare = bare_consumer(&k, n).await;
    let (agg, _) = aggregator_drain(&k, n, u64::MAX).await;
    let bare2 = bare_consumer(&k, n).await;
    println!(
        "bare consumer {bare:.0} and {bare2:.0} records/s; aggregator broker → Redis {agg:.0} records/s = {:.1}% of their mean",
        100.0 * agg / ((bare + bare2) / 2.0)
    );
}

async fn backlog(n: u64) {
    let k = kafka(&format!("bench.backlog.{}", stamp()));
    let produced = produce(&k, n).await;
    println!("backlog of {n} records produced at {produced:.0}/s");
    let (rate, samples) = aggregator_drain(&k, n, (n / 10).max(1)).await;
    for (at, rss) in samples {
        println!("drained {at}: rss {rss:.0} MiB");
    }
    println!("drained at {rate:.0} records/s");
}

async fn latency(secs: u64, rate: u64) {
    let k = kafka(&format!("bench.latency.{}", stamp()));
    ensure_topic(&k, &k.topic, PARTITIONS).await.unwrap();
    let Running {
        metrics,
        shutdown,
        task,
        ..
    } = start_aggregator(&k);
    // Let the group form before traffic starts.
    while metrics.partitions.get() < PARTITIONS as i64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = rate * secs;
    let (k2, mut g) = (k.clone(), gen_cfg());
    g.rate = format!("{rate}/s");
    let report = tokio::task::spawn_blocking(move || {
        run_blocking(
            &k2,
            &g,
            &RunOptions {
                events: Some(n),
                ..RunOptions::default()
            },
            &CancellationToken::new(),
        )
    })
    .await
    .unwrap()
    .unwrap();
    while metrics.records.get() < n {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let h = metrics.event_to_redis_seconds.clone();
    let total = h.get_sample_count();
    let proto = {
        use prometheus::core::Collector;
        h.collect()[0].get_metric()[0].get_histogram().clone()
    };
    let mut p = BTreeMap::new();
    for q in [0.5, 0.9, 0.99, 0.999] {
        let want = (total as f64 * q).ceil() as u64;
        let b = proto
            .get_bucket()
            .iter()
            .find(|b| b.cumulative_count() >= want)
            .map_or(f64::INFINITY, |b| b.upper_bound());
        p.insert(format!("p{}", q * 100.0), b);
    }
    println!(
        "latency at {:.0} events/s for {secs} s ({total} events counted): event → Redis {p:?} (bucket upper bounds), mean {:.3} s",
        report.rate(),
        h.get_sample_sum() / total.max(1) as f64
    );
}

fn main() {
    let args = notiflow_loadgen::bench::args();
    let rt = notiflow_loadgen::bench::runtime();
    let num = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    match args.first().map(String::as_str) {
        Some("inproc") => rt.block_on(in_process(2_000_000, 1_000_000, &[])),
        Some("rss") => rt.block_on(in_process(
            10_000_000,
            100_000,
            &[1_000_000, 5_000_000, 10_000_000],
        )),
        Some("e2e") => rt.block_on(e2e(num(1, 500_000))),
        Some("backlog") => rt.block_on(backlog(num(1, 10_000_000))),
        Some("latency") => rt.block_on(latency(num(1, 60), num(2, 11_600))),
        _ => eprintln!(
            "usage: pipeline (inproc | rss | e2e [N] | backlog [N] | latency [SECS [RATE]])"
        ),
    }
}
