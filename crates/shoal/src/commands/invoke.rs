//! `shoal invoke NAME`: the Lambda Invoke API, RequestResponse by default.

use std::process::ExitCode;

use bytes::Bytes;
use hyper::Method;
use shoal_api::headers;

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
            &[(headers::INVOCATION_TYPE, &args.invocation_type)],
            Bytes::from(args.data),
        )
        .await?
        .ok()?;
    if reply.headers.contains_key(headers::FUNCTION_ERROR) {
        eprintln!(
            "function error ({}):",
            reply.header(headers::FUNCTION_ERROR)
        );
        eprintln!("{}", String::from_utf8_lossy(&reply.body));
        return Ok(ExitCode::FAILURE);
    }
    match reply.status.as_u16() {
        202 => println!("queued (request id {})", reply.header(headers::REQUEST_ID)),
        204 => println!("dry run ok"),
        _ => println!("{}", String::from_utf8_lossy(&reply.body)),
    }
    Ok(ExitCode::SUCCESS)
}
