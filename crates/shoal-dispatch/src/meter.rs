//! Metering: what one call cost its instance. An instance runs many calls at once, so its
//! CPU time, memory and wall time are shared out among the calls in flight.
//!
//! The meter keeps, per instance, three running integrals "per call in flight": wall
//! time, CPU time and memory × time, each advanced at every call start and end by what
//! the instance used since the previous event divided by the number of calls in flight
//! over that stretch (constant between two events). A call's share is the difference of
//! the integrals between its end and its start, so sharing costs O(1) per event however
//! many calls overlap, and the shares of all calls add up to the instance's totals over
//! the time it had any call in flight. What the instance uses while idle is counted
//! apart, attributed to no call.
//!
//! The arithmetic is exact over its readings; what the readings miss is where it
//! estimates: CPU time comes in the kernel's 10 ms ticks, a reading is reused for events
//! within [`REUSE_READING`] of it, and memory is taken as constant between two events.
//! It reads no clock and does no IO: the pool passes the time and the readings in.

use std::time::Duration;

use tokio::time::Instant;

use crate::Resources;

/// Events closer together than this share one reading: a burst of grants reads /proc
/// once, not once per call. The CPU of such a stretch moves to the next one. The kernel's
/// CPU counters move in 10 ms ticks, so reading more often shows nothing new; at 1 ms,
/// reading /proc took 15 % of the daemon's CPU under a no-op queue function's 2,000–3,000
/// calls a second over 15–25 instances.
pub const REUSE_READING: Duration = Duration::from_millis(10);

/// What one call was given of its instance.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    /// Wall time of the instance divided among the calls in flight: ten calls running
    /// side by side for 2 s each get 200 ms each.
    pub instance_time: Duration,
    /// CPU time of the instance over the call, divided the same way.
    pub cpu: Duration,
    /// Resident memory × time of the instance over the call, divided the same way (KiB·s).
    pub memory_kib_seconds: f64,
    /// The highest resident memory the instance was seen at, up to the call's end.
    pub peak_rss_kib: u64,
}

/// The running integrals at one moment; a call keeps the one of its start.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Mark {
    time: f64,
    cpu: f64,
    memory: f64,
}

/// One instance's meter.
#[derive(Debug, Default)]
pub struct Meter {
    in_flight: u32,
    last_event: Option<Instant>,
    last_reading: Option<(Instant, Resources)>,
    /// The highest CPU time read so far: readings taken on different tasks may arrive out
    /// of order, and CPU time never goes back.
    cpu_seen: Duration,
    rss_kib: u64,
    peak_rss_kib: u64,
    per_call: Mark,
    busy: Duration,
    busy_cpu: Duration,
    busy_memory_kib_seconds: f64,
    idle_cpu: Duration,
}

/// The instance's totals, for checks and for the idle remainder.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Totals {
    /// Time with at least one call in flight.
    pub busy: Duration,
    pub busy_cpu: Duration,
    pub busy_memory_kib_seconds: f64,
    /// CPU used while no call was in flight (start-up, timers, GC after the last call).
    pub idle_cpu: Duration,
}

impl Meter {
    pub fn new() -> Meter {
        Meter::default()
    }

    /// Whether an event at `now` needs a fresh reading (else the last one is reused).
    pub fn wants_reading(&self, now: Instant) -> bool {
        self.last_reading
            .is_none_or(|(at, _)| now.saturating_duration_since(at) >= REUSE_READING)
    }

    /// A call starts at `now`; keep the mark for [`Meter::finish`].
    pub fn start(&mut self, now: Instant, reading: Option<Resources>) -> Mark {
        self.advance(now, reading);
        self.in_flight += 1;
        self.per_call
    }

    /// The call that started at `mark` ends at `now`: its share.
    pub fn finish(&mut self, mark: Mark, now: Instant, reading: Option<Resources>) -> Usage {
        self.advance(now, reading);
        self.in_flight = self.in_flight.saturating_sub(1);
        Usage {
            instance_time: Duration::from_secs_f64((self.per_call.time - mark.time).max(0.0)),
            cpu: Duration::from_secs_f64((self.per_call.cpu - mark.cpu).max(0.0)),
            memory_kib_seconds: (self.per_call.memory - mark.memory).max(0.0),
            peak_rss_kib: self.peak_rss_kib,
        }
    }

    pub fn totals(&self) -> Totals {
        Totals {
            busy: self.busy,
            busy_cpu: self.busy_cpu,
            busy_memory_kib_seconds: self.busy_memory_kib_seconds,
            idle_cpu: self.idle_cpu,
        }
    }

    /// Share out what the instance used since the last event among the calls that were
    /// in flight over it.
    fn advance(&mut self, now: Instant, reading: Option<Resources>) {
        let elapsed = self
            .last_event
            .map_or(Duration::ZERO, |last| now.saturating_duration_since(last));
        let cpu = match reading {
            Some(r) if r.cpu_time > self.cpu_seen => {
                // The first reading only sets the origin: what came before it is unknown.
                let used = if self.last_reading.is_some() {
                    r.cpu_time - self.cpu_seen
                } else {
                    Duration::ZERO
                };
                self.cpu_seen = r.cpu_time;
                used
            }
            _ => Duration::ZERO,
        };
        if self.in_flight > 0 {
            let n = f64::from(self.in_flight);
            let memory = self.rss_kib as f64 * elapsed.as_secs_f64();
            self.per_call.time += elapsed.as_secs_f64() / n;
            self.per_call.cpu += cpu.as_secs_f64() / n;
            self.per_call.memory += memory / n;
            self.busy += elapsed;
            self.busy_cpu += cpu;
            self.busy_memory_kib_seconds += memory;
        } else {
            self.idle_cpu += cpu;
        }
        if let Some(r) = reading {
            self.rss_kib = r.rss_kib;
            self.peak_rss_kib = self.peak_rss_kib.max(r.rss_kib);
            self.last_reading = Some((now, r));
        }
        self.last_event = Some(now);
    }
}

#[cfg(test)]
mod tests;
