//! Data files of one commit round: Parquet (zstd) files per day partition,
//! rolled over at the target size, through iceberg-rust's writer stack.
//!
//! Memory: rows are encoded as they arrive, so a round holds at most one
//! open row group per day partition, whatever the round's size on disk.
//! File names start with a fresh UUID per round, so a crashed or fenced
//! round's files never collide with a later one's (and are removed as
//! orphans by maintenance).

use arrow::array::RecordBatch;
use iceberg::spec::{DataFile, DataFileFormat, Literal, PartitionKey, Struct};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use crate::config::LakeConfig;
use crate::error::LakeError;

type Inner =
    DataFileWriterBuilder<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>;

/// How data files are written.
#[derive(Debug, Clone, Copy)]
pub struct FileOptions {
    /// Roll over to a new file at this size, bytes.
    pub target_size: u64,
    /// Rows per row group.
    pub row_group_rows: usize,
    /// zstd level.
    pub zstd_level: i32,
    /// Most day partitions with an open file at once.
    pub max_open_partitions: usize,
}

impl From<&LakeConfig> for FileOptions {
    fn from(cfg: &LakeConfig) -> Self {
        FileOptions {
            target_size: cfg.target_file_size_bytes,
            row_group_rows: cfg.row_group_rows,
            zstd_level: cfg.zstd_level,
            max_open_partitions: cfg.max_open_partitions,
        }
    }
}

/// Parquet writer properties for the table's files.
pub fn writer_properties(o: FileOptions) -> Result<WriterProperties, LakeError> {
    let level = ZstdLevel::try_new(o.zstd_level)
        .map_err(|e| LakeError::Table(format!("zstd level {}: {e}", o.zstd_level)))?;
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(o.row_group_rows.max(1)))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_created_by("notiflow".to_string())
        .build())
}

/// Data file writers for `table` (new file names: a uuid per builder).
fn writer_builder(table: &Table, o: FileOptions) -> Result<Inner, LakeError> {
    let md = table.metadata();
    let parquet = ParquetWriterBuilder::new(writer_properties(o)?, md.current_schema().clone());
    let rolling = RollingFileWriterBuilder::new(
        parquet,
        o.target_size as usize,
        table.file_io().clone(),
        DefaultLocationGenerator::new(md)?,
        DefaultFileNameGenerator::new(
            uuid::Uuid::new_v4().to_string(),
            None,
            DataFileFormat::Parquet,
        ),
    );
    Ok(DataFileWriterBuilder::new(rolling))
}

/// The data files of one round: one open (rolling) file per day partition
/// written to, at most `max_open_partitions` of them. A write to one more
/// day closes them all (they join the round's closed files) and starts
/// afresh, so a backfill over years holds a bounded number of files open.
pub struct RoundFiles {
    writer: FanoutWriter<Inner>,
    table: Table,
    opts: FileOptions,
    rows: u64,
    open: std::collections::BTreeSet<i32>,
    max_open: usize,
    closed: Vec<DataFile>,
    rolls: u64,
}

impl RoundFiles {
    /// Starts a round on `table` (its schema, spec and location).
    pub fn new(table: &Table, o: FileOptions) -> Result<Self, LakeError> {
        Ok(RoundFiles {
            writer: FanoutWriter::new(writer_builder(table, o)?),
            table: table.clone(),
            opts: o,
            rows: 0,
            open: Default::default(),
            max_open: o.max_open_partitions.max(1),
            closed: Vec::new(),
            rolls: 0,
        })
    }

    /// How often the open files were closed to open another day's.
    pub fn rolls(&self) -> u64 {
        self.rolls
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Writes rows of day partition `day` (days since 1970-01-01).
    pub async fn write(&mut self, day: i32, batch: RecordBatch) -> Result<(), LakeError> {
        let md = self.table.metadata();
        let key = PartitionKey::new(
            md.default_partition_spec().as_ref().clone(),
            md.current_schema().clone(),
            Struct::from_iter([Some(Literal::date(day))]),
        );
        if !self.open.contains(&day) && self.open.len() >= self.max_open {
            let fresh = FanoutWriter::new(writer_builder(&self.table, self.opts)?);
            let full = std::mem::replace(&mut self.writer, fresh);
            self.closed.extend(full.close().await?);
            self.open.clear();
            self.rolls += 1;
        }
        self.open.insert(day);
        self.rows += batch.num_rows() as u64;
        self.writer.write(key, batch).await?;
        Ok(())
    }

    /// Closes every file; the data files to commit.
    pub async fn close(mut self) -> Result<Vec<DataFile>, LakeError> {
        self.closed.extend(self.writer.close().await?);
        Ok(self.closed)
    }
}
