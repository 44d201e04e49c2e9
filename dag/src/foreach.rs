//! The rules of a foreach step in its parent's pack. Each iteration is a
//! child workflow of the body's own pack (`PARENT.STEP`), so that 100,000
//! iterations never live in one working memory: the parent keeps counts
//! (`Loop`) and the items in chunks (`LoopChunk`), and starts iterations
//! while fewer than the concurrency run.
//!
//! - `Loop { step, total, next, running, done, failed, from, params, error }`:
//!   `next` is the number of the next iteration to start; `from` the first
//!   number of a range; `params` the step's params, given to every
//!   iteration; `error` the first failure seen.
//! - `LoopChunk { step, base, items }`: items `base..base+CHUNK` of a list.
//!   A firing reads one chunk, not the whole list: a fact's fields are
//!   copied into the script that reads them, and a 100,000-item list copied
//!   per start would make a foreach quadratic.

use std::fmt::Write;

use crate::emit::value;
use crate::expr::{rhai_str, Ref};
use crate::model::{Foreach, Over, Step, MAX_ITERATIONS};

/// Items per `LoopChunk`.
pub const CHUNK: usize = 256;

/// The schemas of the facts above, for `pack.toml`.
pub const SCHEMAS: &str = r#"
# A foreach step's progress: iterations started (`next`), running, done, failed.
[facts.Loop]
step = "string"
total = "int"
next = "int"
running = "int"
done = "int"
failed = "int"
from = "int"
params = "map"
error = "string?"

# A slice of a foreach's list: items `base` to `base + 255`.
[facts.LoopChunk]
step = "string"
base = "int"
items = "array"
"#;

/// The start of a foreach step (in its `step ID` rule's action): the items
/// counted and checked, the `Loop` and the chunks inserted.
pub fn start_action(out: &mut String, s: &Step, f: &Foreach, params: &str, acc: &dyn Fn(&Ref) -> String) {
    let id = rhai_str(&s.id.text);
    let fail = |out: &mut String, why: &str| {
        let _ = writeln!(out, "            modify(me, #{{ state: \"failed\", error: {why} }});");
    };
    match &f.over {
        Over::List(o) => {
            let _ = writeln!(out, "        let items = {};", value(o, acc));
            out.push_str("        if type_of(items) != \"array\" {\n");
            fail(out, "\"foreach over \" + type_of(items) + \": `over` must be a list\"");
            let _ = writeln!(out, "        }} else if items.len() > {MAX_ITERATIONS} {{");
            fail(out, &format!("`foreach over ${{items.len()}} items; a foreach runs at most {MAX_ITERATIONS}`"));
            out.push_str("        } else {\n");
            out.push_str("            modify(me, #{ state: \"running\" });\n");
            let _ = writeln!(
                out,
                "            insert(\"Loop\", #{{ step: {id}, total: items.len(), next: 0, running: 0, done: 0, failed: 0, from: 0, params: {params} }});"
            );
            out.push_str("            let base = 0;\n");
            out.push_str("            while base < items.len() {\n");
            let _ = writeln!(
                out,
                "                insert(\"LoopChunk\", #{{ step: {id}, base: base, items: items.extract(base, {CHUNK}) }});"
            );
            let _ = writeln!(out, "                base += {CHUNK};");
            out.push_str("            }\n        }\n");
        }
        Over::Range { from, to } => {
            let _ = writeln!(out, "        let from = {};\n        let to = {};", value(from, acc), value(to, acc));
            out.push_str("        if type_of(from) != \"i64\" || type_of(to) != \"i64\" {\n");
            fail(out, "`a range's bounds must be ints, not ${type_of(from)} and ${type_of(to)}`");
            let _ = writeln!(out, "        }} else if to - from > {MAX_ITERATIONS} {{");
            fail(
                out,
                &format!("`foreach over ${{to - from}} numbers (${{from}} to ${{to}}); a foreach runs at most {MAX_ITERATIONS}`"),
            );
            out.push_str("        } else {\n");
            out.push_str("            modify(me, #{ state: \"running\" });\n");
            let _ = writeln!(
                out,
                "            insert(\"Loop\", #{{ step: {id}, total: if to > from {{ to - from }} else {{ 0 }}, next: 0, running: 0, done: 0, failed: 0, from: from, params: {params} }});"
            );
            out.push_str("        }\n");
        }
    }
}

/// The rules that start iterations, count their ends and end the step.
pub fn loop_rules(out: &mut String, s: &Step, f: &Foreach) {
    let id = rhai_str(&s.id.text);
    let sid = &s.id.text;
    let body = rhai_str(&f.body.id.text);
    let conc = f.concurrency;
    let list = matches!(f.over, Over::List(_));
    let stop = if f.keep_going { "" } else { ", failed == 0" };
    let _ = writeln!(
        out,
        "\n// Start iterations of `{sid}` while fewer than {conc} run{}: each a workflow of `{}`, given the\n// instance's params, the step's, `{}` (the item) and `{}` (its number).",
        if f.keep_going { "" } else { " and none failed" },
        f.body.id.text,
        f.var.text,
        f.index.text
    );
    let _ = writeln!(out, "rule {} {{\n    match {{", rhai_str(&format!("step {sid} launch")));
    out.push_str("        d: Dag(state == \"running\")\n");
    let _ = writeln!(out, "        me: Step(id == {id}, state == \"running\")");
    let _ = writeln!(out, "        l: Loop(step == {id}, next < total, running < {conc}{stop})");
    if list {
        let _ = writeln!(out, "        c: LoopChunk(step == {id}, base <= l.next, base + {CHUNK} > l.next)");
    }
    out.push_str("    }\n    action {\n");
    let chunk_end = if list { format!("c.base + {CHUNK}") } else { "l.total".into() };
    let _ = writeln!(out, "        let end = l.next + {conc} - l.running;");
    let _ = writeln!(out, "        if end > l.total {{ end = l.total; }}");
    if list {
        let _ = writeln!(out, "        if end > {chunk_end} {{ end = {chunk_end}; }}");
    }
    out.push_str("        let i = l.next;\n        while i < end {\n");
    out.push_str("            let p = d.params;\n            p.mixin(l.params);\n");
    let item = if list { "c.items[i - c.base]".to_string() } else { "l.from + i".to_string() };
    let _ = writeln!(out, "            p[{}] = {item};", rhai_str(&f.var.text));
    let _ = writeln!(out, "            p[{}] = i;", rhai_str(&f.index.text));
    let _ = writeln!(out, "            start_workflow({body}, [#{{ type: \"Params\", fields: p }}]);");
    out.push_str("            i += 1;\n        }\n");
    out.push_str("        modify(l, #{ next: end, running: l.running + end - l.next });\n    }\n");
    out.push_str("    reaction { modify(l, #{ running: l.running - 1, done: l.done + 1 }); }\n");
    out.push_str("    error {\n        let first = if l[\"error\"] == () { error.message } else { l[\"error\"] };\n        modify(l, #{ running: l.running - 1, failed: l.failed + 1, error: first });\n    }\n}\n");
    // The end: every iteration ended (or, stopping on failure, every
    // running one did).
    let ended = if f.keep_going { "l.next == l.total" } else { "l.next == l.total || l.failed > 0" };
    let _ = writeln!(out, "\n// Every iteration of `{sid}` that started has ended: the step rolls up their counts.");
    let _ = writeln!(
        out,
        "rule {} {{\n    match {{\n        me: Step(id == {id}, state == \"running\")\n        l: Loop(step == {id}, running == 0)\n        test({ended})\n    }}\n    action {{",
        rhai_str(&format!("step {sid} done"))
    );
    out.push_str("        let counts = #{ total: l.total, succeeded: l.done, failed: l.failed };\n");
    out.push_str("        if l.failed == 0 {\n            modify(me, #{ state: \"done\", outputs: counts });\n        } else {\n");
    out.push_str(
        "            let skipped = if l.total > l.next { `, ${l.total - l.next} not started` } else { \"\" };\n",
    );
    out.push_str("            modify(me, #{ state: \"failed\", outputs: counts, error: `${l.failed} of ${l.total} iterations failed${skipped}; the first: ${l.error}` });\n");
    out.push_str("        }\n        retract(l);\n    }\n}\n");
    if list {
        let _ = writeln!(
            out,
            "\n// The items of `{sid}` are not needed once it ended.\nrule {} {{\n    match {{\n        me: Step(id == {id}, state in [\"done\", \"failed\", \"skipped\"])\n        c: LoopChunk(step == {id})\n    }}\n    action {{ retract(c); }}\n}}",
            rhai_str(&format!("step {sid} forget items"))
        );
    }
}
