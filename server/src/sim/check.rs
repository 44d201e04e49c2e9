//! What must hold at the end of a run, read from the store (what a
//! restart would find), the server's counters, and what clients and
//! workers were told.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use stoa_engine::store::{Image, MemStore, Parts, Store, SIGNAL_OUTBOX};
use stoa_engine::timeline::{Entry, Event};
use stoa_engine::workflow::{Meta, Origin, Status, CHILD_PREFIX};
use stoa_engine::WorkflowId;

use super::{Ctl, TENANTS};
use crate::Core;

/// Virtual time the calm phase may take to end every workflow: their
/// deadlines (40 s at most), retries and backoffs.
const SETTLE: Duration = Duration::from_secs(240);

/// Lets the server run until it is quiet (every workflow ended, nothing
/// pending), within `SETTLE`; then checks.
pub async fn settle_and_check(ctl: &Ctl, core: &Core) -> Result<(), String> {
    let until = ctl.clock.now() + SETTLE;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if quiet(&ctl.store, core) || ctl.clock.now() >= until {
            break;
        }
    }
    // A moment more: what quiet looks like must stay so.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let errors = check(ctl, core);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n  "))
    }
}

fn quiet(store: &MemStore, core: &Core) -> bool {
    let running =
        store.workflows(WorkflowId::PREFIX, None, usize::MAX).map(|ms| ms.iter().any(|m| m.status == Status::Running));
    matches!(running, Ok(false))
        && store.outbox(&Parts::All).is_ok_and(|o| o.is_empty())
        && TENANTS.iter().all(|t| core.dispatch.pending(t) == 0)
}

/// The turn of a workflow as durable now (0: none).
pub fn durable_turn(store: &MemStore, id: &WorkflowId) -> u64 {
    MemStore::open(store.image()).load(id).ok().flatten().map_or(0, |s| s.meta.turn)
}

/// FNV-1a over every durable record: two runs of a seed must agree.
pub fn digest(image: &Image) -> u64 {
    let store = MemStore::open(image.clone());
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |b: &[u8]| {
        for x in b {
            h = (h ^ *x as u64).wrapping_mul(0x100_0000_01b3);
        }
    };
    for m in store.workflows(WorkflowId::PREFIX, None, usize::MAX).unwrap_or_default() {
        eat(format!("{m:?}").as_bytes());
        for e in store.timeline(&m.id, 1, usize::MAX).unwrap_or_default() {
            eat(format!("{e:?}").as_bytes());
        }
    }
    for kind in ["schedule", "signal", "upgrade", "rollout"] {
        eat(format!("{:?}", store.scan_aux(kind, "")).as_bytes());
    }
    eat(&image.len().to_le_bytes());
    h
}

fn check(ctl: &Ctl, core: &Core) -> Vec<String> {
    let mut errs = Vec::new();
    let store: &dyn Store = &*ctl.store;
    let h = ctl.history.lock().expect("history");
    for e in h.events.iter().filter(|e| e.contains("VIOLATION")) {
        errs.push(e.clone());
    }
    let metas = match store.workflows(WorkflowId::PREFIX, None, usize::MAX) {
        Ok(m) => m,
        Err(e) => return vec![format!("listing workflows: {e}")],
    };
    let by_id: BTreeMap<WorkflowId, &Meta> = metas.iter().map(|m| (m.id.clone(), m)).collect();
    let mut timelines = BTreeMap::new();
    for m in &metas {
        let entries = match store.timeline(&m.id, 1, usize::MAX) {
            Ok(e) => e,
            Err(e) => {
                errs.push(format!("{}: timeline: {e}", m.id));
                continue;
            }
        };
        check_timeline(m, &entries, &h.answers, &mut errs);
        timelines.insert(m.id.clone(), entries);
    }
    drop(h);

    // Liveness: the calm phase ended everything.
    for m in metas.iter().filter(|m| m.status == Status::Running) {
        errs.push(format!("{} ({}) is still running at turn {} after the calm phase", m.id, m.pack, m.turn));
    }
    match store.outbox(&Parts::All) {
        Ok(o) if !o.is_empty() => {
            errs.push(format!("the outbox still holds {:?}", o.iter().map(|i| i.id.as_str()).collect::<Vec<_>>()))
        }
        Err(e) => errs.push(format!("outbox: {e}")),
        _ => {}
    }
    match store.timers(&Parts::All) {
        Ok(t) if !t.is_empty() => {
            errs.push(format!("timers still pending: {:?}", t.iter().map(|t| (&t.workflow, t.id)).collect::<Vec<_>>()))
        }
        Err(e) => errs.push(format!("timers: {e}")),
        _ => {}
    }
    match store.attempts(&Parts::All) {
        Ok(a) if !a.is_empty() => errs.push(format!("attempt records left behind: {a:?}")),
        Err(e) => errs.push(format!("attempts: {e}")),
        _ => {}
    }
    match store.scan_aux(SIGNAL_OUTBOX, "") {
        Ok(s) if !s.is_empty() => {
            errs.push(format!("emitted signals never routed: {:?}", s.iter().map(|s| &s.0).collect::<Vec<_>>()))
        }
        Err(e) => errs.push(format!("signal outbox: {e}")),
        _ => {}
    }
    // The server's counters agree with the store.
    for t in TENANTS {
        let waiting = store
            .outbox(&Parts::All)
            .unwrap_or_default()
            .iter()
            .filter(|i| crate::runtime::tenant_of(&i.workflow) == t && !i.function.starts_with(CHILD_PREFIX))
            .count();
        let pending = core.dispatch.pending(t);
        if pending != waiting {
            errs.push(format!(
                "tenant {t}: the dispatcher counts {pending} pending, the store's outbox holds {waiting}"
            ));
        }
        let running =
            metas.iter().filter(|m| crate::runtime::tenant_of(&m.id) == t && m.status == Status::Running).count();
        let live = core.runtime.live_workflows(t);
        if live != running as u64 {
            errs.push(format!("tenant {t}: the runtime counts {live} live workflows, the store holds {running}"));
        }
    }

    let mut h = ctl.history.lock().expect("history");
    h.stats.workflows = metas.len() as u64;
    // Every acknowledged start exists, under the id acknowledged, created once.
    for ((t, req), (id, created)) in &h.starts {
        match store.request(&format!("{t}/{req}")) {
            Ok(Some(found)) if found == *id => {}
            other => {
                errs.push(format!("start {t}/{req} was acknowledged as {id}; the store's request record: {other:?}"))
            }
        }
        if !by_id.contains_key(id) {
            errs.push(format!("start {t}/{req} was acknowledged as {id}, which the store does not hold"));
        }
        if *created > 1 {
            errs.push(format!("start {t}/{req} was acknowledged as created {created} times"));
        }
    }
    let turn_input = |id: &WorkflowId, turn: u64| -> Option<String> {
        timelines.get(id)?.iter().find_map(|e| match &e.event {
            Event::TurnStarted { input } if e.turn == turn => Some(input.clone()),
            _ => None,
        })
    };
    for (id, turn) in &h.asserts {
        match turn_input(id, *turn) {
            Some(i) if i.starts_with("assert") => {}
            other => errs.push(format!("an assert into {id} was acknowledged as turn {turn}; that turn is {other:?}")),
        }
    }
    // An acknowledged cancel is the workflow's last turn: nothing it was
    // waiting for ran its reaction afterwards.
    for (id, turn) in &h.cancels {
        match (turn_input(id, *turn), by_id.get(id)) {
            (Some(i), Some(m)) if i.starts_with("cancel") && m.turn == *turn && m.status == Status::Cancelled => {}
            (input, m) => errs.push(format!(
                "a cancel of {id} was acknowledged as turn {turn}; that turn is {input:?}, the workflow {:?}",
                m.map(|m| (m.status, m.turn))
            )),
        }
    }
    for (t, sid) in &h.signals {
        match store.get_aux("signal", &format!("{t}/{sid}")) {
            Ok(Some(v)) if v["routed"] == serde_json::Value::Bool(true) => {}
            other => errs.push(format!("signal {t}/{sid} was acknowledged; its record: {other:?}")),
        }
    }
    drop(h);

    // Children, signal starts and schedule ticks: one workflow each.
    for m in &metas {
        let t = crate::runtime::tenant_of(&m.id);
        let request = match &m.origin {
            Origin::Parent { invocation, .. } => {
                let parent = invocation.workflow().and_then(|p| timelines.get(&p));
                let invoked = parent.is_some_and(|tl| {
                    tl.iter().any(|e| matches!(&e.event, Event::Invoked(i) if i.invocation == *invocation))
                });
                if !invoked {
                    errs.push(format!("{} is the child of {invocation}, which no parent invoked", m.id));
                }
                Some(format!("child:{invocation}"))
            }
            Origin::Signal { signal } => Some(format!("signal:{signal}:{}", m.pack)),
            _ => None,
        };
        if let Some(r) = request {
            match store.request(&format!("{t}/{r}")) {
                Ok(Some(id)) if id == m.id => {}
                other => errs.push(format!("{} was started by {r}, whose record says {other:?}", m.id)),
            }
        }
    }
    for t in TENANTS {
        let Ok(records) = store.scan_aux("schedule", &format!("{t}/")) else { continue };
        let mut started: BTreeSet<String> = BTreeSet::new();
        for (key, rec) in records {
            let Ok(rec) = serde_json::from_value::<crate::schedule::Schedule>(rec) else {
                errs.push(format!("schedule {key} does not decode"));
                continue;
            };
            let mut dues = BTreeSet::new();
            for run in rec.runs.iter().filter(|r| r.kind != crate::schedule::plan::RunKind::Manual) {
                if !dues.insert(run.due_ms) {
                    errs.push(format!("schedule {key}: tick {} ran twice", run.due_ms));
                }
                if !started.insert(run.workflow_id.clone()) {
                    errs.push(format!("schedule {key}: two runs share workflow {}", run.workflow_id));
                }
            }
        }
        for m in metas.iter().filter(|m| crate::runtime::tenant_of(&m.id) == t) {
            if let Origin::Schedule { schedule } = &m.origin {
                if !started.contains(m.id.as_str()) {
                    let runs =
                        store.get_aux("schedule", &format!("{t}/{schedule}")).ok().flatten().map(|r| r["runs"].clone());
                    let first = timelines.get(&m.id).and_then(|tl| tl.first()).map(|e| e.at_ms);
                    errs.push(format!(
                        "{} (started at {first:?}) was started by schedule {schedule}, whose runs do not show it: {}",
                        m.id,
                        runs.unwrap_or_default()
                    ));
                }
            }
        }
    }
    errs
}

/// One workflow's timeline: whole turns in order, each result applied
/// once and never after its cancel, each timer fired once and not early,
/// nothing after the end.
fn check_timeline(m: &Meta, entries: &[Entry], answers: &BTreeMap<(String, u32), String>, errs: &mut Vec<String>) {
    let id = &m.id;
    for (i, e) in entries.iter().enumerate() {
        if e.seq != i as u64 + 1 {
            errs.push(format!("{id}: timeline entry {} has seq {}", i + 1, e.seq));
            return;
        }
    }
    if entries.len() as u64 != m.timeline_seq {
        errs.push(format!("{id}: {} timeline entries, the meta says {}", entries.len(), m.timeline_seq));
    }
    let mut turn = 0;
    let mut invoked = BTreeMap::new();
    let mut applied = BTreeSet::new();
    let mut cancelled = BTreeSet::new();
    let mut timers: BTreeMap<u64, u64> = BTreeMap::new();
    let mut fired = BTreeSet::new();
    let mut dropped = BTreeSet::new();
    let mut ended = None;
    for e in entries {
        if e.turn != turn {
            if e.turn != turn + 1 || !matches!(e.event, Event::TurnStarted { .. }) {
                errs.push(format!("{id}: turn {} follows turn {turn} (a turn whose predecessor is missing)", e.turn));
                return;
            }
            turn = e.turn;
            if let Some(end) = ended {
                errs.push(format!("{id}: turn {turn} after the workflow ended in turn {end}"));
            }
        }
        match &e.event {
            Event::Invoked(i) => {
                invoked.insert(i.invocation.clone(), i.function.clone());
            }
            Event::InvocationCancelled { invocation, .. } => {
                cancelled.insert(invocation.clone());
            }
            Event::ResultApplied { invocation, ok, value, attempts } => {
                let Some(function) = invoked.get(invocation) else {
                    errs.push(format!("{id}: a result of {invocation}, never invoked"));
                    continue;
                };
                if !applied.insert(invocation.clone()) {
                    errs.push(format!("{id}: the result of {invocation} was applied twice"));
                }
                if cancelled.contains(invocation) {
                    errs.push(format!("{id}: the result of {invocation} was applied after it was cancelled"));
                }
                if *ok && !function.starts_with(CHILD_PREFIX) {
                    let expected = serde_json::json!({ "v": format!("{invocation}#{attempts}") });
                    let sent = answers.get(&(invocation.to_string(), *attempts));
                    let value = value.to_json();
                    let sent_json = sent.and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok());
                    if value != expected || sent_json.as_ref() != Some(&expected) {
                        errs.push(format!(
                            "{id}: applied {value} as attempt {attempts} of {invocation}; the worker sent {sent:?} for that attempt"
                        ));
                    }
                }
            }
            Event::TimerSet { id: t, due_ms, .. } => {
                timers.insert(*t, *due_ms);
            }
            Event::TimerCancelled { id: t, .. } => {
                dropped.insert(*t);
            }
            Event::TimerFired { id: t, .. } => {
                match timers.get(t) {
                    None => errs.push(format!("{id}: timer {t} fired, never set")),
                    Some(due) if e.at_ms < *due => {
                        errs.push(format!("{id}: timer {t} fired at {} before its due time {due}", e.at_ms))
                    }
                    _ => {}
                }
                if !fired.insert(*t) {
                    errs.push(format!("{id}: timer {t} fired twice"));
                }
                if dropped.contains(t) {
                    errs.push(format!("{id}: timer {t} fired after it was cancelled"));
                }
            }
            Event::Completed { .. } | Event::Failed { .. } | Event::Cancelled { .. } => ended = Some(turn),
            _ => {}
        }
    }
    if turn != m.turn {
        errs.push(format!("{id}: the timeline ends at turn {turn}, the meta says {}", m.turn));
    }
    if (m.status == Status::Running) == ended.is_some() {
        errs.push(format!("{id}: status {:?} with the end in turn {ended:?}", m.status));
    }
}
