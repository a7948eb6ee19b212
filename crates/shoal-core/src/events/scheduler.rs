//! One schedule of one function: fires at each time its EventBridge expression names,
//! as an async invocation (so it retries like one). Each fire is recorded in the store in
//! the same commit as the event it sends, keyed by the schedule and the fire time: a
//! restart never fires a time twice, and a time missed while the daemon was down is
//! delivered once at start (only the latest missed time, marked late).

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

/// The store key of a schedule: stable across redeploys that keep it unchanged.
pub(crate) fn key(function: &str, trigger: &ScheduleTrigger) -> String {
    format!(
        "{}{}@{}",
        prefix(function),
        trigger.expression,
        trigger.timezone.as_deref().unwrap_or("UTC")
    )
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
    let key = key(&function, &trigger);
    let rule = format!("{function}-schedule-{index}");
    let mut last = loop {
        match ctx.queues.start_schedule(&key, ctx.now()).await {
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
    state.last_fire_ms.store(last, Ordering::Relaxed);
    loop {
        let Some(mut next) = schedule.next_after(last) else {
            state.error(Some("the schedule has no more fire times".to_owned()));
            state.next_fire_ms.store(0, Ordering::Relaxed);
            return;
        };
        let now = ctx.now();
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
            state.next_fire_ms.store(next, Ordering::Relaxed);
            let wait = Duration::from_millis((next - now) as u64).min(MAX_SLEEP);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            if ctx.now() < next {
                continue;
            }
        }
        let late = ctx.now() - next > LATE_AFTER_MS;
        let body = shapes::scheduled_event(&trigger, &rule, next);
        let mut envelope = Envelope::new(crate::new_request_id(), Source::Schedule, next);
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
                state.last_fire_ms.store(last, Ordering::Relaxed);
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
