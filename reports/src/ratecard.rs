//! The rate card: price in integer micros per category × country, with
//! effective dates and a `*` country fallback, and which categories are
//! free on which billing days (SPEC §5: Meta's rules change over time, so
//! they are card rows, not code). Loaded from TOML and checked whole before
//! any report uses it; a billed cell without a price is an error, never a
//! silent zero, and nothing is free unless a `[[free]]` row says so.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::NaiveDate;
use notiflow_schema::{Category, Country, PricingType};
use serde::Deserialize;
use sha2::Digest;

use crate::error::ReportError;

/// One rate as written in the file (dates as `YYYY-MM-DD` strings).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    category: String,
    country: String,
    price_micros: i64,
    from: String,
    #[serde(default)]
    to: Option<String>,
}

/// One price, effective on `[from, to)` (`to` open when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rate {
    /// Pricing category.
    pub category: String,
    /// ISO country code, or `*` for every country without its own row.
    pub country: String,
    /// Price per billable message, micros of `currency`.
    pub price_micros: i64,
    /// First billing day the price applies to.
    pub from: NaiveDate,
    /// First billing day it no longer applies to.
    pub to: Option<NaiveDate>,
}

/// One free row as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFree {
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    pricing_type: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
}

/// What is not charged on the billing days `[from, to)` (either end open
/// when absent): the delivered and read events of a category, of a pricing
/// type (the window a message was sent in: an event without one is
/// `regular`), or of both at once, are not billable events on those days,
/// whatever the platform's `billable` flag says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Free {
    /// Pricing category (None: every category).
    pub category: Option<String>,
    /// Pricing type (None: every type).
    pub pricing_type: Option<PricingType>,
    /// First billing day it is free on (open when absent).
    pub from: Option<NaiveDate>,
    /// First billing day it is charged again (open when absent).
    pub to: Option<NaiveDate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: String,
    currency: String,
    #[serde(default)]
    rates: Vec<RawRate>,
    #[serde(default)]
    free: Vec<RawFree>,
}

/// A validated rate card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateCard {
    /// Version (recorded in every report's manifest).
    pub version: String,
    /// sha256 of the card's text, hex: what a manifest pins (a version
    /// string can be reused for other prices; the digest cannot).
    pub sha256: String,
    /// ISO 4217 currency of every price.
    pub currency: String,
    /// Rates per (category, country), sorted by `from`, not overlapping.
    rates: BTreeMap<(String, String), Vec<Rate>>,
    /// What is not charged, and on which billing days.
    free: Vec<Free>,
}

/// The demo rate card embedded in the binary.
pub const DEMO: &str = include_str!("../rate-card.toml");

impl RateCard {
    /// The configured card: the file at `path`, or the embedded demo card
    /// when `path` is empty.
    pub fn configured(path: &str) -> Result<RateCard, ReportError> {
        if path.trim().is_empty() {
            return RateCard::parse(DEMO);
        }
        RateCard::load(Path::new(path))
    }

    /// Reads and validates the rate card at `path`.
    pub fn load(path: &Path) -> Result<RateCard, ReportError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ReportError::RateCard(format!("{}: {e}", path.display())))?;
        RateCard::parse(&text).map_err(|e| match e {
            ReportError::RateCard(m) => ReportError::RateCard(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses and validates a rate card.
    pub fn parse(text: &str) -> Result<RateCard, ReportError> {
        let file: File = toml::from_str(text).map_err(|e| ReportError::RateCard(e.to_string()))?;
        if file.version.trim().is_empty() {
            return Err(ReportError::RateCard("version: must not be empty".into()));
        }
        if file.currency.len() != 3 || !file.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ReportError::RateCard(format!(
                "currency: '{}' is not an ISO 4217 code",
                file.currency
            )));
        }
        let mut rates: BTreeMap<(String, String), Vec<Rate>> = BTreeMap::new();
        for (i, raw) in file.rates.into_iter().enumerate() {
            let at = format!("rates[{i}]");
            let date = |field: &str, v: &str| {
                v.parse::<NaiveDate>().map_err(|_| {
                    ReportError::RateCard(format!("{at}.{field}: '{v}' is not a date (YYYY-MM-DD)"))
                })
            };
            let r = Rate {
                from: date("from", &raw.from)?,
                to: raw.to.as_deref().map(|v| date("to", v)).transpose()?,
                category: raw.category,
                country: raw.country,
                price_micros: raw.price_micros,
            };
            if Category::parse(&r.category).is_none() {
                return Err(ReportError::RateCard(format!(
                    "{at}.category: unknown category '{}'",
                    r.category
                )));
            }
            if r.country != "*" && Country::parse(&r.country).is_none() {
                return Err(ReportError::RateCard(format!(
                    "{at}.country: '{}' is neither an ISO 3166-1 alpha-2 code nor '*'",
                    r.country
                )));
            }
            if r.price_micros < 0 {
                return Err(ReportError::RateCard(format!(
                    "{at}.price_micros: must not be negative"
                )));
            }
            if r.to.is_some_and(|to| to <= r.from) {
                return Err(ReportError::RateCard(format!(
                    "{at}.to: must be after from ({})",
                    r.from
                )));
            }
            rates
                .entry((r.category.clone(), r.country.clone()))
                .or_default()
                .push(r);
        }
        for ((category, country), list) in &mut rates {
            list.sort_by_key(|r| r.from);
            for w in list.windows(2) {
                if w[0].to.is_none_or(|to| to > w[1].from) {
                    return Err(ReportError::RateCard(format!(
                        "{category} × {country}: the rate from {} overlaps the rate from {}",
                        w[0].from, w[1].from
                    )));
                }
                // A country with rows of its own never falls back to `*`:
                // days between two of its rows would have no price.
                if let Some(to) = w[0].to
                    && to < w[1].from
                {
                    return Err(ReportError::RateCard(format!(
                        "{category} × {country}: no rate from {to} to {} (a gap between its rows; \
                         a country with rows of its own is never priced at the `*` row)",
                        w[1].from
                    )));
                }
            }
        }
        let mut free = Vec::with_capacity(file.free.len());
        for (i, raw) in file.free.into_iter().enumerate() {
            let at = format!("free[{i}]");
            let date = |field: &str, v: Option<&str>| {
                v.map(|v| {
                    v.parse::<NaiveDate>().map_err(|_| {
                        ReportError::RateCard(format!(
                            "{at}.{field}: '{v}' is not a date (YYYY-MM-DD)"
                        ))
                    })
                })
                .transpose()
            };
            if raw.category.is_none() && raw.pricing_type.is_none() {
                return Err(ReportError::RateCard(format!(
                    "{at}: names neither a category nor a pricing_type (it would make everything free)"
                )));
            }
            if let Some(c) = &raw.category
                && Category::parse(c).is_none()
            {
                return Err(ReportError::RateCard(format!(
                    "{at}.category: unknown category '{c}'"
                )));
            }
            let pricing_type = raw
                .pricing_type
                .as_deref()
                .map(|p| {
                    PricingType::parse(p).ok_or_else(|| {
                        ReportError::RateCard(format!(
                            "{at}.pricing_type: unknown pricing type '{p}' (regular, \
                             free_customer_service or free_entry_point)"
                        ))
                    })
                })
                .transpose()?;
            let f = Free {
                from: date("from", raw.from.as_deref())?,
                to: date("to", raw.to.as_deref())?,
                category: raw.category,
                pricing_type,
            };
            if let (Some(from), Some(to)) = (f.from, f.to)
                && to <= from
            {
                return Err(ReportError::RateCard(format!(
                    "{at}.to: must be after from ({from})"
                )));
            }
            free.push(f);
        }
        Ok(RateCard {
            sha256: hex::encode(sha2::Sha256::digest(text.as_bytes())),
            version: file.version,
            currency: file.currency,
            rates,
            free,
        })
    }

    /// What the card leaves free, and when.
    pub fn free(&self) -> &[Free] {
        &self.free
    }

    /// True when a message of `category` sent as `pricing_type` (None:
    /// not said, so `regular`) is free on billing day `day`.
    pub fn is_free(
        &self,
        category: &str,
        pricing_type: Option<PricingType>,
        day: NaiveDate,
    ) -> bool {
        let pt = pricing_type.unwrap_or(PricingType::Regular);
        self.free.iter().any(|f| {
            f.category.as_deref().is_none_or(|c| c == category)
                && f.pricing_type.is_none_or(|p| p == pt)
                && f.from.is_none_or(|from| from <= day)
                && f.to.is_none_or(|to| day < to)
        })
    }

    /// The price of one message of `category` to `country` billed on `day`:
    /// the country's own rate when the card has rows for the country (and
    /// the category), else the `*` rate; an error if the rows that apply
    /// have none effective that day. A country's own rows that do not
    /// cover the day are an error, never a fall back to `*` (which would
    /// price a market with a rate of its own at the default).
    pub fn price(&self, category: &str, country: &str, day: NaiveDate) -> Result<i64, ReportError> {
        let own = self.rates.get(&(category.to_string(), country.to_string()));
        let (list, which) = match own {
            Some(list) => (Some(list), country),
            None => (
                self.rates.get(&(category.to_string(), "*".to_string())),
                "*",
            ),
        };
        if let Some(r) = list
            .into_iter()
            .flatten()
            .find(|r| r.from <= day && r.to.is_none_or(|to| day < to))
        {
            return Ok(r.price_micros);
        }
        let why = if own.is_some() {
            format!(
                "{category} × {country} has rows of its own, none effective that day, so `*` does not apply"
            )
        } else {
            format!(
                "{category} × {country} has no row of its own, nor an effective {category} × {which}"
            )
        };
        Err(ReportError::RateCard(format!(
            "no price for {category} × {country} effective on {day} in rate card {}: {why}",
            self.version
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARD: &str = r#"
version = "2026-11"
currency = "USD"
[[rates]]
category = "marketing"
country = "*"
price_micros = 25000
from = "2026-01-01"
[[rates]]
category = "marketing"
country = "BR"
price_micros = 62500
from = "2026-01-01"
to = "2026-11-15"
[[rates]]
category = "marketing"
country = "BR"
price_micros = 70000
from = "2026-11-15"
"#;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn country_rate_wins_then_star_then_error() {
        let c = RateCard::parse(CARD).unwrap();
        assert_eq!(
            c.price("marketing", "BR", day("2026-11-01")).unwrap(),
            62500
        );
        assert_eq!(
            c.price("marketing", "MX", day("2026-11-01")).unwrap(),
            25000
        );
        let e = c.price("utility", "BR", day("2026-11-01")).unwrap_err();
        assert!(e.to_string().contains("no price for utility × BR"), "{e}");
        let e = c.price("marketing", "BR", day("2025-12-31")).unwrap_err();
        assert!(e.to_string().contains("2025-12-31"), "{e}");
    }

    #[test]
    fn the_demo_card_is_valid() {
        let c = RateCard::configured("").unwrap();
        assert_eq!(
            c.price("marketing", "BR", day("2026-11-22")).unwrap(),
            62500
        );
        // Meta's rules since 2026-10-01, as rows.
        let fcs = Some(PricingType::FreeCustomerService);
        assert!(c.is_free("utility", fcs, day("2026-09-30")));
        assert!(!c.is_free("utility", fcs, day("2026-10-01")));
        assert!(c.is_free(
            "marketing",
            Some(PricingType::FreeEntryPoint),
            day("2026-12-01")
        ));
        assert!(!c.is_free("utility", None, day("2026-09-30")));
    }

    #[test]
    fn free_rows_say_what_is_not_charged_and_when() {
        let card = format!(
            "{CARD}[[free]]\ncategory = \"service\"\nto = \"2026-10-01\"\n\
             [[free]]\ncategory = \"utility\"\nfrom = \"2026-01-01\"\nto = \"2026-02-01\"\n"
        );
        let c = RateCard::parse(&card).unwrap();
        assert!(c.is_free("service", None, day("2026-09-30")));
        assert!(!c.is_free("service", None, day("2026-10-01")));
        assert!(!c.is_free("utility", None, day("2025-12-31")));
        assert!(c.is_free("utility", None, day("2026-01-31")));
        assert!(!c.is_free("utility", None, day("2026-02-01")));
        assert!(
            !c.is_free("marketing", None, day("2026-09-30")),
            "no row, charged"
        );
        for (row, want) in [
            ("[[free]]\ncategory = \"spam\"\n", "free[0].category"),
            ("[[free]]\nto = \"2026-10-01\"\n", "free[0]: names neither"),
            (
                "[[free]]\npricing_type = \"cheap\"\n",
                "free[0].pricing_type",
            ),
            (
                "[[free]]\ncategory = \"service\"\nfrom = \"2026-10-01\"\nto = \"2026-10-01\"\n",
                "free[0].to",
            ),
            (
                "[[free]]\ncategory = \"service\"\nto = \"10/01\"\n",
                "free[0].to",
            ),
        ] {
            let e = RateCard::parse(&format!("{CARD}{row}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn the_demo_card_charges_service_from_2026_10_01() {
        let c = RateCard::configured("").unwrap();
        assert!(c.is_free("service", None, day("2026-09-30")));
        assert!(!c.is_free("service", None, day("2026-10-01")));
        assert!(c.price("service", "BR", day("2026-10-01")).is_ok());
    }

    #[test]
    fn a_rate_change_mid_month_applies_from_its_day() {
        let c = RateCard::parse(CARD).unwrap();
        assert_eq!(
            c.price("marketing", "BR", day("2026-11-14")).unwrap(),
            62500
        );
        assert_eq!(
            c.price("marketing", "BR", day("2026-11-15")).unwrap(),
            70000
        );
    }

    #[test]
    fn a_country_with_rows_of_its_own_never_falls_back_to_star() {
        // BR's own marketing rate ended on 2026-06-01; `*` is open-ended.
        let card = r#"
version = "gap"
currency = "USD"
[[rates]]
category = "marketing"
country = "*"
price_micros = 25000
from = "2020-01-01"
[[rates]]
category = "marketing"
country = "BR"
price_micros = 62500
from = "2024-01-01"
to = "2026-06-01"
"#;
        let c = RateCard::parse(card).unwrap();
        assert_eq!(
            c.price("marketing", "BR", day("2026-05-31")).unwrap(),
            62500
        );
        // After its last row, and before its first: an error, not 25,000.
        for d in ["2026-06-01", "2023-12-31"] {
            let e = c.price("marketing", "BR", day(d)).unwrap_err().to_string();
            assert!(
                e.contains("no price for marketing × BR effective on"),
                "{e}"
            );
            assert!(e.contains("rows of its own"), "{e}");
        }
        // A country without rows of its own still uses `*`.
        assert_eq!(
            c.price("marketing", "MX", day("2026-06-01")).unwrap(),
            25000
        );
    }

    #[test]
    fn a_gap_between_a_countrys_rows_is_refused_when_the_card_loads() {
        let gap = CARD.replace(
            "price_micros = 70000\nfrom = \"2026-11-15\"",
            "price_micros = 70000\nfrom = \"2026-11-20\"",
        );
        assert_ne!(gap, CARD);
        let e = RateCard::parse(&gap).unwrap_err().to_string();
        assert!(
            e.contains("marketing × BR: no rate from 2026-11-15 to 2026-11-20"),
            "{e}"
        );
    }

    #[test]
    fn malformed_cards_are_refused_with_the_field() {
        let bad = [
            (CARD.replace("\"USD\"", "\"usd\""), "currency"),
            (
                CARD.replace("\"marketing\"", "\"spam\""),
                "unknown category",
            ),
            (CARD.replace("\"*\"", "\"BRA\""), "rates[0].country"),
            (CARD.replace("25000", "-1"), "price_micros"),
            (
                CARD.replace("to = \"2026-11-15\"", "to = \"2026-11-20\""),
                "overlaps",
            ),
            (
                CARD.replace("price_micros = 25000", "price_micros = 2.5"),
                "price_micros",
            ),
            (
                CARD.replace("version = \"2026-11\"", "version = \"\""),
                "version",
            ),
        ];
        for (text, want) in bad {
            let e = RateCard::parse(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
