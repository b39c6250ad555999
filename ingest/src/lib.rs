//! notiflow ingest: from Kafka records to validated status events.
//!
//! ```text
//!  whatsapp.status.v1 ──▶ Source ──▶ Decoder (JSON | Avro+registry) ──▶ validate ──▶ Event<'_>
//!                                                   │ any broken rule
//!                                                   ▼
//!                                    whatsapp.status.v1.dlq (original bytes + reason headers)
//! ```
//!
//! The aggregator and the lake writer consume through [`Source`] and
//! [`Decoder`], so every consumer group reaches the same verdict on every
//! record (the future-time rule uses the record's timestamp, not a wall clock).
//! The standalone [`service::run`] owns the dead-letter topic.
//!
//! Both sinks are a [`Member`]: a consumer-group member that keeps its
//! offsets and dedup state with its output, loads them on assignment through
//! the sink's [`StateStore`], and hands partition changes to its loop. What
//! a sink uses of ingest is in [`sink`], in one place.

pub mod codec;
pub mod config;
pub mod corpus;
pub mod cursor;
pub mod dedup;
pub mod dlq;
pub mod error;
pub mod failpoint;
pub mod kafka;
pub mod member;
pub mod metrics;
pub mod rebalance;
pub mod registry;
pub mod retry;
pub mod schema_hold;
pub mod service;
pub mod sink;
pub mod source;
pub mod validate;

pub use codec::{Decoder, Format, RecordView};
pub use config::{ConfigError, IngestConfig, KafkaConfig, SchemaRegistryConfig};
pub use error::{IngestError, Reject};
pub use member::{Member, MemberState, StateStore};
pub use metrics::Metrics;
pub use registry::SchemaRegistry;
pub use source::Source;
