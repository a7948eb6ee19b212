//! A private PostgreSQL cluster for a test: `initdb` into a temp dir, a server listening
//! only on a Unix socket in that dir (no port to collide on), stopped and removed on drop.
//! As root it runs as the `postgres` user (or `nobody`), since PostgreSQL refuses root.
//! Debian's binaries are looked for under /usr/lib/postgresql/*/bin, then on PATH; when
//! there are none, [`Cluster::start`] says so loudly and returns `None`, and the test
//! returns early (`.ci/run` installs Debian's `postgresql`, so CI always has them).
#![allow(clippy::disallowed_methods)] // a test harness starts the database it tests against
#![allow(dead_code)] // each test binary uses part of it

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct Cluster {
    dir: PathBuf,
    bindir: PathBuf,
    as_user: Vec<String>,
    /// key=value connection string (`host=<socket dir> port=... user=shoal dbname=postgres`).
    pub url: String,
}

fn bindir() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists() && b.join("postgres").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(dir) = found.pop() {
        return Some(dir);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|p| p.join("initdb").exists() && p.join("postgres").exists())
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    /// A fresh cluster, or `None` (printed loudly) when PostgreSQL is not installed.
    pub fn start() -> Option<Cluster> {
        let Some(bindir) = bindir() else {
            eprintln!(
                "\n!!!!!!!! SKIPPED: no PostgreSQL binaries (initdb, postgres) under \
                 /usr/lib/postgresql/*/bin or on PATH; `apt-get install postgresql` to run \
                 this test !!!!!!!!\n"
            );
            return None;
        };
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = PathBuf::from(format!(
            "/tmp/shoal-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let mut as_user = Vec::new();
        if root {
            let user = if Command::new("id")
                .args(["-u", "postgres"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            {
                "postgres"
            } else {
                "nobody"
            };
            run(
                Command::new("chown").args([user, dir.to_str().unwrap()]),
                "chown",
            );
            as_user = vec!["runuser".into(), "-u".into(), user.into(), "--".into()];
        }
        let cluster = Cluster {
            url: format!(
                "host={} port=5432 user=shoal dbname=postgres",
                dir.display()
            ),
            dir,
            bindir,
            as_user,
        };
        let data = cluster.dir.join("data");
        run(
            &mut cluster.command(
                "initdb",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-A",
                    "trust",
                    "-U",
                    "shoal",
                    "--no-sync",
                ],
            ),
            "initdb",
        );
        let log = cluster.dir.join("log");
        let socket = format!("unix_socket_directories={}", cluster.dir.display());
        run(
            &mut cluster.command(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-l",
                    log.to_str().unwrap(),
                    "-w",
                    "-t",
                    "120",
                    "-o",
                    &format!("-c listen_addresses= -c {socket} -c fsync=off -c port=5432"),
                    "start",
                ],
            ),
            "pg_ctl start",
        );
        Some(cluster)
    }

    fn command(&self, tool: &str, args: &[&str]) -> Command {
        let path = self.bindir.join(tool);
        let mut cmd = match self.as_user.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        cmd.args(args).current_dir("/tmp");
        cmd
    }

    /// Run SQL through psql (for setup a test does not want to write in Rust).
    pub fn psql(&self, sql: &str) -> String {
        let out = self
            .command(
                "psql",
                &[
                    "-h",
                    self.dir.to_str().unwrap(),
                    "-U",
                    "shoal",
                    "-d",
                    "postgres",
                    "-AtXq",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-c",
                    sql,
                ],
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Waits until `check` is true, up to `limit` (generous: machines are busy).
pub async fn until(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self
            .command(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
