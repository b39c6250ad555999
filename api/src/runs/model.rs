//! What callers send and receive about report runs: the request to start
//! one, a run's state and files, the ledger's runs, the query parameters.

use notiflow_reports::ledger::Status;
use notiflow_reports::{EngineKind, Format};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

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
    /// Billing: correct the day's issued invoice (a file of its own with
    /// the difference since it); without it, a day already issued is
    /// refused unless nothing changed since (409 in the run's error).
    #[serde(default)]
    pub correction: bool,
    /// Output formats (default both).
    pub formats: Option<Vec<Format>>,
    /// Engine (default: configured).
    pub engine: Option<EngineKind>,
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
    /// The file's format.
    pub format: Format,
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
    pub engine: Option<EngineKind>,
    /// Output files, when it succeeded.
    pub files: Vec<RunFile>,
    /// Why it failed.
    pub error: Option<String>,
    /// Recipients unmasked: only keys with the `pii` permission see, list
    /// or download this run.
    pub pii: bool,
}

impl ReportRun {
    /// A run just accepted: queued, nothing read or written yet.
    pub fn queued(
        id: String,
        kind: ReportKind,
        client: Option<String>,
        requested_by: String,
        created_at: String,
        pii: bool,
    ) -> ReportRun {
        ReportRun {
            id,
            kind,
            client,
            status: RunStatus::Queued,
            requested_by,
            created_at,
            finished_at: None,
            rows: None,
            lake_snapshot_id: None,
            engine: None,
            files: vec![],
            error: None,
            pii,
        }
    }
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
    /// State (`waiting_for_data`: billing, the lake is not complete up to
    /// the day's end yet).
    pub status: Status,
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
    /// Which file (default `csv`).
    pub format: Option<DownloadFormat>,
}

/// A file of a run to download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DownloadFormat {
    /// The CSV file.
    Csv,
    /// The Parquet file.
    Parquet,
    /// The manifest (recorded runs: scheduled and CLI runs).
    Manifest,
}

impl DownloadFormat {
    /// The name in query strings and output paths.
    pub fn as_str(self) -> &'static str {
        match self {
            DownloadFormat::Csv => "csv",
            DownloadFormat::Parquet => "parquet",
            DownloadFormat::Manifest => "manifest",
        }
    }
}
