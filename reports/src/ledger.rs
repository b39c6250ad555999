//! The run ledger: every scheduled or on-demand run with its status, times,
//! attempts, outputs and error, in a table next to the Iceberg catalog
//! (SQLite or PostgreSQL). A run is claimed by an insert-or-conditional-
//! update on `(job, scheduled_for)`, so two schedulers never run the same
//! job's slot at once; a claim carries a lease that a crashed process stops
//! renewing, after which another may take the run over.

use serde::Serialize;
use sqlx::Row;

use crate::db::Db;
use crate::error::ReportError;
use crate::output::Manifest;

/// A run's state.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Claimed and in progress.
    Running,
    /// Failed, another attempt is due.
    Retrying,
    /// Billing: the lake is not complete up to the day's end plus the
    /// grace yet; tried again on every tick (it uses no attempt).
    #[serde(rename = "waiting_for_data")]
    Waiting,
    /// Done; outputs recorded.
    Succeeded,
    /// Failed after its last attempt (or on bad input).
    Failed,
}

impl Status {
    /// The state's name, as stored and as JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Retrying => "retrying",
            Status::Waiting => "waiting_for_data",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Status {
        match s {
            "running" => Status::Running,
            "retrying" => Status::Retrying,
            "waiting_for_data" => Status::Waiting,
            "succeeded" => Status::Succeeded,
            _ => Status::Failed,
        }
    }
}

/// One recorded run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    /// Job name (`on-demand` for CLI and API runs).
    pub job: String,
    /// The slot it ran for, UTC micros.
    pub scheduled_for: i64,
    /// State.
    pub status: Status,
    /// Attempts so far.
    pub attempts: i64,
    /// Last attempt's start, UTC micros.
    pub started_at: i64,
    /// End of the last attempt, UTC micros.
    pub finished_at: Option<i64>,
    /// Output paths (JSON array), when it succeeded.
    pub outputs: Option<String>,
    /// Last error.
    pub error: Option<String>,
    /// Process that holds or held it.
    pub owner: String,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy)]
pub struct End<'a> {
    /// The run's state after it.
    pub status: Status,
    /// When, UTC micros.
    pub at: i64,
    /// Output paths (JSON array).
    pub outputs: Option<&'a str>,
    /// The error.
    pub error: Option<&'a str>,
}

/// The ledger's table.
#[derive(Clone)]
pub struct Ledger {
    db: Db,
}

const TABLE: &str = "notiflow_report_runs";

impl Ledger {
    /// Opens (and creates) the ledger in the database at `uri`
    /// (`sqlite://…` or `postgres://…`, as the lake's catalog).
    pub async fn open(uri: &str) -> Result<Ledger, ReportError> {
        let l = Ledger {
            db: Db::open(uri).await?,
        };
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (
               job TEXT NOT NULL,
               scheduled_for BIGINT NOT NULL,
               status TEXT NOT NULL,
               attempts BIGINT NOT NULL,
               started_at BIGINT NOT NULL,
               finished_at BIGINT,
               lease_until BIGINT NOT NULL,
               outputs TEXT,
               error TEXT,
               owner TEXT NOT NULL,
               PRIMARY KEY (job, scheduled_for))"
        ))
        .execute(&l.db.pool)
        .await?;
        Ok(l)
    }

    fn sql(&self, q: &str) -> String {
        self.db.sql(q)
    }

    /// Claims `job`'s run for `slot`: new, or a retry of one that failed or
    /// whose lease ran out. Its attempt number, or None when it succeeded
    /// already or another process holds it.
    pub async fn claim(
        &self,
        job: &str,
        slot: i64,
        owner: &str,
        now: i64,
        lease_micros: i64,
        retry_failed: bool,
    ) -> Result<Option<i64>, ReportError> {
        let inserted = sqlx::query(&self.sql(&format!(
            "INSERT INTO {TABLE} (job, scheduled_for, status, attempts, started_at, lease_until, owner)
             VALUES (?, ?, 'running', 1, ?, ?, ?) ON CONFLICT DO NOTHING"
        )))
        .bind(job)
        .bind(slot)
        .bind(now)
        .bind(now + lease_micros)
        .bind(owner)
        .execute(&self.db.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(Some(1));
        }
        let takeover = if retry_failed {
            "status IN ('retrying', 'waiting_for_data', 'failed')"
        } else {
            "status IN ('retrying', 'waiting_for_data')"
        };
        let updated = sqlx::query(&self.sql(&format!(
            "UPDATE {TABLE} SET status = 'running', attempts = attempts + 1, started_at = ?,
                    finished_at = NULL, lease_until = ?, owner = ?
             WHERE job = ? AND scheduled_for = ?
               AND ({takeover} OR (status = 'running' AND lease_until < ?))"
        )))
        .bind(now)
        .bind(now + lease_micros)
        .bind(owner)
        .bind(job)
        .bind(slot)
        .bind(now)
        .execute(&self.db.pool)
        .await?
        .rows_affected();
        if updated == 0 {
            return Ok(None);
        }
        Ok(self.get(job, slot).await?.map(|r| r.attempts))
    }

    /// Extends the lease of a run `owner` holds.
    pub async fn renew(
        &self,
        job: &str,
        slot: i64,
        owner: &str,
        until: i64,
    ) -> Result<(), ReportError> {
        sqlx::query(&self.sql(&format!(
            "UPDATE {TABLE} SET lease_until = ? WHERE job = ? AND scheduled_for = ? AND owner = ? AND status = 'running'"
        )))
        .bind(until)
        .bind(job)
        .bind(slot)
        .bind(owner)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// Records the end of an attempt of a run `owner` holds. False when
    /// it holds it no more (its lease ran out and another process took the
    /// run over): nothing is recorded, and the caller must say so.
    pub async fn finish(
        &self,
        job: &str,
        slot: i64,
        owner: &str,
        end: End<'_>,
    ) -> Result<bool, ReportError> {
        let End {
            status,
            at: now,
            outputs,
            error,
        } = end;
        // Waiting for data is no attempt: the claim's count is taken back.
        let used = i64::from(status != Status::Waiting);
        let updated = sqlx::query(&self.sql(&format!(
            "UPDATE {TABLE} SET status = ?, attempts = attempts - 1 + ?, finished_at = ?,
                    outputs = ?, error = ?
             WHERE job = ? AND scheduled_for = ? AND owner = ? AND status = 'running'"
        )))
        .bind(status.as_str())
        .bind(used)
        .bind(now)
        .bind(outputs)
        .bind(error)
        .bind(job)
        .bind(slot)
        .bind(owner)
        .execute(&self.db.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    /// True while `owner` holds `job`'s run of `slot`: running, its lease
    /// not over at `now`.
    pub async fn holds(
        &self,
        job: &str,
        slot: i64,
        owner: &str,
        now: i64,
    ) -> Result<bool, ReportError> {
        let row = sqlx::query(&self.sql(&format!(
            "SELECT 1 FROM {TABLE} WHERE job = ? AND scheduled_for = ? AND owner = ?
               AND status = 'running' AND lease_until > ?"
        )))
        .bind(job)
        .bind(slot)
        .bind(owner)
        .bind(now)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Marks `job`'s run of `slot` succeeded with `outputs` if it failed
    /// for good: an operator fixed the cause and ran it on demand. True
    /// when it was failed (and is now settled).
    pub async fn settle_failed(
        &self,
        job: &str,
        slot: i64,
        owner: &str,
        now: i64,
        outputs: &str,
    ) -> Result<bool, ReportError> {
        let updated = sqlx::query(&self.sql(&format!(
            "UPDATE {TABLE} SET status = 'succeeded', finished_at = ?, outputs = ?, error = NULL,
                    owner = ?
             WHERE job = ? AND scheduled_for = ? AND status = 'failed'"
        )))
        .bind(now)
        .bind(outputs)
        .bind(owner)
        .bind(job)
        .bind(slot)
        .execute(&self.db.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    /// Runs `work` as a recorded on-demand run of `job` at `slot` (UTC
    /// micros, e.g. the request time): claimed before, finished after with
    /// its outputs or error. The CLI and the API record their runs so.
    pub async fn record<F>(
        &self,
        job: &str,
        slot: i64,
        owner: &str,
        work: F,
    ) -> Result<Manifest, ReportError>
    where
        F: std::future::Future<Output = Result<Manifest, ReportError>>,
    {
        self.claim(job, slot, owner, slot, 3_600_000_000, false)
            .await?;
        let out = work.await;
        let outputs = match &out {
            Ok(m) => Some(
                serde_json::to_string(&m.outputs())
                    .map_err(|e| ReportError::Other(format!("encoding outputs: {e}")))?,
            ),
            Err(_) => None,
        };
        let error = out.as_ref().err().map(ToString::to_string);
        let end = End {
            status: if out.is_ok() {
                Status::Succeeded
            } else {
                Status::Failed
            },
            at: chrono::Utc::now().timestamp_micros(),
            outputs: outputs.as_deref(),
            error: error.as_deref(),
        };
        if !self.finish(job, slot, owner, end).await? {
            tracing::error!(
                job,
                slot,
                owner,
                "the run was taken over by another process before it ended: its end is not recorded"
            );
        }
        out
    }

    /// One run.
    pub async fn get(&self, job: &str, slot: i64) -> Result<Option<Run>, ReportError> {
        let rows = self
            .select("WHERE job = ? AND scheduled_for = ?", &[job], &[slot], 1)
            .await?;
        Ok(rows.into_iter().next())
    }

    /// The newest runs first, at most `limit`, of one job or all.
    pub async fn list(&self, job: Option<&str>, limit: i64) -> Result<Vec<Run>, ReportError> {
        match job {
            Some(j) => self.select("WHERE job = ?", &[j], &[], limit).await,
            None => self.select("", &[], &[], limit).await,
        }
    }

    async fn select(
        &self,
        filter: &str,
        texts: &[&str],
        ints: &[i64],
        limit: i64,
    ) -> Result<Vec<Run>, ReportError> {
        let q = self.sql(&format!(
            "SELECT job, scheduled_for, status, attempts, started_at, finished_at, outputs, error, owner
             FROM {TABLE} {filter} ORDER BY scheduled_for DESC, job LIMIT {limit}"
        ));
        let mut query = sqlx::query(&q);
        for t in texts {
            query = query.bind(*t);
        }
        for i in ints {
            query = query.bind(*i);
        }
        let rows = query.fetch_all(&self.db.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(Run {
                job: r.try_get(0)?,
                scheduled_for: r.try_get(1)?,
                status: Status::parse(&r.try_get::<String, _>(2)?),
                attempts: r.try_get(3)?,
                started_at: r.try_get(4)?,
                finished_at: r.try_get(5)?,
                outputs: r.try_get(6)?,
                error: r.try_get(7)?,
                owner: r.try_get(8)?,
            });
        }
        Ok(out)
    }
}
