//! The last known answers of counter reads: reused while younger than
//! `fresh_cache_ms` (many viewers of one client cost one Redis read), and
//! answered marked stale while Redis is down.
//!
//! Bounded three ways, so no caller can grow it: keys are the *resolved*
//! request (explicit times rounded to their bucket, so requests that differ
//! only in seconds or their fractions share one entry; defaulted times stay
//! "default", so a dashboard's "last hour" keeps its stale answer across
//! minute boundaries), the whole cache is capped in bytes (each answer
//! weighed by its size), and entries expire after a time to live.

use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

use super::answer::{Series, Top};
use super::range::{Range, SeriesParams, Step};

/// A remembered answer and when it was read from Redis.
#[derive(Debug)]
pub struct Remembered<T> {
    /// The answer.
    pub value: Arc<T>,
    /// When Redis gave it.
    pub read_at: Instant,
}

impl<T> Clone for Remembered<T> {
    fn clone(&self) -> Self {
        Remembered {
            value: self.value.clone(),
            read_at: self.read_at,
        }
    }
}

/// What an answer costs in memory, roughly (bytes).
pub trait Weigh {
    /// Approximate heap and inline size.
    fn weight(&self) -> u32;
}

impl Weigh for Series {
    fn weight(&self) -> u32 {
        let per_point = 64 + 8 * self.slots.len() + 32;
        let bytes = 256 + self.client.len() + self.points.len() * per_point;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

impl Weigh for Top {
    fn weight(&self) -> u32 {
        let bytes = 256
            + self
                .clients
                .iter()
                .map(|c| 48 + c.client.len())
                .sum::<usize>();
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// A series request, resolved: `from`/`to` are bucket minutes when the
/// caller gave them, None when defaulted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    /// The client.
    pub client: String,
    /// Whether the read checked the client is known (not for a viewer).
    pub check_known: bool,
    /// Bucket size.
    pub step: Step,
    /// First bucket minute, if given.
    pub from: Option<i64>,
    /// End bucket minute, if given.
    pub to: Option<i64>,
}

impl SeriesKey {
    /// The key of request `p` for `client`, resolved as `r`.
    pub fn of(client: &str, check_known: bool, p: &SeriesParams, r: &Range) -> SeriesKey {
        SeriesKey {
            client: client.to_string(),
            check_known,
            step: r.step,
            from: p.from.as_ref().map(|_| r.from),
            to: p.to.as_ref().map(|_| r.to),
        }
    }
}

/// A top request, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopKey {
    /// How many clients.
    pub limit: usize,
    /// The minute, if given.
    pub minute: Option<i64>,
}

/// One kind of answer, bounded in bytes and age.
pub struct AnswerCache<K, T> {
    cache: Cache<K, Remembered<T>>,
}

impl<K, T> AnswerCache<K, T>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Weigh + Send + Sync + 'static,
{
    /// At most `bytes` of answers, each kept at most `ttl`.
    pub fn new(bytes: u64, ttl: Duration) -> Self {
        let cache = Cache::builder()
            .max_capacity(bytes)
            .weigher(|_k: &K, v: &Remembered<T>| v.value.weight())
            .time_to_live(ttl)
            .build();
        AnswerCache { cache }
    }

    /// The remembered answer to `key`.
    pub fn get(&self, key: &K) -> Option<Remembered<T>> {
        self.cache.get(key)
    }

    /// Remembers `value` as read now.
    pub fn put(&self, key: K, value: Arc<T>) {
        self.cache.insert(
            key,
            Remembered {
                value,
                read_at: Instant::now(),
            },
        );
    }

    /// Bytes held (after pending evictions are applied).
    pub fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    /// Entries held (after pending evictions are applied).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::super::range::tests::LIM;
    use super::*;
    use crate::counters::answer::make_series;
    use notiflow_schema::time::parse_rfc3339;

    fn key_of(p: &SeriesParams, now: i64) -> (SeriesKey, Range) {
        let r = Range::resolve(p, now, LIM).unwrap();
        (SeriesKey::of("acme", true, p, &r), r)
    }

    /// The review's attack: ~4,000 requests that differ only in the
    /// fractional seconds of `from`/`to` each took an entry of up to half a
    /// megabyte. Resolved keys make them one entry.
    #[test]
    fn requests_that_differ_in_seconds_share_one_entry() {
        let now = parse_rfc3339("2026-11-24T10:30:15Z").unwrap();
        let cache: AnswerCache<SeriesKey, Series> =
            AnswerCache::new(1 << 30, Duration::from_secs(60));
        for i in 0..4000 {
            let p = SeriesParams {
                from: Some(format!("2026-11-24T09:00:00.{i:06}Z")),
                to: Some(format!("2026-11-24T10:00:00.{i:06}Z")),
                step: None,
            };
            let (k, r) = key_of(&p, now);
            cache.put(k, Arc::new(make_series("acme", &r, &[], now)));
        }
        assert_eq!(cache.len(), 2, "one entry for :00.000000, one for the rest");
        let defaulted = key_of(&SeriesParams::default(), now).0;
        assert_eq!((defaulted.from, defaulted.to), (None, None));
    }

    #[test]
    fn the_cache_is_bounded_in_bytes() {
        let now = parse_rfc3339("2026-11-24T10:30:15Z").unwrap();
        let budget = 1 << 20;
        let cache: AnswerCache<SeriesKey, Series> =
            AnswerCache::new(budget, Duration::from_secs(60));
        let mut one = 0;
        for h in 0..400 {
            let p = SeriesParams {
                from: Some(format!("2026-11-{:02}T{:02}:00:00Z", 1 + h / 24, h % 24)),
                to: Some("2026-11-24T00:00:00Z".to_string()),
                step: Some(Step::Hour),
            };
            let (k, r) = key_of(&p, now);
            let s = make_series("acme", &r, &[], now);
            one = one.max(s.weight());
            cache.put(k, Arc::new(s));
        }
        assert!(one > 10_000, "a wide series weighs {one} bytes");
        assert!(
            cache.weighted_size() <= budget,
            "{} bytes held, budget {budget}",
            cache.weighted_size()
        );
        assert!(cache.len() < 400, "old entries were evicted");
    }

    #[test]
    fn entries_expire() {
        let now = parse_rfc3339("2026-11-24T10:30:15Z").unwrap();
        let cache: AnswerCache<SeriesKey, Series> =
            AnswerCache::new(1 << 20, Duration::from_millis(50));
        let (k, r) = key_of(&SeriesParams::default(), now);
        cache.put(k.clone(), Arc::new(make_series("acme", &r, &[], now)));
        assert!(cache.get(&k).is_some());
        std::thread::sleep(Duration::from_millis(120));
        assert!(cache.get(&k).is_none());
    }
}
