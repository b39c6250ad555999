//! The API's Prometheus series: requests by route and status with their
//! in-server latency, counter reads by outcome (fresh, stale, failed), the
//! breaker, live streams (open, dropped as slow, delta lag), report runs,
//! connections and per-key quota refusals.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Every series, registered once.
#[derive(Clone)]
pub struct ApiMetrics {
    /// Requests by route template and status code.
    pub requests: IntCounterVec,
    /// In-server request latency by route template, seconds.
    pub latency: HistogramVec,
    /// Counter reads by outcome: fresh (from Redis), cached (younger than
    /// `fresh_cache_ms`), stale, failed.
    pub counter_reads: IntCounterVec,
    /// 1 while the Redis circuit breaker is open or probing.
    pub breaker_open: IntGauge,
    /// Live streams open now.
    pub streams: IntGauge,
    /// Live streams dropped because they fell `stream_queue` frames behind.
    pub streams_dropped: IntCounter,
    /// Deltas read from Redis and fanned out.
    pub deltas: IntCounter,
    /// Seconds from the aggregator's apply to the fan-out of a delta.
    pub delta_lag: Histogram,
    /// Report runs started through the API, by kind and outcome.
    pub report_runs: IntCounterVec,
    /// Connections open now.
    pub connections: IntGauge,
    /// Connections answered 503 and closed because `max_connections` were open.
    pub connections_refused: IntCounter,
    /// Requests refused by a per-key quota (429), by what.
    pub quota_refusals: IntCounterVec,
}

impl ApiMetrics {
    /// Registers the series in `reg`.
    pub fn new(reg: &Registry) -> Result<ApiMetrics, prometheus::Error> {
        let m = ApiMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "notiflow_api_requests_total",
                    "HTTP requests by route and status",
                ),
                &["route", "status"],
            )?,
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "notiflow_api_request_seconds",
                    "In-server time to the response head, by route",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0,
                ]),
                &["route"],
            )?,
            counter_reads: IntCounterVec::new(
                Opts::new(
                    "notiflow_api_counter_reads_total",
                    "Counter reads by outcome",
                ),
                &["outcome"],
            )?,
            breaker_open: IntGauge::new(
                "notiflow_api_redis_breaker_open",
                "1 while the Redis circuit breaker is open",
            )?,
            streams: IntGauge::new("notiflow_api_streams", "Live SSE streams open")?,
            streams_dropped: IntCounter::new(
                "notiflow_api_streams_dropped_total",
                "Live streams dropped for falling behind",
            )?,
            deltas: IntCounter::new("notiflow_api_deltas_total", "Deltas fanned out")?,
            delta_lag: Histogram::with_opts(
                HistogramOpts::new(
                    "notiflow_api_delta_lag_seconds",
                    "From the aggregator's apply to the API's fan-out",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )?,
            report_runs: IntCounterVec::new(
                Opts::new(
                    "notiflow_api_report_runs_total",
                    "Report runs by kind and outcome",
                ),
                &["kind", "outcome"],
            )?,
            connections: IntGauge::new("notiflow_api_connections", "Open connections")?,
            connections_refused: IntCounter::new(
                "notiflow_api_connections_refused_total",
                "Connections refused (503) at api.max_connections",
            )?,
            quota_refusals: IntCounterVec::new(
                Opts::new(
                    "notiflow_api_quota_refusals_total",
                    "Requests refused with 429 by a per-key quota, by quota",
                ),
                &["quota"],
            )?,
        };
        reg.register(Box::new(m.requests.clone()))?;
        reg.register(Box::new(m.connections.clone()))?;
        reg.register(Box::new(m.connections_refused.clone()))?;
        reg.register(Box::new(m.quota_refusals.clone()))?;
        reg.register(Box::new(m.latency.clone()))?;
        reg.register(Box::new(m.counter_reads.clone()))?;
        reg.register(Box::new(m.breaker_open.clone()))?;
        reg.register(Box::new(m.streams.clone()))?;
        reg.register(Box::new(m.streams_dropped.clone()))?;
        reg.register(Box::new(m.deltas.clone()))?;
        reg.register(Box::new(m.delta_lag.clone()))?;
        reg.register(Box::new(m.report_runs.clone()))?;
        Ok(m)
    }
}
