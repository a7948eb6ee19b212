//! Tidy checks that keep the layout honest: every source file says what it owns; the
//! layering rules of `docs/ARCHITECTURE.md` hold in the real dependency graph
//! (`cargo metadata`), tokio features included; status codes are chosen only in the
//! transports' `respond` modules; only `shoal-runtime` spawns processes; `rust-version`
//! is inherited everywhere and true for every dependency.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `.rs` file under each crate's `src/`.
fn source_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(workspace().join("crates")).unwrap() {
        let src = entry.unwrap().path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    files
}

/// `cargo metadata` of the workspace, resolved.
#[allow(clippy::disallowed_methods)] // a test may run cargo; the daemon's code may not
fn metadata() -> &'static Value {
    static METADATA: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    METADATA.get_or_init(|| {
        let output = std::process::Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1", "--locked"])
            .current_dir(workspace())
            .output()
            .expect("running cargo metadata");
        assert!(
            output.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    })
}

fn package<'a>(name: &str) -> &'a Value {
    metadata()["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name && p["source"].is_null())
        .unwrap_or_else(|| panic!("no workspace crate {name}"))
}

/// Names of every package `name` depends on through normal (not dev or build)
/// dependencies, directly or transitively.
fn normal_closure(name: &str) -> BTreeSet<String> {
    let meta = metadata();
    let names: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: BTreeMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let start = package(name)["id"].as_str().unwrap();
    let mut seen = BTreeSet::new();
    let mut stack = vec![start];
    while let Some(id) = stack.pop() {
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            let pkg = dep["pkg"].as_str().unwrap();
            if normal && seen.insert(names[pkg].to_owned()) {
                stack.push(pkg);
            }
        }
    }
    seen
}

/// Names of the normal dependencies `name` declares itself.
fn direct_deps(name: &str) -> BTreeSet<String> {
    package(name)["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"].is_null())
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The tokio features `name` declares for its normal (non-dev) builds.
fn tokio_features(name: &str) -> BTreeSet<String> {
    package(name)["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["name"] == "tokio" && d["kind"].is_null())
        .flat_map(|d| d["features"].as_array().unwrap().iter())
        .map(|f| f.as_str().unwrap().to_owned())
        .collect()
}

const HTTP: &[&str] = &["hyper", "hyper-util", "http-body-util", "h2", "axum"];
const SQL: &[&str] = &["rusqlite", "libsqlite3-sys"];

#[test]
fn every_source_file_opens_with_a_module_doc() {
    let files = source_files();
    assert!(files.len() > 20, "found only {} files", files.len());
    let missing: Vec<_> = files
        .iter()
        .filter(|f| {
            !std::fs::read_to_string(f)
                .unwrap()
                .trim_start()
                .starts_with("//!")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! paragraph: {missing:?}"
    );
}

/// Invariant (ARCHITECTURE): the pure-logic crates never reach HTTP, SQL, processes or
/// the crates that do, not even transitively.
#[test]
fn pure_crates_reach_no_http_sql_or_io_crates() {
    for krate in [
        "shoal-dispatch",
        "shoal-manifest",
        "shoal-events",
        "shoal-api",
    ] {
        let closure = normal_closure(krate);
        for forbidden in HTTP.iter().chain(SQL).chain(&[
            "shoal-runtime",
            "shoal-store",
            "shoal-core",
            "shoal-server",
        ]) {
            assert!(
                !closure.contains(*forbidden),
                "{krate} depends on {forbidden} (through {closure:?})"
            );
        }
    }
}

/// Invariant (ARCHITECTURE): `shoal-dispatch` cannot open sockets, touch files, handle
/// signals or spawn processes: its tokio has none of those features. The other pure
/// crates have no tokio at all.
#[test]
fn pure_crates_get_no_io_from_tokio() {
    let features = tokio_features("shoal-dispatch");
    for io in ["net", "process", "fs", "signal", "full", "io-std"] {
        assert!(!features.contains(io), "shoal-dispatch enables tokio/{io}");
    }
    for krate in ["shoal-manifest", "shoal-events", "shoal-api", "shoal-store"] {
        assert!(
            !normal_closure(krate).contains("tokio"),
            "{krate} depends on tokio"
        );
    }
}

/// Invariant (ARCHITECTURE): the core holds no transport: no HTTP crate, no server, and
/// its tokio cannot listen on sockets or spawn processes itself.
#[test]
fn the_core_has_no_transport() {
    let direct = direct_deps("shoal-core");
    for forbidden in HTTP.iter().chain(&["shoal-server"]) {
        assert!(
            !direct.contains(*forbidden),
            "shoal-core depends on {forbidden}"
        );
    }
    let features = tokio_features("shoal-core");
    for io in ["net", "process", "signal", "full"] {
        assert!(!features.contains(io), "shoal-core enables tokio/{io}");
    }
}

/// Invariant (ARCHITECTURE): the transports reach the platform only through the core:
/// no SQL, no process launcher, no manifest parsing of their own.
#[test]
fn the_server_goes_through_the_core() {
    let direct = direct_deps("shoal-server");
    for forbidden in SQL
        .iter()
        .chain(&["shoal-store", "shoal-runtime", "shoal-manifest"])
    {
        assert!(
            !direct.contains(*forbidden),
            "shoal-server depends on {forbidden}"
        );
    }
    let closure = normal_closure("shoal-store");
    for forbidden in HTTP
        .iter()
        .chain(&["shoal-dispatch", "shoal-runtime", "tokio"])
    {
        assert!(
            !closure.contains(*forbidden),
            "shoal-store depends on {forbidden}"
        );
    }
    let closure = normal_closure("shoal-runtime");
    for forbidden in SQL
        .iter()
        .chain(&["shoal-store", "shoal-manifest", "shoal-core"])
    {
        assert!(
            !closure.contains(*forbidden),
            "shoal-runtime depends on {forbidden}"
        );
    }
}

/// Invariant (ARCHITECTURE): a status code is chosen only in a transport's `respond`
/// module (one per surface: gateway, control API, Runtime API).
#[test]
fn status_codes_are_chosen_only_in_respond_modules() {
    let offenders: Vec<_> = source_files()
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "respond.rs"))
        .filter(|f| std::fs::read_to_string(f).unwrap().contains("StatusCode::"))
        .collect();
    assert!(
        offenders.is_empty(),
        "StatusCode:: outside a respond.rs: {offenders:?}"
    );
}

/// Invariant (ARCHITECTURE): only `shoal-runtime` spawns processes (clippy's
/// `disallowed-methods` holds the same line at compile time).
#[test]
fn only_shoal_runtime_spawns_processes() {
    for file in source_files() {
        if file.components().any(|c| c.as_os_str() == "shoal-runtime") {
            continue;
        }
        // The one exception: shoal-nats's test harness, which starts a nats-server; it is
        // compiled only with the `testing` feature, which nothing but dev-dependencies
        // turns on (checked below), so it is never in the daemon.
        if file.ends_with("shoal-nats/src/testing.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains("Command::new") && !text.contains("process::Command"),
            "{} spawns a process",
            file.display()
        );
    }
    for p in metadata()["packages"].as_array().unwrap() {
        if !p["source"].is_null() {
            continue;
        }
        for dep in p["dependencies"].as_array().unwrap() {
            let testing = dep["features"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "testing"));
            assert!(
                !(dep["name"] == "shoal-nats" && dep["kind"].is_null() && testing),
                "{} turns on shoal-nats's `testing` (a process-spawning test harness) outside dev-dependencies",
                p["name"]
            );
        }
    }
}

/// Every crate inherits the workspace's `rust-version`, and it is no older than what any
/// dependency in the graph declares it needs; every crate root warns on unused
/// dependencies (clippy `-D warnings` in the test script turns that into a failure).
#[test]
fn rust_version_is_inherited_and_true_and_deps_are_used() {
    let meta = metadata();
    let parse = |v: &str| -> Vec<u64> {
        let mut parts: Vec<u64> = v.split('.').map(|p| p.parse().unwrap()).collect();
        parts.resize(3, 0);
        parts
    };
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let mut ours = BTreeSet::new();
    let mut needed = (vec![0], String::new());
    for p in meta["packages"].as_array().unwrap() {
        let id = p["id"].as_str().unwrap();
        let Some(version) = p["rust_version"].as_str() else {
            assert!(!members.contains(id), "{} has no rust-version", p["name"]);
            continue;
        };
        if members.contains(id) {
            ours.insert(version.to_owned());
        } else if parse(version) > needed.0 {
            needed = (parse(version), p["name"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        ours.len(),
        1,
        "crates declare different rust-versions: {ours:?}"
    );
    let declared = ours.into_iter().next().unwrap();
    assert!(
        parse(&declared) >= needed.0,
        "rust-version {declared} is older than {} needs ({:?})",
        needed.1,
        needed.0
    );
    for entry in std::fs::read_dir(workspace().join("crates")).unwrap() {
        let src = entry.unwrap().path().join("src");
        let root = ["lib.rs", "main.rs"]
            .iter()
            .map(|f| src.join(f))
            .find(|f| f.exists())
            .unwrap();
        let text = std::fs::read_to_string(&root).unwrap();
        assert!(
            text.contains("warn(unused_crate_dependencies)"),
            "{} does not warn on unused dependencies",
            root.display()
        );
    }
}
