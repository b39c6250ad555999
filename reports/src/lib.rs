//! Detailed and daily billing exports over the Iceberg table, with DuckDB
//! and DataFusion, on demand and on a schedule (SPEC §5).
//!
//! - [`config`]: the `[reports]` section; [`ratecard`]: prices;
//! - [`billing`] and [`detail`]: the reports' rules, engine-independent;
//! - [`engine`]: DuckDB and DataFusion over a pinned lake snapshot;
//! - [`output`]: files and manifests in object storage;
//! - [`report`]: one report run end to end;
//! - [`ledger`], [`plan`] and [`schedule`]: recorded runs, when jobs are
//!   due, and the scheduler;
//! - [`invoices`]: one invoice per billing day; [`billed`]: the messages
//!   each invoice billed;
//! - [`metrics`]: run durations and job freshness for Prometheus.

pub mod billed;
pub mod billing;
pub mod config;
mod db;
pub mod detail;
pub mod engine;
pub mod error;
pub mod invoices;
pub mod ledger;
pub mod metrics;
pub mod output;
pub mod plan;
pub mod ratecard;
pub mod report;
pub mod schedule;

pub use config::{DuckS3Input, EngineKind, Format, JobConfig, JobKind, ReportsConfig};
pub use error::ReportError;
pub use metrics::Metrics;
pub use output::Manifest;
pub use report::{BillingRequest, DetailRequest, Reports};
