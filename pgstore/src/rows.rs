//! A group commit as rows: the writes of its turns (`store::turn_writes`)
//! folded per table and key, a later turn's write replacing an earlier
//! one's, so that each table takes one multi-row upsert and one multi-row
//! delete, whatever the number of turns, and no statement touches a row
//! twice (PostgreSQL refuses that in one `ON CONFLICT DO UPDATE`).

use std::collections::HashMap;

use stoa_engine::store::codec::encode;
use stoa_engine::store::{encode_run, turn_writes, Commit, Write};

/// The rows of one table: key → the new row, or `None` to delete it.
pub struct Table<K, V>(HashMap<K, Option<V>>);

impl<K: std::hash::Hash + Eq, V> Default for Table<K, V> {
    fn default() -> Self {
        Table(HashMap::new())
    }
}

impl<K: std::hash::Hash + Eq + Clone, V> Table<K, V> {
    fn put(&mut self, k: K, v: V) {
        self.0.insert(k, Some(v));
    }

    fn delete(&mut self, k: K) {
        self.0.insert(k, None);
    }

    /// The rows to upsert and the keys to delete.
    pub fn split(self) -> (Vec<(K, V)>, Vec<K>) {
        let (mut puts, mut deletes) = (Vec::new(), Vec::new());
        for (k, v) in self.0 {
            match v {
                Some(v) => puts.push((k, v)),
                None => deletes.push(k),
            }
        }
        (puts, deletes)
    }
}

pub struct WorkflowRow {
    pub part: i32,
    pub status: String,
    pub pack: String,
    pub finished_ms: Option<i64>,
    pub meta: Vec<u8>,
    /// The list index's columns (`stoa_engine::store::index`).
    pub tenant: String,
    pub created_ms: i64,
    pub version: String,
    pub waits: Option<&'static str>,
}

/// What a running workflow waits on, as the `waits` column says it.
pub fn waits(meta: &stoa_engine::workflow::Meta) -> Option<&'static str> {
    use stoa_engine::store::ListStatus;
    if ListStatus::WaitingInvocation.has(meta) {
        Some("invocation")
    } else if ListStatus::WaitingTimer.has(meta) {
        Some("timer")
    } else {
        None
    }
}

/// Everything a group commit writes, owned (it crosses to the store's
/// runtime).
#[derive(Default)]
pub struct Rows {
    pub workflows: Table<String, WorkflowRow>,
    pub facts: Table<(String, i64), Vec<u8>>,
    pub waiting: Table<(String, String), (i32, Vec<u8>)>,
    pub attempts_gone: Table<String, ()>,
    pub timeline: Table<(String, i64), Vec<u8>>,
    pub timers: Table<(String, i64), (i32, Vec<u8>)>,
    pub signals: Table<String, (i32, Vec<u8>)>,
    pub requests: Table<String, String>,
}

/// Values are at most `i64::MAX` in practice (ids, milliseconds, counters);
/// one past it would be a corrupt turn, and is stored clamped rather than
/// wrapped into a negative number.
pub fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Rows {
    pub fn of(turns: &[Commit<'_>], partitions: u32) -> Rows {
        let mut rows = Rows::default();
        let part = |wf: &stoa_engine::WorkflowId| wf.partition(partitions) as i32;
        turn_writes(turns, |w| match w {
            Write::Meta(meta) => {
                let finished = meta.status.is_finished();
                rows.workflows.put(
                    meta.id.as_str().to_string(),
                    WorkflowRow {
                        part: part(&meta.id),
                        status: meta.status.as_str().to_string(),
                        pack: meta.pack.clone(),
                        finished_ms: finished.then(|| int(meta.updated_ms)),
                        meta: encode(meta),
                        tenant: stoa_engine::store::index::tenant(&meta.id).to_string(),
                        created_ms: int(meta.created_ms),
                        version: meta.pack_version.clone(),
                        waits: waits(meta),
                    },
                );
            }
            Write::Fact(wf, f) => rows.facts.put((wf.as_str().into(), int(f.id)), encode(f)),
            Write::FactGone(wf, id) => rows.facts.delete((wf.as_str().into(), int(id))),
            Write::Waiting(wf, wt) => {
                let k = (wf.as_str().into(), wt.invocation.id.as_str().into());
                rows.waiting.put(k, (part(wf), encode(wt)));
            }
            Write::WaitingGone(wf, inv) => {
                rows.waiting.delete((wf.as_str().into(), inv.as_str().into()));
                rows.attempts_gone.delete(inv.as_str().into());
            }
            Write::Timeline(wf, run) => rows.timeline.put((wf.as_str().into(), int(run[0].seq)), encode_run(run)),
            Write::Timers(wf, due, []) => rows.timers.delete((wf.as_str().into(), int(due))),
            Write::Timers(wf, due, timers) => {
                rows.timers.put((wf.as_str().into(), int(due)), (part(wf), encode(&timers)))
            }
            Write::Signal(wf, s) => rows.signals.put(s.id.clone(), (part(wf), encode(s))),
            Write::Request(wf, r) => rows.requests.put(r.to_string(), wf.as_str().to_string()),
        });
        rows
    }
}
