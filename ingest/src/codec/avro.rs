//! Avro status events in the Confluent wire format: magic byte `0`, a 4-byte
//! big-endian schema id, then Avro binary.
//!
//! A writer schema is compiled once per schema id into a [`Plan`]: one step per
//! writer field, either "read into this event field" or "skip this type". The
//! plan handles schema evolution the Avro way (fields matched by name, extra
//! writer fields skipped, enum symbols matched by name, optional fields
//! defaulting to null) while decoding stays a tight loop over the bytes with
//! strings borrowed from the record.

use notiflow_schema::{Category, Country, Event, PricingType, Status};

use super::avro_schema::{self, AvroType};
use crate::error::Reject;

/// Byte that opens every Confluent-framed value.
pub const MAGIC: u8 = 0;
/// Magic byte plus the schema id.
pub const HEADER_LEN: usize = 5;

/// Reads the schema id of a Confluent-framed value.
pub fn schema_id(value: &[u8]) -> Result<u32, Reject> {
    match value {
        [MAGIC, a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        [MAGIC, ..] => Err(Reject::AvroTruncated),
        _ => Err(Reject::UnknownFormat(
            "Avro value without magic byte 0".into(),
        )),
    }
}

/// The event field a writer field lands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    EventId,
    MessageId,
    ClientId,
    Recipient,
    Status,
    Category,
    Billable,
    Country,
    Template,
    EventTime,
    ErrorCode,
    PricingType,
}

const SLOTS: [(&str, Slot, bool); 12] = [
    ("event_id", Slot::EventId, true),
    ("message_id", Slot::MessageId, true),
    ("client_id", Slot::ClientId, true),
    ("recipient", Slot::Recipient, true),
    ("status", Slot::Status, true),
    ("category", Slot::Category, true),
    ("billable", Slot::Billable, true),
    ("country", Slot::Country, true),
    ("template", Slot::Template, false),
    ("event_time", Slot::EventTime, true),
    ("error_code", Slot::ErrorCode, false),
    ("pricing_type", Slot::PricingType, false),
];

/// How to read one writer value into a slot.
#[derive(Debug, Clone)]
enum Reader {
    Null,
    Str,
    Bool,
    /// An int or long, multiplied by `scale` (1000 for `timestamp-millis`).
    Long {
        zigzag_int: bool,
        scale: i64,
    },
    /// Writer enum: symbol index → our symbol's index, or the unknown symbol's name.
    Enum {
        field: &'static str,
        map: Vec<Result<u8, String>>,
    },
    Union(Vec<Reader>),
}

#[derive(Debug, Clone)]
enum Step {
    Read(Slot, Reader),
    Skip(AvroType),
}

/// A compiled writer schema: how to read one record written with it.
#[derive(Debug, Clone)]
pub struct Plan {
    steps: Vec<Step>,
}

impl Plan {
    /// Compiles writer schema text for schema id `id`.
    pub fn compile(id: u32, schema_text: &str) -> Result<Plan, Reject> {
        let bad = |why: String| Reject::IncompatibleSchema { id, why };
        let AvroType::Record(fields) = avro_schema::parse(schema_text).map_err(bad)? else {
            return Err(bad("writer schema is not a record".into()));
        };
        let mut steps = Vec::with_capacity(fields.len());
        for (name, ty) in fields {
            match SLOTS.iter().find(|(n, _, _)| *n == name) {
                Some(&(_, slot, _)) => {
                    let reader = reader_for(slot, &ty)
                        .map_err(|why| bad(format!("field `{name}`: {why}")))?;
                    steps.push(Step::Read(slot, reader));
                }
                None => steps.push(Step::Skip(ty)),
            }
        }
        for (name, slot, required) in SLOTS {
            let present = steps
                .iter()
                .any(|s| matches!(s, Step::Read(s2, _) if *s2 == slot));
            if required && !present {
                return Err(bad(format!("writer schema has no field `{name}`")));
            }
        }
        Ok(Plan { steps })
    }

    /// Decodes the Avro body (after the 5-byte header) of one record.
    pub fn decode<'a>(&self, body: &'a [u8]) -> Result<Event<'a>, Reject> {
        let mut cur = Cursor { b: body, pos: 0 };
        let mut f = Fields::default();
        for step in &self.steps {
            match step {
                Step::Skip(ty) => cur.skip(ty, 0)?,
                Step::Read(slot, reader) => {
                    let v = cur.read(reader)?;
                    f.set(*slot, v)?;
                }
            }
        }
        if cur.pos != body.len() {
            return Err(Reject::AvroMalformed("trailing bytes after the record"));
        }
        f.finish()
    }
}

fn reader_for(slot: Slot, ty: &AvroType) -> Result<Reader, String> {
    if let AvroType::Union(branches) = ty {
        let readers = branches
            .iter()
            .map(|b| match b {
                AvroType::Null => Ok(Reader::Null),
                AvroType::Union(_) => Err("nested union".to_string()),
                other => reader_for(slot, other),
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Reader::Union(readers));
    }
    Ok(match (slot, ty) {
        (
            Slot::EventId
            | Slot::MessageId
            | Slot::ClientId
            | Slot::Recipient
            | Slot::Country
            | Slot::Template
            | Slot::Status
            | Slot::Category
            | Slot::PricingType,
            AvroType::String,
        ) => Reader::Str,
        (Slot::PricingType, AvroType::Enum(symbols)) => Reader::Enum {
            field: "pricing_type",
            map: map_symbols(symbols, |s| PricingType::parse(s).map(|v| v.index() as u8)),
        },
        (Slot::Status, AvroType::Enum(symbols)) => Reader::Enum {
            field: "status",
            map: map_symbols(symbols, |s| Status::parse(s).map(|v| v.index() as u8)),
        },
        (Slot::Category, AvroType::Enum(symbols)) => Reader::Enum {
            field: "category",
            map: map_symbols(symbols, |s| Category::parse(s).map(|v| v.index() as u8)),
        },
        (Slot::Billable, AvroType::Boolean) => Reader::Bool,
        (Slot::EventTime, AvroType::Long(Some(l))) if l == "timestamp-micros" => Reader::Long {
            zigzag_int: false,
            scale: 1,
        },
        (Slot::EventTime, AvroType::Long(Some(l))) if l == "timestamp-millis" => Reader::Long {
            zigzag_int: false,
            scale: 1000,
        },
        (Slot::ErrorCode, AvroType::Int(_)) => Reader::Long {
            zigzag_int: true,
            scale: 1,
        },
        (Slot::ErrorCode, AvroType::Long(_)) => Reader::Long {
            zigzag_int: false,
            scale: 1,
        },
        (_, other) => return Err(format!("type {other:?} cannot be read here")),
    })
}

fn map_symbols(symbols: &[String], parse: impl Fn(&str) -> Option<u8>) -> Vec<Result<u8, String>> {
    symbols
        .iter()
        .map(|s| parse(s).ok_or_else(|| s.clone()))
        .collect()
}

enum Val<'a> {
    Null,
    Str(&'a str),
    Bool(bool),
    Long(i64),
    Sym(u8),
}

#[derive(Default)]
struct Fields<'a> {
    event_id: Option<&'a str>,
    message_id: Option<&'a str>,
    client_id: Option<&'a str>,
    recipient: Option<&'a str>,
    status: Option<Status>,
    category: Option<Category>,
    billable: Option<bool>,
    country: Option<Country>,
    template: Option<&'a str>,
    event_time: Option<i64>,
    error_code: Option<i64>,
    pricing_type: Option<PricingType>,
}

impl<'a> Fields<'a> {
    fn set(&mut self, slot: Slot, v: Val<'a>) -> Result<(), Reject> {
        let enum_err = |field: &'static str, s: &str| Reject::BadEnum {
            field,
            value: s.to_string(),
        };
        match (slot, v) {
            (_, Val::Null) => {}
            (Slot::EventId, Val::Str(s)) => self.event_id = Some(s),
            (Slot::MessageId, Val::Str(s)) => self.message_id = Some(s),
            (Slot::ClientId, Val::Str(s)) => self.client_id = Some(s),
            (Slot::Recipient, Val::Str(s)) => self.recipient = Some(s),
            (Slot::Template, Val::Str(s)) => self.template = Some(s),
            (Slot::Country, Val::Str(s)) => {
                self.country = Some(Country::parse(s).ok_or_else(|| Reject::BadCountry(s.into()))?)
            }
            (Slot::Status, Val::Str(s)) => {
                self.status = Some(Status::parse(s).ok_or_else(|| enum_err("status", s))?)
            }
            (Slot::Status, Val::Sym(i)) => self.status = Status::ALL.get(i as usize).copied(),
            (Slot::Category, Val::Str(s)) => {
                self.category = Some(Category::parse(s).ok_or_else(|| enum_err("category", s))?)
            }
            (Slot::Category, Val::Sym(i)) => self.category = Category::ALL.get(i as usize).copied(),
            (Slot::Billable, Val::Bool(b)) => self.billable = Some(b),
            (Slot::EventTime, Val::Long(t)) => self.event_time = Some(t),
            (Slot::ErrorCode, Val::Long(c)) => self.error_code = Some(c),
            (Slot::PricingType, Val::Str(s)) => {
                self.pricing_type =
                    Some(PricingType::parse(s).ok_or_else(|| enum_err("pricing_type", s))?)
            }
            (Slot::PricingType, Val::Sym(i)) => {
                self.pricing_type = PricingType::ALL.get(i as usize).copied()
            }
            _ => return Err(Reject::AvroMalformed("value of an unexpected type")),
        }
        Ok(())
    }

    fn finish(self) -> Result<Event<'a>, Reject> {
        use Reject::MissingField as M;
        Ok(Event {
            event_id: self.event_id.ok_or(M("event_id"))?.into(),
            message_id: self.message_id.ok_or(M("message_id"))?.into(),
            client_id: self.client_id.ok_or(M("client_id"))?.into(),
            recipient: self.recipient.ok_or(M("recipient"))?.into(),
            status: self.status.ok_or(M("status"))?,
            category: self.category.ok_or(M("category"))?,
            billable: self.billable.ok_or(M("billable"))?,
            country: self.country.ok_or(M("country"))?,
            template: self.template.map(Into::into),
            event_time: self.event_time.ok_or(M("event_time"))?,
            error_code: self.error_code,
            pricing_type: self.pricing_type,
        })
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn long(&mut self) -> Result<i64, Reject> {
        let mut acc: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = *self.b.get(self.pos).ok_or(Reject::AvroTruncated)?;
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err(Reject::AvroMalformed("varint overflows 64 bits"));
            }
            acc |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((acc >> 1) as i64 ^ -((acc & 1) as i64));
            }
        }
        Err(Reject::AvroMalformed("varint longer than 10 bytes"))
    }

    fn int(&mut self) -> Result<i64, Reject> {
        let v = self.long()?;
        if i32::try_from(v).is_err() {
            return Err(Reject::AvroMalformed("int out of 32-bit range"));
        }
        Ok(v)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Reject> {
        let end = self.pos.checked_add(n).ok_or(Reject::AvroTruncated)?;
        let s = self.b.get(self.pos..end).ok_or(Reject::AvroTruncated)?;
        self.pos = end;
        Ok(s)
    }

    fn len(&mut self) -> Result<usize, Reject> {
        usize::try_from(self.long()?).map_err(|_| Reject::AvroMalformed("negative length"))
    }

    fn str(&mut self) -> Result<&'a str, Reject> {
        let n = self.len()?;
        let at = self.pos;
        let raw = self.take(n)?;
        std::str::from_utf8(raw).map_err(|e| Reject::InvalidUtf8(at + e.valid_up_to()))
    }

    fn read(&mut self, r: &Reader) -> Result<Val<'a>, Reject> {
        Ok(match r {
            Reader::Null => Val::Null,
            Reader::Str => Val::Str(self.str()?),
            Reader::Bool => match self.take(1)?[0] {
                0 => Val::Bool(false),
                1 => Val::Bool(true),
                _ => return Err(Reject::AvroMalformed("boolean byte is not 0 or 1")),
            },
            Reader::Long { zigzag_int, scale } => {
                let v = if *zigzag_int {
                    self.int()?
                } else {
                    self.long()?
                };
                Val::Long(
                    v.checked_mul(*scale)
                        .ok_or(Reject::AvroMalformed("timestamp out of range"))?,
                )
            }
            Reader::Enum { field, map } => match map.get(self.len()?) {
                Some(Ok(ours)) => Val::Sym(*ours),
                Some(Err(name)) => {
                    return Err(Reject::BadEnum {
                        field,
                        value: name.clone(),
                    });
                }
                None => return Err(Reject::AvroMalformed("enum index out of range")),
            },
            Reader::Union(branches) => {
                let i = self.len()?;
                let branch = branches
                    .get(i)
                    .ok_or(Reject::AvroMalformed("union branch out of range"))?;
                self.read(branch)?
            }
        })
    }

    fn skip(&mut self, ty: &AvroType, depth: usize) -> Result<(), Reject> {
        if depth > 32 {
            return Err(Reject::AvroMalformed("value nests too deep"));
        }
        match ty {
            AvroType::Null => {}
            AvroType::Boolean => {
                self.take(1)?;
            }
            AvroType::Int(_) => {
                self.int()?;
            }
            AvroType::Long(_) | AvroType::Enum(_) => {
                self.long()?;
            }
            AvroType::Float => {
                self.take(4)?;
            }
            AvroType::Double => {
                self.take(8)?;
            }
            AvroType::Bytes | AvroType::String => {
                let n = self.len()?;
                self.take(n)?;
            }
            AvroType::Fixed(n) => {
                self.take(*n)?;
            }
            AvroType::Union(branches) => {
                let i = self.len()?;
                let b = branches
                    .get(i)
                    .ok_or(Reject::AvroMalformed("union branch out of range"))?;
                self.skip(b, depth + 1)?;
            }
            AvroType::Record(fields) => {
                for (_, f) in fields {
                    self.skip(f, depth + 1)?;
                }
            }
            AvroType::Array(item) => self.skip_blocks(|c| c.skip(item, depth + 1))?,
            AvroType::Map(value) => self.skip_blocks(|c| {
                let n = c.len()?;
                c.take(n)?;
                c.skip(value, depth + 1)
            })?,
        }
        Ok(())
    }

    fn skip_blocks(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), Reject>,
    ) -> Result<(), Reject> {
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                // A negative count is followed by the block's size in bytes.
                let size = self.len()?;
                self.take(size)?;
                continue;
            }
            // An item of a zero-width type (null, fixed(0), a record of
            // those) consumes no bytes, and then neither does any other item
            // of the block: skip them all at once, or a hostile count of
            // 2^62 would loop for ever while the input stays tiny. Every
            // other type takes at least one byte per item, so its loop is
            // bounded by the input's length.
            let before = self.pos;
            item(self)?;
            if self.pos == before {
                continue;
            }
            for _ in 1..count {
                item(self)?;
            }
        }
    }
}

/// Appends the Confluent-framed Avro encoding of `ev` (with notiflow's own schema,
/// registered as `schema_id`) to `out`.
pub fn encode(ev: &Event<'_>, schema_id: u32, out: &mut Vec<u8>) {
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    put_str(&ev.event_id, out);
    put_str(&ev.message_id, out);
    put_str(&ev.client_id, out);
    put_str(&ev.recipient, out);
    put_long(ev.status.index() as i64, out);
    put_long(ev.category.index() as i64, out);
    out.push(u8::from(ev.billable));
    put_str(ev.country.as_str(), out);
    match &ev.template {
        None => put_long(0, out),
        Some(t) => {
            put_long(1, out);
            put_str(t, out);
        }
    }
    put_long(ev.event_time, out);
    match ev.error_code {
        None => put_long(0, out),
        Some(c) => {
            put_long(1, out);
            put_long(c, out);
        }
    }
}

/// [`encode`] with notiflow's v2 schema (`AVRO_SCHEMA_V2`, `pricing_type`
/// last), registered as `schema_id`.
pub fn encode_v2(ev: &Event<'_>, schema_id: u32, out: &mut Vec<u8>) {
    encode(ev, schema_id, out);
    match ev.pricing_type {
        None => put_long(0, out),
        Some(p) => {
            put_long(1, out);
            put_long(p.index() as i64, out);
        }
    }
}

/// Appends a zig-zag varint.
pub fn put_long(v: i64, out: &mut Vec<u8>) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Appends a length-prefixed string.
pub fn put_str(s: &str, out: &mut Vec<u8>) {
    put_long(s.len() as i64, out);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use notiflow_schema::AVRO_SCHEMA;

    fn sample() -> Event<'static> {
        Event {
            event_id: "ev-1".into(),
            message_id: "wamid.HBgM".into(),
            client_id: "acme".into(),
            recipient: "+5511987654321".into(),
            status: Status::Failed,
            category: Category::Authentication,
            billable: true,
            country: Country::parse("IN").unwrap(),
            template: Some("otp".into()),
            event_time: 1_795_464_062_123_456,
            error_code: Some(131_026),
            pricing_type: None,
        }
    }

    fn encoded(ev: &Event<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode(ev, 7, &mut out);
        out
    }

    #[test]
    fn the_v2_schema_carries_the_pricing_type_and_v1_records_still_read() {
        use notiflow_schema::{AVRO_SCHEMA_V2, PricingType};
        let v2 = Plan::compile(8, AVRO_SCHEMA_V2).unwrap();
        let mut ev = sample();
        for p in [
            None,
            Some(PricingType::FreeCustomerService),
            Some(PricingType::FreeEntryPoint),
        ] {
            ev.pricing_type = p;
            let mut out = Vec::new();
            encode_v2(&ev, 8, &mut out);
            assert_eq!(v2.decode(&out[HEADER_LEN..]).unwrap(), ev);
        }
        // A v1 record (no field) under its own plan: no pricing type.
        ev.pricing_type = None;
        let v1 = Plan::compile(7, AVRO_SCHEMA).unwrap();
        assert_eq!(v1.decode(&encoded(&ev)[HEADER_LEN..]).unwrap(), ev);
        // A writer's enum with a symbol notiflow does not know is refused
        // when a record carries it.
        let other = AVRO_SCHEMA_V2.replace(
            "\"free_entry_point\"]",
            "\"free_entry_point\", \"marketing_lite\"]",
        );
        let plan = Plan::compile(9, &other).unwrap();
        let mut out = Vec::new();
        encode(&ev, 9, &mut out);
        put_long(1, &mut out);
        put_long(3, &mut out);
        assert!(matches!(
            plan.decode(&out[HEADER_LEN..]),
            Err(Reject::BadEnum {
                field: "pricing_type",
                ..
            })
        ));
    }

    #[test]
    fn round_trips_with_its_own_schema() {
        let plan = Plan::compile(7, AVRO_SCHEMA).unwrap();
        let mut ev = sample();
        let bytes = encoded(&ev);
        assert_eq!(schema_id(&bytes).unwrap(), 7);
        assert_eq!(plan.decode(&bytes[HEADER_LEN..]).unwrap(), ev);
        ev.template = None;
        ev.error_code = None;
        ev.event_time = -5;
        let bytes = encoded(&ev);
        assert_eq!(plan.decode(&bytes[HEADER_LEN..]).unwrap(), ev);
    }

    #[test]
    fn reads_an_evolved_writer_schema() {
        // Writer added a field up front, reordered, used millis and a string status.
        let writer = r#"{"type":"record","name":"E","fields":[
          {"name":"trace","type":{"type":"map","values":{"type":"array","items":"double"}}},
          {"name":"status","type":"string"},
          {"name":"event_id","type":"string"},{"name":"message_id","type":"string"},
          {"name":"client_id","type":"string"},{"name":"recipient","type":"string"},
          {"name":"category","type":{"type":"enum","name":"C","symbols":["service","utility","marketing","authentication","new_one"]}},
          {"name":"billable","type":"boolean"},{"name":"country","type":"string"},
          {"name":"event_time","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#;
        let plan = Plan::compile(9, writer).unwrap();
        let mut b = Vec::new();
        put_long(1, &mut b); // map block of 1 entry
        put_str("k", &mut b);
        put_long(2, &mut b); // array of 2 doubles
        b.extend_from_slice(&1.5f64.to_le_bytes());
        b.extend_from_slice(&2.5f64.to_le_bytes());
        put_long(0, &mut b);
        put_long(0, &mut b);
        put_str("read", &mut b);
        for s in ["e1", "m1", "c1", "+5511987654321"] {
            put_str(s, &mut b);
        }
        put_long(2, &mut b); // marketing
        b.push(1);
        put_str("BR", &mut b);
        put_long(1_795_464_062_123, &mut b);
        let ev = plan.decode(&b).unwrap();
        assert_eq!(ev.status, Status::Read);
        assert_eq!(ev.category, Category::Marketing);
        assert_eq!(ev.event_time, 1_795_464_062_123_000);
        assert_eq!(ev.template, None);

        // The writer's extra enum symbol decodes to a bad_enum reject, not a panic.
        let mut b2 = b.clone();
        let cat_at = b2.len() - 1 - 3 - 1 - 6; // after strings: category byte
        assert_eq!(b2[cat_at], 4); // zigzag(2)
        b2[cat_at] = 8; // zigzag(4) = "new_one"
        assert_eq!(plan.decode(&b2).unwrap_err().code(), "bad_enum");
    }

    #[test]
    fn a_huge_block_of_zero_width_items_is_skipped_at_once() {
        // A writer field `pad: array<null>` whose one block claims 2^62 items:
        // nulls take no bytes, so a loop per item never ends on 20 bytes.
        let writer = AVRO_SCHEMA.replacen(
            r#""fields": ["#,
            r#""fields": [{"name": "pad", "type": {"type": "array", "items": "null"}},"#,
            1,
        );
        let plan = Plan::compile(9, &writer).unwrap();
        let bytes = encoded(&sample());
        let mut body = Vec::new();
        put_long(1 << 62, &mut body);
        put_long(0, &mut body);
        body.extend_from_slice(&bytes[HEADER_LEN..]);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(plan.decode(&body).map(|e| e.into_owned()));
        });
        let decoded = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("decoding 2^62 zero-width items did not finish");
        assert_eq!(decoded.unwrap(), sample());
        // Items that take bytes still have to be there: a block claiming more
        // longs than the value holds is a truncation, found as soon as the
        // bytes run out.
        let writer = AVRO_SCHEMA.replacen(
            r#""fields": ["#,
            r#""fields": [{"name": "pad", "type": {"type": "array", "items": "long"}},"#,
            1,
        );
        let plan = Plan::compile(9, &writer).unwrap();
        let mut body = Vec::new();
        put_long(1 << 62, &mut body);
        body.extend_from_slice(&[2; 64]);
        assert_eq!(plan.decode(&body).unwrap_err().code(), "avro_truncated");
    }

    #[test]
    fn incompatible_writer_schemas_are_refused() {
        let no_event_id = AVRO_SCHEMA.replace("\"event_id\"", "\"eventid\"");
        assert_eq!(
            Plan::compile(1, &no_event_id).unwrap_err().code(),
            "incompatible_schema"
        );
        let plain_long = AVRO_SCHEMA.replace(
            r#"{"type": "long", "logicalType": "timestamp-micros"}"#,
            r#""long""#,
        );
        assert_eq!(
            Plan::compile(1, &plain_long).unwrap_err().code(),
            "incompatible_schema"
        );
        assert_eq!(
            Plan::compile(1, "\"string\"").unwrap_err().code(),
            "incompatible_schema"
        );
    }

    #[test]
    fn every_truncation_is_a_clean_reject() {
        let plan = Plan::compile(7, AVRO_SCHEMA).unwrap();
        let bytes = encoded(&sample());
        let body = &bytes[HEADER_LEN..];
        for cut in 0..body.len() {
            let err = plan.decode(&body[..cut]).unwrap_err();
            assert!(matches!(err, Reject::AvroTruncated), "cut {cut}: {err:?}");
        }
        let mut long = body.to_vec();
        long.push(0);
        assert_eq!(plan.decode(&long).unwrap_err().code(), "avro_malformed");
        assert_eq!(schema_id(&[0, 0, 0]).unwrap_err().code(), "avro_truncated");
    }
}
