//! One commit round, without Kafka: records in (cursor ▸ decode ▸ dedup ▸
//! row buffer ▸ data files), one fenced snapshot out.
//!
//! The service drives it from the consumer; the benchmarks drive it from
//! an in-process source, so both measure the same code.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use iceberg::spec::DataFile;
use iceberg::table::Table;
pub use notiflow_ingest::sink::SourceRecord;
use notiflow_ingest::sink::{
    Admit, Anchor, Cursor, Decoder, Dedup, Hold, LastTaken, bounded_time, fingerprint, pack,
};

use crate::config::LakeConfig;
use crate::dedup_log::{self, Fingerprints};
use crate::error::LakeError;
use crate::files::{FileOptions, RoundFiles};
use crate::rows::{Origin, RowBuffer};
use crate::table::{
    ANCHORS_PROP, Change, DEDUP_MAX_GEN_PROP, DEDUP_PROP, DEDUP_WHOLE_PROP, GENERATIONS_PROP, Lake,
    OFFSETS_PROP, PARTITIONS_PROP, RETIRED_PROP, WATERMARKS_PROP, committed_anchors,
    committed_generations, committed_offsets, committed_partition_counts, committed_watermarks,
    new_snapshot_id, retired_topics, stage, to_json,
};

/// What a writer knows of a partition it owns.
#[derive(Debug, Clone)]
pub struct PartState {
    /// Next offset as committed in the table.
    pub committed: Option<i64>,
    /// Next offset to accept.
    pub cursor: Cursor,
    /// Events seen within the dedup window, as of the cursor.
    pub dedup: Dedup,
}

impl PartState {
    /// State as loaded from the table, trusted as it is.
    pub fn loaded(committed: Option<i64>, dedup: Dedup) -> Self {
        PartState {
            committed,
            cursor: Cursor::at(committed),
            dedup,
        }
    }

    /// The state of a partition just assigned, whose first record must
    /// prove the log is the one `committed` (with its `anchor`) was stored
    /// for (`ingest::cursor`).
    pub fn assigned(committed: Option<i64>, anchor: Option<Anchor>, dedup: Dedup) -> Self {
        PartState {
            committed,
            cursor: Cursor::assigned(committed, anchor),
            dedup,
        }
    }
}

/// The partitions a writer owns.
pub type Owned = HashMap<i32, PartState>;

/// Counts of one [`Round::take`].
#[derive(Debug, Clone, Default)]
pub struct TakeStats {
    /// Rows added to the round.
    pub written: u64,
    /// Valid events already seen within the window.
    pub duplicates: u64,
    /// Records of partitions not owned, or out of cursor order.
    pub stale: u64,
    /// Records that break a rule (dead-lettered by the ingest group).
    pub rejected: u64,
    /// Partitions to seek back: (partition, offset).
    pub reseek: Vec<(i32, i64)>,
    /// Partitions held in this take (their log is another one), and why.
    pub held: Vec<(i32, Hold)>,
}

/// Rows and offsets gathered since the last commit.
pub struct Round {
    buffer: RowBuffer,
    files: Option<RoundFiles>,
    /// Committed offset of each partition in the round when it began: the fence.
    pub expected: BTreeMap<i32, Option<i64>>,
    /// Next offset of each partition after the round.
    pub next: BTreeMap<i32, i64>,
    /// Newest dedup generation of each partition after the round.
    pub generations: BTreeMap<i32, u32>,
    /// Anchor of each partition's last record taken in the round.
    pub anchors: BTreeMap<i32, Anchor>,
    /// Completeness watermark of each partition after the round (broker
    /// time, ms; see `table::WATERMARKS_PROP`).
    pub watermarks: BTreeMap<i32, i64>,
    /// The topic's partition count as the writer last saw it, recorded
    /// with the round (`table::PARTITIONS_PROP`).
    pub partitions: Option<i32>,
    fps: Fingerprints,
    /// Partitions whose whole window the round's dedup file holds.
    whole: Vec<i32>,
    /// When the round's first record arrived.
    pub started: Option<Instant>,
    /// Rows in the round.
    pub rows: u64,
    opts: FileOptions,
    sort: bool,
}

/// How a commit ended.
#[derive(Debug)]
pub enum Outcome {
    /// The snapshot is current.
    Committed {
        /// Its id.
        snapshot_id: i64,
        /// Data files added.
        files: usize,
        /// Their bytes.
        bytes: u64,
    },
    /// Another writer moved a partition of the round on: nothing committed.
    Fenced {
        /// The table's offsets of the topic.
        stored: BTreeMap<i32, i64>,
    },
}

/// Raises partition `p`'s watermark in `marks` to `ms` (never lowers it).
fn note_mark(marks: &mut BTreeMap<i32, i64>, p: i32, ms: i64) {
    let w = marks.entry(p).or_insert(ms);
    *w = (*w).max(ms);
}

impl Round {
    /// An empty round writing rows of `schema` as `cfg` says (file size,
    /// row groups, zstd level, flush size, sorting).
    pub fn new(schema: SchemaRef, cfg: &LakeConfig) -> Self {
        Round {
            buffer: RowBuffer::new(schema, cfg.flush_rows.min(65_536)),
            files: None,
            expected: BTreeMap::new(),
            next: BTreeMap::new(),
            generations: BTreeMap::new(),
            anchors: BTreeMap::new(),
            watermarks: BTreeMap::new(),
            partitions: None,
            fps: Fingerprints::new(),
            whole: Vec::new(),
            started: None,
            rows: 0,
            opts: FileOptions::from(cfg),
            sort: cfg.sort_chunks,
        }
    }

    /// True when no record was taken (nothing to commit).
    pub fn is_empty(&self) -> bool {
        self.next.is_empty()
    }

    /// Partitions checkpointed in this round ([`Round::checkpoint`]).
    pub fn checkpointed(&self) -> &[i32] {
        &self.whole
    }

    /// How often this round closed its open files to open another day's
    /// (`lake.max_open_partitions`).
    pub fn file_rolls(&self) -> u64 {
        self.files.as_ref().map_or(0, RoundFiles::rolls)
    }

    /// Rows buffered in memory, not yet encoded.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Runs records through cursor, decoding and dedup into the round.
    /// `decoder` must be prepared for them.
    pub fn take<'a>(
        &mut self,
        records: impl IntoIterator<Item = SourceRecord<'a>>,
        owned: &mut Owned,
        decoder: &Decoder,
    ) -> TakeStats {
        let mut s = TakeStats::default();
        // Partitions taken from, in runs: their newest generations are
        // noted once at the end, not per record.
        let mut touched: Vec<i32> = Vec::new();
        let mut run_mark: Option<(i32, i64)> = None;
        let mut last = LastTaken::default();
        for rec in records {
            let p = rec.partition;
            let Some(st) = owned.get_mut(&p) else {
                s.stale += 1;
                continue;
            };
            let pending = s.reseek.iter().any(|r| r.0 == p);
            match st
                .cursor
                .admit_checked(rec.offset, || Anchor::of(&rec.view), pending)
            {
                Admit::Take => {}
                Admit::Stale => {
                    s.stale += 1;
                    continue;
                }
                Admit::Reseek(o) => {
                    s.reseek.push((p, o));
                    s.stale += 1;
                    continue;
                }
                Admit::Hold(why) => {
                    s.held.push((p, why));
                    s.stale += 1;
                    continue;
                }
            }
            self.expected.entry(p).or_insert(st.committed);
            self.next.insert(p, rec.offset + 1);
            if touched.last() != Some(&p) {
                touched.push(p);
            }
            last.note(p, rec.view);
            self.started.get_or_insert_with(Instant::now);
            // Every record taken (rejected ones too) moves the watermark,
            // on the partition's bounded clock: a CreateTime far ahead
            // moves it one generation at most, never a year. Kept per run
            // of one partition, written to the map once per run.
            let g = st.dedup.generation_of(rec.view.clock);
            let mark = bounded_time(rec.view.clock, g) / 1000;
            match &mut run_mark {
                Some((q, m)) if *q == p => *m = (*m).max(mark),
                other => {
                    if let Some((q, m)) = other.replace((p, mark)) {
                        note_mark(&mut self.watermarks, q, m);
                    }
                }
            }
            let event = match decoder.decode(&rec.view) {
                Ok(e) => e,
                Err(_) => {
                    s.rejected += 1;
                    continue;
                }
            };
            let fp = fingerprint(&event.event_id);
            if !st.dedup.insert(fp, g) {
                s.duplicates += 1;
                continue;
            }
            // Older than the window: not remembered (as in the aggregator).
            if g >= st.dedup.oldest_live() {
                pack(fp, self.fps.entry((p, g)).or_default());
            }
            self.buffer.push(
                &event,
                Origin {
                    ingest_time: rec.view.clock,
                    partition: p,
                    offset: rec.offset,
                },
            );
            s.written += 1;
        }
        if let Some((q, m)) = run_mark {
            note_mark(&mut self.watermarks, q, m);
        }
        for p in touched {
            if let Some(st) = owned.get(&p) {
                self.generations.insert(p, st.dedup.newest());
            }
        }
        self.anchors.extend(last.anchors());
        self.rows += s.written;
        s
    }

    /// Adds a caught-up partition to the round without records: its
    /// watermark moves to `watermark_ms` (broker time up to which its log
    /// was read whole) at the offset it has committed, fenced like any
    /// round. An idle partition would otherwise hold billing back forever.
    /// `committed` is `None` for a partition that never committed and
    /// whose log is empty: it commits its first offset, 0 (fenced on
    /// nothing being stored for it yet), so it counts as complete instead
    /// of holding billing back for ever.
    pub fn heartbeat(&mut self, p: i32, committed: Option<i64>, watermark_ms: i64) {
        self.expected.entry(p).or_insert(committed);
        self.next.entry(p).or_insert(committed.unwrap_or(0));
        note_mark(&mut self.watermarks, p, watermark_ms);
    }

    /// Writes partition `p`'s whole dedup window (`dedup`, as of the round)
    /// into the round's dedup file and marks the snapshot as holding all of
    /// it (`table::DEDUP_WHOLE_PROP`): from then on neither a restore nor
    /// snapshot expiry looks further back for `p`. The partition joins the
    /// round's fence at `committed`, as a heartbeat does, so a checkpoint
    /// of a partition another writer moved on is never committed.
    pub fn checkpoint(&mut self, p: i32, committed: Option<i64>, dedup: &Dedup) {
        self.expected.entry(p).or_insert(committed);
        self.next.entry(p).or_insert(committed.unwrap_or(0));
        for (fp, g) in dedup.live() {
            pack(fp, self.fps.entry((p, g)).or_default());
        }
        if !self.whole.contains(&p) {
            self.whole.push(p);
        }
    }

    /// Encodes the buffered rows into the round's open data files.
    pub async fn flush(&mut self, table: &Table) -> Result<(), LakeError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if self.files.is_none() {
            self.files = Some(RoundFiles::new(table, self.opts)?);
        }
        let batches = self.buffer.take(self.sort)?;
        if let Some(files) = self.files.as_mut() {
            for (day, batch) in batches {
                files.write(day, batch).await?;
            }
        }
        Ok(())
    }

    /// Flushes and closes the round's data files.
    pub async fn close_files(&mut self, table: &Table) -> Result<Vec<DataFile>, LakeError> {
        self.flush(table).await?;
        match self.files.take() {
            Some(f) => f.close().await,
            None => Ok(Vec::new()),
        }
    }

    /// Commits `files` (from [`Round::close_files`]) with the round's
    /// offsets of `topic` and its dedup file, fenced: only if the table
    /// still holds the offsets the round started from. A conflicting commit
    /// (someone else's snapshot landed first) is staged again on top of it,
    /// after checking the fence again.
    pub async fn commit(
        &mut self,
        lake: &Lake,
        topic: &str,
        table: &Table,
        files: Vec<DataFile>,
        mut on_conflict: impl FnMut(),
    ) -> Result<Outcome, LakeError> {
        let n_files = files.len();
        let bytes: u64 = files.iter().map(|f| f.file_size_in_bytes()).sum();
        let mut change = Change {
            added: files,
            ..Default::default()
        };
        if !self.fps.is_empty() {
            let name = uuid::Uuid::new_v4().to_string();
            let path = dedup_log::write(table, &name, &self.fps).await?;
            change.properties.insert(DEDUP_PROP.into(), path);
            let newest = self.fps.keys().map(|&(_, g)| g).max().unwrap_or(0);
            change
                .properties
                .insert(DEDUP_MAX_GEN_PROP.into(), newest.to_string());
        }
        if !self.whole.is_empty() {
            let whole = BTreeMap::from([(topic.to_string(), self.whole.clone())]);
            change
                .properties
                .insert(DEDUP_WHOLE_PROP.into(), to_json(&whole)?);
        }
        loop {
            let table = lake.load().await?;
            let mut all = committed_offsets(table.metadata())?;
            let stored = all.remove(topic).unwrap_or_default();
            if self
                .expected
                .iter()
                .any(|(p, e)| stored.get(p).copied() != *e)
            {
                return Ok(Outcome::Fenced { stored });
            }
            let mut offsets = stored;
            offsets.extend(self.next.iter().map(|(p, o)| (*p, *o)));
            all.insert(topic.to_string(), offsets);
            change
                .properties
                .insert(OFFSETS_PROP.into(), to_json(&all)?);
            let mut gens = committed_generations(table.metadata())?;
            gens.entry(topic.to_string())
                .or_default()
                .extend(self.generations.iter().map(|(p, g)| (*p, *g)));
            change
                .properties
                .insert(GENERATIONS_PROP.into(), to_json(&gens)?);
            let mut anchors = committed_anchors(table.metadata())?;
            anchors
                .entry(topic.to_string())
                .or_default()
                .extend(self.anchors.iter().map(|(p, a)| (*p, a.to_hex())));
            change
                .properties
                .insert(ANCHORS_PROP.into(), to_json(&anchors)?);
            let mut marks = committed_watermarks(table.metadata())?;
            let topic_marks = marks.entry(topic.to_string()).or_default();
            for (p, w) in &self.watermarks {
                let m = topic_marks.entry(*p).or_insert(*w);
                *m = (*m).max(*w);
            }
            change
                .properties
                .insert(WATERMARKS_PROP.into(), to_json(&marks)?);
            // A topic read again is no longer retired. Written with every
            // commit, like the maps above, so expiry never loses it.
            let mut retired = retired_topics(table.metadata())?;
            if retired.remove(topic) || !retired.is_empty() {
                change
                    .properties
                    .insert(RETIRED_PROP.into(), to_json(&retired)?);
            }
            let mut counts = committed_partition_counts(table.metadata())?;
            if let Some(n) = self.partitions {
                counts.insert(topic.to_string(), n);
            }
            if !counts.is_empty() {
                change
                    .properties
                    .insert(PARTITIONS_PROP.into(), to_json(&counts)?);
            }
            let snapshot_id = new_snapshot_id(table.metadata());
            let staged = stage(&table, snapshot_id, &change).await?;
            if lake.swap(&table, staged).await? {
                return Ok(Outcome::Committed {
                    snapshot_id,
                    files: n_files,
                    bytes,
                });
            }
            on_conflict();
            tracing::debug!("commit conflict: another commit landed first; fencing again");
        }
    }
}
