//! Which records of a partition a consumer that keeps its own offsets
//! (aggregator in Redis, lake in the Iceberg table) accepts.
//!
//! After a seek, librdkafka may still hand out records fetched before it:
//! records before the cursor are stale copies; a record after the cursor
//! means a fetch raced the seek, so seek back once. If the gap is still
//! there after a seek that succeeded, it is real (the log has no such offsets, e.g. after
//! retention or compaction) and the records are accepted.
//!
//! **Is it still the same log?** An offset says where to go on only in the
//! log it was stored for. When the broker lost its tail, or the topic was
//! deleted and created again, the stored offset points into another log:
//! going on from it would drop every record of the new log below it as
//! "already taken", and once the new log grows past it nothing would even
//! look wrong. So each sink stores, with its next offset, the [`Anchor`]:
//! a fingerprint of the record just before it (the last one it took). On
//! assignment fetching starts *at* that record, and the first record
//! decides: the anchor record itself, unchanged, opens the partition; any
//! other record (another record at that offset, or a log that now starts
//! below it: an offset reset) **holds** it: nothing is taken from it, and
//! nothing dropped is lost, since the stored offset does not move, until an
//! operator chooses (accepts the gap from a named offset, which clears the
//! anchor, or re-seeds the log, which brings the anchor record back).
//! Without an anchor (an operator's offset, state stored before anchors)
//! the first record must not lie below the stored offset. A log that ends
//! before the anchor is not fetched at all (the sinks consume with
//! `auto.offset.reset=error`), so nothing arrives and the
//! `…_offset_beyond_log_end` alarm says why.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::codec::RecordView;

/// What to do with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// The next record: take it.
    Take,
    /// Before the cursor, or after it while a re-seek is pending, or of a
    /// held partition: drop it.
    Stale,
    /// Past the cursor for the first time: drop it and seek to this offset.
    Reseek(i64),
    /// The partition's log is not the one its stored offset belongs to:
    /// drop the record, take nothing more from the partition (see the
    /// module doc). Answered once; later records are [`Admit::Stale`].
    Hold(Hold),
}

/// Why a partition is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Another record than the anchor sits at the anchor's offset.
    AnchorChanged {
        /// The anchor's offset (the stored next offset − 1).
        offset: i64,
    },
    /// The log delivered a record below where fetching started: it was
    /// reset (it ends, or starts, elsewhere than the stored offset says).
    Rewound {
        /// Where fetching started.
        expected: i64,
        /// The offset of the record that came instead.
        got: i64,
    },
    /// The log now starts past the stored next offset: records between
    /// were deleted (retention) before this sink took them.
    BehindLogStart {
        /// The stored next offset.
        next: i64,
        /// The log's first offset.
        log_start: i64,
    },
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hold::AnchorChanged { offset } => write!(
                f,
                "the record at offset {offset} is not the one last taken there: the log was \
                 replaced (topic created again, or the broker lost its tail and was written again)"
            ),
            Hold::Rewound { expected, got } => write!(
                f,
                "fetching from offset {expected} delivered offset {got}: the log was reset below \
                 the stored offset (topic created again, or the broker lost its tail)"
            ),
            Hold::BehindLogStart { next, log_start } => write!(
                f,
                "the log starts at offset {log_start}, past the stored next offset {next}: \
                 records in between were deleted (retention) before they were taken"
            ),
        }
    }
}

/// The fingerprint of the record a sink took last in a partition, stored
/// with its next offset (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Anchor(pub u64);

impl Anchor {
    /// The anchor of a record: its broker timestamp, key and value (the
    /// timestamp tells apart two logs of the same seeded traffic).
    pub fn of(view: &RecordView<'_>) -> Self {
        let mut buf = Vec::with_capacity(
            24 + view.key.map_or(0, <[u8]>::len) + view.value.map_or(0, <[u8]>::len),
        );
        buf.extend_from_slice(&view.timestamp.to_le_bytes());
        for part in [view.key, view.value] {
            let part = part.unwrap_or_default();
            buf.extend_from_slice(&(part.len() as u64).to_le_bytes());
            buf.extend_from_slice(part);
        }
        Anchor(xxh3_64_with_seed(&buf, 0x6e66_616e_6368_6f72))
    }

    /// As stored: 16 hex digits.
    pub fn to_hex(self) -> String {
        format!("{:016x}", self.0)
    }

    /// From [`Anchor::to_hex`]; `None` for anything else.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 16 {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(Anchor)
    }
}

/// The last record a sink took of each partition in one batch, whose
/// anchors it stores with the batch's offsets. Records come in runs of one
/// partition, so the list is short and the run's partition is last.
#[derive(Debug, Default)]
pub struct LastTaken<'a>(Vec<(i32, RecordView<'a>)>);

impl<'a> LastTaken<'a> {
    /// Notes `view` as the last record taken of partition `p`.
    pub fn note(&mut self, p: i32, view: RecordView<'a>) {
        match self.0.iter_mut().rev().find(|(q, _)| *q == p) {
            Some((_, v)) => *v = view,
            None => self.0.push((p, view)),
        }
    }

    /// Each partition's anchor (one fingerprint per partition per batch).
    pub fn anchors(&self) -> impl Iterator<Item = (i32, Anchor)> + '_ {
        self.0.iter().map(|(p, v)| (*p, Anchor::of(v)))
    }
}

/// What the first record of a freshly assigned partition must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Verify {
    /// Nothing (checked, or nothing stored to check against).
    #[default]
    Done,
    /// The anchor record at this offset.
    Anchor(i64, Anchor),
    /// Any record at or past the stored offset.
    NotBelow(i64),
    /// Held: nothing is taken.
    Held(Hold),
}

/// The next offset a partition expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    next: Option<i64>,
    gap_seen: bool,
    verify: Verify,
}

impl Cursor {
    /// A cursor at `next` (`None`: the first record, wherever it is),
    /// trusted as it is: for a position this process just stored or
    /// reloaded, on a log it already checked.
    pub fn at(next: Option<i64>) -> Self {
        Cursor {
            next,
            gap_seen: false,
            verify: Verify::Done,
        }
    }

    /// A cursor at the stored `next` of a partition just assigned, whose
    /// first record proves the log is the one `next` was stored for:
    /// `anchor` at `next − 1`, or without one, a record not below `next`.
    pub fn assigned(next: Option<i64>, anchor: Option<Anchor>) -> Self {
        let verify = match (next, anchor) {
            (None, _) => Verify::Done,
            (Some(n), Some(a)) if n > 0 => Verify::Anchor(n - 1, a),
            (Some(n), _) => Verify::NotBelow(n),
        };
        Cursor {
            next,
            gap_seen: false,
            verify,
        }
    }

    /// Tells a cursor just assigned where its partition's log starts now:
    /// an anchor record already deleted (retention) cannot be checked, so
    /// the position rule decides; a log starting past the next offset
    /// holds the partition (records were deleted before they were taken).
    pub fn log_starts_at(&mut self, log_start: i64) {
        let Some(next) = self.next else { return };
        match self.verify {
            Verify::Anchor(..) | Verify::NotBelow(_) if log_start > next => {
                self.verify = Verify::Held(Hold::BehindLogStart { next, log_start });
            }
            Verify::Anchor(at, _) if log_start > at => self.verify = Verify::NotBelow(next),
            _ => {}
        }
    }

    /// Where fetching starts for this cursor: at the anchor record while it
    /// is still to be checked, else at the next offset.
    pub fn fetch_from(&self) -> Option<i64> {
        match self.verify {
            Verify::Anchor(o, _) => Some(o),
            _ => self.next,
        }
    }

    /// Why the partition is held, if it is.
    pub fn held(&self) -> Option<Hold> {
        match self.verify {
            Verify::Held(h) => Some(h),
            _ => None,
        }
    }

    /// True once the partition's log is known to be the stored offset's
    /// (the first record proved it, or there was nothing to prove).
    pub fn checked(&self) -> bool {
        self.verify == Verify::Done
    }

    /// The offset of the anchor record still to be seen, if any (the caller
    /// fingerprints only that record).
    pub fn anchor_offset(&self) -> Option<i64> {
        match self.verify {
            Verify::Anchor(o, _) => Some(o),
            _ => None,
        }
    }

    /// Decides on the record at `offset`: a freshly assigned partition's
    /// first record is checked against the anchor (module doc), then by
    /// position (stale copies before the cursor, gaps after it); `anchor`
    /// fingerprints the record (called only for the anchor record);
    /// `reseek_pending` says whether a re-seek of this partition was
    /// already asked for in this batch.
    pub fn admit_checked(
        &mut self,
        offset: i64,
        anchor: impl FnOnce() -> Anchor,
        reseek_pending: bool,
    ) -> Admit {
        match self.verify {
            Verify::Done => {}
            Verify::Held(_) => return Admit::Stale,
            Verify::Anchor(at, want) => {
                if offset == at {
                    if anchor() == want {
                        self.verify = Verify::Done;
                        return Admit::Stale;
                    }
                    return self.hold(Hold::AnchorChanged { offset: at });
                }
                if offset < at {
                    return self.hold(Hold::Rewound {
                        expected: at,
                        got: offset,
                    });
                }
                // The anchor record is gone (retention, compaction) but the
                // log goes on from there: judged by position, as before.
                self.verify = Verify::Done;
            }
            Verify::NotBelow(n) => {
                if offset < n {
                    return self.hold(Hold::Rewound {
                        expected: n,
                        got: offset,
                    });
                }
                self.verify = Verify::Done;
            }
        }
        self.admit(offset, reseek_pending)
    }

    fn hold(&mut self, why: Hold) -> Admit {
        self.verify = Verify::Held(why);
        Admit::Hold(why)
    }

    /// The next offset expected.
    pub fn next(&self) -> Option<i64> {
        self.next
    }

    /// Decides on the record at `offset` by position only (no anchor or
    /// hold is looked at: [`Cursor::admit_checked`] is the sinks' entry);
    /// `reseek_pending` says whether a re-seek of this partition was
    /// already asked for in this batch.
    fn admit(&mut self, offset: i64, reseek_pending: bool) -> Admit {
        match self.next {
            Some(c) if offset < c => return Admit::Stale,
            Some(c) if offset > c && !self.gap_seen => {
                self.gap_seen = true;
                return Admit::Reseek(c);
            }
            Some(c) if offset > c && reseek_pending => return Admit::Stale,
            _ => self.gap_seen = false,
        }
        self.next = Some(offset + 1);
        Admit::Take
    }

    /// The re-seek asked for by [`Admit::Reseek`] failed: the gap is not
    /// proven real, so the next record past the cursor asks again instead
    /// of being accepted.
    pub fn seek_failed(&mut self) {
        self.gap_seen = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_copies_and_gaps() {
        let mut c = Cursor::at(Some(10));
        assert_eq!(c.admit(9, false), Admit::Stale);
        assert_eq!(c.admit(10, false), Admit::Take);
        assert_eq!(c.next(), Some(11));
        // A fetch that raced a seek: seek back once, drop the rest.
        assert_eq!(c.admit(15, false), Admit::Reseek(11));
        assert_eq!(c.admit(16, true), Admit::Stale);
        // After the re-seek the records start at 11 again.
        assert_eq!(c.admit(11, false), Admit::Take);
        // A real gap: seen twice, then accepted.
        assert_eq!(c.admit(20, false), Admit::Reseek(12));
        assert_eq!(c.admit(20, false), Admit::Take);
        assert_eq!(c.next(), Some(21));
    }

    #[test]
    fn a_gap_is_accepted_only_after_a_seek_that_took() {
        let mut c = Cursor::at(Some(10));
        assert_eq!(c.admit(15, false), Admit::Reseek(10));
        c.seek_failed();
        // Still the old fetch position: ask again, never accept the gap.
        assert_eq!(c.admit(16, false), Admit::Reseek(10));
        assert_eq!(c.admit(10, false), Admit::Take);
    }

    fn a(n: u64) -> impl FnOnce() -> Anchor {
        move || Anchor(n)
    }

    #[test]
    fn the_anchor_record_unchanged_opens_the_partition() {
        let mut c = Cursor::assigned(Some(10), Some(Anchor(7)));
        assert_eq!(c.fetch_from(), Some(9), "fetching starts at the anchor");
        assert_eq!(
            c.admit_checked(9, a(7), false),
            Admit::Stale,
            "taken before"
        );
        assert_eq!(c.admit_checked(10, a(0), false), Admit::Take);
        assert_eq!(c.held(), None);
        assert_eq!(c.fetch_from(), Some(11));
    }

    #[test]
    fn another_record_at_the_anchor_holds_the_partition_for_good() {
        let mut c = Cursor::assigned(Some(10), Some(Anchor(7)));
        let why = Hold::AnchorChanged { offset: 9 };
        assert_eq!(c.admit_checked(9, a(8), false), Admit::Hold(why));
        // Nothing after it is taken, whatever the log does next.
        for o in [10, 11, 9, 500] {
            assert_eq!(c.admit_checked(o, a(7), false), Admit::Stale);
        }
        assert_eq!(c.held(), Some(why));
        assert_eq!(c.next(), Some(10), "the position did not move");
    }

    #[test]
    fn a_log_that_starts_below_the_anchor_was_reset() {
        let mut c = Cursor::assigned(Some(10), Some(Anchor(7)));
        assert_eq!(
            c.admit_checked(0, a(7), false),
            Admit::Hold(Hold::Rewound {
                expected: 9,
                got: 0
            })
        );
        assert_eq!(c.admit_checked(9, a(7), false), Admit::Stale, "held");
        // Without an anchor, the stored offset itself is the bound.
        let mut c = Cursor::assigned(Some(10), None);
        assert_eq!(c.fetch_from(), Some(10));
        assert!(matches!(c.admit_checked(3, a(0), false), Admit::Hold(_)));
        let mut c = Cursor::assigned(Some(10), None);
        assert_eq!(c.admit_checked(10, a(0), false), Admit::Take);
    }

    #[test]
    fn a_missing_anchor_record_is_judged_by_position() {
        // Retention took the anchor record; the log goes on at 10.
        let mut c = Cursor::assigned(Some(10), Some(Anchor(7)));
        assert_eq!(c.admit_checked(10, a(0), false), Admit::Take);
        // Further on: the usual gap rule (seek once, then accept).
        let mut c = Cursor::assigned(Some(10), Some(Anchor(7)));
        assert_eq!(c.admit_checked(12, a(0), false), Admit::Reseek(10));
        assert_eq!(c.admit_checked(12, a(0), false), Admit::Take);
    }

    #[test]
    fn a_log_start_past_the_anchor_or_the_next_offset() {
        // Retention took the anchor record only: the position rule decides.
        let mut c = Cursor::assigned(Some(10), Some(Anchor(7)));
        c.log_starts_at(10);
        assert_eq!(c.fetch_from(), Some(10));
        assert!(matches!(c.admit_checked(5, a(7), false), Admit::Hold(_)));
        let mut c = Cursor::assigned(Some(10), Some(Anchor(7)));
        c.log_starts_at(10);
        assert_eq!(c.admit_checked(10, a(0), false), Admit::Take);
        // Retention took records not yet taken: held, naming both offsets.
        let mut c = Cursor::assigned(Some(10), Some(Anchor(7)));
        c.log_starts_at(25);
        assert_eq!(
            c.held(),
            Some(Hold::BehindLogStart {
                next: 10,
                log_start: 25
            })
        );
        // The anchor record still there: nothing changes.
        let mut c = Cursor::assigned(Some(10), Some(Anchor(7)));
        c.log_starts_at(0);
        assert_eq!(c.fetch_from(), Some(9));
    }

    #[test]
    fn anchors_fingerprint_time_key_and_value() {
        let v = |ts, key: &'static [u8], value: &'static [u8]| RecordView {
            key: Some(key),
            value: Some(value),
            content_type: None,
            timestamp: ts,
            clock: ts,
            producer_clock: false,
        };
        let base = Anchor::of(&v(1, b"k", b"v"));
        assert_eq!(base, Anchor::of(&v(1, b"k", b"v")));
        assert_ne!(base, Anchor::of(&v(2, b"k", b"v")), "timestamp");
        assert_ne!(base, Anchor::of(&v(1, b"k2", b"v")), "key");
        assert_ne!(base, Anchor::of(&v(1, b"k", b"v2")), "value");
        assert_ne!(
            Anchor::of(&v(1, b"kv", b"")),
            Anchor::of(&v(1, b"k", b"v")),
            "where key ends and value starts"
        );
        assert_eq!(Anchor::from_hex(&base.to_hex()), Some(base));
        assert_eq!(Anchor::from_hex("xyz"), None);
    }

    #[test]
    fn an_unset_cursor_takes_the_first_record() {
        let mut c = Cursor::at(None);
        assert_eq!(c.admit(42, false), Admit::Take);
        assert_eq!(c.next(), Some(43));
    }
}
