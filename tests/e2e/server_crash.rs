//! The server is SIGKILLed while 100 workflows are in flight, then
//! restarted on the same data: every acknowledged start is there, every
//! workflow completes, and no result is applied twice. On sled, and on
//! PostgreSQL (`postgres.rs`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use stoa_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::client::{client, deploy, media_worker, video_facts};
use crate::support::{Server, TOKEN_A};

#[test]
fn server_sigkill_with_100_workflows_in_flight() {
    let dir = tempfile::tempdir().expect("tempdir");
    sigkill_with_100_workflows_in_flight(&|| Server::start(dir.path()));
}

/// The test, on the store of the servers `start` starts (each on the same
/// data).
/// A finished `video-encode` workflow applied each of its results exactly
/// once (`results` of them: the test worker's six are split, three
/// encodes, assemble, index), and its timeline has no gap.
pub async fn each_result_applied_once(a: &mut crate::client::Client, id: &str, results: usize) {
    let t = a
        .get_timeline(pb::GetTimelineRequest { workflow_id: id.into(), from_seq: 1, limit: 10_000 })
        .await
        .expect("timeline")
        .into_inner();
    let mut applied: BTreeMap<String, usize> = BTreeMap::new();
    for e in &t.entries {
        if e.kind == "result_applied" {
            let v: serde_json::Value = serde_json::from_str(&e.json).expect("json");
            *applied.entry(v["event"]["invocation"].as_str().expect("inv").to_string()).or_default() += 1;
        }
    }
    assert!(applied.values().all(|n| *n == 1), "{id}: a result was applied twice: {applied:?}");
    assert_eq!(applied.len(), results, "{id}: {applied:?}");
    let seqs: Vec<u64> = t.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{id}: timeline has gaps");
}

/// Waits until every one of `ids` completed (none may fail, or be lost),
/// then checks that each applied each of its `results` once.
pub async fn all_completed_once(c: &mut crate::client::Client, ids: &[String], within: Duration, results: usize) {
    let deadline = Instant::now() + within;
    let mut left: Vec<&String> = ids.iter().collect();
    while !left.is_empty() {
        assert!(Instant::now() < deadline, "{} of {} not completed, e.g. {}", left.len(), ids.len(), left[0]);
        let mut still = Vec::new();
        for id in left {
            let w = c
                .get_workflow(pb::GetWorkflowRequest { workflow_id: id.clone(), without_facts: true })
                .await
                .unwrap_or_else(|e| panic!("acknowledged start {id} lost: {e}"))
                .into_inner();
            assert_ne!(w.status, "failed", "{id} failed: {}", w.reason);
            if w.status != "completed" {
                still.push(id);
            }
        }
        left = still;
        if !left.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for id in ids {
        each_result_applied_once(c, id, results).await;
    }
}

pub fn sigkill_with_100_workflows_in_flight(start: &dyn Fn() -> Server) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let mut server = start();
    let mut acked = Vec::new();
    rt.block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        deploy(&mut a, "examples/packs/video-encode").await;
        let stop = CancellationToken::new();
        for i in 0..100 {
            let r = a
                .start_workflow(pb::StartWorkflowRequest {
                    pack: "video-encode".into(),
                    facts: video_facts(&format!("s3://in/{i}.mov")),
                    request_id: format!("crash-{i}"),
                })
                .await
                .expect("start")
                .into_inner();
            acked.push(r.workflow_id);
        }
        // Work starts now; kill the server in the middle of it.
        let worker = tokio::spawn(media_worker(server.addr.clone(), TOKEN_A, Duration::from_millis(1), stop.clone()));
        let mut completed = 0;
        for _ in 0..2000 {
            completed = a
                .list_workflows(pb::ListWorkflowsRequest {
                    status: "completed".into(),
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .expect("ls")
                .into_inner()
                .workflows
                .len();
            if completed >= 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        eprintln!("killing the server with {completed} of 100 workflows completed");
        assert!((1..100).contains(&completed), "the kill did not land in the middle of the work");
        server.kill();
        stop.cancel();
        let _ = worker.await;
    });
    let server = start();
    rt.block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        let stop = CancellationToken::new();
        let worker = tokio::spawn(media_worker(server.addr.clone(), TOKEN_A, Duration::ZERO, stop.clone()));
        all_completed_once(&mut a, &acked, Duration::from_secs(90), 6).await;
        stop.cancel();
        let _ = worker.await;
    });
}
