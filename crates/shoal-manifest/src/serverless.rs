//! A Serverless Framework v3 project (`serverless.yml`, the common subset) turned into the
//! `shoal.toml` that deploys the same functions, under the names the Framework gives them
//! on AWS (`<service>-<stage>-<function>`), so SDK calls written for AWS work unchanged.
//!
//! Understood: `service`, `provider.{name: aws, runtime, memorySize, timeout, environment,
//! stage}`, `functions.NAME.{handler, runtime, memorySize, timeout, environment, name,
//! events}`, events `httpApi`, `http` (payload 1.0), `schedule`, `sqs`, `package.patterns`,
//! Shoal's own knobs under `custom.shoal`, and the variables `${env:X}`, `${self:a.b}`,
//! `${opt:stage}`, `${sls:stage}` with fallbacks. Noted and ignored on purpose:
//! `frameworkVersion`, `provider.region` (the daemon's region applies),
//! `provider.architecture` and `functions.NAME.architecture` (instances run on the host's),
//! other `custom` keys (plain data for `${self:custom...}`). Every other key is listed in
//! [`Converted::unknown`] with its line; an unsupported runtime, event type or variable
//! source is an error at its line. The generated `shoal.toml` is then checked by
//! [`crate::parse`], whose errors are moved back to the serverless.yml line that caused
//! them. Like the rest of the crate this does no IO: the caller passes the environment.

mod yaml;

use std::collections::BTreeMap;

use yaml::{Kind, Node};

use crate::{Manifest, ManifestError, Result};

/// What the caller knows that the file does not.
#[derive(Debug, Clone, Copy)]
pub struct ServerlessOptions<'a> {
    /// `--stage`: wins over `provider.stage`; `dev` when neither says.
    pub stage: Option<&'a str>,
    /// The deployer's environment, for `${env:X}`.
    pub env: &'a BTreeMap<String, String>,
}

/// One remark about a line of serverless.yml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remark {
    pub line: usize,
    pub column: usize,
    /// Dotted path of the key, e.g. `provider.region`.
    pub field: String,
    pub message: String,
}

/// A serverless.yml, converted.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The `shoal.toml` text that deploys these functions.
    pub shoal_toml: String,
    pub manifest: Manifest,
    /// Keys Shoal does not understand and ignores, each with its line.
    pub unknown: Vec<Remark>,
    /// Things understood but mapped or ignored on purpose, each with its line.
    pub notes: Vec<Remark>,
    /// `package.patterns`, in order (`!` excludes).
    pub patterns: Vec<String>,
    pub service: String,
    pub stage: String,
}

const TOP_KEYS: &[&str] = &[
    "service",
    "frameworkVersion",
    "provider",
    "functions",
    "package",
    "custom",
];
const PROVIDER_KEYS: &[&str] = &[
    "name",
    "runtime",
    "memorySize",
    "timeout",
    "environment",
    "stage",
    "region",
    "architecture",
];
const FUNCTION_KEYS: &[&str] = &[
    "handler",
    "runtime",
    "memorySize",
    "timeout",
    "environment",
    "events",
    "name",
    "architecture",
];
/// The Framework's defaults on AWS, kept so a function behaves as it did there.
const DEFAULT_MEMORY_MB: u64 = 1024;
const DEFAULT_TIMEOUT_S: u64 = 6;
/// How deep `${self:...}` may refer through other variables.
const MAX_VARIABLE_DEPTH: usize = 10;

/// Convert `text` (the contents of `file`, a serverless.yml) into a checked manifest.
pub fn from_serverless(
    file: &str,
    text: &str,
    options: &ServerlessOptions<'_>,
) -> Result<Converted> {
    let root = yaml::parse(text).map_err(|e| ManifestError {
        file: file.to_owned(),
        line: e.line,
        column: e.column,
        field: None,
        message: format!("invalid YAML: {}", e.message),
    })?;
    let mut conv = Conv {
        file,
        root: &root,
        env: options.env,
        option_stage: options.stage.map(str::to_owned),
        stage: "dev".to_owned(),
        unknown: Vec::new(),
        notes: Vec::new(),
        out: Vec::new(),
    };
    conv.stage = match options.stage {
        Some(stage) => stage.to_owned(),
        None => match root.get("provider").and_then(|p| p.get("stage")) {
            Some(node) => conv.string(node, "provider.stage")?,
            None => "dev".to_owned(),
        },
    };
    let (service, patterns) = conv.project()?;
    let toml = conv
        .out
        .iter()
        .map(|(line, _)| line.as_str())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let manifest = crate::parse("shoal.toml", &toml).map_err(|e| {
        let (line, column) = conv
            .out
            .get(e.line.saturating_sub(1))
            .map_or((1, 1), |(_, at)| *at);
        ManifestError {
            file: file.to_owned(),
            line,
            column,
            field: e.field,
            message: e.message,
        }
    })?;
    let mut notes = conv.notes;
    notes.sort_by_key(|r| (r.line, r.column));
    notes.dedup_by(|a, b| a.line == b.line && a.column == b.column && a.message == b.message);
    let mut unknown = conv.unknown;
    unknown.sort_by_key(|r| (r.line, r.column));
    Ok(Converted {
        shoal_toml: toml,
        manifest,
        unknown,
        notes,
        patterns,
        service,
        stage: conv.stage,
    })
}

impl Converted {
    /// Whether `package.patterns` keep the file at `path` (relative, `/`-separated): the
    /// last pattern that matches decides (`!` excludes), and a file no pattern matches is
    /// kept, as the Framework packages by default.
    pub fn includes(&self, path: &str) -> bool {
        self.patterns
            .iter()
            .rev()
            .find_map(|pattern| match pattern.strip_prefix('!') {
                Some(exclude) => glob_match(exclude, path).then_some(false),
                None => glob_match(pattern, path).then_some(true),
            })
            .unwrap_or(true)
    }
}

/// A glob over `/`-separated paths: `**` any number of whole segments, `*` and `?` any
/// characters (one, for `?`) within a segment. A pattern naming a folder (`dir` or
/// `dir/`) also matches everything under it.
pub(crate) fn glob_match(pattern: &str, path: &str) -> bool {
    let pattern = pattern.trim_start_matches("./").trim_end_matches('/');
    let pattern: Vec<&str> = pattern.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    segments_match(&pattern, &path) || {
        let mut under = pattern.clone();
        under.push("**");
        segments_match(&under, &path)
    }
}

fn segments_match(pattern: &[&str], path: &[&str]) -> bool {
    match (pattern.first(), path.first()) {
        (None, None) => true,
        (Some(&"**"), _) => {
            segments_match(&pattern[1..], path)
                || (!path.is_empty() && segments_match(pattern, &path[1..]))
        }
        (Some(p), Some(s)) => {
            segment_match(p.as_bytes(), s.as_bytes()) && segments_match(&pattern[1..], &path[1..])
        }
        _ => false,
    }
}

fn segment_match(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            segment_match(&pattern[1..], text)
                || (!text.is_empty() && segment_match(pattern, &text[1..]))
        }
        (Some(b'?'), Some(_)) => segment_match(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) if p == t => segment_match(&pattern[1..], &text[1..]),
        _ => false,
    }
}

struct Conv<'a> {
    file: &'a str,
    root: &'a Node,
    env: &'a BTreeMap<String, String>,
    /// `--stage`, for `${opt:stage}` (absent: its fallback applies).
    option_stage: Option<String>,
    /// The stage in force, for `${sls:stage}` and function names.
    stage: String,
    unknown: Vec<Remark>,
    notes: Vec<Remark>,
    /// Generated `shoal.toml` lines, each with the serverless.yml position it came from.
    out: Vec<(String, (usize, usize))>,
}

impl Conv<'_> {
    fn error(&self, node: &Node, field: &str, message: impl Into<String>) -> ManifestError {
        ManifestError {
            file: self.file.to_owned(),
            line: node.line,
            column: node.column,
            field: (!field.is_empty()).then(|| field.to_owned()),
            message: message.into(),
        }
    }

    fn remark(node: &Node, field: &str, message: impl Into<String>) -> Remark {
        Remark {
            line: node.line,
            column: node.column,
            field: field.to_owned(),
            message: message.into(),
        }
    }

    fn emit(&mut self, line: String, node: &Node) {
        self.out.push((line, (node.line, node.column)));
    }

    /// Entries of a mapping (nothing counts as empty), or an error.
    fn entries<'n>(&self, node: &'n Node, field: &str) -> Result<&'n [(Node, Node)]> {
        match &node.kind {
            Kind::Map(entries) => Ok(entries),
            _ if node.is_null() => Ok(&[]),
            _ => Err(self.error(
                node,
                field,
                format!("expected a mapping, got {}", node.describe()),
            )),
        }
    }

    /// List every key of `node` not in `known` as not understood.
    fn flag_unknown(&mut self, node: &Node, field: &str, known: &[&str]) {
        if let Kind::Map(entries) = &node.kind {
            for (key, _) in entries {
                let name = key.text().unwrap_or("?");
                if !known.contains(&name) {
                    let field = join(field, name);
                    self.unknown
                        .push(Self::remark(key, &field, "not understood by Shoal"));
                }
            }
        }
    }

    fn project(&mut self) -> Result<(String, Vec<String>)> {
        let root = self.root;
        if !matches!(root.kind, Kind::Map(_)) {
            return Err(self.error(
                root,
                "",
                "expected a mapping of service, provider, functions, ...",
            ));
        }
        self.flag_unknown(root, "", TOP_KEYS);
        let service_node = root
            .get("service")
            .ok_or_else(|| self.error(root, "service", "a serverless.yml needs `service: NAME`"))?;
        let service = match service_node.get("name") {
            Some(name) => self.string(name, "service.name")?,
            None => self.string(service_node, "service")?,
        };
        if let Some(version) = root.get("frameworkVersion") {
            self.notes.push(Self::remark(
                version,
                "frameworkVersion",
                "not checked: Shoal reads the v3 syntax",
            ));
        }

        let empty = Node {
            kind: Kind::Map(Vec::new()),
            line: 1,
            column: 1,
        };
        let provider = root.get("provider").unwrap_or(&empty);
        self.entries(provider, "provider")?;
        self.flag_unknown(provider, "provider", PROVIDER_KEYS);
        if let Some(name) = provider.get("name") {
            let name_text = self.string(name, "provider.name")?;
            if name_text != "aws" {
                return Err(self.error(
                    name,
                    "provider.name",
                    format!("provider {name_text:?} is not supported; Shoal runs AWS Lambda functions (provider.name: aws)"),
                ));
            }
        }
        if let Some(region) = provider.get("region") {
            self.notes.push(Self::remark(
                region,
                "provider.region",
                "ignored: functions answer in the daemon's region (shoal serve --region)",
            ));
        }
        if let Some(arch) = provider.get("architecture") {
            self.notes.push(Self::remark(
                arch,
                "provider.architecture",
                "ignored: instances run on this host's architecture",
            ));
        }

        let mut shoal_knobs: Vec<(String, String, Node)> = Vec::new();
        if let Some(custom) = root.get("custom") {
            if let Some(knobs) = custom.get("shoal") {
                for (key, value) in self.entries(knobs, "custom.shoal")? {
                    let name = key.text().unwrap_or("?").to_owned();
                    let field = format!("custom.shoal.{name}");
                    let literal = self.toml_scalar(value, &field)?;
                    shoal_knobs.push((name, literal, key.clone()));
                }
            }
        }

        let functions = root.get("functions").ok_or_else(|| {
            self.error(
                root,
                "functions",
                "a serverless.yml needs a `functions:` mapping",
            )
        })?;
        let entries = self.entries(functions, "functions")?.to_vec();
        for (key, function) in &entries {
            let name = key.text().unwrap_or("?").to_owned();
            self.function(&service, &name, key, function, provider, &shoal_knobs)?;
        }

        let mut patterns = Vec::new();
        if let Some(package) = root.get("package") {
            self.flag_unknown(package, "package", &["patterns"]);
            if let Some(list) = package.get("patterns") {
                let Kind::Seq(items) = &list.kind else {
                    return Err(self.error(
                        list,
                        "package.patterns",
                        "expected a list of glob patterns",
                    ));
                };
                for item in items {
                    patterns.push(self.string(item, "package.patterns[]")?);
                }
            }
        }
        Ok((service, patterns))
    }

    fn function(
        &mut self,
        service: &str,
        name: &str,
        key: &Node,
        function: &Node,
        provider: &Node,
        knobs: &[(String, String, Node)],
    ) -> Result<()> {
        let field = format!("functions.{name}");
        self.entries(function, &field)?;
        self.flag_unknown(function, &field, FUNCTION_KEYS);
        let full_name = match function.get("name") {
            Some(node) => self.string(node, &join(&field, "name"))?,
            None => format!("{service}-{}-{name}", self.stage),
        };
        self.emit(format!("[functions.{}]", quote(&full_name)), key);

        let runtime_node = function
            .get("runtime")
            .or_else(|| provider.get("runtime"))
            .ok_or_else(|| {
                self.error(
                    function,
                    &join(&field, "runtime"),
                    "no runtime: set provider.runtime or functions.NAME.runtime (e.g. nodejs20.x)",
                )
            })?;
        let runtime_field = match function.get("runtime") {
            Some(_) => join(&field, "runtime"),
            None => "provider.runtime".to_owned(),
        };
        let runtime = self.runtime(runtime_node, &runtime_field)?;
        self.emit(format!("runtime = {}", quote(runtime)), runtime_node);

        let handler = function.get("handler").ok_or_else(|| {
            self.error(
                function,
                &join(&field, "handler"),
                "no handler (e.g. handler: handler.hello)",
            )
        })?;
        let handler_text = self.string(handler, &join(&field, "handler"))?;
        self.emit(format!("handler = {}", quote(&handler_text)), handler);

        match function
            .get("memorySize")
            .or_else(|| provider.get("memorySize"))
        {
            Some(node) => {
                let mb = self.number(node, &join(&field, "memorySize"))?;
                self.emit(format!("memory = \"{mb}MiB\""), node);
            }
            None => self.emit(format!("memory = \"{DEFAULT_MEMORY_MB}MiB\""), function),
        }
        match function.get("timeout").or_else(|| provider.get("timeout")) {
            Some(node) => {
                let secs = self.number(node, &join(&field, "timeout"))?;
                self.emit(format!("timeout = \"{secs}s\""), node);
            }
            None => self.emit(format!("timeout = \"{DEFAULT_TIMEOUT_S}s\""), function),
        }
        if let Some(arch) = function.get("architecture") {
            self.notes.push(Self::remark(
                arch,
                &join(&field, "architecture"),
                "ignored: instances run on this host's architecture",
            ));
        }

        let mut env: BTreeMap<String, (String, Node)> = BTreeMap::new();
        for (source, source_field) in [
            (
                provider.get("environment"),
                "provider.environment".to_owned(),
            ),
            (function.get("environment"), join(&field, "environment")),
        ] {
            if let Some(node) = source {
                for (k, v) in self.entries(node, &source_field)? {
                    let k_text = k.text().unwrap_or("?").to_owned();
                    let value = self.string(v, &join(&source_field, &k_text))?;
                    env.insert(k_text, (value, k.clone()));
                }
            }
        }
        if let Some((_, first)) = env.values().next() {
            let pairs: Vec<String> = env
                .iter()
                .map(|(k, (v, _))| format!("{} = {}", quote(k), quote(v)))
                .collect();
            let first = first.clone();
            self.emit(format!("env = {{ {} }}", pairs.join(", ")), &first);
        }

        for (knob, literal, node) in knobs {
            self.emit(format!("{} = {literal}", quote(knob)), node);
        }

        let mut routes = Vec::new();
        let mut events = Vec::new();
        if let Some(list) = function.get("events") {
            let events_field = join(&field, "events");
            let items = match &list.kind {
                Kind::Seq(items) => items.clone(),
                _ if list.is_null() => Vec::new(),
                _ => return Err(self.error(list, &events_field, "expected a list of events")),
            };
            for (index, item) in items.iter().enumerate() {
                let item_field = format!("{events_field}[{index}]");
                let entries = self.entries(item, &item_field)?.to_vec();
                let [(kind, spec)] = entries.as_slice() else {
                    return Err(self.error(
                        item,
                        &item_field,
                        "expected one event type per list item, e.g. - httpApi: 'GET /hello'",
                    ));
                };
                let kind_text = kind.text().unwrap_or("?");
                let spec_field = join(&item_field, kind_text);
                match kind_text {
                    "httpApi" => routes.extend(self.http_api(spec, &spec_field)?),
                    "http" => routes.push(self.http_rest(spec, &spec_field)?),
                    "schedule" => events.extend(self.schedule(spec, &spec_field)?),
                    "sqs" => events.push(self.sqs(spec, &spec_field)?),
                    other => {
                        return Err(self.error(
                            kind,
                            &spec_field,
                            format!("event type {other:?} is not supported; Shoal takes httpApi, http, schedule and sqs"),
                        ))
                    }
                }
            }
        }
        if !routes.is_empty() {
            self.emit("http = [".into(), function);
            for (route, node) in routes {
                self.emit(format!("  {route},"), &node);
            }
            self.emit("]".into(), function);
        }
        if !events.is_empty() {
            self.emit("events = [".into(), function);
            for (event, node) in events {
                self.emit(format!("  {event},"), &node);
            }
            self.emit("]".into(), function);
        }
        Ok(())
    }

    fn runtime(&mut self, node: &Node, field: &str) -> Result<&'static str> {
        let text = self.string(node, field)?;
        if let Some(version) = text
            .strip_prefix("nodejs")
            .and_then(|v| v.strip_suffix(".x"))
        {
            if version.parse::<u32>().is_ok() {
                self.notes.push(Self::remark(
                    node,
                    field,
                    format!("{text} runs on Shoal's Node.js runtime, the node the daemon was given (node {version} on AWS)"),
                ));
                return Ok("nodejs");
            }
        }
        if text
            .strip_prefix("python3.")
            .is_some_and(|minor| minor.parse::<u32>().is_ok())
        {
            return Ok("python");
        }
        if matches!(
            text.as_str(),
            "provided" | "provided.al2" | "provided.al2023"
        ) {
            return Ok("provided");
        }
        Err(self.error(
            node,
            field,
            format!("runtime {text:?} is not supported; use nodejs18.x/20.x/22.x, python3.x or provided.al2023"),
        ))
    }

    /// `httpApi: 'GET /path'`, `'*'`, or `{ method, path }`.
    fn http_api(&mut self, spec: &Node, field: &str) -> Result<Vec<(String, Node)>> {
        let (method, path) = match &spec.kind {
            Kind::Scalar { .. } => {
                let text = self.string(spec, field)?;
                if text.trim() == "*" {
                    // Catch-all: every method and path, the root included.
                    return Ok(vec![
                        (route(None, "/", None), spec.clone()),
                        (route(None, "/{proxy+}", None), spec.clone()),
                    ]);
                }
                let (method, path) = text
                    .trim()
                    .split_once(' ')
                    .ok_or_else(|| self.error(spec, field, "expected 'METHOD /path' (or '*')"))?;
                (method.to_owned(), path.trim().to_owned())
            }
            Kind::Map(_) => {
                self.flag_unknown(spec, field, &["method", "path"]);
                let method = match spec.get("method") {
                    Some(node) => self.string(node, &join(field, "method"))?,
                    None => "*".to_owned(),
                };
                let path = spec
                    .get("path")
                    .ok_or_else(|| self.error(spec, field, "an httpApi event needs a path"))?;
                (method, self.string(path, &join(field, "path"))?)
            }
            Kind::Seq(_) => {
                return Err(self.error(spec, field, "expected 'METHOD /path' or { method, path }"))
            }
        };
        let method = normalize_method(&method);
        Ok(vec![(route(method.as_deref(), &path, None), spec.clone())])
    }

    /// `http: 'GET path'` or `{ method, path }`: a REST API route, payload 1.0.
    fn http_rest(&mut self, spec: &Node, field: &str) -> Result<(String, Node)> {
        let (method, path) = match &spec.kind {
            Kind::Scalar { .. } => {
                let text = self.string(spec, field)?;
                let (method, path) = text
                    .trim()
                    .split_once(' ')
                    .ok_or_else(|| self.error(spec, field, "expected 'METHOD path'"))?;
                (method.to_owned(), path.trim().to_owned())
            }
            Kind::Map(_) => {
                self.flag_unknown(spec, field, &["method", "path"]);
                let method = spec
                    .get("method")
                    .ok_or_else(|| self.error(spec, field, "an http event needs a method"))?;
                let path = spec
                    .get("path")
                    .ok_or_else(|| self.error(spec, field, "an http event needs a path"))?;
                (
                    self.string(method, &join(field, "method"))?,
                    self.string(path, &join(field, "path"))?,
                )
            }
            Kind::Seq(_) => {
                return Err(self.error(spec, field, "expected 'METHOD path' or { method, path }"))
            }
        };
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        let method = normalize_method(&method);
        Ok((route(method.as_deref(), &path, Some("1.0")), spec.clone()))
    }

    /// `schedule: rate(...)` or `{ rate: EXPR | [EXPR...], enabled, input }`.
    fn schedule(&mut self, spec: &Node, field: &str) -> Result<Vec<(String, Node)>> {
        let (rates, enabled, input) = match &spec.kind {
            Kind::Scalar { .. } => (vec![(self.string(spec, field)?, spec.clone())], None, None),
            Kind::Map(_) => {
                self.flag_unknown(spec, field, &["rate", "enabled", "input"]);
                let rate = spec
                    .get("rate")
                    .ok_or_else(|| self.error(spec, field, "a schedule needs a rate"))?;
                let rates = match &rate.kind {
                    Kind::Seq(items) => items
                        .iter()
                        .map(|n| Ok((self.string(n, &join(field, "rate"))?, n.clone())))
                        .collect::<Result<Vec<_>>>()?,
                    _ => vec![(self.string(rate, &join(field, "rate"))?, rate.clone())],
                };
                let enabled = match spec.get("enabled") {
                    Some(node) => Some(self.boolean(node, &join(field, "enabled"))?),
                    None => None,
                };
                let input = match spec.get("input") {
                    Some(node) => Some(self.json(node, &join(field, "input"))?),
                    None => None,
                };
                (rates, enabled, input)
            }
            Kind::Seq(_) => {
                return Err(self.error(
                    spec,
                    field,
                    "expected rate(...) / cron(...) or { rate, enabled, input }",
                ))
            }
        };
        Ok(rates
            .into_iter()
            .map(|(expression, node)| {
                let mut parts = vec![format!("schedule = {}", quote(&expression))];
                if let Some(enabled) = enabled {
                    parts.push(format!("enabled = {enabled}"));
                }
                if let Some(input) = &input {
                    parts.push(format!("input = {}", json_to_toml(input)));
                }
                (format!("{{ {} }}", parts.join(", ")), node)
            })
            .collect())
    }

    /// `sqs: ARN-or-name` or `{ arn, batchSize, maximumBatchingWindow, functionResponseType,
    /// maximumConcurrency }`.
    fn sqs(&mut self, spec: &Node, field: &str) -> Result<(String, Node)> {
        let arn_node = match &spec.kind {
            Kind::Map(_) => {
                self.flag_unknown(
                    spec,
                    field,
                    &[
                        "arn",
                        "batchSize",
                        "maximumBatchingWindow",
                        "functionResponseType",
                        "maximumConcurrency",
                    ],
                );
                spec.get("arn").ok_or_else(|| {
                    self.error(spec, field, "an sqs event needs an arn (or a queue name)")
                })?
            }
            _ => spec,
        };
        if matches!(arn_node.kind, Kind::Map(_)) {
            return Err(self.error(
                arn_node,
                &join(field, "arn"),
                "CloudFormation references (Fn::GetAtt, Ref) are not resolved; write the queue's ARN or its name",
            ));
        }
        let arn = self.string(arn_node, &join(field, "arn"))?;
        let queue = arn.rsplit(':').next().unwrap_or(&arn).to_owned();
        let mut parts = vec![format!("queue = {}", quote(&queue))];
        if let Some(node) = spec.get("batchSize") {
            parts.push(format!(
                "batch_size = {}",
                self.number(node, &join(field, "batchSize"))?
            ));
        }
        if let Some(node) = spec.get("maximumBatchingWindow") {
            let secs = self.number(node, &join(field, "maximumBatchingWindow"))?;
            parts.push(format!("batching_window = \"{secs}s\""));
        }
        if let Some(node) = spec.get("functionResponseType") {
            let text = self.string(node, &join(field, "functionResponseType"))?;
            if text != "ReportBatchItemFailures" {
                return Err(self.error(
                    node,
                    &join(field, "functionResponseType"),
                    "the only response type is ReportBatchItemFailures",
                ));
            }
            parts.push("report_batch_item_failures = true".into());
        }
        if let Some(node) = spec.get("maximumConcurrency") {
            parts.push(format!(
                "maximum_concurrency = {}",
                self.number(node, &join(field, "maximumConcurrency"))?
            ));
        }
        Ok((format!("{{ {} }}", parts.join(", ")), arn_node.clone()))
    }

    /// A scalar's text with its variables resolved.
    fn string(&self, node: &Node, field: &str) -> Result<String> {
        self.string_at(node, field, 0)
    }

    fn string_at(&self, node: &Node, field: &str, depth: usize) -> Result<String> {
        match &node.kind {
            Kind::Scalar { text, .. } if !node.is_null() => self.resolve(text, node, field, depth),
            _ => Err(self.error(
                node,
                field,
                format!("expected a value, got {}", node.describe()),
            )),
        }
    }

    fn number(&self, node: &Node, field: &str) -> Result<u64> {
        let text = self.string(node, field)?;
        text.trim().parse().map_err(|_| {
            self.error(
                node,
                field,
                format!("expected a whole number, got {text:?}"),
            )
        })
    }

    fn boolean(&self, node: &Node, field: &str) -> Result<bool> {
        match self.string(node, field)?.as_str() {
            "true" | "True" | "TRUE" => Ok(true),
            "false" | "False" | "FALSE" => Ok(false),
            other => Err(self.error(
                node,
                field,
                format!("expected true or false, got {other:?}"),
            )),
        }
    }

    /// A scalar as a TOML literal: numbers and booleans as themselves, the rest quoted.
    fn toml_scalar(&self, node: &Node, field: &str) -> Result<String> {
        let plain = matches!(node.kind, Kind::Scalar { plain: true, .. });
        let text = self.string(node, field)?;
        let numeric = text.parse::<i64>().is_ok() || text.parse::<f64>().is_ok_and(f64::is_finite);
        Ok(if plain && (numeric || text == "true" || text == "false") {
            text
        } else {
            quote(&text)
        })
    }

    /// A node as JSON (schedule `input`), variables resolved, plain scalars typed.
    fn json(&self, node: &Node, field: &str) -> Result<serde_json::Value> {
        use serde_json::Value;
        Ok(match &node.kind {
            _ if node.is_null() => Value::Null,
            Kind::Scalar { plain, .. } => {
                let text = self.string(node, field)?;
                if *plain {
                    match text.as_str() {
                        "true" => Value::Bool(true),
                        "false" => Value::Bool(false),
                        _ => text
                            .parse::<i64>()
                            .map(Value::from)
                            .or_else(|_| text.parse::<f64>().map(Value::from))
                            .unwrap_or(Value::String(text)),
                    }
                } else {
                    Value::String(text)
                }
            }
            Kind::Seq(items) => Value::Array(
                items
                    .iter()
                    .map(|n| self.json(n, field))
                    .collect::<Result<_>>()?,
            ),
            Kind::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| Ok((k.text().unwrap_or("").to_owned(), self.json(v, field)?)))
                    .collect::<Result<_>>()?,
            ),
        })
    }

    /// Replace every `${...}` in `text`, innermost first.
    fn resolve(&self, text: &str, node: &Node, field: &str, depth: usize) -> Result<String> {
        let mut text = text.to_owned();
        for _ in 0..100 {
            let Some(start) = text.rfind("${") else {
                return Ok(text);
            };
            let end = text[start..]
                .find('}')
                .map(|i| start + i)
                .ok_or_else(|| self.error(node, field, format!("unclosed variable in {text:?}")))?;
            let value = self.variable(&text[start + 2..end], node, field, depth)?;
            text.replace_range(start..=end, &value);
        }
        Err(self.error(node, field, "too many variables"))
    }

    /// One variable: `source:argument` with an optional `, fallback`.
    fn variable(&self, expr: &str, node: &Node, field: &str, depth: usize) -> Result<String> {
        let (main, fallback) = match split_fallback(expr) {
            Some((main, fallback)) => (main.trim(), Some(fallback.trim())),
            None => (expr.trim(), None),
        };
        let value = if let Some(literal) = unquote(main) {
            Some(literal.to_owned())
        } else if let Some(name) = main.strip_prefix("env:") {
            self.env.get(name.trim()).cloned()
        } else if main == "opt:stage" {
            self.option_stage.clone()
        } else if main == "sls:stage" {
            Some(self.stage.clone())
        } else if let Some(_other) = main.strip_prefix("opt:") {
            None
        } else if let Some(path) = main.strip_prefix("self:") {
            if depth >= MAX_VARIABLE_DEPTH {
                return Err(self.error(node, field, format!("${{{expr}}} refers to itself")));
            }
            match lookup(self.root, path.trim()) {
                Some(target) => Some(self.string_at(target, field, depth + 1)?),
                None => None,
            }
        } else {
            let source = main.split([':', '(']).next().unwrap_or(main);
            return Err(self.error(
                node,
                field,
                format!("variable source {source:?} in ${{{expr}}} is not supported; Shoal resolves env:, self:, opt:stage and sls:stage"),
            ));
        };
        match (value, fallback) {
            (Some(value), _) => Ok(value),
            (None, Some(fallback)) => Ok(unquote(fallback).unwrap_or(fallback).to_owned()),
            (None, None) => Err(self.error(
                node,
                field,
                format!(
                    "${{{expr}}} has no value; set it or give a fallback: ${{{main}, 'default'}}"
                ),
            )),
        }
    }
}

/// `a.b.c` under `root` (`self:` with no path is the whole document).
fn lookup<'n>(root: &'n Node, path: &str) -> Option<&'n Node> {
    if path.is_empty() {
        return Some(root);
    }
    path.split('.').try_fold(root, |node, key| node.get(key))
}

/// Split at the first top-level comma (not inside quotes).
fn split_fallback(expr: &str) -> Option<(&str, &str)> {
    let mut quote = None;
    for (i, c) in expr.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ',') => return Some((&expr[..i], &expr[i + 1..])),
            _ => {}
        }
    }
    None
}

fn unquote(text: &str) -> Option<&str> {
    let text = text.trim();
    ["'", "\""]
        .iter()
        .find_map(|q| text.strip_prefix(q).and_then(|t| t.strip_suffix(q)))
}

fn join(field: &str, key: &str) -> String {
    if field.is_empty() {
        key.to_owned()
    } else {
        format!("{field}.{key}")
    }
}

/// A TOML basic string.
fn quote(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// `*` and `any` mean every method (`None`).
fn normalize_method(method: &str) -> Option<String> {
    let method = method.trim();
    (!(method == "*" || method.eq_ignore_ascii_case("any"))).then(|| method.to_ascii_uppercase())
}

fn route(method: Option<&str>, path: &str, payload: Option<&str>) -> String {
    let mut parts = Vec::new();
    if let Some(method) = method {
        parts.push(format!("method = {}", quote(method)));
    }
    parts.push(format!("path = {}", quote(path)));
    if let Some(payload) = payload {
        parts.push(format!("payload = {}", quote(payload)));
    }
    format!("{{ {} }}", parts.join(", "))
}

/// JSON as an inline TOML value (schedule `input`); `null` has no TOML form and is left out.
fn json_to_toml(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Null => "\"\"".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s),
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(json_to_toml)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Object(map) => format!(
            "{{ {} }}",
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{} = {}", quote(k), json_to_toml(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_segments_and_folders() {
        assert!(glob_match("src/**", "src/a/b.js"));
        assert!(glob_match("src", "src/a/b.js"));
        assert!(glob_match("*.js", "index.js"));
        assert!(!glob_match("*.js", "src/index.js"));
        assert!(glob_match("**/*.js", "src/index.js"));
        assert!(glob_match("**/*.js", "index.js"));
        assert!(glob_match("test/**", "test/x.spec.js"));
        assert!(!glob_match("test/**", "src/test.js"));
        assert!(glob_match("a?c.txt", "abc.txt"));
    }

    #[test]
    fn the_last_matching_pattern_decides() {
        let env = BTreeMap::new();
        let options = ServerlessOptions {
            stage: None,
            env: &env,
        };
        let text = "service: s\nprovider:\n  name: aws\n  runtime: nodejs20.x\npackage:\n  patterns:\n    - '!test/**'\n    - 'test/keep.js'\nfunctions:\n  f:\n    handler: index.handler\n";
        let converted = from_serverless("serverless.yml", text, &options).unwrap();
        assert!(converted.includes("index.js"));
        assert!(!converted.includes("test/drop.js"));
        assert!(converted.includes("test/keep.js"));
    }
}
