//! A parsed TOML document as a tree that remembers where each key and value sits in the
//! text, so validation errors can point at a line and column.
//!
//! Owns only the translation from toml's serde output to [`Node`]; it knows nothing about
//! functions or fields. `toml::Spanned<T>` alone is not enough here: implicit tables (the
//! `functions` in `[functions.hello]`) carry no span, and a TOML datetime arrives as a
//! one-key map whose key has no span, and both make `Spanned` fail outright. So we speak
//! the protocol `toml::Spanned` speaks and fall back gracefully where no span exists.

use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

// The private serde protocol behind `toml::Spanned` (crate serde_spanned) and toml's
// datetime marker. They are stable in practice; `tests::keys_and_values_have_spans`
// fails loudly if a toml upgrade ever changes them.
const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: &[&str] = &[SPANNED_START, SPANNED_END, SPANNED_VALUE];
const DATETIME_FIELD: &str = "$__toml_private_datetime";

/// A value and, when toml knows it, its byte range in the source text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) span: Option<Range<usize>>,
    pub(crate) kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// Kept as text: a manifest never wants one, we only need to say what we got.
    Datetime(String),
    Array(Vec<Node>),
    /// Entries in document order, so the first problem in the file is reported first.
    Table(Vec<(Key, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Key {
    pub(crate) name: String,
    pub(crate) span: Option<Range<usize>>,
}

impl Node {
    pub(crate) fn start(&self) -> Option<usize> {
        self.span.as_ref().map(|s| s.start)
    }
}

impl Key {
    pub(crate) fn start(&self) -> Option<usize> {
        self.span.as_ref().map(|s| s.start)
    }
}

/// Parses a whole document; the root is always a table.
pub(crate) fn parse(text: &str) -> Result<Node, toml::de::Error> {
    SpannedSeed.deserialize(toml::de::Deserializer::new(text))
}

/// Asks for a value with its span; gets a plain value where toml has no span to give.
struct SpannedSeed;

impl<'de> DeserializeSeed<'de> for SpannedSeed {
    type Value = Node;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, NodeVisitor)
    }
}

/// The value inside a span wrapper: asking for a span again would loop forever.
struct PlainSeed;

impl<'de> DeserializeSeed<'de> for PlainSeed {
    type Value = Node;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        let node = SpannedSeed.deserialize(d)?;
        match node.kind {
            Kind::String(name) => Ok(Key {
                name,
                span: node.span,
            }),
            _ => Err(de::Error::custom("table keys must be strings")),
        }
    }
}

fn plain(kind: Kind) -> Node {
    Node { span: None, kind }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(plain(Kind::Boolean(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(plain(Kind::Integer(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        i64::try_from(v)
            .map(|v| plain(Kind::Integer(v)))
            .map_err(|_| E::custom("integer out of range"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(plain(Kind::Float(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(plain(Kind::String(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(plain(Kind::String(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(SpannedSeed)? {
            items.push(item);
        }
        Ok(plain(Kind::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let Some(first) = map.next_key_seed(KeySeed)? else {
            return Ok(plain(Kind::Table(Vec::new())));
        };
        match first.name.as_str() {
            SPANNED_START => {
                let start: usize = map.next_value()?;
                expect_key(&mut map, SPANNED_END)?;
                let end: usize = map.next_value()?;
                expect_key(&mut map, SPANNED_VALUE)?;
                let mut node = map.next_value_seed(PlainSeed)?;
                node.span = Some(start..end);
                Ok(node)
            }
            DATETIME_FIELD => Ok(plain(Kind::Datetime(map.next_value()?))),
            _ => {
                let mut entries = vec![(first, map.next_value_seed(SpannedSeed)?)];
                while let Some(key) = map.next_key_seed(KeySeed)? {
                    let value = map.next_value_seed(SpannedSeed)?;
                    entries.push((key, value));
                }
                Ok(plain(Kind::Table(entries)))
            }
        }
    }
}

fn expect_key<'de, A: MapAccess<'de>>(map: &mut A, want: &str) -> Result<(), A::Error> {
    match map.next_key_seed(KeySeed)? {
        Some(key) if key.name == want => Ok(()),
        _ => Err(de::Error::custom(format!("expected span field {want}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str, span: &Option<Range<usize>>) -> String {
        text[span.clone().expect("span")].to_owned()
    }

    #[test]
    fn keys_and_values_have_spans() {
        let text = "[functions.hello]\nmemory = 128\nenv = { A = \"x\" }\n";
        let root = parse(text).unwrap();
        let Kind::Table(top) = &root.kind else {
            panic!("root")
        };
        let (functions, fns) = &top[0];
        assert_eq!(functions.name, "functions");
        let Kind::Table(fns) = &fns.kind else {
            panic!("functions")
        };
        let (hello, body) = &fns[0];
        assert_eq!(at(text, &hello.span), "hello");
        assert!(at(text, &body.span).starts_with("[functions.hello]"));
        let Kind::Table(fields) = &body.kind else {
            panic!("hello")
        };
        assert_eq!(at(text, &fields[0].0.span), "memory");
        assert_eq!(at(text, &fields[0].1.span), "128");
        assert_eq!(fields[0].1.kind, Kind::Integer(128));
        let Kind::Table(env) = &fields[1].1.kind else {
            panic!("env")
        };
        assert_eq!(at(text, &env[0].0.span), "A");
        assert_eq!(at(text, &env[0].1.span), "\"x\"");
    }

    #[test]
    fn datetimes_and_arrays_survive() {
        let text = "a = 00:05:00\nb = [1, \"two\"]\n";
        let root = parse(text).unwrap();
        let Kind::Table(top) = &root.kind else {
            panic!("root")
        };
        assert_eq!(top[0].1.kind, Kind::Datetime("00:05:00".into()));
        assert_eq!(at(text, &top[0].1.span), "00:05:00");
        let Kind::Array(items) = &top[1].1.kind else {
            panic!("array")
        };
        assert_eq!(items[1].kind, Kind::String("two".into()));
        assert_eq!(at(text, &items[1].span), "\"two\"");
    }
}
