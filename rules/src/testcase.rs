//! The test-case format of a pack (`tests/*.toml`): initial facts, function
//! mocks and expectations, run by `stoa test`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::diagnostic::{Code, Diagnostic, Pos, SourceMap};
use crate::value::{Fields, Sym, Value};

/// A fact as written in test files, fact files and API requests:
/// `{ type = "Chunk", fields = { index = 3 } }`.
#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FactSpec {
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default)]
    pub fields: Fields,
}

impl FactSpec {
    pub fn sym(&self) -> Sym {
        Sym::new(&self.ty)
    }
}

/// One scripted answer of a mock.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    #[serde(default)]
    pub returns: Option<Value>,
    #[serde(default)]
    pub error: Option<MockError>,
    /// How long the attempt runs before this answer (virtual time in
    /// tests), e.g. "10m"; the mock's `after` if unset.
    #[serde(default)]
    pub after: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockError {
    pub message: String,
    #[serde(default = "yes")]
    pub retryable: bool,
}

fn yes() -> bool {
    true
}

/// Answers calls of one function, optionally only those whose arguments
/// contain `args`. `returns`/`error` answer every attempt; `answers`
/// answers attempts in turn and repeats its last answer; `after` makes each
/// attempt take that long (virtual time); `never` takes every attempt and
/// never answers. An attempt that runs past the function's `timeout`, or
/// past its `heartbeat` timeout with `heartbeats = false` (a stalled
/// worker), times out there, and is retried as the function's policy says:
/// so a timer racing a slow call and both timeouts can be tested.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mock {
    pub function: toml::Spanned<String>,
    #[serde(default)]
    pub args: Option<Value>,
    #[serde(default)]
    pub returns: Option<Value>,
    #[serde(default)]
    pub error: Option<MockError>,
    #[serde(default)]
    pub answers: Vec<Answer>,
    #[serde(default)]
    pub never: bool,
    /// How long each attempt runs before it answers, e.g. "10m".
    #[serde(default)]
    pub after: Option<String>,
    /// Whether the worker heartbeats while it runs (the SDKs do); false
    /// lets a function's heartbeat timeout end a long attempt.
    #[serde(default = "yes")]
    pub heartbeats: bool,
}

impl Mock {
    pub fn answers(&self) -> Vec<Answer> {
        let mut answers = match self.answers.is_empty() {
            true => vec![Answer { returns: self.returns.clone(), error: self.error.clone(), after: None }],
            false => self.answers.clone(),
        };
        for a in &mut answers {
            if a.after.is_none() {
                a.after = self.after.clone();
            }
        }
        answers
    }

    /// Checks the durations a mock holds; the message names the mock.
    pub fn check(&self) -> Result<(), String> {
        let durations = self.answers.iter().filter_map(|a| a.after.as_ref()).chain(self.after.as_ref());
        for d in durations {
            if let Err(e) = humantime::parse_duration(d) {
                let f = self.function.get_ref();
                return Err(format!("mock of `{f}`: `after = \"{d}\"` is not a duration ({e}); write e.g. \"10m\""));
            }
        }
        Ok(())
    }
}

/// Milliseconds of a duration `Mock::check` accepted.
pub fn after_ms(after: Option<&str>) -> u64 {
    after.and_then(|d| humantime::parse_duration(d).ok()).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactExpectation {
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default)]
    pub fields: Option<Value>,
    /// Exactly this many facts match; without it, at least one.
    #[serde(default)]
    pub count: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `running`, `completed` or `failed`.
    pub status: Option<toml::Spanned<String>>,
    /// Partial match of the completion result.
    pub result: Option<Value>,
    /// Substring of the failure reason.
    pub reason: Option<String>,
    /// Rules fired, exactly in this order.
    pub fired: Option<Vec<toml::Spanned<String>>>,
    /// Rules fired and how often, in any order; rules not named may fire too.
    pub fired_count: Option<BTreeMap<toml::Spanned<String>, u64>>,
    /// Rules that must not fire.
    #[serde(default)]
    pub not_fired: Vec<toml::Spanned<String>>,
    /// Calls rules made, by function (each `call(...)` once, however many
    /// attempts it took).
    pub calls: Option<BTreeMap<toml::Spanned<String>, u64>>,
    /// Attempts by function, over the calls that were answered (a retried
    /// call counts each try; a call still waiting counts none).
    pub attempts: Option<BTreeMap<toml::Spanned<String>, u64>>,
    #[serde(default)]
    pub facts: Vec<FactExpectation>,
    /// Types of which no fact may remain.
    #[serde(default)]
    pub no_facts: Vec<String>,
    /// Signal names emitted by rules, in order.
    pub emitted: Option<Vec<String>>,
    /// Timers still pending at the end.
    pub pending_timers: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    #[serde(default)]
    pub facts: Vec<toml::Spanned<FactSpec>>,
    #[serde(default, rename = "mock")]
    pub mocks: Vec<Mock>,
    #[serde(default)]
    pub expect: Expect,
    /// What happens after the start, in order; answers are drained after each.
    #[serde(default, rename = "step")]
    pub steps: Vec<Step>,
    /// Filled in after parsing: where the case starts.
    #[serde(skip)]
    pub pos: Pos,
}

/// One step of a test after the start: move the virtual clock (due timers
/// fire in order), assert facts, send a signal, or cancel the workflow.
#[derive(Clone, Debug, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// A duration such as "15m": timers due by then fire, in due order.
    #[serde(default)]
    pub advance: Option<toml::Spanned<String>>,
    #[serde(default)]
    pub assert: Vec<FactSpec>,
    #[serde(default)]
    pub signal: Option<SignalSpec>,
    /// Cancel the workflow with this reason (its cleanup rules run; the
    /// deadline is 5 minutes of virtual time).
    #[serde(default)]
    pub cancel: Option<String>,
    /// Change the facts that match, as a `modify` from outside would.
    #[serde(default)]
    pub modify: Option<FactChange>,
    /// Retract the facts that match.
    #[serde(default)]
    pub retract: Option<FactSelector>,
}

/// The facts of a type whose fields contain `fields` (all of that type
/// without it).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactSelector {
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default, rename = "where")]
    pub fields: Option<Value>,
}

/// A `modify` step: the facts `type`/`where` select get `set` (null
/// removes a field).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactChange {
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default, rename = "where")]
    pub fields: Option<Value>,
    pub set: Fields,
}

/// A signal sent by a test step.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalSpec {
    pub name: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub payload: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default, rename = "test")]
    tests: Vec<toml::Spanned<TestCase>>,
}

/// Parses a test file; positions of facts and names are kept for checks.
pub fn parse_tests(path: &Path, src: &str) -> Result<Vec<TestCase>, Diagnostic> {
    let map = SourceMap::new(src);
    let file: TestFile = toml::from_str(src).map_err(|e| {
        let pos = e.span().map(|s| map.pos(s.start)).unwrap_or_default();
        Diagnostic::error(path, pos, Code::TestFile, one_line(e.message()))
    })?;
    for t in &file.tests {
        if let Some(e) = t.get_ref().mocks.iter().find_map(|m| m.check().err()) {
            return Err(Diagnostic::error(path, map.pos(t.span().start), Code::TestFile, e));
        }
        for d in t.get_ref().steps.iter().filter_map(|s| s.advance.as_ref()) {
            if let Err(e) = humantime::parse_duration(d.get_ref()) {
                let msg = format!("`advance = \"{}\"` is not a duration ({e}); write e.g. \"15m\"", d.get_ref());
                return Err(Diagnostic::error(path, map.pos(d.span().start), Code::TestFile, msg));
            }
        }
    }
    Ok(file
        .tests
        .into_iter()
        .map(|t| {
            let pos = map.pos(t.span().start);
            TestCase { pos, ..t.into_inner() }
        })
        .collect())
}

/// Whether `actual` contains `expected`: maps by key recursively, everything
/// else by equality.
pub fn partial_match(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Map(e), Value::Map(a)) => e.iter().all(|(k, v)| a.get(k).is_some_and(|av| partial_match(v, av))),
        _ => expected == actual,
    }
}

/// TOML's messages may span lines; a diagnostic is one line, and never an
/// empty one (the TOML parser has no message for a text that stops after
/// `key =`: found by the property tests).
pub(crate) fn one_line(msg: &str) -> String {
    let line = msg.trim().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
    if line.is_empty() {
        return "incomplete TOML: a value or a closing bracket is missing here".into();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_stops_after_an_equals_sign_gets_a_message() {
        let d = parse_tests(Path::new("tests/t.toml"), "[[test]]\nname =").unwrap_err();
        expect_test::expect![
            "tests/t.toml:2:7: error[E0007]: incomplete TOML: a value or a closing bracket is missing here"
        ]
        .assert_eq(&d.to_string());
    }
}
