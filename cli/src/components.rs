//! The long-running components as futures over the one config: `notiflow
//! run <component>` runs one per process, `notiflow demo` runs them all in
//! one. Each registers its series in the Prometheus registry it is given,
//! so one process serves one `/metrics` whatever it runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use notiflow_ingest::SchemaRegistry;
use notiflow_ingest::service::EventSink;
use notiflow_reports::Reports;
use notiflow_reports::ledger::Ledger;
use notiflow_reports::schedule::Scheduler;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The schema registry the config names (HTTP or local files).
pub fn schema_registry(cfg: &Config) -> anyhow::Result<SchemaRegistry> {
    Ok(match &cfg.schema_registry.url {
        Some(url) => {
            SchemaRegistry::http(url, Duration::from_millis(cfg.schema_registry.timeout_ms))?
                .with_unknown_id_grace(Duration::from_secs(
                    cfg.schema_registry.unknown_id_grace_secs,
                ))
        }
        None => SchemaRegistry::from_files(&cfg.schema_registry.files)?,
    })
}

/// Validates and dead-letters until `shutdown`.
pub async fn ingest(
    cfg: &Config,
    metrics: notiflow_ingest::Metrics,
    sink: &mut impl EventSink,
    shutdown: CancellationToken,
) -> anyhow::Result<notiflow_ingest::service::Stats> {
    Ok(notiflow_ingest::service::run(
        &cfg.kafka,
        schema_registry(cfg)?,
        &cfg.ingest,
        sink,
        metrics,
        shutdown,
    )
    .await?)
}

/// Counts into Redis until `shutdown`.
pub async fn aggregator(
    cfg: &Config,
    metrics: notiflow_aggregator::Metrics,
    shutdown: CancellationToken,
) -> anyhow::Result<notiflow_aggregator::service::RunStats> {
    Ok(notiflow_aggregator::service::run(
        &cfg.kafka,
        schema_registry(cfg)?,
        &cfg.redis,
        &cfg.aggregator,
        metrics,
        &[],
        shutdown,
    )
    .await?)
}

/// Writes the Iceberg table until `shutdown`.
pub async fn lake(
    cfg: &Config,
    metrics: notiflow_lake::Metrics,
    shutdown: CancellationToken,
) -> anyhow::Result<notiflow_lake::RunStats> {
    Ok(notiflow_lake::run(
        &cfg.kafka,
        schema_registry(cfg)?,
        &cfg.lake,
        metrics,
        &[],
        shutdown,
    )
    .await?)
}

/// The report scheduler until `shutdown`.
pub async fn scheduler(
    cfg: &Config,
    metrics: notiflow_reports::Metrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ledger = Ledger::open(&cfg.lake.catalog_uri)
        .await
        .context("opening the run ledger")?;
    let reports = Arc::new(
        Reports::open(&cfg.reports, &cfg.lake)
            .await
            .context("opening the reports")?
            .with_metrics(metrics),
    );
    let owner = format!(
        "{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into()),
        std::process::id()
    );
    let sched = Scheduler::new(reports, ledger, owner)?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.cancelled().await;
        let _ = tx.send(true);
    });
    tracing::info!(jobs = cfg.reports.jobs.len(), "report scheduler started");
    sched.run(rx).await?;
    Ok(())
}

/// The API, bound and ready to serve.
pub struct Api {
    app: Arc<notiflow_api::App>,
    listener: tokio::net::TcpListener,
    redis_url: String,
    /// Where it listens (the real port when `api.listen` asks for port 0).
    pub addr: SocketAddr,
}

impl Api {
    /// Builds the API, its series in `prom` (served on `metrics.listen` by
    /// the caller), and binds `api.listen`.
    pub fn bind(
        cfg: &Config,
        prom: Registry,
        report_metrics: notiflow_reports::Metrics,
    ) -> anyhow::Result<Api> {
        let wiring = notiflow_api::Wiring {
            redis_url: cfg.redis.url.to_string(),
            key_prefix: cfg.redis.key_prefix.clone(),
            minute_retention_hours: cfg.aggregator.minute_retention_hours,
            reports: cfg.reports.clone(),
            lake: cfg.lake.clone(),
            report_metrics,
        };
        let app = notiflow_api::App::new(cfg.api.clone(), wiring, prom)?;
        let listener = notiflow_api::bind(&cfg.api.listen)
            .with_context(|| format!("binding api.listen {}", cfg.api.listen))?;
        let addr = listener.local_addr()?;
        Ok(Api {
            app,
            listener,
            redis_url: cfg.redis.url.to_string(),
            addr,
        })
    }

    /// Serves until `shutdown`; open streams are closed.
    pub async fn serve(self, shutdown: CancellationToken) {
        tracing::info!(addr = %self.addr, "serving the API");
        notiflow_api::run(self.app, self.listener, self.redis_url, shutdown).await;
    }
}
