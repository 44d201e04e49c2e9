//! References in values and conditions: `${param}` reads a workflow
//! parameter, `${name@step}` an output of an upstream step; `$${` is a
//! literal `${`. A value that is one reference alone keeps the referenced
//! value's type; a reference inside longer text is spliced in as text. A
//! condition (`when:`) is a Rhai expression in which each reference stands
//! for its value. Translated here to Rhai over the compiled pack's facts.

/// What a `${...}` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ref {
    Param(String),
    Output { name: String, step: String },
}

impl Ref {
    pub fn text(&self) -> String {
        match self {
            Ref::Param(p) => format!("${{{p}}}"),
            Ref::Output { name, step } => format!("${{{name}@{step}}}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Lit(String),
    /// A reference and its byte offset in the text (of the `$`).
    Ref(Ref, usize),
    /// `${{ rhai }}`: an expression computing a value (see `crate::compute`),
    /// its own pieces (Rhai text and references), and its offset.
    Expr(Vec<Piece>, usize),
}

/// A malformed reference: its byte offset and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRef {
    pub at: usize,
    pub message: String,
}

fn ident(s: &str, extra: &[char]) -> bool {
    !s.is_empty()
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(&c))
}

/// Splits text into literal parts and references.
pub fn pieces(s: &str) -> Result<Vec<Piece>, BadRef> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        if rest.starts_with("$${") {
            lit.push_str("${");
            i += 3;
        } else if rest.starts_with("${{") {
            let (inner, len) = crate::compute::split(rest).map_err(|m| BadRef { at: i, message: m })?;
            let inner = pieces(inner).map_err(|b| BadRef { at: i + 3 + b.at, message: b.message })?;
            if inner.iter().any(|p| matches!(p, Piece::Expr(..))) {
                return Err(BadRef {
                    at: i,
                    message: "`${{` inside an expression: write the inner one as Rhai".into(),
                });
            }
            if !lit.is_empty() {
                out.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            out.push(Piece::Expr(inner, i));
            i += len;
        } else if rest.starts_with("${") {
            let Some(end) = rest.find('}') else {
                return Err(BadRef { at: i, message: "`${` without its closing `}`".into() });
            };
            let inner = rest[2..end].trim();
            let r = match inner.split_once('@') {
                Some((name, step)) if ident(name.trim(), &[]) && ident(step.trim(), &['-', '.']) => {
                    Ref::Output { name: name.trim().to_string(), step: step.trim().to_string() }
                }
                None if ident(inner, &[]) => Ref::Param(inner.to_string()),
                _ => {
                    return Err(BadRef {
                        at: i,
                        message: format!(
                            "`{}` is not a reference: write `${{param}}` or `${{output@step}}`",
                            stoa_rules::diagnostic::shown(&rest[..=end])
                        ),
                    })
                }
            };
            if !lit.is_empty() {
                out.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            out.push(Piece::Ref(r, i));
            i += end + 1;
        } else {
            let c = rest.chars().next().unwrap_or_default();
            lit.push(c);
            i += c.len_utf8();
        }
    }
    if !lit.is_empty() {
        out.push(Piece::Lit(lit));
    }
    Ok(out)
}

/// A Rhai string literal of `s`.
pub fn rhai_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A text value as Rhai: a lone reference is its value; text with
/// references is a string built from its parts.
pub fn text_expr(pieces: &[Piece], access: &dyn Fn(&Ref) -> String) -> String {
    match pieces {
        [] => "\"\"".to_string(),
        [Piece::Ref(r, _)] => access(r),
        [Piece::Expr(e, _)] => condition_expr(e, access),
        [Piece::Lit(l)] => rhai_str(l),
        _ => {
            // Starting from a string makes every `+` a concatenation.
            let mut out = String::from("(");
            if !matches!(pieces.first(), Some(Piece::Lit(_))) {
                out.push_str("\"\"");
            }
            for (i, p) in pieces.iter().enumerate() {
                if i > 0 || !matches!(p, Piece::Lit(_)) {
                    out.push_str(" + ");
                }
                match p {
                    Piece::Lit(l) => out.push_str(&rhai_str(l)),
                    Piece::Ref(r, _) => out.push_str(&format!("`${{{}}}`", access(r))),
                    Piece::Expr(e, _) => out.push_str(&format!("`${{{}}}`", condition_expr(e, access))),
                }
            }
            out.push(')');
            out
        }
    }
}

/// A condition as Rhai: each reference replaced by its value, the rest
/// as written (in parentheses).
pub fn condition_expr(pieces: &[Piece], access: &dyn Fn(&Ref) -> String) -> String {
    let mut out = String::from("(");
    for p in pieces {
        match p {
            Piece::Lit(l) => out.push_str(l),
            Piece::Ref(r, _) => {
                out.push('(');
                out.push_str(&access(r));
                out.push(')');
            }
            Piece::Expr(e, _) => out.push_str(&condition_expr(e, access)),
        }
    }
    out.push(')');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(r: &Ref) -> String {
        match r {
            Ref::Param(p) => format!("d.params.{p}"),
            Ref::Output { name, step } => format!("{step}.outputs.{name}"),
        }
    }

    #[test]
    fn references_become_rhai() {
        let p = pieces("${day}").unwrap();
        assert_eq!(text_expr(&p, &access), "d.params.day");
        let p = pieces("s3://b/${day}/${n@split}.csv $${x}").unwrap();
        assert_eq!(
            text_expr(&p, &access),
            r#"("s3://b/" + `${d.params.day}` + "/" + `${split.outputs.n}` + ".csv ${x}")"#
        );
        let p = pieces("${day}-x").unwrap();
        assert_eq!(text_expr(&p, &access), r#"("" + `${d.params.day}` + "-x")"#);
        let p = pieces("${ rows@extract } > 10 && \"a\" != ${day}").unwrap();
        assert_eq!(condition_expr(&p, &access), r#"((extract.outputs.rows) > 10 && "a" != (d.params.day))"#);
        assert_eq!(rhai_str("a\"b\\\n\u{1}"), r#""a\"b\\\n\u0001""#);
    }

    #[test]
    fn bad_references_say_where() {
        assert_eq!(pieces("ab ${x").unwrap_err(), BadRef { at: 3, message: "`${` without its closing `}`".into() });
        assert_eq!(
            pieces("${a b}").unwrap_err().message,
            "`${a b}` is not a reference: write `${param}` or `${output@step}`"
        );
    }
}
