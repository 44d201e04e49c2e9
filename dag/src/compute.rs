//! Computed values: `${{ rhai }}` in a value is a Rhai expression run in
//! the rule sandbox when the value is needed, its result taken with its
//! type. Inside, `${param}` and `${name@step}` stand for their values, as
//! in a condition. The braces of a reference, of a Rhai map (`#{...}`) or
//! block nest inside; the expression ends at the `}}` that closes it.
//!
//! A computed value can fail at run time (a type error, a missing key, a
//! sandbox limit). Left alone that would fail the whole turn with a Rhai
//! message naming a compiled rule; instead each one is evaluated in a
//! `try`, and the step it feeds fails with `parameter `NAME`: MESSAGE`, so
//! the instance's reason names the step and the parameter.

use std::fmt::Write;

use crate::expr::{condition_expr, pieces, rhai_str, Piece, Ref};
use crate::model::{Step, StepType};
use crate::yaml::{Kind, Node, Scalar};

/// The expression of `rest` (which starts with `${{`): its inner text and
/// the length of the whole `${{ ... }}`.
pub fn split(rest: &str) -> Result<(&str, usize), String> {
    let bytes = rest.as_bytes();
    let mut depth = 0usize;
    let mut i = 3;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(q) => {
                if c == b'\\' {
                    i += 1;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                b'"' | b'`' | b'\'' => quote = Some(c),
                b'{' => depth += 1,
                b'}' if depth > 0 => depth -= 1,
                b'}' if bytes.get(i + 1) == Some(&b'}') => return Ok((&rest[3..i], i + 2)),
                b'}' => return Err("`${{` closed by a single `}`: an expression ends with `}}`".into()),
                _ => {}
            },
        }
        i += 1;
    }
    Err("`${{` without its closing `}}`".into())
}

/// Every reference in pieces, those inside expressions too.
pub fn refs(ps: &[Piece]) -> Vec<Ref> {
    let mut out = Vec::new();
    for p in ps {
        match p {
            Piece::Ref(r, _) => out.push(r.clone()),
            Piece::Expr(inner, _) => out.extend(refs(inner)),
            Piece::Lit(_) => {}
        }
    }
    out
}

/// The expressions among pieces.
pub fn exprs(ps: &[Piece]) -> impl Iterator<Item = &[Piece]> {
    ps.iter().filter_map(|p| match p {
        Piece::Expr(e, _) => Some(e.as_slice()),
        _ => None,
    })
}

/// Checks an expression compiles, each reference standing for a variable
/// (so that `${n} * 2` is read as arithmetic on a value, not on `()`), and
/// `vars` being the other names it may use. The message is Rhai's.
pub fn check(sandbox: &stoa_rules::sandbox::Sandbox, inner: &[Piece], vars: &[&str]) -> Result<(), String> {
    let names = std::cell::RefCell::new(Vec::<String>::new());
    let code = condition_expr(inner, &|_: &Ref| {
        let mut n = names.borrow_mut();
        let name = format!("__ref{}", n.len());
        n.push(name.clone());
        name
    });
    let names = names.into_inner();
    let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
    all.extend_from_slice(vars);
    match sandbox.compile(&code, &all, true) {
        Ok(_) => Ok(()),
        Err(errors) => Err(errors.first().map_or_else(|| "not an expression".into(), |e| e.message.clone())),
    }
}

/// Reads a reference as Rhai (see `emit::access`).
pub type Access<'a> = &'a dyn Fn(&Ref) -> String;

/// Whether a value computes anything (holds `${{` somewhere).
pub fn computes(node: &Node) -> bool {
    match &node.kind {
        Kind::Scalar(Scalar::Str(s)) => {
            s.contains("${{") && pieces(s).is_ok_and(|ps| ps.iter().any(|p| matches!(p, Piece::Expr(..))))
        }
        Kind::Seq(items) => items.iter().any(computes),
        Kind::Map(entries) => entries.iter().any(|(_, v)| computes(v)),
        _ => false,
    }
}

/// Whether a value reads an upstream step's output, whose type no check
/// before the run can know.
fn reads_output(node: &Node) -> bool {
    match &node.kind {
        Kind::Scalar(Scalar::Str(s)) => {
            pieces(s).is_ok_and(|ps| refs(&ps).iter().any(|r| matches!(r, Ref::Output { .. })))
        }
        Kind::Seq(items) => items.iter().any(reads_output),
        Kind::Map(entries) => entries.iter().any(|(_, v)| reads_output(v)),
        _ => false,
    }
}

/// The prefix of the variables a guarded step action evaluates its values
/// into. The step handed to the action proper reads them as references
/// `${__v_NAME}`, which the accessor maps to the variable (only those it
/// made: a parameter of that name elsewhere still reads the parameter).
const VAR: &str = "__v_";

fn str_node(s: String) -> Node {
    Node { pos: stoa_rules::Pos::default(), kind: Kind::Scalar(Scalar::Str(s)) }
}

/// A step's start action, with the run-time checks of its values: each
/// parameter that computes is evaluated first, in a `try`; a `duration`,
/// `workflow` or `timeout` that computes or reads an output is checked to
/// be a string. Any failure fails the step (so the instance, naming the
/// step) with every problem found, instead of the turn with a Rhai error.
/// `start` writes the action proper; it is given the step with those
/// values replaced by references to the variables holding them.
pub fn guarded_start(
    out: &mut String,
    s: &Step,
    acc: &dyn Fn(&Ref) -> String,
    value: &dyn Fn(&Node, Access) -> String,
    start: fn(&mut String, &Step, Access),
) {
    let string_valued = |k: &str| match s.ty {
        StepType::Sleep => k == "duration",
        _ => false,
    };
    let mut checked = s.clone();
    let mut body = String::new();
    let mut made: Vec<String> = Vec::new();
    for (k, v) in checked.params.iter_mut() {
        let want = string_valued(&k.text);
        if computes(v) || (want && reads_output(v)) {
            let var = format!("{VAR}{}", k.text);
            let _ = writeln!(body, "        let {var} = ();");
            guarded(&mut body, "        ", &var, &value(v, acc), &k.text, "errs", want.then_some("string"));
            *v = str_node(format!("${{{var}}}"));
            made.push(var);
        }
    }
    if let StepType::Subworkflow(w) = &mut checked.ty {
        if computes(w) || reads_output(w) {
            let var = format!("{VAR}_workflow");
            let _ = writeln!(body, "        let {var} = ();");
            guarded(&mut body, "        ", &var, &value(w, acc), "workflow", "errs", Some("string"));
            *w = str_node(format!("${{{var}}}"));
            made.push(var);
        }
    }
    if let Some(t) = &mut checked.timeout {
        let node = str_node(t.text.clone());
        if computes(&node) || reads_output(&node) {
            let var = format!("{VAR}_timeout");
            let _ = writeln!(body, "        let {var} = ();");
            guarded(&mut body, "        ", &var, &value(&node, acc), "timeout", "errs", Some("string"));
            t.text = format!("${{{var}}}");
            made.push(var);
        }
    }
    if made.is_empty() {
        return start(out, s, acc);
    }
    out.push_str("        // The step's values, computed and checked before it starts.\n        let errs = [];\n");
    out.push_str(&body);
    out.push_str("        if errs.len() > 0 {\n            let why = \"\";\n            for e in errs { if why != \"\" { why += \"; \"; } why += e; }\n");
    out.push_str("            modify(me, #{ state: \"failed\", error: why });\n        } else {\n");
    let vars = |r: &Ref| match r {
        Ref::Param(p) if made.contains(p) => p.clone(),
        _ => acc(r),
    };
    let mut inner = String::new();
    start(&mut inner, &checked, &vars);
    for line in inner.lines() {
        let _ = writeln!(out, "    {line}");
    }
    out.push_str("        }\n");
}

/// Rhai statements that evaluate `expr` (a value's Rhai) into the variable
/// `var` (declared before) inside a `try`, pushing `parameter `NAME`: message` onto the
/// array `errs` when it throws. `want` is a Rhai type name the result
/// must have (`"string"`), checked too.
pub fn guarded(out: &mut String, indent: &str, var: &str, expr: &str, name: &str, errs: &str, want: Option<&str>) {
    let label = rhai_str(&format!("parameter `{name}`: "));
    // A caught system error is a map with the message in it; a thrown
    // value is itself.
    let _ = writeln!(out, "{indent}try {{ {var} = {expr}; }} catch (e) {{ {errs}.push({label} + (if type_of(e) == \"map\" {{ e.message }} else {{ `${{e}}` }})); }}");
    if let Some(t) = want {
        let _ = writeln!(
            out,
            "{indent}if type_of({var}) != {} {{ {errs}.push({label} + \"must be a {t}, not \" + type_of({var})); }}",
            rhai_str(t),
        );
    }
}

/// A parameter's default that computes may read the parameters declared
/// before it (they are computed in order), nothing else.
pub(crate) fn check_default(
    r: &mut crate::model::Reader<'_>,
    map: &stoa_rules::diagnostic::SourceMap,
    dag: &crate::model::Dag,
    i: usize,
    d: &Node,
) {
    let decl = &dag.params[i];
    let lone = matches!(&d.kind, Kind::Scalar(Scalar::Str(s)) if matches!(pieces(s).as_deref(), Ok([Piece::Expr(..)])));
    if !lone && decl.ty != crate::model::ParamType::String {
        // Spliced into text, or inside a list or map: the value's type is
        // known now, and it is not the parameter's.
        let what = match &d.kind {
            Kind::Scalar(_) => "text with an expression in it, a string",
            _ => d.what(),
        };
        if !decl.ty.holds(d) || matches!(d.kind, Kind::Scalar(_)) {
            r.error(
                d.pos,
                stoa_rules::Code::DagType,
                format!("parameter `{}` is {}, but its default is {what}", decl.name.text, decl.ty.a()),
            );
        }
    }
    let mut strings = Vec::new();
    strings_of(d, &mut strings);
    for (s, pos) in strings {
        let Ok(ps) = pieces(&s) else { continue };
        for rf in refs(&ps) {
            let Ref::Param(p) = &rf else { continue };
            if let Some(j) = dag.params.iter().position(|q| &q.name.text == p) {
                if j >= i {
                    let at = crate::validate::ref_pos(map, pos, &rf);
                    r.error(
                        at,
                        stoa_rules::Code::DagReference,
                        format!(
                            "the default of `{}` reads `${{{p}}}`, which is declared {}; a default reads the parameters declared before it",
                            dag.params[i].name.text,
                            if j == i { "by this very parameter" } else { "after it" }
                        ),
                    );
                }
            }
        }
    }
}

fn strings_of(node: &Node, out: &mut Vec<(String, stoa_rules::Pos)>) {
    match &node.kind {
        Kind::Scalar(Scalar::Str(s)) => out.push((s.clone(), node.pos)),
        Kind::Seq(items) => items.iter().for_each(|i| strings_of(i, out)),
        Kind::Map(entries) => entries.iter().for_each(|(_, v)| strings_of(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expression_ends_at_its_closing_braces() {
        assert_eq!(split("${{ 1 + 2 }} rest"), Ok((" 1 + 2 ", 12)));
        assert_eq!(split("${{ #{a: ${x}}.a }}"), Ok((" #{a: ${x}}.a ", 19)));
        assert_eq!(split("${{ \"}}\" + ${x} }}"), Ok((" \"}}\" + ${x} ", 18)));
        assert!(split("${{ 1 + 2 }").is_err());
        let ps = pieces("a-${{ ${n} * 2 }}").unwrap();
        assert_eq!(refs(&ps), vec![Ref::Param("n".into())]);
        assert_eq!(exprs(&ps).count(), 1);
    }
}
