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
//!  notiflow demo         ─▶ generator, ingest, aggregator and lake writer, against the local servers (infra/up.sh)
//!  notiflow config       ─▶ the effective config, validated
//! ```

mod config;
mod metrics;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use notiflow_ingest::service::CountingSink;
use notiflow_ingest::{SchemaRegistry, kafka};
use notiflow_loadgen::{RunOptions, run_blocking};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

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
    /// Local demo: create topics, then generate traffic, validate it, count it in Redis and write it to the lake until Ctrl-C.
    Demo {
        /// Target rate (`100M/day`, `1160/s`, …); default from `[gen] rate`.
        #[arg(long)]
        rate: Option<String>,
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
    init_logs(&cfg);
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

fn init_logs(cfg: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
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
            println!(
                "{}",
                toml::to_string_pretty(&cfg).context("rendering config")?
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
            let registry = registry(&cfg)?;
            let stats = notiflow_ingest::service::run(
                &cfg.kafka,
                registry,
                &cfg.ingest,
                &mut CountingSink::default(),
                shutdown_token(),
            )
            .await?;
            println!("{stats:?}");
            Ok(())
        }
        Command::Run {
            component: Component::Aggregator,
        } => {
            let shutdown = shutdown_token();
            let prom = prometheus::Registry::new();
            let metrics = notiflow_aggregator::Metrics::new(&prom)?;
            metrics::serve(&cfg.metrics.listen, prom, shutdown.clone()).await?;
            let stats = notiflow_aggregator::service::run(
                &cfg.kafka,
                registry(&cfg)?,
                &cfg.redis,
                &cfg.aggregator,
                metrics,
                &[],
                shutdown,
            )
            .await?;
            println!("{stats:?}");
            Ok(())
        }
        Command::Run {
            component: Component::Lake,
        } => {
            let shutdown = shutdown_token();
            let prom = prometheus::Registry::new();
            let metrics = notiflow_lake::Metrics::new(&prom)?;
            metrics::serve(&cfg.metrics.listen, prom, shutdown.clone()).await?;
            let stats = notiflow_lake::run(
                &cfg.kafka,
                registry(&cfg)?,
                &cfg.lake,
                metrics,
                &[],
                shutdown,
            )
            .await?;
            println!("{stats:?}");
            Ok(())
        }
        Command::Run {
            component: Component::Reports,
        } => report::scheduler(&cfg, shutdown_token()).await,
        Command::Run {
            component: Component::Api,
        } => api(&cfg).await,
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
            demo(cfg).await
        }
    }
}

/// Serves the API and dashboard until Ctrl-C.
async fn api(cfg: &Config) -> anyhow::Result<()> {
    let shutdown = shutdown_token();
    let wiring = notiflow_api::Wiring {
        redis_url: cfg.redis.url.clone(),
        key_prefix: cfg.redis.key_prefix.clone(),
        minute_retention_hours: cfg.aggregator.minute_retention_hours,
        reports: cfg.reports.clone(),
        lake: cfg.lake.clone(),
    };
    let app = notiflow_api::App::new(cfg.api.clone(), wiring, prometheus::Registry::new())?;
    let listener = notiflow_api::bind(&cfg.api.listen)
        .with_context(|| format!("binding api.listen {}", cfg.api.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving the API");
    println!(
        "notiflow API on http://{addr}/ (dashboard: http://{addr}/dashboard/, OpenAPI: http://{addr}/openapi.json)"
    );
    notiflow_api::run(app, listener, cfg.redis.url.clone(), shutdown).await;
    Ok(())
}

/// Prints a new random API key and its config entry.
fn api_key(
    cfg: &Config,
    name: String,
    role: &str,
    client: Option<String>,
    pii: bool,
) -> anyhow::Result<()> {
    use std::io::Read;
    let role: notiflow_api::auth::Role = serde_json::from_value(serde_json::Value::from(role))
        .map_err(|_| anyhow::anyhow!("--role must be viewer, finance or admin"))?;
    let mut raw = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("reading /dev/urandom")?;
    let key = format!(
        "nfk_{}",
        raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let entry = notiflow_api::config::KeyConfig {
        name,
        sha256: notiflow_api::auth::key_hash(&key),
        role,
        client,
        pii,
    };
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

fn registry(cfg: &Config) -> anyhow::Result<SchemaRegistry> {
    Ok(match &cfg.schema_registry.url {
        Some(url) => {
            SchemaRegistry::http(url, Duration::from_millis(cfg.schema_registry.timeout_ms))?
        }
        None => SchemaRegistry::from_files(&cfg.schema_registry.files)?,
    })
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

async fn demo(mut cfg: Config) -> anyhow::Result<()> {
    let shutdown = shutdown_token();
    if cfg.generator.malformed_share == 0.0 {
        cfg.generator.malformed_share = 0.001;
    }
    println!(
        "notiflow demo: generating {} into {} at {}; Ctrl-C stops",
        cfg.kafka.topic, cfg.kafka.brokers, cfg.generator.rate
    );
    kafka::wait_for_broker(&cfg.kafka, &shutdown).await?;
    kafka::ensure_topics(&cfg.kafka).await?;
    let counter = CountingSink::default();
    let ingest = {
        let (cfg, shutdown, mut sink) = (cfg.clone(), shutdown.clone(), counter.clone());
        tokio::spawn(async move {
            let registry = registry(&cfg)?;
            anyhow::Ok(
                notiflow_ingest::service::run(
                    &cfg.kafka,
                    registry,
                    &cfg.ingest,
                    &mut sink,
                    shutdown,
                )
                .await?,
            )
        })
    };
    let prom = prometheus::Registry::new();
    let agg_metrics = notiflow_aggregator::Metrics::new(&prom)?;
    let lake_metrics = notiflow_lake::Metrics::new(&prom)?;
    if let Some(addr) = metrics::serve(&cfg.metrics.listen, prom, shutdown.clone()).await? {
        println!("metrics on http://{addr}/metrics");
    }
    let aggregator = {
        let (cfg, shutdown, m) = (cfg.clone(), shutdown.clone(), agg_metrics.clone());
        tokio::spawn(async move {
            let registry = registry(&cfg)?;
            anyhow::Ok(
                notiflow_aggregator::service::run(
                    &cfg.kafka,
                    registry,
                    &cfg.redis,
                    &cfg.aggregator,
                    m,
                    &[],
                    shutdown,
                )
                .await?,
            )
        })
    };
    let lake = {
        let (cfg, shutdown, m) = (cfg.clone(), shutdown.clone(), lake_metrics.clone());
        tokio::spawn(async move {
            let registry = registry(&cfg)?;
            anyhow::Ok(notiflow_lake::run(&cfg.kafka, registry, &cfg.lake, m, &[], shutdown).await?)
        })
    };
    let generator = {
        let (kafka_cfg, gen_cfg, shutdown) =
            (cfg.kafka.clone(), cfg.generator.clone(), shutdown.clone());
        tokio::task::spawn_blocking(move || {
            run_blocking(&kafka_cfg, &gen_cfg, &RunOptions::default(), &shutdown)
        })
    };
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    while !shutdown.is_cancelled()
        && !generator.is_finished()
        && !ingest.is_finished()
        && !aggregator.is_finished()
        && !lake.is_finished()
    {
        tokio::select! {
            _ = tick.tick() => println!(
                "ingest has validated {} events; the aggregator has counted {} in Redis ({}); the lake has committed {} rows to {}",
                counter.0.load(std::sync::atomic::Ordering::Relaxed),
                agg_metrics.events.with_label_values(&["counted"]).get(),
                cfg.redis.url,
                lake_metrics.rows.get(),
                cfg.lake.warehouse,
            ),
            _ = shutdown.cancelled() => {}
        }
    }
    shutdown.cancel();
    let report = generator.await.context("generator task")??;
    let stats = ingest.await.context("ingest task")??;
    let agg = aggregator.await.context("aggregator task")??;
    let lake = lake.await.context("lake task")??;
    println!(
        "demo stopped: generated {} records; ingest consumed {}, valid {}, dead-lettered {:?}; aggregator counted {} in {} batches; lake committed {} rows in {} snapshots",
        report.records,
        stats.records,
        stats.valid,
        stats.rejected,
        agg.counted,
        agg.batches,
        lake.rows,
        lake.commits
    );
    Ok(())
}
