//! The notiflow event model (SPEC §2), shared by every other crate.
//!
//! ```text
//!  producers ──▶ Kafka `whatsapp.status.v1` ──▶ ingest (decode + validate) ──▶ Event<'_>
//!                                                                 │
//!                              aggregator (Redis counters) ◀──────┴──────▶ lake (Iceberg rows)
//! ```
//!
//! This crate is a leaf: it holds the event type, its enums, the field limits,
//! the Avro schema text, time helpers and the config types that keep
//! secrets from printing, and depends on nothing but `serde`.
//! Decoding from bytes lives in `notiflow-ingest`; this crate only says what a
//! valid event *is*.

pub mod counters;
pub mod event;
pub mod secret;
pub mod time;

pub use event::{Category, Country, Event, PricingType, Status};
pub use time::Micros;

/// Default topic of status events (SPEC §2).
pub const STATUS_TOPIC: &str = "whatsapp.status.v1";
/// Default dead-letter topic for records that break a rule of SPEC §2.
pub const DLQ_TOPIC: &str = "whatsapp.status.v1.dlq";

/// The Avro schema (`.avsc`) of one status event, as registered under
/// subject `whatsapp.status.v1-value`.
pub const AVRO_SCHEMA: &str = include_str!("../avro/message_event.avsc");

/// The Avro schema with `pricing_type` (an optional field added with a
/// default, so it reads v1 records and v1 readers skip it): what producers
/// that send the pricing type register next.
pub const AVRO_SCHEMA_V2: &str = include_str!("../avro/message_event_v2.avsc");
