//! Data-driven tests: each case under `tests/cases/` is an input file next to its expected
//! output, `NAME.expected.json`. Run with `UPDATE_EXPECT=1` to rewrite the expected files,
//! then read the diff: a wrong snapshot is a bug, not a fix.
//!
//! - `request/NAME.json`: routes, plus a request; expected is the event of the route's
//!   payload format (2.0, or 1.0 for a route with `"payload": "1.0"`).
//! - `response/NAME.result`: the function's raw result bytes (possibly not JSON);
//!   expected is `{status, headers, body}` (or `body_base64` when the body is not UTF-8).
//! - `response_v1/NAME.result`: the same, for a payload 1.0 route.
//! - `sqs/NAME.json`: a queue name and its batch's records; expected is the SQS event.
//! - `batch_response/NAME.json`: a batch's message ids and the function's raw response
//!   text; expected is `{outcome, failed | reason}`.
//! - `scheduled/NAME.json`: a fire (and maybe a constant `input`); expected is the payload.
//! - `destination/NAME.json`: a failed async event; expected is the destination record.
//!
//! Cases named `*_docs_example` are AWS's documented examples, with only the account,
//! region and ARNs replaced by Shoal's local ones.
//!
//! Outputs are compared as JSON values, so key order in the files does not matter.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use shoal_events::{
    build_failure_record, build_sqs_event, build_v1_event, build_v2_event, map_response,
    parse_batch_response, scheduled_payload, AttemptResponse, BatchOutcome, FailureCondition,
    FailureRecord, HttpRequest, MessageAttribute, PayloadFormat, RouteTable, ScheduledEvent,
    SqsRecord,
};
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestCase {
    routes: Vec<RouteSpec>,
    #[serde(default = "default_api_id")]
    api_id: String,
    #[serde(default = "default_domain")]
    domain_name: String,
    request: RequestSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSpec {
    method: Option<String>,
    path: String,
    target: String,
    /// `"1.0"` for a REST-style route.
    #[serde(default)]
    payload: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    method: String,
    path: String,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    /// Body as UTF-8 text...
    #[serde(default)]
    body: Option<String>,
    /// ...or as base64, for binary bodies.
    #[serde(default)]
    body_base64: Option<String>,
    #[serde(default = "default_source_ip")]
    source_ip: String,
    #[serde(default = "default_request_id")]
    request_id: String,
    #[serde(default = "default_time")]
    time_epoch_ms: u64,
    /// The function the routes should pick.
    expect_target: String,
}

fn default_api_id() -> String {
    "shoal1".into()
}
fn default_domain() -> String {
    "shoal1.gateway.localhost".into()
}
fn default_source_ip() -> String {
    "192.0.2.1".into()
}
fn default_request_id() -> String {
    "JKJaXmPLvHcESHA=".into()
}
fn default_time() -> u64 {
    // 12/Mar/2020:19:03:58 +0000
    1_584_039_838_390
}

fn cases_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cases")
        .join(kind)
}

/// Input files of one kind, sorted so failures list in a stable order.
fn inputs(kind: &str, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(cases_dir(kind))
        .unwrap_or_else(|e| panic!("reading {}: {e}", cases_dir(kind).display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.ends_with(ext) && !name.ends_with(".expected.json")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no {kind} cases found");
    files
}

fn expected_path(input: &Path) -> PathBuf {
    let stem = input.file_stem().unwrap().to_string_lossy();
    input.with_file_name(format!("{stem}.expected.json"))
}

/// Compares `actual` with the snapshot, or rewrites it under `UPDATE_EXPECT=1`.
/// Returns a failure description.
fn check(input: &Path, actual: &Value) -> Option<String> {
    let path = expected_path(input);
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        let text = serde_json::to_string_pretty(actual).unwrap() + "\n";
        fs::write(&path, text).unwrap();
        return None;
    }
    let expected: Value = match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display())),
        Err(e) => {
            return Some(format!(
                "{}: {e} (run with UPDATE_EXPECT=1)",
                path.display()
            ))
        }
    };
    (expected != *actual).then(|| {
        format!(
            "{} differs\n--- expected\n{}\n--- actual\n{}",
            path.display(),
            serde_json::to_string_pretty(&expected).unwrap(),
            serde_json::to_string_pretty(actual).unwrap()
        )
    })
}

fn report(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn request_cases() {
    let mut failures = Vec::new();
    for input in inputs("request", ".json") {
        let case: RequestCase = serde_json::from_slice(&fs::read(&input).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", input.display()));
        let mut table = RouteTable::new();
        for r in &case.routes {
            let payload = match r.payload.as_deref() {
                None | Some("2.0") => PayloadFormat::V2,
                Some("1.0") => PayloadFormat::V1,
                Some(other) => panic!("{}: payload {other:?}", input.display()),
            };
            table
                .insert_with_payload(r.method.as_deref(), &r.path, r.target.clone(), payload)
                .unwrap();
        }
        let spec = &case.request;
        let headers: Vec<(&str, &[u8])> = spec
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        let body = match (&spec.body, &spec.body_base64) {
            (Some(text), None) => text.clone().into_bytes(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
            (None, None) => Vec::new(),
            (Some(_), Some(_)) => panic!("{}: give body or body_base64, not both", input.display()),
        };
        let req = HttpRequest {
            method: &spec.method,
            path: &spec.path,
            query: spec.query.as_deref(),
            headers: &headers,
            body: &body,
            source_ip: &spec.source_ip,
            request_id: &spec.request_id,
            time_epoch_ms: spec.time_epoch_ms,
        };
        let Some((target, m)) = table.lookup(req.method, req.path) else {
            failures.push(format!("{}: no route matched", input.display()));
            continue;
        };
        if target != spec.expect_target {
            failures.push(format!(
                "{}: routed to {target}, expected {}",
                input.display(),
                spec.expect_target
            ));
            continue;
        }
        let event = match m.payload {
            PayloadFormat::V2 => build_v2_event(&req, &m, &case.api_id, &case.domain_name),
            PayloadFormat::V1 => build_v1_event(&req, &m, &case.api_id, &case.domain_name),
        };
        let event: Value = serde_json::from_slice(&event).expect("event is JSON");
        failures.extend(check(&input, &event));
    }
    report(failures);
}

#[test]
fn response_cases() {
    let mut failures = Vec::new();
    let v2 = inputs("response", ".result")
        .into_iter()
        .map(|input| (input, PayloadFormat::V2));
    let v1 = inputs("response_v1", ".result")
        .into_iter()
        .map(|input| (input, PayloadFormat::V1));
    for (input, payload) in v2.chain(v1) {
        let result = fs::read(&input).unwrap();
        let mut resp = map_response(&result, payload);
        // Header order across names follows the JSON object's key order, which depends on
        // serde_json's `preserve_order` feature (unified across the workspace); the order
        // of values within one name is what matters, and a stable sort keeps it.
        resp.headers.sort_by(|a, b| a.0.cmp(&b.0));
        let headers: Vec<Value> = resp.headers.iter().map(|(n, v)| json!([n, v])).collect();
        let actual = match String::from_utf8(resp.body) {
            Ok(body) => json!({ "status": resp.status, "headers": headers, "body": body }),
            Err(e) => json!({
                "status": resp.status,
                "headers": headers,
                "body_base64": base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
            }),
        };
        failures.extend(check(&input, &actual));
    }
    report(failures);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqsCase {
    queue: String,
    records: Vec<SqsRecordSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqsRecordSpec {
    message_id: String,
    receipt_handle: String,
    body: String,
    md5_of_body: String,
    receive_count: u32,
    sent_at_ms: i64,
    first_received_at_ms: i64,
    sender_id: String,
    #[serde(default)]
    message_attributes: BTreeMap<String, MessageAttribute>,
}

fn read_case<T: for<'de> Deserialize<'de>>(input: &Path) -> T {
    serde_json::from_slice(&fs::read(input).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", input.display()))
}

fn json_bytes(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("output is JSON")
}

#[test]
fn sqs_cases() {
    let mut failures = Vec::new();
    for input in inputs("sqs", ".json") {
        let case: SqsCase = read_case(&input);
        let records: Vec<SqsRecord> = case
            .records
            .iter()
            .map(|r| SqsRecord {
                message_id: &r.message_id,
                receipt_handle: &r.receipt_handle,
                body: &r.body,
                md5_of_body: &r.md5_of_body,
                receive_count: r.receive_count,
                sent_at_ms: r.sent_at_ms,
                first_received_at_ms: r.first_received_at_ms,
                sender_id: &r.sender_id,
                message_attributes: r.message_attributes.clone(),
            })
            .collect();
        let event = build_sqs_event(&case.queue, &records);
        failures.extend(check(&input, &json_bytes(&event)));
    }
    report(failures);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchResponseCase {
    batch: Vec<String>,
    /// Raw response text, which need not be JSON.
    response: String,
}

#[test]
fn batch_response_cases() {
    let mut failures = Vec::new();
    for input in inputs("batch_response", ".json") {
        let case: BatchResponseCase = read_case(&input);
        let outcome = parse_batch_response(case.response.as_bytes(), &case.batch);
        let actual = match &outcome {
            BatchOutcome::AllSucceeded => json!({ "outcome": "all_succeeded" }),
            BatchOutcome::SomeFailed(ids) => json!({ "outcome": "some_failed", "failed": ids }),
            BatchOutcome::AllFailed(why) => {
                json!({ "outcome": "all_failed", "reason": why.to_string() })
            }
        };
        failures.extend(check(&input, &actual));
    }
    report(failures);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduledCase {
    id: String,
    time_ms: i64,
    rule_name: String,
    #[serde(default)]
    input: Option<Value>,
}

#[test]
fn scheduled_cases() {
    let mut failures = Vec::new();
    for input in inputs("scheduled", ".json") {
        let case: ScheduledCase = read_case(&input);
        let fire = ScheduledEvent {
            id: &case.id,
            time_ms: case.time_ms,
            rule_name: &case.rule_name,
        };
        let payload = scheduled_payload(&fire, case.input.as_ref());
        failures.extend(check(&input, &json_bytes(&payload)));
    }
    report(failures);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DestinationCase {
    time_ms: i64,
    request_id: String,
    function_name: String,
    qualifier: String,
    condition: String,
    approximate_invoke_count: u32,
    request_payload: String,
    #[serde(default)]
    response: Option<ResponseSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseSpec {
    status_code: u16,
    executed_version: String,
    #[serde(default)]
    function_error: Option<String>,
    payload: String,
}

#[test]
fn destination_cases() {
    let mut failures = Vec::new();
    for input in inputs("destination", ".json") {
        let case: DestinationCase = read_case(&input);
        let condition = match case.condition.as_str() {
            "RetriesExhausted" => FailureCondition::RetriesExhausted,
            "EventAgeExceeded" => FailureCondition::EventAgeExceeded,
            other => panic!("{}: unknown condition {other}", input.display()),
        };
        let record = FailureRecord {
            time_ms: case.time_ms,
            request_id: &case.request_id,
            function_name: &case.function_name,
            qualifier: &case.qualifier,
            condition,
            approximate_invoke_count: case.approximate_invoke_count,
            request_payload: case.request_payload.as_bytes(),
            response: case.response.as_ref().map(|r| AttemptResponse {
                status_code: r.status_code,
                executed_version: &r.executed_version,
                function_error: r.function_error.as_deref(),
                payload: r.payload.as_bytes(),
            }),
        };
        failures.extend(check(&input, &json_bytes(&build_failure_record(&record))));
    }
    report(failures);
}
