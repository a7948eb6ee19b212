//! Spawning an instance process: environment, stdio capture, death with the daemon, its
//! cgroups, its sandbox (uid, bubblewrap, seccomp: see `sandbox.rs`), the inherited
//! native-channel descriptor, and an exit monitor that turns the process's end into a
//! one-line reason (naming an out-of-memory kill as such).

use std::collections::VecDeque;
use std::ffi::CString;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::io::AsyncRead;
use tokio::process::Command;
use tokio::sync::{watch, Notify};

use std::os::fd::{AsRawFd, OwnedFd};

use crate::capture;
use crate::cgroup::InstanceCgroup;
use crate::sandbox::{self, Plan};
use crate::{LogSink, LogStream};

/// The descriptor number the native channel arrives on in the instance
/// (`SHOAL_CHANNEL_FD`).
pub(crate) const CHANNEL_FD: i32 = 3;

/// Lines of stderr kept to explain a failed start.
const STDERR_TAIL_LINES: usize = 20;
/// What V8 prints on stderr when the heap reaches `--max-old-space-size` (then it aborts).
const V8_HEAP_OOM: &str = "JavaScript heap out of memory";

/// A running process and the means to watch and stop it.
pub(crate) struct Spawned {
    pub pid: u32,
    /// `Some(reason)` once the process is gone.
    pub exit: watch::Receiver<Option<String>>,
    pub kill: Arc<Notify>,
    pub stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

impl Spawned {
    pub fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// Whose output a process's lines are, and whose exit its end is: fixed at spawn, except
/// for a warm-pool process, which learns its function and instance when it is assigned
/// one. Until then (function empty) its lines and exit go to the daemon's own log.
#[derive(Clone)]
pub(crate) struct Owner(Arc<RwLock<(String, String)>>);

impl Owner {
    pub fn new(function: &str, instance: &str) -> Owner {
        Owner(Arc::new(RwLock::new((
            function.to_owned(),
            instance.to_owned(),
        ))))
    }

    pub fn set(&self, function: &str, instance: &str) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) =
            (function.to_owned(), instance.to_owned());
    }

    fn with<R>(&self, f: impl FnOnce(&str, &str) -> R) -> R {
        let owner = self.0.read().unwrap_or_else(|e| e.into_inner());
        f(&owner.0, &owner.1)
    }
}

pub(crate) struct SpawnSpec<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    pub cwd: &'a Path,
    pub env: Vec<(String, String)>,
    pub owner: Owner,
    pub scratch: &'a Path,
    /// The instance's cgroups, joined before exec; `None` where there is none.
    pub cgroup: Option<InstanceCgroup>,
    /// Run inside the sandbox as planned; `None` runs the program directly.
    pub sandbox: Option<Plan>,
    /// A descriptor the process receives as [`CHANNEL_FD`] (the native channel).
    pub channel: Option<OwnedFd>,
}

/// Threads that fork instance processes (see [`fork_thread`]).
const FORK_THREADS: usize = 4;

type ForkJob = Box<dyn FnOnce() + Send>;

/// Where the fork of every process happens: a few threads of the daemon's own that never
/// exit. Not a runtime worker: until the child has executed, the parent waits (the child
/// joins its cgroups first, which on cgroup v1 waits for an RCU grace period, often 10 ms
/// or more), and a worker blocked that long holds up every connection and instance
/// channel it serves — among them the instance whose start asked for this process (a
/// warm pool's refill). Not tokio's blocking pool either: the child asks for SIGKILL when
/// its parent *thread* ends (`PR_SET_PDEATHSIG`), and a blocking-pool thread ends after
/// ten idle seconds, killing every instance it forked.
fn fork_thread() -> &'static std::sync::mpsc::Sender<ForkJob> {
    static JOBS: std::sync::OnceLock<std::sync::mpsc::Sender<ForkJob>> = std::sync::OnceLock::new();
    JOBS.get_or_init(|| {
        let (jobs, queue) = std::sync::mpsc::channel::<ForkJob>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..FORK_THREADS {
            let queue = queue.clone();
            let started = std::thread::Builder::new()
                .name(format!("shoal-fork-{n}"))
                .spawn(move || loop {
                    let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
            if let Err(e) = started {
                // Fewer threads only fork fewer processes at once; with none, every
                // spawn fails (the queue has no receiver left).
                tracing::error!(error = %e, "starting a process-forking thread");
            }
        }
        jobs
    })
}

/// Start the process, forked from one of the daemon's fork threads ([`fork_thread`]).
#[allow(clippy::disallowed_methods)] // this crate is the one place that spawns processes
pub(crate) async fn spawn(spec: SpawnSpec<'_>, logs: Arc<dyn LogSink>) -> std::io::Result<Spawned> {
    let mut command = match &spec.sandbox {
        Some(plan) => {
            let mut command = Command::new(&plan.bwrap);
            command
                .args(&plan.args)
                .arg(spec.program)
                .args(spec.args)
                .current_dir("/");
            command
        }
        None => {
            let mut command = Command::new(spec.program);
            command.args(spec.args).current_dir(spec.cwd);
            command
        }
    };
    command
        .env_clear()
        .envs(spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Descriptors the child gets at fixed numbers: copied above the low numbers first, so
    // moving one into place cannot overwrite another.
    let channel = spec.channel.as_ref().map(high_copy).transpose()?;
    let seccomp = match spec.sandbox.as_ref().and_then(|p| p.seccomp.as_deref()) {
        Some(program) => Some(high_copy(&sandbox::memfd_with(program)?)?),
        None => None,
    };
    let stage = spec.sandbox.as_ref().map(|plan| Stage {
        tmpfs: cstring(plan.stage_dir.to_owned()),
        binds: plan
            .stage
            .iter()
            .map(|(source, name)| StagedBind {
                source: cstring(source.display().to_string()),
                target: cstring(format!("{}/{name}", plan.stage_dir)),
            })
            .collect(),
    });
    let before_exec = BeforeExec {
        cgroups: spec
            .cgroup
            .as_ref()
            .map(InstanceCgroup::procs_paths)
            .unwrap_or_default(),
        channel: channel.as_ref().map(AsRawFd::as_raw_fd),
        seccomp: seccomp.as_ref().map(AsRawFd::as_raw_fd),
        stage,
        identity: spec.sandbox.as_ref().map(|p| p.uid.uid),
    };
    before_exec.install(&mut command);
    let inherited = (channel, seccomp, spec.channel);
    let runtime = tokio::runtime::Handle::current();
    let (spawned, child) = tokio::sync::oneshot::channel();
    fork_thread()
        .send(Box::new(move || {
            // The child is watched by this runtime's process driver.
            let _runtime = runtime.enter();
            let child = command.spawn();
            // The child has its copies now.
            drop(inherited);
            // Nobody waiting: the child is dropped, and killed (`kill_on_drop`).
            let _ = spawned.send(child);
        }))
        .map_err(|_| std::io::Error::other("no thread left to start processes from"))?;
    let mut child = child
        .await
        .map_err(|_| std::io::Error::other("the process-forking thread failed"))??;
    let uid = spec.sandbox.map(|plan| plan.uid);
    let pid = child.id().unwrap_or(0);
    let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
    let heap_oom = Arc::new(AtomicBool::new(false));
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let stdout_done = tokio::spawn(pump(
        stdout,
        LogStream::Stdout,
        spec.owner.clone(),
        logs.clone(),
        None,
    ));
    let stderr_done = tokio::spawn(pump(
        stderr,
        LogStream::Stderr,
        spec.owner.clone(),
        logs.clone(),
        Some((stderr_tail.clone(), heap_oom.clone())),
    ));
    let (exit_tx, exit) = watch::channel(None);
    let kill = Arc::new(Notify::new());
    let scratch = spec.scratch.to_owned();
    let kill_wait = kill.clone();
    let cgroup = spec.cgroup;
    let owner = spec.owner;
    tokio::spawn(async move {
        // The uid goes back to the range only once its process (and cgroup) is gone.
        let _uid = uid;
        let (status, asked) = tokio::select! {
            status = child.wait() => (status, false),
            _ = kill_wait.notified() => {
                let _ = child.start_kill();
                (child.wait().await, true)
            }
        };
        // Our own kill shows as SIGKILL; a process that died on its own first (its
        // channel closing is what asked for the kill) shows its real end.
        let ours = asked && sigkilled(&status);
        let mut reason = describe(status);
        let mut out_of_memory = false;
        if let Some(cgroup) = cgroup {
            if cgroup.oom_killed() {
                out_of_memory = true;
                reason = format!(
                    "ran out of memory: the kernel killed it at its memory limit of {} MiB ({reason})",
                    cgroup.limit_bytes() / (1024 * 1024)
                );
            }
            // Also kills what the instance left running, which may hold its stdio open.
            cgroup.remove().await;
            drop(cgroup);
        }
        // Let the last lines reach the log before the exit is announced.
        let _ = stdout_done.await;
        let _ = stderr_done.await;
        let _ = std::fs::remove_dir_all(&scratch);
        if heap_oom.load(Ordering::Relaxed) && !out_of_memory {
            out_of_memory = true;
            reason = format!("ran out of memory: {V8_HEAP_OOM} ({reason})");
        }
        if out_of_memory || !ours {
            owner.with(|function, instance| {
                if function.is_empty() {
                    tracing::warn!(instance, %reason, "warm-pool process exited");
                } else {
                    logs.exited(function, instance, &reason);
                }
            });
        }
        exit_tx.send_replace(Some(reason));
    });
    Ok(Spawned {
        pid,
        exit,
        kill,
        stderr_tail,
    })
}

/// Wait until the process is gone; its one-line exit reason.
pub(crate) async fn exit_reason(mut exit: watch::Receiver<Option<String>>) -> String {
    exit.wait_for(|e| e.is_some())
        .await
        .ok()
        .and_then(|e| e.clone())
        .unwrap_or_default()
}

fn sigkilled(status: &std::io::Result<ExitStatus>) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status
        .as_ref()
        .is_ok_and(|s| s.signal() == Some(libc::SIGKILL))
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(9)) => "killed by SIGKILL".to_owned(),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "exited".to_owned(),
        },
        Err(e) => format!("could not be waited for: {e}"),
    }
}

/// What the child does between fork and exec, in this order: join its cgroups (needs
/// root), cap its open files, move inherited descriptors into place, stage its sandbox's
/// directories in a private mount namespace (needs root), take on its sandbox uid (own
/// gid and uid, no supplementary groups: this drops every capability), then ask for
/// SIGKILL when the daemon dies — after the uid change, which would clear that request.
struct BeforeExec {
    cgroups: Vec<CString>,
    channel: Option<i32>,
    seccomp: Option<i32>,
    stage: Option<Stage>,
    identity: Option<u32>,
}

/// A scratch tmpfs in the child's own mount namespace, and the directories bound there.
struct Stage {
    tmpfs: CString,
    binds: Vec<StagedBind>,
}

struct StagedBind {
    /// A host directory (resolved as root, in the child's copy of the mount table).
    source: CString,
    target: CString,
}

fn cstring(text: String) -> CString {
    CString::new(text).expect("no NUL in paths Shoal builds")
}

/// Runs in the forked child: async-signal-safe system calls on prepared values only.
#[allow(unsafe_code)]
fn stage(stage: &Stage) -> std::io::Result<()> {
    let none = c"none";
    // SAFETY: plain system calls on NUL-terminated strings prepared before the fork.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        // Nothing done below may reach the host's mount table.
        check(libc::mount(
            none.as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            c"shoal-stage".as_ptr(),
            stage.tmpfs.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"mode=0755,size=64k".as_ptr().cast(),
        ))?;
        for bind in &stage.binds {
            check(libc::mkdir(bind.target.as_ptr(), 0o755))?;
            check(libc::mount(
                bind.source.as_ptr(),
                bind.target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ))?;
        }
    }
    Ok(())
}

impl BeforeExec {
    #[allow(unsafe_code)]
    fn install(self, command: &mut Command) {
        // SAFETY: the closure runs in the forked child before exec. It only makes
        // system calls (open, write, close, setrlimit, dup2, unshare, mount, mkdir,
        // setgroups, setgid, setuid, prctl, getppid, _exit) on values prepared before
        // the fork, allocates nothing, and reads errno through `last_os_error` only.
        unsafe {
            command.pre_exec(move || {
                for procs in &self.cgroups {
                    join_cgroup(procs)?;
                }
                let files = libc::rlimit {
                    rlim_cur: sandbox::MAX_OPEN_FILES,
                    rlim_max: sandbox::MAX_OPEN_FILES,
                };
                check(libc::setrlimit(libc::RLIMIT_NOFILE, &files))?;
                if let Some(fd) = self.channel {
                    check(libc::dup2(fd, CHANNEL_FD))?;
                }
                if let Some(fd) = self.seccomp {
                    check(libc::dup2(fd, sandbox::SECCOMP_FD))?;
                }
                if let Some(staging) = &self.stage {
                    stage(staging)?;
                }
                if let Some(uid) = self.identity {
                    check(libc::setgroups(0, std::ptr::null()))?;
                    check(libc::setgid(uid))?;
                    check(libc::setuid(uid))?;
                }
                check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
                // The parent may have died before prctl: then we are already orphaned.
                if libc::getppid() == 1 {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
}

/// A system call's -1 as the error it stands for.
fn check(result: i32) -> std::io::Result<()> {
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Write "0" (the writing process itself, in both cgroup versions) to a `cgroup.procs`.
/// Runs in the forked child: async-signal-safe calls only.
#[allow(unsafe_code)]
fn join_cgroup(procs: &CString) -> std::io::Result<()> {
    // SAFETY: open/write/close on a NUL-terminated path allocated before the fork.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        if written != 1 {
            return Err(error);
        }
    }
    Ok(())
}

/// A close-on-exec copy of `fd` numbered 10 or above.
#[allow(unsafe_code)]
fn high_copy(fd: &OwnedFd) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor we own returns a new descriptor (or
    // -1), which we take ownership of at once.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if copy < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `copy` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// Stderr lines feed the tail kept for start errors, and V8's heap-exhaustion message
/// marks the instance as out of memory.
type StderrWatch = (Arc<Mutex<VecDeque<String>>>, Arc<AtomicBool>);

async fn pump<R: AsyncRead + Unpin>(
    stream: R,
    which: LogStream,
    owner: Owner,
    logs: Arc<dyn LogSink>,
    watch: Option<StderrWatch>,
) {
    capture::read_lines(stream, |text| {
        if let Some((tail, heap_oom)) = &watch {
            if text.contains(V8_HEAP_OOM) {
                heap_oom.store(true, Ordering::Relaxed);
            }
            let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
            if tail.len() == STDERR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(text.to_owned());
        }
        owner.with(|function, instance| {
            if function.is_empty() {
                tracing::info!(instance, ?which, "warm-pool process: {text}");
            } else {
                logs.line(function, instance, which, text);
            }
        });
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct NoLogs;
    impl LogSink for NoLogs {
        fn line(&self, _: &str, _: &str, _: LogStream, _: &str) {}
    }

    /// A process asks to die with the thread that forked it, so that thread must live as
    /// long as the daemon: forked from tokio's blocking pool, instances were killed ten
    /// seconds after their start, when the idle thread ended.
    #[test]
    fn a_process_outlives_the_runtime_threads_that_go_idle() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .thread_keep_alive(Duration::from_millis(20))
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let scratch = std::env::temp_dir().join(format!("shoal-fork-{}", std::process::id()));
            std::fs::create_dir_all(&scratch).unwrap();
            let spawned = spawn(
                SpawnSpec {
                    program: Path::new("/usr/bin/sleep"),
                    args: &["30".to_owned()],
                    cwd: Path::new("/"),
                    env: vec![],
                    owner: Owner::new("f", "f-1-1"),
                    scratch: &scratch,
                    cgroup: None,
                    sandbox: None,
                    channel: None,
                },
                Arc::new(NoLogs),
            )
            .await
            .unwrap();
            // Many times the blocking pool's keep-alive: any idle thread of it has ended.
            // Nothing to await instead: what is tested is that nothing happens.
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(*spawned.exit.borrow(), None, "the process died early");
            spawned.kill.notify_one();
            assert_eq!(exit_reason(spawned.exit.clone()).await, "killed by SIGKILL");
        });
    }
}
