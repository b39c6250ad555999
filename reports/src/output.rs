//! Report files in object storage under `<kind>/<date>/<run>/`, written
//! as the rows stream in (bounded memory), each with its row count and
//! sha256, plus a manifest that says how to reproduce them (engine, lake
//! snapshot, rate card). Encoders are deterministic (fixed `created_by`, no
//! clock), so the same snapshot gives the same bytes.
//!
//! **Publishing is atomic**: every run writes under a prefix of its own
//! ([`run_dir`]), so no run ever truncates or overwrites another's files
//! (a re-run, or an on-demand run racing a scheduled one), and the
//! manifest is written last: a run folder without a manifest is an
//! unfinished run (a crash), never a report. A failed run removes what it
//! wrote.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType};
use bytes::Bytes;
use notiflow_lake::S3Config;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Format;
use crate::error::ReportError;

/// A fresh folder for one run's files under `<kind>/<date>/`:
/// `<kind>/<date>/<UTC time>-<unique>/`. Its name sorts by start time.
pub fn run_dir(kind: &str, date: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let at = notiflow_schema::time::format_rfc3339(now.as_micros() as i64);
    let stamp: String = at
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(15)
        .collect();
    let unique = Sha256::digest(format!(
        "{}-{}-{}",
        now.as_nanos(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    format!("{kind}/{date}/{stamp}Z-{}/", &hex::encode(unique)[..10])
}

/// The output store: a folder or bucket prefix.
#[derive(Clone)]
pub struct Output {
    op: opendal::Operator,
    prefix: String,
    base: String,
}

impl Output {
    /// The store at `location` (folder, `file://` or `s3://`).
    pub fn open(location: &str, s3: &S3Config) -> Result<Output, ReportError> {
        let (op, prefix, base) = notiflow_lake::store::operator(s3, location)?;
        Ok(Output { op, prefix, base })
    }

    /// The URL of a report file (`file:///…` or `s3://…`).
    pub fn url(&self, rel: &str) -> String {
        format!("{}{}{}", self.base, self.prefix, rel)
    }

    /// Starts a file at `rel` (relative to the store's root).
    pub async fn create(
        &self,
        rel: &str,
        format: Format,
        schema: SchemaRef,
    ) -> Result<FileSink, ReportError> {
        let writer = self.op.writer(&format!("{}{rel}", self.prefix)).await?;
        let enc = match format {
            Format::Csv => Encoder::Csv { header: true },
            Format::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
                    .set_max_row_group_row_count(Some(262_144))
                    .set_created_by("notiflow-reports".to_string())
                    .build();
                Encoder::Parquet(Box::new(ArrowWriter::try_new(
                    Vec::new(),
                    schema,
                    Some(props),
                )?))
            }
        };
        Ok(FileSink {
            rel: rel.to_string(),
            format,
            writer,
            enc,
            hash: Sha256::new(),
            rows: 0,
            bytes: 0,
        })
    }

    /// Writes a small file whole (manifests, run records).
    pub async fn put(&self, rel: &str, body: Vec<u8>) -> Result<(), ReportError> {
        self.op
            .write(&format!("{}{rel}", self.prefix), body)
            .await?;
        Ok(())
    }

    /// Reads a file whole (manifests; tests).
    pub async fn get(&self, rel: &str) -> Result<Vec<u8>, ReportError> {
        Ok(self
            .op
            .read(&format!("{}{rel}", self.prefix))
            .await?
            .to_vec())
    }

    /// Opens a file for streaming (downloads): its size and its bytes.
    pub async fn open_read(
        &self,
        rel: &str,
    ) -> Result<(u64, opendal::FuturesBytesStream), ReportError> {
        let path = format!("{}{rel}", self.prefix);
        let size = self.op.stat(&path).await?.content_length();
        let stream = self.op.reader(&path).await?.into_bytes_stream(..).await?;
        Ok((size, stream))
    }

    /// Removes what a failed run wrote under `dir` (best effort: the
    /// folder has no manifest, so nothing reads it either way).
    pub async fn discard(&self, dir: &str) {
        let path = format!("{}{dir}", self.prefix);
        if let Err(e) = self.op.delete_with(&path).recursive(true).await {
            tracing::warn!(dir, error = %e, "could not remove a failed run's files");
        }
    }

    /// Whether a file exists.
    pub async fn exists(&self, rel: &str) -> Result<bool, ReportError> {
        Ok(self.op.exists(&format!("{}{rel}", self.prefix)).await?)
    }
}

enum Encoder {
    Csv { header: bool },
    Parquet(Box<ArrowWriter<Vec<u8>>>),
}

/// A report file being written.
pub struct FileSink {
    rel: String,
    format: Format,
    writer: opendal::Writer,
    enc: Encoder,
    hash: Sha256,
    rows: u64,
    bytes: u64,
}

/// CSV timestamps: RFC 3339 with microseconds and the offset.
const TS_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6f%:z";

/// `batch` with its UTC microsecond timestamps already formatted as
/// [`TS_FORMAT`] gives them: the same bytes, without chrono's per-value
/// format-string interpretation (7.5% of a detail export's time).
fn utc_times_as_text(batch: &RecordBatch) -> Result<RecordBatch, ReportError> {
    let utc = |tz: &str| tz == "+00:00" || tz == "UTC" || tz == "Z";
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        match f.data_type() {
            DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) if utc(tz) => {
                let t = c.as_primitive::<TimestampMicrosecondType>();
                let mut b = StringBuilder::with_capacity(t.len(), t.len() * 32);
                let mut s = String::with_capacity(32);
                for i in 0..t.len() {
                    if t.is_null(i) {
                        b.append_null();
                        continue;
                    }
                    s.clear();
                    notiflow_schema::time::write_rfc3339(t.value(i), &mut s);
                    s.pop(); // the `Z`
                    s.push_str("+00:00");
                    b.append_value(&s);
                }
                fields.push(Field::new(f.name(), DataType::Utf8, f.is_nullable()));
                cols.push(Arc::new(b.finish()));
            }
            _ => {
                fields.push(f.as_ref().clone());
                cols.push(Arc::clone(c));
            }
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// Characters that make a spreadsheet evaluate a CSV cell (`=1+1`,
/// `@SUM(…)`, `-2+3`, `+A1`, and a tab or carriage return before them).
const FORMULA_START: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// `batch` with every text cell a spreadsheet would evaluate as a formula
/// prefixed with `'` (OWASP's CSV-injection advice): client-chosen text
/// (template names, event and message ids, a client id starting with `-`)
/// reaches finance's spreadsheets. `recipient` is left as it is: it is
/// always `+` and digits (or masked `*`), a number, never a formula, and
/// its bytes are the data. Parquet keeps the values as they are.
fn formulas_neutralised(batch: &RecordBatch) -> Result<RecordBatch, ReportError> {
    let risky = |v: &str| v.starts_with(FORMULA_START);
    let schema = batch.schema();
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    let mut changed = false;
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        if f.data_type() != &DataType::Utf8 || f.name() == "recipient" {
            cols.push(Arc::clone(c));
            continue;
        }
        let text = c.as_string::<i32>();
        if !text.iter().flatten().any(risky) {
            cols.push(Arc::clone(c));
            continue;
        }
        changed = true;
        let mut b = StringBuilder::with_capacity(text.len(), text.value_data().len() + 64);
        for v in text.iter() {
            match v {
                Some(v) if risky(v) => b.append_value(format!("'{v}")),
                other => b.append_option(other),
            }
        }
        cols.push(Arc::new(b.finish()));
    }
    if !changed {
        return Ok(batch.clone());
    }
    Ok(RecordBatch::try_new(schema, cols)?)
}

impl FileSink {
    /// Encodes and writes one batch.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), ReportError> {
        self.rows += batch.num_rows() as u64;
        let chunk = match &mut self.enc {
            Encoder::Csv { header } => {
                let mut buf = Vec::with_capacity(batch.num_rows() * 160);
                {
                    let mut w = arrow::csv::WriterBuilder::new()
                        .with_header(*header)
                        .with_timestamp_tz_format(TS_FORMAT.to_string())
                        .build(&mut buf);
                    w.write(&utc_times_as_text(&formulas_neutralised(batch)?)?)?;
                }
                *header = false;
                buf
            }
            Encoder::Parquet(w) => {
                w.write(batch)?;
                std::mem::take(w.inner_mut())
            }
        };
        self.push(chunk).await
    }

    async fn push(&mut self, chunk: Vec<u8>) -> Result<(), ReportError> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.hash.update(&chunk);
        self.bytes += chunk.len() as u64;
        self.writer.write(Bytes::from(chunk)).await?;
        Ok(())
    }

    /// Finishes the file; what the manifest says of it.
    pub async fn finish(mut self, schema: &SchemaRef) -> Result<FileEntry, ReportError> {
        let enc = std::mem::replace(&mut self.enc, Encoder::Csv { header: false });
        match enc {
            Encoder::Csv { header } => {
                if header {
                    // No rows: still a header line.
                    let empty = RecordBatch::new_empty(Arc::clone(schema));
                    let mut buf = Vec::new();
                    {
                        let mut w = arrow::csv::WriterBuilder::new()
                            .with_header(true)
                            .build(&mut buf);
                        w.write(&empty)?;
                    }
                    self.push(buf).await?;
                }
            }
            Encoder::Parquet(w) => {
                let tail = w.into_inner()?;
                self.push(tail).await?;
            }
        }
        self.writer.close().await?;
        Ok(FileEntry {
            path: self.rel,
            format: self.format,
            rows: self.rows,
            bytes: self.bytes,
            sha256: hex::encode(self.hash.finalize()),
        })
    }
}

/// One file of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path under the store's root.
    pub path: String,
    /// Format.
    pub format: Format,
    /// Data rows.
    pub rows: u64,
    /// Size.
    pub bytes: u64,
    /// sha256 of the bytes, hex.
    pub sha256: String,
}

/// What a report is and how to reproduce it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `billing` or `detail`.
    pub kind: String,
    /// Billing day, or the detail range's first UTC day.
    pub date: String,
    /// The report's parameters.
    pub params: serde_json::Value,
    /// Engine that ran it.
    pub engine: String,
    /// Lake snapshot read (None: the table was empty).
    pub lake_snapshot_id: Option<i64>,
    /// The Iceberg tag that keeps the snapshot readable for the dispute
    /// period (billing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lake_snapshot_tag: Option<String>,
    /// Rate card version (billing).
    pub rate_card_version: Option<String>,
    /// sha256 of the rate card's file (billing): the prices, pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_card_sha256: Option<String>,
    /// Data rows (per file; every format holds the same rows).
    pub rows: u64,
    /// The files.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// The manifest's path next to its files.
    pub fn path(dir: &str, name: &str) -> String {
        format!("{dir}{name}.manifest.json")
    }

    /// Every path the report wrote: its files, then the manifest (same
    /// stem), as the run ledger records them.
    pub fn outputs(&self) -> Vec<String> {
        let mut paths: Vec<String> = self.files.iter().map(|f| f.path.clone()).collect();
        if let Some(f) = self.files.first() {
            let stem = f.path.rsplit_once('.').map_or(f.path.as_str(), |x| x.0);
            paths.push(format!("{stem}.manifest.json"));
        }
        paths
    }
}

#[cfg(test)]
mod csv_tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray};

    fn csv(batch: &RecordBatch) -> String {
        let mut buf = Vec::new();
        {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .with_timestamp_tz_format(TS_FORMAT.to_string())
                .build(&mut buf);
            w.write(batch).unwrap();
        }
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn preformatted_utc_times_give_the_bytes_arrow_csv_gives() {
        let times = vec![
            Some(1_794_279_600_000_000), // 2026-11-10T03:00:00Z
            None,
            Some(1_794_279_600_123_456),
            Some(0),
            Some(-1),
            Some(4_102_444_799_999_999), // 2099-12-31T23:59:59.999999Z
        ];
        let batch = RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(StringArray::from(vec!["a", "b,c", "d", "e", "f", "g"])) as ArrayRef,
            ),
            (
                "t",
                Arc::new(TimestampMicrosecondArray::from(times).with_timezone("+00:00"))
                    as ArrayRef,
            ),
            (
                "n",
                Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5, 6])) as ArrayRef,
            ),
        ])
        .unwrap();
        let fast = csv(&utc_times_as_text(&batch).unwrap());
        assert_eq!(fast, csv(&batch));
        assert!(fast.contains("2026-11-10T03:00:00.123456+00:00"), "{fast}");
        assert!(fast.contains("1969-12-31T23:59:59.999999+00:00"), "{fast}");
    }

    #[test]
    fn cells_a_spreadsheet_would_evaluate_are_neutralised() {
        let batch = RecordBatch::try_from_iter(vec![
            (
                "template",
                Arc::new(StringArray::from(vec![
                    Some("=HYPERLINK(\"http://x\")"),
                    Some("+1"),
                    Some("-2+3"),
                    Some("@SUM(A1)"),
                    Some("\t=1"),
                    Some("promo_nov"),
                    None,
                ])) as ArrayRef,
            ),
            (
                "recipient",
                Arc::new(StringArray::from(vec!["+5511987654321"; 7])) as ArrayRef,
            ),
        ])
        .unwrap();
        let out = csv(&formulas_neutralised(&batch).unwrap());
        let lines: Vec<&str> = out.lines().collect();
        // Written out: each risky cell gains a leading `'`; the rest and
        // every recipient are unchanged.
        assert_eq!(
            lines,
            [
                "template,recipient",
                "\"'=HYPERLINK(\"\"http://x\"\")\",+5511987654321",
                "'+1,+5511987654321",
                "'-2+3,+5511987654321",
                "'@SUM(A1),+5511987654321",
                "'\t=1,+5511987654321",
                "promo_nov,+5511987654321",
                ",+5511987654321",
            ]
        );
        // Nothing risky: the same batch back.
        let plain = batch.slice(5, 2);
        assert_eq!(formulas_neutralised(&plain).unwrap(), plain);
    }

    #[test]
    fn other_zones_are_left_to_the_csv_writer() {
        let batch = RecordBatch::try_from_iter(vec![(
            "t",
            Arc::new(TimestampMicrosecondArray::from(vec![0]).with_timezone("+03:00")) as ArrayRef,
        )])
        .unwrap();
        let out = utc_times_as_text(&batch).unwrap();
        assert_eq!(
            out.schema().field(0).data_type(),
            batch.schema().field(0).data_type()
        );
    }
}
