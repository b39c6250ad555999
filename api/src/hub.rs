//! The live fan-out (SPEC §6 live stream). One task per API process tails
//! the aggregator's deltas stream in Redis (`XREAD BLOCK`) and hands each
//! delta, already rendered as an SSE frame, to every subscribed stream
//! that may see it: the whole delta to all-client streams, one client's
//! cells to that client's streams. A frame is rendered once per scope and
//! shared (`Bytes`), so 50,000 streams cost one render, not 50,000.
//!
//! Each stream has a bounded queue. When it is full the stream is slow:
//! it is dropped (its connection is cut), never buffered without bound.
//! Heartbeats go out through the same queues, which also finds dead ones.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use notiflow_schema::counters::{Delta, DeltaCell, Keys};
use redis::streams::{StreamReadOptions, StreamReadReply};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::Scope;
use crate::error::ApiError;
use crate::metrics::ApiMetrics;

/// What a refused stream is told to wait before it retries, seconds.
const RETRY_AFTER_SECS: u64 = 5;

/// A deltas-stream entry id (`<ms>-<seq>`), ordered.
pub type EntryId = (u64, u64);

/// Parses `<ms>-<seq>`.
pub fn parse_id(s: &str) -> Option<EntryId> {
    let (a, b) = s.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// One rendered SSE frame; `id` is None for heartbeats.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The delta's entry id.
    pub id: Option<EntryId>,
    /// The bytes on the wire.
    pub bytes: Bytes,
}

/// Renders a delta frame.
pub fn delta_frame(id: &str, delta: &Delta) -> Bytes {
    let json = serde_json::to_string(delta).unwrap_or_default();
    Bytes::from(format!("id: {id}\nevent: delta\ndata: {json}\n\n"))
}

struct Sub {
    tx: mpsc::Sender<Frame>,
    kill: CancellationToken,
    key: Arc<str>,
}

#[derive(Default)]
struct Subs {
    all: HashMap<u64, Sub>,
    by_client: HashMap<String, HashMap<u64, Sub>>,
    count: usize,
    /// Streams open per API key.
    per_key: HashMap<Arc<str>, usize>,
}

impl Subs {
    fn forget(&mut self, sub: &Sub) {
        self.count -= 1;
        if let Some(n) = self.per_key.get_mut(&sub.key) {
            *n -= 1;
            if *n == 0 {
                self.per_key.remove(&sub.key);
            }
        }
    }
}

/// The fan-out.
pub struct Hub {
    subs: Mutex<Subs>,
    next: AtomicU64,
    queue: usize,
    max: usize,
    max_per_key: usize,
    metrics: ApiMetrics,
}

/// A stream's end of the fan-out; dropping it unsubscribes.
pub struct Subscription {
    /// Frames for this stream.
    pub rx: mpsc::Receiver<Frame>,
    hub: Arc<Hub>,
    id: u64,
    client: Option<String>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(self.id, self.client.as_deref());
    }
}

impl Hub {
    /// A hub whose streams queue at most `queue` frames, at most `max`
    /// streams in all and `max_per_key` per API key.
    pub fn new(queue: usize, max: usize, max_per_key: usize, metrics: ApiMetrics) -> Arc<Hub> {
        Arc::new(Hub {
            subs: Mutex::new(Subs::default()),
            next: AtomicU64::new(1),
            queue,
            max,
            max_per_key,
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Subs> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Streams subscribed now.
    pub fn len(&self) -> usize {
        self.lock().count
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Subscribes a stream of `scope` for the key `key_id`; `kill` is
    /// cancelled if it is dropped as slow. A key holding `max_per_key`
    /// streams gets a 429 (one key cannot take the server's streams from
    /// the others); a full server a 503.
    pub fn subscribe(
        self: &Arc<Self>,
        scope: &Scope,
        key_id: &str,
        kill: CancellationToken,
    ) -> Result<Subscription, ApiError> {
        let (tx, rx) = mpsc::channel(self.queue);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut subs = self.lock();
        if subs.per_key.get(key_id).copied().unwrap_or(0) >= self.max_per_key {
            return Err(ApiError::TooMany {
                message: format!(
                    "this key holds its maximum of {} live streams; close one first",
                    self.max_per_key
                ),
                retry_after_secs: RETRY_AFTER_SECS,
            });
        }
        if subs.count >= self.max {
            return Err(ApiError::Busy {
                message: format!(
                    "this server holds its maximum of {} live streams; retry later",
                    self.max
                ),
                retry_after_secs: RETRY_AFTER_SECS,
            });
        }
        let key: Arc<str> = Arc::from(key_id);
        *subs.per_key.entry(key.clone()).or_default() += 1;
        let sub = Sub { tx, kill, key };
        let client = match scope {
            Scope::All => {
                subs.all.insert(id, sub);
                None
            }
            Scope::Client(c) => {
                subs.by_client.entry(c.clone()).or_default().insert(id, sub);
                Some(c.clone())
            }
        };
        subs.count += 1;
        self.metrics.streams.set(subs.count as i64);
        Ok(Subscription {
            rx,
            hub: self.clone(),
            id,
            client,
        })
    }

    fn remove(&self, id: u64, client: Option<&str>) {
        let mut subs = self.lock();
        let removed = match client {
            None => subs.all.remove(&id),
            Some(c) => {
                let (removed, empty) = match subs.by_client.get_mut(c) {
                    Some(m) => {
                        let r = m.remove(&id);
                        (r, m.is_empty())
                    }
                    None => (None, false),
                };
                if empty {
                    subs.by_client.remove(c);
                }
                removed
            }
        };
        if let Some(sub) = removed {
            subs.forget(&sub);
            self.metrics.streams.set(subs.count as i64);
        }
    }

    /// Hands one delta to every stream that may see it.
    pub fn publish(&self, id_text: &str, delta: &Delta) {
        let Some(id) = parse_id(id_text) else {
            return;
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        self.metrics
            .delta_lag
            .observe((now_ms - delta.t).max(0) as f64 / 1000.0);
        self.metrics.deltas.inc();
        let mut subs = self.lock();
        let mut slow: Vec<(u64, Option<String>)> = Vec::new();
        if !subs.all.is_empty() {
            let frame = Frame {
                id: Some(id),
                bytes: delta_frame(id_text, delta),
            };
            offer(&subs.all, &frame, None, &mut slow);
        }
        if !subs.by_client.is_empty() {
            let mut cells: HashMap<&str, Vec<DeltaCell>> = HashMap::new();
            for cell in &delta.c {
                if subs.by_client.contains_key(cell.0.as_str()) {
                    cells.entry(cell.0.as_str()).or_default().push(cell.clone());
                }
            }
            for (client, c) in cells {
                let frame = Frame {
                    id: Some(id),
                    bytes: delta_frame(id_text, &Delta { t: delta.t, c }),
                };
                if let Some(m) = subs.by_client.get(client) {
                    offer(m, &frame, Some(client), &mut slow);
                }
            }
        }
        self.drop_slow(&mut subs, slow);
    }

    /// Sends a heartbeat comment to every stream.
    pub fn heartbeat(&self) {
        let frame = Frame {
            id: None,
            bytes: Bytes::from_static(b": heartbeat\n\n"),
        };
        let mut subs = self.lock();
        let mut slow = Vec::new();
        offer(&subs.all, &frame, None, &mut slow);
        for (client, m) in &subs.by_client {
            offer(m, &frame, Some(client), &mut slow);
        }
        self.drop_slow(&mut subs, slow);
    }

    fn drop_slow(&self, subs: &mut Subs, slow: Vec<(u64, Option<String>)>) {
        for (id, client) in slow {
            let sub = match &client {
                None => subs.all.remove(&id),
                Some(c) => subs.by_client.get_mut(c).and_then(|m| m.remove(&id)),
            };
            if let Some(sub) = sub {
                sub.kill.cancel();
                subs.forget(&sub);
                self.metrics.streams_dropped.inc();
            }
            if let Some(c) = client
                && subs.by_client.get(&c).is_some_and(HashMap::is_empty)
            {
                subs.by_client.remove(&c);
            }
        }
        self.metrics.streams.set(subs.count as i64);
    }

    /// Tails `keys.deltas()` on the Redis at `url` until `shutdown`,
    /// publishing each entry, with a heartbeat every `heartbeat`. Reconnects
    /// by itself; resumes after the last entry it published.
    pub async fn run(
        self: Arc<Self>,
        url: String,
        keys: Keys,
        heartbeat: Duration,
        shutdown: CancellationToken,
    ) {
        let hub = self.clone();
        let beat = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(heartbeat);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => hub.heartbeat(),
                    _ = beat.cancelled() => return,
                }
            }
        });
        let mut last: Option<String> = None;
        let mut backoff = notiflow_ingest::retry::Backoff::new();
        while !shutdown.is_cancelled() {
            let round = self.tail(&url, &keys, &mut last, &shutdown);
            match round.await {
                Ok(()) => return,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, "deltas stream: reconnecting in {delay:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn tail(
        &self,
        url: &str,
        keys: &Keys,
        last: &mut Option<String>,
        shutdown: &CancellationToken,
    ) -> Result<(), redis::RedisError> {
        let client = redis::Client::open(url)?;
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(5));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        let stream = keys.deltas();
        if last.is_none() {
            let newest: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
                .arg(&stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await?;
            *last = Some(
                newest
                    .ids
                    .first()
                    .map_or_else(|| "0-0".to_string(), |e| e.id.clone()),
            );
        }
        tracing::info!(%stream, "tailing the deltas stream");
        let opts = StreamReadOptions::default().block(1000).count(500);
        loop {
            let after = last.clone().unwrap_or_else(|| "0-0".into());
            let mut cmd = redis::cmd("XREAD");
            cmd.arg(&opts).arg("STREAMS").arg(&stream).arg(&after);
            let read = cmd.query_async::<redis::Value>(&mut conn);
            let reply = tokio::select! {
                r = read => r?,
                _ = shutdown.cancelled() => return Ok(()),
            };
            if matches!(reply, redis::Value::Nil) {
                continue;
            }
            let reply: StreamReadReply = redis::FromRedisValue::from_redis_value(&reply)?;
            for key in reply.keys {
                for entry in key.ids {
                    if let Some(d) = entry.get::<String>("d")
                        && let Ok(delta) = serde_json::from_str::<Delta>(&d)
                    {
                        self.publish(&entry.id, &delta);
                    }
                    *last = Some(entry.id);
                }
            }
        }
    }
}

fn offer(
    subs: &HashMap<u64, Sub>,
    frame: &Frame,
    client: Option<&str>,
    slow: &mut Vec<(u64, Option<String>)>,
) {
    for (id, sub) in subs {
        if sub.tx.try_send(frame.clone()).is_err() {
            slow.push((*id, client.map(String::from)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(queue: usize) -> Arc<Hub> {
        let m = ApiMetrics::new(&prometheus::Registry::new()).unwrap();
        Hub::new(queue, 10, 3, m)
    }

    fn delta() -> Delta {
        Delta {
            t: 1,
            c: vec![
                DeltaCell("acme".into(), 7, [1, 0, 0, 0, 0, 0, 0, 0, 0]),
                DeltaCell("beta".into(), 7, [0, 2, 0, 0, 0, 0, 0, 0, 0]),
            ],
        }
    }

    #[test]
    fn a_client_stream_sees_only_its_cells() {
        let h = hub(4);
        let mut acme = h
            .subscribe(
                &Scope::Client("acme".into()),
                "k1",
                CancellationToken::new(),
            )
            .unwrap();
        let mut all = h
            .subscribe(&Scope::All, "k2", CancellationToken::new())
            .unwrap();
        h.publish("5-1", &delta());
        let f = acme.rx.try_recv().unwrap();
        let text = std::str::from_utf8(&f.bytes).unwrap();
        assert!(text.starts_with("id: 5-1\nevent: delta\n"), "{text}");
        assert!(text.contains("acme") && !text.contains("beta"), "{text}");
        assert_eq!(f.id, Some((5, 1)));
        let f = all.rx.try_recv().unwrap();
        let text = std::str::from_utf8(&f.bytes).unwrap();
        assert!(text.contains("acme") && text.contains("beta"));
        drop(acme);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn a_full_queue_drops_the_stream_and_cuts_it() {
        let h = hub(2);
        let kill = CancellationToken::new();
        let sub = h.subscribe(&Scope::All, "k1", kill.clone()).unwrap();
        h.publish("1-0", &delta());
        h.heartbeat();
        assert!(!kill.is_cancelled());
        h.publish("2-0", &delta());
        assert!(kill.is_cancelled(), "third frame overflowed a queue of 2");
        assert_eq!(h.len(), 0);
        drop(sub);
        assert_eq!(h.len(), 0, "no double removal");
    }

    #[test]
    fn the_stream_limits_are_enforced_and_ids_parse() {
        let h = hub(2);
        let sub = |key: &str| h.subscribe(&Scope::All, key, CancellationToken::new());
        let mut mine: Vec<_> = (0..3).map(|_| sub("greedy").unwrap()).collect();
        assert!(
            matches!(sub("greedy"), Err(ApiError::TooMany { .. })),
            "a fourth stream of one key"
        );
        let others: Vec<_> = (0..7).map(|i| sub(&format!("k{i}")).unwrap()).collect();
        assert_eq!(h.len(), 10);
        assert!(
            matches!(sub("k-new"), Err(ApiError::Busy { .. })),
            "server full"
        );
        drop(mine.pop());
        assert!(
            sub("greedy").is_ok(),
            "a closed stream frees its key's slot"
        );
        drop(others);
        drop(mine);
        assert_eq!(parse_id("1732-7"), Some((1732, 7)));
        assert_eq!(parse_id("nope"), None);
    }
}
