//! The answers of counter reads (`Series`, `Top`) as callers receive
//! them, built from what Redis returned.

use notiflow_schema::Micros;
use notiflow_schema::time::format_rfc3339;
use serde::Serialize;
use utoipa::ToSchema;

use super::range::{Range, Step, fold, slots};

/// Counts of one bucket, in the order of `slots`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Point {
    /// Bucket start, RFC 3339 UTC.
    pub t: String,
    /// Counts per slot: accepted, sent, delivered, read, failed, then sent per category.
    pub c: Vec<u64>,
}

/// One client's counters over a range.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Series {
    /// The client.
    pub client: String,
    /// Bucket size.
    pub step: Step,
    /// First bucket, RFC 3339.
    pub from: String,
    /// End of the last bucket (exclusive), RFC 3339.
    pub to: String,
    /// Names of the counts in each point's `c`.
    pub slots: Vec<String>,
    /// One point per bucket, oldest first, zeros included.
    pub points: Vec<Point>,
    /// True when Redis could not be read and these are the last known values.
    pub stale: bool,
    /// When these values were read from Redis, RFC 3339.
    pub as_of: String,
}

/// One client in a top list.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopEntry {
    /// The client.
    pub client: String,
    /// Events (all statuses) in the minute.
    pub events: u64,
}

/// The busiest clients of one minute.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Top {
    /// The minute, RFC 3339.
    pub minute: String,
    /// Busiest first.
    pub clients: Vec<TopEntry>,
    /// True when Redis could not be read and these are the last known values.
    pub stale: bool,
    /// When these values were read from Redis, RFC 3339.
    pub as_of: String,
}

/// Something that can be answered stale.
pub trait Stale: Clone + Send + Sync + 'static {
    /// Marks the copy as last known values.
    fn mark_stale(&mut self);
}

impl Stale for Series {
    fn mark_stale(&mut self) {
        self.stale = true;
    }
}

impl Stale for Top {
    fn mark_stale(&mut self) {
        self.stale = true;
    }
}

pub(crate) fn make_series(client: &str, r: &Range, read: &[(i64, String)], now: Micros) -> Series {
    let counts = fold(r, read);
    Series {
        client: client.to_string(),
        step: r.step,
        from: format_rfc3339(r.from * 60_000_000),
        to: format_rfc3339(r.to * 60_000_000),
        slots: slots(),
        points: r
            .buckets()
            .zip(counts)
            .map(|(m, c)| Point {
                t: format_rfc3339(m * 60_000_000),
                c: c.to_vec(),
            })
            .collect(),
        stale: false,
        as_of: format_rfc3339(now),
    }
}

pub(crate) fn make_top(minute: i64, rows: Vec<(String, f64)>, now: Micros) -> Top {
    Top {
        minute: format_rfc3339(minute * 60_000_000),
        clients: rows
            .into_iter()
            .map(|(client, score)| TopEntry {
                client,
                events: score.max(0.0) as u64,
            })
            .collect(),
        stale: false,
        as_of: format_rfc3339(now),
    }
}
