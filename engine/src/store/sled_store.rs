//! The embedded store on sled 0.34.
//!
//! One tree, keys prefixed by record kind and workflow id:
//! `m/<wf>` meta, `f/<wf>/<fact id hex>` facts, `w/<wf>/<inv>` waiting
//! activations, `t/<wf>/<seq hex>` timeline, `o/<inv>` outbox,
//! `r/<request id>` idempotent starts. A group of turns is one sled batch
//! (atomic) followed by one flush (durable): sled syncs only on flush.

use std::path::Path;

use crate::fact::{InvocationId, WorkflowId};
use crate::timeline::Entry;
use crate::workflow::{Invocation, Meta, Snapshot, Waiting};

use super::codec::{decode, encode};
use super::{Commit, Error, Store};

pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
}

fn io(e: sled::Error) -> Error {
    Error::Io(e.to_string())
}

fn key(parts: &[&str]) -> Vec<u8> {
    parts.join("/").into_bytes()
}

impl SledStore {
    /// Opens (or creates) the store in `dir`. `cache_mb` bounds sled's page
    /// cache (its default is 1 GiB).
    pub fn open(dir: &Path, cache_mb: u64) -> Result<SledStore, Error> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_mb * 1024 * 1024)
            .flush_every_ms(None)
            .open()
            .map_err(io)?;
        let tree = db.open_tree("stoa.v1").map_err(io)?;
        Ok(SledStore { db, tree })
    }

    fn scan<T: serde::de::DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<T>, Error> {
        self.tree
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv.map_err(io)?;
                decode(&k, &v)
            })
            .collect()
    }

    /// Bytes on disk (sled's estimate).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

impl Store for SledStore {
    fn commit(&self, turns: &[Commit<'_>]) -> Result<(), Error> {
        let mut batch = sled::Batch::default();
        for c in turns {
            let wf = c.workflow.as_str();
            let out = c.output;
            if let Some(meta) = &out.meta {
                batch.insert(key(&["m", wf]), encode(meta));
            }
            for f in &out.facts_put {
                batch.insert(key(&["f", wf, &format!("{:016x}", f.id)]), encode(f));
            }
            for id in &out.facts_deleted {
                batch.remove(key(&["f", wf, &format!("{id:016x}")]));
            }
            for w in &out.waiting_put {
                batch.insert(key(&["w", wf, w.invocation.id.as_str()]), encode(w));
            }
            for inv in out.waiting_deleted.iter().chain(&out.cancelled) {
                batch.remove(key(&["w", wf, inv.as_str()]));
                batch.remove(key(&["o", inv.as_str()]));
            }
            for inv in &out.invocations {
                if !out.cancelled.contains(&inv.id) {
                    batch.insert(key(&["o", inv.id.as_str()]), encode(inv));
                }
            }
            for e in &out.entries {
                batch.insert(key(&["t", wf, &format!("{:016x}", e.seq)]), encode(e));
            }
            if let Some(r) = c.request_id {
                batch.insert(key(&["r", r]), encode(&c.workflow));
            }
        }
        self.tree.apply_batch(batch).map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }

    fn load(&self, id: &WorkflowId) -> Result<Option<Snapshot>, Error> {
        let wf = id.as_str();
        let mk = key(&["m", wf]);
        let Some(meta) = self.tree.get(&mk).map_err(io)? else {
            return Ok(None);
        };
        let meta: Meta = decode(&mk, &meta)?;
        let facts = self.scan(&key(&["f", wf, ""]))?;
        let waiting: Vec<Waiting> = self.scan(&key(&["w", wf, ""]))?;
        Ok(Some(Snapshot { meta, facts, waiting }))
    }

    fn workflows(&self) -> Result<Vec<Meta>, Error> {
        self.scan(b"m/")
    }

    fn timeline(&self, id: &WorkflowId, from: u64, limit: usize) -> Result<Vec<Entry>, Error> {
        let start = key(&["t", id.as_str(), &format!("{from:016x}")]);
        let prefix = key(&["t", id.as_str(), ""]);
        self.tree
            .range(start..)
            .take_while(|kv| kv.as_ref().map(|(k, _)| k.starts_with(&prefix)).unwrap_or(true))
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(io)?;
                decode(&k, &v)
            })
            .collect()
    }

    fn outbox(&self) -> Result<Vec<Invocation>, Error> {
        self.scan(b"o/")
    }

    fn request(&self, request_id: &str) -> Result<Option<WorkflowId>, Error> {
        let k = key(&["r", request_id]);
        match self.tree.get(&k).map_err(io)? {
            Some(v) => Ok(Some(decode(&k, &v)?)),
            None => Ok(None),
        }
    }

    fn pending(&self, id: &InvocationId) -> Result<bool, Error> {
        self.tree.contains_key(key(&["o", id.as_str()])).map_err(io)
    }
}
