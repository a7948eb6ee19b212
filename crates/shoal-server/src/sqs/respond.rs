//! The SQS API's answers, in SQS's JSON protocol: a reply is 200 with its JSON; an error
//! is SQS's status with `{"__type": "com.amazonaws.sqs#<Error>", "message": ...}` and the
//! `x-amzn-query-error: <code>;Sender` header, from which the SDKs take the error code
//! SQS's query protocol used (`AWS.SimpleQueueService.NonExistentQueue`, ...) and match
//! their modelled exceptions. The only place this API chooses status codes and codes.
//! The queue store's own trouble is logged here in full and answered without detail.

use hyper::{Response, StatusCode};
use shoal_api::sqs::{BatchResult, BatchResultErrorEntry, CONTENT_TYPE, QUERY_ERROR_HEADER};
use shoal_api::{headers, ErrorBody};

use super::{Error, Failed, Reply};
use crate::auth::AuthError;
use crate::http::{self, Body};
use crate::sigv4::SigError;

/// How SQS answers one error.
struct Shape {
    status: StatusCode,
    /// The error's shape name in SQS's model (`__type` after the namespace).
    name: &'static str,
    /// The query-protocol code the SDKs report.
    code: &'static str,
}

fn shape(error: &Error) -> Shape {
    let (status, name, code) = match error {
        Error::Auth(AuthError::Missing) => (StatusCode::FORBIDDEN, "AccessDenied", "AccessDenied"),
        Error::Auth(AuthError::Signature(SigError::Incomplete(_))) => (
            StatusCode::FORBIDDEN,
            "IncompleteSignature",
            "IncompleteSignature",
        ),
        Error::Auth(AuthError::Signature(SigError::UnknownKey)) => (
            StatusCode::FORBIDDEN,
            "InvalidClientTokenId",
            "InvalidClientTokenId",
        ),
        Error::Auth(AuthError::Signature(
            SigError::Expired { .. }
            | SigError::NotYetCurrent { .. }
            | SigError::PresignExpired { .. },
        )) => (
            StatusCode::FORBIDDEN,
            "InvalidSignatureException",
            "InvalidSignatureException",
        ),
        Error::Auth(AuthError::Signature(_)) => (
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "SignatureDoesNotMatch",
        ),
        Error::InvalidAction(_) => (StatusCode::BAD_REQUEST, "InvalidAction", "InvalidAction"),
        Error::UnsupportedOperation(_) => (
            StatusCode::BAD_REQUEST,
            "UnsupportedOperation",
            "AWS.SimpleQueueService.UnsupportedOperation",
        ),
        Error::MissingParameter(_) => (
            StatusCode::BAD_REQUEST,
            "MissingParameter",
            "MissingParameter",
        ),
        Error::InvalidParameterValue(_) | Error::RequestTooLarge | Error::BrokenBody => (
            StatusCode::BAD_REQUEST,
            "InvalidParameterValue",
            "InvalidParameterValue",
        ),
        Error::InvalidAttributeName(_) => (
            StatusCode::BAD_REQUEST,
            "InvalidAttributeName",
            "InvalidAttributeName",
        ),
        Error::InvalidAttributeValue(_) => (
            StatusCode::BAD_REQUEST,
            "InvalidAttributeValue",
            "InvalidAttributeValue",
        ),
        Error::InvalidMessageContents(_) => (
            StatusCode::BAD_REQUEST,
            "InvalidMessageContents",
            "InvalidMessageContents",
        ),
        Error::QueueDoesNotExist(_) => (
            StatusCode::BAD_REQUEST,
            "QueueDoesNotExist",
            "AWS.SimpleQueueService.NonExistentQueue",
        ),
        Error::QueueNameExists(_) => (
            StatusCode::BAD_REQUEST,
            "QueueNameExists",
            "QueueAlreadyExists",
        ),
        Error::ReceiptHandleIsInvalid(_) => (
            StatusCode::NOT_FOUND,
            "ReceiptHandleIsInvalid",
            "ReceiptHandleIsInvalid",
        ),
        Error::MessageNotInflight(_) => (
            StatusCode::BAD_REQUEST,
            "MessageNotInflight",
            "AWS.SimpleQueueService.MessageNotInflight",
        ),
        Error::EmptyBatchRequest => (
            StatusCode::BAD_REQUEST,
            "EmptyBatchRequest",
            "AWS.SimpleQueueService.EmptyBatchRequest",
        ),
        Error::TooManyEntriesInBatchRequest(_) => (
            StatusCode::BAD_REQUEST,
            "TooManyEntriesInBatchRequest",
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
        ),
        Error::BatchEntryIdsNotDistinct(_) => (
            StatusCode::BAD_REQUEST,
            "BatchEntryIdsNotDistinct",
            "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
        ),
        Error::InvalidBatchEntryId(_) => (
            StatusCode::BAD_REQUEST,
            "InvalidBatchEntryId",
            "AWS.SimpleQueueService.InvalidBatchEntryId",
        ),
        Error::BatchRequestTooLong(_) => (
            StatusCode::BAD_REQUEST,
            "BatchRequestTooLong",
            "AWS.SimpleQueueService.BatchRequestTooLong",
        ),
        // SQS's throttling answer, which the SDKs' retry policies know as throttling.
        Error::RequestThrottled(_) => (
            StatusCode::FORBIDDEN,
            "RequestThrottled",
            "RequestThrottled",
        ),
        Error::Internal(_) | Error::Auth(AuthError::Lookup(_)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure",
            "InternalFailure",
        ),
    };
    Shape { status, name, code }
}

/// What the client is told: the error's own message, except for our own trouble, whose
/// detail goes to the log.
fn message(error: &Error, request_id: &str) -> String {
    match error {
        Error::Internal(source) => {
            tracing::error!(request_id, error = %source, "SQS request failed");
            format!("internal error; the daemon's log has the details (request id {request_id})")
        }
        Error::Auth(AuthError::Lookup(source)) => {
            tracing::error!(request_id, error = %shoal_core::chain(source), "SQS request failed");
            format!("internal error; the daemon's log has the details (request id {request_id})")
        }
        _ => error.to_string(),
    }
}

pub(crate) fn reply(reply: Reply, request_id: &str) -> Response<Body> {
    let body = match reply {
        Reply::QueueUrl(result) => serde_json::to_vec(&result),
        Reply::Queues(result) => serde_json::to_vec(&result),
        Reply::Sources(result) => serde_json::to_vec(&result),
        Reply::Attributes(result) => serde_json::to_vec(&result),
        Reply::Sent(result) => serde_json::to_vec(&result),
        Reply::SentBatch { successful, failed } => serde_json::to_vec(&BatchResult {
            successful,
            failed: entries(failed, request_id),
        }),
        Reply::Received(result) => serde_json::to_vec(&result),
        Reply::Batch { successful, failed } => serde_json::to_vec(&BatchResult {
            successful,
            failed: entries(failed, request_id),
        }),
        Reply::Done => Ok(b"{}".to_vec()),
    };
    let body = body.unwrap_or_else(|e| {
        tracing::error!(request_id, error = %e, "encoding an SQS reply");
        b"{}".to_vec()
    });
    let mut response = http::response(StatusCode::OK, CONTENT_TYPE, body);
    insert(&mut response, headers::REQUEST_ID, request_id);
    response
}

/// A batch's failed entries as SQS lists them.
fn entries(failed: Failed, request_id: &str) -> Vec<BatchResultErrorEntry> {
    failed
        .into_iter()
        .map(|(id, error)| {
            let shape = shape(&error);
            BatchResultErrorEntry {
                id,
                sender_fault: shape.status.is_client_error(),
                code: shape.code.to_owned(),
                message: message(&error, request_id),
            }
        })
        .collect()
}

pub(crate) fn failure(error: &Error, request_id: &str) -> Response<Body> {
    let shape = shape(error);
    let body = ErrorBody {
        error_type: format!("com.amazonaws.sqs#{}", shape.name),
        message: message(error, request_id),
    };
    let body = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = http::response(shape.status, CONTENT_TYPE, body);
    let fault = if shape.status.is_server_error() {
        "Receiver"
    } else {
        "Sender"
    };
    insert(
        &mut response,
        QUERY_ERROR_HEADER,
        &format!("{};{fault}", shape.code),
    );
    insert(&mut response, "x-amzn-errortype", shape.name);
    insert(&mut response, headers::REQUEST_ID, request_id);
    response
}

fn insert(response: &mut Response<Body>, name: &'static str, value: &str) {
    if let Ok(value) = value.parse() {
        response.headers_mut().insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use shoal_queue::QueueError;

    async fn json(response: Response<Body>) -> serde_json::Value {
        let body = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test]
    async fn internal_errors_carry_no_detail() {
        let error = Error::from(QueueError::Storage(
            "disk I/O error at /secret/data-dir/shoal.db".into(),
        ));
        let response = failure(&error, "req-1");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers()[QUERY_ERROR_HEADER],
            "InternalFailure;Receiver"
        );
        let body = json(response).await;
        let message = body["message"].as_str().unwrap();
        assert!(
            !message.contains("secret") && !message.contains("disk"),
            "{message}"
        );
        assert!(message.contains("req-1"), "{message}");
    }

    #[tokio::test]
    async fn a_missing_queue_is_answered_as_sqs_does() {
        let response = failure(&Error::QueueDoesNotExist("nope".into()), "req-2");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response.headers()[QUERY_ERROR_HEADER],
            "AWS.SimpleQueueService.NonExistentQueue;Sender"
        );
        assert_eq!(response.headers()["content-type"], CONTENT_TYPE);
        let body = json(response).await;
        assert_eq!(body["__type"], "com.amazonaws.sqs#QueueDoesNotExist");
    }

    #[tokio::test]
    async fn a_full_store_is_throttling() {
        let error = Error::from(QueueError::Full {
            pending_messages: 10,
            pending_bytes: 100,
        });
        let response = failure(&error, "req-3");
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            response.headers()[QUERY_ERROR_HEADER],
            "RequestThrottled;Sender"
        );
    }
}
