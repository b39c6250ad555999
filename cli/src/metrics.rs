//! Serves `/metrics` (Prometheus text exposition) for whichever components
//! run in this process; each registers its series in the one registry.

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::proto::MetricType;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;

/// A registry for one process, with the standard process series
/// (`process_resident_memory_bytes`, CPU seconds, open fds).
pub fn registry() -> anyhow::Result<Registry> {
    let r = Registry::new();
    r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))
    .context("registering the process metrics")?;
    Ok(r)
}

/// Binds `listen` (unless empty) and serves `registry` until `shutdown`.
pub async fn serve(
    listen: &str,
    registry: Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<SocketAddr>> {
    if listen.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding metrics.listen {listen}"))?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(registry);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(%addr, "serving /metrics");
    Ok(Some(addr))
}

/// The sum of every sample of the counter or gauge family `name` (0 when
/// it has none yet), for progress lines.
pub fn sum(registry: &Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| {
            let counter = f.get_field_type() == MetricType::COUNTER;
            f.get_metric().iter().map(move |m| {
                if counter {
                    m.get_counter().get_value()
                } else {
                    m.get_gauge().get_value()
                }
            })
        })
        .sum()
}

async fn metrics(State(registry): State<Registry>) -> impl IntoResponse {
    let mut body = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&registry.gather(), &mut body) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    (
        [(header::CONTENT_TYPE, encoder.format_type().to_string())],
        body,
    )
}
