//! Data-driven schedule tests: `tests/cases/schedules.txt` lists expressions with the fire
//! times they must produce, or the error they must be refused with.
//!
//! A case is a block of `key: value` lines; blocks are separated by blank lines and `#`
//! starts a comment line. Keys:
//!
//! - `expr`: the schedule expression (required).
//! - `tz`: the IANA time zone passed to `Schedule::parse` (absent: UTC).
//! - `display`: what `Display` must print; `zone`: what `timezone()` must return.
//! - `after`: the instant to start from, RFC 3339.
//! - `next` (repeated): each result of `next_after`, fed back in as the next `after`,
//!   written as wall time in the schedule's zone with its offset (`Z` for UTC), or `none`.
//! - `error`: the expression must be refused with exactly this message.
//!
//! The expected times were worked out independently of this crate (a minute-by-minute
//! scan of wall-clock time) and checked against the calendar by hand; there is no
//! update mode, since a wrong expectation here is a bug report, not a snapshot.

use std::fs;
use std::path::Path;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use shoal_events::Schedule;

#[derive(Default)]
struct Case {
    line: usize,
    expr: Option<String>,
    tz: Option<String>,
    display: Option<String>,
    zone: Option<String>,
    after: Option<String>,
    next: Vec<String>,
    error: Option<String>,
}

fn cases() -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases/schedules.txt");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut cases = Vec::new();
    let mut case = Case::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            if case.expr.is_some() {
                cases.push(std::mem::take(&mut case));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("schedules.txt:{}: no `key:`", i + 1));
        // Only `expr` keeps its spacing: some cases test how whitespace is normalized.
        let value = if key == "expr" {
            value.strip_prefix(' ').unwrap_or(value)
        } else {
            value.trim()
        }
        .to_owned();
        if case.expr.is_none() {
            case.line = i + 1;
        }
        match key {
            "expr" => case.expr = Some(value),
            "tz" => case.tz = Some(value),
            "display" => case.display = Some(value),
            "zone" => case.zone = Some(value),
            "after" => case.after = Some(value),
            "next" => case.next.push(value),
            "error" => case.error = Some(value),
            _ => panic!("schedules.txt:{}: unknown key {key:?}", i + 1),
        }
    }
    if case.expr.is_some() {
        cases.push(case);
    }
    cases
}

/// A fire time as the case file writes it.
fn wall(ms: i64, tz: Option<&str>) -> String {
    let ts = Timestamp::from_millisecond(ms).unwrap();
    match tz {
        None => ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Some(name) => {
            let zone = TimeZone::get(name).unwrap();
            ts.to_zoned_datetime(zone)
                .strftime("%Y-%m-%dT%H:%M:%S%:z")
                .to_string()
        }
    }
}

fn check(case: &Case) -> Result<(), String> {
    let expr = case.expr.as_deref().unwrap();
    let parsed = Schedule::parse(expr, case.tz.as_deref());
    if let Some(error) = &case.error {
        return match parsed {
            Ok(s) => Err(format!("parsed as {s}, expected the error {error:?}")),
            Err(e) if e.to_string() == *error => Ok(()),
            Err(e) => Err(format!("error\n  expected: {error}\n  actual:   {e}")),
        };
    }
    let schedule = parsed.map_err(|e| format!("refused: {e}"))?;
    if let Some(display) = &case.display {
        if schedule.to_string() != *display {
            return Err(format!("displays as {schedule}, expected {display}"));
        }
    }
    if let Some(zone) = &case.zone {
        if schedule.timezone() != Some(zone.as_str()) {
            return Err(format!("zone {:?}, expected {zone}", schedule.timezone()));
        }
    }
    let Some(after) = &case.after else {
        return Ok(());
    };
    let mut at = after
        .parse::<Timestamp>()
        .map_err(|e| format!("after {after:?}: {e}"))?
        .as_millisecond();
    for (n, expected) in case.next.iter().enumerate() {
        let actual = match schedule.next_after(at) {
            Some(ms) => {
                let shown = wall(ms, schedule.timezone());
                at = ms;
                shown
            }
            None => "none".to_owned(),
        };
        if actual != *expected {
            return Err(format!("fire {}: expected {expected}, got {actual}", n + 1));
        }
        if actual == "none" {
            break;
        }
    }
    Ok(())
}

#[test]
fn schedule_cases() {
    let cases = cases();
    assert!(
        cases.len() > 50,
        "only {} schedule cases found",
        cases.len()
    );
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            check(case).err().map(|why| {
                format!(
                    "schedules.txt:{} {:?}: {why}",
                    case.line,
                    case.expr.as_deref().unwrap_or("")
                )
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} schedule case(s) failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
