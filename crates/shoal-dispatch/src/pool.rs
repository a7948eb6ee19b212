//! One function version's instances and its queue of invocations waiting for a slot.
//!
//! A slot is one unit of an instance's in-flight limit. Callers either get a slot at once
//! (a [`Grant`]) or wait in the queue; a finishing invocation hands its slot straight to
//! the next waiter, so a queued call never races a newly arrived one for it.
//!
//! This file owns the shared state (the [`Pool`], its locked `Inner`, one `Slot` per
//! instance) and the housekeeping task; the work on that state is split by job:
//! `slots` (grants, the queue hand-over), `lifecycle` (launch, backoff, exits, stuck
//! instances, retirement), `scaling` (scale-out, scale-in, idle/min/budget housekeeping),
//! `sampling` (measurements, the controllers, RSS recycling) and `status`. Every
//! decision goes through [`Pool::decide`]. Nothing here awaits while holding the lock.

mod keepalive;
mod lifecycle;
mod probe;
mod sampling;
mod scaling;
mod slots;
mod status;

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::budget::{HostBudget, Ticket};
use crate::controller::Controller;
use crate::decision::{Decision, DecisionLog};
use crate::{InstanceHandle, InstanceLauncher, LaunchError, PoolConfig, Result};

use slots::Grant;
pub use status::{InstanceState, InstanceStatus, PoolStatus, Room};

/// How often the housekeeping task samples instances, looks for idle ones and finished
/// drains.
const HOUSEKEEPING_PERIOD: Duration = Duration::from_millis(250);
/// An instance that waited for a core this fraction of its last interval or more is short
/// of CPU the host does not have: another instance would wait too, and add to everyone's
/// wait. [`Room`] then does not call it saturated, and the queue-driven scale-out holds
/// while the ready instances wait like this more than they run.
const HOST_BUSY_WAITING: f64 = 0.25;

struct Slot {
    id: String,
    state: InstanceState,
    handle: Option<Arc<dyn InstanceHandle>>,
    in_flight: u32,
    limit: u32,
    started: Instant,
    idle_since: Instant,
    invocations: u64,
    controller: Option<Controller>,
    window: Window,
    cpu_busy: Option<f64>,
    /// Fraction of its last sampling interval the instance sat runnable waiting for a core
    /// (capped at one): other work holds the host's CPU.
    cpu_waiting: Option<f64>,
    /// Since when the instance's limit has bound (mean in-flight at 80 % of it or more)
    /// at every sample without the controller raising it: a pacer facing a full, held
    /// instance gets nothing more from waiting for it.
    held_since: Option<Instant>,
    /// The instance refused a call before running it (its channel is closed: it is gone
    /// or going, and its exit watcher has not said so yet). It gets no more calls.
    refused: bool,
    /// This instance's share of the host budget, given back when the slot goes.
    _ticket: Ticket,
    /// What each call used of the instance (see [`crate::meter`]).
    meter: Arc<std::sync::Mutex<crate::meter::Meter>>,
    /// How long the instance took to start; the first call it runs reports it, as
    /// Lambda's `Init Duration` on a cold call.
    init: Option<Duration>,
}

/// What an instance did since its last sample.
#[derive(Default)]
struct Window {
    started: Option<Instant>,
    last_change: Option<Instant>,
    /// In-flight count integrated over time (call-seconds), for the time-averaged count.
    in_flight_area: f64,
    completed: u32,
    latency_sum: Duration,
    min_latency: Option<Duration>,
    cpu_at_start: Option<Duration>,
    /// The instance's run-queue wait so far at the window's start, when measurable.
    wait_at_start: Option<Duration>,
}

impl Slot {
    /// Account the in-flight count up to `now`; call before changing it.
    fn touch(&mut self, now: Instant) {
        if let Some(last) = self.window.last_change {
            self.window.in_flight_area +=
                self.in_flight as f64 * now.duration_since(last).as_secs_f64();
        }
        self.window.last_change = Some(now);
    }

    /// The instance waited for a core [`HOST_BUSY_WAITING`] of its last interval or more.
    fn waits_for_core(&self) -> bool {
        self.cpu_waiting.is_some_and(|w| w >= HOST_BUSY_WAITING)
    }

    fn is_live(&self) -> bool {
        matches!(self.state, InstanceState::Starting | InstanceState::Ready)
    }

    /// Ask the instance to stop; the slot goes when its process is gone.
    fn stop(&mut self) {
        self.state = InstanceState::Stopping;
        if let Some(handle) = &self.handle {
            handle.stop();
        }
    }

    /// Take no new work: stop now when idle, else once the calls in flight finish.
    fn drain(&mut self) {
        if self.in_flight == 0 {
            self.stop();
        } else {
            self.state = InstanceState::Draining;
        }
    }
}

type Waiter = oneshot::Sender<Result<Grant>>;

struct Inner {
    slots: Vec<Slot>,
    queue: VecDeque<Waiter>,
    /// Set when a newer version replaced this one, or the function was deleted.
    retired: bool,
    /// Set when the pool has no instances left after retirement.
    finished: bool,
    failures: u32,
    backoff_until: Option<Instant>,
    last_launch_error: Option<LaunchError>,
    /// Why the pool started, stopped or retuned instances, for `shoal status`.
    decisions: DecisionLog,
    /// Limit for new instances: the config's, then what the controllers learned.
    learned_limit: u32,
    /// (time, in-flight + queued) every housekeeping tick, over the stable window.
    demand: VecDeque<(Instant, f64)>,
    last_sample: Instant,
    last_scale_in: Instant,
    /// When a scale-out held for a saturated host was last recorded (one per few seconds:
    /// every queued call asks again).
    last_hold_recorded: Option<Instant>,
    /// Smoothed seconds a call holds its slot (hand-over to answer), for admission.
    service_secs: Option<f64>,
    /// Nothing measured yet: a burst starts one instance, sized by `probe` before more
    /// start.
    probing: bool,
    /// The pool's idle gaps (nothing in flight or queued, to the next call), for the
    /// learned keep-alive (`keepalive`).
    gaps: keepalive::Gaps,
    /// Since when nothing has been in flight or queued, while that holds.
    idle_from: Option<Instant>,
}

pub(crate) struct Pool {
    function: String,
    version: u32,
    config: PoolConfig,
    launcher: Arc<dyn InstanceLauncher>,
    budget: Arc<HostBudget>,
    next_instance: Arc<AtomicU64>,
    inner: Mutex<Inner>,
}

impl Pool {
    pub(crate) fn new(
        function: &str,
        version: u32,
        config: PoolConfig,
        launcher: Arc<dyn InstanceLauncher>,
        budget: Arc<HostBudget>,
        next_instance: Arc<AtomicU64>,
    ) -> Arc<Pool> {
        let learned = config.limit.max(1);
        let probing = config.auto && config.probe && !config.sized_at_start;
        let pool = Arc::new(Pool {
            function: function.to_owned(),
            version,
            config,
            launcher,
            budget,
            next_instance,
            inner: Mutex::new(Inner {
                slots: Vec::new(),
                queue: VecDeque::new(),
                retired: false,
                finished: false,
                failures: 0,
                backoff_until: None,
                last_launch_error: None,
                decisions: DecisionLog::default(),
                learned_limit: learned,
                service_secs: None,
                probing,
                gaps: keepalive::Gaps::default(),
                idle_from: None,
                demand: VecDeque::new(),
                last_sample: Instant::now(),
                last_scale_in: Instant::now(),
                last_hold_recorded: None,
            }),
        });
        tokio::spawn(housekeeping(Arc::downgrade(&pool)));
        pool
    }

    pub(crate) fn version(&self) -> u32 {
        self.version
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.config.timeout
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock is a bug; keep serving with the state as it is.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record a decision: a `tracing` event now, and an entry in the pool's history.
    fn decide(&self, inner: &mut Inner, decision: Decision) {
        inner
            .decisions
            .record(&self.function, self.version, decision);
    }
}

async fn housekeeping(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.sample_instances();
        if !pool.housekeep() {
            return;
        }
    }
}
