//! The function registry: name → the active pool, plus retired pools still draining.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::budget::{BudgetLimits, BudgetStatus, HostBudget};
use crate::pool::Pool;
use crate::{
    epoch_ms, CallReport, DispatchError, InstanceLauncher, Invocation, OnStart, Outcome,
    PoolConfig, PoolStatus, Result, Room,
};

struct Function {
    active: Arc<Pool>,
    /// Other versions serving calls that name them (a `Qualifier` or an alias), beside the
    /// active one; each scales to zero like any pool.
    pinned: Vec<Arc<Pool>>,
    /// Older versions (or a deleted function's pools) finishing their in-flight work.
    retired: Vec<Arc<Pool>>,
}

/// Routes invocations to function pools. Cheap to share (`Arc`).
pub struct Dispatcher {
    launcher: Arc<dyn InstanceLauncher>,
    budget: Arc<HostBudget>,
    functions: Mutex<HashMap<String, Function>>,
    /// Pools of deleted functions, still draining.
    orphans: Mutex<Vec<Arc<Pool>>>,
    next_instance: Arc<AtomicU64>,
    shutting_down: std::sync::atomic::AtomicBool,
}

impl Dispatcher {
    /// A dispatcher with no host-wide bound (each pool's `max_instances` still holds).
    pub fn new(launcher: Arc<dyn InstanceLauncher>) -> Arc<Dispatcher> {
        Self::with_budget(launcher, BudgetLimits::UNBOUNDED)
    }

    /// A dispatcher whose pools together stay within `limits`.
    pub fn with_budget(
        launcher: Arc<dyn InstanceLauncher>,
        limits: BudgetLimits,
    ) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            launcher,
            budget: HostBudget::new(limits),
            functions: Mutex::new(HashMap::new()),
            orphans: Mutex::new(Vec::new()),
            next_instance: Arc::new(AtomicU64::new(1)),
            shutting_down: Default::default(),
        })
    }

    fn functions(&self) -> MutexGuard<'_, HashMap<String, Function>> {
        self.functions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Make `version` the one that takes new invocations. The previous version drains:
    /// its queued and in-flight work finishes on its own instances, then they stop.
    /// Must be called from within a tokio runtime.
    pub fn deploy(&self, function: &str, version: u32, config: PoolConfig) {
        let pool = Pool::new(
            function,
            version,
            config,
            self.launcher.clone(),
            self.budget.clone(),
            self.next_instance.clone(),
        );
        let mut functions = self.functions();
        match functions.get_mut(function) {
            Some(entry) if entry.active.version() == version => {}
            Some(entry) => {
                let old = std::mem::replace(&mut entry.active, pool);
                old.retire();
                entry.retired.retain(|p| !p.is_finished());
                entry.retired.push(old);
                // A pinned pool of the version now active is not needed beside it.
                let (same, others) = std::mem::take(&mut entry.pinned)
                    .into_iter()
                    .partition(|p| p.version() == version);
                entry.pinned = others;
                for pool in same {
                    pool.retire();
                    entry.retired.push(pool);
                }
            }
            None => {
                functions.insert(
                    function.to_owned(),
                    Function {
                        active: pool,
                        pinned: Vec::new(),
                        retired: Vec::new(),
                    },
                );
            }
        }
    }

    /// Also serve `version` of a known function, beside its active version, for calls
    /// that name it. `false` if the function is unknown. Nothing changes if the version
    /// is already served. Must be called from within a tokio runtime.
    pub fn serve_version(&self, function: &str, version: u32, config: PoolConfig) -> bool {
        let mut functions = self.functions();
        let Some(entry) = functions.get_mut(function) else {
            return false;
        };
        if entry.active.version() == version || entry.pinned.iter().any(|p| p.version() == version)
        {
            return true;
        }
        entry.pinned.push(Pool::new(
            function,
            version,
            config,
            self.launcher.clone(),
            self.budget.clone(),
            self.next_instance.clone(),
        ));
        true
    }

    /// Whether `version` of `function` takes calls (active or served beside it).
    pub fn serves_version(&self, function: &str, version: u32) -> bool {
        self.functions().get(function).is_some_and(|f| {
            f.active.version() == version || f.pinned.iter().any(|p| p.version() == version)
        })
    }

    /// Forget a function: new calls get `NotFound`, running ones finish.
    pub fn remove(&self, function: &str) -> bool {
        let Some(entry) = self.functions().remove(function) else {
            return false;
        };
        entry.active.retire();
        for pool in &entry.pinned {
            pool.retire();
        }
        let mut orphans = self.orphans.lock().unwrap_or_else(|e| e.into_inner());
        orphans.retain(|p| !p.is_finished());
        orphans.push(entry.active);
        orphans.extend(entry.pinned);
        orphans.extend(entry.retired);
        true
    }

    /// Run one invocation of the active version of `function`.
    pub async fn invoke(
        &self,
        function: &str,
        request_id: String,
        payload: Bytes,
    ) -> Result<Outcome> {
        self.invoke_versioned(function, request_id, payload).await.1
    }

    /// [`Dispatcher::invoke`], also saying which version took the call (`None` when the
    /// function was not found or the platform is shutting down): one registry lookup for
    /// both. The version is recorded in the current tracing span too.
    pub async fn invoke_versioned(
        &self,
        function: &str,
        request_id: String,
        payload: Bytes,
    ) -> (Option<u32>, Result<Outcome>) {
        self.invoke_version(function, None, request_id, payload, None)
            .await
    }

    /// Run one invocation of `version` of `function` (`None`: the active version), with
    /// the caller's client context if any; a version not served (see
    /// [`Dispatcher::serve_version`]) is `NotFound`.
    pub async fn invoke_version(
        &self,
        function: &str,
        version: Option<u32>,
        request_id: String,
        payload: Bytes,
        client_context: Option<Bytes>,
    ) -> (Option<u32>, Result<Outcome>) {
        let (version, result, _) = self
            .invoke_reported(function, version, request_id, payload, client_context, None)
            .await;
        (version, result)
    }

    /// [`Dispatcher::invoke_version`], calling `on_start` when an instance takes the call,
    /// and also returning where it ran and what it used (when it reached one).
    pub async fn invoke_reported(
        &self,
        function: &str,
        version: Option<u32>,
        request_id: String,
        payload: Bytes,
        client_context: Option<Bytes>,
        on_start: Option<OnStart>,
    ) -> (Option<u32>, Result<Outcome>, Option<CallReport>) {
        if self
            .shutting_down
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return (None, Err(DispatchError::ShuttingDown), None);
        }
        let pool = self.functions().get(function).and_then(|f| match version {
            None => Some(f.active.clone()),
            Some(v) if f.active.version() == v => Some(f.active.clone()),
            Some(v) => f.pinned.iter().find(|p| p.version() == v).cloned(),
        });
        let Some(pool) = pool else {
            return (
                None,
                Err(DispatchError::NotFound(function.to_owned())),
                None,
            );
        };
        let version = pool.version();
        tracing::Span::current().record("version", version);
        let timeout = pool.timeout();
        let invocation = Invocation {
            request_id,
            payload,
            deadline: Instant::now() + timeout,
            deadline_epoch_ms: epoch_ms() + timeout.as_millis() as u64,
            client_context,
        };
        let (result, report) = pool.invoke(invocation, on_start).await;
        (Some(version), result, report)
    }

    /// The version that takes new invocations, if the function is known.
    pub fn active_version(&self, function: &str) -> Option<u32> {
        self.functions().get(function).map(|f| f.active.version())
    }

    /// What `function`'s active pool can take now (see [`Room`]); `None` if it is not
    /// deployed.
    pub fn room(&self, function: &str) -> Option<Room> {
        self.functions().get(function).map(|f| f.active.room())
    }

    /// Instances and memory in use against the host-wide budget.
    pub fn budget(&self) -> BudgetStatus {
        self.budget.status()
    }

    /// The host-wide budget itself, for spares kept outside the pools (the warm pool).
    pub fn host_budget(&self) -> Arc<HostBudget> {
        self.budget.clone()
    }

    /// Pools of one function (or all), active first, retired ones still draining after.
    pub fn status(&self, function: Option<&str>) -> Vec<PoolStatus> {
        let functions = self.functions();
        let mut names: Vec<&String> = functions
            .keys()
            .filter(|n| function.is_none_or(|f| f == *n))
            .collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let entry = &functions[name];
            out.push(entry.active.status());
            out.extend(entry.pinned.iter().map(|p| p.status()));
            out.extend(
                entry
                    .retired
                    .iter()
                    .filter(|p| !p.is_finished())
                    .map(|p| p.status()),
            );
        }
        out
    }

    fn all_pools(&self) -> Vec<Arc<Pool>> {
        let mut pools: Vec<Arc<Pool>> = Vec::new();
        for entry in self.functions().values() {
            pools.push(entry.active.clone());
            pools.extend(entry.pinned.iter().cloned());
            pools.extend(entry.retired.iter().cloned());
        }
        pools.extend(
            self.orphans
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned(),
        );
        pools
    }

    /// Refuse new work, let in-flight work finish for up to `grace`, then stop every
    /// instance and wait (briefly) for them to be gone.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let pools = self.all_pools();
        for pool in &pools {
            pool.retire();
        }
        let until = Instant::now() + grace;
        while Instant::now() < until && pools.iter().any(|p| p.in_flight() > 0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for pool in &pools {
            pool.stop_all();
        }
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until && pools.iter().any(|p| p.instance_count() > 0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
