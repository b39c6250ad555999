//! The validator's Prometheus series (`notiflow run ingest`), registered in
//! the registry the binary serves on `/metrics`: what came in, what was
//! dead-lettered and why, how long a batch took and how far behind it is.

use std::collections::HashMap;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Sets `lag{partition}` to the records between `next` (the next offset the
/// consumer will read or has committed) and the partition's high watermark,
/// once librdkafka has reported one. The one lag rule of every consumer
/// (validator, aggregator, lake writer).
pub fn set_lag(lag: &IntGaugeVec, highs: &HashMap<i32, i64>, partition: i32, next: i64) {
    if let Some(&high) = highs.get(&partition) {
        set_lag_to(lag, partition, high, next);
    }
}

/// [`set_lag`] for one partition whose high watermark `high` is known.
pub fn set_lag_to(lag: &IntGaugeVec, partition: i32, high: i64, next: i64) {
    lag.with_label_values(&[partition.to_string().as_str()])
        .set((high - next).max(0));
}

/// Every series of the ingest service.
#[derive(Clone)]
pub struct Metrics {
    /// Records consumed (`notiflow_ingest_records_total`).
    pub records: IntCounter,
    /// Valid events handed on.
    pub valid: IntCounter,
    /// Records dead-lettered, by reason code.
    pub dlq: IntCounterVec,
    /// Seconds from a batch in hand to its offsets committed (decode,
    /// validate, dead-letter acknowledged, commit).
    pub batch_seconds: Histogram,
    /// Failed offset commits (the batch is seen again after a restart).
    pub commit_errors: IntCounter,
    /// Records between the consumed offset and the high watermark, per partition.
    pub lag: IntGaugeVec,
    /// Dead letters written as a bounded prefix (the record was too large).
    pub dlq_truncated: IntCounter,
    /// Dead letters given up on after the bounded retries: an alarm.
    pub dlq_failures: IntCounter,
    /// Dead letters sent and not yet acknowledged (or given up).
    pub dlq_pending: IntGauge,
}

impl Metrics {
    /// Creates the series and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Metrics {
            records: IntCounter::new(
                "notiflow_ingest_records_total",
                "Records consumed from the event topic.",
            )?,
            valid: IntCounter::new(
                "notiflow_ingest_valid_total",
                "Records that decoded and passed every rule.",
            )?,
            dlq: IntCounterVec::new(
                Opts::new(
                    "notiflow_ingest_dlq_records_total",
                    "Records written to the dead-letter topic, by reason.",
                ),
                &["reason"],
            )?,
            batch_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "notiflow_ingest_batch_seconds",
                    "From a batch in hand to its offsets committed.",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )?,
            commit_errors: IntCounter::new(
                "notiflow_ingest_commit_errors_total",
                "Offset commits that failed (the batch is read again after a restart).",
            )?,
            lag: IntGaugeVec::new(
                Opts::new(
                    "notiflow_ingest_consumer_lag",
                    "Records between the consumed offset and the high watermark.",
                ),
                &["partition"],
            )?,
            dlq_truncated: IntCounter::new(
                "notiflow_ingest_dlq_truncated_total",
                "Dead letters written as a bounded prefix with the original size and sha256.",
            )?,
            dlq_failures: IntCounter::new(
                "notiflow_ingest_dlq_failures_total",
                "Dead letters the broker kept refusing, given up on (the record stays in the source topic).",
            )?,
            dlq_pending: IntGauge::new(
                "notiflow_ingest_dlq_pending",
                "Dead letters sent and not yet acknowledged or given up; their source partitions are committed up to the oldest of them.",
            )?,
        };
        registry.register(Box::new(m.records.clone()))?;
        registry.register(Box::new(m.dlq_pending.clone()))?;
        registry.register(Box::new(m.dlq_truncated.clone()))?;
        registry.register(Box::new(m.dlq_failures.clone()))?;
        registry.register(Box::new(m.valid.clone()))?;
        registry.register(Box::new(m.dlq.clone()))?;
        registry.register(Box::new(m.batch_seconds.clone()))?;
        registry.register(Box::new(m.commit_errors.clone()))?;
        registry.register(Box::new(m.lag.clone()))?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_every_series_once() {
        let r = Registry::new();
        let m = Metrics::new(&r).unwrap();
        m.dlq.with_label_values(&["bad_json"]).inc();
        m.lag.with_label_values(&["0"]).set(3);
        let names: Vec<_> = r.gather().iter().map(|f| f.name().to_string()).collect();
        for n in [
            "notiflow_ingest_records_total",
            "notiflow_ingest_valid_total",
            "notiflow_ingest_dlq_records_total",
            "notiflow_ingest_batch_seconds",
            "notiflow_ingest_commit_errors_total",
            "notiflow_ingest_consumer_lag",
            "notiflow_ingest_dlq_truncated_total",
            "notiflow_ingest_dlq_failures_total",
            "notiflow_ingest_dlq_pending",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        assert!(Metrics::new(&r).is_err(), "a second registration must fail");
    }
}
