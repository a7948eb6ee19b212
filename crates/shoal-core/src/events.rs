//! The event side of the platform: `Event` invocations, queue triggers and schedules,
//! all through one durable path — the queue store ([`shoal_queue::QueueBackend`]). An
//! event is committed to the store before it is acknowledged, delivered at least once,
//! retried by the rules in [`policy`], and then deleted, sent to a destination or
//! dead-letter queue, or counted as dropped with a log line saying why.
//!
//! Per deployed function this module runs: one async worker (its `async:NAME` queue),
//! one poller per queue trigger, one task per schedule, one change reader per postgres
//! trigger ([`changes`], over a [`ChangeSources`] the server plugs in). They invoke through the
//! [`Invoker`] seam (the platform in production, a fake in tests) and are restarted as a
//! set when the function is redeployed. Nothing here knows about HTTP.

pub(crate) mod changes;
mod metered;
mod policy;
mod poller;
mod scheduler;
mod shapes;
mod worker;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use shoal_api::{EventInfo, QueueReport, TriggerReport};
use shoal_dispatch::{BoxFuture, Outcome};
use shoal_manifest::{EventSource, FunctionSpec, PostgresTrigger};
use shoal_queue::{NewMessage, QueueBackend, QueueConfig, QueueError};
use tokio::sync::watch;

pub use changes::{Change, ChangeFeed, ChangeOp, ChangeSources, Lag, SourceError};
pub(crate) use metered::{EventCounters, Metered};
pub(crate) use policy::{Envelope, Source};
pub(crate) use scheduler::ScheduleClock;

use crate::{Error, Platform, Result};

/// Time on the platform's clock, epoch ms (injectable so tests can move it).
pub(crate) type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The prefix of the internal queue holding a function's `Event` invocations.
const ASYNC_PREFIX: &str = "async:";
/// Extra hold on an async event beyond the function's timeout before another attempt may
/// take it (only after a crash of the daemon mid-attempt does this ever matter).
const ASYNC_HOLD_GRACE_MS: u64 = 30_000;
/// Async queues keep events longer than the longest maximum event age (6 h).
const ASYNC_RETENTION_MS: u64 = 7 * 3_600_000;

/// The queue that holds `function`'s `Event` invocations.
pub(crate) fn async_queue(function: &str) -> String {
    format!("{ASYNC_PREFIX}{function}")
}

/// How triggers reach functions. The platform implements it; tests fake it.
pub(crate) trait Invoker: Send + Sync + 'static {
    /// Run one invocation; also says which version ran it.
    fn invoke(
        &self,
        function: String,
        request_id: String,
        payload: Bytes,
        trigger: &'static str,
    ) -> BoxFuture<(Option<u32>, Result<Outcome>)>;
    /// How many invocations of `function` may be in flight at once now, and why.
    fn capacity(&self, function: &str) -> (u32, String);
    /// What `function`'s instances can take now, for triggers that pace themselves to it
    /// (`None`: not deployed).
    fn room(&self, function: &str) -> Option<shoal_dispatch::Room>;
    /// Write a platform line into the function's log.
    fn log(&self, function: &str, request_id: &str, message: String);
}

/// What every trigger task shares.
pub(crate) struct Ctx {
    pub(crate) queues: Arc<dyn QueueBackend>,
    pub(crate) counters: Arc<EventCounters>,
    pub(crate) invoker: Arc<dyn Invoker>,
    pub(crate) clock: Clock,
    /// The wait before an async event's first retry (Lambda: about a minute).
    pub(crate) retry_base_ms: u64,
    /// Where postgres triggers read changes; `None`: such triggers are refused at deploy.
    pub(crate) sources: Option<Arc<dyn ChangeSources>>,
    /// Real time for schedules, or (tests only) time sped up.
    pub(crate) schedule_clock: ScheduleClock,
}

impl Ctx {
    pub(crate) fn now(&self) -> i64 {
        (self.clock)()
    }
}

/// What one trigger task reports while it runs.
#[derive(Default)]
pub(crate) struct TriggerState {
    pub(crate) in_flight: AtomicU32,
    /// Batches handed to the function whose call has not returned (queue triggers).
    pub(crate) invoking: AtomicU32,
    /// Of those, spawned but not yet seen by the dispatcher: a slot it has not counted.
    pub(crate) dispatching: AtomicU32,
    pub(crate) cap: AtomicU32,
    pub(crate) why: Mutex<String>,
    pub(crate) next_fire_ms: AtomicI64,
    pub(crate) last_fire_ms: AtomicI64,
    pub(crate) last_error: Mutex<Option<String>>,
    pub(crate) counts: Mutex<std::collections::BTreeMap<String, u64>>,
    pub(crate) batches: AtomicU64,
}

impl TriggerState {
    pub(crate) fn count(&self, what: &str, n: u64) {
        if n > 0 {
            *self
                .counts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(what.to_owned())
                .or_default() += n;
        }
    }

    #[cfg(test)]
    pub(crate) fn count_of(&self, what: &str) -> u64 {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(what)
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn error(&self, message: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = message;
    }

    pub(crate) fn set_cap(&self, cap: u32, why: String) {
        self.cap.store(cap, Ordering::Relaxed);
        *self.why.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }
}

/// One running trigger task, as status lists it.
struct Running {
    kind: &'static str,
    source: String,
    /// The queue it reads (async and queue triggers).
    queue: Option<String>,
    state: Arc<TriggerState>,
    /// Position and lag (postgres triggers).
    stream: Option<Arc<changes::StreamState>>,
}

/// The tasks of one function: stopped together by dropping or signalling `stop`.
struct FunctionTriggers {
    stop: watch::Sender<bool>,
    timeout_ms: u64,
    running: Vec<Running>,
    /// Its postgres triggers (URL, trigger), so a redeploy without one removes it.
    postgres: Vec<(String, PostgresTrigger)>,
}

/// The event side: the metered queue store and the trigger tasks of every function.
pub(crate) struct Events {
    ctx: Arc<Ctx>,
    functions: Mutex<HashMap<String, FunctionTriggers>>,
    /// One per postgres stream: its reader holds it while it runs (see `changes::Task`).
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Events {
    pub(crate) fn new(ctx: Ctx) -> Events {
        Events {
            ctx: Arc::new(ctx),
            functions: Mutex::new(HashMap::new()),
            turns: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn queues(&self) -> &Arc<dyn QueueBackend> {
        &self.ctx.queues
    }

    pub(crate) fn counters(&self) -> &EventCounters {
        &self.ctx.counters
    }

    /// Problems that would stop `spec`'s triggers from working, found before a deploy
    /// commits: a trigger or destination queue that does not exist.
    pub(crate) fn check(&self, spec: &FunctionSpec) -> Result<()> {
        let missing = |queue: &str, what: &str| Error::Unsupported {
            function: spec.name.clone(),
            reason: format!(
                "{what} queue {queue:?} does not exist; create it first with \
                 `shoal queue create {queue}`"
            ),
        };
        for source in &spec.events {
            if let EventSource::Queue(trigger) = source {
                if self.ctx.queues.queue(&trigger.queue).is_err() {
                    return Err(missing(&trigger.queue, "trigger"));
                }
            }
        }
        if let Some(queue) = &spec.async_invoke.on_failure {
            if self.ctx.queues.queue(queue).is_err() {
                return Err(missing(queue, "on_failure"));
            }
        }
        for (index, source) in spec.events.iter().enumerate() {
            let EventSource::Postgres(trigger) = source else {
                continue;
            };
            let field = format!("events[{index}].postgres");
            let refuse = |reason: String| Error::Unsupported {
                function: spec.name.clone(),
                reason: format!("{field}: {reason}"),
            };
            if let Some(queue) = &trigger.on_failure {
                if self.ctx.queues.queue(queue).is_err() {
                    return Err(missing(queue, "on_failure"));
                }
            }
            let Some(sources) = &self.ctx.sources else {
                return Err(refuse(
                    "this daemon was built without PostgreSQL support".into(),
                ));
            };
            let Some(url) = changes::resolve_url(spec, trigger) else {
                return Err(refuse(format!(
                    "url_env {:?} is set neither in the function's env nor in the daemon's \
                     environment; set it to the connection string (postgres://user@host/db)",
                    trigger.url_env
                )));
            };
            // Try the install now (rolled back), so a wrong URL, table or privilege fails
            // the deploy with the database's own words, and a refused deploy leaves no
            // trigger capturing for a reader that never comes.
            let stream = changes::stream_name(&spec.name, trigger);
            let checked = tokio::runtime::Handle::current().block_on(async {
                tokio::time::timeout(
                    std::time::Duration::from_secs(20),
                    sources.check(&url, &stream, trigger),
                )
                .await
            });
            match checked {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(refuse(format!(
                        "watching table {} through ${}: {e}",
                        trigger.qualified_table(),
                        trigger.url_env
                    )))
                }
                Err(_) => {
                    return Err(refuse(format!(
                        "the database named by ${} did not answer within 20 s",
                        trigger.url_env
                    )))
                }
            }
        }
        Ok(())
    }

    /// Install the capture of `spec`'s postgres triggers, and return once it is in place:
    /// a deploy that answered has every change after it captured. Called when nothing
    /// that can refuse the deploy is left (after [`Events::check`]).
    pub(crate) fn install(&self, spec: &FunctionSpec) -> Result<()> {
        let Some(sources) = &self.ctx.sources else {
            return Ok(());
        };
        for (index, source) in spec.events.iter().enumerate() {
            let EventSource::Postgres(trigger) = source else {
                continue;
            };
            let Some(url) = changes::resolve_url(spec, trigger) else {
                continue; // refused by check
            };
            let stream = changes::stream_name(&spec.name, trigger);
            let opened = tokio::runtime::Handle::current().block_on(async {
                tokio::time::timeout(
                    std::time::Duration::from_secs(20),
                    sources.open(&url, &stream, trigger),
                )
                .await
            });
            let reason = match opened {
                Ok(Ok(_feed)) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "the database did not answer within 20 s".to_owned(),
            };
            return Err(Error::Unsupported {
                function: spec.name.clone(),
                reason: format!(
                    "events[{index}].postgres: installing the capture on {}: {reason}",
                    trigger.qualified_table()
                ),
            });
        }
        Ok(())
    }

    /// (Re)start every trigger task of `spec`'s function; the previous set stops (its
    /// in-flight invocations finish, their messages settle).
    pub(crate) fn start(&self, spec: &FunctionSpec) {
        let (stop, stopped) = watch::channel(false);
        let mut running = Vec::new();
        let ctx = self.ctx.clone();

        let state = Arc::new(TriggerState::default());
        let queue = async_queue(&spec.name);
        tokio::spawn(worker::run(
            ctx.clone(),
            worker::Config::new(spec, ctx.retry_base_ms),
            state.clone(),
            stopped.clone(),
        ));
        running.push(Running {
            kind: "async",
            source: "Event invocations".to_owned(),
            queue: Some(queue),
            state,
            stream: None,
        });
        let mut postgres = Vec::new();

        for (index, source) in spec.events.iter().enumerate() {
            let state = Arc::new(TriggerState::default());
            match source {
                EventSource::Queue(trigger) => {
                    tokio::spawn(poller::run(
                        ctx.clone(),
                        spec.name.clone(),
                        trigger.clone(),
                        state.clone(),
                        stopped.clone(),
                    ));
                    running.push(Running {
                        kind: "queue",
                        source: trigger.queue.clone(),
                        queue: Some(trigger.queue.clone()),
                        state,
                        stream: None,
                    });
                }
                EventSource::Schedule(trigger) => {
                    if !trigger.enabled {
                        continue;
                    }
                    tokio::spawn(scheduler::run(
                        ctx.clone(),
                        spec.name.clone(),
                        index,
                        trigger.clone(),
                        state.clone(),
                        stopped.clone(),
                    ));
                    running.push(Running {
                        kind: "schedule",
                        source: trigger.expression.clone(),
                        queue: None,
                        state,
                        stream: None,
                    });
                }
                EventSource::Postgres(trigger) => {
                    let stream = Arc::new(changes::StreamState::default());
                    match (&ctx.sources, changes::resolve_url(spec, trigger)) {
                        (Some(sources), Some(url)) => {
                            let name = changes::stream_name(&spec.name, trigger);
                            postgres.push((url.clone(), trigger.clone()));
                            let task = changes::Task {
                                function: spec.name.clone(),
                                turn: self.turn(&name),
                                stream: name,
                                url,
                                trigger: trigger.clone(),
                                sources: sources.clone(),
                            };
                            tokio::spawn(changes::run(
                                ctx.clone(),
                                task,
                                state.clone(),
                                stream.clone(),
                                stopped.clone(),
                            ));
                        }
                        // Restored after the daemon lost its PostgreSQL support or the
                        // variable: shown in status, not run.
                        (None, _) => state.error(Some("no PostgreSQL support in this daemon".into())),
                        (_, None) => state.error(Some(format!(
                            "url_env {:?} is not set in the function's env or the daemon's environment",
                            trigger.url_env
                        ))),
                    }
                    running.push(Running {
                        kind: "postgres",
                        source: trigger.qualified_table(),
                        queue: None,
                        state,
                        stream: Some(stream),
                    });
                }
            }
        }
        let keep: Vec<String> = spec
            .events
            .iter()
            .filter_map(|s| match s {
                EventSource::Schedule(t) if t.enabled => {
                    Some(scheduler::key(&spec.name, t, ctx.schedule_clock))
                }
                _ => None,
            })
            .collect();
        let queues = ctx.queues.clone();
        let prefix = scheduler::prefix(&spec.name);
        tokio::spawn(async move {
            if let Err(e) = queues.forget_schedules(&prefix, &keep).await {
                tracing::warn!(error = %e, "forgetting removed schedules");
            }
        });

        let previous = self
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                spec.name.clone(),
                FunctionTriggers {
                    stop,
                    timeout_ms: spec.timeout_ms,
                    running,
                    postgres: postgres.clone(),
                },
            );
        if let Some(previous) = previous {
            let _ = previous.stop.send(true);
            let kept = |t: &PostgresTrigger| {
                postgres
                    .iter()
                    .any(|(_, n)| n.qualified_table() == t.qualified_table())
            };
            let gone = previous
                .postgres
                .into_iter()
                .filter(|(_, t)| !kept(t))
                .collect();
            self.remove_streams(&spec.name, gone);
        }
    }

    /// The lock a postgres stream's reader holds while it runs.
    fn turn(&self, stream: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.turns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(stream.to_owned())
            .or_default()
            .clone()
    }

    /// Stop capturing for triggers a function no longer has: once their reader stopped,
    /// drop the database trigger and forget the changes never delivered (logged).
    fn remove_streams(&self, function: &str, gone: Vec<(String, PostgresTrigger)>) {
        let Some(sources) = self.ctx.sources.clone() else {
            return;
        };
        for (url, trigger) in gone {
            let stream = changes::stream_name(function, &trigger);
            let turn = self.turn(&stream);
            let (ctx, function, sources) = (self.ctx.clone(), function.to_owned(), sources.clone());
            tokio::spawn(async move {
                let _turn = turn.lock().await;
                match sources.remove(&url, &stream, &trigger).await {
                    Ok(dropped) => {
                        let message = format!(
                            "postgres trigger on {} removed; {dropped} undelivered change(s) forgotten",
                            trigger.qualified_table()
                        );
                        tracing::info!(function = %function, "{message}");
                        ctx.invoker.log(&function, "-", message);
                    }
                    Err(e) => {
                        tracing::warn!(function = %function, table = %trigger.qualified_table(), error = %e, "removing a postgres trigger");
                        ctx.invoker.log(
                            &function,
                            "-",
                            format!(
                                "could not remove the postgres trigger on {}: {e}; drop it by hand \
                                 (see docs/ARCHITECTURE.md, postgres triggers)",
                                trigger.qualified_table()
                            ),
                        );
                    }
                }
            });
        }
    }

    /// Stop a deleted function's triggers, drop its pending `Event` invocations (counted
    /// and logged) and forget its schedules.
    pub(crate) fn remove(&self, function: &str) {
        if let Some(previous) = self
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(function)
        {
            let _ = previous.stop.send(true);
            self.remove_streams(function, previous.postgres);
        }
        let ctx = self.ctx.clone();
        let function = function.to_owned();
        tokio::spawn(async move {
            let queue = async_queue(&function);
            if let Ok(info) = ctx.queues.queue(&queue) {
                let pending = info.stats.visible + info.stats.in_flight + info.stats.delayed;
                if pending > 0 {
                    tracing::warn!(function = %function, pending, "function deleted: dropping its pending Event invocations");
                    for _ in 0..pending {
                        ctx.counters.dropped(&function, "function_deleted");
                    }
                }
                if let Err(e) = ctx.queues.delete_queue(&queue).await {
                    tracing::warn!(function = %function, error = %e, "deleting the async queue");
                }
            }
            let prefix = scheduler::prefix(&function);
            if let Err(e) = ctx.queues.forget_schedules(&prefix, &[]).await {
                tracing::warn!(function = %function, error = %e, "forgetting schedules");
            }
        });
    }

    /// Stop every trigger task (at shutdown).
    pub(crate) fn stop_all(&self) {
        for (_, triggers) in self
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            let _ = triggers.stop.send(true);
        }
    }

    /// Accept an `Event` invocation: durable in the store before this returns.
    pub(crate) async fn enqueue(
        &self,
        function: &str,
        request_id: &str,
        payload: &Bytes,
    ) -> Result<()> {
        let envelope = Envelope::new(request_id.to_owned(), Source::Invoke, self.ctx.now());
        let message = NewMessage {
            body: String::from_utf8_lossy(payload).into_owned(),
            attributes: Some(envelope.encode()),
            delay_ms: None,
        };
        let queue = async_queue(function);
        let sent = match self.ctx.queues.send(&queue, vec![message.clone()]).await {
            Err(QueueError::NoSuchQueue(_)) => {
                // The worker creates it as it starts; this call may be first.
                let timeout_ms = self
                    .functions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(function)
                    .map_or(30_000, |f| f.timeout_ms);
                ensure_async_queue(&*self.ctx.queues, function, timeout_ms).await?;
                self.ctx.queues.send(&queue, vec![message]).await
            }
            other => other,
        };
        sent.map_err(Error::from)?;
        self.ctx.counters.function(function, "enqueued");
        Ok(())
    }

    /// Each function's triggers, for `shoal status`.
    pub(crate) fn trigger_reports(&self, function: Option<&str>) -> Vec<TriggerReport> {
        let now = self.ctx.now();
        let functions = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<&String> = functions
            .keys()
            .filter(|n| function.is_none_or(|f| f == n.as_str()))
            .collect();
        names.sort();
        let mut reports = Vec::new();
        for name in names {
            for running in &functions[name].running {
                let s = &running.state;
                let stats = running
                    .queue
                    .as_deref()
                    .and_then(|q| self.ctx.queues.queue(q).ok())
                    .map(|info| info.stats);
                let mut counts = s.counts.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if running.kind == "async" {
                    for (reason, n) in self.ctx.counters.dropped_counts(name) {
                        counts.insert(format!("dropped:{reason}"), n);
                    }
                }
                let fire = |v: &AtomicI64| Some(v.load(Ordering::Relaxed)).filter(|&t| t > 0);
                let (backlog, oldest_age_ms, position) = match &running.stream {
                    Some(st) => (
                        st.lag_records.load(Ordering::Relaxed),
                        fire(&st.oldest_ms).map(|t| now.saturating_sub(t).max(0) as u64),
                        fire(&st.position).map(|p| p.to_string()),
                    ),
                    None => (
                        stats.as_ref().map_or(0, |st| st.visible + st.delayed),
                        stats
                            .as_ref()
                            .and_then(|st| st.oldest_sent_at_ms)
                            .map(|t| now.saturating_sub(t).max(0) as u64),
                        None,
                    ),
                };
                reports.push(TriggerReport {
                    function: name.clone(),
                    kind: running.kind.to_owned(),
                    source: running.source.clone(),
                    in_flight: s.in_flight.load(Ordering::Relaxed),
                    cap: s.cap.load(Ordering::Relaxed),
                    why: s.why.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                    backlog,
                    oldest_age_ms,
                    position,
                    next_fire_ms: fire(&s.next_fire_ms),
                    last_fire_ms: fire(&s.last_fire_ms),
                    last_error: s
                        .last_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone(),
                    counts,
                });
            }
        }
        reports
    }

    /// Event sources of a function, for `shoal ls`.
    pub(crate) fn event_infos(&self, function: &str) -> Vec<EventInfo> {
        let functions = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        let Some(triggers) = functions.get(function) else {
            return Vec::new();
        };
        triggers
            .running
            .iter()
            .filter(|r| r.kind != "async")
            .map(|r| {
                let next = Some(r.state.next_fire_ms.load(Ordering::Relaxed)).filter(|&t| t > 0);
                EventInfo {
                    kind: r.kind.to_owned(),
                    source: r.source.clone(),
                    next_fire_ms: next,
                    next_fire: next.map(shoal_events::iso8601_seconds),
                }
            })
            .collect()
    }

    /// User queues with their depth and traffic.
    pub(crate) fn queue_reports(&self, only: Option<&[String]>) -> Vec<QueueReport> {
        let now = self.ctx.now();
        self.ctx
            .queues
            .list("", false)
            .into_iter()
            .filter(|q| only.is_none_or(|names| names.contains(&q.name)))
            .map(|q| {
                let counts = [
                    "sent",
                    "received",
                    "deleted",
                    "dead_lettered",
                    "expired",
                    "purged",
                ]
                .iter()
                .map(|event| {
                    let n = self
                        .ctx
                        .counters
                        .queue
                        .get_or_create(&vec![
                            ("queue", q.name.clone()),
                            ("event", (*event).to_owned()),
                        ])
                        .get();
                    ((*event).to_owned(), n)
                })
                .filter(|(_, n)| *n > 0)
                .collect();
                QueueReport {
                    visible: q.stats.visible,
                    in_flight: q.stats.in_flight,
                    delayed: q.stats.delayed,
                    oldest_age_ms: q
                        .stats
                        .oldest_sent_at_ms
                        .map(|t| now.saturating_sub(t).max(0) as u64),
                    visibility_timeout_ms: q.config.visibility_timeout_ms,
                    retention_ms: q.config.retention_ms,
                    dead_letter: q.config.redrive.as_ref().map(|r| r.dead_letter.clone()),
                    max_receive_count: q.config.redrive.as_ref().map(|r| r.max_receive_count),
                    counts,
                    name: q.name,
                }
            })
            .collect()
    }

    /// The queues `function`'s triggers read or write.
    pub(crate) fn queues_of(spec: &FunctionSpec) -> Vec<String> {
        let mut names: Vec<String> = spec
            .events
            .iter()
            .filter_map(|s| match s {
                EventSource::Queue(t) => Some(t.queue.clone()),
                EventSource::Postgres(t) => t.on_failure.clone(),
                EventSource::Schedule(_) => None,
            })
            .collect();
        names.extend(spec.async_invoke.on_failure.clone());
        names
    }
}

/// Create `function`'s async queue if it is missing: events are held for the function's
/// timeout plus a grace while an attempt runs, and kept longer than any event may live.
pub(crate) async fn ensure_async_queue(
    queues: &dyn QueueBackend,
    function: &str,
    timeout_ms: u64,
) -> Result<()> {
    let config = QueueConfig {
        visibility_timeout_ms: timeout_ms + ASYNC_HOLD_GRACE_MS,
        retention_ms: ASYNC_RETENTION_MS,
        // An event is a Lambda payload: up to 256 KiB as Lambda's async limit.
        max_message_bytes: 262_144,
        ..QueueConfig::default()
    };
    match queues
        .create_queue(&async_queue(function), config.clone())
        .await
    {
        Ok(()) => Ok(()),
        // Redeployed with another timeout: the hold follows the new one.
        Err(QueueError::QueueExists(_)) => queues
            .set_config(&async_queue(function), config)
            .await
            .map_err(Error::from),
        Err(e) => Err(Error::from(e)),
    }
}

/// The platform as triggers see it. Weak: the platform owns the trigger tasks.
pub(crate) struct PlatformInvoker(pub(crate) Weak<Platform>);

impl Invoker for PlatformInvoker {
    fn invoke(
        &self,
        function: String,
        request_id: String,
        payload: Bytes,
        trigger: &'static str,
    ) -> BoxFuture<(Option<u32>, Result<Outcome>)> {
        let platform = self.0.upgrade();
        Box::pin(async move {
            match platform {
                Some(p) => p.run(&function, &request_id, payload, trigger).await,
                None => (None, Err(Error::ShuttingDown)),
            }
        })
    }

    fn capacity(&self, function: &str) -> (u32, String) {
        match self.0.upgrade() {
            Some(p) => p.capacity(function),
            None => (0, "the platform is shutting down".to_owned()),
        }
    }

    fn room(&self, function: &str) -> Option<shoal_dispatch::Room> {
        self.0.upgrade()?.dispatcher.room(function)
    }

    fn log(&self, function: &str, request_id: &str, message: String) {
        if let Some(p) = self.0.upgrade() {
            p.logs.system(function, "-", request_id, message);
        }
    }
}

impl Platform {
    /// How many calls `function` can have in flight without being refused: every slot its
    /// instances have or could have (instances up to `max_instances` at the limit new
    /// ones start with), bounded by what its wait queue holds beyond the slots open now.
    pub(crate) fn capacity(&self, function: &str) -> (u32, String) {
        let pools = self.dispatcher.status(Some(function));
        let Some(pool) = pools.iter().find(|p| !p.retired) else {
            return (0, "function not deployed".to_owned());
        };
        let open: u32 = pool.instances.iter().map(|i| i.limit).sum();
        let per_instance = pool.learned_limit.max(pool.limit).max(1);
        let reachable = per_instance.saturating_mul(pool.max_instances);
        let queue_room = u32::try_from(self.max_queue / 2).unwrap_or(u32::MAX);
        let cap = reachable.min(open.saturating_add(queue_room)).max(1);
        let why = if cap == reachable {
            format!(
                "{} instances max × limit {per_instance}",
                pool.max_instances
            )
        } else {
            format!("{open} open slots + {queue_room} waiting room")
        };
        (cap, why)
    }
}

impl From<QueueError> for Error {
    fn from(e: QueueError) -> Error {
        match e {
            QueueError::Full {
                pending_messages,
                pending_bytes,
            } => Error::EventStoreFull {
                pending_messages,
                pending_bytes,
            },
            other => Error::Queue(other),
        }
    }
}
