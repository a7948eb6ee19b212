//! Black-box tests of `runtime = "provided"`: the function's own `bootstrap` speaks the
//! Lambda Runtime API, with several `/invocation/next` polls open at once.

mod support;

use std::collections::HashSet;
use std::path::Path;

use hyper::StatusCode;
use serde_json::{json, Value};
use support::{function_dir, TestServer};

fn echo_fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/provided-echo")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_polls_never_exceed_the_instance_limit() {
    const CALLS: usize = 8;
    const LIMIT: u64 = 4; // the fixture's `concurrency`
    let server = TestServer::start().await;
    let (status, body) = server.deploy_dir(&echo_fixture()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let tasks: Vec<_> = (0..CALLS)
        .map(|_| {
            let api = server.api.clone();
            tokio::spawn(async move { api.post("/echo", r#"{"sleepMs":500}"#).await })
        })
        .collect();
    let mut echoes = Vec::new();
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.header("content-type"), Some("application/json"));
        echoes.push(reply.json());
    }
    let mut request_ids = HashSet::new();
    for echo in &echoes {
        assert_eq!(echo["pollers"], LIMIT, "AWS_LAMBDA_MAX_CONCURRENCY: {echo}");
        assert!(
            echo["maxInFlight"].as_u64().unwrap() <= LIMIT,
            "an instance got more than {LIMIT} at once: {echo}"
        );
        assert!(echo["deadlineMs"].as_u64().unwrap() > 0, "{echo}");
        assert_eq!(
            echo["echo"]["rawPath"], "/echo",
            "the event is an HTTP API event: {echo}"
        );
        request_ids.insert(echo["requestId"].as_str().unwrap().to_owned());
    }
    assert_eq!(request_ids.len(), CALLS, "request ids are unique");
    assert!(
        echoes.iter().any(|e| e["inFlight"].as_u64().unwrap() >= 2),
        "no instance ever ran two calls at once: {echoes:#?}"
    );
    // Instance ids, not pids: inside its sandbox each bootstrap sees its own pid numbers.
    let answered: HashSet<String> = echoes
        .iter()
        .map(|e| e["instance"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        answered.len(),
        CALLS.div_ceil(LIMIT as usize),
        "{answered:?}"
    );

    let instances = server.instances("echo").await;
    let listed: HashSet<String> = support::ids(&instances).into_iter().collect();
    assert_eq!(listed, answered, "{instances:#?}");
    assert!(
        instances
            .iter()
            .all(|i| i["limit"] == LIMIT && i["in_flight"] == 0),
        "{instances:#?}"
    );
    let total: u64 = instances
        .iter()
        .map(|i| i["invocations"].as_u64().unwrap())
        .sum();
    assert_eq!(total, CALLS as u64, "{instances:#?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_api_errors_reach_the_caller() {
    let server = TestServer::start().await;
    let (status, body) = server.deploy_dir(&echo_fixture()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let reply = server.post("/echo", r#"{"fail":true}"#).await;
    assert_eq!(
        reply.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        reply.text()
    );
    assert_eq!(reply.json(), json!({ "message": "Internal Server Error" }));

    let reply = server
        .invoke("echo", &json!({ "fail": "broken on purpose" }))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("x-amz-function-error"), Some("Unhandled"));
    let error = reply.json();
    assert_eq!(error["errorType"], "EchoError", "{error}");
    assert_eq!(error["errorMessage"], "broken on purpose", "{error}");

    // A plain (non-HTTP) event comes back as is.
    let reply = server.invoke("echo", &json!({ "hello": [1, 2] })).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("x-amz-function-error"), None);
    let echo = reply.json();
    assert_eq!(echo["echo"], json!({ "hello": [1, 2] }), "{echo}");
    assert_eq!(
        echo["requestId"].as_str(),
        reply.header("x-amzn-requestid"),
        "{echo}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_plain_bootstrap_is_a_clear_error() {
    let server = TestServer::start().await;
    let manifest = |name: &str| {
        format!("[functions.{name}]\nruntime = \"provided\"\nhttp = [{{ method = \"GET\", path = \"/{name}\" }}]\n")
    };
    let missing = manifest("nobootstrap");
    let plain = manifest("plainfile");
    let cases: [(&str, Vec<(&str, &str)>); 2] = [
        (
            "nobootstrap",
            vec![("shoal.toml", &missing), ("README", "no bootstrap here")],
        ),
        // Written without the executable bit.
        (
            "plainfile",
            vec![
                ("shoal.toml", &plain),
                ("bootstrap", "#!/bin/sh\necho never\n"),
            ],
        ),
    ];
    for (name, files) in &cases {
        let dir = function_dir(files);
        let (status, body) = server.deploy_dir(dir.path()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");

        let reply = server.invoke(name, &json!({})).await;
        assert_eq!(reply.status, StatusCode::OK, "{name}: {}", reply.text());
        assert_eq!(
            reply.header("x-amz-function-error"),
            Some("Unhandled"),
            "{name}"
        );
        let error: Value = reply.json();
        assert_eq!(
            error["errorType"], "Runtime.InvalidEntrypoint",
            "{name}: {error}"
        );
        let message = error["errorMessage"].as_str().unwrap();
        assert!(
            message.contains("bootstrap") && message.contains("executable"),
            "{name}: {message}"
        );

        let reply = server.get(&format!("/{name}")).await;
        assert_eq!(
            reply.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{name}: {}",
            reply.text()
        );
        assert!(
            server.instances(name).await.is_empty(),
            "{name}: a failed start left an instance"
        );
    }
    server.shutdown().await;
}
