//! Cluster mode as the core sees it: a [`Cluster`] trait the platform calls (publish a
//! deploy, place a call), and the methods a cluster implementation calls back to install
//! what other nodes published into this node's store and dispatcher.
//!
//! The core knows no cluster engine and no transport: `shoal-nats` implements the trait on
//! NATS JetStream and `shoal-server` forwards calls over HTTP. Without a cluster joined,
//! nothing here runs and the platform is the single-machine one.

use std::sync::Arc;

use bytes::Bytes;
use shoal_api::{ClusterReport, FunctionLoad, NodeLoad};
use shoal_dispatch::Room;
use shoal_manifest::FunctionSpec;
use shoal_store::VersionRecord;

use crate::{code, deploy, Error, Platform, Result};

/// What goes wrong between this node and its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The node cannot reach the cluster: it must not take work it cannot report.
    #[error("this node is cut off from the cluster ({0}); retry on another node")]
    CutOff(String),
    /// The cluster engine refused or failed an operation.
    #[error("{what}")]
    Backend {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Where a call should run.
#[derive(Debug)]
pub enum Placement {
    /// Here: this node has room, or is the one that starts instances for the function.
    Local,
    /// On another node, once: the transport forwards it there, marked as forwarded.
    Forward(Peer),
}

/// A node a call is forwarded to, and a guard counting the call against that node's
/// advertised room until it is dropped (when the forwarded call ends).
pub struct Peer {
    pub node: String,
    /// Its public gateway (`host:port`).
    pub gateway: String,
    /// Its control API (`host:port`).
    pub control: String,
    pub guard: Box<dyn std::any::Any + Send>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("node", &self.node)
            .field("gateway", &self.gateway)
            .field("control", &self.control)
            .finish_non_exhaustive()
    }
}

/// What the platform asks of a cluster. Implemented by `shoal-nats`.
#[async_trait::async_trait]
pub trait Cluster: Send + Sync {
    /// This node's name.
    fn node(&self) -> &str;
    /// Store a code blob cluster-wide under its SHA-256 `digest` (idempotent).
    async fn put_code(&self, digest: &str, bytes: Bytes) -> Result<(), ClusterError>;
    /// Claim the next version number of `spec.name` cluster-wide (two concurrent deploys
    /// never get the same one) and publish the version under it; returns the number.
    async fn publish(
        &self,
        spec: &FunctionSpec,
        code_digest: &str,
        created_at_ms: i64,
    ) -> Result<u32, ClusterError>;
    /// Remove a function cluster-wide.
    async fn unpublish(&self, function: &str) -> Result<(), ClusterError>;
    /// Publish an alias (`None`: its removal).
    async fn publish_alias(
        &self,
        function: &str,
        name: &str,
        target: Option<(u32, Option<(u32, f64)>)>,
    ) -> Result<(), ClusterError>;
    /// Where a call of `function` should run, given this node's room for it (`None`:
    /// the function is not deployed here). `Err(CutOff)` when the node cannot report.
    fn place(&self, function: &str, local: Option<&Room>) -> Result<Placement, ClusterError>;
    /// The secret nodes present to each other on forwarded calls.
    fn forward_token(&self) -> &str;
    /// Every node the cluster knows, for `status`.
    fn report(&self) -> ClusterReport;
}

impl Platform {
    /// Join a cluster: from now on deploys, deletes and aliases are published through it
    /// and calls are placed by it. Once per platform; a second call is ignored.
    pub fn join_cluster(&self, cluster: Arc<dyn Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    pub(crate) fn cluster(&self) -> Option<&Arc<dyn Cluster>> {
        self.cluster.get()
    }

    /// Where a call of `function` should run (always here without a cluster). A call
    /// that was forwarded to this node already is never placed elsewhere.
    pub fn placement(&self, function: &str, forwarded: bool) -> Result<Placement> {
        let Some(cluster) = self.cluster() else {
            return Ok(Placement::Local);
        };
        let room = self.dispatcher.room(function);
        match cluster.place(function, room.as_ref())? {
            Placement::Forward(_) if forwarded => Ok(Placement::Local),
            placement => Ok(placement),
        }
    }

    /// This node's name, when in a cluster.
    pub fn node_name(&self) -> Option<&str> {
        self.cluster().map(|c| c.node())
    }

    /// The secret of forwarded calls, when in a cluster.
    pub fn forward_token(&self) -> Option<&str> {
        self.cluster().map(|c| c.forward_token())
    }

    /// What this node carries now, as its heartbeat advertises it.
    pub fn node_load(&self) -> NodeLoad {
        let budget = self.dispatcher.budget();
        let mut functions = Vec::new();
        let names = self.store.list_current().unwrap_or_default();
        for name in names.into_iter().map(|r| r.function) {
            let Some(room) = self.dispatcher.room(&name) else {
                continue;
            };
            functions.push(FunctionLoad {
                version: self.dispatcher.active_version(&name).unwrap_or(0),
                name,
                instances: room.instances,
                starting: room.starting,
                slots: room.slots,
                busy: room.busy,
                free: room.free(),
                per_instance: room.per_instance,
                max_instances: room.max_instances,
            });
        }
        NodeLoad {
            instances: budget.instances,
            max_instances: budget.max_instances,
            memory_kib: budget.memory_kib,
            max_memory_kib: budget.max_memory_kib,
            functions,
        }
    }

    /// The version records this node holds (every version of every function), for a
    /// cluster to compare with its registry.
    pub fn installed(&self) -> Result<Vec<VersionRecord>> {
        let mut out = Vec::new();
        for current in self.store.list_current()? {
            out.extend(self.store.versions(&current.function)?);
        }
        Ok(out)
    }

    /// Whether this node has the code blob `digest` in its store.
    pub fn has_code(&self, digest: &str) -> Result<bool> {
        Ok(self.store.get_blob(digest)?.is_some())
    }

    /// Install a version another node published: its code (`blob`, needed unless
    /// [`Platform::has_code`]), the record, and, if it is newer than the current version,
    /// routes, pool and triggers. A record already installed changes nothing; one that
    /// disagrees with what is here (the function was deleted and deployed anew while this
    /// node was away) replaces the local function.
    pub async fn install_version(
        self: &Arc<Self>,
        record: VersionRecord,
        blob: Option<Bytes>,
    ) -> Result<bool> {
        let platform = self.clone();
        tokio::task::spawn_blocking(move || platform.install_blocking(&record, blob.as_deref()))
            .await
            .map_err(Error::Task)?
    }

    fn install_blocking(&self, record: &VersionRecord, blob: Option<&[u8]>) -> Result<bool> {
        let _changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        self.install_locked(record, blob)
    }

    /// [`Platform::install_version`] with `changes` held.
    fn install_locked(&self, record: &VersionRecord, blob: Option<&[u8]>) -> Result<bool> {
        if let Some(existing) = self.store.version(&record.function, record.version)? {
            if existing.code_digest == record.code_digest
                && existing.created_at_ms == record.created_at_ms
            {
                return Ok(false);
            }
            tracing::info!(function = %record.function, version = record.version,
                "the cluster holds another function under this name; replacing the local one");
            self.remove_local(&record.function)?;
        }
        if let Some(bytes) = blob {
            let digest = self.store.put_blob(bytes)?;
            if digest != record.code_digest {
                return Err(Error::Store(shoal_store::Error::UnknownBlob {
                    digest: record.code_digest.clone(),
                }));
            }
        }
        let code_dir = code::checked_dir(&self.store, &self.data_dir, &record.code_digest)?;
        if !self.store.install_version(record)? {
            tracing::info!(function = %record.function, version = record.version, "installed an older version from the cluster");
            return Ok(false);
        }
        let current = self.store.list_current()?;
        let specs: Vec<&FunctionSpec> = current.iter().map(|r| &r.spec).collect();
        let routes = deploy::build_routes(&specs);
        self.activate(record, code_dir)?;
        self.events.start(&record.spec);
        match routes {
            Ok(routes) => *self.routes.write().unwrap_or_else(|e| e.into_inner()) = routes,
            Err(e) => tracing::error!(function = %record.function, error = %crate::chain(&e),
                "a version from the cluster clashes with the routes here; routes left as they were"),
        }
        tracing::info!(function = %record.function, version = record.version, "installed from the cluster");
        Ok(true)
    }

    /// Publish a function this node had before it ever joined this cluster (a data
    /// directory that ran alone), so joining keeps it: its current version's code and spec
    /// get a number from the registry, and the function here is replaced by that version.
    pub async fn adopt(self: &Arc<Self>, function: &str, cluster: Arc<dyn Cluster>) -> Result<u32> {
        let platform = self.clone();
        let function = function.to_owned();
        tokio::task::spawn_blocking(move || {
            let _changes = platform.changes.lock().unwrap_or_else(|e| e.into_inner());
            let record = platform
                .store
                .current(&function)?
                .ok_or_else(|| Error::FunctionNotFound(function.clone()))?;
            let blob = platform
                .store
                .get_blob(&record.code_digest)?
                .ok_or_else(|| {
                    Error::Store(shoal_store::Error::UnknownBlob {
                        digest: record.code_digest.clone(),
                    })
                })?;
            let blob = Bytes::from(blob);
            block_on(cluster.put_code(&record.code_digest, blob.clone()))?;
            let created_at_ms = crate::now_ms() as i64;
            let version =
                block_on(cluster.publish(&record.spec, &record.code_digest, created_at_ms))?;
            let adopted = VersionRecord {
                version,
                created_at_ms,
                ..record
            };
            // Removing drops the blob with the function; it goes back in with the version.
            platform.remove_local(&function)?;
            platform.install_locked(&adopted, Some(&blob))?;
            tracing::info!(
                function,
                version,
                "published a function this node had before joining the cluster"
            );
            Ok(version)
        })
        .await
        .map_err(Error::Task)?
    }

    /// Remove a function another node removed (here only; `false` if it was not here).
    pub async fn uninstall(self: &Arc<Self>, function: &str) -> Result<bool> {
        let platform = self.clone();
        let function = function.to_owned();
        tokio::task::spawn_blocking(move || {
            let _changes = platform.changes.lock().unwrap_or_else(|e| e.into_inner());
            platform.remove_local(&function)
        })
        .await
        .map_err(Error::Task)?
    }

    /// Set or remove an alias another node published (here only). An alias naming a
    /// version not installed here yet is skipped with a log line.
    pub fn install_alias(
        &self,
        function: &str,
        name: &str,
        target: Option<(u32, Option<(u32, f64)>)>,
    ) -> Result<()> {
        match target {
            Some((version, additional)) => {
                for v in std::iter::once(version).chain(additional.map(|a| a.0)) {
                    if self.store.version(function, v)?.is_none() {
                        tracing::warn!(
                            function,
                            alias = name,
                            version = v,
                            "alias from the cluster names a version not here; skipped"
                        );
                        return Ok(());
                    }
                }
                self.store.set_alias(&shoal_store::AliasRecord {
                    function: function.to_owned(),
                    name: name.to_owned(),
                    version,
                    additional,
                })?;
            }
            None => {
                self.store.delete_alias(function, name)?;
            }
        }
        Ok(())
    }
}

/// Wait for a cluster operation from a blocking thread (deploys and deletes run on one).
pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(future)
}
