//! `GET /v1/stream`: the live dashboard feed over Server-Sent Events.
//!
//! A new stream gets one `snapshot` event (the scoped client's recent
//! minutes, or the top clients for an all-client stream) whose id is the
//! deltas-stream position it was read at, atomically; then `delta` events
//! as the aggregator applies batches. A reconnect with `Last-Event-ID`
//! replays the deltas after that id from Redis instead (or, if they were
//! trimmed away, starts over with a snapshot). Frames already covered by
//! the snapshot or the replay are skipped, so nothing is counted twice.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use notiflow_schema::counters::Delta;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Caller, Scope};
use crate::counters::{Series, Top};
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::hub::{EntryId, Frame, delta_frame, parse_id};
use crate::state::{App, ConnKill};

/// Query of a stream.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamParams {
    /// The client to follow (a viewer's own by default; finance and admin
    /// follow every client without it).
    pub client: Option<String>,
}

/// The data of a `snapshot` event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SnapshotEvent {
    /// The followed client, or null for all.
    pub client: Option<String>,
    /// The client's recent minutes (client streams).
    pub series: Option<Series>,
    /// The top clients of the current minute (all-client streams).
    pub top: Option<Top>,
}

fn visible(scope: &Scope, mut d: Delta) -> Option<Delta> {
    if let Scope::Client(c) = scope {
        d.c.retain(|cell| &cell.0 == c);
    }
    (!d.c.is_empty()).then_some(d)
}

/// The live stream.
#[utoipa::path(
    get,
    path = "/v1/stream",
    tag = "live",
    params(
        StreamParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id (sent by EventSource on reconnect)")
    ),
    responses(
        (status = 200, description = "`text/event-stream`: a `snapshot` event (data: SnapshotEvent JSON), then `delta` events (data: {\"t\": apply time ms, \"c\": [[client, minute since epoch, [counts in slot order]]]}) and `: heartbeat` comments", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad parameter", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or unknown key", body = crate::error::ErrorBody),
        (status = 403, description = "Another client's stream", body = crate::error::ErrorBody),
        (status = 429, description = "This key holds its maximum of live streams (`Retry-After`)", body = crate::error::ErrorBody),
        (status = 503, description = "Redis unavailable or this server is full (`Retry-After`)", body = crate::error::ErrorBody)
    ),
    security(("api_key" = []), ("api_key_header" = []))
)]
pub async fn stream(
    State(app): State<Arc<App>>,
    Caller(who): Caller,
    conn: Option<axum::Extension<ConnKill>>,
    headers: HeaderMap,
    ApiQuery(p): ApiQuery<StreamParams>,
) -> Result<Response, ApiError> {
    let scope = who.scope(p.client.as_deref())?;
    if let Scope::Client(c) = &scope {
        notiflow_reports::detail::check_client(c)?;
    }
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(parse_id)
                .ok_or_else(|| ApiError::bad("Last-Event-ID is not an event id of this stream"))?,
        ),
    };
    let kill = conn.map_or_else(CancellationToken::new, |k| k.0.0.clone());
    // Subscribe before reading Redis, so nothing applied meanwhile is missed.
    let sub = app.hub.subscribe(&scope, &who.key_id, kill)?;
    let now = chrono::Utc::now().timestamp_micros();
    let mut first: Vec<Bytes> = vec![Bytes::from_static(b"retry: 2000\n\n")];
    let mut floor: EntryId = (0, 0);
    // Resume after Last-Event-ID when Redis still holds everything after it.
    let replay = match resume {
        Some(id) => app.counters.replay(id).await?.map(|entries| (id, entries)),
        None => None,
    };
    let resumed = replay.is_some();
    if let Some((id, entries)) = replay {
        floor = id;
        for (eid, d) in entries {
            if let Some(pid) = parse_id(&eid) {
                floor = floor.max(pid);
            }
            if let Some(d) = visible(&scope, d) {
                first.push(delta_frame(&eid, &d));
            }
        }
    }
    if !resumed {
        let client = match &scope {
            Scope::Client(c) => Some(c.as_str()),
            Scope::All => None,
        };
        let snap = app
            .counters
            .snapshot(client, app.cfg.snapshot_minutes, now)
            .await?;
        let id = snap.last_id.clone().unwrap_or_else(|| "0-0".into());
        floor = parse_id(&id).unwrap_or((0, 0));
        let data = SnapshotEvent {
            client: client.map(String::from),
            series: snap.series,
            top: snap.top,
        };
        let json = serde_json::to_string(&data)
            .map_err(|e| ApiError::Internal(format!("encoding the snapshot: {e}")))?;
        first.push(Bytes::from(format!(
            "id: {id}\nevent: snapshot\ndata: {json}\n\n"
        )));
    }
    let live = futures::stream::unfold(sub, |mut sub| async move {
        sub.rx.recv().await.map(|f| (f, sub))
    })
    .filter(move |f: &Frame| {
        let keep = f.id.is_none_or(|id| id > floor);
        std::future::ready(keep)
    })
    .map(|f| f.bytes);
    let body = futures::stream::iter(first)
        .chain(live)
        .map(Ok::<Bytes, std::convert::Infallible>);
    let mut resp = Body::from_stream(body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}
