//! The writer thread: the only owner of the write connection and the only code that
//! changes the in-memory state. Callers hand it [`Op`]s over a channel; it takes every
//! op waiting, runs them in one transaction, commits once — one fsync for the lot — then
//! publishes the batch's effects to the state, wakes waiters and answers each caller.
//! Between batches it moves the visibility watermark (waking waiters when hidden
//! messages fall due) and sweeps messages past retention.
//!
//! One op's refusal must not undo the others', without paying for a savepoint per op:
//! every op checks everything that can refuse it (queue, sizes, caps, receipts) before
//! its first write, so a refused op has written nothing. Only a failing statement can
//! stop an op half-way; then the transaction rolls back and runs once more without that
//! op (a second failure fails the whole batch: the disk, not the op, is the trouble).
//!
//! Ops that change a queue itself (create, set, delete, purge) run alone in their own
//! transaction, so every other op can check queues and configs against the committed
//! state without seeing its own batch's changes.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, CachedStatement, Connection, OptionalExtension, Row};
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

/// A statement failed: the op stopped half-way and its transaction must roll back.
type Sql<T> = rusqlite::Result<T>;

/// Inside an op returning `Sql<Result<T>>`: a refusal is the op's answer, not a failure.
macro_rules! refuse {
    ($checked:expr) => {
        match $checked {
            Ok(value) => value,
            Err(refusal) => return Ok(Err(refusal)),
        }
    };
}

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

/// What an op came to, held until its transaction commits.
enum Outcome {
    Done(Result<()>),
    Count(Result<u64>),
    Receipts(Result<RawReceipts>),
    Entries(Result<Vec<Result<()>>>),
    Fired(Result<bool>),
    At(Result<EpochMs>),
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

    /// Sends the caller its answer: the op's outcome, or why it could not be kept.
    fn answer(self, outcome: Result<Outcome>) {
        fn give<T>(reply: Reply<T>, result: Result<T>) {
            // A caller that stopped waiting (a dropped future) is no error of ours.
            let _ = reply.send(result);
        }
        fn mismatch() -> QueueError {
            QueueError::Storage("internal error: an op got another op's outcome".into())
        }
        match self {
            Op::CreateQueue { reply, .. }
            | Op::SetConfig { reply, .. }
            | Op::DeleteQueue { reply, .. }
            | Op::Send { reply, .. }
            | Op::ForgetSchedules { reply, .. } => give(
                reply,
                outcome.and_then(|o| match o {
                    Outcome::Done(r) => r,
                    _ => Err(mismatch()),
                }),
            ),
            Op::Purge { reply, .. } => give(
                reply,
                outcome.and_then(|o| match o {
                    Outcome::Count(r) => r,
                    _ => Err(mismatch()),
                }),
            ),
            Op::Receive { reply, .. } => give(
                reply,
                outcome.and_then(|o| match o {
                    Outcome::Receipts(r) => r,
                    _ => Err(mismatch()),
                }),
            ),
            Op::Settle { reply, .. } | Op::ChangeVisibility { reply, .. } => give(
                reply,
                outcome.and_then(|o| match o {
                    Outcome::Entries(r) => r,
                    _ => Err(mismatch()),
                }),
            ),
            Op::Fire { reply, .. } => give(
                reply,
                outcome.and_then(|o| match o {
                    Outcome::Fired(r) => r,
                    _ => Err(mismatch()),
                }),
            ),
            Op::StartSchedule { reply, .. } => give(
                reply,
                outcome.and_then(|o| match o {
                    Outcome::At(r) => r,
                    _ => Err(mismatch()),
                }),
            ),
        }
    }
}

fn storage(err: &rusqlite::Error) -> QueueError {
    QueueError::Storage(err.to_string())
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

/// One transaction's worth of changes.
struct Batch {
    now: EpochMs,
    effects: Vec<Effect>,
    /// Messages and bytes this batch added (negative: removed), for the store's caps.
    added_messages: i64,
    added_bytes: i64,
}

impl Batch {
    fn new(now: EpochMs) -> Self {
        Batch {
            now,
            effects: Vec::new(),
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

/// The hot statements, taken from the connection's cache once per transaction rather
/// than once per message.
struct Stmts<'c> {
    conn: &'c Connection,
    insert: CachedStatement<'c>,
    select_visible: CachedStatement<'c>,
    select_visible_after: CachedStatement<'c>,
    mark_received: CachedStatement<'c>,
    move_to_dead_letter: CachedStatement<'c>,
    delete_seq: CachedStatement<'c>,
    select_receipt: CachedStatement<'c>,
    set_visible_at: CachedStatement<'c>,
}

const CANDIDATE_COLUMNS: &str = "seq, visible_at_ms, sent_at_ms, receive_count, \
                                 first_received_at_ms, size, id, attributes, body";

impl<'c> Stmts<'c> {
    fn new(conn: &'c Connection) -> Sql<Self> {
        Ok(Stmts {
            conn,
            insert: conn.prepare_cached(
                "INSERT INTO messages (queue, visible_at_ms, sent_at_ms, size, id, attributes, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?,
            select_visible: conn.prepare_cached(&format!(
                "SELECT {CANDIDATE_COLUMNS} FROM messages
                 WHERE queue = ?1 AND visible_at_ms <= ?2
                 ORDER BY visible_at_ms, seq LIMIT ?3"
            ))?,
            select_visible_after: conn.prepare_cached(&format!(
                "SELECT {CANDIDATE_COLUMNS} FROM messages
                 WHERE queue = ?1 AND visible_at_ms <= ?2 AND (visible_at_ms, seq) > (?4, ?5)
                 ORDER BY visible_at_ms, seq LIMIT ?3"
            ))?,
            mark_received: conn.prepare_cached(
                "UPDATE messages SET visible_at_ms = ?2, receive_count = ?3,
                        first_received_at_ms = ?4, nonce = ?5, holder = ?6
                 WHERE seq = ?1",
            )?,
            move_to_dead_letter: conn.prepare_cached(
                "UPDATE messages SET queue = ?2, visible_at_ms = ?3, receive_count = 0,
                        first_received_at_ms = NULL, nonce = 0, holder = NULL
                 WHERE seq = ?1",
            )?,
            delete_seq: conn.prepare_cached("DELETE FROM messages WHERE seq = ?1")?,
            select_receipt: conn.prepare_cached(
                "SELECT sent_at_ms, visible_at_ms, receive_count, size
                 FROM messages WHERE seq = ?1 AND queue = ?2 AND nonce = ?3",
            )?,
            set_visible_at: conn
                .prepare_cached("UPDATE messages SET visible_at_ms = ?2 WHERE seq = ?1")?,
        })
    }
}

/// The shape of a row read as (sent_at_ms, visible_at_ms, receive_count, size).
fn shape_of(row: &Row<'_>) -> Sql<Shape> {
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
pub(super) fn release_internal(conn: &Connection, now: EpochMs) -> Sql<usize> {
    conn.execute(
        "UPDATE messages SET visible_at_ms = ?1, holder = NULL
         WHERE holder = 1 AND visible_at_ms > ?1",
        params![now],
    )
}

/// Builds the in-memory state from the database.
pub(super) fn load(conn: &Connection, now: EpochMs) -> Sql<State> {
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

/// Why a transaction did not commit.
enum Abort {
    /// A statement of op `index` failed: run the batch again without it.
    Op(usize, rusqlite::Error),
    /// Beginning or committing failed: every op fails.
    Batch(rusqlite::Error),
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
        let mut failed: Vec<Option<QueueError>> = ops.iter().map(|_| None).collect();
        let mut replayed = false;
        loop {
            let mut batch = Batch::new(now);
            match self.attempt(&ops, &failed, &mut batch) {
                Ok(outcomes) => {
                    self.ctx.publish(batch.effects);
                    for ((op, outcome), failure) in ops.into_iter().zip(outcomes).zip(failed) {
                        match (outcome, failure) {
                            (Some(outcome), _) => op.answer(Ok(outcome)),
                            (None, Some(failure)) => op.answer(Err(failure)),
                            (None, None) => op.answer(Err(QueueError::Storage(
                                "internal error: an op was skipped".into(),
                            ))),
                        }
                    }
                    return;
                }
                Err(Abort::Op(index, err)) if !replayed => {
                    failed[index] = Some(storage(&err));
                    replayed = true;
                }
                Err(Abort::Op(_, err) | Abort::Batch(err)) => {
                    for (op, failure) in ops.into_iter().zip(failed) {
                        op.answer(Err(failure.unwrap_or_else(|| storage(&err))));
                    }
                    return;
                }
            }
        }
    }

    /// One try at a transaction of every op not in `failed`; the outcomes, in order.
    fn attempt(
        &mut self,
        ops: &[Op],
        failed: &[Option<QueueError>],
        batch: &mut Batch,
    ) -> Result<Vec<Option<Outcome>>, Abort> {
        let tx = self.conn.transaction().map_err(Abort::Batch)?;
        let mut outcomes = Vec::with_capacity(ops.len());
        {
            let mut sql = Stmts::new(&tx).map_err(Abort::Batch)?;
            for (index, op) in ops.iter().enumerate() {
                if failed[index].is_some() {
                    outcomes.push(None);
                    continue;
                }
                let outcome = self
                    .ctx
                    .exec(&mut sql, batch, op)
                    .map_err(|err| Abort::Op(index, err))?;
                outcomes.push(Some(outcome));
            }
        }
        // Dropping an uncommitted transaction (on any `?` above) rolls it back.
        tx.commit().map_err(Abort::Batch)?;
        Ok(outcomes)
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
        let run = |conn: &mut Connection, batch: &mut Batch| -> Sql<()> {
            let tx = conn.transaction()?;
            {
                let mut delete = tx.prepare_cached(
                    "DELETE FROM messages WHERE queue = ?1 AND sent_at_ms <= ?2
                     RETURNING sent_at_ms, visible_at_ms, receive_count, size",
                )?;
                for (queue, cutoff) in due {
                    let shapes = delete
                        .query_map(params![queue, cutoff], shape_of)?
                        .collect::<Sql<Vec<_>>>()?;
                    batch
                        .effects
                        .push(Effect::Expired(queue, shapes.len() as u64));
                    for shape in shapes {
                        batch.remove(queue, shape);
                    }
                }
            }
            tx.commit()
        };
        // Finding a queue's expired messages reads all of that queue's rows (an index on
        // send time would cost every send and delete more than the sweep saves), so a
        // long sweep pushes the next one back: sweeping takes at most a tenth of the
        // writer's time. Receives still delete the expired messages they meet.
        let started = Instant::now();
        // A failed sweep changes nothing and is tried again at the next one.
        if run(&mut self.conn, &mut batch).is_ok() {
            self.ctx.publish(batch.effects);
        }
        let backoff = i64::try_from(started.elapsed().as_millis() * 9).unwrap_or(i64::MAX);
        self.ctx.next_sweep = self.ctx.next_sweep.max(now.saturating_add(backoff));
    }
}

impl Ctx {
    fn exec(&mut self, sql: &mut Stmts<'_>, batch: &mut Batch, op: &Op) -> Sql<Outcome> {
        Ok(match op {
            Op::CreateQueue { name, config, .. } => {
                Outcome::Done(self.create_queue(sql, batch, name, config)?)
            }
            Op::SetConfig { name, config, .. } => {
                Outcome::Done(self.set_config(sql, batch, name, config)?)
            }
            Op::DeleteQueue { name, .. } => Outcome::Done(self.delete_queue(sql, batch, name)?),
            Op::Purge { name, .. } => Outcome::Count(self.purge(sql, batch, name)?),
            Op::Send {
                queue, messages, ..
            } => Outcome::Done(self.send(sql, batch, queue, messages)?),
            Op::Receive {
                queue,
                max,
                visibility_ms,
                holder,
                ..
            } => {
                Outcome::Receipts(self.receive(sql, batch, queue, *max, *visibility_ms, *holder)?)
            }
            Op::Settle { queue, entries, .. } => {
                Outcome::Entries(self.settle(sql, batch, queue, entries)?)
            }
            Op::ChangeVisibility { queue, entries, .. } => {
                Outcome::Entries(self.change_visibility(sql, batch, queue, entries)?)
            }
            Op::Fire {
                key,
                fire_ms,
                queue,
                message,
                ..
            } => Outcome::Fired(self.fire(sql, batch, key, *fire_ms, queue, message)?),
            Op::StartSchedule { key, now_ms, .. } => {
                Outcome::At(self.start_schedule(sql, batch, key, *now_ms)?)
            }
            Op::ForgetSchedules { prefix, keep, .. } => {
                Outcome::Done(self.forget_schedules(sql, batch, prefix, keep)?)
            }
        })
    }

    /// Applies committed effects to the state, then wakes the queues where a message
    /// became visible.
    fn publish(&self, effects: Vec<Effect>) {
        let mut visible = Vec::new();
        let mut wake: Vec<Arc<Notify>> = Vec::new();
        {
            let mut state = self.shared.lock();
            for effect in effects {
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

    fn check_size(meta: &Meta, message: &Outgoing) -> Result<()> {
        if message.size > meta.max_message_bytes {
            return Err(QueueError::MessageTooLarge {
                size: message.size,
                max: meta.max_message_bytes,
            });
        }
        Ok(())
    }

    fn create_queue(
        &mut self,
        sql: &mut Stmts<'_>,
        batch: &mut Batch,
        name: &str,
        config: &QueueConfig,
    ) -> Sql<Result<()>> {
        if let Some(q) = self.shared.lock().by_name(name) {
            return Ok(if q.config == *config {
                Ok(())
            } else {
                Err(QueueError::QueueExists(name.to_owned()))
            });
        }
        refuse!(self.check_redrive_target(config));
        let (dead_letter, max_receive_count) = redrive_columns(config);
        sql.conn
            .prepare_cached(
                "INSERT INTO queues (name, visibility_timeout_ms, retention_ms, delay_ms,
                        max_message_bytes, receive_wait_ms, dead_letter, max_receive_count,
                        created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
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
            ])?;
        let id = sql.conn.last_insert_rowid();
        batch
            .effects
            .push(Effect::CreateQueue(Box::new(QueueState::new(
                id,
                name.to_owned(),
                config.clone(),
                batch.now,
            ))));
        Ok(Ok(()))
    }

    fn set_config(
        &mut self,
        sql: &mut Stmts<'_>,
        batch: &mut Batch,
        name: &str,
        config: &QueueConfig,
    ) -> Sql<Result<()>> {
        let meta = refuse!(self.meta(name));
        refuse!(self.check_redrive_target(config));
        let (dead_letter, max_receive_count) = redrive_columns(config);
        sql.conn
            .prepare_cached(
                "UPDATE queues SET visibility_timeout_ms = ?2, retention_ms = ?3, delay_ms = ?4,
                        max_message_bytes = ?5, receive_wait_ms = ?6, dead_letter = ?7,
                        max_receive_count = ?8
                 WHERE id = ?1",
            )?
            .execute(params![
                meta.id,
                config.visibility_timeout_ms as i64,
                config.retention_ms as i64,
                config.delay_ms as i64,
                config.max_message_bytes as i64,
                config.receive_wait_ms as i64,
                dead_letter,
                max_receive_count,
            ])?;
        batch
            .effects
            .push(Effect::SetConfig(meta.id, config.clone()));
        Ok(Ok(()))
    }

    fn delete_queue(
        &mut self,
        sql: &mut Stmts<'_>,
        batch: &mut Batch,
        name: &str,
    ) -> Sql<Result<()>> {
        let meta = refuse!(self.meta(name));
        sql.conn
            .execute("DELETE FROM messages WHERE queue = ?1", params![meta.id])?;
        sql.conn
            .execute("DELETE FROM queues WHERE id = ?1", params![meta.id])?;
        batch.effects.push(Effect::DeleteQueue(meta.id));
        Ok(Ok(()))
    }

    fn purge(&mut self, sql: &mut Stmts<'_>, batch: &mut Batch, name: &str) -> Sql<Result<u64>> {
        let meta = refuse!(self.meta(name));
        let purged = sql
            .conn
            .execute("DELETE FROM messages WHERE queue = ?1", params![meta.id])?;
        batch.effects.push(Effect::Purge(meta.id));
        Ok(Ok(purged as u64))
    }

    /// Inserts one checked message into queue `meta`.
    fn insert(sql: &mut Stmts<'_>, batch: &mut Batch, meta: &Meta, message: &Outgoing) -> Sql<()> {
        let delay = message.delay_ms.unwrap_or(meta.delay_ms) as i64;
        let shape = Shape {
            sent_at_ms: batch.now,
            visible_at_ms: batch.now + delay,
            received: false,
            size: message.size as u64,
        };
        sql.insert.execute(params![
            meta.id,
            shape.visible_at_ms,
            shape.sent_at_ms,
            message.size as i64,
            &message.id[..],
            message.attributes,
            message.body,
        ])?;
        batch.add(meta.id, shape);
        Ok(())
    }

    fn send(
        &mut self,
        sql: &mut Stmts<'_>,
        batch: &mut Batch,
        queue: &str,
        messages: &[Outgoing],
    ) -> Sql<Result<()>> {
        let meta = refuse!(self.meta(queue));
        let mut bytes = 0;
        for message in messages {
            refuse!(Self::check_size(&meta, message));
            bytes += message.size as u64;
        }
        refuse!(self.check_caps(&meta, batch, messages.len() as u64, bytes));
        for message in messages {
            Self::insert(sql, batch, &meta, message)?;
        }
        Ok(Ok(()))
    }

    fn receive(
        &mut self,
        sql: &mut Stmts<'_>,
        batch: &mut Batch,
        queue: &str,
        max: usize,
        visibility_ms: Option<u64>,
        holder: Holder,
    ) -> Sql<Result<RawReceipts>> {
        let meta = refuse!(self.meta(queue));
        let now = batch.now;
        let visibility = visibility_ms.unwrap_or(meta.visibility_ms) as i64;
        let cutoff = now.saturating_sub(meta.retention_ms as i64);
        let mut out = RawReceipts {
            queue: meta.id,
            messages: Vec::with_capacity(max.min(64)),
            ..RawReceipts::default()
        };
        let mut after: Option<(EpochMs, i64)> = None;
        loop {
            let want = max - out.messages.len();
            let candidates = {
                let mut rows = match after {
                    Some((v, seq)) => sql.select_visible_after.query(params![
                        meta.id,
                        now,
                        want as i64,
                        v,
                        seq
                    ])?,
                    None => sql
                        .select_visible
                        .query(params![meta.id, now, want as i64])?,
                };
                let mut candidates = Vec::with_capacity(want.min(64));
                while let Some(row) = rows.next()? {
                    candidates.push(Candidate::read(row)?);
                }
                candidates
            };
            let full = candidates.len() == want;
            let mut skipped = false;
            for c in candidates {
                after = Some((c.shape.visible_at_ms, c.seq));
                if c.shape.sent_at_ms <= cutoff {
                    sql.delete_seq.execute(params![c.seq])?;
                    batch.remove(meta.id, c.shape);
                    out.expired += 1;
                    skipped = true;
                    continue;
                }
                if let Some((dead_letter, max_receives)) = meta.redrive {
                    if c.receive_count >= max_receives {
                        sql.move_to_dead_letter
                            .execute(params![c.seq, dead_letter, now])?;
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
                sql.mark_received.execute(params![
                    c.seq,
                    visible_at_ms,
                    receive_count,
                    first_received_at_ms,
                    nonce,
                    holder_code(holder),
                ])?;
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
        Ok(Ok(out))
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
        sql: &mut Stmts<'_>,
        batch: &mut Batch,
        queue: &str,
        entries: &[SettleEntry],
    ) -> Sql<Result<Vec<Result<()>>>> {
        let meta = refuse!(self.meta(queue));
        let mut results = Vec::with_capacity(entries.len());
        for entry in entries {
            let receipt = match Self::own_receipt(&meta, &entry.handle, entry.receipt) {
                Ok(r) => r,
                Err(err) => {
                    results.push(Err(err));
                    continue;
                }
            };
            let forward = match &entry.forward {
                Some((target, message)) => {
                    let checked = self
                        .meta(target)
                        .and_then(|t| Self::check_size(&t, message).map(|()| t));
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
            // A look-up, then a delete by row id: cheaper than `DELETE ... RETURNING`,
            // which builds a temporary table for every row it returns.
            let current = sql
                .select_receipt
                .query_row(params![receipt.seq, meta.id, receipt.nonce], shape_of)
                .optional()?;
            // No row: the message was received again since, or is gone. SQS answers a
            // stale receipt with success and so do we; nothing is forwarded.
            if let Some(shape) = current {
                sql.delete_seq.execute(params![receipt.seq])?;
                batch.remove(meta.id, shape);
                if let Some((target, message)) = forward {
                    Self::insert(sql, batch, &target, message)?;
                }
            }
            results.push(Ok(()));
        }
        Ok(Ok(results))
    }

    fn change_visibility(
        &mut self,
        sql: &mut Stmts<'_>,
        batch: &mut Batch,
        queue: &str,
        entries: &[VisibilityEntry],
    ) -> Sql<Result<Vec<Result<()>>>> {
        let meta = refuse!(self.meta(queue));
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
            let current = sql
                .select_receipt
                .query_row(params![receipt.seq, meta.id, receipt.nonce], shape_of)
                .optional()?;
            let Some(shape) = current.filter(|s| s.visible_at_ms > now) else {
                results.push(Err(QueueError::NotInFlight(entry.handle.clone())));
                continue;
            };
            let visible_at_ms = now + entry.timeout_ms as i64;
            sql.set_visible_at
                .execute(params![receipt.seq, visible_at_ms])?;
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
        Ok(Ok(results))
    }

    fn last_fire(sql: &Stmts<'_>, key: &str) -> Sql<Option<EpochMs>> {
        sql.conn
            .prepare_cached("SELECT last_fire_ms FROM schedules WHERE key = ?1")?
            .query_row(params![key], |row| row.get(0))
            .optional()
    }

    fn fire(
        &mut self,
        sql: &mut Stmts<'_>,
        batch: &mut Batch,
        key: &str,
        fire_ms: EpochMs,
        queue: &str,
        message: &Outgoing,
    ) -> Sql<Result<bool>> {
        let meta = refuse!(self.meta(queue));
        refuse!(Self::check_size(&meta, message));
        if Self::last_fire(sql, key)?.is_some_and(|last| last >= fire_ms) {
            return Ok(Ok(false));
        }
        refuse!(self.check_caps(&meta, batch, 1, message.size as u64));
        sql.conn
            .prepare_cached(
                "INSERT INTO schedules (key, last_fire_ms) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET last_fire_ms = excluded.last_fire_ms",
            )?
            .execute(params![key, fire_ms])?;
        Self::insert(sql, batch, &meta, message)?;
        batch
            .effects
            .push(Effect::Schedule(key.to_owned(), Some(fire_ms)));
        Ok(Ok(true))
    }

    fn start_schedule(
        &mut self,
        sql: &mut Stmts<'_>,
        batch: &mut Batch,
        key: &str,
        now_ms: EpochMs,
    ) -> Sql<Result<EpochMs>> {
        if let Some(last) = Self::last_fire(sql, key)? {
            return Ok(Ok(last));
        }
        sql.conn
            .prepare_cached("INSERT INTO schedules (key, last_fire_ms) VALUES (?1, ?2)")?
            .execute(params![key, now_ms])?;
        batch
            .effects
            .push(Effect::Schedule(key.to_owned(), Some(now_ms)));
        Ok(Ok(now_ms))
    }

    fn forget_schedules(
        &mut self,
        sql: &mut Stmts<'_>,
        batch: &mut Batch,
        prefix: &str,
        keep: &[String],
    ) -> Sql<Result<()>> {
        let keys = sql
            .conn
            .prepare_cached("SELECT key FROM schedules WHERE substr(key, 1, length(?1)) = ?1")?
            .query_map(params![prefix], |row| row.get::<_, String>(0))?
            .collect::<Sql<Vec<_>>>()?;
        let mut delete = sql
            .conn
            .prepare_cached("DELETE FROM schedules WHERE key = ?1")?;
        for key in keys {
            if keep.contains(&key) {
                continue;
            }
            delete.execute(params![key])?;
            batch.effects.push(Effect::Schedule(key, None));
        }
        Ok(Ok(()))
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
    /// Reads a row of [`CANDIDATE_COLUMNS`].
    fn read(row: &Row<'_>) -> Sql<Self> {
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

#[cfg(test)]
mod tests;
