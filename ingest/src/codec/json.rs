//! JSON status events: decode (borrowing from the record) and encode.
//!
//! Strings are borrowed from the input unless they contain escapes, so a
//! typical event decodes without a heap allocation. Errors are turned into
//! [`Reject`] reasons; the slow path (re-parsing to find the failing field's
//! path) only runs for records that are already rejected.

use std::borrow::Cow;

use notiflow_schema::time::{parse_rfc3339, write_rfc3339};
use notiflow_schema::{Category, Country, Event, PricingType, Status};
use serde::Deserialize;

use crate::error::Reject;

/// The JSON shape of SPEC §2; every field optional so a missing one gets its own reason.
#[derive(Deserialize)]
struct StatusEvent<'a> {
    #[serde(borrow)]
    event_id: Option<Text<'a>>,
    #[serde(borrow)]
    message_id: Option<Text<'a>>,
    #[serde(borrow)]
    client_id: Option<Text<'a>>,
    #[serde(borrow)]
    recipient: Option<Text<'a>>,
    #[serde(borrow)]
    status: Option<Text<'a>>,
    #[serde(borrow)]
    category: Option<Text<'a>>,
    billable: Option<bool>,
    #[serde(borrow)]
    country: Option<Text<'a>>,
    #[serde(borrow)]
    template: Option<Text<'a>>,
    #[serde(borrow)]
    event_time: Option<Text<'a>>,
    error_code: Option<i64>,
    #[serde(borrow)]
    pricing_type: Option<Text<'a>>,
}

/// A JSON string borrowed from the input when it has no escapes.
///
/// serde's own `Cow<str>` impl always allocates inside an `Option`, so this
/// wrapper's visitor takes `visit_borrowed_str` itself.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// Decodes one JSON event. Types and enumerations are checked here; value
/// rules are left to [`crate::validate::validate`].
pub fn decode(value: &[u8]) -> Result<Event<'_>, Reject> {
    let text = std::str::from_utf8(value).map_err(|e| Reject::InvalidUtf8(e.valid_up_to()))?;
    let wire: StatusEvent<'_> = serde_json::from_str(text).map_err(|e| json_reject(text, e))?;
    let status = required(wire.status, "status")?;
    let category = required(wire.category, "category")?;
    let country = required(wire.country, "country")?;
    let event_time = required(wire.event_time, "event_time")?;
    Ok(Event {
        event_id: required(wire.event_id, "event_id")?,
        message_id: required(wire.message_id, "message_id")?,
        client_id: required(wire.client_id, "client_id")?,
        recipient: required(wire.recipient, "recipient")?,
        status: Status::parse(&status).ok_or_else(|| Reject::BadEnum {
            field: "status",
            value: status.into_owned(),
        })?,
        category: Category::parse(&category).ok_or_else(|| Reject::BadEnum {
            field: "category",
            value: category.into_owned(),
        })?,
        billable: wire.billable.ok_or(Reject::MissingField("billable"))?,
        country: Country::parse(&country)
            .ok_or_else(|| Reject::BadCountry(country.into_owned()))?,
        template: wire.template.map(|t| t.0),
        event_time: parse_rfc3339(&event_time)
            .map_err(|_| Reject::BadTimestamp(event_time.into_owned()))?,
        error_code: wire.error_code,
        pricing_type: match wire.pricing_type {
            None => None,
            Some(t) => Some(PricingType::parse(&t.0).ok_or_else(|| Reject::BadEnum {
                field: "pricing_type",
                value: t.0.into_owned(),
            })?),
        },
    })
}

fn required<'a>(t: Option<Text<'a>>, field: &'static str) -> Result<Cow<'a, str>, Reject> {
    t.map(|t| t.0).ok_or(Reject::MissingField(field))
}

fn json_reject(text: &str, err: serde_json::Error) -> Reject {
    use serde_json::error::Category as C;
    match err.classify() {
        C::Syntax | C::Eof | C::Io => Reject::JsonSyntax(err.to_string()),
        C::Data => {
            // Rejected already: spend a second parse to name the field.
            let mut de = serde_json::Deserializer::from_str(text);
            match serde_path_to_error::deserialize::<_, StatusEvent<'_>>(&mut de) {
                Err(e) if e.path().iter().next().is_some() => {
                    Reject::JsonType(format!("{}: {}", e.path(), e.inner()))
                }
                _ => Reject::JsonType(err.to_string()),
            }
        }
    }
}

/// Appends the JSON encoding of `ev` to `out` (the form producers send).
pub fn encode(ev: &Event<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"event_id\":");
    string(&ev.event_id, out);
    out.extend_from_slice(b",\"message_id\":");
    string(&ev.message_id, out);
    out.extend_from_slice(b",\"client_id\":");
    string(&ev.client_id, out);
    out.extend_from_slice(b",\"recipient\":");
    string(&ev.recipient, out);
    out.extend_from_slice(b",\"status\":\"");
    out.extend_from_slice(ev.status.as_str().as_bytes());
    out.extend_from_slice(b"\",\"category\":\"");
    out.extend_from_slice(ev.category.as_str().as_bytes());
    out.extend_from_slice(b"\",\"billable\":");
    out.extend_from_slice(if ev.billable { b"true" } else { b"false" });
    out.extend_from_slice(b",\"country\":\"");
    out.extend_from_slice(&ev.country.bytes());
    out.extend_from_slice(b"\",\"template\":");
    match &ev.template {
        Some(t) => string(t, out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"event_time\":\"");
    let mut ts = String::with_capacity(27);
    write_rfc3339(ev.event_time, &mut ts);
    out.extend_from_slice(ts.as_bytes());
    out.extend_from_slice(b"\",\"error_code\":");
    match ev.error_code {
        Some(c) => out.extend_from_slice(c.to_string().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    // Left out when unknown, as producers that do not know it send events.
    if let Some(p) = ev.pricing_type {
        out.extend_from_slice(b",\"pricing_type\":\"");
        out.extend_from_slice(p.as_str().as_bytes());
        out.push(b'"');
    }
    out.push(b'}');
}

/// Writes a JSON string literal with the escapes RFC 8259 requires.
fn string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Event<'static> {
        Event {
            event_id: "ev-\"quoted\"\n".into(),
            message_id: "wamid.HBgM".into(),
            client_id: "acme".into(),
            recipient: "+5511987654321".into(),
            status: Status::Failed,
            category: Category::Utility,
            billable: false,
            country: Country::parse("BR").unwrap(),
            template: Some("ordem_ñ\u{1}".into()),
            event_time: 1_795_464_062_123_456,
            error_code: Some(131_026),
            pricing_type: None,
        }
    }

    #[test]
    fn encode_then_decode_is_identity() {
        let ev = sample();
        let mut buf = Vec::new();
        encode(&ev, &mut buf);
        assert_eq!(decode(&buf).unwrap(), ev);
        let mut ev2 = ev.clone();
        ev2.template = None;
        ev2.error_code = None;
        buf.clear();
        encode(&ev2, &mut buf);
        assert_eq!(decode(&buf).unwrap(), ev2);
    }

    #[test]
    fn pricing_type_is_optional_and_checked() {
        let mut ev = sample();
        let mut buf = Vec::new();
        encode(&ev, &mut buf);
        assert!(!String::from_utf8_lossy(&buf).contains("pricing_type"));
        for p in notiflow_schema::PricingType::ALL {
            ev.pricing_type = Some(*p);
            buf.clear();
            encode(&ev, &mut buf);
            assert_eq!(decode(&buf).unwrap(), ev, "{p}");
        }
        let text = String::from_utf8(buf).unwrap();
        let null = text.replace("\"free_entry_point\"", "null");
        assert_eq!(decode(null.as_bytes()).unwrap().pricing_type, None);
        let bad = text.replace("free_entry_point", "free");
        match decode(bad.as_bytes()) {
            Err(Reject::BadEnum { field, value }) => {
                assert_eq!((field, value.as_str()), ("pricing_type", "free"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plain_strings_are_borrowed() {
        let mut ev = sample();
        ev.event_id = "ev-1".into();
        let mut buf = Vec::new();
        encode(&ev, &mut buf);
        let got = decode(&buf).unwrap();
        assert!(matches!(got.event_id, Cow::Borrowed(_)));
        assert!(matches!(got.client_id, Cow::Borrowed(_)));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut buf = b"{\"extra\":{\"nested\":[1,2]},".to_vec();
        let mut enc = Vec::new();
        encode(&sample(), &mut enc);
        buf.extend_from_slice(&enc[1..]);
        assert_eq!(decode(&buf).unwrap(), sample());
    }

    #[test]
    fn wrong_type_names_the_field() {
        let text = br#"{"event_id":"e","message_id":"m","client_id":"c","recipient":"+5511987654321","status":"sent","category":"utility","billable":"yes","country":"BR","event_time":"2026-11-23T20:01:02Z"}"#;
        match decode(text) {
            Err(Reject::JsonType(msg)) => assert!(msg.starts_with("billable:"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }
}
