//! The aggregator's Prometheus series, registered in the registry the
//! binary serves on `/metrics`.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every series of the aggregator.
#[derive(Clone)]
pub struct Metrics {
    /// Records consumed (`notiflow_aggregator_records_total`).
    pub records: IntCounter,
    /// Events by outcome: counted, duplicate, late_dropped, rejected, stale.
    pub events: IntCounterVec,
    /// Records the ingest group dead-letters, by reason.
    pub dlq: IntCounterVec,
    /// Duplicates dropped by the dedup window.
    pub dedup_hits: IntCounter,
    /// Events too old for their minute bucket.
    pub late_dropped: IntCounter,
    /// Seconds from the APPLY call to its reply.
    pub apply_seconds: Histogram,
    /// Seconds from the broker timestamp of an event to its apply in Redis.
    pub event_to_redis_seconds: Histogram,
    /// Batches refused because another member moved the offsets (zombie fencing).
    pub fenced: IntCounter,
    /// Failed Redis calls (each is retried).
    pub redis_errors: IntCounter,
    /// Records behind the high watermark, per partition owned.
    pub lag: IntGaugeVec,
    /// Offsets by which a partition's stored offset lies past the end of
    /// its log (an alarm: nothing of it is taken meanwhile).
    pub beyond_log_end: IntGaugeVec,
    /// 1 for a partition held because its log is not the one its stored
    /// offset belongs to (an alarm: nothing of it is taken meanwhile).
    pub held: IntGaugeVec,
    /// 1 for a partition held because Redis refuses its batches: a key of
    /// another type (`refusal`); labelled with that key.
    pub refused: IntGaugeVec,
    /// Partitions owned.
    pub partitions: IntGauge,
    /// Events held in the dedup tables.
    pub dedup_entries: IntGauge,
}

impl Metrics {
    /// Creates the series and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let latency_buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0,
        ];
        let m = Metrics {
            records: IntCounter::new(
                "notiflow_aggregator_records_total",
                "Records consumed from the event topic.",
            )?,
            events: IntCounterVec::new(
                Opts::new(
                    "notiflow_aggregator_events_total",
                    "Records by outcome (counted, duplicate, late_dropped, rejected, stale).",
                ),
                &["outcome"],
            )?,
            dlq: IntCounterVec::new(
                Opts::new(
                    "notiflow_aggregator_dlq_records_total",
                    "Records that break a rule (dead-lettered by the ingest group), by reason.",
                ),
                &["reason"],
            )?,
            dedup_hits: IntCounter::new(
                "notiflow_aggregator_dedup_hits_total",
                "Duplicate event_ids dropped within the dedup window.",
            )?,
            late_dropped: IntCounter::new(
                "notiflow_aggregator_late_dropped_total",
                "Events older than the minute-bucket retention (roll-ups only).",
            )?,
            apply_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "notiflow_aggregator_batch_apply_seconds",
                    "Latency of one atomic Redis apply.",
                )
                .buckets(latency_buckets.clone()),
            )?,
            event_to_redis_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "notiflow_aggregator_event_to_redis_seconds",
                    "From an event's broker timestamp to its counters in Redis.",
                )
                .buckets(latency_buckets),
            )?,
            fenced: IntCounter::new(
                "notiflow_aggregator_fenced_batches_total",
                "Batches refused by the offset compare-and-set (partition moved).",
            )?,
            redis_errors: IntCounter::new(
                "notiflow_aggregator_redis_errors_total",
                "Redis calls that failed and were retried.",
            )?,
            lag: IntGaugeVec::new(
                Opts::new(
                    "notiflow_aggregator_consumer_lag",
                    "Records between the applied offset and the high watermark.",
                ),
                &["partition"],
            )?,
            beyond_log_end: IntGaugeVec::new(
                Opts::new(
                    "notiflow_aggregator_offset_beyond_log_end",
                    "Offsets by which the stored next offset lies past the partition's log end (the broker lost its tail or the topic was created again); nothing of the partition is taken until an operator decides.",
                ),
                &["partition"],
            )?,
            held: IntGaugeVec::new(
                Opts::new(
                    "notiflow_aggregator_partition_held",
                    "1 while a partition is held: its log is not the one the stored offset belongs to (the record before it changed, or the log was reset below it); nothing of it is taken until an operator accepts the gap or re-seeds the log.",
                ),
                &["partition"],
            )?,
            refused: IntGaugeVec::new(
                Opts::new(
                    "notiflow_aggregator_partition_refused",
                    "1 while Redis refuses a partition's batches because `key` holds another type (a foreign writer); nothing of the partition is taken (nothing lost) until the key is removed, the other partitions go on.",
                ),
                &["partition", "key"],
            )?,
            partitions: IntGauge::new(
                "notiflow_aggregator_partitions",
                "Partitions owned by this process.",
            )?,
            dedup_entries: IntGauge::new(
                "notiflow_aggregator_dedup_entries",
                "Events remembered by the dedup tables of the owned partitions.",
            )?,
        };
        registry.register(Box::new(m.records.clone()))?;
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.dlq.clone()))?;
        registry.register(Box::new(m.dedup_hits.clone()))?;
        registry.register(Box::new(m.late_dropped.clone()))?;
        registry.register(Box::new(m.apply_seconds.clone()))?;
        registry.register(Box::new(m.event_to_redis_seconds.clone()))?;
        registry.register(Box::new(m.fenced.clone()))?;
        registry.register(Box::new(m.redis_errors.clone()))?;
        registry.register(Box::new(m.lag.clone()))?;
        registry.register(Box::new(m.beyond_log_end.clone()))?;
        registry.register(Box::new(m.held.clone()))?;
        registry.register(Box::new(m.refused.clone()))?;
        registry.register(Box::new(m.partitions.clone()))?;
        registry.register(Box::new(m.dedup_entries.clone()))?;
        Ok(m)
    }
}
