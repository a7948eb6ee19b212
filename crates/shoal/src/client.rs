//! A small client of the control API: finds the daemon through the data directory and
//! reads its answers as the typed `shoal-api` types.

use std::path::Path;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use shoal_api::ErrorBody;

pub struct Client {
    base: String,
    token: String,
    http: HyperClient<hyper_util::client::legacy::connect::HttpConnector, Body>,
}

/// Request bodies: whole, or handed out in chunks that report progress.
type Body = BoxBody<Bytes, std::convert::Infallible>;

/// How much of an upload one frame carries: small enough for progress to move on a large
/// archive, large enough not to matter for speed.
const UPLOAD_CHUNK: usize = 256 * 1024;

/// A body handed to hyper one chunk at a time, calling `progress(sent, total)` as each
/// chunk is taken (written, or buffered for the socket).
struct Upload<F> {
    data: Bytes,
    sent: usize,
    progress: F,
}

impl<F: FnMut(usize, usize) + Send + Sync + Unpin + 'static> hyper::body::Body for Upload<F> {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.sent >= this.data.len() {
            return std::task::Poll::Ready(None);
        }
        let end = (this.sent + UPLOAD_CHUNK).min(this.data.len());
        let chunk = this.data.slice(this.sent..end);
        this.sent = end;
        (this.progress)(this.sent, this.data.len());
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.data.len()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact((self.data.len() - self.sent) as u64)
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// Fail with the daemon's error message unless the request succeeded.
    pub fn ok(self) -> anyhow::Result<Reply> {
        if self.status.is_success() {
            return Ok(self);
        }
        match serde_json::from_slice::<ErrorBody>(&self.body) {
            Ok(error) => {
                // The SQS API names its errors `com.amazonaws.sqs#QueueDoesNotExist`.
                let error_type = error.error_type.rsplit('#').next().unwrap_or_default();
                bail!("{} ({error_type}, {})", error.message, self.status)
            }
            Err(_) => bail!("{} ({})", String::from_utf8_lossy(&self.body), self.status),
        }
    }

    /// The body as `T`, or the daemon's error message as an error.
    pub fn parse<T: DeserializeOwned>(self) -> anyhow::Result<T> {
        let reply = self.ok()?;
        serde_json::from_slice(&reply.body)
            .context("the daemon's answer did not match this shoal's API (is it the same version?)")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
    }
}

impl Client {
    pub fn new(data_dir: &Path, control: Option<&str>) -> anyhow::Result<Client> {
        let token_path = data_dir.join("admin-token");
        let token = std::fs::read_to_string(&token_path)
            .with_context(|| {
                format!(
                    "reading {} (is `shoal serve --data-dir {}` running?)",
                    token_path.display(),
                    data_dir.display()
                )
            })?
            .trim()
            .to_owned();
        let addr = match control {
            Some(addr) => addr.to_owned(),
            None => std::fs::read_to_string(data_dir.join("control-addr"))
                .with_context(|| {
                    format!(
                        "reading {}/control-addr (is `shoal serve` running?)",
                        data_dir.display()
                    )
                })?
                .trim()
                .to_owned(),
        };
        Ok(Client {
            base: format!("http://{addr}"),
            token,
            http: HyperClient::builder(TokioExecutor::new()).build_http(),
        })
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        self.send(method, path, headers, Full::new(body).boxed())
            .await
    }

    /// POST `body` to `path` in chunks, calling `progress(sent, total)` along the way.
    pub async fn upload(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        progress: impl FnMut(usize, usize) + Send + Sync + Unpin + 'static,
    ) -> anyhow::Result<Reply> {
        let body = Upload {
            data: body,
            sent: 0,
            progress,
        };
        self.send(Method::POST, path, headers, body.boxed()).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> anyhow::Result<Reply> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response = self
            .http
            .request(builder.body(body)?)
            .await
            .with_context(|| format!("connecting to the daemon at {}", self.base))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// GET `path` and read the answer as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.request(Method::GET, path, &[], Bytes::new())
            .await?
            .parse()
    }
}
