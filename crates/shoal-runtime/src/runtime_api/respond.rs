//! The Runtime API's answers, as Lambda's Runtime API gives them: an invocation with its
//! `Lambda-Runtime-*` headers, `202 {"status":"OK"}` for a taken result, and
//! `{errorType, errorMessage}` with the documented status for each refusal. The only place
//! this listener chooses status codes.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};

use super::{Answer, Refusal};

pub(super) fn answer(result: Result<Answer, Refusal>) -> Response<Full<Bytes>> {
    match result {
        // Every answered call gets this one: a constant, not a JSON value built each time.
        Ok(Answer::Accepted) => {
            let mut response = Response::new(Full::new(Bytes::from_static(br#"{"status":"OK"}"#)));
            *response.status_mut() = StatusCode::ACCEPTED;
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, APPLICATION_JSON);
            response
        }
        Ok(Answer::Invocation { assigned, arn }) => invocation(assigned, arn),
        Err(refusal) => {
            let too_large = format!(
                "Exceeded maximum allowed payload size ({} bytes).",
                crate::MAX_RESPONSE_BYTES
            );
            let (status, error_type, message) = match refusal {
                Refusal::UnknownPath => (
                    StatusCode::NOT_FOUND,
                    "InvalidRequest",
                    "unknown Runtime API path",
                ),
                Refusal::TooLarge => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestEntityTooLarge",
                    too_large.as_str(),
                ),
                Refusal::Unreadable => (
                    StatusCode::BAD_REQUEST,
                    "InvalidRequest",
                    "the request body could not be read",
                ),
                Refusal::Stopping => (
                    StatusCode::GONE,
                    "InstanceStopping",
                    "this instance is stopping",
                ),
                Refusal::Expired => (
                    StatusCode::GONE,
                    "InvocationExpired",
                    "the invocation already timed out",
                ),
                Refusal::UnknownRequestId => (
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestID",
                    "unknown request id",
                ),
            };
            json(
                status,
                serde_json::json!({ "errorType": error_type, "errorMessage": message }),
            )
        }
    }
}

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

fn invocation(assigned: super::Assigned, arn: Option<HeaderValue>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(assigned.payload));
    let headers = response.headers_mut();
    headers.insert(hyper::header::CONTENT_TYPE, APPLICATION_JSON);
    let mut set = |name: &'static str, value: &[u8]| {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(name, value);
        }
    };
    let mut trace = Vec::with_capacity(48);
    trace.extend_from_slice(b"Root=1-00000000-");
    trace.extend(assigned.request_id.bytes().filter(|b| *b != b'-'));
    set("lambda-runtime-trace-id", &trace);
    set(
        "lambda-runtime-deadline-ms",
        assigned.deadline_ms.to_string().as_bytes(),
    );
    if let Some(arn) = arn {
        headers.insert("lambda-runtime-invoked-function-arn", arn);
    }
    let mut set = |name: &'static str, value: &[u8]| {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(name, value);
        }
    };
    set(
        "lambda-runtime-aws-request-id",
        assigned.request_id.as_bytes(),
    );
    if let Some(context) = assigned.client_context {
        set(
            "lambda-runtime-client-context",
            String::from_utf8_lossy(&context).as_bytes(),
        );
    }
    response
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, APPLICATION_JSON);
    response
}
