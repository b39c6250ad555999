//! The reports against a real lake (local warehouse or the S3-compatible
//! server of `infra/up.sh`) and a real SQLite ledger: billing equals the
//! generator's ground truth × the rate card, both engines write identical
//! bytes, the billing rules hold on crafted events, detail masking and bad
//! input, and the scheduler's catch-up, exclusivity and retries.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod billing;
mod common;
mod detail;
mod month;
mod schedule;
