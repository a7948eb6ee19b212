//! A queue trigger: polls one queue for one function and invokes it with Lambda's SQS
//! event, many batches at once, paced to what the function's instances can take ([`pace`]):
//! with `concurrency = "auto"` it fills their free slots and no more, so batches never
//! wait in the dispatcher's queue (where they would start instances for work that waits
//! just as well in the SQS queue); the instances' controllers grow their limits while they
//! have CPU to spare — many batches per instance when the handler waits on I/O — and only
//! CPU-saturated instances with a backlog behind them make the poller ask for more
//! instances. Never more than the backlog. A successful batch is deleted; with
//! `report_batch_item_failures`, only its successful messages are; a failed batch is left
//! to its visibility timeout, after which it is received again (and, past the queue's
//! `max_receive_count`, moved to its dead-letter queue by the store).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_dispatch::Outcome;
use shoal_manifest::QueueTrigger;
use shoal_queue::{Holder, Received, Settle};
use tokio::sync::{watch, Notify};

use super::{shapes, Ctx, TriggerState};
use crate::Error;

/// How long the poller waits for a slot to free before it looks at the function again.
const ROOM_RECHECK: Duration = Duration::from_millis(250);
const IDLE_WAIT_MS: u64 = 1_000;
/// Most messages one receive asks the store for: Lambda's SQS batches above 10 are
/// gathered over several receives.
const RECEIVE_MAX: usize = 1_000;
/// Most batches taken in one receive when there is no batching window.
const MAX_BATCHES_PER_RECEIVE: usize = 50;

pub(crate) async fn run(
    ctx: Arc<Ctx>,
    function: String,
    trigger: QueueTrigger,
    state: Arc<TriggerState>,
    mut stop: watch::Receiver<bool>,
) {
    let done = Arc::new(Notify::new());
    let trigger = Arc::new(trigger);
    let function: Arc<str> = function.into();
    // Batches received and not yet handed over: the room is looked at again after the
    // receive (its commit takes a while, and a limit may be cut meanwhile), right before
    // each batch goes, so none waits in the dispatcher's queue and starts an instance.
    let mut held: VecDeque<Vec<Received>> = VecDeque::new();
    loop {
        if *stop.borrow() {
            release(&ctx, &trigger, held).await;
            return;
        }
        let room = ctx.invoker.room(&function);
        let backlog = || {
            !held.is_empty()
                || ctx
                    .queues
                    .queue(&trigger.queue)
                    .is_ok_and(|q| q.stats.visible > 0)
        };
        let invoking = state.invoking.load(Ordering::Relaxed);
        let dispatching = state.dispatching.load(Ordering::Relaxed);
        let (allowed, why) = pace(room, dispatching, backlog);
        let allowed = match trigger.maximum_concurrency {
            Some(max) if invoking + allowed >= max => {
                state.set_cap(max, format!("maximum_concurrency {max}"));
                max.saturating_sub(invoking)
            }
            _ => {
                state.set_cap(invoking + allowed, why);
                allowed
            }
        };
        if allowed == 0 {
            tokio::select! {
                _ = done.notified() => {}
                _ = stop.changed() => {
                    release(&ctx, &trigger, held).await;
                    return;
                }
                _ = tokio::time::sleep(ROOM_RECHECK) => {}
            }
            continue;
        }
        if held.is_empty() {
            let batches = if trigger.batching_window_ms == 0 {
                // Under a backlog, one receive takes several batches' worth (one commit
                // instead of many); they are split and run side by side.
                let free = (allowed as usize).min(MAX_BATCHES_PER_RECEIVE);
                match take(&ctx, &trigger, &state, free, &mut stop).await {
                    Some(batches) => batches,
                    None => return,
                }
            } else {
                match gather(&ctx, &trigger, &state, &mut stop).await {
                    Some(batch) if batch.is_empty() => Vec::new(),
                    Some(batch) => vec![batch],
                    None => return,
                }
            };
            held.extend(batches);
            continue;
        }
        for batch in held.drain(..held.len().min(allowed as usize)) {
            state.in_flight.fetch_add(1, Ordering::Relaxed);
            state.invoking.fetch_add(1, Ordering::Relaxed);
            state.dispatching.fetch_add(1, Ordering::Relaxed);
            let (ctx, function, trigger, state, done) = (
                ctx.clone(),
                function.clone(),
                trigger.clone(),
                state.clone(),
                done.clone(),
            );
            tokio::spawn(async move {
                deliver(&ctx, &function, &trigger, &state, &done, batch).await;
                state.in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }
}

/// Stopping with batches received but never handed over: they become visible again at
/// once rather than after their visibility timeout.
async fn release(ctx: &Ctx, trigger: &QueueTrigger, held: VecDeque<Vec<Received>>) {
    let entries: Vec<(String, u64)> = held.into_iter().flatten().map(|m| (m.receipt, 0)).collect();
    if entries.is_empty() {
        return;
    }
    if let Err(e) = ctx.queues.change_visibility(&trigger.queue, entries).await {
        tracing::warn!(queue = %trigger.queue, error = %e, "releasing batches at stop");
    }
}

/// How many more batches the poller may hand to the function now, and why.
///
/// With `concurrency = "auto"` it fills the slots the instances have and no more, so
/// batches never wait in the dispatcher's queue — where they would start instances for
/// work that waits just as well in the SQS queue. The instances' own controllers grow
/// their limits while they have CPU to spare (many batches per instance when the handler
/// waits on I/O); only when every instance is CPU-saturated and the backlog remains does
/// the poller queue one step more (an instance's worth, or half the instances' when there
/// are several), which starts instances — and only once the previous ones are up.
/// With a fixed limit (`concurrency = 1`, Lambda's model) more instances are the only
/// way to more throughput: it asks for every slot the function could reach, as before.
///
/// `dispatching`: batches spawned that the dispatcher has not counted yet.
/// `backlog`: whether messages wait (asked only when it matters).
fn pace(
    room: Option<shoal_dispatch::Room>,
    dispatching: u32,
    backlog: impl FnOnce() -> bool,
) -> (u32, String) {
    let Some(room) = room else {
        return (0, "function not deployed".to_owned());
    };
    let taken = room.busy.saturating_add(dispatching);
    if !room.auto {
        let reachable = room.per_instance.saturating_mul(room.max_instances);
        let cap = reachable.min(room.slots.saturating_add(room.max_queue / 2));
        return (
            cap.saturating_sub(taken),
            format!(
                "fixed limit {}: every slot of up to {} instances",
                room.per_instance, room.max_instances
            ),
        );
    }
    if room.instances == 0 {
        return (
            room.per_instance.saturating_sub(taken),
            format!("no instance: starting one (limit {})", room.per_instance),
        );
    }
    let free = room.slots.saturating_sub(taken);
    if free > 0 {
        return (
            free,
            format!(
                "free slots of {} instance(s), {} slots",
                room.instances, room.slots
            ),
        );
    }
    let why_not = if room.starting > 0 {
        "full; an instance is starting"
    } else if room.instances >= room.max_instances {
        "full at max_instances"
    } else if !room.saturated {
        "full, below their CPU target: their limits grow"
    } else if !backlog() {
        "full, nothing waiting"
    } else {
        let step = (room.instances / 2)
            .max(1)
            .min(room.max_instances - room.instances);
        let extra = room.per_instance.saturating_mul(step);
        return (
            room.slots.saturating_add(extra).saturating_sub(taken),
            format!("instances CPU-saturated with a backlog: asking for {step} more"),
        );
    };
    (0, format!("{} instance(s) {why_not}", room.instances))
}

/// Without a batching window: whatever is visible now, up to `batches` full batches, split
/// into batches; waits (briefly) only when nothing is there. `None`: stop.
async fn take(
    ctx: &Ctx,
    trigger: &QueueTrigger,
    state: &TriggerState,
    batches: usize,
    stop: &mut watch::Receiver<bool>,
) -> Option<Vec<Vec<Received>>> {
    let size = trigger.batch_size as usize;
    let ask = (size * batches.max(1)).min(RECEIVE_MAX);
    match ctx
        .queues
        .receive(&trigger.queue, ask, None, Holder::Internal)
        .await
    {
        Ok(received) => {
            state.count("dead_lettered", received.dead_lettered);
            state.error(None);
            if !received.messages.is_empty() {
                let mut messages = received.messages;
                let mut batches = Vec::with_capacity(messages.len().div_ceil(size));
                while !messages.is_empty() {
                    let rest = messages.split_off(messages.len().min(size));
                    batches.push(std::mem::replace(&mut messages, rest));
                }
                return Some(batches);
            }
            tokio::select! {
                _ = ctx.queues.wait(&trigger.queue, IDLE_WAIT_MS) => Some(Vec::new()),
                _ = stop.changed() => None,
            }
        }
        Err(e) => {
            state.error(Some(e.to_string()));
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => Some(Vec::new()),
                _ = stop.changed() => None,
            }
        }
    }
}

/// Up to `batch_size` messages: at once when the window is 0, else gathered until the
/// batch is full or the window (started by the first message) closes. `None`: stop.
async fn gather(
    ctx: &Ctx,
    trigger: &QueueTrigger,
    state: &TriggerState,
    stop: &mut watch::Receiver<bool>,
) -> Option<Vec<Received>> {
    let want = trigger.batch_size as usize;
    let mut batch: Vec<Received> = Vec::new();
    let mut window_ends: Option<Instant> = None;
    loop {
        let ask = (want - batch.len()).min(RECEIVE_MAX);
        match ctx
            .queues
            .receive(&trigger.queue, ask, None, Holder::Internal)
            .await
        {
            Ok(received) => {
                state.count("dead_lettered", received.dead_lettered);
                if !received.messages.is_empty() && window_ends.is_none() {
                    window_ends =
                        Some(Instant::now() + Duration::from_millis(trigger.batching_window_ms));
                }
                batch.extend(received.messages);
                state.error(None);
            }
            Err(e) => {
                state.error(Some(e.to_string()));
                if !batch.is_empty() {
                    return Some(batch);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => return Some(batch),
                    _ = stop.changed() => return None,
                }
            }
        }
        if batch.len() >= want {
            return Some(batch);
        }
        let wait_ms = match window_ends {
            None => IDLE_WAIT_MS,
            Some(end) => {
                let left = end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Some(batch);
                }
                left.as_millis() as u64
            }
        };
        tokio::select! {
            _ = ctx.queues.wait(&trigger.queue, wait_ms) => {}
            _ = stop.changed() => {
                // Stopping: what was gathered is still delivered rather than held.
                return if batch.is_empty() { None } else { Some(batch) };
            }
        }
        if window_ends.is_none() {
            // Nothing yet: let the caller look at capacity and stop again.
            return Some(batch);
        }
    }
}

/// One batch through the function, then settled.
async fn deliver(
    ctx: &Ctx,
    function: &str,
    trigger: &QueueTrigger,
    state: &TriggerState,
    done: &Notify,
    batch: Vec<Received>,
) {
    let request_id = crate::new_request_id();
    let event = shapes::sqs_event(&trigger.queue, &batch);
    state.batches.fetch_add(1, Ordering::Relaxed);
    state.count("delivered", batch.len() as u64);
    let mut call = std::pin::pin!(ctx.invoker.invoke(
        function.to_owned(),
        request_id.clone(),
        Bytes::from(event),
        "sqs",
    ));
    // The first poll takes a slot or joins the dispatcher's queue: from then on the
    // dispatcher counts this batch, and the poller need not.
    let mut counted = false;
    let (_, result) = std::future::poll_fn(|cx| {
        let polled = call.as_mut().poll(cx);
        if !counted {
            counted = true;
            state.dispatching.fetch_sub(1, Ordering::Relaxed);
        }
        polled
    })
    .await;
    // The slot is free: the poller may fill it while this batch settles.
    state.invoking.fetch_sub(1, Ordering::Relaxed);
    done.notify_one();
    let failed: Vec<String> = match &result {
        Ok(Outcome::Success(body)) if trigger.report_batch_item_failures => {
            match shapes::batch_item_failures(body, &batch) {
                Ok(ids) => ids,
                Err(why) => {
                    ctx.invoker.log(
                        function,
                        &request_id,
                        format!("the whole batch of {} failed: {why}", batch.len()),
                    );
                    batch.iter().map(|m| m.id.clone()).collect()
                }
            }
        }
        Ok(Outcome::Success(_)) => Vec::new(),
        Ok(Outcome::FunctionError { .. }) | Err(_) => batch.iter().map(|m| m.id.clone()).collect(),
    };
    if let Err(e) = &result {
        state.error(Some(crate::chain(e)));
    }
    if let Err(Error::Overloaded { .. }) = &result {
        // Never ran: make the batch visible again soon rather than after the full timeout
        // (this receive still counts toward the redrive policy, as in SQS).
        let entries = batch.iter().map(|m| (m.receipt.clone(), 1_000)).collect();
        if let Err(e) = ctx.queues.change_visibility(&trigger.queue, entries).await {
            tracing::warn!(queue = %trigger.queue, error = %e, "releasing a throttled batch");
        }
        state.count("throttled", batch.len() as u64);
        return;
    }
    state.count("failed", failed.len() as u64);
    let settle: Vec<(String, Settle)> = batch
        .iter()
        .filter(|m| !failed.contains(&m.id))
        .map(|m| (m.receipt.clone(), Settle::Delete))
        .collect();
    if settle.is_empty() {
        return;
    }
    let n = settle.len() as u64;
    match ctx.queues.settle(&trigger.queue, settle).await {
        Ok(_) => state.count("deleted", n),
        Err(e) => {
            // Left in flight: redelivered after the visibility timeout (at least once).
            state.error(Some(e.to_string()));
            tracing::warn!(queue = %trigger.queue, error = %e, "deleting a delivered batch");
        }
    }
}

#[cfg(test)]
mod tests {
    use shoal_dispatch::Room;

    use super::pace;

    fn auto(instances: u32, slots: u32, busy: u32) -> Room {
        Room {
            slots,
            busy,
            instances,
            starting: 0,
            max_instances: 100,
            per_instance: 16,
            auto: true,
            saturated: false,
            max_queue: 1000,
        }
    }

    #[test]
    fn an_auto_function_gets_its_free_slots_and_no_queue() {
        assert_eq!(pace(Some(auto(1, 16, 4)), 2, || true).0, 10);
        // Full, its instance below its CPU target: its limit grows, no instance starts.
        assert_eq!(pace(Some(auto(1, 16, 16)), 0, || true).0, 0);
        assert_eq!(pace(Some(auto(2, 32, 30)), 3, || true).0, 0);
    }

    #[test]
    fn saturated_instances_with_a_backlog_ask_for_one_step_more() {
        let saturated = Room {
            saturated: true,
            ..auto(1, 16, 16)
        };
        assert_eq!(pace(Some(saturated), 0, || true).0, 16);
        // Nothing waiting, an instance already starting, or at the cap: no step.
        assert_eq!(pace(Some(saturated), 0, || false).0, 0);
        let starting = Room {
            starting: 1,
            instances: 2,
            slots: 32,
            busy: 32,
            ..saturated
        };
        assert_eq!(pace(Some(starting), 0, || true).0, 0);
        let at_max = Room {
            max_instances: 1,
            ..saturated
        };
        assert_eq!(pace(Some(at_max), 0, || true).0, 0);
        // Several instances: half as many again, within max_instances.
        let four = Room {
            instances: 4,
            slots: 64,
            busy: 64,
            max_instances: 5,
            ..saturated
        };
        assert_eq!(pace(Some(four), 0, || true).0, 16);
    }

    #[test]
    fn no_instance_asks_for_one_and_a_fixed_limit_asks_for_every_slot() {
        assert_eq!(pace(Some(auto(0, 0, 0)), 0, || true).0, 16);
        assert_eq!(pace(Some(auto(0, 0, 0)), 16, || true).0, 0);
        let lambda = Room {
            per_instance: 1,
            max_instances: 35,
            auto: false,
            saturated: true,
            ..auto(2, 2, 2)
        };
        assert_eq!(pace(Some(lambda), 3, || true).0, 30);
        assert_eq!(pace(None, 0, || true).0, 0);
    }
}
