//! The platform itself, with no transport in it: deploy, remove, invoke (each invocation
//! type), status, logs and the host budget are methods on [`Platform`], taking typed
//! requests and returning typed results or one [`Error`].
//!
//! It composes the store (what is deployed), the launcher (instance processes), the
//! dispatcher (pools, queues, scaling) and the route table. The gateway, the control API
//! and later schedulers, queue pollers and cluster peers call it directly; none of them
//! holds platform logic. It must not know about HTTP servers or status codes: mapping an
//! [`Error`] to a response is each transport's job, done in one place per transport.
// `unsafe` is denied workspace-wide; only `archive::dirfd` (libc's `*at` calls) allows it.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod archive;
mod cluster;
mod code;
mod cost;
mod datadir;
mod deploy;
mod error;
mod events;
mod invoke;
mod keys;
mod lambda;
mod logs;
mod metrics;
mod report;
mod status;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use shoal_dispatch::Dispatcher;
use shoal_events::RouteTable;
use shoal_runtime::{LauncherConfig, ProcessLauncher};
use shoal_store::Store;

pub use archive::{pack_dir, pack_dir_filtered, ArchiveError};
pub use cluster::{Cluster, ClusterError, Peer, Placement};
pub use cost::{lambda_prices, LAMBDA_PRICES_SOURCE};
pub use error::{chain, Error, Result};
pub use events::{Change, ChangeFeed, ChangeOp, ChangeSources, Lag, SourceError};
pub use invoke::{
    new_request_id, random_bytes, InvocationType, InvokeOutcome, InvokeRequest, Invoked,
};
pub use lambda::VersionDetail;
pub use logs::{now_ms, DEFAULT_MAX_LOG_BYTES};
pub use metrics::prometheus_text;
pub use shoal_api as api;
pub use shoal_queue::QueueError;
pub use shoal_runtime::sandbox::{SandboxConfig, SandboxMode};
pub use shoal_store::VersionRecord;

use logs::LogStore;
use metrics::Metrics;

/// How the platform runs: where its state lives and the bounds it keeps.
#[derive(Debug, Clone)]
pub struct Config {
    /// Everything Shoal writes lives here.
    pub data_dir: PathBuf,
    /// The `node` binary for Node.js functions.
    pub node: PathBuf,
    /// The Python interpreter (3.11+) for Python functions.
    pub python: PathBuf,
    /// How long an instance may take to become ready.
    pub start_timeout: Duration,
    /// At shutdown, in-flight invocations get this long to finish.
    pub shutdown_grace: Duration,
    /// Bounds on all functions' instances together: count, and the sum of their memory
    /// limits.
    pub host_budget: shoal_dispatch::BudgetLimits,
    /// Invocations waiting for a slot, per function version, before callers get
    /// `Overloaded`: what bounds the daemon's memory under a flood.
    pub max_queue: usize,
    /// The walls around instances.
    pub sandbox: shoal_runtime::sandbox::SandboxConfig,
    /// Start even though the store is blank while `code/` holds unpacked code. Off, a store
    /// truncated, deleted or swapped for a blank one stops the start instead of silently
    /// bringing the platform up with no functions.
    pub allow_empty_store: bool,
    /// Bytes a function's log file may hold before it is rotated (one old file is kept):
    /// what bounds the disk a function's output takes, about twice this per function.
    /// [`DEFAULT_MAX_LOG_BYTES`] unless set.
    pub max_log_bytes: u64,
    /// Bounds and timing of the event side (async invokes, queues, schedules).
    pub events: EventsConfig,
    /// Node processes kept started per function shape (memory, `/tmp`) to take cold
    /// starts; 0 turns the warm pool off.
    pub warm_pool: usize,
}

/// Bounds and timing of the event store and its triggers.
#[derive(Clone)]
pub struct EventsConfig {
    /// Messages pending in all queues together before sends and `Event` invokes are
    /// refused (429): what bounds the store's disk.
    pub max_pending_messages: u64,
    /// Bytes pending in all queues together, likewise.
    pub max_pending_bytes: u64,
    /// The wait before an async event's first retry; the n-th retry waits n times this.
    /// Lambda's is about a minute; tests shorten it.
    pub retry_base: Duration,
    /// Where postgres data-change triggers read (the server plugs in `shoal-pg`); without
    /// it a manifest with such a trigger is refused.
    pub change_sources: Option<Arc<dyn ChangeSources>>,
    /// The queue store, when not the embedded SQLite one in the data directory (cluster
    /// mode plugs in JetStream's). The pending bounds above are then the backend's own.
    pub queues: Option<Arc<dyn shoal_queue::QueueBackend>>,
    /// For tests only: schedules run this many times faster than the wall clock, so
    /// several periods of `rate(1 minute)` pass in seconds. 1, the default, is real time
    /// and the only value for production; `shoal serve --test-schedule-speedup` (hidden)
    /// sets it. A sped-up schedule keeps its fire records under keys of its own, so it
    /// never disturbs the real-time records of the same schedule.
    pub schedule_speedup: u32,
}

impl std::fmt::Debug for EventsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsConfig")
            .field("max_pending_messages", &self.max_pending_messages)
            .field("max_pending_bytes", &self.max_pending_bytes)
            .field("retry_base", &self.retry_base)
            .field("change_sources", &self.change_sources.is_some())
            .field("queues", &self.queues.is_some())
            .field("schedule_speedup", &self.schedule_speedup)
            .finish()
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            max_pending_messages: 10_000_000,
            max_pending_bytes: 4 * 1024 * 1024 * 1024,
            retry_base: Duration::from_secs(60),
            change_sources: None,
            queues: None,
            schedule_speedup: 1,
        }
    }
}

/// The platform: deployed functions (store + launcher + dispatcher + routes) and their
/// logs. Shared behind an `Arc` by every transport.
pub struct Platform {
    data_dir: PathBuf,
    store: Store,
    dispatcher: Arc<Dispatcher>,
    launcher: Arc<ProcessLauncher>,
    logs: Arc<LogStore>,
    metrics: Metrics,
    routes: RwLock<RouteTable>,
    /// Async invokes, queues and their triggers, schedules.
    events: events::Events,
    /// `http://host:port` of the public gateway, for the URLs a deploy reports.
    public_base: RwLock<String>,
    /// Deploys and deletes are serialised: each rebuilds the route table as a whole.
    changes: std::sync::Mutex<()>,
    shutdown_grace: Duration,
    max_queue: usize,
    /// Derives access-key secrets (see `keys.rs`); never leaves the daemon.
    key_master: Vec<u8>,
    /// The cluster this node publishes to and places calls through, once joined.
    cluster: std::sync::OnceLock<Arc<dyn Cluster>>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Platform {
    /// Open the data directory (creating it, private to this user, with `tmp/` cleared),
    /// the store and the launcher, and bring back every function deployed before the last
    /// restart. A blank store beside unpacked code is refused unless
    /// [`Config::allow_empty_store`]. Must run inside a tokio runtime.
    pub fn open(config: &Config) -> Result<Arc<Platform>> {
        // Absolute from here on: instances are started from paths under it after the
        // sandbox has changed their root and working directory, where a relative path
        // (the default `.shoal`) would name nothing.
        let data_dir = std::path::absolute(&config.data_dir).map_err(|source| {
            Error::io("resolving the data directory", &config.data_dir, source)
        })?;
        datadir::prepare(&data_dir)?;
        let store_path = data_dir.join("shoal.db");
        // Asked before the store is opened: opening writes a schema, and a refused start
        // must leave the evidence as it found it, for the next start to refuse too.
        let code_dirs = datadir::code_dirs(&data_dir)?;
        if code_dirs > 0 && Store::is_blank(&store_path)? {
            if !config.allow_empty_store {
                return Err(Error::EmptyStore {
                    store: store_path,
                    code_dirs,
                });
            }
            tracing::warn!(
                code_dirs,
                "the store is blank although code/ holds unpacked code; \
                 starting with no functions, as --allow-empty-store asks"
            );
        }
        let store = Store::open(&store_path)?;
        let key_master = keys::master_key(&data_dir)?;
        let logs_dir = data_dir.join("logs");
        let logs = Arc::new(
            LogStore::new(logs_dir.clone(), config.max_log_bytes)
                .map_err(|source| Error::io("creating the log directory", &logs_dir, source))?,
        );
        logs.start_flusher();
        let launcher = Arc::new(
            ProcessLauncher::new(
                LauncherConfig {
                    instances_dir: data_dir.join("instances"),
                    runtimes_dir: data_dir.join("runtimes"),
                    node: config.node.clone(),
                    python: config.python.clone(),
                    start_timeout: config.start_timeout,
                    sandbox: config.sandbox.clone(),
                    warm_pool: config.warm_pool,
                },
                logs.clone(),
            )
            .map_err(Error::Launcher)?,
        );
        let dispatcher = Dispatcher::with_budget(launcher.clone(), config.host_budget);
        launcher.share_budget(dispatcher.host_budget());
        let backend: Arc<dyn shoal_queue::QueueBackend> = match &config.events.queues {
            Some(queues) => queues.clone(),
            None => {
                let events_path = data_dir.join("events.db");
                shoal_queue::SqliteQueues::open(
                    &events_path,
                    shoal_queue::Options {
                        max_pending_messages: config.events.max_pending_messages,
                        max_pending_bytes: config.events.max_pending_bytes,
                        ..shoal_queue::Options::default()
                    },
                )
                .map_err(|e| Error::Events {
                    path: events_path,
                    source: e,
                })?
            }
        };
        let counters = Arc::new(events::EventCounters::default());
        let queues: Arc<dyn shoal_queue::QueueBackend> =
            Arc::new(events::Metered::new(backend, counters.clone()));
        let retry_base_ms = config.events.retry_base.as_millis() as u64;
        let platform = Arc::new_cyclic(|weak| Platform {
            events: events::Events::new(events::Ctx {
                queues,
                counters,
                invoker: Arc::new(events::PlatformInvoker(weak.clone())),
                clock: Arc::new(|| now_ms() as i64),
                retry_base_ms,
                sources: config.events.change_sources.clone(),
                schedule_clock: events::ScheduleClock::new(config.events.schedule_speedup),
            }),
            data_dir,
            store,
            dispatcher,
            launcher,
            logs,
            metrics: Metrics::new(),
            routes: RwLock::new(RouteTable::new()),
            public_base: RwLock::new(String::new()),
            changes: std::sync::Mutex::new(()),
            shutdown_grace: config.shutdown_grace,
            max_queue: config.max_queue,
            key_master,
            cluster: std::sync::OnceLock::new(),
        });
        platform.restore()?;
        Ok(platform)
    }

    /// The queue store, as transports (the SQS API) use it: every call is counted in the
    /// platform's metrics.
    pub fn queues(&self) -> &dyn shoal_queue::QueueBackend {
        &**self.events.queues()
    }

    /// Where the public gateway listens (`http://host:port`), for the URLs deploys report.
    pub fn set_public_base(&self, base: String) {
        *self.public_base.write().unwrap_or_else(|e| e.into_inner()) = base;
    }

    fn public_base(&self) -> String {
        self.public_base
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The data directory this platform owns.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// Save what the concurrency controllers learned, per function version. Blocking
    /// (SQLite): call from a blocking context.
    pub fn persist_learned_limits(&self) {
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
                    tracing::warn!(function = %pool.function, error = %error::chain(&e), "saving the learned limit");
                }
            }
        }
    }

    /// Refuse new calls, let in-flight ones finish (up to the shutdown grace), stop every
    /// instance. Learned limits are saved first.
    pub async fn shutdown(&self) {
        self.events.stop_all();
        self.persist_learned_limits();

        self.launcher.stop_warm_pool();
        self.dispatcher.shutdown(self.shutdown_grace).await;
        // What the instances printed while they drained.
        self.logs.flush_all();
    }
}
