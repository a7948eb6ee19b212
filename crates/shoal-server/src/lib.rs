//! The transports in front of the platform core: the public gateway (function routes)
//! and the control API (admin routes, the Lambda Invoke API, metrics), plus startup and
//! graceful shutdown.
//!
//! Each transport only translates: it parses a request into a typed call of
//! [`shoal_core::Platform`] and maps the typed result or error back to a response, in one
//! `respond` module per transport (the only places that choose status codes). It must not
//! hold platform logic, scaling policy, SQL or process spawning.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod auth;
mod control;
mod dashboard;
mod forward;
mod gateway;
mod http;
mod sigv4;
mod sqs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use shoal_core::{pack_dir, pack_dir_filtered, Platform, DEFAULT_MAX_LOG_BYTES};

/// At shutdown, after the drain, how long open connections get to write their last
/// answers before the daemon stops waiting for them.
const CONNECTION_LINGER: Duration = Duration::from_secs(2);
/// How often learned concurrency limits are written to the store.
const LEARNED_LIMIT_SAVE_PERIOD: Duration = Duration::from_secs(5);

/// How `shoal serve` (or the demo, or a test) runs the platform.
#[derive(Debug, Clone)]
pub struct Config {
    /// Everything Shoal writes lives here.
    pub data_dir: PathBuf,
    /// Public gateway: function routes only.
    pub gateway_addr: SocketAddr,
    /// Control API: admin, Invoke API, metrics; loopback by default.
    pub control_addr: SocketAddr,
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
    /// Invocations waiting for a slot, per function version, before callers get 429: what
    /// bounds the daemon's memory under a flood.
    pub max_queue: usize,
    /// The walls around instances.
    pub sandbox: shoal_core::SandboxConfig,
    /// Start even though the store is blank while `code/` holds unpacked code (the database
    /// was truncated, deleted or replaced): begin with no functions instead of refusing.
    pub allow_empty_store: bool,
    /// Bytes a function's log file may hold before it is rotated (one old file is kept,
    /// so about twice this per function on disk).
    pub max_log_bytes: u64,
    /// Bounds and timing of the event store (async invokes, queues, schedules).
    pub events: shoal_core::EventsConfig,
    /// The AWS region this daemon answers as: SigV4 signatures must be scoped to it and
    /// ARNs name it.
    pub region: String,
    /// Node processes kept started per function shape, to take cold starts (0: none).
    pub warm_pool: usize,
}

impl Config {
    /// Loopback on ephemeral ports, for tests and the demo.
    pub fn ephemeral(data_dir: PathBuf) -> Config {
        Config {
            data_dir,
            gateway_addr: ([127, 0, 0, 1], 0).into(),
            control_addr: ([127, 0, 0, 1], 0).into(),
            node: PathBuf::from("node"),
            python: PathBuf::from("python3"),
            start_timeout: Duration::from_secs(20),
            shutdown_grace: Duration::from_secs(10),
            host_budget: default_host_budget(),
            max_queue: DEFAULT_MAX_QUEUE,
            sandbox: shoal_core::SandboxConfig::default(),
            allow_empty_store: false,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
            events: shoal_core::EventsConfig::default(),
            region: DEFAULT_REGION.to_owned(),
            // Tests count processes and instances; the ones about the pool turn it on.
            warm_pool: 0,
        }
    }
}

/// The region SDKs are configured with most often, so their defaults work.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Invocations queued per function version by default.
pub const DEFAULT_MAX_QUEUE: usize = 1000;

/// Instances the host runs at most by default, across all functions.
pub const DEFAULT_HOST_MAX_INSTANCES: u32 = 512;

/// The default host budget: [`DEFAULT_HOST_MAX_INSTANCES`], and three quarters of the
/// machine's memory for the instances' memory limits together (the rest is the daemon's
/// and the system's).
pub fn default_host_budget() -> shoal_dispatch::BudgetLimits {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
    shoal_dispatch::BudgetLimits {
        max_instances: DEFAULT_HOST_MAX_INSTANCES,
        max_memory_kib: total_kib.map_or(u64::MAX, |t| t / 4 * 3),
    }
}

/// A running platform. Dropping it without [`Running::shutdown`] still kills instances
/// (they die with the daemon), but skips the drain.
pub struct Running {
    pub gateway_addr: SocketAddr,
    pub control_addr: SocketAddr,
    /// The admin token clients must present to the control API.
    pub token: String,
    pub platform: Arc<Platform>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Start the platform: open the store, restore deployed functions, bind both listeners.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    // The platform makes the data directory (private) before the token goes in it.
    let platform = Platform::open(&shoal_core::Config {
        data_dir: config.data_dir.clone(),
        node: config.node.clone(),
        python: config.python.clone(),
        start_timeout: config.start_timeout,
        shutdown_grace: config.shutdown_grace,
        host_budget: config.host_budget,
        max_queue: config.max_queue,
        sandbox: config.sandbox.clone(),
        allow_empty_store: config.allow_empty_store,
        max_log_bytes: config.max_log_bytes,
        events: config.events.clone(),
        warm_pool: config.warm_pool,
    })
    .map_err(|e| anyhow::anyhow!(shoal_core::chain(&e)))
    .context("opening the data directory")?;
    let token = auth::admin_token(&config.data_dir).context("reading the admin token")?;
    let gateway = TcpListener::bind(config.gateway_addr)
        .await
        .with_context(|| format!("binding the gateway to {}", config.gateway_addr))?;
    let control = TcpListener::bind(config.control_addr)
        .await
        .with_context(|| format!("binding the control API to {}", config.control_addr))?;
    let gateway_addr = gateway.local_addr()?;
    let control_addr = control.local_addr()?;
    platform.set_public_base(format!("http://{gateway_addr}"));
    std::fs::write(
        config.data_dir.join("control-addr"),
        control_addr.to_string(),
    )
    .context("writing control-addr")?;
    std::fs::write(
        config.data_dir.join("gateway-addr"),
        gateway_addr.to_string(),
    )
    .context("writing gateway-addr")?;
    let (stop, stopped) = watch::channel(false);
    let forwarder = Arc::new(forward::Forwarder::new());
    let persist = {
        let platform = platform.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(LEARNED_LIMIT_SAVE_PERIOD) => {}
                    _ = async { let _ = stopped.wait_for(|s| *s).await; } => return,
                }
                let platform = platform.clone();
                let _ =
                    tokio::task::spawn_blocking(move || platform.persist_learned_limits()).await;
            }
        })
    };
    let tasks = vec![
        persist,
        tokio::spawn(http::serve(
            gateway,
            stopped.clone(),
            gateway::Gateway::new(platform.clone(), forwarder.clone()),
        )),
        tokio::spawn(http::serve(
            control,
            stopped.clone(),
            control::Control::new(
                platform.clone(),
                token.clone(),
                config.region.clone(),
                control_addr,
                stopped,
                forwarder,
            ),
        )),
    ];
    Ok(Running {
        gateway_addr,
        control_addr,
        token,
        platform,
        stop,
        tasks,
    })
}

impl Running {
    /// Stop accepting, let in-flight invocations finish (up to the grace), stop instances,
    /// and let open connections deliver their last answers.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.platform.shutdown().await;
        // Every invocation has ended by now (finished, or failed as its instance stopped);
        // what is left is writing those answers out.
        let until = tokio::time::Instant::now() + CONNECTION_LINGER;
        for task in self.tasks {
            let _ = tokio::time::timeout_at(until, task).await;
        }
    }
}
