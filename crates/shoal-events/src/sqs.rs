//! Lambda's SQS trigger, as JSON: the event a queue-triggered function receives
//! ([`build_sqs_event`]) and how its partial batch response is read
//! ([`parse_batch_response`]).
//!
//! This module owns the shapes only. It does not receive, delete or count messages, and it
//! computes nothing it is not given (the MD5 of a body comes from the queue, which already
//! reports it to `SendMessage`).

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::aws::{sqs_queue_arn, REGION};

/// One message of a batch handed to a function.
#[derive(Debug, Clone)]
pub struct SqsRecord<'a> {
    pub message_id: &'a str,
    /// Valid for this receive only; the handler may use it to delete the message itself.
    pub receipt_handle: &'a str,
    pub body: &'a str,
    /// Lower-case hex MD5 of `body`.
    pub md5_of_body: &'a str,
    /// How many times the message has been received, this receive included.
    pub receive_count: u32,
    pub sent_at_ms: i64,
    pub first_received_at_ms: i64,
    /// Who sent it (`SenderId`); Lambda shows an IAM principal id here.
    pub sender_id: &'a str,
    pub message_attributes: BTreeMap<String, MessageAttribute>,
}

/// A message attribute. It deserializes from the SQS API's `MessageAttributeValue` as the
/// JSON protocol carries it (`{"DataType": "String", "StringValue": "x"}`), so attributes
/// stored as sent can be read straight into it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MessageAttribute {
    /// `String`, `Number`, `Binary`, or one of those with a custom suffix (`Number.int`).
    pub data_type: String,
    pub string_value: Option<String>,
    /// Base64, as both the SQS API and the Lambda event carry it.
    pub binary_value: Option<String>,
}

// Field order mirrors Lambda's documented example, so events read the same in logs.
#[derive(Serialize)]
struct Event<'a> {
    #[serde(rename = "Records")]
    records: Vec<Record<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    message_id: &'a str,
    receipt_handle: &'a str,
    body: &'a str,
    attributes: Attributes<'a>,
    message_attributes: BTreeMap<&'a str, EventAttribute<'a>>,
    md5_of_body: &'a str,
    event_source: &'static str,
    #[serde(rename = "eventSourceARN")]
    event_source_arn: &'a str,
    aws_region: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Attributes<'a> {
    approximate_receive_count: String,
    sent_timestamp: String,
    sender_id: &'a str,
    approximate_first_receive_timestamp: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventAttribute<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    string_value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    binary_value: Option<&'a str>,
    // Reserved by SQS and always empty, but present in every Lambda event.
    string_list_values: [&'a str; 0],
    binary_list_values: [&'a str; 0],
    data_type: &'a str,
}

/// Builds the SQS event (`{"Records": [...]}`) for a batch from `queue`, as JSON bytes.
///
/// Every record carries `eventSource: "aws:sqs"`, the queue's ARN
/// (`arn:aws:sqs:local:000000000000:<queue>`) and `awsRegion: "local"`; the counts and
/// timestamps in `attributes` are strings, as Lambda sends them.
pub fn build_sqs_event(queue: &str, records: &[SqsRecord]) -> Vec<u8> {
    let arn = sqs_queue_arn(queue);
    let event = Event {
        records: records
            .iter()
            .map(|r| Record {
                message_id: r.message_id,
                receipt_handle: r.receipt_handle,
                body: r.body,
                attributes: Attributes {
                    approximate_receive_count: r.receive_count.to_string(),
                    sent_timestamp: r.sent_at_ms.to_string(),
                    sender_id: r.sender_id,
                    approximate_first_receive_timestamp: r.first_received_at_ms.to_string(),
                },
                message_attributes: r
                    .message_attributes
                    .iter()
                    .map(|(name, a)| {
                        let value = EventAttribute {
                            string_value: a.string_value.as_deref(),
                            binary_value: a.binary_value.as_deref(),
                            string_list_values: [],
                            binary_list_values: [],
                            data_type: &a.data_type,
                        };
                        (name.as_str(), value)
                    })
                    .collect(),
                md5_of_body: r.md5_of_body,
                event_source: "aws:sqs",
                event_source_arn: &arn,
                aws_region: REGION,
            })
            .collect(),
    };
    // Strings, integers and maps with string keys always serialize.
    serde_json::to_vec(&event).expect("SQS event serializes")
}

/// What to do with a batch once its function returned without error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Delete every message.
    AllSucceeded,
    /// Keep these messages (to be received again after their visibility timeout) and
    /// delete the rest. Never empty; in batch order, without repeats.
    SomeFailed(Vec<String>),
    /// Keep every message: the response reported failures in a way that cannot be trusted.
    AllFailed(BadBatchResponse),
}

/// Why a partial batch response fails the whole batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadBatchResponse {
    #[error("the response is not valid JSON")]
    NotJson,
    #[error("the response is JSON but not an object")]
    NotAnObject,
    #[error("batchItemFailures is not a list")]
    FailuresNotAList,
    #[error("batchItemFailures[{index}] is not an object")]
    ItemNotAnObject { index: usize },
    #[error("batchItemFailures[{index}] has no itemIdentifier")]
    MissingIdentifier { index: usize },
    #[error("batchItemFailures[{index}].itemIdentifier is null")]
    NullIdentifier { index: usize },
    #[error("batchItemFailures[{index}].itemIdentifier is not a string")]
    IdentifierNotAString { index: usize },
    #[error("batchItemFailures[{index}].itemIdentifier is empty")]
    EmptyIdentifier { index: usize },
    #[error("batchItemFailures[{index}].itemIdentifier {id:?} is not a message of this batch")]
    UnknownIdentifier { index: usize, id: String },
}

impl fmt::Display for BatchOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchOutcome::AllSucceeded => f.write_str("all messages succeeded"),
            BatchOutcome::SomeFailed(ids) => {
                write!(
                    f,
                    "{} message(s) reported failed by the function",
                    ids.len()
                )
            }
            BatchOutcome::AllFailed(why) => write!(f, "whole batch failed: {why}"),
        }
    }
}

/// Reads a function's partial batch response for the batch whose message ids are
/// `batch`, following Lambda's documented rules for `ReportBatchItemFailures`.
///
/// Call it only for a trigger with `report_batch_item_failures` and an invocation that
/// returned normally: an error or timeout fails the whole batch before any response is
/// read, and without the setting a normal return deletes the batch whatever it says.
///
/// - Complete success: `null`, an empty response, an object without `batchItemFailures`
///   (such as `{}`), or with `batchItemFailures` null or `[]`.
/// - Partial failure: `{"batchItemFailures": [{"itemIdentifier": "<messageId>"}, ...]}`
///   where every identifier is a message of this batch; other keys are ignored.
/// - Complete failure: invalid JSON, or any entry that is not an object, lacks
///   `itemIdentifier` (a misspelt key), or has it null, empty, not a string, or naming a
///   message outside the batch. Lambda lists these; reading JSON that is not an object
///   (`"ok"`, `[]`) as a failure too is our reading of its "invalid response".
pub fn parse_batch_response<S: AsRef<str>>(response: &[u8], batch: &[S]) -> BatchOutcome {
    match failed_ids(response, batch) {
        Ok(ids) if ids.is_empty() => BatchOutcome::AllSucceeded,
        Ok(ids) => BatchOutcome::SomeFailed(ids),
        Err(why) => BatchOutcome::AllFailed(why),
    }
}

fn failed_ids<S: AsRef<str>>(
    response: &[u8],
    batch: &[S],
) -> Result<Vec<String>, BadBatchResponse> {
    if response.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let value: Value = serde_json::from_slice(response).map_err(|_| BadBatchResponse::NotJson)?;
    let failures = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Object(mut object) => object.remove("batchItemFailures"),
        _ => return Err(BadBatchResponse::NotAnObject),
    };
    let items = match failures {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(BadBatchResponse::FailuresNotAList),
    };
    // Sets, so that a response listing many entries costs one lookup per entry.
    let known: HashSet<&str> = batch.iter().map(AsRef::as_ref).collect();
    let mut failed = HashSet::new();
    for (index, item) in items.into_iter().enumerate() {
        let Value::Object(mut item) = item else {
            return Err(BadBatchResponse::ItemNotAnObject { index });
        };
        let id = match item.remove("itemIdentifier") {
            None => return Err(BadBatchResponse::MissingIdentifier { index }),
            Some(Value::Null) => return Err(BadBatchResponse::NullIdentifier { index }),
            Some(Value::String(id)) if id.is_empty() => {
                return Err(BadBatchResponse::EmptyIdentifier { index })
            }
            Some(Value::String(id)) => id,
            Some(_) => return Err(BadBatchResponse::IdentifierNotAString { index }),
        };
        if !known.contains(id.as_str()) {
            return Err(BadBatchResponse::UnknownIdentifier { index, id });
        }
        failed.insert(id);
    }
    Ok(batch
        .iter()
        .map(AsRef::as_ref)
        .filter(|id| failed.remove(*id))
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_deserialize_from_the_sqs_api_shape() {
        let attrs: BTreeMap<String, MessageAttribute> = serde_json::from_str(
            r#"{"a": {"DataType": "String", "StringValue": "x"},
                "b": {"DataType": "Binary", "BinaryValue": "AQI="}}"#,
        )
        .unwrap();
        assert_eq!(attrs["a"].string_value.as_deref(), Some("x"));
        assert_eq!(attrs["b"].binary_value.as_deref(), Some("AQI="));
        assert_eq!(attrs["b"].data_type, "Binary");
    }

    #[test]
    fn ten_thousand_failures_come_back_once_each_in_batch_order() {
        // SQS batches reach 10,000 messages; a response may list them in any order and
        // repeat them.
        let batch: Vec<String> = (0..10_000).map(|i| format!("m{i}")).collect();
        let items: Vec<Value> = batch
            .iter()
            .rev()
            .chain(batch.iter().take(10))
            .map(|id| serde_json::json!({ "itemIdentifier": id }))
            .collect();
        let response =
            serde_json::to_vec(&serde_json::json!({ "batchItemFailures": items })).unwrap();
        let BatchOutcome::SomeFailed(ids) = parse_batch_response(&response, &batch) else {
            panic!("expected some failed");
        };
        assert_eq!(ids, batch);
    }
}
