//! The embedded store on sled 0.34.
//!
//! One tree holds the records of `layout` and `h/probe`, the healer's last
//! probe; a tree of its own, the journal of a large commit. A group of
//! turns is written in batches of whole turns (each atomic; sled recovers
//! a prefix of its log, so a crash keeps a prefix of the group, which
//! nobody was told of yet) followed by one flush (durable): sled syncs
//! only on flush.
//!
//! Memory, measured: sled keeps every page version a batch replaces until
//! the batch ends, so a batch costs about 4.5 KiB per record written,
//! whatever the record's size (70,000 records of 20 or 170 bytes: 300 and
//! 337 MiB; the same in batches of 1,000: 33 MiB). Hence few records per
//! turn (the timeline in runs, no separate outbox) and a bound on the
//! records of one batch: a larger turn is written first as one journal
//! record (durable and atomic), then applied in bounded batches, and
//! replayed from the journal if the process dies in between. The journal
//! has its own tree because sled rewrites a whole leaf, big values included,
//! whenever a key of it changes.
//!
//! Healing: sled 0.34 keeps the first I/O error of a write or flush (a full
//! disk) as a global error of the open database, and every later write and
//! flush, and reads that miss its cache, fail with it, even once the cause
//! is gone; only a new open clears it. So the first failed operation marks
//! the store failing: every operation then fails at once with
//! `Error::Io` (what sled still holds in memory may include writes that
//! never became durable, which no reader may see), watchers are told
//! (`on_health`), and the store's healer thread closes the database and
//! opens it again, with backoff, until a probe write and flush succeed.
//! sled's recovery brings back every flushed write, so every commit that
//! returned `Ok` is there again; a commit that failed may or may not be.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::fact::{InvocationId, WorkflowId};
use crate::timeline::Entry;
use crate::workflow::{Invocation, Meta, Snapshot, Timer, Waiting};

use super::codec::{decode, encode, FORMAT};
use super::index::{self, Counts, Family, ListCounts, ListQuery};
use super::layout::{batches, count_writes, decode_run, each_write, finished_id, finished_key, key, workflow_prefixes};
use super::{Attempts, Commit, Error, Health, HealthWatcher, PackRecord, Parts, Store};

/// Records written by one sled batch at most (see the module comment).
const MAX_BATCH_WRITES: usize = 1024;

/// The first pause of the healer, after a failure, before it reopens the
/// database; doubled after each failed attempt up to `HEAL_MAX_DELAY`.
/// Reopening is cheap (10 to 70 ms for a store of a few MiB, measured),
/// but a large store replays more of its log.
const HEAL_FIRST_DELAY: Duration = Duration::from_millis(100);
const HEAL_MAX_DELAY: Duration = Duration::from_secs(2);
/// The key the healer writes to prove the store can write and flush again.
const PROBE_KEY: &[u8] = b"h/probe";

pub struct SledStore {
    shared: Arc<Shared>,
    /// Sleeps until the store fails, then reopens it; stopped and joined on
    /// drop, so that the database is closed (its lock released) when the
    /// store is.
    healer: Option<JoinHandle<()>>,
}

/// What the store and its healer share.
struct Shared {
    dir: PathBuf,
    cache_mb: u64,
    /// `None` while the healer reopens the database.
    handles: RwLock<Option<Handles>>,
    /// Set by the first failed operation, cleared once healed.
    failing: AtomicBool,
    /// The error that made the store fail, for the message of the
    /// operations refused meanwhile.
    cause: Mutex<String>,
    /// `true` once the store is dropped; the healer waits on `wake`.
    closed: Mutex<bool>,
    wake: Condvar,
    watchers: Mutex<Vec<HealthWatcher>>,
    /// Held by the writers of the list index's counts (commits and
    /// retention's deletes), which read them, then write them.
    index: Mutex<()>,
    /// Heal attempts that fail on purpose (tests of the backoff).
    #[cfg(test)]
    refuse_heals: std::sync::atomic::AtomicU32,
}

/// The open database: replaced whole when the store heals, since every
/// `Tree` of a database holds it open.
struct Handles {
    db: sled::Db,
    tree: sled::Tree,
    journal: sled::Tree,
    next_journal: AtomicU64,
}

fn io(e: sled::Error) -> Error {
    Error::Io(e.to_string())
}

/// The journal of a large commit: the format byte, then per write the key
/// length (u32 LE), the key, then 0 for a removal, or 1, the value length
/// (u32 LE) and the value. Written by hand: the records inside are already
/// encoded, and a generic codec would only wrap them again.
fn push_write(journal: &mut Vec<u8>, k: &[u8], v: Option<&[u8]>) {
    journal.extend_from_slice(&(k.len() as u32).to_le_bytes());
    journal.extend_from_slice(k);
    match v {
        None => journal.push(0),
        Some(v) => {
            journal.push(1);
            journal.extend_from_slice(&(v.len() as u32).to_le_bytes());
            journal.extend_from_slice(v);
        }
    }
}

/// The writes of a journal, borrowed from it.
type JournalWrites<'a> = Vec<(&'a [u8], Option<&'a [u8]>)>;

fn decode_journal<'a>(jkey: &[u8], bytes: &'a [u8]) -> Result<JournalWrites<'a>, Error> {
    let corrupt =
        |reason: &str| Error::Corrupt { key: String::from_utf8_lossy(jkey).into_owned(), reason: reason.into() };
    match bytes.first() {
        Some(&FORMAT) => {}
        Some(&found) => {
            return Err(Error::Version { key: String::from_utf8_lossy(jkey).into_owned(), found, expected: FORMAT })
        }
        None => return Err(corrupt("empty journal")),
    }
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if rest.len() < n {
            return None;
        }
        let (a, b) = rest.split_at(n);
        *rest = b;
        Some(a)
    }
    fn len(rest: &mut &[u8]) -> Option<usize> {
        Some(u32::from_le_bytes(take(rest, 4)?.try_into().ok()?) as usize)
    }
    let mut rest = &bytes[1..];
    let mut writes = Vec::new();
    while !rest.is_empty() {
        let write = (|| {
            let klen = len(&mut rest)?;
            let k = take(&mut rest, klen)?;
            let v = match take(&mut rest, 1)?[0] {
                0 => None,
                1 => {
                    let vlen = len(&mut rest)?;
                    Some(take(&mut rest, vlen)?)
                }
                _ => return None,
            };
            Some((k, v))
        })();
        writes.push(write.ok_or_else(|| corrupt("truncated or malformed journal"))?);
    }
    Ok(writes)
}

impl Handles {
    /// Opens the database in `dir`, completing a journal a crash or a
    /// failure left behind. `stop` ends the wait for sled's lock early.
    fn open(dir: &Path, cache_mb: u64, stop: &dyn Fn() -> bool) -> Result<Handles, Error> {
        let config = sled::Config::new().path(dir).cache_capacity(cache_mb * 1024 * 1024).flush_every_ms(None);
        // The lock of a store closed a moment ago (by this process's
        // background threads, or a process that is exiting) is released
        // shortly; wait for it a little instead of failing at once. sled
        // reports a held lock as an `Other` error with this message (the
        // `WouldBlock` is only in its text).
        let mut tries = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                    if tries == 0 {
                        tracing::warn!(dir = %dir.display(), "the data directory is locked; waiting up to 10 s for it");
                    }
                    if tries == 500 || stop() {
                        return Err(Error::Io(format!(
                            "{}: the data directory is locked by another process (is another `stoa serve` or \
                             `stoa run --data` using it?)",
                            dir.display()
                        )));
                    }
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(io(e)),
            }
        };
        let tree = db.open_tree("stoa.v1").map_err(io)?;
        let journal = db.open_tree("stoa.v1.journal").map_err(io)?;
        let h = Handles { db, tree, journal, next_journal: AtomicU64::new(0) };
        let journals: Vec<(sled::IVec, sled::IVec)> = h.journal.iter().collect::<Result<_, _>>().map_err(io)?;
        for (k, v) in journals {
            tracing::info!("completing a large commit cut short");
            h.apply_in_batches(&decode_journal(&k, &v)?, &k)?;
        }
        if h.tree.get(index::MARKER).map_err(io)?.is_none() {
            h.build_index()?;
        }
        h.db.flush().map_err(io)?;
        Ok(h)
    }

    /// Builds the list index from the metas, for a store an older build
    /// wrote. From scratch each time (a build a crash cut short left no
    /// marker), in bounded batches; the marker goes with the counts, last.
    fn build_index(&self) -> Result<(), Error> {
        let metas = self.tree.scan_prefix(b"m/").count();
        if metas > 0 {
            tracing::info!(workflows = metas, "building the workflow list index");
        }
        let mut batch = sled::Batch::default();
        let mut writes = 0;
        for prefix in [&b"l/"[..], b"n/"] {
            for k in self.tree.scan_prefix(prefix).keys() {
                batch.remove(k.map_err(io)?);
                writes += 1;
                if writes == MAX_BATCH_WRITES {
                    self.tree.apply_batch(std::mem::take(&mut batch)).map_err(io)?;
                    writes = 0;
                }
            }
        }
        let mut counts: std::collections::BTreeMap<Vec<u8>, u64> = Default::default();
        for kv in self.tree.scan_prefix(b"m/") {
            let (k, v) = kv.map_err(io)?;
            let meta: Meta = decode(&k, &v)?;
            let wf = meta.id.as_str();
            let has = |kind: &str| -> Result<bool, Error> {
                Ok(self.tree.scan_prefix(key(&[kind, wf, ""])).next().transpose().map_err(io)?.is_some())
            };
            let (waiting, timers) = (has("w")?, has("c")?);
            let meta = index::with_stored_waits(meta, waiting, timers);
            for (rec, count) in index::placement(&meta) {
                batch.insert(rec, encode(&()));
                *counts.entry(count).or_default() += 1;
                writes += 1;
            }
            if writes >= MAX_BATCH_WRITES {
                self.tree.apply_batch(std::mem::take(&mut batch)).map_err(io)?;
                self.db.flush().map_err(io)?;
                writes = 0;
            }
        }
        self.tree.apply_batch(std::mem::take(&mut batch)).map_err(io)?;
        for (k, n) in counts {
            batch.insert(k, encode(&n));
        }
        batch.insert(index::MARKER, encode(&index::VERSION));
        self.tree.apply_batch(batch).map_err(io)?;
        Ok(())
    }

    fn stored_meta(&self, id: &WorkflowId) -> Result<Option<Meta>, Error> {
        let mk = key(&["m", id.as_str()]);
        self.tree.get(&mk).map_err(io)?.map(|v| decode(&mk, &v)).transpose()
    }

    /// Where the stored meta of a workflow has it filed in the list index.
    fn stored_filing(&self, id: &WorkflowId) -> Result<Option<index::Filed>, Error> {
        let mk = key(&["m", id.as_str()]);
        self.tree.get(&mk).map_err(io)?.map(|v| decode(&mk, &v)).transpose()
    }

    /// Writes a group of whole turns atomically, with their list index
    /// writes. Those are known only once the stored metas are read (most
    /// turns have none), so a group they take past the bound is split in
    /// halves, each read again after the one before it applied; a single
    /// turn past it goes through the journal.
    fn commit_group(&self, group: &[Commit<'_>]) -> Result<(), Error> {
        // Read before the batch applies: where each workflow was filed.
        let mut filing = Vec::new();
        index::index_writes(group, |id| self.stored_filing(id), |k| self.count(k), |k, v| filing.push((k, v)))?;
        let writes = count_writes(group) + filing.len();
        if writes <= MAX_BATCH_WRITES {
            let mut batch = sled::Batch::default();
            let mut put = |k: Vec<u8>, v: Option<Vec<u8>>| match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            };
            filing.into_iter().for_each(|(k, v)| put(k, v));
            each_write(group, &mut put);
            return self.tree.apply_batch(batch).map_err(io);
        }
        if group.len() > 1 {
            let (a, b) = group.split_at(group.len() / 2);
            self.commit_group(a)?;
            return self.commit_group(b);
        }
        // One turn past the bound: durable and atomic once the journal is
        // flushed; the batches after it only spread the writes out.
        let mut journal = vec![FORMAT];
        for (k, v) in &filing {
            push_write(&mut journal, k, v.as_deref());
        }
        each_write(group, |k, v| push_write(&mut journal, &k, v.as_deref()));
        let journal = sled::IVec::from(journal);
        let jkey = self.next_journal.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        self.journal.insert(jkey, journal.clone()).map_err(io)?;
        self.db.flush().map_err(io)?;
        self.apply_in_batches(&decode_journal(&jkey, &journal)?, &jkey)
    }

    fn count(&self, k: &[u8]) -> Result<u64, Error> {
        index::decode_count(k, self.tree.get(k).map_err(io)?.as_deref())
    }

    /// A write and a flush: whether the store can write again.
    fn probe(&self) -> Result<(), Error> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.tree.insert(PROBE_KEY, &now.as_millis().to_be_bytes()).map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }

    /// Applies `writes` in bounded batches, then removes the journal record
    /// `jkey`. Not atomic by itself: the journal is. Replaying it again is
    /// harmless, since nothing else writes until it is removed, and sled
    /// recovers a prefix of its log, so the removal is durable before any
    /// later commit is.
    fn apply_in_batches(&self, writes: &JournalWrites<'_>, jkey: &[u8]) -> Result<(), Error> {
        for chunk in writes.chunks(MAX_BATCH_WRITES) {
            let mut batch = sled::Batch::default();
            for &(k, v) in chunk {
                match v {
                    Some(v) => batch.insert(k, v),
                    None => batch.remove(k),
                }
            }
            self.tree.apply_batch(batch).map_err(io)?;
            // Written out, sled frees the batch's buffers before the next.
            self.db.flush().map_err(io)?;
        }
        self.journal.remove(jkey).map_err(io)?;
        Ok(())
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
}

impl SledStore {
    /// Opens (or creates) the store in `dir`. `cache_mb` bounds sled's page
    /// cache (its default is 1 GiB). A large commit cut short by a crash is
    /// completed from its journal here.
    pub fn open(dir: &Path, cache_mb: u64) -> Result<SledStore, Error> {
        let handles = Handles::open(dir, cache_mb, &|| false)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            cache_mb,
            handles: RwLock::new(Some(handles)),
            failing: AtomicBool::new(false),
            cause: Mutex::new(String::new()),
            closed: Mutex::new(false),
            wake: Condvar::new(),
            watchers: Mutex::new(Vec::new()),
            index: Mutex::new(()),
            #[cfg(test)]
            refuse_heals: Default::default(),
        });
        let healer = std::thread::Builder::new()
            .name("stoa-store-healer".into())
            .spawn({
                let shared = shared.clone();
                move || shared.heal_when_failing()
            })
            .map_err(|e| Error::Io(format!("starting the store's healer: {e}")))?;
        Ok(SledStore { shared, healer: Some(healer) })
    }

    /// Runs `f` on the open database, unless the store is failing; a sled
    /// error from `f` makes it fail (and heal).
    fn with<T>(&self, f: impl FnOnce(&Handles) -> Result<T, Error>) -> Result<T, Error> {
        let s = &*self.shared;
        if s.failing.load(Ordering::Acquire) {
            return Err(s.refused());
        }
        let (r, failed) = {
            let g = s.handles.read().unwrap_or_else(PoisonError::into_inner);
            let Some(h) = g.as_ref() else { return Err(s.refused()) };
            let r = f(h);
            // Marked while the handles are held: the healer cannot have
            // replaced them with ones this error says nothing about.
            let failed = match &r {
                Err(Error::Io(e)) => s.fail(e),
                _ => false,
            };
            (r, failed)
        };
        if failed {
            s.notify();
        }
        r
    }

    /// Bytes on disk (sled's estimate).
    pub fn size_on_disk(&self) -> u64 {
        self.with(|h| h.db.size_on_disk().map_err(io)).unwrap_or(0)
    }
}

impl Shared {
    fn health(&self) -> Health {
        if self.failing.load(Ordering::Acquire) {
            Health::Failing
        } else {
            Health::Serving
        }
    }

    /// Marks the store failing; `true` if it was not already.
    fn fail(&self, cause: &str) -> bool {
        if self.failing.swap(true, Ordering::AcqRel) {
            return false;
        }
        tracing::error!(error = %cause, "storage failed; refusing operations until it heals");
        *self.cause.lock().unwrap_or_else(PoisonError::into_inner) = cause.to_string();
        // Under the healer's lock, so that it cannot miss the wake-up
        // between testing `failing` and waiting.
        let _closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
        self.wake.notify_all();
        true
    }

    /// The error of an operation refused while the store fails.
    fn refused(&self) -> Error {
        let cause = self.cause.lock().unwrap_or_else(PoisonError::into_inner);
        Error::Io(format!("storage is failing and healing itself (after: {cause})"))
    }

    /// Tells the watchers the health now. Serialized, and the state read
    /// under their lock: a late report can repeat a state, never undo a
    /// newer one.
    fn notify(&self) {
        let watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        let health = self.health();
        for w in watchers.iter() {
            w(health);
        }
    }

    fn is_closed(&self) -> bool {
        *self.closed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The healer: waits for a failure, then reopens the database with
    /// backoff until it works, until the store is dropped.
    fn heal_when_failing(&self) {
        loop {
            {
                let mut closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
                while !*closed && !self.failing.load(Ordering::Acquire) {
                    closed = self.wake.wait(closed).unwrap_or_else(PoisonError::into_inner);
                }
                if *closed {
                    return;
                }
            }
            let since = Instant::now();
            let mut delay = HEAL_FIRST_DELAY;
            let mut attempts = 0u32;
            loop {
                // Let the operations under way fail out first.
                {
                    let closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
                    let (closed, _) = self
                        .wake
                        .wait_timeout_while(closed, delay, |closed| !*closed)
                        .unwrap_or_else(PoisonError::into_inner);
                    if *closed {
                        return;
                    }
                }
                attempts += 1;
                // sled can panic while closing a database it cannot sync.
                let healed = std::panic::catch_unwind(AssertUnwindSafe(|| self.reopen()))
                    .unwrap_or_else(|_| Err(Error::Io("reopening the store panicked".into())));
                match healed {
                    Ok(()) => break,
                    Err(e) => tracing::warn!(error = %e, attempts, "storage is still failing"),
                }
                delay = (delay * 2).min(HEAL_MAX_DELAY);
            }
            self.failing.store(false, Ordering::Release);
            tracing::info!(attempts, after_ms = since.elapsed().as_millis() as u64, "storage healed");
            self.notify();
        }
    }

    /// Closes the database and opens it again; `Ok` once a probe write
    /// and flush succeeded on the new one.
    fn reopen(&self) -> Result<(), Error> {
        #[cfg(test)]
        if self.refuse_heals.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok() {
            return Err(Error::Io("refused by the test".into()));
        }
        // Operations under way finish first; the next ones see `None`.
        let old = self.handles.write().unwrap_or_else(PoisonError::into_inner).take();
        drop(old);
        let h = Handles::open(&self.dir, self.cache_mb, &|| self.is_closed())?;
        h.probe()?;
        *self.handles.write().unwrap_or_else(PoisonError::into_inner) = Some(h);
        Ok(())
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        *self.shared.closed.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.shared.wake.notify_all();
        if let Some(healer) = self.healer.take() {
            let _ = healer.join();
        }
    }
}

impl Store for SledStore {
    fn health(&self) -> Health {
        self.shared.health()
    }

    /// An error reading the size is no failure of the store: `None`.
    fn size_bytes(&self) -> Result<Option<u64>, Error> {
        self.with(|h| Ok(h.db.size_on_disk().ok()))
    }

    fn on_health(&self, f: HealthWatcher) {
        let mut watchers = self.shared.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        f(self.shared.health());
        watchers.push(f);
    }

    fn commit(&self, turns: &[Commit<'_>]) -> Result<(), Error> {
        let _index = self.shared.index.lock().unwrap_or_else(PoisonError::into_inner);
        self.with(|h| {
            for group in batches(turns, MAX_BATCH_WRITES) {
                h.commit_group(group)?;
            }
            h.db.flush().map_err(io)?;
            Ok(())
        })
    }

    fn load(&self, id: &WorkflowId) -> Result<Option<Snapshot>, Error> {
        self.with(|h| {
            let wf = id.as_str();
            let mk = key(&["m", wf]);
            let Some(meta) = h.tree.get(&mk).map_err(io)? else {
                return Ok(None);
            };
            let meta: Meta = decode(&mk, &meta)?;
            let facts = h.scan(&key(&["f", wf, ""]))?;
            let waiting: Vec<Waiting> = h.scan(&key(&["w", wf, ""]))?;
            let timers = h.scan::<Vec<Timer>>(&key(&["c", wf, ""]))?.into_iter().flatten().collect();
            Ok(Some(Snapshot { meta, facts, waiting, timers }))
        })
    }

    fn workflows(&self, prefix: &str, after: Option<&WorkflowId>, limit: usize) -> Result<Vec<Meta>, Error> {
        self.with(|h| {
            let start = match after {
                // The first key after `m/<after>`.
                Some(a) => {
                    let mut k = key(&["m", a.as_str()]);
                    k.push(0);
                    k
                }
                None => key(&["m", prefix]),
            };
            h.range(start, &key(&["m", prefix]), limit)
        })
    }

    fn list(&self, q: &ListQuery<'_>) -> Result<Vec<Meta>, Error> {
        self.with(|h| {
            let (low, high) = index::page_range(q);
            let mut out = Vec::new();
            for k in h.tree.range(low.as_slice()..high.as_slice()).keys().rev() {
                if out.len() >= q.limit {
                    break;
                }
                let k = k.map_err(io)?;
                let id = index::id_of(&k).ok_or_else(|| Error::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason: "not a list index key".into(),
                })?;
                // Written in the same batch as its record: absent only
                // if both are.
                if let Some(m) = h.stored_meta(&id)? {
                    out.push(m);
                }
            }
            Ok(out)
        })
    }

    fn list_counts(&self, tenant: &str, family: Family<'_>) -> Result<ListCounts, Error> {
        self.with(|h| {
            let values = index::count_keys(tenant, family).iter().map(|k| h.count(k)).collect::<Result<Vec<_>, _>>()?;
            Ok(index::counts_from(&values))
        })
    }

    fn put_pack(&self, pack: &PackRecord) -> Result<(), Error> {
        self.with(|h| {
            let k = key(&["p", &pack.tenant, &pack.name, &format!("{:016x}", pack.seq)]);
            h.tree.insert(k, encode(pack)).map_err(io)?;
            h.db.flush().map_err(io)?;
            Ok(())
        })
    }

    fn packs(&self, tenant: &str) -> Result<Vec<PackRecord>, Error> {
        self.with(|h| h.scan(&key(&["p", tenant, ""])))
    }

    fn pack(&self, tenant: &str, name: &str, seq: u64) -> Result<Option<PackRecord>, Error> {
        self.with(|h| {
            let k = key(&["p", tenant, name, &format!("{seq:016x}")]);
            match h.tree.get(&k).map_err(io)? {
                Some(v) => Ok(Some(decode(&k, &v)?)),
                None => Ok(None),
            }
        })
    }

    fn timeline(&self, id: &WorkflowId, from: u64, limit: usize) -> Result<Vec<Entry>, Error> {
        self.with(|h| {
            let prefix = key(&["t", id.as_str(), ""]);
            let at = key(&["t", id.as_str(), &format!("{from:016x}")]);
            // The run holding `from` starts at or before it.
            let start = match h.tree.range(prefix.as_slice()..=at.as_slice()).next_back() {
                Some(kv) => kv.map_err(io)?.0.to_vec(),
                None => at,
            };
            let mut out = Vec::new();
            for kv in h.tree.range(start..) {
                let (k, v) = kv.map_err(io)?;
                if !k.starts_with(&prefix) || out.len() >= limit {
                    break;
                }
                let run = decode_run(&k, &v)?;
                out.extend(run.filter(|e| e.seq >= from).take(limit - out.len()));
            }
            Ok(out)
        })
    }

    fn outbox(&self, parts: &Parts) -> Result<Vec<Invocation>, Error> {
        self.with(|h| {
            Ok(h.scan::<Waiting>(b"w/")?.into_iter().map(|w| w.invocation).filter(|i| parts.has(&i.workflow)).collect())
        })
    }

    fn record_attempts(&self, attempts: &[(InvocationId, Attempts)]) -> Result<(), Error> {
        self.with(|h| {
            let mut batch = sled::Batch::default();
            for (id, a) in attempts {
                batch.insert(key(&["a", id.as_str()]), encode(a));
            }
            h.tree.apply_batch(batch).map_err(io)
        })
    }

    fn attempts(&self, parts: &Parts) -> Result<Vec<(InvocationId, Attempts)>, Error> {
        self.with(|h| {
            let mut out = Vec::new();
            for kv in h.tree.scan_prefix(b"a/") {
                let (k, v) = kv.map_err(io)?;
                let id = InvocationId::new(String::from_utf8_lossy(&k[2..]).into_owned());
                if parts.has_invocation(&id) {
                    out.push((id, decode(&k, &v)?));
                }
            }
            Ok(out)
        })
    }

    fn request(&self, request_id: &str) -> Result<Option<WorkflowId>, Error> {
        self.with(|h| {
            let k = key(&["r", request_id]);
            match h.tree.get(&k).map_err(io)? {
                Some(v) => Ok(Some(decode(&k, &v)?)),
                None => Ok(None),
            }
        })
    }

    fn requests(&self, prefix: &str, limit: usize) -> Result<Vec<(String, WorkflowId)>, Error> {
        self.with(|h| {
            h.tree
                .scan_prefix(key(&["r", prefix]))
                .take(limit)
                .map(|kv| {
                    let (k, v) = kv.map_err(io)?;
                    Ok((String::from_utf8_lossy(&k[2..]).into_owned(), decode(&k, &v)?))
                })
                .collect()
        })
    }

    fn pending(&self, id: &InvocationId) -> Result<bool, Error> {
        self.with(|h| {
            let Some(wf) = id.workflow() else { return Ok(false) };
            h.tree.contains_key(key(&["w", wf.as_str(), id.as_str()])).map_err(io)
        })
    }

    fn timers(&self, parts: &Parts) -> Result<Vec<Timer>, Error> {
        self.with(|h| {
            Ok(h.scan::<Vec<Timer>>(b"c/")?.into_iter().flatten().filter(|t| parts.has(&t.workflow)).collect())
        })
    }

    fn finished_before(&self, before_ms: u64, limit: usize) -> Result<Vec<WorkflowId>, Error> {
        self.with(|h| {
            let mut ids = Vec::new();
            for k in h.tree.scan_prefix(b"e/").keys() {
                match finished_id(&k.map_err(io)?, before_ms) {
                    Some(id) if ids.len() < limit => ids.push(id),
                    _ => break,
                }
            }
            Ok(ids)
        })
    }

    fn delete_finished(&self, ids: &[WorkflowId]) -> Result<usize, Error> {
        let _index = self.shared.index.lock().unwrap_or_else(PoisonError::into_inner);
        self.with(|h| {
            let mut batch = sled::Batch::default();
            let mut counts = Counts::default();
            let (mut writes, mut deleted) = (0, 0);
            for id in ids {
                let mk = key(&["m", id.as_str()]);
                let Some(v) = h.tree.get(&mk).map_err(io)? else { continue };
                let meta: Meta = decode(&mk, &v)?;
                if !meta.status.is_finished() {
                    continue;
                }
                let mut keys = vec![finished_key(&meta), mk];
                if let Some(r) = &meta.request {
                    let rk = key(&["r", r]);
                    // Only its own: never a later workflow's.
                    if let Some(v) = h.tree.get(&rk).map_err(io)? {
                        if decode::<WorkflowId>(&rk, &v)? == *id {
                            keys.push(rk);
                        }
                    }
                }
                for p in workflow_prefixes(id) {
                    for k in h.tree.scan_prefix(&p).keys() {
                        keys.push(k.map_err(io)?.to_vec());
                    }
                }
                if writes > 0 && writes + keys.len() + index::WRITES_PER_META > MAX_BATCH_WRITES {
                    counts.write(
                        |k| h.count(k),
                        |k, v| match v {
                            Some(v) => batch.insert(k, v),
                            None => batch.remove(k),
                        },
                    )?;
                    h.tree.apply_batch(std::mem::take(&mut batch)).map_err(io)?;
                    writes = 0;
                }
                writes += keys.len() + index::WRITES_PER_META;
                keys.into_iter().for_each(|k| batch.remove(k));
                index::refile(&index::placement(&meta), &[], &mut counts, |k, _| batch.remove(k));
                deleted += 1;
            }
            counts.write(
                |k| h.count(k),
                |k, v| match v {
                    Some(v) => batch.insert(k, v),
                    None => batch.remove(k),
                },
            )?;
            h.tree.apply_batch(batch).map_err(io)?;
            Ok(deleted)
        })
    }

    fn put_aux(&self, kind: &str, k: &str, value: &serde_json::Value) -> Result<(), Error> {
        self.with(|h| {
            h.tree.insert(key(&["x", kind, k]), encode(value)).map_err(io)?;
            h.db.flush().map_err(io)?;
            Ok(())
        })
    }

    fn get_aux(&self, kind: &str, k: &str) -> Result<Option<serde_json::Value>, Error> {
        self.with(|h| {
            let k = key(&["x", kind, k]);
            match h.tree.get(&k).map_err(io)? {
                Some(v) => Ok(Some(decode(&k, &v)?)),
                None => Ok(None),
            }
        })
    }

    fn scan_aux(&self, kind: &str, prefix: &str) -> Result<Vec<(String, serde_json::Value)>, Error> {
        self.with(|h| {
            let skip = key(&["x", kind, ""]).len();
            h.tree
                .scan_prefix(key(&["x", kind, prefix]))
                .map(|kv| {
                    let (k, v) = kv.map_err(io)?;
                    let name = String::from_utf8_lossy(&k[skip..]).into_owned();
                    Ok((name, decode(&k, &v)?))
                })
                .collect()
        })
    }

    fn delete_aux(&self, kind: &str, k: &str) -> Result<(), Error> {
        self.with(|h| {
            h.tree.remove(key(&["x", kind, k])).map_err(io)?;
            h.db.flush().map_err(io)?;
            Ok(())
        })
    }

    fn put_aux_batch(&self, records: &[(&str, &str, Option<&serde_json::Value>)]) -> Result<(), Error> {
        self.with(|h| {
            let mut batch = sled::Batch::default();
            for (kind, k, value) in records {
                match value {
                    Some(v) => batch.insert(key(&["x", kind, k]), encode(*v)),
                    None => batch.remove(key(&["x", kind, k])),
                }
            }
            h.tree.apply_batch(batch).map_err(io)?;
            h.db.flush().map_err(io)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{chunks, ok, RULES};
    use crate::testing::pack;
    use crate::workflow::{Input, Workflow};

    fn commit(store: &SledStore, wf: &Workflow, out: &crate::workflow::TurnOutput) {
        store.commit(&[Commit { workflow: wf.id(), output: out, request_id: None, epoch: None }]).unwrap();
    }

    /// Timers due at one instant are one record, which each turn rewrites
    /// or deletes, and a reopened store gives back exactly the live ones.
    #[test]
    fn timers_are_stored_by_instant_and_come_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let p = pack(
            r#"rule "arm" { match { j: Job() } action { at(100, "A", #{}); at(100, "B", #{}); at(200, "C", #{}); } }"#,
            "",
        );
        let id = WorkflowId::new("w1");
        let mut live = Workflow::new(id.clone(), p.clone(), 0);
        let job = serde_json::from_value(serde_json::json!({"type": "Job", "fields": {}})).unwrap();
        let records = |store: &SledStore| store.with(|h| Ok(h.tree.scan_prefix(b"c/").count())).unwrap();
        let ids = |mut ts: Vec<Timer>| {
            ts.sort_by_key(|t| t.id);
            ts.into_iter().map(|t| (t.id, t.due_ms)).collect::<Vec<_>>()
        };
        {
            let store = SledStore::open(dir.path(), 8).unwrap();
            let out = live.apply(Input::Start { facts: vec![job] }, 1).unwrap();
            commit(&store, &live, &out);
            assert_eq!(
                (records(&store), ids(store.timers(&Parts::All).unwrap())),
                (2, vec![(1, 100), (2, 100), (3, 200)])
            );
            let out = live.apply(Input::Timers { ids: vec![1, 2] }, 100).unwrap();
            commit(&store, &live, &out);
            assert_eq!((records(&store), ids(store.timers(&Parts::All).unwrap())), (1, vec![(3, 200)]));
        }
        let store = SledStore::open(dir.path(), 8).unwrap();
        assert_eq!(ids(store.load(&id).unwrap().unwrap().timers), ids(live.timers().cloned().collect()));
        let out = live.apply(Input::Timers { ids: vec![3] }, 200).unwrap();
        commit(&store, &live, &out);
        assert_eq!((records(&store), store.timers(&Parts::All).unwrap().len()), (0, 0));
    }

    #[test]
    fn its_size_is_what_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8).unwrap();
        store.put_aux("k", "x", &serde_json::json!("y".repeat(100_000))).unwrap();
        let size = store.size_bytes().unwrap().expect("sled knows its size");
        assert!(size >= 100_000, "{size}");
    }

    #[test]
    fn a_store_locked_by_another_holder_says_so_in_words() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path(), 8).unwrap();
        let err = Handles::open(dir.path(), 8, &|| true).err().expect("locked");
        let msg = err.to_string();
        assert!(msg.contains("the data directory is locked by another process"), "{msg}");
        assert!(!msg.contains("Os {"), "{msg}");
    }

    #[test]
    fn opening_a_store_waits_for_the_lock_of_one_closing() {
        let dir = tempfile::tempdir().unwrap();
        let first = SledStore::open(dir.path(), 8).unwrap();
        let closer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(first);
        });
        let started = std::time::Instant::now();
        let second = SledStore::open(dir.path(), 8);
        closer.join().unwrap();
        assert!(second.is_ok(), "{:?}", second.err());
        assert!(started.elapsed() >= std::time::Duration::from_millis(250), "it waited for the lock");
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

    /// A store written before the list index has none: opening it builds
    /// one from the metas (a running workflow's waits from its records),
    /// which answers as if it had been kept all along.
    #[test]
    fn opening_a_store_without_a_list_index_builds_it() {
        use crate::store::{Family, ListQuery, ListStatus};
        let dir = tempfile::tempdir().unwrap();
        let p = pack(RULES, "");
        let (mut a, mut b) =
            (Workflow::new(WorkflowId::new("wf_t.a"), p.clone(), 1), Workflow::new(WorkflowId::new("wf_t.b"), p, 2));
        let page = |s: &SledStore, status| {
            let q = ListQuery {
                tenant: "t",
                family: Family::Pack("test"),
                status,
                since_ms: None,
                until_ms: None,
                before: None,
                limit: 10,
            };
            let ids: Vec<String> = s.list(&q).unwrap().into_iter().map(|m| m.id.to_string()).collect();
            (ids, s.list_counts("t", Family::All).unwrap())
        };
        let before = {
            let store = SledStore::open(dir.path(), 8).unwrap();
            let out = a.apply(Input::Start { facts: chunks(1) }, 1).unwrap();
            commit(&store, &a, &out);
            let out = b.apply(Input::Start { facts: vec![] }, 2).unwrap();
            commit(&store, &b, &out);
            let before = (page(&store, None), page(&store, Some(ListStatus::WaitingInvocation)));
            // As an older build left it: no index, metas without waits.
            store
                .with(|h| {
                    for k in h.tree.iter().keys() {
                        let k = k.map_err(io)?;
                        if k.starts_with(b"l/") || k.starts_with(b"n/") || &*k == index::MARKER {
                            h.tree.remove(k).map_err(io)?;
                        } else if k.starts_with(b"m/") {
                            let mut m: Meta = decode(&k, &h.tree.get(&k).map_err(io)?.unwrap())?;
                            m.waiting = 0;
                            h.tree.insert(k, encode(&m)).map_err(io)?;
                        }
                    }
                    h.db.flush().map_err(io)
                })
                .unwrap();
            assert!(page(&store, None).0.is_empty());
            before
        };
        let store = SledStore::open(dir.path(), 8).unwrap();
        assert_eq!((page(&store, None), page(&store, Some(ListStatus::WaitingInvocation))), before);
        assert_eq!(before.1 .0, ["wf_t.a"]);
        assert_eq!(before.0 .0, ["wf_t.b", "wf_t.a"]);
    }

    /// A group commit whose index writes take it past the bound of a
    /// batch is split (each part atomic), and the index is exact after.
    #[test]
    fn a_group_its_index_writes_take_past_the_bound_is_split() {
        use crate::store::{Family, ListQuery, ListStatus};
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8).unwrap();
        let p = pack(RULES, "");
        let mut wfs: Vec<Workflow> =
            (0..200).map(|i| Workflow::new(WorkflowId::new(format!("wf_t.w{i:03}")), p.clone(), i)).collect();
        let outs: Vec<_> = wfs.iter_mut().map(|w| w.apply(Input::Start { facts: chunks(1) }, 1).unwrap()).collect();
        let turns: Vec<Commit<'_>> = wfs
            .iter()
            .zip(&outs)
            .map(|(w, o)| Commit { workflow: w.id(), output: o, request_id: None, epoch: None })
            .collect();
        assert!(count_writes(&turns) <= MAX_BATCH_WRITES, "one group by its own writes");
        assert!(count_writes(&turns) + 200 * 9 > MAX_BATCH_WRITES, "not with its index writes");
        store.commit(&turns).unwrap();
        let c = store.list_counts("t", Family::All).unwrap();
        assert_eq!((c.all, c.of(ListStatus::WaitingInvocation)), (200, 200));
        let q = ListQuery {
            tenant: "t",
            family: Family::Pack("test"),
            status: Some(ListStatus::Running),
            since_ms: None,
            until_ms: None,
            before: None,
            limit: 1000,
        };
        let ids: Vec<String> = store.list(&q).unwrap().into_iter().map(|m| m.id.to_string()).collect();
        let expected: Vec<String> = (0..200).rev().map(|i| format!("wf_t.w{i:03}")).collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn a_commit_past_the_batch_bound_goes_through_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let p = pack(RULES, "");
        let id = WorkflowId::new("big");
        let mut wf = Workflow::new(id.clone(), p, 0);
        let out = wf.apply(Input::Start { facts: chunks(700) }, 1).unwrap();
        let turns = [Commit { workflow: &id, output: &out, request_id: Some("req"), epoch: None }];
        let mut all: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        each_write(&turns, |k, v| all.push((k, v)));
        index::index_writes(&turns, |_| Ok(None), |_| Ok(0), |k, v| all.push((k, v))).unwrap();
        // (The bound counts the turn's own writes; its index writes come on top.)
        assert!(all.len() > count_writes(&turns));
        assert!(all.len() > MAX_BATCH_WRITES, "{} writes", all.len());
        let mut journal = vec![FORMAT];
        for (k, v) in &all {
            push_write(&mut journal, k, v.as_deref());
        }
        let decoded = decode_journal(b"j", &journal).unwrap();
        assert_eq!(decoded.len(), all.len());
        assert!(decoded.iter().zip(&all).all(|(d, a)| d.0 == a.0 && d.1 == a.1.as_deref()));
        {
            let store = SledStore::open(dir.path(), 8).unwrap();
            // As if the process died right after the journal's flush.
            store
                .with(|h| {
                    h.journal.insert(b"j", journal).unwrap();
                    h.db.flush().map_err(io)
                })
                .unwrap();
        }
        let store = SledStore::open(dir.path(), 8).unwrap();
        assert!(store.with(|h| Ok(h.journal.is_empty())).unwrap(), "the journal is applied and removed");
        let snap = store.load(&id).unwrap().unwrap();
        assert_eq!(snap.facts, wf.snapshot().facts);
        assert_eq!(store.outbox(&Parts::All).unwrap().len(), 700);
        assert_eq!(store.request("req").unwrap(), Some(id.clone()));
        let n = wf.meta().timeline_seq;
        assert_eq!(store.timeline(&id, 1, usize::MAX).unwrap(), out.entries);
        // From inside a run, across runs, bounded.
        let some = store.timeline(&id, 300, 600).unwrap();
        assert_eq!(some, out.entries[299..899].to_vec());
        assert_eq!(store.timeline(&id, n, 10).unwrap().len(), 1);
        assert!(store.timeline(&id, n + 1, 10).unwrap().is_empty());

        // The same commit made directly leaves the same records.
        let other = tempfile::tempdir().unwrap();
        let direct = SledStore::open(other.path(), 8).unwrap();
        direct.commit(&[Commit { workflow: &id, output: &out, request_id: Some("req"), epoch: None }]).unwrap();
        let dump = |s: &SledStore| s.with(|h| Ok(h.tree.iter().map(|kv| kv.unwrap()).collect::<Vec<_>>())).unwrap();
        assert_eq!(dump(&direct), dump(&store));
    }
}

#[cfg(test)]
#[path = "sled_heal_tests.rs"]
mod heal_tests;

#[cfg(test)]
mod conformance {
    use std::sync::Arc;

    use super::SledStore;
    use crate::store::conformance::Backend;
    use crate::store::Store;

    #[derive(Default)]
    struct Sled {
        dirs: Vec<tempfile::TempDir>,
    }

    impl Backend for Sled {
        fn fresh(&mut self) -> Arc<dyn Store> {
            self.dirs.push(tempfile::tempdir().unwrap());
            Arc::new(SledStore::open(self.dirs.last().unwrap().path(), 8).unwrap())
        }

        fn reopen(&mut self, store: Arc<dyn Store>) -> Arc<dyn Store> {
            drop(store);
            Arc::new(SledStore::open(self.dirs.last().unwrap().path(), 8).unwrap())
        }
    }

    crate::store_conformance!(Sled::default());
}
