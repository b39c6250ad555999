//! Report figures over a generated day in a real lake. Prints them;
//! BENCHMARKS.md records them with the machine.
//!
//! ```text
//! cargo bench -p notiflow-reports --bench reports -- load [N] [DAYS] # N rows a day (default 100M) of the São Paulo day(s) ending on DAY
//!                                                                   # (default 1; 8 fills billing's 7-day look-back) straight into the lake
//! cargo bench -p notiflow-reports --bench reports -- billing [ENGINE] # daily billing of that day: duckdb, datafusion or both (default)
//! cargo bench -p notiflow-reports --bench reports -- detail [ENGINE]  # the busiest client's day to CSV, rows/s and peak RSS
//! cargo bench -p notiflow-reports --bench reports -- s3 [N]          # N rows (default 5M) into a lake on S3_ENDPOINT, then billing
//!                                                                   # and detail with DuckDB (files copied / Arrow batches) and DataFusion
//! ```
//! The lake lives in `REPORTS_BENCH_DIR` (default `~/.cache/notiflow/bench-reports`);
//! `load` replaces it. Each mode is its own process, so peak RSS is its own.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use notiflow_ingest::{Decoder, SchemaRegistry};
use notiflow_lake::bulk::Bulk;
use notiflow_lake::rows::Origin;
use notiflow_lake::{Lake, LakeConfig, S3Config};
use notiflow_loadgen::bench::{env, peak_rss_mib, rss_mib};
use notiflow_loadgen::generator::{Generator, Kind, Shape};
use notiflow_reports::detail::DetailQuery;
use notiflow_reports::{
    BillingRequest, DetailRequest, DuckS3Input, EngineKind, Format, Reports, ReportsConfig,
};
use notiflow_schema::time::parse_rfc3339;

const DAY: &str = "2026-11-10";

fn dir() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
    PathBuf::from(env(
        "REPORTS_BENCH_DIR",
        &format!("{home}/.cache/notiflow/bench-reports"),
    ))
}

fn lake_cfg() -> LakeConfig {
    let d = dir();
    LakeConfig {
        warehouse: d.join("warehouse").display().to_string(),
        catalog_uri: format!("sqlite://{}", d.join("catalog.db").display()).into(),
        ..LakeConfig::default()
    }
}

/// Defaults, but for the outputs' folder and `REPORTS_BENCH_BILLING_MIB`
/// (the billing memory limit, to compare).
fn reports_cfg() -> ReportsConfig {
    let d = ReportsConfig::default();
    ReportsConfig {
        output: dir().join("out").display().to_string(),
        billing_memory_limit_mib: env(
            "REPORTS_BENCH_BILLING_MIB",
            &d.billing_memory_limit_mib.to_string(),
        )
        .parse()
        .unwrap(),
        ..d
    }
}

/// `n` generated records a day over the `days` São Paulo days ending on
/// `DAY` (2,500 clients: the busiest sends about a tenth of the traffic),
/// decoded and bulk-loaded.
async fn load(n: u64, days: u64, cfg: &LakeConfig) {
    let d = dir();
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let cfg = cfg.clone();
    let lake = Lake::open(&cfg).await.unwrap();
    let shape = Shape {
        seed: 11,
        clients: 2500,
        rate: n as f64 / 86_400.0,
        start: parse_rfc3339(&format!("{DAY}T03:00:00Z")).unwrap()
            - (days as i64 - 1) * 86_400_000_000,
        avro_share: 0.0,
        content_type_share: 0.0,
        duplicate_share: 0.0,
        malformed_share: 0.0,
    };
    let mut g = Generator::new(shape, None);
    let mut decoder = Decoder::new(SchemaRegistry::builtin());
    let mut bulk = Bulk::new(&lake, &cfg).await.unwrap();
    let t = Instant::now();
    let mut offset = 0i64;
    for i in 0..n * days {
        let r = g.next_record();
        if r.kind != Kind::Valid {
            continue;
        }
        let view = r.view();
        if i == 0 {
            decoder.prepare(std::slice::from_ref(&view)).await.unwrap();
        }
        let e = decoder.decode(&view).unwrap();
        bulk.push(
            &e,
            Origin {
                ingest_time: r.arrival,
                partition: 0,
                offset,
            },
        )
        .await
        .unwrap();
        offset += 1;
        if i % 10_000_000 == 0 && i > 0 {
            eprintln!(
                "  {i} rows, {:.0} rows/s",
                i as f64 / t.elapsed().as_secs_f64()
            );
        }
    }
    let rows = bulk.rows();
    bulk.commit(&lake).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    let bytes: u64 = if cfg.warehouse.starts_with("s3://") {
        0
    } else {
        walk(&d.join("warehouse"))
    };
    println!(
        "load: {rows} rows in {secs:.1} s ({:.0} rows/s), {:.2} GiB on disk ({:.1} B/row), RSS {:.0} MiB",
        rows as f64 / secs,
        bytes as f64 / (1u64 << 30) as f64,
        bytes as f64 / rows as f64,
        rss_mib()
    );
}

fn walk(p: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() { walk(&e.path()) } else { m.len() }
        })
        .sum()
}

fn engines(arg: Option<&str>) -> Vec<EngineKind> {
    match arg {
        Some("duckdb") => vec![EngineKind::DuckDb],
        Some("datafusion") => vec![EngineKind::DataFusion],
        _ => vec![EngineKind::DuckDb, EngineKind::DataFusion],
    }
}

async fn billing(engine: EngineKind, cfg: &ReportsConfig, lake: &LakeConfig) {
    let r = Reports::open(cfg, lake).await.unwrap();
    let t = Instant::now();
    let m = r
        .billing(
            &BillingRequest {
                day: DAY.parse().unwrap(),
                engine: Some(engine),
                formats: vec![Format::Csv, Format::Parquet],
                snapshot_id: None,
                correction: false,
            },
            notiflow_ingest::source::now_micros(),
        )
        .await
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let csv = String::from_utf8(r.output().get(&m.files[0].path).await.unwrap()).unwrap();
    let billed: u64 = csv
        .lines()
        .filter(|l| l.contains(",total,"))
        .map(|l| l.split(',').nth(5).unwrap().parse::<u64>().unwrap())
        .sum();
    println!(
        "billing {DAY} [{}{}, {} MiB limit]: {secs:.2} s, {} lines, {billed} billed messages, sha256 {}, peak RSS {:.0} MiB",
        engine.as_str(),
        input_label(engine, lake, cfg),
        cfg.billing_memory_limit_mib,
        m.rows,
        &m.files[0].sha256[..16],
        peak_rss_mib()
    );
}

async fn detail(engine: EngineKind, cfg: &ReportsConfig, lake: &LakeConfig) {
    let r = Reports::open(cfg, lake).await.unwrap();
    let from = notiflow_reports::billing::day_start(r.tz(), DAY.parse().unwrap()).unwrap();
    let t = Instant::now();
    let m = r
        .detail(
            &DetailRequest {
                query: DetailQuery {
                    client: Some("client-00000".into()),
                    from,
                    to: from + 86_400_000_000,
                    ..Default::default()
                },
                engine: Some(engine),
                formats: vec![Format::Csv],
                snapshot_id: None,
            },
            notiflow_ingest::source::now_micros(),
            None,
        )
        .await
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "detail client-00000 {DAY} CSV [{}{}]: {} rows in {secs:.2} s ({:.0} rows/s), {:.2} GiB, peak RSS {:.0} MiB",
        engine.as_str(),
        input_label(engine, lake, cfg),
        m.rows,
        m.rows as f64 / secs,
        m.files[0].bytes as f64 / (1u64 << 30) as f64,
        peak_rss_mib()
    );
}

/// Which way DuckDB read a lake on S3, for the printed label.
fn input_label(engine: EngineKind, lake: &LakeConfig, cfg: &ReportsConfig) -> &'static str {
    match (
        engine,
        lake.warehouse.starts_with("s3://"),
        cfg.duckdb_s3_input,
    ) {
        (EngineKind::DuckDb, true, DuckS3Input::Files) => ", S3 files copied",
        (EngineKind::DuckDb, true, DuckS3Input::Arrow) => ", S3 Arrow batches",
        (_, true, _) => ", S3",
        _ => "",
    }
}

/// A lake on the S3 server at `S3_ENDPOINT` (bucket `notiflow-bench`,
/// replaced), its catalog and outputs in the bench folder.
fn s3_cfgs() -> (LakeConfig, ReportsConfig) {
    let endpoint = env("S3_ENDPOINT", "http://127.0.0.1:9000");
    let bucket = format!("{endpoint}/notiflow-bench");
    for method in ["DELETE", "PUT"] {
        let _ = std::process::Command::new("curl")
            .args(["-sf", "-X", method, &bucket])
            .status();
    }
    let lake = LakeConfig {
        warehouse: "s3://notiflow-bench/warehouse".into(),
        s3: S3Config {
            endpoint,
            region: "us-east-1".into(),
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
            path_style: true,
        },
        ..lake_cfg()
    };
    (lake, reports_cfg())
}

fn main() {
    let args = notiflow_loadgen::bench::args();
    let rt = notiflow_loadgen::bench::runtime();
    match args.first().map(String::as_str) {
        Some("load") => {
            let n = args.get(1).map_or(100_000_000, |s| s.parse().unwrap());
            let days = args.get(2).map_or(1, |s| s.parse().unwrap());
            rt.block_on(load(n, days, &lake_cfg()));
        }
        Some("billing") => {
            for e in engines(args.get(1).map(String::as_str)) {
                rt.block_on(billing(e, &reports_cfg(), &lake_cfg()));
            }
        }
        Some("detail") => {
            for e in engines(args.get(1).map(String::as_str)) {
                rt.block_on(detail(e, &reports_cfg(), &lake_cfg()));
            }
        }
        Some("s3") => {
            let n = args.get(1).map_or(5_000_000, |s| s.parse().unwrap());
            let (lake, mut cfg) = s3_cfgs();
            rt.block_on(load(n, 1, &lake));
            for (e, input) in [
                (EngineKind::DuckDb, DuckS3Input::Files),
                (EngineKind::DuckDb, DuckS3Input::Arrow),
                (EngineKind::DataFusion, DuckS3Input::Files),
            ] {
                cfg.duckdb_s3_input = input;
                rt.block_on(billing(e, &cfg, &lake));
                rt.block_on(detail(e, &cfg, &lake));
            }
        }
        _ => eprintln!("usage: reports (load [N] | billing [ENGINE] | detail [ENGINE] | s3 [N])"),
    }
}
