//! Driving the generator into the broker (or nowhere, to measure encoding).
//!
//! Sending uses librdkafka's threaded producer with idempotence on: records
//! keep their per-partition order and are neither lost nor doubled by
//! retries. A run fails if any delivery fails, because its ground truth
//! would then be wrong.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use notiflow_ingest::KafkaConfig;
use notiflow_ingest::kafka::client_config;
use notiflow_schema::Micros;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tokio_util::sync::CancellationToken;

use crate::config::{GenConfig, parse_rate};
use crate::generator::{Generator, Shape};
use crate::truth::TruthBuilder;

/// Errors of a generator run.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// A setting is wrong (field, reason).
    #[error("config field `{0}`: {1}")]
    Config(&'static str, String),
    /// The broker refused the producer or a record.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// Deliveries failed: the topic does not hold what the ground truth says.
    #[error("{0} records were not delivered")]
    Undelivered(u64),
    /// Writing the ground truth failed.
    #[error("ground truth {path}: {source}")]
    Truth {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Broker setup failed.
    #[error(transparent)]
    Ingest(#[from] notiflow_ingest::IngestError),
}

/// What to do in one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop after this many records (`None`: until shutdown).
    pub events: Option<u64>,
    /// Send as fast as possible (simulated time still follows the rate).
    pub fast: bool,
    /// Simulated start; default: now, or for `fast` runs with `events`, early
    /// enough that the last event is not in the future.
    pub start: Option<Micros>,
    /// Stamp each record with its simulated arrival time instead of
    /// leaving the timestamp to the producer's clock.
    pub stamp: bool,
    /// Where to write the ground truth.
    pub truth: Option<PathBuf>,
    /// Encode only; send nothing (measures the generator itself).
    pub encode_only: bool,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// Records produced (and, unless encode-only, acknowledged by the broker).
    pub records: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Simulated start used.
    pub start: Micros,
}

impl Report {
    /// Records per second of wall time.
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Counts delivery reports.
#[derive(Default, Clone)]
pub struct Deliveries {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                tracing::error!(error = %e, "record not delivered");
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// A throughput-tuned idempotent producer (also used by the bare-producer benchmark).
pub fn producer(kafka: &KafkaConfig) -> Result<ThreadedProducer<Deliveries>, KafkaError> {
    let mut cfg = client_config(kafka);
    for (k, v) in [
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("linger.ms", "20"),
        ("batch.size", "1000000"),
        ("queue.buffering.max.messages", "1000000"),
        ("queue.buffering.max.kbytes", "1048576"),
        // Java clients' partitioner: the same key lands on the same partition
        // whichever client produced it, so duplicates meet their originals.
        ("partitioner", "murmur2_random"),
    ] {
        if !kafka.properties.contains_key(k) {
            cfg.set(k, v);
        }
    }
    cfg.create_with_context(Deliveries::default())
}

/// Sends one record, waiting (polling) while the local queue is full;
/// `timestamp_ms` is its timestamp (`None`: the producer's clock).
pub fn send_blocking(
    p: &ThreadedProducer<Deliveries>,
    topic: &str,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    content_type: Option<&str>,
    timestamp_ms: Option<i64>,
) -> Result<(), KafkaError> {
    let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
    if let Some(ts) = timestamp_ms {
        rec = rec.timestamp(ts);
    }
    if let Some(k) = key {
        rec = rec.key(k);
    }
    if let Some(v) = value {
        rec = rec.payload(v);
    }
    if let Some(ct) = content_type {
        rec = rec.headers(OwnedHeaders::new_with_capacity(1).insert(Header {
            key: "content-type",
            value: Some(ct),
        }));
    }
    loop {
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                p.poll(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Runs the generator until `opts.events` or `shutdown`, writing the truth if asked.
pub fn run_blocking(
    kafka: &KafkaConfig,
    cfg: &GenConfig,
    opts: &RunOptions,
    shutdown: &CancellationToken,
) -> Result<Report, GenError> {
    cfg.validate()
        .map_err(|(f, why)| GenError::Config(f, why))?;
    let rate = parse_rate(&cfg.rate).map_err(|e| GenError::Config("gen.rate", e.to_string()))?;
    let now = notiflow_ingest::source::now_micros();
    let start = opts.start.unwrap_or(match (opts.fast, opts.events) {
        // End the simulated stretch now, with a margin for the generator's
        // average-rate drift, so no event lies in the future.
        (true, Some(n)) => now - ((n as f64 / rate) * 1.1e6) as Micros - 60_000_000,
        _ => now,
    });
    let tz: chrono_tz::Tz = cfg
        .billing_tz
        .parse()
        .map_err(|_| GenError::Config("gen.billing_tz", cfg.billing_tz.clone()))?;
    let shape =
        Shape::from_config(cfg, start).map_err(|e| GenError::Config("gen.rate", e.to_string()))?;
    let truth = opts.truth.as_ref().map(|_| TruthBuilder::new(cfg.seed, tz));
    let mut generator = Generator::new(shape, truth);
    let producer = if opts.encode_only {
        None
    } else {
        Some(producer(kafka)?)
    };
    let paced = !opts.fast && !opts.encode_only;
    let began = Instant::now();
    let mut records = 0u64;
    while opts.events.is_none_or(|n| records < n) {
        if records.is_multiple_of(1024) && shutdown.is_cancelled() {
            break;
        }
        let rec = generator.next_record();
        if paced {
            // Simulated time runs with the wall clock from `start`.
            let due = Duration::from_micros((rec.arrival - start).max(0) as u64);
            if let Some(wait) = due.checked_sub(began.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        if let Some(p) = &producer {
            let stamp = opts.stamp.then_some(rec.arrival / 1000);
            send_blocking(p, &kafka.topic, rec.key, rec.value, rec.content_type, stamp)?;
        } else {
            std::hint::black_box(&rec);
        }
        records += 1;
    }
    if let Some(p) = &producer {
        p.flush(Duration::from_secs(120))?;
        let failed = p.context().failed.load(Ordering::Relaxed);
        let ok = p.context().ok.load(Ordering::Relaxed);
        if failed > 0 || ok != records {
            return Err(GenError::Undelivered(records - ok));
        }
    }
    let elapsed = began.elapsed();
    if let (Some(path), Some(truth)) = (&opts.truth, generator.finish_truth()) {
        truth.write(path).map_err(|source| GenError::Truth {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(Report {
        records,
        elapsed,
        start,
    })
}
