//! The small handlers: liveness, readiness, who the caller is, and the
//! counter reads (a client's series, the top clients). Reports are
//! [`crate::runs`]'s, the live stream [`crate::stream`]'s.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{Caller, Role};
use crate::breaker::State as BreakerState;
use crate::counters::{Series, SeriesParams, Top, TopParams};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery};
use crate::state::App;

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
    /// True while counter reads answer last known values (Redis down or
    /// the breaker not closed): the designed degradation, still ready.
    pub degraded: bool,
    /// True if the breaker is stuck (a probe held far past the read
    /// timeout); the process cannot recover by itself: not ready.
    pub wedged: bool,
    /// Live streams open.
    pub streams: usize,
}

/// Readiness: whether this process can answer. Redis being down is not a
/// reason to leave the load balancer: stale answers are the designed
/// degradation (SPEC §6), and every pod shares the same Redis, so a 503
/// then would take the whole service out. Only a state this process cannot
/// leave by itself is a 503.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "Ready (possibly degraded: see `degraded`)", body = Ready),
    (status = 503, description = "Stuck: restart the process", body = Ready)
))]
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    let redis = app.counters.ping().await;
    let state = app.counters.breaker_state();
    let breaker = match state {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half_open",
    };
    let wedged = app.counters.breaker_wedged();
    let body = Ready {
        redis,
        breaker: breaker.into(),
        degraded: !redis || state != BreakerState::Closed,
        wedged,
        streams: app.hub.len(),
    };
    let code = if wedged {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, axum::Json(body)).into_response()
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
    security(("api_key" = []), ("api_key_header" = [])))]
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
    security(("api_key" = []), ("api_key_header" = [])))]
pub async fn series(
    State(app): State<Arc<App>>,
    Caller(who): Caller,
    ApiPath(client): ApiPath<String>,
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
    security(("api_key" = []), ("api_key_header" = [])))]
pub async fn top(
    State(app): State<Arc<App>>,
    Caller(who): Caller,
    ApiQuery(p): ApiQuery<TopParams>,
) -> Result<Response, ApiError> {
    who.require(&[Role::Finance, Role::Admin], "the top clients list")?;
    let now = chrono::Utc::now().timestamp_micros();
    Ok(json(&*app.counters.top(&p, now).await?))
}
