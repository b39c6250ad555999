//! Reports through the API (SPEC §5, §6): start a detail or billing run,
//! poll it, download its CSV or Parquet streamed from object storage with
//! `Content-Disposition`; list the scheduler's runs and download theirs.
//!
//! The work itself is the reports crate's. Runs started here are recorded
//! in the run ledger like the CLI's, run one at a time (each engine takes
//! its configured memory), and are remembered in memory for polling: a
//! viewer only ever sees runs of its own client.
//!
//! No caller can starve the others: a key may have `report_runs_per_key`
//! runs queued or running (more: 429 with `Retry-After`), a run taking
//! longer than `report_timeout_secs` fails, and only finished runs are
//! forgotten to make room (never another caller's queued or running one).
//! A failed run tells the caller why only when the caller can act on it
//! (bad input, data not complete yet); other failures say "failed" and the
//! detail goes to the log under the run id.

//! - [`model`]: request and answer types;
//! - [`store`]: the runs held here, quotas, who may read what.
//!
//! Their HTTP endpoints are `run_routes`, above the app state
//! that holds the runs (so neither depends on the other both ways).

mod model;
pub(crate) mod store;

pub use model::{
    DownloadFormat, DownloadParams, ReportKind, ReportRun, RunFile, RunStatus, RunsParams,
    ScheduledRun, StartReport,
};
pub use store::{Quotas, ReportRuns};
