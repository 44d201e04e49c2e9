//! Breakpoints: a `Breakpoint { step }` fact holds a step before it starts
//! (`"*"` holds every step) until the fact is gone. A breakpoint is data
//! of the instance, not a flag of the server, so it is set and cleared by
//! what already changes facts: given with the start facts, asserted into a
//! running instance (`stoa assert`), retracted (`stoa retract`), or
//! cleared by a `dag.resume` signal to the instance (`stoa signal
//! dag.resume --workflow WF --payload '{"step": "load"}'`; without a
//! `step`, every breakpoint goes). And it survives restarts, upgrades and
//! a server crash like any fact.
//!
//! A held step stays `waiting`: its start rules have `not Breakpoint(...)`,
//! which `stoa explain` shows as what blocks them; nothing else about the
//! step changes, so resuming is the rule firing as it would have.

use std::fmt::Write;

use crate::expr::rhai_str;
use crate::model::Dag;

/// The signal that clears breakpoints.
pub const RESUME: &str = "dag.resume";

/// The fact's schema in the compiled manifest.
pub fn manifest(out: &mut String) {
    out.push_str("\n# Holds a step (`\"*\"`: every step) before it starts; see docs/dags.md.\n[facts.Breakpoint]\nstep = \"string\"\n");
}

/// The `match` line of a step's start rules.
pub fn guard(out: &mut String, step: &str) {
    let _ = writeln!(out, "        not Breakpoint(step in [{}, \"*\"])", rhai_str(step));
}

/// The rules that resume, and that drop a breakpoint on no step (a typo
/// would otherwise hold nothing, silently).
pub fn rules(out: &mut String, dag: &Dag) {
    let _ = writeln!(
        out,
        "// A `{RESUME}` signal clears the breakpoint on its payload's `step`, or\n// every one without a step.\nrule \"dag resume\" {{\n    match {{\n        s: Signal(name == {})\n        held: collect(Breakpoint())\n    }}\n    action {{\n        let step = if type_of(s.payload) == \"map\" {{ s.payload.step }} else {{ () }};\n        for b in held {{ if step == () || b.step == step {{ retract(b); }} }}\n        retract(s);\n    }}\n}}\n",
        rhai_str(RESUME)
    );
    let ids: Vec<String> = dag.steps.iter().map(|s| rhai_str(&s.id.text)).collect();
    let _ = writeln!(
        out,
        "// A breakpoint on no step of this definition holds nothing: it is\n// dropped, and the timeline says so.\nrule \"dag breakpoint unknown\" {{\n    match {{\n        b: Breakpoint(step != \"*\", !(step in [{}]))\n    }}\n    action {{\n        log(`breakpoint on step ${{b.step}} dropped: no such step`);\n        retract(b);\n    }}\n}}\n",
        ids.join(", ")
    );
}
