//! Lambda's `START`, `END` and `REPORT` lines, written to the function's log around
//! every call that reached an instance, and read back for the bill (`shoal cost`).
//!
//! The `REPORT` line starts exactly as Lambda's (tab-separated `Key: value` fields:
//! `Duration`, `Billed Duration`, `Memory Size`, `Max Memory Used`, `Init Duration` on a
//! cold call, `Status` when the call did not finish normally), then adds what Shoal
//! attributes to the call: where it ran, how long it waited for a slot, and its share of
//! the instance's wall time, CPU time and memory × time (see `shoal_dispatch::meter`).
//! Parsing reads fields by name, so a line from an older daemon with fewer fields still
//! reads.

use shoal_events::json;
use std::fmt;
use std::time::Duration;

/// One `REPORT` line's content.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub request_id: String,
    /// From hand-over to answer, ms.
    pub duration_ms: f64,
    /// The instance's start, on the call that started it, ms.
    #[serde(default)]
    pub init_ms: Option<f64>,
    /// The function's memory setting, MiB (Lambda's "MB").
    pub memory_size_mb: u64,
    /// The highest resident memory its instance was seen at, MiB; unknown when the
    /// process could not be read.
    #[serde(default)]
    pub max_memory_used_mb: Option<u64>,
    /// `timeout` or `error` (the instance failed under the call); none when it answered.
    #[serde(default)]
    pub status: Option<String>,
    pub instance: String,
    pub queue_wait_ms: f64,
    /// Wall time of the instance divided among the calls in flight, ms.
    pub instance_share_ms: f64,
    /// CPU time of the instance divided among the calls in flight, ms.
    pub cpu_share_ms: f64,
    /// Resident memory × time of the instance divided among the calls in flight, MiB·s.
    pub memory_share_mb_s: f64,
}

impl Report {
    /// What Lambda bills: the duration, with the init phase (billed since 2025-08-01),
    /// rounded up to the millisecond.
    pub fn billed_ms(&self) -> u64 {
        (self.duration_ms + self.init_ms.unwrap_or(0.0)).ceil() as u64
    }

    pub(crate) fn from_call(
        request_id: &str,
        call: &shoal_dispatch::CallReport,
        status: Option<&str>,
    ) -> Report {
        let usage = &call.usage;
        Report {
            request_id: request_id.to_owned(),
            duration_ms: ms(call.duration),
            init_ms: call.init.map(ms),
            memory_size_mb: call.memory_limit_kib / 1024,
            max_memory_used_mb: (usage.peak_rss_kib > 0).then(|| usage.peak_rss_kib.div_ceil(1024)),
            status: status.map(str::to_owned),
            instance: call.instance.clone(),
            queue_wait_ms: ms(call.queued),
            instance_share_ms: ms(usage.instance_time),
            cpu_share_ms: ms(usage.cpu),
            memory_share_mb_s: usage.memory_kib_seconds / 1024.0,
        }
    }

    /// The line, as `to_string` writes it, into a buffer sized for it at once.
    pub(crate) fn line(&self) -> String {
        use std::fmt::Write;
        let mut line = String::with_capacity(
            320 + self.request_id.len()
                + self.instance.len()
                + self.status.as_ref().map_or(0, String::len),
        );
        let _ = write!(line, "{self}");
        line
    }

    /// Read a line this module wrote; `None` for any other line.
    pub fn parse(line: &str) -> Option<Report> {
        let rest = line.strip_prefix("REPORT ")?;
        let mut fields = std::collections::HashMap::new();
        for field in rest.split('\t') {
            if let Some((key, value)) = field.split_once(": ") {
                fields.insert(key.trim(), value.trim());
            }
        }
        let number = |key: &str, unit: &str| -> Option<f64> {
            fields.get(key)?.strip_suffix(unit)?.trim().parse().ok()
        };
        Some(Report {
            request_id: (*fields.get("RequestId")?).to_owned(),
            duration_ms: number("Duration", "ms")?,
            init_ms: number("Init Duration", "ms"),
            memory_size_mb: number("Memory Size", "MB")? as u64,
            max_memory_used_mb: number("Max Memory Used", "MB").map(|m| m as u64),
            status: fields.get("Status").map(|s| (*s).to_owned()),
            instance: fields.get("Instance").map_or("-", |s| s).to_owned(),
            queue_wait_ms: number("Queue Wait", "ms").unwrap_or(0.0),
            instance_share_ms: number("Instance Share", "ms").unwrap_or(0.0),
            cpu_share_ms: number("CPU Share", "ms").unwrap_or(0.0),
            memory_share_mb_s: number("Memory Share", "MB-s").unwrap_or(0.0),
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line per call: numbers are written by hand (see `fixed`), not through
        // float formatting, which cost more than the rest of the line.
        let mut digits = [0u8; 20];
        f.write_str("REPORT RequestId: ")?;
        f.write_str(&self.request_id)?;
        f.write_str("\tDuration: ")?;
        fixed(f, &mut digits, self.duration_ms, 2)?;
        f.write_str(" ms\tBilled Duration: ")?;
        f.write_str(json::decimal(self.billed_ms(), &mut digits))?;
        f.write_str(" ms\tMemory Size: ")?;
        f.write_str(json::decimal(self.memory_size_mb, &mut digits))?;
        f.write_str(" MB")?;
        if let Some(used) = self.max_memory_used_mb {
            f.write_str("\tMax Memory Used: ")?;
            f.write_str(json::decimal(used, &mut digits))?;
            f.write_str(" MB")?;
        }
        if let Some(init) = self.init_ms {
            f.write_str("\tInit Duration: ")?;
            fixed(f, &mut digits, init, 2)?;
            f.write_str(" ms")?;
        }
        if let Some(status) = &self.status {
            f.write_str("\tStatus: ")?;
            f.write_str(status)?;
        }
        f.write_str("\tInstance: ")?;
        f.write_str(&self.instance)?;
        f.write_str("\tQueue Wait: ")?;
        fixed(f, &mut digits, self.queue_wait_ms, 2)?;
        f.write_str(" ms\tInstance Share: ")?;
        fixed(f, &mut digits, self.instance_share_ms, 2)?;
        f.write_str(" ms\tCPU Share: ")?;
        fixed(f, &mut digits, self.cpu_share_ms, 2)?;
        f.write_str(" ms\tMemory Share: ")?;
        fixed(f, &mut digits, self.memory_share_mb_s, 3)?;
        f.write_str(" MB-s")
    }
}

/// `value` with `decimals` places, as `{:.N}` writes it. By integer arithmetic when that
/// is certainly the same text: a value that is not negative, not huge, and not within a
/// millionth of a rounding tie (where the product's own rounding could tip it); through
/// `{:.N}` otherwise.
fn fixed(
    f: &mut fmt::Formatter<'_>,
    digits: &mut [u8; 20],
    value: f64,
    decimals: u32,
) -> fmt::Result {
    let scale = f64::from(10u32.pow(decimals));
    let scaled = value * scale;
    let tie = (scaled - scaled.floor() - 0.5).abs() < 1e-6;
    if !(0.0..1e12).contains(&scaled) || tie {
        return write!(f, "{value:.*}", decimals as usize);
    }
    let n = scaled.round() as u64;
    let unit = 10u64.pow(decimals);
    f.write_str(json::decimal(n / unit, digits))?;
    f.write_str(".")?;
    let mut places = [b'0'; 9];
    let places = &mut places[..decimals as usize];
    let mut rest = n % unit;
    for place in places.iter_mut().rev() {
        *place = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    f.write_str(std::str::from_utf8(places).expect("ASCII digits"))
}

/// Lambda's `START` line.
pub fn start_line(request_id: &str, version: u32) -> String {
    let mut line = String::with_capacity(40 + request_id.len());
    line.push_str("START RequestId: ");
    line.push_str(request_id);
    line.push_str(" Version: ");
    line.push_str(json::decimal(u64::from(version), &mut [0u8; 20]));
    line
}

/// Lambda's `END` line.
pub fn end_line(request_id: &str) -> String {
    let mut line = String::with_capacity(16 + request_id.len());
    line.push_str("END RequestId: ");
    line.push_str(request_id);
    line
}

fn ms(d: Duration) -> f64 {
    // Two decimals are printed; rounding here keeps a parsed line equal to its source.
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

#[cfg(test)]
mod tests;
