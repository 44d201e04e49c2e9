//! Byte-level mutations of valid-looking inputs: truncation, deletion,
//! duplication, bit flips, inserted tokens and runs of them (deep
//! nesting, huge identifiers). The result may not be UTF-8.

use proptest::prelude::*;
use proptest::sample::Index;

#[derive(Clone, Debug)]
pub enum Mutation {
    Truncate(Index),
    Delete(Index, usize),
    /// Copies `len` bytes from the first index to the second.
    Duplicate(Index, usize, Index),
    Flip(Index, u8),
    Insert(Index, &'static str),
    /// A token repeated: `((((…`, a huge identifier, a wall of quotes.
    Repeat(Index, &'static str, usize),
}

pub fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let at = |i: &Index, len: usize| i.index(len + 1);
    match m {
        Mutation::Truncate(i) => {
            let n = at(i, bytes.len());
            bytes.truncate(n);
        }
        Mutation::Delete(i, len) => {
            let s = at(i, bytes.len());
            let e = (s + len).min(bytes.len());
            bytes.drain(s..e);
        }
        Mutation::Duplicate(from, len, to) => {
            let s = at(from, bytes.len());
            let e = (s + len).min(bytes.len());
            let piece = bytes[s..e].to_vec();
            let t = at(to, bytes.len());
            bytes.splice(t..t, piece);
        }
        Mutation::Flip(i, bit) => {
            if !bytes.is_empty() {
                let n = i.index(bytes.len());
                bytes[n] ^= 1 << (bit % 8);
            }
        }
        Mutation::Insert(i, tok) => {
            let t = at(i, bytes.len());
            bytes.splice(t..t, tok.bytes());
        }
        Mutation::Repeat(i, tok, n) => {
            let t = at(i, bytes.len());
            bytes.splice(t..t, tok.repeat(*n).into_bytes());
        }
    }
}

/// Mutations drawn with `tokens` as the inserted pieces.
pub fn mutations(tokens: &'static [&'static str], max: usize) -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), 1usize..40).prop_map(|(i, n)| Mutation::Delete(i, n)),
        2 => (any::<Index>(), 1usize..200, any::<Index>()).prop_map(|(a, n, b)| Mutation::Duplicate(a, n, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        4 => (any::<Index>(), proptest::sample::select(tokens)).prop_map(|(i, t)| Mutation::Insert(i, t)),
        1 => (any::<Index>(), proptest::sample::select(tokens), 2usize..3000).prop_map(|(i, t, n)| Mutation::Repeat(i, t, n)),
    ];
    proptest::collection::vec(one, 1..=max)
}

/// Pieces of rule files worth inserting.
pub const RULE_TOKENS: &[&str] = &[
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    "#{",
    "\"",
    "`",
    "'",
    "\\",
    "/*",
    "*/",
    "//",
    "#",
    "\n",
    "\r\n",
    "\t",
    ",",
    ":",
    ";",
    ".",
    "rule \"",
    "rule \"x\" {",
    "match {",
    "action {",
    "not ",
    "exists ",
    "count(",
    "test(",
    "salience ",
    "-",
    "no-loop",
    "==",
    "&&",
    "!",
    "in ",
    "é",
    "\u{feff}",
    "\u{0}",
    "\u{7f}",
    "𝕏",
    "${",
    "x",
    "Job",
    "9",
    "_",
    "__it",
    "this.",
    "call(",
    "eval(",
    "fn f(x) { f(x) }",
];

/// Pieces of TOML worth inserting.
pub const TOML_TOKENS: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "=",
    "\"",
    "'",
    "'''",
    "\"\"\"",
    "\\",
    "\\u0000",
    "\\uD800",
    ",",
    ".",
    "\n",
    "#",
    "\u{0}",
    "é",
    "nan",
    "inf",
    "-inf",
    "0",
    "-1",
    "9223372036854775807",
    "9223372036854775808",
    "1e999",
    "true",
    "1979-05-27T07:32:00Z",
    "x",
    "a.b",
    "[pack]",
    "[limits]",
    "[functions.f]",
    "[schedules.s]",
    "[facts.T]",
    "[[test]]",
    "[test.expect]",
    "[[test.mock]]",
    "[[test.step]]",
    "cron = ",
    "timezone = ",
    "facts = ",
];
