//! Limits per instance through the kernel's cgroups: memory (cgroup v2 where the daemon's
//! own cgroup has the memory controller, cgroup v1's `memory` hierarchy where that is what
//! the machine mounts), and where available the `pids` controller (processes and threads)
//! and the `cpu` controller (a quota of CPU time, so one hog cannot take every core).
//!
//! Every instance gets a cgroup of its own under one parent the launcher owns
//! (`<the daemon's cgroup>/shoal-<pid>-<n>`), so the limits nest inside whatever limit
//! the daemon itself runs under and the rest of the hierarchy is never touched. Where the
//! `cpuset` controller is there too, instances also get a cpuset cgroup, which the
//! [`guard`] narrows for an instance that keeps wanting more cores than its quota. The
//! child joins its cgroup between fork and exec, before it can allocate anything; the
//! cgroup is removed when the instance is gone. This module only reads and writes cgroup
//! files: it does not spawn, and it does not decide limits (the launcher does).

mod guard;

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Which interface the memory controller speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    fn limit_file(self) -> &'static str {
        match self {
            Version::V1 => "memory.limit_in_bytes",
            Version::V2 => "memory.max",
        }
    }
}

/// The launcher's parent cgroup. Removed when dropped (it is empty by then: every
/// instance cgroup holds an `Arc` of it and goes first).
#[derive(Debug)]
pub struct Root {
    version: Version,
    dir: PathBuf,
    /// The parent for the `pids` controller: `dir` itself on v2, its own hierarchy on v1.
    pids: Option<PathBuf>,
    /// The parent for the `cpu` controller, likewise.
    cpu: Option<PathBuf>,
    /// The parent for the `cpuset` controller, likewise; only kept with `cpu` (the guard
    /// needs both).
    cpuset: Option<PathBuf>,
    guard: Option<std::sync::Arc<guard::CpuGuard>>,
}

/// What an instance's cgroups hold it to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub memory_bytes: u64,
    /// Processes and threads.
    pub pids: u32,
    /// CPU time per wall time, in cores (1.0 = one core's worth).
    pub cpu_cores: f64,
}

/// The CFS period the CPU quota is expressed in. Short, so a throttled instance's bursts
/// (its threads running on every core at once until the quota is spent) are short too.
const CPU_PERIOD_US: u64 = 10_000;
/// An instance's CPU weight against the daemon's own threads (1024 on v1, 100 on v2): an
/// eighth, so the daemon's HTTP work, which every function's latency goes through, wins
/// when a function saturates the machine.
const CPU_SHARES_V1: u64 = 128;
const CPU_WEIGHT_V2: u64 = 12;

/// One instance's cgroup: the child joins it before exec; [`InstanceCgroup::finish`]
/// reads whether the kernel's OOM killer struck and removes it.
#[derive(Debug)]
pub struct InstanceCgroup {
    version: Version,
    dir: PathBuf,
    /// The instance's cgroups in other v1 hierarchies (pids, cpu).
    extra: Vec<PathBuf>,
    limit_bytes: u64,
    /// Watched (weakly) by the root's CPU guard while the instance lives.
    _guarded: Option<std::sync::Arc<guard::Guarded>>,
    _root: std::sync::Arc<Root>,
}

/// Launchers in this process so far: each gets its own parent cgroup.
static NEXT_ROOT: AtomicU64 = AtomicU64::new(0);

impl Root {
    /// Find a usable memory controller and create the launcher's parent cgroup, or say
    /// why there is none.
    pub fn create() -> Result<Root, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
        let membership = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
        let mounts = parse_mounts(&mountinfo);
        let mut why = Vec::new();
        for version in [Version::V2, Version::V1] {
            let found = mounts
                .iter()
                .find(|m| m.version == version)
                .and_then(|m| own_cgroup(&membership, version).map(|path| (m, m.dir_of(&path))));
            let Some((_, own)) = found else {
                why.push(format!("no cgroup {version:?} memory hierarchy"));
                continue;
            };
            match Root::create_in(version, &own) {
                Ok(root) => return Ok(root),
                Err(e) => why.push(format!("cgroup {version:?} at {}: {e}", own.display())),
            }
        }
        Err(why.join("; "))
    }

    fn create_in(version: Version, own: &Path) -> io::Result<Root> {
        if version == Version::V2 {
            let controllers = std::fs::read_to_string(own.join("cgroup.controllers"))?;
            if !controllers.split_whitespace().any(|c| c == "memory") {
                return Err(io::Error::other("the memory controller is not available"));
            }
            // Children of the daemon's cgroup get the memory controller only if it is
            // enabled below it; that fails (EBUSY) when the daemon's cgroup is not a root
            // and holds processes, i.e. when memory was not delegated to us.
            enable_memory(own).map_err(|e| {
                io::Error::other(format!(
                    "enabling memory for child cgroups (cgroup.subtree_control): {e}"
                ))
            })?;
        }
        sweep_stale(own);
        let n = NEXT_ROOT.fetch_add(1, Ordering::Relaxed);
        let dir = own.join(format!("shoal-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir)?;
        let mut root = Root {
            version,
            dir,
            pids: None,
            cpu: None,
            cpuset: None,
            guard: None,
        };
        if version == Version::V2 {
            enable_memory(&root.dir)?;
            // The other controllers are a bonus: without them memory still holds.
            if enable(own, "pids")
                .and_then(|()| enable(&root.dir, "pids"))
                .is_ok()
            {
                root.pids = Some(root.dir.clone());
            }
            if enable(own, "cpu")
                .and_then(|()| enable(&root.dir, "cpu"))
                .is_ok()
            {
                root.cpu = Some(root.dir.clone());
            }
            if root.cpu.is_some()
                && enable(own, "cpuset")
                    .and_then(|()| enable(&root.dir, "cpuset"))
                    .is_ok()
            {
                root.cpuset = Some(root.dir.clone());
            }
        } else {
            root.pids = v1_parent("pids", n);
            root.cpu = v1_parent("cpu", n);
            if root.cpu.is_some() {
                root.cpuset = v1_parent("cpuset", n).and_then(|dir| {
                    // A v1 cpuset takes no process until its CPUs and memory nodes are set.
                    match dir.parent().map(|parent| inherit_cpuset(parent, &dir)) {
                        Some(Ok(())) => Some(dir),
                        _ => {
                            let _ = std::fs::remove_dir(&dir);
                            None
                        }
                    }
                });
            }
        }
        if let Some(cpuset) = &root.cpuset {
            let file = match version {
                Version::V1 => "cpuset.cpus",
                Version::V2 => "cpuset.cpus.effective",
            };
            let allowed = std::fs::read_to_string(cpuset.join(file))
                .map(|text| guard::parse_cpu_list(&text))
                .unwrap_or_default();
            root.guard = guard::CpuGuard::start(allowed);
        }
        if !root.dir.join(version.limit_file()).exists() {
            return Err(io::Error::other(format!(
                "{} has no {}",
                root.dir.display(),
                version.limit_file()
            )));
        }
        Ok(root)
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether instances get a `pids` limit here.
    pub fn has_pids(&self) -> bool {
        self.pids.is_some()
    }

    /// Whether instances get a CPU quota here.
    pub fn has_cpu(&self) -> bool {
        self.cpu.is_some()
    }

    /// Whether an instance that keeps wanting more cores than its quota is confined to
    /// its quota's worth of CPUs here.
    pub fn has_cpu_guard(&self) -> bool {
        self.guard.is_some()
    }

    /// Create `instance`'s cgroups with their limits.
    pub fn instance(
        self: &std::sync::Arc<Self>,
        instance: &str,
        limits: Limits,
    ) -> io::Result<InstanceCgroup> {
        let limit_bytes = limits.memory_bytes;
        let dir = self.dir.join(instance);
        // A cgroup left from an earlier instance of the same name (not possible within
        // one launcher, but cheap to handle) would refuse mkdir.
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir)?;
        let mut cgroup = InstanceCgroup {
            version: self.version,
            dir,
            extra: Vec::new(),
            limit_bytes,
            _guarded: None,
            _root: self.clone(),
        };
        let quota = ((limits.cpu_cores * CPU_PERIOD_US as f64) as u64).max(1000);
        let pids = limits.pids.to_string();
        if let Some(parent) = &self.pids {
            let dir = cgroup.dir_in(parent, instance)?;
            std::fs::write(dir.join("pids.max"), &pids)?;
        }
        let mut cpu_dir = None;
        if let Some(parent) = &self.cpu {
            let dir = cgroup.dir_in(parent, instance)?;
            cpu_dir = Some(dir.clone());
            match self.version {
                Version::V2 => {
                    std::fs::write(dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"))?;
                    std::fs::write(dir.join("cpu.weight"), CPU_WEIGHT_V2.to_string())?;
                }
                Version::V1 => {
                    std::fs::write(dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                    std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())?;
                    std::fs::write(dir.join("cpu.shares"), CPU_SHARES_V1.to_string())?;
                }
            }
        }
        if let (Some(parent), Some(guard), Some(cpu_dir)) = (&self.cpuset, &self.guard, cpu_dir) {
            let dir = cgroup.dir_in(parent, instance)?;
            if self.version == Version::V1 {
                inherit_cpuset(parent, &dir)?;
            }
            let guarded = std::sync::Arc::new(guard::Guarded {
                instance: instance.to_owned(),
                cpu_stat: cpu_dir.join("cpu.stat"),
                cpuset_cpus: dir.join("cpuset.cpus"),
                cores: limits.cpu_cores.ceil().max(1.0) as usize,
                state: Default::default(),
            });
            guard.watch(&guarded);
            cgroup._guarded = Some(guarded);
        }
        let limit = limit_bytes.to_string();
        let set = std::fs::write(cgroup.dir.join(self.version.limit_file()), &limit);
        if let Err(e) = set {
            let _ = std::fs::remove_dir(&cgroup.dir);
            return Err(e);
        }
        // Swap must not stretch the limit. Not every kernel accounts swap: best effort.
        match self.version {
            Version::V1 => {
                let _ = std::fs::write(cgroup.dir.join("memory.memsw.limit_in_bytes"), &limit);
            }
            Version::V2 => {
                let _ = std::fs::write(cgroup.dir.join("memory.swap.max"), "0");
            }
        }
        Ok(cgroup)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
        for extra in [&self.pids, &self.cpu, &self.cpuset].into_iter().flatten() {
            if extra != &self.dir {
                let _ = std::fs::remove_dir(extra);
            }
        }
    }
}

/// On cgroup v1, the launcher's parent cgroup in the hierarchy of `controller`.
fn v1_parent(controller: &str, n: u64) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mount = parse_v1_mount(&mountinfo, controller)?;
    let own_path = membership.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_owned())
    })?;
    let own = mount.dir_of(&own_path);
    sweep_stale(&own);
    let dir = own.join(format!("shoal-{}-{n}", std::process::id()));
    std::fs::create_dir(&dir).ok()?;
    Some(dir)
}

/// The v1 mount carrying `controller`.
fn parse_v1_mount(mountinfo: &str, controller: &str) -> Option<Mount> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split_whitespace().collect();
        let mut rest = after.split_whitespace();
        let (fstype, _source, options) = (rest.next()?, rest.next()?, rest.next()?);
        if fstype != "cgroup" || !options.split(',').any(|o| o == controller) {
            return None;
        }
        Some(Mount {
            version: Version::V1,
            root: unescape(fields.get(3)?),
            mount_point: PathBuf::from(unescape(fields.get(4)?)),
        })
    })
}

impl InstanceCgroup {
    /// The instance's cgroup under `parent`: the memory cgroup itself when `parent` is
    /// the memory parent (v2), else a new one recorded for joining and removal.
    fn dir_in(&mut self, parent: &Path, instance: &str) -> io::Result<PathBuf> {
        if Some(parent) == self.dir.parent() {
            return Ok(self.dir.clone());
        }
        let dir = parent.join(instance);
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir)?;
        self.extra.push(dir.clone());
        Ok(dir)
    }

    /// Every `cgroup.procs` the child writes `0` (itself) into before exec.
    pub fn procs_paths(&self) -> Vec<CString> {
        std::iter::once(&self.dir)
            .chain(&self.extra)
            .map(|dir| {
                CString::new(
                    dir.join("cgroup.procs")
                        .into_os_string()
                        .into_encoded_bytes(),
                )
                .expect("cgroup paths hold no NUL byte")
            })
            .collect()
    }

    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes
    }

    /// Whether the kernel's OOM killer killed a process of this cgroup.
    pub fn oom_killed(&self) -> bool {
        match self.version {
            Version::V2 => std::fs::read_to_string(self.dir.join("memory.events"))
                .ok()
                .and_then(|text| counter(&text, "oom_kill"))
                .is_some_and(|n| n > 0),
            Version::V1 => {
                let control = std::fs::read_to_string(self.dir.join("memory.oom_control"))
                    .unwrap_or_default();
                match counter(&control, "oom_kill") {
                    Some(n) => n > 0,
                    // Kernels before 4.13 do not count kills: hitting the limit is the
                    // best hint there is.
                    None => std::fs::read_to_string(self.dir.join("memory.failcnt"))
                        .ok()
                        .and_then(|t| t.trim().parse::<u64>().ok())
                        .is_some_and(|n| n > 0),
                }
            }
        }
    }

    /// Remove the cgroup once its process is gone. Anything the instance left running
    /// in it (processes it spawned) is killed first: nothing outlives its instance.
    pub async fn remove(&self) {
        self.remove_dir(&self.dir).await;
        for extra in &self.extra {
            self.remove_dir(extra).await;
        }
    }

    async fn remove_dir(&self, dir: &Path) {
        for attempt in 0..20 {
            match std::fs::remove_dir(dir) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(_) => {
                    if attempt > 0 {
                        kill_members(dir);
                    }
                    tokio::time::sleep(Duration::from_millis(10 * (attempt + 1))).await;
                }
            }
        }
        tracing::warn!(cgroup = %dir.display(), "could not remove an instance cgroup");
    }
}

impl Drop for InstanceCgroup {
    /// Best effort when the instance never started (its process could not be spawned);
    /// after [`InstanceCgroup::remove`] the directory is already gone.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
        for extra in &self.extra {
            let _ = std::fs::remove_dir(extra);
        }
    }
}

/// SIGKILL every process still in the cgroup at `dir`.
#[allow(unsafe_code)]
fn kill_members(dir: &Path) {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Kill what is left in the cgroup at `dir` and remove it, waiting briefly (at start-up,
/// outside any async task) for the killed processes to be gone.
fn remove_now(dir: &Path) {
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        kill_members(dir);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Give the new v1 cpuset `dir` the CPUs and memory nodes of `parent` (a v1 cpuset
/// starts with none, and takes no process until both are set).
fn inherit_cpuset(parent: &Path, dir: &Path) -> io::Result<()> {
    for file in ["cpuset.mems", "cpuset.cpus"] {
        let value = std::fs::read_to_string(parent.join(file))?;
        std::fs::write(dir.join(file), value.trim())?;
    }
    Ok(())
}

fn enable_memory(dir: &Path) -> io::Result<()> {
    enable(dir, "memory")
}

/// Enable `controller` for the children of the v2 cgroup at `dir`.
fn enable(dir: &Path, controller: &str) -> io::Result<()> {
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control"))?;
    if enabled.split_whitespace().any(|c| c == controller) {
        return Ok(());
    }
    std::fs::write(dir.join("cgroup.subtree_control"), format!("+{controller}"))
}

/// Remove parents left by daemons that are gone (killed before they could clean up).
/// Their instances died with them; anything an instance had started itself does not get
/// that signal and is killed here.
fn sweep_stale(own: &Path) {
    let Ok(entries) = std::fs::read_dir(own) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("shoal-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(children) = std::fs::read_dir(entry.path()) {
            for child in children.flatten() {
                if child.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_now(&child.path());
                }
            }
        }
        let _ = std::fs::remove_dir(entry.path());
    }
}

/// A mounted hierarchy that carries the memory controller.
#[derive(Debug, PartialEq)]
struct Mount {
    version: Version,
    /// Where in the hierarchy the mount starts (not `/` inside some containers).
    root: String,
    mount_point: PathBuf,
}

impl Mount {
    /// The directory of cgroup `path` (as /proc/self/cgroup names it) under this mount.
    fn dir_of(&self, path: &str) -> PathBuf {
        let relative = path
            .strip_prefix(self.root.as_str())
            .unwrap_or(path)
            .trim_start_matches('/');
        self.mount_point.join(relative)
    }
}

/// The cgroup2 mount and the v1 mount with the `memory` controller, from mountinfo.
fn parse_mounts(mountinfo: &str) -> Vec<Mount> {
    let mut mounts = Vec::new();
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = before.split_whitespace().collect();
        let mut rest = after.split_whitespace();
        let (Some(fstype), Some(_source), Some(super_options)) =
            (rest.next(), rest.next(), rest.next())
        else {
            continue;
        };
        let (Some(root), Some(mount_point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let version = match fstype {
            "cgroup2" => Version::V2,
            "cgroup" if super_options.split(',').any(|o| o == "memory") => Version::V1,
            _ => continue,
        };
        if mounts.iter().any(|m: &Mount| m.version == version) {
            continue;
        }
        mounts.push(Mount {
            version,
            root: unescape(root),
            mount_point: PathBuf::from(unescape(mount_point)),
        });
    }
    mounts
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// This process's cgroup in the hierarchy of `version`, from /proc/self/cgroup.
fn own_cgroup(membership: &str, version: Version) -> Option<String> {
    membership.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match version {
            Version::V2 => controllers.is_empty(),
            Version::V1 => controllers.split(',').any(|c| c == "memory"),
        };
        matches.then(|| path.to_owned())
    })
}

/// The value of `name` in a flat-keyed cgroup file (`key value` per line).
fn counter(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_both_hierarchies_in_mountinfo() {
        let mounts = parse_mounts(HYBRID);
        assert_eq!(
            mounts,
            [
                Mount {
                    version: Version::V1,
                    root: "/".into(),
                    mount_point: "/sys/fs/cgroup/memory".into(),
                },
                Mount {
                    version: Version::V2,
                    root: "/".into(),
                    mount_point: "/sys/fs/cgroup/unified".into(),
                },
            ]
        );
    }

    #[test]
    fn maps_the_own_cgroup_to_a_directory() {
        let membership = "9:name=systemd:/\n4:memory:/jobs/42\n1:cpu,cpuacct:/\n0::/user.slice/x\n";
        assert_eq!(
            own_cgroup(membership, Version::V1).as_deref(),
            Some("/jobs/42")
        );
        assert_eq!(
            own_cgroup(membership, Version::V2).as_deref(),
            Some("/user.slice/x")
        );
        let mounts = parse_mounts(HYBRID);
        assert_eq!(
            mounts[0].dir_of("/jobs/42"),
            Path::new("/sys/fs/cgroup/memory/jobs/42")
        );
        // Inside a container the mount may start below the hierarchy's root.
        let nested = Mount {
            version: Version::V2,
            root: "/kubepods/pod1".into(),
            mount_point: "/sys/fs/cgroup".into(),
        };
        assert_eq!(
            nested.dir_of("/kubepods/pod1/app"),
            Path::new("/sys/fs/cgroup/app")
        );
    }

    #[test]
    fn reads_oom_counters() {
        let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(counter(events, "oom_kill"), Some(1));
        assert_eq!(counter(events, "oom"), Some(1));
        let control = "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n";
        assert_eq!(counter(control, "oom_kill"), Some(0));
        assert_eq!(
            counter("oom_kill_disable 0\nunder_oom 0\n", "oom_kill"),
            None
        );
    }

    /// On a machine with a usable memory controller (the project's CI machine has v1),
    /// an instance cgroup gets its limit and goes away again.
    #[tokio::test]
    async fn instance_cgroups_get_their_limit_and_are_removed() {
        let root = match Root::create() {
            Ok(root) => std::sync::Arc::new(root),
            Err(why) => {
                eprintln!("no usable memory cgroup here, nothing to check: {why}");
                return;
            }
        };
        let parent = root.dir().to_owned();
        assert!(parent.is_dir());
        let cgroup = root
            .instance(
                "probe",
                Limits {
                    memory_bytes: 96 * 1024 * 1024,
                    pids: 77,
                    cpu_cores: 0.5,
                },
            )
            .unwrap();
        let limit = std::fs::read_to_string(cgroup.dir.join(root.version().limit_file())).unwrap();
        assert_eq!(limit.trim(), (96u64 * 1024 * 1024).to_string());
        let pids_dir = root.pids.as_ref().map(|_| cgroup.procs_paths().len());
        if root.has_pids() {
            let dir = if root.version() == Version::V2 {
                cgroup.dir.clone()
            } else {
                cgroup.extra[0].clone()
            };
            assert_eq!(
                std::fs::read_to_string(dir.join("pids.max"))
                    .unwrap()
                    .trim(),
                "77"
            );
        }
        let _ = pids_dir;
        let extra: Vec<PathBuf> = cgroup.extra.clone();
        assert!(!cgroup.oom_killed());
        let dir = cgroup.dir.clone();
        cgroup.remove().await;
        assert!(!dir.exists());
        assert!(extra.iter().all(|d| !d.exists()), "{extra:?}");
        drop(cgroup);
        drop(root);
        assert!(!parent.exists(), "the parent cgroup outlived its launcher");
    }
}
