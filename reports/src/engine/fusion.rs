//! DataFusion through iceberg-datafusion's static table provider pinned to
//! the snapshot: filters are pushed into the Iceberg scan (partition and
//! metrics pruning), the plan spills to disk beyond the memory limit, and
//! detail rows stream out batch by batch.

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::functions_aggregate::expr_fn::{first_value, min};
use datafusion::prelude::{DataFrame, Expr, SessionConfig, SessionContext, col, lit};
use futures::StreamExt;
use iceberg_datafusion::IcebergStaticTableProvider;
use tokio::sync::mpsc;

use super::{BILLING_COLUMNS, LedgerView, Limits, Source, arrivals};

use crate::billing::{FreeSpan, Window};
use crate::detail::DetailQuery;
use crate::error::ReportError;

/// A stream of the lake's batches as a table of `ctx` with `schema` (the
/// scan's columns, types and field metadata, so the two unite; a column
/// the batches lack, `pricing_type` of an older schema, is null), read
/// once as the plan runs, never collected; None when the stream has no
/// batch.
async fn late_rows(
    ctx: &SessionContext,
    mut stream: iceberg::scan::ArrowRecordBatchStream,
    schema: arrow::datatypes::SchemaRef,
) -> Result<Option<DataFrame>, ReportError> {
    use datafusion::catalog::streaming::StreamingTable;
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
    use datafusion::physical_plan::streaming::PartitionStream;
    use futures::TryStreamExt;

    struct Once {
        schema: arrow::datatypes::SchemaRef,
        rows: std::sync::Mutex<Option<iceberg::scan::ArrowRecordBatchStream>>,
    }
    impl std::fmt::Debug for Once {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("arrivals")
        }
    }
    impl PartitionStream for Once {
        fn schema(&self) -> &arrow::datatypes::SchemaRef {
            &self.schema
        }
        fn execute(
            &self,
            _: Arc<datafusion::execution::TaskContext>,
        ) -> datafusion::execution::SendableRecordBatchStream {
            let rows = self.rows.lock().ok().and_then(|mut r| r.take());
            let rows = rows.map_or_else(
                || {
                    futures::stream::empty::<
                            Result<RecordBatch, datafusion::error::DataFusionError>,
                        >()
                        .boxed()
                },
                |s| {
                    s.map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
                        .boxed()
                },
            );
            Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), rows))
        }
    }

    let Some(first) = stream.try_next().await? else {
        return Ok(None);
    };
    let conform = {
        let schema = schema.clone();
        move |b: RecordBatch| -> iceberg::Result<RecordBatch> {
            let err = |e: arrow::error::ArrowError| {
                iceberg::Error::new(iceberg::ErrorKind::Unexpected, e.to_string())
            };
            let cols = schema
                .fields()
                .iter()
                .map(|f| match b.column_by_name(f.name()) {
                    Some(c) => arrow::compute::cast(c, f.data_type()).map_err(err),
                    None => Ok(arrow::array::new_null_array(f.data_type(), b.num_rows())),
                })
                .collect::<iceberg::Result<Vec<_>>>()?;
            RecordBatch::try_new(schema.clone(), cols).map_err(err)
        }
    };
    let rows: iceberg::scan::ArrowRecordBatchStream = futures::stream::once(async { Ok(first) })
        .chain(stream)
        .and_then(move |b| futures::future::ready(conform(b)))
        .boxed();
    let table = StreamingTable::try_new(
        schema.clone(),
        vec![Arc::new(Once {
            schema,
            rows: std::sync::Mutex::new(Some(rows)),
        })],
    )?;
    Ok(Some(ctx.read_table(Arc::new(table))?))
}

fn context(limits: Limits) -> Result<SessionContext, ReportError> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(limits.memory_bytes as usize, 1.0)
        .build_arc()?;
    let config = SessionConfig::new()
        .with_target_partitions(limits.threads.max(1))
        .with_batch_size(8192);
    Ok(SessionContext::new_with_config_rt(config, runtime))
}

async fn events(src: &Source, limits: Limits) -> Result<DataFrame, ReportError> {
    events_in(&context(limits)?, src).await
}

async fn events_in(ctx: &SessionContext, src: &Source) -> Result<DataFrame, ReportError> {
    let id = src
        .snapshot_id
        .ok_or_else(|| ReportError::Other("no snapshot".into()))?;
    let provider =
        IcebergStaticTableProvider::try_new_from_table_snapshot(src.table.clone(), id).await?;
    ctx.register_table("events", Arc::new(provider))?;
    let df = ctx.table("events").await?;
    // A snapshot committed before `pricing_type` was added has the older
    // schema: its rows have no pricing type (null, read as `regular`).
    if df.schema().has_column_with_unqualified_name("pricing_type") {
        Ok(df)
    } else {
        Ok(df.with_column("pricing_type", lit(ScalarValue::Utf8(None)))?)
    }
}

fn ts(t: i64) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(
        Some(t),
        Some("+00:00".into()),
    ))
}

/// A billable event: delivered or read, `billable`, and not in one of the
/// card's free spans.
fn billable(free: &[FreeSpan]) -> Expr {
    let mut e = col("status")
        .in_list(vec![lit("delivered"), lit("read")], false)
        .and(col("billable").eq(lit(true)));
    for f in free {
        let mut span = lit(true);
        if let Some(c) = &f.category {
            span = span.and(col("category").eq(lit(c.as_str())));
        }
        if let Some(p) = &f.pricing_type {
            let pt =
                datafusion::functions::expr_fn::coalesce(vec![col("pricing_type"), lit("regular")]);
            span = span.and(pt.eq(lit(p.as_str())));
        }
        if let Some(t) = f.from {
            span = span.and(col("event_time").gt_eq(ts(t)));
        }
        if let Some(t) = f.to {
            span = span.and(col("event_time").lt(ts(t)));
        }
        e = e.and(!span);
    }
    e
}

/// The (client, message) of the ledger's rows that count, and of the
/// held rows that count (not those held for the run's own day), as
/// `l_client`, `l_message`; None when none can.
async fn counted(
    ctx: &SessionContext,
    ledger: &LedgerView,
) -> Result<Option<DataFrame>, ReportError> {
    if ledger.is_empty() {
        return Ok(None);
    }
    let runs: Vec<Expr> = ledger.runs.iter().map(|r| lit(r.as_str())).collect();
    let day = lit(ScalarValue::Date32(Some(
        (ledger.day - chrono::NaiveDate::default()).num_days() as i32,
    )));
    let mut out: Option<DataFrame> = None;
    for (name, src, held) in [
        ("ledger", &ledger.src, false),
        ("holds", &ledger.holds, true),
    ] {
        let Some((src, id)) = src.as_ref().and_then(|s| s.snapshot_id.map(|id| (s, id))) else {
            continue;
        };
        let provider =
            IcebergStaticTableProvider::try_new_from_table_snapshot(src.table.clone(), id).await?;
        ctx.register_table(name, Arc::new(provider))?;
        let mut keep = col("run").in_list(runs.clone(), false);
        if held {
            keep = keep.and(col("billing_day").not_eq(day.clone()));
        }
        let rows = ctx.table(name).await?.filter(keep)?.select(vec![
            col("client_id").alias("l_client"),
            col("message_id").alias("l_message"),
        ])?;
        out = Some(match out {
            Some(o) => o.union(rows)?,
            None => rows,
        });
    }
    Ok(out)
}

pub(super) async fn billing_messages(
    src: &Source,
    w: &Window,
    free: &[FreeSpan],
    ledger: &LedgerView,
    limits: Limits,
) -> Result<Vec<RecordBatch>, ReportError> {
    // Each message's (client, message id: two clients may use one id)
    // first billable event in the look-back and the day (earliest
    // `event_time`, ties by `event_id`): it names the category and country
    // and decides the day the message belongs to (the report keeps those
    // of the day and late ones of issued days, against the ledger).
    let first = || {
        vec![
            col("event_time").sort(true, false),
            col("event_id").sort(true, false),
        ]
    };
    let ctx = context(limits)?;
    let df = events_in(&ctx, src)
        .await?
        .filter(
            col("event_time")
                .gt_eq(ts(w.lookback_start))
                .and(col("event_time").lt(ts(w.end)))
                .and(billable(free)),
        )?
        .select_columns(&BILLING_COLUMNS)?;
    // Older rows that reached the lake after the last invoice, read with
    // the look-back's: each message's first billable event is found over
    // both.
    let df = match arrivals(src, ledger.since, w.lookback_start, &BILLING_COLUMNS).await? {
        Some(stream) => {
            let schema = Arc::new(df.schema().as_arrow().clone());
            match late_rows(&ctx, stream, schema).await? {
                Some(late) => df.union(
                    late.filter(
                        col("event_time")
                            .lt(ts(w.lookback_start))
                            .and(billable(free)),
                    )?,
                )?,
                None => df,
            }
        }
        None => df,
    };
    let df = df
        .aggregate(
            vec![col("client_id"), col("message_id")],
            vec![
                min(col("event_time")).alias("first_at"),
                first_value(col("category"), first()).alias("category"),
                first_value(col("country"), first()).alias("country"),
                first_value(col("event_id"), first()).alias("first_event_id"),
            ],
        )?
        .select_columns(&[
            "client_id",
            "message_id",
            "category",
            "country",
            "first_event_id",
            "first_at",
        ])?;
    // The ledger's messages, and those held for another day, are left out
    // in the plan (an anti-join that spills like the rest), never read
    // into memory.
    let df = match counted(&ctx, ledger).await? {
        Some(billed) => df.join(
            billed,
            datafusion::prelude::JoinType::LeftAnti,
            &["client_id", "message_id"],
            &["l_client", "l_message"],
            None,
        )?,
        None => df,
    };
    let df = df.sort(vec![
        col("client_id").sort(true, false),
        col("message_id").sort(true, false),
    ])?;
    df.collect()
        .await?
        .iter()
        .map(crate::billed::conform)
        .collect()
}

fn detail_filter(q: &DetailQuery) -> Expr {
    let mut e = col("event_time")
        .gt_eq(ts(q.from))
        .and(col("event_time").lt(ts(q.to)));
    if let Some(c) = &q.client {
        e = e.and(col("client_id").eq(lit(c.as_str())));
    }
    for (name, vals) in q.in_lists() {
        e = e.and(col(name).in_list(vals.into_iter().map(lit).collect(), false));
    }
    e
}

pub(super) async fn detail(
    src: &Source,
    q: &DetailQuery,
    limits: Limits,
    tx: mpsc::Sender<RecordBatch>,
) -> Result<(), ReportError> {
    let columns = crate::detail::columns();
    let names: Vec<&str> = columns.iter().map(String::as_str).collect();
    let df = events(src, limits)
        .await?
        .filter(detail_filter(q))?
        .sort(vec![
            col("event_time").sort(true, false),
            col("event_id").sort(true, false),
        ])?
        .select_columns(&names)?;
    let mut stream = df.execute_stream().await?;
    while let Some(b) = stream.next().await {
        if tx.send(b?).await.is_err() {
            break;
        }
    }
    Ok(())
}

pub(super) async fn client_exists(
    src: &Source,
    client: &str,
    limits: Limits,
) -> Result<bool, ReportError> {
    let rows = events(src, limits)
        .await?
        .filter(col("client_id").eq(lit(client)))?
        .select_columns(&["client_id"])?
        .limit(0, Some(1))?
        .collect()
        .await?;
    Ok(rows.iter().any(|b| b.num_rows() > 0))
}
