//! `notiflow demo`: every component in one process against the local
//! servers, with a demo API key, until Ctrl-C.
//!
//! ```text
//!  generator ─▶ Kafka ─┬─▶ ingest (validate, dead-letter)
//!                      ├─▶ aggregator ─▶ Redis ─▶ API (+ dashboard, SSE)
//!                      └─▶ lake writer ─▶ Iceberg ─▶ report scheduler
//! ```
//!
//! One Prometheus registry holds every component's series; it is served on
//! `metrics.listen` (not on the API's public port). Ctrl-C (or SIGTERM) stops
//! the generator, lets each consumer finish and commit the batch in hand,
//! closes the live streams, and returns once every task has ended, so the
//! process leaves nothing running behind it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use notiflow_api::auth::{Role, new_key};
use notiflow_ingest::kafka;
use notiflow_ingest::service::CountingSink;
use notiflow_loadgen::{RunOptions, run_blocking};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::components::{self, Api};
use crate::config::Config;
use crate::metrics;

/// Runs the demo until `shutdown`.
pub async fn run(mut cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    if cfg.generator.malformed_share == 0.0 {
        // A few poison records so the dead-letter path shows.
        cfg.generator.malformed_share = 0.001;
    }
    // Each demo run makes events of its own: the configured seed moved by
    // the start time. The same seed again would send the first run's event
    // ids again, duplicates the sinks rightly do not count a second time.
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    cfg.generator.seed = cfg.generator.seed.wrapping_add(started);
    let (key, entry) =
        new_key("demo".into(), Role::Admin, None, false).context("making the demo API key")?;
    cfg.api.keys.push(entry);
    cfg.validate()?;

    println!(
        "notiflow demo: generating {} into {} at {} (seed {}); Ctrl-C stops",
        cfg.kafka.topic, cfg.kafka.brokers, cfg.generator.rate, cfg.generator.seed
    );
    kafka::wait_for_broker(&cfg.kafka, &shutdown).await?;
    kafka::ensure_topics(&cfg.kafka).await?;

    let prom = metrics::registry()?;
    let ingest_m = notiflow_ingest::Metrics::new(&prom)?;
    let agg_m = notiflow_aggregator::Metrics::new(&prom)?;
    let lake_m = notiflow_lake::Metrics::new(&prom)?;
    let report_m = notiflow_reports::Metrics::new(&prom)?;
    let api = Api::bind(&cfg, prom.clone(), report_m.clone())?;
    let api_addr = api.addr;
    let metrics_addr = metrics::serve(&cfg.metrics.listen, prom.clone(), shutdown.clone()).await?;

    let mut tasks: Vec<(&str, JoinHandle<anyhow::Result<String>>)> = Vec::new();
    let validated = CountingSink::default();
    {
        let (cfg, stop, mut sink, m) = (
            cfg.clone(),
            shutdown.clone(),
            validated.clone(),
            ingest_m.clone(),
        );
        tasks.push((
            "ingest",
            tokio::spawn(async move {
                let s = components::ingest(&cfg, m, &mut sink, stop).await?;
                Ok(format!(
                    "ingest consumed {}, valid {}, dead-lettered {:?}",
                    s.records, s.valid, s.rejected
                ))
            }),
        ));
    }
    {
        let (cfg, stop, m) = (cfg.clone(), shutdown.clone(), agg_m.clone());
        tasks.push((
            "aggregator",
            tokio::spawn(async move {
                let s = components::aggregator(&cfg, m, stop).await?;
                Ok(format!(
                    "aggregator counted {} in {} batches",
                    s.counted, s.batches
                ))
            }),
        ));
    }
    {
        let (cfg, stop, m) = (cfg.clone(), shutdown.clone(), lake_m.clone());
        tasks.push((
            "lake",
            tokio::spawn(async move {
                let s = components::lake(&cfg, m, stop).await?;
                Ok(format!(
                    "lake committed {} rows in {} snapshots",
                    s.rows, s.commits
                ))
            }),
        ));
    }
    {
        let (cfg, stop) = (cfg.clone(), shutdown.clone());
        tasks.push((
            "reports",
            tokio::spawn(async move {
                components::scheduler(&cfg, report_m, stop).await?;
                Ok("report scheduler stopped".into())
            }),
        ));
    }
    {
        let stop = shutdown.clone();
        tasks.push((
            "api",
            tokio::spawn(async move {
                api.serve(stop).await;
                Ok("API stopped".into())
            }),
        ));
    }
    {
        let (kafka_cfg, gen_cfg, stop) =
            (cfg.kafka.clone(), cfg.generator.clone(), shutdown.clone());
        tasks.push((
            "generator",
            tokio::spawn(async move {
                let r = tokio::task::spawn_blocking(move || {
                    run_blocking(&kafka_cfg, &gen_cfg, &RunOptions::default(), &stop)
                })
                .await
                .context("generator task")??;
                Ok(format!("generated {} records", r.records))
            }),
        ));
    }

    println!("dashboard: http://{api_addr}/dashboard/#key={key}");
    println!("demo API key (admin; printed once, not stored): {key}");
    println!(
        "  try: curl -H 'Authorization: Bearer {key}' http://{api_addr}/v1/top ; OpenAPI: http://{api_addr}/openapi.json"
    );
    if let Some(a) = metrics_addr {
        println!("metrics: http://{a}/metrics");
    }

    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    while !shutdown.is_cancelled() && !tasks.iter().any(|(_, t)| t.is_finished()) {
        tokio::select! {
            _ = tick.tick() => println!(
                "validated {} events, {} dead-lettered; counted {} in Redis; {} rows committed to the lake ({}); {} live streams",
                validated.0.load(Ordering::Relaxed),
                metrics::sum(&prom, "notiflow_ingest_dlq_records_total"),
                agg_m.events.with_label_values(&["counted"]).get(),
                lake_m.rows.get(),
                cfg.lake.warehouse,
                metrics::sum(&prom, "notiflow_api_streams"),
            ),
            _ = shutdown.cancelled() => {}
        }
    }
    // Whatever ended first (Ctrl-C or a failed component), stop the rest.
    shutdown.cancel();
    let mut first_err = None;
    let mut done = Vec::new();
    for (name, task) in tasks {
        match task.await {
            Ok(Ok(line)) => done.push(line),
            Ok(Err(e)) => {
                eprintln!("notiflow demo: {name} failed: {e:#}");
                first_err.get_or_insert(e.context(format!("{name} failed")));
            }
            Err(e) => {
                first_err.get_or_insert(anyhow::anyhow!("{name} task: {e}"));
            }
        }
    }
    println!("demo stopped: {}", done.join("; "));
    first_err.map_or(Ok(()), Err)
}
