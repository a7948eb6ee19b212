//! What the Lambda API asks of the platform beyond running a call: which version a
//! `Qualifier` runs (a version number, `$LATEST`, or an alias, weighted between two
//! versions as Lambda's routing config; a version other than the current one is started
//! beside it on first use), aliases themselves, the versions a function has (for
//! `GetFunction`, `ListVersionsByFunction`, ...), and the tail of one invocation's log
//! (`LogType: Tail`). Plain data out; the Lambda shapes are the server's.

use std::collections::BTreeMap;
use std::sync::Arc;

use shoal_api::aliases::AliasInfo;
use shoal_store::AliasRecord;

use crate::{Error, Platform, Result};

/// How long `LogType: Tail` waits for the lines an invocation printed to reach its log:
/// output travels on the instance's stdout, the result on its own channel, so the last
/// lines may still be on their way when the result is in.
const LOG_SETTLE: std::time::Duration = std::time::Duration::from_millis(50);
/// Log records looked at for one invocation's tail (the function's latest ones).
const LOG_TAIL_RECORDS: usize = 2000;

/// One stored version of a function, as the Lambda API describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionDetail {
    pub function: String,
    pub version: u32,
    /// The one that runs: calls without a qualifier (`$LATEST`) go here.
    pub current: bool,
    pub runtime: shoal_api::Runtime,
    pub handler: String,
    pub memory_mb: u64,
    pub timeout_ms: u64,
    pub ephemeral_storage_mb: u64,
    pub env: BTreeMap<String, String>,
    /// Lowercase hex SHA-256 of the uploaded code archive.
    pub code_sha256: String,
    pub code_size: u64,
    pub created_at_ms: i64,
}

impl Platform {
    /// The version a `Qualifier` runs: `None` for `$LATEST` (the active version), a
    /// number for a version or an alias (weighted between its two versions). A version
    /// other than the active one is started beside it on first use.
    pub(crate) async fn resolve_qualifier(
        self: &Arc<Self>,
        function: &str,
        qualifier: &str,
    ) -> Result<Option<u32>> {
        let current = self
            .dispatcher
            .active_version(function)
            .ok_or_else(|| Error::FunctionNotFound(function.to_owned()))?;
        if qualifier == "$LATEST" {
            return Ok(None);
        }
        let version = match qualifier.parse::<u32>() {
            Ok(version) => version,
            Err(_) => {
                let alias = self.store.alias(function, qualifier)?.ok_or_else(|| {
                    Error::QualifierNotFound {
                        function: function.to_owned(),
                        qualifier: qualifier.to_owned(),
                    }
                })?;
                match alias.additional {
                    Some((other, weight)) if unit_random() < weight => other,
                    _ => alias.version,
                }
            }
        };
        if version != current {
            let platform = self.clone();
            let function = function.to_owned();
            let qualifier = qualifier.to_owned();
            tokio::task::spawn_blocking(move || {
                platform.serve_version(&function, version, &qualifier)
            })
            .await
            .map_err(Error::Task)??;
        }
        Ok(Some(version))
    }

    /// Make a stored version take calls beside the active one (unpacking its code if
    /// needed); `qualifier` is how the caller named it, for the not-found error.
    fn serve_version(&self, function: &str, version: u32, qualifier: &str) -> Result<()> {
        let _changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        if self.dispatcher.serves_version(function, version) {
            return Ok(());
        }
        let record =
            self.store
                .version(function, version)?
                .ok_or_else(|| Error::QualifierNotFound {
                    function: function.to_owned(),
                    qualifier: qualifier.to_owned(),
                })?;
        let code_dir = crate::code::checked_dir(&self.store, &self.data_dir, &record.code_digest)?;
        let config = self.register_version(&record, code_dir)?;
        if !self.dispatcher.serve_version(function, version, config) {
            return Err(Error::FunctionNotFound(function.to_owned()));
        }
        tracing::info!(
            function,
            version,
            "serving a version beside the current one"
        );
        Ok(())
    }

    /// Create or move an alias: `version`, and optionally `additional` = (a second
    /// version, the share of calls 0..1 it gets), as Lambda's routing config.
    pub async fn set_alias(
        &self,
        function: &str,
        name: &str,
        version: u32,
        additional: Option<(u32, f64)>,
    ) -> Result<AliasInfo> {
        if !valid_alias(name) {
            return Err(Error::InvalidAlias(format!(
                "alias name {name:?} is not valid: use 1 to 128 letters, digits, '-' or '_', not only digits, not $LATEST"
            )));
        }
        if self.dispatcher.active_version(function).is_none() {
            return Err(Error::FunctionNotFound(function.to_owned()));
        }
        let versions = std::iter::once(version).chain(additional.map(|a| a.0));
        for v in versions {
            if self.store.version(function, v)?.is_none() {
                return Err(Error::QualifierNotFound {
                    function: function.to_owned(),
                    qualifier: v.to_string(),
                });
            }
        }
        if let Some((other, weight)) = additional {
            if other == version || !(0.0..=1.0).contains(&weight) {
                return Err(Error::InvalidAlias(format!(
                    "the additional version must differ from {version} and its weight be between 0 and 1, not {other} at {weight}"
                )));
            }
        }
        let record = AliasRecord {
            function: function.to_owned(),
            name: name.to_owned(),
            version,
            additional,
        };
        self.store.set_alias(&record)?;
        if let Some(cluster) = self.cluster() {
            cluster
                .publish_alias(function, name, Some((version, additional)))
                .await?;
        }
        Ok(alias_info(record))
    }

    /// A function's aliases, by name.
    pub fn aliases(&self, function: &str) -> Result<Vec<AliasInfo>> {
        if self.dispatcher.active_version(function).is_none() {
            return Err(Error::FunctionNotFound(function.to_owned()));
        }
        Ok(self
            .store
            .aliases(function)?
            .into_iter()
            .map(alias_info)
            .collect())
    }

    /// Remove an alias.
    pub async fn remove_alias(&self, function: &str, name: &str) -> Result<()> {
        if self.store.delete_alias(function, name)? {
            if let Some(cluster) = self.cluster() {
                cluster.publish_alias(function, name, None).await?;
            }
            Ok(())
        } else {
            Err(Error::QualifierNotFound {
                function: function.to_owned(),
                qualifier: name.to_owned(),
            })
        }
    }

    /// Every stored version of a function, oldest first.
    pub fn versions(&self, function: &str) -> Result<Vec<VersionDetail>> {
        let current = self
            .dispatcher
            .active_version(function)
            .ok_or_else(|| Error::FunctionNotFound(function.to_owned()))?;
        self.store
            .versions(function)?
            .into_iter()
            .map(|r| {
                let code_size = self
                    .store
                    .get_blob(&r.code_digest)?
                    .map_or(0, |b| b.len() as u64);
                Ok(VersionDetail {
                    function: r.function,
                    version: r.version,
                    current: r.version == current,
                    runtime: r.spec.runtime,
                    handler: r.spec.handler,
                    memory_mb: r.spec.memory_mb,
                    timeout_ms: r.spec.timeout_ms,
                    ephemeral_storage_mb: r.spec.ephemeral_storage_mb,
                    env: r.spec.env,
                    code_sha256: r.code_digest,
                    code_size,
                    created_at_ms: r.created_at_ms,
                })
            })
            .collect()
    }

    /// The names of deployed functions.
    pub fn function_names(&self) -> Result<Vec<String>> {
        Ok(self
            .store
            .list_current()?
            .into_iter()
            .map(|r| r.function)
            .collect())
    }

    /// The log lines one invocation left (its output and the platform's notes about it),
    /// oldest first, as text: at most the last `max_bytes`, cut at a line start.
    pub async fn invocation_log(
        self: &std::sync::Arc<Self>,
        function: &str,
        request_id: &str,
        max_bytes: usize,
    ) -> Result<String> {
        tokio::time::sleep(LOG_SETTLE).await;
        let page = self.logs(function, None, LOG_TAIL_RECORDS).await?;
        let mut text = String::new();
        for record in page
            .records
            .iter()
            .filter(|r| r.request_id.as_deref() == Some(request_id))
        {
            // As Lambda's log shows a console line: time, request id, level, message.
            if let Some(level) = &record.level {
                let time = shoal_events::iso8601_millis(record.ts as i64);
                text.push_str(&format!("{time}\t{request_id}\t{level}\t"));
            }
            text.push_str(record.message.trim_end_matches('\n'));
            text.push('\n');
        }
        if text.len() > max_bytes {
            let mut cut = text.len() - max_bytes;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            let start = text[cut..].find('\n').map_or(cut, |n| cut + n + 1);
            text.drain(..start);
        }
        Ok(text)
    }
}

fn alias_info(record: AliasRecord) -> AliasInfo {
    AliasInfo {
        function: record.function,
        name: record.name,
        version: record.version,
        additional_version: record.additional.map(|a| a.0),
        additional_weight: record.additional.map(|a| a.1),
    }
}

/// Lambda's rule for alias names.
fn valid_alias(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !name.bytes().all(|b| b.is_ascii_digit())
}

/// A uniform number in [0, 1) for weighted routing: 53 of a v4 uuid's random bits (its
/// lowest 62 are random; the version and variant bits sit above them).
fn unit_random() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64 & ((1u64 << 53) - 1);
    bits as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_names_follow_lambdas_rule() {
        assert!(valid_alias("live"));
        assert!(valid_alias("blue-green_2"));
        assert!(!valid_alias("42"));
        assert!(!valid_alias("$LATEST"));
        assert!(!valid_alias(""));
        assert!(!valid_alias(&"a".repeat(129)));
    }

    #[test]
    fn the_random_share_covers_the_unit_interval() {
        let draws: Vec<f64> = (0..2000).map(|_| unit_random()).collect();
        assert!(draws.iter().all(|x| (0.0..1.0).contains(x)));
        // Each quarter gets some: a share drawn from fixed bits would not.
        for quarter in 0..4 {
            let (low, high) = (quarter as f64 / 4.0, (quarter + 1) as f64 / 4.0);
            let n = draws.iter().filter(|x| (low..high).contains(*x)).count();
            assert!(n > 300, "quarter {quarter}: {n} of 2000");
        }
    }
}
