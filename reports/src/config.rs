//! The `[reports]` section of the one typed config: billing zone, engine,
//! where outputs go, the rate card, memory bounds and the scheduled jobs.
//! Validated at start-up, naming the field that is wrong.

use std::str::FromStr;

use chrono_tz::Tz;
use notiflow_schema::secret::Secret;
use serde::{Deserialize, Serialize};

use crate::error::ReportError;

/// Which engine runs a report.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// DuckDB (duckdb-rs, bundled) over the data files the Iceberg scan plans.
    DuckDb,
    /// DataFusion with iceberg-datafusion's table provider.
    DataFusion,
}

impl EngineKind {
    /// The name used in config, flags and manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::DuckDb => "duckdb",
            EngineKind::DataFusion => "datafusion",
        }
    }
}

impl FromStr for EngineKind {
    type Err = ReportError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "duckdb" => Ok(EngineKind::DuckDb),
            "datafusion" => Ok(EngineKind::DataFusion),
            other => Err(ReportError::input(format!(
                "unknown engine '{other}' (expected duckdb or datafusion)"
            ))),
        }
    }
}

/// How DuckDB reads a lake on S3 (its `httpfs` extension cannot be
/// installed offline). Local warehouse files are always read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DuckS3Input {
    /// Copy the data files the scan planning selects to a temporary
    /// folder (through opendal, 4 at a time), then `read_parquet` them.
    Files,
    /// Append the Arrow batches of iceberg-rust's scan (filters pushed
    /// down) to a DuckDB table, then query it.
    Arrow,
}

/// Output file format.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// RFC 4180 CSV with a header line.
    Csv,
    /// Parquet, zstd.
    Parquet,
}

impl Format {
    /// File extension.
    pub fn ext(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }
}

impl FromStr for Format {
    type Err = ReportError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "csv" => Ok(Format::Csv),
            "parquet" => Ok(Format::Parquet),
            other => Err(ReportError::input(format!(
                "unknown format '{other}' (expected csv or parquet)"
            ))),
        }
    }
}

/// What a scheduled job produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// The daily billing export.
    Billing,
    /// A detailed export.
    Detail,
}

/// One scheduled job. Each run covers the billing day before its scheduled
/// time (in the billing zone): a job due at 00:15 bills yesterday.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Unique name (the run ledger's key with the scheduled time).
    pub name: String,
    /// Cron expression with seconds: `sec min hour day month weekday`,
    /// evaluated in the billing zone. A billing job's must fire once a day
    /// (`sec min hour * * *`): its runs come from the calendar of billing
    /// days, one per day whatever DST does, each due that long after its
    /// day ended (`0 15 0 * * *`: 15 minutes after).
    pub cron: String,
    /// What it produces.
    pub kind: JobKind,
    /// Output formats.
    #[serde(default = "default_formats")]
    pub formats: Vec<Format>,
    /// Engine (default: the section's).
    #[serde(default)]
    pub engine: Option<EngineKind>,
    /// Detail: the client (none = all clients).
    #[serde(default)]
    pub client: Option<String>,
    /// Detail: unmasked recipients.
    #[serde(default)]
    pub pii: bool,
}

fn default_formats() -> Vec<Format> {
    vec![Format::Csv, Format::Parquet]
}

/// Scheduler settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// How far back missed runs are caught up after downtime, days.
    pub catch_up_days: u32,
    /// Attempts per run before it is recorded as failed.
    pub max_attempts: u32,
    /// First retry delay, seconds (doubles per attempt, capped at 15 min).
    pub backoff_seconds: u64,
    /// A running run whose process stopped heart-beating for this long is
    /// taken over, seconds.
    pub lease_seconds: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            catch_up_days: 7,
            max_attempts: 4,
            backoff_seconds: 30,
            lease_seconds: 120,
        }
    }
}

/// `[reports]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportsConfig {
    /// Billing time zone (IANA name).
    pub timezone: String,
    /// Default engine.
    pub engine: EngineKind,
    /// How DuckDB reads a lake on S3.
    pub duckdb_s3_input: DuckS3Input,
    /// The reports root: a folder, `file://` or `s3://bucket/prefix` (S3
    /// settings are the lake's). Each run's files land in a folder of its
    /// own, `<output>/<kind>/<date>/<run>/` (`billing/2026-11-21/<run>/…`),
    /// its manifest written last.
    pub output: String,
    /// The rate card file (TOML); empty = the embedded demo card
    /// (`reports/rate-card.toml`), which no real invoice should use.
    pub rate_card: String,
    /// How many days before the billing day are read to find a message's
    /// first billable event (SPEC §5: at least 7).
    pub lookback_days: u32,
    /// A billing day is billed only once every partition's completeness
    /// watermark in the lake (broker time up to which everything is
    /// committed) has passed the day's end plus this many minutes; until
    /// then its slot waits (`waiting_for_data`).
    pub completeness_grace_minutes: u32,
    /// How long a billing run's lake snapshot stays readable (an Iceberg
    /// tag that expiry keeps), days: the period within which an invoice
    /// can be disputed and reproduced byte for byte.
    pub dispute_days: u32,
    /// Memory an engine may use before it spills to disk, MiB: detail
    /// exports and other streaming work.
    pub memory_limit_mib: u64,
    /// The same for the daily billing, whose per-message de-duplication
    /// (about 23M messages in a 100M-event day) runs faster unspilled.
    pub billing_memory_limit_mib: u64,
    /// Engine threads (0 = one per core).
    pub threads: usize,
    /// Largest detail range, days.
    pub max_detail_days: u32,
    /// The key of the pseudonyms that replace `message_id` in masked detail
    /// exports (real `wamid.…` ids encode the recipient's number). Keep it
    /// secret and stable: the same id gets the same pseudonym in every
    /// export, so rows of one message still group. Empty: an unkeyed hash.
    pub pseudonym_secret: Secret,
    /// Scheduler settings.
    pub scheduler: SchedulerConfig,
    /// Scheduled jobs.
    pub jobs: Vec<JobConfig>,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        ReportsConfig {
            timezone: "America/Sao_Paulo".into(),
            engine: EngineKind::DuckDb,
            duckdb_s3_input: DuckS3Input::Files,
            output: "./data/reports".into(),
            rate_card: String::new(),
            lookback_days: 7,
            completeness_grace_minutes: 10,
            dispute_days: 400,
            memory_limit_mib: 512,
            billing_memory_limit_mib: 3072,
            threads: 0,
            max_detail_days: 31,
            pseudonym_secret: Secret::default(),
            scheduler: SchedulerConfig::default(),
            jobs: Vec::new(),
        }
    }
}

impl ReportsConfig {
    /// The billing zone.
    pub fn tz(&self) -> Result<Tz, ReportError> {
        self.timezone.parse::<Tz>().map_err(|_| {
            ReportError::config(
                "reports.timezone",
                format!("'{}' is not an IANA time zone", self.timezone),
            )
        })
    }

    /// Checks every field; the first wrong one is named.
    pub fn validate(&self) -> Result<(), ReportError> {
        self.tz()?;
        if self.output.trim().is_empty() {
            return Err(ReportError::config("reports.output", "must not be empty"));
        }
        if self.lookback_days < 7 {
            return Err(ReportError::config(
                "reports.lookback_days",
                "must be at least 7 (SPEC §5)",
            ));
        }
        if self.completeness_grace_minutes > 24 * 60 {
            return Err(ReportError::config(
                "reports.completeness_grace_minutes",
                "must be at most 1440 (a day)",
            ));
        }
        if !(1..=3650).contains(&self.dispute_days) {
            return Err(ReportError::config(
                "reports.dispute_days",
                "must be within 1..=3650",
            ));
        }
        if self.memory_limit_mib < 64 {
            return Err(ReportError::config(
                "reports.memory_limit_mib",
                "must be at least 64",
            ));
        }
        if self.billing_memory_limit_mib < 64 {
            return Err(ReportError::config(
                "reports.billing_memory_limit_mib",
                "must be at least 64",
            ));
        }
        if self.max_detail_days == 0 {
            return Err(ReportError::config(
                "reports.max_detail_days",
                "must be at least 1",
            ));
        }
        let s = &self.scheduler;
        if s.max_attempts == 0 {
            return Err(ReportError::config(
                "reports.scheduler.max_attempts",
                "must be at least 1",
            ));
        }
        if s.lease_seconds < 10 {
            return Err(ReportError::config(
                "reports.scheduler.lease_seconds",
                "must be at least 10",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, j) in self.jobs.iter().enumerate() {
            let at = |f: &str| format!("reports.jobs[{i}].{f}");
            if j.name.is_empty()
                || !j
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(ReportError::config(
                    &at("name"),
                    "must be non-empty [A-Za-z0-9_.-]",
                ));
            }
            if !names.insert(j.name.as_str()) {
                return Err(ReportError::config(&at("name"), "is not unique"));
            }
            crate::plan::Plan::new(&j.cron, j.kind == JobKind::Billing)
                .map_err(|e| ReportError::config(&at("cron"), e.to_string()))?;
            if j.formats.is_empty() {
                return Err(ReportError::config(&at("formats"), "must not be empty"));
            }
            if let Some(c) = &j.client {
                crate::detail::check_client(c)
                    .map_err(|e| ReportError::config(&at("client"), e.to_string()))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ReportsConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_fields_are_named() {
        let c = ReportsConfig {
            timezone: "Mars/Olympus".into(),
            ..ReportsConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("reports.timezone")
        );
        let c = ReportsConfig {
            lookback_days: 3,
            ..ReportsConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("lookback_days")
        );
        let job = JobConfig {
            name: "b".into(),
            cron: "not a cron".into(),
            kind: JobKind::Billing,
            formats: default_formats(),
            engine: None,
            client: None,
            pii: false,
        };
        let c = ReportsConfig {
            jobs: vec![job],
            ..ReportsConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("reports.jobs[0].cron")
        );
    }
}
