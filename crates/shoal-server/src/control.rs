//! The control API (loopback by default): the Lambda API (see [`lambda`]), the SQS API
//! (`X-Amz-Target: AmazonSQS.*`, see [`crate::sqs`]), admin routes (deploy, list, status,
//! logs, delete, keys, aliases, cost), `/metrics`, and the live dashboard (`/dashboard`,
//! see [`crate::dashboard`]). Every route takes the admin token; the AWS-shaped ones
//! (Lambda, SQS) also a SigV4 signature by a key from `shoal keys create`; the dashboard's
//! `GET`s also its session cookie.
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
    Metrics {
        /// The scraper accepts OpenMetrics (Prometheus does); else the older text format.
        openmetrics: bool,
    },
    /// A file of the dashboard (no secret in it: its data come from the routes above).
    DashboardAsset(&'static crate::dashboard::Asset),
    /// A one-time login code was traded for this session (set as a cookie).
    DashboardLogin {
        session: String,
    },
    /// A token holder asks for a one-time login code (`shoal dashboard`).
    DashboardCode,
    Cost {
        function: Option<String>,
        /// Calls that ended this many seconds ago or later (all the logs hold: none).
        since_seconds: Option<u64>,
        gb_second_usd: Option<f64>,
        request_usd: Option<f64>,
    },
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
    /// A synchronous invoke that runs on another node of the cluster: the request as it
    /// came, sent there once.
    Forward {
        peer: shoal_core::Peer,
        method: Method,
        path_and_query: String,
        headers: hyper::HeaderMap,
        payload: Bytes,
        request_id: String,
        /// The invoke itself, to run here if the peer cannot be reached at all.
        local: Box<Action>,
    },
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
    Metrics {
        text: String,
        openmetrics: bool,
    },
    Cost(shoal_api::CostReport),
    DashboardAsset(&'static crate::dashboard::Asset),
    /// Logged in: go to the dashboard with this session in a cookie.
    LoggedIn {
        session: String,
    },
    LoginCode(shoal_api::DashboardLogin),
    KeyCreated(CreatedKey),
    Keys(KeyList),
    Alias(AliasInfo),
    Aliases(AliasList),
    Lambda(lambda::Answer),
    /// A peer's answer to a forwarded call, passed back as it came.
    Forwarded(Response<Body>),
    /// A forwarded call whose answer did not come back (it may have run there).
    ForwardFailed(String),
}

/// Why a request was refused before or while it ran.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("missing or wrong admin token")]
    Unauthorized,
    #[error("the dashboard login code was used, expired or is wrong")]
    LoginCode,
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
    /// Carries invokes placed on other nodes of the cluster.
    forwarder: Arc<crate::forward::Forwarder>,
    /// The dashboard's login codes and sessions.
    sessions: auth::Sessions,
}

impl Control {
    pub(crate) fn new(
        platform: Arc<Platform>,
        token: String,
        region: String,
        addr: SocketAddr,
        stopping: watch::Receiver<bool>,
        forwarder: Arc<crate::forward::Forwarder>,
    ) -> Arc<Control> {
        Arc::new(Control {
            platform,
            token,
            region,
            addr,
            stopping,
            forwarder,
            sessions: auth::Sessions::default(),
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

    /// The token, or (for a `GET` only: the dashboard reads, never changes) a dashboard
    /// session's cookie.
    fn may_read(&self, parts: &Parts) -> bool {
        self.authorized(parts)
            || (parts.method == Method::GET
                && self.sessions.cookie_valid(
                    parts
                        .headers
                        .get(hyper::header::COOKIE)
                        .and_then(|v| v.to_str().ok()),
                ))
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
            // A call another node forwarded keeps the id that node gave it, and runs here.
            let forwarded = auth::forwarded(&self.platform, &parts.headers);
            let request_id = forwarded
                .then(|| parts.headers.get(crate::forward::REQUEST_ID))
                .flatten()
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= 64)
                .unwrap_or(request_id);
            let action = lambda::parse(&parts, payload.clone(), request_id)?;
            return self.place(action, parts, payload, forwarded);
        }
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().map(str::to_owned);
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = parts.method.clone();
        // The dashboard's files and its login need no credential (the login is one).
        match (&method, segments.as_slice()) {
            (&Method::GET, ["dashboard", "login"]) => {
                let code = query_param(query.as_deref(), "code").unwrap_or_default();
                return match self.sessions.redeem(&code) {
                    Some(session) => Ok(Action::DashboardLogin { session }),
                    None => Err(Failure::LoginCode),
                };
            }
            (&Method::GET, ["dashboard", rest @ ..]) => {
                if let Some(asset) = crate::dashboard::asset(&rest.join("/")) {
                    return Ok(Action::DashboardAsset(asset));
                }
            }
            _ => {}
        }
        if !self.may_read(&parts) {
            return Err(Failure::Unauthorized);
        }
        let openmetrics = parts
            .headers
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("application/openmetrics-text"));
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
            (&Method::GET, ["metrics"]) => Action::Metrics { openmetrics },
            (&Method::POST, ["admin", "dashboard", "login"]) if self.authorized(&parts) => {
                Action::DashboardCode
            }
            (&Method::GET, ["admin", "cost"]) => {
                let param = |name| query_param(query.as_deref(), name);
                Action::Cost {
                    function: param("function"),
                    since_seconds: param("since_seconds").and_then(|s| s.parse().ok()),
                    gb_second_usd: param("gb_second_usd").and_then(|s| s.parse().ok()),
                    request_usd: param("request_usd").and_then(|s| s.parse().ok()),
                }
            }
            _ => return Err(Failure::NoRoute { method, path }),
        })
    }

    /// A synchronous invoke goes where the cluster places it; everything else runs here.
    fn place(
        &self,
        action: Action,
        parts: Parts,
        payload: Bytes,
        forwarded: bool,
    ) -> Result<Action, Failure> {
        let Action::Invoke { request, .. } = &action else {
            return Ok(action);
        };
        if request.invocation_type != shoal_core::InvocationType::RequestResponse {
            return Ok(action);
        }
        match self.platform.placement(&request.function, forwarded)? {
            shoal_core::Placement::Local => Ok(action),
            shoal_core::Placement::Forward(peer) => Ok(Action::Forward {
                peer,
                method: parts.method.clone(),
                path_and_query: parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
                // The caller's credential stays here (the forward token stands for it).
                headers: {
                    let mut headers = parts.headers;
                    headers.remove(hyper::header::AUTHORIZATION);
                    headers
                },
                payload,
                request_id: request.request_id.clone(),
                local: Box::new(action),
            }),
        }
    }

    async fn run(&self, action: Action) -> shoal_core::Result<Reply> {
        Ok(match action {
            Action::Forward {
                peer,
                method,
                path_and_query,
                headers,
                payload,
                request_id,
                local,
            } => {
                let sent = self
                    .forwarder
                    .send(crate::forward::Outgoing {
                        node: &peer.node,
                        addr: &peer.control,
                        method,
                        path_and_query: &path_and_query,
                        headers: &headers,
                        body: payload,
                        token: self.platform.forward_token().unwrap_or_default(),
                        by: self.platform.node_name().unwrap_or_default(),
                        source_ip: None,
                        request_id: &request_id,
                    })
                    .await;
                match sent {
                    Ok(response) => Reply::Forwarded(response),
                    // It did not run there (unreachable, or refused unrun): it runs here.
                    Err(e) if e.not_run() => {
                        tracing::warn!(request_id, error = %shoal_core::chain(&e), "forwarding failed before sending; serving here");
                        return Box::pin(self.run(*local)).await;
                    }
                    Err(e) => Reply::ForwardFailed(e.to_string()),
                }
            }
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
                Reply::Alias(
                    self.platform
                        .set_alias(&function, &name, alias.version, additional)
                        .await?,
                )
            }
            Action::ListAliases(function) => Reply::Aliases(AliasList {
                aliases: self.platform.aliases(&function)?,
            }),
            Action::DeleteAlias { function, name } => {
                self.platform.remove_alias(&function, &name).await?;
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
            Action::Metrics { openmetrics } => {
                let text = self.platform.metrics();
                Reply::Metrics {
                    text: if openmetrics {
                        text
                    } else {
                        shoal_core::prometheus_text(&text)
                    },
                    openmetrics,
                }
            }
            Action::DashboardAsset(asset) => Reply::DashboardAsset(asset),
            Action::DashboardLogin { session } => Reply::LoggedIn { session },
            Action::DashboardCode => {
                let code = self.sessions.issue_code();
                Reply::LoginCode(shoal_api::DashboardLogin {
                    url: format!("http://{}/dashboard", self.addr),
                    login_url: format!("http://{}/dashboard/login?code={code}", self.addr),
                    expires_in_seconds: auth::LOGIN_CODE_TTL.as_secs(),
                })
            }
            Action::Cost {
                function,
                since_seconds,
                gb_second_usd,
                request_usd,
            } => {
                let mut prices = shoal_core::lambda_prices();
                if gb_second_usd.is_some() || request_usd.is_some() {
                    prices.source = "overridden".to_owned();
                }
                prices.gb_second_usd = gb_second_usd.unwrap_or(prices.gb_second_usd);
                prices.request_usd = request_usd.unwrap_or(prices.request_usd);
                let since_ms = since_seconds.map_or(0, |s| {
                    shoal_core::now_ms().saturating_sub(s.saturating_mul(1000))
                });
                let platform = self.platform.clone();
                let report = tokio::task::spawn_blocking(move || {
                    platform.cost(function.as_deref(), since_ms, prices)
                })
                .await
                .map_err(shoal_core::Error::Task)??;
                Reply::Cost(report)
            }
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
