//! The agenda: activations waiting to fire, in conflict-resolution order.
//!
//! Higher salience fires first, then the newest change (depth-first, like
//! CLIPS), then the order given within the change. Every change is newer
//! than all activations already waiting, so at one salience the agenda is a
//! stack of changes: scheduling pushes, firing pops, both O(1). A deleted
//! activation is not searched for: its entry goes stale (the token's
//! generation moves on) and is skipped when reached, or swept when stale
//! entries outnumber the live ones.

use std::collections::BTreeMap;

use super::TokId;

#[derive(Default)]
pub struct Agenda {
    /// By negated salience; each stack's top is the next to fire.
    levels: BTreeMap<i64, Vec<(TokId, u32)>>,
    live: usize,
    entries: usize,
}

impl Agenda {
    pub fn len(&self) -> usize {
        self.live
    }

    /// Schedules one change's activations, given in firing order (token and
    /// generation, with salience).
    pub fn push_change(&mut self, acts: &[(TokId, u32, i64)]) {
        // Runs of one salience (most changes are one run) share a lookup.
        let mut i = acts.len();
        while i > 0 {
            let salience = acts[i - 1].2;
            let stack = self.levels.entry(-salience).or_default();
            while i > 0 && acts[i - 1].2 == salience {
                stack.push((acts[i - 1].0, acts[i - 1].1));
                i -= 1;
            }
        }
        self.live += acts.len();
        self.entries += acts.len();
    }

    /// An activation left the agenda without firing.
    pub fn forget(&mut self, is_live: impl Fn(TokId, u32) -> bool) {
        self.live -= 1;
        if self.entries - self.live > 2 * self.live + 4096 {
            for stack in self.levels.values_mut() {
                stack.retain(|&(t, g)| is_live(t, g));
            }
            self.entries = self.live;
        }
    }

    /// Every entry, stale ones included (check them with the token).
    pub fn entries(&self) -> impl Iterator<Item = (TokId, u32)> + '_ {
        self.levels.values().flatten().copied()
    }

    /// Every entry in the order `pop` would take them, stale ones included.
    pub fn in_firing_order(&self) -> impl Iterator<Item = (TokId, u32)> + '_ {
        self.levels.values().flat_map(|stack| stack.iter().rev()).copied()
    }

    /// The next activation to fire, taken off the agenda.
    pub fn pop(&mut self, is_live: impl Fn(TokId, u32) -> bool) -> Option<TokId> {
        for stack in self.levels.values_mut() {
            while let Some((t, g)) = stack.pop() {
                self.entries -= 1;
                if is_live(t, g) {
                    self.live -= 1;
                    return Some(t);
                }
            }
        }
        None
    }
}
