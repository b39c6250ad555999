//! DuckDB over the rows the Iceberg scan planning selects. Local warehouse
//! files are read in place. A lake on S3 is read one of two ways
//! ([`DuckS3Input`]), because DuckDB's `httpfs` and `iceberg` extensions
//! cannot be installed offline: the planned files are copied to a temporary
//! folder through opendal (4 at a time, streamed), or the Arrow batches of
//! iceberg-rust's scan are appended to a DuckDB table. DuckDB runs on a
//! blocking thread with a memory limit and a spill folder; result rows
//! stream out chunk by chunk.

use std::path::PathBuf;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, Schema, TimeUnit};
use duckdb::Connection;
use futures::{StreamExt, TryStreamExt};
use iceberg::expr::Predicate;
use notiflow_schema::time::format_rfc3339;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{
    BILLING_COLUMNS, LedgerView, Limits, Source, arrivals, plan_files, range_predicate, scan,
};
use crate::billing::{FreeSpan, Window};
use crate::config::DuckS3Input;
use crate::detail::DetailQuery;
use crate::error::ReportError;

/// What DuckDB reads, readied on the async side.
struct Input {
    rows: Rows,
    /// The task feeding [`Rows::Batches`]; it reports scan errors.
    feeder: Option<JoinHandle<Result<(), ReportError>>>,
    /// Rows older than the look-back that reached the lake after the last
    /// invoice (a billing run's [`arrivals`]).
    late: Option<Late>,
}

/// A billing run's arrivals: staged as table `late`; the relation the SQL
/// reads is then `rows` from `from` on and `late` before it.
struct Late {
    rx: mpsc::Receiver<RecordBatch>,
    feeder: JoinHandle<Result<(), ReportError>>,
    /// Where the look-back starts.
    from: i64,
    /// The columns of both.
    cols: String,
}

/// Batches of `stream` through a channel, fed by a task that reports the
/// stream's error.
fn feed(
    mut stream: iceberg::scan::ArrowRecordBatchStream,
) -> (
    mpsc::Receiver<RecordBatch>,
    JoinHandle<Result<(), ReportError>>,
) {
    let (tx, rx) = mpsc::channel(4);
    let feeder = tokio::spawn(async move {
        while let Some(b) = stream.try_next().await? {
            if tx.send(b).await.is_err() {
                break;
            }
        }
        Ok(())
    });
    (rx, feeder)
}

enum Rows {
    /// Parquet files on local disk; `_copies` keeps copies of S3 objects
    /// until the query is done.
    Files {
        paths: Vec<String>,
        _copies: Option<tempfile::TempDir>,
    },
    /// The scan's batches, appended to table `ev` before the query.
    Batches(mpsc::Receiver<RecordBatch>),
    /// No file of the snapshot has rows for the query.
    Nothing,
}

/// Readies the rows of the pinned snapshot that `pred` keeps (columns
/// `cols`), or None when the scan planning keeps no file.
async fn input(
    src: &Source,
    pred: Predicate,
    cols: &[&str],
    limits: Limits,
) -> Result<Option<Input>, ReportError> {
    let on_s3 = src.table.metadata().location().starts_with("s3://");
    if on_s3 && limits.duck_s3 == DuckS3Input::Arrow {
        let Some(id) = src.snapshot_id else {
            return Ok(None);
        };
        // The scan plans the files itself (and filters rows); an empty
        // scan gives no batch, which the query takes as no rows. Columns
        // the snapshot's schema predates are added as nulls in DuckDB.
        let stream = scan(src, id, pred, cols)?.to_arrow().await?;
        let (rx, feeder) = feed(stream);
        return Ok(Some(Input {
            rows: Rows::Batches(rx),
            feeder: Some(feeder),
            late: None,
        }));
    }
    let urls = plan_files(src, Some(pred)).await?;
    if urls.is_empty() {
        return Ok(None);
    }
    files(src, urls).await.map(Some)
}

/// The data files `urls` of `src`'s table as DuckDB reads them: in place
/// on local disk, or copies of the S3 objects.
async fn files(src: &Source, urls: Vec<String>) -> Result<Input, ReportError> {
    if src.table.metadata().location().starts_with("s3://") {
        return copies(src, urls).await;
    }
    let paths = urls
        .into_iter()
        .map(|u| u.strip_prefix("file://").map(str::to_string).unwrap_or(u))
        .collect();
    Ok(Input {
        rows: Rows::Files {
            paths,
            _copies: None,
        },
        feeder: None,
        late: None,
    })
}

/// Copies the S3 objects `urls` into a temporary folder.
async fn copies(src: &Source, urls: Vec<String>) -> Result<Input, ReportError> {
    let dir = tempfile::Builder::new()
        .prefix("notiflow-duck-")
        .tempdir()?;
    let root = dir.path().to_path_buf();
    // Every data file lives under the table's location: one operator.
    let (op, _, base) = notiflow_lake::store::operator(&src.s3, src.table.metadata().location())?;
    let jobs = urls.into_iter().enumerate().map(|(i, url)| {
        let (op, base, root) = (op.clone(), base.clone(), root.clone());
        async move {
            let key = url
                .strip_prefix(&base)
                .ok_or_else(|| ReportError::Other(format!("{url} is not under {base}")))?;
            let local: PathBuf = root.join(format!("{i:06}.parquet"));
            let mut out = tokio::fs::File::create(&local).await?;
            let mut stream = op.reader(key).await?.into_bytes_stream(..).await?;
            while let Some(chunk) = stream.try_next().await? {
                out.write_all(&chunk).await?;
            }
            out.flush().await?;
            Ok::<_, ReportError>((i, local.display().to_string()))
        }
    });
    let mut got: Vec<(usize, String)> = futures::stream::iter(jobs)
        .buffer_unordered(4)
        .try_collect()
        .await?;
    got.sort();
    Ok(Input {
        rows: Rows::Files {
            paths: got.into_iter().map(|(_, p)| p).collect(),
            _copies: Some(dir),
        },
        feeder: None,
        late: None,
    })
}

/// The DuckDB column type of an Arrow field of the lake's schema.
fn column_type(t: &DataType) -> Result<&'static str, ReportError> {
    Ok(match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR",
        DataType::Boolean => "BOOLEAN",
        DataType::Int32 => "INTEGER",
        DataType::Int64 => "BIGINT",
        DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => "TIMESTAMPTZ",
        DataType::Timestamp(TimeUnit::Microsecond, None) => "TIMESTAMP",
        other => {
            return Err(ReportError::Other(format!(
                "no DuckDB column type for the scan's {other}"
            )));
        }
    })
}

/// Appends every batch of `rx` to a new table `name`; false when the scan
/// gave no batch.
fn stage(
    conn: &Connection,
    name: &str,
    rx: &mut mpsc::Receiver<RecordBatch>,
) -> Result<bool, ReportError> {
    let Some(first) = rx.blocking_recv() else {
        return Ok(false);
    };
    let schema: &Schema = &first.schema();
    let cols = schema
        .fields()
        .iter()
        .map(|f| Ok(format!("\"{}\" {}", f.name(), column_type(f.data_type())?)))
        .collect::<Result<Vec<_>, ReportError>>()?;
    conn.execute_batch(&format!("CREATE TABLE {name} ({})", cols.join(", ")))?;
    let mut app = conn.appender(name)?;
    app.append_record_batch(first)?;
    while let Some(b) = rx.blocking_recv() {
        app.append_record_batch(b)?;
    }
    app.flush()?;
    Ok(true)
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn ts(t: i64) -> String {
    format!("TIMESTAMPTZ {}", quote(&format_rfc3339(t)))
}

fn files_list(paths: &[String]) -> String {
    let list: Vec<String> = paths.iter().map(|p| quote(p)).collect();
    // By name: files written before a column was added lack it (null).
    format!("read_parquet([{}], union_by_name = true)", list.join(", "))
}

/// `relation` with the columns added to the lake after some of its files
/// were written (`pricing_type`) as nulls when none of its files has them
/// (`union_by_name` gives nulls only for a column some file has).
fn with_added_columns(conn: &Connection, relation: String) -> Result<String, ReportError> {
    let has: i64 = conn.query_row(
        &format!(
            "SELECT count(*) FROM (DESCRIBE SELECT * FROM {relation}) WHERE column_name = 'pricing_type'"
        ),
        [],
        |r| r.get(0),
    )?;
    Ok(if has > 0 {
        relation
    } else {
        format!("(SELECT *, CAST(NULL AS VARCHAR) AS pricing_type FROM {relation})")
    })
}

fn connect(limits: Limits, spill: &std::path::Path) -> Result<Connection, ReportError> {
    let conn = Connection::open_in_memory()?;
    conn.execute_batch(&format!(
        "SET memory_limit = '{}MB'; SET threads = {}; SET temp_directory = {}; SET preserve_insertion_order = false;",
        (limits.memory_bytes / (1024 * 1024)).max(64),
        limits.threads.max(1),
        quote(&spill.display().to_string()),
    ))?;
    // The official prebuilt library has ICU built in, and with it a
    // `TimeZone` setting that defaults to the process's zone: TIMESTAMPTZ
    // results (and the files made of them) would then depend on the host's
    // TZ. Pinned to UTC where the setting exists; without ICU (the bundled
    // build) DuckDB's timestamps are UTC already.
    let has_zone: i64 = conn.query_row(
        "SELECT count(*) FROM duckdb_settings() WHERE name = 'TimeZone'",
        [],
        |r| r.get(0),
    )?;
    if has_zone > 0 {
        conn.execute_batch("SET TimeZone = 'UTC';")?;
    }
    Ok(conn)
}

/// Runs the SQL that `sql` makes of the input relation on a blocking
/// thread, folding each result chunk into `acc` until `each` says stop;
/// the accumulator (untouched when the input has no rows).
async fn query<T, S, F>(
    limits: Limits,
    input: Input,
    sql: S,
    mut acc: T,
    mut each: F,
) -> Result<T, ReportError>
where
    T: Send + 'static,
    S: FnOnce(&str) -> String + Send + 'static,
    F: FnMut(&mut T, RecordBatch) -> Result<bool, ReportError> + Send + 'static,
{
    let Input {
        mut rows,
        feeder,
        late,
    } = input;
    let (late, late_feeder) = match late {
        Some(Late {
            rx,
            feeder,
            from,
            cols,
        }) => (Some((rx, from, cols)), Some(feeder)),
        None => (None, None),
    };
    let ran = tokio::task::spawn_blocking(move || {
        let spill = tempfile::Builder::new()
            .prefix("notiflow-spill-")
            .tempdir()?;
        let conn = connect(limits, spill.path())?;
        let main = match &mut rows {
            Rows::Files { paths, .. } => Some(with_added_columns(&conn, files_list(paths))?),
            Rows::Batches(rx) => match stage(&conn, "ev", rx)? {
                true => Some(with_added_columns(&conn, "ev".to_string())?),
                false => None,
            },
            Rows::Nothing => None,
        };
        let relation = match (main, late) {
            (None, None) => return Ok(acc),
            (Some(m), None) => m,
            (main, Some((mut rx, from, cols))) => {
                let late = match stage(&conn, "late", &mut rx)? {
                    true => Some(with_added_columns(&conn, "late".to_string())?),
                    false => None,
                };
                let from = ts(from);
                let parts: Vec<String> = main
                    .map(|m| format!("SELECT {cols} FROM {m} WHERE event_time >= {from}"))
                    .into_iter()
                    .chain(
                        late.map(|l| format!("SELECT {cols} FROM {l} WHERE event_time < {from}")),
                    )
                    .collect();
                if parts.is_empty() {
                    return Ok(acc);
                }
                format!("({})", parts.join(" UNION ALL "))
            }
        };
        let mut stmt = conn.prepare(&sql(&relation))?;
        // Executes as a streaming result; `step` then fetches chunk by
        // chunk and reports fetch errors (the iterator would panic).
        drop(stmt.stream_arrow([])?);
        while let Some(chunk) = stmt.step()? {
            if !each(&mut acc, RecordBatch::from(&chunk))? {
                break;
            }
        }
        drop(rows);
        Ok(acc)
    })
    .await
    .map_err(|e| ReportError::Other(format!("duckdb thread: {e}")))?;
    // A failed scan ends the batches early: its error wins over the result.
    for f in feeder.into_iter().chain(late_feeder) {
        f.await
            .map_err(|e| ReportError::Other(format!("iceberg scan task: {e}")))??;
    }
    ran
}

/// The SQL condition of a billable event: delivered or read, `billable`,
/// and not in one of the card's free spans.
fn billable_sql(free: &[FreeSpan]) -> String {
    let mut sql = String::from("status IN ('delivered', 'read') AND billable");
    for f in free {
        let mut span = vec!["TRUE".to_string()];
        if let Some(c) = &f.category {
            span.push(format!("category = {}", quote(c)));
        }
        if let Some(p) = &f.pricing_type {
            span.push(format!("coalesce(pricing_type, 'regular') = {}", quote(p)));
        }
        if let Some(t) = f.from {
            span.push(format!("event_time >= {}", ts(t)));
        }
        if let Some(t) = f.to {
            span.push(format!("event_time < {}", ts(t)));
        }
        sql.push_str(&format!(" AND NOT ({})", span.join(" AND ")));
    }
    sql
}

/// The ledger's and the holds' data files as a DuckDB relation of the
/// (client, message) of rows that count (local files, or copies of S3
/// objects that live as long as the returned inputs); None when there are
/// none. Messages held for the run's own day count as not billed.
async fn ledger_relation(ledger: &LedgerView) -> Result<Option<(String, Vec<Input>)>, ReportError> {
    if ledger.is_empty() {
        return Ok(None);
    }
    let runs: Vec<String> = ledger.runs.iter().map(|r| quote(r)).collect();
    let runs = runs.join(", ");
    let day = quote(&ledger.day.to_string());
    let tables = [
        (ledger.src.as_ref(), format!("run IN ({runs})")),
        (
            ledger.holds.as_ref(),
            format!("run IN ({runs}) AND billing_day <> DATE {day}"),
        ),
    ];
    let mut rels = Vec::new();
    let mut inputs = Vec::new();
    for (src, cond) in tables {
        let Some(src) = src.filter(|s| s.snapshot_id.is_some()) else {
            continue;
        };
        let urls = plan_files(src, None).await?;
        if urls.is_empty() {
            continue;
        }
        let input = files(src, urls).await?;
        if let Rows::Files { paths, .. } = &input.rows {
            rels.push(format!(
                "SELECT client_id, message_id FROM {} WHERE {cond}",
                files_list(paths)
            ));
        }
        inputs.push(input);
    }
    if rels.is_empty() {
        return Ok(None);
    }
    Ok(Some((format!("({})", rels.join(" UNION ALL ")), inputs)))
}

pub(super) async fn billing_messages(
    src: &Source,
    w: &Window,
    free: &[FreeSpan],
    ledger: &LedgerView,
    limits: Limits,
) -> Result<Vec<RecordBatch>, ReportError> {
    let pred = range_predicate(w.lookback_start, w.end, None);
    // The look-back's rows, and older ones that reached the lake after
    // the last invoice (`Late`: the relation is those two, so each
    // message's first billable event is found over both).
    let late = arrivals(src, ledger.since, w.lookback_start, &BILLING_COLUMNS).await?;
    let mut input = match (input(src, pred, &BILLING_COLUMNS, limits).await?, &late) {
        (Some(i), _) => i,
        (None, Some(_)) => Input {
            rows: Rows::Nothing,
            feeder: None,
            late: None,
        },
        (None, None) => return Ok(Vec::new()),
    };
    let (rx, feeder) = match late {
        Some(stream) => feed(stream),
        None => (mpsc::channel(1).1, tokio::spawn(async { Ok(()) })),
    };
    input.late = Some(Late {
        rx,
        feeder,
        from: w.lookback_start,
        cols: BILLING_COLUMNS.join(", "),
    });
    // The ledger's messages are left out in the query (an anti-join that
    // spills like the rest), never read into memory.
    // Its copies (S3) live until the query is done.
    let (ledger_rel, _ledger_files) = match ledger_relation(ledger).await? {
        Some((rel, files)) => (Some(rel), Some(files)),
        None => (None, None),
    };
    let end = ts(w.end);
    // Each message's first billable event in the look-back and the day,
    // or among the arrivals (earliest `event_time`, ties by `event_id`):
    // it names the category
    // and country, whatever its later events say, and decides the day the
    // message belongs to (the report keeps those of the day and late ones
    // of issued days, against the ledger). A message is (client, message
    // id): two clients may use the same id.
    let billable = billable_sql(free);
    let sql = move |rel: &str| {
        let anti = ledger_rel.map_or_else(String::new, |l| {
            format!("ANTI JOIN {l} l ON m.client_id = l.client_id AND m.message_id = l.message_id")
        });
        format!(
            "SELECT m.client_id, m.message_id, m.f.category, m.f.country, m.f.id, m.f.t FROM (
               SELECT client_id, message_id,
                      arg_min({{'category': category, 'country': country,
                                't': event_time, 'id': event_id}},
                              {{'t': event_time, 'id': event_id}}) AS f
               FROM {rel}
               WHERE {billable} AND event_time < {end}
               GROUP BY client_id, message_id
             ) m {anti}
             ORDER BY m.client_id, m.message_id"
        )
    };
    query(limits, input, sql, Vec::new(), |v, b| {
        v.push(crate::billed::conform(&b)?);
        Ok(true)
    })
    .await
}

/// The SQL `WHERE` clause of a detail query (values are validated enums,
/// codes and client ids, quoted all the same).
fn detail_where(q: &DetailQuery) -> String {
    let mut w = vec![
        format!("event_time >= {}", ts(q.from)),
        format!("event_time < {}", ts(q.to)),
    ];
    if let Some(c) = &q.client {
        w.push(format!("client_id = {}", quote(c)));
    }
    for (col, vals) in q.in_lists() {
        let v: Vec<String> = vals.iter().map(|s| quote(s)).collect();
        w.push(format!("{col} IN ({})", v.join(", ")));
    }
    w.join(" AND ")
}

pub(super) async fn detail(
    src: &Source,
    q: &DetailQuery,
    limits: Limits,
    tx: mpsc::Sender<RecordBatch>,
) -> Result<(), ReportError> {
    let pred = range_predicate(q.from, q.to, q.client.as_deref());
    let columns = crate::detail::columns();
    let names: Vec<&str> = columns.iter().map(String::as_str).collect();
    let Some(input) = input(src, pred, &names, limits).await? else {
        return Ok(());
    };
    let filter = detail_where(q);
    let list = names.join(", ");
    let sql = move |rel: &str| {
        format!("SELECT {list} FROM {rel} WHERE {filter} ORDER BY event_time, event_id")
    };
    query(limits, input, sql, (), move |_, b| {
        Ok(tx.blocking_send(b).is_ok())
    })
    .await
}

pub(super) async fn client_exists(
    src: &Source,
    client: &str,
    limits: Limits,
) -> Result<bool, ReportError> {
    let pred =
        iceberg::expr::Reference::new("client_id").equal_to(iceberg::spec::Datum::string(client));
    let Some(input) = input(src, pred, &["client_id"], limits).await? else {
        return Ok(false);
    };
    let client = quote(client);
    let sql = move |rel: &str| {
        format!(
            "SELECT count(*)::BIGINT FROM (SELECT 1 FROM {rel} WHERE client_id = {client} LIMIT 1)"
        )
    };
    query(limits, input, sql, false, |found, b| {
        let n = b.column(0).as_primitive::<Int64Type>();
        *found |= (0..n.len()).any(|i| n.value(i) > 0);
        Ok(true)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lake_schema_maps_to_duckdb_columns_and_other_types_are_refused() {
        let table = notiflow_lake::rows::table_schema().unwrap();
        let lake = notiflow_lake::rows::arrow_schema(&table).unwrap();
        for f in lake.fields() {
            assert!(column_type(f.data_type()).is_ok(), "{}", f.name());
        }
        assert_eq!(
            column_type(&DataType::Timestamp(
                TimeUnit::Microsecond,
                Some("+00:00".into())
            ))
            .unwrap(),
            "TIMESTAMPTZ"
        );
        assert!(column_type(&DataType::Float64).is_err());
    }
}
