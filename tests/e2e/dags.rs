//! DAG definitions through a real server: `stoa deploy` of a definition
//! with a foreach deploys its body's pack first; the video pipeline runs
//! the `video-encode` rule pack once per codec (a foreach of sub-workflows)
//! with the real Rust media worker, and so does a foreach of steps of step
//! types over the chunks of a split; a foreach of 300 iterations never runs
//! more than its concurrency, as counted from the parent's timeline.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use stoa_proto::v1 as pb;

use crate::client::{client, Client};
use crate::support::{stoa, worker_bin, Proc, Server, TOKEN_A};
use crate::workers::wait_done;

fn cli(server: &Server, args: &[&str]) -> Output {
    stoa().args(args).args(["--server", &server.addr, "--token", TOKEN_A]).output().expect("run stoa")
}

fn ok(o: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{text}");
    text
}

/// `stoa start PACK --facts JSON`: the workflow id it prints.
fn start(server: &Server, pack: &str, params: serde_json::Value) -> String {
    let facts = serde_json::json!({ "type": "Params", "fields": params }).to_string();
    let out = ok(cli(server, &["start", pack, "--facts", &facts]));
    out.split_whitespace().find(|w| w.starts_with("wf_")).expect("a workflow id").to_string()
}

/// The parent's children: the most running at once, and how many started,
/// from its timeline (`invoked` of `workflow:…`, then their results).
async fn children(c: &mut Client, id: &str) -> (usize, usize) {
    let t = c
        .get_timeline(pb::GetTimelineRequest { workflow_id: id.into(), from_seq: 1, limit: 100_000 })
        .await
        .expect("timeline")
        .into_inner();
    let mut kids = std::collections::HashSet::new();
    let (mut now, mut most) = (0usize, 0usize);
    for e in &t.entries {
        let v: serde_json::Value = serde_json::from_str(&e.json).expect("json");
        let inv = v["event"]["invocation"].as_str().unwrap_or_default().to_string();
        match e.kind.as_str() {
            "invoked" if v["event"]["function"].as_str().is_some_and(|f| f.starts_with("workflow:")) => {
                kids.insert(inv);
                now += 1;
                most = most.max(now);
            }
            "result_applied" if kids.contains(&inv) => now -= 1,
            _ => {}
        }
    }
    (most, kids.len())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

#[test]
fn the_video_pipeline_runs_video_encode_per_codec_with_the_real_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let _worker = Proc(
        Command::new(worker_bin())
            .args(["--server", &server.addr, "--token", TOKEN_A, "--work-scale", "0", "--concurrency", "8"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn stoa-worker-media"),
    );
    ok(cli(&server, &["deploy", "examples/packs/video-encode"]));
    let deployed = ok(cli(&server, &["deploy", "examples/dags/video"]));
    // The body's pack goes first: the pipeline never starts an iteration
    // of a pack the server does not have.
    let body = deployed.find("video-pipeline.renditions 1 deployed").expect(&deployed);
    let own = deployed.find("video-pipeline 1 deployed").expect(&deployed);
    assert!(body < own, "{deployed}");
    let id = start(
        &server,
        "video-pipeline",
        serde_json::json!({ "source": "s3://in/talk.mov", "codecs": ["h264", "av1", "vp9"] }),
    );
    rt().block_on(async {
        let mut c = client(&server.addr, TOKEN_A).await;
        let w = wait_done(&mut c, &id, Duration::from_secs(90)).await;
        assert_eq!(w.status, "completed", "{}", w.reason);
        let result: serde_json::Value = serde_json::from_str(&w.result_json).expect("result");
        assert_eq!(result, serde_json::json!({ "renditions": 3 }));
        assert_eq!(children(&mut c, &id).await, (3, 3));
        // Each iteration ran `video-encode` to its end: 1 + 3 + 3 workflows.
        let all = c
            .list_workflows(pb::ListWorkflowsRequest { page_size: 100, ..Default::default() })
            .await
            .expect("ls")
            .into_inner();
        let of = |p: &str| all.workflows.iter().filter(|w| w.pack == p && w.status == "completed").count();
        assert_eq!((of("video-pipeline"), of("video-pipeline.renditions"), of("video-encode")), (1, 3, 3));
    });
    // Steps of step types (from an imported file), a foreach over the
    // range of chunks the split answered, with the same worker.
    ok(cli(&server, &["deploy", "examples/dags/encode-parts"]));
    let id = start(&server, "encode-parts", serde_json::json!({ "source": "s3://in/short.mov", "chunk_seconds": 600 }));
    rt().block_on(async {
        let mut c = client(&server.addr, TOKEN_A).await;
        let w = wait_done(&mut c, &id, Duration::from_secs(90)).await;
        assert_eq!(w.status, "completed", "{}", w.reason);
        let result: serde_json::Value = serde_json::from_str(&w.result_json).expect("result");
        let chunks = result["chunks"].as_u64().expect("chunks");
        assert!((1..=6).contains(&chunks), "a source of 1 to 60 minutes in chunks of 10: {result}");
        assert_eq!(children(&mut c, &id).await.1 as u64, chunks);
    });
}

#[test]
fn a_foreach_of_300_never_runs_more_than_its_concurrency() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let def = dir.path().join("fan");
    std::fs::create_dir_all(&def).expect("mkdir");
    std::fs::write(
        def.join("workflow.yaml"),
        "id: fan\nparams: { n: int }\nsteps:\n  - id: each\n    foreach:\n      range: { to: \"${n}\" }\n      concurrency: 20\n      steps:\n        - { id: wait, type: sleep, params: { duration: 10ms } }\n        - { id: echo, type: noop, depends_on: [wait], params: { i: \"${index}\" } }\noutputs:\n  done: ${succeeded@each}\n",
    )
    .expect("write");
    ok(cli(&server, &["deploy", def.to_str().expect("utf-8")]));
    let id = start(&server, "fan", serde_json::json!({ "n": 300 }));
    rt().block_on(async {
        let mut c = client(&server.addr, TOKEN_A).await;
        let w = wait_done(&mut c, &id, Duration::from_secs(120)).await;
        assert_eq!(w.status, "completed", "{}", w.reason);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&w.result_json).expect("json"),
            serde_json::json!({ "done": 300 })
        );
        let (most, started) = children(&mut c, &id).await;
        assert_eq!(started, 300);
        assert!((10..=20).contains(&most), "at most 20 at once, and more than a few: {most}");
    });
}

#[test]
fn a_worker_lost_mid_step_is_retried_by_the_steps_platform_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let def = dir.path().join("poison");
    std::fs::create_dir_all(&def).expect("mkdir");
    std::fs::write(
        def.join("workflow.yaml"),
        "id: poison\nsteps:\n  - id: eat\n    function: poison.eat\n    retry: { error: { attempts: 5 }, platform: { attempts: 2 } }\n",
    )
    .expect("write");
    ok(cli(&server, &["deploy", def.to_str().expect("utf-8")]));
    let id = start(&server, "poison", serde_json::json!({}));
    rt().block_on(async {
        // Each worker takes the call and dies with it: the dispatcher
        // answers `lost` at once (the compiled `max_lost = 1`), and the
        // step's platform policy, not its error one, decides.
        for _ in 0..2 {
            let mut w =
                crate::client::RawWorker::connect(&server.addr, TOKEN_A, &["poison.eat"], 1).await.expect("worker");
            let got = w.invocations(Duration::from_secs(20)).await;
            assert_eq!(got.len(), 1, "one call per attempt");
            drop(w);
        }
        let mut c = client(&server.addr, TOKEN_A).await;
        let w = wait_done(&mut c, &id, Duration::from_secs(30)).await;
        assert_eq!(w.status, "failed");
        assert_eq!(
            w.reason,
            "step eat failed: the worker running it was lost 1 time(s), as many as the function's max_lost allows"
        );
        let full = c
            .get_workflow(pb::GetWorkflowRequest { workflow_id: id.clone(), without_facts: false })
            .await
            .expect("get")
            .into_inner();
        let step = full.facts.iter().find(|f| f.r#type == "Step").expect("the step's fact");
        let fields: serde_json::Value = serde_json::from_str(&step.fields_json).expect("json");
        assert_eq!((fields["lost"].as_i64(), fields["errors"].as_i64()), (Some(1), Some(0)), "{fields}");
    });
}

#[test]
fn a_steps_concurrency_caps_its_calls_across_iterations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let def = dir.path().join("capped");
    std::fs::create_dir_all(&def).expect("mkdir");
    std::fs::write(
        def.join("workflow.yaml"),
        "id: capped\nsteps:\n  - id: each\n    foreach:\n      range: { to: 30 }\n      concurrency: 30\n      steps:\n        - { id: call, function: slow.fn, concurrency: 3, params: { i: \"${index}\" } }\n",
    )
    .expect("write");
    ok(cli(&server, &["deploy", def.to_str().expect("utf-8")]));
    let id = start(&server, "capped", serde_json::json!({}));
    rt().block_on(async {
        // A worker that would take 100 at once holds each call 50 ms: the
        // server never hands it more than the step's 3.
        let mut w = crate::client::RawWorker::connect(&server.addr, TOKEN_A, &["slow.fn"], 100).await.expect("worker");
        let (mut held, mut most, mut answered) = (Vec::<(Instant, pb::Invocation)>::new(), 0, 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        while answered < 30 && Instant::now() < deadline {
            for inv in w.invocations(Duration::from_millis(10)).await {
                held.push((Instant::now(), inv));
            }
            most = most.max(held.len());
            let (due, keep): (Vec<_>, Vec<_>) =
                held.into_iter().partition(|(t, _)| t.elapsed() > Duration::from_millis(50));
            held = keep;
            for (_, inv) in due {
                assert!(w.answer(&inv, serde_json::json!({})).await, "session open");
                answered += 1;
            }
        }
        assert_eq!(answered, 30);
        assert_eq!(most, 3, "the step's concurrency, and no less");
        let mut c = client(&server.addr, TOKEN_A).await;
        let w = wait_done(&mut c, &id, Duration::from_secs(30)).await;
        assert_eq!(w.status, "completed", "{}", w.reason);
    });
}
