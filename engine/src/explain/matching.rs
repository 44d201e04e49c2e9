//! A rule's conditions evaluated again over a workflow's facts, condition
//! by condition, counting what survives each and keeping the partial match
//! that gets furthest. The network is not used: it keeps neither counts nor
//! failed tries, and must not be disturbed.
//!
//! Joins are hash joins on the first equality join (as in the network), so
//! a rule over 100,000 facts is explained in one pass per condition.
//! Partial matches kept per condition are capped (`MAX_PARTIALS`), and the
//! turn budget of the calling thread (`stoa_rules::budget`) bounds the time:
//! past either, counts are lower bounds and say so.

use std::borrow::Cow;
use std::collections::HashMap;

use stoa_rules::compile::{Condition, Constraint, Pack, Pattern, Rule};
use stoa_rules::expr::{self, compare, BinOp, Env};
use stoa_rules::sandbox::ScriptValue;
use stoa_rules::syntax::Text;
use stoa_rules::{Sym, Value};

use super::{by_type, Closest, ConditionKind, ConditionReport, FactRef, Subject, MAX_LISTED, MAX_PARTIALS};
use crate::fact::Fact;

pub(super) struct Analysis {
    pub conditions: Vec<ConditionReport>,
    pub complete: Option<Complete>,
    pub dies_at: usize,
    pub why: String,
    pub closest: Option<Closest>,
}

pub(super) struct Complete {
    pub total: u64,
    pub listed: Vec<Listed>,
}

pub(super) struct Listed {
    pub facts: Vec<FactRef>,
    pub values: Vec<(String, Value)>,
}

#[derive(Clone)]
enum Bind<'a> {
    Fact(&'a Fact),
    Value(Value),
    None,
}

type Partial<'a> = Vec<Bind<'a>>;

/// A failed try at the dying condition: how many of its constraints passed
/// (more is closer), the partial match, the fact tried, and the failure.
struct Try<'a> {
    passed: usize,
    partial: Partial<'a>,
    candidate: Option<&'a Fact>,
    constraint: Text,
    evaluated: String,
}

struct Ctx<'a> {
    pack: &'a Pack,
    rule: &'a Rule,
    id: Sym,
    /// Joins tried so far, and whether the tries or the time ran out.
    tries: u64,
    out_of_time: bool,
}

/// Joins tried at most in one explanation (a cross product of two large
/// types would otherwise take as long as the time allows).
const MAX_TRIES: u64 = 5_000_000;

pub(super) fn analyse<'a>(subject: &Subject<'a>, rule: &'a Rule) -> Analysis {
    let types = by_type(&subject.facts);
    let mut cx = Ctx { pack: subject.pack, rule, id: Sym::new("_id"), tries: 0, out_of_time: false };
    let empty: Vec<&Fact> = Vec::new();
    // Own tests read no binding: they run against this empty match.
    let unbound: Partial = vec![Bind::None; rule.slots.len()];
    let mut partials: Vec<Partial> = vec![unbound.clone()];
    let mut truncated = false;
    let mut conditions = Vec::with_capacity(rule.conditions.len());
    let mut dead: Option<(usize, String, Option<Try>)> = None;
    for (i, cond) in rule.conditions.iter().enumerate() {
        let src = &rule.condition_text[i];
        let at = format!("{}:{}:{}", rule.file.display(), src.pos.line, src.pos.col);
        let (kind, pattern) = match cond {
            Condition::Pattern { pattern, .. } => (ConditionKind::Pattern, Some(pattern)),
            Condition::Not(p) => (ConditionKind::Not, Some(p)),
            Condition::Exists(p) => (ConditionKind::Exists, Some(p)),
            Condition::Aggregate { pattern, .. } => (ConditionKind::Aggregate, Some(pattern)),
            Condition::Test(_) => (ConditionKind::Test, None),
        };
        let of_type = pattern.map_or(&empty, |p| types.get(&p.ty).unwrap_or(&empty));
        let passing: Vec<&Fact> = match pattern {
            Some(p) => of_type.iter().copied().filter(|f| cx.alpha_failure(p, f, &unbound).is_none()).collect(),
            None => Vec::new(),
        };
        let mut report = ConditionReport {
            index: i + 1,
            kind,
            text: src.text.clone(),
            at,
            ty: pattern.map(|p| p.ty.to_string()),
            facts: of_type.len() as u64,
            passing: passing.len() as u64,
            partial_matches: None,
            truncated: false,
            blockers: Vec::new(),
        };
        if dead.is_some() {
            conditions.push(report);
            continue;
        }
        let step = cx.step(cond, pattern, of_type, &passing, &partials, &unbound);
        truncated |= step.total > MAX_PARTIALS as u64 || cx.out_of_time;
        report.partial_matches = Some(step.total);
        report.truncated = truncated;
        report.blockers = step.blockers.iter().take(MAX_LISTED).map(|f| FactRef::of(f)).collect();
        conditions.push(report);
        if step.survivors.is_empty() {
            let why = if cx.out_of_time {
                "explain stopped here (too many joins to try, or out of time); the counts are lower bounds".to_string()
            } else {
                cx.why_dead(cond, pattern, of_type, &passing, &step)
            };
            dead = Some((i, why, step.best));
        }
        partials = step.survivors;
    }
    match dead {
        Some((i, why, best)) => {
            Analysis { conditions, complete: None, dies_at: i + 1, why, closest: best.map(|t| cx.closest(t)) }
        }
        None => {
            let total = conditions.last().and_then(|c| c.partial_matches).unwrap_or(1);
            let listed = partials.iter().take(MAX_LISTED).map(|p| cx.listed(p)).collect();
            Analysis {
                conditions,
                complete: Some(Complete { total, listed }),
                dies_at: 0,
                why: String::new(),
                closest: None,
            }
        }
    }
}

/// What one condition let through.
struct Step<'a> {
    survivors: Vec<Partial<'a>>,
    total: u64,
    blockers: Vec<&'a Fact>,
    best: Option<Try<'a>>,
    /// An error evaluating a constraint (the turn would fail on it).
    error: Option<String>,
}

impl<'a> Ctx<'a> {
    fn step(
        &mut self,
        cond: &'a Condition,
        pattern: Option<&'a Pattern>,
        of_type: &[&'a Fact],
        passing: &[&'a Fact],
        partials: &[Partial<'a>],
        unbound: &Partial<'a>,
    ) -> Step<'a> {
        let mut step = Step { survivors: Vec::new(), total: 0, blockers: Vec::new(), best: None, error: None };
        let index = pattern.filter(|p| !p.joins.is_empty()).map(|p| {
            let mut idx: HashMap<Value, Vec<&'a Fact>> = HashMap::new();
            for f in passing {
                idx.entry(field(f, p.joins[0].field, self.id).into_owned()).or_default().push(f);
            }
            idx
        });
        if let Some(p) = pattern.filter(|_| passing.is_empty()) {
            // Own tests read no binding: the closest fact is the same for
            // every partial match.
            if let Some(t) = self.alpha_closest(p, of_type, unbound) {
                step.offer(t);
            }
        }
        for p in partials {
            if self.out_of_time {
                break;
            }
            let Some(pattern) = pattern else {
                let Condition::Test(c) = cond else { unreachable!("only tests have no pattern") };
                let env = PEnv { binds: p, current: None, id: self.id };
                match self.holds(c, &env) {
                    Ok(true) => step.survive(p.clone()),
                    Ok(false) | Err(_) => {
                        let text = self.rule.condition_text[self.cond_index(cond)].expr.clone();
                        let evaluated = self.evaluated(c, &env);
                        step.offer(Try {
                            passed: 0,
                            partial: p.clone(),
                            candidate: None,
                            constraint: text.unwrap_or_else(empty_text),
                            evaluated,
                        });
                    }
                }
                continue;
            };
            // The pool of facts that may join: by the first join's value.
            let key0 = match pattern.joins.first() {
                Some(j) => match j.key.eval(&PEnv { binds: p, current: None, id: self.id }) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        step.error.get_or_insert(e.0);
                        continue;
                    }
                },
                None => None,
            };
            let pool: &[&'a Fact] = match (&index, &key0) {
                (Some(idx), Some(k)) => idx.get(k).map_or(&[], Vec::as_slice),
                _ => passing,
            };
            let mut matched: Vec<&'a Fact> = Vec::new();
            for &c in pool {
                self.tries += 1;
                if self.tries > MAX_TRIES || stoa_rules::budget::check().is_err() {
                    self.out_of_time = true;
                    break;
                }
                match self.join_failure(pattern, p, c, step.best.as_ref().map(|b| b.passed)) {
                    None => {
                        matched.push(c);
                        if matches!(cond, Condition::Not(_) | Condition::Exists(_)) {
                            break;
                        }
                    }
                    Some(t) => {
                        if let Some(t) = t {
                            step.offer(t)
                        }
                    }
                }
            }
            if pool.is_empty() && step.best.is_none() {
                // No fact shares the join value: show the join failing on
                // the first fact that passes its own tests.
                if let (Some(&c), Some(_)) = (passing.first(), key0.as_ref()) {
                    if let Some(Some(t)) = self.join_failure(pattern, p, c, None) {
                        step.offer(t);
                    }
                }
            }
            match cond {
                Condition::Pattern { slot, .. } => {
                    for c in matched {
                        let mut q = p.clone();
                        q[*slot] = Bind::Fact(c);
                        step.survive(q);
                    }
                }
                Condition::Not(_) => match matched.first() {
                    None => step.survive(p.clone()),
                    Some(b) => {
                        if step.blockers.len() < MAX_LISTED && !step.blockers.iter().any(|x| x.id == b.id) {
                            step.blockers.push(b);
                        }
                    }
                },
                Condition::Exists(_) => {
                    if !matched.is_empty() {
                        step.survive(p.clone());
                    }
                }
                Condition::Aggregate { slot, func, over, .. } => {
                    let mut items = Vec::with_capacity(matched.len());
                    for c in &matched {
                        let operand = match over {
                            Some(o) => self.value(o, &PEnv { binds: p, current: Some(c), id: self.id }),
                            None => {
                                let mut m = crate::network::fields_value(&c.fields);
                                if let Value::Map(map) = &mut m {
                                    std::sync::Arc::make_mut(map).insert("_id".into(), Value::Int(c.id as i64));
                                }
                                Ok(m)
                            }
                        };
                        match operand {
                            Ok(v) => items.push((c.id, v)),
                            Err(e) => {
                                step.error.get_or_insert(e);
                            }
                        }
                    }
                    items.sort_by_key(|i| i.0);
                    match crate::network::aggregate(*func, &items) {
                        Ok(Some(v)) => {
                            let mut q = p.clone();
                            q[*slot] = Bind::Value(v);
                            step.survive(q);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            step.error.get_or_insert(e);
                        }
                    }
                }
                Condition::Test(_) => unreachable!("handled above"),
            }
        }
        step
    }

    fn cond_index(&self, cond: &Condition) -> usize {
        self.rule.conditions.iter().position(|c| std::ptr::eq(c, cond)).expect("a condition of the rule")
    }

    /// Why every partial match died at `cond`, in words.
    fn why_dead(
        &self,
        cond: &Condition,
        pattern: Option<&Pattern>,
        of_type: &[&Fact],
        passing: &[&Fact],
        step: &Step,
    ) -> String {
        if let Some(e) = &step.error {
            return format!("a constraint fails to evaluate (the turn would fail): {e}");
        }
        let ty = pattern.map(|p| p.ty.to_string()).unwrap_or_default();
        match cond {
            Condition::Test(_) => "the test is false for every partial match".into(),
            Condition::Not(_) => format!("every partial match is blocked by a {ty} fact"),
            _ if of_type.is_empty() => format!("there is no {ty} fact"),
            _ if passing.is_empty() => format!("no {ty} fact passes the condition's own tests"),
            Condition::Aggregate { func, .. } => {
                format!("no {ty} fact joins the partial matches, and {} of nothing has no value", agg_name(*func))
            }
            _ => format!("no {ty} fact joins any partial match"),
        }
    }

    /// The first own test `f` fails, with its text and evaluation.
    fn alpha_failure(&self, p: &'a Pattern, f: &Fact, partial: &Partial) -> Option<(usize, &'a Text, String)> {
        let env = PEnv { binds: partial, current: Some(f), id: self.id };
        for (i, c) in p.alpha.iter().enumerate() {
            if !matches!(self.holds(c, &env), Ok(true)) {
                return Some((i, &p.text.alpha[i], self.evaluated(c, &env)));
            }
        }
        None
    }

    /// Of the facts of the type, the one passing the most own tests, as a
    /// try at this condition.
    fn alpha_closest(&self, p: &'a Pattern, of_type: &[&'a Fact], partial: &Partial<'a>) -> Option<Try<'a>> {
        let mut best: Option<Try> = None;
        for &f in of_type.iter().take(10_000) {
            if let Some((passed, text, evaluated)) = self.alpha_failure(p, f, partial) {
                if best.as_ref().is_none_or(|b| passed > b.passed) {
                    best = Some(Try {
                        passed,
                        partial: partial.clone(),
                        candidate: Some(f),
                        constraint: text.clone(),
                        evaluated,
                    });
                }
            }
        }
        best
    }

    /// The first join or binding test `c` fails when joined to partial `p`
    /// (its own tests passed), or `None` if it joins. The failure is told
    /// (values and all) only if it got further than `best`: most tries
    /// fail, and few are shown.
    fn join_failure(
        &self,
        pattern: &'a Pattern,
        p: &Partial<'a>,
        c: &'a Fact,
        best: Option<usize>,
    ) -> Option<Option<Try<'a>>> {
        let env = PEnv { binds: p, current: Some(c), id: self.id };
        let own = pattern.alpha.len();
        let better = |passed: usize| best.is_none_or(|b| passed > b);
        for (i, j) in pattern.joins.iter().enumerate() {
            let key = j.key.eval(&env);
            let ok = key.as_ref().is_ok_and(|k| compare(BinOp::Eq, &field(c, j.field, self.id), k));
            if !ok {
                return Some(better(own + i).then(|| {
                    let evaluated = format!("{} == {}", field(c, j.field, self.id), j.key.with_values(&env));
                    self.fail(own + i, p, c, &pattern.text.joins[i], evaluated)
                }));
            }
        }
        for (i, b) in pattern.beta.iter().enumerate() {
            if !matches!(self.holds(b, &env), Ok(true)) {
                let passed = own + pattern.joins.len() + i;
                return Some(better(passed).then(|| {
                    let evaluated = self.evaluated(b, &env);
                    self.fail(passed, p, c, &pattern.text.beta[i], evaluated)
                }));
            }
        }
        None
    }

    fn fail(&self, passed: usize, p: &Partial<'a>, c: &'a Fact, text: &Text, evaluated: String) -> Try<'a> {
        Try { passed, partial: p.clone(), candidate: Some(c), constraint: text.clone(), evaluated }
    }

    fn holds(&self, c: &Constraint, env: &PEnv) -> Result<bool, String> {
        match c {
            Constraint::Native(e) => e.test(env).map_err(|e| e.0),
            Constraint::Script { .. } => Ok(self.value(c, env)?.is_truthy()),
        }
    }

    fn value(&self, c: &Constraint, env: &PEnv) -> Result<Value, String> {
        match c {
            Constraint::Native(e) => e.eval(env).map_err(|e| e.0),
            Constraint::Script { script, .. } => {
                let mut values = Vec::with_capacity(script.vars.len());
                if script.vars.first().is_some_and(|v| v == expr::CURRENT) {
                    values.push(match env.current {
                        Some(f) => ScriptValue::fact(f.id, f.ty, &f.fields),
                        None => ScriptValue::value(&Value::Null),
                    });
                }
                for (slot, _) in self.rule.script_slots() {
                    values.push(match &env.binds[slot] {
                        Bind::Fact(f) => ScriptValue::fact(f.id, f.ty, &f.fields),
                        Bind::Value(v) => ScriptValue::value(v),
                        Bind::None => ScriptValue::value(&Value::Null),
                    });
                }
                values.truncate(script.vars.len());
                self.pack.sandbox.eval(script, values).map_err(|e| e.message)
            }
        }
    }

    /// A constraint with its operands' values; for a script, the values of
    /// the names it reads.
    fn evaluated(&self, c: &Constraint, env: &PEnv) -> String {
        let result = match self.value(c, env) {
            Ok(v) => v.to_string(),
            Err(e) => format!("error: {e}"),
        };
        match c {
            Constraint::Native(e) => match e {
                expr::Expr::Bin(..) | expr::Expr::Not(_) => e.with_values(env),
                _ => format!("{} → {result}", e.with_values(env)),
            },
            Constraint::Script { text, .. } => {
                let names = expr::free_identifiers(text).unwrap_or_default();
                let mut shown = Vec::new();
                for n in names {
                    if n == expr::CURRENT || shown.iter().any(|(m, _): &(String, String)| *m == n) {
                        continue;
                    }
                    let v = match self.rule.script_slots().find(|(_, s)| *s == n) {
                        Some((slot, _)) => match &env.binds[slot] {
                            Bind::Fact(f) => format!("f{} {}", f.id, f.ty),
                            Bind::Value(v) => v.to_string(),
                            Bind::None => "()".into(),
                        },
                        None => env.field(Sym::new(&n)).map_or("()".into(), |v| v.to_string()),
                    };
                    shown.push((n, v));
                }
                let shown: Vec<String> = shown.into_iter().map(|(n, v)| format!("{n} = {v}")).collect();
                if shown.is_empty() {
                    format!("→ {result}")
                } else {
                    format!("{} → {result}", shown.join(", "))
                }
            }
        }
    }

    fn closest(&self, t: Try) -> Closest {
        let bound = self
            .rule
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match &t.partial[i] {
                Bind::Fact(f) => Some((s.name.clone().unwrap_or_else(|| format!("#{}", i + 1)), FactRef::of(f))),
                _ => None,
            })
            .collect();
        Closest {
            bound,
            candidate: t.candidate.map(FactRef::of),
            constraint: t.constraint.text.split_whitespace().collect::<Vec<_>>().join(" "),
            at: format!("{}:{}:{}", self.rule.file.display(), t.constraint.pos.line, t.constraint.pos.col),
            evaluated: t.evaluated,
        }
    }

    fn listed(&self, p: &Partial) -> Listed {
        let mut facts = Vec::new();
        let mut values = Vec::new();
        for (i, b) in p.iter().enumerate() {
            match b {
                Bind::Fact(f) => facts.push(FactRef::of(f)),
                Bind::Value(v) => {
                    values.push((self.rule.slots[i].name.clone().unwrap_or_else(|| format!("#{}", i + 1)), v.clone()))
                }
                Bind::None => {}
            }
        }
        Listed { facts, values }
    }
}

impl<'a> Step<'a> {
    fn survive(&mut self, p: Partial<'a>) {
        self.total += 1;
        if self.survivors.len() < MAX_PARTIALS {
            self.survivors.push(p);
        }
    }

    /// Keeps the try that got furthest.
    fn offer(&mut self, t: Try<'a>) {
        if self.best.as_ref().is_none_or(|b| t.passed > b.passed) {
            self.best = Some(t);
        }
    }
}

fn empty_text() -> Text {
    Text { text: String::new(), pos: stoa_rules::diagnostic::Pos::new(0, 0), offset: 0 }
}

fn agg_name(f: stoa_rules::syntax::AggFn) -> &'static str {
    use stoa_rules::syntax::AggFn::*;
    match f {
        Count => "count",
        Sum => "sum",
        Min => "min",
        Max => "max",
        Collect => "collect",
    }
}

/// A fact's field as a join reads it (`_id` is its id).
fn field(f: &Fact, name: Sym, id: Sym) -> Cow<'_, Value> {
    if name == id {
        Cow::Owned(Value::Int(f.id as i64))
    } else {
        f.fields.get(name).map_or(Cow::Owned(Value::Null), Cow::Borrowed)
    }
}

/// Constraint values over a partial match and the fact being tried.
struct PEnv<'p, 'a> {
    binds: &'p [Bind<'a>],
    current: Option<&'a Fact>,
    id: Sym,
}

impl Env for PEnv<'_, '_> {
    fn field(&self, name: Sym) -> Option<Cow<'_, Value>> {
        self.current.map(|f| field(f, name, self.id))
    }

    fn bound_field(&self, slot: usize, name: Sym) -> Option<Cow<'_, Value>> {
        match self.binds.get(slot)? {
            Bind::Fact(f) => Some(field(f, name, self.id)),
            Bind::Value(Value::Map(m)) => m.get(&*name.name()).map(Cow::Borrowed),
            _ => None,
        }
    }

    fn bound(&self, slot: usize) -> Cow<'_, Value> {
        match self.binds.get(slot) {
            Some(Bind::Fact(f)) => Cow::Owned(Value::Int(f.id as i64)),
            Some(Bind::Value(v)) => Cow::Borrowed(v),
            _ => Cow::Owned(Value::Null),
        }
    }
}
