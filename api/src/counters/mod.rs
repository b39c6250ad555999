//! Counter reads from Redis (SPEC §3 layout, `notiflow_schema::counters`):
//! one client's series per minute, hour or day, the top clients of a
//! minute, and the live stream's snapshot and replay. Every read goes
//! through the circuit breaker; a successful answer is remembered
//! ([`cache`]), so while Redis is down or slow the same request is
//! answered from the last known values, marked `stale`.
//!
//! Only Redis being *unavailable* (no connection, a timeout, a server
//! loading or failing over) counts against the breaker, which every tenant
//! shares. Redis answering with an error is not unavailability: it is a
//! 500 for that request (its detail in the log), so no caller's input can
//! open the breaker for the others.
//!
//! - [`range`]: parameters and their resolution (pure);
//! - [`answer`]: the answers' types;
//! - [`cache`]: last known answers, bounded.

pub mod answer;
pub mod cache;
pub mod range;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notiflow_schema::Micros;
use notiflow_schema::counters::{Delta, Keys};
use notiflow_schema::time::minute_of;
use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;
use redis::{FromRedisValue, Value};

pub use answer::{Point, Series, Stale, Top, TopEntry};
use answer::{make_series, make_top};
use cache::{AnswerCache, SeriesKey, TopKey, Weigh};
pub use range::{Limits, Range, SeriesParams, Step, TopParams, fold, hash_keys, slots};

use crate::breaker::{Breaker, State};
use crate::error::ApiError;
use crate::hub::EntryId;
use crate::metrics::ApiMetrics;

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

/// Why a read did not give an answer.
enum ReadError {
    /// Redis is unavailable: counts against the breaker; a stale answer may stand in.
    Down(String),
    /// Redis answered with an error (or an answer we cannot read): a 500
    /// for this request only.
    Refused(String),
    /// The caller's mistake, passed through.
    Api(ApiError),
}

/// Whether a Redis error means Redis is unavailable (as opposed to Redis
/// answering that this request is wrong).
fn is_unavailable(e: &redis::RedisError) -> bool {
    use redis::ErrorKind as K;
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            K::BusyLoadingError | K::TryAgain | K::ClusterDown | K::MasterDown | K::ReadOnly
        )
}

impl From<redis::RedisError> for ReadError {
    fn from(e: redis::RedisError) -> Self {
        if is_unavailable(&e) {
            ReadError::Down(format!("Redis unavailable: {e}"))
        } else {
            ReadError::Refused(format!("Redis refused the read: {e}"))
        }
    }
}

impl ReadError {
    /// The answer when no stale value can stand in.
    fn into_api(self) -> ApiError {
        match self {
            ReadError::Api(e) => e,
            ReadError::Down(why) => ApiError::Unavailable(why),
            ReadError::Refused(why) => ApiError::Internal(why),
        }
    }
}

/// Most deltas one reconnect replays; further behind starts over with a snapshot.
pub const MAX_REPLAY: usize = 500;
/// Most bytes of deltas one reconnect replays (the replay is read on the
/// connection every tenant shares); more starts over with a snapshot.
pub const MAX_REPLAY_BYTES: usize = 4 << 20;

/// The entry id right after `id` (stream ids are `<ms>-<seq>`, both u64);
/// None after the largest possible id.
fn next_id((ms, seq): EntryId) -> Option<EntryId> {
    match (seq.checked_add(1), ms.checked_add(1)) {
        (Some(s), _) => Some((ms, s)),
        (None, Some(m)) => Some((m, 0)),
        (None, None) => None,
    }
}

/// The bounds of the stale-answer caches.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    /// Bytes of remembered answers, all kinds together.
    pub bytes: u64,
    /// How long an answer is kept.
    pub ttl: Duration,
    /// An answer this young is reused without asking Redis.
    pub fresh_for: Duration,
}

/// The Redis side of the API: connection, breaker, stale answers.
pub struct Counters {
    keys: Keys,
    url: String,
    conn: Mutex<Option<ConnectionManager>>,
    connecting: tokio::sync::Mutex<()>,
    timeout: Duration,
    breaker: Breaker,
    series_cache: AnswerCache<SeriesKey, Series>,
    top_cache: AnswerCache<TopKey, Top>,
    fresh_for: Duration,
    limits: Limits,
    metrics: ApiMetrics,
}

impl Counters {
    /// Reads under `keys` from the Redis at `url`; connects on first use.
    pub fn new(
        url: &str,
        keys: Keys,
        timeout: Duration,
        breaker: Breaker,
        cache: CacheLimits,
        limits: Limits,
        metrics: ApiMetrics,
    ) -> Counters {
        // Series are the big answers; tops are small and few.
        let top_bytes = (cache.bytes / 16).max(1 << 16);
        Counters {
            keys,
            url: url.to_string(),
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            timeout,
            breaker,
            series_cache: AnswerCache::new(cache.bytes.saturating_sub(top_bytes), cache.ttl),
            top_cache: AnswerCache::new(top_bytes, cache.ttl),
            fresh_for: cache.fresh_for,
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

    /// Whether the breaker is stuck: a probe held far longer than a read
    /// can take (it never should be: abandoned probes are released).
    pub fn breaker_wedged(&self) -> bool {
        self.breaker
            .wedged(Instant::now(), self.timeout * 4 + Duration::from_secs(1))
    }

    /// Bytes of remembered answers.
    pub fn cached_bytes(&self) -> u64 {
        self.series_cache.weighted_size() + self.top_cache.weighted_size()
    }

    async fn conn(&self) -> Result<ConnectionManager, ReadError> {
        if let Some(c) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(c);
        }
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| ReadError::Refused(format!("Redis URL: {e}")))?;
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

    /// Runs `read` through the breaker and the cache: an answer younger
    /// than `fresh_for` is reused as is (many viewers of one client cost
    /// one Redis read per `fresh_for`, well within the one-second freshness
    /// the aggregator's batches give anyway); a success is remembered; a
    /// Redis outage is answered from the remembered value, marked stale.
    async fn guarded<K, T, F>(
        &self,
        cache: &AnswerCache<K, T>,
        key: K,
        read: F,
    ) -> Result<Arc<T>, ApiError>
    where
        K: std::hash::Hash + Eq + Send + Sync + 'static,
        T: Stale + Weigh,
        F: std::future::Future<Output = Result<T, ReadError>>,
    {
        let reads = &self.metrics.counter_reads;
        let cached = cache.get(&key);
        if let Some(r) = &cached
            && r.read_at.elapsed() < self.fresh_for
        {
            reads.with_label_values(&["cached"]).inc();
            return Ok(r.value.clone());
        }
        let why = match self.attempt(read).await {
            Ok(v) => {
                let v = Arc::new(v);
                cache.put(key, v.clone());
                reads.with_label_values(&["fresh"]).inc();
                return Ok(v);
            }
            Err(ReadError::Down(why)) => why,
            Err(e) => return Err(e.into_api()),
        };
        match cached {
            Some(r) => {
                reads.with_label_values(&["stale"]).inc();
                let mut v = (*r.value).clone();
                v.mark_stale();
                Ok(Arc::new(v))
            }
            None => {
                reads.with_label_values(&["failed"]).inc();
                Err(ApiError::Unavailable(format!(
                    "{why}, and no earlier answer to this request is known"
                )))
            }
        }
    }

    /// One read through the breaker, with the read timeout. Redis being
    /// unavailable, a timeout or an open breaker is `ReadError::Down` and
    /// counts against the breaker; anything else means Redis answered.
    /// If the caller goes away mid-read, the permit is dropped and a probe
    /// slot it held is freed.
    async fn attempt<T, F>(&self, read: F) -> Result<T, ReadError>
    where
        F: std::future::Future<Output = Result<T, ReadError>>,
    {
        let Some(permit) = self.breaker.allow(Instant::now()) else {
            return Err(ReadError::Down(
                "Redis is unavailable (circuit breaker open)".into(),
            ));
        };
        let out = match tokio::time::timeout(self.timeout, read).await {
            Ok(r) => r,
            Err(_) => Err(ReadError::Down(format!(
                "Redis did not answer within {} ms",
                self.timeout.as_millis()
            ))),
        };
        match &out {
            Err(ReadError::Down(_)) => permit.failure(Instant::now()),
            _ => permit.success(),
        }
        self.metrics
            .breaker_open
            .set(i64::from(self.breaker_state() != State::Closed));
        out
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
        let key = SeriesKey::of(client, check_known, p, &range);
        self.guarded(&self.series_cache, key, async {
            let hashes = hash_keys(&self.keys, client, &range);
            let mut pipe = redis::pipe();
            if check_known {
                pipe.sismember(self.keys.clients(), client);
            }
            joined_hgetall(&mut pipe, &hashes);
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
            let read = joined_reply(&hashes, replies.first())?;
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
        let given = range::instant("minute", &p.minute)?.map(minute_of);
        let minute = given.unwrap_or_else(|| minute_of(now));
        if minute < minute_of(now) - self.limits.minute_retention {
            return Err(ApiError::bad(
                "that minute is older than the minute retention",
            ));
        }
        if minute > minute_of(now) + 1440 {
            return Err(ApiError::bad(
                "that minute is more than a day in the future",
            ));
        }
        let key = TopKey {
            limit,
            minute: given,
        };
        self.guarded(&self.top_cache, key, async {
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
    /// the caller must start over with a snapshot instead: the stream may
    /// have lost some of them to trimming, more than [`MAX_REPLAY`] or
    /// [`MAX_REPLAY_BYTES`] follow, or `after` is not a position of this
    /// stream (past its newest entry: an id from another deployment, or
    /// crafted). `after` never reaches Redis as text: the read starts at
    /// the id after it, computed here.
    pub async fn replay(&self, after: EntryId) -> Result<Option<Vec<(String, Delta)>>, ApiError> {
        let Some(start) = next_id(after) else {
            return Ok(None);
        };
        let read = async {
            let mut conn = self.conn().await?;
            let (oldest, newest, entries): (StreamRangeReply, StreamRangeReply, StreamRangeReply) =
                redis::pipe()
                    .cmd("XRANGE")
                    .arg(self.keys.deltas())
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1)
                    .cmd("XREVRANGE")
                    .arg(self.keys.deltas())
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .cmd("XRANGE")
                    .arg(self.keys.deltas())
                    .arg(format!("{}-{}", start.0, start.1))
                    .arg("+")
                    .arg("COUNT")
                    .arg(MAX_REPLAY + 1)
                    .query_async(&mut conn)
                    .await?;
            let first = oldest.ids.first().and_then(|e| crate::hub::parse_id(&e.id));
            let last = newest.ids.first().and_then(|e| crate::hub::parse_id(&e.id));
            let trimmed = first.is_some_and(|f| f > start);
            let unknown = last.is_none_or(|l| after > l);
            if trimmed || unknown || entries.ids.len() > MAX_REPLAY {
                return Ok::<_, ReadError>(None);
            }
            let mut out = Vec::with_capacity(entries.ids.len());
            let mut bytes = 0usize;
            for e in entries.ids {
                if let Some(d) = e.get::<String>("d") {
                    bytes += d.len();
                    if bytes > MAX_REPLAY_BYTES {
                        return Ok(None);
                    }
                    if let Ok(delta) = serde_json::from_str::<Delta>(&d) {
                        out.push((e.id, delta));
                    }
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
                Some(_) => joined_hgetall(&mut pipe, &hashes),
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
                return Err(ReadError::Refused("empty MULTI reply".into()));
            }
            let last: StreamRangeReply = FromRedisValue::from_redis_value(&replies.remove(0))?;
            let last_id = last.ids.first().map(|e| e.id.clone());
            let (series, top) = match client {
                Some(c) => {
                    let read = joined_reply(&hashes, replies.first())?;
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

/// Adds one [`range::JOINED_HGETALL`] of the hashes' keys to `pipe`
/// (nothing when there are none).
fn joined_hgetall(pipe: &mut redis::Pipeline, hashes: &[(i64, String)]) {
    if hashes.is_empty() {
        return;
    }
    let cmd = pipe
        .cmd("EVAL")
        .arg(range::JOINED_HGETALL)
        .arg(hashes.len());
    for (_, k) in hashes {
        cmd.arg(k);
    }
}

/// Each hash's start with its joined fields, from the reply of
/// [`joined_hgetall`].
fn joined_reply(
    hashes: &[(i64, String)],
    reply: Option<&Value>,
) -> Result<Vec<(i64, String)>, ReadError> {
    let texts: Vec<String> = match (hashes.is_empty(), reply) {
        (true, _) => Vec::new(),
        (false, Some(v)) => Vec::<String>::from_redis_value(v)?,
        (false, None) => return Err(ReadError::Refused("no reply to the counters' read".into())),
    };
    Ok(hashes.iter().map(|(start, _)| *start).zip(texts).collect())
}
