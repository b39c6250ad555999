//! From record bytes to a validated [`Event`], or a [`Reject`] reason.
//!
//! The format is taken from the `content-type` header when present, else
//! sniffed (a Confluent Avro value starts with byte 0, JSON never does).
//! Avro plans are compiled once per schema id; [`Decoder::prepare`] asks the
//! registry for ids it has not seen, so [`Decoder::decode`] stays synchronous
//! and allocation-light.

pub mod avro;
pub mod avro_schema;
pub mod json;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notiflow_schema::{Event, Micros};

use crate::error::{IngestError, Reject};
use crate::registry::SchemaRegistry;
use crate::validate::{check_key, future_limit, validate};

/// The parts of a Kafka record that decoding reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordView<'a> {
    /// Record key (must be the message id).
    pub key: Option<&'a [u8]>,
    /// Record value.
    pub value: Option<&'a [u8]>,
    /// Value of the `content-type` header, if any.
    pub content_type: Option<&'a [u8]>,
    /// The record's timestamp as the log holds it (its identity: anchors).
    pub timestamp: Micros,
    /// The record's clock: its timestamp bounded by the reader's clock
    /// (`source::view_at`). The reference of the future-time rule, the
    /// dedup generation, the lake's watermark and `ingest_time`.
    pub clock: Micros,
    /// True when the record's producer stamped it (`CreateTime`): the
    /// timestamp is that producer's clock, not the broker's.
    pub producer_clock: bool,
}

/// Which encoding a value is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// UTF-8 JSON object.
    Json,
    /// Confluent-framed Avro.
    Avro,
}

impl Format {
    /// The format a record says or shows it is in.
    pub fn of(content_type: Option<&[u8]>, value: &[u8]) -> Result<Format, Reject> {
        match content_type {
            Some(ct) if mentions(ct, b"json") => Ok(Format::Json),
            Some(ct) if mentions(ct, b"avro") => Ok(Format::Avro),
            Some(ct) => Err(Reject::UnknownFormat(format!(
                "content-type {:?}",
                String::from_utf8_lossy(ct)
            ))),
            None if value.first() == Some(&avro::MAGIC) => Ok(Format::Avro),
            None => Ok(Format::Json),
        }
    }
}

/// Whether `text` contains `word`, ignoring ASCII case (no allocation: hot path).
fn mentions(text: &[u8], word: &[u8]) -> bool {
    text.windows(word.len())
        .any(|w| w.eq_ignore_ascii_case(word))
}

/// How long an id the registry did not know is answered `unknown_schema_id`
/// without asking again: a schema registered a little after its first
/// records (registry replicas lag) is picked up within this.
pub const SCHEMA_MISS_TTL: Duration = Duration::from_secs(60);

/// Registry lookups of one batch in flight at once.
pub const LOOKUPS_IN_FLIGHT: usize = 16;

/// Waits before asking the registry again for the ids it did not know, in
/// one batch: at most 0.6 s per batch, however many unknown ids it has, so
/// records with garbage ids cannot stall a partition.
const MISS_RETRIES: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(400)];

/// An id the registry did not know.
#[derive(Debug, Clone, Copy)]
struct Miss {
    first: Instant,
    asked: Instant,
}

/// How often an id that holds a partition is asked again.
pub const HELD_ID_RECHECK: Duration = Duration::from_secs(1);

/// Decodes and validates records; holds the compiled Avro plans.
pub struct Decoder {
    registry: SchemaRegistry,
    /// Schema id → plan, or the reason its records are rejected (an
    /// incompatible schema). A registered schema never changes, so these
    /// are kept.
    plans: HashMap<u32, Result<Arc<avro::Plan>, Reject>>,
    /// Ids the registry did not know: since when, and when it last said
    /// so. Asked again after `miss_ttl` (sooner while they hold a
    /// partition, [`Decoder::recheck`]); their records are dead letters
    /// only once the registry has not known them for its
    /// [`SchemaRegistry::unknown_id_grace`] ([`Decoder::undecided`]).
    misses: HashMap<u32, Miss>,
    miss_ttl: Duration,
}

impl Decoder {
    /// A decoder that resolves Avro schema ids through `registry`.
    pub fn new(registry: SchemaRegistry) -> Self {
        Decoder {
            registry,
            plans: HashMap::new(),
            misses: HashMap::new(),
            miss_ttl: SCHEMA_MISS_TTL,
        }
    }

    /// The same, remembering an unknown id for `ttl` instead of [`SCHEMA_MISS_TTL`].
    pub fn with_miss_ttl(mut self, ttl: Duration) -> Self {
        self.miss_ttl = ttl;
        self
    }

    /// [`Decoder::prepare`], retried with backoff ([`crate::retry`])
    /// while the registry cannot be reached; an error only when it is not
    /// retryable or `shutdown` came first.
    pub async fn prepare_retrying(
        &mut self,
        records: &[RecordView<'_>],
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<(), IngestError> {
        let mut backoff = crate::retry::Backoff::new();
        loop {
            match self.prepare(records).await {
                Ok(()) => return Ok(()),
                Err(e) if !e.is_retryable() || shutdown.is_cancelled() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "schema registry failed, retrying");
                    crate::source::sleep_or_cancel(shutdown, backoff.next_delay()).await;
                }
            }
        }
    }

    /// Resolves every schema id these records name that has no plan yet.
    /// Fails only when the registry cannot be asked (retry later). Each
    /// distinct id is asked once, [`LOOKUPS_IN_FLIGHT`] at a time, so a
    /// batch of thousands of distinct garbage ids costs seconds, not
    /// minutes. Ids the registry does not know are asked again twice
    /// (0.6 s for the whole batch), then their records become
    /// `unknown_schema_id` rejects until the miss is [`SCHEMA_MISS_TTL`]
    /// old.
    pub async fn prepare(&mut self, records: &[RecordView<'_>]) -> Result<(), IngestError> {
        let mut wanted = BTreeSet::new();
        for rec in records {
            let Some(value) = rec.value else { continue };
            if Format::of(rec.content_type, value) != Ok(Format::Avro) {
                continue;
            }
            let Ok(id) = avro::schema_id(value) else {
                continue;
            };
            if self.plans.contains_key(&id) {
                continue;
            }
            let fresh_miss = self
                .misses
                .get(&id)
                .is_some_and(|m| m.asked.elapsed() < self.miss_ttl);
            if !fresh_miss {
                wanted.insert(id);
            }
        }
        let mut unknown = self.resolve_all(wanted.into_iter().collect()).await?;
        for wait in MISS_RETRIES {
            if unknown.is_empty() {
                break;
            }
            tokio::time::sleep(wait).await;
            unknown = self.resolve_all(unknown).await?;
        }
        if !unknown.is_empty() {
            tracing::warn!(
                ids = unknown.len(),
                first = ?&unknown[..unknown.len().min(5)],
                "the schema registry has no such ids; their records are rejected for now"
            );
            self.missed(unknown);
        }
        Ok(())
    }

    /// The registry said it does not know `ids`, now.
    fn missed(&mut self, ids: Vec<u32>) {
        let now = Instant::now();
        for id in ids {
            self.misses
                .entry(id)
                .and_modify(|m| m.asked = now)
                .or_insert(Miss {
                    first: now,
                    asked: now,
                });
        }
    }

    /// Asks the registry for `ids`, [`LOOKUPS_IN_FLIGHT`] at a time, and
    /// keeps what it knows; the ids it does not know, sorted. An error
    /// (the registry cannot be asked) comes after every answer that did
    /// arrive was kept.
    async fn resolve_all(&mut self, ids: Vec<u32>) -> Result<Vec<u32>, IngestError> {
        use futures::stream::{self, StreamExt};
        let registry = &self.registry;
        let answers: Vec<(u32, Result<Option<String>, IngestError>)> = stream::iter(ids)
            .map(|id| async move { (id, registry.fetch(id).await) })
            .buffer_unordered(LOOKUPS_IN_FLIGHT)
            .collect()
            .await;
        let mut unknown = Vec::new();
        let mut failed = None;
        for (id, answer) in answers {
            match answer {
                Ok(Some(text)) => self.learn(id, &text),
                Ok(None) => unknown.push(id),
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        unknown.sort_unstable();
        Ok(unknown)
    }

    /// Asks the registry again, once, for those of `ids` it did not know
    /// and has not been asked about for [`HELD_ID_RECHECK`] (ids that hold
    /// a partition: a registry that learns them late is seen within a
    /// second).
    pub async fn recheck(&mut self, ids: &[u32]) -> Result<(), IngestError> {
        let due: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|id| {
                !self.plans.contains_key(id)
                    && self
                        .misses
                        .get(id)
                        .is_none_or(|m| m.asked.elapsed() >= HELD_ID_RECHECK)
            })
            .collect();
        let unknown = self.resolve_all(due).await?;
        self.missed(unknown);
        Ok(())
    }

    /// The schema id of `rec` if the registry has not decided it yet: it
    /// did not know the id, but not for its whole grace. Such a record is
    /// neither decoded nor dead-lettered: its partition waits
    /// (`schema_hold`), so every consumer group reaches the same verdict
    /// unless the registry learns the id only after the grace.
    pub fn undecided(&self, rec: &RecordView<'_>) -> Option<u32> {
        let value = rec.value?;
        if Format::of(rec.content_type, value) != Ok(Format::Avro) {
            return None;
        }
        let id = avro::schema_id(value).ok()?;
        (!self.is_decided(id)).then_some(id)
    }

    /// True if some id the registry did not know is still within its
    /// grace: only then can a record be [`Decoder::undecided`] (every id
    /// of a prepared batch has a plan or a miss).
    pub fn any_undecided(&self) -> bool {
        let grace = self.registry.unknown_id_grace();
        !grace.is_zero() && self.misses.values().any(|m| m.first.elapsed() < grace)
    }

    /// True when the registry knows `id`, or has not known it for its
    /// whole grace (its records are dead letters).
    pub fn is_decided(&self, id: u32) -> bool {
        let grace = self.registry.unknown_id_grace();
        self.plans.contains_key(&id)
            || grace.is_zero()
            || self
                .misses
                .get(&id)
                .is_some_and(|m| m.first.elapsed() >= grace)
    }

    /// Compiles the schema the registry gave for `id`.
    fn learn(&mut self, id: u32, text: &str) {
        let plan = avro::Plan::compile(id, text).map(Arc::new);
        if let Err(e) = &plan {
            tracing::warn!(schema_id = id, reason = %e, "Avro schema id cannot be decoded");
        }
        self.plans.insert(id, plan);
        self.misses.remove(&id);
    }

    /// Decodes and validates one record. Avro ids must have been [`prepare`](Self::prepare)d.
    pub fn decode<'a>(&self, rec: &RecordView<'a>) -> Result<Event<'a>, Reject> {
        // `clock` is NO_TIMESTAMP exactly when the record has none (view_at).
        if rec.clock == crate::source::NO_TIMESTAMP {
            return Err(Reject::MissingTimestamp);
        }
        let value = match rec.value {
            None | Some([]) => return Err(Reject::EmptyValue),
            Some(v) => v,
        };
        let event = match Format::of(rec.content_type, value)? {
            Format::Json => json::decode(value)?,
            Format::Avro => {
                let id = avro::schema_id(value)?;
                match self.plans.get(&id) {
                    Some(Ok(plan)) => plan.decode(&value[avro::HEADER_LEN..])?,
                    Some(Err(reject)) => return Err(reject.clone()),
                    None => return Err(Reject::UnknownSchemaId(id)),
                }
            }
        };
        validate(&event, rec.clock, future_limit(rec.producer_clock))?;
        check_key(rec.key, &event.message_id)?;
        Ok(event)
    }
}
