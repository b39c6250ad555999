//! The daily billing report's rules (SPEC §5) that do not depend on the
//! engine: the billing day's window in the billing zone, pricing the
//! engine's counts with the rate card in integer micros, per-client totals,
//! and the report's Arrow shape. The engines only count, per client ×
//! category × country, the messages whose first billable event falls in
//! the window; everything that touches money happens here, once.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use chrono::{NaiveDate, TimeZone};
use chrono_tz::Tz;
use notiflow_schema::Micros;

use crate::error::ReportError;
use crate::ratecard::RateCard;

/// The instants a billing day covers, and the look-back that finds each
/// message's first billable event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The billing day.
    pub day: NaiveDate,
    /// First instant of the day in the billing zone, UTC micros.
    pub start: Micros,
    /// First instant of the next day.
    pub end: Micros,
    /// `start` minus the look-back: events before it are not read.
    pub lookback_start: Micros,
}

/// The first instant whose local date in `tz` is `day` (midnight, or the
/// end of a DST gap that swallowed midnight).
pub fn day_start(tz: Tz, day: NaiveDate) -> Result<Micros, ReportError> {
    for minute in (0..=180).step_by(15) {
        let local = day
            .and_hms_opt(0, 0, 0)
            .map(|d| d + chrono::Duration::minutes(minute))
            .ok_or_else(|| ReportError::input(format!("bad day {day}")))?;
        if let Some(t) = tz.from_local_datetime(&local).earliest() {
            return Ok(t.timestamp_micros());
        }
    }
    Err(ReportError::input(format!("{day} has no midnight in {tz}")))
}

/// The billing day (in `tz`) of instant `t`, UTC micros.
pub fn day_of(tz: Tz, t: Micros) -> NaiveDate {
    tz.timestamp_micros(t)
        .single()
        .map_or_else(NaiveDate::default, |d| d.date_naive())
}

/// An instant given as RFC 3339, or as a date `YYYY-MM-DD` meaning the
/// start of that day in `tz` (how the CLI and the API take detail ranges).
pub fn instant(tz: Tz, text: &str) -> Result<Micros, ReportError> {
    if let Ok(t) = notiflow_schema::time::parse_rfc3339(text) {
        return Ok(t);
    }
    let day: NaiveDate = text.parse().map_err(|_| {
        ReportError::input(format!(
            "'{text}' is neither RFC 3339 nor YYYY-MM-DD (years 0000–9999)"
        ))
    })?;
    in_years(day_start(tz, day)?, text)
}

/// `t` if it lies in the years 0000–9999 (UTC), which every time notiflow
/// writes has (a date of the year 0 or 10000 in another zone may not).
fn in_years(t: Micros, what: &str) -> Result<Micros, ReportError> {
    use notiflow_schema::time::{EARLIEST, LATEST};
    if (EARLIEST..=LATEST).contains(&t) {
        Ok(t)
    } else {
        Err(ReportError::input(format!(
            "'{what}' lies outside the years 0000–9999 (UTC)"
        )))
    }
}

impl Window {
    /// The window of `day` in `tz`, looking back `lookback_days`.
    pub fn of(tz: Tz, day: NaiveDate, lookback_days: u32) -> Result<Window, ReportError> {
        let next = day
            .succ_opt()
            .ok_or_else(|| ReportError::input(format!("bad day {day}")))?;
        let back = day
            .checked_sub_days(chrono::Days::new(u64::from(lookback_days)))
            .ok_or_else(|| ReportError::input(format!("bad day {day}")))?;
        let what = day.to_string();
        Ok(Window {
            day,
            start: in_years(day_start(tz, day)?, &what)?,
            end: in_years(day_start(tz, next)?, &what)?,
            lookback_start: in_years(day_start(tz, back)?, &what)?,
        })
    }

    /// Refuses a day that has not ended yet in the billing zone.
    pub fn check_complete(&self, now: Micros) -> Result<(), ReportError> {
        if self.end > now {
            return Err(ReportError::input(format!(
                "billing day {} has not ended yet in the billing time zone (it ends at {})",
                self.day,
                notiflow_schema::time::format_rfc3339(self.end)
            )));
        }
        Ok(())
    }
}

/// The instants a card's free row covers, in the billing zone: the
/// delivered and read events of its category and pricing type (either may
/// be every one) in `[from, to)` (either end open when `None`) are not
/// billable events. Engines take these, so a free day is the billing
/// zone's day, exactly as the rate card's prices are. An event without a
/// pricing type is `regular`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeSpan {
    /// Pricing category (None: every one).
    pub category: Option<String>,
    /// Pricing type (None: every one).
    pub pricing_type: Option<String>,
    /// First instant, UTC micros.
    pub from: Option<Micros>,
    /// First instant after, UTC micros.
    pub to: Option<Micros>,
}

/// The free spans of `card`'s `[[free]]` rows, as instants of `tz`.
pub fn free_spans(card: &RateCard, tz: Tz) -> Result<Vec<FreeSpan>, ReportError> {
    let at = |d: Option<NaiveDate>| d.map(|d| day_start(tz, d)).transpose();
    card.free()
        .iter()
        .map(|f| {
            Ok(FreeSpan {
                category: f.category.clone(),
                pricing_type: f.pricing_type.map(|p| p.as_str().to_string()),
                from: at(f.from)?,
                to: at(f.to)?,
            })
        })
        .collect()
}

/// Messages first billed in the window, per client × category × country
/// (what an engine returns, sorted).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Count {
    /// Tenant.
    pub client_id: String,
    /// Pricing category.
    pub category: String,
    /// Market.
    pub country: String,
    /// Messages.
    pub messages: u64,
}

/// Messages of a client × category × country to bill on an invoice: first
/// billed on the invoice's day, or a late line of an earlier issued day.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Item {
    /// Tenant.
    pub client_id: String,
    /// A late line: its messages belong to `day`, an earlier issued day.
    pub late: bool,
    /// The day the messages belong to (priced at that day's rates).
    pub day: NaiveDate,
    /// Pricing category.
    pub category: String,
    /// Market.
    pub country: String,
    /// Messages.
    pub messages: i64,
}

/// What an invoice bills of the messages an engine found (each message's
/// first billable event in the day and its look-back, or older among the
/// rows that reached the lake after the last invoice): its own, first
/// billed in the day, and the late ones, first billed on an earlier issued
/// day that reached the lake after it (per day); and those it holds.
#[derive(Debug, Default)]
pub struct Split {
    /// First billable event in the day.
    pub own: Vec<RecordBatch>,
    /// Late lines' messages, per the day they belong to.
    pub late: Vec<(NaiveDate, RecordBatch)>,
    /// Messages of an earlier day this invoice does not bill and a later
    /// one may no longer see the first billable event of (per the day
    /// they belong to): kept in `billing_holds`, left for that day's run
    /// or correction.
    pub held: Vec<(NaiveDate, RecordBatch)>,
}

/// Splits the engine's `messages` (batches of `billed::message_schema`,
/// none of them in the ledger or held for another day: the engines leave
/// those out) for the invoice of `w.day` in `tz`: one whose first billable
/// event lies in the day is the day's own; one from an earlier day is a
/// late line if `late_ok` accepts that day (an issued day whose invoice
/// read the ledger for its whole look-back), else left for that day's own
/// run or a correction, and held when that day is `issued` (only a
/// correction bills it) or lies before the look-back (later runs would
/// not see it).
pub fn split(
    messages: &[RecordBatch],
    w: &Window,
    tz: Tz,
    late_ok: impl Fn(NaiveDate) -> bool,
    issued: impl Fn(NaiveDate) -> bool,
) -> Result<Split, ReportError> {
    use arrow::array::{AsArray, BooleanArray};
    use arrow::compute::filter_record_batch;
    use arrow::datatypes::TimestampMicrosecondType;
    let mut out = Split::default();
    for b in messages {
        let at = b.column(5).as_primitive::<TimestampMicrosecondType>();
        let mut own = Vec::with_capacity(b.num_rows());
        // Per row: an earlier day, and whether it is a late line.
        let mut earlier: Vec<Option<(NaiveDate, bool)>> = Vec::with_capacity(b.num_rows());
        for i in 0..b.num_rows() {
            let t = at.value(i);
            own.push(t >= w.start && t < w.end);
            earlier.push((t < w.start).then(|| day_of(tz, t)).and_then(|d| {
                if late_ok(d) {
                    Some((d, true))
                } else if issued(d) || t < w.lookback_start {
                    Some((d, false))
                } else {
                    None
                }
            }));
        }
        out.own
            .push(filter_record_batch(b, &BooleanArray::from(own))?);
        let mut days: Vec<(NaiveDate, bool)> = earlier.iter().flatten().copied().collect();
        days.sort_unstable();
        days.dedup();
        for (d, late) in days {
            let mask: BooleanArray = earlier
                .iter()
                .map(|x| Some(*x == Some((d, late))))
                .collect();
            let rows = filter_record_batch(b, &mask)?;
            if late {
                out.late.push((d, rows));
            } else {
                out.held.push((d, rows));
            }
        }
    }
    Ok(out)
}

/// The items of an invoice of `day`: its own messages and late lines per
/// client × category × country (and day), sorted as [`price_items`] wants.
pub fn items(split: &Split, day: NaiveDate, with_late: bool) -> Vec<Item> {
    use arrow::array::AsArray;
    use std::collections::BTreeMap;
    let mut cells: BTreeMap<(String, bool, NaiveDate, String, String), i64> = BTreeMap::new();
    let own = split.own.iter().map(|b| (day, false, b));
    let late = split
        .late
        .iter()
        .filter(|_| with_late)
        .map(|(d, b)| (*d, true, b));
    for (d, is_late, b) in own.chain(late) {
        let (c, cat, co) = (
            b.column(0).as_string::<i32>(),
            b.column(2).as_string::<i32>(),
            b.column(3).as_string::<i32>(),
        );
        for i in 0..b.num_rows() {
            *cells
                .entry((
                    c.value(i).to_string(),
                    is_late,
                    d,
                    cat.value(i).to_string(),
                    co.value(i).to_string(),
                ))
                .or_default() += 1;
        }
    }
    cells
        .into_iter()
        .map(
            |((client_id, late, day, category, country), messages)| Item {
                client_id,
                late,
                day,
                category,
                country,
                messages,
            },
        )
        .collect()
}

/// What a line of the billing report is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// Messages first billed on the invoice's day.
    Item,
    /// Messages of an earlier, issued day that reached the lake after it.
    Late,
    /// A client's total over its items and late lines.
    Total,
}

impl LineKind {
    /// As the report's `line` column says it.
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::Item => "item",
            LineKind::Late => "late",
            LineKind::Total => "total",
        }
    }
}

/// One line of the billing report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The billing day it bills: the invoice's, or a late line's own.
    pub day: NaiveDate,
    /// Item, late or total.
    pub kind: LineKind,
    /// Tenant.
    pub client_id: String,
    /// Category (None on the client's total line).
    pub category: Option<String>,
    /// Country (None on the client's total line).
    pub country: Option<String>,
    /// Billable messages.
    pub messages: i64,
    /// Unit price (None on the total line).
    pub unit_price_micros: Option<i64>,
    /// Amount, micros.
    pub amount_micros: i64,
}

/// Prices `counts` (sorted by client) with `card` on `day`: an item line per
/// count and a total line after each client's items. A missing price is an
/// error.
pub fn price(counts: &[Count], card: &RateCard, day: NaiveDate) -> Result<Vec<Line>, ReportError> {
    let items: Vec<Item> = counts
        .iter()
        .map(|c| {
            Ok(Item {
                client_id: c.client_id.clone(),
                late: false,
                day,
                category: c.category.clone(),
                country: c.country.clone(),
                messages: i64::try_from(c.messages)
                    .map_err(|_| ReportError::Other("message count overflows".into()))?,
            })
        })
        .collect::<Result<_, ReportError>>()?;
    price_items(&items, card, day)
}

/// Prices the invoice of `day`: `items` sorted (by client, then the day's
/// own before late lines, by day, category, country), each at its own
/// day's rate, and a total line after each client's lines.
pub fn price_items(
    items: &[Item],
    card: &RateCard,
    day: NaiveDate,
) -> Result<Vec<Line>, ReportError> {
    let mut out = Vec::with_capacity(items.len() + items.len() / 2);
    let mut i = 0;
    while i < items.len() {
        let client = &items[i].client_id;
        let (mut messages, mut amount) = (0i64, 0i64);
        while i < items.len() && &items[i].client_id == client {
            let c = &items[i];
            let unit = card.price(&c.category, &c.country, c.day)?;
            let n = c.messages;
            let amt = unit.checked_mul(n).ok_or_else(|| {
                ReportError::Other(format!("amount overflows for {client} × {}", c.category))
            })?;
            amount = amount
                .checked_add(amt)
                .ok_or_else(|| ReportError::Other(format!("total overflows for {client}")))?;
            messages += n;
            out.push(Line {
                day: c.day,
                kind: if c.late {
                    LineKind::Late
                } else {
                    LineKind::Item
                },
                client_id: client.clone(),
                category: Some(c.category.clone()),
                country: Some(c.country.clone()),
                messages: n,
                unit_price_micros: Some(unit),
                amount_micros: amt,
            });
            i += 1;
        }
        out.push(Line {
            day,
            kind: LineKind::Total,
            client_id: client.clone(),
            category: None,
            country: None,
            messages,
            unit_price_micros: None,
            amount_micros: amount,
        });
    }
    Ok(out)
}

/// The billing report's columns.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("billing_day", DataType::Utf8, false),
        Field::new("client_id", DataType::Utf8, false),
        Field::new("line", DataType::Utf8, false),
        Field::new("category", DataType::Utf8, true),
        Field::new("country", DataType::Utf8, true),
        Field::new("billable_messages", DataType::Int64, false),
        Field::new("unit_price_micros", DataType::Int64, true),
        Field::new("amount_micros", DataType::Int64, false),
        Field::new("currency", DataType::Utf8, false),
    ]))
}

/// The lines as one record batch (`line` is `item`, `late` or `total`;
/// `billing_day` the day each line bills).
pub fn to_batch(lines: &[Line], currency: &str) -> Result<RecordBatch, ReportError> {
    let n = lines.len();
    let mut b_day = StringBuilder::with_capacity(n, n * 10);
    let mut b_client = StringBuilder::with_capacity(n, n * 16);
    let mut b_line = StringBuilder::with_capacity(n, n * 5);
    let mut b_cat = StringBuilder::with_capacity(n, n * 10);
    let mut b_country = StringBuilder::with_capacity(n, n * 2);
    let mut b_msgs = Int64Builder::with_capacity(n);
    let mut b_unit = Int64Builder::with_capacity(n);
    let mut b_amount = Int64Builder::with_capacity(n);
    let mut b_cur = StringBuilder::with_capacity(n, n * 3);
    for l in lines {
        b_day.append_value(l.day.to_string());
        b_client.append_value(&l.client_id);
        b_line.append_value(l.kind.as_str());
        b_cat.append_option(l.category.as_deref());
        b_country.append_option(l.country.as_deref());
        b_msgs.append_value(l.messages);
        b_unit.append_option(l.unit_price_micros);
        b_amount.append_value(l.amount_micros);
        b_cur.append_value(currency);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(b_day.finish()),
        Arc::new(b_client.finish()),
        Arc::new(b_line.finish()),
        Arc::new(b_cat.finish()),
        Arc::new(b_country.finish()),
        Arc::new(b_msgs.finish()),
        Arc::new(b_unit.finish()),
        Arc::new(b_amount.finish()),
        Arc::new(b_cur.finish()),
    ];
    Ok(RecordBatch::try_new(schema(), cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp() -> Tz {
        "America/Sao_Paulo".parse().unwrap()
    }

    #[test]
    fn a_sao_paulo_day_runs_from_03_00_utc() {
        let w = Window::of(sp(), "2026-11-22".parse().unwrap(), 7).unwrap();
        let t = |s: &str| notiflow_schema::time::parse_rfc3339(s).unwrap();
        assert_eq!(w.start, t("2026-11-22T03:00:00Z"));
        assert_eq!(w.end, t("2026-11-23T03:00:00Z"));
        assert_eq!(w.lookback_start, t("2026-11-15T03:00:00Z"));
        // 02:30 UTC on the 23rd is still the 22nd in São Paulo.
        let late = t("2026-11-23T02:30:00Z");
        assert!(w.start <= late && late < w.end);
        assert!(w.check_complete(t("2026-11-23T02:59:59Z")).is_err());
        assert!(w.check_complete(t("2026-11-23T03:00:00Z")).is_ok());
    }

    #[test]
    fn times_outside_the_years_0000_to_9999_are_refused() {
        // São Paulo is behind UTC: its 9999-12-31 ends in UTC year 10000;
        // Tokyo is ahead: its 0000-01-01 starts in UTC year -1.
        let tokyo: Tz = "Asia/Tokyo".parse().unwrap();
        for (tz, text) in [
            (sp(), "9999-12-31"),
            (tz_utc(), "+10000-01-01"),
            (tokyo, "0000-01-01"),
            (tz_utc(), "0000-01-01T00:00:00+00:01"),
        ] {
            let e = instant(tz, text)
                .and_then(|_| Window::of(tz, text.parse().map_err(|_| ReportError::input("x"))?, 7))
                .unwrap_err();
            assert!(e.is_input(), "{text}: {e}");
        }
        assert!(instant(tz_utc(), "0000-01-01").is_ok());
        assert!(instant(sp(), "9999-12-30").is_ok());
    }

    fn tz_utc() -> Tz {
        "UTC".parse().unwrap()
    }

    /// Each earlier day's message goes where the rule says, written out:
    /// the 22nd in São Paulo, look-back 7 (from the 15th); the 20th and
    /// 21st issued and taking late lines, the 16th issued without them,
    /// the 18th not issued.
    #[test]
    fn split_keeps_the_day_late_lines_and_holds_apart() {
        use arrow::array::{StringArray, TimestampMicrosecondArray};
        let t = |s: &str| notiflow_schema::time::parse_rfc3339(s).unwrap();
        let w = Window::of(sp(), "2026-11-22".parse().unwrap(), 7).unwrap();
        let rows = [
            ("own", "2026-11-22T12:00:00Z"),
            ("late21", "2026-11-21T12:00:00Z"),
            ("held16", "2026-11-16T12:00:00Z"),
            ("left18", "2026-11-18T12:00:00Z"),
            ("held10", "2026-11-10T12:00:00Z"),
        ];
        let text = |f: &dyn Fn(&(&str, &str)) -> String| -> ArrayRef {
            Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
        };
        let batch = RecordBatch::try_new(
            crate::billed::message_schema(),
            vec![
                text(&|_| "acme".into()),
                text(&|r| r.0.into()),
                text(&|_| "utility".into()),
                text(&|_| "BR".into()),
                text(&|r| format!("e-{}", r.0)),
                Arc::new(
                    TimestampMicrosecondArray::from(
                        rows.iter().map(|r| t(r.1)).collect::<Vec<_>>(),
                    )
                    .with_timezone("+00:00"),
                ),
            ],
        )
        .unwrap();
        let d = |s: &str| s.parse::<NaiveDate>().unwrap();
        let issued = [d("2026-11-16"), d("2026-11-20"), d("2026-11-21")];
        let split = split(
            &[batch],
            &w,
            sp(),
            |x| x >= d("2026-11-20") && issued.contains(&x),
            |x| issued.contains(&x),
        )
        .unwrap();
        let ids = |b: &RecordBatch| -> Vec<String> {
            use arrow::array::AsArray;
            let c = b.column(1).as_string::<i32>();
            (0..b.num_rows()).map(|i| c.value(i).to_string()).collect()
        };
        let own: Vec<String> = split.own.iter().flat_map(ids).collect();
        assert_eq!(own, ["own"]);
        let per_day = |v: &[(NaiveDate, RecordBatch)]| -> Vec<(String, Vec<String>)> {
            v.iter().map(|(d, b)| (d.to_string(), ids(b))).collect()
        };
        assert_eq!(
            per_day(&split.late),
            [("2026-11-21".to_string(), vec!["late21".to_string()])]
        );
        assert_eq!(
            per_day(&split.held),
            [
                ("2026-11-10".to_string(), vec!["held10".to_string()]),
                ("2026-11-16".to_string(), vec!["held16".to_string()])
            ]
        );
    }

    #[test]
    fn a_dst_gap_at_midnight_starts_the_day_when_the_clock_resumes() {
        // Brazil's DST began at 00:00 on 2018-11-04: the day began at 01:00 local.
        let s = day_start(sp(), "2018-11-04".parse().unwrap()).unwrap();
        assert_eq!(
            s,
            notiflow_schema::time::parse_rfc3339("2018-11-04T03:00:00Z").unwrap()
        );
    }

    #[test]
    fn lines_are_priced_in_micros_with_a_total_per_client() {
        let card = RateCard::parse(
            r#"version = "v"
currency = "USD"
[[rates]]
category = "marketing"
country = "*"
price_micros = 25000
from = "2026-01-01"
[[rates]]
category = "utility"
country = "BR"
price_micros = 3333
from = "2026-01-01"
"#,
        )
        .unwrap();
        let c = |client: &str, cat: &str, country: &str, n| Count {
            client_id: client.into(),
            category: cat.into(),
            country: country.into(),
            messages: n,
        };
        let counts = [
            c("a", "marketing", "MX", 3),
            c("a", "utility", "BR", 7),
            c("b", "marketing", "BR", 1),
        ];
        let day = "2026-11-22".parse().unwrap();
        let lines = price(&counts, &card, day).unwrap();
        let amounts: Vec<i64> = lines.iter().map(|l| l.amount_micros).collect();
        assert_eq!(amounts, [75_000, 23_331, 98_331, 25_000, 25_000]);
        assert_eq!(lines[2].messages, 10);
        assert!(lines[2].category.is_none());
        let e = price(&[c("a", "utility", "MX", 1)], &card, day).unwrap_err();
        assert!(e.to_string().contains("no price for utility × MX"), "{e}");
        let batch = to_batch(&lines, &card.currency).unwrap();
        assert_eq!(batch.num_rows(), 5);
    }
}
