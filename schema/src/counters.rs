//! The Redis layout of the live counters and the delta payload (SPEC §3).
//!
//! The aggregator writes these keys and the API reads them, so their names
//! live here, in one place. `aggregator/README.md` explains the layout; in
//! short, with the default prefix `nf`:
//!
//! ```text
//! nf:m:{acme}:2026112322   HASH  "07:delivered" → 12, "07:sent.marketing" → 3   minutes of one UTC hour
//! nf:h:{acme}:20261123     HASH  "22:delivered" → 840, …                         hours of one UTC day
//! nf:top:202611232207      ZSET  client → events in that minute
//! nf:clients               SET     every client ever counted
//! nf:deltas                STREAM  one entry per applied batch, field "d" = Delta JSON
//! ```
//!
//! The hour hash of a day is both the hourly roll-up and, summed over its
//! hours, the daily one (one `HGETALL` per day). Every key of a client carries
//! the hash tag `{client}`, so on Redis Cluster one client's keys share a
//! slot and its last 24 h of minutes (25 hour hashes) are read with one
//! pipelined round trip to one node.

use serde::{Deserialize, Serialize};

use crate::time::civil_from_days;
use crate::{Category, Status};

/// Counters per cell: one per status, then one per category of `sent`.
pub const SLOTS: usize = 5 + 4;

/// Counts of one client × minute (or hour, or day) cell, in [`slot_name`] order.
pub type Counts = [u64; SLOTS];

/// The slot that counts `status`.
pub const fn status_slot(status: Status) -> usize {
    status.index()
}

/// The slot that counts `sent` events of `category`.
pub const fn sent_category_slot(category: Category) -> usize {
    5 + category.index()
}

/// Field-name suffix of a slot: the status (`delivered`) or `sent.<category>`.
pub const fn slot_name(slot: usize) -> &'static str {
    const NAMES: [&str; SLOTS] = [
        "accepted",
        "sent",
        "delivered",
        "read",
        "failed",
        "sent.marketing",
        "sent.utility",
        "sent.authentication",
        "sent.service",
    ];
    NAMES[slot]
}

/// The slot a field-name suffix names.
pub fn slot_of(name: &str) -> Option<usize> {
    (0..SLOTS).find(|&s| slot_name(s) == name)
}

/// UTC calendar parts of a minute number (minutes since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinuteParts {
    /// Year.
    pub year: i64,
    /// Month 1–12.
    pub month: i64,
    /// Day 1–31.
    pub day: i64,
    /// Hour 0–23.
    pub hour: i64,
    /// Minute 0–59.
    pub minute: i64,
}

impl MinuteParts {
    /// Splits minute number `m` into UTC calendar parts.
    pub const fn of(m: i64) -> Self {
        let days = m.div_euclid(1440);
        let in_day = m.rem_euclid(1440);
        let (year, month, day) = civil_from_days(days);
        MinuteParts {
            year,
            month,
            day,
            hour: in_day / 60,
            minute: in_day % 60,
        }
    }
}

/// Key names under one prefix (`nf` by default; tests use a fresh one each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash of the minutes of the UTC hour holding minute `m`; fields `MM:<slot>`.
    pub fn minutes(&self, client: &str, m: i64) -> String {
        let p = MinuteParts::of(m);
        format!(
            "{}:m:{{{client}}}:{:04}{:02}{:02}{:02}",
            self.prefix, p.year, p.month, p.day, p.hour
        )
    }

    /// Hash of the hours of the UTC day holding minute `m`; fields `HH:<slot>`.
    pub fn hours(&self, client: &str, m: i64) -> String {
        let p = MinuteParts::of(m);
        format!(
            "{}:h:{{{client}}}:{:04}{:02}{:02}",
            self.prefix, p.year, p.month, p.day
        )
    }

    /// Sorted set of clients by events in minute `m`.
    pub fn top(&self, m: i64) -> String {
        let p = MinuteParts::of(m);
        format!(
            "{}:top:{:04}{:02}{:02}{:02}{:02}",
            self.prefix, p.year, p.month, p.day, p.hour, p.minute
        )
    }

    /// Set of every client ever counted (the API answers 400 for others).
    pub fn clients(&self) -> String {
        format!("{}:clients", self.prefix)
    }

    /// The stream of deltas, one entry per applied batch.
    pub fn deltas(&self) -> String {
        format!("{}:deltas", self.prefix)
    }

    /// Hash of the next offset per partition (`"<p>"`) and dedup generation
    /// (`"<p>:gen"`) of one consumer group on one topic.
    pub fn offsets(&self, group: &str, topic: &str) -> String {
        format!("{}:agg:{{{group}}}:{topic}:offsets", self.prefix)
    }

    /// String of the packed dedup fingerprints of one partition and generation.
    pub fn dedup(&self, group: &str, topic: &str, partition: i32, generation: u32) -> String {
        format!(
            "{}:agg:{{{group}}}:{topic}:dedup:{partition}:{generation}",
            self.prefix
        )
    }

    /// Hash of exact running totals of one group (`applied`, `duplicates`, `late_dropped`).
    pub fn stats(&self, group: &str, topic: &str) -> String {
        format!("{}:agg:{{{group}}}:{topic}:stats", self.prefix)
    }
}

/// Field `MM:<slot>` of a minute hash.
pub fn minute_field(m: i64, slot: usize) -> String {
    format!("{:02}:{}", m.rem_euclid(60), slot_name(slot))
}

/// Field `HH:<slot>` of an hour hash.
pub fn hour_field(m: i64, slot: usize) -> String {
    format!("{:02}:{}", m.rem_euclid(1440) / 60, slot_name(slot))
}

/// Splits a field `NN:<slot>` into its number and slot.
pub fn parse_field(field: &str) -> Option<(i64, usize)> {
    let (n, name) = field.split_once(':')?;
    Some((n.parse().ok()?, slot_of(name)?))
}

/// One changed cell in a delta: client, minute (minutes since the epoch),
/// and the increments in slot order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaCell(pub String, pub i64, pub Counts);

/// What one applied batch changed, published on the deltas stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// When the batch was applied, UTC milliseconds.
    pub t: i64,
    /// Changed minute cells.
    pub c: Vec<DeltaCell>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_rfc3339;

    fn minute(s: &str) -> i64 {
        crate::time::minute_of(parse_rfc3339(s).unwrap())
    }

    #[test]
    fn keys_name_the_utc_calendar_and_tag_the_client() {
        let k = Keys::new("nf");
        let m = minute("2026-11-23T22:07:31Z");
        assert_eq!(k.minutes("acme", m), "nf:m:{acme}:2026112322");
        assert_eq!(k.hours("acme", m), "nf:h:{acme}:20261123");
        assert_eq!(k.top(m), "nf:top:202611232207");
        assert_eq!(
            minute_field(m, status_slot(Status::Delivered)),
            "07:delivered"
        );
        assert_eq!(
            hour_field(m, sent_category_slot(Category::Utility)),
            "22:sent.utility"
        );
        // Offsets in a different zone land in the same UTC bucket.
        assert_eq!(m, minute("2026-11-23T19:07:59-03:00"));
    }

    #[test]
    fn fields_round_trip() {
        for slot in 0..SLOTS {
            assert_eq!(parse_field(&minute_field(61, slot)), Some((1, slot)));
        }
        assert_eq!(parse_field("07:bogus"), None);
        assert_eq!(parse_field("xx:sent"), None);
    }

    #[test]
    fn delta_is_compact_json() {
        let d = Delta {
            t: 5,
            c: vec![DeltaCell("a".into(), 7, [1, 0, 0, 0, 0, 0, 0, 0, 2])],
        };
        let s = serde_json::to_string(&d).unwrap();
        assert_eq!(s, r#"{"t":5,"c":[["a",7,[1,0,0,0,0,0,0,0,2]]]}"#);
        assert_eq!(serde_json::from_str::<Delta>(&s).unwrap(), d);
    }
}
