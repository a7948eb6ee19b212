//! `shoal status [NAME]`: pools, queues and instances with their resources.

use std::process::ExitCode;

use serde_json::Value;

use crate::client::Client;

#[derive(clap::Args)]
pub struct Args {
    name: Option<String>,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let path = match &args.name {
        Some(name) => format!("/admin/status?function={name}"),
        None => "/admin/status".to_owned(),
    };
    let body = client.get(&path).await?.ok_json()?;
    let host = &body["host"];
    println!(
        "host: {} of {} instances, {} of {} MiB of instance memory limits",
        host["instances"],
        host["max_instances"],
        host["memory_kib"].as_u64().unwrap_or(0) / 1024,
        host["max_memory_kib"]
            .as_u64()
            .map_or("?".to_owned(), |k| (k / 1024).to_string()),
    );
    if let Some(limits) = body["memory_limits"].as_str() {
        println!("memory limits: {limits}");
    }
    let pools = body["pools"].as_array().cloned().unwrap_or_default();
    if pools.is_empty() {
        println!("no functions deployed");
    }
    for pool in pools {
        print_pool(&pool);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_pool(pool: &Value) {
    let retired = if pool["retired"].as_bool() == Some(true) {
        " (retired, draining)"
    } else {
        ""
    };
    let limit = if pool["auto"].as_bool() == Some(true) {
        format!("auto (new instances start at {})", pool["learned_limit"])
    } else {
        pool["limit"].to_string()
    };
    println!(
        "{} v{}{}: {} instance(s), desired {}, max {}; {} queued; limit {}",
        pool["function"].as_str().unwrap_or("?"),
        pool["version"],
        retired,
        pool["instances"].as_array().map_or(0, Vec::len),
        pool["desired"],
        pool["max_instances"],
        pool["queued"],
        limit,
    );
    println!(
        "  demand (in flight + queued): {:.1} over 6 s, {:.1} over 60 s",
        pool["demand_panic"].as_f64().unwrap_or(0.0),
        pool["demand_stable"].as_f64().unwrap_or(0.0),
    );
    println!(
        "  last decision: {}",
        pool["last_decision"].as_str().unwrap_or("")
    );
    let instances = pool["instances"].as_array().cloned().unwrap_or_default();
    if instances.is_empty() {
        return;
    }
    println!(
        "  {:<22} {:>8} {:<9} {:>9} {:>6} {:>9} {:>9} {:>8} {:>8} {:>7}",
        "INSTANCE",
        "PID",
        "STATE",
        "IN-FLIGHT",
        "LIMIT",
        "RSS",
        "PSS",
        "CPU BUSY",
        "UPTIME",
        "CALLS"
    );
    for i in instances {
        println!(
            "  {:<22} {:>8} {:<9} {:>9} {:>6} {:>9} {:>9} {:>8} {:>8} {:>7}",
            i["id"].as_str().unwrap_or("?"),
            i["pid"].to_string(),
            i["state"].as_str().unwrap_or("?"),
            i["in_flight"].to_string(),
            i["limit"].to_string(),
            mib(&i["rss_kib"]),
            mib(&i["pss_kib"]),
            i["cpu_busy"]
                .as_f64()
                .map_or("-".to_owned(), |b| format!("{:.0}%", b * 100.0)),
            format!("{:.0}s", i["uptime_ms"].as_f64().unwrap_or(0.0) / 1000.0),
            i["invocations"].to_string(),
        );
    }
}

fn mib(kib: &Value) -> String {
    kib.as_f64()
        .map_or("-".to_owned(), |k| format!("{:.1}MiB", k / 1024.0))
}
