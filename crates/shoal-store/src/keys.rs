//! Access keys for the AWS-shaped APIs: a name and a public key id per key. The secret is
//! not here: the core derives it from a master key kept outside the database, so whoever
//! reads this file learns which keys exist, not how to sign with them.

use rusqlite::{params, OptionalExtension};

use crate::{now_ms, Result, Store};

/// One access key as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKeyRecord {
    pub name: String,
    pub access_key_id: String,
    pub created_at_ms: i64,
}

impl Store {
    /// Records a key; `false` if the name or the id is already taken (nothing changes).
    pub fn create_access_key(&self, name: &str, access_key_id: &str) -> Result<bool> {
        let inserted = self.conn().execute(
            "INSERT INTO access_keys (name, access_key_id, created_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
            params![name, access_key_id, now_ms()],
        )?;
        Ok(inserted == 1)
    }

    /// Every key, by name.
    pub fn access_keys(&self) -> Result<Vec<AccessKeyRecord>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT name, access_key_id, created_at_ms FROM access_keys ORDER BY name")?;
        let rows = stmt.query_map([], |row| {
            Ok(AccessKeyRecord {
                name: row.get(0)?,
                access_key_id: row.get(1)?,
                created_at_ms: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The key with this id, if it exists (what a signed request is checked against).
    pub fn access_key(&self, access_key_id: &str) -> Result<Option<AccessKeyRecord>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT name, access_key_id, created_at_ms FROM access_keys
                 WHERE access_key_id = ?1",
                params![access_key_id],
                |row| {
                    Ok(AccessKeyRecord {
                        name: row.get(0)?,
                        access_key_id: row.get(1)?,
                        created_at_ms: row.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Removes a key by name; `false` if there was none.
    pub fn delete_access_key(&self, name: &str) -> Result<bool> {
        let deleted = self
            .conn()
            .execute("DELETE FROM access_keys WHERE name = ?1", params![name])?;
        Ok(deleted == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_by_name_and_id_and_removable() {
        let store = Store::open_in_memory().unwrap();
        assert!(store.create_access_key("ci", "SHOALAAAA").unwrap());
        assert!(
            !store.create_access_key("ci", "SHOALBBBB").unwrap(),
            "name taken"
        );
        assert!(
            !store.create_access_key("other", "SHOALAAAA").unwrap(),
            "id taken"
        );
        assert_eq!(store.access_keys().unwrap().len(), 1);
        assert_eq!(store.access_key("SHOALAAAA").unwrap().unwrap().name, "ci");
        assert!(store.access_key("SHOALBBBB").unwrap().is_none());
        assert!(store.delete_access_key("ci").unwrap());
        assert!(!store.delete_access_key("ci").unwrap());
        assert!(store.access_key("SHOALAAAA").unwrap().is_none());
    }
}
