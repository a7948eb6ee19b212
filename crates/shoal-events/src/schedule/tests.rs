//! The calendar walk checked against a brute-force scan, plus the small API promises the
//! data file (`tests/cases/schedules.txt`) does not cover.
//!
//! The scan steps real time minute by minute, reads each instant's wall clock, and takes
//! the first that matches the fields and is the first occurrence of its wall time. It
//! shares only the per-field sets with the walk, not the search or the DST handling.

use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::Timestamp;

use super::*;

fn matches(cron: &Cron, zone: &TimeZone, at: Timestamp) -> bool {
    let wall = zone.to_datetime(at);
    if wall.second() != 0 || wall.subsec_nanosecond() != 0 {
        return false;
    }
    if let AmbiguousOffset::Fold { before, .. } = zone.to_ambiguous_timestamp(wall).offset() {
        if before.to_timestamp(wall).unwrap() != at {
            // The second pass through a repeated wall time.
            return false;
        }
    }
    cron.matches_wall(
        i32::from(wall.year()),
        wall.month() as u32,
        wall.day() as u32,
        wall.hour() as u32,
        wall.minute() as u32,
    )
}

/// The first match within `horizon_min` minutes after `after_ms`, scanning real time.
fn scan(cron: &Cron, zone: &TimeZone, after_ms: i64, horizon_min: i64) -> Option<i64> {
    let start = after_ms.div_euclid(60_000) * 60_000 + 60_000;
    (0..horizon_min)
        .map(|i| start + i * 60_000)
        .find(|ms| matches(cron, zone, Timestamp::from_millisecond(*ms).unwrap()))
}

#[test]
fn the_calendar_walk_agrees_with_a_minute_by_minute_scan() {
    let expressions = [
        "cron(* * * * ? *)",
        "cron(0/15 * * * ? *)",
        "cron(30 2 * * ? *)",
        "cron(0 2 * * ? *)",
        "cron(30 1 * * ? *)",
        "cron(59 1 * * ? *)",
        "cron(0 0 * * ? *)",
        "cron(15 2 * * ? *)",
        "cron(0/7 1-3 * * ? *)",
        "cron(0 * ? * SUN *)",
        "cron(45 23 L * ? *)",
        "cron(0 9 LW * ? *)",
        "cron(0 9 1W * ? *)",
        "cron(0 0 ? * 1#1 *)",
        "cron(0 0 ? * 1L *)",
        "cron(0/30 20-2 ? * MON-FRI *)",
        "cron(5 0 28-2 * ? *)",
    ];
    let zones = [
        None,
        Some("America/New_York"),
        Some("Europe/London"),
        Some("Australia/Lord_Howe"),
        Some("America/Santiago"),
    ];
    // Around each 2024 transition of those zones, and a quiet month end.
    let starts = [
        "2024-03-10T05:00:00Z",
        "2024-11-03T04:20:30Z",
        "2024-11-03T06:05:00Z",
        "2024-03-31T00:30:00Z",
        "2024-10-27T00:40:00Z",
        "2024-10-05T14:00:00Z",
        "2024-04-06T14:00:00Z",
        "2024-09-07T03:00:00Z",
        "2024-04-06T02:30:00Z",
        "2024-08-30T22:00:00Z",
    ];
    let horizon_min = 2 * 24 * 60;
    let mut compared = 0;
    for expression in expressions {
        for tz in zones {
            let schedule = Schedule::parse(expression, tz).unwrap();
            let Kind::Cron(cron) = &schedule.kind else {
                unreachable!()
            };
            for start in starts {
                let after_ms = start.parse::<Timestamp>().unwrap().as_millisecond();
                let actual = schedule.next_after(after_ms);
                match scan(cron, &schedule.zone, after_ms, horizon_min) {
                    Some(expected) => {
                        assert_eq!(
                            actual,
                            Some(expected),
                            "{expression} in {tz:?} after {start}"
                        );
                        compared += 1;
                    }
                    None => assert!(
                        actual.is_none_or(|a| a >= after_ms + horizon_min * 60_000),
                        "{expression} in {tz:?} after {start}: {actual:?} inside the scanned window"
                    ),
                }
            }
        }
    }
    // Most pairs have a fire within two days; the check must not pass vacuously.
    assert!(compared > 500, "only {compared} comparisons");
}

#[test]
fn a_rate_adds_its_period_and_stops_at_overflow() {
    let s = Schedule::parse("rate(2 hours)", None).unwrap();
    assert_eq!(s.rate_period_ms(), Some(7_200_000));
    assert_eq!(s.next_after(1_000), Some(7_201_000));
    assert_eq!(s.next_after(i64::MAX - 1), None);
    assert_eq!(
        Schedule::parse("cron(0 * * * ? *)", None)
            .unwrap()
            .rate_period_ms(),
        None
    );
}

#[test]
fn far_starts_find_the_allowed_years_or_nothing() {
    let s = Schedule::parse("cron(0 0 1 1 ? *)", Some("Asia/Tokyo")).unwrap();
    // 1970-01-01 00:00 in Tokyo (UTC+9) was 1969-12-31 15:00 UTC.
    assert_eq!(s.next_after(i64::MIN), Some(-9 * 3_600_000));
    assert_eq!(s.next_after(i64::MAX), None);
}

#[test]
fn equality_follows_the_normalized_text_and_zone() {
    let a = Schedule::parse("cron(0 18 ? * mon-fri *)", Some("europe/london")).unwrap();
    let b = Schedule::parse("cron(0  18 ? * MON-FRI *)", Some("Europe/London")).unwrap();
    let c = Schedule::parse("cron(0 18 ? * MON-FRI *)", None).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(c.timezone(), None);
    assert_eq!(
        Schedule::parse("rate(1 day)", None).unwrap().to_string(),
        "rate(1 day)"
    );
}
