//! Reads a `shoal.toml` manifest (or a Serverless Framework `serverless.yml`, through
//! [`from_serverless`]) into [`FunctionSpec`]s: parsing, defaults and every
//! validation rule, with errors that name the file, line, column and dotted field
//! (`shoal.toml:3:10: functions.hello.memory: ...`) and say what to do instead.
//!
//! This crate only turns text into values. It must not touch the file system, the
//! network, SQL or processes: callers read the file and pass its text to [`parse`].
#![cfg_attr(not(test), warn(unused_crate_dependencies))]
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod events;
mod routes;
mod serverless;
mod tree;
mod units;
mod validate;

pub use events::{
    AsyncConfig, EventSource, PostgresTrigger, QueueTrigger, ScheduleCheck, ScheduleTrigger,
};
pub use serverless::{from_serverless, Converted, Remark, ServerlessOptions};
pub use units::{format_duration_ms, parse_duration_ms};

pub type Result<T, E = ManifestError> = std::result::Result<T, E>;

/// Every function a manifest declares, sorted by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub functions: Vec<FunctionSpec>,
}

/// One function, with every default filled in and every limit checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionSpec {
    pub name: String,
    pub runtime: Runtime,
    /// `<file>.<export>` for nodejs and python; for `provided` it is passed through to the
    /// bootstrap as `_HANDLER` and defaults to `"bootstrap"`.
    pub handler: String,
    /// Memory limit of one instance; 64..=32768.
    pub memory_mb: u64,
    /// Size of the instance's private `/tmp` (a tmpfs), as Lambda's `EphemeralStorage`;
    /// 16..=10240, default 512.
    #[serde(default = "defaults::ephemeral_storage_mb")]
    pub ephemeral_storage_mb: u64,
    /// Deadline of one invocation; 1 ms..=15 min, as in Lambda.
    pub timeout_ms: u64,
    pub concurrency: Concurrency,
    /// Ceiling for `Concurrency::Auto` and for a fixed limit; keeps one instance from
    /// taking more work than it can ever finish. 1..=10_000.
    pub max_concurrency: u32,
    /// Cap on instances of this function; protects the machine from a runaway burst.
    pub max_instances: u32,
    /// Instances kept warm even when idle; at most `max_instances`.
    pub min_instances: u32,
    /// How long an instance above `min_instances` may sit idle before it is stopped.
    pub idle_timeout_ms: u64,
    /// `concurrency = "auto"`: the busy fraction of one core the controller aims for
    /// (0.05..=1.0; default 0.8).
    #[serde(default = "defaults::target_cpu")]
    pub target_cpu: f64,
    /// `concurrency = "auto"`: how far latency may rise above its uncontended baseline
    /// before the controller backs off, as a multiple (1.05..=10; default 1.5).
    #[serde(default = "defaults::latency_tolerance")]
    pub latency_tolerance: f64,
    pub env: BTreeMap<String, String>,
    pub http: Vec<HttpRoute>,
    /// Queue triggers and schedules.
    #[serde(default)]
    pub events: Vec<EventSource>,
    /// Retries and destination of `Event` invocations and schedule fires.
    #[serde(default)]
    pub async_invoke: AsyncConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Nodejs,
    Python,
    Provided,
}

/// How many invocations one instance may run at once.
///
/// Serialized as `"auto"` or a number, the same way the manifest spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// The scaling controller learns the limit, up to `max_concurrency`.
    Auto,
    /// Exactly this many at most; 1 is Lambda's classic one-at-a-time model.
    Fixed(u32),
}

/// An HTTP route that invokes the function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRoute {
    /// Upper-case method; `None` matches any method.
    pub method: Option<String>,
    /// Starts with `/`; segments are literal, `{param}`, or a final greedy `{name+}`.
    pub path: String,
    /// The API Gateway event the function gets (specs stored before this existed: 2.0).
    #[serde(default, skip_serializing_if = "PayloadVersion::is_default")]
    pub payload: PayloadVersion,
}

/// API Gateway's payload format versions, as a route's `payload` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PayloadVersion {
    /// `"1.0"`: the REST API's event (`httpMethod`, `multiValueHeaders`, ...).
    #[serde(rename = "1.0")]
    V1,
    /// `"2.0"`: the HTTP API's event, the default.
    #[default]
    #[serde(rename = "2.0")]
    V2,
}

impl PayloadVersion {
    fn is_default(&self) -> bool {
        *self == PayloadVersion::V2
    }
}

/// A manifest problem, located in the source text.
///
/// Displays as `file:line:column: field: message` (the field is left out when unknown);
/// lines and columns are 1-based, columns count characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {}{message}", FieldPrefix(.field.as_deref()))]
pub struct ManifestError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted path of the offending field, e.g. `functions.hello.memory`.
    pub field: Option<String>,
    pub message: String,
}

struct FieldPrefix<'a>(Option<&'a str>);

impl fmt::Display for FieldPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(field) => write!(f, "{field}: "),
            None => Ok(()),
        }
    }
}

impl ManifestError {
    /// Builds an error at byte `offset` of `text`.
    pub(crate) fn at(
        file: &str,
        text: &str,
        offset: usize,
        field: Option<String>,
        message: impl Into<String>,
    ) -> ManifestError {
        let (line, column) = line_column(text, offset);
        ManifestError {
            file: file.to_owned(),
            line,
            column,
            field,
            message: message.into(),
        }
    }
}

/// 1-based line and character column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Parses and validates a manifest. `file` is only the name shown in errors. Schedule
/// expressions are taken as written; [`parse_checked`] also checks them.
pub fn parse(file: &str, text: &str) -> Result<Manifest> {
    parse_inner(file, text, None)
}

/// [`parse`], with `check` run on every schedule expression (and its time zone); its
/// error message is reported at the expression.
pub fn parse_checked(file: &str, text: &str, check: ScheduleCheck<'_>) -> Result<Manifest> {
    parse_inner(file, text, Some(check))
}

fn parse_inner(file: &str, text: &str, check: Option<ScheduleCheck<'_>>) -> Result<Manifest> {
    let root = tree::parse(text).map_err(|e| {
        let offset = e.span().map_or(0, |span| span.start);
        ManifestError::at(file, text, offset, None, toml_message(&e))
    })?;
    validate::manifest(&validate::Source { file, text }, &root, check)
}

/// toml's message without its trailing newline, on one line.
fn toml_message(e: &toml::de::Error) -> String {
    let lines: Vec<&str> = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    format!("invalid TOML: {}", lines.join("; "))
}

impl FunctionSpec {
    /// A function with every default and no HTTP routes.
    pub fn new_default(name: &str, runtime: Runtime, handler: &str) -> FunctionSpec {
        FunctionSpec {
            name: name.to_owned(),
            runtime,
            handler: handler.to_owned(),
            memory_mb: defaults::MEMORY_MB,
            ephemeral_storage_mb: defaults::ephemeral_storage_mb(),
            timeout_ms: defaults::TIMEOUT_MS,
            concurrency: Concurrency::Auto,
            max_concurrency: defaults::MAX_CONCURRENCY,
            max_instances: defaults::MAX_INSTANCES,
            min_instances: defaults::MIN_INSTANCES,
            idle_timeout_ms: defaults::IDLE_TIMEOUT_MS,
            target_cpu: defaults::target_cpu(),
            latency_tolerance: defaults::latency_tolerance(),
            env: BTreeMap::new(),
            http: Vec::new(),
            events: Vec::new(),
            async_invoke: AsyncConfig::default(),
        }
    }
}

mod defaults {
    pub(crate) const MEMORY_MB: u64 = 512;
    pub(crate) const TIMEOUT_MS: u64 = 30_000;
    pub(crate) const MAX_CONCURRENCY: u32 = 256;
    pub(crate) const MAX_INSTANCES: u32 = 100;
    pub(crate) const MIN_INSTANCES: u32 = 0;
    pub(crate) const IDLE_TIMEOUT_MS: u64 = 300_000;
    pub(crate) const PROVIDED_HANDLER: &str = "bootstrap";

    pub(crate) fn ephemeral_storage_mb() -> u64 {
        512
    }

    pub(crate) fn target_cpu() -> f64 {
        0.8
    }

    pub(crate) fn latency_tolerance() -> f64 {
        1.5
    }
}

impl Serialize for Concurrency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Concurrency::Auto => s.serialize_str("auto"),
            Concurrency::Fixed(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Concurrency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ConcurrencyVisitor;

        impl serde::de::Visitor<'_> for ConcurrencyVisitor {
            type Value = Concurrency;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""auto" or a number of at least 1"#)
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Concurrency, E> {
                match v {
                    "auto" => Ok(Concurrency::Auto),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Concurrency, E> {
                match u32::try_from(v) {
                    Ok(n) if n >= 1 => Ok(Concurrency::Fixed(n)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Unsigned(v), &self)),
                }
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Concurrency, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(serde::de::Unexpected::Signed(v), &self)),
                }
            }
        }

        d.deserialize_any(ConcurrencyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        let quote = text.find('"').unwrap();
        assert_eq!(line_column(text, quote), (2, 6));
        assert_eq!(line_column(text, 10_000), (3, 1));
    }

    #[test]
    fn error_display_leaves_out_an_unknown_field() {
        let e = ManifestError::at("shoal.toml", "x", 0, None, "broken");
        assert_eq!(e.to_string(), "shoal.toml:1:1: broken");
        let e = ManifestError::at("m.toml", "x", 0, Some("functions.a".into()), "bad");
        assert_eq!(e.to_string(), "m.toml:1:1: functions.a: bad");
    }

    #[test]
    fn new_default_matches_a_minimal_manifest() {
        let text = "[functions.hello]\nhandler = \"index.handler\"\n";
        let parsed = parse("shoal.toml", text).unwrap();
        let expected = FunctionSpec::new_default("hello", Runtime::Nodejs, "index.handler");
        assert_eq!(parsed.functions, vec![expected]);
    }
}
