//! One schedule of one function: fires at each time its EventBridge expression names,
//! as an async invocation (so it retries like one). Each fire is recorded in the store in
//! the same commit as the event it sends, keyed by the schedule and the fire time: a
//! restart never fires a time twice, and a time missed while the daemon was down is
//! delivered once at start (only the latest missed time, marked late).
//!
//! Tests may run schedules faster than the wall clock ([`ScheduleClock`]); production
//! runs them in real time.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use shoal_events::Schedule;
use shoal_manifest::ScheduleTrigger;
use shoal_queue::NewMessage;
use tokio::sync::watch;

use super::policy::{Envelope, Source};
use super::{async_queue, shapes, Ctx, TriggerState};

/// A fire this much after its time is reported as late.
const LATE_AFTER_MS: i64 = 10_000;
/// Longest single sleep: the wall clock is looked at again at least this often, so a
/// clock step (NTP, suspend) delays a fire by at most this much.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// Most missed times skipped over when catching up (a minutely cron over a long outage).
const MAX_CATCH_UP_STEPS: usize = 1_000_000;

/// 2026-01-01T00:00:00Z: the instant a sped-up schedule clock agrees with the wall clock.
/// A constant, so every node of a cluster computes the same sped-up time.
const SPEEDUP_ANCHOR_MS: i64 = 1_767_225_600_000;

/// The time schedules run on: the wall clock (`speedup` 1, production), or for tests a
/// clock running `speedup` times faster, `anchor + (wall - anchor) × speedup`, so
/// `rate(1 minute)` fires every second at 60. Fire times, their records and the events'
/// `time` are on this clock; sleeps, lateness and the async envelope's acceptance time
/// are wall time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ScheduleClock {
    speedup: i64,
}

impl ScheduleClock {
    pub(crate) fn new(speedup: u32) -> ScheduleClock {
        ScheduleClock {
            speedup: i64::from(speedup.max(1)),
        }
    }

    fn real_time(self) -> bool {
        self.speedup == 1
    }

    /// Schedule time at wall time `wall_ms`.
    pub(crate) fn at(self, wall_ms: i64) -> i64 {
        if self.real_time() {
            return wall_ms;
        }
        SPEEDUP_ANCHOR_MS.saturating_add((wall_ms - SPEEDUP_ANCHOR_MS).saturating_mul(self.speedup))
    }

    /// Wall time at schedule time `ms` (rounded up: never before it).
    pub(crate) fn wall(self, ms: i64) -> i64 {
        if self.real_time() {
            return ms;
        }
        let span = ms - SPEEDUP_ANCHOR_MS;
        SPEEDUP_ANCHOR_MS + span / self.speedup + i64::from(span % self.speedup > 0)
    }
}

/// The store key of a schedule: stable across redeploys that keep it unchanged. A sped-up
/// clock's fires are kept apart from real time's.
pub(crate) fn key(function: &str, trigger: &ScheduleTrigger, clock: ScheduleClock) -> String {
    let mut key = format!(
        "{}{}@{}",
        prefix(function),
        trigger.expression,
        trigger.timezone.as_deref().unwrap_or("UTC")
    );
    if !clock.real_time() {
        key.push_str(&format!(" x{}", clock.speedup));
    }
    key
}

pub(crate) fn prefix(function: &str) -> String {
    format!("{function}/")
}

pub(crate) async fn run(
    ctx: Arc<Ctx>,
    function: String,
    index: usize,
    trigger: ScheduleTrigger,
    state: Arc<TriggerState>,
    mut stop: watch::Receiver<bool>,
) {
    let schedule = match Schedule::parse(&trigger.expression, trigger.timezone.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            // The manifest was checked at deploy; only an older store could hold this.
            state.error(Some(e.to_string()));
            tracing::warn!(function = %function, expression = %trigger.expression, error = %e, "schedule not started");
            return;
        }
    };
    let clock = ctx.schedule_clock;
    let key = key(&function, &trigger, clock);
    let rule = format!("{function}-schedule-{index}");
    let mut last = loop {
        match ctx.queues.start_schedule(&key, clock.at(ctx.now())).await {
            Ok(last) => break last,
            Err(e) => {
                state.error(Some(e.to_string()));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    state
        .last_fire_ms
        .store(clock.wall(last), Ordering::Relaxed);
    loop {
        let Some(mut next) = schedule.next_after(last) else {
            state.error(Some("the schedule has no more fire times".to_owned()));
            state.next_fire_ms.store(0, Ordering::Relaxed);
            return;
        };
        let now = clock.at(ctx.now());
        if next <= now {
            // Missed while stopped (or the clock jumped): deliver the latest missed time once.
            let mut steps = 0;
            while let Some(after) = schedule.next_after(next) {
                if after > now || steps >= MAX_CATCH_UP_STEPS {
                    break;
                }
                next = after;
                steps += 1;
            }
        } else {
            let due = clock.wall(next);
            state.next_fire_ms.store(due, Ordering::Relaxed);
            let wait = Duration::from_millis((due - ctx.now()).max(0) as u64).min(MAX_SLEEP);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            if clock.at(ctx.now()) < next {
                continue;
            }
        }
        let due = clock.wall(next);
        let late = ctx.now() - due > LATE_AFTER_MS;
        let body = shapes::scheduled_event(&trigger, &rule, next);
        let mut envelope = Envelope::new(crate::new_request_id(), Source::Schedule, due);
        envelope.late = late;
        let message = NewMessage {
            body,
            attributes: Some(envelope.encode()),
            delay_ms: None,
        };
        match ctx
            .queues
            .fire(&key, next, &async_queue(&function), message)
            .await
        {
            Ok(fired) => {
                if fired {
                    state.count("fired", 1);
                    if late {
                        state.count("late", 1);
                    }
                    ctx.counters.function(&function, "enqueued");
                }
                state.error(None);
                last = next;
                state.last_fire_ms.store(due, Ordering::Relaxed);
            }
            Err(e) => {
                // Not recorded, so not lost: tried again in a moment.
                state.error(Some(e.to_string()));
                tracing::warn!(function = %function, error = %e, "recording a schedule fire");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod clock_tests {
    use super::*;

    #[test]
    fn real_time_is_the_wall_clock_and_a_sped_up_clock_maps_back() {
        let real = ScheduleClock::new(1);
        assert_eq!(real.at(1_800_000_000_123), 1_800_000_000_123);
        assert_eq!(real.wall(1_800_000_000_123), 1_800_000_000_123);
        let fast = ScheduleClock::new(60);
        let wall = SPEEDUP_ANCHOR_MS + 3_600_000;
        // An hour of wall time is sixty hours of schedule time.
        assert_eq!(fast.at(wall), SPEEDUP_ANCHOR_MS + 60 * 3_600_000);
        assert_eq!(fast.wall(fast.at(wall)), wall);
        // A minute on the fast clock passes in a wall second; a time between wall
        // milliseconds is due at the later one.
        assert_eq!(fast.wall(fast.at(wall) + 60_000), wall + 1_000);
        assert_eq!(fast.wall(fast.at(wall) + 1), wall + 1);
    }

    #[test]
    fn a_sped_up_schedule_keeps_its_records_apart() {
        let trigger = ScheduleTrigger {
            expression: "rate(1 minute)".into(),
            timezone: None,
            input: None,
            enabled: true,
        };
        assert_eq!(
            key("f", &trigger, ScheduleClock::new(1)),
            "f/rate(1 minute)@UTC"
        );
        assert_eq!(
            key("f", &trigger, ScheduleClock::new(60)),
            "f/rate(1 minute)@UTC x60"
        );
    }
}
