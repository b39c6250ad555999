//! One invoice per billing day: the registry of issued billing days, in a
//! table next to the Iceberg catalog (SQLite or PostgreSQL), beside the run
//! ledger.
//!
//! A billing run *issues* its day by inserting the day's row (`seq` 0), as
//! the last step before its manifest; the insert is the only arbiter, so of
//! two runs of one day (a re-run, an on-demand run racing the scheduled
//! one, a run that lost its lease) exactly one issues it. Later runs of an
//! issued day may only reproduce it: the same lake snapshot and the same
//! rate card give the same bytes, and issue nothing. Anything else is
//! refused ([`crate::error::ReportError::Issued`]), nothing published: a
//! day's invoice never changes. What changed since (a backfill) is billed
//! by a *correction*, asked for explicitly: its own file and manifest, the
//! difference between the day read from a newer snapshot and the day as the
//! last invoice or correction read it, registered as the next `seq` the
//! same way (the billed-messages ledger with late lines is issue 31's
//! next step).

use sqlx::Row;

use crate::db::Db;
use crate::error::ReportError;

/// An issued billing day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    /// The billing day, `YYYY-MM-DD` in the billing zone.
    pub billing_day: String,
    /// 0 for the invoice, n for its n-th correction.
    pub seq: i64,
    /// The billing zone it was issued in.
    pub timezone: String,
    /// The run folder holding it (`billing/<day>/<run>/`).
    pub run: String,
    /// The lake snapshot it read.
    pub lake_snapshot_id: i64,
    /// The rate card it was priced with.
    pub rate_card_sha256: String,
    /// When it was issued, UTC micros.
    pub issued_at: i64,
    /// Its place in the order of everything issued (1, 2, …; unique): a
    /// run registers the version after the last one it read, so a run that
    /// read the ledger before another run issued is refused (it may have
    /// billed the same late messages), and a reproduction reads the ledger
    /// as it was before its invoice.
    pub ledger_version: i64,
}

/// How registering an invoice ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issue {
    /// Registered.
    Issued,
    /// Another run registered this day's `seq` first: its invoice.
    Taken(Invoice),
    /// Another run issued something after this run read the ledger.
    LedgerMoved,
}

impl Invoice {
    /// Whether a run reading `snapshot` priced with `card_sha256` gives
    /// this invoice's bytes again.
    pub fn reproduced_by(&self, snapshot: Option<i64>, card_sha256: &str) -> bool {
        snapshot == Some(self.lake_snapshot_id) && card_sha256 == self.rate_card_sha256
    }
}

const TABLE: &str = "notiflow_invoices";

/// The registry.
#[derive(Clone)]
pub struct Invoices {
    db: Db,
}

impl Invoices {
    /// Opens (and creates) the registry in the database at `uri` (the
    /// lake's catalog).
    pub async fn open(uri: &str) -> Result<Invoices, ReportError> {
        let r = Invoices {
            db: Db::open(uri).await?,
        };
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (
               billing_day TEXT NOT NULL,
               seq BIGINT NOT NULL,
               timezone TEXT NOT NULL,
               run TEXT NOT NULL,
               lake_snapshot_id BIGINT NOT NULL,
               rate_card_sha256 TEXT NOT NULL,
               issued_at BIGINT NOT NULL,
               ledger_version BIGINT NOT NULL UNIQUE,
               PRIMARY KEY (billing_day, seq))"
        ))
        .execute(&r.db.pool)
        .await?;
        Ok(r)
    }

    fn sql(&self, q: &str) -> String {
        self.db.sql(q)
    }

    /// Everything issued, in ledger order.
    pub async fn all(&self) -> Result<Vec<Invoice>, ReportError> {
        self.select("", None).await
    }

    /// The invoice of `day` and its corrections, in order (empty when the
    /// day is not issued).
    pub async fn issued(&self, day: &str) -> Result<Vec<Invoice>, ReportError> {
        self.select("WHERE billing_day = ?", Some(day)).await
    }

    async fn select(&self, filter: &str, day: Option<&str>) -> Result<Vec<Invoice>, ReportError> {
        let q = self.sql(&format!(
            "SELECT billing_day, seq, timezone, run, lake_snapshot_id, rate_card_sha256, issued_at,
                    ledger_version
             FROM {TABLE} {filter} ORDER BY ledger_version"
        ));
        let mut query = sqlx::query(&q);
        if let Some(d) = day {
            query = query.bind(d);
        }
        query
            .fetch_all(&self.db.pool)
            .await?
            .into_iter()
            .map(|r| {
                Ok(Invoice {
                    billing_day: r.try_get(0)?,
                    seq: r.try_get(1)?,
                    timezone: r.try_get(2)?,
                    run: r.try_get(3)?,
                    lake_snapshot_id: r.try_get(4)?,
                    rate_card_sha256: r.try_get(5)?,
                    issued_at: r.try_get(6)?,
                    ledger_version: r.try_get(7)?,
                })
            })
            .collect()
    }

    /// Registers `inv` (the invoice of its day, or its `seq`-th
    /// correction, at its `ledger_version`) unless another run registered
    /// that `seq` or that version first.
    pub async fn issue(&self, inv: &Invoice) -> Result<Issue, ReportError> {
        let inserted = sqlx::query(&self.sql(&format!(
            "INSERT INTO {TABLE} (billing_day, seq, timezone, run, lake_snapshot_id, rate_card_sha256,
                                  issued_at, ledger_version)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
        )))
        .bind(&inv.billing_day)
        .bind(inv.seq)
        .bind(&inv.timezone)
        .bind(&inv.run)
        .bind(inv.lake_snapshot_id)
        .bind(&inv.rate_card_sha256)
        .bind(inv.issued_at)
        .bind(inv.ledger_version)
        .execute(&self.db.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(Issue::Issued);
        }
        let held = self
            .issued(&inv.billing_day)
            .await?
            .into_iter()
            .find(|i| i.seq == inv.seq);
        Ok(match held {
            Some(other) => Issue::Taken(other),
            None => Issue::LedgerMoved,
        })
    }
}

/// The refusal of a run of an issued day that would not reproduce it.
pub fn refusal(inv: &Invoice) -> ReportError {
    ReportError::Issued(format!(
        "billing day {} was issued by run {} (lake snapshot {}, rate card sha256 {}); an issued \
         invoice never changes: re-running it with --snapshot {} reproduces it byte for byte; \
         what changed since is billed by a correction (--correction), anything else publishes \
         nothing",
        inv.billing_day, inv.run, inv.lake_snapshot_id, inv.rate_card_sha256, inv.lake_snapshot_id
    ))
}
