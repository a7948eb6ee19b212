//! Cluster mode with real processes: one `nats-server -js` and three `shoal serve
//! --cluster` nodes on loopback, started and stopped by each test. A deploy through one
//! node is served by every node; a cold burst spread over the nodes starts its instances in
//! one place; a node whose instances are full forwards to a node with room, and a new
//! instance starts only when no node has room; async invokes go through JetStream to
//! some node; `kill -9` of a node under load fails only
//! the calls it had in flight, and the others keep answering.
// Starting the binaries under test is this test's job; the rule that only shoal-runtime
// spawns processes is about the daemon's own code.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;

use support::{Daemon, TempDir};

/// Generous: these bound hangs on a busy machine; they measure nothing.
const DEADLINE: Duration = Duration::from_secs(60);

/// A private `nats-server -js` on a free loopback port, killed on drop.
struct Nats {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Nats {
    fn start(dir: &Path) -> Nats {
        // nats-server 2.9 does not report a port it chose itself: take a free one.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Nats {
            child: Nats::spawn(dir, port),
            port,
            dir: dir.to_owned(),
        }
    }

    /// `kill -9` the server, as a crash would.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start it again on the same port and store, as a supervisor would.
    fn restart(&mut self) {
        self.child = Nats::spawn(&self.dir, self.port);
    }

    fn spawn(dir: &Path, port: u16) -> Child {
        let binary = std::env::var("NATS_SERVER").unwrap_or_else(|_| {
            if Path::new("/usr/sbin/nats-server").exists() {
                "/usr/sbin/nats-server".to_owned()
            } else {
                "nats-server".to_owned()
            }
        });
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("nats.log"))
            .unwrap();
        let child = Command::new(&binary)
            .args(["-js", "-sd"])
            .arg(dir.join("jetstream"))
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary} (Debian's nats-server): {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + DEADLINE;
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "nats-server never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `shoal serve --cluster` node.
struct Node {
    name: String,
    data: PathBuf,
    daemon: Option<Daemon>,
}

impl Node {
    fn start(root: &Path, nats: &Nats, name: &str) -> Node {
        let data = root.join(name);
        std::fs::create_dir_all(&data).unwrap();
        let url = nats.url();
        let daemon = Daemon::start_with(
            &data,
            &["--cluster", &url, "--node-name", name, "--sandbox", "off"],
        );
        Node {
            name: name.to_owned(),
            data,
            daemon: Some(daemon),
        }
    }

    fn gateway(&self) -> String {
        std::fs::read_to_string(self.data.join("gateway-addr")).unwrap()
    }

    fn control(&self) -> String {
        std::fs::read_to_string(self.data.join("control-addr")).unwrap()
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin-token")).unwrap()
    }

    /// `GET path` on the gateway: status and body.
    fn get(&self, path: &str) -> (u16, String) {
        http(&self.gateway(), "GET", path, &[], "")
    }

    /// `/admin/status` as JSON.
    fn status(&self) -> Value {
        let auth = format!("Bearer {}", self.token());
        let (code, body) = http(
            &self.control(),
            "GET",
            "/admin/status",
            &[("authorization", &auth)],
            "",
        );
        assert_eq!(code, 200, "{}: status: {body}", self.name);
        serde_json::from_str(&body).unwrap()
    }

    /// The instances of `function` on this node (its own pools, not the cluster view).
    fn instances(&self, function: &str) -> usize {
        self.status()["pools"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["function"] == function)
            .map(|p| p["instances"].as_array().unwrap().len())
            .sum()
    }

    /// `shoal ARGS...` against this node; its standard output.
    fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "shoal {args:?} on {}: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("daemon.log")).unwrap_or_default()
    }
}

/// One HTTP/1.1 exchange on a fresh connection: status and body (`0` if the connection
/// failed or broke).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let (code, _, body) = http_with_head(addr, method, path, headers, body);
    (code, body)
}

/// [`http`], with the response's head (status line and headers) too.
fn http_with_head(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let Ok(mut stream) = TcpStream::connect(addr.trim()) else {
        return (0, String::new(), String::new());
    };
    let _ = stream.set_read_timeout(Some(DEADLINE));
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new(), String::new());
    }
    let mut answer = Vec::new();
    if stream.read_to_end(&mut answer).is_err() {
        return (0, String::new(), String::new());
    }
    let answer = String::from_utf8_lossy(&answer);
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        return (0, String::new(), String::new());
    };
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_owned(), body.to_owned())
}

/// Wait until `check` holds, or fail with `what`.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A handler that waits `?ms=` milliseconds and answers the id its instance drew at load,
/// so answers tell which instance served them.
const HANDLER: &str = r#"
const id = require("crypto").randomUUID();
exports.handler = async (event) => {
  if (event.marker) console.log(`marker ${event.marker}`);
  const ms = Number((event.queryStringParameters || {}).ms || 0);
  await new Promise((resolve) => setTimeout(resolve, ms));
  return { statusCode: 200, body: id };
};
// What the event says about the caller, and any forwarding marker that reached it; it
// also tries to answer with one ("not run": a forwarding node would run it again).
exports.echo = async (event) => ({
  statusCode: 200,
  headers: { "x-shoal-not-run": "1" },
  body: JSON.stringify({
    ip: event.requestContext.http.sourceIp,
    markers: Object.keys(event.headers || {}).filter((h) => h.startsWith("x-shoal-")),
  }),
});
"#;

/// `quick` packs 10 calls per instance; `slow` takes 2 per instance and runs one instance
/// per node at most.
const MANIFEST: &str = r#"
[functions.quick]
runtime = "nodejs"
handler = "index.handler"
concurrency = 10
http = [{ method = "GET", path = "/quick" }]

[functions.echo]
runtime = "nodejs"
handler = "index.echo"
http = [{ method = "GET", path = "/echo" }]

[functions.slow]
runtime = "nodejs"
handler = "index.handler"
concurrency = 2
max_instances = 1
http = [{ method = "GET", path = "/slow" }]
"#;

fn function_dir(root: &Path) -> PathBuf {
    let dir = root.join("fn");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.js"), HANDLER).unwrap();
    std::fs::write(dir.join("shoal.toml"), MANIFEST).unwrap();
    dir
}

/// Three nodes on one NATS server, `quick` and `slow` deployed through the first, and
/// every node's view of the cluster listing both functions on all three.
struct Cluster {
    nodes: Vec<Node>,
    nats: Nats,
    root: TempDir,
}

impl Cluster {
    fn start(prefix: &str) -> Cluster {
        let root = TempDir::new(prefix);
        let nats = Nats::start(&root.0);
        let nodes: Vec<Node> = ["n1", "n2", "n3"]
            .iter()
            .map(|name| Node::start(&root.0, &nats, name))
            .collect();
        let dir = function_dir(&root.0);
        let deployed = nodes[0].cli(&["deploy", dir.to_str().unwrap()]);
        assert!(deployed.contains("deployed quick version 1"), "{deployed}");
        let cluster = Cluster { nodes, nats, root };
        cluster.wait_for_views(&["quick", "slow"]);
        cluster
    }

    /// Until every node's heartbeat view shows every live node running `functions`.
    fn wait_for_views(&self, functions: &[&str]) {
        for node in self.nodes.iter().filter(|n| n.daemon.is_some()) {
            eventually(
                &format!("{} sees the functions on every node", node.name),
                || {
                    let status = node.status();
                    let Some(nodes) = status["cluster"]["nodes"].as_array() else {
                        return false;
                    };
                    let live = self.nodes.iter().filter(|n| n.daemon.is_some()).count();
                    nodes.iter().filter(|n| n["alive"] == true).count() == live
                        && nodes.iter().filter(|n| n["alive"] == true).all(|n| {
                            functions.iter().all(|f| {
                                n["load"]["functions"]
                                    .as_array()
                                    .unwrap()
                                    .iter()
                                    .any(|l| l["name"] == *f)
                            })
                        })
                },
            );
        }
    }

    /// One node's view of where `function` has capacity: node name to its load entry.
    fn view(&self, from: usize, function: &str) -> BTreeMap<String, Value> {
        let status = self.nodes[from].status();
        status["cluster"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["alive"] == true)
            .filter_map(|n| {
                let load = n["load"]["functions"]
                    .as_array()?
                    .iter()
                    .find(|l| l["name"] == function)?
                    .clone();
                Some((n["name"].as_str()?.to_owned(), load))
            })
            .collect()
    }

    fn instances(&self, function: &str) -> Vec<usize> {
        self.nodes.iter().map(|n| n.instances(function)).collect()
    }
}

/// `count` concurrent `GET path` calls, the i-th on `nodes[i % nodes.len()]`.
fn burst(nodes: &[&Node], path: &str, count: usize) -> Vec<(u16, String)> {
    let gateways: Vec<String> = nodes.iter().map(|n| n.gateway()).collect();
    let threads: Vec<_> = (0..count)
        .map(|i| {
            let gateway = gateways[i % gateways.len()].clone();
            let path = path.to_owned();
            std::thread::spawn(move || http(&gateway, "GET", &path, &[], ""))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn a_deploy_on_one_node_is_served_by_all_and_calls_go_where_there_is_room() {
    let cluster = Cluster::start("shoal-cl-a");
    let [n1, n2, n3] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];

    // Deployed on n1, listed and served on the others.
    for node in [n2, n3] {
        let listing = node.cli(&["ls"]);
        assert!(listing.contains("quick"), "{}: {listing}", node.name);
        let (code, body) = node.get("/quick");
        assert_eq!(code, 200, "{}: {body}", node.name);
    }
    // A new version through n2 reaches every node.
    let dir = function_dir(&cluster.root.0);
    let deployed = n2.cli(&["deploy", dir.to_str().unwrap()]);
    let deployed_at = Instant::now();
    assert!(deployed.contains("deployed quick version 2"), "{deployed}");
    for node in [n1, n3] {
        eventually(&format!("{} runs quick version 2", node.name), || {
            node.cli(&["ls"])
                .lines()
                .any(|l| l.split_whitespace().take(2).eq(["quick", "2"]))
        });
    }
    // The figure belongs in a benchmark; printed for whoever reads the test's output.
    eprintln!(
        "version 2 listed on both other nodes {} ms after the deploy answered",
        deployed_at.elapsed().as_millis()
    );
    cluster.wait_for_views(&["quick", "slow"]);

    // Packing across nodes: a cold burst of 9 spread over the three nodes fits one
    // instance of limit 10, and starts one in the whole cluster.
    let answers = burst(&[n1, n2, n3], "/quick?ms=1500", 9);
    assert!(answers.iter().all(|(code, _)| *code == 200), "{answers:?}");
    let ids: BTreeSet<&str> = answers.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids.len(), 1, "one instance served the burst: {answers:?}");
    assert_eq!(
        cluster.instances("quick").iter().sum::<usize>(),
        1,
        "instances of quick per node"
    );

    // Forwarding when a node is full. `slow`: 2 calls per instance, 1 instance per node.
    let first = burst(&[n1], "/slow?ms=100", 2);
    assert!(first.iter().all(|(code, _)| *code == 200), "{first:?}");
    let home_id = first[0].1.clone();
    let per_node = cluster.instances("slow");
    assert_eq!(per_node.iter().sum::<usize>(), 1, "{per_node:?}");
    let home = per_node.iter().position(|&n| n == 1).unwrap();
    let other = (home + 1) % 3;
    let (home_name, other_node) = (cluster.nodes[home].name.clone(), &cluster.nodes[other]);
    eventually("the other node sees 2 free slots on the home node", || {
        cluster.view(other, "slow")[&home_name]["free"] == 2
    });
    // The other node has no instance of its own: both calls go to the warm one.
    let gateway = other_node.gateway();
    let held: Vec<_> = (0..2)
        .map(|_| {
            let gateway = gateway.clone();
            std::thread::spawn(move || http(&gateway, "GET", "/slow?ms=4000", &[], ""))
        })
        .collect();
    eventually("the other node sees the home node full", || {
        cluster.view(other, "slow")[&home_name]["free"] == 0
    });
    // Now no node has room and the home is at its max_instances: a new instance starts,
    // on another node.
    let (code, extra_id) = other_node.get("/slow?ms=100");
    assert_eq!(code, 200, "{extra_id}");
    assert_ne!(extra_id, home_id, "the full instance took a third call");
    for thread in held {
        let (code, id) = thread.join().unwrap();
        assert_eq!((code, id.as_str()), (200, home_id.as_str()));
    }
    let per_node = cluster.instances("slow");
    assert_eq!(per_node[home], 1, "{per_node:?}");
    assert_eq!(per_node.iter().sum::<usize>(), 2, "{per_node:?}");

    // An async invoke through one node is taken from JetStream and run by some node.
    n3.cli(&[
        "invoke",
        "quick",
        "--type",
        "Event",
        "--data",
        r#"{"marker":"async-7f3"}"#,
    ]);
    eventually("some node ran the Event invoke", || {
        [n1, n2, n3]
            .iter()
            .any(|n| n.cli(&["logs", "quick"]).contains("marker async-7f3"))
    });
    // The Invoke API forwards too: a synchronous invoke through any node answers.
    for node in [n1, n2, n3] {
        let answer = node.cli(&["invoke", "quick", "--data", r#"{"marker":"sync"}"#]);
        assert!(answer.contains("statusCode"), "{}: {answer}", node.name);
    }

    // Forwarding markers from a client count for nothing and never reach a function.
    for node in [n1, n2, n3] {
        let (code, head, body) = http_with_head(
            &node.gateway(),
            "GET",
            "/echo",
            &[
                ("x-shoal-forward-token", "guessed"),
                ("x-shoal-source-ip", "6.6.6.6"),
                ("x-shoal-forwarded-by", "n9"),
            ],
            "",
        );
        assert_eq!(code, 200, "{}: {body}", node.name);
        let seen: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(seen["ip"], "127.0.0.1", "{}: {body}", node.name);
        assert_eq!(
            seen["markers"],
            serde_json::json!([]),
            "{}: {body}",
            node.name
        );
        assert!(
            !head.to_ascii_lowercase().contains("x-shoal-"),
            "{}: {head}",
            node.name
        );
    }

    // Every node shows the whole cluster.
    let text = n3.cli(&["status"]);
    for name in ["n1", "n2", "n3"] {
        assert!(text.contains(&format!("  {name} (live")), "{text}");
    }
}

#[test]
fn killing_a_node_under_load_fails_only_what_it_had_in_flight() {
    let mut cluster = Cluster::start("shoal-cl-k");
    // Warm `quick` somewhere (its home), and make that node the victim: it serves the
    // calls the others forward.
    let answers = burst(
        &cluster.nodes.iter().collect::<Vec<_>>(),
        "/quick?ms=300",
        6,
    );
    assert!(answers.iter().all(|(code, _)| *code == 200), "{answers:?}");
    let per_node = cluster.instances("quick");
    let victim = per_node.iter().position(|&n| n > 0).unwrap();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();

    const CALLERS: usize = 4;
    let stop = Arc::new(AtomicBool::new(false));
    // (time since start, status) of every call, per caller.
    let results = Arc::new(Mutex::new(Vec::<(Duration, u16)>::new()));
    let started = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|i| {
            let gateway = cluster.nodes[survivors[i % 2]].gateway();
            let (stop, results) = (stop.clone(), results.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (code, _) = http(&gateway, "GET", "/quick?ms=50", &[], "");
                    results.lock().unwrap().push((started.elapsed(), code));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let pid = cluster.nodes[victim].daemon.as_ref().unwrap().pid();
    kill_9(pid);
    let killed_at = started.elapsed();
    cluster.nodes[victim].daemon.take();
    // Beyond the heartbeat expiry (3 s) and then some.
    std::thread::sleep(Duration::from_secs(8));
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.join().unwrap();
    }
    let results = results.lock().unwrap().clone();
    let failed: Vec<_> = results.iter().filter(|(_, code)| *code != 200).collect();
    let after: Vec<_> = results.iter().filter(|(at, _)| *at > killed_at).collect();
    let late: Vec<_> = results
        .iter()
        .filter(|(at, _)| *at > killed_at + Duration::from_secs(4))
        .collect();
    eprintln!(
        "kill test: {} calls, {} failed ({:?}), {} after the kill",
        results.len(),
        failed.len(),
        failed,
        after.len()
    );
    // At most the calls in flight at the kill (one per caller) fail, plus a call on a
    // kept-alive connection the dead node had not yet been seen to close.
    assert!(failed.len() <= 2 * CALLERS, "{failed:?}");
    assert!(failed.iter().all(|(at, _)| *at >= killed_at), "{failed:?}");
    assert!(
        after.iter().filter(|(_, code)| *code == 200).count() >= 20,
        "{after:?}"
    );
    assert!(
        !late.is_empty() && late.iter().all(|(_, code)| *code == 200),
        "{late:?}"
    );
    // The survivors see the victim gone.
    let victim_name = cluster.nodes[victim].name.clone();
    for &i in &survivors {
        eventually("the victim is reported gone", || {
            cluster.nodes[i].status()["cluster"]["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["name"] == victim_name.as_str() && n["alive"] == false)
        });
    }
    for &i in &survivors {
        assert!(
            !cluster.nodes[i].log().contains("panicked"),
            "{}",
            cluster.nodes[i].log()
        );
    }
    // The node rejoins cleanly on its data directory: caught up, live, serving.
    for stale in ["control-addr", "gateway-addr"] {
        std::fs::remove_file(cluster.nodes[victim].data.join(stale)).unwrap();
    }
    let rejoined = Node::start(&cluster.root.0, &cluster.nats, &victim_name);
    cluster.nodes[victim] = rejoined;
    cluster.wait_for_views(&["quick", "slow"]);
    assert_eq!(cluster.nodes[victim].get("/quick").0, 200);
}

/// `kill -9` the daemon this test started.
#[allow(unsafe_code)]
fn kill_9(pid: u32) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is our
    // own child's, not yet waited for, so it names that process.
    let sent = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(sent, 0, "kill -9 {pid}");
}

#[test]
fn nodes_cut_off_from_nats_stop_taking_work_and_rejoin_after_its_restart() {
    let mut cluster = Cluster::start("shoal-cl-r");
    for node in &cluster.nodes {
        assert_eq!(node.get("/quick").0, 200, "{}", node.name);
    }
    // NATS down for longer than the heartbeat expiry (3 s): no node can report, so none
    // takes work.
    cluster.nats.kill();
    for node in &cluster.nodes {
        eventually(&format!("{} refuses work while cut off", node.name), || {
            node.get("/quick").0 == 503
        });
    }
    cluster.nats.restart();
    for node in &cluster.nodes {
        eventually(&format!("{} takes work again", node.name), || {
            node.get("/quick").0 == 200
        });
    }
    // The registry watch came back too: a deploy after the restart reaches every node.
    let dir = function_dir(&cluster.root.0);
    let deployed = cluster.nodes[2].cli(&["deploy", dir.to_str().unwrap()]);
    assert!(deployed.contains("deployed quick version 2"), "{deployed}");
    for node in &cluster.nodes {
        eventually(&format!("{} runs quick version 2", node.name), || {
            node.cli(&["ls"])
                .lines()
                .any(|l| l.split_whitespace().take(2).eq(["quick", "2"]))
        });
    }
    cluster.wait_for_views(&["quick", "slow"]);
}

#[test]
fn a_bad_node_name_or_an_unreachable_nats_stops_the_start_with_a_clear_error() {
    let root = TempDir::new("shoal-cl-e");
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let serve = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("--data-dir")
            .arg(root.0.join("data"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--control-listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "shoal serve {args:?} started");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let url = format!("nats://127.0.0.1:{closed}");
    let text = serve(&["--cluster", &url, "--node-name", "no spaces"]);
    assert!(
        text.contains("--node-name \"no spaces\": a node name is"),
        "{text}"
    );
    let text = serve(&["--cluster", &url, "--node-name", "n1"]);
    assert!(
        text.contains(&format!("connecting to NATS at {url}")),
        "{text}"
    );
    let text = serve(&["--node-name", "n1"]);
    assert!(text.contains("--cluster"), "{text}");
}

#[test]
fn a_node_that_ran_alone_keeps_its_functions_when_it_joins_and_later_follows_deletes() {
    let root = TempDir::new("shoal-cl-j");
    let nats = Nats::start(&root.0);
    let alone = root.0.join("n1");
    std::fs::create_dir_all(&alone).unwrap();
    {
        let _daemon = Daemon::start_with(&alone, &["--sandbox", "off"]);
        let dir = function_dir(&root.0);
        let output = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("--data-dir")
            .arg(&alone)
            .args(["deploy", dir.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
    }
    let restart = |name: &str| {
        for stale in ["control-addr", "gateway-addr"] {
            let _ = std::fs::remove_file(root.0.join(name).join(stale));
        }
        Node::start(&root.0, &nats, name)
    };
    let n1 = restart("n1");
    let mut n2 = Node::start(&root.0, &nats, "n2");
    // Published on joining: the new node gets it from the registry.
    eventually("n2 installs what n1 ran alone", || {
        n2.cli(&["ls"]).contains("quick")
    });
    assert_eq!(n2.get("/quick").0, 200);
    assert!(n1.cli(&["ls"]).contains("quick"));
    // Now a member: removed while it is away, the function is gone when it comes back.
    drop(n1);
    n2.cli(&["rm", "quick"]);
    let n1 = restart("n1");
    // (Its control API answers from before it has caught up: wait for the catch-up.)
    eventually("n1 removes what was removed while it was away", || {
        !n1.cli(&["ls"]).contains("quick")
    });
    assert!(n1.cli(&["ls"]).contains("slow"));
    n2.daemon.take();
}

/// A TCP proxy between one node and NATS that the test can cut and restore, as a link
/// going down would: cut, its connections are shut and new ones are dropped at once.
struct Link {
    port: u16,
    cut: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Link {
    fn to(nats_port: u16) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
        let (cut2, streams2) = (cut.clone(), streams.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut2.load(Ordering::SeqCst) {
                    continue; // dropped: the node sees its connection closed
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", nats_port)) else {
                    continue;
                };
                let mut held = streams2.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Link { port, cut, streams }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[test]
fn a_node_cut_off_from_nats_refuses_work_while_the_others_serve_and_rejoins() {
    let cluster = Cluster::start("shoal-cl-p");
    let link = Link::to(cluster.nats.port);
    let data = cluster.root.0.join("n4");
    std::fs::create_dir_all(&data).unwrap();
    let url = link.url();
    let n4 = Node {
        name: "n4".into(),
        daemon: Some(Daemon::start_with(
            &data,
            &["--cluster", &url, "--node-name", "n4", "--sandbox", "off"],
        )),
        data,
    };
    eventually("n4 serves", || n4.get("/quick").0 == 200);
    link.cut();
    eventually("n4 refuses work it cannot report", || {
        n4.get("/quick").0 == 503
    });
    for node in &cluster.nodes {
        // A call another node forwarded to n4 before it saw n4 gone is refused unrun
        // there and runs on the forwarding node: every call answers.
        assert_eq!(node.get("/quick").0, 200, "{}", node.name);
        eventually(&format!("{} sees n4 gone", node.name), || {
            node.status()["cluster"]["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["name"] == "n4" && n["alive"] == false)
        });
        assert_eq!(node.get("/quick").0, 200, "{}", node.name);
    }
    link.restore();
    eventually("n4 takes work again once the link is back", || {
        n4.get("/quick").0 == 200
    });
    eventually("n1 sees n4 live again", || {
        cluster.nodes[0].status()["cluster"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "n4" && n["alive"] == true)
    });
}
