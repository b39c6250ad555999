//! The rules of SPEC §2 that a well-typed event must still meet.
//!
//! Decoders check types and enumerations; this module checks values: lengths,
//! character sets, E.164, ISO codes, the future limit and `error_code` use.
//! The reference clock is the record's timestamp (as `source::view` bounds
//! it), not the consumer's wall clock, so every consumer group (and every
//! replay) reaches the same verdict for the same record. A timestamp its
//! producer stamped (`CreateTime`) is that producer's clock: the future rule
//! then allows [`limits::PRODUCER_CLOCK_SLACK_MICROS`] more
//! ([`future_limit`]), so a producer minutes slow does not dead-letter valid
//! events, while one far ahead cannot carry far-future events in (its stamp
//! is bounded by the reader's clock).

use notiflow_schema::event::limits;
use notiflow_schema::{Event, Micros, Status};

use crate::error::Reject;

/// How far `event_time` may be ahead of a record's timestamp: SPEC §2's
/// five minutes, plus the producer clock slack when the producer stamped it.
pub fn future_limit(producer_clock: bool) -> Micros {
    if producer_clock {
        limits::MAX_FUTURE_MICROS + limits::PRODUCER_CLOCK_SLACK_MICROS
    } else {
        limits::MAX_FUTURE_MICROS
    }
}

/// Checks every value rule of SPEC §2 on a decoded event; `event_time` may
/// be at most `future_limit` ahead of `reference_time`.
pub fn validate(
    ev: &Event<'_>,
    reference_time: Micros,
    future_limit: Micros,
) -> Result<(), Reject> {
    length("event_id", &ev.event_id, limits::EVENT_ID_MAX)?;
    length("message_id", &ev.message_id, limits::MESSAGE_ID_MAX)?;
    length("client_id", &ev.client_id, limits::CLIENT_ID_MAX)?;
    if !ev
        .client_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(Reject::BadClientId);
    }
    if !is_e164(&ev.recipient) {
        return Err(Reject::BadRecipient);
    }
    if let Some(t) = &ev.template {
        length("template", t, limits::TEMPLATE_MAX)?;
    }
    if ev.error_code.is_some() && ev.status != Status::Failed {
        return Err(Reject::ErrorCodeWithoutFailure(ev.status));
    }
    if !(limits::EVENT_TIME_MIN..limits::EVENT_TIME_END).contains(&ev.event_time) {
        return Err(Reject::BadTimestamp(format!(
            "{} µs since the epoch is outside the years 0000-9999",
            ev.event_time
        )));
    }
    let ahead = ev.event_time.saturating_sub(reference_time);
    if ahead > future_limit {
        return Err(Reject::FutureTimestamp {
            ahead_secs: ahead / 1_000_000,
        });
    }
    Ok(())
}

/// Checks that the record key is the message id (so duplicates share a partition).
pub fn check_key(key: Option<&[u8]>, message_id: &str) -> Result<(), Reject> {
    match key {
        None | Some([]) => Err(Reject::KeyMissing),
        Some(k) if k == message_id.as_bytes() => Ok(()),
        Some(_) => Err(Reject::KeyMismatch),
    }
}

fn length(field: &'static str, s: &str, max: usize) -> Result<(), Reject> {
    // A string has at most as many characters as bytes, so only one longer
    // than `max` bytes needs its characters counted.
    if s.is_empty() || (s.len() > max && s.chars().count() > max) {
        return Err(Reject::FieldLength {
            field,
            len: s.chars().count(),
            min: 1,
            max,
        });
    }
    Ok(())
}

fn is_e164(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = b.len().wrapping_sub(1);
    b.first() == Some(&b'+')
        && (limits::RECIPIENT_DIGITS_MIN..=limits::RECIPIENT_DIGITS_MAX).contains(&digits)
        && b[1..].iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use notiflow_schema::{Category, Country};
    use std::borrow::Cow;

    const LIMIT: Micros = limits::MAX_FUTURE_MICROS;

    fn event() -> Event<'static> {
        Event {
            event_id: "ev-1".into(),
            message_id: "wamid.1".into(),
            client_id: "acme_br-1.x".into(),
            recipient: "+5511987654321".into(),
            status: Status::Delivered,
            category: Category::Marketing,
            billable: true,
            country: Country::parse("BR").unwrap(),
            template: Some("promo".into()),
            event_time: 1_000_000_000,
            error_code: None,
            pricing_type: None,
        }
    }

    #[test]
    fn a_good_event_passes() {
        assert_eq!(validate(&event(), 1_000_000_000, LIMIT), Ok(()));
    }

    #[test]
    fn each_rule_has_its_reason() {
        type Mutation = fn(&mut Event<'static>);
        let cases: Vec<(Mutation, &str)> = vec![
            (|e| e.event_id = "".into(), "field_length"),
            (|e| e.event_id = "x".repeat(129).into(), "field_length"),
            (|e| e.message_id = "é".repeat(129).into(), "field_length"),
            (|e| e.client_id = "x".repeat(65).into(), "field_length"),
            (|e| e.client_id = "acme corp".into(), "bad_client_id"),
            (|e| e.client_id = "acmé".into(), "bad_client_id"),
            (|e| e.recipient = "5511987654321".into(), "bad_recipient"),
            (|e| e.recipient = "+1234567".into(), "bad_recipient"),
            (
                |e| e.recipient = "+1234567890123456".into(),
                "bad_recipient",
            ),
            (|e| e.recipient = "+55-11-98765".into(), "bad_recipient"),
            (
                |e| e.template = Some(Cow::Owned("t".repeat(513))),
                "field_length",
            ),
            (
                |e| e.error_code = Some(131_026),
                "error_code_without_failure",
            ),
            (|e| e.event_time += 301_000_000, "future_timestamp"),
        ];
        for (i, (mutate, code)) in cases.into_iter().enumerate() {
            let mut e = event();
            mutate(&mut e);
            let got = validate(&e, 1_000_000_000, LIMIT).expect_err(&format!("case {i} passed"));
            assert_eq!(got.code(), code, "case {i}: {got}");
        }
    }

    #[test]
    fn hostile_event_times_are_bad_timestamps_not_overflows() {
        // 0000-01-01T00:00:00Z and 10000-01-01T00:00:00Z, in µs, worked out
        // by hand: 719,528 and 2,932,897 days from 1970-01-01.
        let first = -719_528 * 86_400_000_000;
        let end = 2_932_897 * 86_400_000_000;
        for (t, reference, code) in [
            (i64::MIN, 1_000_000_000, "bad_timestamp"),
            (i64::MAX, 1_000_000_000, "bad_timestamp"),
            (first - 1, 1_000_000_000, "bad_timestamp"),
            (end, i64::MAX, "bad_timestamp"),
            // A hostile reference clock saturates instead of overflowing.
            (0, i64::MIN, "future_timestamp"),
        ] {
            let mut e = event();
            e.event_time = t;
            assert_eq!(
                validate(&e, reference, LIMIT).unwrap_err().code(),
                code,
                "{t}"
            );
        }
        for t in [first, end - 1] {
            let mut e = event();
            e.event_time = t;
            assert_eq!(validate(&e, t, LIMIT), Ok(()), "{t} is in range");
        }
    }

    #[test]
    fn limits_are_inclusive() {
        let mut e = event();
        e.event_id = "é".repeat(128).into();
        e.client_id = "c".repeat(64).into();
        e.recipient = "+123456789012345".into();
        e.event_time += 300_000_000;
        e.status = Status::Failed;
        e.error_code = Some(1);
        assert_eq!(validate(&e, 1_000_000_000, LIMIT), Ok(()));
    }

    #[test]
    fn a_producer_stamp_allows_a_slow_clock_a_broker_stamp_does_not() {
        // Six minutes ahead of the stamp: a producer clock six minutes slow.
        let mut e = event();
        e.event_time += 6 * 60_000_000;
        assert_eq!(
            validate(&e, 1_000_000_000, future_limit(false))
                .unwrap_err()
                .code(),
            "future_timestamp"
        );
        assert_eq!(validate(&e, 1_000_000_000, future_limit(true)), Ok(()));
        // 5 + 10 minutes is the most a producer's stamp allows.
        e.event_time = 1_000_000_000 + 15 * 60_000_000;
        assert_eq!(validate(&e, 1_000_000_000, future_limit(true)), Ok(()));
        e.event_time += 1;
        assert_eq!(
            validate(&e, 1_000_000_000, future_limit(true))
                .unwrap_err()
                .code(),
            "future_timestamp"
        );
    }

    #[test]
    fn key_must_be_the_message_id() {
        assert_eq!(check_key(Some(b"wamid.1"), "wamid.1"), Ok(()));
        assert_eq!(check_key(None, "wamid.1"), Err(Reject::KeyMissing));
        assert_eq!(check_key(Some(b""), "wamid.1"), Err(Reject::KeyMissing));
        assert_eq!(
            check_key(Some(b"wamid.2"), "wamid.1"),
            Err(Reject::KeyMismatch)
        );
    }
}
