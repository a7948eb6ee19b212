//! `shoal demo`: the seed's experiment, end to end, on a throwaway platform. It deploys
//! examples/hello, sends N concurrent requests, prints one line per response in the
//! seed's format, then repeats the burst with `concurrency = 1` (Lambda's model) and
//! prints both summaries side by side.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const HELLO_JS: &str = include_str!("../../../../examples/hello/index.js");
const HELLO_TOML: &str = include_str!("../../../../examples/hello/shoal.toml");

#[derive(clap::Args)]
pub struct Args {
    /// Concurrent requests per burst.
    #[arg(long, default_value_t = 10)]
    requests: usize,
}

struct Summary {
    label: String,
    responses: usize,
    instances: usize,
    min: u128,
    median: u128,
    max: u128,
    peak_pss_kib: u64,
    peak_rss_kib: u64,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.requests == 0 {
        bail!("--requests must be at least 1");
    }
    let data_dir = std::env::temp_dir().join(format!("shoal-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let mut config = shoal_server::Config::ephemeral(data_dir.clone());
    // Lambda's model reserves each instance's full memory size; a 100-call burst of the
    // 512 MiB hello function would exceed this host's default budget and queue. The demo
    // shows that model as Lambda runs it, so it lifts the memory bound (not the count).
    config.host_budget.max_memory_kib = u64::MAX;
    let running = shoal_server::start(config).await?;
    let outcome = demo(&running, &data_dir, args.requests).await;
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    let (shoal, lambda) = outcome?;
    println!();
    print_side_by_side(&shoal, &lambda);
    Ok(ExitCode::SUCCESS)
}

async fn demo(
    running: &shoal_server::Running,
    data_dir: &Path,
    n: usize,
) -> anyhow::Result<(Summary, Summary)> {
    println!(
        "shoal demo: gateway http://{}, {n} concurrent requests per burst\n",
        running.gateway_addr
    );
    let auto = deploy(running, data_dir, HELLO_TOML).await?;
    println!("# burst 1: concurrency = \"auto\" (many invocations per instance)");
    let since = shoal_core::now_ms();
    let shoal = burst(running, "hello", auto, n, "shoal (auto)").await?;
    print_cost(running, since).await?;
    let lambda_toml = HELLO_TOML.replace("concurrency = \"auto\"", "concurrency = 1");
    let classic = deploy(running, data_dir, &lambda_toml).await?;
    println!("\n# burst 2: concurrency = 1 (Lambda's one invocation per instance)");
    let since = shoal_core::now_ms();
    let lambda = burst(running, "hello", classic, n, "lambda model (concurrency=1)").await?;
    print_cost(running, since).await?;
    Ok((shoal, lambda))
}

/// `shoal cost hello` over the burst just run: the REPORT lines it wrote, summed.
async fn print_cost(running: &shoal_server::Running, since_ms: u64) -> anyhow::Result<()> {
    let platform = running.platform.clone();
    let report = tokio::task::spawn_blocking(move || {
        platform.cost(Some("hello"), since_ms, shoal_core::lambda_prices())
    })
    .await?
    .map_err(|e| anyhow::anyhow!(shoal_core::chain(&e)))?;
    println!("\n$ shoal cost hello   (this burst)");
    print!("{}", super::cost::render(&report));
    Ok(())
}

async fn deploy(
    running: &shoal_server::Running,
    data_dir: &Path,
    manifest: &str,
) -> anyhow::Result<u32> {
    let dir = data_dir.join("example-hello");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("index.js"), HELLO_JS)?;
    std::fs::write(dir.join("shoal.toml"), manifest)?;
    let archive = shoal_server::pack_dir(&dir)?;
    let deployed = running
        .platform
        .deploy(Bytes::from(archive))
        .await
        .map_err(|e| anyhow::anyhow!(shoal_core::chain(&e)))?;
    deployed
        .first()
        .map(|d| d.version)
        .context("the example defines no function")
}

async fn burst(
    running: &shoal_server::Running,
    function: &str,
    version: u32,
    n: usize,
    label: &str,
) -> anyhow::Result<Summary> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let url: hyper::Uri = format!("http://{}/helloWorld", running.gateway_addr).parse()?;

    // Sample the memory of this version's instances while the burst runs.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let platform = running.platform.clone();
        let sampling = sampling.clone();
        let function = function.to_owned();
        tokio::spawn(async move {
            let (mut peak_pss, mut peak_rss) = (0u64, 0u64);
            while sampling.load(Ordering::Relaxed) {
                let pools = platform
                    .status(Some(&function))
                    .map(|s| s.pools)
                    .unwrap_or_default();
                let instances = pools
                    .iter()
                    .filter(|p| p.version == version)
                    .flat_map(|p| p.instances.iter());
                let (pss, rss) = instances.fold((0, 0), |(p, r), i| {
                    (p + i.pss_kib.unwrap_or(0), r + i.rss_kib.unwrap_or(0))
                });
                peak_pss = peak_pss.max(pss);
                peak_rss = peak_rss.max(rss);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            (peak_pss, peak_rss)
        })
    };

    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let response = client.get(url).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                anyhow::Ok((status, body, start.elapsed().as_millis()))
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut instance_ids = BTreeSet::new();
    for task in tasks {
        let (status, body, ms) = task.await??;
        let text = String::from_utf8_lossy(&body).trim_end().to_owned();
        if status.is_success() {
            if let Some(id) = text.split(',').next() {
                instance_ids.insert(id.to_owned());
            }
            println!("{text},{ms}");
        } else {
            println!("HTTP {status}: {text},{ms}");
        }
        latencies.push(ms);
    }
    sampling.store(false, Ordering::Relaxed);
    let (peak_pss_kib, peak_rss_kib) = sampler.await?;
    latencies.sort_unstable();
    Ok(Summary {
        label: label.to_owned(),
        responses: latencies.len(),
        instances: instance_ids.len(),
        min: latencies[0],
        median: latencies[latencies.len() / 2],
        max: latencies[latencies.len() - 1],
        peak_pss_kib,
        peak_rss_kib,
    })
}

fn print_side_by_side(a: &Summary, b: &Summary) {
    let row = |name: &str, x: String, y: String| println!("{name:<28} {x:>22} {y:>30}");
    row("", a.label.clone(), b.label.clone());
    row(
        "responses",
        a.responses.to_string(),
        b.responses.to_string(),
    );
    row(
        "instances used",
        a.instances.to_string(),
        b.instances.to_string(),
    );
    row("latency min (ms)", a.min.to_string(), b.min.to_string());
    row(
        "latency median (ms)",
        a.median.to_string(),
        b.median.to_string(),
    );
    row("latency max (ms)", a.max.to_string(), b.max.to_string());
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    row(
        "peak memory, PSS (sum)",
        mib(a.peak_pss_kib),
        mib(b.peak_pss_kib),
    );
    row(
        "peak memory, RSS (sum)",
        mib(a.peak_rss_kib),
        mib(b.peak_rss_kib),
    );
    if a.peak_pss_kib > 0 {
        println!(
            "\nthe lambda model used {:.1}x the memory and {}x the instances for the same burst",
            b.peak_pss_kib as f64 / a.peak_pss_kib as f64,
            b.instances / a.instances.max(1)
        );
    }
}
