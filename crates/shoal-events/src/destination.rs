//! Lambda's asynchronous-invocation record for an on-failure destination: what is sent to
//! a function's failure queue when an event exhausts its retries or its maximum age.
//!
//! This module builds the JSON only. It does not decide when an event has failed, retry,
//! or send the record anywhere.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::aws::function_arn;
use crate::iso8601::iso8601_millis;

/// Why an asynchronous event was given up on (Lambda's `condition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FailureCondition {
    /// Every attempt failed: the first and all `maximum_retry_attempts` retries.
    RetriesExhausted,
    /// The event was older than `maximum_event_age` before it could be (re)tried.
    EventAgeExceeded,
}

impl fmt::Display for FailureCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureCondition::RetriesExhausted => "RetriesExhausted",
            FailureCondition::EventAgeExceeded => "EventAgeExceeded",
        })
    }
}

/// The record of one failed asynchronous event.
#[derive(Debug, Clone, Copy)]
pub struct FailureRecord<'a> {
    /// When the event was given up on (epoch ms).
    pub time_ms: i64,
    /// The invocation's request id, the same on every attempt.
    pub request_id: &'a str,
    pub function_name: &'a str,
    /// The version invoked, `$LATEST` when unqualified; ends `functionArn`.
    pub qualifier: &'a str,
    pub condition: FailureCondition,
    /// Attempts made, the first included.
    pub approximate_invoke_count: u32,
    /// The event as the function was (or would have been) invoked with it.
    pub request_payload: &'a [u8],
    /// The last attempt's outcome; `None` when no attempt ran (the event aged out while
    /// waiting), which leaves `responseContext` and `responsePayload` out of the record.
    pub response: Option<AttemptResponse<'a>>,
}

/// How the last attempt ended.
#[derive(Debug, Clone, Copy)]
pub struct AttemptResponse<'a> {
    /// 200 when the function ran, even if it failed (Lambda's convention).
    pub status_code: u16,
    pub executed_version: &'a str,
    /// `Unhandled` (the handler threw, crashed or timed out) or `Handled`; `None` if the
    /// attempt did not fail in the function.
    pub function_error: Option<&'a str>,
    /// What the function returned, usually its error object.
    pub payload: &'a [u8],
}

// Field order mirrors Lambda's documented example.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    version: &'static str,
    timestamp: String,
    request_context: RequestContext<'a>,
    request_payload: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_context: Option<ResponseContext<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_payload: Option<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestContext<'a> {
    request_id: &'a str,
    function_arn: String,
    condition: FailureCondition,
    approximate_invoke_count: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseContext<'a> {
    status_code: u16,
    executed_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_error: Option<&'a str>,
}

/// The on-failure destination record as JSON bytes (`version "1.0"`, a millisecond
/// `timestamp`, `requestContext`, `requestPayload`, and the last attempt's
/// `responseContext` and `responsePayload`).
///
/// Payloads are embedded as JSON when they parse as JSON; other bytes become a JSON string
/// (invalid UTF-8 replaced), and an empty payload becomes `null`.
pub fn build_failure_record(record: &FailureRecord) -> Vec<u8> {
    let out = Record {
        version: "1.0",
        timestamp: iso8601_millis(record.time_ms),
        request_context: RequestContext {
            request_id: record.request_id,
            function_arn: function_arn(record.function_name, record.qualifier),
            condition: record.condition,
            approximate_invoke_count: record.approximate_invoke_count,
        },
        request_payload: embed(record.request_payload),
        response_context: record.response.map(|r| ResponseContext {
            status_code: r.status_code,
            executed_version: r.executed_version,
            function_error: r.function_error,
        }),
        response_payload: record.response.map(|r| embed(r.payload)),
    };
    serde_json::to_vec(&out).expect("failure record serializes")
}

fn embed(payload: &[u8]) -> Value {
    if payload.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
}
