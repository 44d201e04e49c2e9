//! The worker protocol's finer points against a real server, with scripted
//! raw sessions: the effective max_in_flight, rejection codes, "not
//! started" answers, worker and server drains, and attempts that continue
//! across a SIGKILL of the server.

use std::time::{Duration, Instant};

use stoa_proto::v1 as pb;
use stoa_proto::v1::server_message::Msg;

use crate::client::{client, deploy, facts, Client, RawWorker};
use crate::support::{Server, TOKEN_A};

const WAIT: Duration = Duration::from_secs(30);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

async fn start(c: &mut Client, request_id: &str) -> String {
    c.start_workflow(pb::StartWorkflowRequest {
        pack: "once".into(),
        facts: facts(serde_json::json!([{"type": "Job", "fields": {"n": 1, "state": "new"}}])),
        request_id: request_id.into(),
    })
    .await
    .expect("start")
    .into_inner()
    .workflow_id
}

/// The next invocation of workflow `wf` (others are left unanswered).
async fn invocation_of(w: &mut RawWorker, wf: &str) -> pb::Invocation {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no invocation of {wf} within {WAIT:?}");
        if let Some(inv) = w.invocations(left).await.into_iter().find(|i| i.workflow_id == wf) {
            return inv;
        }
    }
}

/// The next message that is not a batch of invocations.
async fn control(w: &mut RawWorker) -> Msg {
    loop {
        match w.next(WAIT).await.and_then(|m| m.msg) {
            Some(Msg::Invocations(_)) => continue,
            Some(m) => return m,
            None => panic!("no message within {WAIT:?}"),
        }
    }
}

async fn finished(c: &mut Client, id: &str) -> pb::Workflow {
    let deadline = Instant::now() + WAIT;
    loop {
        let w = c
            .get_workflow(pb::GetWorkflowRequest { workflow_id: id.into(), without_facts: true })
            .await
            .expect("get")
            .into_inner();
        if w.status != "running" {
            return w;
        }
        assert!(Instant::now() < deadline, "{id} still running after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `attempts` of each applied result, in order, once there is one.
/// (GetWorkflow shows the workflow in memory, where a turn is applied a
/// moment before the timeline read from the store has it.)
async fn applied_attempts(c: &mut Client, id: &str) -> Vec<u64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let t = c
            .get_timeline(pb::GetTimelineRequest { workflow_id: id.into(), from_seq: 1, limit: 1000 })
            .await
            .expect("timeline")
            .into_inner();
        let attempts: Vec<u64> = t
            .entries
            .iter()
            .filter(|e| e.kind == "result_applied")
            .map(|e| {
                let v: serde_json::Value = serde_json::from_str(&e.json).expect("json");
                v["event"]["attempts"].as_u64().expect("attempts")
            })
            .collect();
        if !attempts.is_empty() || Instant::now() > deadline {
            return attempts;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn welcome_rejections_and_not_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    rt().block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        deploy(&mut a, "tests/packs/once").await;
        // Asked for none: the server grants one, and says so.
        let mut w = RawWorker::connect(&server.addr, TOKEN_A, &["t.work"], 0).await.expect("worker");
        assert_eq!(w.welcome.max_in_flight, 1);

        let id = start(&mut a, "ns").await;
        let inv = invocation_of(&mut w, &id).await;
        assert_eq!(inv.attempt, 1);
        // Not started: offered again as the same attempt, and not counted.
        assert!(w.fail(&inv, false, pb::FailureKind::NotStarted).await);
        let again = invocation_of(&mut w, &id).await;
        assert_eq!((again.id.as_str(), again.attempt), (inv.id.as_str(), 1));

        // Answering what it does not hold: NOT_HELD, with the attempt.
        let mut stale = again.clone();
        stale.attempt = 7;
        assert!(w.answer(&stale, serde_json::json!(null)).await);
        match control(&mut w).await {
            Msg::Rejected(r) => {
                assert_eq!(
                    (r.code(), r.attempt, r.invocation_id.as_str()),
                    (pb::RejectedCode::NotHeld, 7, inv.id.as_str())
                )
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        // A second hello has no place in a session.
        assert!(w.send(pb::worker_message::Msg::Hello(pb::Hello::default())).await);
        match control(&mut w).await {
            Msg::Rejected(r) => assert_eq!(r.code(), pb::RejectedCode::Unexpected, "{r:?}"),
            other => panic!("expected a rejection, got {other:?}"),
        }

        assert!(w.answer(&again, serde_json::json!({"ok": true})).await);
        let wf = finished(&mut a, &id).await;
        assert_eq!(wf.status, "completed", "{}", wf.reason);
        assert_eq!(applied_attempts(&mut a, &id).await, [1], "a refusal is not an attempt");
    });
}

#[test]
fn a_draining_worker_gets_no_new_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    rt().block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        deploy(&mut a, "tests/packs/once").await;
        let mut old = RawWorker::connect(&server.addr, TOKEN_A, &["t.work"], 8).await.expect("worker");
        let drain = pb::Drain { reason: "test".into(), deadline_ms: 0 };
        assert!(old.send(pb::worker_message::Msg::Drain(drain)).await);
        // Let the drain land before there is work: a Rejected round trip
        // orders it (the server handles a session's messages in order).
        assert!(old.send(pb::worker_message::Msg::Hello(pb::Hello::default())).await);
        assert!(matches!(control(&mut old).await, Msg::Rejected(_)));
        let id = start(&mut a, "drain").await;
        let mut new = RawWorker::connect(&server.addr, TOKEN_A, &["t.work"], 8).await.expect("worker");
        let inv = invocation_of(&mut new, &id).await;
        assert!(old.invocations(Duration::from_millis(100)).await.is_empty(), "the draining worker got work");
        assert!(new.answer(&inv, serde_json::json!(1)).await);
        assert_eq!(finished(&mut a, &id).await.status, "completed");
    });
}

#[test]
fn sigterm_drains_workers_and_applies_their_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path());
    let id = rt().block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        deploy(&mut a, "tests/packs/once").await;
        let mut w = RawWorker::connect(&server.addr, TOKEN_A, &["t.work"], 8).await.expect("worker");
        let id = start(&mut a, "term").await;
        let inv = invocation_of(&mut w, &id).await;
        let _ = std::process::Command::new("kill").arg("-TERM").arg(server.child.id().to_string()).status();
        match control(&mut w).await {
            Msg::Drain(d) => assert!(d.deadline_ms > 0, "{d:?}"),
            other => panic!("expected a drain, got {other:?}"),
        }
        // Answered after the signal, within the drain: still applied. The
        // server ends the session once it has nothing leased.
        assert!(w.answer(&inv, serde_json::json!(1)).await);
        let ended = tokio::time::timeout(WAIT, async { while let Ok(Some(_)) = w.rx.message().await {} });
        ended.await.expect("the server did not end the session");
        id
    });
    let status = server.child.wait().expect("wait");
    assert!(status.success(), "stoa serve exited with {status}");
    let server = Server::start(dir.path());
    rt().block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        let wf = a
            .get_workflow(pb::GetWorkflowRequest { workflow_id: id.clone(), without_facts: true })
            .await
            .expect("get")
            .into_inner();
        assert_eq!(wf.status, "completed", "the answer given during the drain was lost");
    });
}

#[test]
fn attempts_continue_after_a_server_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path());
    let id = rt().block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        deploy(&mut a, "tests/packs/once").await;
        let mut w = RawWorker::connect(&server.addr, TOKEN_A, &["t.work"], 8).await.expect("worker");
        let id = start(&mut a, "retry").await;
        let inv = invocation_of(&mut w, &id).await;
        assert_eq!(inv.attempt, 1);
        assert!(w.fail(&inv, true, pb::FailureKind::Failed).await);
        // The same answer again is rejected once the first was handled...
        assert!(w.fail(&inv, true, pb::FailureKind::Failed).await);
        assert!(matches!(control(&mut w).await, Msg::Rejected(_)));
        // ...and a start acknowledged after that is flushed with its record.
        start(&mut a, "barrier").await;
        id
    });
    server.kill();
    let server = Server::start(dir.path());
    rt().block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        let mut w = RawWorker::connect(&server.addr, TOKEN_A, &["t.work"], 8).await.expect("worker");
        let inv = invocation_of(&mut w, &id).await;
        assert_eq!(inv.attempt, 2, "the attempt count restarted after the restart");
        // The last attempt the policy allows (max_attempts = 2).
        assert!(w.fail(&inv, true, pb::FailureKind::Failed).await);
        let wf = finished(&mut a, &id).await;
        assert_eq!(wf.status, "failed", "the retry budget was reset by the restart");
        assert_eq!(applied_attempts(&mut a, &id).await, [2], "{}", wf.reason);
    });
}
