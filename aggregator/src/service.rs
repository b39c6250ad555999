//! The aggregator service: a consumer-group member applying batches to Redis.
//!
//! ```text
//!  rebalance: assigned p ──▶ LOAD p from Redis ──▶ fetch from the stored offset
//!  loop:  next_batch ──▶ batch::process ──▶ APPLY (CAS on offsets) ──┬─ ok: cursor becomes applied
//!                                                                  ├─ fenced: reload + seek
//!                                                                  └─ redis down: back off, retry
//! ```
//!
//! Kafka's committed offsets are never used: Redis holds them, with the
//! counters, so a crash at any instant neither loses nor doubles a count.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notiflow_ingest::sink::{
    Backoff, Change, Cursor, Decoder, Dedup, Handoff, KafkaConfig, Member, MemberState,
    SINK_CONSUMER, SchemaHolds, SchemaRegistry, Source, StateStore, ensure_topics, failpoint,
    forget_partition, log_hold, now_micros, set_gauges, sleep_or_cancel, views, wait_for_broker,
};
use notiflow_schema::counters::Keys;
use rdkafka::Offset;
use rdkafka::consumer::ConsumerContext;
use rdkafka::message::Message;
use tokio_util::sync::CancellationToken;

use crate::batch::{Owned, PartitionState, Pending, Retention, SourceRecord, process};
use crate::config::{AggregatorConfig, RedisConfig};
use crate::error::AggregatorError;
use crate::metrics::Metrics;
use crate::refusal::Quarantine;
use crate::sink::{Applied, Scripts, Target};

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Records consumed.
    pub records: u64,
    /// Batches applied.
    pub batches: u64,
    /// Events counted.
    pub counted: u64,
    /// Batches refused by the offset CAS.
    pub fenced: u64,
}

/// How the aggregator's partition member loads a partition's state: the
/// stored offset and dedup window from Redis (`LOAD`), on a blocking
/// connection of its own (this runs inside the consumer's poll).
struct RedisStates {
    client: redis::Client,
    scripts: Scripts,
    target: Target,
    timeout: Duration,
}

impl MemberState for PartitionState {
    fn stored_next(&self) -> Option<i64> {
        self.applied
    }

    fn dedup(&self) -> &Dedup {
        &self.dedup
    }

    fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    fn cursor_mut(&mut self) -> &mut Cursor {
        &mut self.cursor
    }
}

impl StateStore for RedisStates {
    type State = PartitionState;
    type Error = AggregatorError;

    fn load_blocking(
        &self,
        parts: &[i32],
    ) -> Result<HashMap<i32, PartitionState>, AggregatorError> {
        let mut c = self.client.get_connection_with_timeout(self.timeout)?;
        c.set_read_timeout(Some(self.timeout * 10))?;
        parts
            .iter()
            .map(|&p| {
                let state = self.scripts.load_blocking(&mut c, &self.target, p)?;
                Ok((p, state.assigned()))
            })
            .collect()
    }
}

/// Failpoints of the crash tests (`ingest::failpoint`):
/// - `aggregator.after_apply:N` aborts the process right after its N-th apply;
/// - `aggregator.stop_before_apply:N` stops the process (SIGSTOP to itself)
///   with its N-th batch in hand, just before the apply: a zombie in the
///   making once its session times out.
#[derive(Debug, Clone, Copy, Default)]
struct Failpoints {
    abort_after_apply: Option<u64>,
    stop_before_apply: Option<u64>,
}

impl Failpoints {
    fn from_env() -> Self {
        Failpoints {
            abort_after_apply: failpoint::armed("aggregator.after_apply"),
            stop_before_apply: failpoint::armed("aggregator.stop_before_apply"),
        }
    }

    fn before_apply(&mut self, batch: u64) {
        if self.stop_before_apply == Some(batch) {
            self.stop_before_apply = None;
            failpoint::stop_self("aggregator.stop_before_apply");
        }
    }

    fn after_apply(&self, batches: u64) {
        if self.abort_after_apply.is_some_and(|n| batches >= n) {
            failpoint::abort("aggregator.after_apply");
        }
    }
}

/// The Redis target of a config.
pub fn target(kafka: &KafkaConfig, redis: &RedisConfig, cfg: &AggregatorConfig) -> Target {
    Target {
        keys: Keys::new(redis.key_prefix.clone()),
        group: cfg.group_id.clone(),
        topic: kafka.topic.clone(),
        minute_retention_secs: i64::from(cfg.minute_retention_hours) * 3600,
        rollup_retention_secs: i64::from(cfg.rollup_retention_days) * 86_400,
        dedup_window: cfg.dedup_window_hours,
        delta_stream_len: cfg.delta_stream_len,
    }
}

/// Connects to Redis, retrying with backoff until it answers or `shutdown`.
pub async fn connect(
    redis: &RedisConfig,
    shutdown: &CancellationToken,
) -> Result<redis::aio::ConnectionManager, AggregatorError> {
    let client = redis::Client::open(redis.url.as_str())?;
    let timeout = Duration::from_millis(redis.timeout_ms);
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout * 10)
        .set_number_of_retries(1);
    let mut backoff = Backoff::new();
    loop {
        match redis::aio::ConnectionManager::new_with_config(client.clone(), cfg.clone()).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "redis unreachable, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(AggregatorError::ShutDown),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Runs until `shutdown`; then applies the batch in hand and returns.
pub async fn run(
    kafka: &KafkaConfig,
    registry: SchemaRegistry,
    redis_cfg: &RedisConfig,
    cfg: &AggregatorConfig,
    metrics: Metrics,
    consumer_overrides: &[(&str, &str)],
    shutdown: CancellationToken,
) -> Result<RunStats, AggregatorError> {
    wait_for_broker(kafka, &shutdown).await?;
    ensure_topics(kafka).await?;
    let mut conn = connect(redis_cfg, &shutdown).await?;
    let target = target(kafka, redis_cfg, cfg);
    let states = RedisStates {
        client: redis::Client::open(redis_cfg.url.as_str())?,
        scripts: Scripts::default(),
        target: target.clone(),
        timeout: Duration::from_millis(redis_cfg.timeout_ms),
    };
    let (context, handoff) = Member::new(states, &kafka.topic, shutdown.clone());
    let mut overrides = vec![
        ("queued.max.messages.kbytes", "32768"),
        ("statistics.interval.ms", "1000"),
    ];
    overrides.extend_from_slice(SINK_CONSUMER);
    overrides.extend_from_slice(consumer_overrides);
    let source = Source::subscribe_with(kafka, &cfg.group_id, &overrides, context)?;
    let mut decoder = Decoder::new(registry);
    let scripts = Arc::new(Scripts::default());
    let retention = Retention::new(
        cfg.dedup_window_hours,
        cfg.minute_retention_hours,
        cfg.rollup_retention_days,
    );
    let max_wait = Duration::from_millis(cfg.batch_max_wait_ms);
    let mut failpoints = Failpoints::from_env();
    let mut owned = Owned::default();
    let mut stats = RunStats::default();
    let mut last_log = Instant::now();
    let mut last_audit = Instant::now();
    let mut inflight: Option<Inflight> = None;
    let mut quarantine = Quarantine::default();
    let mut schema_holds = SchemaHolds::default();
    tracing::info!(topic = %kafka.topic, group = %cfg.group_id, prefix = %redis_cfg.key_prefix, "aggregator running");

    // Fetch errors back off with the one retry policy (ingest::retry).
    let mut fetch_backoff = notiflow_ingest::sink::Backoff::new();
    loop {
        let stopping = shutdown.is_cancelled();
        schema_holds.release(&mut decoder, &source).await;
        let batch = match source
            .next_batch(cfg.batch_max_records, max_wait, &shutdown)
            .await
        {
            Ok(b) => {
                fetch_backoff.reset();
                b
            }
            Err(e) => {
                let wait = fetch_backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?wait, "fetch failed, backing off");
                sleep_or_cancel(&shutdown, wait).await;
                Vec::new()
            }
        };
        take_changes(&handoff, &mut owned, &mut quarantine, &metrics);
        // Partitions held after a refusal are tried again, each on its
        // own, from their stored offsets (refusal.rs).
        let due = quarantine.due();
        if !due.is_empty() {
            resync(
                &scripts, &mut conn, &target, &source, &mut owned, &due, &shutdown,
            )
            .await?;
        }
        let ctx = Ctx {
            scripts: &scripts,
            target: &target,
            source: &source,
            metrics: &metrics,
            shutdown: &shutdown,
        };
        let mut groups: Vec<Pending> = Vec::new();
        if !batch.is_empty() {
            let views = views(&batch);
            decoder.prepare_retrying(&views, &shutdown).await?;
            // A partition waits at a record whose schema id the registry
            // has not decided (ingest::schema_hold).
            let keep = schema_holds.keep(&batch, &views, &decoder);
            let records =
                batch
                    .iter()
                    .zip(&views)
                    .zip(keep)
                    .filter(|(_, k)| *k)
                    .map(|((m, v), _)| SourceRecord {
                        partition: m.partition(),
                        offset: m.offset(),
                        view: *v,
                    });
            stats.records += batch.len() as u64;
            if quarantine.is_empty() {
                groups.push(process(records, &mut owned, &decoder, retention));
            } else {
                // Held partitions take nothing; isolated ones are applied
                // in batches of their own, after the batch in flight.
                if let Some(f) = inflight.take() {
                    let outcome = settle(f, &mut stats, &metrics, &failpoints).await?;
                    if after(
                        &ctx,
                        &mut conn,
                        &mut owned,
                        &mut quarantine,
                        outcome,
                        &mut None,
                    )
                    .await?
                    {
                        break;
                    }
                }
                let mut split: BTreeMap<Option<i32>, Vec<SourceRecord<'_>>> = BTreeMap::new();
                for r in records.filter(|r| !quarantine.holds(r.partition)) {
                    let own = quarantine.isolates(r.partition).then_some(r.partition);
                    split.entry(own).or_default().push(r);
                }
                for recs in split.into_values() {
                    groups.push(process(recs, &mut owned, &decoder, retention));
                }
            }
        }
        let isolating = groups.len() > 1;
        let mut next: Option<Pending> = None;
        let mut shut = false;
        for pending in groups {
            observe_batch(&metrics, &pending);
            for &(p, why) in &pending.held {
                log_hold(
                    source.topic(),
                    p,
                    owned.get(&p).and_then(|s| s.applied),
                    why,
                );
            }
            for &(p, offset) in &pending.reseek {
                if !source.seek(p, Offset::Offset(offset))
                    && let Some(s) = owned.get_mut(&p)
                {
                    s.cursor.seek_failed();
                }
            }
            if pending.is_empty() {
                continue;
            }
            if isolating {
                // One at a time, each settled before the next.
                failpoints.before_apply(stats.batches + 1);
                set_applied(&mut owned, &pending);
                let f = launch(&scripts, &conn, &target, pending, &metrics, &shutdown);
                let outcome = settle(f, &mut stats, &metrics, &failpoints).await?;
                if after(
                    &ctx,
                    &mut conn,
                    &mut owned,
                    &mut quarantine,
                    outcome,
                    &mut None,
                )
                .await?
                {
                    shut = true;
                    break;
                }
            } else {
                next = Some(pending);
            }
        }
        if shut {
            break;
        }
        let audit_due = last_audit.elapsed() > AUDIT_EVERY && !owned.is_empty();
        // One batch in flight at a time: the next goes out once Redis has
        // answered for this one, so the offset CAS sees them in order.
        if let Some(f) = inflight.take() {
            let outcome = settle(f, &mut stats, &metrics, &failpoints).await?;
            if after(
                &ctx,
                &mut conn,
                &mut owned,
                &mut quarantine,
                outcome,
                &mut next,
            )
            .await?
            {
                break;
            }
        }
        if let Some(pending) = next {
            failpoints.before_apply(stats.batches + 1);
            set_applied(&mut owned, &pending);
            let f = launch(&scripts, &conn, &target, pending, &metrics, &shutdown);
            if stopping || audit_due {
                let outcome = settle(f, &mut stats, &metrics, &failpoints).await?;
                if after(
                    &ctx,
                    &mut conn,
                    &mut owned,
                    &mut quarantine,
                    outcome,
                    &mut None,
                )
                .await?
                {
                    break;
                }
            } else {
                inflight = Some(f);
            }
        }
        if audit_due {
            last_audit = Instant::now();
            let moved = audit(&scripts, &mut conn, &target, &owned).await;
            if !moved.is_empty() {
                tracing::warn!(partitions = ?moved, "stored offsets differ from ours (partition moved or Redis lost writes); reloading");
                resync(
                    &scripts, &mut conn, &target, &source, &mut owned, &moved, &shutdown,
                )
                .await?;
            }
        }
        set_gauges(
            &handoff,
            source.consumer(),
            source.topic(),
            &owned,
            [&metrics.lag, &metrics.beyond_log_end, &metrics.held],
            &metrics.dedup_entries,
        );
        if last_log.elapsed() > Duration::from_secs(10) {
            tracing::info!(
                records = stats.records,
                counted = stats.counted,
                batches = stats.batches,
                partitions = owned.len(),
                "aggregator progress"
            );
            last_log = Instant::now();
        }
        if stopping {
            break;
        }
    }
    tracing::info!(
        records = stats.records,
        counted = stats.counted,
        batches = stats.batches,
        fenced = stats.fenced,
        "aggregator stopped"
    );
    Ok(stats)
}

/// How often the stored offsets of idle partitions are compared with ours.
const AUDIT_EVERY: Duration = Duration::from_secs(5);

/// Owned partitions whose stored offset is not the one we last applied: a
/// batch would be fenced anyway, but an idle partition has no batch to tell
/// us (after a Redis restart that lost its last writes, say).
async fn audit(
    scripts: &Scripts,
    conn: &mut redis::aio::ConnectionManager,
    target: &Target,
    owned: &Owned,
) -> Vec<i32> {
    let parts: Vec<i32> = owned.keys().copied().collect();
    match scripts.stored_offsets(conn, target, &parts).await {
        // A held partition also goes on an anchor an operator removed
        // (accept-gap at the very offset stored).
        Ok(stored) => parts
            .iter()
            .zip(stored)
            .filter(|(p, (offset, anchor))| {
                let s = &owned[p];
                s.applied != *offset || (s.cursor.held().is_some() && s.anchor != *anchor)
            })
            .map(|(p, _)| *p)
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "offset audit failed");
            Vec::new()
        }
    }
}

fn take_changes(
    handoff: &Handoff<PartitionState>,
    owned: &mut Owned,
    quarantine: &mut Quarantine,
    metrics: &Metrics,
) {
    for c in handoff.take() {
        match c {
            Change::Assigned(p, s) => {
                quarantine.forget(p, metrics);
                owned.insert(p, s);
            }
            Change::Revoked(parts) => {
                for p in parts {
                    quarantine.forget(p, metrics);
                    owned.remove(&p);
                    forget_partition([&metrics.lag, &metrics.beyond_log_end, &metrics.held], p);
                }
            }
        }
    }
    metrics.partitions.set(owned.len() as i64);
}

/// A batch being applied by its own task, so that the next batch is
/// processed meanwhile (Redis works on the other core).
type Inflight = tokio::task::JoinHandle<(Pending, Result<Option<Applied>, AggregatorError>)>;

/// How an applied batch ended.
enum Settled {
    /// Applied (and its delta published): each partition's next offset.
    Applied(Vec<(i32, i64)>),
    /// Refused by the offset CAS; these partitions must be reloaded.
    Fenced(Vec<i32>),
    /// Refused by Redis because of one of its keys (`refusal`): nothing
    /// written; these partitions must be reloaded and narrowed down.
    Refused {
        /// The batch's partitions.
        parts: Vec<i32>,
        /// The key named.
        key: String,
        /// Redis' words.
        reason: String,
    },
    /// Shutdown came while Redis was unreachable: nothing applied.
    ShutDown,
}

fn launch(
    scripts: &Arc<Scripts>,
    conn: &redis::aio::ConnectionManager,
    target: &Target,
    pending: Pending,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Inflight {
    let (scripts, mut conn, target, metrics, shutdown) = (
        Arc::clone(scripts),
        conn.clone(),
        target.clone(),
        metrics.clone(),
        shutdown.clone(),
    );
    tokio::spawn(async move {
        let r = apply(&scripts, &mut conn, &target, &pending, &metrics, &shutdown).await;
        // Metrics move when Redis does, not when the loop next looks.
        if let Ok(Some(Applied::Ok(_) | Applied::AlreadyApplied)) = &r {
            observe_applied(&metrics, &pending);
        }
        (pending, r)
    })
}

/// Waits for the batch in flight and books its outcome.
async fn settle(
    f: Inflight,
    stats: &mut RunStats,
    metrics: &Metrics,
    failpoints: &Failpoints,
) -> Result<Settled, AggregatorError> {
    let (pending, result) = f
        .await
        .map_err(|e| AggregatorError::Protocol(format!("apply task failed: {e}")))?;
    let result = match result {
        Err(e) => {
            let Some((key, reason)) = e.refusal() else {
                tracing::error!(error = %e, partitions = ?pending.offsets.keys().collect::<Vec<_>>(),
                    "redis refused the batch and retrying cannot help; stopping (nothing of the batch was written)");
                return Err(e);
            };
            return Ok(Settled::Refused {
                parts: pending.offsets.keys().copied().collect(),
                key,
                reason,
            });
        }
        Ok(r) => r,
    };
    if let Some(Applied::AlreadyApplied) = &result {
        tracing::info!(partitions = ?pending.offsets.keys().collect::<Vec<_>>(),
            "batch already applied (an earlier try whose reply was lost, or another member that took the same records): nothing written");
    }
    match result {
        Some(Applied::Ok(_) | Applied::AlreadyApplied) => {
            stats.batches += 1;
            stats.counted += pending.stats.counted;
            failpoints.after_apply(stats.batches);
            Ok(Settled::Applied(
                pending.offsets.iter().map(|(p, u)| (*p, u.next)).collect(),
            ))
        }
        Some(Applied::Fenced(stored)) => {
            stats.fenced += 1;
            metrics.fenced.inc();
            tracing::warn!(
                ?stored,
                "batch fenced: another member moved these partitions; reloading"
            );
            Ok(Settled::Fenced(pending.offsets.keys().copied().collect()))
        }
        None => Ok(Settled::ShutDown),
    }
}

/// Applies one batch, retrying while Redis is unreachable. `None` if
/// shutdown came first.
async fn apply(
    scripts: &Scripts,
    conn: &mut redis::aio::ConnectionManager,
    target: &Target,
    pending: &Pending,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<Option<Applied>, AggregatorError> {
    let call = scripts.prepare(target, pending, now_micros() / 1000);
    let mut backoff = Backoff::new();
    loop {
        let started = Instant::now();
        let span = tracing::info_span!(
            "aggregator.apply",
            events = pending.record_ms.len(),
            partitions = pending.offsets.len()
        );
        match tracing::Instrument::instrument(scripts.apply(conn, &call), span).await {
            Ok(a) => {
                metrics
                    .apply_seconds
                    .observe(started.elapsed().as_secs_f64());
                return Ok(Some(a));
            }
            Err(e) if e.is_retryable() => {
                metrics.redis_errors.inc();
                if shutdown.is_cancelled() && backoff.at_max() {
                    return Ok(None);
                }
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "redis apply failed, consumption paused, retrying");
                // Not cancellable: the batch in hand is still owed to Redis.
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                // An error reply, not a lost one: APPLY checks what can fail
                // before its first write, so nothing of the batch is stored
                // and its offsets did not move. Never taken as applied.
                metrics.redis_errors.inc();
                return Err(e);
            }
        }
    }
}

/// What [`after`] needs besides the state it changes.
struct Ctx<'a, C: ConsumerContext + 'static> {
    scripts: &'a Scripts,
    target: &'a Target,
    source: &'a Source<C>,
    metrics: &'a Metrics,
    shutdown: &'a CancellationToken,
}

/// The next batch's compare-and-set expects these offsets: set them now;
/// a fence or a refusal reloads them from Redis.
fn set_applied(owned: &mut Owned, pending: &Pending) {
    for (p, u) in &pending.offsets {
        if let Some(s) = owned.get_mut(p) {
            s.applied = Some(u.next);
        }
    }
}

/// Books a settled batch. A batch processed meanwhile (`next`) assumed
/// this one applied: if it did not, `next` is dropped and its partitions
/// are reloaded too. True when shutdown came first.
async fn after<C: ConsumerContext + 'static>(
    ctx: &Ctx<'_, C>,
    conn: &mut redis::aio::ConnectionManager,
    owned: &mut Owned,
    quarantine: &mut Quarantine,
    outcome: Settled,
    next: &mut Option<Pending>,
) -> Result<bool, AggregatorError> {
    let mut reload = match outcome {
        Settled::Applied(done) => {
            mark_published(owned, &done);
            if !quarantine.is_empty() {
                quarantine.applied(done.iter().map(|d| d.0), ctx.metrics);
            }
            return Ok(false);
        }
        Settled::ShutDown => return Ok(true),
        Settled::Fenced(parts) => parts,
        Settled::Refused { parts, key, reason } => {
            quarantine.refused(&parts, &key, &reason, ctx.metrics);
            parts
        }
    };
    if let Some(n) = next.take() {
        reload.extend(n.offsets.keys().copied());
    }
    reload.sort_unstable();
    reload.dedup();
    resync(
        ctx.scripts,
        conn,
        ctx.target,
        ctx.source,
        owned,
        &reload,
        ctx.shutdown,
    )
    .await?;
    Ok(false)
}

/// Reloads `parts` from Redis and seeks the consumer to their stored offsets.
async fn resync<C: ConsumerContext + 'static>(
    scripts: &Scripts,
    conn: &mut redis::aio::ConnectionManager,
    target: &Target,
    source: &Source<C>,
    owned: &mut Owned,
    parts: &[i32],
    shutdown: &CancellationToken,
) -> Result<(), AggregatorError> {
    for &p in parts {
        if !owned.contains_key(&p) {
            continue;
        }
        let mut backoff = Backoff::new();
        let state = loop {
            match scripts.load(conn, target, p).await {
                Ok(s) => break s,
                Err(e) if e.is_retryable() && !shutdown.is_cancelled() => {
                    tracing::warn!(partition = p, error = %e, "reload failed, retrying");
                    sleep_or_cancel(shutdown, backoff.next_delay()).await;
                }
                Err(e) => return Err(e),
            }
        };
        let before = owned.get(&p);
        // A log not yet proven (held, or its anchor still to come) is
        // checked again from the reloaded offset and anchor.
        let state = if before.is_some_and(|b| !b.cursor.checked()) {
            state.assigned()
        } else {
            state
        };
        source.seek(
            p,
            state
                .cursor
                .fetch_from()
                .map_or(Offset::Beginning, Offset::Offset),
        );
        let state = state.reloaded(before);
        if let Some(upto) = state.replay_upto {
            tracing::warn!(partition = p, from = ?state.applied, upto,
                "Redis is behind what this process applied and published (it lost writes): applying again, without publishing the deltas twice");
        }
        owned.insert(p, state);
    }
    Ok(())
}

/// Remembers how far each partition's applied batches were published.
fn mark_published(owned: &mut Owned, done: &[(i32, i64)]) {
    for &(p, next) in done {
        if let Some(s) = owned.get_mut(&p) {
            s.published = s.published.max(Some(next));
        }
    }
}

fn observe_batch(m: &Metrics, p: &Pending) {
    let s = &p.stats;
    m.records.inc_by(s.records);
    m.events.with_label_values(&["stale"]).inc_by(s.stale);
    for (reason, n) in &s.rejected {
        m.dlq.with_label_values(&[reason]).inc_by(*n);
        m.events.with_label_values(&["rejected"]).inc_by(*n);
    }
}

fn observe_applied(m: &Metrics, p: &Pending) {
    let s = &p.stats;
    m.events.with_label_values(&["counted"]).inc_by(s.counted);
    m.events
        .with_label_values(&["duplicate"])
        .inc_by(s.duplicates);
    m.events
        .with_label_values(&["late_dropped"])
        .inc_by(s.late_dropped);
    m.dedup_hits.inc_by(s.duplicates);
    m.late_dropped.inc_by(s.late_dropped);
    let now_ms = now_micros() / 1000;
    let local = m.event_to_redis_seconds.local();
    for &t in &p.record_ms {
        local.observe((now_ms - t).max(0) as f64 / 1000.0);
    }
    local.flush();
}
