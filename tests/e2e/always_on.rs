//! Always-on workflows through a real server: pack upgrades of live
//! workflows (dry run, canary, promotion interrupted by SIGKILL, rollback;
//! a rollback of a canary that added a schema field),
//! child workflows (results, cancellation, cycles), durable timers across
//! a restart, and signals (start once per id, delivery, lineage).

use std::path::Path;
use std::time::Duration;

use stoa_proto::v1 as pb;

use crate::client::{client, facts, media_answer, Client, RawWorker};
use crate::support::{Server, TOKEN_A};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt")
}

/// Writes a pack directory from (path, text) pairs.
fn write_pack(dir: &Path, files: &[(&str, &str)]) {
    for (p, text) in files {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
}

fn files_of(dir: &Path) -> Vec<pb::PackFile> {
    let src = stoa_rules::compile::PackSource::read_dir(dir).expect("pack");
    src.files
        .into_iter()
        .map(|(p, t)| pb::PackFile { path: p.to_string_lossy().into_owned(), content: t.into_bytes() })
        .collect()
}

async fn deploy_dir(
    c: &mut Client,
    dir: &Path,
    rollout: pb::Rollout,
    fraction: f64,
    dry_run: bool,
) -> pb::DeployPackResponse {
    c.deploy_pack(pb::DeployPackRequest {
        files: files_of(dir),
        dry_run,
        rollout: rollout as i32,
        canary_fraction: fraction,
        force: false,
    })
    .await
    .expect("deploy")
    .into_inner()
}

async fn start(c: &mut Client, pack: &str, request: &str, f: serde_json::Value) -> String {
    c.start_workflow(pb::StartWorkflowRequest { pack: pack.into(), facts: facts(f), request_id: request.into() })
        .await
        .expect("start")
        .into_inner()
        .workflow_id
}

async fn get(c: &mut Client, id: &str) -> pb::Workflow {
    c.get_workflow(pb::GetWorkflowRequest { workflow_id: id.into(), without_facts: false })
        .await
        .expect("get")
        .into_inner()
}

/// Polls `get` until `done` holds (at most `secs` seconds).
async fn wait_for(c: &mut Client, id: &str, secs: u64, done: impl Fn(&pb::Workflow) -> bool) -> pb::Workflow {
    for _ in 0..secs * 20 {
        let w = get(c, id).await;
        if done(&w) {
            return w;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let w = get(c, id).await;
    panic!("workflow {id} did not get there in {secs} s: {} {} {}", w.status, w.reason, w.pack_version);
}

async fn wait_upgrade(c: &mut Client, pack: &str, secs: u64) -> pb::UpgradeJob {
    for _ in 0..secs * 20 {
        let j = c.get_upgrade(pb::GetUpgradeRequest { name: pack.into() }).await.expect("upgrade").into_inner();
        if j.state == "done" {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the upgrade of {pack} did not finish in {secs} s");
}

async fn all_running(c: &mut Client, pack: &str) -> Vec<pb::WorkflowSummary> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .list_workflows(pb::ListWorkflowsRequest {
                pack: pack.into(),
                status: "running".into(),
                page_size: 1000,
                page_token: token,
                newest_first: false,
            })
            .await
            .expect("ls")
            .into_inner();
        out.extend(r.workflows);
        token = r.next_page_token;
        if token.is_empty() {
            return out;
        }
    }
}

fn renditions(w: &pb::Workflow) -> usize {
    w.facts.iter().filter(|f| f.r#type == "Rendition" && f.fields_json.contains("av1")).count()
}

const AV1_RULE: &str = r#"
// v2: every job also gets an AV1 rendition, live ones included.
rule "av1 rendition" {
    match {
        job: Job()
        not Rendition(source == job.source, codec == "av1")
    }
    action { insert("Rendition", #{ source: job.source, codec: "av1" }); }
}
"#;

#[test]
fn upgrades_reach_live_workflows_by_canary_then_all_survive_a_kill_and_roll_back() {
    const N: usize = 1000;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (v1, v2) = (tmp.path().join("v1"), tmp.path().join("v2"));
    let example = crate::support::repo().join("examples/packs/video-encode");
    for (dir, version) in [(&v1, "1.0.0"), (&v2, "2.0.0")] {
        let manifest = std::fs::read_to_string(example.join("pack.toml")).expect("pack.toml");
        let rules = std::fs::read_to_string(example.join("encode.rules")).expect("rules");
        let manifest = manifest.replace("version = \"1.0.0\"", &format!("version = \"{version}\""));
        write_pack(dir, &[("pack.toml", &manifest), ("encode.rules", &rules)]);
    }
    write_pack(&v2, &[("av1.rules", AV1_RULE)]);
    let data = tmp.path().join("data");
    let mut server = Server::start(&data);
    let rt = rt();
    rt.block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        deploy_dir(&mut a, &v1, pb::Rollout::All, 0.0, false).await;
        // Started 50 at a time, so their commits share flushes.
        let mut set = tokio::task::JoinSet::new();
        for i in 0..N {
            let mut c = a.clone();
            set.spawn(async move {
                let f = serde_json::json!([
                    {"type": "Source", "fields": {"uri": format!("s3://in/{i}.mov")}},
                    {"type": "Recipe", "fields": {"codec": "h264", "chunk_seconds": 10, "max_chunk_retries": 2}}
                ]);
                start(&mut c, "video-encode", &format!("up-{i}"), f).await
            });
            if set.len() >= 50 {
                set.join_next().await;
            }
        }
        while set.join_next().await.is_some() {}
        let ids: Vec<String> = all_running(&mut a, "video-encode").await.into_iter().map(|w| w.id).collect();
        assert_eq!(ids.len(), N);
        // Mixed states: a third are split (their chunks wait to encode),
        // the rest still wait for the split.
        let mut w = RawWorker::connect(&server.addr, TOKEN_A, &["media.split"], 1000).await.expect("worker");
        let mut answered = 0;
        while answered < N / 3 {
            let invs = w.invocations(Duration::from_secs(10)).await;
            assert!(!invs.is_empty(), "no split invocations");
            for inv in invs.iter().take(N / 3 - answered) {
                assert!(w.answer(inv, media_answer(inv)).await);
                answered += 1;
            }
        }
        drop(w);
        // Let the answered splits commit.
        tokio::time::sleep(Duration::from_millis(500)).await;

        // Dry run: every live workflow would gain one activation of the new rule.
        let dry = deploy_dir(&mut a, &v2, pb::Rollout::All, 0.0, true).await;
        assert_eq!(dry.rules_added, ["av1 rendition"]);
        assert_eq!(dry.live_workflows, N as u64);
        assert_eq!(dry.preview.len(), 1, "{:?}", dry.preview);
        assert_eq!((dry.preview[0].activations, dry.preview[0].workflows), (N as u64, N as u64));
        assert_eq!(get(&mut a, &ids[0]).await.pack_version, "1.0.0", "a dry run changes nothing");

        // Canary: a tenth of the workflows, chosen by id.
        let r = deploy_dir(&mut a, &v2, pb::Rollout::Canary, 0.1, false).await;
        assert!(r.upgrade.is_some());
        let job = wait_upgrade(&mut a, "video-encode", 60).await;
        assert_eq!(job.failed, 0);
        let live = all_running(&mut a, "video-encode").await;
        let on_v2 = live.iter().filter(|w| w.pack_version == "2.0.0").count();
        assert!((N / 20..N / 5).contains(&on_v2), "canary of 10% upgraded {on_v2} of {N}");
        assert_eq!(job.upgraded as usize, on_v2);
        for s in live.iter().take(200) {
            let w = get(&mut a, &s.id).await;
            assert_eq!(renditions(&w), usize::from(w.pack_version == "2.0.0"), "{}", w.id);
        }

        // Promote to all, and SIGKILL the server in the middle of it.
        a.rollout_pack(pb::RolloutPackRequest {
            name: "video-encode".into(),
            version: "2.0.0".into(),
            rollout: pb::Rollout::All as i32,
            canary_fraction: 0.0,
            force: false,
        })
        .await
        .expect("rollout");
        for _ in 0..400 {
            let j =
                a.get_upgrade(pb::GetUpgradeRequest { name: "video-encode".into() }).await.expect("job").into_inner();
            if j.scanned > 0 || j.state == "done" {
                eprintln!("killing the server at {} of {} workflows ({})", j.scanned, j.total, j.state);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    server.kill();
    let server = Server::start(&data);
    rt.block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        wait_upgrade(&mut a, "video-encode", 120).await;
        let live = all_running(&mut a, "video-encode").await;
        assert_eq!(live.len(), N);
        assert!(live.iter().all(|w| w.pack_version == "2.0.0"));
        let mut set = tokio::task::JoinSet::new();
        for s in live {
            let mut c = a.clone();
            set.spawn(async move {
                let w = get(&mut c, &s.id).await;
                assert_eq!(renditions(&w), 1, "{}: the new work exactly once", w.id);
                let t = c
                    .get_timeline(pb::GetTimelineRequest { workflow_id: s.id.clone(), from_seq: 1, limit: 0 })
                    .await
                    .expect("timeline")
                    .into_inner();
                let splits = t.entries.iter().filter(|e| e.kind == "invoked" && e.json.contains("media.split")).count();
                assert_eq!(splits, 1, "{}: old work was not redone", s.id);
                assert!(t.entries.iter().any(|e| e.kind == "upgraded"), "the timeline records the upgrade");
            });
            if set.len() >= 50 {
                set.join_next().await.expect("task").expect("checks");
            }
        }
        while let Some(r) = set.join_next().await {
            r.expect("checks");
        }

        // Roll back: v1's rules again, no fact lost, nothing fires.
        let r = a
            .rollback_pack(pb::RollbackPackRequest { name: "video-encode".into(), force: false })
            .await
            .expect("rollback");
        assert_eq!(r.into_inner().stable, "1.0.0");
        let job = wait_upgrade(&mut a, "video-encode", 60).await;
        assert_eq!((job.upgraded, job.firings, job.failed), (N as u64, 0, 0));
        for s in all_running(&mut a, "video-encode").await.iter().take(100) {
            let w = get(&mut a, &s.id).await;
            assert_eq!(w.pack_version, "1.0.0");
            assert_eq!(renditions(&w), 1, "rollback keeps the facts");
        }
    });
}

#[test]
fn a_parent_assembles_its_children_cancels_them_and_a_cycle_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let packs = tmp.path();
    write_pack(
        &packs.join("parent"),
        &[
            ("pack.toml", "[pack]\nname = \"parent\"\nversion = \"1\"\n"),
            (
                "main.rules",
                r#"
rule "fan out" {
    match { j: Job(state == "new") }
    action {
        modify(j, #{ state: "waiting" });
        start_workflow(j.child, [#{ type: "Part", fields: #{ n: 1 } }]);
        start_workflow(j.child, [#{ type: "Part", fields: #{ n: 2 } }]);
    }
    reaction { insert("Result", #{ value: result.value }); }
    error { fail("a child failed: " + error.message); }
}
rule "assemble" {
    match { n: count(Result()) s: sum(Result(), value) test(n == 2) }
    action { complete(#{ total: s }); }
}
"#,
            ),
        ],
    );
    write_pack(
        &packs.join("child"),
        &[
            ("pack.toml", "[pack]\nname = \"child\"\nversion = \"1\"\n"),
            ("main.rules", r#"rule "double" { match { p: Part() } action { complete(#{ value: p.n * 10 }); } }"#),
        ],
    );
    write_pack(
        &packs.join("slow"),
        &[
            ("pack.toml", "[pack]\nname = \"slow\"\nversion = \"1\"\n[functions.\"never.answered\"]\n"),
            ("main.rules", r#"rule "wait" { match { p: Part() } action { call("never.answered", #{}); } }"#),
        ],
    );
    write_pack(
        &packs.join("loop"),
        &[
            ("pack.toml", "[pack]\nname = \"loop\"\nversion = \"1\"\n"),
            (
                "main.rules",
                r#"rule "again" { match { p: Part() } action { start_workflow("parent", [#{ type: "Job", fields: #{ state: "new", child: "loop" } }]); } }"#,
            ),
        ],
    );
    let server = Server::start(&tmp.path().join("data"));
    rt().block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        for p in ["parent", "child", "slow", "loop"] {
            deploy_dir(&mut a, &packs.join(p), pb::Rollout::All, 0.0, false).await;
        }
        let job = |child: &str| serde_json::json!([{"type": "Job", "fields": {"state": "new", "child": child}}]);
        let p = start(&mut a, "parent", "p-ok", job("child")).await;
        let w = wait_for(&mut a, &p, 20, |w| w.status != "running").await;
        assert_eq!((w.status.as_str(), w.result_json.as_str()), ("completed", r#"{"total":30}"#), "{}", w.reason);

        // Cancelling the parent cancels both waiting children.
        let p = start(&mut a, "parent", "p-cancel", job("slow")).await;
        let w = wait_for(&mut a, &p, 20, |w| w.waiting.len() == 2).await;
        let children: Vec<String> = w.waiting.iter().map(|x| x.invocation_id.clone()).collect();
        assert!(w.waiting.iter().all(|x| x.function == "workflow:slow"));
        // The parent waits as soon as its turn commits; its children start
        // just after, from the outbox.
        let mut slow = all_running(&mut a, "slow").await;
        for _ in 0..400 {
            if slow.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            slow = all_running(&mut a, "slow").await;
        }
        assert_eq!(slow.len(), 2, "both children run: {children:?}");
        a.cancel_workflow(pb::CancelWorkflowRequest {
            workflow_id: p.clone(),
            reason: "test".into(),
            ..Default::default()
        })
        .await
        .expect("cancel");
        for c in &slow {
            let w = wait_for(&mut a, &c.id, 20, |w| w.status != "running").await;
            assert_eq!(w.status, "cancelled");
            assert!(w.reason.contains("no longer waits"), "{}", w.reason);
            assert!(w.origin_json.contains("parent"), "{}", w.origin_json);
        }

        // parent -> loop -> parent: refused with the chain.
        let p = start(&mut a, "parent", "p-cycle", job("loop")).await;
        let w = wait_for(&mut a, &p, 20, |w| w.status != "running").await;
        assert_eq!(w.status, "failed");
        assert!(w.reason.contains("start cycle parent -> loop -> parent"), "{}", w.reason);
    });
}

#[test]
fn timers_fire_once_and_late_after_the_server_was_down_across_their_deadlines() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pack = tmp.path().join("pack");
    write_pack(
        &pack,
        &[
            ("pack.toml", "[pack]\nname = \"timeout\"\nversion = \"1\"\n"),
            (
                "main.rules",
                r#"
rule "arm" {
    match { o: Order(state == "new") }
    action {
        modify(o, #{ state: "waiting" });
        after("1s", "Timeout", #{ order: o.id });
        after("1500ms", "Timeout", #{ order: o.id });
        after("2s", "Timeout", #{ order: o.id });
        after("1h", "Reminder", #{});
    }
}
rule "expire" {
    match { t: Timeout() o: Order(id == t.order, state == "waiting") }
    action { modify(o, #{ state: "expired" }); }
}
rule "count" {
    match { o: Order(state == "expired") n: count(Timeout()) test(n == 3) }
    action { complete(#{ timeouts: n }); }
}
"#,
            ),
        ],
    );
    let data = tmp.path().join("data");
    let mut server = Server::start(&data);
    let rt = rt();
    let id = rt.block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        deploy_dir(&mut a, &pack, pb::Rollout::All, 0.0, false).await;
        let id = start(
            &mut a,
            "timeout",
            "t-1",
            serde_json::json!([{"type": "Order", "fields": {"id": 7, "state": "new"}}]),
        )
        .await;
        let w = get(&mut a, &id).await;
        assert_eq!(w.timers.len(), 4);
        id
    });
    // Down across the deadline.
    server.kill();
    std::thread::sleep(Duration::from_millis(2500));
    let server = Server::start(&data);
    rt.block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        let w = wait_for(&mut a, &id, 20, |w| w.status != "running").await;
        assert_eq!((w.status.as_str(), w.result_json.as_str()), ("completed", r#"{"timeouts":3}"#), "{}", w.reason);
        assert!(w.timers.is_empty(), "completing drops the pending reminder");
        let t =
            a.get_timeline(pb::GetTimelineRequest { workflow_id: id.clone(), from_seq: 1, limit: 0 }).await.expect("t");
        let fired = t.into_inner().entries.iter().filter(|e| e.kind == "timer_fired").count();
        assert_eq!(fired, 3, "each deadline passed while down fires once");
    });
}

#[test]
fn a_signal_starts_once_per_id_is_delivered_and_its_lineage_links_two_workflows() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let packs = tmp.path();
    write_pack(
        &packs.join("ingest"),
        &[
            ("pack.toml", "[pack]\nname = \"ingest\"\nversion = \"1\"\n[signals.\"partition.ready\"]\nstart = true\n"),
            (
                "main.rules",
                r#"rule "load" { match { s: Signal(name == "partition.ready") } action { emit("partition.loaded", #{ day: s.payload.day }); complete(); } }"#,
            ),
        ],
    );
    write_pack(
        &packs.join("report"),
        &[
            (
                "pack.toml",
                "[pack]\nname = \"report\"\nversion = \"1\"\n[signals.\"partition.loaded\"]\nstart = true\ndeliver = true\n",
            ),
            (
                "main.rules",
                r#"
rule "report" {
    match { s: Signal(name == "partition.loaded") not Report(day == s.payload.day) }
    action { insert("Report", #{ day: s.payload.day }); }
}
rule "two days" { match { n: count(Report()) test(n == 2) } action { complete(#{ reports: n }); } }
"#,
            ),
        ],
    );
    let server = Server::start(&packs.join("data"));
    rt().block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        for p in ["ingest", "report"] {
            deploy_dir(&mut a, &packs.join(p), pb::Rollout::All, 0.0, false).await;
        }
        let send = |id: &str, day: i64| pb::SendSignalRequest {
            name: "partition.ready".into(),
            signal_id: id.into(),
            payload_json: format!(r#"{{"day": {day}}}"#),
            workflow_id: String::new(),
        };
        let first = a.send_signal(send("day-1", 1)).await.expect("signal").into_inner();
        let again = a.send_signal(send("day-1", 1)).await.expect("signal").into_inner();
        assert!(first.created && !again.created);
        assert_eq!(first.started.len(), 1);
        assert_eq!(again.started, first.started, "the same id starts one workflow");

        // The ingest workflow emitted partition.loaded, which started a report.
        let mut lineage = Vec::new();
        for _ in 0..200 {
            lineage = a
                .get_lineage(pb::GetLineageRequest { signal_id: "day-1".into() })
                .await
                .expect("lineage")
                .into_inner()
                .signals;
            if lineage.len() == 2 && !lineage[1].started.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(lineage.len(), 2, "{lineage:?}");
        assert_eq!((lineage[0].depth, lineage[0].name.as_str()), (0, "partition.ready"));
        assert_eq!((lineage[1].depth, lineage[1].name.as_str()), (1, "partition.loaded"));
        assert_eq!(lineage[1].from_workflow, first.started[0], "emitted by the workflow the first signal started");
        let report = lineage[1].started[0].clone();

        // Day 2 starts a second report, and is also delivered to the running
        // one (its pack takes deliveries), which then has both days.
        a.send_signal(send("day-2", 2)).await.expect("signal");
        let w = wait_for(&mut a, &report, 20, |w| w.status != "running").await;
        assert_eq!(w.result_json, r#"{"reports":2}"#);
        // Seen from the emitted signal, the chain goes back to day-1.
        let up = a
            .get_lineage(pb::GetLineageRequest { signal_id: lineage[1].id.clone() })
            .await
            .expect("lineage")
            .into_inner()
            .signals;
        assert_eq!(up.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["day-1", lineage[1].id.as_str()]);
    });
}

/// The CLI side, as docs/always-on.md shows it: a dry run's preview, the
/// deploy's progress to the end, a signal and its lineage.
/// `stoa ARGS` against `server` as tenant a: success, stdout, stderr.
fn stoa_as_a(server: &Server, args: &[&str]) -> (bool, String, String) {
    let out = crate::support::stoa()
        .args(args)
        .env("STOA_SERVER", &server.addr)
        .env("STOA_TOKEN", TOKEN_A)
        .output()
        .expect("stoa");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn the_cli_previews_upgrades_and_shows_lineage() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (v1, v2) = (tmp.path().join("v1"), tmp.path().join("v2"));
    let rules = r#"rule "wait" { match { s: Signal(name == "go") } action { call("never", #{}); } }"#;
    for (dir, version) in [(&v1, "1"), (&v2, "2")] {
        let manifest = format!(
            "[pack]\nname = \"cli-up\"\nversion = \"{version}\"\n[functions.never]\n[signals.go]\nstart = true\n"
        );
        write_pack(dir, &[("pack.toml", &manifest), ("main.rules", rules)]);
    }
    write_pack(
        &v2,
        &[("tag.rules", r#"rule "tag" { match { s: Signal() not Tag() } action { insert("Tag", #{}); } }"#)],
    );
    let server = Server::start(&tmp.path().join("data"));
    let stoa = |args: &[&str]| {
        let (ok, out, err) = stoa_as_a(&server, args);
        assert!(ok, "stoa {args:?}: {out}{err}");
        out
    };
    stoa(&["deploy", v1.to_str().expect("utf-8")]);
    for i in 0..3 {
        stoa(&["signal", "go", "--id", &format!("go-{i}"), "--payload", "{}"]);
    }
    let dry = stoa(&["deploy", "--dry-run", v2.to_str().expect("utf-8")]);
    expect_test::expect![[r#"
        cli-up 2 checked (dry run)
          new rules: tag
          3 live workflow(s) would be upgraded
          rule "tag" would gain 3 activation(s) in 3 workflow(s)
    "#]]
    .assert_eq(&dry);
    let out = stoa(&["deploy", v2.to_str().expect("utf-8")]);
    assert!(out.contains("upgrade of cli-up to 2: done — 3 of 3 looked at, 3 upgraded, 0 failed"), "{out}");
    assert_eq!(
        stoa(&["packs"]),
        format!("{:<24} {:<12} VERSIONS\n{:<24} {:<12} 1, 2\n", "NAME", "STABLE", "cli-up", "2")
    );
    stoa(&["rollout", "cli-up", "1", "--canary", "0.5"]);
    assert!(stoa(&["packs"]).ends_with("1, 2 (canary 1 on 50.0%)\n"));
    let back = stoa(&["rollback", "cli-up"]);
    assert!(back.starts_with("stable: 2\n"), "{back}");
    assert!(back.contains("0 failed"), "{back}");
    assert!(stoa(&["packs"]).ends_with("1, 2\n"));
    let lineage = stoa(&["lineage", "go-1"]);
    assert!(lineage.starts_with("signal go (go-1) {} sent through the API\n  started   wf_a."), "{lineage}");
    let again = stoa(&["signal", "go", "--id", "go-1"]);
    assert!(again.starts_with("go-1 already sent (nothing done again)"), "{again}");
}

/// Issue 13: a canary that adds an optional field, then `stoa rollback`.
/// The workflow's order holds `reminded`, which v1's schema lacks; v1's
/// rules go on modifying it and the workflow completes (its next turn used
/// to fail it: "Order.reminded is not a field of the schema of Order").
#[test]
fn a_canary_that_adds_an_optional_field_rolls_back_and_its_workflows_go_on() {
    const V1: &str = r#"
rule "reserve" {
    match { o: Order(status == "new") }
    action { modify(o, #{ status: "reserved" }); }
}
rule "ship" {
    match { o: Order(status == "reserved") s: Ship() }
    action { modify(o, #{ status: "shipped" }); retract(s); complete(#{ order: o.id }); }
}
"#;
    const REMIND: &str = r#"
rule "remind" {
    match { o: Order(status == "reserved", reminded == ()) }
    action { modify(o, #{ reminded: true }); }
}
"#;
    let manifest = |version: &str, extra: &str| {
        format!("[pack]\nname = \"orders\"\nversion = \"{version}\"\n\n[facts.Order]\nid = \"string\"\nstatus = \"string\"\n{extra}\n[facts.Ship]\n")
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let (v1, v2) = (tmp.path().join("v1"), tmp.path().join("v2"));
    write_pack(&v1, &[("pack.toml", &manifest("1", "")), ("orders.rules", V1)]);
    write_pack(
        &v2,
        &[("pack.toml", &manifest("2", "reminded = \"bool?\"\n")), ("orders.rules", V1), ("remind.rules", REMIND)],
    );
    let server = Server::start(&tmp.path().join("data"));
    rt().block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        deploy_dir(&mut a, &v1, pb::Rollout::All, 0.0, false).await;
        let id = start(
            &mut a,
            "orders",
            "o1",
            serde_json::json!([{"type": "Order", "fields": {"id": "o1", "status": "new"}}]),
        )
        .await;
        wait_for(&mut a, &id, 10, |w| w.facts.iter().any(|f| f.fields_json.contains("reserved"))).await;

        deploy_dir(&mut a, &v2, pb::Rollout::Canary, 1.0, false).await;
        wait_upgrade(&mut a, "orders", 30).await;
        let w = wait_for(&mut a, &id, 10, |w| w.facts.iter().any(|f| f.fields_json.contains("reminded"))).await;
        assert_eq!(w.pack_version, "2");

        let r =
            a.rollback_pack(pb::RollbackPackRequest { name: "orders".into(), force: false }).await.expect("rollback");
        assert_eq!(r.into_inner().stable, "1");
        let job = wait_upgrade(&mut a, "orders", 30).await;
        assert_eq!(job.failed, 0);
        let w = get(&mut a, &id).await;
        assert_eq!((w.status.as_str(), w.pack_version.as_str()), ("running", "1"), "{}", w.reason);

        a.assert_facts(pb::AssertFactsRequest {
            workflow_id: id.clone(),
            facts: facts(serde_json::json!([{"type": "Ship", "fields": {}}])),
        })
        .await
        .expect("assert");
        let w = wait_for(&mut a, &id, 10, |w| w.status != "running").await;
        assert_eq!(w.status, "completed", "{}", w.reason);
        let order = w.facts.iter().find(|f| f.r#type == "Order").expect("the order");
        assert!(order.fields_json.contains(r#""reminded":true"#), "the fact keeps the field: {}", order.fields_json);
    });
}

/// Issue 13: schema evolution is checked before it reaches live facts. A
/// dry run lists each schema change with the live workflows and facts it
/// reaches; a rollout, deploy or rollback across an incompatible one is
/// refused (nothing stored, nothing moved) unless forced.
#[test]
fn incompatible_schema_changes_are_reported_and_refused_unless_forced() {
    const RULES: &str = r#"
rule "ship" {
    match { o: Order(status == "new") s: Ship() }
    action { modify(o, #{ status: "shipped" }); retract(s); complete(#{ order: o.id }); }
}
"#;
    let manifest = |version: &str, order: &str| {
        format!("[pack]\nname = \"evolve\"\nversion = \"{version}\"\n\n[facts.Order]\nid = \"string\"\nstatus = \"string\"\n{order}\n[facts.Ship]\n")
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = |v: &str| tmp.path().join(v);
    write_pack(&dir("v1"), &[("pack.toml", &manifest("1", "qty = \"int\"\n")), ("main.rules", RULES)]);
    // qty retyped (incompatible), note added optional (compatible).
    write_pack(
        &dir("v2"),
        &[("pack.toml", &manifest("2", "qty = \"string\"\nnote = \"string?\"\n")), ("main.rules", RULES)],
    );
    let server = Server::start(&tmp.path().join("data"));
    let stoa = |args: &[&str]| {
        let (ok, out, err) = stoa_as_a(&server, args);
        (ok, format!("{out}{err}"))
    };
    let path = |v: &str| dir(v).to_str().expect("utf-8").to_string();
    assert!(stoa(&["deploy", &path("v1")]).0);
    let rt = rt();
    let ids: Vec<String> = rt.block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        let mut ids = Vec::new();
        for i in 0..2 {
            let order =
                serde_json::json!([{"type": "Order", "fields": {"id": format!("o{i}"), "status": "new", "qty": 3}}]);
            ids.push(start(&mut a, "evolve", &format!("o{i}"), order).await);
        }
        ids
    });

    let (ok, dry) = stoa(&["deploy", "--dry-run", &path("v2")]);
    assert!(ok, "{dry}");
    expect_test::expect![[r#"
        evolve 2 checked (dry run)
          schema Order.note: added, string, optional [compatible] (from 1: 2 fact(s) in 2 live workflow(s))
          schema Order.qty: retyped from int to string [INCOMPATIBLE] (from 1: 2 fact(s) in 2 live workflow(s))
          2 live workflow(s) would be upgraded
    "#]]
    .assert_eq(&dry);

    // Refused: the version is not even stored; the workflows stay on 1.
    let (ok, out) = stoa(&["deploy", &path("v2")]);
    assert!(!ok, "{out}");
    assert!(out.contains("1 incompatible schema change(s); nothing was changed"), "{out}");
    assert!(
        out.contains("Order.qty: retyped from int to string (from version 1; 2 fact(s) in 2 live workflow(s))"),
        "{out}"
    );
    assert!(stoa(&["packs"]).1.contains(" 1\n"), "only version 1 is deployed");

    // New workflows only: no live fact moves, so it goes.
    let (ok, out) = stoa(&["deploy", "--new-only", &path("v2")]);
    assert!(ok, "{out}");
    let (ok, out) = stoa(&["rollout", "evolve", "2"]);
    assert!(!ok && out.contains("rolling evolve out to 2 would move live facts"), "{out}");
    let (ok, out) = stoa(&["rollout", "evolve", "2", "--force"]);
    assert!(ok, "{out}");
    rt.block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        wait_upgrade(&mut a, "evolve", 30).await;
        for id in &ids {
            assert_eq!(get(&mut a, id).await.pack_version, "2");
        }
    });
    // Back across the same change, the other way.
    let (ok, out) = stoa(&["rollback", "evolve"]);
    assert!(!ok && out.contains("rolling evolve back to 1 would move live facts"), "{out}");
    assert!(out.contains("Order.qty: retyped from string to int (from version 2"), "{out}");
    let (ok, out) = stoa(&["rollback", "evolve", "--force"]);
    assert!(ok, "{out}");
}
