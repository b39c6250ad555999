//! The lake's table code against a real local warehouse and SQLite catalog
//! (no broker): the swap refuses a commit staged on a stale table, a fenced
//! round commits nothing, compaction restages on top of a writer's commit,
//! and expiry plus orphan removal keep every live row.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use notiflow_ingest::dedup::Dedup;
use notiflow_ingest::{Decoder, RecordView, SchemaRegistry};
use notiflow_lake::inspect::stats;
use notiflow_lake::maintenance::{self, live_files};
use notiflow_lake::round::{Outcome, Owned, PartState, Round};
use notiflow_lake::rows::arrow_schema;
use notiflow_lake::table::{
    Change, Completeness, GENERATIONS_PROP, OFFSETS_PROP, committed_generations, committed_offsets,
    committed_watermarks, complete_until, new_snapshot_id, stage, stage_at, to_json, topic_offsets,
};
use notiflow_lake::{Lake, LakeConfig};
use notiflow_loadgen::fixture::{OwnedRecord, RecordStream};
use notiflow_loadgen::generator::Shape;

mod sim;

const PARTITIONS: i32 = 4;

fn cfg(dir: &std::path::Path) -> LakeConfig {
    LakeConfig {
        warehouse: dir.join("warehouse").display().to_string(),
        catalog_uri: format!("sqlite://{}", dir.join("catalog.db").display()).into(),
        flush_rows: 1000,
        ..LakeConfig::default()
    }
}

fn records(n: usize, seed: u64) -> Vec<OwnedRecord> {
    records_over(n, seed, 3_600_000_000, 1000.0)
}

/// `n` records from `ago_micros` before now on, `rate` a second.
fn records_over(n: usize, seed: u64, ago_micros: i64, rate: f64) -> Vec<OwnedRecord> {
    let shape = Shape {
        seed,
        clients: 50,
        rate,
        start: notiflow_ingest::source::now_micros() - ago_micros,
        avro_share: 0.3,
        content_type_share: 0.0,
        duplicate_share: 0.01,
        malformed_share: 0.0,
    };
    RecordStream::new(shape, PARTITIONS).take(n)
}

/// The dedup state of every partition of topic `t`, as a writer restores it.
async fn restore_all(table: &iceberg::table::Table) -> std::collections::HashMap<i32, Dedup> {
    let parts: Vec<i32> = (0..PARTITIONS).collect();
    notiflow_lake::dedup_log::restore(table, "t", &parts, 24)
        .await
        .unwrap()
}

/// A writer's state and one round over `recs`, closed and ready to commit.
struct Writer {
    owned: Owned,
    decoder: Decoder,
}

impl Writer {
    fn new() -> Self {
        Writer {
            owned: (0..PARTITIONS)
                .map(|p| (p, PartState::loaded(None, Dedup::new(24))))
                .collect(),
            decoder: Decoder::new(SchemaRegistry::builtin()),
        }
    }

    /// A writer taking over every partition from the table, as a
    /// rebalance does.
    async fn resume(lake: &Lake) -> Self {
        let table = lake.load().await.unwrap();
        let offsets = topic_offsets(table.metadata(), "t").unwrap();
        let parts: Vec<i32> = (0..PARTITIONS).collect();
        let mut dedups = restore_all(&table).await;
        Writer {
            owned: parts
                .iter()
                .map(|p| {
                    let st = PartState::loaded(offsets.get(p).copied(), dedups.remove(p).unwrap());
                    (*p, st)
                })
                .collect(),
            decoder: Decoder::new(SchemaRegistry::builtin()),
        }
    }

    async fn round(
        &mut self,
        lake: &Lake,
        cfg: &LakeConfig,
        recs: &[OwnedRecord],
    ) -> (Round, Vec<iceberg::spec::DataFile>) {
        let table = lake.load().await.unwrap();
        let plain: Vec<RecordView<'_>> = recs.iter().map(|r| r.view()).collect();
        self.decoder.prepare(&plain).await.unwrap();
        let mut round = Round::new(
            arrow_schema(table.metadata().current_schema()).unwrap(),
            cfg,
        );
        // As the service does: encode whenever `flush_rows` rows are buffered.
        for chunk in recs.chunks(cfg.flush_rows) {
            round.take(
                chunk.iter().map(OwnedRecord::source),
                &mut self.owned,
                &self.decoder,
            );
            if round.buffered() >= cfg.flush_rows {
                round.flush(&table).await.unwrap();
            }
        }
        let files = round.close_files(&table).await.unwrap();
        (round, files)
    }

    async fn commit(&mut self, lake: &Lake, cfg: &LakeConfig, recs: &[OwnedRecord]) -> u64 {
        let (mut round, files) = self.round(lake, cfg, recs).await;
        let table = lake.load().await.unwrap();
        let out = round.commit(lake, "t", &table, files, || {}).await.unwrap();
        assert!(matches!(out, Outcome::Committed { .. }), "{out:?}");
        for (p, n) in &round.next {
            self.owned.get_mut(p).unwrap().committed = Some(*n);
        }
        round.rows
    }

    /// Commits `recs` in rounds of `per` records; each round's snapshot id.
    async fn commit_rounds(
        &mut self,
        lake: &Lake,
        cfg: &LakeConfig,
        recs: &[OwnedRecord],
        per: usize,
    ) -> Vec<i64> {
        let mut rounds = Vec::new();
        for chunk in recs.chunks(per) {
            self.commit(lake, cfg, chunk).await;
            let t = lake.load().await.unwrap();
            rounds.push(t.metadata().current_snapshot().unwrap().snapshot_id());
        }
        rounds
    }
}

/// Whether snapshot `id` is still in `t`.
fn kept(t: &iceberg::table::Table, id: i64) -> bool {
    t.metadata().snapshot_by_id(id).is_some()
}

#[tokio::test]
async fn a_commit_staged_on_a_stale_table_is_refused_by_the_swap() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let lake = Lake::open(&cfg).await.unwrap();
    let recs = records(4000, 1);
    let mut w = Writer::new();
    let stale = lake.load().await.unwrap();
    let rows = w.commit(&lake, &cfg, &recs[..2000]).await;
    // Staged on the table as it was before that commit: refused.
    let change = Change::default();
    let staged = stage(&stale, new_snapshot_id(stale.metadata()), &change)
        .await
        .unwrap();
    assert!(!lake.swap(&stale, staged).await.unwrap());
    let now = lake.load().await.unwrap();
    assert_eq!(stats(&now).await.unwrap().rows, rows);
    // On the current table it lands.
    let staged = stage(&now, new_snapshot_id(now.metadata()), &change)
        .await
        .unwrap();
    assert!(lake.swap(&now, staged).await.unwrap());
}

/// A committer whose clock runs two hours fast (a maintenance host, say)
/// commits; then a writer with the right clock commits after it. Iceberg
/// refuses a snapshot more than a minute older than the last one, so the
/// writer's commit must not take its own clock as the snapshot's time.
#[tokio::test]
async fn a_commit_after_one_from_a_fast_clock_is_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let lake = Lake::open(&cfg).await.unwrap();
    let change = Change::default();
    let now = chrono::Utc::now().timestamp_millis();
    let fast = now + 2 * 3_600_000;
    let table = lake.load().await.unwrap();
    let staged = stage_at(&table, new_snapshot_id(table.metadata()), &change, fast)
        .await
        .unwrap();
    assert!(lake.swap(&table, staged).await.unwrap());
    let mut w = Writer::new();
    let recs = records(2000, 5);
    let rows = w.commit(&lake, &cfg, &recs).await;
    let table = lake.load().await.unwrap();
    assert_eq!(stats(&table).await.unwrap().rows, rows);
    let times: Vec<i64> = table
        .metadata()
        .history()
        .iter()
        .map(|l| l.timestamp_ms)
        .collect();
    assert_eq!(times.len(), 2, "{times:?}");
    assert_eq!(times[0], fast);
    assert!(
        times[1] > times[0],
        "snapshot times never go backwards: {times:?}"
    );
    // And a plain staging with the right clock lands after both.
    let staged = stage(&table, new_snapshot_id(table.metadata()), &change)
        .await
        .unwrap();
    assert!(lake.swap(&table, staged).await.unwrap());
}

#[tokio::test]
async fn a_round_whose_partitions_moved_on_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let lake = Lake::open(&cfg).await.unwrap();
    let recs = records(4000, 2);
    let mut zombie = Writer::new();
    let mut owner = Writer::new();
    // Both read the same records from the same start; the owner commits first.
    let (mut late, files) = zombie.round(&lake, &cfg, &recs).await;
    let rows = owner.commit(&lake, &cfg, &recs).await;
    let table = lake.load().await.unwrap();
    let out = late.commit(&lake, "t", &table, files, || {}).await.unwrap();
    match out {
        Outcome::Fenced { stored } => {
            assert_eq!(stored, topic_offsets(table.metadata(), "t").unwrap())
        }
        other => panic!("not fenced: {other:?}"),
    }
    let s = stats(&lake.load().await.unwrap()).await.unwrap();
    assert_eq!(s.rows, rows);
    assert_eq!(s.distinct_offsets, rows);
}

#[tokio::test]
async fn compaction_then_expiry_and_orphan_removal_keep_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let lake = Lake::open(&cfg).await.unwrap();
    let recs = records(6500, 3);
    let mut w = Writer::new();
    for chunk in recs[..6000].chunks(1000) {
        w.commit(&lake, &cfg, chunk).await;
    }
    // An uncommitted round's files: orphans.
    let (_, orphaned) = w.round(&lake, &cfg, &recs[6000..]).await;
    assert!(!orphaned.is_empty());
    let before = stats(&lake.load().await.unwrap()).await.unwrap();
    let small = live_files(&lake.load().await.unwrap()).await.unwrap();
    let files_before = small.len();
    let report = maintenance::compact(&lake, &cfg).await.unwrap();
    assert!(
        report.files_in >= files_before.min(6) && report.files_out < report.files_in,
        "{report:?}"
    );
    let after = stats(&lake.load().await.unwrap()).await.unwrap();
    assert_eq!(after.checksum, before.checksum);
    assert_eq!(
        after.offsets, before.offsets,
        "compaction carries the offsets forward"
    );
    // Ten days later the writer has moved on (a new member took over):
    // its partitions' windows are past those commits.
    let mut w = Writer::resume(&lake).await;
    let moved: Vec<OwnedRecord> = recs[6000..]
        .iter()
        .cloned()
        .map(|mut r| {
            r.timestamp += 10 * 86_400_000_000;
            r
        })
        .collect();
    w.commit(&lake, &cfg, &moved).await;
    let before = stats(&lake.load().await.unwrap()).await.unwrap();
    // Every snapshot but the current one expires, and the files only they
    // (and the uncommitted round) referenced are removed.
    let later = SystemTime::now() + Duration::from_secs(10 * 86_400);
    let expired = maintenance::expire(&lake, &cfg, later).await.unwrap();
    assert!(expired >= 6, "{expired}");
    let removed = maintenance::remove_orphans(&lake, &cfg, later)
        .await
        .unwrap();
    assert!(removed > orphaned.len(), "{removed}");
    for f in &orphaned {
        assert!(!std::path::Path::new(f.file_path().trim_start_matches("file://")).exists());
    }
    // The small files compaction replaced went with the snapshots that
    // read them (they were kept forever: storage only grew).
    let live: std::collections::HashSet<String> = live_files(&lake.load().await.unwrap())
        .await
        .unwrap()
        .iter()
        .map(|f| f.file.file_path().to_string())
        .collect();
    let replaced: Vec<&str> = small
        .iter()
        .map(|f| f.file.file_path())
        .filter(|p| !live.contains(*p))
        .collect();
    assert!(!replaced.is_empty());
    for p in replaced {
        assert!(
            !std::path::Path::new(p.trim_start_matches("file://")).exists(),
            "{p}: compacted away, expired, still stored"
        );
    }
    let end = stats(&lake.load().await.unwrap()).await.unwrap();
    assert_eq!(end.checksum, before.checksum);
    assert_eq!(end.rows, before.rows);
}

#[tokio::test]
async fn the_dedup_state_is_restored_from_the_committed_snapshots_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let lake = Lake::open(&cfg).await.unwrap();
    let recs = records(3500, 5);
    let mut w = Writer::new();
    let mut rows = 0;
    for chunk in recs[..3000].chunks(1000) {
        rows += w.commit(&lake, &cfg, chunk).await;
    }
    // A round that never commits must not mark its events as seen.
    let (_, _files) = w.round(&lake, &cfg, &recs[3000..]).await;
    let table = lake.load().await.unwrap();
    let restored = restore_all(&table).await;
    let remembered: usize = restored.values().map(|d| d.len()).sum();
    assert_eq!(remembered as u64, rows, "one fingerprint per committed row");
    // Each of those rows' events is a duplicate for the restored state, and
    // the uncommitted round's events are new.
    let mut decoder = Decoder::new(SchemaRegistry::builtin());
    let plain: Vec<RecordView<'_>> = recs.iter().map(|r| r.view()).collect();
    decoder.prepare(&plain).await.unwrap();
    let mut restored = restored;
    let (mut seen, mut new) = (0u64, 0u64);
    for (i, r) in recs.iter().enumerate() {
        let Ok(e) = decoder.decode(&r.view()) else {
            continue;
        };
        let fp = notiflow_ingest::dedup::fingerprint(&e.event_id);
        let d = restored.get_mut(&r.partition).unwrap();
        let fresh = d.insert(fp, d.generation_of(r.timestamp));
        match (i < 3000, fresh) {
            (true, false) => seen += 1,
            (false, true) => new += 1,
            (true, true) => panic!("a committed event was forgotten: {}", e.event_id),
            (false, false) => {} // a duplicate of an earlier event
        }
    }
    assert!(seen >= rows, "{seen} < {rows}");
    assert!(new > 400, "{new}");
}

/// The restore kept the dedup files of snapshots committed within the
/// window before the *current* snapshot's commit time. A writer away for
/// hours, then any later commit (the hourly compaction, another writer's
/// round) made the next restore forget the events it still needs: their
/// duplicates were written again. Each partition's window is anchored on
/// its own newest generation, recorded with its offsets; and snapshot
/// expiry keeps the dedup files a window still needs, however long the
/// writer stays away.
#[tokio::test]
async fn a_later_commit_or_expiry_does_not_shorten_a_partitions_window() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let lake = Lake::open(&cfg).await.unwrap();
    let recs = records(3000, 7);
    let mut w = Writer::new();
    let mut rows = 0;
    for chunk in recs.chunks(1000) {
        rows += w.commit(&lake, &cfg, chunk).await;
    }
    // The writer is away; 30 hours later a maintenance commit lands,
    // carrying the offsets and generations forward as compaction does.
    let table = lake.load().await.unwrap();
    let md = table.metadata();
    let mut change = Change::default();
    change.properties.insert(
        OFFSETS_PROP.into(),
        to_json(&committed_offsets(md).unwrap()).unwrap(),
    );
    change.properties.insert(
        GENERATIONS_PROP.into(),
        to_json(&committed_generations(md).unwrap()).unwrap(),
    );
    let later_ms = notiflow_ingest::source::now_micros() / 1000 + 30 * 3_600_000;
    let staged = stage_at(&table, new_snapshot_id(md), &change, later_ms)
        .await
        .unwrap();
    assert!(lake.swap(&table, staged).await.unwrap());

    let parts: Vec<i32> = (0..PARTITIONS).collect();
    let remembered = |restored: &std::collections::HashMap<i32, Dedup>| -> u64 {
        restored.values().map(|d| d.len() as u64).sum()
    };
    let table = lake.load().await.unwrap();
    let restored = restore_all(&table).await;
    assert_eq!(
        remembered(&restored),
        rows,
        "a commit 30 h later shortened the window"
    );
    for p in &parts {
        assert_eq!(
            restored[p].newest(),
            w.owned[p].dedup.newest(),
            "partition {p}: the window is anchored where the writer left it"
        );
    }

    // Ten days on, the writer still away: expiry and orphan removal keep
    // the dedup files its partitions' windows need.
    let later = SystemTime::now() + Duration::from_secs(10 * 86_400);
    maintenance::expire(&lake, &cfg, later).await.unwrap();
    maintenance::remove_orphans(&lake, &cfg, later)
        .await
        .unwrap();
    let table = lake.load().await.unwrap();
    let restored = restore_all(&table).await;
    assert_eq!(
        remembered(&restored),
        rows,
        "expiry dropped a needed dedup file"
    );
}

/// A dedup file deleted behind the writers' backs (an orphan removal that
/// raced a commit, a storage lifecycle rule) made every restore fail, so
/// no writer could take the partitions over again. The window is rebuilt
/// from the committed rows instead.
#[tokio::test]
async fn a_missing_dedup_file_is_rebuilt_from_the_committed_rows() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let lake = Lake::open(&cfg).await.unwrap();
    let recs = records(3000, 8);
    let mut w = Writer::new();
    let mut rows = 0;
    for chunk in recs.chunks(1000) {
        rows += w.commit(&lake, &cfg, chunk).await;
    }
    let table = lake.load().await.unwrap();
    let dedup_files: Vec<String> = table
        .metadata()
        .snapshots()
        .filter_map(|s| {
            s.summary()
                .additional_properties
                .get(notiflow_lake::table::DEDUP_PROP)
                .cloned()
        })
        .collect();
    assert_eq!(dedup_files.len(), 3);
    std::fs::remove_file(dedup_files[1].trim_start_matches("file://")).unwrap();
    let parts: Vec<i32> = (0..PARTITIONS).collect();
    let restored = restore_all(&table).await;
    let remembered: u64 = restored.values().map(|d| d.len() as u64).sum();
    assert_eq!(remembered, rows, "one fingerprint per committed row");
    for p in &parts {
        assert_eq!(restored[p].newest(), w.owned[p].dedup.newest());
    }
}

/// Open file descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// A backfill over years kept one open file (and a full row reservation)
/// per day partition in a round: thousands of days hit the process's file
/// limit (EMFILE), and the round aborted and retried forever. At most
/// `max_open_partitions` days have a file open at once.
#[tokio::test]
async fn a_backfill_over_years_keeps_few_files_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LakeConfig {
        max_open_partitions: 8,
        flush_rows: 600,
        ..cfg(dir.path())
    };
    let lake = Lake::open(&cfg).await.unwrap();
    const DAYS: i64 = 600;
    let shape = Shape {
        seed: 9,
        clients: 20,
        rate: 1000.0,
        start: notiflow_ingest::source::now_micros() - 3_600_000_000,
        avro_share: 0.0,
        content_type_share: 0.0,
        duplicate_share: 0.0,
        malformed_share: 0.0,
    };
    // Each record's event from one of the last 600 days.
    let recs: Vec<OwnedRecord> = RecordStream::new(shape, PARTITIONS)
        .take(1200)
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            let mut v: serde_json::Value =
                serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            let days_back = (i as i64 % DAYS) + 1;
            let t = r.timestamp - days_back * 86_400_000_000;
            v["event_time"] = notiflow_schema::time::format_rfc3339(t).into();
            r.value = Some(serde_json::to_vec(&v).unwrap());
            r
        })
        .collect();
    let mut w = Writer::new();
    let table = lake.load().await.unwrap();
    let plain: Vec<RecordView<'_>> = recs.iter().map(|r| r.view()).collect();
    w.decoder.prepare(&plain).await.unwrap();
    let mut round = Round::new(
        arrow_schema(table.metadata().current_schema()).unwrap(),
        &cfg,
    );
    let before = open_fds();
    let mut peak = before;
    for chunk in recs.chunks(cfg.flush_rows) {
        let s = round.take(
            chunk.iter().map(OwnedRecord::source),
            &mut w.owned,
            &w.decoder,
        );
        assert_eq!(s.rejected, 0);
        round.flush(&table).await.unwrap();
        peak = peak.max(open_fds());
    }
    assert!(
        peak < before + 200,
        "{} more files open while writing {DAYS} days (at most 8 days open)",
        peak - before
    );
    assert!(round.file_rolls() > 100, "{} rolls", round.file_rolls());
    let files = round.close_files(&table).await.unwrap();
    let out = round
        .commit(&lake, "t", &table, files, || {})
        .await
        .unwrap();
    assert!(matches!(out, Outcome::Committed { .. }), "{out:?}");
    let s = stats(&lake.load().await.unwrap()).await.unwrap();
    assert_eq!(s.rows, 1200);
    let per_day = maintenance::layout(&live_files(&lake.load().await.unwrap()).await.unwrap());
    assert_eq!(per_day.len() as i64, DAYS, "one partition per day");
}

#[tokio::test]
async fn data_files_roll_over_at_the_target_size() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LakeConfig {
        target_file_size_bytes: 1 << 20,
        row_group_rows: 8192,
        ..cfg(dir.path())
    };
    let lake = Lake::open(&cfg).await.unwrap();
    let mut w = Writer::new();
    let rows = w.commit(&lake, &cfg, &records(80_000, 6)).await;
    let files = live_files(&lake.load().await.unwrap()).await.unwrap();
    let per_day = maintenance::layout(&files);
    let sizes: Vec<u64> = per_day.values().flatten().copied().collect();
    let total: u64 = sizes.iter().sum();
    assert!(total > 2 << 20, "{total} bytes: too little data to roll");
    let biggest_day = per_day.values().map(Vec::len).max().unwrap();
    assert!(biggest_day >= 2, "no roll-over: {per_day:?}");
    // A file closes at the first row group past the target.
    assert!(sizes.iter().all(|&s| s < 2 << 20), "{sizes:?}");
    let s = stats(&lake.load().await.unwrap()).await.unwrap();
    assert_eq!(s.rows, rows);
}

/// The newest broker time of each partition's records in `recs`, ms: the
/// watermark a round over them must record (every record counts, whatever
/// it holds).
fn newest_ms(recs: &[OwnedRecord], p: i32) -> i64 {
    recs.iter()
        .filter(|r| r.partition == p)
        .map(|r| r.timestamp / 1000)
        .max()
        .unwrap()
}

#[tokio::test]
async fn each_commit_records_how_far_every_partition_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let lake = Lake::open(&cfg).await.unwrap();
    let recs = records(4000, 6);
    let mut w = Writer::new();
    w.commit(&lake, &cfg, &recs[..2000]).await;
    let marks = |md: &iceberg::spec::TableMetadata| committed_watermarks(md).unwrap()["t"].clone();
    let table = lake.load().await.unwrap();
    for p in 0..PARTITIONS {
        assert_eq!(
            marks(table.metadata())[&p],
            newest_ms(&recs[..2000], p),
            "p{p}"
        );
    }
    // The table is complete up to the partition furthest behind.
    let behind = (0..PARTITIONS)
        .min_by_key(|&p| newest_ms(&recs[..2000], p))
        .unwrap();
    assert_eq!(
        complete_until(table.metadata()).unwrap(),
        Completeness::Until {
            until_ms: newest_ms(&recs[..2000], behind),
            topic: "t".into(),
            partition: behind,
        }
    );
    // A record stamped a year ahead (a CreateTime) moves its partition's
    // watermark one generation (hour) at most, not a year.
    let mut hostile = recs[2000..2001].to_vec();
    let p = hostile[0].partition;
    let hour = 3_600_000_000;
    hostile[0].timestamp += 365 * 86_400_000_000;
    let gen_end_ms = ((hostile[0].timestamp - 365 * 86_400_000_000) / hour + 2) * hour / 1000 - 1;
    w.commit(&lake, &cfg, &hostile).await;
    let m = marks(lake.load().await.unwrap().metadata())[&p];
    assert!(m <= gen_end_ms, "{m} > {gen_end_ms}");
    // A heartbeat of a caught-up partition moves its watermark alone.
    let table = lake.load().await.unwrap();
    let before = marks(table.metadata());
    let q = (p + 1) % PARTITIONS;
    let committed = w.owned[&q].committed.unwrap();
    let mut beat = Round::new(
        arrow_schema(table.metadata().current_schema()).unwrap(),
        &cfg,
    );
    let now_ms = notiflow_ingest::source::now_micros() / 1000;
    beat.heartbeat(q, Some(committed), now_ms);
    let out = beat
        .commit(&lake, "t", &table, Vec::new(), || {})
        .await
        .unwrap();
    assert!(matches!(out, Outcome::Committed { .. }), "{out:?}");
    let after = marks(lake.load().await.unwrap().metadata());
    assert_eq!(after[&q], now_ms);
    for r in (0..PARTITIONS).filter(|&r| r != q) {
        assert_eq!(after[&r], before[&r], "p{r}");
    }
    assert_eq!(
        topic_offsets(lake.load().await.unwrap().metadata(), "t").unwrap()[&q],
        committed,
        "a heartbeat leaves the offsets"
    );
    // A heartbeat is fenced like a round: a zombie's moves nothing.
    let table = lake.load().await.unwrap();
    let mut zombie = Round::new(
        arrow_schema(table.metadata().current_schema()).unwrap(),
        &cfg,
    );
    zombie.heartbeat(q, Some(committed - 1), now_ms + 60_000);
    let out = zombie
        .commit(&lake, "t", &table, Vec::new(), || {})
        .await
        .unwrap();
    assert!(matches!(out, Outcome::Fenced { .. }), "{out:?}");
    // Compaction carries them forward unchanged.
    maintenance::compact(&lake, &cfg).await.unwrap();
    assert_eq!(marks(lake.load().await.unwrap().metadata()), after);
}

/// A partition no writer has committed yet (a writer slow to start, a
/// partition just added) used to be left out of completeness: billing
/// opened on the partitions that had committed. With the topic's partition
/// count recorded, it holds completeness until it commits.
#[tokio::test]
async fn a_partition_that_never_committed_holds_completeness() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let lake = Lake::open(&cfg).await.unwrap();
    let recs = records(2000, 6);
    let first: Vec<_> = recs.iter().filter(|r| r.partition != 2).cloned().collect();
    let mut w = Writer::new();
    let (mut round, files) = w.round(&lake, &cfg, &first).await;
    round.partitions = Some(PARTITIONS);
    let table = lake.load().await.unwrap();
    let out = round
        .commit(&lake, "t", &table, files, || {})
        .await
        .unwrap();
    assert!(matches!(out, Outcome::Committed { .. }), "{out:?}");
    assert_eq!(
        complete_until(lake.load().await.unwrap().metadata()).unwrap(),
        Completeness::Until {
            until_ms: i64::MIN,
            topic: "t".into(),
            partition: 2,
        }
    );
    // Carried by later commits that do not say it again (compaction).
    maintenance::compact(&lake, &cfg).await.unwrap();
    assert!(matches!(
        complete_until(lake.load().await.unwrap().metadata()).unwrap(),
        Completeness::Until {
            partition: 2,
            until_ms: i64::MIN,
            ..
        }
    ));
}

/// A topic no writer reads any more kept its generations in the table for
/// ever, and the expiry cutoff is the oldest window of any topic: every
/// snapshot after its last commit was kept, for ever. Retiring it takes it
/// out of the map; the live topic's windows still hold what they need.
#[tokio::test]
async fn a_retired_topic_no_longer_holds_snapshots_back() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let lake = Lake::open(&cfg).await.unwrap();
    // A topic read long ago: its partition 0 was last at generation 10
    // (hour 10 of 1970), a commit of its own with its offsets.
    let table = lake.load().await.unwrap();
    let md = table.metadata();
    let mut change = Change::default();
    let old = std::collections::BTreeMap::from([(
        "old.topic".to_string(),
        std::collections::BTreeMap::from([(0, 10u32)]),
    )]);
    change
        .properties
        .insert(GENERATIONS_PROP.into(), to_json(&old).unwrap());
    let offsets = std::collections::BTreeMap::from([(
        "old.topic".to_string(),
        std::collections::BTreeMap::from([(0, 5i64)]),
    )]);
    change
        .properties
        .insert(OFFSETS_PROP.into(), to_json(&offsets).unwrap());
    let staged = stage(&table, new_snapshot_id(md), &change).await.unwrap();
    assert!(lake.swap(&table, staged).await.unwrap());
    // The live topic's writer commits three rounds on top, of three days
    // of its traffic: its own window (24 h) needs only the last two.
    let recs = records_over(3000, 9, 72 * 3_600_000_000, 3000.0 / (72.0 * 3600.0));
    let mut w = Writer::new();
    let rounds = w.commit_rounds(&lake, &cfg, &recs, 1000).await;
    // Ten days on: the old topic's window pins the first round too.
    let later = SystemTime::now() + Duration::from_secs(10 * 86_400);
    maintenance::expire(&lake, &cfg, later).await.unwrap();
    assert!(
        kept(&lake.load().await.unwrap(), rounds[0]),
        "the old topic pinned nothing: the test shows nothing"
    );

    let (had, _) = notiflow_lake::table::retire_topic(&lake, "old.topic")
        .await
        .unwrap();
    assert!(had);
    let table = lake.load().await.unwrap();
    let gens = committed_generations(table.metadata()).unwrap();
    assert!(!gens.contains_key("old.topic"), "{gens:?}");
    assert!(!gens.is_empty(), "the live topic's generations stay");
    assert_eq!(
        topic_offsets(table.metadata(), "old.topic").unwrap(),
        std::collections::BTreeMap::from([(0, 5)]),
        "its offsets stay"
    );
    maintenance::expire(&lake, &cfg, later).await.unwrap();
    let t = lake.load().await.unwrap();
    assert!(
        !kept(&t, rounds[0]),
        "retired, the old topic still pins the first round"
    );
    assert!(kept(&t, rounds[2]), "the live topic's last round");
    // Nor does it hold completeness (billing waited for it for ever: its
    // partition has offsets and no watermark); the live topic does, and
    // still does after a compaction.
    let held = |t: &iceberg::table::Table| match complete_until(t.metadata()).unwrap() {
        Completeness::Until { topic, .. } => topic,
        Completeness::Unrecorded => String::new(),
    };
    assert_eq!(held(&t), "t");
    maintenance::compact(&lake, &cfg).await.unwrap();
    assert_eq!(held(&lake.load().await.unwrap()), "t");
}

/// Issue 30, hole 6: snapshot expiry keeps every snapshot from the oldest
/// one a partition's dedup window reaches, and a partition gone quiet
/// reaches back to its last events for ever: one quiet partition kept
/// every later snapshot (and every file compacted away since). A writer
/// checkpoints a quiet partition's whole window now and then; expiry then
/// keeps nothing older for it, and a restore still finds all of it.
#[tokio::test]
async fn a_quiet_partition_does_not_pin_snapshot_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let lake = Lake::open(&cfg).await.unwrap();
    // Ten days of traffic; partition 3 falls quiet after its first two hours.
    let ten_days = 10 * 86_400_000_000i64;
    let all = records_over(10_000, 11, ten_days, 10_000.0 / (10.0 * 86_400.0));
    let quiet_until = all[0].timestamp + 2 * 3_600_000_000;
    let recs: Vec<OwnedRecord> = all
        .into_iter()
        .filter(|r| r.partition != 3 || r.timestamp < quiet_until)
        .collect();
    let quiet: Vec<&OwnedRecord> = recs.iter().filter(|r| r.partition == 3).collect();
    assert!(quiet.len() > 10, "{}", quiet.len());
    let mut w = Writer::new();
    let rounds = w.commit_rounds(&lake, &cfg, &recs, 1000).await;
    let later = SystemTime::now() + Duration::from_secs(10 * 86_400);
    maintenance::expire(&lake, &cfg, later).await.unwrap();
    assert!(
        kept(&lake.load().await.unwrap(), rounds[0]),
        "the quiet partition pinned nothing: the test shows nothing"
    );

    // The writer's next commit carries partition 3's whole window.
    let (mut round, files) = w.round(&lake, &cfg, &[]).await;
    let st = &w.owned[&3];
    round.checkpoint(3, st.committed, &st.dedup);
    let table = lake.load().await.unwrap();
    let out = round
        .commit(&lake, "t", &table, files, || {})
        .await
        .unwrap();
    assert!(matches!(out, Outcome::Committed { .. }), "{out:?}");
    let checkpoint = lake
        .load()
        .await
        .unwrap()
        .metadata()
        .current_snapshot()
        .unwrap()
        .snapshot_id();

    maintenance::expire(&lake, &cfg, later).await.unwrap();
    maintenance::remove_orphans(&lake, &cfg, later)
        .await
        .unwrap();
    let t = lake.load().await.unwrap();
    assert!(
        !kept(&t, rounds[0]),
        "the quiet partition still pins the first round"
    );
    assert!(kept(&t, checkpoint), "the checkpoint");
    // Busy partitions' windows (the last day) still hold their rounds.
    assert!(kept(&t, rounds[rounds.len() - 1]));

    // A writer taking over remembers, for the quiet partition, every event
    // it ever had (all inside its window: its newest generation never
    // moved past its two hours), and for the others what the writer held.
    let restored = restore_all(&t).await;
    let mut decoder = Decoder::new(SchemaRegistry::builtin());
    let views: Vec<RecordView<'_>> = quiet.iter().map(|r| r.view()).collect();
    decoder.prepare(&views).await.unwrap();
    let mut want: Vec<u64> = views
        .iter()
        .filter_map(|v| decoder.decode(v).ok())
        .map(|e| notiflow_ingest::dedup::fingerprint(&e.event_id))
        .collect();
    want.sort_unstable();
    want.dedup();
    let live = |d: &Dedup| {
        let mut v: Vec<u64> = d.live().map(|(fp, _)| fp).collect();
        v.sort_unstable();
        v
    };
    assert_eq!(live(&restored[&3]), want, "partition 3 after expiry");
    for p in 0..PARTITIONS {
        assert_eq!(
            live(&restored[&p]),
            live(&w.owned[&p].dedup),
            "partition {p}"
        );
        assert_eq!(
            restored[&p].newest(),
            w.owned[&p].dedup.newest(),
            "partition {p}"
        );
    }
}

/// Issue 31: events carry `pricing_type` into the lake. A table created
/// before the column existed gets it by schema evolution when the lake is
/// opened; its older files read it as null, new rows carry it, and a
/// compaction over both keeps every value.
#[tokio::test]
async fn a_table_from_before_pricing_type_gets_the_column_and_keeps_every_row() {
    use arrow::array::{Array, AsArray};
    use futures::TryStreamExt;
    use notiflow_lake::rows::{
        field, partition_spec, sort_order, table_schema_before_pricing_type,
    };
    use notiflow_lake::table::Layout;
    use notiflow_schema::PricingType;

    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    // The table as an earlier version created it: no pricing_type.
    let layout = Layout {
        schema: table_schema_before_pricing_type().unwrap(),
        spec: partition_spec().unwrap(),
        sort: sort_order(),
    };
    let early = Lake::open_table(&cfg, &cfg.table, layout).await.unwrap();
    let recs = records(600, 21);
    let mut w = Writer::new();
    w.commit(&early, &cfg, &recs[..300]).await;
    // This version opens it: the column is added (once, however often).
    let lake = Lake::open(&cfg).await.unwrap();
    let lake = {
        drop(lake);
        Lake::open(&cfg).await.unwrap()
    };
    let table = lake.load().await.unwrap();
    let schemas = table.metadata().schemas_iter().count();
    assert_eq!(schemas, 2, "one evolution");
    assert!(
        table
            .metadata()
            .current_schema()
            .field_by_id(field::PRICING_TYPE)
            .is_some()
    );
    // New rows carry it: every event of the rest as JSON with a pricing type.
    let decoder = {
        let mut d = Decoder::new(SchemaRegistry::builtin());
        let views: Vec<RecordView<'_>> = recs[300..].iter().map(|r| r.view()).collect();
        d.prepare(&views).await.unwrap();
        d
    };
    let types = PricingType::ALL;
    let rest: Vec<OwnedRecord> = recs[300..]
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut r = r.clone();
            if let Ok(mut e) = decoder.decode(&r.view()) {
                e.pricing_type = Some(types[i % types.len()]);
                let mut v = Vec::new();
                notiflow_ingest::codec::json::encode(&e, &mut v);
                r.value = Some(v);
                r.content_type = None;
            }
            r
        })
        .collect();
    w.commit(&lake, &cfg, &rest).await;
    let read = |t: iceberg::table::Table| async move {
        let batches: Vec<arrow::array::RecordBatch> = t
            .scan()
            .select(["pricing_type"])
            .build()
            .unwrap()
            .to_arrow()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let mut got: std::collections::BTreeMap<Option<String>, usize> = Default::default();
        for b in &batches {
            let c = b.column(0).as_string::<i32>();
            for i in 0..c.len() {
                *got.entry(c.is_valid(i).then(|| c.value(i).to_string()))
                    .or_default() += 1;
            }
        }
        got
    };
    let before = read(lake.load().await.unwrap()).await;
    let total: usize = before.values().sum();
    let nulls = before.get(&None).copied().unwrap_or(0);
    assert!(
        nulls >= 280,
        "the rows written before the column read null: {before:?}"
    );
    for t in types {
        let n = before
            .get(&Some(t.as_str().to_string()))
            .copied()
            .unwrap_or(0);
        assert!(n >= 90, "{t}: {before:?}");
    }
    // A compaction rewrites old and new files together, values kept.
    let report = maintenance::compact(&lake, &cfg).await.unwrap();
    assert!(report.files_in >= 2, "nothing compacted: {report:?}");
    let after = read(lake.load().await.unwrap()).await;
    assert_eq!(after, before, "compaction changed pricing types");
    assert_eq!(after.values().sum::<usize>(), total);
}
