//! What a series or top request asks for, checked and resolved: the step,
//! the `[from, to)` range in minutes, the Redis hashes it reads and how
//! their fields fold into buckets. Pure functions: no Redis here.

use notiflow_schema::Micros;
use notiflow_schema::counters::{Counts, Keys, SLOTS, parse_field, slot_name};
use notiflow_schema::time::{minute_of, parse_rfc3339};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;

/// Bucket size of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// UTC minutes (kept `aggregator.minute_retention_hours`).
    Minute,
    /// UTC hours.
    Hour,
    /// UTC days.
    Day,
}

impl Step {
    fn minutes(self) -> i64 {
        match self {
            Step::Minute => 1,
            Step::Hour => 60,
            Step::Day => 1440,
        }
    }
}

/// Query of a series.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SeriesParams {
    /// Start (RFC 3339), inclusive, rounded down to the step. Default: 60 minutes, 24 hours or 30 days before `to`.
    pub from: Option<String>,
    /// End (RFC 3339), exclusive, rounded up to the step. Default: now.
    pub to: Option<String>,
    /// `minute` (default), `hour` or `day`.
    pub step: Option<Step>,
}

/// Query of the top clients.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TopParams {
    /// How many clients (1–100, default 10).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
    /// The minute (RFC 3339; default: the current minute).
    pub minute: Option<String>,
}

/// A resolved series request: buckets `[from, to)` in minutes since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Bucket size.
    pub step: Step,
    /// First minute (a multiple of the step).
    pub from: i64,
    /// End minute, exclusive (a multiple of the step).
    pub to: i64,
}

/// Range limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Minute buckets are kept this many minutes.
    pub minute_retention: i64,
    /// Widest hourly range, days.
    pub max_hour_days: i64,
    /// Widest daily range, days.
    pub max_day_days: i64,
}

pub(crate) fn instant(name: &str, v: &Option<String>) -> Result<Option<Micros>, ApiError> {
    v.as_deref()
        .map(|s| {
            parse_rfc3339(s).map_err(|_| {
                ApiError::bad(format!(
                    "`{name}` must be an RFC 3339 time like 2026-11-24T10:00:00Z in the years \
                     0000–9999 (UTC), not {s:?}"
                ))
            })
        })
        .transpose()
}

impl Range {
    /// Checks and resolves `p` at `now`: 400 for bad times, an empty or
    /// reversed range, or one wider than the step allows.
    pub fn resolve(p: &SeriesParams, now: Micros, lim: Limits) -> Result<Range, ApiError> {
        let step = p.step.unwrap_or(Step::Minute);
        let sm = step.minutes();
        let now_m = minute_of(now);
        let to = match instant("to", &p.to)? {
            Some(t) => minute_of(t - 1) + 1,
            None => now_m + 1,
        };
        let to = ceil_to(to, sm);
        let default_span = match step {
            Step::Minute => 60,
            Step::Hour => 24 * 60,
            Step::Day => 30 * 1440,
        };
        let from = match instant("from", &p.from)? {
            Some(f) => minute_of(f).div_euclid(sm) * sm,
            None => to - default_span,
        };
        if from >= to {
            return Err(ApiError::bad("empty range: `to` must be after `from`"));
        }
        let (max, what) = match step {
            Step::Minute => (
                lim.minute_retention,
                format!("{} minutes", lim.minute_retention),
            ),
            Step::Hour => (
                lim.max_hour_days * 1440,
                format!("{} days", lim.max_hour_days),
            ),
            Step::Day => (
                lim.max_day_days * 1440,
                format!("{} days", lim.max_day_days),
            ),
        };
        if to - from > max {
            return Err(ApiError::bad(format!(
                "range too wide for step={}: at most {what}",
                format!("{step:?}").to_lowercase()
            )));
        }
        if step == Step::Minute && from < now_m - lim.minute_retention {
            return Err(ApiError::bad(format!(
                "minute buckets are kept {} hours; ask with step=hour for older times",
                lim.minute_retention / 60
            )));
        }
        if from > now_m + 1440 {
            return Err(ApiError::bad(
                "the range starts more than a day in the future",
            ));
        }
        Ok(Range { step, from, to })
    }

    /// Bucket starts.
    pub fn buckets(&self) -> impl Iterator<Item = i64> + '_ {
        (self.from..self.to).step_by(self.step.minutes() as usize)
    }

    /// Number of buckets.
    pub fn len(&self) -> usize {
        ((self.to - self.from) / self.step.minutes()) as usize
    }

    /// Whether it has no buckets.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn ceil_to(m: i64, step: i64) -> i64 {
    (m + step - 1).div_euclid(step) * step
}

/// The hashes a range reads: minute hashes per hour, or hour hashes per day.
pub fn hash_keys(keys: &Keys, client: &str, r: &Range) -> Vec<(i64, String)> {
    let per = if r.step == Step::Minute { 60 } else { 1440 };
    let first = r.from.div_euclid(per) * per;
    (first..r.to)
        .step_by(per as usize)
        .map(|start| {
            let key = if r.step == Step::Minute {
                keys.minutes(client, start)
            } else {
                keys.hours(client, start)
            };
            (start, key)
        })
        .collect()
}

/// `HGETALL` of every key, each reply joined by spaces into one string
/// (`"NN:<slot> <count> …"`): a read of an hour's minutes is one bulk
/// string to parse instead of a thousand, which dominated the API's CPU
/// (BENCHMARKS.md, API). The keys of one client share its hash tag.
pub const JOINED_HGETALL: &str = "local out = {} \
    for i, k in ipairs(KEYS) do out[i] = table.concat(redis.call('HGETALL', k), ' ') end \
    return out";

/// The (field, count) pairs of one [`JOINED_HGETALL`] string; a count that
/// is not a number counts 0.
pub fn joined_fields(text: &str) -> impl Iterator<Item = (&str, u64)> {
    let mut words = text.split(' ').filter(|w| !w.is_empty());
    std::iter::from_fn(move || {
        let f = words.next()?;
        let n = words.next()?;
        Some((f, n.parse().unwrap_or(0)))
    })
}

/// Sums hash fields (`NN:<slot>` → count; each hash as its
/// [`JOINED_HGETALL`] string) into the range's buckets.
pub fn fold(r: &Range, hashes: &[(i64, String)]) -> Vec<Counts> {
    let mut out = vec![[0u64; SLOTS]; r.len()];
    let unit = if r.step == Step::Minute { 1 } else { 60 };
    for (start, text) in hashes {
        for (f, n) in joined_fields(text) {
            let Some((k, slot)) = parse_field(f) else {
                continue;
            };
            let minute = start + k * unit;
            if minute < r.from || minute >= r.to {
                continue;
            }
            let ix = ((minute - r.from) / r.step.minutes()) as usize;
            if let Some(cell) = out.get_mut(ix) {
                cell[slot] += n;
            }
        }
    }
    out
}

/// The slot names, in count order.
pub fn slots() -> Vec<String> {
    (0..SLOTS).map(|s| slot_name(s).to_string()).collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The limits the unit tests resolve ranges under (two days of minutes).
    pub(in crate::counters) const LIM: Limits = Limits {
        minute_retention: 48 * 60,
        max_hour_days: 31,
        max_day_days: 400,
    };

    fn t(s: &str) -> Micros {
        parse_rfc3339(s).unwrap()
    }

    fn params(from: Option<&str>, to: Option<&str>, step: Option<Step>) -> SeriesParams {
        SeriesParams {
            from: from.map(String::from),
            to: to.map(String::from),
            step,
        }
    }

    #[test]
    fn default_range_is_the_last_hour_including_the_current_minute() {
        let now = t("2026-11-24T10:30:15Z");
        let r = Range::resolve(&SeriesParams::default(), now, LIM).unwrap();
        assert_eq!(r.len(), 60);
        assert_eq!(r.to, minute_of(now) + 1);
        let hours = Range::resolve(&params(None, None, Some(Step::Hour)), now, LIM).unwrap();
        assert_eq!(hours.len(), 24);
        assert_eq!(hours.to % 60, 0);
    }

    #[test]
    fn bad_ranges_are_refused_with_a_reason() {
        let now = t("2026-11-24T10:30:15Z");
        let cases = [
            params(Some("yesterday"), None, None),
            params(
                Some("2026-11-24T10:00:00Z"),
                Some("2026-11-24T09:00:00Z"),
                None,
            ),
            params(
                Some("2026-11-20T10:00:00Z"),
                Some("2026-11-24T10:00:00Z"),
                None,
            ),
            params(
                Some("2026-01-01T00:00:00Z"),
                Some("2026-11-24T00:00:00Z"),
                Some(Step::Hour),
            ),
            params(
                Some("2024-01-01T00:00:00Z"),
                Some("2026-11-24T00:00:00Z"),
                Some(Step::Day),
            ),
            params(
                Some("2026-11-21T10:00:00Z"),
                Some("2026-11-21T11:00:00Z"),
                None,
            ),
        ];
        for p in cases {
            assert!(
                matches!(Range::resolve(&p, now, LIM), Err(ApiError::BadRequest(_))),
                "{p:?}"
            );
        }
    }

    #[test]
    fn hashes_fold_into_buckets() {
        let now = t("2026-11-24T10:30:15Z");
        let r = Range::resolve(
            &params(
                Some("2026-11-24T09:58:00Z"),
                Some("2026-11-24T10:02:00Z"),
                None,
            ),
            now,
            LIM,
        )
        .unwrap();
        let keys = Keys::new("nf");
        let hk = hash_keys(&keys, "acme", &r);
        assert_eq!(hk.len(), 2);
        assert_eq!(hk[0].1, "nf:m:{acme}:2026112409");
        let read = vec![
            (hk[0].0, "59:sent 3 10:sent 99".to_string()),
            (hk[1].0, "01:read 2 bogus 1".to_string()),
        ];
        let c = fold(&r, &read);
        assert_eq!(c.len(), 4);
        assert_eq!(c[1][1], 3, "09:59 sent");
        assert_eq!(c[3][3], 2, "10:01 read");
        assert_eq!(
            c.iter().flatten().sum::<u64>(),
            5,
            "out-of-range fields ignored"
        );

        let day = Range::resolve(
            &params(
                Some("2026-11-23T00:00:00Z"),
                Some("2026-11-25T00:00:00Z"),
                Some(Step::Day),
            ),
            now,
            LIM,
        )
        .unwrap();
        let hk = hash_keys(&keys, "acme", &day);
        assert_eq!(hk[1].1, "nf:h:{acme}:20261124");
        let read = vec![(hk[1].0, "00:sent 1 23:sent 2".to_string())];
        assert_eq!(fold(&day, &read)[1][1], 3, "hours sum into their day");
    }
}
