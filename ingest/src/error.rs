//! Why a record was rejected, and what can go wrong around the broker.
//!
//! [`Reject`] is the record's fault: it goes to the dead-letter topic with
//! [`Reject::code`] as its reason header and never stalls the partition.
//! [`IngestError`] is an outside system's fault (broker, schema registry):
//! retrying can help, and the record is *not* dead-lettered for it.

use notiflow_schema::Status;

/// One broken rule of SPEC §2. The record goes to the DLQ with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// The record has no value, or an empty one.
    #[error("record value is empty")]
    EmptyValue,
    /// JSON text that is not UTF-8.
    #[error("value is not valid UTF-8 (first bad byte at {0})")]
    InvalidUtf8(usize),
    /// Not JSON at all, or cut short.
    #[error("malformed JSON: {0}")]
    JsonSyntax(String),
    /// JSON of the wrong shape: a field of the wrong type, a non-object, a duplicate key.
    #[error("JSON of the wrong shape: {0}")]
    JsonType(String),
    /// A required field is missing or null.
    #[error("field `{0}` is missing or null")]
    MissingField(&'static str),
    /// `status` or `category` outside its enumeration.
    #[error("field `{field}` has no such value {value:?}")]
    BadEnum {
        /// The field.
        field: &'static str,
        /// What it held.
        value: String,
    },
    /// `event_time` is not RFC 3339 with an offset, or names an impossible instant.
    #[error("field `event_time` is not an RFC 3339 timestamp with offset: {0:?}")]
    BadTimestamp(String),
    /// `event_time` is more than 5 minutes after the record's broker timestamp.
    #[error("event_time is {ahead_secs} s in the future (at most 300 s allowed)")]
    FutureTimestamp {
        /// Seconds ahead of the reference clock.
        ahead_secs: i64,
    },
    /// A string field is empty or too long.
    #[error("field `{field}` has {len} characters, allowed {min}..={max}")]
    FieldLength {
        /// The field.
        field: &'static str,
        /// Its length in characters.
        len: usize,
        /// Least allowed.
        min: usize,
        /// Most allowed.
        max: usize,
    },
    /// `client_id` has a character outside `[A-Za-z0-9_.-]`.
    #[error("field `client_id` has a character outside [A-Za-z0-9_.-]")]
    BadClientId,
    /// `recipient` is not `+` and 8–15 digits.
    #[error("field `recipient` is not E.164 (+ and 8-15 digits)")]
    BadRecipient,
    /// `country` is not an assigned upper-case ISO 3166-1 alpha-2 code.
    #[error("field `country` is not an upper-case ISO 3166-1 alpha-2 code: {0:?}")]
    BadCountry(String),
    /// `error_code` given with a status other than `failed`.
    #[error("field `error_code` is only allowed with status failed, not {0}")]
    ErrorCodeWithoutFailure(Status),
    /// The record has no key; it must be the `message_id`.
    #[error("record has no key (must be the message_id)")]
    KeyMissing,
    /// The record key is not the `message_id`, so its duplicates could land on another partition.
    #[error("record key is not the message_id")]
    KeyMismatch,
    /// Avro binary that ends before the record does.
    #[error("Avro value is truncated")]
    AvroTruncated,
    /// Avro binary that breaks the encoding (bad varint, union branch, enum index, trailing bytes).
    #[error("malformed Avro: {0}")]
    AvroMalformed(&'static str),
    /// The Confluent wire header names a schema the registry does not know.
    #[error("unknown Avro schema id {0}")]
    UnknownSchemaId(u32),
    /// The writer schema cannot be read as a status event.
    #[error("Avro schema {id} cannot be read as a status event: {why}")]
    IncompatibleSchema {
        /// Schema id.
        id: u32,
        /// What does not fit.
        why: String,
    },
    /// A `content-type` header naming neither JSON nor Avro, or a value that is neither.
    #[error("unsupported content type: {0}")]
    UnknownFormat(String),
    /// The record has no broker timestamp (or a negative one): the future
    /// rule and the dedup window would fall back to each consumer's clock,
    /// and consumer groups would decide differently.
    #[error("record has no broker timestamp")]
    MissingTimestamp,
}

impl Reject {
    /// Short, stable reason code for the `notiflow.dlq.reason` header and metrics labels.
    pub const fn code(&self) -> &'static str {
        match self {
            Reject::EmptyValue => "empty_value",
            Reject::InvalidUtf8(_) => "invalid_utf8",
            Reject::JsonSyntax(_) => "json_syntax",
            Reject::JsonType(_) => "json_type",
            Reject::MissingField(_) => "missing_field",
            Reject::BadEnum { .. } => "bad_enum",
            Reject::BadTimestamp(_) => "bad_timestamp",
            Reject::FutureTimestamp { .. } => "future_timestamp",
            Reject::FieldLength { .. } => "field_length",
            Reject::BadClientId => "bad_client_id",
            Reject::BadRecipient => "bad_recipient",
            Reject::BadCountry(_) => "bad_country",
            Reject::ErrorCodeWithoutFailure(_) => "error_code_without_failure",
            Reject::KeyMissing => "key_missing",
            Reject::KeyMismatch => "key_mismatch",
            Reject::AvroTruncated => "avro_truncated",
            Reject::AvroMalformed(_) => "avro_malformed",
            Reject::UnknownSchemaId(_) => "unknown_schema_id",
            Reject::IncompatibleSchema { .. } => "incompatible_schema",
            Reject::UnknownFormat(_) => "unknown_format",
            Reject::MissingTimestamp => "missing_timestamp",
        }
    }
}

/// A failure of something outside the record: retry can help.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The broker refused or could not be reached.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The schema registry could not be asked (not: it said the id is unknown).
    #[error("schema registry unavailable: {0}")]
    Registry(String),
    /// A local schema file could not be read or parsed.
    #[error("schema file {path}: {why}")]
    SchemaFile {
        /// The file.
        path: String,
        /// What failed.
        why: String,
    },
    /// A dead-letter record could not be written; the batch must not be applied.
    #[error("dead-letter produce failed: {0}")]
    Dlq(String),
    /// Shutdown was requested while waiting.
    #[error("shut down")]
    ShutDown,
    /// Bad configuration (a bug in start-up validation if seen at run time).
    #[error("config: {0}")]
    Config(String),
}

impl IngestError {
    /// Whether retrying the same operation can succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            IngestError::Config(_) | IngestError::SchemaFile { .. } | IngestError::ShutDown
        )
    }
}
