//! A function's asynchronous side: the `events` list (queue triggers and schedules) and
//! the settings of its async invocations (`maximum_retry_attempts`, `maximum_event_age`,
//! `on_failure`). Checks shapes and ranges only; whether a named queue exists, and whether
//! a schedule expression parses, is decided by the caller that knows queues and calendars
//! (a schedule's syntax is checked when [`crate::parse_checked`] is given a checker).

use serde::{Deserialize, Serialize};

use crate::tree::{Kind, Node};
use crate::validate::{count, describe, duration, join, unknown_key, Source};
use crate::Result;

const QUEUE_KEYS: &[&str] = &[
    "queue",
    "batch_size",
    "batching_window",
    "report_batch_item_failures",
    "maximum_concurrency",
];
const SCHEDULE_KEYS: &[&str] = &["schedule", "timezone", "input", "enabled"];
/// Lambda's SQS batch size range.
const BATCH_SIZE: (u32, u32) = (1, 10_000);
/// Lambda's `MaximumBatchingWindowInSeconds`: 0..=300 s.
const BATCHING_WINDOW_MS: u64 = 300_000;
/// Lambda's `ScalingConfig.MaximumConcurrency` range.
const MAXIMUM_CONCURRENCY: (u32, u32) = (2, 1_000);
/// Lambda's async `MaximumRetryAttempts`.
pub(crate) const MAX_RETRY_ATTEMPTS: u32 = 2;
/// Lambda's async `MaximumEventAgeInSeconds`: 60 s..=6 h.
pub(crate) const EVENT_AGE_MS: (u64, u64) = (60_000, 6 * 3_600_000);

/// Something other than a call that invokes the function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventSource {
    Queue(QueueTrigger),
    Schedule(ScheduleTrigger),
}

/// `{ queue = "jobs", batch_size = 10, batching_window = "1s", ... }`: Shoal polls the
/// queue and invokes the function with Lambda's SQS event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueTrigger {
    pub queue: String,
    /// Most messages in one invocation; default 10.
    pub batch_size: u32,
    /// How long to gather a batch before invoking with fewer than `batch_size`; default 0.
    pub batching_window_ms: u64,
    /// The handler may answer `{"batchItemFailures": [...]}` to fail only some messages.
    pub report_batch_item_failures: bool,
    /// Most batches in flight at once (Lambda's `ScalingConfig.MaximumConcurrency`); by
    /// default bounded only by what the function's instances can take.
    pub maximum_concurrency: Option<u32>,
}

/// `{ schedule = "rate(5 minutes)" }` or `{ schedule = "cron(...)", timezone = "...",
/// input = {...} }`: EventBridge's scheduled rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleTrigger {
    /// `rate(...)` or `cron(...)`, as written.
    pub expression: String,
    /// IANA name; UTC when absent.
    pub timezone: Option<String>,
    /// Sent instead of the Scheduled Event envelope (EventBridge's constant input).
    pub input: Option<serde_json::Value>,
    pub enabled: bool,
}

/// How `Event` invocations (and schedule fires) are retried and where they go when they
/// give up, as Lambda's `FunctionEventInvokeConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsyncConfig {
    /// Retries after a failed attempt: 0..=2, default 2.
    pub maximum_retry_attempts: u32,
    /// An event older than this is not attempted again: 60 s..=6 h, default 6 h.
    pub maximum_event_age_ms: u64,
    /// A Shoal queue that receives a destination record for every event that gave up;
    /// without one, such events are dropped with a log line.
    pub on_failure: Option<String>,
}

impl Default for AsyncConfig {
    fn default() -> Self {
        AsyncConfig {
            maximum_retry_attempts: MAX_RETRY_ATTEMPTS,
            maximum_event_age_ms: EVENT_AGE_MS.1,
            on_failure: None,
        }
    }
}

/// A checker for schedule expressions, supplied by a caller that has a calendar; errors
/// are messages that will be placed at the expression.
pub type ScheduleCheck<'a> = &'a dyn Fn(&str, Option<&str>) -> std::result::Result<(), String>;

/// The `events` list.
pub(crate) fn events(
    src: &Source<'_>,
    field: &str,
    node: &Node,
    offset: usize,
    check: Option<ScheduleCheck<'_>>,
) -> Result<Vec<EventSource>> {
    let Kind::Array(items) = &node.kind else {
        return Err(src.error(
            offset,
            field,
            format!(
                "expected a list like events = [{{ queue = \"jobs\" }}, {{ schedule = \
                 \"rate(5 minutes)\" }}], got {}",
                describe(node)
            ),
        ));
    };
    let mut sources = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let item_field = format!("{field}[{index}]");
        let item_offset = item.start().unwrap_or(offset);
        let Kind::Table(entries) = &item.kind else {
            return Err(src.error(
                item_offset,
                &item_field,
                format!(
                    "expected {{ queue = \"...\" }} or {{ schedule = \"...\" }}, got {}",
                    describe(item)
                ),
            ));
        };
        let has = |name: &str| entries.iter().any(|(k, _)| k.name == name);
        let source = match (has("queue"), has("schedule")) {
            (true, false) => EventSource::Queue(queue(src, &item_field, entries, item_offset)?),
            (false, true) => {
                EventSource::Schedule(schedule(src, &item_field, entries, item_offset, check)?)
            }
            (true, true) => {
                return Err(src.error(
                    item_offset,
                    &item_field,
                    "an event source is either a queue or a schedule, not both; split it \
                     into two entries",
                ))
            }
            (false, false) => {
                return Err(src.error(
                    item_offset,
                    &item_field,
                    "an event source needs queue = \"NAME\" or schedule = \"rate(...)\" / \
                     \"cron(...)\"",
                ))
            }
        };
        if let EventSource::Queue(q) = &source {
            let twice = sources
                .iter()
                .any(|s| matches!(s, EventSource::Queue(other) if other.queue == q.queue));
            if twice {
                return Err(src.error(
                    item_offset,
                    &item_field,
                    format!(
                        "queue {:?} is already a trigger of this function; remove one",
                        q.queue
                    ),
                ));
            }
        }
        sources.push(source);
    }
    Ok(sources)
}

fn queue(
    src: &Source<'_>,
    field: &str,
    entries: &[(crate::tree::Key, Node)],
    offset: usize,
) -> Result<QueueTrigger> {
    let mut trigger = QueueTrigger {
        queue: String::new(),
        batch_size: 10,
        batching_window_ms: 0,
        report_batch_item_failures: false,
        maximum_concurrency: None,
    };
    let mut batch_size_at = None;
    for (key, value) in entries {
        let key_field = join(field, &key.name);
        let at = value.start().unwrap_or(offset);
        match key.name.as_str() {
            "queue" => trigger.queue = queue_name(src, &key_field, value, at)?,
            "batch_size" => {
                trigger.batch_size = count(
                    src,
                    &key_field,
                    "batch_size",
                    value,
                    at,
                    BATCH_SIZE.0,
                    BATCH_SIZE.1,
                )?;
                batch_size_at = Some(at);
            }
            "batching_window" => {
                trigger.batching_window_ms = duration(
                    src,
                    &key_field,
                    "batching_window",
                    value,
                    at,
                    (0, BATCHING_WINDOW_MS),
                )?
            }
            "report_batch_item_failures" => {
                trigger.report_batch_item_failures = boolean(src, &key_field, value, at)?
            }
            "maximum_concurrency" => {
                trigger.maximum_concurrency = Some(count(
                    src,
                    &key_field,
                    "maximum_concurrency",
                    value,
                    at,
                    MAXIMUM_CONCURRENCY.0,
                    MAXIMUM_CONCURRENCY.1,
                )?)
            }
            other => {
                let at = key.start().unwrap_or(offset);
                return Err(unknown_key(src, at, &key_field, other, QUEUE_KEYS));
            }
        }
    }
    if trigger.batch_size > 10 && trigger.batching_window_ms < 1_000 {
        return Err(src.error(
            batch_size_at.unwrap_or(offset),
            &join(field, "batch_size"),
            format!(
                "batch_size {} is above 10, which needs batching_window = \"1s\" or more \
                 (as in Lambda): a batch that size is gathered over time",
                trigger.batch_size
            ),
        ));
    }
    Ok(trigger)
}

fn schedule(
    src: &Source<'_>,
    field: &str,
    entries: &[(crate::tree::Key, Node)],
    offset: usize,
    check: Option<ScheduleCheck<'_>>,
) -> Result<ScheduleTrigger> {
    let mut trigger = ScheduleTrigger {
        expression: String::new(),
        timezone: None,
        input: None,
        enabled: true,
    };
    let mut expression_at = offset;
    for (key, value) in entries {
        let key_field = join(field, &key.name);
        let at = value.start().unwrap_or(offset);
        match key.name.as_str() {
            "schedule" => {
                let Kind::String(text) = &value.kind else {
                    return Err(src.error(
                        at,
                        &key_field,
                        format!(
                            "expected \"rate(5 minutes)\" or \"cron(0 12 * * ? *)\", got {}",
                            describe(value)
                        ),
                    ));
                };
                trigger.expression = text.trim().to_owned();
                expression_at = at;
            }
            "timezone" => {
                let Kind::String(text) = &value.kind else {
                    return Err(src.error(
                        at,
                        &key_field,
                        format!(
                            "expected an IANA time zone like \"Europe/Paris\", got {}",
                            describe(value)
                        ),
                    ));
                };
                trigger.timezone = Some(text.clone());
            }
            "input" => trigger.input = Some(to_json(value)),
            "enabled" => trigger.enabled = boolean(src, &key_field, value, at)?,
            other => {
                let at = key.start().unwrap_or(offset);
                return Err(unknown_key(src, at, &key_field, other, SCHEDULE_KEYS));
            }
        }
    }
    if let Some(check) = check {
        check(&trigger.expression, trigger.timezone.as_deref())
            .map_err(|message| src.error(expression_at, &join(field, "schedule"), message))?;
    }
    Ok(trigger)
}

/// `maximum_retry_attempts`.
pub(crate) fn retry_attempts(src: &Source<'_>, field: &str, node: &Node, at: usize) -> Result<u32> {
    count(
        src,
        field,
        "maximum_retry_attempts",
        node,
        at,
        0,
        MAX_RETRY_ATTEMPTS,
    )
}

/// `maximum_event_age`.
pub(crate) fn event_age(src: &Source<'_>, field: &str, node: &Node, at: usize) -> Result<u64> {
    duration(src, field, "maximum_event_age", node, at, EVENT_AGE_MS)
}

/// A queue name as SQS allows it: 1–80 of letters, digits, `-` and `_`.
pub(crate) fn queue_name(src: &Source<'_>, field: &str, node: &Node, at: usize) -> Result<String> {
    let Kind::String(name) = &node.kind else {
        return Err(src.error(
            at,
            field,
            format!("expected a queue name, got {}", describe(node)),
        ));
    };
    let valid = (1..=80).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(src.error(
            at,
            field,
            format!("queue name {name:?} is invalid; use 1 to 80 letters, digits, \"-\" or \"_\""),
        ));
    }
    Ok(name.clone())
}

fn boolean(src: &Source<'_>, field: &str, node: &Node, at: usize) -> Result<bool> {
    match node.kind {
        Kind::Boolean(b) => Ok(b),
        _ => Err(src.error(
            at,
            field,
            format!("expected true or false, got {}", describe(node)),
        )),
    }
}

/// A TOML value as the JSON the function will receive.
fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value;
    match &node.kind {
        Kind::String(s) | Kind::Datetime(s) => Value::String(s.clone()),
        Kind::Integer(n) => Value::from(*n),
        Kind::Float(x) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
        Kind::Boolean(b) => Value::Bool(*b),
        Kind::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Kind::Table(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.name.clone(), to_json(v)))
                .collect(),
        ),
    }
}
