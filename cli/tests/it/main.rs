//! End-to-end tests of the `notiflow` binary against the real broker
//! (`KAFKA_BROKERS`, default 127.0.0.1:9092), each on fresh topics.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod aggregator;
mod config;
mod gen_truth;

use std::process::Command;

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
