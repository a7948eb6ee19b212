//! Lambda's aliases: a name that points at one version of a function, and may send a
//! share of its calls to a second one (weighted routing). Rows go with their function.

use rusqlite::{params, OptionalExtension};

use crate::{Result, Store};

/// One alias as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AliasRecord {
    pub function: String,
    pub name: String,
    pub version: u32,
    /// The second version and the share of calls (0..1) it gets.
    pub additional: Option<(u32, f64)>,
}

impl Store {
    /// Create or replace an alias. The caller has checked that the versions exist.
    pub fn set_alias(&self, alias: &AliasRecord) -> Result<()> {
        self.conn().execute(
            "INSERT INTO aliases (function, name, version, additional_version, additional_weight)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (function, name) DO UPDATE SET version = excluded.version,
                 additional_version = excluded.additional_version,
                 additional_weight = excluded.additional_weight",
            params![
                alias.function,
                alias.name,
                alias.version,
                alias.additional.map(|a| a.0),
                alias.additional.map(|a| a.1),
            ],
        )?;
        Ok(())
    }

    /// The aliases of a function, by name.
    pub fn aliases(&self, function: &str) -> Result<Vec<AliasRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT function, name, version, additional_version, additional_weight
             FROM aliases WHERE function = ?1 ORDER BY name",
        )?;
        let rows = stmt.query_map(params![function], row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// One alias, if it exists.
    pub fn alias(&self, function: &str, name: &str) -> Result<Option<AliasRecord>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT function, name, version, additional_version, additional_weight
                 FROM aliases WHERE function = ?1 AND name = ?2",
                params![function, name],
                row,
            )
            .optional()?)
    }

    /// Remove an alias; `false` if there was none.
    pub fn delete_alias(&self, function: &str, name: &str) -> Result<bool> {
        let deleted = self.conn().execute(
            "DELETE FROM aliases WHERE function = ?1 AND name = ?2",
            params![function, name],
        )?;
        Ok(deleted == 1)
    }
}

fn row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AliasRecord> {
    let additional_version: Option<u32> = row.get(3)?;
    let additional_weight: Option<f64> = row.get(4)?;
    Ok(AliasRecord {
        function: row.get(0)?,
        name: row.get(1)?,
        version: row.get(2)?,
        additional: additional_version.zip(additional_weight),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_manifest::{FunctionSpec, Runtime};

    #[test]
    fn aliases_are_replaced_listed_and_go_with_their_function() {
        let store = Store::open_in_memory().unwrap();
        let digest = store.put_blob(b"code").unwrap();
        let spec = FunctionSpec::new_default("f", Runtime::Nodejs, "index.handler");
        store.create_version(&spec, &digest).unwrap();
        store.create_version(&spec, &digest).unwrap();
        let live = AliasRecord {
            function: "f".into(),
            name: "live".into(),
            version: 1,
            additional: Some((2, 0.25)),
        };
        store.set_alias(&live).unwrap();
        assert_eq!(store.alias("f", "live").unwrap(), Some(live.clone()));
        let moved = AliasRecord {
            version: 2,
            additional: None,
            ..live
        };
        store.set_alias(&moved).unwrap();
        assert_eq!(store.aliases("f").unwrap(), vec![moved]);
        assert!(store.delete_function("f").unwrap());
        assert!(store.aliases("f").unwrap().is_empty());
        assert!(!store.delete_alias("f", "live").unwrap());
    }
}
