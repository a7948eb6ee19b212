//! The store's background tasks, one set per [`super::JetStreamQueues`], stopped when it
//! is dropped: the watches that keep the cache of queue configs and schedule times, the
//! wake-ups of waiting receivers, the counts' read-back, the renewal of internal holds and
//! the delay mover. They touch only what the store itself owns.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use bytes::Bytes;
use futures_util::StreamExt;
use shoal_queue::EpochMs;

use super::names::{self, CONSUMER, MOVER};
use super::wire::{self, Receipt};
use super::{nak, now_ms, Inner, FETCH_TIMEOUT};

pub(super) async fn watch_queues(inner: Arc<Inner>) {
    loop {
        match inner.queues_kv.watch_all().await {
            Ok(mut watch) => {
                // Whatever changed while the watch was down.
                let _ = inner.load_queues().await;
                while let Some(entry) = watch.next().await {
                    let Ok(entry) = entry else { break };
                    inner.apply_queue_entry(&entry);
                }
            }
            Err(err) => tracing::debug!(%err, "watching the queues bucket; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub(super) async fn watch_schedules(inner: Arc<Inner>) {
    loop {
        match inner.schedules_kv.watch_all().await {
            Ok(mut watch) => {
                let _ = inner.load_schedules().await;
                while let Some(Ok(entry)) = watch.next().await {
                    inner.apply_schedule_entry(&entry);
                }
            }
            Err(err) => tracing::debug!(%err, "watching the schedules bucket; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub(super) async fn wake_ups(inner: Arc<Inner>) {
    loop {
        match inner.client.subscribe(inner.names.wake_subjects()).await {
            Ok(mut sub) => {
                while let Some(msg) = sub.next().await {
                    if let Some(token) = inner.names.wake_token(msg.subject.as_str()) {
                        let notify = inner.lock().notify.get(token).cloned();
                        if let Some(n) = notify {
                            n.notify_waiters();
                        }
                    }
                }
            }
            Err(err) => tracing::debug!(%err, "subscribing to wake-ups; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How often the buckets are read whole, beside their watches: a backstop should a watch
/// stall unnoticed across a reconnect.
const RELOAD_EVERY: Duration = Duration::from_secs(30);

pub(super) async fn refresher(inner: Arc<Inner>) {
    let period = Duration::from_millis(inner.options.refresh_ms.max(10));
    let mut reloaded = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(period).await;
        if reloaded.elapsed() >= RELOAD_EVERY {
            reloaded = tokio::time::Instant::now();
            let _ = inner.load_queues().await;
            let _ = inner.load_schedules().await;
        }
        inner.refresh().await;
    }
}

/// Renews the internal holds longer than the lease, every third of it: `+WPI` restarts
/// the ack wait (the lease) while more than a lease is left, and the last stretch is set
/// with a delayed nak. When this node dies nobody renews, and its messages come back within
/// the lease.
pub(super) async fn renewer(inner: Arc<Inner>) {
    let lease = inner.options.internal_lease_ms.max(1_000);
    loop {
        tokio::time::sleep(Duration::from_millis(lease / 3)).await;
        let now = now_ms();
        let due: Vec<((u64, u64), String, Receipt, EpochMs)> = inner
            .lock()
            .held
            .iter()
            .filter_map(|(k, h)| {
                let (queue, r) = h.renew.clone()?;
                Some((*k, queue, r, h.deadline_ms))
            })
            .collect();
        for (key, queue, r, deadline) in due {
            let Some(stream) = inner.names.stream(&queue) else {
                continue;
            };
            if deadline <= now {
                if let Some(h) = inner.lock().held.get_mut(&key) {
                    h.renew = None;
                }
                continue;
            }
            let left = (deadline - now) as u64;
            let (command, last) = if left > lease {
                (Bytes::from_static(b"+WPI"), false)
            } else {
                (nak(left), true)
            };
            let subject = r.ack_subject(&stream, CONSUMER);
            if inner.ack_request(subject, command).await.is_ok() && last {
                if let Some(h) = inner.lock().held.get_mut(&key) {
                    if h.delivered == r.delivered {
                        h.renew = None;
                    }
                }
            }
        }
    }
}

/// Moves due delayed messages into their queues. Every node runs one; the work-queue
/// consumer hands each message to one of them, and the move's `Nats-Msg-Id` (the message's
/// id) makes a repeated move (after a crash between publish and ack) a duplicate.
pub(super) async fn mover(inner: Arc<Inner>) {
    let stream = inner.names.delay_stream();
    loop {
        let consumer: PullConsumer = match inner
            .js
            .get_consumer_from_stream(MOVER, stream.clone())
            .await
        {
            Ok(c) => c,
            Err(err) => {
                tracing::debug!(%err, "opening the delay mover's consumer; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let batch = consumer
                .batch()
                .max_messages(256)
                .expires(Duration::from_secs(1))
                .messages()
                .await;
            let Ok(mut batch) = batch else {
                break;
            };
            let mut failed = false;
            // The pull expires after a second; a pull lost to a reconnect never answers.
            let patience = Duration::from_secs(1) + FETCH_TIMEOUT;
            loop {
                let Ok(Some(msg)) = tokio::time::timeout(patience, batch.next()).await else {
                    break;
                };
                match msg {
                    Ok(msg) => inner.move_one(msg).await,
                    Err(err) => {
                        tracing::debug!(%err, "fetching delayed messages");
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                tokio::time::sleep(Duration::from_millis(500)).await;
                break;
            }
        }
    }
}

impl Inner {
    async fn move_one(&self, msg: jetstream::Message) {
        let Some(reply) = msg.reply.clone() else {
            return;
        };
        let reply = reply.to_string();
        let headers = msg.headers.clone();
        let queue = self
            .names
            .delay_token(msg.subject.as_str())
            .and_then(|token| {
                let state = self.lock();
                state
                    .queues
                    .iter()
                    .find(|(name, _)| names::token(name) == token)
                    .map(|(name, q)| (name.clone(), q.stored.incarnation))
            });
        let incarnation = headers
            .as_ref()
            .and_then(|h| h.get(wire::INCARNATION))
            .and_then(|v| v.as_str().parse::<u64>().ok());
        let due = wire::header_i64(headers.as_ref(), wire::DUE).unwrap_or(0);
        let now = now_ms();
        let Some((queue, _)) = queue.filter(|(_, inc)| incarnation == Some(*inc)) else {
            // Its queue is gone (or was made anew): drop it, as deleting the queue would have.
            let _ = self.ack_request(reply, Bytes::from_static(b"+ACK")).await;
            return;
        };
        if due > now {
            let _ = self.ack_request(reply, nak((due - now) as u64)).await;
            return;
        }
        let mut out = headers.unwrap_or_default();
        out.insert(wire::DUE, "0");
        let subject = self.names.subject(&queue);
        let published = self
            .publish_all(
                "moving a delayed message",
                vec![(subject, out, msg.payload.clone())],
            )
            .await;
        if published.into_iter().all(|r| r.is_ok()) {
            if self
                .ack_request(reply, Bytes::from_static(b"+ACK"))
                .await
                .is_ok()
            {
                let mut state = self.lock();
                if let Some(q) = state.queues.get_mut(&queue) {
                    q.counts.delayed = q.counts.delayed.saturating_sub(1);
                    q.counts.visible += 1;
                }
            }
            self.wake(&queue);
        } else {
            let _ = self.ack_request(reply, nak(1_000)).await;
        }
    }
}
