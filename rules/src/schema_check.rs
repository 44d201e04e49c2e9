//! `stoa check` against the fact schemas of `pack.toml`: field names (and,
//! where a literal is written, types) in pattern constraints, in reads of
//! bound facts in sections, and in the maps of `insert`, `modify`, `after`
//! and `at`; fact types that look misspelt; strict mode.
//!
//! A field of a declared type that is not in its schema can only ever read
//! null, and writing one fails the turn: both are errors. A type name is a
//! warning unless strict mode is on, since facts of undeclared types are
//! free-form and may come with any request.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rhai::{ASTNode, Expr as RExpr, Stmt, AST};

use crate::diagnostic::{closest, shown, Code, Diagnostic, Pos, SourceMap};
use crate::expr::{tokenize, Tok};
use crate::manifest::{FieldType, Manifest, Schema, BUILTIN_TYPES};
use crate::syntax::{ConditionAst, PatternAst, RuleAst, Text};
use crate::testcase::TestCase;
use crate::value::Value;

/// A rule's bindings in order: name, and the fact type it is bound to
/// (`None` for an aggregate's value).
pub(crate) type Bindings = Vec<(String, Option<String>)>;

/// Where a fact type is named by a rule.
struct TypeUse {
    path: PathBuf,
    pos: Pos,
    ty: String,
    inserted: bool,
}

/// The checks of one pack; type names are judged at the end (`finish`),
/// once every rule has said which types it matches and inserts.
pub(crate) struct PackCheck<'m> {
    manifest: &'m Manifest,
    uses: Vec<TypeUse>,
}

impl<'m> PackCheck<'m> {
    pub(crate) fn new(manifest: &'m Manifest) -> Self {
        PackCheck { manifest, uses: Vec::new() }
    }

    fn schema(&self, ty: &str) -> Option<&'m Schema> {
        self.manifest.facts.get(ty)
    }

    /// The bindings a rule makes, in the order it makes them.
    pub(crate) fn bindings(ast: &RuleAst) -> Bindings {
        ast.conditions
            .iter()
            .filter_map(|c| match c {
                ConditionAst::Pattern { binding: Some(b), pattern } => {
                    Some((b.text.clone(), Some(pattern.type_name.clone())))
                }
                ConditionAst::Aggregate { binding, .. } => Some((binding.text.clone(), None)),
                _ => None,
            })
            .collect()
    }

    /// Checks a rule's conditions: the types they match and the fields
    /// their constraints read.
    pub(crate) fn conditions(&mut self, path: &Path, map: &SourceMap, ast: &RuleAst, diags: &mut Vec<Diagnostic>) {
        let mut bound: Bindings = Vec::new();
        for c in &ast.conditions {
            match c {
                ConditionAst::Pattern { binding, pattern: p } => {
                    self.pattern(path, map, p, &bound, diags);
                    if let Some(b) = binding {
                        bound.push((b.text.clone(), Some(p.type_name.clone())));
                    }
                }
                ConditionAst::Not(p) | ConditionAst::Exists(p) => self.pattern(path, map, p, &bound, diags),
                ConditionAst::Aggregate { binding, pattern: p, over, .. } => {
                    self.pattern(path, map, p, &bound, diags);
                    if let Some(t) = over {
                        self.constraint(path, map, t, Some(&p.type_name), &bound, diags);
                    }
                    bound.push((binding.text.clone(), None));
                }
                ConditionAst::Test(t) => self.constraint(path, map, t, None, &bound, diags),
            }
        }
    }

    fn pattern(&mut self, path: &Path, map: &SourceMap, p: &PatternAst, bound: &Bindings, diags: &mut Vec<Diagnostic>) {
        self.uses.push(TypeUse { path: path.into(), pos: p.pos, ty: p.type_name.clone(), inserted: false });
        for t in &p.constraints {
            self.constraint(path, map, t, Some(&p.type_name), bound, diags);
        }
    }

    /// The fields a constraint reads, found on its tokens as the compiler
    /// resolves them (`expr::parse`, `expr::rewrite_for_rhai`): a bare name
    /// is a field of the current fact unless it names a binding, `this.f`
    /// too, `b.f` and `b["f"]` a field of the fact bound to `b`. A text
    /// that does not tokenize (closures, character literals) is not checked.
    fn constraint(
        &self,
        path: &Path,
        map: &SourceMap,
        t: &Text,
        current: Option<&str>,
        bound: &Bindings,
        diags: &mut Vec<Diagnostic>,
    ) {
        let Ok(toks) = tokenize(&t.text) else { return };
        let tok = |k: usize| toks.get(k).map(|t| &t.1);
        let at = |off: usize| map.pos(t.offset + off);
        let mut k = 0;
        while k < toks.len() {
            let (off, Tok::Ident(id)) = &toks[k] else {
                k += 1;
                continue;
            };
            let after_dot = k > 0 && tok(k - 1) == Some(&Tok::Op("."));
            let next = tok(k + 1);
            if after_dot || matches!(next, Some(Tok::Op("(" | ":"))) || crate::expr::is_keyword(id) && id != "this" {
                k += 1;
                continue;
            }
            let binding = bound.iter().find(|(n, _)| n == id).map(|(_, ty)| ty.as_deref());
            // (type, field, offset of the field, first and last token)
            let field = match (id.as_str(), binding, next) {
                ("this", _, Some(Tok::Op("."))) if current.is_some() => match tok(k + 2) {
                    Some(Tok::Ident(f)) => Some((current, f.clone(), toks[k + 2].0, k, k + 2)),
                    _ => None,
                },
                // `this` alone: the whole fact.
                ("this", ..) => None,
                (_, Some(Some(ty)), Some(Tok::Op("."))) => match (tok(k + 2), tok(k + 3)) {
                    (Some(Tok::Ident(f)), n) if n != Some(&Tok::Op("(")) => {
                        Some((Some(ty), f.clone(), toks[k + 2].0, k, k + 2))
                    }
                    _ => None,
                },
                (_, Some(Some(ty)), Some(Tok::Op("["))) => match (tok(k + 2), tok(k + 3)) {
                    (Some(Tok::Str(f)), Some(Tok::Op("]"))) => Some((Some(ty), f.clone(), toks[k + 2].0 + 1, k, k + 3)),
                    _ => None,
                },
                (_, Some(_), _) => None,
                (_, None, _) if current.is_some() => Some((current, id.clone(), *off, k, k)),
                _ => None,
            };
            let Some((Some(ty), name, off, first, last)) = field else {
                k += 1;
                continue;
            };
            k = last + 1;
            let Some(schema) = self.schema(ty) else { continue };
            let Some(spec) = known_field(schema, &name) else {
                diags.push(unknown_field(path, at(off), ty, schema, &name, "read"));
                continue;
            };
            let Some(spec) = spec else { continue };
            if let Some((lit_off, lit, op)) = compared_literal(&toks, first, last) {
                if !comparable(spec.ty, &lit) {
                    let holds = if op == "!=" { "true" } else { "false" };
                    diags.push(Diagnostic::error(
                        path,
                        at(lit_off),
                        Code::FieldType,
                        format!(
                            "{ty}.{name} holds {} values; comparing it with {} {} is always {holds}",
                            spec.ty.name(),
                            lit.type_name(),
                            shown(&lit.to_string())
                        ),
                    ));
                }
            }
        }
    }

    /// Checks a compiled section (its AST as written; `start` is where its
    /// text begins in the file): reads of bound facts, and the maps of
    /// `insert`, `modify`, `after` and `at`.
    pub(crate) fn section(
        &mut self,
        path: &Path,
        start: Pos,
        ast: &AST,
        bound: &Bindings,
        diags: &mut Vec<Diagnostic>,
    ) {
        let at = |p: rhai::Position| {
            let rel = Pos::new(p.line().unwrap_or(1) as u32, p.position().unwrap_or(1) as u32);
            crate::compile::file_pos(start, rel)
        };
        // A binding a `let` or `for` shadows, or an assignment replaces,
        // anywhere is not checked: what a name holds depends on where it is
        // read.
        let mut locals = BTreeSet::new();
        walk(ast, |path| match path.last() {
            Some(ASTNode::Stmt(Stmt::Var(x, ..))) => {
                locals.insert(x.0.name.to_string());
            }
            Some(ASTNode::Stmt(Stmt::Assignment(a))) => {
                if let RExpr::Variable(v, ..) = &a.1.lhs {
                    locals.insert(v.1.to_string());
                }
            }
            Some(ASTNode::Stmt(Stmt::For(x, ..))) => {
                locals.insert(x.0.name.to_string());
                if let Some(i) = &x.1 {
                    locals.insert(i.name.to_string());
                }
            }
            _ => {}
        });
        let fact_type = |e: &RExpr| match e {
            RExpr::Variable(v, _, _) if !locals.contains(v.1.as_str()) => {
                bound.iter().find(|(n, _)| n == v.1.as_str()).and_then(|(_, t)| t.clone())
            }
            _ => None,
        };
        let mut uses = Vec::new();
        walk(ast, |nodes| {
            let Some(node) = nodes.last() else { return };
            if let ASTNode::Expr(e) = node {
                let e: &RExpr = e;
                if let RExpr::Dot(x, ..) | RExpr::Index(x, ..) = e {
                    // `o.f = v` writes the script's copy of the fact: not a read.
                    let assigned = nodes.len() >= 2
                        && matches!(nodes[nodes.len() - 2], ASTNode::Stmt(Stmt::Assignment(a)) if std::ptr::eq(&a.1.lhs, e));
                    let Some(ty) = fact_type(&x.lhs).filter(|_| !assigned) else { return };
                    let field = match (e, &x.rhs) {
                        (RExpr::Dot(..), RExpr::Property(p, pos)) => Some((p.2.to_string(), at(*pos))),
                        (RExpr::Dot(..), RExpr::Dot(y, ..) | RExpr::Index(y, ..)) => match &y.lhs {
                            RExpr::Property(p, pos) => Some((p.2.to_string(), at(*pos))),
                            _ => None,
                        },
                        // The name inside the quotes.
                        (RExpr::Index(..), RExpr::StringConstant(s, pos)) => {
                            let q = at(*pos);
                            Some((s.to_string(), Pos::new(q.line, q.col + 1)))
                        }
                        _ => None,
                    };
                    let (Some((name, pos)), Some(schema)) = (field, self.schema(&ty)) else { return };
                    if known_field(schema, &name).is_none() {
                        diags.push(unknown_field(path, pos, &ty, schema, &name, "read"));
                    }
                    return;
                }
            }
            let (f, call_pos) = match node {
                ASTNode::Expr(RExpr::FnCall(f, p)) | ASTNode::Stmt(Stmt::FnCall(f, p)) => (f, *p),
                _ => return,
            };
            let (ty, map, new, schema) = match (f.name.as_str(), &f.args[..]) {
                ("insert", [RExpr::StringConstant(ty, p), map])
                | ("after" | "at", [_, RExpr::StringConstant(ty, p), map]) => {
                    uses.push(TypeUse { path: path.into(), pos: at(*p), ty: ty.to_string(), inserted: true });
                    (ty.to_string(), map, true, self.schema(ty))
                }
                ("modify", [fact, map]) => match fact_type(fact) {
                    Some(ty) => {
                        let schema = self.schema(&ty);
                        (ty, map, false, schema)
                    }
                    None => return,
                },
                // The sandbox spells `call` as `Call` (a reserved word).
                ("call" | "Call", [RExpr::StringConstant(function, _), map, ..]) => {
                    let schema = self.manifest.functions.get(function.as_str()).and_then(|spec| spec.args.as_ref());
                    (crate::manifest::args_label(function), map, true, schema)
                }
                _ => return,
            };
            let (Some(schema), RExpr::Map(entries, map_pos)) = (schema, map) else { return };
            let what = match (new, f.name.as_str()) {
                (false, _) => "modify",
                (true, "Call") => "call",
                (true, name) => name,
            };
            for (key, value) in &entries.0 {
                let name = key.name.as_str();
                if name.starts_with('_') {
                    continue;
                }
                let Some(spec) = schema.fields.get(name) else {
                    diags.push(unknown_field(path, at(key.pos), &ty, schema, name, what));
                    continue;
                };
                match literal_type(value) {
                    Some(None) if !spec.may_be_absent() => diags.push(Diagnostic::error(
                        path,
                        at(value.position()),
                        Code::Schema,
                        format!("{what}: {ty}.{name} is required by the schema; `()` would remove it"),
                    )),
                    Some(Some(found)) if !holds(spec.ty, found) => diags.push(Diagnostic::error(
                        path,
                        at(value.position()),
                        Code::FieldType,
                        format!("{what}: {ty}.{name} must be {}, found {found}", spec.ty.name()),
                    )),
                    _ => {}
                }
            }
            if new {
                let given: BTreeSet<&str> = entries.0.iter().map(|(k, _)| k.name.as_str()).collect();
                let missing: Vec<&str> = (schema.fields.iter())
                    .filter(|(n, s)| !s.may_be_absent() && !given.contains(n.as_str()))
                    .map(|(n, _)| n.as_str())
                    .collect();
                if !missing.is_empty() {
                    let pos = if map_pos.is_none() { call_pos } else { *map_pos };
                    diags.push(Diagnostic::error(
                        path,
                        at(pos),
                        Code::Schema,
                        format!("{what}: {ty} needs {} (required by the schema, without a default)", list(&missing)),
                    ));
                }
            }
        });
        self.uses.extend(uses);
    }

    /// Judges the fact types the rules named: a type nothing declares or
    /// gives, close to one that is, is a misspelling (a warning); in strict
    /// mode every type must be declared (an error).
    pub(crate) fn finish(self, tests: &[(PathBuf, TestCase)], diags: &mut Vec<Diagnostic>) {
        let m = self.manifest;
        let declared: BTreeSet<&str> =
            m.facts.keys().map(String::as_str).chain(BUILTIN_TYPES.iter().copied()).collect();
        // Types facts come in with: inserted by rules, given by tests and schedules.
        let mut given: BTreeSet<&str> = self.uses.iter().filter(|u| u.inserted).map(|u| u.ty.as_str()).collect();
        let mut expected: BTreeSet<&str> = self.uses.iter().filter(|u| !u.inserted).map(|u| u.ty.as_str()).collect();
        for (_, case) in tests {
            given.extend(case.facts.iter().map(|f| f.get_ref().ty.as_str()));
            given.extend(case.steps.iter().flat_map(|s| &s.assert).map(|f| f.ty.as_str()));
            expected.extend(case.expect.facts.iter().map(|f| f.ty.as_str()));
            expected.extend(case.expect.no_facts.iter().map(String::as_str));
        }
        given.extend(m.schedules.values().flat_map(|s| &s.facts).map(|f| f.ty.as_str()));
        for u in &self.uses {
            let ty = u.ty.as_str();
            if declared.contains(ty) || !crate::value::valid_type_name(ty) {
                continue;
            }
            let peers = if u.inserted { &expected } else { &given };
            let near = closest(ty, declared.iter().chain(peers.iter()).copied());
            let hint = near.map(|n| format!("; did you mean `{n}`?")).unwrap_or_default();
            if m.strict_facts {
                let msg = format!("{ty} has no schema, and `[facts] strict = true` requires one{hint}");
                diags.push(Diagnostic::error(&u.path, u.pos, Code::UnknownType, msg));
            } else if let Some(near) = near.filter(|_| !peers.contains(ty)) {
                let msg = if u.inserted {
                    format!("no schema declares `{ty}`, and no rule matches nor test expects a fact of that type; did you mean `{near}`?")
                } else {
                    format!("no schema declares `{ty}`, and no rule, test or schedule gives a fact of that type; did you mean `{near}`?")
                };
                diags.push(Diagnostic::warning(&u.path, u.pos, Code::UnknownType, msg));
            }
        }
    }
}

/// Walks the statements of a section, not the functions it defines (their
/// names are their own).
fn walk(ast: &AST, mut f: impl FnMut(&[ASTNode])) {
    let mut path = Vec::new();
    for s in ast.statements() {
        s.walk(&mut path, &mut |p: &[ASTNode]| {
            f(p);
            true
        });
        path.clear();
    }
}

/// `Some(spec)` for a field of the schema, `Some(None)` for what every fact
/// has (`_id`, `_type`), `None` for anything else.
fn known_field<'s>(schema: &'s Schema, name: &str) -> Option<Option<&'s crate::manifest::FieldSpec>> {
    match name {
        "_id" | "_type" => Some(None),
        _ => schema.fields.get(name).map(Some),
    }
}

fn unknown_field(path: &Path, pos: Pos, ty: &str, schema: &Schema, name: &str, verb: &str) -> Diagnostic {
    let hint = match closest(name, schema.fields.keys().map(String::as_str)) {
        Some(n) => format!("; did you mean `{n}`?"),
        None => {
            let names: Vec<&str> = schema.fields.keys().map(String::as_str).collect();
            format!(" (its fields: {})", if names.is_empty() { "none".to_string() } else { list(&names) })
        }
    };
    let what = match verb {
        "read" => format!("`{}` is not a field of {ty}: reading it always gives ()", shown(name)),
        _ => format!("{verb}: `{}` is not a field of {ty}", shown(name)),
    };
    Diagnostic::error(path, pos, Code::UnknownField, format!("{what}{hint}"))
}

/// Names as `a`, `b` and `c` (the first 8, then how many more).
fn list(names: &[&str]) -> String {
    let mut shown: Vec<String> = names.iter().take(8).map(|n| format!("`{n}`")).collect();
    if names.len() > 8 {
        shown.push(format!("{} more", names.len() - 8));
    }
    match shown.len() {
        0 | 1 => shown.concat(),
        n => format!("{} and {}", shown[..n - 1].join(", "), shown[n - 1]),
    }
}

/// The literal a field reference (tokens `first..=last`) is compared with
/// in `ref OP lit` or `lit OP ref`, when nothing binds tighter to either.
fn compared_literal(toks: &[(usize, Tok)], first: usize, last: usize) -> Option<(usize, Value, &'static str)> {
    const CMP: [&str; 6] = ["==", "!=", "<", "<=", ">", ">="];
    let tok = |k: usize| toks.get(k).map(|t| &t.1);
    // What may stand next to an operand without binding tighter than a comparison.
    let loose = |t: Option<&Tok>| match t {
        None => true,
        Some(Tok::Op(o)) => matches!(*o, "(" | ")" | "," | "&&" | "||" | "[" | "]"),
        Some(_) => false,
    };
    let literal = |k: usize| -> Option<(usize, Value)> {
        let v = match tok(k)? {
            Tok::Str(s) => Value::str(s),
            Tok::Int(i) => Value::Int(*i),
            Tok::Float(f) => Value::Float(*f),
            Tok::Ident(b) if b == "true" || b == "false" => Value::Bool(b == "true"),
            _ => return None,
        };
        Some((toks[k].0, v))
    };
    let before = first.checked_sub(1).and_then(tok);
    if let Some(Tok::Op(op)) = tok(last + 1).filter(|t| matches!(t, Tok::Op(o) if CMP.contains(o))) {
        if loose(before) && loose(tok(last + 3)) {
            if let Some((off, v)) = literal(last + 2) {
                return Some((off, v, op));
            }
        }
    }
    if let Some(Tok::Op(op)) = before.filter(|t| matches!(t, Tok::Op(o) if CMP.contains(o))) {
        let lit = first.checked_sub(2)?;
        if loose(tok(last + 1)) && loose(lit.checked_sub(1).and_then(tok)) {
            if let Some((off, v)) = literal(lit) {
                return Some((off, v, op));
            }
        }
    }
    None
}

/// Whether a field of type `ty` can ever compare equal or ordered with `v`:
/// numbers compare with numbers whatever their kind.
fn comparable(ty: FieldType, v: &Value) -> bool {
    match ty {
        FieldType::Int | FieldType::Float | FieldType::Number => matches!(v, Value::Int(_) | Value::Float(_)),
        t => t.accepts(v),
    }
}

/// The type of a literal value in a script: `Some(None)` for `()`, `None`
/// when the expression is not a literal.
fn literal_type(e: &RExpr) -> Option<Option<&'static str>> {
    Some(Some(match e {
        RExpr::Unit(_) => return Some(None),
        RExpr::StringConstant(..) | RExpr::InterpolatedString(..) | RExpr::CharConstant(..) => "string",
        RExpr::IntegerConstant(..) => "int",
        RExpr::FloatConstant(..) => "float",
        RExpr::BoolConstant(..) => "bool",
        RExpr::Array(..) => "array",
        RExpr::Map(..) => "map",
        _ => return None,
    }))
}

/// Whether a field of type `ty` holds a value of the literal type `found`.
fn holds(ty: FieldType, found: &str) -> bool {
    match ty {
        FieldType::Any => true,
        FieldType::Float | FieldType::Number => matches!(found, "int" | "float"),
        t => t.name() == found,
    }
}

#[cfg(test)]
mod tests;
