//! Counter reads from Redis (SPEC §3 layout, `notiflow_schema::counters`):
//! one client's series per minute, hour or day, and the top clients of a
//! minute. Every read goes through the circuit breaker; a successful answer
//! is remembered, so while Redis is down or slow the same request is
//! answered from the last known values, marked `stale`.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notiflow_schema::Micros;
use notiflow_schema::counters::{Counts, Delta, Keys, SLOTS, parse_field, slot_name};
use notiflow_schema::time::{format_rfc3339, minute_of, parse_rfc3339};
use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;
use redis::{FromRedisValue, Value};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::breaker::{Breaker, State};
use crate::error::ApiError;
use crate::metrics::ApiMetrics;

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

fn instant(name: &str, v: &Option<String>) -> Result<Option<Micros>, ApiError> {
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

/// Sums hash fields (`NN:<slot>` → count) into the range's buckets.
pub fn fold(r: &Range, hashes: &[(i64, HashMap<String, u64>)]) -> Vec<Counts> {
    let mut out = vec![[0u64; SLOTS]; r.len()];
    let unit = if r.step == Step::Minute { 1 } else { 60 };
    for (start, fields) in hashes {
        for (f, n) in fields {
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

/// What a live stream starts with: the stream position and the counters.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The deltas-stream id these values include (None: empty stream).
    pub last_id: Option<String>,
    /// The scoped client's recent minutes.
    pub series: Option<Series>,
    /// The top clients of the current minute (all-client scope).
    pub top: Option<Top>,
}

enum ReadError {
    Redis(String),
    Api(ApiError),
}

impl From<redis::RedisError> for ReadError {
    fn from(e: redis::RedisError) -> Self {
        ReadError::Redis(format!("Redis failed: {e}"))
    }
}

impl ReadError {
    /// The answer when no stale value can stand in: 503, or the caller's error.
    fn into_api(self) -> ApiError {
        match self {
            ReadError::Api(e) => e,
            ReadError::Redis(why) => ApiError::Unavailable(why),
        }
    }
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

/// A remembered answer (a `Series` or a `Top`) and when it was read.
type Remembered = (Arc<dyn Any + Send + Sync>, Instant);

/// The Redis side of the API: connection, breaker, stale answers.
pub struct Counters {
    keys: Keys,
    url: String,
    conn: Mutex<Option<ConnectionManager>>,
    connecting: tokio::sync::Mutex<()>,
    timeout: Duration,
    breaker: Breaker,
    cache: Mutex<HashMap<String, Remembered>>,
    cache_cap: usize,
    fresh_for: Duration,
    limits: Limits,
    metrics: ApiMetrics,
}

impl Counters {
    /// Reads under `keys` from the Redis at `url`; connects on first use.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        url: &str,
        keys: Keys,
        timeout: Duration,
        breaker: Breaker,
        cache_cap: usize,
        fresh_for: Duration,
        limits: Limits,
        metrics: ApiMetrics,
    ) -> Counters {
        Counters {
            keys,
            url: url.to_string(),
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            timeout,
            breaker,
            cache: Mutex::new(HashMap::new()),
            cache_cap,
            fresh_for,
            limits,
            metrics,
        }
    }

    /// Key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The breaker's state.
    pub fn breaker_state(&self) -> State {
        self.breaker.state(Instant::now())
    }

    async fn conn(&self) -> Result<ConnectionManager, ReadError> {
        if let Some(c) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(c);
        }
        let client = redis::Client::open(self.url.as_str())?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1);
        let c = client.get_connection_manager_with_config(cfg).await?;
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
        Ok(c)
    }

    /// Whether Redis answers a PING now (for `/readyz`).
    pub async fn ping(&self) -> bool {
        let attempt = async {
            let mut c = self.conn().await.map_err(|_| ())?;
            redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .map_err(|_| ())
        };
        matches!(tokio::time::timeout(self.timeout, attempt).await, Ok(Ok(_)))
    }

    /// Runs `read` through the breaker with the read timeout; remembers a
    /// success under `cache_key` and answers a Redis failure from it. An
    /// answer younger than `fresh_for` is reused as is: many viewers of one
    /// client cost one Redis read per `fresh_for`, well within the
    /// one-second freshness the aggregator's batches give anyway.
    async fn guarded<T, F>(&self, cache_key: String, read: F) -> Result<Arc<T>, ApiError>
    where
        T: Stale,
        F: std::future::Future<Output = Result<T, ReadError>>,
    {
        let now = Instant::now();
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&cache_key)
            .cloned();
        let cached = cached.and_then(|(a, at)| Some((a.downcast::<T>().ok()?, at)));
        if let Some((v, at)) = &cached
            && now.duration_since(*at) < self.fresh_for
        {
            self.metrics
                .counter_reads
                .with_label_values(&["cached"])
                .inc();
            return Ok(v.clone());
        }
        let why = match self.attempt(read).await {
            Ok(v) => {
                let v = Arc::new(v);
                self.remember(cache_key, v.clone());
                self.metrics
                    .counter_reads
                    .with_label_values(&["fresh"])
                    .inc();
                return Ok(v);
            }
            Err(ReadError::Api(e)) => return Err(e),
            Err(ReadError::Redis(why)) => why,
        };
        match cached {
            Some((v, _)) => {
                self.metrics
                    .counter_reads
                    .with_label_values(&["stale"])
                    .inc();
                let mut v = (*v).clone();
                v.mark_stale();
                Ok(Arc::new(v))
            }
            None => {
                self.metrics
                    .counter_reads
                    .with_label_values(&["failed"])
                    .inc();
                Err(ApiError::Unavailable(format!(
                    "{why}, and no earlier answer to this request is known"
                )))
            }
        }
    }

    /// One read through the breaker, with the read timeout: a Redis error,
    /// a timeout or an open breaker is `ReadError::Redis` (and counts
    /// against the breaker); a caller's mistake passes through as is.
    async fn attempt<T, F>(&self, read: F) -> Result<T, ReadError>
    where
        F: std::future::Future<Output = Result<T, ReadError>>,
    {
        if !self.breaker.allow(Instant::now()) {
            return Err(ReadError::Redis(
                "Redis is unavailable (circuit breaker open)".into(),
            ));
        }
        let out = match tokio::time::timeout(self.timeout, read).await {
            Ok(r) => r,
            Err(_) => Err(ReadError::Redis(format!(
                "Redis did not answer within {} ms",
                self.timeout.as_millis()
            ))),
        };
        match &out {
            Err(ReadError::Redis(_)) => self.breaker.failure(Instant::now()),
            _ => self.breaker.success(),
        }
        self.metrics
            .breaker_open
            .set(i64::from(self.breaker_state() != State::Closed));
        out
    }

    fn remember<T: Stale>(&self, key: String, v: Arc<T>) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.cache_cap && !cache.contains_key(&key) {
            // Bounded: forget an arbitrary entry (the cache only serves outages).
            if let Some(k) = cache.keys().next().cloned() {
                cache.remove(&k);
            }
        }
        cache.insert(key, (v, Instant::now()));
    }

    /// One client's series. `check_known`: 400 unless the client was ever counted.
    pub async fn series(
        &self,
        client: &str,
        p: &SeriesParams,
        check_known: bool,
        now: Micros,
    ) -> Result<Arc<Series>, ApiError> {
        let range = Range::resolve(p, now, self.limits)?;
        let cache_key = format!(
            "s\0{client}\0{check_known}\0{:?}\0{:?}\0{:?}",
            p.step, p.from, p.to
        );
        self.guarded(cache_key, async {
            let hashes = hash_keys(&self.keys, client, &range);
            let mut pipe = redis::pipe();
            if check_known {
                pipe.sismember(self.keys.clients(), client);
            }
            for (_, k) in &hashes {
                pipe.hgetall(k);
            }
            let mut conn = self.conn().await?;
            let mut replies: Vec<Value> = pipe.query_async(&mut conn).await?;
            if check_known {
                let known = bool::from_redis_value(&replies.remove(0))?;
                if !known {
                    return Err(ReadError::Api(ApiError::bad(format!(
                        "unknown client '{client}': no events of it were ever counted"
                    ))));
                }
            }
            let mut read = Vec::with_capacity(hashes.len());
            for ((start, _), v) in hashes.iter().zip(replies) {
                read.push((*start, HashMap::<String, u64>::from_redis_value(&v)?));
            }
            Ok(make_series(client, &range, &read, now))
        })
        .await
    }

    /// The top `limit` clients of a minute.
    pub async fn top(&self, p: &TopParams, now: Micros) -> Result<Arc<Top>, ApiError> {
        let limit = p.limit.unwrap_or(10);
        if !(1..=100).contains(&limit) {
            return Err(ApiError::bad("`limit` must be 1–100"));
        }
        let minute = match instant("minute", &p.minute)? {
            Some(t) => minute_of(t),
            None => minute_of(now),
        };
        if minute < minute_of(now) - self.limits.minute_retention {
            return Err(ApiError::bad(
                "that minute is older than the minute retention",
            ));
        }
        let cache_key = format!("t\0{limit}\0{:?}", p.minute);
        self.guarded(cache_key, async {
            let mut conn = self.conn().await?;
            let rows: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
                .arg(self.keys.top(minute))
                .arg(0)
                .arg(limit - 1)
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await?;
            Ok(make_top(minute, rows, now))
        })
        .await
    }

    /// The deltas after entry `after` (exclusive), oldest first; None when
    /// the stream may have lost some of them to trimming, or more than
    /// `max` follow (the caller starts over with a snapshot).
    pub async fn replay(
        &self,
        after: &str,
        max: usize,
    ) -> Result<Option<Vec<(String, Delta)>>, ApiError> {
        let Some(after_id) = crate::hub::parse_id(after) else {
            return Ok(None);
        };
        let read = async {
            let mut conn = self.conn().await?;
            let (oldest, entries): (StreamRangeReply, StreamRangeReply) = redis::pipe()
                .cmd("XRANGE")
                .arg(self.keys.deltas())
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .cmd("XRANGE")
                .arg(self.keys.deltas())
                .arg(format!("({after}"))
                .arg("+")
                .arg("COUNT")
                .arg(max + 1)
                .query_async(&mut conn)
                .await?;
            let trimmed = oldest
                .ids
                .first()
                .and_then(|e| crate::hub::parse_id(&e.id))
                .is_some_and(|first| first > after_id);
            if trimmed || entries.ids.len() > max {
                return Ok::<_, ReadError>(None);
            }
            let mut out = Vec::with_capacity(entries.ids.len());
            for e in entries.ids {
                if let Some(d) = e.get::<String>("d")
                    && let Ok(delta) = serde_json::from_str::<Delta>(&d)
                {
                    out.push((e.id, delta));
                }
            }
            Ok(Some(out))
        };
        self.attempt(read).await.map_err(ReadError::into_api)
    }

    /// A live stream's snapshot, read atomically with the deltas stream's
    /// last id, so a delta is either in the snapshot or after its id.
    pub async fn snapshot(
        &self,
        client: Option<&str>,
        minutes: u32,
        now: Micros,
    ) -> Result<Snapshot, ApiError> {
        let now_m = minute_of(now);
        let range = Range {
            step: Step::Minute,
            from: now_m + 1 - i64::from(minutes),
            to: now_m + 1,
        };
        let read = async {
            let mut pipe = redis::pipe();
            pipe.atomic();
            pipe.cmd("XREVRANGE")
                .arg(self.keys.deltas())
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
            let hashes = client
                .map(|c| hash_keys(&self.keys, c, &range))
                .unwrap_or_default();
            match client {
                Some(_) => {
                    for (_, k) in &hashes {
                        pipe.hgetall(k);
                    }
                }
                None => {
                    pipe.cmd("ZREVRANGE")
                        .arg(self.keys.top(now_m))
                        .arg(0)
                        .arg(9)
                        .arg("WITHSCORES");
                }
            }
            let mut conn = self.conn().await?;
            let mut replies: Vec<Value> = pipe.query_async(&mut conn).await?;
            if replies.is_empty() {
                return Err(ReadError::Redis("empty MULTI reply".into()));
            }
            let last: StreamRangeReply = FromRedisValue::from_redis_value(&replies.remove(0))?;
            let last_id = last.ids.first().map(|e| e.id.clone());
            let (series, top) = match client {
                Some(c) => {
                    let mut read = Vec::with_capacity(hashes.len());
                    for ((start, _), v) in hashes.iter().zip(replies) {
                        read.push((*start, HashMap::<String, u64>::from_redis_value(&v)?));
                    }
                    (Some(make_series(c, &range, &read, now)), None)
                }
                None => {
                    let rows = match replies.first() {
                        Some(v) => Vec::<(String, f64)>::from_redis_value(v)?,
                        None => vec![],
                    };
                    (None, Some(make_top(now_m, rows, now)))
                }
            };
            Ok(Snapshot {
                last_id,
                series,
                top,
            })
        };
        self.attempt(read).await.map_err(ReadError::into_api)
    }
}

fn make_series(
    client: &str,
    r: &Range,
    read: &[(i64, HashMap<String, u64>)],
    now: Micros,
) -> Series {
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

fn make_top(minute: i64, rows: Vec<(String, f64)>, now: Micros) -> Top {
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: Limits = Limits {
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
            (
                hk[0].0,
                HashMap::from([("59:sent".to_string(), 3u64), ("10:sent".to_string(), 99)]),
            ),
            (
                hk[1].0,
                HashMap::from([("01:read".to_string(), 2u64), ("bogus".to_string(), 1)]),
            ),
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
        let read = vec![(
            hk[1].0,
            HashMap::from([("00:sent".to_string(), 1u64), ("23:sent".to_string(), 2)]),
        )];
        assert_eq!(fold(&day, &read)[1][1], 3, "hours sum into their day");
    }
}
