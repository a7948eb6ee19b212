//! SQS requests into [`Action`]s: the JSON body decoded into the action's wire type, then
//! every check SQS makes before it touches a queue — required parameters, ranges, queue
//! names (from a `QueueUrl`'s last path segment), batch sizes and entry ids, message
//! bodies and attributes. A batch entry that fails its own checks stays in the action as
//! that entry's error (SQS answers it in `Failed`, the other entries still run).

use std::collections::HashSet;

use base64::Engine;
use serde::de::DeserializeOwned;
use shoal_api::sqs::{
    CreateQueue, GetQueueAttributes, GetQueueUrl, ListQueues, MessageBatch, MessageBatchEntry,
    MessageRequest, QueueRequest, ReceiveMessage, SendMessage, SendMessageBatch,
    SetQueueAttributes,
};

use super::message::{self, AttributeFilter, SystemAttributes};
use super::queue_attributes::{self, Selection};
use super::{
    is_queue_name, Action, Error, Page, Receive, MAX_BATCH_ENTRIES, MAX_PAYLOAD_BYTES,
    MAX_VISIBILITY_SECS, MAX_WAIT_SECS,
};

/// SQS actions Shoal does not implement: answered `UnsupportedOperation` rather than as
/// unknown actions, so the caller learns the difference.
const NOT_IMPLEMENTED: &[&str] = &[
    "AddPermission",
    "RemovePermission",
    "TagQueue",
    "UntagQueue",
    "ListQueueTags",
    "StartMessageMoveTask",
    "CancelMessageMoveTask",
    "ListMessageMoveTasks",
];

/// Parse the body of the SQS action `operation` (the `X-Amz-Target` after `AmazonSQS.`).
pub(crate) fn parse(operation: &str, body: &[u8]) -> Result<Action, Error> {
    Ok(match operation {
        "CreateQueue" => {
            let request: CreateQueue = decode(operation, body)?;
            let name = request
                .queue_name
                .ok_or(Error::MissingParameter("QueueName"))?;
            if !is_queue_name(&name) {
                return Err(Error::InvalidParameterValue(format!(
                    "Invalid queue name {name:?}: can only include alphanumeric characters, hyphens, or underscores, 1 to 80 in length (Shoal has no FIFO queues)."
                )));
            }
            if request.tags.is_some_and(|t| !t.is_empty()) {
                return Err(Error::UnsupportedOperation(
                    "Shoal does not keep queue tags; create the queue without them.".into(),
                ));
            }
            Action::CreateQueue {
                name,
                settings: queue_attributes::settings(request.attributes.unwrap_or_default())?,
            }
        }
        "GetQueueUrl" => {
            let request: GetQueueUrl = decode(operation, body)?;
            let name = request
                .queue_name
                .ok_or(Error::MissingParameter("QueueName"))?;
            if !is_queue_name(&name) {
                return Err(Error::QueueDoesNotExist(name));
            }
            Action::GetQueueUrl { name }
        }
        "ListQueues" => {
            let request: ListQueues = decode(operation, body)?;
            Action::ListQueues {
                prefix: request.queue_name_prefix.unwrap_or_default(),
                page: page(request.max_results, request.next_token)?,
            }
        }
        "ListDeadLetterSourceQueues" => {
            let request: ListQueues = decode(operation, body)?;
            Action::ListDeadLetterSourceQueues {
                queue: queue(request.queue_url)?,
                page: page(request.max_results, request.next_token)?,
            }
        }
        "DeleteQueue" => Action::DeleteQueue {
            queue: queue(decode::<QueueRequest>(operation, body)?.queue_url)?,
        },
        "PurgeQueue" => Action::PurgeQueue {
            queue: queue(decode::<QueueRequest>(operation, body)?.queue_url)?,
        },
        "GetQueueAttributes" => {
            let request: GetQueueAttributes = decode(operation, body)?;
            Action::GetQueueAttributes {
                queue: queue(request.queue_url)?,
                names: Selection::new(request.attribute_names.unwrap_or_default())?,
            }
        }
        "SetQueueAttributes" => {
            let request: SetQueueAttributes = decode(operation, body)?;
            let queue = queue(request.queue_url)?;
            let attributes = request
                .attributes
                .ok_or(Error::MissingParameter("Attributes"))?;
            Action::SetQueueAttributes {
                queue,
                settings: queue_attributes::settings(attributes)?,
            }
        }
        "SendMessage" => {
            let request: SendMessage = decode(operation, body)?;
            Action::SendMessage {
                queue: queue(request.queue_url)?,
                message: message::outgoing(request.message)?,
            }
        }
        "SendMessageBatch" => {
            let request: SendMessageBatch = decode(operation, body)?;
            let queue = queue(request.queue_url)?;
            let entries = batch(request.entries, |e| e.id.as_deref())?;
            let entries: Vec<_> = entries
                .into_iter()
                .map(|e| (e.id.unwrap_or_default(), message::outgoing(e.message)))
                .collect();
            let total: usize = entries
                .iter()
                .filter_map(|(_, e)| e.as_ref().ok())
                .map(|m| m.size)
                .sum();
            if total > MAX_PAYLOAD_BYTES {
                return Err(Error::BatchRequestTooLong(total));
            }
            Action::SendMessageBatch { queue, entries }
        }
        "ReceiveMessage" => Action::ReceiveMessage(receive(decode(operation, body)?)?),
        "DeleteMessage" => {
            let request: MessageRequest = decode(operation, body)?;
            Action::DeleteMessage {
                queue: queue(request.queue_url)?,
                receipt: receipt(request.receipt_handle)?,
            }
        }
        "DeleteMessageBatch" => {
            let request: MessageBatch = decode(operation, body)?;
            let queue = queue(request.queue_url)?;
            let entries = batch(request.entries, |e| e.id.as_deref())?
                .into_iter()
                .map(|e| (e.id.unwrap_or_default(), receipt(e.receipt_handle)))
                .collect();
            Action::DeleteMessageBatch { queue, entries }
        }
        "ChangeMessageVisibility" => {
            let request: MessageRequest = decode(operation, body)?;
            Action::ChangeMessageVisibility {
                queue: queue(request.queue_url)?,
                receipt: receipt(request.receipt_handle)?,
                timeout_ms: visibility(request.visibility_timeout)?,
            }
        }
        "ChangeMessageVisibilityBatch" => {
            let request: MessageBatch = decode(operation, body)?;
            let queue = queue(request.queue_url)?;
            let entries = batch(request.entries, |e| e.id.as_deref())?
                .into_iter()
                .map(|e: MessageBatchEntry| {
                    let change = receipt(e.receipt_handle)
                        .and_then(|r| Ok((r, visibility(e.visibility_timeout)?)));
                    (e.id.unwrap_or_default(), change)
                })
                .collect();
            Action::ChangeMessageVisibilityBatch { queue, entries }
        }
        _ if NOT_IMPLEMENTED.contains(&operation) => {
            return Err(Error::UnsupportedOperation(format!(
                "Shoal does not implement the SQS action {operation}."
            )))
        }
        _ => return Err(Error::InvalidAction(operation.to_owned())),
    })
}

/// The body as `T`; an empty body is an empty request (its required parameters are then
/// reported missing, by name).
fn decode<T: DeserializeOwned + Default>(operation: &str, body: &[u8]) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        Error::InvalidParameterValue(format!(
            "The {operation} request is not the JSON SQS expects: {e}."
        ))
    })
}

/// The queue a `QueueUrl` names: its last path segment. A segment that is no queue
/// name (an internal queue's `:`, a FIFO `.fifo`) names no queue here.
fn queue(url: Option<String>) -> Result<String, Error> {
    let url = url
        .filter(|u| !u.is_empty())
        .ok_or(Error::MissingParameter("QueueUrl"))?;
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let name = path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    if is_queue_name(name) {
        Ok(name.to_owned())
    } else {
        Err(Error::QueueDoesNotExist(url))
    }
}

fn receipt(handle: Option<String>) -> Result<String, Error> {
    handle
        .filter(|h| !h.is_empty())
        .ok_or(Error::MissingParameter("ReceiptHandle"))
}

fn in_range(name: &str, value: i64, max: u64) -> Result<u64, Error> {
    u64::try_from(value)
        .ok()
        .filter(|v| *v <= max)
        .ok_or_else(|| {
            Error::InvalidParameterValue(format!(
                "Value {value} for parameter {name} is invalid. Reason: Must be between 0 and {max}."
            ))
        })
}

fn visibility(seconds: Option<i64>) -> Result<u64, Error> {
    let seconds = seconds.ok_or(Error::MissingParameter("VisibilityTimeout"))?;
    Ok(in_range("VisibilityTimeout", seconds, MAX_VISIBILITY_SECS)? * 1000)
}

/// Check a batch's size and entry ids (`[A-Za-z0-9_-]{1,80}`, distinct): failing any is
/// the whole request's error, as in SQS.
fn batch<E>(entries: Option<Vec<E>>, id: impl Fn(&E) -> Option<&str>) -> Result<Vec<E>, Error> {
    let entries = entries.unwrap_or_default();
    if entries.is_empty() {
        return Err(Error::EmptyBatchRequest);
    }
    if entries.len() > MAX_BATCH_ENTRIES {
        return Err(Error::TooManyEntriesInBatchRequest(entries.len()));
    }
    let mut seen = HashSet::new();
    for entry in &entries {
        let id = id(entry).unwrap_or_default();
        let valid = (1..=80).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(Error::InvalidBatchEntryId(id.to_owned()));
        }
        if !seen.insert(id) {
            return Err(Error::BatchEntryIdsNotDistinct(id.to_owned()));
        }
    }
    Ok(entries)
}

/// `MaxResults` (1–1000) and `NextToken` (the last name of the previous page, base64).
fn page(max_results: Option<i64>, next_token: Option<String>) -> Result<Page, Error> {
    let max_results = match max_results {
        None => None,
        Some(n) if (1..=1000).contains(&n) => Some(n as usize),
        Some(n) => {
            return Err(Error::InvalidParameterValue(format!(
                "Value {n} for parameter MaxResults is invalid. Reason: Must be between 1 and 1000."
            )))
        }
    };
    let after = match next_token.filter(|t| !t.is_empty()) {
        None => None,
        Some(token) => Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&token)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .filter(|name| is_queue_name(name))
                .ok_or_else(|| {
                    Error::InvalidParameterValue(format!("Invalid NextToken {token:?}."))
                })?,
        ),
    };
    Ok(Page { max_results, after })
}

/// The token that continues a listing after `name`.
pub(super) fn next_token(name: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(name)
}

fn receive(request: ReceiveMessage) -> Result<Receive, Error> {
    let queue = queue(request.queue_url)?;
    let max = match request.max_number_of_messages {
        None => 1,
        Some(n) if (1..=MAX_BATCH_ENTRIES as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(Error::InvalidParameterValue(format!(
                "Value {n} for parameter MaxNumberOfMessages is invalid. Reason: Must be between 1 and {MAX_BATCH_ENTRIES}, if provided."
            )))
        }
    };
    let visibility_ms = request
        .visibility_timeout
        .map(|s| in_range("VisibilityTimeout", s, MAX_VISIBILITY_SECS).map(|s| s * 1000))
        .transpose()?;
    let wait_ms = request
        .wait_time_seconds
        .map(|s| in_range("WaitTimeSeconds", s, MAX_WAIT_SECS).map(|s| s * 1000))
        .transpose()?;
    let mut system_names = request.attribute_names.unwrap_or_default();
    system_names.extend(request.message_system_attribute_names.unwrap_or_default());
    Ok(Receive {
        queue,
        max,
        visibility_ms,
        wait_ms,
        system: SystemAttributes::new(&system_names)?,
        attributes: AttributeFilter::new(&request.message_attribute_names.unwrap_or_default()),
    })
}
