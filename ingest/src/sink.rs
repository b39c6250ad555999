//! What a sink needs from ingest, in one place. The aggregator and the
//! lake writer are consumer-group members that keep their offsets and
//! dedup state with their output; each takes from here, and only from
//! here: the source of records and their decoder, the member and its
//! partition hand-off, which records a partition takes (the cursor), the
//! dedup window, the schema holds, the one retry policy, and the broker
//! helpers a member starts with. The modules behind it stay public for
//! ingest's own service, the CLI and the tests.

pub use crate::codec::{Decoder, RecordView};
pub use crate::config::{ConfigError, KafkaConfig};
pub use crate::cursor::{Admit, Anchor, Cursor, Hold, LastTaken};
pub use crate::dedup::{Dedup, GENERATION_MICROS, bounded_time, fingerprint, generation, pack};
pub use crate::error::IngestError;
pub use crate::failpoint;
pub use crate::kafka::{ensure_topics, partition_count, wait_for_broker};
pub use crate::member::{Member, MemberState, SINK_CONSUMER, StateStore, log_hold, set_gauges};
pub use crate::rebalance::{Change, Handoff, forget_partition};
pub use crate::registry::SchemaRegistry;
pub use crate::retry::{Backoff, MIN_DELAY};
pub use crate::schema_hold::SchemaHolds;
pub use crate::source::{Source, SourceRecord, now_micros, sleep_or_cancel, views};
