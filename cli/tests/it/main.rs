//! End-to-end tests of the `notiflow` binary against the real broker
//! (`KAFKA_BROKERS`, default 127.0.0.1:9092), each on fresh topics.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod aggregator;
mod api;
mod components;
mod config;
mod dashboard;
mod demo;
mod differential;
mod docs;
mod gen_truth;
mod http;
mod lake;
mod procs;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use notiflow_ingest::KafkaConfig;
use notiflow_ingest::kafka::client_config;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::procs::Proc;

/// The built binary.
pub fn notiflow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_notiflow"))
}

/// Broker address from `KAFKA_BROKERS`, loopback by default.
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A topic name no other test or run uses.
pub fn fresh_topic(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("it.{tag}.{}.{nanos}", std::process::id())
}

/// Starts `notiflow gen` with `config`: `events` records at `rate` (or as
/// fast as the broker takes them), 1% malformed and 1% duplicates, seed 31,
/// with its ground truth written to `truth`.
pub fn generator(config: &Path, truth: &Path, events: u64, rate: Option<&str>) -> Proc {
    Proc(
        gen_command(config, truth, events, rate, 31)
            .spawn()
            .unwrap(),
    )
}

/// The command [`generator`] runs, with another seed (each seed has its own
/// message and event ids), for a caller to add an environment to.
pub fn gen_command(
    config: &Path,
    truth: &Path,
    events: u64,
    rate: Option<&str>,
    seed: u64,
) -> Command {
    let mut c = notiflow();
    c.arg("--config")
        .arg(config)
        .args(["gen", "--events", &events.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--malformed-share", "0.01", "--duplicate-share", "0.01"])
        .arg("--truth")
        .arg(truth)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    match rate {
        Some(r) => c.args(["--rate", r]),
        None => c.arg("--fast"),
    };
    c
}

/// Asserts that two maps of cells (a sink's, the ground truth's) are equal,
/// naming up to ten cells that differ: `key: want …, got …`.
pub fn assert_same_cells<'a, K, V>(
    want: impl IntoIterator<Item = (&'a K, &'a V)>,
    got: impl IntoIterator<Item = (&'a K, &'a V)>,
    what: &str,
) where
    K: Ord + std::fmt::Debug + 'a,
    V: PartialEq + std::fmt::Debug + 'a,
{
    let want: std::collections::BTreeMap<&K, &V> = want.into_iter().collect();
    let got: std::collections::BTreeMap<&K, &V> = got.into_iter().collect();
    let diffs: Vec<String> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k:?}: want {v:?}, got {:?}", got.get(k)))
        .chain(
            got.iter()
                .filter(|(k, _)| !want.contains_key(*k))
                .map(|(k, v)| format!("{k:?}: want nothing, got {v:?}")),
        )
        .collect();
    assert!(
        diffs.is_empty(),
        "{what}: {} cells differ, e.g. {:?}",
        diffs.len(),
        &diffs[..diffs.len().min(10)]
    );
}

/// High watermark of every partition of the event topic.
pub fn highs(kafka: &KafkaConfig) -> Vec<i64> {
    let c: BaseConsumer = client_config(kafka).create().unwrap();
    (0..kafka.partitions)
        .map(|p| {
            c.fetch_watermarks(&kafka.topic, p, Duration::from_secs(30))
                .unwrap()
                .1
        })
        .collect()
}

/// A plain HTTP/1.0 GET on loopback; the body.
/// [`http_get`], or "" while nothing listens there yet (a process starting).
pub fn http_get_or_empty(addr: &str, path: &str) -> String {
    if std::net::TcpStream::connect(addr).is_err() {
        return String::new();
    }
    http_get(addr, path)
}

pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"),
        "{reply}"
    );
    reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}
