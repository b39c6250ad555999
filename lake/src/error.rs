//! What can go wrong in the lake writer, and whether waiting helps.

use notiflow_ingest::sink::IngestError;

/// Lake errors.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// The catalog, object store or a file format failed (retry: object
    /// stores and catalogs come back).
    #[error("iceberg: {0}")]
    Iceberg(#[from] iceberg::Error),
    /// The catalog database failed.
    #[error("catalog database: {0}")]
    Sql(#[from] sqlx::Error),
    /// Arrow or Parquet failed on data we built (a bug, not retryable).
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Listing or deleting files failed.
    #[error("object store: {0}")]
    Store(#[from] opendal::Error),
    /// Kafka or decoding set-up failed.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The table holds something notiflow did not write the way it expects.
    #[error("table: {0}")]
    Table(String),
    /// Shutdown was asked for while waiting.
    #[error("shut down")]
    ShutDown,
}

impl LakeError {
    /// True if the same operation may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            // Metadata iceberg refuses as invalid, or a feature it lacks, is
            // refused the same way on every try: stop with the reason.
            LakeError::Iceberg(e) => !matches!(
                e.kind(),
                iceberg::ErrorKind::DataInvalid | iceberg::ErrorKind::FeatureUnsupported
            ),
            LakeError::Sql(_) | LakeError::Store(_) => true,
            LakeError::Ingest(e) => e.is_retryable(),
            LakeError::Arrow(_) | LakeError::Table(_) | LakeError::ShutDown => false,
        }
    }
}
