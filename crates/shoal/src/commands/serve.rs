//! `shoal serve`: run the platform until SIGINT or SIGTERM, then drain and stop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

#[derive(clap::Args)]
pub struct Args {
    /// Public gateway address (function routes).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Control API address (admin, Invoke API, metrics). Keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:9001")]
    control_listen: SocketAddr,
    /// The AWS region this daemon answers as: SDKs and the AWS CLI sign for it, and ARNs
    /// name it.
    #[arg(long, default_value = shoal_server::DEFAULT_REGION)]
    region: String,
    /// The node binary for Node.js functions.
    #[arg(long, default_value = "node")]
    node: PathBuf,
    /// The Python interpreter (3.11 or later) for Python functions.
    #[arg(long, default_value = "python3")]
    python: PathBuf,
    /// Seconds in-flight invocations get to finish at shutdown.
    #[arg(long, default_value_t = 30)]
    shutdown_grace: u64,
    /// Most instances across all functions.
    #[arg(long, default_value_t = shoal_server::DEFAULT_HOST_MAX_INSTANCES)]
    max_instances: u32,
    /// Most memory (MiB) the instances' memory limits may add up to [default: 3/4 of RAM].
    #[arg(long)]
    max_memory_mib: Option<u64>,
    /// Start even if the store is blank while code/ holds unpacked code, which means the
    /// database was truncated, deleted or replaced: begin with no functions.
    #[arg(long)]
    allow_empty_store: bool,
    /// Walls around instances: `auto` puts up every one the machine allows and says which
    /// are missing, `on` refuses to start without all of them, `off` runs instances as
    /// plain children of the daemon (development only).
    #[arg(long, value_enum, default_value_t = Sandbox::Auto)]
    sandbox: Sandbox,
    /// The range sandboxed instances run as starts just above this uid (one uid per live
    /// instance).
    #[arg(long, default_value_t = 200_000)]
    sandbox_uid_base: u32,
    /// How many uids the range holds: the most instances that run at once.
    #[arg(long, default_value_t = 4096)]
    sandbox_uid_count: u32,
    /// Size (MiB) at which a function's log file is rotated; one old file is kept, so a
    /// function's logs take at most about twice this on disk.
    #[arg(long, default_value_t = shoal_server::DEFAULT_MAX_LOG_BYTES / (1024 * 1024),
          value_parser = clap::value_parser!(u64).range(1..))]
    max_log_mib: u64,
    /// Messages that may wait in all queues together (async invokes included) before
    /// sends and `Event` invokes are refused with 429.
    #[arg(long, default_value_t = shoal_core::EventsConfig::default().max_pending_messages)]
    max_pending_events: u64,
    /// Bytes (MiB) those messages may take together, likewise.
    #[arg(long, default_value_t = shoal_core::EventsConfig::default().max_pending_bytes / (1024 * 1024))]
    max_pending_event_mib: u64,
    /// Wait before an async event's first retry (the n-th waits n times this). Lambda's
    /// is about a minute.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    async_retry_base: Duration,
    /// Node processes kept started, with the bootstrap loaded, for each memory and `/tmp`
    /// size of the deployed Node functions: a cold start takes one (its sandbox, its own
    /// uid) instead of starting a process. Counted in the host budget. 0 turns it off.
    #[arg(long, default_value_t = 1)]
    warm_pool: usize,
    /// Run as a node of a cluster on NATS JetStream (`nats://host:4222`): the function
    /// registry, code and heartbeats live there, and calls go to nodes with room.
    #[arg(long, value_name = "URL")]
    cluster: Option<String>,
    /// This node's name in the cluster [default: host name and gateway port]. (`--node`
    /// already names the Node.js binary.)
    #[arg(long, value_name = "NAME", requires = "cluster")]
    node_name: Option<String>,
    /// Replicas of every JetStream bucket and stream this node makes (registry, code,
    /// heartbeats, queues): 1 on a single NATS server, 3 on a NATS cluster of three.
    #[arg(long, default_value_t = 1, requires = "cluster",
          value_parser = clap::value_parser!(u16).range(1..=5))]
    cluster_replicas: u16,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    shoal_manifest::parse_duration_ms(text)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is not a duration like \"500ms\", \"30s\" or \"1m\""))
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Sandbox {
    Auto,
    On,
    Off,
}

pub async fn run(data_dir: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let mut config = shoal_server::Config::ephemeral(data_dir.to_owned());
    config.gateway_addr = args.listen;
    config.control_addr = args.control_listen;
    config.node = args.node;
    config.python = args.python;
    config.shutdown_grace = Duration::from_secs(args.shutdown_grace);
    config.host_budget.max_instances = args.max_instances;
    config.allow_empty_store = args.allow_empty_store;
    if let Some(mib) = args.max_memory_mib {
        config.host_budget.max_memory_kib = mib * 1024;
    }
    config.sandbox = shoal_core::SandboxConfig {
        mode: match args.sandbox {
            Sandbox::Auto => shoal_core::SandboxMode::Auto,
            Sandbox::On => shoal_core::SandboxMode::Required,
            Sandbox::Off => shoal_core::SandboxMode::Off,
        },
        uid_base: args.sandbox_uid_base,
        uid_count: args.sandbox_uid_count,
    };
    config.region = args.region.clone();
    config.max_log_bytes = args.max_log_mib.saturating_mul(1024 * 1024);
    config.warm_pool = args.warm_pool;
    config.events = shoal_core::EventsConfig {
        max_pending_messages: args.max_pending_events,
        max_pending_bytes: args.max_pending_event_mib.saturating_mul(1024 * 1024),
        retry_base: args.async_retry_base,
        // Postgres data-change triggers read through shoal-pg; the core only sees the trait.
        change_sources: Some(std::sync::Arc::new(shoal_pg::Postgres::new())),
        queues: None,
    };
    if let Some(node) = &args.node_name {
        if !shoal_nats::valid_node_name(node) {
            anyhow::bail!(
                "--node-name {node:?}: a node name is 1 to 64 letters, digits, '-' or '_'"
            );
        }
    }
    // In a cluster, queues (async invokes, SQS queues, schedule fires) live in JetStream,
    // shared by every node, instead of this node's events.db.
    let nats = match &args.cluster {
        Some(url) => {
            // The default name holds the gateway's port, known once it is bound (below);
            // the connection is only labelled with it.
            let label = args.node_name.as_deref().unwrap_or("shoal");
            let client = shoal_nats::connect(url, label)
                .await
                .map_err(|e| anyhow::anyhow!(shoal_core::chain(&e)))?;
            let queues = shoal_nats::JetStreamQueues::open(
                client.clone(),
                shoal_nats::QueueOptions {
                    replicas: usize::from(args.cluster_replicas),
                    max_pending_messages: config.events.max_pending_messages,
                    max_pending_bytes: config.events.max_pending_bytes,
                    ..shoal_nats::QueueOptions::default()
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!(shoal_core::chain(&e)))
            .with_context(|| format!("opening the queue store on JetStream at {url}"))?;
            config.events.queues = Some(queues);
            Some((url.clone(), client))
        }
        None => None,
    };
    let running = shoal_server::start(config).await?;
    let cluster = match nats {
        Some((url, client)) => {
            let node = args
                .node_name
                .clone()
                .unwrap_or_else(|| shoal_nats::default_node_name(running.gateway_addr.port()));
            let joined = shoal_nats::join(
                running.platform.clone(),
                client,
                shoal_nats::Config {
                    node: node.clone(),
                    gateway: shoal_nats::advertised(running.gateway_addr),
                    control: shoal_nats::advertised(running.control_addr),
                    replicas: usize::from(args.cluster_replicas),
                },
            )
            .await;
            match joined {
                Ok(cluster) => Some(cluster),
                Err(e) => {
                    running.shutdown().await;
                    return Err(anyhow::anyhow!(shoal_core::chain(&e))
                        .context(format!("joining the cluster at {url} as node {node}")));
                }
            }
        }
        None => None,
    };
    println!("shoal is serving");
    if let Some(cluster) = &cluster {
        println!(
            "  cluster      {} as node {}",
            args.cluster.as_deref().unwrap_or_default(),
            shoal_core::Cluster::node(cluster.as_ref())
        );
    }
    println!("  gateway      http://{}", running.gateway_addr);
    println!(
        "  control API  http://{}  (token in {}/admin-token)",
        running.control_addr,
        data_dir.display()
    );
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("shutting down: draining in-flight invocations");
    if let Some(cluster) = cluster {
        cluster.leave().await;
    }
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
