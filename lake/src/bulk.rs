//! Events appended straight into the table, without Kafka: the reports'
//! tests and benchmarks load crafted events or a whole generated day this
//! way (and a backfill could). There are no offsets and no dedup here: the
//! caller's events are the rows. The snapshot carries the writers' offsets
//! forward unchanged, so a running writer is not disturbed.

use iceberg::table::Table;
use notiflow_schema::Event;

use crate::config::LakeConfig;
use crate::error::LakeError;
use crate::files::{FileOptions, RoundFiles};
use crate::rows::{Origin, RowBuffer, arrow_schema};
use crate::table::{Change, Lake, commit_carrying_offsets};

/// Rows buffered, encoded into data files, then committed as one snapshot.
pub struct Bulk {
    table: Table,
    buffer: RowBuffer,
    files: Option<RoundFiles>,
    opts: FileOptions,
    flush_rows: usize,
    rows: u64,
}

impl Bulk {
    /// A load into `lake`'s current table, with `cfg`'s file options.
    pub async fn new(lake: &Lake, cfg: &LakeConfig) -> Result<Bulk, LakeError> {
        let table = lake.load().await?;
        let schema = arrow_schema(table.metadata().current_schema())?;
        Ok(Bulk {
            table,
            buffer: RowBuffer::new(schema, cfg.flush_rows.min(65_536)),
            files: None,
            opts: FileOptions::from(cfg),
            flush_rows: cfg.flush_rows.max(1),
            rows: 0,
        })
    }

    /// Adds one row; encodes when `flush_rows` rows are buffered.
    pub async fn push(&mut self, event: &Event<'_>, origin: Origin) -> Result<(), LakeError> {
        self.buffer.push(event, origin);
        self.rows += 1;
        if self.buffer.len() >= self.flush_rows {
            self.flush().await?;
        }
        Ok(())
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    async fn flush(&mut self) -> Result<(), LakeError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if self.files.is_none() {
            self.files = Some(RoundFiles::new(&self.table, self.opts)?);
        }
        let batches = self.buffer.take(false)?;
        if let Some(files) = self.files.as_mut() {
            for (day, batch) in batches {
                files.write(day, batch).await?;
            }
        }
        Ok(())
    }

    /// Closes the files and commits them as one snapshot; its id (None when
    /// nothing was pushed).
    pub async fn commit(mut self, lake: &Lake) -> Result<Option<i64>, LakeError> {
        self.flush().await?;
        let Some(files) = self.files.take() else {
            return Ok(None);
        };
        let mut change = Change {
            added: files.close().await?,
            ..Default::default()
        };
        let (id, _) = commit_carrying_offsets(lake, &mut change, "bulk-load").await?;
        Ok(Some(id))
    }
}
