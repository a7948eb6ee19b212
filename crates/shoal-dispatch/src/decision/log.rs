//! Recording decisions: each becomes one `tracing` event with its figures as fields, and
//! an entry in the pool's bounded history; a repeat of a condition already on record is
//! dropped, so queued calls and housekeeping ticks cannot flush the history.
//!
//! This module decides nothing about instances and must not know the pool: it gets a
//! [`Decision`] and the function and version it belongs to.

use std::collections::VecDeque;

use super::{Decision, DecisionRecord, DECISION_HISTORY};

impl Decision {
    /// The same condition as `previous`, still holding, with nothing done about it: a call
    /// queueing at `max_instances` or a retry the budget refuses again. Such repeats come
    /// with every queued call and every tick, and would flush the history.
    fn repeats(&self, previous: &Decision) -> bool {
        matches!(
            (self, previous),
            (
                Decision::AtMaxInstances { .. },
                Decision::AtMaxInstances { .. }
            ) | (Decision::Retired, Decision::Retired)
                | (
                    Decision::BudgetRefused { started: 0, .. },
                    Decision::BudgetRefused { .. }
                )
        )
    }

    /// One `tracing` event with the decision's figures as fields.
    fn emit(&self, function: &str, version: u32) {
        let kind = self.kind();
        match self {
            Decision::ScaleOut {
                reason,
                starting,
                limit,
            } => tracing::info!(function, version, kind, ?reason, starting, limit, "{self}"),
            Decision::AtMaxInstances {
                waiting,
                max_instances,
            } => tracing::info!(function, version, kind, waiting, max_instances, "{self}"),
            Decision::ScaleOutHeld {
                waiting,
                instances,
                wait_ms_per_s,
                run_ms_per_s,
            } => tracing::warn!(
                function,
                version,
                kind,
                waiting,
                instances,
                wait_ms_per_s,
                run_ms_per_s,
                "{self}"
            ),
            Decision::BudgetRefused {
                reason,
                started,
                wanted,
                refusal,
            } => tracing::info!(
                function,
                version,
                kind,
                ?reason,
                started,
                wanted,
                ?refusal,
                "{self}"
            ),
            Decision::ScaleIn {
                instance,
                demand_stable,
                demand_panic,
                demand_p99,
                utilization,
                remaining,
                mean_limit,
            } => tracing::info!(
                function,
                version,
                kind,
                instance,
                demand_stable,
                demand_panic,
                demand_p99,
                utilization,
                remaining,
                mean_limit,
                "{self}"
            ),
            Decision::IdleStop {
                instance,
                idle_timeout,
                min_instances,
            } => tracing::info!(
                function,
                version,
                kind,
                instance,
                ?idle_timeout,
                min_instances,
                "{self}"
            ),
            Decision::BudgetReclaim { instance } => {
                tracing::info!(function, version, kind, instance, "{self}")
            }
            Decision::LaunchFailed {
                failures,
                retry_after,
                error,
            } => tracing::warn!(function, version, kind, failures, ?retry_after,
                error_type = %error.error_type, error = %error.message, "{self}"),
            Decision::InstanceExited { instance, reason } => {
                tracing::warn!(function, version, kind, instance, reason, "{self}")
            }
            Decision::StuckStopped { instance, grace } => {
                tracing::warn!(function, version, kind, instance, ?grace, "{self}")
            }
            Decision::Frozen {
                instance,
                in_flight,
            } => tracing::warn!(function, version, kind, instance, in_flight, "{self}"),
            Decision::RssRecycle {
                instance,
                rss_kib,
                memory_limit_kib,
                threshold,
            } => tracing::info!(
                function,
                version,
                kind,
                instance,
                rss_kib,
                memory_limit_kib,
                threshold,
                "{self}"
            ),
            // Up to one per instance and second under `auto`: below the default level.
            Decision::LimitChanged {
                instance,
                from,
                to,
                reason,
            } => tracing::debug!(
                function,
                version,
                kind,
                instance,
                from,
                to,
                rule = reason.kind(),
                "{self}"
            ),
            Decision::ProbeGrew {
                instance, from, to, ..
            } => tracing::info!(function, version, kind, instance, from, to, "{self}"),
            Decision::ProbeDone { learned, .. } => {
                tracing::info!(function, version, kind, learned, "{self}")
            }
            Decision::KeepAliveStop { instance, keep, .. } => {
                let keep_ms = keep.as_millis() as u64;
                tracing::info!(function, version, kind, instance, keep_ms, "{self}")
            }
            Decision::Retired => tracing::info!(function, version, kind, "{self}"),
        }
    }
}

/// The last [`DECISION_HISTORY`] decisions of one pool, oldest first.
#[derive(Debug, Default)]
pub(crate) struct DecisionLog {
    records: VecDeque<DecisionRecord>,
}

impl DecisionLog {
    /// Emit `decision` as a `tracing` event and keep it, dropping the oldest beyond the
    /// bound. A repeat of a condition already on record is neither kept nor logged.
    pub(crate) fn record(&mut self, function: &str, version: u32, decision: Decision) {
        if let Some(last) = self.records.back() {
            if decision.repeats(&last.decision) {
                return;
            }
        }
        decision.emit(function, version);
        if self.records.len() == DECISION_HISTORY {
            self.records.pop_front();
        }
        self.records.push_back(DecisionRecord {
            at_epoch_ms: crate::epoch_ms(),
            decision,
        });
    }

    pub(crate) fn to_vec(&self) -> Vec<DecisionRecord> {
        self.records.iter().cloned().collect()
    }
}
