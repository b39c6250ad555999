//! The HTTP server: shared state, the router, request metrics, health, and
//! the accept loop. The loop is ours (hyper directly, not `axum::serve`)
//! for one reason: a live stream dropped as slow must have its connection
//! cut even though it is blocked writing to a client that does not read,
//! so every connection carries a [`ConnKill`] token its stream can fire.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use notiflow_schema::counters::Keys;
use prometheus::{Encoder, Registry, TextEncoder};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::Service;
use utoipa::ToSchema;

use crate::auth::{Caller, KeyStore, Role};
use crate::breaker::{Breaker, State as BreakerState};
use crate::config::ApiConfig;
use crate::counters::{Counters, Limits, Series, SeriesParams, Top, TopParams};
use crate::error::ApiError;
use crate::hub::Hub;
use crate::metrics::ApiMetrics;
use crate::runs::ReportRuns;
use crate::{openapi, runs, stream, web};

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
    /// Prometheus registry served at `/metrics`.
    pub registry: Registry,
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
    /// Builds the state; `registry` gets the API's series (and may hold others').
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
            cfg.stale_cache_entries,
            Duration::from_millis(cfg.fresh_cache_ms),
            Limits {
                minute_retention: i64::from(w.minute_retention_hours) * 60,
                max_hour_days: i64::from(cfg.max_hour_range_days),
                max_day_days: i64::from(cfg.max_day_range_days),
            },
            metrics.clone(),
        );
        let hub = Hub::new(cfg.stream_queue, cfg.max_streams, metrics.clone());
        let runs = ReportRuns::new(
            w.reports,
            w.lake,
            cfg.report_runs_kept,
            metrics.clone(),
            w.report_metrics,
        );
        Ok(Arc::new(App {
            cfg,
            keys,
            counters,
            hub,
            runs,
            registry,
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

/// `Query` whose rejection is our 400 JSON.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::bad(e.body_text()))
    }
}

/// `Json` whose rejection is our 400 JSON.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|j| ApiJson(j.0))
            .map_err(|e| ApiError::bad(e.body_text()))
    }
}

/// The router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/dashboard/") }))
        .route(
            "/dashboard",
            get(|| async { Redirect::permanent("/dashboard/") }),
        )
        .route("/dashboard/", get(web::index))
        .route("/dashboard/app.js", get(web::script))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::document))
        .route("/v1/whoami", get(whoami))
        .route("/v1/clients/{client}/series", get(series))
        .route("/v1/top", get(top))
        .route("/v1/stream", get(stream::stream))
        .route("/v1/reports", post(runs::start).get(runs::list))
        .route("/v1/reports/{id}", get(runs::status))
        .route("/v1/reports/{id}/download", get(runs::download))
        .route("/v1/runs", get(runs::scheduled))
        .route(
            "/v1/runs/{job}/{slot}/download",
            get(runs::scheduled_download),
        )
        .fallback(|| async { ApiError::NotFound("no such endpoint; see /openapi.json".into()) })
        .layer(middleware::from_fn_with_state(app.clone(), track))
        .with_state(app)
}

async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let t0 = Instant::now();
    let span = tracing::info_span!("http.request", method = %req.method(), route = %route);
    let resp = tracing::Instrument::instrument(next.run(req), span).await;
    app.metrics
        .latency
        .with_label_values(&[&route])
        .observe(t0.elapsed().as_secs_f64());
    app.metrics
        .requests
        .with_label_values(&[&route, resp.status().as_str()])
        .inc();
    resp
}

/// Most bytes hyper buffers per connection (requests and responses).
const WRITE_BUFFER: usize = 64 * 1024;

/// Serves `app` on `listener` until `shutdown`.
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: CancellationToken) {
    let router = router(app);
    loop {
        let (tcp, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, usually: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let _ = tcp.set_nodelay(true);
        let kill = shutdown.child_token();
        let router = router.clone();
        let token = kill.clone();
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnKill(token.clone()));
                let mut router = router.clone();
                async move { router.call(req.map(Body::new)).await }
            });
        tokio::spawn(async move {
            // Hyper queues at most WRITE_BUFFER bytes of a response before it
            // stops pulling frames, so a stalled client costs that, its queue
            // of frames and its socket buffers, and then it is dropped.
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .max_buf_size(WRITE_BUFFER)
                .serve_connection(TokioIo::new(tcp), svc);
            tokio::select! {
                _ = conn => {}
                _ = kill.cancelled() => {}
            }
        });
    }
}

/// Binds `listen` with a deep accept queue (many streams connect at once).
pub fn bind(listen: &str) -> std::io::Result<TcpListener> {
    let addr: std::net::SocketAddr = listen.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{listen}: {e}"))
    })?;
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(8192)
}

/// A JSON answer from a borrowed value (shared answers are not cloned).
fn json<T: Serialize>(v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => ApiError::Internal(format!("encoding JSON: {e}")).into_response(),
    }
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "The process is up", body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness report.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// Whether Redis answers now.
    pub redis: bool,
    /// `closed`, `open` or `half_open`.
    pub breaker: String,
    /// Live streams open.
    pub streams: usize,
}

/// Readiness: Redis answers (counters can be fresh).
#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "Ready", body = Ready),
    (status = 503, description = "Redis does not answer", body = Ready)
))]
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    let redis = app.counters.ping().await;
    let breaker = match app.counters.breaker_state() {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half_open",
    };
    let body = Ready {
        redis,
        breaker: breaker.into(),
        streams: app.hub.len(),
    };
    let code = if redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// Prometheus exposition of every series in this process.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut body = Vec::new();
    let enc = TextEncoder::new();
    if let Err(e) = enc.encode(&app.registry.gather(), &mut body) {
        return ApiError::Internal(format!("encoding metrics: {e}")).into_response();
    }
    (
        [(header::CONTENT_TYPE, enc.format_type().to_string())],
        body,
    )
        .into_response()
}

/// The caller as the API sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    /// Key holder.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The viewer's client.
    pub client: Option<String>,
    /// May see recipients unmasked.
    pub pii: bool,
}

/// Who the key belongs to (the dashboard's login check).
#[utoipa::path(get, path = "/v1/whoami", tag = "auth",
    responses((status = 200, body = WhoAmI), (status = 401, body = crate::error::ErrorBody)),
    security(("api_key" = [])))]
pub async fn whoami(Caller(who): Caller) -> axum::Json<WhoAmI> {
    axum::Json(WhoAmI {
        name: who.name.clone(),
        role: who.role,
        client: who.client.clone(),
        pii: who.pii,
    })
}

/// One client's counters per minute, hour or day.
#[utoipa::path(get, path = "/v1/clients/{client}/series", tag = "counters",
    params(("client" = String, Path, description = "Client id"), SeriesParams),
    responses(
        (status = 200, description = "The series; `stale` is true when Redis was unavailable and these are the last known values", body = Series),
        (status = 400, description = "Bad range or parameter, unknown client", body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
        (status = 403, description = "Another client's counters", body = crate::error::ErrorBody),
        (status = 503, description = "Redis unavailable and no last known answer", body = crate::error::ErrorBody)
    ),
    security(("api_key" = [])))]
pub async fn series(
    State(app): State<Arc<App>>,
    Caller(who): Caller,
    axum::extract::Path(client): axum::extract::Path<String>,
    ApiQuery(p): ApiQuery<SeriesParams>,
) -> Result<Response, ApiError> {
    let client = who.client(Some(&client))?;
    notiflow_reports::detail::check_client(&client)?;
    // A viewer's own client is known even before its first event.
    let check_known = who.role != Role::Viewer;
    let now = chrono::Utc::now().timestamp_micros();
    Ok(json(
        &*app.counters.series(&client, &p, check_known, now).await?,
    ))
}

/// The busiest clients of a minute (finance and admin).
#[utoipa::path(get, path = "/v1/top", tag = "counters",
    params(TopParams),
    responses(
        (status = 200, body = Top),
        (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
        (status = 403, description = "Viewers see only their own client", body = crate::error::ErrorBody),
        (status = 503, body = crate::error::ErrorBody)
    ),
    security(("api_key" = [])))]
pub async fn top(
    State(app): State<Arc<App>>,
    Caller(who): Caller,
    ApiQuery(p): ApiQuery<TopParams>,
) -> Result<Response, ApiError> {
    who.require(&[Role::Finance, Role::Admin], "the top clients list")?;
    let now = chrono::Utc::now().timestamp_micros();
    Ok(json(&*app.counters.top(&p, now).await?))
}
