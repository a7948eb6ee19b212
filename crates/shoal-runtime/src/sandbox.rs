//! The walls around an instance: who it runs as, what it can see, which system calls it
//! may make. Each layer is a well-kept piece, composed here:
//!
//! - **Its own uid** (one per live instance, from a configurable range) and no
//!   capabilities: the daemon, as root, switches the child to that uid between fork and
//!   exec (after the child joined its cgroups, which needs root). Files of the platform
//!   and of other instances are then closed to it by plain permissions, signals to other
//!   processes fail, and the Runtime API can tell its own instance's connections apart.
//!   Just before, still as root, the child takes a private mount namespace and stages
//!   what the sandbox will show (the code, the bootstrap) on a scratch tmpfs mounted over
//!   an existing directory (see [`stage_dir`]): so the data directory stays 0700 wherever
//!   it lives, and nothing of this is visible to the host.
//! - **bubblewrap** (`bwrap`, Debian's package) builds the view from inside an
//!   unprivileged user namespace it creates itself: new mount, pid, ipc, uts and cgroup
//!   namespaces; `/usr` and a few files of `/etc` read-only; the function's code
//!   read-only at `/var/task`; the runtime's bootstrap at `/opt/shoal`; a private tmpfs
//!   `/tmp` of the function's `ephemeral_storage`; a fresh `/proc` showing only the
//!   instance's own processes; a minimal `/dev`. Nothing of the data directory, the
//!   store, other functions or the cgroup filesystem is mounted. It also sets
//!   `no_new_privs`, drops every capability, and forbids new user namespaces inside.
//! - **A seccomp filter** compiled here with `seccompiler` and loaded by bubblewrap just
//!   before it executes the runtime: system calls a function never needs (tracing other
//!   processes, mounting, loading kernel code or modules, BPF, perf, keyrings, entering
//!   or making namespaces, changing the clock, rebooting) fail with `EPERM`.
//! - **Resource limits**: `RLIMIT_NOFILE`, set before exec, and the cgroups (memory,
//!   pids, cpu) of [`crate::cgroup`].
//!
//! The network namespace is shared with the host on purpose: functions call databases and
//! APIs. What each layer stops is listed in docs/ARCHITECTURE.md. Where the machine cannot
//! provide a layer (no bubblewrap, not root, no user namespaces), [`Sandbox::probe`] says
//! which, the launcher logs it once, and `shoal status` shows it: nothing pretends.
//!
//! This module decides the sandbox's shape and prepares its pieces; `process.rs` spawns.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where the function's code appears inside the sandbox (Lambda's `LAMBDA_TASK_ROOT`).
pub const TASK_ROOT: &str = "/var/task";
/// Where Shoal's own bootstrap for the runtime appears inside the sandbox.
pub const RUNTIME_ROOT: &str = "/opt/shoal";
/// Existing directories the child may shadow with its staging tmpfs, in its private mount
/// namespace only; the first that holds none of the staged sources is used.
const STAGE_CANDIDATES: &[&str] = &["/mnt", "/srv", "/media", "/opt", "/run", "/var/tmp", "/tmp"];

/// Where the child stages the directories bubblewrap binds: an existing directory that is
/// not an ancestor of any of them (shadowing it must not hide them).
pub fn stage_dir(sources: &[&Path]) -> Option<&'static str> {
    STAGE_CANDIDATES
        .iter()
        .copied()
        .find(|dir| Path::new(dir).is_dir() && !sources.iter().any(|s| s.starts_with(dir)))
}
/// Open files one instance may hold, as on Lambda.
pub const MAX_OPEN_FILES: u64 = 1024;

/// Files of `/etc` a runtime needs: name resolution, TLS roots, time zone, user names.
/// Everything else in `/etc` stays out of view.
const ETC_FILES: &[&str] = &[
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/ca-certificates.conf",
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
];

/// The namespaces and the system view every sandbox gets (the probe starts exactly this).
const BASE_VIEW: &[&str] = &[
    "--unshare-user",
    "--disable-userns",
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
    "--die-with-parent",
    "--ro-bind",
    "/usr",
    "/usr",
    "--symlink",
    "usr/bin",
    "/bin",
    "--symlink",
    "usr/sbin",
    "/sbin",
    "--symlink",
    "usr/lib",
    "/lib",
    "--symlink",
    "usr/lib64",
    "/lib64",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
];

/// How the daemon was asked to run instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// Sandbox every instance when the machine allows it; say which walls are missing.
    Auto,
    /// Refuse to start unless every wall can be put up.
    Required,
    /// Run instances as plain children of the daemon (development only).
    Off,
}

/// Settings of the sandbox.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub mode: SandboxMode,
    /// Instances run as uids from `uid_base + 1` to `uid_base + uid_count`.
    pub uid_base: u32,
    /// How many uids the range holds: the most instances that can run at once.
    pub uid_count: u32,
}

impl Default for SandboxConfig {
    fn default() -> SandboxConfig {
        SandboxConfig {
            mode: SandboxMode::Auto,
            uid_base: 200_000,
            uid_count: 4096,
        }
    }
}

/// One wall and whether it is up on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wall {
    pub name: &'static str,
    pub up: bool,
    /// What it does when up, or why it is down.
    pub detail: String,
}

/// The sandbox as this machine allows it.
#[derive(Debug)]
pub struct Sandbox {
    bwrap: Option<PathBuf>,
    uid_base: u32,
    uids: Mutex<BTreeSet<u32>>,
    uid_count: u32,
    seccomp: Option<Arc<[u8]>>,
    walls: Vec<Wall>,
}

/// A uid lent to one instance; returned to the range when dropped.
#[derive(Debug)]
pub struct Uid {
    pub uid: u32,
    sandbox: Arc<Sandbox>,
}

impl Drop for Uid {
    fn drop(&mut self) {
        self.sandbox
            .uids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.uid);
    }
}

/// Everything `process.rs` needs to start one process inside the sandbox.
#[derive(Debug)]
pub struct Plan {
    pub bwrap: PathBuf,
    pub uid: Uid,
    /// The directory the child mounts its staging tmpfs over.
    pub stage_dir: &'static str,
    /// Host directories the child binds under `stage_dir` before it drops root, and the
    /// name each gets there.
    pub stage: Vec<(PathBuf, &'static str)>,
    /// Arguments for bubblewrap, up to and including `--`.
    pub args: Vec<String>,
    /// The seccomp program, to be handed to bubblewrap on [`SECCOMP_FD`].
    pub seccomp: Option<Arc<[u8]>>,
}

/// The descriptor number bubblewrap reads the seccomp program from.
pub const SECCOMP_FD: i32 = 4;

/// What one instance's view is made of.
#[derive(Debug)]
pub struct View<'a> {
    pub code_dir: &'a Path,
    /// Shoal's bootstrap directory for this runtime, if it has one.
    pub runtime_dir: Option<&'a Path>,
    /// A host directory to make visible read-only at the same path (e.g. where `node`
    /// lives when it is not under `/usr`).
    pub extra_ro: Option<&'a Path>,
    pub tmp_bytes: u64,
}

impl Sandbox {
    /// Find out which walls this machine can put up.
    pub fn probe(config: &SandboxConfig) -> Arc<Sandbox> {
        let mut walls = Vec::new();
        let off = config.mode == SandboxMode::Off;
        let root = is_root();
        let bwrap = if off { None } else { find_in_path("bwrap") };
        let uid_ok = !off && root;
        walls.push(Wall {
            name: "uid",
            up: uid_ok,
            detail: if off {
                "sandbox turned off (--sandbox off)".into()
            } else if !root {
                "the daemon is not root, so instances run as its own user".into()
            } else {
                format!(
                    "each instance runs as its own uid from {}..{}, no capabilities",
                    config.uid_base + 1,
                    config.uid_base + config.uid_count
                )
            },
        });
        let ns_ok = uid_ok && bwrap.as_deref().is_some_and(|b| bwrap_works(b, config));
        walls.push(Wall {
            name: "namespaces",
            up: ns_ok,
            detail: match (&bwrap, ns_ok) {
                _ if off => "sandbox turned off".into(),
                (None, _) => "bubblewrap (bwrap) is not installed: apt-get install bubblewrap".into(),
                (Some(_), false) if !uid_ok => "needs the uid wall".into(),
                (Some(b), false) => format!(
                    "{} could not create user, mount and pid namespaces here",
                    b.display()
                ),
                (Some(_), true) => "own mount, pid, ipc, uts and cgroup namespaces; code read-only at /var/task; private /tmp; nothing of the data directory".into(),
            },
        });
        let seccomp = if ns_ok {
            match seccomp_program() {
                Ok(program) => Some(program),
                Err(why) => {
                    walls.push(Wall {
                        name: "seccomp",
                        up: false,
                        detail: why,
                    });
                    None
                }
            }
        } else {
            walls.push(Wall {
                name: "seccomp",
                up: false,
                detail: "needs the namespaces wall (bubblewrap loads the filter)".into(),
            });
            None
        };
        if seccomp.is_some() {
            walls.push(Wall {
                name: "seccomp",
                up: true,
                detail: format!(
                    "{} system calls a function never needs fail with EPERM",
                    DENIED.len()
                ),
            });
        }
        walls.push(Wall {
            name: "open_files",
            up: true,
            detail: format!("RLIMIT_NOFILE {MAX_OPEN_FILES}"),
        });
        Arc::new(Sandbox {
            bwrap: ns_ok.then_some(bwrap).flatten(),
            uid_base: config.uid_base,
            uids: Mutex::new(BTreeSet::new()),
            uid_count: config.uid_count.max(1),
            seccomp,
            walls,
        })
    }

    /// Whether instances run inside bubblewrap under their own uid.
    pub fn enabled(&self) -> bool {
        self.bwrap.is_some()
    }

    /// The walls and whether each is up.
    pub fn walls(&self) -> &[Wall] {
        &self.walls
    }

    fn lend_uid(self: &Arc<Self>) -> Option<Uid> {
        let mut used = self.uids.lock().unwrap_or_else(|e| e.into_inner());
        let uid =
            (self.uid_base + 1..=self.uid_base + self.uid_count).find(|u| !used.contains(u))?;
        used.insert(uid);
        Some(Uid {
            uid,
            sandbox: self.clone(),
        })
    }

    /// The bubblewrap invocation for one instance, or `Ok(None)` when the sandbox is off
    /// here. `Err` when the uid range is exhausted.
    pub fn plan(self: &Arc<Self>, view: &View<'_>) -> Result<Option<Plan>, String> {
        let Some(bwrap) = self.bwrap.clone() else {
            return Ok(None);
        };
        let uid = self.lend_uid().ok_or_else(|| {
            format!(
                "all {} sandbox uids are in use; raise --sandbox-uid-count",
                self.uid_count
            )
        })?;
        let id = uid.uid.to_string();
        let mut args: Vec<String> = [
            "--uid",
            &id,
            "--gid",
            &id,
            "--hostname",
            "shoal",
            "--new-session",
        ]
        .iter()
        .chain(BASE_VIEW)
        .map(|s| s.to_string())
        .collect();
        for file in ETC_FILES {
            args.extend(["--ro-bind-try".into(), (*file).into(), (*file).into()]);
        }
        let mut sources = vec![view.code_dir];
        sources.extend(view.runtime_dir);
        sources.extend(view.extra_ro);
        let stage_dir = stage_dir(&sources)
            .ok_or_else(|| "no directory to stage the sandbox's view in (need one of /mnt, /srv, /media, /opt, /run, /var/tmp, /tmp outside the data directory)".to_owned())?;
        let staged = |name: &str| format!("{stage_dir}/{name}");
        let mut stage = vec![(view.code_dir.to_owned(), "task")];
        args.extend(["--ro-bind".into(), staged("task"), TASK_ROOT.into()]);
        if let Some(dir) = view.runtime_dir {
            stage.push((dir.to_owned(), "runtime"));
            args.extend(["--ro-bind".into(), staged("runtime"), RUNTIME_ROOT.into()]);
        }
        if let Some(dir) = view.extra_ro {
            if !dir.starts_with("/usr") {
                stage.push((dir.to_owned(), "extra"));
                args.extend(["--ro-bind".into(), staged("extra"), path_arg(dir)]);
            }
        }
        args.extend([
            "--size".into(),
            view.tmp_bytes.to_string(),
            "--tmpfs".into(),
            "/tmp".into(),
        ]);
        if self.seccomp.is_some() {
            args.extend(["--seccomp".into(), SECCOMP_FD.to_string()]);
        }
        args.extend(["--chdir".into(), TASK_ROOT.into(), "--".into()]);
        Ok(Some(Plan {
            bwrap,
            uid,
            stage_dir,
            stage,
            args,
            seccomp: self.seccomp.clone(),
        }))
    }
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

#[allow(unsafe_code)]
fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Start bubblewrap once the way instances will be started, to learn whether this
/// machine lets an unprivileged user create the namespaces.
#[allow(clippy::disallowed_methods)] // this crate is the one place that spawns processes
fn bwrap_works(bwrap: &Path, config: &SandboxConfig) -> bool {
    use std::os::unix::process::CommandExt;
    let probe_uid = config.uid_base + config.uid_count.max(1);
    let status = std::process::Command::new(bwrap)
        .args(BASE_VIEW)
        .args(["--tmpfs", "/tmp", "--", "/bin/true"])
        .env_clear()
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .uid(probe_uid)
        .gid(probe_uid)
        .status();
    status.is_ok_and(|s| s.success())
}

/// System calls a function never needs. They fail with `EPERM` (not a kill: a runtime
/// that probes for a feature gets an error it can handle).
const DENIED: &[(&str, i64)] = &[
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("fsopen", libc::SYS_fsopen),
    ("fsmount", libc::SYS_fsmount),
    ("fsconfig", libc::SYS_fsconfig),
    ("fspick", libc::SYS_fspick),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("syslog", libc::SYS_syslog),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("quotactl", libc::SYS_quotactl),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("vhangup", libc::SYS_vhangup),
];

/// The filter as the kernel's `struct sock_filter` array, the form bubblewrap loads.
fn seccomp_program() -> Result<Arc<[u8]>, String> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| format!("no seccomp filter for this architecture: {e:?}"))?;
    let rules = DENIED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| format!("building the seccomp filter: {e}"))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e| format!("compiling the seccomp filter: {e:?}"))?;
    let mut bytes = Vec::with_capacity(program.len() * 8);
    for instruction in &program {
        bytes.extend_from_slice(&instruction.code.to_ne_bytes());
        bytes.push(instruction.jt);
        bytes.push(instruction.jf);
        bytes.extend_from_slice(&instruction.k.to_ne_bytes());
    }
    Ok(bytes.into())
}

/// A sealed in-memory file holding `bytes`, positioned at its start: how the seccomp
/// program reaches bubblewrap without touching the disk.
#[allow(unsafe_code)]
pub(crate) fn memfd_with(bytes: &[u8]) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::io::{Seek, Write};
    use std::os::fd::FromRawFd;
    let name = CString::new("shoal-seccomp").expect("no NUL");
    // SAFETY: memfd_create reads a NUL-terminated name we own; the returned descriptor is
    // ours alone and wrapped in an OwnedFd at once.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh, valid descriptor nobody else owns.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(owned);
    file.write_all(bytes)?;
    file.rewind()?;
    Ok(file.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_to_whole_instructions() {
        let program = seccomp_program().unwrap();
        assert!(!program.is_empty());
        assert_eq!(program.len() % 8, 0);
    }

    #[test]
    fn uids_are_lent_once_and_come_back() {
        let sandbox = Arc::new(Sandbox {
            bwrap: Some("/usr/bin/bwrap".into()),
            uid_base: 1000,
            uids: Mutex::new(BTreeSet::new()),
            uid_count: 2,
            seccomp: None,
            walls: Vec::new(),
        });
        let view = View {
            code_dir: Path::new("/data/code/x"),
            runtime_dir: None,
            extra_ro: None,
            tmp_bytes: 1 << 20,
        };
        let a = sandbox.plan(&view).unwrap().unwrap();
        let b = sandbox.plan(&view).unwrap().unwrap();
        assert_eq!((a.uid.uid, b.uid.uid), (1001, 1002));
        assert!(sandbox.plan(&view).is_err(), "the range is spent");
        drop(a);
        assert_eq!(sandbox.plan(&view).unwrap().unwrap().uid.uid, 1001);
        assert!(b.args.windows(2).any(|w| w == ["--tmpfs", "/tmp"]));
        let staged = format!("{}/task", b.stage_dir);
        assert!(b
            .args
            .windows(3)
            .any(|w| w == ["--ro-bind", staged.as_str(), TASK_ROOT]));
        assert_eq!(b.stage, [(PathBuf::from("/data/code/x"), "task")]);
        assert_eq!(b.args.last().map(String::as_str), Some("--"));
    }
}

#[cfg(test)]
mod stage_tests {
    use super::*;

    #[test]
    fn the_stage_never_shadows_a_source() {
        let dir = stage_dir(&[Path::new("/mnt/data/code/x")]).unwrap();
        assert_ne!(dir, "/mnt");
        let dir = stage_dir(&[Path::new("/tmp/x"), Path::new("/srv/y")]).unwrap();
        assert!(dir != "/tmp" && dir != "/srv", "{dir}");
    }
}
