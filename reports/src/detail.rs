//! The detailed report's query: who may see what, which rows, in what
//! shape. A caller's mistakes (empty or oversized range, a range starting in
//! the future, a bad filter value, an unknown client) are refused with a
//! clear message; the recipient is masked unless the caller holds `pii`.

use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use notiflow_schema::time::DAY_MICROS;
use notiflow_schema::{Category, Country, Micros, Status};

use crate::error::ReportError;

/// Which rows a detailed report holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DetailQuery {
    /// One client, or every client (admins only; the caller checks roles).
    pub client: Option<String>,
    /// First instant (inclusive), UTC micros.
    pub from: Micros,
    /// Last instant (exclusive).
    pub to: Micros,
    /// Only these statuses (empty = all).
    pub statuses: Vec<Status>,
    /// Only these categories (empty = all).
    pub categories: Vec<Category>,
    /// Only these countries (empty = all).
    pub countries: Vec<Country>,
    /// Recipients unmasked.
    pub pii: bool,
}

/// Checks a client id's shape (SPEC §2).
pub fn check_client(c: &str) -> Result<(), ReportError> {
    let ok = !c.is_empty()
        && c.len() <= notiflow_schema::event::limits::CLIENT_ID_MAX
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ReportError::input(format!(
            "client '{c}' is not a client id (1–64 characters [A-Za-z0-9_.-])"
        )))
    }
}

/// Parses filter values with `parse` (e.g. `Status::parse`); an unknown
/// one is an input error naming `what` it should have been.
pub fn parse_values<T>(
    what: &str,
    vals: &[String],
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, ReportError> {
    vals.iter()
        .map(|v| parse(v).ok_or_else(|| ReportError::input(format!("unknown {what} '{v}'"))))
        .collect()
}

impl DetailQuery {
    /// The filters beyond time and client, as `(column, allowed values)`
    /// for each non-empty list; every engine turns them into `IN` lists.
    pub fn in_lists(&self) -> Vec<(&'static str, Vec<&str>)> {
        let lists = [
            (
                "status",
                self.statuses.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            ),
            (
                "category",
                self.categories.iter().map(|c| c.as_str()).collect(),
            ),
            (
                "country",
                self.countries.iter().map(|c| c.as_str()).collect(),
            ),
        ];
        lists.into_iter().filter(|(_, v)| !v.is_empty()).collect()
    }

    /// Refuses what cannot be answered: an empty range, a range over
    /// `max_days` days, a range starting after `now`, a malformed client.
    pub fn validate(&self, now: Micros, max_days: u32) -> Result<(), ReportError> {
        if let Some(c) = &self.client {
            check_client(c)?;
        }
        if self.to <= self.from {
            return Err(ReportError::input(format!(
                "empty range: 'to' ({}) must be after 'from' ({})",
                notiflow_schema::time::format_rfc3339(self.to),
                notiflow_schema::time::format_rfc3339(self.from)
            )));
        }
        if self.from > now {
            return Err(ReportError::input(format!(
                "the range starts in the future ({})",
                notiflow_schema::time::format_rfc3339(self.from)
            )));
        }
        if self.to - self.from > i64::from(max_days) * DAY_MICROS {
            return Err(ReportError::input(format!(
                "the range spans more than {max_days} days"
            )));
        }
        Ok(())
    }
}

/// `+5511987654321` → `+5511*****4321`: the country and area digits and the
/// last four stay, the rest become `*` (at least two are hidden).
pub fn mask(recipient: &str) -> String {
    let digits = recipient.trim_start_matches('+');
    let n = digits.len();
    if n < 6 || !digits.is_ascii() {
        return "*".repeat(recipient.len());
    }
    let head = 4.min(n - 6);
    let tail = 4;
    let mut s = String::with_capacity(recipient.len());
    if recipient.starts_with('+') {
        s.push('+');
    }
    s.push_str(&digits[..head]);
    s.extend(std::iter::repeat_n('*', n - head - tail));
    s.push_str(&digits[n - tail..]);
    s
}

/// What a masked export shows instead of a `message_id`: `m_` and 24 hex
/// digits of sha256 over a domain tag, `secret` and the id. Real WhatsApp
/// ids (`wamid.…`) base64-encode the recipient's number, so the id itself
/// would unmask the export; the pseudonym is the same for the same id (rows
/// of one message still group) and cannot be turned back without `secret`.
pub fn pseudonym(secret: &str, message_id: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"notiflow message_id v1\0");
    h.update((secret.len() as u64).to_be_bytes());
    h.update(secret.as_bytes());
    h.update(message_id.as_bytes());
    format!("m_{}", hex::encode(&h.finalize()[..12]))
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
}

/// The detailed report's columns (the lake row, SPEC §4).
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("message_id", DataType::Utf8, false),
        Field::new("client_id", DataType::Utf8, false),
        Field::new("recipient", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("category", DataType::Utf8, false),
        Field::new("billable", DataType::Boolean, false),
        Field::new("country", DataType::Utf8, false),
        Field::new("template", DataType::Utf8, true),
        Field::new("event_time", ts(), false),
        Field::new("error_code", DataType::Int64, true),
        Field::new("ingest_time", ts(), false),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
    ]))
}

/// The detailed report's column names, in order.
pub fn columns() -> Vec<String> {
    schema().fields().iter().map(|f| f.name().clone()).collect()
}

/// An engine's batch in the report's shape: columns cast to the canonical
/// types (engines differ in time-zone names and string views); unless
/// `pii`, the recipient masked and the message id replaced by its
/// [`pseudonym`] under `secret`.
pub fn shape(batch: &RecordBatch, pii: bool, secret: &str) -> Result<RecordBatch, ReportError> {
    let schema = schema();
    let mut cols = Vec::with_capacity(schema.fields().len());
    for (i, f) in schema.fields().iter().enumerate() {
        let col = batch.column(i);
        let col = if col.data_type() == f.data_type() {
            col.clone()
        } else {
            arrow::compute::cast(col, f.data_type())?
        };
        if f.name() == "recipient" && !pii {
            let s = col
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| ReportError::Other("recipient is not a string column".into()))?;
            let mut b = StringBuilder::with_capacity(s.len(), s.value_data().len());
            for v in s.iter() {
                b.append_option(v.map(mask));
            }
            cols.push(Arc::new(b.finish()) as _);
        } else if f.name() == "message_id" && !pii {
            let s = col
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| ReportError::Other("message_id is not a string column".into()))?;
            let mut b = StringBuilder::with_capacity(s.len(), s.len() * 26);
            for v in s.iter() {
                b.append_option(v.map(|id| pseudonym(secret, id)));
            }
            cols.push(Arc::new(b.finish()) as _);
        } else {
            cols.push(col);
        }
    }
    Ok(RecordBatch::try_new(schema, cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_id_becomes_a_stable_keyed_pseudonym() {
        // A real-looking wamid: base64 of the recipient's number and a
        // message part.
        let wamid = "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFjNFQjBDNkE1RjA5QTBDMEI4NzhEAA==";
        let p = pseudonym("k1", wamid);
        assert!(p.starts_with("m_") && p.len() == 26, "{p}");
        assert_eq!(p, pseudonym("k1", wamid), "stable");
        assert_ne!(p, pseudonym("k2", wamid), "keyed");
        assert_ne!(p, pseudonym("k1", "wamid.other"));
        assert!(!p.contains("NTUx"), "nothing of the id survives");
        // The masked batch carries the pseudonym, the pii batch the id.
        let mut cols: Vec<arrow::array::ArrayRef> = Vec::new();
        for f in schema().fields() {
            let a: arrow::array::ArrayRef = match f.data_type() {
                DataType::Utf8 => Arc::new(StringArray::from(vec![match f.name().as_str() {
                    "message_id" => wamid,
                    "recipient" => "+5511987654321",
                    _ => "x",
                }])),
                DataType::Boolean => Arc::new(arrow::array::BooleanArray::from(vec![true])),
                DataType::Int64 => Arc::new(arrow::array::Int64Array::from(vec![1])),
                DataType::Int32 => Arc::new(arrow::array::Int32Array::from(vec![1])),
                _ => Arc::new(
                    arrow::array::TimestampMicrosecondArray::from(vec![1]).with_timezone("+00:00"),
                ),
            };
            cols.push(a);
        }
        let batch = RecordBatch::try_new(schema(), cols).unwrap();
        let text = |b: &RecordBatch, col: &str| {
            let i = schema().index_of(col).unwrap();
            b.column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .value(0)
                .to_string()
        };
        let masked = shape(&batch, false, "k1").unwrap();
        assert_eq!(text(&masked, "message_id"), p);
        assert_eq!(text(&masked, "recipient"), "+5511*****4321");
        let open = shape(&batch, true, "k1").unwrap();
        assert_eq!(text(&open, "message_id"), wamid);
    }

    #[test]
    fn masking_keeps_the_area_and_the_last_four() {
        assert_eq!(mask("+5511987654321"), "+5511*****4321");
        assert_eq!(mask("+14155550123"), "+1415***0123");
        assert_eq!(mask("+12345678"), "+12**5678");
    }

    #[test]
    fn bad_queries_are_refused() {
        let now = 100 * DAY_MICROS;
        let q = DetailQuery {
            client: Some("acme".into()),
            from: now - DAY_MICROS,
            to: now,
            ..Default::default()
        };
        q.validate(now, 31).unwrap();
        let e = |q: DetailQuery| q.validate(now, 31).unwrap_err().to_string();
        assert!(
            e(DetailQuery {
                to: q.from,
                ..q.clone()
            })
            .contains("empty range")
        );
        assert!(
            e(DetailQuery {
                from: now + 1,
                to: now + 2,
                ..q.clone()
            })
            .contains("future")
        );
        assert!(
            e(DetailQuery {
                from: 0,
                ..q.clone()
            })
            .contains("more than 31 days")
        );
        assert!(
            e(DetailQuery {
                client: Some("a b".into()),
                ..q.clone()
            })
            .contains("not a client id")
        );
    }
}
