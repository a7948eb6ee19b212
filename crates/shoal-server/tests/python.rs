//! Black-box tests of Python functions: a real server, real `python3` instances running
//! Shoal's Python bootstrap (inside the sandbox where the machine has one), plain HTTP and
//! the Invoke API, as a user would.

mod support;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde_json::{json, Value};
use support::{example, function_error, success, Api, Reply, TestServer, PATIENCE};

/// The hello handlers wait this long after their CPU work.
const HELLO_SLEEP: Duration = Duration::from_millis(2000);
/// An upper bound on each call of a burst of ten hello calls sharing one instance: about
/// 3.5 s on an idle machine (the ten sums of ~150 ms take turns), over 4× that here so a
/// busy machine never trips it, and still below the 20 s the calls would take one after
/// another: a later answer means the instance did not run them concurrently.
const HELLO_BOUND: Duration = Duration::from_secs(15);

async fn burst_get(api: &Api, n: usize, path: &'static str) -> Vec<Reply> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move { api.get(path).await })
        })
        .collect();
    let mut replies = Vec::with_capacity(n);
    for task in tasks {
        replies.push(task.await.expect("request task"));
    }
    replies
}

/// Ten concurrent calls of one of the example's routes: they share one instance.
async fn ten_share_one_instance(server: &TestServer, function: &str, path: &'static str) {
    let replies = burst_get(server, 10, path).await;
    let mut instances = HashSet::new();
    let mut invocations = BTreeSet::new();
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
        let text = reply.text();
        let fields: Vec<&str> = text.trim_end().split(',').collect();
        assert_eq!(
            &fields[1..].get(1..),
            &Some(&["10000000", "49999995000000", "Hello World"][..]),
            "{text:?}"
        );
        instances.insert(fields[0].to_owned());
        invocations.insert(fields[1].parse::<u64>().expect("invocation id"));
        assert!(reply.elapsed >= HELLO_SLEEP, "{path}: {:?}", reply.elapsed);
        assert!(
            reply.elapsed < HELLO_BOUND,
            "{path}: the burst was not served concurrently: a call took {:?}",
            reply.elapsed
        );
    }
    assert_eq!(instances.len(), 1, "{path}: {instances:?}");
    assert_eq!(invocations, (1..=10).collect(), "{path}: invocation ids");
    let listed = server.instances(function).await;
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["invocations"], 10, "{listed:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_seed_burst_shares_one_instance_async_and_sync() {
    let server = TestServer::start().await;
    let (status, deployed) = server.deploy_dir(&example("hello-python")).await;
    assert_eq!(status, StatusCode::CREATED, "{deployed}");
    ten_share_one_instance(&server, "hello-python", "/helloPython").await;
    ten_share_one_instance(&server, "hello-python-sync", "/helloPythonSync").await;
    server.shutdown().await;
}

const FLAKY: &str = r#"
import asyncio, os
import vendored_dep  # installed beside the code, as `pip install -t .` does

loads = 0
loads += 1

async def handler(event, context):
    if event.get("fail") or "fail" in event.get("rawQueryString", ""):
        await asyncio.sleep(0.1)  # fail while the others are in flight on the same loop
        raise KeyError("asked to fail")
    await asyncio.sleep(0.3)
    return {
        "ok": vendored_dep.NAME,
        "loads": loads,
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "arn": context.invoked_function_arn,
        "memory": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "instance": os.environ["AWS_LAMBDA_LOG_STREAM_NAME"],
    }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_fails_only_its_call_in_lambdas_python_shape_async_and_sync() {
    let server = TestServer::start().await;
    let manifest = r#"
[functions.flaky]
runtime = "python"
handler = "app.handler"
memory = "256MiB"
timeout = "20s"
http = [{ method = "GET", path = "/flaky" }]
"#;
    server
        .deploy_ok(&[
            ("app.py", FLAKY),
            ("vendored_dep/__init__.py", "NAME = 'vendored'\n"),
            ("shoal.toml", manifest),
        ])
        .await;

    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let api: Api = (*server).clone();
            tokio::spawn(async move { api.invoke("flaky", &json!({ "fail": i == 3 })).await })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("invoke task"));
    }
    let mut request_ids = HashSet::new();
    for (i, reply) in replies.iter().enumerate() {
        if i == 3 {
            let (error_type, message) = function_error(reply);
            assert_eq!(error_type, "KeyError");
            assert_eq!(message, "'asked to fail'");
            let body = reply.json();
            let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
            assert_eq!(
                keys.iter().map(|k| k.as_str()).collect::<BTreeSet<_>>(),
                BTreeSet::from(["errorMessage", "errorType", "requestId", "stackTrace"]),
                "{body}"
            );
            let trace = body["stackTrace"].as_array().unwrap();
            assert_eq!(trace.len(), 1, "only the handler's own frame: {body}");
            assert!(
                trace[0]
                    .as_str()
                    .unwrap()
                    .contains("app.py\", line 11, in handler"),
                "{body}"
            );
        } else {
            let body = success(reply);
            assert_eq!(body["ok"], "vendored");
            assert_eq!(body["loads"], 1, "module code ran once: {body}");
            assert_eq!(body["function_name"], "flaky");
            assert_eq!(
                body["arn"],
                "arn:aws:lambda:local:000000000000:function:flaky"
            );
            assert_eq!(body["memory"], "256");
            let remaining = body["remaining_ms"].as_u64().unwrap();
            assert!(remaining > 0 && remaining <= 20_000, "{body}");
            request_ids.insert(body["request_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(request_ids.len(), 5, "{request_ids:?}");
    let instances = server.instances("flaky").await;
    assert_eq!(instances.len(), 1, "{instances:#?}");
    assert_eq!(instances[0]["invocations"], 6, "{instances:#?}");

    // Through the gateway a failed call is API Gateway's 500, and the instance goes on.
    let failed = server.get("/flaky?fail=1").await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(failed.json(), json!({ "message": "Internal Server Error" }));
    let again = server.invoke("flaky", &json!({})).await;
    assert_eq!(success(&again)["instance"], instances[0]["id"]);

    // The same with a plain handler on the thread pool.
    let sync = r#"
import time

def handler(event, context):
    time.sleep(0.3)
    if event.get("fail"):
        raise ValueError("sync failure")
    return "fine"
"#;
    let manifest = "[functions.flaky-sync]\nruntime = \"python\"\nhandler = \"app.handler\"\n";
    server
        .deploy_ok(&[("app.py", sync), ("shoal.toml", manifest)])
        .await;
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let api: Api = (*server).clone();
            tokio::spawn(async move { api.invoke("flaky-sync", &json!({ "fail": i == 1 })).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let reply = task.await.expect("invoke task");
        if i == 1 {
            assert_eq!(
                function_error(&reply),
                ("ValueError".to_owned(), "sync failure".to_owned())
            );
        } else {
            assert_eq!(success(&reply), "fine");
        }
    }
    let instances = server.instances("flaky-sync").await;
    assert_eq!(instances.len(), 1, "{instances:#?}");
    assert_eq!(instances[0]["invocations"], 4, "{instances:#?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn print_and_logging_are_logged_with_their_request_ids() {
    let server = TestServer::start().await;
    let code = r#"
import asyncio, logging, time
logger = logging.getLogger()
logger.setLevel(logging.INFO)
print("cold start")

def handler(event, context):
    time.sleep(0.2 * event["n"])  # calls overlap on the thread pool
    print("printed", event["n"])
    logger.info("logged %d", event["n"])
    return context.aws_request_id
"#;
    let manifest = "[functions.talk]\nruntime = \"python\"\nhandler = \"app.handler\"\n";
    server
        .deploy_ok(&[("app.py", code), ("shoal.toml", manifest)])
        .await;
    let tasks: Vec<_> = (1..=3)
        .map(|n| {
            let api: Api = (*server).clone();
            tokio::spawn(async move { api.invoke("talk", &json!({ "n": n })).await })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        let reply = task.await.expect("invoke task");
        ids.push(success(&reply).as_str().unwrap().to_owned());
    }
    for (n, id) in (1..=3).zip(&ids) {
        for text in [format!("printed {n}"), format!("logged {n}")] {
            let record = server
                .wait_for_log("talk", PATIENCE, |r| r["message"] == text.as_str())
                .await;
            assert_eq!(record["request_id"], id.as_str(), "{record}");
            assert_eq!(record["level"], "INFO", "{record}");
        }
    }
    let cold = server
        .wait_for_log("talk", PATIENCE, |r| r["message"] == "cold start")
        .await;
    assert_eq!(cold["request_id"], Value::Null, "{cold}");
    server.shutdown().await;
}

/// A sync handler that only computes holds the GIL: one instance cannot run two at once
/// faster than one, and the controller must see it and keep about one call per instance,
/// scaling out instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_bound_sync_handler_settles_at_one_or_two_per_instance() {
    let server = TestServer::start().await;
    let code = r#"
import time
def handler(event, context):
    end = time.process_time() + 0.15
    n = 0
    while time.process_time() < end:
        n += 1
    return n
"#;
    let manifest = r#"
[functions.cpu]
runtime = "python"
handler = "app.handler"
max_instances = 4
timeout = "120s"
"#;
    server
        .deploy_ok(&[("app.py", code), ("shoal.toml", manifest)])
        .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let api: Api = (*server).clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let reply = api.invoke("cpu", &json!({})).await;
                    success(&reply);
                }
            })
        })
        .collect();
    // The controller measures once a second; give it minutes on a busy machine.
    let deadline = Instant::now() + 6 * PATIENCE;
    let settled = loop {
        let instances = server.instances("cpu").await;
        let limits: Vec<u64> = instances
            .iter()
            .filter(|i| i["state"] == "ready")
            .filter_map(|i| i["limit"].as_u64())
            .collect();
        if !limits.is_empty() && limits.iter().all(|&l| l <= 2) {
            break limits;
        }
        assert!(
            Instant::now() < deadline,
            "limits never settled at 1-2: {instances:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Held back inside one instance, the work goes to more of them.
    server
        .wait_for_status("cpu", 2 * PATIENCE, |pools| {
            pools
                .iter()
                .flat_map(|p| p["instances"].as_array().cloned().unwrap_or_default())
                .filter(|i| i["state"] == "ready")
                .count()
                >= 2
        })
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        client.await.expect("client");
    }
    assert!(settled.iter().all(|&l| (1..=2).contains(&l)), "{settled:?}");
    server.shutdown().await;
}
