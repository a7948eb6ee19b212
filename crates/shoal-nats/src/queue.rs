//! The queue store on NATS JetStream: [`JetStreamQueues`] implements
//! [`shoal_queue::QueueBackend`], so async invokes, SQS-API queues, their triggers and
//! schedule fires live in JetStream and any node of a cluster can consume them. It owns
//! the streams, consumers and buckets named in [`names`]; it knows nothing of functions,
//! HTTP or the registry.
//!
//! Layout (prefix `shoal` by default, see [`Options::prefix`]):
//! - one work-queue stream per queue, `shoal_q_<token>`, holding subject
//!   `shoal.q.<token>` (the token encodes the queue name: `:` and `_` are escaped), file
//!   storage, `max_age` = the queue's retention; one durable pull consumer `receive` on it,
//!   explicit acks, `ack_wait` = the queue's visibility timeout (within 1 s and the internal
//!   lease), unlimited deliveries (redrive is this store's, by delivery count);
//! - stream `shoal_delayed` (subjects `shoal.d.<token>`, work queue, consumer `mover`): messages
//!   with a delay wait there; every node runs a mover that publishes a due message into its
//!   queue, then acks it (JetStream 2.9 has no scheduled delivery);
//! - key-value bucket `shoal_queues`: one key per queue (the name with every byte outside
//!   `[A-Za-z0-9_-]` as `=HH`), its config, creation time, incarnation and receipt key as JSON;
//! - key-value bucket `shoal_schedules`: one key per schedule, its last fire time;
//! - plain subject `shoal.wake.<token>`: a send announces itself there so idle `wait`s on
//!   every node wake at once.
//!
//! What is atomic and what is not:
//! - every `Ok` comes after JetStream's acknowledgement (publish ack, ack reply, key-value
//!   revision) from file storage. A 2.9 server answers from the page cache and writes
//!   message removals lazily: a `kill -9` of the server loses no acknowledged message, but
//!   deletes acknowledged shortly before it may come back (duplicates, never losses);
//! - a send of several messages is one publish each, pipelined: each message is atomic, the
//!   batch is not — an `Err` may leave part of it stored (publishes are retried with the same
//!   `Nats-Msg-Id`, so a retry inside the call never stores one twice);
//! - `Settle::Forward` publishes to the target with a `Nats-Msg-Id` made from the source
//!   message's place (`fwd-<incarnation>-<sequence>`), then acks the source: two steps, not
//!   one commit. A crash between them leaves the source to be delivered again, and its
//!   second forward is dropped as a duplicate within the streams' de-duplication window
//!   (2 minutes): at least once, never lost. Moves to a dead-letter queue and from the delay
//!   stream work the same way;
//! - `fire` publishes the fired message with `Nats-Msg-Id` `fire:<key>:<time>`, then records
//!   the time in the schedules bucket with a compare-and-set on the key's revision. Of
//!   several nodes firing the same time, exactly one's compare-and-set wins (`Ok(true)`), and
//!   the others' publishes are dropped as duplicates; a node cut off from NATS can do
//!   neither, so it cannot fire. The one gap: a node that publishes, then dies before its
//!   compare-and-set, and a second node firing that time more than the de-duplication window
//!   later, send it twice;
//! - a receipt names the delivery (incarnation of the queue, delivery count, stream and
//!   consumer sequences) and carries an HMAC-SHA256 tag under the queue's secret key (in the
//!   bucket, never handed out): JetStream would ack any sequence it is told, so a receipt
//!   made up from a real one must not pass. JetStream acks by stream sequence whatever the delivery count, so
//!   this store detects a stale receipt itself, from the deliveries this node made. While a
//!   receipt's hold lasts (and it was not released) nobody else can receive the message, so
//!   the gap is narrow: a receipt used after its hold ran out, on a node other than the one
//!   that received the message again, still deletes it — the message was handled;
//! - counts (`queue`, `list`, `pending`) are read back from JetStream every
//!   [`Options::refresh_ms`] and moved by this node's own operations in between: approximate,
//!   as SQS's are. A message whose hold ran out but that nobody fetched again counts as in
//!   flight until it is. The caps ([`Options::max_pending_messages`]) are checked against
//!   these counts, so they are approximate across nodes too;
//! - config changes go through the bucket with compare-and-set; other nodes see them
//!   through a watch within milliseconds (eventually consistent reads, strongly consistent
//!   writes).
//!
//! Holds: a consumer's ack wait is the queue's visibility timeout, between 1 s and the
//! internal lease ([`Options::internal_lease_ms`], 30 s). A hold of the core's own consumers
//! ([`Holder::Internal`]) longer than the lease is renewed (`+WPI`) while its node lives, so
//! a dead node's messages come back within the lease — where SQLite's store releases them at
//! its next start; an outside client's hold (SQS API) is set whole by a delayed nak and
//! lasts its visibility timeout, as in SQS.
//!
//! Left out: JetStream deletes messages past retention itself, so `expired` counts stay 0;
//! the first-receive time is exact only when this node made the first receive.

mod names;
mod tasks;
mod wire;

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, context::Context};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures_util::future::join_all;
use futures_util::StreamExt;
use md5::{Digest, Md5};
use shoal_queue::{
    validate_name, EpochMs, Holder, NewMessage, QueueBackend, QueueConfig, QueueError, QueueInfo,
    QueueStats, Receipts, Received, Result, Sent, Settle,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use self::names::{Names, CONSUMER, MOVER};
use self::wire::{Receipt, StoredQueue};

const MAX_VISIBILITY_MS: u64 = 12 * 3_600_000;
const MAX_DELAY_MS: u64 = 15 * 60_000;
const MAX_RECEIVE: usize = 10_000;
/// Longest `wait` sleeps without a wake-up before it lets the caller look again: a hold
/// running out is not announced, so this bounds how late a waiter sees it.
const WAIT_BACKSTOP: Duration = Duration::from_secs(1);
/// Local records of deliveries (for stale receipts and first-receive times) are kept this
/// long after their hold ended.
const HELD_KEEP_MS: i64 = 15 * 60_000;
/// Longest a receive waits for the server's answer to its pull (normally immediate).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of one publish inside a call (same `Nats-Msg-Id` each time).
const PUBLISH_ATTEMPTS: usize = 3;

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct Options {
    /// Prefix of every stream, bucket and subject: two clusters (or tests) can share a NATS
    /// server. 1–32 of `[A-Za-z0-9_-]`.
    pub prefix: String,
    /// Replicas of every stream and bucket: 1 for a single server, 3 for a production NATS
    /// cluster (survives the loss of one server).
    pub replicas: usize,
    /// Most messages held across all queues (by the counts, so approximate); past it a send
    /// is `Full`. Protects the NATS servers' disks from a producer that outruns consumers.
    pub max_pending_messages: u64,
    /// Most bytes held across all queues (as JetStream counts them, headers included).
    pub max_pending_bytes: u64,
    /// How often counts are read back from JetStream.
    pub refresh_ms: u64,
    /// JetStream's de-duplication window on each queue stream (at most the queue's
    /// retention): how long a repeated forward, move or fire is recognised.
    pub duplicate_window_ms: u64,
    /// How long the hold of a message received by one of the core's own consumers
    /// ([`Holder::Internal`]) outlives its node: holds longer than this are renewed every
    /// third of it while the store lives, so when a node dies its messages come back within
    /// this time rather than after their whole visibility timeout (SQLite's store releases
    /// them at its next start). It is also the longest ack wait a queue's consumer gets, so
    /// every node must use the same value.
    pub internal_lease_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            prefix: "shoal".into(),
            replicas: 1,
            max_pending_messages: 1_000_000,
            max_pending_bytes: 1 << 30,
            refresh_ms: 1_000,
            duplicate_window_ms: 120_000,
            internal_lease_ms: 30_000,
        }
    }
}

fn now_ms() -> EpochMs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn md5_hex(body: &str) -> String {
    let digest = Md5::digest(body.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A failure talking to NATS, saying what was being done and where.
fn storage(what: impl std::fmt::Display, err: impl std::fmt::Display) -> QueueError {
    QueueError::Storage(format!("{what} (NATS JetStream): {err}"))
}

/// Counts of one queue, as last read back and moved since.
#[derive(Debug, Clone, Default)]
struct Counts {
    visible: u64,
    in_flight: u64,
    delayed: u64,
    bytes: u64,
    oldest_sent_at_ms: Option<EpochMs>,
}

#[derive(Debug)]
struct QueueEntry {
    stored: StoredQueue,
    /// The key-value revision `stored` came from; older news is ignored.
    revision: u64,
    counts: Counts,
}

/// What this node knows of a delivery it made.
#[derive(Debug, Clone)]
struct Held {
    delivered: u64,
    first_received_at_ms: EpochMs,
    deadline_ms: EpochMs,
    /// For an internal hold longer than the lease: the queue and receipt to renew it by.
    renew: Option<(String, Receipt)>,
}

#[derive(Debug, Default)]
struct State {
    queues: BTreeMap<String, QueueEntry>,
    schedules: HashMap<String, (EpochMs, u64)>,
    /// (incarnation, stream sequence) → the latest delivery this node made.
    held: HashMap<(u64, u64), Held>,
    /// Wake-ups by queue token.
    notify: HashMap<String, Arc<Notify>>,
}

impl State {
    fn notify(&mut self, queue: &str) -> Arc<Notify> {
        self.notify
            .entry(names::token(queue))
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    fn apply_queue(&mut self, name: String, stored: Option<StoredQueue>, revision: u64) {
        match (self.queues.get_mut(&name), stored) {
            (Some(entry), _) if entry.revision > revision => {}
            (Some(entry), Some(stored)) if entry.stored.incarnation == stored.incarnation => {
                entry.stored = stored;
                entry.revision = revision;
            }
            (_, Some(stored)) => {
                self.queues.insert(
                    name,
                    QueueEntry {
                        stored,
                        revision,
                        counts: Counts::default(),
                    },
                );
            }
            (_, None) => {
                self.queues.remove(&name);
            }
        }
    }

    fn apply_schedule(&mut self, key: String, value: Option<EpochMs>, revision: u64) {
        match self.schedules.get(&key) {
            Some((_, r)) if *r > revision => {}
            _ => match value {
                Some(v) => {
                    self.schedules.insert(key, (v, revision));
                }
                None => {
                    self.schedules.remove(&key);
                }
            },
        }
    }
}

struct Inner {
    client: Client,
    js: Context,
    names: Names,
    options: Options,
    queues_kv: kv::Store,
    schedules_kv: kv::Store,
    state: Mutex<State>,
    consumers: Mutex<HashMap<String, (u64, PullConsumer)>>,
}

/// The JetStream queue store. One per node; share the `Arc`. Background tasks (watches of
/// the buckets, wake-ups, the counts' refresh, the delay mover) stop when it is dropped.
pub struct JetStreamQueues {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for JetStreamQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamQueues")
            .field("prefix", &self.inner.options.prefix)
            .finish_non_exhaustive()
    }
}

impl Drop for JetStreamQueues {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Write `value` at `key` only if the key is still as `seen` left it (absent, or at that
/// entry's revision): `Ok(Some(revision))` when written, `Ok(None)` when another writer got
/// there first (read again and decide anew), `Err` with the store's words otherwise.
async fn write_if_unchanged(
    store: &kv::Store,
    key: &str,
    value: Bytes,
    seen: Option<&kv::Entry>,
) -> std::result::Result<Option<u64>, String> {
    match seen {
        Some(entry) => match store.update(key, value, entry.revision).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(e.to_string()),
        },
        None => match store.create(key, value).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e.to_string()),
        },
    }
}

/// Opens (creating if missing) a key-value bucket of history 1 on file storage.
///
/// async-nats 0.42's `create_key_value` first reads the account's info, whose answer from a
/// 2.9 server it cannot parse; so the bucket's stream is made here, with the settings a
/// bucket has (`KV_<bucket>`, subjects `$KV.<bucket>.>`, one message per key, discard new,
/// roll-ups, direct gets), and then opened as a bucket.
pub async fn open_bucket(js: &Context, name: &str, replicas: usize) -> Result<kv::Store> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let made = js
        .create_stream(stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_bytes: -1,
            max_messages: -1,
            max_message_size: -1,
            storage: StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            num_replicas: replicas.max(1),
            discard: stream::DiscardPolicy::New,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await;
    // Another node may have made it in between: open it either way.
    js.get_key_value(name).await.map_err(|open| match made {
        Err(err) => storage(format!("creating key-value bucket {name}"), err),
        Ok(_) => storage(format!("opening key-value bucket {name}"), open),
    })
}

impl JetStreamQueues {
    /// Opens the store on a connected client: makes the buckets and the delay stream if
    /// missing, reads every queue and schedule, and starts the background tasks.
    pub async fn open(client: Client, options: Options) -> Result<Arc<JetStreamQueues>> {
        let names = Names::new(&options.prefix).map_err(|why| QueueError::InvalidAttribute {
            name: "prefix".into(),
            why,
        })?;
        let js = jetstream::new(client.clone());
        let queues_kv = open_bucket(&js, &names.queues_bucket(), options.replicas).await?;
        let schedules_kv = open_bucket(&js, &names.schedules_bucket(), options.replicas).await?;
        let delay_stream = names.delay_stream();
        let stream = js
            .get_or_create_stream(stream::Config {
                name: delay_stream.clone(),
                subjects: vec![names.delay_subjects()],
                retention: RetentionPolicy::WorkQueue,
                storage: StorageType::File,
                num_replicas: options.replicas,
                duplicate_window: Duration::from_millis(options.duplicate_window_ms),
                ..Default::default()
            })
            .await
            .map_err(|e| storage(format!("creating stream {delay_stream}"), e))?;
        stream
            .get_or_create_consumer::<pull::Config>(
                MOVER,
                pull::Config {
                    durable_name: Some(MOVER.into()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    max_deliver: -1,
                    max_ack_pending: -1,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| storage(format!("creating consumer {MOVER} on {delay_stream}"), e))?;
        let inner = Arc::new(Inner {
            client,
            js,
            names,
            options,
            queues_kv,
            schedules_kv,
            state: Mutex::new(State::default()),
            consumers: Mutex::new(HashMap::new()),
        });
        inner.load_queues().await?;
        inner.load_schedules().await?;
        inner.refresh().await;
        let tasks = vec![
            tokio::spawn(tasks::watch_queues(inner.clone())),
            tokio::spawn(tasks::watch_schedules(inner.clone())),
            tokio::spawn(tasks::wake_ups(inner.clone())),
            tokio::spawn(tasks::refresher(inner.clone())),
            tokio::spawn(tasks::mover(inner.clone())),
            tokio::spawn(tasks::renewer(inner.clone())),
        ];
        Ok(Arc::new(JetStreamQueues { inner, tasks }))
    }

    /// Reads every queue's counts back from JetStream now (they are also read every
    /// [`Options::refresh_ms`]).
    pub async fn refresh(&self) {
        self.inner.refresh().await;
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stored(&self, queue: &str) -> Result<StoredQueue> {
        self.lock()
            .queues
            .get(queue)
            .map(|q| q.stored.clone())
            .ok_or_else(|| QueueError::NoSuchQueue(queue.to_owned()))
    }

    /// The queue's config from the cache, or, when the cache does not have it (made on
    /// another node a moment ago, or news this node missed), from the bucket.
    async fn lookup(&self, queue: &str) -> Result<StoredQueue> {
        if let Ok(stored) = self.stored(queue) {
            return Ok(stored);
        }
        let entry = self
            .queues_kv
            .entry(names::key(queue))
            .await
            .map_err(|e| storage(format!("reading queue {queue}"), e))?;
        match entry {
            Some(e) if e.operation == Operation::Put => {
                self.apply_queue_entry(&e);
                self.stored(queue)
            }
            _ => Err(QueueError::NoSuchQueue(queue.to_owned())),
        }
    }

    fn stream_of(&self, queue: &str) -> Result<String> {
        self.names
            .stream(queue)
            .ok_or_else(|| QueueError::InvalidName {
                name: queue.to_owned(),
                why: "too long for a NATS stream name once encoded",
            })
    }

    async fn load_queues(&self) -> Result<()> {
        let bucket = self.names.queues_bucket();
        let mut keys = match self.queues_kv.keys().await {
            Ok(keys) => keys,
            Err(e) => return Err(storage(format!("listing bucket {bucket}"), e)),
        };
        let mut seen = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| storage(format!("listing bucket {bucket}"), e))?;
            let entry = self
                .queues_kv
                .entry(key.clone())
                .await
                .map_err(|e| storage(format!("reading {key} in bucket {bucket}"), e))?;
            if let Some(entry) = entry {
                seen.push(self.apply_queue_entry(&entry));
            }
        }
        // Queues deleted while this node was not watching. A listing can come back short
        // on a busy server, so each missing one is asked for before it is forgotten.
        let missing: Vec<String> = self
            .lock()
            .queues
            .keys()
            .filter(|name| !seen.contains(&Some((*name).clone())))
            .cloned()
            .collect();
        for name in missing {
            self.forget_if_deleted(&name).await;
        }
        Ok(())
    }

    /// Applies one entry of the queues bucket; returns the queue's name if it now exists.
    fn apply_queue_entry(&self, entry: &kv::Entry) -> Option<String> {
        let name = names::decode_key(&entry.key)?;
        let stored = match entry.operation {
            Operation::Put => match StoredQueue::from_bytes(&entry.value) {
                Ok(stored) => Some(stored),
                Err(err) => {
                    tracing::warn!(key = %entry.key, %err, "unreadable queue config in NATS; ignored");
                    return None;
                }
            },
            Operation::Delete | Operation::Purge => None,
        };
        let exists = stored.is_some();
        self.lock()
            .apply_queue(name.clone(), stored, entry.revision);
        exists.then_some(name)
    }

    async fn load_schedules(&self) -> Result<()> {
        let bucket = self.names.schedules_bucket();
        let mut keys = self
            .schedules_kv
            .keys()
            .await
            .map_err(|e| storage(format!("listing bucket {bucket}"), e))?;
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| storage(format!("listing bucket {bucket}"), e))?;
            if let Some(entry) = self
                .schedules_kv
                .entry(key.clone())
                .await
                .map_err(|e| storage(format!("reading {key} in bucket {bucket}"), e))?
            {
                self.apply_schedule_entry(&entry);
            }
        }
        Ok(())
    }

    fn apply_schedule_entry(&self, entry: &kv::Entry) {
        let Some(key) = names::decode_key(&entry.key) else {
            return;
        };
        let value = match entry.operation {
            Operation::Put => std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|v| v.parse().ok()),
            Operation::Delete | Operation::Purge => None,
        };
        self.lock().apply_schedule(key, value, entry.revision);
    }

    /// The pull consumer of a queue, cached per incarnation.
    async fn consumer(&self, queue: &str, incarnation: u64) -> Result<PullConsumer> {
        if let Some((inc, c)) = self
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(queue)
        {
            if *inc == incarnation {
                return Ok(c.clone());
            }
        }
        let stream = self.stream_of(queue)?;
        let consumer: PullConsumer = self
            .js
            .get_consumer_from_stream(CONSUMER, stream.clone())
            .await
            .map_err(|e| storage(format!("opening consumer {CONSUMER} of stream {stream}"), e))?;
        self.consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(queue.to_owned(), (incarnation, consumer.clone()));
        Ok(consumer)
    }

    fn stream_config(&self, queue: &str, q: &StoredQueue) -> Result<stream::Config> {
        Ok(stream::Config {
            name: self.stream_of(queue)?,
            subjects: vec![self.names.subject(queue)],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            num_replicas: self.options.replicas,
            max_age: Duration::from_millis(q.retention_ms),
            duplicate_window: Duration::from_millis(
                self.options.duplicate_window_ms.min(q.retention_ms),
            ),
            ..Default::default()
        })
    }

    /// The consumer's ack wait for a queue: its visibility timeout, at least a second (a
    /// shorter or zero hold is set per delivery with a delayed nak) and at most the internal
    /// lease (a longer hold is set per delivery: renewed for internal consumers, a delayed
    /// nak for outside ones).
    fn ack_wait_ms(&self, q: &StoredQueue) -> u64 {
        q.visibility_timeout_ms
            .clamp(1_000, self.options.internal_lease_ms.max(1_000))
    }

    fn consumer_config(&self, q: &StoredQueue) -> pull::Config {
        pull::Config {
            durable_name: Some(CONSUMER.into()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_millis(self.ack_wait_ms(q)),
            max_deliver: -1,
            max_ack_pending: -1,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        }
    }

    /// Makes the queue's stream and consumer if missing (idempotent).
    async fn ensure_stream(&self, queue: &str, q: &StoredQueue) -> Result<()> {
        let config = self.stream_config(queue, q)?;
        let name = config.name.clone();
        let stream = self
            .js
            .get_or_create_stream(config)
            .await
            .map_err(|e| storage(format!("creating stream {name} of queue {queue}"), e))?;
        stream
            .get_or_create_consumer(CONSUMER, self.consumer_config(q))
            .await
            .map_err(|e| storage(format!("creating consumer {CONSUMER} on {name}"), e))?;
        Ok(())
    }

    /// Drops a queue from the cache if the bucket says it is deleted (a delete marker at a
    /// revision newer than the cached one, or no entry); an error keeps it.
    async fn forget_if_deleted(&self, queue: &str) {
        let Ok(entry) = self.queues_kv.entry(names::key(queue)).await else {
            return;
        };
        let deleted_at = match entry {
            Some(e) if e.operation == Operation::Put => return,
            Some(e) => e.revision,
            None => u64::MAX,
        };
        let mut state = self.lock();
        if state
            .queues
            .get(queue)
            .is_some_and(|q| q.revision < deleted_at)
        {
            state.queues.remove(queue);
        }
    }

    /// Whether a queue of that name exists, asked of the bucket (not the cache): used where
    /// a decision must not rest on news another node has not yet delivered.
    async fn exists(&self, queue: &str) -> Result<bool> {
        let entry = self
            .queues_kv
            .entry(names::key(queue))
            .await
            .map_err(|e| storage(format!("reading queue {queue}"), e))?;
        Ok(entry.is_some_and(|e| e.operation == Operation::Put))
    }

    /// Publishes messages (subject, headers, payload), all sent before any ack is awaited;
    /// each retried with its own headers (so its `Nats-Msg-Id`) when it fails.
    async fn publish_all(
        &self,
        what: &str,
        messages: Vec<(String, HeaderMap, Bytes)>,
    ) -> Vec<Result<jetstream::publish::PublishAck>> {
        let mut results: Vec<Option<Result<jetstream::publish::PublishAck>>> =
            (0..messages.len()).map(|_| None).collect();
        for attempt in 0..PUBLISH_ATTEMPTS {
            let mut pending = Vec::new();
            for (i, (subject, headers, payload)) in messages.iter().enumerate() {
                if matches!(results[i], Some(Ok(_))) {
                    continue;
                }
                match self
                    .js
                    .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                    .await
                {
                    Ok(ack) => pending.push((i, ack)),
                    Err(e) => results[i] = Some(Err(storage(format!("{what} on {subject}"), e))),
                }
            }
            let acks = join_all(
                pending
                    .into_iter()
                    .map(|(i, ack)| async move { (i, ack.await) }),
            )
            .await;
            for (i, ack) in acks {
                results[i] =
                    Some(ack.map_err(|e| storage(format!("{what} on {}", messages[i].0), e)));
            }
            if results.iter().all(|r| matches!(r, Some(Ok(_)))) || attempt + 1 == PUBLISH_ATTEMPTS {
                break;
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(QueueError::Storage(format!("{what}: not attempted"))))
            })
            .collect()
    }

    /// Sends an ack-subject command (`+ACK`, `-NAK …`) and waits for the server's reply.
    async fn ack_request(&self, subject: String, command: Bytes) -> Result<()> {
        self.client
            .request(subject.clone(), command)
            .await
            .map(drop)
            .map_err(|e| storage(format!("acknowledging {subject}"), e))
    }

    fn wake(&self, queue: &str) {
        let notify = self.lock().notify(queue);
        notify.notify_waiters();
        let client = self.client.clone();
        let subject = self.names.wake_subject(queue);
        // Best effort: a lost wake-up costs a waiter at most its backstop.
        tokio::spawn(async move {
            let _ = client.publish(subject, Bytes::new()).await;
        });
    }

    fn check_caps(&self, adding: u64, bytes: u64) -> Result<()> {
        let (messages, held_bytes) = self.pending();
        if messages + adding > self.options.max_pending_messages
            || held_bytes + bytes > self.options.max_pending_bytes
        {
            return Err(QueueError::Full {
                pending_messages: messages,
                pending_bytes: held_bytes,
            });
        }
        Ok(())
    }

    fn pending(&self) -> (u64, u64) {
        let state = self.lock();
        state.queues.values().fold((0, 0), |(m, b), q| {
            (
                m + q.counts.visible + q.counts.in_flight + q.counts.delayed,
                b + q.counts.bytes,
            )
        })
    }

    /// A message ready to publish into `queue` (or its delay subject), and what the send
    /// reports. `msg_id` defaults to the message's new id.
    fn outgoing(
        &self,
        queue: &str,
        q: &StoredQueue,
        message: &NewMessage,
        msg_id: Option<String>,
        now: EpochMs,
    ) -> Result<((String, HeaderMap, Bytes), Sent, bool)> {
        let size = message.body.len() + message.attributes.as_ref().map_or(0, String::len);
        if size > q.max_message_bytes {
            return Err(QueueError::MessageTooLarge {
                size,
                max: q.max_message_bytes,
            });
        }
        let delay = message.delay_ms.unwrap_or(q.delay_ms);
        if delay > MAX_DELAY_MS {
            return Err(QueueError::InvalidAttribute {
                name: "DelaySeconds".into(),
                why: "at most 15 minutes (900 s)".into(),
            });
        }
        let id = uuid::Uuid::new_v4().to_string();
        let msg_id = msg_id.unwrap_or_else(|| id.clone());
        let mut headers = wire::headers(&msg_id, &id, now, message.attributes.as_deref());
        let subject = if delay > 0 {
            headers.insert(wire::DUE, (now + delay as i64).to_string().as_str());
            headers.insert(wire::INCARNATION, q.incarnation.to_string().as_str());
            self.names.delay_subject(queue)
        } else {
            self.names.subject(queue)
        };
        let sent = Sent {
            id,
            md5_of_body: md5_hex(&message.body),
        };
        Ok((
            (
                subject,
                headers,
                wire::payload(message.attributes.as_deref(), &message.body),
            ),
            sent,
            delay > 0,
        ))
    }

    fn count_sent(&self, queue: &str, delayed: u64, visible: u64, bytes: u64, now: EpochMs) {
        let mut state = self.lock();
        if let Some(q) = state.queues.get_mut(queue) {
            q.counts.delayed += delayed;
            q.counts.visible += visible;
            q.counts.bytes += bytes;
            q.counts.oldest_sent_at_ms.get_or_insert(now);
        }
    }

    /// Whether this node has since delivered the receipt's message again.
    fn is_stale(&self, r: &Receipt) -> bool {
        self.lock()
            .held
            .get(&(r.incarnation, r.stream_seq))
            .is_some_and(|h| h.delivered > r.delivered)
    }

    async fn refresh(&self) {
        let queues: Vec<(String, u64)> = self
            .lock()
            .queues
            .iter()
            .map(|(name, q)| (name.clone(), q.stored.incarnation))
            .collect();
        let mut delayed: HashMap<String, u64> = HashMap::new();
        if let Ok(stream) = self.js.get_stream_no_info(self.names.delay_stream()).await {
            if let Ok(mut subjects) = stream.info_with_subjects(self.names.delay_subjects()).await {
                while let Some(Ok((subject, count))) = subjects.next().await {
                    if let Some(token) = self.names.delay_token(&subject) {
                        delayed.insert(token.to_owned(), count as u64);
                    }
                }
            }
        }
        for (name, incarnation) in queues {
            let Ok(stream_name) = self.stream_of(&name) else {
                continue;
            };
            let Ok(stream) = self.js.get_stream_no_info(&stream_name).await else {
                continue;
            };
            let info = match stream.get_info().await {
                Ok(info) => info,
                Err(_) => {
                    // Perhaps a queue deleted while this node's watch was not looking.
                    self.forget_if_deleted(&name).await;
                    continue;
                }
            };
            let Ok(consumer) = self.consumer(&name, incarnation).await else {
                continue;
            };
            let mut consumer = consumer;
            let Ok(cinfo) = consumer.info().await.cloned() else {
                continue;
            };
            let mut state = self.lock();
            if let Some(q) = state.queues.get_mut(&name) {
                if q.stored.incarnation != incarnation {
                    continue;
                }
                q.counts = Counts {
                    visible: cinfo.num_pending,
                    in_flight: cinfo.num_ack_pending as u64,
                    delayed: delayed.get(&names::token(&name)).copied().unwrap_or(0),
                    bytes: info.state.bytes,
                    oldest_sent_at_ms: (info.state.messages > 0).then(|| {
                        (info.state.first_timestamp.unix_timestamp_nanos() / 1_000_000) as EpochMs
                    }),
                };
            }
        }
        let now = now_ms();
        self.lock()
            .held
            .retain(|_, h| h.deadline_ms + HELD_KEEP_MS > now);
    }
}

fn nak(delay_ms: u64) -> Bytes {
    if delay_ms == 0 {
        Bytes::from_static(b"-NAK")
    } else {
        format!("-NAK {{\"delay\":{}}}", u128::from(delay_ms) * 1_000_000).into()
    }
}

#[async_trait::async_trait]
impl QueueBackend for JetStreamQueues {
    async fn create_queue(&self, name: &str, config: QueueConfig) -> Result<()> {
        let inner = &self.inner;
        validate_name(name)?;
        config.validate(name)?;
        inner.stream_of(name)?;
        if let Some(redrive) = &config.redrive {
            if !inner.exists(&redrive.dead_letter).await? {
                return Err(QueueError::InvalidAttribute {
                    name: "RedrivePolicy".into(),
                    why: format!("dead-letter queue {} does not exist", redrive.dead_letter),
                });
            }
        }
        let key = names::key(name);
        loop {
            let entry = inner
                .queues_kv
                .entry(key.clone())
                .await
                .map_err(|e| storage(format!("reading queue {name}"), e))?;
            let live = entry.as_ref().filter(|e| e.operation == Operation::Put);
            if let Some(entry) = live {
                let stored = StoredQueue::from_bytes(&entry.value)
                    .map_err(|e| storage(format!("reading the config of queue {name}"), e))?;
                inner.apply_queue_entry(entry);
                if stored.config() != config {
                    return Err(QueueError::QueueExists(name.to_owned()));
                }
                // Heals a queue whose creator died between the bucket and the stream.
                return inner.ensure_stream(name, &stored).await;
            }
            let receipt_key: String = (0..2).map(|_| format!("{:016x}", rand_u64())).collect();
            let stored = StoredQueue::new(name, &config, now_ms(), rand_u64(), receipt_key);
            // The stream first: a queue in the bucket always has its stream.
            inner.ensure_stream(name, &stored).await?;
            let written =
                write_if_unchanged(&inner.queues_kv, &key, stored.to_bytes(), entry.as_ref()).await;
            match written {
                Ok(Some(revision)) => {
                    inner
                        .lock()
                        .apply_queue(name.to_owned(), Some(stored), revision);
                    return Ok(());
                }
                // Another node created it in between: compare with theirs.
                Ok(None) => continue,
                Err(e) => return Err(storage(format!("creating queue {name}"), e)),
            }
        }
    }

    async fn set_config(&self, name: &str, config: QueueConfig) -> Result<()> {
        let inner = &self.inner;
        config.validate(name)?;
        if let Some(redrive) = &config.redrive {
            if !inner.exists(&redrive.dead_letter).await? {
                return Err(QueueError::InvalidAttribute {
                    name: "RedrivePolicy".into(),
                    why: format!("dead-letter queue {} does not exist", redrive.dead_letter),
                });
            }
        }
        let key = names::key(name);
        loop {
            let entry = inner
                .queues_kv
                .entry(key.clone())
                .await
                .map_err(|e| storage(format!("reading queue {name}"), e))?
                .filter(|e| e.operation == Operation::Put)
                .ok_or_else(|| QueueError::NoSuchQueue(name.to_owned()))?;
            let old = StoredQueue::from_bytes(&entry.value)
                .map_err(|e| storage(format!("reading the config of queue {name}"), e))?;
            let mut new = old.clone();
            new.set(&config);
            if new.retention_ms != old.retention_ms {
                let stream_config = inner.stream_config(name, &new)?;
                inner
                    .js
                    .update_stream(stream_config)
                    .await
                    .map_err(|e| storage(format!("changing the retention of queue {name}"), e))?;
            }
            if inner.ack_wait_ms(&new) != inner.ack_wait_ms(&old) {
                // JetStream 2.9 changes a durable consumer's config by creating it again.
                let stream = inner.stream_of(name)?;
                inner
                    .js
                    .get_stream_no_info(&stream)
                    .await
                    .map_err(|e| storage(format!("opening stream {stream} of queue {name}"), e))?
                    .create_consumer(inner.consumer_config(&new))
                    .await
                    .map_err(|e| {
                        storage(
                            format!("changing the visibility timeout of queue {name}"),
                            e,
                        )
                    })?;
            }
            match inner
                .queues_kv
                .update(&key, new.to_bytes(), entry.revision)
                .await
            {
                Ok(revision) => {
                    inner
                        .lock()
                        .apply_queue(name.to_owned(), Some(new), revision);
                    return Ok(());
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(storage(format!("changing queue {name}"), e)),
            }
        }
    }

    async fn delete_queue(&self, name: &str) -> Result<()> {
        let inner = &self.inner;
        if !inner.exists(name).await? {
            inner.lock().queues.remove(name);
            return Err(QueueError::NoSuchQueue(name.to_owned()));
        }
        inner
            .queues_kv
            .delete(names::key(name))
            .await
            .map_err(|e| storage(format!("deleting queue {name}"), e))?;
        let stream = inner.stream_of(name)?;
        if let Err(err) = inner.js.delete_stream(&stream).await {
            // Already gone is what was asked.
            if inner.js.get_stream_no_info(&stream).await.is_ok() {
                return Err(storage(
                    format!("deleting stream {stream} of queue {name}"),
                    err,
                ));
            }
        }
        if let Ok(delayed) = inner
            .js
            .get_stream_no_info(inner.names.delay_stream())
            .await
        {
            let _ = delayed
                .purge()
                .filter(inner.names.delay_subject(name))
                .await;
        }
        inner.lock().queues.remove(name);
        Ok(())
    }

    fn queue(&self, name: &str) -> Result<QueueInfo> {
        let state = self.inner.lock();
        state
            .queues
            .get(name)
            .map(|q| info(name, q))
            .ok_or_else(|| QueueError::NoSuchQueue(name.to_owned()))
    }

    fn list(&self, prefix: &str, internal: bool) -> Vec<QueueInfo> {
        let state = self.inner.lock();
        state
            .queues
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(name, _)| name.starts_with(prefix))
            .filter(|(name, _)| internal || !shoal_queue::is_internal(name))
            .map(|(name, q)| info(name, q))
            .collect()
    }

    async fn send(&self, queue: &str, messages: Vec<NewMessage>) -> Result<Vec<Sent>> {
        let inner = &self.inner;
        let q = inner.lookup(queue).await?;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut out = Vec::with_capacity(messages.len());
        let mut sent = Vec::with_capacity(messages.len());
        let (mut delayed, mut bytes) = (0u64, 0u64);
        for m in &messages {
            let (publish, s, is_delayed) = inner.outgoing(queue, &q, m, None, now)?;
            delayed += u64::from(is_delayed);
            bytes += publish.2.len() as u64;
            out.push(publish);
            sent.push(s);
        }
        inner.check_caps(messages.len() as u64, bytes)?;
        let n = out.len() as u64;
        for result in inner
            .publish_all(&format!("sending to queue {queue}"), out)
            .await
        {
            result?;
        }
        inner.count_sent(queue, delayed, n - delayed, bytes, now);
        if delayed < n {
            inner.wake(queue);
        }
        Ok(sent)
    }

    async fn receive(
        &self,
        queue: &str,
        max: usize,
        visibility_ms: Option<u64>,
        holder: Holder,
    ) -> Result<Receipts> {
        let inner = &self.inner;
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
        let q = inner.lookup(queue).await?;
        let stream = inner.stream_of(queue)?;
        let consumer = inner.consumer(queue, q.incarnation).await?;
        let mut batch = consumer
            .fetch()
            .max_messages(max)
            .messages()
            .await
            .map_err(|e| storage(format!("receiving from queue {queue} (stream {stream})"), e))?;
        let mut fetched = Vec::new();
        // The server answers a no-wait pull at once; a pull lost to a reconnect is never
        // answered, so the wait is bounded. Messages it may still deliver to the abandoned
        // inbox come back after their ack wait.
        let give_up = tokio::time::Instant::now() + FETCH_TIMEOUT;
        loop {
            let Ok(next) = tokio::time::timeout_at(give_up, batch.next()).await else {
                if fetched.is_empty() {
                    return Err(storage(
                        format!("receiving from queue {queue} (stream {stream})"),
                        format!("no answer within {FETCH_TIMEOUT:?}"),
                    ));
                }
                break;
            };
            let Some(msg) = next else {
                break;
            };
            match msg {
                Ok(msg) => fetched.push(msg),
                // What was fetched is held; hand it out rather than leave it hidden.
                Err(err) if !fetched.is_empty() => {
                    tracing::debug!(%err, queue, "receive ended early");
                    break;
                }
                Err(err) => {
                    return Err(storage(
                        format!("receiving from queue {queue} (stream {stream})"),
                        err,
                    ));
                }
            }
        }
        let now = now_ms();
        let visibility = visibility_ms.unwrap_or(q.visibility_timeout_ms);
        let dead_letter = q
            .dead_letter
            .as_ref()
            .zip(q.max_receive_count)
            .filter(|(dl, _)| inner.lock().queues.contains_key(*dl));
        let mut out = Receipts::default();
        let mut moves = Vec::new();
        let mut naks = Vec::new();
        for msg in fetched {
            let Some(reply) = msg.reply.as_ref().map(|r| r.to_string()) else {
                continue;
            };
            let Some([delivered, stream_seq, consumer_seq, timestamp, pending]) =
                wire::ack_numbers(&reply)
            else {
                continue;
            };
            let stored = match wire::read(msg.headers.as_ref(), &msg.payload) {
                Ok(stored) => stored,
                Err(why) => {
                    // Not written by this store: nothing could ever handle it.
                    tracing::warn!(queue, stream_seq, why, "dropping a foreign message");
                    let _ = inner.ack_request(reply, Bytes::from_static(b"+ACK")).await;
                    continue;
                }
            };
            if let Some((dl, max_count)) = dead_letter {
                if delivered > u64::from(max_count) {
                    let mut headers = wire::headers(
                        &format!("dl-{:x}-{stream_seq}", q.incarnation),
                        &stored.id,
                        stored.sent_at_ms,
                        stored.attributes.as_deref(),
                    );
                    headers.insert(wire::DUE, "0");
                    moves.push((
                        reply,
                        (inner.names.subject(dl), headers, msg.payload.clone()),
                    ));
                    continue;
                }
            }
            let receipt = Receipt {
                incarnation: q.incarnation,
                deadline_ms: now + visibility as i64,
                delivered,
                stream_seq,
                consumer_seq,
                timestamp,
                pending,
            };
            let ack_wait = inner.ack_wait_ms(&q);
            // An internal hold past the lease is renewed while this node lives (see
            // `renewer`); any other hold than the ack wait is set by a delayed nak.
            let renew = holder == Holder::Internal && visibility > ack_wait;
            if visibility != ack_wait && !renew {
                naks.push(receipt.ack_subject(&stream, CONSUMER));
            }
            let first_received_at_ms = {
                let mut state = inner.lock();
                let held = state
                    .held
                    .entry((q.incarnation, stream_seq))
                    .or_insert(Held {
                        delivered,
                        first_received_at_ms: now,
                        deadline_ms: receipt.deadline_ms,
                        renew: None,
                    });
                if delivered == 1 {
                    held.first_received_at_ms = now;
                }
                held.delivered = delivered;
                held.deadline_ms = receipt.deadline_ms;
                held.renew = renew.then(|| (queue.to_owned(), receipt));
                held.first_received_at_ms
            };
            out.messages.push(Received {
                id: stored.id,
                receipt: receipt.encode(&q.receipt_key()),
                md5_of_body: md5_hex(&stored.body),
                body: stored.body,
                attributes: stored.attributes,
                sent_at_ms: stored.sent_at_ms,
                first_received_at_ms,
                receive_count: u32::try_from(delivered).unwrap_or(u32::MAX),
            });
        }
        // A hold other than the consumer's ack wait: a delayed nak sets when it ends.
        let naked = join_all(
            naks.into_iter()
                .map(|subject| inner.ack_request(subject, nak(visibility))),
        )
        .await;
        for result in naked {
            result?;
        }
        if !moves.is_empty() {
            let dl = dead_letter.map(|(dl, _)| dl.clone()).unwrap_or_default();
            let (replies, publishes): (Vec<_>, Vec<_>) = moves.into_iter().unzip();
            let published = inner
                .publish_all(
                    &format!("moving from queue {queue} to dead-letter queue {dl}"),
                    publishes,
                )
                .await;
            for (reply, result) in replies.into_iter().zip(published) {
                // Unmoved: it stays, and the next receive tries again.
                if result.is_ok()
                    && inner
                        .ack_request(reply, Bytes::from_static(b"+ACK"))
                        .await
                        .is_ok()
                {
                    out.dead_lettered += 1;
                }
            }
            if out.dead_lettered > 0 {
                let mut state = inner.lock();
                if let Some(target) = state.queues.get_mut(&dl) {
                    target.counts.visible += out.dead_lettered;
                }
                drop(state);
                inner.wake(&dl);
            }
        }
        let got = out.messages.len() as u64;
        let mut state = inner.lock();
        if let Some(entry) = state.queues.get_mut(queue) {
            let taken = got + out.dead_lettered;
            entry.counts.visible = entry.counts.visible.saturating_sub(taken);
            if taken < max as u64 {
                // The consumer had no more to give: whatever the last read-back said, none
                // is visible now (else `wait` would spin on a stale count).
                entry.counts.visible = 0;
            }
            entry.counts.in_flight += got;
            if visibility == 0 {
                entry.counts.in_flight -= got;
                entry.counts.visible += got;
            }
        }
        Ok(out)
    }

    /// Registers for wake-ups first, then looks at the counts, so a send announced in
    /// between is not missed; a hold running out is not announced, so the sleep never
    /// outlasts [`WAIT_BACKSTOP`] (a spurious wake-up the contract allows).
    async fn wait(&self, queue: &str, timeout_ms: u64) {
        let notify = {
            let mut state = self.inner.lock();
            if !state.queues.contains_key(queue) {
                return;
            }
            state.notify(queue)
        };
        let mut notified = pin!(notify.notified());
        notified.as_mut().enable();
        let visible = self
            .inner
            .lock()
            .queues
            .get(queue)
            .is_none_or(|q| q.counts.visible > 0);
        if visible {
            return;
        }
        let nap = Duration::from_millis(timeout_ms).min(WAIT_BACKSTOP);
        let _ = tokio::time::timeout(nap, notified).await;
    }

    async fn settle(&self, queue: &str, entries: Vec<(String, Settle)>) -> Result<Vec<Result<()>>> {
        let inner = &self.inner;
        let q = inner.lookup(queue).await?;
        let stream = inner.stream_of(queue)?;
        let now = now_ms();
        let mut results: Vec<Result<()>> = entries.iter().map(|_| Ok(())).collect();
        let mut acks = Vec::new();
        let mut forwards = Vec::new();
        for (i, (handle, settle)) in entries.into_iter().enumerate() {
            let Some(r) = Receipt::parse(&handle, &q.receipt_key())
                .filter(|r| r.incarnation == q.incarnation)
            else {
                results[i] = Err(QueueError::InvalidReceipt(handle));
                continue;
            };
            if inner.is_stale(&r) {
                continue;
            }
            match settle {
                Settle::Delete => acks.push((i, r)),
                Settle::Forward {
                    queue: target,
                    message,
                } => {
                    let target_q = match inner.lookup(&target).await {
                        Ok(t) => t,
                        Err(e) => {
                            results[i] = Err(e);
                            continue;
                        }
                    };
                    let msg_id = format!("fwd-{:x}-{}", q.incarnation, r.stream_seq);
                    match inner.outgoing(&target, &target_q, &message, Some(msg_id), now) {
                        Ok((publish, _, delayed)) => {
                            forwards.push((i, r, target, delayed, publish))
                        }
                        Err(e) => results[i] = Err(e),
                    }
                }
            }
        }
        if !forwards.is_empty() {
            let publishes = forwards.iter().map(|f| f.4.clone()).collect();
            let published = inner
                .publish_all(&format!("forwarding from queue {queue}"), publishes)
                .await;
            for ((i, r, target, delayed, _), result) in forwards.into_iter().zip(published) {
                match result {
                    Ok(_) => {
                        inner.count_sent(&target, u64::from(delayed), u64::from(!delayed), 0, now);
                        if !delayed {
                            inner.wake(&target);
                        }
                        acks.push((i, r));
                    }
                    Err(e) => results[i] = Err(e),
                }
            }
        }
        let acked = join_all(acks.into_iter().map(|(i, r)| {
            let subject = r.ack_subject(&stream, CONSUMER);
            async move {
                (
                    i,
                    r,
                    inner
                        .ack_request(subject, Bytes::from_static(b"+ACK"))
                        .await,
                )
            }
        }))
        .await;
        let mut state = inner.lock();
        for (i, r, result) in acked {
            match result {
                Ok(()) => {
                    state.held.remove(&(r.incarnation, r.stream_seq));
                    if let Some(entry) = state.queues.get_mut(queue) {
                        entry.counts.in_flight = entry.counts.in_flight.saturating_sub(1);
                    }
                }
                Err(e) => results[i] = Err(e),
            }
        }
        Ok(results)
    }

    async fn change_visibility(
        &self,
        queue: &str,
        entries: Vec<(String, u64)>,
    ) -> Result<Vec<Result<()>>> {
        let inner = &self.inner;
        if entries.iter().any(|(_, t)| *t > MAX_VISIBILITY_MS) {
            return Err(QueueError::InvalidAttribute {
                name: "VisibilityTimeout".into(),
                why: "at most 12 hours (43,200 s)".into(),
            });
        }
        let q = inner.lookup(queue).await?;
        let stream = inner.stream_of(queue)?;
        let now = now_ms();
        let mut results: Vec<Result<()>> = entries.iter().map(|_| Ok(())).collect();
        let mut naks = Vec::new();
        for (i, (handle, timeout_ms)) in entries.into_iter().enumerate() {
            let Some(r) = Receipt::parse(&handle, &q.receipt_key())
                .filter(|r| r.incarnation == q.incarnation)
            else {
                results[i] = Err(QueueError::InvalidReceipt(handle));
                continue;
            };
            let deadline = inner
                .lock()
                .held
                .get(&(r.incarnation, r.stream_seq))
                .filter(|h| h.delivered == r.delivered)
                .map_or(r.deadline_ms, |h| h.deadline_ms);
            if inner.is_stale(&r) || now >= deadline {
                results[i] = Err(QueueError::NotInFlight(handle));
                continue;
            }
            naks.push((i, r, timeout_ms));
        }
        let done = join_all(naks.into_iter().map(|(i, r, timeout_ms)| {
            let subject = r.ack_subject(&stream, CONSUMER);
            async move {
                (
                    i,
                    r,
                    timeout_ms,
                    inner.ack_request(subject, nak(timeout_ms)).await,
                )
            }
        }))
        .await;
        let mut released = false;
        {
            let mut state = inner.lock();
            for (i, r, timeout_ms, result) in done {
                match result {
                    Ok(()) => {
                        // The nak set the whole hold: no renewing past it.
                        if let Some(h) = state.held.get_mut(&(r.incarnation, r.stream_seq)) {
                            h.deadline_ms = now + timeout_ms as i64;
                            h.renew = None;
                        } else {
                            state.held.insert(
                                (r.incarnation, r.stream_seq),
                                Held {
                                    delivered: r.delivered,
                                    first_received_at_ms: now,
                                    deadline_ms: now + timeout_ms as i64,
                                    renew: None,
                                },
                            );
                        }
                        if timeout_ms == 0 {
                            released = true;
                            if let Some(entry) = state.queues.get_mut(queue) {
                                entry.counts.in_flight = entry.counts.in_flight.saturating_sub(1);
                                entry.counts.visible += 1;
                            }
                        }
                    }
                    Err(e) => results[i] = Err(e),
                }
            }
        }
        if released {
            inner.wake(queue);
        }
        Ok(results)
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let inner = &self.inner;
        inner.lookup(queue).await?;
        let stream_name = inner.stream_of(queue)?;
        let stream = inner
            .js
            .get_stream_no_info(&stream_name)
            .await
            .map_err(|e| storage(format!("opening stream {stream_name} of queue {queue}"), e))?;
        let purged = stream
            .purge()
            .await
            .map_err(|e| storage(format!("purging queue {queue}"), e))?
            .purged;
        let delayed = match inner
            .js
            .get_stream_no_info(inner.names.delay_stream())
            .await
        {
            Ok(d) => {
                d.purge()
                    .filter(inner.names.delay_subject(queue))
                    .await
                    .map_err(|e| {
                        storage(format!("purging the delayed messages of queue {queue}"), e)
                    })?
                    .purged
            }
            Err(_) => 0,
        };
        if let Some(entry) = inner.lock().queues.get_mut(queue) {
            entry.counts = Counts::default();
        }
        Ok(purged + delayed)
    }

    async fn fire(
        &self,
        key: &str,
        fire_ms: EpochMs,
        queue: &str,
        message: NewMessage,
    ) -> Result<bool> {
        let inner = &self.inner;
        let q = inner.lookup(queue).await?;
        let k = names::key(key);
        let bucket = inner.names.schedules_bucket();
        let now = now_ms();
        let (publish, _, delayed) = inner.outgoing(
            queue,
            &q,
            &message,
            Some(format!("fire:{key}:{fire_ms}")),
            now,
        )?;
        loop {
            let entry =
                inner.schedules_kv.entry(k.clone()).await.map_err(|e| {
                    storage(format!("reading schedule {key} in bucket {bucket}"), e)
                })?;
            let last = entry
                .as_ref()
                .filter(|e| e.operation == Operation::Put)
                .and_then(|e| std::str::from_utf8(&e.value).ok()?.parse::<EpochMs>().ok());
            if let Some(e) = &entry {
                inner.apply_schedule_entry(e);
            }
            if last.is_some_and(|l| l >= fire_ms) {
                return Ok(false);
            }
            inner.check_caps(1, publish.2.len() as u64)?;
            // The message first, under an id every node derives alike: a second node's
            // publish of the same fire is a duplicate, so whichever wins the record below,
            // the queue holds the message once.
            for result in inner
                .publish_all(
                    &format!("firing schedule {key} into queue {queue}"),
                    vec![publish.clone()],
                )
                .await
            {
                result?;
            }
            let value = Bytes::from(fire_ms.to_string());
            let written = write_if_unchanged(&inner.schedules_kv, &k, value, entry.as_ref()).await;
            match written {
                Ok(Some(revision)) => {
                    inner
                        .lock()
                        .apply_schedule(key.to_owned(), Some(fire_ms), revision);
                    inner.count_sent(queue, u64::from(delayed), u64::from(!delayed), 0, now);
                    if !delayed {
                        inner.wake(queue);
                    }
                    return Ok(true);
                }
                // Another node recorded a fire in between: look again.
                Ok(None) => continue,
                Err(e) => {
                    return Err(storage(
                        format!("recording schedule {key} in bucket {bucket}"),
                        e,
                    ))
                }
            }
        }
    }

    fn last_fire(&self, key: &str) -> Option<EpochMs> {
        self.inner.lock().schedules.get(key).map(|(v, _)| *v)
    }

    async fn start_schedule(&self, key: &str, now_ms: EpochMs) -> Result<EpochMs> {
        let inner = &self.inner;
        let k = names::key(key);
        let bucket = inner.names.schedules_bucket();
        loop {
            let entry =
                inner.schedules_kv.entry(k.clone()).await.map_err(|e| {
                    storage(format!("reading schedule {key} in bucket {bucket}"), e)
                })?;
            if let Some(e) = &entry {
                if e.operation == Operation::Put {
                    inner.apply_schedule_entry(e);
                    if let Some(v) = std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|v| v.parse().ok())
                    {
                        return Ok(v);
                    }
                }
            }
            let value = Bytes::from(now_ms.to_string());
            let written = write_if_unchanged(&inner.schedules_kv, &k, value, entry.as_ref()).await;
            match written {
                Ok(Some(revision)) => {
                    inner
                        .lock()
                        .apply_schedule(key.to_owned(), Some(now_ms), revision);
                    return Ok(now_ms);
                }
                Ok(None) => continue,
                Err(e) => {
                    return Err(storage(
                        format!("starting schedule {key} in bucket {bucket}"),
                        e,
                    ))
                }
            }
        }
    }

    async fn forget_schedules(&self, prefix: &str, keep: &[String]) -> Result<()> {
        let inner = &self.inner;
        let bucket = inner.names.schedules_bucket();
        let mut keys = inner
            .schedules_kv
            .keys()
            .await
            .map_err(|e| storage(format!("listing bucket {bucket}"), e))?;
        let mut forget = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| storage(format!("listing bucket {bucket}"), e))?;
            if let Some(key) = names::decode_key(&k) {
                if key.starts_with(prefix) && !keep.contains(&key) {
                    forget.push((k, key));
                }
            }
        }
        for (k, key) in forget {
            inner
                .schedules_kv
                .purge(&k)
                .await
                .map_err(|e| storage(format!("forgetting schedule {key} in bucket {bucket}"), e))?;
            inner.lock().schedules.remove(&key);
        }
        Ok(())
    }

    fn pending(&self) -> (u64, u64) {
        self.inner.pending()
    }
}

fn info(name: &str, q: &QueueEntry) -> QueueInfo {
    QueueInfo {
        name: name.to_owned(),
        config: q.stored.config(),
        created_at_ms: q.stored.created_at_ms,
        stats: QueueStats {
            visible: q.counts.visible,
            in_flight: q.counts.in_flight,
            delayed: q.counts.delayed,
            oldest_sent_at_ms: q.counts.oldest_sent_at_ms,
            expired: 0,
        },
    }
}

fn rand_u64() -> u64 {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    u64::from_le_bytes(bytes[..8].try_into().expect("8 of 16 bytes"))
}
