//! Generator settings (`[gen]` in the config file) and the rate syntax.

use serde::{Deserialize, Serialize};

/// The `[gen]` section: the shape of the traffic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenConfig {
    /// Seed: the same seed, start and settings give the same records.
    pub seed: u64,
    /// Number of clients (tenants); the top 1% send half of the traffic.
    pub clients: usize,
    /// Target rate: events per second (`1160`), or per minute/hour/day with a
    /// K/M/G suffix (`100M/day`, `600K/h`).
    pub rate: String,
    /// Share of records encoded as Confluent Avro (the rest JSON), 0..=1.
    pub avro_share: f64,
    /// Share of valid records that carry a `content-type` header (the rest are
    /// told apart by their first byte). Default 0: tansu 0.6.0 looks headers up
    /// with a per-record query that grows with the header table, so headers on
    /// every record make fetches quadratic (see BENCHMARKS.md).
    pub content_type_share: f64,
    /// Share of records that repeat an earlier event (webhook retries), 0..=1.
    pub duplicate_share: f64,
    /// Share of records taken from the malformed corpus, 0..=1.
    pub malformed_share: f64,
    /// Time zone of the billing day in the ground truth (IANA name).
    pub billing_tz: String,
}

/// A rate that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate {0:?} is not `N`, `N/s`, `N/min`, `N/h` or `N/day` (N may end in K, M or G)")]
pub struct RateError(pub String);

/// Parses a rate into events per second.
pub fn parse_rate(text: &str) -> Result<f64, RateError> {
    let err = || RateError(text.to_string());
    let t = text.trim().replace('_', "");
    let (num, per) = t.split_once('/').unwrap_or((&t, "s"));
    let num = num.trim();
    let (digits, mult) = match num.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&num[..num.len() - 1], 1e3),
        Some('M') => (&num[..num.len() - 1], 1e6),
        Some('G') => (&num[..num.len() - 1], 1e9),
        _ => (num, 1.0),
    };
    let n: f64 = digits.parse().map_err(|_| err())?;
    let secs = match per.trim().to_ascii_lowercase().as_str() {
        "s" | "sec" | "second" => 1.0,
        "min" | "m" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        "d" | "day" => 86_400.0,
        _ => return Err(err()),
    };
    let rate = n * mult / secs;
    if rate.is_finite() && rate > 0.0 {
        Ok(rate)
    } else {
        Err(err())
    }
}

impl GenConfig {
    /// Checks values serde cannot; errors name the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        parse_rate(&self.rate).map_err(|e| ("gen.rate", e.to_string()))?;
        if !(100..=10_000_000).contains(&self.clients) {
            return Err(("gen.clients", "must be 100..=10000000".into()));
        }
        for (field, v) in [
            ("gen.avro_share", self.avro_share),
            ("gen.content_type_share", self.content_type_share),
            ("gen.duplicate_share", self.duplicate_share),
            ("gen.malformed_share", self.malformed_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err((field, format!("{v} is not within 0..=1")));
            }
        }
        if self.duplicate_share + self.malformed_share >= 1.0 {
            return Err((
                "gen.duplicate_share",
                "duplicates and malformed records must leave room for events".into(),
            ));
        }
        self.billing_tz.parse::<chrono_tz::Tz>().map_err(|_| {
            (
                "gen.billing_tz",
                format!("{:?} is not an IANA time zone", self.billing_tz),
            )
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert!((parse_rate("100M/day").unwrap() - 1157.407).abs() < 0.01);
        assert_eq!(parse_rate("1160").unwrap(), 1160.0);
        assert_eq!(parse_rate("11.6K/s").unwrap(), 11_600.0);
        assert_eq!(parse_rate("60/min").unwrap(), 1.0);
        assert_eq!(parse_rate("3_600/h").unwrap(), 1.0);
        for bad in ["", "fast", "10/week", "-5", "0", "1X/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
