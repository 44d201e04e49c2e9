//! The server over real gRPC: tenant isolation, bad input, idempotent
//! starts, health and reflection.

use std::time::Duration;

use stoa_proto::v1 as pb;
use tonic::Code;

use crate::client::{client, deploy, facts, pack_files, video_facts, RawWorker};
use crate::support::{Server, TOKEN_A, TOKEN_B};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

async fn start(c: &mut crate::client::Client, request_id: &str) -> String {
    c.start_workflow(pb::StartWorkflowRequest {
        pack: "video-encode".into(),
        facts: video_facts("s3://in/a.mov"),
        request_id: request_id.into(),
    })
    .await
    .expect("start")
    .into_inner()
    .workflow_id
}

#[test]
fn tenants_are_isolated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    rt().block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        let mut b = client(&server.addr, TOKEN_B).await;
        deploy(&mut a, "examples/packs/video-encode").await;
        let wf = start(&mut a, "r1").await;

        // B sees none of A's packs, workflows, timelines.
        assert!(b.list_packs(pb::ListPacksRequest {}).await.expect("packs").into_inner().packs.is_empty());
        let listed = b.list_workflows(pb::ListWorkflowsRequest::default()).await.expect("ls").into_inner();
        assert!(listed.workflows.is_empty());
        let not_found = |r: Result<_, tonic::Status>, what: &str| {
            let e = r.err().unwrap_or_else(|| panic!("{what}: tenant B got an answer"));
            assert_eq!(e.code(), Code::NotFound, "{what}: {e:?}");
            // Messages may echo the name the caller gave, never more.
            let echoes = ["start", "upgrade", "rollback", "rollout"].contains(&what);
            assert!(!e.message().contains("video-encode") || echoes, "{what} leaks: {}", e.message());
        };
        not_found(
            b.get_workflow(pb::GetWorkflowRequest { workflow_id: wf.clone(), without_facts: false }).await.map(|_| ()),
            "get",
        );
        not_found(
            b.get_timeline(pb::GetTimelineRequest { workflow_id: wf.clone(), from_seq: 1, limit: 0 }).await.map(|_| ()),
            "timeline",
        );
        not_found(
            b.cancel_workflow(pb::CancelWorkflowRequest {
                workflow_id: wf.clone(),
                reason: "x".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
            "cancel",
        );
        not_found(
            b.assert_facts(pb::AssertFactsRequest {
                workflow_id: wf.clone(),
                facts: facts(serde_json::json!([{"type": "Pause", "fields": {}}])),
            })
            .await
            .map(|_| ()),
            "assert",
        );
        let watch = b.watch_workflow(pb::WatchWorkflowRequest { workflow_id: wf.clone(), from_seq: 1 }).await;
        not_found(watch.map(|_| ()), "watch");
        not_found(
            b.start_workflow(pb::StartWorkflowRequest {
                pack: "video-encode".into(),
                facts: video_facts("x"),
                request_id: "r1".into(),
            })
            .await
            .map(|_| ()),
            "start",
        );
        // Nor signal, upgrade, roll back or read the lineage of A's.
        let signal = |workflow_id: &str, id: &str| pb::SendSignalRequest {
            name: "go".into(),
            signal_id: id.into(),
            payload_json: String::new(),
            workflow_id: workflow_id.into(),
        };
        not_found(b.send_signal(signal(&wf, "s1")).await.map(|_| ()), "signal");
        a.send_signal(signal("", "a-only")).await.expect("A's own signal");
        not_found(b.get_lineage(pb::GetLineageRequest { signal_id: "a-only".into() }).await.map(|_| ()), "lineage");
        not_found(b.get_upgrade(pb::GetUpgradeRequest { name: "video-encode".into() }).await.map(|_| ()), "upgrade");
        let (theirs, none) = (
            b.get_upgrade(pb::GetUpgradeRequest { name: "video-encode".into() }).await.expect_err("B"),
            b.get_upgrade(pb::GetUpgradeRequest { name: "no-such-pack".into() }).await.expect_err("B"),
        );
        assert_eq!(
            theirs.message().replace("video-encode", "no-such-pack"),
            none.message(),
            "same answer as for nothing"
        );
        not_found(
            b.rollback_pack(pb::RollbackPackRequest { name: "video-encode".into(), force: false }).await.map(|_| ()),
            "rollback",
        );
        not_found(
            b.rollout_pack(pb::RolloutPackRequest {
                name: "video-encode".into(),
                version: "1.0.0".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
            "rollout",
        );

        // B's worker for the same function gets nothing of A's work; A's does.
        let mut wb = RawWorker::connect(&server.addr, TOKEN_B, &["media.split"], 4).await.expect("B worker");
        assert!(wb.invocations(Duration::from_millis(500)).await.is_empty(), "tenant B's worker got A's invocation");
        let mut wa = RawWorker::connect(&server.addr, TOKEN_A, &["media.split"], 4).await.expect("A worker");
        let got = wa.invocations(Duration::from_secs(5)).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].function, "media.split");
        assert_eq!(got[0].workflow_id, wf);

        // A still sees its workflow.
        let w = a
            .get_workflow(pb::GetWorkflowRequest { workflow_id: wf, without_facts: true })
            .await
            .expect("get")
            .into_inner();
        assert_eq!(w.status, "running");
        assert_eq!(w.waiting.len(), 1);
    });
}

#[test]
fn bad_requests_get_precise_errors_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    rt().block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        let v1 = deploy(&mut a, "examples/packs/video-encode").await;

        // A malformed pack is rejected whole with its diagnostics; v1 stays.
        let mut files = pack_files("examples/packs/video-encode");
        for f in files.iter_mut().filter(|f| f.path == "encode.rules") {
            let text = String::from_utf8(f.content.clone())
                .expect("utf8")
                .replace("chunk: Chunk(job == job.source", "chunk: Chunk(job == ");
            f.content = text.into_bytes();
        }
        for f in files.iter_mut().filter(|f| f.path == "pack.toml") {
            f.content = String::from_utf8(f.content.clone()).expect("utf8").replace("1.0.0", "1.0.1").into_bytes();
        }
        let e = a.deploy_pack(pb::DeployPackRequest { files, ..Default::default() }).await.expect_err("broken pack");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("encode.rules:") && e.message().contains("error[E0002]"), "{}", e.message());
        assert!(e.message().contains("the deployed version is unchanged"), "{}", e.message());
        let packs = a.list_packs(pb::ListPacksRequest {}).await.expect("packs").into_inner().packs;
        assert_eq!(packs.len(), 1);
        assert_eq!(packs[0].versions, vec![v1.version.clone()]);

        // Unknown pack, unknown workflow, bad facts, missing fields.
        let e = a
            .start_workflow(pb::StartWorkflowRequest { pack: "nope".into(), facts: vec![], request_id: "x".into() })
            .await
            .expect_err("unknown pack");
        assert_eq!((e.code(), e.message()), (Code::NotFound, "pack `nope` is not deployed"));
        let e = a
            .get_workflow(pb::GetWorkflowRequest { workflow_id: "wf_a.0000000000000000".into(), without_facts: false })
            .await
            .expect_err("unknown workflow");
        assert_eq!(e.code(), Code::NotFound);
        let e = a
            .start_workflow(pb::StartWorkflowRequest {
                pack: "video-encode".into(),
                facts: vec![pb::FactInput { r#type: "Source".into(), fields_json: "{\"uri\": 3}".into() }],
                request_id: "bad-facts".into(),
            })
            .await
            .expect_err("schema");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("Source.uri must be string"), "{}", e.message());
        let e = a
            .start_workflow(pb::StartWorkflowRequest {
                pack: "video-encode".into(),
                facts: vec![pb::FactInput { r#type: "Source".into(), fields_json: "[1,".into() }],
                request_id: "bad-json".into(),
            })
            .await
            .expect_err("json");
        assert!(e.message().starts_with("facts[0].fields_json: not JSON"), "{}", e.message());
        let e = a
            .start_workflow(pb::StartWorkflowRequest {
                pack: "video-encode".into(),
                facts: vec![],
                request_id: String::new(),
            })
            .await
            .expect_err("request id");
        assert_eq!(
            (e.code(), e.message()),
            (Code::InvalidArgument, "request_id: required; 1 to 256 bytes, without control characters")
        );
        let listed = a.list_workflows(pb::ListWorkflowsRequest::default()).await.expect("ls").into_inner();
        assert!(listed.workflows.is_empty(), "a rejected start left a workflow behind");

        // An oversized request.
        let big = "x".repeat(5 << 20);
        let e = a
            .start_workflow(pb::StartWorkflowRequest {
                pack: "video-encode".into(),
                facts: vec![pb::FactInput { r#type: "Source".into(), fields_json: format!("{{\"uri\": \"{big}\"}}") }],
                request_id: "big".into(),
            })
            .await
            .expect_err("oversized");
        assert!(matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted), "{e:?}");

        // Unknown token.
        let mut x = client(&server.addr, "not-a-token").await;
        let e = x.list_packs(pb::ListPacksRequest {}).await.expect_err("token");
        assert_eq!(e.code(), Code::Unauthenticated);

        // A worker answering an invocation it does not hold is told so, and
        // the workflow does not move.
        let wf = start(&mut a, "r-hold").await;
        let w = RawWorker::connect(&server.addr, TOKEN_A, &["media.encode"], 1).await.expect("worker");
        let fake = pb::Invocation { id: format!("inv_{}.1", &wf[3..]), attempt: 1, ..Default::default() };
        assert!(w.answer(&fake, serde_json::json!({"chunks": 2, "prefix": "p"})).await);
        let mut w = w;
        let msg = w.next(Duration::from_secs(5)).await.expect("an answer from the server");
        let Some(pb::server_message::Msg::Rejected(r)) = msg.msg else { panic!("expected rejected, got {msg:?}") };
        assert!(r.message.contains("does not hold invocation"), "{}", r.message);
        let got = a
            .get_workflow(pb::GetWorkflowRequest { workflow_id: wf, without_facts: true })
            .await
            .expect("get")
            .into_inner();
        assert_eq!((got.turn, got.waiting.len(), got.fact_count), (1, 1, 3));

        // Signals and rollouts name the field that is wrong.
        let bad = |r: Result<(), tonic::Status>, code: Code, field: &str| {
            let e = r.expect_err(field);
            assert_eq!(e.code(), code, "{field}: {e:?}");
            assert!(e.message().contains(field), "{field}: {}", e.message());
        };
        let sig = |name: &str, id: &str, payload: &str| pb::SendSignalRequest {
            name: name.into(),
            signal_id: id.into(),
            payload_json: payload.into(),
            workflow_id: String::new(),
        };
        bad(a.send_signal(sig("", "x", "")).await.map(|_| ()), Code::InvalidArgument, "name");
        bad(a.send_signal(sig("go", "", "")).await.map(|_| ()), Code::InvalidArgument, "signal_id");
        bad(a.send_signal(sig("go", "x", "{nope")).await.map(|_| ()), Code::InvalidArgument, "payload_json");
        let rollout = |version: &str, rollout: pb::Rollout, canary_fraction: f64| pb::RolloutPackRequest {
            name: "video-encode".into(),
            version: version.into(),
            rollout: rollout as i32,
            canary_fraction,
            force: false,
        };
        bad(
            a.rollout_pack(rollout("1.0.0", pb::Rollout::Canary, 1.5)).await.map(|_| ()),
            Code::InvalidArgument,
            "canary_fraction",
        );
        bad(a.rollout_pack(rollout("9.9", pb::Rollout::All, 0.0)).await.map(|_| ()), Code::NotFound, "no version 9.9");
        bad(
            a.rollback_pack(pb::RollbackPackRequest { name: "video-encode".into(), force: false }).await.map(|_| ()),
            Code::FailedPrecondition,
            "no version before",
        );
    });
}

#[test]
fn a_request_id_starts_one_workflow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    rt().block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        deploy(&mut a, "examples/packs/video-encode").await;
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let mut c = a.clone();
            tasks.push(tokio::spawn(async move {
                c.start_workflow(pb::StartWorkflowRequest {
                    pack: "video-encode".into(),
                    facts: video_facts("s3://in/same.mov"),
                    request_id: "same-request".into(),
                })
                .await
                .expect("start")
                .into_inner()
            }));
        }
        let mut ids = std::collections::BTreeSet::new();
        let mut created = 0;
        for t in tasks {
            let r = t.await.expect("task");
            ids.insert(r.workflow_id);
            created += r.created as usize;
        }
        assert_eq!((ids.len(), created), (1, 1));
        let listed = a.list_workflows(pb::ListWorkflowsRequest::default()).await.expect("ls").into_inner();
        assert_eq!(listed.workflows.len(), 1);
    });
}

/// Retention: a finished workflow is deleted whole once its time is up
/// (its timeline, and the record of its request id, which then starts a new
/// workflow); a running one stays.
#[test]
fn finished_workflows_are_deleted_after_their_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("stoa.toml");
    std::fs::write(&config, "[limits]\nretain_finished_ms = 3000\n").expect("config");
    let server = Server::start_with(&dir.path().join("data"), &["--config", config.to_str().expect("utf-8")]);
    rt().block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        let manifest = "[pack]\nname = \"quick\"\nversion = \"1\"\n";
        let rules = r#"rule "done" { match { j: Job() } action { complete(#{ n: j.n }); } }"#;
        let files = vec![
            pb::PackFile { path: "pack.toml".into(), content: manifest.into() },
            pb::PackFile { path: "quick.rules".into(), content: rules.into() },
        ];
        a.deploy_pack(pb::DeployPackRequest { files, ..Default::default() }).await.expect("deploy");
        deploy(&mut a, "examples/packs/video-encode").await;
        let running = start(&mut a, "running").await;
        let quick = |n: i64| pb::StartWorkflowRequest {
            pack: "quick".into(),
            facts: facts(serde_json::json!([{"type": "Job", "fields": {"n": n}}])),
            request_id: "quick".into(),
        };
        let first = a.start_workflow(quick(1)).await.expect("start").into_inner();
        assert!(first.created);
        let get = |id: &str| pb::GetWorkflowRequest { workflow_id: id.into(), without_facts: true };
        let done = a.get_workflow(get(&first.workflow_id)).await.expect("get").into_inner();
        assert_eq!(done.status, "completed");
        // Within its retention, the request id still answers with it.
        let again = a.start_workflow(quick(2)).await.expect("start").into_inner();
        assert_eq!((again.workflow_id.as_str(), again.created), (first.workflow_id.as_str(), false));
        let mut waited = 0;
        loop {
            match a.get_workflow(get(&first.workflow_id)).await {
                Err(e) if e.code() == Code::NotFound => break,
                Ok(_) if waited < 200 => {}
                other => panic!("still there after {waited} polls: {other:?}"),
            }
            waited += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let timeline = a.get_timeline(pb::GetTimelineRequest { workflow_id: first.workflow_id, from_seq: 1, limit: 0 });
        assert_eq!(timeline.await.map(|t| t.into_inner().entries.len()).unwrap_or(0), 0);
        // The request id is free again: a new workflow, which runs anew.
        let anew = a.start_workflow(quick(3)).await.expect("start").into_inner();
        assert!(anew.created);
        let w = a.get_workflow(get(&anew.workflow_id)).await.expect("get").into_inner();
        assert_eq!((w.status.as_str(), w.result_json.as_str()), ("completed", r#"{"n":3}"#));
        let w = a.get_workflow(get(&running)).await.expect("the running one stays").into_inner();
        assert_eq!(w.status, "running");
    });
}

#[test]
fn health_and_reflection_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    rt().block_on(async {
        let ch = crate::client::channel(&server.addr).await;
        let mut h = tonic_health::pb::health_client::HealthClient::new(ch.clone());
        let r = h.check(tonic_health::pb::HealthCheckRequest { service: "stoa.v1.Stoa".into() }).await.expect("health");
        assert_eq!(r.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

        use tonic_reflection::pb::v1alpha as ra;
        let mut r = ra::server_reflection_client::ServerReflectionClient::new(ch.clone());
        let req = ra::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(ra::server_reflection_request::MessageRequest::ListServices(String::new())),
        };
        let mut stream = r.server_reflection_info(tokio_stream::iter(vec![req])).await.expect("v1alpha").into_inner();
        let resp = stream.message().await.expect("message").expect("one");
        let Some(ra::server_reflection_response::MessageResponse::ListServicesResponse(l)) = resp.message_response
        else {
            panic!("unexpected {resp:?}")
        };
        let names: Vec<String> = l.service.into_iter().map(|s| s.name).collect();
        for s in ["stoa.v1.Stoa", "stoa.v1.Workers", "grpc.health.v1.Health"] {
            assert!(names.iter().any(|n| n == s), "{s} missing from {names:?}");
        }
        use tonic_reflection::pb::v1 as r1;
        let mut r = r1::server_reflection_client::ServerReflectionClient::new(ch);
        let req = r1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(String::new())),
        };
        let mut stream = r.server_reflection_info(tokio_stream::iter(vec![req])).await.expect("v1").into_inner();
        assert!(stream.message().await.expect("message").is_some());
    });
}

#[test]
fn sigterm_stops_gracefully_and_keeps_every_acknowledged_turn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path());
    let ids = rt().block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        deploy(&mut a, "examples/packs/video-encode").await;
        let mut ids = Vec::new();
        for i in 0..20 {
            ids.push(start(&mut a, &format!("g-{i}")).await);
        }
        ids
    });
    let status = server.terminate();
    assert!(status.success(), "stoa serve exited with {status} on SIGTERM");
    let server = Server::start(dir.path());
    rt().block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        for id in ids {
            let w = a
                .get_workflow(pb::GetWorkflowRequest { workflow_id: id.clone(), without_facts: true })
                .await
                .expect("kept");
            assert_eq!(w.into_inner().waiting.len(), 1, "{id}");
        }
    });
}
