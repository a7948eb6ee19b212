//! Deterministic tests of the dispatcher with fake instances and a paused tokio clock.
//!
//! A fake instance "runs" an invocation by sleeping for the number of milliseconds in its
//! payload (or failing when the payload says so); time only moves when every task waits.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use shoal_dispatch::{
    BoxFuture, BudgetRefusal, Decision, DispatchError, Dispatcher, ErrorType, InstanceFailure,
    InstanceHandle, InstanceLauncher, Invocation, LaunchError, LaunchReason, LaunchRequest,
    Outcome, PoolConfig, PoolStatus, DECISION_HISTORY,
};
use tokio::sync::watch;

#[derive(Default)]
struct FakeLauncher {
    launches: AtomicUsize,
    start_delay_ms: u64,
    fail_starts: bool,
    /// Each call an instance takes adds this much to its RSS (a leak).
    leak_kib_per_call: u64,
    live: Arc<AtomicUsize>,
    /// Highest in-flight count any one instance saw.
    peak_in_flight: Arc<AtomicU32>,
    instances: Mutex<Vec<Arc<FakeInstance>>>,
    /// `max_concurrency` of each launch request (what each runtime was told), in order.
    told: Mutex<Vec<u32>>,
    /// Calls an instance received beyond what it was told.
    over_told: Arc<AtomicUsize>,
    /// Instances whose core is always busy (CPU time grows with the clock), like a
    /// runtime that computes without pause.
    always_busy: bool,
    /// When set, instances report run-queue wait (`run_wait`): this many milliseconds per
    /// second of the clock, like a host whose cores other work holds. Changed mid-test.
    host_wait_ms_per_s: Option<Arc<AtomicU64>>,
}

struct FakeInstance {
    /// CPU "used" so far: each finished call adds the CPU part of its payload.
    cpu_ms: Arc<std::sync::atomic::AtomicU64>,
    rss_kib: AtomicU64,
    leak_kib_per_call: u64,
    id: String,
    version: u32,
    in_flight: Arc<AtomicU32>,
    peak: Arc<AtomicU32>,
    live: Arc<AtomicUsize>,
    exit: watch::Sender<Option<String>>,
    /// Its channel is closed but its exit not yet seen: every call is refused unrun.
    refusing: std::sync::atomic::AtomicBool,
    told: u32,
    over_told: Arc<AtomicUsize>,
    /// Set when its core is always busy: CPU time counts from here.
    busy_since: Option<tokio::time::Instant>,
    host_wait: Option<HostWait>,
}

/// Run-queue wait a fake instance accrues at the host's rate (see
/// `FakeLauncher::host_wait_ms_per_s`).
struct HostWait {
    ms_per_s: Arc<AtomicU64>,
    /// The wait accrued up to when it was last read.
    accrued: Mutex<(Duration, tokio::time::Instant)>,
}

impl InstanceLauncher for FakeLauncher {
    fn launch(
        &self,
        request: LaunchRequest,
    ) -> BoxFuture<Result<Arc<dyn InstanceHandle>, LaunchError>> {
        self.launches.fetch_add(1, Ordering::SeqCst);
        self.told.lock().unwrap().push(request.max_concurrency);
        let delay = self.start_delay_ms;
        let fail = self.fail_starts;
        let instance = Arc::new(FakeInstance {
            cpu_ms: Default::default(),
            rss_kib: AtomicU64::new(50_000),
            leak_kib_per_call: self.leak_kib_per_call,
            id: request.instance_id,
            version: request.version,
            in_flight: Arc::new(AtomicU32::new(0)),
            peak: self.peak_in_flight.clone(),
            live: self.live.clone(),
            exit: watch::channel(None).0,
            refusing: Default::default(),
            told: request.max_concurrency,
            over_told: self.over_told.clone(),
            busy_since: self.always_busy.then(tokio::time::Instant::now),
            host_wait: self.host_wait_ms_per_s.clone().map(|ms_per_s| HostWait {
                ms_per_s,
                accrued: Mutex::new((Duration::ZERO, tokio::time::Instant::now())),
            }),
        });
        if !fail {
            self.instances.lock().unwrap().push(instance.clone());
        }
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            if fail {
                return Err(LaunchError::new(
                    ErrorType::ImportModuleError,
                    "no index.js",
                ));
            }
            instance.live.fetch_add(1, Ordering::SeqCst);
            Ok(instance as Arc<dyn InstanceHandle>)
        })
    }
}

impl FakeInstance {
    fn crash(&self) {
        self.exit.send_replace(Some("exit code 1".into()));
    }
}

impl InstanceHandle for FakeInstance {
    fn invoke(&self, invocation: Invocation) -> BoxFuture<Result<Outcome, InstanceFailure>> {
        if self.refusing.load(Ordering::SeqCst) {
            let instance = self.id.clone();
            return Box::pin(async move { Err(InstanceFailure::Unavailable { instance }) });
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        if now > self.told {
            self.over_told.fetch_add(1, Ordering::SeqCst);
        }
        self.rss_kib
            .fetch_add(self.leak_kib_per_call, Ordering::SeqCst);
        let text = String::from_utf8(invocation.payload.to_vec()).unwrap();
        let mut exit = self.exit.subscribe();
        let id = self.id.clone();
        let version = self.version;
        let cpu_ms = self.cpu_ms.clone();
        // The in-flight counter is decremented by a guard so cancelled futures count too.
        struct Done(Arc<AtomicU32>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let done = Done(self.in_flight.clone());
        Box::pin(async move {
            let _done = done;
            if text == "throw" {
                return Ok(Outcome::FunctionError {
                    error_type: "Error".into(),
                    body: Bytes::from_static(b"{}"),
                });
            }
            // "WAIT" or "WAIT/CPU" in milliseconds.
            let (ms, cpu) = text.split_once('/').unwrap_or((&text, "0"));
            let (ms, cpu): (u64, u64) = (ms.parse().unwrap_or(0), cpu.parse().unwrap_or(0));
            cpu_ms.fetch_add(cpu, Ordering::SeqCst);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => {
                    Ok(Outcome::Success(Bytes::from(format!("{id}@v{version}"))))
                }
                _ = exit.wait_for(|e| e.is_some()) => {
                    Err(InstanceFailure::Crashed { instance: id.clone(), detail: "exit code 1".into() })
                }
            }
        })
    }

    fn exited(&self) -> BoxFuture<String> {
        let mut exit = self.exit.subscribe();
        Box::pin(async move {
            let reason = exit
                .wait_for(|e| e.is_some())
                .await
                .map(|e| e.clone().unwrap());
            reason.unwrap_or_else(|_| "dropped".into())
        })
    }

    fn stop(&self) {
        if self.exit.borrow().is_none() {
            self.live.fetch_sub(1, Ordering::SeqCst);
            self.exit.send_replace(Some("stopped".into()));
        }
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    fn resources(&self) -> Option<shoal_dispatch::Resources> {
        Some(shoal_dispatch::Resources {
            cpu_time: Duration::from_millis(self.cpu_ms.load(Ordering::SeqCst))
                + self.busy_since.map_or(Duration::ZERO, |s| s.elapsed()),
            rss_kib: self.rss_kib.load(Ordering::SeqCst),
        })
    }

    fn run_wait(&self) -> Option<Duration> {
        let host = self.host_wait.as_ref()?;
        let mut accrued = host.accrued.lock().unwrap();
        let now = tokio::time::Instant::now();
        let per_s = host.ms_per_s.load(Ordering::SeqCst) as f64 / 1000.0;
        let since = now.duration_since(accrued.1);
        accrued.0 += since.mul_f64(per_s);
        accrued.1 = now;
        Some(accrued.0)
    }
}

fn config(limit: u32) -> PoolConfig {
    PoolConfig {
        limit,
        auto: false,
        memory_limit_kib: 0,
        max_concurrency: 256,
        max_instances: 100,
        min_instances: 0,
        idle_timeout: Duration::from_secs(300),
        max_queue: 1000,
        timeout: Duration::from_secs(30),
        target_cpu: 0.8,
        latency_tolerance: 1.5,
        sized_at_start: false,
        probe: false,
    }
}

fn setup(launcher: FakeLauncher, cfg: PoolConfig) -> (Arc<FakeLauncher>, Arc<Dispatcher>) {
    let launcher = Arc::new(launcher);
    let dispatcher = Dispatcher::new(launcher.clone());
    dispatcher.deploy("f", 1, cfg);
    (launcher, dispatcher)
}

/// Fire `n` concurrent invocations with the given payload; collect results in order.
async fn burst(
    d: &Arc<Dispatcher>,
    n: usize,
    payload: &'static str,
) -> Vec<Result<Outcome, DispatchError>> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(async move {
                d.invoke("f", format!("r{i}"), Bytes::from_static(payload.as_bytes()))
                    .await
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// The pool's recorded decisions, oldest first.
fn decisions(status: &PoolStatus) -> Vec<&Decision> {
    status.decisions.iter().map(|r| &r.decision).collect()
}

fn instance_of(r: &Result<Outcome, DispatchError>) -> String {
    match r {
        Ok(Outcome::Success(b)) => String::from_utf8(b.to_vec()).unwrap(),
        other => panic!("expected success, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn burst_on_cold_function_starts_one_instance_when_limit_allows() {
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 300,
            ..Default::default()
        },
        config(64),
    );
    let results = burst(&d, 10, "2000").await;
    let instances: std::collections::BTreeSet<_> = results.iter().map(instance_of).collect();
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 1);
    assert_eq!(launcher.peak_in_flight.load(Ordering::SeqCst), 10);
}

#[tokio::test(start_paused = true)]
async fn limit_one_starts_one_instance_per_concurrent_call() {
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 300,
            ..Default::default()
        },
        config(1),
    );
    let results = burst(&d, 10, "2000").await;
    let instances: std::collections::BTreeSet<_> = results.iter().map(instance_of).collect();
    assert_eq!(instances.len(), 10);
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 10);
    assert_eq!(launcher.peak_in_flight.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn burst_starts_ceil_excess_over_limit() {
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 300,
            ..Default::default()
        },
        config(4),
    );
    let results = burst(&d, 10, "1000").await;
    assert!(results.iter().all(|r| r.is_ok()));
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 3, "ceil(10/4)");
    assert!(launcher.peak_in_flight.load(Ordering::SeqCst) <= 4);
}

#[tokio::test(start_paused = true)]
async fn warm_instance_with_room_is_used_instead_of_starting_another() {
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 300,
            ..Default::default()
        },
        config(8),
    );
    burst(&d, 1, "10").await;
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 1);
    let results = burst(&d, 8, "500").await;
    assert!(results.iter().all(|r| r.is_ok()));
    assert_eq!(
        launcher.launches.load(Ordering::SeqCst),
        1,
        "the running instance had room for 8"
    );
    // Nine at once exceeds it by one: exactly one more instance.
    burst(&d, 9, "500").await;
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn max_instances_queues_the_rest_serially() {
    let mut cfg = config(1);
    cfg.max_instances = 4;
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 100,
            ..Default::default()
        },
        cfg,
    );
    let start = tokio::time::Instant::now();
    let results = burst(&d, 10, "1000").await;
    assert!(results.iter().all(|r| r.is_ok()));
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 4);
    // Ten one-second calls on four serial instances take three rounds.
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(3000) && took < Duration::from_millis(3200),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn queue_beyond_bound_is_refused_with_overloaded() {
    let mut cfg = config(1);
    cfg.max_instances = 1;
    cfg.max_queue = 3;
    let (_launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 10,
            ..Default::default()
        },
        cfg,
    );
    let results = burst(&d, 6, "100").await;
    let overloaded = results
        .iter()
        .filter(|r| matches!(r, Err(DispatchError::Overloaded { .. })))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    // 3 waiting (one of them gets the single slot when it starts), the rest refused at once.
    assert_eq!(overloaded, 3, "{results:?}");
    assert_eq!(ok, 3);
}

#[tokio::test(start_paused = true)]
async fn timeout_covers_queueing_and_running() {
    let mut cfg = config(1);
    cfg.max_instances = 1;
    cfg.timeout = Duration::from_secs(1);
    let (_launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 10,
            ..Default::default()
        },
        cfg,
    );
    let results = burst(&d, 3, "700").await;
    assert!(results[0].is_ok());
    // The second waits ~700 ms then would run 700 more: past its 1 s deadline.
    assert!(matches!(results[1], Err(DispatchError::Timeout(t)) if t == Duration::from_secs(1)));
    assert_eq!(
        results[1].as_ref().unwrap_err().to_string(),
        "Task timed out after 1.00 seconds"
    );
}

#[tokio::test(start_paused = true)]
async fn redeploy_drains_old_version_and_routes_new_calls_to_new_one() {
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 100,
            ..Default::default()
        },
        config(16),
    );
    let old_calls = {
        let d = d.clone();
        tokio::spawn(async move { burst(&d, 5, "1000").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.deploy("f", 2, config(16));
    let new_results = burst(&d, 3, "10").await;
    for r in &new_results {
        assert!(instance_of(r).ends_with("@v2"));
    }
    for r in old_calls.await.unwrap() {
        assert!(
            instance_of(&r).ends_with("@v1"),
            "in-flight work finished on the old version"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = d.status(Some("f"));
    assert_eq!(
        status.len(),
        1,
        "the old pool is gone once drained: {status:?}"
    );
    assert_eq!(status[0].version, 2);
    assert_eq!(
        launcher.live.load(Ordering::SeqCst),
        1,
        "only the v2 instance runs"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_instances_stop_after_idle_timeout_and_next_call_cold_starts() {
    let mut cfg = config(4);
    cfg.idle_timeout = Duration::from_secs(5);
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 100,
            ..Default::default()
        },
        cfg,
    );
    burst(&d, 8, "100").await;
    assert_eq!(launcher.live.load(Ordering::SeqCst), 2);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(launcher.live.load(Ordering::SeqCst), 0, "scaled to zero");
    let status = &d.status(Some("f"))[0];
    let idle_stops = decisions(status)
        .into_iter()
        .filter(|d| {
            matches!(d, Decision::IdleStop { idle_timeout, .. }
                if *idle_timeout == Duration::from_secs(5))
        })
        .count();
    assert_eq!(idle_stops, 2, "{:#?}", status.decisions);
    let r = burst(&d, 1, "10").await;
    assert!(r[0].is_ok());
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn min_instances_stay_warm() {
    let mut cfg = config(4);
    cfg.idle_timeout = Duration::from_secs(1);
    cfg.min_instances = 1;
    let (launcher, _d) = setup(
        FakeLauncher {
            start_delay_ms: 100,
            ..Default::default()
        },
        cfg,
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(launcher.live.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn failed_start_fails_waiters_and_backs_off() {
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 50,
            fail_starts: true,
            ..Default::default()
        },
        config(8),
    );
    let results = burst(&d, 5, "10").await;
    for r in &results {
        assert!(
            matches!(r, Err(DispatchError::InitFailed(e)) if e.error_type == ErrorType::ImportModuleError),
            "{r:?}"
        );
    }
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 1);
    let status = &d.status(Some("f"))[0];
    assert!(
        matches!(
            decisions(status).last(),
            Some(Decision::LaunchFailed { failures: 1, retry_after, error })
                if *retry_after == Duration::from_millis(200)
                    && error.error_type == ErrorType::ImportModuleError
        ),
        "{:#?}",
        status.decisions
    );
    // Within the backoff window calls fail fast without another start.
    burst(&d, 3, "10").await;
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    burst(&d, 1, "10").await;
    assert_eq!(
        launcher.launches.load(Ordering::SeqCst),
        2,
        "retried after the backoff"
    );
}

#[tokio::test(start_paused = true)]
async fn one_function_error_does_not_affect_concurrent_calls() {
    let (_launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 10,
            ..Default::default()
        },
        config(8),
    );
    let ok = {
        let d = d.clone();
        tokio::spawn(async move { burst(&d, 4, "200").await })
    };
    let err = d
        .invoke("f", "x".into(), Bytes::from_static(b"throw"))
        .await;
    assert!(matches!(err, Ok(Outcome::FunctionError { .. })));
    assert!(ok
        .await
        .unwrap()
        .iter()
        .all(|r| matches!(r, Ok(Outcome::Success(_)))));
}

#[tokio::test(start_paused = true)]
async fn crash_fails_in_flight_calls_and_is_replaced() {
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 10,
            ..Default::default()
        },
        config(8),
    );
    let calls = {
        let d = d.clone();
        tokio::spawn(async move { burst(&d, 3, "5000").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    launcher.instances.lock().unwrap()[0].crash();
    for r in calls.await.unwrap() {
        assert!(
            matches!(
                r,
                Err(DispatchError::Instance(InstanceFailure::Crashed { .. }))
            ),
            "{r:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let status = &d.status(Some("f"))[0];
    let crashed = launcher.instances.lock().unwrap()[0].id.clone();
    assert!(
        matches!(
            decisions(status).last(),
            Some(Decision::InstanceExited { instance, .. }) if *instance == crashed
        ),
        "{:#?}",
        status.decisions
    );
    assert!(burst(&d, 1, "10").await[0].is_ok());
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 2);
}

/// An instance whose process died a moment ago refuses calls before its exit is seen; a
/// call that meets it runs on a fresh instance instead of failing.
#[tokio::test(start_paused = true)]
async fn a_call_refused_unrun_by_a_dying_instance_runs_elsewhere() {
    let (launcher, d) = setup(FakeLauncher::default(), config(8));
    let first = burst(&d, 1, "10").await.remove(0).unwrap();
    let dying = launcher.instances.lock().unwrap()[0].clone();
    dying.refusing.store(true, Ordering::SeqCst);
    let second = burst(&d, 1, "10").await.remove(0);
    let Ok(Outcome::Success(second)) = second else {
        panic!("{second:?}")
    };
    assert_ne!(
        Outcome::Success(second.clone()),
        first,
        "answered by the dying instance"
    );
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 2);
    // The refusing instance was asked to stop, and takes no more calls.
    assert!(dying.exit.borrow().is_some());
    assert!(burst(&d, 3, "10").await.iter().all(|r| r.is_ok()));
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn unknown_function_is_not_found_and_removed_function_too() {
    let (_launcher, d) = setup(FakeLauncher::default(), config(8));
    assert!(matches!(
        d.invoke("nope", "r".into(), Bytes::new()).await,
        Err(DispatchError::NotFound(_))
    ));
    assert!(d.remove("f"));
    assert!(matches!(
        d.invoke("f", "r".into(), Bytes::new()).await,
        Err(DispatchError::NotFound(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_in_flight_finish_then_stops_instances() {
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 10,
            ..Default::default()
        },
        config(8),
    );
    let calls = {
        let d = d.clone();
        tokio::spawn(async move { burst(&d, 3, "500").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    d.shutdown(Duration::from_secs(5)).await;
    assert!(calls.await.unwrap().iter().all(|r| r.is_ok()));
    assert_eq!(launcher.live.load(Ordering::SeqCst), 0);
    assert!(matches!(
        d.invoke("f", "r".into(), Bytes::new()).await,
        Err(DispatchError::ShuttingDown)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_call_keeps_its_slot_and_a_stuck_instance_is_stopped() {
    let mut cfg = config(1);
    cfg.max_instances = 1;
    cfg.timeout = Duration::from_secs(3);
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 10,
            ..Default::default()
        },
        cfg,
    );
    let first = {
        let d = d.clone();
        tokio::spawn(async move {
            d.invoke("f", "a".into(), Bytes::from_static(b"60000"))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert!(matches!(
        first.await.unwrap(),
        Err(DispatchError::Timeout(_))
    ));
    let start = tokio::time::Instant::now();
    let second = d.invoke("f", "b".into(), Bytes::from_static(b"10")).await;
    assert!(second.is_ok(), "{second:?}");
    // The slot stayed taken until the stuck instance was stopped (deadline + grace).
    assert!(
        start.elapsed() >= Duration::from_millis(1800),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        launcher.peak_in_flight.load(Ordering::SeqCst),
        1,
        "never two calls in one instance"
    );
    assert_eq!(
        launcher.launches.load(Ordering::SeqCst),
        2,
        "the stuck instance was replaced"
    );
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_leaves_mid_call_keeps_the_slot_until_the_instance_answers() {
    let mut cfg = config(1);
    cfg.max_instances = 1;
    cfg.timeout = Duration::from_secs(30);
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 10,
            ..Default::default()
        },
        cfg,
    );
    // The first caller goes away (a client disconnecting) while its 2 s call runs.
    let first = {
        let d = d.clone();
        tokio::spawn(async move { d.invoke("f", "a".into(), Bytes::from_static(b"2000")).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    let start = tokio::time::Instant::now();
    let second = d.invoke("f", "b".into(), Bytes::from_static(b"10")).await;
    assert!(second.is_ok(), "{second:?}");
    // The second call waited for the first to finish on the instance (about 1.5 s more).
    assert!(
        start.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        launcher.peak_in_flight.load(Ordering::SeqCst),
        1,
        "never two calls in one instance"
    );
    assert_eq!(
        launcher.launches.load(Ordering::SeqCst),
        1,
        "an instance that answered is not stuck"
    );
}

/// `loops` callers, each calling again as soon as its call returns, for `for_how_long`.
async fn sustained(
    d: &Arc<Dispatcher>,
    loops: usize,
    payload: &'static str,
    for_how_long: Duration,
) -> usize {
    let until = tokio::time::Instant::now() + for_how_long;
    let tasks: Vec<_> = (0..loops)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(async move {
                let mut ok = 0;
                while tokio::time::Instant::now() < until {
                    if d.invoke("f", format!("s{i}"), Bytes::from_static(payload.as_bytes()))
                        .await
                        .is_ok()
                    {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

#[tokio::test(start_paused = true)]
async fn auto_limit_grows_for_io_bound_work_and_idle_capacity_is_drained() {
    let mut cfg = config(16);
    cfg.auto = true;
    cfg.memory_limit_kib = 512 * 1024;
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 200,
            ..Default::default()
        },
        cfg,
    );
    // 40 callers of a call that waits 2 s and uses 20 ms of CPU: Little's law puts the
    // optimum near 0.8 * 2.02 / 0.02 = 80 per instance, so the limit must rise above 16.
    let served = sustained(&d, 40, "2000/20", Duration::from_secs(40)).await;
    assert!(served > 500, "{served}");
    let status = &d.status(Some("f"))[0];
    assert!(status.learned_limit > 16, "{status:?}");
    assert!(
        status
            .instances
            .iter()
            .any(|i| i.limit > 16 && i.cpu_busy.is_some()),
        "{status:?}"
    );
    assert!(
        decisions(status).iter().any(|d| matches!(
            d,
            Decision::LimitChanged { from, to, .. } if to > from
        )),
        "the controllers' growth is on record: {:#?}",
        status.decisions
    );
    let started = launcher.launches.load(Ordering::SeqCst);
    assert!(started <= 3, "ceil(40/16) at most, then fewer: {started}");
    // Load drops to 4 callers: the stable window sees the excess and drains it.
    sustained(&d, 4, "2000/20", Duration::from_secs(90)).await;
    let status = &d.status(Some("f"))[0];
    assert_eq!(launcher.live.load(Ordering::SeqCst), 1, "{status:?}");
    assert!(status.desired <= 1, "{status:?}");
}

/// A runtime that sizes itself from `AWS_LAMBDA_MAX_CONCURRENCY` once (the official Python
/// client forks that many workers) is told its starting limit, never receives more, and
/// a busier function grows by instances that are told more.
#[tokio::test(start_paused = true)]
async fn a_runtime_sized_at_start_is_told_its_limit_and_never_sent_more() {
    let mut cfg = config(16);
    cfg.auto = true;
    cfg.sized_at_start = true;
    cfg.memory_limit_kib = 512 * 1024;
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 200,
            ..Default::default()
        },
        cfg,
    );
    let served = sustained(&d, 60, "2000/20", Duration::from_secs(60)).await;
    assert!(served > 500, "{served}");
    assert_eq!(launcher.over_told.load(Ordering::SeqCst), 0);
    let told = launcher.told.lock().unwrap().clone();
    assert_eq!(
        told[0], 16,
        "the first instance is told the starting limit: {told:?}"
    );
    assert!(told.iter().all(|&t| t <= 256), "{told:?}");
    let status = &d.status(Some("f"))[0];
    assert!(
        status.instances.iter().all(|i| i.limit <= 16),
        "no instance grew past what it was told: {status:?}"
    );
    assert!(
        status.learned_limit > 16,
        "instances held at their ceiling while they wanted more: the next is told more: {status:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_draining_instance_finishes_its_calls_before_it_stops() {
    let mut cfg = config(2);
    cfg.idle_timeout = Duration::from_secs(3600);
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 10,
            ..Default::default()
        },
        cfg,
    );
    // Four long calls need two instances; afterwards one short caller keeps one busy.
    let long = {
        let d = d.clone();
        tokio::spawn(async move { burst(&d, 4, "15000").await })
    };
    let short = sustained(&d, 1, "100", Duration::from_secs(90)).await;
    assert!(short > 0);
    let results = long.await.unwrap();
    assert!(
        results.iter().all(|r| r.is_ok()),
        "draining never cut a call short: {results:?}"
    );
    let status = &d.status(Some("f"))[0];
    // Two for the long calls, a third for the short caller that found both full.
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 3);
    assert_eq!(
        launcher.live.load(Ordering::SeqCst),
        1,
        "the spare instances were drained: {status:?}"
    );
    assert!(
        decisions(status)
            .iter()
            .any(|d| matches!(d, Decision::ScaleIn { remaining: 1, .. })),
        "{status:?}"
    );
}

async fn call(d: &Arc<Dispatcher>, function: &str, payload: &'static str) -> String {
    let r = d
        .invoke(function, "r".into(), Bytes::from_static(payload.as_bytes()))
        .await;
    instance_of(&r)
}

#[tokio::test(start_paused = true)]
async fn host_budget_bounds_instances_across_functions_and_frees_as_they_stop() {
    let launcher = Arc::new(FakeLauncher {
        start_delay_ms: 100,
        ..Default::default()
    });
    let d = Dispatcher::with_budget(
        launcher.clone(),
        shoal_dispatch::BudgetLimits {
            max_instances: 3,
            max_memory_kib: u64::MAX,
        },
    );
    let cfg = config(1); // idle_timeout 300 s: a's instances are reclaimed, not timed out
    d.deploy("a", 1, cfg.clone());
    d.deploy("b", 1, cfg);
    let a_calls: Vec<_> = (0..3)
        .map(|_| {
            let d = d.clone();
            tokio::spawn(async move { call(&d, "a", "5000").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(d.budget().instances, 3);
    let start = tokio::time::Instant::now();
    let b_call = {
        let d = d.clone();
        tokio::spawn(async move { call(&d, "b", "100").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = &d.status(Some("b"))[0];
    assert_eq!(b.queued, 1, "b waits for the budget");
    assert!(
        matches!(
            decisions(b).last(),
            Some(Decision::BudgetRefused {
                reason: LaunchReason::Queued { waiting: 1, .. },
                started: 0,
                refusal: BudgetRefusal::Instances {
                    in_use: 3,
                    max_instances: 3
                },
                ..
            })
        ),
        "{:#?}",
        b.decisions
    );
    assert!(launcher.live.load(Ordering::SeqCst) <= 3);
    for t in a_calls {
        t.await.unwrap();
    }
    // a's instances go idle at ~5.1 s; under budget pressure one is given back within
    // about a second instead of after the 300 s idle timeout, and b starts there.
    let b_instance = b_call.await.unwrap();
    assert!(b_instance.starts_with("b-"), "{b_instance}");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(4500), "{waited:?}");
    assert!(waited < Duration::from_millis(6500), "{waited:?}");
    let a = &d.status(Some("a"))[0];
    assert!(
        decisions(a)
            .iter()
            .any(|d| matches!(d, Decision::BudgetReclaim { .. })),
        "{:#?}",
        a.decisions
    );
    // b's retry can run between a's stop and its exit, and ask once more: at most one
    // extra idle instance of a is given back, never a busy one.
    let live = launcher.live.load(Ordering::SeqCst);
    assert!((2..=3).contains(&live), "{live}: {:#?}", d.status(None));
    assert!(d.status(Some("b"))[0].instances.len() == 1);
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn host_memory_budget_counts_each_instance_memory_limit() {
    let launcher = Arc::new(FakeLauncher {
        start_delay_ms: 100,
        ..Default::default()
    });
    let d = Dispatcher::with_budget(
        launcher.clone(),
        shoal_dispatch::BudgetLimits {
            max_instances: 100,
            max_memory_kib: 256 * 1024,
        },
    );
    let mut cfg = config(1);
    cfg.memory_limit_kib = 128 * 1024;
    d.deploy("f", 1, cfg);
    // Six one-second calls, one per instance, but only two 128 MiB instances fit.
    let start = tokio::time::Instant::now();
    let results = burst(&d, 6, "1000").await;
    assert!(results.iter().all(|r| r.is_ok()));
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 2);
    assert!(
        start.elapsed() >= Duration::from_millis(3000),
        "three rounds on two instances"
    );
    assert_eq!(d.budget().memory_kib, 2 * 128 * 1024);
}

#[tokio::test(start_paused = true)]
async fn an_instance_whose_memory_creeps_up_is_recycled_after_draining() {
    let mut cfg = config(4);
    cfg.memory_limit_kib = 128 * 1024;
    // 50 MB at start, 2 MB more per call: past 90 % of 128 MiB after about 34 calls.
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 10,
            leak_kib_per_call: 2_000,
            ..Default::default()
        },
        cfg,
    );
    // One long call is in flight on the first instance when the sample sees the leak.
    let long = {
        let d = d.clone();
        tokio::spawn(async move { call(&d, "f", "20000").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let first = d.status(Some("f"))[0].instances[0].id.clone();
    let mut served = Vec::new();
    for _ in 0..60 {
        served.push(call(&d, "f", "100").await);
    }
    let status = &d.status(Some("f"))[0];
    assert!(
        decisions(status).iter().any(|d| matches!(
            d,
            Decision::RssRecycle { instance, rss_kib, memory_limit_kib: 131_072, .. }
                if *instance == first && *rss_kib as f64 >= 0.9 * 131_072.0
        )),
        "{:#?}",
        status.decisions
    );
    let old = status.instances.iter().find(|i| i.id == first);
    assert!(
        old.is_some_and(|i| i.state == shoal_dispatch::InstanceState::Draining),
        "the bloated instance drains while its long call runs: {status:?}"
    );
    // Calls after the recycle went to a fresh instance.
    assert_eq!(served.first(), Some(&format!("{first}@v1")));
    assert_ne!(served.last(), Some(&format!("{first}@v1")));
    // The call in flight when the leak was seen finishes on the old instance, which then
    // stops.
    assert_eq!(long.await.unwrap(), format!("{first}@v1"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = &d.status(Some("f"))[0];
    assert!(status.instances.iter().all(|i| i.id != first), "{status:?}");
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 2);
    assert_eq!(launcher.live.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_in_flight_calls_only_up_to_the_grace() {
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 10,
            ..Default::default()
        },
        config(8),
    );
    let call = {
        let d = d.clone();
        tokio::spawn(async move {
            d.invoke("f", "r".into(), Bytes::from_static(b"60000"))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = tokio::time::Instant::now();
    d.shutdown(Duration::from_secs(2)).await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_millis(2500),
        "{waited:?}"
    );
    assert!(
        matches!(
            call.await.unwrap(),
            Err(DispatchError::Instance(InstanceFailure::Crashed { .. }))
        ),
        "the call past the grace ends with its stopped instance"
    );
    assert_eq!(launcher.live.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn the_target_cpu_knob_reaches_the_controllers() {
    // 100 ms of CPU and a 2 s wait per call: one instance is 0.8 busy at ~17 in flight and
    // 0.4 busy at ~8. The same load under the two targets must settle at different limits.
    let mut learned = Vec::new();
    for target in [0.8, 0.4] {
        let mut cfg = config(16);
        cfg.auto = true;
        cfg.target_cpu = target;
        let (_launcher, d) = setup(
            FakeLauncher {
                start_delay_ms: 100,
                ..Default::default()
            },
            cfg,
        );
        sustained(&d, 40, "2000/100", Duration::from_secs(30)).await;
        let status = &d.status(Some("f"))[0];
        learned.push(status.learned_limit);
    }
    let (high, low) = (learned[0], learned[1]);
    // Little's law says ~17 at 0.8. Calls pack onto the fullest instance, which therefore
    // binds and probes a step or two beyond the estimate (this fake's CPU arrives only at
    // completion, so the live signal lags); the bound allows that much.
    assert!((10..=25).contains(&high), "{learned:?}");
    assert!(low >= 4 && low * 4 <= high * 3, "{learned:?}");
}

#[tokio::test(start_paused = true)]
async fn decision_history_keeps_the_last_ones_in_order() {
    // A function that never starts, kept warm: every backoff ends in another start and
    // another failure, so decisions pile up without any call.
    let mut cfg = config(1);
    cfg.min_instances = 1;
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 10,
            fail_starts: true,
            ..Default::default()
        },
        cfg,
    );
    while launcher.launches.load(Ordering::SeqCst) < 40 {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = &d.status(Some("f"))[0];
    assert_eq!(status.decisions.len(), DECISION_HISTORY);
    assert!(status
        .decisions
        .windows(2)
        .all(|w| w[0].at_epoch_ms <= w[1].at_epoch_ms));
    // Each start is recorded, then its failure, in that order; the oldest ones are gone.
    let failures: Vec<u32> = decisions(status)
        .iter()
        .filter_map(|d| match d {
            Decision::LaunchFailed { failures, .. } => Some(*failures),
            _ => None,
        })
        .collect();
    let last = launcher.launches.load(Ordering::SeqCst) as u32;
    assert_eq!(failures.last(), Some(&last), "{failures:?}");
    assert!(
        failures.windows(2).all(|w| w[1] == w[0] + 1),
        "{failures:?}"
    );
    assert!(failures[0] > 1, "the first failures fell out: {failures:?}");
    for pair in status.decisions.windows(2) {
        if let Decision::LaunchFailed { .. } = pair[1].decision {
            assert!(
                matches!(
                    pair[0].decision,
                    Decision::ScaleOut {
                        reason: LaunchReason::MinInstances { min_instances: 1 },
                        starting: 1,
                        ..
                    }
                ),
                "{pair:#?}"
            );
        }
    }
}

/// What each call of a cold burst reports for its `REPORT` line: `Init Duration` on the
/// first call of each instance only, the wait for the start, and shares of the instance
/// that add up to what each instance used.
#[tokio::test(start_paused = true)]
async fn a_cold_burst_reports_init_once_per_instance_and_shares_that_add_up() {
    let (_launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 300,
            ..Default::default()
        },
        config(4),
    );
    // Eight calls that each wait 1 s and burn 40 ms of CPU: two instances of four.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(async move {
                let started = Arc::new(std::sync::Mutex::new(None::<String>));
                let seen = started.clone();
                let on_start: shoal_dispatch::OnStart = Arc::new(move |instance: &str| {
                    *seen.lock().unwrap() = Some(instance.to_owned());
                });
                let (_, result, report) = d
                    .invoke_reported(
                        "f",
                        None,
                        format!("r{i}"),
                        Bytes::from_static(b"1000/40"),
                        None,
                        Some(on_start),
                    )
                    .await;
                let started = started.lock().unwrap().clone();
                (result, report, started)
            })
        })
        .collect();
    let mut reports = Vec::new();
    for task in tasks {
        let (result, report, started) = task.await.unwrap();
        assert!(result.is_ok(), "{result:?}");
        let report = report.expect("a call that ran has a report");
        assert_eq!(started.as_deref(), Some(report.instance.as_str()));
        reports.push(report);
    }
    let mut instances: Vec<&str> = reports.iter().map(|r| r.instance.as_str()).collect();
    instances.sort();
    instances.dedup();
    assert_eq!(instances.len(), 2);
    for instance in instances {
        let mine: Vec<_> = reports.iter().filter(|r| r.instance == instance).collect();
        assert_eq!(mine.len(), 4);
        let inits: Vec<Duration> = mine.iter().filter_map(|r| r.init).collect();
        assert_eq!(inits.len(), 1, "{mine:#?}");
        assert!(inits[0] >= Duration::from_millis(300), "{inits:?}");
        let cpu: Duration = mine.iter().map(|r| r.usage.cpu).sum();
        assert!(
            cpu.abs_diff(Duration::from_millis(160)) < Duration::from_micros(10),
            "{cpu:?}"
        );
        let time: Duration = mine.iter().map(|r| r.usage.instance_time).sum();
        assert!(
            time.abs_diff(Duration::from_secs(1)) < Duration::from_millis(2),
            "{time:?}"
        );
        for r in mine {
            assert!(r.queued >= Duration::from_millis(300), "{r:?}");
            assert!(r.duration >= Duration::from_secs(1), "{r:?}");
            assert!(
                r.usage.instance_time.abs_diff(Duration::from_millis(250))
                    < Duration::from_millis(2),
                "{r:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_pinned_version_serves_calls_that_name_it_beside_the_active_one() {
    let (_launcher, d) = setup(FakeLauncher::default(), config(16));
    d.deploy("f", 2, config(16));
    assert!(!d.serves_version("f", 1), "the old version drains");
    let (version, result) = d
        .invoke_version("f", Some(1), "r".into(), Bytes::from_static(b"10"), None)
        .await;
    assert_eq!(version, None, "not served until asked for");
    assert!(matches!(result, Err(DispatchError::NotFound(_))));

    assert!(d.serve_version("f", 1, config(16)));
    assert!(!d.serve_version("g", 1, config(16)), "unknown function");
    assert!(d.serves_version("f", 1) && d.serves_version("f", 2));
    let (version, result) = d
        .invoke_version("f", Some(1), "r".into(), Bytes::from_static(b"10"), None)
        .await;
    assert_eq!(version, Some(1));
    assert!(instance_of(&result).ends_with("@v1"));
    let (version, result) = d
        .invoke_version("f", None, "r".into(), Bytes::from_static(b"10"), None)
        .await;
    assert_eq!(version, Some(2));
    assert!(instance_of(&result).ends_with("@v2"));

    // Once version 1 becomes the active one again, it is served once, not twice.
    d.deploy("f", 1, config(16));
    assert!(d.serves_version("f", 1) && !d.serves_version("f", 2));
    assert!(d.remove("f"));
    assert!(!d.serves_version("f", 1));
}

#[tokio::test(start_paused = true)]
async fn room_counts_slots_calls_and_starting_instances() {
    let mut cfg = config(4);
    cfg.auto = true;
    let (_launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 300,
            ..Default::default()
        },
        cfg,
    );
    let room = d.room("f").expect("deployed");
    assert_eq!((room.slots, room.busy, room.instances), (0, 0, 0));
    assert_eq!(room.per_instance, 4);
    assert!(!room.saturated, "no ready instance is saturated");
    let calls = {
        let d = d.clone();
        tokio::spawn(async move { burst(&d, 6, "1000").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let room = d.room("f").unwrap();
    assert_eq!(
        (room.instances, room.starting),
        (2, 2),
        "ceil(6/4) starting"
    );
    assert_eq!((room.slots, room.busy, room.free()), (8, 6, 2));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let room = d.room("f").unwrap();
    assert_eq!((room.instances, room.starting, room.busy), (2, 0, 6));
    assert!(
        !room.saturated,
        "not measured busy yet: its limit may still grow"
    );
    assert!(calls.await.unwrap().iter().all(|r| r.is_ok()));
    assert!(d.room("nope").is_none());

    let (_, fixed) = setup(FakeLauncher::default(), config(1));
    assert!(
        fixed.room("f").unwrap().saturated,
        "a fixed limit never grows"
    );
}

#[tokio::test(start_paused = true)]
async fn room_calls_a_cpu_bound_instance_saturated_and_a_waiting_one_not() {
    let mut cfg = config(16);
    cfg.auto = true;
    let (_launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 100,
            ..Default::default()
        },
        cfg,
    );
    // Two callers of a call that only waits: far from its CPU, far from its limit.
    sustained(&d, 2, "1000/0", Duration::from_secs(5)).await;
    let room = d.room("f").unwrap();
    assert_eq!(room.instances, 1);
    assert!(!room.saturated, "{room:?}");
    // The same two computing all the time: a second instance would add a core.
    sustained(&d, 2, "1000/1000", Duration::from_secs(5)).await;
    assert!(d.room("f").unwrap().saturated);
}

#[tokio::test(start_paused = true)]
async fn a_steady_load_that_fits_one_instance_converges_to_one() {
    let mut cfg = config(8);
    cfg.idle_timeout = Duration::from_secs(5);
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 100,
            ..Default::default()
        },
        cfg,
    );
    // A burst of 20 starts three instances of 8.
    burst(&d, 20, "500").await;
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 3);
    // Then a steady 4 at a time, which one instance holds: calls pack onto the fullest
    // instance with room, so the other two go idle and stop; spreading them over all
    // three would keep every one busy.
    let used = Arc::new(Mutex::new(std::collections::HashMap::<String, usize>::new()));
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let (d, used) = (d.clone(), used.clone());
            tokio::spawn(async move {
                while tokio::time::Instant::now() < until {
                    let r = d
                        .invoke("f", format!("s{i}"), Bytes::from_static(b"200"))
                        .await;
                    *used.lock().unwrap().entry(instance_of(&r)).or_default() += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let used = used.lock().unwrap().clone();
    assert_eq!(used.len(), 1, "the steady load ran on {used:?}");
    let status = &d.status(Some("f"))[0];
    let live = status
        .instances
        .iter()
        .filter(|i| i.state != shoal_dispatch::InstanceState::Stopping)
        .count();
    assert_eq!(live, 1, "{:#?}", status.instances);
    assert_eq!(launcher.live.load(Ordering::SeqCst), 1);
}

/// Live instances (not stopping) of `f`.
fn live_instances(d: &Arc<Dispatcher>) -> usize {
    d.status(Some("f"))[0]
        .instances
        .iter()
        .filter(|i| i.state != shoal_dispatch::InstanceState::Stopping)
        .count()
}

#[tokio::test(start_paused = true)]
async fn scale_in_lets_a_steady_load_fill_one_instance_close_to_its_limit() {
    // Three instances of 8 (a burst), then a steady 7 in flight: its p99 is its mean, so
    // one instance at 7 of 8 is enough. A fixed 30 % headroom would keep two (7 > 0.7 × 8).
    // The idle timeout is long: scale-in, not idleness, has to do it.
    let mut cfg = config(8);
    cfg.idle_timeout = Duration::from_secs(3600);
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 100,
            ..Default::default()
        },
        cfg,
    );
    burst(&d, 20, "500").await;
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 3);
    let served = sustained(&d, 7, "300", Duration::from_secs(120)).await;
    assert!(served > 2000, "{served}");
    let status = &d.status(Some("f"))[0];
    assert_eq!(live_instances(&d), 1, "{:#?}", status.instances);
    assert_eq!(
        launcher.launches.load(Ordering::SeqCst),
        3,
        "no scale-out again"
    );
    let last = decisions(status)
        .into_iter()
        .rev()
        .find_map(|d| match d {
            Decision::ScaleIn {
                remaining,
                demand_p99,
                utilization,
                ..
            } => Some((*remaining, *demand_p99, *utilization)),
            _ => None,
        })
        .expect("a scale-in on record");
    assert_eq!(last.0, 1);
    assert_eq!(last.1, 7.0, "the steady load's p99 is its level");
    assert!(last.2 > 0.85, "filled close to the limit: {last:?}");
}

#[tokio::test(start_paused = true)]
async fn scale_in_keeps_the_instances_a_bursty_load_needs_for_its_p99() {
    // The same mean of 7, as 14 calls of 1 s every 2 s: the p99 is 14, which needs two
    // instances of 8. Filling the remaining instances to 95 % as for a steady load would
    // keep one, and every burst would queue and scale out again.
    let mut cfg = config(8);
    cfg.idle_timeout = Duration::from_secs(3600);
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 100,
            ..Default::default()
        },
        cfg,
    );
    burst(&d, 20, "500").await;
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 3);
    let start = tokio::time::Instant::now();
    let mut queued = Duration::ZERO;
    for round in 0..60u32 {
        let results = burst(&d, 14, "1000").await;
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        let took = start
            .elapsed()
            .saturating_sub(Duration::from_secs(2) * round);
        queued = queued.max(took.saturating_sub(Duration::from_secs(1)));
        tokio::time::sleep_until(start + Duration::from_secs(2) * (round + 1)).await;
    }
    let status = &d.status(Some("f"))[0];
    assert_eq!(
        live_instances(&d),
        2,
        "two fit the p99, three are more than it needs: {:#?}",
        status.instances
    );
    assert_eq!(
        launcher.launches.load(Ordering::SeqCst),
        3,
        "the instances it kept took every burst: {:#?}",
        status.decisions
    );
    assert!(
        queued < Duration::from_millis(50),
        "no burst waited: {queued:?}"
    );
    assert!(
        decisions(status).iter().any(|d| matches!(
            d,
            Decision::ScaleIn { remaining: 2, demand_p99, utilization, .. }
                if *demand_p99 >= 14.0 && *utilization == 0.5
        )),
        "{:#?}",
        status.decisions
    );
}

/// `auto` with the limit pinned at `limit` (its `max_concurrency`), on fake instances that
/// report run-queue wait at the returned rate (ms per s, 0 to start with).
fn on_a_host_with_run_wait(
    limit: u32,
    timeout: Duration,
) -> (Arc<FakeLauncher>, Arc<Dispatcher>, Arc<AtomicU64>) {
    let mut cfg = config(limit);
    cfg.auto = true;
    cfg.max_concurrency = limit;
    cfg.max_instances = 10;
    cfg.timeout = timeout;
    let rate = Arc::new(AtomicU64::new(0));
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 100,
            host_wait_ms_per_s: Some(rate.clone()),
            ..Default::default()
        },
        cfg,
    );
    (launcher, d, rate)
}

#[tokio::test(start_paused = true)]
async fn a_backlog_starts_no_instance_while_the_host_cpu_is_saturated() {
    // Calls that wait 1 s and compute 50 ms, four per instance. One instance is warm;
    // then other work takes the host's cores, so it waits 600 ms per s for a core while
    // it runs 200: another instance would wait as well. A backlog of 40 (ten instances'
    // worth) starts none until the wait goes away.
    let (launcher, d, host_wait) = on_a_host_with_run_wait(4, Duration::from_secs(30));
    sustained(&d, 2, "1000/50", Duration::from_secs(3)).await;
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 1);
    host_wait.store(600, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let backlog = {
        let d = d.clone();
        tokio::spawn(async move { burst(&d, 40, "1000/50").await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        launcher.launches.load(Ordering::SeqCst),
        1,
        "{:#?}",
        d.status(Some("f"))[0].decisions
    );
    let held: Vec<Decision> = decisions(&d.status(Some("f"))[0])
        .into_iter()
        .filter(|d| matches!(d, Decision::ScaleOutHeld { .. }))
        .cloned()
        .collect();
    // Asked by every queued call and every tick, recorded once in these 3 s.
    assert_eq!(held.len(), 1, "{held:#?}");
    let Decision::ScaleOutHeld {
        wait_ms_per_s,
        run_ms_per_s,
        instances: 1,
        ..
    } = held[0]
    else {
        panic!("{held:?}")
    };
    assert!((500.0..=700.0).contains(&wait_ms_per_s), "{held:?}");
    assert!(run_ms_per_s < wait_ms_per_s, "{held:?}");

    // The other work goes away: the next samples see no wait, and the queue's backlog
    // gets its instances.
    host_wait.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = launcher.launches.load(Ordering::SeqCst);
    assert!(started > 1, "{:#?}", d.status(Some("f"))[0].decisions);
    let status = &d.status(Some("f"))[0];
    let after_hold = decisions(status)
        .into_iter()
        .skip_while(|d| !matches!(d, Decision::ScaleOutHeld { .. }))
        .any(|d| {
            matches!(
                d,
                Decision::ScaleOut {
                    reason: LaunchReason::Queued { .. },
                    ..
                }
            )
        });
    assert!(after_hold, "{:#?}", status.decisions);
    assert!(backlog.await.unwrap().iter().all(|r| r.is_ok()));
}

#[tokio::test(start_paused = true)]
async fn a_saturated_host_refuses_at_once_what_its_instances_cannot_serve_in_time() {
    // One slot, 1 s calls, a 5.5 s timeout, the host's cores taken by other work: no
    // instance starts, so of a burst of 20 the queue admits what the one slot can serve
    // before the deadline (the one running and four behind it) and refuses the rest at
    // once, instead of holding them to time out.
    let (launcher, d, host_wait) = on_a_host_with_run_wait(1, Duration::from_millis(5500));
    sustained(&d, 1, "1000/50", Duration::from_secs(3)).await;
    host_wait.store(600, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(async move {
                let sent = tokio::time::Instant::now();
                let r = d
                    .invoke("f", format!("b{i}"), Bytes::from_static(b"1000/50"))
                    .await;
                (r, sent.elapsed())
            })
        })
        .collect();
    let (mut ok, mut refused, mut other) = (0, 0, Vec::new());
    for t in tasks {
        match t.await.unwrap() {
            (Ok(_), _) => ok += 1,
            (Err(DispatchError::Overloaded { .. }), took) => {
                assert!(took < Duration::from_millis(1), "refused after {took:?}");
                refused += 1;
            }
            (r, _) => other.push(r),
        }
    }
    assert!(other.is_empty(), "neither served nor refused: {other:?}");
    assert_eq!((ok, refused), (5, 15));
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn overload_refuses_at_once_what_cannot_be_served_before_its_deadline() {
    // One instance of one slot serves ten 100 ms calls a second; a hundred a second arrive
    // for 6 s, each with a 10 s timeout. Queued first come, first served, every call
    // would wait out its whole deadline at the head of the queue (goodput near zero);
    // admitted by the queue's expected wait, the capacity's worth succeed and the rest
    // are refused at once with Overloaded (429 and Retry-After at the gateway).
    let mut cfg = config(1);
    cfg.max_instances = 1;
    cfg.timeout = Duration::from_secs(10);
    let (_launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 10,
            ..Default::default()
        },
        cfg,
    );
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..600 {
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            let sent = tokio::time::Instant::now();
            let r = d
                .invoke("f", format!("o{i}"), Bytes::from_static(b"100"))
                .await;
            (r, sent.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut ok = 0;
    let mut refused = 0;
    let mut other = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (Ok(_), took) => {
                assert!(took <= Duration::from_secs(10), "answered late: {took:?}");
                ok += 1;
            }
            (Err(DispatchError::Overloaded { retry_after, .. }), took) => {
                assert!(
                    took < Duration::from_millis(1),
                    "refused only after {took:?}"
                );
                assert!(retry_after >= Duration::from_secs(1));
                refused += 1;
            }
            (r, _) => other.push(r),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let capacity = 10.0 * elapsed;
    assert!(other.is_empty(), "neither served nor refused: {other:?}");
    assert!(
        f64::from(ok) >= 0.9 * 10.0 * 6.0,
        "{ok} served in {elapsed:.1} s (capacity {capacity:.0}), {refused} refused"
    );
    assert_eq!(ok + refused, 600);
}

#[tokio::test(start_paused = true)]
async fn a_cold_io_bound_burst_on_a_function_never_measured_stays_on_one_instance() {
    // 100 calls that compute 10 ms and wait 2 s: the probed instance's core idles with
    // every slot taken, so its limit grows until the whole burst is in; no second
    // instance starts (a fixed 16 would have started ceil(100 / 16) = 7).
    let mut cfg = config(16);
    cfg.auto = true;
    cfg.probe = true;
    let (launcher, d) = setup(
        FakeLauncher {
            start_delay_ms: 100,
            ..Default::default()
        },
        cfg,
    );
    let started = tokio::time::Instant::now();
    let results = burst(&d, 100, "2000/10").await;
    let instances: std::collections::BTreeSet<_> = results.iter().map(instance_of).collect();
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 1);
    // The queue drained within the probe's first few ticks, not after the first 2 s call.
    assert!(
        started.elapsed() < Duration::from_millis(2600),
        "{:?}",
        started.elapsed()
    );
    let status = &d.status(Some("f"))[0];
    let kinds: Vec<&str> = decisions(status).iter().map(|d| d.kind()).collect();
    assert!(kinds.contains(&"probe_grew"), "{kinds:?}");
    assert!(
        matches!(
            decisions(status)[0],
            Decision::ScaleOut {
                reason: LaunchReason::Probe { .. },
                starting: 1,
                ..
            }
        ),
        "{kinds:?}"
    );
    // New instances of this function now start at the limit the burst needed.
    assert!(status.learned_limit >= 100, "{}", status.learned_limit);
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_never_sees_the_core_idle_scales_out_after_its_patience() {
    // An instance whose core never idles, with calls that take 5 s: nothing tells the
    // probe that more calls would fit, so after its patience the rest of the burst gets
    // instances at the limit reached (the controller's CPU rule has cut 16 to 12 by
    // then): ceil(24 / 12) = 2 more.
    let mut cfg = config(16);
    cfg.auto = true;
    cfg.probe = true;
    let (launcher, d) = setup(
        FakeLauncher {
            always_busy: true,
            ..Default::default()
        },
        cfg,
    );
    let results = burst(&d, 40, "5000").await;
    assert!(results.iter().all(|r| r.is_ok()));
    assert_eq!(launcher.launches.load(Ordering::SeqCst), 3);
    let status = &d.status(Some("f"))[0];
    assert!(
        decisions(status).iter().any(|d| matches!(
            d,
            Decision::ProbeDone {
                why: shoal_dispatch::ProbeEnd::Patience,
                ..
            }
        )),
        "{:?}",
        decisions(status)
    );
    assert!(!decisions(status)
        .iter()
        .any(|d| matches!(d, Decision::ProbeGrew { .. })));
}

#[tokio::test(start_paused = true)]
async fn an_idle_pool_keeps_its_instance_as_long_as_its_idle_gaps_say() {
    // Calls every 100 s with the default five minutes of idle_timeout: once the gaps are
    // known, the instance stops 125 s into a longer pause, not after 5 minutes.
    let mut cfg = config(8);
    cfg.idle_timeout = Duration::from_secs(300);
    let (launcher, d) = setup(FakeLauncher::default(), cfg);
    for _ in 0..12 {
        call(&d, "f", "10").await;
        tokio::time::sleep(Duration::from_secs(100)).await;
    }
    assert_eq!(
        launcher.launches.load(Ordering::SeqCst),
        1,
        "the gaps kept it warm"
    );
    call(&d, "f", "10").await;
    tokio::time::sleep(Duration::from_secs(130)).await;
    assert_eq!(launcher.live.load(Ordering::SeqCst), 0);
    let status = &d.status(Some("f"))[0];
    let stop = decisions(status)
        .into_iter()
        .find(|d| matches!(d, Decision::KeepAliveStop { .. }))
        .unwrap_or_else(|| panic!("{:?}", decisions(status)));
    let Decision::KeepAliveStop { keep, p99, .. } = stop else {
        unreachable!()
    };
    assert!(
        *p99 >= Duration::from_secs(99) && *p99 <= Duration::from_secs(101),
        "{p99:?}"
    );
    assert!(*keep < Duration::from_secs(130), "{keep:?}");
}

#[tokio::test(start_paused = true)]
async fn a_function_called_more_rarely_than_its_idle_timeout_stops_at_once() {
    let mut cfg = config(8);
    cfg.idle_timeout = Duration::from_secs(5);
    let (launcher, d) = setup(FakeLauncher::default(), cfg);
    for _ in 0..10 {
        call(&d, "f", "10").await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    call(&d, "f", "10").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        launcher.live.load(Ordering::SeqCst),
        0,
        "kept idle though the next call is a minute away"
    );
    let status = &d.status(Some("f"))[0];
    assert!(decisions(status)
        .iter()
        .any(|d| matches!(d, Decision::KeepAliveStop { .. })));
}
