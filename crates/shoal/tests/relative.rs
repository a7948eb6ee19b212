//! The quick start as a user types it: `shoal serve` and `shoal deploy` from a project
//! directory with the default, relative data directory (`.shoal`). Instances start from
//! paths under it inside their sandbox, whose working directory is not the daemon's; a
//! relative path once made every call fail with "starting /usr/bin/node: No such file".
// Starting the binary under test is this test's job; the rule that only shoal-runtime
// spawns processes is about the daemon's own code.
#![allow(clippy::disallowed_methods)]

use std::process::Command;

mod support;

use support::{Daemon, TempDir};

#[test]
fn the_default_relative_data_directory_serves_calls() {
    let dir = TempDir::new("shoal-rel");
    let _daemon = Daemon::start_in(&dir.0);
    let project = dir.0.join("hello");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("index.js"),
        "exports.handler = async (event) => ({ echoed: event.who });\n",
    )
    .unwrap();
    std::fs::write(
        project.join("shoal.toml"),
        "[functions.rel]\nruntime = \"nodejs\"\nhandler = \"index.handler\"\n",
    )
    .unwrap();
    let shoal = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .current_dir(&dir.0)
            .env_remove("SHOAL_DATA_DIR")
            .env_remove("SHOAL_CONTROL")
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "shoal {args:?}: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    };
    shoal(&["deploy", "hello"]);
    let out = shoal(&["invoke", "rel", "--data", r#"{"who":"relative"}"#]);
    assert!(out.contains(r#""echoed":"relative""#), "{out}");
}
