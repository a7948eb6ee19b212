//! The hostile-function suite: a function that runs whatever shell command or script its
//! event carries, and attacks the platform with it. Every attack here once worked against
//! Shoal; each test runs it again and checks that it now does no harm, and that a victim
//! function deployed beside the attacker (from its own archive, so the attacker's code holds
//! nothing of it) keeps giving its own answers. Where the attack aims at the daemon's memory
//! the test also bounds the RSS of this process, which runs the daemon.
//!
//! The walls (a uid per instance, namespaces, seccomp, pids and cpu cgroups) are reported by
//! `GET /admin/status` (`walls`). A test whose wall is down skips with the reason printed, on
//! a machine that cannot raise it; on a machine that can (root, the controllers mounted) a
//! wall that is down is a failure. An attack that would hit the machine itself if the walls
//! were missing (killing the daemon, leaving the cgroup, filling the host's /tmp) does not
//! run against a server that reports no walls at all: the test fails instead.
//! docs/RELIABILITY.md ("Security") maps every attack to its test.
#![allow(clippy::disallowed_methods)] // runs `setpriv` as another user; the daemon does not

mod support;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use support::{
    function_error, own_rss_kib, peak_rss_during, process_alive, success, Api, Reply, TestServer,
    PATIENCE,
};

// ---------------------------------------------------------------------------------------
// The attacker, the victim, and how to call them

/// Runs `e.cmd` with /bin/sh (its stdout and stderr captured, or with `e.inherit` written
/// straight to the instance's own stdout and stderr), or `e.js` as the body of an async
/// function inside the instance process (for attacks that keep sockets open).
const ATTACKER_JS: &str = r#"
'use strict';
const { spawnSync } = require('child_process');
const net = require('net');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The test's baton: connected while the attack runs. `held.armed()` tells the test the
// attack is in place; `held.stop` turns true when the test lets go.
function holdBaton(port) {
  return new Promise((resolve, reject) => {
    const onStop = [];
    const socket = net.connect(port, '127.0.0.1', () => resolve(held));
    const held = {
      stop: false,
      armed: () => socket.write('armed\n'),
      onStop: (f) => onStop.push(f),
    };
    const stop = () => { if (!held.stop) { held.stop = true; onStop.forEach((f) => f()); } };
    socket.on('error', (err) => { stop(); reject(err); });
    socket.on('close', stop);
    socket.resume();
  });
}

const AsyncFunction = Object.getPrototypeOf(async function () {}).constructor;

exports.handler = async (e) => {
  if (e.js) return await new AsyncFunction('e', 'require', 'lib', e.js)(e, require, { sleep, holdBaton });
  const r = spawnSync('/bin/sh', ['-c', e.cmd], {
    encoding: 'utf8',
    timeout: e.timeout_ms || 20000,
    maxBuffer: 64 << 20,
    stdio: e.inherit ? ['ignore', 'inherit', 'inherit'] : 'pipe',
    env: { ...process.env, NODE: process.execPath, ...(e.env || {}) },
  });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr, error: r.error && String(r.error) };
};
"#;

/// Answers with framing and size abuse: `/r/<case>` through the gateway, `{"respond": case}`
/// through the Invoke API.
const RESPONDER_JS: &str = r#"
'use strict';
const SMUGGLED = 'HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 8\r\n\r\nsmuggled';
const cases = {
  plain: () => ({ statusCode: 200, headers: { 'content-type': 'text/plain' }, body: SMUGGLED }),
  length: () => ({ statusCode: 200, headers: { 'content-type': 'text/plain', 'content-length': '0' }, body: SMUGGLED }),
  chunked: () => ({ statusCode: 200, headers: { 'content-type': 'text/plain', 'transfer-encoding': 'chunked' }, body: '0\r\n\r\n' + SMUGGLED }),
  close: () => ({ statusCode: 200, headers: { 'content-type': 'text/plain', connection: 'close' }, body: SMUGGLED }),
  upgrade: () => ({ statusCode: 101, headers: { connection: 'upgrade', upgrade: 'websocket' }, body: SMUGGLED }),
  informational: () => ({ statusCode: 100, body: SMUGGLED }),
  headers: () => {
    const headers = {};
    for (let i = 0; i < 100000; i++) headers['x-h-' + i] = 'v';
    return { statusCode: 200, headers, body: 'many headers' };
  },
  big: () => 'x'.repeat(60 << 20),
  five: () => 'x'.repeat(5 << 20),
};
exports.handler = async (e) => {
  const name = e.respond || (e.rawPath || '').split('/').pop();
  return cases[name]();
};
"#;

const RESPONDER_MANIFEST: &str = r#"
[functions.responder]
runtime = "nodejs"
handler = "respond.handler"
http = [{ method = "GET", path = "/r/{case}" }]
"#;

/// What every test checks still works: through the gateway a fixed text, through the Invoke
/// API its event back (and, when asked, one of its own environment variables).
const VICTIM_JS: &str = r#"
exports.handler = async (e) => {
  if (e && e.requestContext && e.requestContext.http) {
    return { statusCode: 200, headers: { 'content-type': 'text/plain' }, body: 'victim-ok' };
  }
  return { victim: true, echo: e, env: e && e.env ? process.env[e.env] || null : null, pid: process.pid };
};
"#;

/// The body the victim's gateway route answers.
const VICTIM_OK: &str = "victim-ok";

/// Every attack runs on a server with the warm pool on, so attacker and victim instances
/// are pooled processes that took their function (the walls must hold for those too).
async fn hostile_server() -> TestServer {
    TestServer::start_with(|c| c.warm_pool = 1).await
}

async fn deploy_attacker(server: &TestServer, settings: &str) {
    let manifest = format!(
        "[functions.attacker]\nruntime = \"nodejs\"\nhandler = \"attacker.handler\"\ntimeout = \"90s\"\n{settings}"
    );
    server
        .deploy_ok(&[("attacker.js", ATTACKER_JS), ("shoal.toml", &manifest)])
        .await;
    // Its first instance is then a pooled process that takes the function.
    server.wait_for_warm(|ready| !ready.is_empty()).await;
}

/// Deploy the victim (its own archive); `settings` are more lines of its table, `env` its
/// environment table's lines.
async fn deploy_victim(server: &TestServer, settings: &str, env: &str) {
    let manifest = format!(
        "[functions.victim]\nruntime = \"nodejs\"\nhandler = \"victim.handler\"\nhttp = [{{ method = \"GET\", path = \"/victim\" }}]\n{settings}\n[functions.victim.env]\n{env}\n"
    );
    server
        .deploy_ok(&[("victim.js", VICTIM_JS), ("shoal.toml", &manifest)])
        .await;
    server.wait_for_warm(|ready| !ready.is_empty()).await;
}

/// The victim answers call `n` with its own code; its pid.
async fn victim_answers(api: &Api, n: u64) -> u64 {
    let reply = api.invoke("victim", &json!({ "n": n })).await;
    let answer = success(&reply);
    assert_eq!(
        answer["victim"], true,
        "not the victim's own answer: {answer}"
    );
    assert_eq!(answer["echo"], json!({ "n": n }), "{answer}");
    answer["pid"].as_u64().expect("pid")
}

/// The victim's gateway route answers with its own text.
async fn victim_answers_through_the_gateway(api: &Api) {
    let reply = api.get("/victim").await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (StatusCode::OK, VICTIM_OK)
    );
}

/// Run a shell command in the attacker with these extra environment variables; what the
/// shell did (`status`, `signal`, `stdout`, `stderr`, `error`).
async fn sh(api: &Api, cmd: &str, env: Value) -> Value {
    let reply = api
        .invoke(
            "attacker",
            &json!({ "cmd": cmd, "env": env, "timeout_ms": 60000 }),
        )
        .await;
    success(&reply)
}

fn stdout(outcome: &Value) -> &str {
    outcome["stdout"].as_str().unwrap_or_default()
}

/// Where the daemon runs: this test process.
fn daemon_pid() -> u32 {
    std::process::id()
}

/// A string no other run of the suite uses.
fn marker(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{what}-{}-{nanos}", daemon_pid())
}

// ---------------------------------------------------------------------------------------
// Walls

/// Whether the walls `needed` are up, as the server reports them. See the module comment for
/// what happens when they are not.
/// The `detail` the daemon reports for wall `name` (empty if it reports none).
async fn wall_detail(server: &TestServer, name: &str) -> String {
    let status = server.admin_get("/admin/status").await;
    status["walls"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["name"] == name)
        .and_then(|w| w["detail"].as_str())
        .unwrap_or_default()
        .to_owned()
}

async fn walls_up(server: &TestServer, test: &str, needed: &[&str], destructive: bool) -> bool {
    let status = server.admin_get("/admin/status").await;
    // `walls` is a list of `{name, up, detail}`; read it as name -> up.
    let walls: Option<serde_json::Map<String, Value>> =
        status.get("walls").and_then(Value::as_array).map(|list| {
            list.iter()
                .filter_map(|w| Some((w["name"].as_str()?.to_owned(), w["up"].clone())))
                .collect()
        });
    let Some(walls) = walls else {
        assert!(
            !destructive,
            "{test}: GET /admin/status reports no `walls`, so the sandbox is not there, and \
             this attack would hit the machine itself; not running it"
        );
        eprintln!("{test}: GET /admin/status reports no `walls`; attacking anyway");
        return true;
    };
    for wall in needed {
        let up = walls.get(*wall).and_then(Value::as_bool);
        if up == Some(true) {
            continue;
        }
        match machine_lacks(wall) {
            Some(why) => {
                eprintln!("skipping {test}: the `{wall}` wall is down ({up:?}): {why}");
                return false;
            }
            None => panic!(
                "{test}: the `{wall}` wall is {up:?}, yet this machine has what it takes: {walls:?}"
            ),
        }
    }
    true
}

/// Why this machine cannot raise `wall`, if it cannot.
fn machine_lacks(wall: &str) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Some(format!("the daemon runs as uid {euid}, not root"));
    }
    let bwrap = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|dir| dir.join("bwrap").is_file());
    let lacks = match wall {
        "seccomp" => !status.contains("Seccomp:") || !bwrap,
        "namespaces" => {
            !bwrap
                || ["mnt", "pid", "ipc", "uts"]
                    .iter()
                    .any(|ns| !Path::new(&format!("/proc/self/ns/{ns}")).exists())
        }
        "pids" | "cpu" => !has_cgroup_controller(wall),
        _ => false,
    };
    lacks.then(|| format!("this kernel has no {wall} support"))
}

fn has_cgroup_controller(name: &str) -> bool {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    v2.split_whitespace().any(|c| c == name)
        || std::fs::read_dir("/sys/fs/cgroup").is_ok_and(|dirs| {
            dirs.flatten().any(|d| {
                d.file_name()
                    .to_string_lossy()
                    .split(',')
                    .any(|c| c == name)
            })
        })
}

// ---------------------------------------------------------------------------------------
// Watching the daemon

/// Panics so far in this process, which runs the daemon: counted by a hook installed on the
/// first call (the default hook still prints them).
fn panics_so_far() -> usize {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            COUNT.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
    COUNT.load(Ordering::SeqCst)
}

// ---------------------------------------------------------------------------------------
// Long attacks: the attacker holds a connection to the test (the baton) while it attacks

/// A long attack in progress: the attacker's call, and the baton it holds.
struct LongAttack {
    call: tokio::task::JoinHandle<Reply>,
    baton: tokio::net::TcpStream,
}

/// Start `event` (a `js` attack that calls `lib.holdBaton(e.baton)` and then `held.armed()`)
/// and wait until the attacker says it is in place.
async fn start_long_attack(api: &Api, mut event: Value) -> LongAttack {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    event["baton"] = json!(listener.local_addr().unwrap().port());
    let mut call = {
        let api = api.clone();
        tokio::spawn(async move { api.invoke("attacker", &event).await })
    };
    let accepted = tokio::time::timeout(PATIENCE, async {
        tokio::select! {
            accepted = listener.accept() => accepted.unwrap().0,
            reply = &mut call => panic!("the attack ended before it started: {}", reply.unwrap().text()),
        }
    })
    .await
    .expect("the attacker never took the baton");
    // Wait for "armed\n".
    let mut said = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while !said.contains(&b'\n') {
        assert!(
            Instant::now() < deadline && !call.is_finished(),
            "the attacker never armed"
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), accepted.readable()).await;
        let mut buf = [0u8; 64];
        match accepted.try_read(&mut buf) {
            Ok(0) => panic!("the attacker let go of the baton before arming"),
            Ok(n) => said.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("reading the baton: {e}"),
        }
    }
    LongAttack {
        call,
        baton: accepted,
    }
}

impl LongAttack {
    /// Let go of the baton; the attacker's report.
    async fn stop(self) -> Value {
        drop(self.baton);
        let reply = tokio::time::timeout(PATIENCE, self.call)
            .await
            .expect("the attacker did not stop when the baton was dropped")
            .unwrap();
        success(&reply)
    }
}

// ---------------------------------------------------------------------------------------
// Raw HTTP/1.1, to see the framing a client sees

/// One response as it was framed on the wire.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send `request` as is and read until the server closes the connection (at most 256 MiB);
/// the bytes, and the error that ended the reading if it was not a clean close.
async fn raw_exchange(addr: SocketAddr, request: String) -> (Vec<u8>, Option<String>) {
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connecting");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.write_all(request.as_bytes()).expect("sending");
        let mut out = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return (out, None),
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.len() > 256 << 20 {
                        return (out, Some("more than 256 MiB".into()));
                    }
                }
                Err(e) => return (out, Some(e.to_string())),
            }
        }
    })
    .await
    .unwrap()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn lossy(bytes: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned()
}

/// Split what a server sent on one connection into responses, by HTTP/1.1's framing rules.
fn parse_responses(mut rest: &[u8]) -> Result<Vec<RawResponse>, String> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        let end = find(rest, b"\r\n\r\n")
            .ok_or_else(|| format!("an unfinished head: {:?}", lossy(rest, 300)))?;
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        rest = &rest[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not a status line: {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (name, value) = l.split_once(':').unwrap_or((l, ""));
                (name.trim().to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let body = if (100..200).contains(&status) || status == 204 || status == 304 {
            Vec::new()
        } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            take_chunked(&mut rest)?
        } else if let Some(length) = get("content-length") {
            let length: usize = length
                .parse()
                .map_err(|_| format!("content-length {length:?}"))?;
            if rest.len() < length {
                return Err(format!(
                    "body of {} bytes, content-length {length}",
                    rest.len()
                ));
            }
            let body = rest[..length].to_vec();
            rest = &rest[length..];
            body
        } else {
            let body = rest.to_vec();
            rest = &[];
            body
        };
        out.push(RawResponse {
            status,
            headers,
            body,
        });
    }
    Ok(out)
}

fn take_chunked(rest: &mut &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line = find(rest, b"\r\n").ok_or("an unfinished chunk size")?;
        let size_text = String::from_utf8_lossy(&rest[..line]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("chunk size {size_text:?}"))?;
        *rest = &rest[line + 2..];
        if size == 0 {
            // Trailers, then the empty line.
            let end = find(rest, b"\r\n").ok_or("no end of chunked body")?;
            if end == 0 {
                *rest = &rest[2..];
            } else {
                let end = find(rest, b"\r\n\r\n").ok_or("unfinished trailers")?;
                *rest = &rest[end + 4..];
            }
            return Ok(body);
        }
        if rest.len() < size + 2 {
            return Err("an unfinished chunk".into());
        }
        body.extend_from_slice(&rest[..size]);
        *rest = &rest[size + 2..];
    }
}

// ---------------------------------------------------------------------------------------
// Reading the machine from outside the sandbox

/// Pids of `pid` and all its descendants.
fn process_tree(pid: u64) -> Vec<u64> {
    let mut all = Vec::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        all.push(p);
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            stack.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u64>().ok()),
            );
        }
    }
    all
}

/// The value of `name` in the environment of `pid` or one of its descendants.
fn env_in_tree(pid: u64, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    process_tree(pid).into_iter().find_map(|p| {
        let env = std::fs::read(format!("/proc/{p}/environ")).ok()?;
        env.split(|b| *b == 0).find_map(|var| {
            var.strip_prefix(prefix.as_bytes())
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
    })
}

/// Host pids of processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| find(&c, marker.as_bytes()).is_some())
        })
        .collect()
}

/// The cpu cgroup of `pid` (`self` for this process): its path in the hierarchy, and the
/// directory holding its files.
fn cpu_cgroup(pid: &str) -> Option<(String, PathBuf)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "cpu") {
            for mount in ["cpu", "cpu,cpuacct", "cpuacct,cpu"] {
                let dir = Path::new("/sys/fs/cgroup").join(mount);
                if dir.is_dir() {
                    return Some((path.to_owned(), dir.join(path.trim_start_matches('/'))));
                }
            }
        }
    }
    // cgroup v2: one hierarchy.
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some((
        path.to_owned(),
        Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')),
    ))
}

/// The CPUs `pid` (`self` for this process) may run on, from its `Cpus_allowed_list`.
fn cpus_allowed(pid: &str) -> Option<Vec<usize>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().ok()?..=b.parse::<usize>().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// `(nr_periods, nr_throttled)` of the cpu cgroup at `dir`.
fn throttle_counts(dir: &Path) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    let field = |name: &str| {
        stat.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some((field("nr_periods ")?, field("nr_throttled ")?))
}

/// The CPU quota on a cgroup directory, if one is set (v1 `cpu.cfs_quota_us`, v2 `cpu.max`).
fn cpu_quota(dir: &Path) -> Option<String> {
    if let Ok(quota) = std::fs::read_to_string(dir.join("cpu.cfs_quota_us")) {
        return (quota.trim() != "-1").then(|| format!("cpu.cfs_quota_us {}", quota.trim()));
    }
    let max = std::fs::read_to_string(dir.join("cpu.max")).ok()?;
    (!max.starts_with("max")).then(|| format!("cpu.max {}", max.trim()))
}

// =======================================================================================
// 1. The admin token

const READ_TOKEN_JS: &str = r#"
const fs = require('fs');
const http = require('http');
const up = '/..'.repeat(16);
const root = process.env.LAMBDA_TASK_ROOT;
const paths = [
  `${root}/../../admin-token`,
  '/proc/self/cwd/../../admin-token',
  `${e.data_dir}/admin-token`,
  `/proc/${e.daemon_pid}/cwd${up}${e.data_dir}/admin-token`,
  `/proc/${e.daemon_pid}/root${e.data_dir}/admin-token`,
  `/proc/1/root${e.data_dir}/admin-token`,
  `/proc/1/cwd${up}${e.data_dir}/admin-token`,
];
const reads = [];
const tokens = new Set();
for (const path of paths) {
  try {
    const text = fs.readFileSync(path, 'utf8').trim();
    reads.push({ path, read: text });
    if (text) tokens.add(text);
  } catch (err) {
    reads.push({ path, error: err.code || String(err) });
  }
}
const call = (method, path, token) => new Promise((resolve) => {
  const req = http.request({ host: '127.0.0.1', port: e.control_port, method, path,
    headers: { authorization: `Bearer ${token}` } }, (res) => {
    res.resume();
    res.on('end', () => resolve(res.statusCode));
  });
  req.on('error', (err) => resolve(err.code || String(err)));
  req.end();
});
const uses = [];
for (const token of tokens) uses.push({ deleteVictim: await call('DELETE', '/admin/functions/victim', token) });
return { reads, uses };
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_cannot_read_the_admin_token_or_use_it() {
    let server = hostile_server().await;
    deploy_victim(&server, "", "").await;
    deploy_attacker(&server, "").await;
    victim_answers(&server, 0).await;
    if !walls_up(&server, "admin token", &["uid", "namespaces"], false).await {
        return server.shutdown().await;
    }
    let before = server.admin_get("/admin/functions").await;

    let event = json!({
        "js": READ_TOKEN_JS,
        "data_dir": server.data_dir(),
        "daemon_pid": daemon_pid(),
        "control_port": server.control.port(),
    });
    let reply = server.invoke("attacker", &event).await;
    let report = success(&reply);
    assert!(
        !reply.text().contains(&server.token),
        "the attacker read the admin token: {report:#}"
    );
    for read in report["reads"].as_array().unwrap() {
        assert!(read["error"].is_string(), "read {read}");
    }
    assert_eq!(report["uses"], json!([]), "{report:#}");

    // Nothing deployed or deleted (names and versions as before; instance counts move as
    // the attacker's instance starts); the victim answers.
    let deployed = |list: &Value| -> Vec<(Value, Value)> {
        list["functions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["name"].clone(), f["version"].clone()))
            .collect()
    };
    assert_eq!(
        deployed(&server.admin_get("/admin/functions").await),
        deployed(&before)
    );
    victim_answers(&server, 1).await;
    server.shutdown().await;
}

// =======================================================================================
// 2. Another instance's native channel

/// Looks for this server's Unix sockets (under its data directory, or named there in
/// /proc/net/unix) while the victim's instances start, connects to every one, says HELLO
/// and answers every INVOKE it gets with `{"hijacked": true}`.
const NATIVE_CHANNEL_JS: &str = r#"
const fs = require('fs');
const net = require('net');
const report = { seen: [], connected: 0, hijacked: 0, errors: {}, sweeps: 0 };
const note = (what) => { report.errors[what] = (report.errors[what] || 0) + 1; };
const seen = new Set();
const held_sockets = new Map();
function candidates() {
  const found = new Set();
  const walk = (dir, depth) => {
    let entries;
    try { entries = fs.readdirSync(dir, { withFileTypes: true }); } catch (err) { note(`readdir ${err.code}`); return; }
    for (const entry of entries) {
      const path = `${dir}/${entry.name}`;
      if (entry.isSocket()) found.add(path);
      else if (entry.isDirectory() && depth < 3) walk(path, depth + 1);
    }
  };
  walk(e.data_dir, 0);
  try {
    for (const line of fs.readFileSync('/proc/net/unix', 'utf8').split('\n').slice(1)) {
      const path = line.trim().split(/\s+/)[7];
      // Only this server's: other servers on the machine are not ours to attack.
      if (path && path.startsWith(e.data_dir + '/')) found.add(path);
    }
  } catch (err) { note(`/proc/net/unix ${err.code}`); }
  return found;
}
function frame(kind, id, payload) {
  const body = Buffer.from(payload);
  const head = Buffer.alloc(9);
  head.writeUInt32BE(5 + body.length, 0);
  head.writeUInt8(kind, 4);
  head.writeUInt32BE(id, 5);
  return Buffer.concat([head, body]);
}
function hijack(path) {
  const socket = net.connect(path);
  let buffered = Buffer.alloc(0);
  socket.on('connect', () => {
    report.connected++;
    held_sockets.set(path, socket);
    socket.write(frame(1, 0, JSON.stringify({ protocol: 1, runtime: 'node', pid: process.pid })));
  });
  socket.on('data', (chunk) => {
    buffered = Buffer.concat([buffered, chunk]);
    while (buffered.length >= 9 && buffered.length >= 4 + buffered.readUInt32BE(0)) {
      const len = buffered.readUInt32BE(0);
      const kind = buffered.readUInt8(4);
      const id = buffered.readUInt32BE(5);
      buffered = buffered.subarray(4 + len);
      if (kind === 3) {
        report.hijacked++;
        socket.write(frame(4, id, JSON.stringify({ hijacked: true })));
      }
    }
  });
  socket.on('error', (err) => note(`connect ${err.code}`));
  socket.on('close', () => held_sockets.delete(path));
}
const held = await lib.holdBaton(e.baton);
let first = true;
while (!held.stop) {
  for (const path of candidates()) {
    if (!seen.has(path)) { seen.add(path); report.seen.push(path); }
    if (!held_sockets.has(path)) hijack(path);
  }
  report.sweeps++;
  if (first) { held.armed(); first = false; }
  await lib.sleep(2);
}
for (const socket of held_sockets.values()) socket.destroy();
return report;
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_cannot_reach_another_instances_native_channel() {
    const CALLS: u64 = 6;
    let server = hostile_server().await;
    // One call per instance: every call of a burst starts an instance, so channels are
    // being set up while the attacker looks for them.
    let victim_settings = "concurrency = 1\n";
    deploy_victim(&server, victim_settings, "").await;
    deploy_attacker(&server, "").await;
    if !walls_up(&server, "native channel", &["uid", "namespaces"], false).await {
        return server.shutdown().await;
    }

    let attack = start_long_attack(
        &server,
        json!({ "js": NATIVE_CHANNEL_JS, "data_dir": server.data_dir() }),
    )
    .await;
    for round in 0..2 {
        if round == 1 {
            // A new version: a second round of instance starts.
            deploy_victim(&server, victim_settings, "").await;
        }
        let calls: Vec<_> = (0..CALLS)
            .map(|i| {
                let api = server.api.clone();
                tokio::spawn(async move { victim_answers(&api, round * 100 + i).await })
            })
            .collect();
        for call in calls {
            call.await.unwrap();
        }
    }
    let report = attack.stop().await;
    assert!(
        report["sweeps"].as_u64().unwrap() > 0,
        "the attacker never looked: {report:#}"
    );
    assert_eq!(
        report["seen"],
        json!([]),
        "instance channels are visible to a function: {report:#}"
    );
    assert_eq!(report["connected"], 0, "{report:#}");
    assert_eq!(report["hijacked"], 0, "{report:#}");
    victim_answers(&server, 999).await;
    server.shutdown().await;
}

// =======================================================================================
// 3. Another `provided` instance's Runtime API

/// Polls `/invocation/next` of the victim's Runtime API (handed to it, as if found by a
/// port scan; also looked up in the victim's environment and among the daemon's listening
/// sockets) four times at once per address, and answers what it gets with
/// `{"stolen": true}`.
const RUNTIME_API_JS: &str = r#"
const fs = require('fs');
const http = require('http');
const report = { targets: [], next: {}, stolen: 0, errors: {} };
const note = (what) => { report.errors[what] = (report.errors[what] || 0) + 1; };
const targets = new Set([e.runtime_api]);
try {
  for (const v of fs.readFileSync(`/proc/${e.victim_pid}/environ`, 'utf8').split('\0')) {
    if (v.startsWith('AWS_LAMBDA_RUNTIME_API=')) targets.add(v.slice('AWS_LAMBDA_RUNTIME_API='.length));
  }
} catch (err) { note(`environ ${err.code}`); }
try {
  const inodes = new Set();
  for (const fd of fs.readdirSync(`/proc/${e.daemon_pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${e.daemon_pid}/fd/${fd}`));
      if (m) inodes.add(m[1]);
    } catch (_) {}
  }
  for (const line of fs.readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length > 9 && f[3] === '0A' && f[1].startsWith('0100007F:') && inodes.has(f[9])) {
      targets.add(`127.0.0.1:${parseInt(f[1].split(':')[1], 16)}`);
    }
  }
} catch (err) { note(`daemon fds ${err.code}`); }
report.targets = [...targets];

const held = await lib.holdBaton(e.baton);
const open = new Set();
held.onStop(() => { for (const req of open) req.destroy(); });
function request(target, method, path, body, sent) {
  const colon = target.lastIndexOf(':');
  return new Promise((resolve) => {
    const headers = body ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } : {};
    const req = http.request({ host: target.slice(0, colon), port: Number(target.slice(colon + 1)), method, path, headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => { open.delete(req); resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }); });
      res.on('error', (err) => { open.delete(req); resolve({ error: err.code || String(err) }); });
    });
    open.add(req);
    req.on('finish', () => sent && sent());
    req.on('error', (err) => { open.delete(req); if (sent) sent(); resolve({ error: err.code || err.message }); });
    req.end(body);
  });
}
let pending = targets.size * 4;
let armed = false;
const sentOnce = () => { if (--pending === 0 && !armed) { armed = true; held.armed(); } };
async function poller(target) {
  let once = false;
  let sent = () => { if (!once) { once = true; sentOnce(); } };
  while (!held.stop) {
    const r = await request(target, 'GET', '/2018-06-01/runtime/invocation/next', undefined, sent);
    sent = undefined;
    if (held.stop) break;
    const key = `${target} ${r.error || r.status}`;
    report.next[key] = (report.next[key] || 0) + 1;
    if (r.status === 200) {
      report.stolen++;
      const id = r.headers['lambda-runtime-aws-request-id'];
      await request(target, 'POST', `/2018-06-01/runtime/invocation/${encodeURIComponent(id)}/response`, JSON.stringify({ stolen: true }));
    } else {
      await lib.sleep(20);
    }
  }
}
const pollers = [];
for (const target of targets) for (let i = 0; i < 4; i++) pollers.push(poller(target));
await Promise.all(pollers);
return report;
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_cannot_take_another_instances_runtime_api_events() {
    const CALLS: u64 = 10;
    let server = hostile_server().await;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/provided-echo");
    let (status, body) = server.deploy_dir(&fixture).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    deploy_attacker(&server, "").await;
    if !walls_up(&server, "runtime API", &["uid", "namespaces"], false).await {
        return server.shutdown().await;
    }
    // The victim: a `provided` echo, warm, and the address its bootstrap polls.
    let first = success(&server.invoke("echo", &json!({ "n": "warm" })).await);
    let victim_pid = first["pid"].as_u64().unwrap();
    let status_pid = support::pids(&server.instances("echo").await)[0];
    let runtime_api = env_in_tree(status_pid, "AWS_LAMBDA_RUNTIME_API")
        .expect("the victim's AWS_LAMBDA_RUNTIME_API, read as root from outside");

    let attack = start_long_attack(
        &server,
        json!({
            "js": RUNTIME_API_JS,
            "runtime_api": runtime_api,
            "victim_pid": status_pid,
            "daemon_pid": daemon_pid(),
        }),
    )
    .await;
    for n in 0..CALLS {
        let echo = success(&server.invoke("echo", &json!({ "n": n })).await);
        assert_eq!(
            echo["echo"],
            json!({ "n": n }),
            "call {n} was not answered by the victim: {echo}"
        );
        assert_eq!(echo["pid"], victim_pid, "{echo}");
    }
    let report = attack.stop().await;
    assert_eq!(report["stolen"], 0, "{report:#}");
    let victim_api_answers: Vec<_> = report["next"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with(&format!("{runtime_api} 2")))
        .collect();
    assert!(
        victim_api_answers.is_empty(),
        "the victim's Runtime API answered the attacker: {report:#}"
    );
    let total: u64 = server
        .instances("echo")
        .await
        .iter()
        .map(|i| i["invocations"].as_u64().unwrap())
        .sum();
    assert_eq!(total, CALLS + 1, "every call ran in the victim");
    server.shutdown().await;
}

// =======================================================================================
// 4. Another function's secrets

const SECRETS_SH: &str = r#"
D="$DATA_DIR"; P="$DAEMON_PID"; V="$VICTIM_PID"
for pid in $V $(cat /proc/$V/task/*/children 2>/dev/null) $P; do
  tr '\0' '\n' < /proc/$pid/environ | grep -a DB_PASSWORD
done
for f in "$D/shoal.db" "$D/shoal.db-wal" "$LAMBDA_TASK_ROOT/../../shoal.db" "/proc/$P/root$D/shoal.db" "/proc/1/root$D/shoal.db"; do
  grep -a -o 'DB_PASSWORD.\{0,100\}' "$f"
done
grep -r -a -o 'DB_PASSWORD.\{0,100\}' "$D/code" "$D/tmp" "$D/logs" "$LAMBDA_TASK_ROOT/.." "/proc/$P/root$D/code"
for f in /proc/$P/fd/*; do [ -f "$f" ] && grep -a -o 'DB_PASSWORD.\{0,100\}' "$f"; done
true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_cannot_read_another_functions_secrets() {
    let secret = marker("s3cret");
    let server = hostile_server().await;
    deploy_victim(&server, "", &format!("DB_PASSWORD = \"{secret}\"")).await;
    deploy_attacker(&server, "").await;
    if !walls_up(&server, "secrets", &["uid", "namespaces"], false).await {
        return server.shutdown().await;
    }
    victim_answers(&server, 0).await;
    let status_pid = support::pids(&server.instances("victim").await)[0];

    let outcome = sh(
        &server,
        SECRETS_SH,
        json!({
            "DATA_DIR": server.data_dir(),
            "DAEMON_PID": daemon_pid().to_string(),
            // The host's pid: inside its own pid namespace the victim's `process.pid` (2,
            // after bubblewrap's reaper) names the attacker's own runtime instead.
            "VICTIM_PID": status_pid.to_string(),
        }),
    )
    .await;
    assert!(
        !outcome.to_string().contains(&secret),
        "the attacker found the victim's DB_PASSWORD: {}",
        stdout(&outcome)
    );

    // The victim still has its secret.
    let answer = success(
        &server
            .invoke("victim", &json!({ "env": "DB_PASSWORD" }))
            .await,
    );
    assert_eq!(answer["env"], secret.as_str());
    server.shutdown().await;
}

// =======================================================================================
// 5. Another function's code and instance

const TAMPER_SH: &str = r#"
for d in "$DATA_DIR"/code/* "$LAMBDA_TASK_ROOT"/../* "/proc/$DAEMON_PID/root$DATA_DIR"/code/*; do
  if [ -f "$d/victim.js" ]; then
    chmod u+w "$d" "$d/victim.js" 2>/dev/null
    if echo 'exports.handler = async () => ({ pwned: true });' > "$d/victim.js"; then echo "overwrote $d/victim.js"; fi
  fi
done
for pid in $VICTIM_PID; do
  if kill -9 "$pid"; then echo "killed $pid"; fi
done
true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_cannot_overwrite_another_functions_code_or_kill_its_instance() {
    let mut server = hostile_server().await;
    deploy_victim(&server, "", "").await;
    deploy_attacker(&server, "").await;
    if !walls_up(&server, "code", &["uid", "namespaces"], false).await {
        return server.shutdown().await;
    }
    victim_answers(&server, 0).await;
    let status_pid = support::pids(&server.instances("victim").await)[0];
    let victim_file = std::fs::read_dir(server.data_dir().join("code"))
        .unwrap()
        .flatten()
        .map(|d| d.path().join("victim.js"))
        .find(|f| f.exists())
        .expect("the victim's code directory");

    let outcome = sh(
        &server,
        TAMPER_SH,
        json!({
            "DATA_DIR": server.data_dir(),
            "DAEMON_PID": daemon_pid().to_string(),
            // The host's pid: inside its own pid namespace the victim's `process.pid` (2,
            // after bubblewrap's reaper) names the attacker's own runtime instead.
            "VICTIM_PID": status_pid.to_string(),
        }),
    )
    .await;
    let out = stdout(&outcome);
    assert!(!out.contains("overwrote"), "{outcome:#}");
    assert!(!out.contains("killed"), "{outcome:#}");
    assert_eq!(std::fs::read_to_string(&victim_file).unwrap(), VICTIM_JS);
    assert!(
        process_alive(status_pid),
        "the victim's instance was killed"
    );
    victim_answers(&server, 1).await;
    assert_eq!(
        support::pids(&server.instances("victim").await),
        [status_pid],
        "the victim's instance was replaced"
    );

    // A new instance after a restart runs the victim's own code too.
    server.restart().await;
    victim_answers(&server, 2).await;
    server.shutdown().await;
}

// =======================================================================================
// 6. The daemon itself

const KILL_SH: &str = r#"
kill -9 "$DAEMON_PID"; echo "daemon:$?"
gp=$(awk '/^PPid:/ { print $2 }' /proc/$PPID/status 2>/dev/null)
echo "grandparent:$gp"
if [ -n "$gp" ] && [ "$gp" -gt 1 ]; then kill -9 "$gp"; echo "grandparent-kill:$?"; fi
true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_cannot_kill_the_daemon() {
    let server = hostile_server().await;
    deploy_victim(&server, "", "").await;
    deploy_attacker(&server, "").await;
    // Against a server without the walls this would kill the test process.
    if !walls_up(&server, "kill", &["uid", "namespaces"], true).await {
        return server.shutdown().await;
    }
    let outcome = sh(
        &server,
        KILL_SH,
        json!({ "DAEMON_PID": daemon_pid().to_string() }),
    )
    .await;
    let out = stdout(&outcome);
    assert!(
        out.contains("daemon:") && !out.contains("daemon:0"),
        "{outcome:#}"
    );
    assert!(!out.contains("grandparent-kill:0"), "{outcome:#}");
    let err = outcome["stderr"].as_str().unwrap_or_default();
    assert!(
        err.contains("No such process") || err.contains("not permitted"),
        "{outcome:#}"
    );
    // Still here, and serving.
    server.admin_get("/admin/status").await;
    victim_answers(&server, 1).await;
    victim_answers_through_the_gateway(&server).await;
    server.shutdown().await;
}

// =======================================================================================
// 7. The cgroup file system

const CGROUP_SH: &str = r#"
if [ -n "$(ls -A /sys/fs/cgroup 2>/dev/null)" ]; then echo "cgroupfs:visible"; else echo "cgroupfs:hidden"; fi
for f in /sys/fs/cgroup/cgroup.procs /sys/fs/cgroup/memory/cgroup.procs /sys/fs/cgroup/unified/cgroup.procs /sys/fs/cgroup/pids/cgroup.procs /sys/fs/cgroup/cpu/cgroup.procs /sys/fs/cgroup/cpu,cpuacct/cgroup.procs; do
  if [ -e "$f" ] && ( echo $$ > "$f" ) 2>/dev/null; then echo "moved:$f"; fi
done
cat /proc/self/cgroup
"$NODE" -e 'const a = []; for (let i = 0; i < 128; i++) a.push(Buffer.alloc(8 << 20, 1)); console.log("allocated:" + a.length * 8 + "MiB")'
echo "node:$?"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_cannot_leave_its_cgroup_and_stays_memory_limited() {
    let server = hostile_server().await;
    deploy_victim(&server, "", "").await;
    deploy_attacker(&server, "memory = 128\n").await;
    // Against a server without the walls this would move a process out of every limit.
    if !walls_up(&server, "cgroup", &["uid", "namespaces"], true).await {
        return server.shutdown().await;
    }
    let limits = server.admin_get("/admin/status").await["memory_limits"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(limits.starts_with("cgroup"), "{limits}");
    victim_answers(&server, 0).await;

    let reply = server
        .invoke(
            "attacker",
            &json!({ "cmd": CGROUP_SH, "timeout_ms": 60000 }),
        )
        .await;
    if reply.header("x-amz-function-error").is_some() {
        // The kernel killed the instance at its limit: only that instance.
        let (error_type, message) = function_error(&reply);
        assert_eq!(error_type, "Runtime.ExitError", "{message}");
        assert!(message.contains("ran out of memory"), "{message}");
    } else {
        let outcome = success(&reply);
        let out = stdout(&outcome);
        assert!(!out.contains("moved:"), "left its cgroup: {outcome:#}");
        assert!(
            !out.contains("allocated:1024MiB"),
            "allocated 1 GiB: {outcome:#}"
        );
        assert!(!out.contains("cgroupfs:visible"), "{outcome:#}");
    }
    victim_answers(&server, 1).await;
    // The attacker is served again (by a fresh instance if its own was killed).
    let again = sh(&server, "echo alive", json!({})).await;
    assert_eq!(stdout(&again), "alive\n");
    server.shutdown().await;
}

// =======================================================================================
// 8. Processes, files, disk and CPU

const FORK_SH: &str = r#"
f=/tmp/forked-$$
: > "$f"
( i=0; while [ $i -lt 1500 ]; do sleep 300 & echo $! >> "$f"; i=$((i+1)); done ) 2>/dev/null
n=0
while read -r p; do n=$((n+1)); kill "$p" 2>/dev/null; done < "$f"
echo "forked:$n"
rm -f "$f"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_cut_off_at_the_pid_limit() {
    let server = hostile_server().await;
    deploy_victim(&server, "", "").await;
    deploy_attacker(&server, "memory = 1024\n").await;
    if !walls_up(&server, "fork", &["pids"], false).await {
        return server.shutdown().await;
    }
    victim_answers(&server, 0).await;
    let outcome = sh(&server, FORK_SH, json!({})).await;
    let forked: u64 = stdout(&outcome)
        .lines()
        .find_map(|l| l.strip_prefix("forked:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{outcome:#}"));
    assert!(
        (100..1024).contains(&forked),
        "forked {forked} processes (the limit is 1024 processes and threads)"
    );
    victim_answers(&server, 1).await;
    server.shutdown().await;
}

const FDS_SH: &str = r#"
echo "soft:$(ulimit -n) hard:$(ulimit -Hn)"
"$NODE" -e '
const fs = require("fs");
let opened = 0, code = null;
try { for (; opened < 20000; opened++) fs.openSync("/dev/null", "r"); } catch (err) { code = err.code; }
console.log(JSON.stringify({ opened, code }));'
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_cannot_open_more_files_than_its_limit() {
    let server = hostile_server().await;
    deploy_victim(&server, "", "").await;
    deploy_attacker(&server, "").await;
    victim_answers(&server, 0).await;
    let outcome = sh(&server, FDS_SH, json!({})).await;
    let result: Value = stdout(&outcome)
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("{outcome:#}"));
    let opened = result["opened"].as_u64().unwrap();
    assert!(opened < 1024, "opened {opened} files: {outcome:#}");
    assert_eq!(result["code"], "EMFILE", "{outcome:#}");
    victim_answers(&server, 1).await;
    server.shutdown().await;
}

const FILL_TMP_SH: &str = r#"
dd if=/dev/zero of=/tmp/fill bs=1M count=1024 2>&1; echo "dd:$?"
echo "size:$(wc -c < /tmp/fill)"
rm -f /tmp/fill
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_cannot_fill_tmp_beyond_its_ephemeral_storage() {
    let server = hostile_server().await;
    deploy_victim(&server, "", "").await;
    // Against a server without a private /tmp this would write 1 GiB into the host's.
    if !walls_up(&server, "tmp", &["namespaces"], true).await {
        return server.shutdown().await;
    }
    deploy_attacker(&server, "memory = 256\nephemeral_storage = \"64MiB\"\n").await;
    victim_answers(&server, 0).await;
    let outcome = sh(&server, FILL_TMP_SH, json!({})).await;
    let out = stdout(&outcome);
    assert!(out.contains("No space left on device"), "{outcome:#}");
    assert!(!out.contains("dd:0"), "{outcome:#}");
    let size: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("size:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{outcome:#}"));
    assert!(size <= 64 << 20, "wrote {size} bytes into /tmp");
    victim_answers(&server, 1).await;
    server.shutdown().await;
}

const HOG_SH: &str = r#"
for i in 1 2 3 4; do
  setsid timeout 120 sh -c 'while :; do :; done' "$MARKER" > /dev/null 2>&1 < /dev/null &
done
echo started
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_hog_is_held_in_its_own_cpu_cgroup_and_dies_with_its_instance() {
    let hog = marker("hog");
    let server = hostile_server().await;
    deploy_victim(&server, "", "").await;
    deploy_attacker(&server, "").await;
    if !walls_up(&server, "cpu", &["cpu"], false).await {
        return server.shutdown().await;
    }
    victim_answers(&server, 0).await;
    let outcome = sh(&server, HOG_SH, json!({ "MARKER": hog })).await;
    assert_eq!(stdout(&outcome), "started\n", "{outcome:#}");
    // Whatever happens below, no hog keeps spinning on this machine.
    let _cleanup = KillOnDrop(hog.clone());
    let spinning = || {
        processes_with(&hog)
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sh\0"))
            })
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + PATIENCE;
    let mut hogs = spinning();
    while hogs.len() < 4 {
        assert!(Instant::now() < deadline, "the hogs never ran: {hogs:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        hogs = spinning();
    }
    // Held in a cpu cgroup of its own, with a quota: not in the daemon's.
    let (daemon_cgroup, _) = cpu_cgroup("self").expect("the daemon's cpu cgroup");
    for pid in &hogs {
        let Some((path, dir)) = cpu_cgroup(&pid.to_string()) else {
            continue; // already gone
        };
        assert_ne!(
            path, daemon_cgroup,
            "hog {pid} runs in the daemon's cpu cgroup"
        );
        let quota = cpu_quota(&dir);
        assert!(
            quota.is_some(),
            "hog {pid}: no CPU quota on {}",
            dir.display()
        );
    }
    // Wanting more cores than its quota, it is confined to one CPU, leaving the others to
    // everyone else. Only if it really was throttled: beside other work (CI's own CPU
    // hogs) it may get less than its quota, and then there is nothing to confine.
    let guarded = wall_detail(&server, "cpu").await.contains("confined");
    let daemon_cpus = cpus_allowed("self").unwrap_or_default();
    if guarded && daemon_cpus.len() >= 2 {
        let (_, dir) = cpu_cgroup(&hogs[0].to_string()).expect("the hog's cpu cgroup");
        // Readings of the throttling counters, to judge each last second: once a second
        // shows it throttled in most periods, the guard (which needs half a second of
        // that) has had its chance after a few more.
        let mut readings = std::collections::VecDeque::new();
        let mut hungry_since: Option<Instant> = None;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let narrowed = hogs.iter().all(|pid| {
                cpus_allowed(&pid.to_string()).is_none_or(|cpus| cpus.len() < daemon_cpus.len())
            });
            if narrowed {
                break;
            }
            let now = Instant::now();
            if let Some(counts) = throttle_counts(&dir) {
                readings.push_back((now, counts));
            }
            while readings.len() > 2 && now.duration_since(readings[1].0) >= Duration::from_secs(1)
            {
                readings.pop_front();
            }
            if let (Some((t0, (p0, n0))), Some((t1, (p1, n1)))) =
                (readings.front(), readings.back())
            {
                let (periods, throttled) = (p1.saturating_sub(*p0), n1.saturating_sub(*n0));
                if t1.duration_since(*t0) >= Duration::from_secs(1)
                    && periods > 0
                    && throttled * 5 >= periods * 4
                {
                    hungry_since.get_or_insert(now);
                }
            }
            assert!(
                hungry_since.is_none_or(|since| now.duration_since(since) < Duration::from_secs(3)),
                "throttled in most periods for over 3 s, yet never confined: cpus {:?}",
                hogs.iter()
                    .map(|pid| cpus_allowed(&pid.to_string()))
                    .collect::<Vec<_>>()
            );
            if now >= deadline {
                eprintln!("the hog never got its quota here (a busy machine): nothing to confine");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Its neighbour keeps answering while it spins.
    for n in 1..=20 {
        victim_answers(&server, n).await;
    }
    // Deleting the function stops its instance and everything in its cgroup.
    let reply = server
        .control(
            Method::DELETE,
            "/admin/functions/attacker",
            &[],
            Bytes::new(),
        )
        .await;
    assert!(reply.status.is_success(), "{}", reply.text());
    let deadline = Instant::now() + PATIENCE;
    while !processes_with(&hog).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the hogs outlived their instance: {:?}",
            processes_with(&hog)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    victim_answers(&server, 21).await;
    server.shutdown().await;
}

/// Kills, from outside the sandbox, what is left of the processes marked with its string.
struct KillOnDrop(String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Until none is left: one may be forking a child while its parent is killed.
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = processes_with(&self.0);
            if left.is_empty() || Instant::now() > deadline {
                return;
            }
            for pid in left {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// =======================================================================================
// 9 and 10. Output floods

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_line_on_stdout_does_not_grow_the_daemon() {
    let done = marker("flood-done");
    let server = hostile_server().await;
    deploy_victim(&server, "", "").await;
    deploy_attacker(&server, "").await;
    victim_answers(&server, 0).await;
    let before = own_rss_kib();
    // 400 MB without a newline, straight onto the instance's stdout. The writer blocks until
    // the daemon has read it, so the reading happens while the call runs.
    let cmd = "head -c 400000000 /dev/zero | tr '\\0' x; echo; echo \"$MARKER\"";
    let (reply, peak) = peak_rss_during(server.invoke(
        "attacker",
        &json!({ "cmd": cmd, "inherit": true, "env": { "MARKER": done }, "timeout_ms": 80000 }),
    ))
    .await;
    success(&reply);
    let log = server.data_dir().join("logs/attacker.log");
    let deadline = Instant::now() + PATIENCE;
    while !file_ends_with_line(&log, &done) {
        assert!(Instant::now() < deadline, "the flood never reached the log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grew_mib = (peak.max(own_rss_kib()).saturating_sub(before)) / 1024;
    assert!(
        grew_mib < 64,
        "the daemon grew by {grew_mib} MiB reading one line ({before} KiB before)"
    );
    // What was kept of the line is cut at the line cap.
    let tail = server
        .admin_get("/admin/functions/attacker/logs?tail=5")
        .await;
    let records = tail["records"].as_array().expect("records");
    assert!(
        records.iter().any(|r| r["message"] == done.as_str()),
        "{tail}"
    );
    for record in records {
        let len = record["message"].as_str().map_or(0, str::len);
        // The cap, plus the note of how much was cut ("… [truncated N bytes]").
        assert!(
            len <= 64 * 1024 + 64,
            "a log record of {len} bytes (cap 64 KiB)"
        );
    }
    victim_answers(&server, 1).await;
    server.shutdown().await;
}

/// Whether `path` ends with a line holding `needle` (looks at its last 64 KiB).
fn file_ends_with_line(path: &Path, needle: &str) -> bool {
    use std::io::Seek as _;
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(std::io::SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut tail = Vec::new();
    let _ = file.read_to_end(&mut tail);
    find(&tail, needle.as_bytes()).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_is_capped_on_disk() {
    const CAP: u64 = 32 << 20;
    let done = marker("log-flood-done");
    let server = hostile_server().await;
    deploy_victim(&server, "", "").await;
    deploy_attacker(&server, "").await;
    victim_answers(&server, 0).await;
    // 3,200 lines of 65 KB: 208 MB of log.
    let cmd =
        "line=$(head -c 65000 /dev/zero | tr '\\0' y); yes \"$line\" | head -n 3200; echo \"$MARKER\"";
    let reply = server
        .invoke(
            "attacker",
            &json!({ "cmd": cmd, "inherit": true, "env": { "MARKER": done }, "timeout_ms": 80000 }),
        )
        .await;
    success(&reply);
    let logs = server.data_dir().join("logs");
    let current = logs.join("attacker.log");
    let deadline = Instant::now() + PATIENCE;
    while !file_ends_with_line(&current, &done) {
        assert!(Instant::now() < deadline, "the flood never reached the log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let files: Vec<(String, u64)> = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("attacker.log"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    let total: u64 = files.iter().map(|(_, len)| len).sum();
    assert!(
        total <= 2 * CAP + (1 << 20),
        "the attacker's logs take {total} bytes: {files:?}"
    );
    // The newest records are still there to read.
    let tail = server
        .admin_get("/admin/functions/attacker/logs?tail=5")
        .await;
    assert!(
        tail.to_string().contains(&done),
        "the last record is missing: {tail}"
    );
    victim_answers(&server, 1).await;
    server.shutdown().await;
}

// =======================================================================================
// 11, 12, 13. Responses

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_framing_headers_cannot_smuggle_a_response() {
    const SMUGGLED: &str =
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 8\r\n\r\nsmuggled";
    let server = hostile_server().await;
    let panics = panics_so_far();
    deploy_victim(&server, "", "").await;
    server
        .deploy_ok(&[
            ("respond.js", RESPONDER_JS),
            ("shoal.toml", RESPONDER_MANIFEST),
        ])
        .await;
    victim_answers_through_the_gateway(&server).await;

    let body_kept = |case: &str| match case {
        "plain" | "length" | "close" => Some(SMUGGLED.to_owned()),
        "chunked" => Some(format!("0\r\n\r\n{SMUGGLED}")),
        _ => None, // refused statuses: whatever error body the gateway chose
    };
    // `plain` frames nothing itself: it shows what a well-framed answer looks like here.
    for case in [
        "plain",
        "length",
        "chunked",
        "close",
        "upgrade",
        "informational",
    ] {
        // Two pipelined requests on one connection; the server closes after the second.
        let request = format!(
            "GET /r/{case} HTTP/1.1\r\nhost: test\r\n\r\nGET /victim HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
        );
        let (bytes, error) = raw_exchange(server.gateway, request).await;
        let wire = lossy(&bytes, 4000);
        assert_eq!(
            error, None,
            "{case}: the connection ended badly; got {wire:?}"
        );
        assert!(
            !bytes.is_empty(),
            "{case}: the gateway closed the connection without answering ({} panics in the daemon)",
            panics_so_far() - panics
        );
        let responses = parse_responses(&bytes).unwrap_or_else(|e| panic!("{case}: {e}: {wire:?}"));
        assert_eq!(
            responses.len(),
            2,
            "{case}: expected two responses on the wire: {responses:#?}"
        );
        let first = &responses[0];
        assert!(first.status >= 200, "{case}: {first:?}");
        if let Some(body) = body_kept(case) {
            assert_eq!(first.status, 200, "{case}: {first:?}");
            assert_eq!(first.text(), body, "{case}: the body was reframed");
        } else {
            assert!(first.status >= 500, "{case}: a refused status: {first:?}");
        }
        assert!(
            first.headers.iter().all(|(name, _)| name != "upgrade"),
            "{case}: the handler's upgrade header passed through: {first:?}"
        );
        let second = &responses[1];
        assert_eq!(
            (second.status, second.text().as_str()),
            (200, VICTIM_OK),
            "{case}: the second request got someone else's answer: {second:?}"
        );
    }
    assert_eq!(panics_so_far(), panics, "the daemon panicked");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_headers_get_a_5xx_and_the_gateway_keeps_serving() {
    let server = hostile_server().await;
    let panics = panics_so_far();
    deploy_victim(&server, "", "").await;
    server
        .deploy_ok(&[
            ("respond.js", RESPONDER_JS),
            ("shoal.toml", RESPONDER_MANIFEST),
        ])
        .await;
    let request = "GET /r/headers HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n".to_owned();
    let (bytes, error) = raw_exchange(server.gateway, request).await;
    let wire = lossy(&bytes, 2000);
    assert_eq!(error, None, "the connection ended badly; got {wire:?}");
    assert!(
        !bytes.is_empty(),
        "the gateway closed the connection without answering ({} panics in the daemon)",
        panics_so_far() - panics
    );
    let responses = parse_responses(&bytes).unwrap_or_else(|e| panic!("{e}: {wire:?}"));
    assert_eq!(responses.len(), 1, "{wire:?}");
    let response = &responses[0];
    assert!(
        (500..600).contains(&response.status),
        "status {} with {} headers",
        response.status,
        response.headers.len()
    );
    victim_answers_through_the_gateway(&server).await;
    victim_answers(&server, 1).await;
    // The function itself is still served.
    let reply = server.get("/r/plain").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(panics_so_far(), panics, "the daemon panicked");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_6_mb_fails_with_response_size_too_large() {
    let server = hostile_server().await;
    let panics = panics_so_far();
    deploy_victim(&server, "", "").await;
    server
        .deploy_ok(&[
            ("respond.js", RESPONDER_JS),
            ("shoal.toml", RESPONDER_MANIFEST),
        ])
        .await;
    // 5 MiB is under the limit.
    let five = success(
        &server
            .invoke("responder", &json!({ "respond": "five" }))
            .await,
    );
    assert_eq!(five.as_str().map(str::len), Some(5 << 20));

    let reply = server
        .invoke("responder", &json!({ "respond": "big" }))
        .await;
    assert!(
        reply.body.len() < 1 << 20,
        "{} bytes came back",
        reply.body.len()
    );
    let (error_type, message) = function_error(&reply);
    assert_eq!(error_type, "Function.ResponseSizeTooLarge", "{message}");
    let reply = server.get("/r/big").await;
    assert!(
        reply.status.is_server_error(),
        "{} with {} bytes",
        reply.status,
        reply.body.len()
    );
    victim_answers(&server, 1).await;
    assert_eq!(panics_so_far(), panics, "the daemon panicked");
    server.shutdown().await;
}

// =======================================================================================
// 14. Archives

fn raw_entry(builder: &mut tar::Builder<Vec<u8>>, name: &str, body: &[u8]) {
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    builder.append(&header, body).unwrap();
}

fn symlink_entry(builder: &mut tar::Builder<Vec<u8>>, name: &str, target: &str) {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    builder.append_link(&mut header, name, target).unwrap();
}

fn gzip(tar: Vec<u8>) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_entry_through_a_symlink_is_refused_and_writes_nothing() {
    let server = hostile_server().await;
    deploy_victim(&server, "", "").await;
    let before = server.admin_get("/admin/functions").await;
    let data_dir = server.data_dir().to_owned();
    let outside = data_dir.parent().unwrap().to_owned();
    let escaped = marker("escaped");
    let manifest = "[functions.sneaky]\nruntime = \"nodejs\"\nhandler = \"index.handler\"\n";

    let archive = |hostile: &dyn Fn(&mut tar::Builder<Vec<u8>>)| {
        let mut builder = tar::Builder::new(Vec::new());
        raw_entry(&mut builder, "shoal.toml", manifest.as_bytes());
        raw_entry(
            &mut builder,
            "index.js",
            b"exports.handler = async () => 1;",
        );
        hostile(&mut builder);
        gzip(builder.into_inner().unwrap())
    };
    // Each link is `..` from where it is named, so each looks harmless on its own; created
    // through the one before, they climb out of the staging directory (<data>/tmp/<id>/),
    // out of <data>/tmp, and out of the data directory.
    let chain = archive(&|b| {
        symlink_entry(b, "a/l1", "..");
        symlink_entry(b, "a/l1/l2", "..");
        symlink_entry(b, "a/l1/l2/l3", "..");
        symlink_entry(b, "a/l1/l2/l3/l4", "..");
        raw_entry(b, &format!("a/l1/l2/l3/l4/{escaped}"), b"x");
    });
    // Even a link that stays inside: an entry is never written through it.
    let inside = archive(&|b| {
        raw_entry(b, "lib/real.js", b"1");
        symlink_entry(b, "alias", "lib");
        raw_entry(b, &format!("alias/{escaped}"), b"x");
    });
    for (name, archive) in [("symlink chain", chain), ("through a link", inside)] {
        let (status, body) = server.deploy_archive(archive).await;
        // Whatever the answer, nothing may be left behind: look, clean up, then judge.
        let would_be = [
            outside.join(&escaped),
            data_dir.join(&escaped),
            data_dir.join("tmp").join(&escaped),
            data_dir.join("l4"),
            data_dir.join("tmp").join("l3"),
        ];
        let written: Vec<_> = would_be
            .iter()
            .filter(|p| p.symlink_metadata().is_ok())
            .cloned()
            .collect();
        for path in &written {
            let _ = std::fs::remove_file(path);
        }
        assert!(written.is_empty(), "{name}: wrote {written:?}");
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
        assert_eq!(body["__type"], "InvalidArchiveException", "{name}: {body}");
    }
    let staging = std::fs::read_dir(data_dir.join("tmp"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(staging, 0, "unpacked files left in tmp/");
    assert_eq!(server.admin_get("/admin/functions").await, before);
    victim_answers(&server, 1).await;
    server.shutdown().await;
}

// =======================================================================================
// 15 and 16. The data directory

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_private_to_the_daemon() {
    let server = hostile_server().await;
    deploy_victim(&server, "", "DB_PASSWORD = \"not for other users\"").await;
    victim_answers(&server, 0).await;
    let data_dir = server.data_dir().to_owned();
    assert_eq!(
        mode(&data_dir),
        0o700,
        "{} is mode {:o}",
        data_dir.display(),
        mode(&data_dir)
    );
    for file in ["shoal.db", "admin-token"] {
        let path = data_dir.join(file);
        assert_eq!(mode(&path), 0o600, "{file} is mode {:o}", mode(&path));
    }
    for file in ["shoal.db-wal", "shoal.db-shm"] {
        let path = data_dir.join(file);
        if path.exists() {
            assert_eq!(mode(&path) & 0o077, 0, "{file} is mode {:o}", mode(&path));
        }
    }

    // As another local user (nobody), if this test can become one.
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .args(args)
            .output()
    };
    match as_nobody(&["true"]) {
        Ok(out) if out.status.success() => {
            for file in ["shoal.db", "admin-token"] {
                let path = data_dir.join(file);
                let out = as_nobody(&["cat", path.to_str().unwrap()]).unwrap();
                assert!(
                    !out.status.success() && out.stdout.is_empty(),
                    "nobody read {file}"
                );
            }
            let out = as_nobody(&["ls", data_dir.to_str().unwrap()]).unwrap();
            assert!(!out.status.success(), "nobody listed the data directory");
        }
        other => eprintln!("not checking as another user: setpriv cannot switch ({other:?})"),
    }
    victim_answers(&server, 1).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_store_beside_deployed_code_refuses_to_start() {
    let mut server = hostile_server().await;
    deploy_victim(&server, "", "").await;
    victim_answers(&server, 0).await;
    server.stop().await;

    let data_dir = server.data_dir().to_owned();
    let db = data_dir.join("shoal.db");
    let saved = std::fs::read(&db).unwrap();
    for file in ["shoal.db-wal", "shoal.db-shm"] {
        let _ = std::fs::remove_file(data_dir.join(file));
    }
    std::fs::File::options()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(0)
        .unwrap();
    let code_dirs = || {
        std::fs::read_dir(data_dir.join("code"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let code_before = code_dirs();
    assert!(code_before > 0);

    let error = match server.try_restart().await {
        Ok(()) => panic!("the server started on an empty store beside deployed code"),
        Err(error) => error,
    };
    assert!(error.contains("shoal.db"), "{error}");
    assert!(
        error.contains("allow_empty_store") || error.contains("allow-empty-store"),
        "the message says how to start anyway: {error}"
    );
    assert_eq!(code_dirs(), code_before, "the refused start removed code");

    // Nothing was lost: with the store back, the victim is served again.
    std::fs::write(&db, saved).unwrap();
    server.restart().await;
    victim_answers(&server, 1).await;
    server.shutdown().await;
}
