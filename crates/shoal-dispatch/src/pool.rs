//! One function version's instances and its queue of invocations waiting for a slot.
//!
//! A slot is one unit of an instance's in-flight limit. Callers either get a slot at once
//! (a [`Grant`]) or wait in the queue; a finishing invocation hands its slot straight to
//! the next waiter, so a queued call never races a newly arrived one for it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::budget::{BudgetRefusal, HostBudget, Ticket};
use crate::controller::{Controller, ControllerConfig, Sample};
use crate::{
    DispatchError, InstanceHandle, InstanceLauncher, Invocation, LaunchError, LaunchRequest,
    Outcome, PoolConfig, Result,
};

/// How often the housekeeping task looks for idle instances and finished drains.
const HOUSEKEEPING_PERIOD: Duration = Duration::from_millis(250);
/// How often each auto-tuned instance is measured and its controller consulted.
const SAMPLE_PERIOD: Duration = Duration::from_millis(1000);
/// Demand averaged over this long decides scale-in (long: avoids flapping).
const STABLE_WINDOW: Duration = Duration::from_secs(60);
/// Demand averaged over this long is shown beside the stable one (bursts are handled at
/// once by the queue-driven scale-up).
const PANIC_WINDOW: Duration = Duration::from_secs(6);
/// Scale-in happens only when the stable demand would fill the remaining instances to at
/// most this fraction of their limits: headroom so the next wobble does not scale out again.
const SCALE_IN_UTILIZATION: f64 = 0.7;
/// At most one instance is drained per this period.
const SCALE_IN_COOLDOWN: Duration = Duration::from_secs(10);
/// Under host-budget pressure, an instance idle this long is given back early.
const BUDGET_RECLAIM_IDLE: Duration = Duration::from_millis(500);
/// First pause after a failed start; doubles per consecutive failure.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// A function that never starts is retried at most this rarely.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long past a call's deadline its instance may stay busy with it before it is
/// considered stuck (e.g. a blocked event loop) and stopped.
pub const STUCK_GRACE: Duration = Duration::from_secs(2);
/// An instance whose RSS reaches this fraction of its memory limit (a leak creeping up
/// over many calls) is recycled: it drains, stops, and demand starts a fresh one before
/// the memory limit kills it mid-call.
pub const RECYCLE_RSS_FRACTION: f64 = 0.9;
/// Only an instance that served this many calls is recycled for its RSS: growth over
/// many calls is a leak worth a fresh start, a function whose footprint is simply that
/// large would otherwise be restarted every sampling interval.
const RECYCLE_MIN_INVOCATIONS: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Launched, not yet ready; its capacity already counts against a burst.
    Starting,
    /// Taking work.
    Ready,
    /// Takes no new work; stops once its in-flight count reaches zero.
    Draining,
    /// Asked to stop; removed when its process is gone.
    Stopping,
}

/// A point-in-time view of one instance, for `shoal status` and the control API.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceStatus {
    pub id: String,
    pub pid: Option<u32>,
    pub state: InstanceState,
    pub in_flight: u32,
    pub limit: u32,
    pub uptime_ms: u64,
    pub invocations: u64,
    /// Fraction of one core the instance used over its last sampling interval.
    pub cpu_busy: Option<f64>,
}

/// A point-in-time view of one function version's pool.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    pub function: String,
    pub version: u32,
    /// An older version finishing its work after a redeploy or delete.
    pub retired: bool,
    pub queued: usize,
    pub limit: u32,
    pub max_instances: u32,
    /// `concurrency = "auto"`.
    pub auto: bool,
    /// The limit a new instance starts with (learned from running ones when auto).
    pub learned_limit: u32,
    /// Instances the demand calls for (stable window), against `instances.len()`.
    pub desired: usize,
    /// Mean in-flight + queued over the stable and the panic window.
    pub demand_stable: f64,
    pub demand_panic: f64,
    /// Left out of the JSON: the server reports instances with their resources instead.
    #[serde(skip)]
    pub instances: Vec<InstanceStatus>,
    /// Why the pool last started or stopped an instance.
    pub last_decision: String,
}

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
    /// This instance's share of the host budget, given back when the slot goes.
    _ticket: Ticket,
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

    fn is_live(&self) -> bool {
        matches!(self.state, InstanceState::Starting | InstanceState::Ready)
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
    last_decision: String,
    /// Limit for new instances: the config's, then what the controllers learned.
    learned_limit: u32,
    /// (time, in-flight + queued) every housekeeping tick, over the stable window.
    demand: VecDeque<(Instant, f64)>,
    last_sample: Instant,
    last_scale_in: Instant,
}

pub(crate) struct Pool {
    function: String,
    version: u32,
    config: PoolConfig,
    launcher: Arc<dyn InstanceLauncher>,
    budget: Arc<HostBudget>,
    next_instance: Arc<std::sync::atomic::AtomicU64>,
    inner: Mutex<Inner>,
}

/// The right to run one invocation on one instance. Dropping it frees the slot (or hands
/// it to the next waiter).
pub(crate) struct Grant {
    pool: Option<Arc<Pool>>,
    instance: String,
    handle: Arc<dyn InstanceHandle>,
    /// When the slot was handed over: the call's latency is measured from here.
    started: Instant,
}

impl Drop for Grant {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.release(&self.instance, self.started);
        }
    }
}

impl Pool {
    pub(crate) fn new(
        function: &str,
        version: u32,
        config: PoolConfig,
        launcher: Arc<dyn InstanceLauncher>,
        budget: Arc<HostBudget>,
        next_instance: Arc<std::sync::atomic::AtomicU64>,
    ) -> Arc<Pool> {
        let learned = config.limit.max(1);
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
                last_decision: "no instances yet".to_owned(),
                learned_limit: learned,
                demand: VecDeque::new(),
                last_sample: Instant::now(),
                last_scale_in: Instant::now(),
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

    /// Run one invocation: wait for a slot (bounded by the deadline), then run it there.
    ///
    /// The run itself happens on its own task, which keeps the slot until the instance
    /// really finishes the call: a caller that times out or goes away must not free a slot
    /// whose handler is still running (that would push the instance past its limit). An
    /// instance that has not answered by the deadline plus [`STUCK_GRACE`] is stopped.
    pub(crate) async fn invoke(self: &Arc<Self>, invocation: Invocation) -> Result<Outcome> {
        let deadline = invocation.deadline;
        let grant = match tokio::time::timeout_at(deadline, self.acquire()).await {
            Ok(grant) => grant?,
            Err(_) => return Err(DispatchError::Timeout(self.config.timeout)),
        };
        let (reply, result) = oneshot::channel();
        let timeout = self.config.timeout;
        tokio::spawn(async move {
            let handle = grant.handle.clone();
            let mut call = handle.invoke(invocation);
            let outcome = match tokio::time::timeout_at(deadline, &mut call).await {
                Ok(outcome) => outcome.map_err(DispatchError::from),
                Err(_) => Err(DispatchError::Timeout(timeout)),
            };
            let timed_out = matches!(outcome, Err(DispatchError::Timeout(_)));
            let _ = reply.send(outcome);
            if timed_out && tokio::time::timeout(STUCK_GRACE, call).await.is_err() {
                if let Some(pool) = &grant.pool {
                    pool.stop_stuck(&grant.instance);
                }
            }
            drop(grant);
        });
        result.await.unwrap_or(Err(DispatchError::ShuttingDown))
    }

    /// An instance kept running a call past its deadline and grace: stop it. Its other
    /// in-flight calls fail with the exit; the pool starts a replacement if work waits.
    fn stop_stuck(&self, instance: &str) {
        let mut inner = self.lock();
        if let Some(slot) = inner.slots.iter_mut().find(|s| s.id == instance) {
            Self::stop_slot(slot);
            inner.last_decision =
                format!("instance {instance} still busy {STUCK_GRACE:?} after a call's deadline: stopping it");
        }
    }

    async fn acquire(self: &Arc<Self>) -> Result<Grant> {
        let waiting = {
            let mut inner = self.lock();
            if let Some(grant) = self.try_grant(&mut inner) {
                return Ok(grant);
            }
            let now = Instant::now();
            let nothing_live = !inner.slots.iter().any(Slot::is_live);
            if let (Some(until), true) = (inner.backoff_until, nothing_live) {
                if now < until {
                    let err = inner
                        .last_launch_error
                        .clone()
                        .unwrap_or_else(|| LaunchError {
                            error_type: "Runtime.Unknown".into(),
                            message: "instance failed to start".into(),
                        });
                    return Err(DispatchError::InitFailed(err));
                }
            }
            if inner.queue.len() >= self.config.max_queue {
                return Err(DispatchError::Overloaded {
                    function: self.function.clone(),
                    retry_after: Duration::from_secs(1),
                });
            }
            let (tx, rx) = oneshot::channel();
            inner.queue.push_back(tx);
            self.scale_up(&mut inner);
            rx
        };
        waiting.await.unwrap_or(Err(DispatchError::ShuttingDown))
    }

    /// Take a free slot on the least-loaded ready instance, if any.
    fn try_grant(self: &Arc<Self>, inner: &mut Inner) -> Option<Grant> {
        let slot = inner
            .slots
            .iter_mut()
            .filter(|s| s.state == InstanceState::Ready && s.in_flight < s.limit)
            .min_by_key(|s| s.in_flight)?;
        let now = Instant::now();
        slot.touch(now);
        slot.in_flight += 1;
        slot.invocations += 1;
        Some(Grant {
            pool: Some(self.clone()),
            instance: slot.id.clone(),
            handle: slot.handle.clone().expect("ready slot has a handle"),
            started: now,
        })
    }

    /// Hand free slots of instance `index` to waiters, oldest first.
    fn feed_waiters(self: &Arc<Self>, inner: &mut Inner, index: usize) {
        while inner.slots[index].state == InstanceState::Ready
            && inner.slots[index].in_flight < inner.slots[index].limit
        {
            let Some(waiter) = inner.queue.pop_front() else {
                break;
            };
            if waiter.is_closed() {
                continue;
            }
            let now = Instant::now();
            let slot = &mut inner.slots[index];
            slot.touch(now);
            slot.in_flight += 1;
            slot.invocations += 1;
            let grant = Grant {
                pool: Some(self.clone()),
                instance: slot.id.clone(),
                handle: slot.handle.clone().expect("ready slot has a handle"),
                started: now,
            };
            if let Err(Ok(mut grant)) = waiter.send(Ok(grant)) {
                // The waiter left between the check and the send: take the slot back
                // without re-entering `release` under the lock.
                grant.pool = None;
                let slot = &mut inner.slots[index];
                slot.in_flight -= 1;
                slot.invocations -= 1;
            }
        }
    }

    /// An invocation finished on `instance`: pass the slot on or free it.
    fn release(self: &Arc<Self>, instance: &str, started: Instant) {
        let mut inner = self.lock();
        let Some(index) = inner.slots.iter().position(|s| s.id == instance) else {
            return;
        };
        let now = Instant::now();
        let slot = &mut inner.slots[index];
        slot.touch(now);
        let latency = now.duration_since(started);
        slot.window.completed += 1;
        slot.window.latency_sum += latency;
        slot.window.min_latency = Some(slot.window.min_latency.map_or(latency, |m| m.min(latency)));
        inner.slots[index].in_flight -= 1;
        if inner.slots[index].in_flight == 0 {
            inner.slots[index].idle_since = Instant::now();
        }
        self.feed_waiters(&mut inner, index);
        let slot = &inner.slots[index];
        let drained = slot.in_flight == 0
            && (slot.state == InstanceState::Draining
                || (inner.retired && inner.queue.is_empty() && slot.state == InstanceState::Ready));
        if drained {
            Self::stop_slot(&mut inner.slots[index]);
        }
    }

    fn stop_slot(slot: &mut Slot) {
        slot.state = InstanceState::Stopping;
        if let Some(handle) = &slot.handle {
            handle.stop();
        }
    }

    /// Start the instances the queue needs beyond the capacity already starting.
    fn scale_up(self: &Arc<Self>, inner: &mut Inner) {
        let limit = inner.learned_limit.max(1) as usize;
        let starting_capacity: usize = inner
            .slots
            .iter()
            .filter(|s| s.state == InstanceState::Starting)
            .map(|s| s.limit as usize)
            .sum();
        let waiting = inner.queue.iter().filter(|w| !w.is_closed()).count();
        if waiting <= starting_capacity {
            return;
        }
        let live = inner.slots.iter().filter(|s| s.is_live()).count();
        let room = (self.config.max_instances as usize).saturating_sub(live);
        let need = (waiting - starting_capacity).div_ceil(limit);
        let starting = need.min(room);
        if starting == 0 {
            inner.last_decision = format!(
                "{waiting} waiting, at max_instances {}: queueing",
                self.config.max_instances
            );
            return;
        }
        for started in 0..starting {
            if let Err(refused) = self.launch(inner) {
                inner.last_decision = format!(
                    "{waiting} waiting beyond {starting_capacity} starting capacity: \
                     started {started} of {starting}, {}: queueing",
                    refused.0
                );
                return;
            }
        }
        inner.last_decision = format!(
            "{waiting} waiting beyond {starting_capacity} starting capacity: \
             starting {starting} instance(s) at limit {limit}"
        );
    }

    /// Start one instance, if the host budget has room for it.
    fn launch(self: &Arc<Self>, inner: &mut Inner) -> Result<(), BudgetRefusal> {
        let ticket = self.budget.try_take(self.config.memory_limit_kib)?;
        let seq = self
            .next_instance
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}-v{}-{}", self.function, self.version, seq);
        let now = Instant::now();
        let limit = inner.learned_limit.max(1);
        let controller = self.config.auto.then(|| {
            let mut config =
                ControllerConfig::new(self.config.max_concurrency, self.config.memory_limit_kib);
            config.initial_limit = limit.min(config.max_limit);
            config.target_cpu = self.config.target_cpu;
            config.latency_tolerance = self.config.latency_tolerance;
            Controller::new(config)
        });
        inner.slots.push(Slot {
            id: id.clone(),
            state: InstanceState::Starting,
            handle: None,
            in_flight: 0,
            limit,
            started: now,
            idle_since: now,
            invocations: 0,
            controller,
            window: Window::default(),
            cpu_busy: None,
            _ticket: ticket,
        });
        let request = LaunchRequest {
            function: self.function.clone(),
            version: self.version,
            instance_id: id.clone(),
            max_concurrency: self.config.max_concurrency,
        };
        let pool = self.clone();
        tokio::spawn(async move {
            let launched = pool.launcher.launch(request).await;
            pool.on_launched(&id, launched);
        });
        Ok(())
    }

    fn on_launched(
        self: &Arc<Self>,
        id: &str,
        launched: std::result::Result<Arc<dyn InstanceHandle>, LaunchError>,
    ) {
        let mut inner = self.lock();
        let index = inner.slots.iter().position(|s| s.id == id);
        match (launched, index) {
            (Ok(handle), None) => handle.stop(),
            (Ok(handle), Some(index)) => {
                inner.failures = 0;
                inner.backoff_until = None;
                let slot = &mut inner.slots[index];
                slot.handle = Some(handle.clone());
                slot.state = InstanceState::Ready;
                slot.idle_since = Instant::now();
                self.feed_waiters(&mut inner, index);
                if inner.retired && inner.queue.is_empty() && inner.slots[index].in_flight == 0 {
                    Self::stop_slot(&mut inner.slots[index]);
                }
                let pool = Arc::downgrade(self);
                let id = id.to_owned();
                tokio::spawn(async move {
                    let reason = handle.exited().await;
                    if let Some(pool) = pool.upgrade() {
                        pool.on_exit(&id, &reason);
                    }
                });
            }
            (Err(error), index) => {
                if let Some(index) = index {
                    inner.slots.remove(index);
                }
                inner.failures += 1;
                let pause = BACKOFF_BASE
                    .saturating_mul(1 << inner.failures.min(8).saturating_sub(1))
                    .min(BACKOFF_MAX);
                inner.backoff_until = Some(Instant::now() + pause);
                inner.last_decision = format!(
                    "start failed ({} in a row), retrying after {pause:?}: {error}",
                    inner.failures
                );
                if !inner.slots.iter().any(Slot::is_live) {
                    for waiter in inner.queue.drain(..) {
                        let _ = waiter.send(Err(DispatchError::InitFailed(error.clone())));
                    }
                }
                inner.last_launch_error = Some(error);
            }
        }
    }

    fn on_exit(self: &Arc<Self>, id: &str, reason: &str) {
        let mut inner = self.lock();
        let Some(index) = inner.slots.iter().position(|s| s.id == id) else {
            return;
        };
        let slot = inner.slots.remove(index);
        if slot.state != InstanceState::Stopping {
            inner.last_decision = format!("instance {id} exited unexpectedly: {reason}");
        }
        if !inner.queue.is_empty() {
            self.scale_up(&mut inner);
        }
    }

    /// Stop taking new work; finish what is queued and in flight, then stop.
    pub(crate) fn retire(self: &Arc<Self>) {
        let mut inner = self.lock();
        inner.retired = true;
        if inner.queue.is_empty() {
            for slot in inner.slots.iter_mut() {
                if slot.state == InstanceState::Ready && slot.in_flight == 0 {
                    Self::stop_slot(slot);
                } else if slot.state == InstanceState::Ready {
                    slot.state = InstanceState::Draining;
                }
            }
        }
        inner.last_decision = "retired: draining".to_owned();
    }

    /// Stop everything now and fail whatever waits (daemon shutdown).
    pub(crate) fn stop_all(&self) {
        let mut inner = self.lock();
        inner.retired = true;
        for waiter in inner.queue.drain(..) {
            let _ = waiter.send(Err(DispatchError::ShuttingDown));
        }
        for slot in inner.slots.iter_mut() {
            Self::stop_slot(slot);
        }
    }

    pub(crate) fn in_flight(&self) -> u32 {
        let inner = self.lock();
        inner.slots.iter().map(|s| s.in_flight).sum::<u32>() + inner.queue.len() as u32
    }

    pub(crate) fn instance_count(&self) -> usize {
        self.lock().slots.len()
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.lock().finished
    }

    pub(crate) fn status(&self) -> PoolStatus {
        let inner = self.lock();
        let now = Instant::now();
        PoolStatus {
            function: self.function.clone(),
            version: self.version,
            retired: inner.retired,
            queued: inner.queue.iter().filter(|w| !w.is_closed()).count(),
            limit: self.config.limit,
            max_instances: self.config.max_instances,
            auto: self.config.auto,
            learned_limit: inner.learned_limit,
            desired: self.desired(&inner, now),
            demand_stable: window_mean(&inner.demand, now, STABLE_WINDOW),
            demand_panic: window_mean(&inner.demand, now, PANIC_WINDOW),
            instances: inner
                .slots
                .iter()
                .map(|s| InstanceStatus {
                    id: s.id.clone(),
                    pid: s.handle.as_ref().and_then(|h| h.pid()),
                    state: s.state,
                    in_flight: s.in_flight,
                    limit: s.limit,
                    uptime_ms: now.duration_since(s.started).as_millis() as u64,
                    invocations: s.invocations,
                    cpu_busy: s.cpu_busy,
                })
                .collect(),
            last_decision: inner.last_decision.clone(),
        }
    }

    /// Instances the demand calls for: the larger of the two windows' mean demand over
    /// the limit new instances get.
    fn desired(&self, inner: &Inner, now: Instant) -> usize {
        let demand = window_mean(&inner.demand, now, STABLE_WINDOW).max(window_mean(
            &inner.demand,
            now,
            PANIC_WINDOW,
        ));
        let desired = (demand / inner.learned_limit.max(1) as f64).ceil() as usize;
        desired.clamp(
            self.config.min_instances as usize,
            self.config.max_instances as usize,
        )
    }

    /// Measure every ready instance: recycle one whose RSS crept past
    /// [`RECYCLE_RSS_FRACTION`] of the memory limit, and (when auto-tuned) let its
    /// controller set its limit. /proc is read outside the pool lock.
    fn sample_instances(self: &Arc<Self>) {
        let due: Vec<(String, Arc<dyn InstanceHandle>)> = {
            let mut inner = self.lock();
            let now = Instant::now();
            let measured = self.config.auto || self.config.memory_limit_kib > 0;
            if !measured || now.duration_since(inner.last_sample) < SAMPLE_PERIOD {
                return;
            }
            inner.last_sample = now;
            inner
                .slots
                .iter()
                .filter(|s| s.state == InstanceState::Ready)
                .filter_map(|s| Some((s.id.clone(), s.handle.clone()?)))
                .collect()
        };
        let readings: Vec<(String, Option<crate::Resources>)> = due
            .into_iter()
            .map(|(id, handle)| (id, handle.resources()))
            .collect();
        let mut inner = self.lock();
        let now = Instant::now();
        let queued = inner.queue.len() as u32;
        for (id, reading) in readings {
            let Some(index) = inner.slots.iter().position(|s| s.id == id) else {
                continue;
            };
            let Some(reading) = reading else { continue };
            if self.recycle_if_bloated(&mut inner, index, reading.rss_kib) || !self.config.auto {
                continue;
            }
            let slot = &mut inner.slots[index];
            slot.touch(now);
            let window = std::mem::take(&mut slot.window);
            slot.window = Window {
                started: Some(now),
                last_change: Some(now),
                cpu_at_start: Some(reading.cpu_time),
                ..Window::default()
            };
            let (Some(started), Some(cpu_at_start)) = (window.started, window.cpu_at_start) else {
                continue; // first reading of this instance: it only opens a window
            };
            let interval = now.duration_since(started);
            if interval.is_zero() {
                continue;
            }
            let cpu_time = reading.cpu_time.saturating_sub(cpu_at_start);
            slot.cpu_busy = Some(cpu_time.as_secs_f64() / interval.as_secs_f64());
            let sample = Sample {
                interval,
                cpu_time,
                completed: window.completed,
                latency_sum: window.latency_sum,
                min_latency: window.min_latency,
                mean_in_flight: window.in_flight_area / interval.as_secs_f64(),
                queued,
                rss_kib: reading.rss_kib,
            };
            let Some(controller) = slot.controller.as_mut() else {
                continue;
            };
            let decision = controller.observe(&sample);
            let grew = decision.limit > slot.limit;
            slot.limit = decision.limit;
            if decision.changed {
                inner.last_decision = format!("{id}: {}", decision.reason);
            }
            if grew {
                self.feed_waiters(&mut inner, index);
            }
        }
        let learned: Vec<u32> = inner
            .slots
            .iter()
            .filter(|s| s.state == InstanceState::Ready)
            .filter_map(|s| s.controller.as_ref().map(Controller::suggested_initial))
            .collect();
        if !learned.is_empty() {
            inner.learned_limit = (learned.iter().sum::<u32>() as f64 / learned.len() as f64)
                .round()
                .max(1.0) as u32;
        }
    }

    /// Drain (or stop, when idle) instance `index` if its RSS is past the recycling
    /// threshold. It takes no new work from now on; calls in flight finish first.
    fn recycle_if_bloated(&self, inner: &mut Inner, index: usize, rss_kib: u64) -> bool {
        let limit_kib = self.config.memory_limit_kib;
        let slot = &mut inner.slots[index];
        if limit_kib == 0
            || (rss_kib as f64) < limit_kib as f64 * RECYCLE_RSS_FRACTION
            || slot.invocations < RECYCLE_MIN_INVOCATIONS
        {
            return false;
        }
        if slot.in_flight == 0 {
            Self::stop_slot(slot);
        } else {
            slot.state = InstanceState::Draining;
        }
        inner.last_decision = format!(
            "instance {} uses {} MiB, past {:.0}% of its {} MiB memory limit: recycling it \
             once its calls finish",
            inner.slots[index].id,
            rss_kib / 1024,
            RECYCLE_RSS_FRACTION * 100.0,
            limit_kib / 1024
        );
        true
    }

    /// Record demand, and drain one instance when the stable demand fits comfortably in
    /// fewer. Scale-out is not decided here: the queue starts instances as soon as work
    /// waits beyond the capacity running and starting.
    fn autoscale(&self, inner: &mut Inner, now: Instant) {
        let demand =
            inner.slots.iter().map(|s| s.in_flight).sum::<u32>() as f64 + inner.queue.len() as f64;
        inner.demand.push_back((now, demand));
        while inner
            .demand
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > STABLE_WINDOW)
        {
            inner.demand.pop_front();
        }
        let covered = inner
            .demand
            .front()
            .map_or(Duration::ZERO, |(t, _)| now.duration_since(*t));
        let ready: Vec<usize> = (0..inner.slots.len())
            .filter(|&i| inner.slots[i].state == InstanceState::Ready)
            .collect();
        let floor = (self.config.min_instances as usize).max(1);
        if ready.len() <= floor
            || covered < PANIC_WINDOW
            || !inner.queue.is_empty()
            || now.duration_since(inner.last_scale_in) < SCALE_IN_COOLDOWN
        {
            return;
        }
        let stable = window_mean(&inner.demand, now, STABLE_WINDOW);
        let panic = window_mean(&inner.demand, now, PANIC_WINDOW);
        let mean_limit = ready
            .iter()
            .map(|&i| inner.slots[i].limit as f64)
            .sum::<f64>()
            / ready.len() as f64;
        let capacity_after = (ready.len() - 1) as f64 * mean_limit * SCALE_IN_UTILIZATION;
        if stable.max(panic) > capacity_after {
            return;
        }
        let Some(&victim) = ready.iter().min_by_key(|&&i| inner.slots[i].in_flight) else {
            return;
        };
        let slot = &mut inner.slots[victim];
        if slot.in_flight == 0 {
            Self::stop_slot(slot);
        } else {
            slot.state = InstanceState::Draining;
        }
        inner.last_scale_in = now;
        inner.last_decision = format!(
            "demand {stable:.1} (60 s) / {panic:.1} (6 s) fits {} instance(s) at limit {mean_limit:.0}: draining {}",
            ready.len() - 1,
            inner.slots[victim].id
        );
    }

    /// Periodic work: stop idle instances, keep `min_instances` warm, finish a drain.
    /// Returns false once the pool is finished.
    fn housekeep(self: &Arc<Self>) -> bool {
        let mut inner = self.lock();
        let now = Instant::now();
        inner.queue.retain(|w| !w.is_closed());
        if inner.retired {
            if inner.queue.is_empty() {
                for slot in inner.slots.iter_mut() {
                    if slot.state == InstanceState::Ready && slot.in_flight == 0 {
                        Self::stop_slot(slot);
                    }
                }
            }
            if inner.slots.is_empty() && inner.queue.is_empty() {
                inner.finished = true;
                return false;
            }
            return true;
        }
        self.autoscale(&mut inner, now);
        let mut live = inner.slots.iter().filter(|s| s.is_live()).count();
        let min = self.config.min_instances as usize;
        let mut decision = None;
        for slot in inner.slots.iter_mut() {
            if live <= min {
                break;
            }
            if slot.state == InstanceState::Ready
                && slot.in_flight == 0
                && now.duration_since(slot.idle_since) >= self.config.idle_timeout
            {
                Self::stop_slot(slot);
                live -= 1;
                decision = Some(format!(
                    "instance {} idle for {:?}: stopping (min_instances {min})",
                    slot.id, self.config.idle_timeout
                ));
            }
        }
        // One instance this pool already stopped will give its share back when it exits.
        let releasing = inner
            .slots
            .iter()
            .any(|s| s.state == InstanceState::Stopping);
        if decision.is_none()
            && live > min
            && !releasing
            && inner.queue.is_empty()
            && self.budget.under_pressure()
        {
            let idle = inner.slots.iter_mut().find(|s| {
                s.state == InstanceState::Ready
                    && s.in_flight == 0
                    && now.duration_since(s.idle_since) >= BUDGET_RECLAIM_IDLE
            });
            if let Some(slot) = idle.filter(|_| self.budget.relieve()) {
                Self::stop_slot(slot);
                decision = Some(format!(
                    "host budget needed by another function: stopping idle instance {}",
                    slot.id
                ));
            }
        }
        if let Some(decision) = decision {
            inner.last_decision = decision;
        }
        let in_backoff = inner.backoff_until.is_some_and(|until| now < until);
        if live < min && !in_backoff {
            inner.last_decision =
                format!("keeping min_instances {min} warm: starting {}", min - live);
            for _ in live..min {
                if let Err(refused) = self.launch(&mut inner) {
                    inner.last_decision =
                        format!("keeping min_instances {min} warm: {}", refused.0);
                    break;
                }
            }
        }
        // Work may be waiting because the host budget was spent when it arrived; another
        // function's instances may have stopped since.
        if !inner.queue.is_empty() && !in_backoff {
            self.scale_up(&mut inner);
        }
        true
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

fn window_mean(demand: &VecDeque<(Instant, f64)>, now: Instant, window: Duration) -> f64 {
    let (sum, n) = demand
        .iter()
        .filter(|(t, _)| now.duration_since(*t) <= window)
        .fold((0.0, 0usize), |(sum, n), (_, d)| (sum + d, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}
