//! notiflow load generator: realistic WhatsApp status traffic with a ground truth.
//!
//! ```text
//!  Population (skewed clients) ─▶ Message lifecycles ─▶ heap by arrival ─▶ encode (JSON | Avro)
//!                                                                            │  + duplicates, malformed
//!                                                          Kafka topic ◀─────┤
//!                                                    ground truth file ◀─────┘ (TruthBuilder)
//! ```
//!
//! Deterministic: the same seed, start and settings give the same records, so
//! any later part (aggregator, lake, reports) can be reconciled exactly
//! against [`truth::GroundTruth`].

pub mod bench;
pub mod config;
pub mod fixture;
pub mod generator;
pub mod model;
pub mod rng;
pub mod run;
pub mod truth;

pub use config::GenConfig;
pub use generator::{Generator, Shape};
pub use run::{GenError, Report, RunOptions, run_blocking};
pub use truth::GroundTruth;
