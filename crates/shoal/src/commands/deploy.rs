//! `shoal deploy PATH`: check the manifest locally, pack, upload. PATH is a directory with
//! a `shoal.toml`, or with a Serverless Framework `serverless.yml` (converted here, where
//! `${env:...}` means the deployer's environment, as with the Framework; `--stage` as
//! `sls deploy --stage`), or a Lambda `.zip` package with `--handler` and `--runtime`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use bytes::Bytes;
use shoal_api::DeployReply;

use crate::client::Client;
use crate::zip;

#[derive(clap::Args)]
pub struct Args {
    /// A directory with a shoal.toml or a serverless.yml at its top, or a Lambda .zip.
    path: PathBuf,
    /// serverless.yml: the stage (function names are SERVICE-STAGE-FUNCTION); default
    /// provider.stage, else dev.
    #[arg(long)]
    stage: Option<String>,
    /// .zip: the handler (`file.export`, as on Lambda).
    #[arg(long)]
    handler: Option<String>,
    /// .zip: the runtime (nodejs20.x, python3.12, provided.al2023, ... or Shoal's names).
    #[arg(long)]
    runtime: Option<String>,
    /// .zip: the function's name (default: the file's name without `.zip`).
    #[arg(long)]
    name: Option<String>,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    // Progress on stderr (stdout keeps only the result): what is packed, then the upload,
    // which for a large directory is where the time goes.
    if args.path.is_dir() {
        let (files, bytes) = tree_size(&args.path);
        eprintln!(
            "packing {} ({files} files, {}) …",
            args.path.display(),
            human_bytes(bytes)
        );
    }
    let started = std::time::Instant::now();
    let archive = if args.path.extension().is_some_and(|e| e == "zip") {
        from_zip(&args)?
    } else if args.path.join("shoal.toml").exists() {
        from_shoal_toml(&args.path)?
    } else if let Some(file) = ["serverless.yml", "serverless.yaml"]
        .iter()
        .map(|name| args.path.join(name))
        .find(|p| p.exists())
    {
        from_serverless(&args.path, &file, args.stage.as_deref())?
    } else {
        bail!(
            "{} has neither a shoal.toml nor a serverless.yml (and is not a .zip)",
            args.path.display()
        );
    };
    eprintln!(
        "packed: {} archive in {:.1} s",
        human_bytes(archive.len()),
        started.elapsed().as_secs_f64()
    );
    let started = std::time::Instant::now();
    // A moving line on a terminal for archives worth watching; otherwise no noise.
    let live = std::io::stderr().is_terminal() && archive.len() >= 4 * 1024 * 1024;
    let mut shown = 0;
    let reply = client
        .upload(
            "/admin/functions",
            &[("content-type", "application/gzip")],
            Bytes::from(archive),
            move |sent, total| {
                let percent = sent * 100 / total.max(1);
                if live && (percent >= shown + 5 || sent == total) {
                    shown = percent;
                    eprint!(
                        "\ruploading {} of {} ({percent} %)",
                        human_bytes(sent),
                        human_bytes(total)
                    );
                    if sent == total {
                        eprintln!(", unpacking and checking …");
                    }
                }
            },
        )
        .await?;
    let reply: DeployReply = reply.parse()?;
    eprintln!(
        "uploaded and deployed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for function in reply.functions {
        println!("deployed {} version {}", function.name, function.version);
        for url in function.urls {
            println!("  {url}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn from_shoal_toml(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let manifest_path = dir.join("shoal.toml");
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    // Fail fast, with the local path in the message, before uploading anything.
    if let Err(e) = shoal_manifest::parse(&manifest_path.display().to_string(), &text) {
        bail!("{e}");
    }
    shoal_server::pack_dir(dir).with_context(|| format!("packing {}", dir.display()))
}

fn from_serverless(dir: &Path, file: &Path, stage: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let options = shoal_manifest::ServerlessOptions { stage, env: &env };
    let shown = file.display().to_string();
    let converted = shoal_manifest::from_serverless(&shown, &text, &options)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for note in &converted.notes {
        eprintln!(
            "note: {shown}:{}:{}: {}: {}",
            note.line, note.column, note.field, note.message
        );
    }
    if !converted.unknown.is_empty() {
        eprintln!("warning: {shown}: Shoal does not understand these keys and ignores them:");
        for key in &converted.unknown {
            eprintln!("  line {}: {}", key.line, key.field);
        }
    }
    eprintln!(
        "service {} stage {}: {} function(s)",
        converted.service,
        converted.stage,
        converted.manifest.functions.len()
    );
    let include = |path: &str| converted.includes(path);
    shoal_server::pack_dir_filtered(
        dir,
        &include,
        &[("shoal.toml", converted.shoal_toml.as_bytes())],
    )
    .with_context(|| format!("packing {}", dir.display()))
}

/// A Lambda `.zip` package: its files plus a one-function `shoal.toml`, as a tar.gz.
fn from_zip(args: &Args) -> anyhow::Result<Vec<u8>> {
    let (Some(handler), Some(runtime)) = (&args.handler, &args.runtime) else {
        bail!(
            "deploying a .zip needs --handler (e.g. index.handler) and --runtime (e.g. nodejs20.x)"
        );
    };
    let name = match &args.name {
        Some(name) => name.clone(),
        None => args
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let runtime = match runtime.as_str() {
        r if r.starts_with("nodejs") => "nodejs",
        r if r.starts_with("python") => "python",
        r if r.starts_with("provided") => "provided",
        other => bail!(
            "runtime {other:?} is not supported; use nodejs20.x, python3.12 or provided.al2023"
        ),
    };
    let manifest = format!(
        "[functions.{}]\nruntime = {}\nhandler = {}\n",
        toml_string(&name),
        toml_string(runtime),
        toml_string(handler)
    );
    if let Err(e) = shoal_manifest::parse("shoal.toml (from the command line)", &manifest) {
        bail!("{e}");
    }
    let bytes =
        std::fs::read(&args.path).with_context(|| format!("reading {}", args.path.display()))?;
    let files = zip::read(&bytes).with_context(|| format!("reading {}", args.path.display()))?;
    zip::to_tar_gz(&files, &manifest).context("repacking the .zip")
}

fn toml_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

fn human_bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / f64::from(1 << 10)),
        n => format!("{n} B"),
    }
}

/// Files and bytes under `dir` (symlinks not followed), for the packing line.
fn tree_size(dir: &Path) -> (u64, usize) {
    let mut files = 0;
    let mut bytes = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(entry.path()),
                Ok(kind) if kind.is_file() => {
                    files += 1;
                    bytes += entry.metadata().map_or(0, |m| m.len() as usize);
                }
                _ => {}
            }
        }
    }
    (files, bytes)
}
