//! Detailed and daily billing exports with DuckDB and DataFusion, on demand and on a schedule (SPEC §5).
//!
//! Not built yet: this crate only reserves its place in the data flow
//! (see the workspace README). Its issue describes what it will do.
