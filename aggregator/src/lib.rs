//! notiflow aggregator: per-minute, per-client counters in Redis, applied
//! exactly once together with the consumer offsets (SPEC §3).
//!
//! ```text
//!  whatsapp.status.v1 ──▶ Source (group notiflow-aggregator) ──▶ batch::process
//!        (decode + validate via ingest, dedup per partition, client × minute × status)
//!                                   │
//!                                   ▼  one Lua step: CAS offsets + counters + dedup + delta
//!                                 Redis ──▶ nf:deltas stream ──▶ api (live dashboards)
//! ```
//!
//! Offsets live in Redis with the counters, never in Kafka, so a crash at any
//! instant neither loses nor doubles a count, and a zombie member (one whose
//! partitions moved) is fenced by the offset compare-and-set. The key layout
//! is in `notiflow_schema::counters` and explained in `aggregator/README.md`.

pub mod batch;
pub mod config;
pub mod error;
pub mod metrics;
pub mod refusal;
pub mod service;
pub mod sink;

#[cfg(test)]
mod sim;

pub use config::{AggregatorConfig, RedisConfig};
pub use error::AggregatorError;
pub use metrics::Metrics;
