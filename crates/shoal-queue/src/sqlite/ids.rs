//! Message ids, receipt handles and body digests: the values the SQLite backend makes up
//! or derives per message. Kept out of the writer so callers compute them on their own
//! threads; nothing here touches storage.
//!
//! Ids and receipt nonces come from SplitMix64 seeded from the OS's randomness: unique
//! and unguessable enough to tell receipts apart, not a secret (every client with access
//! to a queue is trusted with its messages anyway).

use std::cell::RefCell;
use std::fmt::Write;

use md5::{Digest, Md5};
use uuid::Uuid;

/// SplitMix64 (Steele, Lea and Flood): a 64-bit counter through a mixing function, so
/// no output repeats within 2^64 draws of one generator.
#[derive(Debug, Clone)]
pub(super) struct SplitMix(u64);

impl SplitMix {
    pub fn seeded() -> Self {
        SplitMix(Uuid::new_v4().as_u64_pair().0)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A receipt nonce: positive (it fits SQLite's INTEGER), never 0 (a message never
    /// received has nonce 0, which no receipt may match).
    pub fn nonce(&mut self) -> i64 {
        let n = (self.next_u64() >> 1) as i64;
        n.max(1)
    }
}

thread_local! {
    static IDS: RefCell<SplitMix> = RefCell::new(SplitMix::seeded());
}

/// A fresh version-4 UUID's bytes.
pub(super) fn new_id() -> [u8; 16] {
    let (a, b) = IDS.with(|rng| {
        let mut rng = rng.borrow_mut();
        (rng.next_u64(), rng.next_u64())
    });
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&a.to_le_bytes());
    bytes[8..].copy_from_slice(&b.to_le_bytes());
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .into_bytes()
}

/// The id as SQS shows it (lowercase, hyphenated); unreadable stored bytes show as the
/// nil UUID rather than failing a receive.
pub(super) fn format_id(bytes: &[u8]) -> String {
    Uuid::from_slice(bytes)
        .unwrap_or_default()
        .hyphenated()
        .to_string()
}

/// Lowercase hex MD5 of `text`, as SQS reports a body's digest.
pub(crate) fn md5_hex(text: &str) -> String {
    let digest = Md5::digest(text.as_bytes());
    let mut hex = String::with_capacity(32);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// What a receipt handle names: one receive of one message of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Receipt {
    pub queue: i64,
    pub seq: i64,
    pub nonce: i64,
}

impl Receipt {
    pub fn encode(&self) -> String {
        format!("{:x}-{:x}-{:016x}", self.queue, self.seq, self.nonce)
    }

    /// `None` unless `handle` is exactly what `encode` makes.
    pub fn parse(handle: &str) -> Option<Receipt> {
        if handle.len() > 64 {
            return None;
        }
        let mut parts = handle.split('-');
        let mut field = || -> Option<i64> {
            let part = parts.next()?;
            if part.is_empty() || part.len() > 16 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            i64::try_from(u64::from_str_radix(part, 16).ok()?).ok()
        };
        let receipt = Receipt {
            queue: field()?,
            seq: field()?,
            nonce: field()?,
        };
        (parts.next().is_none() && receipt.nonce != 0).then_some(receipt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_sqs() {
        // The digest SQS documents for the body "This is a test message".
        assert_eq!(
            md5_hex("This is a test message"),
            "fafb00f5732ab283681e124bf8747ed1"
        );
        assert_eq!(md5_hex(""), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn ids_are_v4_and_distinct() {
        let a = Uuid::from_bytes(new_id());
        let b = Uuid::from_bytes(new_id());
        assert_eq!(a.get_version_num(), 4);
        assert_ne!(a, b);
        assert_eq!(format_id(a.as_bytes()), a.hyphenated().to_string());
    }

    #[test]
    fn receipts_round_trip_and_reject_anything_else() {
        let r = Receipt {
            queue: 3,
            seq: 123_456,
            nonce: i64::MAX,
        };
        assert_eq!(Receipt::parse(&r.encode()), Some(r));
        for bad in [
            "",
            "1-2",
            "1-2-0",
            "1-2-3-4",
            "x-2-3",
            "+1-2-3",
            "1--3",
            "1-2-ffffffffffffffff",
            &"1".repeat(70),
        ] {
            assert_eq!(Receipt::parse(bad), None, "{bad:?}");
        }
    }
}
