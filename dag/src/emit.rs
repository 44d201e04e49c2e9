//! A checked definition to the files of a rule pack: `pack.toml` (the
//! functions the steps call, one attempt each, and the schemas of the
//! facts below) and `workflow.rules`, readable, one commented block per
//! step in definition order.
//!
//! The fact model of a compiled DAG:
//! - `Params`: the parameters a start request gives (optional; free-form);
//! - `Dag { id, state, params }`: the instance, `running` until it is
//!   `completed` or `failed`; `params` checked and defaulted;
//! - `Step { id, state, outputs, errors, timeouts, error }`: one per step,
//!   `waiting` → `running` → `done` | `failed`, or `waiting` → `skipped`;
//!   `retrying` while a retry waits for its backoff timer; `errors` and
//!   `timeouts` count the failures of each kind retried so far;
//! - `StepTimer { step }` (a sleep step's timer) and `StepRetry { step }`
//!   (a backoff's timer).

use std::fmt::Write;

use crate::expr::{condition_expr, pieces, rhai_str, text_expr, Ref};
use crate::model::{Dag, Mode, Over, ParamType, Step, StepType};
use crate::validate::Graph;
use crate::yaml::{Kind, Node, Scalar};

/// The states a step is in until it ends.
const LIVE: &str = r#"["waiting", "running", "retrying"]"#;

struct Names {
    /// Per step, the binding its fact has in rules that read it.
    binding: Vec<String>,
}

impl Names {
    fn new(dag: &Dag) -> Names {
        let mut used = std::collections::HashSet::new();
        let binding = dag
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let clean: String =
                    s.id.text.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
                let mut b = format!("s_{clean}");
                if b.len() > 100 || !used.insert(b.clone()) {
                    b = format!("s{i}_{}", &clean[..clean.len().min(90)]);
                    used.insert(b.clone());
                }
                b
            })
            .collect();
        Names { binding }
    }
}

/// Rhai that reads a reference, in a rule where the Dag is bound to `d`
/// and each step it reads to its binding.
fn access(g: &Graph, names: &Names) -> impl Fn(&Ref) -> String {
    let bindings: Vec<String> = names.binding.clone();
    let index = g.index.clone();
    move |r: &Ref| match r {
        Ref::Param(p) => format!("d.params[{}]", rhai_str(p)),
        Ref::Output { name, step } => {
            let b = index.get(step).map_or("()", |&i| bindings[i].as_str());
            format!("{b}.outputs[{}]", rhai_str(name))
        }
    }
}

fn float(f: f64) -> String {
    let s = format!("{f:?}");
    if s.contains('.') {
        s
    } else if let Some((m, e)) = s.split_once('e') {
        format!("{m}.0e{e}")
    } else {
        format!("{s}.0")
    }
}

/// A YAML value as a Rhai expression.
pub(crate) fn value(node: &Node, acc: &dyn Fn(&Ref) -> String) -> String {
    match &node.kind {
        Kind::Scalar(Scalar::Null) => "()".into(),
        Kind::Scalar(Scalar::Bool(b)) => b.to_string(),
        Kind::Scalar(Scalar::Int(i)) => i.to_string(),
        Kind::Scalar(Scalar::Float(f)) => float(*f),
        Kind::Scalar(Scalar::Str(s)) => match pieces(s) {
            Ok(p) => text_expr(&p, acc),
            Err(_) => rhai_str(s),
        },
        Kind::Seq(items) => format!("[{}]", items.iter().map(|i| value(i, acc)).collect::<Vec<_>>().join(", ")),
        Kind::Map(entries) => map_of(entries.iter().map(|(k, v)| (k.as_str().unwrap_or_default(), v)), acc),
    }
}

/// A value that reads no reference as Rhai.
pub(crate) fn value_of(node: &Node) -> String {
    value(node, &|_| "()".into())
}

fn map_of<'a>(entries: impl Iterator<Item = (&'a str, &'a Node)>, acc: &dyn Fn(&Ref) -> String) -> String {
    let parts: Vec<String> = entries.map(|(k, v)| format!("{}: {}", rhai_str(k), value(v, acc))).collect();
    if parts.is_empty() {
        "#{}".into()
    } else {
        format!("#{{ {} }}", parts.join(", "))
    }
}

/// The steps a step's rules read: its references in params, conditions,
/// the gate and the child's name, that are not its dependencies.
fn reads(step: &Step, g: &Graph) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    let mut add = |s: &str| {
        let mut texts = Vec::new();
        collect_texts_str(s, &mut texts);
        for r in texts {
            if let Ref::Output { step, .. } = r {
                if let Some(&j) = g.index.get(&step) {
                    if !out.contains(&j) {
                        out.push(j);
                    }
                }
            }
        }
    };
    let mut strings = Vec::new();
    for (_, v) in &step.params {
        strings_in(v, &mut strings);
    }
    if let StepType::Subworkflow(w) = &step.ty {
        strings_in(w, &mut strings);
    }
    if let Some(f) = &step.facts {
        strings_in(f, &mut strings);
    }
    if let StepType::Foreach(f) = &step.ty {
        match &f.over {
            Over::List(o) => strings_in(o, &mut strings),
            Over::Range { from, to } => {
                strings_in(from, &mut strings);
                strings_in(to, &mut strings);
            }
        }
    }
    if let Some(gate) = &step.gate {
        for (_, v) in &gate.fields {
            strings_in(v, &mut strings);
        }
    }
    for d in &step.depends_on {
        if let Some(w) = &d.when {
            strings.push(w.text.clone());
        }
    }
    for s in &strings {
        add(s);
    }
    out
}

fn strings_in(node: &Node, out: &mut Vec<String>) {
    match &node.kind {
        Kind::Scalar(Scalar::Str(s)) if s.contains("${") => out.push(s.clone()),
        Kind::Seq(items) => items.iter().for_each(|i| strings_in(i, out)),
        Kind::Map(entries) => entries.iter().for_each(|(_, v)| strings_in(v, out)),
        _ => {}
    }
}

fn collect_texts_str(s: &str, out: &mut Vec<Ref>) {
    if let Ok(ps) = pieces(s) {
        out.extend(crate::compute::refs(&ps));
    }
}

fn cond(text: &str, acc: &dyn Fn(&Ref) -> String) -> String {
    match pieces(text) {
        Ok(p) => condition_expr(&p, acc),
        Err(_) => "false".into(),
    }
}

/// A compiled pack: its name, `pack.toml` and `workflow.rules`.
pub struct Emitted {
    /// The pack's name: the definition's id, or `PARENT.STEP` for a body.
    pub name: String,
    /// `pack.toml`.
    pub manifest: String,
    /// `workflow.rules`.
    pub rules: String,
}

/// The packs a definition compiles to: its foreach bodies' (innermost
/// first, as they must be deployed), then its own, last.
pub fn emit(dag: &Dag, g: &Graph, source_name: &str) -> Vec<Emitted> {
    let mut out = Vec::new();
    for (i, s) in dag.steps.iter().enumerate() {
        if let (StepType::Foreach(f), Some(bg)) = (&s.ty, g.bodies.get(&i)) {
            out.extend(emit(&f.body, bg, source_name));
        }
    }
    out.push(Emitted {
        name: dag.id.text.clone(),
        manifest: manifest(dag, source_name),
        rules: rules(dag, g, source_name),
    });
    out
}

fn manifest(dag: &Dag, source_name: &str) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# Compiled by `stoa dag compile` from {source_name} (definition `{}`).", dag.id.text);
    let _ = writeln!(m, "# Do not edit: change the definition and compile it again.\n");
    let _ = writeln!(m, "[pack]\nname = {}\nversion = {}", toml_str(&dag.id.text), toml_str(&dag.version));
    if let Some(d) = &dag.description {
        let _ = writeln!(m, "description = {}", toml_str(d));
    }
    let mut functions: Vec<&str> = dag
        .steps
        .iter()
        .filter_map(|s| match &s.ty {
            StepType::Function(f) => Some(f.text.as_str()),
            _ => None,
        })
        .collect();
    functions.sort_unstable();
    functions.dedup();
    if !functions.is_empty() {
        let _ = writeln!(m, "\n# Steps retry by their own policies, in the rules (per failure kind,\n# with durable backoff timers): the dispatcher makes one attempt per call,\n# and answers a lost worker as a failure of kind `lost` at once.");
    }
    for f in functions {
        // A step's `concurrency` caps its function in the pack: the lowest
        // of the steps calling it.
        let cap = dag
            .steps
            .iter()
            .filter(|s| matches!(&s.ty, StepType::Function(g) if g.text == f))
            .filter_map(|s| s.concurrency)
            .min();
        let _ = writeln!(m, "[functions.{}]\nretry = {{ max_attempts = 1, max_lost = 1 }}", toml_str(f));
        if let Some(c) = cap {
            let _ = writeln!(m, "concurrency = {c}");
        }
    }
    m.push_str(
        r#"
# The instance: `running`, then `completed` or `failed`.
[facts.Dag]
id = "string"
state = "string"
params = "map"

# One per step: `waiting`, `running`, `retrying`, `done`, `failed`, `skipped`.
[facts.Step]
id = "string"
state = "string"
outputs = "map"
errors = "int"
timeouts = "int"
lost = { type = "int", default = 0 }
error = "string?"

[facts.StepTimer]
step = "string"

[facts.StepRetry]
step = "string"
"#,
    );
    if dag.steps.iter().any(|s| matches!(s.ty, StepType::Foreach(_))) {
        m.push_str(crate::foreach::SCHEMAS);
    }
    crate::breakpoints::manifest(&mut m);
    crate::restart::manifest(&mut m);
    crate::triggers::manifest(&mut m, dag, source_name);
    crate::strategy::manifest(&mut m, &dag.strategy, source_name);
    m
}

fn toml_str(s: &str) -> String {
    // A TOML basic string has the same escapes as the Rhai literal we make.
    rhai_str(s)
}

fn rules(dag: &Dag, g: &Graph, source_name: &str) -> String {
    let names = Names::new(dag);
    let acc = access(g, &names);
    let mut out = String::new();
    let _ = writeln!(out, "// Compiled by `stoa dag compile` from {source_name} (definition `{}`", dag.id.text);
    let _ = writeln!(out, "// version {}). Do not edit: change the definition and compile it again.", dag.version);
    let _ = writeln!(out, "// A step's facts are read as `s_ID` (the step id, `-` and `.` as `_`).\n");
    start_rule(&mut out, dag);
    // A step can be skipped only below a condition: without one upstream,
    // every dependency ends done (or the instance fails), and a skip rule
    // would be dead code.
    let mut skippable = vec![false; dag.steps.len()];
    for i in crate::validate::topo(&g.deps) {
        let s = &dag.steps[i];
        skippable[i] = s.depends_on.iter().any(|d| d.when.is_some()) || g.deps[i].iter().any(|&j| skippable[j]);
    }
    for (i, s) in dag.steps.iter().enumerate() {
        step_rules(&mut out, dag, g, &names, &acc, i, s, source_name, skippable[i]);
    }
    crate::restart::rules(&mut out, dag, g);
    crate::breakpoints::rules(&mut out, dag);
    end_rules(&mut out, dag, g, &names, &acc);
    out
}

fn start_rule(out: &mut String, dag: &Dag) {
    out.push_str("// The instance starts: its parameters checked and defaulted (from a\n// `Params` fact, if the start request gives one). Each step's rules make\n// its Step fact (`step ID new`).\n");
    out.push_str("rule \"dag start\" {\n    match {\n        given: collect(Params())\n");
    crate::triggers::start_match(out, dag);
    out.push_str("        not Dag()\n    }\n    action {\n");
    out.push_str("        let p = if given.len() > 0 { given[0] } else { #{} };\n        let params = #{};\n        let errors = [];\n");
    crate::triggers::start_params(out, dag);
    for prm in &dag.params {
        let k = rhai_str(&prm.name.text);
        let type_name = match prm.ty {
            ParamType::Any => "",
            ParamType::String => "string",
            ParamType::Int => "i64",
            ParamType::Float => "f64",
            ParamType::Bool => "bool",
            ParamType::List => "array",
            ParamType::Map => "map",
        };
        let _ = writeln!(
            out,
            "        // {}: {}{}",
            prm.name.text,
            prm.ty.name(),
            if prm.default.is_some() { "" } else { ", required" }
        );
        let _ = writeln!(out, "        let v = p[{k}];");
        match &prm.default {
            Some(d) if crate::compute::computes(d) => {
                // A default that computes reads the parameters before it.
                let acc = |r: &Ref| match r {
                    Ref::Param(p) => format!("params[{}]", rhai_str(p)),
                    Ref::Output { .. } => "()".into(),
                };
                out.push_str("        if v == () {\n");
                crate::compute::guarded(out, "            ", "v", &value(d, &acc), &prm.name.text, "errors", None);
                out.push_str("        }\n");
            }
            Some(d) => {
                let _ = writeln!(out, "        if v == () {{ v = {}; }}", value(d, &|_| "()".into()));
            }
            None => {
                let _ = writeln!(
                    out,
                    "        if v == () {{ errors.push(\"parameter `{}` is required\"); }}",
                    prm.name.text
                );
            }
        }
        if prm.ty == ParamType::Float {
            let _ = writeln!(out, "        if type_of(v) == \"i64\" {{ v = v.to_float(); }}");
        }
        if prm.ty != ParamType::Any {
            let _ = writeln!(
                out,
                "        if v != () && type_of(v) != \"{type_name}\" {{ errors.push(\"parameter `{}` must be a{} {}, not \" + type_of(v)); }}",
                prm.name.text,
                if prm.ty == ParamType::Int { "n" } else { "" },
                prm.ty.name()
            );
        }
        let _ = writeln!(out, "        params[{k}] = v;");
    }
    let declared: Vec<String> = dag.params.iter().map(|p| rhai_str(&p.name.text)).collect();
    let _ = writeln!(out, "        for k in p.keys() {{");
    let _ = writeln!(
        out,
        "            if !k.starts_with(\"_\") && !(k in [{}]) {{ errors.push(\"unknown parameter `\" + k + \"`\"); }}",
        declared.join(", ")
    );
    out.push_str("        }\n        if errors.len() > 0 {\n            let why = \"\";\n            for e in errors { if why != \"\" { why += \"; \"; } why += e; }\n            fail(why);\n        } else {\n");
    let _ = writeln!(
        out,
        "            insert(\"Dag\", #{{ id: {}, state: \"running\", params: params }});",
        rhai_str(&dag.id.text)
    );
    out.push_str("        }\n    }\n}\n\n");
}

#[allow(clippy::too_many_arguments)]
fn step_rules(
    out: &mut String,
    dag: &Dag,
    g: &Graph,
    names: &Names,
    acc: &dyn Fn(&Ref) -> String,
    i: usize,
    s: &Step,
    src: &str,
    skippable: bool,
) {
    let id = &s.id.text;
    let what = match &s.ty {
        StepType::Function(f) => format!("calls `{}`", f.text),
        StepType::Noop => "does nothing (its params are its outputs)".into(),
        StepType::Sleep => "sleeps on a durable timer".into(),
        StepType::Subworkflow(_) => "runs a child workflow".into(),
        StepType::Foreach(f) => format!(
            "runs `{}` once per item, {} at a time",
            f.body.id.text,
            if f.concurrency == 1 { "one".to_string() } else { f.concurrency.to_string() }
        ),
    };
    let deps_text = if s.depends_on.is_empty() {
        "at the start".to_string()
    } else {
        let ds: Vec<String> = s
            .depends_on
            .iter()
            .map(|d| match &d.when {
                Some(w) => format!("`{}` (when {})", d.step.text, w.text.replace('\n', " ")),
                None => format!("`{}`", d.step.text),
            })
            .collect();
        let mode = if s.depends_on.len() == 1 {
            ""
        } else if s.mode == Mode::Any {
            "any of "
        } else {
            "all of "
        };
        format!("after {mode}{}", ds.join(", "))
    };
    let _ = writeln!(out, "// ---- Step `{id}` ({src}:{}:{}): {what}, {deps_text}.", s.id.pos.line, s.id.pos.col);
    // The step's fact, made by a rule of its own (not by `dag start`), so
    // that a new version of the definition that adds a step gives it to
    // the instances already running, where it starts if its dependencies
    // are done.
    let _ = writeln!(
        out,
        "rule {} {{\n    salience 10\n    match {{\n        d: Dag(state == \"running\")\n        not Step(id == {})\n    }}\n    action {{ insert(\"Step\", #{{ id: {}, state: \"waiting\", outputs: #{{}}, errors: 0, timeouts: 0, lost: 0 }}); }}\n}}\n",
        rhai_str(&format!("step {id} new")),
        rhai_str(id),
        rhai_str(id)
    );
    let reads = reads(s, g);
    let deps = &g.deps[i];
    // The step's own fact is `me` in its rules.
    let me = "me";
    let extra: Vec<usize> = reads.iter().copied().filter(|j| !deps.contains(j)).collect();
    let head = |out: &mut String, dep_states: &dyn Fn(usize) -> &'static str| {
        let _ = writeln!(out, "        d: Dag(state == \"running\")");
        let _ = writeln!(out, "        {me}: Step(id == {}, state == \"waiting\")", rhai_str(id));
        for &j in deps {
            let _ = writeln!(
                out,
                "        {}: Step(id == {}, state {})",
                names.binding[j],
                rhai_str(&dag.steps[j].id.text),
                dep_states(j)
            );
        }
        for &j in &extra {
            let _ = writeln!(out, "        {}: Step(id == {})", names.binding[j], rhai_str(&dag.steps[j].id.text));
        }
    };
    let cond_of = |k: usize| s.depends_on.get(k).and_then(|d| d.when.as_ref()).map(|w| cond(&w.text, acc));
    let gate = |out: &mut String| {
        if let Some(gt) = &s.gate {
            let _ = writeln!(out, "        g: Signal(name == {})", rhai_str(&gt.signal.text));
            // A signal whose payload is not a map matches no field.
            for (k, v) in &gt.fields {
                let _ = writeln!(
                    out,
                    "        test(type_of(g.payload) == \"map\" && g.payload[{}] == {})",
                    rhai_str(&k.text),
                    value(v, acc)
                );
            }
        }
    };
    // The start rules: one for `all` (or no dependency), one per
    // dependency for `any`.
    let starts: Vec<(String, Option<usize>)> = if s.mode == Mode::Any && deps.len() > 1 {
        deps.iter().enumerate().map(|(k, &j)| (format!("step {id} after {}", dag.steps[j].id.text), Some(k))).collect()
    } else {
        vec![(format!("step {id}"), None)]
    };
    for (rule, only) in &starts {
        let _ = writeln!(out, "rule {} {{\n    match {{", rhai_str(rule));
        match only {
            Some(k) => {
                let dj = deps[*k];
                let _ = writeln!(out, "        d: Dag(state == \"running\")");
                let _ = writeln!(out, "        {me}: Step(id == {}, state == \"waiting\")", rhai_str(id));
                let _ = writeln!(
                    out,
                    "        {}: Step(id == {}, state == \"done\")",
                    names.binding[dj],
                    rhai_str(&dag.steps[dj].id.text)
                );
                for &j in reads.iter().filter(|&&j| j != dj) {
                    let _ =
                        writeln!(out, "        {}: Step(id == {})", names.binding[j], rhai_str(&dag.steps[j].id.text));
                }
                if let Some(c) = cond_of(*k) {
                    let _ = writeln!(out, "        test{c}");
                }
            }
            None => {
                head(out, &|_| "== \"done\"");
                let conds: Vec<String> = (0..deps.len()).filter_map(cond_of).collect();
                if !conds.is_empty() {
                    let _ = writeln!(out, "        test({})", conds.join(" && "));
                }
            }
        }
        gate(out);
        crate::breakpoints::guard(out, id);
        crate::strategy::guard(out, &dag.strategy, s);
        out.push_str("    }\n    action {\n");
        crate::compute::guarded_start(out, s, acc, &value, start_action);
        out.push_str("    }\n");
        end_sections(out, s, acc);
        out.push_str("}\n");
    }
    if let StepType::Foreach(f) = &s.ty {
        crate::foreach::loop_rules(out, s, f);
    }
    // The skip rule: every dependency ended, and the step cannot run.
    if skippable && !deps.is_empty() {
        let ok: Vec<String> = deps
            .iter()
            .enumerate()
            .map(|(k, &j)| match cond_of(k) {
                Some(c) => format!("({}.state == \"done\" && {c})", names.binding[j]),
                None => format!("{}.state == \"done\"", names.binding[j]),
            })
            .collect();
        let joined = ok.join(if s.mode == Mode::Any { " || " } else { " && " });
        out.push('\n');
        let _ = writeln!(
            out,
            "// Every dependency of `{id}` ended, but {}: `{id}` is skipped.",
            if s.mode == Mode::Any && deps.len() > 1 {
                "none is done with its condition true"
            } else {
                "one was skipped or a condition is false"
            }
        );
        let _ = writeln!(out, "rule {} {{\n    match {{", rhai_str(&format!("step {id} skipped")));
        head(out, &|_| "in [\"done\", \"skipped\"]");
        let _ = writeln!(out, "        test(!({joined}))");
        let _ = writeln!(out, "    }}\n    action {{ modify({me}, #{{ state: \"skipped\" }}); }}\n}}");
    }
    out.push('\n');

    fn start_action(out: &mut String, s: &Step, acc: &dyn Fn(&Ref) -> String) {
        let params = map_of(s.params.iter().map(|(k, v)| (k.text.as_str(), v)), acc);
        match &s.ty {
            StepType::Function(f) => {
                let call = match &s.timeout {
                    Some(t) => format!(
                        "call({}, args, #{{ timeout: {} }});",
                        rhai_str(&f.text),
                        value(&str_node(&t.text), acc)
                    ),
                    None => format!("call({}, args);", rhai_str(&f.text)),
                };
                let _ = writeln!(out, "        let args = {params};");
                match s.typed.as_ref().and_then(crate::types::run_checks) {
                    // A computed param of the wrong type fails the step
                    // before the call, naming the param.
                    Some(checks) => {
                        let _ = writeln!(out, "        {checks}");
                        let _ = writeln!(out, "        if why != \"\" {{\n            modify(me, #{{ state: \"failed\", error: why }});\n        }} else {{\n            modify(me, #{{ state: \"running\" }});\n            {call}\n        }}");
                    }
                    None => {
                        let _ = writeln!(out, "        modify(me, #{{ state: \"running\" }});\n        {call}");
                    }
                }
            }
            StepType::Noop => {
                let _ = writeln!(out, "        modify(me, #{{ state: \"done\", outputs: {params} }});");
            }
            StepType::Sleep => {
                let d = s
                    .params
                    .iter()
                    .find(|(k, _)| k.text == "duration")
                    .map_or("\"0s\"".to_string(), |(_, v)| value(v, acc));
                let _ = writeln!(out, "        modify(me, #{{ state: \"running\" }});");
                let _ = writeln!(out, "        after({d}, \"StepTimer\", #{{ step: {} }});", rhai_str(&s.id.text));
            }
            StepType::Subworkflow(w) => {
                let _ = writeln!(out, "        modify(me, #{{ state: \"running\" }});");
                let facts = match &s.facts {
                    Some(f) => value(f, acc),
                    None => format!("[#{{ type: \"Params\", fields: {params} }}]"),
                };
                let _ = writeln!(out, "        start_workflow({}, {facts});", value(w, acc));
            }
            StepType::Foreach(f) => crate::foreach::start_action(out, s, f, &params, acc),
        }
    }

    fn end_sections(out: &mut String, s: &Step, _acc: &dyn Fn(&Ref) -> String) {
        if !matches!(s.ty, StepType::Function(_) | StepType::Subworkflow(_)) {
            return;
        }
        let what = match &s.ty {
            StepType::Function(f) => format!("`{}`", f.text),
            _ => "the child workflow".into(),
        };
        out.push_str("    reaction {\n");
        out.push_str("        let out = if type_of(result) == \"map\" { result } else { #{ value: result } };\n");
        if s.outputs.is_empty() {
            out.push_str("        modify(me, #{ state: \"done\", outputs: out });\n");
        } else {
            let names: Vec<String> = s.outputs.iter().map(|n| rhai_str(&n.text)).collect();
            let _ = writeln!(out, "        let missing = [{}].filter(|k| !(k in out));", names.join(", "));
            out.push_str("        if missing.len() > 0 {\n");
            let _ = writeln!(
                out,
                "            modify(me, #{{ state: \"failed\", error: `the result of {} lacks output(s) ${{missing}}` }});",
                what.replace('`', "")
            );
            out.push_str("        } else {\n            modify(me, #{ state: \"done\", outputs: out });\n        }\n");
        }
        out.push_str("    }\n    error {\n");
        let retry = |out: &mut String, kind: &str, counter: &str, p: &crate::model::Policy, cond: &str| {
            let _ = writeln!(out, "        {kind}if {cond} && me.{counter} + 1 < {} {{", p.attempts);
            let _ = writeln!(
                out,
                "            // retry.{}: {} attempts{}",
                match counter {
                    "errors" => "error",
                    "timeouts" => "timeout",
                    _ => "platform",
                },
                p.attempts,
                p.backoff.as_ref().map(|b| format!(", {} apart", b.text)).unwrap_or_default()
            );
            match &p.backoff {
                Some(b) => {
                    let _ = writeln!(
                        out,
                        "            modify(me, #{{ state: \"retrying\", {counter}: me.{counter} + 1 }});"
                    );
                    let _ = writeln!(
                        out,
                        "            after({}, \"StepRetry\", #{{ step: {} }});",
                        rhai_str(&b.text),
                        rhai_str(&s.id.text)
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "            modify(me, #{{ state: \"waiting\", {counter}: me.{counter} + 1 }});"
                    );
                }
            }
        };
        let mut kind = "";
        if let Some(p) = &s.retry.timeout {
            retry(out, kind, "timeouts", p, "error.kind == \"timeout\"");
            kind = "} else ";
        }
        if let Some(p) = &s.retry.error {
            retry(out, kind, "errors", p, "error.kind == \"failed\" && error.retryable");
            kind = "} else ";
        }
        if matches!(s.ty, StepType::Function(_)) {
            let default = crate::model::Policy { attempts: crate::model::PLATFORM_ATTEMPTS, backoff: None };
            retry(out, kind, "lost", s.retry.platform.as_ref().unwrap_or(&default), "error.kind == \"lost\"");
            kind = "} else ";
        }
        if kind.is_empty() {
            out.push_str("        modify(me, #{ state: \"failed\", error: error.message });\n");
        } else {
            out.push_str(
                "        } else {\n            modify(me, #{ state: \"failed\", error: error.message });\n        }\n",
            );
        }
        out.push_str("    }\n");
    }
}

fn str_node(s: &str) -> Node {
    Node { pos: stoa_rules::Pos::default(), kind: Kind::Scalar(Scalar::Str(s.to_string())) }
}

fn end_rules(out: &mut String, dag: &Dag, g: &Graph, names: &Names, acc: &dyn Fn(&Ref) -> String) {
    if dag.steps.iter().any(|s| s.ty == StepType::Sleep) {
        out.push_str("// A sleep step's timer is due: the step is done.\nrule \"dag sleep done\" {\n    match {\n        t: StepTimer()\n        s: Step(id == t.step, state == \"running\")\n    }\n    action { retract(t); modify(s, #{ state: \"done\" }); }\n}\n\n");
    }
    let backoff = dag.steps.iter().any(|s| {
        [&s.retry.error, &s.retry.timeout, &s.retry.platform]
            .iter()
            .any(|p| p.as_ref().is_some_and(|p| p.backoff.is_some()))
    });
    if backoff {
        out.push_str("// A retry's backoff is over: the step waits to start again.\nrule \"dag retry\" {\n    match {\n        t: StepRetry()\n        s: Step(id == t.step, state == \"retrying\")\n    }\n    action { retract(t); modify(s, #{ state: \"waiting\" }); }\n}\n\n");
    }
    // An iteration's failure names its number: the foreach's step reports
    // the first one it saw.
    let prefix = match &dag.iteration {
        Some(it) => format!("iteration ${{d.params[{}]}}: ", rhai_str(&it.index)),
        None => String::new(),
    };
    let _ = writeln!(out, "// A step failed for good: so does the instance.\nrule \"dag failed\" {{\n    match {{\n        d: Dag(state == \"running\")\n        s: Step(state == \"failed\")\n    }}\n    action {{\n        modify(d, #{{ state: \"failed\" }});\n        fail(`{prefix}step ${{s.id}} failed: ${{s.error}}`);\n    }}\n}}\n");
    out.push_str("// Every step is done or skipped: the instance completes");
    let mut reads: Vec<usize> = Vec::new();
    let mut strings = Vec::new();
    for (_, v) in &dag.outputs {
        strings_in(v, &mut strings);
    }
    for s in &strings {
        let mut rs = Vec::new();
        collect_texts_str(s, &mut rs);
        for r in rs {
            if let Ref::Output { step, .. } = r {
                if let Some(&j) = g.index.get(&step) {
                    if !reads.contains(&j) {
                        reads.push(j);
                    }
                }
            }
        }
    }
    out.push_str(if dag.outputs.is_empty() { ".\n" } else { " with its outputs.\n" });
    let _ = writeln!(out, "rule \"dag completed\" {{\n    salience -1\n    match {{\n        d: Dag(state == \"running\")\n        not Step(state in {LIVE})");
    for j in reads {
        let _ = writeln!(out, "        {}: Step(id == {})", names.binding[j], rhai_str(&dag.steps[j].id.text));
    }
    let result = map_of(dag.outputs.iter().map(|(k, v)| (k.text.as_str(), v)), acc);
    let _ = writeln!(out, "    }}\n    action {{\n        modify(d, #{{ state: \"completed\" }});\n        complete({result});\n    }}\n}}");
}
