//! Run strategies enforced at start: queues that start the next workflow
//! when one ends, a strict queue stopped by a failure until its restart
//! completes, first-only refusals and last-only cancellations.

use std::collections::BTreeMap;
use std::sync::Arc;

use stoa_engine::workflow::{Input, Status};
use stoa_engine::WorkflowId;
use stoa_rules::testcase::FactSpec;

use super::new_runtime;
use crate::committer::Committer;
use crate::followup::Background;
use crate::runtime::Runtime;
use stoa_engine::store::SledStore;

/// A pack whose workflows end when told: `Done` completes, `Fail` fails.
fn pack(strategy: &str) -> BTreeMap<String, String> {
    [
        ("pack.toml".to_string(), format!("[pack]\nname = \"job\"\nversion = \"1\"\n\n[run_strategy]\n{strategy}\n")),
        (
            "job.rules".to_string(),
            "rule \"done\" { match { d: Done() } action { complete(); } }\nrule \"fail\" { match { f: Fail() } action { fail(\"asked to\"); } }\n"
                .to_string(),
        ),
    ]
    .into()
}

fn fact(ty: &str) -> Vec<FactSpec> {
    vec![serde_json::from_value(serde_json::json!({"type": ty, "fields": {}})).expect("fact")]
}

struct Env {
    rt: Arc<Runtime>,
    later: tokio::sync::mpsc::UnboundedReceiver<Background>,
    committer: Committer,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn new(strategy: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path(), 8).unwrap());
        let (committer, thread) =
            Committer::spawn(store.clone(), crate::clock::Clock::system(), &crate::metrics::Metrics::off());
        let (dispatch, _queued) = crate::dispatch_handle::channel();
        let (background, later) = tokio::sync::mpsc::unbounded_channel();
        let rt = Arc::new(new_runtime(store, committer.clone(), dispatch, background));
        rt.deploy("a", pack(strategy), false, None).await.unwrap();
        Env { rt, later, committer, thread: Some(thread), _dir: dir }
    }

    async fn start(&self, request: &str) -> Result<(WorkflowId, bool), String> {
        self.rt.start("a", "job", Vec::new(), request).await.map_err(|e| e.to_string())
    }

    fn status(&self, id: &WorkflowId) -> Option<Status> {
        self.rt.get("a", id).ok().map(|s| s.meta.status)
    }

    /// Ends a workflow, then acts on what its end asks of the background
    /// (here by hand, so that the order is the test's).
    async fn end(&mut self, id: &WorkflowId, how: &str) {
        self.rt.turn("a", id, Input::Assert { facts: fact(how) }).await.unwrap();
        self.settle().await;
    }

    async fn settle(&mut self) {
        while let Ok(msg) = self.later.try_recv() {
            if let Background::RunNext { tenant, pack, ended } = msg {
                self.rt.run_next(&tenant, &pack, Some(ended)).await.unwrap();
            }
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.committer.close();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_starts_wait_in_order() {
    let mut env = Env::new("mode = \"sequential\"").await;
    let (w1, created) = env.start("r1").await.unwrap();
    assert!(created);
    let (w2, _) = env.start("r2").await.unwrap();
    let (w3, _) = env.start("r3").await.unwrap();
    assert_eq!(env.status(&w1), Some(Status::Running));
    assert_eq!((env.status(&w2), env.status(&w3)), (None, None), "queued: not started");
    assert!(env.rt.is_queued("a", "job", "r2").unwrap());
    // A repeat of a queued start neither queues it again nor starts it.
    assert_eq!(env.start("r2").await.unwrap(), (w2.clone(), false));
    env.end(&w1, "Done").await;
    assert_eq!((env.status(&w2), env.status(&w3)), (Some(Status::Running), None));
    // A failure does not stop a (plain) sequential queue.
    env.end(&w2, "Fail").await;
    assert_eq!(env.status(&w3), Some(Status::Running));
    assert!(!env.rt.is_queued("a", "job", "r3").unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_runs_up_to_its_limit() {
    let mut env = Env::new("mode = \"parallel\"\nlimit = 2").await;
    let mut ids = Vec::new();
    for r in ["r1", "r2", "r3", "r4"] {
        ids.push(env.start(r).await.unwrap().0);
    }
    let running = |env: &Env| ids.iter().filter(|id| env.status(id) == Some(Status::Running)).count();
    assert_eq!(running(&env), 2);
    env.end(&ids[1], "Done").await;
    assert_eq!(running(&env), 2);
    assert_eq!(env.status(&ids[2]), Some(Status::Running), "the oldest queued start goes first");
    assert_eq!(env.status(&ids[3]), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_queue_stops_at_a_failure_until_its_restart_completes() {
    let mut env = Env::new("mode = \"strict_sequential\"").await;
    let (w1, _) = env.start("r1").await.unwrap();
    let (w2, _) = env.start("r2").await.unwrap();
    env.end(&w1, "Fail").await;
    assert_eq!(env.status(&w2), None, "held behind the failure");
    let (later, _) = env.start("r3").await.unwrap();
    assert_eq!(env.status(&later), None);
    // The restart of the failed workflow is not queued; its success lets
    // the queue go on.
    let (restart, created) = env.start(&format!("restart:{w1}:")).await.unwrap();
    assert!(created);
    assert_eq!(env.status(&restart), Some(Status::Running));
    env.end(&restart, "Done").await;
    assert_eq!(env.status(&w2), Some(Status::Running));
    assert_eq!(env.status(&later), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_only_refuses_and_last_only_cancels() {
    let env = Env::new("mode = \"first_only\"").await;
    let (w1, _) = env.start("r1").await.unwrap();
    let err = env.start("r2").await.unwrap_err();
    assert!(err.contains(&format!("{w1} of pack job is running, and the pack's run strategy is first_only")), "{err}");
    drop(env);

    let env = Env::new("mode = \"last_only\"").await;
    let (w1, _) = env.start("r1").await.unwrap();
    let (w2, _) = env.start("r2").await.unwrap();
    assert_eq!((env.status(&w1), env.status(&w2)), (Some(Status::Cancelled), Some(Status::Running)));
    let reason = env.rt.get("a", &w1).unwrap().meta.reason;
    assert_eq!(reason.as_deref(), Some("cancelled: superseded by a newer start of job (run strategy last_only)"));
}
