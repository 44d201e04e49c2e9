//! The list index: a tenant's workflows newest first, by pack, version and
//! status, with counts per status, so that a page of a list (filtered or
//! not) reads only that page, however many workflows there are.
//!
//! Every store keeps it in the same atomic write as the workflow's meta,
//! so after a crash it says what the metas say. What the index files a
//! workflow under is a function of its meta alone (`placement`).
//!
//! Key-value stores (`SledStore`, `MemStore`) keep it under three
//! prefixes of their own, disjoint from `layout`'s (`m f w t e a r c x p`
//! and sled's `h/probe`):
//!
//! - `l/<tenant>/<family>/<tag>/<created ms hex>/<wf>`: an empty record per
//!   family and tag of a workflow, so a page is one reverse range read;
//! - `n/<tenant>/<family>/<tag>`: how many records that prefix holds, kept
//!   by the same batches (a count per page load would read every key);
//! - `i/list`: the index's version; a store opened without it (written by
//!   an older build) builds the index from the metas first.
//!
//! Families: `*` (every workflow), `p.<pack>`, `v.<pack>.<version in hex>`
//! (a version may hold `/` or `.`; pack names and tenants hold neither
//! `/` nor, for tenants, `.`). Tags: `all`, then the statuses of
//! `ListStatus` a workflow has (a running one is `running` and perhaps
//! `waiting-invocation` or `waiting-timer`).

use std::collections::{BTreeMap, HashMap};

use super::codec::{decode, encode};
use super::{Commit, Error, Write};
use crate::fact::WorkflowId;
use crate::workflow::{Meta, Status};

/// The marker of a built index, and its version.
pub(super) const MARKER: &[u8] = b"i/list";
pub(super) const VERSION: u64 = 1;

/// A status a list filters by. `Running` is every workflow not finished;
/// the two waiting ones are parts of it (an invocation or child awaited
/// wins over a timer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ListStatus {
    Running,
    WaitingInvocation,
    WaitingTimer,
    Completed,
    Failed,
    Cancelled,
}

impl ListStatus {
    pub const ALL: [ListStatus; 6] = [
        ListStatus::Running,
        ListStatus::WaitingInvocation,
        ListStatus::WaitingTimer,
        ListStatus::Completed,
        ListStatus::Failed,
        ListStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ListStatus::Running => "running",
            ListStatus::WaitingInvocation => "waiting-invocation",
            ListStatus::WaitingTimer => "waiting-timer",
            ListStatus::Completed => "completed",
            ListStatus::Failed => "failed",
            ListStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<ListStatus> {
        ListStatus::ALL.into_iter().find(|l| l.as_str() == s)
    }

    /// Whether every workflow with status `other` has this one too.
    pub fn includes(self, other: ListStatus) -> bool {
        self == other
            || (self == ListStatus::Running
                && matches!(other, ListStatus::WaitingInvocation | ListStatus::WaitingTimer))
    }

    /// Whether a workflow with this meta has this status.
    pub fn has(self, m: &Meta) -> bool {
        self.has_parts(m.status, m.waiting, m.timers)
    }

    fn has_parts(self, status: Status, waiting: u32, timers: u32) -> bool {
        match self {
            ListStatus::Running => status == Status::Running,
            ListStatus::WaitingInvocation => status == Status::Running && waiting > 0,
            ListStatus::WaitingTimer => status == Status::Running && waiting == 0 && timers > 0,
            ListStatus::Completed => status == Status::Completed,
            ListStatus::Failed => status == Status::Failed,
            ListStatus::Cancelled => status == Status::Cancelled,
        }
    }
}

/// Which workflows of a tenant a list reads: all, a pack's, or a pack
/// version's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family<'a> {
    All,
    Pack(&'a str),
    Version(&'a str, &'a str),
}

impl Family<'_> {
    pub fn has(&self, m: &Meta) -> bool {
        match *self {
            Family::All => true,
            Family::Pack(p) => m.pack == p,
            Family::Version(p, v) => m.pack == p && m.pack_version == v,
        }
    }

    fn key(&self) -> String {
        match *self {
            Family::All => "*".into(),
            Family::Pack(p) => format!("p.{p}"),
            Family::Version(p, v) => format!("v.{p}.{}", hex(v.as_bytes())),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One page of a tenant's workflows, newest first (by creation, then id,
/// both descending).
#[derive(Clone, Debug)]
pub struct ListQuery<'a> {
    pub tenant: &'a str,
    pub family: Family<'a>,
    pub status: Option<ListStatus>,
    /// Created at or after this (ms since the epoch).
    pub since_ms: Option<u64>,
    /// Created before this.
    pub until_ms: Option<u64>,
    /// The page after the row with this creation time and id (excluded).
    pub before: Option<(u64, &'a WorkflowId)>,
    pub limit: usize,
}

impl ListQuery<'_> {
    /// Whether a workflow belongs in this list (ignoring the page).
    pub fn has(&self, m: &Meta) -> bool {
        tenant(&m.id) == self.tenant
            && self.family.has(m)
            && self.status.is_none_or(|s| s.has(m))
            && self.since_ms.is_none_or(|t| m.created_ms >= t)
            && self.until_ms.is_none_or(|t| m.created_ms < t)
    }
}

/// How many workflows of a family there are, in all and per status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListCounts {
    pub all: u64,
    /// In the order of `ListStatus::ALL`.
    pub by_status: [u64; 6],
}

impl ListCounts {
    pub fn of(&self, s: ListStatus) -> u64 {
        self.by_status[s as usize]
    }
}

/// The tenant of a workflow id as the index files it: the id's body (after
/// `wf_`) up to its first `.` (`wf_<tenant>.<key>`); none for an id
/// without one.
pub fn tenant(id: &WorkflowId) -> &str {
    let body = id.as_str().strip_prefix(WorkflowId::PREFIX).unwrap_or(id.as_str());
    body.split_once('.').map(|(t, _)| t).unwrap_or("")
}

/// Where a workflow is filed: (record key, count key) pairs.
pub(super) type Filing = Vec<(Vec<u8>, Vec<u8>)>;

/// The fields of a stored meta that say where it is filed: what a commit
/// decodes of the meta it replaces, every turn (the rest, a result
/// included, is skipped).
#[derive(serde::Deserialize)]
pub(super) struct Filed {
    id: WorkflowId,
    pack: String,
    pack_version: String,
    status: Status,
    created_ms: u64,
    #[serde(default)]
    waiting: u32,
    #[serde(default)]
    timers: u32,
}

impl Filed {
    fn of(m: &Meta) -> Filed {
        Filed {
            id: m.id.clone(),
            pack: m.pack.clone(),
            pack_version: m.pack_version.clone(),
            status: m.status,
            created_ms: m.created_ms,
            waiting: m.waiting,
            timers: m.timers,
        }
    }

    fn tags(&self) -> [bool; 6] {
        ListStatus::ALL.map(|s| s.has_parts(self.status, self.waiting, self.timers))
    }

    /// Whether both are filed under the same keys (most turns change
    /// nothing the index files by: they need not build a key).
    fn same_place(&self, other: &Filed) -> bool {
        self.created_ms == other.created_ms
            && self.tags() == other.tags()
            && self.pack == other.pack
            && self.pack_version == other.pack_version
            && self.id == other.id
    }

    pub fn placement(&self) -> Filing {
        let (status, waiting, timers) = (self.status, self.waiting, self.timers);
        let tags = ListStatus::ALL.into_iter().filter(move |s| s.has_parts(status, waiting, timers));
        place(&self.id, &self.pack, &self.pack_version, self.created_ms, tags)
    }
}

/// Where the index files a workflow with this meta.
pub(super) fn placement(m: &Meta) -> Filing {
    let tags = ListStatus::ALL.into_iter().filter(|s| s.has(m));
    place(&m.id, &m.pack, &m.pack_version, m.created_ms, tags)
}

fn place(
    id: &WorkflowId,
    pack: &str,
    version: &str,
    created_ms: u64,
    tags: impl Iterator<Item = ListStatus>,
) -> Filing {
    let t = tenant(id);
    let tags: Vec<&str> = std::iter::once("all").chain(tags.map(ListStatus::as_str)).collect();
    let mut out = Vec::with_capacity(9);
    for f in [Family::All, Family::Pack(pack), Family::Version(pack, version)] {
        let fk = f.key();
        for tag in &tags {
            let count = format!("n/{t}/{fk}/{tag}").into_bytes();
            let rec = format!("l/{t}/{fk}/{tag}/{created_ms:016x}/{}", id.as_str()).into_bytes();
            out.push((rec, count));
        }
    }
    out
}

/// The record prefix and count key of one list.
fn list_prefix(tenant: &str, family: Family<'_>, status: Option<ListStatus>) -> (Vec<u8>, Vec<u8>) {
    let tag = status.map(ListStatus::as_str).unwrap_or("all");
    let fk = family.key();
    (format!("l/{tenant}/{fk}/{tag}/").into_bytes(), format!("n/{tenant}/{fk}/{tag}").into_bytes())
}

/// The key range a page reads, newest first: `[low, high)`.
pub(super) fn page_range(q: &ListQuery<'_>) -> (Vec<u8>, Vec<u8>) {
    let (prefix, _) = list_prefix(q.tenant, q.family, q.status);
    let at = |ms: u64| {
        let mut k = prefix.clone();
        k.extend_from_slice(format!("{ms:016x}").as_bytes());
        k
    };
    let low = q.since_ms.map(at).unwrap_or_else(|| prefix.clone());
    let mut high = prefix.clone();
    high.push(0xff);
    if let Some(u) = q.until_ms {
        high = high.min(at(u));
    }
    if let Some((ms, id)) = q.before {
        let mut k = at(ms);
        k.push(b'/');
        k.extend_from_slice(id.as_str().as_bytes());
        high = high.min(k);
    }
    (low, high)
}

/// The workflow id at the end of a record key.
pub(super) fn id_of(key: &[u8]) -> Option<WorkflowId> {
    let pos = key.iter().rposition(|&b| b == b'/')?;
    Some(WorkflowId::new(std::str::from_utf8(&key[pos + 1..]).ok()?))
}

/// The count keys of a family, `all` first then `ListStatus::ALL`.
pub(super) fn count_keys(tenant: &str, family: Family<'_>) -> Vec<Vec<u8>> {
    std::iter::once(None).chain(ListStatus::ALL.map(Some)).map(|s| list_prefix(tenant, family, s).1).collect()
}

pub(super) fn counts_from(values: &[u64]) -> ListCounts {
    let mut c = ListCounts { all: values[0], ..Default::default() };
    c.by_status.copy_from_slice(&values[1..7]);
    c
}

pub(super) fn decode_count(k: &[u8], v: Option<&[u8]>) -> Result<u64, Error> {
    v.map(|v| decode::<u64>(k, v)).transpose().map(|n| n.unwrap_or(0))
}

/// Changes to counts, folded per key, written once per batch.
#[derive(Default)]
pub(super) struct Counts(BTreeMap<Vec<u8>, i64>);

impl Counts {
    pub fn add(&mut self, k: Vec<u8>, d: i64) {
        *self.0.entry(k).or_default() += d;
    }

    /// Writes the changed counts (`read` gives the stored ones).
    pub fn write(
        &mut self,
        mut read: impl FnMut(&[u8]) -> Result<u64, Error>,
        mut w: impl FnMut(Vec<u8>, Option<Vec<u8>>),
    ) -> Result<(), Error> {
        for (k, d) in std::mem::take(&mut self.0) {
            if d == 0 {
                continue;
            }
            let n = (read(&k)? as i64 + d).max(0) as u64;
            w(k, (n > 0).then(|| encode(&n)));
        }
        Ok(())
    }
}

/// Index writes needed to go from filing `old` to filing `new`.
pub(super) fn refile(
    old: &[(Vec<u8>, Vec<u8>)],
    new: &[(Vec<u8>, Vec<u8>)],
    counts: &mut Counts,
    mut w: impl FnMut(Vec<u8>, Option<Vec<u8>>),
) {
    for (rec, count) in old {
        if !new.iter().any(|(r, _)| r == rec) {
            w(rec.clone(), None);
            counts.add(count.clone(), -1);
        }
    }
    for (rec, count) in new {
        if !old.iter().any(|(r, _)| r == rec) {
            w(rec.clone(), Some(encode(&())));
            counts.add(count.clone(), 1);
        }
    }
}

/// Records the index writes make at most per meta (three families times
/// at most three tags, removed and added, and as many counts): what
/// retention's batches reserve per workflow deleted.
pub(super) const WRITES_PER_META: usize = 3 * 3 * 2 + 3 * 3 * 2;

/// The index writes of a group of turns that one atomic batch commits:
/// each meta written moves its workflow from where its stored meta filed
/// it (`stored`) to where the new one files it, and the counts follow.
pub(super) fn index_writes(
    turns: &[Commit<'_>],
    mut stored: impl FnMut(&WorkflowId) -> Result<Option<Filed>, Error>,
    read_count: impl FnMut(&[u8]) -> Result<u64, Error>,
    mut w: impl FnMut(Vec<u8>, Option<Vec<u8>>),
) -> Result<(), Error> {
    // A later turn of the same workflow moves it from where the earlier
    // one of this group put it, which the store does not hold yet.
    let mut filed: HashMap<&WorkflowId, Filed> = HashMap::new();
    let mut counts = Counts::default();
    let mut metas = Vec::new();
    super::turn_writes(turns, |write| {
        if let Write::Meta(m) = write {
            metas.push(m)
        }
    });
    for m in metas {
        let old = match filed.remove(&m.id) {
            Some(o) => Some(o),
            None => stored(&m.id)?,
        };
        let new = Filed::of(m);
        if !old.as_ref().is_some_and(|o| o.same_place(&new)) {
            let old = old.map(|o| o.placement()).unwrap_or_default();
            refile(&old, &new.placement(), &mut counts, &mut w);
        }
        filed.insert(&m.id, new);
    }
    counts.write(read_count, w)
}

/// A stored meta as the index files it when it was written before metas
/// carried their waits: waiting if the workflow has waiting records or
/// timers (`has_waiting`, `has_timers`).
pub fn with_stored_waits(mut m: Meta, has_waiting: bool, has_timers: bool) -> Meta {
    if m.status == Status::Running && m.waiting == 0 && m.timers == 0 {
        m.waiting = u32::from(has_waiting);
        m.timers = u32::from(has_timers);
    }
    m
}
