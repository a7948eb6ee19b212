//! Per-function instance pools, pending queues and the routing policy.
//!
//! The dispatcher owns the answer to "which instance runs this invocation, now or later":
//! it hands an invocation to an instance only while that instance's in-flight count is
//! below its limit, queues the rest (bounded), starts the instances a burst needs
//! (`ceil(excess / limit)`, counting the capacity of instances that are still starting),
//! drains old versions after a redeploy and stops idle instances.
//!
//! It is pure logic over the [`InstanceLauncher`] and [`InstanceHandle`] traits, so it is
//! tested with a paused tokio clock and fake instances. It must not know about HTTP, SQL
//! or `std::process`: the real launcher lives in `shoal-runtime`.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod budget;
pub mod controller;
mod decision;
mod dispatcher;
pub mod meter;
mod pool;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::time::Instant;

pub use budget::{BudgetLimits, BudgetRefusal, BudgetStatus, HostBudget, Ticket};
pub use decision::{Decision, DecisionRecord, LaunchReason, ProbeEnd, DECISION_HISTORY};
pub use dispatcher::Dispatcher;
pub use pool::{InstanceState, InstanceStatus, PoolStatus, Room};

/// A boxed, sendable future, the return type of the trait methods below.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// One call of a function, as the dispatcher moves it.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The `awsRequestId` the handler sees.
    pub request_id: String,
    /// The event, UTF-8 JSON.
    pub payload: Bytes,
    /// When the caller stops waiting (queueing counts against it).
    pub deadline: Instant,
    /// The same deadline as Unix epoch milliseconds, for the runtime's context.
    pub deadline_epoch_ms: u64,
    /// The caller's client context (`X-Amz-Client-Context`, decoded: JSON), for the
    /// handler's `context.clientContext`.
    pub client_context: Option<Bytes>,
}

/// Called with the instance's id when a call is handed to it (the core writes Lambda's
/// `START` line there, so it precedes what the handler prints).
pub type OnStart = Arc<dyn Fn(&str) + Send + Sync>;

/// Where a call ran and what it used, for its `REPORT` line and the bill.
#[derive(Debug, Clone, PartialEq)]
pub struct CallReport {
    pub instance: String,
    /// From arrival to the slot's hand-over (waiting for a slot or a starting instance).
    pub queued: Duration,
    /// From the hand-over to the answer: Lambda's `Duration`.
    pub duration: Duration,
    /// How long the instance took to start, on the first call it ran: Lambda's
    /// `Init Duration` on a cold call.
    pub init: Option<Duration>,
    /// Its share of the instance (see [`meter`]).
    pub usage: meter::Usage,
    /// The function version's memory setting (0: none): Lambda's `Memory Size`.
    pub memory_limit_kib: u64,
}

/// What a handler produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The handler's result, UTF-8 JSON.
    Success(Bytes),
    /// The handler threw or rejected: `{errorType, errorMessage, stackTrace}` JSON.
    FunctionError { error_type: String, body: Bytes },
}

/// Why an instance could not finish an invocation it was given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InstanceFailure {
    /// The process exited (or the channel broke) while the invocation was in flight.
    #[error("instance {instance} exited while handling the request: {detail}")]
    Crashed { instance: String, detail: String },
    /// The instance refused the invocation (it is stopping or its channel is closed).
    #[error("instance {instance} is not accepting work")]
    Unavailable { instance: String },
}

/// Why an instance failed to start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{error_type}: {message}")]
pub struct LaunchError {
    pub error_type: ErrorType,
    pub message: String,
}

impl LaunchError {
    pub fn new(error_type: ErrorType, message: impl Into<String>) -> Self {
        Self {
            error_type,
            message: message.into(),
        }
    }
}

/// The Lambda error type of a failed start, as the caller sees it (`errorType`).
///
/// The platform's own failures have a variant each; a runtime may report any name for a
/// failed init (a handler module that throws a `TypeError` at load), kept as `Other`.
/// [`ErrorType::from`] maps a known name to its variant, so a name compares equal however
/// it arrived.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// `Runtime.Unknown`: the platform could not prepare or spawn the instance.
    Unknown,
    /// `Runtime.ExitError`: the process exited before it was ready.
    ExitError,
    /// `Runtime.StartTimeout`: the process did not become ready in time.
    StartTimeout,
    /// `Runtime.ProtocolError`: the runtime's first message was not the expected hello.
    ProtocolError,
    /// `Runtime.InvalidEntrypoint`: a `provided` function has no executable `bootstrap`.
    InvalidEntrypoint,
    /// `Runtime.InitError`: the runtime reported an init error without naming its type.
    InitError,
    /// `Runtime.ImportModuleError`: the handler's module could not be loaded.
    ImportModuleError,
    /// `Runtime.UserCodeSyntaxError`: the handler's module does not parse.
    UserCodeSyntaxError,
    /// `Runtime.HandlerNotFound`: the module does not export the handler.
    HandlerNotFound,
    /// `Runtime.MalformedHandlerName`: the manifest's handler is not `module.export`.
    MalformedHandlerName,
    /// Any other name a runtime reported, verbatim.
    Other(String),
}

impl ErrorType {
    const KNOWN: [ErrorType; 10] = [
        ErrorType::Unknown,
        ErrorType::ExitError,
        ErrorType::StartTimeout,
        ErrorType::ProtocolError,
        ErrorType::InvalidEntrypoint,
        ErrorType::InitError,
        ErrorType::ImportModuleError,
        ErrorType::UserCodeSyntaxError,
        ErrorType::HandlerNotFound,
        ErrorType::MalformedHandlerName,
    ];

    /// Lambda's name for it, e.g. `Runtime.ExitError`.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorType::Unknown => "Runtime.Unknown",
            ErrorType::ExitError => "Runtime.ExitError",
            ErrorType::StartTimeout => "Runtime.StartTimeout",
            ErrorType::ProtocolError => "Runtime.ProtocolError",
            ErrorType::InvalidEntrypoint => "Runtime.InvalidEntrypoint",
            ErrorType::InitError => "Runtime.InitError",
            ErrorType::ImportModuleError => "Runtime.ImportModuleError",
            ErrorType::UserCodeSyntaxError => "Runtime.UserCodeSyntaxError",
            ErrorType::HandlerNotFound => "Runtime.HandlerNotFound",
            ErrorType::MalformedHandlerName => "Runtime.MalformedHandlerName",
            ErrorType::Other(name) => name,
        }
    }
}

impl From<&str> for ErrorType {
    fn from(name: &str) -> Self {
        Self::KNOWN
            .into_iter()
            .find(|known| known.as_str() == name)
            .unwrap_or_else(|| ErrorType::Other(name.to_owned()))
    }
}

impl fmt::Display for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors the caller of [`Dispatcher::invoke`] sees. The server maps each to one HTTP
/// status in one place.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DispatchError {
    #[error("function {0} not found")]
    NotFound(String),
    #[error("Task timed out after {:.2} seconds", .0.as_secs_f64())]
    Timeout(Duration),
    #[error(transparent)]
    Instance(#[from] InstanceFailure),
    #[error("function failed to start: {0}")]
    InitFailed(LaunchError),
    #[error("too many requests queued for {function}; retry after {retry_after:?}")]
    Overloaded {
        function: String,
        retry_after: Duration,
    },
    #[error("the platform is shutting down")]
    ShuttingDown,
}

pub type Result<T, E = DispatchError> = std::result::Result<T, E>;

/// A running instance as the dispatcher sees it. Implemented by `shoal-runtime` for real
/// processes and by fakes in tests.
pub trait InstanceHandle: Send + Sync + 'static {
    /// Run one invocation. The future may be dropped (caller timeout or disconnect): the
    /// implementation must then forget the invocation without disturbing others.
    fn invoke(&self, invocation: Invocation) -> BoxFuture<Result<Outcome, InstanceFailure>>;
    /// Resolves once the instance is gone, with a one-line reason.
    fn exited(&self) -> BoxFuture<String>;
    /// Ask the instance to stop (idempotent). In-flight work has already drained when the
    /// dispatcher calls this, except at shutdown.
    fn stop(&self);
    /// OS process id, when there is one.
    fn pid(&self) -> Option<u32>;
    /// CPU time consumed and memory in use so far, when measurable. The concurrency
    /// controller reads it once per sampling interval.
    fn resources(&self) -> Option<Resources> {
        None
    }
    /// Total time the instance's threads have spent runnable but waiting for a CPU taken
    /// by something else, when measurable: what tells the controller that a slow,
    /// half-busy instance is starved of CPU rather than idle. Read once per sampling
    /// interval.
    fn run_wait(&self) -> Option<Duration> {
        None
    }
    /// Whether the instance's process is stopped (`SIGSTOP`): it has stopped answering,
    /// and must get no new calls. Read once per sampling interval.
    fn frozen(&self) -> bool {
        false
    }
}

/// A reading of an instance's resource use.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Resources {
    /// Total CPU time (user + system) since the instance started.
    pub cpu_time: Duration,
    pub rss_kib: u64,
}

/// What the dispatcher asks the launcher to start.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    pub function: String,
    pub version: u32,
    /// Unique across the daemon's lifetime, e.g. `hello-3-7`.
    pub instance_id: String,
    /// The ceiling the runtime may assume (`AWS_LAMBDA_MAX_CONCURRENCY`).
    pub max_concurrency: u32,
}

/// Starts instances. `launch` resolves when the instance is ready to take work.
pub trait InstanceLauncher: Send + Sync + 'static {
    fn launch(
        &self,
        request: LaunchRequest,
    ) -> BoxFuture<Result<Arc<dyn InstanceHandle>, LaunchError>>;
}

/// Per-version pool settings, derived from the function's manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// In-flight invocations per instance: fixed, or where `auto` starts (a learned limit).
    pub limit: u32,
    /// `concurrency = "auto"`: each instance's limit is tuned by a [`controller::Controller`].
    pub auto: bool,
    /// The instance's memory limit, for the controller's memory rule (0: unknown).
    pub memory_limit_kib: u64,
    /// Ceiling handed to runtimes; `limit` never exceeds it.
    pub max_concurrency: u32,
    /// The runtime sizes itself once, at start, from the ceiling it is told
    /// (`AWS_LAMBDA_MAX_CONCURRENCY`: a `provided` runtime's concurrent polls or worker
    /// processes). Each instance is then told its starting limit instead of
    /// `max_concurrency`, and its limit never grows past what it was told; a later
    /// instance may be told more.
    pub sized_at_start: bool,
    pub max_instances: u32,
    /// Warm instances kept even when idle.
    pub min_instances: u32,
    /// An instance idle this long is stopped (down to `min_instances`).
    pub idle_timeout: Duration,
    /// Invocations waiting for a slot beyond this get `Overloaded` (429): bounds memory.
    pub max_queue: usize,
    /// The function's timeout: queueing plus running, from arrival.
    pub timeout: Duration,
    /// `auto`: the controller's target busy fraction of one core.
    pub target_cpu: f64,
    /// `auto`: latency may rise to this multiple of its uncontended baseline.
    pub latency_tolerance: f64,
    /// `auto` with nothing learned yet: a cold burst starts one instance and sizes the
    /// rest from what it shows in its first few hundred milliseconds (`pool/probe.rs`).
    pub probe: bool,
}

impl PoolConfig {
    /// Where `concurrency = "auto"` starts before anything was learned: enough for the
    /// seed's burst of 10 in one instance, low enough not to drown a CPU-bound function
    /// before the controller's first samples bring it down.
    pub const AUTO_DEFAULT_LIMIT: u32 = controller::ControllerConfig::DEFAULT_INITIAL_LIMIT;
}

/// Now as Unix epoch milliseconds (0 if the clock is before 1970).
fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_types_round_trip_through_their_lambda_names() {
        for known in ErrorType::KNOWN {
            assert_eq!(ErrorType::from(known.as_str()), known);
            assert_eq!(known.to_string(), known.as_str());
        }
        assert_eq!(ErrorType::from("Runtime.ExitError"), ErrorType::ExitError);
        assert_eq!(
            ErrorType::from("Runtime.ConfigError"),
            ErrorType::Other("Runtime.ConfigError".into())
        );
        assert_eq!(ErrorType::Other("TypeError".into()).as_str(), "TypeError");
    }
}
