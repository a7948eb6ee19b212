//! Queue throughput on JetStream against the embedded SQLite store, side by side: a
//! producer keeps one queue fed (batches of 10, backlog capped at 20,000) while 1 or 3
//! consumers drain it, each with `--tasks` loops of receive (up to 10) → delete. A
//! JetStream consumer is a store of its own with its own connection, as a node would be;
//! the SQLite consumers share the one store a machine has. Reports deleted messages per
//! second and CPU per message (this process, and the nats-server's).
//!
//! `cargo run --release -p shoal-nats --example queue_throughput -- [--seconds S]
//! [--tasks N] [--body BYTES] [--consumers 1,3] [--backends jetstream,sqlite-full,sqlite-normal]
//! [--json]` (needs `nats-server`, `/usr/sbin/nats-server` or `$NATS_SERVER`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_nats::testing::NatsServer;
use shoal_nats::{JetStreamQueues, QueueOptions};
use shoal_queue::{
    Holder, NewMessage, Options, QueueBackend, QueueConfig, Settle, SqliteQueues, Synchronous,
};

const BACKLOG: u64 = 20_000;
const PRODUCERS: usize = 4;
const WARM_UP: Duration = Duration::from_secs(1);

struct Args {
    seconds: u64,
    tasks: usize,
    body: usize,
    consumers: Vec<usize>,
    backends: Vec<String>,
    json: bool,
}

fn args() -> Args {
    let mut args = Args {
        seconds: 10,
        tasks: 16,
        body: 100,
        consumers: vec![1, 3],
        backends: vec![
            "jetstream".into(),
            "sqlite-full".into(),
            "sqlite-normal".into(),
        ],
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--json" {
            args.json = true;
            continue;
        }
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--seconds" => args.seconds = value.parse().expect("--seconds S"),
            "--tasks" => args.tasks = value.parse().expect("--tasks N"),
            "--body" => args.body = value.parse().expect("--body BYTES"),
            "--consumers" => {
                args.consumers = value
                    .split(',')
                    .map(|c| c.parse().expect("--consumers 1,3"))
                    .collect()
            }
            "--backends" => args.backends = value.split(',').map(str::to_owned).collect(),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// CPU seconds (user + system) of a process, from /proc (ticks of 1/100 s).
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

struct Outcome {
    backend: String,
    consumers: usize,
    rate: f64,
    sent_rate: f64,
    cpu_us: f64,
    server_cpu_us: Option<f64>,
}

async fn run(
    backend: &str,
    producer: Arc<dyn QueueBackend>,
    consumers: Vec<Arc<dyn QueueBackend>>,
    server_pid: Option<u32>,
    args: &Args,
) -> Outcome {
    producer
        .create_queue("bench", QueueConfig::default())
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let body = "x".repeat(args.body);
    let mut tasks = Vec::new();
    for _ in 0..PRODUCERS {
        let (store, stop, sent, done, body) = (
            producer.clone(),
            stop.clone(),
            sent.clone(),
            done.clone(),
            body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if sent
                    .load(Ordering::Relaxed)
                    .saturating_sub(done.load(Ordering::Relaxed))
                    > BACKLOG
                {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let batch = (0..10)
                    .map(|_| NewMessage {
                        body: body.clone(),
                        ..NewMessage::default()
                    })
                    .collect();
                store.send("bench", batch).await.unwrap();
                sent.fetch_add(10, Ordering::Relaxed);
            }
        }));
    }
    for store in &consumers {
        for _ in 0..args.tasks {
            let (store, stop, done) = (store.clone(), stop.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let got = store
                        .receive("bench", 10, None, Holder::Internal)
                        .await
                        .unwrap();
                    if got.messages.is_empty() {
                        store.wait("bench", 100).await;
                        continue;
                    }
                    let entries: Vec<_> = got
                        .messages
                        .into_iter()
                        .map(|m| (m.receipt, Settle::Delete))
                        .collect();
                    let n = entries.len() as u64;
                    for result in store.settle("bench", entries).await.unwrap() {
                        result.unwrap();
                    }
                    done.fetch_add(n, Ordering::Relaxed);
                }
            }));
        }
    }
    tokio::time::sleep(WARM_UP).await;
    let (done0, sent0) = (done.load(Ordering::Relaxed), sent.load(Ordering::Relaxed));
    let server = server_pid.map(|p| p.to_string());
    let cpu0 = (cpu_secs("self"), server.as_deref().map(cpu_secs));
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let elapsed = start.elapsed().as_secs_f64();
    let (done1, sent1) = (done.load(Ordering::Relaxed), sent.load(Ordering::Relaxed));
    let cpu1 = (cpu_secs("self"), server.as_deref().map(cpu_secs));
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let n = (done1 - done0).max(1) as f64;
    Outcome {
        backend: backend.to_owned(),
        consumers: consumers.len(),
        rate: (done1 - done0) as f64 / elapsed,
        sent_rate: (sent1 - sent0) as f64 / elapsed,
        cpu_us: (cpu1.0 - cpu0.0) * 1e6 / n,
        server_cpu_us: cpu1.1.zip(cpu0.1).map(|(b, a)| (b - a) * 1e6 / n),
    }
}

async fn jetstream(args: &Args, consumers: usize) -> Outcome {
    let server = NatsServer::start();
    let open = || async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let store: Arc<dyn QueueBackend> = JetStreamQueues::open(
            client,
            QueueOptions {
                max_pending_messages: 10_000_000,
                ..QueueOptions::default()
            },
        )
        .await
        .unwrap();
        store
    };
    let producer = open().await;
    let mut nodes = Vec::new();
    for _ in 0..consumers {
        nodes.push(open().await);
    }
    run("jetstream", producer, nodes, server.pid(), args).await
}

async fn sqlite(args: &Args, consumers: usize, synchronous: Synchronous) -> Outcome {
    let dir = std::env::temp_dir().join(format!(
        "shoal-nats-throughput-{}-{synchronous:?}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store: Arc<dyn QueueBackend> = SqliteQueues::open(
        &dir.join("events.db"),
        Options {
            synchronous,
            max_pending_messages: 10_000_000,
            ..Options::default()
        },
    )
    .unwrap();
    let name = match synchronous {
        Synchronous::Full => "sqlite-full",
        Synchronous::Normal => "sqlite-normal",
    };
    let outcome = run(name, store.clone(), vec![store; consumers], None, args).await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

#[tokio::main]
async fn main() {
    let args = args();
    if !args.json {
        println!(
            "{} producer tasks (batches of 10, backlog ≤ {BACKLOG}); each consumer {} tasks of \
             receive ≤10 → delete; {} B bodies; {} s per run after {} s warm-up",
            PRODUCERS,
            args.tasks,
            args.body,
            args.seconds,
            WARM_UP.as_secs()
        );
    }
    for &consumers in &args.consumers {
        for backend in &args.backends {
            let o = match backend.as_str() {
                "jetstream" => jetstream(&args, consumers).await,
                "sqlite-full" => sqlite(&args, consumers, Synchronous::Full).await,
                "sqlite-normal" => sqlite(&args, consumers, Synchronous::Normal).await,
                other => panic!("unknown backend {other}"),
            };
            if args.json {
                println!(
                    "{{\"backend\":\"{}\",\"consumers\":{},\"rate\":{:.1},\"sent_rate\":{:.1},\
                     \"cpu_us_per_msg\":{:.2},\"server_cpu_us_per_msg\":{}}}",
                    o.backend,
                    o.consumers,
                    o.rate,
                    o.sent_rate,
                    o.cpu_us,
                    o.server_cpu_us
                        .map_or("null".to_owned(), |c| format!("{c:.2}"))
                );
            } else {
                println!(
                    "{:<14} consumers={} {:>8.0} msgs/s deleted (sent {:>8.0}/s); CPU per \
                     message: this process {:.1} µs{}",
                    o.backend,
                    o.consumers,
                    o.rate,
                    o.sent_rate,
                    o.cpu_us,
                    o.server_cpu_us
                        .map_or(String::new(), |c| format!(", nats-server {c:.1} µs"))
                );
            }
        }
    }
}
