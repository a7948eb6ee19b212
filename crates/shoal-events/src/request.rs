//! Building API Gateway's proxy events from a request the gateway has already read: the
//! HTTP API's payload format 2.0 ([`build_v2_event`]), and format 1.0 ([`build_v1_event`]),
//! the REST API's shape, for routes that ask for it.
//!
//! Field rules follow AWS's documented 2.0 shape: cookies lifted out of the `cookie`
//! header, repeated headers and query keys joined with `,`, absent collections omitted
//! rather than `null`, and the body as text only when it is UTF-8 with a textual content
//! type (base64 otherwise). It does not choose the route (see `route`) or read the clock:
//! the caller passes the request id and time, which keeps the output reproducible.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Serialize;

use crate::aws::ACCOUNT_ID;
use crate::{json, percent};

/// One incoming HTTP request, already read by the gateway.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// Raw path, percent-encoded as received.
    pub path: &'a str,
    /// Raw query string without the `?`; `None` when the URL had none.
    pub query: Option<&'a str>,
    /// Header names lower-case, in the order received; repeats allowed.
    pub headers: &'a [(&'a str, &'a [u8])],
    pub body: &'a [u8],
    pub source_ip: &'a str,
    /// API Gateway's own id of the request (`requestContext.requestId`), not the Lambda
    /// request id the handler's context carries.
    pub request_id: &'a str,
    pub time_epoch_ms: u64,
}

/// The event shape a route sends: API Gateway's payload format versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PayloadFormat {
    /// The REST API's shape (`httpMethod`, `multiValueHeaders`, ...).
    V1,
    /// The HTTP API's default shape (`rawPath`, `cookies`, ...).
    #[default]
    V2,
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
    /// Which event the route's function gets.
    pub payload: PayloadFormat,
}

impl RouteMatch {
    /// The route's path template (`/items/{id}`): payload 1.0's `resource`.
    pub fn resource(&self) -> &str {
        self.route_key
            .split_once(' ')
            .map_or(self.route_key.as_str(), |(_, path)| path)
    }
}

/// Builds the API Gateway HTTP API (payload format 2.0) event as JSON bytes.
///
/// Written by hand (every HTTP call builds one): field order as in AWS's documented
/// example, so events read the same in logs; strings escaped as serde escapes them
/// ([`json`]); header values borrowed unless a name repeats.
pub fn build_v2_event(
    req: &HttpRequest,
    m: &RouteMatch,
    api_id: &str,
    domain_name: &str,
) -> Vec<u8> {
    // Headers by name (a stable sort keeps each name's values in the order received);
    // cookies lifted out of their header.
    let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(req.headers.len());
    let mut cookies: Vec<&str> = Vec::new();
    for &(name, value) in req.headers {
        if name == "cookie" {
            // Borrowing needs the value as &str; a cookie header that is not UTF-8 is
            // dropped rather than mangled, since the handler could not parse it anyway.
            if let Ok(value) = std::str::from_utf8(value) {
                cookies.extend(value.split(';').map(str::trim).filter(|c| !c.is_empty()));
            }
            continue;
        }
        headers.push((name, value));
    }
    headers.sort_by(|a, b| a.0.cmp(b.0));
    let content_type = headers
        .iter()
        .find(|(name, _)| *name == "content-type")
        .map(|(_, value)| String::from_utf8_lossy(value));
    let (body, is_base64_encoded) = encode_body(req.body, content_type.as_deref());
    let query = query_parameters(req.query.unwrap_or(""));

    let mut out = Vec::with_capacity(
        640 + req.path.len() * 2
            + req.query.map_or(0, |q| q.len() * 2)
            + req
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 6)
                .sum::<usize>()
            + body.as_ref().map_or(0, |b| b.len() + 16),
    );
    let field = |out: &mut Vec<u8>, name: &str| {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
    };
    out.extend_from_slice(b"{\"version\":\"2.0\"");
    field(&mut out, "routeKey");
    json::push_str(&mut out, &m.route_key);
    field(&mut out, "rawPath");
    json::push_str(&mut out, req.path);
    field(&mut out, "rawQueryString");
    json::push_str(&mut out, req.query.unwrap_or(""));
    if !cookies.is_empty() {
        field(&mut out, "cookies");
        out.push(b'[');
        for (i, cookie) in cookies.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json::push_str(&mut out, cookie);
        }
        out.push(b']');
    }
    field(&mut out, "headers");
    out.push(b'{');
    let mut user_agent = std::borrow::Cow::Borrowed("");
    let mut at = 0;
    while at < headers.len() {
        let name = headers[at].0;
        let same = headers[at..].iter().take_while(|(n, _)| *n == name).count();
        if at > 0 {
            out.push(b',');
        }
        json::push_str(&mut out, name);
        out.push(b':');
        // Repeated headers joined with `,`, as API Gateway does.
        let value = match same {
            1 => String::from_utf8_lossy(headers[at].1),
            _ => std::borrow::Cow::Owned(
                headers[at..at + same]
                    .iter()
                    .map(|(_, v)| String::from_utf8_lossy(v))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        };
        json::push_str(&mut out, &value);
        if name == "user-agent" {
            user_agent = value;
        }
        at += same;
    }
    out.push(b'}');
    if !query.is_empty() {
        field(&mut out, "queryStringParameters");
        push_map(&mut out, &query);
    }
    field(&mut out, "requestContext");
    out.extend_from_slice(b"{\"accountId\":");
    json::push_str(&mut out, ACCOUNT_ID);
    field(&mut out, "apiId");
    json::push_str(&mut out, api_id);
    field(&mut out, "domainName");
    json::push_str(&mut out, domain_name);
    field(&mut out, "domainPrefix");
    json::push_str(
        &mut out,
        domain_name.split('.').next().unwrap_or(domain_name),
    );
    field(&mut out, "http");
    out.extend_from_slice(b"{\"method\":");
    json::push_str(&mut out, req.method);
    field(&mut out, "path");
    json::push_str(&mut out, req.path);
    field(&mut out, "protocol");
    out.extend_from_slice(b"\"HTTP/1.1\"");
    field(&mut out, "sourceIp");
    json::push_str(&mut out, req.source_ip);
    field(&mut out, "userAgent");
    json::push_str(&mut out, &user_agent);
    out.push(b'}');
    field(&mut out, "requestId");
    json::push_str(&mut out, req.request_id);
    field(&mut out, "routeKey");
    json::push_str(&mut out, &m.route_key);
    field(&mut out, "stage");
    json::push_str(&mut out, &m.stage);
    field(&mut out, "time");
    out.push(b'"');
    push_clf_time(&mut out, req.time_epoch_ms);
    out.push(b'"');
    field(&mut out, "timeEpoch");
    json::push_u64(&mut out, req.time_epoch_ms);
    out.push(b'}');
    if let Some(body) = &body {
        field(&mut out, "body");
        json::push_str(&mut out, body);
    }
    if !m.path_params.is_empty() {
        field(&mut out, "pathParameters");
        push_map(&mut out, &m.path_params);
    }
    field(&mut out, "isBase64Encoded");
    out.extend_from_slice(if is_base64_encoded {
        b"true}"
    } else {
        b"false}"
    });
    out
}

/// A map of strings as a JSON object, in the map's (sorted) order.
fn push_map(out: &mut Vec<u8>, map: &BTreeMap<String, String>) {
    out.push(b'{');
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::push_str(out, key);
        out.push(b':');
        json::push_str(out, value);
    }
    out.push(b'}');
}

// Payload 1.0, field order as in AWS's documented example. Absent collections are `null`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventV1<'a> {
    version: &'static str,
    resource: &'a str,
    path: &'a str,
    http_method: &'a str,
    headers: Option<BTreeMap<&'a str, String>>,
    multi_value_headers: Option<BTreeMap<&'a str, Vec<String>>>,
    query_string_parameters: Option<BTreeMap<String, String>>,
    multi_value_query_string_parameters: Option<BTreeMap<String, Vec<String>>>,
    request_context: RequestContextV1<'a>,
    path_parameters: Option<&'a BTreeMap<String, String>>,
    stage_variables: Option<BTreeMap<String, String>>,
    body: Option<Cow<'a, str>>,
    is_base64_encoded: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestContextV1<'a> {
    account_id: &'static str,
    api_id: &'a str,
    domain_name: &'a str,
    domain_prefix: &'a str,
    extended_request_id: &'a str,
    http_method: &'a str,
    identity: Identity<'a>,
    path: &'a str,
    protocol: &'static str,
    request_id: &'a str,
    request_time: String,
    request_time_epoch: u64,
    resource_id: &'a str,
    resource_path: &'a str,
    stage: &'a str,
}

/// `requestContext.identity`: Shoal knows the caller's address and user agent only.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Identity<'a> {
    access_key: Option<&'a str>,
    account_id: Option<&'a str>,
    caller: Option<&'a str>,
    cognito_authentication_provider: Option<&'a str>,
    cognito_authentication_type: Option<&'a str>,
    cognito_identity_id: Option<&'a str>,
    cognito_identity_pool_id: Option<&'a str>,
    principal_org_id: Option<&'a str>,
    source_ip: &'a str,
    user: Option<&'a str>,
    user_agent: Option<String>,
    user_arn: Option<&'a str>,
}

/// Builds the API Gateway REST-style (payload format 1.0) event as JSON bytes: every
/// header and query value in the `multiValue` maps, the last one in the single-value
/// maps, the `cookie` header left as a header, and `null` for whatever is absent.
pub fn build_v1_event(
    req: &HttpRequest,
    m: &RouteMatch,
    api_id: &str,
    domain_name: &str,
) -> Vec<u8> {
    let mut headers: BTreeMap<&str, String> = BTreeMap::new();
    let mut multi_headers: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut content_type = None;
    for &(name, value) in req.headers {
        let value = String::from_utf8_lossy(value).into_owned();
        if name == "content-type" && content_type.is_none() {
            content_type = Some(value.clone());
        }
        headers.insert(name, value.clone());
        multi_headers.entry(name).or_default().push(value);
    }
    let user_agent = headers.get("user-agent").cloned();
    let mut query: BTreeMap<String, String> = BTreeMap::new();
    let mut multi_query: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, value) in query_pairs(req.query.unwrap_or("")) {
        query.insert(key.clone(), value.clone());
        multi_query.entry(key).or_default().push(value);
    }
    let (body, is_base64_encoded) = encode_body(req.body, content_type.as_deref());
    let some = |empty: bool| !empty;
    let event = EventV1 {
        version: "1.0",
        resource: m.resource(),
        path: req.path,
        http_method: req.method,
        headers: some(headers.is_empty()).then_some(headers),
        multi_value_headers: some(multi_headers.is_empty()).then_some(multi_headers),
        query_string_parameters: some(query.is_empty()).then_some(query),
        multi_value_query_string_parameters: some(multi_query.is_empty()).then_some(multi_query),
        request_context: RequestContextV1 {
            account_id: ACCOUNT_ID,
            api_id,
            domain_name,
            domain_prefix: domain_name.split('.').next().unwrap_or(domain_name),
            extended_request_id: req.request_id,
            http_method: req.method,
            identity: Identity {
                access_key: None,
                account_id: None,
                caller: None,
                cognito_authentication_provider: None,
                cognito_authentication_type: None,
                cognito_identity_id: None,
                cognito_identity_pool_id: None,
                principal_org_id: None,
                source_ip: req.source_ip,
                user: None,
                user_agent,
                user_arn: None,
            },
            path: req.path,
            protocol: "HTTP/1.1",
            request_id: req.request_id,
            request_time: format_clf_time(req.time_epoch_ms),
            request_time_epoch: req.time_epoch_ms,
            resource_id: &m.route_key,
            resource_path: m.resource(),
            stage: &m.stage,
        },
        path_parameters: some(m.path_params.is_empty()).then_some(&m.path_params),
        stage_variables: None,
        body,
        is_base64_encoded,
    };
    serde_json::to_vec(&event).expect("event serializes")
}

/// Decoded query pairs in the order received; a key without `=` gets an empty value, an
/// empty key is dropped.
fn query_pairs(raw: &str) -> impl Iterator<Item = (String, String)> + '_ {
    raw.split('&').filter(|p| !p.is_empty()).filter_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent::decode(key, true).into_owned();
        (!key.is_empty()).then(|| (key, percent::decode(value, true).into_owned()))
    })
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
fn encode_body<'a>(body: &'a [u8], content_type: Option<&str>) -> (Option<Cow<'a, str>>, bool) {
    if body.is_empty() {
        return (None, false);
    }
    if content_type.is_some_and(is_textual) {
        if let Ok(text) = std::str::from_utf8(body) {
            return (Some(Cow::Borrowed(text)), false);
        }
    }
    (
        Some(Cow::Owned(
            base64::engine::general_purpose::STANDARD.encode(body),
        )),
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
    let mut out = Vec::with_capacity(26);
    push_clf_time(&mut out, epoch_ms);
    String::from_utf8(out).expect("ASCII")
}

/// [`format_clf_time`], appended to `out` (no `format!`: every HTTP call writes one).
fn push_clf_time(out: &mut Vec<u8>, epoch_ms: u64) {
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let two = |out: &mut Vec<u8>, n: u64| {
        out.extend_from_slice(&[b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8])
    };
    let secs = epoch_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    two(out, day);
    out.push(b'/');
    out.extend_from_slice(MONTHS[month as usize - 1]);
    out.push(b'/');
    json::push_u64(out, year);
    out.push(b':');
    two(out, rem / 3600);
    out.push(b':');
    two(out, rem % 3600 / 60);
    out.push(b':');
    two(out, rem % 60);
    out.extend_from_slice(b" +0000");
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
