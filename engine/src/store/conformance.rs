//! The contract of `Store`, as checks every store passes: `MemStore` and
//! `SledStore` here, `PgStore` in its own crate. Each check makes real
//! turns of real workflows, commits them, and compares what the store
//! gives back (also after reopening it) with the workflow in memory.
//!
//! A store's tests run them all with `store_conformance!(backend)`, one
//! test per check, so a failure names the broken rule.

use std::sync::Arc;

use stoa_rules::testcase::FactSpec;
use stoa_rules::Value;

use super::{Attempts, Commit, Family, ListQuery, ListStatus, PackRecord, Parts, Store, SIGNAL_OUTBOX};
use crate::fact::WorkflowId;
use crate::testing::{pack, pack_version};
use crate::workflow::{Input, Outcome, Status, Timer, TurnOutput, Workflow};

/// Where the checks get stores from.
pub trait Backend {
    /// A new, empty store.
    fn fresh(&mut self) -> Arc<dyn Store>;
    /// The store `store` was opened on, opened anew: `store` is its last
    /// handle, dropped first.
    fn reopen(&mut self, store: Arc<dyn Store>) -> Arc<dyn Store>;
}

/// One `#[test]` per check of this module, each on `$backend` (an expression
/// making a `Backend`).
#[macro_export]
macro_rules! store_conformance {
    ($backend:expr) => {
        $crate::store_conformance!(@tests $backend;
            a_turn_reads_back_exactly
            turns_of_one_commit_apply_in_order
            an_empty_commit_writes_nothing
            listings_are_in_byte_order_by_prefix_and_page
            timelines_read_from_any_position
            a_large_turn_commits_whole
            attempts_live_while_their_invocation_waits
            timers_are_kept_by_instant
            finished_workflows_are_deleted_whole
            server_records_by_kind_and_prefix
            packs_by_tenant_in_deploy_order
            emitted_signals_wait_in_the_signal_outbox
            an_owner_reads_its_partitions_only
            the_list_index_follows_every_turn
        );
    };
    (@tests $backend:expr; $($name:ident)*) => {
        $(
            #[test]
            fn $name() {
                let mut backend = $backend;
                $crate::store::conformance::$name(&mut backend);
            }
        )*
    };
}

/// A pack with a step per chunk, a signal and timers: what every check
/// (and the stores' own tests) commit turns of.
pub const RULES: &str = r#"
rule "encode" {
    match { c: Chunk(status == "pending") }
    action { modify(c, #{ status: "encoding" }); call("media.encode", #{ i: c.i }); }
    reaction { modify(c, #{ status: "done" }); insert("Output", #{ i: c.i }); }
}
rule "all done" {
    match { not Chunk(status != "done") n: count(Output()) test(n > 0) }
    action { complete(#{ outputs: n }); }
}
rule "announce" {
    match { a: Announce() }
    action { emit("news", #{ what: a.what }); retract(a); }
}
rule "arm" {
    match { j: Job() }
    action { at(100, "A", #{}); at(100, "B", #{}); at(200, "C", #{}); }
}
"#;

fn fact(ty: &str, fields: serde_json::Value) -> FactSpec {
    serde_json::from_value(serde_json::json!({"type": ty, "fields": fields})).expect("fact")
}

pub fn chunks(n: i64) -> Vec<FactSpec> {
    (0..n).map(|i| fact("Chunk", serde_json::json!({"i": i, "status": "pending"}))).collect()
}

pub(crate) fn ok() -> Outcome {
    Outcome::Ok { value: Value::Null, attempts: 1, failed: vec![] }
}

/// `RULES` as a pack (version 1), for other stores' own tests.
pub fn rules_pack() -> Arc<stoa_rules::compile::Pack> {
    pack(RULES, "")
}

fn workflow(id: &str) -> Workflow {
    Workflow::new(WorkflowId::new(id), pack(RULES, ""), 0)
}

fn commit(store: &dyn Store, wf: &Workflow, out: &TurnOutput, request_id: Option<&str>) {
    store.commit(&[Commit { workflow: wf.id(), output: out, request_id, epoch: None }]).expect("commit");
}

/// What the store holds of `wf` equals the workflow in memory.
fn assert_stored(store: &dyn Store, wf: &Workflow) {
    let snap = store.load(wf.id()).expect("load").expect("stored");
    let live = wf.snapshot();
    assert_eq!(snap.meta, live.meta);
    assert_eq!(snap.facts, live.facts);
    assert_eq!(snap.waiting, live.waiting);
    let ids = |ts: &[Timer]| {
        let mut v: Vec<(u64, u64)> = ts.iter().map(|t| (t.id, t.due_ms)).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&snap.timers), ids(&live.timers));
}

fn timers_sorted(store: &dyn Store) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = store.timers(&Parts::All).expect("timers").iter().map(|t| (t.id, t.due_ms)).collect();
    v.sort();
    v
}

pub fn a_turn_reads_back_exactly(b: &mut dyn Backend) {
    let store = b.fresh();
    let mut wf = workflow("wf_t.one");
    let out = wf.apply(Input::Start { facts: chunks(5) }, 1).unwrap();
    commit(&*store, &wf, &out, Some("t/req-1"));
    let first = out.invocations[0].id.clone();
    let out2 = wf.apply(Input::Result { invocation: first.clone(), outcome: ok() }, 2).unwrap();
    commit(&*store, &wf, &out2, None);
    // The same answer again is refused: exactly-once application.
    assert!(matches!(
        wf.apply(Input::Result { invocation: first.clone(), outcome: ok() }, 3),
        Err(crate::workflow::Rejected::UnknownInvocation(_))
    ));
    assert_stored(&*store, &wf);
    assert_eq!(store.request("t/req-1").unwrap(), Some(wf.id().clone()));
    assert_eq!(store.request("t/req-2").unwrap(), None);
    assert!(!store.pending(&first).unwrap());
    let mut outbox: Vec<String> =
        store.outbox(&Parts::All).unwrap().into_iter().map(|i| i.id.as_str().to_string()).collect();
    let mut waiting: Vec<String> = wf.waiting().map(|w| w.invocation.id.as_str().to_string()).collect();
    outbox.sort();
    waiting.sort();
    assert_eq!(outbox, waiting);
    assert!(store.pending(&wf.waiting().next().unwrap().invocation.id).unwrap());
    let timeline: Vec<_> = out.entries.iter().chain(&out2.entries).cloned().collect();
    assert_eq!(store.timeline(wf.id(), 1, 10_000).unwrap(), timeline);
    assert!(store.load(&WorkflowId::new("wf_t.none")).unwrap().is_none());

    let store = b.reopen(store);
    assert_stored(&*store, &wf);
    assert_eq!(store.timeline(wf.id(), 1, 10_000).unwrap(), timeline);
    assert_eq!(store.outbox(&Parts::All).unwrap().len(), 4);
    // The restored workflow goes on exactly as the live one.
    let mut restored = Workflow::restore(pack(RULES, ""), store.load(wf.id()).unwrap().unwrap()).unwrap();
    let pending: Vec<_> = wf.waiting().map(|w| w.invocation.id.clone()).collect();
    for (k, inv) in pending.into_iter().enumerate() {
        let a = wf.apply(Input::Result { invocation: inv.clone(), outcome: ok() }, 10 + k as u64).unwrap();
        let r = restored.apply(Input::Result { invocation: inv, outcome: ok() }, 10 + k as u64).unwrap();
        assert_eq!(a.entries, r.entries);
        commit(&*store, &restored, &r, None);
    }
    assert_eq!(restored.status(), Status::Completed);
    assert_eq!(restored.meta().result.to_string(), r#"{"outputs":5}"#);
    assert_stored(&*store, &wf);
    assert!(store.outbox(&Parts::All).unwrap().is_empty());
}

/// Turns of one workflow in one commit land in order: a later turn's
/// change of a record wins over an earlier one's.
pub fn turns_of_one_commit_apply_in_order(b: &mut dyn Backend) {
    let store = b.fresh();
    let mut wf = workflow("wf_t.order");
    let mut other = workflow("wf_t.other");
    let start = wf.apply(Input::Start { facts: chunks(2) }, 1).unwrap();
    let other_start = other.apply(Input::Start { facts: chunks(1) }, 1).unwrap();
    let invs: Vec<_> = start.invocations.iter().map(|i| i.id.clone()).collect();
    let mut outs = vec![start];
    for (k, inv) in invs.iter().enumerate() {
        outs.push(wf.apply(Input::Result { invocation: inv.clone(), outcome: ok() }, 2 + k as u64).unwrap());
    }
    let mut turns: Vec<Commit<'_>> =
        outs.iter().map(|o| Commit { workflow: wf.id(), output: o, request_id: None, epoch: None }).collect();
    turns.insert(1, Commit { workflow: other.id(), output: &other_start, request_id: Some("t/other"), epoch: None });
    store.commit(&turns).unwrap();
    assert_eq!(wf.status(), Status::Completed);
    assert_stored(&*store, &wf);
    assert_stored(&*store, &other);
    for inv in &invs {
        assert!(!store.pending(inv).unwrap(), "{inv} answered in the same commit");
    }
    let all: Vec<_> = outs.iter().flat_map(|o| o.entries.clone()).collect();
    assert_eq!(store.timeline(wf.id(), 1, usize::MAX).unwrap(), all);
    let store = b.reopen(store);
    assert_stored(&*store, &wf);
    assert_eq!(store.outbox(&Parts::All).unwrap().len(), 1, "only the other workflow's invocation waits");
}

pub fn an_empty_commit_writes_nothing(b: &mut dyn Backend) {
    let store = b.fresh();
    store.commit(&[]).unwrap();
    let out = TurnOutput::default();
    let id = WorkflowId::new("wf_t.empty");
    store.commit(&[Commit { workflow: &id, output: &out, request_id: None, epoch: None }]).unwrap();
    store.record_attempts(&[]).unwrap();
    assert!(store.load(&id).unwrap().is_none());
    assert!(store.workflows("", None, 10).unwrap().is_empty());
    assert!(store.outbox(&Parts::All).unwrap().is_empty());
    assert!(store.timers(&Parts::All).unwrap().is_empty());
    assert!(store.packs("t").unwrap().is_empty());
}

/// Ids compare as bytes (`B` before `a`), whatever the store's own
/// collation; a prefix selects exactly its ids; `after` pages.
pub fn listings_are_in_byte_order_by_prefix_and_page(b: &mut dyn Backend) {
    let store = b.fresh();
    let ids =
        ["wf_a.a", "wf_a.B", "wf_a.10", "wf_a.9", "wf_a.a-b", "wf_a.ab", "wf_ab.x", "wf_a-.x", "wf_b.a", "wf_a.é"];
    let wfs: Vec<Workflow> = ids
        .iter()
        .map(|id| {
            let mut wf = workflow(id);
            let out = wf.apply(Input::Start { facts: vec![] }, 1).unwrap();
            commit(&*store, &wf, &out, None);
            wf
        })
        .collect();
    let mut expected: Vec<&str> = ids.iter().copied().filter(|i| i.starts_with("wf_a.")).collect();
    expected.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
    let listed = |after: Option<&str>, limit| -> Vec<String> {
        let after = after.map(WorkflowId::new);
        store
            .workflows("wf_a.", after.as_ref(), limit)
            .unwrap()
            .into_iter()
            .map(|m| m.id.as_str().to_string())
            .collect()
    };
    assert_eq!(listed(None, 100), expected);
    assert_eq!(listed(None, 3), expected[..3]);
    assert_eq!(listed(Some(expected[2]), 3), expected[3..6]);
    assert_eq!(listed(Some(expected[expected.len() - 1]), 3), Vec::<String>::new());
    // `after` need not exist.
    assert_eq!(listed(Some("wf_a.A"), 1), expected[2..3]);
    let metas = store.workflows("wf_", None, 100).unwrap();
    assert_eq!(metas.len(), ids.len());
    let meta_of = |id: &str| metas.iter().find(|m| m.id.as_str() == id).unwrap().clone();
    for wf in &wfs {
        assert_eq!(meta_of(wf.id().as_str()), *wf.meta());
    }
    assert!(store.workflows("wf_c.", None, 100).unwrap().is_empty());
}

pub fn timelines_read_from_any_position(b: &mut dyn Backend) {
    let store = b.fresh();
    let mut wf = workflow("wf_t.tl");
    let mut all = Vec::new();
    let out = wf.apply(Input::Start { facts: chunks(300) }, 1).unwrap();
    commit(&*store, &wf, &out, None);
    all.extend(out.entries.clone());
    let invs: Vec<_> = out.invocations.iter().map(|i| i.id.clone()).take(40).collect();
    for (k, inv) in invs.into_iter().enumerate() {
        let out = wf.apply(Input::Result { invocation: inv, outcome: ok() }, 2 + k as u64).unwrap();
        commit(&*store, &wf, &out, None);
        all.extend(out.entries);
    }
    let n = all.len() as u64;
    assert_eq!(n, wf.meta().timeline_seq);
    let read = |from: u64, limit: usize| store.timeline(wf.id(), from, limit).unwrap();
    assert_eq!(read(1, usize::MAX), all);
    assert_eq!(read(0, usize::MAX), all);
    for from in [2, 255, 256, 257, 300, 301, n - 1, n] {
        for limit in [1, 7, 300, 100_000] {
            let want: Vec<_> = all.iter().filter(|e| e.seq >= from).take(limit).cloned().collect();
            assert_eq!(read(from, limit), want, "from {from}, limit {limit}");
        }
    }
    assert!(read(n + 1, 10).is_empty());
    assert!(read(1, 0).is_empty());
    assert!(store.timeline(&WorkflowId::new("wf_t.none"), 1, 10).unwrap().is_empty());
}

/// A turn of thousands of records (past any batch bound) commits whole.
pub fn a_large_turn_commits_whole(b: &mut dyn Backend) {
    let store = b.fresh();
    let mut wf = workflow("wf_t.big");
    let out = wf.apply(Input::Start { facts: chunks(1500) }, 1).unwrap();
    commit(&*store, &wf, &out, Some("t/big"));
    let store = b.reopen(store);
    assert_stored(&*store, &wf);
    assert_eq!(store.outbox(&Parts::All).unwrap().len(), 1500);
    assert_eq!(store.request("t/big").unwrap(), Some(wf.id().clone()));
    assert_eq!(store.timeline(wf.id(), 1, usize::MAX).unwrap(), out.entries);
}

pub fn attempts_live_while_their_invocation_waits(b: &mut dyn Backend) {
    let store = b.fresh();
    let mut wf = workflow("wf_t.att");
    let out = wf.apply(Input::Start { facts: chunks(2) }, 1).unwrap();
    commit(&*store, &wf, &out, None);
    let (a, c) = (out.invocations[0].id.clone(), out.invocations[1].id.clone());
    let tried = Attempts { made: 2, failures: 1, retry_at_ms: 77 };
    store.record_attempts(&[(a.clone(), tried), (c.clone(), tried)]).unwrap();
    let again = Attempts { made: 3, failures: 2, retry_at_ms: 99 };
    store.record_attempts(&[(c.clone(), again)]).unwrap();
    let sorted = |mut v: Vec<(crate::InvocationId, Attempts)>| {
        v.sort_by(|x, y| x.0.as_str().cmp(y.0.as_str()));
        v
    };
    assert_eq!(sorted(store.attempts(&Parts::All).unwrap()), sorted(vec![(a.clone(), tried), (c.clone(), again)]));
    // Durable with the next commit.
    commit(&*store, &wf, &TurnOutput::default(), None);
    let store = b.reopen(store);
    assert_eq!(sorted(store.attempts(&Parts::All).unwrap()), sorted(vec![(a.clone(), tried), (c.clone(), again)]));
    let out = wf.apply(Input::Result { invocation: a, outcome: ok() }, 2).unwrap();
    commit(&*store, &wf, &out, None);
    assert_eq!(store.attempts(&Parts::All).unwrap(), vec![(c, again)]);
}

/// Timers come back exactly, with those of one instant fired and deleted
/// together by one turn.
pub fn timers_are_kept_by_instant(b: &mut dyn Backend) {
    let store = b.fresh();
    let mut wf = workflow("wf_t.timers");
    let out = wf.apply(Input::Start { facts: vec![fact("Job", serde_json::json!({}))] }, 1).unwrap();
    commit(&*store, &wf, &out, None);
    assert_eq!(timers_sorted(&*store), vec![(1, 100), (2, 100), (3, 200)]);
    let t = store.timers(&Parts::All).unwrap().into_iter().find(|t| t.id == 3).unwrap();
    assert_eq!((t.workflow.as_str(), &*t.ty.to_string(), t.rule.as_str()), ("wf_t.timers", "C", "arm"));
    let out = wf.apply(Input::Timers { ids: vec![1, 2] }, 100).unwrap();
    commit(&*store, &wf, &out, None);
    assert_eq!(timers_sorted(&*store), vec![(3, 200)]);
    let store = b.reopen(store);
    assert_stored(&*store, &wf);
    let out = wf.apply(Input::Timers { ids: vec![3] }, 200).unwrap();
    commit(&*store, &wf, &out, None);
    assert!(store.timers(&Parts::All).unwrap().is_empty());
    assert_stored(&*store, &wf);
}

pub fn finished_workflows_are_deleted_whole(b: &mut dyn Backend) {
    let store = b.fresh();
    let finish = |id: &str, at: u64, request: &str| {
        let mut wf = workflow(id).with_request(request.into());
        let out = wf.apply(Input::Start { facts: chunks(1) }, at).unwrap();
        commit(&*store, &wf, &out, Some(request));
        let inv = out.invocations[0].id.clone();
        let out = wf.apply(Input::Result { invocation: inv, outcome: ok() }, at).unwrap();
        commit(&*store, &wf, &out, None);
        assert_eq!(wf.status(), Status::Completed);
        wf
    };
    let first = finish("wf_t.f1", 10, "t/r1");
    let second = finish("wf_t.f2", 20, "t/r2");
    let third = finish("wf_t.f3", 30, "t/r3");
    let mut running = workflow("wf_t.run").with_request("t/run".into());
    let out = running.apply(Input::Start { facts: chunks(1) }, 5).unwrap();
    commit(&*store, &running, &out, Some("t/run"));
    // A later workflow took over the first's request id: its record stays.
    let mut reuse = workflow("wf_t.reuse").with_request("t/r1".into());
    let out = reuse.apply(Input::Start { facts: vec![] }, 40).unwrap();
    commit(&*store, &reuse, &out, Some("t/r1"));

    let ids = |v: Vec<WorkflowId>| v.into_iter().map(|i| i.as_str().to_string()).collect::<Vec<_>>();
    assert_eq!(ids(store.finished_before(25, 10).unwrap()), ["wf_t.f1", "wf_t.f2"]);
    assert_eq!(ids(store.finished_before(1000, 1).unwrap()), ["wf_t.f1"]);
    assert!(store.finished_before(10, 10).unwrap().is_empty());
    let n = store
        .delete_finished(&[first.id().clone(), second.id().clone(), running.id().clone(), WorkflowId::new("wf_t.x")])
        .unwrap();
    assert_eq!(n, 2);
    // Deletes are durable with the next flush.
    store.commit(&[]).unwrap();
    let store = b.reopen(store);
    for gone in [&first, &second] {
        assert!(store.load(gone.id()).unwrap().is_none());
        assert!(store.timeline(gone.id(), 1, 100).unwrap().is_empty());
    }
    assert_eq!(store.request("t/r1").unwrap(), Some(reuse.id().clone()));
    assert_eq!(store.request("t/r2").unwrap(), None);
    assert_stored(&*store, &third);
    assert_stored(&*store, &running);
    assert_eq!(store.request("t/run").unwrap(), Some(running.id().clone()));
    let by_prefix = |p: &str, n| store.requests(p, n).unwrap().into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(by_prefix("t/r", 10), ["t/r1", "t/r3", "t/run"]);
    assert_eq!(by_prefix("t/r", 1), ["t/r1"]);
    assert!(by_prefix("u/", 10).is_empty());
    assert_eq!(ids(store.finished_before(1000, 10).unwrap()), ["wf_t.f3"]);
    assert_eq!(store.outbox(&Parts::All).unwrap().len(), 1);
}

pub fn server_records_by_kind_and_prefix(b: &mut dyn Backend) {
    let store = b.fresh();
    let v = |n: i64| serde_json::json!({"n": n, "s": "ü"});
    store.put_aux("sched", "t/b", &v(1)).unwrap();
    store.put_aux("sched", "t/B", &v(2)).unwrap();
    store.put_aux("sched", "t/a", &v(3)).unwrap();
    store.put_aux("sched", "u/a", &v(4)).unwrap();
    store.put_aux("sched-x", "t/a", &v(5)).unwrap();
    store.put_aux("sched", "t/a", &v(6)).unwrap();
    assert_eq!(store.get_aux("sched", "t/a").unwrap(), Some(v(6)));
    assert_eq!(store.get_aux("sched", "t/c").unwrap(), None);
    let keys = |kind: &str, prefix: &str| -> Vec<(String, serde_json::Value)> { store.scan_aux(kind, prefix).unwrap() };
    assert_eq!(keys("sched", "t/"), [("t/B".into(), v(2)), ("t/a".into(), v(6)), ("t/b".into(), v(1))]);
    assert_eq!(keys("sched", "").len(), 4);
    assert_eq!(keys("sched-x", ""), [("t/a".into(), v(5))]);
    assert_eq!(keys("sched", "t/a"), [("t/a".into(), v(6))]);
    // A `%` or `_` in a prefix is a character, not a pattern.
    store.put_aux("sched", "t%x", &v(7)).unwrap();
    store.put_aux("sched", "t_y", &v(8)).unwrap();
    assert_eq!(keys("sched", "t%"), [("t%x".into(), v(7))]);
    assert_eq!(keys("sched", "t_"), [("t_y".into(), v(8))]);
    store.delete_aux("sched", "t%x").unwrap();
    store.delete_aux("sched", "never").unwrap();
    store
        .put_aux_batch(&[("sched", "t/b", None), ("sched", "t/c", Some(&v(9))), ("other", "k", Some(&v(10)))])
        .unwrap();
    let store = b.reopen(store);
    assert_eq!(
        store.scan_aux("sched", "t/").unwrap(),
        [("t/B".into(), v(2)), ("t/a".into(), v(6)), ("t/c".into(), v(9))]
    );
    assert_eq!(store.get_aux("other", "k").unwrap(), Some(v(10)));
    assert_eq!(store.get_aux("sched", "t%x").unwrap(), None);
}

pub fn packs_by_tenant_in_deploy_order(b: &mut dyn Backend) {
    let store = b.fresh();
    let rec = |tenant: &str, name: &str, seq: u64| PackRecord {
        tenant: tenant.into(),
        name: name.into(),
        version: format!("{seq}.0"),
        seq,
        digest: seq * 7,
        deployed_ms: seq * 1000,
        files: [("pack.toml".to_string(), format!("# {name} {seq}"))].into(),
    };
    for (t, n, s) in [("t", "b", 1), ("t", "a", 2), ("t", "a", 1), ("t", "a", 10), ("u", "a", 1), ("t2", "a", 1)] {
        store.put_pack(&rec(t, n, s)).unwrap();
    }
    let store = b.reopen(store);
    let got: Vec<(String, u64)> = store.packs("t").unwrap().into_iter().map(|p| (p.name, p.seq)).collect();
    assert_eq!(got, [("a".into(), 1), ("a".into(), 2), ("a".into(), 10), ("b".into(), 1)]);
    assert_eq!(store.pack("t", "a", 10).unwrap(), Some(rec("t", "a", 10)));
    assert_eq!(store.pack("t", "a", 3).unwrap(), None);
    assert_eq!(store.packs("u").unwrap(), vec![rec("u", "a", 1)]);
    assert!(store.packs("v").unwrap().is_empty());
}

pub fn emitted_signals_wait_in_the_signal_outbox(b: &mut dyn Backend) {
    let store = b.fresh();
    let mut wf = workflow("wf_t.sig");
    let out = wf.apply(Input::Start { facts: vec![fact("Announce", serde_json::json!({"what": "hi"}))] }, 1).unwrap();
    assert_eq!(out.signals.len(), 1);
    commit(&*store, &wf, &out, None);
    let store = b.reopen(store);
    let waiting = store.scan_aux(SIGNAL_OUTBOX, "").unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].0, out.signals[0].id);
    assert_eq!(waiting[0].1["name"], "news");
    store.delete_aux(SIGNAL_OUTBOX, &out.signals[0].id).unwrap();
    assert!(store.scan_aux(SIGNAL_OUTBOX, "").unwrap().is_empty());
}

/// What a partition's owner acts on (invocations, timers, attempts) is
/// read by partition: a server of a cluster sees its own partitions' only.
/// The count is the cluster's (256, PostgreSQL's default).
pub fn an_owner_reads_its_partitions_only(b: &mut dyn Backend) {
    let store = b.fresh();
    let count = 256;
    let ids = ["wf_t.a", "wf_t.b", "wf_t.c"];
    let parts: Vec<u32> = ids.iter().map(|i| WorkflowId::new(*i).partition(count)).collect();
    assert!(parts[0] != parts[1] && parts[0] != parts[2], "the check needs them apart: {parts:?}");
    for id in ids {
        let mut wf = workflow(id);
        let facts = chunks(2).into_iter().chain([fact("Job", serde_json::json!({}))]).collect();
        let out = wf.apply(Input::Start { facts }, 1).unwrap();
        commit(&*store, &wf, &out, None);
        store
            .record_attempts(&[(out.invocations[0].id.clone(), Attempts { made: 1, failures: 1, retry_at_ms: 5 })])
            .unwrap();
    }
    commit(&*store, &workflow("wf_t.none"), &TurnOutput::default(), None);
    let only_a = Parts::Some { count, ids: [parts[0]].into() };
    let outbox = store.outbox(&only_a).unwrap();
    assert_eq!(outbox.len(), 2);
    assert!(outbox.iter().all(|i| i.workflow.as_str() == "wf_t.a"));
    let timers = store.timers(&only_a).unwrap();
    assert_eq!(timers.len(), 3);
    assert!(timers.iter().all(|t| t.workflow.as_str() == "wf_t.a"));
    let attempts = store.attempts(&only_a).unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].0.workflow().unwrap().as_str(), "wf_t.a");
    let nothing = Parts::Some { count, ids: Default::default() };
    assert!(store.outbox(&nothing).unwrap().is_empty() && store.timers(&nothing).unwrap().is_empty());
    assert!(store.attempts(&nothing).unwrap().is_empty());
    assert_eq!(store.outbox(&Parts::All).unwrap().len(), 6);
    assert_eq!(store.timers(&Parts::All).unwrap().len(), 9);
}

/// The list index: a tenant's workflows newest first (ties by id), by
/// pack, version, status and creation time, paged from a cursor and
/// counted; it follows each turn (two of one workflow in one commit too),
/// a deletion and a reopening, and never shows another tenant's.
pub fn the_list_index_follows_every_turn(b: &mut dyn Backend) {
    let store = b.fresh();
    let start = |id: &str, version: &str, at: u64, facts: Vec<FactSpec>| {
        let mut wf = Workflow::new(WorkflowId::new(id), pack_version(RULES, "", version), at);
        let out = wf.apply(Input::Start { facts }, at).unwrap();
        commit(&*store, &wf, &out, None);
        (wf, out)
    };
    let job = vec![fact("Job", serde_json::json!({}))];
    let (mut a, a_out) = start("wf_t.a", "1", 10, chunks(1));
    let (_b, _) = start("wf_t.b", "1", 20, job);
    let (mut c, c_out) = start("wf_t.c", "1", 30, chunks(1));
    let out = c.apply(Input::Result { invocation: c_out.invocations[0].id.clone(), outcome: ok() }, 31).unwrap();
    commit(&*store, &c, &out, None);
    let (_d, _) = start("wf_t.d", "2", 30, vec![]);
    let (mut e, _) = start("wf_t.e", "1", 40, chunks(1));
    let out = e.apply(Input::Terminate { reason: "r".into() }, 41).unwrap();
    commit(&*store, &e, &out, None);
    start("wf_u.z", "1", 50, vec![]);
    // Two turns of one workflow in one commit.
    let mut f = Workflow::new(WorkflowId::new("wf_t.f"), pack(RULES, ""), 5);
    let f1 = f.apply(Input::Start { facts: chunks(1) }, 5).unwrap();
    let f2 = f.apply(Input::Result { invocation: f1.invocations[0].id.clone(), outcome: ok() }, 6).unwrap();
    store
        .commit(&[
            Commit { workflow: f.id(), output: &f1, request_id: None, epoch: None },
            Commit { workflow: f.id(), output: &f2, request_id: None, epoch: None },
        ])
        .unwrap();

    fn q<'a>(
        family: Family<'a>,
        status: Option<ListStatus>,
        before: Option<(u64, &'a WorkflowId)>,
        limit: usize,
    ) -> ListQuery<'a> {
        ListQuery { tenant: "t", family, status, since_ms: None, until_ms: None, before, limit }
    }
    let ids = |store: &dyn Store, q: ListQuery<'_>| {
        store.list(&q).unwrap().into_iter().map(|m| m.id.as_str()["wf_t.".len()..].to_string()).collect::<Vec<_>>()
    };
    let check = |store: &dyn Store| {
        assert_eq!(ids(store, q(Family::All, None, None, 10)), ["e", "d", "c", "b", "a", "f"]);
        assert_eq!(ids(store, q(Family::All, None, None, 2)), ["e", "d"]);
        let d = WorkflowId::new("wf_t.d");
        assert_eq!(ids(store, q(Family::All, None, Some((30, &d)), 2)), ["c", "b"]);
        let b = WorkflowId::new("wf_t.b");
        assert_eq!(ids(store, q(Family::All, None, Some((20, &b)), 10)), ["a", "f"]);
        let st = |s| ids(store, q(Family::All, Some(s), None, 10));
        assert_eq!(st(ListStatus::Running), ["d", "b", "a"]);
        assert_eq!(st(ListStatus::WaitingInvocation), ["a"]);
        assert_eq!(st(ListStatus::WaitingTimer), ["b"]);
        assert_eq!(st(ListStatus::Completed), ["c", "f"]);
        assert_eq!(st(ListStatus::Cancelled), ["e"]);
        assert!(st(ListStatus::Failed).is_empty());
        assert_eq!(ids(store, q(Family::Version("test", "2"), None, None, 10)), ["d"]);
        assert_eq!(ids(store, q(Family::Version("test", "1"), Some(ListStatus::Running), None, 10)), ["b", "a"]);
        assert_eq!(ids(store, q(Family::Pack("test"), None, None, 3)), ["e", "d", "c"]);
        assert!(ids(store, q(Family::Pack("other"), None, None, 3)).is_empty());
        let window = ListQuery { since_ms: Some(20), until_ms: Some(40), ..q(Family::All, None, None, 10) };
        assert_eq!(ids(store, window), ["d", "c", "b"]);
        let c = store.list_counts("t", Family::All).unwrap();
        assert_eq!((c.all, c.by_status), (6, [3, 1, 1, 2, 0, 1]));
        let c = store.list_counts("t", Family::Version("test", "1")).unwrap();
        assert_eq!((c.all, c.by_status), (5, [2, 1, 1, 2, 0, 1]));
        let u = store.list_counts("u", Family::All).unwrap();
        assert_eq!((u.all, u.by_status), (1, [1, 0, 0, 0, 0, 0]));
    };
    check(&*store);
    let store = b.reopen(store);
    check(&*store);

    // `a` completes and `c` is deleted: both move or leave, counts follow.
    let out = a.apply(Input::Result { invocation: a_out.invocations[0].id.clone(), outcome: ok() }, 60).unwrap();
    commit(&*store, &a, &out, None);
    assert_eq!(store.delete_finished(&[c.id().clone()]).unwrap(), 1);
    store.commit(&[]).unwrap();
    let store = b.reopen(store);
    assert_eq!(ids(&*store, q(Family::All, Some(ListStatus::Completed), None, 10)), ["a", "f"]);
    assert!(ids(&*store, q(Family::All, Some(ListStatus::WaitingInvocation), None, 10)).is_empty());
    assert_eq!(ids(&*store, q(Family::All, None, None, 10)), ["e", "d", "b", "a", "f"]);
    let c = store.list_counts("t", Family::All).unwrap();
    assert_eq!((c.all, c.by_status), (5, [2, 0, 1, 2, 0, 1]));
}
