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

/// A call forwarded to another node that did not come back: it may have run there, so
/// it is not run again here.
pub(super) fn forward_failed(
    error: &crate::forward::ForwardError,
    request_id: &str,
) -> Response<Body> {
    tracing::warn!(request_id, error = %shoal_core::chain(error), "forwarded call failed");
    let mut response = message(StatusCode::BAD_GATEWAY, "Bad Gateway");
    if let Ok(value) = request_id.parse() {
        response.headers_mut().insert("apigw-requestid", value);
    }
    response
}

/// The answer to a routed call, tagged with its request id.
pub(super) fn invoked(
    result: Result<shoal_events::HttpResponse, Error>,
    request_id: &str,
) -> Response<Body> {
    let mut response = match result {
        Ok(mapped) => function_response(mapped, request_id),
        Err(error) => error_response(&error, request_id),
    };
    if let Ok(value) = request_id.parse() {
        // Cannot fail: a function's headers fill the map to at most MAX_HEADERS.
        let _ = response.headers_mut().try_insert("apigw-requestid", value);
    }
    response
}

/// The function's response. Its headers cannot frame the message (the mapping drops
/// those, and so does this, as the last step before bytes are written): hyper alone sets
/// the body's length, so a `content-length: 0` followed by a body cannot split the answer
/// in two.
fn function_response(mapped: shoal_events::HttpResponse, request_id: &str) -> Response<Body> {
    let status = match StatusCode::from_u16(mapped.status) {
        Ok(status) if !status.is_informational() => status,
        _ => {
            tracing::error!(
                request_id,
                status = mapped.status,
                "a mapped response with a status no function may send"
            );
            return message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
        }
    };
    let mut response = Response::new(http_body_util::Full::new(Bytes::from(mapped.body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    // The mapping refuses more; a map this size cannot reach its capacity (where `insert`
    // and `append` panic).
    for (name, value) in mapped.headers.into_iter().take(shoal_events::MAX_HEADERS) {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) else {
            continue;
        };
        // Nor can it speak for the cluster: a forwarding marker from a function (say, "not
        // run") would make the node that forwarded the call run it again.
        if shoal_events::is_framing_header(name.as_str())
            || crate::forward::is_marker(name.as_str())
        {
            continue;
        }
        let _ = headers.try_append(name, value);
    }
    response
}

fn error_response(error: &Error, request_id: &str) -> Response<Body> {
    let (status, text) = match error {
        Error::FunctionNotFound(_) => (StatusCode::NOT_FOUND, "Not Found"),
        Error::FunctionTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout"),
        // Lambda reports a failed start or a crashed runtime as the function's error,
        // and API Gateway answers a function error with 500.
        Error::InstanceFailed(_)
        | Error::InitFailed(_)
        | Error::HandlerThrew { .. }
        | Error::BadProxyResult(_) => (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
        Error::Overloaded { .. } => (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests"),
        Error::ShuttingDown | Error::Cluster(shoal_core::ClusterError::CutOff(_)) => {
            (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
        }
        Error::EventStoreFull { .. } => (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests"),
        // Nothing a gateway call sends can cause these; if one appears it is our bug.
        Error::InvalidPayload(_)
        | Error::InvalidInvocationType(_)
        | Error::Archive(_)
        | Error::MissingManifest
        | Error::Manifest(_)
        | Error::Unsupported { .. }
        | Error::RouteConflict(_)
        | Error::QualifierNotFound { .. }
        | Error::QualifiedEvent { .. }
        | Error::InvalidAlias(_)
        | Error::InvalidKeyName(_)
        | Error::KeyExists(_)
        | Error::KeyNotFound(_)
        | Error::Store(_)
        | Error::Events { .. }
        | Error::Queue(_)
        | Error::Io { .. }
        | Error::EmptyStore { .. }
        | Error::Launcher(_)
        | Error::Cluster(_)
        | Error::Task(_) => {
            tracing::error!(request_id, error = %shoal_core::chain(error), "gateway call failed inside the platform");
            (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
        }
    };
    let mut response = message(status, text);
    if matches!(
        error,
        Error::ShuttingDown | Error::Cluster(shoal_core::ClusterError::CutOff(_))
    ) {
        // Refused before it ran: a node that forwarded it may run it elsewhere.
        response
            .headers_mut()
            .insert(crate::forward::NOT_RUN, HeaderValue::from_static("1"));
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        // The pool's estimate of when a slot frees, where it made one; whole seconds.
        let secs = match error {
            Error::Overloaded { retry_after, .. } => retry_after.as_secs_f64().ceil() as u64,
            _ => RETRY_AFTER_SECS,
        };
        response
            .headers_mut()
            .insert("retry-after", secs.max(RETRY_AFTER_SECS).into());
    }
    response
}

fn message(status: StatusCode, text: &str) -> Response<Body> {
    http::json(status, &serde_json::json!({ "message": text }))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;

    use super::*;
    use http_body_util::BodyExt;
    use shoal_events::HttpResponse;

    /// A response as written on a connection: status line, headers, body.
    #[derive(Debug)]
    struct Written {
        status_line: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    /// Serve `make()` for every request of `requests` (raw HTTP/1.1, pipelined, the last
    /// one asking to close) over an in-memory connection, and split what the server wrote
    /// into responses by their own framing, as a client or a proxy in front would.
    async fn on_the_wire(
        make: impl Fn() -> Response<Body> + Send + Sync + 'static,
        requests: &[u8],
    ) -> Vec<Written> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let make = Arc::new(make);
        let service = hyper::service::service_fn(move |_| {
            let make = make.clone();
            async move { Ok::<_, Infallible>(make()) }
        });
        let serving = tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(server), service),
        );
        client.write_all(requests).await.unwrap();
        let mut wire = Vec::new();
        client.read_to_end(&mut wire).await.unwrap();
        serving.await.unwrap().unwrap();
        split_responses(&wire)
    }

    fn split_responses(mut wire: &[u8]) -> Vec<Written> {
        let mut responses = Vec::new();
        while !wire.is_empty() {
            let end = wire
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap_or_else(|| {
                    panic!("no header block in {:?}", String::from_utf8_lossy(wire))
                });
            let head = std::str::from_utf8(&wire[..end]).unwrap();
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap().to_owned();
            assert!(
                status_line.starts_with("HTTP/1.1 "),
                "not a status line: {status_line:?}"
            );
            let headers: Vec<(String, String)> = lines
                .map(|l| {
                    let (n, v) = l.split_once(':').unwrap();
                    (n.to_ascii_lowercase(), v.trim().to_owned())
                })
                .collect();
            let lengths: Vec<usize> = headers
                .iter()
                .filter(|(n, _)| n == "content-length")
                .map(|(_, v)| v.parse().unwrap())
                .collect();
            assert!(lengths.len() <= 1, "several content-lengths: {headers:?}");
            assert!(
                headers.iter().all(|(n, _)| n != "transfer-encoding"),
                "{headers:?}"
            );
            let len = lengths.first().copied().unwrap_or(0);
            wire = &wire[end + 4..];
            responses.push(Written {
                status_line,
                headers,
                body: wire[..len].to_vec(),
            });
            wire = &wire[len..];
        }
        responses
    }

    const TWO_REQUESTS: &[u8] =
        b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

    /// A body that reads as a second response to whoever trusts `content-length: 0`.
    const SMUGGLED: &str = "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled";

    #[tokio::test]
    async fn a_mapped_result_cannot_split_the_response() {
        let result = serde_json::json!({
            "statusCode": 200,
            "headers": {
                "content-length": "0",
                "transfer-encoding": "chunked",
                "connection": "close",
                "x-kept": "yes",
            },
            "body": SMUGGLED,
        });
        let mapped = shoal_events::try_map_v2_response(result.to_string().as_bytes()).unwrap();
        let written = on_the_wire(move || invoked(Ok(mapped.clone()), "req-1"), TWO_REQUESTS).await;
        assert_eq!(written.len(), 2, "one response per request: {written:#?}");
        for response in &written {
            assert_eq!(response.status_line, "HTTP/1.1 200 OK");
            assert_eq!(response.body, SMUGGLED.as_bytes());
            let length = response.headers.iter().find(|(n, _)| n == "content-length");
            let expected = SMUGGLED.len().to_string();
            assert_eq!(length.map(|(_, v)| v.as_str()), Some(expected.as_str()));
            assert!(response.headers.contains(&("x-kept".into(), "yes".into())));
        }
    }

    #[tokio::test]
    async fn framing_headers_are_dropped_even_when_the_mapping_let_them_through() {
        let raw = HttpResponse {
            status: 200,
            headers: vec![
                ("Content-Length".into(), "0".into()),
                ("transfer-encoding".into(), "chunked".into()),
                ("connection".into(), "close".into()),
                ("upgrade".into(), "h2c".into()),
            ],
            body: SMUGGLED.as_bytes().to_vec(),
        };
        let written = on_the_wire(move || invoked(Ok(raw.clone()), "req-1"), TWO_REQUESTS).await;
        assert_eq!(written.len(), 2, "{written:#?}");
        assert!(written.iter().all(|r| r.body == SMUGGLED.as_bytes()));
        assert!(written
            .iter()
            .all(|r| r.headers.iter().all(|(n, _)| n != "upgrade")));
        // hyper closes after the second request, which asked for it; not after the first.
        assert!(written[0].headers.iter().all(|(n, _)| n != "connection"));
    }

    #[tokio::test]
    async fn bodies_of_statuses_without_one_do_not_desync_the_connection() {
        for status in [204, 304] {
            let raw = HttpResponse {
                status,
                headers: vec![],
                body: SMUGGLED.as_bytes().to_vec(),
            };
            let written =
                on_the_wire(move || invoked(Ok(raw.clone()), "req-1"), TWO_REQUESTS).await;
            assert_eq!(written.len(), 2, "{status}: {written:#?}");
            assert!(written.iter().all(|r| r.body.is_empty()), "{written:#?}");
        }
    }

    #[tokio::test]
    async fn an_informational_status_is_never_sent() {
        for status in [100, 101, 199, 42] {
            let raw = HttpResponse {
                status,
                headers: vec![("upgrade".into(), "websocket".into())],
                body: b"x".to_vec(),
            };
            let response = invoked(Ok(raw), "req-1");
            assert_eq!(
                response.status(),
                StatusCode::INTERNAL_SERVER_ERROR,
                "{status}"
            );
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], br#"{"message":"Internal Server Error"}"#);
        }
    }

    #[test]
    fn more_headers_than_a_header_map_holds_do_not_panic() {
        let raw = HttpResponse {
            status: 200,
            headers: (0..40_000)
                .map(|i| (format!("x-{i}"), "v".into()))
                .collect(),
            body: vec![],
        };
        let response = invoked(Ok(raw), "req-1");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers().len(), shoal_events::MAX_HEADERS + 1);
        assert_eq!(response.headers()["apigw-requestid"], "req-1");
    }

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
