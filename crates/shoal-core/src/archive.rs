//! Code archives: a function directory packed as tar.gz by the CLI, unpacked by the
//! daemon with every path checked (no `..`, no absolute paths, no escaping symlinks) and
//! with caps on entries and bytes, so a hostile archive cannot write outside its folder
//! or fill the disk.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Entries (files, folders, links) one archive may hold.
pub const MAX_ENTRIES: usize = 20_000;
/// Bytes one archive may unpack to.
pub const MAX_UNPACKED_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive entry {entry:?}: {reason}")]
    BadEntry { entry: String, reason: String },
    #[error("archive has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("archive unpacks to more than {MAX_UNPACKED_BYTES} bytes")]
    TooLarge,
    #[error("archive is not a readable tar.gz")]
    Corrupt(#[source] std::io::Error),
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Pack `dir` (skipping `.git` and `.shoal`) into a tar.gz.
pub fn pack_dir(dir: &Path) -> std::io::Result<Vec<u8>> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    add_dir(&mut builder, dir, Path::new(""))?;
    builder.into_inner()?.finish()
}

fn add_dir<W: std::io::Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if name == ".git" || name == ".shoal" {
            continue;
        }
        let rel_path = rel.join(&name);
        let kind = entry.file_type()?;
        if kind.is_dir() {
            builder.append_dir(&rel_path, entry.path())?;
            add_dir(builder, root, &rel_path)?;
        } else {
            builder.append_path_with_name(entry.path(), &rel_path)?;
        }
    }
    Ok(())
}

/// Unpack a tar.gz into `dest` (which must exist and be empty).
pub fn unpack(bytes: &[u8], dest: &Path) -> Result<(), ArchiveError> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut count = 0usize;
    let mut total = 0u64;
    for entry in archive.entries().map_err(ArchiveError::Corrupt)? {
        let mut entry = entry.map_err(ArchiveError::Corrupt)?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(ArchiveError::TooManyEntries);
        }
        let raw = entry.path().map_err(ArchiveError::Corrupt)?.into_owned();
        let shown = raw.display().to_string();
        let bad = |reason: &str| ArchiveError::BadEntry {
            entry: shown.clone(),
            reason: reason.to_owned(),
        };
        let rel = safe_relative(&raw)
            .ok_or_else(|| bad("path must be relative and stay inside the archive"))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = dest.join(&rel);
        let write_err = |source| ArchiveError::Write {
            path: target.clone(),
            source,
        };
        let kind = entry.header().entry_type();
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(write_err)?;
        }
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(write_err)?;
        } else if kind.is_file() {
            let mode = entry.header().mode().unwrap_or(0o644);
            let mut file = std::fs::File::create(&target).map_err(write_err)?;
            let budget = MAX_UNPACKED_BYTES - total;
            let written =
                std::io::copy(&mut (&mut entry).take(budget + 1), &mut file).map_err(write_err)?;
            total += written;
            if total > MAX_UNPACKED_BYTES {
                return Err(ArchiveError::TooLarge);
            }
            set_mode(&target, if mode & 0o111 != 0 { 0o555 } else { 0o444 }).map_err(write_err)?;
        } else if kind.is_symlink() {
            let link = entry
                .link_name()
                .map_err(ArchiveError::Corrupt)?
                .ok_or_else(|| bad("symlink without a target"))?;
            let resolved = rel.parent().unwrap_or(Path::new("")).join(&link);
            if link.is_absolute() || safe_relative(&resolved).is_none() {
                return Err(bad("symlink points outside the archive"));
            }
            std::os::unix::fs::symlink(&link, &target).map_err(write_err)?;
        } else {
            return Err(bad(
                "only files, folders and symlinks inside the archive are allowed",
            ));
        }
    }
    Ok(())
}

/// The path with `.` removed, or `None` if it is absolute or climbs out with `..`.
fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        let tar = builder.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        gz.finish().unwrap()
    }

    fn file(builder: &mut tar::Builder<Vec<u8>>, name: &[u8], body: &[u8]) {
        let mut header = tar::Header::new_old();
        // Write the raw name so hostile paths are not normalised away by the builder.
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, body).unwrap();
    }

    fn link(builder: &mut tar::Builder<Vec<u8>>, name: &str, target: &str) {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder.append_link(&mut header, name, target).unwrap();
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shoal-archive-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn packs_and_unpacks_a_tree() {
        let src = scratch("src");
        std::fs::create_dir_all(src.join("lib")).unwrap();
        std::fs::write(src.join("index.js"), "x").unwrap();
        std::fs::write(src.join("lib/a.js"), "y").unwrap();
        std::fs::create_dir_all(src.join(".git")).unwrap();
        std::fs::write(src.join(".git/HEAD"), "z").unwrap();
        let bytes = pack_dir(&src).unwrap();
        let dest = scratch("dest");
        unpack(&bytes, &dest).unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("lib/a.js")).unwrap(), "y");
        assert!(!dest.join(".git").exists());
        let _ = std::fs::remove_dir_all(&src);
        let _ = std::fs::remove_dir_all(&dest);
    }

    #[test]
    fn hostile_archives_are_refused_with_the_entry_named() {
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "dotdot",
                tar_gz(|b| file(b, b"../evil.js", b"x")),
                "../evil.js",
            ),
            (
                "absolute",
                tar_gz(|b| file(b, b"/tmp/evil.js", b"x")),
                "/tmp/evil.js",
            ),
            (
                "symlink",
                tar_gz(|b| link(b, "escape", "../../etc")),
                "symlink points outside",
            ),
            (
                "abs-symlink",
                tar_gz(|b| link(b, "escape", "/etc/passwd")),
                "symlink points outside",
            ),
            ("not-gzip", b"plain text".to_vec(), "not a readable tar.gz"),
        ];
        for (name, bytes, expected) in cases {
            let dest = scratch(name);
            let err = unpack(&bytes, &dest).unwrap_err().to_string();
            assert!(err.contains(expected), "{name}: {err}");
            let escaped = dest.parent().unwrap().join("evil.js");
            assert!(!escaped.exists(), "{name} wrote outside");
            let _ = std::fs::remove_dir_all(&dest);
        }
    }

    #[test]
    fn internal_symlinks_are_kept() {
        let bytes = tar_gz(|b| {
            file(b, b"lib/real.js", b"x");
            link(b, "lib/alias.js", "real.js");
        });
        let dest = scratch("internal-link");
        unpack(&bytes, &dest).unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("lib/alias.js")).unwrap(),
            "x"
        );
        let _ = std::fs::remove_dir_all(&dest);
    }

    #[test]
    fn entry_and_byte_caps_hold() {
        let many = tar_gz(|b| {
            for i in 0..=MAX_ENTRIES {
                file(b, format!("f{i}").as_bytes(), b"");
            }
        });
        let dest = scratch("many");
        assert!(matches!(
            unpack(&many, &dest),
            Err(ArchiveError::TooManyEntries)
        ));
        let _ = std::fs::remove_dir_all(&dest);
    }
}
