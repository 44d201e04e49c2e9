//! An in-memory model of the embedded store, for tests and the server's
//! simulation (feature `mem`): the same records under the same keys
//! (`layout`, `codec`), and sled's durability. A write is seen at once and
//! is durable only once a flush made it so: `commit`, `put_pack`,
//! `put_aux`, `delete_aux` and `put_aux_batch` flush (everything written
//! so far, as sled's flush does); `record_attempts` does not. A crash
//! keeps what is durable, and of the batches written since the last flush
//! the first few it is told to (sled recovers a prefix of its log, each
//! batch whole or not at all).
//!
//! Faults: a hook chooses, operation by operation, to let it be, to fail
//! it with `Error::Io` (before it writes, or after it wrote and before its
//! flush), or to crash the process before or after it. A failed operation
//! makes the store fail as `SledStore` does: every later operation is
//! refused, watchers are told (`on_health`), until `heal`, which stands
//! for sled's reopening: what was written since the last flush, the failed
//! one included, is recovered as a crash would recover it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, PoisonError};

use crate::fact::{InvocationId, WorkflowId};
use crate::timeline::Entry;
use crate::workflow::{Invocation, Meta, Snapshot, Timer, Waiting};

use super::codec::{decode, encode};
use super::index::{self, Counts, Family, ListCounts, ListQuery};
use super::layout::{decode_run, each_write, finished_id, finished_key, key, workflow_prefixes};
use super::{Attempts, Commit, Error, Health, HealthWatcher, PackRecord, Parts, Store};

/// What the store is about to do, for the fault hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Commits turns (writes and flushes).
    Commit,
    /// Writes anything else (and flushes, but for attempt records).
    Write,
    /// Reads.
    Read,
}

/// What happens to one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// `Error::Io` before anything is written; the store fails.
    Fail,
    /// The writes are made, then the flush fails (`Error::Io`): whether
    /// they survive is decided by `heal`. Reads fail as `Fail` does.
    FailFlush,
    /// The process dies before the operation: nothing of it is durable,
    /// and every later operation fails.
    Crash,
    /// The process dies right after the operation (durable, if it flushes);
    /// its caller never hears of it.
    CrashAfter,
}

/// Chooses the fault of each operation; called in the order of operations.
pub type FaultHook = Box<dyn FnMut(Op) -> Fault + Send>;

/// The durable records of a store: what a crash leaves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image(BTreeMap<Vec<u8>, Vec<u8>>);

impl Image {
    /// Records, for comparing images.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One atomic batch of writes (`None` removes).
type Batch = Vec<(Vec<u8>, Option<Vec<u8>>)>;

#[derive(Default)]
struct State {
    /// What readers see: `durable` and the writes since the last flush.
    live: BTreeMap<Vec<u8>, Vec<u8>>,
    durable: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Batches written since the last flush, in order.
    unflushed: Vec<Batch>,
    /// The batch the operation under way writes.
    batch: Batch,
    /// Why the store fails, while it does.
    failing: Option<String>,
    crashed: bool,
}

impl State {
    fn write(&mut self, k: Vec<u8>, v: Option<Vec<u8>>) {
        match &v {
            Some(v) => self.live.insert(k.clone(), v.clone()),
            None => self.live.remove(&k),
        };
        self.batch.push((k, v));
    }

    /// Ends the operation's batch.
    fn end_batch(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        if !batch.is_empty() {
            self.unflushed.push(batch);
        }
    }

    /// Makes the first `keep` unflushed batches durable and drops the
    /// others: a flush keeps all.
    fn recover(&mut self, keep: usize) {
        let lost = self.unflushed.len() > keep;
        for batch in self.unflushed.drain(..).take(keep) {
            for (k, v) in batch {
                match v {
                    Some(v) => self.durable.insert(k, v),
                    None => self.durable.remove(&k),
                };
            }
        }
        if lost {
            self.live = self.durable.clone();
        }
    }

    fn flush(&mut self) {
        self.recover(usize::MAX);
    }

    fn scan<T: serde::de::DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<T>, Error> {
        self.live
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    fn get<T: serde::de::DeserializeOwned>(&self, k: &[u8]) -> Result<Option<T>, Error> {
        self.live.get(k).map(|v| decode(k, v)).transpose()
    }
}

pub struct MemStore {
    state: Mutex<State>,
    faults: Mutex<Option<FaultHook>>,
    watchers: Mutex<Vec<HealthWatcher>>,
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore::open(Image::default())
    }
}

fn crashed() -> Error {
    Error::Io("the process crashed".into())
}

impl MemStore {
    /// A store holding what `image` holds (an empty one: a new store).
    pub fn open(image: Image) -> MemStore {
        let state = State { live: image.0.clone(), durable: image.0, ..State::default() };
        MemStore { state: Mutex::new(state), faults: Mutex::new(None), watchers: Mutex::new(Vec::new()) }
    }

    /// Sets the hook that chooses each operation's fault.
    pub fn set_faults(&self, hook: Option<FaultHook>) {
        *self.faults.lock().unwrap_or_else(PoisonError::into_inner) = hook;
    }

    /// Batches written since the last flush (that a crash may lose).
    pub fn unflushed(&self) -> usize {
        self.lock().unflushed.len()
    }

    /// The process dies: every later operation fails. Returns what a
    /// restart finds: what is durable, and the first `kept` batches
    /// written since the last flush.
    pub fn crash(&self, kept: usize) -> Image {
        let mut st = self.lock();
        if !st.crashed {
            st.recover(kept);
            st.crashed = true;
        }
        Image(st.durable.clone())
    }

    /// Whether the process crashed (`crash`, or a `Crash` fault).
    pub fn is_crashed(&self) -> bool {
        self.lock().crashed
    }

    /// What is durable now.
    pub fn image(&self) -> Image {
        Image(self.lock().durable.clone())
    }

    /// Ends a failure, as reopening the database does: of the batches
    /// written since the last flush (the failed one last), the first
    /// `kept` are recovered, the others are gone.
    pub fn heal(&self, kept: usize) {
        {
            let mut st = self.lock();
            if st.failing.is_none() || st.crashed {
                return;
            }
            st.recover(kept);
            st.failing = None;
        }
        self.notify();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self) {
        let watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        let health = self.health();
        for w in watchers.iter() {
            w(health);
        }
    }

    /// Runs one operation under the fault hook. `f` gets the state and
    /// writes through it; `flushes` says whether the operation ends with a
    /// flush.
    fn run<T>(&self, op: Op, flushes: bool, f: impl FnOnce(&mut State) -> Result<T, Error>) -> Result<T, Error> {
        let fault = {
            let st = self.lock();
            if st.crashed {
                return Err(crashed());
            }
            if let Some(cause) = &st.failing {
                return Err(Error::Io(format!("storage is failing and healing itself (after: {cause})")));
            }
            drop(st);
            self.faults.lock().unwrap_or_else(PoisonError::into_inner).as_mut().map_or(Fault::None, |h| h(op))
        };
        let mut st = self.lock();
        let failed = match fault {
            Fault::None => {
                let r = f(&mut st);
                st.end_batch();
                if flushes {
                    st.flush();
                }
                return r;
            }
            Fault::Crash => {
                st.crashed = true;
                return Err(crashed());
            }
            Fault::CrashAfter => {
                let _ = f(&mut st);
                st.end_batch();
                if flushes {
                    st.flush();
                }
                st.crashed = true;
                return Err(crashed());
            }
            Fault::Fail => "injected I/O error",
            Fault::FailFlush => {
                if op != Op::Read {
                    let _ = f(&mut st);
                    st.end_batch();
                }
                "injected I/O error in a flush"
            }
        };
        st.failing = Some(failed.to_string());
        drop(st);
        self.notify();
        Err(Error::Io(failed.to_string()))
    }
}

impl Store for MemStore {
    fn health(&self) -> Health {
        if self.lock().failing.is_some() {
            Health::Failing
        } else {
            Health::Serving
        }
    }

    fn on_health(&self, f: HealthWatcher) {
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        f(self.health());
        watchers.push(f);
    }

    fn commit(&self, turns: &[Commit<'_>]) -> Result<(), Error> {
        self.run(Op::Commit, true, |st| {
            // A batch per turn: sled's are runs of whole turns, and a crash
            // keeps a prefix of them.
            for turn in turns {
                let turn = std::slice::from_ref(turn);
                let mut filing = Vec::new();
                index::index_writes(
                    turn,
                    |id| st.get::<index::Filed>(&key(&["m", id.as_str()])),
                    |k| index::decode_count(k, st.live.get(k).map(Vec::as_slice)),
                    |k, v| filing.push((k, v)),
                )?;
                each_write(turn, |k, v| st.write(k, v));
                filing.into_iter().for_each(|(k, v)| st.write(k, v));
                st.end_batch();
            }
            Ok(())
        })
    }

    fn load(&self, id: &WorkflowId) -> Result<Option<Snapshot>, Error> {
        self.run(Op::Read, false, |st| {
            let wf = id.as_str();
            let Some(meta) = st.get::<Meta>(&key(&["m", wf]))? else { return Ok(None) };
            let facts = st.scan(&key(&["f", wf, ""]))?;
            let waiting: Vec<Waiting> = st.scan(&key(&["w", wf, ""]))?;
            let timers = st.scan::<Vec<Timer>>(&key(&["c", wf, ""]))?.into_iter().flatten().collect();
            Ok(Some(Snapshot { meta, facts, waiting, timers }))
        })
    }

    fn workflows(&self, prefix: &str, after: Option<&WorkflowId>, limit: usize) -> Result<Vec<Meta>, Error> {
        self.run(Op::Read, false, |st| {
            let within = key(&["m", prefix]);
            let start = match after {
                Some(a) => Bound::Excluded(key(&["m", a.as_str()])),
                None => Bound::Included(within.clone()),
            };
            st.live
                .range((start, Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(&within))
                .take(limit)
                .map(|(k, v)| decode(k, v))
                .collect()
        })
    }

    fn list(&self, q: &ListQuery<'_>) -> Result<Vec<Meta>, Error> {
        self.run(Op::Read, false, |st| {
            let (low, high) = index::page_range(q);
            let mut out = Vec::new();
            for (k, _) in st.live.range(low..high).rev() {
                if out.len() >= q.limit {
                    break;
                }
                let id = index::id_of(k).ok_or_else(|| Error::Corrupt {
                    key: String::from_utf8_lossy(k).into_owned(),
                    reason: "not a list index key".into(),
                })?;
                if let Some(m) = st.get::<Meta>(&key(&["m", id.as_str()]))? {
                    out.push(m);
                }
            }
            Ok(out)
        })
    }

    fn list_counts(&self, tenant: &str, family: Family<'_>) -> Result<ListCounts, Error> {
        self.run(Op::Read, false, |st| {
            let values = index::count_keys(tenant, family)
                .iter()
                .map(|k| index::decode_count(k, st.live.get(k).map(Vec::as_slice)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(index::counts_from(&values))
        })
    }

    fn put_pack(&self, pack: &PackRecord) -> Result<(), Error> {
        self.run(Op::Write, true, |st| {
            st.write(key(&["p", &pack.tenant, &pack.name, &format!("{:016x}", pack.seq)]), Some(encode(pack)));
            Ok(())
        })
    }

    fn packs(&self, tenant: &str) -> Result<Vec<PackRecord>, Error> {
        self.run(Op::Read, false, |st| st.scan(&key(&["p", tenant, ""])))
    }

    fn pack(&self, tenant: &str, name: &str, seq: u64) -> Result<Option<PackRecord>, Error> {
        self.run(Op::Read, false, |st| st.get(&key(&["p", tenant, name, &format!("{seq:016x}")])))
    }

    fn timeline(&self, id: &WorkflowId, from: u64, limit: usize) -> Result<Vec<Entry>, Error> {
        self.run(Op::Read, false, |st| {
            let prefix = key(&["t", id.as_str(), ""]);
            let at = key(&["t", id.as_str(), &format!("{from:016x}")]);
            // The run holding `from` starts at or before it.
            let start = st.live.range(prefix.clone()..=at.clone()).next_back().map_or(at, |(k, _)| k.clone());
            let mut out = Vec::new();
            for (k, v) in st.live.range(start..) {
                if !k.starts_with(&prefix) || out.len() >= limit {
                    break;
                }
                let run = decode_run(k, v)?;
                out.extend(run.filter(|e| e.seq >= from).take(limit - out.len()));
            }
            Ok(out)
        })
    }

    fn outbox(&self, parts: &Parts) -> Result<Vec<Invocation>, Error> {
        self.run(Op::Read, false, |st| {
            Ok(st
                .scan::<Waiting>(b"w/")?
                .into_iter()
                .map(|w| w.invocation)
                .filter(|i| parts.has(&i.workflow))
                .collect())
        })
    }

    fn record_attempts(&self, attempts: &[(InvocationId, Attempts)]) -> Result<(), Error> {
        self.run(Op::Write, false, |st| {
            for (id, a) in attempts {
                st.write(key(&["a", id.as_str()]), Some(encode(a)));
            }
            Ok(())
        })
    }

    fn attempts(&self, parts: &Parts) -> Result<Vec<(InvocationId, Attempts)>, Error> {
        self.run(Op::Read, false, |st| {
            st.live
                .range(b"a/".to_vec()..)
                .take_while(|(k, _)| k.starts_with(b"a/"))
                .map(|(k, v)| (InvocationId::new(String::from_utf8_lossy(&k[2..]).into_owned()), k, v))
                .filter(|(id, _, _)| parts.has_invocation(id))
                .map(|(id, k, v)| Ok((id, decode(k, v)?)))
                .collect()
        })
    }

    fn request(&self, request_id: &str) -> Result<Option<WorkflowId>, Error> {
        self.run(Op::Read, false, |st| st.get(&key(&["r", request_id])))
    }

    fn requests(&self, prefix: &str, limit: usize) -> Result<Vec<(String, WorkflowId)>, Error> {
        self.run(Op::Read, false, |st| {
            let within = key(&["r", prefix]);
            st.live
                .range(within.clone()..)
                .take_while(|(k, _)| k.starts_with(&within))
                .take(limit)
                .map(|(k, v)| Ok((String::from_utf8_lossy(&k[2..]).into_owned(), decode(k, v)?)))
                .collect()
        })
    }

    fn pending(&self, id: &InvocationId) -> Result<bool, Error> {
        self.run(Op::Read, false, |st| {
            let Some(wf) = id.workflow() else { return Ok(false) };
            Ok(st.live.contains_key(&key(&["w", wf.as_str(), id.as_str()])))
        })
    }

    fn timers(&self, parts: &Parts) -> Result<Vec<Timer>, Error> {
        self.run(Op::Read, false, |st| {
            Ok(st.scan::<Vec<Timer>>(b"c/")?.into_iter().flatten().filter(|t| parts.has(&t.workflow)).collect())
        })
    }

    fn finished_before(&self, before_ms: u64, limit: usize) -> Result<Vec<WorkflowId>, Error> {
        self.run(Op::Read, false, |st| {
            Ok(st.live.range(b"e/".to_vec()..).map_while(|(k, _)| finished_id(k, before_ms)).take(limit).collect())
        })
    }

    fn delete_finished(&self, ids: &[WorkflowId]) -> Result<usize, Error> {
        self.run(Op::Write, false, |st| {
            let mut deleted = 0;
            let mut counts = Counts::default();
            for id in ids {
                let Some(meta) = st.get::<Meta>(&key(&["m", id.as_str()]))? else { continue };
                if !meta.status.is_finished() {
                    continue;
                }
                let mut keys = vec![finished_key(&meta), key(&["m", id.as_str()])];
                if let Some(r) = &meta.request {
                    let rk = key(&["r", r]);
                    if st.get::<WorkflowId>(&rk)?.as_ref() == Some(id) {
                        keys.push(rk);
                    }
                }
                for p in workflow_prefixes(id) {
                    keys.extend(st.live.range(p.clone()..).map_while(|(k, _)| k.starts_with(&p).then(|| k.clone())));
                }
                keys.into_iter().for_each(|k| st.write(k, None));
                index::refile(&index::placement(&meta), &[], &mut counts, |k, _| st.write(k, None));
                deleted += 1;
            }
            let mut writes = Vec::new();
            counts.write(|k| index::decode_count(k, st.live.get(k).map(Vec::as_slice)), |k, v| writes.push((k, v)))?;
            writes.into_iter().for_each(|(k, v)| st.write(k, v));
            Ok(deleted)
        })
    }

    fn put_aux(&self, kind: &str, k: &str, value: &serde_json::Value) -> Result<(), Error> {
        self.run(Op::Write, true, |st| {
            st.write(key(&["x", kind, k]), Some(encode(value)));
            Ok(())
        })
    }

    fn get_aux(&self, kind: &str, k: &str) -> Result<Option<serde_json::Value>, Error> {
        self.run(Op::Read, false, |st| st.get(&key(&["x", kind, k])))
    }

    fn scan_aux(&self, kind: &str, prefix: &str) -> Result<Vec<(String, serde_json::Value)>, Error> {
        self.run(Op::Read, false, |st| {
            let skip = key(&["x", kind, ""]).len();
            let p = key(&["x", kind, prefix]);
            st.live
                .range(p.clone()..)
                .take_while(|(k, _)| k.starts_with(&p))
                .map(|(k, v)| Ok((String::from_utf8_lossy(&k[skip..]).into_owned(), decode(k, v)?)))
                .collect()
        })
    }

    fn delete_aux(&self, kind: &str, k: &str) -> Result<(), Error> {
        self.run(Op::Write, true, |st| {
            st.write(key(&["x", kind, k]), None);
            Ok(())
        })
    }

    fn put_aux_batch(&self, records: &[(&str, &str, Option<&serde_json::Value>)]) -> Result<(), Error> {
        self.run(Op::Write, true, |st| {
            for (kind, k, value) in records {
                st.write(key(&["x", kind, k]), value.map(encode));
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pack;
    use crate::workflow::{Input, Outcome, Workflow};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use stoa_rules::testcase::FactSpec;
    use stoa_rules::Value;

    const RULES: &str = r#"
rule "encode" {
    match { c: Chunk(status == "pending") }
    action { modify(c, #{ status: "encoding" }); call("media.encode", #{ i: c.i }); }
    reaction { modify(c, #{ status: "done" }); }
}
"#;

    fn started(id: &str) -> (Workflow, crate::workflow::TurnOutput) {
        let facts: Vec<FactSpec> =
            serde_json::from_value(serde_json::json!([{"type": "Chunk", "fields": {"i": 1, "status": "pending"}}]))
                .unwrap();
        let mut wf = Workflow::new(WorkflowId::new(id), pack(RULES, ""), 1);
        let out = wf.apply(Input::Start { facts }, 1).unwrap();
        (wf, out)
    }

    /// What a commit made durable survives a crash; attempt records not
    /// flushed since do not; a failed flush survives a heal or not, as told.
    #[test]
    fn a_crash_keeps_what_was_flushed_and_nothing_else() {
        let store = MemStore::default();
        let (mut wf, out) = started("a.one");
        store.commit(&[Commit { workflow: wf.id(), output: &out, request_id: Some("a/r1"), epoch: None }]).unwrap();
        let inv = out.invocations[0].id.clone();
        store.record_attempts(&[(inv.clone(), Attempts { made: 1, failures: 1, retry_at_ms: 9 })]).unwrap();
        assert_eq!(store.attempts(&Parts::All).unwrap().len(), 1, "seen before the flush");
        let reopened = MemStore::open(store.crash(0));
        assert!(store.load(wf.id()).is_err(), "a crashed store serves nothing");
        assert_eq!(reopened.request("a/r1").unwrap(), Some(wf.id().clone()));
        assert_eq!(reopened.outbox(&Parts::All).unwrap().len(), 1);
        assert_eq!(reopened.attempts(&Parts::All).unwrap(), vec![], "never flushed");

        // The result's commit fails in its flush: refused until healed, and
        // then there or not.
        let seen = Arc::new(AtomicUsize::new(0));
        reopened.on_health(Box::new({
            let seen = seen.clone();
            move |_| {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        }));
        let result = wf.apply(
            Input::Result { invocation: inv, outcome: Outcome::Ok { value: Value::Null, attempts: 1, failed: vec![] } },
            2,
        );
        let result = result.unwrap();
        for recovered in [false, true] {
            let store = MemStore::open(reopened.image());
            let mut faults = vec![Fault::FailFlush];
            store.set_faults(Some(Box::new(move |_| faults.pop().unwrap_or(Fault::None))));
            assert!(store
                .commit(&[Commit { workflow: wf.id(), output: &result, request_id: None, epoch: None }])
                .is_err());
            assert_eq!(store.health(), Health::Failing);
            assert!(store.load(wf.id()).is_err(), "refused while failing");
            store.heal(if recovered { usize::MAX } else { 0 });
            assert_eq!(store.health(), Health::Serving);
            let turn = store.load(wf.id()).unwrap().unwrap().meta.turn;
            assert_eq!((recovered, turn), (recovered, if recovered { 2 } else { 1 }));
            assert_eq!(MemStore::open(store.crash(0)).load(wf.id()).unwrap().unwrap().meta.turn, turn);
        }
        assert_eq!(seen.load(Ordering::SeqCst), 1, "the reopened store was told its health once");
    }

    /// Retention's two calls, on both stores: finished workflows in the
    /// order they finished, then deleted whole, request record included;
    /// a running one is left alone.
    #[test]
    fn finished_workflows_are_found_in_the_order_they_finished_and_deleted_whole() {
        let dir = tempfile::tempdir().unwrap();
        let sled = super::super::SledStore::open(dir.path(), 8).unwrap();
        let mem = MemStore::default();
        let start = |id: &str, request: Option<&str>| {
            let facts: Vec<FactSpec> =
                serde_json::from_value(serde_json::json!([{"type": "Chunk", "fields": {"i": 1, "status": "pending"}}]))
                    .unwrap();
            let mut wf = Workflow::new(WorkflowId::new(id), pack(RULES, ""), 1);
            if let Some(r) = request {
                wf = wf.with_request(r.into());
            }
            let out = wf.apply(Input::Start { facts }, 1).unwrap();
            (wf, out)
        };
        let ids = |v: &[&str]| v.iter().map(|s| WorkflowId::new(*s)).collect::<Vec<_>>();
        for s in [&sled as &dyn Store, &mem] {
            for (id, request, ends_at) in
                [("a.one", Some("a/r1"), Some(5)), ("a.two", Some("a/r2"), None), ("a.three", None, Some(3))]
            {
                let (mut wf, out) = start(id, request);
                s.commit(&[Commit { workflow: wf.id(), output: &out, request_id: request, epoch: None }]).unwrap();
                if let Some(at) = ends_at {
                    let out = wf.abort("stopped", at).unwrap();
                    s.commit(&[Commit { workflow: wf.id(), output: &out, request_id: None, epoch: None }]).unwrap();
                }
            }
            assert_eq!(s.finished_before(3, 10).unwrap(), ids(&[]));
            assert_eq!(s.finished_before(4, 10).unwrap(), ids(&["a.three"]));
            assert_eq!(s.finished_before(6, 10).unwrap(), ids(&["a.three", "a.one"]));
            assert_eq!(s.finished_before(6, 1).unwrap(), ids(&["a.three"]));
            assert_eq!(s.delete_finished(&ids(&["a.one", "a.two", "a.three", "a.gone"])).unwrap(), 2);
            assert_eq!(s.finished_before(u64::MAX, 10).unwrap(), ids(&[]));
            for gone in ids(&["a.one", "a.three"]) {
                assert!(s.load(&gone).unwrap().is_none());
                assert!(s.timeline(&gone, 1, 100).unwrap().is_empty());
            }
            assert_eq!(s.request("a/r1").unwrap(), None);
            assert_eq!(s.request("a/r2").unwrap(), Some(WorkflowId::new("a.two")));
            assert!(s.load(&WorkflowId::new("a.two")).unwrap().is_some());
        }
        // Nothing of the deleted ones is left in any record.
        let left: Vec<String> = mem.lock().live.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
        // (The list index's counts are the tenant's, which `a.two` keeps.)
        assert!(left.iter().all(|k| k.contains("a.two") || k == "r/a/r2" || k.starts_with("n/a/")), "{left:?}");
        // A delete is not flushed by itself: a crash before the next flush
        // takes it back, whole, and the next sweep finds the workflow again.
        let reopened = MemStore::open(mem.crash(0));
        assert_eq!(reopened.finished_before(6, 10).unwrap(), ids(&["a.three", "a.one"]));
        assert!(reopened.load(&WorkflowId::new("a.one")).unwrap().is_some());
        assert_eq!(reopened.request("a/r1").unwrap(), Some(WorkflowId::new("a.one")));
    }

    /// The same records as `SledStore`: what one reads, the other reads.
    #[test]
    fn reads_what_the_sled_store_reads() {
        let dir = tempfile::tempdir().unwrap();
        let sled = super::super::SledStore::open(dir.path(), 8).unwrap();
        let mem = MemStore::default();
        let (_, a) = started("a.one");
        let (_, b) = started("a.two");
        let wa = WorkflowId::new("a.one");
        let wb = WorkflowId::new("a.two");
        for s in [&sled as &dyn Store, &mem] {
            s.commit(&[
                Commit { workflow: &wa, output: &a, request_id: Some("a/r1"), epoch: None },
                Commit { workflow: &wb, output: &b, request_id: None, epoch: None },
            ])
            .unwrap();
            s.put_aux("k", "x/1", &serde_json::json!(1)).unwrap();
            s.put_aux_batch(&[("k", "x/2", Some(&serde_json::json!(2))), ("k", "x/1", None)]).unwrap();
        }
        let both = |f: &dyn Fn(&dyn Store) -> String| assert_eq!(f(&sled), f(&mem));
        both(&|s| format!("{:?}", s.load(&wb).unwrap()));
        both(&|s| format!("{:?}", s.workflows("a.", None, 10).unwrap()));
        both(&|s| format!("{:?}", s.workflows("a.", Some(&wa), 10).unwrap()));
        both(&|s| format!("{:?}", s.timeline(&wa, 2, 2).unwrap()));
        both(&|s| format!("{:?}", s.outbox(&Parts::All).unwrap()));
        both(&|s| format!("{:?}", s.request("a/r1").unwrap()));
        both(&|s| format!("{:?}", s.scan_aux("k", "x/").unwrap()));
    }
}

#[cfg(test)]
mod conformance {
    use std::sync::Arc;

    use super::MemStore;
    use crate::store::conformance::Backend;
    use crate::store::Store;

    /// Reopening keeps what is durable, as a restart does.
    #[derive(Default)]
    struct Mem {
        last: Option<Arc<MemStore>>,
    }

    impl Backend for Mem {
        fn fresh(&mut self) -> Arc<dyn Store> {
            let s = Arc::new(MemStore::default());
            self.last = Some(s.clone());
            s
        }

        fn reopen(&mut self, store: Arc<dyn Store>) -> Arc<dyn Store> {
            drop(store);
            let image = self.last.take().expect("a store").image();
            self.fresh_from(image)
        }
    }

    impl Mem {
        fn fresh_from(&mut self, image: super::Image) -> Arc<dyn Store> {
            let s = Arc::new(MemStore::open(image));
            self.last = Some(s.clone());
            s
        }
    }

    crate::store_conformance!(Mem::default());
}
