//! One tenant's worst packs against a real server with two tenants: each
//! attack fails that tenant's own deploy or turn with a clear error, while
//! the other tenant's workflows keep completing, and the server stays up.

use std::time::{Duration, Instant};

use stoa_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::client::{client, facts, Client};
use crate::support::{Server, TOKEN_A, TOKEN_B};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// A server for tenants `a` (the attacker) and `b`, with `config` (TOML)
/// on top of the defaults.
fn server(dir: &std::path::Path, config: &str) -> Server {
    let path = dir.join("config.toml");
    std::fs::write(&path, config).expect("config");
    Server::start_with(&dir.join("data"), &["--config", path.to_str().expect("utf-8 path")])
}

pub(crate) fn pack(name: &str, limits: &str, rules: &str) -> Vec<pb::PackFile> {
    let manifest = format!("[pack]\nname = \"{name}\"\nversion = \"1\"\n\n[limits]\n{limits}\n");
    vec![
        pb::PackFile { path: "pack.toml".into(), content: manifest.into_bytes() },
        pb::PackFile { path: "main.rules".into(), content: rules.as_bytes().to_vec() },
    ]
}

async fn deploy(c: &mut Client, files: Vec<pb::PackFile>) -> Result<pb::DeployPackResponse, tonic::Status> {
    c.deploy_pack(pb::DeployPackRequest { files, ..Default::default() }).await.map(|r| r.into_inner())
}

async fn start(c: &mut Client, pack: &str, request: &str, fields: serde_json::Value) -> Result<String, tonic::Status> {
    let facts = facts(serde_json::json!([{"type": "Go", "fields": fields}]));
    let r = c.start_workflow(pb::StartWorkflowRequest { pack: pack.into(), facts, request_id: request.into() }).await?;
    Ok(r.into_inner().workflow_id)
}

async fn get(c: &mut Client, id: &str) -> pb::Workflow {
    c.get_workflow(pb::GetWorkflowRequest { workflow_id: id.into(), without_facts: true })
        .await
        .expect("get")
        .into_inner()
}

/// Waits (bounded) until the workflow is no longer running.
async fn ended(c: &mut Client, id: &str, within: Duration) -> pb::Workflow {
    let deadline = Instant::now() + within;
    loop {
        let wf = get(c, id).await;
        if wf.status != "running" || Instant::now() > deadline {
            return wf;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const QUICK: &str = r#"rule "done" { match { g: Go() } action { complete(#{ n: g.n }); } }"#;

/// Tenant `b` starting quick workflows one after another until `stop`:
/// (how many completed, the slowest start).
async fn victim(addr: String, stop: CancellationToken) -> (u32, Duration) {
    let mut b = client(&addr, TOKEN_B).await;
    let (mut done, mut slowest, mut i) = (0, Duration::ZERO, 0);
    while !stop.is_cancelled() && i < 100_000 {
        i += 1;
        let t = Instant::now();
        let id = start(&mut b, "quick", &format!("v{i}"), serde_json::json!({"n": i})).await.expect("b's start");
        let wf = get(&mut b, &id).await;
        assert_eq!(wf.status, "completed", "b's workflow {id}: {}", wf.reason);
        slowest = slowest.max(t.elapsed());
        done += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (done, slowest)
}

/// The victim's starts are a few milliseconds; under attack they must stay
/// far below this (a liveness bound for a loaded CI machine, not a target).
const VICTIM_BOUND: Duration = Duration::from_secs(5);

fn assert_alive(server: &mut Server) {
    assert!(server.child.try_wait().expect("wait").is_none(), "the server died");
}

#[test]
fn a_pack_above_its_ceilings_is_refused_at_deploy_naming_the_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = server(dir.path(), "[[tenants]]\nname = \"a\"\nceilings = { max_operations = 2000000 }\n");
    rt().block_on(async {
        let mut a = client(&s.addr, TOKEN_A).await;
        deploy(&mut a, pack("p", "", QUICK)).await.expect("a pack within its ceilings");
        for (limits, says) in [
            ("max_call_depth = 10000000", "pack.toml:6:18: error[E0012]: [limits] max_call_depth = 10000000 is above the ceiling of tenant `a` (256)"),
            ("max_operations = 3000000", "[limits] max_operations = 3000000 is above the ceiling of tenant `a` (2000000)"),
            ("max_operations = 0", "pack.toml:6:18: error[E0012]: [limits] max_operations must be a whole number from 1 up"),
            ("max_string_size = 0", "[limits] max_string_size must be a whole number from 1 up"),
            ("max_firings_per_turn = 9223372036854775807", "[limits] max_firings_per_turn = 9223372036854775807 is above the ceiling"),
            ("max_facts = 9223372036854775807", "[limits] max_facts = 9223372036854775807 is above the ceiling"),
        ] {
            let mut files = pack("p", limits, QUICK);
            files[0].content = String::from_utf8(files[0].content.clone()).unwrap().replace("version = \"1\"", "version = \"2\"").into_bytes();
            let e = deploy(&mut a, files).await.expect_err(limits);
            assert_eq!(e.code(), Code::InvalidArgument, "{limits}: {e:?}");
            assert!(e.message().contains(says), "{limits}: {}", e.message());
            assert!(e.message().contains("the deployed version is unchanged"), "{}", e.message());
        }
        let packs = a.list_packs(pb::ListPacksRequest {}).await.expect("packs").into_inner().packs;
        assert_eq!(packs[0].versions, ["1"], "nothing was deployed");
    });
    assert_alive(&mut s);
}

#[test]
fn runaway_packs_fail_their_own_turns_and_the_other_tenant_keeps_its_latency() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s =
        server(dir.path(), "[[tenants]]\nname = \"a\"\nceilings = { max_turn_ms = 2000, max_memory_mb = 64 }\n");
    let addr = s.addr.clone();
    let outcomes = rt().block_on(async {
        let mut a = client(&addr, TOKEN_A).await;
        let mut b = client(&addr, TOKEN_B).await;
        deploy(&mut b, pack("quick", "", QUICK)).await.expect("b's pack");
        let attacks: [(&str, &str, &str, &str); 7] = [
            (
                "recurse",
                "max_call_depth = 256",
                "rule \"r\" { match { g: Go() } action { let f = |n, g| g.call(n + 1, g); f.call(0, f); } }",
                "call stack too deep",
            ),
            (
                "chain",
                "max_operations = 5000000",
                // Dropping a long chain of closures recurses once per link.
                "rule \"r\" { match { g: Go() } action { let f = || 1; loop { let h = f; f = || h.call(); } } }",
                "limit `max_",
            ),
            ("spin", "max_operations = 5000000", "rule \"r\" { match { g: Go() } action { loop { } } }", "limit `max_"),
            (
                "strings",
                "max_string_size = 16777216",
                "rule \"r\" { match { g: Go() } action { let s = \"x\"; loop { s += s; } } }",
                "exceeds the sandbox size limit",
            ),
            (
                "grow",
                "max_firings_per_turn = 10000000",
                "rule \"r\" { match { g: Go() } action { modify(g, #{ n: g.n + 1 }); insert(\"Blob\", #{ n: g.n, text: \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\" }); } }",
                "limit `max_",
            ),
            (
                // Native matching only: a cross product of 1,500 × 1,500.
                "join",
                "",
                "rule \"seed\" { match { g: Go() } action { for i in 0..1500 { insert(\"A\", #{ i: i }); insert(\"B\", #{ i: i }); } } }\nrule \"r\" { match { x: A() y: B() z: C() } action { } }",
                "limit `max_",
            ),
            (
                "nest",
                "max_array_size = 1000000",
                "rule \"r\" { match { g: Go() } action { let a = []; loop { a = [a]; } } }",
                "limit",
            ),
        ];
        for (name, limits, rules, _) in &attacks {
            deploy(&mut a, pack(name, limits, rules)).await.unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
        let stop = CancellationToken::new();
        let victim = tokio::spawn(victim(addr.clone(), stop.clone()));
        let mut outcomes = Vec::new();
        for round in 0..2 {
            let mut running = Vec::new();
            for (name, _, _, says) in &attacks {
                let mut a = a.clone();
                let (name, says) = (name.to_string(), says.to_string());
                running.push(tokio::spawn(async move {
                    let id = start(&mut a, &name, &format!("{name}-{round}"), serde_json::json!({"n": 0})).await;
                    let id = id.unwrap_or_else(|e| panic!("{name}: the start itself failed: {e:?}"));
                    let wf = ended(&mut a, &id, Duration::from_secs(60)).await;
                    (name, says, wf)
                }));
            }
            for r in running {
                outcomes.push(r.await.expect("attack task"));
            }
        }
        stop.cancel();
        let (done, slowest) = victim.await.expect("victim");
        assert!(done > 0, "b completed nothing");
        assert!(slowest < VICTIM_BOUND, "b's slowest start took {slowest:?} during the attacks");
        // b still works after them.
        let id = start(&mut b, "quick", "after", serde_json::json!({"n": 1})).await.expect("b after");
        assert_eq!(get(&mut b, &id).await.status, "completed");
        outcomes
    });
    for (name, says, wf) in outcomes {
        assert_eq!(wf.status, "failed", "{name}: {wf:?}");
        assert!(wf.reason.contains(&says), "{name}: {}", wf.reason);
    }
    assert_alive(&mut s);
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).unwrap_or_default();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    assert!(peak_kb < 1_500_000, "the server's memory peaked at {peak_kb} kB");
}

/// A rule that recurses when a durable timer fires: the turn fails, the
/// workflow with it, and a server killed before the timer was due fires it
/// once after its restart and stays up.
#[test]
fn a_poison_timer_fails_its_workflow_and_a_restarted_server_stays_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = server(dir.path(), "");
    let rules = r#"
rule "arm" { match { g: Go() } action { after("2s", "Boom", #{}); } }
rule "boom" { match { b: Boom() } action { let f = |n, g| g.call(n + 1, g); f.call(0, f); } }
"#;
    let id = rt().block_on(async {
        let mut a = client(&s.addr, TOKEN_A).await;
        deploy(&mut a, pack("poison", "max_call_depth = 256", rules)).await.expect("deploy");
        start(&mut a, "poison", "p1", serde_json::json!({})).await.expect("start")
    });
    s.kill();
    std::thread::sleep(Duration::from_secs(2));
    let mut s = server(dir.path(), "");
    rt().block_on(async {
        let mut a = client(&s.addr, TOKEN_A).await;
        let wf = ended(&mut a, &id, Duration::from_secs(30)).await;
        assert_eq!(wf.status, "failed");
        assert!(wf.reason.contains("call stack too deep"), "{}", wf.reason);
        let mut b = client(&s.addr, TOKEN_B).await;
        deploy(&mut b, pack("quick", "", QUICK)).await.expect("b's pack");
        let id = start(&mut b, "quick", "b1", serde_json::json!({"n": 1})).await.expect("b's start");
        assert_eq!(get(&mut b, &id).await.status, "completed");
    });
    assert_alive(&mut s);
}

/// A turn that would run for minutes does not hold the server past its
/// grace period: SIGTERM stops it, and the workflow is as before the turn.
#[test]
fn sigterm_stops_a_server_whose_turn_spins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = "[limits]\nworker_drain_ms = 1000\n[[tenants]]\nname = \"a\"\nceilings = { max_turn_ms = 600000 }\n";
    let mut s = server(dir.path(), config);
    let spin = r#"rule "spin" { match { g: Go(n >= 0) } action { modify(g, #{ n: g.n + 1 }); } }"#;
    let limits = "max_firings_per_turn = 10000000\nmax_turn_ms = 600000\nmax_memory_mb = 1024";
    let runtime = rt();
    let mut a = runtime.block_on(async {
        let mut a = client(&s.addr, TOKEN_A).await;
        deploy(&mut a, pack("spin", limits, spin)).await.expect("deploy");
        a
    });
    let attack = runtime.spawn(async move { start(&mut a, "spin", "s1", serde_json::json!({"n": 0})).await });
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    let status = s.terminate();
    let took = t.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?} with a spinning turn");
    // The spinning start got an error, not a workflow.
    let r = runtime.block_on(attack).expect("task");
    assert!(r.is_err(), "{r:?}");
    let mut s = server(dir.path(), config);
    runtime.block_on(async {
        let mut a = client(&s.addr, TOKEN_A).await;
        let listed = a.list_workflows(pb::ListWorkflowsRequest::default()).await.expect("ls").into_inner();
        assert!(listed.workflows.is_empty(), "an interrupted start leaves no workflow: {listed:?}");
    });
    assert_alive(&mut s);
}

/// With room for three workflows in memory, thirty that wait on timers are
/// unloaded and reloaded as they go, and every one completes.
#[test]
fn unloaded_workflows_reload_and_complete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = server(dir.path(), "[limits]\nmax_loaded_workflows = 3\nunload_idle_ms = 100\n");
    let rules = r#"
rule "wait" { match { g: Go() } action { after("1500ms", "Tick", #{ n: g.n }); } }
rule "tick" { match { g: Go() t: Tick(n == g.n) } action { complete(#{ n: t.n }); } }
"#;
    rt().block_on(async {
        let mut a = client(&s.addr, TOKEN_A).await;
        deploy(&mut a, pack("waits", "", rules)).await.expect("deploy");
        let mut ids = Vec::new();
        for i in 0..30 {
            ids.push(start(&mut a, "waits", &format!("w{i}"), serde_json::json!({"n": i})).await.expect("start"));
        }
        for (i, id) in ids.iter().enumerate() {
            let wf = ended(&mut a, id, Duration::from_secs(30)).await;
            assert_eq!((wf.status.as_str(), wf.result_json.as_str()), ("completed", &*format!("{{\"n\":{i}}}")));
        }
    });
    assert_alive(&mut s);
}

/// Starts that each queue an invocation, many at once: exactly the quota
/// is admitted, never more.
#[test]
fn backpressure_admits_exactly_the_quota_and_live_workflows_are_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = "[[tenants]]\nname = \"a\"\nquotas = { max_pending = 10 }\n[[tenants]]\nname = \"b\"\nquotas = { max_live_workflows = 3 }\n";
    let mut s = server(dir.path(), config);
    let calls = "[functions.\"f\"]\ntimeout = \"1m\"\n";
    let rules = r#"rule "call" { match { g: Go() } action { call("f", #{ n: g.n }); } }"#;
    rt().block_on(async {
        let mut a = client(&s.addr, TOKEN_A).await;
        let mut files = pack("calls", "", rules);
        files[0].content.extend_from_slice(calls.as_bytes());
        deploy(&mut a, files.clone()).await.expect("deploy");
        let mut tasks = Vec::new();
        for i in 0..40 {
            let mut a = a.clone();
            tasks.push(tokio::spawn(async move {
                start(&mut a, "calls", &format!("c{i}"), serde_json::json!({"n": i})).await
            }));
        }
        let (mut admitted, mut refused) = (0, 0);
        for t in tasks {
            match t.await.expect("task") {
                Ok(_) => admitted += 1,
                Err(e) if e.code() == Code::ResourceExhausted => {
                    assert!(e.message().contains("quota max_pending"), "{}", e.message());
                    refused += 1;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!((admitted, refused), (10, 30));

        let mut b = client(&s.addr, TOKEN_B).await;
        deploy(&mut b, files).await.expect("deploy");
        let mut live = Vec::new();
        for i in 0..3 {
            live.push(start(&mut b, "calls", &format!("l{i}"), serde_json::json!({"n": i})).await.expect("start"));
        }
        let e = start(&mut b, "calls", "l3", serde_json::json!({"n": 3})).await.expect_err("over the quota");
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(e.message().contains("quota max_live_workflows"), "{}", e.message());
        b.cancel_workflow(pb::CancelWorkflowRequest {
            workflow_id: live[0].clone(),
            reason: "room".into(),
            ..Default::default()
        })
        .await
        .expect("cancel");
        start(&mut b, "calls", "l3", serde_json::json!({"n": 3})).await.expect("room again");
    });
    assert_alive(&mut s);
}

/// `StartWorkflowRequest` with `pack` as raw bytes, to send what a
/// well-behaved client cannot: a string field that is not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawStart {
    #[prost(bytes = "vec", tag = "1")]
    pack: Vec<u8>,
    #[prost(string, tag = "3")]
    request_id: String,
}

#[test]
fn hostile_inputs_get_invalid_argument_with_short_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = server(dir.path(), "");
    rt().block_on(async {
        let mut a = client(&s.addr, TOKEN_A).await;
        let mut b = client(&s.addr, TOKEN_B).await;
        deploy(&mut a, pack("quick", "", QUICK)).await.expect("deploy");
        let short_invalid = |r: Result<String, tonic::Status>, what: &str| {
            let e = r.expect_err(what);
            assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
            assert!(e.message().len() < 300, "{what}: a {}-byte message", e.message().len());
        };
        let huge = "p".repeat(1 << 20);
        short_invalid(start(&mut a, &huge, "r1", serde_json::json!({})).await, "a 1 MB pack name");
        short_invalid(start(&mut a, "quick", &huge, serde_json::json!({})).await, "a 1 MB request id");
        let bad_type = facts(serde_json::json!([{"type": "Go\u{0}", "fields": {}}]));
        let r = a
            .start_workflow(pb::StartWorkflowRequest { pack: "quick".into(), facts: bad_type, request_id: "r2".into() })
            .await;
        short_invalid(r.map(|_| String::new()), "a fact type with NUL");
        let long_type = facts(serde_json::json!([{"type": format!("G{}", "o".repeat(1 << 20)), "fields": {}}]));
        let r = a
            .start_workflow(pb::StartWorkflowRequest {
                pack: "quick".into(),
                facts: long_type,
                request_id: "r3".into(),
            })
            .await;
        short_invalid(r.map(|_| String::new()), "a 1 MB fact type");
        let r =
            a.get_workflow(pb::GetWorkflowRequest { workflow_id: format!("wf_a.{huge}"), without_facts: true }).await;
        short_invalid(r.map(|_| String::new()), "a 1 MB workflow id");

        // Not UTF-8: INVALID_ARGUMENT, not INTERNAL.
        let mut grpc = tonic::client::Grpc::new(crate::client::channel(&s.addr).await);
        grpc.ready().await.expect("ready");
        let mut req = tonic::Request::new(RawStart { pack: vec![0xff, 0xfe, b'x'], request_id: "r4".into() });
        req.metadata_mut().insert("authorization", format!("Bearer {TOKEN_A}").parse().expect("ascii"));
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/stoa.v1.Stoa/StartWorkflow");
        let codec = tonic_prost::ProstCodec::<RawStart, pb::StartWorkflowResponse>::default();
        let e = grpc.unary(req, path, codec).await.expect_err("not UTF-8");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

        // Another tenant's pack does not exist for b, whatever b did with the name.
        let e = b
            .rollback_pack(pb::RollbackPackRequest { name: "quick".into(), force: false })
            .await
            .expect_err("rollback");
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        b.deploy_pack(pb::DeployPackRequest { files: pack("quick", "", QUICK), dry_run: true, ..Default::default() })
            .await
            .expect("dry run");
        let e = b
            .rollback_pack(pb::RollbackPackRequest { name: "quick".into(), force: false })
            .await
            .expect_err("rollback");
        assert_eq!(e.code(), Code::NotFound, "after a dry run: {e:?}");
        let e = b
            .rollout_pack(pb::RolloutPackRequest { name: "quick".into(), version: "1".into(), ..Default::default() })
            .await
            .expect_err("rollout");
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let e = b.get_upgrade(pb::GetUpgradeRequest { name: "quick".into() }).await.expect_err("upgrade");
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    });
    assert_alive(&mut s);
}

/// A large legal pack: deploying it, starting it and upgrading a live
/// workflow of it take a moment of the attacker's own turn threads, and
/// the other tenant's starts keep their latency meanwhile.
#[test]
fn a_large_pack_deploys_starts_and_upgrades_while_the_other_tenant_keeps_its_latency() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = server(dir.path(), "");
    let addr = s.addr.clone();
    let rules = |changed: usize| {
        let mut text = String::new();
        for i in 0..10_000 {
            let what = if i == changed { "v2" } else { "hit" };
            text.push_str(&format!("rule \"r{i}\" {{ match {{ x: Go(n == {i}) }} action {{ log(\"{what}\"); }} }}\n"));
        }
        text
    };
    rt().block_on(async {
        let mut a = client(&addr, TOKEN_A).await;
        let mut b = client(&addr, TOKEN_B).await;
        deploy(&mut b, pack("quick", "", QUICK)).await.expect("b's pack");
        let stop = CancellationToken::new();
        let victim = tokio::spawn(victim(addr.clone(), stop.clone()));
        deploy(&mut a, pack("big", "", &rules(usize::MAX))).await.expect("deploy v1");
        let id = start(&mut a, "big", "big-1", serde_json::json!({"n": 7})).await.expect("start");
        let mut v2 = pack("big", "", &rules(7));
        v2[0].content = String::from_utf8(v2[0].content.clone())
            .unwrap()
            .replace("version = \"1\"", "version = \"2\"")
            .into_bytes();
        deploy(&mut a, v2).await.expect("deploy v2");
        let deadline = Instant::now() + Duration::from_secs(120);
        let job = loop {
            let j = a.get_upgrade(pb::GetUpgradeRequest { name: "big".into() }).await.expect("upgrade").into_inner();
            if j.state == "done" || Instant::now() > deadline {
                break j;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!((job.state.as_str(), job.upgraded, job.failed), ("done", 1, 0), "{job:?}");
        let timeline = a
            .get_timeline(pb::GetTimelineRequest { workflow_id: id, from_seq: 1, limit: 0 })
            .await
            .expect("timeline")
            .into_inner();
        assert!(timeline.entries.iter().any(|e| e.text.contains("v2")), "the changed rule fired after the upgrade");
        stop.cancel();
        let (done, slowest) = victim.await.expect("victim");
        assert!(done > 0, "b completed nothing");
        assert!(slowest < VICTIM_BOUND, "b's slowest start took {slowest:?} beside the large pack");
    });
    assert_alive(&mut s);
}
