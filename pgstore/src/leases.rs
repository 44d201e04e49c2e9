//! Who owns which partition: leases in the `partitions` table, timed by
//! the database's clock (`now()`), so that servers whose clocks disagree
//! still agree on when a lease ran out.
//!
//! A server joins (a row in `members`), then ticks a few times per lease
//! period. One tick is one transaction: it heartbeats, renews every lease
//! it holds, counts the live members, claims free or expired partitions
//! up to its fair share (⌈P/N⌉) and reads who owns the rest. Each claim
//! bumps the partition's epoch; every commit checks, in its own
//! transaction, owner and epoch of the partitions it writes (`fence`),
//! under a share lock that a claim must wait for. A server that gave a
//! partition away, or whose lease another server took while it was
//! frozen, cannot write to it again: it learns so at its next tick or its
//! next commit, whichever comes first.
//!
//! Surplus partitions (a server joined) are handed back by the server
//! itself (`release`), after it stopped acting on them; a server that stops
//! releases all of them (`leave`), so that the others take them over at
//! their next tick instead of after the lease.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use stoa_engine::store::{Error, Parts};

use crate::{transaction, Fail, PgStore};

/// This server's place in the cluster: its member id and address, and the
/// partitions it holds with their epochs.
#[derive(Default)]
pub(crate) struct Held {
    pub member: Option<Member>,
    pub parts: BTreeMap<u32, i64>,
    /// Found taken over at a commit since the last tick.
    pub fenced: BTreeSet<u32>,
}

#[derive(Clone)]
pub(crate) struct Member {
    pub id: String,
    pub address: String,
}

pub(crate) type Shared = Mutex<Held>;

/// What a tick found.
#[derive(Clone, Debug, Default)]
pub struct Tick {
    /// Partitions held now (claimed or renewed by this tick), with their
    /// epochs.
    pub held: BTreeMap<u32, u64>,
    /// Claimed by this tick: act on their stored work.
    pub gained: Vec<u32>,
    /// Held before and not now (taken over while this server was away, or
    /// fenced at a commit): stop acting on them.
    pub lost: Vec<u32>,
    /// The address of each partition's owner, by partition (`None`: nobody
    /// holds a live lease on it).
    pub owners: Vec<Option<String>>,
    /// Addresses of the live members, this server's included.
    pub members: Vec<String>,
    /// What this server would own of an even spread (⌈P/N⌉).
    pub fair_share: usize,
}

/// Timing of leases.
#[derive(Clone, Copy, Debug)]
pub struct LeaseOptions {
    /// How long a lease lasts without renewal; a dead server's partitions
    /// are taken over this long after its last tick.
    pub period: Duration,
}

/// What each of `members` live servers owns of an even spread of `p`.
fn fair_share(p: i64, members: usize) -> usize {
    (p as usize).div_ceil(members.max(1))
}

fn interval(d: Duration) -> String {
    format!("{} milliseconds", d.as_millis())
}

impl PgStore {
    /// Joins the cluster as a member reachable at `address` (what other
    /// servers forward to). From now on every commit is fenced. The id is
    /// new at each start: a restarted server claims its partitions again,
    /// at a new epoch.
    pub fn join(&self, address: &str) -> Result<String, Error> {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| Error::Setup(format!("no randomness for a member id: {e}")))?;
        let id = format!("{}-{}", std::process::id(), random.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.member = Some(Member { id: id.clone(), address: address.to_string() });
        held.parts.clear();
        held.fenced.clear();
        Ok(id)
    }

    /// The partitions this server holds now (none before `join`).
    pub fn held(&self) -> Parts {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        Parts::Some { count: self.partitions, ids: held.parts.keys().copied().collect() }
    }

    fn member(&self) -> Result<Member, Error> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.member.clone().ok_or_else(|| Error::Setup("the store has not joined a cluster".into()))
    }

    /// Heartbeats, renews, claims up to the fair share and reads owners
    /// (one transaction; see the module's comment).
    pub fn tick(&self, lease: LeaseOptions) -> Result<Tick, Error> {
        let me = self.member()?;
        let p = self.partitions as i64;
        let period = interval(lease.period);
        let (renewed, owners, members) = self.call(move |mut client| async move {
            transaction(&mut client, |tx| {
                let (me, period) = (me.clone(), period.clone());
                Box::pin(async move {
                    // A frozen server's commit holds share locks on its
                    // partitions until the database ends its session: the
                    // tick gives up and tries again rather than wait.
                    tx.batch_execute("SET LOCAL lock_timeout = '1s'").await?;
                    tx.execute(
                        "INSERT INTO members (id, address, heartbeat_at) VALUES ($1, $2, now()) \
                         ON CONFLICT (id) DO UPDATE SET address = excluded.address, heartbeat_at = now()",
                        &[&me.id, &me.address],
                    )
                    .await?;
                    // Locks in id order, as commits' share locks are taken:
                    // two orders could deadlock.
                    let renew = format!(
                        "UPDATE partitions SET expires_at = now() + interval '{period}' WHERE id IN \
                         (SELECT id FROM partitions WHERE owner = $1 ORDER BY id FOR UPDATE) RETURNING id, epoch"
                    );
                    let mut held: BTreeMap<u32, i64> = BTreeMap::new();
                    for r in tx.query(&renew, &[&me.id]).await? {
                        held.insert(r.get::<_, i32>(0) as u32, r.get(1));
                    }
                    let live = format!(
                        "SELECT id, address FROM members WHERE heartbeat_at > now() - interval '{period}' ORDER BY id"
                    );
                    let members: Vec<(String, String)> =
                        tx.query(&live, &[]).await?.iter().map(|r| (r.get(0), r.get(1))).collect();
                    let fair = fair_share(p, members.len());
                    if held.len() < fair {
                        // Free or expired ones, in an order of this member's
                        // own, so that claimers meet on few rows.
                        let claim = format!(
                            "UPDATE partitions SET owner = $1, epoch = epoch + 1, \
                             expires_at = now() + interval '{period}' WHERE id IN \
                             (SELECT id FROM partitions WHERE owner IS NULL OR expires_at < now() \
                              ORDER BY md5(id::text || $1) LIMIT $2 FOR UPDATE) RETURNING id, epoch"
                        );
                        let want = (fair - held.len()) as i64;
                        for r in tx.query(&claim, &[&me.id, &want]).await? {
                            held.insert(r.get::<_, i32>(0) as u32, r.get(1));
                        }
                    }
                    let mut owners = vec![None; p as usize];
                    let rows = tx
                        .query(
                            "SELECT p.id, m.address FROM partitions p JOIN members m ON m.id = p.owner \
                             WHERE p.expires_at > now()",
                            &[],
                        )
                        .await?;
                    for r in rows {
                        if let Some(slot) = owners.get_mut(r.get::<_, i32>(0) as usize) {
                            *slot = Some(r.get::<_, String>(1));
                        }
                    }
                    Ok((held, owners, members.into_iter().map(|m| m.1).collect::<Vec<String>>()))
                })
            })
            .await
        })?;
        let mut state = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let before = std::mem::replace(&mut state.parts, renewed.clone());
        let fenced = std::mem::take(&mut state.fenced);
        // A partition held at another epoch than before was lost and
        // claimed again meanwhile: both.
        let mut lost: BTreeSet<u32> =
            before.iter().filter(|(p, e)| renewed.get(p) != Some(e)).map(|(p, _)| *p).collect();
        lost.extend(fenced);
        let lost: Vec<u32> = lost.into_iter().collect();
        let gained: Vec<u32> = renewed.iter().filter(|(p, e)| before.get(p) != Some(e)).map(|(p, _)| *p).collect();
        Ok(Tick {
            held: renewed.iter().map(|(p, e)| (*p, *e as u64)).collect(),
            gained,
            lost,
            owners,
            fair_share: fair_share(p, members.len()),
            members,
        })
    }

    /// Hands partitions back (the server no longer acts on them): from now
    /// on their commits are refused here, and another server may claim
    /// them at once.
    pub fn release(&self, parts: &[u32]) -> Result<(), Error> {
        let me = self.member()?;
        {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            for p in parts {
                held.parts.remove(p);
            }
        }
        let ids: Vec<i32> = parts.iter().map(|p| *p as i32).collect();
        self.call(move |client| async move {
            client
                .execute(
                    "UPDATE partitions SET owner = NULL, expires_at = NULL WHERE owner = $1 AND id = ANY($2)",
                    &[&me.id, &ids],
                )
                .await?;
            Ok(())
        })
    }

    /// Releases every partition and leaves the members (a server stopping).
    pub fn leave(&self) -> Result<(), Error> {
        let me = self.member()?;
        self.held.lock().unwrap_or_else(PoisonError::into_inner).parts.clear();
        self.call(move |client| async move {
            client.execute("UPDATE partitions SET owner = NULL, expires_at = NULL WHERE owner = $1", &[&me.id]).await?;
            client.execute("DELETE FROM members WHERE id = $1", &[&me.id]).await?;
            Ok(())
        })
    }

    /// The epochs a commit of these partitions must find, or the
    /// partitions not held here (`Err`). `Ok(None)`: not in a cluster.
    pub(crate) fn expected(&self, parts: &BTreeSet<u32>) -> Result<Option<Fence>, Vec<u32>> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(member) = &held.member else { return Ok(None) };
        let missing: Vec<u32> = parts.iter().filter(|p| !held.parts.contains_key(p)).copied().collect();
        if !missing.is_empty() {
            return Err(missing);
        }
        Ok(Some(Fence {
            member: member.id.clone(),
            epochs: parts.iter().map(|p| (*p as i32, held.parts[p])).collect(),
        }))
    }

    /// Workflows of turns made from memory of an older epoch of a
    /// partition held here now (lost and claimed again since): refused
    /// alone, the partition stays.
    pub(crate) fn stale(&self, turns: &[stoa_engine::store::Commit<'_>]) -> Vec<stoa_engine::WorkflowId> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        turns
            .iter()
            .filter(|c| {
                let now = held.parts.get(&c.workflow.partition(self.partitions));
                c.epoch.is_some_and(|e| now.is_some_and(|n| *n as u64 != e))
            })
            .map(|c| c.workflow.clone())
            .collect()
    }

    /// Forgets partitions a commit found taken over.
    pub(crate) fn fenced(&self, parts: &[u32]) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        for p in parts {
            if held.parts.remove(p).is_some() {
                held.fenced.insert(*p);
            }
        }
    }
}

/// What a commit must find in `partitions`: this member as the owner of
/// each partition it writes, at these epochs.
pub(crate) struct Fence {
    pub member: String,
    pub epochs: Vec<(i32, i64)>,
}

/// The check of a commit, sent ahead of its writes in the same
/// transaction: the partitions' rows, share-locked (a claim waits for the
/// commit, and a commit after a claim reads the new owner).
pub(crate) const FENCE: &str = "SELECT id, owner, epoch FROM partitions WHERE id = ANY($1) ORDER BY id FOR SHARE";

/// The partitions whose row is not (owner `me`, the expected epoch).
pub(crate) fn moved(rows: &[tokio_postgres::Row], me: &str, expected: &[(i32, i64)]) -> Vec<u32> {
    let found: BTreeMap<i32, (Option<String>, i64)> =
        rows.iter().map(|r| (r.get::<_, i32>(0), (r.get::<_, Option<String>>(1), r.get::<_, i64>(2)))).collect();
    expected
        .iter()
        .filter(|(p, e)| found.get(p).is_none_or(|(o, fe)| o.as_deref() != Some(me) || fe != e))
        .map(|(p, _)| *p as u32)
        .collect()
}

impl From<Vec<u32>> for Fail {
    fn from(parts: Vec<u32>) -> Fail {
        Fail::Other(Error::Fenced { partitions: parts, workflows: Vec::new() })
    }
}
