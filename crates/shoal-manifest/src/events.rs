//! A function's asynchronous side: the `events` list (queue triggers, schedules and
//! PostgreSQL data-change triggers) and
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
const POSTGRES_KEYS: &[&str] = &[
    "url_env",
    "table",
    "operations",
    "batch_size",
    "batching_window",
    "parallelization_factor",
    "maximum_retry_attempts",
    "report_batch_item_failures",
    "on_failure",
];
const OPERATIONS: &[&str] = &["INSERT", "UPDATE", "DELETE"];
/// Lambda's DynamoDB Streams batch size range.
const STREAM_BATCH_SIZE: (u32, u32) = (1, 10_000);
/// Lanes of one table's stream (Lambda's `ParallelizationFactor` is 1..=10 per shard; a
/// table here is one shard, and packing makes concurrent batches cheap).
const PARALLELIZATION: (u32, u32) = (1, 100);
/// Retries of a failing stream batch before it goes to `on_failure` (Lambda: 0..=10,000).
const STREAM_RETRIES: (u32, u32) = (0, 10_000);
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
    Postgres(PostgresTrigger),
}

/// `{ postgres = { url_env = "DATABASE_URL", table = "public.orders", ... } }`: every
/// committed change to the table reaches the function as DynamoDB Streams-shaped records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresTrigger {
    /// The environment variable holding the connection string: the function's `env`, or
    /// the daemon's own environment (so the secret need not be in the manifest).
    pub url_env: String,
    /// Schema of the table; `public` when the manifest names the table alone.
    pub schema: String,
    pub table: String,
    /// Which of `INSERT`, `UPDATE`, `DELETE` are captured; default all three.
    pub operations: Vec<String>,
    /// Most records in one invocation; default 100 (as DynamoDB Streams).
    pub batch_size: u32,
    /// How long to wait for a fuller batch; default 0.
    pub batching_window_ms: u64,
    /// Batches in flight at once, each on its own set of row keys (a key's changes always
    /// go through one lane, in commit order); default 10.
    pub parallelization_factor: u32,
    /// Retries of a failing batch before its records go to `on_failure` (or are dropped
    /// with a log line); default 2. Bounds how long one poison record holds its lane.
    pub maximum_retry_attempts: u32,
    /// The handler may answer `{"batchItemFailures": [{"itemIdentifier": SEQ}]}`: the
    /// batch is retried from the first record named.
    pub report_batch_item_failures: bool,
    /// A Shoal queue that receives a record for every batch that gave up.
    pub on_failure: Option<String>,
}

impl PostgresTrigger {
    /// `schema.table`.
    pub fn qualified_table(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
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
        if has("postgres") {
            if let Some((key, _)) = entries.iter().find(|(k, _)| k.name != "postgres") {
                return Err(src.error(
                    key.start().unwrap_or(item_offset),
                    &join(&item_field, &key.name),
                    format!(
                        "{:?} belongs inside the postgres table: {{ postgres = {{ url_env = \
                         \"DATABASE_URL\", table = \"public.orders\", {} = ... }} }}",
                        key.name, key.name
                    ),
                ));
            }
            let (_, value) = &entries[0];
            let trigger = postgres(src, &join(&item_field, "postgres"), value, item_offset)?;
            let twice = sources.iter().any(|s| {
                matches!(s, EventSource::Postgres(other)
                    if other.qualified_table() == trigger.qualified_table())
            });
            if twice {
                return Err(src.error(
                    item_offset,
                    &item_field,
                    format!(
                        "table {} is already a postgres trigger of this function; list its \
                         operations in one entry",
                        trigger.qualified_table()
                    ),
                ));
            }
            sources.push(EventSource::Postgres(trigger));
            continue;
        }
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
                    "an event source needs queue = \"NAME\", schedule = \"rate(...)\" / \
                     \"cron(...)\", or postgres = { url_env = \"...\", table = \"...\" }",
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

fn postgres(src: &Source<'_>, field: &str, node: &Node, offset: usize) -> Result<PostgresTrigger> {
    let at = node.start().unwrap_or(offset);
    let Kind::Table(entries) = &node.kind else {
        return Err(src.error(
            at,
            field,
            format!(
                "expected a table like {{ url_env = \"DATABASE_URL\", table = \"public.orders\" }}, \
                 got {}",
                describe(node)
            ),
        ));
    };
    let mut trigger = PostgresTrigger {
        url_env: String::new(),
        schema: String::new(),
        table: String::new(),
        operations: OPERATIONS.iter().map(|s| (*s).to_owned()).collect(),
        batch_size: 100,
        batching_window_ms: 0,
        parallelization_factor: 10,
        maximum_retry_attempts: 2,
        report_batch_item_failures: false,
        on_failure: None,
    };
    for (key, value) in entries {
        let key_field = join(field, &key.name);
        let at = value.start().unwrap_or(offset);
        match key.name.as_str() {
            "url_env" => {
                let valid = matches!(&value.kind, Kind::String(name)
                    if !name.is_empty()
                        && !name.starts_with(|c: char| c.is_ascii_digit())
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                let Kind::String(name) = &value.kind else {
                    return Err(src.error(
                        at,
                        &key_field,
                        format!(
                            "expected the name of an environment variable, got {}",
                            describe(value)
                        ),
                    ));
                };
                if !valid {
                    let hint = if name.contains("://") || name.contains('=') {
                        "; it names the variable that holds the connection string, never the \
                         string itself (keep it in the function's env or the daemon's \
                         environment)"
                    } else {
                        ""
                    };
                    // A connection string here may hold a password: never echo it.
                    let shown = if hint.is_empty() {
                        format!("{name:?}")
                    } else {
                        "this value".to_owned()
                    };
                    return Err(src.error(
                        at,
                        &key_field,
                        format!(
                            "{shown} is not an environment variable name (letters, digits, \
                             \"_\"){hint}"
                        ),
                    ));
                }
                trigger.url_env = name.clone();
            }
            "table" => {
                let Kind::String(text) = &value.kind else {
                    return Err(src.error(
                        at,
                        &key_field,
                        format!(
                            "expected \"schema.table\" or \"table\", got {}",
                            describe(value)
                        ),
                    ));
                };
                let (schema, table) = text.split_once('.').unwrap_or(("public", text));
                let ident = |s: &str| {
                    (1..=63).contains(&s.len())
                        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                        && s.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                };
                if !ident(schema) || !ident(table) {
                    return Err(src.error(
                        at,
                        &key_field,
                        format!(
                            "{text:?} is not a table name Shoal can watch: use \"schema.table\" \
                             or \"table\" with lowercase letters, digits and \"_\" (quoted \
                             identifiers are not supported)"
                        ),
                    ));
                }
                trigger.schema = schema.to_owned();
                trigger.table = table.to_owned();
            }
            "operations" => {
                let Kind::Array(items) = &value.kind else {
                    return Err(src.error(
                        at,
                        &key_field,
                        format!(
                            "expected a list like [\"INSERT\", \"UPDATE\", \"DELETE\"], got {}",
                            describe(value)
                        ),
                    ));
                };
                let mut operations = Vec::new();
                for item in items {
                    let item_at = item.start().unwrap_or(at);
                    match &item.kind {
                        Kind::String(op)
                            if OPERATIONS.contains(&op.to_ascii_uppercase().as_str()) =>
                        {
                            let op = op.to_ascii_uppercase();
                            if !operations.contains(&op) {
                                operations.push(op);
                            }
                        }
                        _ => {
                            return Err(src.error(
                                item_at,
                                &key_field,
                                format!(
                                "{} is not an operation; use \"INSERT\", \"UPDATE\" or \"DELETE\"",
                                describe(item)
                            ),
                            ))
                        }
                    }
                }
                if operations.is_empty() {
                    return Err(src.error(
                        at,
                        &key_field,
                        "an empty list captures nothing; name at least one of \"INSERT\", \
                         \"UPDATE\", \"DELETE\" (or leave operations out for all three)",
                    ));
                }
                operations.sort_by_key(|op| OPERATIONS.iter().position(|o| o == op));
                trigger.operations = operations;
            }
            "batch_size" => {
                trigger.batch_size = count(
                    src,
                    &key_field,
                    "batch_size",
                    value,
                    at,
                    STREAM_BATCH_SIZE.0,
                    STREAM_BATCH_SIZE.1,
                )?
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
            "parallelization_factor" => {
                trigger.parallelization_factor = count(
                    src,
                    &key_field,
                    "parallelization_factor",
                    value,
                    at,
                    PARALLELIZATION.0,
                    PARALLELIZATION.1,
                )?
            }
            "maximum_retry_attempts" => {
                trigger.maximum_retry_attempts = count(
                    src,
                    &key_field,
                    "maximum_retry_attempts",
                    value,
                    at,
                    STREAM_RETRIES.0,
                    STREAM_RETRIES.1,
                )?
            }
            "report_batch_item_failures" => {
                trigger.report_batch_item_failures = boolean(src, &key_field, value, at)?
            }
            "on_failure" => trigger.on_failure = Some(queue_name(src, &key_field, value, at)?),
            other => {
                let at = key.start().unwrap_or(offset);
                return Err(unknown_key(src, at, &key_field, other, POSTGRES_KEYS));
            }
        }
    }
    for (name, missing) in [
        ("url_env", trigger.url_env.is_empty()),
        ("table", trigger.table.is_empty()),
    ] {
        if missing {
            return Err(src.error(
                at,
                field,
                format!(
                    "{name} is required: {{ postgres = {{ url_env = \"DATABASE_URL\", table = \
                     \"public.orders\" }} }}"
                ),
            ));
        }
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
