//! `shoal logs NAME [-f]`: function output, tagged with instance and request id.

use std::process::ExitCode;
use std::time::Duration;

use shoal_api::LogPage;

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
        let page: LogPage = client.get(&path).await?;
        for record in &page.records {
            println!(
                "{}.{:03} {} {} {:<5} {}",
                record.ts / 1000,
                record.ts % 1000,
                record.instance,
                record.request_id.as_deref().unwrap_or("-"),
                record.level.as_deref().unwrap_or(&record.stream),
                record.message
            );
        }
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        path = format!("/admin/functions/{}/logs?since={}", args.name, page.next);
        // A page that brought records may not be all there is (pages are capped).
        if page.records.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
