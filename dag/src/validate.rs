//! The graph checks of a definition: step ids unique, dependencies that
//! exist, no cycle (named), references to declared parameters and to
//! outputs of upstream steps, the types of values whose type is known.
//! Every problem is reported, each at its place in the YAML.

use std::collections::HashMap;

use stoa_rules::diagnostic::{closest, shown, SourceMap};
use stoa_rules::{Code, Pos};

use crate::expr::{pieces, Piece, Ref};
use crate::model::{Dag, ParamType, Reader, Step, StepType};
use crate::yaml::{Kind, Node, Scalar};

/// What the compiler needs from the checks.
pub struct Graph {
    /// Step id to index.
    pub index: HashMap<String, usize>,
    /// Per step, its dependencies' indices (in `depends_on` order).
    pub deps: Vec<Vec<usize>>,
    /// Per step, whether each other step is upstream of it (transitively).
    pub upstream: Vec<Vec<bool>>,
    /// The graphs of foreach bodies, by the foreach step's index.
    pub bodies: HashMap<usize, Graph>,
}

/// Where a reference is: the node's position moved to the `${` in the
/// source text, found from the node's start (a YAML scalar may be quoted,
/// folded or span lines, so offsets in its value are not offsets in the
/// text).
pub(crate) fn ref_pos(map: &SourceMap, node_pos: Pos, r: &Ref) -> Pos {
    let start = map.offset(node_pos);
    let text = &map.text[start.min(map.text.len())..];
    // The reference as written may have spaces inside the braces.
    let key = match r {
        Ref::Param(p) => p.clone(),
        Ref::Output { name, .. } => name.clone(),
    };
    let mut from = 0;
    while let Some(i) = text[from..].find("${") {
        let at = from + i;
        let inner = text[at + 2..].split('}').next().unwrap_or("");
        if inner.trim().split('@').next().map(str::trim) == Some(key.as_str()) {
            return map.pos(start + at);
        }
        from = at + 2;
        if from > 4096 {
            break;
        }
    }
    node_pos
}

struct Ctx<'a, 'r> {
    r: &'a mut Reader<'r>,
    map: &'a SourceMap,
    dag: &'a Dag,
    index: &'a HashMap<String, usize>,
    /// Built on the first condition to check.
    sandbox: Option<stoa_rules::sandbox::Sandbox>,
}

impl Ctx<'_, '_> {
    /// Checks every reference in a text: params declared, output steps
    /// known, upstream (`upstream(i)`), with that output.
    fn refs_in_text(&mut self, text: &str, pos: Pos, reader: &str, upstream: &dyn Fn(usize) -> bool) -> Vec<Piece> {
        let ps = match pieces(text) {
            Ok(p) => p,
            Err(bad) => {
                self.r.error(pos, Code::DagReference, bad.message);
                return Vec::new();
            }
        };
        for r in &crate::compute::refs(&ps) {
            let at = ref_pos(self.map, pos, r);
            match r {
                Ref::Param(p) => {
                    if !self.dag.params.iter().any(|d| &d.name.text == p) {
                        let hint = closest(p, self.dag.params.iter().map(|d| d.name.text.as_str()))
                            .map(|c| format!("; did you mean `{c}`?"))
                            .unwrap_or_default();
                        let msg = format!(
                            "{reader} reads `${{{}}}`, but the definition has no parameter `{}`{hint}",
                            shown(p),
                            shown(p)
                        );
                        self.r.error(at, Code::DagReference, msg);
                    }
                }
                Ref::Output { name, step } => {
                    let Some(&j) = self.index.get(step) else {
                        let mut hint = closest(step, self.dag.steps.iter().map(|s| s.id.text.as_str()))
                            .map(|c| format!("; did you mean `{c}`?"))
                            .unwrap_or_default();
                        if self.dag.iteration.is_some() {
                            hint = format!(" in this foreach (its steps read their own steps' outputs; pass others in through the foreach step's `params`){hint}");
                        }
                        self.r.error(
                            at,
                            Code::DagReference,
                            format!("{reader} reads `{}`, but there is no step `{}`{hint}", r.text(), shown(step)),
                        );
                        continue;
                    };
                    if !upstream(j) {
                        let msg = format!(
                            "{reader} reads `{}`, but step `{step}` is not upstream of it (add it to `depends_on`, directly or through another step)",
                            r.text()
                        );
                        self.r.error(at, Code::DagReference, msg);
                        continue;
                    }
                    let s = &self.dag.steps[j];
                    let names: Vec<&str> = outputs_of(s);
                    if !names.contains(&name.as_str()) {
                        let hint = closest(name, names.iter().copied())
                            .map(|c| format!("; did you mean `{c}`?"))
                            .unwrap_or_else(|| {
                                if names.is_empty() {
                                    format!(
                                        " (it declares no outputs{})",
                                        if matches!(s.ty, StepType::Function(_) | StepType::Subworkflow(_)) {
                                            ": list them under `outputs`"
                                        } else {
                                            ""
                                        }
                                    )
                                } else {
                                    format!(" (its outputs: {})", names.join(", "))
                                }
                            });
                        self.r.error(
                            at,
                            Code::DagReference,
                            format!(
                                "{reader} reads `{}`, but step `{step}` has no output `{}`{hint}",
                                r.text(),
                                shown(name)
                            ),
                        );
                    }
                }
            }
        }
        for e in crate::compute::exprs(&ps) {
            let sandbox = self
                .sandbox
                .get_or_insert_with(|| stoa_rules::sandbox::Sandbox::new(&stoa_rules::limits::Limits::default()));
            if let Err(m) = crate::compute::check(sandbox, e, &[]) {
                self.r.error(
                    pos,
                    Code::DagFormat,
                    format!("{reader} computes a value that is not a Rhai expression: {m}"),
                );
            }
        }
        ps
    }

    /// Every reference in a value (strings inside lists and maps too).
    fn refs_in_value(&mut self, node: &Node, reader: &str, upstream: &dyn Fn(usize) -> bool) {
        match &node.kind {
            Kind::Scalar(Scalar::Str(s)) if s.contains("${") => {
                self.refs_in_text(s, node.pos, reader, upstream);
            }
            Kind::Seq(items) => items.iter().for_each(|i| self.refs_in_value(i, reader, upstream)),
            Kind::Map(entries) => entries.iter().for_each(|(_, v)| self.refs_in_value(v, reader, upstream)),
            _ => {}
        }
    }

    /// A value that must be a string (a duration, a pack name): a literal
    /// string, or text with references, or a lone reference to a string
    /// parameter.
    fn string_value(&mut self, node: &Node, what: &str) {
        if let Kind::Scalar(Scalar::Str(s)) = &node.kind {
            if let Ok([Piece::Ref(Ref::Param(p), _)]) = pieces(s).as_deref() {
                if let Some(d) = self.dag.params.iter().find(|d| &d.name.text == p) {
                    if d.ty != ParamType::String {
                        let at = ref_pos(self.map, node.pos, &Ref::Param(p.clone()));
                        self.r.error(
                            at,
                            Code::DagType,
                            format!("{what} must be a string, but parameter `{p}` is {}", d.ty.a()),
                        );
                    }
                }
            }
        }
    }
}

/// A condition must be a Rhai expression that reads nothing but its
/// references (`rows > 5` instead of `${rows@a} > 5` is an undefined
/// variable); checked here so that the error points into the YAML, not
/// into the compiled rules.
fn check_condition(cx: &mut Ctx<'_, '_>, ps: &[Piece], pos: Pos, what: &str) {
    let code: String = ps
        .iter()
        .map(|p| match p {
            Piece::Lit(l) => l.as_str(),
            Piece::Ref(..) | Piece::Expr(..) => "()",
        })
        .collect();
    let sandbox =
        cx.sandbox.get_or_insert_with(|| stoa_rules::sandbox::Sandbox::new(&stoa_rules::limits::Limits::default()));
    if let Err(errors) = sandbox.compile(&code, &[], true) {
        if let Some(e) = errors.first() {
            cx.r.error(pos, Code::DagFormat, format!("{what} is not a valid expression: {}", e.message));
        }
    }
}

/// The names a step's outputs may be read by.
pub fn outputs_of(s: &Step) -> Vec<&str> {
    match s.ty {
        StepType::Noop => s.params.iter().map(|(n, _)| n.text.as_str()).collect(),
        StepType::Sleep => Vec::new(),
        StepType::Foreach(_) => vec!["total", "succeeded", "failed"],
        _ => s.outputs.iter().map(|n| n.text.as_str()).collect(),
    }
}

pub(crate) fn check(r: &mut Reader<'_>, map: &SourceMap, dag: &Dag) -> Graph {
    // Unique ids, parameters and outputs.
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, s) in dag.steps.iter().enumerate() {
        if let Some(&first) = index.get(&s.id.text) {
            let line = dag.steps[first].id.pos.line;
            r.error(
                s.id.pos,
                Code::DagDuplicate,
                format!("step `{}` is defined twice (first on line {line})", s.id.text),
            );
        } else {
            index.insert(s.id.text.clone(), i);
        }
    }
    let mut seen: HashMap<&str, u32> = HashMap::new();
    for p in &dag.params {
        if let Some(line) = seen.insert(&p.name.text, p.name.pos.line) {
            r.error(
                p.name.pos,
                Code::DagDuplicate,
                format!("parameter `{}` is declared twice (first on line {line})", p.name.text),
            );
        }
    }
    // Dependencies that exist.
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(dag.steps.len());
    for s in &dag.steps {
        let mut ds = Vec::new();
        for d in &s.depends_on {
            match index.get(&d.step.text) {
                Some(&j) if ds.contains(&j) => r.error(
                    d.step.pos,
                    Code::DagDuplicate,
                    format!("step `{}` depends on `{}` twice", s.id.text, d.step.text),
                ),
                Some(&j) => ds.push(j),
                None => {
                    let hint = closest(&d.step.text, dag.steps.iter().map(|s| s.id.text.as_str()))
                        .map(|c| format!("; did you mean `{c}`?"))
                        .unwrap_or_default();
                    let msg = format!(
                        "step `{}` depends on `{}`, which is not a step of this definition{hint}",
                        s.id.text,
                        shown(&d.step.text)
                    );
                    r.error(d.step.pos, Code::DagReference, msg);
                }
            }
        }
        deps.push(ds);
    }
    let n = dag.steps.len();
    let cyclic = cycles(r, dag, &deps);
    // Upstream sets, in an order where dependencies come first; steps on a
    // cycle get none beyond their direct dependencies.
    let mut upstream = vec![vec![false; n]; n];
    let order = topo(&deps);
    for &i in &order {
        for &j in &deps[i] {
            upstream[i][j] = true;
            if !cyclic[j] {
                let row = upstream[j].clone();
                for (k, up) in row.into_iter().enumerate() {
                    upstream[i][k] |= up;
                }
            }
        }
    }
    let mut cx = Ctx { r, map, dag, index: &index, sandbox: None };
    for (i, s) in dag.steps.iter().enumerate() {
        let up = &upstream[i];
        let reader = format!("step `{}`", s.id.text);
        for (_, v) in &s.params {
            cx.refs_in_value(v, &reader, &|j| up[j]);
        }
        if let StepType::Subworkflow(w) = &s.ty {
            cx.refs_in_value(w, &reader, &|j| up[j]);
            cx.string_value(w, "the `workflow` of a subworkflow step");
        }
        if let Some(f) = &s.facts {
            cx.refs_in_value(f, &reader, &|j| up[j]);
        }
        if let StepType::Foreach(f) = &s.ty {
            match &f.over {
                crate::model::Over::List(o) => cx.refs_in_value(o, &reader, &|j| up[j]),
                crate::model::Over::Range { from, to } => {
                    cx.refs_in_value(from, &reader, &|j| up[j]);
                    cx.refs_in_value(to, &reader, &|j| up[j]);
                }
            }
        }
        if let (StepType::Sleep, Some((_, d))) = (&s.ty, s.params.iter().find(|(n, _)| n.text == "duration")) {
            cx.string_value(d, "the `duration` of a sleep step");
        }
        for d in &s.depends_on {
            if let Some(w) = &d.when {
                // A condition reads its own dependency or what is upstream.
                let dep = index.get(&d.step.text).copied();
                let what = format!("the condition on `{}` of {reader}", d.step.text);
                let ps = cx.refs_in_text(&w.text, w.pos, &what, &|j| up[j] || Some(j) == dep);
                if !ps.is_empty() {
                    check_condition(&mut cx, &ps, w.pos, &what);
                }
            }
        }
        if let Some(g) = &s.gate {
            for (_, v) in &g.fields {
                cx.refs_in_value(v, &reader, &|j| up[j]);
            }
        }
    }
    for (name, v) in &dag.outputs {
        cx.refs_in_value(v, &format!("the definition's output `{}`", name.text), &|_| true);
    }
    for (i, p) in dag.params.iter().enumerate() {
        if let Some(d) = &p.default {
            cx.refs_in_value(d, &format!("the default of `{}`", p.name.text), &|_| false);
            if crate::compute::computes(d) {
                crate::compute::check_default(cx.r, map, dag, i, d);
            } else if matches!(&d.kind, Kind::Scalar(Scalar::Str(s)) if s.contains("${")) {
                cx.r.error(
                    d.pos,
                    Code::DagReference,
                    format!(
                        "the default of `{}` may not hold references; a default that computes is `${{{{ ... }}}}`",
                        p.name.text
                    ),
                );
            }
        }
    }
    let mut bodies = HashMap::new();
    for (i, s) in dag.steps.iter().enumerate() {
        if let StepType::Foreach(f) = &s.ty {
            bodies.insert(i, check(cx.r, map, &f.body));
        }
    }
    Graph { index, deps, upstream, bodies }
}

/// Steps in an order where each comes after its dependencies (steps on a
/// cycle last, in definition order).
pub fn topo(deps: &[Vec<usize>]) -> Vec<usize> {
    let n = deps.len();
    let mut indeg: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut down: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &j in ds {
            down[j].push(i);
        }
    }
    let mut ready: std::collections::VecDeque<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    let mut out = Vec::with_capacity(n);
    let mut placed = vec![false; n];
    while let Some(i) = ready.pop_front() {
        out.push(i);
        placed[i] = true;
        for &k in &down[i] {
            indeg[k] -= 1;
            if indeg[k] == 0 {
                ready.push_back(k);
            }
        }
    }
    out.extend((0..n).filter(|&i| !placed[i]));
    out
}

/// Reports each cycle once, at the dependency that closes it, naming its
/// steps in order; returns which steps are on (or behind) a cycle.
fn cycles(r: &mut Reader<'_>, dag: &Dag, deps: &[Vec<usize>]) -> Vec<bool> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let n = deps.len();
    let mut mark = vec![Mark::New; n];
    let mut on_cycle = vec![false; n];
    // Iterative DFS: (step, next dependency to visit).
    for root in 0..n {
        if mark[root] != Mark::New {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::Open;
        while let Some(&mut (i, ref mut next)) = stack.last_mut() {
            if *next < deps[i].len() {
                let j = deps[i][*next];
                *next += 1;
                match mark[j] {
                    Mark::New => {
                        mark[j] = Mark::Open;
                        stack.push((j, 0));
                    }
                    Mark::Open => {
                        // The stack from j is a path where each step
                        // depends on the next, and i (its top) on j.
                        let from = stack.iter().position(|(s, _)| *s == j).unwrap_or(0);
                        let members: Vec<usize> = stack[from..].iter().map(|(s, _)| *s).collect();
                        members.iter().for_each(|&m| on_cycle[m] = true);
                        let step: &Step = &dag.steps[i];
                        let dep = step.depends_on.iter().find(|d| d.step.text == dag.steps[j].id.text);
                        let at = dep.map_or(step.id.pos, |d| d.step.pos);
                        let text = if members.len() == 1 {
                            format!("step `{}` depends on itself", step.id.text)
                        } else {
                            let mut names: Vec<String> =
                                members.iter().map(|&m| format!("`{}`", dag.steps[m].id.text)).collect();
                            names.push(format!("`{}`", dag.steps[j].id.text));
                            format!("the dependencies form a cycle: {} (each depends on the next)", names.join(" → "))
                        };
                        r.error(at, Code::DagCycle, text);
                    }
                    Mark::Done => {}
                }
            } else {
                mark[i] = Mark::Done;
                stack.pop();
            }
        }
    }
    // Steps behind a cycle cannot be ordered either.
    let mut changed = true;
    while changed {
        changed = false;
        for i in 0..n {
            if !on_cycle[i] && deps[i].iter().any(|&j| on_cycle[j]) {
                on_cycle[i] = true;
                changed = true;
            }
        }
    }
    on_cycle
}
