//! Reports through the API (SPEC §5, §6): start a detail or billing run,
//! poll it, download its CSV or Parquet streamed from object storage with
//! `Content-Disposition`; list the scheduler's runs and download theirs.
//!
//! The work itself is the reports crate's. Runs started here are recorded
//! in the run ledger like the CLI's, run one at a time (each engine takes
//! its configured memory), and are remembered in memory for polling: a
//! viewer only ever sees runs of its own client.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use notiflow_reports::detail::{DetailQuery, check_client, parse_values};
use notiflow_reports::ledger::Ledger;
use notiflow_reports::{BillingRequest, DetailRequest, EngineKind, Format, Manifest, Reports};
use notiflow_schema::time::format_rfc3339;
use notiflow_schema::{Category, Country, Micros, Status};
use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, Semaphore};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Caller, Principal, Role};
use crate::error::{ApiError, ErrorBody};
use crate::metrics::ApiMetrics;
use crate::server::{ApiJson, ApiQuery, App};

/// Which report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReportKind {
    /// Event rows of one client (or all, for admins) over a time range.
    Detail,
    /// The daily billing report (finance and admin).
    Billing,
}

/// A report to run.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartReport {
    /// `detail` or `billing`.
    pub kind: ReportKind,
    /// Detail: the client (a viewer's own by default; admins may omit it for all clients).
    pub client: Option<String>,
    /// Detail: start, RFC 3339 or a billing-zone date `YYYY-MM-DD`.
    pub from: Option<String>,
    /// Detail: end (exclusive), RFC 3339 or `YYYY-MM-DD`.
    pub to: Option<String>,
    /// Detail: only these statuses.
    #[serde(default)]
    pub statuses: Vec<String>,
    /// Detail: only these categories.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Detail: only these countries (ISO 3166-1 alpha-2).
    #[serde(default)]
    pub countries: Vec<String>,
    /// Detail: recipients unmasked (needs a key with the `pii` permission).
    #[serde(default)]
    pub pii: bool,
    /// Billing: the billing day `YYYY-MM-DD` in the billing time zone.
    pub date: Option<String>,
    /// `csv`, `parquet` (default both).
    pub formats: Option<Vec<String>>,
    /// `duckdb` or `datafusion` (default: configured).
    pub engine: Option<String>,
}

/// A run's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Waiting for the previous run to finish.
    Queued,
    /// Running.
    Running,
    /// Done; files can be downloaded.
    Succeeded,
    /// Failed; `error` says why.
    Failed,
}

/// One output file.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunFile {
    /// `csv` or `parquet`.
    pub format: String,
    /// Rows.
    pub rows: u64,
    /// Size.
    pub bytes: u64,
    /// sha256 of the bytes.
    pub sha256: String,
    /// Where to download it (relative URL).
    pub download: String,
}

/// A report run started through the API.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReportRun {
    /// Id to poll and download with.
    pub id: String,
    /// Which report.
    pub kind: ReportKind,
    /// The client (null: all clients, or billing).
    pub client: Option<String>,
    /// State.
    pub status: RunStatus,
    /// Who started it.
    pub requested_by: String,
    /// When, RFC 3339.
    pub created_at: String,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Data rows.
    pub rows: Option<u64>,
    /// Lake snapshot read (reproducible from it).
    pub lake_snapshot_id: Option<i64>,
    /// Engine that ran it.
    pub engine: Option<String>,
    /// Output files, when it succeeded.
    pub files: Vec<RunFile>,
    /// Why it failed.
    pub error: Option<String>,
    /// Recipients unmasked: only keys with the `pii` permission see, list
    /// or download this run.
    pub pii: bool,
}

struct Entry {
    view: ReportRun,
    manifest: Option<Manifest>,
}

/// A scheduled (or any recorded) run, from the ledger.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ScheduledRun {
    /// Job name (`on-demand` for CLI and API runs).
    pub job: String,
    /// The slot it ran for, RFC 3339.
    pub scheduled_for: String,
    /// The slot as UTC micros (for the download path).
    pub slot: i64,
    /// `running`, `retrying`, `waiting_for_data` (billing: the lake is not
    /// complete up to the day's end yet), `succeeded` or `failed`.
    pub status: String,
    /// Attempts so far.
    pub attempts: i64,
    /// Last attempt's start.
    pub started_at: String,
    /// End of the last attempt.
    pub finished_at: Option<String>,
    /// Output paths.
    pub outputs: Vec<String>,
    /// Download links per output (`csv`, `parquet`, `manifest`).
    pub downloads: Vec<String>,
    /// Last error.
    pub error: Option<String>,
}

/// Query of the scheduled runs.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RunsParams {
    /// Only this job.
    pub job: Option<String>,
    /// At most this many, newest first (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// Query of a download.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DownloadParams {
    /// `csv` (default), `parquet`, or `manifest` (scheduled runs).
    pub format: Option<String>,
}

/// Report runs, the ledger and the output store.
pub struct ReportRuns {
    reports_cfg: notiflow_reports::ReportsConfig,
    lake_cfg: notiflow_lake::LakeConfig,
    reports: OnceCell<Arc<Reports>>,
    ledger: OnceCell<Ledger>,
    runs: Mutex<(HashMap<String, Entry>, VecDeque<String>)>,
    kept: usize,
    one_at_a_time: Arc<Semaphore>,
    metrics: ApiMetrics,
    report_metrics: notiflow_reports::Metrics,
}

fn now() -> Micros {
    chrono::Utc::now().timestamp_micros()
}

fn new_id() -> String {
    use sha2::Digest;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = format!("{}:{}:{seq}", std::process::id(), now());
    let d = sha2::Sha256::digest(seed.as_bytes());
    format!("r{}", &hex::encode(d)[..20])
}

impl ReportRuns {
    /// Runs over `reports` and `lake`, remembering the last `kept` runs.
    pub fn new(
        reports: notiflow_reports::ReportsConfig,
        lake: notiflow_lake::LakeConfig,
        kept: usize,
        metrics: ApiMetrics,
        report_metrics: notiflow_reports::Metrics,
    ) -> ReportRuns {
        ReportRuns {
            reports_cfg: reports,
            lake_cfg: lake,
            reports: OnceCell::new(),
            ledger: OnceCell::new(),
            runs: Mutex::new((HashMap::new(), VecDeque::new())),
            kept,
            one_at_a_time: Arc::new(Semaphore::new(1)),
            metrics,
            report_metrics,
        }
    }

    async fn reports(&self) -> Result<Arc<Reports>, ApiError> {
        self.reports
            .get_or_try_init(|| async {
                Reports::open(&self.reports_cfg, &self.lake_cfg)
                    .await
                    .map(|r| Arc::new(r.with_metrics(self.report_metrics.clone())))
            })
            .await
            .cloned()
            .map_err(|e| ApiError::Unavailable(format!("reports: {e}")))
    }

    async fn ledger(&self) -> Result<&Ledger, ApiError> {
        self.ledger
            .get_or_try_init(|| Ledger::open(&self.lake_cfg.catalog_uri))
            .await
            .map_err(|e| ApiError::Unavailable(format!("run ledger: {e}")))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<String, Entry>, VecDeque<String>)> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, view: ReportRun) {
        let mut g = self.lock();
        let (map, order) = &mut *g;
        order.push_back(view.id.clone());
        map.insert(
            view.id.clone(),
            Entry {
                view,
                manifest: None,
            },
        );
        while order.len() > self.kept {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.lock().0.get_mut(id) {
            f(e);
        }
    }

    fn visible(
        &self,
        who: &Principal,
        id: &str,
    ) -> Result<(ReportRun, Option<Manifest>), ApiError> {
        let g = self.lock();
        let e =
            g.0.get(id)
                .filter(|e| may_see(who, &e.view))
                .ok_or_else(|| ApiError::NotFound(format!("no report run '{id}'")))?;
        Ok((e.view.clone(), e.manifest.clone()))
    }
}

/// Whether `who` may read a run (status, list, download): what it could
/// have started itself. Billing is finance's and admin's; a detail of one
/// client is its viewer's, finance's and admin's, of all clients admin's
/// only; unmasked recipients need the `pii` permission, whoever started it.
fn may_see(who: &Principal, run: &ReportRun) -> bool {
    may_read(who, run.kind, run.client.as_deref(), run.pii)
}

/// [`may_see`] on a run's kind, client (None: all clients) and masking.
fn may_read(who: &Principal, kind: ReportKind, client: Option<&str>, pii: bool) -> bool {
    if pii && !who.pii {
        return false;
    }
    match (who.role, kind) {
        (Role::Admin, _) => true,
        (Role::Finance, ReportKind::Billing) => true,
        (Role::Finance, ReportKind::Detail) => client.is_some(),
        (Role::Viewer, ReportKind::Detail) => client.is_some() && client == who.client.as_deref(),
        (Role::Viewer, ReportKind::Billing) => false,
    }
}

fn instant(tz: chrono_tz::Tz, name: &str, v: Option<&str>) -> Result<Micros, ApiError> {
    let text =
        v.ok_or_else(|| ApiError::bad(format!("`{name}` is required for a detail report")))?;
    notiflow_reports::billing::instant(tz, text)
        .map_err(|e| ApiError::bad(format!("`{name}`: {e}")))
}

enum Job {
    Detail(DetailRequest),
    Billing(BillingRequest),
}

/// Starts a report run.
#[utoipa::path(post, path = "/v1/reports", tag = "reports",
    request_body = StartReport,
    responses(
        (status = 202, description = "Started (or queued); poll `/v1/reports/{id}`", body = ReportRun),
        (status = 400, description = "Bad parameters", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Another client, billing without finance/admin, pii without the permission", body = ErrorBody),
        (status = 503, description = "The lake or ledger is unavailable", body = ErrorBody)
    ),
    security(("api_key" = [])))]
pub async fn start(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    Caller(who): Caller,
    ApiJson(req): ApiJson<StartReport>,
) -> Result<Response, ApiError> {
    let runs = &app.runs;
    let cfg = &runs.reports_cfg;
    let tz = cfg.tz()?;
    let t_now = now();
    let formats: Vec<Format> = match &req.formats {
        None => vec![Format::Csv, Format::Parquet],
        Some(v) if v.is_empty() => return Err(ApiError::bad("`formats` is empty")),
        Some(v) => v
            .iter()
            .map(|f| {
                f.parse::<Format>()
                    .map_err(|e| ApiError::bad(format!("formats: {e}")))
            })
            .collect::<Result<_, _>>()?,
    };
    let engine = req
        .engine
        .as_deref()
        .map(|e| {
            e.parse::<EngineKind>()
                .map_err(|e| ApiError::bad(format!("engine: {e}")))
        })
        .transpose()?;
    let pii = req.kind == ReportKind::Detail && req.pii;
    let (job, client) = match req.kind {
        ReportKind::Detail => {
            let client = match (who.role, req.client.as_deref()) {
                (Role::Admin, None) => None,
                (Role::Finance, None) => {
                    return Err(ApiError::bad("name the `client` (all clients: admin only)"));
                }
                (_, asked) => Some(who.client(asked)?),
            };
            if let Some(c) = &client {
                check_client(c)?;
            }
            if req.pii && !who.pii {
                return Err(ApiError::Forbidden(
                    "unmasked recipients need a key with the pii permission".into(),
                ));
            }
            if req.date.is_some() {
                return Err(ApiError::bad(
                    "`date` is for billing; a detail report takes `from` and `to`",
                ));
            }
            let query = DetailQuery {
                client: client.clone(),
                from: instant(tz, "from", req.from.as_deref())?,
                to: instant(tz, "to", req.to.as_deref())?,
                statuses: parse_values("status", &req.statuses, Status::parse)?,
                categories: parse_values("category", &req.categories, Category::parse)?,
                countries: parse_values("country", &req.countries, Country::parse)?,
                pii: req.pii,
            };
            query.validate(t_now, cfg.max_detail_days)?;
            let r = DetailRequest {
                query,
                engine,
                formats,
                snapshot_id: None,
            };
            (Job::Detail(r), client)
        }
        ReportKind::Billing => {
            who.require(&[Role::Finance, Role::Admin], "the billing report")?;
            if req.client.is_some() || req.from.is_some() || req.to.is_some() {
                return Err(ApiError::bad(
                    "a billing report takes only `date` (and formats, engine)",
                ));
            }
            let text = req
                .date
                .as_deref()
                .ok_or_else(|| ApiError::bad("`date` (YYYY-MM-DD) is required for billing"))?;
            let day: chrono::NaiveDate = text
                .parse()
                .map_err(|_| ApiError::bad(format!("`date`: '{text}' is not YYYY-MM-DD")))?;
            notiflow_reports::billing::Window::of(tz, day, cfg.lookback_days)?
                .check_complete(t_now)?;
            (
                Job::Billing(BillingRequest {
                    day,
                    engine,
                    formats,
                    snapshot_id: None,
                }),
                None,
            )
        }
    };
    // Fail now, not in the background, if the lake cannot be opened.
    let reports = runs.reports().await?;
    runs.ledger().await?;
    let view = ReportRun {
        id: new_id(),
        kind: req.kind,
        client,
        status: RunStatus::Queued,
        requested_by: who.name.clone(),
        created_at: format_rfc3339(t_now),
        finished_at: None,
        rows: None,
        lake_snapshot_id: None,
        engine: None,
        files: vec![],
        error: None,
        pii,
    };
    runs.insert(view.clone());
    let id = view.id.clone();
    let app2 = app.clone();
    tokio::spawn(async move { execute(app2, reports, id, job).await });
    let mut resp = (StatusCode::ACCEPTED, axum::Json(view.clone())).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/reports/{}", view.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

async fn execute(app: Arc<App>, reports: Arc<Reports>, id: String, job: Job) {
    let runs = &app.runs;
    let Ok(_permit) = runs.one_at_a_time.clone().acquire_owned().await else {
        return;
    };
    runs.update(&id, |e| e.view.status = RunStatus::Running);
    let kind = match &job {
        Job::Detail(_) => "detail",
        Job::Billing(_) => "billing",
    };
    let owner = format!("api-{}", std::process::id());
    let out = match runs.ledger().await {
        Err(e) => Err(e.to_string()),
        Ok(ledger) => {
            let work = async {
                match &job {
                    Job::Detail(r) => reports.detail(r, now(), None).await,
                    Job::Billing(r) => reports.billing(r, now()).await,
                }
            };
            ledger
                .record("on-demand", now(), &owner, work)
                .await
                .map_err(|e| e.to_string())
        }
    };
    let outcome = if out.is_ok() { "succeeded" } else { "failed" };
    runs.metrics
        .report_runs
        .with_label_values(&[kind, outcome])
        .inc();
    runs.update(&id, |e| {
        e.view.finished_at = Some(format_rfc3339(now()));
        match out {
            Ok(m) => {
                e.view.status = RunStatus::Succeeded;
                e.view.rows = Some(m.rows);
                e.view.lake_snapshot_id = m.lake_snapshot_id;
                e.view.engine = Some(m.engine.clone());
                e.view.files = m
                    .files
                    .iter()
                    .map(|f| RunFile {
                        format: f.format.ext().to_string(),
                        rows: f.rows,
                        bytes: f.bytes,
                        sha256: f.sha256.clone(),
                        download: format!("/v1/reports/{id}/download?format={}", f.format.ext()),
                    })
                    .collect();
                e.manifest = Some(m);
            }
            Err(err) => {
                e.view.status = RunStatus::Failed;
                e.view.error = Some(err);
            }
        }
    });
}

/// The runs started through the API that the caller may see, newest first.
#[utoipa::path(get, path = "/v1/reports", tag = "reports",
    responses((status = 200, body = Vec<ReportRun>), (status = 401, body = ErrorBody)),
    security(("api_key" = [])))]
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
    security(("api_key" = [])))]
pub async fn status(
    State(app): State<Arc<App>>,
    Caller(who): Caller,
    Path(id): Path<String>,
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
    security(("api_key" = [])))]
pub async fn download(
    State(app): State<Arc<App>>,
    Caller(who): Caller,
    Path(id): Path<String>,
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
    let want: Format = p
        .format
        .as_deref()
        .unwrap_or("csv")
        .parse()
        .map_err(|e| ApiError::bad(format!("format: {e}")))?;
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
    security(("api_key" = [])))]
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
                    status: r.status.as_str().to_string(),
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
    security(("api_key" = [])))]
pub async fn scheduled_download(
    State(app): State<Arc<App>>,
    Caller(who): Caller,
    Path((job, slot)): Path<(String, String)>,
    ApiQuery(p): ApiQuery<DownloadParams>,
) -> Result<Response, ApiError> {
    who.require(&[Role::Finance, Role::Admin], "run downloads")?;
    let slot: i64 = slot
        .parse()
        .map_err(|_| ApiError::bad(format!("slot '{slot}' is not an integer (UTC micros)")))?;
    let want = p.format.as_deref().unwrap_or("csv");
    if !["csv", "parquet", "manifest"].contains(&want) {
        return Err(ApiError::bad("format must be csv, parquet or manifest"));
    }
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
