//! The gateway's answers, in API Gateway's shapes: the function's own response mapped
//! from its proxy result, or `{"message": ...}` with the status API Gateway would send.
//! The only place the gateway chooses a status code. Callers never see internal details:
//! a handler's error, a crash or our own trouble all read as API Gateway's stable messages.

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use shoal_core::Error;

use crate::http::{self, Body, BodyError};

/// Seconds a throttled caller is told to wait.
const RETRY_AFTER_SECS: u64 = 1;

pub(super) fn no_route() -> Response<Body> {
    message(StatusCode::NOT_FOUND, "Not Found")
}

pub(super) fn unreadable_body(error: &BodyError) -> Response<Body> {
    match error {
        BodyError::TooLarge(_) => {
            message(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large")
        }
        BodyError::Broken => message(StatusCode::BAD_REQUEST, "Bad Request"),
    }
}

/// The answer to a routed call, tagged with its request id.
pub(super) fn invoked(
    result: Result<shoal_events::HttpResponse, Error>,
    request_id: &str,
) -> Response<Body> {
    let mut response = match result {
        Ok(mapped) => function_response(mapped),
        Err(error) => error_response(&error, request_id),
    };
    if let Ok(value) = request_id.parse() {
        response.headers_mut().insert("apigw-requestid", value);
    }
    response
}

fn function_response(mapped: shoal_events::HttpResponse) -> Response<Body> {
    let mut response = Response::new(http_body_util::Full::new(Bytes::from(mapped.body)));
    *response.status_mut() = StatusCode::from_u16(mapped.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = response.headers_mut();
    for (name, value) in mapped.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.append(name, value);
        }
    }
    response
}

fn error_response(error: &Error, request_id: &str) -> Response<Body> {
    let (status, text) = match error {
        Error::FunctionNotFound(_) => (StatusCode::NOT_FOUND, "Not Found"),
        Error::FunctionTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout"),
        Error::InstanceFailed(_) | Error::InitFailed(_) => (StatusCode::BAD_GATEWAY, "Bad Gateway"),
        Error::HandlerThrew { .. } | Error::BadProxyResult(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
        }
        Error::Overloaded { .. } => (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests"),
        Error::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
        // Nothing a gateway call sends can cause these; if one appears it is our bug.
        Error::InvalidPayload(_)
        | Error::InvalidInvocationType(_)
        | Error::Archive(_)
        | Error::MissingManifest
        | Error::Manifest(_)
        | Error::Unsupported { .. }
        | Error::RouteConflict(_)
        | Error::Store(_)
        | Error::Io { .. }
        | Error::EmptyStore { .. }
        | Error::Launcher(_)
        | Error::Task(_) => {
            tracing::error!(request_id, error = %shoal_core::chain(error), "gateway call failed inside the platform");
            (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
        }
    };
    let mut response = message(status, text);
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert("retry-after", RETRY_AFTER_SECS.into());
    }
    response
}

fn message(status: StatusCode, text: &str) -> Response<Body> {
    http::json(status, &serde_json::json!({ "message": text }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn internal_errors_carry_no_detail() {
        let error = Error::Io {
            what: "reading",
            path: "/secret/data-dir/x".into(),
            source: std::io::Error::other("disk on fire"),
        };
        let response = invoked(Err(error), "req-1");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()["apigw-requestid"], "req-1");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"message":"Internal Server Error"}"#);
    }

    #[test]
    fn overload_says_when_to_retry() {
        let error = Error::Overloaded {
            function: "f".into(),
            retry_after: std::time::Duration::from_secs(1),
        };
        let response = invoked(Err(error), "req-2");
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "1");
    }
}
