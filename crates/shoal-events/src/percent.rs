//! Percent-decoding of URL paths and query strings (RFC 3986), small enough to own.
//!
//! Decoding is lenient the way gateways are: a `%` not followed by two hex digits is kept
//! as is, and bytes that do not form UTF-8 are replaced with U+FFFD rather than failing
//! the request. It knows nothing of routes or events.

use std::borrow::Cow;

/// Decodes `%XX` escapes; with `plus_as_space` (query strings, form encoding) `+` is a
/// space, in paths it stays a literal `+`.
pub(crate) fn decode(input: &str, plus_as_space: bool) -> Cow<'_, str> {
    if !(input.contains('%') || plus_as_space && input.contains('+')) {
        return Cow::Borrowed(input);
    }
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                match (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(hi), Some(lo)) => {
                        out.push(hi << 4 | lo);
                        i += 3;
                    }
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn decodes_escapes_and_plus() {
        assert_eq!(decode("a%20b+c", true), "a b c");
        assert_eq!(decode("a%20b+c", false), "a b+c");
        assert_eq!(decode("%E2%9C%93", false), "\u{2713}");
        assert_eq!(decode("%2Fx%2f", false), "/x/");
    }

    #[test]
    fn keeps_malformed_escapes() {
        assert_eq!(decode("100%", false), "100%");
        assert_eq!(decode("%4", false), "%4");
        assert_eq!(decode("%zz%41", false), "%zzA");
    }

    #[test]
    fn replaces_invalid_utf8() {
        assert_eq!(decode("%FFa", false), "\u{FFFD}a");
    }
}
