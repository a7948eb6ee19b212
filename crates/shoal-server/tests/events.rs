//! The event side against a real daemon and real Node instances: queue triggers with
//! partial batch failures and redrive to a dead-letter queue, `Event` invokes that retry
//! into an on-failure destination and survive a restart, and a full store answering 429.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_queue::{Holder, NewMessage, QueueConfig, Redrive};
use support::{log_lines, TestServer, PATIENCE};

/// Poll `check` until it returns something, or fail after [`PATIENCE`].
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pending(server: &TestServer, queue: &str) -> u64 {
    let s = server.platform().queues().queue(queue).unwrap().stats;
    s.visible + s.in_flight + s.delayed
}

async fn drain(server: &TestServer, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    loop {
        let got = server
            .platform()
            .queues()
            .receive(queue, 100, None, Holder::External)
            .await
            .unwrap();
        if got.messages.is_empty() {
            return bodies;
        }
        bodies.extend(got.messages.into_iter().map(|m| m.body));
    }
}

async fn send(server: &TestServer, queue: &str, bodies: impl IntoIterator<Item = String>) {
    let messages = bodies
        .into_iter()
        .map(|body| NewMessage {
            body,
            ..NewMessage::default()
        })
        .collect();
    server
        .platform()
        .queues()
        .send(queue, messages)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_trigger_deletes_what_succeeded_and_redrives_poison_to_the_dead_letter_queue() {
    let server = TestServer::start().await;
    let queues = server.platform().queues();
    queues
        .create_queue("jobs-dlq", QueueConfig::default())
        .await
        .unwrap();
    queues
        .create_queue(
            "jobs",
            QueueConfig {
                visibility_timeout_ms: 1_000,
                redrive: Some(Redrive {
                    dead_letter: "jobs-dlq".into(),
                    max_receive_count: 2,
                }),
                ..QueueConfig::default()
            },
        )
        .await
        .unwrap();
    // Every record is logged; poison ones are reported as failed items.
    let handler = r#"
        exports.handler = async (event) => {
          const failures = [];
          for (const r of event.Records) {
            if (r.eventSource !== "aws:sqs" || !r.receiptHandle || !r.md5OfBody) throw new Error("bad record shape");
            console.log(`seen ${r.body} receive ${r.attributes.ApproximateReceiveCount}`);
            if (r.body.startsWith("poison")) failures.push({ itemIdentifier: r.messageId });
          }
          return { batchItemFailures: failures };
        };"#;
    let manifest = r#"
        [functions.worker]
        handler = "index.handler"
        events = [{ queue = "jobs", batch_size = 5, report_batch_item_failures = true }]
    "#;
    server
        .deploy_ok(&[("index.js", handler), ("shoal.toml", manifest)])
        .await;
    let mut bodies: Vec<String> = (0..40).map(|i| format!("job-{i}")).collect();
    bodies.push("poison-a".into());
    bodies.push("poison-b".into());
    send(&server, "jobs", bodies).await;

    eventually("the queue to drain", async || {
        (pending(&server, "jobs") == 0 && pending(&server, "jobs-dlq") == 2).then_some(())
    })
    .await;
    let mut dead = drain(&server, "jobs-dlq").await;
    dead.sort();
    assert_eq!(dead, vec!["poison-a", "poison-b"]);
    let lines = log_lines(&server, "worker").await;
    for i in 0..40 {
        assert!(
            lines.iter().any(|l| l.contains(&format!("seen job-{i} "))),
            "job-{i} never reached the handler"
        );
    }
    // Poison was tried max_receive_count times before the move, not more.
    let tries = lines
        .iter()
        .filter(|l| l.contains("seen poison-a "))
        .count();
    assert_eq!(tries, 2, "{lines:?}");

    let status = server.admin_get("/admin/status?function=worker").await;
    let trigger = status["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "queue")
        .expect("the poller is in status")
        .clone();
    assert_eq!(trigger["source"], "jobs");
    assert!(trigger["cap"].as_u64().unwrap() >= 1, "{trigger}");
    assert!(!trigger["why"].as_str().unwrap().is_empty(), "{trigger}");
    let metrics = server
        .control(hyper::Method::GET, "/metrics", &[], bytes::Bytes::new())
        .await
        .text();
    assert!(
        metrics.contains(r#"shoal_queue_messages_total{queue="jobs-dlq",event="sent"}"#)
            || metrics
                .contains(r#"shoal_queue_messages_total{queue="jobs",event="dead_lettered"} 2"#),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_invokes_retry_into_the_destination_and_survive_a_restart() {
    let mut server =
        TestServer::start_with(|c| c.events.retry_base = Duration::from_millis(300)).await;
    server
        .platform()
        .queues()
        .create_queue("failed", QueueConfig::default())
        .await
        .unwrap();
    let handler = r#"
        exports.handler = async (event, context) => {
          console.log(`ran ${event.n} as ${context.awsRequestId}`);
          if (event.fail) throw new Error(`failing ${event.n}`);
          await new Promise((r) => setTimeout(r, event.wait || 0));
          return { ok: event.n };
        };"#;
    let manifest = r#"
        [functions.jobs]
        handler = "index.handler"
        maximum_retry_attempts = 2
        on_failure = "failed"
    "#;
    server
        .deploy_ok(&[("index.js", handler), ("shoal.toml", manifest)])
        .await;
    let event = [("x-amz-invocation-type", "Event")];
    let reply = server
        .invoke_raw("jobs", &event, json!({"n": 1, "fail": true}).to_string())
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let failing_id = reply.header("x-amzn-requestid").unwrap().to_owned();
    for n in 2..=11 {
        let reply = server
            .invoke_raw("jobs", &event, json!({"n": n, "wait": 50}).to_string())
            .await;
        assert_eq!(reply.status, 202, "{}", reply.text());
    }
    let record: Value = eventually("the destination record", async || {
        drain(&server, "failed")
            .await
            .first()
            .map(|b| serde_json::from_str(b).unwrap())
    })
    .await;
    assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 3);
    assert_eq!(record["requestContext"]["requestId"], failing_id.as_str());
    assert_eq!(record["requestPayload"]["n"], 1);
    assert_eq!(record["responsePayload"]["errorMessage"], "failing 1");
    let lines = log_lines(&server, "jobs").await;
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("ran 1 as ")).count(),
        3,
        "one attempt and two retries, same request id: {lines:?}"
    );
    for n in 2..=11 {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("ran {n} as "))),
            "event {n} never ran"
        );
    }

    // Accepted while the function is slow, then the daemon stops: nothing is lost.
    for n in 100..110 {
        let reply = server
            .invoke_raw("jobs", &event, json!({"n": n, "wait": 3000}).to_string())
            .await;
        assert_eq!(reply.status, 202);
    }
    server.restart().await;
    eventually(
        "every event accepted before the restart to run",
        async || {
            let lines = log_lines(&server, "jobs").await;
            (100..110)
                .all(|n| lines.iter().any(|l| l.starts_with(&format!("ran {n} as "))))
                .then_some(())
        },
    )
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_event_store_refuses_with_429_and_loses_nothing_it_took() {
    let server = TestServer::start_with(|c| c.events.max_pending_messages = 5).await;
    let handler = r#"
        exports.handler = async (event) => {
          console.log(`ran ${event.n}`);
          await new Promise((r) => setTimeout(r, 1500));
        };"#;
    let manifest =
        "[functions.slow]\nhandler = \"index.handler\"\nconcurrency = 1\nmax_instances = 1\n";
    server
        .deploy_ok(&[("index.js", handler), ("shoal.toml", manifest)])
        .await;
    let event = [("x-amz-invocation-type", "Event")];
    let mut accepted = Vec::new();
    let mut refused = 0;
    for n in 0..12 {
        let reply = server
            .invoke_raw("slow", &event, json!({ "n": n }).to_string())
            .await;
        match reply.status.as_u16() {
            202 => accepted.push(n),
            429 => {
                assert_eq!(reply.json()["Type"].as_str().unwrap_or("User"), "User");
                assert!(
                    reply.text().contains("TooManyRequestsException"),
                    "{}",
                    reply.text()
                );
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    }
    assert!(
        refused > 0,
        "the cap of 5 pending events must refuse some of 12"
    );
    assert!(accepted.len() >= 5, "{accepted:?}");
    eventually("every accepted event to run", async || {
        let lines = log_lines(&server, "slow").await;
        accepted
            .iter()
            .all(|n| lines.iter().any(|l| l == &format!("ran {n}")))
            .then_some(())
    })
    .await;
    server.shutdown().await;
}
