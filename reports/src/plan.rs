//! When report jobs are due: cron expressions, and the **calendar of
//! billing days** (one slot per billing day of the zone, due the cron's
//! time of day after the day ended: a cron evaluated on the wall clock
//! skips a day whose 00:15 does not exist and fires twice on one that
//! repeats). Apart from the scheduler so the configuration can check a
//! job's cron without depending on what runs it.

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use cron::{Schedule, TimeUnitSpec};
use notiflow_schema::Micros;
use notiflow_schema::time::DAY_MICROS;

use crate::billing::day_start;
use crate::error::ReportError;

/// Parses a cron expression (`sec min hour day month weekday [year]`).
pub fn parse_cron(expr: &str) -> Result<Schedule, ReportError> {
    Schedule::from_str(expr).map_err(|e| {
        ReportError::input(format!(
            "'{expr}' is not a cron expression with seconds (sec min hour day month weekday): {e}"
        ))
    })
}

fn at(tz: Tz, t: Micros) -> DateTime<Tz> {
    tz.timestamp_micros(t)
        .single()
        .unwrap_or_else(|| Utc::now().with_timezone(&tz))
}

/// Due slots of `schedule` in `(from, to]`, oldest first, at most `cap`
/// (the newest ones).
pub fn due(schedule: &Schedule, tz: Tz, from: Micros, to: Micros, cap: usize) -> Vec<Micros> {
    let mut v: Vec<Micros> = schedule
        .after(&at(tz, from))
        .map(|t| t.timestamp_micros())
        .take_while(|t| *t <= to)
        .collect();
    if v.len() > cap {
        v.drain(..v.len() - cap);
    }
    v
}

/// The billing day a cron firing at `slot` covers: the day before it.
pub fn day_for(tz: Tz, slot: Micros) -> NaiveDate {
    let local = at(tz, slot).date_naive();
    local.pred_opt().unwrap_or(local)
}

/// One due run of a job: when it was due (the run ledger's key with the
/// job's name) and the billing day it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Due time, UTC micros.
    pub at: Micros,
    /// The billing day it covers.
    pub day: NaiveDate,
}

/// When a job's runs are due.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Billing: one slot per billing day of the zone, `delay` micros after
    /// the day ends (see the module doc).
    Calendar {
        /// The cron's time of day, as micros after the day's end.
        delay: Micros,
    },
    /// Other jobs: the cron's firings in the zone, each covering the day
    /// before it.
    Cron(Box<Schedule>),
}

impl Plan {
    /// The plan of a job with `cron`: a billing job's must fire once a
    /// day (`sec min hour * * *`): its time of day is the delay after the
    /// day.
    pub fn new(cron: &str, billing: bool) -> Result<Plan, ReportError> {
        let schedule = parse_cron(cron)?;
        if !billing {
            return Ok(Plan::Cron(Box::new(schedule)));
        }
        let once = |n: u32| n == 1;
        let daily = schedule.days_of_month().is_all()
            && schedule.months().is_all()
            && schedule.days_of_week().is_all()
            && schedule.years().is_all();
        let (Some(s), Some(m), Some(h)) = (
            schedule.seconds().iter().next(),
            schedule.minutes().iter().next(),
            schedule.hours().iter().next(),
        ) else {
            return Err(ReportError::input(format!("'{cron}' never fires")));
        };
        if !daily
            || !once(schedule.seconds().count())
            || !once(schedule.minutes().count())
            || !once(schedule.hours().count())
        {
            return Err(ReportError::input(format!(
                "'{cron}': a billing job runs once per billing day; give its time of day after \
                 the day ends as `sec min hour * * *` (e.g. `0 15 0 * * *`)"
            )));
        }
        let secs = i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(s);
        Ok(Plan::Calendar {
            delay: secs * 1_000_000,
        })
    }

    /// Slots due in `(from, to]`, oldest first, at most `cap` (the newest).
    pub fn due(
        &self,
        tz: Tz,
        from: Micros,
        to: Micros,
        cap: usize,
    ) -> Result<Vec<Slot>, ReportError> {
        let mut v = match self {
            Plan::Cron(schedule) => due(schedule, tz, from, to, usize::MAX)
                .into_iter()
                .map(|at| Slot {
                    at,
                    day: day_for(tz, at),
                })
                .collect(),
            Plan::Calendar { delay } => {
                // From a day early (a slot is due after its day): every day
                // whose slot may fall in the range, each once.
                let mut day = at(tz, from - delay).date_naive();
                day = day.pred_opt().unwrap_or(day);
                let last = at(tz, to).date_naive();
                let mut v = Vec::new();
                while day <= last {
                    let next = day
                        .succ_opt()
                        .ok_or_else(|| ReportError::input(format!("bad day {day}")))?;
                    let due_at = day_start(tz, next)? + delay;
                    if due_at > from && due_at <= to {
                        v.push(Slot { at: due_at, day });
                    }
                    day = next;
                }
                v
            }
        };
        if v.len() > cap {
            v.drain(..v.len() - cap);
        }
        Ok(v)
    }

    /// The slot of billing day `day` (None for a cron plan).
    pub fn slot_of(&self, tz: Tz, day: NaiveDate) -> Result<Option<Slot>, ReportError> {
        let Plan::Calendar { delay } = self else {
            return Ok(None);
        };
        let next = day
            .succ_opt()
            .ok_or_else(|| ReportError::input(format!("bad day {day}")))?;
        Ok(Some(Slot {
            at: day_start(tz, next)? + delay,
            day,
        }))
    }

    /// The first slot due after `now`.
    pub(crate) fn next_after(&self, tz: Tz, now: Micros) -> Option<Micros> {
        match self {
            Plan::Cron(s) => s.after(&at(tz, now)).next().map(|t| t.timestamp_micros()),
            Plan::Calendar { .. } => self
                .due(tz, now, now + 3 * DAY_MICROS, usize::MAX)
                .ok()?
                .first()
                .map(|s| s.at),
        }
    }
}
