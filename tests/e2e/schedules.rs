//! Cron schedules against a real `stoa serve`: catch-up policies across a
//! SIGKILL, a crash between a tick's start and its record, pause, resume,
//! trigger, tenant isolation and field-named errors.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use stoa_proto::v1 as pb;

use crate::client::{client, facts, pack_files, Client};
use crate::support::{Server, TOKEN_A, TOKEN_B};

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt")
}

async fn deploy_ticker(c: &mut Client) {
    c.deploy_pack(pb::DeployPackRequest { files: pack_files("tests/packs/ticker"), ..Default::default() })
        .await
        .expect("deploy");
}

fn every_second(name: &str, catch_up: &str) -> pb::PutScheduleRequest {
    pb::PutScheduleRequest {
        name: name.into(),
        pack: "ticker".into(),
        cron: "@every 1s".into(),
        facts: facts(serde_json::json!([{"type": "Tick", "fields": {"source": name}}])),
        catch_up: catch_up.into(),
        ..Default::default()
    }
}

async fn get(c: &mut Client, name: &str) -> pb::Schedule {
    c.get_schedule(pb::ScheduleRef { name: name.into() }).await.expect("get schedule").into_inner()
}

/// Waits (bounded) until the schedule has `n` runs.
async fn wait_runs(c: &mut Client, name: &str, n: usize, within: Duration) -> pb::Schedule {
    let deadline = Instant::now() + within;
    loop {
        let s = get(c, name).await;
        if s.runs.len() >= n {
            return s;
        }
        assert!(Instant::now() < deadline, "{name}: {} run(s) after {within:?}, expected {n}", s.runs.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn workflow_count(c: &mut Client) -> usize {
    c.list_workflows(pb::ListWorkflowsRequest { page_size: 1000, ..Default::default() })
        .await
        .expect("ls")
        .into_inner()
        .workflows
        .len()
}

fn dues(s: &pb::Schedule) -> Vec<i64> {
    s.runs.iter().filter(|r| r.kind != "manual").map(|r| r.due_ms).collect()
}

/// Each run's tick is distinct and started its own workflow.
fn assert_once_per_tick(s: &pb::Schedule) {
    let d = dues(s);
    let ticks: BTreeSet<_> = d.iter().collect();
    assert_eq!(ticks.len(), d.len(), "{}: a tick ran twice: {d:?}", s.name);
    let ids: BTreeSet<_> = s.runs.iter().map(|r| &r.workflow_id).collect();
    assert_eq!(ids.len(), s.runs.len(), "{}: two runs share a workflow", s.name);
}

#[test]
fn catch_up_policies_across_a_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let mut server = Server::start(dir.path());
    let killed_at = rt.block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        deploy_ticker(&mut a).await;
        // The pack's own schedule would add workflows of its own.
        a.delete_schedule(pb::ScheduleRef { name: "heartbeat".into() }).await.expect("delete heartbeat");
        for (name, policy) in [("skip", "skip"), ("one", "one"), ("all", "all")] {
            a.put_schedule(every_second(name, policy)).await.expect("put schedule");
        }
        for name in ["skip", "one", "all"] {
            wait_runs(&mut a, name, 2, Duration::from_secs(5)).await;
        }
        // Kill half-way between two ticks: a kill in the moment between a
        // tick's start and its record is the other test's subject.
        tokio::time::sleep(Duration::from_millis(((1500 - now_ms() % 1000) % 1000) as u64)).await;
        server.kill();
        now_ms()
    });
    // Down across about four ticks.
    std::thread::sleep(Duration::from_millis(4200));
    let server = Server::start(dir.path());
    let restarted_at = now_ms();
    rt.block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        // Two on-time ticks after the restart, so the catch-up pass is over.
        for name in ["skip", "one", "all"] {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let s = get(&mut a, name).await;
                let after_restart_on_time =
                    s.runs.iter().filter(|r| r.started_ms as i64 >= restarted_at && r.kind == "on_time").count();
                if after_restart_on_time >= 2 {
                    break;
                }
                assert!(Instant::now() < deadline, "{name}: no on-time tick after the restart: {s:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Pause, so the counts below stay put while we compare them.
            a.pause_schedule(pb::ScheduleRef { name: name.into() }).await.expect("pause");
        }
        // A tick that began before its pause still records its run (a pass
        // records its ticks together once they all started): wait until
        // every workflow shows in a run. One that never does, a tick that
        // started a workflow its runs do not show, fails here.
        let deadline = Instant::now() + Duration::from_secs(5);
        let snapshots = loop {
            let mut snapshots = Vec::new();
            for name in ["skip", "one", "all"] {
                snapshots.push(get(&mut a, name).await);
            }
            let runs: usize = snapshots.iter().map(|s| s.runs.len()).sum();
            let workflows = workflow_count(&mut a).await;
            if runs == workflows {
                break snapshots;
            }
            assert!(Instant::now() < deadline, "{workflows} workflows, {runs} runs: {snapshots:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        for (name, s) in ["skip", "one", "all"].into_iter().zip(snapshots) {
            assert_once_per_tick(&s);
            assert!(s.runs.iter().all(|r| r.created), "{name}: a tick found its workflow already started: {s:?}");
            let last_before = s.runs.iter().filter(|r| (r.started_ms as i64) < killed_at).map(|r| r.due_ms).max();
            let last_before = last_before.expect("runs before the kill");
            // (A tick the scheduler reached late under load before the kill
            // would be a catch-up too; only the restart's count here.)
            let catch_up: Vec<i64> =
                s.runs.iter().filter(|r| r.kind == "catch_up" && r.due_ms > last_before).map(|r| r.due_ms).collect();
            let first_on_time = s
                .runs
                .iter()
                .filter(|r| r.kind == "on_time" && r.due_ms > last_before)
                .map(|r| r.due_ms)
                .min()
                .expect("an on-time tick after the restart");
            // Ticks the server missed: after the last one before the kill,
            // before the first on time after the restart.
            let missed: Vec<i64> = (1..).map(|k| last_before + k * 1000).take_while(|t| *t < first_on_time).collect();
            eprintln!("{name}: missed {} tick(s), caught up {}", missed.len(), catch_up.len());
            assert!(missed.len() >= 3, "{name}: the server was down across too few ticks: {missed:?}");
            match name {
                "skip" => assert!(catch_up.is_empty(), "skip ran missed ticks: {catch_up:?}"),
                "one" => {
                    assert_eq!(catch_up.len(), 1, "one: {catch_up:?}");
                    assert!(missed.contains(&catch_up[0]), "one ran {catch_up:?}, not a missed tick {missed:?}");
                }
                _ => assert_eq!(catch_up, missed, "all: every missed tick runs, in order"),
            }
            // Ticks are every second from the first run to the last for
            // `all`: nothing lost, nothing twice.
            if name == "all" {
                let d = dues(&s);
                assert!(d.windows(2).all(|w| w[1] - w[0] == 1000), "all: gaps in {d:?}");
            }
        }
    });
}

#[test]
fn a_crash_between_starting_a_tick_and_recording_it_starts_one_workflow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let mut server = Server::start_env(dir.path(), &[], &[("STOA_TEST_CRASH_AFTER_TICK", "crashy")]);
    rt.block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        deploy_ticker(&mut a).await;
        a.delete_schedule(pb::ScheduleRef { name: "heartbeat".into() }).await.expect("delete heartbeat");
        a.put_schedule(every_second("crashy", "skip")).await.expect("put schedule");
    });
    // The server aborts after the first tick's workflow is durable, before
    // the tick is recorded.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the crash hook did not fire");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Down past the grace period: the crashed tick is now a missed one, which
    // `skip` would not run again.
    std::thread::sleep(Duration::from_millis(1500));
    let server = Server::start(dir.path());
    rt.block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        let s = wait_runs(&mut a, "crashy", 3, Duration::from_secs(6)).await;
        a.pause_schedule(pb::ScheduleRef { name: "crashy".into() }).await.expect("pause");
        let s = if s.runs.len() > 3 { get(&mut a, "crashy").await } else { s };
        assert_once_per_tick(&s);
        // The restart found the crashed tick's workflow by its request id and
        // recorded it, whatever the catch-up policy.
        assert_eq!(s.runs[0].kind, "recovered", "{s:?}");
        assert!(s.runs.iter().all(|r| r.created), "{s:?}");
        assert_eq!(workflow_count(&mut a).await, s.runs.len(), "one workflow per tick");
    });
}

#[test]
fn pause_resume_trigger_tenants_and_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let server = Server::start(dir.path());
    rt.block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        let mut b = client(&server.addr, TOKEN_B).await;
        deploy_ticker(&mut a).await;
        // The pack's schedule is installed for the deploying tenant only.
        let hb = get(&mut a, "heartbeat").await;
        assert!(hb.from_pack && hb.cron == "@every 1s" && hb.catch_up == "skip", "{hb:?}");
        assert!(b.list_schedules(pb::ListSchedulesRequest {}).await.expect("ls").into_inner().schedules.is_empty());
        a.pause_schedule(pb::ScheduleRef { name: "heartbeat".into() }).await.expect("pause");

        // Errors name the field.
        let bad = |f: fn(&mut pb::PutScheduleRequest)| {
            let mut r = every_second("x", "one");
            f(&mut r);
            r
        };
        for (req, field) in [
            (bad(|r| r.cron = "61 * * * *".into()), "cron: `61 * * * *`: minute field"),
            (bad(|r| r.timezone = "Europe/Pariss".into()), "timezone: `Europe/Pariss`"),
            (bad(|r| r.pack = "nope".into()), "pack: `nope` is not deployed"),
            (bad(|r| r.name = "a b".into()), "name: "),
            (bad(|r| r.catch_up = "twice".into()), "catch_up: `twice`"),
            (bad(|r| r.max_catch_up = 3), "max_catch_up: "),
        ] {
            let e = a.put_schedule(req).await.expect_err("invalid");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
            assert!(e.message().starts_with(field), "{:?} does not start with {field:?}", e.message());
        }
        // Another tenant's pack is unknown too.
        let e = b.put_schedule(every_second("x", "one")).await.expect_err("b has no ticker pack");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);

        // Trigger: idempotent by request id, also while paused.
        let t1 = a
            .trigger_schedule(pb::TriggerScheduleRequest { name: "heartbeat".into(), request_id: "r1".into() })
            .await
            .expect("trigger")
            .into_inner();
        let t2 = a
            .trigger_schedule(pb::TriggerScheduleRequest { name: "heartbeat".into(), request_id: "r1".into() })
            .await
            .expect("trigger again")
            .into_inner();
        assert!(t1.created && !t2.created && t1.workflow_id == t2.workflow_id, "{t1:?} {t2:?}");
        let started = a
            .get_workflow(pb::GetWorkflowRequest { workflow_id: t1.workflow_id.clone(), without_facts: true })
            .await
            .expect("the triggered workflow")
            .into_inner();
        assert_eq!(started.origin_json, r#"{"by":"schedule","schedule":"heartbeat"}"#);
        let hb = get(&mut a, "heartbeat").await;
        assert!(hb.paused && hb.next_ms.is_empty());
        assert_eq!(hb.runs.iter().filter(|r| r.kind == "manual").count(), 2);

        // Another tenant sees none of it.
        for e in [
            b.get_schedule(pb::ScheduleRef { name: "heartbeat".into() }).await.expect_err("b get"),
            b.pause_schedule(pb::ScheduleRef { name: "heartbeat".into() }).await.expect_err("b pause"),
            b.resume_schedule(pb::ScheduleRef { name: "heartbeat".into() }).await.expect_err("b resume"),
            b.delete_schedule(pb::ScheduleRef { name: "heartbeat".into() }).await.expect_err("b delete"),
        ] {
            assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
        }
        let e = b
            .trigger_schedule(pb::TriggerScheduleRequest { name: "heartbeat".into(), request_id: String::new() })
            .await
            .expect_err("b trigger");
        assert_eq!(e.code(), tonic::Code::NotFound);

        // Paused: no tick runs. Resumed: ticks run again.
        let paused_runs = get(&mut a, "heartbeat").await.runs.len();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(get(&mut a, "heartbeat").await.runs.len(), paused_runs, "a paused schedule ran");
        let r = a.resume_schedule(pb::ScheduleRef { name: "heartbeat".into() }).await.expect("resume").into_inner();
        assert!(!r.paused && !r.next_ms.is_empty());
        let s = wait_runs(&mut a, "heartbeat", paused_runs + 1, Duration::from_secs(3)).await;
        assert_eq!(s.runs.last().expect("run").kind, "on_time");

        a.delete_schedule(pb::ScheduleRef { name: "heartbeat".into() }).await.expect("delete");
        let e = a.get_schedule(pb::ScheduleRef { name: "heartbeat".into() }).await.expect_err("deleted");
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(a.list_schedules(pb::ListSchedulesRequest {}).await.expect("ls").into_inner().schedules.is_empty());
        // Deploying the pack again restores its schedule.
        deploy_ticker(&mut a).await;
        assert!(get(&mut a, "heartbeat").await.from_pack);
    });
}

/// docs/schedules.md: its pack (the ```toml pack and ```rules blocks) is
/// deployed to a real server and its ```sh session commands run against it.
#[test]
fn docs_example_runs() {
    let doc = std::fs::read_to_string(crate::support::repo().join("docs/schedules.md")).expect("docs/schedules.md");
    let block = |tag: &str| {
        let start = doc.find(&format!("```{tag}\n")).unwrap_or_else(|| panic!("no ```{tag} block")) + tag.len() + 4;
        doc[start..start + doc[start..].find("```").expect("closed")].to_string()
    };
    let work = tempfile::tempdir().expect("tempdir");
    let pack = work.path().join("reports");
    std::fs::create_dir_all(&pack).expect("mkdir");
    std::fs::write(pack.join("pack.toml"), block("toml pack")).expect("write");
    std::fs::write(pack.join("reports.rules"), block("rules")).expect("write");
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(data.path());
    let commands: Vec<String> =
        block("sh session").lines().filter_map(|l| l.strip_prefix("$ stoa ")).map(str::to_string).collect();
    assert!(commands.len() >= 8, "{commands:?}");
    for cmd in commands {
        let out = crate::support::stoa()
            .current_dir(work.path())
            .args(split(&cmd))
            .env("STOA_SERVER", &server.addr)
            .env("STOA_TOKEN", TOKEN_A)
            .output()
            .expect("run stoa");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "stoa {cmd}: {}\n{text}", String::from_utf8_lossy(&out.stderr));
        if cmd == "schedule ls" {
            assert!(text.contains("nightly") && text.contains("quarter"), "{text}");
        }
        if cmd.starts_with("schedule get nightly") {
            assert!(text.contains("Europe/Paris") && text.contains("next "), "{text}");
        }
    }
}

/// Words of a command line; double quotes group.
fn split(cmd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in cmd.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}
