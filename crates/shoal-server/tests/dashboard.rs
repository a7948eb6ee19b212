//! The live dashboard in a real browser: Debian's `chromium`, headless, driven through
//! `chromedriver` (package `chromium-driver`; `.ci/run` installs both) over the WebDriver
//! protocol. It logs in with a one-time link, sees the deployed function, watches a burst
//! raise its instance count and in-flight calls, opens the decision history, saves
//! screenshots (`$CARGO_TARGET_TMPDIR/dashboard-burst.png` during the burst, also to
//! `$SHOAL_SCREENSHOT` when set, and `dashboard.png` after it) and checks that the page logged no error to its console. The login's rules (one use,
//! a read-only session, no token in the link) are checked with plain HTTP.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use support::{Api, TestServer, PATIENCE};

/// A chromedriver we started, stopped (by its own pid) when dropped.
struct Driver {
    child: Child,
    base: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(clippy::disallowed_methods)] // starts chromedriver; the daemon spawns nothing here
fn start_driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver; .ci/run installs it)");
    Driver {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// One WebDriver session.
struct Browser<'a> {
    api: &'a Api,
    url: String,
}

impl Browser<'_> {
    async fn call(&self, method: Method, path: &str, body: Value) -> Value {
        let body = if method == Method::POST {
            bytes::Bytes::from(body.to_string())
        } else {
            bytes::Bytes::new()
        };
        let reply = self
            .api
            .send(
                method,
                &format!("{}{path}", self.url),
                &[("content-type", "application/json")],
                body,
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
        reply.json()["value"].clone()
    }

    async fn script(&self, script: &str) -> Value {
        self.call(
            Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
        .await
    }

    /// Poll `script` (which returns a value or null) until it returns something `ok` takes.
    async fn wait_for(&self, what: &str, script: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.script(script).await;
            if ok(&value) {
                return value;
            }
            assert!(Instant::now() < deadline, "{what}: last saw {value}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

const FUNCTION_ROW: &str = r#"
const row = document.querySelector('#functions tr[data-function="hello"]');
return row ? { instances: Number(row.querySelector('.instances').textContent),
               inFlight: Number(row.querySelector('.in-flight').textContent) } : null;"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_a_burst_live_in_a_real_browser() {
    let server = TestServer::start().await;
    // The seed's shape (a little CPU, then a wait), with a 5 s wait: the page polls once a
    // second, and a busy machine may slow the browser; the burst must outlast both.
    let handler = r#"
exports.handler = async () => {
  let x = 0; for (let i = 0; i < 1e6; i++) x += i;
  await new Promise((resolve) => setTimeout(resolve, 5000));
  return { statusCode: 200, body: String(x) };
};
"#;
    let manifest = "[functions.hello]\nruntime = \"nodejs\"\nhandler = \"index.handler\"\nmemory = \"512MiB\"\nhttp = [{ method = \"GET\", path = \"/helloWorld\" }]\n";
    server
        .deploy_ok(&[("index.js", handler), ("shoal.toml", manifest)])
        .await;

    // A login link carries a one-time code, never the token.
    let login = server
        .control(
            Method::POST,
            "/admin/dashboard/login",
            &[],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(login.status, StatusCode::CREATED, "{}", login.text());
    let login_url = login.json()["login_url"]
        .as_str()
        .expect("login_url")
        .to_owned();
    assert!(!login_url.contains(&server.token), "{login_url}");

    let driver = start_driver();
    let deadline = Instant::now() + PATIENCE;
    loop {
        // `send` insists on an answer: knock first.
        let listening = tokio::net::TcpStream::connect(driver.base.trim_start_matches("http://"))
            .await
            .is_ok();
        if listening
            && server
                .send(Method::GET, &format!("{}/status", driver.base), &[], "")
                .await
                .json()["value"]["ready"]
                == true
        {
            break;
        }
        assert!(Instant::now() < deadline, "chromedriver did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let capabilities = json!({ "capabilities": { "alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000"]
        },
        "goog:loggingPrefs": { "browser": "ALL" }
    }}});
    let session = server
        .send(
            Method::POST,
            &format!("{}/session", driver.base),
            &[("content-type", "application/json")],
            capabilities.to_string(),
        )
        .await;
    assert_eq!(session.status, StatusCode::OK, "{}", session.text());
    let id = session.json()["value"]["sessionId"]
        .as_str()
        .expect("sessionId")
        .to_owned();
    let browser = Browser {
        api: &server.api,
        url: format!("{}/session/{id}", driver.base),
    };

    // Log in: the link sets the session cookie (out of the page's reach) and lands on
    // the dashboard, which lists the function, scaled to zero.
    browser
        .call(Method::POST, "/url", json!({ "url": login_url }))
        .await;
    let before = browser
        .wait_for("the function's row", FUNCTION_ROW, |v| !v.is_null())
        .await;
    assert_eq!(before["instances"], 0, "{before}");
    assert_eq!(before["inFlight"], 0, "{before}");
    let path = browser.script("return location.pathname").await;
    assert_eq!(path, "/dashboard");
    assert_eq!(browser.script("return document.cookie").await, "");

    // A burst: the page shows an instance and calls in flight, then none in flight.
    let burst: Vec<_> = (0..10)
        .map(|_| {
            let api = server.api.clone();
            tokio::spawn(async move { api.get("/helloWorld").await })
        })
        .collect();
    let during = browser
        .wait_for("calls in flight", FUNCTION_ROW, |v| {
            v["inFlight"].as_u64().unwrap_or(0) > 0 && v["instances"].as_u64().unwrap_or(0) > 0
        })
        .await;
    let instance_row = browser
        .wait_for(
            "an instance row",
            "const r = document.querySelector('tr[data-instance]'); return r ? r.textContent : null;",
            |v| v.as_str().is_some_and(|t| t.contains("hello-")),
        )
        .await;
    // The page during the burst (docs/dashboard.png is one like it).
    let during_png = screenshot(&browser).await;
    std::fs::write(out_dir().join("dashboard-burst.png"), &during_png).expect("saving");
    if let Ok(path) = std::env::var("SHOAL_SCREENSHOT") {
        std::fs::write(&path, &during_png).expect("saving the screenshot");
    }
    for reply in burst {
        let reply = reply.await.expect("request");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    browser
        .wait_for("the burst to end", FUNCTION_ROW, |v| v["inFlight"] == 0)
        .await;
    browser
        .wait_for(
            "the bill of the burst",
            "const r = document.querySelector('#cost tr[data-function=\"hello\"] td:nth-child(2)'); return r ? Number(r.textContent) : null;",
            |v| v.as_u64() == Some(10),
        )
        .await;

    // The decision history opens, and stays open across the next redraws.
    browser
        .script("document.querySelector('details.decisions summary').click(); return null;")
        .await;
    let decisions = browser
        .wait_for(
            "the decision history",
            "const d = document.querySelector('details.decisions'); return d && d.open ? [...d.querySelectorAll('li')].map(li => li.textContent) : null;",
            |v| v.as_array().is_some_and(|a| !a.is_empty()),
        )
        .await;
    // The burst on a cold function is the first decision: a scale-out.
    assert!(decisions.to_string().contains("scale_out"), "{decisions}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        browser
            .script("return document.querySelector('details.decisions').open")
            .await,
        true
    );

    // The page after the burst, with its decision history open.
    let out = out_dir().join("dashboard.png");
    std::fs::write(&out, screenshot(&browser).await).expect("saving the screenshot");

    // No console errors; a probe shows the console really is being read.
    browser
        .script("console.warn('shoal-probe'); return null;")
        .await;
    let logs = browser
        .call(Method::POST, "/se/log", json!({ "type": "browser" }))
        .await;
    let entries = logs.as_array().expect("log entries");
    assert!(
        entries.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("shoal-probe"))),
        "the console probe is missing: {logs}"
    );
    let errors: Vec<&Value> = entries.iter().filter(|e| e["level"] == "SEVERE").collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    browser.call(Method::DELETE, "", Value::Null).await;
    drop(driver);
    eprintln!("during the burst: {during}, {instance_row}; screenshot at {out:?}");

    // Plain HTTP: a code works once; its session reads but never changes anything.
    let code_url = |reply: &support::Reply| {
        reply.json()["login_url"]
            .as_str()
            .expect("login_url")
            .to_owned()
    };
    let again = server
        .send(Method::GET, &login_url, &[], bytes::Bytes::new())
        .await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED, "{}", again.text());
    let fresh = server
        .control(
            Method::POST,
            "/admin/dashboard/login",
            &[],
            bytes::Bytes::new(),
        )
        .await;
    let landed = server
        .send(Method::GET, &code_url(&fresh), &[], bytes::Bytes::new())
        .await;
    assert_eq!(landed.status, StatusCode::SEE_OTHER);
    let cookie = landed
        .header("set-cookie")
        .expect("a session cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().expect("name=value").to_owned();
    let read = server
        .send(
            Method::GET,
            &server.control_url("/admin/status"),
            &[("cookie", pair.as_str())],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(read.status, StatusCode::OK);
    let delete = server
        .send(
            Method::DELETE,
            &server.control_url("/admin/functions/hello"),
            &[("cookie", pair.as_str())],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(delete.status, StatusCode::UNAUTHORIZED);
    let stranger = server
        .send(
            Method::GET,
            &server.control_url("/admin/status"),
            &[("cookie", "shoal_session=guess")],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(stranger.status, StatusCode::UNAUTHORIZED);
    server.shutdown().await;
}

/// Where the screenshots go: the test's output directory.
fn out_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

async fn screenshot(browser: &Browser<'_>) -> Vec<u8> {
    let png = browser.call(Method::GET, "/screenshot", Value::Null).await;
    let png = base64_decode(png.as_str().expect("base64"));
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    png
}

/// Standard base64 (what WebDriver's screenshot returns), without a crate for it.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
