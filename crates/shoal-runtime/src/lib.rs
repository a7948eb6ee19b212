//! Instance processes: spawning them with the Lambda environment, the native channel
//! (a framed Unix socket per instance, see docs/PROTOCOL.md) and the per-instance Lambda
//! Runtime API listener, stdout/stderr capture, memory limits (a cgroup per instance),
//! and resource sampling from /proc.
//!
//! This crate implements `shoal-dispatch`'s launcher and instance traits for real
//! processes. It is the only crate that spawns processes. It must not know about routes,
//! manifests or SQL: the server hands it a [`FunctionCode`] per function version.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod capture;
pub mod cgroup;
mod frame;
mod native;
mod process;
pub mod procfs;
mod python;
mod runtime_api;
pub mod sandbox;
pub mod warm;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_dispatch::{
    BoxFuture, ErrorType, InstanceHandle, InstanceLauncher, LaunchError, LaunchRequest, Outcome,
};

pub use frame::{decode_invoke, encode, encode_invoke, read_frame, Frame};
pub use procfs::ProcSample;

/// The Node bootstrap, compiled into the daemon and written into the data directory.
const NODE_BOOTSTRAP: &str = include_str!("../../../runtimes/node/bootstrap.js");
/// The Python bootstrap, likewise.
const PYTHON_BOOTSTRAP: &str = include_str!("../../../runtimes/python/bootstrap.py");
/// An instance's cgroup limit is its function's `memory` plus this: room for the runtime
/// itself outside the JavaScript heap (node's own footprint is about 40 MiB), so that for
/// heap growth V8's `--max-old-space-size` usually speaks first, with a clearer message,
/// while Buffers and native memory still meet the kernel's limit.
pub const RUNTIME_MEMORY_ALLOWANCE_MIB: u64 = 64;

/// Lambda's limit on a synchronous response payload (6 MiB and 100 bytes), held on both
/// channels: a larger result or error body fails its invocation with
/// [`RESPONSE_SIZE_TOO_LARGE`] instead of reaching the caller. It bounds what one answer
/// costs the daemon in memory.
pub const MAX_RESPONSE_BYTES: usize = 6_291_556;
/// The `errorType` of an invocation whose answer was larger than [`MAX_RESPONSE_BYTES`],
/// as Lambda names it.
pub const RESPONSE_SIZE_TOO_LARGE: &str = "Function.ResponseSizeTooLarge";

/// Which process an instance runs and how the daemon talks to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuntimeKind {
    /// `node` running Shoal's bootstrap over the native channel.
    Node,
    /// `python3` running Shoal's bootstrap over the native channel.
    Python,
    /// The function's own `bootstrap` executable over the Lambda Runtime API.
    Provided,
}

/// Everything needed to start instances of one function version.
#[derive(Debug, Clone)]
pub struct FunctionCode {
    pub function: String,
    pub version: u32,
    pub runtime: RuntimeKind,
    pub handler: String,
    /// Unpacked code, read-only: `LAMBDA_TASK_ROOT` and the working directory.
    pub code_dir: PathBuf,
    pub memory_mb: u64,
    /// Size of the instance's private `/tmp`.
    pub ephemeral_storage_mb: u64,
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// Where instance output goes, one line at a time.
pub trait LogSink: Send + Sync + 'static {
    fn line(&self, function: &str, instance: &str, stream: LogStream, line: &str);
    /// The instance ended without being asked to (a crash, an out-of-memory kill);
    /// `reason` is the same one-line exit reason its callers and the pool see.
    fn exited(&self, function: &str, instance: &str, reason: &str) {
        let _ = (function, instance, reason);
    }
    /// The daemon stopped the instance because of what it did (it broke the channel's
    /// protocol); `reason` says what.
    fn stopped(&self, function: &str, instance: &str, reason: &str) {
        let _ = (function, instance, reason);
    }
}

/// How instance memory is limited on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryLimits {
    /// A cgroup per instance (plus the heap flag for Node).
    Cgroup {
        version: cgroup::Version,
        /// The launcher's parent cgroup.
        dir: PathBuf,
    },
    /// No usable memory controller: Node's heap flag is the only limit.
    HeapFlagOnly { why: String },
}

impl std::fmt::Display for MemoryLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemoryLimits::Cgroup { version, dir } => {
                let v = match version {
                    cgroup::Version::V1 => "v1",
                    cgroup::Version::V2 => "v2",
                };
                write!(f, "cgroup {v} per instance under {}", dir.display())
            }
            MemoryLimits::HeapFlagOnly { why } => {
                write!(f, "V8 heap flag only (no usable memory cgroup: {why})")
            }
        }
    }
}

/// Settings of the process launcher.
#[derive(Debug, Clone)]
pub struct LauncherConfig {
    /// Parent of per-instance scratch directories (sockets live there).
    pub instances_dir: PathBuf,
    /// Where the built-in bootstraps are written.
    pub runtimes_dir: PathBuf,
    /// The `node` binary.
    pub node: PathBuf,
    /// The Python interpreter (3.11 or later) for Python functions.
    pub python: PathBuf,
    /// How long an instance may take to become ready.
    pub start_timeout: Duration,
    /// The walls around instances.
    pub sandbox: sandbox::SandboxConfig,
    /// Node processes kept started per shape (memory, `/tmp` size) of the registered
    /// functions, to take a function's cold start (`warm.rs`); 0 turns the pool off.
    pub warm_pool: usize,
}

/// Processes and threads one instance may have at once (Lambda allows 1024).
pub const MAX_PIDS: u32 = 1024;
/// CPU one instance may use, in cores: a runtime that needs more gets more instances.
pub const CPU_CORES: f64 = 1.0;

/// Starts real instance processes for registered function versions.
pub struct ProcessLauncher {
    config: LauncherConfig,
    node_bootstrap: PathBuf,
    logs: Arc<dyn LogSink>,
    functions: Mutex<HashMap<(String, u32), Arc<FunctionCode>>>,
    /// Parent of the instances' memory cgroups, when the machine has a usable controller.
    cgroups: Option<Arc<cgroup::Root>>,
    memory_limits: MemoryLimits,
    sandbox: Arc<sandbox::Sandbox>,
    /// `node`, resolved to an absolute path (it must be reachable inside the sandbox).
    node: PathBuf,
    python_bootstrap: PathBuf,
    /// The Python interpreter as it described itself, or why it cannot run functions.
    python: Result<python::Install, String>,
    warm: Arc<warm::WarmPool>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("preparing {path}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the sandbox is required (--sandbox on) but its {wall} wall is down: {why}")]
    Sandbox { wall: &'static str, why: String },
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// `program` as an absolute path: looked up in `PATH` when it is a bare name.
fn resolve_program(program: &Path) -> PathBuf {
    if program.components().count() > 1 {
        return std::fs::canonicalize(program).unwrap_or_else(|_| program.to_owned());
    }
    program
        .to_str()
        .and_then(sandbox::find_in_path)
        .and_then(|found| std::fs::canonicalize(found).ok())
        .unwrap_or_else(|| program.to_owned())
}

impl ProcessLauncher {
    /// Create the directories and write the built-in bootstraps.
    pub fn new(config: LauncherConfig, logs: Arc<dyn LogSink>) -> Result<ProcessLauncher, Error> {
        let prepare = |path: &Path, result: std::io::Result<()>| {
            result.map_err(|source| Error::Prepare {
                path: path.to_owned(),
                source,
            })
        };
        prepare(
            &config.instances_dir,
            std::fs::create_dir_all(&config.instances_dir),
        )?;
        let node_dir = config.runtimes_dir.join("node");
        prepare(&node_dir, std::fs::create_dir_all(&node_dir))?;
        let node_bootstrap = node_dir.join("bootstrap.js");
        prepare(
            &node_bootstrap,
            std::fs::write(&node_bootstrap, NODE_BOOTSTRAP),
        )?;
        let python_dir = config.runtimes_dir.join("python");
        prepare(&python_dir, std::fs::create_dir_all(&python_dir))?;
        let python_bootstrap = python_dir.join("bootstrap.py");
        prepare(
            &python_bootstrap,
            std::fs::write(&python_bootstrap, PYTHON_BOOTSTRAP),
        )?;
        let (cgroups, memory_limits) = match cgroup::Root::create() {
            Ok(root) => {
                let limits = MemoryLimits::Cgroup {
                    version: root.version(),
                    dir: root.dir().to_owned(),
                };
                tracing::info!("memory limits: {limits}");
                (Some(Arc::new(root)), limits)
            }
            Err(why) => {
                let limits = MemoryLimits::HeapFlagOnly { why };
                tracing::warn!("memory limits: {limits}");
                (None, limits)
            }
        };
        let sandbox = sandbox::Sandbox::probe(&config.sandbox);
        if config.sandbox.mode == sandbox::SandboxMode::Required {
            if let Some(down) = sandbox.walls().iter().find(|w| !w.up) {
                return Err(Error::Sandbox {
                    wall: down.name,
                    why: down.detail.clone(),
                });
            }
        }
        for wall in sandbox.walls() {
            if wall.up {
                tracing::info!(wall = wall.name, "wall up: {}", wall.detail);
            } else {
                tracing::warn!(wall = wall.name, "wall DOWN: {}", wall.detail);
            }
        }
        if sandbox.enabled() {
            // Read by the instance's uid once staged (the directories above it stay closed).
            prepare(&node_bootstrap, set_mode(&node_bootstrap, 0o644))?;
            prepare(&python_bootstrap, set_mode(&python_bootstrap, 0o644))?;
        }
        let node = resolve_program(&config.node);
        let python = python::Install::probe(&config.python);
        match &python {
            Ok(install) => tracing::info!("python functions run on {install}"),
            Err(why) => tracing::warn!("python functions cannot run: {why}"),
        }
        let warm = warm::WarmPool::new(
            config.warm_pool,
            warm::Spawner {
                node: node.clone(),
                bootstrap: node_bootstrap.clone(),
                instances_dir: config.instances_dir.clone(),
                sandbox: sandbox.clone(),
                cgroups: cgroups.clone(),
                logs: logs.clone(),
                start_timeout: config.start_timeout,
                env: base_environment(sandbox.enabled()),
                python: python.clone().ok(),
                python_bootstrap: python_bootstrap.clone(),
            },
        );
        Ok(ProcessLauncher {
            config,
            node_bootstrap,
            logs,
            functions: Mutex::new(HashMap::new()),
            cgroups,
            memory_limits,
            sandbox,
            node,
            python_bootstrap,
            python,
            warm,
        })
    }

    /// Every wall around instances and whether it is up on this machine.
    pub fn walls(&self) -> Vec<sandbox::Wall> {
        let mut walls = self.sandbox.walls().to_vec();
        let cgroups = self.cgroups.as_deref();
        walls.push(sandbox::Wall {
            name: "memory",
            up: cgroups.is_some(),
            detail: self.memory_limits.to_string(),
        });
        walls.push(sandbox::Wall {
            name: "pids",
            up: cgroups.is_some_and(cgroup::Root::has_pids),
            detail: if cgroups.is_some_and(cgroup::Root::has_pids) {
                format!("at most {MAX_PIDS} processes and threads per instance")
            } else {
                "no usable pids controller".into()
            },
        });
        walls.push(sandbox::Wall {
            name: "cpu",
            up: cgroups.is_some_and(cgroup::Root::has_cpu),
            detail: if cgroups.is_some_and(cgroup::Root::has_cpu_guard) {
                format!(
                    "at most {CPU_CORES} core(s) of CPU time per instance, and confined to \
                     that many CPUs once it keeps wanting more"
                )
            } else if cgroups.is_some_and(cgroup::Root::has_cpu) {
                format!("at most {CPU_CORES} core(s) of CPU time per instance")
            } else {
                "no usable cpu controller".into()
            },
        });
        walls.push(sandbox::Wall {
            name: "tmp",
            up: self.sandbox.enabled(),
            detail: if self.sandbox.enabled() {
                "private /tmp per instance, capped at the function's ephemeral_storage".into()
            } else {
                "instances share the host's /tmp".into()
            },
        });
        walls
    }

    /// How instance memory is limited here (said once in the log at start).
    pub fn memory_limits(&self) -> &MemoryLimits {
        &self.memory_limits
    }

    /// The warm pool's processes by shape, for status.
    pub fn warm_pool(&self) -> Vec<warm::WarmShape> {
        self.warm.status()
    }

    /// Count the warm pool's processes in the dispatcher's host budget (call once, after
    /// the dispatcher exists).
    pub fn share_budget(&self, budget: Arc<shoal_dispatch::HostBudget>) {
        self.warm.set_budget(budget);
    }

    /// Stop the warm pool's processes (at shutdown).
    pub fn stop_warm_pool(&self) {
        self.warm.clear();
    }

    /// Make a function version launchable (before the dispatcher deploys it).
    pub fn register(&self, code: FunctionCode) {
        if let Some(shape) = warm::Shape::of(&code) {
            self.warm.want(shape);
        }
        let key = (code.function.clone(), code.version);
        self.functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, Arc::new(code));
    }

    fn code(&self, function: &str, version: u32) -> Option<Arc<FunctionCode>> {
        let functions = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        functions.get(&(function.to_owned(), version)).cloned()
    }

    /// The environment every instance gets: Lambda's variables, then the function's own.
    fn environment(&self, code: &FunctionCode, request: &LaunchRequest) -> Vec<(String, String)> {
        let (home, task_root) = if self.sandbox.enabled() {
            ("/tmp".to_owned(), sandbox::TASK_ROOT.to_owned())
        } else {
            let dir = code.code_dir.display().to_string();
            (dir.clone(), dir)
        };
        let mut env = base_environment(self.sandbox.enabled());
        env.extend(
            [
                ("HOME", home),
                ("_HANDLER", code.handler.clone()),
                ("LAMBDA_TASK_ROOT", task_root),
                ("AWS_REGION", "local".into()),
                ("AWS_DEFAULT_REGION", "local".into()),
                ("AWS_LAMBDA_FUNCTION_NAME", code.function.clone()),
                ("AWS_LAMBDA_FUNCTION_VERSION", code.version.to_string()),
                (
                    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                    code.memory_mb.to_string(),
                ),
                (
                    "AWS_LAMBDA_LOG_GROUP_NAME",
                    format!("/aws/lambda/{}", code.function),
                ),
                ("AWS_LAMBDA_LOG_STREAM_NAME", request.instance_id.clone()),
                (
                    "AWS_LAMBDA_MAX_CONCURRENCY",
                    request.max_concurrency.to_string(),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
        );
        env.extend(code.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }
}

/// What every runtime process gets before it has a function (a warm-pool process only
/// this): the search path, the locale and the zone.
fn base_environment(sandboxed: bool) -> Vec<(String, String)> {
    let path = if sandboxed {
        "/usr/local/bin:/usr/bin:/bin".to_owned()
    } else {
        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())
    };
    vec![
        ("PATH".into(), path),
        ("LANG".into(), "C.UTF-8".into()),
        ("TZ".into(), ":UTC".into()),
    ]
}

impl InstanceLauncher for ProcessLauncher {
    fn launch(
        &self,
        request: LaunchRequest,
    ) -> BoxFuture<Result<Arc<dyn InstanceHandle>, LaunchError>> {
        let Some(code) = self.code(&request.function, request.version) else {
            let message = format!(
                "{} version {} is not registered",
                request.function, request.version
            );
            return Box::pin(async move { Err(LaunchError::new(ErrorType::Unknown, message)) });
        };
        let scratch = self.config.instances_dir.join(&request.instance_id);
        let env = self.environment(&code, &request);
        let start = Launch {
            code,
            scratch,
            env,
            request,
            logs: self.logs.clone(),
            start_timeout: self.config.start_timeout,
            cgroups: self.cgroups.clone(),
            sandbox: self.sandbox.clone(),
        };
        let pooled = warm::Shape::of(&start.code).and_then(|shape| self.warm.take(shape));
        if let Some((pooled, assigning)) = pooled {
            return Box::pin(async move {
                let started = native::assign(pooled, start).await;
                // The instance is up (or failed): now the pool may refill.
                drop(assigning);
                started
            });
        }
        match start.code.runtime {
            RuntimeKind::Node => {
                let node = self.node.clone();
                let bootstrap = self.node_bootstrap.clone();
                // V8's heap is capped at the function's memory; the process dies rather
                // than swap.
                let args = vec![format!("--max-old-space-size={}", start.code.memory_mb)];
                Box::pin(async move {
                    let node = native::Interpreter {
                        program: &node,
                        args,
                        home: None,
                    };
                    native::launch(start, node, &bootstrap).await
                })
            }
            RuntimeKind::Python => {
                let install = match &self.python {
                    Ok(install) => install.clone(),
                    Err(why) => {
                        let error = LaunchError::new(ErrorType::Unknown, why.clone());
                        return Box::pin(async move { Err(error) });
                    }
                };
                let bootstrap = self.python_bootstrap.clone();
                Box::pin(async move {
                    let python = native::Interpreter {
                        program: &install.executable,
                        args: python::ARGS.iter().map(|a| (*a).to_owned()).collect(),
                        home: install.home(),
                    };
                    native::launch(start, python, &bootstrap).await
                })
            }
            RuntimeKind::Provided => Box::pin(runtime_api::launch(start)),
        }
    }
}

/// One instance start in progress.
pub(crate) struct Launch {
    pub code: Arc<FunctionCode>,
    pub scratch: PathBuf,
    pub env: Vec<(String, String)>,
    pub request: LaunchRequest,
    pub logs: Arc<dyn LogSink>,
    pub start_timeout: Duration,
    pub cgroups: Option<Arc<cgroup::Root>>,
    pub sandbox: Arc<sandbox::Sandbox>,
}

impl Launch {
    fn error(&self, error_type: ErrorType, message: impl Into<String>) -> LaunchError {
        LaunchError::new(error_type, message)
    }

    /// The instance's memory cgroup, limited to the function's memory plus the runtime
    /// allowance. Without one the instance still starts (under the heap flag alone).
    fn cgroup(&self) -> Option<cgroup::InstanceCgroup> {
        let root = self.cgroups.as_ref()?;
        let limits = instance_limits(self.code.memory_mb);
        match root.instance(&self.request.instance_id, limits) {
            Ok(cgroup) => Some(cgroup),
            Err(e) => {
                tracing::warn!(instance = %self.request.instance_id, error = %e,
                    "creating the instance's memory cgroup; it runs without one");
                None
            }
        }
    }

    /// The sandbox plan for this instance's process, if instances are sandboxed here.
    /// `program` must be visible inside (under `/usr`, the code, or the bootstrap dir).
    /// `home`, when given, is shown instead of the program's own directory (an
    /// interpreter's installation, which holds its standard library too).
    fn sandbox_plan(
        &self,
        runtime_dir: Option<&Path>,
        program: &Path,
        home: Option<&Path>,
    ) -> Result<Option<sandbox::Plan>, LaunchError> {
        let extra_ro = home
            .or_else(|| program.parent())
            .filter(|dir| !dir.starts_with("/usr") && !dir.starts_with(&self.code.code_dir));
        self.sandbox
            .plan(&sandbox::View {
                code_dir: &self.code.code_dir,
                runtime_dir,
                extra_ro,
                tmp_bytes: self.code.ephemeral_storage_mb * 1024 * 1024,
            })
            .map_err(|why| self.error(ErrorType::Unknown, why))
    }

    fn prepare_scratch(&self) -> Result<(), LaunchError> {
        let _ = std::fs::remove_dir_all(&self.scratch);
        std::fs::create_dir_all(&self.scratch).map_err(|e| {
            self.error(
                ErrorType::Unknown,
                format!("creating {}: {e}", self.scratch.display()),
            )
        })
    }
}

/// The cgroup limits of an instance of a function with `memory_mb` of memory.
pub(crate) fn instance_limits(memory_mb: u64) -> cgroup::Limits {
    cgroup::Limits {
        memory_bytes: (memory_mb + RUNTIME_MEMORY_ALLOWANCE_MIB) * 1024 * 1024,
        pids: MAX_PIDS,
        cpu_cores: CPU_CORES,
    }
}

/// Parse a runtime's `{errorType, errorMessage}` init error into a launch error.
pub(crate) fn launch_error_from_json(body: &[u8], fallback: ErrorType) -> LaunchError {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    LaunchError {
        error_type: value["errorType"]
            .as_str()
            .map_or(fallback, ErrorType::from),
        message: value["errorMessage"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned()),
    }
}

/// How large an answer that was refused for its size is, as far as it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AnswerSize {
    Exactly(u64),
    /// Reading stopped at this many bytes without reaching the end.
    MoreThan(u64),
}

/// The invocation's outcome when its answer was larger than [`MAX_RESPONSE_BYTES`]:
/// Lambda's error, which the caller sees as a function error.
pub(crate) fn response_too_large(size: AnswerSize) -> Outcome {
    let size = match size {
        AnswerSize::Exactly(n) => format!("{n} bytes"),
        AnswerSize::MoreThan(n) => format!("more than {n} bytes"),
    };
    let body = serde_json::json!({
        "errorType": RESPONSE_SIZE_TOO_LARGE,
        "errorMessage": format!(
            "Response payload size ({size}) exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes)."
        ),
    });
    Outcome::FunctionError {
        error_type: RESPONSE_SIZE_TOO_LARGE.to_owned(),
        body: body.to_string().into(),
    }
}

/// The `errorType` a handler's error body names (the user's own, e.g. `TypeError`).
pub(crate) fn function_error_type(body: &[u8], fallback: &str) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["errorType"].as_str().map(str::to_owned))
        .unwrap_or_else(|| fallback.to_owned())
}
