//! Constraint expressions: a small native evaluator for the common shapes
//! (field comparisons, joins, boolean logic, arithmetic) so that matching does
//! not enter Rhai; anything else falls back to a compiled Rhai expression.

use std::borrow::Cow;
use std::sync::Arc;

use crate::value::{Sym, Value};

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    Ident(String),
    Int(i64),
    Float(f64),
    Str(String),
    Op(&'static str),
}

/// Tokens with their byte offsets into the expression text.
pub fn tokenize(src: &str) -> Result<Vec<(usize, Tok)>, (usize, String)> {
    const OPS: [&str; 22] = [
        "==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "+", "-", "*", "/", "%", "(", ")", "[", "]", ",", ".", "#{",
        ":",
    ];
    let b = src.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    'outer: while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push((start, Tok::Ident(src[start..i].to_string())));
            continue;
        }
        if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
                i += 1;
            }
            let mut float = false;
            if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                float = true;
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let text = src[start..i].replace('_', "");
            let tok = if float {
                Tok::Float(text.parse().map_err(|_| (start, "bad number".to_string()))?)
            } else {
                Tok::Int(text.parse().map_err(|_| (start, "integer out of range".to_string()))?)
            };
            out.push((start, tok));
            continue;
        }
        if c == b'"' {
            i += 1;
            let mut s = String::new();
            let mut chars = src[i..].char_indices();
            while let Some((j, ch)) = chars.next() {
                match ch {
                    '"' => {
                        i += j + 1;
                        out.push((start, Tok::Str(s)));
                        continue 'outer;
                    }
                    '\\' => match chars.next() {
                        Some((_, 'n')) => s.push('\n'),
                        Some((_, 't')) => s.push('\t'),
                        Some((_, c)) => s.push(c),
                        None => break,
                    },
                    c => s.push(c),
                }
            }
            return Err((start, "unterminated string".into()));
        }
        for op in OPS {
            if src[i..].starts_with(op) {
                i += op.len();
                out.push((start, Tok::Op(op)));
                continue 'outer;
            }
        }
        return Err((start, format!("unexpected character `{}`", &src[i..].chars().next().unwrap_or(' '))));
    }
    Ok(out)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    In,
}

impl BinOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "&&",
            BinOp::Or => "||",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::In => "in",
        }
    }
}

/// A constraint expression the engine can evaluate without Rhai.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Lit(Value),
    /// A field of the fact being matched.
    Field(Sym),
    /// A field of an earlier fact binding (index into the rule's bindings).
    BoundField(usize, Sym),
    /// The value of an earlier binding (an aggregate result or a whole fact).
    Bound(usize),
    /// `x.field` on a map value.
    Member(Box<Expr>, Sym),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    Array(Vec<Expr>),
}

/// What an identifier in a constraint may refer to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingKind {
    Fact,
    Value,
}

/// Resolves names while parsing a constraint.
pub trait Scope {
    /// Index and kind of a binding visible at this point of the rule.
    fn binding(&self, name: &str) -> Option<(usize, BindingKind)>;
    /// Whether bare identifiers name fields of a current fact (pattern
    /// constraints) or nothing (a `test` condition).
    fn has_current_fact(&self) -> bool;
}

/// Why a constraint cannot be evaluated natively (then Rhai takes it).
#[derive(Debug)]
pub struct Unsupported;

struct Parser<'a, S> {
    toks: &'a [(usize, Tok)],
    i: usize,
    scope: &'a S,
    /// Nesting so far: deeper than `MAX_NESTING` is left to Rhai, whose
    /// parser has a limit of its own (a constraint nested thousands deep
    /// must not overflow the stack of whoever compiles it).
    depth: u32,
}

const MAX_NESTING: u32 = 64;

pub fn parse(src: &str, scope: &impl Scope) -> Result<Expr, Unsupported> {
    let toks = tokenize(src).map_err(|_| Unsupported)?;
    let mut p = Parser { toks: &toks, i: 0, scope, depth: 0 };
    let e = p.expr(0)?;
    if p.i != toks.len() {
        return Err(Unsupported);
    }
    Ok(e)
}

fn binop(t: &Tok) -> Option<(BinOp, u8)> {
    Some(match t {
        Tok::Op("||") => (BinOp::Or, 1),
        Tok::Op("&&") => (BinOp::And, 2),
        Tok::Op("==") => (BinOp::Eq, 3),
        Tok::Op("!=") => (BinOp::Ne, 3),
        Tok::Op("<") => (BinOp::Lt, 4),
        Tok::Op("<=") => (BinOp::Le, 4),
        Tok::Op(">") => (BinOp::Gt, 4),
        Tok::Op(">=") => (BinOp::Ge, 4),
        Tok::Ident(s) if s == "in" => (BinOp::In, 4),
        Tok::Op("+") => (BinOp::Add, 5),
        Tok::Op("-") => (BinOp::Sub, 5),
        Tok::Op("*") => (BinOp::Mul, 6),
        Tok::Op("/") => (BinOp::Div, 6),
        Tok::Op("%") => (BinOp::Rem, 6),
        _ => return None,
    })
}

impl<S: Scope> Parser<'_, S> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|t| &t.1)
    }

    fn next(&mut self) -> Option<&Tok> {
        self.i += 1;
        self.toks.get(self.i - 1).map(|t| &t.1)
    }

    fn expect(&mut self, op: &str) -> Result<(), Unsupported> {
        match self.next() {
            Some(Tok::Op(o)) if *o == op => Ok(()),
            _ => Err(Unsupported),
        }
    }

    fn expr(&mut self, min: u8) -> Result<Expr, Unsupported> {
        self.depth += 1;
        let e = self.expr_inner(min);
        self.depth -= 1;
        e
    }

    fn expr_inner(&mut self, min: u8) -> Result<Expr, Unsupported> {
        if self.depth > MAX_NESTING {
            return Err(Unsupported);
        }
        let mut lhs = self.unary()?;
        // `a + a + a ...` builds a tree as deep as the chain is long, which
        // evaluating and dropping walk recursively: a chain counts as
        // nesting (found by the property tests: 50,000 terms overflowed a
        // 2 MiB stack).
        let mut chain = 0;
        while let Some((op, prec)) = self.peek().and_then(binop) {
            if prec < min {
                break;
            }
            chain += 1;
            if self.depth + chain > MAX_NESTING {
                return Err(Unsupported);
            }
            self.i += 1;
            let rhs = self.expr(prec + 1)?;
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Expr, Unsupported> {
        self.depth += 1;
        let e = self.unary_inner();
        self.depth -= 1;
        e
    }

    fn unary_inner(&mut self) -> Result<Expr, Unsupported> {
        if self.depth > MAX_NESTING {
            return Err(Unsupported);
        }
        match self.peek() {
            Some(Tok::Op("!")) => {
                self.i += 1;
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            Some(Tok::Op("-")) => {
                self.i += 1;
                Ok(match self.unary()? {
                    Expr::Lit(Value::Int(i)) => Expr::Lit(Value::Int(-i)),
                    Expr::Lit(Value::Float(f)) => Expr::Lit(Value::Float(-f)),
                    e => Expr::Neg(Box::new(e)),
                })
            }
            _ => self.postfix(),
        }
    }

    fn postfix(&mut self) -> Result<Expr, Unsupported> {
        let mut e = self.primary()?;
        let mut chain = 0;
        while let Some(Tok::Op(".")) = self.peek() {
            chain += 1;
            if self.depth + chain > MAX_NESTING {
                return Err(Unsupported);
            }
            self.i += 1;
            let Some(Tok::Ident(name)) = self.next() else {
                return Err(Unsupported);
            };
            let name = Sym::new(name);
            if let Some(Tok::Op("(")) = self.peek() {
                return Err(Unsupported); // method call: Rhai
            }
            e = match e {
                Expr::Bound(i) => Expr::BoundField(i, name),
                e => Expr::Member(Box::new(e), name),
            };
        }
        if let Some(Tok::Op("(" | "[")) = self.peek() {
            return Err(Unsupported);
        }
        Ok(e)
    }

    fn primary(&mut self) -> Result<Expr, Unsupported> {
        let tok = self.next().cloned().ok_or(Unsupported)?;
        Ok(match tok {
            Tok::Int(i) => Expr::Lit(Value::Int(i)),
            Tok::Float(f) => Expr::Lit(Value::Float(f)),
            Tok::Str(s) => Expr::Lit(Value::str(&s)),
            Tok::Ident(id) => match id.as_str() {
                "true" => Expr::Lit(Value::Bool(true)),
                "false" => Expr::Lit(Value::Bool(false)),
                "this" if self.scope.has_current_fact() => {
                    self.expect(".")?;
                    let Some(Tok::Ident(f)) = self.next().cloned() else {
                        return Err(Unsupported);
                    };
                    Expr::Field(Sym::new(&f))
                }
                _ => {
                    let followed_by_dot = matches!(self.peek(), Some(Tok::Op(".")));
                    match self.scope.binding(&id) {
                        Some((i, BindingKind::Value)) => Expr::Bound(i),
                        Some((i, BindingKind::Fact)) if followed_by_dot || !self.scope.has_current_fact() => {
                            Expr::Bound(i)
                        }
                        _ if self.scope.has_current_fact() => Expr::Field(Sym::new(&id)),
                        _ => return Err(Unsupported),
                    }
                }
            },
            Tok::Op("(") => {
                let e = self.expr(0)?;
                self.expect(")")?;
                e
            }
            Tok::Op("[") => {
                let mut items = Vec::new();
                if let Some(Tok::Op("]")) = self.peek() {
                    self.i += 1;
                    return Ok(Expr::Array(items));
                }
                loop {
                    items.push(self.expr(0)?);
                    match self.next() {
                        Some(Tok::Op(",")) => continue,
                        Some(Tok::Op("]")) => break,
                        _ => return Err(Unsupported),
                    }
                }
                // A literal list (`label in ["+", "-"]`) is built once, not
                // on every test.
                if items.iter().all(|i| matches!(i, Expr::Lit(_))) {
                    let values = items.into_iter().map(|i| if let Expr::Lit(v) = i { v } else { unreachable!() });
                    return Ok(Expr::Lit(Value::Array(Arc::new(values.collect()))));
                }
                Expr::Array(items)
            }
            _ => return Err(Unsupported),
        })
    }
}

/// The Rhai variable holding the fact being matched (`this` is taken by Rhai).
pub const CURRENT: &str = "__it";

/// Rewrites a constraint into a Rhai expression: bare field names of the
/// current fact (and `this`) become `__it.field`. Returns `None` if the text does not
/// tokenize (then it is handed to Rhai unchanged).
pub fn rewrite_for_rhai(src: &str, scope: &impl Scope) -> Option<String> {
    rewrite_with_offsets(src, scope).map(|r| r.0)
}

/// Like `rewrite_for_rhai`, also returning the offsets (in the original
/// text) where `this.` was inserted, to map error positions back.
pub fn rewrite_with_offsets(src: &str, scope: &impl Scope) -> Option<(String, Vec<usize>)> {
    let toks = tokenize(src).ok()?;
    let mut inserted = Vec::new();
    let mut out = String::with_capacity(src.len() + 16);
    let mut last = 0;
    for (k, (off, tok)) in toks.iter().enumerate() {
        let Tok::Ident(id) = tok else { continue };
        let prev_dot = k > 0 && toks[k - 1].1 == Tok::Op(".");
        let next = toks.get(k + 1).map(|t| &t.1);
        let is_call = matches!(next, Some(Tok::Op("(")));
        let is_key = matches!(next, Some(Tok::Op(":")));
        if id == "this" && !prev_dot && scope.has_current_fact() {
            // `this` is a Rhai keyword; the current fact is `__it` (same length).
            out.push_str(&src[last..*off]);
            out.push_str(CURRENT);
            last = *off + 4;
            continue;
        }
        if prev_dot || is_call || is_key || is_keyword(id) || !scope.has_current_fact() {
            continue;
        }
        let field = match scope.binding(id) {
            Some((_, BindingKind::Value)) => false,
            Some((_, BindingKind::Fact)) => !matches!(next, Some(Tok::Op("."))),
            None => true,
        };
        if field {
            out.push_str(&src[last..*off]);
            out.push_str(CURRENT);
            out.push('.');
            inserted.push(*off);
            last = *off;
        }
    }
    out.push_str(&src[last..]);
    Some((out, inserted))
}

/// Identifiers of an expression that are not member names (after `.`).
pub fn free_identifiers(src: &str) -> Option<Vec<String>> {
    let toks = tokenize(src).ok()?;
    Some(
        toks.iter()
            .enumerate()
            .filter_map(|(k, (_, t))| match t {
                Tok::Ident(id) if !(k > 0 && toks[k - 1].1 == Tok::Op(".")) => Some(id.clone()),
                _ => None,
            })
            .collect(),
    )
}

pub(crate) fn is_keyword(id: &str) -> bool {
    matches!(
        id,
        "true"
            | "false"
            | "this"
            | "in"
            | "if"
            | "else"
            | "let"
            | "const"
            | "fn"
            | "return"
            | "for"
            | "while"
            | "loop"
            | "break"
            | "continue"
            | "switch"
            | "do"
            | "until"
            | "throw"
            | "try"
            | "catch"
    )
}

/// Values the native evaluator reads: the current fact and the bindings.
/// Values are lent where they can be, so comparing fields clones nothing.
pub trait Env {
    fn field(&self, name: Sym) -> Option<Cow<'_, Value>>;
    fn bound_field(&self, binding: usize, name: Sym) -> Option<Cow<'_, Value>>;
    fn bound(&self, binding: usize) -> Cow<'_, Value>;
}

#[derive(Debug, Clone, PartialEq)]
pub struct EvalError(pub String);

static NULL: Value = Value::Null;

impl Expr {
    /// Appends a canonical key of the expression: two expressions write the
    /// same bytes exactly when they are the same expression, literals
    /// compared as `Value::write_key` does (`n / 2` is not `n / 2.0`). What
    /// shares alpha tests compares: hashing a key is linear in its size,
    /// where printing expressions and comparing the text was not.
    pub fn write_key(&self, out: &mut Vec<u8>) {
        match self {
            Expr::Lit(v) => {
                out.push(0);
                v.write_key(out);
            }
            Expr::Field(f) => {
                out.push(1);
                f.write_key(out);
            }
            Expr::BoundField(b, f) => {
                out.push(2);
                out.extend_from_slice(&(*b as u64).to_le_bytes());
                f.write_key(out);
            }
            Expr::Bound(b) => {
                out.push(3);
                out.extend_from_slice(&(*b as u64).to_le_bytes());
            }
            Expr::Member(e, f) => {
                out.push(4);
                f.write_key(out);
                e.write_key(out);
            }
            Expr::Not(e) => {
                out.push(5);
                e.write_key(out);
            }
            Expr::Neg(e) => {
                out.push(6);
                e.write_key(out);
            }
            Expr::Bin(op, a, b) => {
                out.extend_from_slice(&[7, *op as u8]);
                a.write_key(out);
                b.write_key(out);
            }
            Expr::Array(items) => {
                out.push(8);
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for e in items {
                    e.write_key(out);
                }
            }
        }
    }

    /// Evaluates to a value. A missing field is `null`; type mismatches in
    /// comparisons are `false` (a constraint that cannot hold), while
    /// arithmetic on non-numbers is an error.
    pub fn eval(&self, env: &impl Env) -> Result<Value, EvalError> {
        Ok(self.eval_ref(env)?.into_owned())
    }

    /// Like `eval`, borrowing the result from the expression or the
    /// environment when it is a literal, a field or a binding.
    pub fn eval_ref<'a, E: Env>(&'a self, env: &'a E) -> Result<Cow<'a, Value>, EvalError> {
        Ok(match self {
            Expr::Lit(v) => Cow::Borrowed(v),
            Expr::Field(f) => env.field(*f).unwrap_or(Cow::Borrowed(&NULL)),
            Expr::BoundField(b, f) => env.bound_field(*b, *f).unwrap_or(Cow::Borrowed(&NULL)),
            Expr::Bound(b) => env.bound(*b),
            Expr::Member(e, f) => match e.eval_ref(env)? {
                Cow::Borrowed(Value::Map(m)) => m.get(&*f.name()).map_or(Cow::Borrowed(&NULL), Cow::Borrowed),
                Cow::Owned(Value::Map(m)) => Cow::Owned(m.get(&*f.name()).cloned().unwrap_or(Value::Null)),
                _ => Cow::Borrowed(&NULL),
            },
            Expr::Not(e) => Cow::Owned(Value::Bool(!e.eval_ref(env)?.is_truthy())),
            Expr::Neg(e) => Cow::Owned(match &*e.eval_ref(env)? {
                Value::Int(i) => Value::Int(i.wrapping_neg()),
                Value::Float(f) => Value::Float(-f),
                v => return Err(EvalError(format!("cannot negate {}", v.type_name()))),
            }),
            Expr::Array(items) => {
                Cow::Owned(Value::Array(Arc::new(items.iter().map(|e| e.eval(env)).collect::<Result<_, _>>()?)))
            }
            Expr::Bin(op, a, b) => {
                let v = match op {
                    BinOp::And => Value::Bool(a.eval_ref(env)?.is_truthy() && b.eval_ref(env)?.is_truthy()),
                    BinOp::Or => Value::Bool(a.eval_ref(env)?.is_truthy() || b.eval_ref(env)?.is_truthy()),
                    _ => binary(*op, &*a.eval_ref(env)?, &*b.eval_ref(env)?)?,
                };
                Cow::Owned(v)
            }
        })
    }

    /// The expression with every operand replaced by its value in `env`,
    /// operators kept: what `chunk.status == "pending"` was when it failed
    /// (`"encoding" == "pending"`). An operand that fails to evaluate shows
    /// its error. Explanations only: this allocates freely.
    pub fn with_values(&self, env: &impl Env) -> String {
        let value = |e: &Expr| match e.eval_ref(env) {
            Ok(v) => v.to_string(),
            Err(e) => format!("<{}>", e.0),
        };
        let nested = |e: &Expr| match e {
            Expr::Bin(..) => format!("({})", e.with_values(env)),
            _ => e.with_values(env),
        };
        match self {
            Expr::Bin(op, a, b) => format!("{} {} {}", nested(a), op.symbol(), nested(b)),
            Expr::Not(e) => format!("!{}", nested(e)),
            Expr::Array(items) => {
                format!("[{}]", items.iter().map(|i| i.with_values(env)).collect::<Vec<_>>().join(", "))
            }
            _ => value(self),
        }
    }

    /// Evaluates as a condition: anything but `true` fails it.
    pub fn test(&self, env: &impl Env) -> Result<bool, EvalError> {
        Ok(self.eval_ref(env)?.is_truthy())
    }

    /// Whether the expression reads bindings (else it depends on the current
    /// fact alone and is an alpha test).
    pub fn uses_bindings(&self) -> bool {
        match self {
            Expr::Lit(_) | Expr::Field(_) => false,
            Expr::BoundField(..) | Expr::Bound(_) => true,
            Expr::Member(e, _) | Expr::Not(e) | Expr::Neg(e) => e.uses_bindings(),
            Expr::Bin(_, a, b) => a.uses_bindings() || b.uses_bindings(),
            Expr::Array(items) => items.iter().any(Expr::uses_bindings),
        }
    }

    /// Largest binding index read, for ordering checks.
    pub fn max_binding(&self) -> Option<usize> {
        match self {
            Expr::Lit(_) | Expr::Field(_) => None,
            Expr::BoundField(b, _) | Expr::Bound(b) => Some(*b),
            Expr::Member(e, _) | Expr::Not(e) | Expr::Neg(e) => e.max_binding(),
            Expr::Bin(_, a, b) => a.max_binding().max(b.max_binding()),
            Expr::Array(items) => items.iter().filter_map(Expr::max_binding).max(),
        }
    }

    /// Fields of the current fact read by this expression.
    pub fn fields(&self, out: &mut Vec<Sym>) {
        match self {
            Expr::Field(f) => out.push(*f),
            Expr::Member(e, _) | Expr::Not(e) | Expr::Neg(e) => e.fields(out),
            Expr::Bin(_, a, b) => {
                a.fields(out);
                b.fields(out);
            }
            Expr::Array(items) => items.iter().for_each(|e| e.fields(out)),
            _ => {}
        }
    }
}

/// Applies a binary operator other than `&&` and `||` to two values.
pub fn binary(op: BinOp, x: &Value, y: &Value) -> Result<Value, EvalError> {
    match op {
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => arith(op, x, y),
        BinOp::And | BinOp::Or => unreachable!("short-circuited"),
        _ => Ok(Value::Bool(compare(op, x, y))),
    }
}

/// Applies a comparison (`==`, `!=`, `<`, `<=`, `>`, `>=`, `in`); values of
/// unordered types compare false.
pub fn compare(op: BinOp, x: &Value, y: &Value) -> bool {
    use std::cmp::Ordering::*;
    let cmp = || x.partial_cmp_value(y);
    match op {
        BinOp::Eq => x == y,
        BinOp::Ne => x != y,
        BinOp::Lt => cmp() == Some(Less),
        BinOp::Le => matches!(cmp(), Some(Less | Equal)),
        BinOp::Gt => cmp() == Some(Greater),
        BinOp::Ge => matches!(cmp(), Some(Greater | Equal)),
        BinOp::In => match y {
            Value::Array(a) => a.contains(x),
            Value::Str(s) => x.as_str().is_some_and(|x| s.contains(x)),
            Value::Map(m) => x.as_str().is_some_and(|x| m.contains_key(x)),
            _ => false,
        },
        _ => unreachable!("not a comparison"),
    }
}

fn arith(op: BinOp, x: &Value, y: &Value) -> Result<Value, EvalError> {
    match (x, y) {
        (Value::Int(a), Value::Int(b)) => {
            let r = match op {
                BinOp::Add => a.checked_add(*b),
                BinOp::Sub => a.checked_sub(*b),
                BinOp::Mul => a.checked_mul(*b),
                BinOp::Div => a.checked_div(*b),
                _ => a.checked_rem(*b),
            };
            r.map(Value::Int).ok_or_else(|| EvalError("integer overflow or division by zero".into()))
        }
        (Value::Str(a), Value::Str(b)) if op == BinOp::Add => Ok(Value::Str(Arc::from(format!("{a}{b}")))),
        _ => match (x.as_f64(), y.as_f64()) {
            (Some(a), Some(b)) => Ok(Value::Float(match op {
                BinOp::Add => a + b,
                BinOp::Sub => a - b,
                BinOp::Mul => a * b,
                BinOp::Div => a / b,
                _ => a % b,
            })),
            _ => Err(EvalError(format!("cannot apply arithmetic to {} and {}", x.type_name(), y.type_name()))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct S;
    impl Scope for S {
        fn binding(&self, name: &str) -> Option<(usize, BindingKind)> {
            match name {
                "job" => Some((0, BindingKind::Fact)),
                "n" => Some((1, BindingKind::Value)),
                _ => None,
            }
        }
        fn has_current_fact(&self) -> bool {
            true
        }
    }

    fn check(src: &str, expect: expect_test::Expect) {
        let got = match parse(src, &S) {
            Ok(e) => format!("{e:?}"),
            Err(_) => format!("rhai: {}", rewrite_for_rhai(src, &S).unwrap_or_else(|| src.to_string())),
        };
        expect.assert_eq(&got);
    }

    #[test]
    fn field_against_binding_is_a_join() {
        check(r#"job == job.id"#, expect_test::expect![[r#"Bin(Eq, Field(job), BoundField(0, id))"#]]);
    }

    #[test]
    fn precedence() {
        check(
            r#"a + 1 * 2 > 3 && !b || c in [1, 2]"#,
            expect_test::expect!["Bin(Or, Bin(And, Bin(Gt, Bin(Add, Field(a), Bin(Mul, Lit(1), Lit(2))), Lit(3)), Not(Field(b))), Bin(In, Field(c), Lit([1,2])))"],
        );
    }

    #[test]
    fn value_bindings_are_read_bare() {
        check("count == n", expect_test::expect![[r#"Bin(Eq, Field(count), Bound(1))"#]]);
    }

    #[test]
    fn method_calls_fall_back_to_rhai_with_fields_rewritten() {
        check(
            r#"name.len() > job.limit && tags.contains("x")"#,
            expect_test::expect![[r#"rhai: __it.name.len() > job.limit && __it.tags.contains("x")"#]],
        );
    }

    fn key(src: &str) -> Vec<u8> {
        let mut out = Vec::new();
        parse(src, &S).unwrap().write_key(&mut out);
        out
    }

    #[test]
    fn keys_are_equal_exactly_for_the_same_expression() {
        assert_eq!(key("n / 2 == 1"), key("n/2  ==  1"));
        assert_eq!(key("a in [1, \"x\"]"), key("(a in [1,\"x\"])"));
        // Equal values, other expressions: `2` and `2.0` divide differently.
        assert_ne!(key("n / 2 == 1"), key("n / 2.0 == 1"));
        assert_ne!(key("n == 0.0"), key("n == -0.0"));
        assert_ne!(key("n == 1"), key("n == true"));
        assert_ne!(key("a == \"ab\" && b"), key("a == \"a\" && bb"));
        assert_ne!(key("a < b"), key("b < a"));
        assert_ne!(key("job == job.id"), key("job == job.ref"));
        assert_ne!(key("[a, b] == c"), key("[a] == c"));
    }

    #[test]
    fn long_chains_count_as_nesting() {
        // Left to Rhai, whose parser has its own limits.
        let long = |sep: &str| format!("a{}", sep.repeat(50_000));
        for src in [long(" + 1"), long(" && a"), long(".x"), long(" == 1 || a")] {
            assert!(parse(&src, &S).is_err(), "{}", &src[..20]);
        }
        assert!(parse(&format!("a{}", " + 1".repeat(40)), &S).is_ok());
        assert!(parse(&format!("a{}", ".x".repeat(40)), &S).is_ok());
    }

    #[test]
    fn comparisons_across_types_fail_quietly() {
        struct E;
        impl Env for E {
            fn field(&self, _: Sym) -> Option<Cow<'_, Value>> {
                Some(Cow::Owned(Value::str("x")))
            }
            fn bound_field(&self, _: usize, _: Sym) -> Option<Cow<'_, Value>> {
                None
            }
            fn bound(&self, _: usize) -> Cow<'_, Value> {
                Cow::Owned(Value::Null)
            }
        }
        let e = parse("a < 3", &S).unwrap();
        assert_eq!(e.test(&E), Ok(false));
        let e = parse("a - 3 > 0", &S).unwrap();
        assert!(e.test(&E).is_err());
    }
}
