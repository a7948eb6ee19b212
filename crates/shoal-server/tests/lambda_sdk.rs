//! AWS's own tools against the Lambda API of a running daemon, signing with SigV4 with a
//! key the platform issued, with no change to the tools: boto3's `lambda` client
//! (`tests/sdk/lambda_boto3.py`), `@aws-sdk/client-lambda` v3 (`tests/sdk/lambda_js.mjs`)
//! and the AWS CLI (`tests/sdk/lambda_cli.py`). Each script installs its tool when missing
//! (pip, npm) and checks invokes by name and ARN, versions and a weighted alias, `Event`,
//! `DryRun`,
//! `LogType: Tail`, function errors, the read-only management calls and refused
//! signatures.

mod support;

use support::{run_sdk_script, TestServer};

const HANDLER: &str = r#"
exports.handler = async (event, context) => {
  console.log("event seen", JSON.stringify(event));
  if (event.fail) throw new Error("asked to fail");
  return {
    echo: event,
    requestId: context.awsRequestId,
    mark: process.env.MARK,
    clientContext: context.clientContext ?? null,
  };
};
"#;

/// The manifest of version `mark` (the handler answers with it).
fn manifest(mark: &str) -> String {
    format!(
        r#"
[functions.hello]
handler = "index.handler"
memory = "256MiB"
timeout = "10s"
env = {{ GREETING = "hi", MARK = "{mark}" }}
"#
    )
}

async fn drive(program: &'static str, script: &'static str) {
    let server = TestServer::start().await;
    // Two versions, each answering with its own mark; 2 is the current one. The alias
    // `live` sends half of its calls to each.
    server
        .deploy_ok(&[("index.js", HANDLER), ("shoal.toml", &manifest("one"))])
        .await;
    server
        .deploy_ok(&[("index.js", HANDLER), ("shoal.toml", &manifest("two"))])
        .await;
    server
        .platform()
        .set_alias("hello", "live", 1, Some((2, 0.5)))
        .await
        .unwrap();
    run_sdk_script(&server, program, script).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_invokes_and_reads_functions_as_on_aws() {
    drive("python3", "lambda_boto3.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_sdk_invokes_and_reads_functions_as_on_aws() {
    drive("node", "lambda_js.mjs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_invokes_and_lists_functions_as_on_aws() {
    drive("python3", "lambda_cli.py").await;
}
