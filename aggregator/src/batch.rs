//! From a batch of records to the increments of one atomic Redis step.
//!
//! ```text
//!  records ──▶ owned partition? offset ≥ cursor? ──▶ decode + validate ──▶ dedup ──▶ client × minute counts
//!                 │ no: stale copy, dropped             │ reject: counted        │ duplicate: counted
//! ```
//!
//! Everything here is in memory and synchronous, so it is measured on its
//! own (`benches/aggregate.rs`). The partition state it keeps (cursor and
//! dedup table) is only trusted together with the offsets stored in Redis:
//! after any failed apply the service reloads it from there.

use std::collections::{BTreeMap, HashMap};

pub use notiflow_ingest::sink::SourceRecord;
use notiflow_ingest::sink::{
    Admit, Anchor, Cursor, Decoder, Dedup, Hold, LastTaken, bounded_time, fingerprint, pack,
};
use notiflow_schema::counters::{Counts, DeltaCell, SLOTS, sent_category_slot, status_slot};
use notiflow_schema::time::{DAY_MICROS, HOUR_MICROS, minute_of};
use notiflow_schema::{Micros, Status};

/// The partitions a member owns, by number.
pub type Owned = HashMap<i32, PartitionState>;

/// What the aggregator knows of a partition it owns.
#[derive(Debug, Clone)]
pub struct PartitionState {
    /// Next offset as stored in Redis (`None`: nothing stored yet).
    pub applied: Option<i64>,
    /// The anchor stored with `applied` (the last record taken before it;
    /// `ingest::cursor`), as loaded.
    pub anchor: Option<Anchor>,
    /// Next offset to accept; ahead of `applied` while a batch is pending.
    pub cursor: Cursor,
    /// Events seen within the dedup window, as of `cursor`.
    pub dedup: Dedup,
    /// Next offset after the last batch this process applied and
    /// published on the deltas stream (dashboards have seen it).
    pub published: Option<i64>,
    /// Records below this offset are applied again after Redis lost them
    /// (a restart without its last writes): their counts go to Redis, but
    /// not to the deltas stream a second time.
    pub replay_upto: Option<i64>,
}

impl PartitionState {
    /// State loaded from Redis, trusted as it is (see
    /// [`PartitionState::assigned`] for a partition just assigned).
    pub fn loaded(applied: Option<i64>, dedup: Dedup) -> Self {
        PartitionState {
            applied,
            anchor: None,
            cursor: Cursor::at(applied),
            dedup,
            published: None,
            replay_upto: None,
        }
    }

    /// The state of a partition just assigned: its first record must prove
    /// the log is the one `applied` was stored for (`ingest::cursor`).
    pub fn assigned(mut self) -> Self {
        self.cursor = Cursor::assigned(self.applied, self.anchor);
        self
    }

    /// State loaded from Redis again for a partition this process owned as
    /// `before`: if Redis is behind what was published, the records up to
    /// there are a replay (see [`PartitionState::replay_upto`]).
    pub fn reloaded(mut self, before: Option<&PartitionState>) -> Self {
        let published = before.and_then(|b| b.published.max(b.replay_upto));
        self.published = published;
        self.replay_upto = published.filter(|&p| self.applied.is_none_or(|a| a < p));
        self
    }
}

/// Offsets of one partition in a batch: the CAS expectation and the new value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetUpdate {
    /// What Redis must still hold for the batch to apply.
    pub expected: Option<i64>,
    /// The next offset after the batch.
    pub next: i64,
    /// Newest dedup generation before the batch (as stored with `expected`).
    pub from_generation: u32,
    /// Newest dedup generation after the batch.
    pub generation: u32,
    /// The anchor of the batch's last record of the partition, stored with
    /// `next`.
    pub anchor: Option<Anchor>,
}

impl OffsetUpdate {
    /// Generations that fall out of a `window` as the newest one moves from
    /// `from_generation` to `generation`: their dedup keys are deleted in
    /// the same step, so the dedup state follows the log, never a clock.
    /// At most `window + 1` of them (everything older went earlier).
    pub fn expired(&self, window: u32) -> std::ops::RangeInclusive<u32> {
        let first = self.from_generation.saturating_sub(window);
        match self.generation.checked_sub(window + 1) {
            Some(last) if self.from_generation > 0 => first..=last.min(self.from_generation),
            #[allow(clippy::reversed_empty_ranges)]
            _ => 1..=0,
        }
    }
}

/// Counts of one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Records looked at.
    pub records: u64,
    /// New valid events counted.
    pub counted: u64,
    /// Valid events already seen within the window.
    pub duplicates: u64,
    /// Events too old for their minute bucket.
    pub late_dropped: u64,
    /// Records that break a rule (dead-lettered by the ingest group), per reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Records of partitions not owned, or before the cursor (re-fetched copies).
    pub stale: u64,
}

/// The increments of one batch, ready for one atomic Redis step.
#[derive(Debug, Default)]
pub struct Pending {
    /// Per partition in the batch.
    pub offsets: BTreeMap<i32, OffsetUpdate>,
    /// New fingerprints per partition × generation, packed.
    pub dedup: BTreeMap<(i32, u32), Vec<u8>>,
    /// Client ids, indexed by the cells.
    pub clients: Vec<String>,
    /// Minute cells (client index, minute) inside the minute retention.
    pub minutes: HashMap<(u32, i64), Counts>,
    /// The part of `minutes` from records published before (a replay after
    /// Redis lost writes): left out of the batch's delta.
    pub replayed: HashMap<(u32, i64), Counts>,
    /// Cells too old for minute buckets but inside the roll-up retention.
    pub rollup_only: HashMap<(u32, i64), Counts>,
    /// Broker timestamps (ms) of the counted events, for the latency histogram.
    pub record_ms: Vec<i64>,
    /// Partitions whose records jumped past the cursor: seek back there.
    pub reseek: Vec<(i32, i64)>,
    /// Partitions held in this batch (their log is another one), and why.
    pub held: Vec<(i32, Hold)>,
    /// Counts.
    pub stats: BatchStats,
}

impl Pending {
    /// True when there is nothing to store (no partition advanced).
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// The minute cells dashboards have not seen yet (`minutes` less
    /// `replayed`), by client and minute.
    pub fn delta_cells(&self) -> Vec<DeltaCell> {
        let mut c: Vec<DeltaCell> = self
            .minutes
            .iter()
            .filter_map(|(&(ix, m), counts)| {
                let mut counts = *counts;
                if let Some(r) = self.replayed.get(&(ix, m)) {
                    for (c, r) in counts.iter_mut().zip(r) {
                        *c -= r;
                    }
                }
                counts
                    .iter()
                    .any(|&n| n > 0)
                    .then(|| DeltaCell(self.clients[ix as usize].clone(), m, counts))
            })
            .collect();
        c.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        c
    }
}

/// Retention rules of the buckets.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Dedup window, generations (hours).
    pub dedup_window: u32,
    /// Minute buckets, microseconds.
    pub minutes: Micros,
    /// Hourly and daily roll-ups, microseconds.
    pub rollups: Micros,
}

impl Retention {
    /// From the config values.
    pub fn new(dedup_window_hours: u32, minute_hours: u32, rollup_days: u32) -> Self {
        Retention {
            dedup_window: dedup_window_hours,
            minutes: i64::from(minute_hours) * HOUR_MICROS,
            rollups: i64::from(rollup_days) * DAY_MICROS,
        }
    }
}

/// Aggregates `records` against the owned partitions in `owned`, advancing
/// their cursors and dedup tables. `decoder` must be prepared for them.
pub fn process<'a>(
    records: impl IntoIterator<Item = SourceRecord<'a>>,
    owned: &mut Owned,
    decoder: &Decoder,
    retention: Retention,
) -> Pending {
    let mut out = Pending::default();
    let mut client_ix: HashMap<String, u32> = HashMap::new();
    // Records come in runs of one partition: remember where the last one's
    // state and dedup buffer are instead of looking them up per record.
    let mut current: Option<(i32, u32)> = None;
    let mut appends: Vec<u8> = Vec::new();
    let mut last = LastTaken::default();
    for rec in records {
        out.stats.records += 1;
        let Some(state) = owned.get_mut(&rec.partition) else {
            out.stats.stale += 1;
            continue;
        };
        let pending = out.reseek.iter().any(|r| r.0 == rec.partition);
        match state
            .cursor
            .admit_checked(rec.offset, || Anchor::of(&rec.view), pending)
        {
            Admit::Take => {}
            Admit::Stale => {
                out.stats.stale += 1;
                continue;
            }
            Admit::Reseek(c) => {
                out.reseek.push((rec.partition, c));
                out.stats.stale += 1;
                continue;
            }
            Admit::Hold(why) => {
                out.held.push((rec.partition, why));
                out.stats.stale += 1;
                continue;
            }
        }
        last.note(rec.partition, rec.view);
        let generation = state.dedup.generation_of(rec.view.clock);
        let upd = out
            .offsets
            .entry(rec.partition)
            .or_insert_with(|| OffsetUpdate {
                expected: state.applied,
                next: 0,
                from_generation: state.dedup.newest(),
                generation: state.dedup.newest(),
                anchor: None,
            });
        upd.next = rec.offset + 1;

        let event = match decoder.decode(&rec.view) {
            Ok(e) => e,
            Err(r) => {
                *out.stats.rejected.entry(r.code()).or_default() += 1;
                upd.generation = state.dedup.newest();
                continue;
            }
        };
        let fp = fingerprint(&event.event_id);
        let new = state.dedup.insert(fp, generation);
        upd.generation = state.dedup.newest();
        if !new {
            out.stats.duplicates += 1;
            continue;
        }
        // An event older than the window is counted but not remembered (a
        // restore would sweep it out), so no dedup key is written for it.
        if generation >= state.dedup.oldest_live() {
            if current != Some((rec.partition, generation)) {
                if let Some(key) = current.take() {
                    out.dedup.entry(key).or_default().append(&mut appends);
                }
                current = Some((rec.partition, generation));
            }
            pack(fp, &mut appends);
        }
        out.stats.counted += 1;
        out.record_ms.push(rec.view.clock / 1000);

        let client: &str = &event.client_id;
        let ix = match client_ix.get(client) {
            Some(&i) => i,
            None => {
                let i = out.clients.len() as u32;
                out.clients.push(client.to_string());
                client_ix.insert(client.to_string(), i);
                i
            }
        };
        let minute = minute_of(event.event_time);
        // Age on the partition's clock: a hostile CreateTime a year ahead
        // moves the generation one hour, and must not late-drop the event.
        let age = bounded_time(rec.view.clock, generation).saturating_sub(event.event_time);
        let replayed = match state.replay_upto {
            Some(u) if rec.offset < u => true,
            Some(_) => {
                state.replay_upto = None;
                false
            }
            None => false,
        };
        if replayed && age <= retention.minutes {
            let r = out.replayed.entry((ix, minute)).or_insert([0; SLOTS]);
            r[status_slot(event.status)] += 1;
            if event.status == Status::Sent {
                r[sent_category_slot(event.category)] += 1;
            }
        }
        let cells = if age <= retention.minutes {
            &mut out.minutes
        } else {
            out.stats.late_dropped += 1;
            if age > retention.rollups {
                continue;
            }
            &mut out.rollup_only
        };
        let counts = cells.entry((ix, minute)).or_insert([0; SLOTS]);
        counts[status_slot(event.status)] += 1;
        if event.status == Status::Sent {
            counts[sent_category_slot(event.category)] += 1;
        }
    }
    if let Some(key) = current {
        out.dedup.entry(key).or_default().append(&mut appends);
    }
    for (p, anchor) in last.anchors() {
        if let Some(u) = out.offsets.get_mut(&p) {
            u.anchor = Some(anchor);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use notiflow_ingest::sink::{RecordView, SchemaRegistry};
    use notiflow_schema::time::{MINUTE_MICROS, parse_rfc3339};

    const NOW: &str = "2026-11-23T12:00:30Z";

    fn json(id: &str, client: &str, status: &str, time: &str) -> Vec<u8> {
        format!(
            r#"{{"event_id":"{id}","message_id":"m-{id}","client_id":"{client}","recipient":"+5511999990000","status":"{status}","category":"marketing","billable":true,"country":"BR","template":null,"event_time":"{time}","error_code":null}}"#
        )
        .into_bytes()
    }

    struct Rec {
        p: i32,
        o: i64,
        key: Vec<u8>,
        value: Vec<u8>,
        ts: Micros,
    }

    fn rec(p: i32, o: i64, id: &str, client: &str, status: &str, time: &str) -> Rec {
        Rec {
            p,
            o,
            key: format!("m-{id}").into_bytes(),
            value: json(id, client, status, time),
            ts: parse_rfc3339(NOW).unwrap(),
        }
    }

    fn run(recs: &[Rec], owned: &mut Owned) -> Pending {
        let decoder = Decoder::new(SchemaRegistry::builtin());
        let records = recs.iter().map(|r| SourceRecord {
            partition: r.p,
            offset: r.o,
            view: RecordView {
                key: Some(&r.key),
                value: Some(&r.value),
                content_type: None,
                timestamp: r.ts,
                clock: r.ts,
                producer_clock: false,
            },
        });
        process(records, owned, &decoder, Retention::new(24, 48, 400))
    }

    fn fresh(parts: &[i32]) -> Owned {
        parts
            .iter()
            .map(|&p| (p, PartitionState::loaded(None, Dedup::new(24))))
            .collect()
    }

    #[test]
    fn counts_by_client_minute_status_and_sent_category() {
        let mut owned = fresh(&[0, 1]);
        let t = "2026-11-23T12:00:05Z";
        let out = run(
            &[
                rec(0, 0, "a", "acme", "sent", t),
                rec(0, 1, "b", "acme", "delivered", t),
                rec(1, 7, "c", "beta", "sent", "2026-11-23T11:59:59Z"),
                rec(0, 2, "a", "acme", "sent", t), // duplicate
            ],
            &mut owned,
        );
        assert_eq!(out.stats.counted, 3);
        assert_eq!(out.stats.duplicates, 1);
        let m = minute_of(parse_rfc3339(t).unwrap());
        let acme = out.clients.iter().position(|c| c == "acme").unwrap() as u32;
        let beta = out.clients.iter().position(|c| c == "beta").unwrap() as u32;
        assert_eq!(out.minutes[&(acme, m)], [0, 1, 1, 0, 0, 1, 0, 0, 0]);
        assert_eq!(out.minutes[&(beta, m - 1)], [0, 1, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(out.offsets[&0].next, 3);
        assert_eq!(out.offsets[&0].expected, None);
        assert_eq!(out.offsets[&1].next, 8);
        assert_eq!(out.dedup.values().map(Vec::len).sum::<usize>(), 3 * 8);
    }

    #[test]
    fn records_before_the_cursor_or_of_other_partitions_are_stale() {
        let mut owned: Owned = [(0, PartitionState::loaded(Some(5), Dedup::new(24)))]
            .into_iter()
            .collect();
        let t = "2026-11-23T12:00:05Z";
        let out = run(
            &[
                rec(0, 4, "old", "acme", "sent", t),
                rec(3, 9, "x", "acme", "sent", t),
                rec(0, 5, "new", "acme", "sent", t),
                rec(0, 5, "new", "acme", "sent", t), // a re-fetched copy
            ],
            &mut owned,
        );
        assert_eq!(out.stats.stale, 3);
        assert_eq!(out.stats.counted, 1);
        assert_eq!(
            out.offsets[&0],
            OffsetUpdate {
                expected: Some(5),
                next: 6,
                from_generation: 0,
                generation: notiflow_ingest::sink::generation(parse_rfc3339(NOW).unwrap()),
                anchor: out.offsets[&0].anchor,
            }
        );
    }

    #[test]
    fn the_generations_that_leave_the_window_are_named_once() {
        let upd = |from, to| OffsetUpdate {
            expected: None,
            next: 0,
            from_generation: from,
            generation: to,
            anchor: None,
        };
        let all = |r: std::ops::RangeInclusive<u32>| r.collect::<Vec<_>>();
        assert_eq!(all(upd(100, 100).expired(24)), Vec::<u32>::new());
        assert_eq!(all(upd(100, 101).expired(24)), vec![76]);
        assert_eq!(all(upd(100, 103).expired(24)), vec![76, 77, 78]);
        // A jump past the whole window: every remembered generation goes.
        assert_eq!(
            all(upd(100, 500).expired(24)),
            (76..=100).collect::<Vec<_>>()
        );
        // A fresh partition has nothing to delete.
        assert_eq!(all(upd(0, 500).expired(24)), Vec::<u32>::new());
        assert_eq!(all(upd(10, 40).expired(24)), (0..=10).collect::<Vec<_>>());
    }

    #[test]
    fn a_gap_is_re_sought_once_then_accepted() {
        let mut owned: Owned = [(0, PartitionState::loaded(Some(5), Dedup::new(24)))]
            .into_iter()
            .collect();
        let t = "2026-11-23T12:00:05Z";
        let out = run(
            &[
                rec(0, 7, "a", "acme", "sent", t),
                rec(0, 8, "b", "acme", "sent", t),
            ],
            &mut owned,
        );
        assert_eq!(out.reseek, vec![(0, 5)]);
        assert_eq!(out.stats.counted, 0);
        assert!(out.offsets.is_empty());
        let out = run(&[rec(0, 7, "a", "acme", "sent", t)], &mut owned);
        assert!(out.reseek.is_empty());
        assert_eq!(out.stats.counted, 1);
        assert_eq!(out.offsets[&0].next, 8);
    }

    #[test]
    fn rejects_advance_offsets_without_counting() {
        let mut owned = fresh(&[0]);
        let mut bad = rec(0, 0, "a", "acme", "sent", "2026-11-23T12:00:05Z");
        bad.value = b"{not json".to_vec();
        let out = run(&[bad], &mut owned);
        assert_eq!(out.stats.counted, 0);
        assert_eq!(out.stats.rejected.values().sum::<u64>(), 1);
        assert_eq!(out.offsets[&0].next, 1);
    }

    #[test]
    fn a_hostile_create_time_does_not_late_drop_a_fresh_event() {
        let mut owned = fresh(&[0]);
        let t = "2026-11-23T12:00:05Z";
        let out = run(&[rec(0, 0, "a", "acme", "sent", t)], &mut owned);
        assert_eq!(out.minutes.len(), 1);
        // Stamped a year ahead by its producer (a CreateTime topic): its
        // age on the partition's clock is seconds, not a year.
        let mut hostile = rec(0, 1, "b", "acme", "sent", t);
        hostile.ts += 365 * DAY_MICROS;
        let out = run(&[hostile], &mut owned);
        assert_eq!(out.stats.counted, 1);
        assert_eq!(out.stats.late_dropped, 0);
        assert!(out.rollup_only.is_empty());
        assert_eq!(out.minutes.len(), 1);
    }

    #[test]
    fn late_events_go_to_roll_ups_only_past_the_minute_retention() {
        let mut owned = fresh(&[0]);
        let now = parse_rfc3339(NOW).unwrap();
        let three_days = notiflow_schema::time::format_rfc3339(now - 3 * DAY_MICROS);
        let an_hour = notiflow_schema::time::format_rfc3339(now - HOUR_MICROS);
        let out = run(
            &[
                rec(0, 0, "a", "acme", "read", &three_days),
                rec(0, 1, "b", "acme", "read", &an_hour),
            ],
            &mut owned,
        );
        assert_eq!(out.stats.late_dropped, 1);
        assert_eq!(out.minutes.len(), 1);
        let (&(_, m), _) = out.rollup_only.iter().next().unwrap();
        assert_eq!(m, minute_of(now - 3 * DAY_MICROS));
        assert!(MINUTE_MICROS * m <= now - 3 * DAY_MICROS);
    }
}
