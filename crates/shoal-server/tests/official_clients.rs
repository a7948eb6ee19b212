//! Official Lambda runtime clients as `runtime = "provided"` bootstraps, each with the
//! default manifest (no `concurrency`, no `max_concurrency`), as a user would deploy them.
//!
//! - PyPI `awslambdaric` (from its wheel, installed with pip into the function directory
//!   once per build directory): it forks one worker process per unit of
//!   `AWS_LAMBDA_MAX_CONCURRENCY`, so it only works if that figure is what the instance
//!   will really be sent; 20 concurrent 3-second calls must all succeed, and the workers'
//!   memory must show in the instance's status.
//! - The Rust crate `lambda_runtime` with `run_concurrent`: see `tests/lambda-runtime-rs/`
//!   and the test below, which builds it once per build directory.

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use hyper::StatusCode;
use serde_json::json;
use support::{function_error, success, Api, TestServer};

const AWSLAMBDARIC: &str = "awslambdaric==4.2.2";

/// The interpreter a sandboxed bootstrap finds as `python3` (`/usr` is what it sees).
const SANDBOX_PYTHON: &str = "/usr/bin/python3";

/// Run a command to completion; panics with its output when it fails.
// Preparing the function (pip, cargo) is this test's job; the rule that only
// shoal-runtime spawns processes is about the daemon's own code.
#[allow(clippy::disallowed_methods)]
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A directory holding `awslambdaric` and its dependencies for [`SANDBOX_PYTHON`],
/// installed from wheels once per build directory.
fn awslambdaric_dir() -> PathBuf {
    let version = run(
        SANDBOX_PYTHON,
        &["-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
    );
    let version = version.trim();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("awslambdaric-py{version}"));
    let done = dir.join(".installed");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        let target = dir.display().to_string();
        // The wheel for the sandbox's interpreter, whichever python3 runs pip.
        run(
            "python3",
            &[
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-compile",
                "--only-binary=:all:",
                "--python-version",
                version,
                "--implementation",
                "cp",
                "--platform",
                "manylinux2014_x86_64",
                "--target",
                &target,
                AWSLAMBDARIC,
            ],
        );
        std::fs::write(&done, AWSLAMBDARIC).expect("marking the install");
    }
    dir
}

const APP: &str = r#"
import os, time

def handler(event, context):
    if event.get("fail"):
        raise ValueError("asked to fail")
    time.sleep(event.get("sleep", 0))
    return {
        "request_id": context.aws_request_id,
        "worker": os.getpid(),
        "instance": os.environ["AWS_LAMBDA_LOG_STREAM_NAME"],
        "told": os.environ["AWS_LAMBDA_MAX_CONCURRENCY"],
    }
"#;

const BOOTSTRAP: &str = "#!/bin/sh\nexec /usr/bin/python3 -m awslambdaric \"$_HANDLER\"\n";

/// Copy the installed client and the function's own files into a fresh directory.
fn function_with(files: &[(&str, &str)]) -> support::TempDir {
    let dir = support::function_dir(files);
    copy_tree(&awslambdaric_dir(), dir.path());
    use std::os::unix::fs::PermissionsExt;
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, BOOTSTRAP).unwrap();
    std::fs::set_permissions(&bootstrap, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pypi_awslambdaric_serves_twenty_concurrent_calls_with_the_default_manifest() {
    let manifest = "[functions.ric]\nruntime = \"provided\"\nhandler = \"app.handler\"\n";
    let dir = tokio::task::spawn_blocking(move || {
        function_with(&[("app.py", APP), ("shoal.toml", manifest)])
    })
    .await
    .unwrap();
    let server = TestServer::start().await;
    let (status, body) = server.deploy_dir(dir.path()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let api: Api = (*server).clone();
            tokio::spawn(async move { api.invoke("ric", &json!({ "sleep": 3 })).await })
        })
        .collect();
    let mut request_ids = HashSet::new();
    let mut workers = HashSet::new();
    for task in tasks {
        let reply = task.await.unwrap();
        let body = success(&reply);
        request_ids.insert(body["request_id"].as_str().unwrap().to_owned());
        workers.insert((
            body["instance"].as_str().unwrap().to_owned(),
            body["worker"].as_u64().unwrap(),
        ));
        let told: u64 = body["told"].as_str().unwrap().parse().unwrap();
        assert!(
            (1..=256).contains(&told),
            "AWS_LAMBDA_MAX_CONCURRENCY: {body}"
        );
    }
    assert_eq!(request_ids.len(), 20);
    assert_eq!(workers.len(), 20, "each call had a worker to itself");

    // Each instance was sent at most what it was told, and its workers' memory counts.
    let instances = server.instances("ric").await;
    eprintln!("instances after the burst: {instances:#?}");
    for instance in &instances {
        assert!(instance["state"] == "ready", "{instances:#?}");
        let rss = instance["rss_kib"].as_u64().unwrap_or(0);
        // One Python worker alone is over 8 MiB; a dozen workers, far more.
        assert!(
            rss > 64 * 1024,
            "the workers' memory is counted: {instances:#?}"
        );
    }

    // Lambda's error shape, from the client itself.
    let failed = server.invoke("ric", &json!({ "fail": true })).await;
    let (error_type, message) = function_error(&failed);
    assert_eq!(error_type, "ValueError");
    assert_eq!(message, "asked to fail");
    server.shutdown().await;
}

/// The `lambda_runtime` bootstrap of `tests/lambda-runtime-rs/`, built once per build
/// directory (its own target directory and lock file; about half a minute from nothing on
/// two cores, since it shares no build with the workspace).
fn lambda_runtime_bootstrap() -> PathBuf {
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lambda-runtime-rs");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lambda-runtime-rs");
    let manifest = project.join("Cargo.toml").display().to_string();
    let target_dir = target.display().to_string();
    run(
        env!("CARGO"),
        &[
            "build",
            "--quiet",
            "--locked",
            "--manifest-path",
            &manifest,
            "--target-dir",
            &target_dir,
        ],
    );
    target.join("debug/bootstrap")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_lambda_runtime_crate_serves_concurrent_calls_with_the_default_manifest() {
    let bootstrap = tokio::task::spawn_blocking(lambda_runtime_bootstrap)
        .await
        .unwrap();
    let manifest = "[functions.rs]\nruntime = \"provided\"\n";
    let dir = support::function_dir(&[("shoal.toml", manifest)]);
    std::fs::copy(&bootstrap, dir.path().join("bootstrap")).expect("copying the bootstrap");
    let server = TestServer::start().await;
    let (status, body) = server.deploy_dir(dir.path()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let api: Api = (*server).clone();
            tokio::spawn(async move { api.invoke("rs", &json!({ "sleepMs": 2000 })).await })
        })
        .collect();
    let mut request_ids = HashSet::new();
    let mut instances = HashSet::new();
    for task in tasks {
        let reply = task.await.unwrap();
        let body = success(&reply);
        request_ids.insert(body["requestId"].as_str().unwrap().to_owned());
        instances.insert(body["instance"].as_str().unwrap().to_owned());
        let told: u64 = body["told"].as_str().unwrap().parse().unwrap();
        assert!((1..=256).contains(&told), "{body}");
    }
    assert_eq!(request_ids.len(), 20);
    // Sixteen polls per instance at the default start: twenty calls fit in two.
    assert!(instances.len() <= 2, "{instances:?}");

    let failed = server.invoke("rs", &json!({ "fail": true })).await;
    let (_, message) = function_error(&failed);
    assert_eq!(message, "asked to fail");
    server.shutdown().await;
}
