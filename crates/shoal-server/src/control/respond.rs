//! The control API's answers: admin replies as JSON, the Invoke API as Lambda answers it,
//! and every error in the shape AWS SDKs parse (`x-amzn-ErrorType` header, `__type` and
//! `message` in the body). The only place this API chooses status codes. The platform's
//! own trouble (store, files, tasks) is logged here in full and answered with a stable
//! message that carries no internal detail.

use bytes::Bytes;
use hyper::{Response, StatusCode};
use shoal_api::{headers, ErrorBody};
use shoal_core::{ArchiveError, Error, InvokeOutcome};

use super::lambda::ACCOUNT;
use super::{Failure, Reply};
use crate::auth::AuthError;
use crate::http::{self, Body};

/// Seconds a throttled caller is told to wait.
const RETRY_AFTER_SECS: u64 = 1;
/// OpenMetrics text, as Prometheus negotiates it.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Prometheus's older text format, for clients that do not ask for OpenMetrics.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(super) fn reply(reply: Reply) -> Response<Body> {
    match reply {
        Reply::Invoked {
            request_id,
            invoked,
            executed_latest,
            log,
        } => {
            let mut response = match invoked.outcome {
                InvokeOutcome::Success(body) => {
                    http::response(StatusCode::OK, "application/json", body)
                }
                InvokeOutcome::FunctionError { body, .. } => {
                    let mut response = http::response(StatusCode::OK, "application/json", body);
                    insert(&mut response, headers::FUNCTION_ERROR, "Unhandled");
                    response
                }
                InvokeOutcome::Accepted => {
                    http::response(StatusCode::ACCEPTED, "application/json", Bytes::new())
                }
                InvokeOutcome::DryRun => {
                    http::response(StatusCode::NO_CONTENT, "application/json", Bytes::new())
                }
            };
            insert(&mut response, headers::REQUEST_ID, &request_id);
            let executed = match executed_latest {
                true => "$LATEST".to_owned(),
                false => invoked.version.to_string(),
            };
            insert(&mut response, headers::EXECUTED_VERSION, &executed);
            if let Some(log) = log {
                use base64::Engine;
                let encoded = base64::engine::general_purpose::STANDARD.encode(log);
                insert(&mut response, "x-amz-log-result", &encoded);
            }
            response
        }
        Reply::Forwarded(response) => response,
        Reply::ForwardFailed(message) => {
            aws_error(StatusCode::BAD_GATEWAY, "ServiceException", &message)
        }
        Reply::KeyCreated(key) => http::json(StatusCode::CREATED, &key),
        Reply::Keys(keys) => http::json(StatusCode::OK, &keys),
        Reply::Lambda(answer) => http::json(StatusCode::OK, &answer.0),
        Reply::Alias(alias) => http::json(StatusCode::OK, &alias),
        Reply::Aliases(list) => http::json(StatusCode::OK, &list),
        Reply::Deployed(deployed) => http::json(StatusCode::CREATED, &deployed),
        Reply::Functions(list) => http::json(StatusCode::OK, &list),
        Reply::Deleted(deleted) => http::json(StatusCode::OK, &deleted),
        Reply::Status(status) => http::json(StatusCode::OK, &status),
        Reply::Logs(page) => http::json(StatusCode::OK, &page),
        Reply::Cost(report) => http::json(StatusCode::OK, &report),
        Reply::DashboardAsset(asset) => {
            let mut response = http::response(StatusCode::OK, asset.content_type, asset.body);
            // The page runs only its own files: no inline script, nothing from elsewhere.
            insert(
                &mut response,
                "content-security-policy",
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            );
            insert(&mut response, "cache-control", "no-cache");
            response
        }
        Reply::LoggedIn { session } => {
            let mut response = http::response(
                StatusCode::SEE_OTHER,
                "text/plain; charset=utf-8",
                Bytes::new(),
            );
            insert(&mut response, "location", "/dashboard");
            insert(
                &mut response,
                "set-cookie",
                &format!(
                    "{}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
                    crate::auth::SESSION_COOKIE,
                    crate::auth::SESSION_TTL.as_secs()
                ),
            );
            response
        }
        Reply::LoginCode(login) => http::json(StatusCode::CREATED, &login),
        Reply::Metrics { text, openmetrics } => {
            let kind = if openmetrics {
                OPENMETRICS
            } else {
                PROMETHEUS_TEXT
            };
            http::response(StatusCode::OK, kind, text)
        }
    }
}

/// A refused or failed request. `function` is the one the path names, if any.
pub(super) fn failure(
    failure: &Failure,
    function: Option<&str>,
    request_id: &str,
    region: &str,
) -> Response<Body> {
    let function = function.unwrap_or("-");
    let mut response = match failure {
        Failure::Unauthorized => aws_error(
            StatusCode::UNAUTHORIZED,
            "UnauthorizedException",
            "missing or wrong admin token (send Authorization: Bearer <token from the data directory's admin-token file>)",
        ),
        Failure::LoginCode => http::response(
            StatusCode::UNAUTHORIZED,
            "text/plain; charset=utf-8",
            "This login link was already used, has expired, or is wrong: run `shoal dashboard` for a new one.\n",
        ),
        Failure::Auth(error) => auth_error(error, request_id),
        Failure::BadRequest(message) => aws_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            message,
        ),
        Failure::NoRoute { method, path } => aws_error(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            &format!("no route for {method} {path}"),
        ),
        Failure::TooLarge { limit, operation } => aws_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestTooLargeException",
            &format!("Request must be smaller than {limit} bytes for the {operation} operation"),
        ),
        Failure::BrokenBody => aws_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            "the request body could not be read (the connection broke or the encoding is invalid)",
        ),
        Failure::Platform(error) => platform_error(error, function, request_id, region),
    };
    insert(&mut response, headers::REQUEST_ID, request_id);
    response
}

/// A refused credential, in the Lambda API's shapes (the SDKs match the type names).
fn auth_error(error: &AuthError, request_id: &str) -> Response<Body> {
    use crate::sigv4::SigError;
    let (status, error_type) = match error {
        AuthError::Missing => (StatusCode::UNAUTHORIZED, "UnauthorizedException"),
        AuthError::Signature(SigError::Incomplete(_)) => {
            (StatusCode::FORBIDDEN, "IncompleteSignatureException")
        }
        AuthError::Signature(SigError::UnknownKey) => {
            (StatusCode::FORBIDDEN, "UnrecognizedClientException")
        }
        AuthError::Signature(_) => (StatusCode::FORBIDDEN, "InvalidSignatureException"),
        AuthError::Lookup(error) => return internal(error, request_id),
    };
    aws_error(status, error_type, &error.to_string())
}

fn platform_error(error: &Error, function: &str, request_id: &str, region: &str) -> Response<Body> {
    let user = |status, error_type: &str| aws_error(status, error_type, &shoal_core::chain(error));
    let arn = |name: &str| format!("arn:aws:lambda:{region}:{ACCOUNT}:function:{name}");
    match error {
        Error::FunctionNotFound(name) => aws_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Function not found: {}", arn(name)),
        ),
        Error::QualifierNotFound {
            function,
            qualifier,
        } => aws_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Function not found: {}:{qualifier}", arn(function)),
        ),
        Error::QualifiedEvent { .. } | Error::InvalidAlias(_) => {
            user(StatusCode::BAD_REQUEST, "InvalidParameterValueException")
        }
        Error::InvalidKeyName(_) => user(StatusCode::BAD_REQUEST, "InvalidParameterValueException"),
        Error::KeyExists(_) => user(StatusCode::CONFLICT, "ResourceConflictException"),
        Error::KeyNotFound(_) => user(StatusCode::NOT_FOUND, "ResourceNotFoundException"),
        Error::InvalidPayload(source) => aws_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            &format!("Could not parse request body into json: {source}"),
        ),
        Error::InvalidInvocationType(_) => {
            user(StatusCode::BAD_REQUEST, "InvalidParameterValueException")
        }
        Error::Archive(ArchiveError::Write { .. }) => internal(error, request_id),
        Error::Archive(_) => user(StatusCode::BAD_REQUEST, "InvalidArchiveException"),
        Error::MissingManifest | Error::Manifest(_) | Error::Unsupported { .. } => {
            user(StatusCode::BAD_REQUEST, "InvalidManifestException")
        }
        Error::RouteConflict(_) => user(StatusCode::CONFLICT, "ResourceConflictException"),
        Error::Overloaded { .. } => aws_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            &format!("Rate exceeded: too many requests queued for {function}"),
        ),
        // Refused before it ran: a node that forwarded it may run it elsewhere.
        Error::ShuttingDown => not_run(aws_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceException",
            "the platform is shutting down",
        )),
        Error::Cluster(shoal_core::ClusterError::CutOff(_)) => {
            not_run(user(StatusCode::SERVICE_UNAVAILABLE, "ServiceException"))
        }
        // Never a silent drop: the caller hears that the event was not taken.
        Error::EventStoreFull { .. } => {
            user(StatusCode::TOO_MANY_REQUESTS, "TooManyRequestsException")
        }
        Error::Queue(shoal_core::QueueError::Storage(_)) => internal(error, request_id),
        Error::Queue(_) => user(StatusCode::BAD_REQUEST, "InvalidParameterValueException"),
        // The function's own failures: 200 with X-Amz-Function-Error, as on Lambda.
        Error::FunctionTimeout(_) => function_error(
            "Sandbox.Timedout",
            &format!("RequestId: {request_id} Error: {error}"),
        ),
        Error::InstanceFailed(failure) => function_error(
            "Runtime.ExitError",
            &format!("RequestId: {request_id} Error: {failure}"),
        ),
        Error::InitFailed(launch) => function_error(launch.error_type.as_str(), &launch.message),
        Error::HandlerThrew { error_type } => function_error(error_type, "the handler threw"),
        Error::BadProxyResult(_) => function_error("Runtime.Unknown", &error.to_string()),
        Error::Store(_)
        | Error::Events { .. }
        | Error::Io { .. }
        | Error::EmptyStore { .. }
        | Error::Launcher(_)
        | Error::Cluster(_)
        | Error::Task(_) => internal(error, request_id),
    }
}

fn not_run(mut response: Response<Body>) -> Response<Body> {
    insert(&mut response, crate::forward::NOT_RUN, "1");
    response
}

/// Our own trouble: the details go to the daemon's log, the client gets a stable message.
fn internal(error: &Error, request_id: &str) -> Response<Body> {
    tracing::error!(request_id, error = %shoal_core::chain(error), "control request failed");
    aws_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "ServiceException",
        &format!("internal error; the daemon's log has the details (request id {request_id})"),
    )
}

fn function_error(error_type: &str, message: &str) -> Response<Body> {
    let mut response = http::json(
        StatusCode::OK,
        &serde_json::json!({ "errorType": error_type, "errorMessage": message }),
    );
    insert(&mut response, headers::FUNCTION_ERROR, "Unhandled");
    response
}

/// An AWS-style service error: the SDKs read `x-amzn-ErrorType` and the body's message.
fn aws_error(status: StatusCode, error_type: &str, message: &str) -> Response<Body> {
    let mut response = http::json(
        status,
        &ErrorBody {
            error_type: error_type.to_owned(),
            message: message.to_owned(),
        },
    );
    insert(&mut response, "x-amzn-errortype", error_type);
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert("retry-after", RETRY_AFTER_SECS.into());
    }
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

    async fn text(response: Response<Body>) -> String {
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn internal_errors_carry_no_detail() {
        let error = Error::Io {
            what: "reading the log of",
            path: "/secret/data-dir/logs/f.log".into(),
            source: std::io::Error::other("disk on fire"),
        };
        let response = platform_error(&error, "f", "req-1", "us-east-1");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()["x-amzn-errortype"], "ServiceException");
        let body = text(response).await;
        assert!(!body.contains("secret") && !body.contains("fire"), "{body}");
        assert!(body.contains("req-1"), "{body}");
    }

    #[tokio::test]
    async fn a_function_answer_is_only_ever_the_body() {
        // What a function returns cannot add headers or frame the answer: only the
        // platform's own headers are set, and the bytes come back as they are.
        let looks_like_http = Bytes::from_static(
            b"\"x\"\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\nset-cookie: a=1\r\n\r\n",
        );
        for outcome in [
            InvokeOutcome::Success(looks_like_http.clone()),
            InvokeOutcome::FunctionError {
                error_type: "E".into(),
                body: looks_like_http.clone(),
            },
        ] {
            let response = reply(Reply::Invoked {
                request_id: "req-3".into(),
                invoked: shoal_core::Invoked {
                    version: 1,
                    outcome,
                },
                executed_latest: true,
                log: None,
            });
            let mut names: Vec<&str> = response.headers().keys().map(|n| n.as_str()).collect();
            names.retain(|n| *n != headers::FUNCTION_ERROR);
            names.sort_unstable();
            let mut expected = vec![
                "content-type",
                headers::REQUEST_ID,
                headers::EXECUTED_VERSION,
            ];
            expected.sort_unstable();
            assert_eq!(names, expected);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, looks_like_http);
        }
    }

    #[tokio::test]
    async fn a_function_failure_is_a_200_with_the_function_error_header() {
        let error = Error::FunctionTimeout(std::time::Duration::from_secs(3));
        let response = platform_error(&error, "f", "req-2", "us-east-1");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[headers::FUNCTION_ERROR], "Unhandled");
        assert!(text(response).await.contains("Sandbox.Timedout"));
    }
}
