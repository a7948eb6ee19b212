//! What this store writes into JetStream and hands out: the JSON of a queue's config in the
//! key-value bucket, a message's headers and payload, and receipts. Pure functions, no IO.

use async_nats::HeaderMap;
use bytes::{BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use shoal_queue::{EpochMs, QueueConfig, Redrive};

/// The message's id for JetStream's de-duplication window.
pub(crate) const MSG_ID: &str = "Nats-Msg-Id";
/// The message's Shoal id (a UUID), kept through moves to a dead-letter queue.
pub(crate) const ID: &str = "Shoal-Id";
/// When the message was first sent (ms since the epoch), kept through moves.
pub(crate) const SENT: &str = "Shoal-Sent";
/// Length of the attributes' JSON at the start of the payload; absent when there are none.
pub(crate) const ATTRS: &str = "Shoal-Attrs";
/// On a delayed message: when it is due (ms since the epoch).
pub(crate) const DUE: &str = "Shoal-Due";
/// On a delayed message: the incarnation of the queue it is for, so a message for a
/// deleted queue is not moved into a new queue of the same name.
pub(crate) const INCARNATION: &str = "Shoal-Incarnation";

/// A queue as the key-value bucket holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredQueue {
    pub name: String,
    pub visibility_timeout_ms: u64,
    pub retention_ms: u64,
    pub delay_ms: u64,
    pub max_message_bytes: usize,
    pub receive_wait_ms: u64,
    pub dead_letter: Option<String>,
    pub max_receive_count: Option<u32>,
    pub created_at_ms: EpochMs,
    /// Drawn at creation: receipts and delayed messages name it, so neither reaches a
    /// later queue of the same name.
    pub incarnation: u64,
    /// Drawn at creation, never handed out: the key of the receipts' tags (hex). Queues
    /// made before receipts were tagged have none and use their incarnation (weaker: it is
    /// in every receipt) until they are made anew.
    #[serde(default)]
    pub receipt_key: String,
}

impl StoredQueue {
    pub(crate) fn new(
        name: &str,
        config: &QueueConfig,
        created_at_ms: EpochMs,
        incarnation: u64,
        receipt_key: String,
    ) -> Self {
        let mut q = StoredQueue {
            name: name.to_owned(),
            visibility_timeout_ms: 0,
            retention_ms: 0,
            delay_ms: 0,
            max_message_bytes: 0,
            receive_wait_ms: 0,
            dead_letter: None,
            max_receive_count: None,
            created_at_ms,
            incarnation,
            receipt_key,
        };
        q.set(config);
        q
    }

    pub(crate) fn set(&mut self, config: &QueueConfig) {
        self.visibility_timeout_ms = config.visibility_timeout_ms;
        self.retention_ms = config.retention_ms;
        self.delay_ms = config.delay_ms;
        self.max_message_bytes = config.max_message_bytes;
        self.receive_wait_ms = config.receive_wait_ms;
        self.dead_letter = config.redrive.as_ref().map(|r| r.dead_letter.clone());
        self.max_receive_count = config.redrive.as_ref().map(|r| r.max_receive_count);
    }

    pub(crate) fn config(&self) -> QueueConfig {
        QueueConfig {
            visibility_timeout_ms: self.visibility_timeout_ms,
            retention_ms: self.retention_ms,
            delay_ms: self.delay_ms,
            max_message_bytes: self.max_message_bytes,
            receive_wait_ms: self.receive_wait_ms,
            redrive: match (&self.dead_letter, self.max_receive_count) {
                (Some(dead_letter), Some(max_receive_count)) => Some(Redrive {
                    dead_letter: dead_letter.clone(),
                    max_receive_count,
                }),
                _ => None,
            },
        }
    }

    /// The key receipts of this queue are tagged with.
    pub(crate) fn receipt_key(&self) -> String {
        if self.receipt_key.is_empty() {
            format!("{:x}", self.incarnation)
        } else {
            self.receipt_key.clone()
        }
    }

    pub(crate) fn to_bytes(&self) -> Bytes {
        serde_json::to_vec(self)
            .expect("a StoredQueue always serializes")
            .into()
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A message's payload: the attributes' JSON (if any) followed by the body.
pub(crate) fn payload(attributes: Option<&str>, body: &str) -> Bytes {
    let attrs = attributes.unwrap_or("");
    let mut buf = BytesMut::with_capacity(attrs.len() + body.len());
    buf.put_slice(attrs.as_bytes());
    buf.put_slice(body.as_bytes());
    buf.freeze()
}

/// The headers every stored message carries.
pub(crate) fn headers(
    msg_id: &str,
    id: &str,
    sent_at_ms: EpochMs,
    attributes: Option<&str>,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(MSG_ID, msg_id);
    h.insert(ID, id);
    h.insert(SENT, sent_at_ms.to_string().as_str());
    if let Some(a) = attributes {
        h.insert(ATTRS, a.len().to_string().as_str());
    }
    h
}

/// A stored message read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    pub id: String,
    pub sent_at_ms: EpochMs,
    pub attributes: Option<String>,
    pub body: String,
}

fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|v| v.as_str())
}

pub(crate) fn header_i64(headers: Option<&HeaderMap>, name: &str) -> Option<i64> {
    header(headers, name)?.parse().ok()
}

/// Reads a message this store wrote; `Err` names what is wrong with one it did not.
pub(crate) fn read(headers: Option<&HeaderMap>, payload: &[u8]) -> Result<Stored, &'static str> {
    let id = header(headers, ID).ok_or("no Shoal-Id header")?.to_owned();
    let sent_at_ms = header_i64(headers, SENT).ok_or("no Shoal-Sent header")?;
    let attrs_len = match header(headers, ATTRS) {
        None => None,
        Some(n) => Some(n.parse::<usize>().map_err(|_| "a bad Shoal-Attrs header")?),
    };
    let split = attrs_len.unwrap_or(0);
    if split > payload.len() {
        return Err("Shoal-Attrs is longer than the payload");
    }
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| "a payload that is not UTF-8");
    Ok(Stored {
        id,
        sent_at_ms,
        attributes: attrs_len.map(|_| text(&payload[..split])).transpose()?,
        body: text(&payload[split..])?,
    })
}

/// What a receipt names: the queue's incarnation, when its hold ends as this store set it,
/// and the delivery's place in JetStream (the numbers of its ack subject).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Receipt {
    pub incarnation: u64,
    pub deadline_ms: EpochMs,
    pub delivered: u64,
    pub stream_seq: u64,
    pub consumer_seq: u64,
    /// The delivery's timestamp token and pending count, as the ack subject had them.
    pub timestamp: u64,
    pub pending: u64,
}

impl Receipt {
    fn fields(&self) -> String {
        format!(
            "j-{:x}-{}-{}-{}-{}-{}-{}",
            self.incarnation,
            self.deadline_ms,
            self.delivered,
            self.stream_seq,
            self.consumer_seq,
            self.timestamp,
            self.pending
        )
    }

    fn tag(fields: &str, key: &str) -> Hmac<sha2::Sha256> {
        let mut mac =
            Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
        mac.update(fields.as_bytes());
        mac
    }

    /// The receipt as handed out: its fields and a tag (128 bits of HMAC-SHA256 under the
    /// queue's receipt key), so only this store can make one.
    pub(crate) fn encode(&self, key: &str) -> String {
        let fields = self.fields();
        let tag = Self::tag(&fields, key).finalize().into_bytes();
        let hex: String = tag[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("{fields}-{hex}")
    }

    /// Reads a receipt this store made for the queue whose receipt key is `key`; `None` for
    /// anything else (malformed, another queue's, forged).
    pub(crate) fn parse(handle: &str, key: &str) -> Option<Receipt> {
        let (fields, hex) = handle.rsplit_once('-')?;
        if hex.len() != 32 {
            return None;
        }
        let tag: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
            .collect::<Option<_>>()?;
        Self::tag(fields, key).verify_truncated_left(&tag).ok()?;
        let mut parts = fields.strip_prefix("j-")?.split('-');
        let incarnation = u64::from_str_radix(parts.next()?, 16).ok()?;
        let mut num = || parts.next()?.parse::<u64>().ok();
        let r = Receipt {
            incarnation,
            deadline_ms: i64::try_from(num()?).ok()?,
            delivered: num()?,
            stream_seq: num()?,
            consumer_seq: num()?,
            timestamp: num()?,
            pending: num()?,
        };
        parts.next().is_none().then_some(r)
    }

    /// The ack subject of this delivery (JetStream's v1 form, which servers from 2.2 on
    /// accept), built from numbers only: a receipt cannot point an ack anywhere else.
    pub(crate) fn ack_subject(&self, stream: &str, consumer: &str) -> String {
        format!(
            "$JS.ACK.{stream}.{consumer}.{}.{}.{}.{}.{}",
            self.delivered, self.stream_seq, self.consumer_seq, self.timestamp, self.pending
        )
    }
}

/// The delivery numbers of an ack subject, v1 (`$JS.ACK.<stream>.<consumer>.` and five
/// numbers) or v2 (with domain and account hash first, and a token after):
/// (delivered, stream seq, consumer seq, timestamp, pending).
pub(crate) fn ack_numbers(reply: &str) -> Option<[u64; 5]> {
    let tokens: Vec<&str> = reply.split('.').collect();
    let start = match tokens.len() {
        9 => 4,
        n if n >= 11 => 6,
        _ => return None,
    };
    if tokens.first() != Some(&"$JS") || tokens.get(1) != Some(&"ACK") {
        return None;
    }
    let mut out = [0u64; 5];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = tokens.get(start + i)?.parse().ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip_and_refuse_garbage() {
        let r = Receipt {
            incarnation: 0xdead_beef,
            deadline_ms: 1_700_000_000_000,
            delivered: 2,
            stream_seq: 10,
            consumer_seq: 12,
            timestamp: 1_700_000_000_000_000_000,
            pending: 3,
        };
        let handle = r.encode("key");
        assert_eq!(Receipt::parse(&handle, "key"), Some(r));
        // Another queue's key, or any field changed, and the tag no longer matches.
        assert_eq!(Receipt::parse(&handle, "other key"), None);
        let forged = handle.replacen("-10-", "-11-", 1);
        assert_ne!(forged, handle);
        assert_eq!(Receipt::parse(&forged, "key"), None);
        for bad in [
            "",
            "garbage",
            "99-2-3",
            "j-1-2-3",
            "j-zz-1-1-1-1-1-1",
            &format!("{handle}-9"),
            &handle[..handle.len() - 1],
        ] {
            assert_eq!(Receipt::parse(bad, "key"), None, "{bad:?}");
        }
        assert_eq!(
            r.ack_subject("S", "C"),
            "$JS.ACK.S.C.2.10.12.1700000000000000000.3"
        );
    }

    #[test]
    fn ack_subjects_of_both_forms_are_read() {
        assert_eq!(ack_numbers("$JS.ACK.S.C.1.2.3.4.5"), Some([1, 2, 3, 4, 5]));
        assert_eq!(
            ack_numbers("$JS.ACK.dom.hash.S.C.1.2.3.4.5.tok"),
            Some([1, 2, 3, 4, 5])
        );
        assert_eq!(ack_numbers("_INBOX.x"), None);
    }

    #[test]
    fn messages_round_trip_with_and_without_attributes() {
        let h = headers("m", "id", 5, Some("{\"a\":1}"));
        let p = payload(Some("{\"a\":1}"), "body");
        let s = read(Some(&h), &p).unwrap();
        assert_eq!(s.attributes.as_deref(), Some("{\"a\":1}"));
        assert_eq!(
            (s.body.as_str(), s.sent_at_ms, s.id.as_str()),
            ("body", 5, "id")
        );
        let h = headers("m", "id", 5, None);
        let s = read(Some(&h), &payload(None, "just body")).unwrap();
        assert_eq!((s.attributes, s.body.as_str()), (None, "just body"));
        assert!(read(None, b"x").is_err());
    }
}
