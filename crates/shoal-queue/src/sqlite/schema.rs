//! The events database's schema and its migrations, keyed on SQLite's
//! `PRAGMA user_version` as in `shoal-store`. Steps are append-only: once released a step
//! is never edited, only followed by a new one. Knows nothing of the rows' meaning.

use rusqlite::Connection;

/// Schema steps in order; step `i` brings a database from `user_version = i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: queues, their messages, and the schedules' last fires.
    "
    -- AUTOINCREMENT: a queue id is never reused, so a receipt of a deleted queue can
    -- never name a message of a new one.
    CREATE TABLE queues (
        id                    INTEGER PRIMARY KEY AUTOINCREMENT,
        name                  TEXT NOT NULL UNIQUE,
        visibility_timeout_ms INTEGER NOT NULL,
        retention_ms          INTEGER NOT NULL,
        delay_ms              INTEGER NOT NULL,
        max_message_bytes     INTEGER NOT NULL,
        receive_wait_ms       INTEGER NOT NULL,
        dead_letter           TEXT,
        max_receive_count     INTEGER,
        created_at_ms         INTEGER NOT NULL
    ) STRICT;

    -- No foreign key to queues: deleting a queue deletes its messages itself, and a key
    -- check on every insert is work the writer does not need. `seq` may be reused after
    -- a delete; a receipt also names the receive's random `nonce` (0: never received).
    -- `holder`: 1 an internal consumer (released at start), 2 an outside client.
    -- The body comes last so the small columns stay on the row's first page.
    CREATE TABLE messages (
        seq                  INTEGER PRIMARY KEY,
        queue                INTEGER NOT NULL,
        visible_at_ms        INTEGER NOT NULL,
        sent_at_ms           INTEGER NOT NULL,
        receive_count        INTEGER NOT NULL DEFAULT 0,
        first_received_at_ms INTEGER,
        nonce                INTEGER NOT NULL DEFAULT 0,
        holder               INTEGER,
        size                 INTEGER NOT NULL,
        id                   BLOB NOT NULL,
        attributes           TEXT,
        body                 TEXT NOT NULL
    ) STRICT;
    -- Receive takes the earliest visible messages of one queue (seq breaks ties).
    CREATE INDEX messages_by_visibility ON messages(queue, visible_at_ms);

    CREATE TABLE schedules (
        key          TEXT PRIMARY KEY NOT NULL,
        last_fire_ms INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    ",
];

/// Why a migration failed.
#[derive(Debug)]
pub(super) enum MigrateError {
    TooNew {
        found: i64,
    },
    Step {
        version: usize,
        source: rusqlite::Error,
    },
    Read(rusqlite::Error),
}

/// Applies every step the database has not seen yet, each in its own transaction together
/// with the `user_version` bump, so a crash mid-way leaves a consistent schema.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(MigrateError::Read)?;
    let applied = usize::try_from(found).unwrap_or(usize::MAX);
    if applied > MIGRATIONS.len() {
        return Err(MigrateError::TooNew { found });
    }
    for (index, step) in MIGRATIONS.iter().enumerate().skip(applied) {
        let version = index + 1;
        let apply = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            tx.execute_batch(step)?;
            tx.pragma_update(None, "user_version", version)?;
            tx.commit()
        };
        apply(conn).map_err(|source| MigrateError::Step { version, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrating_twice_is_a_no_op_and_the_future_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        conn.pragma_update(None, "user_version", version + 1)
            .unwrap();
        assert!(matches!(
            migrate(&mut conn),
            Err(MigrateError::TooNew { found }) if found == version + 1
        ));
    }
}
