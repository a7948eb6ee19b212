//! Shoal's durable state in one embedded SQLite database: functions, their immutable
//! versions, content-addressed code blobs and the concurrency limits learned per version,
//! plus the schema migrations that keep the file readable across upgrades.
//!
//! This crate must not know about HTTP or processes: callers hand it specs and bytes and
//! get records back. Every method is a short, blocking call on one connection behind a
//! mutex, cheap enough to make from async code without a blocking pool.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]
#![forbid(unsafe_code)]

mod aliases;
mod keys;
mod migrations;

pub use aliases::AliasRecord;
pub use keys::AccessKeyRecord;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shoal_manifest::FunctionSpec;

/// How long a statement waits for another connection's lock before failing with `BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening database {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("making {} readable by its owner only", path.display())]
    Private {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("migrating the database schema to version {version}")]
    Migrate {
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "database schema version {found} is newer than this shoal supports ({supported}); \
         upgrade shoal or point it at another data directory"
    )]
    SchemaTooNew { found: i64, supported: usize },
    #[error("code blob {digest} is not in the store; upload the code before creating a version")]
    UnknownBlob { digest: String },
    #[error("function {function} has no version {version}")]
    UnknownVersion { function: String, version: u32 },
    #[error("encoding the spec of function {function}")]
    EncodeSpec {
        function: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("stored spec of function {function} version {version} is unreadable")]
    DecodeSpec {
        function: String,
        version: u32,
        #[source]
        source: serde_json::Error,
    },
    #[error("database operation failed")]
    Sqlite(#[from] rusqlite::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One immutable version of a function: the spec it was deployed with and its code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub function: String,
    /// Counts up from 1 per function; restarts at 1 if the function is deleted.
    pub version: u32,
    pub spec: FunctionSpec,
    /// Lowercase hex SHA-256 of the code blob.
    pub code_digest: String,
    pub created_at_ms: i64,
}

/// The SQLite-backed store. `Send + Sync`; share it behind an `Arc`.
pub struct Store {
    /// One connection serialises all access, which is what SQLite does for writers anyway
    /// and keeps every multi-statement change inside a single transaction.
    conn: Mutex<Connection>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// Qualified, so queries joining `functions` (which has its own `created_at_ms`) can use it.
const VERSION_COLUMNS: &str = "versions.function, versions.version, versions.spec, \
                               versions.code_digest, versions.created_at_ms";

impl Store {
    /// Opens (creating if missing) the database at `path` and brings its schema up to date.
    ///
    /// The database and its `-wal` and `-shm` files hold every function's environment,
    /// secrets included, so they are made readable by their owner only (0600): the file is
    /// created that way before SQLite sees it (SQLite gives its side files the main file's
    /// mode), and files an older version left wider are narrowed.
    pub fn open(path: &Path) -> Result<Store> {
        let file_err = |source| Error::Private {
            path: path.to_owned(),
            source,
        };
        create_private(path).map_err(file_err)?;
        for side in [
            path.to_owned(),
            side_file(path, "-wal"),
            side_file(path, "-shm"),
        ] {
            make_private(&side).map_err(|source| Error::Private { path: side, source })?;
        }
        let open_err = |source| Error::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        Self::init(conn, true).map_err(|err| match err {
            Error::Sqlite(source) => open_err(source),
            other => other,
        })
    }

    /// Opens a fresh, private in-memory database (for tests and throwaway runs).
    pub fn open_in_memory() -> Result<Store> {
        Self::init(Connection::open_in_memory()?, false)
    }

    fn init(mut conn: Connection, wal: bool) -> Result<Store> {
        // First, so that every later statement (the WAL switch included) waits out another
        // process's lock instead of failing at once.
        conn.busy_timeout(BUSY_TIMEOUT)?;
        if wal {
            // WAL lets readers (e.g. `shoal status` from another process) proceed while the
            // daemon writes. The pragma answers with the mode it chose, hence `_and_check`.
            let _mode: String =
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        }
        conn.pragma_update(None, "foreign_keys", true)?;
        migrations::migrate(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    /// Whether the database at `path` is blank: missing, empty, or without a schema yet.
    /// Creates and changes nothing, so it can be asked before deciding to open. A store
    /// that was ever opened is never blank again, even with every function deleted, so a
    /// blank one beside unpacked code means the database was truncated, deleted or
    /// swapped for a new file.
    pub fn is_blank(path: &Path) -> Result<bool> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
            Ok(meta) if meta.len() == 0 => return Ok(true),
            _ => {}
        }
        let open_err = |source| Error::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(open_err)?;
        Ok(version == 0)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-applied change behind: an
        // unfinished rusqlite transaction rolls back when dropped. So the connection is
        // still sound and poisoning carries no information.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `bytes` under their SHA-256 digest (lowercase hex), which is returned.
    /// Storing the same bytes again is a no-op.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<String> {
        let digest = sha256_hex(bytes);
        self.conn().execute(
            "INSERT OR IGNORE INTO blobs (digest, bytes) VALUES (?1, ?2)",
            params![digest, bytes],
        )?;
        Ok(digest)
    }

    pub fn get_blob(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        let bytes = self
            .conn()
            .query_row(
                "SELECT bytes FROM blobs WHERE digest = ?1",
                [digest],
                |row| row.get(0),
            )
            .optional()?;
        Ok(bytes)
    }

    /// Remembers the digest of `digest`'s unpacked file tree (see the core's code
    /// directories), so a directory on disk can be checked before it is reused.
    pub fn set_tree_digest(&self, digest: &str, tree_digest: &str) -> Result<()> {
        let changed = self.conn().execute(
            "UPDATE blobs SET tree_digest = ?2 WHERE digest = ?1",
            params![digest, tree_digest],
        )?;
        if changed == 0 {
            return Err(Error::UnknownBlob {
                digest: digest.to_owned(),
            });
        }
        Ok(())
    }

    /// The digest recorded by [`Store::set_tree_digest`], if any.
    pub fn tree_digest(&self, digest: &str) -> Result<Option<String>> {
        let tree = self
            .conn()
            .query_row(
                "SELECT tree_digest FROM blobs WHERE digest = ?1",
                [digest],
                |row| row.get::<_, Option<String>>(0),
            )
            .optional()?;
        Ok(tree.flatten())
    }

    /// Records a new version of `spec.name` running the code in blob `code_digest` and makes
    /// it the function's current version, creating the function if needed.
    pub fn create_version(&self, spec: &FunctionSpec, code_digest: &str) -> Result<VersionRecord> {
        let function = spec.name.clone();
        let spec_json = serde_json::to_string(spec).map_err(|source| Error::EncodeSpec {
            function: function.clone(),
            source,
        })?;
        let now = now_ms();

        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let blob_known = tx
            .query_row(
                "SELECT 1 FROM blobs WHERE digest = ?1",
                [code_digest],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !blob_known {
            return Err(Error::UnknownBlob {
                digest: code_digest.to_owned(),
            });
        }
        let version: u32 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE function = ?1",
            [&function],
            |row| row.get(0),
        )?;
        // The function row must exist before its versions (foreign key); current_version
        // is set to the final value straight away since both land in this transaction.
        tx.execute(
            "INSERT INTO functions (name, current_version, created_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET current_version = excluded.current_version",
            params![function, version, now],
        )?;
        tx.execute(
            "INSERT INTO versions (function, version, spec, code_digest, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![function, version, spec_json, code_digest, now],
        )?;
        tx.commit()?;

        Ok(VersionRecord {
            function,
            version,
            spec: spec.clone(),
            code_digest: code_digest.to_owned(),
            created_at_ms: now,
        })
    }

    /// Records a version whose number was chosen elsewhere (a cluster's registry) and
    /// makes it current if it is newer than the function's current version. Installing
    /// the same record again changes nothing. Returns whether it is now current.
    pub fn install_version(&self, record: &VersionRecord) -> Result<bool> {
        let spec_json =
            serde_json::to_string(&record.spec).map_err(|source| Error::EncodeSpec {
                function: record.function.clone(),
                source,
            })?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let blob_known = tx
            .query_row(
                "SELECT 1 FROM blobs WHERE digest = ?1",
                [&record.code_digest],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !blob_known {
            return Err(Error::UnknownBlob {
                digest: record.code_digest.clone(),
            });
        }
        tx.execute(
            "INSERT INTO functions (name, current_version, created_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET current_version = excluded.current_version
             WHERE excluded.current_version > functions.current_version",
            params![record.function, record.version, record.created_at_ms],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO versions (function, version, spec, code_digest, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                record.function,
                record.version,
                spec_json,
                record.code_digest,
                record.created_at_ms
            ],
        )?;
        let current: u32 = tx.query_row(
            "SELECT current_version FROM functions WHERE name = ?1",
            [&record.function],
            |row| row.get(0),
        )?;
        tx.commit()?;
        Ok(current == record.version)
    }

    /// The version a function currently serves, or `None` if the function is unknown.
    pub fn current(&self, name: &str) -> Result<Option<VersionRecord>> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM versions
             JOIN functions ON functions.name = versions.function
                           AND functions.current_version = versions.version
             WHERE functions.name = ?1"
        );
        let raw = self
            .conn()
            .query_row(&sql, [name], RawVersion::from_row)
            .optional()?;
        raw.map(RawVersion::decode).transpose()
    }

    /// A specific version of a function, current or not.
    pub fn version(&self, name: &str, version: u32) -> Result<Option<VersionRecord>> {
        let sql =
            format!("SELECT {VERSION_COLUMNS} FROM versions WHERE function = ?1 AND version = ?2");
        let raw = self
            .conn()
            .query_row(&sql, params![name, version], RawVersion::from_row)
            .optional()?;
        raw.map(RawVersion::decode).transpose()
    }

    /// Every version of a function still in the store, oldest first.
    pub fn versions(&self, name: &str) -> Result<Vec<VersionRecord>> {
        let sql =
            format!("SELECT {VERSION_COLUMNS} FROM versions WHERE function = ?1 ORDER BY version");
        let raws = {
            let conn = self.conn();
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(params![name], RawVersion::from_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        raws.into_iter().map(RawVersion::decode).collect()
    }

    /// The current version of every function, sorted by function name.
    pub fn list_current(&self) -> Result<Vec<VersionRecord>> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM versions
             JOIN functions ON functions.name = versions.function
                           AND functions.current_version = versions.version
             ORDER BY functions.name"
        );
        let raws = {
            let conn = self.conn();
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map([], RawVersion::from_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        raws.into_iter().map(RawVersion::decode).collect()
    }

    /// Removes a function with all its versions and learned limits, and the code blobs no
    /// other function still uses. Returns `false` if there was no such function.
    pub fn delete_function(&self, name: &str) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        // Only this function's blobs are candidates: a blob nobody references yet may
        // have just been uploaded for a deploy that has not created its version.
        let digests = {
            let mut stmt =
                tx.prepare("SELECT DISTINCT code_digest FROM versions WHERE function = ?1")?;
            let rows = stmt.query_map([name], |row| row.get::<_, String>(0))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        // Versions and learned limits go with the function row (ON DELETE CASCADE).
        let deleted = tx.execute("DELETE FROM functions WHERE name = ?1", [name])? > 0;
        for digest in &digests {
            tx.execute(
                "DELETE FROM blobs WHERE digest = ?1
                   AND NOT EXISTS (SELECT 1 FROM versions WHERE code_digest = ?1)",
                [digest],
            )?;
        }
        tx.commit()?;
        Ok(deleted)
    }

    /// Remembers the concurrency limit learned for one version, replacing any earlier one.
    pub fn set_learned_limit(&self, name: &str, version: u32, limit: u32) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let exists = tx
            .query_row(
                "SELECT 1 FROM versions WHERE function = ?1 AND version = ?2",
                params![name, version],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !exists {
            return Err(Error::UnknownVersion {
                function: name.to_owned(),
                version,
            });
        }
        tx.execute(
            "INSERT INTO learned_limits (function, version, concurrency, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (function, version) DO UPDATE
             SET concurrency = excluded.concurrency, updated_at_ms = excluded.updated_at_ms",
            params![name, version, limit, now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn learned_limit(&self, name: &str, version: u32) -> Result<Option<u32>> {
        let limit = self
            .conn()
            .query_row(
                "SELECT concurrency FROM learned_limits WHERE function = ?1 AND version = ?2",
                params![name, version],
                |row| row.get(0),
            )
            .optional()?;
        Ok(limit)
    }
}

/// A `versions` row before its spec JSON is decoded, so decoding errors can be reported
/// as ours rather than squeezed into a `rusqlite::Error` inside the row closure.
struct RawVersion {
    function: String,
    version: u32,
    spec: String,
    code_digest: String,
    created_at_ms: i64,
}

impl RawVersion {
    /// Reads the columns listed in `VERSION_COLUMNS`, in that order.
    fn from_row(row: &Row<'_>) -> rusqlite::Result<RawVersion> {
        Ok(RawVersion {
            function: row.get(0)?,
            version: row.get(1)?,
            spec: row.get(2)?,
            code_digest: row.get(3)?,
            created_at_ms: row.get(4)?,
        })
    }

    fn decode(self) -> Result<VersionRecord> {
        let spec = serde_json::from_str(&self.spec).map_err(|source| Error::DecodeSpec {
            function: self.function.clone(),
            version: self.version,
            source,
        })?;
        Ok(VersionRecord {
            function: self.function,
            version: self.version,
            spec,
            code_digest: self.code_digest,
            created_at_ms: self.created_at_ms,
        })
    }
}

/// `path` with `suffix` appended to its file name: SQLite's `-wal` and `-shm` files.
fn side_file(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Create `path` as an empty 0600 file if it does not exist yet.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other.map(drop),
    }
}

/// Narrow an existing file to 0600; a missing one is fine.
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(digest.len() * 2);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

fn now_ms() -> i64 {
    // A clock before 1970 is a misconfigured machine; 0 keeps the record usable.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_lowercase_sha256_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn file_database_uses_wal_and_enforces_foreign_keys() {
        let dir = std::env::temp_dir().join(format!(
            "shoal-store-pragmas-{}-{}",
            std::process::id(),
            now_ms()
        ));
        std::fs::create_dir(&dir).unwrap();
        let store = Store::open(&dir.join("shoal.db")).unwrap();
        let (mode, foreign_keys): (String, i64) = {
            let conn = store.conn();
            let mode = conn
                .pragma_query_value(None, "journal_mode", |row| row.get(0))
                .unwrap();
            let fk = conn
                .pragma_query_value(None, "foreign_keys", |row| row.get(0))
                .unwrap();
            (mode, fk)
        };
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(foreign_keys, 1);
    }

    #[test]
    fn same_bytes_are_stored_once() {
        let store = Store::open_in_memory().unwrap();
        let first = store.put_blob(b"same code").unwrap();
        let second = store.put_blob(b"same code").unwrap();
        assert_eq!(first, second);
        let rows: i64 = store
            .conn()
            .query_row("SELECT COUNT(*) FROM blobs", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 1);
    }
}
