//! Postgres data-change triggers against a real daemon, real Node instances and a private
//! PostgreSQL cluster: every committed change reaches the handler in commit order per key
//! (one and many transactions), a rollback delivers nothing, changes made while the daemon
//! is down arrive after it starts, a poison record is retried and then goes to the
//! on-failure queue while the other keys flow, status and `/metrics` show position and
//! lag, and a redeploy without the trigger, or deleting the function, removes it from the
//! database.

#[path = "../../shoal-pg/tests/support/cluster.rs"]
mod cluster;
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::Cluster;
use serde_json::Value;
use shoal_queue::{Holder, QueueConfig};
use support::{TestServer, PATIENCE};
use tokio_postgres::{Client, NoTls};

async fn client(cluster: &Cluster) -> Client {
    let (client, connection) = tokio_postgres::connect(&cluster.url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

async fn start() -> TestServer {
    TestServer::start_with(|c| {
        c.events.change_sources = Some(Arc::new(shoal_pg::Postgres::new()));
    })
    .await
}

/// `promtool check metrics` on a scrape, where promtool is installed (`.ci/run` installs
/// it; `tests/observe.rs` requires it).
#[allow(clippy::disallowed_methods)] // runs promtool; the daemon itself spawns nothing here
fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed: the scrape's format is not checked here");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The function's log lines (message text only).
async fn log_lines(server: &TestServer, function: &str) -> Vec<String> {
    let page = server
        .admin_get(&format!("/admin/functions/{function}/logs?tail=100000"))
        .await;
    page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// `seen KEY OP VALUE SEQ` lines, by key, in the order the handler saw them.
async fn seen(server: &TestServer, function: &str) -> BTreeMap<i64, Vec<String>> {
    let mut by_key: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for line in log_lines(server, function).await {
        let Some(rest) = line.split("seen ").nth(1) else {
            continue;
        };
        let parts: Vec<&str> = rest.split_whitespace().collect();
        by_key
            .entry(parts[0].parse().unwrap())
            .or_default()
            .push(format!("{} {}", parts[1], parts[2]));
    }
    by_key
}

async fn until_seen(
    server: &TestServer,
    function: &str,
    total: usize,
) -> BTreeMap<i64, Vec<String>> {
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        let by_key = seen(server, function).await;
        let n: usize = by_key.values().map(Vec::len).sum();
        if n >= total {
            return by_key;
        }
        assert!(
            Instant::now() < deadline,
            "saw {n} of {total} changes: {by_key:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Logs every record; checks the record's shape.
const HANDLER: &str = r#"
exports.handler = async (event) => {
  for (const r of event.Records) {
    const d = r.dynamodb;
    if (r.eventSource !== "shoal:postgres" || !r.eventID || !r.eventSourceARN.includes("table/public.orders")
        || typeof d.SequenceNumber !== "string" || typeof d.SizeBytes !== "number"
        || typeof d.ApproximateCreationDateTime !== "number") throw new Error("bad record shape");
    if (r.eventName === "MODIFY" && !d.OldImage) throw new Error("MODIFY without OldImage");
    const v = r.eventName === "REMOVE" ? "-" : d.NewImage.v;
    console.log(`seen ${d.Keys.id} ${r.eventName} ${v} ${d.SequenceNumber}`);
  }
  return {};
};"#;

fn manifest(url: &str, extra: &str) -> String {
    format!(
        r#"
        [functions.audit]
        handler = "index.handler"
        env = {{ DATABASE_URL = "{url}" }}
        events = [{{ postgres = {{ url_env = "DATABASE_URL", table = "public.orders", batch_size = 5, parallelization_factor = 3{extra} }} }}]
        "#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_changes_arrive_in_order_per_key_and_survive_a_restart() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let db = client(&cluster).await;
    db.batch_execute("CREATE TABLE public.orders (id int PRIMARY KEY, v int)")
        .await
        .unwrap();
    let mut server = start().await;
    // A refused deploy leaves nothing capturing: the valid trigger's install was a trial.
    let refused = format!(
        "{}\n[functions.other]\nhandler = \"index.handler\"\nenv = {{ DATABASE_URL = \"{}\" }}\n\
         events = [{{ postgres = {{ url_env = \"DATABASE_URL\", table = \"public.missing\" }} }}]\n",
        manifest(&cluster.url, ""),
        cluster.url
    );
    let (status, body) = server
        .deploy_files(&[("index.js", HANDLER), ("shoal.toml", &refused)])
        .await;
    assert_eq!(status, hyper::StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.to_string().contains("public.missing does not exist"),
        "{body}"
    );
    assert_eq!(
        cluster.psql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'shoal_%'"),
        "0"
    );
    server
        .deploy_ok(&[
            ("index.js", HANDLER),
            ("shoal.toml", &manifest(&cluster.url, "")),
        ])
        .await;

    // Many transactions, one transaction with many changes, and a rollback.
    for id in 1..=10 {
        db.execute("INSERT INTO public.orders VALUES ($1, 0)", &[&id])
            .await
            .unwrap();
    }
    db.batch_execute(
        "BEGIN;
         UPDATE public.orders SET v = v + 1;
         UPDATE public.orders SET v = v + 1 WHERE id <= 5;
         DELETE FROM public.orders WHERE id = 10;
         COMMIT;
         BEGIN; INSERT INTO public.orders VALUES (99, 0); UPDATE public.orders SET v = 50; ROLLBACK;",
    )
    .await
    .unwrap();
    for v in 3..=6 {
        db.execute("UPDATE public.orders SET v = $1 WHERE id = 1", &[&v])
            .await
            .unwrap();
    }
    // 10 inserts + 10 + 5 updates + 1 delete + 4 updates.
    let by_key = until_seen(&server, "audit", 30).await;
    assert!(
        !by_key.contains_key(&99),
        "a rolled-back insert was delivered"
    );
    assert_eq!(
        by_key[&1],
        ["INSERT 0", "MODIFY 1", "MODIFY 2", "MODIFY 3", "MODIFY 4", "MODIFY 5", "MODIFY 6"]
    );
    assert_eq!(by_key[&7], ["INSERT 0", "MODIFY 1"]);
    assert_eq!(by_key[&10], ["INSERT 0", "MODIFY 1", "REMOVE -"]);
    assert!(
        by_key.values().flatten().all(|s| !s.ends_with(" 50")),
        "a rolled-back update was delivered"
    );

    // Status and metrics: position moved, nothing left behind.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = server.admin_get("/admin/status").await;
        let trigger = status["triggers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["kind"] == "postgres")
            .cloned()
            .unwrap();
        if trigger["backlog"] == 0 && trigger["position"].is_string() {
            assert_eq!(trigger["source"], "public.orders");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status never caught up: {trigger}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = server
        .control(hyper::Method::GET, "/metrics", &[], bytes::Bytes::new())
        .await
        .text();
    assert!(
        metrics.contains("shoal_change_trigger_position{"),
        "{metrics}"
    );
    assert!(metrics.contains("shoal_change_trigger_lag_records{"));
    assert!(metrics.contains("shoal_change_trigger_lag_seconds{"));
    assert!(metrics.contains("shoal_change_trigger_changes_total{"));
    promtool_check(&metrics);

    // Changes made while the daemon is down arrive after it starts.
    server.stop().await;
    db.batch_execute(
        "INSERT INTO public.orders VALUES (20, 0);
         UPDATE public.orders SET v = 7 WHERE id = 1;
         DELETE FROM public.orders WHERE id = 2;",
    )
    .await
    .unwrap();
    server.restart().await;
    let by_key = until_seen(&server, "audit", 33).await;
    assert_eq!(by_key[&20], ["INSERT 0"]);
    assert_eq!(by_key[&1].last().unwrap(), "MODIFY 7");
    assert_eq!(by_key[&2].last().unwrap(), "REMOVE -");
    let total: usize = by_key.values().map(Vec::len).sum();
    assert_eq!(
        total, 33,
        "a change was delivered twice after a clean restart"
    );

    // A redeploy without the trigger removes it from the database.
    server
        .deploy_ok(&[
            ("index.js", HANDLER),
            (
                "shoal.toml",
                "[functions.audit]\nhandler = \"index.handler\"\n",
            ),
        ])
        .await;
    let deadline = Instant::now() + PATIENCE;
    while cluster.psql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'shoal_%'") != "0" {
        assert!(
            Instant::now() < deadline,
            "the database trigger was not removed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_retried_then_sent_to_on_failure_while_other_keys_flow() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let db = client(&cluster).await;
    db.batch_execute("CREATE TABLE public.orders (id int PRIMARY KEY, v int)")
        .await
        .unwrap();
    let server = start().await;
    server
        .platform()
        .queues()
        .create_queue("orders-failed", QueueConfig::default())
        .await
        .unwrap();
    // v = 666 is poison: reported as a failed item, every time.
    let handler = r#"
      exports.handler = async (event) => {
        const failures = [];
        for (const r of event.Records) {
          const d = r.dynamodb;
          const v = r.eventName === "REMOVE" ? "-" : d.NewImage.v;
          if (v === 666) { console.log(`poison ${d.SequenceNumber}`); failures.push({ itemIdentifier: d.SequenceNumber }); break; }
          console.log(`seen ${d.Keys.id} ${r.eventName} ${v} ${d.SequenceNumber}`);
        }
        return { batchItemFailures: failures };
      };"#;
    let extra = ", batch_size = 1, maximum_retry_attempts = 2, report_batch_item_failures = true, on_failure = \"orders-failed\"";
    let manifest = manifest(&cluster.url, extra).replace("batch_size = 5, ", "");
    server
        .deploy_ok(&[("index.js", handler), ("shoal.toml", &manifest)])
        .await;
    db.batch_execute(
        "INSERT INTO public.orders SELECT g, 0 FROM generate_series(1, 20) g;
         UPDATE public.orders SET v = 666 WHERE id = 5;
         UPDATE public.orders SET v = 1 WHERE id = 5;
         UPDATE public.orders SET v = 1 WHERE id <> 5;",
    )
    .await
    .unwrap();
    // Everything but the poison arrives, including key 5's change after it.
    let by_key = until_seen(&server, "audit", 40).await;
    assert_eq!(by_key[&5], ["INSERT 0", "MODIFY 1"]);
    assert!(by_key.values().all(|v| v.len() == 2), "{by_key:?}");
    // Tried 1 + 2 times, then recorded in the destination with the record itself.
    let lines = log_lines(&server, "audit").await;
    assert_eq!(
        lines.iter().filter(|l| l.contains("poison ")).count(),
        3,
        "{lines:#?}"
    );
    let got = server
        .platform()
        .queues()
        .receive("orders-failed", 10, None, Holder::External)
        .await
        .unwrap();
    assert_eq!(got.messages.len(), 1);
    let record: Value = serde_json::from_str(&got.messages[0].body).unwrap();
    assert_eq!(
        record["requestContext"]["condition"],
        "RetryAttemptsExhausted"
    );
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 3);
    assert_eq!(record["DDBStreamBatchInfo"]["batchSize"], 1);
    assert_eq!(record["Records"][0]["dynamodb"]["NewImage"]["v"], 666);
    let status = server.admin_get("/admin/status").await;
    let trigger = status["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "postgres")
        .cloned()
        .unwrap();
    assert_eq!(trigger["counts"]["to_destination"], 1, "{trigger}");

    // Deleting the function removes its database trigger and forgets its outbox rows.
    let deleted = server
        .control(
            hyper::Method::DELETE,
            "/admin/functions/audit",
            &[],
            bytes::Bytes::new(),
        )
        .await;
    assert!(deleted.status.is_success(), "{}", deleted.text());
    let deadline = Instant::now() + PATIENCE;
    while cluster.psql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'shoal_%'") != "0" {
        assert!(
            Instant::now() < deadline,
            "the database trigger outlived its function"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    db.batch_execute("UPDATE public.orders SET v = 2")
        .await
        .unwrap();
    assert_eq!(cluster.psql("SELECT count(*) FROM shoal.changes"), "0");
    assert_eq!(cluster.psql("SELECT count(*) FROM shoal.streams"), "0");
    server.shutdown().await;
}
