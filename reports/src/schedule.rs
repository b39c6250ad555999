//! The scheduler: on start and on every tick, each job's due slots within
//! the catch-up window that have not ended (succeeded, or failed for good)
//! run in order, one run at a time; a failed attempt is recorded as
//! retrying with the end of its exponential back-off, and the first tick
//! after that end tries again (a tick never waits a back-off out: the other
//! slots and jobs run on), up to `max_attempts`; then the slot is left failed (a metric and an alert tell it; ticks do not run it again);
//! bad input (a missing price, say) fails at once without retrying.
//!
//! **Billing slots come from the calendar**, not from cron firings: one per
//! billing day of the zone, due the cron's time of day *after the day
//! ended* (its first instant of the next day plus that delay). A cron
//! evaluated on the wall clock skips a day whose 00:15 does not exist
//! (a DST change at midnight: America/Santiago, Havana, Cairo, Beirut) and
//! fires twice on one that repeats; the calendar has each day once.

use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use notiflow_schema::Micros;
use notiflow_schema::time::DAY_MICROS;
use tokio::sync::watch;

use crate::billing::day_start;
use crate::config::{JobConfig, JobKind};
use crate::detail::DetailQuery;
use crate::error::ReportError;
use crate::ledger::{End, Ledger, Status};
use crate::output::Manifest;
use crate::report::{BillingRequest, DetailRequest, Lease, Reports};

pub use crate::plan::{Plan, Slot, day_for, due, parse_cron};

fn now_micros() -> Micros {
    Utc::now().timestamp_micros()
}

impl Plan {
    /// The plan of `job` (its cron, and whether it bills).
    pub fn of(job: &JobConfig) -> Result<Plan, ReportError> {
        Plan::new(&job.cron, job.kind == JobKind::Billing)
    }
}

/// Runs `job`'s report for `slot`.
pub async fn run_job(
    reports: &Reports,
    job: &JobConfig,
    slot: Slot,
    now: Micros,
    lease: Option<Lease<'_>>,
) -> Result<Manifest, ReportError> {
    let tz = reports.tz();
    let day = slot.day;
    match job.kind {
        JobKind::Billing => {
            reports
                .billing_leased(
                    &BillingRequest {
                        day,
                        engine: job.engine,
                        formats: job.formats.clone(),
                        snapshot_id: None,
                        correction: false,
                    },
                    now,
                    lease,
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
    /// The lake is not complete enough yet; why. Tried again next tick.
    Waiting(String),
    /// This attempt failed; the first tick from `retry_at` (UTC micros)
    /// tries again. Nothing waits for it meanwhile: other slots and jobs
    /// run on.
    Retrying {
        /// The attempt's error.
        error: String,
        /// When the next attempt is due.
        retry_at: Micros,
    },
    /// Already done, or held by another process.
    Skipped,
}

/// An on-demand billing run that succeeded settles the slot of its day of
/// every configured billing job that had failed for good: recorded as
/// succeeded with the run's outputs, so the failed-slots gauge and its
/// alert clear on the next tick (before, the slot stayed failed and paged
/// for the whole catch-up window though the day was billed). The CLI and
/// the API call it after a recorded billing run; the names of the jobs
/// whose slot it settled.
pub async fn settle_failed_slots(
    reports: &Reports,
    ledger: &Ledger,
    m: &Manifest,
    owner: &str,
) -> Result<Vec<String>, ReportError> {
    let Ok(day) = m.date.parse::<NaiveDate>() else {
        return Ok(Vec::new());
    };
    if m.kind != "billing" {
        return Ok(Vec::new());
    }
    let outputs = serde_json::to_string(&m.outputs())
        .map_err(|e| ReportError::Other(format!("encoding outputs: {e}")))?;
    let mut settled = Vec::new();
    for job in &reports.config().jobs {
        if job.kind != JobKind::Billing {
            continue;
        }
        let Some(slot) = Plan::of(job)?.slot_of(reports.tz(), day)? else {
            continue;
        };
        if ledger
            .settle_failed(&job.name, slot.at, owner, now_micros(), &outputs)
            .await?
        {
            tracing::info!(job = %job.name, %day, "failed slot settled by an on-demand run");
            settled.push(job.name.clone());
        }
    }
    Ok(settled)
}

/// How long after attempt `attempt` (1, 2, …) failed the next one is due:
/// `base_seconds`, doubling, at most 15 minutes.
pub fn backoff(base_seconds: u64, attempt: i64) -> Duration {
    let exp = u32::try_from(attempt - 1).unwrap_or(16).min(16);
    Duration::from_secs(base_seconds.saturating_mul(1 << exp).min(900))
}

/// The scheduler over `reports`' configured jobs.
pub struct Scheduler {
    reports: Arc<Reports>,
    ledger: Ledger,
    jobs: Vec<(JobConfig, Plan)>,
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
            jobs.push((j.clone(), Plan::of(j)?));
        }
        Ok(Scheduler {
            reports,
            ledger,
            jobs,
            owner,
        })
    }

    /// Runs one attempt of one slot of `job` and records it. A failure
    /// that another attempt may cure is recorded as retrying with the time
    /// its back-off ends ([`SlotOutcome::Retrying`]); this call does not
    /// wait for it, so one failing job cannot hold the others.
    pub async fn run_slot(&self, job: &JobConfig, due: Slot) -> Result<SlotOutcome, ReportError> {
        let slot = due.at;
        let s = &self.reports.config().scheduler;
        let lease = (s.lease_seconds as i64) * 1_000_000;
        let now = now_micros();
        let Some(attempt) = self
            .ledger
            .claim(&job.name, slot, &self.owner, now, lease, true)
            .await?
        else {
            return Ok(SlotOutcome::Skipped);
        };
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
        let lease_of = Lease {
            ledger: &self.ledger,
            job: &job.name,
            slot,
            owner: &self.owner,
        };
        let result = run_job(&self.reports, job, due, now_micros(), Some(lease_of)).await;
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
                if !self.record_end(job, slot, attempt, ending).await? {
                    return Ok(SlotOutcome::Skipped);
                }
                tracing::info!(job = %job.name, attempt, rows = m.rows, "report run succeeded");
                if let Some(metrics) = self.reports.metrics() {
                    metrics
                        .job_last_success
                        .with_label_values(&[job.name.as_str()])
                        .set(end as f64 / 1e6);
                }
                Ok(SlotOutcome::Succeeded(attempt))
            }
            // The day was invoiced by another run (on demand, say): the
            // slot's work is done, and this run published nothing.
            Err(e) if e.is_issued() => {
                let msg = e.to_string();
                let ending = End {
                    status: Status::Succeeded,
                    at: end,
                    outputs: None,
                    error: Some(&msg),
                };
                if !self.record_end(job, slot, attempt, ending).await? {
                    return Ok(SlotOutcome::Skipped);
                }
                tracing::info!(job = %job.name, day = %due.day, reason = %msg, "billing day already issued");
                Ok(SlotOutcome::Succeeded(attempt))
            }
            Err(e) if e.is_waiting() => {
                let msg = e.to_string();
                let ending = End {
                    status: Status::Waiting,
                    at: end,
                    outputs: None,
                    error: Some(&msg),
                };
                if !self.record_end(job, slot, attempt, ending).await? {
                    return Ok(SlotOutcome::Skipped);
                }
                tracing::info!(job = %job.name, day = %due.day, reason = %msg, "report run waits for data");
                Ok(SlotOutcome::Waiting(msg))
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
                if !self.record_end(job, slot, attempt, ending).await? {
                    return Ok(SlotOutcome::Skipped);
                }
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
                let wait = backoff(s.backoff_seconds, attempt);
                tracing::warn!(job = %job.name, attempt, error = %msg, retry_in = ?wait, "report run failed; retrying");
                Ok(SlotOutcome::Retrying {
                    error: msg,
                    retry_at: end + wait.as_micros() as Micros,
                })
            }
        }
    }

    /// Records how an attempt ended. False when this process's lease ran
    /// out and another took the run over: the other's attempt is the one
    /// recorded (this one's outputs, if any, sit unreferenced under their
    /// own run folder), and the error is logged.
    async fn record_end(
        &self,
        job: &JobConfig,
        slot: Micros,
        attempt: i64,
        end: End<'_>,
    ) -> Result<bool, ReportError> {
        let recorded = self
            .ledger
            .finish(&job.name, slot, &self.owner, end)
            .await?;
        if !recorded {
            tracing::error!(job = %job.name, attempt,
                "lost the run's lease to another process before it ended (a stall longer than \
                 reports.scheduler.lease_seconds?): its end is not recorded");
        }
        Ok(recorded)
    }

    /// Shows every job's failure count (0) and its last success from the
    /// ledger (runs by earlier processes count) before anything runs.
    async fn seed_metrics(&self) -> Result<(), ReportError> {
        let Some(m) = self.reports.metrics() else {
            return Ok(());
        };
        for (job, _) in &self.jobs {
            m.job_failures.with_label_values(&[job.name.as_str()]);
            m.job_failed_slots.with_label_values(&[job.name.as_str()]);
            m.job_waiting_slots.with_label_values(&[job.name.as_str()]);
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
    /// first, but those that succeeded or failed for good (a failed slot
    /// is not scanned again every tick: it waits for an operator, and the
    /// `job_failed_slots` gauge says so). How many slots it ran.
    pub async fn tick(
        &self,
        now: Micros,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<usize, ReportError> {
        let s = &self.reports.config().scheduler;
        let from = now - i64::from(s.catch_up_days) * DAY_MICROS;
        let tz = self.reports.tz();
        let mut ran = 0;
        for (job, plan) in &self.jobs {
            let (mut failed, mut waiting) = (0, 0);
            for slot in plan.due(tz, from, now, 1000)? {
                if *stop.borrow() {
                    return Ok(ran);
                }
                match self.ledger.get(&job.name, slot.at).await? {
                    Some(r) if r.status == Status::Succeeded => continue,
                    Some(r) if r.status == Status::Failed => {
                        failed += 1;
                        continue;
                    }
                    // Its back-off has not ended: later ticks try again.
                    Some(r)
                        if r.status == Status::Retrying
                            && now
                                < r.finished_at.unwrap_or(r.started_at)
                                    + backoff(s.backoff_seconds, r.attempts).as_micros()
                                        as Micros =>
                    {
                        continue;
                    }
                    _ => {}
                }
                match self.run_slot(job, slot).await? {
                    SlotOutcome::Skipped | SlotOutcome::Retrying { .. } => {}
                    SlotOutcome::Waiting(_) => waiting += 1,
                    SlotOutcome::Failed(_) => {
                        failed += 1;
                        ran += 1;
                    }
                    SlotOutcome::Succeeded(_) => ran += 1,
                }
            }
            if let Some(m) = self.reports.metrics() {
                m.job_failed_slots
                    .with_label_values(&[job.name.as_str()])
                    .set(failed);
                m.job_waiting_slots
                    .with_label_values(&[job.name.as_str()])
                    .set(waiting);
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
                .filter_map(|(_, p)| p.next_after(tz, now_micros()))
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
    use chrono_tz::Tz;

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

    fn billing_job(cron: &str) -> JobConfig {
        JobConfig {
            name: "daily-billing".into(),
            cron: cron.into(),
            kind: JobKind::Billing,
            formats: vec![crate::Format::Csv],
            engine: None,
            client: None,
            pii: false,
        }
    }

    /// Zones whose DST changes happen at midnight (the day before a change
    /// has no 00:15 after it, or one that repeats) and two that do not.
    const ZONES: [&str; 6] = [
        "America/Santiago",
        "America/Havana",
        "Africa/Cairo",
        "Asia/Beirut",
        "Europe/Berlin",
        "America/Sao_Paulo",
    ];

    #[test]
    fn every_billing_day_of_a_year_has_exactly_one_slot_in_any_zone() {
        let t = |x: &str| notiflow_schema::time::parse_rfc3339(x).unwrap();
        let plan = Plan::of(&billing_job("0 15 0 * * *")).unwrap();
        for zone in ZONES {
            let tz: Tz = zone.parse().unwrap();
            let slots = plan
                .due(
                    tz,
                    t("2026-01-01T12:00:00Z"),
                    t("2027-01-01T12:00:00Z"),
                    10_000,
                )
                .unwrap();
            // Written out: the days from 2026-01-01 (its slot is early on the
            // 2nd) to 2026-12-31 (its slot early on 2027-01-01), each once.
            let mut want = Vec::new();
            let mut d: NaiveDate = "2026-01-01".parse().unwrap();
            while d.to_string() != "2027-01-01" {
                want.push(d);
                d = d.succ_opt().unwrap();
            }
            let days: Vec<NaiveDate> = slots.iter().map(|s| s.day).collect();
            assert_eq!(days.len(), 365, "{zone}");
            assert_eq!(days, want, "{zone}");
            for s in &slots {
                // Due 15 minutes after the day's last instant, never before.
                let end = crate::billing::day_start(tz, s.day.succ_opt().unwrap()).unwrap();
                assert_eq!(s.at, end + 15 * 60 * 1_000_000, "{zone} {}", s.day);
            }
        }
    }

    #[test]
    fn cron_firings_would_skip_and_repeat_billing_days() {
        // Why billing does not follow the cron: in 2026 the wall-clock 00:15
        // skips a day in Santiago (DST from 00:00 on 6 September) and
        // Havana (8 March), and repeats one in Havana (1 November, 01:00
        // back to 00:00) — each such day unbilled or billed twice.
        let t = |x: &str| notiflow_schema::time::parse_rfc3339(x).unwrap();
        let cron = parse_cron("0 15 0 * * *").unwrap();
        for zone in ["America/Santiago", "America/Havana"] {
            let tz: Tz = zone.parse().unwrap();
            let days: Vec<NaiveDate> = due(
                &cron,
                tz,
                t("2026-01-01T12:00:00Z"),
                t("2027-01-01T12:00:00Z"),
                10_000,
            )
            .into_iter()
            .map(|s| day_for(tz, s))
            .collect();
            let mut distinct = days.clone();
            distinct.dedup();
            assert!(
                distinct.len() < 365 || distinct.len() < days.len(),
                "{zone}: {} firings, {} distinct days",
                days.len(),
                distinct.len()
            );
        }
    }

    #[test]
    fn a_billing_job_must_fire_once_a_day() {
        for cron in ["0 15 0 * * MON", "0 */15 * * * *", "0 0 0,12 * * *"] {
            let e = Plan::of(&billing_job(cron)).unwrap_err().to_string();
            assert!(e.contains("once per billing day"), "{cron}: {e}");
        }
        let Plan::Calendar { delay } = Plan::of(&billing_job("30 5 1 * * *")).unwrap() else {
            panic!("a calendar plan");
        };
        assert_eq!(delay, (3600 + 5 * 60 + 30) * 1_000_000);
    }
}
