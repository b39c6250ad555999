//! What can go wrong in the aggregator, and whether waiting helps.

use notiflow_ingest::IngestError;

/// Aggregator errors.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    /// Redis did not answer or refused a command (an outside system; retry).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Kafka or decoding set-up failed.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// Redis answered something the scripts never return (a bug or a
    /// foreign writer on our keys; not retryable).
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// Bad configuration (the user's fault; fix and restart).
    #[error("config: {0}")]
    Config(String),
    /// Shutdown was asked for while waiting.
    #[error("shut down")]
    ShutDown,
}

impl AggregatorError {
    /// True if the same operation may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            AggregatorError::Redis(e) => !matches!(
                e.kind(),
                redis::ErrorKind::NoScriptError
                    | redis::ErrorKind::TypeError
                    | redis::ErrorKind::InvalidClientConfig
            ),
            AggregatorError::Ingest(e) => e.is_retryable(),
            AggregatorError::Protocol(_)
            | AggregatorError::Config(_)
            | AggregatorError::ShutDown => false,
        }
    }
}
