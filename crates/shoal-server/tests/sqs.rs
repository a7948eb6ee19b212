//! The SQS API (JSON protocol) on a real daemon: every action, SQS's error answers, long
//! polling woken by a send, visibility timeouts that run out, redrive to a dead-letter
//! queue, and the queues in `/admin/status` that `shoal queue ls` reads. The AWS SDK's own view of the same
//! API is `sqs_sdk.rs`.

mod support;

use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use support::{Reply, TestServer, PATIENCE};

/// The status and the query-protocol code (what the SDKs report) of an SQS error answer;
/// also checks the body's shape.
fn error(reply: &Reply) -> (StatusCode, String) {
    let body = reply.json();
    let kind = body["__type"].as_str().unwrap_or_default();
    assert!(
        kind.starts_with("com.amazonaws.sqs#") && body["message"].is_string(),
        "not an SQS error: {}",
        reply.text()
    );
    let header = reply.header("x-amzn-query-error").unwrap_or_default();
    let code = header.split(';').next().unwrap_or_default().to_owned();
    (reply.status, code)
}

async fn refused(server: &TestServer, action: &str, request: Value) -> (StatusCode, String) {
    let reply = server.sqs(action, &request).await;
    assert_ne!(
        reply.status,
        StatusCode::OK,
        "{action} {request}: {}",
        reply.text()
    );
    error(&reply)
}

async fn create(server: &TestServer, name: &str, attributes: Value) -> String {
    let created = server
        .sqs_ok(
            "CreateQueue",
            &json!({"QueueName": name, "Attributes": attributes}),
        )
        .await;
    created["QueueUrl"].as_str().unwrap().to_owned()
}

async fn attributes(server: &TestServer, url: &str) -> Value {
    server
        .sqs_ok(
            "GetQueueAttributes",
            &json!({"QueueUrl": url, "AttributeNames": ["All"]}),
        )
        .await["Attributes"]
        .clone()
}

async fn receive(server: &TestServer, url: &str, extra: Value) -> Vec<Value> {
    let mut request =
        json!({"QueueUrl": url, "AttributeNames": ["All"], "MessageAttributeNames": ["All"]});
    request
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let received = server.sqs_ok("ReceiveMessage", &request).await;
    received["Messages"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_are_created_found_listed_changed_and_deleted() {
    let server = TestServer::start().await;
    let url = create(&server, "orders", json!({})).await;
    assert_eq!(
        url,
        format!("http://{}/000000000000/orders", server.control),
        "a queue URL is the control listener's, as the client reached it"
    );
    // Creating it again with the same (or no) attributes is fine; with others it is not.
    assert_eq!(
        create(&server, "orders", json!({"VisibilityTimeout": "30"})).await,
        url
    );
    assert_eq!(
        refused(
            &server,
            "CreateQueue",
            json!({"QueueName": "orders", "Attributes": {"VisibilityTimeout": "31"}})
        )
        .await,
        (StatusCode::BAD_REQUEST, "QueueAlreadyExists".into())
    );
    for bad in ["has space", "q.fifo", "internal:name", &"x".repeat(81)] {
        assert_eq!(
            refused(&server, "CreateQueue", json!({"QueueName": bad})).await,
            (StatusCode::BAD_REQUEST, "InvalidParameterValue".into()),
            "{bad}"
        );
    }
    assert_eq!(
        refused(&server, "CreateQueue", json!({})).await.1,
        "MissingParameter"
    );
    assert_eq!(
        refused(
            &server,
            "CreateQueue",
            json!({"QueueName": "t", "Attributes": {"Bogus": "1"}})
        )
        .await
        .1,
        "InvalidAttributeName"
    );
    assert_eq!(
        refused(
            &server,
            "CreateQueue",
            json!({"QueueName": "t", "Attributes": {"DelaySeconds": "901"}})
        )
        .await
        .1,
        "InvalidAttributeValue"
    );
    assert_eq!(
        refused(
            &server,
            "CreateQueue",
            json!({"QueueName": "t", "tags": {"team": "a"}})
        )
        .await
        .1,
        "AWS.SimpleQueueService.UnsupportedOperation"
    );
    assert_eq!(
        refused(&server, "CreateQueue", json!({"QueueName": "t", "Attributes": {"RedrivePolicy": r#"{"deadLetterTargetArn":"arn:aws:sqs:local:000000000000:nowhere","maxReceiveCount":3}"#}})).await.1,
        "InvalidParameterValue",
        "a redrive target must exist"
    );

    let found = server
        .sqs_ok("GetQueueUrl", &json!({"QueueName": "orders"}))
        .await;
    assert_eq!(found["QueueUrl"], url);
    assert_eq!(
        refused(&server, "GetQueueUrl", json!({"QueueName": "nope"})).await,
        (
            StatusCode::BAD_REQUEST,
            "AWS.SimpleQueueService.NonExistentQueue".into()
        )
    );

    // Listing: a prefix, and pages of MaxResults with a NextToken.
    for name in ["orders-a", "orders-b", "other"] {
        create(&server, name, json!({})).await;
    }
    let listed = server
        .sqs_ok("ListQueues", &json!({"QueueNamePrefix": "orders"}))
        .await;
    let urls: Vec<&str> = listed["QueueUrls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().rsplit('/').next().unwrap())
        .collect();
    assert_eq!(urls, ["orders", "orders-a", "orders-b"]);
    assert!(listed.get("NextToken").is_none());
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut request = json!({"MaxResults": 2});
        if let Some(token) = &token {
            request["NextToken"] = json!(token);
        }
        let page = server.sqs_ok("ListQueues", &request).await;
        let urls = page["QueueUrls"].as_array().unwrap();
        assert!(urls.len() <= 2);
        names.extend(
            urls.iter()
                .map(|u| u.as_str().unwrap().rsplit('/').next().unwrap().to_owned()),
        );
        match page["NextToken"].as_str() {
            Some(next) => token = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(names, ["orders", "orders-a", "orders-b", "other"]);
    assert_eq!(
        refused(&server, "ListQueues", json!({"MaxResults": 0}))
            .await
            .1,
        "InvalidParameterValue"
    );

    // Attributes: SQS's defaults, then changed.
    let all = attributes(&server, &url).await;
    assert_eq!(all["VisibilityTimeout"], "30");
    assert_eq!(all["MessageRetentionPeriod"], "345600");
    assert_eq!(all["DelaySeconds"], "0");
    assert_eq!(all["MaximumMessageSize"], "262144");
    assert_eq!(all["ReceiveMessageWaitTimeSeconds"], "0");
    assert_eq!(all["QueueArn"], "arn:aws:sqs:local:000000000000:orders");
    assert_eq!(all["ApproximateNumberOfMessages"], "0");
    assert!(
        all["CreatedTimestamp"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 1_600_000_000
    );
    assert!(all.get("RedrivePolicy").is_none());
    server
        .sqs_ok(
            "SetQueueAttributes",
            &json!({"QueueUrl": url, "Attributes": {"VisibilityTimeout": "60", "DelaySeconds": "2"}}),
        )
        .await;
    let some = server
        .sqs_ok(
            "GetQueueAttributes",
            &json!({"QueueUrl": url, "AttributeNames": ["VisibilityTimeout", "DelaySeconds"]}),
        )
        .await;
    assert_eq!(
        some["Attributes"],
        json!({"VisibilityTimeout": "60", "DelaySeconds": "2"})
    );
    assert_eq!(
        refused(
            &server,
            "GetQueueAttributes",
            json!({"QueueUrl": url, "AttributeNames": ["Bogus"]})
        )
        .await
        .1,
        "InvalidAttributeName"
    );
    assert_eq!(
        refused(
            &server,
            "SetQueueAttributes",
            json!({"QueueUrl": url, "Attributes": {"VisibilityTimeout": "-1"}})
        )
        .await
        .1,
        "InvalidAttributeValue"
    );
    assert_eq!(
        refused(&server, "SetQueueAttributes", json!({"QueueUrl": url}))
            .await
            .1,
        "MissingParameter"
    );

    server
        .sqs_ok("DeleteQueue", &json!({"QueueUrl": url}))
        .await;
    assert_eq!(
        refused(&server, "GetQueueUrl", json!({"QueueName": "orders"}))
            .await
            .1,
        "AWS.SimpleQueueService.NonExistentQueue"
    );
    assert_eq!(
        refused(&server, "DeleteQueue", json!({"QueueUrl": url}))
            .await
            .1,
        "AWS.SimpleQueueService.NonExistentQueue"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sqs_refuses_whatever_the_queue() {
    let server = TestServer::start().await;
    // Without the admin token: refused in SQS's shape, before anything is read.
    let reply = server
        .send(
            Method::POST,
            &server.control_url("/"),
            &[
                ("x-amz-target", "AmazonSQS.ListQueues"),
                ("content-type", "application/x-amz-json-1.0"),
            ],
            "{}",
        )
        .await;
    assert_eq!(
        error(&reply),
        (StatusCode::FORBIDDEN, "AccessDenied".into())
    );
    assert_eq!(
        refused(&server, "Frobnicate", json!({})).await,
        (StatusCode::BAD_REQUEST, "InvalidAction".into())
    );
    assert_eq!(
        refused(&server, "AddPermission", json!({})).await.1,
        "AWS.SimpleQueueService.UnsupportedOperation"
    );
    let reply = server
        .control(
            Method::POST,
            "/",
            &[("x-amz-target", "AmazonSQS.ListQueues")],
            "{not json",
        )
        .await;
    assert_eq!(error(&reply).1, "InvalidParameterValue");
    // An oversized body is refused without being held.
    let reply = server
        .control(
            Method::POST,
            "/",
            &[("x-amz-target", "AmazonSQS.SendMessage")],
            vec![b' '; 2 * 1024 * 1024],
        )
        .await;
    assert_eq!(error(&reply).1, "InvalidParameterValue");
    // The platform's internal queues (named with `:`) are out of this API's reach.
    assert_eq!(
        refused(
            &server,
            "ReceiveMessage",
            json!({"QueueUrl": format!("http://{}/000000000000/async:hello", server.control)})
        )
        .await
        .1,
        "AWS.SimpleQueueService.NonExistentQueue"
    );
    let missing = format!("http://{}/000000000000/missing", server.control);
    for action in [
        "SendMessage",
        "ReceiveMessage",
        "PurgeQueue",
        "GetQueueAttributes",
    ] {
        assert_eq!(
            refused(
                &server,
                action,
                json!({"QueueUrl": missing, "MessageBody": "x"})
            )
            .await
            .1,
            "AWS.SimpleQueueService.NonExistentQueue",
            "{action}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_travel_with_their_attributes_and_sqs_digests() {
    let server = TestServer::start().await;
    let url = create(&server, "mail", json!({})).await;
    // SQS's own published digest for this attribute, and MD5("hello").
    let sent = server
        .sqs_ok(
            "SendMessage",
            &json!({
                "QueueUrl": url,
                "MessageBody": "hello",
                "MessageAttributes": {"attribName1": {"DataType": "String", "StringValue": "attribValue 1"}},
            }),
        )
        .await;
    assert_eq!(sent["MD5OfMessageBody"], "5d41402abc4b2a76b9719d911017c592");
    assert_eq!(
        sent["MD5OfMessageAttributes"],
        "19e27d4e946b072f3f58da80d94fd778"
    );
    let id = sent["MessageId"].as_str().unwrap().to_owned();
    let sent = server
        .sqs_ok(
            "SendMessage",
            &json!({
                "QueueUrl": url,
                "MessageBody": "with more",
                "MessageAttributes": {
                    "attribName1": {"DataType": "String", "StringValue": "attribValue 1"},
                    "customNumberTypeAttrib": {"DataType": "Number.float", "StringValue": "4563442423554324324264524243.32543234"},
                    "binaryAttribute": {"DataType": "Binary", "BinaryValue": "SGVsbG8gYmluYXJ5IHdvcmxkIQ=="},
                },
            }),
        )
        .await;
    assert_eq!(
        sent["MD5OfMessageAttributes"],
        "c932db14a896c663f83c260297d594ff"
    );
    let plain = server
        .sqs_ok(
            "SendMessage",
            &json!({"QueueUrl": url, "MessageBody": "plain"}),
        )
        .await;
    assert!(plain.get("MD5OfMessageAttributes").is_none(), "{plain}");

    let before = Instant::now();
    let messages = receive(
        &server,
        &url,
        json!({"MaxNumberOfMessages": 10, "WaitTimeSeconds": 5}),
    )
    .await;
    assert!(!messages.is_empty());
    let mut all = messages;
    while all.len() < 3 && before.elapsed() < PATIENCE {
        all.extend(
            receive(
                &server,
                &url,
                json!({"MaxNumberOfMessages": 10, "WaitTimeSeconds": 1}),
            )
            .await,
        );
    }
    assert_eq!(all.len(), 3, "{all:#?}");
    let by_body = |body: &str| all.iter().find(|m| m["Body"] == body).unwrap().clone();
    let hello = by_body("hello");
    assert_eq!(hello["MessageId"], id.as_str());
    assert_eq!(hello["MD5OfBody"], "5d41402abc4b2a76b9719d911017c592");
    assert_eq!(
        hello["MD5OfMessageAttributes"],
        "19e27d4e946b072f3f58da80d94fd778"
    );
    assert_eq!(
        hello["MessageAttributes"],
        json!({"attribName1": {"DataType": "String", "StringValue": "attribValue 1"}})
    );
    assert_eq!(hello["Attributes"]["ApproximateReceiveCount"], "1");
    assert_eq!(hello["Attributes"]["SenderId"], "000000000000");
    let sent_at: u64 = hello["Attributes"]["SentTimestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let first: u64 = hello["Attributes"]["ApproximateFirstReceiveTimestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(sent_at > 1_600_000_000_000 && first >= sent_at, "{hello}");
    let more = by_body("with more");
    assert_eq!(
        more["MD5OfMessageAttributes"],
        "c932db14a896c663f83c260297d594ff"
    );
    assert_eq!(
        more["MessageAttributes"]["binaryAttribute"]["BinaryValue"],
        "SGVsbG8gYmluYXJ5IHdvcmxkIQ=="
    );
    let plain = by_body("plain");
    assert!(
        plain.get("MessageAttributes").is_none() && plain.get("MD5OfMessageAttributes").is_none()
    );

    // In flight now: a receive gets nothing; making one visible again (0) brings it back
    // with a second receive count, and only the attributes asked for.
    assert!(receive(&server, &url, json!({})).await.is_empty());
    server
        .sqs_ok(
            "ChangeMessageVisibility",
            &json!({"QueueUrl": url, "ReceiptHandle": more["ReceiptHandle"], "VisibilityTimeout": 0}),
        )
        .await;
    let again = server
        .sqs_ok(
            "ReceiveMessage",
            &json!({"QueueUrl": url, "MessageSystemAttributeNames": ["ApproximateReceiveCount"], "MessageAttributeNames": ["custom.*", "attribName1"], "WaitTimeSeconds": 5}),
        )
        .await["Messages"][0]
        .clone();
    assert_eq!(again["Body"], "with more");
    assert_eq!(again["Attributes"], json!({"ApproximateReceiveCount": "2"}));
    let names: Vec<&String> = again["MessageAttributes"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(names, ["attribName1"], "custom.* is a prefix with a period");
    // The digest covers what is returned.
    assert_eq!(
        again["MD5OfMessageAttributes"],
        "19e27d4e946b072f3f58da80d94fd778"
    );
    // The old receipt is stale: changing its visibility is refused, deleting it is not.
    assert_eq!(
        refused(
            &server,
            "ChangeMessageVisibility",
            json!({"QueueUrl": url, "ReceiptHandle": more["ReceiptHandle"], "VisibilityTimeout": 5})
        )
        .await,
        (
            StatusCode::BAD_REQUEST,
            "AWS.SimpleQueueService.MessageNotInflight".into()
        )
    );
    assert_eq!(
        refused(&server, "ChangeMessageVisibility", json!({"QueueUrl": url, "ReceiptHandle": again["ReceiptHandle"], "VisibilityTimeout": 43_201})).await.1,
        "InvalidParameterValue"
    );
    assert_eq!(
        refused(
            &server,
            "DeleteMessage",
            json!({"QueueUrl": url, "ReceiptHandle": "garbage"})
        )
        .await,
        (StatusCode::NOT_FOUND, "ReceiptHandleIsInvalid".into())
    );
    assert_eq!(
        refused(&server, "DeleteMessage", json!({"QueueUrl": url}))
            .await
            .1,
        "MissingParameter"
    );

    // Batches: a change of visibility and a delete, each with a bad entry beside good ones.
    let changed = server
        .sqs_ok(
            "ChangeMessageVisibilityBatch",
            &json!({"QueueUrl": url, "Entries": [
                {"Id": "a", "ReceiptHandle": again["ReceiptHandle"], "VisibilityTimeout": 60},
                {"Id": "b", "ReceiptHandle": "garbage", "VisibilityTimeout": 60},
            ]}),
        )
        .await;
    assert_eq!(changed["Successful"], json!([{"Id": "a"}]));
    assert_eq!(changed["Failed"][0]["Id"], "b");
    assert_eq!(changed["Failed"][0]["Code"], "ReceiptHandleIsInvalid");
    assert_eq!(changed["Failed"][0]["SenderFault"], true);
    let deleted = server
        .sqs_ok(
            "DeleteMessageBatch",
            &json!({"QueueUrl": url, "Entries": [
                {"Id": "h", "ReceiptHandle": hello["ReceiptHandle"]},
                {"Id": "m", "ReceiptHandle": again["ReceiptHandle"]},
                {"Id": "x", "ReceiptHandle": "garbage"},
                {"Id": "y"},
            ]}),
        )
        .await;
    assert_eq!(deleted["Successful"], json!([{"Id": "h"}, {"Id": "m"}]));
    let failed: Vec<(&str, &str)> = deleted["Failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["Id"].as_str().unwrap(), f["Code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        failed,
        [("y", "MissingParameter"), ("x", "ReceiptHandleIsInvalid")]
    );
    server
        .sqs_ok(
            "DeleteMessage",
            &json!({"QueueUrl": url, "ReceiptHandle": plain["ReceiptHandle"]}),
        )
        .await;
    let counts = attributes(&server, &url).await;
    assert_eq!(
        (
            &counts["ApproximateNumberOfMessages"],
            &counts["ApproximateNumberOfMessagesNotVisible"]
        ),
        (&json!("0"), &json!("0")),
        "everything deleted"
    );

    // Whole-request batch errors.
    let batch = |entries: Value| json!({"QueueUrl": url, "Entries": entries});
    assert_eq!(
        refused(&server, "SendMessageBatch", batch(json!([])))
            .await
            .1,
        "AWS.SimpleQueueService.EmptyBatchRequest"
    );
    let eleven: Vec<Value> = (0..11)
        .map(|i| json!({"Id": format!("e{i}"), "MessageBody": "b"}))
        .collect();
    assert_eq!(
        refused(&server, "SendMessageBatch", batch(json!(eleven)))
            .await
            .1,
        "AWS.SimpleQueueService.TooManyEntriesInBatchRequest"
    );
    assert_eq!(
        refused(
            &server,
            "DeleteMessageBatch",
            batch(json!([{"Id": "a", "ReceiptHandle": "r"}, {"Id": "a", "ReceiptHandle": "s"}]))
        )
        .await
        .1,
        "AWS.SimpleQueueService.BatchEntryIdsNotDistinct"
    );
    assert_eq!(
        refused(
            &server,
            "SendMessageBatch",
            batch(json!([{"Id": "not ok!", "MessageBody": "b"}]))
        )
        .await
        .1,
        "AWS.SimpleQueueService.InvalidBatchEntryId"
    );
    let big = "x".repeat(150_000);
    assert_eq!(
        refused(
            &server,
            "SendMessageBatch",
            batch(json!([{"Id": "a", "MessageBody": big}, {"Id": "b", "MessageBody": big}]))
        )
        .await
        .1,
        "AWS.SimpleQueueService.BatchRequestTooLong"
    );
    // Per-entry errors beside a stored message.
    let sent = server
        .sqs_ok(
            "SendMessageBatch",
            &batch(json!([
                {"Id": "ok", "MessageBody": "fine"},
                {"Id": "ctl", "MessageBody": "bell \u{7}"},
                {"Id": "late", "MessageBody": "x", "DelaySeconds": 901},
            ])),
        )
        .await;
    assert_eq!(sent["Successful"].as_array().unwrap().len(), 1);
    assert_eq!(sent["Successful"][0]["Id"], "ok");
    assert_eq!(sent["Successful"][0]["MD5OfMessageBody"], md5_hex("fine"));
    let mut codes: Vec<(String, String)> = sent["Failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["Id"].as_str().unwrap().to_owned(),
                f["Code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            ("ctl".to_owned(), "InvalidMessageContents".to_owned()),
            ("late".to_owned(), "InvalidParameterValue".to_owned())
        ]
    );
    assert_eq!(
        refused(
            &server,
            "SendMessage",
            json!({"QueueUrl": url, "MessageBody": "\u{fffe}"})
        )
        .await
        .1,
        "InvalidMessageContents"
    );
    // A queue's own size limit.
    server
        .sqs_ok(
            "SetQueueAttributes",
            &json!({"QueueUrl": url, "Attributes": {"MaximumMessageSize": "1024"}}),
        )
        .await;
    assert_eq!(
        refused(
            &server,
            "SendMessage",
            json!({"QueueUrl": url, "MessageBody": "x".repeat(1025)})
        )
        .await
        .1,
        "InvalidParameterValue"
    );

    // Delayed messages are counted as such, and purge empties the queue.
    server
        .sqs_ok(
            "SendMessage",
            &json!({"QueueUrl": url, "MessageBody": "later", "DelaySeconds": 900}),
        )
        .await;
    let counts = attributes(&server, &url).await;
    assert_eq!(counts["ApproximateNumberOfMessagesDelayed"], "1");
    assert_eq!(
        counts["ApproximateNumberOfMessages"], "1",
        "the batch's one message"
    );
    server.sqs_ok("PurgeQueue", &json!({"QueueUrl": url})).await;
    let counts = attributes(&server, &url).await;
    assert_eq!(
        (
            &counts["ApproximateNumberOfMessages"],
            &counts["ApproximateNumberOfMessagesDelayed"]
        ),
        (&json!("0"), &json!("0"))
    );
    server.shutdown().await;
}

fn md5_hex(text: &str) -> String {
    use md5::{Digest, Md5};
    Md5::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_waits_until_a_send_wakes_it() {
    let server = TestServer::start().await;
    let url = create(&server, "wake", json!({})).await;
    // Nothing comes: the poll lasts its WaitTimeSeconds, then answers empty.
    let started = Instant::now();
    assert!(receive(&server, &url, json!({"WaitTimeSeconds": 1}))
        .await
        .is_empty());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    let poll = {
        let api = server.api.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let reply = api
                .sqs(
                    "ReceiveMessage",
                    &json!({"QueueUrl": url, "WaitTimeSeconds": 20}),
                )
                .await;
            (reply.json(), started.elapsed())
        })
    };
    // Let the poll start waiting (if the send came first, it would find the message
    // at once, and the test would still pass without testing the wake-up).
    tokio::time::sleep(Duration::from_millis(500)).await;
    server
        .sqs_ok(
            "SendMessage",
            &json!({"QueueUrl": url, "MessageBody": "ding"}),
        )
        .await;
    let (received, waited) = poll.await.unwrap();
    assert_eq!(received["Messages"][0]["Body"], "ding", "{received}");
    assert!(
        waited < Duration::from_secs(15),
        "the send woke the poll: {waited:?}"
    );

    // The queue's ReceiveMessageWaitTimeSeconds applies when a receive names no wait.
    server
        .sqs_ok(
            "SetQueueAttributes",
            &json!({"QueueUrl": url, "Attributes": {"ReceiveMessageWaitTimeSeconds": "1"}}),
        )
        .await;
    let started = Instant::now();
    assert!(receive(&server, &url, json!({})).await.is_empty());
    assert!(started.elapsed() >= Duration::from_secs(1));

    // Stopping the daemon ends a long poll instead of waiting it out.
    let poll = {
        let api = server.api.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let _ = api
                .sqs(
                    "ReceiveMessage",
                    &json!({"QueueUrl": url, "WaitTimeSeconds": 20}),
                )
                .await;
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.shutdown().await;
    let waited = poll.await.unwrap();
    assert!(
        waited < Duration::from_secs(15),
        "the poll outlived the daemon's stop: {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsettled_message_returns_after_its_visibility_timeout_then_goes_to_the_dead_letter_queue(
) {
    let server = TestServer::start().await;
    let dlq = create(&server, "dead", json!({})).await;
    let arn = attributes(&server, &dlq).await["QueueArn"].clone();
    let url = create(
        &server,
        "work",
        json!({
            "VisibilityTimeout": "1",
            "RedrivePolicy": json!({"deadLetterTargetArn": arn, "maxReceiveCount": 2}).to_string(),
        }),
    )
    .await;
    let policy: Value = serde_json::from_str(
        attributes(&server, &url).await["RedrivePolicy"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        policy,
        json!({"deadLetterTargetArn": arn, "maxReceiveCount": 2})
    );
    let sources = server
        .sqs_ok("ListDeadLetterSourceQueues", &json!({"QueueUrl": dlq}))
        .await;
    assert_eq!(
        sources["queueUrls"],
        json!([url]),
        "the model's lower-case name"
    );

    let sent = server
        .sqs_ok(
            "SendMessage",
            &json!({"QueueUrl": url, "MessageBody": "poison"}),
        )
        .await;
    let first = receive(&server, &url, json!({"WaitTimeSeconds": 5})).await;
    assert_eq!(first[0]["Attributes"]["ApproximateReceiveCount"], "1");
    // Not deleted: it comes back once its second runs out (a long poll sees it).
    let second = receive(&server, &url, json!({"WaitTimeSeconds": 20})).await;
    assert_eq!(second[0]["MessageId"], sent["MessageId"]);
    assert_eq!(second[0]["Attributes"]["ApproximateReceiveCount"], "2");
    assert_ne!(second[0]["ReceiptHandle"], first[0]["ReceiptHandle"]);
    // Received twice without a delete: the next receive after its timeout moves it to
    // the dead-letter queue instead of handing it out a third time.
    let deadline = Instant::now() + PATIENCE;
    let dead = loop {
        let got = receive(&server, &url, json!({})).await;
        assert!(got.is_empty(), "handed out a third time: {got:?}");
        let dead = receive(&server, &dlq, json!({"WaitTimeSeconds": 1})).await;
        if !dead.is_empty() {
            break dead;
        }
        assert!(Instant::now() < deadline, "never dead-lettered");
    };
    assert_eq!(
        dead[0]["MessageId"], sent["MessageId"],
        "same message, same id"
    );
    assert_eq!(dead[0]["Body"], "poison");
    let counts = attributes(&server, &url).await;
    assert_eq!(
        (
            &counts["ApproximateNumberOfMessages"],
            &counts["ApproximateNumberOfMessagesNotVisible"]
        ),
        (&json!("0"), &json!("0"))
    );
    // Removing the policy.
    server
        .sqs_ok(
            "SetQueueAttributes",
            &json!({"QueueUrl": url, "Attributes": {"RedrivePolicy": ""}}),
        )
        .await;
    assert!(attributes(&server, &url)
        .await
        .get("RedrivePolicy")
        .is_none());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_shows_depth_age_and_dead_letter_and_a_send_survives_a_restart() {
    let mut server = TestServer::start().await;
    let dlq = create(&server, "dlq", json!({})).await;
    let arn = attributes(&server, &dlq).await["QueueArn"].clone();
    let url = create(
        &server,
        "jobs",
        json!({"RedrivePolicy": json!({"deadLetterTargetArn": arn, "maxReceiveCount": "5"}).to_string()}),
    )
    .await;
    for body in ["one", "two", "three"] {
        server
            .sqs_ok(
                "SendMessage",
                &json!({"QueueUrl": url, "MessageBody": body}),
            )
            .await;
    }
    server
        .sqs_ok(
            "SendMessage",
            &json!({"QueueUrl": url, "MessageBody": "later", "DelaySeconds": 600}),
        )
        .await;
    let held = receive(&server, &url, json!({"WaitTimeSeconds": 5})).await;
    assert_eq!(held.len(), 1);

    let status = server.admin_get("/admin/status").await;
    let queues = status["queues"].as_array().unwrap();
    let names: Vec<&str> = queues.iter().map(|q| q["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["dlq", "jobs"]);
    let jobs = &queues[1];
    assert_eq!(
        (
            jobs["visible"].as_u64(),
            jobs["in_flight"].as_u64(),
            jobs["delayed"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );
    assert!(jobs["oldest_age_ms"].as_u64().is_some(), "{jobs}");
    assert_eq!(jobs["dead_letter"], "dlq");
    assert_eq!(jobs["max_receive_count"], 5);
    assert_eq!(queues[0]["oldest_age_ms"], Value::Null);

    // What was acknowledged is still there after a restart.
    server.restart().await;
    let url = server
        .sqs_ok("GetQueueUrl", &json!({"QueueName": "jobs"}))
        .await["QueueUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    // The two visible ones; not the held one (an outside client's hold lasts its
    // visibility timeout, restart or not), nor the delayed one.
    let mut bodies = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while bodies.len() < 2 && Instant::now() < deadline {
        for m in receive(
            &server,
            &url,
            json!({"MaxNumberOfMessages": 10, "WaitTimeSeconds": 2}),
        )
        .await
        {
            bodies.push(m["Body"].as_str().unwrap().to_owned());
        }
    }
    bodies.extend(
        receive(&server, &url, json!({"MaxNumberOfMessages": 10}))
            .await
            .iter()
            .map(|m| m["Body"].as_str().unwrap().to_owned()),
    );
    bodies.sort();
    let mut expected: Vec<String> = ["one", "two", "three"]
        .into_iter()
        .filter(|b| held[0]["Body"] != *b)
        .map(str::to_owned)
        .collect();
    expected.sort();
    assert_eq!(bodies, expected);
    server.shutdown().await;
}
