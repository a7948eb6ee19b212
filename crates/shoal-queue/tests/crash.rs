//! `kill -9` at random moments loses nothing acknowledged: a child process (this test
//! binary again, told so by an environment variable) sends, deletes, forwards and fires
//! as fast as it can and prints each acknowledgement; the parent kills it, reopens the
//! store and checks every acknowledged message is there (or acknowledged gone), that
//! forwards were atomic, that internal holds were released and that fires were kept.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shoal_queue::{Holder, NewMessage, Options, QueueBackend, QueueConfig, Settle, SqliteQueues};

const CHILD: &str = "SHOAL_QUEUE_CRASH_CHILD";
const ROUNDS: usize = 5;
/// The child stops on its own after this long, should the parent fail to kill it.
const CHILD_LIFETIME: Duration = Duration::from_secs(60);

fn msg(body: String) -> NewMessage {
    NewMessage {
        body,
        ..NewMessage::default()
    }
}

/// The child: senders, one consumer that deletes or forwards or keeps, one scheduler.
fn child(dir: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SqliteQueues::open(&dir.join("events.db"), Options::default()).unwrap();
        for queue in ["q", "moved"] {
            store
                .create_queue(queue, QueueConfig::default())
                .await
                .unwrap();
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for sender in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0usize;
                while started.elapsed() < CHILD_LIFETIME {
                    let batch = (0..1 + (n + sender) % 10)
                        .map(|i| msg(format!("{sender}-{n}-{i}")))
                        .collect();
                    n += 1;
                    for sent in store.send("q", batch).await.unwrap() {
                        println!("ACK {}", sent.id);
                    }
                }
            }));
        }
        let consumer = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while started.elapsed() < CHILD_LIFETIME {
                let got = consumer
                    .receive("q", 10, Some(600_000), Holder::Internal)
                    .await
                    .unwrap();
                let mut entries = Vec::new();
                let mut gone = Vec::new();
                for m in got.messages {
                    n += 1;
                    // A third deleted, a third forwarded, a third kept in flight.
                    match n % 3 {
                        0 => {
                            gone.push(format!("GONE {}", m.id));
                            entries.push((m.receipt, Settle::Delete));
                        }
                        1 => {
                            gone.push(format!("MOVED {}", m.id));
                            entries.push((
                                m.receipt,
                                Settle::Forward {
                                    queue: "moved".into(),
                                    message: msg(m.id),
                                },
                            ));
                        }
                        _ => {}
                    }
                }
                // Said before: a delete that commits but is killed before its line is
                // printed is the consumer's doing, not a loss.
                for line in &gone {
                    if let Some(id) = line.strip_prefix("GONE ") {
                        println!("DELETING {id}");
                    }
                }
                for result in consumer.settle("q", entries).await.unwrap() {
                    result.unwrap();
                }
                for line in gone {
                    println!("{line}");
                }
            }
        }));
        let scheduler = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut at = 1;
            while started.elapsed() < CHILD_LIFETIME {
                if scheduler
                    .fire("tick", at, "moved", msg(format!("fire {at}")))
                    .await
                    .unwrap()
                {
                    println!("FIRED {at}");
                }
                at += 1;
            }
        }));
        for task in tasks {
            task.await.unwrap();
        }
    });
}

/// What the child said before it died.
#[derive(Default)]
struct Ledger {
    acked: Vec<String>,
    gone: HashSet<String>,
    deleting: HashSet<String>,
    moved: HashSet<String>,
    last_fire: i64,
}

impl Ledger {
    fn record(&mut self, line: &str) {
        if let Some(id) = line.strip_prefix("ACK ") {
            self.acked.push(id.to_owned());
        } else if let Some(id) = line.strip_prefix("GONE ") {
            self.gone.insert(id.to_owned());
        } else if let Some(id) = line.strip_prefix("DELETING ") {
            self.deleting.insert(id.to_owned());
        } else if let Some(id) = line.strip_prefix("MOVED ") {
            self.moved.insert(id.to_owned());
        } else if let Some(at) = line.strip_prefix("FIRED ") {
            self.last_fire = self.last_fire.max(at.parse().unwrap());
        }
    }
}

/// A pseudo-random delay per round, different on every run.
fn kill_delay(round: usize) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mixed = (nanos ^ (round as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) % 1_300;
    Duration::from_millis(50 + mixed)
}

/// Runs one child, kills it after it acknowledged something, returns its ledger.
#[allow(clippy::disallowed_methods)] // the crash test must kill a real process; the store never spawns one
fn run_and_kill(dir: &Path, round: usize) -> Ledger {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "acknowledged_work_survives_kill_9",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut ledger = Ledger::default();
    // Wait for the first acknowledgement, then let it run a random while.
    let first = lines
        .recv_timeout(Duration::from_secs(60))
        .expect("the child acknowledged nothing in 60 s");
    ledger.record(&first);
    std::thread::sleep(kill_delay(round));
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    for line in lines.try_iter() {
        ledger.record(&line);
    }
    ledger
}

#[test]
fn acknowledged_work_survives_kill_9() {
    if let Some(dir) = std::env::var_os(CHILD) {
        return child(Path::new(&dir));
    }
    let dir: PathBuf =
        std::env::temp_dir().join(format!("shoal-queue-crash-{}", std::process::id()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut total = Ledger::default();
    for round in 0..ROUNDS {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ledger = run_and_kill(&dir, round);
        assert!(!ledger.acked.is_empty());

        let store = SqliteQueues::open(&dir.join("events.db"), Options::default()).unwrap();
        // The dead child's in-flight messages are visible again.
        let q = store.queue("q").unwrap().stats;
        assert_eq!(q.in_flight, 0, "round {round}: internal holds not released");
        let (in_q, moved_bodies) = runtime.block_on(async {
            let drain = |queue: &'static str| {
                let store = Arc::clone(&store);
                async move {
                    let mut out = Vec::new();
                    loop {
                        let got = store
                            .receive(queue, 10_000, None, Holder::Internal)
                            .await
                            .unwrap();
                        if got.messages.is_empty() {
                            return out;
                        }
                        out.extend(got.messages);
                    }
                }
            };
            let in_q: HashSet<String> = drain("q").await.into_iter().map(|m| m.id).collect();
            let moved: HashSet<String> = drain("moved").await.into_iter().map(|m| m.body).collect();
            (in_q, moved)
        });
        assert_eq!(
            store.pending().0 as usize,
            in_q.len() + moved_bodies.len(),
            "round {round}: counts disagree with the rows"
        );
        let lost: Vec<_> = ledger
            .acked
            .iter()
            .filter(|id| {
                !in_q.contains(*id) && !moved_bodies.contains(*id) && !ledger.deleting.contains(*id)
            })
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: lost {} acknowledged messages: {lost:?}",
            lost.len()
        );
        for id in &ledger.gone {
            assert!(!in_q.contains(id), "round {round}: deleted {id} came back");
        }
        for id in &ledger.moved {
            assert!(
                moved_bodies.contains(id),
                "round {round}: forward of {id} lost"
            );
        }
        for id in &in_q {
            assert!(
                !moved_bodies.contains(id),
                "round {round}: {id} both forwarded and kept"
            );
        }
        assert!(
            store.last_fire("tick").unwrap_or(0) >= ledger.last_fire,
            "round {round}: an acknowledged fire was lost"
        );
        eprintln!(
            "round {round}: {} sends acknowledged, {} deleted, {} forwarded, fired up to {}; none lost",
            ledger.acked.len(),
            ledger.gone.len(),
            ledger.moved.len(),
            ledger.last_fire
        );
        total.acked.extend(ledger.acked);
        drop(store);
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(total.acked.len() > ROUNDS);
}
