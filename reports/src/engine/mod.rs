//! The two engines behind every report, over one pinned lake snapshot.
//!
//! - [`duck`]: DuckDB reads the Parquet data files that iceberg-rust's scan
//!   planning selects (partition and column-metrics pruning), straight from
//!   the local warehouse or copied from S3 through opendal first (DuckDB's
//!   `httpfs`/`iceberg` extensions cannot be loaded offline);
//! - [`fusion`]: DataFusion scans through iceberg-datafusion's table
//!   provider, which pushes the filters into the Iceberg scan.
//!
//! Both answer the same two questions: billing counts for a window, and the
//! detail rows of a query (a bounded stream of batches in `event_time,
//! event_id` order, so outputs are reproducible).

pub mod duck;
pub mod fusion;

use arrow::array::RecordBatch;
use futures::TryStreamExt;
use iceberg::expr::{Predicate, Reference};
use iceberg::spec::Datum;
use iceberg::table::Table;
use notiflow_lake::{Lake, S3Config};
use tokio::sync::mpsc;

use crate::billing::{FreeSpan, Window};
use crate::config::{DuckS3Input, EngineKind, ReportsConfig};
use crate::detail::DetailQuery;
use crate::error::ReportError;

/// The table at one snapshot, and how to reach its files.
#[derive(Clone)]
pub struct Source {
    /// The table.
    pub table: Table,
    /// The pinned snapshot (None: the table has no data yet).
    pub snapshot_id: Option<i64>,
    /// S3 settings of the warehouse.
    pub s3: S3Config,
}

impl Source {
    /// The current snapshot, or `snapshot_id` when given (reproducing a
    /// report); an unknown id is an input error.
    pub async fn pin(
        lake: &Lake,
        s3: &S3Config,
        snapshot_id: Option<i64>,
    ) -> Result<Source, ReportError> {
        let table = lake.load().await?;
        let id = match snapshot_id {
            Some(id) => {
                if table.metadata().snapshot_by_id(id).is_none() {
                    return Err(ReportError::input(format!(
                        "snapshot {id} is not in the table (expired, or never existed)"
                    )));
                }
                Some(id)
            }
            None => table.metadata().current_snapshot_id(),
        };
        Ok(Source {
            table,
            snapshot_id: id,
            s3: s3.clone(),
        })
    }
}

/// Columns the billing query reads.
pub(crate) const BILLING_COLUMNS: [&str; 9] = [
    "event_id",
    "message_id",
    "client_id",
    "category",
    "country",
    "event_time",
    "status",
    "billable",
    "pricing_type",
];

/// The billed-messages ledger as a billing run reads it: the table at one
/// snapshot, and the runs whose rows count (the issued ones before the
/// run; `billed`). Engines leave every message it has out.
pub struct LedgerView {
    /// The ledger table (None: empty, or nothing issued yet).
    pub src: Option<Source>,
    /// Runs whose rows count.
    pub runs: Vec<String>,
    /// The held messages' table (`billed::HOLDS`): held rows of those runs
    /// count too, but those held for `day` (this run's day: it bills them).
    pub holds: Option<Source>,
    /// The run's billing day.
    pub day: chrono::NaiveDate,
    /// The lake snapshot the newest of those runs read (None: no run
    /// counts). Rows in data files it does not have reached the lake
    /// after it: the run reads those of any day before its look-back too
    /// ([`arrivals`]), so a late event is seen by the first invoice after
    /// it arrived, whatever the look-back.
    pub since: Option<i64>,
}

impl LedgerView {
    /// True when no row can count.
    pub fn is_empty(&self) -> bool {
        let empty = |s: &Option<Source>| s.as_ref().is_none_or(|s| s.snapshot_id.is_none());
        self.runs.is_empty() || (empty(&self.src) && empty(&self.holds))
    }
}

/// Engine limits and settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Memory before spilling, bytes.
    pub memory_bytes: u64,
    /// Threads.
    pub threads: usize,
    /// How DuckDB reads a lake on S3.
    pub duck_s3: DuckS3Input,
}

impl From<&ReportsConfig> for Limits {
    fn from(c: &ReportsConfig) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Limits {
            memory_bytes: c.memory_limit_mib * 1024 * 1024,
            threads: if c.threads == 0 { cores } else { c.threads },
            duck_s3: c.duckdb_s3_input,
        }
    }
}

/// Each message's first billable event in `w`'s look-back and day
/// (batches of [`crate::billed::message_schema`], sorted by client and
/// message), but none of a message `ledger` has; a delivered or read event
/// in one of `free` is not a billable event. The report decides which the
/// invoice bills (`billing::split`).
pub async fn billing_messages(
    kind: EngineKind,
    src: &Source,
    w: &Window,
    free: &[FreeSpan],
    ledger: &LedgerView,
    limits: Limits,
) -> Result<Vec<RecordBatch>, ReportError> {
    if src.snapshot_id.is_none() {
        return Ok(Vec::new());
    }
    match kind {
        EngineKind::DuckDb => duck::billing_messages(src, w, free, ledger, limits).await,
        EngineKind::DataFusion => fusion::billing_messages(src, w, free, ledger, limits).await,
    }
}

/// Sends the rows of `q` as batches (engine types: see
/// [`crate::detail::shape`]) into `tx`, in `event_time, event_id` order.
pub async fn detail(
    kind: EngineKind,
    src: &Source,
    q: &DetailQuery,
    limits: Limits,
    tx: mpsc::Sender<RecordBatch>,
) -> Result<(), ReportError> {
    if src.snapshot_id.is_none() {
        return Ok(());
    }
    match kind {
        EngineKind::DuckDb => duck::detail(src, q, limits, tx).await,
        EngineKind::DataFusion => fusion::detail(src, q, limits, tx).await,
    }
}

/// Whether `client` has any row in the snapshot (to tell an unknown
/// client from an empty range).
pub async fn client_exists(
    kind: EngineKind,
    src: &Source,
    client: &str,
    limits: Limits,
) -> Result<bool, ReportError> {
    if src.snapshot_id.is_none() {
        return Ok(false);
    }
    match kind {
        EngineKind::DuckDb => duck::client_exists(src, client, limits).await,
        EngineKind::DataFusion => fusion::client_exists(src, client, limits).await,
    }
}

/// The rows of `src`'s pinned snapshot with `event_time` before `before`
/// that reached the lake after snapshot `since`: those of the data files
/// `since` does not have (columns `cols` the snapshot's schema knows), as a
/// stream of batches; None when there are none, or `since` is None (no
/// invoice was issued: nothing can be late yet). A file compaction wrote
/// after `since` is read again although its rows are older: harmless (the
/// ledger has what was billed; a message is billed for its first billable
/// event), and few (compaction rewrites small files of a day). A `since`
/// that expired reads every file before `before` (slow, exact).
pub(crate) async fn arrivals(
    src: &Source,
    since: Option<i64>,
    before: i64,
    cols: &[&str],
) -> Result<Option<iceberg::scan::ArrowRecordBatchStream>, ReportError> {
    let (Some(id), Some(since)) = (src.snapshot_id, since) else {
        return Ok(None);
    };
    let pred = Reference::new("event_time").less_than(Datum::timestamptz_micros(before));
    let known: std::collections::HashSet<String> = if src
        .table
        .metadata()
        .snapshot_by_id(since)
        .is_some()
    {
        let then = Source {
            snapshot_id: Some(since),
            ..src.clone()
        };
        plan_files(&then, Some(pred.clone()))
            .await?
            .into_iter()
            .collect()
    } else {
        tracing::warn!(
            snapshot = since,
            "the last invoice's lake snapshot expired: reading every file before the look-back for late events"
        );
        Default::default()
    };
    let tasks: Vec<iceberg::scan::FileScanTask> = scan(src, id, pred, cols)?
        .plan_files()
        .await?
        .try_filter(|t| futures::future::ready(!known.contains(&t.data_file_path)))
        .try_collect()
        .await?;
    if tasks.is_empty() {
        return Ok(None);
    }
    let reader = iceberg::arrow::ArrowReaderBuilder::new(
        src.table.file_io().clone(),
        iceberg::Runtime::current(),
    )
    .build();
    let tasks: iceberg::scan::FileScanTaskStream =
        Box::pin(futures::stream::iter(tasks.into_iter().map(Ok)));
    Ok(Some(reader.read(tasks)?.stream()))
}

/// The scan of snapshot `id` of `src`'s table: the rows `pred` keeps, the
/// columns of `cols` that snapshot's schema has ([`known_columns`]).
pub(crate) fn scan(
    src: &Source,
    id: i64,
    pred: Predicate,
    cols: &[&str],
) -> Result<iceberg::scan::TableScan, ReportError> {
    Ok(src
        .table
        .scan()
        .snapshot_id(id)
        .with_filter(pred)
        .select(known_columns(src, cols))
        .build()?)
}

/// Those of `cols` that the pinned snapshot's schema has (a snapshot
/// committed before a column was added lacks it; engines add it as null).
fn known_columns<'a>(src: &Source, cols: &[&'a str]) -> Vec<&'a str> {
    let md = src.table.metadata();
    let schema = src
        .snapshot_id
        .and_then(|id| md.snapshot_by_id(id))
        .and_then(|s| s.schema_id())
        .and_then(|sid| md.schema_by_id(sid))
        .unwrap_or_else(|| md.current_schema());
    cols.iter()
        .copied()
        .filter(|c| schema.field_by_name(c).is_some())
        .collect()
}

/// The scan predicate of a time range (and a client).
pub(crate) fn range_predicate(from: i64, to: i64, client: Option<&str>) -> Predicate {
    let t = Reference::new("event_time");
    let mut p = t
        .clone()
        .greater_than_or_equal_to(Datum::timestamptz_micros(from))
        .and(t.less_than(Datum::timestamptz_micros(to)));
    if let Some(c) = client {
        p = p.and(Reference::new("client_id").equal_to(Datum::string(c)));
    }
    p
}

/// The data files of the pinned snapshot that the scan planning keeps for
/// `pred` (partition and column-metrics pruning), in a stable order.
pub(crate) async fn plan_files(
    src: &Source,
    pred: Option<Predicate>,
) -> Result<Vec<String>, ReportError> {
    let Some(id) = src.snapshot_id else {
        return Ok(Vec::new());
    };
    let mut b = src.table.scan().snapshot_id(id);
    if let Some(p) = pred {
        b = b.with_filter(p);
    }
    let tasks: Vec<_> = b.build()?.plan_files().await?.try_collect().await?;
    let mut files = Vec::with_capacity(tasks.len());
    for t in tasks {
        if !t.deletes.is_empty() {
            return Err(ReportError::Other(format!(
                "{} has delete files; notiflow's table is append-only",
                t.data_file_path
            )));
        }
        files.push(t.data_file_path);
    }
    files.sort();
    files.dedup();
    Ok(files)
}
