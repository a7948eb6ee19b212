//! The `QueueBackend` contract as cases any backend must pass, written once and run against
//! each: the SQLite store here (`tests/sqlite.rs`, a clock moved by hand) and the JetStream
//! store in `shoal-nats` (`tests/queue.rs` includes this file by path; real time on a real
//! server). A backend comes with a [`Harness`] that says how time passes for it and when
//! its counts are current. Cases never check that something is still hidden close to when
//! it is due: a harness on real time lets at least the asked time pass, maybe more.
//!
//! `contract_cases!(async_fn_making_a_harness)` makes one `#[tokio::test]` per case.
#![allow(dead_code)] // each test binary uses the cases it runs

use std::time::Duration;

use shoal_queue::{
    Holder, NewMessage, QueueBackend, QueueConfig, QueueError, Receipts, Redrive, Settle,
};

/// One backend under test.
#[async_trait::async_trait]
pub trait Harness: Send + Sync {
    fn store(&self) -> &dyn QueueBackend;
    /// Lets at least `ms` pass for the store (a clock moved, or real time slept).
    async fn pass(&self, ms: u64);
    /// The queue's (visible, in flight, delayed), once the backend's counts are current.
    async fn counts(&self, queue: &str) -> (u64, u64, u64);
}

pub fn msg(body: &str) -> NewMessage {
    NewMessage {
        body: body.into(),
        ..NewMessage::default()
    }
}

pub fn bodies(r: &Receipts) -> Vec<&str> {
    r.messages.iter().map(|m| m.body.as_str()).collect()
}

async fn receive(h: &dyn Harness, queue: &str, max: usize) -> Receipts {
    h.store()
        .receive(queue, max, None, Holder::External)
        .await
        .unwrap()
}

/// Receives until `n` messages came, letting time pass 100 ms at a time (at most 300
/// steps): what falls due does so on the backend's clock.
async fn receive_due(h: &dyn Harness, queue: &str, n: usize) -> Receipts {
    let mut all = Receipts::default();
    for _ in 0..300 {
        let got = receive(h, queue, 10).await;
        all.dead_lettered += got.dead_lettered;
        all.messages.extend(got.messages);
        if all.messages.len() >= n {
            return all;
        }
        h.pass(100).await;
    }
    panic!(
        "only {} of {n} messages came in {queue}",
        all.messages.len()
    );
}

fn with_visibility(ms: u64) -> QueueConfig {
    QueueConfig {
        visibility_timeout_ms: ms,
        ..QueueConfig::default()
    }
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

pub async fn queues_are_created_listed_changed_and_deleted(h: &dyn Harness) {
    let store = h.store();
    store
        .create_queue("jobs", QueueConfig::default())
        .await
        .unwrap();
    store
        .create_queue("jobs", QueueConfig::default())
        .await
        .unwrap();
    let other = with_visibility(5_000);
    assert!(matches!(
        store.create_queue("jobs", other.clone()).await,
        Err(QueueError::QueueExists(name)) if name == "jobs"
    ));
    assert!(matches!(
        store.create_queue("bad name", QueueConfig::default()).await,
        Err(QueueError::InvalidName { .. })
    ));
    let with_dlq = redrive_config("jobs-dlq", 3);
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
    assert_eq!(store.queue("jobs2").unwrap().config, with_dlq);
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
    let bad = QueueConfig {
        retention_ms: 1,
        ..QueueConfig::default()
    };
    assert!(matches!(
        store.set_config("jobs", bad).await,
        Err(QueueError::InvalidAttribute { .. })
    ));

    store.send("jobs", vec![msg("a")]).await.unwrap();
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
    // Made anew under the same name, it starts empty.
    store
        .create_queue("jobs", QueueConfig::default())
        .await
        .unwrap();
    assert!(receive(h, "jobs", 10).await.messages.is_empty());
}

pub async fn send_receive_delete(h: &dyn Harness) {
    let store = h.store();
    store
        .create_queue("q", QueueConfig::default())
        .await
        .unwrap();
    let attrs = r#"{"k":{"DataType":"String","StringValue":"v"}}"#;
    let sent = store
        .send(
            "q",
            vec![
                NewMessage {
                    body: "This is a test message".into(),
                    attributes: Some(attrs.into()),
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
    assert_eq!(h.counts("q").await, (2, 0, 0));
    assert_eq!(store.pending().0, 2);
    let oldest = store.queue("q").unwrap().stats.oldest_sent_at_ms;
    assert!(oldest.is_some());

    let got = receive(h, "q", 10).await;
    assert_eq!(bodies(&got), ["This is a test message", "second"]);
    let first = &got.messages[0];
    assert_eq!(first.id, sent[0].id);
    assert_eq!(first.md5_of_body, sent[0].md5_of_body);
    assert_eq!(first.attributes.as_deref(), Some(attrs));
    assert_eq!(got.messages[1].attributes, None);
    assert!(first.first_received_at_ms >= first.sent_at_ms);
    assert_eq!(first.receive_count, 1);
    assert_eq!(h.counts("q").await, (0, 2, 0));
    assert!(receive(h, "q", 10).await.messages.is_empty());

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
    assert_eq!(h.counts("q").await, (0, 0, 0));
    assert_eq!(store.pending(), (0, 0));
    assert_eq!(store.queue("q").unwrap().stats.oldest_sent_at_ms, None);

    // Receive takes at most `max`, oldest first, and checks its arguments.
    for i in 0..5 {
        store.send("q", vec![msg(&i.to_string())]).await.unwrap();
    }
    assert_eq!(bodies(&receive(h, "q", 3).await), ["0", "1", "2"]);
    for max in [0, 10_001] {
        assert!(matches!(
            store.receive("q", max, None, Holder::External).await,
            Err(QueueError::InvalidAttribute { .. })
        ));
    }
    assert!(matches!(
        store.receive("nope", 1, None, Holder::External).await,
        Err(QueueError::NoSuchQueue(_))
    ));
    assert!(store.send("q", vec![]).await.unwrap().is_empty());
    assert!(store.send("nope", vec![]).await.is_err());
}

pub async fn oversized_messages_are_refused_whole(h: &dyn Harness) {
    let store = h.store();
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
    let too_late = NewMessage {
        delay_ms: Some(15 * 60_000 + 1),
        ..msg("x")
    };
    assert!(matches!(
        store.send("q", vec![too_late]).await,
        Err(QueueError::InvalidAttribute { .. })
    ));
    assert_eq!(h.counts("q").await, (0, 0, 0));
    assert_eq!(store.pending(), (0, 0));
}

pub async fn visibility_runs_out_and_stale_receipts_do_nothing(h: &dyn Harness) {
    let store = h.store();
    store
        .create_queue("q", with_visibility(1_000))
        .await
        .unwrap();
    store.send("q", vec![msg("m")]).await.unwrap();
    let first = receive(h, "q", 1).await.messages.remove(0);
    assert!(receive(h, "q", 1).await.messages.is_empty());
    let second = receive_due(h, "q", 1).await.messages.remove(0);
    assert_eq!(second.id, first.id);
    assert_eq!(second.receive_count, 2);
    assert_eq!(second.first_received_at_ms, first.first_received_at_ms);
    assert_ne!(second.receipt, first.receipt);

    // The first receipt is stale: deleting with it is Ok and does nothing; changing its
    // visibility is NotInFlight.
    let results = store
        .settle("q", vec![(first.receipt.clone(), Settle::Delete)])
        .await
        .unwrap();
    assert!(results[0].is_ok());
    assert_eq!(h.counts("q").await, (0, 1, 0));
    let results = store
        .change_visibility("q", vec![(first.receipt.clone(), 0)])
        .await
        .unwrap();
    assert!(matches!(&results[0], Err(QueueError::NotInFlight(r)) if *r == first.receipt));

    let results = store
        .settle("q", vec![(second.receipt.clone(), Settle::Delete)])
        .await
        .unwrap();
    assert!(results[0].is_ok());
    assert_eq!(h.counts("q").await, (0, 0, 0));

    // A per-receive visibility overrides the queue's, shorter and longer.
    store.send("q", vec![msg("n")]).await.unwrap();
    let held = store
        .receive("q", 1, Some(60_000), Holder::External)
        .await
        .unwrap();
    assert_eq!(bodies(&held), ["n"]);
    h.pass(2_000).await;
    assert!(
        receive(h, "q", 1).await.messages.is_empty(),
        "a 60 s hold ran out with the queue's 1 s"
    );
    store.send("q", vec![msg("o")]).await.unwrap();
    let released = store
        .receive("q", 1, Some(0), Holder::External)
        .await
        .unwrap();
    assert_eq!(bodies(&released), ["o"]);
    assert_eq!(bodies(&receive_due(h, "q", 1).await), ["o"]);
}

pub async fn change_visibility_hides_and_releases(h: &dyn Harness) {
    let store = h.store();
    store
        .create_queue("q", with_visibility(1_000))
        .await
        .unwrap();
    store
        .create_queue("other", QueueConfig::default())
        .await
        .unwrap();
    store.send("q", vec![msg("m")]).await.unwrap();
    let m = receive(h, "q", 1).await.messages.remove(0);

    // Longer: still hidden well past the queue's 1 s.
    let results = store
        .change_visibility("q", vec![(m.receipt.clone(), 60_000)])
        .await
        .unwrap();
    assert!(results[0].is_ok(), "{results:?}");
    h.pass(2_000).await;
    assert!(receive(h, "q", 1).await.messages.is_empty());
    // Zero: visible at once; the receipt stays good for a delete until the next receive.
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
    assert!(results[0].is_ok(), "{results:?}");
    assert!(matches!(&results[1], Err(QueueError::InvalidReceipt(r)) if r == "garbage"));
    assert!(matches!(&results[2], Err(QueueError::InvalidReceipt(_))));
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
    let again = receive_due(h, "q", 1).await.messages.remove(0);
    assert_eq!(again.receive_count, 2);
    // The receipt of another queue's message is invalid here.
    let results = store
        .settle("other", vec![(again.receipt.clone(), Settle::Delete)])
        .await
        .unwrap();
    assert!(matches!(results[0], Err(QueueError::InvalidReceipt(_))));
    assert_eq!(h.counts("q").await, (0, 1, 0));
}

pub async fn settle_forward_moves(h: &dyn Harness) {
    let store = h.store();
    store
        .create_queue("q", QueueConfig::default())
        .await
        .unwrap();
    store
        .create_queue("dest", QueueConfig::default())
        .await
        .unwrap();
    store.send("q", vec![msg("a"), msg("b")]).await.unwrap();
    let got = receive(h, "q", 2).await;
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
    assert!(results[0].is_ok(), "{results:?}");
    assert!(matches!(&results[1], Err(QueueError::NoSuchQueue(q)) if q == "missing"));
    assert!(matches!(results[2], Err(QueueError::InvalidReceipt(_))));
    // b was not deleted: its forward failed.
    assert_eq!(h.counts("q").await, (0, 1, 0));
    assert_eq!(bodies(&receive(h, "dest", 10).await), ["record of a"]);
    assert_eq!(store.pending().0, 2);
    assert!(matches!(
        store.settle("missing", vec![]).await,
        Err(QueueError::NoSuchQueue(_))
    ));
}

pub async fn delays_hold_messages_back(h: &dyn Harness) {
    let store = h.store();
    let config = QueueConfig {
        delay_ms: 1_000,
        ..QueueConfig::default()
    };
    store.create_queue("q", config).await.unwrap();
    store.send("q", vec![msg("queue delay")]).await.unwrap();
    store
        .send(
            "q",
            vec![
                NewMessage {
                    delay_ms: Some(0),
                    ..msg("no delay")
                },
                NewMessage {
                    delay_ms: Some(60_000),
                    ..msg("long delay")
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(h.counts("q").await, (1, 0, 2));
    assert_eq!(bodies(&receive(h, "q", 10).await), ["no delay"]);
    let got = receive_due(h, "q", 1).await;
    assert_eq!(bodies(&got), ["queue delay"]);
    assert_eq!(got.messages[0].receive_count, 1);
    assert_eq!(h.counts("q").await, (0, 2, 1));
}

pub async fn redrive_moves_to_the_dead_letter_queue(h: &dyn Harness) {
    let store = h.store();
    store
        .create_queue("dlq", QueueConfig::default())
        .await
        .unwrap();
    store
        .create_queue("q", redrive_config("dlq", 2))
        .await
        .unwrap();
    let id = store.send("q", vec![msg("poison")]).await.unwrap()[0]
        .id
        .clone();
    store.send("q", vec![msg("fine")]).await.unwrap();
    let sent_at = {
        let got = receive(h, "q", 10).await;
        assert_eq!(got.messages.len(), 2);
        assert!(got.messages.iter().all(|m| m.receive_count == 1));
        got.messages[0].sent_at_ms
    };
    let got = receive_due(h, "q", 2).await;
    assert!(got.messages.iter().all(|m| m.receive_count == 2), "{got:?}");
    let fine = got.messages.iter().find(|m| m.body == "fine").unwrap();
    store
        .settle("q", vec![(fine.receipt.clone(), Settle::Delete)])
        .await
        .unwrap();
    // The third receive of "poison" moves it instead of handing it out.
    let mut dead = 0;
    for _ in 0..300 {
        let got = receive(h, "q", 10).await;
        assert!(got.messages.is_empty(), "{got:?}");
        dead = got.dead_lettered;
        if dead > 0 {
            break;
        }
        h.pass(100).await;
    }
    assert_eq!(dead, 1);
    assert_eq!(h.counts("q").await, (0, 0, 0));
    assert_eq!(h.counts("dlq").await, (1, 0, 0));
    let m = receive(h, "dlq", 10).await.messages.remove(0);
    assert_eq!((m.id.as_str(), m.body.as_str()), (id.as_str(), "poison"));
    // It keeps its id and send time; its receive count starts afresh.
    assert_eq!(m.sent_at_ms, sent_at);
    assert_eq!(m.receive_count, 1);
    assert_eq!(store.pending().0, 1);
}

pub async fn purge_empties_a_queue(h: &dyn Harness) {
    let store = h.store();
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
    store
        .send(
            "q",
            vec![NewMessage {
                delay_ms: Some(60_000),
                ..msg("later")
            }],
        )
        .await
        .unwrap();
    store.send("keep", vec![msg("k")]).await.unwrap();
    let held = receive(h, "q", 1).await.messages.remove(0);
    assert_eq!(store.purge("q").await.unwrap(), 4);
    assert_eq!(h.counts("q").await, (0, 0, 0));
    assert_eq!(h.counts("keep").await, (1, 0, 0));
    assert_eq!(store.pending().0, 1);
    assert!(store
        .settle("q", vec![(held.receipt, Settle::Delete)])
        .await
        .unwrap()[0]
        .is_ok());
    assert!(receive(h, "q", 10).await.messages.is_empty());
    assert!(matches!(
        store.purge("nope").await,
        Err(QueueError::NoSuchQueue(_))
    ));
}

pub async fn schedules_fire_once_per_time(h: &dyn Harness) {
    const T0: i64 = 1_700_000_000_000;
    let store = h.store();
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
    // A forgotten schedule starts afresh.
    assert_eq!(store.start_schedule("f:0", T0 + 7).await.unwrap(), T0 + 7);
}

pub async fn wait_wakes_on_send(h: &dyn Harness) {
    let store = h.store();
    store
        .create_queue("q", QueueConfig::default())
        .await
        .unwrap();
    // A missing queue returns at once.
    tokio::time::timeout(Duration::from_secs(30), store.wait("nope", 600_000))
        .await
        .expect("wait on a missing queue returned");
    assert!(receive(h, "q", 1).await.messages.is_empty());
    // A send between an empty receive and the wait is not missed (returning early is
    // allowed; missing it would sleep the full 10 minutes).
    store.send("q", vec![msg("m")]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), store.wait("q", 600_000))
        .await
        .expect("woken by the send");
    assert_eq!(bodies(&receive(h, "q", 1).await), ["m"]);
}

/// One `#[tokio::test]` per case, each with a harness from `$make` (an async fn at the test
/// crate's root taking the case's name and returning a [`Harness`]).
#[macro_export]
macro_rules! contract_cases {
    ($make:ident) => {
        $crate::contract_cases!(@each $make;
            queues_are_created_listed_changed_and_deleted,
            send_receive_delete,
            oversized_messages_are_refused_whole,
            visibility_runs_out_and_stale_receipts_do_nothing,
            change_visibility_hides_and_releases,
            settle_forward_moves,
            delays_hold_messages_back,
            redrive_moves_to_the_dead_letter_queue,
            purge_empties_a_queue,
            schedules_fire_once_per_time,
            wait_wakes_on_send,
        );
    };
    (@each $make:ident; $($case:ident),* $(,)?) => {
        mod contract_cases {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let harness = super::$make(stringify!($case)).await;
                    super::contract::$case(&harness).await;
                }
            )*
        }
    };
}
