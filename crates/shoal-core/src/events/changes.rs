//! Data-change triggers: a function runs for every committed row change of a table. The
//! database side (capturing changes, reading them in commit order per key, forgetting
//! them once delivered) is a [`ChangeSources`] implementation outside the core
//! (`shoal-pg`); this module is the delivery side, the same for any source: batches, lanes,
//! retries, `batchItemFailures`, the on-failure destination, and what status shows.
//!
//! Ordering: a page of undelivered changes (in the source's order) is split into
//! `parallelization_factor` lanes by row key; each lane delivers its changes in order, one
//! batch at a time, so a key's changes reach the handler in commit order while other keys
//! run beside them. A change is acknowledged (and never read again) only after its batch
//! succeeded or was written to the destination: delivery is at least once.
//!
//! Poison policy: a failing batch is retried `maximum_retry_attempts` times (1 s, 2 s, 4 s…
//! apart, at most 30 s); a partial batch response retries from the first record it names.
//! Then the rest of the batch goes to `on_failure` (or is dropped with a log line) and the
//! lane moves on. So a poison record holds its own lane for the retries' time, and the
//! other lanes for no longer than that (they wait for the page to end).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal_dispatch::Outcome;
use shoal_events::{BatchOutcome, ChangeRecord, StreamFailure};
use shoal_manifest::{FunctionSpec, PostgresTrigger};
use shoal_queue::NewMessage;
use tokio::sync::watch;

use super::{Ctx, TriggerState};
use crate::Error;

/// How long a trigger waits after a read that found nothing: short just after changes
/// came (they tend to come in runs, and each wait is latency), doubling while nothing
/// comes, up to [`IDLE_POLL_MAX`] (what an idle trigger costs the database: one indexed
/// query per wait).
const IDLE_POLL_MIN: Duration = Duration::from_millis(5);
const IDLE_POLL_MAX: Duration = Duration::from_millis(100);
/// The longest a batching window's wait for more changes lasts before it looks again.
const WINDOW_POLL: Duration = Duration::from_millis(50);
/// How often lag (records and age of the oldest) is read from the source.
const LAG_REFRESH: Duration = Duration::from_secs(1);
/// Most changes read in one page.
const PAGE_MAX: usize = 10_000;
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// A change source failed (connection, SQL, permissions); the text says what and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    Insert,
    Modify,
    Remove,
}

impl ChangeOp {
    /// DynamoDB Streams' `eventName`.
    pub fn event_name(self) -> &'static str {
        match self {
            ChangeOp::Insert => "INSERT",
            ChangeOp::Modify => "MODIFY",
            ChangeOp::Remove => "REMOVE",
        }
    }
}

/// One committed change, as a source hands it over.
#[derive(Debug, Clone)]
pub struct Change {
    /// Its place in the stream; increasing in commit order for one key.
    pub sequence: i64,
    pub op: ChangeOp,
    pub changed_at_ms: i64,
    /// JSON object text: the key columns; the row after (insert, update) and before
    /// (update, delete).
    pub keys: String,
    pub new_image: Option<String>,
    pub old_image: Option<String>,
}

impl Change {
    fn record(&self) -> ChangeRecord<'_> {
        ChangeRecord {
            sequence: self.sequence,
            event_name: self.op.event_name(),
            changed_at_ms: self.changed_at_ms,
            keys: &self.keys,
            new_image: self.new_image.as_deref(),
            old_image: self.old_image.as_deref(),
        }
    }
}

/// How far a feed is behind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lag {
    /// Changes captured and not yet delivered (a source may stop counting at a cap:
    /// PostgreSQL's counts up to 100,000).
    pub records: u64,
    /// When the oldest of them was made (epoch ms).
    pub oldest_ms: Option<i64>,
    /// The last sequence acknowledged, if the source remembers one.
    pub position: Option<i64>,
}

/// One table's stream of changes for one trigger.
#[async_trait::async_trait]
pub trait ChangeFeed: Send + Sync {
    /// Up to `max` undelivered changes, in an order that is commit order for each key;
    /// changes of transactions still open (or rolled back) are never returned. Changes
    /// returned but not acknowledged come back on the next read.
    async fn read(&self, max: usize) -> Result<Vec<Change>, SourceError>;
    /// These changes are delivered: never return them again.
    async fn ack(&self, sequences: &[i64]) -> Result<(), SourceError>;
    async fn lag(&self) -> Result<Lag, SourceError>;
}

/// Opens feeds: installs the capture of a table (idempotently) and removes it.
#[async_trait::async_trait]
pub trait ChangeSources: Send + Sync + 'static {
    /// Install what captures `trigger`'s table for `stream` (its own name in the
    /// source) and open a feed of it.
    async fn open(
        &self,
        url: &str,
        stream: &str,
        trigger: &PostgresTrigger,
    ) -> Result<Arc<dyn ChangeFeed>, SourceError>;
    /// Whether `open` would succeed (connection, table, key, privileges), leaving nothing
    /// behind: a deploy checks before it commits, and may still be refused after.
    async fn check(
        &self,
        url: &str,
        stream: &str,
        trigger: &PostgresTrigger,
    ) -> Result<(), SourceError>;
    /// Stop capturing for `stream` and forget its undelivered changes; how many.
    async fn remove(
        &self,
        url: &str,
        stream: &str,
        trigger: &PostgresTrigger,
    ) -> Result<u64, SourceError>;
}

/// The stream name a function's trigger on a table has in the source.
pub(crate) fn stream_name(function: &str, trigger: &PostgresTrigger) -> String {
    format!("{function}:{}", trigger.qualified_table())
}

/// The connection string: the function's `env`, else the daemon's environment.
pub(crate) fn resolve_url(spec: &FunctionSpec, trigger: &PostgresTrigger) -> Option<String> {
    spec.env
        .get(&trigger.url_env)
        .cloned()
        .or_else(|| std::env::var(&trigger.url_env).ok())
        .filter(|url| !url.is_empty())
}

/// What a postgres trigger's task reports beyond [`TriggerState`].
#[derive(Default)]
pub(crate) struct StreamState {
    pub(crate) position: AtomicI64,
    pub(crate) lag_records: AtomicU64,
    pub(crate) oldest_ms: AtomicI64,
}

/// One postgres trigger of one function.
pub(crate) struct Task {
    pub(crate) function: String,
    pub(crate) stream: String,
    pub(crate) url: String,
    pub(crate) trigger: PostgresTrigger,
    pub(crate) sources: Arc<dyn ChangeSources>,
    /// Held while the task runs: a redeploy's new task waits for the old one to finish
    /// its batches, so a key's changes are never delivered by two tasks at once.
    pub(crate) turn: Arc<tokio::sync::Mutex<()>>,
}

pub(crate) async fn run(
    ctx: Arc<Ctx>,
    task: Task,
    state: Arc<TriggerState>,
    stream: Arc<StreamState>,
    mut stop: watch::Receiver<bool>,
) {
    let turn = task.turn.clone();
    let _turn = tokio::select! {
        t = turn.lock() => t,
        _ = stop.changed() => return,
    };
    let task = Arc::new(task);
    let lanes = task.trigger.parallelization_factor.max(1);
    state.set_cap(lanes, format!("parallelization_factor {lanes}"));
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        let feed = match task
            .sources
            .open(&task.url, &task.stream, &task.trigger)
            .await
        {
            Ok(feed) => feed,
            Err(e) => {
                state.error(Some(format!("opening the change feed: {e}")));
                failures += 1;
                if sleep_or_stop(&mut stop, backoff(failures)).await {
                    return;
                }
                continue;
            }
        };
        failures = 0;
        match serve(&ctx, &task, &feed, &state, &stream, &mut stop).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(function = %task.function, stream = %task.stream, error = %e, "change feed failed; reopening");
                state.error(Some(e.to_string()));
                failures += 1;
                if sleep_or_stop(&mut stop, backoff(failures)).await {
                    return;
                }
            }
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    RETRY_BASE
        .saturating_mul(1 << attempt.saturating_sub(1).min(5))
        .min(RETRY_MAX)
}

/// Sleep, or return true at once if told to stop.
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => false,
        _ = stop.changed() => true,
    }
}

/// Read, deliver, acknowledge, until told to stop (`Ok`) or the feed fails (`Err`).
async fn serve(
    ctx: &Arc<Ctx>,
    task: &Arc<Task>,
    feed: &Arc<dyn ChangeFeed>,
    state: &Arc<TriggerState>,
    stream: &Arc<StreamState>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), SourceError> {
    let trigger = &task.trigger;
    let lanes = trigger.parallelization_factor.max(1) as usize;
    let page = (trigger.batch_size as usize * lanes * 4).clamp(1, PAGE_MAX);
    let mut lag_read: Option<std::time::Instant> = None;
    let mut idle = IDLE_POLL_MIN;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        if lag_read.is_none_or(|t| t.elapsed() >= LAG_REFRESH) {
            let lag = feed.lag().await?;
            stream.lag_records.store(lag.records, Ordering::Relaxed);
            stream
                .oldest_ms
                .store(lag.oldest_ms.unwrap_or(0), Ordering::Relaxed);
            if let Some(p) = lag.position {
                stream.position.fetch_max(p, Ordering::Relaxed);
            }
            lag_read = Some(std::time::Instant::now());
        }
        let changes = feed.read(page).await?;
        state.error(None);
        if changes.is_empty() {
            if sleep_or_stop(stop, idle).await {
                return Ok(());
            }
            idle = (idle * 2).min(IDLE_POLL_MAX);
            continue;
        }
        idle = IDLE_POLL_MIN;
        if changes.len() < trigger.batch_size as usize && trigger.batching_window_ms > 0 {
            // Wait for a fuller batch while the oldest change is younger than the window.
            let oldest = changes.iter().map(|c| c.changed_at_ms).min().unwrap_or(0);
            let left = oldest + trigger.batching_window_ms as i64 - ctx.now();
            if left > 0 {
                let pause = Duration::from_millis(left as u64).min(WINDOW_POLL);
                if sleep_or_stop(stop, pause).await {
                    return Ok(());
                }
                continue;
            }
        }
        // Split by key into lanes, keeping the read order within each.
        let mut split: Vec<Vec<Change>> = vec![Vec::new(); lanes];
        for change in changes {
            let mut h = DefaultHasher::new();
            change.keys.hash(&mut h);
            split[(h.finish() % lanes as u64) as usize].push(change);
        }
        let mut running = tokio::task::JoinSet::new();
        for lane in split.into_iter().filter(|l| !l.is_empty()) {
            let (ctx, task, feed, state, stream, stop) = (
                ctx.clone(),
                task.clone(),
                feed.clone(),
                state.clone(),
                stream.clone(),
                stop.clone(),
            );
            running.spawn(async move {
                deliver_lane(&ctx, &task, &*feed, &state, &stream, lane, stop).await
            });
        }
        let mut failed = None;
        while let Some(done) = running.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failed = Some(e),
                Err(e) => failed = Some(SourceError(format!("a delivery lane failed: {e}"))),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
    }
}

/// Why one attempt of a batch failed, and from which record on.
struct Failure {
    /// Index of the first record that failed: those before it are done.
    from: usize,
    function_error: Option<&'static str>,
    message: String,
    /// The call never ran (the function was overloaded): does not use up a retry.
    throttled: bool,
}

/// One lane's changes, batch after batch, each retried by the policy. `Err` only when an
/// acknowledgement could not be written (the caller reopens the feed; the changes not
/// acknowledged come back).
async fn deliver_lane(
    ctx: &Ctx,
    task: &Task,
    feed: &dyn ChangeFeed,
    state: &TriggerState,
    stream: &StreamState,
    lane: Vec<Change>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), SourceError> {
    let trigger = &task.trigger;
    let arn = shoal_events::postgres_stream_arn(&trigger.qualified_table(), &task.function);
    for chunk in lane.chunks(trigger.batch_size as usize) {
        let mut batch: &[Change] = chunk;
        let mut retries = 0u32;
        let mut attempts = 0u32;
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            state.in_flight.fetch_add(1, Ordering::Relaxed);
            let result = attempt(ctx, task, state, &arn, batch).await;
            state.in_flight.fetch_sub(1, Ordering::Relaxed);
            attempts += 1;
            let failure = match result {
                Ok(()) => {
                    acknowledge(feed, stream, batch).await?;
                    state.count("succeeded", batch.len() as u64);
                    break;
                }
                Err(failure) => failure,
            };
            if failure.from > 0 {
                acknowledge(feed, stream, &batch[..failure.from]).await?;
                state.count("succeeded", failure.from as u64);
                batch = &batch[failure.from..];
            }
            if failure.throttled {
                // It never ran: neither an invocation nor a retry.
                attempts -= 1;
                state.count("throttled", batch.len() as u64);
                if sleep_or_stop(&mut stop, RETRY_BASE).await {
                    return Ok(());
                }
                continue;
            }
            state.error(Some(failure.message.clone()));
            if retries >= trigger.maximum_retry_attempts {
                if !give_up(ctx, task, state, &arn, batch, attempts, &failure, &mut stop).await {
                    // Stopped before the destination took it: the changes stay undelivered.
                    return Ok(());
                }
                acknowledge(feed, stream, batch).await?;
                break;
            }
            retries += 1;
            state.count("retried", batch.len() as u64);
            let pause = backoff(retries);
            ctx.invoker.log(
                &task.function,
                "-",
                format!(
                    "{} change(s) from sequence {} failed ({}); retry {retries} of {} in {} ms",
                    batch.len(),
                    batch[0].sequence,
                    failure.message,
                    trigger.maximum_retry_attempts,
                    pause.as_millis()
                ),
            );
            if sleep_or_stop(&mut stop, pause).await {
                return Ok(());
            }
        }
    }
    Ok(())
}

async fn acknowledge(
    feed: &dyn ChangeFeed,
    stream: &StreamState,
    done: &[Change],
) -> Result<(), SourceError> {
    if done.is_empty() {
        return Ok(());
    }
    let sequences: Vec<i64> = done.iter().map(|c| c.sequence).collect();
    feed.ack(&sequences)
        .await
        .map_err(|e| SourceError(format!("acknowledging delivered changes: {e}")))?;
    if let Some(last) = sequences.iter().max() {
        stream.position.fetch_max(*last, Ordering::Relaxed);
    }
    stream
        .lag_records
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            Some(n.saturating_sub(done.len() as u64))
        })
        .ok();
    Ok(())
}

/// One invocation with one batch.
async fn attempt(
    ctx: &Ctx,
    task: &Task,
    state: &TriggerState,
    arn: &str,
    batch: &[Change],
) -> Result<(), Failure> {
    let records: Vec<ChangeRecord<'_>> = batch.iter().map(Change::record).collect();
    let event = shoal_events::build_stream_event(arn, &records);
    let request_id = crate::new_request_id();
    state.batches.fetch_add(1, Ordering::Relaxed);
    state.count("delivered", batch.len() as u64);
    let (_, result) = ctx
        .invoker
        .invoke(
            task.function.clone(),
            request_id.clone(),
            Bytes::from(event),
            "postgres",
        )
        .await;
    let whole = |function_error, message: String| Failure {
        from: 0,
        function_error,
        message,
        throttled: false,
    };
    match result {
        Ok(Outcome::Success(body)) if task.trigger.report_batch_item_failures => {
            let ids: Vec<String> = records.iter().map(ChangeRecord::sequence_number).collect();
            match shoal_events::parse_batch_response(&body, &ids) {
                BatchOutcome::AllSucceeded => Ok(()),
                BatchOutcome::SomeFailed(failed) => {
                    let from = ids.iter().position(|id| failed.contains(id)).unwrap_or(0);
                    Err(Failure {
                        from,
                        function_error: None,
                        message: format!("the handler reported sequence {} failed", ids[from]),
                        throttled: false,
                    })
                }
                BatchOutcome::AllFailed(why) => {
                    Err(whole(None, format!("the whole batch failed: {why}")))
                }
            }
        }
        Ok(Outcome::Success(_)) => Ok(()),
        Ok(Outcome::FunctionError { error_type, body }) => Err(whole(
            Some("Unhandled"),
            format!(
                "{error_type}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            ),
        )),
        Err(Error::Overloaded { .. }) => Err(Failure {
            throttled: true,
            ..whole(None, "throttled".to_owned())
        }),
        Err(e) => Err(whole(Some("Unhandled"), crate::chain(&e))),
    }
}

/// The batch exhausted its retries: to the destination (kept trying until written, or
/// until the task stops: `false`) or, without one, dropped with a log line.
#[allow(clippy::too_many_arguments)]
async fn give_up(
    ctx: &Ctx,
    task: &Task,
    state: &TriggerState,
    arn: &str,
    batch: &[Change],
    attempts: u32,
    failure: &Failure,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let records: Vec<ChangeRecord<'_>> = batch.iter().map(Change::record).collect();
    let (first, last) = (batch[0].sequence, batch[batch.len() - 1].sequence);
    let Some(queue) = &task.trigger.on_failure else {
        state.count("dropped", batch.len() as u64);
        ctx.invoker.log(
            &task.function,
            "-",
            format!(
                "dropped {} change(s), sequence {first} to {last}, after {attempts} attempt(s): \
                 {} (set on_failure to keep them)",
                batch.len(),
                failure.message
            ),
        );
        return true;
    };
    let record = shoal_events::build_stream_failure(&StreamFailure {
        time_ms: ctx.now(),
        request_id: &crate::new_request_id(),
        function_name: &task.function,
        approximate_invoke_count: attempts,
        function_error: failure.function_error,
        error_message: &failure.message,
        arn,
        records: &records,
    });
    let message = NewMessage {
        body: String::from_utf8_lossy(&record).into_owned(),
        attributes: None,
        delay_ms: None,
    };
    loop {
        match ctx.queues.send(queue, vec![message.clone()]).await {
            Ok(_) => {
                state.count("to_destination", batch.len() as u64);
                ctx.invoker.log(
                    &task.function,
                    "-",
                    format!(
                        "{} change(s), sequence {first} to {last}, sent to {queue} after \
                         {attempts} attempt(s): {}",
                        batch.len(),
                        failure.message
                    ),
                );
                return true;
            }
            Err(e) => {
                state.error(Some(format!("sending to on_failure queue {queue}: {e}")));
                if sleep_or_stop(stop, RETRY_BASE).await {
                    return false;
                }
            }
        }
    }
}
