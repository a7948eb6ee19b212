//! The AWS-shaped semantics of Shoal's triggers, as pure functions over plain Rust types.
//!
//! HTTP: building the API Gateway event a function receives for an HTTP request (payload
//! format 2.0, [`build_v2_event`], or 1.0 per route, [`build_v1_event`]), mapping the
//! function's Lambda proxy result back to an HTTP response ([`try_map_response`]), and
//! matching requests to routes ([`RouteTable`]).
//!
//! Events: EventBridge schedule expressions and their next fire times ([`Schedule`]), the
//! Scheduled Event ([`scheduled_payload`]), Lambda's SQS event and partial batch responses
//! ([`build_sqs_event`], [`parse_batch_response`]), the asynchronous-invocation failure
//! record ([`build_failure_record`]), data-change records shaped as DynamoDB Streams'
//! ([`build_stream_event`], [`build_stream_failure`]), and the local account, region and ARNs they all carry.
//! [`json`] writes the JSON built for every call by hand (strings escaped as serde does).
//!
//! It must not touch sockets, processes, files, SQL or the clock: callers pass times and
//! ids in, and it uses no hyper/http types (the server maps hyper types into
//! [`HttpRequest`] and [`HttpResponse`] back out), so everything here can be tested with
//! data files alone (`tests/cases/`).
#![cfg_attr(not(test), warn(unused_crate_dependencies))]
#![forbid(unsafe_code)]

mod aws;
mod destination;
mod iso8601;
pub mod json;
mod percent;
mod request;
mod response;
mod route;
mod schedule;
mod scheduled;
mod sqs;
mod stream;

pub use aws::{function_arn, schedule_rule_arn, sqs_queue_arn, ACCOUNT_ID, REGION};
pub use destination::{build_failure_record, AttemptResponse, FailureCondition, FailureRecord};
pub use iso8601::{iso8601_millis, iso8601_seconds};
pub use request::{build_v1_event, build_v2_event, HttpRequest, PayloadFormat, RouteMatch};
pub use response::{
    is_framing_header, map_response, map_v2_response, try_map_response, try_map_v2_response,
    HttpResponse, ResponseError, MAX_HEADERS, MAX_HEADER_BYTES,
};
pub use route::{RouteError, RouteTable};
pub use schedule::{CronField, Schedule, ScheduleError};
pub use scheduled::{build_scheduled_event, scheduled_payload, ScheduledEvent};
pub use sqs::{
    build_sqs_event, parse_batch_response, BadBatchResponse, BatchOutcome, MessageAttribute,
    SqsRecord,
};
pub use stream::{
    build_stream_event, build_stream_failure, postgres_stream_arn, ChangeRecord, StreamFailure,
};

/// Result of route table edits.
pub type Result<T, E = RouteError> = std::result::Result<T, E>;
