//! `shoal deploy DIR`: check the manifest locally, pack the directory, upload it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use bytes::Bytes;
use hyper::Method;
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
    // Progress on stderr (stdout keeps only the result): packing, then the upload, which
    // for a large directory is where the time goes.
    let started = std::time::Instant::now();
    eprintln!("packing {} …", args.dir.display());
    let archive = shoal_server::pack_dir(&args.dir)
        .with_context(|| format!("packing {}", args.dir.display()))?;
    eprintln!(
        "packed: {} archive in {:.1} s; uploading …",
        human_bytes(archive.len()),
        started.elapsed().as_secs_f64()
    );
    let started = std::time::Instant::now();
    let reply = client
        .request(
            Method::POST,
            "/admin/functions",
            &[("content-type", "application/gzip")],
            Bytes::from(archive),
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
