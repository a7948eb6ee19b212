//! Data-change records: the DynamoDB Streams-shaped event a function receives for a batch
//! of committed row changes (PostgreSQL, `eventSource: "shoal:postgres"`), and the record
//! an on-failure destination receives for a batch that gave up.
//!
//! Column values arrive as JSON text (the database's `to_jsonb` of the row) and are
//! embedded as they are, so a `numeric` keeps every digit it had: nothing here parses and
//! re-prints them. Builds JSON only; it does not read rows or decide failures.

use std::fmt::Write as _;

use crate::aws::{function_arn, ACCOUNT_ID, REGION};
use crate::iso8601::iso8601_millis;

/// One captured change.
#[derive(Debug, Clone, Copy)]
pub struct ChangeRecord<'a> {
    /// Its place in the stream (the outbox id): increasing in commit order per key.
    pub sequence: i64,
    /// `INSERT`, `MODIFY` or `REMOVE`.
    pub event_name: &'a str,
    /// When the row changed (epoch ms).
    pub changed_at_ms: i64,
    /// JSON objects, as text: the primary key's columns, the row after and before.
    pub keys: &'a str,
    pub new_image: Option<&'a str>,
    pub old_image: Option<&'a str>,
}

impl ChangeRecord<'_> {
    /// `SizeBytes`: the bytes of keys and images, as DynamoDB counts its record's size.
    pub fn size_bytes(&self) -> usize {
        self.keys.len() + self.new_image.map_or(0, str::len) + self.old_image.map_or(0, str::len)
    }

    /// The `itemIdentifier` a partial batch response names this record by.
    pub fn sequence_number(&self) -> String {
        self.sequence.to_string()
    }
}

/// `arn:shoal:postgres:local:000000000000:table/<schema.table>/stream/<function>`.
pub fn postgres_stream_arn(table: &str, function: &str) -> String {
    format!("arn:shoal:postgres:{REGION}:{ACCOUNT_ID}:table/{table}/stream/{function}")
}

fn json_string(out: &mut String, s: &str) {
    // A string always serializes.
    out.push_str(&serde_json::to_string(s).expect("string serializes"));
}

fn write_record(out: &mut String, r: &ChangeRecord<'_>, arn: &str) {
    out.push_str("{\"eventID\":");
    json_string(out, &format!("{arn}/{}", r.sequence));
    out.push_str(",\"eventName\":");
    json_string(out, r.event_name);
    out.push_str(",\"eventVersion\":\"1.1\",\"eventSource\":\"shoal:postgres\",\"awsRegion\":");
    json_string(out, REGION);
    out.push_str(",\"eventSourceARN\":");
    json_string(out, arn);
    // DynamoDB gives epoch seconds; the milliseconds are kept as a fraction.
    let _ = write!(
        out,
        ",\"dynamodb\":{{\"ApproximateCreationDateTime\":{}.{:03},\"Keys\":{}",
        r.changed_at_ms.div_euclid(1000),
        r.changed_at_ms.rem_euclid(1000),
        r.keys
    );
    if let Some(image) = r.new_image {
        let _ = write!(out, ",\"NewImage\":{image}");
    }
    if let Some(image) = r.old_image {
        let _ = write!(out, ",\"OldImage\":{image}");
    }
    let _ = write!(
        out,
        ",\"SequenceNumber\":\"{}\",\"SizeBytes\":{},\"StreamViewType\":\"NEW_AND_OLD_IMAGES\"}}}}",
        r.sequence,
        r.size_bytes()
    );
}

fn write_records(out: &mut String, records: &[ChangeRecord<'_>], arn: &str) {
    out.push('[');
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_record(out, r, arn);
    }
    out.push(']');
}

/// The event for a batch (`{"Records": [...]}`), as JSON bytes. `arn` is the stream's
/// ([`postgres_stream_arn`]); images must be JSON object text.
pub fn build_stream_event(arn: &str, records: &[ChangeRecord<'_>]) -> Vec<u8> {
    let mut out =
        String::with_capacity(256 + records.iter().map(|r| r.size_bytes() + 400).sum::<usize>());
    out.push_str("{\"Records\":");
    write_records(&mut out, records, arn);
    out.push('}');
    out.into_bytes()
}

/// What the on-failure destination receives for a batch that gave up.
#[derive(Debug, Clone, Copy)]
pub struct StreamFailure<'a> {
    pub time_ms: i64,
    pub request_id: &'a str,
    pub function_name: &'a str,
    /// Attempts made, the first included.
    pub approximate_invoke_count: u32,
    /// `Unhandled` when the function failed, `None` when the call never ran.
    pub function_error: Option<&'a str>,
    /// Why the last attempt failed, in a few words.
    pub error_message: &'a str,
    pub arn: &'a str,
    pub records: &'a [ChangeRecord<'a>],
}

/// Lambda's stream on-failure record (`requestContext`, `responseContext`,
/// `DDBStreamBatchInfo` with the first and last sequence numbers), plus `Records`: the
/// records themselves, since nothing else keeps them once the batch gives up.
pub fn build_stream_failure(f: &StreamFailure<'_>) -> Vec<u8> {
    let mut out = String::new();
    out.push_str("{\"version\":\"1.0\",\"timestamp\":");
    json_string(&mut out, &iso8601_millis(f.time_ms));
    out.push_str(",\"requestContext\":{\"requestId\":");
    json_string(&mut out, f.request_id);
    out.push_str(",\"functionArn\":");
    json_string(&mut out, &function_arn(f.function_name, "$LATEST"));
    let _ = write!(
        out,
        ",\"condition\":\"RetryAttemptsExhausted\",\"approximateInvokeCount\":{}}}",
        f.approximate_invoke_count
    );
    out.push_str(",\"responseContext\":{\"statusCode\":200,\"executedVersion\":\"$LATEST\"");
    if let Some(error) = f.function_error {
        out.push_str(",\"functionError\":");
        json_string(&mut out, error);
    }
    out.push_str(",\"errorMessage\":");
    json_string(&mut out, f.error_message);
    out.push('}');
    let first = f.records.first();
    let last = f.records.last();
    let seq = |r: Option<&ChangeRecord<'_>>| r.map_or(String::new(), |r| r.sequence.to_string());
    let at =
        |r: Option<&ChangeRecord<'_>>| r.map_or(String::new(), |r| iso8601_millis(r.changed_at_ms));
    out.push_str(",\"DDBStreamBatchInfo\":{\"shardId\":\"shard-0\",\"startSequenceNumber\":");
    json_string(&mut out, &seq(first));
    out.push_str(",\"endSequenceNumber\":");
    json_string(&mut out, &seq(last));
    out.push_str(",\"approximateArrivalOfFirstRecord\":");
    json_string(&mut out, &at(first));
    out.push_str(",\"approximateArrivalOfLastRecord\":");
    json_string(&mut out, &at(last));
    let _ = write!(out, ",\"batchSize\":{},\"streamArn\":", f.records.len());
    json_string(&mut out, f.arn);
    out.push_str("},\"Records\":");
    write_records(&mut out, f.records, f.arn);
    out.push('}');
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<ChangeRecord<'static>> {
        vec![
            ChangeRecord {
                sequence: 7,
                event_name: "INSERT",
                changed_at_ms: 1_764_460_800_123,
                keys: r#"{"id": 1}"#,
                new_image: Some(r#"{"id": 1, "total": 12.50}"#),
                old_image: None,
            },
            ChangeRecord {
                sequence: 9,
                event_name: "REMOVE",
                changed_at_ms: 1_764_460_801_000,
                keys: r#"{"id": 1}"#,
                new_image: None,
                old_image: Some(r#"{"id": 1, "total": 12.50}"#),
            },
        ]
    }

    #[test]
    fn a_stream_event_embeds_images_as_they_are() {
        let arn = postgres_stream_arn("public.orders", "audit");
        let event = build_stream_event(&arn, &records());
        let text = String::from_utf8(event).unwrap();
        // The numeric keeps its trailing zero: the image text is not re-printed.
        assert!(
            text.contains(r#""NewImage":{"id": 1, "total": 12.50}"#),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let r = &v["Records"][0];
        assert_eq!(r["eventName"], "INSERT");
        assert_eq!(r["eventSource"], "shoal:postgres");
        assert_eq!(
            r["eventSourceARN"],
            "arn:shoal:postgres:local:000000000000:table/public.orders/stream/audit"
        );
        assert_eq!(r["dynamodb"]["SequenceNumber"], "7");
        assert_eq!(r["dynamodb"]["Keys"]["id"], 1);
        assert_eq!(
            r["dynamodb"]["ApproximateCreationDateTime"],
            1_764_460_800.123
        );
        assert!(r["dynamodb"].get("OldImage").is_none());
        assert_eq!(v["Records"][1]["dynamodb"]["OldImage"]["id"], 1);
        assert!(v["Records"][1]["dynamodb"].get("NewImage").is_none());
    }

    #[test]
    fn a_failure_record_names_the_batch_and_keeps_its_records() {
        let arn = postgres_stream_arn("public.orders", "audit");
        let records = records();
        let record = build_stream_failure(&StreamFailure {
            time_ms: 1_764_460_900_000,
            request_id: "r-1",
            function_name: "audit",
            approximate_invoke_count: 3,
            function_error: Some("Unhandled"),
            error_message: "boom",
            arn: &arn,
            records: &records,
        });
        let v: serde_json::Value = serde_json::from_slice(&record).unwrap();
        assert_eq!(v["requestContext"]["condition"], "RetryAttemptsExhausted");
        assert_eq!(v["requestContext"]["approximateInvokeCount"], 3);
        assert_eq!(v["DDBStreamBatchInfo"]["startSequenceNumber"], "7");
        assert_eq!(v["DDBStreamBatchInfo"]["endSequenceNumber"], "9");
        assert_eq!(v["DDBStreamBatchInfo"]["batchSize"], 2);
        assert_eq!(v["Records"][1]["eventName"], "REMOVE");
    }
}
