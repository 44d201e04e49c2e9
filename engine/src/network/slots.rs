//! Free slots (of tokens, and of index buckets), handed out lowest first.
//!
//! Whole subtrees of tokens are deleted and rebuilt at once (a `ctx`
//! change rebuilds every match under it). Taking the lowest free slot, not
//! the last freed, lays a rebuilt subtree out in creation order, mostly
//! contiguous: its tokens are then read and written in address order, which
//! the caches prefetch, instead of scattered over the whole token vector.

#[derive(Default)]
pub struct FreeSlots {
    /// Bit `i` of word `w` set: slot `64 * w + i` is free.
    words: Vec<u64>,
    /// No free slot below word `first`.
    first: usize,
    len: usize,
}

impl FreeSlots {
    pub fn push(&mut self, slot: u32) {
        let (w, bit) = (slot as usize / 64, slot % 64);
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        debug_assert_eq!(self.words[w] & (1 << bit), 0, "a slot is freed once");
        self.words[w] |= 1 << bit;
        self.first = self.first.min(w);
        self.len += 1;
    }

    /// The lowest free slot, taken.
    pub fn pop(&mut self) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        while self.words[self.first] == 0 {
            self.first += 1;
        }
        let word = &mut self.words[self.first];
        let bit = word.trailing_zeros();
        *word &= *word - 1;
        self.len -= 1;
        Some((self.first * 64) as u32 + bit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_free_slot_comes_first() {
        let mut f = FreeSlots::default();
        for s in [130, 5, 64, 7] {
            f.push(s);
        }
        assert_eq!(f.pop(), Some(5));
        f.push(2);
        let order: Vec<u32> = std::iter::from_fn(|| f.pop()).collect();
        assert_eq!(order, [2, 7, 64, 130]);
        assert_eq!(f.len, 0);
        f.push(64);
        assert_eq!((f.pop(), f.pop()), (Some(64), None));
    }
}
