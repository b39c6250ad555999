//! DuckDB over the data files the Iceberg scan planning selects. Local
//! warehouse files are read in place; S3 files are first copied to a
//! temporary folder through opendal (4 at a time, streamed), because
//! DuckDB's `httpfs` and `iceberg` extensions cannot be installed offline.
//! DuckDB runs on a blocking thread with a memory limit and a spill folder;
//! detail rows stream out chunk by chunk through a bounded channel.

use std::path::PathBuf;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use duckdb::Connection;
use futures::{StreamExt, TryStreamExt};
use notiflow_schema::time::format_rfc3339;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::{Limits, Source, plan_files, range_predicate};
use crate::billing::{Count, Window};
use crate::detail::DetailQuery;
use crate::error::ReportError;

/// Files DuckDB can open, and the temporary folder holding copies.
struct LocalFiles {
    paths: Vec<String>,
    _copies: Option<tempfile::TempDir>,
}

/// Makes `urls` readable by DuckDB: local paths as they are, S3 objects
/// copied into a temporary folder.
async fn localise(src: &Source, urls: Vec<String>) -> Result<LocalFiles, ReportError> {
    if urls.iter().all(|u| !u.starts_with("s3://")) {
        let paths = urls
            .into_iter()
            .map(|u| u.strip_prefix("file://").map(str::to_string).unwrap_or(u))
            .collect();
        return Ok(LocalFiles {
            paths,
            _copies: None,
        });
    }
    let dir = tempfile::Builder::new()
        .prefix("notiflow-duck-")
        .tempdir()?;
    let root = dir.path().to_path_buf();
    let jobs = urls.into_iter().enumerate().map(|(i, url)| {
        let root = root.clone();
        let s3 = src.s3.clone();
        async move {
            let (op, _, base) = notiflow_lake::store::operator(&s3, &url)?;
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
    Ok(LocalFiles {
        paths: got.into_iter().map(|(_, p)| p).collect(),
        _copies: Some(dir),
    })
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn ts(t: i64) -> String {
    format!("TIMESTAMPTZ {}", quote(&format_rfc3339(t)))
}

fn files_list(paths: &[String]) -> String {
    let list: Vec<String> = paths.iter().map(|p| quote(p)).collect();
    format!("read_parquet([{}])", list.join(", "))
}

fn connect(limits: Limits, spill: &std::path::Path) -> Result<Connection, ReportError> {
    let conn = Connection::open_in_memory()?;
    conn.execute_batch(&format!(
        "SET memory_limit = '{}MB'; SET threads = {}; SET temp_directory = {}; SET preserve_insertion_order = true;",
        (limits.memory_bytes / (1024 * 1024)).max(64),
        limits.threads.max(1),
        quote(&spill.display().to_string()),
    ))?;
    Ok(conn)
}

/// Runs `sql` on a blocking thread, handing each result chunk to `each`.
async fn run<F>(limits: Limits, sql: String, mut each: F) -> Result<(), ReportError>
where
    F: FnMut(RecordBatch) -> Result<bool, ReportError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let spill = tempfile::Builder::new()
            .prefix("notiflow-spill-")
            .tempdir()?;
        let conn = connect(limits, spill.path())?;
        let mut stmt = conn.prepare(&sql)?;
        // Executes as a streaming result; `step` then fetches chunk by
        // chunk and reports fetch errors (the iterator would panic).
        drop(stmt.stream_arrow([])?);
        while let Some(chunk) = stmt.step()? {
            if !each(RecordBatch::from(&chunk))? {
                break;
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| ReportError::Other(format!("duckdb thread: {e}")))?
}

pub(super) async fn billing_counts(
    src: &Source,
    w: &Window,
    limits: Limits,
) -> Result<Vec<Count>, ReportError> {
    let urls = plan_files(src, Some(range_predicate(w.lookback_start, w.end, None))).await?;
    if urls.is_empty() {
        return Ok(Vec::new());
    }
    let files = localise(src, urls).await?;
    let sql = format!(
        "SELECT client_id, category, country, count(*)::BIGINT AS messages FROM (
           SELECT message_id, client_id, category, country, min(event_time) AS first_at
           FROM {src}
           WHERE status IN ('delivered', 'read') AND billable AND category <> 'service'
             AND event_time >= {lb} AND event_time < {end}
           GROUP BY message_id, client_id, category, country
         ) WHERE first_at >= {start}
         GROUP BY client_id, category, country",
        src = files_list(&files.paths),
        lb = ts(w.lookback_start),
        end = ts(w.end),
        start = ts(w.start),
    );
    let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = out.clone();
    run(limits, sql, move |b| {
        let (c, cat, co) = (
            b.column(0).as_string::<i32>(),
            b.column(1).as_string::<i32>(),
            b.column(2).as_string::<i32>(),
        );
        let n = b.column(3).as_primitive::<Int64Type>();
        let mut v = sink
            .lock()
            .map_err(|_| ReportError::Other("poisoned".into()))?;
        for i in 0..b.num_rows() {
            v.push(Count {
                client_id: c.value(i).to_string(),
                category: cat.value(i).to_string(),
                country: co.value(i).to_string(),
                messages: n.value(i).max(0) as u64,
            });
        }
        Ok(true)
    })
    .await?;
    drop(files);
    let v = std::mem::take(
        &mut *out
            .lock()
            .map_err(|_| ReportError::Other("poisoned".into()))?,
    );
    Ok(v)
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
    let list = |col: &str, vals: Vec<&str>| {
        let v: Vec<String> = vals.iter().map(|s| quote(s)).collect();
        format!("{col} IN ({})", v.join(", "))
    };
    if !q.statuses.is_empty() {
        w.push(list(
            "status",
            q.statuses.iter().map(|s| s.as_str()).collect(),
        ));
    }
    if !q.categories.is_empty() {
        w.push(list(
            "category",
            q.categories.iter().map(|s| s.as_str()).collect(),
        ));
    }
    if !q.countries.is_empty() {
        w.push(list(
            "country",
            q.countries.iter().map(|s| s.as_str()).collect(),
        ));
    }
    w.join(" AND ")
}

pub(super) async fn detail(
    src: &Source,
    q: &DetailQuery,
    limits: Limits,
    tx: mpsc::Sender<RecordBatch>,
) -> Result<(), ReportError> {
    let urls = plan_files(
        src,
        Some(range_predicate(q.from, q.to, q.client.as_deref())),
    )
    .await?;
    if urls.is_empty() {
        return Ok(());
    }
    let files = localise(src, urls).await?;
    let sql = format!(
        "SELECT event_id, message_id, client_id, recipient, status, category, billable, country,
                template, event_time, error_code, ingest_time, kafka_partition, kafka_offset
         FROM {} WHERE {} ORDER BY event_time, event_id",
        files_list(&files.paths),
        detail_where(q)
    );
    run(limits, sql, move |b| Ok(tx.blocking_send(b).is_ok())).await?;
    drop(files);
    Ok(())
}

pub(super) async fn client_exists(
    src: &Source,
    client: &str,
    limits: Limits,
) -> Result<bool, ReportError> {
    let pred =
        iceberg::expr::Reference::new("client_id").equal_to(iceberg::spec::Datum::string(client));
    let urls = plan_files(src, Some(pred)).await?;
    if urls.is_empty() {
        return Ok(false);
    }
    let files = localise(src, urls).await?;
    let sql = format!(
        "SELECT count(*)::BIGINT FROM (SELECT 1 FROM {} WHERE client_id = {} LIMIT 1)",
        files_list(&files.paths),
        quote(client)
    );
    let found = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = found.clone();
    run(limits, sql, move |b| {
        let n = b.column(0).as_primitive::<Int64Type>();
        if !n.is_empty() && n.value(0) > 0 {
            f.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(true)
    })
    .await?;
    drop(files);
    Ok(found.load(std::sync::atomic::Ordering::Relaxed))
}
