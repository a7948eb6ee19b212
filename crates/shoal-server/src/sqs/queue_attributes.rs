//! Queue attributes as SQS names and writes them (strings of seconds, a JSON
//! `RedrivePolicy`, ARNs) against the backend's [`QueueConfig`]: reading the ones a
//! `CreateQueue` or `SetQueueAttributes` sets, and writing the ones a
//! `GetQueueAttributes` asks for.

use std::collections::BTreeMap;

use shoal_queue::{QueueConfig, QueueInfo, Redrive};

use super::{queue_arn, redrive_policy, Error, MAX_DELAY_SECS, MAX_VISIBILITY_SECS};

/// Attributes Shoal keeps, each checked against SQS's range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Setting {
    VisibilityTimeoutMs(u64),
    RetentionMs(u64),
    DelayMs(u64),
    MaxMessageBytes(usize),
    ReceiveWaitMs(u64),
    /// `None`: the policy is removed (`RedrivePolicy` set to "").
    Redrive(Option<Redrive>),
}

/// Attributes SQS defines that Shoal does not keep. Setting one is refused unless it
/// asks for what Shoal does anyway (`FifoQueue` false, no policy, no server-side
/// encryption); reading one returns nothing, as SQS does for an attribute not set.
const NOT_KEPT: &[&str] = &[
    "Policy",
    "RedriveAllowPolicy",
    "FifoQueue",
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
    "SqsManagedSseEnabled",
    "LastModifiedTimestamp",
];

/// Read-only attributes: `GetQueueAttributes` answers them, nothing sets them.
const READ_ONLY: &[&str] = &[
    "QueueArn",
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "CreatedTimestamp",
];

/// Settable attributes Shoal keeps.
const KEPT: &[&str] = &[
    "VisibilityTimeout",
    "MessageRetentionPeriod",
    "DelaySeconds",
    "MaximumMessageSize",
    "ReceiveMessageWaitTimeSeconds",
    "RedrivePolicy",
];

fn number(name: &str, value: &str, range: std::ops::RangeInclusive<u64>) -> Result<u64, Error> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(|| {
            Error::InvalidAttributeValue(format!(
                "Invalid value for the parameter {name}: {value:?} is not a whole number from {} to {}.",
                range.start(),
                range.end()
            ))
        })
}

/// The settings an attribute map asks for (`CreateQueue`, `SetQueueAttributes`).
pub(crate) fn settings(attributes: BTreeMap<String, String>) -> Result<Vec<Setting>, Error> {
    let mut settings = Vec::new();
    for (name, value) in attributes {
        let setting = match name.as_str() {
            "VisibilityTimeout" => {
                Setting::VisibilityTimeoutMs(number(&name, &value, 0..=MAX_VISIBILITY_SECS)? * 1000)
            }
            "MessageRetentionPeriod" => {
                Setting::RetentionMs(number(&name, &value, 60..=14 * 24 * 3600)? * 1000)
            }
            "DelaySeconds" => Setting::DelayMs(number(&name, &value, 0..=MAX_DELAY_SECS)? * 1000),
            "MaximumMessageSize" => Setting::MaxMessageBytes(number(
                &name,
                &value,
                1024..=super::MAX_PAYLOAD_BYTES as u64,
            )? as usize),
            "ReceiveMessageWaitTimeSeconds" => {
                Setting::ReceiveWaitMs(number(&name, &value, 0..=super::MAX_WAIT_SECS)? * 1000)
            }
            "RedrivePolicy" => Setting::Redrive(redrive(&value)?),
            _ if NOT_KEPT.contains(&name.as_str()) => {
                let harmless = match name.as_str() {
                    "FifoQueue" | "SqsManagedSseEnabled" => value == "false",
                    "Policy" | "RedriveAllowPolicy" => value.is_empty(),
                    _ => false,
                };
                if harmless {
                    continue;
                }
                return Err(Error::InvalidAttributeValue(format!(
                    "Shoal does not support the attribute {name} (value {value:?}): its queues are standard queues with no policies and no KMS encryption."
                )));
            }
            _ => {
                return Err(Error::InvalidAttributeName(format!(
                    "Unknown Attribute {name}."
                )))
            }
        };
        settings.push(setting);
    }
    Ok(settings)
}

/// `{"deadLetterTargetArn": "arn:aws:sqs:...:NAME", "maxReceiveCount": N}` (the count
/// as a number or a string, as SDKs write either); "" removes the policy.
fn redrive(value: &str) -> Result<Option<Redrive>, Error> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    let invalid = |why: &str| {
        Error::InvalidAttributeValue(format!(
            "Value {value} for parameter RedrivePolicy is invalid. Reason: {why}"
        ))
    };
    let policy: serde_json::Value =
        serde_json::from_str(value).map_err(|_| invalid("it is not a JSON object."))?;
    let arn = policy["deadLetterTargetArn"]
        .as_str()
        .ok_or_else(|| invalid("deadLetterTargetArn is missing."))?;
    let parts: Vec<&str> = arn.split(':').collect();
    let dead_letter = match parts.as_slice() {
        ["arn", _, "sqs", _, _, name] if super::is_queue_name(name) => (*name).to_owned(),
        _ => {
            return Err(invalid(
                "deadLetterTargetArn is not a queue ARN (arn:aws:sqs:REGION:ACCOUNT:NAME).",
            ))
        }
    };
    let count = match &policy["maxReceiveCount"] {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    let max_receive_count = count
        .filter(|c| (1..=1000).contains(c))
        .ok_or_else(|| invalid("maxReceiveCount must be a whole number from 1 to 1000."))?
        as u32;
    Ok(Some(Redrive {
        dead_letter,
        max_receive_count,
    }))
}

/// The dead-letter queue a setting names, if any (it must exist).
pub(crate) fn dead_letter(settings: &[Setting]) -> Option<&str> {
    settings.iter().find_map(|s| match s {
        Setting::Redrive(Some(redrive)) => Some(redrive.dead_letter.as_str()),
        _ => None,
    })
}

pub(crate) fn apply(config: &mut QueueConfig, settings: &[Setting]) {
    for setting in settings {
        match setting {
            Setting::VisibilityTimeoutMs(ms) => config.visibility_timeout_ms = *ms,
            Setting::RetentionMs(ms) => config.retention_ms = *ms,
            Setting::DelayMs(ms) => config.delay_ms = *ms,
            Setting::MaxMessageBytes(bytes) => config.max_message_bytes = *bytes,
            Setting::ReceiveWaitMs(ms) => config.receive_wait_ms = *ms,
            Setting::Redrive(redrive) => config.redrive = redrive.clone(),
        }
    }
}

/// Whether `config` already has every setting (`CreateQueue` of an existing queue
/// succeeds only then, as in SQS; attributes it does not name are not compared).
pub(crate) fn matches(config: &QueueConfig, settings: &[Setting]) -> bool {
    let mut changed = config.clone();
    apply(&mut changed, settings);
    changed == *config
}

/// Which attributes `GetQueueAttributes` asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Selection {
    all: bool,
    names: Vec<String>,
}

impl Selection {
    pub(crate) fn new(names: Vec<String>) -> Result<Selection, Error> {
        let mut selection = Selection::default();
        for name in names {
            if name == "All" {
                selection.all = true;
            } else if KEPT.contains(&name.as_str())
                || READ_ONLY.contains(&name.as_str())
                || NOT_KEPT.contains(&name.as_str())
            {
                selection.names.push(name);
            } else {
                return Err(Error::InvalidAttributeName(format!(
                    "Unknown Attribute {name}."
                )));
            }
        }
        Ok(selection)
    }

    fn wants(&self, name: &str) -> bool {
        self.all || self.names.iter().any(|n| n == name)
    }
}

/// The attributes of `info` that `selection` asks for, as SQS writes them.
pub(crate) fn render(info: &QueueInfo, selection: &Selection) -> BTreeMap<String, String> {
    let config = &info.config;
    let secs = |ms: u64| (ms / 1000).to_string();
    let mut all = vec![
        ("VisibilityTimeout", secs(config.visibility_timeout_ms)),
        ("MessageRetentionPeriod", secs(config.retention_ms)),
        ("DelaySeconds", secs(config.delay_ms)),
        ("MaximumMessageSize", config.max_message_bytes.to_string()),
        (
            "ReceiveMessageWaitTimeSeconds",
            secs(config.receive_wait_ms),
        ),
        ("QueueArn", queue_arn(&info.name)),
        (
            "ApproximateNumberOfMessages",
            info.stats.visible.to_string(),
        ),
        (
            "ApproximateNumberOfMessagesNotVisible",
            info.stats.in_flight.to_string(),
        ),
        (
            "ApproximateNumberOfMessagesDelayed",
            info.stats.delayed.to_string(),
        ),
        // SQS writes it in seconds.
        (
            "CreatedTimestamp",
            info.created_at_ms.div_euclid(1000).to_string(),
        ),
    ];
    if let Some(redrive) = &config.redrive {
        all.push(("RedrivePolicy", redrive_policy(redrive)));
    }
    all.into_iter()
        .filter(|(name, _)| selection.wants(name))
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
}
