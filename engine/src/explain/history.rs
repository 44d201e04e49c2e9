//! What a timeline says about firings and fact versions, gathered in one
//! pass: which firing (or which turn's input) made each version of each
//! fact, and what each firing matched. A firing's changes follow its
//! `Fired` entry in the timeline, up to the next firing or turn.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::{By, FactRef, Firing, Origin, MAX_DERIVATION, MAX_LISTED};
use crate::fact::FactId;
use crate::timeline::{Entry, Event, SectionKind};

struct FiringRec {
    rule: Arc<str>,
    section: SectionKind,
    turn: u64,
    seq: u64,
    at_ms: u64,
    matched: Vec<(FactId, u32)>,
    /// Lines for the changes it made; kept for the focus rule only.
    changes: Vec<String>,
}

struct ChangeRec {
    fact: FactRef,
    change: &'static str,
    turn: u64,
    seq: u64,
    at_ms: u64,
    /// Index in `firings`, or the turn's input.
    made_by: Result<usize, Arc<str>>,
}

/// The firings and fact changes of a timeline.
pub struct History {
    focus: Option<String>,
    firings: Vec<FiringRec>,
    changes: HashMap<FactId, Vec<ChangeRec>>,
    rules: HashMap<String, Arc<str>>,
    input: Arc<str>,
    current: Option<usize>,
}

impl History {
    /// An empty history; `focus` names the rule whose firings keep the
    /// lines of what they changed.
    pub fn new(focus: Option<&str>) -> History {
        History {
            focus: focus.map(str::to_string),
            firings: Vec::new(),
            changes: HashMap::new(),
            rules: HashMap::new(),
            input: Arc::from(""),
            current: None,
        }
    }

    pub fn of<'e>(entries: impl IntoIterator<Item = &'e Entry>, focus: Option<&str>) -> History {
        let mut h = History::new(focus);
        for e in entries {
            h.push(e);
        }
        h
    }

    /// Reads the next entry of the timeline.
    pub fn push(&mut self, e: &Entry) {
        let change = |fact: FactRef, change: &'static str, made_by| ChangeRec {
            fact,
            change,
            turn: e.turn,
            seq: e.seq,
            at_ms: e.at_ms,
            made_by,
        };
        match &e.event {
            Event::TurnStarted { input } => {
                self.input = Arc::from(input.as_str());
                self.current = None;
            }
            Event::Fired { rule, section, facts } => {
                let rule = match self.rules.get(rule) {
                    Some(r) => r.clone(),
                    None => self.rules.entry(rule.clone()).or_insert_with(|| Arc::from(rule.as_str())).clone(),
                };
                self.current = Some(self.firings.len());
                self.firings.push(FiringRec {
                    rule,
                    section: *section,
                    turn: e.turn,
                    seq: e.seq,
                    at_ms: e.at_ms,
                    matched: facts.clone(),
                    changes: Vec::new(),
                });
            }
            Event::Inserted { id, ty, fields } => {
                self.line(|| format!("inserted f{id} {ty} {fields:?}"));
                let f = FactRef { id: *id, ty: ty.to_string(), version: 1 };
                let by = self.made_by();
                self.changes.entry(*id).or_default().push(change(f, "inserted", by));
            }
            Event::Modified { id, ty, version, after, .. } => {
                self.line(|| format!("modified f{id} {ty} to v{version}: {after:?}"));
                let f = FactRef { id: *id, ty: ty.to_string(), version: *version };
                let by = self.made_by();
                self.changes.entry(*id).or_default().push(change(f, "modified", by));
            }
            Event::Retracted { id, ty, version } => {
                self.line(|| format!("retracted f{id} {ty} v{version}"));
                let f = FactRef { id: *id, ty: ty.to_string(), version: *version };
                let by = self.made_by();
                self.changes.entry(*id).or_default().push(change(f, "retracted", by));
            }
            Event::Invoked(inv) => self.line(|| format!("called {} ({})", inv.function, inv.invocation)),
            Event::TimerSet { id, ty, .. } => self.line(|| format!("set timer {id} for a {ty}")),
            Event::SignalEmitted(s) => self.line(|| format!("emitted signal {}", s.name)),
            Event::Completed { .. } => self.line(|| "completed the workflow".into()),
            Event::Failed { reason } => self.line(|| format!("failed the workflow: {reason}")),
            _ => {}
        }
    }

    /// What made a change read now: the current firing, else the turn's
    /// input.
    fn made_by(&self) -> Result<usize, Arc<str>> {
        match self.current {
            Some(i) => Ok(i),
            None => Err(self.input.clone()),
        }
    }

    /// Adds a line to the current firing, if it is of the focus rule.
    fn line(&mut self, text: impl FnOnce() -> String) {
        if let (Some(i), Some(focus)) = (self.current, &self.focus) {
            let f = &mut self.firings[i];
            if *f.rule == **focus && f.changes.len() < 50 {
                f.changes.push(text());
            }
        }
    }

    /// How many times `rule` fired (any section), and the last few firings.
    pub fn firings_of(&self, rule: &str) -> (u64, Vec<Firing>) {
        let all: Vec<&FiringRec> = self.firings.iter().filter(|f| &*f.rule == rule).collect();
        let last = all[all.len().saturating_sub(MAX_LISTED)..]
            .iter()
            .map(|f| Firing {
                rule: f.rule.to_string(),
                section: f.section,
                turn: f.turn,
                seq: f.seq,
                at_ms: f.at_ms,
                matched: f.matched.clone(),
                changes: f.changes.clone(),
            })
            .collect();
        (all.len() as u64, last)
    }

    /// The last action firing of `rule` over exactly these fact versions.
    pub fn fired_for(&self, rule: &str, matched: &[(FactId, u32)]) -> Option<(u64, u64)> {
        self.firings
            .iter()
            .rev()
            .find(|f| f.section == SectionKind::Action && &*f.rule == rule && f.matched == matched)
            .map(|f| (f.turn, f.seq))
    }

    /// The last action firing of `rule` over these facts, at any versions.
    pub fn fired_for_ids(&self, rule: &str, ids: &[FactId]) -> Option<(u64, u64)> {
        self.firings
            .iter()
            .rev()
            .find(|f| {
                f.section == SectionKind::Action
                    && &*f.rule == rule
                    && f.matched.len() == ids.len()
                    && f.matched.iter().zip(ids).all(|(m, id)| m.0 == *id)
            })
            .map(|f| (f.turn, f.seq))
    }

    /// Every change of fact `id`, oldest first.
    pub fn changes_of(&self, id: FactId) -> Vec<Origin> {
        self.changes.get(&id).map(|cs| cs.iter().map(|c| self.origin(c)).collect()).unwrap_or_default()
    }

    /// Where the facts matched by the firings behind `versions` came from,
    /// and theirs, breadth first; whether the walk stopped at its bound.
    pub fn derivation(&self, versions: &[Origin]) -> (Vec<Origin>, bool) {
        let mut queue: VecDeque<(FactId, u32)> = VecDeque::new();
        let mut seen: HashSet<(FactId, u32)> = HashSet::new();
        let enqueue = |o: &Origin, queue: &mut VecDeque<(FactId, u32)>| {
            if let By::Firing { matched, .. } = &o.by {
                queue.extend(matched.iter().copied());
            }
        };
        for v in versions {
            seen.insert((v.fact.id, v.fact.version));
            enqueue(v, &mut queue);
        }
        let mut out = Vec::new();
        while let Some(key) = queue.pop_front() {
            if !seen.insert(key) {
                continue;
            }
            if out.len() == MAX_DERIVATION {
                return (out, true);
            }
            let made = self.changes.get(&key.0).and_then(|cs| {
                cs.iter().find(|c| c.fact.version == key.1 && c.change != "retracted").map(|c| self.origin(c))
            });
            if let Some(o) = made {
                enqueue(&o, &mut queue);
                out.push(o);
            }
        }
        (out, false)
    }

    fn origin(&self, c: &ChangeRec) -> Origin {
        let by = match &c.made_by {
            Ok(i) => {
                let f = &self.firings[*i];
                By::Firing { rule: f.rule.to_string(), section: f.section, seq: f.seq, matched: f.matched.clone() }
            }
            Err(input) => By::Input { input: input.to_string() },
        };
        Origin { fact: c.fact.clone(), change: c.change.to_string(), turn: c.turn, seq: c.seq, at_ms: c.at_ms, by }
    }
}
