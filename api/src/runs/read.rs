//! Reading runs: the caller's own API runs (list, status, download) and
//! the ledger's recorded runs (list, download), each read checked against
//! role, client and the `pii` permission; files streamed from the output
//! store as attachments.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use notiflow_reports::{Format, Manifest};
use notiflow_schema::time::format_rfc3339;

use super::model::{
    DownloadFormat, DownloadParams, ReportKind, ReportRun, RunsParams, ScheduledRun,
};
use super::store::{may_read, may_see};
use crate::auth::{Caller, Principal, Role};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiPath, ApiQuery};
use crate::state::App;

/// The runs started through the API that the caller may see, newest first.
#[utoipa::path(get, path = "/v1/reports", tag = "reports",
    responses((status = 200, body = Vec<ReportRun>), (status = 401, body = ErrorBody)),
    security(("api_key" = []), ("api_key_header" = [])))]
pub async fn list(State(app): State<Arc<App>>, Caller(who): Caller) -> axum::Json<Vec<ReportRun>> {
    let g = app.runs.lock();
    let (map, order) = &*g;
    let out = order
        .iter()
        .rev()
        .filter_map(|id| map.get(id))
        .filter(|e| may_see(&who, &e.view))
        .map(|e| e.view.clone())
        .collect();
    axum::Json(out)
}

/// A run's state.
#[utoipa::path(get, path = "/v1/reports/{id}", tag = "reports",
    params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 200, body = ReportRun),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such run visible to this key", body = ErrorBody)
    ),
    security(("api_key" = []), ("api_key_header" = [])))]
pub async fn status(
    State(app): State<Arc<App>>,
    Caller(who): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::Json<ReportRun>, ApiError> {
    Ok(axum::Json(app.runs.visible(&who, &id)?.0))
}

/// Downloads a finished run's file.
#[utoipa::path(get, path = "/v1/reports/{id}/download", tag = "reports",
    params(("id" = String, Path, description = "Run id"), DownloadParams),
    responses(
        (status = 200, description = "The file, streamed, as an attachment", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "Bad or unproduced format", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not finished (or failed)", body = ErrorBody)
    ),
    security(("api_key" = []), ("api_key_header" = [])))]
pub async fn download(
    State(app): State<Arc<App>>,
    Caller(who): Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<DownloadParams>,
) -> Result<Response, ApiError> {
    let (view, manifest) = app.runs.visible(&who, &id)?;
    let Some(m) = manifest else {
        return Err(ApiError::Conflict(
            format!(
                "report run '{id}' is {:?}; download when it has succeeded",
                view.status
            )
            .to_lowercase(),
        ));
    };
    let want = match p.format.unwrap_or(DownloadFormat::Csv) {
        DownloadFormat::Csv => Format::Csv,
        DownloadFormat::Parquet => Format::Parquet,
        DownloadFormat::Manifest => {
            return Err(ApiError::bad(
                "an API run's manifest is its status: GET /v1/reports/{id}",
            ));
        }
    };
    let file = m
        .files
        .iter()
        .find(|f| f.format == want)
        .ok_or_else(|| ApiError::bad(format!("this run did not write {}", want.ext())))?;
    stream_file(&app, &file.path).await
}

/// The read check of a recorded run (scheduled, CLI or API): its
/// manifest says what it holds (kind, client, masking), and the caller
/// must be allowed to read that, as for the API's own runs.
async fn check_recorded(app: &App, who: &Principal, outs: &[String]) -> Result<(), ApiError> {
    let refused = || {
        ApiError::Forbidden("this run's files are not readable with this key (another client, all clients, or unmasked recipients without the pii permission)".into())
    };
    let Some(path) = outs.iter().find(|o| kind_of(o) == "manifest") else {
        // No manifest to tell what it holds: only a key that may read anything.
        return if who.role == Role::Admin && who.pii {
            Ok(())
        } else {
            Err(refused())
        };
    };
    let reports = app.runs.reports().await?;
    let body = reports.output().get(path).await?;
    let m: Manifest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::Internal(format!("manifest {path}: {e}")))?;
    let kind = if m.kind == "billing" {
        ReportKind::Billing
    } else {
        ReportKind::Detail
    };
    let client = m.params.get("client").and_then(|c| c.as_str());
    let pii = m
        .params
        .get("pii")
        .and_then(|p| p.as_bool())
        .unwrap_or(false);
    if may_read(who, kind, client, pii) {
        Ok(())
    } else {
        Err(refused())
    }
}

/// Streams an output file as an attachment.
async fn stream_file(app: &App, rel: &str) -> Result<Response, ApiError> {
    let reports = app.runs.reports().await?;
    let (size, body) = reports.output().open_read(rel).await?;
    let name = rel.rsplit('/').next().unwrap_or(rel);
    let ctype = if name.ends_with(".csv") {
        "text/csv; charset=utf-8"
    } else if name.ends_with(".json") {
        "application/json"
    } else {
        "application/vnd.apache.parquet"
    };
    let mut resp = Body::from_stream(body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

fn outputs(run: &notiflow_reports::ledger::Run) -> Vec<String> {
    run.outputs
        .as_deref()
        .and_then(|o| serde_json::from_str(o).ok())
        .unwrap_or_default()
}

fn kind_of(path: &str) -> &'static str {
    if path.ends_with(".manifest.json") {
        "manifest"
    } else if path.ends_with(".parquet") {
        "parquet"
    } else {
        "csv"
    }
}

/// The recorded runs (scheduled and on-demand), newest first (finance and admin).
#[utoipa::path(get, path = "/v1/runs", tag = "reports",
    params(RunsParams),
    responses(
        (status = 200, body = Vec<ScheduledRun>),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody)
    ),
    security(("api_key" = []), ("api_key_header" = [])))]
pub async fn scheduled(
    State(app): State<Arc<App>>,
    Caller(who): Caller,
    ApiQuery(p): ApiQuery<RunsParams>,
) -> Result<axum::Json<Vec<ScheduledRun>>, ApiError> {
    who.require(&[Role::Finance, Role::Admin], "the run ledger")?;
    let limit = p.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad("`limit` must be 1–500"));
    }
    let ledger = app.runs.ledger().await?;
    let runs = ledger
        .list(p.job.as_deref(), limit)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(axum::Json(
        runs.into_iter()
            .map(|r| {
                let outs = outputs(&r);
                ScheduledRun {
                    downloads: outs
                        .iter()
                        .map(|o| {
                            format!(
                                "/v1/runs/{}/{}/download?format={}",
                                r.job,
                                r.scheduled_for,
                                kind_of(o)
                            )
                        })
                        .collect(),
                    outputs: outs,
                    scheduled_for: format_rfc3339(r.scheduled_for),
                    slot: r.scheduled_for,
                    status: r.status,
                    attempts: r.attempts,
                    started_at: format_rfc3339(r.started_at),
                    finished_at: r.finished_at.map(format_rfc3339),
                    error: r.error,
                    job: r.job,
                }
            })
            .collect(),
    ))
}

/// Downloads an output of a recorded run (finance and admin).
#[utoipa::path(get, path = "/v1/runs/{job}/{slot}/download", tag = "reports",
    params(
        ("job" = String, Path, description = "Job name"),
        ("slot" = i64, Path, description = "The run's slot, UTC micros (`slot` in the list)"),
        DownloadParams
    ),
    responses(
        (status = 200, description = "The file, streamed, as an attachment", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The run has not succeeded", body = ErrorBody)
    ),
    security(("api_key" = []), ("api_key_header" = [])))]
pub async fn scheduled_download(
    State(app): State<Arc<App>>,
    Caller(who): Caller,
    ApiPath((job, slot)): ApiPath<(String, String)>,
    ApiQuery(p): ApiQuery<DownloadParams>,
) -> Result<Response, ApiError> {
    who.require(&[Role::Finance, Role::Admin], "run downloads")?;
    let slot: i64 = slot
        .parse()
        .map_err(|_| ApiError::bad(format!("slot '{slot}' is not an integer (UTC micros)")))?;
    let want = p.format.unwrap_or(DownloadFormat::Csv).as_str();
    let ledger = app.runs.ledger().await?;
    let run = ledger
        .get(&job, slot)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .ok_or_else(|| ApiError::NotFound(format!("no run of '{job}' at slot {slot}")))?;
    let outs = outputs(&run);
    if outs.is_empty() {
        return Err(ApiError::Conflict(
            "this run has no outputs (it has not succeeded)".into(),
        ));
    }
    check_recorded(&app, &who, &outs).await?;
    let path = outs
        .iter()
        .find(|o| kind_of(o) == want)
        .ok_or_else(|| ApiError::bad(format!("this run did not write {want}")))?;
    stream_file(&app, path).await
}
