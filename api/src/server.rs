//! The HTTP server: the router, request ids, metrics and security headers
//! on every answer, and the accept loop. The loop is ours (hyper directly,
//! not `axum::serve`) because it bounds what a connection may cost: a live
//! stream dropped as slow must have its connection cut even though it is
//! blocked writing to a client that does not read (every connection carries
//! a [`ConnKill`] token its stream can fire); a connection must send its
//! headers within `header_read_timeout_ms` and is closed after
//! `idle_timeout_secs` without a byte either way; past `max_connections`
//! new connections are answered 503 and closed.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{Redirect, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::Service;

use crate::error::{ApiError, REQUEST_ID};
pub use crate::state::{App, ConnKill, StartError, Wiring};
use crate::{handlers, openapi, run_routes, stream, web};

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
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/openapi.json", get(openapi::document))
        .route("/v1/whoami", get(handlers::whoami))
        .route("/v1/clients/{client}/series", get(handlers::series))
        .route("/v1/top", get(handlers::top))
        .route("/v1/stream", get(stream::stream))
        .route("/v1/reports", post(run_routes::start).get(run_routes::list))
        .route("/v1/reports/{id}", get(run_routes::status))
        .route("/v1/reports/{id}/download", get(run_routes::download))
        .route("/v1/runs", get(run_routes::scheduled))
        .route(
            "/v1/runs/{job}/{slot}/download",
            get(run_routes::scheduled_download),
        )
        .fallback(|| async { ApiError::NotFound("no such endpoint; see /openapi.json".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(app.clone(), track))
        .with_state(app)
}

/// What the browser may do with our pages: scripts and styles from this
/// origin only (the dashboard's page has inline styles, no inline script),
/// no framing, no plugins.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// Request ids: unique within the process, told apart across pods by the pid.
fn next_request_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    (u64::from(std::process::id()) << 32) | (NEXT.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff)
}

/// Every request: a request id (in the task for error logs, and in the
/// `x-request-id` answer header), a span, metrics by route, and the
/// security headers; data and downloads are never cached.
async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let data = req.uri().path().starts_with("/v1/");
    let id = next_request_id();
    let t0 = Instant::now();
    let span = tracing::info_span!("http.request", method = %req.method(), route = %route, request_id = id);
    let mut resp = REQUEST_ID
        .scope(id, tracing::Instrument::instrument(next.run(req), span))
        .await;
    let h = resp.headers_mut();
    h.insert("x-request-id", HeaderValue::from(id));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if data {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
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
    let limits = ConnLimits {
        slots: Arc::new(Semaphore::new(app.cfg.max_connections)),
        header_read: Duration::from_millis(app.cfg.header_read_timeout_ms),
        idle: Duration::from_secs(app.cfg.idle_timeout_secs),
    };
    let metrics = app.metrics.clone();
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
        let Ok(slot) = limits.slots.clone().try_acquire_owned() else {
            metrics.connections_refused.inc();
            tokio::spawn(refuse(tcp));
            continue;
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
        let (header_read, idle) = (limits.header_read, limits.idle);
        let open = metrics.connections.clone();
        tokio::spawn(async move {
            open.inc();
            let activity = Activity::new();
            let io = Watched {
                inner: tcp,
                activity: activity.clone(),
            };
            // Hyper queues at most WRITE_BUFFER bytes of a response before it
            // stops pulling frames, so a stalled client costs that, its queue
            // of frames and its socket buffers, and then it is dropped.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read)
                .keep_alive(true)
                .max_buf_size(WRITE_BUFFER)
                .serve_connection(TokioIo::new(io), svc);
            tokio::select! {
                _ = conn => {}
                _ = kill.cancelled() => {}
                _ = activity.idle_for(idle) => {
                    tracing::debug!("closing a connection idle for {idle:?}");
                }
            }
            open.dec();
            drop(slot);
        });
    }
}

/// What one connection may cost.
struct ConnLimits {
    slots: Arc<Semaphore>,
    header_read: Duration,
    idle: Duration,
}

/// Answers a connection past the cap with a 503 and closes it (a refusal
/// the caller can read, rather than a hang in the accept queue).
async fn refuse(mut tcp: TcpStream) {
    const BODY: &str = r#"{"error":"unavailable","message":"this server holds its maximum of connections; retry shortly"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let write = async {
        tcp.write_all(answer.as_bytes()).await?;
        tcp.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// When a connection last moved a byte, either way.
#[derive(Clone)]
struct Activity {
    base: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            base: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = last.elapsed();
            if quiet >= limit {
                return;
            }
            tokio::time::sleep(limit - quiet).await;
        }
    }
}

/// A socket that records its [`Activity`].
struct Watched {
    inner: TcpStream,
    activity: Activity,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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

#[cfg(test)]
mod tests {
    use axum::http::{Request, StatusCode};
    use prometheus::Registry;
    use tower::ServiceExt;

    use super::*;
    use crate::auth::{Role, key_hash};
    use crate::config::{ApiConfig, KeyConfig};

    const KEY: &str = "router-test-key";

    /// The app over a Redis that is not there (port 1): routes that do not
    /// read counters answer as in production; counter reads fail.
    fn app() -> Arc<App> {
        let cfg = ApiConfig {
            listen: "127.0.0.1:0".into(),
            keys: vec![KeyConfig {
                name: "admin".into(),
                sha256: key_hash(KEY),
                role: Role::Admin,
                client: None,
                pii: false,
            }],
            keys_file: String::new(),
            counter_timeout_ms: 200,
            breaker_failures: 3,
            breaker_cooldown_ms: 1000,
            stale_cache_mib: 1,
            stale_cache_ttl_secs: 60,
            fresh_cache_ms: 0,
            stream_queue: 4,
            heartbeat_secs: 1,
            max_streams: 10,
            max_streams_per_key: 2,
            max_connections: 10,
            header_read_timeout_ms: 1000,
            idle_timeout_secs: 5,
            snapshot_minutes: 60,
            max_hour_range_days: 31,
            max_day_range_days: 400,
            report_runs_kept: 10,
            report_runs_per_key: 2,
            report_timeout_secs: 60,
        };
        let reg = Registry::new();
        let wiring = Wiring {
            redis_url: "redis://127.0.0.1:1/".into(),
            key_prefix: "t".into(),
            minute_retention_hours: 48,
            reports: notiflow_reports::ReportsConfig::default(),
            lake: notiflow_lake::LakeConfig::default(),
            report_metrics: notiflow_reports::Metrics::new(&reg).unwrap(),
        };
        App::new(cfg, wiring, reg).unwrap()
    }

    async fn call(method: &str, uri: &str, auth: Option<&str>) -> (Response, serde_json::Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let resp = router(app())
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (Response::from_parts(parts, Body::empty()), json)
    }

    #[tokio::test]
    async fn metrics_are_not_on_the_public_port_and_errors_are_json() {
        let bearer = format!("Bearer {KEY}");
        for (method, uri, status) in [
            ("GET", "/metrics", StatusCode::NOT_FOUND),
            ("DELETE", "/v1/top", StatusCode::METHOD_NOT_ALLOWED),
            ("PUT", "/v1/reports", StatusCode::METHOD_NOT_ALLOWED),
            ("GET", "/v1/reports/%FF%FE", StatusCode::BAD_REQUEST),
        ] {
            let (resp, json) = call(method, uri, Some(&bearer)).await;
            assert_eq!(resp.status(), status, "{method} {uri}");
            assert!(json["message"].is_string(), "{method} {uri}: {json}");
        }
    }

    #[tokio::test]
    async fn every_answer_carries_the_security_headers() {
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let (resp, json) = call("GET", "/v1/whoami", Some(&format!("{scheme} {KEY}"))).await;
            assert_eq!(resp.status(), StatusCode::OK, "{scheme}: {json}");
            let h = resp.headers();
            assert_eq!(h["x-content-type-options"], "nosniff");
            assert_eq!(h["cache-control"], "no-store");
            assert_eq!(h["x-frame-options"], "DENY");
            let csp = h["content-security-policy"].to_str().unwrap();
            assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"));
            assert!(h.contains_key("x-request-id"));
        }
        let (resp, _) = call("GET", "/dashboard/", None).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers().contains_key("content-security-policy"));
        // The page may be stored (revalidated: `no-cache`), unlike the
        // data answers (`no-store`).
        assert_eq!(
            resp.headers()[header::CACHE_CONTROL],
            "no-cache",
            "the page itself may be cached"
        );
    }

    /// A 503 names neither Redis' address nor its error; it gives the
    /// request id that the log line carries.
    #[tokio::test]
    async fn a_dependency_failure_is_answered_without_its_detail() {
        let (resp, json) = call(
            "GET",
            "/v1/clients/acme/series",
            Some(&format!("Bearer {KEY}")),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{json}");
        let msg = json["message"].as_str().unwrap();
        assert!(
            !msg.contains("127.0.0.1") && !msg.to_lowercase().contains("redis"),
            "{msg}"
        );
        let id = resp.headers()["x-request-id"].to_str().unwrap();
        assert!(msg.contains(&format!("request id {id}")), "{msg}");
        assert!(resp.headers().contains_key(header::RETRY_AFTER));
    }
}
