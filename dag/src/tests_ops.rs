//! Triggers, computed values, breakpoints, restarts and run strategies:
//! diagnostics as snapshots, compiled packs run on the engine.

use std::path::Path;

use expect_test::expect;

use crate::tests::{check_diags, pack_of, run_inline};

#[test]
fn triggers_become_the_packs_schedules_and_subscriptions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dags/daily");
    let src = crate::Source::read(&dir).expect("daily");
    let (pack, diags) = src.compile(&dir);
    assert!(diags.is_empty(), "{diags:?}");
    let (compiled, diags) = stoa_rules::compile::compile(&pack.expect("compiles"));
    let m = compiled.unwrap_or_else(|| panic!("{diags:?}")).manifest.clone();
    let schedules: Vec<String> = m
        .schedules
        .iter()
        .map(|(n, s)| format!("{n}: {} {} {} {:?}", s.cron, s.timezone, s.catch_up.as_str(), s.facts))
        .collect();
    expect![[r#"
        daily-us: 0 30 6 * * * UTC one [FactSpec { ty: "Params", fields: {"region":"us"} }]
        daily.cron1: 0 0 6 * * * Europe/Paris one [FactSpec { ty: "Params", fields: {} }]"#]]
    .assert_eq(&schedules.join("\n"));
    let signals: Vec<String> =
        m.signals.iter().map(|(n, s)| format!("{n}: start {} deliver {}", s.start, s.deliver)).collect();
    expect![[r#"
        daily.rerun: start true deliver false
        partition.ready: start false deliver true"#]]
    .assert_eq(&signals.join("\n"));
}

#[test]
fn bad_triggers_are_refused_where_they_are() {
    check_diags(
        r#"
id: t
params:
  day: string
  n: { type: int, default: 1 }
triggers:
  - cron: "0 25 * * *"
    timezone: Europe/Pariss
    params: { day: "x", n: "two", m: 3 }
  - cron: "@daily"
    catch_up: sometimes
  - { cron: "@hourly", name: twice, params: { day: "${{ 1 }}" } }
  - { cron: "@hourly", name: twice, params: { day: d }, max_catch_up: 5 }
  - { signal: go, params: { day: "${{ payload.day + }}" } }
  - { signal: go, params: { day: "${n}" } }
  - { every: 5m }
steps:
  - { id: a, type: noop }
"#,
        expect![[r#"
            workflow.yaml:7:11: error[E0011]: cron: `0 25 * * *`: hour field `25`: 25 is out of range 0-23
              |
            7 |   - cron: "0 25 * * *"
              |           ^
            workflow.yaml:8:15: error[E0011]: timezone: `Europe/Pariss` is not a time zone of the IANA database; write e.g. "UTC" or "Europe/Paris"
              |
            8 |     timezone: Europe/Pariss
              |               ^
            workflow.yaml:9:28: error[E0020]: parameter `n` is an int, but the trigger gives a string
              |
            9 |     params: { day: "x", n: "two", m: 3 }
              |                            ^
            workflow.yaml:9:35: error[E0018]: the trigger gives `m`, but the definition has no parameter `m`; did you mean `n`?
              |
            9 |     params: { day: "x", n: "two", m: 3 }
              |                                   ^
            workflow.yaml:10:5: error[E0018]: this cron trigger gives no parameters, but `day` is required (it has no default)
               |
            10 |   - cron: "@daily"
               |     ^
            workflow.yaml:11:15: error[E0011]: catch_up `sometimes`: expected "skip", "one" or "all"
               |
            11 |     catch_up: sometimes
               |               ^
            workflow.yaml:12:52: error[E0018]: parameter `day` of a cron trigger: a tick's parameters are literal values (a parameter's `default` may compute)
               |
            12 |   - { cron: "@hourly", name: twice, params: { day: "${{ 1 }}" } }
               |                                                    ^
            workflow.yaml:13:30: error[E0017]: two cron triggers are named `twice` (the first on line 12)
               |
            13 |   - { cron: "@hourly", name: twice, params: { day: d }, max_catch_up: 5 }
               |                              ^
            workflow.yaml:13:71: error[E0011]: max_catch_up applies only with catch_up: all
               |
            13 |   - { cron: "@hourly", name: twice, params: { day: d }, max_catch_up: 5 }
               |                                                                       ^
            workflow.yaml:14:34: error[E0016]: parameter `day` of a trigger is not a Rhai expression: Unexpected ')'
               |
            14 |   - { signal: go, params: { day: "${{ payload.day + }}" } }
               |                                  ^
            workflow.yaml:15:15: error[E0017]: two triggers subscribe to signal `go` (the first on line 14)
               |
            15 |   - { signal: go, params: { day: "${n}" } }
               |               ^
            workflow.yaml:15:34: error[E0018]: parameter `day` of a trigger: the trigger starts the instance, so there are no parameters or outputs to read yet; compute from the signal with `${{ payload.FIELD }}`
               |
            15 |   - { signal: go, params: { day: "${n}" } }
               |                                  ^
            workflow.yaml:16:5: error[E0016]: a trigger has `cron: EXPR` (a schedule) or `signal: NAME` (a subscription)
               |
            16 |   - { every: 5m }
               |     ^"#]],
    );
}

#[test]
fn a_signal_trigger_computes_parameters_from_the_payload() {
    run_inline(
        r#"
id: rerun
params:
  day: string
  twice: { type: int, default: 0 }
triggers:
  - signal: rerun.requested
    params: { day: "${{ payload.day }}", twice: "${{ payload.n * 2 }}" }
steps:
  - { id: a, function: f, params: { day: "${day}", twice: "${twice}" } }
"#,
        r#"
[[test]]
name = "the payload computes the parameters"
facts = [{ type = "Signal", fields = { name = "rerun.requested", id = "s1", payload = { day = "2026-02-01", n = 4 } } }]
[[test.mock]]
function = "f"
args = { day = "2026-02-01", twice = 8 }
returns = {}
[test.expect]
status = "completed"

[[test]]
name = "a payload the expression cannot read fails the start, naming the trigger"
facts = [{ type = "Signal", fields = { name = "rerun.requested", id = "s1", payload = { day = "2026-02-01", n = "four" } } }]
[test.expect]
status = "failed"
reason = "parameter `twice` of signal trigger `rerun.requested`: Function not found: * (&str | ImmutableString | String, i64)"

[[test]]
name = "a start request still gives the parameters itself"
facts = [{ type = "Params", fields = { day = "2026-03-01" } }]
[[test.mock]]
function = "f"
args = { day = "2026-03-01", twice = 0 }
returns = {}
[test.expect]
status = "completed"
"#,
    );
}

#[test]
fn computed_values_run_in_the_sandbox() {
    run_inline(
        r#"
id: computed
params:
  day: { type: string, default: "2026-03-14" }
  limit: { type: int, default: 10 }
  year: { type: string, default: "${{ ${day}.sub_string(0, 4) }}" }
  pages: { type: int, default: "${{ (${limit} + 2) / 3 }}" }
steps:
  - id: split
    type: noop
    params: { parts: [1, 2, 3] }
  - id: fetch
    function: web.fetch
    depends_on: [split]
    params:
      n: "${{ ${limit} * 2 }}"
      label: "run-${{ ${year} }}-${{ ${parts@split}.len() }}"
      total: "${{ if ${limit} > 5 { 1 } else { 0 } }}"
      firsts: ["${{ ${parts@split}[0] }}", "${day}"]
outputs:
  pages: "${{ ${pages} }}"
"#,
        r#"
[[test]]
name = "params compute from parameters and outputs, with their types"
[[test.mock]]
function = "web.fetch"
args = { n = 20, label = "run-2026-3", total = 1, firsts = [1, "2026-03-14"] }
returns = {}
[test.expect]
status = "completed"
result = { pages = 4 }
"#,
    );
}

#[test]
fn a_value_that_cannot_be_computed_fails_its_step_by_name() {
    run_inline(
        r#"
id: checked
params:
  day: { type: string, default: "2026-03-14" }
  n: { type: int, default: "${{ ${day}.len() > 3 }}" }
  which: { type: string, default: fetch }
steps:
  - { id: a, type: noop, params: { wait: 5, child: 3 } }
  - id: fetch
    function: web.fetch
    depends_on: [{ step: a, when: "${which} == \"fetch\"" }]
    params: { n: "${{ ${day} * 2 }}", m: "${{ ${day}.missing }}" }
  - id: pause
    type: sleep
    depends_on: [{ step: a, when: "${which} == \"pause\"" }]
    params: { duration: "${wait@a}" }
  - id: child
    type: subworkflow
    workflow: "${{ ${child@a} + 1 }}"
    depends_on: [{ step: a, when: "${which} == \"child\"" }]
"#,
        r#"
[[test]]
name = "a default of the wrong type fails the start"
[test.expect]
status = "failed"
reason = "parameter `n` must be an int, not bool"

[[test]]
name = "a step fails with every problem of its values"
facts = [{ type = "Params", fields = { n = 1 } }]
[test.expect]
status = "failed"
reason = "step fetch failed: parameter `n`: Function not found: * (&str | ImmutableString | String, i64); parameter `m`: Unknown property 'missing' - a getter is not registered for type 'string'"

[[test]]
name = "a duration read from an output must be a string"
facts = [{ type = "Params", fields = { n = 1, which = "pause" } }]
[test.expect]
status = "failed"
reason = "step pause failed: parameter `duration`: must be a string, not i64"

[[test]]
name = "so must a computed child workflow name"
facts = [{ type = "Params", fields = { n = 1, which = "child" } }]
[test.expect]
status = "failed"
reason = "step child failed: parameter `workflow`: must be a string, not i64"
"#,
    );
}

#[test]
fn computed_values_are_checked_before_the_run() {
    check_diags(
        r#"
id: x
params:
  a: { type: int, default: "${{ ${b} + 1 }}" }
  b: { type: int, default: "${{ ${b} }}" }
  c: { type: int, default: "${{ 1 }} and text" }
steps:
  - { id: s, type: noop, params: { v: "${{ ${a} + }}", w: "${{ ${v@t} }}", x: "${{ 1 }" } }
  - { id: t, type: noop, params: { v: 1 }, depends_on: [s] }
"#,
        expect![[r#"
            workflow.yaml:4:33: error[E0018]: the default of `a` reads `${b}`, which is declared after it; a default reads the parameters declared before it
              |
            4 |   a: { type: int, default: "${{ ${b} + 1 }}" }
              |                                 ^
            workflow.yaml:5:33: error[E0018]: the default of `b` reads `${b}`, which is declared by this very parameter; a default reads the parameters declared before it
              |
            5 |   b: { type: int, default: "${{ ${b} }}" }
              |                                 ^
            workflow.yaml:6:28: error[E0020]: parameter `c` is an int, but its default is text with an expression in it, a string
              |
            6 |   c: { type: int, default: "${{ 1 }} and text" }
              |                            ^
            workflow.yaml:8:39: error[E0016]: step `s` computes a value that is not a Rhai expression: Unexpected ')'
              |
            8 |   - { id: s, type: noop, params: { v: "${{ ${a} + }}", w: "${{ ${v@t} }}", x: "${{ 1 }" } }
              |                                       ^
            workflow.yaml:8:64: error[E0018]: step `s` reads `${v@t}`, but step `t` is not upstream of it (add it to `depends_on`, directly or through another step)
              |
            8 |   - { id: s, type: noop, params: { v: "${{ ${a} + }}", w: "${{ ${v@t} }}", x: "${{ 1 }" } }
              |                                                                ^
            workflow.yaml:8:79: error[E0018]: `${{` closed by a single `}`: an expression ends with `}}`
              |
            8 |   - { id: s, type: noop, params: { v: "${{ ${a} + }}", w: "${{ ${v@t} }}", x: "${{ 1 }" } }
              |                                                                               ^"#]],
    );
}

#[test]
fn a_breakpoint_holds_a_step_until_resumed() {
    run_inline(
        r#"
id: held
steps:
  - { id: prepare, function: w.prepare }
  - { id: load, function: w.load, depends_on: [prepare] }
  - { id: report, type: noop, depends_on: [load] }
"#,
        r#"
[[test]]
name = "a breakpoint given at the start holds its step; a resume signal lets it go"
facts = [{ type = "Breakpoint", fields = { step = "load" } }]
[[test.mock]]
function = "w.prepare"
returns = {}
[[test.mock]]
function = "w.load"
returns = {}
[[test.step]]
advance = "1h"
[[test.step]]
signal = { name = "dag.resume", payload = { step = "other" } }
[test.expect]
status = "running"
not_fired = ["step load"]
facts = [
  { type = "Step", fields = { id = "prepare", state = "done" } },
  { type = "Step", fields = { id = "load", state = "waiting" } },
  { type = "Breakpoint", fields = { step = "load" } },
]

[[test]]
name = "resumed by the signal"
facts = [{ type = "Breakpoint", fields = { step = "load" } }]
[[test.mock]]
function = "w.prepare"
returns = {}
[[test.mock]]
function = "w.load"
returns = {}
[[test.step]]
signal = { name = "dag.resume", payload = { step = "load" } }
[test.expect]
status = "completed"
no_facts = ["Breakpoint", "Signal"]

[[test]]
name = "asserted into a running instance, and resumed by retracting it"
[[test.mock]]
function = "w.prepare"
after = "1m"
returns = {}
[[test.mock]]
function = "w.load"
returns = {}
[[test.step]]
assert = [{ type = "Breakpoint", fields = { step = "*" } }]
[[test.step]]
advance = "2m"
[[test.step]]
assert = [{ type = "Breakpoint", fields = { step = "lod" } }]
[test.expect]
status = "running"
fired_count = { "dag breakpoint unknown" = 1 }
not_fired = ["step load"]

[[test]]
name = "retracting the breakpoint resumes"
[[test.mock]]
function = "w.prepare"
after = "1m"
returns = {}
[[test.mock]]
function = "w.load"
returns = {}
[[test.step]]
assert = [{ type = "Breakpoint", fields = { step = "*" } }]
[[test.step]]
advance = "2m"
[[test.step]]
retract = { type = "Breakpoint" }
[test.expect]
status = "completed"
fired_count = { "step load" = 1, "step report" = 1 }
"#,
    );
}

#[test]
fn a_restart_keeps_what_is_upstream_of_its_step_and_runs_the_rest() {
    run_inline(
        r#"
id: etl
params:
  day: string
steps:
  - { id: extract, function: x, outputs: [rows], params: { day: "${day}" } }
  - { id: side, function: s }
  - { id: transform, function: t, depends_on: [extract], params: { rows: "${rows@extract}" } }
  - { id: load, function: l, depends_on: [transform] }
"#,
        r#"
[[test]]
name = "from the failed step: done steps are kept, with their outputs"
facts = [
  { type = "Params", fields = { day = "d1" } },
  { type = "Restart", fields = { of = "wf_1", from = "", attempt = 2, produced = {}, steps = { extract = { id = "extract", state = "done", outputs = { rows = 5 }, errors = 0, timeouts = 0 }, side = { id = "side", state = "done", outputs = {}, errors = 1, timeouts = 0 } } } },
]
[[test.mock]]
function = "t"
args = { rows = 5 }
returns = {}
[[test.mock]]
function = "l"
returns = {}
[test.expect]
status = "completed"
calls = { x = 0, s = 0, t = 1, l = 1 }
facts = [{ type = "Restart", fields = { kept = { extract = "wf_1", side = "wf_1" } } }]

[[test]]
name = "from a step: it and what is below it run again; a second restart says which run made each step"
facts = [
  { type = "Params", fields = { day = "d1" } },
  { type = "Restart", fields = { of = "wf_2", from = "transform", attempt = 3, produced = { extract = "wf_1" }, steps = { extract = { id = "extract", state = "done", outputs = { rows = 5 }, errors = 0, timeouts = 0 }, side = { id = "side", state = "done", outputs = {}, errors = 0, timeouts = 0 }, transform = { id = "transform", state = "done", outputs = {}, errors = 0, timeouts = 0 }, load = { id = "load", state = "done", outputs = {}, errors = 0, timeouts = 0 } } } },
]
[[test.mock]]
function = "t"
returns = {}
[[test.mock]]
function = "l"
returns = {}
[test.expect]
status = "completed"
calls = { x = 0, s = 0, t = 1, l = 1 }
facts = [{ type = "Restart", fields = { kept = { extract = "wf_1", side = "wf_2" } } }]

[[test]]
name = "from the start: everything runs again"
facts = [
  { type = "Params", fields = { day = "d1" } },
  { type = "Restart", fields = { of = "wf_1", from = "*", attempt = 2, produced = {}, steps = { extract = { id = "extract", state = "done", outputs = { rows = 5 }, errors = 0, timeouts = 0 } } } },
]
[[test.mock]]
function = "x"
returns = { rows = 6 }
[[test.mock]]
function = "s"
returns = {}
[[test.mock]]
function = "t"
args = { rows = 6 }
returns = {}
[[test.mock]]
function = "l"
returns = {}
[test.expect]
status = "completed"
calls = { x = 1, s = 1, t = 1, l = 1 }
"#,
    );
}

#[test]
fn a_failed_run_restarted_from_its_plan_completes() {
    use crate::restart::{plan, From, Run};
    use stoa_engine::{Input, Status, Workflow, WorkflowId};
    let yaml = "id: r\nsteps:\n  - { id: a, type: noop, params: { n: 1 } }\n  - { id: b, type: noop, depends_on: [a], params: { m: \"${{ ${n@a} / ${n@a} }}\" } }\n  - { id: c, type: noop, depends_on: [a], params: { k: \"${{ 1 / (${n@a} - 1) }}\" } }\n";
    let mut wf = Workflow::new(WorkflowId::new("wf_r1"), pack_of(yaml), 0);
    wf.apply(Input::Start { facts: Vec::new() }, 1).expect("start");
    assert_eq!(wf.status(), Status::Failed);
    let facts_of = |wf: &Workflow| -> Vec<(String, serde_json::Value)> {
        wf.facts().iter().map(|f| (f.ty.to_string(), f.fields.to_json())).collect()
    };
    let run1 = Run {
        id: "wf_r1".into(),
        pack: "r".into(),
        status: "failed".into(),
        reason: String::new(),
        facts: facts_of(&wf),
    };
    let (facts, request) = plan(&run1, &From::Unfinished).expect("plan");
    assert_eq!(request, "restart:wf_r1:");
    // The definition is fixed (c no longer divides by zero) and restarted:
    // a and b are kept, c runs again.
    let fixed = yaml.replace("1 / (${n@a} - 1)", "1 / ${n@a}");
    let specs: Vec<stoa_rules::testcase::FactSpec> = facts
        .iter()
        .map(|(t, f)| serde_json::from_value(serde_json::json!({"type": t, "fields": f})).expect("fact"))
        .collect();
    let mut wf2 = Workflow::new(WorkflowId::new("wf_r2"), pack_of(&fixed), 0);
    wf2.apply(Input::Start { facts: specs }, 2).expect("restart");
    assert_eq!(wf2.status(), Status::Completed, "{:?}", wf2.meta());
    let run2 = Run {
        id: "wf_r2".into(),
        pack: "r".into(),
        status: "completed".into(),
        reason: String::new(),
        facts: facts_of(&wf2),
    };
    expect![[r#"
        RUN  ID                                       STATUS     FROM         REASON
        1    wf_r1                                    failed     -
        2    wf_r2                                    completed  unfinished

        STEP                     STATE      RUN
        a                        done       1 wf_r1
        b                        done       2 wf_r2
        c                        done       2 wf_r2
    "#]]
    .assert_eq(&crate::restart::view(&[run1, run2]));
}

#[test]
fn concurrency_caps_the_steps_running_at_once() {
    use stoa_engine::{Input, Workflow, WorkflowId};
    let yaml = "id: c\nconcurrency: 2\nsteps:\n  - { id: a, function: f }\n  - { id: b, function: f }\n  - { id: c, function: f }\n  - { id: d, type: noop }\n  - { id: e, function: f, depends_on: [d] }\n";
    let mut wf = Workflow::new(WorkflowId::new("wf_c"), pack_of(yaml), 0);
    let out = wf.apply(Input::Start { facts: Vec::new() }, 1).expect("start");
    assert_eq!(out.invocations.len(), 2, "two of four start");
    run_inline(
        yaml,
        r#"
[[test]]
name = "every step runs, two at a time"
[[test.mock]]
function = "f"
after = "1m"
returns = {}
[[test.step]]
advance = "1m"
[[test.step]]
advance = "1m"
[test.expect]
status = "completed"
calls = { f = 4 }
"#,
    );
}

#[test]
fn run_strategies_compile_to_the_manifest() {
    let (def, diags) = crate::check(
        Path::new("workflow.yaml"),
        "id: s\nrun_strategy: { mode: parallel, limit: 3 }\nsteps:\n  - { id: a, type: noop }\n",
    );
    assert!(diags.is_empty(), "{diags:?}");
    let manifest = def.expect("ok").emit().pop().expect("a pack").manifest;
    assert!(manifest.ends_with("[run_strategy]\nmode = \"parallel\"\nlimit = 3\n"), "{manifest}");
    let source = crate::Source {
        path: "workflow.yaml".into(),
        text: "id: s\nrun_strategy: strict_sequential\nsteps:\n  - { id: a, type: noop }\n".into(),
        tests: Default::default(),
        imports: Default::default(),
    };
    let (pack, _) = source.compile(Path::new("p"));
    let (compiled, diags) = stoa_rules::compile::compile(&pack.expect("compiles"));
    assert_eq!(
        compiled.unwrap_or_else(|| panic!("{diags:?}")).manifest.run_strategy,
        Some(stoa_rules::manifest::RunStrategy::StrictSequential)
    );
    check_diags(
        r#"
id: x
run_strategy: { mode: paralel, limit: 0 }
concurrency: 0
steps:
  - { id: a, type: noop }
"#,
        expect![[r#"
            workflow.yaml:3:23: error[E0016]: unknown run strategy `paralel`; did you mean `parallel`?
              |
            3 | run_strategy: { mode: paralel, limit: 0 }
              |                       ^
            workflow.yaml:3:39: error[E0020]: `limit` must be a whole number from 1 to 1000000, found an int
              |
            3 | run_strategy: { mode: paralel, limit: 0 }
              |                                       ^
            workflow.yaml:4:14: error[E0020]: `concurrency` must be a whole number from 1 to 1000, found an int
              |
            4 | concurrency: 0
              |              ^"#]],
    );
    check_diags(
        "id: x\nrun_strategy: { mode: sequential, limit: 2 }\nsteps:\n  - { id: a, type: noop }\n",
        expect![[r#"
            workflow.yaml:2:23: error[E0016]: `limit` is for `parallel`; `sequential` runs one at a time
              |
            2 | run_strategy: { mode: sequential, limit: 2 }
              |                       ^"#]],
    );
}

#[test]
fn a_definition_in_json_is_read_with_its_positions() {
    let json = "{\n\t\"id\": \"j\",\n  \"params\": { \"n\": { \"type\": \"int\", \"default\": 2 } },\n  \"steps\": [\n    { \"id\": \"a\", \"type\": \"noop\", \"params\": { \"m\": \"${{ ${n} * 2 }}\" } },\n    { \"id\": \"b\", \"type\": \"noop\", \"depends_on\": [\"c\"] }\n  ]\n}\n";
    let (_, diags) = crate::check(Path::new("workflow.json"), json);
    let map = stoa_rules::diagnostic::SourceMap::new(json);
    let text: Vec<String> = diags.iter().map(|d| d.render_in(Some(&map))).collect();
    expect![[r#"
        workflow.json:6:49: error[E0018]: step `b` depends on `c`, which is not a step of this definition; did you mean `a`?
          |
        6 |     { "id": "b", "type": "noop", "depends_on": ["c"] }
          |                                                 ^"#]].assert_eq(&text.join("\n"));
    let good = json.replace("[\"c\"]", "[\"a\"]");
    run_inline_named("workflow.json", &good, "[[test]]\nname = \"runs\"\n[test.expect]\nstatus = \"completed\"\nfacts = [{ type = \"Step\", fields = { id = \"a\", outputs = { m = 4 } } }]\n");
}

fn run_inline_named(name: &str, text: &str, tests: &str) {
    let source = crate::Source {
        path: name.into(),
        text: text.to_string(),
        tests: [(std::path::PathBuf::from("tests/t.toml"), tests.to_string())].into_iter().collect(),
        imports: Default::default(),
    };
    let (pack, diags) = source.compile(Path::new("inline"));
    let pack = pack.unwrap_or_else(|| panic!("{diags:?}"));
    let (compiled, diags) = stoa_rules::compile::compile(&pack);
    let compiled = std::sync::Arc::new(compiled.unwrap_or_else(|| panic!("{diags:?}")));
    let reports = stoa_engine::harness::run_tests(&compiled, None);
    let failures: Vec<String> = reports.iter().filter(|r| !r.passed()).map(|r| r.failures.join("\n")).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_typed_steps_computed_params_are_checked_against_its_type_when_it_starts() {
    let types = "description: t\ntypes:\n  enc:\n    function: media.encode\n    params:\n      uri: string\n      index: int\n";
    let yaml = r#"
id: typed
import: [types.yaml]
params:
  n: { type: int, default: 2 }
steps:
  - { id: a, type: noop, params: { i: 3, s: "x" } }
  - id: enc
    type: enc
    depends_on: [a]
    params: { uri: "${{ \"s3://\" + ${s@a} }}", index: "${{ ${i@a} * ${n} }}" }
  - id: bad
    type: enc
    depends_on: [enc]
    params: { uri: "u", index: "${{ ${s@a} + 1 }}" }
"#;
    let source = crate::Source {
        path: "workflow.yaml".into(),
        text: yaml.to_string(),
        tests: [(
            std::path::PathBuf::from("tests/t.toml"),
            r#"
[[test]]
name = "the computed int passes its type, the computed string does not"
[[test.mock]]
function = "media.encode"
args = { uri = "s3://x", index = 6 }
returns = {}
[test.expect]
status = "failed"
reason = "step bad failed: param `index` of step type `enc` must be an int, not string"
calls = { "media.encode" = 1 }
"#
            .to_string(),
        )]
        .into_iter()
        .collect(),
        imports: [("types.yaml".to_string(), (std::path::PathBuf::from("types.yaml"), types.to_string()))]
            .into_iter()
            .collect(),
    };
    let (pack, diags) = source.compile(Path::new("inline"));
    let pack =
        pack.unwrap_or_else(|| panic!("{}", diags.iter().map(|d| source.render(d)).collect::<Vec<_>>().join("\n")));
    let (compiled, diags) = stoa_rules::compile::compile(&pack);
    let compiled = std::sync::Arc::new(compiled.unwrap_or_else(|| panic!("{diags:?}")));
    let reports = stoa_engine::harness::run_tests(&compiled, None);
    let failures: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| format!("{}\n{}", r.failures.join("\n"), r.timeline_excerpt(40).join("\n")))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
