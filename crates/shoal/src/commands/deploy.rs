//! `shoal deploy DIR`: check the manifest locally, pack the directory, upload it.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use bytes::Bytes;
use shoal_api::DeployReply;

use crate::client::Client;

#[derive(clap::Args)]
pub struct Args {
    /// A directory with a shoal.toml at its top.
    dir: PathBuf,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let manifest_path = args.dir.join("shoal.toml");
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    // Fail fast, with the local path in the message, before uploading anything.
    if let Err(e) = shoal_manifest::parse(&manifest_path.display().to_string(), &text) {
        bail!("{e}");
    }
    // Progress on stderr (stdout keeps only the result): what is packed, then the upload,
    // which for a large directory is where the time goes.
    let (files, bytes) = tree_size(&args.dir);
    let started = std::time::Instant::now();
    eprintln!(
        "packing {} ({files} files, {}) …",
        args.dir.display(),
        human_bytes(bytes)
    );
    let archive = shoal_server::pack_dir(&args.dir)
        .with_context(|| format!("packing {}", args.dir.display()))?;
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
