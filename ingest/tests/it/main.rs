//! Integration tests of ingest against the real broker started by `infra/up.sh`
//! (`KAFKA_BROKERS`, default 127.0.0.1:9092). Each test uses fresh topics.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod broker_down;
mod dlq;
mod dlq_timeout;
mod poison;
mod registry;
mod support;
