//! Throughput of the SQLite queue store alone: many tasks each loop send (a batch of 10)
//! → receive (up to 10) → delete what they received, on one queue, with durable
//! acknowledgements. Reports fully cycled messages per second with `synchronous=FULL`,
//! then with `NORMAL` for comparison.
//!
//! `cargo run --release -p shoal-queue --example throughput -- [--tasks N] [--seconds S]
//! [--body BYTES] [--only full|normal]`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_queue::{
    Holder, NewMessage, Options, QueueBackend, QueueConfig, Settle, SqliteQueues, Synchronous,
};

struct Args {
    tasks: usize,
    seconds: u64,
    body: usize,
    only: Option<Synchronous>,
}

fn args() -> Args {
    let mut args = Args {
        tasks: 256,
        seconds: 10,
        body: 100,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--tasks" => args.tasks = value.parse().expect("--tasks N"),
            "--seconds" => args.seconds = value.parse().expect("--seconds S"),
            "--body" => args.body = value.parse().expect("--body BYTES"),
            "--only" => {
                args.only = Some(match value.as_str() {
                    "full" => Synchronous::Full,
                    "normal" => Synchronous::Normal,
                    other => panic!("--only full|normal, not {other}"),
                })
            }
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

struct Outcome {
    cycled: u64,
    sent: u64,
    elapsed: Duration,
}

async fn run(args: &Args, synchronous: Synchronous) -> Outcome {
    let dir = std::env::temp_dir().join(format!(
        "shoal-queue-throughput-{}-{:?}",
        std::process::id(),
        synchronous
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = SqliteQueues::open(
        &dir.join("events.db"),
        Options {
            synchronous,
            max_pending_messages: 10_000_000,
            ..Options::default()
        },
    )
    .unwrap();
    store
        .create_queue("bench", QueueConfig::default())
        .await
        .unwrap();
    let body = "x".repeat(args.body);
    let stop = Arc::new(AtomicBool::new(false));
    let cycled = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..args.tasks {
        let (store, stop, cycled, sent, body) = (
            store.clone(),
            stop.clone(),
            cycled.clone(),
            sent.clone(),
            body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let batch = (0..10)
                    .map(|_| NewMessage {
                        body: body.clone(),
                        ..NewMessage::default()
                    })
                    .collect();
                store.send("bench", batch).await.unwrap();
                sent.fetch_add(10, Ordering::Relaxed);
                let got = store
                    .receive("bench", 10, None, Holder::Internal)
                    .await
                    .unwrap();
                let entries: Vec<_> = got
                    .messages
                    .into_iter()
                    .map(|m| (m.receipt, Settle::Delete))
                    .collect();
                let n = entries.len() as u64;
                if n > 0 {
                    for result in store.settle("bench", entries).await.unwrap() {
                        result.unwrap();
                    }
                }
                cycled.fetch_add(n, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed();
    let outcome = Outcome {
        cycled: cycled.load(Ordering::Relaxed),
        sent: sent.load(Ordering::Relaxed),
        elapsed,
    };
    for task in tasks {
        task.await.unwrap();
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

#[tokio::main]
async fn main() {
    let args = args();
    println!(
        "{} tasks, each: send 10 → receive ≤10 → delete; {} B bodies; {} s per mode",
        args.tasks, args.body, args.seconds
    );
    for synchronous in [Synchronous::Full, Synchronous::Normal] {
        if args.only.is_some_and(|only| only != synchronous) {
            continue;
        }
        let o = run(&args, synchronous).await;
        let secs = o.elapsed.as_secs_f64();
        println!(
            "synchronous={:<6} {:>9.0} msgs/s full cycle (sent {:>9.0}/s) over {:.1} s",
            format!("{synchronous:?}").to_uppercase(),
            o.cycled as f64 / secs,
            o.sent as f64 / secs,
            secs
        );
    }
}
