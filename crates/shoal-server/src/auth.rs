//! Who may call the control listener: the admin token (generated into the data directory
//! on first start, readable only by its owner, compared in constant time) on every route,
//! and on the AWS-shaped APIs (the Lambda API, the SQS API) also a SigV4 signature made
//! with a key from `shoal keys create` ([`crate::sigv4`] checks it); and the dashboard's
//! sessions, so that the token never travels in a URL a browser keeps.
//!
//! A holder of the token asks for a login code (`shoal dashboard`); the code is good for
//! one use within [`LOGIN_CODE_TTL`], and trades for a session in an HttpOnly,
//! SameSite=Strict cookie. A session only reads: it authorizes `GET`s, never a deploy,
//! delete or invoke.

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

/// How long a dashboard login code may wait to be used.
pub(crate) const LOGIN_CODE_TTL: std::time::Duration = std::time::Duration::from_secs(120);
/// How long a dashboard session lasts.
pub(crate) const SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(12 * 3600);
/// The dashboard session's cookie.
pub(crate) const SESSION_COOKIE: &str = "shoal_session";
/// Codes and sessions outstanding at most: what bounds the memory a token holder (or a
/// runaway script) can make the daemon keep.
const MAX_OUTSTANDING: usize = 1024;

/// One-time login codes and the sessions they were traded for, each with its expiry.
#[derive(Default)]
pub(crate) struct Sessions {
    codes: std::sync::Mutex<Vec<(String, std::time::Instant)>>,
    sessions: std::sync::Mutex<Vec<(String, std::time::Instant)>>,
}

impl Sessions {
    /// A fresh one-time login code.
    pub(crate) fn issue_code(&self) -> String {
        let code = secret();
        push_bounded(&self.codes, code.clone(), LOGIN_CODE_TTL);
        code
    }

    /// Trade a login code (once, before it expires) for a session id.
    pub(crate) fn redeem(&self, code: &str) -> Option<String> {
        let now = std::time::Instant::now();
        let mut codes = lock(&self.codes);
        codes.retain(|(_, expires)| *expires > now);
        let index = codes
            .iter()
            .position(|(c, _)| constant_time_eq(c.as_bytes(), code.as_bytes()))?;
        codes.remove(index);
        drop(codes);
        let session = secret();
        push_bounded(&self.sessions, session.clone(), SESSION_TTL);
        Some(session)
    }

    /// Whether a `Cookie` header carries a live session.
    pub(crate) fn cookie_valid(&self, cookie_header: Option<&str>) -> bool {
        let Some(presented) = cookie_header.and_then(|h| {
            h.split(';')
                .filter_map(|c| c.trim().split_once('='))
                .find(|(name, _)| *name == SESSION_COOKIE)
                .map(|(_, value)| value.to_owned())
        }) else {
            return false;
        };
        let now = std::time::Instant::now();
        let mut sessions = lock(&self.sessions);
        sessions.retain(|(_, expires)| *expires > now);
        sessions
            .iter()
            .any(|(s, _)| constant_time_eq(s.as_bytes(), presented.as_bytes()))
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keep `value` until `ttl` from now; past [`MAX_OUTSTANDING`], the oldest goes.
fn push_bounded(
    list: &std::sync::Mutex<Vec<(String, std::time::Instant)>>,
    value: String,
    ttl: std::time::Duration,
) {
    let now = std::time::Instant::now();
    let mut list = lock(list);
    list.retain(|(_, expires)| *expires > now);
    if list.len() >= MAX_OUTSTANDING {
        list.remove(0);
    }
    list.push((value, now + ttl));
}

/// 244 random bits (two v4 UUIDs, from the OS's generator), hex.
fn secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Whether an `Authorization` header value presents `token` as a bearer token.
pub(crate) fn bearer_matches(header: Option<&str>, token: &str) -> bool {
    header
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|presented| constant_time_eq(presented.as_bytes(), token.as_bytes()))
}

use crate::sigv4::constant_time_eq;

/// Whether a request was forwarded by a node of this node's cluster: it carries the
/// cluster's forward token.
pub(crate) fn forwarded(platform: &shoal_core::Platform, headers: &hyper::HeaderMap) -> bool {
    let Some(token) = platform.forward_token() else {
        return false;
    };
    headers
        .get(crate::forward::TOKEN)
        .is_some_and(|presented| constant_time_eq(presented.as_bytes(), token.as_bytes()))
}

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
    // Another node of the cluster admitted the caller before forwarding the call.
    if forwarded(platform, &parts.headers) {
        return Ok(());
    }
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
    fn a_login_code_works_once_and_its_session_reads_from_a_cookie() {
        let sessions = Sessions::default();
        let code = sessions.issue_code();
        assert_eq!(sessions.redeem("not-a-code"), None);
        let session = sessions.redeem(&code).expect("a fresh code");
        assert_eq!(sessions.redeem(&code), None, "a code is good once");
        assert!(sessions.cookie_valid(Some(&format!("a=b; {SESSION_COOKIE}={session}"))));
        assert!(!sessions.cookie_valid(Some(&format!("{SESSION_COOKIE}={code}"))));
        assert!(!sessions.cookie_valid(Some("a=b")));
        assert!(!sessions.cookie_valid(None));
    }

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
