//! The writer thread: the only owner of the write connection and the only code that
//! changes the in-memory state. Callers hand it [`Op`]s over a channel; it takes every
//! op waiting, runs them in one transaction (each under its own savepoint, so one op's
//! failure undoes only that op), commits once — one fsync for the lot — then publishes
//! the batch's effects to the state, wakes waiters and answers each caller. Between
//! batches it moves the visibility watermark (waking waiters when hidden messages fall
//! due) and sweeps messages past retention.
//!
//! Ops that change a queue itself (create, set, delete, purge) run alone in their own
//! transaction, so every other op can check queues and configs against the committed
//! state without seeing its own batch's changes.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};
use tokio::sync::{oneshot, Notify};

use super::ids::{Receipt, SplitMix};
use super::state::{QueueState, Shape, State};
use super::{Clock, Options, Shared};
use crate::{EpochMs, Holder, QueueConfig, QueueError, Redrive, Result};

/// Most ops one transaction takes: bounds a commit's latency when callers flood in.
const MAX_OPS_PER_BATCH: usize = 4096;
/// Longest the writer sleeps with nothing to do, in case its clock and the real one
/// disagree (an injected clock); it wakes sooner for a due message or a sweep.
const MAX_IDLE_MS: i64 = 1000;

pub(super) type Reply<T> = oneshot::Sender<Result<T>>;

/// A message as the caller prepared it: id drawn, size counted.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub id: [u8; 16],
    pub body: String,
    pub attributes: Option<String>,
    pub delay_ms: Option<u64>,
    pub size: usize,
}

/// A received message before the caller formats its id, receipt and digest.
#[derive(Debug)]
pub(super) struct RawReceived {
    pub seq: i64,
    pub nonce: i64,
    pub id: Vec<u8>,
    pub body: String,
    pub attributes: Option<String>,
    pub sent_at_ms: EpochMs,
    pub first_received_at_ms: EpochMs,
    pub receive_count: u32,
}

#[derive(Debug, Default)]
pub(super) struct RawReceipts {
    pub queue: i64,
    pub messages: Vec<RawReceived>,
    pub dead_lettered: u64,
    pub expired: u64,
}

/// One settle entry, its receipt parsed by the caller (`None`: malformed).
#[derive(Debug)]
pub(super) struct SettleEntry {
    pub handle: String,
    pub receipt: Option<Receipt>,
    pub forward: Option<(String, Outgoing)>,
}

#[derive(Debug)]
pub(super) struct VisibilityEntry {
    pub handle: String,
    pub receipt: Option<Receipt>,
    pub timeout_ms: u64,
}

/// What a caller asks the writer to do.
pub(super) enum Op {
    CreateQueue {
        name: String,
        config: QueueConfig,
        reply: Reply<()>,
    },
    SetConfig {
        name: String,
        config: QueueConfig,
        reply: Reply<()>,
    },
    DeleteQueue {
        name: String,
        reply: Reply<()>,
    },
    Purge {
        name: String,
        reply: Reply<u64>,
    },
    Send {
        queue: String,
        messages: Vec<Outgoing>,
        reply: Reply<()>,
    },
    Receive {
        queue: String,
        max: usize,
        visibility_ms: Option<u64>,
        holder: Holder,
        reply: Reply<RawReceipts>,
    },
    Settle {
        queue: String,
        entries: Vec<SettleEntry>,
        reply: Reply<Vec<Result<()>>>,
    },
    ChangeVisibility {
        queue: String,
        entries: Vec<VisibilityEntry>,
        reply: Reply<Vec<Result<()>>>,
    },
    Fire {
        key: String,
        fire_ms: EpochMs,
        queue: String,
        message: Outgoing,
        reply: Reply<bool>,
    },
    StartSchedule {
        key: String,
        now_ms: EpochMs,
        reply: Reply<EpochMs>,
    },
    ForgetSchedules {
        prefix: String,
        keep: Vec<String>,
        reply: Reply<()>,
    },
}

impl Op {
    /// Changes a queue itself, so runs alone.
    fn alone(&self) -> bool {
        matches!(
            self,
            Op::CreateQueue { .. }
                | Op::SetConfig { .. }
                | Op::DeleteQueue { .. }
                | Op::Purge { .. }
        )
    }
}

fn storage(err: rusqlite::Error) -> QueueError {
    QueueError::Storage(err.to_string())
}

trait Sql<T> {
    fn sql(self) -> Result<T>;
}

impl<T> Sql<T> for rusqlite::Result<T> {
    fn sql(self) -> Result<T> {
        self.map_err(storage)
    }
}

/// A caller's answer, held until the batch's commit decides it.
trait Answer: Send {
    fn answer(self: Box<Self>, failed: Option<&str>);
}

struct Answered<T> {
    reply: Reply<T>,
    result: Result<T>,
}

impl<T: Send> Answer for Answered<T> {
    fn answer(self: Box<Self>, failed: Option<&str>) {
        let result = match failed {
            Some(why) => Err(QueueError::Storage(why.to_owned())),
            None => self.result,
        };
        // A caller that stopped waiting (a dropped future) is no error of ours.
        let _ = self.reply.send(result);
    }
}

/// A committed change, applied to the state once its transaction commits.
enum Effect {
    Add(i64, Shape),
    Remove(i64, Shape),
    Expired(i64, u64),
    Schedule(String, Option<EpochMs>),
    CreateQueue(Box<QueueState>),
    SetConfig(i64, QueueConfig),
    DeleteQueue(i64),
    Purge(i64),
}

/// One transaction's worth of ops.
struct Batch {
    now: EpochMs,
    effects: Vec<Effect>,
    answers: Vec<Box<dyn Answer>>,
    /// Messages and bytes this batch added (negative: removed), for the store's caps.
    added_messages: i64,
    added_bytes: i64,
}

#[derive(Clone, Copy)]
struct Mark {
    effects: usize,
    added_messages: i64,
    added_bytes: i64,
}

impl Batch {
    fn new(now: EpochMs) -> Self {
        Batch {
            now,
            effects: Vec::new(),
            answers: Vec::new(),
            added_messages: 0,
            added_bytes: 0,
        }
    }

    fn add(&mut self, queue: i64, shape: Shape) {
        self.added_messages += 1;
        self.added_bytes += shape.size as i64;
        self.effects.push(Effect::Add(queue, shape));
    }

    fn remove(&mut self, queue: i64, shape: Shape) {
        self.added_messages -= 1;
        self.added_bytes -= shape.size as i64;
        self.effects.push(Effect::Remove(queue, shape));
    }

    fn mark(&self) -> Mark {
        Mark {
            effects: self.effects.len(),
            added_messages: self.added_messages,
            added_bytes: self.added_bytes,
        }
    }

    fn rewind(&mut self, mark: Mark) {
        self.effects.truncate(mark.effects);
        self.added_messages = mark.added_messages;
        self.added_bytes = mark.added_bytes;
    }
}

/// What an op needs of its queue, read from the committed state.
#[derive(Clone, Copy)]
struct Meta {
    id: i64,
    visibility_ms: u64,
    retention_ms: u64,
    delay_ms: u64,
    max_message_bytes: usize,
    /// The dead-letter queue's id (when it exists) and the receive count that sends there.
    redrive: Option<(i64, u32)>,
    pending_messages: u64,
    pending_bytes: u64,
}

const INSERT: &str =
    "INSERT INTO messages (queue, visible_at_ms, sent_at_ms, size, id, attributes, body)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
const SELECT_VISIBLE: &str =
    "SELECT seq, visible_at_ms, sent_at_ms, receive_count, first_received_at_ms, size,
            id, attributes, body
     FROM messages WHERE queue = ?1 AND visible_at_ms <= ?2
     ORDER BY visible_at_ms, seq LIMIT ?3";
const SELECT_VISIBLE_AFTER: &str =
    "SELECT seq, visible_at_ms, sent_at_ms, receive_count, first_received_at_ms, size,
            id, attributes, body
     FROM messages WHERE queue = ?1 AND visible_at_ms <= ?2 AND (visible_at_ms, seq) > (?4, ?5)
     ORDER BY visible_at_ms, seq LIMIT ?3";
const MARK_RECEIVED: &str = "UPDATE messages SET visible_at_ms = ?2, receive_count = ?3,
            first_received_at_ms = ?4, nonce = ?5, holder = ?6
     WHERE seq = ?1";
const MOVE_TO_DEAD_LETTER: &str =
    "UPDATE messages SET queue = ?2, visible_at_ms = ?3, receive_count = 0,
            first_received_at_ms = NULL, nonce = 0, holder = NULL
     WHERE seq = ?1";
const DELETE_SEQ: &str = "DELETE FROM messages WHERE seq = ?1";
const DELETE_RECEIPT: &str = "DELETE FROM messages WHERE seq = ?1 AND queue = ?2 AND nonce = ?3
     RETURNING sent_at_ms, visible_at_ms, receive_count, size";
const SELECT_RECEIPT: &str = "SELECT sent_at_ms, visible_at_ms, receive_count, size
     FROM messages WHERE seq = ?1 AND queue = ?2 AND nonce = ?3";
const SET_VISIBLE_AT: &str = "UPDATE messages SET visible_at_ms = ?2 WHERE seq = ?1";
const DELETE_EXPIRED: &str = "DELETE FROM messages WHERE queue = ?1 AND sent_at_ms <= ?2
     RETURNING sent_at_ms, visible_at_ms, receive_count, size";

/// The shape of a row read as (sent_at_ms, visible_at_ms, receive_count, size).
fn shape_of(row: &Row<'_>) -> rusqlite::Result<Shape> {
    Ok(Shape {
        sent_at_ms: row.get(0)?,
        visible_at_ms: row.get(1)?,
        received: row.get::<_, i64>(2)? > 0,
        size: row.get::<_, i64>(3)? as u64,
    })
}

fn holder_code(holder: Holder) -> i64 {
    match holder {
        Holder::Internal => 1,
        Holder::External => 2,
    }
}

/// Makes every message an internal consumer of a previous process held visible again
/// (those consumers died with it). Outside clients' holds keep their deadlines.
pub(super) fn release_internal(conn: &Connection, now: EpochMs) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE messages SET visible_at_ms = ?1, holder = NULL
         WHERE holder = 1 AND visible_at_ms > ?1",
        params![now],
    )
}

/// Builds the in-memory state from the database.
pub(super) fn load(conn: &Connection, now: EpochMs) -> rusqlite::Result<State> {
    let mut state = State::default();
    state.promote(now);
    let mut stmt = conn.prepare(
        "SELECT id, name, visibility_timeout_ms, retention_ms, delay_ms, max_message_bytes,
                receive_wait_ms, dead_letter, max_receive_count, created_at_ms
         FROM queues",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let dead_letter: Option<String> = row.get(7)?;
        let max_receive_count: Option<i64> = row.get(8)?;
        let config = QueueConfig {
            visibility_timeout_ms: row.get::<_, i64>(2)? as u64,
            retention_ms: row.get::<_, i64>(3)? as u64,
            delay_ms: row.get::<_, i64>(4)? as u64,
            max_message_bytes: row.get::<_, i64>(5)? as usize,
            receive_wait_ms: row.get::<_, i64>(6)? as u64,
            redrive: dead_letter.map(|dead_letter| Redrive {
                dead_letter,
                max_receive_count: max_receive_count.unwrap_or(1) as u32,
            }),
        };
        state.insert_queue(QueueState::new(
            row.get(0)?,
            row.get(1)?,
            config,
            row.get(9)?,
        ));
    }
    let mut stmt =
        conn.prepare("SELECT sent_at_ms, visible_at_ms, receive_count, size, queue FROM messages")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        state.add(row.get(4)?, shape_of(row)?);
    }
    let mut stmt = conn.prepare("SELECT key, last_fire_ms FROM schedules")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        state.schedules.insert(row.get(0)?, row.get(1)?);
    }
    Ok(state)
}

pub(super) struct Writer {
    conn: Connection,
    ctx: Ctx,
}

/// Everything but the connection, so an op can borrow both at once.
struct Ctx {
    shared: Arc<Shared>,
    clock: Clock,
    max_pending_messages: u64,
    max_pending_bytes: u64,
    rng: SplitMix,
    /// When to look for messages past retention next, and how often.
    next_sweep: EpochMs,
    sweep_every_ms: i64,
}

impl Writer {
    pub fn new(conn: Connection, shared: Arc<Shared>, options: &Options) -> Self {
        let sweep_every_ms = i64::try_from(options.retention_sweep_ms).unwrap_or(i64::MAX);
        Writer {
            conn,
            ctx: Ctx {
                shared,
                clock: options.clock.clone(),
                max_pending_messages: options.max_pending_messages,
                max_pending_bytes: options.max_pending_bytes,
                rng: SplitMix::seeded(),
                next_sweep: (options.clock)().saturating_add(sweep_every_ms),
                sweep_every_ms,
            },
        }
    }

    /// Runs until every sender is gone (the store was dropped).
    pub fn run(mut self, ops: Receiver<Op>) {
        let mut drained = Vec::new();
        loop {
            let now = (self.ctx.clock)();
            self.tick(now);
            match ops.recv_timeout(self.idle_for(now)) {
                Ok(op) => drained.push(op),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while drained.len() < MAX_OPS_PER_BATCH {
                match ops.try_recv() {
                    Ok(op) => drained.push(op),
                    Err(_) => break,
                }
            }
            self.process(&mut drained);
        }
    }

    /// Moves the watermark, waking queues where something fell due; sweeps when due.
    fn tick(&mut self, now: EpochMs) {
        let woken = self.ctx.shared.lock().promote(now);
        for notify in woken {
            notify.notify_waiters();
        }
        if now >= self.ctx.next_sweep {
            self.ctx.next_sweep = now.saturating_add(self.ctx.sweep_every_ms);
            self.sweep(now);
        }
    }

    fn idle_for(&self, now: EpochMs) -> Duration {
        let next = self
            .ctx
            .shared
            .lock()
            .next_timer()
            .map_or(self.ctx.next_sweep, |t| t.min(self.ctx.next_sweep));
        Duration::from_millis(next.saturating_sub(now).clamp(1, MAX_IDLE_MS) as u64)
    }

    fn process(&mut self, drained: &mut Vec<Op>) {
        let now = (self.ctx.clock)();
        self.tick(now);
        let mut group = Vec::with_capacity(drained.len());
        for op in drained.drain(..) {
            if op.alone() {
                if !group.is_empty() {
                    self.commit(std::mem::take(&mut group), now);
                }
                self.commit(vec![op], now);
            } else {
                group.push(op);
            }
        }
        if !group.is_empty() {
            self.commit(group, now);
        }
    }

    /// Runs `ops` in one transaction and, once it commits, publishes and answers them.
    fn commit(&mut self, ops: Vec<Op>, now: EpochMs) {
        let mut batch = Batch::new(now);
        let outcome = match self.conn.transaction() {
            Ok(mut tx) => {
                for op in ops {
                    self.ctx.run(&mut tx, &mut batch, op);
                }
                tx.commit()
            }
            Err(err) => {
                for op in ops {
                    fail(op, &err);
                }
                Err(err)
            }
        };
        match outcome {
            Ok(()) => self.ctx.publish(batch),
            Err(err) => {
                let why = err.to_string();
                for answer in batch.answers {
                    answer.answer(Some(&why));
                }
            }
        }
    }

    /// Deletes what is past retention in every queue that holds some, in one commit.
    fn sweep(&mut self, now: EpochMs) {
        let due: Vec<(i64, EpochMs)> = {
            let state = self.ctx.shared.lock();
            state
                .queues
                .values()
                .filter_map(|q| {
                    let cutoff = now.saturating_sub(q.config.retention_ms as i64);
                    q.has_sent_by(cutoff).then_some((q.id, cutoff))
                })
                .collect()
        };
        if due.is_empty() {
            return;
        }
        let mut batch = Batch::new(now);
        let run = |conn: &mut Connection, batch: &mut Batch| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            {
                let mut delete = tx.prepare_cached(DELETE_EXPIRED)?;
                for (queue, cutoff) in due {
                    let shapes = delete
                        .query_map(params![queue, cutoff], shape_of)?
                        .collect::<rusqlite::Result<Vec<_>>>()?;
                    let expired = shapes.len() as u64;
                    for shape in shapes {
                        batch.remove(queue, shape);
                    }
                    batch.effects.push(Effect::Expired(queue, expired));
                }
            }
            tx.commit()
        };
        // A failed sweep changes nothing and is tried again at the next one.
        if run(&mut self.conn, &mut batch).is_ok() {
            self.ctx.publish(batch);
        }
    }
}

/// Answers an op that never ran.
fn fail(op: Op, err: &rusqlite::Error) {
    fn refuse<T>(reply: Reply<T>, err: &rusqlite::Error) {
        let _ = reply.send(Err(QueueError::Storage(err.to_string())));
    }
    match op {
        Op::CreateQueue { reply, .. }
        | Op::SetConfig { reply, .. }
        | Op::DeleteQueue { reply, .. }
        | Op::Send { reply, .. }
        | Op::ForgetSchedules { reply, .. } => refuse(reply, err),
        Op::Purge { reply, .. } => refuse(reply, err),
        Op::Receive { reply, .. } => refuse(reply, err),
        Op::Settle { reply, .. } | Op::ChangeVisibility { reply, .. } => refuse(reply, err),
        Op::Fire { reply, .. } => refuse(reply, err),
        Op::StartSchedule { reply, .. } => refuse(reply, err),
    }
}

impl Ctx {
    /// Runs one op under a savepoint: its changes stay only if it succeeds.
    fn run(&mut self, tx: &mut Transaction<'_>, batch: &mut Batch, op: Op) {
        let mark = batch.mark();
        let sp = match tx.savepoint() {
            Ok(sp) => sp,
            Err(err) => return fail(op, &err),
        };
        match op {
            Op::CreateQueue {
                name,
                config,
                reply,
            } => {
                let result = self.create_queue(&sp, batch, name, config);
                finish(sp, batch, mark, reply, result)
            }
            Op::SetConfig {
                name,
                config,
                reply,
            } => {
                let result = self.set_config(&sp, batch, &name, config);
                finish(sp, batch, mark, reply, result)
            }
            Op::DeleteQueue { name, reply } => {
                let result = self.delete_queue(&sp, batch, &name);
                finish(sp, batch, mark, reply, result)
            }
            Op::Purge { name, reply } => {
                let result = self.purge(&sp, batch, &name);
                finish(sp, batch, mark, reply, result)
            }
            Op::Send {
                queue,
                messages,
                reply,
            } => {
                let result = self.send(&sp, batch, &queue, messages);
                finish(sp, batch, mark, reply, result)
            }
            Op::Receive {
                queue,
                max,
                visibility_ms,
                holder,
                reply,
            } => {
                let result = self.receive(&sp, batch, &queue, max, visibility_ms, holder);
                finish(sp, batch, mark, reply, result)
            }
            Op::Settle {
                queue,
                entries,
                reply,
            } => {
                let result = self.settle(&sp, batch, &queue, entries);
                finish(sp, batch, mark, reply, result)
            }
            Op::ChangeVisibility {
                queue,
                entries,
                reply,
            } => {
                let result = self.change_visibility(&sp, batch, &queue, entries);
                finish(sp, batch, mark, reply, result)
            }
            Op::Fire {
                key,
                fire_ms,
                queue,
                message,
                reply,
            } => {
                let result = self.fire(&sp, batch, key, fire_ms, &queue, message);
                finish(sp, batch, mark, reply, result)
            }
            Op::StartSchedule { key, now_ms, reply } => {
                let result = self.start_schedule(&sp, batch, key, now_ms);
                finish(sp, batch, mark, reply, result)
            }
            Op::ForgetSchedules {
                prefix,
                keep,
                reply,
            } => {
                let result = self.forget_schedules(&sp, batch, &prefix, &keep);
                finish(sp, batch, mark, reply, result)
            }
        }
    }

    /// Applies a committed batch to the state, then wakes waiters and answers callers.
    fn publish(&self, batch: Batch) {
        let mut visible = Vec::new();
        let mut wake: Vec<Arc<Notify>> = Vec::new();
        {
            let mut state = self.shared.lock();
            for effect in batch.effects {
                match effect {
                    Effect::Add(queue, shape) => {
                        if state.add(queue, shape) {
                            visible.push(queue);
                        }
                    }
                    Effect::Remove(queue, shape) => state.remove(queue, shape),
                    Effect::Expired(queue, n) => {
                        if let Some(q) = state.queues.get_mut(&queue) {
                            q.expired += n;
                        }
                    }
                    Effect::Schedule(key, Some(at)) => {
                        state.schedules.insert(key, at);
                    }
                    Effect::Schedule(key, None) => {
                        state.schedules.remove(&key);
                    }
                    Effect::CreateQueue(queue) => state.insert_queue(*queue),
                    Effect::SetConfig(id, config) => {
                        if let Some(q) = state.queues.get_mut(&id) {
                            q.config = config;
                        }
                    }
                    Effect::DeleteQueue(id) => state.remove_queue(id),
                    Effect::Purge(id) => state.clear_queue(id),
                }
            }
            visible.sort_unstable();
            visible.dedup();
            for id in visible {
                if let Some(q) = state.queues.get(&id) {
                    wake.push(q.notify.clone());
                }
            }
        }
        for notify in wake {
            notify.notify_waiters();
        }
        for answer in batch.answers {
            answer.answer(None);
        }
    }

    fn meta(&self, name: &str) -> Result<Meta> {
        let state = self.shared.lock();
        let q = state
            .by_name(name)
            .ok_or_else(|| QueueError::NoSuchQueue(name.to_owned()))?;
        let redrive = q.config.redrive.as_ref().and_then(|r| {
            state
                .names
                .get(&r.dead_letter)
                .map(|id| (*id, r.max_receive_count))
        });
        Ok(Meta {
            id: q.id,
            visibility_ms: q.config.visibility_timeout_ms,
            retention_ms: q.config.retention_ms,
            delay_ms: q.config.delay_ms,
            max_message_bytes: q.config.max_message_bytes,
            redrive,
            pending_messages: state.pending_messages,
            pending_bytes: state.pending_bytes,
        })
    }

    /// `Full` unless `messages` more messages of `bytes` fit under the store's caps.
    fn check_caps(&self, meta: &Meta, batch: &Batch, messages: u64, bytes: u64) -> Result<()> {
        let pending_messages = (meta.pending_messages as i64 + batch.added_messages).max(0) as u64;
        let pending_bytes = (meta.pending_bytes as i64 + batch.added_bytes).max(0) as u64;
        if pending_messages + messages > self.max_pending_messages
            || pending_bytes + bytes > self.max_pending_bytes
        {
            return Err(QueueError::Full {
                pending_messages,
                pending_bytes,
            });
        }
        Ok(())
    }

    fn check_redrive_target(&self, config: &QueueConfig) -> Result<()> {
        match &config.redrive {
            Some(r) if self.shared.lock().by_name(&r.dead_letter).is_none() => {
                Err(QueueError::InvalidAttribute {
                    name: "RedrivePolicy".into(),
                    why: format!(
                        "the dead-letter queue {} does not exist; create it first",
                        r.dead_letter
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    fn create_queue(
        &mut self,
        conn: &Connection,
        batch: &mut Batch,
        name: String,
        config: QueueConfig,
    ) -> Result<()> {
        if let Some(q) = self.shared.lock().by_name(&name) {
            return if q.config == config {
                Ok(())
            } else {
                Err(QueueError::QueueExists(name))
            };
        }
        self.check_redrive_target(&config)?;
        let (dead_letter, max_receive_count) = redrive_columns(&config);
        conn.prepare_cached(
            "INSERT INTO queues (name, visibility_timeout_ms, retention_ms, delay_ms,
                    max_message_bytes, receive_wait_ms, dead_letter, max_receive_count,
                    created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .sql()?
        .execute(params![
            name,
            config.visibility_timeout_ms as i64,
            config.retention_ms as i64,
            config.delay_ms as i64,
            config.max_message_bytes as i64,
            config.receive_wait_ms as i64,
            dead_letter,
            max_receive_count,
            batch.now,
        ])
        .sql()?;
        let id = conn.last_insert_rowid();
        batch
            .effects
            .push(Effect::CreateQueue(Box::new(QueueState::new(
                id, name, config, batch.now,
            ))));
        Ok(())
    }

    fn set_config(
        &mut self,
        conn: &Connection,
        batch: &mut Batch,
        name: &str,
        config: QueueConfig,
    ) -> Result<()> {
        let meta = self.meta(name)?;
        self.check_redrive_target(&config)?;
        let (dead_letter, max_receive_count) = redrive_columns(&config);
        conn.prepare_cached(
            "UPDATE queues SET visibility_timeout_ms = ?2, retention_ms = ?3, delay_ms = ?4,
                    max_message_bytes = ?5, receive_wait_ms = ?6, dead_letter = ?7,
                    max_receive_count = ?8
             WHERE id = ?1",
        )
        .sql()?
        .execute(params![
            meta.id,
            config.visibility_timeout_ms as i64,
            config.retention_ms as i64,
            config.delay_ms as i64,
            config.max_message_bytes as i64,
            config.receive_wait_ms as i64,
            dead_letter,
            max_receive_count,
        ])
        .sql()?;
        batch.effects.push(Effect::SetConfig(meta.id, config));
        Ok(())
    }

    fn delete_queue(&mut self, conn: &Connection, batch: &mut Batch, name: &str) -> Result<()> {
        let meta = self.meta(name)?;
        conn.execute("DELETE FROM messages WHERE queue = ?1", params![meta.id])
            .sql()?;
        conn.execute("DELETE FROM queues WHERE id = ?1", params![meta.id])
            .sql()?;
        batch.effects.push(Effect::DeleteQueue(meta.id));
        Ok(())
    }

    fn purge(&mut self, conn: &Connection, batch: &mut Batch, name: &str) -> Result<u64> {
        let meta = self.meta(name)?;
        let purged = conn
            .execute("DELETE FROM messages WHERE queue = ?1", params![meta.id])
            .sql()?;
        batch.effects.push(Effect::Purge(meta.id));
        Ok(purged as u64)
    }

    /// Inserts one checked message into queue `meta`.
    fn insert(
        &mut self,
        conn: &Connection,
        batch: &mut Batch,
        meta: &Meta,
        message: Outgoing,
    ) -> Result<()> {
        let delay = message.delay_ms.unwrap_or(meta.delay_ms) as i64;
        let shape = Shape {
            sent_at_ms: batch.now,
            visible_at_ms: batch.now + delay,
            received: false,
            size: message.size as u64,
        };
        conn.prepare_cached(INSERT)
            .sql()?
            .execute(params![
                meta.id,
                shape.visible_at_ms,
                shape.sent_at_ms,
                message.size as i64,
                &message.id[..],
                message.attributes,
                message.body,
            ])
            .sql()?;
        batch.add(meta.id, shape);
        Ok(())
    }

    fn check_size(meta: &Meta, message: &Outgoing) -> Result<()> {
        if message.size > meta.max_message_bytes {
            return Err(QueueError::MessageTooLarge {
                size: message.size,
                max: meta.max_message_bytes,
            });
        }
        Ok(())
    }

    fn send(
        &mut self,
        conn: &Connection,
        batch: &mut Batch,
        queue: &str,
        messages: Vec<Outgoing>,
    ) -> Result<()> {
        let meta = self.meta(queue)?;
        let mut bytes = 0;
        for message in &messages {
            Self::check_size(&meta, message)?;
            bytes += message.size as u64;
        }
        self.check_caps(&meta, batch, messages.len() as u64, bytes)?;
        for message in messages {
            self.insert(conn, batch, &meta, message)?;
        }
        Ok(())
    }

    fn receive(
        &mut self,
        conn: &Connection,
        batch: &mut Batch,
        queue: &str,
        max: usize,
        visibility_ms: Option<u64>,
        holder: Holder,
    ) -> Result<RawReceipts> {
        let meta = self.meta(queue)?;
        let now = batch.now;
        let visibility = visibility_ms.unwrap_or(meta.visibility_ms) as i64;
        let cutoff = now.saturating_sub(meta.retention_ms as i64);
        let mut out = RawReceipts {
            queue: meta.id,
            ..RawReceipts::default()
        };
        let mut after: Option<(EpochMs, i64)> = None;
        loop {
            let want = max - out.messages.len();
            let candidates = {
                let mut stmt = conn
                    .prepare_cached(if after.is_some() {
                        SELECT_VISIBLE_AFTER
                    } else {
                        SELECT_VISIBLE
                    })
                    .sql()?;
                let mut rows = match after {
                    Some((v, seq)) => stmt.query(params![meta.id, now, want as i64, v, seq]),
                    None => stmt.query(params![meta.id, now, want as i64]),
                }
                .sql()?;
                let mut candidates = Vec::with_capacity(want.min(64));
                while let Some(row) = rows.next().sql()? {
                    candidates.push(Candidate::read(row).sql()?);
                }
                candidates
            };
            let full = candidates.len() == want;
            let mut skipped = false;
            for c in candidates {
                after = Some((c.shape.visible_at_ms, c.seq));
                if c.shape.sent_at_ms <= cutoff {
                    conn.prepare_cached(DELETE_SEQ)
                        .sql()?
                        .execute(params![c.seq])
                        .sql()?;
                    batch.remove(meta.id, c.shape);
                    out.expired += 1;
                    skipped = true;
                    continue;
                }
                if let Some((dead_letter, max_receives)) = meta.redrive {
                    if c.receive_count >= max_receives {
                        conn.prepare_cached(MOVE_TO_DEAD_LETTER)
                            .sql()?
                            .execute(params![c.seq, dead_letter, now])
                            .sql()?;
                        batch.remove(meta.id, c.shape);
                        batch.add(
                            dead_letter,
                            Shape {
                                visible_at_ms: now,
                                received: false,
                                ..c.shape
                            },
                        );
                        out.dead_lettered += 1;
                        skipped = true;
                        continue;
                    }
                }
                let nonce = self.rng.nonce();
                let receive_count = c.receive_count + 1;
                let first_received_at_ms = c.first_received_at_ms.unwrap_or(now);
                let visible_at_ms = now + visibility;
                conn.prepare_cached(MARK_RECEIVED)
                    .sql()?
                    .execute(params![
                        c.seq,
                        visible_at_ms,
                        receive_count,
                        first_received_at_ms,
                        nonce,
                        holder_code(holder),
                    ])
                    .sql()?;
                batch.remove(meta.id, c.shape);
                batch.add(
                    meta.id,
                    Shape {
                        visible_at_ms,
                        received: true,
                        ..c.shape
                    },
                );
                out.messages.push(RawReceived {
                    seq: c.seq,
                    nonce,
                    id: c.id,
                    body: c.body,
                    attributes: c.attributes,
                    sent_at_ms: c.shape.sent_at_ms,
                    first_received_at_ms,
                    receive_count,
                });
            }
            // Look further only when messages that were skipped (expired, dead-lettered)
            // left room. With a zero visibility the received ones stay visible and could
            // come round again, so take one pass only.
            if !full || !skipped || out.messages.len() >= max || visibility == 0 {
                break;
            }
        }
        if out.expired > 0 {
            batch.effects.push(Effect::Expired(meta.id, out.expired));
        }
        Ok(out)
    }

    /// Checks a receipt belongs to this queue; `Err` is the entry's answer.
    fn own_receipt(meta: &Meta, handle: &str, receipt: Option<Receipt>) -> Result<Receipt> {
        match receipt {
            Some(r) if r.queue == meta.id => Ok(r),
            _ => Err(QueueError::InvalidReceipt(handle.to_owned())),
        }
    }

    fn settle(
        &mut self,
        conn: &Connection,
        batch: &mut Batch,
        queue: &str,
        entries: Vec<SettleEntry>,
    ) -> Result<Vec<Result<()>>> {
        let meta = self.meta(queue)?;
        let mut results = Vec::with_capacity(entries.len());
        for entry in entries {
            let receipt = match Self::own_receipt(&meta, &entry.handle, entry.receipt) {
                Ok(r) => r,
                Err(err) => {
                    results.push(Err(err));
                    continue;
                }
            };
            let forward = match entry.forward {
                Some((target, message)) => {
                    let checked = self
                        .meta(&target)
                        .and_then(|t| Self::check_size(&t, &message).map(|()| t));
                    match checked {
                        Ok(target) => Some((target, message)),
                        Err(err) => {
                            results.push(Err(err));
                            continue;
                        }
                    }
                }
                None => None,
            };
            let deleted = conn
                .prepare_cached(DELETE_RECEIPT)
                .sql()?
                .query_row(params![receipt.seq, meta.id, receipt.nonce], shape_of)
                .optional()
                .sql()?;
            // No row: the message was received again since, or is gone. SQS answers a
            // stale receipt with success and so do we; nothing is forwarded.
            if let Some(shape) = deleted {
                batch.remove(meta.id, shape);
                if let Some((target, message)) = forward {
                    self.insert(conn, batch, &target, message)?;
                }
            }
            results.push(Ok(()));
        }
        Ok(results)
    }

    fn change_visibility(
        &mut self,
        conn: &Connection,
        batch: &mut Batch,
        queue: &str,
        entries: Vec<VisibilityEntry>,
    ) -> Result<Vec<Result<()>>> {
        let meta = self.meta(queue)?;
        let now = batch.now;
        let mut results = Vec::with_capacity(entries.len());
        for entry in entries {
            let receipt = match Self::own_receipt(&meta, &entry.handle, entry.receipt) {
                Ok(r) => r,
                Err(err) => {
                    results.push(Err(err));
                    continue;
                }
            };
            let current = conn
                .prepare_cached(SELECT_RECEIPT)
                .sql()?
                .query_row(params![receipt.seq, meta.id, receipt.nonce], shape_of)
                .optional()
                .sql()?;
            let Some(shape) = current.filter(|s| s.visible_at_ms > now) else {
                results.push(Err(QueueError::NotInFlight(entry.handle)));
                continue;
            };
            let visible_at_ms = now + entry.timeout_ms as i64;
            conn.prepare_cached(SET_VISIBLE_AT)
                .sql()?
                .execute(params![receipt.seq, visible_at_ms])
                .sql()?;
            batch.remove(meta.id, shape);
            batch.add(
                meta.id,
                Shape {
                    visible_at_ms,
                    ..shape
                },
            );
            results.push(Ok(()));
        }
        Ok(results)
    }

    fn fire(
        &mut self,
        conn: &Connection,
        batch: &mut Batch,
        key: String,
        fire_ms: EpochMs,
        queue: &str,
        message: Outgoing,
    ) -> Result<bool> {
        let meta = self.meta(queue)?;
        Self::check_size(&meta, &message)?;
        let last: Option<EpochMs> = conn
            .prepare_cached("SELECT last_fire_ms FROM schedules WHERE key = ?1")
            .sql()?
            .query_row(params![key], |row| row.get(0))
            .optional()
            .sql()?;
        if last.is_some_and(|last| last >= fire_ms) {
            return Ok(false);
        }
        self.check_caps(&meta, batch, 1, message.size as u64)?;
        conn.prepare_cached(
            "INSERT INTO schedules (key, last_fire_ms) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET last_fire_ms = excluded.last_fire_ms",
        )
        .sql()?
        .execute(params![key, fire_ms])
        .sql()?;
        self.insert(conn, batch, &meta, message)?;
        batch.effects.push(Effect::Schedule(key, Some(fire_ms)));
        Ok(true)
    }

    fn start_schedule(
        &mut self,
        conn: &Connection,
        batch: &mut Batch,
        key: String,
        now_ms: EpochMs,
    ) -> Result<EpochMs> {
        let last: Option<EpochMs> = conn
            .prepare_cached("SELECT last_fire_ms FROM schedules WHERE key = ?1")
            .sql()?
            .query_row(params![key], |row| row.get(0))
            .optional()
            .sql()?;
        if let Some(last) = last {
            return Ok(last);
        }
        conn.prepare_cached("INSERT INTO schedules (key, last_fire_ms) VALUES (?1, ?2)")
            .sql()?
            .execute(params![key, now_ms])
            .sql()?;
        batch.effects.push(Effect::Schedule(key, Some(now_ms)));
        Ok(now_ms)
    }

    fn forget_schedules(
        &mut self,
        conn: &Connection,
        batch: &mut Batch,
        prefix: &str,
        keep: &[String],
    ) -> Result<()> {
        let keys = conn
            .prepare_cached("SELECT key FROM schedules WHERE substr(key, 1, length(?1)) = ?1")
            .sql()?
            .query_map(params![prefix], |row| row.get::<_, String>(0))
            .sql()?
            .collect::<rusqlite::Result<Vec<_>>>()
            .sql()?;
        for key in keys {
            if keep.contains(&key) {
                continue;
            }
            conn.prepare_cached("DELETE FROM schedules WHERE key = ?1")
                .sql()?
                .execute(params![key])
                .sql()?;
            batch.effects.push(Effect::Schedule(key, None));
        }
        Ok(())
    }
}

/// A row `receive` may hand out.
struct Candidate {
    seq: i64,
    shape: Shape,
    receive_count: u32,
    first_received_at_ms: Option<EpochMs>,
    id: Vec<u8>,
    attributes: Option<String>,
    body: String,
}

impl Candidate {
    /// Reads a row of `SELECT_VISIBLE`.
    fn read(row: &Row<'_>) -> rusqlite::Result<Self> {
        let receive_count: i64 = row.get(3)?;
        Ok(Candidate {
            seq: row.get(0)?,
            shape: Shape {
                visible_at_ms: row.get(1)?,
                sent_at_ms: row.get(2)?,
                received: receive_count > 0,
                size: row.get::<_, i64>(5)? as u64,
            },
            receive_count: receive_count as u32,
            first_received_at_ms: row.get(4)?,
            id: row.get(6)?,
            attributes: row.get(7)?,
            body: row.get(8)?,
        })
    }
}

fn redrive_columns(config: &QueueConfig) -> (Option<&str>, Option<i64>) {
    match &config.redrive {
        Some(r) => (Some(&r.dead_letter), Some(i64::from(r.max_receive_count))),
        None => (None, None),
    }
}

/// Keeps or undoes an op's savepoint by its result, and queues its answer.
fn finish<T: Send + 'static>(
    sp: rusqlite::Savepoint<'_>,
    batch: &mut Batch,
    mark: Mark,
    reply: Reply<T>,
    result: Result<T>,
) {
    let result = result.and_then(|value| sp.commit().sql().map(|()| value));
    if result.is_err() {
        // The savepoint, if still open, rolls back as it drops.
        batch.rewind(mark);
    }
    batch.answers.push(Box::new(Answered { reply, result }));
}
