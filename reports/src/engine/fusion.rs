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

use super::{LedgerView, Limits, Source};
use crate::billing::{FreeSpan, Window};
use crate::detail::DetailQuery;
use crate::error::ReportError;

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
    // The ledger's messages are left out in the plan (an anti-join that
    // spills like the rest), never read into memory.
    let df = match ledger.src.as_ref().filter(|_| !ledger.is_empty()) {
        Some(l) => {
            let id = l.snapshot_id.unwrap_or_default();
            let provider =
                IcebergStaticTableProvider::try_new_from_table_snapshot(l.table.clone(), id)
                    .await?;
            ctx.register_table("ledger", Arc::new(provider))?;
            let runs: Vec<Expr> = ledger.runs.iter().map(|r| lit(r.as_str())).collect();
            let billed = ctx
                .table("ledger")
                .await?
                .filter(col("run").in_list(runs, false))?
                .select(vec![
                    col("client_id").alias("l_client"),
                    col("message_id").alias("l_message"),
                ])?;
            df.join(
                billed,
                datafusion::prelude::JoinType::LeftAnti,
                &["client_id", "message_id"],
                &["l_client", "l_message"],
                None,
            )?
        }
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
