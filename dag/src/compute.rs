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

use crate::expr::{condition_expr, rhai_str, Piece, Ref};

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

/// Rhai statements that evaluate `expr` (a value's Rhai) into the variable
/// `var` inside a `try`, pushing `parameter `NAME`: message` onto the
/// array `errs` when it throws. `want` is a Rhai type name the result
/// must have (`"string"`), checked too.
pub fn guarded(out: &mut String, indent: &str, var: &str, expr: &str, name: &str, errs: &str, want: Option<&str>) {
    let label = rhai_str(&format!("parameter `{name}`: "));
    let _ = writeln!(out, "{indent}let {var} = ();");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::pieces;

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
