//! The one helper every black-box test uses: a real Shoal server on loopback ephemeral
//! ports (gateway and control API), real instance processes, and a small HTTP client.
//!
//! Only one server runs at a time per test binary: two servers cold-starting instances on
//! a 2-core machine would slow each other down for nothing. The tests assert behaviour
//! (counts, ids, orders, states); where one bounds a time, the bound is several times what
//! an idle machine needs, so that a busy CI machine never trips it. How fast Shoal is gets
//! measured in `bench/`.
#![allow(dead_code)] // each test binary uses a different part of the helper

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long a test waits for something a correct platform does within a second or two on
/// an idle machine: an instance stopping, a log line arriving, a pool deciding. Generous on
/// purpose (CI shares 2 cores with whatever else runs): it bounds a hang, it measures
/// nothing.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Held by the running server: see the module comment.
static ONE_SERVER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A directory under the system temp dir, removed on drop. Names stay short because the
/// data directory holds the instances' Unix sockets (paths under 100 bytes).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(kind: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("shoal-{kind}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One HTTP answer, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// From sending the request to having the whole body.
    pub elapsed: Duration,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub struct TestServer {
    running: Option<shoal_server::Running>,
    pub api: Api,
    /// What the server was started with, to start it again on the same data directory.
    config: shoal_server::Config,
    // Dropped after `running`: the server's files go only once it is gone.
    data_dir: TempDir,
    _one_at_a_time: tokio::sync::MutexGuard<'static, ()>,
}

/// A client of one server's gateway and control API; cheap to clone into tasks.
#[derive(Clone)]
pub struct Api {
    pub gateway: std::net::SocketAddr,
    pub control: std::net::SocketAddr,
    pub token: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl std::ops::Deref for TestServer {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Start a server with some settings changed from [`shoal_server::Config::ephemeral`].
    pub async fn start_with(configure: impl FnOnce(&mut shoal_server::Config)) -> TestServer {
        match Self::try_start_in(TempDir::new("t"), configure).await {
            Ok(server) => server,
            Err((error, _)) => panic!("starting the server: {error}"),
        }
    }

    /// Start a server on a data directory that already exists (kept by
    /// [`TestServer::stop`], or laid out by the test). If the start is refused: its error
    /// with every cause, and the directory back.
    pub async fn try_start_in(
        data_dir: TempDir,
        configure: impl FnOnce(&mut shoal_server::Config),
    ) -> Result<TestServer, (String, TempDir)> {
        let guard = ONE_SERVER_AT_A_TIME.lock().await;
        let mut config = shoal_server::Config::ephemeral(data_dir.path().to_owned());
        configure(&mut config);
        let running = match shoal_server::start(config.clone()).await {
            Ok(running) => running,
            Err(error) => return Err((format!("{error:#}"), data_dir)),
        };
        Ok(TestServer {
            api: Api::of(&running),
            running: Some(running),
            config,
            data_dir,
            _one_at_a_time: guard,
        })
    }

    /// Stop the server like [`TestServer::shutdown`], keeping its data directory for
    /// another start.
    pub async fn stop_into_dir(mut self) -> TempDir {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        self.data_dir
    }

    /// Stop the server (as [`TestServer::shutdown`] does) but keep its data directory, to
    /// tamper with it or start again.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }

    /// Stop the server if it runs and start it again on the same data directory, with the
    /// same settings (new ports; the token is read back from the data directory). The
    /// start's error, with its causes, if it refuses.
    pub async fn try_restart(&mut self) -> Result<(), String> {
        self.stop().await;
        let running = shoal_server::start(self.config.clone())
            .await
            .map_err(|e| format!("{e:#}"))?;
        self.api = Api::of(&running);
        self.running = Some(running);
        Ok(())
    }

    /// [`TestServer::try_restart`], which must succeed.
    pub async fn restart(&mut self) {
        if let Err(e) = self.try_restart().await {
            panic!("restarting the server: {e}");
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The running platform itself, for what tests set up without a transport (queues).
    pub fn platform(&self) -> &std::sync::Arc<shoal_core::Platform> {
        &self
            .running
            .as_ref()
            .expect("the server is running")
            .platform
    }

    /// Stop the server (drain, stop every instance).
    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

impl Api {
    fn of(running: &shoal_server::Running) -> Api {
        Api {
            gateway: running.gateway_addr,
            control: running.control_addr,
            token: running.token.clone(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Send one request.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(body.into()))
            .expect("a valid request");
        let started = Instant::now();
        let response = self
            .client
            .request(request)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e:?}"));
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{url}: reading the body: {e}"))
            .to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
            elapsed: started.elapsed(),
        }
    }

    pub fn gateway_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway)
    }

    pub fn control_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.control)
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// GET on the public gateway.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, &self.gateway_url(path), &[], Bytes::new())
            .await
    }

    /// POST on the public gateway.
    pub async fn post(&self, path: &str, body: impl Into<Bytes>) -> Reply {
        self.send(
            Method::POST,
            &self.gateway_url(path),
            &[("content-type", "application/json")],
            body,
        )
        .await
    }

    /// A control API request with the admin token.
    pub async fn control(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let bearer = self.bearer();
        let mut all = vec![("authorization", bearer.as_str())];
        all.extend_from_slice(headers);
        self.send(method, &self.control_url(path), &all, body).await
    }

    /// One SQS action (`X-Amz-Target: AmazonSQS.<action>`, JSON protocol) with the admin
    /// token, answered however the daemon answers it.
    pub async fn sqs(&self, action: &str, request: &Value) -> Reply {
        let target = format!("AmazonSQS.{action}");
        self.control(
            Method::POST,
            "/",
            &[
                ("x-amz-target", target.as_str()),
                ("content-type", "application/x-amz-json-1.0"),
            ],
            request.to_string(),
        )
        .await
    }

    /// One SQS action that must succeed; its JSON answer.
    pub async fn sqs_ok(&self, action: &str, request: &Value) -> Value {
        let reply = self.sqs(action, request).await;
        assert_eq!(reply.status, StatusCode::OK, "{action}: {}", reply.text());
        reply.json()
    }

    /// GET on the control API, which must answer 200 with JSON.
    pub async fn admin_get(&self, path: &str) -> Value {
        let reply = self.control(Method::GET, path, &[], Bytes::new()).await;
        assert_eq!(reply.status, StatusCode::OK, "GET {path}: {}", reply.text());
        reply.json()
    }

    /// The Lambda Invoke API (synchronous).
    pub async fn invoke(&self, name: &str, payload: &Value) -> Reply {
        self.invoke_raw(name, &[], payload.to_string()).await
    }

    pub async fn invoke_raw(
        &self,
        name: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let path = format!("/2015-03-31/functions/{name}/invocations");
        self.control(Method::POST, &path, headers, body).await
    }

    /// Deploy an archive as is.
    pub async fn deploy_archive(&self, archive: Vec<u8>) -> (StatusCode, Value) {
        let reply = self
            .control(Method::POST, "/admin/functions", &[], archive)
            .await;
        let json = serde_json::from_slice(&reply.body).unwrap_or(Value::String(reply.text()));
        (reply.status, json)
    }

    /// Pack a function directory and deploy it.
    pub async fn deploy_dir(&self, dir: &Path) -> (StatusCode, Value) {
        let archive = shoal_server::pack_dir(dir).expect("packing the function directory");
        self.deploy_archive(archive).await
    }

    /// Write `files` (relative path, contents) into a fresh directory and deploy it.
    pub async fn deploy_files(&self, files: &[(&str, &str)]) -> (StatusCode, Value) {
        let dir = function_dir(files);
        self.deploy_dir(dir.path()).await
    }

    /// Deploy `files`, which must succeed.
    pub async fn deploy_ok(&self, files: &[(&str, &str)]) -> Value {
        let (status, body) = self.deploy_files(files).await;
        assert_eq!(status, StatusCode::CREATED, "deploy: {body}");
        body
    }

    /// `GET /admin/status?function=NAME`: the function's pools.
    pub async fn status(&self, name: &str) -> Vec<Value> {
        let status = self
            .admin_get(&format!("/admin/status?function={name}"))
            .await;
        status["pools"].as_array().expect("pools").clone()
    }

    /// The decisions of `kind` (its stable name, e.g. `scale_out`) in a pool's history.
    pub fn decisions<'a>(pool: &'a Value, kind: &str) -> Vec<&'a Value> {
        pool["decisions"]
            .as_array()
            .expect("decisions")
            .iter()
            .filter(|d| d["kind"] == kind)
            .collect()
    }

    /// The host pid of instance `id` of `function` (from the status listing).
    pub async fn host_pid(&self, function: &str, id: &str) -> u64 {
        let instances = self.instances(function).await;
        instances
            .iter()
            .find(|i| i["id"] == id)
            .and_then(|i| i["pid"].as_u64())
            .unwrap_or_else(|| panic!("no instance {id} of {function}: {instances:?}"))
    }

    /// Every instance of every pool of the function.
    pub async fn instances(&self, name: &str) -> Vec<Value> {
        self.status(name)
            .await
            .iter()
            .flat_map(|p| p["instances"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// The ready pids of the warm pool, over its shapes (`/admin/status`).
    pub async fn warm_ready(&self) -> Vec<u64> {
        let status = self.admin_get("/admin/status").await;
        status["warm_pool"]
            .as_array()
            .expect("warm_pool")
            .iter()
            .flat_map(|s| s["ready_pids"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p.as_u64())
            .collect()
    }

    /// Poll the warm pool until `done` holds of its ready pids; panics after [`PATIENCE`].
    pub async fn wait_for_warm(&self, done: impl Fn(&[u64]) -> bool) -> Vec<u64> {
        poll_until(
            "the warm pool",
            PATIENCE,
            async || self.warm_ready().await,
            |r| done(r),
        )
        .await
    }

    /// Poll the function's status until `done` holds; panics with the last status after
    /// `within` (usually [`PATIENCE`]).
    pub async fn wait_for_status(
        &self,
        name: &str,
        within: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let what = format!("status of {name}");
        poll_until(&what, within, async || self.status(name).await, |p| done(p)).await
    }
}

/// Fetch every 50 ms until `done` holds of what came; panics with the last value after
/// `within`.
async fn poll_until<T: std::fmt::Debug>(
    what: &str,
    within: Duration,
    mut fetch: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let value = fetch().await;
        if done(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never settled: {value:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh directory holding `files` (relative path, contents).
pub fn function_dir(files: &[(&str, &str)]) -> TempDir {
    let dir = TempDir::new("f");
    for (name, contents) in files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("creating a folder");
        }
        std::fs::write(&path, contents).expect("writing a function file");
    }
    dir
}

/// The repository's `examples/<name>` directory.
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

/// Whether a process with this pid still exists.
pub fn process_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Pids of instances in a status listing (the host's pids: inside its sandbox an instance
/// sees other numbers, so handlers in these tests answer with their instance id instead,
/// see [`WHO`]).
pub fn pids(instances: &[Value]) -> Vec<u64> {
    instances.iter().filter_map(|i| i["pid"].as_u64()).collect()
}

/// Ids of instances in a status listing.
pub fn ids(instances: &[Value]) -> Vec<String> {
    instances
        .iter()
        .filter_map(|i| i["id"].as_str().map(str::to_owned))
        .collect()
}

/// What a test handler returns to say which instance answered: its instance id (Lambda's
/// log stream name). `process.pid` would be its pid inside its own pid namespace.
pub const WHO: &str = "process.env.AWS_LAMBDA_LOG_STREAM_NAME";

impl Api {
    /// `GET /admin/functions/NAME/logs?since=0`: every record the function has logged.
    pub async fn logs(&self, name: &str) -> Vec<Value> {
        let logs = self
            .admin_get(&format!("/admin/functions/{name}/logs?since=0"))
            .await;
        logs["records"].as_array().expect("records").clone()
    }

    /// Poll the function's logs until a record satisfies `wanted` (lines reach the log
    /// from the instance's stdout pump, after the response may already be out).
    pub async fn wait_for_log(
        &self,
        name: &str,
        within: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let records = self.logs(name).await;
            if let Some(record) = records.iter().find(|r| wanted(r)) {
                return record.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no such log record of {name}; have: {records:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A successful Invoke API answer's JSON.
pub fn success(reply: &Reply) -> Value {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.header("x-amz-function-error"),
        None,
        "{}",
        reply.text()
    );
    reply.json()
}

/// The Invoke API's answer for a failed invocation: 200 with `X-Amz-Function-Error`.
/// Returns (errorType, errorMessage).
pub fn function_error(reply: &Reply) -> (String, String) {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.header("x-amz-function-error"),
        Some("Unhandled"),
        "{}",
        reply.text()
    );
    let body = reply.json();
    (
        body["errorType"].as_str().unwrap_or_default().to_owned(),
        body["errorMessage"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Wait until `pid` is gone; panics after `within`.
pub async fn wait_gone(pid: u64, within: Duration) -> Duration {
    let started = Instant::now();
    while process_alive(pid) {
        assert!(
            started.elapsed() < within,
            "process {pid} still runs after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Resident memory of this process, which runs the server, in KiB.
pub fn own_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Run `work`, sampling this process's RSS meanwhile; its output and the peak in KiB.
pub async fn peak_rss_during<T>(work: impl std::future::Future<Output = T>) -> (T, u64) {
    let mut peak = own_rss_kib();
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return (out, peak.max(own_rss_kib())),
            _ = tokio::time::sleep(Duration::from_millis(20)) => peak = peak.max(own_rss_kib()),
        }
    }
}

/// The function's log lines (message text only), up to the last 100,000.
pub async fn log_lines(server: &TestServer, function: &str) -> Vec<String> {
    let page = server
        .admin_get(&format!("/admin/functions/{function}/logs?tail=100000"))
        .await;
    page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// `promtool check metrics` on a scrape: whether it passed, and what it said. promtool is
/// Debian's prometheus package; `.ci/run` installs it.
#[allow(clippy::disallowed_methods)] // runs promtool; the daemon itself spawns nothing here
pub fn promtool_check(text: &str) -> (bool, String) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; .ci/run installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// Run one of `tests/sdk/`'s scripts (`program script endpoint key_id secret`) against
/// the server's control listener with a key the platform issued, and check that it
/// passed: it exits 0 and reports ` passed, 0 failed`.
pub async fn run_sdk_script(server: &TestServer, program: &'static str, script: &'static str) {
    let endpoint = format!("http://{}", server.control);
    let key = server.platform().create_key("sdk").unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(script);
    let output = tokio::task::spawn_blocking(move || {
        // Starting the SDK client is this helper's job; the rule that only shoal-runtime
        // spawns processes is about the daemon's own code.
        #[allow(clippy::disallowed_methods)]
        std::process::Command::new(program)
            .arg(path)
            .args([&endpoint, &key.access_key_id, &key.secret_access_key])
            .output()
            .unwrap_or_else(|e| panic!("running {program} (the SDK tests need it on PATH): {e}"))
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}\n{stderr}");
}
