//! The simulation's only source of randomness: SplitMix64, seeded. Each
//! part draws from a stream of its own (`fork`), so that a change in how
//! often one part draws leaves the others' choices as they were.

use std::sync::{Arc, Mutex};

#[derive(Clone, Debug)]
pub struct Rng(u64);

/// A stream shared by tasks (they run one at a time, in an order that is
/// itself determined by the seed).
pub type Shared = Arc<Mutex<Rng>>;

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// An independent stream named `label`.
    pub fn fork(&mut self, label: &str) -> Rng {
        let h = label.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        Rng(self.next() ^ h)
    }

    pub fn shared(self) -> Shared {
        Arc::new(Mutex::new(self))
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            ((self.next() as u128 * n as u128) >> 64) as u64
        }
    }

    /// In `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Draws from a shared stream.
pub fn with<T>(rng: &Shared, f: impl FnOnce(&mut Rng) -> T) -> T {
    f(&mut rng.lock().expect("rng"))
}
