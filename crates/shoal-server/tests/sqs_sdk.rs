//! A real AWS SDK against the SQS API: boto3 (`tests/sdk/sqs_boto3.py`, which installs
//! boto3 with pip when this python3 lacks it) creates queues, sends (one, and a batch
//! with a bad entry), receives with attributes, changes visibility, deletes, purges,
//! reads attributes, lists and deletes queues on a running daemon, checking the SDK's
//! modelled exceptions and SQS's digests along the way.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::TestServer;

/// Run the boto3 script against `endpoint`.
// Starting the SDK client is this test's job; the rule that only shoal-runtime spawns
// processes is about the daemon's own code.
#[allow(clippy::disallowed_methods)]
fn boto3(endpoint: &str, token: &str) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/sqs_boto3.py");
    Command::new("python3")
        .arg(script)
        .args([endpoint, token])
        .output()
        .expect("running python3 (the SDK test needs it on PATH)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_drives_every_action_the_api_serves() {
    let server = TestServer::start().await;
    let endpoint = format!("http://{}", server.control);
    let token = server.token.clone();
    let output = tokio::task::spawn_blocking(move || boto3(&endpoint, &token))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "boto3 failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}\n{stderr}");
    server.shutdown().await;
}
