//! Restarting an instance, and the view of an instance across restarts.
//!
//! A failed instance is terminal (it refuses inputs, and its history is
//! what happened), so a restart is a **new instance** of the same
//! definition, started with:
//! - a `Params` fact holding the old instance's parameters (as checked and
//!   defaulted then: a default that computed is not computed again);
//! - a `Restart` fact: `of` (the previous run's id), `from` (the step to
//!   run again, `""` for the steps that did not finish), `attempt` (1 for
//!   the first run, so 2 for its first restart), `steps` (the previous
//!   run's `done` steps with their outputs) and `produced` (which run
//!   produced each of those, carried from the previous run's own restart).
//!
//! The compiled rule `dag restart` (salience above `step ID new`) decides
//! which of those steps the new instance keeps: every `done` one that is
//! not `from` nor downstream of it. It knows the graph, so the client does
//! not need the definition, and a restart on a newer version of the
//! definition keeps only the steps that version still has. It records in
//! `Restart.kept` the run that produced each kept step, which is the
//! aggregated view: walking `of` back gives every run, and the last run's
//! `kept` says which run produced each step's final state.
//!
//! The start's request id is `restart:<previous id>:<from>`, so repeating
//! the same restart gives the same instance instead of a second one.

use std::fmt::Write;

use serde_json::{json, Map, Value};

use crate::expr::rhai_str;
use crate::model::Dag;
use crate::validate::Graph;

/// Where a restart starts again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum From {
    /// The steps that did not finish (failed, or never reached): every
    /// `done` step is kept.
    Unfinished,
    /// This step and what is downstream of it run again.
    Step(String),
    /// Everything runs again, with the same parameters.
    Start,
}

impl From {
    fn text(&self) -> &str {
        match self {
            From::Unfinished => "",
            From::Step(s) => s,
            From::Start => "*",
        }
    }
}

/// One run of an instance, as the server shows it.
#[derive(Clone, Debug)]
pub struct Run {
    /// The workflow id.
    pub id: String,
    /// Its pack (the definition's id).
    pub pack: String,
    /// `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// Why it failed, if it did.
    pub reason: String,
    /// Its facts: type and fields.
    pub facts: Vec<(String, Value)>,
}

impl Run {
    fn first(&self, ty: &str) -> Option<&Value> {
        self.facts.iter().find(|(t, _)| t == ty).map(|(_, f)| f)
    }

    fn steps(&self) -> impl Iterator<Item = &Value> {
        self.facts.iter().filter(|(t, _)| t == "Step").map(|(_, f)| f)
    }

    /// The run this one restarted, if it is a restart.
    pub fn previous(&self) -> Option<&str> {
        self.first("Restart").and_then(|r| r["of"].as_str())
    }

    fn attempt(&self) -> i64 {
        self.first("Restart").and_then(|r| r["attempt"].as_i64()).unwrap_or(1)
    }
}

/// The facts and request id that restart `run`, or why it cannot be.
pub fn plan(run: &Run, from: &From) -> Result<(Vec<(String, Value)>, String), String> {
    let Some(dag) = run.first("Dag") else {
        return Err(format!(
            "{} has no Dag fact: it is not an instance of a DAG definition, or it failed at its start ({}), \
             before any step; start a new instance instead",
            run.id,
            if run.reason.is_empty() { "no reason given" } else { run.reason.as_str() }
        ));
    };
    if run.status == "running" {
        return Err(format!(
            "{} is running: cancel it first (stoa cancel {}), or hold a step with a breakpoint",
            run.id, run.id
        ));
    }
    let ids: Vec<&str> = run.steps().filter_map(|s| s["id"].as_str()).collect();
    match from {
        From::Step(s) if !ids.contains(&s.as_str()) => {
            return Err(format!("{} has no step `{s}`; its steps: {}", run.id, ids.join(", ")));
        }
        From::Unfinished if run.steps().all(|s| s["state"] == "done" || s["state"] == "skipped") => {
            return Err(format!("every step of {} finished ({}); restart --from a step, or --all", run.id, run.status));
        }
        _ => {}
    }
    let mut steps = Map::new();
    if *from != From::Start {
        for s in run.steps().filter(|s| s["state"] == "done") {
            if let Some(id) = s["id"].as_str() {
                let mut kept = s.clone();
                if let Some(m) = kept.as_object_mut() {
                    m.remove("error");
                }
                steps.insert(id.to_string(), kept);
            }
        }
    }
    let produced = run.first("Restart").map_or(json!({}), |r| r.get("kept").cloned().unwrap_or(json!({})));
    let params = dag.get("params").cloned().unwrap_or(json!({}));
    let restart = json!({
        "of": run.id,
        "from": from.text(),
        "attempt": run.attempt() + 1,
        "steps": steps,
        "produced": produced,
    });
    let request = format!("restart:{}:{}", run.id, from.text());
    Ok((vec![("Params".into(), params), ("Restart".into(), restart)], request))
}

/// The view of an instance across its runs (oldest first): each run, then
/// each step of the last one with the run that produced its state.
pub fn view(runs: &[Run]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<4} {:<40} {:<10} {:<12} REASON", "RUN", "ID", "STATUS", "FROM");
    for (i, r) in runs.iter().enumerate() {
        let from = match r.first("Restart").and_then(|x| x["from"].as_str()) {
            None => "-".to_string(),
            Some("") => "unfinished".to_string(),
            Some("*") => "start".to_string(),
            Some(s) => s.to_string(),
        };
        let line = format!("{:<4} {:<40} {:<10} {:<12} {}", i + 1, r.id, r.status, from, r.reason);
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if let Some(last) = runs.last() {
        let _ = writeln!(out, "\n{:<24} {:<10} RUN", "STEP", "STATE");
        for (id, state, by) in producers(last) {
            let n = runs.iter().position(|r| r.id == by).map_or("?".to_string(), |i| (i + 1).to_string());
            let _ = writeln!(out, "{id:<24} {state:<10} {n} {by}");
        }
    }
    out
}

/// Each step of a run, its state, and the run that produced that state.
/// A waiting step a breakpoint names shows as `held` (it may still wait
/// for its dependencies too; `stoa explain` says which).
pub fn producers(run: &Run) -> Vec<(String, String, String)> {
    let kept = run.first("Restart").and_then(|r| r.get("kept")).and_then(Value::as_object);
    let held: Vec<&str> =
        run.facts.iter().filter(|(t, _)| t == "Breakpoint").filter_map(|(_, f)| f["step"].as_str()).collect();
    run.steps()
        .filter_map(|s| {
            let id = s["id"].as_str()?;
            let by = kept.and_then(|k| k.get(id)).and_then(Value::as_str).unwrap_or(&run.id);
            let mut state = s["state"].as_str().unwrap_or("?").to_string();
            if state == "waiting" && (held.contains(&id) || held.contains(&"*")) {
                state = "held".into();
            }
            Some((id.to_string(), state, by.to_string()))
        })
        .collect()
}

/// The views as JSON, for `--json`.
pub fn view_json(runs: &[Run]) -> Value {
    let steps: Vec<Value> = runs
        .last()
        .map(producers)
        .unwrap_or_default()
        .into_iter()
        .map(|(id, state, run)| json!({ "step": id, "state": state, "run": run }))
        .collect();
    let list: Vec<Value> = runs
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "status": r.status,
                "reason": r.reason,
                "from": r.first("Restart").and_then(|x| x["from"].as_str()),
            })
        })
        .collect();
    json!({ "runs": list, "steps": steps })
}

/// The `Restart` fact's schema.
pub fn manifest(out: &mut String) {
    out.push_str(
        r#"
# A restart of a previous run (see docs/dags.md, "Restart").
[facts.Restart]
of = "string"
from = "string"
attempt = "int"
steps = "map"
produced = "map"
kept = "map?"
"#,
    );
}

/// The rule that keeps a previous run's steps in a restart: in
/// dependency order, a step runs again if it is `from` or depends on one
/// that runs again; the others that were done are kept as they were.
pub fn rules(out: &mut String, dag: &Dag, g: &Graph) {
    let order: Vec<String> = crate::validate::topo(&g.deps)
        .into_iter()
        .map(|i| {
            let deps: Vec<String> = g.deps[i].iter().map(|&j| rhai_str(&dag.steps[j].id.text)).collect();
            format!("[{}, [{}]]", rhai_str(&dag.steps[i].id.text), deps.join(", "))
        })
        .collect();
    let _ = write!(
        out,
        r#"// A restart of a previous run: its done steps are kept, but `from` and
// what is downstream of it (in dependency order) run again.
rule "dag restart" {{
    salience 20
    match {{
        d: Dag(state == "running")
        r: Restart()
        not Step()
    }}
    action {{
        let order = [{}];
        let again = #{{}};
        for e in order {{
            if r.from == "*" || e[0] == r.from {{ again[e[0]] = true; continue; }}
            for dep in e[1] {{ if dep in again {{ again[e[0]] = true; break; }} }}
        }}
        let kept = #{{}};
        for e in order {{
            let id = e[0];
            let old = r.steps[id];
            if old != () && old.state == "done" && !(id in again) {{
                insert("Step", #{{ id: id, state: "done", outputs: old.outputs, errors: old.errors, timeouts: old.timeouts }});
                kept[id] = if r.produced[id] != () {{ r.produced[id] }} else {{ r.of }};
            }}
        }}
        modify(r, #{{ kept: kept }});
    }}
}}

"#,
        order.join(", ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, status: &str, facts: Vec<(&str, Value)>) -> Run {
        Run {
            id: id.into(),
            pack: "etl".into(),
            status: status.into(),
            reason: String::new(),
            facts: facts.into_iter().map(|(t, f)| (t.to_string(), f)).collect(),
        }
    }

    #[test]
    fn a_plan_carries_the_done_steps_and_the_parameters() {
        let r = run(
            "wf_1",
            "failed",
            vec![
                ("Dag", json!({"id": "etl", "state": "failed", "params": {"day": "d"}})),
                ("Step", json!({"id": "a", "state": "done", "outputs": {"n": 1}, "errors": 0, "timeouts": 0})),
                (
                    "Step",
                    json!({"id": "b", "state": "failed", "outputs": {}, "errors": 2, "timeouts": 0, "error": "x"}),
                ),
            ],
        );
        let (facts, request) = plan(&r, &From::Unfinished).unwrap();
        assert_eq!(request, "restart:wf_1:");
        assert_eq!(facts[0], ("Params".into(), json!({"day": "d"})));
        assert_eq!(
            facts[1].1,
            json!({"of": "wf_1", "from": "", "attempt": 2, "produced": {},
                   "steps": {"a": {"id": "a", "state": "done", "outputs": {"n": 1}, "errors": 0, "timeouts": 0}}})
        );
        assert_eq!(plan(&r, &From::Step("c".into())).unwrap_err(), "wf_1 has no step `c`; its steps: a, b");
        assert_eq!(plan(&r, &From::Start).unwrap().0[1].1["steps"], json!({}));
        let mut held = r.clone();
        held.facts.push(("Breakpoint".into(), json!({"step": "b"})));
        held.facts.push(("Step".into(), json!({"id": "c", "state": "waiting"})));
        held.facts.push(("Breakpoint".into(), json!({"step": "c"})));
        let states: Vec<String> = producers(&held).into_iter().map(|(id, st, _)| format!("{id} {st}")).collect();
        assert_eq!(states, ["a done", "b failed", "c held"]);
        let running = Run { status: "running".into(), ..r.clone() };
        assert!(plan(&running, &From::Unfinished).unwrap_err().contains("is running"));
    }
}
