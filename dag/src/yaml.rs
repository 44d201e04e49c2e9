//! YAML text to a tree of nodes that each know their position, built from
//! `saphyr-parser`'s events (the one place that knows that crate), so that
//! every later diagnostic can point at a key or a value.

use std::borrow::Cow;

use saphyr_parser::{Event, Parser, ScalarStyle};
use stoa_rules::Pos;

/// The deepest nesting a definition may have: nothing a user writes
/// recurses without a bound.
pub const MAX_DEPTH: usize = 64;

/// A scalar with its YAML 1.2 core-schema reading.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Scalar(Scalar),
    Seq(Vec<Node>),
    /// Keys in document order; a repeated key is reported by the reader.
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub kind: Kind,
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar(Scalar::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// What the node is, for messages ("expected a list, found a map").
    pub fn what(&self) -> &'static str {
        match &self.kind {
            Kind::Scalar(Scalar::Null) => "null",
            Kind::Scalar(Scalar::Bool(_)) => "a bool",
            Kind::Scalar(Scalar::Int(_)) => "an int",
            Kind::Scalar(Scalar::Float(_)) => "a float",
            Kind::Scalar(Scalar::Str(_)) => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a map",
        }
    }

    /// The value of `key` in a map node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(entries) => entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// A syntax error: where, and what.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

fn pos_of(m: saphyr_parser::Marker) -> Pos {
    Pos::new(m.line() as u32, m.col() as u32 + 1)
}

fn scalar(text: Cow<'_, str>, style: ScalarStyle) -> Scalar {
    if style != ScalarStyle::Plain {
        return Scalar::Str(text.into_owned());
    }
    match &*text {
        "" | "~" | "null" | "Null" | "NULL" => Scalar::Null,
        "true" | "True" | "TRUE" => Scalar::Bool(true),
        "false" | "False" | "FALSE" => Scalar::Bool(false),
        t => {
            let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(i) = t.parse::<i64>() {
                    return Scalar::Int(i);
                }
            }
            let floaty = digits.bytes().next().is_some_and(|b| b.is_ascii_digit() || b == b'.')
                && digits.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
            match t.parse::<f64>() {
                Ok(f) if floaty && f.is_finite() => Scalar::Float(f),
                _ => Scalar::Str(t.to_string()),
            }
        }
    }
}

/// Parses one YAML document. Anchors, aliases and tags are refused (an
/// alias can make a small text a huge tree), and so is nesting past
/// `MAX_DEPTH`.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    enum Open {
        Seq(Pos, Vec<Node>),
        Map(Pos, Vec<(Node, Node)>, Option<Node>),
    }
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Node> = None;
    let mut docs = 0;
    for ev in Parser::new_from_str(text) {
        let (ev, span) = ev.map_err(|e| SyntaxError { pos: pos_of(*e.marker()), message: e.info().to_string() })?;
        let pos = pos_of(span.start);
        let refused = |what: &str| SyntaxError { pos, message: format!("{what} are not supported in a definition") };
        let done = match ev {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                docs += 1;
                if docs > 1 {
                    return Err(SyntaxError { pos, message: "one document per file (found a second `---`)".into() });
                }
                None
            }
            Event::Alias(_) => return Err(refused("anchors and aliases")),
            Event::Scalar(text, style, anchor, tag) => {
                if anchor != 0 {
                    return Err(refused("anchors and aliases"));
                }
                if tag.is_some() {
                    return Err(refused("tags"));
                }
                Some(Node { pos, kind: Kind::Scalar(scalar(text, style)) })
            }
            Event::SequenceStart(anchor, ref tag) | Event::MappingStart(anchor, ref tag) => {
                if anchor != 0 {
                    return Err(refused("anchors and aliases"));
                }
                if tag.is_some() {
                    return Err(refused("tags"));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(SyntaxError { pos, message: format!("nested more than {MAX_DEPTH} deep") });
                }
                stack.push(if matches!(ev, Event::SequenceStart(..)) {
                    Open::Seq(pos, Vec::new())
                } else {
                    Open::Map(pos, Vec::new(), None)
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Open::Seq(p, items)) => Some(Node { pos: p, kind: Kind::Seq(items) }),
                Some(Open::Map(p, entries, _)) => Some(Node { pos: p, kind: Kind::Map(entries) }),
                None => None,
            },
        };
        if let Some(node) = done {
            match stack.last_mut() {
                Some(Open::Seq(_, items)) => items.push(node),
                Some(Open::Map(_, entries, key)) => match key.take() {
                    Some(k) => entries.push((k, node)),
                    None => *key = Some(node),
                },
                None => root = Some(node),
            }
        }
    }
    Ok(root.unwrap_or(Node { pos: Pos::new(1, 1), kind: Kind::Scalar(Scalar::Null) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_know_their_positions() {
        let n = parse("id: x\nsteps:\n  - id: a\n    n: 3\n").unwrap();
        let steps = n.get("steps").unwrap();
        assert_eq!(steps.pos, Pos::new(3, 3));
        let Kind::Seq(items) = &steps.kind else { panic!() };
        assert_eq!(items[0].get("n").unwrap().kind, Kind::Scalar(Scalar::Int(3)));
        assert_eq!(items[0].get("n").unwrap().pos, Pos::new(4, 8));
        assert_eq!(n.get("id").unwrap().pos, Pos::new(1, 5));
    }

    #[test]
    fn scalars_follow_the_core_schema() {
        let n = parse("[1, -2, 1.5, true, null, '3', x, 1e3, .5, 1.2.3]").unwrap();
        let Kind::Seq(items) = n.kind else { panic!() };
        let got: Vec<Scalar> = items
            .into_iter()
            .map(|n| match n.kind {
                Kind::Scalar(s) => s,
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                Scalar::Int(1),
                Scalar::Int(-2),
                Scalar::Float(1.5),
                Scalar::Bool(true),
                Scalar::Null,
                Scalar::Str("3".into()),
                Scalar::Str("x".into()),
                Scalar::Float(1000.0),
                Scalar::Float(0.5),
                Scalar::Str("1.2.3".into()),
            ]
        );
    }

    #[test]
    fn aliases_and_deep_nesting_are_refused() {
        let e = parse("a: &x [1]\nb: *x\n").unwrap_err();
        assert_eq!(e.message, "anchors and aliases are not supported in a definition");
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(parse(&deep).unwrap_err().message.contains("nested more than 64"));
        let e = parse("a: [1,\n").unwrap_err();
        assert_eq!(e.pos.line, 2);
    }
}
