//! Forwarding a call to another node of the cluster, over HTTP, once. The core decides
//! where a call goes (`Platform::placement`); this only carries it: the request as it
//! came, plus headers that mark it forwarded and carry what the receiving node cannot
//! see itself (the caller's address, the request id). The receiving node trusts those
//! headers only with the cluster's forward token, and never forwards such a call again.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::http::Body;

/// The cluster's secret: a call carrying it was forwarded by a node.
pub(crate) const TOKEN: &str = "x-shoal-forward-token";
/// The node that forwarded the call.
pub(crate) const BY: &str = "x-shoal-forwarded-by";
/// The original caller's address, for the event's `sourceIp`.
pub(crate) const SOURCE_IP: &str = "x-shoal-source-ip";
/// The request id the first node gave the call (API Gateway's, or Lambda's).
pub(crate) const REQUEST_ID: &str = "x-shoal-request-id";
/// On an answer: the call was refused before it ran (the node is cut off from its cluster,
/// or shutting down), so whoever forwarded it may run it elsewhere.
pub(crate) const NOT_RUN: &str = "x-shoal-not-run";

/// Largest answer read back from a peer: a function's 6 MB result plus headroom.
const MAX_ANSWER: usize = 8 * 1024 * 1024;

/// Headers a forwarded request never carries on: hop-by-hop ones, the caller's
/// credentials (the token stands for them), and our own markers (set afresh).
fn dropped(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
            | "authorization"
    ) || is_marker(name.as_str())
}

/// One of the forwarding headers, which a client's request must not smuggle in.
pub(crate) fn is_marker(name: &str) -> bool {
    name.starts_with("x-shoal-")
}

/// Why a call could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    /// The peer could not be reached: nothing was sent, so the call may run here.
    #[error("connecting to node {node}")]
    NotSent {
        node: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The peer refused the call before running it (cut off, or shutting down).
    #[error("node {node} refused the forwarded call without running it")]
    Refused { node: String },
    /// The call was sent and the answer did not come back whole (the peer died or the
    /// connection broke): it may have run, so it is not run again.
    #[error("node {node} did not answer the forwarded call")]
    Broken {
        node: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ForwardError {
    /// The call did not run on the peer: it may run here instead.
    pub(crate) fn not_run(&self) -> bool {
        matches!(
            self,
            ForwardError::NotSent { .. } | ForwardError::Refused { .. }
        )
    }
}

/// The client every forwarded call goes through (keep-alive connections per peer).
pub(crate) struct Forwarder {
    client: Client<HttpConnector, Full<Bytes>>,
}

/// What a forwarded request is made of.
pub(crate) struct Outgoing<'a> {
    pub node: &'a str,
    /// `host:port` of the peer's listener.
    pub addr: &'a str,
    pub method: Method,
    /// Path and query, as the caller sent them.
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    /// The markers: token, this node, source address, request id.
    pub token: &'a str,
    pub by: &'a str,
    pub source_ip: Option<&'a str>,
    pub request_id: &'a str,
}

impl Forwarder {
    pub(crate) fn new() -> Forwarder {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // A dead peer's port refuses at once; a peer cut off by the network should not
        // hold a call longer than it takes to try another way.
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Forwarder {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }

    /// Send the call and read the peer's whole answer, passed back as it is.
    pub(crate) async fn send(&self, out: Outgoing<'_>) -> Result<Response<Body>, ForwardError> {
        let mut request = Request::builder()
            .method(out.method)
            .uri(format!("http://{}{}", out.addr, out.path_and_query));
        for (name, value) in out.headers {
            if !dropped(name) {
                request = request.header(name, value);
            }
        }
        let marker = |v: &str| HeaderValue::from_str(v).ok();
        let markers = [
            (TOKEN, marker(out.token)),
            (BY, marker(out.by)),
            (SOURCE_IP, out.source_ip.and_then(marker)),
            (REQUEST_ID, marker(out.request_id)),
        ];
        for (name, value) in markers {
            if let Some(value) = value {
                request = request.header(name, value);
            }
        }
        let node = out.node.to_owned();
        let request = request
            .body(Full::new(out.body))
            .map_err(|e| ForwardError::Broken {
                node: node.clone(),
                source: Box::new(e),
            })?;
        let response = self.client.request(request).await.map_err(|source| {
            if source.is_connect() {
                ForwardError::NotSent {
                    node: node.clone(),
                    source,
                }
            } else {
                ForwardError::Broken {
                    node: node.clone(),
                    source: Box::new(source),
                }
            }
        })?;
        let (mut parts, body) = response.into_parts();
        if parts.headers.contains_key(NOT_RUN) {
            return Err(ForwardError::Refused { node });
        }
        let limited = http_body_util::Limited::new(body, MAX_ANSWER);
        let bytes = limited
            .collect()
            .await
            .map_err(|source| ForwardError::Broken {
                node: node.clone(),
                source,
            })?
            .to_bytes();
        for name in [
            "connection",
            "keep-alive",
            "transfer-encoding",
            "content-length",
        ] {
            parts.headers.remove(name);
        }
        Ok(Response::from_parts(parts, Full::new(bytes)))
    }
}
