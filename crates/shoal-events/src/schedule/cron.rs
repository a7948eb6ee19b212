//! The six-field EventBridge cron expression: parsing each field into the set of values it
//! allows, and walking the calendar to the next wall-clock minute that matches.
//!
//! The search runs in civil (wall-clock) time, field by field from the year down, and only
//! converts a match to an instant at the end; see `Cron::next_after` for how gaps and
//! repeats of daylight saving time are resolved. Nothing here knows about rates or parses
//! the `cron(...)` wrapper (that is `schedule.rs`).

use std::fmt;

use jiff::civil;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::Timestamp;

use super::{CronField, ScheduleError};

const FIRST_YEAR: i32 = 1970;
const LAST_YEAR: i32 = 2199;

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cron {
    minutes: ValueSet,
    hours: ValueSet,
    days: Days,
    months: ValueSet,
    years: ValueSet,
    /// The fields as written, upper-cased and joined by single spaces.
    normalized: String,
}

/// Which days of a month match: exactly one of the two day fields chooses them, the other
/// being `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Days {
    OfMonth(MonthDays),
    OfWeek(WeekDays),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum MonthDays {
    Set(ValueSet),
    /// `L`
    Last,
    /// `LW`
    LastWeekday,
    /// `nW`: the weekday nearest day n, staying inside the month.
    NearestWeekday(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum WeekDays {
    /// Days of the week, 1 = Sunday … 7 = Saturday.
    Set(ValueSet),
    /// `nL`: the month's last weekday n.
    Last(u32),
    /// `n#k`: the month's k-th weekday n.
    Nth { weekday: u32, nth: u32 },
}

/// A set of field values, as bits above the field's minimum (the year needs 230).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ValueSet {
    min: u32,
    max: u32,
    bits: [u64; 4],
}

impl ValueSet {
    fn new(field: CronField) -> ValueSet {
        let (min, max) = bounds(field);
        ValueSet {
            min,
            max,
            bits: [0; 4],
        }
    }

    fn insert(&mut self, value: u32) {
        let i = (value - self.min) as usize;
        self.bits[i / 64] |= 1 << (i % 64);
    }

    fn contains(&self, value: u32) -> bool {
        if value < self.min || value > self.max {
            return false;
        }
        let i = (value - self.min) as usize;
        self.bits[i / 64] & (1 << (i % 64)) != 0
    }

    /// The smallest member at or above `value`.
    fn next_from(&self, value: u32) -> Option<u32> {
        (value.max(self.min)..=self.max).find(|v| self.contains(*v))
    }
}

fn bounds(field: CronField) -> (u32, u32) {
    match field {
        CronField::Minutes => (0, 59),
        CronField::Hours => (0, 23),
        CronField::DayOfMonth => (1, 31),
        CronField::Month => (1, 12),
        CronField::DayOfWeek => (1, 7),
        CronField::Year => (FIRST_YEAR as u32, LAST_YEAR as u32),
    }
}

/// What a field accepts, for error messages.
fn accepts(field: CronField) -> &'static str {
    match field {
        CronField::Minutes => "minutes take 0-59 with , - * /",
        CronField::Hours => "hours take 0-23 with , - * /",
        CronField::DayOfMonth => "day-of-month takes 1-31 with , - * / ?, or L, LW or a day and W such as 15W",
        CronField::Month => "month takes 1-12 or JAN-DEC with , - * /",
        CronField::DayOfWeek => "day-of-week takes 1-7 (SUN=1) or SUN-SAT with , - * ?, or L, a day and L such as 6L (last Friday), or a day, # and a count such as 2#1 (first Monday)",
        CronField::Year => "year takes 1970-2199 with , - * /",
    }
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn field_error(field: CronField, token: &str, reason: impl Into<String>) -> ScheduleError {
    ScheduleError::Field {
        field,
        token: token.to_owned(),
        reason: reason.into(),
    }
}

impl Cron {
    /// Parses the text inside `cron(...)`.
    pub(super) fn parse(text: &str) -> Result<Cron, ScheduleError> {
        // Fields are parsed as written, so that errors quote the user's own text; names and
        // letters are compared without regard to case.
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minutes, hours, day_of_month, month, day_of_week, year] = fields[..] else {
            return Err(ScheduleError::FieldCount {
                found: fields.len(),
            });
        };
        let minutes_set = parse_list(CronField::Minutes, minutes)?;
        let hours_set = parse_list(CronField::Hours, hours)?;
        let month_days = parse_day_of_month(day_of_month)?;
        let months = parse_list(CronField::Month, month)?;
        let week_days = parse_day_of_week(day_of_week)?;
        let years = parse_list(CronField::Year, year)?;
        let days = match (month_days, week_days) {
            (Some(days), None) => Days::OfMonth(days),
            (None, Some(days)) => Days::OfWeek(days),
            (None, None) => {
                return Err(ScheduleError::DayFields {
                    day_of_month: day_of_month.to_owned(),
                    day_of_week: day_of_week.to_owned(),
                    reason: "both are `?`, so no field chooses the days; put `*` in day-of-month for every day",
                })
            }
            (Some(_), Some(_)) => {
                return Err(ScheduleError::DayFields {
                    day_of_month: day_of_month.to_owned(),
                    day_of_week: day_of_week.to_owned(),
                    reason: "EventBridge needs `?` in exactly one of them: `?` in day-of-week to choose days of the month, or in day-of-month to choose days of the week",
                })
            }
        };
        Ok(Cron {
            minutes: minutes_set,
            hours: hours_set,
            days,
            months,
            years,
            normalized: fields
                .iter()
                .map(|f| f.to_ascii_uppercase())
                .collect::<Vec<_>>()
                .join(" "),
        })
    }

    /// The first matching wall-clock minute strictly after `after_ms`, as epoch ms.
    ///
    /// Candidates are walked in wall-clock order from the minute after `after_ms`'s wall
    /// time. Each is mapped to an instant: one in a gap does not exist and is skipped; one
    /// in a fold takes the earlier of its two instants (its first occurrence). That mapping
    /// never decreases as wall time grows, so the first candidate whose instant is after
    /// `after_ms` is the answer; candidates left behind in a fold (when `after_ms` lies
    /// between the two occurrences) map before `after_ms` and are passed over, which is
    /// what keeps a repeated hour from firing twice.
    pub(super) fn next_after(&self, zone: &TimeZone, after_ms: i64) -> Option<i64> {
        let after = match Timestamp::from_millisecond(after_ms) {
            Ok(t) => t,
            // Before jiff's range (year -9999): every allowed year lies ahead.
            Err(_) if after_ms < 0 => Timestamp::MIN,
            Err(_) => return None,
        };
        let wall = zone.to_datetime(after);
        let mut cursor = Civil {
            year: i32::from(wall.year()),
            month: wall.month() as u32,
            day: wall.day() as u32,
            hour: wall.hour() as u32,
            minute: wall.minute() as u32,
        }
        .next_minute();
        if cursor.year < FIRST_YEAR {
            cursor = Civil::year_start(FIRST_YEAR);
        }
        loop {
            let candidate = self.first_match_from(cursor)?;
            match candidate.instant_ms(zone) {
                Some(ms) if ms > after_ms => return Some(ms),
                _ => cursor = candidate.next_minute(),
            }
        }
    }

    /// The first wall-clock minute at or after `c` that every field allows.
    fn first_match_from(&self, mut c: Civil) -> Option<Civil> {
        loop {
            if !self.years.contains(c.year as u32) {
                let year = self.years.next_from(c.year as u32 + 1)?;
                c = Civil::year_start(year as i32);
                continue;
            }
            if !self.months.contains(c.month) {
                c = match self.months.next_from(c.month) {
                    Some(month) => Civil::month_start(c.year, month),
                    None => Civil::year_start(c.year + 1),
                };
                continue;
            }
            let days = self.days.in_month(c.year, c.month);
            if days & (1 << c.day) == 0 {
                let later = days & !((2u64 << c.day) - 1);
                c = if later == 0 {
                    c.next_month_start()
                } else {
                    Civil {
                        day: later.trailing_zeros(),
                        hour: 0,
                        minute: 0,
                        ..c
                    }
                };
                continue;
            }
            if !self.hours.contains(c.hour) {
                c = match self.hours.next_from(c.hour) {
                    Some(hour) => Civil {
                        hour,
                        minute: 0,
                        ..c
                    },
                    None => c.next_day_start(),
                };
                continue;
            }
            if !self.minutes.contains(c.minute) {
                c = match self.minutes.next_from(c.minute) {
                    Some(minute) => Civil { minute, ..c },
                    None => c.next_hour_start(),
                };
                continue;
            }
            return Some(c);
        }
    }
}

#[cfg(test)]
impl Cron {
    /// Whether a wall-clock minute matches every field, for the brute-force test.
    pub(super) fn matches_wall(
        &self,
        year: i32,
        month: u32,
        day: u32,
        hour: u32,
        minute: u32,
    ) -> bool {
        self.years.contains(year as u32)
            && self.months.contains(month)
            && self.days.in_month(year, month) & (1 << day) != 0
            && self.hours.contains(hour)
            && self.minutes.contains(minute)
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.normalized)
    }
}

impl Days {
    /// The matching days of one month as bits (bit d for day d).
    fn in_month(&self, year: i32, month: u32) -> u64 {
        // The search only asks for years 1970-2199 and months 1-12: always a valid date.
        let first = civil::date(year as i16, month as i8, 1);
        let last = first.days_in_month() as u32;
        let first_weekday = first.weekday().to_sunday_one_offset() as u32;
        let weekday = |day: u32| (first_weekday - 1 + day - 1) % 7 + 1;
        let nearest_weekday = |day: u32| match weekday(day) {
            7 if day > 1 => day - 1,
            7 => day + 2,
            1 if day < last => day + 1,
            1 => day - 2,
            _ => day,
        };
        let only = |day: u32| 1u64 << day;
        match self {
            Days::OfMonth(MonthDays::Set(set)) => (1..=last)
                .filter(|d| set.contains(*d))
                .fold(0, |bits, d| bits | only(d)),
            Days::OfMonth(MonthDays::Last) => only(last),
            Days::OfMonth(MonthDays::LastWeekday) => only(nearest_weekday(last)),
            Days::OfMonth(MonthDays::NearestWeekday(day)) if *day > last => 0,
            Days::OfMonth(MonthDays::NearestWeekday(day)) => only(nearest_weekday(*day)),
            Days::OfWeek(WeekDays::Set(set)) => (1..=last)
                .filter(|d| set.contains(weekday(*d)))
                .fold(0, |bits, d| bits | only(d)),
            Days::OfWeek(WeekDays::Last(day)) => only(last - (weekday(last) + 7 - day) % 7),
            Days::OfWeek(WeekDays::Nth { weekday: day, nth }) => {
                let first_such = 1 + (day + 7 - first_weekday) % 7;
                let that = first_such + 7 * (nth - 1);
                if that <= last {
                    only(that)
                } else {
                    0
                }
            }
        }
    }
}

/// A wall-clock minute. Fields may briefly leave their ranges only in the year (past
/// 2199), which the search treats as the end.
#[derive(Debug, Clone, Copy)]
struct Civil {
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
}

impl Civil {
    fn year_start(year: i32) -> Civil {
        Civil::month_start(year, 1)
    }

    fn month_start(year: i32, month: u32) -> Civil {
        Civil {
            year,
            month,
            day: 1,
            hour: 0,
            minute: 0,
        }
    }

    fn next_month_start(self) -> Civil {
        if self.month == 12 {
            Civil::year_start(self.year + 1)
        } else {
            Civil::month_start(self.year, self.month + 1)
        }
    }

    fn next_day_start(self) -> Civil {
        if self.day >= days_in_month(self.year, self.month) {
            self.next_month_start()
        } else {
            Civil {
                day: self.day + 1,
                hour: 0,
                minute: 0,
                ..self
            }
        }
    }

    fn next_hour_start(self) -> Civil {
        if self.hour == 23 {
            self.next_day_start()
        } else {
            Civil {
                hour: self.hour + 1,
                minute: 0,
                ..self
            }
        }
    }

    fn next_minute(self) -> Civil {
        if self.minute == 59 {
            self.next_hour_start()
        } else {
            Civil {
                minute: self.minute + 1,
                ..self
            }
        }
    }

    /// The instant this wall-clock minute names in `zone`: `None` in a gap, the first
    /// occurrence in a fold.
    fn instant_ms(self, zone: &TimeZone) -> Option<i64> {
        let wall = civil::DateTime::new(
            i16::try_from(self.year).ok()?,
            self.month as i8,
            self.day as i8,
            self.hour as i8,
            self.minute as i8,
            0,
            0,
        )
        .ok()?;
        let offset = match zone.to_ambiguous_timestamp(wall).offset() {
            AmbiguousOffset::Unambiguous { offset } => offset,
            AmbiguousOffset::Gap { .. } => return None,
            AmbiguousOffset::Fold { before, .. } => before,
        };
        Some(offset.to_timestamp(wall).ok()?.as_millisecond())
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A list of `*`, values, ranges and steps: the whole of minutes, hours, month and year,
/// and the plain form of the two day fields.
fn parse_list(field: CronField, text: &str) -> Result<ValueSet, ScheduleError> {
    let (min, max) = bounds(field);
    let span = max - min + 1;
    let mut set = ValueSet::new(field);
    if text == "?" {
        return Err(field_error(
            field,
            text,
            "`?` is allowed only in day-of-month and day-of-week",
        ));
    }
    for item in text.split(',') {
        if item.is_empty() {
            return Err(field_error(
                field,
                text,
                "empty entry in the list (two commas together, or one at an end)",
            ));
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (item, None),
        };
        if step.is_some() && field == CronField::DayOfWeek {
            return Err(field_error(
                field,
                item,
                "EventBridge allows no `/` in day-of-week; list the days instead, such as MON,WED,FRI",
            ));
        }
        let (start, end) = if range == "*" {
            (min, max)
        } else if let Some((from, to)) = range.split_once('-') {
            if from.is_empty() || to.is_empty() {
                return Err(field_error(
                    field,
                    item,
                    "a range needs a start and an end, such as 1-5",
                ));
            }
            (value(field, from, item)?, value(field, to, item)?)
        } else {
            let start = value(field, range, item)?;
            (start, if step.is_some() { max } else { start })
        };
        let step = match step {
            None => 1,
            Some(step) => {
                let n = match step.parse::<u32>() {
                    Ok(n) if step.bytes().all(|b| b.is_ascii_digit()) => n,
                    _ => {
                        return Err(field_error(
                            field,
                            item,
                            format!("the step `{step}` after `/` is not a whole number"),
                        ))
                    }
                };
                if n == 0 || n >= span {
                    return Err(field_error(
                        field,
                        item,
                        format!("the step must be 1-{}", span - 1),
                    ));
                }
                n
            }
        };
        let len = if start <= end {
            end - start + 1
        } else if field == CronField::Year {
            return Err(field_error(
                field,
                item,
                "the range runs backwards; years cannot wrap around",
            ));
        } else {
            // A wrapping range, such as hours 22-2 or FRI-MON.
            end + span - start + 1
        };
        for i in (0..len).step_by(step as usize) {
            set.insert(min + (start - min + i) % span);
        }
    }
    Ok(set)
}

/// One number or name of a field. `item` is the list entry it came from, for errors.
fn value(field: CronField, text: &str, item: &str) -> Result<u32, ScheduleError> {
    let (min, max) = bounds(field);
    let names: &[&str] = match field {
        CronField::Month => &MONTHS,
        CronField::DayOfWeek => &WEEKDAYS,
        _ => &[],
    };
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return Ok(min + i as u32);
    }
    // Quote the value only when it is part of a longer entry such as `MON-8`.
    let which = if text == item {
        String::new()
    } else {
        format!("`{text}` is ")
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(field_error(
            field,
            item,
            format!("{which}not a valid value; {}", accepts(field)),
        ));
    }
    match text.parse::<u32>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(field_error(
            field,
            item,
            format!("{which}out of range; {}", accepts(field)),
        )),
    }
}

/// `None` for `?`.
fn parse_day_of_month(text: &str) -> Result<Option<MonthDays>, ScheduleError> {
    let field = CronField::DayOfMonth;
    // Upper-casing ASCII keeps byte offsets, so slices of `upper` index `text` too.
    let upper = text.to_ascii_uppercase();
    match upper.as_str() {
        "?" => return Ok(None),
        "L" => return Ok(Some(MonthDays::Last)),
        "LW" => return Ok(Some(MonthDays::LastWeekday)),
        _ => {}
    }
    if text.contains('?') {
        return Err(field_error(field, text, "`?` stands alone in its field"));
    }
    if upper.starts_with("L-") {
        return Err(field_error(
            field,
            text,
            "an offset from the last day is not part of EventBridge's syntax; use L for the last day",
        ));
    }
    if !upper.contains(['L', 'W']) {
        return parse_list(field, text).map(|set| Some(MonthDays::Set(set)));
    }
    if text.contains([',', '-', '/']) {
        return Err(field_error(
            field,
            text,
            "L and W stand alone, not in a list, range or step; write L, LW or a day and W such as 15W",
        ));
    }
    match upper.strip_suffix('W') {
        Some("") => Err(field_error(
            field,
            text,
            "W needs a day before it, such as 15W (the weekday nearest the 15th)",
        )),
        Some(day) if !day.contains('L') => Ok(Some(MonthDays::NearestWeekday(value(
            field,
            &text[..day.len()],
            text,
        )?))),
        _ => Err(field_error(
            field,
            text,
            format!("not a day-of-month; {}", accepts(field)),
        )),
    }
}

/// `None` for `?`.
fn parse_day_of_week(text: &str) -> Result<Option<WeekDays>, ScheduleError> {
    let field = CronField::DayOfWeek;
    let upper = text.to_ascii_uppercase();
    if text == "?" {
        return Ok(None);
    }
    if text.contains('?') {
        return Err(field_error(field, text, "`?` stands alone in its field"));
    }
    if upper == "L" {
        // "The last day of the week": Saturday, since weeks start on Sunday (1).
        let mut set = ValueSet::new(field);
        set.insert(7);
        return Ok(Some(WeekDays::Set(set)));
    }
    if text.contains('#') {
        if text.contains(',') {
            return Err(field_error(
                field,
                text,
                "with `#`, day-of-week holds one expression only (EventBridge reads 3#1,6#3 as two)",
            ));
        }
        let (day, nth) = text.split_once('#').unwrap_or((text, ""));
        if day.contains(['-', '/', 'L', 'l']) || nth.contains('#') {
            return Err(field_error(
                field,
                text,
                "write one day, `#` and a count, such as 2#1 (the first Monday)",
            ));
        }
        let weekday = value(field, day, text)?;
        let nth = match nth.parse::<u32>() {
            Ok(n @ 1..=5) if nth.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err(field_error(
                    field,
                    text,
                    format!("`{nth}` after `#` must be 1-5 (which occurrence in the month)"),
                ))
            }
        };
        return Ok(Some(WeekDays::Nth { weekday, nth }));
    }
    if upper.contains('L') {
        if text.contains([',', '-', '/']) {
            return Err(field_error(
                field,
                text,
                "L stands alone, not in a list or range; write L (Saturday) or a day and L such as 6L (the last Friday)",
            ));
        }
        return match upper.strip_suffix('L') {
            Some(day) if !day.contains('L') => Ok(Some(WeekDays::Last(value(
                field,
                &text[..day.len()],
                text,
            )?))),
            _ => Err(field_error(
                field,
                text,
                format!("not a day-of-week; {}", accepts(field)),
            )),
        };
    }
    parse_list(field, text).map(|set| Some(WeekDays::Set(set)))
}
