//! A small client of the control API: finds the daemon through the data directory and
//! reads its answers as the typed `shoal-api` types.

use std::path::Path;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use shoal_api::ErrorBody;

pub struct Client {
    base: String,
    token: String,
    http: HyperClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
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
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response = self
            .http
            .request(builder.body(Full::new(body))?)
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
