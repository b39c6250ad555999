//! The API's shared state: what every handler reads (config, keys,
//! counters, the live fan-out, report runs, metrics), built once from the
//! validated config, and the connection-kill token each request carries.

use std::sync::Arc;
use std::time::Duration;

use notiflow_schema::counters::Keys;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::auth::KeyStore;
use crate::breaker::Breaker;
use crate::config::ApiConfig;
use crate::counters::{CacheLimits, Counters, Limits};
use crate::hub::Hub;
use crate::metrics::ApiMetrics;
use crate::runs::ReportRuns;

/// Everything the handlers share.
pub struct App {
    /// The `[api]` section.
    pub cfg: ApiConfig,
    /// Who may call.
    pub keys: KeyStore,
    /// Counter reads.
    pub counters: Counters,
    /// The live fan-out.
    pub hub: Arc<Hub>,
    /// Report runs started here, the ledger, downloads.
    pub runs: ReportRuns,
    /// The API's own series.
    pub metrics: ApiMetrics,
}

impl AsRef<KeyStore> for Arc<App> {
    fn as_ref(&self) -> &KeyStore {
        &self.keys
    }
}

/// What the API needs from the rest of the config.
pub struct Wiring {
    /// Redis URL.
    pub redis_url: String,
    /// Redis key prefix.
    pub key_prefix: String,
    /// Minute buckets are kept this long (hours; `aggregator.minute_retention_hours`).
    pub minute_retention_hours: u32,
    /// Reports and the lake, for report runs and downloads.
    pub reports: notiflow_reports::ReportsConfig,
    /// The lake (catalog, warehouse).
    pub lake: notiflow_lake::LakeConfig,
    /// Where report runs started here record their durations (shared with
    /// a scheduler in the same process).
    pub report_metrics: notiflow_reports::Metrics,
}

impl App {
    /// Builds the state; `registry` gets the API's series (the process
    /// serves it on `metrics.listen`, not on the API's public port).
    pub fn new(cfg: ApiConfig, w: Wiring, registry: Registry) -> Result<Arc<App>, StartError> {
        let keys = KeyStore::new(&cfg.valid_keys()?);
        let metrics = ApiMetrics::new(&registry)?;
        let counters = Counters::new(
            &w.redis_url,
            Keys::new(w.key_prefix.clone()),
            Duration::from_millis(cfg.counter_timeout_ms),
            Breaker::new(
                cfg.breaker_failures,
                Duration::from_millis(cfg.breaker_cooldown_ms),
            ),
            CacheLimits {
                bytes: cfg.stale_cache_mib.saturating_mul(1 << 20),
                ttl: Duration::from_secs(cfg.stale_cache_ttl_secs),
                fresh_for: Duration::from_millis(cfg.fresh_cache_ms),
            },
            Limits {
                minute_retention: i64::from(w.minute_retention_hours) * 60,
                max_hour_days: i64::from(cfg.max_hour_range_days),
                max_day_days: i64::from(cfg.max_day_range_days),
            },
            metrics.clone(),
        );
        let hub = Hub::new(
            cfg.stream_queue,
            cfg.max_streams,
            cfg.max_streams_per_key,
            metrics.clone(),
        );
        let runs = ReportRuns::new(
            w.reports,
            w.lake,
            crate::runs::Quotas {
                kept: cfg.report_runs_kept,
                per_key: cfg.report_runs_per_key,
                timeout: Duration::from_secs(cfg.report_timeout_secs),
            },
            metrics.clone(),
            w.report_metrics,
        );
        Ok(Arc::new(App {
            cfg,
            keys,
            counters,
            hub,
            runs,
            metrics,
        }))
    }
}

/// Why the API cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A config field is wrong.
    #[error(transparent)]
    Config(#[from] crate::config::FieldError),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The connection-kill token of the request's connection.
#[derive(Clone)]
pub struct ConnKill(pub CancellationToken);
