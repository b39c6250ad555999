//! The duplicate rule every consumer group applies (SPEC §3), so that the
//! Redis counters and the lake count the same events.
//!
//! A duplicate is a record whose `event_id` was already seen **on the same
//! partition** (the key is `message_id`, so a retry lands on the partition of
//! its original) within the dedup window. The window is measured in
//! *generations*: whole UTC hours of the record's broker timestamp. A record
//! of generation `g` is a duplicate if its event was seen at a generation
//! `≥ newest − window`, where `newest` is the highest generation seen so far on
//! the partition. Everything here depends only on the partition's log, never
//! on a wall clock, so replays, restarts and different groups agree.
//!
//! Memory: an event is remembered as a 64-bit xxh3 fingerprint plus a 32-bit
//! generation in one open-addressing table (linear probing, load ≤ 0.8),
//! about 12 bytes a slot, 15–30 bytes an event. Expired generations are swept
//! out when the newest generation advances, so the table holds one window of
//! events and no more.
//!
//! False positives/negatives: none from the structure itself. Two different
//! `event_id`s with the same 64-bit fingerprint on one partition within one
//! window would make the second look like a duplicate: with `n` events per
//! partition-window the chance per event is `n / 2^64`; at 100M events a day
//! over 32 partitions that is one expected false merge in about 160 years.
//! The lake applies the same rule, so even then Redis and Iceberg agree.

use notiflow_schema::Micros;
use notiflow_schema::time::HOUR_MICROS;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of the fingerprint; part of the on-disk format of the dedup state.
const SEED: u64 = 0x6e6f_7469_666c_6f77; // "notiflow"

/// Length of one generation.
pub const GENERATION_MICROS: Micros = HOUR_MICROS;

/// How many generations one record may move a partition's newest one.
pub const MAX_GENERATION_STEP: u32 = 1;

/// Fingerprint of an `event_id` (never 0, which marks an empty slot).
pub fn fingerprint(event_id: &str) -> u64 {
    xxh3_64_with_seed(event_id.as_bytes(), SEED).max(1)
}

/// Generation of a record with broker timestamp `record_ts`.
pub fn generation(record_ts: Micros) -> u32 {
    record_ts
        .div_euclid(GENERATION_MICROS)
        .clamp(0, i64::from(u32::MAX)) as u32
}

/// The broker time a record of `generation` stands for at most: the last
/// microsecond of that hour. With [`Dedup::generation_of`] it bounds a
/// record timestamp by the partition's own clock, so a CreateTime far ahead
/// cannot make a fresh event look hours old.
pub fn bounded_time(record_ts: Micros, generation: u32) -> Micros {
    record_ts.min((i64::from(generation) + 1) * GENERATION_MICROS - 1)
}

const MAX_LOAD_NUM: usize = 4;
const MAX_LOAD_DEN: usize = 5;
const MIN_CAPACITY: usize = 1024;

/// The dedup state of one partition.
#[derive(Debug, Clone)]
pub struct Dedup {
    window: u32,
    slots: Vec<u64>,
    gens: Vec<u32>,
    len: usize,
    newest: u32,
}

impl Dedup {
    /// Empty state keeping `window` generations before the newest one.
    pub fn new(window: u32) -> Self {
        Dedup {
            window,
            slots: vec![0; MIN_CAPACITY],
            gens: vec![0; MIN_CAPACITY],
            len: 0,
            newest: 0,
        }
    }

    /// The highest generation seen.
    pub fn newest(&self) -> u32 {
        self.newest
    }

    /// The dedup generation of a record with broker timestamp `record_ts`
    /// on this partition: its UTC hour, but at most
    /// [`MAX_GENERATION_STEP`] past the newest generation seen (any hour
    /// while nothing was seen). Both sinks use this, so they agree.
    pub fn generation_of(&self, record_ts: Micros) -> u32 {
        let g = generation(record_ts);
        if self.newest == 0 {
            return g;
        }
        g.min(self.newest.saturating_add(MAX_GENERATION_STEP))
    }

    /// Sets the newest generation to at least `generation` (restoring a
    /// persisted state whose newest generation added no fingerprint).
    pub fn advance_to(&mut self, generation: u32) {
        self.advance(generation);
    }

    /// The oldest generation still remembered.
    pub fn oldest_live(&self) -> u32 {
        self.newest.saturating_sub(self.window)
    }

    /// Events remembered (including expired ones not swept yet).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every event still inside the window: `(fingerprint, generation)`.
    /// What a checkpoint of the partition's whole state writes.
    pub fn live(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        let oldest = self.oldest_live();
        self.slots
            .iter()
            .zip(&self.gens)
            .filter(move |&(&s, &g)| s != 0 && g >= oldest)
            .map(|(&s, &g)| (s, g))
    }

    /// Bytes held by the table.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * 8 + self.gens.capacity() * 4
    }

    /// Sees event `fp` in a record of generation `generation`. True if it is
    /// new (count it and remember it), false if it is a duplicate.
    pub fn insert(&mut self, fp: u64, generation: u32) -> bool {
        self.advance(generation);
        let oldest = self.oldest_live();
        let mask = self.slots.len() - 1;
        let mut i = (fp as usize) & mask;
        loop {
            match self.slots[i] {
                0 => {
                    self.slots[i] = fp;
                    self.gens[i] = generation;
                    self.len += 1;
                    if self.len * MAX_LOAD_DEN > self.slots.len() * MAX_LOAD_NUM {
                        self.rebuild(self.slots.len() * 2);
                    }
                    return true;
                }
                s if s == fp => {
                    if self.gens[i] >= oldest {
                        return false;
                    }
                    // Seen before the window: new again.
                    self.gens[i] = generation;
                    return true;
                }
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Restores a remembered event (from the persisted state) without
    /// asking whether it is new.
    pub fn restore(&mut self, fp: u64, generation: u32) {
        self.advance(generation);
        let mask = self.slots.len() - 1;
        let mut i = (fp as usize) & mask;
        loop {
            match self.slots[i] {
                0 => {
                    self.slots[i] = fp.max(1);
                    self.gens[i] = generation;
                    self.len += 1;
                    if self.len * MAX_LOAD_DEN > self.slots.len() * MAX_LOAD_NUM {
                        self.rebuild(self.slots.len() * 2);
                    }
                    return;
                }
                s if s == fp => {
                    self.gens[i] = self.gens[i].max(generation);
                    return;
                }
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Restores every fingerprint of a packed state string (8 bytes little
    /// endian each) of `generation`, as written by [`pack`].
    pub fn restore_packed(&mut self, generation: u32, packed: &[u8]) {
        for chunk in packed.chunks_exact(8) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            self.restore(u64::from_le_bytes(b), generation);
        }
    }

    /// Moves the newest generation forward, sweeping out expired events.
    fn advance(&mut self, generation: u32) {
        if generation <= self.newest {
            return;
        }
        self.newest = generation;
        if self.len > 0 {
            let live = self.count_live();
            self.rebuild(capacity_for(live));
        }
    }

    fn count_live(&self) -> usize {
        let oldest = self.oldest_live();
        self.slots
            .iter()
            .zip(&self.gens)
            .filter(|&(&s, &g)| s != 0 && g >= oldest)
            .count()
    }

    fn rebuild(&mut self, capacity: usize) {
        let oldest = self.oldest_live();
        let capacity = capacity.max(MIN_CAPACITY).next_power_of_two();
        let slots = std::mem::replace(&mut self.slots, vec![0; capacity]);
        let gens = std::mem::replace(&mut self.gens, vec![0; capacity]);
        self.len = 0;
        let mask = capacity - 1;
        for (s, g) in slots.into_iter().zip(gens) {
            if s == 0 || g < oldest {
                continue;
            }
            let mut i = (s as usize) & mask;
            while self.slots[i] != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = s;
            self.gens[i] = g;
            self.len += 1;
        }
    }
}

fn capacity_for(len: usize) -> usize {
    // Room to grow by half before the next doubling.
    (len * 3 / 2 * MAX_LOAD_DEN / MAX_LOAD_NUM + 1).next_power_of_two()
}

/// Appends `fp` to a packed state string.
pub fn pack(fp: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&fp.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_within_the_window_is_a_duplicate() {
        let mut d = Dedup::new(24);
        let a = fingerprint("ev-a");
        assert!(d.insert(a, 100));
        assert!(!d.insert(a, 100));
        assert!(!d.insert(a, 124), "24 generations later: still inside");
        assert!(d.insert(fingerprint("ev-b"), 124));
    }

    #[test]
    fn a_repeat_after_the_window_counts_again() {
        let mut d = Dedup::new(24);
        let a = fingerprint("ev-a");
        assert!(d.insert(a, 100));
        assert!(d.insert(fingerprint("x"), 125));
        assert!(d.insert(a, 125), "seen at 100, newest 125: outside");
        assert!(!d.insert(a, 125));
    }

    #[test]
    fn sweeping_keeps_exactly_the_window() {
        let mut d = Dedup::new(2);
        for g in 0..10u32 {
            for i in 0..5000u32 {
                assert!(d.insert(fingerprint(&format!("{g}-{i}")), g));
            }
        }
        // Generations 7, 8, 9 are live (9 − 2 = 7); 7 is still a duplicate, 6 is not.
        assert!(!d.insert(fingerprint("7-42"), 9));
        assert!(d.insert(fingerprint("6-42"), 9));
        assert!(d.len() <= 3 * 5000 + 1, "len {}", d.len());
    }

    #[test]
    fn live_lists_the_window_and_nothing_older() {
        let mut d = Dedup::new(2);
        let mut want = Vec::new();
        for g in [5u32, 6, 7, 8] {
            let fp = fingerprint(&format!("ev-{g}"));
            assert!(d.insert(fp, g));
            if g >= 6 {
                want.push((fp, g));
            }
        }
        // Generation 5 may still sit in the table (not swept yet): not live.
        let mut got: Vec<(u64, u32)> = d.live().collect();
        got.sort_unstable_by_key(|&(_, g)| g);
        assert_eq!(got, want);
    }

    #[test]
    fn restored_state_gives_the_same_answers() {
        let mut live = Dedup::new(24);
        let mut packed: std::collections::BTreeMap<u32, Vec<u8>> = Default::default();
        for i in 0..20_000u32 {
            let g = 1000 + i / 1000;
            let fp = fingerprint(&format!("e{i}"));
            if live.insert(fp, g) {
                pack(fp, packed.entry(g).or_default());
            }
        }
        let mut restored = Dedup::new(24);
        for (g, p) in &packed {
            restored.restore_packed(*g, p);
        }
        for i in (0..40_000u32).step_by(7) {
            let fp = fingerprint(&format!("e{i}"));
            assert_eq!(restored.insert(fp, 1019), live.insert(fp, 1019), "e{i}");
        }
    }

    #[test]
    fn one_record_from_a_year_ahead_does_not_turn_dedup_off() {
        let mut d = Dedup::new(24);
        let now = 490_000 * HOUR_MICROS + 5;
        let a = fingerprint("ev-a");
        assert!(d.insert(a, d.generation_of(now)));
        // A producer clock a year ahead: the generation moves one step.
        let far = now + 8760 * HOUR_MICROS;
        let g = d.generation_of(far);
        assert_eq!(g, 490_001);
        assert!(d.insert(fingerprint("ev-future"), g));
        // The partition's normal records are still deduplicated.
        assert!(
            !d.insert(a, d.generation_of(now)),
            "a repeat after the hostile record"
        );
        assert_eq!(d.newest(), 490_001);
    }

    #[test]
    fn real_time_catches_up_after_a_quiet_partition() {
        let mut d = Dedup::new(24);
        assert_eq!(d.generation_of(100 * HOUR_MICROS), 100, "nothing seen yet");
        d.insert(fingerprint("a"), 100);
        // Five hours of silence, then records again: a step per record.
        for (i, want) in [101, 102, 103, 104, 105, 105].into_iter().enumerate() {
            let g = d.generation_of(105 * HOUR_MICROS);
            assert_eq!(g, want, "record {i}");
            d.insert(fingerprint(&format!("late-{i}")), g);
        }
        // Older records keep their own (smaller) generation.
        assert_eq!(d.generation_of(90 * HOUR_MICROS), 90);
    }

    #[test]
    fn advance_to_moves_the_window_without_a_fingerprint() {
        let mut d = Dedup::new(2);
        d.restore(fingerprint("old"), 10);
        d.advance_to(13);
        assert_eq!(d.newest(), 13);
        assert!(
            d.insert(fingerprint("old"), 13),
            "10 < 13 - 2: outside the window"
        );
        d.advance_to(5);
        assert_eq!(d.newest(), 13, "never backwards");
    }

    #[test]
    fn bounded_time_caps_a_timestamp_at_the_end_of_its_generation() {
        let hour = GENERATION_MICROS;
        let mut d = Dedup::new(24);
        d.insert(fingerprint("a"), 100);
        let year_ahead = 100 * hour + 8760 * hour;
        let g = d.generation_of(year_ahead);
        assert_eq!(g, 101);
        assert_eq!(bounded_time(year_ahead, g), 102 * hour - 1);
        // A timestamp inside its generation is left as it is.
        assert_eq!(bounded_time(100 * hour + 5, 100), 100 * hour + 5);
    }

    #[test]
    fn generations_are_utc_hours_of_the_record_timestamp() {
        assert_eq!(generation(0), 0);
        assert_eq!(generation(HOUR_MICROS - 1), 0);
        assert_eq!(generation(HOUR_MICROS), 1);
        assert_eq!(generation(-5), 0);
    }
}
