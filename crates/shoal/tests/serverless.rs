//! `shoal deploy` of what Lambda users already have: a Serverless Framework project
//! (`serverless.yml`, with `--stage`, `package.patterns`, a warning listing the keys Shoal
//! ignores with their lines, and the Framework's function names) and a Lambda `.zip`
//! package (`--handler`, `--runtime`), each invoked afterwards under its name; and
//! `shoal alias` with weighted routing between two versions.
// Starting the binary under test (and python3 to write a zip) is this test's job; the
// rule that only shoal-runtime spawns processes is about the daemon's own code.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::process::{Command, Output};

mod support;

use support::{Daemon, TempDir};

fn shoal(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("SHOAL_TEST_GREETING", "hello from the environment")
        .output()
        .unwrap()
}

fn ok(data_dir: &Path, args: &[&str]) -> (String, String) {
    let output = shoal(data_dir, args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "shoal {args:?}: {stderr}");
    (String::from_utf8(output.stdout).unwrap(), stderr)
}

const SERVERLESS_YML: &str = "service: shop
provider:
  name: aws
  runtime: nodejs20.x
  logRetentionInDays: 7
  environment:
    GREETING: ${env:SHOAL_TEST_GREETING}
package:
  patterns:
    - '!test/**'
functions:
  hello:
    handler: handler.hello
    events:
      - httpApi: 'GET /hello'
";

const HANDLER: &str = "
const fs = require('fs');
exports.hello = async (event, context) => ({
  greeting: process.env.GREETING,
  name: context.functionName,
  testsShipped: fs.existsSync(__dirname + '/test'),
});
";

#[test]
fn a_serverless_project_and_a_lambda_zip_deploy_and_answer_under_their_names() {
    let dir = TempDir::new("shoal-sls");
    let data = dir.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let _daemon = Daemon::start(&data);

    let project = dir.0.join("project");
    std::fs::create_dir_all(project.join("test")).unwrap();
    std::fs::write(project.join("serverless.yml"), SERVERLESS_YML).unwrap();
    std::fs::write(project.join("handler.js"), HANDLER).unwrap();
    std::fs::write(project.join("test/handler.test.js"), "throw 1").unwrap();

    let (out, err) = ok(
        &data,
        &["deploy", project.to_str().unwrap(), "--stage", "qa"],
    );
    assert!(out.contains("deployed shop-qa-hello version 1"), "{out}");
    assert!(
        err.contains("warning:") && err.contains("line 5: provider.logRetentionInDays"),
        "{err}"
    );
    let (out, _) = ok(&data, &["invoke", "shop-qa-hello"]);
    let result: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(result["greeting"], "hello from the environment", "{result}");
    assert_eq!(result["name"], "shop-qa-hello");
    assert_eq!(
        result["testsShipped"], false,
        "package.patterns left test/ out"
    );

    // A second version, and an alias that sends a quarter of its calls to it.
    let (out, _) = ok(
        &data,
        &["deploy", project.to_str().unwrap(), "--stage", "qa"],
    );
    assert!(out.contains("deployed shop-qa-hello version 2"), "{out}");
    let (out, _) = ok(
        &data,
        &[
            "alias",
            "set",
            "shop-qa-hello",
            "live",
            "1",
            "--additional-version",
            "2",
            "--weight",
            "0.25",
        ],
    );
    assert_eq!(out.trim(), "live -> version 1 (75%), version 2 (25%)");
    let (out, _) = ok(&data, &["alias", "ls", "shop-qa-hello"]);
    assert!(out.contains("live -> version 1"), "{out}");
    let (out, _) = ok(&data, &["invoke", "shop-qa-hello:live"]);
    assert!(out.contains("hello from the environment"), "{out}");
    ok(&data, &["alias", "rm", "shop-qa-hello", "live"]);
    let gone = shoal(&data, &["invoke", "shop-qa-hello:live"]);
    assert!(!gone.status.success());

    // A .zip as Lambda takes it, written by Python's zipfile (deflated).
    let zip = dir.0.join("echo.zip");
    let script = format!(
        "import zipfile\nz = zipfile.ZipFile({:?}, 'w', zipfile.ZIP_DEFLATED)\nz.writestr('src/index.js', 'exports.handler = async (e) => ({{ echoed: e }});')\nz.close()\n",
        zip.to_str().unwrap()
    );
    let made = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let (out, _) = ok(
        &data,
        &[
            "deploy",
            zip.to_str().unwrap(),
            "--handler",
            "src/index.handler",
            "--runtime",
            "nodejs20.x",
        ],
    );
    assert!(out.contains("deployed echo version 1"), "{out}");
    let (out, _) = ok(&data, &["invoke", "echo", "--data", r#"{"n":7}"#]);
    assert!(out.contains(r#""n":7"#), "{out}");

    let refused = shoal(&data, &["deploy", zip.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--handler"));
}
