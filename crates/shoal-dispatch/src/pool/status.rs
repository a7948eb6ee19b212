//! Status: the point-in-time views of a pool and its instances that `shoal status`, the
//! control API and the dashboard read, and the small queries the dispatcher asks.
//!
//! This module only reads pool state under the lock; it must not change it. The types are
//! plain data without serde: the server converts them into its own wire types.

use std::time::Duration;

use tokio::time::Instant;

use super::scaling::demand_means;
use super::Pool;
use crate::decision::DecisionRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

impl InstanceState {
    /// The lowercase name: `starting`, `ready`, `draining` or `stopping`.
    pub fn as_str(&self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Ready => "ready",
            InstanceState::Draining => "draining",
            InstanceState::Stopping => "stopping",
        }
    }
}

/// A point-in-time view of one instance, for `shoal status` and the control API.
#[derive(Debug, Clone)]
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
    /// The controller's Little's-law target L* (`concurrency = "auto"`, once measured).
    pub littles_law: Option<f64>,
}

/// How busy an instance must be, as a fraction of the controller's CPU target, for
/// [`Room`] to call it saturated. A single-threaded runtime cannot use a second core, so
/// once an instance spends more than half a core (at the default target of 0.8) the
/// host's other cores are only reached by another instance; well below the point where
/// the controller stops growing its limit (the seed's hello, CPU-bound on one instance,
/// hovered at 0.65–0.75 and never scaled out at that point). A no-op queue function at
/// 50,000 messages a second runs at 0.1–0.2.
const SATURATED_FRACTION_OF_TARGET: f64 = 0.6;
/// An instance whose limit has bound this long without growing is as full as it will get
/// by waiting (its controller holds it: latency judged inflated, memory), so it counts as
/// saturated too; shorter than that, growth may still come (the controller samples once
/// a second).
const HELD_FOR: Duration = Duration::from_secs(3);

/// What one pool can take now, for a caller that paces itself to it rather than queueing
/// (a queue poller, whose backlog waits just as well in its queue): calls queued here
/// start instances, so a pacer that floods the queue scales the function out for work
/// that is only waiting its turn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Room {
    /// Slots on ready and starting instances.
    pub slots: u32,
    /// Calls holding a slot or waiting for one.
    pub busy: u32,
    /// Ready and starting instances.
    pub instances: u32,
    /// Of those, still starting.
    pub starting: u32,
    pub max_instances: u32,
    /// The limit a new instance starts with.
    pub per_instance: u32,
    /// `concurrency = "auto"`: instance limits grow while the instance has room for more.
    pub auto: bool,
    /// Every ready instance is as busy as one instance usefully gets: under `auto`, its
    /// limit at `max_concurrency`, or — while it seldom waits for a core (the host has CPU
    /// to give another instance) — past 60 % of the controller's CPU target, or its limit
    /// binding for 3 s without the controller raising it while its CPU demand is below
    /// the target; with a fixed limit, always.
    /// Only then does another instance add throughput rather than spread the same work.
    pub saturated: bool,
    /// Calls the wait queue holds before it refuses.
    pub max_queue: u32,
}

impl Room {
    /// Slots free now (none while calls wait).
    pub fn free(&self) -> u32 {
        self.slots.saturating_sub(self.busy)
    }
}

/// A point-in-time view of one function version's pool.
#[derive(Debug, Clone)]
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
    pub instances: Vec<InstanceStatus>,
    /// Why the pool started, stopped or retuned instances: the last
    /// [`DECISION_HISTORY`](crate::DECISION_HISTORY), oldest first.
    pub decisions: Vec<DecisionRecord>,
}

impl Pool {
    pub(crate) fn status(&self) -> PoolStatus {
        let inner = self.lock();
        let now = Instant::now();
        let (demand_stable, demand_panic) = demand_means(&inner, now);
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
            demand_stable,
            demand_panic,
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
                    littles_law: s.controller.as_ref().and_then(|c| c.littles_law_estimate()),
                })
                .collect(),
            decisions: inner.decisions.to_vec(),
        }
    }

    pub(crate) fn room(&self) -> Room {
        let inner = self.lock();
        let now = Instant::now();
        let live = inner.slots.iter().filter(|s| s.is_live());
        let ready = || {
            inner
                .slots
                .iter()
                .filter(|s| s.state == InstanceState::Ready)
        };
        let saturated = !self.config.auto
            || (ready().next().is_some()
                && ready().all(|s| {
                    let busy = s.cpu_busy.unwrap_or(0.0);
                    let waiting = s.cpu_waiting.unwrap_or(0.0);
                    // Waiting for a core: the host's CPU is taken, and another instance
                    // would only wait with it.
                    let host_busy = s.waits_for_core();
                    s.limit >= self.config.max_concurrency
                        || (!host_busy
                            && s.cpu_busy.is_some()
                            && busy >= self.config.target_cpu * SATURATED_FRACTION_OF_TARGET)
                        || (!host_busy
                            && busy + waiting < self.config.target_cpu
                            && s.held_since
                                .is_some_and(|t| now.saturating_duration_since(t) >= HELD_FOR))
                }));
        let waiting = inner.queue.iter().filter(|w| !w.is_closed()).count();
        let in_flight: u32 = inner.slots.iter().map(|s| s.in_flight).sum();
        Room {
            slots: live.clone().map(|s| s.limit).sum(),
            busy: in_flight.saturating_add(u32::try_from(waiting).unwrap_or(u32::MAX)),
            instances: live.clone().count() as u32,
            starting: live.filter(|s| s.state == InstanceState::Starting).count() as u32,
            max_instances: self.config.max_instances,
            per_instance: inner.learned_limit.max(1),
            auto: self.config.auto,
            saturated,
            max_queue: u32::try_from(self.config.max_queue).unwrap_or(u32::MAX),
        }
    }

    pub(crate) fn instance_count(&self) -> usize {
        self.lock().slots.len()
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.lock().finished
    }
}
