//! The lake's persisted dedup state: with every commit, a small file of the
//! fingerprints its rows added, named in the snapshot summary.
//!
//! The lake applies the aggregator's duplicate rule (`ingest::dedup`), so a
//! writer that takes over a partition must know the events of the last
//! window. Only committed snapshots name dedup files, so an uncommitted
//! (crashed or fenced) round never marks its events as seen. Each commit
//! records its partitions' newest generations with their offsets, and each
//! snapshot with a dedup file the newest generation in it: a restore reads
//! the files that reach into each partition's own window (anchored on its
//! newest generation, never on a commit time), 16 at a time.
//!
//! Format (little endian): `NFD1`, then sections of `partition: i32,
//! generation: u32, count: u32` followed by `count` fingerprints (`u64`),
//! 8 bytes an event.

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;
use iceberg::spec::{SnapshotRef, TableMetadata};
use iceberg::table::Table;
use notiflow_ingest::sink::{Dedup, GENERATION_MICROS};

use crate::error::LakeError;
use crate::table::{
    DEDUP_MAX_GEN_PROP, DEDUP_PROP, DEDUP_WHOLE_PROP, committed_generations, committed_offsets,
};

const MAGIC: &[u8; 4] = b"NFD1";

/// Fingerprints per partition × generation, packed (8 bytes each, as
/// `ingest::dedup::pack` writes them).
pub type Fingerprints = BTreeMap<(i32, u32), Vec<u8>>;

/// Encodes `fps` as a dedup file.
pub fn encode(fps: &Fingerprints) -> Vec<u8> {
    let size: usize = fps.values().map(|v| v.len() + 12).sum();
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(MAGIC);
    for (&(p, g), packed) in fps {
        out.extend_from_slice(&p.to_le_bytes());
        out.extend_from_slice(&g.to_le_bytes());
        out.extend_from_slice(&((packed.len() / 8) as u32).to_le_bytes());
        out.extend_from_slice(packed);
    }
    out
}

/// Calls `f(partition, generation, packed)` for every section of a dedup
/// file.
pub fn decode(bytes: &[u8], mut f: impl FnMut(i32, u32, &[u8])) -> Result<(), LakeError> {
    let bad = || LakeError::Table("malformed dedup file".into());
    let mut rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or_else(bad)?;
    let word = |b: &[u8], i: usize| -> [u8; 4] { [b[i], b[i + 1], b[i + 2], b[i + 3]] };
    while !rest.is_empty() {
        if rest.len() < 12 {
            return Err(bad());
        }
        let p = i32::from_le_bytes(word(rest, 0));
        let g = u32::from_le_bytes(word(rest, 4));
        let n = u32::from_le_bytes(word(rest, 8)) as usize;
        let body = rest.get(12..12 + n * 8).ok_or_else(bad)?;
        f(p, g, body);
        rest = &rest[12 + n * 8..];
    }
    Ok(())
}

/// Writes the dedup file of a commit; its path, for the snapshot summary.
pub async fn write(table: &Table, name: &str, fps: &Fingerprints) -> Result<String, LakeError> {
    let path = format!("{}/notiflow/dedup/{name}.nfd", table.metadata().location());
    table
        .file_io()
        .new_output(&path)?
        .write(encode(fps).into())
        .await?;
    Ok(path)
}

/// Dedup files read at once while restoring.
const PARALLEL_READS: usize = 16;

/// The dedup state of `topic`'s `partitions` as of `table`'s current
/// snapshot: each partition's window is anchored on its own newest
/// generation, as recorded with its offsets.
pub async fn restore(
    table: &Table,
    topic: &str,
    partitions: &[i32],
    window: u32,
) -> Result<HashMap<i32, Dedup>, LakeError> {
    let md = table.metadata();
    let gens = committed_generations(md)?.remove(topic).unwrap_or_default();
    let offsets = committed_offsets(md)?.remove(topic).unwrap_or_default();
    let mut out: HashMap<i32, Dedup> = partitions
        .iter()
        .map(|&p| (p, Dedup::new(window)))
        .collect();
    let floors: BTreeMap<i32, u32> = partitions
        .iter()
        .filter_map(|p| Some((*p, gens.get(p)?.saturating_sub(window))))
        .collect();
    // Partitions committed before generations were recorded: their files
    // are found by commit time, as they were then.
    let legacy = partitions
        .iter()
        .any(|p| offsets.contains_key(p) && !gens.contains_key(p));
    let io = table.file_io().clone();
    let mut reads = futures::stream::iter(files_needed(md, topic, &floors, legacy, window))
        .map(move |path| read(io.clone(), path))
        .buffer_unordered(PARALLEL_READS);
    let (mut files, mut missing) = (0usize, Vec::new());
    while let Some(read) = reads.next().await {
        let (path, bytes) = read?;
        let Some(bytes) = bytes else {
            missing.push(path);
            continue;
        };
        decode(&bytes, |p, g, packed| {
            if let Some(d) = out.get_mut(&p) {
                d.restore_packed(g, packed);
            }
        })?;
        files += 1;
    }
    if !missing.is_empty() {
        // Deleted behind the writers' backs (a storage lifecycle rule, an
        // orphan removal that raced a commit): the committed rows still
        // name every event, so the window is rebuilt from them.
        tracing::warn!(
            missing = missing.len(),
            first = %missing[0],
            "dedup files of committed snapshots are missing: rebuilding the window from the table's rows"
        );
        rebuild_from_rows(table, &gens, window, &mut out).await?;
    }
    for (p, d) in &mut out {
        if let Some(&g) = gens.get(p) {
            d.advance_to(g);
        }
    }
    tracing::debug!(files, partitions = ?partitions, "dedup state restored");
    Ok(out)
}

/// A dedup file's bytes; `None` if it does not exist.
async fn read(
    io: iceberg::io::FileIO,
    path: String,
) -> Result<(String, Option<bytes::Bytes>), LakeError> {
    match io.new_input(&path)?.read().await {
        Ok(b) => Ok((path, Some(b))),
        Err(e) => {
            if io.exists(&path).await? {
                Err(e.into())
            } else {
                Ok((path, None))
            }
        }
    }
}

/// Remembers, in `out`, the event of every committed row of its partitions
/// whose broker hour is inside the partition's window. Files whose
/// `ingest_time` ends before every window are skipped on their column
/// bounds. A row's generation is its broker hour, capped at the partition's
/// newest (as [`Dedup::generation_of`] caps it live).
async fn rebuild_from_rows(
    table: &Table,
    gens: &BTreeMap<i32, u32>,
    window: u32,
    out: &mut HashMap<i32, Dedup>,
) -> Result<(), LakeError> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int32Type, TimestampMicrosecondType};
    use iceberg::spec::{Datum, PrimitiveLiteral};
    use notiflow_ingest::sink::{fingerprint, generation};
    use parquet::arrow::ProjectionMask;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use crate::rows::field;

    let floor = |p: &i32| gens.get(p).map(|g| g.saturating_sub(window));
    let Some(lowest) = out.keys().filter_map(floor).min() else {
        return Ok(());
    };
    let lowest_us = i64::from(lowest) * GENERATION_MICROS;
    for f in crate::maintenance::live_files(table).await? {
        let ends = f
            .file
            .upper_bounds()
            .get(&field::INGEST_TIME)
            .map(Datum::literal);
        if let Some(PrimitiveLiteral::Long(end)) = ends
            && *end < lowest_us
        {
            continue;
        }
        let path = f.file.file_path();
        let bytes = table.file_io().new_input(path)?.read().await?;
        let bad =
            |e: parquet::errors::ParquetError| LakeError::Table(format!("reading {path}: {e}"));
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(bad)?;
        let names = ["event_id", "ingest_time", "kafka_partition"];
        let leaves: Vec<usize> = names
            .iter()
            .map(|n| {
                builder
                    .schema()
                    .index_of(n)
                    .map_err(|e| LakeError::Table(format!("{path}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), leaves);
        for batch in builder.with_projection(mask).build().map_err(bad)? {
            let batch = batch?;
            let col = |n: &str| {
                batch
                    .column_by_name(n)
                    .ok_or_else(|| LakeError::Table(format!("{path}: no column {n}")))
            };
            let ids = col("event_id")?.as_string::<i32>().clone();
            let ts = col("ingest_time")?
                .as_primitive::<TimestampMicrosecondType>()
                .clone();
            let parts = col("kafka_partition")?.as_primitive::<Int32Type>().clone();
            for i in 0..batch.num_rows() {
                let p = parts.value(i);
                let (Some(d), Some(newest)) = (out.get_mut(&p), gens.get(&p)) else {
                    continue;
                };
                let g = generation(ts.value(i)).min(*newest);
                if g >= newest.saturating_sub(window) && !ids.is_null(i) {
                    d.restore(fingerprint(ids.value(i)), g);
                }
            }
        }
    }
    Ok(())
}

/// The current snapshot and its ancestors, newest first.
fn ancestry(md: &TableMetadata) -> impl Iterator<Item = &SnapshotRef> {
    std::iter::successors(md.current_snapshot(), |s| {
        s.parent_snapshot_id().and_then(|id| md.snapshot_by_id(id))
    })
}

/// The newest generation of a snapshot's dedup file, if recorded.
fn max_generation(s: &SnapshotRef) -> Option<u32> {
    s.summary()
        .additional_properties
        .get(DEDUP_MAX_GEN_PROP)
        .and_then(|v| v.parse().ok())
}

/// Whether a caught-up partition's whole window should be checkpointed
/// now ([`crate::round::Round::checkpoint`]): when what a restore of it
/// would read reaches back further than halfway from the window to the
/// snapshot expiry age. `now_generation` is the writer's clock's hour;
/// `newest` the partition's newest generation; `last` the generation at
/// which this writer last checkpointed it, if it did. A busy partition
/// reaches back one window and is never due (expiry exceeds the window,
/// validated); a quiet one is due once every half of the slack, so snapshot
/// expiry is never pinned by it for longer than that. Only ever a trigger:
/// what a checkpoint holds depends on the log alone.
pub fn checkpoint_due(
    now_generation: u32,
    newest: u32,
    last: Option<u32>,
    window: u32,
    expire_after_hours: u32,
) -> bool {
    if newest == 0 {
        return false; // nothing seen: no window to keep
    }
    let reach = newest.saturating_sub(window).max(last.unwrap_or(0));
    let slack = expire_after_hours.saturating_sub(window);
    now_generation.saturating_sub(reach) > window + slack / 2
}

/// The partitions of `topic` whose whole window snapshot `s`'s dedup file
/// holds (`DEDUP_WHOLE_PROP`).
fn whole_partitions(s: &SnapshotRef, topic: &str) -> Vec<i32> {
    s.summary()
        .additional_properties
        .get(DEDUP_WHOLE_PROP)
        .and_then(|v| serde_json::from_str::<BTreeMap<String, Vec<i32>>>(v).ok())
        .and_then(|mut m| m.remove(topic))
        .unwrap_or_default()
}

/// The snapshots, newest first, whose dedup files `topic`'s partitions
/// with window floors `floors` need: a file whose newest generation
/// reaches the lowest floor still open, wherever in the history it was
/// committed (a writer outage of hours, a compaction or another writer's
/// commit since change nothing). A partition is closed by its newest
/// checkpoint (the file holds its whole window): nothing older is read for
/// it. Files of snapshots from before generations were recorded are taken
/// by commit time within the window (plus an hour) of the newest of them,
/// when `legacy` partitions need them.
fn snapshots_needed<'a>(
    md: &'a TableMetadata,
    topic: &str,
    floors: &BTreeMap<i32, u32>,
    legacy: bool,
    window: u32,
) -> Vec<&'a SnapshotRef> {
    let span_ms = i64::from(window + 1) * GENERATION_MICROS / 1000;
    let legacy_cutoff = ancestry(md)
        .find(|s| {
            max_generation(s).is_none()
                && s.summary().additional_properties.contains_key(DEDUP_PROP)
        })
        .map(|s| s.timestamp_ms() - span_ms);
    let mut open = floors.clone();
    let mut out = Vec::new();
    for s in ancestry(md) {
        if open.is_empty() && !legacy {
            break;
        }
        let floor = open.values().min().copied();
        let whole = whole_partitions(s, topic);
        let closes = whole.iter().any(|p| open.contains_key(p));
        if s.summary().additional_properties.contains_key(DEDUP_PROP) {
            let wanted = closes
                || match max_generation(s) {
                    Some(g) => floor.is_some_and(|f| g >= f),
                    None => {
                        (legacy || floor.is_some())
                            && legacy_cutoff.is_some_and(|c| s.timestamp_ms() >= c)
                    }
                };
            if wanted {
                out.push(s);
            }
        } else if closes {
            // A checkpoint of partitions with nothing left in their window.
            out.push(s);
        }
        for p in whole {
            open.remove(&p);
        }
    }
    out
}

/// The dedup files of [`snapshots_needed`].
fn files_needed(
    md: &TableMetadata,
    topic: &str,
    floors: &BTreeMap<i32, u32>,
    legacy: bool,
    window: u32,
) -> Vec<String> {
    snapshots_needed(md, topic, floors, legacy, window)
        .into_iter()
        .filter_map(|s| s.summary().additional_properties.get(DEDUP_PROP).cloned())
        .collect()
}

/// Commit time (ms) of the oldest snapshot whose dedup file some
/// partition's window still needs (any topic): snapshot expiry keeps it
/// and everything after, so a writer away for longer than the expiry age
/// still finds its window. A partition's newest checkpoint bounds what it
/// needs, so a partition gone quiet pins nothing older than that.
pub fn oldest_needed_ms(md: &TableMetadata, window: u32) -> Result<Option<i64>, LakeError> {
    let mut oldest: Option<i64> = None;
    for (topic, parts) in committed_generations(md)? {
        let floors: BTreeMap<i32, u32> = parts
            .iter()
            .map(|(p, g)| (*p, g.saturating_sub(window)))
            .collect();
        // Files from before generations were recorded never pinned expiry.
        let needed = snapshots_needed(md, &topic, &floors, false, window)
            .into_iter()
            .filter(|s| {
                max_generation(s).is_some()
                    || !s.summary().additional_properties.contains_key(DEDUP_PROP)
            })
            .map(|s| s.timestamp_ms())
            .min();
        oldest = match (oldest, needed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(oldest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use notiflow_ingest::sink::pack;

    #[test]
    fn a_quiet_partition_is_checkpointed_before_it_pins_expiry() {
        // Window 24 h, expiry 168 h: due when the reach is over 24 + 72 h old.
        let due = |now, newest, last| checkpoint_due(now, newest, last, 24, 168);
        assert!(!due(1000, 1000, None), "busy: reaches back one window");
        assert!(!due(1000, 1000 - 72, None), "quiet 72 h: reaches back 96 h");
        assert!(due(1000, 1000 - 73, None), "quiet 73 h: 97 h");
        assert!(
            !due(1000, 1000 - 500, Some(1000 - 96)),
            "checkpointed 96 h ago"
        );
        assert!(
            due(1000, 1000 - 500, Some(1000 - 97)),
            "checkpointed 97 h ago"
        );
        assert!(!due(1000, 0, None), "nothing seen yet: no window");
    }

    #[test]
    fn files_round_trip() {
        let mut fps = Fingerprints::new();
        for (p, g, fp) in [(0, 7, 11u64), (0, 7, 12), (3, 8, 13), (-1, 0, 14)] {
            pack(fp, fps.entry((p, g)).or_default());
        }
        let bytes = encode(&fps);
        let mut seen = Vec::new();
        decode(&bytes, |p, g, packed| {
            for c in packed.chunks_exact(8) {
                seen.push((p, g, u64::from_le_bytes(c.try_into().unwrap())));
            }
        })
        .unwrap();
        assert_eq!(seen, [(-1, 0, 14), (0, 7, 11), (0, 7, 12), (3, 8, 13)]);
    }

    #[test]
    fn a_truncated_file_is_an_error() {
        let mut fps = Fingerprints::new();
        pack(5, fps.entry((1, 1)).or_default());
        let bytes = encode(&fps);
        assert!(decode(&bytes[..bytes.len() - 1], |_, _, _| {}).is_err());
        assert!(decode(b"XXXX", |_, _, _| {}).is_err());
    }
}
