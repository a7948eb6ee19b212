//! Slots and grants: how a call gets a place on an instance and gives it back.
//!
//! A call takes a free slot at once on the *fullest* ready instance that has room (so the
//! fewest instances stay busy, idle ones drain and connection pools stay few), or waits
//! in the queue; a finishing call hands its slot to the oldest waiter. A call is only
//! queued if it can plausibly get a slot before its deadline when the pool cannot grow:
//! the rest are refused at once (429), not left to time out at the head of the queue. This module owns
//! the in-flight and invocation counts and the per-call window figures (latency,
//! in-flight area) the sampler reads. It must not start or stop instances for capacity
//! (that is `scaling`), except to stop one that finished draining.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::lifecycle::STUCK_GRACE;
use super::scaling::host_saturated;
use super::{Inner, InstanceState, Pool, Slot};
use crate::meter::Meter;
use crate::{
    BoxFuture, CallReport, DispatchError, ErrorType, InstanceFailure, InstanceHandle, Invocation,
    LaunchError, OnStart, Outcome, Result,
};

/// How many times one call may be moved off instances that refused it before running it.
const MAX_REROUTES: u32 = 2;
/// Weight of the newest call in the smoothed service time.
const SERVICE_ALPHA: f64 = 0.1;

/// The right to run one invocation on one instance. Dropping it frees the slot (or hands
/// it to the next waiter).
pub(crate) struct Grant {
    pool: Option<Arc<Pool>>,
    instance: String,
    handle: Arc<dyn InstanceHandle>,
    /// When the slot was handed over: the call's latency is measured from here.
    started: Instant,
    /// The instance's meter, shared by the calls it runs.
    meter: Arc<std::sync::Mutex<Meter>>,
    /// How long the instance took to start, on the first call it runs only.
    init: Option<Duration>,
}

impl Drop for Grant {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.release(&self.instance, self.started);
        }
    }
}

impl Pool {
    /// Run one invocation: wait for a slot (bounded by the deadline), then run it there.
    ///
    /// The run happens on the caller's task and keeps the slot until the instance really
    /// finishes the call: a caller that times out or goes away must not free a slot whose
    /// handler is still running (that would push the instance past its limit), so then
    /// the rest moves to a task of its own (see [`Running`]). An instance that has not
    /// answered by the deadline plus [`STUCK_GRACE`] is stopped.
    ///
    /// A call an instance refused without running it (its process just died, and the
    /// pool has not heard yet) goes to another instance, up to [`MAX_REROUTES`] times
    /// within the deadline: it never ran, so running it elsewhere is safe.
    ///
    /// `on_start` is called with the instance's id when the call is handed to it; the
    /// report says where it ran and what it used, when it reached an instance.
    pub(crate) async fn invoke(
        self: &Arc<Self>,
        invocation: Invocation,
        on_start: Option<OnStart>,
    ) -> (Result<Outcome>, Option<CallReport>) {
        let arrived = Instant::now();
        let mut reroutes = 0;
        loop {
            match self
                .invoke_once(invocation.clone(), arrived, on_start.clone())
                .await
            {
                (Err(DispatchError::Instance(InstanceFailure::Unavailable { instance })), _)
                    if reroutes < MAX_REROUTES && Instant::now() < invocation.deadline =>
                {
                    reroutes += 1;
                    self.refused(&instance);
                }
                other => return other,
            }
        }
    }

    /// Give instance `id` no more calls and make sure it stops; its exit watcher then
    /// removes it (and records the exit) as for any other exit.
    fn refused(&self, id: &str) {
        let mut inner = self.lock();
        if let Some(slot) = inner.slots.iter_mut().find(|s| s.id == id) {
            slot.refused = true;
            if let Some(handle) = &slot.handle {
                handle.stop();
            }
        }
    }

    async fn invoke_once(
        self: &Arc<Self>,
        invocation: Invocation,
        arrived: Instant,
        on_start: Option<OnStart>,
    ) -> (Result<Outcome>, Option<CallReport>) {
        let deadline = invocation.deadline;
        let grant = match tokio::time::timeout_at(deadline, self.acquire(deadline)).await {
            Ok(Ok(grant)) => grant,
            Ok(Err(e)) => return (Err(e), None),
            Err(_) => return (Err(DispatchError::Timeout(self.config.timeout)), None),
        };
        // The caller's span (one per invocation, opened by the core) learns where the call
        // runs.
        tracing::Span::current().record("instance", grant.instance.as_str());
        if let Some(on_start) = on_start {
            on_start(&grant.instance);
        }
        let handle = grant.handle.clone();
        let started = Instant::now();
        let mark = {
            let wants = lock_meter(&grant.meter).wants_reading(started);
            let reading = if wants { handle.resources() } else { None };
            lock_meter(&grant.meter).start(started, reading)
        };
        // The call runs on the caller's task (no hand-over to another task and back on
        // every call); if the caller goes away first, `Running`'s drop hands what is left
        // to a task of its own.
        let mut running = Running {
            call: Some(handle.invoke(invocation)),
            mark: Some(mark),
            grant,
            deadline,
        };
        let outcome = match tokio::time::timeout_at(
            deadline,
            running.call.as_mut().expect("set above"),
        )
        .await
        {
            Ok(outcome) => {
                running.call = None;
                outcome.map_err(DispatchError::from)
            }
            Err(_) => Err(DispatchError::Timeout(self.config.timeout)),
        };
        let ended = Instant::now();
        let usage = running.finish_meter(ended);
        let report = CallReport {
            instance: running.grant.instance.clone(),
            queued: started.saturating_duration_since(arrived),
            duration: ended.saturating_duration_since(started),
            init: running.grant.init,
            usage,
            memory_limit_kib: self.config.memory_limit_kib,
        };
        // A call that timed out still holds its slot until the instance answers: `running`
        // keeps watching it (and stops an instance stuck past `STUCK_GRACE`).
        drop(running);
        (outcome, Some(report))
    }

    async fn acquire(self: &Arc<Self>, deadline: Instant) -> Result<Grant> {
        let waiting = {
            let mut inner = self.lock();
            if let Some(since) = inner.idle_from.take() {
                let gap = since.elapsed();
                inner.gaps.record(gap);
            }
            if let Some(grant) = self.try_grant(&mut inner) {
                return Ok(grant);
            }
            let now = Instant::now();
            let nothing_live = !inner.slots.iter().any(Slot::is_live);
            if let (Some(until), true) = (inner.backoff_until, nothing_live) {
                if now < until {
                    let err = inner.last_launch_error.clone().unwrap_or_else(|| {
                        LaunchError::new(ErrorType::Unknown, "instance failed to start")
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
            if let Some(wait) = self.hopeless_wait(&inner, deadline.saturating_duration_since(now))
            {
                return Err(DispatchError::Overloaded {
                    function: self.function.clone(),
                    retry_after: wait.max(Duration::from_secs(1)),
                });
            }
            let (tx, rx) = oneshot::channel();
            inner.queue.push_back(tx);
            self.scale_up(&mut inner);
            rx
        };
        waiting.await.unwrap_or(Err(DispatchError::ShuttingDown))
    }

    /// The wait a new call would have before a slot frees, when that plus its own run is
    /// longer than `left` (the time to its deadline) and the pool cannot add capacity (it
    /// is at `max_instances`, or the host's CPU is saturated and scale-out holds): the
    /// queue ahead of it times the smoothed service time, over the slots of the live
    /// instances. `None` when the call should queue: it can make it, or more instances
    /// may come, or nothing has been measured yet.
    fn hopeless_wait(&self, inner: &Inner, left: Duration) -> Option<Duration> {
        let service = inner.service_secs?;
        let live: Vec<&Slot> = inner.slots.iter().filter(|s| s.is_live()).collect();
        if (live.len() as u32) < self.config.max_instances && host_saturated(inner).is_none() {
            return None;
        }
        let capacity: u32 = live.iter().map(|s| s.limit).sum();
        if capacity == 0 {
            return None;
        }
        let ahead = inner.queue.iter().filter(|w| !w.is_closed()).count() + 1;
        let wait = Duration::from_secs_f64(ahead as f64 * service / f64::from(capacity));
        // It must also run to its end before the deadline.
        (wait + Duration::from_secs_f64(service) > left).then_some(wait)
    }

    /// Take a free slot on the fullest ready instance with room, if any (the oldest among
    /// equals): packing keeps the fewest instances busy, so the others go idle and drain.
    fn try_grant(self: &Arc<Self>, inner: &mut Inner) -> Option<Grant> {
        let slot = inner
            .slots
            .iter_mut()
            .rev()
            .filter(|s| s.state == InstanceState::Ready && !s.refused && s.in_flight < s.limit)
            .max_by_key(|s| s.in_flight)?;
        let now = Instant::now();
        slot.touch(now);
        slot.in_flight += 1;
        slot.invocations += 1;
        Some(Grant {
            pool: Some(self.clone()),
            instance: slot.id.clone(),
            handle: slot.handle.clone().expect("ready slot has a handle"),
            started: now,
            meter: slot.meter.clone(),
            init: slot.init.take(),
        })
    }

    /// Hand free slots of instance `index` to waiters, oldest first.
    pub(super) fn feed_waiters(self: &Arc<Self>, inner: &mut Inner, index: usize) {
        while inner.slots[index].state == InstanceState::Ready
            && !inner.slots[index].refused
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
                meter: slot.meter.clone(),
                init: slot.init.take(),
            };
            if let Err(Ok(mut grant)) = waiter.send(Ok(grant)) {
                // The waiter left between the check and the send: take the slot back
                // without re-entering `release` under the lock.
                grant.pool = None;
                let slot = &mut inner.slots[index];
                slot.in_flight -= 1;
                slot.invocations -= 1;
                slot.init = slot.init.or(grant.init.take());
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
        let secs = latency.as_secs_f64();
        inner.service_secs = Some(
            inner
                .service_secs
                .map_or(secs, |s| s + SERVICE_ALPHA * (secs - s)),
        );
        let slot = &mut inner.slots[index];
        slot.window.completed += 1;
        slot.window.latency_sum += latency;
        slot.window.min_latency = Some(slot.window.min_latency.map_or(latency, |m| m.min(latency)));
        inner.slots[index].in_flight -= 1;
        if inner.slots[index].in_flight == 0 {
            inner.slots[index].idle_since = Instant::now();
        }
        self.feed_waiters(&mut inner, index);
        // The pool went idle (for the learned keep-alive): only worth a look over the
        // other instances when this one just emptied, so a busy pool pays nothing here.
        if inner.slots[index].in_flight == 0
            && inner.queue.is_empty()
            && inner.slots.iter().all(|s| s.in_flight == 0)
        {
            inner.idle_from = Some(now);
        }
        let slot = &inner.slots[index];
        let drained = slot.in_flight == 0
            && (slot.state == InstanceState::Draining
                || (inner.retired && inner.queue.is_empty() && slot.state == InstanceState::Ready));
        if drained {
            inner.slots[index].stop();
        }
    }

    /// Calls running or waiting for a slot.
    pub(crate) fn in_flight(&self) -> u32 {
        let inner = self.lock();
        inner.slots.iter().map(|s| s.in_flight).sum::<u32>() + inner.queue.len() as u32
    }
}

/// A call handed to an instance, on its caller's task. It holds the slot (the grant)
/// until the instance really answers: a caller that timed out or went away must not free
/// a slot whose handler still runs (that would push the instance past its limit). So when
/// it is dropped with the call unfinished, the rest moves to a task of its own: wait for
/// the answer until the deadline, count the call in the instance's meter, and stop an
/// instance that has not answered `STUCK_GRACE` past it.
struct Running {
    grant: Grant,
    call: Option<BoxFuture<std::result::Result<Outcome, InstanceFailure>>>,
    /// The call's start in the instance's meter, until its end is counted.
    mark: Option<crate::meter::Mark>,
    deadline: Instant,
}

impl Running {
    /// Count the call's end in the instance's meter (once).
    fn finish_meter(&mut self, ended: Instant) -> crate::meter::Usage {
        finish_meter(&self.grant, self.mark.take(), ended)
    }
}

fn finish_meter(
    grant: &Grant,
    mark: Option<crate::meter::Mark>,
    ended: Instant,
) -> crate::meter::Usage {
    let Some(mark) = mark else {
        return crate::meter::Usage::default();
    };
    let wants = lock_meter(&grant.meter).wants_reading(ended);
    let reading = if wants {
        grant.handle.resources()
    } else {
        None
    };
    lock_meter(&grant.meter).finish(mark, ended, reading)
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(mut call) = self.call.take() else {
            return; // answered: the grant's own drop frees the slot
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the daemon is going away; the instances go with it
        };
        let mark = self.mark.take();
        let deadline = self.deadline;
        // The grant moves to the watcher; this `Running` keeps an inert copy.
        let grant = Grant {
            pool: self.grant.pool.take(),
            instance: self.grant.instance.clone(),
            handle: self.grant.handle.clone(),
            started: self.grant.started,
            meter: self.grant.meter.clone(),
            init: None,
        };
        let watch = async move {
            let mut timed_out = true;
            if mark.is_some() {
                // The caller left before the deadline: the call may still finish in time.
                timed_out = tokio::time::timeout_at(deadline, &mut call).await.is_err();
                finish_meter(&grant, mark, Instant::now());
            }
            if timed_out && tokio::time::timeout(STUCK_GRACE, call).await.is_err() {
                if let Some(pool) = &grant.pool {
                    pool.stop_stuck(&grant.instance);
                }
            }
            drop(grant);
        };
        runtime.spawn(tracing::Instrument::in_current_span(watch));
    }
}

fn lock_meter(meter: &std::sync::Mutex<Meter>) -> std::sync::MutexGuard<'_, Meter> {
    meter.lock().unwrap_or_else(|e| e.into_inner())
}
