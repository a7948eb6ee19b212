//! Access keys for SigV4 (`/admin/keys`): what `shoal keys create`, `ls` and `rm` send and
//! read. The secret appears once, in the answer to the create.

use serde::{Deserialize, Serialize};

/// `POST /admin/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateKey {
    pub name: String,
}

/// `POST /admin/keys` (201): the new key pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedKey {
    pub name: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// `GET /admin/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
}

/// One key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub name: String,
    pub access_key_id: String,
    pub created_at_ms: i64,
}
