//! Black-box tests of the store through its public API, in memory and on disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use shoal_manifest::{FunctionSpec, Runtime};
use shoal_store::{Error, Store, VersionRecord};

fn spec(name: &str, handler: &str) -> FunctionSpec {
    FunctionSpec::new_default(name, Runtime::Nodejs, handler)
}

/// A directory under the system temp dir, unique per test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!(
            "shoal-store-{label}-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn versions_count_up_per_function_and_current_follows() {
    let store = Store::open_in_memory().unwrap();
    let code = store.put_blob(b"exports.handler = async () => 1").unwrap();

    for expected in 1..=3 {
        let handler = format!("v{expected}.handler");
        let record = store
            .create_version(&spec("alpha", &handler), &code)
            .unwrap();
        assert_eq!(record.function, "alpha");
        assert_eq!(record.version, expected);
        assert_eq!(record.spec.name, "alpha");
        assert_eq!(record.code_digest, code);
        assert_eq!(store.current("alpha").unwrap(), Some(record));
    }

    // Another function has its own sequence.
    let beta = store
        .create_version(&spec("beta", "index.handler"), &code)
        .unwrap();
    assert_eq!(beta.version, 1);
    assert_eq!(store.current("alpha").unwrap().unwrap().version, 3);

    // Old versions stay readable, unchanged.
    let first = store.version("alpha", 1).unwrap().unwrap();
    assert_eq!(first.spec, spec("alpha", "v1.handler"));
    assert_eq!(
        store.version("alpha", 2).unwrap().unwrap().spec,
        spec("alpha", "v2.handler")
    );
    assert_eq!(store.version("alpha", 4).unwrap(), None);
    assert_eq!(store.version("gamma", 1).unwrap(), None);
    assert_eq!(store.current("gamma").unwrap(), None);
}

#[test]
fn list_current_is_sorted_by_name() {
    let store = Store::open_in_memory().unwrap();
    let code = store.put_blob(b"code").unwrap();
    for name in ["zeta", "alpha", "mid"] {
        store
            .create_version(&spec(name, "index.handler"), &code)
            .unwrap();
    }
    store
        .create_version(&spec("mid", "new.handler"), &code)
        .unwrap();

    let listed = store.list_current().unwrap();
    let summary: Vec<(&str, u32)> = listed
        .iter()
        .map(|r| (r.function.as_str(), r.version))
        .collect();
    assert_eq!(summary, [("alpha", 1), ("mid", 2), ("zeta", 1)]);
    assert_eq!(listed[1].spec, spec("mid", "new.handler"));
}

#[test]
fn blobs_are_content_addressed() {
    let store = Store::open_in_memory().unwrap();
    let a = store.put_blob(b"one").unwrap();
    let again = store.put_blob(b"one").unwrap();
    let b = store.put_blob(b"two").unwrap();
    assert_eq!(a, again);
    assert_ne!(a, b);
    assert_eq!(a.len(), 64);
    assert!(a
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(store.get_blob(&a).unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(store.get_blob(&b).unwrap().as_deref(), Some(&b"two"[..]));
    assert_eq!(store.get_blob(&"0".repeat(64)).unwrap(), None);
}

#[test]
fn tree_digests_are_kept_per_blob() {
    let store = Store::open_in_memory().unwrap();
    let a = store.put_blob(b"one").unwrap();
    assert_eq!(store.tree_digest(&a).unwrap(), None);
    store.set_tree_digest(&a, "tree-of-one").unwrap();
    assert_eq!(
        store.tree_digest(&a).unwrap().as_deref(),
        Some("tree-of-one")
    );
    assert!(matches!(
        store.set_tree_digest(&"0".repeat(64), "x"),
        Err(Error::UnknownBlob { .. })
    ));
}

#[test]
fn create_version_with_unknown_blob_fails_and_changes_nothing() {
    let store = Store::open_in_memory().unwrap();
    let missing = "f".repeat(64);
    let err = store
        .create_version(&spec("alpha", "index.handler"), &missing)
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownBlob { digest } if *digest == missing),
        "{err:?}"
    );
    assert_eq!(store.current("alpha").unwrap(), None);
    assert!(store.list_current().unwrap().is_empty());
}

#[test]
fn delete_removes_versions_limits_and_unshared_blobs() {
    let store = Store::open_in_memory().unwrap();
    let shared = store.put_blob(b"shared code").unwrap();
    let own_old = store.put_blob(b"alpha v1").unwrap();
    let own_new = store.put_blob(b"alpha v2").unwrap();
    let unused = store.put_blob(b"uploaded, not deployed yet").unwrap();

    store
        .create_version(&spec("alpha", "index.handler"), &own_old)
        .unwrap();
    store
        .create_version(&spec("alpha", "index.handler"), &own_new)
        .unwrap();
    store
        .create_version(&spec("alpha", "index.handler"), &shared)
        .unwrap();
    store
        .create_version(&spec("beta", "index.handler"), &shared)
        .unwrap();
    store.set_learned_limit("alpha", 3, 40).unwrap();

    assert!(store.delete_function("alpha").unwrap());

    assert_eq!(store.current("alpha").unwrap(), None);
    for version in 1..=3 {
        assert_eq!(store.version("alpha", version).unwrap(), None);
    }
    assert_eq!(store.learned_limit("alpha", 3).unwrap(), None);
    assert_eq!(store.get_blob(&own_old).unwrap(), None);
    assert_eq!(store.get_blob(&own_new).unwrap(), None);
    // Still used by beta, and not alpha's to collect, respectively.
    assert!(store.get_blob(&shared).unwrap().is_some());
    assert!(store.get_blob(&unused).unwrap().is_some());
    assert_eq!(store.current("beta").unwrap().unwrap().version, 1);

    assert!(!store.delete_function("alpha").unwrap());
    assert!(!store.delete_function("never-existed").unwrap());

    // A function deployed again after deletion starts a fresh history.
    let again = store
        .create_version(&spec("alpha", "index.handler"), &shared)
        .unwrap();
    assert_eq!(again.version, 1);
    assert_eq!(store.learned_limit("alpha", 1).unwrap(), None);
}

#[test]
fn learned_limits_round_trip_per_version() {
    let store = Store::open_in_memory().unwrap();
    let code = store.put_blob(b"code").unwrap();
    store
        .create_version(&spec("alpha", "index.handler"), &code)
        .unwrap();
    store
        .create_version(&spec("alpha", "index.handler"), &code)
        .unwrap();

    assert_eq!(store.learned_limit("alpha", 1).unwrap(), None);
    store.set_learned_limit("alpha", 1, 8).unwrap();
    store.set_learned_limit("alpha", 2, 100).unwrap();
    store.set_learned_limit("alpha", 1, 12).unwrap();
    assert_eq!(store.learned_limit("alpha", 1).unwrap(), Some(12));
    assert_eq!(store.learned_limit("alpha", 2).unwrap(), Some(100));

    let err = store.set_learned_limit("alpha", 3, 5).unwrap_err();
    assert!(
        matches!(&err, Error::UnknownVersion { function, version: 3 } if function == "alpha"),
        "{err:?}"
    );
}

#[test]
fn file_backed_store_survives_reopening() {
    let dir = TempDir::new("reopen");
    let db = dir.path().join("shoal.db");

    let (digest, record) = {
        let store = Store::open(&db).unwrap();
        let digest = store.put_blob(b"persisted code").unwrap();
        store
            .create_version(&spec("alpha", "old.handler"), &digest)
            .unwrap();
        let record = store
            .create_version(&spec("alpha", "new.handler"), &digest)
            .unwrap();
        store.set_learned_limit("alpha", 2, 33).unwrap();
        (digest, record)
    };
    assert!(db.exists());

    // Reopening runs migrations again; they must leave schema and data alone.
    for _ in 0..2 {
        let store = Store::open(&db).unwrap();
        assert_eq!(store.current("alpha").unwrap(), Some(record.clone()));
        assert_eq!(
            store.version("alpha", 1).unwrap().unwrap().spec,
            spec("alpha", "old.handler")
        );
        assert_eq!(
            store.get_blob(&digest).unwrap().as_deref(),
            Some(&b"persisted code"[..])
        );
        assert_eq!(store.learned_limit("alpha", 2).unwrap(), Some(33));
    }

    let store = Store::open(&db).unwrap();
    let next = store
        .create_version(&spec("alpha", "newer.handler"), &digest)
        .unwrap();
    assert_eq!(next.version, 3);
}

#[test]
fn database_files_are_private_even_if_left_wider() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let dir = TempDir::new("private");
    let db = dir.path().join("shoal.db");
    let wal = dir.path().join("shoal.db-wal");
    let shm = dir.path().join("shoal.db-shm");
    {
        let store = Store::open(&db).unwrap();
        let digest = store.put_blob(b"code").unwrap();
        store
            .create_version(&spec("alpha", "index.handler"), &digest)
            .unwrap();
        // Open, in WAL mode: the side files exist now.
        for path in [&db, &wal, &shm] {
            assert_eq!(mode(path), 0o600, "{}", path.display());
        }
    }
    // As an older version (or a umask of 022) left them.
    for path in [&db, &wal, &shm] {
        if path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let store = Store::open(&db).unwrap();
    for path in [&db, &wal, &shm] {
        assert_eq!(mode(path), 0o600, "{}", path.display());
    }
    assert_eq!(store.list_current().unwrap().len(), 1);
}

#[test]
fn a_store_is_blank_only_until_it_is_opened() {
    let dir = TempDir::new("blank");
    let db = dir.path().join("shoal.db");
    assert!(Store::is_blank(&db).unwrap(), "a missing file");
    assert!(!db.exists(), "asking creates nothing");
    let store = Store::open(&db).unwrap();
    assert!(!Store::is_blank(&db).unwrap(), "opened once, though empty");
    let digest = store.put_blob(b"code").unwrap();
    store
        .create_version(&spec("alpha", "index.handler"), &digest)
        .unwrap();
    assert!(store.delete_function("alpha").unwrap());
    drop(store);
    assert!(
        !Store::is_blank(&db).unwrap(),
        "every function deleted is not blank"
    );

    // Truncated, as `: > shoal.db` does; asking twice changes nothing.
    std::fs::write(&db, b"").unwrap();
    assert!(Store::is_blank(&db).unwrap(), "a truncated file");
    assert!(Store::is_blank(&db).unwrap(), "still truncated");
    // Some other SQLite file, not a Shoal store yet.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE other (x); INSERT INTO other VALUES (1);")
        .unwrap();
    assert!(Store::is_blank(&db).unwrap(), "a database without a schema");
}

#[test]
fn store_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();

    let store = std::sync::Arc::new(Store::open_in_memory().unwrap());
    let code = store.put_blob(b"code").unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            let code = code.clone();
            std::thread::spawn(move || {
                for _ in 0..5 {
                    store
                        .create_version(&spec("alpha", "index.handler"), &code)
                        .unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    // Twenty concurrent deploys got twenty distinct, gapless version numbers.
    assert_eq!(store.current("alpha").unwrap().unwrap().version, 20);
    assert!(store.version("alpha", 20).unwrap().is_some());
}

#[test]
fn versions_numbered_elsewhere_install_once_and_only_a_newer_one_becomes_current() {
    let store = Store::open_in_memory().unwrap();
    let digest = store.put_blob(b"code").unwrap();
    let record = |version, handler: &str| VersionRecord {
        function: "f".into(),
        version,
        spec: spec("f", handler),
        code_digest: digest.clone(),
        created_at_ms: 1_000 + i64::from(version),
    };
    assert!(store.install_version(&record(3, "a.v3")).unwrap());
    // An older version arriving later is kept, but does not take over.
    assert!(!store.install_version(&record(2, "a.v2")).unwrap());
    assert_eq!(store.current("f").unwrap().unwrap().version, 3);
    // The same record again changes nothing (it stays current).
    assert!(store.install_version(&record(3, "a.v3")).unwrap());
    assert_eq!(
        store
            .versions("f")
            .unwrap()
            .iter()
            .map(|r| (r.version, r.spec.handler.clone()))
            .collect::<Vec<_>>(),
        [(2, "a.v2".to_owned()), (3, "a.v3".to_owned())]
    );
    // Code must be in the store first.
    let mut unknown = record(4, "a.v4");
    unknown.code_digest = "00".repeat(32);
    assert!(matches!(
        store.install_version(&unknown),
        Err(Error::UnknownBlob { .. })
    ));
    assert_eq!(store.current("f").unwrap().unwrap().version, 3);
}
