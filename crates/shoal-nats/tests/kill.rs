//! The JetStream queue store under `kill -9` of its server, repeatedly (once for longer
//! than a publish may wait), while a sender and a consumer keep working through one
//! connection: every send acknowledged with `Ok` is received in the end (duplicates allowed
//! and counted — at-least-once — losses not).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_nats::testing::NatsServer;
use shoal_nats::{JetStreamQueues, QueueOptions};
use shoal_queue::{Holder, NewMessage, QueueBackend, QueueConfig, Settle};

const KILLS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sends_survive_repeated_kill_9_under_load() {
    let mut server = NatsServer::start();
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(2)))
        .connect(server.url())
        .await
        .unwrap();
    let store = JetStreamQueues::open(client, QueueOptions::default())
        .await
        .unwrap();
    store
        .create_queue(
            "q",
            QueueConfig {
                visibility_timeout_ms: 2_000,
                ..QueueConfig::default()
            },
        )
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let seen = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let sender = {
        let (store, stop, acked) = (store.clone(), stop.clone(), acked.clone());
        tokio::spawn(async move {
            let (mut n, mut refused) = (0u64, 0u64);
            while !stop.load(Ordering::SeqCst) {
                let batch: Vec<String> = (0..5).map(|i| format!("m{n}-{i}")).collect();
                n += 1;
                let messages = batch
                    .iter()
                    .map(|b| NewMessage {
                        body: b.clone(),
                        ..NewMessage::default()
                    })
                    .collect();
                match store.send("q", messages).await {
                    Ok(_) => acked.lock().unwrap().extend(batch),
                    // Not acknowledged: it may or may not be stored; either is allowed.
                    Err(_) => {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            refused
        })
    };
    let consumer = {
        let (store, seen) = (store.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let got = match store.receive("q", 50, None, Holder::Internal).await {
                    Ok(got) => got,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if got.messages.is_empty() {
                    store.wait("q", 200).await;
                    continue;
                }
                {
                    let mut seen = seen.lock().unwrap();
                    for m in &got.messages {
                        *seen.entry(m.body.clone()).or_default() += 1;
                    }
                }
                let entries = got
                    .messages
                    .into_iter()
                    .map(|m| (m.receipt, Settle::Delete))
                    .collect();
                // A failed delete comes back after the visibility timeout.
                let _ = store.settle("q", entries).await;
            }
        })
    };

    for kill in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(700 + 300 * kill as u64)).await;
        server.kill();
        // One outage outlasts JetStream's publish timeout (5 s), so some sends fail.
        let down = if kill == 1 { 6_000 } else { 300 };
        tokio::time::sleep(Duration::from_millis(down)).await;
        server.restart();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let refused = sender.await.unwrap();

    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "only {} sends acknowledged", acked.len());
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let missing = {
            let seen = seen.lock().unwrap();
            acked.iter().filter(|b| !seen.contains_key(*b)).count()
        };
        if missing == 0 {
            break;
        }
        if Instant::now() > deadline {
            store.refresh().await;
            let client = async_nats::connect(server.url()).await.unwrap();
            let js = async_nats::jetstream::new(client);
            let stream = js.get_stream("shoal_q_q").await.unwrap();
            let consumer: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer("receive").await.unwrap();
            panic!(
                "{missing} of {} acknowledged sends never came; stream {:?}; consumer {:?}; stats {:?}",
                acked.len(),
                stream.cached_info().state,
                consumer.cached_info(),
                store.queue("q").unwrap().stats
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    consumer.abort();
    let seen = seen.lock().unwrap();
    let twice = seen.values().filter(|&&n| n > 1).count();
    let unacked = seen.keys().filter(|b| !acked.contains(*b)).count();
    eprintln!(
        "{KILLS} kills: {} sends acknowledged, all received; {twice} received more than once; \
         {unacked} received whose send had failed; {refused} batches refused",
        acked.len()
    );
}
