//! The JetStream queue store on a real `nats-server` (one per test, on a free port): the
//! contract's shared cases (`shoal-queue/tests/contract/`, also run against SQLite), then
//! what only a cluster has — two stores on one server standing in for two nodes, and a
//! server killed with `SIGKILL` and started again. Time is real here (the server keeps
//! it), so holds and delays are short and every bound is generous.

#[path = "../../shoal-queue/tests/contract/mod.rs"]
mod contract;

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_nats::testing::NatsServer;
use shoal_nats::{JetStreamQueues, QueueOptions};
use shoal_queue::{Holder, NewMessage, QueueBackend, QueueConfig, QueueError, Receipts, Settle};

async fn open(server: &NatsServer) -> Arc<JetStreamQueues> {
    let client = async_nats::connect(server.url())
        .await
        .expect("connecting to nats-server");
    JetStreamQueues::open(client, QueueOptions::default())
        .await
        .expect("opening the JetStream queue store")
}

fn msg(body: &str) -> NewMessage {
    NewMessage {
        body: body.into(),
        ..NewMessage::default()
    }
}

fn bodies(r: &Receipts) -> Vec<&str> {
    r.messages.iter().map(|m| m.body.as_str()).collect()
}

async fn receive(store: &JetStreamQueues, queue: &str, max: usize) -> Receipts {
    store
        .receive(queue, max, None, Holder::External)
        .await
        .unwrap()
}

/// Counts after reading them back from JetStream.
async fn counts(store: &JetStreamQueues, queue: &str) -> (u64, u64, u64) {
    store.refresh().await;
    let s = store.queue(queue).unwrap().stats;
    (s.visible, s.in_flight, s.delayed)
}

/// Receives until `n` messages came or 30 s passed (a hold or delay runs out on the
/// server's clock).
async fn receive_eventually(store: &JetStreamQueues, queue: &str, n: usize) -> Receipts {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut all = Receipts::default();
    while all.messages.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} messages came back in {queue}",
            all.messages.len()
        );
        let got = receive(store, queue, 10).await;
        all.dead_lettered += got.dead_lettered;
        all.messages.extend(got.messages);
        if all.messages.len() < n {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    all
}

/// The shared contract cases, each on a server of its own.
struct JetStreamHarness {
    store: Arc<JetStreamQueues>,
    _server: NatsServer,
}

#[async_trait::async_trait]
impl contract::Harness for JetStreamHarness {
    fn store(&self) -> &dyn QueueBackend {
        &*self.store
    }

    async fn pass(&self, ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    async fn counts(&self, queue: &str) -> (u64, u64, u64) {
        counts(&self.store, queue).await
    }
}

async fn jetstream_harness(_case: &str) -> JetStreamHarness {
    let server = NatsServer::start();
    JetStreamHarness {
        store: open(&server).await,
        _server: server,
    }
}

contract_cases!(jetstream_harness);

#[tokio::test]
async fn a_second_node_sees_queues_their_changes_and_deletes() {
    let server = NatsServer::start();
    let store = open(&server).await;
    store
        .create_queue("jobs", QueueConfig::default())
        .await
        .unwrap();
    store
        .create_queue("async:hello_x", QueueConfig::default())
        .await
        .unwrap();

    // A change of visibility and retention reaches the consumer and the stream.
    let changed = QueueConfig {
        visibility_timeout_ms: 5_000,
        retention_ms: 120_000,
        ..QueueConfig::default()
    };
    store.set_config("jobs", changed.clone()).await.unwrap();
    assert_eq!(store.queue("jobs").unwrap().config, changed);
    // In JetStream itself: the consumer's ack wait and the stream's max age.
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let stream = js.get_stream("shoal_q_jobs").await.unwrap();
    assert_eq!(
        stream.cached_info().config.max_age,
        Duration::from_secs(120)
    );
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("receive").await.unwrap();
    assert_eq!(
        consumer.cached_info().config.ack_wait,
        Duration::from_secs(5)
    );

    // A second node sees every queue, with its config, from the bucket.
    let node2 = open(&server).await;
    assert_eq!(node2.queue("jobs").unwrap().config, changed);
    assert_eq!(node2.list("", true).len(), 2);

    store.delete_queue("jobs").await.unwrap();
    // The other node hears of the delete through its watch.
    let deadline = Instant::now() + Duration::from_secs(30);
    while node2.queue("jobs").is_ok() {
        assert!(Instant::now() < deadline, "node 2 never saw the delete");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_repeated_forward_is_a_duplicate() {
    let server = NatsServer::start();
    let store = open(&server).await;
    store
        .create_queue("q", QueueConfig::default())
        .await
        .unwrap();
    store
        .create_queue("dest", QueueConfig::default())
        .await
        .unwrap();
    store.send("q", vec![msg("a")]).await.unwrap();
    let a = receive(&store, "q", 1).await.messages.remove(0);
    // Forwarding a again (as after a crash between publish and ack) stores nothing twice.
    for _ in 0..2 {
        let forward = Settle::Forward {
            queue: "dest".into(),
            message: msg("record of a"),
        };
        let results = store
            .settle("q", vec![(a.receipt.clone(), forward)])
            .await
            .unwrap();
        assert!(results[0].is_ok(), "{results:?}");
    }
    assert_eq!(bodies(&receive(&store, "dest", 10).await), ["record of a"]);
}

#[tokio::test]
async fn delayed_messages_come_when_due() {
    let server = NatsServer::start();
    let store = open(&server).await;
    let config = QueueConfig {
        delay_ms: 1_000,
        ..QueueConfig::default()
    };
    store.create_queue("q", config).await.unwrap();
    store.send("q", vec![msg("queue delay")]).await.unwrap();
    store
        .send(
            "q",
            vec![NewMessage {
                delay_ms: Some(3_000),
                ..msg("long delay")
            }],
        )
        .await
        .unwrap();
    let start = Instant::now();
    let got = receive_eventually(&store, "q", 1).await;
    assert_eq!(bodies(&got), ["queue delay"]);
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    let got = receive_eventually(&store, "q", 1).await;
    assert_eq!(bodies(&got), ["long delay"]);
    assert!(
        start.elapsed() >= Duration::from_millis(2_900),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(got.messages[0].receive_count, 1);
}

const T0: i64 = 1_700_000_000_000;

/// Two stores on one server, like two nodes, race to fire the same times of one schedule:
/// for each time exactly one wins, and the queue holds exactly one message per time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_fire_each_time_once() {
    let server = NatsServer::start();
    let a = open(&server).await;
    let b = open(&server).await;
    a.create_queue("async:tick", QueueConfig::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.queue("async:tick").is_err() {
        assert!(Instant::now() < deadline, "node b never saw the queue");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.start_schedule("tick:0", T0).await.unwrap();
    const PERIODS: i64 = 20;
    let mut wins = 0;
    for period in 1..=PERIODS {
        let at = T0 + period * 60_000;
        let (ra, rb) = tokio::join!(
            a.fire("tick:0", at, "async:tick", msg(&format!("a {period}"))),
            b.fire("tick:0", at, "async:tick", msg(&format!("b {period}"))),
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert!(ra ^ rb, "period {period}: a {ra}, b {rb}");
        wins += i32::from(ra);
    }
    let mut fired = Vec::new();
    loop {
        let got = a
            .receive("async:tick", 100, None, Holder::Internal)
            .await
            .unwrap();
        if got.messages.is_empty() {
            break;
        }
        fired.extend(got.messages.into_iter().map(|m| m.body));
    }
    let periods: Vec<i64> = fired
        .iter()
        .map(|b| b.split_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert_eq!(periods, (1..=PERIODS).collect::<Vec<_>>(), "{fired:?}");
    assert_eq!(a.last_fire("tick:0"), Some(T0 + PERIODS * 60_000));
    eprintln!("node a won {wins} of {PERIODS} periods");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_wakes_on_a_send_from_another_node() {
    let server = NatsServer::start();
    let a = open(&server).await;
    let b = open(&server).await;
    a.create_queue("q", QueueConfig::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.queue("q").is_err() {
        assert!(Instant::now() < deadline, "node b never saw the queue");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let waiter = {
        let (b, woken) = (b.clone(), woken.clone());
        tokio::spawn(async move {
            loop {
                let got = b.receive("q", 10, None, Holder::Internal).await.unwrap();
                if !got.messages.is_empty() {
                    woken.store(true, std::sync::atomic::Ordering::SeqCst);
                    return bodies(&got).join(",");
                }
                b.wait("q", 60_000).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.send("q", vec![msg("hello")]).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the waiter on node b got the message")
        .unwrap();
    assert_eq!(got, "hello");
}

/// Acknowledged messages survive `kill -9` of the server, and a client connected before
/// keeps working once it is back (async-nats reconnects on its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9_of_the_server() {
    let mut server = NatsServer::start();
    let store = open(&server).await;
    store
        .create_queue("q", QueueConfig::default())
        .await
        .unwrap();
    store
        .create_queue("async:f", QueueConfig::default())
        .await
        .unwrap();
    let mut sent = Vec::new();
    for i in 0..50 {
        let batch: Vec<_> = (0..10).map(|j| msg(&format!("{i}-{j}"))).collect();
        sent.extend(
            store
                .send("q", batch)
                .await
                .unwrap()
                .into_iter()
                .map(|s| s.id),
        );
    }
    store.start_schedule("f:0", T0).await.unwrap();
    assert!(store
        .fire("f:0", T0 + 1, "async:f", msg("fired"))
        .await
        .unwrap());
    // Half received and deleted before the kill; they must not come back.
    let mut deleted = Vec::new();
    while deleted.len() < 250 {
        let got = receive(&store, "q", 50).await;
        let entries = got
            .messages
            .iter()
            .map(|m| (m.receipt.clone(), Settle::Delete))
            .collect();
        for r in store.settle("q", entries).await.unwrap() {
            r.unwrap();
        }
        deleted.extend(got.messages.into_iter().map(|m| m.id));
    }
    server.kill();
    server.restart();

    // The same store (same client) works again once it has reconnected.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut received = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "the store never recovered after the restart"
        );
        match store.receive("q", 100, None, Holder::External).await {
            Ok(got) if got.messages.is_empty() && !received.is_empty() => break,
            Ok(got) => {
                let entries = got
                    .messages
                    .iter()
                    .map(|m| (m.receipt.clone(), Settle::Delete))
                    .collect();
                store.settle("q", entries).await.unwrap();
                received.extend(got.messages.into_iter().map(|m| m.id));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    // Nothing acknowledged is lost. A 2.9 server writes message removals lazily, so
    // deletes acknowledged just before a `kill -9` may come back: duplicates, never losses.
    let kept: Vec<_> = sent.iter().filter(|id| !deleted.contains(id)).collect();
    for id in &kept {
        assert_eq!(
            received.iter().filter(|r| r == id).count(),
            1,
            "message {id} lost or doubled"
        );
    }
    for id in &received {
        assert!(sent.contains(id), "unknown message {id}");
    }
    eprintln!(
        "{} kept, {} deleted before the kill came back",
        kept.len(),
        received.len() - kept.len()
    );
    // The fire and its record survived, and do not fire again.
    assert!(!store
        .fire("f:0", T0 + 1, "async:f", msg("again"))
        .await
        .unwrap());
    let got = store
        .receive("async:f", 10, None, Holder::Internal)
        .await
        .unwrap();
    assert_eq!(bodies(&got), ["fired"]);
    // New work goes through, and a store opened afresh sees all of it.
    store.send("q", vec![msg("after")]).await.unwrap();
    let fresh = open(&server).await;
    assert_eq!(fresh.last_fire("f:0"), Some(T0 + 1));
    assert_eq!(bodies(&receive(&fresh, "q", 10).await), ["after"]);
}

/// A node that dies holding messages (its store and connection gone) gives them back: the
/// next node receives them once their visibility timeout runs out on the server's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_messages_come_back_to_another_node() {
    let server = NatsServer::start();
    let a = open(&server).await;
    let b = open(&server).await;
    a.create_queue(
        "async:f",
        QueueConfig {
            visibility_timeout_ms: 2_000,
            ..QueueConfig::default()
        },
    )
    .await
    .unwrap();
    let sent: Vec<String> = a
        .send("async:f", (0..6).map(|i| msg(&i.to_string())).collect())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    let held = a
        .receive("async:f", 10, None, Holder::Internal)
        .await
        .unwrap();
    assert_eq!(held.messages.len(), 6);
    // Two handled before the node dies; the other four die with it.
    let done: Vec<_> = held.messages[..2].iter().map(|m| m.id.clone()).collect();
    let entries = held.messages[..2]
        .iter()
        .map(|m| (m.receipt.clone(), Settle::Delete))
        .collect();
    assert!(a
        .settle("async:f", entries)
        .await
        .unwrap()
        .iter()
        .all(Result::is_ok));
    drop(held);
    drop(a);
    assert!(b
        .receive("async:f", 10, None, Holder::Internal)
        .await
        .unwrap()
        .messages
        .is_empty());
    let back = receive_eventually(&b, "async:f", 4).await;
    let mut ids: Vec<_> = back.messages.iter().map(|m| m.id.clone()).collect();
    ids.sort();
    let mut expected: Vec<_> = sent.into_iter().filter(|id| !done.contains(id)).collect();
    expected.sort();
    assert_eq!(ids, expected);
    assert!(back.messages.iter().all(|m| m.receive_count == 2));
}

/// A TCP proxy in front of the server that can cut its connections: one store behind it is
/// a node cut off from NATS while the others still reach it.
struct Proxy {
    port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    links: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let links = Arc::new(std::sync::Mutex::new(Vec::new()));
        let accept = {
            let (cut, links) = (cut.clone(), links.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if cut.load(std::sync::atomic::Ordering::SeqCst) {
                        continue; // dropped: the connection is refused as it opens
                    }
                    let link = tokio::spawn(async move {
                        if let Ok(mut outbound) =
                            tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                        {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    links.lock().unwrap().push(link);
                }
            })
        };
        Proxy {
            port,
            cut,
            links,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Closes every connection through the proxy and refuses new ones.
    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// A node cut off from NATS cannot fire a schedule (it can neither publish nor record),
/// while a node that still reaches NATS fires it; once the link is back, the cut-off node
/// neither fires that time again nor misses the next one's race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_nats_cannot_fire() {
    let server = NatsServer::start();
    let proxy = Proxy::start(server.port()).await;
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(1))
        .request_timeout(Some(Duration::from_secs(2)))
        .connect(proxy.url())
        .await
        .unwrap();
    let a = JetStreamQueues::open(client, QueueOptions::default())
        .await
        .unwrap();
    let b = open(&server).await;
    b.create_queue("async:tick", QueueConfig::default())
        .await
        .unwrap();
    b.start_schedule("tick:0", T0).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.queue("async:tick").is_err() || a.last_fire("tick:0").is_none() {
        assert!(
            Instant::now() < deadline,
            "node a never saw the queue and schedule"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    proxy.cut();
    let t1 = T0 + 60_000;
    let cut_off = tokio::time::timeout(
        Duration::from_secs(60),
        a.fire("tick:0", t1, "async:tick", msg("a 1")),
    )
    .await
    .expect("a fire cut off from NATS gave up");
    assert!(
        cut_off.is_err(),
        "a node cut off from NATS fired: {cut_off:?}"
    );
    assert!(b
        .fire("tick:0", t1, "async:tick", msg("b 1"))
        .await
        .unwrap());

    proxy.heal();
    let deadline = Instant::now() + Duration::from_secs(60);
    let again = loop {
        assert!(Instant::now() < deadline, "node a never came back");
        match a.fire("tick:0", t1, "async:tick", msg("a 1 again")).await {
            Ok(fired) => break fired,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert!(!again, "node a fired a time node b had fired");
    let t2 = T0 + 120_000;
    let (ra, rb) = tokio::join!(
        a.fire("tick:0", t2, "async:tick", msg("a 2")),
        b.fire("tick:0", t2, "async:tick", msg("b 2")),
    );
    assert!(ra.unwrap() ^ rb.unwrap());
    let got = b
        .receive("async:tick", 10, None, Holder::Internal)
        .await
        .unwrap();
    let mut periods: Vec<&str> = got
        .messages
        .iter()
        .map(|m| m.body.split_once(' ').unwrap().1)
        .collect();
    periods.sort();
    assert_eq!(periods, ["1", "2"], "{:?}", bodies(&got));
}

/// An internal consumer's hold longer than the lease lasts while its node lives (renewed)
/// and ends within the lease once the node dies; an outside client's hold lasts its whole
/// visibility timeout either way, as in SQS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_holds_are_leases_their_node_renews() {
    let server = NatsServer::start();
    let open_leased = || async {
        let client = async_nats::connect(server.url()).await.unwrap();
        JetStreamQueues::open(
            client,
            QueueOptions {
                internal_lease_ms: 1_500,
                ..QueueOptions::default()
            },
        )
        .await
        .unwrap()
    };
    let a = open_leased().await;
    let b = open_leased().await;
    a.create_queue(
        "async:f",
        QueueConfig {
            visibility_timeout_ms: 60_000,
            ..QueueConfig::default()
        },
    )
    .await
    .unwrap();
    a.send("async:f", vec![msg("inside"), msg("outside")])
        .await
        .unwrap();
    let inside = a
        .receive("async:f", 1, None, Holder::Internal)
        .await
        .unwrap();
    assert_eq!(bodies(&inside), ["inside"]);
    let outside = a
        .receive("async:f", 1, None, Holder::External)
        .await
        .unwrap();
    assert_eq!(bodies(&outside), ["outside"]);
    // Three leases later both are still held: one renewed, one held by its nak.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    assert!(b
        .receive("async:f", 10, None, Holder::Internal)
        .await
        .unwrap()
        .messages
        .is_empty());
    drop(a);
    let back = receive_eventually(&b, "async:f", 1).await;
    assert_eq!(bodies(&back), ["inside"]);
    assert_eq!(back.messages[0].receive_count, 2);
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert!(
        b.receive("async:f", 10, None, Holder::Internal)
            .await
            .unwrap()
            .messages
            .is_empty(),
        "an outside client's 60 s hold ended with its receiver's store"
    );
}

/// A receipt is tagged with the queue's secret key: one made up from a real one (another
/// message's sequence) deletes nothing, though JetStream would ack any sequence it is told.
#[tokio::test]
async fn a_forged_receipt_deletes_nothing() {
    let server = NatsServer::start();
    let store = open(&server).await;
    store
        .create_queue("q", QueueConfig::default())
        .await
        .unwrap();
    store
        .send("q", vec![msg("mine"), msg("theirs")])
        .await
        .unwrap();
    let mine = receive(&store, "q", 1).await.messages.remove(0);
    assert_eq!(mine.body, "mine");
    // j-<incarnation>-<deadline>-<delivered>-<stream seq>-...: point it at message 2.
    let mut fields: Vec<&str> = mine.receipt.split('-').collect();
    assert_eq!(fields[4], "1", "{}", mine.receipt);
    fields[4] = "2";
    let forged = fields.join("-");
    let results = store
        .settle("q", vec![(forged.clone(), Settle::Delete)])
        .await
        .unwrap();
    assert!(matches!(&results[0], Err(QueueError::InvalidReceipt(r)) if *r == forged));
    assert_eq!(bodies(&receive(&store, "q", 10).await), ["theirs"]);
}
