//! The definition format by example: diagnostics as snapshots, the
//! compiled pack of a small DAG, and compiled packs run on the engine.

use std::path::Path;

use expect_test::{expect, Expect};

use super::*;

/// Every diagnostic of a definition, rendered with its source line.
pub(crate) fn check_diags(yaml: &str, expected: Expect) {
    let (_, diags) = check(Path::new("workflow.yaml"), yaml);
    let map = SourceMap::new(yaml);
    let text: Vec<String> = diags.iter().map(|d| d.render_in(Some(&map))).collect();
    expected.assert_eq(&text.join("\n"));
}

#[test]
fn a_good_definition_has_no_diagnostics() {
    check_diags(
        r#"
id: etl
params:
  day: { type: string, default: "2026-01-01" }
steps:
  - id: extract
    function: etl.extract
    params: { day: "${day}" }
    outputs: [rows]
  - id: load
    function: etl.load
    depends_on: [extract]
    params: { rows: "${rows@extract}" }
"#,
        expect![""],
    );
}

/// Compiles a definition directory and runs its tests on the engine,
/// returning a line per failure.
pub(crate) fn run_dir(dir: &Path) -> Vec<String> {
    run_source(dir, Source::read(dir).unwrap_or_else(|d| panic!("{d}")))
}

/// Compiles a definition and runs the tests given with it.
pub(crate) fn run_inline(yaml: &str, tests: &str) {
    let source = Source {
        path: "workflow.yaml".into(),
        text: yaml.to_string(),
        tests: [(std::path::PathBuf::from("tests/t.toml"), tests.to_string())].into_iter().collect(),
        imports: Default::default(),
    };
    let failures = run_source(Path::new("inline"), source);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn run_source(dir: &Path, source: Source) -> Vec<String> {
    let (packs, diags) = source.compile_all(dir);
    let Some(mut packs) = packs else {
        panic!("{}: {}", dir.display(), diags.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))
    };
    // The foreach bodies' packs compile, without a warning, too.
    let pack = packs.pop().expect("the definition's own pack");
    for body in &packs {
        let (compiled, diags) = stoa_rules::compile::compile(body);
        assert!(compiled.is_some() && diags.is_empty(), "{}: {:?}", body.root.display(), body.render(&diags));
    }
    let (compiled, diags) = stoa_rules::compile::compile(&pack);
    // Warnings too: a compiled pack should not have any.
    let errors: Vec<String> = pack.render(&diags);
    let Some(compiled) = compiled else {
        panic!(
            "{}: the compiled pack does not compile:\n{}\n{}",
            dir.display(),
            errors.join("\n"),
            pack.files[Path::new("workflow.rules")]
        )
    };
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    let compiled = std::sync::Arc::new(compiled);
    assert!(!compiled.tests.is_empty(), "{}: no tests", dir.display());
    let reports = stoa_engine::harness::run_tests(&compiled, None);
    reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| {
            format!(
                "{}: {}: {}\n  {}",
                dir.display(),
                r.name,
                r.failures.join("\n  "),
                r.timeline_excerpt(40).join("\n  ")
            )
        })
        .collect()
}

#[test]
fn the_examples_compile_and_their_tests_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dags");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("examples/dags")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 3, "{dirs:?}");
    let failures: Vec<String> = dirs.iter().flat_map(|d| run_dir(d)).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn yaml_syntax_errors_point_into_the_file() {
    check_diags(
        "id: x\nsteps: [\n  - a\n",
        expect![[r#"
        workflow.yaml:3:3: error[E0016]: YAML: "-" is only valid inside a block
          |
        3 |   - a
          |   ^"#]],
    );
    check_diags(
        "id: x\nbase: &b { a: 1 }\nsteps: *b\n",
        expect![[r#"
        workflow.yaml:2:7: error[E0016]: YAML: anchors and aliases are not supported in a definition
          |
        2 | base: &b { a: 1 }
          |       ^"#]],
    );
}

#[test]
fn unknown_keys_and_shapes() {
    check_diags(
        r#"
id: x
stpes: []
steps:
  - id: a
    type: fucntion
  - id: b
    function: f
    dependson: [a]
    retry: { error: { attempts: 0 } }
  - type: noop
  - id: 9lives
    type: sleep
"#,
        expect![[r#"
            workflow.yaml:3:1: error[E0016]: unknown key `stpes` in the definition; expected one of id, version, description, import, types, params, steps, outputs, triggers, run_strategy, concurrency
              |
            3 | stpes: []
              | ^
            workflow.yaml:6:11: error[E0016]: unknown step type `fucntion`; did you mean `function`? (function, noop, sleep, subworkflow or foreach)
              |
            6 |     type: fucntion
              |           ^
            workflow.yaml:9:5: error[E0016]: unknown key `dependson` in a step; did you mean `depends_on`?
              |
            9 |     dependson: [a]
              |     ^
            workflow.yaml:10:33: error[E0020]: `attempts` of `retry.error` must be a whole number from 1 to 100, found an int
               |
            10 |     retry: { error: { attempts: 0 } }
               |                                 ^
            workflow.yaml:11:5: error[E0016]: a step has no `id`
               |
            11 |   - type: noop
               |     ^
            workflow.yaml:12:5: error[E0016]: a step is a sleep step but has no `duration` in its params
               |
            12 |   - id: 9lives
               |     ^
            workflow.yaml:12:9: error[E0016]: a step id `9lives` must start with a letter or `_` and hold only letters, digits, `_`, `-`, `.` (at most 128 bytes)
               |
            12 |   - id: 9lives
               |         ^"#]],
    );
}

#[test]
fn duplicate_step_ids() {
    check_diags(
        r#"
id: x
steps:
  - { id: a, type: noop }
  - { id: b, type: noop }
  - { id: a, type: noop }
"#,
        expect![[r#"
            workflow.yaml:6:11: error[E0017]: step `a` is defined twice (first on line 4)
              |
            6 |   - { id: a, type: noop }
              |           ^"#]],
    );
}

#[test]
fn unknown_dependencies_say_what_is_near() {
    check_diags(
        r#"
id: x
steps:
  - { id: extract, type: noop }
  - { id: load, type: noop, depends_on: [extarct, nothing] }
"#,
        expect![[r#"
            workflow.yaml:5:42: error[E0018]: step `load` depends on `extarct`, which is not a step of this definition; did you mean `extract`?
              |
            5 |   - { id: load, type: noop, depends_on: [extarct, nothing] }
              |                                          ^
            workflow.yaml:5:51: error[E0018]: step `load` depends on `nothing`, which is not a step of this definition
              |
            5 |   - { id: load, type: noop, depends_on: [extarct, nothing] }
              |                                                   ^"#]],
    );
}

#[test]
fn cycles_are_named() {
    check_diags(
        r#"
id: x
steps:
  - { id: a, type: noop, depends_on: [c] }
  - { id: b, type: noop, depends_on: [a] }
  - { id: c, type: noop, depends_on: [b] }
  - { id: d, type: noop, depends_on: [d] }
  - { id: e, type: noop, depends_on: [a] }
"#,
        expect![[r#"
            workflow.yaml:5:39: error[E0019]: the dependencies form a cycle: `a` → `c` → `b` → `a` (each depends on the next)
              |
            5 |   - { id: b, type: noop, depends_on: [a] }
              |                                       ^
            workflow.yaml:7:39: error[E0019]: step `d` depends on itself
              |
            7 |   - { id: d, type: noop, depends_on: [d] }
              |                                       ^"#]],
    );
}

#[test]
fn parameter_types() {
    check_diags(
        r#"
id: x
params:
  n: { type: int, default: "ten" }
  f: { type: float, default: 1 }
  s: { type: text }
  d: { type: int, default: 5 }
steps:
  - id: wait
    type: sleep
    params: { duration: "${d}" }
  - id: w2
    type: sleep
    params: { duration: "soon" }
    timeout: 5m
"#,
        expect![[r#"
            workflow.yaml:4:28: error[E0020]: parameter `n` is an int, but its default is a string
              |
            4 |   n: { type: int, default: "ten" }
              |                            ^
            workflow.yaml:6:14: error[E0020]: unknown parameter type `text`; expected one of string, int, float, bool, list, map, any
              |
            6 |   s: { type: text }
              |              ^
            workflow.yaml:11:26: error[E0020]: the `duration` of a sleep step must be a string, but parameter `d` is an int
               |
            11 |     params: { duration: "${d}" }
               |                          ^
            workflow.yaml:14:25: error[E0020]: the `duration` of a sleep step `soon` is not a duration like "30s" or "1h 30m"
               |
            14 |     params: { duration: "soon" }
               |                         ^
            workflow.yaml:15:14: error[E0016]: `timeout` is for function steps only so far; step `w2` is a sleep step
               |
            15 |     timeout: 5m
               |              ^"#]],
    );
}

#[test]
fn references_to_params_and_outputs() {
    check_diags(
        r#"
id: x
params:
  day: string
steps:
  - id: a
    function: f
    outputs: [rows]
    params: { d: "${dya}", r: "${rows@b}" }
  - id: b
    function: g
    depends_on: [a]
    params: { r: "${row@a}", s: "${rows@nope}", t: "x ${oops" }
  - id: c
    type: noop
    depends_on:
      - { step: a, when: "${rows@a} > 1 && ${x@b}" }
"#,
        expect![[r#"
            workflow.yaml:9:19: error[E0018]: step `a` reads `${dya}`, but the definition has no parameter `dya`
              |
            9 |     params: { d: "${dya}", r: "${rows@b}" }
              |                   ^
            workflow.yaml:9:32: error[E0018]: step `a` reads `${rows@b}`, but step `b` is not upstream of it (add it to `depends_on`, directly or through another step)
              |
            9 |     params: { d: "${dya}", r: "${rows@b}" }
              |                                ^
            workflow.yaml:13:19: error[E0018]: step `b` reads `${row@a}`, but step `a` has no output `row`; did you mean `rows`?
               |
            13 |     params: { r: "${row@a}", s: "${rows@nope}", t: "x ${oops" }
               |                   ^
            workflow.yaml:13:34: error[E0018]: step `b` reads `${rows@nope}`, but there is no step `nope`
               |
            13 |     params: { r: "${row@a}", s: "${rows@nope}", t: "x ${oops" }
               |                                  ^
            workflow.yaml:13:52: error[E0018]: `${` without its closing `}`
               |
            13 |     params: { r: "${row@a}", s: "${rows@nope}", t: "x ${oops" }
               |                                                    ^
            workflow.yaml:17:26: error[E0016]: the condition on `a` of step `c` is not a valid expression: Expecting a boolean expression, not ()
               |
            17 |       - { step: a, when: "${rows@a} > 1 && ${x@b}" }
               |                          ^
            workflow.yaml:17:44: error[E0018]: the condition on `a` of step `c` reads `${x@b}`, but step `b` is not upstream of it (add it to `depends_on`, directly or through another step)
               |
            17 |       - { step: a, when: "${rows@a} > 1 && ${x@b}" }
               |                                            ^"#]],
    );
}

#[test]
fn the_size_limit() {
    let mut y = String::from("id: big\nsteps:\n");
    for i in 0..1001 {
        y.push_str(&format!("  - {{ id: s{i}, type: noop }}\n"));
    }
    check_diags(
        &y,
        expect![[r#"
        workflow.yaml:3:3: error[E0021]: 1001 steps; a definition may have at most 1000
          |
        3 |   - { id: s0, type: noop }
          |   ^"#]],
    );
}

#[test]
fn a_small_dag_compiles_to_readable_rules() {
    let yaml = r#"
id: small
params:
  n: { type: int, default: 3 }
steps:
  - id: fetch
    function: web.fetch
    params: { url: "https://x/${n}", n: "${n}" }
    outputs: [size]
    retry:
      error: { attempts: 2 }
  - id: report
    type: noop
    depends_on:
      - { step: fetch, when: "${size@fetch} > 0" }
    params: { size: "${size@fetch}" }
outputs:
  size: ${size@report}
"#;
    let (def, diags) = check(Path::new("workflow.yaml"), yaml);
    assert!(diags.is_empty(), "{diags:?}");
    let mut packs = def.expect("no errors").emit();
    assert_eq!(packs.len(), 1);
    let Emitted { manifest, rules, .. } = packs.pop().unwrap();
    expect![[r##"
        # Compiled by `stoa dag compile` from workflow.yaml (definition `small`).
        # Do not edit: change the definition and compile it again.

        [pack]
        name = "small"
        version = "1"

        # Steps retry by their own policies, in the rules (per failure kind,
        # with durable backoff timers): the dispatcher makes one attempt per call,
        # and answers a lost worker as a failure of kind `lost` at once.
        [functions."web.fetch"]
        retry = { max_attempts = 1, max_lost = 1 }

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

        # Holds a step (`"*"`: every step) before it starts; see docs/dags.md.
        [facts.Breakpoint]
        step = "string"

        # A restart of a previous run (see docs/dags.md, "Restart").
        [facts.Restart]
        of = "string"
        from = "string"
        attempt = "int"
        steps = "map"
        produced = "map"
        kept = "map?"
    "##]]
    .assert_eq(&manifest);
    expect![[r#"
        // Compiled by `stoa dag compile` from workflow.yaml (definition `small`
        // version 1). Do not edit: change the definition and compile it again.
        // A step's facts are read as `s_ID` (the step id, `-` and `.` as `_`).

        // The instance starts: its parameters checked and defaulted (from a
        // `Params` fact, if the start request gives one). Each step's rules make
        // its Step fact (`step ID new`).
        rule "dag start" {
            match {
                given: collect(Params())
                not Dag()
            }
            action {
                let p = if given.len() > 0 { given[0] } else { #{} };
                let params = #{};
                let errors = [];
                // n: int
                let v = p["n"];
                if v == () { v = 3; }
                if v != () && type_of(v) != "i64" { errors.push("parameter `n` must be an int, not " + type_of(v)); }
                params["n"] = v;
                for k in p.keys() {
                    if !k.starts_with("_") && !(k in ["n"]) { errors.push("unknown parameter `" + k + "`"); }
                }
                if errors.len() > 0 {
                    let why = "";
                    for e in errors { if why != "" { why += "; "; } why += e; }
                    fail(why);
                } else {
                    insert("Dag", #{ id: "small", state: "running", params: params });
                }
            }
        }

        // ---- Step `fetch` (workflow.yaml:6:9): calls `web.fetch`, at the start.
        rule "step fetch new" {
            salience 10
            match {
                d: Dag(state == "running")
                not Step(id == "fetch")
            }
            action { insert("Step", #{ id: "fetch", state: "waiting", outputs: #{}, errors: 0, timeouts: 0, lost: 0 }); }
        }

        rule "step fetch" {
            match {
                d: Dag(state == "running")
                me: Step(id == "fetch", state == "waiting")
                not Breakpoint(step in ["fetch", "*"])
            }
            action {
                let args = #{ "url": ("https://x/" + `${d.params["n"]}`), "n": d.params["n"] };
                modify(me, #{ state: "running" });
                call("web.fetch", args);
            }
            reaction {
                let out = if type_of(result) == "map" { result } else { #{ value: result } };
                let missing = ["size"].filter(|k| !(k in out));
                if missing.len() > 0 {
                    modify(me, #{ state: "failed", error: `the result of web.fetch lacks output(s) ${missing}` });
                } else {
                    modify(me, #{ state: "done", outputs: out });
                }
            }
            error {
                if error.kind == "failed" && error.retryable && me.errors + 1 < 2 {
                    // retry.error: 2 attempts
                    modify(me, #{ state: "waiting", errors: me.errors + 1 });
                } else if error.kind == "lost" && me.lost + 1 < 10 {
                    // retry.platform: 10 attempts
                    modify(me, #{ state: "waiting", lost: me.lost + 1 });
                } else {
                    modify(me, #{ state: "failed", error: error.message });
                }
            }
        }

        // ---- Step `report` (workflow.yaml:12:9): does nothing (its params are its outputs), after `fetch` (when ${size@fetch} > 0).
        rule "step report new" {
            salience 10
            match {
                d: Dag(state == "running")
                not Step(id == "report")
            }
            action { insert("Step", #{ id: "report", state: "waiting", outputs: #{}, errors: 0, timeouts: 0, lost: 0 }); }
        }

        rule "step report" {
            match {
                d: Dag(state == "running")
                me: Step(id == "report", state == "waiting")
                s_fetch: Step(id == "fetch", state == "done")
                test(((s_fetch.outputs["size"]) > 0))
                not Breakpoint(step in ["report", "*"])
            }
            action {
                modify(me, #{ state: "done", outputs: #{ "size": s_fetch.outputs["size"] } });
            }
        }

        // Every dependency of `report` ended, but one was skipped or a condition is false: `report` is skipped.
        rule "step report skipped" {
            match {
                d: Dag(state == "running")
                me: Step(id == "report", state == "waiting")
                s_fetch: Step(id == "fetch", state in ["done", "skipped"])
                test(!((s_fetch.state == "done" && ((s_fetch.outputs["size"]) > 0))))
            }
            action { modify(me, #{ state: "skipped" }); }
        }

        // A restart of a previous run: its done steps are kept, but `from` and
        // what is downstream of it (in dependency order) run again.
        rule "dag restart" {
            salience 20
            match {
                d: Dag(state == "running")
                r: Restart()
                not Step()
            }
            action {
                let order = [["fetch", []], ["report", ["fetch"]]];
                let again = #{};
                for e in order {
                    if r.from == "*" || e[0] == r.from { again[e[0]] = true; continue; }
                    for dep in e[1] { if dep in again { again[e[0]] = true; break; } }
                }
                let kept = #{};
                for e in order {
                    let id = e[0];
                    let old = r.steps[id];
                    if old != () && old.state == "done" && !(id in again) {
                        insert("Step", #{ id: id, state: "done", outputs: old.outputs, errors: old.errors, timeouts: old.timeouts });
                        kept[id] = if r.produced[id] != () { r.produced[id] } else { r.of };
                    }
                }
                modify(r, #{ kept: kept });
            }
        }

        // A `dag.resume` signal clears the breakpoint on its payload's `step`, or
        // every one without a step.
        rule "dag resume" {
            match {
                s: Signal(name == "dag.resume")
                held: collect(Breakpoint())
            }
            action {
                let step = if type_of(s.payload) == "map" { s.payload.step } else { () };
                for b in held { if step == () || b.step == step { retract(b); } }
                retract(s);
            }
        }

        // A breakpoint on no step of this definition holds nothing: it is
        // dropped, and the timeline says so.
        rule "dag breakpoint unknown" {
            match {
                b: Breakpoint(step != "*", !(step in ["fetch", "report"]))
            }
            action {
                log(`breakpoint on step ${b.step} dropped: no such step`);
                retract(b);
            }
        }

        // A step failed for good: so does the instance.
        rule "dag failed" {
            match {
                d: Dag(state == "running")
                s: Step(state == "failed")
            }
            action {
                modify(d, #{ state: "failed" });
                fail(`step ${s.id} failed: ${s.error}`);
            }
        }

        // Every step is done or skipped: the instance completes with its outputs.
        rule "dag completed" {
            salience -1
            match {
                d: Dag(state == "running")
                not Step(state in ["waiting", "running", "retrying"])
                s_report: Step(id == "report")
            }
            action {
                modify(d, #{ state: "completed" });
                complete(#{ "size": s_report.outputs["size"] });
            }
        }
    "#]].assert_eq(&rules);
}

#[test]
fn a_subworkflow_chosen_by_a_parameter_passes_params_in_and_outputs_back() {
    run_inline(
        r#"
id: parent
params:
  child: { type: string, default: video-encode }
steps:
  - id: encode
    type: subworkflow
    workflow: ${child}
    params: { uri: "s3://a.mov" }
    outputs: [uri]
  - id: publish
    function: cdn.publish
    depends_on: [encode]
    params: { uri: "${uri@encode}" }
"#,
        r#"
[[test]]
name = "the child's result is the step's outputs"
facts = [{ type = "Params", fields = { child = "encoder-v2" } }]
[[test.mock]]
function = "workflow:encoder-v2"
returns = { uri = "s3://a.mp4" }
[[test.mock]]
function = "cdn.publish"
args = { uri = "s3://a.mp4" }
returns = {}
[test.expect]
status = "completed"
calls = { "workflow:encoder-v2" = 1, "cdn.publish" = 1 }

[[test]]
name = "a child that fails fails the step"
[[test.mock]]
function = "workflow:video-encode"
error = { message = "bad codec" }
[test.expect]
status = "failed"
reason = "step encode failed: bad codec"
"#,
    );
}

#[test]
fn a_gated_step_waits_for_its_signal() {
    run_inline(
        r#"
id: daily
params:
  day: { type: int, default: 3 }
steps:
  - id: prepare
    type: noop
  - id: load
    function: warehouse.load
    depends_on: [prepare]
    gate: { signal: partition.ready, match: { day: "${day}" } }
"#,
        r#"
[[test]]
name = "a signal for another day does not open the gate"
[[test.step]]
signal = { name = "partition.ready", payload = { day = 2 } }
[test.expect]
status = "running"
not_fired = ["step load"]

[[test]]
name = "nor does a signal without a payload"
[[test.step]]
signal = { name = "partition.ready" }
[test.expect]
status = "running"

[[test]]
name = "the matching signal does"
[[test.mock]]
function = "warehouse.load"
returns = {}
[[test.step]]
signal = { name = "partition.ready", payload = { day = 3 } }
[test.expect]
status = "completed"
fired = ["dag start", "step prepare new", "step load new", "step prepare", "step load", "dag completed"]
"#,
    );
}

#[test]
fn a_result_without_a_declared_output_fails_the_step() {
    run_inline(
        r#"
id: outs
steps:
  - { id: a, function: f, outputs: [rows, path] }
"#,
        r#"
[[test]]
name = "missing output"
[[test.mock]]
function = "f"
returns = { rows = 1 }
[test.expect]
status = "failed"
reason = "step a failed: the result of f lacks output(s) [\"path\"]"
"#,
    );
}

#[test]
fn any_waits_for_the_first_branch_done() {
    run_inline(
        r#"
id: race
steps:
  - { id: fast, function: f }
  - { id: slow, function: s }
  - { id: after, type: noop, depends_on: { any: [fast, slow] } }
"#,
        r#"
[[test]]
name = "the join runs once, after the first"
[[test.mock]]
function = "f"
returns = {}
[[test.mock]]
function = "s"
after = "1h"
returns = {}
[test.expect]
status = "running"
fired_count = { "step after after fast" = 1 }
not_fired = ["step after after slow"]
facts = [{ type = "Step", fields = { id = "after", state = "done" } }]
"#,
    );
}

/// A pack compiled from a definition's text, without tests.
pub(crate) fn pack_of(yaml: &str) -> std::sync::Arc<stoa_rules::compile::Pack> {
    let source = Source {
        path: "workflow.yaml".into(),
        text: yaml.to_string(),
        tests: Default::default(),
        imports: Default::default(),
    };
    let (pack, diags) = source.compile(Path::new("p"));
    let pack = pack.unwrap_or_else(|| panic!("{diags:?}"));
    let (compiled, diags) = stoa_rules::compile::compile(&pack);
    std::sync::Arc::new(compiled.unwrap_or_else(|| panic!("{diags:?}")))
}

#[test]
fn a_new_version_that_adds_a_step_reaches_a_running_instance() {
    use stoa_engine::{Input, Workflow, WorkflowId};
    let v1 = "id: up\nsteps:\n  - { id: a, type: noop, params: { x: 1 } }\n  - { id: b, type: sleep, depends_on: [a], params: { duration: 1h } }\n";
    let v2 = format!("{v1}  - {{ id: c, type: noop, depends_on: [a], params: {{ y: \"${{x@a}}\" }} }}\n");
    let mut wf = Workflow::new(WorkflowId::new("wf_up"), pack_of(v1), 0);
    wf.apply(Input::Start { facts: Vec::new() }, 1).expect("start");
    let out = wf.upgrade(pack_of(&v2), 2).expect("upgrade");
    let lines: Vec<String> =
        out.entries.iter().map(|e| e.line().trim().to_string()).filter(|l| l.starts_with("fire")).collect();
    expect![[r#"
          fire   step c new (f1@1)
          fire   step c (f1@1, f4@1, f2@2)"#]]
    .assert_eq(&lines.join("\n"));
    let steps: Vec<String> =
        wf.facts().iter().filter(|f| f.ty.to_string() == "Step").map(|f| format!("{}", f.fields.to_json())).collect();
    expect![[r#"
        {"errors":0,"id":"a","lost":0,"outputs":{"x":1},"state":"done","timeouts":0}
        {"errors":0,"id":"b","lost":0,"outputs":{},"state":"running","timeouts":0}
        {"errors":0,"id":"c","lost":0,"outputs":{"y":1},"state":"done","timeouts":0}"#]]
    .assert_eq(&steps.join("\n"));
}

#[test]
fn a_thousand_steps_with_random_dependencies_complete() {
    // Each step depends on up to three earlier ones (a fixed LCG), as the
    // issue's 1,000-step benchmark will; noop steps, so one turn.
    let mut y = String::from("id: wide\nsteps:\n");
    let mut seed: u64 = 7;
    for i in 0..MAX_STEPS {
        let mut deps = Vec::new();
        for _ in 0..3.min(i) {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let j = (seed >> 33) as usize % i;
            if !deps.contains(&j) {
                deps.push(j);
            }
        }
        let deps: Vec<String> = deps.iter().map(|j| format!("s{j}")).collect();
        y.push_str(&format!("  - {{ id: s{i}, type: noop, depends_on: [{}] }}\n", deps.join(", ")));
    }
    let t = std::time::Instant::now();
    let pack = pack_of(&y);
    let compiled = t.elapsed();
    let mut wf = stoa_engine::Workflow::new(stoa_engine::WorkflowId::new("wf_wide"), pack, 0);
    wf.apply(stoa_engine::Input::Start { facts: Vec::new() }, 1).expect("start");
    assert_eq!(wf.status(), stoa_engine::Status::Completed, "{:?}", wf.meta());
    eprintln!("1,000 steps: compiled in {compiled:?}, ran in {:?}", t.elapsed() - compiled);
}

#[test]
fn conditions_are_expressions_over_references() {
    check_diags(
        r#"
id: x
steps:
  - { id: a, function: f, outputs: [rows] }
  - id: b
    type: noop
    depends_on:
      - { step: a, when: "rows > 5" }
  - id: c
    type: noop
    depends_on:
      - { step: a, when: "${rows@a} >" }
  - id: d
    type: noop
    depends_on:
      - { step: a, when: "${rows@a} > 5 && true" }
"#,
        expect![[r#"
            workflow.yaml:8:26: error[E0016]: the condition on `a` of step `b` is not a valid expression: undefined variable `rows`
              |
            8 |       - { step: a, when: "rows > 5" }
              |                          ^
            workflow.yaml:12:26: error[E0016]: the condition on `a` of step `c` is not a valid expression: Script is incomplete
               |
            12 |       - { step: a, when: "${rows@a} >" }
               |                          ^"#]],
    );
}

#[test]
fn foreach_limits_and_shapes() {
    check_diags(
        r#"
id: big
params: { n: int }
steps:
  - { id: a, type: noop, params: { x: 1 } }
  - id: each
    foreach:
      range: { from: 0, to: 100001 }
      concurrency: 0
      steps:
        - { id: b, type: noop, params: { y: "${x@a}" } }
  - id: items
    foreach:
      over: 42
      as: n
      orderd: true
      steps:
        - id: one
          foreach:
            over: [1]
            steps:
              - id: two
                foreach:
                  over: [1]
                  steps:
                    - id: three
                      foreach: { over: [1], steps: [{ id: four, type: noop }] }
"#,
        expect![[r#"
            workflow.yaml:8:29: error[E0021]: the foreach of step `each` runs over 100001 numbers (0 to 100001); a foreach runs at most 100000
              |
            8 |       range: { from: 0, to: 100001 }
              |                             ^
            workflow.yaml:9:20: error[E0020]: `concurrency` must be a whole number from 1 to 10000, found an int
              |
            9 |       concurrency: 0
              |                    ^
            workflow.yaml:11:46: error[E0018]: step `b` reads `${x@a}`, but there is no step `a` in this foreach (its steps read their own steps' outputs; pass others in through the foreach step's `params`); did you mean `b`?
               |
            11 |         - { id: b, type: noop, params: { y: "${x@a}" } }
               |                                              ^
            workflow.yaml:14:13: error[E0020]: `over` of the foreach of step `items` must be a list or a reference to one, found an int
               |
            14 |       over: 42
               |             ^
            workflow.yaml:15:11: error[E0017]: the foreach's `n` would hide the parameter `n` (line 3); name it otherwise
               |
            15 |       as: n
               |           ^
            workflow.yaml:16:7: error[E0016]: unknown key `orderd` in the foreach of step `items`; expected one of over, range, as, index, concurrency, sequential, on_failure, steps
               |
            16 |       orderd: true
               |       ^
            workflow.yaml:27:32: error[E0021]: the foreach of step `three` is nested 4 deep; foreach blocks nest at most 3 deep
               |
            27 |                       foreach: { over: [1], steps: [{ id: four, type: noop }] }
               |                                ^"#]],
    );
}

const MEDIA_TYPES: &str = r#"
types:
  video-encode:
    function: media.encode
    params:
      uri: string
      codec: { type: string, default: h264 }
      index: int
    outputs: [uri]
    retry: { error: { attempts: 2 } }
"#;

fn with_types(yaml: &str) -> Source {
    let imports: Imports =
        [("types.yaml".to_string(), (std::path::PathBuf::from("types.yaml"), MEDIA_TYPES.to_string()))].into();
    Source { path: "workflow.yaml".into(), text: yaml.to_string(), tests: Default::default(), imports }
}

#[test]
fn steps_of_a_type_are_checked_against_its_schema() {
    let src = with_types(
        r#"
id: t
import: [types.yaml, missing.yaml]
params: { n: int, s: string }
types:
  noop: { function: x }
steps:
  - { id: a, type: video-encode, params: { uri: "s3://a", index: "1" } }
  - { id: b, type: video-encode, params: { url: "s3://a", index: 1 } }
  - { id: c, type: video-encode, params: { uri: "${s}", index: "n=${n}" } }
  - { id: d, type: video-encod, params: {} }
"#,
    );
    let (_, diags) = src.compile(Path::new("p"));
    let text: Vec<String> = diags.iter().map(|d| src.render(d)).collect();
    expect![[r#"
        workflow.yaml:3:22: error[E0018]: cannot read `missing.yaml`: no such file beside the definition
          |
        3 | import: [types.yaml, missing.yaml]
          |                      ^
        workflow.yaml:6:3: error[E0017]: `noop` is a built-in step type; name yours otherwise
          |
        6 |   noop: { function: x }
          |   ^
        workflow.yaml:8:66: error[E0020]: param `index` of step type `video-encode` is an int, not a string
          |
        8 |   - { id: a, type: video-encode, params: { uri: "s3://a", index: "1" } }
          |                                                                  ^
        workflow.yaml:9:5: error[E0018]: step `b` lacks param `uri`, which step type `video-encode` requires (a string)
          |
        9 |   - { id: b, type: video-encode, params: { url: "s3://a", index: 1 } }
          |     ^
        workflow.yaml:9:44: error[E0018]: step `b` gives `url`, which step type `video-encode` does not take; did you mean `uri`?
          |
        9 |   - { id: b, type: video-encode, params: { url: "s3://a", index: 1 } }
          |                                            ^
        workflow.yaml:10:64: error[E0020]: param `index` of step type `video-encode` is an int, but this value is text
           |
        10 |   - { id: c, type: video-encode, params: { uri: "${s}", index: "n=${n}" } }
           |                                                                ^
        workflow.yaml:11:20: error[E0016]: unknown step type `video-encod`; did you mean `video-encode`? (function, noop, sleep, subworkflow or foreach)
           |
        11 |   - { id: d, type: video-encod, params: {} }
           |                    ^"#]]
    .assert_eq(&text.join("\n"));
}

#[test]
fn a_typed_step_takes_the_types_defaults_and_checks_computed_values_when_it_starts() {
    let src = with_types(
        r#"
id: t
import: [types.yaml]
params: { i: any }
steps:
  - { id: e, type: video-encode, params: { uri: "s3://a", index: "${i}" } }
outputs: { uri: "${uri@e}" }
"#,
    );
    let mut src = src;
    src.tests.insert(
        "tests/t.toml".into(),
        r#"
[[test]]
name = "the defaults fill the call, the type's retry applies"
facts = [{ type = "Params", fields = { i = 3 } }]
[[test.mock]]
function = "media.encode"
args = { uri = "s3://a", codec = "h264", index = 3 }
answers = [{ error = { message = "busy", retryable = true } }, { returns = { uri = "s3://out" } }]
[test.expect]
status = "completed"
result = { uri = "s3://out" }

[[test]]
name = "a computed param of the wrong type fails the step before the call"
facts = [{ type = "Params", fields = { i = "three" } }]
[test.expect]
status = "failed"
reason = "step e failed: param `index` of step type `video-encode` must be an int, not string"
"#
        .into(),
    );
    let failures = run_source(Path::new("inline"), src);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_template_is_checked_in_its_file_and_where_it_is_used() {
    let template = "id: etl-day\nparams: { table: string, limit: { type: int, default: 10 } }\nsteps:\n  - { id: x, function: etl.x }\noutputs: { rows: 1 }\n";
    let broken = "id: broken\nsteps:\n  - { id: x, function: etl.x, depends_on: [y] }\n";
    let imports: Imports = [
        ("etl-day.yaml".to_string(), ("etl-day.yaml".into(), template.to_string())),
        ("broken.yaml".to_string(), ("broken.yaml".into(), broken.to_string())),
    ]
    .into();
    let src = Source {
        path: "workflow.yaml".into(),
        text: "id: w\nimport: [etl-day.yaml, broken.yaml]\nsteps:\n  - { id: a, type: etl-day, params: { limit: many } }\n".into(),
        tests: Default::default(),
        imports,
    };
    let (_, diags) = src.compile(Path::new("p"));
    let text: Vec<String> = diags.iter().map(|d| src.render(d)).collect();
    expect![[r#"
        workflow.yaml:1:1: error[E0018]: the imported template `broken.yaml` has errors (shown at its lines)
          |
        1 | id: w
          | ^
        workflow.yaml:4:5: error[E0018]: step `a` lacks param `table`, which template `etl-day` requires (a string)
          |
        4 |   - { id: a, type: etl-day, params: { limit: many } }
          |     ^
        workflow.yaml:4:46: error[E0020]: param `limit` of template `etl-day` is an int, not a string
          |
        4 |   - { id: a, type: etl-day, params: { limit: many } }
          |                                              ^
        broken.yaml:3:44: error[E0018]: step `x` depends on `y`, which is not a step of this definition; did you mean `x`?
          |
        3 |   - { id: x, function: etl.x, depends_on: [y] }
          |                                            ^"#]]
    .assert_eq(&text.join("\n"));
}
