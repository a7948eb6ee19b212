//! The SQS API on the control listener: SQS's JSON protocol (`POST` with
//! `X-Amz-Target: AmazonSQS.<Action>`, JSON in and out), as current AWS SDKs speak it,
//! over the platform's durable queues ([`QueueBackend`]).
//!
//! The control API's shape: [`parse`] turns a request into an [`Action`] (every check SQS
//! makes on names, ranges, batch entries and message attributes happens there), [`run`]
//! performs it against the backend and yields a [`Reply`], and `respond` turns the reply
//! or an [`Error`] into SQS's answer — the only place this API chooses status codes and
//! error codes. Nothing here keeps queue state: visibility, receive counts, redrive and
//! durability are the backend's. Authentication is the control API's (the admin token,
//! the admin token or a SigV4 signature, checked by the caller before [`parse`]).

mod message;
mod parse;
mod queue_attributes;
mod respond;
mod run;
#[cfg(test)]
mod tests;

use shoal_api::sqs::{
    BatchResultEntry, GetQueueAttributesResult, ListDeadLetterSourceQueuesResult, ListQueuesResult,
    QueueUrlResult, ReceiveMessageResult, SendMessageBatchResultEntry, SendMessageResult,
};
use shoal_queue::{QueueBackend, QueueError, Redrive};

pub(crate) use parse::parse;
pub(crate) use respond::{failure, reply};
pub(crate) use run::run;

pub(crate) use shoal_api::sqs::TARGET_PREFIX;

/// The service name SigV4 signatures for this API are scoped to.
pub(crate) const SERVICE: &str = "sqs";

/// The account every queue belongs to, in queue URLs and ARNs.
const ACCOUNT: &str = "000000000000";
/// The region in ARNs (Lambda's ARNs on this control API say the same).
const REGION: &str = "local";
/// Largest request body read: SQS's 256 KiB of payload per request, three times over
/// (what JSON escaping of non-ASCII text can make of it: `\u00e9` for a 2-byte `é`),
/// plus room for names and keys.
pub(crate) const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Largest message (body plus attributes) and largest batch, SQS's limit.
const MAX_PAYLOAD_BYTES: usize = 262_144;
/// Entries in one batch request, SQS's limit.
const MAX_BATCH_ENTRIES: usize = 10;
/// Message attributes per message, SQS's limit.
const MAX_MESSAGE_ATTRIBUTES: usize = 10;
/// Longest visibility timeout, SQS's 12 hours.
const MAX_VISIBILITY_SECS: u64 = 12 * 3600;
/// Longest long poll, SQS's 20 seconds.
const MAX_WAIT_SECS: u64 = 20;
/// Longest message delay, SQS's 15 minutes.
const MAX_DELAY_SECS: u64 = 15 * 60;

/// What the SQS API needs to run an action.
pub(crate) struct Context<'a> {
    pub backend: &'a dyn QueueBackend,
    /// `http://host:port` of the control listener as the client reached it: where queue
    /// URLs point.
    pub base_url: String,
    /// Turns true when the daemon stops: long polls end early (empty) instead of holding
    /// the shutdown for up to 20 s.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

impl Context<'_> {
    fn queue_url(&self, name: &str) -> String {
        format!("{}/{ACCOUNT}/{name}", self.base_url)
    }
}

/// A queue's ARN, as `RedrivePolicy` and `QueueArn` write it.
fn queue_arn(name: &str) -> String {
    format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}")
}

/// SQS's rule for a queue name (standard queues): 1–80 of `[A-Za-z0-9_-]`. It also keeps
/// the platform's internal queues (named with `:`) out of this API's reach.
fn is_queue_name(name: &str) -> bool {
    (1..=80).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A batch's entries by id, each checked on its own: one that failed its checks is
/// answered in `Failed` while the others run.
pub(crate) type Entries<T> = Vec<(String, Result<T, Error>)>;
/// A batch's failed entries by id.
pub(crate) type Failed = Vec<(String, Error)>;

/// One SQS request, checked.
#[derive(Debug)]
pub(crate) enum Action {
    CreateQueue {
        name: String,
        settings: Vec<queue_attributes::Setting>,
    },
    GetQueueUrl {
        name: String,
    },
    ListQueues {
        prefix: String,
        page: Page,
    },
    ListDeadLetterSourceQueues {
        queue: String,
        page: Page,
    },
    DeleteQueue {
        queue: String,
    },
    PurgeQueue {
        queue: String,
    },
    GetQueueAttributes {
        queue: String,
        names: queue_attributes::Selection,
    },
    SetQueueAttributes {
        queue: String,
        settings: Vec<queue_attributes::Setting>,
    },
    SendMessage {
        queue: String,
        message: message::Outgoing,
    },
    SendMessageBatch {
        queue: String,
        entries: Entries<message::Outgoing>,
    },
    ReceiveMessage(Receive),
    DeleteMessage {
        queue: String,
        receipt: String,
    },
    DeleteMessageBatch {
        queue: String,
        entries: Entries<String>,
    },
    ChangeMessageVisibility {
        queue: String,
        receipt: String,
        timeout_ms: u64,
    },
    ChangeMessageVisibilityBatch {
        queue: String,
        entries: Entries<(String, u64)>,
    },
}

/// A page of a listing: `MaxResults` and `NextToken`.
#[derive(Debug, Default)]
pub(crate) struct Page {
    /// `None`: up to 1,000 and no token, as SQS does without `MaxResults`.
    max_results: Option<usize>,
    /// List only names after this one.
    after: Option<String>,
}

/// A `ReceiveMessage`, checked.
#[derive(Debug)]
pub(crate) struct Receive {
    queue: String,
    max: usize,
    visibility_ms: Option<u64>,
    /// `None`: the queue's `ReceiveMessageWaitTimeSeconds`.
    wait_ms: Option<u64>,
    system: message::SystemAttributes,
    attributes: message::AttributeFilter,
}

/// What an action produced.
#[derive(Debug)]
pub(crate) enum Reply {
    QueueUrl(QueueUrlResult),
    Queues(ListQueuesResult),
    Sources(ListDeadLetterSourceQueuesResult),
    Attributes(GetQueueAttributesResult),
    Sent(SendMessageResult),
    SentBatch {
        successful: Vec<SendMessageBatchResultEntry>,
        failed: Failed,
    },
    Received(ReceiveMessageResult),
    Batch {
        successful: Vec<BatchResultEntry>,
        failed: Failed,
    },
    /// An action with no output (`{}`).
    Done,
}

/// Why an SQS request was refused, named after SQS's own errors (`respond` maps each to
/// SQS's type, query code and status).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The token or signature was refused (`respond` picks SQS's code per reason).
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("{0:?} is not an SQS action")]
    InvalidAction(String),
    #[error("{0}")]
    UnsupportedOperation(String),
    #[error("The request must contain the parameter {0}.")]
    MissingParameter(&'static str),
    #[error("{0}")]
    InvalidParameterValue(String),
    #[error("{0}")]
    InvalidAttributeName(String),
    #[error("{0}")]
    InvalidAttributeValue(String),
    #[error("{0}")]
    InvalidMessageContents(String),
    #[error("The specified queue does not exist: {0}")]
    QueueDoesNotExist(String),
    #[error("A queue named {0} already exists with different attributes.")]
    QueueNameExists(String),
    #[error("The receipt handle {0:?} is not valid.")]
    ReceiptHandleIsInvalid(String),
    #[error("The message of receipt handle {0:?} is not in flight.")]
    MessageNotInflight(String),
    #[error("There should be at least one entry in the request.")]
    EmptyBatchRequest,
    #[error("Maximum number of entries per request are {MAX_BATCH_ENTRIES}. You have sent {0}.")]
    TooManyEntriesInBatchRequest(usize),
    #[error("Id {0} repeated.")]
    BatchEntryIdsNotDistinct(String),
    #[error("A batch entry id can only contain alphanumeric characters, hyphens and underscores, and be 1 to 80 long: {0:?}")]
    InvalidBatchEntryId(String),
    #[error(
        "Batch requests cannot be longer than {MAX_PAYLOAD_BYTES} bytes. You have sent {0} bytes."
    )]
    BatchRequestTooLong(usize),
    #[error("The request body exceeds {MAX_REQUEST_BYTES} bytes.")]
    RequestTooLarge,
    #[error("The request body could not be read (the connection broke).")]
    BrokenBody,
    #[error("{0}")]
    RequestThrottled(String),
    #[error("the queue store failed")]
    Internal(#[source] QueueError),
}

impl From<QueueError> for Error {
    fn from(error: QueueError) -> Error {
        match error {
            QueueError::NoSuchQueue(name) => Error::QueueDoesNotExist(name),
            QueueError::QueueExists(name) => Error::QueueNameExists(name),
            QueueError::InvalidName { name, why } => Error::InvalidParameterValue(format!(
                "Invalid queue name {name:?}: {why}. Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length."
            )),
            QueueError::InvalidAttribute { name, why } => {
                Error::InvalidAttributeValue(format!("Invalid value for the parameter {name}: {why}"))
            }
            QueueError::MessageTooLarge { max, .. } => Error::InvalidParameterValue(format!(
                "One or more parameters are invalid. Reason: Message must be shorter than {max} bytes."
            )),
            QueueError::InvalidReceipt(receipt) => Error::ReceiptHandleIsInvalid(receipt),
            QueueError::NotInFlight(receipt) => Error::MessageNotInflight(receipt),
            error @ QueueError::Full { .. } => Error::RequestThrottled(format!(
                "Request is throttled: {error}; retry after consumers have caught up."
            )),
            error @ QueueError::Storage(_) => Error::Internal(error),
        }
    }
}

/// A redrive policy as `RedrivePolicy` writes it (a JSON string).
fn redrive_policy(redrive: &Redrive) -> String {
    serde_json::json!({
        "deadLetterTargetArn": queue_arn(&redrive.dead_letter),
        "maxReceiveCount": redrive.max_receive_count,
    })
    .to_string()
}
