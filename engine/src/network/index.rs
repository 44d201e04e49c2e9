//! The hash index of a memory: items (tokens or fact slots) grouped by the
//! values of a join key.
//!
//! A key is looked up by its hash and its values, borrowed: no composite key
//! value is built, cloned or hashed twice. An item remembers only its
//! bucket's hash and its position in it, which is enough to remove it in
//! O(1). Token memories keep a copy of each bucket's key to compare with;
//! alpha memories keep none (`K = ()`): a fact's own fields are its key, so a
//! bucket is compared through its first fact.

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

struct Bucket<K> {
    hash: u64,
    key: K,
    items: SmallVec<[u32; 2]>,
}

fn same<K: Borrow<Value>>(a: &Key, b: &[K]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y.borrow())
}

pub struct Index<K> {
    table: HashTable<Bucket<K>>,
    /// Whether emptied buckets stay: a memory without a join key has one
    /// bucket, emptied and refilled whenever its tokens are rebuilt, and
    /// keeping it keeps its capacity.
    keep_empty: bool,
}

impl<K> Index<K> {
    pub fn new(keep_empty: bool) -> Index<K> {
        Index { table: HashTable::new(), keep_empty }
    }

    /// Adds `item` to the bucket of hash `hash` for which `eq(key, first
    /// item)` holds (no first item: a kept empty bucket), or to a new one
    /// keyed `make()`; returns its position.
    pub fn insert_with(
        &mut self,
        hash: u64,
        eq: impl Fn(&K, Option<u32>) -> bool,
        make: impl FnOnce() -> K,
        item: u32,
    ) -> u32 {
        match self.table.find_mut(hash, |b| b.hash == hash && eq(&b.key, b.items.first().copied())) {
            Some(b) => {
                b.items.push(item);
                (b.items.len() - 1) as u32
            }
            None => {
                let mut items = SmallVec::new();
                items.push(item);
                self.table.insert_unique(hash, Bucket { hash, key: make(), items }, |b| b.hash);
                0
            }
        }
    }

    /// The items of the bucket of hash `hash` for which `eq` holds.
    pub fn get_with(&self, hash: u64, eq: impl Fn(&K, Option<u32>) -> bool) -> &[u32] {
        self.table.find(hash, |b| b.hash == hash && eq(&b.key, b.items.first().copied())).map_or(&[], |b| &b.items)
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
        if b.items.is_empty() && !self.keep_empty {
            entry.remove();
        }
        moved
    }
}

impl Index<Key> {
    /// Adds `item` under `key` (whose hash is `hash`), keeping `key` itself
    /// if it starts a bucket; returns the item's position.
    pub fn insert_owned(&mut self, hash: u64, key: Key, item: u32) -> u32 {
        if let Some(b) = self.table.find_mut(hash, |b| b.hash == hash && b.key == key) {
            b.items.push(item);
            return (b.items.len() - 1) as u32;
        }
        let mut items = SmallVec::new();
        items.push(item);
        self.table.insert_unique(hash, Bucket { hash, key, items }, |b| b.hash);
        0
    }

    /// The items under `key`.
    pub fn get<V: Borrow<Value>>(&self, hash: u64, key: &[V]) -> &[u32] {
        self.get_with(hash, |k, _| same(k, key))
    }
}
