//! The function registry in JetStream: versions, current versions and aliases in the
//! key-value bucket `shoal_registry`, code blobs by SHA-256 in the object store
//! `shoal_code`; and the follower that installs what the bucket holds into this node's
//! store and platform.
//!
//! Keys (function and alias names are already KV-safe: letters, digits, `-`, `_`):
//! - `fn.<function>`: the current version's record (JSON [`VersionRecord`]). Its KV
//!   revision is the compare-and-set token that allocates version numbers.
//! - `ver.<function>.<n>`: every version's record, immutable (qualifiers, aliases).
//! - `alias.<function>.<alias>`: `{version, additional}`.
//! - `cluster.forward-token`: the secret nodes present on forwarded calls, made once.
//!
//! A deploy writes the blob, then moves `fn.<function>` with `update(expected revision)`,
//! then writes `ver.*`; a node that sees either installs the version (idempotent). Delete
//! purges `fn.<function>` first (so it is the one event a watcher needs), then the rest.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::{self, object_store};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use shoal_core::{ClusterError, Platform, VersionRecord};
use shoal_manifest::FunctionSpec;
use tokio::io::AsyncReadExt;

use crate::{backend, Error, Result};

pub(crate) const BUCKET: &str = "shoal_registry";
pub(crate) const CODE_BUCKET: &str = "shoal_code";
const TOKEN_KEY: &str = "cluster.forward-token";
const ID_KEY: &str = "cluster.id";
/// Compare-and-set rounds before a deploy gives up (each lost round means another deploy
/// of the same function won one number).
const CAS_ROUNDS: usize = 50;

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct AliasEntry {
    version: u32,
    additional: Option<(u32, f64)>,
}

#[derive(Clone)]
pub(crate) struct Registry {
    js: jetstream::Context,
    kv: kv::Store,
    code: object_store::ObjectStore,
}

impl Registry {
    pub(crate) async fn open(js: &jetstream::Context, replicas: usize) -> Result<Registry> {
        let kv = crate::kv_bucket(
            js,
            BUCKET,
            "shoal function registry",
            Duration::ZERO,
            replicas,
        )
        .await?;
        let code = match js.get_object_store(CODE_BUCKET).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: CODE_BUCKET.to_owned(),
                    description: Some("shoal code blobs by sha256".to_owned()),
                    num_replicas: replicas.max(1),
                    ..Default::default()
                })
                .await
                .map_err(|source| Error::Bucket {
                    what: "object store",
                    name: CODE_BUCKET.to_owned(),
                    source: Box::new(source),
                })?,
        };
        Ok(Registry {
            js: js.clone(),
            kv,
            code,
        })
    }

    /// The cluster's forward token: made by the first node, read by the others.
    pub(crate) async fn forward_token(&self) -> Result<String> {
        self.made_once(TOKEN_KEY, "forward token").await
    }

    /// The cluster's identity: a data directory remembers which cluster it joined.
    pub(crate) async fn cluster_id(&self) -> Result<String> {
        self.made_once(ID_KEY, "id").await
    }

    /// A random value under `key`, made by the first node that asks, read by the others.
    async fn made_once(&self, key: &str, what: &str) -> Result<String> {
        let fresh = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        match self.kv.create(key, Bytes::from(fresh.clone())).await {
            Ok(_) => return Ok(fresh),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(Error::Registry {
                    what: format!("writing the cluster's {what}"),
                    source: Box::new(source),
                })
            }
        }
        let value = self
            .kv
            .get(key)
            .await
            .map_err(|source| Error::Registry {
                what: format!("reading the cluster's {what}"),
                source: Box::new(source),
            })?
            .unwrap_or_default();
        Ok(String::from_utf8_lossy(&value).into_owned())
    }

    /// Publish every function this node has that the registry lacks (a data directory
    /// joining this cluster for the first time keeps what it ran alone).
    pub(crate) async fn adopt(
        &self,
        platform: &Arc<Platform>,
        cluster: Arc<dyn shoal_core::Cluster>,
    ) -> Result<()> {
        let adopt_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::Registry {
            what: "publishing the functions this node had before joining".to_owned(),
            source,
        };
        let keys = self.keys().await.map_err(|e| adopt_error(Box::new(e)))?;
        let mut local: Vec<String> = platform
            .installed()
            .map_err(|e| adopt_error(Box::new(e)))?
            .into_iter()
            .map(|r| r.function)
            .collect();
        local.dedup();
        for function in local {
            if keys.contains(&format!("fn.{function}")) {
                continue;
            }
            platform
                .adopt(&function, cluster.clone())
                .await
                .map_err(|e| adopt_error(Box::new(e)))?;
        }
        Ok(())
    }

    pub(crate) async fn put_code(&self, digest: &str, bytes: Bytes) -> Result<(), ClusterError> {
        if self.code.info(digest).await.is_ok() {
            return Ok(());
        }
        let mut reader = &bytes[..];
        self.code
            .put(digest, &mut reader)
            .await
            .map_err(|e| backend(format!("storing code blob {digest} in the object store"), e))?;
        Ok(())
    }

    async fn get_code(&self, digest: &str) -> Result<Bytes, ClusterError> {
        let mut object = self
            .code
            .get(digest)
            .await
            .map_err(|e| backend(format!("fetching code blob {digest}"), e))?;
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| backend(format!("reading code blob {digest}"), e))?;
        Ok(Bytes::from(bytes))
    }

    /// Allocate the next version of `spec.name` by compare-and-set on `fn.<name>` and
    /// publish it there and under `ver.<name>.<n>`.
    pub(crate) async fn publish(
        &self,
        spec: &FunctionSpec,
        code_digest: &str,
        created_at_ms: i64,
    ) -> Result<u32, ClusterError> {
        let key = format!("fn.{}", spec.name);
        for _ in 0..CAS_ROUNDS {
            let entry = self
                .kv
                .entry(key.clone())
                .await
                .map_err(|e| backend(format!("reading {key}"), e))?;
            let (version, revision) = match &entry {
                Some(e) if e.operation == Operation::Put => {
                    let head: VersionRecord = serde_json::from_slice(&e.value)
                        .map_err(|err| backend(format!("decoding {key}"), err))?;
                    (head.version + 1, Some(e.revision))
                }
                // Deleted (or purged): numbering starts again at 1, as on one machine.
                Some(e) => (1, Some(e.revision)),
                None => (1, None),
            };
            let record = VersionRecord {
                function: spec.name.clone(),
                version,
                spec: spec.clone(),
                code_digest: code_digest.to_owned(),
                created_at_ms,
            };
            let value = Bytes::from(
                serde_json::to_vec(&record).map_err(|e| backend("encoding a version", e))?,
            );
            let won = match revision {
                Some(revision) => match self.kv.update(&key, value.clone(), revision).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => false,
                    Err(e) => return Err(backend(format!("writing {key}"), e)),
                },
                None => match self.kv.create(&key, value.clone()).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => false,
                    Err(e) => return Err(backend(format!("writing {key}"), e)),
                },
            };
            if won {
                let ver_key = format!("ver.{}.{version}", spec.name);
                self.kv
                    .put(&ver_key, value)
                    .await
                    .map_err(|e| backend(format!("writing {ver_key}"), e))?;
                return Ok(version);
            }
            tracing::debug!(function = %spec.name, version, "another deploy took this version; trying the next");
        }
        Err(ClusterError::Backend {
            what: format!("claiming a version of {}", spec.name),
            source: format!("{CAS_ROUNDS} concurrent deploys won every round").into(),
        })
    }

    pub(crate) async fn unpublish(&self, function: &str) -> Result<(), ClusterError> {
        let key = format!("fn.{function}");
        self.kv
            .purge(&key)
            .await
            .map_err(|e| backend(format!("purging {key}"), e))?;
        let prefixes = [format!("ver.{function}."), format!("alias.{function}.")];
        for key in self.keys().await? {
            if prefixes.iter().any(|p| key.starts_with(p.as_str())) {
                self.kv
                    .purge(&key)
                    .await
                    .map_err(|e| backend(format!("purging {key}"), e))?;
            }
        }
        Ok(())
    }

    pub(crate) async fn publish_alias(
        &self,
        function: &str,
        name: &str,
        target: Option<(u32, Option<(u32, f64)>)>,
    ) -> Result<(), ClusterError> {
        let key = format!("alias.{function}.{name}");
        match target {
            Some((version, additional)) => {
                let value = serde_json::to_vec(&AliasEntry {
                    version,
                    additional,
                })
                .map_err(|e| backend("encoding an alias", e))?;
                self.kv
                    .put(&key, value.into())
                    .await
                    .map_err(|e| backend(format!("writing {key}"), e))?;
            }
            None => {
                self.kv
                    .purge(&key)
                    .await
                    .map_err(|e| backend(format!("purging {key}"), e))?;
            }
        }
        Ok(())
    }

    async fn keys(&self) -> Result<Vec<String>, ClusterError> {
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|e| backend("listing the registry", e))?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            out.push(key.map_err(|e| backend("listing the registry", e))?);
        }
        Ok(out)
    }

    /// The bucket's last revision, read fresh from the server.
    async fn last_revision(&self) -> Result<u64, ClusterError> {
        let mut stream = self
            .js
            .get_stream(format!("KV_{BUCKET}"))
            .await
            .map_err(|e| backend("reading the registry's stream", e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| backend("reading the registry's stream", e))?;
        Ok(info.state.last_sequence)
    }

    /// Bring this node's store to what the bucket holds now: install every version it
    /// lacks, remove functions the cluster no longer has. Returns the revision to watch
    /// from (everything after the snapshot).
    pub(crate) async fn catch_up(&self, platform: &Arc<Platform>) -> Result<u64> {
        self.snapshot(platform)
            .await
            .map_err(|source| Error::Registry {
                what: "catching up with the cluster's registry".to_owned(),
                source: Box::new(source),
            })
    }

    async fn snapshot(&self, platform: &Arc<Platform>) -> Result<u64, ClusterError> {
        let last = self.last_revision().await?;
        let mut heads = Vec::new();
        let mut versions = Vec::new();
        let mut aliases = Vec::new();
        for key in self.keys().await? {
            let Some(value) = self
                .kv
                .get(key.clone())
                .await
                .map_err(|e| backend(format!("reading {key}"), e))?
            else {
                continue;
            };
            if key.starts_with("fn.") {
                heads.push(decode::<VersionRecord>(&key, &value)?);
            } else if key.starts_with("ver.") {
                versions.push(decode::<VersionRecord>(&key, &value)?);
            } else if key.starts_with("alias.") {
                aliases.push((key.clone(), decode::<AliasEntry>(&key, &value)?));
            }
        }
        let local = platform
            .installed()
            .map_err(|e| backend("reading the local store", e))?;
        let mut gone: Vec<&str> = local
            .iter()
            .map(|r| r.function.as_str())
            .filter(|f| !heads.iter().any(|h| h.function == *f))
            .collect();
        gone.dedup();
        for function in gone {
            if let Err(e) = platform.uninstall(function).await {
                tracing::error!(function, error = %shoal_core::chain(&e), "removing a function the cluster removed");
            }
        }
        versions.sort_by(|a, b| (&a.function, a.version).cmp(&(&b.function, b.version)));
        for record in versions.into_iter().chain(heads) {
            self.install(platform, record).await;
        }
        for (key, alias) in aliases {
            self.apply_alias(platform, &key, Some(alias));
        }
        Ok(last)
    }

    async fn install(&self, platform: &Arc<Platform>, record: VersionRecord) {
        let (function, version) = (record.function.clone(), record.version);
        let result = async {
            let blob = match platform.has_code(&record.code_digest) {
                Ok(true) => None,
                _ => Some(self.get_code(&record.code_digest).await?),
            };
            platform
                .install_version(record, blob)
                .await
                .map_err(|e| backend("installing", e))
        }
        .await;
        if let Err(e) = result {
            tracing::error!(function, version, error = %shoal_core::chain(&e), "installing a version from the cluster");
        }
    }

    fn apply_alias(&self, platform: &Platform, key: &str, alias: Option<AliasEntry>) {
        let Some((function, name)) = key
            .strip_prefix("alias.")
            .and_then(|rest| rest.split_once('.'))
        else {
            return;
        };
        if let Err(e) =
            platform.install_alias(function, name, alias.map(|a| (a.version, a.additional)))
        {
            tracing::error!(function, alias = name, error = %shoal_core::chain(&e), "installing an alias from the cluster");
        }
    }

    /// Follow the bucket from `revision` on, installing every change; if the watch breaks
    /// (NATS restarted, connection lost), catch up again and watch from there.
    pub(crate) async fn follow(self, platform: Arc<Platform>, mut revision: u64) {
        loop {
            match self.kv.watch_all_from_revision(revision + 1).await {
                Ok(mut watch) => {
                    while let Some(entry) = watch.next().await {
                        match entry {
                            Ok(entry) => {
                                revision = revision.max(entry.revision);
                                self.apply(&platform, entry).await;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "registry watch broke; catching up again");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "watching the registry"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            match self.snapshot(&platform).await {
                Ok(last) => revision = last,
                Err(e) => {
                    tracing::warn!(error = %shoal_core::chain(&e), "catching up with the registry")
                }
            }
        }
    }

    async fn apply(&self, platform: &Arc<Platform>, entry: kv::Entry) {
        let key = entry.key.as_str();
        let put = entry.operation == Operation::Put;
        if let Some(function) = key.strip_prefix("fn.") {
            if put {
                match decode::<VersionRecord>(key, &entry.value) {
                    Ok(record) => self.install(platform, record).await,
                    Err(e) => {
                        tracing::error!(key, error = %shoal_core::chain(&e), "bad registry entry")
                    }
                }
            } else if let Err(e) = platform.uninstall(function).await {
                tracing::error!(function, error = %shoal_core::chain(&e), "removing a function the cluster removed");
            }
        } else if key.starts_with("ver.") {
            if put {
                match decode::<VersionRecord>(key, &entry.value) {
                    Ok(record) => self.install(platform, record).await,
                    Err(e) => {
                        tracing::error!(key, error = %shoal_core::chain(&e), "bad registry entry")
                    }
                }
            }
        } else if key.starts_with("alias.") {
            let alias = if put {
                match decode::<AliasEntry>(key, &entry.value) {
                    Ok(alias) => Some(alias),
                    Err(e) => {
                        tracing::error!(key, error = %shoal_core::chain(&e), "bad registry entry");
                        return;
                    }
                }
            } else {
                None
            };
            self.apply_alias(platform, key, alias);
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, ClusterError> {
    serde_json::from_slice(value).map_err(|e| backend(format!("decoding registry entry {key}"), e))
}
