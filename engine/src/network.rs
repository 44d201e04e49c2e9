//! The matching network: Rete with hash-indexed joins, negation, `exists`,
//! aggregates and an agenda.
//!
//! Each rule is a chain of conditions. A token is a partial match of a rule:
//! the facts (or aggregate values) bound by its first `level` conditions.
//! Alpha memories hold the facts that pass a condition's own tests, indexed
//! by the field of its equality join; token memories hold the tokens waiting
//! at a condition, indexed by the join key computed from their bindings. A
//! change to a fact only visits the memories of its type and, through the
//! indexes, the tokens it joins with: nothing re-scans working memory.
//!
//! Invariant: the network does no I/O and runs only the sandboxed scripts of
//! constraints. Modifying a fact is retracting and re-inserting it.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use stoa_rules::compile::{Condition, Constraint, Pack, Pattern};
use stoa_rules::expr::Env;
use stoa_rules::sandbox::ScriptValue;
use stoa_rules::syntax::AggFn;
use stoa_rules::{Fields, Sym, Value};

use crate::fact::{Fact, FactId};

pub type TokId = u32;
const NONE: u32 = u32::MAX;

/// A constraint failed to evaluate (a script error or a type error).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("rule \"{rule}\": {message}")]
pub struct MatchError {
    pub rule: String,
    pub message: String,
}

type R<T> = Result<T, MatchError>;

struct FactRec {
    fact: Fact,
    /// (alpha memory, position in its list) for every memory holding it.
    alpha: Vec<(u32, u32)>,
    /// Tokens whose own fact is this one.
    tokens: Vec<TokId>,
}

struct AlphaMem {
    rule: u32,
    cond: u32,
    /// The fields whose values key `buckets` (one: the value itself; several:
    /// an array of them); empty: one bucket, keyed null.
    index: Vec<Sym>,
    buckets: FxHashMap<Value, Vec<FactId>>,
}

/// State a token keeps for the condition after it.
enum Side {
    None,
    /// Matching facts of a `not`/`exists`.
    Count(u32),
    /// Matching facts of an aggregate and their operand values.
    Items(Vec<(FactId, Value)>),
}

struct Tok {
    rule: u32,
    level: u16,
    parent: TokId,
    fact: FactId,
    value: Option<Value>,
    children: Vec<TokId>,
    /// Position in the parent's `children`.
    child_pos: u32,
    /// Position in the fact's `tokens`.
    fact_pos: u32,
    /// Key of the bucket of the token memory at `level`, and position in it.
    mem: Option<(Value, u32)>,
    side: Side,
    agenda: Option<AgendaKey>,
    /// Generation, bumped when the slot is freed, so stale references die.
    gen: u32,
    alive: bool,
}

/// Conflict resolution: higher salience first, then the newest change
/// (depth-first, like CLIPS), then declaration order and fact order within
/// one change (the order `seq` was given in).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AgendaKey {
    neg_salience: i64,
    neg_change: u64,
    seq: u64,
}

/// A complete match ready to fire.
#[derive(Clone, Debug)]
pub struct Activation {
    pub rule: usize,
    pub token: TokId,
}

/// What an activation binds, in slot order.
#[derive(Clone, Debug)]
pub enum Bound {
    Fact(FactId),
    Value(Value),
    Unbound,
}

pub struct Network {
    pack: Arc<Pack>,
    facts: FxHashMap<FactId, FactRec>,
    toks: Vec<Tok>,
    free: Vec<TokId>,
    alpha: Vec<AlphaMem>,
    /// Alpha memories listening to each fact type, in rule/condition order.
    by_type: FxHashMap<Sym, Vec<u32>>,
    /// Alpha memory of each (rule, condition), if it has one.
    alpha_of: Vec<Vec<u32>>,
    /// Token memories: `[rule][level]` buckets keyed by join key.
    mems: Vec<Vec<FxHashMap<Value, Vec<TokId>>>>,
    /// For each rule and slot, the level whose token binds it.
    slot_level: Vec<Vec<u16>>,
    agenda: BTreeMap<AgendaKey, TokId>,
    new_acts: Vec<(TokId, u32)>,
    change: u64,
    seq: u64,
    /// While set, new activations of this rule over these facts (sorted ids)
    /// are refracted at once: the `no-loop` of the firing activation.
    pub suppress: Option<(usize, Vec<FactId>)>,
    /// While set (inside `modify`), aggregate tokens to refresh at the end,
    /// so a modify that leaves an aggregate unchanged does not re-activate.
    deferred: Option<Vec<(TokId, u32)>>,
    /// Whether new activations are marked fired instead of scheduled (used
    /// to rebuild a quiescent workflow from its facts).
    pub refract_all: bool,
    /// Rules (by index) exempt from `refract_all`: new in a pack upgrade.
    pub fresh_rules: Vec<bool>,
    id_sym: Sym,
}

impl Network {
    pub fn new(pack: Arc<Pack>) -> Network {
        let mut alpha = Vec::new();
        let mut by_type: FxHashMap<Sym, Vec<u32>> = FxHashMap::default();
        let mut alpha_of = Vec::new();
        let mut mems = Vec::new();
        let mut slot_level = Vec::new();
        for (r, rule) in pack.rules.iter().enumerate() {
            let mut per_cond = Vec::new();
            let mut levels = vec![0u16; rule.slots.len()];
            for (c, cond) in rule.conditions.iter().enumerate() {
                let pattern = match cond {
                    Condition::Pattern { pattern, slot } => {
                        levels[*slot] = c as u16 + 1;
                        Some(pattern)
                    }
                    Condition::Aggregate { pattern, slot, .. } => {
                        levels[*slot] = c as u16 + 1;
                        Some(pattern)
                    }
                    Condition::Not(p) | Condition::Exists(p) => Some(p),
                    Condition::Test(_) => None,
                };
                match pattern {
                    Some(p) => {
                        let id = alpha.len() as u32;
                        alpha.push(AlphaMem {
                            rule: r as u32,
                            cond: c as u32,
                            index: p.joins.iter().map(|j| j.field).collect(),
                            buckets: FxHashMap::default(),
                        });
                        by_type.entry(p.ty).or_default().push(id);
                        per_cond.push(id);
                    }
                    None => per_cond.push(NONE),
                }
            }
            alpha_of.push(per_cond);
            mems.push((0..=rule.conditions.len()).map(|_| FxHashMap::default()).collect());
            slot_level.push(levels);
        }
        let mut net = Network {
            pack,
            facts: FxHashMap::default(),
            toks: Vec::new(),
            free: Vec::new(),
            alpha,
            by_type,
            alpha_of,
            mems,
            slot_level,
            agenda: BTreeMap::new(),
            new_acts: Vec::new(),
            change: 0,
            seq: 0,
            suppress: None,
            deferred: None,
            refract_all: false,
            fresh_rules: Vec::new(),
            id_sym: Sym::new("_id"),
        };
        // One root token per rule; rules whose conditions need no fact (only
        // `not` or `test`) may match at once.
        for r in 0..net.pack.rules.len() {
            let root = net.new_tok(r as u32, 0, NONE, 0, None);
            debug_assert_eq!(root as usize, r);
        }
        net
    }

    pub fn pack(&self) -> &Arc<Pack> {
        &self.pack
    }

    /// Lets the rules that need no fact match; call once after `new`.
    pub fn prime(&mut self) -> R<()> {
        for r in 0..self.pack.rules.len() {
            self.left_activate(r as TokId)?;
        }
        self.end_change();
        Ok(())
    }

    pub fn fact(&self, id: FactId) -> Option<&Fact> {
        self.facts.get(&id).map(|r| &r.fact)
    }

    pub fn facts(&self) -> impl Iterator<Item = &Fact> {
        self.facts.values().map(|r| &r.fact)
    }

    pub fn fact_count(&self) -> usize {
        self.facts.len()
    }

    pub fn agenda_len(&self) -> usize {
        self.agenda.len()
    }

    // ---- tokens -------------------------------------------------------

    fn new_tok(&mut self, rule: u32, level: u16, parent: TokId, fact: FactId, value: Option<Value>) -> TokId {
        let tok = Tok {
            rule,
            level,
            parent,
            fact,
            value,
            children: Vec::new(),
            child_pos: NONE,
            fact_pos: NONE,
            mem: None,
            side: Side::None,
            agenda: None,
            gen: 0,
            alive: true,
        };
        let id = match self.free.pop() {
            Some(id) => {
                let gen = self.toks[id as usize].gen;
                self.toks[id as usize] = Tok { gen, ..tok };
                id
            }
            None => {
                self.toks.push(tok);
                (self.toks.len() - 1) as TokId
            }
        };
        if parent != NONE {
            let pos = self.toks[parent as usize].children.len() as u32;
            self.toks[parent as usize].children.push(id);
            self.toks[id as usize].child_pos = pos;
        }
        if fact != 0 {
            let rec = self.facts.get_mut(&fact).expect("token of a live fact");
            self.toks[id as usize].fact_pos = rec.tokens.len() as u32;
            rec.tokens.push(id);
        }
        id
    }

    fn delete_tok(&mut self, t: TokId) {
        while let Some(&c) = self.toks[t as usize].children.last() {
            self.delete_tok(c);
        }
        let tok = &mut self.toks[t as usize];
        let (rule, level, parent, fact, child_pos, fact_pos) =
            (tok.rule, tok.level, tok.parent, tok.fact, tok.child_pos, tok.fact_pos);
        let mem = tok.mem.take();
        if let Some(key) = tok.agenda.take() {
            self.agenda.remove(&key);
        }
        tok.alive = false;
        tok.gen = tok.gen.wrapping_add(1);
        tok.side = Side::None;
        tok.value = None;
        if parent != NONE {
            let siblings = &mut self.toks[parent as usize].children;
            siblings.swap_remove(child_pos as usize);
            if let Some(&moved) = siblings.get(child_pos as usize) {
                self.toks[moved as usize].child_pos = child_pos;
            }
        }
        if fact != 0 {
            if let Some(rec) = self.facts.get_mut(&fact) {
                rec.tokens.swap_remove(fact_pos as usize);
                if let Some(&moved) = rec.tokens.get(fact_pos as usize) {
                    self.toks[moved as usize].fact_pos = fact_pos;
                }
            }
        }
        if let Some((key, pos)) = mem {
            let bucket = self.mems[rule as usize][level as usize].get_mut(&key).expect("token bucket");
            bucket.swap_remove(pos as usize);
            if let Some(&moved) = bucket.get(pos as usize) {
                if let Some((_, p)) = &mut self.toks[moved as usize].mem {
                    *p = pos;
                }
            }
            if bucket.is_empty() {
                self.mems[rule as usize][level as usize].remove(&key);
            }
        }
        self.free.push(t);
    }

    /// The value bound at `slot` as seen from token `t`.
    fn bound_at(&self, t: TokId, rule: usize, slot: usize) -> Option<(FactId, Option<&Value>)> {
        let level = self.slot_level[rule][slot];
        let mut cur = t;
        while cur != NONE {
            let tok = &self.toks[cur as usize];
            if tok.level == level {
                return Some((tok.fact, tok.value.as_ref()));
            }
            if tok.level < level {
                return None;
            }
            cur = tok.parent;
        }
        None
    }

    /// Bindings of a complete match, by slot.
    pub fn bindings(&self, t: TokId) -> Vec<Bound> {
        let rule = self.toks[t as usize].rule as usize;
        (0..self.slot_level[rule].len())
            .map(|s| match self.bound_at(t, rule, s) {
                Some((f, _)) if f != 0 => Bound::Fact(f),
                Some((_, Some(v))) => Bound::Value(v.clone()),
                _ => Bound::Unbound,
            })
            .collect()
    }

    // ---- evaluation ---------------------------------------------------

    fn env<'a>(&'a self, rule: usize, tok: TokId, current: Option<&'a Fact>) -> NetEnv<'a> {
        NetEnv { net: self, rule, tok, current }
    }

    fn check(&self, c: &Constraint, env: &NetEnv) -> R<bool> {
        Ok(self.eval(c, env)?.is_truthy())
    }

    fn eval(&self, c: &Constraint, env: &NetEnv) -> R<Value> {
        match c {
            Constraint::Native(e) => e.eval(env).map_err(|e| self.err(env.rule, e.0)),
            Constraint::Script { script, text } => {
                let rule = &self.pack.rules[env.rule];
                let mut values = Vec::with_capacity(script.vars.len());
                if script.vars.first().is_some_and(|v| v == stoa_rules::expr::CURRENT) {
                    values.push(match env.current {
                        Some(f) => ScriptValue::fact(f.id, f.ty, &f.fields),
                        None => ScriptValue::value(&Value::Null),
                    });
                }
                for (slot, _) in rule.script_slots() {
                    values.push(self.slot_value(env, slot));
                }
                values.truncate(script.vars.len());
                self.pack
                    .sandbox
                    .eval(script, values)
                    .map_err(|e| self.err(env.rule, format!("constraint `{text}`: {e}")))
            }
        }
    }

    fn slot_value(&self, env: &NetEnv, slot: usize) -> ScriptValue {
        if env.tok == NONE {
            return ScriptValue::value(&Value::Null);
        }
        match self.bound_at(env.tok, env.rule, slot) {
            Some((f, _)) if f != 0 => {
                let fact = &self.facts[&f].fact;
                ScriptValue::fact(fact.id, fact.ty, &fact.fields)
            }
            Some((_, Some(v))) => ScriptValue::value(v),
            _ => ScriptValue::value(&Value::Null),
        }
    }

    fn err(&self, rule: usize, message: String) -> MatchError {
        MatchError { rule: self.pack.rules[rule].name.clone(), message }
    }

    fn alpha_pass(&self, mem: &AlphaMem, f: &Fact) -> R<bool> {
        let rule = mem.rule as usize;
        let p = self.pattern(rule, mem.cond as usize);
        let env = self.env(rule, NONE, Some(f));
        for c in &p.alpha {
            if !self.check(c, &env)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn beta_pass(&self, rule: usize, p: &Pattern, tok: TokId, f: &Fact) -> R<bool> {
        let env = self.env(rule, tok, Some(f));
        for c in &p.beta {
            if !self.check(c, &env)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn pattern(&self, rule: usize, cond: usize) -> &Pattern {
        match &self.pack.rules[rule].conditions[cond] {
            Condition::Pattern { pattern, .. } | Condition::Aggregate { pattern, .. } => pattern,
            Condition::Not(p) | Condition::Exists(p) => p,
            Condition::Test(_) => unreachable!("tests have no pattern"),
        }
    }

    /// Join key of token `t` for condition `cond`, or null without a join.
    fn token_key(&self, rule: usize, cond: usize, t: TokId) -> R<Value> {
        match self.pack.rules[rule].conditions.get(cond) {
            Some(Condition::Pattern { pattern: p, .. } | Condition::Aggregate { pattern: p, .. })
            | Some(Condition::Not(p) | Condition::Exists(p)) => {
                let env = self.env(rule, t, None);
                let eval = |j: &stoa_rules::compile::JoinKey| j.key.eval(&env).map_err(|e| self.err(rule, e.0));
                match p.joins.as_slice() {
                    [] => Ok(Value::Null),
                    [j] => eval(j),
                    js => Ok(Value::Array(Arc::new(js.iter().map(eval).collect::<R<_>>()?))),
                }
            }
            _ => Ok(Value::Null),
        }
    }

    fn fact_key(&self, mem: &AlphaMem, f: &Fact) -> Value {
        let field = |s: Sym| {
            if s == self.id_sym {
                Value::Int(f.id as i64)
            } else {
                f.fields.get(s).cloned().unwrap_or(Value::Null)
            }
        };
        match mem.index.as_slice() {
            [] => Value::Null,
            [one] => field(*one),
            many => Value::Array(Arc::new(many.iter().map(|s| field(*s)).collect())),
        }
    }

    // ---- changes ------------------------------------------------------

    /// Adds a new fact.
    pub fn insert(&mut self, fact: Fact) -> R<()> {
        self.insert_inner(fact)?;
        self.end_change();
        Ok(())
    }

    /// Removes a fact and everything that depended on it.
    pub fn retract(&mut self, id: FactId) -> R<Option<Fact>> {
        let f = self.retract_inner(id)?;
        self.end_change();
        Ok(f)
    }

    /// Replaces a fact by its next version: a retraction and an insertion
    /// seen as one change. Aggregates are recomputed once, at the end, so a
    /// result that ends up unchanged keeps its activation.
    pub fn modify(&mut self, fact: Fact) -> R<()> {
        self.deferred = Some(Vec::new());
        let res = self.retract_inner(fact.id).and_then(|_| self.insert_inner(fact));
        let dirty = self.deferred.take().unwrap_or_default();
        res?;
        let mut seen = rustc_hash::FxHashSet::default();
        for (t, gen) in dirty {
            let tok = &self.toks[t as usize];
            if tok.alive && tok.gen == gen && seen.insert(t) {
                self.refresh_aggregate(t)?;
            }
        }
        self.end_change();
        Ok(())
    }

    fn insert_inner(&mut self, fact: Fact) -> R<()> {
        let id = fact.id;
        let ty = fact.ty;
        self.facts.insert(id, FactRec { fact, alpha: Vec::new(), tokens: Vec::new() });
        let listeners = self.by_type.get(&ty).map_or(0, Vec::len);
        for k in 0..listeners {
            let m = self.by_type[&ty][k];
            let f = &self.facts[&id].fact;
            if !self.alpha_pass(&self.alpha[m as usize], f)? {
                continue;
            }
            let key = self.fact_key(&self.alpha[m as usize], f);
            let bucket = self.alpha[m as usize].buckets.entry(key).or_default();
            let pos = bucket.len() as u32;
            bucket.push(id);
            self.facts.get_mut(&id).expect("inserted").alpha.push((m, pos));
            self.right_activate(m, id)?;
        }
        Ok(())
    }

    fn retract_inner(&mut self, id: FactId) -> R<Option<Fact>> {
        if !self.facts.contains_key(&id) {
            return Ok(None);
        }
        while let Some(&t) = self.facts[&id].tokens.last() {
            self.delete_tok(t);
        }
        let alpha = self.facts[&id].alpha.clone();
        for (m, _) in alpha {
            let key = self.fact_key(&self.alpha[m as usize], &self.facts[&id].fact);
            // Find our current position (it may have moved by swap-removes).
            let pos = self.facts[&id].alpha.iter().find(|(mm, _)| *mm == m).map(|(_, p)| *p).expect("member");
            let bucket = self.alpha[m as usize].buckets.get_mut(&key).expect("alpha bucket");
            bucket.swap_remove(pos as usize);
            if let Some(&moved) = bucket.get(pos as usize) {
                let rec = self.facts.get_mut(&moved).expect("moved fact");
                for e in rec.alpha.iter_mut().filter(|(mm, _)| *mm == m) {
                    e.1 = pos;
                }
            }
            if bucket.is_empty() {
                self.alpha[m as usize].buckets.remove(&key);
            }
            self.right_retract(m, id)?;
        }
        let rec = self.facts.remove(&id).expect("present");
        Ok(Some(rec.fact))
    }

    /// New activations from the last change get their agenda order.
    fn end_change(&mut self) {
        if self.new_acts.is_empty() {
            return;
        }
        self.change += 1;
        // Order within one change: newer facts first, compared condition by
        // condition (what makes CLIPS's depth strategy search depth-first, and
        // gives its firing sequences on Manners and Waltz), then rule
        // declaration order, then fact ids, so the order never depends on
        // memory layout.
        type Key = (std::cmp::Reverse<Vec<u64>>, usize, Vec<FactId>, TokId);
        let mut acts: Vec<Key> = std::mem::take(&mut self.new_acts)
            .into_iter()
            .filter(|&(t, gen)| self.toks[t as usize].alive && self.toks[t as usize].gen == gen)
            .map(|(t, _)| {
                let rule = self.toks[t as usize].rule as usize;
                let (mut ids, mut tags) = (Vec::new(), Vec::new());
                let mut cur = t;
                while cur != NONE {
                    let f = self.toks[cur as usize].fact;
                    ids.push(f);
                    if f != 0 {
                        tags.push(self.facts.get(&f).map_or(0, |r| r.fact.tag));
                    }
                    cur = self.toks[cur as usize].parent;
                }
                ids.reverse();
                tags.reverse();
                (std::cmp::Reverse(tags), rule, ids, t)
            })
            .collect();
        acts.sort();
        for (_, rule, ids, t) in acts {
            self.seq += 1;
            let refracted = self.refract_all && !self.fresh_rules.get(rule).copied().unwrap_or(false);
            if refracted || self.suppressed(rule, ids) {
                continue;
            }
            let key = AgendaKey {
                neg_salience: -(self.pack.rules[rule].salience as i64),
                neg_change: u64::MAX - self.change,
                seq: self.seq,
            };
            self.toks[t as usize].agenda = Some(key);
            self.agenda.insert(key, t);
        }
    }

    fn suppressed(&self, rule: usize, mut ids: Vec<FactId>) -> bool {
        let Some((r, facts)) = &self.suppress else { return false };
        if *r != rule {
            return false;
        }
        ids.retain(|&f| f != 0);
        ids.sort_unstable();
        ids == *facts
    }

    /// Scheduled activations, counted by rule index.
    pub fn agenda_by_rule(&self) -> Vec<u64> {
        let mut n = vec![0; self.pack.rules.len()];
        for t in self.agenda.values() {
            n[self.toks[*t as usize].rule as usize] += 1;
        }
        n
    }

    /// Takes the activation to fire next (refraction: it will not return).
    pub fn pop(&mut self) -> Option<Activation> {
        let (_, t) = self.agenda.pop_first()?;
        self.toks[t as usize].agenda = None;
        Some(Activation { rule: self.toks[t as usize].rule as usize, token: t })
    }

    /// Whether a token is still a live complete match.
    pub fn token_alive(&self, t: TokId) -> bool {
        self.toks.get(t as usize).is_some_and(|x| x.alive)
    }

    fn add_to_mem(&mut self, t: TokId) -> R<()> {
        let tok = &self.toks[t as usize];
        let (rule, level) = (tok.rule as usize, tok.level as usize);
        let key = self.token_key(rule, level, t)?;
        let bucket = self.mems[rule][level].entry(key.clone()).or_default();
        let pos = bucket.len() as u32;
        bucket.push(t);
        self.toks[t as usize].mem = Some((key, pos));
        Ok(())
    }

    /// A token arrived at `level`: join it with the next condition.
    fn left_activate(&mut self, t: TokId) -> R<()> {
        let (rule, level) = {
            let tok = &self.toks[t as usize];
            (tok.rule as usize, tok.level as usize)
        };
        let pack = self.pack.clone();
        let conds = &pack.rules[rule].conditions;
        if level == conds.len() {
            let gen = self.toks[t as usize].gen;
            self.new_acts.push((t, gen));
            return Ok(());
        }
        let next = level as u16 + 1;
        match &conds[level] {
            Condition::Test(c) => {
                if self.check(c, &self.env(rule, t, None))? {
                    let child = self.new_tok(rule as u32, next, t, 0, None);
                    self.left_activate(child)?;
                }
            }
            cond => {
                self.add_to_mem(t)?;
                let m = self.alpha_of[rule][level];
                let key = self.toks[t as usize].mem.as_ref().expect("in memory").0.clone();
                let p = self.pattern(rule, level);
                let mut matches = Vec::new();
                for &f in self.alpha[m as usize].buckets.get(&key).into_iter().flatten() {
                    if self.beta_pass(rule, p, t, &self.facts[&f].fact)? {
                        matches.push(f);
                    }
                }
                match cond {
                    Condition::Pattern { .. } => {
                        for f in matches {
                            let child = self.new_tok(rule as u32, next, t, f, None);
                            self.left_activate(child)?;
                        }
                    }
                    Condition::Not(_) | Condition::Exists(_) => {
                        let n = matches.len() as u32;
                        self.toks[t as usize].side = Side::Count(n);
                        if (n == 0) == matches!(cond, Condition::Not(_)) {
                            let child = self.new_tok(rule as u32, next, t, 0, None);
                            self.left_activate(child)?;
                        }
                    }
                    Condition::Aggregate { .. } => {
                        let mut items = Vec::with_capacity(matches.len());
                        for f in matches {
                            items.push((f, self.operand(rule, level, t, f)?));
                        }
                        items.sort_by_key(|i| i.0);
                        self.toks[t as usize].side = Side::Items(items);
                        self.refresh_aggregate(t)?;
                    }
                    Condition::Test(_) => unreachable!(),
                }
            }
        }
        Ok(())
    }

    fn operand(&self, rule: usize, cond: usize, t: TokId, f: FactId) -> R<Value> {
        let Condition::Aggregate { over, .. } = &self.pack.rules[rule].conditions[cond] else {
            unreachable!("aggregate")
        };
        let fact = &self.facts[&f].fact;
        match over {
            Some(c) => self.eval(c, &self.env(rule, t, Some(fact))),
            None => {
                let mut m: BTreeMap<Arc<str>, Value> = fact.fields.iter().map(|(k, v)| (k.name(), v.clone())).collect();
                m.insert(Arc::from("_id"), Value::Int(f as i64));
                Ok(Value::Map(Arc::new(m)))
            }
        }
    }

    /// Replaces the child of an aggregate token with one carrying the new value.
    fn refresh_aggregate(&mut self, t: TokId) -> R<()> {
        if let Some(d) = &mut self.deferred {
            d.push((t, self.toks[t as usize].gen));
            return Ok(());
        }
        let (rule, level) = {
            let tok = &self.toks[t as usize];
            (tok.rule as usize, tok.level as usize)
        };
        let Condition::Aggregate { func, .. } = &self.pack.rules[rule].conditions[level] else {
            unreachable!("aggregate")
        };
        let Side::Items(items) = &self.toks[t as usize].side else { unreachable!("items") };
        let value = aggregate(*func, items).map_err(|m| self.err(rule, m))?;
        if let Some(&c) = self.toks[t as usize].children.first() {
            if value.as_ref() == self.toks[c as usize].value.as_ref() {
                return Ok(());
            }
            self.delete_tok(c);
        }
        if let Some(v) = value {
            let child = self.new_tok(rule as u32, level as u16 + 1, t, 0, Some(v));
            self.left_activate(child)?;
        }
        Ok(())
    }

    fn matching_tokens(&self, m: u32, f: FactId) -> R<Vec<TokId>> {
        let mem = &self.alpha[m as usize];
        let (rule, cond) = (mem.rule as usize, mem.cond as usize);
        let fact = &self.facts[&f].fact;
        let key = self.fact_key(mem, fact);
        let p = self.pattern(rule, cond);
        let mut out = Vec::new();
        if let Some(bucket) = self.mems[rule][cond].get(&key) {
            for &t in bucket {
                if self.beta_pass(rule, p, t, fact)? {
                    out.push(t);
                }
            }
        }
        Ok(out)
    }

    /// A fact entered alpha memory `m`: join it with the waiting tokens.
    fn right_activate(&mut self, m: u32, f: FactId) -> R<()> {
        let (rule, cond) = (self.alpha[m as usize].rule as usize, self.alpha[m as usize].cond as usize);
        let pack = self.pack.clone();
        let next = cond as u16 + 1;
        for t in self.matching_tokens(m, f)? {
            match &pack.rules[rule].conditions[cond] {
                Condition::Pattern { .. } => {
                    let child = self.new_tok(rule as u32, next, t, f, None);
                    self.left_activate(child)?;
                }
                Condition::Not(_) | Condition::Exists(_) => {
                    let Side::Count(n) = &mut self.toks[t as usize].side else { unreachable!("count") };
                    *n += 1;
                    if *n == 1 {
                        if matches!(pack.rules[rule].conditions[cond], Condition::Not(_)) {
                            while let Some(&c) = self.toks[t as usize].children.last() {
                                self.delete_tok(c);
                            }
                        } else {
                            let child = self.new_tok(rule as u32, next, t, 0, None);
                            self.left_activate(child)?;
                        }
                    }
                }
                Condition::Aggregate { .. } => {
                    let v = self.operand(rule, cond, t, f)?;
                    let Side::Items(items) = &mut self.toks[t as usize].side else { unreachable!("items") };
                    let at = items.partition_point(|i| i.0 < f);
                    items.insert(at, (f, v));
                    self.refresh_aggregate(t)?;
                }
                Condition::Test(_) => unreachable!(),
            }
        }
        Ok(())
    }

    /// A fact is leaving alpha memory `m` (it is still readable).
    fn right_retract(&mut self, m: u32, f: FactId) -> R<()> {
        let (rule, cond) = (self.alpha[m as usize].rule as usize, self.alpha[m as usize].cond as usize);
        let pack = self.pack.clone();
        let next = cond as u16 + 1;
        match &pack.rules[rule].conditions[cond] {
            Condition::Pattern { .. } => {} // its tokens were deleted with the fact
            Condition::Not(_) | Condition::Exists(_) => {
                for t in self.matching_tokens(m, f)? {
                    let Side::Count(n) = &mut self.toks[t as usize].side else { unreachable!("count") };
                    *n -= 1;
                    if *n == 0 {
                        if matches!(pack.rules[rule].conditions[cond], Condition::Not(_)) {
                            let child = self.new_tok(rule as u32, next, t, 0, None);
                            self.left_activate(child)?;
                        } else {
                            while let Some(&c) = self.toks[t as usize].children.last() {
                                self.delete_tok(c);
                            }
                        }
                    }
                }
            }
            Condition::Aggregate { .. } => {
                // The fact's fields are unchanged since it was counted, so the
                // same tokens match; drop it from each.
                for t in self.matching_tokens(m, f)? {
                    let Side::Items(items) = &mut self.toks[t as usize].side else { unreachable!("items") };
                    if let Ok(at) = items.binary_search_by_key(&f, |i| i.0) {
                        items.remove(at);
                        self.refresh_aggregate(t)?;
                    }
                }
            }
            Condition::Test(_) => unreachable!(),
        }
        Ok(())
    }

    /// The ids and versions of the facts an activation matched, in order.
    pub fn matched_facts(&self, t: TokId) -> Vec<(FactId, u32)> {
        let mut out = Vec::new();
        let mut cur = t;
        while cur != NONE {
            let f = self.toks[cur as usize].fact;
            if f != 0 {
                out.push((f, self.facts.get(&f).map(|r| r.fact.version).unwrap_or(0)));
            }
            cur = self.toks[cur as usize].parent;
        }
        out.reverse();
        out
    }
}

fn aggregate(func: AggFn, items: &[(FactId, Value)]) -> Result<Option<Value>, String> {
    Ok(match func {
        AggFn::Count => Some(Value::Int(items.len() as i64)),
        AggFn::Collect => Some(Value::Array(Arc::new(items.iter().map(|i| i.1.clone()).collect()))),
        AggFn::Sum => {
            let mut int: Option<i64> = Some(0);
            let mut float = 0.0;
            for (_, v) in items {
                match v {
                    Value::Int(i) => {
                        int = int.and_then(|s| s.checked_add(*i));
                        float += *i as f64;
                    }
                    Value::Float(x) => {
                        int = None;
                        float += x;
                    }
                    Value::Null => {}
                    other => return Err(format!("sum over a {} value {other}", other.type_name())),
                }
            }
            Some(int.map(Value::Int).unwrap_or(Value::Float(float)))
        }
        AggFn::Min | AggFn::Max => {
            let mut best: Option<&Value> = None;
            for (_, v) in items {
                if matches!(v, Value::Null) {
                    continue;
                }
                best = match best {
                    None => Some(v),
                    Some(b) => {
                        let ord = v
                            .partial_cmp_value(b)
                            .ok_or_else(|| format!("cannot compare {} with {}", v.type_name(), b.type_name()))?;
                        let better = if func == AggFn::Min { ord.is_lt() } else { ord.is_gt() };
                        Some(if better { v } else { b })
                    }
                };
            }
            best.cloned()
        }
    })
}

struct NetEnv<'a> {
    net: &'a Network,
    rule: usize,
    tok: TokId,
    current: Option<&'a Fact>,
}

impl NetEnv<'_> {
    fn fact_field(&self, f: &Fact, name: Sym) -> Option<Value> {
        if name == self.net.id_sym {
            return Some(Value::Int(f.id as i64));
        }
        f.fields.get(name).cloned()
    }
}

impl Env for NetEnv<'_> {
    fn field(&self, name: Sym) -> Option<Value> {
        self.current.and_then(|f| self.fact_field(f, name))
    }

    fn bound_field(&self, slot: usize, name: Sym) -> Option<Value> {
        if self.tok == NONE {
            return None;
        }
        match self.net.bound_at(self.tok, self.rule, slot)? {
            (f, _) if f != 0 => self.fact_field(&self.net.facts.get(&f)?.fact, name),
            (_, Some(Value::Map(m))) => m.get(&*name.name()).cloned(),
            _ => None,
        }
    }

    fn bound(&self, slot: usize) -> Value {
        if self.tok == NONE {
            return Value::Null;
        }
        match self.net.bound_at(self.tok, self.rule, slot) {
            Some((f, _)) if f != 0 => Value::Int(f as i64),
            Some((_, Some(v))) => v.clone(),
            _ => Value::Null,
        }
    }
}

/// Fields of a fact as a `Value::Map` (for `collect` and reports).
pub fn fields_value(fields: &Fields) -> Value {
    Value::Map(Arc::new(fields.iter().map(|(k, v)| (k.name(), v.clone())).collect()))
}
