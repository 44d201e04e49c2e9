//! Actions the engine runs without Rhai.
//!
//! Most actions only change facts: `insert("Type", #{..})`, `modify(f, #{..})`
//! and `retract(f)`, with values that are literals, fields of bound facts and
//! arithmetic. Entering Rhai for those (a scope, a map per bound fact, a
//! function lookup per call) costs more than the matching that fired the
//! rule. Such an action is translated, from its compiled Rhai AST, into steps
//! over the native expressions of constraints; anything else stays in Rhai.
//!
//! The steps produce the same effects as the script would. Where the native
//! evaluator could differ from Rhai (an arithmetic error, a value past a
//! sandbox limit, a fact no longer there), the engine runs the Rhai script
//! instead, so errors and their messages are Rhai's.

use rhai::{Dynamic, Expr as RExpr, Stmt};

use crate::expr::{BinOp, BindingKind, Expr};
use crate::sandbox::{from_dynamic, Script};
use crate::value::{Sym, Value};

/// One effect of a native action.
#[derive(Clone, Debug)]
pub enum Step {
    /// Fields in key order, as a Rhai map literal iterates them.
    Insert {
        ty: Sym,
        fields: Vec<(Sym, Expr)>,
    },
    Modify {
        slot: usize,
        changes: Vec<(Sym, Expr)>,
    },
    Retract {
        slot: usize,
    },
}

/// An action made only of steps.
#[derive(Clone, Debug)]
pub struct NativeAction {
    pub steps: Vec<Step>,
}

/// Translates `script` (an action over the bindings `vars`: name, slot and
/// kind) if every statement is a step; `None` keeps it in Rhai.
pub fn translate(script: &Script, vars: &[(&str, usize, BindingKind)]) -> Option<NativeAction> {
    let ast = script.ast();
    if ast.iter_functions().next().is_some() {
        return None;
    }
    let mut steps = Vec::new();
    for stmt in ast.statements() {
        let call = match stmt {
            Stmt::Noop(_) => continue,
            Stmt::FnCall(f, _) => f,
            Stmt::Expr(e) => match &**e {
                RExpr::FnCall(f, _) => f,
                _ => return None,
            },
            _ => return None,
        };
        if call.op_token.is_some() {
            return None;
        }
        let fact_slot = |e: &RExpr| match e {
            RExpr::Variable(v, _, _) => {
                vars.iter().find(|x| x.0 == v.1.as_str() && x.2 == BindingKind::Fact).map(|x| x.1)
            }
            _ => None,
        };
        let step = match (call.name.as_str(), &call.args[..]) {
            ("insert", [RExpr::StringConstant(ty, _), map]) if crate::value::valid_type_name(ty) => {
                Step::Insert { ty: Sym::new(ty), fields: fields(map, vars)? }
            }
            ("modify", [fact, map]) => Step::Modify { slot: fact_slot(fact)?, changes: fields(map, vars)? },
            ("retract", [fact]) => Step::Retract { slot: fact_slot(fact)? },
            _ => return None,
        };
        steps.push(step);
    }
    Some(NativeAction { steps })
}

/// The entries of a map literal, sorted by key; `None` if a key is reserved
/// (`_id`, `_type` and the rest are Rhai's to check or ignore).
fn fields(e: &RExpr, vars: &[(&str, usize, BindingKind)]) -> Option<Vec<(Sym, Expr)>> {
    let mut out: Vec<(String, Expr)> = match e {
        RExpr::Map(m, _) => {
            m.0.iter().map(|(k, v)| Some((k.name.to_string(), expr(v, vars)?))).collect::<Option<_>>()?
        }
        RExpr::DynamicConstant(d, _) if d.is_map() => {
            let m = d.read_lock::<rhai::Map>()?;
            m.iter().map(|(k, v)| Some((k.to_string(), Expr::Lit(constant(v)?)))).collect::<Option<_>>()?
        }
        _ => return None,
    };
    if out.iter().any(|(k, _)| k.starts_with('_')) {
        return None;
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    if out.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    Some(out.into_iter().map(|(k, v)| (Sym::new(&k), v)).collect())
}

fn constant(d: &Dynamic) -> Option<Value> {
    if d.is_char() {
        return None;
    }
    from_dynamic(d).ok()
}

/// A value expression: literals, `fact.field`, value bindings, arrays and
/// `+ - * / %`. Comparisons and calls stay in Rhai, whose rules for mixed
/// types differ from the matcher's.
fn expr(e: &RExpr, vars: &[(&str, usize, BindingKind)]) -> Option<Expr> {
    Some(match e {
        RExpr::IntegerConstant(i, _) => Expr::Lit(Value::Int(*i)),
        RExpr::FloatConstant(f, _) => Expr::Lit(Value::Float(**f)),
        RExpr::BoolConstant(b, _) => Expr::Lit(Value::Bool(*b)),
        RExpr::StringConstant(s, _) => Expr::Lit(Value::str(s)),
        RExpr::Unit(_) => Expr::Lit(Value::Null),
        RExpr::DynamicConstant(d, _) => Expr::Lit(constant(d)?),
        RExpr::Array(items, _) => Expr::Array(items.iter().map(|i| expr(i, vars)).collect::<Option<_>>()?),
        RExpr::Variable(v, _, _) => match vars.iter().find(|x| x.0 == v.1.as_str())? {
            (_, slot, BindingKind::Value) => Expr::Bound(*slot),
            _ => return None, // a whole fact: Rhai's map of it
        },
        RExpr::Dot(b, _, _) => {
            let (RExpr::Variable(v, _, _), RExpr::Property(p, _)) = (&b.lhs, &b.rhs) else { return None };
            let name = p.2.as_str();
            if name.starts_with('_') {
                return None;
            }
            // A value binding may not be a map, where Rhai raises an error.
            let (_, slot, _) = vars.iter().find(|x| x.0 == v.1.as_str() && x.2 == BindingKind::Fact)?;
            Expr::BoundField(*slot, Sym::new(name))
        }
        RExpr::FnCall(f, _) if f.op_token.is_some() => {
            let op = match f.name.as_str() {
                "+" => BinOp::Add,
                "-" => BinOp::Sub,
                "*" => BinOp::Mul,
                "/" => BinOp::Div,
                "%" => BinOp::Rem,
                _ => return None,
            };
            match &f.args[..] {
                [a, b] => Expr::Bin(op, Box::new(expr(a, vars)?), Box::new(expr(b, vars)?)),
                [a] if op == BinOp::Sub => Expr::Neg(Box::new(expr(a, vars)?)),
                _ => return None,
            }
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Limits;
    use crate::sandbox::Sandbox;

    fn native(code: &str) -> Option<NativeAction> {
        let sb = Sandbox::new(&Limits::default());
        let script = sb.compile(code, &["a", "n"], false).expect("compiles");
        translate(&script, &[("a", 0, BindingKind::Fact), ("n", 1, BindingKind::Value)])
    }

    #[test]
    fn fact_changes_are_native() {
        let a = native(r#"insert("Seat", #{ z: a.x + 1, b: "s", c: [1, n] }); modify(a, #{ x: -a.x }); retract(a);"#)
            .expect("native");
        let [Step::Insert { ty, fields }, Step::Modify { slot: 0, changes }, Step::Retract { slot: 0 }] = &a.steps[..]
        else {
            panic!("{a:?}")
        };
        assert_eq!(ty.name().as_ref(), "Seat");
        let keys: Vec<String> = fields.iter().map(|f| f.0.name().to_string()).collect();
        assert_eq!(keys, ["b", "c", "z"], "in Rhai's map order");
        assert_eq!(changes.len(), 1);
        assert!(native(r#"modify(a, #{ done: true });"#).is_some(), "a constant map");
    }

    #[test]
    fn anything_else_stays_in_rhai() {
        for code in [
            r#"log("x");"#,
            r#"let b = a.x; modify(a, #{ x: b });"#,
            r#"modify(a, #{ x: a.x > 1 });"#,
            r#"modify(a, #{ x: a.name.len() });"#,
            r#"modify(a, #{ _id: 3 });"#,
            r#"modify(a, #{ x: a._id });"#,
            r#"modify(n, #{ x: 1 });"#,
            r#"modify(a, #{ x: n.y });"#,
            r#"insert("lower", #{ x: 1 });"#,
            r#"insert("T", #{ x: a });"#,
            r#"if a.x > 1 { retract(a); }"#,
            r#"fn f() { 1 } modify(a, #{ x: f() });"#,
        ] {
            assert!(native(code).is_none(), "{code}");
        }
    }
}
