//! PostgreSQL as a source of data-change triggers: the [`shoal_core::ChangeSources`]
//! implementation the daemon plugs into the core, so the core itself never links a
//! database driver or opens a socket.
//!
//! Mechanism: a trigger-maintained outbox (see `docs/ARCHITECTURE.md` for why not logical
//! decoding). Shoal installs, idempotently and in its own schema `shoal`, a table
//! `shoal.changes`, a function `shoal.capture()` and, per watched table and function, an
//! `AFTER INSERT OR UPDATE OR DELETE ... FOR EACH ROW` trigger that writes each change —
//! operation, key columns, `to_jsonb(NEW)` / `to_jsonb(OLD)`, the writing transaction's id
//! (`pg_current_xact_id()`) — into the outbox in the same transaction as the change. A
//! rolled-back change is never seen.
//!
//! Reading in commit order ([`sql::READ`]): an outbox id is taken when the row is written,
//! not when its transaction commits, so a reader going by id alone could pass a lower id
//! whose transaction commits later. A feed therefore reads in *windows*: it takes a
//! snapshot `E` and reads, in id order, only changes whose transaction is visible in `E`
//! (committed before `E` was taken), paging by id within the window; the next window
//! takes a new snapshot and starts again from the lowest undelivered id. Two changes to one
//! key are ordered by the row lock (the second writer waits for the first to commit), so
//! the later one has the higher id and is never visible without the earlier one: each
//! key's changes come out in commit order. Delivered changes are deleted
//! ([`sql::ACK`]), in the same statement that moves the stream's recorded position, so the
//! outbox itself is the durable position: what is in it is what was not delivered.
//!
//! Must not know about functions, batches or retries: that is the core's delivery side.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]
#![forbid(unsafe_code)]

mod sql;

use std::sync::{Arc, Mutex};

use shoal_core::{Change, ChangeFeed, ChangeOp, ChangeSources, Lag, SourceError};
use shoal_manifest::PostgresTrigger;
use tokio_postgres::{Client, NoTls};

/// The PostgreSQL change source: connects per feed, plain TCP or Unix socket.
#[derive(Debug, Default)]
pub struct Postgres;

impl Postgres {
    pub fn new() -> Postgres {
        Postgres
    }
}

/// A database error with everything PostgreSQL said (message, detail, hint).
fn error(what: &str, e: tokio_postgres::Error) -> SourceError {
    let mut text = format!("{what}: ");
    match e.as_db_error() {
        Some(db) => {
            text.push_str(db.message());
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
        }
        None => {
            text.push_str(&e.to_string());
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
        }
    }
    SourceError(text)
}

async fn connect(url: &str) -> Result<Client, SourceError> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| {
        // The URL may hold a password: say what is wrong without repeating it.
        SourceError(format!("the connection string does not parse: {e}"))
    })?;
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| error("connecting", e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

#[async_trait::async_trait]
impl ChangeSources for Postgres {
    async fn open(
        &self,
        url: &str,
        stream: &str,
        trigger: &PostgresTrigger,
    ) -> Result<Arc<dyn ChangeFeed>, SourceError> {
        let mut client = connect(url).await?;
        sql::install(&mut client, stream, trigger, true).await?;
        // An acknowledgement need not wait for its WAL flush: one lost in a crash of the
        // database only makes its changes come again (at least once), and the delivery
        // path no longer waits on the server's disk for every batch.
        client
            .batch_execute("SET synchronous_commit = off")
            .await
            .map_err(|e| error("setting synchronous_commit", e))?;
        Ok(Arc::new(Feed {
            client,
            stream: stream.to_owned(),
            window: Mutex::new(None),
        }))
    }

    async fn check(
        &self,
        url: &str,
        stream: &str,
        trigger: &PostgresTrigger,
    ) -> Result<(), SourceError> {
        let mut client = connect(url).await?;
        sql::install(&mut client, stream, trigger, false).await
    }

    async fn remove(
        &self,
        url: &str,
        stream: &str,
        trigger: &PostgresTrigger,
    ) -> Result<u64, SourceError> {
        let mut client = connect(url).await?;
        sql::uninstall(&mut client, stream, trigger).await
    }
}

/// One stream's reader: a connection, and the window being read.
struct Feed {
    client: Client,
    stream: String,
    /// The snapshot of the window being paged through and the last id read in it.
    window: Mutex<Option<(String, i64)>>,
}

impl Feed {
    /// One page of the current window (a new one if none is open).
    async fn read_window(&self, max: usize) -> Result<Vec<Change>, SourceError> {
        let current = self
            .window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (snapshot, after) = match current {
            Some(w) => w,
            None => {
                let row = self
                    .client
                    .query_one(sql::SNAPSHOT, &[])
                    .await
                    .map_err(|e| error("taking a snapshot", e))?;
                (row.get::<_, String>(0), 0)
            }
        };
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = self
            .client
            .query(sql::READ, &[&self.stream, &snapshot, &after, &limit])
            .await
            .map_err(|e| error("reading changes", e))?;
        let mut changes = Vec::with_capacity(rows.len());
        for row in &rows {
            let op: String = row.get(1);
            changes.push(Change {
                sequence: row.get(0),
                op: match op.as_str() {
                    "INSERT" => ChangeOp::Insert,
                    "DELETE" => ChangeOp::Remove,
                    _ => ChangeOp::Modify,
                },
                keys: row.get(2),
                new_image: row.get(3),
                old_image: row.get(4),
                changed_at_ms: row.get(5),
            });
        }
        // A short page ends the window: the next read takes a new snapshot.
        let next = match changes.last() {
            Some(last) if changes.len() >= max => Some((snapshot, last.sequence)),
            _ => None,
        };
        *self.window.lock().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(changes)
    }
}

#[async_trait::async_trait]
impl ChangeFeed for Feed {
    async fn read(&self, max: usize) -> Result<Vec<Change>, SourceError> {
        let changes = self.read_window(max).await?;
        if changes.is_empty() {
            // The end of a window that filled its last page: the next one may have more.
            return self.read_window(max).await;
        }
        Ok(changes)
    }

    async fn ack(&self, sequences: &[i64]) -> Result<(), SourceError> {
        self.client
            .execute(sql::ACK, &[&self.stream, &sequences])
            .await
            .map_err(|e| error("deleting delivered changes", e))?;
        Ok(())
    }

    async fn lag(&self) -> Result<Lag, SourceError> {
        let row = self
            .client
            .query_one(sql::LAG, &[&self.stream])
            .await
            .map_err(|e| error("reading the lag", e))?;
        // Saturates at 100,000 (see sql::LAG).
        let records: i64 = row.get(0);
        let position: Option<i64> = row.get(2);
        Ok(Lag {
            records: u64::try_from(records).unwrap_or(0),
            oldest_ms: row.get(1),
            position: position.filter(|&p| p > 0),
        })
    }
}
