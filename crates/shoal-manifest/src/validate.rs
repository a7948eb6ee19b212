//! Turns the spanned TOML tree into a [`Manifest`]: allowed keys, types, defaults, ranges
//! and the rules that span fields or functions. Every error points at the offending key or
//! value, or at the function's `[functions.NAME]` header when the problem is an absence.

use std::collections::BTreeMap;

use crate::events::{self, ScheduleCheck};
use crate::routes::{self, RouteSite};
use crate::tree::{Key, Kind, Node};
use crate::units::{format_duration_ms, parse_duration_ms, parse_size_mib};
use crate::{defaults, Concurrency, FunctionSpec, Manifest, ManifestError, Result, Runtime};

const TOP_KEYS: &[&str] = &["functions"];
const FUNCTION_KEYS: &[&str] = &[
    "runtime",
    "handler",
    "memory",
    "ephemeral_storage",
    "timeout",
    "concurrency",
    "max_concurrency",
    "max_instances",
    "min_instances",
    "idle_timeout",
    "target_cpu",
    "latency_tolerance",
    "env",
    "http",
    "events",
    "maximum_retry_attempts",
    "maximum_event_age",
    "on_failure",
];

const MEMORY_MB: (u64, u64) = (64, 32_768);
/// `/tmp` of one instance, in MiB: Lambda's range is 512 MiB to 10 GiB; smaller is allowed
/// here (a tmpfs counts against the host's memory).
const EPHEMERAL_STORAGE_MB: (u64, u64) = (16, 10_240);
const TIMEOUT_MS: (u64, u64) = (1, 15 * 60_000);
const IDLE_TIMEOUT_MS: (u64, u64) = (1, 24 * 3_600_000);
const MAX_CONCURRENCY: u32 = 10_000;
const TARGET_CPU: (f64, f64) = (0.05, 1.0);
const LATENCY_TOLERANCE: (f64, f64) = (1.05, 10.0);

/// Environment names the platform sets itself; a function overriding them would break its
/// runtime or lie to it about where it runs.
const RESERVED_ENV_PREFIXES: &[&str] = &["AWS_", "SHOAL_"];
const RESERVED_ENV_NAMES: &[&str] = &[
    "_HANDLER",
    "_X_AMZN_TRACE_ID",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
];

/// The text being validated, for turning offsets into positions.
pub(crate) struct Source<'a> {
    pub(crate) file: &'a str,
    pub(crate) text: &'a str,
}

impl Source<'_> {
    pub(crate) fn error(
        &self,
        offset: usize,
        field: &str,
        message: impl Into<String>,
    ) -> ManifestError {
        ManifestError::at(
            self.file,
            self.text,
            offset,
            Some(field.to_owned()),
            message,
        )
    }

    pub(crate) fn line(&self, offset: usize) -> usize {
        crate::line_column(self.text, offset).0
    }
}

/// `prefix.key`, quoting the key the way TOML would when it is not a bare key.
pub(crate) fn join(prefix: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        format!("{prefix}.{key}")
    } else {
        format!("{prefix}.{key:?}")
    }
}

/// How a value reads in a "got ..." message.
pub(crate) fn describe(node: &Node) -> String {
    match &node.kind {
        Kind::String(s) => format!("{s:?}"),
        Kind::Integer(n) => n.to_string(),
        Kind::Float(x) => x.to_string(),
        Kind::Boolean(b) => b.to_string(),
        Kind::Datetime(d) => format!("the date/time {d}"),
        Kind::Array(_) => "an array".to_owned(),
        Kind::Table(_) => "a table".to_owned(),
    }
}

/// `unknown key "x"`, a suggestion when one is close, and the keys that are allowed.
pub(crate) fn unknown_key(
    src: &Source<'_>,
    offset: usize,
    field: &str,
    key: &str,
    allowed: &[&str],
) -> ManifestError {
    let suggestion = allowed
        .iter()
        .map(|candidate| (edit_distance(key, candidate), candidate))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, candidate)| format!(" (did you mean {candidate:?}?)"))
        .unwrap_or_default();
    src.error(
        offset,
        field,
        format!(
            "unknown key {key:?}{suggestion}; allowed keys are: {}",
            allowed.join(", ")
        ),
    )
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

pub(crate) fn manifest(
    src: &Source<'_>,
    root: &Node,
    check: Option<ScheduleCheck<'_>>,
) -> Result<Manifest> {
    let Kind::Table(entries) = &root.kind else {
        let message = "expected a TOML table at the top level";
        return Err(ManifestError::at(src.file, src.text, 0, None, message));
    };
    let mut functions_node = None;
    for (key, value) in entries {
        match key.name.as_str() {
            "functions" => functions_node = Some((key, value)),
            other => {
                let offset = key.start().unwrap_or(0);
                return Err(unknown_key(src, offset, other, other, TOP_KEYS));
            }
        }
    }
    const NONE_DEFINED: &str = "no functions defined; add a [functions.NAME] table";
    let Some((key, node)) = functions_node else {
        return Err(ManifestError::at(src.file, src.text, 0, None, NONE_DEFINED));
    };
    let offset = node.start().or(key.start()).unwrap_or(0);
    let Kind::Table(entries) = &node.kind else {
        return Err(src.error(
            offset,
            "functions",
            format!(
                "expected a table of functions like [functions.NAME], got {}",
                describe(node)
            ),
        ));
    };
    if entries.is_empty() {
        return Err(src.error(offset, "functions", NONE_DEFINED));
    }

    let mut functions = Vec::with_capacity(entries.len());
    // Routes already claimed, with the function that claimed them: a route must lead to
    // exactly one function, or the router would pick one silently.
    let mut claimed: BTreeMap<routes::RouteKey, (String, RouteSite)> = BTreeMap::new();
    for (name, body) in entries {
        let (spec, sites) = function(src, name, body, check)?;
        for site in sites {
            if let Some((owner, first)) = claimed.get(&site.key) {
                return Err(src.error(
                    site.offset,
                    &site.field,
                    format!(
                        "route {} is declared by both function {owner:?} (line {}{}) and \
                         function {:?}; give each method and path to one function",
                        first.display,
                        src.line(first.offset),
                        routes::same_shape_note(first, &site),
                        spec.name
                    ),
                ));
            }
            claimed.insert(site.key.clone(), (spec.name.clone(), site));
        }
        functions.push(spec);
    }
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Manifest { functions })
}

/// A parsed field and where its value sits, for checks that involve two fields.
struct At<T> {
    value: T,
    offset: usize,
}

fn function(
    src: &Source<'_>,
    name: &Key,
    body: &Node,
    check: Option<ScheduleCheck<'_>>,
) -> Result<(FunctionSpec, Vec<RouteSite>)> {
    let path = join("functions", &name.name);
    let header = body.start().or(name.start()).unwrap_or(0);
    check_name(src, name, &path, header)?;
    let Kind::Table(entries) = &body.kind else {
        return Err(src.error(
            header,
            &path,
            format!(
                "expected a table of settings like [functions.{}], got {}",
                name.name,
                describe(body)
            ),
        ));
    };

    let mut runtime: Option<At<Runtime>> = None;
    let mut handler: Option<At<String>> = None;
    let mut concurrency: Option<At<Concurrency>> = None;
    let mut min_instances: Option<At<u32>> = None;
    let mut spec = FunctionSpec::new_default(&name.name, Runtime::Nodejs, "");
    let mut sites = Vec::new();
    for (key, value) in entries {
        let field = join(&path, &key.name);
        let offset = value.start().unwrap_or(header);
        match key.name.as_str() {
            "runtime" => {
                let value = runtime_value(src, &field, value, offset)?;
                runtime = Some(At { value, offset });
            }
            "handler" => {
                let value = string(
                    src,
                    &field,
                    value,
                    offset,
                    r#"a string like "index.handler""#,
                )?;
                handler = Some(At { value, offset });
            }
            "memory" => spec.memory_mb = memory(src, &field, value, offset)?,
            "ephemeral_storage" => {
                spec.ephemeral_storage_mb = size(
                    src,
                    &field,
                    "ephemeral_storage",
                    value,
                    offset,
                    EPHEMERAL_STORAGE_MB,
                )?
            }
            "timeout" => {
                spec.timeout_ms = duration(src, &field, "timeout", value, offset, TIMEOUT_MS)?
            }
            "idle_timeout" => {
                spec.idle_timeout_ms =
                    duration(src, &field, "idle_timeout", value, offset, IDLE_TIMEOUT_MS)?
            }
            "target_cpu" => {
                spec.target_cpu = fraction(src, &field, "target_cpu", value, offset, TARGET_CPU)?
            }
            "latency_tolerance" => {
                spec.latency_tolerance = fraction(
                    src,
                    &field,
                    "latency_tolerance",
                    value,
                    offset,
                    LATENCY_TOLERANCE,
                )?
            }
            "concurrency" => {
                let value = concurrency_value(src, &field, value, offset)?;
                concurrency = Some(At { value, offset });
            }
            "max_concurrency" => {
                spec.max_concurrency = count(
                    src,
                    &field,
                    "max_concurrency",
                    value,
                    offset,
                    1,
                    MAX_CONCURRENCY,
                )?
            }
            "max_instances" => {
                spec.max_instances =
                    count(src, &field, "max_instances", value, offset, 1, u32::MAX)?
            }
            "min_instances" => {
                let value = count(src, &field, "min_instances", value, offset, 0, u32::MAX)?;
                min_instances = Some(At { value, offset });
            }
            "env" => spec.env = env(src, &field, value, offset)?,
            "http" => {
                let (http, route_sites) = routes::http(src, &field, value, offset)?;
                spec.http = http;
                sites = route_sites;
            }
            "events" => spec.events = events::events(src, &field, value, offset, check)?,
            "maximum_retry_attempts" => {
                spec.async_invoke.maximum_retry_attempts =
                    events::retry_attempts(src, &field, value, offset)?
            }
            "maximum_event_age" => {
                spec.async_invoke.maximum_event_age_ms =
                    events::event_age(src, &field, value, offset)?
            }
            "on_failure" => {
                spec.async_invoke.on_failure = Some(events::queue_name(src, &field, value, offset)?)
            }
            other => {
                let offset = key.start().unwrap_or(header);
                return Err(unknown_key(src, offset, &field, other, FUNCTION_KEYS));
            }
        }
    }

    spec.runtime = runtime.map_or(Runtime::Nodejs, |r| r.value);
    spec.handler = match handler {
        Some(h) => {
            check_handler(src, &join(&path, "handler"), spec.runtime, &h)?;
            h.value
        }
        None if spec.runtime == Runtime::Provided => defaults::PROVIDED_HANDLER.to_owned(),
        None => {
            let runtime = runtime_name(spec.runtime);
            return Err(src.error(
                header,
                &join(&path, "handler"),
                format!(
                    "handler is required for runtime {runtime:?}; add handler = \
                     \"<file>.<export>\", e.g. handler = \"index.handler\""
                ),
            ));
        }
    };
    if let Some(c) = concurrency {
        if let Concurrency::Fixed(n) = c.value {
            if n > spec.max_concurrency {
                return Err(src.error(
                    c.offset,
                    &join(&path, "concurrency"),
                    format!(
                        "concurrency {n} is above max_concurrency {}; lower concurrency or \
                         raise max_concurrency",
                        spec.max_concurrency
                    ),
                ));
            }
        }
        spec.concurrency = c.value;
    }
    if let Some(min) = min_instances {
        if min.value > spec.max_instances {
            return Err(src.error(
                min.offset,
                &join(&path, "min_instances"),
                format!(
                    "min_instances {} is above max_instances {}; lower min_instances or raise \
                     max_instances",
                    min.value, spec.max_instances
                ),
            ));
        }
        spec.min_instances = min.value;
    }
    Ok((spec, sites))
}

fn runtime_name(runtime: Runtime) -> &'static str {
    match runtime {
        Runtime::Nodejs => "nodejs",
        Runtime::Python => "python",
        Runtime::Provided => "provided",
    }
}

fn check_name(src: &Source<'_>, name: &Key, path: &str, header: usize) -> Result<()> {
    let valid = (1..=64).contains(&name.name.len())
        && name
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        return Ok(());
    }
    Err(src.error(
        name.start().unwrap_or(header),
        path,
        format!(
            "function name {:?} is invalid; use 1 to 64 letters, digits, \"_\" or \"-\"",
            name.name
        ),
    ))
}

fn string(src: &Source<'_>, field: &str, node: &Node, offset: usize, what: &str) -> Result<String> {
    match &node.kind {
        Kind::String(s) => Ok(s.clone()),
        _ => Err(src.error(
            offset,
            field,
            format!("expected {what}, got {}", describe(node)),
        )),
    }
}

fn runtime_value(src: &Source<'_>, field: &str, node: &Node, offset: usize) -> Result<Runtime> {
    let expected = r#"one of "nodejs", "python", "provided""#;
    match string(src, field, node, offset, expected)?.as_str() {
        "nodejs" => Ok(Runtime::Nodejs),
        "python" => Ok(Runtime::Python),
        "provided" => Ok(Runtime::Provided),
        other => Err(src.error(
            offset,
            field,
            format!("unknown runtime {other:?}; use one of: nodejs, python, provided"),
        )),
    }
}

fn check_handler(src: &Source<'_>, field: &str, runtime: Runtime, h: &At<String>) -> Result<()> {
    let handler = h.value.as_str();
    let fail = |message: String| Err(src.error(h.offset, field, message));
    if handler.is_empty() || handler.chars().any(char::is_whitespace) {
        return fail(format!(
            "handler {handler:?} must be non-empty and contain no spaces"
        ));
    }
    if runtime == Runtime::Provided {
        return Ok(());
    }
    let (dir, base) = handler.rsplit_once('/').unwrap_or(("", handler));
    let escapes = handler.starts_with('/')
        || handler.contains('\\')
        || (!dir.is_empty()
            && dir
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == ".."));
    if escapes {
        return fail(format!(
            "handler {handler:?} must be a path relative to the code directory, without \
             \"..\" or empty segments"
        ));
    }
    if !base.contains('.') || base.split('.').any(str::is_empty) {
        let example = match runtime {
            Runtime::Python => "\"app.handler\" for the function handler in app.py",
            _ => "\"index.handler\" for the export handler of index.js",
        };
        return fail(format!(
            "handler {handler:?} is not valid: expected <file>.<export>, e.g. {example}"
        ));
    }
    Ok(())
}

fn memory(src: &Source<'_>, field: &str, node: &Node, offset: usize) -> Result<u64> {
    size(src, field, "memory", node, offset, MEMORY_MB)
}

/// A size in MiB ("512MiB", "1GiB" or a number of MiB) within `range`.
fn size(
    src: &Source<'_>,
    field: &str,
    what: &str,
    node: &Node,
    offset: usize,
    range: (u64, u64),
) -> Result<u64> {
    let mib = match &node.kind {
        Kind::Integer(n) => u64::try_from(*n).ok(),
        Kind::String(s) => parse_size_mib(s),
        _ => None,
    };
    let Some(mib) = mib else {
        return Err(src.error(
            offset,
            field,
            format!(
                "expected a size like \"512MiB\" or a number of MiB, got {}",
                describe(node)
            ),
        ));
    };
    let (lo, hi) = range;
    if !(lo..=hi).contains(&mib) {
        return Err(src.error(
            offset,
            field,
            format!(
                "{what} {} is out of range; use between {lo}MiB and {hi}MiB",
                describe(node)
            ),
        ));
    }
    Ok(mib)
}

pub(crate) fn duration(
    src: &Source<'_>,
    field: &str,
    name: &str,
    node: &Node,
    offset: usize,
    (lo, hi): (u64, u64),
) -> Result<u64> {
    let ms = match &node.kind {
        Kind::Integer(n) if *n >= 0 => Some((*n as u64).saturating_mul(1_000)),
        Kind::String(s) => parse_duration_ms(s),
        _ => None,
    };
    let Some(ms) = ms else {
        return Err(src.error(
            offset,
            field,
            format!(
                "expected a duration like \"30s\", \"500ms\" or \"5m\", or a number of seconds, \
                 got {}",
                describe(node)
            ),
        ));
    };
    if !(lo..=hi).contains(&ms) {
        return Err(src.error(
            offset,
            field,
            format!(
                "{name} {} is out of range; use between {} and {}",
                describe(node),
                format_duration_ms(lo),
                format_duration_ms(hi)
            ),
        ));
    }
    Ok(ms)
}

fn concurrency_value(
    src: &Source<'_>,
    field: &str,
    node: &Node,
    offset: usize,
) -> Result<Concurrency> {
    match &node.kind {
        Kind::String(s) if s == "auto" => Ok(Concurrency::Auto),
        Kind::Integer(n) => match u32::try_from(*n) {
            Ok(n) if (1..=MAX_CONCURRENCY).contains(&n) => Ok(Concurrency::Fixed(n)),
            _ => Err(src.error(
                offset,
                field,
                format!(
                    "concurrency must be \"auto\" or between 1 and {MAX_CONCURRENCY} \
                     (1 = one invocation at a time per instance), got {n}"
                ),
            )),
        },
        _ => Err(src.error(
            offset,
            field,
            format!(
                "expected \"auto\" or a number of invocations per instance, got {}",
                describe(node)
            ),
        )),
    }
}

/// A number (integer or float) within `lo..=hi`.
fn fraction(
    src: &Source<'_>,
    field: &str,
    name: &str,
    node: &Node,
    offset: usize,
    (lo, hi): (f64, f64),
) -> Result<f64> {
    let value = match node.kind {
        Kind::Float(f) => f,
        Kind::Integer(n) => n as f64,
        _ => {
            return Err(src.error(
                offset,
                field,
                format!("expected a number, got {}", describe(node)),
            ))
        }
    };
    if !(lo..=hi).contains(&value) {
        return Err(src.error(
            offset,
            field,
            format!("{name} must be between {lo} and {hi}, got {value}"),
        ));
    }
    Ok(value)
}

/// An integer within `lo..=hi`.
pub(crate) fn count(
    src: &Source<'_>,
    field: &str,
    name: &str,
    node: &Node,
    offset: usize,
    lo: u32,
    hi: u32,
) -> Result<u32> {
    let Kind::Integer(n) = node.kind else {
        return Err(src.error(
            offset,
            field,
            format!("expected an integer, got {}", describe(node)),
        ));
    };
    match u32::try_from(n) {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => {
            let range = if hi == u32::MAX {
                format!("at least {lo}")
            } else {
                format!("between {lo} and {hi}")
            };
            Err(src.error(offset, field, format!("{name} must be {range}, got {n}")))
        }
    }
}

fn env(
    src: &Source<'_>,
    field: &str,
    node: &Node,
    offset: usize,
) -> Result<BTreeMap<String, String>> {
    let Kind::Table(entries) = &node.kind else {
        return Err(src.error(
            offset,
            field,
            format!(
                "expected a table like env = {{ NAME = \"value\" }}, got {}",
                describe(node)
            ),
        ));
    };
    let mut env = BTreeMap::new();
    for (key, value) in entries {
        let name = key.name.as_str();
        let var_field = join(field, name);
        let key_offset = key.start().unwrap_or(offset);
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(src.error(
                key_offset,
                &var_field,
                format!(
                    "environment variable name {name:?} is invalid; use letters, digits and \
                     \"_\", not starting with a digit"
                ),
            ));
        }
        if RESERVED_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
            || RESERVED_ENV_NAMES.contains(&name)
        {
            return Err(src.error(
                key_offset,
                &var_field,
                format!(
                    "environment variable {name:?} is reserved: the platform sets names \
                     starting with AWS_ or SHOAL_ (and {}); choose another name",
                    RESERVED_ENV_NAMES.join(", ")
                ),
            ));
        }
        let value_offset = value.start().unwrap_or(key_offset);
        let text = match &value.kind {
            Kind::String(s) => s.clone(),
            Kind::Integer(_) | Kind::Float(_) | Kind::Boolean(_) => {
                return Err(src.error(
                    value_offset,
                    &var_field,
                    format!(
                        "environment variable values must be strings; write \"{0}\" instead \
                         of {0}",
                        describe(value)
                    ),
                ));
            }
            _ => {
                return Err(src.error(
                    value_offset,
                    &var_field,
                    format!(
                        "environment variable values must be strings, got {}",
                        describe(value)
                    ),
                ));
            }
        };
        env.insert(name.to_owned(), text);
    }
    Ok(env)
}
