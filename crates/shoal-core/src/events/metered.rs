//! The queue store as the rest of the platform sees it: every call goes to the backend,
//! and what it did is counted per queue (sent, received, deleted, dead-lettered,
//! expired) for `/metrics` and `shoal status`. Transports (the SQS API) and the core's own
//! consumers use this same wrapper, so the counts cover every path.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use shoal_queue::{
    EpochMs, Holder, NewMessage, QueueBackend, QueueConfig, QueueInfo, Receipts, Result, Sent,
    Settle,
};

type Labels = Vec<(&'static str, String)>;

/// Counters of queue traffic and of async events, shared with the metrics registry.
#[derive(Default)]
pub(crate) struct EventCounters {
    /// `{queue, event}`: sent, received, deleted, dead_lettered, expired, purged.
    pub(crate) queue: Family<Labels, Counter>,
    /// `{function, event}`: enqueued, attempted, succeeded, retried, throttled,
    /// to_destination.
    pub(crate) function: Family<Labels, Counter>,
    /// `{function, reason}`: async events given up without a destination.
    pub(crate) dropped: Family<Labels, Counter>,
}

impl EventCounters {
    pub(crate) fn queue(&self, queue: &str, event: &'static str, n: u64) {
        if n > 0 {
            self.queue
                .get_or_create(&vec![
                    ("queue", queue.to_owned()),
                    ("event", event.to_owned()),
                ])
                .inc_by(n);
        }
    }

    pub(crate) fn function(&self, function: &str, event: &'static str) {
        self.function
            .get_or_create(&vec![
                ("function", function.to_owned()),
                ("event", event.to_owned()),
            ])
            .inc();
    }

    pub(crate) fn dropped(&self, function: &str, reason: &'static str) {
        self.dropped
            .get_or_create(&vec![
                ("function", function.to_owned()),
                ("reason", reason.to_owned()),
            ])
            .inc();
    }

    /// Current value of one function counter.
    #[cfg(test)]
    pub(crate) fn function_count(&self, function: &str, event: &'static str) -> u64 {
        self.function
            .get_or_create(&vec![
                ("function", function.to_owned()),
                ("event", event.to_owned()),
            ])
            .get()
    }

    /// Every drop reason of one function with its count.
    pub(crate) fn dropped_counts(&self, function: &str) -> Vec<(String, u64)> {
        [
            "retries_exhausted",
            "event_age_exceeded",
            "no_destination",
            "function_deleted",
        ]
        .iter()
        .map(|reason| {
            let n = self
                .dropped
                .get_or_create(&vec![
                    ("function", function.to_owned()),
                    ("reason", (*reason).to_owned()),
                ])
                .get();
            ((*reason).to_owned(), n)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}

/// A [`QueueBackend`] that counts what passes through it.
pub(crate) struct Metered {
    inner: Arc<dyn QueueBackend>,
    pub(crate) counters: Arc<EventCounters>,
}

impl Metered {
    pub(crate) fn new(inner: Arc<dyn QueueBackend>, counters: Arc<EventCounters>) -> Metered {
        Metered { inner, counters }
    }
}

#[async_trait::async_trait]
impl QueueBackend for Metered {
    async fn create_queue(&self, name: &str, config: QueueConfig) -> Result<()> {
        self.inner.create_queue(name, config).await
    }

    async fn set_config(&self, name: &str, config: QueueConfig) -> Result<()> {
        self.inner.set_config(name, config).await
    }

    async fn delete_queue(&self, name: &str) -> Result<()> {
        self.inner.delete_queue(name).await
    }

    fn queue(&self, name: &str) -> Result<QueueInfo> {
        self.inner.queue(name)
    }

    fn list(&self, prefix: &str, internal: bool) -> Vec<QueueInfo> {
        self.inner.list(prefix, internal)
    }

    async fn send(&self, queue: &str, messages: Vec<NewMessage>) -> Result<Vec<Sent>> {
        let sent = self.inner.send(queue, messages).await?;
        self.counters.queue(queue, "sent", sent.len() as u64);
        Ok(sent)
    }

    async fn receive(
        &self,
        queue: &str,
        max: usize,
        visibility_ms: Option<u64>,
        holder: Holder,
    ) -> Result<Receipts> {
        let receipts = self
            .inner
            .receive(queue, max, visibility_ms, holder)
            .await?;
        self.counters
            .queue(queue, "received", receipts.messages.len() as u64);
        self.counters
            .queue(queue, "dead_lettered", receipts.dead_lettered);
        self.counters.queue(queue, "expired", receipts.expired);
        Ok(receipts)
    }

    async fn wait(&self, queue: &str, timeout_ms: u64) {
        self.inner.wait(queue, timeout_ms).await
    }

    async fn settle(&self, queue: &str, entries: Vec<(String, Settle)>) -> Result<Vec<Result<()>>> {
        let forwards: Vec<String> = entries
            .iter()
            .filter_map(|(_, s)| match s {
                Settle::Forward { queue, .. } => Some(queue.clone()),
                Settle::Delete => None,
            })
            .collect();
        let results = self.inner.settle(queue, entries).await?;
        let done = results.iter().filter(|r| r.is_ok()).count() as u64;
        self.counters.queue(queue, "deleted", done);
        for target in forwards {
            self.counters.queue(&target, "sent", 1);
        }
        Ok(results)
    }

    async fn change_visibility(
        &self,
        queue: &str,
        entries: Vec<(String, u64)>,
    ) -> Result<Vec<Result<()>>> {
        self.inner.change_visibility(queue, entries).await
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let n = self.inner.purge(queue).await?;
        self.counters.queue(queue, "purged", n);
        Ok(n)
    }

    async fn fire(
        &self,
        key: &str,
        fire_ms: EpochMs,
        queue: &str,
        message: NewMessage,
    ) -> Result<bool> {
        let fired = self.inner.fire(key, fire_ms, queue, message).await?;
        if fired {
            self.counters.queue(queue, "sent", 1);
        }
        Ok(fired)
    }

    fn last_fire(&self, key: &str) -> Option<EpochMs> {
        self.inner.last_fire(key)
    }

    async fn start_schedule(&self, key: &str, now_ms: EpochMs) -> Result<EpochMs> {
        self.inner.start_schedule(key, now_ms).await
    }

    async fn forget_schedules(&self, prefix: &str, keep: &[String]) -> Result<()> {
        self.inner.forget_schedules(prefix, keep).await
    }

    fn pending(&self) -> (u64, u64) {
        self.inner.pending()
    }
}
