//! The SQLite backend against the `QueueBackend` contract: every method, time moved by
//! an injected clock (no sleeps where a clock will do), and reopening a store; and the
//! contract's shared cases (`contract/`, run against every backend).

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
async fn queues_are_created_listed_changed_and_deleted() {
    let fx = Fixture::new("queues");
    let store = fx.open();
    store
        .create_queue("jobs", QueueConfig::default())
        .await
        .unwrap();
    // Creating again with the same config is fine; with another, not.
    store
        .create_queue("jobs", QueueConfig::default())
        .await
        .unwrap();
    let other = QueueConfig {
        visibility_timeout_ms: 5_000,
        ..QueueConfig::default()
    };
    assert!(matches!(
        store.create_queue("jobs", other.clone()).await,
        Err(QueueError::QueueExists(name)) if name == "jobs"
    ));
    assert!(matches!(
        store.create_queue("bad name", QueueConfig::default()).await,
        Err(QueueError::InvalidName { .. })
    ));
    let with_dlq = QueueConfig {
        redrive: Some(Redrive {
            dead_letter: "jobs-dlq".into(),
            max_receive_count: 3,
        }),
        ..QueueConfig::default()
    };
    assert!(matches!(
        store.create_queue("jobs2", with_dlq.clone()).await,
        Err(QueueError::InvalidAttribute { name, .. }) if name == "RedrivePolicy"
    ));
    store
        .create_queue("jobs-dlq", QueueConfig::default())
        .await
        .unwrap();
    store.create_queue("jobs2", with_dlq.clone()).await.unwrap();
    store
        .create_queue("async:hello", QueueConfig::default())
        .await
        .unwrap();

    let info = store.queue("jobs2").unwrap();
    assert_eq!(info.name, "jobs2");
    assert_eq!(info.config, with_dlq);
    assert_eq!(info.created_at_ms, T0);
    let names = |internal| -> Vec<String> {
        store
            .list("", internal)
            .into_iter()
            .map(|q| q.name)
            .collect()
    };
    assert_eq!(names(false), ["jobs", "jobs-dlq", "jobs2"]);
    assert_eq!(names(true), ["async:hello", "jobs", "jobs-dlq", "jobs2"]);
    let prefixed: Vec<_> = store
        .list("jobs-", false)
        .into_iter()
        .map(|q| q.name)
        .collect();
    assert_eq!(prefixed, ["jobs-dlq"]);

    store.set_config("jobs", other.clone()).await.unwrap();
    assert_eq!(store.queue("jobs").unwrap().config, other);
    assert!(matches!(
        store.set_config("nope", other.clone()).await,
        Err(QueueError::NoSuchQueue(_))
    ));
    assert!(matches!(
        store
            .set_config(
                "jobs",
                QueueConfig {
                    retention_ms: 1,
                    ..QueueConfig::default()
                }
            )
            .await,
        Err(QueueError::InvalidAttribute { .. })
    ));

    send(&store, "jobs", "a").await;
    store.delete_queue("jobs").await.unwrap();
    assert!(matches!(
        store.queue("jobs"),
        Err(QueueError::NoSuchQueue(_))
    ));
    assert!(matches!(
        store.send("jobs", vec![msg("x")]).await,
        Err(QueueError::NoSuchQueue(_))
    ));
    assert!(matches!(
        store.delete_queue("jobs").await,
        Err(QueueError::NoSuchQueue(_))
    ));
    assert_eq!(store.pending(), (0, 0));
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
async fn send_receive_delete() {
    let fx = Fixture::new("basic");
    let store = fx.open();
    store
        .create_queue("q", QueueConfig::default())
        .await
        .unwrap();
    let sent = store
        .send(
            "q",
            vec![
                NewMessage {
                    body: "This is a test message".into(),
                    attributes: Some(r#"{"k":{"DataType":"String","StringValue":"v"}}"#.into()),
                    delay_ms: None,
                },
                msg("second"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].md5_of_body, "fafb00f5732ab283681e124bf8747ed1");
    assert_eq!(sent[0].id.len(), 36);
    assert_ne!(sent[0].id, sent[1].id);
    assert_eq!(counts(&store, "q"), (2, 0, 0));
    let stats = store.queue("q").unwrap().stats;
    assert_eq!(stats.oldest_sent_at_ms, Some(T0));
    assert_eq!(store.pending().0, 2);

    fx.advance(10);
    let got = receive(&store, "q", 10).await;
    assert_eq!(bodies(&got), ["This is a test message", "second"]);
    let first = &got.messages[0];
    assert_eq!(first.id, sent[0].id);
    assert_eq!(first.md5_of_body, sent[0].md5_of_body);
    assert_eq!(
        first.attributes.as_deref(),
        Some(r#"{"k":{"DataType":"String","StringValue":"v"}}"#)
    );
    assert_eq!(first.sent_at_ms, T0);
    assert_eq!(first.first_received_at_ms, T0 + 10);
    assert_eq!(first.receive_count, 1);
    assert_eq!(counts(&store, "q"), (0, 2, 0));
    assert!(receive(&store, "q", 10).await.messages.is_empty());

    let results = store
        .settle(
            "q",
            got.messages
                .iter()
                .map(|m| (m.receipt.clone(), Settle::Delete))
                .collect(),
        )
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(counts(&store, "q"), (0, 0, 0));
    assert_eq!(store.pending(), (0, 0));
    assert_eq!(store.queue("q").unwrap().stats.oldest_sent_at_ms, None);

    // Receive takes at most `max`, oldest first, and checks its arguments.
    for i in 0..5 {
        send(&store, "q", &i.to_string()).await;
    }
    assert_eq!(bodies(&receive(&store, "q", 3).await), ["0", "1", "2"]);
    assert!(matches!(
        store.receive("q", 0, None, Holder::External).await,
        Err(QueueError::InvalidAttribute { .. })
    ));
    assert!(matches!(
        store.receive("q", 10_001, None, Holder::External).await,
        Err(QueueError::InvalidAttribute { .. })
    ));
    assert!(matches!(
        store.receive("nope", 1, None, Holder::External).await,
        Err(QueueError::NoSuchQueue(_))
    ));
    // An empty send stores nothing and still checks the queue.
    assert!(store.send("q", vec![]).await.unwrap().is_empty());
    assert!(store.send("nope", vec![]).await.is_err());
}

#[tokio::test]
async fn oversized_messages_are_refused_whole() {
    let fx = Fixture::new("oversized");
    let store = fx.open();
    let config = QueueConfig {
        max_message_bytes: 1024,
        ..QueueConfig::default()
    };
    store.create_queue("q", config).await.unwrap();
    let big = NewMessage {
        body: "x".repeat(1000),
        attributes: Some("y".repeat(25)),
        delay_ms: None,
    };
    assert!(matches!(
        store.send("q", vec![msg("fits"), big]).await,
        Err(QueueError::MessageTooLarge {
            size: 1025,
            max: 1024
        })
    ));
    assert_eq!(store.pending(), (0, 0));
    let too_late = NewMessage {
        delay_ms: Some(15 * 60_000 + 1),
        ..msg("x")
    };
    assert!(matches!(
        store.send("q", vec![too_late]).await,
        Err(QueueError::InvalidAttribute { .. })
    ));
}

#[tokio::test]
async fn visibility_expires_and_stale_receipts_do_nothing() {
    let fx = Fixture::new("visibility");
    let store = fx.open();
    store
        .create_queue("q", QueueConfig::default())
        .await
        .unwrap();
    send(&store, "q", "m").await;
    let first = receive(&store, "q", 1).await.messages.remove(0);
    fx.advance(29_999);
    assert!(receive(&store, "q", 1).await.messages.is_empty());
    assert_eq!(counts(&store, "q"), (0, 1, 0));
    fx.advance(1);
    // Due: counted visible even before the writer moves its watermark.
    assert_eq!(counts(&store, "q"), (1, 0, 0));
    let second = receive(&store, "q", 1).await.messages.remove(0);
    assert_eq!(second.id, first.id);
    assert_eq!(second.receive_count, 2);
    assert_eq!(second.first_received_at_ms, T0);
    assert_ne!(second.receipt, first.receipt);

    // The first receipt is stale: deleting with it is Ok and does nothing.
    let results = store
        .settle("q", vec![(first.receipt.clone(), Settle::Delete)])
        .await
        .unwrap();
    assert!(results[0].is_ok());
    assert_eq!(counts(&store, "q"), (0, 1, 0));
    // Changing its visibility is NotInFlight.
    let results = store
        .change_visibility("q", vec![(first.receipt.clone(), 0)])
        .await
        .unwrap();
    assert!(matches!(&results[0], Err(QueueError::NotInFlight(r)) if *r == first.receipt));

    // A receipt still current after the visibility ran out still deletes (as in SQS).
    fx.advance(30_000);
    let results = store
        .settle("q", vec![(second.receipt.clone(), Settle::Delete)])
        .await
        .unwrap();
    assert!(results[0].is_ok());
    assert_eq!(counts(&store, "q"), (0, 0, 0));
    assert_eq!(store.pending(), (0, 0));

    // A per-receive visibility overrides the queue's.
    send(&store, "q", "n").await;
    store
        .receive("q", 1, Some(1_000), Holder::External)
        .await
        .unwrap();
    fx.advance(1_000);
    assert_eq!(receive(&store, "q", 1).await.messages.len(), 1);
}

#[tokio::test]
async fn change_visibility_hides_and_releases() {
    let fx = Fixture::new("change-visibility");
    let store = fx.open();
    store
        .create_queue("q", QueueConfig::default())
        .await
        .unwrap();
    store
        .create_queue("other", QueueConfig::default())
        .await
        .unwrap();
    send(&store, "q", "m").await;
    let m = receive(&store, "q", 1).await.messages.remove(0);

    // Longer: still hidden when the old deadline passes.
    let results = store
        .change_visibility("q", vec![(m.receipt.clone(), 60_000)])
        .await
        .unwrap();
    assert!(results[0].is_ok());
    fx.advance(30_000);
    assert!(receive(&store, "q", 1).await.messages.is_empty());
    // Zero: visible at once; the receipt stays valid until the next receive.
    let results = store
        .change_visibility(
            "q",
            vec![
                (m.receipt.clone(), 0),
                ("garbage".into(), 0),
                ("99-2-3".into(), 0),
            ],
        )
        .await
        .unwrap();
    assert!(results[0].is_ok());
    assert!(matches!(&results[1], Err(QueueError::InvalidReceipt(r)) if r == "garbage"));
    // A well-formed receipt of another queue is not this queue's.
    assert!(matches!(&results[2], Err(QueueError::InvalidReceipt(_))));
    assert_eq!(counts(&store, "q"), (1, 0, 0));
    // Not in flight any more.
    let results = store
        .change_visibility("q", vec![(m.receipt.clone(), 10)])
        .await
        .unwrap();
    assert!(matches!(results[0], Err(QueueError::NotInFlight(_))));
    assert!(matches!(
        store
            .change_visibility("q", vec![(m.receipt.clone(), 12 * 3_600_000 + 1)])
            .await,
        Err(QueueError::InvalidAttribute { .. })
    ));
    let again = receive(&store, "q", 1).await.messages.remove(0);
    assert_eq!(again.receive_count, 2);
    // The receipt of another queue's message is invalid here.
    let results = store
        .settle("other", vec![(again.receipt.clone(), Settle::Delete)])
        .await
        .unwrap();
    assert!(matches!(results[0], Err(QueueError::InvalidReceipt(_))));
    assert_eq!(counts(&store, "q"), (0, 1, 0));
}

#[tokio::test]
async fn settle_forward_moves_in_one_commit() {
    let fx = Fixture::new("forward");
    let store = fx.open();
    store
        .create_queue("q", QueueConfig::default())
        .await
        .unwrap();
    store
        .create_queue("dest", QueueConfig::default())
        .await
        .unwrap();
    send(&store, "q", "a").await;
    send(&store, "q", "b").await;
    let got = receive(&store, "q", 2).await;
    let forward = |queue: &str, body: &str| Settle::Forward {
        queue: queue.into(),
        message: msg(body),
    };
    let results = store
        .settle(
            "q",
            vec![
                (
                    got.messages[0].receipt.clone(),
                    forward("dest", "record of a"),
                ),
                (
                    got.messages[1].receipt.clone(),
                    forward("missing", "record of b"),
                ),
                ("not a receipt".into(), Settle::Delete),
            ],
        )
        .await
        .unwrap();
    assert!(results[0].is_ok());
    assert!(matches!(&results[1], Err(QueueError::NoSuchQueue(q)) if q == "missing"));
    assert!(matches!(results[2], Err(QueueError::InvalidReceipt(_))));
    // b was not deleted: its forward failed.
    assert_eq!(counts(&store, "q"), (0, 1, 0));
    assert_eq!(bodies(&receive(&store, "dest", 10).await), ["record of a"]);
    assert_eq!(store.pending().0, 2);
    assert!(matches!(
        store.settle("missing", vec![]).await,
        Err(QueueError::NoSuchQueue(_))
    ));
}

#[tokio::test]
async fn delays_hold_messages_back() {
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
            vec![
                NewMessage {
                    delay_ms: Some(0),
                    ..msg("no delay")
                },
                NewMessage {
                    delay_ms: Some(10_000),
                    ..msg("long delay")
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(counts(&store, "q"), (1, 0, 2));
    assert_eq!(bodies(&receive(&store, "q", 10).await), ["no delay"]);
    fx.advance(5_000);
    assert_eq!(counts(&store, "q"), (1, 1, 1));
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
async fn redrive_moves_to_the_dead_letter_queue() {
    let fx = Fixture::new("redrive");
    let store = fx.open();
    store
        .create_queue("dlq", QueueConfig::default())
        .await
        .unwrap();
    store
        .create_queue("q", redrive_config("dlq", 2))
        .await
        .unwrap();
    let id = send(&store, "q", "poison").await;
    send(&store, "q", "fine").await;
    for round in 1..=2 {
        let got = receive(&store, "q", 10).await;
        assert_eq!(got.messages.len(), 2);
        assert!(got.messages.iter().all(|m| m.receive_count == round));
        // "fine" is deleted in the last round.
        if round == 2 {
            let fine = got.messages.iter().find(|m| m.body == "fine").unwrap();
            store
                .settle("q", vec![(fine.receipt.clone(), Settle::Delete)])
                .await
                .unwrap();
        }
        fx.advance(1_000);
    }
    let got = receive(&store, "q", 10).await;
    assert!(got.messages.is_empty());
    assert_eq!(got.dead_lettered, 1);
    assert_eq!(counts(&store, "q"), (0, 0, 0));
    assert_eq!(counts(&store, "dlq"), (1, 0, 0));
    let dead = receive(&store, "dlq", 10).await.messages.remove(0);
    assert_eq!(dead.id, id);
    assert_eq!(dead.sent_at_ms, T0);
    assert_eq!(dead.receive_count, 1);
    assert_eq!(dead.first_received_at_ms, T0 + 2_000);
    assert_eq!(store.pending().0, 1);
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
async fn a_full_store_refuses_sends_and_touches_nothing() {
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
}

#[tokio::test]
async fn purge_empties_a_queue() {
    let fx = Fixture::new("purge");
    let store = fx.open();
    store
        .create_queue("q", QueueConfig::default())
        .await
        .unwrap();
    store
        .create_queue("keep", QueueConfig::default())
        .await
        .unwrap();
    store
        .send("q", vec![msg("a"), msg("b"), msg("c")])
        .await
        .unwrap();
    send(&store, "keep", "k").await;
    let held = receive(&store, "q", 1).await.messages.remove(0);
    assert_eq!(store.purge("q").await.unwrap(), 3);
    assert_eq!(counts(&store, "q"), (0, 0, 0));
    assert_eq!(store.pending(), (1, 1));
    assert!(store
        .settle("q", vec![(held.receipt, Settle::Delete)])
        .await
        .unwrap()[0]
        .is_ok());
    assert!(matches!(
        store.purge("nope").await,
        Err(QueueError::NoSuchQueue(_))
    ));
}

#[tokio::test]
async fn schedules_fire_once_per_time() {
    let fx = Fixture::new("schedules");
    let store = fx.open();
    store
        .create_queue("async:f", QueueConfig::default())
        .await
        .unwrap();
    assert_eq!(store.last_fire("f:0"), None);
    assert_eq!(store.start_schedule("f:0", T0).await.unwrap(), T0);
    // A started schedule keeps its start.
    assert_eq!(store.start_schedule("f:0", T0 + 5).await.unwrap(), T0);
    assert_eq!(store.last_fire("f:0"), Some(T0));
    // Not for the start itself or the past.
    assert!(!store.fire("f:0", T0, "async:f", msg("t0")).await.unwrap());
    assert!(store
        .fire("f:0", T0 + 60_000, "async:f", msg("t1"))
        .await
        .unwrap());
    assert!(!store
        .fire("f:0", T0 + 60_000, "async:f", msg("t1 again"))
        .await
        .unwrap());
    assert!(!store
        .fire("f:0", T0 + 30_000, "async:f", msg("older"))
        .await
        .unwrap());
    assert_eq!(store.last_fire("f:0"), Some(T0 + 60_000));
    // A fire without a start records itself.
    assert!(store.fire("g:0", T0, "async:f", msg("g")).await.unwrap());
    assert!(matches!(
        store.fire("h:0", T0, "missing", msg("h")).await,
        Err(QueueError::NoSuchQueue(_))
    ));
    assert_eq!(store.last_fire("h:0"), None);
    let got = store
        .receive("async:f", 10, None, Holder::Internal)
        .await
        .unwrap();
    assert_eq!(bodies(&got), ["t1", "g"]);

    store.start_schedule("f:1", T0).await.unwrap();
    store.start_schedule("f:2", T0).await.unwrap();
    store
        .forget_schedules("f:", &["f:1".to_owned()])
        .await
        .unwrap();
    assert_eq!(store.last_fire("f:0"), None);
    assert_eq!(store.last_fire("f:1"), Some(T0));
    assert_eq!(store.last_fire("f:2"), None);
    assert_eq!(store.last_fire("g:0"), Some(T0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_wakes_on_send_and_misses_nothing() {
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
    // A missing queue returns at once.
    store.wait("nope", 60_000).await;

    // A send between an empty receive and the wait is not missed.
    assert!(receive(&store, "q", 1).await.messages.is_empty());
    send(&store, "q", "m").await;
    let start = Instant::now();
    store.wait("q", 60_000).await;
    assert!(start.elapsed() < Duration::from_secs(30));

    // A send while waiting wakes the waiter.
    let m = receive(&store, "q", 1).await.messages.remove(0);
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            store.wait("q", 60_000).await;
            start.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    send(&store, "q", "n").await;
    assert!(waiter.await.unwrap() < Duration::from_secs(30));
    receive(&store, "q", 1).await;

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
