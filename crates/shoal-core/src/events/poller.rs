//! A queue trigger: polls one queue for one function and invokes it with Lambda's SQS
//! event, many batches at once — as many as the function's instances can take (the
//! dispatcher packs them, so an I/O-bound handler runs many batches per instance), never
//! more than the backlog. A successful batch is deleted; with
//! `report_batch_item_failures`, only its successful messages are; a failed batch is left
//! to its visibility timeout, after which it is received again (and, past the queue's
//! `max_receive_count`, moved to its dead-letter queue by the store).

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

const CAPACITY_REFRESH: Duration = Duration::from_millis(250);
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
    let mut cap = 0u32;
    let mut refreshed: Option<Instant> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        if refreshed.is_none_or(|t| t.elapsed() >= CAPACITY_REFRESH) {
            // Calls in flight → batches in flight: each batch is one call.
            let (calls, why) = ctx.invoker.capacity(&function);
            cap = match trigger.maximum_concurrency {
                Some(max) if max < calls => {
                    state.set_cap(max, format!("maximum_concurrency {max}"));
                    max
                }
                _ => {
                    state.set_cap(calls, why);
                    calls
                }
            };
            refreshed = Some(Instant::now());
        }
        let in_flight = state.in_flight.load(Ordering::Relaxed);
        if in_flight >= cap {
            tokio::select! {
                _ = done.notified() => {}
                _ = stop.changed() => return,
                _ = tokio::time::sleep(CAPACITY_REFRESH) => {}
            }
            continue;
        }
        let batches = if trigger.batching_window_ms == 0 {
            // Under a backlog, one receive takes several batches' worth (one commit
            // instead of many); they are split and run side by side.
            let free = ((cap - in_flight) as usize).min(MAX_BATCHES_PER_RECEIVE);
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
        for batch in batches {
            state.in_flight.fetch_add(1, Ordering::Relaxed);
            let (ctx, function, trigger, state, done) = (
                ctx.clone(),
                function.clone(),
                trigger.clone(),
                state.clone(),
                done.clone(),
            );
            tokio::spawn(async move {
                deliver(&ctx, &function, &trigger, &state, batch).await;
                state.in_flight.fetch_sub(1, Ordering::Relaxed);
                done.notify_one();
            });
        }
    }
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
    batch: Vec<Received>,
) {
    let request_id = crate::new_request_id();
    let event = shapes::sqs_event(&trigger.queue, &batch);
    state.batches.fetch_add(1, Ordering::Relaxed);
    state.count("delivered", batch.len() as u64);
    let (_, result) = ctx
        .invoker
        .invoke(
            function.to_owned(),
            request_id.clone(),
            Bytes::from(event),
            "sqs",
        )
        .await;
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
