//! The SQLite backend: the contract's shared cases (`contract/`, run against every
//! backend) on a clock moved by hand, then what only this store promises — times and counts
//! to the millisecond on that clock, pending room, retention, file modes, reopening a store
//! and concurrent callers. A check any backend must pass belongs in `contract/`, not here.

mod contract;

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_queue::{
    EpochMs, Holder, NewMessage, Options, QueueBackend, QueueConfig, QueueError, Redrive, Settle,
    SqliteQueues,
};

const T0: EpochMs = 1_700_000_000_000;

/// A data directory removed on drop, and a clock tests move by hand.
struct Fixture {
    dir: PathBuf,
    now: Arc<AtomicI64>,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("shoal-queue-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Fixture {
            dir,
            now: Arc::new(AtomicI64::new(T0)),
        }
    }

    fn options(&self) -> Options {
        let now = self.now.clone();
        Options {
            clock: Arc::new(move || now.load(Ordering::SeqCst)),
            ..Options::default()
        }
    }

    fn open(&self) -> Arc<SqliteQueues> {
        self.open_with(self.options())
    }

    fn open_with(&self, options: Options) -> Arc<SqliteQueues> {
        SqliteQueues::open(&self.dir.join("events.db"), options).unwrap()
    }

    fn advance(&self, ms: i64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn msg(body: &str) -> NewMessage {
    NewMessage {
        body: body.into(),
        ..NewMessage::default()
    }
}

fn bodies(receipts: &shoal_queue::Receipts) -> Vec<&str> {
    receipts.messages.iter().map(|m| m.body.as_str()).collect()
}

async fn send(store: &SqliteQueues, queue: &str, body: &str) -> String {
    store.send(queue, vec![msg(body)]).await.unwrap()[0]
        .id
        .clone()
}

async fn receive(store: &SqliteQueues, queue: &str, max: usize) -> shoal_queue::Receipts {
    store
        .receive(queue, max, None, Holder::External)
        .await
        .unwrap()
}

fn counts(store: &SqliteQueues, queue: &str) -> (u64, u64, u64) {
    let s = store.queue(queue).unwrap().stats;
    (s.visible, s.in_flight, s.delayed)
}

#[tokio::test]
async fn times_come_from_the_clock_and_restart_in_the_dead_letter_queue() {
    let fx = Fixture::new("times");
    let store = fx.open();
    store
        .create_queue("dlq", QueueConfig::default())
        .await
        .unwrap();
    store
        .create_queue("q", redrive_config("dlq", 1))
        .await
        .unwrap();
    let info = store.queue("q").unwrap();
    assert_eq!((info.name.as_str(), info.created_at_ms), ("q", T0));
    send(&store, "q", "m").await;
    assert_eq!(store.queue("q").unwrap().stats.oldest_sent_at_ms, Some(T0));
    fx.advance(10);
    let m = receive(&store, "q", 1).await.messages.remove(0);
    assert_eq!((m.sent_at_ms, m.first_received_at_ms), (T0, T0 + 10));
    fx.advance(1_000);
    assert_eq!(receive(&store, "q", 1).await.dead_lettered, 1);
    // Dead-lettered, it keeps its send time; its first receive is the one in the new queue.
    let dead = receive(&store, "dlq", 1).await.messages.remove(0);
    assert_eq!(
        (dead.sent_at_ms, dead.first_received_at_ms),
        (T0, T0 + 1_010)
    );
}

#[tokio::test]
async fn the_database_is_private_even_if_left_wider() {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fixture::new("private");
    let files = ["events.db", "events.db-wal"];
    let mode = |file: &str| {
        std::fs::metadata(fx.dir.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    {
        let store = fx.open();
        store
            .create_queue("q", QueueConfig::default())
            .await
            .unwrap();
        send(&store, "q", "secret").await;
        for file in files {
            assert_eq!(mode(file), 0o600, "{file}");
        }
    }
    // Closing checkpoints and removes the log; leave a wide one as a crash would.
    for file in files {
        let path = fx.dir.join(file);
        if !path.exists() {
            std::fs::write(&path, b"").unwrap();
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let _store = fx.open();
    for file in files {
        assert_eq!(mode(file), 0o600, "{file} not narrowed at open");
    }
}

#[tokio::test]
async fn a_hold_runs_out_to_the_millisecond_and_its_receipt_still_deletes() {
    let fx = Fixture::new("visibility");
    let store = fx.open();
    store
        .create_queue("q", QueueConfig::default())
        .await
        .unwrap();
    send(&store, "q", "m").await;
    let m = receive(&store, "q", 1).await.messages.remove(0);
    fx.advance(29_999);
    assert!(receive(&store, "q", 1).await.messages.is_empty());
    assert_eq!(counts(&store, "q"), (0, 1, 0));
    fx.advance(1);
    // Due: counted visible even before the writer moves its watermark.
    assert_eq!(counts(&store, "q"), (1, 0, 0));
    // A receipt still current after the visibility ran out still deletes (as in SQS).
    let results = store
        .settle("q", vec![(m.receipt.clone(), Settle::Delete)])
        .await
        .unwrap();
    assert!(results[0].is_ok());
    assert_eq!(counts(&store, "q"), (0, 0, 0));
    assert_eq!(store.pending(), (0, 0));

    // So does a per-receive hold shorter than the queue's.
    send(&store, "q", "n").await;
    store
        .receive("q", 1, Some(1_000), Holder::External)
        .await
        .unwrap();
    fx.advance(999);
    assert!(receive(&store, "q", 1).await.messages.is_empty());
    fx.advance(1);
    assert_eq!(receive(&store, "q", 1).await.messages.len(), 1);
}

#[tokio::test]
async fn a_visibility_change_to_zero_releases_at_once() {
    let fx = Fixture::new("change-visibility");
    let store = fx.open();
    store
        .create_queue("q", QueueConfig::default())
        .await
        .unwrap();
    send(&store, "q", "m").await;
    let m = receive(&store, "q", 1).await.messages.remove(0);
    let results = store
        .change_visibility("q", vec![(m.receipt.clone(), 0)])
        .await
        .unwrap();
    assert!(results[0].is_ok());
    assert_eq!(counts(&store, "q"), (1, 0, 0));
    let again = receive(&store, "q", 1).await.messages.remove(0);
    assert_eq!(again.receive_count, 2);
}

#[tokio::test]
async fn delays_end_to_the_millisecond_and_count_as_visible_when_due() {
    let fx = Fixture::new("delays");
    let store = fx.open();
    let config = QueueConfig {
        delay_ms: 5_000,
        ..QueueConfig::default()
    };
    store.create_queue("q", config).await.unwrap();
    send(&store, "q", "queue delay").await;
    store
        .send(
            "q",
            vec![NewMessage {
                delay_ms: Some(10_000),
                ..msg("long delay")
            }],
        )
        .await
        .unwrap();
    fx.advance(4_999);
    assert!(receive(&store, "q", 10).await.messages.is_empty());
    fx.advance(1);
    assert_eq!(counts(&store, "q"), (1, 0, 1));
    assert_eq!(bodies(&receive(&store, "q", 10).await), ["queue delay"]);
    fx.advance(5_000);
    assert_eq!(bodies(&receive(&store, "q", 10).await), ["long delay"]);
}

fn redrive_config(dead_letter: &str, max_receive_count: u32) -> QueueConfig {
    QueueConfig {
        visibility_timeout_ms: 1_000,
        redrive: Some(Redrive {
            dead_letter: dead_letter.into(),
            max_receive_count,
        }),
        ..QueueConfig::default()
    }
}

#[tokio::test]
async fn a_missing_dead_letter_queue_keeps_messages_where_they_are() {
    let fx = Fixture::new("dlq-deleted");
    let store = fx.open();
    store
        .create_queue("dlq", QueueConfig::default())
        .await
        .unwrap();
    store
        .create_queue("q", redrive_config("dlq", 1))
        .await
        .unwrap();
    send(&store, "q", "m").await;
    receive(&store, "q", 1).await;
    fx.advance(1_000);
    store.delete_queue("dlq").await.unwrap();
    // The source keeps its policy; the message stays and is delivered again.
    assert_eq!(store.queue("q").unwrap().config, redrive_config("dlq", 1));
    let got = receive(&store, "q", 1).await;
    assert_eq!(got.dead_lettered, 0);
    assert_eq!(got.messages[0].receive_count, 2);
    fx.advance(1_000);
    // Once a queue of that name exists again, dead-lettering resumes.
    store
        .create_queue("dlq", QueueConfig::default())
        .await
        .unwrap();
    let got = receive(&store, "q", 1).await;
    assert_eq!((got.messages.len(), got.dead_lettered), (0, 1));
    assert_eq!(counts(&store, "dlq"), (1, 0, 0));
}

#[tokio::test]
async fn messages_past_retention_are_deleted_and_counted() {
    let fx = Fixture::new("retention");
    // First without the writer's sweep, so the receive meets the expired message.
    let store = fx.open_with(Options {
        retention_sweep_ms: u64::MAX,
        ..fx.options()
    });
    let config = QueueConfig {
        retention_ms: 60_000,
        ..QueueConfig::default()
    };
    store.create_queue("q", config).await.unwrap();
    send(&store, "q", "old").await;
    fx.advance(30_000);
    send(&store, "q", "young").await;
    fx.advance(30_000);
    let got = receive(&store, "q", 10).await;
    assert_eq!(bodies(&got), ["young"]);
    assert_eq!(got.expired, 1);
    assert_eq!(store.queue("q").unwrap().stats.expired, 1);
    drop(store);

    // The writer's sweep deletes what nobody receives, including held messages.
    let store = fx.open();
    fx.advance(30_000);
    send(&store, "q", "idle").await;
    fx.advance(60_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.pending().0 > 0 {
        assert!(Instant::now() < deadline, "the sweep never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Counted since the store was opened.
    assert_eq!(store.queue("q").unwrap().stats.expired, 2);
    assert_eq!(counts(&store, "q"), (0, 0, 0));
}

#[tokio::test]
async fn a_full_store_refuses_sends_until_deletes_purges_or_queue_deletes_make_room() {
    let fx = Fixture::new("full");
    let store = fx.open_with(Options {
        max_pending_messages: 5,
        max_pending_bytes: 100,
        ..fx.options()
    });
    store
        .create_queue("q", QueueConfig::default())
        .await
        .unwrap();
    store
        .send("q", vec![msg("a"), msg("b"), msg("c")])
        .await
        .unwrap();
    let refused = store
        .send("q", vec![msg("d"), msg("e"), msg("f")])
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            QueueError::Full {
                pending_messages: 3,
                pending_bytes: 3
            }
        ),
        "{refused:?}"
    );
    assert_eq!(store.pending(), (3, 3));
    assert_eq!(counts(&store, "q"), (3, 0, 0));
    // The byte cap too.
    assert!(matches!(
        store.send("q", vec![msg(&"x".repeat(98))]).await,
        Err(QueueError::Full { .. })
    ));
    store.send("q", vec![msg(&"x".repeat(97))]).await.unwrap();
    // Schedule fires are sends too.
    assert!(matches!(
        store.fire("s", T0, "q", msg("tick")).await,
        Err(QueueError::Full { .. })
    ));
    assert_eq!(store.last_fire("s"), None);
    // Deleting makes room.
    let got = receive(&store, "q", 10).await;
    store
        .settle(
            "q",
            got.messages
                .into_iter()
                .map(|m| (m.receipt, Settle::Delete))
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(store.pending(), (0, 0));
    store.send("q", vec![msg("d")]).await.unwrap();
    // So do purging and deleting a queue, held messages too.
    receive(&store, "q", 1).await;
    store.send("q", vec![msg("ee")]).await.unwrap();
    assert_eq!(store.purge("q").await.unwrap(), 2);
    assert_eq!(store.pending(), (0, 0));
    store.send("q", vec![msg("f")]).await.unwrap();
    receive(&store, "q", 1).await;
    store.send("q", vec![msg("gg")]).await.unwrap();
    store.delete_queue("q").await.unwrap();
    assert_eq!(store.pending(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_times_out_or_wakes_on_a_send_a_release_or_a_hold_running_out() {
    let fx = Fixture::new("wait");
    // The real clock: visibility must run out on its own here.
    let store = fx.open_with(Options::default());
    store
        .create_queue("q", QueueConfig::default())
        .await
        .unwrap();

    // Times out when nothing comes.
    let start = Instant::now();
    store.wait("q", 50).await;
    assert!(start.elapsed() >= Duration::from_millis(50));

    // A send while waiting wakes the waiter.
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            store.wait("q", 60_000).await;
            start.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    send(&store, "q", "m").await;
    assert!(waiter.await.unwrap() < Duration::from_secs(30));
    let m = receive(&store, "q", 1).await.messages.remove(0);

    // A visibility change to 0 wakes it.
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { store.wait("q", 60_000).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    store
        .change_visibility("q", vec![(m.receipt.clone(), 0)])
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("woken by the visibility change")
        .unwrap();

    // So does a hold running out.
    let got = store
        .receive("q", 10, Some(300), Holder::External)
        .await
        .unwrap();
    assert_eq!(got.messages.len(), 1);
    assert_eq!(counts(&store, "q").0, 0);
    tokio::time::timeout(Duration::from_secs(30), store.wait("q", 60_000))
        .await
        .expect("woken when the hold ran out");
    assert_eq!(receive(&store, "q", 10).await.messages.len(), 1);
}

#[tokio::test]
async fn reopening_keeps_everything_and_releases_internal_holds() {
    let fx = Fixture::new("reopen");
    let (external, internal) = {
        let store = fx.open();
        store
            .create_queue("dlq", QueueConfig::default())
            .await
            .unwrap();
        store
            .create_queue("q", redrive_config("dlq", 5))
            .await
            .unwrap();
        store
            .create_queue("async:f", QueueConfig::default())
            .await
            .unwrap();
        store
            .send("q", vec![msg("held outside"), msg("free")])
            .await
            .unwrap();
        store
            .send(
                "async:f",
                vec![
                    msg("held inside"),
                    NewMessage {
                        delay_ms: Some(60_000),
                        ..msg("delayed")
                    },
                ],
            )
            .await
            .unwrap();
        store.start_schedule("s", T0 - 5).await.unwrap();
        let external = store
            .receive("q", 1, None, Holder::External)
            .await
            .unwrap()
            .messages
            .remove(0);
        let internal = store
            .receive("async:f", 1, None, Holder::Internal)
            .await
            .unwrap()
            .messages
            .remove(0);
        assert_eq!(counts(&store, "q"), (1, 1, 0));
        assert_eq!(counts(&store, "async:f"), (0, 1, 1));
        (external, internal)
    };
    fx.advance(10);
    let store = fx.open();
    assert_eq!(store.queue("q").unwrap().config, redrive_config("dlq", 5));
    assert_eq!(store.list("", true).len(), 3);
    assert_eq!(store.last_fire("s"), Some(T0 - 5));
    assert_eq!(store.pending().0, 4);
    // The outside client's hold lasts; the internal consumer's is released.
    assert_eq!(counts(&store, "q"), (1, 1, 0));
    assert_eq!(counts(&store, "async:f"), (1, 0, 1));
    let again = store
        .receive("async:f", 10, None, Holder::Internal)
        .await
        .unwrap();
    assert_eq!(again.messages.len(), 1);
    assert_eq!(again.messages[0].id, internal.id);
    assert_eq!(again.messages[0].receive_count, 2);
    // The outside receipt is still good.
    store
        .change_visibility("q", vec![(external.receipt.clone(), 0)])
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    let results = store
        .settle("q", vec![(external.receipt, Settle::Delete)])
        .await
        .unwrap();
    assert!(results[0].is_ok());
    assert_eq!(bodies(&receive(&store, "q", 10).await), ["free"]);
    // Both fall due: the one received again, and the delayed one.
    fx.advance(60_000);
    assert_eq!(counts(&store, "async:f"), (2, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_each_get_their_own_answer() {
    let fx = Fixture::new("concurrent");
    let store = fx.open();
    store
        .create_queue("q", QueueConfig::default())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..20 {
                let sent = store
                    .send("q", vec![msg(&format!("{t}-{i}")), msg("pair")])
                    .await
                    .unwrap();
                ids.extend(sent.into_iter().map(|s| s.id));
            }
            ids
        }));
    }
    let mut sent = Vec::new();
    for task in tasks {
        sent.extend(task.await.unwrap());
    }
    assert_eq!(sent.len(), 32 * 20 * 2);
    let mut received = Vec::new();
    loop {
        let got = receive(&store, "q", 500).await;
        if got.messages.is_empty() {
            break;
        }
        received.extend(got.messages.into_iter().map(|m| m.id));
    }
    sent.sort();
    received.sort();
    assert_eq!(sent, received);
}

/// The shared contract cases, on a store of their own with the hand-moved clock.
struct SqliteHarness {
    store: Arc<SqliteQueues>,
    fx: Fixture,
}

#[async_trait::async_trait]
impl contract::Harness for SqliteHarness {
    fn store(&self) -> &dyn QueueBackend {
        &*self.store
    }

    async fn pass(&self, ms: u64) {
        self.fx.advance(ms as i64);
    }

    async fn counts(&self, queue: &str) -> (u64, u64, u64) {
        counts(&self.store, queue)
    }
}

async fn sqlite_harness(case: &str) -> SqliteHarness {
    let fx = Fixture::new(&format!("contract-{case}"));
    SqliteHarness {
        store: fx.open(),
        fx,
    }
}

contract_cases!(sqlite_harness);
