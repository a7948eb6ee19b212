//! Spawning an instance process: environment, stdio capture, death with the daemon, its
//! memory cgroup, and an exit monitor that turns the process's end into a one-line reason
//! (naming an out-of-memory kill as such).

use std::collections::VecDeque;
use std::ffi::CString;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncRead;
use tokio::process::Command;
use tokio::sync::{watch, Notify};

use crate::capture;
use crate::cgroup::InstanceCgroup;
use crate::{LogSink, LogStream};

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

pub(crate) struct SpawnSpec<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    pub cwd: &'a Path,
    pub env: Vec<(String, String)>,
    pub function: &'a str,
    pub instance: &'a str,
    pub scratch: &'a Path,
    /// The instance's memory cgroup, joined before exec; `None` where there is none.
    pub cgroup: Option<InstanceCgroup>,
}

#[allow(clippy::disallowed_methods)] // this crate is the one place that spawns processes
pub(crate) fn spawn(spec: SpawnSpec<'_>, logs: Arc<dyn LogSink>) -> std::io::Result<Spawned> {
    let mut command = Command::new(spec.program);
    command
        .args(spec.args)
        .current_dir(spec.cwd)
        .env_clear()
        .envs(spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    die_with_parent(&mut command);
    if let Some(cgroup) = &spec.cgroup {
        join_cgroup(&mut command, cgroup.procs_path());
    }
    let mut child = command.spawn()?;
    let pid = child.id().unwrap_or(0);
    let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
    let heap_oom = Arc::new(AtomicBool::new(false));
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let stdout_done = tokio::spawn(pump(
        stdout,
        LogStream::Stdout,
        spec.function.to_owned(),
        spec.instance.to_owned(),
        logs.clone(),
        None,
    ));
    let stderr_done = tokio::spawn(pump(
        stderr,
        LogStream::Stderr,
        spec.function.to_owned(),
        spec.instance.to_owned(),
        logs.clone(),
        Some((stderr_tail.clone(), heap_oom.clone())),
    ));
    let (exit_tx, exit) = watch::channel(None);
    let kill = Arc::new(Notify::new());
    let scratch = spec.scratch.to_owned();
    let kill_wait = kill.clone();
    let cgroup = spec.cgroup;
    let (function, instance) = (spec.function.to_owned(), spec.instance.to_owned());
    tokio::spawn(async move {
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
            logs.exited(&function, &instance, &reason);
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

/// The child gets SIGKILL when the daemon dies, however it dies: no orphans.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl and
    // getppid, both async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then we are already orphaned.
            if libc::getppid() == 1 {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// The child moves itself into its memory cgroup before exec, so not one allocation of
/// the runtime happens outside the limit.
#[allow(unsafe_code)]
fn join_cgroup(command: &mut Command, procs: CString) {
    // SAFETY: the closure runs in the forked child before exec and only calls open,
    // write and close on a path allocated before the fork; all three are
    // async-signal-safe, and `last_os_error` only reads errno.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0" is the writing process itself, in both cgroup versions.
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let error = std::io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(error);
            }
            Ok(())
        });
    }
}

/// Stderr lines feed the tail kept for start errors, and V8's heap-exhaustion message
/// marks the instance as out of memory.
type StderrWatch = (Arc<Mutex<VecDeque<String>>>, Arc<AtomicBool>);

async fn pump<R: AsyncRead + Unpin>(
    stream: R,
    which: LogStream,
    function: String,
    instance: String,
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
        logs.line(&function, &instance, which, text);
    })
    .await;
}
