//! The data directory's layout and who may read it. It holds every function's code and
//! environment secrets, so it and every folder Shoal keeps in it are 0700, and the files
//! with secrets in them 0600: the store's own files (set by the store), the admin token
//! (by the server), function logs (by [`crate::logs`]). Modes are set at creation and put
//! right at every start, since an older daemon or an operator may have left them wider
//! and a umask alone cannot be relied on.
//!
//! Code unpacked under `code/<digest>/` keeps its own modes (0755 folders, 0444/0555
//! files): instances will run under other uids and reach their code through an open
//! directory, while the private `code/` above it keeps everyone else from reaching it by
//! path. Also here: clearing what interrupted deploys left in `tmp/`, and removing trees
//! whose folders may not be writable.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use crate::{Error, Result};

/// Folders private to the daemon.
pub(crate) const PRIVATE_FOLDER: u32 = 0o700;
/// Files private to the daemon.
pub(crate) const PRIVATE_FILE: u32 = 0o600;

/// The folders Shoal keeps in the data directory: unpacked code, function logs, staging
/// for deploys, instance scratch directories (with their sockets), built-in bootstraps.
const FOLDERS: [&str; 5] = ["code", "logs", "tmp", "instances", "runtimes"];

/// Make the data directory and its folders (or put their modes right), and clear `tmp/`.
pub(crate) fn prepare(data_dir: &Path) -> Result<()> {
    if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|source| Error::io("creating the data directory's parent", parent, source))?;
    }
    private_folder(data_dir)
        .map_err(|source| Error::io("preparing the data directory", data_dir, source))?;
    for name in FOLDERS {
        let folder = data_dir.join(name);
        private_folder(&folder).map_err(|source| {
            Error::io("preparing the data directory's folder", &folder, source)
        })?;
    }
    clear_staging(&data_dir.join("tmp"))
}

/// Make `path` a folder only its owner can enter (0700, whatever the umask), or make an
/// existing one so.
pub(crate) fn private_folder(path: &Path) -> std::io::Result<()> {
    match std::fs::DirBuilder::new().mode(PRIVATE_FOLDER).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    if !std::fs::metadata(path)?.is_dir() {
        return Err(std::io::ErrorKind::NotADirectory.into());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(PRIVATE_FOLDER))
}

/// Make an existing file private (0600); a missing one is fine.
pub(crate) fn private_file(path: &Path) -> std::io::Result<()> {
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(PRIVATE_FILE)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Remove whatever an interrupted deploy (a killed daemon) left in `tmp/`: a staging
/// directory lives only as long as its deploy, and none runs yet.
fn clear_staging(tmp: &Path) -> Result<()> {
    let entries = std::fs::read_dir(tmp)
        .map_err(|source| Error::io("reading the staging folder", tmp, source))?;
    let mut cleared = 0usize;
    for entry in entries {
        let path = entry
            .map_err(|source| Error::io("reading the staging folder", tmp, source))?
            .path();
        remove_tree(&path)
            .map_err(|source| Error::io("clearing a left-over staging directory", &path, source))?;
        cleared += 1;
    }
    if cleared > 0 {
        tracing::info!(
            cleared,
            "cleared left-overs of interrupted deploys from tmp/"
        );
    }
    Ok(())
}

/// Remove a file, a symlink (never what it points to) or a whole tree. Unpacked files are
/// read-only, which does not matter (removing an entry takes write permission on its
/// folder only), but a folder might not be writable, so each is made so before it is
/// emptied: a daemon that is not root could not empty it otherwise.
pub(crate) fn remove_tree(path: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return std::fs::remove_file(path);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(PRIVATE_FOLDER))?;
    for entry in std::fs::read_dir(path)? {
        remove_tree(&entry?.path())?;
    }
    std::fs::remove_dir(path)
}

/// How many unpacked code directories `code/` holds.
pub(crate) fn code_dirs(data_dir: &Path) -> Result<usize> {
    let code = data_dir.join("code");
    let read_err = |source| Error::io("reading the code folder", &code, source);
    let mut count = 0;
    for entry in std::fs::read_dir(&code).map_err(read_err)? {
        if entry
            .map_err(read_err)?
            .file_type()
            .map_err(read_err)?
            .is_dir()
        {
            count += 1;
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("shoal-datadir-{name}-{}", std::process::id()));
        let _ = remove_tree(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn prepare_makes_folders_private_and_clears_staging_without_following_links() {
        let around = scratch("prepare");
        let data = around.join("data");
        std::fs::create_dir_all(data.join("code")).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(data.join("code"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        // What a killed deploy leaves: a read-only tree, here with a read-only folder and a
        // link leading out, whose target must survive.
        let outside = around.join("keep.txt");
        std::fs::write(&outside, "keep").unwrap();
        let left = data.join("tmp/0b1e/lib");
        std::fs::create_dir_all(&left).unwrap();
        std::fs::write(left.join("a.js"), "x").unwrap();
        std::fs::set_permissions(left.join("a.js"), std::fs::Permissions::from_mode(0o444))
            .unwrap();
        std::os::unix::fs::symlink(&outside, left.join("out")).unwrap();
        std::os::unix::fs::symlink(&around, data.join("tmp/dir-link")).unwrap();
        std::fs::set_permissions(&left, std::fs::Permissions::from_mode(0o555)).unwrap();

        prepare(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        for name in FOLDERS {
            assert_eq!(mode(&data.join(name)), 0o700, "{name}");
        }
        assert_eq!(std::fs::read_dir(data.join("tmp")).unwrap().count(), 0);
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        assert!(
            around.join("data").is_dir(),
            "a linked folder is not emptied"
        );
        let _ = remove_tree(&around);
    }
}
