//! `shoal rm NAME`: delete a function (running invocations finish).

use std::process::ExitCode;

use bytes::Bytes;
use hyper::Method;
use shoal_api::Deleted;

use crate::client::Client;

#[derive(clap::Args)]
pub struct Args {
    name: String,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    client
        .request(
            Method::DELETE,
            &format!("/admin/functions/{}", args.name),
            &[],
            Bytes::new(),
        )
        .await?
        .parse::<Deleted>()?;
    println!("deleted {}", args.name);
    Ok(ExitCode::SUCCESS)
}
