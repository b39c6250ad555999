//! The ingest service: consume, decode, validate, dead-letter, hand on.
//!
//! ```text
//!  topic ──▶ Source::next_batch ──▶ Decoder::decode ──┬─ valid ──▶ EventSink
//!                                                     └─ reject ─▶ Letters (a task each)
//!  commit each partition up to its oldest letter not yet acknowledged
//! ```
//!
//! Run standalone (`notiflow run ingest`) it owns the dead-letter topic, so
//! each poison record is dead-lettered once, by one consumer group. A
//! partition's offset is committed past a poison record only once its letter
//! is acknowledged (or given up with the alarm): delivery is at least once.
//! Letters are not waited for: a dead-letter topic that is slow or times out
//! holds the commits of the partitions whose records it owes, no others.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use notiflow_schema::Event;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::message::{Message, OwnedMessage};
use tokio_util::sync::CancellationToken;

use crate::codec::{Decoder, RecordView};
use crate::config::{IngestConfig, KafkaConfig};
use crate::dlq::{DlqWriter, Letters};
use crate::error::{IngestError, Reject};
use crate::kafka::{ensure_topics, wait_for_broker};
use crate::metrics::{Metrics, set_lag};
use crate::rebalance::Handoff;
use crate::registry::SchemaRegistry;
use crate::schema_hold::SchemaHolds;
use crate::source::{Source, sleep_or_cancel, views};

/// Consumer context that keeps the high watermarks librdkafka's statistics
/// report, for the lag gauge.
struct Watermarks {
    topic: String,
    highs: Handoff<()>,
}

impl rdkafka::ClientContext for Watermarks {
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.highs.record_highs(&self.topic, &statistics);
    }
}

impl ConsumerContext for Watermarks {}

/// Where valid events go.
pub trait EventSink: Send {
    /// Takes one valid event read at `partition`/`offset`.
    fn accept(&mut self, event: &Event<'_>, partition: i32, offset: i64);
}

/// A sink that only counts (the validator's own use); clones of the counter
/// can be read while the service runs.
#[derive(Debug, Default, Clone)]
pub struct CountingSink(pub Arc<AtomicU64>);

impl EventSink for CountingSink {
    fn accept(&mut self, _: &Event<'_>, _: i32, _: i64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// What one run of the service saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Records consumed.
    pub records: u64,
    /// Valid events handed to the sink.
    pub valid: u64,
    /// Dead-lettered records per reason code.
    pub rejected: BTreeMap<&'static str, u64>,
}

impl Stats {
    /// Records dead-lettered, all reasons.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// Runs until `shutdown`, then finishes the batch in hand, commits and returns.
pub async fn run(
    kafka: &KafkaConfig,
    registry: SchemaRegistry,
    cfg: &IngestConfig,
    sink: &mut impl EventSink,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<Stats, IngestError> {
    wait_for_broker(kafka, &shutdown).await?;
    ensure_topics(kafka).await?;
    let highs = Handoff::default();
    let source = Source::subscribe_with(
        kafka,
        &cfg.group_id,
        &[("statistics.interval.ms", "1000")],
        Watermarks {
            topic: kafka.topic.clone(),
            highs: highs.clone(),
        },
    )?;
    let mut letters = Letters::new(DlqWriter::new(kafka, cfg, metrics.clone())?);
    // Offsets committed, per partition (to commit only what moved).
    let mut committed = BTreeMap::new();
    let mut decoder = Decoder::new(registry);
    let mut stats = Stats::default();
    let mut last_log = Instant::now();
    // Next offset per partition consumed so far, for the lag gauge.
    let mut positions = BTreeMap::new();
    let max_wait = Duration::from_millis(cfg.batch_max_wait_ms);
    tracing::info!(topic = %kafka.topic, group = %cfg.group_id, "ingest running");

    let mut schema_holds = SchemaHolds::default();
    // Fetch errors back off with the one retry policy (crate::retry).
    let mut fetch_backoff = crate::retry::Backoff::new();
    while !shutdown.is_cancelled() {
        letters.reap();
        schema_holds.release(&mut decoder, &source).await;
        while letters.over_budget() && !shutdown.is_cancelled() {
            // Memory, not time: only a dead-letter topic down for long
            // with a flood of poison gets here.
            letters.wait_one().await;
        }
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
                continue;
            }
        };
        if batch.is_empty() {
            // Idle: the watermarks may have arrived after the last batch,
            // letters may have been acknowledged meanwhile.
            update_lag(&metrics, &highs, &mut positions, &source);
            commit_durable(&source, &positions, &letters, &mut committed, &metrics);
            continue;
        }
        let started = Instant::now();
        let views = views(&batch);
        decoder.prepare_retrying(&views, &shutdown).await?;
        // A partition waits at a record whose schema id the registry has
        // not decided (schema_hold): nothing of it from there is taken or
        // committed.
        let keep = schema_holds.keep(&batch, &views, &decoder);
        let taken: Vec<(&OwnedMessage, &RecordView<'_>)> = batch
            .iter()
            .zip(&views)
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(mv, _)| mv)
            .collect();

        let mut rejects: Vec<(&_, Reject)> = Vec::new();
        let decode = tracing::info_span!("ingest.validate", records = taken.len()).entered();
        for &(m, v) in &taken {
            match decoder.decode(v) {
                Ok(ev) => {
                    sink.accept(
                        &ev,
                        rdkafka::Message::partition(m),
                        rdkafka::Message::offset(m),
                    );
                    stats.valid += 1;
                }
                Err(r) => {
                    *stats.rejected.entry(r.code()).or_default() += 1;
                    rejects.push((m, r));
                }
            }
        }
        drop(decode);
        metrics.valid.inc_by((taken.len() - rejects.len()) as u64);
        for (_, r) in &rejects {
            metrics.dlq.with_label_values(&[r.code()]).inc();
        }
        // Not waited for: each partition is committed up to its oldest
        // letter in flight, the others on (a letter the broker keeps
        // refusing is given up with an alarm within its bound).
        for (m, r) in rejects {
            letters.send(m, r, &shutdown);
        }
        for &(m, _) in &taken {
            let next = positions.entry(m.partition()).or_insert(0);
            *next = (*next).max(m.offset() + 1);
        }
        update_lag(&metrics, &highs, &mut positions, &source);
        commit_durable(&source, &positions, &letters, &mut committed, &metrics);
        stats.records += taken.len() as u64;
        metrics.records.inc_by(taken.len() as u64);
        metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
        if last_log.elapsed() > Duration::from_secs(10) {
            tracing::info!(
                records = stats.records,
                valid = stats.valid,
                rejected = stats.rejected_total(),
                "ingest progress"
            );
            last_log = Instant::now();
        }
    }
    // Letters still in flight are not durable: their partitions stay
    // below them and they are sent again after the restart.
    letters.reap();
    commit_durable(&source, &positions, &letters, &mut committed, &metrics);
    tracing::info!(records = stats.records, valid = stats.valid, rejected = ?stats.rejected,
        letters_in_flight = letters.len(), "ingest stopped");
    Ok(stats)
}

/// Commits every partition consumed up to its oldest letter in flight (or
/// all it consumed), where that moved since the last commit.
fn commit_durable<C: ConsumerContext + 'static>(
    source: &Source<C>,
    positions: &BTreeMap<i32, i64>,
    letters: &Letters,
    committed: &mut BTreeMap<i32, i64>,
    metrics: &Metrics,
) {
    // `positions` holds only partitions assigned (update_lag prunes it).
    committed.retain(|p, _| positions.contains_key(p));
    let due: BTreeMap<i32, i64> = positions
        .iter()
        .map(|(&p, &next)| (p, letters.commit_bound(p).map_or(next, |b| b.min(next))))
        .filter(|(p, to)| committed.get(p) != Some(to))
        .collect();
    match source.commit_offsets(&due) {
        Ok(()) => committed.extend(due),
        Err(e) => {
            // Seen again after a restart: at least once.
            tracing::warn!(error = %e, "offset commit failed");
            metrics.commit_errors.inc();
        }
    }
}

/// Sets the lag gauge of every partition consumed so far whose high
/// watermark librdkafka has reported. Partitions that a rebalance moved to
/// another member are dropped, gauge included, so none shows a frozen lag.
fn update_lag<C: ConsumerContext + 'static>(
    metrics: &Metrics,
    highs: &Handoff<()>,
    positions: &mut BTreeMap<i32, i64>,
    source: &Source<C>,
) {
    if let Ok(tpl) = source.consumer().assignment() {
        let assigned: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        positions.retain(|p, _| {
            let keep = assigned.contains(p);
            if !keep {
                let _ = metrics.lag.remove_label_values(&[p.to_string().as_str()]);
            }
            keep
        });
    }
    let highs = highs.highs();
    for (&p, &next) in positions.iter() {
        set_lag(&metrics.lag, &highs, p, next);
    }
}
