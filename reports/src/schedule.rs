//! The scheduler: cron expressions (with seconds, in the billing zone) per
//! job; on start and on every tick, each job's due slots within the
//! catch-up window that have not succeeded run in order, one run at a time;
//! a failed attempt is recorded and retried with exponential back-off; bad
//! input (a missing price, say) fails at once without retrying.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use cron::Schedule;
use notiflow_schema::Micros;
use notiflow_schema::time::DAY_MICROS;
use tokio::sync::watch;

use crate::billing::day_start;
use crate::config::{JobConfig, JobKind};
use crate::detail::DetailQuery;
use crate::error::ReportError;
use crate::ledger::{End, Ledger, Status};
use crate::output::Manifest;
use crate::report::{BillingRequest, DetailRequest, Reports};

/// Parses a cron expression (`sec min hour day month weekday [year]`).
pub fn parse_cron(expr: &str) -> Result<Schedule, ReportError> {
    Schedule::from_str(expr).map_err(|e| {
        ReportError::input(format!(
            "'{expr}' is not a cron expression with seconds (sec min hour day month weekday): {e}"
        ))
    })
}

fn now_micros() -> Micros {
    Utc::now().timestamp_micros()
}

fn at(tz: Tz, t: Micros) -> DateTime<Tz> {
    tz.timestamp_micros(t)
        .single()
        .unwrap_or_else(|| Utc::now().with_timezone(&tz))
}

/// Due slots of `schedule` in `(from, to]`, oldest first, at most `cap`
/// (the newest ones).
pub fn due(schedule: &Schedule, tz: Tz, from: Micros, to: Micros, cap: usize) -> Vec<Micros> {
    let mut v: Vec<Micros> = schedule
        .after(&at(tz, from))
        .map(|t| t.timestamp_micros())
        .take_while(|t| *t <= to)
        .collect();
    if v.len() > cap {
        v.drain(..v.len() - cap);
    }
    v
}

/// The billing day a run due at `slot` covers: the day before it.
pub fn day_for(tz: Tz, slot: Micros) -> chrono::NaiveDate {
    let local = at(tz, slot).date_naive();
    local.pred_opt().unwrap_or(local)
}

/// Runs `job`'s report for `slot`.
pub async fn run_job(
    reports: &Reports,
    job: &JobConfig,
    slot: Micros,
    now: Micros,
) -> Result<Manifest, ReportError> {
    let tz = reports.tz();
    let day = day_for(tz, slot);
    match job.kind {
        JobKind::Billing => {
            reports
                .billing(
                    &BillingRequest {
                        day,
                        engine: job.engine,
                        formats: job.formats.clone(),
                        snapshot_id: None,
                    },
                    now,
                )
                .await
        }
        JobKind::Detail => {
            let from = day_start(tz, day)?;
            let to = day
                .succ_opt()
                .map(|d| day_start(tz, d))
                .transpose()?
                .unwrap_or(from + DAY_MICROS);
            reports
                .detail(
                    &DetailRequest {
                        query: DetailQuery {
                            client: job.client.clone(),
                            from,
                            to,
                            pii: job.pii,
                            ..Default::default()
                        },
                        engine: job.engine,
                        formats: job.formats.clone(),
                        snapshot_id: None,
                    },
                    now,
                    None,
                )
                .await
        }
    }
}

/// What one slot's processing ended in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotOutcome {
    /// Ran and succeeded (after this many attempts).
    Succeeded(i64),
    /// Failed after its attempts; the error.
    Failed(String),
    /// Already done, or held by another process.
    Skipped,
}

/// The scheduler over `reports`' configured jobs.
pub struct Scheduler {
    reports: Arc<Reports>,
    ledger: Ledger,
    jobs: Vec<(JobConfig, Schedule)>,
    owner: String,
}

impl Scheduler {
    /// A scheduler; `owner` names this process in the ledger.
    pub fn new(
        reports: Arc<Reports>,
        ledger: Ledger,
        owner: String,
    ) -> Result<Scheduler, ReportError> {
        let mut jobs = Vec::new();
        for j in &reports.config().jobs {
            jobs.push((j.clone(), parse_cron(&j.cron)?));
        }
        Ok(Scheduler {
            reports,
            ledger,
            jobs,
            owner,
        })
    }

    /// Runs one slot of `job` with retries; records every attempt.
    pub async fn run_slot(
        &self,
        job: &JobConfig,
        slot: Micros,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<SlotOutcome, ReportError> {
        let s = &self.reports.config().scheduler;
        let lease = (s.lease_seconds as i64) * 1_000_000;
        let mut retry_failed = true;
        loop {
            let now = now_micros();
            let Some(attempt) = self
                .ledger
                .claim(&job.name, slot, &self.owner, now, lease, retry_failed)
                .await?
            else {
                return Ok(SlotOutcome::Skipped);
            };
            retry_failed = false;
            tracing::info!(job = %job.name, slot = %notiflow_schema::time::format_rfc3339(slot), attempt, "report run started");
            let renewer = {
                let ledger = self.ledger.clone();
                let (name, owner) = (job.name.clone(), self.owner.clone());
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_micros((lease / 3) as u64)).await;
                        if let Err(e) = ledger
                            .renew(&name, slot, &owner, now_micros() + lease)
                            .await
                        {
                            tracing::warn!(error = %e, "lease renewal failed");
                        }
                    }
                })
            };
            let result = run_job(&self.reports, job, slot, now_micros()).await;
            renewer.abort();
            let end = now_micros();
            match result {
                Ok(m) => {
                    let out = serde_json::to_string(&m.outputs()).unwrap_or_default();
                    let ending = End {
                        status: Status::Succeeded,
                        at: end,
                        outputs: Some(&out),
                        error: None,
                    };
                    self.ledger
                        .finish(&job.name, slot, &self.owner, ending)
                        .await?;
                    tracing::info!(job = %job.name, attempt, rows = m.rows, "report run succeeded");
                    if let Some(metrics) = self.reports.metrics() {
                        metrics
                            .job_last_success
                            .with_label_values(&[job.name.as_str()])
                            .set(end as f64 / 1e6);
                    }
                    return Ok(SlotOutcome::Succeeded(attempt));
                }
                Err(e) => {
                    let msg = e.to_string();
                    let last = e.is_input() || attempt >= i64::from(s.max_attempts);
                    let status = if last {
                        Status::Failed
                    } else {
                        Status::Retrying
                    };
                    let ending = End {
                        status,
                        at: end,
                        outputs: None,
                        error: Some(&msg),
                    };
                    self.ledger
                        .finish(&job.name, slot, &self.owner, ending)
                        .await?;
                    if last {
                        tracing::error!(job = %job.name, attempt, error = %msg, "report run failed");
                        if let Some(metrics) = self.reports.metrics() {
                            metrics
                                .job_failures
                                .with_label_values(&[job.name.as_str()])
                                .inc();
                        }
                        return Ok(SlotOutcome::Failed(msg));
                    }
                    let exp = u32::try_from(attempt - 1).unwrap_or(16).min(16);
                    let wait =
                        Duration::from_secs(s.backoff_seconds.saturating_mul(1 << exp).min(900));
                    tracing::warn!(job = %job.name, attempt, error = %msg, retry_in = ?wait, "report run failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => return Ok(SlotOutcome::Failed(msg)),
                    }
                }
            }
        }
    }

    /// Shows every job's failure count (0) and its last success from the
    /// ledger (runs by earlier processes count) before anything runs.
    async fn seed_metrics(&self) -> Result<(), ReportError> {
        let Some(m) = self.reports.metrics() else {
            return Ok(());
        };
        for (job, _) in &self.jobs {
            m.job_failures.with_label_values(&[job.name.as_str()]);
            let runs = self.ledger.list(Some(&job.name), 100).await?;
            if let Some(at) = runs
                .iter()
                .filter(|r| r.status == Status::Succeeded)
                .filter_map(|r| r.finished_at)
                .max()
            {
                m.job_last_success
                    .with_label_values(&[job.name.as_str()])
                    .set(at as f64 / 1e6);
            }
        }
        Ok(())
    }

    /// One pass: every job's due slots within the catch-up window, oldest
    /// first. How many slots it ran (succeeded or failed).
    pub async fn tick(
        &self,
        now: Micros,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<usize, ReportError> {
        let s = &self.reports.config().scheduler;
        let from = now - i64::from(s.catch_up_days) * DAY_MICROS;
        let tz = self.reports.tz();
        let mut ran = 0;
        for (job, schedule) in &self.jobs {
            for slot in due(schedule, tz, from, now, 1000) {
                if *stop.borrow() {
                    return Ok(ran);
                }
                if let Some(r) = self.ledger.get(&job.name, slot).await?
                    && r.status == Status::Succeeded
                {
                    continue;
                }
                if self.run_slot(job, slot, stop).await? != SlotOutcome::Skipped {
                    ran += 1;
                }
            }
        }
        Ok(ran)
    }

    /// Ticks until `stop` turns true, waking for the next due slot (at
    /// least once a minute).
    pub async fn run(&self, mut stop: watch::Receiver<bool>) -> Result<(), ReportError> {
        self.seed_metrics().await?;
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let now = now_micros();
            self.tick(now, &mut stop).await?;
            let tz = self.reports.tz();
            let next = self
                .jobs
                .iter()
                .filter_map(|(_, s)| s.after(&at(tz, now_micros())).next())
                .map(|t| t.timestamp_micros())
                .min()
                .unwrap_or(now + 60_000_000);
            let wait = (next - now_micros()).clamp(0, 60_000_000) as u64;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_micros(wait + 1000)) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_slots_after_downtime_are_listed_oldest_first() {
        let tz: Tz = "America/Sao_Paulo".parse().unwrap();
        let s = parse_cron("0 15 0 * * *").unwrap();
        let t = |x: &str| notiflow_schema::time::parse_rfc3339(x).unwrap();
        let slots = due(
            &s,
            tz,
            t("2026-11-20T12:00:00Z"),
            t("2026-11-23T12:00:00Z"),
            100,
        );
        let want: Vec<Micros> = [
            "2026-11-21T03:15:00Z",
            "2026-11-22T03:15:00Z",
            "2026-11-23T03:15:00Z",
        ]
        .iter()
        .map(|x| t(x))
        .collect();
        assert_eq!(slots, want);
        assert_eq!(day_for(tz, want[0]).to_string(), "2026-11-20");
        assert_eq!(
            due(
                &s,
                tz,
                t("2026-11-20T12:00:00Z"),
                t("2026-11-23T12:00:00Z"),
                2
            ),
            want[1..]
        );
        assert!(parse_cron("every day").is_err());
    }
}
