//! The events the triggers hand to functions and the records they write: an adapter from
//! the store's messages onto `shoal_events`' shapes (SQS event, partial batch response,
//! Scheduled Event, on-failure destination record).

use std::collections::BTreeMap;

use shoal_events::{
    AttemptResponse, BatchOutcome, FailureCondition, FailureRecord, MessageAttribute, SqsRecord,
};
use shoal_manifest::ScheduleTrigger;
use shoal_queue::Received;

use super::policy::{Condition, Envelope};
use super::worker::Response;

/// Lambda's SQS event for a batch.
pub(crate) fn sqs_event(queue: &str, batch: &[Received]) -> Vec<u8> {
    let attributes: Vec<BTreeMap<String, MessageAttribute>> = batch
        .iter()
        .map(|m| {
            m.attributes
                .as_deref()
                .and_then(|a| serde_json::from_str(a).ok())
                .unwrap_or_default()
        })
        .collect();
    let records: Vec<SqsRecord> = batch
        .iter()
        .zip(attributes)
        .map(|(m, message_attributes)| SqsRecord {
            message_id: &m.id,
            receipt_handle: &m.receipt,
            body: &m.body,
            md5_of_body: &m.md5_of_body,
            receive_count: m.receive_count,
            sent_at_ms: m.sent_at_ms,
            first_received_at_ms: m.first_received_at_ms,
            sender_id: shoal_events::ACCOUNT_ID,
            message_attributes,
        })
        .collect();
    shoal_events::build_sqs_event(queue, &records)
}

/// The message ids a handler's partial batch response names as failed; `Err` (the whole
/// batch failed) for a response Lambda would reject, with why.
pub(crate) fn batch_item_failures(body: &[u8], batch: &[Received]) -> Result<Vec<String>, String> {
    let ids: Vec<&str> = batch.iter().map(|m| m.id.as_str()).collect();
    match shoal_events::parse_batch_response(body, &ids) {
        BatchOutcome::AllSucceeded => Ok(Vec::new()),
        BatchOutcome::SomeFailed(failed) => Ok(failed),
        BatchOutcome::AllFailed(why) => Err(why.to_string()),
    }
}

/// EventBridge's Scheduled Event, or the schedule's constant input instead.
pub(crate) fn scheduled_event(trigger: &ScheduleTrigger, rule: &str, fire_ms: i64) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let event = shoal_events::ScheduledEvent {
        id: &id,
        time_ms: fire_ms,
        rule_name: rule,
    };
    String::from_utf8_lossy(&shoal_events::scheduled_payload(
        &event,
        trigger.input.as_ref(),
    ))
    .into_owned()
}

/// Lambda's on-failure destination record for an async event that gave up.
pub(crate) fn destination_record(
    function: &str,
    envelope: &Envelope,
    condition: Condition,
    attempts: u32,
    payload: &str,
    response: Option<&Response>,
    now_ms: i64,
) -> String {
    let version = response
        .and_then(|r| r.version)
        .map_or("$LATEST".to_owned(), |v| v.to_string());
    let answer = response.map(|r| serde_json::to_vec(&r.payload).unwrap_or_default());
    let record = FailureRecord {
        time_ms: now_ms,
        request_id: &envelope.request_id,
        function_name: function,
        qualifier: "$LATEST",
        condition: match condition {
            Condition::RetriesExhausted => FailureCondition::RetriesExhausted,
            Condition::EventAgeExceeded => FailureCondition::EventAgeExceeded,
        },
        approximate_invoke_count: attempts,
        request_payload: payload.as_bytes(),
        response: response
            .zip(answer.as_deref())
            .map(|(r, answer)| AttemptResponse {
                status_code: 200,
                executed_version: &version,
                function_error: r.function_error,
                payload: answer,
            }),
    };
    String::from_utf8_lossy(&shoal_events::build_failure_record(&record)).into_owned()
}

/// `2026-11-29T21:32:13.123Z`.
pub(crate) fn iso8601(ms: i64) -> String {
    shoal_events::iso8601_millis(ms)
}
