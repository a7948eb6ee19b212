//! Access keys for SigV4 on the AWS-shaped APIs. A key is a name and a public key id in
//! the store; its secret is never stored: it is HMAC-SHA256(master key, key id), the master
//! key being 256 random bits in `<data-dir>/keys-master` (0600, beside the admin token). A
//! copy of the store, a backup or a leaked `shoal.db` therefore signs nothing; removing a
//! key's row revokes it, and a new key gets a new id and so a new secret. Whoever reads
//! the master key file can derive every secret, as whoever reads `admin-token` is admin.

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use shoal_api::keys::{CreatedKey, KeyInfo};

use crate::datadir::PRIVATE_FILE;
use crate::{Error, Platform, Result};

/// The master key's file in the data directory.
const MASTER_FILE: &str = "keys-master";
/// Prefix of every key id Shoal issues (AWS's long-term keys start `AKIA`).
const KEY_ID_PREFIX: &str = "AKSH";

/// The master key: read from the data directory, or made there (0600 before it is
/// written). Must exist before any key is issued, and stay: a new one voids every key.
pub(crate) fn master_key(data_dir: &Path) -> Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = data_dir.join(MASTER_FILE);
    let io = |source| Error::io("preparing the access-key master key", &path, source);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let text = text.trim();
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(PRIVATE_FILE))
                .map_err(io)?;
            return Ok(text.as_bytes().to_vec());
        }
    }
    let key = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE)
        .open(&path)
        .map_err(io)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(PRIVATE_FILE)).map_err(io)?;
    file.write_all(key.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(key.into_bytes())
}

/// The secret of key `access_key_id` under `master`.
fn derive_secret(master: &[u8], access_key_id: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(master).expect("HMAC takes any key length");
    mac.update(b"shoal access key secret\0");
    mac.update(access_key_id.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Names as `shoal keys create` takes them: 1–64 of `[A-Za-z0-9_.-]`.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl Platform {
    /// Issue a key named `name`: its id and secret (the secret is shown only now).
    pub fn create_key(&self, name: &str) -> Result<CreatedKey> {
        if !valid_name(name) {
            return Err(Error::InvalidKeyName(name.to_owned()));
        }
        let hex = uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .to_ascii_uppercase();
        let access_key_id = format!("{KEY_ID_PREFIX}{}", &hex[..16]);
        if !self.store.create_access_key(name, &access_key_id)? {
            return Err(Error::KeyExists(name.to_owned()));
        }
        Ok(CreatedKey {
            name: name.to_owned(),
            secret_access_key: derive_secret(&self.key_master, &access_key_id),
            access_key_id,
        })
    }

    /// Every key, without secrets.
    pub fn keys(&self) -> Result<Vec<KeyInfo>> {
        Ok(self
            .store
            .access_keys()?
            .into_iter()
            .map(|k| KeyInfo {
                name: k.name,
                access_key_id: k.access_key_id,
                created_at_ms: k.created_at_ms,
            })
            .collect())
    }

    /// Revoke the key named `name`: signatures made with it fail from now on.
    pub fn remove_key(&self, name: &str) -> Result<()> {
        if self.store.delete_access_key(name)? {
            Ok(())
        } else {
            Err(Error::KeyNotFound(name.to_owned()))
        }
    }

    /// The secret of a live key, for checking a signature; `None` for an unknown id.
    pub fn key_secret(&self, access_key_id: &str) -> Result<Option<String>> {
        Ok(self
            .store
            .access_key(access_key_id)?
            .map(|k| derive_secret(&self.key_master, &k.access_key_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_depend_on_master_and_id_and_the_master_persists() {
        let a = derive_secret(b"master-one", "AKSH1");
        assert_eq!(a, derive_secret(b"master-one", "AKSH1"));
        assert_ne!(a, derive_secret(b"master-two", "AKSH1"));
        assert_ne!(a, derive_secret(b"master-one", "AKSH2"));
        assert_eq!(a.len(), 64);

        let dir = std::env::temp_dir().join(format!("shoal-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let first = master_key(&dir).unwrap();
        assert_eq!(master_key(&dir).unwrap(), first, "kept across starts");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(MASTER_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn key_names_are_short_and_plain() {
        assert!(valid_name("ci-deploy.2"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
