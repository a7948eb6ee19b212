//! The per-instance concurrency controller behind `concurrency = "auto"`.
//!
//! It decides one number: how many invocations one runtime instance (a single-threaded
//! Node.js process) may run at once. The caller measures the instance every ~0.5–1 s and
//! passes a [`Sample`] to [`Controller::observe`]; the controller returns a
//! [`LimitDecision`]: the new limit, what happened to it and the typed [`LimitReason`]
//! (its `Display` is the one-line reason `shoal status` shows). It never reads a clock, a
//! file or a socket itself, so it is deterministic and tested with a simulated instance.
//!
//! # Signals
//!
//! * **CPU per invocation and wall time per invocation** (exponentially smoothed ratios of
//!   sums, so an interval with 20 completions weighs more than one with 1). They give the
//!   Little's-law estimate `L* = target_cpu × wall / cpu` (Nightcore): the in-flight count
//!   at which the process is `target_cpu` busy. A function that computes 60 ms and then
//!   waits 2 s fits ~27 per core at 80 %; one that computes 200 ms and never waits fits 1.
//!   The measured wall time includes waiting for the shared CPU, so at the operating point
//!   `L*` is self-consistent (in-flight = throughput × wall, busy = throughput × cpu); under
//!   saturation it overestimates, which is why the saturation rule does not rely on it
//!   alone.
//! * **Busy fraction** `cpu_time / interval` of one core: the hard resource of a
//!   single-threaded runtime. The CPU rules judge the *demand* `busy + waiting`, where
//!   `waiting` is the time the instance's threads sat runnable on a run queue (capped at
//!   one core): on a machine whose cores other work holds, a CPU-bound instance gets 40 %
//!   of a core and waits the other 60 %; it is as saturated as one running alone at
//!   100 %, and must be seen so.
//! * **Run-queue wait in latency**: every call in flight while the runtime waits for a
//!   core is delayed by that wait, so a window's latency sum carries about
//!   `waiting × max(1, mean in-flight)` seconds that no concurrency setting caused (a
//!   runtime only waits for a core while it has work, so at least one call waits). The latency
//!   rules (baseline, inflation) judge latency *net* of it: a neighbour's CPU hog must not
//!   make a light function cut its limit and spread over more instances, which only adds
//!   cold starts to the same shortage.
//! * **Latency against an uncontended baseline** (Gradient2/Vegas). The baseline is a
//!   minimum that falls at once and rises slowly (over minutes), so it follows real changes
//!   without locking on an early outlier. Its candidates are *means over at least three
//!   invocations*, not the per-interval `min_latency`: one fast error path (a 1 ms
//!   rejection) would otherwise pin the baseline near zero and make every normal interval
//!   look inflated, collapsing the limit. `min_latency` is therefore not used for decisions.
//! * **RSS against the instance's memory limit** (0 means "no limit known": rule skipped).
//!
//! # Rules, first match wins
//!
//! 1. *Memory*: RSS ≥ `memory_headroom` × the memory limit → cut ×0.8. Always allowed,
//!    even before any completion and right after growth: an OOM kill loses every
//!    in-flight invocation.
//! 2. *CPU saturated*: busy > `target_cpu` + 0.1 → cut to
//!    `min(limit × 0.9, L* × 1.1, in_flight × target / busy)` but never below half the
//!    limit in one step. The in-flight term uses the direct evidence "this many in flight
//!    saturate the core"; the half-step floor keeps one GC pause from collapsing the limit.
//!    Allowed before any completion (a long CPU-bound call saturates before it finishes).
//!    *Oversubscribed*: busy ≥ `target_cpu` − 0.05, the limit above 1.5 × `L0` + 1 and
//!    more than `L0` in flight, where `L0 = target_cpu × baseline / cpu` is Little's law
//!    with the uncontended latency → cut to `1.1 × L0` (at most halving). This catches
//!    CPU-bound work spread over several instances, each busy but none saturated: the
//!    wall-time `L*` cannot, because calls queued inside the event loop inflate the wall
//!    time and `L*` with it.
//! 3. *Latency inflated*: the mean wall time of the latest window of ≥ 3 completions
//!    (one interval, or several for a slow or quiet function; each window is judged once)
//!    exceeds `latency_tolerance` × baseline → cut ×0.9, unless fewer than one call was
//!    in flight on average (calls that do not overlap cannot slow each other: hold). If four cuts in a row, spanning
//!    at least one latency (a cut shows only once earlier admissions finish), have not
//!    improved latency by 5 %, the slowdown is not ours (a slower downstream): the
//!    baseline is rebased to the current latency instead of cutting on towards 1.
//! 4. Before any invocation has completed there is no CPU-per-invocation figure, so the
//!    limit stays at `initial_limit` (only rules 1 and 2 may lower it).
//! 5. *Grow* when the limit binds (mean in-flight ≥ 0.8 × limit, or invocations queue),
//!    or, *recovering*, when it sits below 0.9 × min(`L*`, `L0`) with latency judged flat
//!    (then never beyond that figure: a cut during a cold start must not leave the limit,
//!    and with it the instance count the autoscaler derives, stuck),
//!    and busy < `target_cpu` − 0.05 (a dead band, so sampling noise around the target does
//!    not creep the limit up): halfway to `L*` per interval while far below it and latency
//!    is flat, else +1 (+2 when the core is less than half the target busy), capped by
//!    * the CPU projection `in_flight × target / busy` (busy scales with in-flight),
//!    * the latency projection `limit × tolerance / max(1, latency / baseline)` (latency
//!      may in the worst case grow in proportion to concurrency; this also bounds every
//!      step to ×tolerance when `L*` is far away or latency was not judged),
//!    * the memory projection `in_flight × headroom × memory_limit / rss` (pessimistic:
//!      it charges the runtime's base heap to each invocation), and no growth at all
//!      within 5 % of the memory headroom,
//!    * `max_limit`. Growth beyond `L*` is allowed, one step at a time: `L*` is only an
//!      estimate, and the live CPU/latency signals have the last word.
//! 6. Otherwise hold.
//!
//! Anti-flapping: a change in the opposite direction of the previous change waits until
//! three intervals have passed since it (memory cuts excepted), proposals that move the
//! limit by less than one are ignored, and the grow dead band sits between the grow and
//! the saturation thresholds. The limit is always within `[min_limit, max_limit]`.

use std::time::Duration;

mod limit;

pub use limit::{GrowthCap, LimitAction, LimitDecision, LimitReason};

/// Smoothing of the per-invocation CPU and wall estimates (weight of the newest interval).
const EWMA_ALPHA: f64 = 0.25;
/// Busy above `target_cpu` by more than this counts as saturated.
const SATURATION_MARGIN: f64 = 0.10;
/// Grow only while busy is below `target_cpu` by at least this much.
const GROW_DEADBAND: f64 = 0.05;
/// No growth while RSS is within this fraction of the memory headroom.
const MEMORY_HOLD_BAND: f64 = 0.05;
const MEMORY_CUT: f64 = 0.8;
const CPU_CUT: f64 = 0.9;
const LATENCY_CUT: f64 = 0.9;
/// No single CPU cut goes below this fraction of the current limit.
const MAX_CPU_CUT: f64 = 0.5;
/// In-flight at or above this fraction of the limit means the limit is what holds it back.
const BINDING_FRACTION: f64 = 0.8;
/// Latency is judged (and baseline candidates formed) only over this many completions.
const MIN_JUDGED_COMPLETIONS: u32 = 3;
/// Intervals that must pass after a change before the limit may move the other way.
const REVERSAL_COOLDOWN: u32 = 3;
/// The baseline closes the gap to higher observed latency over roughly this long.
const BASELINE_RISE_SECS: f64 = 300.0;
/// Latency cuts tried before deciding an inflation is external.
const REBASE_AFTER_CUTS: u32 = 4;
/// ... spanning at least this many latencies (a cut shows in latency only once the
/// invocations admitted before it have finished).
const REBASE_AFTER_LATENCIES: f64 = 1.0;
/// Latency must fall below this fraction of its value at the first cut to count as relief.
const REBASE_RELIEF: f64 = 0.95;
/// Below this fraction of `L*` growth jumps halfway towards it.
const FAR_BELOW: f64 = 0.9;
/// When saturated, the limit is cut to at most this multiple of `L*`.
const SATURATED_OVERSHOOT: f64 = 1.1;
/// A limit above this multiple of the uncontended Little's-law figure (plus one) while
/// the core is at target counts as oversubscribed.
const OVERSUBSCRIBED: f64 = 1.5;
/// Below this busy fraction the CPU projection is too noisy to cap growth.
const MIN_BUSY_FOR_PROJECTION: f64 = 0.02;
/// The smallest CPU per invocation used in `L*`, so a zero reading cannot divide by zero.
const MIN_CPU_PER_INVOCATION: f64 = 1e-6;
/// Below this mean in-flight count calls do not overlap enough for this instance's
/// concurrency to be the cause of a latency rise.
const MIN_OVERLAP: f64 = 1.0;
/// Latency net of run-queue wait is never taken below this fraction of the measured one.
const MIN_NET_LATENCY: f64 = 0.1;

/// The fraction of the interval the instance waited for a CPU, capped at one core (its
/// threads' waits add up, and a single-threaded runtime can only want one core).
fn waiting_fraction(s: &Sample) -> f64 {
    let interval = s.interval.as_secs_f64();
    if interval <= 0.0 {
        return 0.0;
    }
    finite_or(s.run_wait.as_secs_f64() / interval, 0.0).clamp(0.0, 1.0)
}

/// The controller's knobs. The defaults from [`ControllerConfig::new`] are meant to be
/// left alone; `max_limit` is the user's `max_concurrency`.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerConfig {
    /// The limit before any measurement (a limit learned by a previous version, or 16).
    pub initial_limit: u32,
    pub min_limit: u32,
    /// The instance's ceiling: the user's `max_concurrency`, or what a runtime that sizes
    /// itself once at start was told (see `PoolConfig::sized_at_start`).
    pub max_limit: u32,
    /// The ceiling a *new* instance may be given (the user's `max_concurrency`); above
    /// `max_limit` only for instances whose own ceiling was fixed at start.
    pub pool_max_limit: u32,
    /// Target busy fraction of one core.
    pub target_cpu: f64,
    /// Latency may grow to this multiple of the uncontended baseline before backing off.
    pub latency_tolerance: f64,
    /// The instance's memory limit; 0 disables the memory rules.
    pub memory_limit_kib: u64,
    /// Above this fraction of the memory limit the limit shrinks (and stops growing a
    /// little below it).
    pub memory_headroom: f64,
}

impl ControllerConfig {
    /// The starting limit when nothing has been learned yet: high enough for an I/O-bound
    /// function to take a burst on few instances, low enough that a CPU-bound one is not
    /// badly oversubscribed before the first measurement cuts it.
    pub const DEFAULT_INITIAL_LIMIT: u32 = 16;

    pub fn new(max_limit: u32, memory_limit_kib: u64) -> Self {
        let max_limit = max_limit.max(1);
        Self {
            initial_limit: Self::DEFAULT_INITIAL_LIMIT.min(max_limit),
            min_limit: 1,
            max_limit,
            pool_max_limit: max_limit,
            target_cpu: 0.8,
            latency_tolerance: 1.5,
            memory_limit_kib,
            memory_headroom: 0.85,
        }
    }

    /// The same config with every field in a usable range: the fields are public, and a
    /// bad value (NaN target, min above max) must not panic or wedge the controller.
    fn sanitized(mut self) -> Self {
        self.min_limit = self.min_limit.max(1);
        self.max_limit = self.max_limit.max(self.min_limit);
        self.pool_max_limit = self.pool_max_limit.max(self.max_limit);
        self.initial_limit = self.initial_limit.clamp(self.min_limit, self.max_limit);
        self.target_cpu = finite_or(self.target_cpu, 0.8).clamp(0.05, 1.0);
        self.latency_tolerance = finite_or(self.latency_tolerance, 1.5).max(1.05);
        self.memory_headroom = finite_or(self.memory_headroom, 0.85).clamp(0.1, 1.0);
        self
    }
}

/// What one instance did during one sampling interval (~0.5–1 s), measured by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sample {
    pub interval: Duration,
    /// Process CPU time (user + sys) consumed during the interval.
    pub cpu_time: Duration,
    /// Invocations that finished during the interval.
    pub completed: u32,
    /// Sum of their wall times, dispatch to result (queueing before dispatch excluded).
    pub latency_sum: Duration,
    /// Smallest wall time among them (reported, not used for decisions: see module doc).
    pub min_latency: Option<Duration>,
    /// Time-averaged in-flight count (or the count at the end of the interval).
    pub mean_in_flight: f64,
    /// Invocations of this function waiting for any slot at sample time.
    pub queued: u32,
    pub rss_kib: u64,
    /// Time the instance's threads spent runnable but waiting for a CPU during the
    /// interval (the kernel's run delay): CPU it wanted and did not get, because other
    /// work held the cores. Zero when not measured.
    pub run_wait: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Memory,
    Cpu,
    Latency,
    Grow,
}

/// What the rules propose before hysteresis and bounds are applied.
enum Verdict {
    Hold(LimitReason),
    Change {
        target: u32,
        rule: Rule,
        why: LimitReason,
    },
}

/// The concurrency controller of one instance. See the module doc for the algorithm.
#[derive(Debug, Clone)]
pub struct Controller {
    config: ControllerConfig,
    limit: u32,
    /// Smoothed CPU seconds, completions and wall seconds per folded interval; their
    /// ratios are the per-invocation estimates. `None` until something completed.
    cpu_secs: Option<f64>,
    completions: Option<f64>,
    wall_secs: Option<f64>,
    /// CPU spent in intervals without completions, charged to the next completions (an
    /// invocation longer than an interval would otherwise look nearly free).
    pending_cpu_secs: f64,
    /// Uncontended latency baseline in seconds.
    baseline_secs: Option<f64>,
    /// Completions accumulated until there are enough to form a baseline candidate.
    pending_latency_secs: f64,
    /// Of `pending_latency_secs`, the part explained by waiting for a CPU (run-queue wait
    /// × mean in-flight), taken out before latency is judged.
    pending_wait_secs: f64,
    /// Of the window, the time the runtime's threads waited for a core (capped at one).
    pending_thread_wait_secs: f64,
    pending_latency_count: u32,
    /// Seconds since the previous window closed, for the baseline's rise rate.
    pending_latency_window_secs: f64,
    /// The mean of the latest window of at least three completions, and whether that
    /// window closed in the current interval (each window is judged once).
    window_latency_secs: Option<f64>,
    window_fresh: bool,
    last_direction: Option<Direction>,
    intervals_since_change: u32,
    /// Latency cuts in a row without relief, for rebasing on external slowdowns.
    latency_cuts: u32,
    latency_at_first_cut: f64,
    secs_since_first_cut: f64,
    /// The last interval wanted to grow and only the instance's own ceiling held it.
    held_at_ceiling: bool,
    /// The pool's cold-burst probe set the limit before anything completed.
    probed: bool,
}

impl Controller {
    pub fn new(config: ControllerConfig) -> Self {
        let config = config.sanitized();
        Self {
            limit: config.initial_limit,
            config,
            cpu_secs: None,
            completions: None,
            wall_secs: None,
            pending_cpu_secs: 0.0,
            baseline_secs: None,
            pending_latency_secs: 0.0,
            pending_wait_secs: 0.0,
            pending_thread_wait_secs: 0.0,
            pending_latency_count: 0,
            pending_latency_window_secs: 0.0,
            window_latency_secs: None,
            window_fresh: false,
            last_direction: None,
            intervals_since_change: 0,
            latency_cuts: 0,
            latency_at_first_cut: 0.0,
            secs_since_first_cut: 0.0,
            held_at_ceiling: false,
            probed: false,
        }
    }

    /// Take `limit` as this instance's limit, chosen by the pool's cold-burst probe from
    /// early evidence (the core idle while every slot was taken) before anything
    /// completed. The rules go on from there; new instances are suggested this limit.
    pub fn assume(&mut self, limit: u32) {
        self.limit = limit.clamp(self.config.min_limit, self.config.max_limit);
        self.probed = true;
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// Little's-law estimate so far: `target_cpu × mean_wall / mean_cpu_per_invocation`
    /// (`None` until an invocation has completed). Unclamped: it may be below 1 or above
    /// `max_limit`.
    pub fn littles_law_estimate(&self) -> Option<f64> {
        let (cpu, wall) = self.per_invocation()?;
        Some(self.config.target_cpu * wall / cpu.max(MIN_CPU_PER_INVOCATION))
    }

    /// Little's law with the uncontended latency baseline instead of the measured wall
    /// time: `target_cpu × baseline / cpu per invocation`, the in-flight count that keeps
    /// the core at target without queueing inside it. `None` until a baseline exists.
    pub fn uncontended_estimate(&self) -> Option<f64> {
        let (cpu, _) = self.per_invocation()?;
        let baseline = self.baseline_secs.filter(|b| *b > 0.0)?;
        Some(self.config.target_cpu * baseline / cpu.max(MIN_CPU_PER_INVOCATION))
    }

    /// The limit a *new* instance of this function should start with: the limit the live
    /// signals have accepted here once anything was measured, else the initial limit. It
    /// is deliberately not `L*`, which ignores latency and memory.
    ///
    /// An instance held at a ceiling fixed at its start while it wanted more suggests
    /// twice that for the next one (within the pool's ceiling): the next instance is told
    /// the larger figure, so a runtime that sizes itself once still grows by instances.
    pub fn suggested_initial(&self) -> u32 {
        if self.held_at_ceiling && self.config.pool_max_limit > self.config.max_limit {
            self.limit.saturating_mul(2).min(self.config.pool_max_limit)
        } else if self.cpu_secs.is_some() || self.probed {
            self.limit
        } else {
            self.config.initial_limit
        }
    }

    /// Feed one interval's measurements; returns the (possibly unchanged) limit and why.
    pub fn observe(&mut self, sample: &Sample) -> LimitDecision {
        self.intervals_since_change = self.intervals_since_change.saturating_add(1);
        let in_flight = finite_or(sample.mean_in_flight, 0.0).max(0.0);
        self.learn(sample, in_flight);
        let verdict = self.decide(sample, in_flight);
        self.apply(verdict)
    }

    /// (mean CPU seconds, mean wall seconds) per invocation.
    fn per_invocation(&self) -> Option<(f64, f64)> {
        let n = self.completions?;
        if n <= 0.0 {
            return None;
        }
        Some((self.cpu_secs? / n, self.wall_secs? / n))
    }

    fn learn(&mut self, s: &Sample, in_flight: f64) {
        let secs = s.interval.as_secs_f64();
        self.window_fresh = false;
        self.pending_latency_window_secs += secs;
        // Idle CPU (timers, GC with nothing in flight) is not invocation cost.
        if in_flight > 0.0 || s.completed > 0 {
            self.pending_cpu_secs += s.cpu_time.as_secs_f64();
        }
        // A runtime waits for a core only while it has work, so at least one call is in
        // flight during any wait: every call then in flight is delayed by it.
        if in_flight > 0.0 || s.completed > 0 {
            self.pending_wait_secs += waiting_fraction(s) * secs * in_flight.max(1.0);
            self.pending_thread_wait_secs += waiting_fraction(s) * secs;
        }
        if s.completed > 0 {
            let n = f64::from(s.completed);
            let wall = s.latency_sum.as_secs_f64();
            self.cpu_secs = Some(ewma(self.cpu_secs, self.pending_cpu_secs));
            self.completions = Some(ewma(self.completions, n));
            self.wall_secs = Some(ewma(self.wall_secs, wall));
            self.pending_cpu_secs = 0.0;

            self.pending_latency_secs += wall;
            self.pending_latency_count += s.completed;
            if self.pending_latency_count >= MIN_JUDGED_COMPLETIONS {
                // Net of the run-queue wait, never below a tenth of the measured latency
                // (the wait estimate assumes every call in flight waited with the thread).
                // A call is delayed by the wait only while it was alive, so by at most the
                // window's waiting fraction of its latency: a handler that sleeps 2 s is
                // not made 0.2 s by a wait counted against every call in flight.
                let waiting = if self.pending_latency_window_secs > 0.0 {
                    (self.pending_thread_wait_secs / self.pending_latency_window_secs)
                        .clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let own = (self.pending_latency_secs - self.pending_wait_secs)
                    .max(self.pending_latency_secs * (1.0 - waiting))
                    .max(self.pending_latency_secs * MIN_NET_LATENCY);
                let candidate = own / f64::from(self.pending_latency_count);
                self.pending_wait_secs = 0.0;
                self.pending_thread_wait_secs = 0.0;
                let elapsed = self.pending_latency_window_secs;
                self.pending_latency_secs = 0.0;
                self.pending_latency_count = 0;
                self.pending_latency_window_secs = 0.0;
                self.window_latency_secs = Some(candidate);
                self.window_fresh = true;
                self.baseline_secs = Some(match self.baseline_secs {
                    Some(b) if candidate > b => {
                        b + (candidate - b) * (elapsed / BASELINE_RISE_SECS).min(1.0)
                    }
                    _ => candidate,
                });
            }
        }
        if self.latency_cuts > 0 {
            self.secs_since_first_cut += secs;
        }
    }

    fn decide(&mut self, s: &Sample, in_flight: f64) -> Verdict {
        let cfg = &self.config;
        let limit = self.limit;
        let lim = f64::from(limit);

        // 1. Memory.
        let mem_frac = if cfg.memory_limit_kib > 0 {
            Some(s.rss_kib as f64 / cfg.memory_limit_kib as f64)
        } else {
            None
        };
        if let Some(frac) = mem_frac {
            if frac >= cfg.memory_headroom {
                return Verdict::Change {
                    target: shrink_to(lim * MEMORY_CUT),
                    rule: Rule::Memory,
                    why: LimitReason::MemoryHigh {
                        fraction: frac,
                        headroom: cfg.memory_headroom,
                    },
                };
            }
        }

        let interval = s.interval.as_secs_f64();
        if interval <= 0.0 {
            return Verdict::Hold(LimitReason::EmptyInterval);
        }
        // What the instance asked of the CPU: what it got plus what it waited for.
        let busy = s.cpu_time.as_secs_f64() / interval + waiting_fraction(s);
        let target = cfg.target_cpu;
        let littles = self.littles_law_estimate();

        // 2. CPU saturation.
        if busy > target + SATURATION_MARGIN {
            let mut to = lim * CPU_CUT;
            if let Some(l) = littles {
                to = to.min(l * SATURATED_OVERSHOOT);
            }
            if in_flight >= 1.0 {
                to = to.min(in_flight * target / busy);
            }
            return Verdict::Change {
                target: shrink_to(to.max(lim * MAX_CPU_CUT)),
                rule: Rule::Cpu,
                why: LimitReason::CpuSaturated { busy, target },
            };
        }

        // 2b. Oversubscribed: the core is at its target and the instance holds more calls
        // than its uncontended Little's-law figure, target × baseline latency / CPU per
        // call. The wall-time `L*` cannot see this: for CPU-bound work the extra calls
        // queue inside the event loop, inflating the wall time and with it `L*`. Calls
        // beyond `L0` only wait for the core here; elsewhere (another instance, another
        // core) they would run.
        if let (Some(l0), true) = (self.uncontended_estimate(), busy >= target - GROW_DEADBAND) {
            if lim > OVERSUBSCRIBED * l0 + 1.0 && in_flight > l0 {
                return Verdict::Change {
                    target: shrink_to((l0 * SATURATED_OVERSHOOT).ceil().max(lim * MAX_CPU_CUT)),
                    rule: Rule::Cpu,
                    why: LimitReason::Oversubscribed {
                        busy,
                        in_flight,
                        uncontended: l0,
                    },
                };
            }
        }

        // 3. Latency inflation, judged once per window of at least three completions (a
        // slow or lightly used function may need several intervals to fill one).
        let window = self
            .baseline_secs
            .filter(|b| *b > 0.0)
            .zip(self.window_latency_secs);
        let latency_ratio = window.map(|(base, mean)| mean / base);
        if let Some((base, mean)) = window.filter(|_| self.window_fresh) {
            let ratio = mean / base;
            let tol = cfg.latency_tolerance;
            if ratio > tol && in_flight < MIN_OVERLAP {
                // Calls barely overlap here, so none waits for another: the slowdown is
                // the machine's (the daemon's threads, a neighbour, the network), and a
                // lower limit would bind nothing but the next burst.
                self.latency_cuts = 0;
                return Verdict::Hold(LimitReason::LatencyNotOurs {
                    latency_secs: mean,
                    ratio,
                    in_flight,
                });
            }
            if ratio > tol {
                if self.latency_cuts == 0 {
                    self.latency_at_first_cut = mean;
                    self.secs_since_first_cut = 0.0;
                } else if self.latency_cuts >= REBASE_AFTER_CUTS
                    && self.secs_since_first_cut >= REBASE_AFTER_LATENCIES * mean
                    && mean >= REBASE_RELIEF * self.latency_at_first_cut
                {
                    // Cutting did not help: the slowdown is not caused by our concurrency.
                    let cuts = self.latency_cuts;
                    self.baseline_secs = Some(mean);
                    self.latency_cuts = 0;
                    self.window_fresh = false;
                    return Verdict::Hold(LimitReason::ExternalSlowdown {
                        latency_secs: mean,
                        ratio,
                        cuts,
                    });
                }
                return Verdict::Change {
                    target: shrink_to(lim * LATENCY_CUT),
                    rule: Rule::Latency,
                    why: LimitReason::LatencyInflated {
                        latency_secs: mean,
                        ratio,
                        baseline_secs: base,
                        tolerance: tol,
                    },
                };
            }
            self.latency_cuts = 0;
        }

        // 4. Nothing measured yet.
        let Some(littles) = littles else {
            return Verdict::Hold(LimitReason::NothingCompleted { limit });
        };

        // 5. Grow, or 6. hold.
        self.grow(s, in_flight, busy, littles, latency_ratio, mem_frac)
    }

    /// Rule 5: how far the limit may grow, if it binds and nothing objects.
    fn grow(
        &self,
        s: &Sample,
        in_flight: f64,
        busy: f64,
        littles: f64,
        latency_ratio: Option<f64>,
        mem_frac: Option<f64>,
    ) -> Verdict {
        let cfg = &self.config;
        let limit = self.limit;
        let lim = f64::from(limit);
        let target = cfg.target_cpu;
        let binding = in_flight >= BINDING_FRACTION * lim || s.queued > 0;
        let tol = cfg.latency_tolerance;
        let flat = latency_ratio.is_none_or(|r| r <= 1.0 + (tol - 1.0) / 2.0);
        // A limit left far below Little's law (by a cut during a cold start, say) is raised
        // back towards it even when it does not bind, while CPU and latency are calm: the
        // autoscaler sizes the instance count from the limits, so a limit stuck low keeps
        // more instances than the work needs. Never beyond the estimate without binding.
        let recover_to = self
            .uncontended_estimate()
            .map_or(littles, |l0| l0.min(littles));
        let recovering =
            !binding && flat && latency_ratio.is_some() && lim < FAR_BELOW * recover_to;
        if !binding && !recovering {
            return Verdict::Hold(LimitReason::NotBinding { in_flight, limit });
        }
        if busy >= target - GROW_DEADBAND {
            return Verdict::Hold(LimitReason::CpuAtTarget { busy, target });
        }
        if let Some(frac) = mem_frac {
            if frac >= cfg.memory_headroom - MEMORY_HOLD_BAND {
                return Verdict::Hold(LimitReason::MemoryNearHeadroom {
                    fraction: frac,
                    headroom: cfg.memory_headroom,
                });
            }
        }
        let stepped = if flat && lim < FAR_BELOW * littles {
            lim + ((littles - lim) / 2.0).max(1.0)
        } else if flat && busy < target / 2.0 {
            lim + 2.0
        } else {
            lim + 1.0
        };
        let mut to = stepped;
        let mut capped_by = None;
        let mut cap = |value: f64, by: GrowthCap| {
            if value < to {
                to = value;
                capped_by = Some(by);
            }
        };
        if busy >= MIN_BUSY_FOR_PROJECTION {
            cap(in_flight.max(1.0) * target / busy, GrowthCap::CpuProjection);
        }
        // Worst case, latency grows in proportion to concurrency; an interval without a
        // latency judgement counts as flat, so no step ever exceeds ×tolerance.
        cap(
            lim * tol / latency_ratio.unwrap_or(1.0).max(1.0),
            GrowthCap::LatencyProjection,
        );
        if let (Some(frac), true) = (mem_frac, s.rss_kib > 0) {
            cap(
                in_flight.max(1.0) * cfg.memory_headroom / frac,
                GrowthCap::MemoryProjection,
            );
        }
        cap(f64::from(cfg.max_limit), GrowthCap::MaxConcurrency);
        if recovering {
            cap(recover_to, GrowthCap::LittlesLaw);
        }
        let to = to.floor();
        // Every step is at least +1, so only a cap can leave `to` below `lim + 1`.
        if let (true, Some(by)) = (to < lim + 1.0, capped_by) {
            return Verdict::Hold(LimitReason::GrowthCapped { by, at: to });
        }
        Verdict::Change {
            target: to as u32,
            rule: Rule::Grow,
            why: if recovering {
                LimitReason::Recovering {
                    towards: recover_to,
                    busy,
                    target,
                }
            } else {
                LimitReason::Binding {
                    busy,
                    target,
                    littles,
                }
            },
        }
    }

    /// Bounds, hysteresis and bookkeeping for a proposal.
    fn apply(&mut self, verdict: Verdict) -> LimitDecision {
        let old = self.limit;
        let (target, rule, why) = match verdict {
            Verdict::Hold(reason) => {
                self.held_at_ceiling = matches!(
                    reason,
                    LimitReason::GrowthCapped {
                        by: GrowthCap::MaxConcurrency,
                        ..
                    }
                );
                return LimitDecision {
                    limit: old,
                    action: LimitAction::Hold,
                    reason,
                };
            }
            Verdict::Change { target, rule, why } => (target, rule, why),
        };
        self.held_at_ceiling = false;
        let target = target.clamp(self.config.min_limit, self.config.max_limit);
        if target == old {
            if rule == Rule::Latency {
                // At the floor, the attempt still counts towards deciding it is external.
                self.latency_cuts = self.latency_cuts.saturating_add(1);
            }
            return LimitDecision {
                limit: old,
                action: LimitAction::AtBound,
                reason: why,
            };
        }
        let direction = if target > old {
            Direction::Up
        } else {
            Direction::Down
        };
        let reversing = self.last_direction.is_some_and(|d| d != direction);
        if rule != Rule::Memory && reversing && self.intervals_since_change < REVERSAL_COOLDOWN {
            return LimitDecision {
                limit: old,
                action: LimitAction::Deferred {
                    to: target,
                    intervals_since_change: self.intervals_since_change,
                },
                reason: why,
            };
        }
        match rule {
            Rule::Latency => self.latency_cuts = self.latency_cuts.saturating_add(1),
            // Cuts interleaved with growth say nothing about whether cutting helps.
            Rule::Grow => self.latency_cuts = 0,
            Rule::Memory | Rule::Cpu => {}
        }
        self.limit = target;
        self.last_direction = Some(direction);
        self.intervals_since_change = 0;
        LimitDecision {
            limit: target,
            action: LimitAction::Changed { from: old },
            reason: why,
        }
    }
}

fn ewma(prev: Option<f64>, x: f64) -> f64 {
    match prev {
        Some(p) => p + EWMA_ALPHA * (x - p),
        None => x,
    }
}

/// A shrink proposal rounded down (a cut always moves by at least one when it can).
fn shrink_to(value: f64) -> u32 {
    // Saturating float-to-int: NaN becomes 0 and the caller clamps to min_limit.
    value.floor() as u32
}

fn finite_or(value: f64, fallback: f64) -> f64 {
    if value.is_finite() {
        value
    } else {
        fallback
    }
}

#[cfg(test)]
mod tests;
