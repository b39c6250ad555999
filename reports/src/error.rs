//! The reports' typed errors. Input errors (a bad date, an unknown client, a
//! missing price) are told apart from failures of the lake, an engine or the
//! output store, so the CLI and the API can answer a caller's mistake with a
//! 4xx-style message and retry the rest.

use thiserror::Error;

/// What can go wrong producing a report.
#[derive(Debug, Error)]
pub enum ReportError {
    /// The caller asked for something that cannot be answered as asked.
    #[error("{0}")]
    Input(String),
    /// The rate card is malformed or has no price for a billed cell.
    #[error("rate card: {0}")]
    RateCard(String),
    /// Configuration rejected at start-up: the field and why.
    #[error("config: {field}: {reason}")]
    Config {
        /// Dotted path of the field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The lake (catalog, metadata, scan planning).
    #[error("lake: {0}")]
    Lake(#[from] notiflow_lake::LakeError),
    /// iceberg-rust.
    #[error("iceberg: {0}")]
    Iceberg(#[from] iceberg::Error),
    /// DuckDB.
    #[error("duckdb: {0}")]
    DuckDb(#[from] duckdb::Error),
    /// DataFusion.
    #[error("datafusion: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Arrow.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Parquet.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// The output store.
    #[error("output store: {0}")]
    Store(#[from] opendal::Error),
    /// The run ledger's database.
    #[error("run ledger: {0}")]
    Ledger(#[from] sqlx::Error),
    /// Local files (temporary copies, spill folders).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The lake is not complete up to what the report needs yet (billing:
    /// a partition's watermark has not passed the day's end plus the
    /// grace). Not a failure: the slot waits and is tried again.
    #[error("waiting for data: {0}")]
    WaitingForData(String),
    /// The billing day is issued already and this run would not reproduce
    /// its invoice (`invoices`): nothing is published. A conflict, not a
    /// failure: retrying cannot change it.
    #[error("{0}")]
    Issued(String),
    /// Another billing run issued after this one read the ledger: this
    /// one publishes nothing and runs again from the start.
    #[error("{0}")]
    LedgerMoved(String),
    /// Anything else, with what was being done.
    #[error("{0}")]
    Other(String),
}

impl ReportError {
    /// A caller's mistake (answer 400, do not retry).
    pub fn is_input(&self) -> bool {
        matches!(self, ReportError::Input(_) | ReportError::RateCard(_))
    }

    /// The billing day's invoice is issued and this run would change it.
    pub fn is_issued(&self) -> bool {
        matches!(self, ReportError::Issued(_))
    }

    /// The data the report needs is not complete in the lake yet.
    pub fn is_waiting(&self) -> bool {
        matches!(self, ReportError::WaitingForData(_))
    }

    pub(crate) fn input(msg: impl Into<String>) -> Self {
        ReportError::Input(msg.into())
    }

    pub(crate) fn config(field: &str, reason: impl Into<String>) -> Self {
        ReportError::Config {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}
