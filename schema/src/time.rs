//! Event time on the wire and in memory.
//!
//! Every timestamp inside notiflow is UTC microseconds since the Unix epoch
//! ([`Micros`]), the unit of Avro `timestamp-micros` and of the Iceberg
//! `timestamptz` column. JSON carries RFC 3339 with an offset; the parser here
//! is strict (a bad timestamp is a dead-letter reason, not a guess) and
//! allocation-free, since it runs once per event on the hot path.

/// UTC microseconds since 1970-01-01T00:00:00Z.
pub type Micros = i64;

/// Microseconds in one second.
pub const SECOND_MICROS: i64 = 1_000_000;
/// Microseconds in one minute.
pub const MINUTE_MICROS: i64 = 60 * SECOND_MICROS;
/// Microseconds in one hour.
pub const HOUR_MICROS: i64 = 60 * MINUTE_MICROS;
/// Microseconds in one day.
pub const DAY_MICROS: i64 = 24 * HOUR_MICROS;

/// Start of the UTC minute that contains `t`, in whole minutes since the epoch.
pub const fn minute_of(t: Micros) -> i64 {
    t.div_euclid(MINUTE_MICROS)
}

/// Why an RFC 3339 timestamp was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampError {
    /// Not of the shape `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
    Syntax,
    /// A field is out of range (month 13, 31 April, hour 24, offset 25:00, …),
    /// or the instant lies outside [`EARLIEST`]..=[`LATEST`].
    Range,
}

/// The first instant notiflow takes, `0000-01-01T00:00:00Z`, and the last,
/// `9999-12-31T23:59:59.999999Z`: every instant in between has a UTC year
/// of four digits, which [`format_rfc3339`] writes (an offset can push a
/// written `0000` or `9999` past them). Events, API times and report
/// ranges are all held to it.
pub const EARLIEST: Micros = days_from_civil(0, 1, 1) * DAY_MICROS;
/// See [`EARLIEST`].
pub const LATEST: Micros = days_from_civil(10_000, 1, 1) * DAY_MICROS - 1;

/// Parses an RFC 3339 timestamp with a mandatory offset into UTC microseconds.
///
/// Fractions beyond microseconds are truncated. Leap seconds (`:60`) are refused.
pub fn parse_rfc3339(s: &str) -> Result<Micros, TimestampError> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return Err(TimestampError::Syntax);
    }
    let year = digits(b, 0, 4)?;
    expect(b, 4, b'-')?;
    let month = digits(b, 5, 2)?;
    expect(b, 7, b'-')?;
    let day = digits(b, 8, 2)?;
    if !matches!(b[10], b'T' | b't' | b' ') {
        return Err(TimestampError::Syntax);
    }
    let hour = digits(b, 11, 2)?;
    expect(b, 13, b':')?;
    let minute = digits(b, 14, 2)?;
    expect(b, 16, b':')?;
    let second = digits(b, 17, 2)?;

    let mut i = 19;
    let mut micros = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 6 {
                micros = micros * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return Err(TimestampError::Syntax);
        }
        for _ in n..6 {
            micros *= 10;
        }
    }
    let offset_secs = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if i + 6 == b.len() => {
            let oh = digits(b, i + 1, 2)?;
            expect(b, i + 3, b':')?;
            let om = digits(b, i + 4, 2)?;
            if oh > 23 || om > 59 {
                return Err(TimestampError::Range);
            }
            let off = oh * 3600 + om * 60;
            if sign == b'+' { off } else { -off }
        }
        _ => return Err(TimestampError::Syntax),
    };

    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(TimestampError::Range);
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let t = secs * 1_000_000 + micros;
    if !(EARLIEST..=LATEST).contains(&t) {
        return Err(TimestampError::Range);
    }
    Ok(t)
}

/// Formats UTC microseconds as RFC 3339 with microseconds and `Z`
/// (`2026-11-23T20:01:02.123456Z`), appending to `out`.
pub fn write_rfc3339(t: Micros, out: &mut String) {
    let secs = t.div_euclid(1_000_000);
    let micros = t.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut buf = [0u8; 27];
    put(&mut buf[0..4], y);
    buf[4] = b'-';
    put(&mut buf[5..7], m);
    buf[7] = b'-';
    put(&mut buf[8..10], d);
    buf[10] = b'T';
    put(&mut buf[11..13], sod / 3600);
    buf[13] = b':';
    put(&mut buf[14..16], sod / 60 % 60);
    buf[16] = b':';
    put(&mut buf[17..19], sod % 60);
    buf[19] = b'.';
    put(&mut buf[20..26], micros);
    buf[26] = b'Z';
    // Every byte written above is ASCII.
    out.push_str(std::str::from_utf8(&buf).unwrap_or_default());
}

/// RFC 3339 string of `t` (convenience over [`write_rfc3339`]).
pub fn format_rfc3339(t: Micros) -> String {
    let mut s = String::with_capacity(27);
    write_rfc3339(t, &mut s);
    s
}

fn put(dst: &mut [u8], mut v: i64) {
    for slot in dst.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

fn digits(b: &[u8], at: usize, n: usize) -> Result<i64, TimestampError> {
    let mut v = 0i64;
    for &c in b.get(at..at + n).ok_or(TimestampError::Syntax)? {
        if !c.is_ascii_digit() {
            return Err(TimestampError::Syntax);
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Ok(v)
}

fn expect(b: &[u8], at: usize, c: u8) -> Result<(), TimestampError> {
    if b.get(at) == Some(&c) {
        Ok(())
    } else {
        Err(TimestampError::Syntax)
    }
}

const fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

const fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub const fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Proleptic Gregorian `(year, month, day)` of a day number since 1970-01-01.
pub const fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc_and_offsets_to_the_same_instant() {
        let z = parse_rfc3339("2026-11-23T20:01:02.123456Z").unwrap();
        assert_eq!(z, 1_795_464_062_123_456);
        assert_eq!(
            parse_rfc3339("2026-11-23T17:01:02.123456-03:00").unwrap(),
            z
        );
        assert_eq!(
            parse_rfc3339("2026-11-24T01:31:02.123456+05:30").unwrap(),
            z
        );
        assert_eq!(parse_rfc3339("2026-11-23t20:01:02.123456789z").unwrap(), z);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59.5Z").unwrap(), -500_000);
    }

    #[test]
    fn refuses_what_is_not_rfc3339() {
        use TimestampError::*;
        for (s, why) in [
            ("2026-11-23T20:01:02", Syntax),   // no offset
            ("2026-11-23 20:01", Syntax),      // too short
            ("2026-11-23T20:01:02.Z", Syntax), // empty fraction
            ("2026-11-23T20:01:02+0300", Syntax),
            ("2026/11/23T20:01:02Z", Syntax),
            ("1795464062", Syntax),
            ("2026-13-01T00:00:00Z", Range),
            ("2026-04-31T00:00:00Z", Range),
            ("2025-02-29T00:00:00Z", Range),
            ("2026-01-01T24:00:00Z", Range),
            ("2026-01-01T23:59:60Z", Range),
            ("2026-01-01T00:00:00+24:00", Range),
            // UTC years outside 0000–9999: an offset pushes them out.
            ("0000-01-01T00:30:00+01:00", Range),
            ("9999-12-31T23:30:00-01:00", Range),
        ] {
            assert_eq!(parse_rfc3339(s), Err(why), "{s}");
        }
        assert!(parse_rfc3339("2024-02-29T00:00:00Z").is_ok());
        // The bounds, worked out by hand: 719,528 days before 1970-01-01,
        // and 2,932,897 days after it less a microsecond.
        assert_eq!(EARLIEST, -719_528 * 86_400_000_000);
        assert_eq!(LATEST, 2_932_897 * 86_400_000_000 - 1);
        assert_eq!(parse_rfc3339("0000-01-01T00:00:00Z"), Ok(EARLIEST));
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59.999999Z"), Ok(LATEST));
        assert_eq!(format_rfc3339(EARLIEST), "0000-01-01T00:00:00.000000Z");
        assert_eq!(format_rfc3339(LATEST), "9999-12-31T23:59:59.999999Z");
    }

    #[test]
    fn format_round_trips() {
        for t in [
            0,
            1_795_464_062_123_456,
            -1,
            951_782_400_000_000,
            4_102_444_799_999_999,
        ] {
            assert_eq!(parse_rfc3339(&format_rfc3339(t)).unwrap(), t);
        }
        assert_eq!(
            format_rfc3339(1_795_464_062_123_456),
            "2026-11-23T20:01:02.123456Z"
        );
    }

    #[test]
    fn minutes_floor_towards_the_past() {
        assert_eq!(minute_of(59_999_999), 0);
        assert_eq!(minute_of(60_000_000), 1);
        assert_eq!(minute_of(-1), -1);
    }
}
