//! Instance lifecycle: launching one instance, its start succeeding or failing (with
//! exponential backoff), its exit, stopping one stuck past a deadline, and the pool's own
//! end (retirement, shutdown).
//!
//! This module turns slots from starting to ready to gone. It does not decide how many
//! instances there should be (`scaling` calls [`Pool::launch`]) and does not touch the
//! in-flight accounting beyond handing a new instance's slots to waiters.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Inner, InstanceState, Pool, Slot, Window};
use crate::budget::BudgetRefusal;
use crate::controller::{Controller, ControllerConfig};
use crate::decision::Decision;
use crate::{DispatchError, InstanceHandle, LaunchError, LaunchRequest};

/// First pause after a failed start; doubles per consecutive failure.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// A function that never starts is retried at most this rarely.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long past a call's deadline its instance may stay busy with it before it is
/// considered stuck (e.g. a blocked event loop) and stopped.
pub const STUCK_GRACE: Duration = Duration::from_secs(2);

impl Pool {
    /// Start one instance, if the host budget has room for it. The slot counts as
    /// starting capacity at once; the launch itself runs on its own task.
    pub(super) fn launch(self: &Arc<Self>, inner: &mut Inner) -> Result<(), BudgetRefusal> {
        let ticket = self.budget.try_take(self.config.memory_limit_kib)?;
        let seq = self.next_instance.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-v{}-{}", self.function, self.version, seq);
        let now = Instant::now();
        let limit = inner.learned_limit.max(1);
        // What the runtime is told it may receive, and so the most it is ever sent.
        let told = if self.config.sized_at_start {
            limit.min(self.config.max_concurrency).max(1)
        } else {
            self.config.max_concurrency
        };
        let controller = self.config.auto.then(|| {
            let mut config = ControllerConfig::new(told, self.config.memory_limit_kib);
            config.pool_max_limit = self.config.max_concurrency;
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
            limit: limit.min(told),
            started: now,
            idle_since: now,
            invocations: 0,
            controller,
            window: Window::default(),
            cpu_busy: None,
            cpu_waiting: None,
            held_since: None,
            refused: false,
            _ticket: ticket,
            meter: Default::default(),
            init: None,
        });
        let request = LaunchRequest {
            function: self.function.clone(),
            version: self.version,
            instance_id: id.clone(),
            max_concurrency: told,
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
        launched: Result<Arc<dyn InstanceHandle>, LaunchError>,
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
                slot.init = Some(slot.started.elapsed());
                slot.idle_since = Instant::now();
                tracing::info!(
                    function = %self.function,
                    version = self.version,
                    instance = id,
                    pid = handle.pid(),
                    start_ms = slot.started.elapsed().as_millis() as u64,
                    "instance ready"
                );
                self.feed_waiters(&mut inner, index);
                if inner.probing {
                    self.start_probe(id);
                }
                if inner.retired && inner.queue.is_empty() && inner.slots[index].in_flight == 0 {
                    inner.slots[index].stop();
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
                let failures = inner.failures;
                self.decide(
                    &mut inner,
                    Decision::LaunchFailed {
                        failures,
                        retry_after: pause,
                        error: error.clone(),
                    },
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
        tracing::debug!(function = %self.function, version = self.version, instance = id, reason, "instance gone");
        if slot.state != InstanceState::Stopping {
            let decision = Decision::InstanceExited {
                instance: id.to_owned(),
                reason: reason.to_owned(),
            };
            self.decide(&mut inner, decision);
        }
        if !inner.queue.is_empty() {
            self.scale_up(&mut inner);
        }
    }

    /// An instance kept running a call past its deadline and grace: stop it. Its other
    /// in-flight calls fail with the exit; the pool starts a replacement if work waits.
    pub(super) fn stop_stuck(&self, instance: &str) {
        let mut inner = self.lock();
        if let Some(slot) = inner.slots.iter_mut().find(|s| s.id == instance) {
            slot.stop();
            let decision = Decision::StuckStopped {
                instance: instance.to_owned(),
                grace: STUCK_GRACE,
            };
            self.decide(&mut inner, decision);
        }
    }

    /// Stop taking new work; finish what is queued and in flight, then stop.
    pub(crate) fn retire(self: &Arc<Self>) {
        let mut inner = self.lock();
        inner.retired = true;
        if inner.queue.is_empty() {
            for slot in inner.slots.iter_mut() {
                if slot.state == InstanceState::Ready {
                    slot.drain();
                }
            }
        }
        self.decide(&mut inner, Decision::Retired);
    }

    /// Stop everything now and fail whatever waits (daemon shutdown).
    pub(crate) fn stop_all(&self) {
        let mut inner = self.lock();
        inner.retired = true;
        for waiter in inner.queue.drain(..) {
            let _ = waiter.send(Err(DispatchError::ShuttingDown));
        }
        for slot in inner.slots.iter_mut() {
            slot.stop();
        }
    }
}
