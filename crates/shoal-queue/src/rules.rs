//! SQS's rules for queue names, queue attributes and messages, checked the same way by
//! every backend (and by the API layer before it calls one). Pure functions: no storage,
//! no clock.

use crate::{NewMessage, QueueConfig, QueueError, Result};

/// SQS's longest queue name.
const MAX_USER_NAME: usize = 80;
/// Internal names are `prefix:rest`, the rest often a function name (up to 64 characters),
/// so they get more room than SQS gives a user.
const MAX_INTERNAL_NAME: usize = 160;

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;
pub(crate) const MAX_VISIBILITY_MS: u64 = 12 * HOUR_MS;
pub(crate) const MAX_DELAY_MS: u64 = 15 * 60_000;
pub(crate) const MAX_RECEIVE: usize = 10_000;

/// Whether `name` is one of the core's internal queues (it contains `:`).
pub fn is_internal(name: &str) -> bool {
    name.contains(':')
}

/// Checks a queue name: a user name is 1 to 80 of `[A-Za-z0-9_-]` (SQS's rule); an
/// internal one (the core's) is `prefix:rest`, with a non-empty prefix of those
/// characters and a rest that may also hold `:`, 160 characters at most.
pub fn validate_name(name: &str) -> Result<()> {
    let invalid = |why| {
        Err(QueueError::InvalidName {
            name: name.to_owned(),
            why,
        })
    };
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if name.is_empty() {
        return invalid("a queue name cannot be empty");
    }
    match name.split_once(':') {
        None => {
            if name.len() > MAX_USER_NAME {
                return invalid("a queue name has at most 80 characters");
            }
            if !name.chars().all(plain) {
                return invalid("a queue name may hold only letters, digits, \"_\" and \"-\"");
            }
        }
        Some((prefix, rest)) => {
            if name.len() > MAX_INTERNAL_NAME {
                return invalid("an internal queue name has at most 160 characters");
            }
            if prefix.is_empty() || !prefix.chars().all(plain) {
                return invalid("an internal queue name starts with a prefix and \":\"");
            }
            if !rest.chars().all(|c| plain(c) || c == ':') {
                return invalid(
                    "an internal queue name may hold only letters, digits, \"_\", \"-\" and \":\"",
                );
            }
        }
    }
    Ok(())
}

impl QueueConfig {
    /// Checks every attribute against SQS's ranges, naming the attribute as SQS does. Says
    /// nothing about whether a dead-letter queue exists: that is the backend's to check.
    pub fn validate(&self, own_name: &str) -> Result<()> {
        let invalid = |name: &str, why: String| {
            Err(QueueError::InvalidAttribute {
                name: name.to_owned(),
                why,
            })
        };
        if self.visibility_timeout_ms > MAX_VISIBILITY_MS {
            return invalid("VisibilityTimeout", "at most 12 hours (43,200 s)".into());
        }
        if !(60_000..=14 * DAY_MS).contains(&self.retention_ms) {
            return invalid(
                "MessageRetentionPeriod",
                "from 60 s to 14 days (1,209,600 s)".into(),
            );
        }
        if self.delay_ms > MAX_DELAY_MS {
            return invalid("DelaySeconds", "at most 15 minutes (900 s)".into());
        }
        if !(1_024..=262_144).contains(&self.max_message_bytes) {
            return invalid("MaximumMessageSize", "from 1,024 to 262,144 bytes".into());
        }
        if self.receive_wait_ms > 20_000 {
            return invalid("ReceiveMessageWaitTimeSeconds", "at most 20 s".into());
        }
        if let Some(redrive) = &self.redrive {
            if !(1..=1000).contains(&redrive.max_receive_count) {
                return invalid("RedrivePolicy", "maxReceiveCount is from 1 to 1000".into());
            }
            if let Err(err) = validate_name(&redrive.dead_letter) {
                return invalid("RedrivePolicy", err.to_string());
            }
            if redrive.dead_letter == own_name {
                return invalid(
                    "RedrivePolicy",
                    "a queue cannot be its own dead-letter queue".into(),
                );
            }
        }
        Ok(())
    }
}

/// The bytes a message counts for, against the queue's maximum and the store's cap: its
/// body plus its encoded attributes.
pub(crate) fn message_size(message: &NewMessage) -> usize {
    message.body.len() + message.attributes.as_ref().map_or(0, String::len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Redrive;

    #[test]
    fn user_names_follow_sqs() {
        for good in ["a", "jobs", "Jobs_2-x", &"q".repeat(80)] {
            validate_name(good).unwrap();
            assert!(!is_internal(good));
        }
        for bad in ["", &"q".repeat(81), "a.b", "a b", "jöbs", "a/b"] {
            assert!(
                matches!(validate_name(bad), Err(QueueError::InvalidName { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn internal_names_need_a_prefix() {
        for good in [
            "async:hello",
            "dest:fn:1",
            &format!("async:{}", "f".repeat(64)),
        ] {
            validate_name(good).unwrap();
            assert!(is_internal(good));
        }
        for bad in [":x", "a:b c", "a.b:c", &format!("a:{}", "f".repeat(160))] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn config_ranges_follow_sqs() {
        QueueConfig::default().validate("q").unwrap();
        let attr = |config: QueueConfig| match config.validate("q") {
            Err(QueueError::InvalidAttribute { name, .. }) => name,
            other => panic!("{other:?}"),
        };
        let base = QueueConfig::default;
        assert_eq!(
            attr(QueueConfig {
                visibility_timeout_ms: MAX_VISIBILITY_MS + 1,
                ..base()
            }),
            "VisibilityTimeout"
        );
        assert_eq!(
            attr(QueueConfig {
                retention_ms: 59_999,
                ..base()
            }),
            "MessageRetentionPeriod"
        );
        assert_eq!(
            attr(QueueConfig {
                max_message_bytes: 1_023,
                ..base()
            }),
            "MaximumMessageSize"
        );
        let redrive = |dead_letter: &str, max_receive_count| QueueConfig {
            redrive: Some(Redrive {
                dead_letter: dead_letter.into(),
                max_receive_count,
            }),
            ..base()
        };
        assert_eq!(attr(redrive("dlq", 0)), "RedrivePolicy");
        assert_eq!(attr(redrive("q", 3)), "RedrivePolicy");
        assert_eq!(attr(redrive("bad name", 3)), "RedrivePolicy");
        redrive("dlq", 1000).validate("q").unwrap();
    }
}
