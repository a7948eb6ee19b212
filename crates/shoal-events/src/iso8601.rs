//! ISO-8601 (RFC 3339) text for epoch milliseconds, in UTC with a `Z`, as AWS events write
//! their times.
//!
//! Only formatting: callers pass the instant. Instants outside jiff's range (about the
//! years -9999 to 9999, far beyond any clock reading) are clamped to it rather than
//! refused, so formatting never fails.

use jiff::Timestamp;

fn timestamp(epoch_ms: i64) -> Timestamp {
    Timestamp::from_millisecond(epoch_ms).unwrap_or(if epoch_ms < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// Whole seconds, `2015-10-08T16:53:06Z`, as in EventBridge events' `time`. Milliseconds
/// are dropped (rounded down, also before 1970).
pub fn iso8601_seconds(epoch_ms: i64) -> String {
    timestamp(epoch_ms)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Milliseconds, `2019-11-14T18:16:05.568Z`, as in Lambda destination records'
/// `timestamp`.
pub fn iso8601_millis(epoch_ms: i64) -> String {
    timestamp(epoch_ms)
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_z() {
        assert_eq!(iso8601_seconds(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601_seconds(1_444_323_186_999), "2015-10-08T16:53:06Z");
        assert_eq!(
            iso8601_millis(1_573_755_365_568),
            "2019-11-14T18:16:05.568Z"
        );
    }

    #[test]
    fn rounds_down_before_the_epoch_and_clamps_far_values() {
        assert_eq!(iso8601_seconds(-1), "1969-12-31T23:59:59Z");
        assert_eq!(iso8601_millis(-1), "1969-12-31T23:59:59.999Z");
        // jiff's range ends a little short of the calendar's, to leave room for offsets.
        assert!(iso8601_seconds(i64::MAX).starts_with("9999-12-"));
        let min = iso8601_millis(i64::MIN);
        assert!(min.starts_with("-9999-01-0"), "{min}");
    }
}
