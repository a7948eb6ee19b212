//! The public gateway: function routes only. It reads a request into plain parts, asks
//! the core to run the routed function with an API Gateway payload 2.0 event, and hands
//! the result (or error) to [`respond`], the only place its status codes are chosen.

mod respond;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};
use shoal_core::{Placement, Platform};
use shoal_dispatch::BoxFuture;

use crate::auth;
use crate::forward::{self, Forwarder};
use crate::http::{self, Body, Handler};

/// API Gateway's payload limit for HTTP APIs.
const MAX_REQUEST_BODY: usize = 6 * 1024 * 1024;

pub(crate) struct Gateway {
    platform: Arc<Platform>,
    forwarder: Arc<Forwarder>,
}

impl Gateway {
    pub(crate) fn new(platform: Arc<Platform>, forwarder: Arc<Forwarder>) -> Arc<Gateway> {
        Arc::new(Gateway {
            platform,
            forwarder,
        })
    }

    async fn handle_request(&self, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let Some(target) = self.platform.route(parts.method.as_str(), parts.uri.path()) else {
            return respond::no_route();
        };
        let body = match http::read_body(body, MAX_REQUEST_BODY).await {
            Ok(body) => body,
            Err(e) => return respond::unreadable_body(&e),
        };
        // A call another node forwarded: its markers are trusted, and it runs here.
        let forwarded = auth::forwarded(&self.platform, &parts.headers);
        let marker = |name| {
            forwarded
                .then(|| parts.headers.get(name).and_then(|v| v.to_str().ok()))
                .flatten()
                .filter(|v| v.len() <= 64)
        };
        let request_id = marker(forward::REQUEST_ID).map_or_else(gateway_request_id, str::to_owned);
        let source_ip =
            marker(forward::SOURCE_IP).map_or_else(|| ip_text(remote.ip()), str::to_owned);
        match self.platform.placement(&target.function, forwarded) {
            Err(e) => return respond::invoked(Err(e), &request_id),
            Ok(Placement::Local) => {}
            Ok(Placement::Forward(peer)) => {
                let path_and_query = parts
                    .uri
                    .path_and_query()
                    .map_or(parts.uri.path(), |p| p.as_str());
                let sent = self
                    .forwarder
                    .send(forward::Outgoing {
                        node: &peer.node,
                        addr: &peer.gateway,
                        method: parts.method.clone(),
                        path_and_query,
                        headers: &parts.headers,
                        body: body.clone(),
                        token: self.platform.forward_token().unwrap_or_default(),
                        by: self.platform.node_name().unwrap_or_default(),
                        source_ip: Some(&source_ip),
                        request_id: &request_id,
                    })
                    .await;
                match sent {
                    Ok(response) => return response,
                    // It did not run there (the peer just died, or refused it unrun):
                    // the call runs here.
                    Err(e) if e.not_run() => {
                        tracing::warn!(request_id, error = %shoal_core::chain(&e), "forwarding failed before sending; serving here");
                    }
                    Err(e) => return respond::forward_failed(&e, &request_id),
                }
            }
        }
        // Borrowed from the parsed request: the event is written from these directly.
        let headers: Vec<(&str, &[u8])> = parts
            .headers
            .iter()
            .filter(|(name, _)| !forward::is_marker(name.as_str()))
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect();
        let host = parts
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        let lambda_request_id = shoal_core::new_request_id();
        let request = shoal_events::HttpRequest {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &headers,
            body: &body,
            source_ip: &source_ip,
            request_id: &request_id,
            time_epoch_ms: shoal_core::now_ms(),
        };
        let result = self
            .platform
            .invoke_http(&target, &request, &lambda_request_id, host)
            .await;
        respond::invoked(result, &request_id)
    }
}

/// `ip` as text; an IPv4 address (the usual case) without going through `Display`,
/// which costs more than the rest of the event's strings together.
fn ip_text(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                if octet >= 100 {
                    text.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    text.push(char::from(b'0' + octet / 10 % 10));
                }
                text.push(char::from(b'0' + octet % 10));
            }
            text
        }
        other => other.to_string(),
    }
}

/// An id in API Gateway's form (`JKJaXmPLvHcESHA=`): what `apigw-requestid` and the
/// event's `requestContext.requestId` say, distinct from the Lambda request id.
fn gateway_request_id() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(&shoal_core::random_bytes()[..11])
}

impl Handler for Gateway {
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        remote: SocketAddr,
    ) -> BoxFuture<Response<Body>> {
        Box::pin(async move { self.handle_request(req, remote).await })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "192.168.100.9",
            "::1",
            "fe80::1",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(super::ip_text(ip), ip.to_string());
        }
    }
}
