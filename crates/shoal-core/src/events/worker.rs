//! A function's async worker: takes its `Event` invocations (and schedule fires) from the
//! `async:NAME` queue, runs as many at once as the function can take, and settles each by
//! [`Policy`]: deleted when it succeeds; written back with a delay to retry; or given up —
//! to the `on_failure` queue as Lambda's destination record, or dropped with a log line.
//! An event is only ever removed in the same commit that writes where it went next.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_dispatch::Outcome;
use shoal_manifest::FunctionSpec;
use shoal_queue::{Holder, NewMessage, Received, Settle};
use tokio::sync::{watch, Notify};

use super::policy::{Attempt, Condition, Envelope, Next, Policy, Source};
use super::{async_queue, ensure_async_queue, shapes, Ctx, TriggerState};
use crate::Error;

/// How often the worker asks how much the function can take.
const CAPACITY_REFRESH: Duration = Duration::from_millis(250);
/// Longest a receive waits for new events before looking again.
const IDLE_WAIT_MS: u64 = 1_000;
/// Most events taken from the store in one receive.
const RECEIVE_BATCH: usize = 100;

/// What the worker needs from the function's spec.
pub(crate) struct Config {
    pub(crate) function: String,
    pub(crate) timeout_ms: u64,
    pub(crate) policy: Policy,
    pub(crate) on_failure: Option<String>,
}

impl Config {
    pub(crate) fn new(spec: &FunctionSpec, retry_base_ms: u64) -> Config {
        Config {
            function: spec.name.clone(),
            timeout_ms: spec.timeout_ms,
            policy: Policy::new(&spec.async_invoke, retry_base_ms),
            on_failure: spec.async_invoke.on_failure.clone(),
        }
    }
}

pub(crate) async fn run(
    ctx: Arc<Ctx>,
    config: Config,
    state: Arc<TriggerState>,
    mut stop: watch::Receiver<bool>,
) {
    let config = Arc::new(config);
    let queue = async_queue(&config.function);
    // Until the queue exists nothing can arrive: keep trying (the store may be busy).
    while let Err(e) = ensure_async_queue(&*ctx.queues, &config.function, config.timeout_ms).await {
        state.error(Some(crate::chain(&e)));
        if sleep_or_stop(&mut stop, Duration::from_secs(1)).await {
            return;
        }
    }
    let done = Arc::new(Notify::new());
    let mut cap = 0u32;
    let mut refreshed: Option<Instant> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        if refreshed.is_none_or(|t| t.elapsed() >= CAPACITY_REFRESH) {
            let (c, why) = ctx.invoker.capacity(&config.function);
            cap = c;
            state.set_cap(cap, why);
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
        let room = ((cap - in_flight) as usize).min(RECEIVE_BATCH);
        let received = match ctx
            .queues
            .receive(&queue, room, None, Holder::Internal)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                state.error(Some(e.to_string()));
                tracing::warn!(function = %config.function, error = %e, "reading async events");
                if sleep_or_stop(&mut stop, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        if received.messages.is_empty() {
            tokio::select! {
                _ = ctx.queues.wait(&queue, IDLE_WAIT_MS) => {}
                _ = stop.changed() => return,
            }
            continue;
        }
        for message in received.messages {
            state.in_flight.fetch_add(1, Ordering::Relaxed);
            let (ctx, config, state, done) =
                (ctx.clone(), config.clone(), state.clone(), done.clone());
            tokio::spawn(async move {
                attempt(&ctx, &config, &state, message).await;
                state.in_flight.fetch_sub(1, Ordering::Relaxed);
                done.notify_one();
            });
        }
    }
}

/// Sleep, or return true at once if the worker is told to stop.
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => false,
        _ = stop.changed() => true,
    }
}

/// One attempt of one event, and where it goes next.
async fn attempt(ctx: &Ctx, config: &Config, state: &TriggerState, message: Received) {
    let function = &config.function;
    let queue = async_queue(function);
    // An event without a readable envelope (written by hand into the store?) is still
    // run: it gets a fresh id and counts from its send.
    let envelope = Envelope::decode(message.attributes.as_deref()).unwrap_or_else(|| {
        Envelope::new(crate::new_request_id(), Source::Invoke, message.sent_at_ms)
    });
    let number = envelope.attempt();
    let policy = &config.policy;
    if policy.expired(&envelope, ctx.now()) {
        give_up(
            ctx,
            config,
            state,
            &message,
            &envelope,
            number - 1,
            Condition::EventAgeExceeded,
            None,
        )
        .await;
        return;
    }
    if envelope.late && number == 1 {
        ctx.invoker.log(
            function,
            &envelope.request_id,
            format!(
                "scheduled event delivered late: its time was {} (the platform was not running then)",
                shapes::iso8601(envelope.accepted_ms)
            ),
        );
    }
    state.count("attempted", 1);
    ctx.counters.function(function, "attempted");
    let (version, result) = ctx
        .invoker
        .invoke(
            function.clone(),
            envelope.request_id.clone(),
            Bytes::from(message.body.clone()),
            match envelope.source {
                Source::Invoke => "event",
                Source::Schedule => "schedule",
            },
        )
        .await;
    let how = match &result {
        Ok(Outcome::Success(_)) => Attempt::Succeeded,
        Err(Error::Overloaded { .. }) => Attempt::Throttled,
        Err(Error::FunctionNotFound(_) | Error::ShuttingDown) => {
            // Deleted (its queue goes with it) or the daemon is stopping: leave the event
            // held; a restart releases it, a delete drops it.
            return;
        }
        Ok(Outcome::FunctionError { .. }) | Err(_) => Attempt::Failed,
    };
    let next = policy.after(&envelope, number, how, ctx.now());
    let response = Response::of(version, &result);
    match next {
        Next::Done => {
            state.count("succeeded", 1);
            ctx.counters.function(function, "succeeded");
            settle(ctx, state, &queue, &message, Settle::Delete).await;
        }
        Next::Retry { delay_ms, envelope } => {
            let event = if how == Attempt::Throttled {
                "throttled"
            } else {
                "retried"
            };
            state.count(event, 1);
            ctx.counters.function(function, event);
            if how == Attempt::Failed {
                ctx.invoker.log(
                    function,
                    &envelope.request_id,
                    format!(
                        "attempt {number} failed ({}); retrying in {} s",
                        response.error_summary(),
                        delay_ms / 1000
                    ),
                );
            }
            let again = NewMessage {
                body: message.body.clone(),
                attributes: Some(envelope.encode()),
                delay_ms: Some(delay_ms),
            };
            settle(
                ctx,
                state,
                &queue,
                &message,
                Settle::Forward {
                    queue: queue.clone(),
                    message: again,
                },
            )
            .await;
        }
        Next::GiveUp(condition) => {
            give_up(
                ctx,
                config,
                state,
                &message,
                &envelope,
                number,
                condition,
                Some(response),
            )
            .await;
        }
    }
}

/// What the last attempt answered, for the destination record and log lines.
pub(crate) struct Response {
    pub(crate) version: Option<u32>,
    /// `Unhandled` for a thrown error, timeout or crash; `None` on success.
    pub(crate) function_error: Option<&'static str>,
    /// The handler's answer or Lambda's error JSON.
    pub(crate) payload: serde_json::Value,
}

impl Response {
    fn of(version: Option<u32>, result: &crate::Result<Outcome>) -> Response {
        let json = |b: &Bytes| serde_json::from_slice(b).unwrap_or(serde_json::Value::Null);
        match result {
            Ok(Outcome::Success(body)) => Response {
                version,
                function_error: None,
                payload: json(body),
            },
            Ok(Outcome::FunctionError { body, .. }) => Response {
                version,
                function_error: Some("Unhandled"),
                payload: json(body),
            },
            Err(e) => Response {
                version,
                function_error: Some("Unhandled"),
                payload: serde_json::json!({
                    "errorType": error_type(e),
                    "errorMessage": e.to_string(),
                }),
            },
        }
    }

    fn error_summary(&self) -> String {
        let field = |name: &str| self.payload.get(name).and_then(|v| v.as_str());
        match (field("errorType"), field("errorMessage")) {
            (Some(t), Some(m)) => format!("{t}: {m}"),
            (Some(t), None) => t.to_owned(),
            (None, Some(m)) => m.to_owned(),
            (None, None) => "failed".to_owned(),
        }
    }
}

fn error_type(e: &Error) -> &'static str {
    match e {
        Error::FunctionTimeout(_) => "Sandbox.Timedout",
        Error::InstanceFailed(_) => "Runtime.ExitError",
        Error::InitFailed(_) => "Runtime.InitError",
        Error::Overloaded { .. } => "TooManyRequestsException",
        _ => "ServiceException",
    }
}

/// The event will not be attempted again: to the destination, or dropped with a reason.
#[allow(clippy::too_many_arguments)]
async fn give_up(
    ctx: &Ctx,
    config: &Config,
    state: &TriggerState,
    message: &Received,
    envelope: &Envelope,
    attempts: u32,
    condition: Condition,
    response: Option<Response>,
) {
    let function = &config.function;
    let queue = async_queue(function);
    let why = match condition {
        Condition::RetriesExhausted => format!("failed {attempts} attempts"),
        Condition::EventAgeExceeded => format!(
            "older than maximum_event_age ({} s) after {attempts} attempts",
            config.policy.maximum_event_age_ms / 1000
        ),
    };
    if let Some(destination) = &config.on_failure {
        let record = shapes::destination_record(
            function,
            envelope,
            condition,
            attempts,
            &message.body,
            response.as_ref(),
            ctx.now(),
        );
        let forward = Settle::Forward {
            queue: destination.clone(),
            message: NewMessage {
                body: record,
                attributes: None,
                delay_ms: None,
            },
        };
        if settle(ctx, state, &queue, message, forward).await {
            state.count("to_destination", 1);
            ctx.counters.function(function, "to_destination");
            ctx.invoker.log(
                function,
                &envelope.request_id,
                format!("event {why}; sent to the on_failure queue {destination:?}"),
            );
            return;
        }
        // The destination is gone (or full): do not lose the event silently.
        ctx.invoker.log(
            function,
            &envelope.request_id,
            format!("event {why}; the on_failure queue {destination:?} refused it, dropping"),
        );
    }
    let reason = if config.on_failure.is_some() {
        "no_destination"
    } else {
        condition.label()
    };
    if settle(ctx, state, &queue, message, Settle::Delete).await {
        ctx.counters.dropped(function, reason);
        tracing::info!(function = %function, request_id = %envelope.request_id, reason, "async event dropped");
        ctx.invoker.log(
            function,
            &envelope.request_id,
            format!(
                "event dropped ({}): {why}; set on_failure = \"QUEUE\" to keep such events",
                condition.as_str()
            ),
        );
    }
}

/// Settle one message; true when the store took it. A failure leaves the event held, to
/// be released (and tried again) after its hold or at the next start: never lost.
async fn settle(
    ctx: &Ctx,
    state: &TriggerState,
    queue: &str,
    message: &Received,
    how: Settle,
) -> bool {
    match ctx
        .queues
        .settle(queue, vec![(message.receipt.clone(), how)])
        .await
    {
        Ok(results) => match results.into_iter().next() {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                state.error(Some(e.to_string()));
                false
            }
            None => false,
        },
        Err(e) => {
            state.error(Some(e.to_string()));
            tracing::warn!(queue, error = %e, "settling an async event");
            false
        }
    }
}
