//! The records of a store that keeps ordered keys and values (`SledStore`,
//! `MemStore`): which keys a committed turn writes, and how they are made.
//!
//! Keys are prefixed by record kind and workflow id: `m/<wf>` meta,
//! `f/<wf>/<fact id hex>` facts, `w/<wf>/<inv>` waiting activations (which
//! are also the outbox: every invocation waits in one), `t/<wf>/<first seq
//! hex>` a run of consecutive timeline entries, `a/<inv>` attempts of a
//! pending invocation, `r/<request id>` idempotent starts, `c/<wf>/<timer id
//! hex>` timers, `x/<kind>/<key>` server records (see `Store::put_aux`),
//! `p/<tenant>/<pack>/<seq hex>` deployed packs.

use super::codec::encode;
use super::{Commit, SIGNAL_OUTBOX};

/// Timeline entries per record at most, so that reading from a position
/// decodes little more than it returns.
pub(super) const TIMELINE_RUN: usize = 256;

pub(super) fn key(parts: &[&str]) -> Vec<u8> {
    parts.join("/").into_bytes()
}

/// How many writes `each_write` makes, without encoding anything.
pub(super) fn count_writes(turns: &[Commit<'_>]) -> usize {
    turns
        .iter()
        .map(|c| {
            let out = c.output;
            usize::from(out.meta.is_some())
                + out.facts_put.len()
                + out.facts_deleted.len()
                + out.waiting_put.len()
                + 2 * (out.waiting_deleted.len() + out.cancelled.len())
                + out.entries.len().div_ceil(TIMELINE_RUN)
                + out.timers_put.len()
                + out.timers_deleted.len()
                + out.signals.len()
                + usize::from(c.request_id.is_some())
        })
        .sum()
}

/// The writes of a group of turns, in order, one at a time: a large group
/// goes straight into its journal, never held twice.
pub(super) fn each_write(turns: &[Commit<'_>], mut w: impl FnMut(Vec<u8>, Option<Vec<u8>>)) {
    for c in turns {
        let wf = c.workflow.as_str();
        let out = c.output;
        if let Some(meta) = &out.meta {
            w(key(&["m", wf]), Some(encode(meta)));
        }
        for f in &out.facts_put {
            w(key(&["f", wf, &format!("{:016x}", f.id)]), Some(encode(f)));
        }
        for id in &out.facts_deleted {
            w(key(&["f", wf, &format!("{id:016x}")]), None);
        }
        for wt in &out.waiting_put {
            w(key(&["w", wf, wt.invocation.id.as_str()]), Some(encode(wt)));
        }
        for inv in out.waiting_deleted.iter().chain(&out.cancelled) {
            w(key(&["w", wf, inv.as_str()]), None);
            w(key(&["a", inv.as_str()]), None);
        }
        for run in out.entries.chunks(TIMELINE_RUN) {
            w(key(&["t", wf, &format!("{:016x}", run[0].seq)]), Some(encode(&run)));
        }
        for t in &out.timers_put {
            w(key(&["c", wf, &format!("{:016x}", t.id)]), Some(encode(t)));
        }
        for id in &out.timers_deleted {
            w(key(&["c", wf, &format!("{id:016x}")]), None);
        }
        for s in &out.signals {
            w(key(&["x", SIGNAL_OUTBOX, &s.id]), Some(encode(s)));
        }
        if let Some(r) = c.request_id {
            w(key(&["r", r]), Some(encode(&c.workflow)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::{Timer, TurnOutput};
    use crate::WorkflowId;

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
        let out = TurnOutput { timers_put: vec![timer(1), timer(2)], timers_deleted: vec![3], ..TurnOutput::default() };
        let turns = [Commit { workflow: &wf, output: &out, request_id: Some("a/r") }];
        let mut n = 0;
        each_write(&turns, |_, _| n += 1);
        assert_eq!((count_writes(&turns), n), (4, 4));
    }
}
