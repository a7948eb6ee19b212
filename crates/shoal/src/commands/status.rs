//! `shoal status [NAME] [--decisions]`: pools, queues and instances with their resources,
//! and why each pool scaled.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use shoal_api::{ClusterReport, PoolReport, QueueReport, StatusReport, TriggerReport};

use crate::client::Client;

#[derive(clap::Args)]
pub struct Args {
    name: Option<String>,
    /// Show each pool's recent scaling decisions (up to the last 50), oldest first.
    #[arg(long)]
    decisions: bool,
    /// Show each wall around instances and what it does (or why it is down).
    #[arg(long)]
    walls: bool,
}

fn names(status: &StatusReport) -> String {
    status
        .walls
        .iter()
        .filter(|w| w.up)
        .map(|w| w.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let path = match &args.name {
        Some(name) => format!("/admin/status?function={name}"),
        None => "/admin/status".to_owned(),
    };
    let status: StatusReport = client.get(&path).await?;
    let host = status.host;
    println!(
        "host: {} of {} instances, {} of {} MiB of instance memory limits",
        host.instances,
        host.max_instances,
        host.memory_kib / 1024,
        if host.max_memory_kib == u64::MAX {
            "unbounded".to_owned()
        } else {
            (host.max_memory_kib / 1024).to_string()
        },
    );
    let down: Vec<&str> = status
        .walls
        .iter()
        .filter(|w| !w.up)
        .map(|w| w.name.as_str())
        .collect();
    if down.is_empty() {
        println!("walls: all up ({})", names(&status));
    } else {
        println!("walls: DOWN: {} (up: {})", down.join(", "), names(&status));
    }
    if args.walls {
        for wall in &status.walls {
            let state = if wall.up { "up" } else { "DOWN" };
            println!("  {:<12} {:<5} {}", wall.name, state, wall.detail);
        }
    }
    if !status.warm_pool.is_empty() {
        let shapes: Vec<String> = status
            .warm_pool
            .iter()
            .map(|w| {
                let mut text = format!(
                    "{} {} MiB: {} ready",
                    w.runtime,
                    w.memory_mb,
                    w.ready_pids.len()
                );
                if w.starting > 0 {
                    text.push_str(&format!(", {} starting", w.starting));
                }
                if let Some(why) = &w.last_error {
                    text.push_str(&format!(" (last start failed: {why})"));
                }
                text
            })
            .collect();
        println!("warm pool: {}", shapes.join("; "));
    }
    if status.pools.is_empty() {
        println!("no functions deployed");
    }
    for pool in &status.pools {
        print_pool(pool, args.decisions);
    }
    print_triggers(&status.triggers);
    print_queues(&status.queues);
    if let Some(cluster) = &status.cluster {
        print_cluster(cluster);
    }
    Ok(ExitCode::SUCCESS)
}

/// Every node of the cluster from its last heartbeat, and where each function's capacity is.
fn print_cluster(cluster: &ClusterReport) {
    println!(
        "cluster: {} node(s), seen from {} (a node is gone {:.0} s after its last heartbeat)",
        cluster.nodes.len(),
        cluster.node,
        cluster.expiry_ms as f64 / 1000.0
    );
    for node in &cluster.nodes {
        let state = if node.alive { "live" } else { "GONE" };
        let load = &node.load;
        println!(
            "  {} ({state}, heartbeat {:.1}s ago): gateway {}, control {}; {} of {} instances, {} MiB of memory limits",
            node.name,
            node.age_ms as f64 / 1000.0,
            node.gateway,
            node.control,
            load.instances,
            load.max_instances,
            load.memory_kib / 1024,
        );
    }
    let mut functions: Vec<&str> = cluster
        .nodes
        .iter()
        .flat_map(|n| n.load.functions.iter().map(|f| f.name.as_str()))
        .collect();
    functions.sort_unstable();
    functions.dedup();
    for function in functions {
        let places: Vec<String> = cluster
            .nodes
            .iter()
            .filter(|n| n.alive)
            .filter_map(|n| {
                let f = n.load.functions.iter().find(|f| f.name == function)?;
                Some(format!(
                    "{}: v{} {} instance(s){}, {} busy, {} free",
                    n.name,
                    f.version,
                    f.instances,
                    if f.starting > 0 {
                        format!(" ({} starting)", f.starting)
                    } else {
                        String::new()
                    },
                    f.busy,
                    f.free
                ))
            })
            .collect();
        println!("  {function}: {}", places.join("; "));
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn age(ms: Option<u64>) -> String {
    ms.map_or("-".to_owned(), |ms| format!("{:.1}s", ms as f64 / 1000.0))
}

fn counts(counts: &std::collections::BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Queue pollers, schedules and async workers: what runs, how much at once and why.
fn print_triggers(triggers: &[TriggerReport]) {
    if triggers.is_empty() {
        return;
    }
    println!("triggers:");
    let now = now_ms();
    for t in triggers {
        let what = match t.kind.as_str() {
            "queue" => format!("queue {}", t.source),
            "schedule" => format!("schedule {}", t.source),
            "postgres" => format!("postgres {}", t.source),
            _ => "async (Event invocations)".to_owned(),
        };
        match t.kind.as_str() {
            "schedule" => {
                let next = t.next_fire_ms.map_or("-".to_owned(), |n| {
                    format!("in {:.0}s", (n - now).max(0) as f64 / 1000.0)
                });
                println!("  {} <- {what}: next fire {next}", t.function);
            }
            "postgres" => println!(
                "  {} <- {what}: position {}, lag {} change(s) / {}; {} batch(es) in flight of {} ({})",
                t.function,
                t.position.as_deref().unwrap_or("-"),
                t.backlog,
                age(t.oldest_age_ms),
                t.in_flight,
                t.cap,
                t.why
            ),
            _ => println!(
                "  {} <- {what}: {} in flight of {} ({}); backlog {}, oldest {}",
                t.function,
                t.in_flight,
                t.cap,
                t.why,
                t.backlog,
                age(t.oldest_age_ms)
            ),
        }
        if !t.counts.is_empty() {
            println!("    {}", counts(&t.counts));
        }
        if let Some(error) = &t.last_error {
            println!("    last error: {error}");
        }
    }
}

fn print_queues(queues: &[QueueReport]) {
    if queues.is_empty() {
        return;
    }
    println!("queues:");
    println!(
        "  {:<24} {:>9} {:>9} {:>8} {:>9}  DEAD-LETTER",
        "NAME", "VISIBLE", "IN-FLIGHT", "DELAYED", "OLDEST"
    );
    for q in queues {
        let dead_letter = match (&q.dead_letter, q.max_receive_count) {
            (Some(dlq), Some(n)) => format!("{dlq} after {n} receives"),
            _ => "-".to_owned(),
        };
        println!(
            "  {:<24} {:>9} {:>9} {:>8} {:>9}  {dead_letter}",
            q.name,
            q.visible,
            q.in_flight,
            q.delayed,
            age(q.oldest_age_ms)
        );
        if !q.counts.is_empty() {
            println!("    {}", counts(&q.counts));
        }
    }
}

fn print_pool(pool: &PoolReport, decisions: bool) {
    let retired = if pool.retired {
        " (retired, draining)"
    } else {
        ""
    };
    let limit = if pool.auto {
        format!("auto (new instances start at {})", pool.learned_limit)
    } else {
        pool.limit.to_string()
    };
    println!(
        "{} v{}{}: {} instance(s), desired {}, max {}; {} queued; limit {}",
        pool.function,
        pool.version,
        retired,
        pool.instances.len(),
        pool.desired,
        pool.max_instances,
        pool.queued,
        limit,
    );
    println!(
        "  demand (in flight + queued): {:.1} over 6 s, {:.1} over 60 s",
        pool.demand_panic, pool.demand_stable,
    );
    if decisions {
        println!("  decisions ({}, oldest first):", pool.decisions.len());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for d in &pool.decisions {
            let ago = now.saturating_sub(d.at_ms) as f64 / 1000.0;
            println!("    {ago:>8.1}s ago  {:<16} {}", d.kind, d.message);
        }
    } else {
        println!("  last decision: {}", pool.last_decision());
    }
    if pool.instances.is_empty() {
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
    for i in &pool.instances {
        println!(
            "  {:<22} {:>8} {:<9} {:>9} {:>6} {:>9} {:>9} {:>8} {:>8} {:>7}",
            i.id,
            i.pid.map_or("-".to_owned(), |p| p.to_string()),
            i.state,
            i.in_flight,
            i.limit,
            mib(i.rss_kib),
            mib(i.pss_kib),
            i.cpu_busy
                .map_or("-".to_owned(), |b| format!("{:.0}%", b * 100.0)),
            format!("{:.0}s", i.uptime_ms as f64 / 1000.0),
            i.invocations,
        );
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".to_owned(), |k| format!("{:.1}MiB", k as f64 / 1024.0))
}
