//! Durable queues: the one path every asynchronous trigger goes through (async invokes,
//! SQS-style queues, schedule fires), behind the narrow [`QueueBackend`] trait so the
//! embedded SQLite backend can be replaced by a clustered one (NATS JetStream) without
//! touching the core.
//!
//! A *queue* holds *messages*. A message is visible (receivable), in flight (received,
//! hidden until its visibility deadline), or delayed. Receiving hides a message for a
//! visibility timeout and hands out a fresh *receipt*; deleting with the current receipt
//! removes it for good. What a method returns `Ok` for is durable: it survives `kill -9`
//! of the process (see `docs/RELIABILITY.md` for what a power loss may cost).
//!
//! Names: user queues follow SQS's rule (1–80 of `[A-Za-z0-9_-]`). The core keeps its own
//! internal queues (a function's async invokes) under names containing `:` (for example
//! `async:hello`), which no user name can take; [`QueueBackend::list`] hides them unless
//! asked.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]
#![forbid(unsafe_code)]

mod rules;
mod sqlite;

pub use rules::{is_internal, validate_name};
pub use sqlite::{Clock, Options, SqliteQueues, Synchronous};

/// Milliseconds since the Unix epoch.
pub type EpochMs = i64;

/// Errors a backend reports.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue {0} does not exist")]
    NoSuchQueue(String),
    #[error("queue {0} already exists with different attributes")]
    QueueExists(String),
    #[error("invalid queue name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("invalid queue attribute {name}: {why}")]
    InvalidAttribute { name: String, why: String },
    #[error("message of {size} bytes exceeds the queue's maximum of {max} bytes")]
    MessageTooLarge { size: usize, max: usize },
    #[error("the receipt handle {0:?} is not valid")]
    InvalidReceipt(String),
    #[error("the message for receipt handle {0:?} is not in flight")]
    NotInFlight(String),
    /// The store holds as many pending messages or bytes as it is allowed: refuse the
    /// send (callers answer 429); nothing already stored is touched.
    #[error(
        "the event store is full ({pending_messages} messages, {pending_bytes} bytes pending)"
    )]
    Full {
        pending_messages: u64,
        pending_bytes: u64,
    },
    #[error("the queue store failed: {0}")]
    Storage(String),
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;

/// Where messages go after too many receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redrive {
    pub dead_letter: String,
    /// A message received this many times without being deleted moves to `dead_letter`
    /// on its next receive. 1..=1000.
    pub max_receive_count: u32,
}

/// A queue's settings (SQS's attributes that Shoal keeps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Default 30 s; 0..=12 h.
    pub visibility_timeout_ms: u64,
    /// How long an unconsumed message is kept. Default 4 days; 60 s..=14 days.
    pub retention_ms: u64,
    /// Default delay of new messages. Default 0; 0..=15 min.
    pub delay_ms: u64,
    /// Largest body (plus attributes) accepted. Default 262,144; 1,024..=262,144.
    pub max_message_bytes: usize,
    /// Default long-poll wait of `ReceiveMessage`. Default 0; 0..=20 s.
    pub receive_wait_ms: u64,
    pub redrive: Option<Redrive>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            visibility_timeout_ms: 30_000,
            retention_ms: 4 * 24 * 3600 * 1000,
            delay_ms: 0,
            max_message_bytes: 262_144,
            receive_wait_ms: 0,
            redrive: None,
        }
    }
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewMessage {
    pub body: String,
    /// SQS message attributes as the API layer encodes them (JSON), stored and returned
    /// verbatim; `None` when there are none.
    pub attributes: Option<String>,
    /// Overrides the queue's delay.
    pub delay_ms: Option<u64>,
}

/// What a send stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// A UUID, fixed for the message's life (also after a move to a dead-letter queue).
    pub id: String,
    /// Lowercase hex MD5 of the body, as SQS reports it.
    pub md5_of_body: String,
}

/// Who receives: the core's own consumers (trigger pollers, async invokers) or an outside
/// client. At start, messages held by internal consumers of a previous process are made
/// visible again at once (those consumers died with it); an outside client's hold lasts
/// its visibility timeout, as in SQS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    Internal,
    External,
}

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub id: String,
    /// Valid until the message is received again or deleted.
    pub receipt: String,
    pub body: String,
    pub attributes: Option<String>,
    pub md5_of_body: String,
    pub sent_at_ms: EpochMs,
    pub first_received_at_ms: EpochMs,
    /// Including this receive.
    pub receive_count: u32,
}

/// What one receive did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Receipts {
    pub messages: Vec<Received>,
    /// Messages that had reached the redrive policy's receive count and were moved to the
    /// dead-letter queue instead of being handed out.
    pub dead_lettered: u64,
    /// Messages found past the queue's retention and deleted.
    pub expired: u64,
}

/// A queue's counts, cheap to read (kept in memory, not counted in SQL).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Receivable now (SQS's `ApproximateNumberOfMessages`).
    pub visible: u64,
    /// Received, not yet deleted, still hidden (`ApproximateNumberOfMessagesNotVisible`).
    pub in_flight: u64,
    /// Not yet visible because of a delay (`ApproximateNumberOfMessagesDelayed`).
    pub delayed: u64,
    /// When the oldest message still in the queue was sent.
    pub oldest_sent_at_ms: Option<EpochMs>,
    /// Messages deleted for passing the queue's retention since the store was opened, by
    /// receives (also reported in [`Receipts::expired`]) and by the backend's own sweep
    /// (reported nowhere else).
    pub expired: u64,
}

/// One queue, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    pub name: String,
    pub config: QueueConfig,
    pub created_at_ms: EpochMs,
    pub stats: QueueStats,
}

/// How a received message leaves the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Delete it (handled).
    Delete,
    /// Delete it and, in the same commit, send `message` to `queue` (an on-failure
    /// destination record, a dead letter).
    Forward { queue: String, message: NewMessage },
}

/// The durable queue store. Every method that returns `Ok` has committed what it did.
#[async_trait::async_trait]
pub trait QueueBackend: Send + Sync + 'static {
    /// Create a queue; an existing queue with the same config is `Ok` (SQS's rule), with a
    /// different one `QueueExists`. A redrive target must exist.
    async fn create_queue(&self, name: &str, config: QueueConfig) -> Result<()>;
    /// Change a queue's config (`SetQueueAttributes`).
    async fn set_config(&self, name: &str, config: QueueConfig) -> Result<()>;
    /// Delete a queue and every message in it.
    async fn delete_queue(&self, name: &str) -> Result<()>;
    /// One queue with its counts.
    fn queue(&self, name: &str) -> Result<QueueInfo>;
    /// Queues whose name starts with `prefix`, sorted by name; internal ones (with `:`)
    /// only if `internal`.
    fn list(&self, prefix: &str, internal: bool) -> Vec<QueueInfo>;

    /// Send messages to one queue in one commit: all or none. `Full` when the store's cap
    /// would be passed.
    async fn send(&self, queue: &str, messages: Vec<NewMessage>) -> Result<Vec<Sent>>;
    /// Receive up to `max` visible messages (1..=10_000), hiding each for `visibility_ms`
    /// (the queue's timeout when `None`). Returns at once, possibly empty: long polling
    /// is the caller's loop around [`QueueBackend::wait`].
    async fn receive(
        &self,
        queue: &str,
        max: usize,
        visibility_ms: Option<u64>,
        holder: Holder,
    ) -> Result<Receipts>;
    /// Resolves when a message may have become visible in `queue` (a send, a visibility
    /// change to 0, a release), or when `timeout_ms` passes. Spurious wake-ups are allowed.
    async fn wait(&self, queue: &str, timeout_ms: u64);
    /// Settle received messages by receipt, in one commit. Per entry: `Ok` when done;
    /// a stale receipt (the message was received again since) is `Ok` and does nothing,
    /// as SQS does; a malformed one `InvalidReceipt`.
    async fn settle(&self, queue: &str, entries: Vec<(String, Settle)>) -> Result<Vec<Result<()>>>;
    /// Make received messages visible again after `timeout_ms` from now (0: at once), in
    /// one commit. Per entry `NotInFlight` if that receipt is no longer current.
    async fn change_visibility(
        &self,
        queue: &str,
        entries: Vec<(String, u64)>,
    ) -> Result<Vec<Result<()>>>;
    /// Delete every message in the queue; returns how many.
    async fn purge(&self, queue: &str) -> Result<u64>;

    /// Record that schedule `key` fired at `fire_ms` and send `message` to `queue`, in one
    /// commit — unless `key` has already fired at `fire_ms` or later, in which case nothing
    /// is sent and `Ok(false)` comes back. This is what makes a restart neither fire twice
    /// nor skip.
    async fn fire(
        &self,
        key: &str,
        fire_ms: EpochMs,
        queue: &str,
        message: NewMessage,
    ) -> Result<bool>;
    /// When schedule `key` last fired; `None` if never.
    fn last_fire(&self, key: &str) -> Option<EpochMs>;
    /// Set the schedule's last fire if it has none (a new schedule starts from `now`, it
    /// does not fire for the past).
    async fn start_schedule(&self, key: &str, now_ms: EpochMs) -> Result<EpochMs>;
    /// Forget schedules whose key starts with `prefix` and is not in `keep`.
    async fn forget_schedules(&self, prefix: &str, keep: &[String]) -> Result<()>;

    /// Messages and bytes pending across all queues, against the caps.
    fn pending(&self) -> (u64, u64);
}
