//! A small parser for Avro schema JSON (`.avsc`), enough to read any writer
//! schema: primitives, records, enums, arrays, maps, fixed, unions, named
//! references and logical types.
//!
//! notiflow does not decode Avro through a generic value tree (too slow for the
//! hot path); it compiles a writer schema into a read plan once per schema id
//! (see `avro.rs`). This module only turns schema text into [`AvroType`].

use std::collections::HashMap;

use serde_json::Value;

/// A parsed Avro type.
#[derive(Debug, Clone, PartialEq)]
pub enum AvroType {
    /// `null`
    Null,
    /// `boolean`
    Boolean,
    /// `int`, possibly with a logical type.
    Int(Option<String>),
    /// `long`, possibly with a logical type (`timestamp-micros`, …).
    Long(Option<String>),
    /// `float`
    Float,
    /// `double`
    Double,
    /// `bytes`
    Bytes,
    /// `string`
    String,
    /// `enum` with its symbols.
    Enum(Vec<String>),
    /// `fixed` of a size.
    Fixed(usize),
    /// `array` of items.
    Array(Box<AvroType>),
    /// `map` of values (keys are strings).
    Map(Box<AvroType>),
    /// A union of branches.
    Union(Vec<AvroType>),
    /// A `record` with its fields in writer order.
    Record(Vec<(String, AvroType)>),
}

/// Parses schema text. Errors say what is wrong, for the `incompatible_schema` reason.
pub fn parse(text: &str) -> Result<AvroType, String> {
    let json: Value = serde_json::from_str(text).map_err(|e| format!("schema is not JSON: {e}"))?;
    let mut named = HashMap::new();
    parse_value(&json, &mut named, None, 0)
}

fn parse_value(
    v: &Value,
    named: &mut HashMap<String, AvroType>,
    ns: Option<&str>,
    depth: usize,
) -> Result<AvroType, String> {
    if depth > 32 {
        return Err("schema nests deeper than 32 levels".into());
    }
    match v {
        Value::String(name) => primitive(name)
            .or_else(|| lookup(named, name, ns))
            .ok_or_else(|| format!("unknown type name {name:?}")),
        Value::Array(branches) => branches
            .iter()
            .map(|b| parse_value(b, named, ns, depth + 1))
            .collect::<Result<Vec<_>, _>>()
            .map(AvroType::Union),
        Value::Object(obj) => {
            let ty = obj
                .get("type")
                .ok_or_else(|| "type object without \"type\"".to_string())?;
            let logical = obj
                .get("logicalType")
                .and_then(Value::as_str)
                .map(String::from);
            let kind = match ty {
                Value::String(s) => s.as_str(),
                // {"type": {...}} or {"type": [...]}: a wrapped type.
                other => return parse_value(other, named, ns, depth + 1),
            };
            let name = obj.get("name").and_then(Value::as_str);
            let ns = obj.get("namespace").and_then(Value::as_str).or(ns);
            let parsed = match kind {
                "int" => AvroType::Int(logical),
                "long" => AvroType::Long(logical),
                "record" | "error" => {
                    let fields = obj
                        .get("fields")
                        .and_then(Value::as_array)
                        .ok_or("record without \"fields\"")?;
                    // Register a placeholder first so a recursive reference fails cleanly.
                    let mut out = Vec::with_capacity(fields.len());
                    for f in fields {
                        let fname = f
                            .get("name")
                            .and_then(Value::as_str)
                            .ok_or("record field without \"name\"")?;
                        let fty = f.get("type").ok_or("record field without \"type\"")?;
                        out.push((fname.to_string(), parse_value(fty, named, ns, depth + 1)?));
                    }
                    AvroType::Record(out)
                }
                "enum" => AvroType::Enum(
                    obj.get("symbols")
                        .and_then(Value::as_array)
                        .ok_or("enum without \"symbols\"")?
                        .iter()
                        .map(|s| {
                            s.as_str()
                                .map(String::from)
                                .ok_or("enum symbol is not a string")
                        })
                        .collect::<Result<_, _>>()?,
                ),
                "fixed" => AvroType::Fixed(
                    obj.get("size")
                        .and_then(Value::as_u64)
                        .ok_or("fixed without \"size\"")? as usize,
                ),
                "array" => AvroType::Array(Box::new(parse_value(
                    obj.get("items").ok_or("array without \"items\"")?,
                    named,
                    ns,
                    depth + 1,
                )?)),
                "map" => AvroType::Map(Box::new(parse_value(
                    obj.get("values").ok_or("map without \"values\"")?,
                    named,
                    ns,
                    depth + 1,
                )?)),
                other => primitive(other)
                    .or_else(|| lookup(named, other, ns))
                    .ok_or_else(|| format!("unknown type {other:?}"))?,
            };
            if let (Some(name), true) =
                (name, matches!(kind, "record" | "error" | "enum" | "fixed"))
            {
                named.insert(full_name(name, ns), parsed.clone());
                named.insert(name.to_string(), parsed.clone());
            }
            Ok(parsed)
        }
        _ => Err(format!("not a schema: {v}")),
    }
}

fn primitive(name: &str) -> Option<AvroType> {
    Some(match name {
        "null" => AvroType::Null,
        "boolean" => AvroType::Boolean,
        "int" => AvroType::Int(None),
        "long" => AvroType::Long(None),
        "float" => AvroType::Float,
        "double" => AvroType::Double,
        "bytes" => AvroType::Bytes,
        "string" => AvroType::String,
        _ => return None,
    })
}

fn lookup(named: &HashMap<String, AvroType>, name: &str, ns: Option<&str>) -> Option<AvroType> {
    named
        .get(&full_name(name, ns))
        .or_else(|| named.get(name))
        .cloned()
}

fn full_name(name: &str, ns: Option<&str>) -> String {
    match ns {
        Some(ns) if !name.contains('.') && !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_event_schema() {
        let AvroType::Record(fields) = parse(notiflow_schema::AVRO_SCHEMA).unwrap() else {
            panic!("not a record");
        };
        let names: Vec<_> = fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[0], "event_id");
        assert_eq!(fields.len(), 11);
        assert_eq!(fields[9].1, AvroType::Long(Some("timestamp-micros".into())));
        assert!(matches!(&fields[4].1, AvroType::Enum(s) if s.len() == 5));
    }

    #[test]
    fn resolves_named_references_and_rejects_garbage() {
        let s = r#"{"type":"record","name":"R","namespace":"a.b","fields":[
            {"name":"x","type":{"type":"fixed","name":"F","size":4}},
            {"name":"y","type":"F"},{"name":"z","type":"a.b.F"}]}"#;
        let AvroType::Record(f) = parse(s).unwrap() else {
            panic!()
        };
        assert_eq!(f[1].1, AvroType::Fixed(4));
        assert_eq!(f[2].1, AvroType::Fixed(4));
        assert!(parse("{\"type\":\"nope\"}").is_err());
        assert!(parse("not json").is_err());
        assert!(parse(r#"{"type":"record","fields":[{"name":"a"}]}"#).is_err());
    }
}
