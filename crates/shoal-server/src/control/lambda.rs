//! The Lambda API (`/2015-03-31/...`) on the control listener: `Invoke` with everything
//! its headers and `Qualifier` carry, and the read-only management calls the SDKs and the
//! AWS CLI make (`GetFunction`, `GetFunctionConfiguration`, `ListFunctions`,
//! `ListVersionsByFunction`, `ListAliases`), answered with Lambda's field names.
//!
//! A function is named as Lambda takes it: `NAME`, `NAME:QUALIFIER`, the partial ARN
//! `ACCOUNT:function:NAME[:QUALIFIER]` or the full ARN
//! `arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`.

use base64::Engine;
use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::Method;
use serde_json::{json, Value};
use shoal_api::aliases::AliasInfo;
use shoal_api::headers;
use shoal_core::{InvocationType, InvokeRequest, Platform, VersionDetail};

use super::{Action, Failure};

/// The service name SigV4 signatures for this API are scoped to.
pub(crate) const SERVICE: &str = "lambda";
/// The account in every ARN this daemon writes.
pub(crate) const ACCOUNT: &str = "000000000000";
/// `X-Amz-Log-Result` holds the last 4 KB of the invocation's log, as Lambda's does.
pub(super) const LOG_TAIL_BYTES: usize = 4096;
/// Lambda's limit on `X-Amz-Client-Context` (decoded).
const MAX_CLIENT_CONTEXT: usize = 3583;

/// Whether a path belongs to the Lambda API.
pub(super) fn is_lambda_path(path: &str) -> bool {
    path == "/2015-03-31" || path.starts_with("/2015-03-31/")
}

/// A management call.
#[derive(Debug)]
pub(crate) enum Call {
    GetFunction {
        function: String,
        qualifier: Option<String>,
    },
    GetConfiguration {
        function: String,
        qualifier: Option<String>,
    },
    ListFunctions(Page),
    ListVersions {
        function: String,
        page: Page,
    },
    ListAliases {
        function: String,
        page: Page,
    },
    GetAlias {
        function: String,
        name: String,
    },
}

/// A management call's answer: Lambda's JSON.
#[derive(Debug)]
pub(crate) struct Answer(pub Value);

/// An invoke as the Lambda API asked for it, beyond the core's request.
#[derive(Debug)]
pub(crate) struct InvokeExtras {
    /// `X-Amz-Log-Type: Tail`.
    pub log_tail: bool,
    /// What `X-Amz-Executed-Version` says: `$LATEST` unless a version was named.
    pub executed_latest: bool,
}

/// A function reference split into its name and the qualifier it carries, if any.
pub(super) fn function_ref(raw: &str) -> Result<(String, Option<String>), Failure> {
    let decoded = percent_decode(raw);
    let bad = || {
        Failure::BadRequest(format!(
            "1 validation error detected: Value '{decoded}' at 'functionName' failed to satisfy constraint: it must be a function name, a partial ARN (ACCOUNT:function:NAME) or an ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME), optionally followed by :QUALIFIER"
        ))
    };
    let parts: Vec<&str> = decoded.split(':').collect();
    let (name, qualifier) = match parts.as_slice() {
        [name] => (*name, None),
        [name, qualifier] => (*name, Some(*qualifier)),
        [_account, "function", name] => (*name, None),
        [_account, "function", name, qualifier] => (*name, Some(*qualifier)),
        ["arn", _partition, "lambda", _region, _account, "function", name] => (*name, None),
        ["arn", _partition, "lambda", _region, _account, "function", name, qualifier] => {
            (*name, Some(*qualifier))
        }
        _ => return Err(bad()),
    };
    if name.is_empty() || qualifier.is_some_and(str::is_empty) {
        return Err(bad());
    }
    Ok((name.to_owned(), qualifier.map(str::to_owned)))
}

/// The qualifier of a call: from the name or `?Qualifier=`, which must agree.
fn qualifier(from_name: Option<String>, query: Option<&str>) -> Result<Option<String>, Failure> {
    let from_query = query_param(query, "Qualifier").map(|q| percent_decode(&q));
    match (from_name, from_query) {
        (Some(a), Some(b)) if a != b => Err(Failure::BadRequest(format!(
            "The derived qualifier from the function name ({a}) does not match the specified qualifier ({b})."
        ))),
        (a, b) => Ok(a.or(b)),
    }
}

/// Parse a Lambda API request (already admitted) into an action.
pub(super) fn parse(parts: &Parts, payload: Bytes, request_id: &str) -> Result<Action, Failure> {
    let path = parts.uri.path();
    let query = parts.uri.query();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let no_route = || Failure::NoRoute {
        method: parts.method.clone(),
        path: path.to_owned(),
    };
    Ok(match (&parts.method, segments.as_slice()) {
        (&Method::POST, ["2015-03-31", "functions", name, "invocations"]) => {
            let (function, from_name) = function_ref(name)?;
            let qualifier = qualifier(from_name, query)?;
            let header = |name: &str| {
                parts
                    .headers
                    .get(name)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            };
            let invocation_type = header(headers::INVOCATION_TYPE)
                .map_or(Ok(InvocationType::default()), |t| t.parse())?;
            let log_tail = match header("x-amz-log-type").as_deref() {
                None | Some("None") => false,
                Some("Tail") => true,
                Some(other) => {
                    return Err(Failure::BadRequest(format!(
                        "LogType must be None or Tail, not {other:?}"
                    )))
                }
            };
            let client_context = header("x-amz-client-context")
                .map(|context| client_context(&context))
                .transpose()?;
            Action::Invoke {
                extras: InvokeExtras {
                    log_tail: log_tail && invocation_type == InvocationType::RequestResponse,
                    executed_latest: qualifier.as_deref().is_none_or(|q| q == "$LATEST"),
                },
                request: InvokeRequest {
                    function,
                    payload,
                    invocation_type,
                    request_id: request_id.to_owned(),
                    qualifier,
                    client_context,
                },
            }
        }
        (&Method::GET, ["2015-03-31", "functions"]) => {
            Action::Lambda(Call::ListFunctions(page(query)?))
        }
        (&Method::GET, ["2015-03-31", "functions", name]) => {
            let (function, from_name) = function_ref(name)?;
            Action::Lambda(Call::GetFunction {
                function,
                qualifier: qualifier(from_name, query)?,
            })
        }
        (&Method::GET, ["2015-03-31", "functions", name, "configuration"]) => {
            let (function, from_name) = function_ref(name)?;
            Action::Lambda(Call::GetConfiguration {
                function,
                qualifier: qualifier(from_name, query)?,
            })
        }
        (&Method::GET, ["2015-03-31", "functions", name, "versions"]) => {
            let (function, _) = function_ref(name)?;
            Action::Lambda(Call::ListVersions {
                function,
                page: page(query)?,
            })
        }
        (&Method::GET, ["2015-03-31", "functions", name, "aliases"]) => {
            let (function, _) = function_ref(name)?;
            Action::Lambda(Call::ListAliases {
                function,
                page: page(query)?,
            })
        }
        (&Method::GET, ["2015-03-31", "functions", name, "aliases", alias]) => {
            let (function, _) = function_ref(name)?;
            Action::Lambda(Call::GetAlias {
                function,
                name: percent_decode(alias),
            })
        }
        _ => return Err(no_route()),
    })
}

/// `Marker` and `MaxItems` of a list call: Lambda pages 50 items by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Page {
    /// Items to skip (the marker is the index of the next item, opaque to clients).
    start: usize,
    max_items: usize,
}

impl Page {
    const DEFAULT_ITEMS: usize = 50;
    const MAX_ITEMS: usize = 10_000;

    /// This page's items, and the marker of the next page if there is one.
    fn cut(self, items: Vec<Value>) -> (Vec<Value>, Option<String>) {
        let total = items.len();
        let end = self.start.saturating_add(self.max_items).min(total);
        let page = items
            .into_iter()
            .skip(self.start)
            .take(self.max_items)
            .collect();
        (page, (end < total).then(|| end.to_string()))
    }
}

fn page(query: Option<&str>) -> Result<Page, Failure> {
    let start = match query_param(query, "Marker") {
        Some(marker) => marker.parse().map_err(|_| {
            Failure::BadRequest(format!("Marker {marker:?} is not one this API gave"))
        })?,
        None => 0,
    };
    let max_items = match query_param(query, "MaxItems") {
        Some(n) => n
            .parse()
            .ok()
            .filter(|n| (1..=Page::MAX_ITEMS).contains(n))
            .ok_or_else(|| {
                Failure::BadRequest(format!(
                    "MaxItems must be between 1 and {}, not {n:?}",
                    Page::MAX_ITEMS
                ))
            })?,
        None => Page::DEFAULT_ITEMS,
    };
    Ok(Page { start, max_items })
}

fn with_marker(mut answer: Value, next: Option<String>) -> Value {
    if let Some(next) = next {
        answer["NextMarker"] = Value::String(next);
    }
    answer
}

/// `X-Amz-Client-Context`: base64 of a JSON object, at most 3,583 bytes decoded; the
/// decoded JSON is what the handler gets.
fn client_context(value: &str) -> Result<Bytes, Failure> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| Failure::BadRequest("X-Amz-Client-Context must be base64".into()))?;
    if decoded.len() > MAX_CLIENT_CONTEXT {
        return Err(Failure::BadRequest(format!(
            "Client context must be at most {MAX_CLIENT_CONTEXT} bytes"
        )));
    }
    serde_json::from_slice::<serde_json::Map<String, Value>>(&decoded).map_err(|_| {
        Failure::BadRequest("X-Amz-Client-Context must be base64 of a JSON object".into())
    })?;
    Ok(Bytes::from(decoded))
}

/// Run a management call.
pub(super) async fn run(
    platform: &Platform,
    call: Call,
    region: &str,
) -> shoal_core::Result<Answer> {
    let arn = |function: &str| format!("arn:aws:lambda:{region}:{ACCOUNT}:function:{function}");
    let configuration = |v: &VersionDetail, latest: bool| {
        let version = if latest {
            "$LATEST".to_owned()
        } else {
            v.version.to_string()
        };
        json!({
            "FunctionName": v.function,
            "FunctionArn": if latest { arn(&v.function) } else { format!("{}:{}", arn(&v.function), v.version) },
            "Runtime": runtime_name(&v.runtime),
            "Role": format!("arn:aws:iam::{ACCOUNT}:role/shoal"),
            "Handler": v.handler,
            "CodeSize": v.code_size,
            "Description": "",
            "Timeout": v.timeout_ms.div_ceil(1000),
            "MemorySize": v.memory_mb,
            "LastModified": last_modified(v.created_at_ms),
            "CodeSha256": base64::engine::general_purpose::STANDARD.encode(hex_bytes(&v.code_sha256)),
            "Version": version,
            "Environment": { "Variables": v.env },
            "RevisionId": format!("{}-{}", v.code_sha256.get(..8).unwrap_or(""), v.version),
            "State": "Active",
            "LastUpdateStatus": "Successful",
            "PackageType": "Zip",
            "Architectures": [std::env::consts::ARCH.replace("aarch64", "arm64")],
            "EphemeralStorage": { "Size": v.ephemeral_storage_mb },
        })
    };
    let alias_json = |a: &AliasInfo| {
        let mut weights = serde_json::Map::new();
        if let (Some(v), Some(w)) = (a.additional_version, a.additional_weight) {
            weights.insert(v.to_string(), json!(w));
        }
        let mut alias = json!({
            "AliasArn": format!("{}:{}", arn(&a.function), a.name),
            "Name": a.name,
            "FunctionVersion": a.version.to_string(),
            "Description": "",
            "RevisionId": format!("{}-{}", a.name, a.version),
        });
        if !weights.is_empty() {
            alias["RoutingConfig"] = json!({ "AdditionalVersionWeights": weights });
        }
        alias
    };
    // The version a qualifier names, as the management calls read it (an alias: the
    // version it points at).
    let pick = |versions: Vec<VersionDetail>, function: &str, qualifier: Option<&str>| {
        let not_found = || shoal_core::Error::QualifierNotFound {
            function: function.to_owned(),
            qualifier: qualifier.unwrap_or_default().to_owned(),
        };
        let wanted = match qualifier {
            None | Some("$LATEST") => None,
            Some(q) => match q.parse::<u32>() {
                Ok(v) => Some(v),
                Err(_) => Some(
                    platform
                        .aliases(function)?
                        .into_iter()
                        .find(|a| a.name == q)
                        .ok_or_else(not_found)?
                        .version,
                ),
            },
        };
        match wanted {
            None => versions
                .into_iter()
                .find(|v| v.current)
                .map(|v| (v, true))
                .ok_or_else(not_found),
            Some(wanted) => versions
                .into_iter()
                .find(|v| v.version == wanted)
                .map(|v| (v, false))
                .ok_or_else(not_found),
        }
    };
    Ok(Answer(match call {
        Call::GetConfiguration {
            function,
            qualifier,
        } => {
            let (v, latest) = pick(
                platform.versions(&function)?,
                &function,
                qualifier.as_deref(),
            )?;
            configuration(&v, latest)
        }
        Call::GetFunction {
            function,
            qualifier,
        } => {
            let (v, latest) = pick(
                platform.versions(&function)?,
                &function,
                qualifier.as_deref(),
            )?;
            json!({
                "Configuration": configuration(&v, latest),
                "Code": { "RepositoryType": "Shoal", "Location": "" },
            })
        }
        Call::ListFunctions(page) => {
            let mut functions = Vec::new();
            for name in platform.function_names()? {
                // A function removed between the two reads is simply not listed.
                if let Ok(versions) = platform.versions(&name) {
                    if let Some(v) = versions.iter().find(|v| v.current) {
                        functions.push(configuration(v, true));
                    }
                }
            }
            let (functions, next) = page.cut(functions);
            with_marker(json!({ "Functions": functions }), next)
        }
        Call::ListVersions { function, page } => {
            let versions = platform.versions(&function)?;
            let mut list: Vec<Value> = versions
                .iter()
                .filter(|v| v.current)
                .map(|v| configuration(v, true))
                .collect();
            list.extend(versions.iter().map(|v| configuration(v, false)));
            let (list, next) = page.cut(list);
            with_marker(json!({ "Versions": list }), next)
        }
        Call::ListAliases { function, page } => {
            let aliases: Vec<Value> = platform
                .aliases(&function)?
                .iter()
                .map(alias_json)
                .collect();
            let (aliases, next) = page.cut(aliases);
            with_marker(json!({ "Aliases": aliases }), next)
        }
        Call::GetAlias { function, name } => {
            let alias = platform
                .aliases(&function)?
                .into_iter()
                .find(|a| a.name == name)
                .ok_or(shoal_core::Error::QualifierNotFound {
                    function,
                    qualifier: name,
                })?;
            alias_json(&alias)
        }
    }))
}

/// The runtime identifier Lambda would show.
fn runtime_name(runtime: &shoal_api::Runtime) -> &'static str {
    match runtime {
        shoal_api::Runtime::Nodejs => "nodejs",
        shoal_api::Runtime::Python => "python3",
        shoal_api::Runtime::Provided => "provided.al2023",
    }
}

/// Lambda's `LastModified` format: `2024-05-01T12:00:00.000+0000`.
fn last_modified(ms: i64) -> String {
    let stamp = crate::sigv4::amz_date(ms.div_euclid(1000));
    format!(
        "{}-{}-{}T{}:{}:{}.{:03}+0000",
        &stamp[0..4],
        &stamp[4..6],
        &stamp[6..8],
        &stamp[9..11],
        &stamp[11..13],
        &stamp[13..15],
        ms.rem_euclid(1000)
    )
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn percent_decode(text: &str) -> String {
    crate::sigv4::percent_decode(text)
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    super::query_param(query, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_partial_arns_and_arns_resolve_with_their_qualifier() {
        let ok = |raw: &str| function_ref(raw).map_err(|e| e.to_string()).unwrap();
        assert_eq!(ok("hello"), ("hello".into(), None));
        assert_eq!(ok("hello:3"), ("hello".into(), Some("3".into())));
        assert_eq!(ok("123456789012:function:hello"), ("hello".into(), None));
        assert_eq!(
            ok("123456789012:function:hello:%24LATEST"),
            ("hello".into(), Some("$LATEST".into()))
        );
        assert_eq!(
            ok("arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Ahello"),
            ("hello".into(), None)
        );
        assert_eq!(
            ok("arn:aws:lambda:us-east-1:000000000000:function:hello:live"),
            ("hello".into(), Some("live".into()))
        );
        for bad in ["", "a:b:c", "arn:aws:s3:::bucket", "hello:", "1:function:"] {
            assert!(function_ref(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_qualifier_in_the_name_and_the_query_must_agree() {
        assert_eq!(
            qualifier(Some("1".into()), Some("Qualifier=1")).unwrap(),
            Some("1".into())
        );
        assert_eq!(
            qualifier(None, Some("Qualifier=%24LATEST")).unwrap(),
            Some("$LATEST".into())
        );
        assert!(qualifier(Some("1".into()), Some("Qualifier=2")).is_err());
    }

    #[test]
    fn list_calls_page_with_an_opaque_marker() {
        let items: Vec<Value> = (0..5).map(|i| json!(i)).collect();
        let first = page(Some("MaxItems=2")).unwrap();
        assert_eq!(
            first.cut(items.clone()),
            (vec![json!(0), json!(1)], Some("2".into()))
        );
        let last = page(Some("Marker=4&MaxItems=2")).unwrap();
        assert_eq!(last.cut(items.clone()), (vec![json!(4)], None));
        assert_eq!(page(None).unwrap().cut(items.clone()).0.len(), 5);
        assert!(page(Some("MaxItems=0")).is_err());
        assert!(page(Some("Marker=abc")).is_err());
    }

    #[test]
    fn last_modified_is_lambdas_format() {
        assert_eq!(
            last_modified(1_440_938_160_123),
            "2015-08-30T12:36:00.123+0000"
        );
    }
}
