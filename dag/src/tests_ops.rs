//! Triggers, computed values, breakpoints, restarts and run strategies:
//! diagnostics as snapshots, compiled packs run on the engine.

use std::path::Path;

use expect_test::expect;

use crate::tests::{check_diags, run_inline};

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
