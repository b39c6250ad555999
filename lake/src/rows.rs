//! The table's schema and the in-memory row buffer that turns events into
//! Arrow record batches, one per day partition.
//!
//! Columns are SPEC §2's fields plus `ingest_time` (the broker timestamp),
//! `kafka_partition` and `kafka_offset`. The schema is defined once, here, as
//! an Iceberg schema; the Arrow schema (with the Parquet field ids every
//! Iceberg reader needs) is derived from it.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};
use arrow::datatypes::SchemaRef as ArrowSchemaRef;
use iceberg::spec::{
    NestedField, NullOrder, PrimitiveType, Schema, SortDirection, SortField, SortOrder, Transform,
    Type, UnboundPartitionSpec,
};
use notiflow_schema::time::DAY_MICROS;
use notiflow_schema::{Event, Micros};

use crate::error::LakeError;

/// Field ids of the columns (stable: they are the table's identity).
pub mod field {
    /// `event_id`
    pub const EVENT_ID: i32 = 1;
    /// `message_id`
    pub const MESSAGE_ID: i32 = 2;
    /// `client_id`
    pub const CLIENT_ID: i32 = 3;
    /// `recipient`
    pub const RECIPIENT: i32 = 4;
    /// `status`
    pub const STATUS: i32 = 5;
    /// `category`
    pub const CATEGORY: i32 = 6;
    /// `billable`
    pub const BILLABLE: i32 = 7;
    /// `country`
    pub const COUNTRY: i32 = 8;
    /// `template`
    pub const TEMPLATE: i32 = 9;
    /// `event_time`
    pub const EVENT_TIME: i32 = 10;
    /// `error_code`
    pub const ERROR_CODE: i32 = 11;
    /// `ingest_time`
    pub const INGEST_TIME: i32 = 12;
    /// `kafka_partition`
    pub const KAFKA_PARTITION: i32 = 13;
    /// `kafka_offset`
    pub const KAFKA_OFFSET: i32 = 14;
    /// `pricing_type` (added to tables created before it: `table::Lake::open`)
    pub const PRICING_TYPE: i32 = 15;
}

/// The `pricing_type` column: optional, last; tables created before it get
/// it by schema evolution, and their older files read it as null.
pub fn pricing_type_field() -> iceberg::spec::NestedFieldRef {
    Arc::new(NestedField::optional(
        field::PRICING_TYPE,
        "pricing_type",
        Type::Primitive(PrimitiveType::String),
    ))
}

/// The Iceberg schema of `notiflow.message_events`: the first one with
/// [`pricing_type_field`] last.
pub fn table_schema() -> Result<Schema, LakeError> {
    let first = table_schema_before_pricing_type()?;
    let mut fields = first.as_struct().fields().to_vec();
    fields.push(pricing_type_field());
    Ok(Schema::builder()
        .with_schema_id(0)
        .with_fields(fields)
        .build()?)
}

/// The schema tables were created with before `pricing_type` existed
/// (what `table::Lake::open` evolves, and what tests of that start from).
pub fn table_schema_before_pricing_type() -> Result<Schema, LakeError> {
    use PrimitiveType as P;
    let req = |id, name: &str, t| Arc::new(NestedField::required(id, name, Type::Primitive(t)));
    let opt = |id, name: &str, t| Arc::new(NestedField::optional(id, name, Type::Primitive(t)));
    Ok(Schema::builder()
        .with_schema_id(0)
        .with_fields([
            req(field::EVENT_ID, "event_id", P::String),
            req(field::MESSAGE_ID, "message_id", P::String),
            req(field::CLIENT_ID, "client_id", P::String),
            req(field::RECIPIENT, "recipient", P::String),
            req(field::STATUS, "status", P::String),
            req(field::CATEGORY, "category", P::String),
            req(field::BILLABLE, "billable", P::Boolean),
            req(field::COUNTRY, "country", P::String),
            opt(field::TEMPLATE, "template", P::String),
            req(field::EVENT_TIME, "event_time", P::Timestamptz),
            opt(field::ERROR_CODE, "error_code", P::Long),
            req(field::INGEST_TIME, "ingest_time", P::Timestamptz),
            req(field::KAFKA_PARTITION, "kafka_partition", P::Int),
            req(field::KAFKA_OFFSET, "kafka_offset", P::Long),
        ])
        .build()?)
}

/// `day(event_time)`.
pub fn partition_spec() -> Result<UnboundPartitionSpec, LakeError> {
    Ok(UnboundPartitionSpec::builder()
        .with_spec_id(0)
        .add_partition_field(field::EVENT_TIME, "event_time_day", Transform::Day)?
        .build())
}

/// `client_id, event_time`, as the writer sorts each chunk.
pub fn sort_order() -> SortOrder {
    let asc = |id| SortField {
        source_id: id,
        transform: Transform::Identity,
        direction: SortDirection::Ascending,
        null_order: NullOrder::First,
    };
    SortOrder::builder()
        .with_order_id(1)
        .with_sort_field(asc(field::CLIENT_ID))
        .with_sort_field(asc(field::EVENT_TIME))
        .build_unbound()
        .unwrap_or_else(|_| SortOrder::unsorted_order())
}

/// The Arrow schema of the rows, with Parquet field ids.
pub fn arrow_schema(schema: &Schema) -> Result<ArrowSchemaRef, LakeError> {
    Ok(Arc::new(iceberg::arrow::schema_to_arrow_schema(schema)?))
}

/// Day number (since 1970-01-01) of a timestamp: the partition value.
pub fn day_of(t: Micros) -> i32 {
    t.div_euclid(DAY_MICROS) as i32
}

/// Where a row came from.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    /// Broker timestamp.
    pub ingest_time: Micros,
    /// Kafka partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// Column builders of one day partition.
struct DayBuilder {
    event_id: StringBuilder,
    message_id: StringBuilder,
    client_id: StringBuilder,
    recipient: StringBuilder,
    status: StringBuilder,
    category: StringBuilder,
    billable: BooleanBuilder,
    country: StringBuilder,
    template: StringBuilder,
    event_time: TimestampMicrosecondBuilder,
    error_code: Int64Builder,
    ingest_time: TimestampMicrosecondBuilder,
    kafka_partition: Int32Builder,
    kafka_offset: Int64Builder,
    pricing_type: StringBuilder,
    rows: usize,
}

impl DayBuilder {
    fn new(capacity: usize) -> Self {
        let s = || StringBuilder::with_capacity(capacity, capacity * 16);
        let ts = || TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("+00:00");
        DayBuilder {
            event_id: s(),
            message_id: s(),
            client_id: s(),
            recipient: s(),
            status: s(),
            category: s(),
            billable: BooleanBuilder::with_capacity(capacity),
            country: s(),
            template: s(),
            event_time: ts(),
            error_code: Int64Builder::with_capacity(capacity),
            ingest_time: ts(),
            kafka_partition: Int32Builder::with_capacity(capacity),
            kafka_offset: Int64Builder::with_capacity(capacity),
            pricing_type: StringBuilder::with_capacity(capacity, capacity * 8),
            rows: 0,
        }
    }

    fn push(&mut self, e: &Event<'_>, o: Origin) {
        self.event_id.append_value(&e.event_id);
        self.message_id.append_value(&e.message_id);
        self.client_id.append_value(&e.client_id);
        self.recipient.append_value(&e.recipient);
        self.status.append_value(e.status.as_str());
        self.category.append_value(e.category.as_str());
        self.billable.append_value(e.billable);
        self.country.append_value(e.country.as_str());
        self.template.append_option(e.template.as_deref());
        self.event_time.append_value(e.event_time);
        self.error_code.append_option(e.error_code);
        self.ingest_time.append_value(o.ingest_time);
        self.kafka_partition.append_value(o.partition);
        self.kafka_offset.append_value(o.offset);
        self.pricing_type
            .append_option(e.pricing_type.map(|p| p.as_str()));
        self.rows += 1;
    }

    fn finish(mut self, schema: &ArrowSchemaRef) -> Result<RecordBatch, LakeError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            Arc::new(self.message_id.finish()),
            Arc::new(self.client_id.finish()),
            Arc::new(self.recipient.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.category.finish()),
            Arc::new(self.billable.finish()),
            Arc::new(self.country.finish()),
            Arc::new(self.template.finish()),
            Arc::new(self.event_time.finish()),
            Arc::new(self.error_code.finish()),
            Arc::new(self.ingest_time.finish()),
            Arc::new(self.kafka_partition.finish()),
            Arc::new(self.kafka_offset.finish()),
        ];
        let mut columns = columns;
        // A writer that loaded the table before its `pricing_type` was
        // added writes files without it (they read it as null).
        if schema.fields().len() > columns.len() {
            columns.push(Arc::new(self.pricing_type.finish()));
        }
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}

/// Day builders of a buffer that get the full row reservation.
const RESERVED_DAYS: usize = 4;

/// Rows waiting to be encoded, grouped by day partition.
pub struct RowBuffer {
    schema: ArrowSchemaRef,
    days: BTreeMap<i32, DayBuilder>,
    rows: usize,
    capacity: usize,
}

impl RowBuffer {
    /// An empty buffer for `schema` (from [`arrow_schema`]); `capacity` rows
    /// are reserved per day builder.
    pub fn new(schema: ArrowSchemaRef, capacity: usize) -> Self {
        RowBuffer {
            schema,
            days: BTreeMap::new(),
            rows: 0,
            capacity,
        }
    }

    /// Rows buffered.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// True when no row is buffered.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Adds one event.
    pub fn push(&mut self, e: &Event<'_>, origin: Origin) {
        // Full reservations for the first few days only: a backfill chunk
        // spanning years must not reserve `capacity` rows for every day.
        let cap = if self.days.len() < RESERVED_DAYS {
            self.capacity
        } else {
            self.capacity.min(1024)
        };
        self.days
            .entry(day_of(e.event_time))
            .or_insert_with(|| DayBuilder::new(cap))
            .push(e, origin);
        self.rows += 1;
    }

    /// Takes the buffered rows as one batch per day, each sorted by
    /// `client_id, event_time` when `sort` is set.
    pub fn take(&mut self, sort: bool) -> Result<Vec<(i32, RecordBatch)>, LakeError> {
        self.rows = 0;
        let days = std::mem::take(&mut self.days);
        let mut out = Vec::with_capacity(days.len());
        for (day, b) in days {
            let batch = b.finish(&self.schema)?;
            let batch = if sort { sort_batch(&batch)? } else { batch };
            out.push((day, batch));
        }
        Ok(out)
    }
}

/// `batch` sorted by `client_id, event_time`.
pub fn sort_batch(batch: &RecordBatch) -> Result<RecordBatch, LakeError> {
    let col = |id: i32| batch.column((id - 1) as usize).clone();
    let indices = lexsort_to_indices(
        &[
            SortColumn {
                values: col(field::CLIENT_ID),
                options: None,
            },
            SortColumn {
                values: col(field::EVENT_TIME),
                options: None,
            },
        ],
        None,
    )?;
    Ok(take_record_batch(batch, &indices)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::TimestampMicrosecondType;
    use notiflow_schema::{Category, Country, Status};
    use std::borrow::Cow;

    fn event(id: &str, client: &str, t: Micros) -> Event<'static> {
        Event {
            event_id: Cow::Owned(id.into()),
            message_id: Cow::Owned(format!("m-{id}")),
            client_id: Cow::Owned(client.into()),
            recipient: Cow::Borrowed("+5511999990000"),
            status: Status::Read,
            category: Category::Utility,
            billable: true,
            country: Country::parse("BR").unwrap(),
            template: None,
            event_time: t,
            error_code: None,
            pricing_type: None,
        }
    }

    #[test]
    fn rows_are_split_by_day_and_sorted() {
        let schema = arrow_schema(&table_schema().unwrap()).unwrap();
        let mut buf = RowBuffer::new(schema, 16);
        let day = 20_000 * DAY_MICROS;
        let o = |offset| Origin {
            ingest_time: day + DAY_MICROS,
            partition: 3,
            offset,
        };
        buf.push(&event("a", "zeta", day + 5), o(1));
        buf.push(&event("b", "alpha", day + 9), o(2));
        buf.push(&event("c", "alpha", day + 2), o(3));
        buf.push(&event("d", "alpha", day - 1), o(4));
        assert_eq!(buf.len(), 4);
        let batches = buf.take(true).unwrap();
        assert!(buf.is_empty());
        assert_eq!(
            batches
                .iter()
                .map(|(d, b)| (*d, b.num_rows()))
                .collect::<Vec<_>>(),
            vec![(19_999, 1), (20_000, 3)]
        );
        let b = &batches[1].1;
        let ids = b.column(0).as_string::<i32>();
        assert_eq!(
            (0..3).map(|i| ids.value(i)).collect::<Vec<_>>(),
            ["c", "b", "a"]
        );
        let times = b.column(9).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(times.value(0), day + 2);
        assert!(b.column(8).is_null(0), "template is null");
        assert_eq!(b.schema().fields().len(), 15);
        assert!(b.column(14).is_null(0), "pricing_type not sent: null");
    }

    #[test]
    fn the_arrow_schema_carries_field_ids() {
        let schema = arrow_schema(&table_schema().unwrap()).unwrap();
        let f = schema.field_with_name("kafka_offset").unwrap();
        assert_eq!(
            f.metadata().get("PARQUET:field_id").map(String::as_str),
            Some("14")
        );
    }
}
