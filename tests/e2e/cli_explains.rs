//! The CLI explains itself: `describe`, headers and order of `ls` and
//! `packs`, exit statuses, `--help`, every problem of bad facts at once,
//! `assert` and `retract`, `init`, and what the server logs by default.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use stoa_proto::v1 as pb;

use crate::client::{client, RawWorker};
use crate::support::{repo, stoa, Server, TOKEN_A};

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `stoa ARGS` against `server`, in UTC.
fn cli(server: &Server, args: &[&str]) -> Output {
    stoa().args(args).args(["--server", &server.addr, "--token", TOKEN_A]).env("TZ", "UTC").output().expect("run stoa")
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `stoa init NAME --dir DIR` with a function retried after `backoff`, deployed.
fn shop(server: &Server, dir: &Path, backoff: &str) -> String {
    let pack = dir.join("shop");
    ok(stoa().args(["init", "shop", "--dir"]).arg(&pack).output().expect("init"));
    let manifest = std::fs::read_to_string(pack.join("pack.toml")).expect("pack.toml");
    std::fs::write(
        pack.join("pack.toml"),
        manifest.replace(r#"initial_backoff = "1s""#, &format!(r#"initial_backoff = "{backoff}""#)),
    )
    .expect("write");
    ok(cli(server, &["deploy", pack.to_str().expect("utf-8")]));
    pack.display().to_string()
}

fn start(server: &Server, facts: &str, request_id: &str) -> String {
    let out = ok(cli(server, &["start", "shop", "--facts", facts, "--request-id", request_id, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v["workflow_id"].as_str().expect("id").to_string()
}

fn until(what: &str, mut f: impl FnMut() -> Option<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = f() {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `stoa describe`: wall-clock times, a waiting invocation's attempt, its
/// failed attempts with their errors, the next retry, whether a worker
/// serves it; pending timers in local time and how far off; the timeline
/// with the times of its turns.
#[test]
fn describe_shows_attempts_errors_retries_workers_and_timers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"));
    shop(&server, dir.path(), "10s");
    let wf = start(&server, r#"{"type": "Order", "fields": {"id": "o-1", "status": "new"}}"#, "d1");

    let out = ok(cli(&server, &["describe", &wf]));
    assert!(out.contains("started:  20") && out.contains(" UTC ("), "{out}");
    assert!(out.contains("attempt 1: queued, waiting for a worker; no connected worker serves shop.process"), "{out}");
    assert!(out.contains("turn 1 ── start with 1 fact(s)  · 20"), "the turn's wall-clock time: {out}");

    // Threads of its own drive the worker's session while the CLI runs.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let worker = rt.block_on(async {
        let mut w = RawWorker::connect(&server.addr, TOKEN_A, &["shop.process"], 1).await.expect("worker");
        let inv = w.invocations(Duration::from_secs(20)).await.pop().expect("an invocation");
        assert!(w.fail(&inv, true, pb::FailureKind::Failed).await);
        w
    });
    let mut last = String::new();
    let out = until("the failed attempt", || {
        last = ok(cli(&server, &["describe", &wf]));
        last.contains("after attempt 1 failed").then(|| last.clone())
    });
    assert!(
        out.contains("attempt 2 due 20") && out.contains(" UTC (in ") && out.contains("1 connected worker serves it"),
        "{out}"
    );
    assert!(out.contains("attempt 1 failed 20") && out.contains("): test failure"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&ok(cli(&server, &["describe", &wf, "--json"]))).expect("json");
    let w = &v["waiting"][0];
    assert_eq!(
        (w["state"].as_str(), w["attempt"].as_u64(), w["workers"].as_u64()),
        (Some("backoff"), Some(2), Some(1)),
        "{v}"
    );
    assert_eq!(w["last_error"], "test failure", "{v}");
    assert!(w["retry_at_ms"].as_u64() > v["created_ms"].as_u64(), "{v}");
    assert_eq!(v["timeline"][0]["event"]["kind"], "turn_started", "{v}");
    // Once it is answered, the timeline holds the failed attempt with its
    // error and time, before the result.
    rt.block_on(async {
        let mut w = worker;
        let mut c = client(&server.addr, TOKEN_A).await;
        // Attempt 2 comes to this session after the backoff (8 to 12 s).
        let inv = w.invocations(Duration::from_secs(60)).await.pop().expect("attempt 2");
        assert_eq!(inv.attempt, 2);
        assert!(w.answer(&inv, serde_json::json!({"receipt": "r-1"})).await);
        let deadline = Instant::now() + Duration::from_secs(20);
        while c
            .get_workflow(pb::GetWorkflowRequest { workflow_id: wf.clone(), without_facts: true })
            .await
            .expect("get")
            .into_inner()
            .status
            == "running"
        {
            assert!(Instant::now() < deadline, "not completed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let out = ok(cli(&server, &["describe", &wf]));
    let failed = out.find(" attempt 1 at 20").unwrap_or_else(|| panic!("the failed attempt on the timeline: {out}"));
    assert!(out[failed..].contains(": test failure"), "{out}");
    let result = out.find("result  ").unwrap_or_else(|| panic!("{out}"));
    assert!(failed < result && out.contains("after 2 attempt(s)"), "{out}");
    let watched = ok(cli(&server, &["watch", &wf]));
    assert!(watched.contains(" attempt 1 at 20") && watched.contains("turn 2 ── result of"), "{watched}");

    // Timers: the approval example's 48-hour escalation.
    ok(cli(&server, &["deploy", repo().join("examples/packs/approval").to_str().expect("utf-8")]));
    let out = ok(cli(
        &server,
        &[
            "start",
            "approval",
            "--facts",
            r#"{"type": "Request", "fields": {"id": "r1", "amount": 10, "state": "new"}}"#,
            "--json",
        ],
    ));
    let wf: serde_json::Value = serde_json::from_str(&out).expect("json");
    let out = ok(cli(&server, &["describe", wf["workflow_id"].as_str().expect("id"), "--timeline", "0"]));
    assert!(
        out.contains("1 pending timer(s)") && out.contains("Escalate due 20") && out.contains("UTC (in 1 d 23 h)"),
        "{out}"
    );
    assert!(!out.contains("timeline"), "--timeline 0: {out}");
}

/// `stoa ls` and `stoa packs` print headers; `ls` is newest first across
/// pages, and the API pages newest first without repeats or gaps.
#[test]
fn ls_and_packs_print_headers_newest_first_across_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"));
    shop(&server, dir.path(), "1s");
    let mut started = Vec::new();
    for i in 0..5 {
        started.push(start(
            &server,
            &format!(r#"{{"type": "Order", "fields": {{"id": "o{i}", "status": "new"}}}}"#),
            &format!("ls{i}"),
        ));
        std::thread::sleep(Duration::from_millis(5));
    }
    let newest: Vec<String> = started.iter().rev().cloned().collect();
    let out = ok(cli(&server, &["ls"]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID ") && lines[0].contains("STATUS") && lines[0].contains("STARTED"), "{out}");
    let ids: Vec<String> = lines[1..].iter().map(|l| l.split_whitespace().next().expect("id").to_string()).collect();
    assert_eq!(ids, newest, "{out}");
    let ids: Vec<String> = ok(cli(&server, &["ls", "--limit", "3", "--json"]))
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json")["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(ids, newest[..3], "pages of the CLI");
    let mut sorted = started.clone();
    sorted.sort();
    let by_id = ok(cli(&server, &["ls", "--by-id"]));
    let ids: Vec<String> =
        by_id.lines().skip(1).map(|l| l.split_whitespace().next().expect("id").to_string()).collect();
    assert_eq!(ids, sorted, "{by_id}");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut c = client(&server.addr, TOKEN_A).await;
        let (mut token, mut seen) = (String::new(), Vec::new());
        loop {
            let r = c
                .list_workflows(pb::ListWorkflowsRequest {
                    page_size: 2,
                    page_token: token,
                    newest_first: true,
                    ..Default::default()
                })
                .await
                .expect("ls")
                .into_inner();
            seen.extend(r.workflows.iter().map(|w| (w.id.clone(), w.created_ms)));
            token = r.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        let ids: Vec<String> = seen.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(ids, newest, "pages of 2");
        assert!(seen.windows(2).all(|w| w[0].1 >= w[1].1), "{seen:?}");
        let bad = c
            .list_workflows(pb::ListWorkflowsRequest {
                page_token: "nope".into(),
                newest_first: true,
                ..Default::default()
            })
            .await
            .expect_err("a token of the other order");
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    });

    let out = ok(cli(&server, &["packs"]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[0].contains("STABLE") && lines[0].contains("VERSIONS"), "{out}");
    assert!(lines[1].starts_with("shop ") && lines[1].contains("0.1.0"), "{out}");
    let json = ok(cli(&server, &["packs", "--json"]));
    assert!(json.starts_with(r#"{"#), "--json prints no header: {json}");
}

/// Usage errors exit 2, a server's refusal 1 with its gRPC status,
/// failing tests 3; `--help` says so, shows examples and defaults, and
/// leaves the benchmarks out.
#[test]
fn exit_statuses_and_help_explain_themselves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"));
    let o = cli(&server, &["ls", "--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = cli(&server, &["get", "wf_a.nope"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("error: NOT_FOUND (5): workflow wf_a.nope does not exist"), "{}", text(&o));
    let o = stoa().args(["ls", "--server", "http://127.0.0.1:1", "--token", TOKEN_A]).output().expect("stoa");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("cannot reach the Stoa server"), "{}", text(&o));
    let o = stoa().args(["ls", "--server", &server.addr]).env_remove("STOA_TOKEN").output().expect("stoa");
    assert_eq!(o.status.code(), Some(2), "no token is a usage error: {}", text(&o));

    let help = ok(stoa().arg("--help").output().expect("help"));
    assert!(help.contains("Exit status:") && help.contains("2  usage") && help.contains("3  `stoa check`"), "{help}");
    assert!(!help.lines().any(|l| l.trim_start().starts_with("bench ")), "bench is not listed: {help}");
    assert!(help.contains("stoa bench"), "but mentioned: {help}");
    for cmd in ["describe", "ls", "start", "assert", "retract", "init", "serve", "packs"] {
        let h = ok(stoa().args([cmd, "--help"]).output().expect("help"));
        assert!(h.contains("Example: stoa "), "{cmd}: {h}");
    }
    let serve = ok(stoa().args(["serve", "--help"]).output().expect("help"));
    assert!(serve.contains("./stoa-data") && serve.contains("STOA_LOG") && serve.contains("127.0.0.1:7233"), "{serve}");
    let run = ok(stoa().args(["run", "--help"]).output().expect("help"));
    assert!(run.contains("`wf_` is") && run.contains("put in front unless it starts with it"), "{run}");
    let ls = ok(stoa().args(["ls", "--help"]).output().expect("help"));
    assert!(ls.contains("[default: 100]"), "{ls}");
}

/// Two facts with fields the schema lacks and one with a wrong type: one
/// INVALID_ARGUMENT naming all three (fact index and field), from the
/// server and from a local run.
#[test]
fn a_start_with_bad_facts_reports_every_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"));
    let pack = shop(&server, dir.path(), "1s");
    let facts = r#"[
        {"type": "Order", "fields": {"id": "a", "status": "new", "colour": "red"}},
        {"type": "Order", "fields": {"id": "b", "status": "new"}},
        {"type": "Order", "fields": {"id": "c", "status": "new", "size": 3}},
        {"type": "Order", "fields": {"id": 4, "status": "new"}}
    ]"#;
    let o = cli(&server, &["start", "shop", "--facts", facts]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("INVALID_ARGUMENT (3): 3 problems: "), "{out}");
    for p in [
        "fact 0: Order.colour is not a field of the schema of Order",
        "fact 2: Order.size is not a field of the schema of Order",
        "fact 3: Order.id must be string, found int 4",
    ] {
        assert!(out.contains(p), "{p}: {out}");
    }
    assert!(!out.contains("fact 1:"), "{out}");
    let file = dir.path().join("bad.json");
    std::fs::write(&file, facts).expect("write");
    let o = stoa().args(["run", &pack, "--facts"]).arg(&file).output().expect("stoa run");
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("3 problems") && out.contains("fact 0: Order.colour") && out.contains("fact 3: Order.id"),
        "{out}"
    );
}

/// `stoa assert` and `stoa retract` make one turn each and print it.
#[test]
fn assert_and_retract_print_their_turn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"));
    shop(&server, dir.path(), "1s");
    let wf = start(&server, r#"{"type": "Order", "fields": {"id": "o-1", "status": "new"}}"#, "ar");
    let file = dir.path().join("more.json");
    std::fs::write(
        &file,
        r#"[{"type": "Note", "fields": {"text": "gift wrap"}}, {"type": "Note", "fields": {"text": "fragile"}}]"#,
    )
    .expect("write");
    let out = ok(cli(&server, &["assert", &wf, "--facts", file.to_str().expect("utf-8")]));
    assert!(out.contains("turn 2 ── assert 2 fact(s)  · 20"), "{out}");
    assert!(out.contains(r#"+      f2 Note {"text":"gift wrap"}"#) && out.contains("f3 Note"), "{out}");
    assert!(out.contains(&format!("{wf} turn 2: running")), "{out}");
    let out = ok(cli(&server, &["assert", &wf, "--facts", r#"{"type": "Note", "fields": {"text": "inline"}}"#]));
    assert!(out.contains("f4 Note"), "{out}");
    let out = ok(cli(&server, &["retract", &wf, "f2", "3"]));
    assert!(out.contains("-      f2@1 Note") && out.contains("-      f3@1 Note"), "{out}");
    assert!(out.contains(&format!("{wf} turn 4: running")), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(cli(&server, &["retract", &wf, "f4", "--json"]))).expect("json");
    assert_eq!((v["turn"].as_u64(), v["status"].as_str()), (Some(5), Some("running")), "{v}");
    let o = cli(&server, &["retract", &wf, "f99"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("INVALID_ARGUMENT (3): fact f99 does not exist"), "{}", text(&o));
    let o = cli(&server, &["retract", &wf, "x1"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// `stoa init` makes a pack that passes `check` and `test` as it is, and
/// refuses a directory that is not empty.
#[test]
fn init_scaffolds_a_pack_that_passes_check_and_test() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pack = dir.path().join("orders");
    let out = ok(stoa().args(["init", "orders", "--dir"]).arg(&pack).output().expect("init"));
    assert!(out.contains("next: stoa check"), "{out}");
    for f in ["pack.toml", "orders.rules", "tests/orders.toml", "facts.json", "mocks.toml"] {
        assert!(pack.join(f).is_file(), "{f}");
    }
    let out = ok(stoa().arg("check").arg(&pack).output().expect("check"));
    assert!(out.contains("orders 0.1.0: 1 rule(s), 2 test(s), 0 warning(s), no errors"), "{out}");
    let out = ok(stoa().arg("test").arg(&pack).arg("--coverage").output().expect("test"));
    assert!(out.contains("2 passed, 0 failed"), "{out}");
    let out = ok(stoa()
        .arg("run")
        .arg(&pack)
        .arg("--facts")
        .arg(pack.join("facts.json"))
        .arg("--mocks")
        .arg(pack.join("mocks.toml"))
        .output()
        .expect("run"));
    assert!(out.contains("completed"), "{out}");
    // Not over a pack that is there; an empty directory is fine.
    let o = stoa().args(["init", "orders", "--dir"]).arg(&pack).output().expect("init");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("exists and is not empty; nothing was written"), "{}", text(&o));
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    ok(stoa().args(["init", "other", "--dir"]).arg(&empty).output().expect("init"));
    let o = stoa().current_dir(dir.path()).args(["init", "not a name"]).output().expect("init");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // A failing test exits 3, and so does a pack with errors.
    let tests = pack.join("tests/orders.toml");
    let t = std::fs::read_to_string(&tests).expect("read");
    std::fs::write(&tests, t.replace(r#"status = "completed""#, r#"status = "failed""#)).expect("write");
    let o = stoa().arg("test").arg(&pack).output().expect("test");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("1 passed, 1 failed"), "{}", text(&o));
    std::fs::write(&tests, t.replace(r#"fired = ["process order"]"#, r#"fired = ["ship"]"#)).expect("write");
    let o = stoa().arg("test").arg(&pack).output().expect("test");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains(r#"no rule is named "ship""#), "{}", text(&o));
}

/// At the default level the server says what happens: deploys, rollouts,
/// workflows started and ended, workers connected and gone; no library
/// noise.
#[test]
fn default_server_logs_say_what_happens() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("serve.log");
    let mut child = crate::support::Proc(
        stoa()
            .args(["serve", "--listen", "127.0.0.1:0", "--token", &format!("a={TOKEN_A}"), "--data"])
            .arg(dir.path().join("data"))
            .env_remove("STOA_LOG")
            .env_remove("STOA_LOG_FORMAT")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn stoa serve"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let addr = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("listening on ").map(|a| format!("http://{a}")))
        .expect("the server's address");
    let server =
        Server { child: std::process::Command::new("true").spawn().expect("true"), addr, metrics: None, console: None };
    shop(&server, dir.path(), "1s");
    let wf = start(&server, r#"{"type": "Order", "fields": {"id": "o-1", "status": "new"}}"#, "log");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut w = RawWorker::connect(&server.addr, TOKEN_A, &["shop.process"], 1).await.expect("worker");
        let inv = w.invocations(Duration::from_secs(20)).await.pop().expect("an invocation");
        assert!(w.answer(&inv, serde_json::json!({"receipt": "r-1"})).await);
        let mut c = client(&server.addr, TOKEN_A).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while c
            .get_workflow(pb::GetWorkflowRequest { workflow_id: wf.clone(), without_facts: true })
            .await
            .expect("get")
            .into_inner()
            .status
            == "running"
        {
            assert!(Instant::now() < deadline, "not completed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    drop(rt);
    let text = until("the worker's disconnection in the log", || {
        let t = std::fs::read_to_string(&log).expect("log");
        t.contains("worker disconnected").then_some(t)
    });
    for what in [
        "pack deployed",
        "rollout: every workflow runs 0.1.0",
        "workflow started",
        "workflow completed",
        "worker connected",
    ] {
        assert!(text.lines().any(|l| l.contains(" INFO ") && l.contains(what)), "{what}:\n{text}");
    }
    assert!(text.contains(&wf), "{text}");
    for noise in [" h2", " hyper", " tower", " sled"] {
        assert!(
            !text.lines().any(|l| l.contains(&format!("{noise}:")) || l.contains(&format!("{noise}::"))),
            "{noise}:\n{text}"
        );
    }
}
