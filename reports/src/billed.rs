//! The billed-messages ledger: every message an issued invoice billed, one
//! row each, in an Iceberg table of the lake's namespace
//! (`billed_messages`, partitioned by billing day).
//!
//! A billing run appends the messages it bills, tagged with its run id,
//! after its files and before it issues the day (`invoices`): so every
//! issued invoice's messages are in the ledger. A run that is then refused
//! (another run issued the day first) leaves rows of a run that is not
//! issued: the ledger's readers count only rows of issued runs. It is what
//! tells, for a dispute, which invoice billed a message, and what every
//! run bills against (a message is billed once, ever).
//!
//! Beside it, `billing_holds` (the same columns) keeps the messages a run
//! found but left for another day's run or a correction: those whose
//! first billable event lies on an issued day that takes no late lines,
//! or before the run's look-back (it reached the lake late). Without the
//! hold, a later run that no longer sees that first event would bill the
//! message on the day of a later event. Every run but one of the held day
//! leaves held messages out like billed ones.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Date32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use arrow::datatypes::{Date32Type, TimestampMicrosecondType};
use chrono::NaiveDate;
use futures::TryStreamExt;
use iceberg::spec::{
    NestedField, NullOrder, PrimitiveType, Schema, SortDirection, SortField, SortOrder, Transform,
    Type, UnboundPartitionSpec,
};
use notiflow_lake::files::{FileOptions, RoundFiles};
use notiflow_lake::table::{Change, Layout, new_snapshot_id, stage};
use notiflow_lake::{Lake, LakeConfig};

use crate::error::ReportError;

/// The ledger's table, in the lake's namespace.
pub const TABLE: &str = "billed_messages";

/// The held messages' table, in the lake's namespace.
pub const HOLDS: &str = "billing_holds";

/// Summary property of an append: the run whose messages it holds.
pub const RUN_PROP: &str = "notiflow.billing-run";

mod field {
    pub const CLIENT_ID: i32 = 1;
    pub const MESSAGE_ID: i32 = 2;
    pub const BILLING_DAY: i32 = 3;
    pub const CATEGORY: i32 = 4;
    pub const COUNTRY: i32 = 5;
    pub const FIRST_EVENT_ID: i32 = 6;
    pub const FIRST_EVENT_TIME: i32 = 7;
    pub const RUN: i32 = 8;
}

fn layout() -> Result<Layout, ReportError> {
    use PrimitiveType as P;
    let req = |id, name: &str, t| Arc::new(NestedField::required(id, name, Type::Primitive(t)));
    let schema = Schema::builder()
        .with_schema_id(0)
        .with_fields([
            req(field::CLIENT_ID, "client_id", P::String),
            req(field::MESSAGE_ID, "message_id", P::String),
            req(field::BILLING_DAY, "billing_day", P::Date),
            req(field::CATEGORY, "category", P::String),
            req(field::COUNTRY, "country", P::String),
            req(field::FIRST_EVENT_ID, "first_event_id", P::String),
            req(field::FIRST_EVENT_TIME, "first_event_time", P::Timestamptz),
            req(field::RUN, "run", P::String),
        ])
        .build()?;
    let spec = UnboundPartitionSpec::builder()
        .with_spec_id(0)
        .add_partition_field(field::BILLING_DAY, "billing_day", Transform::Identity)?
        .build();
    let asc = |id| SortField {
        source_id: id,
        transform: Transform::Identity,
        direction: SortDirection::Ascending,
        null_order: NullOrder::First,
    };
    let sort = SortOrder::builder()
        .with_order_id(1)
        .with_sort_field(asc(field::CLIENT_ID))
        .with_sort_field(asc(field::MESSAGE_ID))
        .build_unbound()
        .unwrap_or_else(|_| SortOrder::unsorted_order());
    Ok(Layout { schema, spec, sort })
}

/// The columns an engine gives per billed message, in this order: client,
/// message, the first billable event's category and country, its id and
/// its time (UTC micros).
pub fn message_schema() -> SchemaRef {
    Arc::new(arrow::datatypes::Schema::new(vec![
        Field::new("client_id", DataType::Utf8, false),
        Field::new("message_id", DataType::Utf8, false),
        Field::new("category", DataType::Utf8, false),
        Field::new("country", DataType::Utf8, false),
        Field::new("first_event_id", DataType::Utf8, false),
        Field::new(
            "first_event_time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            false,
        ),
    ]))
}

/// An engine's batch cast to [`message_schema`] (engines give other string
/// and timestamp types).
pub fn conform(b: &RecordBatch) -> Result<RecordBatch, ReportError> {
    let schema = message_schema();
    let cols = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| Ok(arrow::compute::cast(b.column(i), f.data_type())?))
        .collect::<Result<Vec<ArrayRef>, ReportError>>()?;
    Ok(RecordBatch::try_new(schema, cols)?)
}

/// One billed message, as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BilledMessage {
    /// Tenant.
    pub client_id: String,
    /// Message.
    pub message_id: String,
    /// The day it was billed on.
    pub billing_day: NaiveDate,
    /// Its first billable event's category.
    pub category: String,
    /// … and country.
    pub country: String,
    /// That event's id.
    pub first_event_id: String,
    /// … and time, UTC micros.
    pub first_event_time: i64,
    /// The run that billed it.
    pub run: String,
}

/// The ledger, and the held messages.
pub struct Billed {
    lake: Lake,
    holds: Lake,
    opts: FileOptions,
}

impl Billed {
    /// Opens (and creates) the ledger's tables in the lake's catalog.
    pub async fn open(cfg: &LakeConfig) -> Result<Billed, ReportError> {
        Ok(Billed {
            lake: Lake::open_table(cfg, TABLE, layout()?).await?,
            holds: Lake::open_table(cfg, HOLDS, layout()?).await?,
            opts: FileOptions::from(cfg),
        })
    }

    /// The ledger's table (its readers: disputes, and every billing run).
    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// The held messages' table.
    pub fn holds(&self) -> &Lake {
        &self.holds
    }

    /// The billed rows whose `client_id` and `message_id` pass `keep` (a
    /// dispute's lookup; reads the whole table).
    pub async fn find(
        &self,
        keep: impl Fn(&str, &str) -> bool,
    ) -> Result<Vec<BilledMessage>, ReportError> {
        read(&self.lake, keep).await
    }

    /// The held rows whose `client_id` and `message_id` pass `keep` (`run`
    /// is the run that held them, `billing_day` the day they belong to).
    pub async fn held(
        &self,
        keep: impl Fn(&str, &str) -> bool,
    ) -> Result<Vec<BilledMessage>, ReportError> {
        read(&self.holds, keep).await
    }

    /// Appends `rows` (per billing day, batches of [`message_schema`]) as
    /// billed by `run`, and `held` as held by it, each in one snapshot;
    /// nothing when there are none.
    pub async fn append(
        &self,
        run: &str,
        rows: &[(NaiveDate, RecordBatch)],
        held: &[(NaiveDate, RecordBatch)],
    ) -> Result<(), ReportError> {
        append(&self.lake, self.opts, run, rows).await?;
        append(&self.holds, self.opts, run, held).await
    }
}

/// The rows of `lake` (a table of [`layout`]) whose `client_id` and
/// `message_id` pass `keep`.
async fn read(
    lake: &Lake,
    keep: impl Fn(&str, &str) -> bool,
) -> Result<Vec<BilledMessage>, ReportError> {
    let table = lake.load().await?;
    if table.metadata().current_snapshot().is_none() {
        return Ok(Vec::new());
    }
    let batches: Vec<RecordBatch> = table
        .scan()
        .build()?
        .to_arrow()
        .await?
        .try_collect()
        .await?;
    let mut out = Vec::new();
    for b in &batches {
        let text = |name: &str| {
            b.column_by_name(name)
                .map(|c| c.as_string::<i32>().clone())
                .ok_or_else(|| ReportError::Other(format!("ledger: no column {name}")))
        };
        let (client, message, category, country, first, run) = (
            text("client_id")?,
            text("message_id")?,
            text("category")?,
            text("country")?,
            text("first_event_id")?,
            text("run")?,
        );
        let day = b
            .column_by_name("billing_day")
            .map(|c| c.as_primitive::<Date32Type>().clone())
            .ok_or_else(|| ReportError::Other("ledger: no billing_day".into()))?;
        let at = b
            .column_by_name("first_event_time")
            .map(|c| c.as_primitive::<TimestampMicrosecondType>().clone())
            .ok_or_else(|| ReportError::Other("ledger: no first_event_time".into()))?;
        for i in 0..b.num_rows() {
            if !keep(client.value(i), message.value(i)) {
                continue;
            }
            out.push(BilledMessage {
                client_id: client.value(i).to_string(),
                message_id: message.value(i).to_string(),
                billing_day: NaiveDate::default()
                    + chrono::Days::new(u64::try_from(day.value(i)).unwrap_or(0)),
                category: category.value(i).to_string(),
                country: country.value(i).to_string(),
                first_event_id: first.value(i).to_string(),
                first_event_time: at.value(i),
                run: run.value(i).to_string(),
            });
        }
    }
    out.sort();
    Ok(out)
}

/// Appends `rows` (per billing day, batches of [`message_schema`]) to
/// `lake` as `run`'s, in one snapshot; nothing when there are none.
async fn append(
    lake: &Lake,
    opts: FileOptions,
    run: &str,
    rows: &[(NaiveDate, RecordBatch)],
) -> Result<(), ReportError> {
    if rows.iter().all(|(_, b)| b.num_rows() == 0) {
        return Ok(());
    }
    let table = lake.load().await?;
    let arrow = notiflow_lake::rows::arrow_schema(table.metadata().current_schema())?;
    let mut files = RoundFiles::new(&table, opts)?;
    for (day, b) in rows.iter().filter(|(_, b)| b.num_rows() > 0) {
        let day_num = (*day - NaiveDate::default()).num_days() as i32;
        let n = b.num_rows();
        let c = |i: usize| b.column(i).clone();
        let cols: Vec<ArrayRef> = vec![
            c(0),
            c(1),
            Arc::new(Date32Array::from(vec![day_num; n])),
            c(2),
            c(3),
            c(4),
            c(5),
            Arc::new(StringArray::from(vec![run; n])),
        ];
        files
            .write(day_num, RecordBatch::try_new(arrow.clone(), cols)?)
            .await?;
    }
    let mut change = Change {
        added: files.close().await?,
        ..Default::default()
    };
    change.properties.insert(RUN_PROP.into(), run.to_string());
    // Appends commute: on a conflict, stage again on the new table.
    loop {
        let table = lake.load().await?;
        let staged = stage(&table, new_snapshot_id(table.metadata()), &change).await?;
        if lake.swap(&table, staged).await? {
            return Ok(());
        }
    }
}
