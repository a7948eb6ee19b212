//! Throughput of the SQLite queue store alone: many tasks each loop send (a batch of 10)
//! → receive (up to 10) → delete what they received, on one queue, with durable
//! acknowledgements. Reports fully cycled messages per second with `synchronous=FULL`,
//! then with `NORMAL` for comparison. CPU per message (the writer thread's and the
//! process's) is printed too: it is what a busy machine changes least.
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
    /// CPU seconds: the writer thread's, and the whole process's.
    writer_cpu: f64,
    process_cpu: f64,
}

/// CPU seconds (user + system) from a `/proc/.../stat` line, and the thread's name.
fn cpu_of(stat: &str) -> Option<(String, f64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((name, ticks / 100.0))
}

/// (writer thread, whole process) CPU seconds so far. Ticks are 1/100 s on Linux.
fn cpu_now() -> (f64, f64) {
    let mut writer = 0.0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            if let Some((name, cpu)) = cpu_of(&stat) {
                if name.starts_with("shoal-queue") {
                    writer += cpu;
                }
            }
        }
    }
    let process = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| cpu_of(&s))
        .map_or(0.0, |(_, cpu)| cpu);
    (writer, process)
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
    let cpu_start = cpu_now();
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
    let cpu_end = cpu_now();
    let outcome = Outcome {
        cycled: cycled.load(Ordering::Relaxed),
        sent: sent.load(Ordering::Relaxed),
        elapsed,
        writer_cpu: cpu_end.0 - cpu_start.0,
        process_cpu: cpu_end.1 - cpu_start.1,
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
        let per_msg = |cpu: f64| cpu * 1e6 / o.cycled.max(1) as f64;
        println!(
            "synchronous={:<6} {:>7.0} msgs/s full cycle (sent {:>7.0}/s) over {:.1} s; \
             CPU per message: writer {:.1} µs, process {:.1} µs",
            format!("{synchronous:?}").to_uppercase(),
            o.cycled as f64 / secs,
            o.sent as f64 / secs,
            secs,
            per_msg(o.writer_cpu),
            per_msg(o.process_cpu),
        );
    }
}
