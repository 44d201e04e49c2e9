//! The matching network: Rete with hash-indexed joins, negation, `exists`,
//! aggregates and an agenda.
//!
//! Each rule is a chain of conditions. A token is a partial match of a rule:
//! the facts (or aggregate values) bound by its first `level` conditions.
//! Alpha memories hold the facts that pass a condition's own tests, indexed
//! by the fields of its equality joins; token memories hold the tokens
//! waiting at a condition, indexed by the join key computed from their
//! bindings. A change to a fact only visits the memories of its type and,
//! through the indexes, the tokens it joins with: nothing re-scans working
//! memory.
//!
//! Modifying a fact is retracting and re-inserting it, so creating and
//! deleting tokens must be cheap: tokens live in one vector with a free list,
//! are linked to their parent's and their fact's other tokens by indices (no
//! per-token collections), and facts live in a slab that tokens and memories
//! address by slot, not through the id map.
//!
//! Invariant: the network does no I/O and runs only the sandboxed scripts of
//! constraints.

mod agenda;
mod extreme;
mod ids;
mod index;
mod plan;
mod slots;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use smallvec::SmallVec;
use stoa_rules::compile::{Condition, Constraint, Pack, Pattern};
use stoa_rules::expr::{compare, Env, Expr};
use stoa_rules::sandbox::ScriptValue;
use stoa_rules::syntax::AggFn;
use stoa_rules::{Fields, Sym, Value};

use crate::fact::{Fact, FactId};
use agenda::Agenda;
use index::Index;
use plan::{AlphaTest, BetaTest, Kind, Plan, SharedMem};

pub type TokId = u32;
/// No token, no fact slot, not in a memory.
const NONE: u32 = u32::MAX;
static NULL: Value = Value::Null;

/// A constraint failed to evaluate (a script error or a type error).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("rule \"{rule}\": {message}")]
pub struct MatchError {
    pub rule: String,
    pub message: String,
}

type R<T> = Result<T, MatchError>;

/// Where a fact sits in one shared alpha memory.
#[derive(Clone, Copy)]
struct AlphaRef {
    /// The shared memory (`Plan::shared`).
    mem: u32,
    bucket: u32,
    pos: u32,
}

struct FactRec {
    fact: Fact,
    alpha: SmallVec<[AlphaRef; 2]>,
    /// First of the tokens whose own fact is this one (linked through
    /// `Tok::next_of_fact`).
    toks: TokId,
    /// A later effect of the action being applied retracts it (`doom`).
    doomed: bool,
}

/// The contents of a shared memory (`Plan::shared`) in one workflow, made
/// when its first fact arrives.
struct AlphaState {
    index: Index,
    /// Extremes of fields its `not`/`exists` conditions compare
    /// (`SharedMem::extremes`).
    extremes: Vec<extreme::Tracker>,
}

/// What only tokens around aggregates carry, boxed to keep every token
/// small (a Manners run creates and deletes hundreds of thousands).
#[derive(Default)]
struct Extra {
    /// The result of the aggregate before this token's level.
    value: Option<Value>,
    /// Matching facts of the aggregate after it and their operand values,
    /// by fact id.
    items: Vec<(FactId, Value)>,
}

struct Tok {
    rule: u32,
    level: u16,
    alive: bool,
    parent: TokId,
    /// Slot of the fact bound at this level, or `NONE`.
    fact: u32,
    first_child: TokId,
    /// Siblings (children of the same parent).
    prev: TokId,
    next: TokId,
    /// Other tokens of the same fact.
    prev_of_fact: TokId,
    next_of_fact: TokId,
    /// Bucket and position in the token memory at `level`; the position is
    /// `NONE` when not in a memory.
    mem_bucket: u32,
    mem_pos: u32,
    /// Generation, bumped when the slot is freed, so stale references die.
    gen: u32,
    /// Slot of one fact matching the `not`/`exists` after it, or `NONE`.
    /// One is enough to decide the condition (CLIPS's blocker): a join
    /// stops at the first match instead of counting them all, another is
    /// looked for only when this one leaves, and a fact arriving for a
    /// token already blocked is not even tested.
    blocker: u32,
    extra: Option<Box<Extra>>,
    /// Whether the token is a complete match waiting on the agenda.
    scheduled: bool,
}

/// An activation being ordered: the start and length of its run of tags
/// (in `end_change`'s buffer), its rule and its token.
type ActRun = (u32, u32, u32, TokId);

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
    /// The static network, shared by every workflow of the pack.
    plan: Arc<Plan>,
    /// Facts by slot; a retracted fact's slot is reused.
    facts: Vec<Option<FactRec>>,
    /// The recency tag of the fact in each slot, apart: ordering a change
    /// reads the tag of every fact of every new activation, and a dense
    /// array keeps those reads in cache.
    slot_tags: Vec<u64>,
    free_facts: Vec<u32>,
    slot_of: ids::IdMap,
    toks: Vec<Tok>,
    free: slots::FreeSlots,
    /// For each shared memory, 1 + the index of its contents in
    /// `alpha_states`, or 0 (or nothing, past the end) while no fact has
    /// entered it: a workflow holds the memories its facts reach, not one
    /// per condition of the pack.
    alpha_slot: Vec<u32>,
    alpha_states: Vec<AlphaState>,
    /// For each rule, 1 + where its token memories (one per condition,
    /// indexed by join key) start in `tok_mems`, or 0 (or nothing) while no
    /// token of the rule has waited in one.
    rule_mems: Vec<u32>,
    tok_mems: Vec<Index>,
    agenda: Agenda,
    new_acts: Vec<(TokId, u32)>,
    /// Buffers of `end_change`, kept between changes.
    sort_buf: (Vec<u64>, Vec<ActRun>),
    order_buf: Vec<(TokId, u32, i64)>,
    /// While set, new activations of this rule over these facts (sorted ids)
    /// are refracted at once: the `no-loop` of the firing activation.
    pub suppress: Option<(usize, Vec<FactId>)>,
    /// While set (inside `modify`), aggregate tokens to refresh at the end,
    /// so a modify that leaves an aggregate unchanged does not re-activate.
    deferred: Option<Vec<(TokId, u32)>>,
    /// Whether new activations are marked fired instead of scheduled (used
    /// to rebuild a quiescent workflow from its facts).
    pub refract_all: bool,
    /// Whether `prime` ran: before, no rule has a root token, so facts
    /// match nothing (as facts asserted before a start).
    primed: bool,
    /// Rules (by index) exempt from `refract_all`: new in a pack upgrade.
    pub fresh_rules: Vec<bool>,
    /// Slots of the doomed facts (see `doom`).
    doomed: Vec<u32>,
    /// Spare buffers for the matches of a join.
    match_bufs: Vec<Vec<u32>>,
    id_sym: Sym,
    /// For coverage (`stoa test --coverage`), when on: per rule, the most
    /// conditions a partial match has passed (a token's deepest level).
    reached: Option<Vec<u16>>,
}

impl Network {
    /// An empty network for `pack`; its plan is made once per pack.
    pub fn new(pack: Arc<Pack>) -> Network {
        let plan = pack.derived.get_or_init(|| Plan::new(&pack));
        Network {
            pack,
            plan,
            facts: Vec::new(),
            slot_tags: Vec::new(),
            free_facts: Vec::new(),
            slot_of: ids::IdMap::default(),
            toks: Vec::new(),
            free: slots::FreeSlots::default(),
            alpha_slot: Vec::new(),
            alpha_states: Vec::new(),
            rule_mems: Vec::new(),
            tok_mems: Vec::new(),
            agenda: Agenda::default(),
            new_acts: Vec::new(),
            sort_buf: Default::default(),
            order_buf: Vec::new(),
            suppress: None,
            deferred: None,
            refract_all: false,
            primed: false,
            fresh_rules: Vec::new(),
            doomed: Vec::new(),
            match_bufs: Vec::new(),
            id_sym: Sym::new("_id"),
            reached: None,
        }
    }

    /// Starts recording how far each rule's matching gets (`reached`).
    pub fn track_reach(&mut self, reached: Option<Vec<u16>>) {
        self.reached = Some(reached.unwrap_or_else(|| vec![0; self.pack.rules.len()]));
    }

    /// Per rule, the most conditions a partial match passed since
    /// `track_reach`; what a rebuilt network takes over.
    pub fn reached(&self) -> Option<&[u16]> {
        self.reached.as_deref()
    }

    pub fn take_reached(&mut self) -> Option<Vec<u16>> {
        self.reached.take()
    }

    pub fn pack(&self) -> &Arc<Pack> {
        &self.pack
    }

    /// The index of the pack's rule named `name`, found by binary search.
    pub fn rule_named(&self, name: &str) -> Option<usize> {
        self.plan.rule_named(&self.pack, name)
    }

    /// Gives the rules their root token (the partial match of no
    /// condition) and lets those that need no fact match; call once after
    /// `new`. Without facts yet (a start), only the rules whose first
    /// condition may hold without a fact get theirs now; the others when a
    /// fact first reaches their first condition (`plant_root`): a workflow
    /// of a large pack holds the roots of the rules its facts reach. Facts
    /// already there (asserted before the start) match now, as every rule
    /// gets its root.
    pub fn prime(&mut self) -> R<()> {
        self.primed = true;
        let all = self.fact_count() > 0;
        let rules = if all { self.pack.rules.len() } else { self.plan.primed.len() };
        for i in 0..rules {
            let r = if all { i as u32 } else { self.plan.primed[i] };
            let root = self.new_tok(r, 0, NONE, NONE, None);
            self.left_activate(root)?;
        }
        self.end_change();
        Ok(())
    }

    /// The root token of a rule whose first condition needs a fact, made
    /// when a first fact enters that condition's memory: as `prime` would
    /// have made it, waiting at that condition with nothing bound, but
    /// joined with no fact (the caller joins it with the one arriving,
    /// the first of that memory).
    fn plant_root(&mut self, rule: usize) -> R<()> {
        let t = self.new_tok(rule as u32, 0, NONE, NONE, None);
        self.remember(rule, 0, t)
    }

    /// Puts token `t` in its rule's token memory at `level`.
    fn remember(&mut self, rule: usize, level: usize, t: TokId) -> R<()> {
        let (hash, bucket) = {
            let key = self.token_key(rule, level, t)?;
            let hash = index::hash(&key);
            (hash, self.tok_mem(rule, level).and_then(|m| m.find(hash, |o| self.token_has_key(rule, level, o, &key))))
        };
        let at = self.tok_mems_at(rule) + level;
        let pos = self.tok_mems[at].push(bucket, hash, t);
        let tok = &mut self.toks[t as usize];
        (tok.mem_bucket, tok.mem_pos) = pos;
        Ok(())
    }

    /// The token memory of a rule at `level`, if any token waited there.
    #[inline]
    fn tok_mem(&self, rule: usize, level: usize) -> Option<&Index> {
        match self.rule_mems.get(rule) {
            Some(&at) if at != 0 => Some(&self.tok_mems[at as usize - 1 + level]),
            _ => None,
        }
    }

    /// Where the token memories of a rule start in `tok_mems`, made if
    /// needed.
    #[inline]
    fn tok_mems_at(&mut self, rule: usize) -> usize {
        let at = match self.rule_mems.get(rule) {
            Some(&at) if at != 0 => at,
            _ => self.make_tok_mems(rule),
        };
        at as usize - 1
    }

    /// Makes the token memories of a rule; returns their place in
    /// `rule_mems`.
    #[cold]
    fn make_tok_mems(&mut self, rule: usize) -> u32 {
        if self.rule_mems.len() <= rule {
            self.rule_mems.resize(rule + 1, 0);
        }
        self.rule_mems[rule] = self.tok_mems.len() as u32 + 1;
        self.tok_mems.extend(self.plan.conds(rule).iter().map(|c| Index::new(c.keyless)));
        self.rule_mems[rule]
    }

    /// The contents of shared memory `s`, if a fact entered it.
    #[inline]
    fn alpha_state(&self, s: u32) -> Option<&AlphaState> {
        match self.alpha_slot.get(s as usize) {
            Some(&at) if at != 0 => Some(&self.alpha_states[at as usize - 1]),
            _ => None,
        }
    }

    /// Where the contents of shared memory `s` are in `alpha_states`,
    /// made if needed.
    #[inline]
    fn alpha_state_at(&mut self, s: u32) -> usize {
        match self.alpha_slot.get(s as usize) {
            Some(&at) if at != 0 => at as usize - 1,
            _ => self.make_alpha_state(s),
        }
    }

    #[cold]
    fn make_alpha_state(&mut self, s: u32) -> usize {
        let s = s as usize;
        if self.alpha_slot.len() <= s {
            self.alpha_slot.resize(s + 1, 0);
        }
        let mem = &self.plan.shared[s];
        self.alpha_states.push(AlphaState {
            index: Index::new(mem.fields.is_empty()),
            extremes: mem.extremes.iter().map(|&(field, max)| extreme::Tracker::new(field, max)).collect(),
        });
        self.alpha_slot[s] = self.alpha_states.len() as u32;
        self.alpha_states.len() - 1
    }

    /// Declares facts that a later effect of the action being applied surely
    /// retracts (or replaces by a modify that changes them). No match through
    /// them could fire: nothing fires before that effect deletes it. So
    /// their matches are deleted now, and none is built through them until
    /// then. Manners's `find_seating` modifies `cnt`, then `ctx`: without
    /// this, the first rebuilds every match under the old `ctx`, which the
    /// second deletes. They stay in their memories meanwhile: what they
    /// block (`not`), let through (`exists`) or count (aggregates) in other
    /// matches is unchanged, and so is the order of every activation that
    /// can fire. The marks last until `undoom`.
    pub fn doom(&mut self, ids: &[FactId]) {
        for &id in ids {
            let Some(slot) = self.slot_of.get(id) else { continue };
            if std::mem::replace(&mut self.rec_mut(slot).doomed, true) {
                continue;
            }
            self.doomed.push(slot);
            loop {
                let t = self.rec(slot).toks;
                if t == NONE {
                    break;
                }
                self.delete_tok(t);
            }
        }
    }

    /// Clears the marks of `doom` (on facts still there: an action that
    /// failed before retracting them).
    pub fn undoom(&mut self) {
        for slot in std::mem::take(&mut self.doomed) {
            if let Some(rec) = self.facts[slot as usize].as_mut() {
                rec.doomed = false;
            }
        }
    }

    /// Room for `n` more facts (a large start turn).
    pub fn reserve(&mut self, n: usize) {
        self.slot_of.reserve(n);
        self.facts.reserve(n.saturating_sub(self.free_facts.len()));
        self.slot_tags.reserve(n.saturating_sub(self.free_facts.len()));
    }

    pub fn fact(&self, id: FactId) -> Option<&Fact> {
        self.slot_of.get(id).map(|s| &self.rec(s).fact)
    }

    pub fn facts(&self) -> impl Iterator<Item = &Fact> {
        self.facts.iter().flatten().map(|r| &r.fact)
    }

    pub fn fact_count(&self) -> usize {
        self.slot_of.len()
    }

    /// Token slots allocated (live or free for reuse): what partial
    /// matches cost in memory.
    pub fn token_slots(&self) -> usize {
        self.toks.len()
    }

    pub fn agenda_len(&self) -> usize {
        self.agenda.len()
    }

    fn rec(&self, slot: u32) -> &FactRec {
        self.facts[slot as usize].as_ref().expect("live fact slot")
    }

    fn rec_mut(&mut self, slot: u32) -> &mut FactRec {
        self.facts[slot as usize].as_mut().expect("live fact slot")
    }

    // ---- tokens -------------------------------------------------------

    fn new_tok(&mut self, rule: u32, level: u16, parent: TokId, fact: u32, value: Option<Value>) -> TokId {
        if let Some(r) = &mut self.reached {
            let deepest = &mut r[rule as usize];
            *deepest = (*deepest).max(level);
        }
        let next = if parent != NONE { self.toks[parent as usize].first_child } else { NONE };
        let next_of_fact = if fact != NONE { self.rec(fact).toks } else { NONE };
        let id = match self.free.pop() {
            Some(id) => {
                // A freed slot was reset by `delete_tok` (no side, no value,
                // out of memory and agenda): only the links and identity
                // change, written in place.
                let tok = &mut self.toks[id as usize];
                (tok.rule, tok.level, tok.alive, tok.parent, tok.fact) = (rule, level, true, parent, fact);
                // Replaced without reading the old value (it is `None`): the
                // slot is cold, and a read would wait for it where writes
                // do not.
                debug_assert!(tok.extra.is_none());
                std::mem::forget(std::mem::replace(
                    &mut tok.extra,
                    value.map(|v| Box::new(Extra { value: Some(v), items: Vec::new() })),
                ));
                (tok.first_child, tok.prev, tok.next) = (NONE, NONE, next);
                (tok.prev_of_fact, tok.next_of_fact) = (NONE, next_of_fact);
                id
            }
            None => {
                self.toks.push(Tok {
                    rule,
                    level,
                    alive: true,
                    parent,
                    fact,
                    first_child: NONE,
                    prev: NONE,
                    next,
                    prev_of_fact: NONE,
                    next_of_fact,
                    mem_bucket: 0,
                    mem_pos: NONE,
                    gen: 0,
                    blocker: NONE,
                    extra: value.map(|v| Box::new(Extra { value: Some(v), items: Vec::new() })),
                    scheduled: false,
                });
                (self.toks.len() - 1) as TokId
            }
        };
        if parent != NONE {
            if next != NONE {
                self.toks[next as usize].prev = id;
            }
            self.toks[parent as usize].first_child = id;
        }
        if fact != NONE {
            if next_of_fact != NONE {
                self.toks[next_of_fact as usize].prev_of_fact = id;
            }
            self.rec_mut(fact).toks = id;
        }
        id
    }

    fn delete_tok(&mut self, t: TokId) {
        loop {
            let c = self.toks[t as usize].first_child;
            if c == NONE {
                break;
            }
            self.delete_tok(c);
        }
        let tok = &mut self.toks[t as usize];
        let (rule, level, parent, fact) = (tok.rule, tok.level, tok.parent, tok.fact);
        let (prev, next, prev_of_fact, next_of_fact) = (tok.prev, tok.next, tok.prev_of_fact, tok.next_of_fact);
        let (mem_bucket, mem_pos) = (tok.mem_bucket, tok.mem_pos);
        let scheduled = std::mem::take(&mut tok.scheduled);
        tok.alive = false;
        tok.gen = tok.gen.wrapping_add(1);
        tok.blocker = NONE;
        tok.extra = None;
        tok.mem_pos = NONE;
        if parent != NONE {
            if prev != NONE {
                self.toks[prev as usize].next = next;
            } else {
                self.toks[parent as usize].first_child = next;
            }
            if next != NONE {
                self.toks[next as usize].prev = prev;
            }
        }
        if fact != NONE {
            if prev_of_fact != NONE {
                self.toks[prev_of_fact as usize].next_of_fact = next_of_fact;
            } else {
                self.rec_mut(fact).toks = next_of_fact;
            }
            if next_of_fact != NONE {
                self.toks[next_of_fact as usize].prev_of_fact = prev_of_fact;
            }
        }
        if mem_pos != NONE {
            // In a memory: the rule's memories exist.
            let at = self.rule_mems[rule as usize] as usize - 1 + level as usize;
            if let Some(moved) = self.tok_mems[at].remove((mem_bucket, mem_pos), t) {
                self.toks[moved as usize].mem_pos = mem_pos;
            }
        }
        self.free.push(t);
        if scheduled {
            let toks = &self.toks;
            self.agenda.forget(|t, g| toks[t as usize].scheduled && toks[t as usize].gen == g);
        }
    }

    fn delete_children(&mut self, t: TokId) {
        loop {
            let c = self.toks[t as usize].first_child;
            if c == NONE {
                break;
            }
            self.delete_tok(c);
        }
    }

    /// The fact slot or value bound at `slot` as seen from token `t`.
    #[inline]
    fn bound_at(&self, t: TokId, rule: usize, slot: usize) -> Option<(u32, Option<&Value>)> {
        let level = self.plan.slot_level(rule, slot);
        let mut cur = t;
        while cur != NONE {
            let tok = &self.toks[cur as usize];
            if tok.level == level {
                return Some((tok.fact, tok.extra.as_ref().and_then(|e| e.value.as_ref())));
            }
            if tok.level < level {
                return None;
            }
            cur = tok.parent;
        }
        None
    }

    /// Field `name` of what token `t` binds at `slot`: a fact's field, or a
    /// map value's entry.
    fn bound_field(&self, t: TokId, rule: usize, slot: usize, name: Sym) -> Option<Cow<'_, Value>> {
        if t == NONE {
            return None;
        }
        match self.bound_at(t, rule, slot)? {
            (f, _) if f != NONE => {
                let fact = &self.rec(f).fact;
                if name == self.id_sym {
                    return Some(Cow::Owned(Value::Int(fact.id as i64)));
                }
                fact.fields.get(name).map(Cow::Borrowed)
            }
            (_, Some(Value::Map(m))) => m.get(&*name.name()).map(Cow::Borrowed),
            _ => None,
        }
    }

    /// Bindings of a complete match, by slot.
    pub fn bindings(&self, t: TokId) -> Vec<Bound> {
        let rule = self.toks[t as usize].rule as usize;
        (0..self.plan.slots(rule))
            .map(|s| match self.bound_at(t, rule, s) {
                Some((f, _)) if f != NONE => Bound::Fact(self.rec(f).fact.id),
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
        match c {
            Constraint::Native(e) => e.test(env).map_err(|e| self.err(env.rule, e.0)),
            Constraint::Script { .. } => Ok(self.eval(c, env)?.is_truthy()),
        }
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
            Some((f, _)) if f != NONE => {
                let fact = &self.rec(f).fact;
                ScriptValue::fact(fact.id, fact.ty, &fact.fields)
            }
            Some((_, Some(v))) => ScriptValue::value(v),
            _ => ScriptValue::value(&Value::Null),
        }
    }

    fn err(&self, rule: usize, message: String) -> MatchError {
        MatchError { rule: self.pack.rules[rule].name.clone(), message }
    }

    /// Whether fact `f` passes the alpha tests of shared memory `sm`.
    fn alpha_pass(&self, sm: &SharedMem, f: &Fact) -> R<bool> {
        let mem = &self.plan.alpha[sm.first as usize];
        let rule = mem.rule as usize;
        for test in &sm.alpha_tests {
            let pass = match test {
                AlphaTest::Compare { op, field, lit, field_left } => {
                    let v = fact_field_ref(f, *field, self.id_sym);
                    if *field_left {
                        compare(*op, &v, lit)
                    } else {
                        compare(*op, lit, &v)
                    }
                }
                AlphaTest::General(i) => {
                    let p = self.pattern(rule, mem.cond as usize);
                    self.check(&p.alpha[*i], &self.env(rule, NONE, Some(f)))?
                }
            };
            if !pass {
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

    /// Join key of token `t` for the pattern at `cond`, borrowed from the
    /// facts it binds where it can be: token memories keep no copy of keys
    /// (a bucket is compared through its first token, see `token_has_key`),
    /// so most keys are never cloned.
    fn token_key(&self, rule: usize, cond: usize, t: TokId) -> R<index::Key<'_>> {
        let p = self.pattern(rule, cond);
        let mut key = index::Key::new();
        for j in &p.joins {
            // Most join keys are a field of an earlier fact: read it directly.
            let v = match &j.key {
                Expr::BoundField(slot, name) => self.bound_field(t, rule, *slot, *name).unwrap_or(Cow::Borrowed(&NULL)),
                e => Cow::Owned(e.eval(&self.env(rule, t, None)).map_err(|e| self.err(rule, e.0))?),
            };
            key.push(v);
        }
        Ok(key)
    }

    /// Whether token `t`, waiting at `cond`, has join key `key`. Its own key
    /// was computed without error when it entered the memory, and bindings
    /// do not change while it lives, so an error here cannot happen.
    fn token_has_key<V: std::borrow::Borrow<Value>>(&self, rule: usize, cond: usize, t: TokId, key: &[V]) -> bool {
        let p = self.pattern(rule, cond);
        p.joins.iter().zip(key).all(|(j, v)| match &j.key {
            Expr::BoundField(slot, name) => {
                *self.bound_field(t, rule, *slot, *name).unwrap_or(Cow::Borrowed(&NULL)) == *v.borrow()
            }
            e => e.eval(&self.env(rule, t, None)).is_ok_and(|x| x == *v.borrow()),
        })
    }

    /// The tokens waiting at `cond` whose join key is `key`.
    fn tokens_with_key<V: std::borrow::Borrow<Value>>(&self, rule: usize, cond: usize, key: &[V]) -> &[u32] {
        match self.tok_mem(rule, cond) {
            Some(m) => m.get_with(index::hash(key), |t| self.token_has_key(rule, cond, t, key)),
            None => &[],
        }
    }

    /// Join key of a fact for alpha memory `m`: its join fields, borrowed.
    fn fact_key<'a>(&self, m: u32, f: &'a Fact) -> SmallVec<[Cow<'a, Value>; 2]> {
        fact_key(&self.plan.alpha[m as usize].fields, f, self.id_sym)
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
        let (id, ty, tag) = (fact.id, fact.ty, fact.tag);
        let rec = FactRec { fact, alpha: SmallVec::new(), toks: NONE, doomed: false };
        let slot = match self.free_facts.pop() {
            Some(s) => {
                self.facts[s as usize] = Some(rec);
                self.slot_tags[s as usize] = tag;
                s
            }
            None => {
                self.facts.push(Some(rec));
                self.slot_tags.push(tag);
                (self.facts.len() - 1) as u32
            }
        };
        self.slot_of.insert(id, slot);
        // The plan, apart from `self`, which the activations change (an
        // `Arc` clone: one increment per fact, not a copy).
        let plan = Arc::clone(&self.plan);
        let Some(tp) = plan.by_type.get(&ty) else { return Ok(()) };
        // The memories to visit, in ascending order: those the fact's
        // values select among the hashed ones, with `always`; or `always`
        // (all of the type's when none is hashed).
        let mut hashed: SmallVec<[u32; 16]> = SmallVec::new();
        if !tp.hashed.is_empty() {
            let (fact, id_sym) = (&self.rec(slot).fact, self.id_sym);
            tp.hashed_candidates(&plan.listeners, |f| fact_field_ref(fact, f, id_sym), &mut hashed);
        }
        let visits = match &hashed[..] {
            [] => &plan.listeners[tp.always.0 as usize..(tp.always.0 + tp.always.1) as usize],
            some => some,
        };
        // Results of the alpha tests, by slot: 0 unknown, 1 pass, 2 fail.
        let mut passed: SmallVec<[u8; 64]> = SmallVec::from_elem(0, tp.pass_slots as usize);
        // The fact's memberships, stored once at the end (a Waltz edge is
        // in dozens of memories: pushing one by one regrows the list).
        let mut refs: SmallVec<[AlphaRef; 16]> = SmallVec::new();
        let mut res = Ok(());
        'mems: for &sm in visits {
            let mem = &plan.shared[sm as usize];
            let at = mem.pass_slot as usize;
            let pass = match passed[at] {
                1 => true,
                2 => false,
                _ => match self.alpha_pass(mem, &self.rec(slot).fact) {
                    Ok(pass) => pass,
                    Err(e) => {
                        res = Err(e);
                        break;
                    }
                },
            };
            passed[at] = if pass { 1 } else { 2 };
            if !pass {
                continue;
            }
            let state = self.alpha_state_at(sm);
            let pos = {
                let (facts, id_sym) = (&self.facts, self.id_sym);
                let f = &facts[slot as usize].as_ref().expect("inserted").fact;
                let key = fact_key(&mem.fields, f, id_sym);
                let hash = index::hash(&key);
                let eq = |f| fact_has_key(facts, f, &mem.fields, &key, id_sym);
                self.alpha_states[state].index.insert_with(hash, eq, slot)
            };
            refs.push(AlphaRef { mem: sm, bucket: pos.0, pos: pos.1 });
            for t in &self.alpha_states[state].extremes {
                t.inserted(slot, |s| field_of(&self.facts, s, t.field));
            }
            for &m in &mem.consumers {
                if let Err(e) = self.right_activate(m, slot) {
                    res = Err(e);
                    break 'mems;
                }
            }
        }
        self.rec_mut(slot).alpha = SmallVec::from_slice(&refs);
        res
    }

    fn retract_inner(&mut self, id: FactId) -> R<Option<Fact>> {
        let Some(slot) = self.slot_of.get(id) else { return Ok(None) };
        loop {
            let t = self.rec(slot).toks;
            if t == NONE {
                break;
            }
            self.delete_tok(t);
        }
        // One memory at a time, each followed by its retraction: what a
        // retraction activates sees the fact still in the later memories,
        // which keeps the counts of `not`/`exists` consistent when those
        // memories retract it in turn.
        let alpha = std::mem::take(&mut self.rec_mut(slot).alpha);
        let plan = Arc::clone(&self.plan);
        for r in &alpha {
            let state = &mut self.alpha_states[self.alpha_slot[r.mem as usize] as usize - 1];
            for t in &state.extremes {
                t.removed(slot);
            }
            if let Some(moved) = state.index.remove((r.bucket, r.pos), slot) {
                let other = self.rec_mut(moved);
                for e in other.alpha.iter_mut().filter(|e| e.mem == r.mem) {
                    e.pos = r.pos;
                }
            }
            for &m in &plan.shared[r.mem as usize].consumers {
                self.right_retract(m, slot)?;
            }
        }
        // Tokens of the fact those activations made in later patterns.
        loop {
            let t = self.rec(slot).toks;
            if t == NONE {
                break;
            }
            self.delete_tok(t);
        }
        let rec = self.facts[slot as usize].take().expect("live fact slot");
        self.free_facts.push(slot);
        self.slot_of.remove(id);
        Ok(Some(rec.fact))
    }

    /// New activations from the last change get their agenda order.
    fn end_change(&mut self) {
        if self.new_acts.is_empty() {
            return;
        }
        if self.refract_all {
            // A rebuild: every match has fired already, but those of rules
            // new in an upgrade, which are scheduled as usual.
            let (toks, fresh) = (&self.toks, &self.fresh_rules);
            self.new_acts.retain(|&(t, _)| fresh.get(toks[t as usize].rule as usize).copied().unwrap_or(false));
            if self.new_acts.is_empty() {
                return;
            }
        }
        // Order within one change: newer facts first, compared condition by
        // condition (what makes CLIPS's depth strategy search depth-first, and
        // gives its firing sequences on Manners and Waltz), then rule
        // declaration order, then fact ids, so the order never depends on
        // memory layout.
        // Tags of all activations end to end; an activation refers to its
        // run, so sorting moves 16 bytes per activation.
        let (mut tags, mut acts) = std::mem::take(&mut self.sort_buf);
        tags.clear();
        acts.clear();
        for &(t, gen) in &self.new_acts {
            let tok = &self.toks[t as usize];
            if !tok.alive || tok.gen != gen {
                continue;
            }
            let start = tags.len();
            let mut cur = t;
            while cur != NONE {
                let f = self.toks[cur as usize].fact;
                if f != NONE {
                    tags.push(self.slot_tags[f as usize]);
                }
                cur = self.toks[cur as usize].parent;
            }
            tags[start..].reverse();
            acts.push((start as u32, (tags.len() - start) as u32, tok.rule, t));
        }
        self.new_acts.clear();
        let run = |a: &ActRun| &tags[a.0 as usize..(a.0 + a.1) as usize];
        acts.sort_unstable_by(|a, b| {
            run(b)
                .cmp(run(a))
                .then(a.2.cmp(&b.2))
                .then_with(|| self.chain_ids(a.3).cmp(&self.chain_ids(b.3)))
                .then(a.3.cmp(&b.3))
        });
        let mut order = std::mem::take(&mut self.order_buf);
        order.clear();
        for &(_, _, rule, t) in &acts {
            if self.suppressed(rule as usize, t) {
                continue;
            }
            let tok = &mut self.toks[t as usize];
            tok.scheduled = true;
            order.push((t, tok.gen, self.pack.rules[rule as usize].salience as i64));
        }
        self.agenda.push_change(&order);
        (self.sort_buf, self.order_buf) = ((tags, acts), order);
    }

    /// The fact ids of a token's chain from the root, 0 where a level binds
    /// no fact.
    fn chain_ids(&self, t: TokId) -> SmallVec<[FactId; 8]> {
        let mut ids = SmallVec::new();
        let mut cur = t;
        while cur != NONE {
            let f = self.toks[cur as usize].fact;
            ids.push(if f == NONE { 0 } else { self.rec(f).fact.id });
            cur = self.toks[cur as usize].parent;
        }
        ids.reverse();
        ids
    }

    fn suppressed(&self, rule: usize, t: TokId) -> bool {
        let Some((r, facts)) = &self.suppress else { return false };
        if *r != rule {
            return false;
        }
        let mut ids = self.chain_ids(t);
        ids.retain(|f| *f != 0);
        ids.sort_unstable();
        ids[..] == facts[..]
    }

    /// Scheduled activations, counted by rule index.
    pub fn agenda_by_rule(&self) -> Vec<u64> {
        let mut n = vec![0; self.pack.rules.len()];
        for (t, g) in self.agenda.entries() {
            let tok = &self.toks[t as usize];
            if tok.scheduled && tok.gen == g {
                n[tok.rule as usize] += 1;
            }
        }
        n
    }

    /// Takes the activation to fire next (refraction: it will not return).
    pub fn pop(&mut self) -> Option<Activation> {
        let toks = &self.toks;
        let t = self.agenda.pop(|t, g| toks[t as usize].scheduled && toks[t as usize].gen == g)?;
        self.toks[t as usize].scheduled = false;
        Some(Activation { rule: self.toks[t as usize].rule as usize, token: t })
    }

    /// The activations on the agenda in the order they would fire: rule
    /// and matched facts (for `explain`; empty between turns).
    pub fn queued(&self) -> Vec<(usize, Vec<(FactId, u32)>)> {
        let toks = &self.toks;
        self.agenda
            .in_firing_order()
            .filter(|&(t, g)| toks[t as usize].scheduled && toks[t as usize].gen == g)
            .map(|(t, _)| (toks[t as usize].rule as usize, self.matched_facts(t)))
            .collect()
    }

    /// Whether a token is still a live complete match.
    pub fn token_alive(&self, t: TokId) -> bool {
        self.toks.get(t as usize).is_some_and(|x| x.alive)
    }

    /// A token arrived at `level`: join it with the next condition.
    fn left_activate(&mut self, t: TokId) -> R<()> {
        let (rule, level) = {
            let tok = &self.toks[t as usize];
            (tok.rule as usize, tok.level as usize)
        };
        let Some(&plan::Cond { kind, alpha: m, .. }) = self.plan.conds(rule).get(level) else {
            let gen = self.toks[t as usize].gen;
            self.new_acts.push((t, gen));
            return Ok(());
        };
        let next = level as u16 + 1;
        match kind {
            Kind::Test => {
                let Condition::Test(c) = &self.pack.rules[rule].conditions[level] else { unreachable!("test") };
                if self.check(c, &self.env(rule, t, None))? {
                    let child = self.new_tok(rule as u32, next, t, NONE, None);
                    self.left_activate(child)?;
                }
            }
            _ => {
                // Matches go to a buffer of the pool: a join yields up to
                // hundreds, and the children's joins need buffers of their own.
                let mut matches = self.match_bufs.pop().unwrap_or_default();
                // The token waits here: its rule's memories are needed.
                let at = self.tok_mems_at(rule) + level;
                let (hash, bucket) = {
                    let key = self.token_key(rule, level, t)?;
                    let hash = index::hash(&key);
                    let first_only = matches!(kind, Kind::Not | Kind::Exists);
                    let bucket = self.tok_mems[at].find(hash, |o| self.token_has_key(rule, level, o, &key));
                    matches.clear();
                    self.join_facts(m, t, hash, &key, first_only, &mut matches)?;
                    (hash, bucket)
                };
                let pos = self.tok_mems[at].push(bucket, hash, t);
                let tok = &mut self.toks[t as usize];
                (tok.mem_bucket, tok.mem_pos) = pos;
                match kind {
                    Kind::Pattern => {
                        for &f in &matches {
                            if self.rec(f).doomed {
                                continue;
                            }
                            let child = self.new_tok(rule as u32, next, t, f, None);
                            self.left_activate(child)?;
                        }
                    }
                    Kind::Not | Kind::Exists => {
                        let blocker = matches.first().copied().unwrap_or(NONE);
                        self.toks[t as usize].blocker = blocker;
                        if (blocker == NONE) == (kind == Kind::Not) {
                            let child = self.new_tok(rule as u32, next, t, NONE, None);
                            self.left_activate(child)?;
                        }
                    }
                    Kind::Aggregate => {
                        let mut items = Vec::with_capacity(matches.len());
                        for &f in &matches {
                            items.push((self.rec(f).fact.id, self.operand(rule, level, t, f)?));
                        }
                        items.sort_by_key(|i| i.0);
                        self.toks[t as usize].extra.get_or_insert_with(Default::default).items = items;
                        self.refresh_aggregate(t)?;
                    }
                    Kind::Test => unreachable!(),
                }
                self.match_bufs.push(matches);
            }
        }
        Ok(())
    }

    fn operand(&self, rule: usize, cond: usize, t: TokId, f: u32) -> R<Value> {
        let Condition::Aggregate { over, .. } = &self.pack.rules[rule].conditions[cond] else {
            unreachable!("aggregate")
        };
        let fact = &self.rec(f).fact;
        match over {
            Some(c) => self.eval(c, &self.env(rule, t, Some(fact))),
            None => {
                let mut m: BTreeMap<Arc<str>, Value> = fact.fields.iter().map(|(k, v)| (k.name(), v.clone())).collect();
                m.insert(Arc::from("_id"), Value::Int(fact.id as i64));
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
        let items = &self.toks[t as usize].extra.as_ref().expect("aggregate items").items;
        let value = aggregate(*func, items).map_err(|m| self.err(rule, m))?;
        let c = self.toks[t as usize].first_child;
        if c != NONE {
            if value.as_ref() == self.toks[c as usize].extra.as_ref().and_then(|e| e.value.as_ref()) {
                return Ok(());
            }
            self.delete_tok(c);
        }
        if let Some(v) = value {
            let child = self.new_tok(rule as u32, level as u16 + 1, t, NONE, Some(v));
            self.left_activate(child)?;
        }
        Ok(())
    }

    /// Adds to `out` the facts of alpha memory `m` that join with token `t`
    /// (whose join key is `key`); only the first if `first_only`.
    fn join_facts<V: std::borrow::Borrow<Value>>(
        &self,
        m: u32,
        t: TokId,
        hash: u64,
        key: &[V],
        first_only: bool,
        out: &mut Vec<u32>,
    ) -> R<()> {
        let mem = &self.plan.alpha[m as usize];
        // No fact ever entered the memory: nothing joins.
        let Some(shared) = self.alpha_state(mem.shared) else { return Ok(()) };
        let mut candidates =
            shared.index.get_with(hash, |f| fact_has_key(&self.facts, f, &mem.fields, key, self.id_sym));
        // One fact decides a `not`/`exists` on one comparison: the extreme.
        let extreme;
        if let Some(x) = mem.extreme.filter(|_| first_only) {
            let t = &shared.extremes[x as usize];
            match t.get(candidates, |s| field_of(&self.facts, s, t.field)) {
                extreme::State::At(s) => {
                    extreme = s;
                    candidates = std::slice::from_ref(&extreme);
                }
                extreme::State::Empty => candidates = &[],
                extreme::State::Mixed | extreme::State::Stale => {}
            }
        }
        if mem.beta.is_empty() {
            let n = if first_only { candidates.len().min(1) } else { candidates.len() };
            out.extend_from_slice(&candidates[..n]);
            return Ok(());
        }
        // The token's side of each comparison, computed when first needed
        // (an error is raised only if the test is reached, as per fact).
        let (rule, cond) = (mem.rule as usize, mem.cond as usize);
        let p = self.pattern(rule, cond);
        let mut others: SmallVec<[Option<Result<Value, String>>; 4]> = SmallVec::from_elem(None, mem.beta.len());
        let tok_env = self.env(rule, t, None);
        'facts: for &f in candidates {
            let fact = &self.rec(f).fact;
            for (i, test) in mem.beta.iter().enumerate() {
                let pass = match test {
                    BetaTest::Compare { op, field, other, field_left } => {
                        let v = others[i]
                            .get_or_insert_with(|| match other {
                                Expr::BoundField(s, n) => {
                                    Ok(tok_env.bound_field(*s, *n).map(Cow::into_owned).unwrap_or_default())
                                }
                                e => e.eval(&tok_env).map_err(|e| e.0),
                            })
                            .as_ref()
                            .map_err(|e| self.err(rule, e.clone()))?;
                        let fv = fact_field_ref(fact, *field, self.id_sym);
                        if *field_left {
                            compare(*op, &fv, v)
                        } else {
                            compare(*op, v, &fv)
                        }
                    }
                    BetaTest::General(c) => self.check(&p.beta[*c], &self.env(rule, t, Some(fact)))?,
                };
                if !pass {
                    continue 'facts;
                }
            }
            out.push(f);
            if first_only {
                break;
            }
        }
        Ok(())
    }

    /// The tokens waiting at the condition of alpha memory `m` that join
    /// with the fact in slot `f`.
    fn matching_tokens(&self, m: u32, f: u32, unblocked_only: bool) -> R<SmallVec<[TokId; 16]>> {
        let mem = &self.plan.alpha[m as usize];
        let (rule, cond) = (mem.rule as usize, mem.cond as usize);
        if self.tok_mem(rule, cond).is_none_or(Index::is_empty) {
            // No token waits here (its rule's earlier conditions do not
            // match now): nothing to join, not even a key to compute.
            return Ok(SmallVec::new());
        }
        let fact = &self.rec(f).fact;
        let key = self.fact_key(m, fact);
        let p = self.pattern(rule, cond);
        let mut out = SmallVec::new();
        for &t in self.tokens_with_key(rule, cond, &key) {
            if unblocked_only && self.toks[t as usize].blocker != NONE {
                continue;
            }
            if self.beta_pass(rule, p, t, fact)? {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// The tokens waiting at the `not`/`exists` of alpha memory `m` that the
    /// fact in slot `f` blocks (they share its join key).
    fn blocked_by(&self, m: u32, f: u32) -> SmallVec<[TokId; 16]> {
        let mem = &self.plan.alpha[m as usize];
        let (rule, cond) = (mem.rule as usize, mem.cond as usize);
        let key = self.fact_key(m, &self.rec(f).fact);
        let toks = self.tokens_with_key(rule, cond, &key);
        toks.iter().copied().filter(|&t| self.toks[t as usize].blocker == f).collect()
    }

    /// A fact entered alpha memory `m`: join it with the waiting tokens.
    fn right_activate(&mut self, m: u32, f: u32) -> R<()> {
        let (rule, cond) = (self.plan.alpha[m as usize].rule as usize, self.plan.alpha[m as usize].cond as usize);
        let kind = self.plan.cond(rule, cond).kind;
        if cond == 0 && self.primed && self.tok_mem(rule, 0).is_none_or(Index::is_empty) {
            // The first fact to reach the rule: its root, which `prime` left
            // to be made now (a root, once made, never leaves this memory).
            self.plant_root(rule)?;
        }
        let next = cond as u16 + 1;
        // A token already blocked needs no test: one more match changes nothing.
        let unblocked_only = matches!(kind, Kind::Not | Kind::Exists);
        for t in self.matching_tokens(m, f, unblocked_only)? {
            match kind {
                Kind::Pattern => {
                    let child = self.new_tok(rule as u32, next, t, f, None);
                    self.left_activate(child)?;
                }
                Kind::Not | Kind::Exists => {
                    self.toks[t as usize].blocker = f;
                    if kind == Kind::Not {
                        self.delete_children(t);
                    } else {
                        let child = self.new_tok(rule as u32, next, t, NONE, None);
                        self.left_activate(child)?;
                    }
                }
                Kind::Aggregate => {
                    let v = self.operand(rule, cond, t, f)?;
                    let id = self.rec(f).fact.id;
                    let items = &mut self.toks[t as usize].extra.as_mut().expect("aggregate items").items;
                    let at = items.partition_point(|i| i.0 < id);
                    items.insert(at, (id, v));
                    self.refresh_aggregate(t)?;
                }
                Kind::Test => unreachable!(),
            }
        }
        Ok(())
    }

    /// A fact is leaving alpha memory `m` (it is still readable).
    fn right_retract(&mut self, m: u32, f: u32) -> R<()> {
        let (rule, cond) = (self.plan.alpha[m as usize].rule as usize, self.plan.alpha[m as usize].cond as usize);
        let kind = self.plan.cond(rule, cond).kind;
        let next = cond as u16 + 1;
        match kind {
            Kind::Pattern => {} // its tokens were deleted with the fact
            Kind::Not | Kind::Exists => {
                // The tokens this fact blocked look for another blocker among
                // the facts still in the memory (it has left it already).
                for t in self.blocked_by(m, f) {
                    let other = {
                        let key = self.token_key(rule, cond, t)?;
                        let mut first = Vec::new();
                        self.join_facts(m, t, index::hash(&key), &key, true, &mut first)?;
                        first.first().copied()
                    };
                    self.toks[t as usize].blocker = other.unwrap_or(NONE);
                    if other.is_some() {
                        continue;
                    }
                    if kind == Kind::Not {
                        let child = self.new_tok(rule as u32, next, t, NONE, None);
                        self.left_activate(child)?;
                    } else {
                        self.delete_children(t);
                    }
                }
            }
            Kind::Aggregate => {
                // The fact's fields are unchanged since it was counted, so the
                // same tokens match; drop it from each.
                let id = self.rec(f).fact.id;
                for t in self.matching_tokens(m, f, false)? {
                    let items = &mut self.toks[t as usize].extra.as_mut().expect("aggregate items").items;
                    if let Ok(at) = items.binary_search_by_key(&id, |i| i.0) {
                        items.remove(at);
                        self.refresh_aggregate(t)?;
                    }
                }
            }
            Kind::Test => unreachable!(),
        }
        Ok(())
    }

    /// The ids and versions of the facts an activation matched, in order.
    pub fn matched_facts(&self, t: TokId) -> Vec<(FactId, u32)> {
        let mut out = Vec::new();
        let mut cur = t;
        while cur != NONE {
            let f = self.toks[cur as usize].fact;
            if f != NONE {
                let fact = &self.rec(f).fact;
                out.push((fact.id, fact.version));
            }
            cur = self.toks[cur as usize].parent;
        }
        out.reverse();
        out
    }
}

/// A fact's values of `fields`, borrowed (pushed one by one: cheaper than
/// collecting, which this is called too often for).
fn fact_key<'a>(fields: &[Sym], f: &'a Fact, id_sym: Sym) -> SmallVec<[Cow<'a, Value>; 2]> {
    let mut key = SmallVec::new();
    for &s in fields {
        key.push(fact_field_ref(f, s, id_sym));
    }
    key
}

/// Whether the fact in slot `f` has `key` as the values of `fields`.
fn fact_has_key<V: std::borrow::Borrow<Value>>(
    facts: &[Option<FactRec>],
    f: u32,
    fields: &[Sym],
    key: &[V],
    id_sym: Sym,
) -> bool {
    let fact = &facts[f as usize].as_ref().expect("live fact slot").fact;
    fields.iter().zip(key).all(|(&s, v)| *fact_field_ref(fact, s, id_sym) == *v.borrow())
}

/// Field `name` of the fact in slot `f` (null if it has none).
fn field_of(facts: &[Option<FactRec>], f: u32, name: Sym) -> &Value {
    facts[f as usize].as_ref().expect("live fact slot").fact.fields.get(name).unwrap_or(&NULL)
}

/// A field of a fact for a join key (`_id` is the fact's id).
fn fact_field_ref(f: &Fact, name: Sym, id_sym: Sym) -> Cow<'_, Value> {
    if name == id_sym {
        Cow::Owned(Value::Int(f.id as i64))
    } else {
        Cow::Borrowed(f.fields.get(name).unwrap_or(&NULL))
    }
}

pub(crate) fn aggregate(func: AggFn, items: &[(FactId, Value)]) -> Result<Option<Value>, String> {
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

impl<'a> NetEnv<'a> {
    fn fact_field(&self, f: &'a Fact, name: Sym) -> Option<Cow<'a, Value>> {
        if name == self.net.id_sym {
            return Some(Cow::Owned(Value::Int(f.id as i64)));
        }
        f.fields.get(name).map(Cow::Borrowed)
    }
}

impl Env for NetEnv<'_> {
    fn field(&self, name: Sym) -> Option<Cow<'_, Value>> {
        self.current.and_then(|f| self.fact_field(f, name))
    }

    fn bound_field(&self, slot: usize, name: Sym) -> Option<Cow<'_, Value>> {
        self.net.bound_field(self.tok, self.rule, slot, name)
    }

    fn bound(&self, slot: usize) -> Cow<'_, Value> {
        if self.tok == NONE {
            return Cow::Borrowed(&NULL);
        }
        match self.net.bound_at(self.tok, self.rule, slot) {
            Some((f, _)) if f != NONE => Cow::Owned(Value::Int(self.net.rec(f).fact.id as i64)),
            Some((_, Some(v))) => Cow::Borrowed(v),
            _ => Cow::Borrowed(&NULL),
        }
    }
}

/// Fields of a fact as a `Value::Map` (for `collect` and reports).
pub fn fields_value(fields: &Fields) -> Value {
    Value::Map(Arc::new(fields.iter().map(|(k, v)| (k.name(), v.clone())).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pack;

    fn fact(id: FactId, ty: &str, n: i64) -> Fact {
        let mut fields = Fields::new();
        fields.set(Sym::new("n"), Value::Int(n));
        Fact { id, ty: Sym::new(ty), fields, version: 1, tag: id }
    }

    #[test]
    fn the_workflows_of_a_pack_share_its_plan_and_hold_what_their_facts_reach() {
        let rules: String = (0..200)
            .map(|i| {
                format!("rule \"r{i}\" {{ match {{ x: X(n == {i}) y: Y(n == x.n) }} action {{ log(\"{i}\"); }} }}\n")
            })
            .collect();
        let p = pack(&(rules + "rule \"none\" { match { not Z() } action { log(\"no Z\"); } }\n"), "");
        let (mut a, b) = (Network::new(p.clone()), Network::new(p.clone()));
        assert!(Arc::ptr_eq(&a.plan, &b.plan));
        a.prime().unwrap();
        // Only the rule that needs no fact has its root token.
        assert_eq!((a.toks.len(), a.rule_mems.iter().filter(|&&m| m != 0).count()), (2, 1));
        a.insert(fact(1, "X", 7)).unwrap();
        a.insert(fact(2, "Y", 7)).unwrap();
        // The X reached one memory, the Y one (of rule r7's join), and one
        // rule has token memories beyond `none`.
        assert_eq!(a.alpha_states.len(), 2);
        assert_eq!(a.rule_mems.iter().filter(|&&m| m != 0).count(), 2);
        let fired: Vec<String> = std::iter::from_fn(|| a.pop()).map(|act| p.rules[act.rule].name.clone()).collect();
        assert_eq!(fired, ["r7", "none"]);
    }
}
