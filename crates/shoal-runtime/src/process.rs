//! Spawning an instance process: environment, stdio capture, death with the daemon, and
//! an exit monitor that turns the process's end into a one-line reason.

use std::collections::VecDeque;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::{watch, Notify};

use crate::{LogSink, LogStream};

/// Lines of stderr kept to explain a failed start.
const STDERR_TAIL_LINES: usize = 20;
/// Longest log line kept; the rest is cut (a runaway line must not eat memory).
const MAX_LOG_LINE: usize = 64 * 1024;

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
    let mut child = command.spawn()?;
    let pid = child.id().unwrap_or(0);
    let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
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
        logs,
        Some(stderr_tail.clone()),
    ));
    let (exit_tx, exit) = watch::channel(None);
    let kill = Arc::new(Notify::new());
    let scratch = spec.scratch.to_owned();
    let kill_wait = kill.clone();
    tokio::spawn(async move {
        let status = tokio::select! {
            status = child.wait() => status,
            _ = kill_wait.notified() => {
                let _ = child.start_kill();
                child.wait().await
            }
        };
        // Let the last lines reach the log before the exit is announced.
        let _ = stdout_done.await;
        let _ = stderr_done.await;
        let _ = std::fs::remove_dir_all(&scratch);
        exit_tx.send_replace(Some(describe(status)));
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

async fn pump<R: AsyncRead + Unpin>(
    stream: R,
    which: LogStream,
    function: String,
    instance: String,
    logs: Arc<dyn LogSink>,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        line.truncate(MAX_LOG_LINE);
        let text = String::from_utf8_lossy(&line);
        if let Some(tail) = &tail {
            let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
            if tail.len() == STDERR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(text.to_string());
        }
        logs.line(&function, &instance, which, &text);
    }
}
