//! What the SQLite backend keeps in memory so reads are cheap: the queues and their
//! configs, per-queue counts by state, the schedules' last fires and the store's totals.
//!
//! Only the writer changes it, and only with what it has committed, so a reader never
//! sees a change that could still roll back. It knows nothing of SQL.
//!
//! Counting without scanning: a message whose visibility time is at or before the
//! `promoted` watermark counts as *ready*; a later one sits in the queue's in-flight map
//! (it was received) or delayed map (never received), keyed by that time. Moving the
//! watermark forward moves the due keys into `ready`, so adding and removing a message
//! classify it by the same rule and the counts never drift. A reader counts the keys that
//! fell due since the last move as visible too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::{EpochMs, QueueConfig, QueueInfo, QueueStats};

/// What the counts need to know of one stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Shape {
    pub sent_at_ms: EpochMs,
    pub visible_at_ms: EpochMs,
    /// Received at least once: a hidden message is in flight, not delayed.
    pub received: bool,
    pub size: u64,
}

#[derive(Debug, Default)]
struct Counts {
    messages: u64,
    bytes: u64,
    ready: u64,
    in_flight: BTreeMap<EpochMs, u64>,
    in_flight_total: u64,
    delayed: BTreeMap<EpochMs, u64>,
    delayed_total: u64,
    /// Messages by send time: the oldest, and whether any is past retention.
    sent: BTreeMap<EpochMs, u64>,
}

pub(super) struct QueueState {
    pub id: i64,
    pub name: String,
    pub config: QueueConfig,
    pub created_at_ms: EpochMs,
    /// Woken when a message may have become visible, and when the queue is deleted.
    pub notify: Arc<Notify>,
    /// Messages deleted for passing retention since the store was opened.
    pub expired: u64,
    counts: Counts,
}

impl QueueState {
    pub fn new(id: i64, name: String, config: QueueConfig, created_at_ms: EpochMs) -> Self {
        QueueState {
            id,
            name,
            config,
            created_at_ms,
            notify: Arc::new(Notify::new()),
            expired: 0,
            counts: Counts::default(),
        }
    }

    pub fn stats(&self, now: EpochMs) -> QueueStats {
        let c = &self.counts;
        let due_in_flight: u64 = c.in_flight.range(..=now).map(|(_, n)| n).sum();
        let due_delayed: u64 = c.delayed.range(..=now).map(|(_, n)| n).sum();
        QueueStats {
            visible: c.ready + due_in_flight + due_delayed,
            in_flight: c.in_flight_total.saturating_sub(due_in_flight),
            delayed: c.delayed_total.saturating_sub(due_delayed),
            oldest_sent_at_ms: c.sent.keys().next().copied(),
            expired: self.expired,
        }
    }

    pub fn info(&self, now: EpochMs) -> QueueInfo {
        QueueInfo {
            name: self.name.clone(),
            config: self.config.clone(),
            created_at_ms: self.created_at_ms,
            stats: self.stats(now),
        }
    }

    /// When the next hidden message becomes visible, if any is hidden after `now`.
    pub fn next_due(&self, now: EpochMs) -> Option<EpochMs> {
        let after = |map: &BTreeMap<EpochMs, u64>| map.range(now + 1..).next().map(|(t, _)| *t);
        match (after(&self.counts.in_flight), after(&self.counts.delayed)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether a message was sent at or before `cutoff` (so is past retention).
    pub fn has_sent_by(&self, cutoff: EpochMs) -> bool {
        self.counts.sent.keys().next().is_some_and(|t| *t <= cutoff)
    }
}

/// Everything the backend answers reads from.
#[derive(Default)]
pub(super) struct State {
    pub queues: HashMap<i64, QueueState>,
    /// Queue ids by name, in name order for `list`.
    pub names: BTreeMap<String, i64>,
    pub schedules: HashMap<String, EpochMs>,
    pub pending_messages: u64,
    pub pending_bytes: u64,
    /// Every (visibility time, queue) a hidden message was counted under; popped when due.
    timers: BTreeSet<(EpochMs, i64)>,
    /// Everything hidden until this time or earlier counts as ready.
    promoted: EpochMs,
}

fn bump(map: &mut BTreeMap<EpochMs, u64>, key: EpochMs) {
    *map.entry(key).or_insert(0) += 1;
}

/// Takes one from `key`'s count: `None` if there was none, `Some(true)` if that was the
/// last.
fn drop_one(map: &mut BTreeMap<EpochMs, u64>, key: EpochMs) -> Option<bool> {
    match map.get_mut(&key) {
        Some(n) if *n > 1 => {
            *n -= 1;
            Some(false)
        }
        Some(_) => {
            map.remove(&key);
            Some(true)
        }
        None => None,
    }
}

impl State {
    pub fn by_name(&self, name: &str) -> Option<&QueueState> {
        self.names.get(name).and_then(|id| self.queues.get(id))
    }

    pub fn insert_queue(&mut self, queue: QueueState) {
        self.names.insert(queue.name.clone(), queue.id);
        self.queues.insert(queue.id, queue);
    }

    /// Removes a queue and its messages from the totals; wakes its waiters.
    pub fn remove_queue(&mut self, id: i64) {
        if let Some(queue) = self.queues.remove(&id) {
            self.names.remove(&queue.name);
            self.pending_messages -= queue.counts.messages;
            self.pending_bytes -= queue.counts.bytes;
            queue.notify.notify_waiters();
        }
    }

    /// Forgets every message of a queue (a purge).
    pub fn clear_queue(&mut self, id: i64) {
        if let Some(queue) = self.queues.get_mut(&id) {
            self.pending_messages -= queue.counts.messages;
            self.pending_bytes -= queue.counts.bytes;
            queue.counts = Counts::default();
        }
    }

    /// Counts a stored message; true when it is visible at once.
    pub fn add(&mut self, queue: i64, shape: Shape) -> bool {
        let Some(q) = self.queues.get_mut(&queue) else {
            return false;
        };
        let c = &mut q.counts;
        c.messages += 1;
        c.bytes += shape.size;
        bump(&mut c.sent, shape.sent_at_ms);
        self.pending_messages += 1;
        self.pending_bytes += shape.size;
        if shape.visible_at_ms <= self.promoted {
            c.ready += 1;
            return true;
        }
        if shape.received {
            bump(&mut c.in_flight, shape.visible_at_ms);
            c.in_flight_total += 1;
        } else {
            bump(&mut c.delayed, shape.visible_at_ms);
            c.delayed_total += 1;
        }
        self.timers.insert((shape.visible_at_ms, queue));
        false
    }

    /// Uncounts a message, classified by the same rule `add` used.
    pub fn remove(&mut self, queue: i64, shape: Shape) {
        let Some(q) = self.queues.get_mut(&queue) else {
            return;
        };
        let c = &mut q.counts;
        c.messages = c.messages.saturating_sub(1);
        c.bytes = c.bytes.saturating_sub(shape.size);
        drop_one(&mut c.sent, shape.sent_at_ms);
        self.pending_messages = self.pending_messages.saturating_sub(1);
        self.pending_bytes = self.pending_bytes.saturating_sub(shape.size);
        let at = shape.visible_at_ms;
        if at <= self.promoted {
            c.ready = c.ready.saturating_sub(1);
            return;
        }
        let (map, total, other) = if shape.received {
            (&mut c.in_flight, &mut c.in_flight_total, &c.delayed)
        } else {
            (&mut c.delayed, &mut c.delayed_total, &c.in_flight)
        };
        let Some(last) = drop_one(map, at) else {
            return;
        };
        *total -= 1;
        // Nothing left due then: forget the timer, or messages received with a long
        // visibility and deleted at once would pile timers up until their deadlines.
        if last && !other.contains_key(&at) {
            self.timers.remove(&(at, queue));
        }
    }

    /// Moves the watermark to `now` (never back) and counts what fell due as ready;
    /// returns the queues where something did, whose waiters want waking.
    pub fn promote(&mut self, now: EpochMs) -> Vec<Arc<Notify>> {
        self.promoted = self.promoted.max(now);
        let mut woken = Vec::new();
        while let Some(&(at, id)) = self.timers.first() {
            if at > self.promoted {
                break;
            }
            self.timers.pop_first();
            let Some(q) = self.queues.get_mut(&id) else {
                continue;
            };
            let c = &mut q.counts;
            let later = c.in_flight.split_off(&(self.promoted + 1));
            let due: u64 = std::mem::replace(&mut c.in_flight, later).values().sum();
            c.in_flight_total -= due;
            let later = c.delayed.split_off(&(self.promoted + 1));
            let due_delayed: u64 = std::mem::replace(&mut c.delayed, later).values().sum();
            c.delayed_total -= due_delayed;
            c.ready += due + due_delayed;
            if due + due_delayed > 0 {
                woken.push(q.notify.clone());
            }
        }
        woken
    }

    /// The earliest time something hidden falls due.
    pub fn next_timer(&self) -> Option<EpochMs> {
        self.timers.first().map(|(at, _)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(visible_at_ms: EpochMs, received: bool) -> Shape {
        Shape {
            sent_at_ms: 5,
            visible_at_ms,
            received,
            size: 10,
        }
    }

    fn stats(state: &State, now: EpochMs) -> (u64, u64, u64) {
        let s = state.queues[&1].stats(now);
        (s.visible, s.in_flight, s.delayed)
    }

    #[test]
    fn counts_follow_time_and_never_drift() {
        let mut state = State::default();
        state.insert_queue(QueueState::new(1, "q".into(), QueueConfig::default(), 0));
        state.promote(100);
        assert!(state.add(1, shape(100, false)));
        assert!(!state.add(1, shape(200, false)));
        assert!(!state.add(1, shape(300, true)));
        assert_eq!(stats(&state, 100), (1, 1, 1));
        // A reader sees what fell due before the writer moves the watermark.
        assert_eq!(stats(&state, 250), (2, 1, 0));
        assert_eq!(state.promote(250).len(), 1);
        assert_eq!(stats(&state, 250), (2, 1, 0));
        // Removing by the shape it was added with finds it wherever it went.
        state.remove(1, shape(200, false));
        state.remove(1, shape(300, true));
        assert_eq!(stats(&state, 1000), (1, 0, 0));
        assert_eq!((state.pending_messages, state.pending_bytes), (1, 10));
        state.remove(1, shape(100, false));
        assert_eq!(stats(&state, 1000), (0, 0, 0));
        // Timers go with the last message due at their time.
        assert_eq!(state.next_timer(), None);
        state.add(1, shape(500, true));
        state.add(1, shape(500, false));
        state.remove(1, shape(500, true));
        assert_eq!(state.next_timer(), Some(500));
        state.remove(1, shape(500, false));
        assert_eq!(state.next_timer(), None);
        assert_eq!(state.queues[&1].stats(0).oldest_sent_at_ms, None);
        assert_eq!((state.pending_messages, state.pending_bytes), (0, 0));
    }
}
