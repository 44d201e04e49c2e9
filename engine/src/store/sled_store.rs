//! The embedded store on sled 0.34.
//!
//! One tree, keys prefixed by record kind and workflow id:
//! `m/<wf>` meta, `f/<wf>/<fact id hex>` facts, `w/<wf>/<inv>` waiting
//! activations, `t/<wf>/<seq hex>` timeline, `o/<inv>` outbox,
//! `r/<request id>` idempotent starts, `x/<kind>/<key>` server records. A group of turns is one sled batch
//! (atomic) followed by one flush (durable): sled syncs only on flush.

use std::path::Path;

use crate::fact::{InvocationId, WorkflowId};
use crate::timeline::Entry;
use crate::workflow::{Invocation, Meta, Snapshot, Waiting};

use super::codec::{decode, encode};
use super::{Commit, Error, PackRecord, Record, Store};

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
        let config = sled::Config::new().path(dir).cache_capacity(cache_mb * 1024 * 1024).flush_every_ms(None);
        // The lock of a store closed a moment ago (by this process's
        // background threads, or a process that is exiting) is released
        // shortly; wait for it a little instead of failing at once.
        let mut tries = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(io(e)),
            }
        };
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

    /// Records from `start` on, while their keys have `prefix`, at most `limit`.
    fn range<T: serde::de::DeserializeOwned>(
        &self,
        start: Vec<u8>,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<T>, Error> {
        self.tree
            .range(start..)
            .take_while(|kv| kv.as_ref().map(|(k, _)| k.starts_with(prefix)).unwrap_or(true))
            .take(limit)
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

    fn workflows(&self, prefix: &str, after: Option<&WorkflowId>, limit: usize) -> Result<Vec<Meta>, Error> {
        let start = match after {
            // The first key after `m/<after>`.
            Some(a) => {
                let mut k = key(&["m", a.as_str()]);
                k.push(0);
                k
            }
            None => key(&["m", prefix]),
        };
        self.range(start, &key(&["m", prefix]), limit)
    }

    fn put_pack(&self, pack: &PackRecord) -> Result<(), Error> {
        let k = key(&["p", &pack.tenant, &pack.name, &format!("{:016x}", pack.seq)]);
        self.tree.insert(k, encode(pack)).map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }

    fn packs(&self, tenant: &str) -> Result<Vec<PackRecord>, Error> {
        self.scan(&key(&["p", tenant, ""]))
    }

    fn timeline(&self, id: &WorkflowId, from: u64, limit: usize) -> Result<Vec<Entry>, Error> {
        self.range(key(&["t", id.as_str(), &format!("{from:016x}")]), &key(&["t", id.as_str(), ""]), limit)
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

    fn put_records(&self, records: &[Record<'_>]) -> Result<(), Error> {
        let mut batch = sled::Batch::default();
        for r in records {
            let k = key(&["x", r.kind, r.key]);
            match r.value {
                Some(v) => batch.insert(k, encode(v)),
                None => batch.remove(k),
            }
        }
        self.tree.apply_batch(batch).map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }

    fn records(&self, kind: &str) -> Result<Vec<(String, serde_json::Value)>, Error> {
        let prefix = key(&["x", kind, ""]);
        self.tree
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv.map_err(io)?;
                let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                Ok((name, decode(&k, &v)?))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pack;
    use crate::workflow::{Input, Outcome, Workflow};
    use stoa_rules::testcase::FactSpec;
    use stoa_rules::Value;

    const RULES: &str = r#"
rule "encode" {
    match { c: Chunk(status == "pending") }
    action { modify(c, #{ status: "encoding" }); call("media.encode", #{ i: c.i }); }
    reaction { modify(c, #{ status: "done" }); insert("Output", #{ i: c.i }); }
}
rule "all done" {
    match { not Chunk(status != "done") n: count(Output()) test(n > 0) }
    action { complete(#{ outputs: n }); }
}
"#;

    fn chunks(n: i64) -> Vec<FactSpec> {
        (0..n)
            .map(|i| {
                serde_json::from_value(serde_json::json!({"type": "Chunk", "fields": {"i": i, "status": "pending"}}))
                    .unwrap()
            })
            .collect()
    }

    fn ok() -> Outcome {
        Outcome::Ok { value: Value::Null, attempts: 1 }
    }

    fn commit(store: &SledStore, wf: &Workflow, out: &crate::workflow::TurnOutput) {
        store.commit(&[Commit { workflow: wf.id(), output: out, request_id: None }]).unwrap();
    }

    #[test]
    fn reopening_restores_the_workflow_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let p = pack(RULES, "");
        let id = WorkflowId::new("w1");
        let mut live = Workflow::new(id.clone(), p.clone(), 0);
        {
            let store = SledStore::open(dir.path(), 8).unwrap();
            let out = live.apply(Input::Start { facts: chunks(5) }, 1).unwrap();
            commit(&store, &live, &out);
            let first = out.invocations[0].id.clone();
            let out = live.apply(Input::Result { invocation: first.clone(), outcome: ok() }, 2).unwrap();
            commit(&store, &live, &out);
            // The same answer again is refused: exactly-once application.
            assert!(matches!(
                live.apply(Input::Result { invocation: first, outcome: ok() }, 3),
                Err(crate::workflow::Rejected::UnknownInvocation(_))
            ));
        }
        let store = SledStore::open(dir.path(), 8).unwrap();
        let snap = store.load(&id).unwrap().unwrap();
        assert_eq!(snap.meta, *live.meta());
        assert_eq!(snap.facts, live.snapshot().facts);
        assert_eq!(snap.waiting, live.snapshot().waiting);
        assert_eq!(store.outbox().unwrap().len(), 4);
        assert_eq!(store.timeline(&id, 1, 1000).unwrap().len() as u64, live.meta().timeline_seq);
        let mut restored = Workflow::restore(p, snap).unwrap();
        // Both go on identically: same firings, same ids, nothing re-fires.
        let pending: Vec<_> = live.waiting().map(|w| w.invocation.id.clone()).collect();
        for (k, inv) in pending.into_iter().enumerate() {
            let a = live.apply(Input::Result { invocation: inv.clone(), outcome: ok() }, 10 + k as u64).unwrap();
            let b = restored.apply(Input::Result { invocation: inv, outcome: ok() }, 10 + k as u64).unwrap();
            assert_eq!(a.entries, b.entries);
            commit(&store, &restored, &b);
        }
        assert_eq!(restored.status(), crate::workflow::Status::Completed);
        assert_eq!(restored.meta().result.to_string(), r#"{"outputs":5}"#);
        assert!(store.outbox().unwrap().is_empty());
    }

    #[test]
    fn server_records_survive_reopening_and_stay_in_their_kind() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (serde_json::json!({"n": 1}), serde_json::json!({"n": 2}));
        {
            let store = SledStore::open(dir.path(), 8).unwrap();
            let put = |kind, key, value| Record { kind, key, value };
            store
                .put_records(&[
                    put("sched", "t/a", Some(&a)),
                    put("sched", "t/b", Some(&b)),
                    put("other", "t/a", Some(&b)),
                ])
                .unwrap();
            store.put_records(&[put("sched", "t/b", None)]).unwrap();
        }
        let store = SledStore::open(dir.path(), 8).unwrap();
        assert_eq!(store.records("sched").unwrap(), vec![("t/a".to_string(), a)]);
        assert_eq!(store.records("other").unwrap().len(), 1);
    }

    #[test]
    fn retracting_a_bound_fact_cancels_its_invocation() {
        let p = pack(RULES, "");
        let mut wf = Workflow::new(WorkflowId::new("w2"), p, 0);
        let out = wf.apply(Input::Start { facts: chunks(2) }, 1).unwrap();
        let inv = out.invocations.iter().find(|i| i.args.to_string() == r#"{"i":0}"#).unwrap().id.clone();
        let out = wf.apply(Input::Retract { ids: vec![1] }, 2).unwrap();
        assert_eq!(out.cancelled, vec![inv.clone()]);
        assert_eq!(out.waiting_deleted, vec![inv.clone()]);
        let lines: Vec<String> = out.entries.iter().map(|e| e.line()).collect();
        assert!(
            lines.iter().any(|l| l.contains("cancel") && l.contains("fact f1 it waited on was retracted")),
            "{lines:?}"
        );
        // Its late answer changes nothing.
        assert!(wf.apply(Input::Result { invocation: inv, outcome: ok() }, 3).is_err());
    }
}
