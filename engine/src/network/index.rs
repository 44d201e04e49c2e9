//! The hash index of a memory: items (tokens or fact slots) grouped by the
//! values of a join key.
//!
//! A key is looked up by its hash and its values, borrowed: no composite key
//! value is built, cloned or hashed twice. Each bucket keeps one copy of its
//! key (for equality on lookups); an item remembers only the bucket's hash and
//! its position in it, which is enough to remove it in O(1).

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

use hashbrown::HashTable;
use rustc_hash::FxHasher;
use smallvec::SmallVec;
use stoa_rules::Value;

/// Join-key values, in the order of the pattern's joins: up to three need
/// no heap allocation.
pub type Key = SmallVec<[Value; 3]>;

/// The hash of a key given as its values in order.
pub fn hash<K: Borrow<Value>>(key: &[K]) -> u64 {
    let mut h = FxHasher::default();
    for v in key {
        v.borrow().hash(&mut h);
    }
    h.finish()
}

struct Bucket {
    hash: u64,
    key: Key,
    items: SmallVec<[u32; 2]>,
}

fn same<K: Borrow<Value>>(a: &Key, b: &[K]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y.borrow())
}

#[derive(Default)]
pub struct Index {
    table: HashTable<Bucket>,
}

impl Index {
    /// Adds `item` under `key` (whose hash is `hash`); returns its position.
    pub fn insert<K: Borrow<Value>>(&mut self, hash: u64, key: &[K], item: u32) -> u32 {
        match self.table.find_mut(hash, |b| b.hash == hash && same(&b.key, key)) {
            Some(b) => {
                b.items.push(item);
                (b.items.len() - 1) as u32
            }
            None => {
                let key = key.iter().map(|k| k.borrow().clone()).collect();
                let mut items = SmallVec::new();
                items.push(item);
                self.table.insert_unique(hash, Bucket { hash, key, items }, |b| b.hash);
                0
            }
        }
    }

    /// The items under `key`.
    pub fn get<K: Borrow<Value>>(&self, hash: u64, key: &[K]) -> &[u32] {
        self.table.find(hash, |b| b.hash == hash && same(&b.key, key)).map_or(&[], |b| &b.items)
    }

    /// Removes `item`, found at `pos` in its bucket of hash `hash`; returns
    /// the item moved into `pos` (whose position the caller updates).
    pub fn remove(&mut self, hash: u64, pos: u32, item: u32) -> Option<u32> {
        let Ok(mut entry) = self.table.find_entry(hash, |b| b.hash == hash && b.items.get(pos as usize) == Some(&item))
        else {
            unreachable!("an indexed item is in its bucket")
        };
        let b = entry.get_mut();
        b.items.swap_remove(pos as usize);
        let moved = b.items.get(pos as usize).copied();
        // A memory without a join key has one bucket, emptied and refilled
        // whenever its tokens are rebuilt: keeping it keeps its capacity.
        if b.items.is_empty() && !b.key.is_empty() {
            entry.remove();
        }
        moved
    }
}
