//! DAG definitions on a real server through the CLI: a signal trigger and
//! a gate's subscription, a breakpoint set and resumed, and a restart
//! after a fix with the view across runs.

use crate::support::{stoa, Server, TOKEN_A};

struct Cli {
    conn: Vec<String>,
}

impl Cli {
    fn run(&self, args: &[&str]) -> String {
        let out = stoa().args(args).args(&self.conn).output().expect("run stoa");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "stoa {args:?}: {stdout}{stderr}");
        stdout.into_owned()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let text = self.run(&a);
        serde_json::from_str(text.lines().last().unwrap_or("null")).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// Waits until the workflow is no longer running; its JSON view.
    fn settled(&self, wf: &str, want: &str) -> serde_json::Value {
        for _ in 0..200 {
            // A queued workflow is not found until it starts.
            let out = stoa().args(["get", wf, "--json"]).args(&self.conn).output().expect("run stoa");
            let w: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if w["status"] == want {
                return w;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("{wf} never became {want}: {}", self.json(&["get", wf]));
    }

    /// The newest workflow of a pack.
    fn newest(&self, pack: &str) -> String {
        let out = self.run(&["ls", "--pack", pack, "--limit", "1"]);
        out.lines().nth(1).and_then(|l| l.split_whitespace().next()).expect("a workflow").to_string()
    }
}

fn write(dir: &std::path::Path, yaml: &str) -> String {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("workflow.yaml"), yaml).expect("write");
    dir.display().to_string()
}

#[test]
fn triggers_breakpoints_and_restarts_on_a_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&tmp.path().join("data"));
    let cli = Cli { conn: vec!["--server".into(), server.addr.clone(), "--token".into(), TOKEN_A.into()] };

    // A signal trigger starts an instance with the payload as parameters;
    // its gate takes the broadcast signal for its region only.
    let gated = write(
        &tmp.path().join("gated"),
        r#"
id: gated
params:
  region: string
triggers:
  - signal: gated.go
steps:
  - { id: a, type: noop, params: { r: "${region}" } }
  - { id: b, type: noop, depends_on: [a], gate: { signal: ready, match: { region: "${region}" } } }
outputs:
  region: ${r@a}
"#,
    );
    cli.run(&["deploy", &gated]);
    cli.run(&["signal", "gated.go", "--id", "go-1", "--payload", r#"{"region": "us"}"#]);
    let wf = cli.newest("gated");
    cli.settled(&wf, "running");
    cli.run(&["signal", "ready", "--id", "ready-eu", "--payload", r#"{"region": "eu"}"#]);
    cli.settled(&wf, "running");
    cli.run(&["signal", "ready", "--id", "ready-us", "--payload", r#"{"region": "us"}"#]);
    let w = cli.settled(&wf, "completed");
    assert!(w["result"].to_string().contains("us"), "{w}");

    // Cron triggers are the pack's schedules once it is deployed, with a
    // tick's parameters; a tick started by hand runs like one.
    let daily = crate::support::repo().join("examples/dags/daily");
    cli.run(&["deploy", daily.to_str().expect("utf-8")]);
    let schedules = cli.run(&["schedule", "ls"]);
    assert!(schedules.contains("daily.cron1") && schedules.contains("daily-us"), "{schedules}");
    cli.run(&["schedule", "trigger", "daily-us", "--request-id", "tick-1"]);
    let tick = cli.newest("daily");
    let w = cli.settled(&tick, "running");
    let dag = w["facts"].as_array().and_then(|fs| fs.iter().find(|f| f["type"] == "Dag")).expect("a Dag fact");
    assert_eq!(dag["fields"]["params"], serde_json::json!({"region": "us", "partition": "latest"}), "{w}");

    // A step computes a value that fails; a breakpoint holds another.
    let v1 = "id: fix\nparams:\n  n: { type: int, default: 0 }\nsteps:\n  - { id: a, type: noop, params: { x: 2 } }\n  - { id: b, type: noop, depends_on: [a], params: { y: \"${{ ${x@a} * 10 }}\" } }\n  - { id: c, type: noop, depends_on: [b], params: { z: \"${{ ${y@b} / ${n} }}\" } }\n";
    let fix = write(&tmp.path().join("fix"), v1);
    cli.run(&["deploy", &fix]);
    let started = cli.json(&[
        "start",
        "fix",
        "--facts",
        r#"[{"type": "Breakpoint", "fields": {"step": "c"}}]"#,
        "--request-id",
        "fix-1",
    ]);
    let first = started["workflow_id"].as_str().expect("id").to_string();
    cli.settled(&first, "running");
    cli.run(&["signal", "dag.resume", "--workflow", &first, "--payload", r#"{"step": "c"}"#]);
    let w = cli.settled(&first, "failed");
    assert_eq!(w["reason"], "step c failed: parameter `z`: Division by zero: 20 / 0", "{w}");

    // Fixed and deployed, the run is restarted: a and b are kept.
    write(
        &tmp.path().join("fix"),
        &v1.replace("/ ${n} }}", "/ (${n} + 1) }}").replace("id: fix\n", "id: fix\nversion: \"2\"\n"),
    );
    cli.run(&["deploy", &fix]);
    let r = cli.json(&["dag", "restart", &first]);
    let second = r["workflow_id"].as_str().expect("id").to_string();
    assert_eq!(cli.json(&["dag", "restart", &first])["workflow_id"], second.as_str(), "the same restart, the same run");
    cli.settled(&second, "completed");
    let view = cli.json(&["dag", "runs", &second]);
    let by: Vec<(String, String)> = view["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| (s["step"].as_str().unwrap_or("").to_string(), s["run"].as_str().unwrap_or("").to_string()))
        .collect();
    assert_eq!(
        by,
        vec![("a".into(), first.clone()), ("b".into(), first.clone()), ("c".into(), second.clone())],
        "{view}"
    );
    assert_eq!(view["runs"].as_array().map(Vec::len), Some(2), "{view}");
}

/// A program deploys a definition as JSON through the API; the server
/// compiles it, and refuses a bad one with its diagnostics as the error.
#[test]
fn a_json_definition_is_deployed_through_the_api() {
    use stoa_proto::v1 as pb;
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&tmp.path().join("data"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut c = crate::client::client(&server.addr, TOKEN_A).await;
        let file = |text: &str| pb::PackFile { path: "workflow.json".into(), content: text.as_bytes().to_vec() };
        let bad = "{\"id\": \"api\",\n \"steps\": [{\"id\": \"a\", \"type\": \"noop\", \"depends_on\": [\"z\"]}]}";
        let err = c
            .deploy_pack(pb::DeployPackRequest { files: vec![file(bad)], ..Default::default() })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("workflow.json:2:55: error[E0018]: step `a` depends on `z`, which is not a step"),
            "{}",
            err.message()
        );
        let good = r#"{"id": "api", "params": {"n": {"type": "int", "default": 3}},
                       "steps": [{"id": "a", "type": "noop", "params": {"m": "${{ ${n} + 1 }}"}}],
                       "outputs": {"m": "${m@a}"}}"#;
        let r = c
            .deploy_pack(pb::DeployPackRequest { files: vec![file(good)], ..Default::default() })
            .await
            .expect("deploy")
            .into_inner();
        assert_eq!((r.name.as_str(), r.version.as_str()), ("api", "1"));
        let started = c
            .start_workflow(pb::StartWorkflowRequest {
                pack: "api".into(),
                facts: crate::client::facts(serde_json::json!([{"type": "Params", "fields": {"n": 41}}])),
                request_id: "api-1".into(),
            })
            .await
            .expect("start")
            .into_inner();
        let w = c
            .get_workflow(pb::GetWorkflowRequest { workflow_id: started.workflow_id, without_facts: true })
            .await
            .expect("get")
            .into_inner();
        assert_eq!((w.status.as_str(), w.result_json.as_str()), ("completed", r#"{"m":42}"#));
    });
}

/// A sequential definition on a real server: the second start waits in
/// the queue, and starts by itself when the first ends.
#[test]
fn a_sequential_definition_queues_its_second_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&tmp.path().join("data"));
    let cli = Cli { conn: vec!["--server".into(), server.addr.clone(), "--token".into(), TOKEN_A.into()] };
    let dir = write(
        &tmp.path().join("seq"),
        "id: seq\nrun_strategy: sequential\nparams:\n  k: string\nsteps:\n  - { id: wait, type: noop, gate: { signal: go, match: { k: \"${k}\" } } }\n",
    );
    cli.run(&["deploy", &dir]);
    let start = |k: &str| {
        let facts = format!(r#"[{{"type": "Params", "fields": {{"k": "{k}"}}}}]"#);
        cli.json(&["start", "seq", "--facts", &facts, "--request-id", k])
    };
    let first = start("one");
    assert_eq!(first["queued"], false, "{first}");
    let second = start("two");
    assert_eq!(second["queued"], true, "{second}");
    let text =
        cli.run(&["start", "seq", "--facts", r#"[{"type": "Params", "fields": {"k": "two"}}]"#, "--request-id", "two"]);
    assert!(text.contains("queued by the pack's run strategy"), "{text}");
    let (w1, w2) = (first["workflow_id"].as_str().expect("id"), second["workflow_id"].as_str().expect("id"));
    cli.run(&["signal", "go", "--id", "go-one", "--payload", r#"{"k": "one"}"#]);
    cli.settled(w1, "completed");
    cli.settled(w2, "running");
    cli.run(&["signal", "go", "--id", "go-two", "--payload", r#"{"k": "two"}"#]);
    cli.settled(w2, "completed");
}

/// A first_only definition started by a signal: a second signal while the
/// first run lives starts nothing, and is still routed (not an error).
#[test]
fn a_first_only_signal_trigger_drops_a_start_while_one_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&tmp.path().join("data"));
    let cli = Cli { conn: vec!["--server".into(), server.addr.clone(), "--token".into(), TOKEN_A.into()] };
    let dir = write(
        &tmp.path().join("once"),
        "id: once\nrun_strategy: first_only\ntriggers:\n  - signal: kick\nsteps:\n  - { id: wait, type: noop, gate: { signal: go } }\n",
    );
    cli.run(&["deploy", &dir]);
    cli.run(&["signal", "kick", "--id", "kick-1"]);
    let first = cli.newest("once");
    cli.settled(&first, "running");
    cli.run(&["signal", "kick", "--id", "kick-2"]);
    let listed = cli.run(&["ls", "--pack", "once"]);
    assert_eq!(listed.lines().count(), 2, "one run and the header: {listed}");
    let err = stoa().args(["start", "once", "--facts", "[]"]).args(&cli.conn).output().expect("run stoa");
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(!err.status.success() && stderr.contains("first_only: this start is dropped"), "{stderr}");
}

/// One foreach iteration restarted: an iteration is a workflow of the
/// body's pack, so it restarts like any run, on the fixed version.
#[test]
fn one_failed_foreach_iteration_restarts_on_its_own() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&tmp.path().join("data"));
    let cli = Cli { conn: vec!["--server".into(), server.addr.clone(), "--token".into(), TOKEN_A.into()] };
    let v1 = "id: fan\nparams: { d: { type: int, default: 2 } }\nsteps:\n  - id: each\n    foreach:\n      range: { to: 4 }\n      on_failure: continue\n      steps:\n        - { id: calc, type: noop, params: { q: \"${{ 12 / (${index} - ${d}) }}\" } }\n";
    let dir = write(&tmp.path().join("fan"), v1);
    cli.run(&["deploy", &dir]);
    let wf = cli.json(&["start", "fan", "--facts", r#"{"type": "Params", "fields": {}}"#])["workflow_id"]
        .as_str()
        .expect("id")
        .to_string();
    let w = cli.settled(&wf, "failed");
    assert!(w["reason"].as_str().is_some_and(|r| r.starts_with("step each failed: 1 of 4 iterations failed")), "{w}");
    let failed = cli.run(&["ls", "--pack", "fan.each", "--status", "failed"]);
    let it = failed.lines().nth(1).and_then(|l| l.split_whitespace().next()).expect("the failed iteration").to_string();
    // Fixed, deployed (the body's pack gets version 2), and that one
    // iteration restarted: the other three are not run again.
    write(&tmp.path().join("fan"), &v1.replace("- ${d}", "+ ${d}").replace("id: fan\n", "id: fan\nversion: \"2\"\n"));
    cli.run(&["deploy", &dir]);
    let again = cli.json(&["dag", "restart", &it])["workflow_id"].as_str().expect("id").to_string();
    let done = cli.settled(&again, "completed");
    assert_eq!(done["pack_version"], "2", "{done}");
    let runs = cli.json(&["dag", "runs", &again]);
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(2), "{runs}");
    let all = cli.run(&["ls", "--pack", "fan.each"]);
    assert_eq!(all.lines().count() - 1, 5, "4 iterations and 1 restart: {all}");
}
