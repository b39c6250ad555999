//! Reading runs: the caller's own API runs (list, status, download) and
//! the ledger's recorded runs (list, download), each read checked against
//! role, client and the `pii` permission; files streamed from the output
//! store as attachments.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use notiflow_reports::{Format, JobKind, Manifest};
use notiflow_schema::time::format_rfc3339;

use crate::auth::{Caller, Principal, Role};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiPath, ApiQuery};
use crate::runs::store::{may_read, may_see};
use crate::runs::{
    DownloadFormat, DownloadParams, ReportKind, ReportRun, RunsParams, ScheduledRun,
};
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

/// What a recorded run holds, as far as reading it goes: its kind, client
/// (None: all clients) and masking.
struct Scope {
    kind: ReportKind,
    client: Option<String>,
    pii: bool,
}

impl Scope {
    fn readable_by(&self, who: &Principal) -> bool {
        may_read(who, self.kind, self.client.as_deref(), self.pii)
    }
}

/// The [`Scope`] of a recorded run (scheduled, CLI or API): its manifest
/// says what it holds; a run without one (running, failed, waiting) is its
/// scheduled job's, as configured; `None` when nothing tells (an on-demand
/// run that wrote no manifest): only a key that may read anything reads it.
async fn recorded_scope(app: &App, job: &str, outs: &[String]) -> Result<Option<Scope>, ApiError> {
    let reports = app.runs.reports().await?;
    let Some(path) = outs.iter().find(|o| kind_of(o) == "manifest") else {
        return Ok(reports
            .config()
            .jobs
            .iter()
            .find(|j| j.name == job)
            .map(|j| Scope {
                kind: match j.kind {
                    JobKind::Billing => ReportKind::Billing,
                    JobKind::Detail => ReportKind::Detail,
                },
                client: j.client.clone(),
                pii: j.pii,
            }));
    };
    let body = reports.output().get(path).await?;
    let m: Manifest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::Internal(format!("manifest {path}: {e}")))?;
    Ok(Some(Scope {
        // `billing` and `billing-correction`.
        kind: if m.kind.starts_with("billing") {
            ReportKind::Billing
        } else {
            ReportKind::Detail
        },
        client: m
            .params
            .get("client")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        pii: m
            .params
            .get("pii")
            .and_then(|p| p.as_bool())
            .unwrap_or(false),
    }))
}

/// Whether `who` may read a recorded run of `scope` (`None`: unknown, so
/// only a key that may read anything).
fn may_read_recorded(who: &Principal, scope: Option<&Scope>) -> bool {
    match scope {
        Some(s) => s.readable_by(who),
        None => who.role == Role::Admin && who.pii,
    }
}

/// The read check of a recorded run's download: the caller must be
/// allowed to read what it holds, as for the API's own runs.
async fn check_recorded(
    app: &App,
    who: &Principal,
    job: &str,
    outs: &[String],
) -> Result<(), ApiError> {
    if may_read_recorded(who, recorded_scope(app, job, outs).await?.as_ref()) {
        Ok(())
    } else {
        Err(ApiError::Forbidden("this run's files are not readable with this key (another client, all clients, or unmasked recipients without the pii permission)".into()))
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

/// The recorded runs (scheduled and on-demand) the key may read, newest
/// first (finance and admin): a run another key could not download is not
/// listed (its paths name clients, its existence is not the caller's), and
/// only an admin sees a failed run's error text (it may name servers and
/// paths; the reports log has it with the run's job and slot).
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
    // Each run's scope, a manifest read each: a few at a time.
    let asks: Vec<(Arc<App>, String, Vec<String>)> = runs
        .iter()
        .map(|r| (Arc::clone(&app), r.job.clone(), outputs(r)))
        .collect();
    let scopes: Vec<Result<Option<Scope>, ApiError>> = futures::stream::iter(asks)
        .map(|(app, job, outs)| async move { recorded_scope(&app, &job, &outs).await })
        .buffered(8)
        .collect()
        .await;
    let admin = who.role == Role::Admin;
    Ok(axum::Json(
        runs.into_iter()
            .zip(scopes)
            .filter_map(|(r, scope)| match scope {
                Ok(s) if may_read_recorded(&who, s.as_ref()) => Some(r),
                Ok(_) => None,
                Err(e) => {
                    // An unreadable manifest hides its run, it does not
                    // fail the list.
                    tracing::warn!(job = %r.job, slot = r.scheduled_for, error = %e,
                        "run left out of the list: its manifest cannot be read");
                    None
                }
            })
            .map(|r| {
                let outs = outputs(&r);
                let error = match r.error {
                    Some(_) if !admin => {
                        Some("failed: the reports log has the details (job and slot)".into())
                    }
                    other => other,
                };
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
                    error,
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
    check_recorded(&app, &who, &job, &outs).await?;
    let path = outs
        .iter()
        .find(|o| kind_of(o) == want)
        .ok_or_else(|| ApiError::bad(format!("this run did not write {want}")))?;
    stream_file(&app, path).await
}
