//! The HTTP/1.1 accept loop shared by the gateway and the control API, and small helpers
//! for bodies and responses.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use shoal_dispatch::BoxFuture;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub(crate) type Body = Full<Bytes>;

/// Something that answers requests on one listener.
pub(crate) trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        remote: SocketAddr,
    ) -> BoxFuture<Response<Body>>;
}

/// Accept connections until `stopped` turns true; open connections finish their current
/// request and close. Returns once the listener is closed and every connection is done,
/// so a caller that waits for it knows each accepted request got its answer.
pub(crate) async fn serve<H: Handler>(
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
    handler: Arc<H>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and the like: back off a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = async { let _ = stopped.wait_for(|s| *s).await; } => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let mut stopped = stopped.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler.handle(req, remote).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async { let _ = stopped.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Past its limit, a body is still read (and thrown away) up to this many bytes, for at
/// most [`DRAIN_TIME`], so that the client, still sending, reads the refusal instead of a
/// reset connection; a larger or slower one is cut off.
const DRAIN_MAX: usize = 16 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Read a whole body of at most `limit` bytes; `TooLarge` when it is larger (nothing past
/// the limit is kept).
pub(crate) async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    let mut collected = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| BodyError::Broken)?.into_data() else {
            continue;
        };
        if collected.len() + data.len() > limit {
            drop(collected);
            let mut seen = 0usize;
            let _ = tokio::time::timeout(DRAIN_TIME, async {
                while let Some(Ok(frame)) = body.frame().await {
                    seen += frame.data_ref().map_or(0, |d| d.len());
                    if seen > DRAIN_MAX {
                        break;
                    }
                }
            })
            .await;
            return Err(BodyError::TooLarge(limit));
        }
        collected.extend_from_slice(&data);
    }
    Ok(collected.freeze())
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("request body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("request body could not be read")]
    Broken,
}

pub(crate) fn response(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// `value` as a JSON response. Our own types always encode; if one ever did not, the
/// client gets an empty object rather than a broken body, and the log says why.
pub(crate) fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => response(status, "application/json", body),
        Err(e) => {
            tracing::error!(error = %e, "encoding a JSON reply");
            response(status, "application/json", "{}")
        }
    }
}
