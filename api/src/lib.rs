//! The axum HTTP API (SPEC §6): per-client counters from Redis, the live
//! SSE stream, report runs and downloads, tenancy by API key, health,
//! metrics and the web dashboard.
//!
//! - [`config`]: the `[api]` section; [`auth`]: keys, roles, scopes;
//! - [`state`]: what the handlers share; [`extract`]: our 400s for bad input;
//! - [`counters`] (+ [`breaker`]): Redis reads, stale answers when it is down;
//! - [`handlers`]: health, readiness, whoami, series, top;
//! - [`hub`] and [`stream`]: the deltas fan-out and `GET /v1/stream`;
//! - [`runs`]: reports through the API; [`web`]: the dashboard;
//! - [`server`]: router, security headers, accept loop; [`openapi`]: `/openapi.json`.
//!
//! Dependencies run one way: `server` → handlers, `runs`, `stream`,
//! `openapi` → `state`, `extract`, `counters`, `auth`.

pub mod auth;
pub mod breaker;
pub mod config;
pub mod counters;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod hub;
pub mod metrics;
pub mod openapi;
pub mod run_routes;
pub mod runs;
pub mod server;
pub mod state;
pub mod stream;
pub mod web;

pub use config::ApiConfig;
pub use error::ApiError;
pub use server::{App, Wiring, bind, serve};

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Starts the deltas fan-out and serves `app` on `listener` until `shutdown`.
pub async fn run(
    app: std::sync::Arc<App>,
    listener: tokio::net::TcpListener,
    redis_url: String,
    shutdown: CancellationToken,
) {
    let hub = app.hub.clone();
    let keys = app.counters.keys().clone();
    let beat = Duration::from_secs(app.cfg.heartbeat_secs);
    let tail = tokio::spawn(hub.run(redis_url, keys, beat, shutdown.clone()));
    serve(app, listener, shutdown).await;
    let _ = tail.await;
}
