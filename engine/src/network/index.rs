//! The hash index of a memory: items (tokens or fact slots) grouped by the
//! values of a join key.
//!
//! A key is looked up by its hash and its values, borrowed: no composite key
//! value is built, cloned or hashed twice. An item remembers its bucket's
//! number and its position in it, so removing it probes nothing. Token memories keep a copy of each bucket's key to compare with;
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

/// Where an item is: its bucket and its position there.
pub type Place = (u32, u32);

pub struct Index<K> {
    /// Bucket numbers by hash: a compact table to probe.
    table: HashTable<u32>,
    /// Buckets by number, reused once emptied: an item's bucket is found
    /// without probing the table.
    buckets: Vec<Bucket<K>>,
    free: Vec<u32>,
    /// Whether emptied buckets stay: a memory without a join key has one
    /// bucket, emptied and refilled whenever its tokens are rebuilt, and
    /// keeping it keeps its capacity.
    keep_empty: bool,
    /// Items in all buckets.
    len: usize,
}

impl<K: Default> Index<K> {
    pub fn new(keep_empty: bool) -> Index<K> {
        Index { table: HashTable::new(), buckets: Vec::new(), free: Vec::new(), keep_empty, len: 0 }
    }

    /// Whether no bucket holds an item.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn find(&self, hash: u64, eq: impl Fn(&K, Option<u32>) -> bool) -> Option<u32> {
        let buckets = &self.buckets;
        self.table
            .find(hash, |&i| {
                let b = &buckets[i as usize];
                b.hash == hash && eq(&b.key, b.items.first().copied())
            })
            .copied()
    }

    fn push(&mut self, bucket: Option<u32>, hash: u64, make: impl FnOnce() -> K, item: u32) -> Place {
        self.len += 1;
        if let Some(i) = bucket {
            let items = &mut self.buckets[i as usize].items;
            items.push(item);
            return (i, (items.len() - 1) as u32);
        }
        let mut items = SmallVec::new();
        items.push(item);
        let b = Bucket { hash, key: make(), items };
        let i = match self.free.pop() {
            Some(i) => {
                self.buckets[i as usize] = b;
                i
            }
            None => {
                self.buckets.push(b);
                (self.buckets.len() - 1) as u32
            }
        };
        let buckets = &self.buckets;
        self.table.insert_unique(hash, i, |&j| buckets[j as usize].hash);
        (i, 0)
    }

    /// Adds `item` to the bucket of hash `hash` for which `eq(key, first
    /// item)` holds (no first item: a kept empty bucket), or to a new one
    /// keyed `make()`.
    pub fn insert_with(
        &mut self,
        hash: u64,
        eq: impl Fn(&K, Option<u32>) -> bool,
        make: impl FnOnce() -> K,
        item: u32,
    ) -> Place {
        let bucket = self.find(hash, eq);
        self.push(bucket, hash, make, item)
    }

    /// The items of the bucket of hash `hash` for which `eq` holds.
    pub fn get_with(&self, hash: u64, eq: impl Fn(&K, Option<u32>) -> bool) -> &[u32] {
        self.find(hash, eq).map_or(&[], |i| &self.buckets[i as usize].items)
    }

    /// Removes `item` from its place; returns the item moved into its
    /// position (whose place the caller updates).
    pub fn remove(&mut self, (bucket, pos): Place, item: u32) -> Option<u32> {
        let b = &mut self.buckets[bucket as usize];
        debug_assert_eq!(b.items.get(pos as usize), Some(&item), "an indexed item is in its place");
        b.items.swap_remove(pos as usize);
        self.len -= 1;
        let moved = b.items.get(pos as usize).copied();
        if b.items.is_empty() && !self.keep_empty {
            let hash = b.hash;
            b.key = K::default();
            b.items = SmallVec::new();
            match self.table.find_entry(hash, |&i| i == bucket) {
                Ok(entry) => {
                    entry.remove();
                }
                Err(_) => unreachable!("a bucket is in the table"),
            }
            self.free.push(bucket);
        }
        moved
    }
}

impl Index<Key> {
    /// Adds `item` under `key` (whose hash is `hash`), keeping `key` itself
    /// if it starts a bucket.
    pub fn insert_owned(&mut self, hash: u64, key: Key, item: u32) -> Place {
        let bucket = self.find(hash, |k, _| *k == key);
        self.push(bucket, hash, || key, item)
    }

    /// The items under `key`.
    pub fn get<V: Borrow<Value>>(&self, hash: u64, key: &[V]) -> &[u32] {
        self.get_with(hash, |k, _| same(k, key))
    }
}
