//! EventBridge's Scheduled Event: what a schedule-triggered function receives, either the
//! event envelope or, when the schedule has an `input`, that input alone.
//!
//! EventBridge lets a rule's target take the matched event or a constant JSON input in its
//! place; Shoal offers the same two, and the caller picks by passing the input or not to
//! [`scheduled_payload`]. This module builds JSON only: it does not decide when a schedule
//! fires (see [`Schedule`](crate::Schedule)) or make ids.

use serde::Serialize;
use serde_json::Value;

use crate::aws::{schedule_rule_arn, ACCOUNT_ID, REGION};
use crate::iso8601::iso8601_seconds;

/// One fire of a schedule.
#[derive(Debug, Clone, Copy)]
pub struct ScheduledEvent<'a> {
    /// Unique per fire (EventBridge uses a UUID); keep it across retries of the same fire
    /// so that handlers can deduplicate.
    pub id: &'a str,
    /// The instant the fire was due (epoch ms), also when it is delivered late; written
    /// in whole seconds.
    pub time_ms: i64,
    /// Names the schedule; `resources` holds `arn:aws:events:local:000000000000:rule/<name>`.
    pub rule_name: &'a str,
}

// Field order mirrors EventBridge's documented example.
#[derive(Serialize)]
struct Envelope<'a> {
    version: &'static str,
    id: &'a str,
    #[serde(rename = "detail-type")]
    detail_type: &'static str,
    source: &'static str,
    account: &'static str,
    time: String,
    region: &'static str,
    resources: [String; 1],
    detail: Empty,
}

#[derive(Serialize)]
struct Empty {}

/// The Scheduled Event envelope as JSON bytes: `version "0"`, `detail-type "Scheduled
/// Event"`, `source "aws.events"`, the local account and region, the rule's ARN in
/// `resources` and an empty `detail`.
pub fn build_scheduled_event(event: &ScheduledEvent) -> Vec<u8> {
    let envelope = Envelope {
        version: "0",
        id: event.id,
        detail_type: "Scheduled Event",
        source: "aws.events",
        account: ACCOUNT_ID,
        time: iso8601_seconds(event.time_ms),
        region: REGION,
        resources: [schedule_rule_arn(event.rule_name)],
        detail: Empty {},
    };
    serde_json::to_vec(&envelope).expect("scheduled event serializes")
}

/// The payload a schedule's function is invoked with: `input` unchanged when the schedule
/// has one (EventBridge's "constant input": the function never sees the envelope, so the
/// fire's id and time are only in Shoal's logs), otherwise [`build_scheduled_event`].
pub fn scheduled_payload(event: &ScheduledEvent, input: Option<&Value>) -> Vec<u8> {
    match input {
        Some(input) => serde_json::to_vec(input).expect("a JSON value serializes"),
        None => build_scheduled_event(event),
    }
}
