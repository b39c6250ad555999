//! Lake figures. Prints them; BENCHMARKS.md records them with the machine.
//!
//! ```text
//! cargo bench -p notiflow-lake --bench lake -- encode [N]   # Arrow build + Parquet (zstd) encode, rows/s on one core
//! cargo bench -p notiflow-lake --bench lake -- inproc [N]   # in-process source → committed Iceberg, events/s; then compaction
//! cargo bench -p notiflow-lake --bench lake -- e2e [N]      # broker → committed Iceberg vs a bare consumer, same run
//! ```
//! `e2e` needs the broker of `infra/up.sh` (`KAFKA_BROKERS`). Tables go to a
//! temporary folder with a SQLite catalog (the embedded defaults).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use notiflow_ingest::dedup::Dedup;
use notiflow_ingest::kafka::client_config;
use notiflow_ingest::{Decoder, KafkaConfig, RecordView, SchemaRegistry};
use notiflow_lake::files::{FileOptions, writer_properties};
use notiflow_lake::maintenance::{self, layout, live_files};
use notiflow_lake::round::{Outcome, Owned, PartState, Round, SourceRecord};
use notiflow_lake::rows::{Origin, RowBuffer, arrow_schema, table_schema};
use notiflow_lake::{Lake, LakeConfig, Metrics};
use notiflow_loadgen::bench::{PARTITIONS, bare_consumer, kafka, produce, rss_mib, shape, stamp};
use notiflow_loadgen::fixture::{OwnedRecord, RecordStream};
use parquet::arrow::ArrowWriter;
use rdkafka::consumer::Consumer;
use tokio_util::sync::CancellationToken;

fn lake_cfg(dir: &std::path::Path) -> LakeConfig {
    LakeConfig {
        warehouse: dir.join("warehouse").display().to_string(),
        catalog_uri: format!("sqlite://{}", dir.join("catalog.db").display()).into(),
        commit_interval_ms: 1000,
        ..LakeConfig::default()
    }
}

fn views(recs: &[OwnedRecord]) -> Vec<SourceRecord<'_>> {
    recs.iter().map(OwnedRecord::source).collect()
}

/// Arrow build + Parquet encode of `n` decoded events, one thread.
fn encode(n: usize) {
    let recs = RecordStream::new(shape(), PARTITIONS).take(n);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut decoder = Decoder::new(SchemaRegistry::builtin());
    let plain: Vec<RecordView<'_>> = recs.iter().map(|r| r.view()).collect();
    rt.block_on(decoder.prepare(&plain)).unwrap();
    let events: Vec<_> = plain
        .iter()
        .filter_map(|v| decoder.decode(v).ok())
        .collect();
    let schema = arrow_schema(&table_schema().unwrap()).unwrap();
    let cfg = LakeConfig::default();
    for sort in [false, true] {
        let t = Instant::now();
        let mut build = Duration::ZERO;
        let mut bytes = 0usize;
        let mut buf = RowBuffer::new(schema.clone(), 65_536);
        let mut writer = ArrowWriter::try_new(
            Vec::with_capacity(64 << 20),
            schema.clone(),
            Some(writer_properties(FileOptions::from(&cfg)).unwrap()),
        )
        .unwrap();
        for (i, e) in events.iter().enumerate() {
            buf.push(
                e,
                Origin {
                    ingest_time: e.event_time,
                    partition: (i % 8) as i32,
                    offset: i as i64,
                },
            );
            if buf.len() == cfg.flush_rows || i + 1 == events.len() {
                let tb = Instant::now();
                let batches = buf.take(sort).unwrap();
                build += tb.elapsed();
                for (_, b) in batches {
                    writer.write(&b).unwrap();
                }
            }
        }
        bytes += writer.into_inner().unwrap().len();
        let secs = t.elapsed().as_secs_f64();
        println!(
            "encode (sort {sort}): {} rows in {secs:.2} s = {:.0} rows/s; finishing+sorting batches {:.2} s; {:.1} bytes/row (zstd {})",
            events.len(),
            events.len() as f64 / secs,
            build.as_secs_f64(),
            bytes as f64 / events.len() as f64,
            cfg.zstd_level
        );
    }
}

/// In-process source → committed Iceberg: the writer's round (take, flush,
/// close, fenced commit) driven without a broker, a commit every `commit_every`
/// records. Then the layout before and after compaction.
async fn inproc(n: usize, commit_every: usize) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = lake_cfg(dir.path());
    let lake = Lake::open(&cfg).await.unwrap();
    let mut table = lake.load().await.unwrap();
    let schema = arrow_schema(table.metadata().current_schema()).unwrap();
    let mut decoder = Decoder::new(SchemaRegistry::builtin());
    let mut owned: Owned = (0..PARTITIONS)
        .map(|p| (p, PartState::loaded(None, Dedup::new(24))))
        .collect();
    let mut stream = RecordStream::new(shape(), PARTITIONS);
    let (mut done, mut rows, mut commits) = (0usize, 0u64, 0u64);
    let (mut t_take, mut t_flush, mut t_commit) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut busy = Duration::ZERO;
    let mut peak_rss = 0f64;
    while done < n {
        let recs = stream.take(commit_every.min(n - done));
        let views = views(&recs);
        let plain: Vec<RecordView<'_>> = views.iter().map(|v| v.view).collect();
        decoder.prepare(&plain).await.unwrap();
        let t0 = Instant::now();
        let mut round = Round::new(schema.clone(), &cfg);
        for chunk in views.chunks(cfg.batch_max_records) {
            let t = Instant::now();
            round.take(chunk.iter().copied(), &mut owned, &decoder);
            t_take += t.elapsed();
            if round.buffered() >= cfg.flush_rows {
                let t = Instant::now();
                round.flush(&table).await.unwrap();
                t_flush += t.elapsed();
            }
        }
        let t = Instant::now();
        let files = round.close_files(&table).await.unwrap();
        t_flush += t.elapsed();
        let t = Instant::now();
        let out = round
            .commit(&lake, "bench", &table, files, || {})
            .await
            .unwrap();
        assert!(matches!(out, Outcome::Committed { .. }), "{out:?}");
        for (p, next) in &round.next {
            owned.get_mut(p).unwrap().committed = Some(*next);
        }
        table = lake.load().await.unwrap();
        t_commit += t.elapsed();
        busy += t0.elapsed();
        rows += round.rows;
        commits += 1;
        done += recs.len();
        peak_rss = peak_rss.max(rss_mib());
    }
    println!(
        "in-process source → committed Iceberg: {done} records, {rows} rows, {commits} commits in {:.2} s = {:.0} events/s (take {:.2} s, encode+write {:.2} s, commit {:.2} s); peak RSS {peak_rss:.0} MiB",
        busy.as_secs_f64(),
        done as f64 / busy.as_secs_f64(),
        t_take.as_secs_f64(),
        t_flush.as_secs_f64(),
        t_commit.as_secs_f64(),
    );
    report_layout("before compaction", &lake, rows).await;
    let t = Instant::now();
    let report = maintenance::compact(&lake, &cfg).await.unwrap();
    println!(
        "compaction: {} partitions, {} files → {} files, {} rows in {:.2} s",
        report.partitions,
        report.files_in,
        report.files_out,
        report.rows,
        t.elapsed().as_secs_f64()
    );
    report_layout("after compaction", &lake, rows).await;
}

async fn report_layout(when: &str, lake: &Lake, rows: u64) {
    let table = lake.load().await.unwrap();
    let files = live_files(&table).await.unwrap();
    let total: u64 = files.iter().map(|f| f.file.file_size_in_bytes()).sum();
    let per_day: BTreeMap<i32, (usize, f64)> = layout(&files)
        .into_iter()
        .map(|(d, sizes)| {
            let n = sizes.len();
            (d, (n, sizes.iter().sum::<u64>() as f64 / 1048576.0))
        })
        .collect();
    println!(
        "{when}: {} files, {:.1} MiB, {:.1} bytes/row on disk; per day partition (files, MiB): {per_day:?}",
        files.len(),
        total as f64 / 1048576.0,
        total as f64 / rows.max(1) as f64
    );
}

/// The lake service in this process draining `n` records: records/s from
/// its first record to the commit that holds the last offset of every
/// partition.
async fn lake_drain(k: &KafkaConfig, n: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LakeConfig {
        group_id: format!("bench-lake-{}", stamp()),
        ..lake_cfg(dir.path())
    };
    let highs: Vec<i64> = {
        let c: rdkafka::consumer::BaseConsumer = client_config(k).create().unwrap();
        (0..PARTITIONS)
            .map(|p| {
                c.fetch_watermarks(&k.topic, p, Duration::from_secs(30))
                    .unwrap()
                    .1
            })
            .collect()
    };
    assert_eq!(highs.iter().sum::<i64>() as u64, n);
    let shutdown = CancellationToken::new();
    let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
    let records = metrics.records.clone();
    let task = {
        let (k, cfg, shutdown) = (k.clone(), cfg.clone(), shutdown.clone());
        tokio::spawn(async move {
            notiflow_lake::run(&k, SchemaRegistry::builtin(), &cfg, metrics, &[], shutdown).await
        })
    };
    // Timed from the first record, like the bare consumer (group join and
    // start-up are not the pipeline's rate).
    while records.get() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t0 = Instant::now();
    let lake = Lake::open(&cfg).await.unwrap();
    let secs = loop {
        let t = lake.load().await.unwrap();
        let offsets = notiflow_lake::table::topic_offsets(t.metadata(), &k.topic).unwrap();
        if (0..PARTITIONS).all(|p| offsets.get(&p).copied().unwrap_or(0) >= highs[p as usize]) {
            break t0.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    shutdown.cancel();
    let stats = task.await.unwrap().unwrap();
    println!(
        "  lake writer: {} records, {} rows in {} commits",
        stats.records, stats.rows, stats.commits
    );
    n as f64 / secs
}

async fn e2e(n: u64) {
    let k = kafka(&format!("bench.lake.{}", stamp()));
    let produced = produce(&k, n).await;
    println!("produced {n} records at {produced:.0}/s");
    let bare = bare_consumer(&k, n).await;
    let lake = lake_drain(&k, n).await;
    let bare2 = bare_consumer(&k, n).await;
    println!(
        "bare consumer {bare:.0} and {bare2:.0} records/s; lake broker → committed Iceberg {lake:.0} records/s = {:.1}% of their mean",
        100.0 * lake / ((bare + bare2) / 2.0)
    );
}

fn main() {
    let args = notiflow_loadgen::bench::args();
    let num = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let rt = notiflow_loadgen::bench::runtime();
    match args.first().map(String::as_str) {
        Some("encode") => encode(num(1, 1_000_000) as usize),
        Some("inproc") => rt.block_on(inproc(num(1, 2_000_000) as usize, num(2, 200_000) as usize)),
        Some("e2e") => rt.block_on(e2e(num(1, 300_000))),
        _ => eprintln!("usage: lake (encode [N] | inproc [N [COMMIT_EVERY]] | e2e [N])"),
    }
}
