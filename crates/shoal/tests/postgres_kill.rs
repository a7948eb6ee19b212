//! Kill test of the postgres data-change trigger: a real `shoal serve` is `kill -9`ed again
//! and again while a writer commits a stream of changes (inserts and updates in
//! transactions of 1–10 rows, some rolled back) to a watched table. The function reports
//! every record it is handed to a ledger in this harness (a TCP server outside Shoal) and
//! succeeds only once the ledger answered, so a success Shoal sees is a recorded delivery.
//! At the end every committed change must be in the ledger (none lost), none of a rolled-
//! back transaction, and each key's changes first seen in commit order; duplicates (at
//! least once) are counted and printed.
//!
//! Short form by default (2,000 changes, a kill about every second). The full form for
//! `docs/RELIABILITY.md`:
//! `SHOAL_PG_KILL_CHANGES=10000 cargo nextest run --release -p shoal --test postgres_kill --no-capture`.
#![allow(clippy::disallowed_methods)] // the harness starts and kills the daemon it tests

#[path = "../../shoal-pg/tests/support/cluster.rs"]
mod cluster;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::Cluster;
use support::TempDir;
use tokio_postgres::NoTls;

const HANDLER: &str = r#"'use strict';
const net = require('net');
const [HOST, PORT] = process.env.LEDGER.split(':');
function tell(line) {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ host: HOST, port: Number(PORT) });
    let answer = '';
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(line + '\n'));
    socket.on('data', (c) => { answer += c; if (answer.includes('\n')) { socket.end(); resolve(answer.trim()); } });
    socket.on('error', reject);
    socket.on('close', () => reject(new Error('ledger closed')));
  });
}
exports.handler = async (event) => {
  const ids = event.Records.map((r) => `${r.dynamodb.Keys.id}:${r.dynamodb.NewImage.n}`);
  if ((await tell(ids.join(','))) !== 'ok') throw new Error('ledger refused');
  return {};
};
"#;

/// (key, n) → deliveries, and each key's n in the order first seen.
#[derive(Default)]
struct Ledger {
    count: BTreeMap<(i32, i32), u32>,
    order: BTreeMap<i32, Vec<i32>>,
}

fn serve_ledger(listener: TcpListener, ledger: Arc<Mutex<Ledger>>) {
    for stream in listener.incoming().flatten() {
        let ledger = ledger.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let mut reader = BufReader::new(&stream);
            if reader.read_line(&mut line).is_err() {
                return;
            }
            {
                let mut l = ledger.lock().unwrap();
                for id in line.trim().split(',').filter(|s| !s.is_empty()) {
                    let (k, n) = id.split_once(':').unwrap();
                    let key = (k.parse().unwrap(), n.parse().unwrap());
                    let c = l.count.entry(key).or_default();
                    *c += 1;
                    if *c == 1 {
                        l.order.entry(key.0).or_default().push(key.1);
                    }
                }
            }
            let _ = (&stream).write_all(b"ok\n");
        });
    }
}

fn start_daemon(data_dir: &Path, url: &str, ledger: &str) -> Child {
    for published in ["control-addr", "gateway-addr"] {
        let _ = std::fs::remove_file(data_dir.join(published));
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join("daemon.log"))
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("--data-dir")
        .arg(data_dir)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--control-listen",
            "127.0.0.1:0",
        ])
        // The connection string lives in the daemon's environment, not the manifest.
        .env("DATABASE_URL", url)
        .env("LEDGER", ledger)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !data_dir.join("control-addr").exists() {
        assert!(Instant::now() < deadline, "shoal serve never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_a_stream_of_changes_loses_none() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let changes = env_or("SHOAL_PG_KILL_CHANGES", 2_000);
    let (db, connection) = tokio_postgres::connect(&cluster.url, NoTls).await.unwrap();
    tokio::spawn(connection);
    db.batch_execute("CREATE TABLE public.stream (id int PRIMARY KEY, n int NOT NULL)")
        .await
        .unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let ledger_addr = listener.local_addr().unwrap().to_string();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    {
        let ledger = ledger.clone();
        std::thread::spawn(move || serve_ledger(listener, ledger));
    }

    let data = TempDir::new("pgkill");
    let code = data.0.join("fn");
    std::fs::create_dir_all(&code).unwrap();
    std::fs::write(code.join("index.js"), HANDLER).unwrap();
    // The function reads LEDGER from its env: the daemon's value, copied in at deploy.
    std::fs::write(
        code.join("shoal.toml"),
        format!(
            "[functions.sink]\nhandler = \"index.handler\"\nenv = {{ LEDGER = \"{ledger_addr}\" }}\n\
             events = [{{ postgres = {{ url_env = \"DATABASE_URL\", table = \"public.stream\", \
             operations = [\"INSERT\", \"UPDATE\"], batch_size = 20 }} }}]\n"
        ),
    )
    .unwrap();
    let mut daemon = start_daemon(&data.0, &cluster.url, &ledger_addr);
    let deployed = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("--data-dir")
        .arg(&data.0)
        .arg("deploy")
        .arg(&code)
        .output()
        .unwrap();
    assert!(
        deployed.status.success(),
        "deploy: {}",
        String::from_utf8_lossy(&deployed.stderr)
    );

    // The writer: committed (key, n) pairs are what must arrive.
    let committed: Arc<Mutex<Vec<(i32, i32)>>> = Arc::default();
    let rolled_back: Arc<Mutex<Vec<(i32, i32)>>> = Arc::default();
    let writer = {
        let (committed, rolled_back, url) =
            (committed.clone(), rolled_back.clone(), cluster.url.clone());
        tokio::spawn(async move {
            let (mut db, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
            tokio::spawn(connection);
            let mut next: BTreeMap<i32, i32> = BTreeMap::new();
            let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut rand = move |m: u64| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed % m
            };
            let mut written = 0;
            while written < changes {
                let tx = db.transaction().await.unwrap();
                let mut these = Vec::new();
                for _ in 0..1 + rand(10) {
                    let key = rand(300) as i32;
                    let n = next.get(&key).copied().unwrap_or(0) + 1;
                    if n == 1 {
                        tx.execute("INSERT INTO public.stream VALUES ($1, $2)", &[&key, &n])
                            .await
                            .unwrap();
                    } else {
                        tx.execute("UPDATE public.stream SET n = $2 WHERE id = $1", &[&key, &n])
                            .await
                            .unwrap();
                    }
                    these.push((key, n));
                    next.insert(key, n);
                }
                if rand(20) == 0 {
                    tx.rollback().await.unwrap();
                    for (key, n) in &these {
                        // The next change of the key reuses n: the table never saw this one.
                        next.insert(*key, n - 1);
                    }
                    rolled_back.lock().unwrap().extend(these);
                } else {
                    tx.commit().await.unwrap();
                    written += these.len();
                    committed.lock().unwrap().extend(these);
                }
                tokio::time::sleep(Duration::from_millis(12)).await;
            }
        })
    };

    // The killer: kill -9 at random moments until the writer is done, restart at once.
    let mut kills = 0;
    let mut seed: u64 = 12345;
    while !writer.is_finished() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pause = 300 + (seed >> 33) % 1200;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        daemon.kill().unwrap(); // SIGKILL
        daemon.wait().unwrap();
        kills += 1;
        daemon = start_daemon(&data.0, &cluster.url, &ledger_addr);
    }
    writer.await.unwrap();

    // Every committed change arrives (generous bound: a busy machine, many restarts).
    let expected: BTreeSet<(i32, i32)> = committed.lock().unwrap().iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let missing = {
            let l = ledger.lock().unwrap();
            expected.iter().filter(|k| !l.count.contains_key(k)).count()
        };
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} committed changes never arrived after {kills} kills; daemon log:\n{}",
            expected.len(),
            std::fs::read_to_string(data.0.join("daemon.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let stragglers land, then stop for good.
    tokio::time::sleep(Duration::from_secs(1)).await;
    daemon.kill().unwrap();
    daemon.wait().unwrap();

    let l = ledger.lock().unwrap();
    let committed_set: BTreeSet<(i32, i32)> = expected;
    let ghosts: Vec<_> = l
        .count
        .keys()
        .filter(|k| !committed_set.contains(k))
        .collect();
    assert!(
        ghosts.is_empty(),
        "delivered but never committed: {ghosts:?}"
    );
    for (key, order) in &l.order {
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "key {key}'s changes were first seen out of commit order: {order:?}"
        );
    }
    let deliveries: u32 = l.count.values().sum();
    let duplicated = l.count.values().filter(|&&c| c > 1).count();
    println!(
        "postgres kill test: {} committed changes ({} rolled back), {kills} kill -9s, lost 0, \
         {duplicated} delivered more than once ({} extra deliveries)",
        committed_set.len(),
        rolled_back.lock().unwrap().len(),
        deliveries as usize - committed_set.len()
    );
    assert!(
        kills >= 3,
        "only {kills} kills: the stream ended too soon to test much"
    );
}
