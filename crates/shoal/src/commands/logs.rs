//! `shoal logs NAME [-f]`: function output, tagged with instance and request id.

use std::process::ExitCode;
use std::time::Duration;

use crate::client::Client;

#[derive(clap::Args)]
pub struct Args {
    name: String,
    /// Keep printing new lines as they arrive.
    #[arg(long, short)]
    follow: bool,
    /// How many recent lines to show first.
    #[arg(long, default_value_t = 100)]
    tail: usize,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let mut path = format!("/admin/functions/{}/logs?tail={}", args.name, args.tail);
    loop {
        let body = client.get(&path).await?.ok_json()?;
        for record in body["records"].as_array().into_iter().flatten() {
            let ts = record["ts"].as_u64().unwrap_or(0);
            println!(
                "{}.{:03} {} {} {:<5} {}",
                ts / 1000,
                ts % 1000,
                record["instance"].as_str().unwrap_or("-"),
                record["request_id"].as_str().unwrap_or("-"),
                record["level"]
                    .as_str()
                    .unwrap_or(record["stream"].as_str().unwrap_or("")),
                record["message"].as_str().unwrap_or("")
            );
        }
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        path = format!("/admin/functions/{}/logs?since={}", args.name, body["next"]);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
