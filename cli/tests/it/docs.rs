//! The documentation under `docs/` is the users' contract, so the parts of it
//! that restate the code are checked against the code: the event fields
//! against the Avro schema, the dead-letter reasons and headers against the
//! validator, the Redis keys against `Keys`, the lake columns against the
//! table schema, the billing columns against the billing file's schema,
//! the API paths against the OpenAPI document, and every configuration key
//! and default against the embedded defaults. And no Markdown file of the
//! repository points outside it: a user who clones it has nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use notiflow_ingest::Reject;
use notiflow_schema::Status;
use notiflow_schema::counters::Keys;
use notiflow_schema::time::{minute_of, parse_rfc3339};
use utoipa::OpenApi;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn doc(name: &str) -> String {
    let path = repo().join("docs").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first cells of the table rows of `text` (`| cell | …`), without the
/// header and separator lines.
fn first_cells(text: &str) -> Vec<String> {
    table_rows(text).into_iter().map(|r| r[0].clone()).collect()
}

/// The cells of every table row of `text` that is not a header or separator.
fn table_rows(text: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = text.lines().map(str::trim_start).collect();
    let mut rows = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let is_row = line.starts_with('|');
        let is_separator = line.starts_with("|---") || line.starts_with("| ---");
        let next_is_separator = lines
            .get(i + 1)
            .is_some_and(|n| n.starts_with("|---") || n.starts_with("| ---"));
        if !is_row || is_separator || next_is_separator {
            continue;
        }
        rows.push(split_row(line));
    }
    rows
}

/// Splits a table row into trimmed cells, keeping `\|` inside a cell.
fn split_row(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    let mut cells = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek() == Some(&'|') {
            cells.last_mut().unwrap().push('|');
            chars.next();
        } else if c == '|' {
            cells.push(String::new());
        } else {
            cells.last_mut().unwrap().push(c);
        }
    }
    cells.iter().map(|c| c.trim().to_string()).collect()
}

/// `` `x` `` → `x`; other text as it is.
fn unquote(cell: &str) -> &str {
    cell.strip_prefix('`')
        .and_then(|c| c.strip_suffix('`'))
        .unwrap_or(cell)
}

#[test]
fn the_event_fields_are_the_avro_schemas() {
    let text = doc("events.md");
    // v2 is v1 plus `pricing_type`: the page documents every field of both.
    let avro: serde_json::Value = serde_json::from_str(notiflow_schema::AVRO_SCHEMA_V2).unwrap();
    let fields = avro["fields"].as_array().unwrap();
    let rows: BTreeMap<String, Vec<String>> = table_rows(&text)
        .into_iter()
        .filter(|r| r.len() == 4)
        .map(|r| (unquote(&r[0]).to_string(), r))
        .collect();
    let mut names = BTreeSet::new();
    for f in fields {
        let name = f["name"].as_str().unwrap();
        names.insert(name.to_string());
        let row = rows
            .get(name)
            .unwrap_or_else(|| panic!("docs/events.md has no row for Avro field `{name}`"));
        let avro_type = &row[2];
        let want = match &f["type"] {
            serde_json::Value::String(t) => format!("`{t}`"),
            serde_json::Value::Array(branches) => {
                let b: Vec<String> = branches
                    .iter()
                    .map(|b| match b.as_str() {
                        Some(t) => format!("\"{t}\""),
                        None => format!("enum {}", b["name"].as_str().unwrap()),
                    })
                    .collect();
                format!("`[{}]`", b.join(", "))
            }
            serde_json::Value::Object(o) if o["type"] == "enum" => {
                format!("`enum {}`", o["name"].as_str().unwrap())
            }
            serde_json::Value::Object(o) => format!(
                "`{}` (`{}`)",
                o["type"].as_str().unwrap(),
                o["logicalType"].as_str().unwrap()
            ),
            other => panic!("unexpected Avro type {other}"),
        };
        assert_eq!(avro_type, &want, "Avro type of `{name}` in docs/events.md");
        let symbols = f["type"]["symbols"].as_array().or_else(|| {
            f["type"]
                .as_array()
                .and_then(|b| b.iter().find_map(|b| b["symbols"].as_array()))
        });
        if let Some(symbols) = symbols {
            for s in symbols {
                let s = s.as_str().unwrap();
                assert!(
                    row[3].contains(&format!("`{s}`")),
                    "docs/events.md: `{name}` does not list `{s}`"
                );
            }
        }
    }
    let documented: BTreeSet<String> = rows.keys().cloned().collect();
    assert_eq!(
        documented, names,
        "docs/events.md fields vs the Avro schema"
    );
    // The enums the validator knows are the ones the page lists.
    for s in Status::ALL {
        assert!(
            text.contains(&format!("`{}`", s.as_str())),
            "{}",
            s.as_str()
        );
    }
}

/// One value of every rejection reason (the match keeps the list whole: a
/// new variant does not compile until it is added here and documented).
fn every_reject() -> Vec<Reject> {
    let all = vec![
        Reject::EmptyValue,
        Reject::InvalidUtf8(0),
        Reject::JsonSyntax(String::new()),
        Reject::JsonType(String::new()),
        Reject::MissingField("event_id"),
        Reject::BadEnum {
            field: "status",
            value: String::new(),
        },
        Reject::BadTimestamp(String::new()),
        Reject::FutureTimestamp { ahead_secs: 301 },
        Reject::FieldLength {
            field: "event_id",
            len: 0,
            min: 1,
            max: 128,
        },
        Reject::BadClientId,
        Reject::BadRecipient,
        Reject::BadCountry(String::new()),
        Reject::ErrorCodeWithoutFailure(Status::Sent),
        Reject::KeyMissing,
        Reject::KeyMismatch,
        Reject::AvroTruncated,
        Reject::AvroMalformed("varint"),
        Reject::UnknownSchemaId(9),
        Reject::IncompatibleSchema {
            id: 9,
            why: String::new(),
        },
        Reject::UnknownFormat(String::new()),
        Reject::MissingTimestamp,
    ];
    for r in &all {
        match r {
            Reject::EmptyValue
            | Reject::InvalidUtf8(_)
            | Reject::JsonSyntax(_)
            | Reject::JsonType(_)
            | Reject::MissingField(_)
            | Reject::BadEnum { .. }
            | Reject::BadTimestamp(_)
            | Reject::FutureTimestamp { .. }
            | Reject::FieldLength { .. }
            | Reject::BadClientId
            | Reject::BadRecipient
            | Reject::BadCountry(_)
            | Reject::ErrorCodeWithoutFailure(_)
            | Reject::KeyMissing
            | Reject::KeyMismatch
            | Reject::AvroTruncated
            | Reject::AvroMalformed(_)
            | Reject::UnknownSchemaId(_)
            | Reject::IncompatibleSchema { .. }
            | Reject::UnknownFormat(_)
            | Reject::MissingTimestamp => {}
        }
    }
    all
}

#[test]
fn every_dead_letter_reason_and_header_is_documented() {
    let text = doc("events.md");
    let documented: BTreeSet<String> = first_cells(&text)
        .iter()
        .map(|c| unquote(c).to_string())
        .collect();
    let codes: BTreeSet<String> = every_reject()
        .iter()
        .map(|r| r.code().to_string())
        .collect();
    let reasons: BTreeSet<String> = table_rows(&text)
        .iter()
        .filter(|r| r.len() == 2 && !r[0].contains('.'))
        .map(|r| unquote(&r[0]).to_string())
        .collect();
    assert_eq!(
        reasons, codes,
        "docs/events.md reason table vs Reject::code"
    );
    for h in [
        notiflow_ingest::dlq::REASON_HEADER,
        notiflow_ingest::dlq::DETAIL_HEADER,
        notiflow_ingest::dlq::TOPIC_HEADER,
        notiflow_ingest::dlq::PARTITION_HEADER,
        notiflow_ingest::dlq::OFFSET_HEADER,
        notiflow_ingest::dlq::TRUNCATED_HEADER,
        notiflow_ingest::dlq::ORIGINAL_SIZE_HEADER,
        notiflow_ingest::dlq::ORIGINAL_SHA256_HEADER,
    ] {
        assert!(documented.contains(h), "docs/events.md lacks header {h}");
    }
    assert!(text.contains(notiflow_schema::STATUS_TOPIC));
    assert!(text.contains(notiflow_schema::DLQ_TOPIC));
}

#[test]
fn the_redis_keys_on_the_counters_page_are_the_keys_notiflow_writes() {
    let text = doc("counters.md");
    let keys = Keys::new("nf");
    let t = parse_rfc3339("2026-11-23T22:07:00Z").unwrap();
    let m = minute_of(t);
    let group = "notiflow-aggregator";
    let topic = notiflow_schema::STATUS_TOPIC;
    let want = [
        keys.minutes("acme", m),
        keys.hours("acme", m),
        keys.top(m),
        keys.clients(),
        keys.deltas(),
        keys.offsets(group, topic),
        keys.dedup(group, topic, 3, notiflow_ingest::dedup::generation(t)),
        keys.stats(group, topic),
    ];
    let documented: Vec<String> = first_cells(&text)
        .iter()
        .map(|c| unquote(c).to_string())
        .collect();
    assert_eq!(documented, want, "docs/counters.md key table vs Keys");
    for slot in 0..notiflow_schema::counters::SLOTS {
        let name = notiflow_schema::counters::slot_name(slot);
        assert!(text.contains(&format!("`{name}`")), "slot {name}");
    }
}

#[test]
fn the_lake_columns_are_the_tables() {
    let text = doc("lake.md");
    let schema = notiflow_lake::rows::table_schema().unwrap();
    let arrow = notiflow_lake::rows::arrow_schema(&schema).unwrap();
    let columns: Vec<String> = arrow.fields().iter().map(|f| f.name().clone()).collect();
    let documented: Vec<String> = table_rows(&text)
        .iter()
        .filter(|r| r.len() == 3)
        .map(|r| unquote(&r[0]).to_string())
        .collect();
    assert_eq!(
        documented, columns,
        "docs/lake.md columns vs the table schema"
    );
    for f in arrow.fields() {
        let row = table_rows(&text)
            .into_iter()
            .find(|r| unquote(&r[0]) == f.name())
            .unwrap();
        assert_eq!(
            row[1].ends_with(", optional"),
            f.is_nullable(),
            "nullability of {} in docs/lake.md",
            f.name()
        );
    }
}

#[test]
fn the_billing_file_columns_are_the_billing_schema() {
    let text = doc("billing.md");
    let header: Vec<String> = notiflow_reports::billing::schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert!(
        text.lines().any(|l| l == header.join(",")),
        "docs/billing.md has no CSV header line {}",
        header.join(",")
    );
    // The demo card the page quotes a BR marketing price from.
    let card = std::fs::read_to_string(repo().join("reports/rate-card.toml")).unwrap();
    assert!(
        card.contains("price_micros = 62500"),
        "reports/rate-card.toml changed"
    );
}

#[test]
fn every_api_path_is_documented() {
    let text = doc("api.md");
    let documented: BTreeSet<String> = first_cells(&text)
        .iter()
        .filter_map(|c| unquote(c).split_once(' ').map(|(_, p)| p.to_string()))
        .collect();
    let api = notiflow_api::openapi::ApiDoc::openapi();
    for path in api.paths.paths.keys() {
        assert!(
            documented.contains(path),
            "docs/api.md has no row for {path}"
        );
    }
    // The document does not list itself.
    for path in documented.iter().filter(|p| *p != "/openapi.json") {
        assert!(
            api.paths.paths.contains_key(path),
            "docs/api.md documents {path}, which the API does not serve"
        );
    }
}

/// Every leaf of the defaults as `dotted.key` → its value as TOML text. A
/// table's keys recurse; an array of tables recurses into its first table
/// under the array's own path; an empty table is a leaf (`{}`).
fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, String>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) if !t.is_empty() => flatten(&path, t, out),
            toml::Value::Array(a) if a.first().is_some_and(toml::Value::is_table) => {
                for t in a.iter().filter_map(toml::Value::as_table) {
                    flatten(&path, t, out);
                }
            }
            other => {
                out.entry(path).or_insert_with(|| other.to_string());
            }
        }
    }
}

#[test]
fn the_configuration_reference_lists_every_key_with_its_default() {
    let text = doc("configuration.md");
    let defaults: toml::Table = include_str!("../../config/default.toml").parse().unwrap();
    let mut want = BTreeMap::new();
    flatten("", &defaults, &mut want);
    let rows: BTreeMap<String, String> = table_rows(&text)
        .into_iter()
        .filter(|r| r.len() == 3)
        .map(|r| (unquote(&r[0]).to_string(), r[1].clone()))
        .collect();
    for (key, value) in &want {
        let documented = rows
            .get(key)
            .unwrap_or_else(|| panic!("docs/configuration.md has no row for `{key}`"));
        assert_eq!(
            documented,
            &format!("`{value}`"),
            "default of `{key}` in docs/configuration.md"
        );
    }
    for (key, default) in &rows {
        if !want.contains_key(key) {
            assert_eq!(
                default, "unset",
                "docs/configuration.md documents `{key}` with a default, but cli/config/default.toml has no such key"
            );
            let section = key.rsplit_once('.').map(|(s, _)| s).unwrap();
            assert!(
                want.keys().any(|k| k.starts_with(&format!("{section}.")))
                    || want.contains_key(section),
                "`{key}`: no section `{section}` in the defaults"
            );
        }
    }
    // Every section of the config has a heading.
    for section in defaults.keys() {
        assert!(
            text.contains(&format!("`[{section}]`"))
                || text.contains(&format!("`[{section}]` and")),
            "docs/configuration.md has no heading for [{section}]"
        );
    }
}

/// Relative link targets (`](target)`) and backticked repository paths of a
/// Markdown file.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        let tail = &rest[i + 2..];
        let end = tail.find(')').unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn no_markdown_file_points_outside_the_repository() {
    let root = repo();
    let listed = std::process::Command::new("git")
        .args([
            "ls-files",
            "--cached",
            "--others",
            "--exclude-standard",
            "*.md",
        ])
        .current_dir(&root)
        .output()
        .unwrap();
    let files: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(files.iter().any(|f| f == "README.md"), "{files:?}");
    assert!(files.iter().any(|f| f == "docs/events.md"), "{files:?}");
    let canonical_root = root.canonicalize().unwrap();
    for f in &files {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        assert!(
            !text.contains("../shared")
                && !text.contains("shared/SPEC.md")
                && !text.contains("shared/STYLE.md"),
            "{f} points at shared/, which is not part of the repository"
        );
        for target in links(&text) {
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let file = target.split('#').next().unwrap();
            let dir = root.join(f);
            let resolved = dir.parent().unwrap().join(file);
            let resolved = resolved
                .canonicalize()
                .unwrap_or_else(|e| panic!("{f}: link {target} does not resolve: {e}"));
            assert!(
                resolved.starts_with(&canonical_root),
                "{f}: link {target} leaves the repository"
            );
        }
    }
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.contains("docs/"), "the README links the docs");
}
