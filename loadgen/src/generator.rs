//! The record stream: an event-driven simulation of messages and statuses.
//!
//! New messages start at the target rate; each schedules its statuses (see
//! [`crate::model`]) in a heap ordered by arrival time, and records leave in
//! arrival order, so out-of-order and late statuses come out naturally.
//! Duplicates repeat a recent record byte for byte; malformed records come
//! from the ingest corpus. Memory is bounded by the statuses in flight
//! (minutes of traffic) plus, when a ground truth is kept, one entry per
//! billable message.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use notiflow_ingest::RecordView;
use notiflow_ingest::codec::{avro, json};
use notiflow_ingest::corpus::{self, CorpusRecord};
use notiflow_ingest::registry::BUILTIN_SCHEMA_ID_V2;
use notiflow_schema::{Event, Micros};

use crate::model::{Message, Population, StatusEvent, lifecycle};
use crate::rng::Rng;
use crate::truth::TruthBuilder;

/// Average statuses per message under the model (measured; keeps the event rate on target).
pub const EVENTS_PER_MESSAGE: f64 = 3.42;

/// `content-type` of JSON records.
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// `content-type` of Confluent Avro records.
pub const AVRO_CONTENT_TYPE: &str = "application/vnd.confluent.avro";

/// Shape of the generated traffic.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Seed of every random choice.
    pub seed: u64,
    /// Number of clients.
    pub clients: usize,
    /// Events per second of simulated time.
    pub rate: f64,
    /// Simulated time of the first message.
    pub start: Micros,
    /// Share of Avro records.
    pub avro_share: f64,
    /// Share of valid records with a `content-type` header.
    pub content_type_share: f64,
    /// Share of duplicate records.
    pub duplicate_share: f64,
    /// Share of malformed records.
    pub malformed_share: f64,
}

impl Shape {
    /// The shape a validated [`GenConfig`](crate::GenConfig) describes, starting at `start`.
    pub fn from_config(
        cfg: &crate::GenConfig,
        start: Micros,
    ) -> Result<Shape, crate::config::RateError> {
        Ok(Shape {
            seed: cfg.seed,
            clients: cfg.clients,
            rate: crate::config::parse_rate(&cfg.rate)?,
            start,
            avro_share: cfg.avro_share,
            content_type_share: cfg.content_type_share,
            duplicate_share: cfg.duplicate_share,
            malformed_share: cfg.malformed_share,
        })
    }
}

/// What kind of record came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A new valid event.
    Valid,
    /// An exact copy of an earlier record.
    Duplicate,
    /// A corpus record that must be dead-lettered.
    Malformed,
}

/// One record to send; borrows the generator's buffers until the next call.
#[derive(Debug)]
pub struct Record<'a> {
    /// Record key (`None` only for corpus records without one).
    pub key: Option<&'a [u8]>,
    /// Record value (`None` only for the corpus tombstone).
    pub value: Option<&'a [u8]>,
    /// `content-type` header, if any.
    pub content_type: Option<&'a str>,
    /// Simulated arrival time at the broker.
    pub arrival: Micros,
    /// What it is.
    pub kind: Kind,
}

impl<'a> Record<'a> {
    /// The decoding view a consumer would build from this record.
    pub fn view(&self) -> RecordView<'a> {
        RecordView {
            key: self.key,
            value: self.value,
            content_type: self.content_type.map(str::as_bytes),
            timestamp: self.arrival,
            clock: self.arrival,
            producer_clock: false,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    arrival: Micros,
    order: u64,
    msg: Message,
    ev: StatusEvent,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.arrival, self.order) == (o.arrival, o.order)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.arrival, self.order).cmp(&(o.arrival, o.order))
    }
}

const RECENT: usize = 4096;

/// The generator.
pub struct Generator {
    shape: Shape,
    rng: Rng,
    pop: Population,
    heap: BinaryHeap<Reverse<Pending>>,
    next_message_at: f64,
    message_gap_mean: f64,
    seq: u64,
    order: u64,
    clock: Micros,
    lifecycle: Vec<StatusEvent>,
    corpus: Vec<CorpusRecord>,
    corpus_next: usize,
    recent: Vec<(Vec<u8>, Vec<u8>, Option<&'static str>)>,
    recent_next: usize,
    key: Vec<u8>,
    value: Vec<u8>,
    truth: Option<TruthBuilder>,
}

impl Generator {
    /// A generator; pass a [`TruthBuilder`] to keep the ground truth.
    pub fn new(shape: Shape, truth: Option<TruthBuilder>) -> Self {
        let mut rng = Rng::new(shape.seed);
        let pop = Population::new(shape.clients, &mut rng);
        let message_gap_mean = 1e6 * EVENTS_PER_MESSAGE / shape.rate;
        Generator {
            next_message_at: shape.start as f64,
            clock: shape.start,
            shape,
            rng,
            pop,
            heap: BinaryHeap::new(),
            message_gap_mean,
            seq: 0,
            order: 0,
            lifecycle: Vec::with_capacity(8),
            corpus: corpus::malformed(),
            corpus_next: 0,
            recent: Vec::with_capacity(RECENT),
            recent_next: 0,
            key: Vec::with_capacity(64),
            value: Vec::with_capacity(512),
            truth,
        }
    }

    /// Client ids by index (for the ground truth).
    pub fn client_ids(&self) -> Vec<String> {
        self.pop.clients.iter().map(|c| c.id.clone()).collect()
    }

    /// Takes the ground truth out, finished.
    pub fn finish_truth(&mut self) -> Option<crate::truth::GroundTruth> {
        let ids = self.client_ids();
        self.truth.take().map(|t| t.finish(&ids))
    }

    /// The next record.
    pub fn next_record(&mut self) -> Record<'_> {
        let roll = self.rng.f64();
        if roll < self.shape.malformed_share && !self.corpus.is_empty() {
            return self.malformed();
        }
        if roll < self.shape.malformed_share + self.shape.duplicate_share && !self.recent.is_empty()
        {
            return self.duplicate();
        }
        self.valid()
    }

    fn valid(&mut self) -> Record<'_> {
        let p = self.next_pending();
        self.clock = p.arrival;
        let m = &p.msg;
        self.key.clear();
        write_message_id(m, self.shape.seed, &mut self.key);
        let message_id = std::str::from_utf8(&self.key).unwrap_or_default();
        let mut event_id = [0u8; 40];
        let event_id = write_event_id(message_id, p.ev.status.index(), &mut event_id);
        let mut recipient = [0u8; 20];
        let recipient = write_recipient(m, &mut recipient);
        let (category, country) = m.reported(p.ev.status);
        let ev = Event {
            event_id: event_id.into(),
            message_id: message_id.into(),
            client_id: self.pop.clients[m.client as usize].id.as_str().into(),
            recipient: recipient.into(),
            status: p.ev.status,
            category,
            billable: m.billable,
            country,
            template: m.template.map(Into::into),
            event_time: p.ev.event_time,
            error_code: p.ev.error_code,
            pricing_type: m.pricing_type(),
        };
        self.value.clear();
        let content_type = if self.rng.chance(self.shape.avro_share) {
            avro::encode_v2(&ev, BUILTIN_SCHEMA_ID_V2, &mut self.value);
            AVRO_CONTENT_TYPE
        } else {
            json::encode(&ev, &mut self.value);
            JSON_CONTENT_TYPE
        };
        let content_type = self
            .rng
            .chance(self.shape.content_type_share)
            .then_some(content_type);
        if let Some(t) = &mut self.truth {
            t.valid(m, p.ev.status, p.ev.event_time);
        }
        if self.shape.duplicate_share > 0.0 && self.order.is_multiple_of(4) {
            self.remember(content_type);
        }
        Record {
            key: Some(&self.key),
            value: Some(&self.value),
            content_type,
            arrival: p.arrival,
            kind: Kind::Valid,
        }
    }

    fn remember(&mut self, content_type: Option<&'static str>) {
        if self.recent.len() < RECENT {
            self.recent
                .push((self.key.clone(), self.value.clone(), content_type));
        } else {
            let slot = &mut self.recent[self.recent_next];
            slot.0.clone_from(&self.key);
            slot.1.clone_from(&self.value);
            slot.2 = content_type;
            self.recent_next = (self.recent_next + 1) % RECENT;
        }
    }

    fn duplicate(&mut self) -> Record<'_> {
        let i = self.rng.below(self.recent.len() as u64) as usize;
        if let Some(t) = &mut self.truth {
            t.duplicate();
        }
        let (k, v, ct) = &self.recent[i];
        Record {
            key: Some(k),
            value: Some(v),
            content_type: *ct,
            arrival: self.clock,
            kind: Kind::Duplicate,
        }
    }

    fn malformed(&mut self) -> Record<'_> {
        let c = &self.corpus[self.corpus_next];
        self.corpus_next = (self.corpus_next + 1) % self.corpus.len();
        if let Some(t) = &mut self.truth {
            t.malformed(&c.expect);
        }
        Record {
            key: c.key.as_deref(),
            value: c.value.as_deref(),
            content_type: c.content_type.as_deref(),
            arrival: self.clock,
            kind: Kind::Malformed,
        }
    }

    /// Starts messages until the earliest pending status is due before the next message.
    fn next_pending(&mut self) -> Pending {
        loop {
            if let Some(Reverse(top)) = self.heap.peek()
                && (top.arrival as f64) <= self.next_message_at
                && let Some(Reverse(p)) = self.heap.pop()
            {
                return p;
            }
            self.start_message();
        }
    }

    fn start_message(&mut self) {
        let t = self.next_message_at as Micros;
        self.next_message_at += self.rng.exp(self.message_gap_mean);
        let c = self.pop.pick_client(&mut self.rng);
        let msg = self.pop.message(self.seq, c, t, &mut self.rng);
        self.seq += 1;
        lifecycle(&msg, &mut self.rng, &mut self.lifecycle);
        for ev in &self.lifecycle {
            self.order += 1;
            self.heap.push(Reverse(Pending {
                arrival: ev.arrival,
                order: self.order,
                msg,
                ev: *ev,
            }));
        }
    }
}

/// `wamid.` + 24 hex digits, unique per (seed, message).
fn write_message_id(m: &Message, seed: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"wamid.");
    let mix = m.seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.rotate_left(17);
    hex(mix, 16, out);
    hex(m.seq, 8, out);
}

fn write_event_id<'b>(message_id: &str, status: usize, buf: &'b mut [u8; 40]) -> &'b str {
    // "ev." + the message id's 24 hex digits + "." + status index: unique per status.
    let hexpart = &message_id.as_bytes()[6..];
    let n = 3 + hexpart.len() + 2;
    buf[..3].copy_from_slice(b"ev.");
    buf[3..3 + hexpart.len()].copy_from_slice(hexpart);
    buf[n - 2] = b'.';
    buf[n - 1] = b'0' + status as u8;
    std::str::from_utf8(&buf[..n]).unwrap_or_default()
}

fn write_recipient<'b>(m: &Message, buf: &'b mut [u8; 20]) -> &'b str {
    let mut n = 0;
    buf[n] = b'+';
    n += 1;
    for b in m.dial.bytes() {
        buf[n] = b;
        n += 1;
    }
    let digits = m.subscriber.checked_ilog10().unwrap_or(0) as usize + 1;
    let mut v = m.subscriber;
    for i in (0..digits).rev() {
        buf[n + i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    n += digits;
    std::str::from_utf8(&buf[..n]).unwrap_or_default()
}

fn hex(v: u64, digits: usize, out: &mut Vec<u8>) {
    const H: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(H[((v >> (i * 4)) & 0xf) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notiflow_ingest::{Decoder, SchemaRegistry};
    use std::collections::HashSet;

    fn shape(seed: u64) -> Shape {
        Shape {
            seed,
            clients: 500,
            rate: 1160.0,
            start: 1_795_464_000_000_000,
            avro_share: 0.3,
            content_type_share: 0.5,
            duplicate_share: 0.005,
            malformed_share: 0.01,
        }
    }

    #[tokio::test]
    async fn records_decode_and_are_deterministic() {
        let mut a = Generator::new(shape(9), None);
        let mut b = Generator::new(shape(9), None);
        let mut dec = Decoder::new(SchemaRegistry::builtin());
        // Both built-in schemas (v2 is what the generator writes).
        dec.prepare(&[
            RecordView {
                value: Some(&[0, 0, 0, 0, 1, 0]),
                ..RecordView::default()
            },
            RecordView {
                value: Some(&[0, 0, 0, 0, 2, 0]),
                ..RecordView::default()
            },
        ])
        .await
        .unwrap();
        let (mut valid, mut dups, mut bad) = (0, 0, 0);
        let mut ids = HashSet::new();
        let mut last_arrival = 0;
        for _ in 0..20_000 {
            let ra = a.next_record();
            let (ka, va, kind, arrival) = (
                ra.key.map(<[u8]>::to_vec),
                ra.value.map(<[u8]>::to_vec),
                ra.kind,
                ra.arrival,
            );
            let ct = ra.content_type.map(str::to_string);
            let rb = b.next_record();
            assert_eq!((ka.as_deref(), va.as_deref()), (rb.key, rb.value));
            assert!(arrival >= last_arrival, "arrivals go forward");
            last_arrival = arrival;
            let view = RecordView {
                key: ka.as_deref(),
                value: va.as_deref(),
                content_type: ct.as_deref().map(str::as_bytes),
                timestamp: arrival,
                clock: arrival,
                producer_clock: false,
            };
            match (kind, dec.decode(&view)) {
                (Kind::Valid, Ok(ev)) => {
                    valid += 1;
                    assert!(ev.event_time <= arrival);
                    assert!(ids.insert(ev.event_id.into_owned()), "event ids are unique");
                }
                (Kind::Duplicate, Ok(ev)) => {
                    dups += 1;
                    assert!(
                        ids.contains(ev.event_id.as_ref()),
                        "a duplicate repeats a sent event"
                    );
                }
                (Kind::Malformed, Err(_)) => bad += 1,
                (k, r) => panic!("{k:?} decoded as {r:?}"),
            }
        }
        assert!(
            valid > 19_000 && dups > 50 && bad > 100,
            "{valid} {dups} {bad}"
        );
    }

    #[test]
    fn events_per_message_matches_the_model() {
        let mut rng = Rng::new(11);
        let pop = Population::new(1000, &mut rng);
        let mut out = Vec::new();
        let n = 200_000;
        let mut total = 0;
        for seq in 0..n {
            let c = pop.pick_client(&mut rng);
            lifecycle(&pop.message(seq, c, 0, &mut rng), &mut rng, &mut out);
            total += out.len();
        }
        let mean = total as f64 / n as f64;
        assert!(
            (EVENTS_PER_MESSAGE - mean).abs() < 0.02,
            "mean statuses per message {mean}"
        );
    }

    #[test]
    fn steady_state_rate_is_on_target() {
        // Reads arrive minutes after their message, so skip the first ~10
        // simulated minutes before measuring.
        let mut g = Generator::new(shape(1), None);
        let warm = 700_000;
        let n = 400_000;
        for _ in 0..warm {
            g.next_record();
        }
        let from = g.next_record().arrival;
        let mut last = from;
        for _ in 0..n {
            last = g.next_record().arrival;
        }
        let rate = n as f64 / ((last - from) as f64 / 1e6);
        assert!((1100.0..1220.0).contains(&rate), "simulated rate {rate}");
    }
}
