//! The lake writer: a consumer-group member committing rounds of rows to
//! the Iceberg table, exactly once.
//!
//! ```text
//!  rebalance: assigned p ──▶ offsets + dedup state of p from the table ──▶ fetch from there
//!  loop: next_batch ──▶ cursor ▸ decode ▸ dedup ──▶ row buffer ──(flush_rows)──▶ Parquet files
//!        every commit_interval / on a rebalance / on shutdown:
//!        close files ▸ dedup file ▸ load table ▸ fence: stored offsets == round's start?
//!            ├─ yes: stage snapshot (files + offsets) ▸ swap metadata (CAS) ─┬─ ok
//!            │                                                              └─ conflict: reload, fence again
//!            └─ no: fenced (another writer moved on): drop the round, reload, seek
//!        any failure: drop the round, back off, reload, seek (nothing advanced)
//! ```
//!
//! Kafka's committed offsets are written after each commit for monitoring
//! only; the table's snapshot summary is the source of truth.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use iceberg::table::Table;
use notiflow_ingest::sink::{
    Anchor, Backoff, Change, Cursor, Decoder, Dedup, KafkaConfig, Member, MemberState,
    SINK_CONSUMER, SchemaRegistry, Source, StateStore, ensure_topics, failpoint, forget_partition,
    log_hold, partition_count, set_gauges, sleep_or_cancel, views, wait_for_broker,
};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::LakeConfig;
use crate::dedup_log;
use crate::error::LakeError;
use crate::metrics::Metrics;
use crate::round::{Outcome, Owned, PartState, Round, SourceRecord};
use crate::rows::arrow_schema;
use crate::table::{Lake, committed_anchors, topic_offsets};

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Records consumed.
    pub records: u64,
    /// Rows committed.
    pub rows: u64,
    /// Snapshots committed.
    pub commits: u64,
    /// Rounds refused by the fence.
    pub fenced: u64,
}

/// How the lake writer's partition member loads a partition's state: the
/// committed offsets and the dedup window restored from the table.
struct TableStates {
    cfg: LakeConfig,
    topic: String,
}

impl MemberState for PartState {
    fn stored_next(&self) -> Option<i64> {
        self.committed
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

impl StateStore for TableStates {
    type State = PartState;
    type Error = LakeError;

    /// The catalog client is async and this thread may be a runtime
    /// worker, so the load runs on a thread of its own with a small runtime.
    fn load_blocking(&self, parts: &[i32]) -> Result<HashMap<i32, PartState>, LakeError> {
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| LakeError::Table(format!("runtime: {e}")))?;
                rt.block_on(async {
                    let lake = Lake::open(&self.cfg).await?;
                    load_states(&lake, &self.topic, parts, self.cfg.dedup_window_hours, true).await
                })
            })
            .join()
            .unwrap_or_else(|_| Err(LakeError::Table("state loader panicked".into())))
        })
    }
}

/// Committed offsets and dedup state of `parts`, from the table; when
/// `assigned`, each partition's first record is to prove its log is the
/// one the offset was committed for (its anchor, `ingest::cursor`).
async fn load_states(
    lake: &Lake,
    topic: &str,
    parts: &[i32],
    window: u32,
    assigned: bool,
) -> Result<HashMap<i32, PartState>, LakeError> {
    let table = lake.load().await?;
    let offsets = topic_offsets(table.metadata(), topic)?;
    let anchors = committed_anchors(table.metadata())?
        .remove(topic)
        .unwrap_or_default();
    let mut dedups = dedup_log::restore(&table, topic, parts, window).await?;
    parts
        .iter()
        .map(|&p| {
            let committed = offsets.get(&p).copied();
            let dedup = dedups.remove(&p).unwrap_or_else(|| Dedup::new(window));
            if !assigned {
                return Ok((p, PartState::loaded(committed, dedup)));
            }
            let anchor = match anchors.get(&p) {
                None => None,
                Some(hex) => Some(Anchor::from_hex(hex).ok_or_else(|| {
                    LakeError::Table(format!("bad anchor {hex:?} of partition {p}"))
                })?),
            };
            Ok((p, PartState::assigned(committed, anchor, dedup)))
        })
        .collect()
}

/// Failpoints of the crash tests (see `ingest::failpoint`).
struct Failpoints {
    after_files: Option<u64>,
    after_commit: Option<u64>,
    stop_before_commit: Option<u64>,
}

/// The writer's state between batches.
struct Writer<'a> {
    cfg: &'a LakeConfig,
    topic: String,
    lake: Lake,
    table: Table,
    source: Source<Member<TableStates>>,
    owned: Owned,
    round: Round,
    schema: arrow::datatypes::SchemaRef,
    metrics: Metrics,
    stats: RunStats,
    failpoints: Failpoints,
    rounds: u64,
    /// When a snapshot last landed (or a heartbeat was considered).
    last_commit: Instant,
    /// The topic's partition count (broker metadata), looked up at start
    /// and on each heartbeat, recorded with every commit.
    partitions: Option<i32>,
    /// The generation at which this writer last checkpointed each
    /// partition's whole dedup window (`dedup_log::checkpoint_due`).
    checkpoints: HashMap<i32, u32>,
    /// Waits after fetch errors and failed rounds (the one retry policy,
    /// `ingest::retry`), reset by a fetch and by a commit.
    backoff: Backoffs,
}

#[derive(Default)]
struct Backoffs {
    fetch: notiflow_ingest::sink::Backoff,
    abort: notiflow_ingest::sink::Backoff,
}

/// How far behind the writer's clock a heartbeat puts a caught-up
/// partition's watermark: the high watermarks it compares with are up to
/// a statistics interval (1 s) old, plus room for clock skew with the broker.
const HEARTBEAT_MARGIN_MS: i64 = 5_000;

/// Runs until `shutdown`; then commits the round in hand and returns.
pub async fn run(
    kafka: &KafkaConfig,
    registry: SchemaRegistry,
    cfg: &LakeConfig,
    metrics: Metrics,
    consumer_overrides: &[(&str, &str)],
    shutdown: CancellationToken,
) -> Result<RunStats, LakeError> {
    wait_for_broker(kafka, &shutdown).await?;
    ensure_topics(kafka).await?;
    let lake = open_retrying(cfg, &shutdown).await?;
    let table = lake.load().await?;
    let schema = arrow_schema(table.metadata().current_schema())?;
    let states = TableStates {
        cfg: cfg.clone(),
        topic: kafka.topic.clone(),
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
    let mut schema_holds = notiflow_ingest::sink::SchemaHolds::default();
    let mut w = Writer {
        cfg,
        topic: kafka.topic.clone(),
        lake,
        table,
        source,
        owned: Owned::new(),
        round: Round::new(schema.clone(), cfg),
        schema,
        metrics,
        stats: RunStats::default(),
        failpoints: Failpoints {
            after_files: failpoint::armed("lake.after_files"),
            after_commit: failpoint::armed("lake.after_commit"),
            stop_before_commit: failpoint::armed("lake.stop_before_commit"),
        },
        rounds: 0,
        last_commit: Instant::now(),
        partitions: partition_count(kafka, &kafka.topic).await,
        checkpoints: HashMap::new(),
        backoff: Backoffs::default(),
    };
    let watermark_every = Duration::from_millis(cfg.watermark_interval_ms);
    let interval = Duration::from_millis(cfg.commit_interval_ms);
    let mut last_log = Instant::now();
    tracing::info!(topic = %kafka.topic, group = %cfg.group_id, table = %w.lake.ident(), location = w.table.metadata().location(), "lake writer running");

    loop {
        let stopping = shutdown.is_cancelled();
        schema_holds.release(&mut decoder, &w.source).await;
        let batch = match w
            .source
            .next_batch(cfg.batch_max_records, Duration::from_millis(200), &shutdown)
            .await
        {
            Ok(b) => {
                w.backoff.fetch.reset();
                b
            }
            Err(e) => {
                let wait = w.backoff.fetch.next_delay();
                tracing::warn!(error = %e, retry_in = ?wait, "fetch failed, backing off");
                sleep_or_cancel(&shutdown, wait).await;
                Vec::new()
            }
        };
        let pending = handoff.take();
        if !pending.is_empty() {
            w.apply_changes(pending, &shutdown).await?;
        }
        if !batch.is_empty() {
            let views = views(&batch);
            decoder.prepare_retrying(&views, &shutdown).await?;
            // A partition waits at a record whose schema id the registry
            // has not decided (ingest::schema_hold).
            let keep = schema_holds.keep(&batch, &views, &decoder);
            w.take(&batch, &views, &keep, &decoder);
            if w.round.buffered() >= cfg.flush_rows
                && let Err(e) = w.round.flush(&w.table).await
            {
                w.abort_round(&e, &shutdown).await?;
            }
        }
        let due = w.round.started.is_some_and(|s| s.elapsed() >= interval);
        if !w.round.is_empty() && (due || stopping) {
            w.beat_idle(&handoff);
            w.commit_round(&shutdown).await?;
        } else if w.round.is_empty() && !stopping && w.last_commit.elapsed() >= watermark_every {
            w.heartbeat(kafka, &handoff, &shutdown).await?;
        }
        set_gauges(
            &handoff,
            w.source.consumer(),
            w.source.topic(),
            &w.owned,
            [&w.metrics.lag, &w.metrics.beyond_log_end, &w.metrics.held],
            &w.metrics.dedup_entries,
        );
        if last_log.elapsed() > Duration::from_secs(10) {
            tracing::info!(
                records = w.stats.records,
                rows = w.stats.rows,
                commits = w.stats.commits,
                partitions = w.owned.len(),
                "lake writer progress"
            );
            last_log = Instant::now();
        }
        if stopping {
            break;
        }
    }
    tracing::info!(
        records = w.stats.records,
        rows = w.stats.rows,
        commits = w.stats.commits,
        fenced = w.stats.fenced,
        "lake writer stopped"
    );
    Ok(w.stats)
}

impl Writer<'_> {
    /// Runs the records of a batch into the round.
    fn take(
        &mut self,
        batch: &[rdkafka::message::OwnedMessage],
        views: &[notiflow_ingest::sink::RecordView<'_>],
        keep: &[bool],
        decoder: &Decoder,
    ) {
        let records = batch
            .iter()
            .zip(views)
            .zip(keep)
            .filter(|(_, k)| **k)
            .map(|((m, v), _)| SourceRecord {
                partition: m.partition(),
                offset: m.offset(),
                view: *v,
            });
        let s = self.round.take(records, &mut self.owned, decoder);
        for &(p, why) in &s.held {
            let stored = self.owned.get(&p).and_then(|st| st.committed);
            log_hold(&self.topic, p, stored, why);
        }
        for &(p, o) in &s.reseek {
            if !self.source.seek(p, Offset::Offset(o))
                && let Some(st) = self.owned.get_mut(&p)
            {
                st.cursor.seek_failed();
            }
        }
        let taken = keep.iter().filter(|k| **k).count() as u64;
        self.stats.records += taken;
        let m = &self.metrics;
        m.records.inc_by(taken);
        m.events.with_label_values(&["written"]).inc_by(s.written);
        m.events
            .with_label_values(&["duplicate"])
            .inc_by(s.duplicates);
        m.events.with_label_values(&["stale"]).inc_by(s.stale);
        m.events.with_label_values(&["rejected"]).inc_by(s.rejected);
    }

    fn new_round(&self) -> Round {
        Round::new(self.schema.clone(), self.cfg)
    }

    /// Commits the round, retrying failures until it lands, is fenced, or
    /// shutdown gives up on it.
    async fn commit_round(&mut self, shutdown: &CancellationToken) -> Result<(), LakeError> {
        let span = tracing::info_span!("lake.commit");
        match tracing::Instrument::instrument(self.try_commit(), span).await {
            Ok(Outcome::Committed {
                snapshot_id,
                files,
                bytes,
            }) => {
                self.metrics.files_per_commit.observe(files as f64);
                self.metrics.bytes_per_commit.observe(bytes as f64);
                self.committed(snapshot_id);
                Ok(())
            }
            Ok(Outcome::Fenced { stored }) => {
                self.stats.fenced += 1;
                self.metrics.commits.with_label_values(&["fenced"]).inc();
                tracing::warn!(
                    expected = ?self.round.expected,
                    ?stored,
                    "commit fenced: another writer moved these partitions on; reloading"
                );
                let parts: Vec<i32> = self.round.next.keys().copied().collect();
                self.reset_round();
                self.resync(&parts, shutdown).await
            }
            Err(e) => self.abort_round(&e, shutdown).await,
        }
    }

    /// Closes the files, then fences and commits.
    async fn try_commit(&mut self) -> Result<Outcome, LakeError> {
        self.round.partitions = self.partitions;
        let files = self.round.close_files(&self.table).await?;
        self.rounds += 1;
        if self
            .failpoints
            .after_files
            .is_some_and(|n| self.rounds >= n)
        {
            failpoint::abort("lake.after_files");
        }
        if self.failpoints.stop_before_commit == Some(self.rounds) {
            failpoint::stop_self("lake.stop_before_commit");
        }
        let started = Instant::now();
        let conflicts = self.metrics.commits.with_label_values(&["conflict"]);
        let outcome = self
            .round
            .commit(&self.lake, &self.topic, &self.table, files, || {
                conflicts.inc()
            })
            .await?;
        if matches!(outcome, Outcome::Committed { .. }) {
            self.metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        self.table = self.lake.load().await?;
        Ok(outcome)
    }

    /// With nothing else to commit: moves the watermark of every owned
    /// partition read to its log end (nothing pending, the committed
    /// offset at the high watermark; or nothing ever committed and an
    /// empty log) to about now, in a snapshot without data files, fenced
    /// like a round. Looks the topic's partition count up again (added
    /// partitions then count for completeness).
    async fn heartbeat(
        &mut self,
        kafka: &KafkaConfig,
        handoff: &notiflow_ingest::sink::Handoff<PartState>,
        shutdown: &CancellationToken,
    ) -> Result<(), LakeError> {
        self.last_commit = Instant::now();
        if let Some(n) = partition_count(kafka, &self.topic).await {
            self.partitions = Some(n);
        }
        self.beat_idle(handoff);
        if self.round.is_empty() {
            return Ok(());
        }
        tracing::debug!(
            partitions = self.round.next.len(),
            "advancing the watermarks of caught-up partitions"
        );
        self.commit_round(shutdown).await
    }

    /// Adds to the round every owned partition it does not hold that is
    /// read to its log end (or never committed with an empty log), its
    /// watermark at about now: a busy writer's commits carry its idle
    /// partitions along, so they do not hold billing back.
    fn beat_idle(&mut self, handoff: &notiflow_ingest::sink::Handoff<PartState>) {
        let now = notiflow_ingest::sink::now_micros();
        let mark = now / 1000 - HEARTBEAT_MARGIN_MS;
        let now_gen = notiflow_ingest::sink::generation(now);
        for (&p, st) in &self.owned {
            if self.round.next.contains_key(&p) {
                continue;
            }
            let high = handoff.high(p);
            let beat = match st.committed {
                // An empty log: nothing in it can be missed.
                None if st.cursor.next().is_none() && high == Some(0) => None,
                Some(0) if high == Some(0) && st.cursor.next().is_none_or(|n| n == 0) => Some(0),
                // Only a log proven to be the offset's own is read whole.
                Some(c)
                    if st.cursor.checked() && st.cursor.next() == Some(c) && high == Some(c) =>
                {
                    Some(c)
                }
                _ => continue,
            };
            self.round.heartbeat(p, beat, mark);
            // A quiet partition's window would pin snapshot expiry at its
            // last events for ever: its whole window is written again now
            // and then (issue 30, hole 6).
            if crate::dedup_log::checkpoint_due(
                now_gen,
                st.dedup.newest(),
                self.checkpoints.get(&p).copied(),
                self.cfg.dedup_window_hours,
                self.cfg.maintenance.expire_after_hours,
            ) {
                self.round.checkpoint(p, beat, &st.dedup);
            }
        }
    }

    /// Book-keeping after a commit landed.
    fn committed(&mut self, snapshot_id: i64) {
        self.last_commit = Instant::now();
        self.backoff.abort.reset();
        if self
            .failpoints
            .after_commit
            .is_some_and(|n| self.rounds >= n)
        {
            failpoint::abort("lake.after_commit");
        }
        let rows = self.round.rows;
        self.stats.rows += rows;
        self.stats.commits += 1;
        self.metrics.rows.inc_by(rows);
        self.metrics.commits.with_label_values(&["committed"]).inc();
        let now_gen = notiflow_ingest::sink::generation(notiflow_ingest::sink::now_micros());
        for &p in self.round.checkpointed() {
            self.checkpoints.insert(p, now_gen);
        }
        let mut tpl = TopicPartitionList::new();
        for (&p, &next) in &self.round.next {
            if let Some(st) = self.owned.get_mut(&p) {
                st.committed = Some(next);
            }
            let _ = tpl.add_partition_offset(&self.topic, p, Offset::Offset(next));
        }
        // Kafka's offsets are for monitoring tools only (the table is the truth).
        if let Err(e) = self.source.consumer().commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "committing Kafka offsets (monitoring only) failed");
        }
        tracing::debug!(
            snapshot_id,
            rows,
            partitions = self.round.next.len(),
            "round committed"
        );
        self.reset_round();
    }

    fn reset_round(&mut self) {
        self.round = self.new_round();
    }

    /// Drops the round after a failure, waits, and re-reads from the table's offsets.
    async fn abort_round(
        &mut self,
        e: &LakeError,
        shutdown: &CancellationToken,
    ) -> Result<(), LakeError> {
        self.metrics.commits.with_label_values(&["failed"]).inc();
        if !e.is_retryable() {
            return Err(LakeError::Table(format!("round failed: {e}")));
        }
        let wait = self.backoff.abort.next_delay();
        tracing::warn!(error = %e, retry_in = ?wait, "round failed: nothing committed; backing off, then re-reading from the table's offsets");
        self.reset_round();
        sleep_or_cancel(shutdown, wait).await;
        let parts: Vec<i32> = self.owned.keys().copied().collect();
        self.resync(&parts, shutdown).await
    }

    /// Reloads `parts` from the table and seeks to their committed offsets.
    async fn resync(
        &mut self,
        parts: &[i32],
        shutdown: &CancellationToken,
    ) -> Result<(), LakeError> {
        let parts: Vec<i32> = parts
            .iter()
            .copied()
            .filter(|p| self.owned.contains_key(p))
            .collect();
        if parts.is_empty() {
            return Ok(());
        }
        let mut backoff = Backoff::new();
        let states = loop {
            match load_states(
                &self.lake,
                &self.topic,
                &parts,
                self.cfg.dedup_window_hours,
                false,
            )
            .await
            {
                Ok(s) => break s,
                Err(e) if e.is_retryable() && !shutdown.is_cancelled() => {
                    tracing::warn!(error = %e, "reloading partition state failed, retrying");
                    sleep_or_cancel(shutdown, backoff.next_delay()).await;
                }
                Err(e) => return Err(e),
            }
        };
        for (p, st) in states {
            self.source
                .seek(p, st.committed.map_or(Offset::Beginning, Offset::Offset));
            self.owned.insert(p, st);
        }
        Ok(())
    }

    /// Partitions moved: the round in hand is committed first (the fence
    /// keeps that safe even for partitions already gone), then the moved
    /// partitions are taken in or dropped.
    async fn apply_changes(
        &mut self,
        changes: Vec<Change<PartState>>,
        shutdown: &CancellationToken,
    ) -> Result<(), LakeError> {
        let touched: Vec<i32> = self.round.next.keys().copied().collect();
        if !self.round.is_empty() {
            self.commit_round(shutdown).await?;
        }
        let mut reload = Vec::new();
        for c in changes {
            match c {
                Change::Assigned(p, st) => {
                    if touched.contains(&p) {
                        // Loaded before our commit: stale.
                        reload.push(p);
                    }
                    self.owned.insert(p, st);
                }
                Change::Revoked(parts) => {
                    for p in parts {
                        self.owned.remove(&p);
                        forget_partition(
                            [
                                &self.metrics.lag,
                                &self.metrics.beyond_log_end,
                                &self.metrics.held,
                            ],
                            p,
                        );
                    }
                }
            }
        }
        self.resync(&reload, shutdown).await
    }
}

async fn open_retrying(cfg: &LakeConfig, shutdown: &CancellationToken) -> Result<Lake, LakeError> {
    let mut backoff = Backoff::new();
    loop {
        match Lake::open(cfg).await {
            Ok(l) => return Ok(l),
            Err(e) if e.is_retryable() && !shutdown.is_cancelled() => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "catalog or object store unavailable, retrying");
                sleep_or_cancel(shutdown, delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}
