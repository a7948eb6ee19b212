//! The decisions a pool takes about its instances (start, queue, stop, drain, recycle,
//! retune), as values, and the short history each pool keeps of them.
//!
//! This module owns the vocabulary: [`Decision`], its `Display` sentence and stable
//! [`Decision::kind`]; `log` owns recording (the bounded history, the `tracing` event).
//! It takes no decision and must not look at pool state: the `pool` modules decide and
//! hand the value here to be recorded.

use std::fmt;
use std::time::Duration;

use crate::budget::BudgetRefusal;
use crate::controller::LimitReason;
use crate::LaunchError;

mod log;

pub(crate) use log::DecisionLog;

/// How many decisions a pool keeps (the oldest goes first): enough to explain the last
/// few minutes of a pool's scaling, little enough to copy into every status.
pub const DECISION_HISTORY: usize = 50;

/// Why a pool wanted more instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchReason {
    /// Invocations wait beyond the capacity of the instances already starting.
    Queued {
        waiting: usize,
        starting_capacity: usize,
    },
    /// Fewer instances are live than the function's `min_instances`.
    MinInstances { min_instances: u32 },
    /// A never-measured function's first burst: one instance, measured before more start.
    Probe { waiting: usize },
}

/// Why a cold-burst probe ended (see `pool/probe.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeEnd {
    /// The core stayed busy while calls completed: CPU-bound.
    Saturated,
    /// Enough calls completed for the controller's own measurements.
    Measured,
    /// The limit reached `max_concurrency`.
    Ceiling,
    /// The instance's memory neared its limit.
    Memory,
    /// No idle moment for the probe's patience since it last grew the limit.
    Patience,
}

impl fmt::Display for ProbeEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeEnd::Saturated => "its core stayed busy while calls completed (CPU-bound)",
            ProbeEnd::Measured => "calls completed: the controller measures from here",
            ProbeEnd::Ceiling => "its limit reached max_concurrency",
            ProbeEnd::Memory => "its memory neared the limit",
            ProbeEnd::Patience => "its core had no idle moment since the last growth",
        })
    }
}

/// One decision a pool took. `Display` gives the sentence `shoal status` shows; match on
/// the variant (or [`Decision::kind`]) rather than on that text.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Instances were started, each at `limit`.
    ScaleOut {
        reason: LaunchReason,
        starting: usize,
        limit: u32,
    },
    /// Work waits, but the pool already has `max_instances` live: it stays queued.
    AtMaxInstances { waiting: usize, max_instances: u32 },
    /// Work waits, but the `instances` ready (measured) instances spend more of their time
    /// waiting for a core than running (`wait_ms_per_s` and `run_ms_per_s` each, on
    /// average): other work holds the host's CPU, and another instance would wait with
    /// them. No instance starts; calls that cannot be served before their deadline are
    /// refused.
    ScaleOutHeld {
        waiting: usize,
        instances: usize,
        wait_ms_per_s: f64,
        run_ms_per_s: f64,
    },
    /// The host budget refused a launch after `started` of `wanted`; the work stays
    /// queued and the launch is retried on every housekeeping tick.
    BudgetRefused {
        reason: LaunchReason,
        started: usize,
        wanted: usize,
        refusal: BudgetRefusal,
    },
    /// Demand averaged over both windows fits `remaining` instances filled to
    /// `utilization` of their limits (the headroom its p99 over the stable window needs):
    /// `instance` drains.
    ScaleIn {
        instance: String,
        demand_stable: f64,
        demand_panic: f64,
        demand_p99: f64,
        utilization: f64,
        remaining: usize,
        mean_limit: f64,
    },
    /// `instance` was idle for the function's `idle_timeout` and stopped.
    IdleStop {
        instance: String,
        idle_timeout: Duration,
        min_instances: u32,
    },
    /// The pool was idle for the keep-alive its idle gaps call for (shorter than
    /// `idle_timeout`): `instance` stopped.
    KeepAliveStop {
        instance: String,
        keep: Duration,
        p5: Duration,
        p99: Duration,
        gaps: usize,
        idle_timeout: Duration,
    },
    /// Another function waits for the host budget: idle `instance` was stopped early.
    BudgetReclaim { instance: String },
    /// An instance failed to start (`failures` in a row); the next start waits
    /// `retry_after`, and calls fail fast with `error` meanwhile.
    LaunchFailed {
        failures: u32,
        retry_after: Duration,
        error: LaunchError,
    },
    /// `instance` exited without being asked to.
    InstanceExited { instance: String, reason: String },
    /// `instance` was still busy with a call `grace` past its deadline: stopped.
    StuckStopped { instance: String, grace: Duration },
    /// `instance`'s process is stopped (`SIGSTOP`): it takes no new calls and is stopped
    /// for good, so demand starts a fresh one; its calls in flight fail.
    Frozen { instance: String, in_flight: u32 },
    /// `instance`'s RSS passed `threshold` of the memory limit: it drains and stops.
    RssRecycle {
        instance: String,
        rss_kib: u64,
        memory_limit_kib: u64,
        threshold: f64,
    },
    /// The concurrency controller of `instance` moved its limit.
    LimitChanged {
        instance: String,
        from: u32,
        to: u32,
        reason: LimitReason,
    },
    /// The cold-burst probe saw `instance`'s core idle with every slot taken: its calls
    /// wait on something else, so its limit grew.
    ProbeGrew {
        instance: String,
        from: u32,
        to: u32,
        cpu_per_call: Duration,
        wall_at_least: Duration,
    },
    /// The cold-burst probe ended; new instances start at `learned`.
    ProbeDone { learned: u32, why: ProbeEnd },
    /// A newer version replaced this one (or the function was removed): the pool takes no
    /// new calls, finishes its work, then stops.
    Retired,
}

impl Decision {
    /// A stable snake_case name, for filtering logs and for the API.
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::ScaleOut { .. } => "scale_out",
            Decision::AtMaxInstances { .. } => "at_max_instances",
            Decision::ScaleOutHeld { .. } => "scale_out_held",
            Decision::BudgetRefused { .. } => "budget_refused",
            Decision::ScaleIn { .. } => "scale_in",
            Decision::IdleStop { .. } => "idle_stop",
            Decision::KeepAliveStop { .. } => "keep_alive_stop",
            Decision::BudgetReclaim { .. } => "budget_reclaim",
            Decision::LaunchFailed { .. } => "launch_failed",
            Decision::InstanceExited { .. } => "instance_exited",
            Decision::StuckStopped { .. } => "stuck_stopped",
            Decision::Frozen { .. } => "frozen",
            Decision::RssRecycle { .. } => "rss_recycle",
            Decision::LimitChanged { .. } => "limit_changed",
            Decision::ProbeGrew { .. } => "probe_grew",
            Decision::ProbeDone { .. } => "probe_done",
            Decision::Retired => "retired",
        }
    }

    /// The instance the decision is about, when it is about one.
    pub fn instance(&self) -> Option<&str> {
        match self {
            Decision::ScaleIn { instance, .. }
            | Decision::IdleStop { instance, .. }
            | Decision::KeepAliveStop { instance, .. }
            | Decision::BudgetReclaim { instance }
            | Decision::InstanceExited { instance, .. }
            | Decision::StuckStopped { instance, .. }
            | Decision::Frozen { instance, .. }
            | Decision::RssRecycle { instance, .. }
            | Decision::LimitChanged { instance, .. }
            | Decision::ProbeGrew { instance, .. } => Some(instance),
            Decision::ScaleOut { .. }
            | Decision::AtMaxInstances { .. }
            | Decision::ScaleOutHeld { .. }
            | Decision::BudgetRefused { .. }
            | Decision::LaunchFailed { .. }
            | Decision::ProbeDone { .. }
            | Decision::Retired => None,
        }
    }
}

impl fmt::Display for LaunchReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchReason::Queued {
                waiting,
                starting_capacity,
            } => write!(
                f,
                "{waiting} waiting beyond {starting_capacity} starting capacity"
            ),
            LaunchReason::MinInstances { min_instances } => {
                write!(f, "keeping min_instances {min_instances} warm")
            }
            LaunchReason::Probe { waiting } => write!(
                f,
                "{waiting} waiting on a function never measured: one instance first, sized \
                 by what it shows"
            ),
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::ScaleOut {
                reason,
                starting,
                limit,
            } => write!(
                f,
                "{reason}: starting {starting} instance(s) at limit {limit}"
            ),
            Decision::AtMaxInstances {
                waiting,
                max_instances,
            } => write!(
                f,
                "{waiting} waiting, at max_instances {max_instances}: queueing"
            ),
            Decision::ScaleOutHeld {
                waiting,
                instances,
                wait_ms_per_s,
                run_ms_per_s,
            } => write!(
                f,
                "host CPU saturated: the {instances} ready instance(s) wait {wait_ms_per_s:.0} ms \
                 per s for a core (and run {run_ms_per_s:.0} ms per s): {waiting} waiting, \
                 starting no more instances (a call that cannot be served before its deadline \
                 is refused)"
            ),
            Decision::BudgetRefused {
                reason,
                started,
                wanted,
                refusal,
            } => {
                let then = match reason {
                    LaunchReason::Queued { .. } | LaunchReason::Probe { .. } => "queueing",
                    LaunchReason::MinInstances { .. } => "retrying",
                };
                write!(
                    f,
                    "{reason}: started {started} of {wanted}, {refusal}: {then}"
                )
            }
            Decision::ScaleIn {
                instance,
                demand_stable,
                demand_panic,
                demand_p99,
                utilization,
                remaining,
                mean_limit,
            } => write!(
                f,
                "demand {demand_stable:.1} (60 s) / {demand_panic:.1} (6 s), p99 {demand_p99:.1}, \
                 fits {remaining} instance(s) at limit {mean_limit:.0} filled to {:.0}% (the \
                 headroom its p99 needs): draining {instance}",
                utilization * 100.0
            ),
            Decision::IdleStop {
                instance,
                idle_timeout,
                min_instances,
            } => write!(
                f,
                "instance {instance} idle for {idle_timeout:?}: stopping (min_instances \
                 {min_instances})"
            ),
            Decision::KeepAliveStop {
                instance,
                keep,
                p5,
                p99,
                gaps,
                idle_timeout,
            } => write!(
                f,
                "instance {instance} idle for {keep:?}, the keep-alive its last {gaps} idle gaps \
                 call for (5th percentile {p5:?}, 99th {p99:?}; idle_timeout {idle_timeout:?}): \
                 stopping"
            ),
            Decision::BudgetReclaim { instance } => write!(
                f,
                "host budget needed by another function: stopping idle instance {instance}"
            ),
            Decision::LaunchFailed {
                failures,
                retry_after,
                error,
            } => write!(
                f,
                "start failed ({failures} in a row), retrying after {retry_after:?}: {error}"
            ),
            Decision::InstanceExited { instance, reason } => {
                write!(f, "instance {instance} exited unexpectedly: {reason}")
            }
            Decision::StuckStopped { instance, grace } => write!(
                f,
                "instance {instance} still busy {grace:?} after a call's deadline: stopping it"
            ),
            Decision::Frozen {
                instance,
                in_flight,
            } => write!(
                f,
                "instance {instance} stopped answering (its process is stopped, state T) with \
                 {in_flight} call(s) in flight: no new calls, stopping it"
            ),
            Decision::RssRecycle {
                instance,
                rss_kib,
                memory_limit_kib,
                threshold,
            } => write!(
                f,
                "instance {instance} uses {} MiB, past {:.0}% of its {} MiB memory limit: \
                 recycling it once its calls finish",
                rss_kib / 1024,
                threshold * 100.0,
                memory_limit_kib / 1024
            ),
            Decision::LimitChanged {
                instance,
                from,
                to,
                reason,
            } => write!(f, "{instance}: {reason}: {from} -> {to}"),
            Decision::ProbeGrew {
                instance,
                from,
                to,
                cpu_per_call,
                wall_at_least,
            } => write!(
                f,
                "{instance}: core idle with every slot taken ({:.1} ms CPU per call, calls \
                 in flight {} ms and counting): {from} -> {to}",
                cpu_per_call.as_secs_f64() * 1000.0,
                wall_at_least.as_millis()
            ),
            Decision::ProbeDone { learned, why } => {
                write!(
                    f,
                    "cold-burst probe over, {why}: new instances start at {learned}"
                )
            }
            Decision::Retired => f.write_str("retired: draining"),
        }
    }
}

/// A decision and when it was taken.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionRecord {
    /// Wall-clock time, Unix epoch milliseconds.
    pub at_epoch_ms: u64,
    pub decision: Decision,
}

#[cfg(test)]
mod tests;
