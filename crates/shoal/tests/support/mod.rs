//! What the CLI's black-box tests share: a temporary data directory removed on drop, and
//! a real `shoal serve` on loopback ephemeral ports, started from the binary under test
//! and killed on drop.
// Starting the binary under test is this helper's job; the rule that only shoal-runtime
// spawns processes is about the daemon's own code.
#![allow(clippy::disallowed_methods, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A temp directory removed on drop (short name: instances' sockets live below it).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `shoal serve` on loopback ephemeral ports, killed on drop.
pub struct Daemon(Child);

impl Daemon {
    pub fn start(data_dir: &Path) -> Daemon {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shoal"));
        command.arg("--data-dir").arg(data_dir);
        Daemon::spawn(command, data_dir)
    }

    /// `shoal serve` started in `cwd` with the default data directory (`.shoal`, relative).
    pub fn start_in(cwd: &Path) -> Daemon {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shoal"));
        command.current_dir(cwd).env_remove("SHOAL_DATA_DIR");
        let data_dir = cwd.join(".shoal");
        std::fs::create_dir_all(&data_dir).unwrap();
        Daemon::spawn(command, &data_dir)
    }

    /// `shoal serve` with more arguments (e.g. `--cluster URL --node-name NAME`).
    pub fn start_with(data_dir: &Path, args: &[&str]) -> Daemon {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shoal"));
        command
            .arg("--data-dir")
            .arg(data_dir)
            .arg("serve")
            .args(args);
        Daemon::spawn(command, data_dir)
    }

    /// The daemon's process id (to `kill -9` it).
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    fn spawn(mut command: Command, data_dir: &Path) -> Daemon {
        let log = std::fs::File::create(data_dir.join("daemon.log")).unwrap();
        if !command.get_args().any(|a| a == "serve") {
            command.arg("serve");
        }
        let child = command
            .args(["--listen", "127.0.0.1:0"])
            .args(["--control-listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting shoal serve");
        // Generous: it bounds a hang on a busy machine, it measures nothing.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !data_dir.join("control-addr").exists() {
            assert!(
                Instant::now() < deadline,
                "shoal serve never published its address: {}",
                std::fs::read_to_string(data_dir.join("daemon.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon(child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
