//! Who may call the control listener: the admin token (generated into the data directory
//! on first start, readable only by its owner, compared in constant time) on every route,
//! and on the AWS-shaped APIs (the Lambda API, the SQS API) also a SigV4 signature made
//! with a key from `shoal keys create` ([`crate::sigv4`] checks it).

use std::path::Path;

/// The admin token: read from `admin-token` in the data directory, or generated there.
/// The file is its owner's only (0600): made so before the token is written, and put
/// right if an older daemon left it wider.
pub(crate) fn admin_token(data_dir: &Path) -> std::io::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = data_dir.join("admin-token");
    let private = || std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    if let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim().to_owned();
        if !token.is_empty() {
            private()?;
            return Ok(token);
        }
    }
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    // An empty file already there keeps its mode through `open`: narrow it first.
    private()?;
    file.write_all(token.as_bytes())?;
    Ok(token)
}

/// Whether an `Authorization` header value presents `token` as a bearer token.
pub(crate) fn bearer_matches(header: Option<&str>, token: &str) -> bool {
    header
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|presented| constant_time_eq(presented.as_bytes(), token.as_bytes()))
}

use crate::sigv4::constant_time_eq;

/// Why a caller of an AWS-shaped API was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    /// No credential at all, or a wrong admin token.
    #[error("missing or wrong credentials: sign the request with a key from `shoal keys create`, or send Authorization: Bearer <token from the data directory's admin-token file>")]
    Missing,
    #[error(transparent)]
    Signature(#[from] crate::sigv4::SigError),
    /// Looking the key up failed (the store's trouble, not the caller's).
    #[error("looking up the access key")]
    Lookup(#[source] shoal_core::Error),
}

/// What an AWS-shaped API accepts besides the admin token: signatures for this service
/// in this daemon's region.
pub(crate) struct AwsScope<'a> {
    pub token: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

/// Admit a request to an AWS-shaped API: the admin token, or a valid SigV4 signature
/// (header or presigned query) by a live key. `body` is the whole request body.
pub(crate) fn admit_aws(
    platform: &shoal_core::Platform,
    parts: &hyper::http::request::Parts,
    body: &[u8],
    scope: &AwsScope<'_>,
) -> Result<(), AuthError> {
    let authorization = parts
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if authorization.is_some_and(|a| a.starts_with("Bearer ")) {
        return if bearer_matches(authorization, scope.token) {
            Ok(())
        } else {
            Err(AuthError::Missing)
        };
    }
    if !crate::sigv4::is_signed(parts) {
        return Err(AuthError::Missing);
    }
    let presented = crate::sigv4::parse(parts)?;
    let secret = platform
        .key_secret(&presented.access_key_id)
        .map_err(AuthError::Lookup)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let expect = crate::sigv4::Expect {
        region: scope.region,
        service: scope.service,
        now,
    };
    crate::sigv4::verify(parts, body, &presented, secret.as_deref(), expect)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_file_is_private_even_if_left_wider() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("shoal-auth-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admin-token");
        let mode = || std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;

        let token = admin_token(&dir).unwrap();
        assert_eq!(mode(), 0o600, "generated");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(admin_token(&dir).unwrap(), token, "kept across starts");
        assert_eq!(mode(), 0o600, "narrowed when read");

        // An empty file left wider gets a token, and is narrowed before the token is in it.
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let fresh = admin_token(&dir).unwrap();
        assert_ne!(fresh, token);
        assert_eq!(mode(), 0o600, "an empty file replaced");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        assert!(bearer_matches(Some("Bearer abc"), "abc"));
        assert!(!bearer_matches(Some("Bearer abd"), "abc"));
        assert!(!bearer_matches(Some("Bearer ab"), "abc"));
        assert!(!bearer_matches(Some("abc"), "abc"));
        assert!(!bearer_matches(None, "abc"));
    }
}
