//! The public gateway: function routes only. A request becomes an API Gateway payload
//! 2.0 event, runs through the dispatcher, and the proxy result becomes the response.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use shoal_dispatch::{BoxFuture, Outcome};

use crate::http::{self, Body, BodyError, Handler};
use crate::logs::now_ms;
use crate::platform::Platform;
use crate::respond;

/// API Gateway's payload limit for HTTP APIs.
pub(crate) const MAX_REQUEST_BODY: usize = 6 * 1024 * 1024;

pub(crate) struct Gateway {
    platform: Arc<Platform>,
}

impl Gateway {
    pub(crate) fn new(platform: Arc<Platform>) -> Arc<Gateway> {
        Arc::new(Gateway { platform })
    }

    async fn handle_request(&self, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let Some((function, route)) = self
            .platform
            .lookup_route(parts.method.as_str(), parts.uri.path())
        else {
            return respond::gateway_message(StatusCode::NOT_FOUND, "Not Found");
        };
        let body = match http::read_body(body, MAX_REQUEST_BODY).await {
            Ok(body) => body,
            Err(BodyError::TooLarge(_)) => {
                return respond::gateway_message(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Request Entity Too Large",
                )
            }
            Err(BodyError::Broken) => {
                return respond::gateway_message(StatusCode::BAD_REQUEST, "Bad Request")
            }
        };
        let headers: Vec<(String, Vec<u8>)> = parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect();
        let host = parts
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost")
            .to_owned();
        let request_id = uuid::Uuid::new_v4().to_string();
        let source_ip = remote.ip().to_string();
        let event = shoal_events::build_v2_event(
            &shoal_events::HttpRequest {
                method: parts.method.as_str(),
                path: parts.uri.path(),
                query: parts.uri.query(),
                headers: &headers,
                body: &body,
                source_ip: &source_ip,
                request_id: &request_id,
                time_epoch_ms: now_ms(),
            },
            &route,
            "shoal",
            &host,
        );
        let mut response = match self
            .platform
            .invoke(&function, request_id.clone(), Bytes::from(event))
            .await
        {
            Ok(Outcome::Success(result)) => match shoal_events::try_map_v2_response(&result) {
                Ok(mapped) => to_hyper(mapped),
                Err(e) => {
                    self.platform.logs.system(
                        &function,
                        "-",
                        &request_id,
                        format!("malformed proxy result: {e}"),
                    );
                    respond::gateway_function_error()
                }
            },
            Ok(Outcome::FunctionError { .. }) => respond::gateway_function_error(),
            Err(error) => respond::gateway_error(&error),
        };
        if let Ok(value) = request_id.parse() {
            response.headers_mut().insert("apigw-requestid", value);
        }
        response
    }
}

fn to_hyper(mapped: shoal_events::HttpResponse) -> Response<Body> {
    let mut response = Response::new(http_body_util::Full::new(Bytes::from(mapped.body)));
    *response.status_mut() = StatusCode::from_u16(mapped.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = response.headers_mut();
    for (name, value) in mapped.headers {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(&value),
        ) {
            headers.append(name, value);
        }
    }
    response
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
