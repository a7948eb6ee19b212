//! Reading a Lambda `.zip` package for `shoal deploy function.zip`: the central directory,
//! stored and deflated entries (what `zip -r` and the Framework write), unix modes kept so
//! a `bootstrap` stays executable. Zip64 archives are refused, and so are entry names that
//! are absolute or climb out with `..`; the total unpacked size is capped at Lambda's
//! 250 MB. The daemon checks the repacked tree again when it unpacks it.

use std::io::Read;
use std::path::{Component, Path};

use anyhow::{bail, Context};

/// Lambda's limit on a function's unzipped code.
const MAX_UNZIPPED: u64 = 250 * 1000 * 1000;

/// One file of the package.
pub struct Entry {
    pub name: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

fn u16_at(b: &[u8], at: usize) -> anyhow::Result<u16> {
    let bytes = b.get(at..at + 2).context("truncated zip")?;
    Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
}

fn u32_at(b: &[u8], at: usize) -> anyhow::Result<u32> {
    let bytes = b.get(at..at + 4).context("truncated zip")?;
    Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Every file entry of a zip archive (folders are implied by the paths).
pub fn read(bytes: &[u8]) -> anyhow::Result<Vec<Entry>> {
    let search_from = bytes.len().saturating_sub(22 + 65_535);
    let eocd = (search_from..bytes.len().saturating_sub(21))
        .rev()
        .find(|&at| bytes[at..].starts_with(&[0x50, 0x4b, 0x05, 0x06]))
        .context("not a zip archive (no end of central directory)")?;
    let count = u16_at(bytes, eocd + 10)?;
    let cd_offset = u32_at(bytes, eocd + 16)?;
    if count == u16::MAX || cd_offset == u32::MAX {
        bail!("zip64 archives are not supported; repack with a plain zip");
    }
    let mut at = cd_offset as usize;
    let mut total = 0u64;
    let mut entries = Vec::new();
    for _ in 0..count {
        if u32_at(bytes, at)? != 0x0201_4b50 {
            bail!("corrupt central directory");
        }
        let method = u16_at(bytes, at + 10)?;
        let compressed = u32_at(bytes, at + 20)? as usize;
        let size = u64::from(u32_at(bytes, at + 24)?);
        let name_len = usize::from(u16_at(bytes, at + 28)?);
        let extra_len = usize::from(u16_at(bytes, at + 30)?);
        let comment_len = usize::from(u16_at(bytes, at + 32)?);
        let external = u32_at(bytes, at + 38)?;
        let local = u32_at(bytes, at + 42)? as usize;
        let name = bytes
            .get(at + 46..at + 46 + name_len)
            .context("truncated zip")?;
        let name = String::from_utf8_lossy(name).into_owned();
        at += 46 + name_len + extra_len + comment_len;
        if name.ends_with('/') {
            continue;
        }
        check_name(&name)?;
        total += size;
        if total > MAX_UNZIPPED {
            bail!("the package unzips to more than {MAX_UNZIPPED} bytes, Lambda's limit");
        }
        if u32_at(bytes, local)? != 0x0403_4b50 {
            bail!("corrupt local header for {name}");
        }
        let start = local
            + 30
            + usize::from(u16_at(bytes, local + 26)?)
            + usize::from(u16_at(bytes, local + 28)?);
        let raw = bytes
            .get(start..start + compressed)
            .with_context(|| format!("truncated data for {name}"))?;
        let data = match method {
            0 => raw.to_vec(),
            8 => {
                let mut out = Vec::with_capacity(size as usize);
                flate2::read::DeflateDecoder::new(raw)
                    .take(size + 1)
                    .read_to_end(&mut out)
                    .with_context(|| format!("inflating {name}"))?;
                out
            }
            other => bail!(
                "{name}: compression method {other} is not supported (stored or deflate only)"
            ),
        };
        if data.len() as u64 != size {
            bail!(
                "{name}: unpacked to {} bytes, the archive says {size}",
                data.len()
            );
        }
        // Unix modes live in the upper half of the external attributes.
        let mode = (external >> 16) & 0o777;
        entries.push(Entry {
            name,
            mode: if mode == 0 { 0o644 } else { mode },
            data,
        });
    }
    Ok(entries)
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let path = Path::new(name);
    if name.contains('\\')
        || !path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        bail!("entry {name:?} is not a plain relative path");
    }
    Ok(())
}

/// The package's files and `shoal.toml` as the tar.gz a deploy uploads (through a
/// private temporary folder, removed afterwards).
pub fn to_tar_gz(entries: &[Entry], manifest: &str) -> anyhow::Result<Vec<u8>> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("shoal-zip-{}-{nanos}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let result = (|| {
        for entry in entries {
            let path = dir.join(&entry.name);
            if let Some(parent) = path.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)?;
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(entry.mode)
                .open(&path)
                .with_context(|| format!("writing {}", entry.name))?;
            std::io::Write::write_all(&mut file, &entry.data)?;
        }
        shoal_server::pack_dir_filtered(&dir, &|_| true, &[("shoal.toml", manifest.as_bytes())])
            .context("packing")
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
