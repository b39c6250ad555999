//! Which records of a partition a consumer that keeps its own offsets
//! (aggregator in Redis, lake in the Iceberg table) accepts.
//!
//! After a seek, librdkafka may still hand out records fetched before it:
//! records before the cursor are stale copies; a record after the cursor
//! means a fetch raced the seek, so seek back once. If the gap is still
//! there after a seek that succeeded, it is real (the log has no such offsets, e.g. after
//! retention or compaction) and the records are accepted.

/// What to do with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// The next record: take it.
    Take,
    /// Before the cursor, or after it while a re-seek is pending: drop it.
    Stale,
    /// Past the cursor for the first time: drop it and seek to this offset.
    Reseek(i64),
}

/// The next offset a partition expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    next: Option<i64>,
    gap_seen: bool,
}

impl Cursor {
    /// A cursor at `next` (`None`: the first record, wherever it is).
    pub fn at(next: Option<i64>) -> Self {
        Cursor {
            next,
            gap_seen: false,
        }
    }

    /// The next offset expected.
    pub fn next(&self) -> Option<i64> {
        self.next
    }

    /// Decides on the record at `offset`; `reseek_pending` says whether a
    /// re-seek of this partition was already asked for in this batch.
    pub fn admit(&mut self, offset: i64, reseek_pending: bool) -> Admit {
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

    #[test]
    fn an_unset_cursor_takes_the_first_record() {
        let mut c = Cursor::at(None);
        assert_eq!(c.admit(42, false), Admit::Take);
        assert_eq!(c.next(), Some(43));
    }
}
