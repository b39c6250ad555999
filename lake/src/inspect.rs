//! What the table holds, read back through iceberg-rust's scan: row counts
//! per client × day × status, an order-independent checksum of every row,
//! and the committed offsets. For operators (`notiflow lake stats`) and the
//! end-to-end tests, which compare it with the generator's ground truth.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMicrosecondType};
use futures::TryStreamExt;
use iceberg::table::Table;
use serde::Serialize;
use xxhash_rust::xxh3::xxh3_64;

use crate::error::LakeError;
use crate::rows::day_of;
use crate::table::{
    Completeness, TopicOffsets, TopicWatermarks, committed_offsets, committed_watermarks,
    complete_until,
};

/// A summary of the table's current snapshot.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Current snapshot id (none for an empty table).
    pub snapshot_id: Option<i64>,
    /// Rows.
    pub rows: u64,
    /// Distinct `(kafka_partition, kafka_offset)` pairs: equals `rows`
    /// unless a record was written twice.
    pub distinct_offsets: u64,
    /// Sum and xor of a 64-bit hash of every row's values, as hex: the same
    /// rows in any order and any files give the same checksum.
    pub checksum: String,
    /// Rows per client, day (`YYYY-MM-DD` of `event_time`, UTC) and status.
    pub counts: Vec<(String, String, String, u64)>,
    /// Next offsets per topic and partition, from the snapshot summary.
    pub offsets: TopicOffsets,
    /// Completeness watermarks (broker time, ms) per topic and partition.
    pub watermarks: TopicWatermarks,
    /// How far the table is complete (what billing waits for), and the
    /// partition that holds it back: `None` when no writer recorded
    /// offsets.
    pub complete_until: Option<Held>,
}

/// The partition furthest behind, and up to when it is committed.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Held {
    /// Broker time, ms (`None`: no watermark yet).
    pub until_ms: Option<i64>,
    /// Its topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

/// Reads every row of `table`'s current snapshot.
pub async fn stats(table: &Table) -> Result<Stats, LakeError> {
    let md = table.metadata();
    let mut out = Stats {
        snapshot_id: md.current_snapshot().map(|s| s.snapshot_id()),
        offsets: committed_offsets(md)?,
        watermarks: committed_watermarks(md)?,
        complete_until: match complete_until(md)? {
            Completeness::Unrecorded => None,
            Completeness::Until {
                until_ms,
                topic,
                partition,
            } => Some(Held {
                until_ms: (until_ms != i64::MIN).then_some(until_ms),
                topic,
                partition,
            }),
        },
        ..Default::default()
    };
    if out.snapshot_id.is_none() {
        out.checksum = format!("{:016x}{:016x}", 0, 0);
        return Ok(out);
    }
    let mut stream = table.scan().select_all().build()?.to_arrow().await?;
    let (mut sum, mut xor) = (0u64, 0u64);
    let mut counts: BTreeMap<(String, i32, String), u64> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut row = Vec::with_capacity(256);
    while let Some(batch) = stream.try_next().await? {
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| LakeError::Table(format!("column {name} missing")))
        };
        let strings = [
            "event_id",
            "message_id",
            "client_id",
            "recipient",
            "status",
            "category",
            "country",
            "template",
        ]
        .map(col);
        let strings: Vec<_> = strings.into_iter().collect::<Result<_, _>>()?;
        let strings: Vec<_> = strings.iter().map(|a| a.as_string::<i32>()).collect();
        let billable = col("billable")?;
        let billable = billable.as_boolean();
        let event_time = col("event_time")?;
        let event_time = event_time.as_primitive::<TimestampMicrosecondType>();
        let ingest_time = col("ingest_time")?;
        let ingest_time = ingest_time.as_primitive::<TimestampMicrosecondType>();
        let error_code = col("error_code")?;
        let error_code = error_code.as_primitive::<Int64Type>();
        let partition = col("kafka_partition")?;
        let partition = partition.as_primitive::<Int32Type>();
        let offset = col("kafka_offset")?;
        let offset = offset.as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            row.clear();
            for s in &strings {
                if s.is_null(i) {
                    row.push(0xff);
                } else {
                    row.extend_from_slice(s.value(i).as_bytes());
                }
                row.push(0);
            }
            row.push(u8::from(billable.value(i)));
            row.extend_from_slice(&event_time.value(i).to_le_bytes());
            row.extend_from_slice(&ingest_time.value(i).to_le_bytes());
            if error_code.is_null(i) {
                row.push(0xff);
            } else {
                row.extend_from_slice(&error_code.value(i).to_le_bytes());
            }
            row.extend_from_slice(&partition.value(i).to_le_bytes());
            row.extend_from_slice(&offset.value(i).to_le_bytes());
            let h = xxh3_64(&row);
            sum = sum.wrapping_add(h);
            xor ^= h;
            out.rows += 1;
            if seen.insert((partition.value(i), offset.value(i))) {
                out.distinct_offsets += 1;
            }
            *counts
                .entry((
                    strings[2].value(i).to_string(),
                    day_of(event_time.value(i)),
                    strings[4].value(i).to_string(),
                ))
                .or_default() += 1;
        }
    }
    out.checksum = format!("{sum:016x}{xor:016x}");
    out.counts = counts
        .into_iter()
        .map(|((c, d, s), n)| {
            let (y, m, dd) = notiflow_schema::time::civil_from_days(i64::from(d));
            (c, format!("{y:04}-{m:02}-{dd:02}"), s, n)
        })
        .collect();
    Ok(out)
}
