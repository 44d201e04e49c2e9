//! The definition model: a `workflow.yaml` read into `Dag`, with a
//! diagnostic for every key or value of the wrong shape (all of them, not
//! the first). Graph checks (dependencies, cycles, references) are in
//! `validate`.

use std::path::Path;

use stoa_rules::diagnostic::shown;
use stoa_rules::{Code, Diagnostic, Pos};

use crate::yaml::{Kind, Node, Scalar};

/// The most steps one definition may have (Maestro's limit is about 1K).
pub const MAX_STEPS: usize = 1000;
/// The most iterations one foreach may run (Maestro's own cap is 25,000).
pub const MAX_ITERATIONS: i64 = 100_000;
/// How deep foreach blocks may nest (each level is a level of child
/// workflows, and workflows nest at most 8 deep).
pub const MAX_FOREACH_DEPTH: usize = 3;
/// A foreach's iterations running at once: the default and the most.
pub const DEFAULT_CONCURRENCY: u32 = 100;
pub const MAX_CONCURRENCY: u32 = 10_000;

/// A name as written, with where.
#[derive(Clone, Debug, PartialEq)]
pub struct Name {
    pub text: String,
    pub pos: Pos,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamType {
    String,
    Int,
    Float,
    Bool,
    List,
    Map,
    /// Any value: a foreach's item, whose type the list decides.
    Any,
}

impl ParamType {
    pub const ALL: [(&'static str, ParamType); 7] = [
        ("string", ParamType::String),
        ("int", ParamType::Int),
        ("float", ParamType::Float),
        ("bool", ParamType::Bool),
        ("list", ParamType::List),
        ("map", ParamType::Map),
        ("any", ParamType::Any),
    ];

    pub fn name(self) -> &'static str {
        ParamType::ALL.iter().find(|(_, t)| *t == self).map_or("?", |(n, _)| n)
    }

    /// The name with its article: "an int", "a string".
    pub fn a(self) -> String {
        if self == ParamType::Any {
            return "any value".into();
        }
        let n = self.name();
        format!("{} {n}", if n.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" })
    }

    /// Whether a literal value (no `${...}` in it) is of this type.
    pub fn holds(self, node: &Node) -> bool {
        matches!(
            (self, &node.kind),
            (ParamType::String, Kind::Scalar(Scalar::Str(_)))
                | (ParamType::Int, Kind::Scalar(Scalar::Int(_)))
                | (ParamType::Float, Kind::Scalar(Scalar::Int(_) | Scalar::Float(_)))
                | (ParamType::Bool, Kind::Scalar(Scalar::Bool(_)))
                | (ParamType::List, Kind::Seq(_))
                | (ParamType::Map, Kind::Map(_))
                | (ParamType::Any, _)
        )
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: Name,
    pub ty: ParamType,
    /// None: the start request must give it.
    pub default: Option<Node>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StepType {
    /// Calls `function` with the step's params as arguments.
    Function(Name),
    /// Does nothing; its params are its outputs.
    Noop,
    /// Waits `params.duration` on a durable timer.
    Sleep,
    /// Starts a workflow of the pack `workflow` (which may be `${param}`)
    /// with the step's params as its `Params` fact, and waits for it.
    Subworkflow(Node),
    /// Runs a sub-DAG once per item, each iteration a child workflow.
    Foreach(Box<Foreach>),
}

/// What a foreach iterates over.
#[derive(Clone, Debug, PartialEq)]
pub enum Over {
    /// A list value (literal, or a reference to a list).
    List(Node),
    /// Whole numbers from `from` up to `to` (excluded).
    Range { from: Node, to: Node },
}

/// A foreach block: its items, how many run at once, and its body, a
/// definition of its own that compiles to its own pack.
#[derive(Clone, Debug, PartialEq)]
pub struct Foreach {
    /// Where `foreach:` is written.
    pub pos: Pos,
    pub over: Over,
    /// The body's parameter holding the item (`as:`, default `item`).
    pub var: Name,
    /// The body's parameter holding the iteration's number, from 0
    /// (`index:`, default `index`).
    pub index: Name,
    pub concurrency: u32,
    /// `stop` (default): the first failed iteration stops new ones from
    /// starting; `continue`: every iteration runs.
    pub keep_going: bool,
    pub body: Dag,
}

/// What makes a definition the body of a foreach.
#[derive(Clone, Debug, PartialEq)]
pub struct Iteration {
    /// The parameter holding the iteration's number.
    pub index: String,
}

impl StepType {
    pub fn name(&self) -> &'static str {
        match self {
            StepType::Function(_) => "function",
            StepType::Noop => "noop",
            StepType::Sleep => "sleep",
            StepType::Subworkflow(_) => "subworkflow",
            StepType::Foreach(_) => "foreach",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every dependency done (and its condition true).
    All,
    /// One dependency done with its condition true is enough.
    Any,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Dep {
    pub step: Name,
    /// A condition (`when:`), an expression with `${...}` references.
    pub when: Option<Name>,
}

/// Retries for one kind of failure.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Attempts in all, the first included (1: no retry).
    pub attempts: u32,
    /// Wait before each retry (a durable timer); none: retry at once.
    pub backoff: Option<Name>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct Retry {
    /// The function (or child workflow) failed.
    pub error: Option<Policy>,
    /// An attempt ran past the step's `timeout`.
    pub timeout: Option<Policy>,
    /// The worker running an attempt was lost (crashed, disconnected);
    /// default `PLATFORM_ATTEMPTS` attempts, at once.
    pub platform: Option<Policy>,
}

/// Attempts of a step whose workers are lost, unless its `retry.platform`
/// says otherwise (Maestro's default platform retry limit).
pub const PLATFORM_ATTEMPTS: u32 = 10;

/// Wait for a signal before starting: `name`, and payload fields equal to
/// values (which may be references).
#[derive(Clone, Debug, PartialEq)]
pub struct Gate {
    pub signal: Name,
    pub fields: Vec<(Name, Node)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub id: Name,
    pub ty: StepType,
    pub params: Vec<(Name, Node)>,
    pub mode: Mode,
    pub depends_on: Vec<Dep>,
    pub retry: Retry,
    pub timeout: Option<Name>,
    /// Declared output names (function and subworkflow steps); a noop's
    /// outputs are its params.
    pub outputs: Vec<Name>,
    pub gate: Option<Gate>,
    /// (function steps) at most this many calls of its function running
    /// at once for the tenant, across instances.
    pub concurrency: Option<u32>,
    /// (steps of a declared step type) the type and its run-time checks.
    pub typed: Option<crate::types::Typed>,
    /// (subworkflow steps) the child's start facts, `[{ type, fields }]`,
    /// instead of a `Params` fact of the step's params: for a child that
    /// is a rule pack rather than a definition.
    pub facts: Option<Node>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Dag {
    pub id: Name,
    pub version: String,
    pub description: Option<String>,
    pub params: Vec<Param>,
    pub steps: Vec<Step>,
    /// The result the instance completes with: name to value.
    pub outputs: Vec<(Name, Node)>,
    /// Set when this definition is a foreach's body.
    pub iteration: Option<Iteration>,
    pub triggers: Vec<crate::triggers::Trigger>,
    pub strategy: crate::strategy::Strategy,
}

pub(crate) struct Reader<'a> {
    pub path: &'a Path,
    pub diags: Vec<Diagnostic>,
}

impl Reader<'_> {
    pub fn error(&mut self, pos: Pos, code: Code, msg: impl Into<String>) {
        self.diags.push(Diagnostic::error(self.path, pos, code, msg));
    }

    pub(crate) fn format(&mut self, pos: Pos, msg: impl Into<String>) {
        self.error(pos, Code::DagFormat, msg);
    }

    /// The entries of a map node, each key a string; reports keys not in
    /// `known` (with "did you mean") and repeated keys.
    pub(crate) fn map<'n>(&mut self, node: &'n Node, what: &str, known: &[&str]) -> Vec<(Name, &'n Node)> {
        let Kind::Map(entries) = &node.kind else {
            self.format(node.pos, format!("{what} must be a map, found {}", node.what()));
            return Vec::new();
        };
        let mut out: Vec<(Name, &Node)> = Vec::new();
        for (k, v) in entries {
            let Some(key) = k.as_str() else {
                self.format(k.pos, format!("a key of {what} must be a string, found {}", k.what()));
                continue;
            };
            if out.iter().any(|(n, _)| n.text == key) {
                self.format(k.pos, format!("`{}` is given twice in {what}", stoa_rules::diagnostic::shown(key)));
                continue;
            }
            if !known.is_empty() && !known.contains(&key) {
                let hint = stoa_rules::diagnostic::closest(key, known.iter().copied())
                    .map(|c| format!("; did you mean `{c}`?"))
                    .unwrap_or_else(|| format!("; expected one of {}", known.join(", ")));
                self.format(k.pos, format!("unknown key `{}` in {what}{hint}", stoa_rules::diagnostic::shown(key)));
                continue;
            }
            out.push((Name { text: key.to_string(), pos: k.pos }, v));
        }
        out
    }

    pub(crate) fn string(&mut self, node: &Node, what: &str) -> Option<Name> {
        match &node.kind {
            Kind::Scalar(Scalar::Str(s)) => Some(Name { text: s.clone(), pos: node.pos }),
            // A plain number where a name or duration is expected reads as
            // its text (`version: 2`).
            Kind::Scalar(Scalar::Int(i)) => Some(Name { text: i.to_string(), pos: node.pos }),
            _ => {
                self.format(node.pos, format!("{what} must be a string, found {}", node.what()));
                None
            }
        }
    }

    /// A step id, parameter or output name: letters, digits, `_`, and for
    /// step ids also `-` and `.`; at most 128 bytes.
    pub(crate) fn ident(&mut self, node: &Node, what: &str, extra: &[char]) -> Option<Name> {
        let name = self.string(node, what)?;
        self.check_ident(&name, what, extra).then_some(name)
    }

    pub fn check_ident(&mut self, name: &Name, what: &str, extra: &[char]) -> bool {
        let t = &name.text;
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(&c));
        if !ok {
            let also = if extra.is_empty() {
                String::new()
            } else {
                format!(", {}", extra.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "))
            };
            self.format(
                name.pos,
                format!(
                    "{what} `{}` must start with a letter or `_` and hold only letters, digits, `_`{also} (at most 128 bytes)",
                    stoa_rules::diagnostic::shown(t)
                ),
            );
        }
        ok
    }

    pub(crate) fn list<'n>(&mut self, node: &'n Node, what: &str) -> &'n [Node] {
        match &node.kind {
            Kind::Seq(items) => items,
            _ => {
                self.format(node.pos, format!("{what} must be a list, found {}", node.what()));
                &[]
            }
        }
    }

    pub(crate) fn duration(&mut self, node: &Node, what: &str) -> Option<Name> {
        let n = self.string(node, what)?;
        if n.text.contains("${") {
            return Some(n);
        }
        match humantime_like(&n.text) {
            true => Some(n),
            false => {
                self.error(
                    n.pos,
                    Code::DagType,
                    format!(
                        "{what} `{}` is not a duration like \"30s\" or \"1h 30m\"",
                        stoa_rules::diagnostic::shown(&n.text)
                    ),
                );
                None
            }
        }
    }
}

/// Whether `s` is a duration as the engine's `after` and `timeout` read
/// them.
fn humantime_like(s: &str) -> bool {
    humantime::parse_duration(s).is_ok()
}

const TOP: &[&str] = &[
    "id",
    "version",
    "description",
    "import",
    "types",
    "params",
    "steps",
    "outputs",
    "triggers",
    "run_strategy",
    "concurrency",
];
const STEP: &[&str] = &[
    "id",
    "type",
    "function",
    "workflow",
    "facts",
    "foreach",
    "params",
    "depends_on",
    "retry",
    "timeout",
    "concurrency",
    "outputs",
    "gate",
];
const FOREACH: &[&str] = &["over", "range", "as", "index", "concurrency", "sequential", "on_failure", "steps"];

/// What a step list is read within: the definition's id, version and
/// parameters (a foreach body sees its parent's), and the foreach depth.
pub(crate) struct Scope<'a> {
    pub types: &'a [crate::types::TypeDecl],
    pub id: &'a str,
    pub version: &'a str,
    pub params: &'a [Param],
    pub depth: usize,
}

/// Reads a definition; `None` when its shape is too broken to go on.
/// `imports` holds the text of each file its `import` may name (by the
/// name as written), read by the caller.
pub(crate) fn read(
    r: &mut Reader<'_>,
    root: &Node,
    imports: &std::collections::BTreeMap<String, (std::path::PathBuf, String)>,
    templates: &[crate::types::TypeDecl],
) -> Option<Dag> {
    let top = r.map(root, "the definition", TOP);
    let get = |k: &str| top.iter().find(|(n, _)| n.text == k).map(|(_, v)| *v);
    let mut types: Vec<crate::types::TypeDecl> = templates.to_vec();
    if let Some(list) = get("import") {
        for item in r.list(list, "`import`").to_vec() {
            let Some(name) = r.string(&item, "an imported file") else { continue };
            let Some((path, text)) = imports.get(&name.text) else {
                r.error(
                    name.pos,
                    Code::DagReference,
                    format!("cannot read `{}`: no such file beside the definition", shown(&name.text)),
                );
                continue;
            };
            if crate::types::is_template(text) {
                continue;
            }
            let mut ir = Reader { path, diags: Vec::new() };
            match crate::yaml::parse(text) {
                Ok(node) => {
                    let m = ir.map(&node, "a library of step types", &["description", "types"]);
                    if let Some((_, t)) = m.iter().find(|(k, _)| k.text == "types") {
                        crate::types::read(&mut ir, t, &mut types);
                    }
                }
                Err(e) => ir.error(e.pos, Code::DagFormat, format!("YAML: {}", e.message)),
            }
            if ir.diags.iter().any(Diagnostic::is_error) {
                r.error(name.pos, Code::DagReference, format!("`{}` has errors (below)", shown(&name.text)));
            }
            r.diags.append(&mut ir.diags);
        }
    }
    if let Some(t) = get("types") {
        crate::types::read(r, t, &mut types);
    }
    let id = match get("id") {
        Some(n) => r.ident(n, "the definition id", &['-', '.']),
        None => {
            r.format(root.pos, "the definition has no `id`");
            None
        }
    };
    let version = get("version").and_then(|v| r.string(v, "`version`")).map_or("1".to_string(), |n| n.text);
    let description = get("description").and_then(|v| r.string(v, "`description`")).map(|n| n.text);
    let mut params = Vec::new();
    if let Some(p) = get("params") {
        for (name, decl) in r.map(p, "`params`", &[]) {
            if let Some(param) = read_param(r, name, decl) {
                params.push(param);
            }
        }
    }
    let scope = Scope {
        types: &types,
        id: id.as_ref().map_or("", |i| i.text.as_str()),
        version: &version,
        params: &params,
        depth: 0,
    };
    let steps = match get("steps") {
        Some(s) => read_steps(r, s, &scope),
        None => {
            r.format(root.pos, "the definition has no `steps`");
            Vec::new()
        }
    };
    let mut outputs = Vec::new();
    if let Some(o) = get("outputs") {
        for (name, v) in r.map(o, "`outputs`", &[]) {
            if r.check_ident(&name, "an output name", &[]) {
                outputs.push((name, v.clone()));
            }
        }
    }
    let triggers = get("triggers").map(|t| crate::triggers::read(r, t)).unwrap_or_default();
    let strategy = crate::strategy::read(r, get("run_strategy"), get("concurrency"));
    Some(Dag { id: id?, version, description, params, steps, outputs, iteration: None, triggers, strategy })
}

fn read_steps(r: &mut Reader<'_>, s: &Node, scope: &Scope<'_>) -> Vec<Step> {
    let items = r.list(s, "`steps`");
    if items.len() > MAX_STEPS {
        r.error(s.pos, Code::DagLimit, format!("{} steps; a definition may have at most {MAX_STEPS}", items.len()));
    }
    items.iter().take(MAX_STEPS).filter_map(|item| read_step(r, item, scope)).collect()
}

pub(crate) fn read_param(r: &mut Reader<'_>, name: Name, decl: &Node) -> Option<Param> {
    if !r.check_ident(&name, "a parameter name", &[]) {
        return None;
    }
    // `day: string` (required) or `day: { type: string, default: ... }`.
    let (ty_node, default) = match &decl.kind {
        Kind::Map(_) => {
            let m = r.map(decl, &format!("parameter `{}`", name.text), &["type", "default"]);
            let ty = m.iter().find(|(k, _)| k.text == "type").map(|(_, v)| *v);
            let default = m.iter().find(|(k, _)| k.text == "default").map(|(_, v)| (*v).clone());
            match ty {
                Some(t) => (t, default),
                None => {
                    r.format(decl.pos, format!("parameter `{}` has no `type`", name.text));
                    return None;
                }
            }
        }
        _ => (decl, None),
    };
    let ty_name = r.string(ty_node, "a parameter type")?;
    let Some(ty) = ParamType::ALL.iter().find(|(n, _)| *n == ty_name.text).map(|(_, t)| *t) else {
        let names: Vec<&str> = ParamType::ALL.iter().map(|(n, _)| *n).collect();
        r.error(
            ty_name.pos,
            Code::DagType,
            format!(
                "unknown parameter type `{}`; expected one of {}",
                stoa_rules::diagnostic::shown(&ty_name.text),
                names.join(", ")
            ),
        );
        return None;
    };
    if let Some(d) = &default {
        if !ty.holds(d) && !matches!(d.kind, Kind::Scalar(Scalar::Null)) && !crate::compute::computes(d) {
            r.error(
                d.pos,
                Code::DagType,
                format!("parameter `{}` is {}, but its default is {}", name.text, ty.a(), d.what()),
            );
        }
    }
    let default = default.filter(|d| !matches!(d.kind, Kind::Scalar(Scalar::Null)));
    Some(Param { name, ty, default })
}

pub(crate) fn read_policy(r: &mut Reader<'_>, node: &Node, what: &str) -> Option<Policy> {
    let m = r.map(node, what, &["attempts", "backoff"]);
    let mut attempts = 1;
    let mut backoff = None;
    for (k, v) in m {
        match k.text.as_str() {
            "attempts" => match v.kind {
                Kind::Scalar(Scalar::Int(n)) if (1..=100).contains(&n) => attempts = n as u32,
                _ => r.error(
                    v.pos,
                    Code::DagType,
                    format!("`attempts` of {what} must be a whole number from 1 to 100, found {}", v.what()),
                ),
            },
            _ => backoff = r.duration(v, "`backoff`"),
        }
    }
    Some(Policy { attempts, backoff })
}

fn read_step(r: &mut Reader<'_>, node: &Node, scope: &Scope<'_>) -> Option<Step> {
    let m = r.map(node, "a step", STEP);
    let get = |k: &str| m.iter().find(|(n, _)| n.text == k).map(|(_, v)| *v);
    let id = match get("id") {
        Some(n) => r.ident(n, "a step id", &['-', '.']),
        None => {
            r.format(node.pos, "a step has no `id`");
            None
        }
    };
    let what = id.as_ref().map_or("a step".to_string(), |i| format!("step `{}`", i.text));
    let ty_name = match get("type") {
        Some(t) => r.string(t, "`type`"),
        None if get("function").is_some() => Some(Name { text: "function".into(), pos: node.pos }),
        None if get("foreach").is_some() => Some(Name { text: "foreach".into(), pos: node.pos }),
        None => {
            r.format(node.pos, format!("{what} has no `type` (function, noop, sleep, subworkflow or foreach)"));
            None
        }
    };
    let mut ty = match ty_name.as_ref().map(|t| t.text.as_str()) {
        Some("function") => match get("function") {
            Some(f) => r.string(f, "`function`").map(StepType::Function),
            None => {
                r.format(node.pos, format!("{what} is a function step but names no `function`"));
                None
            }
        },
        Some("noop") => Some(StepType::Noop),
        Some("sleep") => Some(StepType::Sleep),
        Some("subworkflow") => match get("workflow") {
            Some(w) => r.string(w, "`workflow`").map(|_| StepType::Subworkflow(w.clone())),
            None => {
                r.format(node.pos, format!("{what} is a subworkflow step but names no `workflow`"));
                None
            }
        },
        Some("foreach") => match (get("foreach"), &id) {
            (Some(f), Some(step_id)) => read_foreach(r, f, step_id, scope).map(|f| StepType::Foreach(Box::new(f))),
            (Some(_), None) => None,
            (None, _) => {
                r.format(node.pos, format!("{what} is a foreach step but has no `foreach`"));
                None
            }
        },
        Some(other) if scope.types.iter().any(|t| t.name.text == other) => {
            scope.types.iter().find(|t| t.name.text == other).map(|t| match t.template {
                true => StepType::Subworkflow(Node {
                    pos: t.function.pos,
                    kind: Kind::Scalar(Scalar::Str(t.function.text.clone())),
                }),
                false => StepType::Function(t.function.clone()),
            })
        }
        Some(other) => {
            let t = ty_name.as_ref().map_or(node.pos, |t| t.pos);
            let kinds: Vec<&str> = ["function", "noop", "sleep", "subworkflow", "foreach"]
                .into_iter()
                .chain(scope.types.iter().map(|t| t.name.text.as_str()))
                .collect();
            let hint = stoa_rules::diagnostic::closest(other, kinds.iter().copied())
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_default();
            r.format(
                t,
                format!(
                    "unknown step type `{}`{hint} (function, noop, sleep, subworkflow or foreach)",
                    stoa_rules::diagnostic::shown(other)
                ),
            );
            None
        }
        None => None,
    };
    for (key, fits) in [
        ("function", matches!(ty, Some(StepType::Function(_)))),
        ("workflow", matches!(ty, Some(StepType::Subworkflow(_)))),
        ("foreach", matches!(ty, Some(StepType::Foreach(_)))),
        ("facts", matches!(ty, Some(StepType::Subworkflow(_)))),
    ] {
        if let (Some(v), false, Some(t)) = (get(key), fits, &ty) {
            r.format(v.pos, format!("`{key}` is for {key} steps; {what} is a {} step", t.name()));
        }
    }
    let mut params = Vec::new();
    if let Some(p) = get("params") {
        for (name, v) in r.map(p, &format!("the params of {what}"), &[]) {
            if r.check_ident(&name, "a step parameter name", &[]) {
                params.push((name, v.clone()));
            }
        }
    }
    let decl = ty_name.as_ref().and_then(|n| scope.types.iter().find(|t| t.name.text == n.text));
    let typed = decl.map(|t| crate::types::apply(r, t, &mut params, &what, node.pos));
    if ty == Some(StepType::Sleep) {
        match params.iter().find(|(n, _)| n.text == "duration") {
            Some((_, d)) => {
                let d = d.clone();
                r.duration(&d, "the `duration` of a sleep step");
            }
            None => r.format(node.pos, format!("{what} is a sleep step but has no `duration` in its params")),
        }
    }
    let (mode, depends_on) = match get("depends_on") {
        Some(d) => read_deps(r, d),
        None => (Mode::All, Vec::new()),
    };
    let mut retry = Retry::default();
    if let Some(rt) = get("retry") {
        retry = read_retry(r, rt);
    }
    let mut timeout = get("timeout").and_then(|t| r.duration(t, "`timeout`"));
    // A step of a type takes the type's policies unless it gives its own.
    if let Some(t) = decl {
        if get("retry").is_none() {
            retry = t.retry.clone();
        }
        if timeout.is_none() {
            timeout = t.timeout.clone();
        }
    }
    if let (Some(t), Some(ty)) = (&timeout, &ty) {
        if !matches!(ty, StepType::Function(_)) {
            r.format(t.pos, format!("`timeout` is for function steps only so far; {what} is a {} step", ty.name()));
        }
    }
    let mut outputs = Vec::new();
    if let Some(o) = get("outputs") {
        for item in r.list(o, "`outputs`") {
            if let Some(n) = r.ident(item, "an output name", &[]) {
                outputs.push(n);
            }
        }
        if let (Some(StepType::Noop | StepType::Sleep), Some(t)) = (&ty, &ty_name) {
            r.format(o.pos, format!("a {} step declares no `outputs` (a noop's outputs are its params)", t.text));
        }
        if let Some(StepType::Foreach(_)) = &ty {
            r.format(o.pos, "a foreach step declares no `outputs`: its outputs are `total`, `succeeded` and `failed`");
        }
    }
    if let (Some(t), None) = (decl, get("outputs")) {
        outputs = t.outputs.clone();
    }
    if let (Some(StepType::Foreach(f)), Some(node)) = (&mut ty, get("foreach")) {
        body_steps(r, f, node, &params, scope.depth, scope.types);
    }
    if let (Some(StepType::Foreach(_)), Some(rt)) = (&ty, get("retry")) {
        r.format(rt.pos, "a foreach step has no `retry`: give the steps of its body theirs");
    }
    let gate = get("gate").and_then(|g| {
        let m = r.map(g, "`gate`", &["signal", "match"]);
        let signal = match m.iter().find(|(k, _)| k.text == "signal") {
            Some((_, s)) => r.string(s, "`gate.signal`"),
            None => {
                r.format(g.pos, "`gate` names no `signal`");
                None
            }
        };
        let mut fields = Vec::new();
        if let Some((_, f)) = m.iter().find(|(k, _)| k.text == "match") {
            for (name, v) in r.map(f, "`gate.match`", &[]) {
                if r.check_ident(&name, "a signal payload field", &[]) {
                    fields.push((name, v.clone()));
                }
            }
        }
        Some(Gate { signal: signal?, fields })
    });
    let facts = get("facts").map(|f| {
        for item in r.list(f, "`facts`") {
            let m = r.map(item, "a start fact", &["type", "fields"]);
            match m.iter().find(|(k, _)| k.text == "type") {
                Some((_, t)) => {
                    r.ident(t, "a fact type", &[]);
                }
                None => r.format(item.pos, "a start fact has no `type`"),
            }
            if let Some((_, fields)) = m.iter().find(|(k, _)| k.text == "fields") {
                r.map(fields, "a start fact's `fields`", &[]);
            }
        }
        if !params.is_empty() {
            r.format(f.pos, format!("{what} gives `facts`, so its `params` would go nowhere: put them in the facts"));
        }
        f.clone()
    });
    let concurrency = get("concurrency").and_then(|c| match (&c.kind, &ty) {
        (Kind::Scalar(Scalar::Int(n)), Some(StepType::Function(_))) if (1..=1_000_000).contains(n) => Some(*n as u32),
        (_, Some(StepType::Function(_))) => {
            r.error(
                c.pos,
                Code::DagType,
                format!("`concurrency` must be a whole number from 1 to 1000000, found {}", c.what()),
            );
            None
        }
        (_, Some(StepType::Foreach(_))) => {
            r.format(c.pos, "a foreach's concurrency goes inside its `foreach` block");
            None
        }
        (_, Some(t)) => {
            r.format(c.pos, format!("`concurrency` is for function steps; {what} is a {} step", t.name()));
            None
        }
        (_, None) => None,
    });
    Some(Step { id: id?, ty: ty?, params, mode, depends_on, retry, timeout, concurrency, outputs, gate, typed, facts })
}

fn read_deps(r: &mut Reader<'_>, node: &Node) -> (Mode, Vec<Dep>) {
    // `[a, b]`, `{ all: [...] }` or `{ any: [...] }`; an item is a step id
    // or `{ step: id, when: "condition" }`.
    let (mode, list) = match &node.kind {
        Kind::Map(_) => {
            let m = r.map(node, "`depends_on`", &["all", "any"]);
            if m.len() != 1 {
                r.format(node.pos, "`depends_on` as a map holds one key, `all` or `any`");
            }
            match m.first() {
                Some((k, v)) => (if k.text == "any" { Mode::Any } else { Mode::All }, *v),
                None => return (Mode::All, Vec::new()),
            }
        }
        _ => (Mode::All, node),
    };
    let mut deps = Vec::new();
    for item in r.list(list, "`depends_on`") {
        match &item.kind {
            Kind::Map(_) => {
                let m = r.map(item, "a dependency", &["step", "when"]);
                let step = match m.iter().find(|(k, _)| k.text == "step") {
                    Some((_, s)) => r.ident(s, "a step id", &['-', '.']),
                    None => {
                        r.format(item.pos, "a dependency names no `step`");
                        None
                    }
                };
                let when = m.iter().find(|(k, _)| k.text == "when").and_then(|(_, w)| match &w.kind {
                    Kind::Scalar(Scalar::Bool(b)) => Some(Name { text: b.to_string(), pos: w.pos }),
                    _ => r.string(w, "`when`"),
                });
                if let Some(step) = step {
                    deps.push(Dep { step, when });
                }
            }
            _ => {
                if let Some(step) = r.ident(item, "a step id", &['-', '.']) {
                    deps.push(Dep { step, when: None });
                }
            }
        }
    }
    (mode, deps)
}

fn read_foreach(r: &mut Reader<'_>, node: &Node, step: &Name, scope: &Scope<'_>) -> Option<Foreach> {
    let what = format!("the foreach of step `{}`", step.text);
    let m = r.map(node, &what, FOREACH);
    let get = |k: &str| m.iter().find(|(n, _)| n.text == k).map(|(_, v)| *v);
    if scope.depth + 1 > MAX_FOREACH_DEPTH {
        r.error(
            node.pos,
            Code::DagLimit,
            format!("{what} is nested {} deep; foreach blocks nest at most {MAX_FOREACH_DEPTH} deep", scope.depth + 1),
        );
        return None;
    }
    let over = match (get("over"), get("range")) {
        (Some(o), None) => {
            if let Kind::Seq(items) = &o.kind {
                if items.len() as i64 > MAX_ITERATIONS {
                    r.error(
                        o.pos,
                        Code::DagLimit,
                        format!("{what} runs over {} items; a foreach runs at most {MAX_ITERATIONS}", items.len()),
                    );
                }
            } else if !matches!(&o.kind, Kind::Scalar(Scalar::Str(s)) if s.contains("${")) {
                r.error(
                    o.pos,
                    Code::DagType,
                    format!("`over` of {what} must be a list or a reference to one, found {}", o.what()),
                );
            }
            Some(Over::List(o.clone()))
        }
        (None, Some(rg)) => read_range(r, rg, &what),
        (Some(o), Some(_)) => {
            r.format(o.pos, format!("{what} has both `over` and `range`; give one"));
            None
        }
        (None, None) => {
            r.format(node.pos, format!("{what} has neither `over` (a list) nor `range` (`{{ from: 0, to: N }}`)"));
            None
        }
    };
    let var = match get("as") {
        Some(v) => r.ident(v, "the name of a foreach's item (`as`)", &[])?,
        None => Name { text: "item".into(), pos: node.pos },
    };
    let index = match get("index") {
        Some(v) => r.ident(v, "the name of a foreach's index (`index`)", &[])?,
        None => Name { text: "index".into(), pos: node.pos },
    };
    let sequential = match get("sequential") {
        Some(Node { kind: Kind::Scalar(Scalar::Bool(b)), .. }) => *b,
        Some(v) => {
            r.error(v.pos, Code::DagType, format!("`sequential` must be true or false, found {}", v.what()));
            false
        }
        None => false,
    };
    let mut concurrency = DEFAULT_CONCURRENCY;
    if let Some(c) = get("concurrency") {
        match c.kind {
            Kind::Scalar(Scalar::Int(n)) if (1..=MAX_CONCURRENCY as i64).contains(&n) => concurrency = n as u32,
            _ => r.error(
                c.pos,
                Code::DagType,
                format!("`concurrency` must be a whole number from 1 to {MAX_CONCURRENCY}, found {}", c.what()),
            ),
        }
        if sequential {
            r.format(c.pos, "a sequential foreach runs one iteration at a time: drop `concurrency`");
        }
    }
    if sequential {
        concurrency = 1;
    }
    let keep_going = match get("on_failure") {
        Some(v) => match r.string(v, "`on_failure`").as_ref().map(|n| n.text.as_str()) {
            Some("stop") => false,
            Some("continue") => true,
            Some(other) => {
                r.format(v.pos, format!("`on_failure` is `stop` or `continue`, not `{}`", shown(other)));
                false
            }
            None => false,
        },
        None => false,
    };
    // The body sees its parent's parameters, the item and the index, and
    // the foreach step's own params (given once, passed to each iteration).
    let mut params: Vec<Param> = scope.params.to_vec();
    for p in &mut params {
        p.default = None;
    }
    // A name given (`as:`, `index:`) may not hide a parameter; a default
    // one does, so that a nested foreach's `item` and `index` are its own.
    let given = [get("as").is_some(), get("index").is_some()];
    for ((n, ty), given) in [(&var, ParamType::Any), (&index, ParamType::Int)].into_iter().zip(given) {
        if let Some(at) = params.iter().position(|p| p.name.text == n.text) {
            if given {
                r.error(
                    n.pos,
                    Code::DagDuplicate,
                    format!(
                        "the foreach's `{}` would hide the parameter `{}` (line {}); name it otherwise",
                        n.text, n.text, params[at].name.pos.line
                    ),
                );
            }
            params.remove(at);
        }
        params.push(Param { name: n.clone(), ty, default: None });
    }
    if var.text == index.text {
        r.error(index.pos, Code::DagDuplicate, format!("the foreach's item and index are both named `{}`", var.text));
    }
    if get("steps").is_none() {
        r.format(node.pos, format!("{what} has no `steps`"));
    }
    let body = Dag {
        id: Name { text: format!("{}.{}", scope.id, step.text), pos: step.pos },
        version: scope.version.to_string(),
        description: Some(format!("The iterations of step `{}` of `{}`.", step.text, scope.id)),
        params,
        // Read by `body_steps` once the step's own params are known.
        steps: Vec::new(),
        outputs: Vec::new(),
        iteration: Some(Iteration { index: index.text.clone() }),
        triggers: Vec::new(),
        strategy: Default::default(),
    };
    Some(Foreach { pos: node.pos, over: over?, var, index, concurrency, keep_going, body })
}

/// Reads a foreach's body steps, in a scope of the parameters its
/// iterations get: the parent's, the item, the index and the step's own
/// `params` (each of any type).
fn body_steps(
    r: &mut Reader<'_>,
    f: &mut Foreach,
    foreach: &Node,
    step_params: &[(Name, Node)],
    depth: usize,
    types: &[crate::types::TypeDecl],
) {
    for (n, _) in step_params {
        if let Some(p) = f.body.params.iter().find(|p| p.name.text == n.text) {
            r.error(
                n.pos,
                Code::DagDuplicate,
                format!(
                    "the foreach's param `{}` would hide the parameter `{}` (line {})",
                    n.text, n.text, p.name.pos.line
                ),
            );
        } else {
            f.body.params.push(Param { name: n.clone(), ty: ParamType::Any, default: None });
        }
    }
    let Kind::Map(entries) = &foreach.kind else { return };
    let Some((_, steps)) = entries.iter().find(|(k, _)| k.as_str() == Some("steps")) else { return };
    let scope =
        Scope { types, id: &f.body.id.text, version: &f.body.version, params: &f.body.params, depth: depth + 1 };
    f.body.steps = read_steps(r, steps, &scope);
}

fn read_range(r: &mut Reader<'_>, node: &Node, what: &str) -> Option<Over> {
    let m = r.map(node, &format!("the `range` of {what}"), &["from", "to"]);
    let zero = Node { pos: node.pos, kind: Kind::Scalar(Scalar::Int(0)) };
    let from = m.iter().find(|(k, _)| k.text == "from").map_or(zero, |(_, v)| (*v).clone());
    let Some(to) = m.iter().find(|(k, _)| k.text == "to").map(|(_, v)| (*v).clone()) else {
        r.format(node.pos, format!("the `range` of {what} has no `to` (the first number past the end)"));
        return None;
    };
    for v in [&from, &to] {
        let ok = matches!(&v.kind, Kind::Scalar(Scalar::Int(_)))
            || matches!(&v.kind, Kind::Scalar(Scalar::Str(s)) if s.contains("${"));
        if !ok {
            r.error(v.pos, Code::DagType, format!("a range's bounds are whole numbers, found {}", v.what()));
            return None;
        }
    }
    if let (Kind::Scalar(Scalar::Int(a)), Kind::Scalar(Scalar::Int(b))) = (&from.kind, &to.kind) {
        if b.saturating_sub(*a) > MAX_ITERATIONS {
            r.error(
                to.pos,
                Code::DagLimit,
                format!(
                    "{what} runs over {} numbers ({a} to {b}); a foreach runs at most {MAX_ITERATIONS}",
                    b.saturating_sub(*a)
                ),
            );
        }
    }
    Some(Over::Range { from, to })
}

/// `retry: { error, timeout, platform }`, each a policy.
pub(crate) fn read_retry(r: &mut Reader<'_>, node: &Node) -> Retry {
    let mut retry = Retry::default();
    for (k, v) in r.map(node, "`retry`", &["error", "timeout", "platform"]) {
        let p = read_policy(r, v, &format!("`retry.{}`", k.text));
        match k.text.as_str() {
            "error" => retry.error = p,
            "timeout" => retry.timeout = p,
            _ => retry.platform = p,
        }
    }
    retry
}
