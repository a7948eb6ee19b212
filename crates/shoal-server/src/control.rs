//! The control API (loopback by default, admin token required on every route): the
//! Lambda Invoke API, admin routes (deploy, list, status, logs, delete) and `/metrics`.
//!
//! A request is parsed into an [`Action`] (firecracker's shape: parse, then act), the
//! action runs against the core and yields a [`Reply`] or an error, and [`respond`] turns
//! either into a response — the only place this API chooses status codes.

mod respond;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use shoal_api::{headers, Deleted, DeployReply, FunctionList, LogPage, StatusReport};
use shoal_core::{InvocationType, InvokeRequest, Invoked, Platform};
use shoal_dispatch::BoxFuture;
use tracing::Instrument;

use crate::auth;
use crate::http::{self, Body, BodyError, Handler};

/// Lambda's synchronous invoke payload limit.
const MAX_INVOKE_BODY: usize = 6 * 1024 * 1024;
/// Largest code archive a deploy may upload.
const MAX_ARCHIVE: usize = 64 * 1024 * 1024;
/// Log records returned when the caller does not say how many.
const DEFAULT_LOG_TAIL: usize = 100;

/// What a control request asks the platform to do.
#[derive(Debug)]
enum Action {
    Invoke(InvokeRequest),
    Deploy(Bytes),
    ListFunctions,
    DeleteFunction(String),
    Status {
        function: Option<String>,
    },
    Logs {
        function: String,
        since: Option<u64>,
        tail: usize,
    },
    Metrics,
}

/// What an action produced.
#[derive(Debug)]
enum Reply {
    Invoked {
        request_id: String,
        invoked: Invoked,
    },
    Deployed(DeployReply),
    Functions(FunctionList),
    Deleted(Deleted),
    Status(StatusReport),
    Logs(LogPage),
    Metrics(String),
}

/// Why a request was refused before or while it ran.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("missing or wrong admin token")]
    Unauthorized,
    #[error("no route for {method} {path}")]
    NoRoute { method: Method, path: String },
    #[error("request body exceeds {limit} bytes")]
    TooLarge {
        limit: usize,
        operation: &'static str,
    },
    #[error("request body could not be read")]
    BrokenBody,
    #[error(transparent)]
    Platform(#[from] shoal_core::Error),
}

pub(crate) struct Control {
    platform: Arc<Platform>,
    token: String,
}

impl Control {
    pub(crate) fn new(platform: Arc<Platform>, token: String) -> Arc<Control> {
        Arc::new(Control { platform, token })
    }

    async fn handle_request(&self, req: Request<Incoming>) -> Response<Body> {
        let request_id = shoal_core::new_request_id();
        let function = function_in_path(req.uri().path());
        // Everything logged while serving this request (an internal error's details, the
        // invocation it starts) carries its method, path and request id.
        let span = tracing::info_span!(
            "control",
            method = %req.method(),
            path = req.uri().path(),
            request_id = %request_id,
        );
        self.serve(req, request_id, function).instrument(span).await
    }

    async fn serve(
        &self,
        req: Request<Incoming>,
        request_id: String,
        function: Option<String>,
    ) -> Response<Body> {
        let result = match self.parse(req, &request_id).await {
            Ok(action) => self.run(action).await.map_err(Failure::from),
            Err(failure) => Err(failure),
        };
        match result {
            Ok(reply) => respond::reply(reply),
            Err(failure) => respond::failure(&failure, function.as_deref(), &request_id),
        }
    }

    async fn parse(&self, req: Request<Incoming>, request_id: &str) -> Result<Action, Failure> {
        let authorization = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !auth::bearer_matches(authorization, &self.token) {
            return Err(Failure::Unauthorized);
        }
        let path = req.uri().path().to_owned();
        let query = req.uri().query().map(str::to_owned);
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = req.method().clone();
        Ok(match (&method, segments.as_slice()) {
            (&Method::POST, ["2015-03-31", "functions", name, "invocations"]) => {
                let invocation_type = req
                    .headers()
                    .get(headers::INVOCATION_TYPE)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .map_or(Ok(InvocationType::default()), |t| t.parse())?;
                Action::Invoke(InvokeRequest {
                    function: (*name).to_owned(),
                    payload: body(req, MAX_INVOKE_BODY, "InvokeFunction").await?,
                    invocation_type,
                    request_id: request_id.to_owned(),
                })
            }
            (&Method::POST, ["admin", "functions"]) => {
                Action::Deploy(body(req, MAX_ARCHIVE, "Deploy").await?)
            }
            (&Method::GET, ["admin", "functions"]) => Action::ListFunctions,
            (&Method::DELETE, ["admin", "functions", name]) => {
                Action::DeleteFunction((*name).to_owned())
            }
            (&Method::GET, ["admin", "status"]) => Action::Status {
                function: query_param(query.as_deref(), "function"),
            },
            (&Method::GET, ["admin", "functions", name, "logs"]) => Action::Logs {
                function: (*name).to_owned(),
                since: query_param(query.as_deref(), "since").and_then(|s| s.parse().ok()),
                tail: query_param(query.as_deref(), "tail")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(DEFAULT_LOG_TAIL),
            },
            (&Method::GET, ["metrics"]) => Action::Metrics,
            _ => return Err(Failure::NoRoute { method, path }),
        })
    }

    async fn run(&self, action: Action) -> shoal_core::Result<Reply> {
        Ok(match action {
            Action::Invoke(request) => {
                let request_id = request.request_id.clone();
                let invoked = self.platform.invoke(request).await?;
                Reply::Invoked {
                    request_id,
                    invoked,
                }
            }
            Action::Deploy(archive) => Reply::Deployed(DeployReply {
                functions: self.platform.deploy(archive).await?,
            }),
            Action::ListFunctions => Reply::Functions(FunctionList {
                functions: self.platform.functions()?,
            }),
            Action::DeleteFunction(name) => {
                self.platform.remove(&name).await?;
                Reply::Deleted(Deleted { deleted: name })
            }
            Action::Status { function } => {
                Reply::Status(self.platform.status(function.as_deref())?)
            }
            Action::Logs {
                function,
                since,
                tail,
            } => Reply::Logs(self.platform.logs(&function, since, tail).await?),
            Action::Metrics => Reply::Metrics(self.platform.metrics()),
        })
    }
}

async fn body(
    req: Request<Incoming>,
    limit: usize,
    operation: &'static str,
) -> Result<Bytes, Failure> {
    http::read_body(req.into_body(), limit)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(limit) => Failure::TooLarge { limit, operation },
            BodyError::Broken => Failure::BrokenBody,
        })
}

/// The function a path names, for error messages (`ResourceNotFoundException`).
fn function_in_path(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["2015-03-31", "functions", name, ..] | ["admin", "functions", name, ..] => {
            Some((*name).to_owned())
        }
        _ => None,
    }
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| value.to_owned())
    })
}

impl Handler for Control {
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        _remote: SocketAddr,
    ) -> BoxFuture<Response<Body>> {
        Box::pin(async move { self.handle_request(req).await })
    }
}
