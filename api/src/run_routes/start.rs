//! `POST /v1/reports`: the request checked and turned into a detail or
//! billing job (every rule a 400 or 403 before anything runs), the run
//! remembered under its key's quota, then executed in the background,
//! one at a time, within `report_timeout_secs`.

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use notiflow_reports::detail::{DetailQuery, check_client, parse_values};
use notiflow_reports::{BillingRequest, DetailRequest, EngineKind, Format, Reports, ReportsConfig};
use notiflow_schema::time::format_rfc3339;
use notiflow_schema::{Category, Country, Micros, Status};

use crate::auth::{Caller, Principal, Role};
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::runs::store::{new_id, now};
use crate::runs::{ReportKind, ReportRun, RunFile, RunStatus, StartReport};
use crate::state::App;

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

/// A checked start request: the job, the client it reads (None: all
/// clients, or billing) and whether recipients are unmasked.
struct Plan {
    job: Job,
    client: Option<String>,
    pii: bool,
}

/// The formats and engine asked for (default: both formats, the
/// configured engine).
fn outputs(req: &StartReport) -> Result<(Vec<Format>, Option<EngineKind>), ApiError> {
    let formats: Vec<Format> = match &req.formats {
        None => vec![Format::Csv, Format::Parquet],
        Some(v) if v.is_empty() => return Err(ApiError::bad("`formats` is empty")),
        Some(v) => {
            let mut v = v.clone();
            v.sort();
            v.dedup();
            v
        }
    };
    let engine = req.engine;
    Ok((formats, engine))
}

/// A detail request of `who`: held to its client (all clients: admin
/// only), unmasked only with the `pii` permission, within the range limits.
fn plan_detail(
    who: &Principal,
    req: &StartReport,
    cfg: &ReportsConfig,
    t_now: Micros,
) -> Result<Plan, ApiError> {
    let tz = cfg.tz()?;
    let (formats, engine) = outputs(req)?;
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
    if req.date.is_some() || req.correction {
        return Err(ApiError::bad(
            "`date` and `correction` are for billing; a detail report takes `from` and `to`",
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
    Ok(Plan {
        job: Job::Detail(DetailRequest {
            query,
            engine,
            formats,
            snapshot_id: None,
        }),
        client,
        pii: req.pii,
    })
}

/// A billing request: finance and admin, a complete billing day.
fn plan_billing(
    who: &Principal,
    req: &StartReport,
    cfg: &ReportsConfig,
    t_now: Micros,
) -> Result<Plan, ApiError> {
    let tz = cfg.tz()?;
    who.require(&[Role::Finance, Role::Admin], "the billing report")?;
    let (formats, engine) = outputs(req)?;
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
    notiflow_reports::billing::Window::of(tz, day, cfg.lookback_days)?.check_complete(t_now)?;
    Ok(Plan {
        job: Job::Billing(BillingRequest {
            day,
            engine,
            formats,
            snapshot_id: None,
            correction: req.correction,
        }),
        client: None,
        pii: false,
    })
}

/// Starts a report run.
#[utoipa::path(post, path = "/v1/reports", tag = "reports",
    request_body = StartReport,
    responses(
        (status = 202, description = "Started (or queued); poll `/v1/reports/{id}`", body = ReportRun),
        (status = 400, description = "Bad parameters", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Another client, billing without finance/admin, pii without the permission", body = ErrorBody),
        (status = 429, description = "This key's runs queued or running are at its quota (`Retry-After`)", body = ErrorBody),
        (status = 503, description = "The lake or ledger is unavailable", body = ErrorBody)
    ),
    security(("api_key" = []), ("api_key_header" = [])))]
pub async fn start(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    Caller(who): Caller,
    ApiJson(req): ApiJson<StartReport>,
) -> Result<Response, ApiError> {
    let runs = &app.runs;
    let t_now = now();
    let Plan { job, client, pii } = match req.kind {
        ReportKind::Detail => plan_detail(&who, &req, &runs.reports_cfg, t_now)?,
        ReportKind::Billing => plan_billing(&who, &req, &runs.reports_cfg, t_now)?,
    };
    // Fail now, not in the background, if the lake cannot be opened.
    let reports = runs.reports().await?;
    runs.ledger().await?;
    let view = ReportRun::queued(
        new_id(),
        req.kind,
        client,
        who.name.clone(),
        format_rfc3339(t_now),
        pii,
    );
    runs.insert(view.clone(), &who.key_id)?;
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
    let limit = runs.quotas.timeout;
    let out = match runs.ledger().await {
        Err(e) => {
            tracing::warn!(run = %id, error = %e, "report run failed: no ledger");
            Err(format!(
                "the run failed; the server log has the details under run id {id}"
            ))
        }
        Ok(ledger) => {
            let work = async {
                let run = async {
                    match &job {
                        Job::Detail(r) => reports.detail(r, now(), None).await,
                        Job::Billing(r) => reports.billing(r, now()).await,
                    }
                };
                match tokio::time::timeout(limit, run).await {
                    Ok(done) => done,
                    Err(_) => Err(notiflow_reports::ReportError::Other(format!(
                        "the run took longer than api.report_timeout_secs ({} s) and was stopped",
                        limit.as_secs()
                    ))),
                }
            };
            let out = ledger
                .record("on-demand", now(), &owner, work)
                .await
                .map_err(|e| {
                    tracing::warn!(run = %id, error = %e, "report run failed");
                    public_failure(&e, &id)
                });
            // A billing run settles the day's failed scheduled slots; the
            // run itself stands whatever that finds.
            if let Ok(m) = &out
                && let Err(e) =
                    notiflow_reports::schedule::settle_failed_slots(&reports, ledger, m, &owner)
                        .await
            {
                tracing::warn!(run = %id, error = %e, "settling failed scheduled slots failed");
            }
            out
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
                e.view.engine = m.engine.parse().ok();
                e.view.files = m
                    .files
                    .iter()
                    .map(|f| RunFile {
                        format: f.format,
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

/// What a failed run tells its caller: the reason when the caller can act
/// on it (its input, the rate card, data not complete yet, the timeout),
/// otherwise only where the detail is (the log, under the run id): the
/// text of a lake, engine or store error names paths, buckets and hosts.
fn public_failure(e: &notiflow_reports::ReportError, id: &str) -> String {
    use notiflow_reports::ReportError as E;
    match e {
        E::Input(_) | E::RateCard(_) | E::WaitingForData(_) => e.to_string(),
        E::Other(m) if m.contains("api.report_timeout_secs") => m.clone(),
        _ => format!("the run failed; the server log has the details under run id {id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_tells_the_caller_only_what_it_can_act_on() {
        use notiflow_reports::ReportError as E;
        let secret = "s3://prod-bucket/warehouse/notiflow/events at 10.0.0.7";
        let io = E::Io(std::io::Error::other(secret));
        let shown = public_failure(&io, "r1");
        assert!(
            !shown.contains("prod-bucket") && shown.contains("r1"),
            "{shown}"
        );
        let input = E::Input("the range spans more than 31 days".into());
        assert_eq!(public_failure(&input, "r1"), input.to_string());
        let waiting = E::WaitingForData("partition 3 is behind".into());
        assert!(public_failure(&waiting, "r1").contains("partition 3"));
    }
}
