//! The embedded backend: queues in one SQLite database of their own (`events.db` in the
//! data directory), written by one thread with group commit and read from memory.
//!
//! Durability: WAL with `synchronous = FULL` (the default [`Synchronous`]), so every `Ok`
//! comes after the commit's fsync — it survives `kill -9` and a power loss alike. Speed
//! comes from group commit: the [`writer`] runs every op waiting in one transaction and
//! pays one fsync for all of them. Reads that must be cheap (`queue`, `list`, `pending`,
//! `last_fire`, `wait`) answer from the [`state`] the writer keeps, never from SQL.
//!
//! Choices beyond the trait's contract:
//! - A receipt names the queue, the message's row and a random nonce drawn at each
//!   receive: a receipt of an earlier receive is stale (settle: `Ok`, no-op;
//!   change_visibility: `NotInFlight`), one that is not ours or not of this queue is
//!   `InvalidReceipt`. A current receipt whose visibility already ran out still
//!   deletes (as in SQS) but cannot change the visibility (`NotInFlight`, as SQS's
//!   `MessageNotInflight`).
//! - A dead-lettered message keeps its id and send time (so the dead-letter queue's
//!   retention counts from the original send, as for SQS standard queues); its receive
//!   count and first receive start afresh.
//! - Deleting a queue that is another's dead-letter target is allowed (SQS allows it);
//!   the other queue keeps its redrive policy, and while the target is missing its
//!   messages are not dead-lettered but stay and keep being delivered — nothing is
//!   dropped — until a queue of that name exists again.
//! - `Settle::Forward` is not refused by the caps: it moves a message rather than adding
//!   one, and refusing it would leave a failed event bouncing.
//! - Retention: a receive deletes the expired messages it meets; the writer looks for
//!   more every [`Options::retention_sweep_ms`] (1 s; in memory, so cheap) and deletes
//!   them in one commit. That delete reads every row of the queue, so a sweep that took
//!   long pushes the next one back (sweeping stays under a tenth of the writer's time).

mod ids;
mod schema;
mod state;
mod writer;

use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;
use tokio::sync::{oneshot, Notify};

use self::ids::{format_id, md5_hex, new_id, Receipt};
use self::state::State;
use self::writer::{Op, Outgoing, Reply, SettleEntry, VisibilityEntry, Writer};
use crate::rules::{self, MAX_RECEIVE, MAX_VISIBILITY_MS};
use crate::{
    EpochMs, Holder, NewMessage, QueueBackend, QueueConfig, QueueError, QueueInfo, Receipts,
    Received, Result, Sent, Settle,
};

/// How long SQLite waits for another process's lock (a `shoal` command reading the file)
/// before failing with `BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `wait` sleeps before it looks at the queue again on its own: a backstop only,
/// every change that makes a message visible wakes it at once.
const WAIT_BACKSTOP: Duration = Duration::from_secs(1);

/// The time as the store sees it, in ms since the Unix epoch; injectable for tests.
pub type Clock = Arc<dyn Fn() -> EpochMs + Send + Sync>;

/// When a commit counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// After the write-ahead log is fsync'd: survives a power loss.
    #[default]
    Full,
    /// After the write-ahead log is written (not fsync'd): survives `kill -9`, but a power
    /// loss may take the last commits. For benchmarks and throwaway stores.
    Normal,
}

/// How a store is opened.
#[derive(Clone)]
pub struct Options {
    /// Most messages held across all queues; a send past it is `Full`. Protects the disk
    /// and the memory the counts take from a producer that outruns its consumers.
    pub max_pending_messages: u64,
    /// Most bytes (bodies plus attributes) held across all queues; past it, `Full`.
    pub max_pending_bytes: u64,
    pub synchronous: Synchronous,
    /// How often, by `clock`, the writer looks for messages past retention (in memory;
    /// it deletes them when there are some). Receives delete what they meet anyway.
    pub retention_sweep_ms: u64,
    /// Default: the system clock.
    pub clock: Clock,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_pending_messages: 1_000_000,
            max_pending_bytes: 1 << 30,
            synchronous: Synchronous::Full,
            retention_sweep_ms: 1_000,
            clock: Arc::new(system_now),
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("max_pending_messages", &self.max_pending_messages)
            .field("max_pending_bytes", &self.max_pending_bytes)
            .field("synchronous", &self.synchronous)
            .field("retention_sweep_ms", &self.retention_sweep_ms)
            .finish_non_exhaustive()
    }
}

fn system_now() -> EpochMs {
    // A clock before 1970 is a misconfigured machine; 0 keeps the store usable.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The state the writer publishes and readers answer from.
pub(crate) struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The writer changes the state only after a commit, in steps that cannot panic
        // half-way in a way that matters more than stale counts; keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The SQLite queue store. Open it once per data directory; share the `Arc`.
pub struct SqliteQueues {
    ops: Option<mpsc::Sender<Op>>,
    shared: Arc<Shared>,
    clock: Clock,
    writer: Option<JoinHandle<()>>,
}

impl fmt::Debug for SqliteQueues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteQueues").finish_non_exhaustive()
    }
}

fn open_error(path: &Path, what: &str, err: impl fmt::Display) -> QueueError {
    QueueError::Storage(format!("{what} {}: {err}", path.display()))
}

impl SqliteQueues {
    /// Opens (creating if missing) the store at `path`, brings its schema up to date,
    /// releases the messages internal consumers of a previous process held, and starts
    /// the writer thread.
    ///
    /// The database and its `-wal` and `-shm` files are made readable by their owner only
    /// (0600), as `shoal-store` does: messages carry users' payloads.
    pub fn open(path: &Path, options: Options) -> Result<Arc<SqliteQueues>> {
        create_private(path).map_err(|e| open_error(path, "creating", e))?;
        for side in [
            path.to_owned(),
            side_file(path, "-wal"),
            side_file(path, "-shm"),
        ] {
            make_private(&side).map_err(|e| open_error(&side, "narrowing the mode of", e))?;
        }
        let mut conn = Connection::open(path).map_err(|e| open_error(path, "opening", e))?;
        let sql = |e: rusqlite::Error| open_error(path, "setting up", e);
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(sql)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(open_error(path, "switching to WAL", mode));
        }
        let synchronous = match options.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(sql)?;
        // Savepoints' journals stay in memory, not in temporary files.
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(sql)?;
        conn.pragma_update(None, "cache_size", -32_768)
            .map_err(sql)?;
        conn.set_prepared_statement_cache_capacity(64);
        schema::migrate(&mut conn).map_err(|e| match e {
            schema::MigrateError::TooNew { found } => QueueError::Storage(format!(
                "{} has schema version {found}, newer than this shoal supports ({}); \
                 upgrade shoal or point it at another data directory",
                path.display(),
                schema::MIGRATIONS.len()
            )),
            schema::MigrateError::Step { version, source } => {
                open_error(path, &format!("migrating to schema {version}"), source)
            }
            schema::MigrateError::Read(source) => open_error(path, "reading the schema of", source),
        })?;
        let now = (options.clock)();
        writer::release_internal(&conn, now).map_err(sql)?;
        let state = writer::load(&conn, now).map_err(sql)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
        });
        let (ops, rx) = mpsc::channel();
        let writer = Writer::new(conn, shared.clone(), &options);
        let handle = std::thread::Builder::new()
            .name("shoal-queue-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| open_error(path, "starting the writer for", e))?;
        Ok(Arc::new(SqliteQueues {
            ops: Some(ops),
            shared,
            clock: options.clock,
            writer: Some(handle),
        }))
    }

    /// Sends an op to the writer and waits for its committed answer.
    async fn call<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T> {
        let stopped = || QueueError::Storage("the queue writer has stopped".into());
        let (reply, answer) = oneshot::channel();
        self.ops
            .as_ref()
            .ok_or_else(stopped)?
            .send(op(reply))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    fn now(&self) -> EpochMs {
        (self.clock)()
    }

    /// Whether `queue` has a visible message (`Ok(true)`), is gone (`Err`), or neither, in
    /// which case it also says when its next hidden message falls due.
    fn probe(&self, queue: &str) -> Result<(bool, Arc<Notify>, Option<EpochMs>), ()> {
        let now = self.now();
        let state = self.shared.lock();
        let q = state.by_name(queue).ok_or(())?;
        let visible = q.stats(now).visible > 0;
        Ok((visible, q.notify.clone(), q.next_due(now).map(|t| t - now)))
    }
}

impl Drop for SqliteQueues {
    /// Stops the writer and waits for it to finish its batch and close the database, so
    /// the store can be opened again at once.
    fn drop(&mut self) {
        drop(self.ops.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Draws a message's id and counts its size; checks what needs no queue.
fn outgoing(message: NewMessage) -> Result<(Outgoing, Sent)> {
    if message.delay_ms.is_some_and(|d| d > rules::MAX_DELAY_MS) {
        return Err(QueueError::InvalidAttribute {
            name: "DelaySeconds".into(),
            why: "at most 15 minutes (900 s)".into(),
        });
    }
    let id = new_id();
    let sent = Sent {
        id: format_id(&id),
        md5_of_body: md5_hex(&message.body),
    };
    let size = rules::message_size(&message);
    Ok((
        Outgoing {
            id,
            body: message.body,
            attributes: message.attributes,
            delay_ms: message.delay_ms,
            size,
        },
        sent,
    ))
}

#[async_trait::async_trait]
impl QueueBackend for SqliteQueues {
    async fn create_queue(&self, name: &str, config: QueueConfig) -> Result<()> {
        rules::validate_name(name)?;
        config.validate(name)?;
        let name = name.to_owned();
        self.call(|reply| Op::CreateQueue {
            name,
            config,
            reply,
        })
        .await
    }

    async fn set_config(&self, name: &str, config: QueueConfig) -> Result<()> {
        config.validate(name)?;
        let name = name.to_owned();
        self.call(|reply| Op::SetConfig {
            name,
            config,
            reply,
        })
        .await
    }

    /// Deletes the queue and its messages. A queue naming it as dead-letter target keeps
    /// its policy and, until such a queue exists again, keeps its messages (see the
    /// module's notes).
    async fn delete_queue(&self, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.call(|reply| Op::DeleteQueue { name, reply }).await
    }

    fn queue(&self, name: &str) -> Result<QueueInfo> {
        let now = self.now();
        let state = self.shared.lock();
        state
            .by_name(name)
            .map(|q| q.info(now))
            .ok_or_else(|| QueueError::NoSuchQueue(name.to_owned()))
    }

    fn list(&self, prefix: &str, internal: bool) -> Vec<QueueInfo> {
        let now = self.now();
        let state = self.shared.lock();
        state
            .names
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(name, _)| name.starts_with(prefix))
            .filter(|(name, _)| internal || !rules::is_internal(name))
            .filter_map(|(_, id)| state.queues.get(id))
            .map(|q| q.info(now))
            .collect()
    }

    async fn send(&self, queue: &str, messages: Vec<NewMessage>) -> Result<Vec<Sent>> {
        if messages.is_empty() {
            // Nothing to commit; still say whether the queue exists.
            self.queue(queue)?;
            return Ok(Vec::new());
        }
        let mut sent = Vec::with_capacity(messages.len());
        let mut prepared = Vec::with_capacity(messages.len());
        for message in messages {
            let (message, s) = outgoing(message)?;
            prepared.push(message);
            sent.push(s);
        }
        let queue = queue.to_owned();
        self.call(|reply| Op::Send {
            queue,
            messages: prepared,
            reply,
        })
        .await?;
        Ok(sent)
    }

    async fn receive(
        &self,
        queue: &str,
        max: usize,
        visibility_ms: Option<u64>,
        holder: Holder,
    ) -> Result<Receipts> {
        if !(1..=MAX_RECEIVE).contains(&max) {
            return Err(QueueError::InvalidAttribute {
                name: "MaxNumberOfMessages".into(),
                why: format!("from 1 to {MAX_RECEIVE}"),
            });
        }
        if visibility_ms.is_some_and(|v| v > MAX_VISIBILITY_MS) {
            return Err(QueueError::InvalidAttribute {
                name: "VisibilityTimeout".into(),
                why: "at most 12 hours (43,200 s)".into(),
            });
        }
        let queue = queue.to_owned();
        let raw = self
            .call(|reply| Op::Receive {
                queue,
                max,
                visibility_ms,
                holder,
                reply,
            })
            .await?;
        let messages = raw
            .messages
            .into_iter()
            .map(|m| Received {
                id: format_id(&m.id),
                receipt: Receipt {
                    queue: raw.queue,
                    seq: m.seq,
                    nonce: m.nonce,
                }
                .encode(),
                md5_of_body: md5_hex(&m.body),
                body: m.body,
                attributes: m.attributes,
                sent_at_ms: m.sent_at_ms,
                first_received_at_ms: m.first_received_at_ms,
                receive_count: m.receive_count,
            })
            .collect();
        Ok(Receipts {
            messages,
            dead_lettered: raw.dead_lettered,
            expired: raw.expired,
        })
    }

    /// No wake-up is missed between a caller's empty receive and this call: the waiter
    /// registers with the queue's `Notify` first and only then looks at the counts, which
    /// the writer changes before it notifies. Hidden messages falling due count as
    /// visible to that look even before the writer has moved its watermark, and the
    /// sleep never outlasts the next one's due time.
    async fn wait(&self, queue: &str, timeout_ms: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let Ok((false, notify, _)) = self.probe(queue) else {
                return;
            };
            let mut notified = pin!(notify.notified());
            notified.as_mut().enable();
            let Ok((false, _, next_due)) = self.probe(queue) else {
                return;
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            let mut nap = left.min(WAIT_BACKSTOP);
            if let Some(due) = next_due {
                nap = nap.min(Duration::from_millis(due.max(1) as u64));
            }
            if tokio::time::timeout(nap, notified).await.is_ok() {
                return;
            }
        }
    }

    async fn settle(&self, queue: &str, entries: Vec<(String, Settle)>) -> Result<Vec<Result<()>>> {
        let mut prepared = Vec::with_capacity(entries.len());
        for (handle, settle) in entries {
            let forward = match settle {
                Settle::Delete => None,
                Settle::Forward { queue, message } => Some((queue, outgoing(message)?.0)),
            };
            prepared.push(SettleEntry {
                receipt: Receipt::parse(&handle),
                handle,
                forward,
            });
        }
        let queue = queue.to_owned();
        self.call(|reply| Op::Settle {
            queue,
            entries: prepared,
            reply,
        })
        .await
    }

    async fn change_visibility(
        &self,
        queue: &str,
        entries: Vec<(String, u64)>,
    ) -> Result<Vec<Result<()>>> {
        if entries.iter().any(|(_, t)| *t > MAX_VISIBILITY_MS) {
            return Err(QueueError::InvalidAttribute {
                name: "VisibilityTimeout".into(),
                why: "at most 12 hours (43,200 s)".into(),
            });
        }
        let entries = entries
            .into_iter()
            .map(|(handle, timeout_ms)| VisibilityEntry {
                receipt: Receipt::parse(&handle),
                handle,
                timeout_ms,
            })
            .collect();
        let queue = queue.to_owned();
        self.call(|reply| Op::ChangeVisibility {
            queue,
            entries,
            reply,
        })
        .await
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let name = queue.to_owned();
        self.call(|reply| Op::Purge { name, reply }).await
    }

    async fn fire(
        &self,
        key: &str,
        fire_ms: EpochMs,
        queue: &str,
        message: NewMessage,
    ) -> Result<bool> {
        let (message, _) = outgoing(message)?;
        let key = key.to_owned();
        let queue = queue.to_owned();
        self.call(|reply| Op::Fire {
            key,
            fire_ms,
            queue,
            message,
            reply,
        })
        .await
    }

    fn last_fire(&self, key: &str) -> Option<EpochMs> {
        self.shared.lock().schedules.get(key).copied()
    }

    async fn start_schedule(&self, key: &str, now_ms: EpochMs) -> Result<EpochMs> {
        let key = key.to_owned();
        self.call(|reply| Op::StartSchedule { key, now_ms, reply })
            .await
    }

    async fn forget_schedules(&self, prefix: &str, keep: &[String]) -> Result<()> {
        let prefix = prefix.to_owned();
        let keep = keep.to_vec();
        self.call(|reply| Op::ForgetSchedules {
            prefix,
            keep,
            reply,
        })
        .await
    }

    fn pending(&self) -> (u64, u64) {
        let state = self.shared.lock();
        (state.pending_messages, state.pending_bytes)
    }
}

fn side_file(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Create the file with mode 0600 if it does not exist yet, so it is never world-readable,
/// not even for a moment.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other.map(drop),
    }
}

/// Narrow an existing file to 0600; a missing one is fine.
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
