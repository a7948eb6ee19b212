//! A YAML document as a tree whose every node knows its line and column, built from
//! saphyr-parser's events: what serverless.yml warnings and errors point at. Anchors and
//! aliases are expanded, and `<<` merge keys folded into their mapping (keys written in the
//! mapping win). Scalars stay text with their style, so a quoted `"512"` and a plain `512`
//! can be told apart where it matters.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A node and where it starts (1-based line and column).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub kind: Kind,
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    /// A scalar as written; `plain` when unquoted (so `true`, `12` and `~` are typed).
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Keys in order; each key is a node too, for its position.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The text of a scalar key or value.
    pub fn text(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// A plain `~`, `null`, or nothing at all.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The value under `key`, if this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.text() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// What a node is, for messages.
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            Kind::Scalar { .. } if self.is_null() => "nothing",
            Kind::Scalar { .. } => "a scalar",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
}

/// Where and why the text is not YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct YamlError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Parse the first document of `text`; an empty document is an empty mapping.
pub(crate) fn parse(text: &str) -> Result<Node, YamlError> {
    let mut builder = Builder {
        events: Parser::new_from_str(text),
        anchors: HashMap::new(),
    };
    loop {
        let (event, span) = builder.next()?;
        match event {
            Event::StreamStart | Event::DocumentStart(_) | Event::Nothing => continue,
            Event::StreamEnd | Event::DocumentEnd => {
                return Ok(Node {
                    kind: Kind::Map(Vec::new()),
                    line: 1,
                    column: 1,
                })
            }
            event => return builder.node(event, span),
        }
    }
}

struct Builder<'a> {
    events: Parser<'a, saphyr_parser::StrInput<'a>>,
    anchors: HashMap<usize, Node>,
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), YamlError> {
        match self.events.next_event() {
            Some(Ok(event)) => Ok(event),
            Some(Err(e)) => Err(YamlError {
                line: e.marker().line(),
                column: e.marker().col() + 1,
                message: e.info().to_owned(),
            }),
            None => Err(YamlError {
                line: 1,
                column: 1,
                message: "unexpected end of the document".into(),
            }),
        }
    }

    fn node(&mut self, event: Event<'a>, span: Span) -> Result<Node, YamlError> {
        let (line, column) = (span.start.line(), span.start.col() + 1);
        let at = |kind| Node { kind, line, column };
        let (node, anchor) = match event {
            Event::Scalar(text, style, anchor, _) => (
                at(Kind::Scalar {
                    text: text.into_owned(),
                    plain: style == ScalarStyle::Plain,
                }),
                anchor,
            ),
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().ok_or(YamlError {
                    line,
                    column,
                    message: "an alias to an anchor that is not defined".into(),
                })?;
                return Ok(node);
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (event, span) = self.next()?;
                    if event == Event::SequenceEnd {
                        break;
                    }
                    items.push(self.node(event, span)?);
                }
                (at(Kind::Seq(items)), anchor)
            }
            Event::MappingStart(anchor, _) => {
                let mut entries: Vec<(Node, Node)> = Vec::new();
                let mut merged: Vec<(Node, Node)> = Vec::new();
                loop {
                    let (event, span) = self.next()?;
                    if event == Event::MappingEnd {
                        break;
                    }
                    let key = self.node(event, span)?;
                    let (event, span) = self.next()?;
                    let value = self.node(event, span)?;
                    if key.text() == Some("<<") {
                        let sources = match value.kind {
                            Kind::Seq(items) => items,
                            _ => vec![value],
                        };
                        for source in sources {
                            if let Kind::Map(more) = source.kind {
                                merged.extend(more);
                            }
                        }
                        continue;
                    }
                    entries.push((key, value));
                }
                for (key, value) in merged {
                    if !entries.iter().any(|(k, _)| k.text() == key.text()) {
                        entries.push((key, value));
                    }
                }
                (at(Kind::Map(entries)), anchor)
            }
            other => {
                return Err(YamlError {
                    line,
                    column,
                    message: format!("unexpected {other:?}"),
                })
            }
        };
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_know_their_lines_and_aliases_expand() {
        let doc =
            parse("a: 1\nb:\n  - x\n  - 'y'\nc: &base\n  k: v\nd:\n  <<: *base\n  j: w\n").unwrap();
        let b = doc.get("b").unwrap();
        let Kind::Seq(items) = &b.kind else { panic!() };
        assert_eq!((items[1].line, items[1].column), (4, 5));
        assert_eq!(
            items[1].kind,
            Kind::Scalar {
                text: "y".into(),
                plain: false
            }
        );
        let d = doc.get("d").unwrap();
        assert_eq!(d.get("k").and_then(Node::text), Some("v"));
        assert_eq!(d.get("j").and_then(Node::text), Some("w"));
        assert!(doc.get("a").unwrap().text() == Some("1"));
    }

    #[test]
    fn broken_yaml_says_where() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.line >= 1, "{e:?}");
        assert!(parse("").unwrap().get("x").is_none());
    }
}
