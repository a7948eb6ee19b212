"""The AWS SDK for Python (boto3) `lambda` client against a running Shoal daemon.

Usage: python3 lambda_boto3.py ENDPOINT ACCESS_KEY_ID SECRET

Run by `crates/shoal-server/tests/lambda_sdk.rs`, which has deployed `hello` twice
(versions 1 and 2, answering with `mark` "one" and "two"; `hello` logs its event, echoes
it, and throws when asked to), pointed the alias `live` at 1 with half of its calls going
to 2, and issued the key. boto3 signs with SigV4 as it would for AWS: no hook, no custom code. Installs
boto3 with pip when it is missing. Prints "N passed, 0 failed" at the end.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys

CHECKS = 0


def log(message: str) -> None:
    print(f"[lambda_boto3] {message}", file=sys.stderr, flush=True)


def check(condition: bool, what: str) -> None:
    global CHECKS
    if not condition:
        sys.exit(f"FAILED: {what}")
    CHECKS += 1


def ensure_boto3() -> None:
    try:
        import boto3  # noqa: F401

        return
    except ImportError:
        log("boto3 is not installed: installing it with pip")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "boto3>=1.34"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0 and "externally-managed-environment" in result.stderr:
        result = subprocess.run([*cmd, "--break-system-packages"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"installing boto3 failed: {result.stderr.strip()[-500:]}")


def main() -> None:
    endpoint, key_id, secret = sys.argv[1:4]
    ensure_boto3()
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    def client(**overrides):
        settings = dict(
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            config=Config(retries={"max_attempts": 1, "mode": "standard"}),
        )
        settings.update(overrides)
        return boto3.client("lambda", **settings)

    lam = client()
    log(f"boto3 {boto3.__version__}")

    def invoke(**kwargs):
        reply = lam.invoke(**kwargs)
        payload = reply["Payload"].read()
        return reply, payload

    reply, payload = invoke(FunctionName="hello", Payload=json.dumps({"x": 1}))
    check(reply["StatusCode"] == 200, f"StatusCode {reply['StatusCode']}")
    check(json.loads(payload)["echo"] == {"x": 1}, f"payload {payload!r}")
    check(reply["ExecutedVersion"] == "$LATEST", f"ExecutedVersion {reply['ExecutedVersion']}")
    check("FunctionError" not in reply, "no FunctionError")

    for name in (
        "arn:aws:lambda:us-east-1:000000000000:function:hello",
        "000000000000:function:hello",
    ):
        reply, payload = invoke(FunctionName=name, Payload=b'{"by":"arn"}')
        check(json.loads(payload)["echo"] == {"by": "arn"}, f"invoke by {name}")

    reply, payload = invoke(FunctionName="hello", Qualifier="2", Payload=b"{}")
    check(reply["ExecutedVersion"] == "2", f"Qualifier=2 ran {reply['ExecutedVersion']}")
    check(json.loads(payload)["mark"] == "two", f"version 2's code {payload!r}")
    reply, payload = invoke(FunctionName="hello:1", Payload=b"{}")
    check(reply["ExecutedVersion"] == "1", "hello:1")
    check(json.loads(payload)["mark"] == "one", f"version 1's code {payload!r}")
    reply, payload = invoke(FunctionName="hello", Qualifier="$LATEST", Payload=b"{}")
    check(reply["ExecutedVersion"] == "$LATEST", "Qualifier=$LATEST")
    check(json.loads(payload)["mark"] == "two", "$LATEST runs version 2")

    # The alias splits its calls between versions 1 and 2, each running its own code.
    seen = set()
    for _ in range(40):
        reply, payload = invoke(FunctionName="arn:aws:lambda:us-east-1:000000000000:function:hello:live", Payload=b"{}")
        version = reply["ExecutedVersion"]
        mark = json.loads(payload)["mark"]
        check((version, mark) in (("1", "one"), ("2", "two")), f"alias ran {version} with {mark}")
        seen.add(version)
    check(seen == {"1", "2"}, f"40 calls of a 50/50 alias reached {seen}")

    for qualifier, exception in (("7", "ResourceNotFoundException"), ("nope", "ResourceNotFoundException")):
        try:
            invoke(FunctionName="hello", Qualifier=qualifier, Payload=b"{}")
            check(False, f"Qualifier={qualifier} is refused")
        except ClientError as e:
            code = e.response["Error"]["Code"]
            check(code == exception, f"Qualifier={qualifier}: {code}")
    try:
        invoke(FunctionName="nope", Payload=b"{}")
        check(False, "an unknown function is refused")
    except lam.exceptions.ResourceNotFoundException:
        check(True, "")

    reply, _ = invoke(FunctionName="hello", InvocationType="Event", Payload=b'{"async":true}')
    check(reply["StatusCode"] == 202, f"Event {reply['StatusCode']}")
    try:
        invoke(FunctionName="hello", Qualifier="1", InvocationType="Event", Payload=b"{}")
        check(False, "an Event invoke of an older version is refused")
    except lam.exceptions.InvalidParameterValueException:
        check(True, "")
    reply, _ = invoke(FunctionName="hello", InvocationType="DryRun")
    check(reply["StatusCode"] == 204, f"DryRun {reply['StatusCode']}")

    reply, _ = invoke(FunctionName="hello", LogType="Tail", Payload=b'{"tail":"marker-7"}')
    tail = base64.b64decode(reply.get("LogResult", "")).decode()
    check("marker-7" in tail, f"LogResult {tail!r}")

    context = base64.b64encode(json.dumps({"custom": {"k": "v"}}).encode()).decode()
    reply, payload = invoke(FunctionName="hello", ClientContext=context, Payload=b"{}")
    check(json.loads(payload)["clientContext"] == {"custom": {"k": "v"}}, f"context.clientContext {payload!r}")

    reply, payload = invoke(FunctionName="hello", Payload=b'{"fail":true}')
    check(reply.get("FunctionError") == "Unhandled", f"FunctionError {reply.get('FunctionError')}")
    check(json.loads(payload)["errorMessage"] == "asked to fail", f"error payload {payload!r}")

    config = lam.get_function_configuration(FunctionName="hello")
    check(config["FunctionName"] == "hello" and config["Version"] == "$LATEST", f"configuration {config}")
    check(config["Handler"] == "index.handler" and config["MemorySize"] == 256, f"configuration {config}")
    check(config["Timeout"] == 10 and config["Environment"]["Variables"] == {"GREETING": "hi", "MARK": "two"}, f"configuration {config}")
    check(config["FunctionArn"] == "arn:aws:lambda:us-east-1:000000000000:function:hello", config["FunctionArn"])
    function = lam.get_function(FunctionName="hello", Qualifier="1")
    check(function["Configuration"]["Version"] == "1", f"GetFunction {function['Configuration']}")
    names = [f["FunctionName"] for f in lam.list_functions()["Functions"]]
    check(names == ["hello"], f"ListFunctions {names}")
    versions = [v["Version"] for v in lam.list_versions_by_function(FunctionName="hello")["Versions"]]
    check(versions == ["$LATEST", "1", "2"], f"ListVersionsByFunction {versions}")
    pages = lam.get_paginator("list_versions_by_function").paginate(
        FunctionName="hello", PaginationConfig={"PageSize": 1}
    )
    paged = [v["Version"] for page in pages for v in page["Versions"]]
    check(paged == ["$LATEST", "1", "2"], f"ListVersionsByFunction one per page {paged}")
    aliases = lam.list_aliases(FunctionName="hello")["Aliases"]
    check([(a["Name"], a["FunctionVersion"]) for a in aliases] == [("live", "1")], f"ListAliases {aliases}")
    check(aliases[0]["RoutingConfig"]["AdditionalVersionWeights"] == {"2": 0.5}, f"RoutingConfig {aliases}")
    alias = lam.get_alias(FunctionName="hello", Name="live")
    check(alias["AliasArn"].endswith(":function:hello:live"), f"GetAlias {alias}")
    config = lam.get_function_configuration(FunctionName="hello", Qualifier="live")
    check(config["Version"] == "1" and config["Environment"]["Variables"]["MARK"] == "one", f"configuration of live {config}")

    for label, other, expected in (
        ("a wrong secret", client(aws_secret_access_key=secret + "x"), "InvalidSignatureException"),
        ("an unknown key", client(aws_access_key_id="AKSHUNKNOWN0000000000"), "UnrecognizedClientException"),
        ("another region", client(region_name="eu-west-1"), "InvalidSignatureException"),
    ):
        try:
            other.invoke(FunctionName="hello", Payload=b"{}")
            check(False, f"{label} is refused")
        except ClientError as e:
            code = e.response["Error"]["Code"]
            check(code == expected, f"{label}: {code}")
            check(e.response["ResponseMetadata"]["HTTPStatusCode"] == 403, f"{label}: status")

    print(f"{CHECKS} passed, 0 failed")


if __name__ == "__main__":
    main()
