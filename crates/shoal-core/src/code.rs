//! Unpacked code directories, `code/<blob digest>/` in the data directory: staged once per
//! deploy and renamed into place, and checked against the digest of their file tree
//! (kept in the store) before they are reused, so a directory changed on disk after its
//! deploy is unpacked afresh from the stored blob instead of being run.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{archive, datadir, Error, Result};

/// A directory under `tmp/` that removes itself unless it was moved into place.
pub(crate) struct Staging {
    path: PathBuf,
    kept: bool,
}

impl Staging {
    pub(crate) fn new(data_dir: &Path) -> Result<Staging> {
        let tmp = data_dir.join("tmp");
        datadir::private_folder(&tmp)
            .map_err(|source| Error::io("creating the staging folder", &tmp, source))?;
        let path = tmp.join(uuid::Uuid::new_v4().to_string());
        let create = || {
            std::fs::create_dir(&path)?;
            // The top of a code directory: readable by the uids instances will run under,
            // whatever the umask; the private `code/` above keeps everyone else out.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        };
        create().map_err(|source| Error::io("creating a staging directory", &path, source))?;
        Ok(Staging { path, kept: false })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Unpack `bytes` here (checked: see [`archive::unpack`]).
    pub(crate) fn unpack(&self, bytes: &[u8]) -> Result<()> {
        Ok(archive::unpack(bytes, &self.path)?)
    }

    /// Rename into `dest`, replacing whatever is there.
    fn install(mut self, dest: &Path) -> Result<()> {
        let parent = dest.parent().expect("code/<digest> has a parent");
        datadir::private_folder(parent)
            .map_err(|source| Error::io("creating the code folder", parent, source))?;
        if dest.exists() {
            remove_tree(dest)?;
        }
        std::fs::rename(&self.path, dest)
            .map_err(|source| Error::io("moving code into place at", dest, source))?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.kept {
            let _ = datadir::remove_tree(&self.path);
        }
    }
}

/// Where the code of blob `digest` lives once unpacked.
pub(crate) fn dir_for(data_dir: &Path, digest: &str) -> PathBuf {
    data_dir.join("code").join(digest)
}

/// Put freshly unpacked `staged` code in place as `code/<digest>/` and record its tree
/// digest, unless an intact copy is already there (the same code deployed again).
pub(crate) fn install(
    store: &shoal_store::Store,
    data_dir: &Path,
    digest: &str,
    staged: Staging,
) -> Result<PathBuf> {
    let dest = dir_for(data_dir, digest);
    let tree = tree_digest(staged.path())?;
    if dest.is_dir() && tree_digest(&dest).ok().as_deref() == Some(tree.as_str()) {
        store.set_tree_digest(digest, &tree)?;
        return Ok(dest);
    }
    if dest.exists() {
        tracing::warn!(code = %dest.display(), "code directory differs from its deploy; replacing it");
    }
    staged.install(&dest)?;
    store.set_tree_digest(digest, &tree)?;
    Ok(dest)
}

/// The code directory of blob `digest`, checked against its recorded tree digest; a
/// missing, tampered or unrecorded directory is unpacked again from the stored blob.
pub(crate) fn checked_dir(
    store: &shoal_store::Store,
    data_dir: &Path,
    digest: &str,
) -> Result<PathBuf> {
    let dest = dir_for(data_dir, digest);
    if dest.is_dir() {
        if let Some(expected) = store.tree_digest(digest)? {
            if tree_digest(&dest).ok().as_deref() == Some(expected.as_str()) {
                return Ok(dest);
            }
            tracing::warn!(code = %dest.display(), "code directory was changed after its deploy; unpacking it again");
        }
    }
    let bytes = store.get_blob(digest)?.ok_or_else(|| {
        Error::Store(shoal_store::Error::UnknownBlob {
            digest: digest.to_owned(),
        })
    })?;
    let staged = Staging::new(data_dir)?;
    staged.unpack(&bytes)?;
    install(store, data_dir, digest, staged)
}

/// SHA-256 over a directory tree: every entry's relative path, kind, executable bit and
/// contents (or link target), in sorted order. Lowercase hex.
pub(crate) fn tree_digest(root: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    hash_dir(root, Path::new(""), &mut hasher)
        .map_err(|source| Error::io("reading code directory", root, source))?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn hash_dir(root: &Path, rel: &Path, hasher: &mut Sha256) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel_path = rel.join(entry.file_name());
        let meta = std::fs::symlink_metadata(entry.path())?;
        hasher.update(rel_path.as_os_str().as_encoded_bytes());
        hasher.update([0]);
        if meta.is_dir() {
            hasher.update(b"d");
            hash_dir(root, &rel_path, hasher)?;
        } else if meta.file_type().is_symlink() {
            hasher.update(b"l");
            hasher.update(
                std::fs::read_link(entry.path())?
                    .as_os_str()
                    .as_encoded_bytes(),
            );
        } else {
            let executable = meta.permissions().mode() & 0o111 != 0;
            hasher.update(if executable { b"x" } else { b"f" });
            hasher.update(meta.len().to_le_bytes());
            let mut file = std::fs::File::open(entry.path())?;
            let mut buf = [0u8; 64 * 1024];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
        }
        hasher.update([0]);
    }
    Ok(())
}

/// Remove a code directory whose files were made read-only at unpack.
fn remove_tree(path: &Path) -> Result<()> {
    datadir::remove_tree(path)
        .map_err(|source| Error::io("removing a stale code directory", path, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shoal-code-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_changed_file_changes_the_tree_digest() {
        let dir = scratch("digest");
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        std::fs::write(dir.join("index.js"), "a").unwrap();
        std::fs::write(dir.join("lib/x.js"), "b").unwrap();
        let before = tree_digest(&dir).unwrap();
        assert_eq!(before, tree_digest(&dir).unwrap(), "stable");
        std::fs::write(dir.join("lib/x.js"), "c").unwrap();
        let edited = tree_digest(&dir).unwrap();
        assert_ne!(before, edited);
        std::fs::write(dir.join("lib/y.js"), "").unwrap();
        assert_ne!(
            edited,
            tree_digest(&dir).unwrap(),
            "an added empty file counts"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_tampered_directory_is_unpacked_again() {
        let data = scratch("tamper");
        let src = scratch("tamper-src");
        std::fs::write(src.join("index.js"), "exports.handler = () => 1").unwrap();
        let blob = archive::pack_dir(&src).unwrap();
        let store = shoal_store::Store::open_in_memory().unwrap();
        let digest = store.put_blob(&blob).unwrap();
        let staged = Staging::new(&data).unwrap();
        staged.unpack(&blob).unwrap();
        let dir = install(&store, &data, &digest, staged).unwrap();
        assert_eq!(checked_dir(&store, &data, &digest).unwrap(), dir);

        let file = dir.join("index.js");
        std::fs::remove_file(&file).unwrap();
        std::fs::write(&file, "exports.handler = () => 'evil'").unwrap();
        let dir = checked_dir(&store, &data, &digest).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("index.js")).unwrap(),
            "exports.handler = () => 1"
        );
        assert!(
            std::fs::read_dir(data.join("tmp"))
                .unwrap()
                .next()
                .is_none(),
            "staging cleaned up"
        );
        let _ = std::fs::remove_dir_all(&data);
        let _ = std::fs::remove_dir_all(&src);
    }
}
