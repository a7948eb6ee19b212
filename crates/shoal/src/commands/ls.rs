//! `shoal ls`: deployed functions.

use std::process::ExitCode;

use shoal_api::{Concurrency, FunctionList};

use crate::client::Client;

pub async fn run(client: &Client) -> anyhow::Result<ExitCode> {
    let list: FunctionList = client.get("/admin/functions").await?;
    println!(
        "{:<20} {:>7} {:<9} {:<11} {:>9}  ROUTES",
        "NAME", "VERSION", "RUNTIME", "CONCURRENCY", "INSTANCES"
    );
    for f in list.functions {
        let runtime = format!("{:?}", f.runtime).to_lowercase();
        let concurrency = match f.concurrency {
            Concurrency::Auto => "auto".to_owned(),
            Concurrency::Fixed(n) => n.to_string(),
        };
        println!(
            "{:<20} {:>7} {:<9} {:<11} {:>9}  {}",
            f.name,
            f.version,
            runtime,
            concurrency,
            f.instances,
            f.routes.join(", ")
        );
        for event in &f.events {
            match &event.next_fire {
                Some(next) => println!(
                    "{:<20} {} {}, next fire {next}",
                    "", event.kind, event.source
                ),
                None => println!("{:<20} {} {}", "", event.kind, event.source),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
