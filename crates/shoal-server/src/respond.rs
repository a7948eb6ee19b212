//! Errors become HTTP responses here and nowhere else: the gateway's API-Gateway-style
//! answers, and the Invoke API's AWS error shapes (`x-amzn-ErrorType` + JSON body) that
//! AWS SDKs parse. Details go to the function's log; clients get a stable type name.

use hyper::{Response, StatusCode};
use serde_json::json;
use shoal_dispatch::DispatchError;

use crate::http::{self, Body};
use crate::platform::DeployError;

/// Seconds a throttled caller is told to wait.
const RETRY_AFTER_SECS: u64 = 1;

/// The gateway's answer when an invocation could not produce a handler result.
pub(crate) fn gateway_error(error: &DispatchError) -> Response<Body> {
    let (status, message) = match error {
        DispatchError::NotFound(_) => (StatusCode::NOT_FOUND, "Not Found"),
        DispatchError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout"),
        DispatchError::Instance(_) | DispatchError::InitFailed(_) => {
            (StatusCode::BAD_GATEWAY, "Bad Gateway")
        }
        DispatchError::Overloaded { .. } => (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests"),
        DispatchError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
    };
    let mut response = http::json(status, &json!({ "message": message }));
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert("retry-after", RETRY_AFTER_SECS.into());
    }
    response
}

/// The gateway's answer when the handler threw: API Gateway hides the error from callers.
pub(crate) fn gateway_function_error() -> Response<Body> {
    http::json(
        StatusCode::INTERNAL_SERVER_ERROR,
        &json!({ "message": "Internal Server Error" }),
    )
}

pub(crate) fn gateway_message(status: StatusCode, message: &str) -> Response<Body> {
    http::json(status, &json!({ "message": message }))
}

/// An AWS-style service error: the SDKs read `x-amzn-ErrorType` and the body's message.
pub(crate) fn aws_error(status: StatusCode, error_type: &str, message: &str) -> Response<Body> {
    let mut response = http::json(
        status,
        &json!({ "Type": "User", "message": message, "__type": error_type }),
    );
    if let Ok(value) = error_type.parse() {
        response.headers_mut().insert("x-amzn-errortype", value);
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert("retry-after", RETRY_AFTER_SECS.into());
    }
    response
}

/// A failed invocation as the Invoke API reports it. Failures of the function itself
/// (timeouts, crashes, failed init) are 200 with `X-Amz-Function-Error`, as on Lambda.
pub(crate) fn invoke_error(
    function: &str,
    request_id: &str,
    error: &DispatchError,
) -> Response<Body> {
    let function_error = |error_type: &str, message: String| {
        let mut response = http::json(
            StatusCode::OK,
            &json!({ "errorType": error_type, "errorMessage": message }),
        );
        response
            .headers_mut()
            .insert("x-amz-function-error", "Unhandled".parse().expect("static"));
        response
    };
    match error {
        DispatchError::NotFound(_) => aws_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Function not found: arn:aws:lambda:local:000000000000:function:{function}"),
        ),
        DispatchError::Overloaded { .. } => aws_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            &format!("Rate exceeded: too many requests queued for {function}"),
        ),
        DispatchError::ShuttingDown => aws_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceException",
            "the platform is shutting down",
        ),
        DispatchError::Timeout(_) => function_error(
            "Sandbox.Timedout",
            format!("RequestId: {request_id} Error: {error}"),
        ),
        DispatchError::Instance(failure) => function_error(
            "Runtime.ExitError",
            format!("RequestId: {request_id} Error: {failure}"),
        ),
        DispatchError::InitFailed(launch) => {
            function_error(&launch.error_type, launch.message.clone())
        }
    }
}

/// A deploy that was refused: 400 for the user's input, 500 for our own trouble.
pub(crate) fn deploy_error(error: &DeployError) -> Response<Body> {
    let (status, error_type) = match error {
        DeployError::Archive(_) => (StatusCode::BAD_REQUEST, "InvalidArchiveException"),
        DeployError::MissingManifest
        | DeployError::Manifest(_)
        | DeployError::Unsupported { .. } => (StatusCode::BAD_REQUEST, "InvalidManifestException"),
        DeployError::Route(_) => (StatusCode::CONFLICT, "ResourceConflictException"),
        DeployError::Store(_) | DeployError::Io { .. } => {
            (StatusCode::INTERNAL_SERVER_ERROR, "ServiceException")
        }
    };
    if status.is_server_error() {
        tracing::error!(error = %chain(error), "deploy failed");
    }
    aws_error(status, error_type, &chain(error))
}

/// The error and its sources, one sentence.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
