//! `shoal queue` as an operator runs it against a `shoal serve` daemon: create (with a
//! dead-letter queue), send (an argument and standard input), ls, receive (with and
//! without --delete), purge and rm, and the errors a user sees.
// Starting the binary under test is this test's job; the rule that only shoal-runtime
// spawns processes is about the daemon's own code.
#![allow(clippy::disallowed_methods)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;

use support::{Daemon, TempDir};

/// `shoal queue ARGS...`, with `stdin` on standard input.
fn queue(data_dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("queue")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `shoal queue ARGS...`, which must succeed; its standard output.
fn ok(data_dir: &Path, args: &[&str]) -> String {
    let output = queue(data_dir, args, "");
    assert!(
        output.status.success(),
        "shoal queue {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `shoal queue ARGS...`, which must fail; its standard error.
fn fails(data_dir: &Path, args: &[&str]) -> String {
    let output = queue(data_dir, args, "");
    assert!(!output.status.success(), "shoal queue {args:?} succeeded");
    String::from_utf8(output.stderr).unwrap()
}

/// The `ls` row of `name`, split into columns.
fn row(listing: &str, name: &str) -> Vec<String> {
    listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in:\n{listing}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn queues_are_managed_from_the_command_line() {
    let dir = TempDir::new("shoal-q");
    let data = dir.0.as_path();
    let _daemon = Daemon::start(data);

    let url = ok(data, &["create", "dead"]);
    assert!(url.trim().ends_with("/000000000000/dead"), "{url}");
    ok(
        data,
        &[
            "create",
            "jobs",
            "--visibility-timeout",
            "1m",
            "--retention",
            "2d",
            "--dead-letter",
            "dead",
            "--max-receive-count",
            "3",
        ],
    );
    let error = fails(data, &["create", "jobs", "--visibility-timeout", "45s"]);
    assert!(error.contains("QueueNameExists"), "{error}");
    let error = fails(data, &["create", "other", "--dead-letter", "nowhere"]);
    assert!(error.contains("nowhere"), "{error}");
    let error = fails(data, &["create", "other", "--delay", "1500ms"]);
    assert!(error.contains("whole seconds"), "{error}");

    let id = ok(data, &["send", "jobs", "first", "--attribute", "kind=test"]);
    assert_eq!(id.trim().len(), 36, "a message id: {id}");
    let output = queue(data, &["send", "jobs", "-"], "from stdin\nwith two lines");
    assert!(output.status.success());
    ok(data, &["send", "jobs", "later", "--delay", "10m"]);
    let error = fails(data, &["send", "missing", "x"]);
    assert!(error.contains("does not exist"), "{error}");

    let listing = ok(data, &["ls"]);
    assert!(listing.starts_with("NAME"), "{listing}");
    let jobs = row(&listing, "jobs");
    assert_eq!(
        &jobs[1..4],
        ["2", "0", "1"],
        "visible, in flight, delayed:\n{listing}"
    );
    assert!(
        jobs[4].ends_with('s'),
        "the oldest message's age: {listing}"
    );
    assert_eq!(jobs[5], "dead", "{listing}");
    assert_eq!(
        row(&listing, "dead")[4],
        "-",
        "an empty queue has no oldest message"
    );

    // Receive without deleting: the messages stay in flight.
    let printed = ok(data, &["receive", "jobs", "--wait", "5s"]);
    let mut messages: Vec<Value> = printed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while messages.len() < 2 && Instant::now() < deadline {
        let more = ok(data, &["receive", "jobs", "--wait", "1s"]);
        messages.extend(
            more.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap()),
        );
    }
    let mut bodies: Vec<&str> = messages
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    bodies.sort_unstable();
    assert_eq!(bodies, ["first", "from stdin\nwith two lines"]);
    let first = messages.iter().find(|m| m["body"] == "first").unwrap();
    assert_eq!(first["id"], id.trim());
    assert_eq!(first["attributes"]["kind"], "test");
    assert_eq!(first["receive_count"], 1);
    assert_eq!(&row(&ok(data, &["ls"]), "jobs")[1..3], ["0", "2"]);

    // A short visibility timeout brings one back; --delete takes it for good.
    ok(data, &["send", "jobs", "once"]);
    let printed = ok(
        data,
        &[
            "receive",
            "jobs",
            "--wait",
            "5s",
            "--max",
            "1",
            "--visibility-timeout",
            "0s",
        ],
    );
    assert!(printed.contains("\"once\""), "{printed}");
    let printed = ok(data, &["receive", "jobs", "--wait", "5s", "--delete"]);
    let again: Value = serde_json::from_str(printed.lines().next().unwrap()).unwrap();
    assert_eq!(
        (again["body"].as_str(), again["receive_count"].as_u64()),
        (Some("once"), Some(2))
    );
    let output = queue(data, &["receive", "jobs", "--wait", "0s"], "");
    assert!(output.status.success() && output.stdout.is_empty());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no message"));

    ok(data, &["purge", "jobs"]);
    assert_eq!(&row(&ok(data, &["ls"]), "jobs")[1..4], ["0", "0", "0"]);
    ok(data, &["rm", "jobs"]);
    ok(data, &["rm", "dead"]);
    let listing = ok(data, &["ls"]);
    assert_eq!(
        listing.lines().count(),
        1,
        "only the header left:\n{listing}"
    );
    let error = fails(data, &["rm", "jobs"]);
    assert!(error.contains("does not exist"), "{error}");
}
