//! The control API's credential: the admin token, generated into the data directory on
//! first start (readable only by its owner), and compared in constant time.

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

/// Compare tokens without leaking, through timing, how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
