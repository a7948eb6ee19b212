//! Prometheus metrics, in OpenMetrics text through `prometheus-client`: counters and a
//! latency histogram that invocations update as they finish, and gauges read from a
//! status snapshot at scrape time (instances, limits, memory, CPU, queues, host budget).
//!
//! Each scrape encodes a fresh registry: the long-lived families are shared handles, and
//! the snapshot families are filled from [`Platform::status`], so an instance that is gone
//! is gone from the next scrape too. A value that could not be measured is left out,
//! never reported as zero.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::Platform;

type Labels = Vec<(&'static str, String)>;

/// How a finished invocation ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutcomeLabel {
    Success,
    FunctionError,
    Timeout,
    Crashed,
    InitFailed,
    Throttled,
    Refused,
}

impl OutcomeLabel {
    const ALL: [OutcomeLabel; 7] = [
        OutcomeLabel::Success,
        OutcomeLabel::FunctionError,
        OutcomeLabel::Timeout,
        OutcomeLabel::Crashed,
        OutcomeLabel::InitFailed,
        OutcomeLabel::Throttled,
        OutcomeLabel::Refused,
    ];

    fn as_str(self) -> &'static str {
        match self {
            OutcomeLabel::Success => "success",
            OutcomeLabel::FunctionError => "function_error",
            OutcomeLabel::Timeout => "timeout",
            OutcomeLabel::Crashed => "crashed",
            OutcomeLabel::InitFailed => "init_failed",
            OutcomeLabel::Throttled => "throttled",
            OutcomeLabel::Refused => "refused",
        }
    }
}

/// The metrics that accumulate over the daemon's life.
pub(crate) struct Metrics {
    invocations: Family<Labels, Counter>,
    duration: Family<Labels, Histogram>,
    cold_starts: Family<Labels, Counter>,
    queue_wait: Family<Labels, Histogram>,
    init_duration: Family<Labels, Histogram>,
    /// Each call's share of its instance's CPU and wall time (`REPORT`'s shares), summed.
    cpu_share: Family<Labels, Counter<f64>>,
    instance_share: Family<Labels, Counter<f64>>,
    /// Each function's series, looked up once: an invocation then counts itself without
    /// building label sets (the invoke path is the product).
    by_function: RwLock<HashMap<String, FunctionSeries>>,
}

/// One function's counters (one per outcome, in [`OutcomeLabel::ALL`]'s order) and its
/// latency histogram: handles sharing their values with the families.
struct FunctionSeries {
    outcomes: Vec<Counter>,
    duration: Histogram,
    cold_starts: Counter,
    queue_wait: Histogram,
    init_duration: Histogram,
    cpu_share: Counter<f64>,
    instance_share: Counter<f64>,
}

impl FunctionSeries {
    fn record(&self, outcome: OutcomeLabel, took: Option<Duration>) {
        // `ALL` lists the variants in declaration order, so the discriminant is the index.
        self.outcomes[outcome as usize].inc();
        if let Some(took) = took {
            self.duration.observe(took.as_secs_f64());
        }
    }
}

fn queue_wait_histogram() -> Histogram {
    // 0.1 ms to about 26 s: most calls wait nothing, a cold start's queue waits seconds.
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

fn duration_histogram() -> Histogram {
    // 1 ms to about 33 s, doubling: a no-op call and a slow I/O-bound one both resolve.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        Metrics {
            invocations: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            cold_starts: Family::default(),
            queue_wait: Family::new_with_constructor(queue_wait_histogram),
            init_duration: Family::new_with_constructor(duration_histogram),
            cpu_share: Family::default(),
            instance_share: Family::default(),
            by_function: RwLock::new(HashMap::new()),
        }
    }

    /// Count one finished invocation; its duration counts only if a handler ran.
    pub(crate) fn observe(&self, function: &str, outcome: OutcomeLabel, took: Option<Duration>) {
        self.with_series(function, |series| series.record(outcome, took));
    }

    /// What a call that reached an instance used: cold start, wait for a slot, shares.
    pub(crate) fn observe_call(&self, function: &str, call: &shoal_dispatch::CallReport) {
        self.with_series(function, |series| {
            if let Some(init) = call.init {
                series.cold_starts.inc();
                series.init_duration.observe(init.as_secs_f64());
            }
            series.queue_wait.observe(call.queued.as_secs_f64());
            series.cpu_share.inc_by(call.usage.cpu.as_secs_f64());
            series
                .instance_share
                .inc_by(call.usage.instance_time.as_secs_f64());
        });
    }

    fn with_series(&self, function: &str, f: impl FnOnce(&FunctionSeries)) {
        if let Some(series) = self
            .by_function
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(function)
        {
            return f(series);
        }
        let mut map = self.by_function.write().unwrap_or_else(|e| e.into_inner());
        let labels = vec![("function", function.to_owned())];
        f(map
            .entry(function.to_owned())
            .or_insert_with(|| FunctionSeries {
                outcomes: OutcomeLabel::ALL
                    .iter()
                    .map(|o| {
                        self.invocations
                            .get_or_create(&vec![
                                ("function", function.to_owned()),
                                ("outcome", o.as_str().to_owned()),
                            ])
                            .clone()
                    })
                    .collect(),
                duration: self.duration.get_or_create(&labels).clone(),
                cold_starts: self.cold_starts.get_or_create(&labels).clone(),
                queue_wait: self.queue_wait.get_or_create(&labels).clone(),
                init_duration: self.init_duration.get_or_create(&labels).clone(),
                cpu_share: self.cpu_share.get_or_create(&labels).clone(),
                instance_share: self.instance_share.get_or_create(&labels).clone(),
            }));
    }
}

/// Prometheus's older text format (0.0.4), for scrapers that do not ask for
/// OpenMetrics (curl, `promtool check metrics`): the same families and samples, with a
/// counter's HELP and TYPE under its sample name (`_total`), and no UNIT or EOF lines.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let header = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match header {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let tail = if prefix == "# TYPE " && tail == "unknown" {
                    "untyped"
                } else {
                    tail
                };
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

impl Platform {
    /// Every metric, as OpenMetrics text.
    pub fn metrics(&self) -> String {
        let mut registry = Registry::with_prefix("shoal");
        registry.register(
            "invocations",
            "Invocations finished, by function and outcome",
            self.metrics.invocations.clone(),
        );
        registry.register_with_unit(
            "invocation_duration",
            "Time from arrival to answer of invocations a handler ran (queueing included)",
            Unit::Seconds,
            self.metrics.duration.clone(),
        );
        registry.register(
            "cold_starts",
            "Invocations that started their instance (they carry Init Duration)",
            self.metrics.cold_starts.clone(),
        );
        registry.register_with_unit(
            "init_duration",
            "How long instances took to start, as seen by the call that started each",
            Unit::Seconds,
            self.metrics.init_duration.clone(),
        );
        registry.register_with_unit(
            "queue_wait",
            "Time from arrival to an instance taking the call",
            Unit::Seconds,
            self.metrics.queue_wait.clone(),
        );
        registry.register_with_unit(
            "invocation_cpu_share",
            "CPU time of instances divided among the calls in flight, summed over calls",
            Unit::Seconds,
            self.metrics.cpu_share.clone(),
        );
        registry.register_with_unit(
            "invocation_instance_share",
            "Wall time of instances divided among the calls in flight, summed over calls \
             (instance-seconds spent busy)",
            Unit::Seconds,
            self.metrics.instance_share.clone(),
        );
        self.register_snapshot(&mut registry);
        self.register_events(&mut registry);
        let mut text = String::new();
        if let Err(e) = encode(&mut text, &registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        text
    }

    fn register_snapshot(&self, registry: &mut Registry) {
        let status = match self.status(None) {
            Ok(status) => status,
            Err(e) => {
                tracing::error!(error = %crate::chain(&e), "reading status for metrics");
                return;
            }
        };
        let instances = Family::<Labels, Gauge>::default();
        let queued = Family::<Labels, Gauge>::default();
        let in_flight = Family::<Labels, Gauge>::default();
        let limit = Family::<Labels, Gauge>::default();
        let rss = Family::<Labels, Gauge>::default();
        let pss = Family::<Labels, Gauge>::default();
        let cpu = Family::<Labels, Counter<f64>>::default();
        let littles_law = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let function_in_flight = Family::<Labels, Gauge>::default();
        for pool in &status.pools {
            let version = pool.version.to_string();
            for state in ["starting", "ready", "draining", "stopping"] {
                let n = pool.instances.iter().filter(|i| i.state == state).count();
                instances
                    .get_or_create(&vec![
                        ("function", pool.function.clone()),
                        ("version", version.clone()),
                        ("state", state.to_owned()),
                    ])
                    .set(n as i64);
            }
            queued
                .get_or_create(&vec![
                    ("function", pool.function.clone()),
                    ("version", version.clone()),
                ])
                .set(pool.queued as i64);
            function_in_flight
                .get_or_create(&vec![
                    ("function", pool.function.clone()),
                    ("version", version.clone()),
                ])
                .set(pool.instances.iter().map(|i| i64::from(i.in_flight)).sum());
            for instance in &pool.instances {
                let labels = vec![
                    ("function", pool.function.clone()),
                    ("version", version.clone()),
                    ("instance", instance.id.clone()),
                ];
                in_flight
                    .get_or_create(&labels)
                    .set(i64::from(instance.in_flight));
                limit.get_or_create(&labels).set(i64::from(instance.limit));
                if let Some(l) = instance.littles_law {
                    littles_law.get_or_create(&labels).set(l);
                }
                if let Some(kib) = instance.rss_kib {
                    rss.get_or_create(&labels).set((kib * 1024) as i64);
                }
                if let Some(kib) = instance.pss_kib {
                    pss.get_or_create(&labels).set((kib * 1024) as i64);
                }
                if let Some(ms) = instance.cpu_ms {
                    cpu.get_or_create(&labels).inc_by(ms as f64 / 1000.0);
                }
            }
        }
        registry.register(
            "instances",
            "Instances per function version and state",
            instances,
        );
        registry.register(
            "queued_invocations",
            "Invocations waiting for a slot",
            queued,
        );
        registry.register(
            "instance_in_flight",
            "Invocations running in an instance",
            in_flight,
        );
        registry.register("instance_limit", "An instance's in-flight limit", limit);
        registry.register(
            "in_flight",
            "Invocations running on the instances of a function version",
            function_in_flight,
        );
        registry.register(
            "instance_littles_law_limit",
            "The concurrency controller's Little's-law target L* (target CPU x wall / CPU per call)",
            littles_law,
        );
        registry.register_with_unit(
            "instance_rss",
            "Resident set size of an instance process",
            Unit::Bytes,
            rss,
        );
        registry.register_with_unit(
            "instance_pss",
            "Proportional set size of an instance process (shared pages split among users)",
            Unit::Bytes,
            pss,
        );
        registry.register_with_unit(
            "instance_cpu",
            "CPU time (user + system) of an instance process",
            Unit::Seconds,
            cpu,
        );
        let host = status.host;
        let host_gauges: [(&str, &str, Option<Unit>, u64); 4] = [
            (
                "host_instances",
                "Instances on this host, all functions",
                None,
                u64::from(host.instances),
            ),
            (
                "host_max_instances",
                "The host-wide instance budget",
                None,
                u64::from(host.max_instances),
            ),
            (
                "host_memory_limit",
                "Sum of the memory limits of the instances on this host",
                Some(Unit::Bytes),
                host.memory_kib * 1024,
            ),
            (
                "host_max_memory_limit",
                "The host-wide budget for instances' memory limits",
                Some(Unit::Bytes),
                host.max_memory_kib.saturating_mul(1024),
            ),
        ];
        for (name, help, unit, value) in host_gauges {
            let gauge = Gauge::<i64>::default();
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
            match unit {
                Some(unit) => registry.register_with_unit(name, help, unit, gauge),
                None => registry.register(name, help, gauge),
            }
        }
    }

    /// Queue traffic and async events (counters kept since start), and every queue's
    /// depth and oldest message (read now).
    fn register_events(&self, registry: &mut Registry) {
        let counters = self.events.counters();
        registry.register(
            "queue_messages",
            "Messages through each queue: sent, received, deleted, dead_lettered, expired, purged",
            counters.queue.clone(),
        );
        registry.register(
            "async_events",
            "Asynchronous events per function: enqueued, attempted, succeeded, retried, \
             throttled, to_destination",
            counters.function.clone(),
        );
        registry.register(
            "async_events_dropped",
            "Asynchronous events given up without a destination, by reason",
            counters.dropped.clone(),
        );
        let depth = Family::<Labels, Gauge>::default();
        let oldest = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let now = crate::now_ms() as i64;
        for queue in self.queues().list("", true) {
            for (state, n) in [
                ("visible", queue.stats.visible),
                ("in_flight", queue.stats.in_flight),
                ("delayed", queue.stats.delayed),
            ] {
                depth
                    .get_or_create(&vec![
                        ("queue", queue.name.clone()),
                        ("state", state.to_owned()),
                    ])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            if let Some(sent) = queue.stats.oldest_sent_at_ms {
                oldest
                    .get_or_create(&vec![("queue", queue.name.clone())])
                    .set(now.saturating_sub(sent).max(0) as f64 / 1000.0);
            }
        }
        registry.register("queue_depth", "Messages in each queue, by state", depth);
        self.register_change_triggers(registry);
        registry.register_with_unit(
            "queue_oldest_message_age",
            "Age of the oldest message in each queue",
            Unit::Seconds,
            oldest,
        );
    }
}

impl Platform {
    /// Postgres triggers: position, lag (records, seconds), whether the last read or
    /// delivery failed, and changes by what became of them.
    fn register_change_triggers(&self, registry: &mut Registry) {
        let position = Family::<Labels, Gauge>::default();
        let lag = Family::<Labels, Gauge>::default();
        let lag_seconds = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let failing = Family::<Labels, Gauge>::default();
        let changes = Family::<Labels, Counter>::default();
        for t in self.events.trigger_reports(None) {
            if t.kind != "postgres" {
                continue;
            }
            let labels = vec![
                ("function", t.function.clone()),
                ("table", t.source.clone()),
            ];
            if let Some(p) = t.position.as_deref().and_then(|p| p.parse::<i64>().ok()) {
                position.get_or_create(&labels).set(p);
            }
            lag.get_or_create(&labels)
                .set(i64::try_from(t.backlog).unwrap_or(i64::MAX));
            lag_seconds
                .get_or_create(&labels)
                .set(t.oldest_age_ms.unwrap_or(0) as f64 / 1000.0);
            failing
                .get_or_create(&labels)
                .set(i64::from(t.last_error.is_some()));
            for (event, n) in &t.counts {
                let mut with_event = labels.clone();
                with_event.push(("event", event.clone()));
                changes.get_or_create(&with_event).inc_by(*n);
            }
        }
        registry.register(
            "change_trigger_position",
            "Last sequence number delivered by each postgres trigger",
            position,
        );
        registry.register(
            "change_trigger_lag_records",
            "Changes captured and not yet delivered, per postgres trigger",
            lag,
        );
        registry.register_with_unit(
            "change_trigger_lag",
            "Age of the oldest change not yet delivered, per postgres trigger",
            Unit::Seconds,
            lag_seconds,
        );
        registry.register(
            "change_trigger_failing",
            "1 while a postgres trigger's last read, delivery or acknowledgement failed",
            failing,
        );
        registry.register(
            "change_trigger_changes",
            "Changes per postgres trigger: delivered, succeeded, retried, throttled, \
             to_destination, dropped",
            changes,
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_older_text_format_names_counters_by_their_samples() {
        let om = "# HELP shoal_cpu_seconds CPU.\n# TYPE shoal_cpu_seconds counter\n\
                  # UNIT shoal_cpu_seconds seconds\nshoal_cpu_seconds_total{f=\"a\"} 1.5\n\
                  # HELP shoal_up Up.\n# TYPE shoal_up gauge\nshoal_up 1\n# EOF\n";
        assert_eq!(
            super::prometheus_text(om),
            "# HELP shoal_cpu_seconds_total CPU.\n# TYPE shoal_cpu_seconds_total counter\n\
             shoal_cpu_seconds_total{f=\"a\"} 1.5\n# HELP shoal_up Up.\n# TYPE shoal_up gauge\n\
             shoal_up 1\n"
        );
    }
}
