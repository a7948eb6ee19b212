//! Data-driven serverless.yml tests: each `tests/serverless/*.yml` is converted as a
//! serverless.yml (environment `SHOAL_TEST_ENV=from-env`; a first line `# stage: NAME`
//! passes `--stage NAME`) and compared with its sibling `*.expected`: the generated
//! `shoal.toml`, then every not-understood key and every note with its line, or the error
//! for an input named `err_*`. `UPDATE_EXPECT=1` rewrites the expected files; read every
//! changed one before keeping it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use shoal_manifest::{from_serverless, ServerlessOptions};

#[test]
fn serverless_projects() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serverless");
    let update = std::env::var("UPDATE_EXPECT").is_ok_and(|v| v == "1");
    let mut inputs: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("tests/serverless exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yml"))
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty());
    let env: BTreeMap<String, String> =
        [("SHOAL_TEST_ENV".to_owned(), "from-env".to_owned())].into();

    let mut failures = Vec::new();
    for input in &inputs {
        let name = input.file_stem().unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(input).unwrap();
        let stage = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# stage: "))
            .map(str::trim);
        let options = ServerlessOptions { stage, env: &env };
        let actual = match from_serverless("serverless.yml", &text, &options) {
            Ok(converted) => {
                if name.starts_with("err_") {
                    failures.push(format!("{name}: converted, but err_ cases must fail"));
                }
                let mut out = format!(
                    "# service {} stage {}; patterns {:?}\n{}",
                    converted.service, converted.stage, converted.patterns, converted.shoal_toml
                );
                for remark in &converted.unknown {
                    out += &format!(
                        "unknown serverless.yml:{}:{}: {}\n",
                        remark.line, remark.column, remark.field
                    );
                }
                for remark in &converted.notes {
                    out += &format!(
                        "note serverless.yml:{}:{}: {}: {}\n",
                        remark.line, remark.column, remark.field, remark.message
                    );
                }
                out
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
