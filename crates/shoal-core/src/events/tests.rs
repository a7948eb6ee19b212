//! The event side on a paused clock: the real SQLite queue store (in a temporary
//! directory) and a fake invoker that answers as each test scripts it. Store time follows
//! tokio's paused clock, so minutes of backoff pass in milliseconds.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use shoal_dispatch::{BoxFuture, Outcome};
use shoal_manifest::{AsyncConfig, FunctionSpec, Runtime, ScheduleTrigger};
use shoal_queue::{Holder, QueueBackend, QueueConfig};
use tokio::sync::watch;

use super::*;

/// A call the fake invoker saw, with the store-clock time it came.
#[derive(Debug, Clone)]
struct Call {
    request_id: String,
    payload: String,
    trigger: &'static str,
    at_ms: i64,
}

/// How the fake answers: a script of results popped per call (the last one repeats).
struct Fake {
    answers: Mutex<VecDeque<Answer>>,
    calls: Mutex<Vec<Call>>,
    logs: Mutex<Vec<String>>,
    clock: Clock,
}

#[derive(Debug, Clone, Copy)]
enum Answer {
    Ok,
    Throw,
    Throttle,
    /// Success with this body (a partial batch response).
    Returns(&'static str),
}

impl Invoker for Fake {
    fn invoke(
        &self,
        function: String,
        request_id: String,
        payload: Bytes,
        trigger: &'static str,
    ) -> BoxFuture<(Option<u32>, crate::Result<Outcome>)> {
        self.calls.lock().unwrap().push(Call {
            request_id,
            payload: String::from_utf8_lossy(&payload).into_owned(),
            trigger,
            at_ms: (self.clock)(),
        });
        let answer = {
            let mut answers = self.answers.lock().unwrap();
            if answers.len() > 1 {
                answers.pop_front().unwrap()
            } else {
                *answers.front().unwrap_or(&Answer::Ok)
            }
        };
        Box::pin(async move {
            let result = match answer {
                Answer::Ok => Ok(Outcome::Success(Bytes::from_static(b"\"done\""))),
                Answer::Throw => Ok(Outcome::FunctionError {
                    error_type: "Error".into(),
                    body: Bytes::from_static(br#"{"errorType":"Error","errorMessage":"boom"}"#),
                }),
                Answer::Returns(body) => Ok(Outcome::Success(Bytes::from_static(body.as_bytes()))),
                Answer::Throttle => Err(crate::Error::Overloaded {
                    function,
                    retry_after: Duration::from_secs(1),
                }),
            };
            (Some(1), result)
        })
    }

    fn capacity(&self, _function: &str) -> (u32, String) {
        (10, "test".into())
    }

    fn room(&self, _function: &str) -> Option<shoal_dispatch::Room> {
        // Calls answer at once: ten slots, always free, on one fixed-limit instance.
        Some(shoal_dispatch::Room {
            slots: 10,
            busy: 0,
            instances: 1,
            starting: 0,
            max_instances: 1,
            per_instance: 10,
            auto: false,
            saturated: true,
            max_queue: 0,
        })
    }

    fn log(&self, _function: &str, _request_id: &str, message: String) {
        self.logs.lock().unwrap().push(message);
    }
}

/// The store, counting the calls that are waiting on its writer thread: while one is, the
/// paused clock must not move (see [`Rig::until`]).
struct Counting {
    inner: Arc<dyn QueueBackend>,
    outstanding: Arc<std::sync::atomic::AtomicUsize>,
}

struct Outstanding(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Counting {
    fn hold(&self) -> Outstanding {
        self.outstanding.fetch_add(1, Ordering::SeqCst);
        Outstanding(self.outstanding.clone())
    }
}

#[async_trait::async_trait]
impl QueueBackend for Counting {
    async fn create_queue(&self, name: &str, config: QueueConfig) -> shoal_queue::Result<()> {
        let _h = self.hold();
        self.inner.create_queue(name, config).await
    }
    async fn set_config(&self, name: &str, config: QueueConfig) -> shoal_queue::Result<()> {
        let _h = self.hold();
        self.inner.set_config(name, config).await
    }
    async fn delete_queue(&self, name: &str) -> shoal_queue::Result<()> {
        let _h = self.hold();
        self.inner.delete_queue(name).await
    }
    fn queue(&self, name: &str) -> shoal_queue::Result<shoal_queue::QueueInfo> {
        self.inner.queue(name)
    }
    fn list(&self, prefix: &str, internal: bool) -> Vec<shoal_queue::QueueInfo> {
        self.inner.list(prefix, internal)
    }
    async fn send(
        &self,
        queue: &str,
        messages: Vec<NewMessage>,
    ) -> shoal_queue::Result<Vec<shoal_queue::Sent>> {
        let _h = self.hold();
        self.inner.send(queue, messages).await
    }
    async fn receive(
        &self,
        queue: &str,
        max: usize,
        visibility_ms: Option<u64>,
        holder: Holder,
    ) -> shoal_queue::Result<shoal_queue::Receipts> {
        let _h = self.hold();
        self.inner.receive(queue, max, visibility_ms, holder).await
    }
    async fn wait(&self, queue: &str, timeout_ms: u64) {
        self.inner.wait(queue, timeout_ms).await
    }
    async fn settle(
        &self,
        queue: &str,
        entries: Vec<(String, shoal_queue::Settle)>,
    ) -> shoal_queue::Result<Vec<shoal_queue::Result<()>>> {
        let _h = self.hold();
        self.inner.settle(queue, entries).await
    }
    async fn change_visibility(
        &self,
        queue: &str,
        entries: Vec<(String, u64)>,
    ) -> shoal_queue::Result<Vec<shoal_queue::Result<()>>> {
        let _h = self.hold();
        self.inner.change_visibility(queue, entries).await
    }
    async fn purge(&self, queue: &str) -> shoal_queue::Result<u64> {
        let _h = self.hold();
        self.inner.purge(queue).await
    }
    async fn fire(
        &self,
        key: &str,
        fire_ms: i64,
        queue: &str,
        message: NewMessage,
    ) -> shoal_queue::Result<bool> {
        let _h = self.hold();
        self.inner.fire(key, fire_ms, queue, message).await
    }
    fn last_fire(&self, key: &str) -> Option<i64> {
        self.inner.last_fire(key)
    }
    async fn start_schedule(&self, key: &str, now_ms: i64) -> shoal_queue::Result<i64> {
        let _h = self.hold();
        self.inner.start_schedule(key, now_ms).await
    }
    async fn forget_schedules(&self, prefix: &str, keep: &[String]) -> shoal_queue::Result<()> {
        let _h = self.hold();
        self.inner.forget_schedules(prefix, keep).await
    }
    fn pending(&self) -> (u64, u64) {
        self.inner.pending()
    }
}

struct Rig {
    /// Store calls waiting on the writer thread.
    outstanding: Arc<std::sync::atomic::AtomicUsize>,
    ctx: Arc<Ctx>,
    fake: Arc<Fake>,
    /// The workers started, to see whether one is in the middle of an attempt.
    workers: Mutex<Vec<Arc<TriggerState>>>,
    _dir: tempdir::Dir,
    stop: watch::Sender<bool>,
}

mod tempdir {
    /// A directory removed when dropped.
    pub(super) struct Dir(pub(super) std::path::PathBuf);

    impl Dir {
        pub(super) fn new() -> Dir {
            let path = std::env::temp_dir().join(format!("shoal-events-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Store time that moves with tokio's (paused) clock, from a fixed epoch. The store reads
/// it on its own writer thread, which enters the test's runtime to see the paused clock.
fn paused_clock() -> Clock {
    let start = tokio::time::Instant::now();
    let runtime = tokio::runtime::Handle::current();
    Arc::new(move || {
        let _inside = runtime.enter();
        1_800_000_000_000 + start.elapsed().as_millis() as i64
    })
}

fn rig(answers: &[Answer], dir: Option<tempdir::Dir>) -> Rig {
    rig_with_clock(answers, dir, paused_clock())
}

fn rig_with_clock(answers: &[Answer], dir: Option<tempdir::Dir>, clock: Clock) -> Rig {
    let dir = dir.unwrap_or_else(tempdir::Dir::new);
    let store_clock = clock.clone();
    let backend = shoal_queue::SqliteQueues::open(
        &dir.0.join("events.db"),
        shoal_queue::Options {
            clock: Arc::new(move || store_clock()),
            // Commits must be quick next to the paused clock: while the test's runtime
            // waits for the store's thread, tokio moves the paused clock on.
            synchronous: shoal_queue::Synchronous::Normal,
            ..shoal_queue::Options::default()
        },
    )
    .unwrap();
    let counters = Arc::new(EventCounters::default());
    let outstanding = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let backend: Arc<dyn QueueBackend> = Arc::new(Counting {
        inner: backend,
        outstanding: outstanding.clone(),
    });
    let fake = Arc::new(Fake {
        answers: Mutex::new(answers.iter().copied().collect()),
        calls: Mutex::new(Vec::new()),
        logs: Mutex::new(Vec::new()),
        clock: clock.clone(),
    });
    let ctx = Arc::new(Ctx {
        queues: Arc::new(Metered::new(backend, counters.clone())),
        counters,
        invoker: fake.clone(),
        clock,
        retry_base_ms: 60_000,
        sources: None,
        schedule_clock: ScheduleClock::new(1),
    });
    let (stop, _) = watch::channel(false);
    Rig {
        outstanding,
        ctx,
        fake,
        workers: Mutex::new(Vec::new()),
        _dir: dir,
        stop,
    }
}

fn spec(async_invoke: AsyncConfig) -> FunctionSpec {
    let mut spec = FunctionSpec::new_default("f", Runtime::Nodejs, "index.handler");
    spec.timeout_ms = 3_000;
    spec.async_invoke = async_invoke;
    spec
}

impl Rig {
    fn start_worker(&self, spec: &FunctionSpec) -> Arc<TriggerState> {
        let state = Arc::new(TriggerState::default());
        tokio::spawn(worker::run(
            self.ctx.clone(),
            worker::Config::new(spec, self.ctx.retry_base_ms),
            state.clone(),
            self.stop.subscribe(),
        ));
        self.workers.lock().unwrap().push(state.clone());
        state
    }

    async fn event(&self, payload: &str) {
        let envelope = Envelope::new(format!("req-{payload}"), Source::Invoke, self.ctx.now());
        ensure_async_queue(&*self.ctx.queues, "f", 3_000)
            .await
            .unwrap();
        self.ctx
            .queues
            .send(
                &async_queue("f"),
                vec![NewMessage {
                    body: payload.to_owned(),
                    attributes: Some(envelope.encode()),
                    delay_ms: None,
                }],
            )
            .await
            .unwrap();
    }

    fn calls(&self) -> Vec<Call> {
        self.fake.calls.lock().unwrap().clone()
    }

    /// Let the paused clock run until `done` holds (or an hour of store time passes).
    ///
    /// While an attempt is in flight or a store call waits on the store's own thread, the
    /// clock is held still: tokio would otherwise move a paused clock on whenever this
    /// runtime has nothing to do, letting holds expire that a real clock never would.
    async fn until(&self, what: &str, done: impl Fn(&Rig) -> bool) {
        let mut steps = 0;
        while steps < 360_000 {
            if done(self) {
                return;
            }
            let busy = self.outstanding.load(Ordering::SeqCst) > 0
                || self
                    .workers
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|w| w.in_flight.load(Ordering::Relaxed) > 0);
            if busy {
                tokio::task::yield_now().await;
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            steps += 1;
        }
        panic!("timed out waiting for {what}; calls: {:?}", self.calls());
    }

    async fn drain(&self, queue: &str) -> Vec<serde_json::Value> {
        let got = self
            .ctx
            .queues
            .receive(queue, 100, None, Holder::External)
            .await
            .unwrap();
        got.messages
            .iter()
            .map(|m| serde_json::from_str(&m.body).unwrap())
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_event_is_retried_after_one_then_two_minutes_then_sent_to_its_destination() {
    let r = rig(&[Answer::Throw], None);
    r.ctx
        .queues
        .create_queue("failed", QueueConfig::default())
        .await
        .unwrap();
    let spec = spec(AsyncConfig {
        on_failure: Some("failed".into()),
        ..AsyncConfig::default()
    });
    let state = r.start_worker(&spec);
    r.event(r#"{"order":7}"#).await;
    r.until("the destination record", |_| {
        state.count_of("to_destination") == 1
    })
    .await;
    let calls = r.calls();
    assert_eq!(calls.len(), 3, "one attempt and two retries: {calls:?}");
    assert!(calls
        .iter()
        .all(|c| c.request_id == "req-{\"order\":7}" && c.trigger == "event"));
    assert!(
        calls.iter().all(|c| c.payload == r#"{"order":7}"#),
        "the same payload on every attempt"
    );
    let gap1 = calls[1].at_ms - calls[0].at_ms;
    let gap2 = calls[2].at_ms - calls[1].at_ms;
    assert!(
        (60_000..70_000).contains(&gap1),
        "first retry after {gap1} ms"
    );
    assert!(
        (120_000..130_000).contains(&gap2),
        "second retry after {gap2} ms"
    );
    let records = r.drain("failed").await;
    let record = &records[0];
    assert_eq!(record["version"], "1.0");
    assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 3);
    assert_eq!(record["requestContext"]["requestId"], "req-{\"order\":7}");
    assert_eq!(record["requestPayload"], serde_json::json!({"order": 7}));
    assert_eq!(record["responseContext"]["functionError"], "Unhandled");
    assert_eq!(record["responsePayload"]["errorMessage"], "boom");
    let queue = r.ctx.queues.queue(&async_queue("f")).unwrap().stats;
    assert_eq!(
        queue.visible + queue.in_flight + queue.delayed,
        0,
        "nothing left behind"
    );
    assert_eq!(r.ctx.counters.function_count("f", "retried"), 2);
    assert_eq!(r.ctx.counters.function_count("f", "to_destination"), 1);
    assert_eq!(state.in_flight.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn an_event_that_succeeds_on_retry_is_deleted_and_goes_nowhere_else() {
    let r = rig(&[Answer::Throw, Answer::Ok], None);
    r.start_worker(&spec(AsyncConfig::default()));
    r.event("1").await;
    r.until("two attempts", |r| r.calls().len() == 2).await;
    r.until("the event settled", |r| {
        r.ctx.counters.function_count("f", "succeeded") == 1
    })
    .await;
    assert_eq!(r.ctx.counters.function_count("f", "succeeded"), 1);
    assert!(r.ctx.counters.dropped_counts("f").is_empty());
    // Nothing more happens later.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(r.calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_event_past_its_maximum_age_gives_up_with_event_age_exceeded() {
    let r = rig(&[Answer::Throw], None);
    r.ctx
        .queues
        .create_queue("failed", QueueConfig::default())
        .await
        .unwrap();
    // First retry at ~60 s is inside 100 s; the second would start at ~180 s: too old.
    r.start_worker(&spec(AsyncConfig {
        maximum_event_age_ms: 100_000,
        on_failure: Some("failed".into()),
        ..AsyncConfig::default()
    }));
    r.event("old").await;
    r.until("the destination record", |r| {
        r.ctx.queues.queue("failed").unwrap().stats.visible == 1
    })
    .await;
    assert_eq!(r.calls().len(), 2);
    let record = &r.drain("failed").await[0];
    assert_eq!(record["requestContext"]["condition"], "EventAgeExceeded");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 2);
}

#[tokio::test(start_paused = true)]
async fn without_a_destination_a_given_up_event_is_dropped_counted_and_logged() {
    let r = rig(&[Answer::Throw], None);
    r.start_worker(&spec(AsyncConfig {
        maximum_retry_attempts: 0,
        ..AsyncConfig::default()
    }));
    r.event("x").await;
    r.until("the drop", |r| {
        !r.ctx.counters.dropped_counts("f").is_empty()
    })
    .await;
    assert_eq!(r.calls().len(), 1, "zero retries");
    assert_eq!(
        r.ctx.counters.dropped_counts("f"),
        vec![("retries_exhausted".to_owned(), 1)]
    );
    let logs = r.fake.logs.lock().unwrap().clone();
    assert!(
        logs.iter()
            .any(|l| l.contains("dropped") && l.contains("RetriesExhausted")),
        "{logs:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn throttled_events_back_off_without_using_their_retries() {
    let mut answers = vec![Answer::Throttle; 5];
    answers.push(Answer::Ok);
    let r = rig(&answers, None);
    r.start_worker(&spec(AsyncConfig {
        maximum_retry_attempts: 0,
        ..AsyncConfig::default()
    }));
    r.event("t").await;
    r.until("a success", |r| {
        r.ctx.counters.function_count("f", "succeeded") == 1
    })
    .await;
    let calls = r.calls();
    assert_eq!(calls.len(), 6, "five throttles then the run: {calls:?}");
    let gaps: Vec<i64> = calls.windows(2).map(|w| w[1].at_ms - w[0].at_ms).collect();
    let waits = [1_000, 2_000, 4_000, 8_000, 16_000];
    assert!(
        gaps.iter().zip(waits).all(|(gap, wait)| *gap >= wait),
        "each throttle waits at least twice the one before: {gaps:?}"
    );
    assert!(r.ctx.counters.dropped_counts("f").is_empty());
}

fn schedule(expression: &str) -> ScheduleTrigger {
    ScheduleTrigger {
        expression: expression.into(),
        timezone: None,
        input: None,
        enabled: true,
    }
}

fn start_schedule(
    r: &Rig,
    trigger: &ScheduleTrigger,
    stop: watch::Receiver<bool>,
) -> Arc<TriggerState> {
    let state = Arc::new(TriggerState::default());
    tokio::spawn(scheduler::run(
        r.ctx.clone(),
        "f".into(),
        0,
        trigger.clone(),
        state.clone(),
        stop,
    ));
    state
}

#[tokio::test(start_paused = true)]
async fn a_schedule_fires_on_time_and_a_restart_neither_repeats_nor_skips() {
    let dir = tempdir::Dir::new();
    let dir_path = dir.0.clone();
    let trigger = schedule("rate(1 minute)");
    let fires = |r: &Rig| {
        r.ctx
            .queues
            .queue(&async_queue("f"))
            .map_or(0, |q| q.stats.visible)
    };
    let clock = paused_clock();
    {
        let r = rig_with_clock(&[Answer::Ok], Some(dir), clock.clone());
        ensure_async_queue(&*r.ctx.queues, "f", 3_000)
            .await
            .unwrap();
        let state = start_schedule(&r, &trigger, r.stop.subscribe());
        r.until("three fires", |_| state.count_of("fired") == 3)
            .await;
        assert_eq!(fires(&r), 3);
        let _ = r.stop.send(true);
        tokio::time::sleep(Duration::from_millis(10)).await;
        // The rig's store is dropped here, like a daemon that stopped.
        std::mem::forget(r._dir);
    }
    // Stopped for ten and a half minutes, then started again on the same store.
    tokio::time::sleep(Duration::from_secs(630)).await;
    let r = rig_with_clock(&[Answer::Ok], Some(tempdir::Dir(dir_path)), clock);
    let state = start_schedule(&r, &trigger, r.stop.subscribe());
    r.until("three fires after the restart", |_| {
        state.count_of("fired") >= 3
    })
    .await;
    let _ = r.stop.send(true);
    let messages = r
        .ctx
        .queues
        .receive(&async_queue("f"), 100, None, Holder::External)
        .await
        .unwrap()
        .messages;
    let mut fired: Vec<(String, bool)> = messages
        .iter()
        .map(|m| {
            let event: serde_json::Value = serde_json::from_str(&m.body).unwrap();
            let late = Envelope::decode(m.attributes.as_deref()).unwrap().late;
            (event["time"].as_str().unwrap().to_owned(), late)
        })
        .collect();
    fired.sort();
    let minute = |n: i64| shoal_events::iso8601_seconds(1_800_000_000_000 + n * 60_000);
    // Before the stop: minutes 1, 2, 3, on time. Stopped from minute 3 to 10.5: minutes
    // 4..=12 passed unseen; only the latest, 13 (the last one before the restart), is
    // delivered, marked late; then 14, 15, ... — never one time twice, no skipped minute
    // after the restart.
    let times: Vec<&str> = fired.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(&times[..3], &[minute(1), minute(2), minute(3)], "{fired:?}");
    let restart_minute = (3..60)
        .find(|n| minute(*n) == times[3])
        .unwrap_or_else(|| panic!("the first fire after the restart is on a minute: {fired:?}"));
    assert!(
        restart_minute >= 13,
        "a missed minute from the stop was delivered: {fired:?}"
    );
    assert!(fired[3].1, "the catch-up fire is marked late: {fired:?}");
    for (k, (time, _)) in fired.iter().enumerate().skip(3) {
        assert_eq!(*time, minute(restart_minute + (k as i64 - 3)), "{fired:?}");
    }
    assert!(!fired[..3].iter().any(|(_, late)| *late), "{fired:?}");
}

/// An in-memory change feed: changes in order until acknowledged.
#[derive(Default)]
struct MemoryFeed {
    pending: Mutex<Vec<changes::Change>>,
    acked: Mutex<Vec<i64>>,
}

#[async_trait::async_trait]
impl ChangeFeed for MemoryFeed {
    async fn read(&self, max: usize) -> Result<Vec<Change>, SourceError> {
        Ok(self
            .pending
            .lock()
            .unwrap()
            .iter()
            .take(max)
            .cloned()
            .collect())
    }
    async fn ack(&self, sequences: &[i64]) -> Result<(), SourceError> {
        self.pending
            .lock()
            .unwrap()
            .retain(|c| !sequences.contains(&c.sequence));
        self.acked.lock().unwrap().extend_from_slice(sequences);
        Ok(())
    }
    async fn lag(&self) -> Result<Lag, SourceError> {
        Ok(Lag {
            records: self.pending.lock().unwrap().len() as u64,
            ..Lag::default()
        })
    }
}

struct OneFeed(Arc<MemoryFeed>);

#[async_trait::async_trait]
impl ChangeSources for OneFeed {
    async fn open(
        &self,
        _url: &str,
        _stream: &str,
        _trigger: &PostgresTrigger,
    ) -> Result<Arc<dyn ChangeFeed>, SourceError> {
        Ok(self.0.clone())
    }
    async fn check(&self, _: &str, _: &str, _: &PostgresTrigger) -> Result<(), SourceError> {
        Ok(())
    }
    async fn remove(&self, _: &str, _: &str, _: &PostgresTrigger) -> Result<u64, SourceError> {
        Ok(0)
    }
}

fn change(sequence: i64, key: i64) -> Change {
    Change {
        sequence,
        op: ChangeOp::Insert,
        changed_at_ms: 1_800_000_000_000,
        keys: format!("{{\"id\": {key}}}"),
        new_image: Some(format!("{{\"id\": {key}}}")),
        old_image: None,
    }
}

/// A one-lane postgres trigger task over `feed`, with 2 retries and `on_failure`.
fn start_changes(
    r: &Rig,
    feed: &Arc<MemoryFeed>,
    batch_size: u32,
    report_batch_item_failures: bool,
) -> Arc<TriggerState> {
    let trigger = PostgresTrigger {
        url_env: "DATABASE_URL".into(),
        schema: "public".into(),
        table: "orders".into(),
        operations: vec!["INSERT".into()],
        batch_size,
        batching_window_ms: 0,
        parallelization_factor: 1,
        maximum_retry_attempts: 2,
        report_batch_item_failures,
        on_failure: Some("changes-failed".into()),
    };
    let state = Arc::new(TriggerState::default());
    r.workers.lock().unwrap().push(state.clone());
    let task = changes::Task {
        function: "f".into(),
        stream: "f:public.orders".into(),
        url: "postgres://test".into(),
        trigger,
        sources: Arc::new(OneFeed(feed.clone())),
        turn: Arc::default(),
    };
    tokio::spawn(changes::run(
        r.ctx.clone(),
        task,
        state.clone(),
        Arc::new(changes::StreamState::default()),
        r.stop.subscribe(),
    ));
    state
}

/// The sequence numbers of each call's records.
fn sequences(calls: &[Call]) -> Vec<Vec<i64>> {
    calls
        .iter()
        .map(|c| {
            let v: serde_json::Value = serde_json::from_str(&c.payload).unwrap();
            v["Records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    r["dynamodb"]["SequenceNumber"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap()
                })
                .collect()
        })
        .collect()
}

/// A partial batch response: the records before the first one named are done, the batch
/// is retried from it (not from the start), and a record it never names again is done.
#[tokio::test(start_paused = true)]
async fn batch_item_failures_retry_a_batch_from_the_first_record_named() {
    let r = rig(
        &[
            Answer::Returns(
                r#"{"batchItemFailures":[{"itemIdentifier":"3"},{"itemIdentifier":"2"}]}"#,
            ),
            Answer::Returns(r#"{"batchItemFailures":[]}"#),
        ],
        None,
    );
    r.ctx
        .queues
        .create_queue("changes-failed", QueueConfig::default())
        .await
        .unwrap();
    let feed = Arc::new(MemoryFeed::default());
    feed.pending
        .lock()
        .unwrap()
        .extend([change(1, 1), change(2, 1), change(3, 1), change(4, 1)]);
    let state = start_changes(&r, &feed, 4, true);
    r.until("every change settled", |_| {
        feed.acked.lock().unwrap().len() == 4
    })
    .await;
    assert_eq!(sequences(&r.calls()), [vec![1, 2, 3, 4], vec![2, 3, 4]]);
    assert_eq!(*feed.acked.lock().unwrap(), [1, 2, 3, 4]);
    assert_eq!(state.count_of("retried"), 3);
    assert_eq!(state.count_of("to_destination"), 0);
}

/// One lane, one record per batch: a throttle costs no retry, a failing record is tried
/// 1 + 2 times 1 s then 2 s apart, goes to `on_failure` with the record, and its key's
/// next change is delivered after it; every change is acknowledged once settled.
#[tokio::test(start_paused = true)]
async fn a_failing_change_is_retried_with_backoff_then_sent_to_on_failure_and_the_stream_goes_on() {
    let r = rig(
        &[
            Answer::Throttle,
            Answer::Throw,
            Answer::Throw,
            Answer::Throw,
            Answer::Ok,
        ],
        None,
    );
    r.ctx
        .queues
        .create_queue("changes-failed", QueueConfig::default())
        .await
        .unwrap();
    let feed = Arc::new(MemoryFeed::default());
    feed.pending
        .lock()
        .unwrap()
        .extend([change(1, 7), change(2, 7), change(3, 8)]);
    let state = start_changes(&r, &feed, 1, false);
    r.until("every change settled", |_| {
        feed.acked.lock().unwrap().len() == 3
    })
    .await;
    let calls = r.calls();
    let order: Vec<i64> = sequences(&calls).iter().map(|s| s[0]).collect();
    assert_eq!(order, [1, 1, 1, 1, 2, 3], "calls: {calls:?}");
    assert!(calls.iter().all(|c| c.trigger == "postgres"));
    // Throttle → 1 s → fail → 1 s → fail → 2 s → fail → destination.
    let gaps: Vec<i64> = calls.windows(2).map(|w| w[1].at_ms - w[0].at_ms).collect();
    assert!(
        (1_000..1_500).contains(&gaps[1]),
        "first retry after {} ms",
        gaps[1]
    );
    assert!(
        (2_000..2_500).contains(&gaps[2]),
        "second retry after {} ms",
        gaps[2]
    );
    assert_eq!(*feed.acked.lock().unwrap(), [1, 2, 3]);
    let records = r.drain("changes-failed").await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["requestContext"]["approximateInvokeCount"], 3);
    assert_eq!(records[0]["Records"][0]["dynamodb"]["SequenceNumber"], "1");
    assert_eq!(state.count_of("to_destination"), 1);
    assert_eq!(state.count_of("retried"), 2);
    assert_eq!(state.count_of("throttled"), 1);
}
