//! The `shoal` binary as an operator runs it, stopped the two ways a daemon is stopped:
//! SIGTERM drains (stop accepting, finish in-flight calls, stop instances, exit 0), and
//! SIGKILL leaves no instance process behind. Plain std networking on purpose: the test
//! sees only what any HTTP client would.
// Starting the binary under test is this test's job; the rule that only shoal-runtime
// spawns processes is about the daemon's own code.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the test waits for what an idle machine does in well under a second or two (a
/// process exiting, a call starting). Generous: CI shares 2 cores with other work, and
/// this only bounds a hang.
const PATIENCE: Duration = Duration::from_secs(30);

/// A temp directory removed on drop (short name: instances' sockets live below it).
struct TempDir(PathBuf);

impl TempDir {
    fn new(kind: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("shoal-{kind}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `shoal serve` process on loopback ephemeral ports.
struct Daemon {
    child: Child,
    data_dir: PathBuf,
    gateway: SocketAddr,
    control: SocketAddr,
    token: String,
}

impl Daemon {
    fn start(data_dir: &Path) -> Daemon {
        for published in ["control-addr", "gateway-addr"] {
            let _ = std::fs::remove_file(data_dir.join(published));
        }
        let log = std::fs::File::create(data_dir.join("daemon.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(["--control-listen", "127.0.0.1:0", "--shutdown-grace", "10"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting shoal serve");
        let read = |name: &str| std::fs::read_to_string(data_dir.join(name)).ok();
        let deadline = Instant::now() + Duration::from_secs(20);
        let (gateway, control) = loop {
            // Both files are written once the listeners are bound.
            if let (Some(g), Some(c)) = (read("gateway-addr"), read("control-addr")) {
                break (g.trim().parse().unwrap(), c.trim().parse().unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "shoal serve never published its addresses"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Daemon {
            child,
            data_dir: data_dir.to_owned(),
            gateway,
            control,
            token: read("admin-token").unwrap().trim().to_owned(),
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `shoal deploy DIR` against this daemon, as a user would.
    fn deploy(&self, files: &[(&str, &str)]) {
        let dir = TempDir::new("fn");
        for (name, contents) in files {
            std::fs::write(dir.0.join(name), contents).unwrap();
        }
        let output = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("deploy")
            .arg(&dir.0)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "shoal deploy: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn admin(&self, path: &str) -> Value {
        let auth = format!("Bearer {}", self.token);
        let (status, body) = http(self.control, "GET", path, &[("authorization", &auth)]).unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    fn instance_pids(&self) -> Vec<u64> {
        self.admin("/admin/status")["pools"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["instances"].as_array().cloned().unwrap_or_default())
            .filter_map(|i| i["pid"].as_u64())
            .collect()
    }

    fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "shoal serve still runs after {within:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(unsafe_code)]
fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let sent = unsafe { libc::kill(pid, signal) };
    assert_eq!(sent, 0, "kill({pid}, {signal})");
}

/// One HTTP/1.1 request on a fresh connection: (status, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: 0\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Whether `pid` runs (a zombie waiting for its reaper does not).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.get(stat.rfind(')')? + 2..)?.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

const SLEEPER: &str = r#"
exports.handler = async (event) => {
  const ms = Number((event.queryStringParameters || {}).ms || 0);
  await new Promise((r) => setTimeout(r, ms));
  return { statusCode: 200, body: process.env.AWS_LAMBDA_LOG_STREAM_NAME };
};
"#;

#[test]
fn sigterm_stops_accepting_lets_the_call_in_flight_finish_and_exits_zero() {
    let dir = TempDir::new("term");
    let mut daemon = Daemon::start(&dir.0);
    daemon.deploy(&[
        ("index.js", SLEEPER),
        (
            "shoal.toml",
            "[functions.sleeper]\nruntime = \"nodejs\"\nhandler = \"index.handler\"\nhttp = [{ method = \"GET\", path = \"/sleep\" }]\n",
        ),
    ]);
    let (status, body) = http(daemon.gateway, "GET", "/sleep?ms=1", &[]).unwrap();
    assert_eq!(status, 200, "{body}");
    // Its host pid: inside its sandbox the instance sees other numbers.
    let first = body;
    let instance = daemon.instance_pids()[0];

    let gateway = daemon.gateway;
    let started = Instant::now();
    let in_flight = std::thread::spawn(move || http(gateway, "GET", "/sleep?ms=3000", &[]));
    let deadline = Instant::now() + PATIENCE;
    while daemon.admin("/admin/status")["pools"][0]["instances"][0]["in_flight"] != 1 {
        assert!(Instant::now() < deadline, "the call never started");
        std::thread::sleep(Duration::from_millis(10));
    }

    signal(daemon.pid(), libc::SIGTERM);
    // New connections are refused while the call in flight still runs (its 3 s leave the
    // daemon ample time to close the listener, which takes milliseconds).
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(daemon.gateway).is_ok() && !in_flight.is_finished() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !in_flight.is_finished(),
        "the call ended before the listener closed"
    );

    let (status, body) = in_flight.join().unwrap().expect("the call in flight");
    assert_eq!(
        (status, body.as_str()),
        (200, first.as_str()),
        "the call in flight was cut short; daemon log:\n{}",
        daemon.log()
    );
    assert!(started.elapsed() >= Duration::from_millis(3000));
    let exit = daemon.wait(PATIENCE);
    assert_eq!(exit.code(), Some(0), "{exit:?}; log:\n{}", daemon.log());
    assert!(!alive(instance), "instance {instance} outlived the daemon");
    assert!(
        daemon.log().contains("draining"),
        "the daemon did not say it drains:\n{}",
        daemon.log()
    );
}

/// Starts a process of its own that does not die with the instance process (detached, and
/// PR_SET_PDEATHSIG is not inherited), and returns its pid (as the instance sees it).
const SPAWNER: &str = r#"
const { spawn } = require('node:child_process');
exports.handler = async () => {
  const child = spawn('sleep', ['60'], { detached: true, stdio: 'ignore' });
  child.unref();
  return { statusCode: 200, body: String(child.pid) };
};
"#;

#[test]
fn sigkill_leaves_no_instance_behind_and_a_restart_serves_again() {
    let dir = TempDir::new("kill");
    let mut daemon = Daemon::start(&dir.0);
    let manifest = r#"
[functions.a]
runtime = "nodejs"
handler = "index.handler"
http = [{ method = "GET", path = "/a" }]

[functions.b]
runtime = "nodejs"
handler = "spawner.handler"
http = [{ method = "GET", path = "/b" }]
"#;
    daemon.deploy(&[
        ("index.js", SLEEPER),
        ("spawner.js", SPAWNER),
        ("shoal.toml", manifest),
    ]);
    assert_eq!(http(daemon.gateway, "GET", "/a", &[]).unwrap().0, 200);
    let (status, body) = http(daemon.gateway, "GET", "/b", &[]).unwrap();
    assert_eq!(status, 200, "{body}");
    let grandchild: u64 = body.parse().unwrap();
    let status = daemon.admin("/admin/status");
    let cgroups = status["memory_limits"]
        .as_str()
        .unwrap()
        .starts_with("cgroup");
    // In its own pid namespace an instance's pids mean nothing here, and everything it
    // started dies with the namespace: take the host's view of its processes instead.
    let sandboxed = status["walls"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["name"] == "namespaces" && w["up"] == true);
    let instances = daemon.instance_pids();
    assert_eq!(instances.len(), 2, "{instances:?}");
    assert!(instances.iter().all(|&pid| alive(pid)));
    let members = descendants(&instances);
    assert!(members.len() > instances.len(), "{members:?}");

    signal(daemon.pid(), libc::SIGKILL);
    let exit = daemon.wait(PATIENCE);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(exit.signal(), Some(libc::SIGKILL), "{exit:?}");
    let deadline = Instant::now() + PATIENCE;
    while instances.iter().any(|&pid| alive(pid)) {
        assert!(
            Instant::now() < deadline,
            "instances {instances:?} outlived a killed daemon"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    if sandboxed {
        // The pid namespace ends with its first process: nothing an instance started
        // outlives the daemon, not even a detached grandchild.
        while members.iter().any(|&pid| alive(pid)) {
            assert!(
                Instant::now() < deadline,
                "processes {members:?} of sandboxed instances outlived a killed daemon"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let daemon = Daemon::start(&dir.0);
        let (status, body) = http(daemon.gateway, "GET", "/a", &[]).unwrap();
        assert_eq!(status, 200, "{body}");
        return;
    }
    // Unsandboxed, what an instance started itself outlives a killed daemon...
    assert!(
        alive(grandchild),
        "{grandchild} died with the daemon after all"
    );

    // ...until the next daemon on the same data directory starts: it clears the dead
    // daemon's cgroups, killing what is left in them, and serves again.
    let daemon = Daemon::start(&dir.0);
    if cgroups {
        let deadline = Instant::now() + PATIENCE;
        while alive(grandchild) {
            assert!(
                Instant::now() < deadline,
                "{grandchild} outlived the restart"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    } else {
        signal(grandchild as i32, libc::SIGKILL);
    }
    let (status, body) = http(daemon.gateway, "GET", "/a", &[]).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(!instances.contains(&daemon.instance_pids()[0]));
}

/// `roots` and every process below them, through /proc's `children` lists.
fn descendants(roots: &[u64]) -> Vec<u64> {
    let mut out = roots.to_vec();
    let mut next = 0;
    while next < out.len() {
        let parent = out[next];
        next += 1;
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) {
            for task in tasks.flatten() {
                let children =
                    std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
                out.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u64>().ok()),
                );
            }
        }
    }
    out
}
