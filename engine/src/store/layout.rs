//! The records of a store that keeps ordered keys and values (`SledStore`,
//! `MemStore`): which keys a committed turn writes, and how they are made.
//!
//! Keys are prefixed by record kind and workflow id: `m/<wf>` meta,
//! `f/<wf>/<fact id hex>` facts, `w/<wf>/<inv>` waiting activations (which
//! are also the outbox: every invocation waits in one), `t/<wf>/<first seq
//! hex>` a run of consecutive timeline entries of one turn (`TimelineRun`),
//! `e/<finished ms hex>/<wf>` the finished workflows in the order they
//! finished (for retention),
//! `a/<inv>` attempts of a pending invocation, `r/<request id>` idempotent
//! starts, `c/<wf>/<due ms hex>` the timers due at one instant (they fire
//! in one turn, which deletes one record), `x/<kind>/<key>` server records
//! (see `Store::put_aux`),
//! `p/<tenant>/<pack>/<seq hex>` deployed packs; `l/`, `n/` and `i/list`
//! the list index (see `index`).

use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::{Commit, Error, SIGNAL_OUTBOX};
use crate::fact::{Fact, FactId, InvocationId};
use crate::timeline::{Entry, Event};
use crate::workflow::{Meta, Signal, Timer, Waiting};
use crate::WorkflowId;

/// Timeline entries per record at most, so that reading from a position
/// decodes little more than it returns.
pub(super) const TIMELINE_RUN: usize = 256;

/// A `t/` record: consecutive entries that share their turn, instant and
/// commit stamp (a turn's entries do), which it writes once rather than in
/// each entry: a timeline's records are most of what a turn writes, and
/// this makes them about a third smaller and quicker to encode.
#[derive(Serialize, Deserialize)]
struct TimelineRun<E> {
    seq: u64,
    turn: u64,
    at_ms: u64,
    #[serde(default, skip_serializing_if = "crate::timeline::is_zero")]
    at_us: u64,
    events: E,
}

/// The events of a run, serialized from the entries without a copy.
struct Events<'a>(&'a [Entry]);

impl Serialize for Events<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|e| &e.event))
    }
}

/// Splits entries into the runs `t/` records hold: at most `TIMELINE_RUN`,
/// consecutive, alike in turn, instant and stamp.
pub fn timeline_runs(entries: &[Entry]) -> impl Iterator<Item = &[Entry]> {
    let mut rest = entries;
    std::iter::from_fn(move || {
        let first = rest.first()?;
        let n = rest
            .iter()
            .take(TIMELINE_RUN)
            .enumerate()
            .take_while(|(i, e)| {
                e.seq == first.seq + *i as u64 && (e.turn, e.at_ms, e.at_us) == (first.turn, first.at_ms, first.at_us)
            })
            .count();
        let (run, tail) = rest.split_at(n);
        rest = tail;
        Some(run)
    })
}

/// A `t/` record (or a timeline row): a run's shared fields once, then
/// its events.
pub fn encode_run(run: &[Entry]) -> Vec<u8> {
    let first = &run[0];
    encode(&TimelineRun {
        seq: first.seq,
        turn: first.turn,
        at_ms: first.at_ms,
        at_us: first.at_us,
        events: Events(run),
    })
}

/// The entries of a `t/` record.
pub fn decode_run(key: &[u8], bytes: &[u8]) -> Result<impl Iterator<Item = Entry>, Error> {
    let run: TimelineRun<Vec<Event>> = decode(key, bytes)?;
    let TimelineRun { seq, turn, at_ms, at_us, events } = run;
    Ok(events.into_iter().zip(seq..).map(move |(event, seq)| Entry { seq, turn, at_ms, at_us, event }))
}

pub(super) fn key(parts: &[&str]) -> Vec<u8> {
    parts.join("/").into_bytes()
}

/// Where a finished workflow waits for retention to delete it. A finished
/// workflow has no more turns, so `updated_ms` is when it finished.
pub(super) fn finished_key(meta: &Meta) -> Vec<u8> {
    key(&["e", &format!("{:016x}", meta.updated_ms), meta.id.as_str()])
}

/// The ids in `e/` keys up to `before_ms` (excluded), from the keys in order.
pub(super) fn finished_id(k: &[u8], before_ms: u64) -> Option<WorkflowId> {
    let rest = std::str::from_utf8(k.strip_prefix(b"e/")?).ok()?;
    let (ms, id) = rest.split_once('/')?;
    (u64::from_str_radix(ms, 16).ok()? < before_ms).then(|| WorkflowId::new(id))
}

/// The record prefixes of one workflow, besides its meta.
pub(super) fn workflow_prefixes(id: &WorkflowId) -> [Vec<u8>; 4] {
    ["f", "w", "t", "c"].map(|kind| key(&[kind, id.as_str(), ""]))
}

/// How many writes `each_write` makes, without encoding anything.
pub(super) fn count_writes(turns: &[Commit<'_>]) -> usize {
    turns
        .iter()
        .map(|c| {
            let out = c.output;
            usize::from(out.meta.is_some())
                + usize::from(out.meta.as_ref().is_some_and(|m| m.status.is_finished()))
                + out.facts_put.len()
                + out.facts_deleted.len()
                + out.waiting_put.len()
                + 2 * (out.waiting_deleted.len() + out.cancelled.len())
                + timeline_runs(&out.entries).count()
                + out.timer_groups.len()
                + out.signals.len()
                + usize::from(c.request_id.is_some())
        })
        .sum()
}

/// Splits turns into runs of whole turns of at most `max` writes each (a
/// turn of more writes alone), in order.
pub(super) fn batches<'a, 'b>(turns: &'a [Commit<'b>], max: usize) -> impl Iterator<Item = &'a [Commit<'b>]> {
    let mut rest = turns;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (mut n, mut end) = (0, 0);
        while end < rest.len() {
            let w = count_writes(&rest[end..=end]);
            if end > 0 && n + w > max {
                break;
            }
            n += w;
            end += 1;
        }
        let (run, tail) = rest.split_at(end);
        rest = tail;
        Some(run)
    })
}

/// One record a committed turn writes or deletes: what every store writes
/// for a turn, whatever its keys or tables.
pub enum Write<'a> {
    /// A workflow's meta (also its place among the finished, once finished).
    Meta(&'a Meta),
    Fact(&'a WorkflowId, &'a Fact),
    FactGone(&'a WorkflowId, FactId),
    /// A waiting activation, which is also its invocation's outbox entry.
    Waiting(&'a WorkflowId, &'a Waiting),
    /// An invocation no longer awaited: its waiting activation and its
    /// attempts go.
    WaitingGone(&'a WorkflowId, &'a InvocationId),
    /// Consecutive timeline entries of one turn (`timeline_runs`).
    Timeline(&'a WorkflowId, &'a [Entry]),
    /// A workflow's timers due at one instant; none: the instant is gone.
    Timers(&'a WorkflowId, u64, &'a [Timer]),
    /// An emitted signal, kept under `SIGNAL_OUTBOX` until routed.
    Signal(&'a WorkflowId, &'a Signal),
    /// The client request id that started the workflow.
    Request(&'a WorkflowId, &'a str),
}

/// The writes of a group of turns, in order: a later one may replace or
/// delete what an earlier one wrote.
pub fn turn_writes<'a>(turns: &[Commit<'a>], mut w: impl FnMut(Write<'a>)) {
    for c in turns {
        let wf = c.workflow;
        let out = c.output;
        if let Some(meta) = &out.meta {
            w(Write::Meta(meta));
        }
        out.facts_put.iter().for_each(|f| w(Write::Fact(wf, f)));
        out.facts_deleted.iter().for_each(|&id| w(Write::FactGone(wf, id)));
        out.waiting_put.iter().for_each(|wt| w(Write::Waiting(wf, wt)));
        out.waiting_deleted.iter().chain(&out.cancelled).for_each(|inv| w(Write::WaitingGone(wf, inv)));
        timeline_runs(&out.entries).for_each(|run| w(Write::Timeline(wf, run)));
        out.timer_groups.iter().for_each(|(due, timers)| w(Write::Timers(wf, *due, timers)));
        out.signals.iter().for_each(|s| w(Write::Signal(wf, s)));
        if let Some(r) = c.request_id {
            w(Write::Request(wf, r));
        }
    }
}

/// The key-value writes of a group of turns, in order, one at a time: a
/// large group goes straight into its journal, never held twice.
pub(super) fn each_write(turns: &[Commit<'_>], mut w: impl FnMut(Vec<u8>, Option<Vec<u8>>)) {
    turn_writes(turns, |write| match write {
        Write::Meta(meta) => {
            w(key(&["m", meta.id.as_str()]), Some(encode(meta)));
            if meta.status.is_finished() {
                w(finished_key(meta), Some(encode(&())));
            }
        }
        Write::Fact(wf, f) => w(key(&["f", wf.as_str(), &format!("{:016x}", f.id)]), Some(encode(f))),
        Write::FactGone(wf, id) => w(key(&["f", wf.as_str(), &format!("{id:016x}")]), None),
        Write::Waiting(wf, wt) => w(key(&["w", wf.as_str(), wt.invocation.id.as_str()]), Some(encode(wt))),
        Write::WaitingGone(wf, inv) => {
            w(key(&["w", wf.as_str(), inv.as_str()]), None);
            w(key(&["a", inv.as_str()]), None);
        }
        Write::Timeline(wf, run) => w(key(&["t", wf.as_str(), &format!("{:016x}", run[0].seq)]), Some(encode_run(run))),
        Write::Timers(wf, due, timers) => {
            w(key(&["c", wf.as_str(), &format!("{due:016x}")]), (!timers.is_empty()).then(|| encode(&timers)))
        }
        Write::Signal(_, s) => w(key(&["x", SIGNAL_OUTBOX, &s.id]), Some(encode(s))),
        Write::Request(wf, r) => w(key(&["r", r]), Some(encode(wf))),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::{Timer, TurnOutput};
    use crate::WorkflowId;

    /// Runs of whole turns within the bound, a larger turn alone, in order.
    #[test]
    fn batches_are_runs_of_whole_turns() {
        let wf = WorkflowId::new("a.x");
        let out = |n: usize| TurnOutput { facts_deleted: (0..n as u64).collect(), ..TurnOutput::default() };
        let outs = [out(3), out(3), out(5), out(1), out(2)];
        let turns: Vec<Commit<'_>> =
            outs.iter().map(|o| Commit { workflow: &wf, output: o, request_id: None, epoch: None }).collect();
        let sizes: Vec<usize> = batches(&turns, 4).map(|b| b.len()).collect();
        assert_eq!(sizes, [1, 1, 1, 2]);
        let sizes: Vec<usize> = batches(&turns, 6).map(|b| b.len()).collect();
        assert_eq!(sizes, [2, 2, 1]);
        assert_eq!(batches(&[], 6).count(), 0);
    }

    /// A turn's entries make one run of up to `TIMELINE_RUN`; a change of
    /// turn, instant, stamp or a gap in `seq` starts another; each reads
    /// back exactly.
    #[test]
    fn timeline_runs_share_turn_instant_and_stamp_and_read_back_exactly() {
        let e = |seq, turn, at_ms, at_us| Entry {
            seq,
            turn,
            at_ms,
            at_us,
            event: Event::Log { rule: format!("r{seq}"), message: "m".into() },
        };
        let mut entries: Vec<Entry> = (1..=300).map(|s| e(s, 1, 10, 99)).collect();
        entries.extend([e(301, 2, 10, 99), e(302, 2, 11, 99), e(303, 2, 11, 0), e(305, 2, 11, 0)]);
        let runs: Vec<&[Entry]> = timeline_runs(&entries).collect();
        let lens: Vec<usize> = runs.iter().map(|r| r.len()).collect();
        assert_eq!(lens, [256, 44, 1, 1, 1, 1]);
        let back: Vec<Entry> =
            runs.iter().flat_map(|r| decode_run(b"t/x", &encode_run(r)).unwrap().collect::<Vec<_>>()).collect();
        assert_eq!(back, entries);
        let text = String::from_utf8_lossy(&encode_run(&entries[302..303])[1..]).into_owned();
        assert_eq!(text, r#"{"seq":303,"turn":2,"at_ms":11,"events":[{"kind":"log","rule":"r303","message":"m"}]}"#);
    }

    /// The bound on a batch's records counts every record a turn writes.
    #[test]
    fn count_writes_counts_what_each_write_writes() {
        let wf = WorkflowId::new("a.x");
        let timer = |id| Timer {
            workflow: wf.clone(),
            id,
            due_ms: 5,
            ty: stoa_rules::Sym::new("T"),
            fields: Default::default(),
            rule: "r".into(),
        };
        let out =
            TurnOutput { timer_groups: vec![(5, vec![timer(1), timer(2)]), (6, vec![])], ..TurnOutput::default() };
        let turns = [Commit { workflow: &wf, output: &out, request_id: Some("a/r"), epoch: None }];
        let mut n = 0;
        each_write(&turns, |_, _| n += 1);
        assert_eq!((count_writes(&turns), n), (3, 3));
    }
}
