//! Detail rows into an Apache Iceberg table of Parquet files, committed
//! exactly once (SPEC §4).
//!
//! - [`rows`]: the table's schema and the row buffer (events → Arrow);
//! - [`files`]: Parquet data files of a commit round (iceberg-rust writers);
//! - [`table`]: catalog, table creation, fenced snapshot commits;
//! - [`dedup_log`]: the dedup state persisted with each commit;
//! - [`round`]: one commit round without Kafka (take records, fenced commit);
//! - [`service`]: the consumer-group member that ties them together;
//! - [`maintenance`]: compaction, snapshot expiry, orphan removal;
//! - [`bulk`]: events appended without Kafka (tests, benchmarks, backfills);
//! - [`store`]: an opendal operator over the warehouse (or any folder/bucket).

pub mod bulk;
pub mod config;
pub mod dedup_log;
pub mod error;
pub mod files;
pub mod inspect;
pub mod maintenance;
pub mod metrics;
pub mod round;
pub mod rows;
pub mod service;
pub mod store;
pub mod table;

pub use config::{LakeConfig, MaintenanceConfig, S3Config};
pub use error::LakeError;
pub use metrics::Metrics;
pub use service::{RunStats, run};
pub use table::Lake;
