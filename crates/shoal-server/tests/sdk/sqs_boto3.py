"""The AWS SDK for Python (boto3) against a running Shoal daemon's SQS API.

Usage: python3 sqs_boto3.py ENDPOINT ACCESS_KEY_ID SECRET   (ENDPOINT like http://127.0.0.1:PORT)

Run by `crates/shoal-server/tests/sqs_sdk.rs` with a key from `shoal keys create`: boto3
signs every request with SigV4, unchanged. Installs boto3 with pip when it is missing or too old to speak SQS's JSON
protocol. Exits non-zero with the failed check on any mismatch; prints
"N passed, 0 failed" at the end.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import subprocess
import sys

# SQS's JSON protocol arrived in botocore 1.31.65 (November 2023).
BOTO3 = "boto3>=1.34"


def log(message: str) -> None:
    print(f"[sqs_boto3] {message}", file=sys.stderr, flush=True)


def ensure_boto3() -> None:
    """Install boto3 into this python3 when it is missing or speaks only the query protocol."""
    try:
        import botocore.session

        model = botocore.session.get_session().get_service_model("sqs")
        if model.protocol == "json":
            return
        log(f"botocore {botocore.__version__} speaks SQS's query protocol: upgrading")
    except ImportError:
        log("boto3 is not installed")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--upgrade", BOTO3]
    log(" ".join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0 and "externally-managed-environment" in result.stderr:
        # A distribution's own python3 (PEP 668) refuses pip; CI runs as root on a machine
        # set up for this, and boto3's wheels replace no Debian package.
        result = subprocess.run(
            [*cmd, "--break-system-packages"], capture_output=True, text=True, check=False
        )
    if result.returncode != 0:
        sys.exit(f"installing {BOTO3} failed: {result.stderr.strip()[-500:]}")
    importlib.invalidate_caches()
    for name in list(sys.modules):
        if name.split(".")[0] in ("boto3", "botocore"):
            del sys.modules[name]


CHECKS = 0


def check(condition: bool, what: str) -> None:
    global CHECKS
    if not condition:
        sys.exit(f"FAILED: {what}")
    CHECKS += 1


def attributes_md5(attributes: dict) -> str:
    """SQS's MD5OfMessageAttributes, written from the algorithm SQS documents."""
    digest = hashlib.md5()
    for name in sorted(attributes):
        value = attributes[name]
        for part in (name.encode(), value["DataType"].encode()):
            digest.update(len(part).to_bytes(4, "big") + part)
        if "StringValue" in value:
            data, transport = value["StringValue"].encode(), 1
        else:
            data, transport = value["BinaryValue"], 2
        digest.update(bytes([transport]) + len(data).to_bytes(4, "big") + data)
    return digest.hexdigest()


def main() -> None:
    endpoint, key_id, secret = sys.argv[1], sys.argv[2], sys.argv[3]
    ensure_boto3()
    import boto3
    from botocore.config import Config

    sqs = boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    check(sqs.meta.service_model.protocol == "json", "boto3 speaks SQS's JSON protocol")

    # Queues.
    dlq_url = sqs.create_queue(QueueName="sdk-dead")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    check(dlq_arn.endswith(":sdk-dead"), f"QueueArn {dlq_arn}")
    url = sqs.create_queue(
        QueueName="sdk-jobs",
        Attributes={
            "VisibilityTimeout": "30",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3}),
        },
    )["QueueUrl"]
    check(url.endswith("/sdk-jobs"), f"queue URL {url}")
    check(sqs.get_queue_url(QueueName="sdk-jobs")["QueueUrl"] == url, "GetQueueUrl")
    listed = sqs.list_queues(QueueNamePrefix="sdk-")["QueueUrls"]
    check(listed == [dlq_url, url], f"ListQueues {listed}")
    pages = sqs.get_paginator("list_queues").paginate(
        QueueNamePrefix="sdk-", PaginationConfig={"PageSize": 1}
    )
    paged = [u for page in pages for u in page.get("QueueUrls", [])]
    check(paged == [dlq_url, url], f"ListQueues paginated {paged}")

    # Errors arrive as the SDK's modelled exceptions, with SQS's codes.
    try:
        sqs.get_queue_url(QueueName="sdk-missing")
        check(False, "GetQueueUrl of a missing queue fails")
    except sqs.exceptions.QueueDoesNotExist as e:
        code = e.response["Error"]["Code"]
        check(code == "AWS.SimpleQueueService.NonExistentQueue", f"error code {code}")
    try:
        sqs.create_queue(QueueName="sdk-jobs", Attributes={"VisibilityTimeout": "31"})
        check(False, "CreateQueue with other attributes fails")
    except sqs.exceptions.QueueNameExists:
        check(True, "QueueNameExists")
    try:
        sqs.delete_message(QueueUrl=url, ReceiptHandle="not-a-receipt")
        check(False, "DeleteMessage of a bad receipt fails")
    except sqs.exceptions.ReceiptHandleIsInvalid:
        check(True, "ReceiptHandleIsInvalid")

    # Send, with every kind of attribute.
    attributes = {
        "kind": {"DataType": "String", "StringValue": "order"},
        "amount": {"DataType": "Number", "StringValue": "12.50"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01binary\xff"},
        "trace.id": {"DataType": "String.uuid", "StringValue": "b6d0c4a2"},
    }
    body = "héllo, wörld ✓"
    sent = sqs.send_message(QueueUrl=url, MessageBody=body, MessageAttributes=attributes)
    check(
        sent["MD5OfMessageBody"] == hashlib.md5(body.encode()).hexdigest(),
        "MD5OfMessageBody",
    )
    check(sent["MD5OfMessageAttributes"] == attributes_md5(attributes), "MD5OfMessageAttributes")
    batch = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "b1", "MessageBody": "batch one"},
            {"Id": "b2", "MessageBody": "batch two", "MessageAttributes": {"n": {"DataType": "Number", "StringValue": "2"}}},
            {"Id": "late", "MessageBody": "delayed", "DelaySeconds": 900},
            {"Id": "bad", "MessageBody": "bell \x07"},
        ],
    )
    ok = sorted(e["Id"] for e in batch["Successful"])
    check(ok == ["b1", "b2", "late"], f"SendMessageBatch successful {ok}")
    failed = [(e["Id"], e["Code"], e["SenderFault"]) for e in batch["Failed"]]
    check(failed == [("bad", "InvalidMessageContents", True)], f"SendMessageBatch failed {failed}")

    # Receive what is visible, with every attribute.
    got = {}
    for _ in range(10):
        received = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=2,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        for m in received.get("Messages", []):
            got[m["Body"]] = m
        if len(got) >= 3:
            break
    check(sorted(got) == sorted([body, "batch one", "batch two"]), f"received {sorted(got)}")
    first = got[body]
    check(first["MessageId"] == sent["MessageId"], "MessageId")
    check(first["MessageAttributes"]["blob"]["BinaryValue"] == b"\x00\x01binary\xff", "binary attribute")
    check(first["MessageAttributes"]["amount"]["StringValue"] == "12.50", "number attribute")
    check(first["MD5OfMessageAttributes"] == attributes_md5(attributes), "received attributes' MD5")
    check(first["Attributes"]["ApproximateReceiveCount"] == "1", "ApproximateReceiveCount")
    check(int(first["Attributes"]["SentTimestamp"]) > 1_600_000_000_000, "SentTimestamp")
    check("SenderId" in first["Attributes"], "SenderId")

    # Visibility: back at once, received again with a count of 2; then a batch change.
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=0)
    again = sqs.receive_message(
        QueueUrl=url, WaitTimeSeconds=5, MessageSystemAttributeNames=["ApproximateReceiveCount"],
        MessageAttributeNames=["trace.*"],
    )["Messages"][0]
    check(again["Body"] == body and again["Attributes"]["ApproximateReceiveCount"] == "2", "received again")
    check(list(again["MessageAttributes"]) == ["trace.id"], "attributes by prefix")
    check(again["MD5OfMessageAttributes"] == attributes_md5({"trace.id": attributes["trace.id"]}), "MD5 of what is returned")
    try:
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=10)
        check(False, "a stale receipt's visibility cannot change")
    except sqs.exceptions.MessageNotInflight:
        check(True, "MessageNotInflight")
    changed = sqs.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "a", "ReceiptHandle": again["ReceiptHandle"], "VisibilityTimeout": 60},
            {"Id": "b", "ReceiptHandle": got["batch one"]["ReceiptHandle"], "VisibilityTimeout": 60},
        ],
    )
    check(sorted(e["Id"] for e in changed["Successful"]) == ["a", "b"], "ChangeMessageVisibilityBatch")

    # Delete one, then the others in a batch.
    sqs.delete_message(QueueUrl=url, ReceiptHandle=again["ReceiptHandle"])
    deleted = sqs.delete_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "one", "ReceiptHandle": got["batch one"]["ReceiptHandle"]},
            {"Id": "two", "ReceiptHandle": got["batch two"]["ReceiptHandle"]},
        ],
    )
    check(sorted(e["Id"] for e in deleted["Successful"]) == ["one", "two"], "DeleteMessageBatch")
    check(deleted.get("Failed", []) == [], "DeleteMessageBatch failures")

    counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    check(counts["ApproximateNumberOfMessages"] == "0", f"visible {counts}")
    check(counts["ApproximateNumberOfMessagesNotVisible"] == "0", f"in flight {counts}")
    check(counts["ApproximateNumberOfMessagesDelayed"] == "1", f"delayed {counts}")
    check(json.loads(counts["RedrivePolicy"]) == {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3}, "RedrivePolicy")
    sources = sqs.list_dead_letter_source_queues(QueueUrl=dlq_url)["queueUrls"]
    check(sources == [url], f"ListDeadLetterSourceQueues {sources}")

    sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "60", "DelaySeconds": "1"})
    changed = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout", "DelaySeconds"])
    check(changed["Attributes"] == {"VisibilityTimeout": "60", "DelaySeconds": "1"}, f"SetQueueAttributes {changed}")

    sqs.purge_queue(QueueUrl=url)
    counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesDelayed"])
    check(counts["Attributes"]["ApproximateNumberOfMessagesDelayed"] == "0", "PurgeQueue")

    sqs.delete_queue(QueueUrl=url)
    sqs.delete_queue(QueueUrl=dlq_url)
    left = sqs.list_queues(QueueNamePrefix="sdk-").get("QueueUrls", [])
    check(left == [], f"queues left {left}")

    forged = boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret + "x",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    try:
        forged.list_queues()
        check(False, "a wrong secret is refused")
    except forged.exceptions.ClientError as e:
        code = e.response["Error"]["Code"]
        check(code == "SignatureDoesNotMatch", f"wrong secret: {code}")

    print(f"{CHECKS} passed, 0 failed")


if __name__ == "__main__":
    main()
