//! For tests only (cargo feature `testing`, never in the daemon's build): a real
//! `nats-server` with JetStream on a free loopback port and a private store directory,
//! killed when dropped. It can be killed with `SIGKILL` and started again on the same port
//! and directory, as a crash would leave them.
#![allow(clippy::disallowed_methods)] // a test harness starts the server it tests against

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian puts the server; `NATS_SERVER` overrides it.
const DEFAULT_BINARY: &str = "/usr/sbin/nats-server";
/// How long a start may take on a busy machine before the helper gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `nats-server -js`.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// Whether `dir` is ours to remove on drop.
    own_dir: bool,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 for a free port");
    listener
        .local_addr()
        .expect("a bound listener's address")
        .port()
}

impl NatsServer {
    /// Starts a server with a fresh store directory under the system's temp dir.
    pub fn start() -> NatsServer {
        let dir = std::env::temp_dir().join(format!(
            "shoal-nats-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("creating the nats-server store directory");
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            dir,
            own_dir: true,
        };
        server.spawn();
        server
    }

    /// Starts a server on `dir` (kept on drop), e.g. to share one with another process.
    pub fn start_in(dir: &Path) -> NatsServer {
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            dir: dir.to_owned(),
            own_dir: false,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let binary = std::env::var("NATS_SERVER").unwrap_or_else(|_| DEFAULT_BINARY.into());
        let child = Command::new(&binary)
            .args(["-js", "-sd"])
            .arg(&self.dir)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("{binary} on port {} exited at start: {status}", self.port);
            }
            assert!(
                Instant::now() < deadline,
                "{binary} did not listen on port {} within {START_TIMEOUT:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (`-sd`).
    pub fn store_dir(&self) -> &Path {
        &self.dir
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `SIGKILL`s the server (no shutdown, no flush) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        if self.own_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
