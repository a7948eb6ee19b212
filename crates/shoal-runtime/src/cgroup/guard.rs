//! The CPU guard: an instance that keeps wanting more cores than its quota is confined to
//! as many CPUs as the quota allows, so its threads stop bursting across every core.
//!
//! A quota alone bounds CPU *time*, not where it is spent: four busy threads under a
//! one-core quota run on both cores of a two-core machine for half of each period, then
//! sit throttled. During those bursts every other process, the daemon's threads and a
//! neighbour's runtime among them, waits for a core, and a neighbour's p99 went from
//! about 1 ms to 5.5 ms. Pinned to one CPU the same hog gets the same CPU time, and the
//! other core stays free for everyone else (p99 back within 1.1× of quiet, measured by
//! hand on this machine). Pinning every instance up front was tried and was worse: a
//! light instance pinned to a busy core cannot move off it. So only an instance that
//! shows it wants more than its quota (throttled in at least a fifth of the quota periods
//! of a quarter second, twice in a row) is confined, for the rest of its life, to the CPUs holding the fewest
//! confined instances.
//!
//! The guard is a thread of its own that reads each instance's `cpu.stat` four times a
//! second; it holds the instances weakly, so an instance that is gone drops out, and it
//! ends with the launcher's cgroup root.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How often the guard reads the instances' throttling counters.
const TICK: Duration = Duration::from_millis(250);
/// Ticks in a row with heavy throttling before an instance is confined.
const STRIKES: u32 = 2;
/// The fraction of a tick's quota periods that must end throttled for the tick to count
/// as a strike. Not "most": beside other work a hog gets less than its quota and runs out
/// of it in fewer periods (four busy threads here: a third of them), while a
/// single-threaded runtime, which cannot exceed one core except in a burst of its
/// helper threads, does not reach a fifth for half a second.
const HEAVY: f64 = 0.2;

/// One guarded instance: where to read its throttling and where to confine it.
#[derive(Debug)]
pub(crate) struct Guarded {
    pub(crate) instance: String,
    /// Its `cpu.stat` (quota periods and throttled periods).
    pub(crate) cpu_stat: PathBuf,
    /// Its `cpuset.cpus`.
    pub(crate) cpuset_cpus: PathBuf,
    /// How many CPUs its quota is worth (rounded up).
    pub(crate) cores: usize,
    pub(crate) state: Mutex<Throttling>,
}

/// What the guard remembers of one instance between ticks.
#[derive(Debug, Default)]
pub(crate) struct Throttling {
    last: Option<(u64, u64)>,
    strikes: u32,
    confined_to: Option<Vec<usize>>,
}

impl Throttling {
    /// Feed the cumulative `(nr_periods, nr_throttled)`; true when the instance has now
    /// been throttled in at least [`HEAVY`] of its periods for [`STRIKES`] ticks in a row.
    fn observe(&mut self, periods: u64, throttled: u64) -> bool {
        let previous = self.last.replace((periods, throttled));
        let Some((p0, t0)) = previous else {
            return false;
        };
        let (dp, dt) = (periods.saturating_sub(p0), throttled.saturating_sub(t0));
        if dp > 0 && dt as f64 >= HEAVY * dp as f64 {
            self.strikes += 1;
        } else {
            self.strikes = 0;
        }
        self.strikes >= STRIKES
    }
}

/// The guard over one launcher's instances.
#[derive(Debug)]
pub(crate) struct CpuGuard {
    /// The CPUs the daemon may use, in order.
    allowed: Vec<usize>,
    guarded: Mutex<Vec<Weak<Guarded>>>,
}

impl CpuGuard {
    /// A guard over `allowed` CPUs, with its thread started; `None` on a machine with
    /// a single CPU (nothing to confine to).
    pub(crate) fn start(allowed: Vec<usize>) -> Option<Arc<CpuGuard>> {
        if allowed.len() < 2 {
            return None;
        }
        let guard = Arc::new(CpuGuard {
            allowed,
            guarded: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&guard);
        std::thread::Builder::new()
            .name("shoal-cpu-guard".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                let Some(guard) = weak.upgrade() else { return };
                guard.tick();
            })
            .ok()?;
        Some(guard)
    }

    pub(crate) fn watch(&self, guarded: &Arc<Guarded>) {
        self.lock().push(Arc::downgrade(guarded));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Guarded>>> {
        self.guarded.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tick(&self) {
        let live: Vec<Arc<Guarded>> = {
            let mut guarded = self.lock();
            guarded.retain(|g| g.strong_count() > 0);
            guarded.iter().filter_map(Weak::upgrade).collect()
        };
        // How many confined instances each CPU already holds.
        let mut load = vec![0usize; self.allowed.len()];
        for g in &live {
            let state = g.state.lock().unwrap_or_else(|e| e.into_inner());
            for cpu in state.confined_to.iter().flatten() {
                if let Some(i) = self.allowed.iter().position(|c| c == cpu) {
                    load[i] += 1;
                }
            }
        }
        for g in &live {
            let Some((periods, throttled)) = std::fs::read_to_string(&g.cpu_stat)
                .ok()
                .and_then(|text| throttle_counts(&text))
            else {
                continue;
            };
            let mut state = g.state.lock().unwrap_or_else(|e| e.into_inner());
            if !state.observe(periods, throttled) || state.confined_to.is_some() {
                continue;
            }
            let Some(picked) = pick(&self.allowed, &load, g.cores) else {
                continue;
            };
            let cpus = cpu_list(&picked);
            match std::fs::write(&g.cpuset_cpus, &cpus) {
                Ok(()) => {
                    for cpu in &picked {
                        if let Some(i) = self.allowed.iter().position(|c| c == cpu) {
                            load[i] += 1;
                        }
                    }
                    tracing::info!(instance = %g.instance, cpus = %cpus,
                        "confined to its quota's worth of CPUs: it kept wanting more \
                         cores than its quota (throttled in most periods)");
                    state.confined_to = Some(picked);
                }
                Err(e) => {
                    tracing::warn!(instance = %g.instance, error = %e,
                        "could not confine a CPU-hungry instance");
                    // Do not retry every tick.
                    state.confined_to = Some(Vec::new());
                }
            }
        }
    }
}

/// `cores` CPUs from `allowed` holding the fewest confined instances (`load`, by index),
/// the highest-numbered first among equals (the lower ones tend to take the machine's
/// interrupts); `None` when confining would leave no CPU free of it.
fn pick(allowed: &[usize], load: &[usize], cores: usize) -> Option<Vec<usize>> {
    if cores == 0 || cores >= allowed.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..allowed.len()).collect();
    order.sort_by_key(|&i| (load[i], std::cmp::Reverse(allowed[i])));
    let mut picked: Vec<usize> = order[..cores].iter().map(|&i| allowed[i]).collect();
    picked.sort_unstable();
    Some(picked)
}

/// `(nr_periods, nr_throttled)` from a `cpu.stat` (v1 and v2 use the same names).
fn throttle_counts(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok()).flatten()
        })
    };
    Some((field("nr_periods")?, field("nr_throttled")?))
}

/// Parse a kernel CPU list (`0-3,6,8-9`).
pub(crate) fn parse_cpu_list(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    out.extend(a..=b.min(a + 4096));
                }
            }
            None => out.extend(part.parse::<usize>().ok()),
        }
    }
    out
}

/// Write a CPU list in the kernel's comma form.
fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confines_only_after_sustained_heavy_throttling() {
        let mut t = Throttling::default();
        assert!(!t.observe(100, 0), "the first reading only opens a window");
        assert!(
            !t.observe(125, 20),
            "one heavy tick is a strike, not yet enough"
        );
        assert!(t.observe(150, 40), "two heavy ticks in a row");
        let mut t = Throttling::default();
        t.observe(0, 0);
        t.observe(25, 25);
        assert!(!t.observe(50, 27), "a light tick clears the strikes");
        assert!(
            !t.observe(50, 27),
            "no periods at all (idle) is not throttling"
        );
        let mut t = Throttling::default();
        t.observe(0, 0);
        t.observe(25, 8);
        assert!(
            t.observe(50, 16),
            "a third of the periods, as beside other work"
        );
        let mut t = Throttling::default();
        t.observe(0, 0);
        t.observe(25, 4);
        assert!(
            !t.observe(50, 8),
            "under a fifth of the periods is not a hog"
        );
    }

    #[test]
    fn picks_the_least_loaded_cpus_and_never_all_of_them() {
        assert_eq!(pick(&[0, 1], &[0, 0], 1), Some(vec![1]));
        assert_eq!(pick(&[0, 1], &[0, 1], 1), Some(vec![0]));
        assert_eq!(pick(&[0, 1, 2, 3], &[2, 0, 1, 0], 2), Some(vec![1, 3]));
        assert_eq!(pick(&[0, 1], &[0, 0], 2), None);
        assert_eq!(pick(&[4], &[0], 1), None);
        assert_eq!(pick(&[0, 1], &[0, 0], 0), None);
    }

    #[test]
    fn reads_cpu_lists_and_throttle_counters() {
        assert_eq!(parse_cpu_list("0-3,6,8-9\n"), vec![0, 1, 2, 3, 6, 8, 9]);
        assert_eq!(parse_cpu_list("1"), vec![1]);
        assert_eq!(parse_cpu_list("\n"), Vec::<usize>::new());
        assert_eq!(cpu_list(&[1, 3]), "1,3");
        let stat = "nr_periods 118\nnr_throttled 11\nthrottled_time 51\n";
        assert_eq!(throttle_counts(stat), Some((118, 11)));
        let v2 = "usage_usec 5\nnr_periods 7\nnr_throttled 2\nthrottled_usec 9\n";
        assert_eq!(throttle_counts(v2), Some((7, 2)));
        assert_eq!(throttle_counts("usage_usec 5\n"), None);
    }
}
