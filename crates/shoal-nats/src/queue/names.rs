//! Where each queue lives in JetStream: the names of its stream, subjects and keys. Queue
//! names allow `:` (the core's internal queues, `async:NAME`) and schedule keys allow more,
//! which NATS names and subjects do not; everything here encodes them injectively. Pure
//! functions, no IO.

/// The longest stream name this store makes: the server keeps each stream in a directory
/// of that name, and file names stop at 255 bytes.
const MAX_STREAM_NAME: usize = 255;

/// Encodes a queue name as one NATS subject token and stream-name suffix: letters, digits
/// and `-` stay, `_` becomes `__`, `:` becomes `_c`, any other byte `_xHH`. The code is
/// prefix-free, so distinct names stay distinct.
pub(crate) fn token(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for b in name.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' => out.push(b as char),
            b'_' => out.push_str("__"),
            b':' => out.push_str("_c"),
            other => out.push_str(&format!("_x{other:02X}")),
        }
    }
    out
}

/// Encodes any string as a key-value key: letters, digits, `-` and `_` stay, every other
/// byte becomes `=HH`. Reversible with [`decode_key`].
pub(crate) fn key(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for b in name.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => out.push(b as char),
            other => out.push_str(&format!("={other:02X}")),
        }
    }
    out
}

/// The inverse of [`key`]; `None` for a key this store did not write.
pub(crate) fn decode_key(key: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(key.len());
    let mut it = key.bytes();
    while let Some(b) = it.next() {
        if b == b'=' {
            let hi = (it.next()? as char).to_digit(16)?;
            let lo = (it.next()? as char).to_digit(16)?;
            bytes.push((hi * 16 + lo) as u8);
        } else {
            bytes.push(b);
        }
    }
    String::from_utf8(bytes).ok()
}

/// The names one store uses, all under one prefix so two Shoal clusters (or two tests)
/// can share a NATS server.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    /// `prefix` must be 1–32 of `[A-Za-z0-9_-]` (valid in bucket, stream and subject names).
    pub(crate) fn new(prefix: &str) -> Result<Names, String> {
        let ok = !prefix.is_empty()
            && prefix.len() <= 32
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Names {
                prefix: prefix.to_owned(),
            })
        } else {
            Err(format!(
                "prefix {prefix:?}: 1 to 32 of letters, digits, \"_\" and \"-\""
            ))
        }
    }

    /// The key-value bucket of queue configs (key: [`key`] of the queue name).
    pub(crate) fn queues_bucket(&self) -> String {
        format!("{}_queues", self.prefix)
    }

    /// The key-value bucket of schedules' last fires (key: [`key`] of the schedule key).
    pub(crate) fn schedules_bucket(&self) -> String {
        format!("{}_schedules", self.prefix)
    }

    /// The work-queue stream of one queue; `None` when the encoded name is too long.
    pub(crate) fn stream(&self, queue: &str) -> Option<String> {
        let name = format!("{}_q_{}", self.prefix, token(queue));
        (name.len() <= MAX_STREAM_NAME).then_some(name)
    }

    /// The subject a queue's stream holds.
    pub(crate) fn subject(&self, queue: &str) -> String {
        format!("{}.q.{}", self.prefix, token(queue))
    }

    /// The stream holding every queue's delayed messages until they are due.
    pub(crate) fn delay_stream(&self) -> String {
        format!("{}_delayed", self.prefix)
    }

    /// The subject of one queue's delayed messages (in [`Names::delay_stream`]).
    pub(crate) fn delay_subject(&self, queue: &str) -> String {
        format!("{}.d.{}", self.prefix, token(queue))
    }

    pub(crate) fn delay_subjects(&self) -> String {
        format!("{}.d.>", self.prefix)
    }

    /// The plain NATS subject a send announces itself on, so waiting nodes wake up.
    pub(crate) fn wake_subject(&self, queue: &str) -> String {
        format!("{}.wake.{}", self.prefix, token(queue))
    }

    pub(crate) fn wake_subjects(&self) -> String {
        format!("{}.wake.>", self.prefix)
    }

    /// The queue token a wake-up subject names.
    pub(crate) fn wake_token<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".wake.")
    }

    /// The queue token a delayed message's subject names.
    pub(crate) fn delay_token<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".d.")
    }
}

/// The durable pull consumer every node receives a queue's messages through.
pub(crate) const CONSUMER: &str = "receive";
/// The durable pull consumer that moves due delayed messages into their queues.
pub(crate) const MOVER: &str = "mover";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_injective_and_nats_safe() {
        let names = [
            "a_c", "a:", "a__", "a_:", "async:f", "async_cf", "x-y", "a::b",
        ];
        let tokens: std::collections::BTreeSet<_> = names.iter().map(|n| token(n)).collect();
        assert_eq!(tokens.len(), names.len(), "{tokens:?}");
        for t in &tokens {
            assert!(t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        }
        assert_eq!(token("async:hello_world"), "async_chello__world");
    }

    #[test]
    fn keys_round_trip() {
        for name in ["async:f", "f:0", "a=b", "plain_name-1", "ü:x.y"] {
            let k = key(name);
            assert!(k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)));
            assert_eq!(decode_key(&k).as_deref(), Some(name));
        }
        assert_eq!(decode_key("bad=Z1"), None);
    }

    #[test]
    fn names_keep_to_their_prefix() {
        let n = Names::new("shoal").unwrap();
        assert_eq!(n.stream("async:f").unwrap(), "shoal_q_async_cf");
        assert_eq!(n.subject("async:f"), "shoal.q.async_cf");
        assert_eq!(
            n.wake_token(&n.wake_subject("q_1")),
            Some(token("q_1").as_str())
        );
        assert_eq!(n.delay_token(&n.delay_subject("a:b")), Some("a_cb"));
        assert!(n.stream(&format!("a:{}", "_".repeat(150))).is_none());
        assert!(Names::new("a.b").is_err());
        assert!(Names::new("").is_err());
    }
}
