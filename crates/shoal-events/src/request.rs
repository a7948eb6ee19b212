//! Building the API Gateway HTTP API event, payload format 2.0, from a request the gateway
//! has already read.
//!
//! Field rules follow AWS's documented 2.0 shape: cookies lifted out of the `cookie`
//! header, repeated headers and query keys joined with `,`, absent collections omitted
//! rather than `null`, and the body as text only when it is UTF-8 with a textual content
//! type (base64 otherwise). It does not choose the route (see `route`) or read the clock:
//! the caller passes the request id and time, which keeps the output reproducible.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Serialize;

use crate::aws::ACCOUNT_ID;
use crate::percent;

/// One incoming HTTP request, already read by the gateway.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// Raw path, percent-encoded as received.
    pub path: &'a str,
    /// Raw query string without the `?`; `None` when the URL had none.
    pub query: Option<&'a str>,
    /// Header names lower-case, in the order received; repeats allowed.
    pub headers: &'a [(String, Vec<u8>)],
    pub body: &'a [u8],
    pub source_ip: &'a str,
    pub request_id: &'a str,
    pub time_epoch_ms: u64,
}

/// The route a request matched, as the event reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// As declared, e.g. `GET /items/{id}` or `ANY /x`.
    pub route_key: String,
    /// Percent-decoded values by parameter name (`proxy` for `{proxy+}`).
    pub path_params: BTreeMap<String, String>,
    /// Always `$default`: Shoal has one auto-deployed stage per gateway.
    pub stage: String,
}

// Field order mirrors AWS's documented example so events read the same in logs.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventV2<'a> {
    version: &'static str,
    route_key: &'a str,
    raw_path: &'a str,
    raw_query_string: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cookies: Vec<&'a str>,
    headers: BTreeMap<&'a str, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    query_string_parameters: BTreeMap<String, String>,
    request_context: RequestContext<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    path_parameters: &'a BTreeMap<String, String>,
    is_base64_encoded: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestContext<'a> {
    account_id: &'static str,
    api_id: &'a str,
    domain_name: &'a str,
    domain_prefix: &'a str,
    http: HttpContext<'a>,
    request_id: &'a str,
    route_key: &'a str,
    stage: &'a str,
    time: String,
    time_epoch: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HttpContext<'a> {
    method: &'a str,
    path: &'a str,
    protocol: &'static str,
    source_ip: &'a str,
    user_agent: String,
}

/// Builds the API Gateway HTTP API (payload format 2.0) event as JSON bytes.
pub fn build_v2_event(
    req: &HttpRequest,
    m: &RouteMatch,
    api_id: &str,
    domain_name: &str,
) -> Vec<u8> {
    let mut headers: BTreeMap<&str, String> = BTreeMap::new();
    let mut cookies = Vec::new();
    let mut content_type = None;
    for (name, value) in req.headers {
        if name == "cookie" {
            // Borrowing needs the value as &str; a cookie header that is not UTF-8 is
            // dropped rather than mangled, since the handler could not parse it anyway.
            if let Ok(value) = std::str::from_utf8(value) {
                cookies.extend(value.split(';').map(str::trim).filter(|c| !c.is_empty()));
            }
            continue;
        }
        let value = String::from_utf8_lossy(value);
        if name == "content-type" && content_type.is_none() {
            content_type = Some(value.clone().into_owned());
        }
        headers
            .entry(name.as_str())
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let user_agent = headers.get("user-agent").cloned().unwrap_or_default();

    let (body, is_base64_encoded) = encode_body(req.body, content_type.as_deref());

    let event = EventV2 {
        version: "2.0",
        route_key: &m.route_key,
        raw_path: req.path,
        raw_query_string: req.query.unwrap_or(""),
        cookies,
        headers,
        query_string_parameters: query_parameters(req.query.unwrap_or("")),
        request_context: RequestContext {
            account_id: ACCOUNT_ID,
            api_id,
            domain_name,
            domain_prefix: domain_name.split('.').next().unwrap_or(domain_name),
            http: HttpContext {
                method: req.method,
                path: req.path,
                protocol: "HTTP/1.1",
                source_ip: req.source_ip,
                user_agent,
            },
            request_id: req.request_id,
            route_key: &m.route_key,
            stage: &m.stage,
            time: format_clf_time(req.time_epoch_ms),
            time_epoch: req.time_epoch_ms,
        },
        body,
        path_parameters: &m.path_params,
        is_base64_encoded,
    };
    // Serializing plain strings, integers and maps with string keys cannot fail.
    serde_json::to_vec(&event).expect("event serializes")
}

/// Decoded query parameters; repeated keys joined with `,` in the order received, as
/// payload 2.0 does. A key without `=` gets an empty value; an empty key is dropped.
fn query_parameters(raw: &str) -> BTreeMap<String, String> {
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent::decode(key, true).into_owned();
        if key.is_empty() {
            // `=x` names nothing a handler could look up.
            continue;
        }
        let value = percent::decode(value, true);
        params
            .entry(key)
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    params
}

/// The body as the event carries it: `None` when empty, text when it is UTF-8 and the
/// content type says text, base64 otherwise (with `isBase64Encoded: true`).
fn encode_body(body: &[u8], content_type: Option<&str>) -> (Option<String>, bool) {
    if body.is_empty() {
        return (None, false);
    }
    if content_type.is_some_and(is_textual) {
        if let Ok(text) = std::str::from_utf8(body) {
            return (Some(text.to_owned()), false);
        }
    }
    (
        Some(base64::engine::general_purpose::STANDARD.encode(body)),
        true,
    )
}

fn is_textual(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media.starts_with("text/")
        || media.ends_with("+json")
        || media.ends_with("+xml")
        || matches!(
            media.as_str(),
            "application/json"
                | "application/xml"
                | "application/x-www-form-urlencoded"
                | "application/javascript"
        )
}

/// `time` in the access-log form AWS uses: `12/Mar/2020:19:03:58 +0000` (always UTC).
fn format_clf_time(epoch_ms: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = epoch_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[month as usize - 1],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31) in the proleptic Gregorian
/// calendar; Howard Hinnant's `civil_from_days`, restricted to dates after the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_time_like_aws() {
        assert_eq!(format_clf_time(0), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(
            format_clf_time(1_583_348_638_390),
            "04/Mar/2020:19:03:58 +0000"
        );
        assert_eq!(
            format_clf_time(1_584_039_838_000),
            "12/Mar/2020:19:03:58 +0000"
        );
        // Leap day and the last second of a year.
        assert_eq!(
            format_clf_time(951_782_400_000),
            "29/Feb/2000:00:00:00 +0000"
        );
        assert_eq!(
            format_clf_time(1_704_067_199_999),
            "31/Dec/2023:23:59:59 +0000"
        );
    }

    #[test]
    fn textual_content_types() {
        for ct in [
            "text/plain",
            "text/html; charset=utf-8",
            "Application/JSON",
            "application/vnd.api+json",
            "application/atom+xml",
            "application/x-www-form-urlencoded",
            "application/javascript",
        ] {
            assert!(is_textual(ct), "{ct}");
        }
        for ct in [
            "application/octet-stream",
            "image/png",
            "multipart/form-data; boundary=x",
            "",
        ] {
            assert!(!is_textual(ct), "{ct}");
        }
    }

    #[test]
    fn query_without_values_and_empty_pairs() {
        let params = query_parameters("flag&&a=&b=1=2&=x");
        let expected: BTreeMap<String, String> = [("flag", ""), ("a", ""), ("b", "1=2")]
            .map(|(k, v)| (k.into(), v.into()))
            .into();
        assert_eq!(params, expected);
    }
}
