//! The SQL Shoal runs on a user's database: the outbox schema and capture function it
//! installs, the per-table trigger, and the statements that read, acknowledge and measure
//! a stream. Everything lives in schema `shoal`; nothing else in the database is touched
//! except the one trigger per watched table and function.

use shoal_core::SourceError;
use shoal_manifest::PostgresTrigger;
use tokio_postgres::Client;

use crate::error;

/// Serializes installs and removals from several daemons or triggers at once (the DDL
/// below is idempotent but not safe to run concurrently).
const INSTALL_LOCK: i64 = 0x5348_4f41_4c00_0001;

/// Written as the capture function's comment; a different one (or none) reinstalls the
/// schema's objects. Bump it whenever [`SCHEMA`] changes.
const SCHEMA_VERSION: &str = "shoal outbox 1";

/// The outbox, the streams' positions and the capture function. The function runs as its
/// owner (Shoal's role: `SECURITY DEFINER`), so the application's roles need no rights on
/// schema `shoal`; it writes times in UTC whatever the writer's session says.
const SCHEMA: &str = r#"
CREATE SCHEMA IF NOT EXISTS shoal;
CREATE TABLE IF NOT EXISTS shoal.changes (
    id       bigserial PRIMARY KEY,
    stream   text NOT NULL,
    xid      xid8 NOT NULL DEFAULT pg_current_xact_id(),
    op       text NOT NULL,
    keys     jsonb NOT NULL,
    new_row  jsonb,
    old_row  jsonb,
    at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS changes_by_stream ON shoal.changes (stream, id);
CREATE TABLE IF NOT EXISTS shoal.streams (
    stream     text PRIMARY KEY,
    position   bigint NOT NULL DEFAULT 0,
    delivered  bigint NOT NULL DEFAULT 0
);
CREATE OR REPLACE FUNCTION shoal.capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET "TimeZone" = 'UTC'
AS $capture$
DECLARE
    image jsonb;
    keys  jsonb := '{}'::jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN
        image := to_jsonb(OLD);
    ELSE
        image := to_jsonb(NEW);
    END IF;
    FOR i IN 1 .. TG_NARGS - 1 LOOP
        keys := keys || jsonb_build_object(TG_ARGV[i], image -> TG_ARGV[i]);
    END LOOP;
    INSERT INTO shoal.changes (stream, op, keys, new_row, old_row)
    VALUES (
        TG_ARGV[0],
        TG_OP,
        keys,
        CASE WHEN TG_OP <> 'DELETE' THEN image END,
        CASE WHEN TG_OP = 'UPDATE' THEN to_jsonb(OLD) WHEN TG_OP = 'DELETE' THEN image END
    );
    RETURN NULL;
END
$capture$;
"#;

/// The snapshot a window reads against.
pub(crate) const SNAPSHOT: &str = "SELECT pg_current_snapshot()::text";

/// One page of a window: changes of transactions committed before the window's snapshot,
/// after the last id read in it, in id order.
pub(crate) const READ: &str = "
    SELECT id, op, keys::text, new_row::text, old_row::text,
           (extract(epoch FROM at) * 1000)::int8
    FROM shoal.changes
    WHERE stream = $1
      AND pg_visible_in_snapshot(xid, $2::text::pg_snapshot)
      AND id > $3
    ORDER BY id
    LIMIT $4";

/// Forget delivered changes and move the position, in one statement.
pub(crate) const ACK: &str = "
    WITH gone AS (
        DELETE FROM shoal.changes WHERE stream = $1 AND id = ANY($2) RETURNING id
    )
    UPDATE shoal.streams
    SET position = GREATEST(position, (SELECT max(id) FROM gone)),
        delivered = delivered + (SELECT count(*) FROM gone)
    WHERE stream = $1";

/// Undelivered changes (counted up to 100,000: after a long outage the count
/// would otherwise scan the whole backlog every second), the oldest one's time (the
/// lowest id is the oldest write of the stream), the position.
pub(crate) const LAG: &str = "
    SELECT (SELECT count(*) FROM (
                SELECT 1 FROM shoal.changes WHERE stream = $1 LIMIT 100000) capped),
           (SELECT (extract(epoch FROM at) * 1000)::int8 FROM shoal.changes
                WHERE stream = $1 ORDER BY id LIMIT 1),
           (SELECT position FROM shoal.streams WHERE stream = $1)";

/// A name PostgreSQL will not fold or misread.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The database trigger's name for a stream: stable across versions of Shoal (FNV-1a, not
/// std's hasher), short enough for PostgreSQL's 63 bytes.
pub(crate) fn trigger_name(stream: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in stream.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("shoal_{hash:016x}")
}

fn table(trigger: &PostgresTrigger) -> String {
    format!("{}.{}", ident(&trigger.schema), ident(&trigger.table))
}

/// Install the outbox (if missing) and (re)create `stream`'s trigger on the table, in one
/// transaction: a change is either captured by the old trigger or the new one, never lost.
/// Without `commit` the transaction is rolled back: every check the database makes
/// (table, key, privileges) is made, and nothing stays.
pub(crate) async fn install(
    client: &mut Client,
    stream: &str,
    trigger: &PostgresTrigger,
    commit: bool,
) -> Result<(), SourceError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| error("starting the install", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&INSTALL_LOCK])
        .await
        .map_err(|e| error("waiting for other installs", e))?;
    // DDL only when missing or from another version: `CREATE INDEX IF NOT EXISTS` and
    // friends lock the outbox even when there is nothing to do, and writers of watched
    // tables insert into it.
    let current: Option<bool> = tx
        .query_one(
            "SELECT obj_description(to_regprocedure('shoal.capture()'), 'pg_proc') = $1",
            &[&SCHEMA_VERSION],
        )
        .await
        .map_err(|e| error("looking for schema shoal", e))?
        .get(0);
    if current != Some(true) {
        tx.batch_execute(SCHEMA)
            .await
            .map_err(|e| error("installing schema shoal (the outbox)", e))?;
        tx.batch_execute(&format!(
            "COMMENT ON FUNCTION shoal.capture() IS {}",
            literal(SCHEMA_VERSION)
        ))
        .await
        .map_err(|e| error("marking schema shoal's version", e))?;
    }
    let name = trigger.qualified_table();
    let found: Option<String> = tx
        .query_one("SELECT to_regclass($1)::text", &[&table(trigger)])
        .await
        .map_err(|e| error("looking up the table", e))?
        .get(0);
    if found.is_none() {
        return Err(SourceError(format!(
            "table {name} does not exist (or this role cannot see it)"
        )));
    }
    let keys: Vec<String> = tx
        .query(
            "SELECT a.attname::text
             FROM pg_index i
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
             WHERE i.indrelid = to_regclass($1) AND i.indisprimary
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&table(trigger)],
        )
        .await
        .map_err(|e| error("reading the primary key", e))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if keys.is_empty() {
        return Err(SourceError(format!(
            "table {name} has no primary key; records carry the key of the changed row, so \
             add one (ALTER TABLE {name} ADD PRIMARY KEY (...))"
        )));
    }
    let mut args = vec![literal(stream)];
    args.extend(keys.iter().map(|k| literal(k)));
    let events = trigger.operations.join(" OR ");
    // The trigger's comment says what it was made for; the same comment means nothing to
    // do, so a restart takes no lock on the user's table.
    let made_for = format!("{SCHEMA_VERSION}: {events} keys {}", keys.join(","));
    let existing: Option<Option<String>> = tx
        .query_opt(
            "SELECT obj_description(oid, 'pg_trigger') FROM pg_trigger
             WHERE tgrelid = to_regclass($1) AND tgname = $2",
            &[&table(trigger), &trigger_name(stream)],
        )
        .await
        .map_err(|e| error("looking for the trigger", e))?
        .map(|row| row.get(0));
    if existing.flatten().as_deref() != Some(made_for.as_str()) {
        // The table's lock first: a writer holding it never waits on us for the outbox.
        let ddl = format!(
            "LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;
             DROP TRIGGER IF EXISTS {trig} ON {table};
             CREATE TRIGGER {trig} AFTER {events} ON {table}
                 FOR EACH ROW EXECUTE FUNCTION shoal.capture({args});
             COMMENT ON TRIGGER {trig} ON {table} IS {comment};",
            trig = ident(&trigger_name(stream)),
            table = table(trigger),
            args = args.join(", "),
            comment = literal(&made_for),
        );
        tx.batch_execute(&ddl)
            .await
            .map_err(|e| error(&format!("creating the trigger on {name}"), e))?;
    }
    tx.execute(
        "INSERT INTO shoal.streams (stream) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&stream],
    )
    .await
    .map_err(|e| error("recording the stream", e))?;
    if !commit {
        return tx
            .rollback()
            .await
            .map_err(|e| error("rolling the trial install back", e));
    }
    tx.commit()
        .await
        .map_err(|e| error("committing the install", e))
}

/// Drop `stream`'s trigger and forget its undelivered changes and position; how many
/// changes were forgotten. Schema `shoal` stays (other streams may use it).
pub(crate) async fn uninstall(
    client: &mut Client,
    stream: &str,
    trigger: &PostgresTrigger,
) -> Result<u64, SourceError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| error("starting the removal", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&INSTALL_LOCK])
        .await
        .map_err(|e| error("waiting for other installs", e))?;
    let exists: Option<String> = tx
        .query_one("SELECT to_regclass($1)::text", &[&table(trigger)])
        .await
        .map_err(|e| error("looking up the table", e))?
        .get(0);
    if exists.is_some() {
        tx.batch_execute(&format!(
            "DROP TRIGGER IF EXISTS {} ON {}",
            ident(&trigger_name(stream)),
            table(trigger)
        ))
        .await
        .map_err(|e| error("dropping the trigger", e))?;
    }
    let outbox: Option<String> = tx
        .query_one("SELECT to_regclass('shoal.changes')::text", &[])
        .await
        .map_err(|e| error("looking up the outbox", e))?
        .get(0);
    let mut forgotten = 0;
    if outbox.is_some() {
        forgotten = tx
            .execute("DELETE FROM shoal.changes WHERE stream = $1", &[&stream])
            .await
            .map_err(|e| error("forgetting undelivered changes", e))?;
        tx.execute("DELETE FROM shoal.streams WHERE stream = $1", &[&stream])
            .await
            .map_err(|e| error("forgetting the stream", e))?;
    }
    tx.commit()
        .await
        .map_err(|e| error("committing the removal", e))?;
    Ok(forgotten)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_names_are_stable_and_short() {
        let name = trigger_name("audit:public.orders");
        assert_eq!(name, trigger_name("audit:public.orders"));
        assert_ne!(name, trigger_name("audit:public.order"));
        assert_eq!(name.len(), "shoal_".len() + 16);
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(literal("it's"), "'it''s'");
    }
}
