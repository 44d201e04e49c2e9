//! The Rhai sandbox: the one place that builds a Rhai engine, with its limits
//! and the builtins of rule sections (`insert`, `modify`, `retract`, `call`,
//! `complete`, `fail`, `log`).
//!
//! Builtins do not touch working memory: they record `Effect`s, which the
//! engine applies only if the whole section ran without error. That is what
//! makes a failing section change nothing.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use rhai::{Dynamic, Engine, EvalAltResult, ImmutableString, Map, Position, Scope, AST};

use crate::diagnostic::{shown, Pos};
use crate::limits::Limits;
use crate::value::{Fields, Sym, Value};

/// What a rule section asked for, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Insert {
        id: u64,
        ty: Sym,
        fields: Fields,
    },
    Modify {
        id: u64,
        changes: Fields,
    },
    Retract {
        id: u64,
    },
    Call {
        function: String,
        args: Value,
        options: CallOptions,
    },
    Complete {
        result: Value,
    },
    Fail {
        reason: String,
    },
    Log {
        message: String,
    },
    /// A durable timer: when due, a fact of type `ty` with `fields` is
    /// inserted in a turn of its own.
    Timer {
        id: u64,
        due: Due,
        ty: Sym,
        fields: Fields,
    },
    CancelTimer {
        id: u64,
    },
    /// A named signal with a payload, routed by the server after commit.
    Emit {
        name: String,
        payload: Value,
    },
    /// Starts a workflow of another pack; it answers like a call.
    StartChild {
        pack: String,
        facts: Value,
        options: CallOptions,
    },
}

/// When a timer is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Milliseconds after the turn's time.
    After(u64),
    /// Milliseconds since the Unix epoch.
    At(u64),
}

/// The first ids a section hands out (`insert` returns fact ids, `after`
/// and `at` timer ids), so scripts can refer to what they just made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextIds {
    pub fact: u64,
    pub timer: u64,
}

#[derive(Clone, Debug, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct CallOptions {
    /// Higher runs first.
    pub priority: i64,
    /// Replaces the manifest's timeout for this call, in milliseconds.
    pub timeout_ms: Option<u64>,
}

/// A section failed at run time.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ScriptError {
    pub message: String,
    /// Position inside the script (1-based), when Rhai knows it.
    pub pos: Option<Pos>,
    /// The error came from a sandbox limit (operations, depth, sizes).
    pub limit: bool,
}

/// A value handed to a script: a fact (a map with `_id` and `_type`) or a
/// plain value. Keeps Rhai's types out of the engine's signatures.
#[derive(Clone, Debug)]
pub struct ScriptValue(Dynamic);

impl ScriptValue {
    pub fn fact(id: u64, ty: Sym, fields: &Fields) -> ScriptValue {
        let mut m = Map::new();
        for (k, v) in fields.iter() {
            m.insert(k.with_name(|n| n.into()), to_dynamic(v));
        }
        m.insert("_id".into(), Dynamic::from_int(id as i64));
        m.insert("_type".into(), Dynamic::from(ty.with_name(|n| ImmutableString::from(n))));
        ScriptValue(Dynamic::from_map(m))
    }

    pub fn value(v: &Value) -> ScriptValue {
        ScriptValue(to_dynamic(v))
    }
}

impl Script {
    pub(crate) fn ast(&self) -> &AST {
        &self.ast
    }
}

/// A compiled section or constraint, with the names of the variables it
/// expects, in order.
#[derive(Clone, Debug)]
pub struct Script {
    ast: Arc<AST>,
    pub vars: Arc<[String]>,
    /// Whether this is an expression (constraint) rather than a block.
    pub expression: bool,
}

/// A compile error inside one script, with the position relative to it.
#[derive(Debug, Clone)]
pub struct CompileError {
    pub pos: Pos,
    pub message: String,
    pub kind: CompileErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileErrorKind {
    Syntax,
    UndefinedVariable,
    UnknownFunction,
}

struct Buffer {
    effects: Vec<Effect>,
    next: NextIds,
}

thread_local! {
    static BUFFER: RefCell<Option<Buffer>> = const { RefCell::new(None) };
}

fn with_buffer<T>(f: impl FnOnce(&mut Buffer) -> T) -> Result<T, Box<EvalAltResult>> {
    BUFFER.with(|b| match b.borrow_mut().as_mut() {
        Some(buf) => Ok(f(buf)),
        None => Err("this builtin is only available in action, reaction and error sections".into()),
    })
}

/// Names of the builtins scripts may call, besides Rhai's standard library.
pub const BUILTINS: &[&str] = &[
    "insert",
    "modify",
    "retract",
    "call",
    "complete",
    "fail",
    "log",
    "after",
    "at",
    "cancel_timer",
    "emit",
    "start_workflow",
];

/// The sandboxed Rhai engine of one pack.
pub struct Sandbox {
    engine: Engine,
    known_fns: rustc_hash::FxHashSet<String>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sandbox")
    }
}

impl Sandbox {
    pub fn new(limits: &Limits) -> Sandbox {
        let mut e = Engine::new();
        e.set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_depth)
            .set_max_expr_depths(64, 32)
            .set_max_string_size(limits.max_string_size)
            .set_max_array_size(limits.max_array_size)
            .set_max_map_size(limits.max_map_size)
            .set_strict_variables(true)
            .set_fail_on_invalid_map_property(false)
            // Scripts are parsed as written, then optimized (`compile`):
            // the checks of `schema_check` need map literals with their
            // keys' positions, which constant folding drops.
            .set_optimization_level(rhai::OptimizationLevel::None);
        // A turn always ends: past its deadline (or when its host stops),
        // the next operation of any script ends it.
        e.on_progress(|_| crate::budget::check().err().map(|e| Dynamic::from(e.to_string())));
        e.disable_symbol("eval");
        // Scripts cannot reach the outside world: no printing to our stdout.
        e.on_print(|_| {}).on_debug(|_, _, _| {});
        register_builtins(&mut e);
        let mut known_fns: rustc_hash::FxHashSet<String> = e
            .gen_fn_signatures(true)
            .into_iter()
            .filter_map(|s| s.split('(').next().map(|n| n.trim().to_string()))
            .collect();
        for k in ["print", "debug", "type_of", "is_def_var", "is_def_fn", "is_shared", "Fn", "call", "curry", "sleep"] {
            known_fns.insert(k.to_string());
        }
        known_fns.remove("sleep");
        Sandbox { engine: e, known_fns }
    }

    fn scope(vars: &[&str]) -> Scope<'static> {
        let mut s = Scope::new();
        for v in vars {
            s.push_dynamic(v.to_string(), Dynamic::UNIT);
        }
        s
    }

    /// Compiles a block (a section) or an expression (a constraint) with the
    /// variables in scope; checks undefined variables and unknown functions.
    pub fn compile(&self, code: &str, vars: &[&str], expression: bool) -> Result<Script, Vec<CompileError>> {
        self.compile_as_written(code, vars, expression).map(|(script, _)| script)
    }

    /// `compile`, also returning the script's AST as written (before
    /// optimization: positions of map keys, dead branches kept), for checks.
    pub(crate) fn compile_as_written(
        &self,
        code: &str,
        vars: &[&str],
        expression: bool,
    ) -> Result<(Script, AST), Vec<CompileError>> {
        let scope = Self::scope(vars);
        let code = rename_call(code);
        let code = code.as_ref();
        let res = if expression {
            self.engine.compile_expression_with_scope(&scope, code)
        } else {
            self.engine.compile_with_scope(&scope, code)
        };
        let ast = res.map_err(|e| {
            let kind = match e.err_type() {
                rhai::ParseErrorType::VariableUndefined(_) => CompileErrorKind::UndefinedVariable,
                _ => CompileErrorKind::Syntax,
            };
            let message = match e.err_type() {
                rhai::ParseErrorType::VariableUndefined(v) => format!("undefined variable `{v}`"),
                other => other.to_string(),
            };
            vec![CompileError { pos: pos(e.position()).unwrap_or(Pos::new(1, 1)), message, kind }]
        })?;
        let defined: rustc_hash::FxHashSet<String> = ast.iter_functions().map(|f| f.name.to_string()).collect();
        let mut errors = Vec::new();
        ast.walk(&mut |path| {
            if let Some((f, p)) = fn_call(path.last()) {
                let name = f.name.as_str();
                if f.op_token.is_none()
                    && !self.known_fns.contains(name)
                    && !defined.contains(name)
                    && !name.starts_with(|c: char| !c.is_alphabetic() && c != '_')
                {
                    errors.push(CompileError {
                        pos: pos(p).unwrap_or(Pos::new(1, 1)),
                        message: format!("unknown function `{name}`"),
                        kind: CompileErrorKind::UnknownFunction,
                    });
                }
            }
            true
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        let optimized = self.engine.optimize_ast(&scope, ast.clone(), rhai::OptimizationLevel::Simple);
        let script =
            Script { ast: Arc::new(optimized), vars: vars.iter().map(|s| s.to_string()).collect(), expression };
        Ok((script, ast))
    }

    /// Every `call("name", ...)` with a literal name in a script, with positions.
    pub fn called_functions(script: &Script) -> Vec<(String, Pos)> {
        let mut out = Vec::new();
        script.ast.walk(&mut |path| {
            if let Some((f, p)) = fn_call(path.last()) {
                if f.name == "Call" && !f.args.is_empty() {
                    if let rhai::Expr::StringConstant(s, at) = &f.args[0] {
                        out.push((s.to_string(), pos(*at).or(pos(p)).unwrap_or(Pos::new(1, 1))));
                    }
                }
            }
            true
        });
        out
    }

    /// Whether a script calls `start_workflow` (awaited like a function).
    pub fn starts_children(script: &Script) -> bool {
        let mut found = false;
        script.ast.walk(&mut |path| {
            if let Some((f, _)) = fn_call(path.last()) {
                found |= f.name == "start_workflow";
            }
            !found
        });
        found
    }

    fn run_scope(script: &Script, values: Vec<ScriptValue>) -> Scope<'static> {
        let mut scope = Scope::with_capacity(values.len());
        for (name, v) in script.vars.iter().zip(values) {
            scope.push_dynamic(name.clone(), v.0);
        }
        scope
    }

    /// Runs a section; returns its effects, or the error and no effects.
    pub fn run(&self, script: &Script, values: Vec<ScriptValue>, next: NextIds) -> Result<Vec<Effect>, ScriptError> {
        let mut scope = Self::run_scope(script, values);
        BUFFER.with(|b| *b.borrow_mut() = Some(Buffer { effects: Vec::new(), next }));
        let res = self.engine.run_ast_with_scope(&mut scope, &script.ast);
        let buf = BUFFER.with(|b| b.borrow_mut().take()).expect("buffer set above");
        res.map_err(script_error)?;
        Ok(buf.effects)
    }

    /// Evaluates an expression to a value (constraints, aggregate operands).
    pub fn eval(&self, script: &Script, values: Vec<ScriptValue>) -> Result<Value, ScriptError> {
        let mut scope = Self::run_scope(script, values);
        let d: Dynamic = self.engine.eval_ast_with_scope(&mut scope, &script.ast).map_err(script_error)?;
        from_dynamic(&d).map_err(|message| ScriptError { message, pos: None, limit: false })
    }
}

fn fn_call<'a>(node: Option<&'a rhai::ASTNode<'a>>) -> Option<(&'a rhai::FnCallExpr, Position)> {
    match node? {
        rhai::ASTNode::Expr(rhai::Expr::FnCall(f, p)) => Some((f, *p)),
        rhai::ASTNode::Stmt(rhai::Stmt::FnCall(f, p)) => Some((f, *p)),
        _ => None,
    }
}

/// `call` is a Rhai keyword (calling a function pointer), so the builtin is
/// registered as `Call` and free-standing `call(` in rule sections is renamed.
/// Same length, so every position in error messages stays right.
fn rename_call(code: &str) -> std::borrow::Cow<'_, str> {
    if !code.contains("call") {
        return code.into();
    }
    let b = code.as_bytes();
    let mut out = code.as_bytes().to_vec();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'"' | b'\'' | b'`') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'c' if code[i..].starts_with("call")
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b'.'))
                && code[i + 4..].trim_start().starts_with('(') =>
            {
                out[i] = b'C';
                i += 4;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    String::from_utf8(out).expect("ascii edit keeps utf-8").into()
}

fn pos(p: Position) -> Option<Pos> {
    Some(Pos::new(p.line()? as u32, p.position().unwrap_or(1) as u32))
}

#[allow(clippy::boxed_local)] // Rhai hands its errors over boxed
fn script_error(e: Box<EvalAltResult>) -> ScriptError {
    let limit = matches!(
        *e,
        EvalAltResult::ErrorTooManyOperations(..)
            | EvalAltResult::ErrorTerminated(..)
            | EvalAltResult::ErrorStackOverflow(..)
            | EvalAltResult::ErrorDataTooLarge(..)
            | EvalAltResult::ErrorTooManyVariables(..)
    );
    let p = pos(e.position());
    let mut message = match &*e {
        EvalAltResult::ErrorTooManyOperations(_) => {
            "too many operations (the sandbox limit `max_operations` was reached; is there an endless loop?)"
                .to_string()
        }
        EvalAltResult::ErrorStackOverflow(_) => {
            "call stack too deep (the sandbox limit `max_call_depth` was reached; is there an endless recursion?)"
                .to_string()
        }
        EvalAltResult::ErrorDataTooLarge(what, _) => format!("{what} exceeds the sandbox size limit"),
        EvalAltResult::ErrorRuntime(v, _) | EvalAltResult::ErrorTerminated(v, _) => v.to_string(),
        other => other.to_string(),
    };
    // Rhai appends its own "(line x, position y)"; we report positions separately.
    if let Some(i) = message.rfind(" (line ") {
        message.truncate(i);
    }
    ScriptError { message, pos: p, limit }
}

pub fn to_dynamic(v: &Value) -> Dynamic {
    match v {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Int(i) => Dynamic::from_int(*i),
        Value::Float(f) => Dynamic::from_float(*f),
        Value::Str(s) => Dynamic::from(ImmutableString::from(s.as_ref())),
        Value::Array(a) => Dynamic::from_array(a.iter().map(to_dynamic).collect()),
        Value::Map(m) => Dynamic::from_map(m.iter().map(|(k, v)| (k.as_ref().into(), to_dynamic(v))).collect()),
    }
}

/// Values nest at most this deep: as deep as JSON parsers accept, and far
/// below what would overflow a stack walking them (a script can build an
/// array of arrays a million deep within its size limits).
pub const MAX_VALUE_DEPTH: usize = 128;

pub fn from_dynamic(d: &Dynamic) -> Result<Value, String> {
    from_dynamic_at(d, 0)
}

fn from_dynamic_at(d: &Dynamic, depth: usize) -> Result<Value, String> {
    if d.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(b) = d.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(i) = d.as_int() {
        return Ok(Value::Int(i));
    }
    if let Ok(f) = d.as_float() {
        return Ok(Value::Float(f));
    }
    if let Ok(c) = d.as_char() {
        return Ok(Value::str(&c.to_string()));
    }
    if d.is_string() {
        return Ok(Value::Str(Arc::from(d.clone().into_immutable_string().map_err(|e| e.to_string())?.as_str())));
    }
    if (d.is_array() || d.is_map()) && depth >= MAX_VALUE_DEPTH {
        return Err(format!("the value nests deeper than {MAX_VALUE_DEPTH} levels"));
    }
    if d.is_array() {
        let a = d.read_lock::<rhai::Array>().ok_or("array is locked")?;
        let items = a.iter().map(|v| from_dynamic_at(v, depth + 1)).collect::<Result<_, _>>()?;
        return Ok(Value::Array(Arc::new(items)));
    }
    if d.is_map() {
        let m = d.read_lock::<Map>().ok_or("map is locked")?;
        let mut out = BTreeMap::new();
        for (k, v) in m.iter() {
            out.insert(Arc::from(k.as_str()), from_dynamic_at(v, depth + 1)?);
        }
        return Ok(Value::Map(Arc::new(out)));
    }
    Err(format!("a {} cannot be stored in a fact", d.type_name()))
}

fn fields_of(m: &Map, what: &str) -> Result<Fields, Box<EvalAltResult>> {
    let mut f = Fields::new();
    for (k, v) in m.iter() {
        if k.starts_with('_') {
            if k == "_id" || k == "_type" {
                continue;
            }
            return Err(format!("{what}: field `{k}` starts with `_`, which is reserved for the engine").into());
        }
        f.set(Sym::new(k), from_dynamic(v).map_err(|e| format!("{what}: field `{k}`: {e}"))?);
    }
    Ok(f)
}

fn fact_id(m: &Map, what: &str) -> Result<u64, Box<EvalAltResult>> {
    m.get("_id")
        .and_then(|d| d.as_int().ok())
        .map(|i| i as u64)
        .ok_or_else(|| format!("{what} needs a fact bound in `match` or an id returned by `insert`").into())
}

/// How a fact type is named, for messages.
pub const TYPE_NAME_RULE: &str = "a fact type is an upper-case letter, then letters, digits or `_` (at most 128)";

fn register_builtins(e: &mut Engine) {
    e.register_fn("insert", |ty: &str, fields: Map| -> Result<i64, Box<EvalAltResult>> {
        if !crate::value::valid_type_name(ty) {
            return Err(format!("insert: `{}` is not a fact type: {TYPE_NAME_RULE}", shown(ty)).into());
        }
        let fields = fields_of(&fields, "insert")?;
        with_buffer(|b| {
            let id = b.next.fact;
            b.next.fact += 1;
            b.effects.push(Effect::Insert { id, ty: Sym::new(ty), fields });
            id as i64
        })
    });
    e.register_fn("modify", |fact: Map, changes: Map| -> Result<(), Box<EvalAltResult>> {
        let id = fact_id(&fact, "modify")?;
        let changes = fields_of(&changes, "modify")?;
        with_buffer(|b| b.effects.push(Effect::Modify { id, changes }))
    });
    e.register_fn("modify", |id: i64, changes: Map| -> Result<(), Box<EvalAltResult>> {
        let changes = fields_of(&changes, "modify")?;
        with_buffer(|b| b.effects.push(Effect::Modify { id: id as u64, changes }))
    });
    e.register_fn("retract", |fact: Map| -> Result<(), Box<EvalAltResult>> {
        let id = fact_id(&fact, "retract")?;
        with_buffer(|b| b.effects.push(Effect::Retract { id }))
    });
    e.register_fn("retract", |id: i64| -> Result<(), Box<EvalAltResult>> {
        with_buffer(|b| b.effects.push(Effect::Retract { id: id as u64 }))
    });
    fn call(function: &str, args: &Dynamic, opts: &Map) -> Result<(), Box<EvalAltResult>> {
        let args = from_dynamic(args).map_err(|e| format!("call: arguments: {e}"))?;
        let options = call_options(opts, "call")?;
        let function = function.to_string();
        with_buffer(|b| b.effects.push(Effect::Call { function, args, options }))
    }
    e.register_fn("Call", |f: &str, args: Dynamic| call(f, &args, &Map::new()));
    e.register_fn("Call", |f: &str, args: Dynamic, opts: Map| call(f, &args, &opts));
    e.register_fn("complete", || with_buffer(|b| b.effects.push(Effect::Complete { result: Value::Null })));
    e.register_fn("complete", |r: Dynamic| -> Result<(), Box<EvalAltResult>> {
        let result = from_dynamic(&r).map_err(|e| format!("complete: {e}"))?;
        with_buffer(|b| b.effects.push(Effect::Complete { result }))
    });
    e.register_fn("fail", |reason: &str| {
        let reason = reason.to_string();
        with_buffer(|b| b.effects.push(Effect::Fail { reason }))
    });
    e.register_fn("log", |msg: Dynamic| {
        let message = if msg.is_string() { msg.to_string() } else { format!("{msg:?}") };
        with_buffer(|b| b.effects.push(Effect::Log { message }))
    });
    fn timer(due: Due, ty: &str, fields: &Map, what: &str) -> Result<i64, Box<EvalAltResult>> {
        if !crate::value::valid_type_name(ty) {
            return Err(format!("{what}: `{}` is not a fact type: {TYPE_NAME_RULE}", shown(ty)).into());
        }
        let fields = fields_of(fields, what)?;
        with_buffer(|b| {
            let id = b.next.timer;
            b.next.timer += 1;
            b.effects.push(Effect::Timer { id, due, ty: Sym::new(ty), fields });
            id as i64
        })
    }
    e.register_fn("after", |d: &str, ty: &str, fields: Map| -> Result<i64, Box<EvalAltResult>> {
        let d = humantime::parse_duration(d)
            .map_err(|e| format!("after: `{d}` is not a duration like \"15m\" or \"1h 30m\": {e}"))?;
        timer(Due::After(d.as_millis() as u64), ty, &fields, "after")
    });
    e.register_fn("at", |t: i64, ty: &str, fields: Map| -> Result<i64, Box<EvalAltResult>> {
        if t < 0 {
            return Err(format!("at: {t} is before 1970; give milliseconds since the Unix epoch").into());
        }
        timer(Due::At(t as u64), ty, &fields, "at")
    });
    e.register_fn("at", |t: &str, ty: &str, fields: Map| -> Result<i64, Box<EvalAltResult>> {
        let when = humantime::parse_rfc3339_weak(t)
            .map_err(|e| format!("at: `{t}` is not a time like \"2026-11-26T09:00:00Z\": {e}"))?;
        let ms = when.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        timer(Due::At(ms), ty, &fields, "at")
    });
    e.register_fn("cancel_timer", |id: i64| with_buffer(|b| b.effects.push(Effect::CancelTimer { id: id as u64 })));
    e.register_fn("emit", |name: &str, payload: Dynamic| -> Result<(), Box<EvalAltResult>> {
        if name.is_empty() || name.len() > 200 {
            return Err("emit: a signal name is 1 to 200 characters".into());
        }
        let payload = from_dynamic(&payload).map_err(|e| format!("emit: payload: {e}"))?;
        let name = name.to_string();
        with_buffer(|b| b.effects.push(Effect::Emit { name, payload }))
    });
    fn start_child(pack: &str, facts: &Dynamic, opts: &Map) -> Result<(), Box<EvalAltResult>> {
        if pack.is_empty() {
            return Err("start_workflow: the pack name is empty".into());
        }
        let facts = from_dynamic(facts).map_err(|e| format!("start_workflow: facts: {e}"))?;
        if !matches!(facts, Value::Array(_)) {
            return Err("start_workflow: facts must be an array like [#{ type: \"Job\", fields: #{ n: 1 } }]".into());
        }
        let options = call_options(opts, "start_workflow")?;
        let pack = pack.to_string();
        with_buffer(|b| b.effects.push(Effect::StartChild { pack, facts, options }))
    }
    e.register_fn("start_workflow", |p: &str, facts: Dynamic| start_child(p, &facts, &Map::new()));
    e.register_fn("start_workflow", |p: &str, facts: Dynamic, opts: Map| start_child(p, &facts, &opts));
}

fn call_options(opts: &Map, what: &str) -> Result<CallOptions, Box<EvalAltResult>> {
    let mut options = CallOptions::default();
    for (k, v) in opts.iter() {
        match k.as_str() {
            "priority" => {
                options.priority = v.as_int().map_err(|_| format!("{what}: `priority` must be an integer"))?
            }
            "timeout" => {
                let s = v
                    .clone()
                    .into_string()
                    .map_err(|_| format!("{what}: `timeout` must be a duration string like \"30s\""))?;
                let d = humantime::parse_duration(&s).map_err(|e| format!("{what}: `timeout`: {e}"))?;
                options.timeout_ms = Some(d.as_millis() as u64);
            }
            other => return Err(format!("{what}: unknown option `{other}`; expected `priority` or `timeout`").into()),
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox() -> Sandbox {
        Sandbox::new(&Limits { max_operations: 10_000, ..Limits::default() })
    }

    #[test]
    fn effects_are_recorded_in_order() {
        let sb = sandbox();
        let s = sb
            .compile(r#"let id = insert("Job", #{ n: 1 }); modify(chunk, #{ s: "x" }); call("f", #{ a: id }, #{ priority: 5 }); complete(#{ ok: true });"#, &["chunk"], false)
            .unwrap();
        let chunk = ScriptValue::fact(7, Sym::new("Chunk"), &Fields::new());
        let eff = sb.run(&s, vec![chunk], NextIds { fact: 100, timer: 1 }).unwrap();
        assert_eq!(eff.len(), 4);
        assert!(matches!(&eff[0], Effect::Insert { id: 100, .. }));
        assert!(matches!(&eff[1], Effect::Modify { id: 7, .. }));
        assert!(
            matches!(&eff[2], Effect::Call { options: CallOptions { priority: 5, .. }, args, .. } if args.to_string() == r#"{"a":100}"#)
        );
    }

    #[test]
    fn static_checks() {
        let sb = sandbox();
        let err = sb.compile("let x = y + 1;", &["job"], false).unwrap_err();
        assert_eq!(err[0].message, "undefined variable `y`");
        assert_eq!(err[0].kind, CompileErrorKind::UndefinedVariable);
        let err = sb.compile("job.x = 1;\nfrobnicate(job);", &["job"], false).unwrap_err();
        assert_eq!((err[0].message.as_str(), err[0].pos), ("unknown function `frobnicate`", Pos::new(2, 1)));
        assert!(sb.compile("fn f(a) { a + 1 } let z = f(1); log(z.to_string());", &[], false).is_ok());
        assert!(sb.compile(r#"eval("1")"#, &[], false).is_err());
    }

    #[test]
    fn runaway_scripts_hit_limits() {
        let sb = sandbox();
        let s = sb.compile("loop { }", &[], false).unwrap();
        let e = sb.run(&s, vec![], NextIds::default()).unwrap_err();
        assert!(e.limit && e.message.contains("too many operations"), "{e:?}");
        let s = sb.compile("fn f(x) { f(x + 1) } f(0);", &[], false).unwrap();
        assert!(sb.run(&s, vec![], NextIds::default()).unwrap_err().limit);
        let s = sb.compile(r#"let s = "x"; loop { s += s; }"#, &[], false).unwrap();
        assert!(sb.run(&s, vec![], NextIds::default()).unwrap_err().limit);
    }
}
