//! An echo function on the official Rust runtime client, serving up to
//! `AWS_LAMBDA_MAX_CONCURRENCY` calls at once with `run_concurrent`.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

async fn handler(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (payload, context) = event.into_parts();
    if payload.get("fail").is_some() {
        return Err("asked to fail".into());
    }
    let ms = payload.get("sleepMs").and_then(Value::as_u64).unwrap_or(0);
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    Ok(json!({
        "requestId": context.request_id,
        "instance": std::env::var("AWS_LAMBDA_LOG_STREAM_NAME").unwrap_or_default(),
        "told": std::env::var("AWS_LAMBDA_MAX_CONCURRENCY").unwrap_or_default(),
    }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run_concurrent(service_fn(handler)).await
}
