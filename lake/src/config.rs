//! The `[lake]` section of the notiflow config file.
//!
//! Each field's doc comment is the user's reference.

use std::collections::HashMap;

use notiflow_ingest::sink::ConfigError;
use notiflow_schema::secret::{Secret, SecretUrl};
use serde::{Deserialize, Serialize};

/// The lake writer and its table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LakeConfig {
    /// Kafka consumer group of the lake writers (several processes share it).
    pub group_id: String,
    /// Where data and metadata files go: a local folder (`/path` or
    /// `file:///path`) or `s3://bucket/prefix`.
    pub warehouse: String,
    /// Catalog: `sqlite://<file>` (created if missing; relative paths are
    /// relative to the working directory) or `postgres://…` (an Iceberg SQL
    /// catalog, the same tables PyIceberg's and Java's JDBC catalog use).
    pub catalog_uri: SecretUrl,
    /// Catalog name (the `catalog_name` column of the SQL catalog).
    pub catalog_name: String,
    /// Namespace of the table.
    pub namespace: String,
    /// Table name.
    pub table: String,
    /// A snapshot is committed at least this often while rows flow, and on
    /// shutdown, milliseconds.
    pub commit_interval_ms: u64,
    /// A writer with no rows to commit advances the completeness watermark
    /// of the partitions it has caught up with this often (a snapshot
    /// without data files), milliseconds: billing waits for every
    /// partition's watermark to pass the billing day, and an idle partition
    /// would otherwise hold it back.
    pub watermark_interval_ms: u64,
    /// Data files roll over at this size, bytes (the compaction target too).
    pub target_file_size_bytes: u64,
    /// Rows buffered in memory before they are encoded into the open data
    /// files; with `row_group_rows` this bounds the writer's memory.
    pub flush_rows: usize,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// zstd level of the data files (1–22).
    pub zstd_level: i32,
    /// Sort each flushed chunk by `client_id, event_time` (SPEC §4 "where cheap").
    pub sort_chunks: bool,
    /// Most day partitions with a file open at once in a round: a backfill
    /// over years closes its files and opens new ones past this, instead
    /// of one open file (and buffers) per day.
    pub max_open_partitions: usize,
    /// Dedup window in hours: must equal `aggregator.dedup_window_hours`
    /// so that the lake and the counters agree.
    pub dedup_window_hours: u32,
    /// Most records taken from the consumer at once.
    pub batch_max_records: usize,
    /// S3 settings, used when `warehouse` is `s3://…`.
    pub s3: S3Config,
    /// Maintenance (`notiflow lake compact`).
    pub maintenance: MaintenanceConfig,
}

/// S3 (or S3-compatible) object storage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL for S3-compatible servers (empty: AWS).
    pub endpoint: String,
    /// Region.
    pub region: String,
    /// Access key id (empty: the default AWS credential chain).
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: Secret,
    /// Path-style requests (`endpoint/bucket/key`), as most S3-compatible servers want.
    pub path_style: bool,
}

/// Compaction and clean-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// Files smaller than this share of `target_file_size_bytes` are
    /// rewritten (percent).
    pub small_file_percent: u32,
    /// Snapshots older than this are expired, hours (at least the dedup
    /// window: the writer restores its dedup state from them).
    pub expire_after_hours: u32,
    /// Unreferenced files younger than this are left alone (they may belong
    /// to a commit in flight), minutes.
    pub orphan_grace_minutes: u32,
}

impl Default for LakeConfig {
    fn default() -> Self {
        LakeConfig {
            group_id: "notiflow-lake".into(),
            warehouse: "data/warehouse".into(),
            catalog_uri: "sqlite://data/catalog.db".into(),
            catalog_name: "notiflow".into(),
            namespace: "notiflow".into(),
            table: "message_events".into(),
            commit_interval_ms: 60_000,
            watermark_interval_ms: 300_000,
            target_file_size_bytes: 256 * 1024 * 1024,
            flush_rows: 65_536,
            row_group_rows: 131_072,
            zstd_level: 3,
            sort_chunks: false,
            max_open_partitions: 16,
            dedup_window_hours: 24,
            batch_max_records: 50_000,
            s3: S3Config::default(),
            maintenance: MaintenanceConfig {
                small_file_percent: 75,
                expire_after_hours: 7 * 24,
                orphan_grace_minutes: 60,
            },
        }
    }
}

impl LakeConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name = |field: &'static str, v: &str| {
            if v.is_empty()
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
            {
                Err(ConfigError::new(field, "must be non-empty [A-Za-z0-9_-]"))
            } else {
                Ok(())
            }
        };
        if self.group_id.is_empty() {
            return Err(ConfigError::new("lake.group_id", "must not be empty"));
        }
        if self.warehouse.is_empty() {
            return Err(ConfigError::new("lake.warehouse", "must not be empty"));
        }
        if self.warehouse.contains("://")
            && !(self.warehouse.starts_with("s3://") || self.warehouse.starts_with("file://"))
        {
            return Err(ConfigError::new(
                "lake.warehouse",
                "must be a folder, file:///path or s3://bucket/prefix",
            ));
        }
        if self.warehouse.starts_with("s3://")
            && self.warehouse.trim_start_matches("s3://").is_empty()
        {
            return Err(ConfigError::new("lake.warehouse", "names no bucket"));
        }
        if !(self.catalog_uri.starts_with("sqlite://")
            || self.catalog_uri.starts_with("postgres://")
            || self.catalog_uri.starts_with("postgresql://"))
        {
            return Err(ConfigError::new(
                "lake.catalog_uri",
                "must be sqlite://<file> or postgres://…",
            ));
        }
        name("lake.catalog_name", &self.catalog_name)?;
        name("lake.namespace", &self.namespace)?;
        name("lake.table", &self.table)?;
        if !(1_000..=3_600_000).contains(&self.commit_interval_ms) {
            return Err(ConfigError::new(
                "lake.commit_interval_ms",
                "must be within 1000..=3600000",
            ));
        }
        if !(1_000..=3_600_000).contains(&self.watermark_interval_ms) {
            return Err(ConfigError::new(
                "lake.watermark_interval_ms",
                "must be within 1000..=3600000",
            ));
        }
        if !(1 << 20..=1 << 34).contains(&self.target_file_size_bytes) {
            return Err(ConfigError::new(
                "lake.target_file_size_bytes",
                "must be within 1 MiB..=16 GiB",
            ));
        }
        if !(1..=10_000_000).contains(&self.flush_rows) {
            return Err(ConfigError::new(
                "lake.flush_rows",
                "must be within 1..=10000000",
            ));
        }
        if !(1..=4096).contains(&self.max_open_partitions) {
            return Err(ConfigError::new(
                "lake.max_open_partitions",
                "must be within 1..=4096",
            ));
        }
        if !(1..=10_000_000).contains(&self.row_group_rows) {
            return Err(ConfigError::new(
                "lake.row_group_rows",
                "must be within 1..=10000000",
            ));
        }
        if !(1..=22).contains(&self.zstd_level) {
            return Err(ConfigError::new("lake.zstd_level", "must be within 1..=22"));
        }
        if !(1..=24 * 30).contains(&self.dedup_window_hours) {
            return Err(ConfigError::new(
                "lake.dedup_window_hours",
                "must be within 1..=720",
            ));
        }
        if !(1..=1_000_000).contains(&self.batch_max_records) {
            return Err(ConfigError::new(
                "lake.batch_max_records",
                "must be within 1..=1000000",
            ));
        }
        if self.warehouse.starts_with("s3://") && self.s3.region.is_empty() {
            return Err(ConfigError::new(
                "lake.s3.region",
                "must be set for an s3:// warehouse",
            ));
        }
        let m = &self.maintenance;
        if !(1..=100).contains(&m.small_file_percent) {
            return Err(ConfigError::new(
                "lake.maintenance.small_file_percent",
                "must be within 1..=100",
            ));
        }
        if m.expire_after_hours <= self.dedup_window_hours {
            return Err(ConfigError::new(
                "lake.maintenance.expire_after_hours",
                "must exceed lake.dedup_window_hours (the dedup state is restored from the snapshots)",
            ));
        }
        // A round writes its files up to one commit interval before it
        // commits them, and a commit that conflicts or waits on the object
        // store takes longer still: files younger than that may belong to a
        // commit in flight, so orphan removal must leave them alone.
        let least_grace_ms = (3 * self.commit_interval_ms).max(10 * 60_000);
        if u64::from(m.orphan_grace_minutes) * 60_000 < least_grace_ms {
            return Err(ConfigError::new(
                "lake.maintenance.orphan_grace_minutes",
                format!(
                    "must be at least {} (3 commit intervals, and 10 minutes at least): younger files may belong to a commit in flight",
                    least_grace_ms.div_ceil(60_000)
                ),
            ));
        }
        Ok(())
    }

    /// The warehouse as a URL iceberg understands (`file:///abs` or `s3://…`).
    pub fn warehouse_url(&self) -> String {
        if self.warehouse.starts_with("s3://") || self.warehouse.starts_with("file://") {
            return self.warehouse.trim_end_matches('/').to_string();
        }
        let path = std::path::Path::new(&self.warehouse);
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|d| d.join(path))
                .unwrap_or_else(|_| path.to_path_buf())
        };
        format!("file://{}", abs.display())
            .trim_end_matches('/')
            .to_string()
    }

    /// The FileIO properties of the warehouse (S3 endpoint and keys).
    pub fn storage_props(&self) -> HashMap<String, String> {
        let mut p = HashMap::new();
        if self.warehouse.starts_with("s3://") {
            let s = &self.s3;
            if !s.endpoint.is_empty() {
                p.insert("s3.endpoint".into(), s.endpoint.clone());
            }
            p.insert("s3.region".into(), s.region.clone());
            if !s.access_key_id.is_empty() {
                p.insert("s3.access-key-id".into(), s.access_key_id.clone());
                p.insert(
                    "s3.secret-access-key".into(),
                    s.secret_access_key.expose().to_string(),
                );
            }
            p.insert("s3.path-style-access".into(), s.path_style.to_string());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        LakeConfig::default().validate().unwrap();
    }

    #[test]
    fn a_bad_field_is_named() {
        let bad = |c: LakeConfig| c.validate().unwrap_err().field;
        assert_eq!(
            bad(LakeConfig {
                warehouse: "http://x".into(),
                ..Default::default()
            }),
            "lake.warehouse"
        );
        let mut maintenance = LakeConfig::default().maintenance;
        maintenance.expire_after_hours = 24;
        assert_eq!(
            bad(LakeConfig {
                maintenance,
                ..Default::default()
            }),
            "lake.maintenance.expire_after_hours"
        );
        assert_eq!(
            bad(LakeConfig {
                catalog_uri: "mysql://x".into(),
                ..Default::default()
            }),
            "lake.catalog_uri"
        );
    }

    #[test]
    fn the_orphan_grace_must_outlast_a_commit_in_flight() {
        let with = |grace: u32, interval_ms: u64| {
            let mut c = LakeConfig {
                commit_interval_ms: interval_ms,
                ..Default::default()
            };
            c.maintenance.orphan_grace_minutes = grace;
            c.validate().map_err(|e| e.field)
        };
        let field = "lake.maintenance.orphan_grace_minutes".to_string();
        assert_eq!(
            with(0, 60_000),
            Err(field.clone()),
            "0 would delete files in flight"
        );
        assert_eq!(
            with(1, 60_000),
            Err(field.clone()),
            "the grace equal to the interval"
        );
        assert_eq!(with(9, 60_000), Err(field.clone()), "under 10 minutes");
        assert_eq!(with(10, 60_000), Ok(()));
        // A 10-minute commit interval needs 30 minutes.
        assert_eq!(with(29, 600_000), Err(field));
        assert_eq!(with(30, 600_000), Ok(()));
    }

    #[test]
    fn a_relative_warehouse_becomes_a_file_url() {
        let mut c = LakeConfig {
            warehouse: "/tmp/wh/".into(),
            ..Default::default()
        };
        assert_eq!(c.warehouse_url(), "file:///tmp/wh");
        c.warehouse = "s3://b/p".into();
        assert_eq!(c.warehouse_url(), "s3://b/p");
    }
}
