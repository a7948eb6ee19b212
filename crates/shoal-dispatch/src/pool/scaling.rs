//! Scaling: how many instances the pool runs. Scale-out is queue-driven (start
//! `ceil(excess / limit)` beyond the capacity already starting, up to `max_instances` and
//! the host budget); scale-in drains one instance when the demand averaged over the
//! stable and panic windows fits in fewer; the housekeeping tick stops idle instances,
//! keeps `min_instances` warm, gives idle capacity back under budget pressure and
//! finishes a retired pool.
//!
//! Scale-in keeps the headroom the demand's own spread needs, not a fixed one. The
//! demand (in flight + queued) is sampled every housekeeping tick; over the stable
//! window its 99th percentile `p99` says how high it goes, its mean `m` (the larger of
//! the stable and the panic window's) how much there is. The remaining instances may be
//! filled on average to `u = clamp(m / p99, 0.5, 0.95)` of their limits: one instance
//! drains when `m ≤ (ready − 1) × mean limit × u`. A steady load (p99 ≈ mean) fills the
//! remaining instances to 95 % (never 100 %: the next arrival would queue and scale out
//! again), so a steady 7 at limit 8 runs on one instance; a bursty one keeps room for
//! its p99 (a load that peaks at twice its mean keeps half its capacity free). The floor
//! of 50 % bounds what a rare spike can hold: a peak beyond twice the mean is left to the
//! queue-driven scale-out. The p99 remembers the last 60 s, so a burst that scaled out
//! is not scaled in again until it is a minute old: scale-in and scale-out cannot flap.
//!
//! Scale-out does not start instances into a host whose CPU other work holds. Under
//! `auto` the sampler measures each ready instance's run time and run-queue wait (the
//! time its threads sat runnable without a core) once a second. When the measured ready
//! instances, on average, waited for a core a quarter of the time or more *and* at least
//! as long as they ran, the cores are the shortage: another instance would get no core
//! either, only add to everyone's wait (at load 23 the queue-driven scale-out once
//! reached 72 instances at limit 1). Then the queue starts nothing; the work waits for the
//! instances there are, and the queue's deadline admission refuses (429) what cannot be
//! served before its deadline, as it does at `max_instances`. A `scale_out_held`
//! decision says so, at most one per [`HOLD_RECORD_EVERY`]; once the wait subsides the
//! next housekeeping tick starts what the queue needs.
//!
//! This module chooses which instances to start or stop and records why; it must not
//! launch or stop a process itself (`lifecycle` and `Slot` do) nor change a limit
//! (`sampling` does).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Inner, InstanceState, Pool, HOST_BUSY_WAITING};
use crate::decision::{Decision, LaunchReason};

/// Demand averaged over this long decides scale-in (long: avoids flapping).
const STABLE_WINDOW: Duration = Duration::from_secs(60);
/// Demand averaged over this long is shown beside the stable one (bursts are handled at
/// once by the queue-driven scale-up).
const PANIC_WINDOW: Duration = Duration::from_secs(6);
/// Scale-in fills the remaining instances to at most this fraction of their limits,
/// however steady the demand: a pool at exactly its limits queues its next arrival and
/// scales out again.
const MAX_SCALE_IN_UTILIZATION: f64 = 0.95;
/// ... and to at least this fraction, however bursty: a rare spike beyond twice the mean
/// demand is left to the queue-driven scale-out rather than holding idle instances.
const MIN_SCALE_IN_UTILIZATION: f64 = 0.5;
/// The percentile of the stable window's demand samples the remaining instances must
/// have room for.
const SCALE_IN_PERCENTILE: f64 = 0.99;
/// At most one instance is drained per this period.
const SCALE_IN_COOLDOWN: Duration = Duration::from_secs(10);
/// A scale-out held for a saturated host is recorded at most once per this period: every
/// queued call and every tick asks again while it lasts.
const HOLD_RECORD_EVERY: Duration = Duration::from_secs(5);
/// Under host-budget pressure, an instance idle this long is given back early.
const BUDGET_RECLAIM_IDLE: Duration = Duration::from_millis(500);

impl Pool {
    /// Start the instances the queue needs beyond the capacity already starting.
    pub(super) fn scale_up(self: &Arc<Self>, inner: &mut Inner) {
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
        if inner.probing {
            // Nothing measured: one instance first; the probe sizes the rest.
            if live == 0 && self.config.max_instances > 0 {
                self.start_instances(inner, 1, LaunchReason::Probe { waiting });
            }
            return;
        }
        let room = (self.config.max_instances as usize).saturating_sub(live);
        let need = (waiting - starting_capacity).div_ceil(limit);
        let starting = need.min(room);
        if starting == 0 {
            let decision = Decision::AtMaxInstances {
                waiting,
                max_instances: self.config.max_instances,
            };
            self.decide(inner, decision);
            return;
        }
        if let Some(host) = host_saturated(inner) {
            let now = Instant::now();
            if inner
                .last_hold_recorded
                .is_none_or(|t| now.duration_since(t) >= HOLD_RECORD_EVERY)
            {
                inner.last_hold_recorded = Some(now);
                let decision = Decision::ScaleOutHeld {
                    waiting,
                    instances: host.instances,
                    wait_ms_per_s: host.waiting * 1000.0,
                    run_ms_per_s: host.running * 1000.0,
                };
                self.decide(inner, decision);
            }
            return;
        }
        let reason = LaunchReason::Queued {
            waiting,
            starting_capacity,
        };
        self.start_instances(inner, starting, reason);
    }

    /// Launch `wanted` instances, stopping at the first the host budget refuses.
    fn start_instances(self: &Arc<Self>, inner: &mut Inner, wanted: usize, reason: LaunchReason) {
        let limit = inner.learned_limit.max(1);
        for started in 0..wanted {
            if let Err(refusal) = self.launch(inner) {
                let decision = Decision::BudgetRefused {
                    reason,
                    started,
                    wanted,
                    refusal,
                };
                self.decide(inner, decision);
                return;
            }
        }
        let decision = Decision::ScaleOut {
            reason,
            starting: wanted,
            limit,
        };
        self.decide(inner, decision);
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
        let (stable, panic) = demand_means(inner, now);
        let mean_limit = ready
            .iter()
            .map(|&i| inner.slots[i].limit as f64)
            .sum::<f64>()
            / ready.len() as f64;
        let mean = stable.max(panic);
        let p99 = percentile(&inner.demand, SCALE_IN_PERCENTILE);
        let utilization = scale_in_utilization(mean, p99);
        let capacity_after = (ready.len() - 1) as f64 * mean_limit * utilization;
        if mean > capacity_after {
            return;
        }
        let Some(&victim) = ready.iter().min_by_key(|&&i| inner.slots[i].in_flight) else {
            return;
        };
        let slot = &mut inner.slots[victim];
        slot.drain();
        let decision = Decision::ScaleIn {
            instance: slot.id.clone(),
            demand_stable: stable,
            demand_panic: panic,
            demand_p99: p99,
            utilization,
            remaining: ready.len() - 1,
            mean_limit,
        };
        inner.last_scale_in = now;
        self.decide(inner, decision);
    }

    /// Periodic work: stop idle instances, keep `min_instances` warm, finish a drain.
    /// Returns false once the pool is finished.
    pub(super) fn housekeep(self: &Arc<Self>) -> bool {
        let mut inner = self.lock();
        let now = Instant::now();
        inner.queue.retain(|w| !w.is_closed());
        if inner.retired {
            if inner.queue.is_empty() {
                for slot in inner.slots.iter_mut() {
                    if slot.state == InstanceState::Ready && slot.in_flight == 0 {
                        slot.stop();
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
        let mut decisions = Vec::new();
        // An idle pool keeps its instances as long as its idle gaps say (never longer than
        // `idle_timeout`); a busy one stops idle extras after `idle_timeout`.
        let learned = inner
            .idle_from
            .is_some()
            .then(|| inner.gaps.keep_alive(self.config.idle_timeout))
            .filter(|k| k.keep < self.config.idle_timeout);
        let keep = learned.map_or(self.config.idle_timeout, |k| k.keep);
        let gaps = inner.gaps.len();
        for slot in inner.slots.iter_mut() {
            if live <= min {
                break;
            }
            if slot.state == InstanceState::Ready
                && slot.in_flight == 0
                && now.duration_since(slot.idle_since) >= keep
            {
                slot.stop();
                live -= 1;
                decisions.push(match learned {
                    Some(k) => Decision::KeepAliveStop {
                        instance: slot.id.clone(),
                        keep: k.keep,
                        p5: k.p5.unwrap_or_default(),
                        p99: k.p99.unwrap_or_default(),
                        gaps,
                        idle_timeout: self.config.idle_timeout,
                    },
                    None => Decision::IdleStop {
                        instance: slot.id.clone(),
                        idle_timeout: self.config.idle_timeout,
                        min_instances: self.config.min_instances,
                    },
                });
            }
        }
        // One instance this pool already stopped will give its share back when it exits.
        let releasing = inner
            .slots
            .iter()
            .any(|s| s.state == InstanceState::Stopping);
        if decisions.is_empty()
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
                slot.stop();
                decisions.push(Decision::BudgetReclaim {
                    instance: slot.id.clone(),
                });
            }
        }
        for decision in decisions {
            self.decide(&mut inner, decision);
        }
        let in_backoff = inner.backoff_until.is_some_and(|until| now < until);
        if live < min && !in_backoff {
            let reason = LaunchReason::MinInstances {
                min_instances: self.config.min_instances,
            };
            self.start_instances(&mut inner, min - live, reason);
        }
        // Work may be waiting because the host budget was spent when it arrived; another
        // function's instances may have stopped since.
        if !inner.queue.is_empty() && !in_backoff {
            self.scale_up(&mut inner);
        }
        true
    }

    /// Instances the demand calls for: the larger of the two windows' mean demand over
    /// the limit new instances get.
    pub(super) fn desired(&self, inner: &Inner, now: Instant) -> usize {
        let (stable, panic) = demand_means(inner, now);
        let desired = (stable.max(panic) / inner.learned_limit.max(1) as f64).ceil() as usize;
        desired.clamp(
            self.config.min_instances as usize,
            self.config.max_instances as usize,
        )
    }
}

/// What the ready instances' last samples say about the host's CPU, when it is
/// saturated by work that is not theirs to fix.
pub(super) struct HostSaturated {
    /// Ready instances measured.
    pub(super) instances: usize,
    /// Their mean fraction of an interval spent waiting for a core, and running.
    pub(super) waiting: f64,
    pub(super) running: f64,
}

/// `Some` when the ready instances (those measured: under `auto`, once sampled) waited
/// for a core, on average, at least [`HOST_BUSY_WAITING`] of their last interval and at
/// least as long as they ran: the host has no core for another instance.
pub(super) fn host_saturated(inner: &Inner) -> Option<HostSaturated> {
    let (instances, waiting, running) = inner
        .slots
        .iter()
        .filter(|s| s.state == InstanceState::Ready && !s.refused)
        .filter_map(|s| s.cpu_waiting.zip(s.cpu_busy))
        .fold((0usize, 0.0, 0.0), |(n, w, r), (wait, busy)| {
            (n + 1, w + wait, r + busy)
        });
    if instances == 0 {
        return None;
    }
    let (waiting, running) = (waiting / instances as f64, running / instances as f64);
    (waiting >= HOST_BUSY_WAITING && waiting >= running).then_some(HostSaturated {
        instances,
        waiting,
        running,
    })
}

/// Mean demand over the stable and the panic window.
pub(super) fn demand_means(inner: &Inner, now: Instant) -> (f64, f64) {
    (
        window_mean(&inner.demand, now, STABLE_WINDOW),
        window_mean(&inner.demand, now, PANIC_WINDOW),
    )
}

/// How full scale-in may leave the remaining instances, on average, for a demand of
/// mean `mean` whose high percentile is `high`: the room the peak needs above the mean,
/// within [`MIN_SCALE_IN_UTILIZATION`] and [`MAX_SCALE_IN_UTILIZATION`]. No demand at all
/// fits anywhere (the ceiling).
fn scale_in_utilization(mean: f64, high: f64) -> f64 {
    let ratio = if high > 0.0 { mean / high } else { 1.0 };
    if !ratio.is_finite() {
        return MIN_SCALE_IN_UTILIZATION;
    }
    ratio.clamp(MIN_SCALE_IN_UTILIZATION, MAX_SCALE_IN_UTILIZATION)
}

/// The `q` quantile (nearest rank) of the demand samples kept (the stable window).
fn percentile(demand: &VecDeque<(Instant, f64)>, q: f64) -> f64 {
    let mut values: Vec<f64> = demand.iter().map(|(_, d)| *d).collect();
    if values.is_empty() {
        return 0.0;
    }
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    let (_, nth, _) = values.select_nth_unstable_by(rank - 1, f64::total_cmp);
    *nth
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_demand_may_fill_the_remaining_instances_nearly_to_their_limits() {
        assert_eq!(scale_in_utilization(7.0, 7.0), MAX_SCALE_IN_UTILIZATION);
        assert_eq!(scale_in_utilization(0.0, 0.0), MAX_SCALE_IN_UTILIZATION);
    }

    #[test]
    fn a_bursty_demand_keeps_room_for_its_peak_within_the_floor() {
        assert!((scale_in_utilization(6.0, 8.0) - 0.75).abs() < 1e-9);
        assert_eq!(scale_in_utilization(7.0, 14.0), 0.5);
        assert_eq!(
            scale_in_utilization(1.0, 40.0),
            MIN_SCALE_IN_UTILIZATION,
            "a rare spike does not hold idle instances beyond twice the mean"
        );
        assert_eq!(
            scale_in_utilization(f64::NAN, 3.0),
            MIN_SCALE_IN_UTILIZATION
        );
    }

    #[test]
    fn the_percentile_is_the_nearest_rank() {
        let t = Instant::now();
        let mut demand: VecDeque<(Instant, f64)> = (1..=200).map(|d| (t, f64::from(d))).collect();
        assert_eq!(percentile(&demand, 0.99), 198.0);
        assert_eq!(percentile(&demand, 1.0), 200.0);
        demand.truncate(1);
        assert_eq!(percentile(&demand, 0.99), 1.0);
        assert_eq!(percentile(&VecDeque::new(), 0.99), 0.0);
    }
}
