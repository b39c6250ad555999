//! Logs and traces of one process: `tracing` events to stderr (text or
//! JSON, `[log]`), and, when `[traces] otlp_endpoint` is set, every span
//! exported over OTLP/HTTP (protobuf) to an OpenTelemetry collector, Jaeger
//! or Tempo. The spans are the units of work: an ingest batch, a Redis
//! apply, a lake commit, a report run, an API request.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogFormat};

/// Flushes and stops the span exporter when dropped (at the end of `main`),
/// so the last spans of a run are not lost.
pub struct Guard(Option<SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("notiflow: flushing traces: {e}");
        }
    }
}

/// Installs the global subscriber for `cfg`.
pub fn init(cfg: &Config) -> anyhow::Result<Guard> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.level));
    let logs = match cfg.log.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let provider = if cfg.traces.otlp_endpoint.is_empty() {
        None
    } else {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(&cfg.traces.otlp_endpoint)
            .build()
            .context("traces.otlp_endpoint: building the OTLP exporter")?;
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    Resource::builder()
                        .with_service_name(cfg.traces.service_name.clone())
                        .build(),
                )
                .build(),
        )
    };
    let spans = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("notiflow")));
    tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .with(filter)
        .try_init()
        .context("installing the log subscriber")?;
    Ok(Guard(provider))
}
