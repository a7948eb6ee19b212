//! The platform's state and operations, shared by the gateway and the control API:
//! deployed functions (store + launcher + dispatcher + routes), logs and the admin token.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use shoal_dispatch::{DispatchError, Dispatcher, Outcome, PoolConfig, PoolStatus};
use shoal_events::RouteTable;
use shoal_manifest::{Concurrency, FunctionSpec, Runtime};
use shoal_runtime::{FunctionCode, LauncherConfig, ProcSample, ProcessLauncher, RuntimeKind};
use shoal_store::{Store, VersionRecord};

use crate::archive::{self, ArchiveError};
use crate::logs::LogStore;
use crate::Config;

pub struct Platform {
    data_dir: PathBuf,
    store: Store,
    pub(crate) dispatcher: Arc<Dispatcher>,
    launcher: Arc<ProcessLauncher>,
    pub(crate) logs: Arc<LogStore>,
    routes: RwLock<RouteTable>,
    token: String,
    public_base: RwLock<String>,
    /// Deploys and deletes are serialised: each rebuilds the route table as a whole.
    changes: std::sync::Mutex<()>,
    shutdown_grace: Duration,
    max_queue: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("the archive has no shoal.toml at its top level")]
    MissingManifest,
    #[error(transparent)]
    Manifest(#[from] shoal_manifest::ManifestError),
    #[error("shoal.toml: function {function}: {reason}")]
    Unsupported { function: String, reason: String },
    #[error("shoal.toml: {0}")]
    Route(#[from] shoal_events::RouteError),
    #[error("storing the deploy")]
    Store(#[from] shoal_store::Error),
    #[error("preparing code in {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a deploy made, for the CLI to print.
#[derive(Debug, Clone, Serialize)]
pub struct Deployed {
    pub name: String,
    pub version: u32,
    pub urls: Vec<String>,
}

/// One function, for `shoal ls`.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionInfo {
    pub name: String,
    pub version: u32,
    pub runtime: Runtime,
    pub handler: String,
    pub concurrency: Concurrency,
    pub memory_mb: u64,
    pub timeout_ms: u64,
    pub routes: Vec<String>,
    pub instances: usize,
}

/// One instance with its resource sample, for `shoal status`.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceReport {
    #[serde(flatten)]
    pub status: shoal_dispatch::InstanceStatus,
    #[serde(flatten)]
    pub resources: Option<ProcSample>,
}

/// A pool with each instance's resource sample, for `shoal status`.
#[derive(Debug, Clone, Serialize)]
pub struct PoolReport {
    #[serde(flatten)]
    pub pool: PoolStatus,
    pub instances: Vec<InstanceReport>,
}

impl Platform {
    pub(crate) fn open(config: &Config) -> anyhow::Result<Arc<Platform>> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir)?;
        let store = Store::open(&data_dir.join("shoal.db"))?;
        let token = admin_token(&data_dir)?;
        let logs = Arc::new(LogStore::new(data_dir.join("logs"))?);
        let launcher = Arc::new(ProcessLauncher::new(
            LauncherConfig {
                instances_dir: data_dir.join("instances"),
                runtimes_dir: data_dir.join("runtimes"),
                node: config.node.clone(),
                start_timeout: config.start_timeout,
            },
            logs.clone(),
        )?);
        let dispatcher = Dispatcher::with_budget(launcher.clone(), config.host_budget);
        Ok(Arc::new(Platform {
            data_dir,
            store,
            dispatcher,
            launcher,
            logs,
            routes: RwLock::new(RouteTable::new()),
            token,
            public_base: RwLock::new(String::new()),
            changes: std::sync::Mutex::new(()),
            shutdown_grace: config.shutdown_grace,
            max_queue: config.max_queue,
        }))
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub(crate) fn set_public_base(&self, base: String) {
        *self.public_base.write().unwrap_or_else(|e| e.into_inner()) = base;
    }

    fn public_base(&self) -> String {
        self.public_base
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Bring back every function deployed before the last restart.
    pub(crate) fn restore(&self) -> Result<(), DeployError> {
        let _changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let records = self.store.list_current()?;
        let specs: Vec<&FunctionSpec> = records.iter().map(|r| &r.spec).collect();
        let routes = build_routes(&specs)?;
        for record in &records {
            self.activate(record)?;
        }
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = routes;
        Ok(())
    }

    /// Unpack (once per code digest), register with the launcher, route new calls to it.
    fn activate(&self, record: &VersionRecord) -> Result<(), DeployError> {
        let code_dir = self.code_dir(&record.code_digest)?;
        let spec = &record.spec;
        self.launcher.register(FunctionCode {
            function: spec.name.clone(),
            version: record.version,
            runtime: runtime_kind(spec)?,
            handler: spec.handler.clone(),
            code_dir,
            memory_mb: spec.memory_mb,
            env: spec.env.clone(),
        });
        let mut config = pool_config(spec, self.max_queue);
        if config.auto {
            // New instances of this version start where earlier ones had tuned themselves.
            if let Some(learned) = self.store.learned_limit(&spec.name, record.version)? {
                config.limit = learned.clamp(1, config.max_concurrency);
            }
        }
        self.dispatcher.deploy(&spec.name, record.version, config);
        Ok(())
    }

    /// Save what the concurrency controllers learned, per function version.
    pub(crate) fn persist_learned_limits(&self) {
        for pool in self.dispatcher.status(None) {
            if !pool.auto || pool.retired || pool.instances.is_empty() {
                continue;
            }
            let known = self
                .store
                .learned_limit(&pool.function, pool.version)
                .ok()
                .flatten();
            if known != Some(pool.learned_limit) {
                if let Err(e) =
                    self.store
                        .set_learned_limit(&pool.function, pool.version, pool.learned_limit)
                {
                    tracing::warn!(function = %pool.function, error = %e, "saving the learned limit");
                }
            }
        }
    }

    fn code_dir(&self, digest: &str) -> Result<PathBuf, DeployError> {
        let dir = self.data_dir.join("code").join(digest);
        if dir.is_dir() {
            return Ok(dir);
        }
        let bytes = self
            .store
            .get_blob(digest)?
            .ok_or_else(|| DeployError::Io {
                path: dir.clone(),
                source: std::io::Error::other(format!(
                    "code blob {digest} is missing from the store"
                )),
            })?;
        let staging = self
            .data_dir
            .join("tmp")
            .join(uuid::Uuid::new_v4().to_string());
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| DeployError::Io { path, source }
        };
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        let unpacked = archive::unpack(&bytes, &staging);
        if let Err(e) = unpacked {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e.into());
        }
        std::fs::create_dir_all(dir.parent().expect("code/<digest>")).map_err(io(&dir))?;
        if let Err(source) = std::fs::rename(&staging, &dir) {
            let _ = std::fs::remove_dir_all(&staging);
            if !dir.is_dir() {
                return Err(DeployError::Io { path: dir, source });
            }
        }
        Ok(dir)
    }

    /// Deploy a packed function directory: a new immutable version of every function in
    /// its `shoal.toml`. Nothing changes unless the whole deploy is valid.
    pub fn deploy(&self, archive_bytes: &[u8]) -> Result<Vec<Deployed>, DeployError> {
        // Check the archive and read the manifest before storing anything.
        let staging = self
            .data_dir
            .join("tmp")
            .join(uuid::Uuid::new_v4().to_string());
        std::fs::create_dir_all(&staging).map_err(|source| DeployError::Io {
            path: staging.clone(),
            source,
        })?;
        let checked = archive::unpack(archive_bytes, &staging)
            .map_err(DeployError::from)
            .and_then(
                |()| match std::fs::read_to_string(staging.join("shoal.toml")) {
                    Ok(text) => Ok(shoal_manifest::parse("shoal.toml", &text)?),
                    Err(_) => Err(DeployError::MissingManifest),
                },
            );
        let _ = std::fs::remove_dir_all(&staging);
        let manifest = checked?;
        for spec in &manifest.functions {
            runtime_kind(spec)?;
        }

        let _changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.store.list_current()?;
        let mut specs: Vec<&FunctionSpec> = current
            .iter()
            .map(|r| &r.spec)
            .filter(|s| !manifest.functions.iter().any(|n| n.name == s.name))
            .collect();
        specs.extend(manifest.functions.iter());
        let routes = build_routes(&specs)?;

        let digest = self.store.put_blob(archive_bytes)?;
        let mut deployed = Vec::new();
        for spec in &manifest.functions {
            let record = self.store.create_version(spec, &digest)?;
            self.activate(&record)?;
            deployed.push(Deployed {
                name: spec.name.clone(),
                version: record.version,
                urls: self.urls(spec),
            });
        }
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = routes;
        Ok(deployed)
    }

    fn urls(&self, spec: &FunctionSpec) -> Vec<String> {
        let base = self.public_base();
        spec.http
            .iter()
            .map(|r| format!("{} {base}{}", r.method.as_deref().unwrap_or("ANY"), r.path))
            .collect()
    }

    /// Delete a function: routes go at once, running invocations finish.
    pub fn remove(&self, name: &str) -> Result<bool, DeployError> {
        let _changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        if !self.store.delete_function(name)? {
            return Ok(false);
        }
        self.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove_target(name);
        self.dispatcher.remove(name);
        self.logs.remove(name);
        Ok(true)
    }

    pub fn functions(&self) -> Result<Vec<FunctionInfo>, DeployError> {
        let status = self.dispatcher.status(None);
        Ok(self
            .store
            .list_current()?
            .into_iter()
            .map(|r| FunctionInfo {
                instances: status
                    .iter()
                    .filter(|p| p.function == r.spec.name)
                    .map(|p| p.instances.len())
                    .sum(),
                routes: self.urls(&r.spec),
                name: r.spec.name,
                version: r.version,
                runtime: r.spec.runtime,
                handler: r.spec.handler,
                concurrency: r.spec.concurrency,
                memory_mb: r.spec.memory_mb,
                timeout_ms: r.spec.timeout_ms,
            })
            .collect())
    }

    pub fn exists(&self, name: &str) -> bool {
        self.dispatcher.active_version(name).is_some()
    }

    /// How instance memory is limited on this machine (cgroup or heap flag only).
    pub fn memory_limits(&self) -> String {
        self.launcher.memory_limits().to_string()
    }

    /// Instances and memory in use against the host-wide budget.
    pub fn budget(&self) -> shoal_dispatch::BudgetStatus {
        self.dispatcher.budget()
    }

    pub fn status(&self, function: Option<&str>) -> Vec<PoolReport> {
        self.dispatcher
            .status(function)
            .into_iter()
            .map(report)
            .collect()
    }

    /// Run one invocation through the dispatcher; failures are logged to the function.
    pub async fn invoke(
        &self,
        function: &str,
        request_id: String,
        payload: Bytes,
    ) -> Result<Outcome, DispatchError> {
        let result = self
            .dispatcher
            .invoke(function, request_id.clone(), payload)
            .await;
        if let Err(error) = &result {
            if !matches!(
                error,
                DispatchError::NotFound(_) | DispatchError::Overloaded { .. }
            ) {
                self.logs.system(
                    function,
                    "-",
                    &request_id,
                    format!("invocation failed: {error}"),
                );
            }
        }
        result
    }

    pub(crate) fn lookup_route(
        &self,
        method: &str,
        path: &str,
    ) -> Option<(String, shoal_events::RouteMatch)> {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        routes
            .lookup(method, path)
            .map(|(target, m)| (target.to_owned(), m))
    }

    pub(crate) async fn shutdown(&self) {
        self.persist_learned_limits();
        self.dispatcher.shutdown(self.shutdown_grace).await;
    }
}

fn report(mut pool: PoolStatus) -> PoolReport {
    let instances = std::mem::take(&mut pool.instances)
        .into_iter()
        .map(|status| InstanceReport {
            resources: status.pid.and_then(shoal_runtime::procfs::sample),
            status,
        })
        .collect();
    PoolReport { pool, instances }
}

fn runtime_kind(spec: &FunctionSpec) -> Result<RuntimeKind, DeployError> {
    match spec.runtime {
        Runtime::Nodejs => Ok(RuntimeKind::Node),
        Runtime::Provided => Ok(RuntimeKind::Provided),
        Runtime::Python => Err(DeployError::Unsupported {
            function: spec.name.clone(),
            reason: "runtime \"python\" is not available yet; use \"nodejs\" or \"provided\""
                .into(),
        }),
    }
}

/// The dispatcher's view of a function's settings.
pub(crate) fn pool_config(spec: &FunctionSpec, max_queue: usize) -> PoolConfig {
    let limit = match spec.concurrency {
        Concurrency::Fixed(n) => n,
        Concurrency::Auto => PoolConfig::AUTO_DEFAULT_LIMIT.min(spec.max_concurrency),
    };
    PoolConfig {
        limit,
        auto: spec.concurrency == Concurrency::Auto,
        memory_limit_kib: spec.memory_mb * 1024,
        max_concurrency: spec.max_concurrency.max(limit),
        max_instances: spec.max_instances,
        min_instances: spec.min_instances,
        idle_timeout: Duration::from_millis(spec.idle_timeout_ms),
        max_queue,
        timeout: Duration::from_millis(spec.timeout_ms),
        target_cpu: spec.target_cpu,
        latency_tolerance: spec.latency_tolerance,
    }
}

fn build_routes(specs: &[&FunctionSpec]) -> Result<RouteTable, shoal_events::RouteError> {
    let mut table = RouteTable::new();
    for spec in specs {
        for route in &spec.http {
            table.insert(route.method.as_deref(), &route.path, spec.name.clone())?;
        }
    }
    Ok(table)
}

/// The admin token: generated on first start, readable only by the owner.
fn admin_token(data_dir: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = data_dir.join("admin-token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim().to_owned();
        if !token.is_empty() {
            return Ok(token);
        }
    }
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    std::fs::write(&path, &token)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(token)
}
