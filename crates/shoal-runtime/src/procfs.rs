//! Resource sampling of instance processes from /proc.

use serde::Serialize;

/// One reading of a process's resources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ProcSample {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Proportional set size, KiB: shared pages split among their users, so a sum over
    /// processes counts each page once.
    pub pss_kib: u64,
    /// User + system CPU time consumed so far, milliseconds.
    pub cpu_ms: u64,
}

/// Sample `pid`, or `None` if it is gone.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = kib_field(&status, "VmRSS:").unwrap_or(0);
    let pss_kib = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| kib_field(&s, "Pss:"))
        .unwrap_or(rss_kib);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ProcSample {
        rss_kib,
        pss_kib,
        cpu_ms: cpu_ms_from_stat(&stat).unwrap_or(0),
    })
}

/// The cheap part of a sample (no smaps walk), for the concurrency controller.
pub fn resources(pid: u32) -> Option<shoal_dispatch::Resources> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(shoal_dispatch::Resources {
        cpu_time: std::time::Duration::from_millis(cpu_ms_from_stat(&stat)?),
        rss_kib: kib_field(&status, "VmRSS:").unwrap_or(0),
    })
}

fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// utime + stime (fields 14 and 15) in clock ticks, converted at the Linux USER_HZ of 100.
fn cpu_ms_from_stat(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces; fields resume after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "42 (node my app) S 1 42 42 0 -1 4194304 100 0 0 0 250 30 0 0 20 0 11 0 1 1 1";
        assert_eq!(cpu_ms_from_stat(stat), Some(2800));
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kib > 0 && s.pss_kib > 0, "{s:?}");
    }
}
