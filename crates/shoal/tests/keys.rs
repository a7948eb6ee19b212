//! `shoal keys` as an operator runs it against a `shoal serve` daemon: `create` prints a
//! profile in the shared-credentials format, `ls` lists names and key ids (never the
//! secret), a name is taken once, `rm` revokes; and no secret is written anywhere in the
//! data directory (they are derived from `keys-master`, which only its owner reads).
// Starting the binary under test is this test's job; the rule that only shoal-runtime
// spawns processes is about the daemon's own code.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod support;

use support::{Daemon, TempDir};

fn keys(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("keys")
        .args(args)
        .output()
        .unwrap()
}

fn ok(data_dir: &Path, args: &[&str]) -> String {
    let output = keys(data_dir, args);
    assert!(
        output.status.success(),
        "shoal keys {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn keys_are_issued_listed_and_revoked_and_no_secret_is_stored() {
    let dir = TempDir::new("shoal-k");
    let data = dir.0.as_path();
    let daemon = Daemon::start(data);

    let created = ok(data, &["create", "ci"]);
    let lines: Vec<&str> = created.lines().collect();
    assert_eq!(lines.len(), 3, "{created}");
    assert_eq!(lines[0], "[ci]");
    let id = lines[1]
        .strip_prefix("aws_access_key_id = ")
        .unwrap_or_else(|| panic!("{created}"));
    let secret = lines[2]
        .strip_prefix("aws_secret_access_key = ")
        .unwrap_or_else(|| panic!("{created}"));
    assert!(id.starts_with("AKSH") && id.len() == 20, "{id}");
    assert!(secret.len() >= 40, "{secret}");

    let listed = ok(data, &["ls"]);
    assert!(listed.contains("ci") && listed.contains(id), "{listed}");
    assert!(!listed.contains(secret), "ls shows no secret: {listed}");

    let again = keys(data, &["create", "ci"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let bad = keys(data, &["create", "no spaces"]);
    assert!(!bad.status.success());

    drop(daemon);
    for file in files(data) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret is written in {}",
            file.display()
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("keys-master"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The address of the stopped daemon is stale: wait for the new one's.
    std::fs::remove_file(data.join("control-addr")).unwrap();
    let _daemon = Daemon::start(data);
    ok(data, &["rm", "ci"]);
    assert!(!ok(data, &["ls"]).contains(id));
    let gone = keys(data, &["rm", "ci"]);
    assert!(!gone.status.success());
}
