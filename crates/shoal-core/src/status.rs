//! What the platform reports about itself: deployed functions, pools with their
//! instances' resource use and scaling decisions, the host budget, and function logs —
//! as the wire types of `shoal-api`.

use std::sync::Arc;

use shoal_api::{
    DecisionReport, FunctionInfo, HostReport, InstanceReport, LogPage, PoolReport, StatusReport,
    WallReport, WarmPoolReport,
};
use shoal_dispatch::{InstanceStatus, PoolStatus};

use crate::{Error, Platform, Result};

impl Platform {
    /// Deployed functions, for `shoal ls`.
    pub fn functions(&self) -> Result<Vec<FunctionInfo>> {
        let status = self.dispatcher.status(None);
        Ok(self
            .store
            .list_current()?
            .into_iter()
            .map(|r| FunctionInfo {
                instances: status
                    .iter()
                    .filter(|p| p.function == r.spec.name)
                    .map(|p| p.instances.len())
                    .sum(),
                routes: self.urls(&r.spec),
                events: self.events.event_infos(&r.spec.name),
                name: r.spec.name,
                version: r.version,
                runtime: r.spec.runtime,
                handler: r.spec.handler,
                concurrency: r.spec.concurrency,
                memory_mb: r.spec.memory_mb,
                timeout_ms: r.spec.timeout_ms,
            })
            .collect())
    }

    /// Whether a function is deployed.
    pub fn exists(&self, name: &str) -> bool {
        self.dispatcher.active_version(name).is_some()
    }

    /// Pools of one function (or all) with their instances measured now, the host budget,
    /// and how memory is limited here.
    pub fn status(&self, function: Option<&str>) -> Result<StatusReport> {
        if let Some(name) = function {
            if !self.exists(name) {
                return Err(Error::FunctionNotFound(name.to_owned()));
            }
        }
        let budget = self.dispatcher.budget();
        let queues = match function {
            Some(name) => {
                let names = self
                    .store
                    .current(name)?
                    .map(|r| crate::events::Events::queues_of(&r.spec))
                    .unwrap_or_default();
                self.events.queue_reports(Some(&names))
            }
            None => self.events.queue_reports(None),
        };
        Ok(StatusReport {
            queues,
            triggers: self.events.trigger_reports(function),
            cluster: self.cluster().map(|c| c.report()),
            pools: self
                .dispatcher
                .status(function)
                .into_iter()
                .map(pool_report)
                .collect(),
            host: HostReport {
                instances: budget.instances,
                max_instances: budget.max_instances,
                memory_kib: budget.memory_kib,
                max_memory_kib: budget.max_memory_kib,
            },
            memory_limits: self.launcher.memory_limits().to_string(),
            walls: self
                .launcher
                .walls()
                .into_iter()
                .map(|w| WallReport {
                    name: w.name.to_owned(),
                    up: w.up,
                    detail: w.detail,
                })
                .collect(),
            warm_pool: self
                .launcher
                .warm_pool()
                .into_iter()
                .map(|w| WarmPoolReport {
                    runtime: match w.shape.runtime {
                        shoal_runtime::RuntimeKind::Node => "nodejs",
                        shoal_runtime::RuntimeKind::Python => "python",
                        shoal_runtime::RuntimeKind::Provided => "provided",
                    }
                    .to_owned(),
                    memory_mb: w.shape.memory_mb,
                    ephemeral_storage_mb: w.shape.ephemeral_storage_mb,
                    ready_pids: w.ready,
                    starting: w.starting as u32,
                    last_error: w.last_error,
                })
                .collect(),
        })
    }

    /// A function's log records from byte offset `since` (or its last `tail` records).
    pub async fn logs(
        self: &Arc<Self>,
        function: &str,
        since: Option<u64>,
        tail: usize,
    ) -> Result<LogPage> {
        let platform = self.clone();
        let function = function.to_owned();
        tokio::task::spawn_blocking(move || {
            let (records, next) = platform
                .logs
                .read(&function, since, tail)
                .map_err(|source| {
                    Error::io("reading the log of", &platform.logs.path(&function), source)
                })?;
            Ok(LogPage { records, next })
        })
        .await
        .map_err(Error::Task)?
    }
}

fn pool_report(mut pool: PoolStatus) -> PoolReport {
    let instances = std::mem::take(&mut pool.instances)
        .into_iter()
        .map(instance_report)
        .collect();
    PoolReport {
        function: pool.function,
        version: pool.version,
        retired: pool.retired,
        queued: pool.queued,
        limit: pool.limit,
        max_instances: pool.max_instances,
        auto: pool.auto,
        learned_limit: pool.learned_limit,
        desired: pool.desired,
        demand_stable: pool.demand_stable,
        demand_panic: pool.demand_panic,
        instances,
        decisions: pool
            .decisions
            .into_iter()
            .map(|record| DecisionReport {
                at_ms: record.at_epoch_ms,
                kind: record.decision.kind().to_owned(),
                message: record.decision.to_string(),
            })
            .collect(),
    }
}

fn instance_report(status: InstanceStatus) -> InstanceReport {
    let resources = status.pid.and_then(shoal_runtime::procfs::sample);
    InstanceReport {
        id: status.id,
        pid: status.pid,
        state: status.state.as_str().to_owned(),
        in_flight: status.in_flight,
        limit: status.limit,
        uptime_ms: status.uptime_ms,
        invocations: status.invocations,
        cpu_busy: status.cpu_busy,
        rss_kib: resources.map(|r| r.rss_kib),
        pss_kib: resources.map(|r| r.pss_kib),
        cpu_ms: resources.map(|r| r.cpu_ms),
        littles_law: status.littles_law,
    }
}
