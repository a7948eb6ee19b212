"""The AWS CLI (`aws lambda ...`) against a running Shoal daemon.

Usage: python3 lambda_cli.py ENDPOINT ACCESS_KEY_ID SECRET

Run by `crates/shoal-server/tests/lambda_sdk.rs`. The key goes into a shared-credentials
file in the format `shoal keys create` prints, used as a profile: the CLI runs as a user
would run it against AWS, plus `--endpoint-url`. Installs `awscli` from PyPI with pip when
`aws` is not on PATH. Prints "N passed, 0 failed" at the end.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile

CHECKS = 0


def log(message: str) -> None:
    print(f"[lambda_cli] {message}", file=sys.stderr, flush=True)


def check(condition: bool, what: str) -> None:
    global CHECKS
    if not condition:
        sys.exit(f"FAILED: {what}")
    CHECKS += 1


def aws_command() -> list[str]:
    if shutil.which("aws"):
        return ["aws"]
    log("aws is not on PATH: installing awscli with pip")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "awscli"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0 and "externally-managed-environment" in result.stderr:
        result = subprocess.run([*cmd, "--break-system-packages"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"installing awscli failed: {result.stderr.strip()[-500:]}")
    # pip may put the script where PATH does not look; the module runs either way.
    return shutil.which("aws") and ["aws"] or [sys.executable, "-m", "awscli"]


def main() -> None:
    endpoint, key_id, secret = sys.argv[1:4]
    aws = aws_command()
    work = tempfile.mkdtemp(prefix="shoal-cli-")
    credentials = os.path.join(work, "credentials")
    with open(credentials, "w") as f:
        f.write(f"[shoal]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("AWS_")
    } | {
        "AWS_SHARED_CREDENTIALS_FILE": credentials,
        "AWS_CONFIG_FILE": os.path.join(work, "config"),
        "AWS_PROFILE": "shoal",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",
    }
    version = subprocess.run([*aws, "--version"], capture_output=True, text=True, env=env)
    log((version.stdout + version.stderr).strip())
    event = os.path.join(work, "event.json")

    def run(*args: str, payload: dict | None = None) -> dict:
        extra = []
        if payload is not None:
            with open(event, "w") as f:
                json.dump(payload, f)
            extra = ["--payload", f"fileb://{event}"]
        cmd = [*aws, "--endpoint-url", endpoint, "--output", "json", "lambda", *args, *extra]
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        check(result.returncode == 0, f"{' '.join(args)}: {result.stderr.strip()}")
        return json.loads(result.stdout) if result.stdout.strip() else {}

    out = os.path.join(work, "out.json")
    reply = run("invoke", "--function-name", "hello", out, payload={"x": 1})
    check(reply["StatusCode"] == 200 and reply["ExecutedVersion"] == "$LATEST", f"invoke {reply}")
    with open(out) as f:
        check(json.load(f)["echo"] == {"x": 1}, "out.json")

    reply = run("invoke", "--function-name", "hello", "--invocation-type", "Event", out, payload={"a": 1})
    check(reply["StatusCode"] == 202, f"Event {reply}")

    reply = run("invoke", "--function-name", "hello", "--log-type", "Tail", out, payload={"tail": "marker-cli"})
    tail = base64.b64decode(reply.get("LogResult", "")).decode()
    check("marker-cli" in tail, f"LogResult {tail!r}")

    reply = run("invoke", "--function-name", "arn:aws:lambda:us-east-1:000000000000:function:hello", "--qualifier", "2", out, payload={})
    check(reply["ExecutedVersion"] == "2", f"qualified {reply}")

    functions = run("list-functions")["Functions"]
    check([f["FunctionName"] for f in functions] == ["hello"], f"list-functions {functions}")
    config = run("get-function-configuration", "--function-name", "hello")
    check(config["Handler"] == "index.handler", f"get-function-configuration {config}")

    print(f"{CHECKS} passed, 0 failed")


if __name__ == "__main__":
    main()
