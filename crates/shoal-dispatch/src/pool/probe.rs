//! Cold-burst probing: how a function never measured meets its first burst.
//!
//! Without measurements the pool cannot know whether a burst of 100 needs one instance
//! (an I/O-bound handler: Node serves them all at once) or 50 (a CPU-bound one). Starting
//! `ceil(N / 16)` instances on a guess costs memory, cold starts and connection pools when
//! the guess is low. So the pool of a never-measured `auto` function starts *one*
//! instance and watches it every [`PROBE_TICK`] while work waits:
//!
//! * its CPU goes idle (busy below half the target over a tick) while every slot is
//!   taken: the calls in flight wait on something else, and more calls would use the idle
//!   core — its limit doubles (or jumps to the Little's-law lower bound `target × age /
//!   CPU per call`, the calls' wall time being at least their age), and the queue flows in;
//! * its CPU stays busy while calls complete: CPU-bound — the probe ends, and the rest of
//!   the burst gets instances at the Little's-law estimate from the completed calls;
//! * enough calls complete with nothing left waiting, or the limit reaches
//!   `max_concurrency`, or memory fills, or
//!   [`PATIENCE`] passes since the last growth without an idle moment: the probe ends, the
//!   instance's limit is what new instances get, and the queue-driven scale-out takes over.
//!
//! The CPU a burst's calls spend at their start arrives as a transient after each growth;
//! the probe grows again only once the core is idle, so it admits work as fast as the
//! core gets through it — what the direct server does by queueing in its event loop.
//!
//! [`judge`] is the pure rule; [`Pool::probe`] is the task that reads the instance and
//! applies the verdict. This module changes only the probed instance's limit and the
//! pool's `probing` flag and learned limit; starting instances stays with `scaling`.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::{InstanceState, Pool};
use crate::decision::{Decision, ProbeEnd};

/// How often the probed instance is read while work waits.
pub(super) const PROBE_TICK: Duration = Duration::from_millis(50);
/// The longest the probe holds a queue back, since it last grew the limit (the growth's
/// calls spend their CPU at their start: on a busy host that transient is long), without
/// seeing the core idle or calls end.
const PATIENCE: Duration = Duration::from_secs(2);
/// Busy below this fraction of the target over a tick: the core idles.
const IDLE_FRACTION: f64 = 0.5;
/// Busy at or above the target for this long, while calls complete: CPU-bound.
const SATURATED_FOR: Duration = Duration::from_millis(300);
/// Completions after which the controller's own measurements take over.
const MEASURED_AFTER: u64 = 3;
/// The probe grows no further once RSS passes this fraction of the memory limit.
const MEMORY_ROOM: f64 = 0.6;

/// What the probed instance showed since it became ready, and the pool around it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Evidence {
    /// Since the instance became ready.
    pub age: Duration,
    /// Since the probe last grew the limit (or since ready).
    pub since_growth: Duration,
    /// CPU run plus run-queue wait since it became ready.
    pub cpu: Duration,
    /// Busy fraction (run + wait) over the last tick.
    pub tick_busy: f64,
    /// How long the busy fraction has stayed at or above the target.
    pub busy_for: Duration,
    /// Whether the core has been idle in some tick while every slot was taken.
    pub seen_idle: bool,
    /// Calls handed to it and calls finished.
    pub calls: u64,
    pub completed: u64,
    /// Mean wall time of the finished calls.
    pub mean_wall: Option<Duration>,
    pub in_flight: u32,
    pub limit: u32,
    pub max_limit: u32,
    pub queued: usize,
    pub rss_kib: u64,
    pub memory_limit_kib: u64,
    pub target_cpu: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Verdict {
    /// Keep watching.
    Wait,
    /// Raise the instance's limit.
    Grow {
        to: u32,
        cpu_per_call: Duration,
        wall_at_least: Duration,
    },
    /// Stop probing; new instances start at `learned`.
    Done { learned: u32, why: ProbeEnd },
}

/// The probe's rule, first match wins. See the module doc.
pub(crate) fn judge(e: &Evidence) -> Verdict {
    let done = |learned: u32, why| Verdict::Done {
        learned: learned.clamp(1, e.max_limit.max(1)),
        why,
    };
    let target = e.target_cpu.clamp(0.05, 1.0);
    let cpu_per_call = e.cpu.as_secs_f64() / e.calls.max(1) as f64;
    if e.completed >= MEASURED_AFTER && !e.seen_idle && e.busy_for >= SATURATED_FOR {
        // CPU-bound: Little's law from the finished calls, charging them all CPU so far.
        let cpu = e.cpu.as_secs_f64() / e.completed as f64;
        let wall = e.mean_wall.map_or(0.0, |w| w.as_secs_f64());
        let estimate = (target * wall / cpu.max(1e-6)).round() as u32;
        return done(estimate.min(e.limit), ProbeEnd::Saturated);
    }
    if e.completed >= MEASURED_AFTER && e.queued == 0 {
        return done(e.limit, ProbeEnd::Measured);
    }
    if e.limit >= e.max_limit {
        return done(e.limit, ProbeEnd::Ceiling);
    }
    if e.memory_limit_kib > 0 && e.rss_kib as f64 >= MEMORY_ROOM * e.memory_limit_kib as f64 {
        return done(e.limit, ProbeEnd::Memory);
    }
    if e.queued == 0 || e.in_flight < e.limit {
        return Verdict::Wait;
    }
    if e.tick_busy < IDLE_FRACTION * target {
        let bound = (target * e.age.as_secs_f64() / cpu_per_call.max(1e-6)).floor();
        let to = (e.limit.saturating_mul(2) as f64)
            .max(bound.min(f64::from(u32::MAX)))
            .min(f64::from(e.max_limit)) as u32;
        return Verdict::Grow {
            to,
            cpu_per_call: Duration::from_secs_f64(cpu_per_call),
            wall_at_least: e.age,
        };
    }
    if e.since_growth >= PATIENCE {
        return done(e.limit, ProbeEnd::Patience);
    }
    Verdict::Wait
}

/// What the probe task remembers between ticks.
struct Watch {
    ready_at: Instant,
    grown_at: Instant,
    cpu_at_ready: Option<Duration>,
    last: Option<(Instant, Duration)>,
    busy_since: Option<Instant>,
    seen_idle: bool,
}

impl Pool {
    /// Watch instance `id`, the first of a never-measured pool, until the probe ends.
    pub(super) fn start_probe(self: &Arc<Self>, id: &str) {
        let pool = Arc::downgrade(self);
        let id = id.to_owned();
        tokio::spawn(async move { probe(pool, id).await });
    }
}

async fn probe(pool: Weak<Pool>, id: String) {
    let mut watch = Watch {
        ready_at: Instant::now(),
        grown_at: Instant::now(),
        cpu_at_ready: None,
        last: None,
        busy_since: None,
        seen_idle: false,
    };
    let mut tick = tokio::time::interval(PROBE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        if !pool.probe_tick(&id, &mut watch) {
            return;
        }
    }
}

impl Pool {
    /// One probe reading and its verdict. Returns false once the probe is over.
    fn probe_tick(self: &Arc<Self>, id: &str, watch: &mut Watch) -> bool {
        let handle = {
            let mut inner = self.lock();
            if !inner.probing || inner.retired {
                return false;
            }
            let slot = inner
                .slots
                .iter()
                .find(|s| s.id == id && s.state == InstanceState::Ready);
            match slot.and_then(|s| s.handle.clone()) {
                Some(handle) => handle,
                None => {
                    // The probed instance is gone: size the rest without it.
                    inner.probing = false;
                    self.scale_up(&mut inner);
                    return false;
                }
            }
        };
        let (Some(reading), wait) = (handle.resources(), handle.run_wait()) else {
            // Nothing to measure with: behave as before probing existed.
            let mut inner = self.lock();
            inner.probing = false;
            self.scale_up(&mut inner);
            return false;
        };
        let now = Instant::now();
        let demand = reading.cpu_time + wait.unwrap_or_default();
        let cpu_at_ready = *watch.cpu_at_ready.get_or_insert(demand);
        let mut inner = self.lock();
        let Some(index) = inner.slots.iter().position(|s| s.id == id) else {
            return true;
        };
        let tick_busy = match watch.last.replace((now, demand)) {
            Some((then, before)) if now > then => {
                demand.saturating_sub(before).as_secs_f64() / now.duration_since(then).as_secs_f64()
            }
            _ => return true, // the first reading only opens the window
        };
        let slot = &inner.slots[index];
        let target = self.config.target_cpu;
        if tick_busy >= target {
            watch.busy_since.get_or_insert(now);
        } else {
            watch.busy_since = None;
        }
        let binding = slot.in_flight >= slot.limit;
        if binding && tick_busy < IDLE_FRACTION * target {
            watch.seen_idle = true;
        }
        let evidence = Evidence {
            age: now.duration_since(watch.ready_at),
            since_growth: now.duration_since(watch.grown_at),
            cpu: demand.saturating_sub(cpu_at_ready),
            tick_busy,
            busy_for: watch
                .busy_since
                .map_or(Duration::ZERO, |s| now.duration_since(s)),
            seen_idle: watch.seen_idle,
            calls: slot.invocations,
            completed: slot.invocations.saturating_sub(u64::from(slot.in_flight)),
            mean_wall: inner.service_secs.map(Duration::from_secs_f64),
            in_flight: slot.in_flight,
            limit: slot.limit,
            max_limit: slot
                .controller
                .as_ref()
                .map_or(self.config.max_concurrency, |c| c.config().max_limit),
            queued: inner.queue.iter().filter(|w| !w.is_closed()).count(),
            rss_kib: reading.rss_kib,
            memory_limit_kib: self.config.memory_limit_kib,
            target_cpu: target,
        };
        match judge(&evidence) {
            Verdict::Wait => true,
            Verdict::Grow {
                to,
                cpu_per_call,
                wall_at_least,
            } => {
                watch.grown_at = now;
                let slot = &mut inner.slots[index];
                let from = slot.limit;
                slot.limit = to;
                if let Some(controller) = slot.controller.as_mut() {
                    controller.assume(to);
                }
                let decision = Decision::ProbeGrew {
                    instance: id.to_owned(),
                    from,
                    to,
                    cpu_per_call,
                    wall_at_least,
                };
                self.decide(&mut inner, decision);
                self.feed_waiters(&mut inner, index);
                true
            }
            Verdict::Done { learned, why } => {
                inner.probing = false;
                inner.learned_limit = learned;
                self.decide(&mut inner, Decision::ProbeDone { learned, why });
                self.scale_up(&mut inner);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence() -> Evidence {
        Evidence {
            age: Duration::from_millis(300),
            since_growth: Duration::from_millis(300),
            cpu: Duration::from_millis(160),
            tick_busy: 0.05,
            busy_for: Duration::ZERO,
            seen_idle: true,
            calls: 16,
            completed: 0,
            mean_wall: None,
            in_flight: 16,
            limit: 16,
            max_limit: 256,
            queued: 84,
            rss_kib: 100_000,
            memory_limit_kib: 512 * 1024,
            target_cpu: 0.8,
        }
    }

    #[test]
    fn an_idle_core_with_every_slot_taken_doubles_the_limit() {
        let Verdict::Grow { to, .. } = judge(&evidence()) else {
            panic!("expected growth");
        };
        assert_eq!(to, 32);
    }

    #[test]
    fn growth_jumps_to_the_littles_law_lower_bound_when_calls_are_old_and_cheap() {
        // 10 ms per call, in flight for 1.5 s: at least 0.8 × 1.5 / 0.01 = 120 fit.
        let e = Evidence {
            age: Duration::from_millis(1500),
            ..evidence()
        };
        let Verdict::Grow { to, .. } = judge(&e) else {
            panic!("expected growth");
        };
        assert_eq!(to, 120);
        let capped = Evidence {
            max_limit: 100,
            ..e
        };
        assert!(matches!(judge(&capped), Verdict::Grow { to: 100, .. }));
    }

    #[test]
    fn a_busy_core_waits_and_nothing_grows_without_a_queue_or_a_binding_limit() {
        let busy = Evidence {
            tick_busy: 0.9,
            ..evidence()
        };
        assert_eq!(judge(&busy), Verdict::Wait);
        let no_queue = Evidence {
            queued: 0,
            ..evidence()
        };
        assert_eq!(judge(&no_queue), Verdict::Wait);
        let room = Evidence {
            in_flight: 10,
            ..evidence()
        };
        assert_eq!(judge(&room), Verdict::Wait);
    }

    #[test]
    fn a_cpu_bound_instance_ends_the_probe_at_its_littles_law_limit() {
        // 200 ms of CPU per call, run one after another: 3 done after 600 ms, mean wall
        // 400 ms, 600 ms CPU → 0.8 × 0.4 / 0.2 = 1.6 → 2.
        let e = Evidence {
            age: Duration::from_millis(650),
            cpu: Duration::from_millis(600),
            tick_busy: 1.0,
            busy_for: Duration::from_millis(600),
            seen_idle: false,
            completed: 3,
            mean_wall: Some(Duration::from_millis(400)),
            in_flight: 13,
            ..evidence()
        };
        assert_eq!(
            judge(&e),
            Verdict::Done {
                learned: 2,
                why: ProbeEnd::Saturated
            }
        );
    }

    #[test]
    fn completions_the_ceiling_memory_or_patience_end_the_probe_at_the_limit_reached() {
        let measured = Evidence {
            completed: 3,
            limit: 64,
            in_flight: 61,
            queued: 0,
            ..evidence()
        };
        // Calls completing while work still waits and the core idles: keep growing.
        let still_waiting = Evidence {
            completed: 3,
            ..evidence()
        };
        assert!(matches!(
            judge(&still_waiting),
            Verdict::Grow { to: 32, .. }
        ));
        assert_eq!(
            judge(&measured),
            Verdict::Done {
                learned: 64,
                why: ProbeEnd::Measured
            }
        );
        let ceiling = Evidence {
            limit: 256,
            in_flight: 256,
            ..evidence()
        };
        assert!(matches!(
            judge(&ceiling),
            Verdict::Done {
                why: ProbeEnd::Ceiling,
                ..
            }
        ));
        let memory = Evidence {
            rss_kib: 400 * 1024,
            ..evidence()
        };
        assert!(matches!(
            judge(&memory),
            Verdict::Done {
                why: ProbeEnd::Memory,
                ..
            }
        ));
        let patience = Evidence {
            tick_busy: 0.7,
            age: PATIENCE * 3,
            since_growth: PATIENCE,
            ..evidence()
        };
        let not_yet = Evidence {
            since_growth: PATIENCE / 2,
            ..patience
        };
        assert_eq!(judge(&not_yet), Verdict::Wait);
        assert_eq!(
            judge(&patience),
            Verdict::Done {
                learned: 16,
                why: ProbeEnd::Patience
            }
        );
    }
}
