//! The lake's persisted dedup state: with every commit, a small file of the
//! fingerprints its rows added, named in the snapshot summary.
//!
//! The lake applies the aggregator's duplicate rule (`ingest::dedup`), so a
//! writer that takes over a partition must know the events of the last
//! window. Only committed snapshots name dedup files, so an uncommitted
//! (crashed or fenced) round never marks its events as seen. A restore
//! reads the files of the snapshots committed within the window (plus an
//! hour) before the current one, 16 at a time.
//!
//! Format (little endian): `NFD1`, then sections of `partition: i32,
//! generation: u32, count: u32` followed by `count` fingerprints (`u64`),
//! 8 bytes an event.

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;
use iceberg::table::Table;
use notiflow_ingest::dedup::{Dedup, GENERATION_MICROS};

use crate::error::LakeError;
use crate::table::DEDUP_PROP;

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

/// The dedup state of `partitions` as of `table`'s current snapshot.
pub async fn restore(
    table: &Table,
    partitions: &[i32],
    window: u32,
) -> Result<HashMap<i32, Dedup>, LakeError> {
    let mut out: HashMap<i32, Dedup> = partitions
        .iter()
        .map(|&p| (p, Dedup::new(window)))
        .collect();
    let io = table.file_io().clone();
    let mut reads = futures::stream::iter(files_in_window(table, window))
        .map(move |path| read(io.clone(), path))
        .buffer_unordered(PARALLEL_READS);
    let mut files = 0usize;
    while let Some(bytes) = reads.next().await {
        decode(&bytes?, |p, g, packed| {
            if let Some(d) = out.get_mut(&p) {
                d.restore_packed(g, packed);
            }
        })?;
        files += 1;
    }
    tracing::debug!(files, partitions = ?partitions, "dedup state restored");
    Ok(out)
}

async fn read(io: iceberg::io::FileIO, path: String) -> Result<bytes::Bytes, LakeError> {
    Ok(io.new_input(&path)?.read().await?)
}

/// Dedup files of the snapshots committed within the window (plus an hour)
/// before the current one. Rows are committed after their broker timestamp,
/// so older snapshots hold only older generations; when old records are
/// replayed this takes more files than needed, never fewer. The order of
/// the restore does not matter: expired generations are swept out.
fn files_in_window(table: &Table, window: u32) -> Vec<String> {
    let md = table.metadata();
    let Some(current) = md.current_snapshot() else {
        return Vec::new();
    };
    let span_ms = i64::from(window + 1) * GENERATION_MICROS / 1000;
    let cutoff_ms = current.timestamp_ms() - span_ms;
    let mut out = Vec::new();
    let mut snap = Some(current);
    while let Some(s) = snap {
        if s.timestamp_ms() < cutoff_ms {
            break;
        }
        if let Some(path) = s.summary().additional_properties.get(DEDUP_PROP) {
            out.push(path.clone());
        }
        snap = s.parent_snapshot_id().and_then(|id| md.snapshot_by_id(id));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use notiflow_ingest::dedup::pack;

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
