//! Data-driven manifest tests: each `tests/ui/*.toml` is parsed as `shoal.toml` and the
//! result compared with its sibling `*.expected` file — pretty JSON of the manifest for a
//! valid input, the error's Display for an invalid one. Inputs named `err_*` must fail,
//! all others must parse. `UPDATE_EXPECT=1 cargo test -p shoal-manifest` rewrites the
//! expected files; read every changed one before keeping it.

use std::fs;
use std::path::{Path, PathBuf};

use shoal_manifest::{parse, Manifest};

#[test]
fn ui() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    let update = std::env::var("UPDATE_EXPECT").is_ok_and(|v| v == "1");
    let mut inputs: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("tests/ui exists")
        .map(|entry| entry.expect("readable dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 15, "expected the full set of ui cases");

    let mut failures = Vec::new();
    for input in &inputs {
        let name = input.file_stem().unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(input).unwrap();
        let actual = match parse("shoal.toml", &text) {
            Ok(manifest) => {
                if name.starts_with("err_") {
                    failures.push(format!("{name}: parsed, but err_ cases must fail"));
                }
                let json = serde_json::to_string_pretty(&manifest).unwrap();
                let back: Manifest = serde_json::from_str(&json).unwrap();
                if back != manifest {
                    failures.push(format!("{name}: JSON does not round-trip"));
                }
                json + "\n"
            }
            Err(error) => {
                if !name.starts_with("err_") {
                    failures.push(format!("{name}: failed with {error}"));
                }
                error.to_string() + "\n"
            }
        };
        let expected_path = input.with_extension("expected");
        if update {
            fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        match fs::read_to_string(&expected_path) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => failures.push(format!(
                "{name}: output differs\n--- expected\n{expected}--- actual\n{actual}"
            )),
            Err(_) => failures.push(format!("{name}: missing {}", expected_path.display())),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
