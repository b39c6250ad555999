//! The reports' Prometheus series: how long each report took (by kind,
//! engine and outcome) and, for the scheduler, when each job last
//! succeeded. On-demand runs (CLI, API) and scheduled runs share them
//! because both go through [`crate::Reports`].

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// Every series of the reports.
#[derive(Clone)]
pub struct Metrics {
    /// Seconds per report run, by `kind` (billing, detail), `engine` and
    /// `outcome` (ok, error).
    pub run_seconds: HistogramVec,
    /// Rows written by finished runs, by kind.
    pub rows: IntCounterVec,
    /// Unix time of a scheduled job's last successful run, by `report_job`
    /// (not `job`: Prometheus keeps that label for the scrape job).
    pub job_last_success: GaugeVec,
    /// Scheduled slots that failed after all their attempts, by `report_job`.
    pub job_failures: IntCounterVec,
    /// Slots of a scheduled job within the catch-up window left failed
    /// after all their attempts (not run again until an operator re-runs
    /// the day), by `report_job`.
    pub job_failed_slots: IntGaugeVec,
    /// Slots of a scheduled job waiting for the lake to be complete up to
    /// their day's end (`waiting_for_data`), by `report_job`.
    pub job_waiting_slots: IntGaugeVec,
}

impl Metrics {
    /// Creates the series and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Metrics {
            run_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "notiflow_reports_run_seconds",
                    "Duration of one report run, by kind, engine and outcome.",
                )
                .buckets(vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                    1800.0,
                ]),
                &["kind", "engine", "outcome"],
            )?,
            rows: IntCounterVec::new(
                Opts::new(
                    "notiflow_reports_rows_total",
                    "Rows written by successful report runs, by kind.",
                ),
                &["kind"],
            )?,
            job_last_success: GaugeVec::new(
                Opts::new(
                    "notiflow_reports_job_last_success_timestamp_seconds",
                    "Unix time at which a scheduled job last succeeded.",
                ),
                &["report_job"],
            )?,
            job_failures: IntCounterVec::new(
                Opts::new(
                    "notiflow_reports_job_failures_total",
                    "Scheduled slots that failed after their last attempt.",
                ),
                &["report_job"],
            )?,
            job_failed_slots: IntGaugeVec::new(
                Opts::new(
                    "notiflow_reports_job_failed_slots",
                    "Slots of a scheduled job in the catch-up window left failed after their last attempt.",
                ),
                &["report_job"],
            )?,
            job_waiting_slots: IntGaugeVec::new(
                Opts::new(
                    "notiflow_reports_job_waiting_slots",
                    "Slots of a scheduled job waiting for the lake to be complete up to their day's end.",
                ),
                &["report_job"],
            )?,
        };
        registry.register(Box::new(m.run_seconds.clone()))?;
        registry.register(Box::new(m.rows.clone()))?;
        registry.register(Box::new(m.job_last_success.clone()))?;
        registry.register(Box::new(m.job_failures.clone()))?;
        registry.register(Box::new(m.job_failed_slots.clone()))?;
        registry.register(Box::new(m.job_waiting_slots.clone()))?;
        Ok(m)
    }

    /// Records one finished run.
    pub fn observe(&self, kind: &str, engine: &str, seconds: f64, rows: Option<u64>) {
        let outcome = if rows.is_some() { "ok" } else { "error" };
        self.run_seconds
            .with_label_values(&[kind, engine, outcome])
            .observe(seconds);
        if let Some(n) = rows {
            self.rows.with_label_values(&[kind]).inc_by(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_observed_under_its_labels() {
        let r = Registry::new();
        let m = Metrics::new(&r).unwrap();
        m.observe("billing", "duckdb", 1.5, Some(10));
        m.observe("detail", "datafusion", 0.2, None);
        let h = m
            .run_seconds
            .with_label_values(&["billing", "duckdb", "ok"]);
        assert_eq!(h.get_sample_count(), 1);
        assert!((h.get_sample_sum() - 1.5).abs() < 1e-9);
        assert_eq!(
            m.run_seconds
                .with_label_values(&["detail", "datafusion", "error"])
                .get_sample_count(),
            1
        );
        assert_eq!(m.rows.with_label_values(&["billing"]).get(), 10);
        assert_eq!(m.rows.with_label_values(&["detail"]).get(), 0);
    }
}
