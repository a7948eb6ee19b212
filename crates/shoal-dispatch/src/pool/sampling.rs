//! Sampling: once a second, measure every ready instance (CPU time and RSS through
//! [`InstanceHandle::resources`](crate::InstanceHandle::resources)), recycle one whose
//! memory crept up, and under `concurrency = "auto"` feed its window to its
//! [`Controller`] and apply the limit it returns; then refresh the pool's learned limit.
//!
//! This module owns the per-instance limits and the measurement windows' turnover. The
//! resource readings happen outside the pool lock. It must not start instances, and stops
//! one only by draining it for its RSS.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Inner, InstanceState, Pool, Window};
use crate::controller::{Controller, LimitAction, Sample};
use crate::decision::Decision;
use crate::{InstanceHandle, Resources};

/// How often each measured instance is sampled and its controller consulted.
/// Mean in-flight at this fraction of the limit or more: the limit binds (the
/// controller's own test).
const HELD_FRACTION: f64 = 0.8;
const SAMPLE_PERIOD: Duration = Duration::from_millis(1000);
/// An instance whose RSS reaches this fraction of its memory limit (a leak creeping up
/// over many calls) is recycled: it drains, stops, and demand starts a fresh one before
/// the memory limit kills it mid-call.
pub const RECYCLE_RSS_FRACTION: f64 = 0.9;
/// Only an instance that served this many calls is recycled for its RSS: growth over
/// many calls is a leak worth a fresh start, a function whose footprint is simply that
/// large would otherwise be restarted every sampling interval.
const RECYCLE_MIN_INVOCATIONS: u64 = 10;

impl Pool {
    /// Measure every ready instance: recycle one whose RSS crept past
    /// [`RECYCLE_RSS_FRACTION`] of the memory limit, and (when auto-tuned) let its
    /// controller set its limit. /proc is read outside the pool lock.
    pub(super) fn sample_instances(self: &Arc<Self>) {
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
        let auto = self.config.auto;
        let readings: Vec<(String, Option<Resources>, Option<Duration>, bool)> = due
            .into_iter()
            .map(|(id, handle)| {
                let wait = if auto { handle.run_wait() } else { None };
                (id, handle.resources(), wait, handle.frozen())
            })
            .collect();
        let mut inner = self.lock();
        let now = Instant::now();
        let queued = inner.queue.len() as u32;
        let probing = inner.probing;
        for (id, reading, wait, frozen) in readings {
            let Some(index) = inner.slots.iter().position(|s| s.id == id) else {
                continue;
            };
            if frozen {
                self.stop_frozen(&mut inner, index);
                continue;
            }
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
                wait_at_start: wait,
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
            // A thread that exited took its wait with it: a step back reads as none.
            let run_wait = wait
                .zip(window.wait_at_start)
                .map_or(Duration::ZERO, |(now, then)| now.saturating_sub(then));
            slot.cpu_busy = Some(cpu_time.as_secs_f64() / interval.as_secs_f64());
            slot.cpu_waiting = wait
                .is_some()
                .then(|| (run_wait.as_secs_f64() / interval.as_secs_f64()).clamp(0.0, 1.0));
            let sample = Sample {
                interval,
                cpu_time,
                completed: window.completed,
                latency_sum: window.latency_sum,
                min_latency: window.min_latency,
                mean_in_flight: window.in_flight_area / interval.as_secs_f64(),
                queued,
                rss_kib: reading.rss_kib,
                run_wait,
            };
            let Some(controller) = slot.controller.as_mut() else {
                continue;
            };
            let mut decision = controller.observe(&sample);
            if probing {
                // The cold-burst probe sets the limit until it ends (the CPU its admitted
                // calls spend at their start is a transient the controller would cut
                // for); the controller keeps learning meanwhile.
                controller.assume(slot.limit);
                decision.limit = slot.limit;
                decision.action = LimitAction::Hold;
            }
            let grew = decision.limit > slot.limit;
            if !grew && sample.mean_in_flight >= HELD_FRACTION * f64::from(slot.limit) {
                slot.held_since.get_or_insert(now);
            } else {
                slot.held_since = None;
            }
            slot.limit = decision.limit;
            if let LimitAction::Changed { from } = decision.action {
                let decision = Decision::LimitChanged {
                    instance: id,
                    from,
                    to: decision.limit,
                    reason: decision.reason,
                };
                self.decide(&mut inner, decision);
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

    /// Instance `index`'s process is stopped: it gets no new calls (packing would keep
    /// sending it work until its limit filled) and is stopped for good; calls waiting go
    /// to the others or to the instance demand starts next.
    fn stop_frozen(self: &Arc<Self>, inner: &mut Inner, index: usize) {
        let slot = &mut inner.slots[index];
        if slot.refused {
            return;
        }
        slot.refused = true;
        if let Some(handle) = &slot.handle {
            handle.stop();
        }
        let decision = Decision::Frozen {
            instance: slot.id.clone(),
            in_flight: slot.in_flight,
        };
        self.decide(inner, decision);
        self.scale_up(inner);
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
        slot.drain();
        let decision = Decision::RssRecycle {
            instance: slot.id.clone(),
            rss_kib,
            memory_limit_kib: limit_kib,
            threshold: RECYCLE_RSS_FRACTION,
        };
        self.decide(inner, decision);
        true
    }
}
