//! Tidy checks that keep the layout honest: every source file says what it owns, and the
//! pure-logic crates stay free of HTTP, SQL and process spawning.

use std::path::{Path, PathBuf};

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

#[test]
fn every_source_file_opens_with_a_module_doc() {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(workspace().join("crates")).unwrap() {
        let src = entry.unwrap().path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    assert!(files.len() > 20, "found only {} files", files.len());
    let missing: Vec<_> = files
        .iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == "tests"))
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

#[test]
fn pure_crates_do_not_depend_on_http_sql_or_processes() {
    for krate in ["shoal-dispatch", "shoal-manifest", "shoal-events"] {
        let manifest =
            std::fs::read_to_string(workspace().join("crates").join(krate).join("Cargo.toml"))
                .unwrap();
        for forbidden in ["hyper", "axum", "rusqlite", "shoal-runtime", "shoal-store"] {
            assert!(
                !manifest
                    .lines()
                    .any(|l| l.trim_start().starts_with(forbidden)),
                "{krate} depends on {forbidden}"
            );
        }
        let mut files = Vec::new();
        rust_files(
            &workspace().join("crates").join(krate).join("src"),
            &mut files,
        );
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(
                !text.contains("std::process::Command"),
                "{} spawns processes",
                file.display()
            );
        }
    }
}

#[test]
fn only_shoal_runtime_spawns_processes() {
    let mut files = Vec::new();
    rust_files(&workspace().join("crates"), &mut files);
    for file in files {
        if file
            .components()
            .any(|c| c.as_os_str() == "shoal-runtime" || c.as_os_str() == "tests")
        {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains("Command::new"),
            "{} spawns a process",
            file.display()
        );
    }
}
