//! The ground truth of a generator run: what every later part must count.
//!
//! Built from the events actually handed to the broker (after the run stops,
//! statuses still in flight are not in it), deduplicated by `event_id` the
//! way SPEC §3 says, and written as one JSON file:
//! - `minute_counts`: client × UTC minute × status → events;
//! - `sent_by_category`: client × UTC minute × category → `sent` events;
//! - `billable`: client × billing day × category × country → billable messages
//!   (SPEC §5: a `delivered` or `read` with `billable = true` whose category
//!   is charged on its billing day — `service` only from 2026-10-01, Meta's
//!   rule written out here by hand — billed once on the billing day and
//!   under the category and country of the first such event, whatever later
//!   statuses report);
//! - `dlq_by_reason`: malformed records sent, per expected reason.
//!
//! It is computed here, independently of the aggregator, lake and reports,
//! so that reconciling against it checks them rather than repeats them.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use chrono::TimeZone;
use chrono_tz::Tz;
use notiflow_schema::time::{MINUTE_MICROS, format_rfc3339, minute_of};
use notiflow_schema::{Category, Country, Micros, PricingType, Status};
use serde::{Deserialize, Serialize};

use crate::model::Message;

/// Serialised ground truth.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroundTruth {
    /// Seed of the run.
    pub seed: u64,
    /// Billing time zone used for `billable`.
    pub billing_tz: String,
    /// Records handed to the broker (valid, duplicate and malformed).
    pub records: u64,
    /// Distinct valid events (what Redis and the lake must hold).
    pub valid_events: u64,
    /// Extra copies of valid events (webhook retries).
    pub duplicates: u64,
    /// Malformed records per expected dead-letter reason.
    pub dlq_by_reason: BTreeMap<String, u64>,
    /// Distinct events per client × minute × status.
    pub minute_counts: Vec<MinuteCount>,
    /// Distinct `sent` events per client × minute × category.
    pub sent_by_category: Vec<CategoryCount>,
    /// Billable messages per client × billing day × category × country.
    pub billable: Vec<BillableCount>,
}

/// One cell of `minute_counts`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct MinuteCount {
    /// Tenant.
    pub client_id: String,
    /// Start of the UTC minute, RFC 3339.
    pub minute: String,
    /// Status counted.
    pub status: Status,
    /// Distinct events.
    pub count: u64,
}

/// One cell of `sent_by_category`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct CategoryCount {
    /// Tenant.
    pub client_id: String,
    /// Start of the UTC minute, RFC 3339.
    pub minute: String,
    /// Category counted.
    pub category: Category,
    /// Distinct `sent` events.
    pub count: u64,
}

/// One cell of `billable`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct BillableCount {
    /// Tenant.
    pub client_id: String,
    /// Billing day in the billing time zone, `YYYY-MM-DD`.
    pub billing_day: String,
    /// Pricing category.
    pub category: Category,
    /// Market.
    pub country: String,
    /// Messages billed that day.
    pub messages: u64,
}

impl GroundTruth {
    /// Reads a ground-truth file.
    pub fn read(path: &Path) -> std::io::Result<GroundTruth> {
        let text = std::fs::read(path)?;
        serde_json::from_slice(&text).map_err(std::io::Error::other)
    }

    /// Writes the file (pretty enough to diff, compact enough for millions of rows).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }
}

/// The first billing day Meta charges `service` messages on (SPEC §5;
/// free before).
pub const SERVICE_CHARGED_FROM: &str = "2026-10-01";

/// Meta's rules by hand (SPEC §5; the demo and test cards say the same as
/// `[[free]]` rows): a status of `category`, sent as `pricing_type` (None:
/// `regular`), on billing day `day` (`YYYY-MM-DD`) is not charged when it
/// is a service message before 2026-10-01, a utility template sent in the
/// customer service window before 2026-10-01, or in the free entry-point
/// window.
pub fn free(category: Category, pricing_type: Option<PricingType>, day: &str) -> bool {
    let before = day < SERVICE_CHARGED_FROM;
    match pricing_type {
        Some(PricingType::FreeEntryPoint) => true,
        Some(PricingType::FreeCustomerService) if category == Category::Utility => before,
        _ => category == Category::Service && before,
    }
}

/// Accumulates the truth while the generator runs.
pub struct TruthBuilder {
    seed: u64,
    tz: Tz,
    records: u64,
    valid: u64,
    duplicates: u64,
    dlq: BTreeMap<String, u64>,
    minutes: HashMap<(u32, i64, Status), u64>,
    sent: HashMap<(u32, i64, Category), u64>,
    /// Message seq → (client, category, country, earliest billable event time).
    first_billable: HashMap<u64, (u32, Category, Country, Micros)>,
}

impl TruthBuilder {
    /// An empty truth for a run with `seed`, billing in `tz`.
    pub fn new(seed: u64, tz: Tz) -> Self {
        TruthBuilder {
            seed,
            tz,
            records: 0,
            valid: 0,
            duplicates: 0,
            dlq: BTreeMap::new(),
            minutes: HashMap::new(),
            sent: HashMap::new(),
            first_billable: HashMap::new(),
        }
    }

    /// A distinct valid event was sent.
    pub fn valid(&mut self, m: &Message, status: Status, event_time: Micros) {
        self.records += 1;
        self.valid += 1;
        let minute = minute_of(event_time);
        *self.minutes.entry((m.client, minute, status)).or_default() += 1;
        if status == Status::Sent {
            *self.sent.entry((m.client, minute, m.category)).or_default() += 1;
        }
        // Each status reports its own category and country; the message's
        // first billable event (earliest `event_time`: a message's statuses
        // never share one) decides both.
        let (category, country) = m.reported(status);
        if matches!(status, Status::Delivered | Status::Read)
            && m.billable
            && !free(category, m.pricing_type(), &self.tz.billing_day(event_time))
        {
            let first = (m.client, category, country, event_time);
            let e = self.first_billable.entry(m.seq).or_insert(first);
            if event_time < e.3 {
                *e = first;
            }
        }
    }

    /// A copy of an already-sent event was sent again.
    pub fn duplicate(&mut self) {
        self.records += 1;
        self.duplicates += 1;
    }

    /// A malformed record was sent; it must be dead-lettered with `reason`.
    pub fn malformed(&mut self, reason: &str) {
        self.records += 1;
        *self.dlq.entry(reason.to_string()).or_default() += 1;
    }

    /// Records so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The finished truth; `client_ids` maps client indices to ids.
    pub fn finish(self, client_ids: &[String]) -> GroundTruth {
        let name = |c: u32| client_ids[c as usize].clone();
        let minute = |m: i64| format_rfc3339(m * MINUTE_MICROS);
        let mut minute_counts: Vec<_> = self
            .minutes
            .into_iter()
            .map(|((c, m, status), count)| MinuteCount {
                client_id: name(c),
                minute: minute(m),
                status,
                count,
            })
            .collect();
        minute_counts.sort();
        let mut sent_by_category: Vec<_> = self
            .sent
            .into_iter()
            .map(|((c, m, category), count)| CategoryCount {
                client_id: name(c),
                minute: minute(m),
                category,
                count,
            })
            .collect();
        sent_by_category.sort();
        let mut billable: BTreeMap<(u32, String, Category, Country), u64> = BTreeMap::new();
        for (c, category, country, t) in self.first_billable.into_values() {
            *billable
                .entry((c, self.tz.billing_day(t), category, country))
                .or_default() += 1;
        }
        GroundTruth {
            seed: self.seed,
            billing_tz: self.tz.name().to_string(),
            records: self.records,
            valid_events: self.valid,
            duplicates: self.duplicates,
            dlq_by_reason: self.dlq,
            minute_counts,
            sent_by_category,
            billable: billable
                .into_iter()
                .map(|((c, day, category, country), messages)| BillableCount {
                    client_id: name(c),
                    billing_day: day,
                    category,
                    country: country.to_string(),
                    messages,
                })
                .collect(),
        }
    }
}

/// The calendar day of an instant in a time zone.
trait BillingDay {
    fn billing_day(&self, t: Micros) -> String;
}

impl BillingDay for Tz {
    fn billing_day(&self, t: Micros) -> String {
        match self.timestamp_micros(t) {
            chrono::LocalResult::Single(dt) | chrono::LocalResult::Ambiguous(dt, _) => {
                dt.format("%Y-%m-%d").to_string()
            }
            chrono::LocalResult::None => String::from("invalid"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notiflow_schema::time::parse_rfc3339;

    #[test]
    fn what_is_free_follows_meta_since_2026_10_01() {
        use Category::{Marketing, Service, Utility};
        use PricingType::{FreeCustomerService as Fcs, FreeEntryPoint as Fep, Regular};
        let (sep, oct) = ("2026-09-30", "2026-10-01");
        assert!(free(Service, None, sep) && !free(Service, None, oct));
        assert!(free(Utility, Some(Fcs), sep) && !free(Utility, Some(Fcs), oct));
        assert!(!free(Utility, Some(Regular), sep) && !free(Utility, None, sep));
        assert!(free(Marketing, Some(Fep), oct) && free(Utility, Some(Fep), "2027-01-01"));
        assert!(
            !free(Marketing, Some(Fcs), sep),
            "only utility is free in the window"
        );
    }

    #[test]
    fn billing_day_follows_sao_paulo() {
        let tz: Tz = "America/Sao_Paulo".parse().unwrap();
        // 02:30 UTC is 23:30 of the previous day in São Paulo (UTC-3).
        let t = parse_rfc3339("2026-11-24T02:30:00Z").unwrap();
        assert_eq!(tz.billing_day(t), "2026-11-23");
        let t = parse_rfc3339("2026-11-24T03:00:00Z").unwrap();
        assert_eq!(tz.billing_day(t), "2026-11-24");
    }
}
