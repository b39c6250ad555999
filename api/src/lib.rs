//! The axum HTTP API: counters, live SSE stream, report downloads, tenancy (SPEC §6).
//!
//! Not built yet: this crate only reserves its place in the data flow
//! (see the workspace README). Its issue describes what it will do.
