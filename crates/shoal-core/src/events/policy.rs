//! What happens to an asynchronous event after an attempt: the envelope that travels with
//! it through the store, and the pure retry rules (Lambda's: a failed attempt is retried
//! after about one minute, then two; a throttled one with a growing delay up to five
//! minutes without using up a retry; nothing is attempted past the maximum event age).
//! No clock and no IO here: callers pass the time in.

use serde::{Deserialize, Serialize};
use shoal_manifest::AsyncConfig;

/// The longest wait before a throttled event is tried again.
const MAX_THROTTLE_DELAY_MS: u64 = 5 * 60_000;
/// The first wait after a throttle.
const FIRST_THROTTLE_DELAY_MS: u64 = 1_000;

/// Where an async event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Source {
    /// An `Event` invocation through the Invoke API.
    Invoke,
    /// A schedule fire.
    Schedule,
}

/// What the store keeps beside an async event's payload: stays with the event through
/// retries (each retry is a new message, so the store's receive count restarts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Envelope {
    /// The request id the handler sees on every attempt.
    #[serde(rename = "rid")]
    pub(crate) request_id: String,
    #[serde(rename = "src")]
    pub(crate) source: Source,
    /// When the event was first accepted (epoch ms): its age counts from here.
    #[serde(rename = "at")]
    pub(crate) accepted_ms: i64,
    /// Attempts that ran and failed before this message was written.
    #[serde(rename = "n", default)]
    pub(crate) prior_attempts: u32,
    /// Throttles so far (they set the next throttle delay, not the attempt count).
    #[serde(rename = "t", default)]
    pub(crate) throttles: u32,
    /// A schedule fire delivered late, after the daemon was down at its time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) late: bool,
}

impl Envelope {
    pub(crate) fn new(request_id: String, source: Source, accepted_ms: i64) -> Envelope {
        Envelope {
            request_id,
            source,
            accepted_ms,
            prior_attempts: 0,
            throttles: 0,
            late: false,
        }
    }

    pub(crate) fn encode(&self) -> String {
        serde_json::to_string(self).expect("an envelope always encodes")
    }

    pub(crate) fn decode(text: Option<&str>) -> Option<Envelope> {
        serde_json::from_str(text?).ok()
    }

    /// The attempt about to run, 1-based: the attempts that ran and failed, plus this one.
    /// A receive that never settled (the daemon died after taking the event, perhaps
    /// before running it) is not counted: charging it would drop events Lambda would
    /// still retry, every time the daemon dies several times in a row. A poison event that
    /// kills the daemon itself is still bounded, by `maximum_event_age`.
    pub(crate) fn attempt(&self) -> u32 {
        self.prior_attempts + 1
    }
}

/// How an attempt ended, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    Succeeded,
    /// The handler threw, timed out, crashed, or the instance failed to start.
    Failed,
    /// No capacity: the attempt never ran.
    Throttled,
}

/// Why an event gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Condition {
    RetriesExhausted,
    EventAgeExceeded,
}

impl Condition {
    /// As Lambda writes it in a destination record.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Condition::RetriesExhausted => "RetriesExhausted",
            Condition::EventAgeExceeded => "EventAgeExceeded",
        }
    }

    /// The `reason` label of a dropped event.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Condition::RetriesExhausted => "retries_exhausted",
            Condition::EventAgeExceeded => "event_age_exceeded",
        }
    }
}

/// What to do next with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    Done,
    /// Write it back to run again after `delay_ms`, with this envelope.
    Retry {
        delay_ms: u64,
        envelope: Envelope,
    },
    GiveUp(Condition),
}

/// The retry rules. `retry_base_ms` is the wait before the first retry (Lambda: about a
/// minute); the n-th retry waits n times that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    pub(crate) maximum_retry_attempts: u32,
    pub(crate) maximum_event_age_ms: u64,
    pub(crate) retry_base_ms: u64,
}

impl Policy {
    pub(crate) fn new(config: &AsyncConfig, retry_base_ms: u64) -> Policy {
        Policy {
            maximum_retry_attempts: config.maximum_retry_attempts,
            maximum_event_age_ms: config.maximum_event_age_ms,
            retry_base_ms,
        }
    }

    /// Before an attempt: is the event still young enough to run?
    pub(crate) fn expired(&self, envelope: &Envelope, now_ms: i64) -> bool {
        now_ms.saturating_sub(envelope.accepted_ms) > self.maximum_event_age_ms as i64
    }

    /// After attempt number `attempt` (1-based) ended as `how`, at `now_ms`.
    pub(crate) fn after(
        &self,
        envelope: &Envelope,
        attempt: u32,
        how: Attempt,
        now_ms: i64,
    ) -> Next {
        match how {
            Attempt::Succeeded => Next::Done,
            Attempt::Failed => {
                if attempt > self.maximum_retry_attempts {
                    return Next::GiveUp(Condition::RetriesExhausted);
                }
                let delay_ms = self.retry_base_ms.saturating_mul(u64::from(attempt));
                self.retry(envelope, attempt, envelope.throttles, delay_ms, now_ms)
            }
            Attempt::Throttled => {
                let exponent = envelope.throttles.min(16);
                let delay_ms = (FIRST_THROTTLE_DELAY_MS << exponent).min(MAX_THROTTLE_DELAY_MS);
                self.retry(
                    envelope,
                    attempt.saturating_sub(1),
                    envelope.throttles + 1,
                    delay_ms,
                    now_ms,
                )
            }
        }
    }

    fn retry(
        &self,
        envelope: &Envelope,
        done: u32,
        throttles: u32,
        delay_ms: u64,
        now_ms: i64,
    ) -> Next {
        // A retry that could only start after the event's age ran out gives up now, with
        // the condition that will be true then.
        let starts = now_ms.saturating_add(delay_ms as i64);
        if starts.saturating_sub(envelope.accepted_ms) > self.maximum_event_age_ms as i64 {
            return Next::GiveUp(Condition::EventAgeExceeded);
        }
        Next::Retry {
            delay_ms,
            envelope: Envelope {
                prior_attempts: done,
                throttles,
                ..envelope.clone()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(&AsyncConfig::default(), 60_000)
    }

    fn envelope() -> Envelope {
        Envelope::new("r-1".into(), Source::Invoke, 1_000)
    }

    #[test]
    fn a_failure_is_retried_after_one_then_two_minutes_then_gives_up() {
        let p = policy();
        let e = envelope();
        let Next::Retry {
            delay_ms,
            envelope: e,
        } = p.after(&e, e.attempt(), Attempt::Failed, 2_000)
        else {
            panic!("first failure must retry");
        };
        assert_eq!(delay_ms, 60_000);
        assert_eq!(e.attempt(), 2);
        let Next::Retry {
            delay_ms,
            envelope: e,
        } = p.after(&e, e.attempt(), Attempt::Failed, 70_000)
        else {
            panic!("second failure must retry");
        };
        assert_eq!(delay_ms, 120_000);
        assert_eq!(
            p.after(&e, e.attempt(), Attempt::Failed, 200_000),
            Next::GiveUp(Condition::RetriesExhausted)
        );
    }

    #[test]
    fn zero_retries_gives_up_on_the_first_failure() {
        let p = Policy {
            maximum_retry_attempts: 0,
            ..policy()
        };
        let e = envelope();
        assert_eq!(
            p.after(&e, 1, Attempt::Failed, 2_000),
            Next::GiveUp(Condition::RetriesExhausted)
        );
    }

    #[test]
    fn receives_that_never_settled_do_not_use_up_retries() {
        // The daemon died twice after taking this event and before it settled (the kill
        // test found an event dropped after one real failure this way): the attempt that
        // runs now is still the first.
        let e = envelope();
        assert_eq!(e.attempt(), 1);
        assert!(matches!(
            policy().after(&e, e.attempt(), Attempt::Failed, 2_000),
            Next::Retry { .. }
        ));
    }

    #[test]
    fn throttles_back_off_without_using_a_retry() {
        let p = policy();
        let mut e = envelope();
        let mut delays = Vec::new();
        for _ in 0..12 {
            let Next::Retry { delay_ms, envelope } =
                p.after(&e, e.attempt(), Attempt::Throttled, 2_000)
            else {
                panic!("a throttle must retry");
            };
            delays.push(delay_ms);
            e = envelope;
        }
        assert_eq!(&delays[..4], &[1_000, 2_000, 4_000, 8_000]);
        assert_eq!(*delays.last().unwrap(), MAX_THROTTLE_DELAY_MS);
        assert_eq!(e.attempt(), 1, "throttles are not attempts");
    }

    #[test]
    fn an_old_event_gives_up_with_event_age_exceeded() {
        let p = Policy {
            maximum_event_age_ms: 90_000,
            ..policy()
        };
        let e = envelope();
        assert!(!p.expired(&e, 91_000));
        assert!(p.expired(&e, 91_001));
        // The first retry would start at 60 s + 40 s after acceptance: past 90 s.
        assert_eq!(
            p.after(&e, 1, Attempt::Failed, 40_000),
            Next::GiveUp(Condition::EventAgeExceeded)
        );
    }

    #[test]
    fn the_envelope_round_trips_and_ignores_garbage() {
        let mut e = envelope();
        e.late = true;
        assert_eq!(Envelope::decode(Some(&e.encode())), Some(e));
        assert_eq!(Envelope::decode(Some("not json")), None);
        assert_eq!(Envelope::decode(None), None);
    }
}
