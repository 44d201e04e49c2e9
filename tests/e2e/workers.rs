//! Real worker processes through the server: the Rust and the Python
//! example workers run `video-encode` to the end; a worker SIGKILLed in the
//! middle of an invocation loses it to another worker, and the reaction runs
//! once.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stoa_proto::v1 as pb;

use crate::client::{client, deploy, facts, Client};
use crate::support::{python, repo, worker_bin, Proc, Server, TOKEN_A};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn rust_worker(addr: &str, extra: &[&str]) -> Proc {
    Proc(
        Command::new(worker_bin())
            .args(["--server", addr, "--token", TOKEN_A])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn stoa-worker-media"),
    )
}

fn encode_facts(uri: &str, chunk_seconds: i64) -> Vec<pb::FactInput> {
    facts(serde_json::json!([
        {"type": "Source", "fields": {"uri": uri}},
        {"type": "Recipe", "fields": {"codec": "h264", "chunk_seconds": chunk_seconds, "max_chunk_retries": 2}}
    ]))
}

/// Polls a workflow until it is no longer running, or `within` passed.
pub(crate) async fn wait_done(c: &mut Client, id: &str, within: Duration) -> pb::Workflow {
    let deadline = Instant::now() + within;
    loop {
        let w = c
            .get_workflow(pb::GetWorkflowRequest { workflow_id: id.into(), without_facts: true })
            .await
            .expect("get")
            .into_inner();
        if w.status != "running" || Instant::now() > deadline {
            return w;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Invocation id -> (times applied, attempts of the applied answer).
async fn applied(c: &mut Client, id: &str) -> BTreeMap<String, (usize, u64)> {
    let t = c
        .get_timeline(pb::GetTimelineRequest { workflow_id: id.into(), from_seq: 1, limit: 100_000 })
        .await
        .expect("timeline")
        .into_inner();
    let mut out: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for e in t.entries.iter().filter(|e| e.kind == "result_applied") {
        let v: serde_json::Value = serde_json::from_str(&e.json).expect("json");
        let slot = out.entry(v["event"]["invocation"].as_str().expect("id").into()).or_default();
        slot.0 += 1;
        slot.1 = v["event"]["attempts"].as_u64().unwrap_or(0);
    }
    out
}

async fn run_three(addr: &str) {
    let mut a = client(addr, TOKEN_A).await;
    deploy(&mut a, "examples/packs/video-encode").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = a
            .start_workflow(pb::StartWorkflowRequest {
                pack: "video-encode".into(),
                facts: encode_facts(&format!("s3://in/movie-{i}.mov"), 120),
                request_id: format!("w-{i}"),
            })
            .await
            .expect("start")
            .into_inner();
        ids.push(r.workflow_id);
    }
    for id in ids {
        let w = wait_done(&mut a, &id, Duration::from_secs(60)).await;
        assert_eq!(w.status, "completed", "{id}: {} {}", w.status, w.reason);
        let result: serde_json::Value = serde_json::from_str(&w.result_json).expect("result");
        assert!(result["output"].as_str().is_some_and(|s| !s.is_empty()), "{result}");
        let n = applied(&mut a, &id).await;
        assert!(n.values().all(|(times, _)| *times == 1), "{id}: {n:?}");
        assert_eq!(
            n.len() as u64,
            3 + result["chunks"].as_u64().expect("chunks"),
            "{id}: split + encodes + assemble + index"
        );
    }
}

#[test]
fn video_encode_completes_with_the_rust_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let _worker = rust_worker(&server.addr, &["--work-scale", "0", "--concurrency", "8"]);
    rt().block_on(run_three(&server.addr));
}

#[test]
fn video_encode_completes_with_the_python_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let _worker = Proc(
        Command::new(python())
            .arg(repo().join("functions/python/examples/media_worker.py"))
            .args(["--server", &server.addr, "--token", TOKEN_A, "--concurrency", "8", "--work-scale", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the Python worker"),
    );
    rt().block_on(run_three(&server.addr));
}

#[test]
fn a_worker_killed_mid_invocation_loses_it_to_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    rt().block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        deploy(&mut a, "examples/packs/video-encode").await;
        // One chunk (chunk_seconds past any source's length), slow work.
        let id = a
            .start_workflow(pb::StartWorkflowRequest {
                pack: "video-encode".into(),
                facts: encode_facts("s3://in/slow.mov", 4000),
                request_id: "slow".into(),
            })
            .await
            .expect("start")
            .into_inner()
            .workflow_id;
        let _others =
            rust_worker(&server.addr, &["--work-scale", "0", "--functions", "media.split,media.assemble,media.index"]);
        let mut slow =
            rust_worker(&server.addr, &["--work-scale", "1000", "--concurrency", "1", "--functions", "media.encode"]);
        // Once the split is answered and the slow worker is connected, the
        // encode is running there.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = applied(&mut a, &id).await;
            if !n.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "the split never finished");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let w = a
            .get_workflow(pb::GetWorkflowRequest { workflow_id: id.clone(), without_facts: true })
            .await
            .expect("get")
            .into_inner();
        assert_eq!(w.waiting.len(), 1);
        assert_eq!(w.waiting[0].function, "media.encode", "the encode is not in flight yet");
        slow.0.kill().expect("SIGKILL the worker");
        let _ = slow.0.wait();
        let _fast = rust_worker(&server.addr, &["--work-scale", "0", "--functions", "media.encode"]);
        let w = wait_done(&mut a, &id, Duration::from_secs(60)).await;
        assert_eq!(w.status, "completed", "{}", w.reason);
        let n = applied(&mut a, &id).await;
        assert!(n.values().all(|(times, _)| *times == 1), "a reaction ran twice: {n:?}");
        let encode = n.iter().find(|(k, _)| k.ends_with(".2")).expect("the encode's invocation").1;
        assert!(encode.1 >= 2, "the encode was not delivered again: {n:?}");
    });
}
