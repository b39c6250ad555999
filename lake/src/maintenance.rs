//! Table maintenance (`notiflow lake compact`): compaction, snapshot expiry
//! and orphan-file removal, safe while writers run.
//!
//! - **Compaction** rewrites each day partition's small files into files of
//!   the target size and commits one `replace` snapshot per partition with
//!   the same compare-and-swap the writer uses ([`crate::table`]). If a
//!   writer commits first, the rewrite is staged again on top of its
//!   snapshot: neither side loses or repeats a row. The replace snapshot
//!   copies the writer's offsets forward, so the fence sees no change.
//! - **Expiry** drops snapshots older than `expire_after_hours` (always more
//!   than the dedup window, from which a writer restores its state), but
//!   never one whose dedup file a partition's window still needs, however
//!   long its writer has been away.
//! - **Orphans**: files under the table location that no retained snapshot
//!   or metadata file references, and older than `orphan_grace_minutes`
//!   (a running writer's uncommitted files are young), are deleted:
//!   leftovers of crashed or fenced rounds and of expired snapshots.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use arrow::array::RecordBatch;
use bytes::Bytes;
use iceberg::spec::{DataFile, Literal, PrimitiveLiteral};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::config::LakeConfig;
use crate::error::LakeError;
use crate::files::{FileOptions, RoundFiles};
use crate::rows::arrow_schema;
use crate::table::{Change, DEDUP_PROP, Lake};

/// What one maintenance run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Day partitions rewritten.
    pub partitions: usize,
    /// Small files rewritten.
    pub files_in: usize,
    /// Files they became.
    pub files_out: usize,
    /// Rows moved.
    pub rows: u64,
    /// Commit conflicts with writers (each retried).
    pub conflicts: u64,
    /// Snapshots expired.
    pub expired: usize,
    /// Orphan files deleted.
    pub orphans: usize,
}

/// One live data file of the current snapshot.
#[derive(Debug, Clone)]
pub struct LiveFile {
    /// The file.
    pub file: DataFile,
    /// Its day partition.
    pub day: i32,
}

/// The live data files of `table`'s current snapshot.
pub async fn live_files(table: &Table) -> Result<Vec<LiveFile>, LakeError> {
    let Some(snap) = table.metadata().current_snapshot() else {
        return Ok(Vec::new());
    };
    let list = table.manifest_list_reader(snap).load().await?;
    let mut out = Vec::new();
    for mf in list.entries() {
        let manifest = mf.load_manifest(table.file_io()).await?;
        for e in manifest.entries() {
            if !e.is_alive() {
                continue;
            }
            let day = match e.data_file().partition().fields().first() {
                Some(Some(Literal::Primitive(PrimitiveLiteral::Int(d)))) => *d,
                other => {
                    return Err(LakeError::Table(format!(
                        "data file {} has partition {other:?}, not a day",
                        e.file_path()
                    )));
                }
            };
            out.push(LiveFile {
                file: e.data_file().clone(),
                day,
            });
        }
    }
    Ok(out)
}

/// Files per day partition and their sizes, for reports and benchmarks.
pub fn layout(files: &[LiveFile]) -> BTreeMap<i32, Vec<u64>> {
    let mut out: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    for f in files {
        out.entry(f.day)
            .or_default()
            .push(f.file.file_size_in_bytes());
    }
    out
}

/// Compaction, then expiry, then orphan removal.
pub async fn run(cfg: &LakeConfig, now: SystemTime) -> Result<Report, LakeError> {
    let lake = Lake::open(cfg).await?;
    let mut report = compact(&lake, cfg).await?;
    report.expired = expire(&lake, cfg, now).await?;
    report.orphans = remove_orphans(&lake, cfg, now).await?;
    Ok(report)
}

/// Groups of small files to rewrite, per day: each group at most the
/// target size, only groups of two files or more.
fn plan(files: &[LiveFile], cfg: &LakeConfig) -> BTreeMap<i32, Vec<Vec<DataFile>>> {
    let target = cfg.target_file_size_bytes;
    let small = target * u64::from(cfg.maintenance.small_file_percent) / 100;
    let mut by_day: BTreeMap<i32, Vec<&DataFile>> = BTreeMap::new();
    for f in files {
        if f.file.file_size_in_bytes() < small {
            by_day.entry(f.day).or_default().push(&f.file);
        }
    }
    let mut out = BTreeMap::new();
    for (day, mut fs) in by_day {
        fs.sort_by_key(|f| std::cmp::Reverse(f.file_size_in_bytes()));
        // First fit decreasing.
        let mut bins: Vec<(u64, Vec<DataFile>)> = Vec::new();
        for f in fs {
            let size = f.file_size_in_bytes();
            match bins.iter_mut().find(|b| b.0 + size <= target) {
                Some(b) => {
                    b.0 += size;
                    b.1.push(f.clone());
                }
                None => bins.push((size, vec![f.clone()])),
            }
        }
        let groups: Vec<Vec<DataFile>> = bins
            .into_iter()
            .map(|b| b.1)
            .filter(|g| g.len() > 1)
            .collect();
        if !groups.is_empty() {
            out.insert(day, groups);
        }
    }
    out
}

/// Rewrites every day partition's small files, one atomic commit per partition.
pub async fn compact(lake: &Lake, cfg: &LakeConfig) -> Result<Report, LakeError> {
    let mut report = Report::default();
    let table = lake.load().await?;
    let plans = plan(&live_files(&table).await?, cfg);
    let schema = arrow_schema(table.metadata().current_schema())?;
    let opts = FileOptions::from(cfg);
    for (day, groups) in plans {
        let mut change = Change::default();
        let mut rows_in = 0u64;
        for group in &groups {
            let mut out = RoundFiles::new(&table, opts)?;
            for f in group {
                rows_in += f.record_count();
                change.removed.insert(f.file_path().to_string());
                let bytes: Bytes = table.file_io().new_input(f.file_path())?.read().await?;
                let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .map_err(|e| LakeError::Table(format!("reading {}: {e}", f.file_path())))?
                    .with_batch_size(65_536)
                    .build()
                    .map_err(|e| LakeError::Table(format!("reading {}: {e}", f.file_path())))?;
                for batch in reader {
                    let batch = batch?;
                    // The table's schema (field ids), whatever the reader
                    // inferred; a column the file predates is null.
                    let columns = schema
                        .fields()
                        .iter()
                        .map(|f| match batch.column_by_name(f.name()) {
                            Some(c) => c.clone(),
                            None => arrow::array::new_null_array(f.data_type(), batch.num_rows()),
                        })
                        .collect();
                    let batch = RecordBatch::try_new(schema.clone(), columns)?;
                    out.write(day, batch).await?;
                }
            }
            change.added.extend(out.close().await?);
        }
        let rows_out: u64 = change.added.iter().map(|f| f.record_count()).sum();
        if rows_out != rows_in {
            return Err(LakeError::Table(format!(
                "compaction of day {day} read {rows_in} rows but wrote {rows_out}"
            )));
        }
        report.conflicts += commit_replace(lake, &mut change).await?;
        report.partitions += 1;
        report.files_in += change.removed.len();
        report.files_out += change.added.len();
        report.rows += rows_out;
        tracing::info!(
            day,
            files_in = change.removed.len(),
            files_out = change.added.len(),
            rows = rows_out,
            "partition compacted"
        );
    }
    Ok(report)
}

/// Commits a rewrite on top of whatever is current; the number of conflicts.
async fn commit_replace(lake: &Lake, change: &mut Change) -> Result<u64, LakeError> {
    Ok(
        crate::table::commit_carrying_offsets(lake, change, "compaction")
            .await?
            .1,
    )
}

/// Expires snapshots older than the configured age; how many went.
pub async fn expire(lake: &Lake, cfg: &LakeConfig, now: SystemTime) -> Result<usize, LakeError> {
    let table = lake.load().await?;
    let age = Duration::from_secs(u64::from(cfg.maintenance.expire_after_hours) * 3600);
    let by_age = now
        .checked_sub(age)
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64);
    // Never a snapshot whose dedup file a partition's window still needs
    // (a writer away for longer than the expiry age restores from it).
    let needed = crate::dedup_log::oldest_needed_ms(table.metadata(), cfg.dedup_window_hours)?;
    let cutoff = needed.map_or(by_age, |n| by_age.min(n));
    let before = table.metadata().snapshots().len();
    let old = table
        .metadata()
        .snapshots()
        .filter(|s| s.timestamp_ms() < cutoff)
        .count();
    if old == 0 {
        return Ok(0);
    }
    let tx = Transaction::new(&table);
    let tx = tx
        .expire_snapshots()
        .expire_older_than_ms(cutoff)
        .retain_last(1)
        .apply(tx)?;
    let table = tx.commit(lake.catalog()).await?;
    Ok(before.saturating_sub(table.metadata().snapshots().len()))
}

/// Every file path a retained snapshot or metadata file refers to.
async fn referenced(table: &Table) -> Result<HashSet<String>, LakeError> {
    let md = table.metadata();
    let mut out = HashSet::new();
    if let Some(loc) = table.metadata_location() {
        out.insert(loc.to_string());
    }
    for m in md.metadata_log() {
        out.insert(m.metadata_file.clone());
    }
    for s in md.snapshots() {
        out.insert(s.manifest_list().to_string());
        if let Some(p) = s.summary().additional_properties.get(DEDUP_PROP) {
            out.insert(p.clone());
        }
        let list = table.manifest_list_reader(s).load().await?;
        for mf in list.entries() {
            // Snapshots share most manifests: read each once.
            if !out.insert(mf.manifest_path.clone()) {
                continue;
            }
            let manifest = mf.load_manifest(table.file_io()).await?;
            // A `deleted` entry (a compaction's record of the files it
            // replaced) keeps nothing alive: a retained snapshot that still
            // reads the file lists it as added or existing in its own
            // manifests. Counting it kept compacted-away files forever.
            for e in manifest.entries().iter().filter(|e| e.is_alive()) {
                out.insert(e.file_path().to_string());
            }
        }
    }
    Ok(out)
}

/// Deletes unreferenced files older than the grace period; how many.
pub async fn remove_orphans(
    lake: &Lake,
    cfg: &LakeConfig,
    now: SystemTime,
) -> Result<usize, LakeError> {
    let table = lake.load().await?;
    let location = table
        .metadata()
        .location()
        .trim_end_matches('/')
        .to_string();
    let keep = referenced(&table).await?;
    let grace = Duration::from_secs(u64::from(cfg.maintenance.orphan_grace_minutes) * 60);
    let (op, prefix, base) = crate::store::operator(&cfg.s3, &location)?;
    let mut removed = 0;
    for entry in op.list_with(&prefix).recursive(true).await? {
        if entry.metadata().is_dir() {
            continue;
        }
        let url = format!("{base}{}", entry.path());
        if keep.contains(&url) {
            continue;
        }
        let modified = match entry.metadata().last_modified() {
            Some(t) => Some(t),
            None => op.stat(entry.path()).await?.last_modified(),
        };
        let young = modified
            .map(SystemTime::from)
            .is_none_or(|t| now.duration_since(t).unwrap_or_default() < grace);
        if young {
            continue;
        }
        table.file_io().delete(&url).await?;
        removed += 1;
        tracing::debug!(file = %url, "orphan removed");
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iceberg::spec::{DataContentType, DataFileBuilder, DataFileFormat, Struct};

    fn file(path: &str, size: u64) -> LiveFile {
        LiveFile {
            file: DataFileBuilder::default()
                .content(DataContentType::Data)
                .file_path(path.to_string())
                .file_format(DataFileFormat::Parquet)
                .partition(Struct::from_iter([Some(Literal::date(1))]))
                .record_count(10)
                .file_size_in_bytes(size)
                .build()
                .unwrap(),
            day: 1,
        }
    }

    #[test]
    fn small_files_are_packed_up_to_the_target() {
        let mut maintenance = LakeConfig::default().maintenance;
        maintenance.small_file_percent = 75;
        let cfg = LakeConfig {
            target_file_size_bytes: 100,
            maintenance,
            ..Default::default()
        };
        let files = vec![
            file("a", 60),
            file("b", 50),
            file("c", 40),
            file("d", 30),
            file("big", 80), // not small
            file("e", 70),
        ];
        let plan = plan(&files, &cfg);
        let groups = &plan[&1];
        for g in groups {
            let total: u64 = g.iter().map(|f| f.file_size_in_bytes()).sum();
            assert!(total <= 100, "{total}");
            assert!(g.len() > 1);
        }
        let paths: HashSet<_> = groups.iter().flatten().map(|f| f.file_path()).collect();
        assert!(!paths.contains("big"));
        // 70+30, 60+40, and 50 alone (left as is).
        assert_eq!(groups.len(), 2);
        assert!(!paths.contains("b"));
    }
}
