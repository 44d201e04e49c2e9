//! The timeline: every turn's input, firings, fact changes, invocations,
//! results and errors, in order. It is what a user reads to learn why a
//! workflow is where it is.

use serde::{Deserialize, Serialize};
use stoa_rules::{FieldList, Sym, Value};

use crate::fact::{FactId, InvocationId};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the workflow's timeline, from 1; watch resumes from it.
    pub seq: u64,
    pub turn: u64,
    /// Milliseconds since the Unix epoch (virtual in tests).
    pub at_ms: u64,
    /// Microseconds since the Unix epoch at which the server started to
    /// commit the turn; zero outside the server. Consecutive turns' stamps
    /// give the latency of each hop, which `at_ms` is too coarse for and a
    /// watcher's arrival times blur (it receives turns in bursts).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub at_us: u64,
    pub event: Event,
}

pub(crate) fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Which section of a rule ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SectionKind {
    Action,
    Reaction,
    Error,
}

impl SectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SectionKind::Action => "action",
            SectionKind::Reaction => "reaction",
            SectionKind::Error => "error",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    TurnStarted {
        input: String,
    },
    Fired {
        rule: String,
        section: SectionKind,
        facts: Vec<(FactId, u32)>,
    },
    Inserted {
        id: FactId,
        #[serde(rename = "type")]
        ty: Sym,
        fields: FieldList,
    },
    Modified {
        id: FactId,
        #[serde(rename = "type")]
        ty: Sym,
        version: u32,
        before: FieldList,
        after: FieldList,
    },
    Retracted {
        id: FactId,
        #[serde(rename = "type")]
        ty: Sym,
        version: u32,
    },
    Invoked(Box<Invoked>),
    ResultApplied {
        invocation: InvocationId,
        ok: bool,
        value: Value,
        attempts: u32,
    },
    InvocationCancelled {
        invocation: InvocationId,
        reason: String,
    },
    Log {
        rule: String,
        message: String,
    },
    Completed {
        result: Value,
    },
    Failed {
        reason: String,
    },
    /// Cancelled (after its cleanup) or terminated.
    Cancelled {
        reason: String,
    },
    /// The turn was rolled back; `fired` counts what fired in it, by rule.
    TurnFailed {
        error: String,
        firings: u64,
        fired: Vec<(String, u64)>,
    },
    TurnCommitted {
        firings: u64,
    },
    TimerSet {
        id: u64,
        due_ms: u64,
        #[serde(rename = "type")]
        ty: Sym,
        rule: String,
    },
    TimerFired {
        id: u64,
        #[serde(rename = "type")]
        ty: Sym,
    },
    TimerCancelled {
        id: u64,
        rule: String,
    },
    SignalEmitted(Box<SignalEmitted>),
    /// An attempt of an invocation failed and was tried again; recorded in
    /// the turn that applies the invocation's outcome, before it.
    AttemptFailed(Box<AttemptFailed>),
    /// The workflow moved to another version of its pack.
    Upgraded(Box<Upgraded>),
    /// The upgrade's turn failed and was rolled back; the version stays.
    UpgradeFailed {
        to: String,
        error: String,
    },
}

// The larger, rarer events are boxed: an entry is as large as its largest
// kind, and a big turn holds hundreds of thousands of entries.

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Invoked {
    pub invocation: InvocationId,
    pub function: String,
    pub args: Value,
    pub priority: i64,
    pub rule: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptFailed {
    pub invocation: InvocationId,
    pub attempt: u32,
    /// When the attempt failed, in ms since the epoch.
    pub at_ms: u64,
    pub error: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignalEmitted {
    pub signal: String,
    pub name: String,
    pub payload: Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Upgraded {
    pub from: String,
    pub to: String,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

// Every kind of entry stays within 96 bytes.
const _: () = assert!(std::mem::size_of::<Entry>() <= 96);

impl Entry {
    /// A due time relative to this entry, so test timelines read the same
    /// on every run: `+15m` (or the absolute milliseconds when earlier).
    fn relative(&self, due_ms: u64) -> String {
        match due_ms.checked_sub(self.at_ms) {
            Some(d) => format!("+{}", humantime::format_duration(std::time::Duration::from_millis(d))),
            None => format!("{due_ms} ms (past)"),
        }
    }

    /// One line for humans, as `stoa run` and `stoa watch` print it.
    pub fn line(&self) -> String {
        match &self.event {
            Event::TurnStarted { input } => format!("turn {} ── {input}", self.turn),
            Event::Fired { rule, section, facts } => {
                let fs: Vec<String> = facts.iter().map(|(id, v)| format!("f{id}@{v}")).collect();
                let sec = match section {
                    SectionKind::Action => "",
                    SectionKind::Reaction => " [reaction]",
                    SectionKind::Error => " [error]",
                };
                format!("  fire   {rule}{sec} ({})", fs.join(", "))
            }
            Event::Inserted { id, ty, fields } => format!("  +      f{id} {ty} {fields:?}"),
            Event::Modified { id, ty, version, before, after } => {
                format!("  ~      f{id}@{version} {ty} {before:?} -> {after:?}")
            }
            Event::Retracted { id, ty, version } => format!("  -      f{id}@{version} {ty}"),
            Event::Invoked(i) => {
                format!("  call   {} {} (priority {}) {}", i.function, i.args, i.priority, i.invocation)
            }
            Event::ResultApplied { invocation, ok, value, attempts } => {
                format!(
                    "  {}  {invocation} after {attempts} attempt(s): {value}",
                    if *ok { "result" } else { "error " }
                )
            }
            Event::InvocationCancelled { invocation, reason } => {
                format!("  cancel {invocation}: {reason}")
            }
            Event::Log { rule, message } => format!("  log    [{rule}] {message}"),
            Event::Completed { result } => format!("  done   completed: {result}"),
            Event::Failed { reason } => format!("  done   failed: {reason}"),
            Event::Cancelled { reason } => format!("  done   {reason}"),
            Event::TurnFailed { error, firings, fired } => {
                let what: Vec<String> = fired.iter().map(|(r, n)| format!("{r} ×{n}")).collect();
                let what = if what.is_empty() { String::new() } else { format!(" [{}]", what.join(", ")) };
                format!("  ERROR  turn rolled back after {firings} firing(s){what}: {error}")
            }
            Event::TurnCommitted { firings } => format!("  commit ({firings} firing(s))"),
            Event::TimerSet { id, due_ms, ty, .. } => {
                format!("  timer  {id} {ty} due at {}", self.relative(*due_ms))
            }
            Event::TimerFired { id, ty } => format!("  timer  {id} {ty} fired"),
            Event::TimerCancelled { id, rule } => format!("  timer  {id} cancelled by \"{rule}\""),
            Event::SignalEmitted(e) => format!("  emit   {} {} ({})", e.name, e.payload, e.signal),
            Event::AttemptFailed(a) => {
                let ago =
                    humantime::format_duration(std::time::Duration::from_millis(self.at_ms.saturating_sub(a.at_ms)));
                format!("  failed {} attempt {} ({ago} before): {}", a.invocation, a.attempt, a.error)
            }
            Event::Upgraded(u) => {
                let Upgraded { from, to, added, changed, removed } = &**u;
                let list = |what: &str, v: &[String]| {
                    if v.is_empty() {
                        String::new()
                    } else {
                        format!("; {what}: {}", v.join(", "))
                    }
                };
                format!(
                    "  upgrade {from} -> {to}{}{}{}",
                    list("new", added),
                    list("changed", changed),
                    list("removed", removed)
                )
            }
            Event::UpgradeFailed { to, error } => format!("  ERROR  upgrade to {to} rolled back: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stoa_rules::Fields;

    #[test]
    fn boxed_and_compact_events_keep_their_json() {
        let fields: Fields = [(Sym::new("n"), Value::Int(1))].into_iter().collect();
        let events = [
            (
                Event::Invoked(Box::new(Invoked {
                    invocation: InvocationId::new("inv_w.1"),
                    function: "f".into(),
                    args: Value::Int(2),
                    priority: 3,
                    rule: "r".into(),
                })),
                r#"{"kind":"invoked","invocation":"inv_w.1","function":"f","args":2,"priority":3,"rule":"r"}"#,
            ),
            (
                Event::SignalEmitted(Box::new(SignalEmitted {
                    signal: "s1".into(),
                    name: "done".into(),
                    payload: Value::Null,
                })),
                r#"{"kind":"signal_emitted","signal":"s1","name":"done","payload":null}"#,
            ),
            (
                Event::AttemptFailed(Box::new(AttemptFailed {
                    invocation: InvocationId::new("inv_w.1"),
                    attempt: 1,
                    at_ms: 5,
                    error: "boom".into(),
                })),
                r#"{"kind":"attempt_failed","invocation":"inv_w.1","attempt":1,"at_ms":5,"error":"boom"}"#,
            ),
            (
                Event::Upgraded(Box::new(Upgraded {
                    from: "1".into(),
                    to: "2".into(),
                    added: vec!["a".into()],
                    changed: vec![],
                    removed: vec![],
                })),
                r#"{"kind":"upgraded","from":"1","to":"2","added":["a"],"changed":[],"removed":[]}"#,
            ),
            (
                Event::Modified {
                    id: 4,
                    ty: Sym::new("T"),
                    version: 2,
                    before: (&fields).into(),
                    after: FieldList::default(),
                },
                r#"{"kind":"modified","id":4,"type":"T","version":2,"before":{"n":1},"after":{}}"#,
            ),
        ];
        for (event, json) in events {
            assert_eq!(serde_json::to_string(&event).unwrap(), json);
            assert_eq!(serde_json::from_str::<Event>(json).unwrap(), event);
        }
    }

    #[test]
    fn a_failed_attempt_reads_with_its_error_and_how_long_before() {
        let event = Event::AttemptFailed(Box::new(AttemptFailed {
            invocation: InvocationId::new("inv_w.1"),
            attempt: 2,
            at_ms: 1_000,
            error: "timeout".into(),
        }));
        let e = Entry { seq: 1, turn: 3, at_ms: 3_500, at_us: 0, event };
        assert_eq!(e.line(), "  failed inv_w.1 attempt 2 (2s 500ms before): timeout");
    }
}
