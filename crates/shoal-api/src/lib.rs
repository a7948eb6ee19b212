//! The control API's wire types, shared by the daemon (which serializes them) and the CLI
//! (which reads and prints them), so neither side reads the other's JSON untyped.
//!
//! Plain data only: no IO, no transport, no platform logic. The JSON field names are the
//! API (the benchmark runner and users' scripts read them); rename with care.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
pub use shoal_manifest::{Concurrency, Runtime};

pub mod aliases;
pub mod keys;
pub mod sqs;

/// `POST /admin/functions` (201): what a deploy made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployReply {
    pub functions: Vec<Deployed>,
}

/// One function version a deploy created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployed {
    pub name: String,
    pub version: u32,
    /// `METHOD http://host:port/path` per HTTP route.
    pub urls: Vec<String>,
}

/// `GET /admin/functions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionList {
    pub functions: Vec<FunctionInfo>,
}

/// One deployed function, for `shoal ls`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Queue triggers (`queue:NAME`) and schedules (`EXPRESSION next <epoch ms>`).
    #[serde(default)]
    pub events: Vec<EventInfo>,
}

/// One event source of a function, for `shoal ls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInfo {
    /// `queue` or `schedule`.
    pub kind: String,
    /// The queue name, the schedule expression or the table.
    pub source: String,
    /// Schedules: when it fires next (epoch ms), and the same in ISO 8601 UTC.
    pub next_fire_ms: Option<i64>,
    #[serde(default)]
    pub next_fire: Option<String>,
}

/// `DELETE /admin/functions/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deleted {
    pub deleted: String,
}

/// `GET /admin/status[?function=NAME]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub pools: Vec<PoolReport>,
    pub host: HostReport,
    /// How instance memory is limited on this machine (cgroup v2, v1, or heap flag only).
    pub memory_limits: String,
    /// Every wall around instances (uid, namespaces, seccomp, memory, pids, cpu, ...) and
    /// whether it is up on this machine.
    pub walls: Vec<WallReport>,
    /// Queues (user queues; with `function`, the ones its triggers read).
    #[serde(default)]
    pub queues: Vec<QueueReport>,
    /// Queue pollers, schedules and async-invoke workers, per function.
    #[serde(default)]
    pub triggers: Vec<TriggerReport>,
    /// In cluster mode, every node the cluster knows and what it carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterReport>,
    /// Runtime processes started ahead of need, by the shape they serve.
    #[serde(default)]
    pub warm_pool: Vec<WarmPoolReport>,
}

/// The warm pool's processes of one shape: ready to take a cold start of any function
/// of that runtime, memory and `/tmp` size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmPoolReport {
    pub runtime: String,
    pub memory_mb: u64,
    pub ephemeral_storage_mb: u64,
    /// Process ids of the ready ones.
    pub ready_pids: Vec<u32>,
    pub starting: u32,
    /// Why the last start of this shape failed, if it did (retried after 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The cluster as one node sees it (from the nodes' heartbeats).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterReport {
    /// The node that answered.
    pub node: String,
    /// A node whose heartbeat is older than this is taken for gone.
    pub expiry_ms: u64,
    pub nodes: Vec<NodeReport>,
}

/// One node, as its last heartbeat described it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub name: String,
    /// Public gateway, `host:port`.
    pub gateway: String,
    /// Control API, `host:port`.
    pub control: String,
    /// Since its last heartbeat arrived here.
    pub age_ms: u64,
    /// Heartbeat younger than the expiry.
    pub alive: bool,
    pub load: NodeLoad,
}

/// What a node carries: its host budget, and per function its room.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeLoad {
    pub instances: u32,
    pub max_instances: u32,
    pub memory_kib: u64,
    pub max_memory_kib: u64,
    pub functions: Vec<FunctionLoad>,
}

/// One function's capacity on a node (its active version's pool).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionLoad {
    pub name: String,
    pub version: u32,
    /// Ready and starting instances.
    pub instances: u32,
    pub starting: u32,
    /// Slots on those instances.
    pub slots: u32,
    /// Calls holding a slot or waiting for one.
    pub busy: u32,
    /// Slots free now.
    pub free: u32,
    /// The limit a new instance starts with.
    pub per_instance: u32,
    pub max_instances: u32,
}

/// One queue's depth and traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueReport {
    pub name: String,
    /// Receivable now.
    pub visible: u64,
    /// Received, not yet deleted.
    pub in_flight: u64,
    /// Waiting out a delay.
    pub delayed: u64,
    /// Age of the oldest message, if any.
    pub oldest_age_ms: Option<u64>,
    pub visibility_timeout_ms: u64,
    pub retention_ms: u64,
    pub dead_letter: Option<String>,
    pub max_receive_count: Option<u32>,
    /// Counted since the daemon started: sent, received, deleted, dead_lettered, expired,
    /// purged.
    pub counts: BTreeMap<String, u64>,
}

/// What drives a function besides calls: a queue poller, a schedule, or the worker that
/// runs its `Event` invocations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerReport {
    pub function: String,
    /// `queue`, `schedule`, `postgres` or `async`.
    pub kind: String,
    /// The queue name, the schedule expression or the table.
    pub source: String,
    /// Batches (or events) running now.
    pub in_flight: u32,
    /// Most it will run at once now, and why that many.
    pub cap: u32,
    pub why: String,
    /// Messages waiting in its queue; for a postgres trigger, changes not yet delivered
    /// (its lag in records).
    pub backlog: u64,
    /// Age of the oldest of them (a postgres trigger's lag in time).
    pub oldest_age_ms: Option<u64>,
    /// A postgres trigger's position: the last sequence number delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    /// Schedules: the next and the last fire (epoch ms).
    pub next_fire_ms: Option<i64>,
    pub last_fire_ms: Option<i64>,
    pub last_error: Option<String>,
    /// Counted since the daemon started (delivered, succeeded, retried, throttled,
    /// to_destination, dropped:<reason>, fired, late, ...).
    pub counts: BTreeMap<String, u64>,
}

/// One wall around instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WallReport {
    pub name: String,
    pub up: bool,
    /// What it does when up, or why it is down.
    pub detail: String,
}

/// Instances and memory in use against the host-wide budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    pub instances: u32,
    pub max_instances: u32,
    pub memory_kib: u64,
    pub max_memory_kib: u64,
}

/// One function version's pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolReport {
    pub function: String,
    pub version: u32,
    /// An older version finishing its work after a redeploy or delete.
    pub retired: bool,
    pub queued: usize,
    pub limit: u32,
    pub max_instances: u32,
    /// `concurrency = "auto"`.
    pub auto: bool,
    /// The limit a new instance starts with (learned from running ones when auto).
    pub learned_limit: u32,
    /// Instances the demand calls for (stable window).
    pub desired: usize,
    /// Mean in-flight + queued over the 60 s stable and the 6 s panic window.
    pub demand_stable: f64,
    pub demand_panic: f64,
    pub instances: Vec<InstanceReport>,
    /// Why the pool scaled, oldest first (a bounded history).
    pub decisions: Vec<DecisionReport>,
}

impl PoolReport {
    /// The most recent decision's sentence, or a placeholder when there is none yet.
    pub fn last_decision(&self) -> &str {
        self.decisions
            .last()
            .map_or("no decisions yet", |d| d.message.as_str())
    }
}

/// One scaling decision of a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionReport {
    /// Unix epoch milliseconds.
    pub at_ms: u64,
    /// A stable name (`scale_out`, `scale_in`, `idle_stop`, ...), for scripts.
    pub kind: String,
    /// The decision as a sentence, for people.
    pub message: String,
}

/// One instance and its resource use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub id: String,
    pub pid: Option<u32>,
    /// `starting`, `ready`, `draining` or `stopping`.
    pub state: String,
    pub in_flight: u32,
    pub limit: u32,
    pub uptime_ms: u64,
    pub invocations: u64,
    /// Fraction of one core used over the last sampling interval.
    pub cpu_busy: Option<f64>,
    /// Resident set size; `None` when the process could not be measured.
    pub rss_kib: Option<u64>,
    /// Proportional set size (shared pages split among their users).
    pub pss_kib: Option<u64>,
    /// User + system CPU time so far.
    pub cpu_ms: Option<u64>,
    /// The concurrency controller's Little's-law target L*, once measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub littles_law: Option<f64>,
}

/// `GET /admin/functions/{name}/logs`: records and the offset to continue from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogPage {
    pub records: Vec<LogRecord>,
    /// Pass as `since` to read what came after.
    pub next: u64,
}

/// One line of a function's output, or a platform message about one of its calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Unix epoch milliseconds when the daemon read the line.
    pub ts: u64,
    pub instance: String,
    /// The invocation that printed it, when the runtime said (Lambda's log format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// `stdout`, `stderr` or `platform`.
    pub stream: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    pub message: String,
}

/// The body of every error the control API answers, in the shape AWS SDKs parse
/// (`__type` is also sent as the `x-amzn-ErrorType` header).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(rename = "__type")]
    pub error_type: String,
    pub message: String,
}

/// Headers of the Lambda Invoke API.
pub mod headers {
    pub const INVOCATION_TYPE: &str = "x-amz-invocation-type";
    pub const FUNCTION_ERROR: &str = "x-amz-function-error";
    pub const REQUEST_ID: &str = "x-amzn-requestid";
    pub const EXECUTED_VERSION: &str = "x-amz-executed-version";
}

/// Lambda's prices the bill is computed with (`shoal cost`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prices {
    /// US dollars per GB-second of configured memory × billed duration.
    pub gb_second_usd: f64,
    /// US dollars per request.
    pub request_usd: f64,
    /// Where the figures come from and when they were read (or "overridden").
    pub source: String,
}

/// `GET /admin/cost`: what Lambda would bill for the calls of a window, next to what
/// Shoal's instances used for them, per function and in total.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostReport {
    /// The window, Unix epoch ms.
    pub since_ms: u64,
    pub until_ms: u64,
    pub prices: Prices,
    pub functions: Vec<FunctionCost>,
    pub total: FunctionCost,
}

/// One function's calls over the window (or the total: `function` is `"total"`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FunctionCost {
    pub function: String,
    /// Calls that reached an instance (each has a `REPORT` line).
    pub invocations: u64,
    pub cold_starts: u64,
    /// Lambda's side: billed milliseconds (init included), GB-seconds at the configured
    /// memory, and dollars (compute + requests).
    pub lambda_billed_ms: u64,
    pub lambda_gb_seconds: f64,
    pub lambda_usd: f64,
    /// Shoal's side: instance time spent with calls in flight (each call's share summed)
    /// or starting, the same at the configured memory, measured resident memory × that
    /// time, and CPU.
    pub shoal_instance_seconds: f64,
    pub shoal_configured_gb_seconds: f64,
    pub shoal_measured_gb_seconds: f64,
    pub shoal_cpu_seconds: f64,
}

/// `POST /admin/dashboard/login`: where the dashboard is, and a link that logs a browser
/// in once (the code in it is good for one use, for a short while).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DashboardLogin {
    pub url: String,
    pub login_url: String,
    pub expires_in_seconds: u64,
}
