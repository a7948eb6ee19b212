//! What the Lambda API asks of the platform beyond running a call: which version a
//! `Qualifier` names, the versions a function has (for `GetFunction`,
//! `ListVersionsByFunction`, ...), and the tail of one invocation's log (`LogType: Tail`).
//! Plain data out; the Lambda shapes are the server's.

use std::collections::BTreeMap;

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
    /// Whether `qualifier` may be invoked on `function`: `$LATEST` or the current version.
    pub(crate) fn check_qualifier(&self, function: &str, qualifier: &str) -> Result<()> {
        let current = self
            .dispatcher
            .active_version(function)
            .ok_or_else(|| Error::FunctionNotFound(function.to_owned()))?;
        let not_found = || Error::QualifierNotFound {
            function: function.to_owned(),
            qualifier: qualifier.to_owned(),
        };
        if qualifier == "$LATEST" {
            return Ok(());
        }
        let version: u32 = qualifier.parse().map_err(|_| not_found())?;
        if version == current {
            return Ok(());
        }
        match self.store.version(function, version)? {
            Some(_) => Err(Error::VersionNotRunning {
                function: function.to_owned(),
                version,
                current,
            }),
            None => Err(not_found()),
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
