//! The runtime with a store whose commits the test holds back, to pin
//! down what is acknowledged before it is durable; the committer with a
//! store that refuses writes, to pin down what a failed flush keeps.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::Poll;

use stoa_engine::store::{Attempts, Commit, Error, PackRecord, Parts, SledStore, Store};
use stoa_engine::timeline::Entry;
use stoa_engine::workflow::{Invocation, Meta, Snapshot, Timer};
use stoa_engine::{InvocationId, WorkflowId};
use stoa_rules::testcase::FactSpec;

use crate::committer::Committer;
use crate::runtime::Runtime;

/// Holds the first commit until the test opens the gate; tells the test
/// when a commit begins. `on_request` runs before each request-record read.
struct Gate {
    inner: Arc<SledStore>,
    entered: Mutex<mpsc::Sender<()>>,
    open: Mutex<mpsc::Receiver<()>>,
    opened: AtomicBool,
    on_request: Box<dyn Fn(&SledStore) + Send + Sync>,
}

impl Gate {
    /// A gate, and the senders that open it and hear of each commit.
    fn new(inner: Arc<SledStore>) -> (Gate, mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (entered_tx, entered) = mpsc::channel();
        let (open, open_rx) = mpsc::channel();
        let gate = Gate {
            inner,
            entered: Mutex::new(entered_tx),
            open: Mutex::new(open_rx),
            opened: AtomicBool::new(false),
            on_request: Box::new(|_| {}),
        };
        (gate, entered, open)
    }
}

impl Store for Gate {
    fn commit(&self, turns: &[Commit<'_>]) -> Result<(), Error> {
        let _ = self.entered.lock().unwrap().send(());
        if !self.opened.load(Ordering::SeqCst) {
            let _ = self.open.lock().unwrap().recv();
            self.opened.store(true, Ordering::SeqCst);
        }
        self.inner.commit(turns)
    }
    fn load(&self, id: &WorkflowId) -> Result<Option<Snapshot>, Error> {
        self.inner.load(id)
    }
    fn workflows(&self, prefix: &str, after: Option<&WorkflowId>, limit: usize) -> Result<Vec<Meta>, Error> {
        self.inner.workflows(prefix, after, limit)
    }
    fn list(&self, q: &stoa_engine::store::ListQuery<'_>) -> Result<Vec<Meta>, Error> {
        self.inner.list(q)
    }
    fn requests(&self, prefix: &str, limit: usize) -> Result<Vec<(String, WorkflowId)>, Error> {
        self.inner.requests(prefix, limit)
    }
    fn list_counts(
        &self,
        tenant: &str,
        family: stoa_engine::store::Family<'_>,
    ) -> Result<stoa_engine::store::ListCounts, Error> {
        self.inner.list_counts(tenant, family)
    }
    fn put_pack(&self, pack: &PackRecord) -> Result<(), Error> {
        self.inner.put_pack(pack)
    }
    fn packs(&self, tenant: &str) -> Result<Vec<PackRecord>, Error> {
        self.inner.packs(tenant)
    }
    fn timeline(&self, id: &WorkflowId, from: u64, limit: usize) -> Result<Vec<Entry>, Error> {
        self.inner.timeline(id, from, limit)
    }
    fn outbox(&self, parts: &Parts) -> Result<Vec<Invocation>, Error> {
        self.inner.outbox(parts)
    }
    fn record_attempts(&self, attempts: &[(InvocationId, Attempts)]) -> Result<(), Error> {
        self.inner.record_attempts(attempts)
    }
    fn attempts(&self, parts: &Parts) -> Result<Vec<(InvocationId, Attempts)>, Error> {
        self.inner.attempts(parts)
    }
    fn request(&self, request_id: &str) -> Result<Option<WorkflowId>, Error> {
        (self.on_request)(&self.inner);
        self.inner.request(request_id)
    }
    fn pending(&self, id: &InvocationId) -> Result<bool, Error> {
        self.inner.pending(id)
    }
    fn timers(&self, parts: &Parts) -> Result<Vec<Timer>, Error> {
        self.inner.timers(parts)
    }
    fn finished_before(&self, before_ms: u64, limit: usize) -> Result<Vec<WorkflowId>, Error> {
        self.inner.finished_before(before_ms, limit)
    }
    fn delete_finished(&self, ids: &[WorkflowId]) -> Result<usize, Error> {
        self.inner.delete_finished(ids)
    }
    fn put_aux(&self, kind: &str, key: &str, value: &serde_json::Value) -> Result<(), Error> {
        self.inner.put_aux(kind, key, value)
    }
    fn get_aux(&self, kind: &str, key: &str) -> Result<Option<serde_json::Value>, Error> {
        self.inner.get_aux(kind, key)
    }
    fn scan_aux(&self, kind: &str, prefix: &str) -> Result<Vec<(String, serde_json::Value)>, Error> {
        self.inner.scan_aux(kind, prefix)
    }
    fn delete_aux(&self, kind: &str, key: &str) -> Result<(), Error> {
        self.inner.delete_aux(kind, key)
    }
}

fn steps_pack() -> BTreeMap<String, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/e2e/steps");
    ["pack.toml", "steps.rules"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read_to_string(dir.join(f)).expect("bench pack")))
        .collect()
}

fn steps(total: i64) -> Vec<FactSpec> {
    let f = serde_json::json!([{"type": "Steps", "fields": {"done": 0, "total": total, "waiting": false}}]);
    serde_json::from_value(f).expect("facts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_start_is_answered_only_once_the_first_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path(), 8).unwrap());
    let (gate, entered, open) = Gate::new(store.clone());
    let (committer, thread) =
        Committer::spawn(Arc::new(gate), crate::clock::Clock::system(), &crate::metrics::Metrics::off());
    let (dispatch, _queued) = crate::dispatch_handle::channel();
    let (background, _later) = tokio::sync::mpsc::unbounded_channel();
    let rt = Arc::new(new_runtime(store.clone(), committer.clone(), dispatch, background));
    rt.deploy("a", steps_pack(), false, None).await.unwrap();

    let first = tokio::spawn({
        let rt = rt.clone();
        async move { rt.start("a", "bench-steps", steps(2), "req-1").await }
    });
    // The first start's turn is in its commit, held at the gate.
    tokio::task::spawn_blocking(move || {
        entered.recv().unwrap();
        entered
    })
    .await
    .unwrap();
    let second = rt.start("a", "bench-steps", steps(2), "req-1");
    tokio::pin!(second);
    let early =
        std::future::poll_fn(|cx| Poll::Ready(second.as_mut().poll(cx).map(|r| r.map_err(|e| e.to_string())))).await;
    assert!(early.is_pending(), "the repeat was answered while the first start was not durable: {early:?}");
    assert_eq!(store.request("a/req-1").unwrap(), None, "nothing is durable yet");

    open.send(()).unwrap();
    let (id2, created2) = second.await.unwrap();
    let (id1, created1) = first.await.unwrap().unwrap();
    assert_eq!((id1.clone(), created1, created2), (id2, true, false));
    assert_eq!(store.request("a/req-1").unwrap(), Some(id1));
    committer.close();
    thread.join().unwrap();
}

/// Retention may delete a finished workflow, and its request record, right
/// after a repeated start found it: the repeat is answered from what it
/// found, not from a second read that no longer finds the first start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_start_is_answered_when_retention_deletes_the_workflow_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path(), 8).unwrap());
    let (mut gate, _entered, _open) = Gate::new(store.clone());
    gate.opened.store(true, Ordering::SeqCst);
    // Reads of the request record: the repeat's lookup is the second; the
    // sweep deletes the workflow right after it.
    let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let swept = Arc::new(Mutex::new(None::<WorkflowId>));
    gate.on_request = Box::new({
        let (reads, swept) = (reads.clone(), swept.clone());
        move |s| {
            if reads.fetch_add(1, Ordering::SeqCst) == 2 {
                let id = swept.lock().unwrap().clone().expect("the first start's id");
                assert_eq!(s.delete_finished(&[id]).unwrap(), 1);
            }
        }
    });
    let gate = Arc::new(gate);
    let (committer, thread) =
        Committer::spawn(gate.clone(), crate::clock::Clock::system(), &crate::metrics::Metrics::off());
    let (dispatch, _queued) = crate::dispatch_handle::channel();
    let (background, _later) = tokio::sync::mpsc::unbounded_channel();
    let rt = Arc::new(new_runtime(gate, committer.clone(), dispatch, background));
    rt.deploy("a", steps_pack(), false, None).await.unwrap();

    let (id1, created1) = rt.start("a", "bench-steps", steps(0), "req-1").await.unwrap();
    *swept.lock().unwrap() = Some(id1.clone());
    let (id2, created2) = rt.start("a", "bench-steps", steps(0), "req-1").await.unwrap();
    assert_eq!((id2, created1, created2), (id1, true, false));
    committer.close();
    thread.join().unwrap();
}

/// A runtime for tenant `a` with the default ceilings and quotas.
fn new_runtime(
    store: Arc<dyn Store>,
    committer: Committer,
    dispatch: crate::dispatch_handle::DispatchHandle,
    background: tokio::sync::mpsc::UnboundedSender<crate::followup::Background>,
) -> Runtime {
    let ceilings = stoa_rules::limits::Limits::default_ceilings();
    let pool = crate::pool::Pool::start(crate::pool::Options {
        threads: 2,
        share: 1,
        shares: Default::default(),
        stack_bytes: crate::pool::stack_bytes(&ceilings),
    })
    .unwrap();
    let policy = crate::config::Policy { ceilings, quotas: crate::config::Quotas::default() };
    let opts = crate::runtime::Options {
        policies: [("a".to_string(), policy)].into(),
        max_loaded: 1000,
        unload_idle_ms: 60_000,
        retain_finished_ms: 7 * 24 * 3600 * 1000,
        clock: crate::clock::Clock::system(),
        compile: crate::runtime::compiler(),
        placement: Arc::new(crate::placement::Placement::alone()),
        peers: None,
        metrics: crate::metrics::Metrics::off(),
    };
    Runtime::new(store, committer, pool, dispatch, opts, background).unwrap()
}

fn runtime(store: Arc<SledStore>) -> (Arc<Runtime>, Committer, std::thread::JoinHandle<()>) {
    let (committer, thread) =
        Committer::spawn(store.clone(), crate::clock::Clock::system(), &crate::metrics::Metrics::off());
    let (dispatch, _queued) = crate::dispatch_handle::channel();
    let (background, _later) = tokio::sync::mpsc::unbounded_channel();
    let rt = new_runtime(store, committer.clone(), dispatch, background);
    (Arc::new(rt), committer, thread)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// A deploy stores a version; only a rollout makes it run. A server that
/// stops between the two (say, killed) keeps the old one stable.
#[test]
fn a_stored_version_is_not_live_until_its_rollout_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let v2: BTreeMap<String, String> = steps_pack()
        .into_iter()
        .map(|(k, v)| (k.clone(), if k == "pack.toml" { v.replacen("version = ", "version = \"2\" #", 1) } else { v }))
        .collect();
    {
        let (rt, committer, thread) = runtime(Arc::new(SledStore::open(dir.path(), 8).unwrap()));
        block_on(rt.deploy("a", steps_pack(), false, None)).unwrap();
        let v1 = rt.rollout_of("a", "bench-steps").unwrap().stable;
        block_on(rt.deploy("a", v2.clone(), false, None)).unwrap();
        assert_eq!(rt.rollout_of("a", "bench-steps").unwrap().stable, v1, "stored, not rolled out");
        committer.close();
        thread.join().unwrap();
    }
    let (rt, committer, thread) = runtime(Arc::new(SledStore::open(dir.path(), 8).unwrap()));
    let r = rt.rollout_of("a", "bench-steps").unwrap();
    assert_ne!(r.stable, "2", "a restart must not make the newest stored version stable");
    assert!(rt.pack_version("a", "bench-steps", "2").is_some(), "the stored version is still there");
    committer.close();
    thread.join().unwrap();
}

/// Refuses to write attempt records while `refusals` lasts, as a failing
/// store would.
struct Flaky {
    inner: Arc<SledStore>,
    refusals: std::sync::atomic::AtomicUsize,
}

impl Store for Flaky {
    fn commit(&self, turns: &[Commit<'_>]) -> Result<(), Error> {
        self.inner.commit(turns)
    }
    fn load(&self, id: &WorkflowId) -> Result<Option<Snapshot>, Error> {
        self.inner.load(id)
    }
    fn workflows(&self, prefix: &str, after: Option<&WorkflowId>, limit: usize) -> Result<Vec<Meta>, Error> {
        self.inner.workflows(prefix, after, limit)
    }
    fn list(&self, q: &stoa_engine::store::ListQuery<'_>) -> Result<Vec<Meta>, Error> {
        self.inner.list(q)
    }
    fn requests(&self, prefix: &str, limit: usize) -> Result<Vec<(String, WorkflowId)>, Error> {
        self.inner.requests(prefix, limit)
    }
    fn list_counts(
        &self,
        tenant: &str,
        family: stoa_engine::store::Family<'_>,
    ) -> Result<stoa_engine::store::ListCounts, Error> {
        self.inner.list_counts(tenant, family)
    }
    fn put_pack(&self, pack: &PackRecord) -> Result<(), Error> {
        self.inner.put_pack(pack)
    }
    fn packs(&self, tenant: &str) -> Result<Vec<PackRecord>, Error> {
        self.inner.packs(tenant)
    }
    fn timeline(&self, id: &WorkflowId, from: u64, limit: usize) -> Result<Vec<Entry>, Error> {
        self.inner.timeline(id, from, limit)
    }
    fn outbox(&self, parts: &Parts) -> Result<Vec<Invocation>, Error> {
        self.inner.outbox(parts)
    }
    fn record_attempts(&self, attempts: &[(InvocationId, Attempts)]) -> Result<(), Error> {
        let refuse = self.refusals.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if refuse {
            return Err(Error::Io("the disk is full".into()));
        }
        self.inner.record_attempts(attempts)
    }
    fn attempts(&self, parts: &Parts) -> Result<Vec<(InvocationId, Attempts)>, Error> {
        self.inner.attempts(parts)
    }
    fn request(&self, request_id: &str) -> Result<Option<WorkflowId>, Error> {
        self.inner.request(request_id)
    }
    fn pending(&self, id: &InvocationId) -> Result<bool, Error> {
        self.inner.pending(id)
    }
    fn timers(&self, parts: &Parts) -> Result<Vec<Timer>, Error> {
        self.inner.timers(parts)
    }
    fn finished_before(&self, before_ms: u64, limit: usize) -> Result<Vec<WorkflowId>, Error> {
        self.inner.finished_before(before_ms, limit)
    }
    fn delete_finished(&self, ids: &[WorkflowId]) -> Result<usize, Error> {
        self.inner.delete_finished(ids)
    }
    fn put_aux(&self, kind: &str, key: &str, value: &serde_json::Value) -> Result<(), Error> {
        self.inner.put_aux(kind, key, value)
    }
    fn get_aux(&self, kind: &str, key: &str) -> Result<Option<serde_json::Value>, Error> {
        self.inner.get_aux(kind, key)
    }
    fn scan_aux(&self, kind: &str, prefix: &str) -> Result<Vec<(String, serde_json::Value)>, Error> {
        self.inner.scan_aux(kind, prefix)
    }
    fn delete_aux(&self, kind: &str, key: &str) -> Result<(), Error> {
        self.inner.delete_aux(kind, key)
    }
}

/// Attempt records are not lost to a failed flush: the next one writes
/// them, or, with nothing else to write, a second later; but never those of
/// invocations no longer pending (written, they would stay).
#[test]
fn attempt_records_of_a_failed_flush_are_written_later() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path(), 8).unwrap());
    // A workflow waiting for one call: its invocation is pending.
    let mut src = stoa_rules::compile::PackSource::default();
    src.files.insert("pack.toml".into(), "[pack]\nname = \"p\"\nversion = \"1\"\n\n[functions.\"f\"]\n".into());
    src.files.insert("main.rules".into(), "rule \"r\" { match { x: X() } action { call(\"f\", #{}); } }".into());
    let pack = Arc::new(stoa_rules::compile::compile(&src).0.expect("the pack compiles"));
    let facts: Vec<FactSpec> = serde_json::from_value(serde_json::json!([{"type": "X", "fields": {}}])).unwrap();
    let mut wf = stoa_engine::workflow::Workflow::new(WorkflowId::new("a.1"), pack, 1);
    let out = wf.apply(stoa_engine::workflow::Input::Start { facts }, 1).unwrap();
    store.commit(&[Commit { workflow: wf.id(), output: &out, request_id: None, epoch: None }]).unwrap();
    let (waiting, ended) = (out.invocations[0].id.clone(), InvocationId::new("a.1.9"));
    assert!(store.pending(&waiting).unwrap() && !store.pending(&ended).unwrap());

    let flaky = Flaky { inner: store.clone(), refusals: 2.into() };
    let (committer, thread) =
        Committer::spawn(Arc::new(flaky), crate::clock::Clock::system(), &crate::metrics::Metrics::off());
    let tried = Attempts { made: 1, failures: 1, retry_at_ms: 5 };
    committer.record_attempts(waiting.clone(), tried);
    // Refused; refused again with `ended`; then written a second later.
    std::thread::sleep(std::time::Duration::from_millis(300));
    committer.record_attempts(ended.clone(), tried);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(store.attempts(&Parts::All).unwrap(), vec![]);
    let start = std::time::Instant::now();
    while store.attempts(&Parts::All).unwrap().is_empty() {
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "not written: {:?}", store.attempts(&Parts::All));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(store.attempts(&Parts::All).unwrap(), vec![(waiting.clone(), tried)]);
    // A new record of an invocation that is not pending is dropped too (a
    // cancel whose commit the server saw fail may be in the store after all).
    let again = Attempts { made: 2, failures: 2, retry_at_ms: 6 };
    committer.record_attempts(ended.clone(), tried);
    committer.record_attempts(waiting.clone(), again);
    let start = std::time::Instant::now();
    while store.attempts(&Parts::All).unwrap() == vec![(waiting.clone(), tried)] {
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "not written: {:?}", store.attempts(&Parts::All));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    committer.close();
    thread.join().unwrap();
    assert_eq!(store.attempts(&Parts::All).unwrap(), vec![(waiting, again)]);
}

/// A cluster member tells its peers and workers an address they can reach:
/// the one it listens on, unless that is 0.0.0.0 (then it must be told).
#[test]
fn a_member_advertises_a_reachable_address() {
    let mut config = crate::Config::default();
    let any: std::net::SocketAddr = "0.0.0.0:7233".parse().unwrap();
    let err = crate::advertised(&config, any).unwrap_err();
    assert!(err.contains("set postgres.advertise"), "{err}");
    assert_eq!(crate::advertised(&config, "10.0.0.5:7233".parse().unwrap()).unwrap(), "10.0.0.5:7233");
    config.postgres.advertise = Some("stoa-2.internal:7233".into());
    assert_eq!(crate::advertised(&config, any).unwrap(), "stoa-2.internal:7233");
}

mod run_strategy;
