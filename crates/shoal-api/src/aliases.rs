//! Lambda's aliases as `shoal alias` and `/admin/functions/{name}/aliases` speak them.

use serde::{Deserialize, Serialize};

/// `PUT /admin/functions/{name}/aliases/{alias}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetAlias {
    pub version: u32,
    /// A second version that takes `additional_weight` (0..1) of the alias's calls.
    #[serde(default)]
    pub additional_version: Option<u32>,
    #[serde(default)]
    pub additional_weight: Option<f64>,
}

/// One alias.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasInfo {
    pub function: String,
    pub name: String,
    pub version: u32,
    #[serde(default)]
    pub additional_version: Option<u32>,
    #[serde(default)]
    pub additional_weight: Option<f64>,
}

/// `GET /admin/functions/{name}/aliases`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasList {
    pub aliases: Vec<AliasInfo>,
}
