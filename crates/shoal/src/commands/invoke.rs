//! `shoal invoke NAME`: the Lambda Invoke API, RequestResponse by default.

use std::process::ExitCode;

use bytes::Bytes;
use hyper::Method;

use crate::client::Client;

#[derive(clap::Args)]
pub struct Args {
    name: String,
    /// The event, as JSON.
    #[arg(long, short, default_value = "{}")]
    data: String,
    /// RequestResponse, Event or DryRun.
    #[arg(long = "type", default_value = "RequestResponse")]
    invocation_type: String,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let path = format!("/2015-03-31/functions/{}/invocations", args.name);
    let reply = client
        .request(
            Method::POST,
            &path,
            &[("x-amz-invocation-type", &args.invocation_type)],
            Bytes::from(args.data),
        )
        .await?;
    if !reply.status.is_success() {
        reply.ok_json()?;
    }
    if let Some(kind) = reply.headers.get("x-amz-function-error") {
        eprintln!("function error ({}):", kind.to_str().unwrap_or("?"));
        eprintln!("{}", String::from_utf8_lossy(&reply.body));
        return Ok(ExitCode::FAILURE);
    }
    match reply.status.as_u16() {
        202 => println!("queued (request id {})", header(&reply, "x-amzn-requestid")),
        204 => println!("dry run ok"),
        _ => println!("{}", String::from_utf8_lossy(&reply.body)),
    }
    Ok(ExitCode::SUCCESS)
}

fn header<'a>(reply: &'a crate::client::Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
}
