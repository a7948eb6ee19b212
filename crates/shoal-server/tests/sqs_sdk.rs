//! Real AWS SDKs against the SQS API on a running daemon, signing with SigV4 with a key
//! the platform issued (`shoal keys create`), with no change to how they sign.
//!
//! - boto3 (`tests/sdk/sqs_boto3.py`, which installs boto3 with pip when this python3
//!   lacks it or has one too old for SQS's JSON protocol): creates queues, sends (one, and
//!   a batch with a bad entry), receives with attributes, changes visibility, deletes,
//!   purges, reads and sets attributes, lists and deletes queues, checking the SDK's
//!   modelled exceptions and SQS's digests along the way.
//! - The AWS SDK for JavaScript v3 (`tests/sdk/sqs_js.mjs`, which installs
//!   `@aws-sdk/client-sqs` with npm beside itself when missing): the same round trip,
//!   with the SDK's own check of every body's MD5.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::TestServer;

/// Run `program script endpoint key_id secret`, the script being one of `tests/sdk/`.
// Starting the SDK client is this test's job; the rule that only shoal-runtime spawns
// processes is about the daemon's own code.
#[allow(clippy::disallowed_methods)]
fn client(program: &str, script: &str, endpoint: &str, key_id: &str, secret: &str) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(script);
    Command::new(program)
        .arg(script)
        .args([endpoint, key_id, secret])
        .output()
        .unwrap_or_else(|e| panic!("running {program} (the SDK tests need it on PATH): {e}"))
}

async fn drive(program: &'static str, script: &'static str) {
    let server = TestServer::start().await;
    let endpoint = format!("http://{}", server.control);
    let key = server.platform().create_key("sdk").unwrap();
    let output = tokio::task::spawn_blocking(move || {
        client(
            program,
            script,
            &endpoint,
            &key.access_key_id,
            &key.secret_access_key,
        )
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
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_drives_every_action_the_api_serves() {
    drive("python3", "sqs_boto3.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_sdk_checks_every_digest_and_gets_its_modelled_errors() {
    drive("node", "sqs_js.mjs").await;
}
