//! Schema migrations, keyed on SQLite's `PRAGMA user_version`.
//!
//! Owns the list of schema steps and the logic that applies the ones a database has not
//! seen yet. Steps are append-only: once released, a step is never edited, only followed
//! by a new one. Knows nothing of the rows the store keeps in these tables.

use rusqlite::Connection;

use crate::{Error, Result};

/// Schema steps in order; step `i` brings a database from `user_version = i` to `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: functions, their immutable versions, content-addressed code, learned limits.
    "
    CREATE TABLE blobs (
        digest TEXT PRIMARY KEY NOT NULL,
        bytes  BLOB NOT NULL
    ) STRICT;

    -- current_version carries no foreign key: it would make the two tables reference
    -- each other. create_version keeps it pointing at an existing row.
    CREATE TABLE functions (
        name            TEXT PRIMARY KEY NOT NULL,
        current_version INTEGER NOT NULL,
        created_at_ms   INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE versions (
        function      TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
        version       INTEGER NOT NULL,
        spec          TEXT NOT NULL,
        code_digest   TEXT NOT NULL REFERENCES blobs(digest),
        created_at_ms INTEGER NOT NULL,
        PRIMARY KEY (function, version)
    ) STRICT;
    CREATE INDEX versions_by_digest ON versions(code_digest);

    CREATE TABLE learned_limits (
        function      TEXT NOT NULL,
        version       INTEGER NOT NULL,
        concurrency   INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL,
        PRIMARY KEY (function, version),
        FOREIGN KEY (function, version) REFERENCES versions(function, version) ON DELETE CASCADE
    ) STRICT;
    ",
    // 2: the digest of each blob's unpacked tree, checked before an unpacked code
    // directory is reused (a tampered directory is unpacked afresh).
    "
    ALTER TABLE blobs ADD COLUMN tree_digest TEXT;
    ",
    // 3: access keys for SigV4 (only the key id is kept: each secret is derived from a
    // master key outside the database, so a copy of this file signs nothing), and aliases.
    "
    CREATE TABLE access_keys (
        name          TEXT PRIMARY KEY NOT NULL,
        access_key_id TEXT NOT NULL UNIQUE,
        created_at_ms INTEGER NOT NULL
    ) STRICT;

    -- Lambda's aliases: a name for a version, optionally sending a share of the calls to
    -- a second version (RoutingConfig). Gone with their function.
    CREATE TABLE aliases (
        function           TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
        name               TEXT NOT NULL,
        version            INTEGER NOT NULL,
        additional_version INTEGER,
        additional_weight  REAL,
        PRIMARY KEY (function, name)
    ) STRICT;
    ",
];

/// Applies every step the database has not seen yet, each in its own transaction together
/// with the `user_version` bump, so a crash mid-way leaves a consistent schema and the
/// next start resumes where this one stopped.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let applied = usize::try_from(found).unwrap_or(usize::MAX);
    if applied > MIGRATIONS.len() {
        return Err(Error::SchemaTooNew {
            found,
            supported: MIGRATIONS.len(),
        });
    }
    for (index, step) in MIGRATIONS.iter().enumerate().skip(applied) {
        let version = index + 1;
        let apply = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            tx.execute_batch(step)?;
            tx.pragma_update(None, "user_version", version)?;
            tx.commit()
        };
        apply(conn).map_err(|source| Error::Migrate { version, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_version(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn migrating_twice_is_a_no_op() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        assert_eq!(user_version(&conn), MIGRATIONS.len() as i64);
        // A second run must not try to re-create tables (which would fail).
        migrate(&mut conn).unwrap();
        assert_eq!(user_version(&conn), MIGRATIONS.len() as i64);
    }

    #[test]
    fn refuses_a_schema_from_the_future() {
        let mut conn = Connection::open_in_memory().unwrap();
        let future = MIGRATIONS.len() as i64 + 1;
        conn.pragma_update(None, "user_version", future).unwrap();
        let err = migrate(&mut conn).unwrap_err();
        assert!(
            matches!(err, Error::SchemaTooNew { found, .. } if found == future),
            "{err:?}"
        );
    }
}
