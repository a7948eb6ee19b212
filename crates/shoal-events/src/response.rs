//! Mapping a function's Lambda proxy result to the HTTP response, per API Gateway HTTP API
//! rules for payload format 2.0.
//!
//! A JSON object with a `statusCode` key is a proxy response and is checked strictly: a
//! malformed one is the function's bug, reported to the client as 502 with API Gateway's
//! `{"message":"Internal Server Error"}` and to the log through [`ResponseError`]. Any
//! other valid JSON is returned as is with 200 and `application/json`. Header names and
//! values are validated here so the server can build its response without another check.
//! This module does not write to a socket or log anything itself.
//!
//! A proxy result is hostile input to the gateway: it must not decide how the response is
//! framed. Hop-by-hop and framing headers ([`is_framing_header`]) are dropped, so the
//! server alone sets the body's length; a 1xx status is refused; and the headers are
//! capped in number ([`MAX_HEADERS`]) and size ([`MAX_HEADER_BYTES`]).

use base64::Engine as _;
use serde_json::{Map, Value};

/// Most header lines a proxy result may set, counting each value of `multiValueHeaders`
/// and each cookie: more is a malformed result. Generous for any real response, and well
/// below what makes an HTTP client or proxy refuse one.
pub const MAX_HEADERS: usize = 100;
/// Most bytes a proxy result's header lines may take as written (`name: value` and the
/// line end), like the 16 KiB many proxies and load balancers accept.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Headers that frame the message or belong to one connection (RFC 9110 §7.6.1, plus the
/// length and transfer coding and the legacy `keep-alive` and `proxy-connection`). A
/// function cannot set them: its `content-length: 0` followed by a body would otherwise
/// split the response in two. `name` is lower case.
pub fn is_framing_header(name: &str) -> bool {
    matches!(
        name,
        "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "upgrade"
            | "te"
            | "trailer"
    )
}

/// The HTTP response for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Lower-case names, valid header values; may repeat (e.g. `set-cookie`).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why a function's result could not be mapped to a response (a 502 for the client).
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    #[error("function result is not valid JSON")]
    InvalidJson(#[source] serde_json::Error),
    #[error(
        "`statusCode` {found} is not an HTTP status; return a number from 100 to 599 such as 404"
    )]
    StatusCode { found: String },
    #[error("`{field}` must be {expected}, found {found}")]
    FieldType {
        field: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("`{field}` has header name {name:?}, which is not a valid HTTP header name")]
    HeaderName { field: &'static str, name: String },
    #[error("`{field}` has a value for {name:?} with control characters (such as a newline), which HTTP headers cannot carry")]
    HeaderValue { field: &'static str, name: String },
    #[error("`body` is marked `isBase64Encoded` but is not valid base64")]
    Base64(#[source] base64::DecodeError),
    #[error("`statusCode` {0} is informational (1xx), which only the server may send; return a final status such as 200")]
    InformationalStatus(u16),
    #[error("the result sets more than {MAX_HEADERS} header lines (headers, multiValueHeaders and cookies together)")]
    TooManyHeaders,
    #[error("the result's headers take more than {MAX_HEADER_BYTES} bytes")]
    HeadersTooLarge,
    #[error("a payload 1.0 route needs a proxy result ({{\"statusCode\": 200, \"body\": \"...\"}}), found {found}")]
    NotAProxyResult { found: &'static str },
}

/// [`try_map_response`], with a malformed result mapped to API Gateway's 502.
pub fn map_response(result_json: &[u8], payload: crate::PayloadFormat) -> HttpResponse {
    try_map_response(result_json, payload).unwrap_or_else(|_| internal_server_error())
}

/// Maps a result for a route of `payload`'s format: 2.0 as [`try_map_v2_response`]; 1.0
/// takes only a proxy result (an object with `statusCode`), as API Gateway does.
pub fn try_map_response(
    result_json: &[u8],
    payload: crate::PayloadFormat,
) -> Result<HttpResponse, ResponseError> {
    match payload {
        crate::PayloadFormat::V2 => try_map_v2_response(result_json),
        crate::PayloadFormat::V1 => {
            let value: Value =
                serde_json::from_slice(result_json).map_err(ResponseError::InvalidJson)?;
            match value {
                Value::Object(obj) if obj.contains_key("statusCode") => proxy_response(&obj),
                other => Err(ResponseError::NotAProxyResult {
                    found: kind(&other),
                }),
            }
        }
    }
}

/// Maps the handler's JSON result bytes to an HTTP response; a malformed result becomes
/// 502 `{"message":"Internal Server Error"}`. Use [`try_map_v2_response`] to log why.
pub fn map_v2_response(result_json: &[u8]) -> HttpResponse {
    try_map_v2_response(result_json).unwrap_or_else(|_| internal_server_error())
}

/// Like [`map_v2_response`], but says what was wrong with a malformed result.
pub fn try_map_v2_response(result_json: &[u8]) -> Result<HttpResponse, ResponseError> {
    let value: Value = serde_json::from_slice(result_json).map_err(ResponseError::InvalidJson)?;
    match value {
        Value::Object(obj) if obj.contains_key("statusCode") => proxy_response(&obj),
        // A string is the body itself, as API Gateway sends `return "hello"`: unquoted.
        Value::String(text) => Ok(HttpResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: text.into_bytes(),
        }),
        // AWS: "If your Lambda function returns valid JSON and doesn't return a statusCode,
        // API Gateway assumes" 200, application/json, and the result as the body.
        _ => Ok(HttpResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: result_json.to_vec(),
        }),
    }
}

fn internal_server_error() -> HttpResponse {
    HttpResponse {
        status: 502,
        headers: vec![("content-type".into(), "application/json".into())],
        body: br#"{"message":"Internal Server Error"}"#.to_vec(),
    }
}

fn proxy_response(obj: &Map<String, Value>) -> Result<HttpResponse, ResponseError> {
    let status = status_code(&obj["statusCode"])?;
    if status < 200 {
        return Err(ResponseError::InformationalStatus(status));
    }

    let single = object_field(obj, "headers")?;
    let multi = object_field(obj, "multiValueHeaders")?;

    let mut budget = HeaderBudget::default();
    let mut multi_headers = Vec::new();
    for (name, values) in multi.into_iter().flatten() {
        let name = header_name("multiValueHeaders", name)?;
        let values = match values {
            Value::Null => continue,
            Value::Array(values) => values,
            other => {
                return Err(type_error(
                    format!("multiValueHeaders.{name}"),
                    "an array",
                    other,
                ))
            }
        };
        for value in values {
            let field = || format!("multiValueHeaders.{name}");
            if let Some(value) = scalar_text(value, field)? {
                let value = header_value("multiValueHeaders", &name, value)?;
                if budget.admit(&name, &value)? {
                    multi_headers.push((name.clone(), value));
                }
            }
        }
    }

    let mut headers = Vec::new();
    for (name, value) in single.into_iter().flatten() {
        let name = header_name("headers", name)?;
        let Some(value) = scalar_text(value, || format!("headers.{name}"))? else {
            continue;
        };
        let value = header_value("headers", &name, value)?;
        // As API Gateway documents for 1.0: a pair given in both maps appears once.
        let in_multi = multi_headers.iter().any(|(n, v)| *n == name && *v == value);
        if !in_multi && budget.admit(&name, &value)? {
            headers.push((name, value));
        }
    }
    headers.extend(multi_headers);

    match obj.get("cookies") {
        None | Some(Value::Null) => {}
        Some(Value::Array(cookies)) => {
            for cookie in cookies {
                let Value::String(cookie) = cookie else {
                    return Err(type_error("cookies[]".into(), "a string", cookie));
                };
                let cookie = header_value("cookies", "set-cookie", cookie.clone())?;
                budget.admit("set-cookie", &cookie)?;
                headers.push(("set-cookie".into(), cookie));
            }
        }
        Some(other) => return Err(type_error("cookies".into(), "an array of strings", other)),
    }

    let is_base64 = match obj.get("isBase64Encoded") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(type_error("isBase64Encoded".into(), "true or false", other)),
    };
    let body = match obj.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) if is_base64 => decode_base64(text)?,
        Some(Value::String(text)) => text.as_bytes().to_vec(),
        Some(other) => {
            return Err(type_error(
                "body".into(),
                "a string (serialize JSON bodies first)",
                other,
            ))
        }
    };

    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// What the header lines collected so far take, against the caps.
#[derive(Default)]
struct HeaderBudget {
    lines: usize,
    bytes: usize,
}

impl HeaderBudget {
    /// Whether the line is kept: framing headers are dropped and count for nothing; past
    /// a cap the result is malformed.
    fn admit(&mut self, name: &str, value: &str) -> Result<bool, ResponseError> {
        if is_framing_header(name) {
            return Ok(false);
        }
        self.lines += 1;
        if self.lines > MAX_HEADERS {
            return Err(ResponseError::TooManyHeaders);
        }
        // As written: `name: value` and CRLF.
        self.bytes += name.len() + value.len() + 4;
        if self.bytes > MAX_HEADER_BYTES {
            return Err(ResponseError::HeadersTooLarge);
        }
        Ok(true)
    }
}

/// Only a JSON integer is accepted: AWS documents `statusCode` as a number, and a string
/// such as `"404"` is rejected rather than coerced so a function that works on Shoal does
/// not break on AWS.
fn status_code(value: &Value) -> Result<u16, ResponseError> {
    match value.as_u64() {
        Some(code @ 100..=599) => Ok(code as u16),
        _ => Err(ResponseError::StatusCode {
            found: value.to_string(),
        }),
    }
}

fn object_field<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a Map<String, Value>>, ResponseError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(type_error(field.into(), "an object", other)),
    }
}

/// Header values may be any scalar, as handlers often return numbers
/// (`"content-length": 12`) or booleans; `null` means no header.
fn scalar_text(
    value: &Value,
    field: impl FnOnce() -> String,
) -> Result<Option<String>, ResponseError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        other => Err(type_error(field(), "a string, number or boolean", other)),
    }
}

fn header_name(field: &'static str, name: &str) -> Result<String, ResponseError> {
    // RFC 9110 token characters.
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if valid {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(ResponseError::HeaderName {
            field,
            name: name.into(),
        })
    }
}

/// Rejects control characters (CR/LF would split the response) but allows tab and
/// non-ASCII text, the same set hyper's `HeaderValue` accepts.
fn header_value(field: &'static str, name: &str, value: String) -> Result<String, ResponseError> {
    if value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
    {
        Ok(value)
    } else {
        Err(ResponseError::HeaderValue {
            field,
            name: name.into(),
        })
    }
}

/// Standard alphabet; padding optional and ASCII whitespace ignored, because runtimes
/// differ (Python's `encodebytes` wraps lines) and none of that is ambiguous.
fn decode_base64(text: &str) -> Result<Vec<u8>, ResponseError> {
    use base64::engine::{
        general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig,
    };
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    LENIENT.decode(compact).map_err(ResponseError::Base64)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn type_error(field: String, expected: &'static str, found: &Value) -> ResponseError {
    let found = kind(found);
    ResponseError::FieldType {
        field,
        expected,
        found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(result: &str) -> String {
        try_map_v2_response(result.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(error(r#"{"statusCode":"404"}"#).contains(r#"`statusCode` "404""#));
        assert!(error(r#"{"statusCode":200,"body":{"a":1}}"#).contains("`body` must be a string"));
        assert!(error(r#"{"statusCode":200,"headers":{"x":[1]}}"#).contains("`headers.x`"));
        assert!(error(r#"{"statusCode":200,"multiValueHeaders":{"x":"a"}}"#)
            .contains("`multiValueHeaders.x` must be an array"));
        assert!(error(r#"{"statusCode":200,"cookies":"a=b"}"#).contains("`cookies`"));
        assert!(error(r#"{"statusCode":200,"isBase64Encoded":"true"}"#).contains("isBase64Encoded"));
        assert!(error(r#"{"statusCode":200,"cookies":["a=b\nx"]}"#).contains("control characters"));
        assert!(error("{").contains("not valid JSON"));
    }

    #[test]
    fn hostile_framing_is_refused_with_a_reason() {
        assert!(error(r#"{"statusCode":101}"#).contains("informational"));
        assert!(error(r#"{"statusCode":100,"body":"x"}"#).contains("`statusCode` 100"));
        let many: Map<String, Value> = (0..=MAX_HEADERS)
            .map(|i| (format!("x-{i}"), Value::from("v")))
            .collect();
        let result = serde_json::json!({ "statusCode": 200, "headers": many });
        assert!(error(&result.to_string()).contains("more than 100 header lines"));
        let big = serde_json::json!({ "statusCode": 200, "headers": { "x": "v".repeat(MAX_HEADER_BYTES) } });
        assert!(error(&big.to_string()).contains("more than 16384 bytes"));
    }

    #[test]
    fn a_hundred_thousand_headers_in_both_maps_are_refused_without_a_quadratic_scan() {
        // Both maps full of pairs that the `headers`/`multiValueHeaders` deduplication would
        // compare against each other; the cap stops it after the first hundred.
        let single: Map<String, Value> = (0..100_000)
            .map(|i| (format!("x-{i}"), Value::from("v")))
            .collect();
        let multi: Map<String, Value> = (0..100_000)
            .map(|i| (format!("y-{i}"), Value::from(vec!["v"])))
            .collect();
        let result =
            serde_json::json!({ "statusCode": 200, "headers": single, "multiValueHeaders": multi });
        assert!(matches!(
            try_map_v2_response(result.to_string().as_bytes()),
            Err(ResponseError::TooManyHeaders)
        ));
    }

    #[test]
    fn framing_headers_are_dropped_and_count_for_nothing() {
        assert!(["Content-Length", "TE", "trailer", "Upgrade"]
            .iter()
            .all(|n| is_framing_header(&n.to_ascii_lowercase())));
        assert!(!is_framing_header("content-type"));
        // A hundred real headers plus framing ones: still within the cap.
        let mut headers: Map<String, Value> = (0..MAX_HEADERS)
            .map(|i| (format!("x-{i}"), Value::from("v")))
            .collect();
        headers.insert("content-length".into(), Value::from(0));
        headers.insert("transfer-encoding".into(), Value::from("chunked"));
        let result = serde_json::json!({ "statusCode": 200, "headers": headers, "body": "four" });
        let response = try_map_v2_response(result.to_string().as_bytes()).unwrap();
        assert_eq!(response.headers.len(), MAX_HEADERS);
        assert!(response.headers.iter().all(|(n, _)| !is_framing_header(n)));
        assert_eq!(response.body, b"four");
    }

    #[test]
    fn malformed_results_become_502() {
        let resp = map_v2_response(br#"{"statusCode":"404"}"#);
        assert_eq!(resp.status, 502);
        assert_eq!(resp.body, br#"{"message":"Internal Server Error"}"#);
    }
}
