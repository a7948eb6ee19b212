//! The control API (loopback by default): the Lambda API (see [`lambda`]), the SQS API
//! (`X-Amz-Target: AmazonSQS.*`, see [`crate::sqs`]), admin routes (deploy, list, status,
//! logs, delete, keys, aliases) and `/metrics`. Every route takes the admin token; the
//! AWS-shaped ones (Lambda, SQS) also a SigV4 signature by a key from `shoal keys create`.
//!
//! A request is parsed into an [`Action`] (firecracker's shape: parse, then act), the
//! action runs against the core and yields a [`Reply`] or an error, and [`respond`] turns
//! either into a response — the only place this API chooses status codes (the SQS API's
//! are chosen in its own `respond`).

mod lambda;
mod respond;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::{Method, Request, Response};
use shoal_api::aliases::{AliasInfo, AliasList, SetAlias};
use shoal_api::keys::{CreateKey, CreatedKey, KeyList};
use shoal_api::{Deleted, DeployReply, FunctionList, LogPage, StatusReport};
use shoal_core::{InvokeRequest, Invoked, Platform};
use shoal_dispatch::BoxFuture;
use tokio::sync::watch;
use tracing::Instrument;

use crate::http::{self, Body, BodyError, Handler};
use crate::{auth, sqs};

/// Lambda's synchronous invoke payload limit.
const MAX_INVOKE_BODY: usize = 6 * 1024 * 1024;
/// Largest code archive a deploy may upload.
const MAX_ARCHIVE: usize = 64 * 1024 * 1024;
/// Log records returned when the caller does not say how many.
const DEFAULT_LOG_TAIL: usize = 100;

/// What a control request asks the platform to do.
#[derive(Debug)]
enum Action {
    Invoke {
        request: InvokeRequest,
        extras: lambda::InvokeExtras,
    },
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
    CreateKey(String),
    ListKeys,
    DeleteKey(String),
    SetAlias {
        function: String,
        name: String,
        alias: SetAlias,
    },
    ListAliases(String),
    DeleteAlias {
        function: String,
        name: String,
    },
    /// The Lambda API's calls beyond a plain invoke (see [`lambda`]).
    Lambda(lambda::Call),
}

/// What an action produced.
#[derive(Debug)]
enum Reply {
    Invoked {
        request_id: String,
        invoked: Invoked,
        /// `X-Amz-Executed-Version: $LATEST` rather than the number.
        executed_latest: bool,
        /// `LogType: Tail`: the invocation's last 4 KB of log.
        log: Option<String>,
    },
    Deployed(DeployReply),
    Functions(FunctionList),
    Deleted(Deleted),
    Status(StatusReport),
    Logs(LogPage),
    Metrics(String),
    KeyCreated(CreatedKey),
    Keys(KeyList),
    Alias(AliasInfo),
    Aliases(AliasList),
    Lambda(lambda::Answer),
}

/// Why a request was refused before or while it ran.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("missing or wrong admin token")]
    Unauthorized,
    /// An AWS-shaped route refused the caller's token or signature.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("{0}")]
    BadRequest(String),
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
    /// The region SigV4 signatures must be scoped to, and ARNs name.
    region: String,
    /// The listener's address: queue URLs point here when a request has no `Host`.
    addr: SocketAddr,
    /// True once the daemon stops (long polls end early).
    stopping: watch::Receiver<bool>,
}

impl Control {
    pub(crate) fn new(
        platform: Arc<Platform>,
        token: String,
        region: String,
        addr: SocketAddr,
        stopping: watch::Receiver<bool>,
    ) -> Arc<Control> {
        Arc::new(Control {
            platform,
            token,
            region,
            addr,
            stopping,
        })
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
        let (parts, body) = req.into_parts();
        if let Some(operation) = sqs_operation(&parts) {
            let operation = operation.to_owned();
            return match self.serve_sqs(parts, body, &operation).await {
                Ok(reply) => sqs::reply(reply, &request_id),
                Err(error) => sqs::failure(&error, &request_id),
            };
        }
        let result = match self.parse(parts, body, &request_id).await {
            Ok(action) => self.run(action).await.map_err(Failure::from),
            Err(failure) => Err(failure),
        };
        match result {
            Ok(reply) => respond::reply(reply),
            Err(failure) => {
                respond::failure(&failure, function.as_deref(), &request_id, &self.region)
            }
        }
    }

    /// The admin token, as every route asks for it.
    fn authorized(&self, parts: &Parts) -> bool {
        let authorization = parts
            .headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        auth::bearer_matches(authorization, &self.token)
    }

    /// An AWS-shaped API's caller: the admin token or a SigV4 signature for `service`.
    fn admit_aws(&self, parts: &Parts, body: &[u8], service: &str) -> Result<(), auth::AuthError> {
        let scope = auth::AwsScope {
            token: &self.token,
            region: &self.region,
            service,
        };
        auth::admit_aws(&self.platform, parts, body, &scope)
    }

    /// An SQS request: the token or a signature, then the SQS API's own parse, run and
    /// answers.
    async fn serve_sqs(
        &self,
        parts: Parts,
        body: Incoming,
        operation: &str,
    ) -> Result<sqs::Reply, sqs::Error> {
        // Queue URLs name the host the client reached (a plain `host[:port]` only).
        let host = parts
            .headers
            .get(hyper::header::HOST)
            .and_then(|v| v.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            })
            .map_or_else(|| self.addr.to_string(), str::to_owned);
        let body = http::read_body(body, sqs::MAX_REQUEST_BYTES)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge(_) => sqs::Error::RequestTooLarge,
                BodyError::Broken => sqs::Error::BrokenBody,
            })?;
        self.admit_aws(&parts, &body, sqs::SERVICE)?;
        let action = sqs::parse(operation, &body)?;
        tracing::debug!(operation, "SQS request");
        let context = sqs::Context {
            backend: self.platform.queues(),
            base_url: format!("http://{host}"),
            stopping: self.stopping.clone(),
        };
        sqs::run(&context, action).await
    }

    async fn parse(
        &self,
        parts: Parts,
        incoming: Incoming,
        request_id: &str,
    ) -> Result<Action, Failure> {
        if lambda::is_lambda_path(parts.uri.path()) {
            // The Lambda API is AWS-shaped: a signature covers the body, so read it first.
            let payload = body(incoming, MAX_INVOKE_BODY, "Invoke").await?;
            self.admit_aws(&parts, &payload, lambda::SERVICE)?;
            return lambda::parse(&parts, payload, request_id);
        }
        if !self.authorized(&parts) {
            return Err(Failure::Unauthorized);
        }
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().map(str::to_owned);
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = parts.method.clone();
        Ok(match (&method, segments.as_slice()) {
            (&Method::POST, ["admin", "functions"]) => {
                Action::Deploy(body(incoming, MAX_ARCHIVE, "Deploy").await?)
            }
            (&Method::POST, ["admin", "keys"]) => {
                let bytes = body(incoming, 64 * 1024, "CreateKey").await?;
                let request: CreateKey = serde_json::from_slice(&bytes)
                    .map_err(|e| Failure::BadRequest(format!("expected {{\"name\": ...}}: {e}")))?;
                Action::CreateKey(request.name)
            }
            (&Method::GET, ["admin", "keys"]) => Action::ListKeys,
            (&Method::PUT, ["admin", "functions", function, "aliases", name]) => {
                let bytes = body(incoming, 64 * 1024, "SetAlias").await?;
                let alias: SetAlias = serde_json::from_slice(&bytes).map_err(|e| {
                    Failure::BadRequest(format!("expected {{\"version\": N, ...}}: {e}"))
                })?;
                Action::SetAlias {
                    function: (*function).to_owned(),
                    name: (*name).to_owned(),
                    alias,
                }
            }
            (&Method::GET, ["admin", "functions", function, "aliases"]) => {
                Action::ListAliases((*function).to_owned())
            }
            (&Method::DELETE, ["admin", "functions", function, "aliases", name]) => {
                Action::DeleteAlias {
                    function: (*function).to_owned(),
                    name: (*name).to_owned(),
                }
            }
            (&Method::DELETE, ["admin", "keys", name]) => Action::DeleteKey((*name).to_owned()),
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
            Action::Invoke { request, extras } => {
                let request_id = request.request_id.clone();
                let function = request.function.clone();
                let invoked = self.platform.invoke(request).await?;
                let log = match extras.log_tail {
                    true => Some(
                        self.platform
                            .invocation_log(&function, &request_id, lambda::LOG_TAIL_BYTES)
                            .await?,
                    ),
                    false => None,
                };
                Reply::Invoked {
                    request_id,
                    invoked,
                    executed_latest: extras.executed_latest,
                    log,
                }
            }
            Action::CreateKey(name) => Reply::KeyCreated(self.platform.create_key(&name)?),
            Action::ListKeys => Reply::Keys(KeyList {
                keys: self.platform.keys()?,
            }),
            Action::DeleteKey(name) => {
                self.platform.remove_key(&name)?;
                Reply::Deleted(Deleted { deleted: name })
            }
            Action::SetAlias {
                function,
                name,
                alias,
            } => {
                let additional = alias
                    .additional_version
                    .map(|v| (v, alias.additional_weight.unwrap_or(0.0)));
                Reply::Alias(self.platform.set_alias(
                    &function,
                    &name,
                    alias.version,
                    additional,
                )?)
            }
            Action::ListAliases(function) => Reply::Aliases(AliasList {
                aliases: self.platform.aliases(&function)?,
            }),
            Action::DeleteAlias { function, name } => {
                self.platform.remove_alias(&function, &name)?;
                Reply::Deleted(Deleted { deleted: name })
            }
            Action::Lambda(call) => {
                Reply::Lambda(lambda::run(&self.platform, call, &self.region).await?)
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

/// The SQS action a request names (`POST` with `X-Amz-Target: AmazonSQS.<Action>`, on
/// any path: SDKs post to `/`, some to the queue's URL).
fn sqs_operation(parts: &Parts) -> Option<&str> {
    if parts.method != Method::POST {
        return None;
    }
    parts
        .headers
        .get("x-amz-target")?
        .to_str()
        .ok()?
        .strip_prefix(sqs::TARGET_PREFIX)
}

async fn body(incoming: Incoming, limit: usize, operation: &'static str) -> Result<Bytes, Failure> {
    http::read_body(incoming, limit).await.map_err(|e| match e {
        BodyError::TooLarge(limit) => Failure::TooLarge { limit, operation },
        BodyError::Broken => Failure::BrokenBody,
    })
}

/// The function a path names, for error messages (`ResourceNotFoundException`).
fn function_in_path(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["2015-03-31", "functions", name, ..] => lambda::function_ref(name).ok().map(|(n, _)| n),
        ["admin", "functions", name, ..] => Some((*name).to_owned()),
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
