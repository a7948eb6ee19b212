//! What the controller returns: the new limit, what became of the rules' proposal, and
//! the typed reason, each with a `Display` that reads as the one-line reason `shoal
//! status` shows.
//!
//! Plain data: the rules that produce these values live in `controller.rs`; nothing here
//! decides.

use std::fmt;

/// The outcome of one [`Controller::observe`]. Its `Display` is one human line, e.g.
/// `cpu 0.93 > target 0.80: 40 -> 34`.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitDecision {
    /// The limit from now on.
    pub limit: u32,
    pub action: LimitAction,
    /// The rule that proposed the change, or why none did.
    pub reason: LimitReason,
}

impl LimitDecision {
    pub fn changed(&self) -> bool {
        matches!(self.action, LimitAction::Changed { .. })
    }
}

/// What became of the rules' proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitAction {
    /// No rule proposed a change.
    Hold,
    /// The limit moved from `from` to [`LimitDecision::limit`].
    Changed { from: u32 },
    /// A change was proposed, but the limit already sits at the bound it was clamped to.
    AtBound,
    /// A change to `to` was proposed in the direction opposite to the last change, too
    /// soon after it (anti-flapping); the limit stays.
    Deferred {
        to: u32,
        intervals_since_change: u32,
    },
}

/// Which rule spoke, with the figures it judged. The fractions are of one core (`busy`,
/// `target`) or of the memory limit; latencies are in seconds. `busy` is the CPU the
/// instance asked for: what it ran plus what it waited runnable for a core.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LimitReason {
    /// Rule 1: RSS at or above the memory headroom (cut).
    MemoryHigh { fraction: f64, headroom: f64 },
    /// Rule 2: the core is busier than the target plus the margin (cut).
    CpuSaturated { busy: f64, target: f64 },
    /// Rule 2b: the core is at target with more calls in flight than the uncontended
    /// Little's-law figure (cut).
    Oversubscribed {
        busy: f64,
        in_flight: f64,
        uncontended: f64,
    },
    /// Rule 3: the latest window's mean latency is past the tolerance (cut).
    LatencyInflated {
        latency_secs: f64,
        ratio: f64,
        baseline_secs: f64,
        tolerance: f64,
    },
    /// Rule 3: cuts did not bring latency down, so the slowdown is external; the baseline
    /// was rebased to `latency_secs` (hold).
    ExternalSlowdown {
        latency_secs: f64,
        ratio: f64,
        cuts: u32,
    },
    /// Rule 3: latency is past the tolerance, but calls barely overlapped (mean
    /// in-flight below one), so none was slowed by another: not this instance's doing
    /// (hold).
    LatencyNotOurs {
        latency_secs: f64,
        ratio: f64,
        in_flight: f64,
    },
    /// The sample covered no time (hold).
    EmptyInterval,
    /// Rule 4: nothing completed yet, so the initial limit stays (hold).
    NothingCompleted { limit: u32 },
    /// Rule 5: the limit does not hold work back (hold).
    NotBinding { in_flight: f64, limit: u32 },
    /// Rule 5: the core is already at its target (hold).
    CpuAtTarget { busy: f64, target: f64 },
    /// Rule 5: RSS is within the hold band below the headroom (hold).
    MemoryNearHeadroom { fraction: f64, headroom: f64 },
    /// Rule 5: a projection leaves no room for one more (hold).
    GrowthCapped { by: GrowthCap, at: f64 },
    /// Rule 5: the limit binds and the core has room (grow).
    Binding {
        busy: f64,
        target: f64,
        littles: f64,
    },
    /// Rule 5: the limit sits far below Little's law and all is calm (grow towards it).
    Recovering {
        towards: f64,
        busy: f64,
        target: f64,
    },
}

/// What stopped a growth step (rule 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrowthCap {
    CpuProjection,
    LatencyProjection,
    MemoryProjection,
    MaxConcurrency,
    /// A recovering limit that does not bind goes no further than Little's law.
    LittlesLaw,
}

impl LimitReason {
    /// A stable snake_case name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            LimitReason::MemoryHigh { .. } => "memory_high",
            LimitReason::CpuSaturated { .. } => "cpu_saturated",
            LimitReason::Oversubscribed { .. } => "oversubscribed",
            LimitReason::LatencyInflated { .. } => "latency_inflated",
            LimitReason::ExternalSlowdown { .. } => "external_slowdown",
            LimitReason::LatencyNotOurs { .. } => "latency_not_ours",
            LimitReason::EmptyInterval => "empty_interval",
            LimitReason::NothingCompleted { .. } => "nothing_completed",
            LimitReason::NotBinding { .. } => "not_binding",
            LimitReason::CpuAtTarget { .. } => "cpu_at_target",
            LimitReason::MemoryNearHeadroom { .. } => "memory_near_headroom",
            LimitReason::GrowthCapped { .. } => "growth_capped",
            LimitReason::Binding { .. } => "binding",
            LimitReason::Recovering { .. } => "recovering",
        }
    }
}

impl fmt::Display for GrowthCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GrowthCap::CpuProjection => "cpu projection",
            GrowthCap::LatencyProjection => "latency projection",
            GrowthCap::MemoryProjection => "memory projection",
            GrowthCap::MaxConcurrency => "max_concurrency",
            GrowthCap::LittlesLaw => "little's law (not binding)",
        })
    }
}

impl fmt::Display for LimitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LimitReason::MemoryHigh { fraction, headroom } => {
                write!(f, "memory {fraction:.2} >= headroom {headroom:.2}")
            }
            LimitReason::CpuSaturated { busy, target } => {
                write!(f, "cpu {busy:.2} > target {target:.2}")
            }
            LimitReason::Oversubscribed {
                busy,
                in_flight,
                uncontended,
            } => write!(
                f,
                "cpu {busy:.2} at target with {in_flight:.1} in flight, uncontended \
                 little's law {uncontended:.1}"
            ),
            LimitReason::LatencyInflated {
                latency_secs,
                ratio,
                baseline_secs,
                tolerance,
            } => write!(
                f,
                "latency {latency_secs:.3}s = {ratio:.2}x baseline {baseline_secs:.3}s > \
                 {tolerance:.2}x"
            ),
            LimitReason::ExternalSlowdown {
                latency_secs,
                ratio,
                cuts,
            } => write!(
                f,
                "latency {latency_secs:.3}s stayed {ratio:.2}x baseline after {cuts} cuts: \
                 external slowdown, rebasing baseline to {latency_secs:.3}s"
            ),
            LimitReason::LatencyNotOurs {
                latency_secs,
                ratio,
                in_flight,
            } => write!(
                f,
                "latency {latency_secs:.4}s = {ratio:.2}x baseline, but only {in_flight:.2} \
                 in flight: calls do not overlap, not ours to cut"
            ),
            LimitReason::EmptyInterval => f.write_str("empty interval"),
            LimitReason::NothingCompleted { limit } => write!(
                f,
                "no completed invocation yet: keeping initial limit {limit}"
            ),
            LimitReason::NotBinding { in_flight, limit } => write!(
                f,
                "limit not binding (in-flight {in_flight:.1} of {limit}, none queued)"
            ),
            LimitReason::CpuAtTarget { busy, target } => {
                write!(f, "cpu {busy:.2} at target {target:.2}")
            }
            LimitReason::MemoryNearHeadroom { fraction, headroom } => {
                write!(f, "memory {fraction:.2} near headroom {headroom:.2}")
            }
            LimitReason::GrowthCapped { by, at } => write!(f, "growth capped by {by} at {at:.0}"),
            LimitReason::Binding {
                busy,
                target,
                littles,
            } => write!(
                f,
                "limit binding, cpu {busy:.2} < target {target:.2}, little's law {littles:.1}"
            ),
            LimitReason::Recovering {
                towards,
                busy,
                target,
            } => write!(
                f,
                "limit far below little's law {towards:.1}, cpu {busy:.2} < target \
                 {target:.2}, latency flat: recovering"
            ),
        }
    }
}

impl fmt::Display for LimitDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (reason, limit) = (&self.reason, self.limit);
        match self.action {
            LimitAction::Hold => write!(f, "{reason}"),
            LimitAction::Changed { from } => write!(f, "{reason}: {from} -> {limit}"),
            LimitAction::AtBound => write!(f, "{reason}: at bound {limit}"),
            LimitAction::Deferred {
                to,
                intervals_since_change,
            } => write!(
                f,
                "{reason}: {limit} -> {to} deferred (changed the other way \
                 {intervals_since_change} interval(s) ago)"
            ),
        }
    }
}
