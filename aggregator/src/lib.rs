//! Per-minute, per-client counters in Redis, applied exactly once with the consumer offsets (SPEC §3).
//!
//! Not built yet: this crate only reserves its place in the data flow
//! (see the workspace README). Its issue describes what it will do.
