//! Deploys and deletes: an archive in, immutable versions out, all or nothing. The
//! archive is unpacked once into a staging directory, its manifest and routes checked,
//! then the blob is stored and the staged tree renamed into place as the code directory.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal_api::Deployed;
use shoal_dispatch::PoolConfig;
use shoal_events::RouteTable;
use shoal_manifest::{Concurrency, FunctionSpec, Runtime};
use shoal_runtime::{FunctionCode, RuntimeKind};
use shoal_store::VersionRecord;

use crate::cluster::block_on;
use crate::code::{self, Staging};
use crate::{Error, Platform, Result};

impl Platform {
    /// Deploy a packed function directory (tar.gz with a `shoal.toml` at its top): a new
    /// immutable version of every function in the manifest. Nothing changes unless the
    /// whole deploy is valid.
    pub async fn deploy(self: &Arc<Self>, archive: Bytes) -> Result<Vec<Deployed>> {
        let platform = self.clone();
        let span = tracing::info_span!("deploy", bytes = archive.len());
        tokio::task::spawn_blocking(move || span.in_scope(|| platform.deploy_blocking(&archive)))
            .await
            .map_err(Error::Task)?
    }

    fn deploy_blocking(&self, archive_bytes: &[u8]) -> Result<Vec<Deployed>> {
        let staged = Staging::new(&self.data_dir)?;
        staged.unpack(archive_bytes)?;
        let text = std::fs::read_to_string(staged.path().join("shoal.toml"))
            .map_err(|_| Error::MissingManifest)?;
        let manifest =
            shoal_manifest::parse_checked("shoal.toml", &text, &|expression, timezone| {
                shoal_events::Schedule::parse(expression, timezone)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })?;
        for spec in &manifest.functions {
            self.events.check(spec)?;
        }

        let _changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.store.list_current()?;
        let mut specs: Vec<&FunctionSpec> = current
            .iter()
            .map(|r| &r.spec)
            .filter(|s| !manifest.functions.iter().any(|n| n.name == s.name))
            .collect();
        specs.extend(manifest.functions.iter());
        let routes = build_routes(&specs)?;
        // Last before the store changes: from here on a change to a watched table is
        // captured, whatever the deploy's answer takes to arrive.
        for spec in &manifest.functions {
            self.events.install(spec)?;
        }

        let digest = self.store.put_blob(archive_bytes)?;
        let code_dir = code::install(&self.store, &self.data_dir, &digest, staged)?;
        // In a cluster the code goes to every node's reach before any version names it.
        if let Some(cluster) = self.cluster() {
            block_on(cluster.put_code(&digest, Bytes::copy_from_slice(archive_bytes)))?;
        }
        let mut deployed = Vec::new();
        for spec in &manifest.functions {
            let record = match self.cluster() {
                // The registry picks the number (compare-and-set: concurrent deploys on
                // two nodes never share one), then this node installs it like any other.
                Some(cluster) => {
                    let created_at_ms = crate::now_ms() as i64;
                    let version = block_on(cluster.publish(spec, &digest, created_at_ms))?;
                    let record = VersionRecord {
                        function: spec.name.clone(),
                        version,
                        spec: spec.clone(),
                        code_digest: digest.clone(),
                        created_at_ms,
                    };
                    self.store.install_version(&record)?;
                    record
                }
                None => self.store.create_version(spec, &digest)?,
            };
            self.activate(&record, code_dir.clone())?;
            self.events.start(spec);
            tracing::info!(function = %spec.name, version = record.version, "deployed");
            deployed.push(Deployed {
                name: spec.name.clone(),
                version: record.version,
                urls: self.urls(spec),
            });
        }
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = routes;
        Ok(deployed)
    }

    /// Bring back every function deployed before the last restart.
    pub(crate) fn restore(&self) -> Result<()> {
        let _changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let records = self.store.list_current()?;
        let specs: Vec<&FunctionSpec> = records.iter().map(|r| &r.spec).collect();
        let routes = build_routes(&specs)?;
        for record in &records {
            let code_dir = code::checked_dir(&self.store, &self.data_dir, &record.code_digest)?;
            self.activate(record, code_dir)?;
            self.events.start(&record.spec);
            tracing::info!(function = %record.function, version = record.version, "restored");
        }
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = routes;
        Ok(())
    }

    /// Register with the launcher and route new calls to this version.
    pub(crate) fn activate(
        &self,
        record: &VersionRecord,
        code_dir: std::path::PathBuf,
    ) -> Result<()> {
        let config = self.register_version(record, code_dir)?;
        self.dispatcher
            .deploy(&record.spec.name, record.version, config);
        Ok(())
    }

    /// Register a version's code with the launcher; its pool settings, learned limit in.
    pub(crate) fn register_version(
        &self,
        record: &VersionRecord,
        code_dir: std::path::PathBuf,
    ) -> Result<PoolConfig> {
        let spec = &record.spec;
        self.launcher.register(FunctionCode {
            function: spec.name.clone(),
            version: record.version,
            runtime: runtime_kind(spec),
            handler: spec.handler.clone(),
            code_dir,
            memory_mb: spec.memory_mb,
            ephemeral_storage_mb: spec.ephemeral_storage_mb,
            env: spec.env.clone(),
        });
        let mut config = pool_config(spec, self.max_queue);
        if config.auto {
            // New instances of this version start where earlier ones had tuned themselves.
            if let Some(learned) = self.store.learned_limit(&spec.name, record.version)? {
                config.limit = learned.clamp(1, config.max_concurrency);
                config.probe = false;
            }
        }
        Ok(config)
    }

    /// Delete a function: its routes go at once, running invocations finish.
    pub async fn remove(self: &Arc<Self>, name: &str) -> Result<()> {
        let platform = self.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || platform.remove_blocking(&name))
            .await
            .map_err(Error::Task)?
    }

    fn remove_blocking(&self, name: &str) -> Result<()> {
        let _changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        if self.store.current(name)?.is_none() {
            return Err(Error::FunctionNotFound(name.to_owned()));
        }
        if let Some(cluster) = self.cluster() {
            block_on(cluster.unpublish(name))?;
        }
        if !self.remove_local(name)? {
            return Err(Error::FunctionNotFound(name.to_owned()));
        }
        Ok(())
    }

    /// Remove a function from this node: store, routes, triggers, pools, logs. The caller
    /// holds `changes`. `false` if it was not here.
    pub(crate) fn remove_local(&self, name: &str) -> Result<bool> {
        if !self.store.delete_function(name)? {
            return Ok(false);
        }
        self.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove_target(name);
        self.events.remove(name);
        self.dispatcher.remove(name);
        self.logs.remove(name);
        tracing::info!(function = %name, "deleted");
        Ok(true)
    }

    pub(crate) fn urls(&self, spec: &FunctionSpec) -> Vec<String> {
        let base = self.public_base();
        spec.http
            .iter()
            .map(|r| format!("{} {base}{}", r.method.as_deref().unwrap_or("ANY"), r.path))
            .collect()
    }
}

pub(crate) fn runtime_kind(spec: &FunctionSpec) -> RuntimeKind {
    match spec.runtime {
        Runtime::Nodejs => RuntimeKind::Node,
        Runtime::Python => RuntimeKind::Python,
        Runtime::Provided => RuntimeKind::Provided,
    }
}

/// The dispatcher's view of a function's settings.
pub(crate) fn pool_config(spec: &FunctionSpec, max_queue: usize) -> PoolConfig {
    let limit = match spec.concurrency {
        Concurrency::Fixed(n) => n,
        Concurrency::Auto => PoolConfig::AUTO_DEFAULT_LIMIT.min(spec.max_concurrency),
    };
    PoolConfig {
        limit,
        auto: spec.concurrency == Concurrency::Auto,
        memory_limit_kib: spec.memory_mb * 1024,
        max_concurrency: spec.max_concurrency.max(limit),
        max_instances: spec.max_instances,
        min_instances: spec.min_instances,
        idle_timeout: Duration::from_millis(spec.idle_timeout_ms),
        max_queue,
        timeout: Duration::from_millis(spec.timeout_ms),
        target_cpu: spec.target_cpu,
        latency_tolerance: spec.latency_tolerance,
        // Until a limit is learned (below), a cold burst is sized by probing one instance.
        probe: true,
        // A Runtime API client may pre-size itself from AWS_LAMBDA_MAX_CONCURRENCY (the
        // official Python client forks one worker process per unit), so it is told only
        // what it will really receive; the native bootstraps size their pools lazily.
        sized_at_start: spec.runtime == Runtime::Provided,
    }
}

pub(crate) fn build_routes(
    specs: &[&FunctionSpec],
) -> Result<RouteTable, shoal_events::RouteError> {
    let mut table = RouteTable::new();
    for spec in specs {
        for route in &spec.http {
            let payload = match route.payload {
                shoal_manifest::PayloadVersion::V1 => shoal_events::PayloadFormat::V1,
                shoal_manifest::PayloadVersion::V2 => shoal_events::PayloadFormat::V2,
            };
            table.insert_with_payload(
                route.method.as_deref(),
                &route.path,
                spec.name.clone(),
                payload,
            )?;
        }
    }
    Ok(table)
}
