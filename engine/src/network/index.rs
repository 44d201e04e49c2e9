//! The hash index of a memory: items (tokens or fact slots) grouped by the
//! values of a join key.
//!
//! An index keeps no copy of its keys: the items of a bucket all have the
//! same key, so a bucket is compared through its first item (a fact's
//! fields, a token's bindings), which the caller's `eq` reads. A key is
//! hashed once, from borrowed values, and never cloned. An item remembers
//! its bucket's number and its position in it, so removing it probes
//! nothing.

use std::borrow::{Borrow, Cow};
use std::hash::{Hash, Hasher};

use hashbrown::HashTable;
use rustc_hash::FxHasher;
use smallvec::SmallVec;
use stoa_rules::Value;

/// Join-key values, in the order of the pattern's joins, borrowed where
/// they can be: up to three need no heap allocation.
pub type Key<'a> = SmallVec<[Cow<'a, Value>; 3]>;

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
    items: SmallVec<[u32; 2]>,
}

/// Where an item is: its bucket and its position there.
pub type Place = (u32, u32);

pub struct Index {
    /// Bucket numbers by hash: a compact table to probe.
    table: HashTable<u32>,
    /// Buckets by number, reused once emptied (lowest first, as tokens are:
    /// see `slots`): an item's bucket is found without probing the table.
    buckets: Vec<Bucket>,
    free: super::slots::FreeSlots,
    /// Whether the memory has no join key: then its one bucket is bucket
    /// 0, found without hashing or comparing, and kept when emptied (its
    /// tokens are rebuilt whenever an earlier condition changes, and keeping
    /// it keeps its capacity).
    keyless: bool,
    /// Items in all buckets.
    len: usize,
}

impl Index {
    pub fn new(keyless: bool) -> Index {
        Index { table: HashTable::new(), buckets: Vec::new(), free: Default::default(), keyless, len: 0 }
    }

    /// Whether no bucket holds an item.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bucket of hash `hash` for which `eq(first item)` holds. A keyless
    /// memory's one bucket needs no comparison, and a keyed memory keeps no
    /// empty bucket, so `eq` always has an item to read.
    pub fn find(&self, hash: u64, eq: impl Fn(u32) -> bool) -> Option<u32> {
        if self.keyless {
            return (!self.buckets.is_empty()).then_some(0);
        }
        let buckets = &self.buckets;
        self.table
            .find(hash, |&i| {
                let b = &buckets[i as usize];
                b.hash == hash && b.items.first().is_some_and(|&first| eq(first))
            })
            .copied()
    }

    /// Adds `item` to `bucket` (found by `find`), or to a new bucket.
    pub fn push(&mut self, bucket: Option<u32>, hash: u64, item: u32) -> Place {
        self.len += 1;
        if let Some(i) = bucket {
            let items = &mut self.buckets[i as usize].items;
            items.push(item);
            return (i, (items.len() - 1) as u32);
        }
        let mut items = SmallVec::new();
        items.push(item);
        let b = Bucket { hash, items };
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
        if !self.keyless {
            let buckets = &self.buckets;
            self.table.insert_unique(hash, i, |&j| buckets[j as usize].hash);
        }
        (i, 0)
    }

    /// Adds `item` to the bucket that `find` gives, or to a new one.
    pub fn insert_with(&mut self, hash: u64, eq: impl Fn(u32) -> bool, item: u32) -> Place {
        let bucket = self.find(hash, eq);
        self.push(bucket, hash, item)
    }

    /// The items of the bucket that `find` gives.
    pub fn get_with(&self, hash: u64, eq: impl Fn(u32) -> bool) -> &[u32] {
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
        if b.items.is_empty() && !self.keyless {
            let hash = b.hash;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_whose_keys_share_a_hash_keep_apart() {
        // Keys are compared through a bucket's first item: 1 and 3 have key
        // "odd", 2 has key "even", all three the same (forced) hash.
        let key = |item: u32| item % 2;
        let mut ix = Index::new(false);
        let same_key = |k: u32| move |first: u32| key(first) == k;
        let p1 = ix.insert_with(7, same_key(1), 1);
        let p2 = ix.insert_with(7, same_key(0), 2);
        let p3 = ix.insert_with(7, same_key(1), 3);
        assert_eq!(ix.get_with(7, same_key(1)), &[1, 3]);
        assert_eq!(ix.get_with(7, same_key(0)), &[2]);
        assert_ne!(p1.0, p2.0);
        assert_eq!(p3, (p1.0, 1));
        // Removing the first item moves the last into its place.
        assert_eq!(ix.remove(p1, 1), Some(3));
        assert_eq!(ix.remove(p2, 2), None);
        assert_eq!(ix.get_with(7, same_key(0)), &[] as &[u32]);
        assert_eq!(ix.get_with(7, same_key(1)), &[3]);
        assert!(!ix.is_empty());
    }
}
