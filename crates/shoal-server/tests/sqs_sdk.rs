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

use support::{run_sdk_script, TestServer};

async fn drive(program: &'static str, script: &'static str) {
    let server = TestServer::start().await;
    run_sdk_script(&server, program, script).await;
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
