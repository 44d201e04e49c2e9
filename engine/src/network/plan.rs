//! The static structure of a pack's network: everything derived from the
//! rules alone (alpha memories and the test groups they share, the kind and
//! memory of each condition, the levels of bindings, which memories a fact
//! of each type visits). It is built once per pack, kept with it
//! (`Pack::derived`) and shared by every workflow of the pack: a workflow
//! only adds the memories' contents, made as facts arrive.
//!
//! Building it is linear in the size of the rules: alpha test lists are
//! shared through a hash map keyed on their canonical form (`Expr::write_key`),
//! and memories through one keyed on their test group and join fields.

use rustc_hash::{FxHashMap, FxHashSet};
use smallvec::SmallVec;
use stoa_rules::compile::{Condition, Constraint, Pack};
use stoa_rules::expr::{BinOp, Expr};
use stoa_rules::{Sym, Value};

use super::NONE;

/// A field compared to at least this many distinct literals among the test
/// groups of a type is dispatched by hashing (Drools's alpha node hashing):
/// a fact visits only the groups whose literal its value equals. With few
/// literals, hashing the value and merging lists saves nothing: Waltz
/// (`label`, `type`, `value` against 4 to 7 literals each) ran 1.2137 G
/// instructions hashed from 3 literals on, 1.2126 G testing them.
pub(super) const HASH_MIN_LITERALS: usize = 8;

/// The alpha memory of one (rule, condition): a view of a shared memory.
pub(super) struct AlphaMem {
    pub rule: u32,
    pub cond: u32,
    /// The shared memory holding its facts.
    pub shared: u32,
    /// The fields whose values key the index, in join order.
    pub fields: Vec<Sym>,
    /// The pattern's beta tests, in order, as run against many facts for
    /// one token.
    pub beta: Vec<BetaTest>,
    /// For a `not`/`exists` whose one test is an order comparison of a field
    /// (and no join key): its tracker in the shared memory (`extreme`).
    pub extreme: Option<u32>,
}

/// Facts of one type that pass the same alpha tests, indexed by the same
/// join fields: one memory for every condition of that shape, as a Rete
/// shares alpha memories (Waltz has dozens of `Edge` patterns over a few
/// shapes). Two conditions of one rule never share a memory, so a change
/// reaches each rule's conditions one memory at a time (see `retract_inner`).
pub(super) struct SharedMem {
    pub ty: Sym,
    /// Where an insert keeps the result of the memory's alpha tests, among
    /// the results it keeps for a fact of this type: memories with the same
    /// tests (and other join fields) have the same place, so the tests run
    /// once per fact (see `TypePlan::pass_slots`).
    pub pass_slot: u32,
    /// A condition whose pattern has the tests.
    pub first: u32,
    pub fields: Vec<Sym>,
    /// Conditions (`Plan::alpha`) reading it, in rule order.
    pub consumers: Vec<u32>,
    /// The (field, greatest rather than least) of the extremes its
    /// `not`/`exists` conditions compare.
    pub extremes: Vec<(Sym, bool)>,
    /// The alpha tests, as inserts run them.
    pub alpha_tests: Vec<AlphaTest>,
}

/// Shared memories, in ascending order (most literals select one or two).
type Mems = SmallVec<[u32; 2]>;

/// The shared memories a fact of one type may enter.
pub(super) struct TypePlan {
    /// Memories visited for every fact, in ascending order (start and
    /// length in `Plan::listeners`): all of the type's when none is hashed.
    pub always: (u32, u32),
    /// The others, by the field and the literal of their first equality
    /// test: a fact visits those under its value of the field only, as the
    /// others would fail that test. Each list is in ascending order.
    pub hashed: Vec<(Sym, FxHashMap<Value, Mems>)>,
    /// How many test results an insert keeps: one per test group among
    /// `always`, plus, for each hashed field, the most groups under one
    /// literal (a fact visits one literal's groups per field).
    pub pass_slots: u32,
}

/// An alpha test as an insert runs it.
pub(super) enum AlphaTest {
    /// `field op literal` (or `literal op field`): no expression to walk,
    /// no environment to build (Waltz tests `label`, `type` or `joined` of
    /// every edge it changes, a dozen times each).
    Compare { op: BinOp, field: Sym, lit: Value, field_left: bool },
    /// Any other (index into the pattern's `alpha`).
    General(usize),
}

impl AlphaTest {
    fn of(i: usize, c: &Constraint) -> AlphaTest {
        use BinOp::*;
        if let Constraint::Native(Expr::Bin(op @ (Eq | Ne | Lt | Le | Gt | Ge | In), a, b)) = c {
            match (&**a, &**b) {
                (Expr::Field(f), Expr::Lit(v)) => {
                    return AlphaTest::Compare { op: *op, field: *f, lit: v.clone(), field_left: true }
                }
                (Expr::Lit(v), Expr::Field(f)) => {
                    return AlphaTest::Compare { op: *op, field: *f, lit: v.clone(), field_left: false }
                }
                _ => {}
            }
        }
        AlphaTest::General(i)
    }
}

/// The test a group of alpha tests is dispatched on, if any: its first
/// `field == literal`, when every test before it is a comparison (which
/// cannot fail to evaluate: a fact it skips would have failed the group
/// without an error) and the literal hashes as it compares (see
/// `hashes_as_it_compares`).
fn dispatch_test(tests: &[AlphaTest]) -> Option<(Sym, &Value)> {
    for t in tests {
        match t {
            AlphaTest::Compare { op: BinOp::Eq, field, lit, .. } if hashes_as_it_compares(lit) => {
                return Some((*field, lit))
            }
            AlphaTest::Compare { .. } => {}
            AlphaTest::General(_) => return None,
        }
    }
    None
}

/// Whether every value equal to `v` (by `==`, as `field == v` compares) has
/// its hash. `Value` hashes an integral float as the integer it equals only
/// below 9e15, and a NaN equals nothing: those literals, and containers,
/// are tested, not hashed.
fn hashes_as_it_compares(v: &Value) -> bool {
    const EXACT: f64 = 9.0e15;
    match v {
        Value::Null | Value::Bool(_) | Value::Str(_) => true,
        Value::Int(i) => (*i as f64).abs() < EXACT,
        Value::Float(f) => !f.is_nan() && (f.fract() != 0.0 || f.abs() < EXACT),
        Value::Array(_) | Value::Map(_) => false,
    }
}

/// The kind of a condition, copied out of the pack so that the hot paths
/// need not hold (or clone) the pack while they change the network.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    Pattern,
    Not,
    Exists,
    Aggregate,
    Test,
}

impl Kind {
    fn of(c: &Condition) -> Kind {
        match c {
            Condition::Pattern { .. } => Kind::Pattern,
            Condition::Not(_) => Kind::Not,
            Condition::Exists(_) => Kind::Exists,
            Condition::Aggregate { .. } => Kind::Aggregate,
            Condition::Test(_) => Kind::Test,
        }
    }
}

/// A beta test as a left activation runs it.
pub(super) enum BetaTest {
    /// `field op other` (or `other op field`), where `other` reads only
    /// bindings and literals: it is evaluated once per token, not per fact.
    Compare { op: BinOp, field: Sym, other: Expr, field_left: bool },
    /// Any other constraint (index into the pattern's `beta`).
    General(usize),
}

impl BetaTest {
    fn of(i: usize, c: &Constraint) -> BetaTest {
        use BinOp::*;
        let reads_fact = |e: &Expr| {
            let mut v = Vec::new();
            e.fields(&mut v);
            !v.is_empty()
        };
        if let Constraint::Native(Expr::Bin(op @ (Eq | Ne | Lt | Le | Gt | Ge), a, b)) = c {
            match (&**a, &**b) {
                (Expr::Field(f), other) if !reads_fact(other) => {
                    return BetaTest::Compare { op: *op, field: *f, other: other.clone(), field_left: true }
                }
                (other, Expr::Field(f)) if !reads_fact(other) => {
                    return BetaTest::Compare { op: *op, field: *f, other: other.clone(), field_left: false }
                }
                _ => {}
            }
        }
        BetaTest::General(i)
    }
}

/// One condition of a rule.
#[derive(Clone, Copy)]
pub(super) struct Cond {
    pub kind: Kind,
    /// Its alpha memory (`Plan::alpha`), or `NONE`.
    pub alpha: u32,
    /// Whether its token memory has no join key.
    pub keyless: bool,
}

/// The static network of a pack.
pub(super) struct Plan {
    pub alpha: Vec<AlphaMem>,
    pub shared: Vec<SharedMem>,
    pub by_type: FxHashMap<Sym, TypePlan>,
    /// The lists of `TypePlan::always`, end to end.
    pub listeners: Vec<u32>,
    /// Where each rule's conditions start in `conds` (one more entry than
    /// rules: the end).
    cond_start: Vec<u32>,
    conds: Vec<Cond>,
    /// Where each rule's slots start in `slot_levels` (and the end).
    slot_start: Vec<u32>,
    /// For each rule and slot, the level whose token binds it.
    slot_levels: Vec<u16>,
    /// Rules whose root token `prime` makes and activates: those whose
    /// first condition may hold with no fact (`not`, an aggregate, a
    /// `test`, or no condition). The others get theirs when a first fact
    /// reaches their first condition (`Network::plant_root`).
    pub primed: Vec<u32>,
    /// Rules by name (indices sorted by their names): what finds the rule of
    /// a result without a scan of the pack.
    by_name: Vec<u32>,
}

impl Plan {
    pub fn new(pack: &Pack) -> Plan {
        let mut alpha: Vec<AlphaMem> = Vec::new();
        let mut shared: Vec<SharedMem> = Vec::new();
        // The last rule reading each shared memory: the memory of a test
        // group and join fields is the first that no condition of the rule
        // at hand reads yet, and rules come in order.
        let mut last_rule: Vec<u32> = Vec::new();
        // The test group of each shared memory.
        let mut mem_group: Vec<u32> = Vec::new();
        // Test groups by type and canonical tests; a list with a script is
        // a group of its own (scripts are compared by nothing cheaper than
        // running them).
        let mut groups: FxHashMap<(Sym, Box<[u8]>), u32> = FxHashMap::default();
        let mut group_count = 0u32;
        // Shared memories by test group and join fields, in creation order.
        let mut by_shape: FxHashMap<(u32, Vec<Sym>), SmallVec<[u32; 1]>> = FxHashMap::default();
        let mut key = Vec::new();
        let (mut cond_start, mut conds) = (vec![0u32], Vec::new());
        let (mut slot_start, mut slot_levels) = (vec![0u32], Vec::new());
        let mut primed = Vec::new();
        for (r, rule) in pack.rules.iter().enumerate() {
            let r = r as u32;
            let mut levels = vec![0u16; rule.slots.len()];
            for (c, cond) in rule.conditions.iter().enumerate() {
                let pattern = match cond {
                    Condition::Pattern { pattern, slot } | Condition::Aggregate { pattern, slot, .. } => {
                        levels[*slot] = c as u16 + 1;
                        Some(pattern)
                    }
                    Condition::Not(p) | Condition::Exists(p) => Some(p),
                    Condition::Test(_) => None,
                };
                let Some(p) = pattern else {
                    conds.push(Cond { kind: Kind::Test, alpha: NONE, keyless: true });
                    continue;
                };
                let id = alpha.len() as u32;
                key.clear();
                let native = p.alpha.iter().all(|t| match t {
                    Constraint::Native(e) => {
                        e.write_key(&mut key);
                        true
                    }
                    Constraint::Script { .. } => false,
                });
                let group = if native {
                    *groups.entry((p.ty, key.as_slice().into())).or_insert(group_count)
                } else {
                    group_count
                };
                if group == group_count {
                    group_count += 1;
                }
                let fields: Vec<Sym> = p.joins.iter().map(|j| j.field).collect();
                let same_shape = by_shape.entry((group, fields.clone())).or_default();
                let s = match same_shape.iter().copied().find(|&s| last_rule[s as usize] != r) {
                    Some(s) => s,
                    None => {
                        let s = shared.len() as u32;
                        shared.push(SharedMem {
                            ty: p.ty,
                            pass_slot: 0,
                            first: id,
                            fields: fields.clone(),
                            consumers: Vec::new(),
                            extremes: Vec::new(),
                            alpha_tests: p.alpha.iter().enumerate().map(|(i, c)| AlphaTest::of(i, c)).collect(),
                        });
                        last_rule.push(r);
                        mem_group.push(group);
                        same_shape.push(s);
                        s
                    }
                };
                last_rule[s as usize] = r;
                let mem = &mut shared[s as usize];
                mem.consumers.push(id);
                let beta: Vec<BetaTest> = p.beta.iter().enumerate().map(|(i, c)| BetaTest::of(i, c)).collect();
                let extreme = match (cond, &beta[..]) {
                    (
                        Condition::Not(_) | Condition::Exists(_),
                        [BetaTest::Compare {
                            op: op @ (BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge),
                            field,
                            field_left,
                            ..
                        }],
                    ) if p.joins.is_empty() && field.name().as_ref() != "_id" => {
                        let max = *field_left == matches!(op, BinOp::Gt | BinOp::Ge);
                        let at = match mem.extremes.iter().position(|&t| t == (*field, max)) {
                            Some(at) => at,
                            None => {
                                mem.extremes.push((*field, max));
                                mem.extremes.len() - 1
                            }
                        };
                        Some(at as u32)
                    }
                    _ => None,
                };
                alpha.push(AlphaMem { rule: r, cond: c as u32, shared: s, fields, beta, extreme });
                conds.push(Cond { kind: Kind::of(cond), alpha: id, keyless: p.joins.is_empty() });
            }
            cond_start.push(conds.len() as u32);
            slot_levels.extend(levels);
            slot_start.push(slot_levels.len() as u32);
            if !matches!(rule.conditions.first(), Some(Condition::Pattern { .. } | Condition::Exists(_))) {
                primed.push(r);
            }
        }
        let mut by_name: Vec<u32> = (0..pack.rules.len() as u32).collect();
        by_name.sort_unstable_by(|&a, &b| pack.rules[a as usize].name.cmp(&pack.rules[b as usize].name));
        let mut plan = Plan {
            by_name,
            alpha,
            shared,
            by_type: FxHashMap::default(),
            listeners: Vec::new(),
            cond_start,
            conds,
            slot_start,
            slot_levels,
            primed,
        };
        plan.dispatch(&mem_group);
        plan
    }

    /// Fills `by_type`, and each memory's `pass_slot` from the test groups
    /// of the memories.
    fn dispatch(&mut self, mem_group: &[u32]) {
        let mut of_type: FxHashMap<Sym, Vec<u32>> = FxHashMap::default();
        for (s, m) in self.shared.iter().enumerate() {
            of_type.entry(m.ty).or_default().push(s as u32);
        }
        let mut types: Vec<(Sym, Vec<u32>)> = of_type.into_iter().collect();
        // The layout of `listeners` does not depend on hashing order.
        types.sort_by_key(|(_, mems)| mems[0]);
        for (ty, mems) in types {
            // Distinct literals of the dispatch tests, by field.
            let mut literals: FxHashMap<Sym, FxHashSet<&Value>> = FxHashMap::default();
            for &s in &mems {
                if let Some((field, lit)) = dispatch_test(&self.shared[s as usize].alpha_tests) {
                    literals.entry(field).or_default().insert(lit);
                }
            }
            let mut fields: Vec<Sym> =
                literals.into_iter().filter(|(_, l)| l.len() >= HASH_MIN_LITERALS).map(|(f, _)| f).collect();
            fields.sort();
            // Slots of test groups among `always`, and within each literal
            // of each hashed field (offset once the sizes are known).
            let mut always = Vec::new();
            let mut always_groups: FxHashMap<u32, u32> = FxHashMap::default();
            // By literal: the memories, and their test groups.
            let mut tables: Vec<FxHashMap<Value, (Mems, Mems)>> = fields.iter().map(|_| FxHashMap::default()).collect();
            let mut local: Vec<(usize, u32, u32)> = Vec::new();
            for &s in &mems {
                let m = &self.shared[s as usize];
                let group = mem_group[s as usize];
                let hashed =
                    dispatch_test(&m.alpha_tests).and_then(|(f, lit)| Some((fields.binary_search(&f).ok()?, lit)));
                match hashed {
                    Some((t, lit)) => {
                        let (ms, gs) = tables[t].entry(lit.clone()).or_default();
                        ms.push(s);
                        let at = match gs.iter().position(|&g| g == group) {
                            Some(at) => at,
                            None => {
                                gs.push(group);
                                gs.len() - 1
                            }
                        };
                        local.push((s as usize, t as u32, at as u32));
                    }
                    None => {
                        always.push(s);
                        let n = always_groups.len() as u32;
                        let at = *always_groups.entry(group).or_insert(n);
                        local.push((s as usize, NONE, at));
                    }
                }
            }
            let mut offsets = Vec::with_capacity(tables.len());
            let mut pass_slots = always_groups.len() as u32;
            for table in &tables {
                offsets.push(pass_slots);
                pass_slots += table.values().map(|(_, gs)| gs.len() as u32).max().unwrap_or(0);
            }
            for (s, t, at) in local {
                self.shared[s].pass_slot = if t == NONE { at } else { offsets[t as usize] + at };
            }
            let start = self.listeners.len() as u32;
            self.listeners.extend_from_slice(&always);
            let hashed = fields
                .into_iter()
                .zip(tables)
                .map(|(f, table)| (f, table.into_iter().map(|(lit, (ms, _))| (lit, ms)).collect()))
                .collect();
            self.by_type.insert(ty, TypePlan { always: (start, always.len() as u32), hashed, pass_slots });
        }
    }

    /// The index of the rule of `pack` (the plan's) named `name`.
    pub fn rule_named(&self, pack: &Pack, name: &str) -> Option<usize> {
        let at = self.by_name.binary_search_by(|&r| pack.rules[r as usize].name.as_str().cmp(name)).ok()?;
        Some(self.by_name[at] as usize)
    }

    /// The conditions of a rule.
    #[inline]
    pub fn conds(&self, rule: usize) -> &[Cond] {
        &self.conds[self.cond_start[rule] as usize..self.cond_start[rule + 1] as usize]
    }

    /// Condition `cond` of a rule (which has it).
    #[inline]
    pub fn cond(&self, rule: usize, cond: usize) -> Cond {
        self.conds[self.cond_start[rule] as usize + cond]
    }

    /// The level whose token binds `slot` of a rule.
    #[inline]
    pub fn slot_level(&self, rule: usize, slot: usize) -> u16 {
        self.slot_levels[self.slot_start[rule] as usize + slot]
    }

    /// The number of slots of a rule.
    #[inline]
    pub fn slots(&self, rule: usize) -> usize {
        (self.slot_start[rule + 1] - self.slot_start[rule]) as usize
    }
}

impl TypePlan {
    /// The shared memories a fact may enter, in ascending order, when some
    /// are hashed and the fact's values select any (else `always` is the
    /// list): `fields` reads the fact's value of a field.
    pub fn hashed_candidates<'a>(
        &self,
        listeners: &[u32],
        field: impl Fn(Sym) -> std::borrow::Cow<'a, Value>,
        out: &mut SmallVec<[u32; 16]>,
    ) {
        out.clear();
        for (f, table) in &self.hashed {
            if let Some(ms) = table.get(&*field(*f)) {
                out.extend_from_slice(ms);
            }
        }
        if out.is_empty() {
            return;
        }
        // Lists of several fields, then `always`: merged in ascending order,
        // the order of memory creation every insert follows.
        if self.hashed.len() > 1 {
            out.sort_unstable();
        }
        let always = &listeners[self.always.0 as usize..(self.always.0 + self.always.1) as usize];
        if always.is_empty() {
            return;
        }
        let hashed = std::mem::take(out);
        let (mut i, mut j) = (0, 0);
        while i < hashed.len() || j < always.len() {
            if j == always.len() || (i < hashed.len() && hashed[i] < always[j]) {
                out.push(hashed[i]);
                i += 1;
            } else {
                out.push(always[j]);
                j += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::testing::pack;

    /// The shared memory of each condition with a pattern, by rule name
    /// and condition: `name.c -> memory`.
    fn layout(rules: &str) -> (Arc<Pack>, Plan) {
        let p = pack(rules, "");
        let plan = Plan::new(&p);
        (p, plan)
    }

    fn memory(p: &Pack, plan: &Plan, rule: &str, cond: usize) -> u32 {
        let r = p.rules.iter().position(|r| r.name == rule).expect("rule");
        plan.alpha[plan.cond(r, cond).alpha as usize].shared
    }

    #[test]
    fn identical_tests_share_a_memory_across_rules() {
        let (p, plan) = layout(
            r#"
rule "a" { match { x: Item(n / 2 == 1, kind == "k") } action { log("a"); } }
rule "b" { match { x: Item(n/2 == 1,kind=="k") } action { log("b"); } }
rule "c" { match { x: Item(kind == "k", n / 2 == 1) } action { log("c"); } }
rule "d" { match { y: Other(n / 2 == 1, kind == "k") } action { log("d"); } }
"#,
        );
        assert_eq!(memory(&p, &plan, "a", 0), memory(&p, &plan, "b", 0), "same tests, other spacing");
        assert_ne!(memory(&p, &plan, "a", 0), memory(&p, &plan, "c", 0), "the same tests in another order");
        assert_ne!(memory(&p, &plan, "a", 0), memory(&p, &plan, "d", 0), "another type");
        assert_eq!(plan.shared.len(), 3);
    }

    #[test]
    fn an_integer_and_an_equal_float_keep_apart() {
        // `2` and `2.0` are equal values, but divide differently.
        let (p, plan) = layout(
            r#"
rule "int" { match { i: Item(n / 2 == 1) } action { log("int"); } }
rule "float" { match { i: Item(n / 2.0 == 1) } action { log("float"); } }
rule "int again" { match { i: Item(n / 2 == 1) } action { log("int"); } }
"#,
        );
        assert_ne!(memory(&p, &plan, "int", 0), memory(&p, &plan, "float", 0));
        assert_eq!(memory(&p, &plan, "int", 0), memory(&p, &plan, "int again", 0));
    }

    #[test]
    fn the_conditions_of_one_rule_never_share_a_memory() {
        let (p, plan) = layout(
            r#"
rule "three" { match { a: Item() b: Item() not Item() } action { log("3"); } }
rule "one" { match { a: Item() } action { log("1"); } }
rule "two" { match { a: Item() exists Item() } action { log("2"); } }
rule "scripted" { match { a: Item(n.abs() > 1) b: Item(n.abs() > 1) } action { log("s"); } }
rule "scripted too" { match { a: Item(n.abs() > 1) } action { log("s"); } }
"#,
        );
        let three: Vec<u32> = (0..3).map(|c| memory(&p, &plan, "three", c)).collect();
        assert_eq!(three, [0, 1, 2], "one memory each");
        assert_eq!(memory(&p, &plan, "one", 0), 0, "the first memory of the shape");
        assert_eq!([memory(&p, &plan, "two", 0), memory(&p, &plan, "two", 1)], [0, 1]);
        assert_eq!(plan.shared[0].consumers.len(), 3);
        assert_eq!(plan.shared[2].consumers.len(), 1);
        // Script tests are never compared: each condition has its own.
        let scripted =
            [memory(&p, &plan, "scripted", 0), memory(&p, &plan, "scripted", 1), memory(&p, &plan, "scripted too", 0)];
        assert_eq!(scripted, [3, 4, 5]);
    }

    /// Rules `r0`.. whose first condition tests `Item(n == <literal>)`.
    fn literal_rules(literals: &[&str], extra: &str) -> String {
        let mut rules: String = literals
            .iter()
            .enumerate()
            .map(|(i, l)| format!("rule \"r{i}\" {{ match {{ x: Item(n == {l}) }} action {{ log(\"{i}\"); }} }}\n"))
            .collect();
        rules.push_str(extra);
        rules
    }

    /// The memories a fact of type Item with field `n` may enter.
    fn candidates(plan: &Plan, n: Value) -> Vec<u32> {
        let tp = &plan.by_type[&Sym::new("Item")];
        let mut out = SmallVec::new();
        tp.hashed_candidates(
            &plan.listeners,
            |f| std::borrow::Cow::Owned(if f == Sym::new("n") { n.clone() } else { Value::Null }),
            &mut out,
        );
        if tp.hashed.is_empty() || out.is_empty() {
            let (start, len) = tp.always;
            return plan.listeners[start as usize..(start + len) as usize].to_vec();
        }
        out.to_vec()
    }

    #[test]
    fn a_fact_visits_the_memories_of_its_literal_and_those_without_one() {
        let literals =
            ["0", "1", "2", "2.0", "3", "\"a\"", "true", "-3", "2.5", "9000000000000000", "4", "5", "6", "7"];
        let extra = r#"
rule "any" { match { x: Item() } action { log("any"); } }
rule "big" { match { x: Item(n > 1) } action { log("big"); } }
rule "tail" { match { x: Item(k == 1, n == 1) } action { log("tail"); } }
rule "late" { match { x: Item(n.abs() > 1, n == 1) } action { log("late"); } }
rule "one again" { match { x: Item(n == 1) y: Item(n == 1) } action { log("1"); } }
"#;
        let (p, plan) = layout(&literal_rules(&literals, extra));
        let m = |rule: &str, c: usize| memory(&p, &plan, rule, c);
        let tp = &plan.by_type[&Sym::new("Item")];
        assert_eq!(tp.hashed.len(), 1, "one hashed field: n");
        // Without a dispatching equality test: no test, an order test, an
        // equality on a field with few literals, one after a script, and a
        // literal that does not hash as it compares.
        let always = vec![m("r9", 0), m("any", 0), m("big", 0), m("tail", 0), m("late", 0)];
        assert_eq!(candidates(&plan, Value::Int(-1)), always);
        assert_eq!(candidates(&plan, Value::Int(2)), [vec![m("r2", 0), m("r3", 0)], always.clone()].concat());
        let mut one = vec![m("r1", 0), m("one again", 1)];
        assert_eq!(m("r1", 0), m("one again", 0));
        one.extend(&always);
        one.sort();
        assert_eq!(candidates(&plan, Value::Float(1.0)), one, "1.0 == 1");
        assert_eq!(candidates(&plan, Value::str("a")), [vec![m("r5", 0)], always.clone()].concat());
        assert_eq!(candidates(&plan, Value::Float(2.5))[0], m("r8", 0));
        assert_eq!(candidates(&plan, Value::Int(-3))[0], m("r7", 0));
        assert_eq!(candidates(&plan, Value::Bool(true))[0], m("r6", 0));
        assert_eq!(candidates(&plan, Value::Int(7)).len(), always.len() + 1);
        // `2` and `2.0` are two groups under one literal: two result slots.
        let slot = |rule: &str, c: usize| plan.shared[m(rule, c) as usize].pass_slot;
        assert_ne!(slot("r2", 0), slot("r3", 0));
        assert_eq!(slot("r1", 0), slot("one again", 1));
        assert_eq!(tp.pass_slots, 5 + 2, "the groups of `always`, and the most under one literal");
    }

    #[test]
    fn few_literals_are_tested_not_hashed() {
        let (_, plan) = layout(&literal_rules(&["1", "2", "3"], ""));
        let tp = &plan.by_type[&Sym::new("Item")];
        assert!(tp.hashed.is_empty());
        assert_eq!(tp.always, (0, 3));
        assert_eq!(tp.pass_slots, 3);
    }
}
