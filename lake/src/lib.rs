//! Detail rows into an Apache Iceberg table of Parquet files, committed exactly once (SPEC §4).
//!
//! Not built yet: this crate only reserves its place in the data flow
//! (see the workspace README). Its issue describes what it will do.
