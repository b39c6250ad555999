//! The `notiflow` command: parses config and wires the crates, nothing else.
//!
//! ```text
//!  notiflow gen          ─▶ loadgen ─▶ Kafka (+ ground truth file)
//!  notiflow run ingest   ─▶ ingest  ─▶ validate, dead-letter
//!  notiflow run aggregator ─▶ aggregator ─▶ Redis counters (exactly once)
//!  notiflow run lake     ─▶ lake    ─▶ Iceberg table (exactly once)
//!  notiflow lake compact ─▶ compaction, snapshot expiry, orphan removal
//!  notiflow lake files   ─▶ data files per day partition (JSON)
//!  notiflow report billing|detail|runs ─▶ reports ─▶ CSV/Parquet exports (DuckDB or DataFusion)
//!  notiflow run reports ─▶ the report scheduler (cron jobs, catch-up, retries)
//!  notiflow run api      ─▶ api     ─▶ HTTP API, live SSE stream, web dashboard
//!  notiflow api-key      ─▶ a new API key and its `[[api.keys]]` entry
//!  notiflow demo         ─▶ every component in one process (generator, ingest, aggregator, lake, scheduler, API) against the local servers
//!  notiflow config       ─▶ the effective config, validated
//! ```

mod components;
mod config;
mod demo;
mod metrics;
mod report;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use notiflow_ingest::kafka;
use notiflow_ingest::service::CountingSink;
use notiflow_loadgen::{RunOptions, run_blocking};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Real-time WhatsApp notification analytics.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML); embedded defaults apply without one. `NOTIFLOW__SECTION__FIELD` variables override.
    #[arg(long, global = true, env = "NOTIFLOW_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate realistic status traffic into the broker, with a ground-truth file.
    Gen(GenArgs),
    /// Run one component as its own process.
    Run {
        /// Which component.
        component: Component,
    },
    /// Local demo: every component in one process (generator, ingest, aggregator, lake writer, report scheduler, API and dashboard) until Ctrl-C; prints the dashboard URL and a demo API key.
    Demo {
        /// Target rate (`100M/day`, `1160/s`, …); default from `[gen] rate`.
        #[arg(long)]
        rate: Option<String>,
    },
    /// Operator actions on the aggregator's state in Redis.
    Aggregator {
        /// What to do.
        #[command(subcommand)]
        action: AggregatorAction,
    },
    /// Maintain the Iceberg table.
    Lake {
        /// What to do.
        #[command(subcommand)]
        action: LakeAction,
    },
    /// Billing and detail exports on demand, and the run ledger.
    Report {
        /// What to do.
        #[command(subcommand)]
        action: report::ReportAction,
    },
    /// Make a new API key: prints the key (give it to its holder) and the
    /// `[[api.keys]]` entry (its sha256) for the config.
    ApiKey {
        /// Who holds it.
        #[arg(long)]
        name: String,
        /// viewer, finance or admin.
        #[arg(long)]
        role: String,
        /// The viewer's client.
        #[arg(long)]
        client: Option<String>,
        /// May see recipients unmasked in detail reports.
        #[arg(long)]
        pii: bool,
    },
    /// Create the event and dead-letter topics if missing.
    Topics,
    /// Print the effective config (defaults, file and environment), validated.
    Config,
}

#[derive(Clone, Copy, ValueEnum)]
enum Component {
    /// Validate the topic and dead-letter poison records.
    Ingest,
    /// Per-minute, per-client counters in Redis, exactly once.
    Aggregator,
    /// Every event as a row of the Iceberg table, exactly once.
    Lake,
    /// The report scheduler: cron jobs, catch-up after downtime, retries.
    Reports,
    /// The HTTP API, live stream and web dashboard.
    Api,
}

#[derive(Subcommand)]
enum AggregatorAction {
    /// Accept a gap in a partition's log explicitly: set the aggregator's
    /// next offset of `partition` (of the event topic) to `offset` and drop
    /// its anchor, in one step (docs/operations.md). A running aggregator
    /// goes on from there within seconds.
    AcceptGap {
        /// The partition.
        #[arg(long)]
        partition: i32,
        /// Its new next offset (the log end, or the log start of a topic
        /// created again).
        #[arg(long)]
        offset: i64,
    },
}

#[derive(Subcommand)]
enum LakeAction {
    /// Rewrite small files into large ones (one commit per day partition),
    /// expire old snapshots, remove orphan files. Safe while writers run.
    Compact {
        /// Run again every this many minutes until Ctrl-C (a scheduled
        /// job in one process); once when absent.
        #[arg(long)]
        every_minutes: Option<u64>,
    },
    /// Print the live data files per day partition as JSON: count, bytes, rows.
    Files,
    /// Print the committed Kafka offsets (per topic and partition) as JSON.
    Offsets,
    /// Accept a gap in a partition's log explicitly: set the table's next
    /// offset of `partition` (of the event topic) to `offset`, in a commit
    /// of its own (docs/operations.md). Restart the lake writers after.
    AcceptGap {
        /// The partition.
        #[arg(long)]
        partition: i32,
        /// Its new next offset (the log end, or the log start of a topic
        /// created again).
        #[arg(long)]
        offset: i64,
    },
    /// Retire a topic no writer reads any more (after a migration to
    /// another topic): take it out of the dedup generations, so snapshot
    /// expiry no longer keeps the files its windows needed (docs/lake.md).
    /// Its offsets and watermarks stay. Refused for the configured topic.
    RetireTopic {
        /// The retired topic.
        #[arg(long)]
        topic: String,
    },
    /// Read every row back and print JSON: rows, distinct offsets, an
    /// order-independent checksum, counts per client × day × status, offsets.
    Stats,
}

#[derive(clap::Args)]
struct GenArgs {
    /// Stop after this many records (default: run until Ctrl-C).
    #[arg(long)]
    events: Option<u64>,
    /// Target rate (`100M/day`, `11.6K/s`, `500`); with --fast it only shapes event times.
    #[arg(long)]
    rate: Option<String>,
    /// Send as fast as the broker takes it.
    #[arg(long)]
    fast: bool,
    /// Seed (default from `[gen] seed`).
    #[arg(long)]
    seed: Option<u64>,
    /// Number of clients.
    #[arg(long)]
    clients: Option<usize>,
    /// Share of malformed records, 0..=1.
    #[arg(long)]
    malformed_share: Option<f64>,
    /// Share of duplicate records, 0..=1.
    #[arg(long)]
    duplicate_share: Option<f64>,
    /// Simulated start time (RFC 3339); pins the output for a seed.
    #[arg(long)]
    start: Option<String>,
    /// Stamp each record with its simulated arrival time (CreateTime)
    /// instead of the producer's clock: replays a past stretch as its
    /// broker would have stamped it (a LogAppendTime broker restamps it).
    #[arg(long)]
    stamp: bool,
    /// Write the ground truth (JSON) here.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Encode only, send nothing: measures the generator.
    #[arg(long)]
    encode_only: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("notiflow: {e}");
            return ExitCode::from(2);
        }
    };
    let _traces = match telemetry::init(&cfg) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("notiflow: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("notiflow: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command, cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("notiflow: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Cancelled on Ctrl-C or SIGTERM.
fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: finishing the work in hand");
        t.cancel();
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn dispatch(command: Command, mut cfg: Config) -> anyhow::Result<()> {
    match command {
        Command::Config => {
            let shown = config::redacted(&cfg).context("rendering config")?;
            println!(
                "{}",
                toml::to_string_pretty(&shown).context("rendering config")?
            );
            Ok(())
        }
        Command::Aggregator {
            action: AggregatorAction::AcceptGap { partition, offset },
        } => {
            anyhow::ensure!(
                partition >= 0 && offset >= 0,
                "--partition and --offset must not be negative"
            );
            let shutdown = shutdown_token();
            let mut conn = notiflow_aggregator::service::connect(&cfg.redis, &shutdown).await?;
            let target =
                notiflow_aggregator::service::target(&cfg.kafka, &cfg.redis, &cfg.aggregator);
            let from = notiflow_aggregator::sink::Scripts::default()
                .accept_gap(&mut conn, &target, partition, offset)
                .await?;
            println!(
                "{}",
                serde_json::json!({"topic": cfg.kafka.topic, "group": cfg.aggregator.group_id, "partition": partition, "from": from, "to": offset})
            );
            Ok(())
        }
        Command::Topics => {
            let shutdown = shutdown_token();
            kafka::wait_for_broker(&cfg.kafka, &shutdown).await?;
            kafka::ensure_topics(&cfg.kafka).await?;
            println!(
                "topics {} and {} are ready",
                cfg.kafka.topic, cfg.kafka.dlq_topic
            );
            Ok(())
        }
        Command::Gen(args) => gen_command(args, cfg).await,
        Command::Run {
            component: Component::Ingest,
        } => {
            let shutdown = shutdown_token();
            let prom = metrics::registry()?;
            let m = notiflow_ingest::Metrics::new(&prom)?;
            metrics::serve(&cfg.metrics.listen, prom, shutdown.clone()).await?;
            let mut sink = CountingSink::default();
            let stats = components::ingest(&cfg, m, &mut sink, shutdown).await?;
            println!("{stats:?}");
            Ok(())
        }
        Command::Run {
            component: Component::Aggregator,
        } => {
            let shutdown = shutdown_token();
            let prom = metrics::registry()?;
            let m = notiflow_aggregator::Metrics::new(&prom)?;
            metrics::serve(&cfg.metrics.listen, prom, shutdown.clone()).await?;
            let stats = components::aggregator(&cfg, m, shutdown).await?;
            println!("{stats:?}");
            Ok(())
        }
        Command::Run {
            component: Component::Lake,
        } => {
            let shutdown = shutdown_token();
            let prom = metrics::registry()?;
            let m = notiflow_lake::Metrics::new(&prom)?;
            metrics::serve(&cfg.metrics.listen, prom, shutdown.clone()).await?;
            let stats = components::lake(&cfg, m, shutdown).await?;
            println!("{stats:?}");
            Ok(())
        }
        Command::Run {
            component: Component::Reports,
        } => {
            let shutdown = shutdown_token();
            let prom = metrics::registry()?;
            let m = notiflow_reports::Metrics::new(&prom)?;
            metrics::serve(&cfg.metrics.listen, prom, shutdown.clone()).await?;
            components::scheduler(&cfg, m, shutdown).await
        }
        Command::Run {
            component: Component::Api,
        } => {
            // Its series are on `metrics.listen`, like every component's,
            // never on the public port.
            let shutdown = shutdown_token();
            let prom = metrics::registry()?;
            let m = notiflow_reports::Metrics::new(&prom)?;
            let api = components::Api::bind(&cfg, prom.clone(), m)?;
            let metrics_addr = metrics::serve(&cfg.metrics.listen, prom, shutdown.clone()).await?;
            let addr = api.addr;
            println!(
                "notiflow API on http://{addr}/ (dashboard: http://{addr}/dashboard/, OpenAPI: http://{addr}/openapi.json{})",
                metrics_addr.map_or_else(String::new, |a| format!(", metrics: http://{a}/metrics"))
            );
            api.serve(shutdown).await;
            Ok(())
        }
        Command::ApiKey {
            name,
            role,
            client,
            pii,
        } => api_key(&cfg, name, &role, client, pii),
        Command::Report { action } => report::command(action, &cfg).await,
        Command::Lake {
            action: LakeAction::Compact { every_minutes },
        } => {
            let Some(minutes) = every_minutes.filter(|m| *m > 0) else {
                return compact_once(&cfg).await;
            };
            let shutdown = shutdown_token();
            let mut tick = tokio::time::interval(Duration::from_secs(minutes * 60));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
                // A failed run is reported and tried again at the next tick.
                if let Err(e) = compact_once(&cfg).await {
                    tracing::error!(error = %format!("{e:#}"), "maintenance run failed");
                }
            }
        }
        Command::Lake {
            action: LakeAction::Files,
        } => {
            let lake = notiflow_lake::Lake::open(&cfg.lake).await?;
            let table = lake.load().await?;
            let files = notiflow_lake::maintenance::live_files(&table).await?;
            let mut days = std::collections::BTreeMap::new();
            for f in &files {
                let e = days.entry(f.day).or_insert((0u64, 0u64, 0u64));
                e.0 += 1;
                e.1 += f.file.file_size_in_bytes();
                e.2 += f.file.record_count();
            }
            let json: Vec<_> = days
                .iter()
                .map(|(day, (n, bytes, rows))| {
                    serde_json::json!({"day": day, "files": n, "bytes": bytes, "rows": rows})
                })
                .collect();
            println!("{}", serde_json::Value::Array(json));
            Ok(())
        }
        Command::Lake {
            action: LakeAction::Offsets,
        } => {
            let lake = notiflow_lake::Lake::open(&cfg.lake).await?;
            let offsets = notiflow_lake::table::committed_offsets(lake.load().await?.metadata())?;
            println!("{}", serde_json::to_string(&offsets)?);
            Ok(())
        }
        Command::Lake {
            action: LakeAction::AcceptGap { partition, offset },
        } => {
            let lake = notiflow_lake::Lake::open(&cfg.lake).await?;
            let (from, snapshot) =
                notiflow_lake::table::set_offset(&lake, &cfg.kafka.topic, partition, offset)
                    .await?;
            println!(
                "{}",
                serde_json::json!({"topic": cfg.kafka.topic, "partition": partition, "from": from, "to": offset, "snapshot_id": snapshot})
            );
            Ok(())
        }
        Command::Lake {
            action: LakeAction::RetireTopic { topic },
        } => {
            anyhow::ensure!(
                topic != cfg.kafka.topic,
                "{topic} is the topic this deployment reads (kafka.topic): its writers need its dedup windows"
            );
            let lake = notiflow_lake::Lake::open(&cfg.lake).await?;
            let (had, snapshot) = notiflow_lake::table::retire_topic(&lake, &topic).await?;
            println!(
                "{}",
                serde_json::json!({"topic": topic, "had_generations": had, "snapshot_id": snapshot})
            );
            Ok(())
        }
        Command::Lake {
            action: LakeAction::Stats,
        } => {
            let lake = notiflow_lake::Lake::open(&cfg.lake).await?;
            let stats = notiflow_lake::inspect::stats(&lake.load().await?).await?;
            println!("{}", serde_json::to_string(&stats)?);
            Ok(())
        }
        Command::Demo { rate } => {
            if let Some(r) = rate {
                cfg.generator.rate = r;
                cfg.validate()?;
            }
            demo::run(cfg, shutdown_token()).await
        }
    }
}

/// Prints a new random API key and its config entry.
fn api_key(
    cfg: &Config,
    name: String,
    role: &str,
    client: Option<String>,
    pii: bool,
) -> anyhow::Result<()> {
    let role: notiflow_api::auth::Role = serde_json::from_value(serde_json::Value::from(role))
        .map_err(|_| anyhow::anyhow!("--role must be viewer, finance or admin"))?;
    let (key, entry) = notiflow_api::auth::new_key(name, role, client, pii)
        .context("reading the OS random source")?;
    let mut check = cfg.api.clone();
    check.keys = vec![entry.clone()];
    check.keys_file = String::new();
    check.validate()?;
    #[derive(serde::Serialize)]
    struct Entry {
        api: Keys,
    }
    #[derive(serde::Serialize)]
    struct Keys {
        keys: Vec<notiflow_api::config::KeyConfig>,
    }
    let toml = toml::to_string(&Entry {
        api: Keys { keys: vec![entry] },
    })?;
    println!("key (give it to its holder; it is not stored): {key}\n\n# config entry:\n{toml}");
    Ok(())
}

/// One maintenance run of the lake, with its summary on stdout.
async fn compact_once(cfg: &Config) -> anyhow::Result<()> {
    let report = notiflow_lake::maintenance::run(&cfg.lake, std::time::SystemTime::now())
        .await
        .context("lake maintenance")?;
    println!(
        "compacted {} partitions: {} files -> {} files, {} rows ({} conflicts retried); expired {} snapshots; removed {} orphan files",
        report.partitions,
        report.files_in,
        report.files_out,
        report.rows,
        report.conflicts,
        report.expired,
        report.orphans
    );
    Ok(())
}

async fn gen_command(args: GenArgs, mut cfg: Config) -> anyhow::Result<()> {
    if let Some(r) = args.rate {
        cfg.generator.rate = r;
    }
    if let Some(s) = args.seed {
        cfg.generator.seed = s;
    }
    if let Some(c) = args.clients {
        cfg.generator.clients = c;
    }
    if let Some(m) = args.malformed_share {
        cfg.generator.malformed_share = m;
    }
    if let Some(d) = args.duplicate_share {
        cfg.generator.duplicate_share = d;
    }
    cfg.validate()?;
    let start = args
        .start
        .map(|s| {
            notiflow_schema::time::parse_rfc3339(&s)
                .map_err(|_| anyhow::anyhow!("--start {s:?} is not RFC 3339"))
        })
        .transpose()?;
    let opts = RunOptions {
        events: args.events,
        fast: args.fast,
        start,
        stamp: args.stamp,
        truth: args.truth.clone(),
        encode_only: args.encode_only,
    };
    let shutdown = shutdown_token();
    if !opts.encode_only {
        kafka::wait_for_broker(&cfg.kafka, &shutdown).await?;
        kafka::ensure_topics(&cfg.kafka).await?;
    }
    let (kafka_cfg, gen_cfg) = (cfg.kafka.clone(), cfg.generator.clone());
    let report =
        tokio::task::spawn_blocking(move || run_blocking(&kafka_cfg, &gen_cfg, &opts, &shutdown))
            .await
            .context("generator task")??;
    println!(
        "generated {} records in {:.2} s ({:.0} records/s){}{}",
        report.records,
        report.elapsed.as_secs_f64(),
        report.rate(),
        if args.encode_only {
            ", encode only"
        } else {
            ""
        },
        args.truth
            .map(|p| format!(", ground truth in {}", p.display()))
            .unwrap_or_default(),
    );
    Ok(())
}
