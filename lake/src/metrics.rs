//! The lake writer's Prometheus series, registered in the registry the
//! binary serves on `/metrics`.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every series of the lake writer.
#[derive(Clone)]
pub struct Metrics {
    /// Records consumed.
    pub records: IntCounter,
    /// Rows committed to the table (`rate()` of it is rows/s).
    pub rows: IntCounter,
    /// Records by outcome: written, duplicate, rejected, stale.
    pub events: IntCounterVec,
    /// Commits by outcome: committed, fenced, conflict (retried), failed.
    pub commits: IntCounterVec,
    /// Seconds from closing a round's files to its snapshot being current.
    pub commit_seconds: Histogram,
    /// Data files added per commit.
    pub files_per_commit: Histogram,
    /// Bytes of data files added per commit.
    pub bytes_per_commit: Histogram,
    /// Records behind the high watermark, per partition owned (from the
    /// table's committed offsets).
    pub lag: IntGaugeVec,
    /// Offsets by which a partition's stored offset lies past the end of
    /// its log (an alarm: nothing of it is taken meanwhile).
    pub beyond_log_end: IntGaugeVec,
    /// 1 for a partition held because its log is not the one its stored
    /// offset belongs to (an alarm: nothing of it is taken meanwhile).
    pub held: IntGaugeVec,
    /// Events held in the dedup tables.
    pub dedup_entries: IntGauge,
}

impl Metrics {
    /// Creates the series and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Metrics {
            records: IntCounter::new(
                "notiflow_lake_records_total",
                "Records consumed from the event topic.",
            )?,
            rows: IntCounter::new(
                "notiflow_lake_rows_committed_total",
                "Rows committed to the Iceberg table.",
            )?,
            events: IntCounterVec::new(
                Opts::new(
                    "notiflow_lake_events_total",
                    "Records by outcome (written, duplicate, rejected, stale).",
                ),
                &["outcome"],
            )?,
            commits: IntCounterVec::new(
                Opts::new(
                    "notiflow_lake_commits_total",
                    "Commit attempts by outcome (committed, fenced, conflict, failed).",
                ),
                &["outcome"],
            )?,
            commit_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "notiflow_lake_commit_seconds",
                    "From closing a round's data files to its snapshot being current.",
                )
                .buckets(vec![
                    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
            )?,
            files_per_commit: Histogram::with_opts(
                HistogramOpts::new(
                    "notiflow_lake_files_per_commit",
                    "Data files added by one commit.",
                )
                .buckets(vec![0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            )?,
            bytes_per_commit: Histogram::with_opts(
                HistogramOpts::new(
                    "notiflow_lake_bytes_per_commit",
                    "Bytes of data files added by one commit.",
                )
                .buckets(prometheus::exponential_buckets(65_536.0, 4.0, 10)?),
            )?,
            lag: IntGaugeVec::new(
                Opts::new(
                    "notiflow_lake_consumer_lag",
                    "Records between the committed offset and the high watermark.",
                ),
                &["partition"],
            )?,
            beyond_log_end: IntGaugeVec::new(
                Opts::new(
                    "notiflow_lake_offset_beyond_log_end",
                    "Offsets by which the stored next offset lies past the partition's log end (the broker lost its tail or the topic was created again); nothing of the partition is taken until an operator decides.",
                ),
                &["partition"],
            )?,
            held: IntGaugeVec::new(
                Opts::new(
                    "notiflow_lake_partition_held",
                    "1 while a partition is held: its log is not the one the stored offset belongs to (the record before it changed, or the log was reset below it); nothing of it is taken until an operator accepts the gap or re-seeds the log.",
                ),
                &["partition"],
            )?,
            dedup_entries: IntGauge::new(
                "notiflow_lake_dedup_entries",
                "Events remembered by the dedup tables of the owned partitions.",
            )?,
        };
        registry.register(Box::new(m.records.clone()))?;
        registry.register(Box::new(m.rows.clone()))?;
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.commits.clone()))?;
        registry.register(Box::new(m.commit_seconds.clone()))?;
        registry.register(Box::new(m.files_per_commit.clone()))?;
        registry.register(Box::new(m.bytes_per_commit.clone()))?;
        registry.register(Box::new(m.lag.clone()))?;
        registry.register(Box::new(m.beyond_log_end.clone()))?;
        registry.register(Box::new(m.held.clone()))?;
        registry.register(Box::new(m.dedup_entries.clone()))?;
        // Known outcomes show as 0 before the first commit, so rates and
        // alerts on them have a series to work with.
        for outcome in ["committed", "fenced", "conflict", "failed"] {
            m.commits.with_label_values(&[outcome]);
        }
        Ok(m)
    }
}
