//! The packs the simulation deploys to every tenant: function calls with
//! retries, timeouts and heartbeats, timers, a child workflow, signals
//! delivered and emitted, schedules. Every workflow ends by itself (each
//! sets a deadline timer), so that a run that goes quiet must have ended
//! them all.

use std::collections::BTreeMap;

/// (pack name, files). `job` has a second version, deployed during a run.
pub fn all() -> Vec<(&'static str, BTreeMap<String, String>)> {
    vec![
        ("job", files(JOB_TOML, JOB_RULES)),
        ("parent", files(PARENT_TOML, PARENT_RULES)),
        ("child", files(CHILD_TOML, CHILD_RULES)),
        ("waiter", files(WAITER_TOML, WAITER_RULES)),
        ("listener", files(LISTENER_TOML, LISTENER_RULES)),
        ("ticker", files(TICKER_TOML, TICKER_RULES)),
    ]
}

/// The second version of `job`: its `wake` rule also logs.
pub fn job_v2() -> BTreeMap<String, String> {
    files(&JOB_TOML.replace("version = \"1\"", "version = \"2\""), &format!("{JOB_RULES}\n{JOB_V2_RULE}"))
}

fn files(toml: &str, rules: &str) -> BTreeMap<String, String> {
    [("pack.toml".to_string(), toml.to_string()), ("main.rules".to_string(), rules.to_string())].into()
}

/// Functions served by the simulated workers.
pub const FUNCTIONS: [&str; 2] = ["sim.work", "sim.beat"];

const JOB_TOML: &str = r#"
[pack]
name = "job"
version = "1"

[functions."sim.work"]
timeout = "2s"
retry = { max_attempts = 3, initial_backoff = "100ms", max_backoff = "1s", multiplier = 2.0 }

[functions."sim.beat"]
timeout = "3s"
heartbeat = "400ms"
retry = { max_attempts = 2, initial_backoff = "200ms" }
"#;

const JOB_RULES: &str = r#"
rule "work" {
    match { j: Job(state == "new") }
    action {
        modify(j, #{ state: "working" });
        call("sim.work", #{ n: j.n });
        after("30s", "Deadline", #{});
    }
    reaction { modify(j, #{ state: "worked", out: result.v }); }
    error { fail("work failed: " + error.message); }
}

rule "beat" {
    match { j: Job(state == "worked") }
    action { modify(j, #{ state: "beating" }); call("sim.beat", #{ n: j.n }); }
    reaction { modify(j, #{ state: "resting" }); after("500ms", "Wake", #{}); }
    error { modify(j, #{ state: "resting" }); after("500ms", "Wake", #{}); }
}

rule "wake" {
    match { w: Wake() j: Job(state == "resting") }
    action { complete(#{ n: j.n, pokes: j.pokes }); }
}

rule "poke" {
    match { p: Poke() j: Job() }
    action { retract(p); modify(j, #{ pokes: j.pokes + 1 }); }
}

rule "deadline" {
    match { d: Deadline() }
    action { fail("deadline"); }
}
"#;

const JOB_V2_RULE: &str = r#"
rule "upgraded" {
    match { j: Job(state == "resting") }
    action { log("resting on v2"); }
}
"#;

const PARENT_TOML: &str = r#"
[pack]
name = "parent"
version = "1"
"#;

const PARENT_RULES: &str = r#"
rule "spawn" {
    match { p: Parent(state == "new") }
    action {
        modify(p, #{ state: "waiting" });
        start_workflow("child", [#{ type: "Task", fields: #{ n: p.n, state: "new" } }]);
        after("40s", "Deadline", #{});
    }
    reaction { complete(#{ child: result }); }
    error { fail("child failed: " + error.message); }
}

rule "deadline" {
    match { d: Deadline() }
    action { fail("deadline"); }
}
"#;

const CHILD_TOML: &str = r#"
[pack]
name = "child"
version = "1"

[functions."sim.work"]
timeout = "2s"
retry = { max_attempts = 4, initial_backoff = "100ms", max_backoff = "500ms" }
"#;

const CHILD_RULES: &str = r#"
rule "task" {
    match { t: Task(state == "new") }
    action {
        modify(t, #{ state: "working" });
        call("sim.work", #{ n: t.n });
        after("20s", "Deadline", #{});
    }
    reaction { complete(#{ v: result.v }); }
    error { fail("task failed"); }
}

rule "deadline" {
    match { d: Deadline() }
    action { fail("deadline"); }
}
"#;

const WAITER_TOML: &str = r#"
[pack]
name = "waiter"
version = "1"

[signals.go]
deliver = true
"#;

const WAITER_RULES: &str = r#"
rule "wait" {
    match { w: Wait(state == "new") }
    action { modify(w, #{ state: "waiting" }); after("5s", "Timeout", #{}); }
}

rule "go" {
    match { s: Signal(name == "go") w: Wait(state == "waiting") }
    action { modify(w, #{ state: "done" }); emit("done", #{ k: w.k }); complete("signalled"); }
}

rule "timeout" {
    match { t: Timeout() w: Wait(state == "waiting") }
    action { complete("timed out"); }
}
"#;

const LISTENER_TOML: &str = r#"
[pack]
name = "listener"
version = "1"

[signals.done]
start = true
"#;

const LISTENER_RULES: &str = r#"
rule "heard" {
    match { s: Signal(name == "done") }
    action { complete(#{ k: s.payload.k }); }
}
"#;

const TICKER_TOML: &str = r#"
[pack]
name = "ticker"
version = "1"

[functions."sim.work"]
timeout = "2s"
retry = { max_attempts = 2, initial_backoff = "100ms" }

[schedules.often]
cron = "@every 4s"
facts = [{ type = "Tick", fields = { n = 0 } }]
catch_up = "one"

[schedules.all]
cron = "@every 7s"
facts = [{ type = "Tick", fields = { n = 1 } }]
catch_up = "all"
max_catch_up = 4
"#;

const TICKER_RULES: &str = r#"
rule "tick" {
    match { t: Tick() }
    action { call("sim.work", #{ n: t.n }); after("20s", "Deadline", #{}); }
    reaction { complete(); }
    error { fail("tick failed"); }
}

rule "deadline" {
    match { d: Deadline() }
    action { fail("deadline"); }
}
"#;
