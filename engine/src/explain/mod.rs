//! `explain`: why a rule fired or does not, and where a fact came from.
//!
//! Everything here reads: a workflow's committed state (or a live network
//! between firings) and its timeline. It never touches the network that
//! fires rules: a rule's conditions are evaluated again, apart, over the
//! facts, with the same compiled constraints the network runs, so that
//! explaining cannot change a workflow or the order it fires in, and can
//! count what the network does not keep (how many facts pass a condition's
//! own tests, how many partial matches survive each join).
//!
//! A committed state is quiescent (nothing is on the agenda), so a rule that
//! matches now has fired for those facts, waits on an invocation, or belongs
//! to a finished workflow; "queued behind higher salience" is seen only in a
//! network between firings (`Subject::queued`).

mod history;
mod matching;
mod text;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use stoa_rules::compile::Pack;
use stoa_rules::Value;

use crate::fact::{Fact, FactId};
use crate::timeline::SectionKind;
use crate::workflow::{Meta, Snapshot, Waiting, Workflow};

pub use history::History;
pub use text::{fact_text, rule_text};

/// Partial matches kept per condition; past this, counts say "at least".
pub const MAX_PARTIALS: usize = 20_000;
/// Complete matches and firings listed (all are counted).
pub const MAX_LISTED: usize = 20;
/// Facts and versions a derivation walks back through.
pub const MAX_DERIVATION: usize = 200;

/// What is explained: a workflow's state.
pub struct Subject<'a> {
    pub pack: &'a Pack,
    pub meta: &'a Meta,
    pub facts: Vec<&'a Fact>,
    pub waiting: Vec<&'a Waiting>,
    /// Activations on the agenda, in firing order: rule index and matched
    /// facts. Empty in committed state.
    pub queued: Vec<(usize, Vec<(FactId, u32)>)>,
}

impl<'a> Subject<'a> {
    pub fn of_snapshot(pack: &'a Pack, snap: &'a Snapshot) -> Subject<'a> {
        Subject {
            pack,
            meta: &snap.meta,
            facts: snap.facts.iter().collect(),
            waiting: snap.waiting.iter().collect(),
            queued: Vec::new(),
        }
    }

    pub fn of_workflow(wf: &'a Workflow) -> Subject<'a> {
        Subject {
            pack: wf.pack(),
            meta: wf.meta(),
            facts: wf.facts(),
            waiting: wf.waiting().collect(),
            queued: wf.queued(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExplainError {
    #[error("pack {pack} {version} has no rule \"{rule}\"{hint}")]
    UnknownRule { pack: String, version: String, rule: String, hint: String },
    #[error("workflow {workflow} has no fact f{fact} and never had one")]
    UnknownFact { workflow: String, fact: FactId },
}

/// A fact as an explanation shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactRef {
    pub id: FactId,
    #[serde(rename = "type")]
    pub ty: String,
    pub version: u32,
}

impl FactRef {
    fn of(f: &Fact) -> FactRef {
        FactRef { id: f.id, ty: f.ty.to_string(), version: f.version }
    }
}

/// One firing of a rule, from the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Firing {
    pub rule: String,
    pub section: SectionKind,
    pub turn: u64,
    pub seq: u64,
    pub at_ms: u64,
    /// Facts matched, with the versions they had.
    pub matched: Vec<(FactId, u32)>,
    /// What it changed, one line each (`inserted f9 Encoded`).
    pub changes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleExplain {
    pub workflow: String,
    pub pack: String,
    pub version: String,
    pub status: String,
    pub rule: String,
    /// `file:line:col` of the rule.
    pub at: String,
    pub salience: i32,
    /// Firings of the rule in the timeline (all sections), counted.
    pub fired: u64,
    /// The last `MAX_LISTED` of them, oldest first.
    pub firings: Vec<Firing>,
    pub conditions: Vec<ConditionReport>,
    pub now: Now,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConditionKind {
    Pattern,
    Not,
    Exists,
    Aggregate,
    Test,
}

/// How far a rule's matching gets at one condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionReport {
    pub index: usize,
    pub kind: ConditionKind,
    /// As written.
    pub text: String,
    /// `file:line:col`.
    pub at: String,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub ty: Option<String>,
    /// Facts of its type.
    pub facts: u64,
    /// Of those, how many pass its own tests (those that read no binding).
    pub passing: u64,
    /// Partial matches that survive it; `None` when matching stopped
    /// before it.
    pub partial_matches: Option<u64>,
    /// The counts are lower bounds (too many partial matches to follow, or
    /// the time allowed ran out).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// For a `not`: facts that block it (some of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blockers: Vec<FactRef>,
}

/// Where the rule stands now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Now {
    /// Complete matches exist; why each is not (or is) about to fire.
    Matches { total: u64, matches: Vec<MatchNow> },
    /// Every partial match dies at condition `dies_at`.
    NoMatch { dies_at: usize, why: String, closest: Option<Closest> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatchNow {
    pub facts: Vec<FactRef>,
    /// Bindings that are values (aggregates), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<(String, Value)>,
    pub reason: Reason,
}

/// Why a complete match is not firing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// Refraction: it fired for these very fact versions.
    AlreadyFired { turn: u64, seq: u64 },
    /// `no-loop`: it fired for these facts, and its own change made the
    /// versions it matches now.
    NoLoop { turn: u64, seq: u64 },
    /// Its action called a function and waits for the answer.
    Waiting { invocation: String, function: String },
    /// On the agenda behind activations of higher (or equal, newer)
    /// salience.
    Queued { position: usize, ahead: Vec<String> },
    /// The workflow is finished: no rule fires.
    Finished { status: String },
    /// Matched when the state was rebuilt (a restart or a pack upgrade
    /// keeps what earlier versions fired) and has nothing new since.
    Refracted,
}

/// The partial match that got furthest, and the constraint that stopped it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Closest {
    /// What it bound so far, by binding name (or `#n` for unnamed).
    pub bound: Vec<(String, FactRef)>,
    /// The fact tried at the dying condition, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<FactRef>,
    /// The failing constraint as written, and where.
    pub constraint: String,
    pub at: String,
    /// The constraint with its operands' values (`"encoding" == "pending"`).
    pub evaluated: String,
}

/// Where each version of a fact came from, back to the inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactExplain {
    pub workflow: String,
    pub fact: FactId,
    #[serde(rename = "type")]
    pub ty: String,
    /// Its version now; `None` once retracted.
    pub current: Option<u32>,
    pub fields: Option<Value>,
    /// Each change of this fact, oldest first.
    pub versions: Vec<Origin>,
    /// The facts the firings above matched, and where they came from,
    /// breadth first (at most `MAX_DERIVATION`).
    pub derivation: Vec<Origin>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// One change of one fact, and what made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    pub fact: FactRef,
    /// `inserted`, `modified` or `retracted`.
    pub change: String,
    pub turn: u64,
    pub seq: u64,
    pub at_ms: u64,
    pub by: By,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum By {
    /// A rule's section.
    Firing { rule: String, section: SectionKind, seq: u64, matched: Vec<(FactId, u32)> },
    /// The turn's input (a start, an assert, a timer, a signal...).
    Input { input: String },
}

/// Why `rule` fired and why it does or does not match now.
pub fn rule(subject: &Subject, history: &History, rule: &str) -> Result<RuleExplain, ExplainError> {
    let pack = subject.pack;
    let Some(r) = pack.rules.iter().find(|r| r.name == rule) else {
        let hint = stoa_rules::diagnostic::closest(rule, pack.rules.iter().map(|r| r.name.as_str()))
            .map(|n| format!(" (did you mean \"{n}\"?)"))
            .unwrap_or_default();
        return Err(ExplainError::UnknownRule {
            pack: subject.meta.pack.clone(),
            version: subject.meta.pack_version.clone(),
            rule: rule.to_string(),
            hint,
        });
    };
    // Constraints are tenant code: an explanation has a turn's time at
    // most, wherever it runs (the server sets the same deadline).
    let _budget = stoa_rules::budget::turn(pack.manifest.limits.max_turn_ms);
    let analysis = matching::analyse(subject, r);
    let (fired, firings) = history.firings_of(rule);
    let now = match analysis.complete {
        Some(complete) => Now::Matches {
            total: complete.total,
            matches: complete
                .listed
                .into_iter()
                .map(|m| {
                    let reason = reason(subject, history, r, &m.facts);
                    MatchNow { facts: m.facts, values: m.values, reason }
                })
                .collect(),
        },
        None => Now::NoMatch { dies_at: analysis.dies_at, why: analysis.why, closest: analysis.closest },
    };
    Ok(RuleExplain {
        workflow: subject.meta.id.to_string(),
        pack: subject.meta.pack.clone(),
        version: subject.meta.pack_version.clone(),
        status: subject.meta.status.as_str().to_string(),
        rule: r.name.clone(),
        at: format!("{}:{}:{}", r.file.display(), r.pos.line, r.pos.col),
        salience: r.salience,
        fired,
        firings,
        conditions: analysis.conditions,
        now,
    })
}

/// Where fact `id` came from: each of its versions, and the facts the
/// firings that made them matched, back to the inputs.
pub fn fact(subject: &Subject, history: &History, id: FactId) -> Result<FactExplain, ExplainError> {
    let now = subject.facts.iter().find(|f| f.id == id);
    let versions = history.changes_of(id);
    let ty = match (now, versions.first()) {
        (Some(f), _) => f.ty.to_string(),
        (None, Some(o)) => o.fact.ty.clone(),
        (None, None) => {
            return Err(ExplainError::UnknownFact { workflow: subject.meta.id.to_string(), fact: id });
        }
    };
    let (derivation, truncated) = history.derivation(&versions);
    Ok(FactExplain {
        workflow: subject.meta.id.to_string(),
        fact: id,
        ty,
        current: now.map(|f| f.version),
        fields: now.map(|f| crate::network::fields_value(&f.fields)),
        versions,
        derivation,
        truncated,
    })
}

/// Why a complete match over `facts` is not firing.
fn reason(subject: &Subject, history: &History, rule: &stoa_rules::compile::Rule, facts: &[FactRef]) -> Reason {
    let key: Vec<(FactId, u32)> = facts.iter().map(|f| (f.id, f.version)).collect();
    if let Some(w) = subject.waiting.iter().find(|w| w.rule == rule.name && w.matched == key) {
        return Reason::Waiting { invocation: w.invocation.id.to_string(), function: w.invocation.function.clone() };
    }
    if let Some((turn, seq)) = history.fired_for(&rule.name, &key) {
        return Reason::AlreadyFired { turn, seq };
    }
    if subject.meta.status.is_finished() {
        return Reason::Finished { status: subject.meta.status.as_str().to_string() };
    }
    if let Some(pos) = subject.queued.iter().position(|(r, m)| *r == rule.index && *m == key) {
        let ahead = subject.queued[..pos].iter().map(|(r, _)| subject.pack.rules[*r].name.clone()).collect();
        return Reason::Queued { position: pos + 1, ahead };
    }
    let ids: Vec<FactId> = key.iter().map(|k| k.0).collect();
    if rule.no_loop {
        if let Some((turn, seq)) = history.fired_for_ids(&rule.name, &ids) {
            return Reason::NoLoop { turn, seq };
        }
    }
    Reason::Refracted
}

/// Fact types by name, for the counts.
fn by_type<'a>(facts: &[&'a Fact]) -> HashMap<stoa_rules::Sym, Vec<&'a Fact>> {
    let mut out: HashMap<_, Vec<&Fact>> = HashMap::new();
    for f in facts {
        out.entry(f.ty).or_default().push(f);
    }
    for v in out.values_mut() {
        v.sort_by_key(|f| f.id);
    }
    out
}

#[cfg(test)]
mod tests;
