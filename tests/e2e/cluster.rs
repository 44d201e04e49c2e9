//! Three `stoa serve` on one throwaway PostgreSQL, with a Rust SDK worker
//! that knows one of them: partitions spread, any server answers, one
//! server SIGKILLed under load or frozen with SIGSTOP past its lease, and
//! nothing acknowledged is lost or applied twice.

use std::time::{Duration, Instant};

use stoa_pgstore::throwaway::{Durability, TempPostgres};
use stoa_proto::v1 as pb;

use crate::client::{client, deploy, facts, Client};
use crate::support::{worker_bin, Proc, Server, TOKEN_A};

/// Short leases, so that takeovers happen within a test's patience.
const LEASE_MS: &str = "1500";

fn postgres(db: &str) -> (TempPostgres, String) {
    let pg = TempPostgres::start(Durability::Fast).expect("a throwaway PostgreSQL");
    pg.create_database(db).expect("database");
    let url = pg.url(db);
    (pg, url)
}

fn server(url: &str) -> Server {
    Server::start_on(url, &["--lease-ms", LEASE_MS])
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// The Rust SDK's media worker, told one server's address only.
fn rust_worker(addr: &str) -> Proc {
    Proc(
        std::process::Command::new(worker_bin())
            .args(["--server", addr, "--token", TOKEN_A, "--work-scale", "0", "--concurrency", "32"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn stoa-worker-media"),
    )
}

/// How many partitions each server (by address) holds.
fn spread(pg: &TempPostgres, db: &str) -> String {
    pg.psql(
        db,
        "SELECT string_agg(address || '=' || n, ' ' ORDER BY address) FROM \
         (SELECT m.address, count(*) AS n FROM partitions p JOIN members m ON m.id = p.owner \
          WHERE p.expires_at > now() GROUP BY m.address) t",
    )
    .expect("psql")
}

/// `n` servers on a new database of a throwaway PostgreSQL, once each
/// holds about its share of the partitions; and their addresses.
fn cluster(db: &str, n: usize) -> (TempPostgres, String, Vec<Server>, Vec<String>) {
    let (pg, url) = postgres(db);
    let servers: Vec<Server> = (0..n).map(|_| server(&url)).collect();
    let addrs: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
    wait_spread(&pg, db, &addrs);
    (pg, url, servers, addrs)
}

/// Waits until each of `addrs` holds about its share of the partitions.
fn wait_spread(pg: &TempPostgres, db: &str, addrs: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = spread(pg, db);
        let counts: Vec<u64> = addrs
            .iter()
            .map(|a| {
                let a = a.trim_start_matches("http://");
                now.split(' ')
                    .find_map(|kv| kv.strip_prefix(&format!("{a}=")))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            })
            .collect();
        let fair = 256 / addrs.len() as u64;
        if counts.iter().all(|n| *n + 2 >= fair) && counts.iter().sum::<u64>() == 256 {
            return;
        }
        assert!(Instant::now() < deadline, "partitions did not spread over {addrs:?}: {now}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One chunk per video: the SDK's worker answers split, encode, assemble
/// and index, four results a workflow.
const RESULTS: usize = 4;

fn start_request(i: usize, tag: &str) -> pb::StartWorkflowRequest {
    pb::StartWorkflowRequest {
        pack: "video-encode".into(),
        facts: facts(serde_json::json!([
            {"type": "Source", "fields": {"uri": format!("s3://in/{tag}-{i}.mov")}},
            {"type": "Recipe", "fields": {"codec": "h264", "chunk_seconds": 100000, "max_chunk_retries": 2}}
        ])),
        request_id: format!("{tag}-{i}"),
    }
}

/// Starts `n` workflows, 32 at a time, spread over `clients`, and returns
/// their ids in order.
async fn start_many(clients: &[Client], n: usize, tag: &str) -> Vec<String> {
    let mut ids = vec![String::new(); n];
    for batch in (0..n).collect::<Vec<_>>().chunks(32) {
        let mut set = tokio::task::JoinSet::new();
        for &i in batch {
            let mut c = clients[i % clients.len()].clone();
            let tag = tag.to_string();
            set.spawn(async move { (i, c.start_workflow(start_request(i, &tag)).await) });
        }
        while let Some(r) = set.join_next().await {
            let (i, started) = r.expect("task");
            ids[i] = started.unwrap_or_else(|e| panic!("start {tag}-{i}: {e}")).into_inner().workflow_id;
        }
    }
    ids
}

fn completed(pg: &TempPostgres, db: &str) -> usize {
    pg.psql(db, "SELECT count(*) FROM workflows WHERE status = 'completed'").expect("psql").parse().expect("count")
}

/// Waits until `n` workflows completed, in all, before `within`.
async fn wait_completed(pg: &TempPostgres, db: &str, n: usize, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while completed(pg, db) < n {
        assert!(Instant::now() < deadline, "{what}: {} of {n} completed", completed(pg, db));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The workflow once it is no longer running (before `deadline`).
async fn ended(c: &mut Client, id: &str, deadline: Instant) -> pb::Workflow {
    loop {
        let w = c
            .get_workflow(pb::GetWorkflowRequest { workflow_id: id.into(), without_facts: true })
            .await
            .expect("get")
            .into_inner();
        if w.status != "running" {
            return w;
        }
        assert!(Instant::now() < deadline, "{id} is still running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `server_crash::all_completed_once`, with this file's workflows.
async fn wait_all_completed(c: &mut Client, ids: &[String], within: Duration) {
    crate::server_crash::all_completed_once(c, ids, within, RESULTS).await;
}

#[test]
fn three_servers_one_sigkilled_under_load_lose_nothing_and_apply_nothing_twice() {
    let db = "cluster";
    let (pg, _url, mut servers, addrs) = cluster(db, 3);
    // The worker knows the second server only; it learns the others.
    rt().block_on(async {
        let mut clients = Vec::new();
        for a in &addrs {
            clients.push(client(a, TOKEN_A).await);
        }
        // Deployed through one server, started through all three; the
        // worker knows the second server only, and learns the others.
        deploy(&mut clients[0], "examples/packs/video-encode").await;
        let ids = start_many(&clients, 1000, "k").await;
        let _worker = rust_worker(&addrs[1]);
        wait_completed(&pg, db, 100, Duration::from_secs(60), "before the kill").await;
        let done = completed(&pg, db);
        eprintln!("killing server 0 with {done} of 1000 workflows completed; spread {}", spread(&pg, db));
        assert!(done < 1000, "the kill did not land in the middle of the work");
        servers[0].kill();
        clients.remove(0);
        // Any surviving server answers for every workflow, the dead
        // server's included, once its partitions moved.
        let retried = start_many(&clients, 1000, "k").await;
        assert_eq!(retried, ids, "a retried start found its first workflow");
        wait_spread(&pg, db, &addrs[1..]);
        wait_all_completed(&mut clients[0], &ids, Duration::from_secs(240)).await;
    });
    drop(servers);
}

/// A server frozen past its lease loses its partitions; once resumed,
/// its commits are refused (the workflows' histories show no turn twice),
/// it notices, and it gets its share back from the others.
#[test]
fn a_server_frozen_past_its_lease_is_fenced_and_rejoins() {
    let db = "fence";
    let (pg, _url, servers, addrs) = cluster(db, 2);
    let _worker = rust_worker(&addrs[1]);
    rt().block_on(async {
        let mut a = client(&addrs[0], TOKEN_A).await;
        let mut b = client(&addrs[1], TOKEN_A).await;
        deploy(&mut b, "examples/packs/video-encode").await;
        let ids = start_many(std::slice::from_ref(&b), 300, "f").await;
        let frozen = servers[0].child.id().to_string();
        let signal = |sig: &str| {
            let ok = std::process::Command::new("kill").args([sig, &frozen]).status().expect("kill").success();
            assert!(ok, "kill {sig} {frozen}");
        };
        wait_completed(&pg, db, 20, Duration::from_secs(60), "before the freeze").await;
        signal("-STOP");
        let epochs_before = pg.psql(db, "SELECT sum(epoch) FROM partitions").expect("psql");
        // The other server takes every partition once the leases ran out.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !spread(&pg, db).eq(&format!("{}=256", addrs[1].trim_start_matches("http://"))) {
            assert!(Instant::now() < deadline, "no takeover: {}", spread(&pg, db));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let epochs_after = pg.psql(db, "SELECT sum(epoch) FROM partitions").expect("psql");
        assert_ne!(epochs_before, epochs_after, "a takeover claims at a new epoch");
        // Work goes on without the frozen server for a while.
        let mid = completed(&pg, db);
        wait_completed(&pg, db, (mid + 20).min(ids.len()), Duration::from_secs(60), "while frozen").await;
        signal("-CONT");
        // It notices, drops what it held and takes its share back.
        wait_spread(&pg, db, &addrs);
        let more = start_many(std::slice::from_ref(&a), 100, "g").await;
        wait_all_completed(&mut b, &ids, Duration::from_secs(180)).await;
        wait_all_completed(&mut a, &more, Duration::from_secs(120)).await;
    });
    drop(servers);
}

/// Each of three servers in turn is stopped with SIGTERM (it hands its
/// partitions back at once) and started again, while workflows run and
/// more are started through the servers that are up: nothing is lost,
/// nothing is applied twice.
#[test]
fn a_rolling_restart_of_three_servers_under_load_loses_nothing() {
    let db = "rolling";
    let (pg, url, mut servers, now) = cluster(db, 3);
    let addrs = |s: &[Server]| s.iter().map(|s| s.addr.clone()).collect::<Vec<_>>();
    let _worker = rust_worker(&now[0]);
    rt().block_on(async {
        let mut first = client(&now[0], TOKEN_A).await;
        deploy(&mut first, "examples/packs/video-encode").await;
        let mut ids = start_many(&[first], 200, "r").await;
        for i in 0..3 {
            let stopped = servers[i].terminate();
            assert!(stopped.success(), "server {i} did not stop cleanly: {stopped:?}");
            // It left: no member row, no partition, whatever its leases said.
            let gone = servers[i].addr.trim_start_matches("http://").to_string();
            let left = pg
                .psql(
                    db,
                    &format!(
                        "SELECT count(*) FROM partitions p JOIN members m ON m.id = p.owner WHERE m.address = '{gone}'"
                    ),
                )
                .expect("psql");
            assert_eq!(left, "0", "server {i} still owns partitions after SIGTERM");
            // Handed back at once: the two others hold everything well
            // before a lease could have run out.
            let t = Instant::now();
            let up: Vec<String> =
                addrs(&servers).into_iter().enumerate().filter(|(k, _)| *k != i).map(|(_, a)| a).collect();
            wait_spread(&pg, db, &up);
            eprintln!("server {i} stopped; the others took its partitions in {:?}", t.elapsed());
            let mut clients = Vec::new();
            for a in &up {
                clients.push(client(a, TOKEN_A).await);
            }
            ids.extend(start_many(&clients, 100, &format!("r{i}")).await);
            servers[i] = server(&url);
            wait_spread(&pg, db, &addrs(&servers));
        }
        let mut c = client(&servers[2].addr, TOKEN_A).await;
        wait_all_completed(&mut c, &ids, Duration::from_secs(240)).await;
    });
    drop(servers);
}

/// Workflows whose timer turns fail pathologically (a rule recursing past
/// the call-depth ceiling when the timer fires), spread over three
/// servers' partitions: each fails its own workflow, no server goes down,
/// and the other workflows keep completing.
#[test]
fn poison_timers_on_a_cluster_fail_their_workflows_and_nothing_else() {
    let (_pg, _url, mut servers, now) = cluster("poison", 3);
    let _worker = rust_worker(&now[0]);
    let rules = r#"
rule "arm" { match { g: Go() } action { after("1s", "Boom", #{}); } }
rule "boom" { match { b: Boom() } action { let f = |n, g| g.call(n + 1, g); f.call(0, f); } }
"#;
    rt().block_on(async {
        let mut a = client(&now[0], TOKEN_A).await;
        deploy(&mut a, "examples/packs/video-encode").await;
        a.deploy_pack(pb::DeployPackRequest {
            files: crate::hostile::pack("poison", "max_call_depth = 256", rules),
            ..Default::default()
        })
        .await
        .expect("deploy the poison pack");
        let mut poisoned = Vec::new();
        for i in 0..30 {
            let facts = facts(serde_json::json!([{"type": "Go", "fields": {}}]));
            let r = pb::StartWorkflowRequest { pack: "poison".into(), facts, request_id: format!("p{i}") };
            poisoned.push(a.start_workflow(r).await.expect("start poison").into_inner().workflow_id);
        }
        let clients = vec![a.clone()];
        let ids = start_many(&clients, 200, "v").await;
        wait_all_completed(&mut a, &ids, Duration::from_secs(180)).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        for id in &poisoned {
            let w = ended(&mut a, id, deadline).await;
            assert_eq!(w.status, "failed", "{id}");
            assert!(w.reason.contains("call stack too deep"), "{id}: {}", w.reason);
        }
    });
    for (i, s) in servers.iter_mut().enumerate() {
        assert!(s.child.try_wait().expect("try_wait").is_none(), "server {i} went down");
    }
}

/// A cron schedule on three servers: the coordinator (the holder of
/// partition 0) ticks it; schedule calls to any server reach it; when it is
/// SIGKILLed, another takes over, runs the missed ticks by the schedule's
/// policy, and each tick starts exactly one workflow.
#[test]
fn a_schedule_ticks_once_per_tick_across_a_coordinator_kill() {
    let db = "cron";
    let (pg, _url, mut servers, now) = cluster(db, 3);
    let coordinator = pg
        .psql(db, "SELECT m.address FROM partitions p JOIN members m ON m.id = p.owner WHERE p.id = 0")
        .expect("psql");
    let victim = now.iter().position(|a| a.ends_with(&coordinator)).expect("the coordinator is one of them");
    let other = (victim + 1) % 3;
    rt().block_on(async {
        let mut c = client(&now[other], TOKEN_A).await;
        c.deploy_pack(pb::DeployPackRequest {
            files: crate::client::pack_files("tests/packs/ticker"),
            ..Default::default()
        })
        .await
        .expect("deploy through a server that is not the coordinator");
        let schedule = pb::PutScheduleRequest {
            name: "every-second".into(),
            pack: "ticker".into(),
            cron: "@every 1s".into(),
            facts: facts(serde_json::json!([{"type": "Tick", "fields": {"source": "cluster"}}])),
            catch_up: "all".into(),
            ..Default::default()
        };
        c.put_schedule(schedule).await.expect("put the schedule through another server");
        let runs = |n: usize| {
            let mut c = c.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    match c.get_schedule(pb::ScheduleRef { name: "every-second".into() }).await {
                        Ok(s) if s.get_ref().runs.len() >= n => return s.into_inner(),
                        _ => {}
                    }
                    assert!(Instant::now() < deadline, "fewer than {n} runs within a minute");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        runs(3).await;
        servers[victim].kill();
        let after = runs(10).await;
        let dues: Vec<i64> = after.runs.iter().map(|r| r.due_ms).collect();
        let distinct: std::collections::BTreeSet<_> = dues.iter().collect();
        assert_eq!(distinct.len(), dues.len(), "a tick ran twice: {dues:?}");
        let ids: std::collections::BTreeSet<_> = after.runs.iter().map(|r| &r.workflow_id).collect();
        assert_eq!(ids.len(), after.runs.len(), "two runs share a workflow");
        // Every workflow of the ticker pack is one run's: none started twice.
        let started: usize =
            pg.psql(db, "SELECT count(*) FROM workflows WHERE pack = 'ticker'").expect("psql").parse().expect("count");
        // The pack's own schedule (`heartbeat`) ticks too.
        let mut recorded = 0;
        for name in ["every-second", "heartbeat"] {
            let s = c.get_schedule(pb::ScheduleRef { name: name.into() }).await.expect("get").into_inner();
            recorded += s.runs.len();
        }
        assert!(started <= recorded + 2, "{started} workflows for {recorded} recorded runs");
        // Consecutive ticks, one second apart, none missing across the kill.
        for w in dues.windows(2) {
            assert_eq!(w[1] - w[0], 1000, "{dues:?}");
        }
    });
    drop(servers);
}

fn signal_pack(name: &str, manifest: &str, rules: &str) -> Vec<pb::PackFile> {
    vec![
        pb::PackFile {
            path: "pack.toml".into(),
            content: format!("[pack]\nname = \"{name}\"\nversion = \"1\"\n{manifest}").into_bytes(),
        },
        pb::PackFile { path: "main.rules".into(), content: rules.as_bytes().to_vec() },
    ]
}

/// Signal subscriptions on three servers: each signal id, sent to all
/// three at once, starts one workflow of the subscribing pack; the signal
/// it emits starts one workflow of the next.
#[test]
fn each_signal_id_starts_one_workflow_on_a_cluster() {
    let db = "signals";
    let (pg, _url, servers, now) = cluster(db, 3);
    rt().block_on(async {
        let mut clients = Vec::new();
        for a in &now {
            clients.push(client(a, TOKEN_A).await);
        }
        let ingest = signal_pack(
            "ingest",
            "[signals.\"partition.ready\"]\nstart = true\n",
            r#"rule "load" { match { s: Signal(name == "partition.ready") } action { emit("partition.loaded", #{ day: s.payload.day }); complete(); } }"#,
        );
        let report = signal_pack(
            "report",
            "[signals.\"partition.loaded\"]\nstart = true\n",
            r#"rule "report" { match { s: Signal(name == "partition.loaded") } action { complete(#{ day: s.payload.day }); } }"#,
        );
        for files in [ingest, report] {
            clients[1].deploy_pack(pb::DeployPackRequest { files, ..Default::default() }).await.expect("deploy");
        }
        let mut sends = tokio::task::JoinSet::new();
        for day in 0..30 {
            for c in &clients {
                let mut c = c.clone();
                sends.spawn(async move {
                    let req = pb::SendSignalRequest {
                        name: "partition.ready".into(),
                        signal_id: format!("day-{day}"),
                        payload_json: format!(r#"{{"day": {day}}}"#),
                        workflow_id: String::new(),
                    };
                    c.send_signal(req).await.expect("signal").into_inner()
                });
            }
        }
        let mut created = 0;
        while let Some(r) = sends.join_next().await {
            created += usize::from(r.expect("task").created);
        }
        assert_eq!(created, 30, "each id is routed once");
        let count = |pack: &str| -> usize {
            pg.psql(db, &format!("SELECT count(*) FROM workflows WHERE pack = '{pack}'"))
                .expect("psql")
                .parse()
                .expect("count")
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while count("report") < 30 {
            assert!(Instant::now() < deadline, "{} reports started", count("report"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!((count("ingest"), count("report")), (30, 30), "a signal id started two workflows");
    });
    drop(servers);
}

/// The Python worker, told one server of three, serves the workflows every
/// server owns.
#[test]
fn the_python_worker_serves_every_server_of_a_cluster() {
    let (_pg, _url, servers, now) = cluster("python", 3);
    let _worker = Proc(
        std::process::Command::new(crate::support::python())
            .arg(crate::support::repo().join("functions/python/examples/media_worker.py"))
            .args(["--server", &now[2], "--token", TOKEN_A, "--concurrency", "8", "--work-scale", "0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn the Python worker"),
    );
    rt().block_on(async {
        let mut a = client(&now[0], TOKEN_A).await;
        deploy(&mut a, "examples/packs/video-encode").await;
        let ids = start_many(std::slice::from_ref(&a), 60, "py").await;
        wait_all_completed(&mut a, &ids, Duration::from_secs(120)).await;
    });
    drop(servers);
}

/// A new version rolled out through a server that is not the coordinator:
/// the coordinator's upgrade job walks each running workflow once, at its
/// owner, wherever it lives.
#[test]
fn an_upgrade_job_walks_each_workflow_once_on_a_cluster() {
    let (pg, _url, servers, now) = cluster("upgrade", 3);
    let coordinator = pg
        .psql("upgrade", "SELECT m.address FROM partitions p JOIN members m ON m.id = p.owner WHERE p.id = 0")
        .expect("psql");
    let other = now.iter().position(|a| !a.ends_with(&coordinator)).expect("a server that does not coordinate");
    let version = |v: &str, rules: &str| {
        vec![
            pb::PackFile {
                path: "pack.toml".into(),
                content: format!("[pack]\nname = \"hold\"\nversion = \"{v}\"\n").into_bytes(),
            },
            pb::PackFile { path: "main.rules".into(), content: rules.as_bytes().to_vec() },
        ]
    };
    rt().block_on(async {
        let mut c = client(&now[other], TOKEN_A).await;
        let v1 = r#"rule "wait" { match { h: Hold(n < 0) } action { complete(); } }"#;
        c.deploy_pack(pb::DeployPackRequest { files: version("1", v1), ..Default::default() }).await.expect("v1");
        let mut ids = Vec::new();
        for i in 0..60 {
            let facts = facts(serde_json::json!([{"type": "Hold", "fields": {"n": i}}]));
            let r = pb::StartWorkflowRequest { pack: "hold".into(), facts, request_id: format!("h{i}") };
            ids.push(c.start_workflow(r).await.expect("start").into_inner().workflow_id);
        }
        let v2 = r#"rule "release" { match { h: Hold() } action { complete(#{ n: h.n }); } }"#;
        c.deploy_pack(pb::DeployPackRequest { files: version("2", v2), ..Default::default() }).await.expect("v2");
        let deadline = Instant::now() + Duration::from_secs(60);
        let job = loop {
            let job = c.get_upgrade(pb::GetUpgradeRequest { name: "hold".into() }).await.expect("job").into_inner();
            if job.state == "done" {
                break job;
            }
            assert!(Instant::now() < deadline, "the upgrade job did not finish: {job:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!((job.upgraded, job.failed), (60, 0), "{job:?}");
        for id in &ids {
            let w = c
                .get_workflow(pb::GetWorkflowRequest { workflow_id: id.clone(), without_facts: true })
                .await
                .expect("get")
                .into_inner();
            assert_eq!((w.status.as_str(), w.pack_version.as_str()), ("completed", "2"), "{id}");
        }
    });
    drop(servers);
}

/// Parents on three servers each start two children, which land on any
/// server: each child starts once and answers its parent, wherever both
/// live.
#[test]
fn children_start_once_and_answer_their_parents_across_servers() {
    let (pg, _url, servers, now) = cluster("children", 3);
    let parent = r#"
rule "fan out" {
    match { j: Job(state == "new") }
    action {
        modify(j, #{ state: "waiting" });
        start_workflow("child", [#{ type: "Part", fields: #{ n: 1 } }]);
        start_workflow("child", [#{ type: "Part", fields: #{ n: 2 } }]);
    }
    reaction { insert("Result", #{ value: result.value }); }
    error { fail("a child failed: " + error.message); }
}
rule "assemble" {
    match { n: count(Result()) s: sum(Result(), value) test(n == 2) }
    action { complete(#{ total: s }); }
}
"#;
    let child = r#"rule "double" { match { p: Part() } action { complete(#{ value: p.n * 10 }); } }"#;
    rt().block_on(async {
        let mut c = client(&now[1], TOKEN_A).await;
        for files in [signal_pack("parent", "", parent), signal_pack("child", "", child)] {
            c.deploy_pack(pb::DeployPackRequest { files, ..Default::default() }).await.expect("deploy");
        }
        let mut ids = Vec::new();
        for i in 0..40 {
            let facts = facts(serde_json::json!([{"type": "Job", "fields": {"state": "new"}}]));
            let r = pb::StartWorkflowRequest { pack: "parent".into(), facts, request_id: format!("p{i}") };
            ids.push(c.start_workflow(r).await.expect("start").into_inner().workflow_id);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for id in &ids {
            let w = ended(&mut c, id, deadline).await;
            assert_eq!(
                (w.status.as_str(), w.result_json.as_str()),
                ("completed", r#"{"total":30}"#),
                "{id}: {}",
                w.reason
            );
        }
    });
    let children: usize =
        pg.psql("children", "SELECT count(*) FROM workflows WHERE pack = 'child'").expect("psql").parse().expect("n");
    assert_eq!(children, 80, "a child started twice, or not at all");
    drop(servers);
}

/// `GetWorkflow` (what `stoa describe` shows) asked of any server of a
/// cluster tells what the owner's dispatcher knows of a waiting
/// invocation: its attempt, last error, next retry, and the workers that
/// serve its function there.
#[test]
fn any_server_describes_the_attempts_its_owner_knows() {
    let (_pg, _url, servers, addrs) = cluster("describe", 2);
    let manifest =
        "[functions.\"t.work\"]\ntimeout = \"30s\"\nretry = { max_attempts = 3, initial_backoff = \"60s\" }\n";
    let rules = r#"rule "work" { match { j: Job() } action { call("t.work", #{}); } reaction { complete(); } }"#;
    rt().block_on(async {
        let mut c = client(&addrs[0], TOKEN_A).await;
        let files = signal_pack("slow", manifest, rules);
        c.deploy_pack(pb::DeployPackRequest { files, ..Default::default() }).await.expect("deploy");
        // A worker on each server: each owner leases its own invocations.
        let mut workers = Vec::new();
        for a in &addrs {
            workers.push(crate::client::RawWorker::connect(a, TOKEN_A, &["t.work"], 64).await.expect("worker"));
        }
        let mut ids = Vec::new();
        for i in 0..8 {
            let facts = facts(serde_json::json!([{"type": "Job", "fields": {}}]));
            let r = pb::StartWorkflowRequest { pack: "slow".into(), facts, request_id: format!("d{i}") };
            ids.push(c.start_workflow(r).await.expect("start").into_inner().workflow_id);
        }
        let mut failed = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while failed < ids.len() {
            assert!(Instant::now() < deadline, "{failed} of {} invocations came", ids.len());
            for w in &mut workers {
                for inv in w.invocations(Duration::from_millis(200)).await {
                    assert!(w.fail(&inv, true, pb::FailureKind::Failed).await);
                    failed += 1;
                }
            }
        }
        for a in &addrs {
            let mut c = client(a, TOKEN_A).await;
            for id in &ids {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let w = c
                        .get_workflow(pb::GetWorkflowRequest { workflow_id: id.clone(), without_facts: true })
                        .await
                        .expect("get")
                        .into_inner();
                    let x = &w.waiting[0];
                    if x.state == "backoff" {
                        assert_eq!(
                            (x.attempt, x.last_error.as_str(), x.workers),
                            (2, "test failure", 1),
                            "{a} {id}: {x:?}"
                        );
                        assert!(x.retry_at_ms > w.created_ms, "{x:?}");
                        break;
                    }
                    assert!(Instant::now() < deadline, "{a} {id}: {x:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    drop(servers);
}
