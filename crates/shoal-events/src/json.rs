//! Writing JSON by hand where it is written for every call (the API Gateway event, log
//! records): strings escaped exactly as `serde_json` escapes them, so what is written
//! reads back with serde and looks the same as before, without building a value tree or
//! a map per call. Everything else keeps using serde.

/// Append `text` to `out` as a JSON string (quotes included), escaped as `serde_json`
/// does: `"` and `\`, the short forms `\b \t \n \f \r`, `\u00XX` (lowercase hex) for the
/// other control characters; everything else, non-ASCII included, as is.
pub fn push_str(out: &mut Vec<u8>, text: &str) {
    out.reserve(text.len() + 2);
    out.push(b'"');
    push_str_contents(out, text);
    out.push(b'"');
}

/// [`push_str`] without the quotes: for a string written in several pieces.
pub fn push_str_contents(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut at = 0;
    while at < bytes.len() {
        // Eight bytes at a time while none of them needs escaping.
        let word = match bytes.get(at..at + 8) {
            Some(chunk) => u64::from_le_bytes(chunk.try_into().expect("8 bytes")),
            None => {
                // The last few bytes, padded with spaces (which need no escaping).
                let mut tail = [b' '; 8];
                tail[..bytes.len() - at].copy_from_slice(&bytes[at..]);
                u64::from_le_bytes(tail)
            }
        };
        let found = escape_mask(word);
        if found == 0 {
            at += 8;
            continue;
        }
        // Straight to the first byte that needs escaping.
        at += (found.trailing_zeros() / 8) as usize;
        let byte = bytes[at];
        let escape = match byte {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            0x08 => Some(b'b'),
            b'\t' => Some(b't'),
            b'\n' => Some(b'n'),
            0x0c => Some(b'f'),
            b'\r' => Some(b'r'),
            0x00..=0x1f => Some(b'u'),
            _ => None,
        };
        if let Some(escape) = escape {
            out.extend_from_slice(&bytes[start..at]);
            out.push(b'\\');
            out.push(escape);
            if escape == b'u' {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'0',
                    b'0',
                    HEX[usize::from(byte >> 4)],
                    HEX[usize::from(byte & 0xf)],
                ]);
            }
            start = at + 1;
        }
        at += 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// The high bit of each of the eight bytes of `word` (little-endian: the first byte is
/// the lowest) that is `"`, `\` or below 0x20. Bytes after such a byte may be marked
/// falsely (a borrow carries over), never bytes before it: the lowest mark is exact.
fn escape_mask(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_bytes = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    below_space
        | zero_bytes(word ^ (ONES * u64::from(b'"')))
        | zero_bytes(word ^ (ONES * u64::from(b'\\')))
}

/// Append `n` in decimal.
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(decimal(n, &mut [0u8; 20]).as_bytes());
}

/// `n` in decimal, written into the tail of `digits` (20 places hold any `u64`): for
/// writers that are not a byte buffer, without `format!`.
pub fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &str {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&digits[at..]).expect("ASCII digits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_escapes_them() {
        let mut cases: Vec<String> = [
            "",
            "plain ascii that is longer than eight bytes",
            "quote \" and backslash \\ in the middle of a longer run of text",
            "\"\\\u{0}\u{1}\u{8}\t\n\u{b}\u{c}\r\u{1f} \u{7f}",
            "tab\tseparated\tREPORT\tfields: 1.00 ms",
            "ünïcödé ✓ 🦀 mixed with \"quotes\"",
            "12345678\"",
            "1234567\u{1}",
        ]
        .map(str::to_owned)
        .to_vec();
        // Every byte value below 0x80 at every position of a word.
        for byte in 0u8..0x80 {
            for pad in 0..9 {
                cases.push(format!(
                    "{}{}{}",
                    "a".repeat(pad),
                    byte as char,
                    "b".repeat(9 - pad)
                ));
            }
        }
        for text in cases {
            let mut ours = Vec::new();
            push_str(&mut ours, &text);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(&text).unwrap(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn numbers_are_written_as_serde_json_writes_them() {
        for n in [0, 7, 10, 99, 1_000, 1_796_010_664_845, u64::MAX] {
            let mut ours = Vec::new();
            push_u64(&mut ours, n);
            assert_eq!(String::from_utf8(ours).unwrap(), n.to_string());
        }
    }
}
