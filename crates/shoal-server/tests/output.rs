//! Fault injection through what a function prints or returns, against a real server and
//! real instances: output floods (one endless line, thousands of long lines), answers
//! over Lambda's 6 MB limit (returned, forged on the native channel, posted to the Runtime
//! API), and proxy results that try to frame the gateway's response themselves. Each
//! attack once worked; each test checks that the daemon stays small, the damage stays in
//! the one call, and the function keeps serving. docs/RELIABILITY.md maps them.

mod support;

use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde_json::json;
use support::{
    function_dir, function_error, own_rss_kib, peak_rss_during, process_alive, success, TestServer,
    PATIENCE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Lambda's response limit, which the daemon holds on both channels.
const MAX_RESPONSE: u64 = 6_291_556;
const MIB: u64 = 1024 * 1024;

fn too_large(size: u64) -> String {
    format!(
        "Response payload size ({size} bytes) exceeded maximum allowed payload size ({MAX_RESPONSE} bytes)."
    )
}

/// Run `call` while sampling this process's RSS; its result and the peak growth in MiB.
async fn peak_growth<T>(call: impl std::future::Future<Output = T>) -> (T, u64) {
    let before = own_rss_kib();
    let (result, peak) = peak_rss_during(call).await;
    (result, peak.saturating_sub(before) / 1024)
}

const LOUD: &str = r#"
exports.handler = async (event) => {
  if (event.flood === 'one line') {
    const chunk = 'x'.repeat(1 << 20);
    for (let i = 0; i < event.mib; i++) process.stdout.write(chunk);
    process.stdout.write('\nafter the flood\n');
  }
  if (event.flood === 'long lines') {
    const line = 'y'.repeat(event.bytes) + '\n';
    for (let i = 0; i < event.lines; i++) process.stdout.write(line);
    process.stdout.write('after the lines\n');
  }
  return { pid: process.env.AWS_LAMBDA_LOG_STREAM_NAME };
};
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_flooding_its_output_leaves_the_daemon_small_and_its_log_capped() {
    const CAP: u64 = 4 * MIB;
    const LINE_CAP: u64 = 64 * 1024;
    let server = TestServer::start_with(|config| config.max_log_bytes = CAP).await;
    let manifest =
        "[functions.loud]\nruntime = \"nodejs\"\nhandler = \"index.handler\"\ntimeout = \"120s\"\n";
    server
        .deploy_ok(&[("index.js", LOUD), ("shoal.toml", manifest)])
        .await;
    let pid = success(&server.invoke("loud", &json!({})).await)["pid"].clone();

    // 200 MiB without a newline: read_until held all of it (400 MiB took the daemon from
    // 10 to 420 MiB). Now one line of 64 KiB is the most a stream holds.
    let flood = json!({ "flood": "one line", "mib": 200 });
    let (reply, grew_mib) = peak_growth(async {
        let reply = server.invoke("loud", &flood).await;
        // The call returns once the pipe took the last bytes; the log has them a moment later.
        server
            .wait_for_log("loud", PATIENCE, |r| r["message"] == "after the flood")
            .await;
        reply
    })
    .await;
    assert_eq!(success(&reply)["pid"], pid);
    assert!(grew_mib < 32, "the daemon grew by {grew_mib} MiB");
    let records = server.logs("loud").await;
    let cut: Vec<&str> = records
        .iter()
        .filter_map(|r| r["message"].as_str())
        .filter(|m| m.starts_with("xxx"))
        .collect();
    assert_eq!(cut.len(), 1, "one record for the one line");
    let dropped = 200 * MIB - LINE_CAP;
    assert_eq!(
        cut[0].len() as u64,
        LINE_CAP + format!("… [truncated {dropped} bytes]").len() as u64
    );
    assert!(cut[0].ends_with(&format!("… [truncated {dropped} bytes]")));

    // 3,200 lines of 65 KiB: 208 MB of log in seconds, uncapped. Each record is now cut
    // at 64 KiB and the log rotates at its cap, keeping one old file.
    const LONG: u64 = 65 * 1024;
    let flood = json!({ "flood": "long lines", "bytes": LONG, "lines": 3200 });
    let (reply, grew_mib) = peak_growth(async {
        let reply = server.invoke("loud", &flood).await;
        wait_for_last_record(&server, "loud", "after the lines").await;
        reply
    })
    .await;
    assert_eq!(success(&reply)["pid"], pid);
    assert!(grew_mib < 32, "the daemon grew by {grew_mib} MiB");
    let logs = server.data_dir().join("logs");
    let entries: Vec<_> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let size = |name: &str| std::fs::metadata(logs.join(name)).map_or(0, |m| m.len());
    // One record (64 KiB of text, JSON-encoded) may go past the cap, no more.
    let slack = 2 * LINE_CAP;
    assert!(size("loud.log") <= CAP + slack, "{entries:?}");
    assert!(size("loud.log.1") > CAP / 2, "rotated: {entries:?}");
    assert!(size("loud.log.1") <= CAP + slack, "{entries:?}");
    assert!(
        !entries.iter().any(|e| e.ends_with(".log.2")),
        "{entries:?}"
    );
    let page = server.admin_get("/admin/functions/loud/logs?tail=3").await;
    let records = page["records"].as_array().unwrap();
    assert_eq!(records.len(), 3);
    for record in &records[..2] {
        let message = record["message"].as_str().unwrap();
        assert!(
            message.ends_with(&format!("… [truncated {} bytes]", LONG - LINE_CAP)),
            "{:.80}",
            message
        );
    }
    // `shoal logs -f` from the start of the log: the oldest record kept, not a stall.
    let from_zero = server.logs("loud").await;
    assert!(!from_zero.is_empty());

    assert_eq!(
        success(&server.invoke("loud", &json!({})).await)["pid"],
        pid
    );
    server.shutdown().await;
}

/// Poll the function's last log record until it is `message`: lines reach the log a
/// moment after the call that printed them returned.
async fn wait_for_last_record(server: &TestServer, name: &str, message: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let tail = server
            .admin_get(&format!("/admin/functions/{name}/logs?tail=1"))
            .await;
        if tail["records"][0]["message"] == message {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the last record of {name} is not {message:?}: {:.200}",
            tail.to_string()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A handler that answers in ways the bootstrap would not: it finds the bootstrap's
/// channel socket and its own invocation id, as any code in the process can, and writes
/// frames of its own.
const BIG: &str = r#"
const net = require('node:net');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const channel = () => process._getActiveHandles().find((h) =>
  h instanceof net.Socket && h !== process.stdout && h !== process.stderr && h !== process.stdin);
const ownId = (context) => context[Object.getOwnPropertySymbols(context)
  .find((s) => s.description === 'shoal.invocationId')];
const header = (id, len) => {
  const b = Buffer.alloc(9);
  b.writeUInt32BE(len + 5, 0);
  b[4] = 4; // RESULT
  b.writeUInt32BE(id, 5);
  return b;
};
exports.handler = async (request, context) => {
  // From the Invoke API the event itself; from the gateway, the query string.
  const event = request.queryStringParameters || request;
  const len = (Number(event.mib) || 0) * 1048576;
  switch (event.answer) {
    case 'return':
      return 'x'.repeat(len);
    case 'forge':
      // A whole RESULT frame of `len` bytes for this call.
      await new Promise((r) => channel().write(Buffer.concat([header(ownId(context), len), Buffer.alloc(len, 0x78)]), r));
      return 'the daemon has answered already';
    case 'announce':
      // Only the header of a RESULT too large to read past.
      await new Promise((r) => channel().write(header(ownId(context), len), r));
      await sleep(60000);
      return 'never';
    case 'slow':
      await sleep(event.ms);
      return { pid: process.env.AWS_LAMBDA_LOG_STREAM_NAME };
    default:
      return { pid: process.env.AWS_LAMBDA_LOG_STREAM_NAME };
  }
};
"#;

/// A provided runtime that posts answers of the size each event asks for, with a
/// `content-length` or chunked, and reports the statuses the Runtime API gave it.
const BIG_PROVIDED: &str = r#"#!/usr/bin/env node
const http = require('node:http');
const [host, port] = process.env.AWS_LAMBDA_RUNTIME_API.split(':');
const base = '/2018-06-01/runtime/invocation/';
const call = (method, path, write) => new Promise((resolve) => {
  const req = http.request({ host, port, method, path }, (res) => {
    res.resume();
    res.on('end', () => resolve({ status: res.statusCode, headers: res.headers }));
  });
  req.on('error', (e) => resolve({ status: e.code }));
  if (write) write(req); else req.end();
});
const statuses = [];
(async () => {
  for (;;) {
    const next = await new Promise((resolve) => {
      http.get({ host, port, path: base + 'next' }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ headers: res.headers, event: JSON.parse(Buffer.concat(chunks)) }));
      });
    });
    const id = next.headers['lambda-runtime-aws-request-id'];
    const event = next.event;
    let body = JSON.stringify({ statuses, pid: process.pid });
    if (event.size) body = JSON.stringify('z'.repeat(event.size - 2));
    const answered = await call('POST', base + id + '/response', (req) => {
      if (event.chunked) { // no content-length: the daemon has to count
        req.write(body.slice(0, 1000));
        req.end(body.slice(1000));
      } else {
        req.setHeader('content-length', Buffer.byteLength(body));
        req.end(body);
      }
    });
    statuses.push(answered.status);
  }
})();
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_the_limit_fail_only_their_own_call_with_lambdas_error() {
    let server = TestServer::start().await;
    let manifest = r#"
[functions.big]
runtime = "nodejs"
handler = "index.handler"
memory = 512
concurrency = 4
max_instances = 1
http = [{ method = "GET", path = "/big" }]
"#;
    server
        .deploy_ok(&[("index.js", BIG), ("shoal.toml", manifest)])
        .await;
    // Which instance answered (its id: inside its pid namespace its pid means nothing
    // here), and its host pid from the status listing.
    let id = success(&server.invoke("big", &json!({})).await)["pid"].clone();
    let pid = server.host_pid("big", id.as_str().unwrap()).await;

    // A neighbour in flight on the same instance throughout.
    let neighbour = {
        let api = server.api.clone();
        tokio::spawn(async move {
            api.invoke("big", &json!({ "answer": "slow", "ms": 1500 }))
                .await
        })
    };
    // Returned: the bootstrap itself refuses to send it.
    let returned = server
        .invoke("big", &json!({ "answer": "return", "mib": 7 }))
        .await;
    assert_eq!(
        function_error(&returned),
        (
            "Function.ResponseSizeTooLarge".into(),
            too_large(7 * MIB + 2)
        )
    );
    // Forged on the channel: the daemon reads the header, fails the call and reads past
    // the 60 MiB without keeping them (60 MiB used to be served).
    let (forged, grew_mib) =
        peak_growth(server.invoke("big", &json!({ "answer": "forge", "mib": 60 }))).await;
    assert_eq!(
        function_error(&forged),
        ("Function.ResponseSizeTooLarge".into(), too_large(60 * MIB))
    );
    assert!(grew_mib < 32, "the daemon grew by {grew_mib} MiB");
    assert_eq!(success(&neighbour.await.unwrap())["pid"], id);
    assert_eq!(success(&server.invoke("big", &json!({})).await)["pid"], id);
    // The gateway answers it like any function error.
    let reply = server.get("/big?answer=forge&mib=60").await;
    assert_eq!(
        (reply.status, reply.json()),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "message": "Internal Server Error" })
        )
    );
    server
        .wait_for_log("big", PATIENCE, |r| {
            r["stream"] == "platform" && r["message"] == too_large(60 * MIB)
        })
        .await;

    // Announced beyond what the channel reads past: that call fails the same way, then
    // the instance is stopped and its neighbour is told why.
    let neighbour = {
        let api = server.api.clone();
        tokio::spawn(async move {
            api.invoke("big", &json!({ "answer": "slow", "ms": 60000 }))
                .await
        })
    };
    server
        .wait_for_status("big", PATIENCE, |pools| {
            pools.iter().any(|p| {
                p["instances"]
                    .as_array()
                    .is_some_and(|i| i.iter().any(|i| i["in_flight"] == 1))
            })
        })
        .await;
    let announced = server
        .invoke("big", &json!({ "answer": "announce", "mib": 100 }))
        .await;
    assert_eq!(
        function_error(&announced),
        ("Function.ResponseSizeTooLarge".into(), too_large(100 * MIB))
    );
    let (error_type, message) = function_error(&neighbour.await.unwrap());
    assert_eq!(error_type, "Runtime.ExitError", "{message}");
    assert!(
        message.contains("the daemon stopped it")
            && message.contains("more than the channel allows"),
        "{message}"
    );
    let started = Instant::now();
    while process_alive(pid) {
        assert!(started.elapsed() < PATIENCE, "process {pid} still runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server
        .wait_for_log("big", PATIENCE, |r| {
            r["stream"] == "platform"
                && r["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("stopped: the daemon stopped it"))
        })
        .await;
    // The pool learns of the exit from its own watcher, a moment after the process is gone.
    server
        .wait_for_status("big", PATIENCE, |pools| {
            pools.iter().all(|p| {
                p["instances"]
                    .as_array()
                    .is_some_and(|i| i.iter().all(|i| i["pid"].as_u64() != Some(pid)))
            })
        })
        .await;
    assert_ne!(success(&server.invoke("big", &json!({})).await)["pid"], id);

    // The Runtime API holds the same limit, measured with or without a content-length.
    let dir = function_dir(&[
        ("bootstrap", BIG_PROVIDED),
        ("shoal.toml", "[functions.posted]\nruntime = \"provided\"\n"),
    ]);
    {
        use std::os::unix::fs::PermissionsExt;
        let bootstrap = dir.path().join("bootstrap");
        std::fs::set_permissions(&bootstrap, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (status, body) = server.deploy_dir(dir.path()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for chunked in [false, true] {
        let reply = server
            .invoke("posted", &json!({ "size": 7_000_000, "chunked": chunked }))
            .await;
        assert_eq!(
            function_error(&reply),
            ("Function.ResponseSizeTooLarge".into(), too_large(7_000_000)),
            "chunked: {chunked}"
        );
    }
    let at_limit = server
        .invoke("posted", &json!({ "size": MAX_RESPONSE, "chunked": true }))
        .await;
    assert_eq!(
        success(&at_limit).as_str().map(str::len),
        Some(MAX_RESPONSE as usize - 2)
    );
    let report = success(&server.invoke("posted", &json!({})).await);
    assert_eq!(report["statuses"], json!([413, 413, 202]), "{report}");
    server.shutdown().await;
}

const HOSTILE_PROXY: &str = r#"
const SMUGGLED = 'HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled';
exports.handler = async (event) => {
  switch (event.pathParameters.mode) {
    case 'split':
      return { statusCode: 200, body: SMUGGLED,
        headers: { 'content-length': '0', 'transfer-encoding': 'chunked', connection: 'close' } };
    case 'headers': {
      const headers = {};
      for (let i = 0; i < 100000; i++) headers['x-h-' + i] = 'v';
      return { statusCode: 200, headers, body: 'x' };
    }
    case 'switch':
      return { statusCode: 101, headers: { upgrade: 'websocket', connection: 'upgrade' } };
    default:
      return { statusCode: 200, body: 'ok' };
  }
};
"#;

/// One response as read off the wire: status line, headers (names lower-cased), body.
type Written = (String, Vec<(String, String)>, Vec<u8>);

/// What a server wrote on one connection, split into responses by its own framing, as the
/// next hop would read it.
fn split_responses(mut wire: &[u8]) -> Vec<Written> {
    let mut responses = Vec::new();
    while !wire.is_empty() {
        let end = wire
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no header block in {:?}", String::from_utf8_lossy(wire)));
        let head = std::str::from_utf8(&wire[..end]).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().to_owned();
        assert!(
            status.starts_with("HTTP/1.1 "),
            "not a status line: {status:?}"
        );
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let lengths: Vec<usize> = headers
            .iter()
            .filter(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .collect();
        assert_eq!(lengths.len(), 1, "{headers:?}");
        wire = &wire[end + 4..];
        responses.push((status, headers, wire[..lengths[0]].to_vec()));
        wire = &wire[lengths[0]..];
    }
    responses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_result_cannot_split_the_gateways_response_or_bring_it_down() {
    let server = TestServer::start().await;
    let manifest = r#"
[functions.hostile]
runtime = "nodejs"
handler = "index.handler"
http = [{ method = "GET", path = "/hostile/{mode}" }]
"#;
    server
        .deploy_ok(&[("index.js", HOSTILE_PROXY), ("shoal.toml", manifest)])
        .await;

    // Two requests on one connection: a proxy or client in front must read two answers.
    let mut connection = tokio::net::TcpStream::connect(server.gateway)
        .await
        .unwrap();
    connection
        .write_all(
            b"GET /hostile/split HTTP/1.1\r\nhost: x\r\n\r\n\
              GET /hostile/ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut wire = Vec::new();
    tokio::time::timeout(PATIENCE, connection.read_to_end(&mut wire))
        .await
        .expect("the gateway closes after the second answer")
        .unwrap();
    let responses = split_responses(&wire);
    assert_eq!(responses.len(), 2, "{:?}", String::from_utf8_lossy(&wire));
    let smuggled = "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled";
    assert_eq!(responses[0].0, "HTTP/1.1 200 OK");
    assert_eq!(responses[0].2, smuggled.as_bytes());
    assert!(responses[0]
        .1
        .iter()
        .all(|(n, v)| n != "transfer-encoding" && !(n == "connection" && v == "close")));
    assert_eq!(responses[1].2, b"ok");

    // 100,000 headers panicked a daemon task; a 101 is not the function's to send.
    for (mode, why) in [
        ("headers", "more than 100 header lines"),
        ("switch", "`statusCode` 101 is informational"),
    ] {
        let reply = server.get(&format!("/hostile/{mode}")).await;
        assert_eq!(
            (reply.status, reply.json()),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "message": "Internal Server Error" })
            ),
            "{mode}"
        );
        server
            .wait_for_log("hostile", PATIENCE, |r| {
                r["stream"] == "platform" && r["message"].as_str().is_some_and(|m| m.contains(why))
            })
            .await;
    }
    assert_eq!(server.get("/hostile/ok").await.text(), "ok");
    server.shutdown().await;
}
