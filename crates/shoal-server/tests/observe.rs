//! Seeing what the platform did: Lambda's START/END/REPORT lines around every call, the
//! bill they add up to (`GET /admin/cost`), one invocation's log tail, and `/metrics`
//! taken under load and checked by Prometheus's own `promtool` (Debian's `prometheus`
//! package; `.ci/run` installs it).

mod support;

use std::time::Instant;

use hyper::StatusCode;
use support::{example, promtool_check, Api, Reply, TestServer};

/// `Key: value` fields of a REPORT line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split('\t').find_map(|f| {
        f.trim()
            .trim_start_matches("REPORT ")
            .strip_prefix(key)?
            .strip_prefix(": ")
    })
}

fn number(line: &str, key: &str) -> f64 {
    field(line, key)
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

async fn burst(api: &Api, n: usize) -> Vec<Reply> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move { api.get("/helloWorld").await })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("request task"));
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_ten_is_reported_call_by_call_billed_and_scraped() {
    let server = TestServer::start().await;
    let (status, body) = server.deploy_dir(&example("hello")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // The burst, with a scrape taken while its calls are in flight.
    let began = Instant::now();
    let scrape = {
        let api = server.api.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
            api.control(hyper::Method::GET, "/metrics", &[], bytes::Bytes::new())
                .await
        })
    };
    let replies = burst(&server.api, 10).await;
    let wall = began.elapsed();
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let scrape = scrape.await.expect("scrape task");
    assert_eq!(scrape.status, StatusCode::OK);
    let (valid, said) = promtool_check(&scrape.text());
    assert!(valid, "promtool check metrics: {said}\n{}", scrape.text());
    assert_eq!(
        scrape.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    // What Prometheus asks for: OpenMetrics, its counters' samples named `_total`.
    let om = server
        .control(
            hyper::Method::GET,
            "/metrics",
            &[(
                "accept",
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
            )],
            bytes::Bytes::new(),
        )
        .await
        .text();
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE shoal_invocations counter"), "{om}");
    assert!(
        scrape
            .text()
            .contains("shoal_in_flight{function=\"hello\",version=\"1\"}"),
        "{}",
        scrape.text()
    );

    // One START, END and REPORT per call, in that order per request id.
    let records = server.logs("hello").await;
    let platform: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["stream"] == "platform")
        .map(|r| {
            (
                r["request_id"].as_str().unwrap_or("-"),
                r["message"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let reports: Vec<&str> = platform
        .iter()
        .filter(|(_, m)| m.starts_with("REPORT RequestId: "))
        .map(|(_, m)| *m)
        .collect();
    assert_eq!(reports.len(), 10, "{platform:#?}");
    for (id, line) in platform.iter().filter(|(_, m)| m.starts_with("REPORT")) {
        let order: Vec<&str> = platform
            .iter()
            .filter(|(i, _)| i == id)
            .map(|(_, m)| m.split(' ').next().unwrap_or(""))
            .collect();
        assert_eq!(order, ["START", "END", "REPORT"], "{id}");
        assert_eq!(field(line, "RequestId"), Some(*id));
        assert_eq!(field(line, "Memory Size"), Some("512 MB"));
        // hello sleeps 2 s: every call's Duration says so, and Lambda bills at least that.
        assert!(number(line, "Duration") >= 2000.0, "{line}");
        assert!(
            number(line, "Billed Duration") >= number(line, "Duration"),
            "{line}"
        );
        assert!(number(line, "Max Memory Used") > 0.0, "{line}");
    }

    // Init Duration: on exactly one call per instance, the one that started it.
    let mut instances: Vec<&str> = reports
        .iter()
        .map(|l| field(l, "Instance").expect("Instance"))
        .collect();
    instances.sort();
    instances.dedup();
    let cold = reports
        .iter()
        .filter(|l| field(l, "Init Duration").is_some())
        .count();
    assert_eq!(cold, instances.len(), "{reports:#?}");

    // The shares of an instance add up to no more than the burst's wall time, and one
    // busy instance held its calls for at least hello's 2 s.
    for instance in &instances {
        let busy: f64 = reports
            .iter()
            .filter(|l| field(l, "Instance") == Some(instance))
            .map(|l| number(l, "Instance Share"))
            .sum();
        assert!(
            busy <= wall.as_secs_f64() * 1000.0 + 1.0,
            "{instance}: {busy} ms"
        );
    }
    let busy_all: f64 = reports.iter().map(|l| number(l, "Instance Share")).sum();
    assert!(busy_all >= 2000.0, "{busy_all}");

    // The bill: Lambda's side is the REPORT lines' billed durations at 512 MB; Shoal's is
    // the instances' busy time. One instance gives about 10×; each extra one divides it.
    let cost = server.admin_get("/admin/cost?function=hello").await;
    let hello = &cost["functions"][0];
    assert_eq!(hello["function"], "hello");
    assert_eq!(hello["invocations"], 10);
    assert_eq!(hello["cold_starts"], instances.len());
    let billed: f64 = reports.iter().map(|l| number(l, "Billed Duration")).sum();
    let lambda_gb_s = hello["lambda_gb_seconds"]
        .as_f64()
        .expect("lambda_gb_seconds");
    assert!((lambda_gb_s - billed / 1000.0 * 0.5).abs() < 1e-6, "{cost}");
    let shoal_gb_s = hello["shoal_configured_gb_seconds"]
        .as_f64()
        .expect("shoal");
    let ratio = lambda_gb_s / shoal_gb_s;
    let k = instances.len() as f64;
    assert!(
        ratio > 10.0 / k * 0.5 && ratio < 12.0,
        "ratio {ratio} with {k} instance(s): {cost}"
    );
    assert!(
        hello["shoal_measured_gb_seconds"]
            .as_f64()
            .expect("measured")
            > 0.0,
        "{cost}"
    );
    let unknown = server
        .control(
            hyper::Method::GET,
            "/admin/cost?function=nope",
            &[],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    // One invocation's tail, as the Invoke API's LogType: Tail will return it.
    let id = field(reports[0], "RequestId").expect("id").to_owned();
    let tail = server
        .platform()
        .invocation_log("hello", &id, 4096)
        .await
        .expect("tail");
    let lines: Vec<&str> = tail.lines().collect();
    assert!(
        lines
            .first()
            .is_some_and(|l| l.starts_with("START RequestId: ")),
        "{tail}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with("REPORT RequestId: ")),
        "{tail}"
    );
    assert!(lines
        .iter()
        .all(|l| !l.contains("RequestId: ") || l.contains(&id)));
    let short = server
        .platform()
        .invocation_log("hello", &id, 40)
        .await
        .expect("tail");
    // Cut at a line start: the last line alone is longer than 40 bytes.
    assert!(short.len() <= 40 && tail.ends_with(&short), "{short:?}");

    // Cold starts and queue waits are counted for the scrape after the burst.
    let after = server
        .control(hyper::Method::GET, "/metrics", &[], bytes::Bytes::new())
        .await
        .text();
    let cold_line = after
        .lines()
        .find(|l| l.starts_with("shoal_cold_starts_total{function=\"hello\"}"))
        .unwrap_or_else(|| panic!("no cold starts counter:\n{after}"));
    let counted: f64 = cold_line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a value");
    assert_eq!(counted as usize, instances.len());
    assert!(after.contains("shoal_queue_wait_seconds_count{function=\"hello\"} 10"));
    let (valid, said) = promtool_check(&after);
    assert!(valid, "promtool check metrics: {said}\n{after}");
    for name in [
        "shoal_invocations_total{function=\"hello\",outcome=\"success\"} 10",
        "shoal_invocation_duration_seconds_bucket",
        "shoal_init_duration_seconds_count",
        "shoal_invocation_cpu_share_seconds_total",
        "shoal_invocation_instance_share_seconds_total",
        "shoal_instance_limit",
        "shoal_queued_invocations",
    ] {
        assert!(after.contains(name), "{name} missing:\n{after}");
    }
    server.shutdown().await;
}
