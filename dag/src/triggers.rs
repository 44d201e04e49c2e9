//! Workflow triggers: what starts instances of a definition besides start
//! requests. Both kinds compile onto machinery packs already have, so a
//! trigger behaves exactly as a hand-written pack's would (exactly-once
//! starts, catch-up after downtime, pause and trigger through `stoa
//! schedule`):
//!
//! - `cron:` becomes a `[schedules.NAME]` of the pack, whose facts are a
//!   `Params` fact with the trigger's `params` (literal values: a tick has
//!   nothing to compute them from; a parameter's default may compute);
//! - `signal:` becomes `[signals."NAME"] start = true`: each signal of that
//!   name starts an instance whose first fact is the `Signal`. The `dag
//!   start` rule takes its parameters from it: the payload's fields that
//!   name parameters, or, when the trigger has `params`, those values,
//!   which may compute from `payload` (`${{ payload.day }}`).
//!
//! Signals that gates wait for become `deliver = true` subscriptions, so a
//! signal sent to no workflow in particular reaches the running instances,
//! where each gate's `match` picks the ones it waits for.

use std::fmt::Write;

use stoa_rules::diagnostic::{closest, shown};
use stoa_rules::manifest::{valid_schedule_name, CatchUp};
use stoa_rules::{Code, Pos};

use crate::compute;
use crate::expr::{pieces, rhai_str, Piece};
use crate::model::{Dag, Name, Reader};
use crate::yaml::{Kind, Node, Scalar};

#[derive(Clone, Debug, PartialEq)]
pub enum TriggerKind {
    Cron {
        /// The schedule's name: given, or `ID.cronN` (schedule names are
        /// a tenant's, so a default carries the definition's id).
        name: Name,
        named: bool,
        cron: Name,
        timezone: Option<Name>,
        catch_up: Option<Name>,
        max_catch_up: Option<(i64, Pos)>,
    },
    Signal {
        signal: Name,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Trigger {
    pub pos: Pos,
    pub kind: TriggerKind,
    /// `None`: a cron tick gives no parameters (defaults apply); a signal
    /// gives its payload's fields that name parameters.
    pub params: Option<Vec<(Name, Node)>>,
}

const CRON: &[&str] = &["cron", "name", "timezone", "catch_up", "max_catch_up", "params"];
const SIGNAL: &[&str] = &["signal", "params"];

/// Reads `triggers:`, a list of `{ cron: ... }` and `{ signal: ... }`.
pub(crate) fn read(r: &mut Reader<'_>, node: &Node) -> Vec<Trigger> {
    let mut out = Vec::new();
    let mut crons = 0;
    for item in r.list(node, "`triggers`") {
        let kind_key = match &item.kind {
            Kind::Map(entries) => {
                entries.iter().find_map(|(k, _)| k.as_str().filter(|k| *k == "cron" || *k == "signal"))
            }
            _ => None,
        };
        let known = match kind_key {
            Some("cron") => CRON,
            Some(_) => SIGNAL,
            None => {
                if matches!(item.kind, Kind::Map(_)) {
                    r.format(item.pos, "a trigger has `cron: EXPR` (a schedule) or `signal: NAME` (a subscription)");
                } else {
                    r.format(item.pos, format!("a trigger must be a map, found {}", item.what()));
                }
                continue;
            }
        };
        let m = r.map(item, "a trigger", known);
        let get = |k: &str| m.iter().find(|(n, _)| n.text == k).map(|(_, v)| *v);
        let params = get("params").map(|p| {
            let mut ps = Vec::new();
            for (name, v) in r.map(p, "the params of a trigger", &[]) {
                if r.check_ident(&name, "a parameter name", &[]) {
                    ps.push((name, v.clone()));
                }
            }
            ps
        });
        let kind = if kind_key == Some("cron") {
            crons += 1;
            let Some(cron) = get("cron").and_then(|c| r.string(c, "`cron`")) else { continue };
            let (name, named) = match get("name").and_then(|n| r.string(n, "the `name` of a cron trigger")) {
                Some(n) => (n, true),
                None => (Name { text: String::new(), pos: item.pos }, false),
            };
            let max_catch_up = get("max_catch_up").and_then(|v| match v.kind {
                Kind::Scalar(Scalar::Int(n)) => Some((n, v.pos)),
                _ => {
                    r.error(
                        v.pos,
                        Code::Schedule,
                        format!("`max_catch_up` must be a whole number, found {}", v.what()),
                    );
                    None
                }
            });
            TriggerKind::Cron {
                name: if named { name } else { Name { text: format!("#{crons}"), pos: item.pos } },
                named,
                cron,
                timezone: get("timezone").and_then(|t| r.string(t, "`timezone`")),
                catch_up: get("catch_up").and_then(|c| r.string(c, "`catch_up`")),
                max_catch_up,
            }
        } else {
            let Some(signal) = get("signal").and_then(|s| r.string(s, "`signal`")) else { continue };
            TriggerKind::Signal { signal }
        };
        out.push(Trigger { pos: item.pos, kind, params });
    }
    out
}

/// The schedule name of a cron trigger.
pub fn schedule_name(dag: &Dag, t: &Trigger) -> Option<String> {
    match &t.kind {
        TriggerKind::Cron { name, named: true, .. } => Some(name.text.clone()),
        TriggerKind::Cron { name, .. } => Some(format!("{}.cron{}", dag.id.text, name.text.trim_start_matches('#'))),
        TriggerKind::Signal { .. } => None,
    }
}

/// Checks the triggers against the definition: cron expressions, time
/// zones and catch-up as a pack's schedules are checked; names unique;
/// parameters declared, of their types, and required ones given.
pub(crate) fn check(r: &mut Reader<'_>, dag: &Dag) {
    let mut names: Vec<(String, Pos)> = Vec::new();
    let mut signals: Vec<(String, Pos)> = Vec::new();
    let mut sandbox: Option<stoa_rules::sandbox::Sandbox> = None;
    for t in &dag.triggers {
        match &t.kind {
            TriggerKind::Cron { name, cron, timezone, catch_up, max_catch_up, .. } => {
                let sched = schedule_name(dag, t).unwrap_or_default();
                if !valid_schedule_name(&sched) {
                    r.error(
                        name.pos,
                        Code::Schedule,
                        format!(
                            "schedule name `{}`: use letters, digits, `-`, `_` or `.` (at most 128){}",
                            shown(&sched),
                            if sched.len() > 128 { "; give the trigger a shorter `name`" } else { "" }
                        ),
                    );
                }
                if let Some((_, first)) = names.iter().find(|(n, _)| *n == sched) {
                    r.error(
                        name.pos,
                        Code::DagDuplicate,
                        format!("two cron triggers are named `{sched}` (the first on line {})", first.line),
                    );
                }
                names.push((sched, t.pos));
                let tz = timezone.as_ref().map_or("UTC", |t| t.text.as_str());
                if let Err(stoa_rules::cron::SpecError::Cron(m)) = stoa_rules::cron::Spec::parse(&cron.text, "UTC") {
                    r.error(cron.pos, Code::Schedule, format!("cron: {m}"));
                }
                if let (Err(e), Some(tzn)) = (stoa_rules::cron::time_zone(tz), timezone) {
                    r.error(tzn.pos, Code::Schedule, format!("timezone: {e}"));
                }
                let cu = catch_up.as_ref().map(|c| (CatchUp::parse(&c.text), c));
                if let Some((None, c)) = &cu {
                    r.error(
                        c.pos,
                        Code::Schedule,
                        format!("catch_up `{}`: expected \"skip\", \"one\" or \"all\"", shown(&c.text)),
                    );
                }
                if let Some((n, pos)) = max_catch_up {
                    if !(1..=100_000).contains(n) {
                        r.error(*pos, Code::Schedule, "max_catch_up must be between 1 and 100000");
                    } else if !matches!(cu, Some((Some(CatchUp::All), _))) {
                        r.error(*pos, Code::Schedule, "max_catch_up applies only with catch_up: all");
                    }
                }
                check_params(r, dag, t, &mut sandbox, true);
            }
            TriggerKind::Signal { signal } => {
                if let Some((_, first)) = signals.iter().find(|(n, _)| *n == signal.text) {
                    r.error(
                        signal.pos,
                        Code::DagDuplicate,
                        format!(
                            "two triggers subscribe to signal `{}` (the first on line {})",
                            signal.text, first.line
                        ),
                    );
                }
                signals.push((signal.text.clone(), signal.pos));
                if signal.text.is_empty() || signal.text.len() > 256 {
                    r.format(signal.pos, "a signal name is 1 to 256 bytes");
                }
                check_params(r, dag, t, &mut sandbox, false);
            }
        }
    }
}

fn check_params(
    r: &mut Reader<'_>,
    dag: &Dag,
    t: &Trigger,
    sandbox: &mut Option<stoa_rules::sandbox::Sandbox>,
    cron: bool,
) {
    let Some(params) = &t.params else {
        if cron {
            for p in dag.params.iter().filter(|p| p.default.is_none()) {
                r.error(
                    t.pos,
                    Code::DagReference,
                    format!(
                        "this cron trigger gives no parameters, but `{}` is required (it has no default)",
                        p.name.text
                    ),
                );
            }
        }
        return;
    };
    for (name, v) in params {
        let Some(decl) = dag.params.iter().find(|p| p.name.text == name.text) else {
            let hint = closest(&name.text, dag.params.iter().map(|p| p.name.text.as_str()))
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_default();
            r.error(
                name.pos,
                Code::DagReference,
                format!("the trigger gives `{}`, but the definition has no parameter `{}`{hint}", name.text, name.text),
            );
            continue;
        };
        if let Kind::Scalar(Scalar::Str(s)) = &v.kind {
            if s.contains("${") {
                check_computed(r, s, v.pos, name, cron, sandbox);
                continue;
            }
        }
        if contains_ref(v) {
            r.error(
                v.pos,
                Code::DagReference,
                format!(
                    "parameter `{}` of a trigger: a reference may only stand alone, as `${{{{ ... }}}}`",
                    name.text
                ),
            );
        } else if matches!(v.kind, Kind::Scalar(Scalar::Null)) {
            r.error(v.pos, Code::DagType, format!("parameter `{}` of a trigger is null; leave it out", name.text));
        } else if !decl.ty.holds(v) {
            r.error(
                v.pos,
                Code::DagType,
                format!("parameter `{}` is {}, but the trigger gives {}", name.text, decl.ty.a(), v.what()),
            );
        }
    }
    for p in dag.params.iter().filter(|p| p.default.is_none()) {
        if !params.iter().any(|(n, _)| n.text == p.name.text) {
            r.error(
                t.pos,
                Code::DagReference,
                format!("the trigger does not give parameter `{}`, which is required (it has no default)", p.name.text),
            );
        }
    }
}

fn contains_ref(v: &Node) -> bool {
    match &v.kind {
        Kind::Scalar(Scalar::Str(s)) => s.contains("${"),
        Kind::Seq(items) => items.iter().any(contains_ref),
        Kind::Map(entries) => entries.iter().any(|(_, v)| contains_ref(v)),
        _ => false,
    }
}

/// A trigger parameter that computes: a signal trigger's may, from
/// `payload` and `signal`; a cron tick has nothing to compute from.
fn check_computed(
    r: &mut Reader<'_>,
    s: &str,
    pos: Pos,
    name: &Name,
    cron: bool,
    sandbox: &mut Option<stoa_rules::sandbox::Sandbox>,
) {
    let ps = match pieces(s) {
        Ok(ps) => ps,
        Err(bad) => return r.error(pos, Code::DagReference, bad.message),
    };
    let [Piece::Expr(inner, _)] = ps.as_slice() else {
        return r.error(
            pos,
            Code::DagReference,
            format!(
                "parameter `{}` of a trigger: the trigger starts the instance, so there are no parameters or outputs to read yet{}",
                name.text,
                if cron { "" } else { "; compute from the signal with `${{ payload.FIELD }}`" }
            ),
        );
    };
    if cron {
        return r.error(
            pos,
            Code::DagReference,
            format!(
                "parameter `{}` of a cron trigger: a tick's parameters are literal values (a parameter's `default` may compute)",
                name.text
            ),
        );
    }
    if !compute::refs(inner).is_empty() {
        return r.error(
            pos,
            Code::DagReference,
            format!(
                "parameter `{}` of a trigger: the trigger starts the instance, so there are no parameters or outputs to read yet; the expression reads `payload` and `signal`",
                name.text
            ),
        );
    }
    let sb = sandbox.get_or_insert_with(|| stoa_rules::sandbox::Sandbox::new(&stoa_rules::limits::Limits::default()));
    if let Err(m) = compute::check(sb, inner, &["payload", "signal"]) {
        r.error(pos, Code::DagFormat, format!("parameter `{}` of a trigger is not a Rhai expression: {m}", name.text));
    }
}

/// A YAML value as a TOML inline value (a cron trigger's literal params).
fn toml_value(node: &Node) -> String {
    match &node.kind {
        Kind::Scalar(Scalar::Null) => "\"\"".into(),
        Kind::Scalar(Scalar::Bool(b)) => b.to_string(),
        Kind::Scalar(Scalar::Int(i)) => i.to_string(),
        Kind::Scalar(Scalar::Float(f)) if f.is_nan() => "nan".into(),
        Kind::Scalar(Scalar::Float(f)) if f.is_infinite() => (if *f > 0.0 { "inf" } else { "-inf" }).into(),
        Kind::Scalar(Scalar::Float(f)) => {
            let s = format!("{f:?}");
            if s.contains(['.', 'e', 'E']) {
                s
            } else {
                format!("{s}.0")
            }
        }
        Kind::Scalar(Scalar::Str(s)) => rhai_str(s),
        Kind::Seq(items) => format!("[{}]", items.iter().map(toml_value).collect::<Vec<_>>().join(", ")),
        Kind::Map(entries) => {
            let parts: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{} = {}", rhai_str(k.as_str().unwrap_or_default()), toml_value(v)))
                .collect();
            if parts.is_empty() {
                "{}".into()
            } else {
                format!("{{ {} }}", parts.join(", "))
            }
        }
    }
}

/// The manifest's `[schedules]` and `[signals]` tables.
pub fn manifest(out: &mut String, dag: &Dag, src: &str) {
    let mut deliver: Vec<&str> =
        dag.steps.iter().filter_map(|s| s.gate.as_ref().map(|g| g.signal.text.as_str())).collect();
    deliver.sort_unstable();
    deliver.dedup();
    for t in &dag.triggers {
        let TriggerKind::Cron { cron, timezone, catch_up, max_catch_up, .. } = &t.kind else { continue };
        let name = schedule_name(dag, t).unwrap_or_default();
        let _ = writeln!(out, "\n# Cron trigger ({src}:{}:{}).", t.pos.line, t.pos.col);
        let _ = writeln!(out, "[schedules.{}]\ncron = {}", rhai_str(&name), rhai_str(&cron.text));
        if let Some(tz) = timezone {
            let _ = writeln!(out, "timezone = {}", rhai_str(&tz.text));
        }
        if let Some(c) = catch_up {
            let _ = writeln!(out, "catch_up = {}", rhai_str(&c.text));
        }
        if let Some((n, _)) = max_catch_up {
            let _ = writeln!(out, "max_catch_up = {n}");
        }
        let fields: Vec<String> =
            t.params.iter().flatten().map(|(k, v)| format!("{} = {}", rhai_str(&k.text), toml_value(v))).collect();
        let fields = if fields.is_empty() { "{}".to_string() } else { format!("{{ {} }}", fields.join(", ")) };
        let _ = writeln!(out, "facts = [{{ type = \"Params\", fields = {fields} }}]");
    }
    let mut subs: Vec<(&str, bool, bool, Option<Pos>)> = Vec::new();
    for t in &dag.triggers {
        if let TriggerKind::Signal { signal } = &t.kind {
            subs.push((&signal.text, true, deliver.contains(&signal.text.as_str()), Some(t.pos)));
        }
    }
    for d in deliver {
        if !subs.iter().any(|(s, ..)| *s == d) {
            subs.push((d, false, true, None));
        }
    }
    subs.sort_by(|a, b| a.0.cmp(b.0));
    for (name, start, deliver, pos) in subs {
        let why = match (pos, deliver) {
            (Some(p), true) => format!("A signal trigger ({src}:{}:{}), and a gate waits for it", p.line, p.col),
            (Some(p), false) => format!("A signal trigger ({src}:{}:{})", p.line, p.col),
            (None, _) => "A gate waits for it: delivered to the running instances".into(),
        };
        let _ = writeln!(out, "\n# {why}.\n[signals.{}]\nstart = {start}\ndeliver = {deliver}", rhai_str(name));
    }
}

/// The signal names that start instances.
fn signal_names(dag: &Dag) -> Vec<&str> {
    dag.triggers
        .iter()
        .filter_map(|t| match &t.kind {
            TriggerKind::Signal { signal } => Some(signal.text.as_str()),
            _ => None,
        })
        .collect()
}

/// Extra `match` lines of `dag start`: the signal that started the
/// instance, if a trigger did.
pub fn start_match(out: &mut String, dag: &Dag) {
    let names = signal_names(dag);
    if !names.is_empty() {
        let list: Vec<String> = names.iter().map(|n| rhai_str(n)).collect();
        let _ = writeln!(out, "        started: collect(Signal(name in [{}]))", list.join(", "));
    }
}

/// Statements of `dag start`, after `p` (the given parameters) and
/// `errors`: an instance a signal started, without a `Params` fact, takes
/// its parameters from the trigger.
pub fn start_params(out: &mut String, dag: &Dag) {
    let triggers: Vec<(&Name, &Trigger)> = dag
        .triggers
        .iter()
        .filter_map(|t| match &t.kind {
            TriggerKind::Signal { signal } => Some((signal, t)),
            _ => None,
        })
        .collect();
    if triggers.is_empty() {
        return;
    }
    let declared: Vec<String> = dag.params.iter().map(|p| rhai_str(&p.name.text)).collect();
    out.push_str("        // Started by a signal trigger: its parameters come from the signal.\n");
    out.push_str("        if given.len() == 0 && started.len() > 0 {\n");
    out.push_str(
        "            let signal = started[0];\n            let payload = signal.payload;\n            p = #{};\n",
    );
    for (k, (signal, t)) in triggers.iter().enumerate() {
        let _ = writeln!(
            out,
            "            {}if signal.name == {} {{",
            if k == 0 { "" } else { "} else " },
            rhai_str(&signal.text)
        );
        match &t.params {
            None => {
                let _ = writeln!(out, "                // The payload's fields that name parameters.");
                let _ = writeln!(out, "                if type_of(payload) == \"map\" {{");
                let _ = writeln!(
                    out,
                    "                    for k in payload.keys() {{ if k in [{}] {{ p[k] = payload[k]; }} }}",
                    declared.join(", ")
                );
                let _ = writeln!(out, "                }}");
            }
            Some(ps) => {
                for (i, (name, v)) in ps.iter().enumerate() {
                    let expr = crate::emit::value_of(v);
                    let var = format!("t{i}");
                    let _ = writeln!(out, "                {{");
                    let _ = writeln!(out, "                    let {var} = ();");
                    compute::guarded(
                        out,
                        "                    ",
                        &var,
                        &expr,
                        &format!("{}` of signal trigger `{}", name.text, signal.text),
                        "errors",
                        None,
                    );
                    let _ = writeln!(out, "                    p[{}] = {var};", rhai_str(&name.text));
                    let _ = writeln!(out, "                }}");
                }
            }
        }
    }
    out.push_str("            }\n        }\n");
}
