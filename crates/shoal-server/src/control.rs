//! The control API (loopback by default, admin token required on every route): the
//! Lambda Invoke API, admin routes (deploy, list, status, logs, delete) and `/metrics`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use shoal_dispatch::{BoxFuture, Outcome};

use crate::http::{self, Body, BodyError, Handler};
use crate::platform::Platform;
use crate::respond;

/// Lambda's synchronous invoke payload limit.
const MAX_INVOKE_BODY: usize = 6 * 1024 * 1024;
/// Largest code archive a deploy may upload.
const MAX_ARCHIVE: usize = 64 * 1024 * 1024;

pub(crate) struct Control {
    platform: Arc<Platform>,
}

impl Control {
    pub(crate) fn new(platform: Arc<Platform>) -> Arc<Control> {
        Arc::new(Control { platform })
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let presented = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        presented.is_some_and(|token| {
            constant_time_eq(token.as_bytes(), self.platform.token().as_bytes())
        })
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        if !self.authorized(&req) {
            return respond::aws_error(
                StatusCode::UNAUTHORIZED,
                "UnauthorizedException",
                "missing or wrong admin token (send Authorization: Bearer <token from the data directory's admin-token file>)",
            );
        }
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = req.method().clone();
        match (&method, segments.as_slice()) {
            (&Method::POST, ["2015-03-31", "functions", name, "invocations"]) => {
                let name = (*name).to_owned();
                self.invoke(req, &name).await
            }
            (&Method::POST, ["admin", "functions"]) => self.deploy(req).await,
            (&Method::GET, ["admin", "functions"]) => match self.platform.functions() {
                Ok(functions) => http::json(StatusCode::OK, &json!({ "functions": functions })),
                Err(e) => respond::deploy_error(&e),
            },
            (&Method::DELETE, ["admin", "functions", name]) => match self.platform.remove(name) {
                Ok(true) => http::json(StatusCode::OK, &json!({ "deleted": name })),
                Ok(false) => not_found(name),
                Err(e) => respond::deploy_error(&e),
            },
            (&Method::GET, ["admin", "status"]) => {
                let function = query_param(req.uri().query(), "function");
                if let Some(name) = &function {
                    if !self.platform.exists(name) {
                        return not_found(name);
                    }
                }
                let pools = self.platform.status(function.as_deref());
                let host = self.platform.budget();
                let memory_limits = self.platform.memory_limits();
                http::json(
                    StatusCode::OK,
                    &json!({ "pools": pools, "host": host, "memory_limits": memory_limits }),
                )
            }
            (&Method::GET, ["admin", "functions", name, "logs"]) => {
                let query = req.uri().query();
                let since = query_param(query, "since").and_then(|s| s.parse().ok());
                let tail = query_param(query, "tail")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(100);
                match self.platform.logs.read(name, since, tail) {
                    Ok((records, next)) => {
                        http::json(StatusCode::OK, &json!({ "records": records, "next": next }))
                    }
                    Err(e) => respond::aws_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "ServiceException",
                        &e.to_string(),
                    ),
                }
            }
            (&Method::GET, ["metrics"]) => {
                http::response(StatusCode::OK, "text/plain; version=0.0.4", self.metrics())
            }
            _ => respond::aws_error(
                StatusCode::NOT_FOUND,
                "UnknownOperationException",
                &format!("no route for {method} {path}"),
            ),
        }
    }

    async fn invoke(&self, req: Request<Incoming>, function: &str) -> Response<Body> {
        let invocation_type = req
            .headers()
            .get("x-amz-invocation-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("RequestResponse")
            .to_owned();
        let body = match http::read_body(req.into_body(), MAX_INVOKE_BODY).await {
            Ok(body) => body,
            Err(BodyError::TooLarge(limit)) => {
                return respond::aws_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestTooLargeException",
                    &format!(
                    "Request must be smaller than {limit} bytes for the InvokeFunction operation"
                ),
                )
            }
            Err(BodyError::Broken) => {
                return respond::aws_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestContentException",
                    "request body could not be read",
                )
            }
        };
        let payload = if body.is_empty() {
            Bytes::from_static(b"{}")
        } else {
            body
        };
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&payload) {
            return respond::aws_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                &format!("Could not parse request body into json: {e}"),
            );
        }
        if !self.platform.exists(function) {
            return not_found(function);
        }
        let request_id = uuid::Uuid::new_v4().to_string();
        match invocation_type.as_str() {
            "DryRun" => {
                return http::response(StatusCode::NO_CONTENT, "application/json", Bytes::new())
            }
            "Event" => {
                let platform = self.platform.clone();
                let function = function.to_owned();
                let id = request_id.clone();
                tokio::spawn(async move {
                    let _ = platform.invoke(&function, id, payload).await;
                });
                let mut response =
                    http::response(StatusCode::ACCEPTED, "application/json", Bytes::new());
                insert_header(&mut response, "x-amzn-requestid", &request_id);
                return response;
            }
            "RequestResponse" => {}
            other => {
                return respond::aws_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidParameterValueException",
                    &format!(
                    "X-Amz-Invocation-Type must be RequestResponse, Event or DryRun, not {other:?}"
                ),
                )
            }
        }
        let mut response = match self
            .platform
            .invoke(function, request_id.clone(), payload)
            .await
        {
            Ok(Outcome::Success(result)) => {
                http::response(StatusCode::OK, "application/json", result)
            }
            Ok(Outcome::FunctionError { body, .. }) => {
                let mut response = http::response(StatusCode::OK, "application/json", body);
                insert_header(&mut response, "x-amz-function-error", "Unhandled");
                response
            }
            Err(error) => respond::invoke_error(function, &request_id, &error),
        };
        insert_header(&mut response, "x-amzn-requestid", &request_id);
        if let Some(version) = self.platform.dispatcher.active_version(function) {
            insert_header(
                &mut response,
                "x-amz-executed-version",
                &version.to_string(),
            );
        }
        response
    }

    async fn deploy(&self, req: Request<Incoming>) -> Response<Body> {
        let archive = match http::read_body(req.into_body(), MAX_ARCHIVE).await {
            Ok(body) => body,
            Err(e) => {
                return respond::aws_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestTooLargeException",
                    &e.to_string(),
                )
            }
        };
        let platform = self.platform.clone();
        let deployed = tokio::task::spawn_blocking(move || platform.deploy(&archive)).await;
        match deployed {
            Ok(Ok(functions)) => {
                http::json(StatusCode::CREATED, &json!({ "functions": functions }))
            }
            Ok(Err(e)) => respond::deploy_error(&e),
            Err(e) => respond::aws_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                &e.to_string(),
            ),
        }
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        let pools = self.platform.status(None);
        let _ = writeln!(out, "# HELP shoal_instances Instances per function version and state.\n# TYPE shoal_instances gauge");
        for pool in &pools {
            for state in ["starting", "ready", "draining", "stopping"] {
                let n = pool
                    .instances
                    .iter()
                    .filter(|i| state_name(i.status.state) == state)
                    .count();
                let _ = writeln!(
                    out,
                    "shoal_instances{{function=\"{}\",version=\"{}\",state=\"{state}\"}} {n}",
                    pool.pool.function, pool.pool.version
                );
            }
        }
        let gauges: [Gauge; 4] = [
            (
                "shoal_instance_in_flight",
                "Invocations running in an instance.",
                |i| i.status.in_flight as u64,
            ),
            (
                "shoal_instance_limit",
                "An instance's in-flight limit.",
                |i| i.status.limit as u64,
            ),
            (
                "shoal_instance_pss_bytes",
                "Proportional set size of an instance process.",
                |i| i.resources.map_or(0, |r| r.pss_kib * 1024),
            ),
            (
                "shoal_instance_cpu_seconds_total",
                "CPU time of an instance process.",
                |i| i.resources.map_or(0, |r| r.cpu_ms / 1000),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for pool in &pools {
                for instance in &pool.instances {
                    let _ = writeln!(
                        out,
                        "{name}{{function=\"{}\",instance=\"{}\"}} {}",
                        pool.pool.function,
                        instance.status.id,
                        value(instance)
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP shoal_queued Invocations waiting for a slot.\n# TYPE shoal_queued gauge"
        );
        for pool in &pools {
            let _ = writeln!(
                out,
                "shoal_queued{{function=\"{}\",version=\"{}\"}} {}",
                pool.pool.function, pool.pool.version, pool.pool.queued
            );
        }
        let host = self.platform.budget();
        let _ = writeln!(
            out,
            "# HELP shoal_host_instances Instances on this host, all functions.\n# TYPE shoal_host_instances gauge\n\
             shoal_host_instances {}\n\
             # HELP shoal_host_max_instances The host-wide instance budget.\n# TYPE shoal_host_max_instances gauge\n\
             shoal_host_max_instances {}\n\
             # HELP shoal_host_memory_limit_bytes Sum of the memory limits of the instances on this host.\n# TYPE shoal_host_memory_limit_bytes gauge\n\
             shoal_host_memory_limit_bytes {}",
            host.instances,
            host.max_instances,
            host.memory_kib * 1024
        );
        out
    }
}

/// A per-instance metric: name, help text, and how to read it from a report.
type Gauge = (
    &'static str,
    &'static str,
    fn(&crate::platform::InstanceReport) -> u64,
);

fn state_name(state: shoal_dispatch::InstanceState) -> &'static str {
    match state {
        shoal_dispatch::InstanceState::Starting => "starting",
        shoal_dispatch::InstanceState::Ready => "ready",
        shoal_dispatch::InstanceState::Draining => "draining",
        shoal_dispatch::InstanceState::Stopping => "stopping",
    }
}

fn not_found(function: &str) -> Response<Body> {
    respond::aws_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFoundException",
        &format!("Function not found: arn:aws:lambda:local:000000000000:function:{function}"),
    )
}

fn insert_header(response: &mut Response<Body>, name: &'static str, value: &str) {
    if let Ok(value) = value.parse() {
        response.headers_mut().insert(name, value);
    }
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| value.to_owned())
    })
}

/// Compare tokens without leaking, through timing, how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Handler for Control {
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        _remote: SocketAddr,
    ) -> BoxFuture<Response<Body>> {
        Box::pin(async move { self.route(req).await })
    }
}
