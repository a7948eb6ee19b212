//! Checked SQS actions run against the queue backend: one backend call per action (a
//! batch is one commit), plus the long poll of `ReceiveMessage` — receive, and while
//! nothing came and the wait lasts, wait on the queue and receive again.

use std::time::Duration;

use shoal_api::sqs::{
    BatchResultEntry, GetQueueAttributesResult, ListDeadLetterSourceQueuesResult, ListQueuesResult,
    QueueUrlResult, ReceiveMessageResult, SendMessageBatchResultEntry, SendMessageResult,
};
use shoal_queue::{Holder, QueueConfig, QueueError, QueueInfo, Settle};
use tokio::time::Instant;

use super::parse::next_token;
use super::{
    message, queue_attributes, Action, Context, Entries, Error, Failed, Page, Receive, Reply,
};

/// Longest single wait of a long poll before receiving again. The backend wakes waiters
/// on sends and releases, not when a delay or a visibility timeout runs out by itself:
/// this bounds how late a long poll sees such a message.
const POLL_SLICE: Duration = Duration::from_secs(1);
/// Queues one `ListQueues` returns without `MaxResults`, SQS's figure.
const LIST_LIMIT: usize = 1000;

pub(crate) async fn run(context: &Context<'_>, action: Action) -> Result<Reply, Error> {
    let backend = context.backend;
    Ok(match action {
        Action::CreateQueue { name, settings } => {
            match backend.queue(&name) {
                Ok(info) if queue_attributes::matches(&info.config, &settings) => {}
                Ok(_) => return Err(Error::QueueNameExists(name)),
                Err(QueueError::NoSuchQueue(_)) => {
                    check_dead_letter(context, queue_attributes::dead_letter(&settings))?;
                    let mut config = QueueConfig::default();
                    queue_attributes::apply(&mut config, &settings);
                    backend.create_queue(&name, config).await?;
                }
                Err(e) => return Err(e.into()),
            }
            Reply::QueueUrl(QueueUrlResult {
                queue_url: context.queue_url(&name),
            })
        }
        Action::GetQueueUrl { name } => {
            backend.queue(&name)?;
            Reply::QueueUrl(QueueUrlResult {
                queue_url: context.queue_url(&name),
            })
        }
        Action::ListQueues { prefix, page } => {
            Reply::Queues(listing(context, backend.list(&prefix, false), page))
        }
        Action::ListDeadLetterSourceQueues { queue, page } => {
            backend.queue(&queue)?;
            let sources = backend
                .list("", false)
                .into_iter()
                .filter(|q| {
                    q.config
                        .redrive
                        .as_ref()
                        .is_some_and(|r| r.dead_letter == queue)
                })
                .collect();
            let listed = listing(context, sources, page);
            Reply::Sources(ListDeadLetterSourceQueuesResult {
                queue_urls: listed.queue_urls,
                next_token: listed.next_token,
            })
        }
        Action::DeleteQueue { queue } => {
            backend.delete_queue(&queue).await?;
            Reply::Done
        }
        Action::PurgeQueue { queue } => {
            backend.purge(&queue).await?;
            Reply::Done
        }
        Action::GetQueueAttributes { queue, names } => {
            let info = backend.queue(&queue)?;
            Reply::Attributes(GetQueueAttributesResult {
                attributes: queue_attributes::render(&info, &names),
            })
        }
        Action::SetQueueAttributes { queue, settings } => {
            let mut config = backend.queue(&queue)?.config;
            check_dead_letter(context, queue_attributes::dead_letter(&settings))?;
            queue_attributes::apply(&mut config, &settings);
            backend.set_config(&queue, config).await?;
            Reply::Done
        }
        Action::SendMessage { queue, message } => {
            let info = backend.queue(&queue)?;
            if !message.fits(info.config.max_message_bytes) {
                return Err(message::too_long(info.config.max_message_bytes));
            }
            let sent = backend
                .send(&queue, vec![message.message])
                .await?
                .pop()
                .ok_or_else(|| {
                    Error::Internal(QueueError::Storage("a send stored nothing".into()))
                })?;
            Reply::Sent(SendMessageResult {
                message_id: sent.id,
                md5_of_message_body: sent.md5_of_body,
                md5_of_message_attributes: message.md5_of_attributes,
            })
        }
        Action::SendMessageBatch { queue, entries } => {
            let info = backend.queue(&queue)?;
            let max = info.config.max_message_bytes;
            let mut failed = Vec::new();
            let mut accepted = Vec::new();
            for (id, entry) in entries {
                match entry {
                    Ok(m) if !m.fits(max) => failed.push((id, message::too_long(max))),
                    Ok(m) => accepted.push((id, m)),
                    Err(e) => failed.push((id, e)),
                }
            }
            let mut successful = Vec::new();
            if !accepted.is_empty() {
                let messages = accepted.iter().map(|(_, m)| m.message.clone()).collect();
                let sent = backend.send(&queue, messages).await?;
                for ((id, message), sent) in accepted.into_iter().zip(sent) {
                    successful.push(SendMessageBatchResultEntry {
                        id,
                        sent: SendMessageResult {
                            message_id: sent.id,
                            md5_of_message_body: sent.md5_of_body,
                            md5_of_message_attributes: message.md5_of_attributes,
                        },
                    });
                }
            }
            Reply::SentBatch { successful, failed }
        }
        Action::ReceiveMessage(receive) => Reply::Received(long_poll(context, receive).await?),
        Action::DeleteMessage { queue, receipt } => {
            let mut results = backend
                .settle(&queue, vec![(receipt, Settle::Delete)])
                .await?;
            results.pop().unwrap_or(Ok(()))?;
            Reply::Done
        }
        Action::DeleteMessageBatch { queue, entries } => {
            let (valid, mut failed) = split(entries);
            let settles = valid
                .iter()
                .map(|(_, receipt)| (receipt.clone(), Settle::Delete))
                .collect();
            let results = if valid.is_empty() {
                Vec::new()
            } else {
                backend.settle(&queue, settles).await?
            };
            let successful = outcomes(valid, results, &mut failed);
            Reply::Batch { successful, failed }
        }
        Action::ChangeMessageVisibility {
            queue,
            receipt,
            timeout_ms,
        } => {
            let mut results = backend
                .change_visibility(&queue, vec![(receipt, timeout_ms)])
                .await?;
            results.pop().unwrap_or(Ok(()))?;
            Reply::Done
        }
        Action::ChangeMessageVisibilityBatch { queue, entries } => {
            let (valid, mut failed) = split(entries);
            let changes = valid.iter().map(|(_, change)| change.clone()).collect();
            let results = if valid.is_empty() {
                Vec::new()
            } else {
                backend.change_visibility(&queue, changes).await?
            };
            let successful = outcomes(valid, results, &mut failed);
            Reply::Batch { successful, failed }
        }
    })
}

/// A redrive target must exist: SQS refuses the policy otherwise.
fn check_dead_letter(context: &Context<'_>, dead_letter: Option<&str>) -> Result<(), Error> {
    let Some(name) = dead_letter else {
        return Ok(());
    };
    match context.backend.queue(name) {
        Ok(_) => Ok(()),
        Err(QueueError::NoSuchQueue(_)) => Err(Error::InvalidParameterValue(format!(
            "Value for parameter RedrivePolicy is invalid. Reason: Dead letter target {name} does not exist."
        ))),
        Err(e) => Err(e.into()),
    }
}

/// One page of queue URLs from `queues` (sorted by name).
fn listing(context: &Context<'_>, queues: Vec<QueueInfo>, page: Page) -> ListQueuesResult {
    let mut names: Vec<String> = queues
        .into_iter()
        .map(|q| q.name)
        .filter(|name| page.after.as_ref().is_none_or(|after| name > after))
        .collect();
    let limit = page.max_results.unwrap_or(LIST_LIMIT);
    let more = names.len() > limit;
    names.truncate(limit);
    ListQueuesResult {
        next_token: (more && page.max_results.is_some())
            .then(|| names.last().map(|n| next_token(n)))
            .flatten(),
        queue_urls: names.iter().map(|n| context.queue_url(n)).collect(),
    }
}

/// A batch's entries that passed their own checks, and the failures of the others.
fn split<T>(entries: Entries<T>) -> (Vec<(String, T)>, Failed) {
    let mut valid = Vec::new();
    let mut failed = Vec::new();
    for (id, entry) in entries {
        match entry {
            Ok(value) => valid.push((id, value)),
            Err(e) => failed.push((id, e)),
        }
    }
    (valid, failed)
}

/// Pair each entry with the backend's result for it.
fn outcomes<T>(
    valid: Vec<(String, T)>,
    results: Vec<shoal_queue::Result<()>>,
    failed: &mut Failed,
) -> Vec<BatchResultEntry> {
    let mut successful = Vec::new();
    let mut results = results.into_iter();
    for (id, _) in valid {
        match results.next().unwrap_or(Ok(())) {
            Ok(()) => successful.push(BatchResultEntry { id }),
            Err(e) => failed.push((id, e.into())),
        }
    }
    successful
}

/// Receive; while nothing came and the wait lasts, wait for the queue and receive again.
async fn long_poll(context: &Context<'_>, receive: Receive) -> Result<ReceiveMessageResult, Error> {
    let backend = context.backend;
    let wait_ms = match receive.wait_ms {
        Some(ms) => ms,
        None => backend.queue(&receive.queue)?.config.receive_wait_ms,
    };
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let mut stopping = context.stopping.clone();
    let mut stopped = false;
    let received = loop {
        let got = backend
            .receive(
                &receive.queue,
                receive.max,
                receive.visibility_ms,
                Holder::External,
            )
            .await?;
        let left = deadline.saturating_duration_since(Instant::now());
        if !got.messages.is_empty() || left.is_zero() || stopped {
            break got;
        }
        let slice = left.min(POLL_SLICE);
        tokio::select! {
            _ = backend.wait(&receive.queue, slice.as_millis() as u64) => {}
            // True, or the daemon is gone: either way the poll ends.
            _ = stopping.wait_for(|s| *s) => stopped = true,
        }
    };
    Ok(ReceiveMessageResult {
        messages: received
            .messages
            .into_iter()
            .map(|m| message::received(m, &receive.system, &receive.attributes))
            .collect(),
    })
}
