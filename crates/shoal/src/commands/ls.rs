//! `shoal ls`: deployed functions.

use std::process::ExitCode;

use crate::client::Client;

pub async fn run(client: &Client) -> anyhow::Result<ExitCode> {
    let body = client.get("/admin/functions").await?.ok_json()?;
    println!(
        "{:<20} {:>7} {:<9} {:<11} {:>9}  ROUTES",
        "NAME", "VERSION", "RUNTIME", "CONCURRENCY", "INSTANCES"
    );
    for f in body["functions"].as_array().into_iter().flatten() {
        let routes: Vec<&str> = f["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str())
            .collect();
        println!(
            "{:<20} {:>7} {:<9} {:<11} {:>9}  {}",
            f["name"].as_str().unwrap_or("?"),
            f["version"].to_string(),
            f["runtime"].as_str().unwrap_or("?"),
            f["concurrency"].to_string().trim_matches('"'),
            f["instances"].to_string(),
            routes.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
