//! Fact id → slot. Ids grow and are never reused, so the live ids mostly
//! fall in a window that moves forward: kept as a vector, looked up and
//! filled in order (a hash map of a million ids misses the cache on every
//! access). Ids the window leaves behind (old facts still alive when it
//! has mostly emptied) move to a hash map, so memory follows the live facts.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::fact::FactId;

const NONE: u32 = u32::MAX;

#[derive(Default)]
pub struct IdMap {
    /// The id of `window[0]`.
    base: FactId,
    window: VecDeque<u32>,
    in_window: usize,
    old: FxHashMap<FactId, u32>,
}

impl IdMap {
    pub fn len(&self) -> usize {
        self.in_window + self.old.len()
    }

    pub fn reserve(&mut self, n: usize) {
        self.window.reserve(n);
    }

    pub fn get(&self, id: FactId) -> Option<u32> {
        let in_window = id.checked_sub(self.base).and_then(|i| self.window.get(i as usize)).copied();
        match in_window {
            Some(s) if s != NONE => Some(s),
            // Behind or ahead of the window, or a hole in it that a fact
            // inserted far ahead (before the window reached it) fills.
            _ if self.old.is_empty() => None,
            _ => self.old.get(&id).copied(),
        }
    }

    pub fn insert(&mut self, id: FactId, slot: u32) {
        if self.window.is_empty() {
            self.base = id;
        }
        let far = id.checked_sub(self.base).is_none_or(|i| i > (self.window.len() + self.in_window + 1024) as u64);
        if far {
            // Behind the window, or far ahead of it: not worth the gap.
            self.old.insert(id, slot);
            return;
        }
        let i = (id - self.base) as usize;
        if i >= self.window.len() {
            self.window.resize(i + 1, NONE);
        }
        debug_assert_eq!(self.window[i], NONE, "a new id");
        self.window[i] = slot;
        self.in_window += 1;
    }

    pub fn remove(&mut self, id: FactId) {
        let i = match id.checked_sub(self.base) {
            Some(i) if self.window.get(i as usize).is_some_and(|&s| s != NONE) => i as usize,
            _ => {
                self.old.remove(&id);
                return;
            }
        };
        self.window[i] = NONE;
        self.in_window -= 1;
        while self.window.front() == Some(&NONE) {
            self.window.pop_front();
            self.base += 1;
        }
        // Mostly holes: move the few live ids out and start afresh.
        if self.window.len() > 1024 && self.in_window * 8 < self.window.len() {
            for (k, &s) in self.window.iter().enumerate() {
                if s != NONE {
                    self.old.insert(self.base + k as u64, s);
                }
            }
            self.base += self.window.len() as u64;
            self.window.clear();
            self.in_window = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_order_out_of_order_and_left_behind() {
        let mut m = IdMap::default();
        for id in 1..=3000 {
            m.insert(id, id as u32);
        }
        m.insert(1_000_000, 7); // far ahead
        for id in 2..=2990 {
            m.remove(id); // leaves 1 behind: the window moves to the old map
        }
        assert_eq!(m.len(), 12);
        assert_eq!(m.get(1), Some(1));
        assert_eq!(m.get(2), None);
        assert_eq!(m.get(2995), Some(2995));
        assert_eq!(m.get(1_000_000), Some(7));
        m.remove(1);
        m.remove(1_000_000);
        assert_eq!((m.get(1), m.get(1_000_000), m.len()), (None, None, 10));
        m.insert(3001, 3001);
        assert_eq!(m.get(3001), Some(3001));
    }
}
