//! The PostgreSQL change source against a real, private PostgreSQL cluster: changes come
//! out in commit order per key, rolled-back work never does, a transaction that commits
//! after a later one is not skipped, acknowledged changes are gone, values map to JSON as
//! `tests/cases/types.txt` says, and removing a trigger stops the capture.

mod support {
    pub mod cluster;
}

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use shoal_core::{ChangeFeed, ChangeOp, ChangeSources};
use shoal_manifest::PostgresTrigger;
use shoal_pg::Postgres;
use support::cluster::Cluster;
use tokio_postgres::{Client, NoTls};

fn trigger(table: &str) -> PostgresTrigger {
    PostgresTrigger {
        url_env: "DATABASE_URL".into(),
        schema: "public".into(),
        table: table.into(),
        operations: vec!["INSERT".into(), "UPDATE".into(), "DELETE".into()],
        batch_size: 100,
        batching_window_ms: 0,
        parallelization_factor: 1,
        maximum_retry_attempts: 0,
        report_batch_item_failures: false,
        on_failure: None,
    }
}

async fn client(cluster: &Cluster) -> Client {
    let (client, connection) = tokio_postgres::connect(&cluster.url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Everything readable now, acknowledged.
async fn drain(feed: &Arc<dyn ChangeFeed>) -> Vec<shoal_core::Change> {
    let mut all = Vec::new();
    loop {
        let page = feed.read(3).await.unwrap();
        if page.is_empty() {
            return all;
        }
        let ids: Vec<i64> = page.iter().map(|c| c.sequence).collect();
        feed.ack(&ids).await.unwrap();
        all.extend(page);
    }
}

fn key(c: &shoal_core::Change) -> i64 {
    serde_json::from_str::<Value>(&c.keys).unwrap()["id"]
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_arrive_in_commit_order_per_key_and_rollbacks_never() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let db = client(&cluster).await;
    db.batch_execute("CREATE TABLE orders (id int PRIMARY KEY, total numeric, note text)")
        .await
        .unwrap();
    let feed = Postgres::new()
        .open(&cluster.url, "audit:public.orders", &trigger("orders"))
        .await
        .unwrap();
    assert!(drain(&feed).await.is_empty());

    // One transaction with several changes to two keys, then one change per transaction.
    db.batch_execute(
        "BEGIN;
         INSERT INTO orders VALUES (1, 10, 'a'), (2, 20, 'b');
         UPDATE orders SET total = 11 WHERE id = 1;
         DELETE FROM orders WHERE id = 2;
         COMMIT;",
    )
    .await
    .unwrap();
    db.batch_execute("BEGIN; INSERT INTO orders VALUES (3, 1, 'x'); ROLLBACK;")
        .await
        .unwrap();
    for total in 12..20 {
        db.execute("UPDATE orders SET total = $1::int WHERE id = 1", &[&total])
            .await
            .unwrap();
    }
    db.batch_execute("DELETE FROM orders WHERE id = 1")
        .await
        .unwrap();

    let changes = drain(&feed).await;
    let mut per_key: BTreeMap<i64, Vec<(ChangeOp, Option<Value>)>> = BTreeMap::new();
    for c in &changes {
        let total = c
            .new_image
            .as_deref()
            .map(|i| serde_json::from_str::<Value>(i).unwrap()["total"].clone());
        per_key.entry(key(c)).or_default().push((c.op, total));
    }
    assert!(
        !per_key.contains_key(&3),
        "a rolled-back insert was delivered"
    );
    let ones: Vec<String> = per_key[&1]
        .iter()
        .map(|(op, t)| {
            format!(
                "{}{}",
                op.event_name(),
                t.as_ref().map_or(String::new(), |t| format!(" {t}"))
            )
        })
        .collect();
    let mut expected = vec!["INSERT 10".to_owned(), "MODIFY 11".to_owned()];
    expected.extend((12..20).map(|t| format!("MODIFY {t}")));
    expected.push("REMOVE".to_owned());
    assert_eq!(ones, expected);
    let twos: Vec<ChangeOp> = per_key[&2].iter().map(|(op, _)| *op).collect();
    assert_eq!(twos, [ChangeOp::Insert, ChangeOp::Remove]);
    // The old image of a delete is the row; of an update, the row before.
    let remove = changes
        .iter()
        .find(|c| c.op == ChangeOp::Remove && key(c) == 2)
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(remove.old_image.as_deref().unwrap()).unwrap()["note"],
        "b"
    );
    // Acknowledged changes are gone from the outbox.
    assert_eq!(cluster.psql("SELECT count(*) FROM shoal.changes"), "0");
    let lag = feed.lag().await.unwrap();
    assert_eq!(lag.records, 0);
    assert_eq!(lag.position, changes.iter().map(|c| c.sequence).max());
}

/// The case an id cursor gets wrong: T1 writes first (lower id) but commits after T2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_committing_after_a_later_one_is_not_skipped() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let db = client(&cluster).await;
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
        .await
        .unwrap();
    let feed = Postgres::new()
        .open(&cluster.url, "f:public.items", &trigger("items"))
        .await
        .unwrap();
    let mut t1 = client(&cluster).await;
    let mut t2 = client(&cluster).await;
    let tx1 = t1.transaction().await.unwrap();
    tx1.execute("INSERT INTO items VALUES (1, 1)", &[])
        .await
        .unwrap();
    let tx2 = t2.transaction().await.unwrap();
    tx2.execute("INSERT INTO items VALUES (2, 2)", &[])
        .await
        .unwrap();
    tx2.commit().await.unwrap();

    let first = drain(&feed).await;
    assert_eq!(
        first.iter().map(key).collect::<Vec<_>>(),
        [2],
        "T1 is still open"
    );
    // Same key after T2's commit, in a third transaction: must come after T2's change.
    db.execute("UPDATE items SET v = 3 WHERE id = 2", &[])
        .await
        .unwrap();
    tx1.commit().await.unwrap();
    let second = drain(&feed).await;
    let keys: Vec<i64> = second.iter().map(key).collect();
    assert_eq!(
        keys.iter().filter(|&&k| k == 1).count(),
        1,
        "T1's change was skipped: {keys:?}"
    );
    assert!(second
        .iter()
        .any(|c| key(c) == 2 && c.op == ChangeOp::Modify));
    assert!(first[0].sequence < second.iter().find(|c| key(c) == 2).unwrap().sequence);
}

/// Paging inside a window while another transaction commits keeps a key's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_during_paging_waits_for_the_next_window() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let db = client(&cluster).await;
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
        .await
        .unwrap();
    let feed = Postgres::new()
        .open(&cluster.url, "f:public.items", &trigger("items"))
        .await
        .unwrap();
    let mut slow = client(&cluster).await;
    let tx = slow.transaction().await.unwrap();
    tx.execute("INSERT INTO items VALUES (100, 0)", &[])
        .await
        .unwrap(); // lowest id, open
    db.batch_execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 6) g")
        .await
        .unwrap();
    let page = feed.read(3).await.unwrap();
    assert_eq!(page.len(), 3);
    feed.ack(&page.iter().map(|c| c.sequence).collect::<Vec<_>>())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Key 100 changes again after its insert committed: this must not overtake the insert.
    db.execute("UPDATE items SET v = 1 WHERE id = 100", &[])
        .await
        .unwrap();
    let rest = drain(&feed).await;
    let hundred: Vec<ChangeOp> = rest
        .iter()
        .filter(|c| key(c) == 100)
        .map(|c| c.op)
        .collect();
    assert_eq!(hundred, [ChangeOp::Insert, ChangeOp::Modify]);
    assert_eq!(rest.len() + page.len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_types_map_to_json_as_the_table_says() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let db = client(&cluster).await;
    let cases: Vec<(String, String, String)> = include_str!("cases/types.txt")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let parts: Vec<&str> = l.splitn(3, " | ").collect();
            (parts[0].into(), parts[1].into(), parts[2].into())
        })
        .collect();
    let columns: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, (ty, _, _))| format!("c{i} {ty}"))
        .collect();
    db.batch_execute(&format!(
        "CREATE TABLE typed (id int PRIMARY KEY, {})",
        columns.join(", ")
    ))
    .await
    .unwrap();
    let feed = Postgres::new()
        .open(&cluster.url, "t:public.typed", &trigger("typed"))
        .await
        .unwrap();
    // Written from a session in another zone: the image is in UTC anyway.
    let values: Vec<&str> = cases.iter().map(|(_, v, _)| v.as_str()).collect();
    db.batch_execute(&format!(
        "SET TimeZone = 'Asia/Tokyo'; INSERT INTO typed VALUES (1, {})",
        values.join(", ")
    ))
    .await
    .unwrap();
    let changes = drain(&feed).await;
    assert_eq!(changes.len(), 1);
    let image: Value = serde_json::from_str(changes[0].new_image.as_deref().unwrap()).unwrap();
    let mut wrong = Vec::new();
    for (i, (ty, literal, expected)) in cases.iter().enumerate() {
        let expected: Value =
            serde_json::from_str(expected).unwrap_or_else(|e| panic!("{expected}: {e}"));
        if image[format!("c{i}")] != expected {
            wrong.push(format!(
                "{ty} {literal}: got {}, expected {expected}",
                image[format!("c{i}")]
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Exact digits survive as text (a JSON parser may round them; the record does not).
    assert!(changes[0]
        .new_image
        .as_deref()
        .unwrap()
        .contains("0.1000000000000000000000000001"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_trigger_stops_the_capture_and_forgets_its_changes() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let db = client(&cluster).await;
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
        .await
        .unwrap();
    let pg = Postgres::new();
    let t = trigger("items");
    let _feed = pg.open(&cluster.url, "f:public.items", &t).await.unwrap();
    // Opening again (a restart, a redeploy) is idempotent.
    let feed = pg.open(&cluster.url, "f:public.items", &t).await.unwrap();
    db.batch_execute("INSERT INTO items VALUES (1, 1), (2, 2)")
        .await
        .unwrap();
    assert_eq!(cluster.psql("SELECT count(*) FROM shoal.changes"), "2");
    assert_eq!(
        pg.remove(&cluster.url, "f:public.items", &t).await.unwrap(),
        2
    );
    db.batch_execute("INSERT INTO items VALUES (3, 3)")
        .await
        .unwrap();
    assert!(feed.read(10).await.unwrap().is_empty());
    assert_eq!(
        cluster.psql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'shoal_%'"),
        "0"
    );
    // A check makes the install's checks and leaves nothing behind.
    db.batch_execute("CREATE TABLE public.other (id int PRIMARY KEY)")
        .await
        .unwrap();
    pg.check(&cluster.url, "f:public.other", &trigger("other"))
        .await
        .unwrap();
    assert_eq!(
        cluster.psql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'shoal_%'"),
        "0"
    );
    // A table without a primary key is refused with a way out.
    db.batch_execute("CREATE TABLE public.loose (v int)")
        .await
        .unwrap();
    let err = pg
        .check(&cluster.url, "f:public.loose", &trigger("loose"))
        .await
        .err()
        .unwrap();
    assert!(err.0.contains("no primary key"), "{err}");
    let err = pg
        .open(&cluster.url, "f:public.nope", &trigger("nope"))
        .await
        .err()
        .unwrap();
    assert!(err.0.contains("does not exist"), "{err}");
}
