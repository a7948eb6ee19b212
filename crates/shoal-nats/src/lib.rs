//! Cluster mode on NATS JetStream: the function registry in a key-value bucket, code blobs
//! in the object store, queues on work-queue streams, node heartbeats and schedule leases.
//!
//! [`join`] connects a node's [`Platform`] to the cluster and implements the core's
//! [`shoal_core::Cluster`] trait for it: deploys, deletes and aliases are published to
//! the registry (`registry.rs`), every node installs what the registry holds into its own
//! store, and calls are placed from the nodes' heartbeats (`nodes.rs`). It holds no
//! transport of its own beyond the NATS client: forwarding a call is the server's job.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod nodes;
mod registry;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal_api::ClusterReport;
use shoal_core::{ClusterError, Placement, Platform};
use shoal_dispatch::Room;
use shoal_manifest::FunctionSpec;

pub use async_nats;
pub use nodes::{EXPIRY, HEARTBEAT};

/// Errors of joining a cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error(
        "opening JetStream {what} {name} (is JetStream enabled on the server? nats-server -js)"
    )]
    Bucket {
        what: &'static str,
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("node name {0:?} is not valid: use 1 to 64 letters, digits, '-' or '_'")]
    NodeName(String),
    #[error("{what}")]
    Registry {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a node joins its cluster.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name, unique in the cluster.
    pub node: String,
    /// Where this node's public gateway and control API listen, as peers reach them
    /// (`host:port`).
    pub gateway: String,
    pub control: String,
    /// Replicas of the registry's and heartbeats' buckets and of the code store, when this
    /// node makes them: 1 for a single NATS server, 3 on a NATS cluster.
    pub replicas: usize,
}

/// A node's membership of a cluster: what the platform calls through the
/// [`shoal_core::Cluster`] trait, and the tasks that keep its copy of the registry and its
/// view of the other nodes current.
pub struct NatsCluster {
    node: String,
    registry: registry::Registry,
    nodes: Arc<nodes::Nodes>,
    token: String,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCluster")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// How peers reach a listener bound to `addr`: itself, or, bound to every interface,
/// this machine's host name with its port.
pub fn advertised(addr: std::net::SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("{}:{}", host_name(), addr.port())
    } else {
        addr.to_string()
    }
}

/// The default node name: the host name and the gateway's port (unique per daemon on a
/// machine), with characters a node name cannot hold replaced by `-`.
pub fn default_node_name(gateway_port: u16) -> String {
    let host: String = host_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(57)
        .collect();
    format!("{host}-{gateway_port}")
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Whether `name` can be a node's name (a key in the nodes bucket).
pub fn valid_node_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Connect to the NATS server at `url`, the connection named after `label` (the node's
/// name, where known). The client reconnects by itself for as long as the daemon runs.
pub async fn connect(url: &str, label: &str) -> Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name(format!("shoal {label}"))
        .connection_timeout(Duration::from_secs(5))
        // A KV operation waits this long for JetStream before failing: a deploy on a node
        // cut off from NATS fails rather than hangs.
        .request_timeout(Some(Duration::from_secs(5)))
        .connect(url)
        .await
        .map_err(|source| Error::Connect {
            url: url.to_owned(),
            source,
        })
}

/// Join `platform` to the cluster on `client` (see [`connect`]): open (or create) the
/// buckets, bring this node's store up to the registry (installing what it lacks,
/// removing what the cluster removed), start heartbeats and the watches, and make the
/// platform publish and place through the cluster from now on. Returns once this node has
/// caught up.
pub async fn join(
    platform: Arc<Platform>,
    client: async_nats::Client,
    config: Config,
) -> Result<Arc<NatsCluster>> {
    if !valid_node_name(&config.node) {
        return Err(Error::NodeName(config.node));
    }
    let js = async_nats::jetstream::new(client.clone());
    let registry = registry::Registry::open(&js, config.replicas).await?;
    let token = registry.forward_token().await?;
    let nodes = nodes::Nodes::open(&js, &config).await?;
    nodes.beat(&platform).await;
    let cluster = Arc::new(NatsCluster {
        node: config.node.clone(),
        registry: registry.clone(),
        nodes: nodes.clone(),
        token,
        tasks: std::sync::Mutex::new(Vec::new()),
    });
    // A data directory joining this cluster for the first time publishes what it ran
    // alone (a catch-up would take it for removed); one that was here before follows the
    // registry, deletions included.
    let cluster_id = registry.cluster_id().await?;
    let marker = platform.data_dir().join("cluster-id");
    let member = std::fs::read_to_string(&marker).is_ok_and(|id| id.trim() == cluster_id);
    if !member {
        registry.adopt(&platform, cluster.clone()).await?;
    }
    // Then catch up, then publish through the cluster: a deploy here never races the
    // first reconciliation.
    let watch_from = registry.catch_up(&platform).await?;
    if !member {
        std::fs::write(&marker, &cluster_id).map_err(|source| Error::Registry {
            what: format!("writing {}", marker.display()),
            source: Box::new(source),
        })?;
    }
    platform.join_cluster(cluster.clone());
    let tasks = vec![
        tokio::spawn(registry.clone().follow(platform.clone(), watch_from)),
        tokio::spawn(nodes.clone().heartbeats(Arc::downgrade(&platform))),
        tokio::spawn(nodes.clone().watch()),
    ];
    *cluster.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
    tracing::info!(node = %config.node, "joined the cluster");
    Ok(cluster)
}

impl NatsCluster {
    /// Leave the cluster: stop the tasks and remove this node's heartbeat, so peers stop
    /// sending it calls at once instead of after the heartbeat expires.
    pub async fn leave(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
        self.nodes.leave().await;
    }
}

#[async_trait::async_trait]
impl shoal_core::Cluster for NatsCluster {
    fn node(&self) -> &str {
        &self.node
    }

    async fn put_code(&self, digest: &str, bytes: Bytes) -> Result<(), ClusterError> {
        self.registry.put_code(digest, bytes).await
    }

    async fn publish(
        &self,
        spec: &FunctionSpec,
        code_digest: &str,
        created_at_ms: i64,
    ) -> Result<u32, ClusterError> {
        self.registry
            .publish(spec, code_digest, created_at_ms)
            .await
    }

    async fn unpublish(&self, function: &str) -> Result<(), ClusterError> {
        self.registry.unpublish(function).await
    }

    async fn publish_alias(
        &self,
        function: &str,
        name: &str,
        target: Option<(u32, Option<(u32, f64)>)>,
    ) -> Result<(), ClusterError> {
        self.registry.publish_alias(function, name, target).await
    }

    fn place(&self, function: &str, local: Option<&Room>) -> Result<Placement, ClusterError> {
        self.nodes.place(function, local)
    }

    fn forward_token(&self) -> &str {
        &self.token
    }

    fn report(&self) -> ClusterReport {
        self.nodes.report()
    }
}

/// Open the key-value bucket `name`, creating it if missing. The bucket's stream is made
/// here as `async-nats` would make it, because its own `create_key_value` first reads the
/// account's info in a shape nats-server 2.9 does not send.
pub(crate) async fn kv_bucket(
    js: &async_nats::jetstream::Context,
    name: &str,
    description: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<async_nats::jetstream::kv::Store> {
    use async_nats::jetstream::stream;
    if let Ok(kv) = js.get_key_value(name).await {
        return Ok(kv);
    }
    let bucket_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::Bucket {
        what: "key-value bucket",
        name: name.to_owned(),
        source,
    };
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        description: Some(description.to_owned()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        // The duplicate window may not exceed the age limit.
        duplicate_window: if max_age.is_zero() {
            Duration::from_secs(120)
        } else {
            max_age.min(Duration::from_secs(120))
        },
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        ..Default::default()
    })
    .await
    .map_err(|e| bucket_error(Box::new(e)))?;
    js.get_key_value(name)
        .await
        .map_err(|e| bucket_error(Box::new(e)))
}

/// A backend failure as the core's error.
pub(crate) fn backend(
    what: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> ClusterError {
    ClusterError::Backend {
        what: what.into(),
        source: Box::new(source),
    }
}

pub mod queue;
#[cfg(feature = "testing")]
pub mod testing;

pub use queue::{JetStreamQueues, Options as QueueOptions};
