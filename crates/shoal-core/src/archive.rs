//! Code archives: a function directory packed as tar.gz by the CLI, unpacked by the
//! daemon with every path checked (no `..`, no absolute paths, no symlink followed while
//! writing, no symlink leading out of the tree, even through other links) and with caps
//! on entries, depth and bytes, so a hostile archive cannot write outside its folder or
//! fill the disk.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use dirfd::{DirFd, Kind};

// libc's `*at` calls: see the module's doc for what its `unsafe` blocks hold to.
#[allow(unsafe_code)]
mod dirfd;

/// Entries (files, folders, links) one archive may hold.
pub const MAX_ENTRIES: usize = 20_000;
/// Bytes one archive may unpack to.
pub const MAX_UNPACKED_BYTES: u64 = 256 * 1024 * 1024;
/// Names in one entry's path. Each is a step of the walk from the top (see [`unpack`]), so
/// this bounds the work a hostile archive can ask for; real trees, `node_modules`
/// included, stay far below it.
pub const MAX_DEPTH: usize = 128;

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

/// Pack the files of `dir` for which `include` (given the path relative to `dir`, with
/// `/` separators) says yes, skipping `.git`, `.shoal` and `.serverless`, plus `extra`
/// files (relative path, contents) written as regular files; folders are added as the
/// kept files need them.
pub fn pack_dir_filtered(
    dir: &Path,
    include: &dyn Fn(&str) -> bool,
    extra: &[(&str, &[u8])],
) -> std::io::Result<Vec<u8>> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    let mut files = Vec::new();
    collect_files(dir, Path::new(""), &mut files)?;
    let mut folders = std::collections::BTreeSet::new();
    let extra_names: Vec<&str> = extra.iter().map(|(name, _)| *name).collect();
    for rel in files {
        let text = rel.to_string_lossy().into_owned();
        if !include(&text) || extra_names.contains(&text.as_str()) {
            continue;
        }
        for folder in rel.ancestors().skip(1) {
            if folder.as_os_str().is_empty() || !folders.insert(folder.to_owned()) {
                continue;
            }
            builder.append_dir(folder, dir.join(folder))?;
        }
        builder.append_path_with_name(dir.join(&rel), &rel)?;
    }
    for (name, bytes) in extra {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, name, *bytes)?;
    }
    builder.into_inner()?.finish()
}

fn collect_files(
    root: &Path,
    rel: &Path,
    out: &mut Vec<std::path::PathBuf>,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if name == ".git" || name == ".shoal" || name == ".serverless" {
            continue;
        }
        let rel_path = rel.join(&name);
        if entry.file_type()?.is_dir() {
            collect_files(root, &rel_path, out)?;
        } else {
            out.push(rel_path);
        }
    }
    Ok(())
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
///
/// No symlink is ever followed: each entry's path is walked one name at a time from `dest`
/// (see [`dirfd`]), so an entry whose path passes through a link, or that would land on
/// one, is refused with its name. Once everything is unpacked, every link is checked to
/// lead inside the tree the way the kernel will follow it at run time, through the other
/// links too. Files get 0444 (0555 if executable) and folders 0755, whatever the archive
/// says: code is read-only and readable by the uids instances run under.
pub fn unpack(bytes: &[u8], dest: &Path) -> Result<(), ArchiveError> {
    let root = DirFd::open(dest).map_err(|source| ArchiveError::Write {
        path: dest.to_owned(),
        source,
    })?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut count = 0usize;
    let mut total = 0u64;
    let mut links = Vec::new();
    // The folder of the previous entry: archives list a folder's entries together, so
    // most entries skip the walk from the top.
    let mut last_folder: Option<(PathBuf, DirFd)> = None;
    for entry in archive.entries().map_err(ArchiveError::Corrupt)? {
        let mut entry = entry.map_err(ArchiveError::Corrupt)?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(ArchiveError::TooManyEntries);
        }
        let raw = entry.path().map_err(ArchiveError::Corrupt)?.into_owned();
        let shown = raw.display().to_string();
        let bad = |reason: String| ArchiveError::BadEntry {
            entry: shown.clone(),
            reason,
        };
        let rel = safe_relative(&raw)
            .ok_or_else(|| bad("path must be relative and stay inside the archive".into()))?;
        let names: Vec<&OsStr> = rel.iter().collect();
        let Some((&name, folders)) = names.split_last() else {
            continue;
        };
        if names.len() > MAX_DEPTH {
            return Err(bad(format!("path is more than {MAX_DEPTH} levels deep")));
        }
        let parent = rel.parent().unwrap_or(Path::new(""));
        if last_folder.as_ref().is_none_or(|(path, _)| path != parent) {
            let folder = walk(&root, folders).map_err(|(prefix, kind, source)| match kind {
                Some(Kind::Symlink) => bad(format!(
                    "passes through the symlink {} made by an earlier entry; \
                     unpacking never follows links",
                    prefix.display()
                )),
                Some(Kind::File | Kind::Other) => bad(format!(
                    "passes through {}, which is not a folder",
                    prefix.display()
                )),
                Some(Kind::Folder) | None => ArchiveError::Write {
                    path: dest.join(&prefix),
                    source,
                },
            })?;
            last_folder = Some((parent.to_owned(), folder));
        }
        let folder = last_folder.as_ref().map_or(&root, |(_, folder)| folder);
        let target = dest.join(&rel);
        let taken = |source: std::io::Error| match in_the_way(&source).then(|| folder.kind(name)) {
            Some(Ok(Kind::Symlink)) => bad("is already a symlink (an earlier entry); \
                                      unpacking never writes through links"
                .into()),
            Some(Ok(Kind::Folder)) => bad("is already a folder (an earlier entry)".into()),
            Some(Ok(Kind::File | Kind::Other)) => {
                bad("is already a file (an earlier entry)".into())
            }
            _ => ArchiveError::Write {
                path: target.clone(),
                source,
            },
        };
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            folder.folder(name).map_err(taken)?;
        } else if kind.is_file() {
            let executable = entry.header().mode().unwrap_or(0o644) & 0o111 != 0;
            let mut file = folder.create_file(name).map_err(taken)?;
            let write_err = |source| ArchiveError::Write {
                path: target.clone(),
                source,
            };
            let budget = MAX_UNPACKED_BYTES - total;
            let written =
                std::io::copy(&mut (&mut entry).take(budget + 1), &mut file).map_err(write_err)?;
            total += written;
            if total > MAX_UNPACKED_BYTES {
                return Err(ArchiveError::TooLarge);
            }
            let mode = if executable { 0o555 } else { 0o444 };
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(write_err)?;
        } else if kind.is_symlink() {
            let link = entry
                .link_name()
                .map_err(ArchiveError::Corrupt)?
                .filter(|link| !link.as_os_str().is_empty())
                .ok_or_else(|| bad("symlink without a target".into()))?;
            let resolved = parent.join(&link);
            if link.has_root() || safe_relative(&resolved).is_none() {
                return Err(bad("symlink points outside the archive".into()));
            }
            folder.symlink(&link, name).map_err(taken)?;
            links.push(rel);
        } else {
            return Err(bad(
                "only files, folders and symlinks inside the archive are allowed".into(),
            ));
        }
    }
    for link in &links {
        if let Err(reason) = link_stays_inside(dest, link) {
            return Err(ArchiveError::BadEntry {
                entry: link.display().to_string(),
                reason: reason.into(),
            });
        }
    }
    Ok(())
}

/// Open the folders `names` below `root` one at a time, making missing ones. On failure:
/// the path up to the name that failed, what that name is, and the error.
fn walk(root: &DirFd, names: &[&OsStr]) -> Result<DirFd, (PathBuf, Option<Kind>, std::io::Error)> {
    let mut here = root.try_clone().map_err(|e| (PathBuf::new(), None, e))?;
    for (at, name) in names.iter().enumerate() {
        here = match here.folder(name) {
            Ok(next) => next,
            Err(e) => {
                let prefix = names[..=at].iter().collect();
                let kind = in_the_way(&e).then(|| here.kind(name).ok()).flatten();
                return Err((prefix, kind, e));
            }
        };
    }
    Ok(here)
}

/// Whether `error` says something already at a name is in the way (a link, a file, a
/// folder), rather than that the disk or the kernel failed.
fn in_the_way(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EEXIST | libc::ELOOP | libc::ENOTDIR)
    )
}

/// Whether the symlink at `link` (relative to `root`) leads inside `root` when followed
/// the way the kernel will follow it at run time: through any other links on the way,
/// each resolved from where it sits, `..` taken from where a link led rather than from
/// how its path reads. Checked once the whole archive is unpacked, since a later entry
/// can change where an earlier link leads. A name that does not exist ends the kernel's
/// walk; here it is passed over as a plain name, which can only accept more, never let a
/// link out.
fn link_stays_inside(root: &Path, link: &Path) -> Result<(), &'static str> {
    // The kernel's own bound on links followed in one lookup (MAXSYMLINKS).
    const MAX_LINKS_FOLLOWED: usize = 40;
    // Names looked at, expansions included: a real link takes a handful, and with up to
    // MAX_ENTRIES links a hostile archive must not make this the slow part of a deploy.
    const MAX_STEPS: usize = 256;
    let mut at = PathBuf::new();
    let mut pending: Vec<OsString> = link.iter().rev().map(OsStr::to_owned).collect();
    let mut followed = 0;
    let mut steps = 0;
    while let Some(name) = pending.pop() {
        steps += 1;
        if steps > MAX_STEPS {
            return Err("symlink takes more than 256 steps to resolve");
        }
        if name == "." {
            continue;
        }
        if name == ".." {
            if !at.pop() {
                return Err("symlink leads outside the archive through other symlinks");
            }
            continue;
        }
        let here = root.join(&at).join(&name);
        let is_link = std::fs::symlink_metadata(&here).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link {
            at.push(&name);
            continue;
        }
        followed += 1;
        if followed > MAX_LINKS_FOLLOWED {
            return Err("symlink leads through more than 40 symlinks");
        }
        let target =
            std::fs::read_link(&here).map_err(|_| "symlink cannot be read back after unpacking")?;
        if target.has_root() {
            return Err("symlink points outside the archive");
        }
        pending.extend(target.iter().rev().map(OsStr::to_owned));
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

#[cfg(test)]
mod tests;
