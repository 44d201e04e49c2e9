//! The definition model: a `workflow.yaml` read into `Dag`, with a
//! diagnostic for every key or value of the wrong shape (all of them, not
//! the first). Graph checks (dependencies, cycles, references) are in
//! `validate`.

use std::path::Path;

use stoa_rules::{Code, Diagnostic, Pos};

use crate::yaml::{Kind, Node, Scalar};

/// The most steps one definition may have (Maestro's limit is about 1K).
pub const MAX_STEPS: usize = 1000;

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
}

impl ParamType {
    pub const ALL: [(&'static str, ParamType); 6] = [
        ("string", ParamType::String),
        ("int", ParamType::Int),
        ("float", ParamType::Float),
        ("bool", ParamType::Bool),
        ("list", ParamType::List),
        ("map", ParamType::Map),
    ];

    pub fn name(self) -> &'static str {
        ParamType::ALL.iter().find(|(_, t)| *t == self).map_or("?", |(n, _)| n)
    }

    /// The name with its article: "an int", "a string".
    pub fn a(self) -> String {
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
}

impl StepType {
    pub fn name(&self) -> &'static str {
        match self {
            StepType::Function(_) => "function",
            StepType::Noop => "noop",
            StepType::Sleep => "sleep",
            StepType::Subworkflow(_) => "subworkflow",
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
}

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
    fn ident(&mut self, node: &Node, what: &str, extra: &[char]) -> Option<Name> {
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

    fn duration(&mut self, node: &Node, what: &str) -> Option<Name> {
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

const TOP: &[&str] =
    &["id", "version", "description", "params", "steps", "outputs", "triggers", "run_strategy", "concurrency"];
const STEP: &[&str] =
    &["id", "type", "function", "workflow", "params", "depends_on", "retry", "timeout", "outputs", "gate"];

/// Reads a definition; `None` when its shape is too broken to go on.
pub(crate) fn read(r: &mut Reader<'_>, root: &Node) -> Option<Dag> {
    let top = r.map(root, "the definition", TOP);
    let get = |k: &str| top.iter().find(|(n, _)| n.text == k).map(|(_, v)| *v);
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
    let mut steps = Vec::new();
    match get("steps") {
        Some(s) => {
            let items = r.list(s, "`steps`");
            if items.len() > MAX_STEPS {
                r.error(
                    s.pos,
                    Code::DagLimit,
                    format!("{} steps; a definition may have at most {MAX_STEPS}", items.len()),
                );
            }
            for item in items.iter().take(MAX_STEPS) {
                if let Some(step) = read_step(r, item) {
                    steps.push(step);
                }
            }
        }
        None => r.format(root.pos, "the definition has no `steps`"),
    }
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
    Some(Dag { id: id?, version, description, params, steps, outputs, triggers, strategy })
}

fn read_param(r: &mut Reader<'_>, name: Name, decl: &Node) -> Option<Param> {
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

fn read_policy(r: &mut Reader<'_>, node: &Node, what: &str) -> Option<Policy> {
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

fn read_step(r: &mut Reader<'_>, node: &Node) -> Option<Step> {
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
        None => {
            r.format(node.pos, format!("{what} has no `type` (function, noop, sleep or subworkflow)"));
            None
        }
    };
    let ty = match ty_name.as_ref().map(|t| t.text.as_str()) {
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
        Some(other) => {
            let t = ty_name.as_ref().map_or(node.pos, |t| t.pos);
            let kinds = ["function", "noop", "sleep", "subworkflow"];
            let hint = stoa_rules::diagnostic::closest(other, kinds)
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_default();
            r.format(
                t,
                format!(
                    "unknown step type `{}`{hint} (function, noop, sleep or subworkflow)",
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
        for (k, v) in r.map(rt, "`retry`", &["error", "timeout"]) {
            let p = read_policy(r, v, &format!("`retry.{}`", k.text));
            match k.text.as_str() {
                "error" => retry.error = p,
                _ => retry.timeout = p,
            }
        }
    }
    let timeout = get("timeout").and_then(|t| r.duration(t, "`timeout`"));
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
    Some(Step { id: id?, ty: ty?, params, mode, depends_on, retry, timeout, outputs, gate })
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
