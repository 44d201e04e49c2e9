//! Leases and fencing against a real PostgreSQL: an even spread, a claim
//! only after expiry, a commit of a taken-over partition refused whole.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use stoa_engine::store::{Commit, Error, Parts, Store};
use stoa_engine::workflow::{Meta, Status, TurnOutput};
use stoa_engine::WorkflowId;

use super::tests::{fresh_database, shared_postgres};
use super::{LeaseOptions, Options, PgStore};

const PARTS: u32 = 16;

fn store(url: &str, address: &str) -> PgStore {
    let s = PgStore::open(url, Options { partitions: PARTS, ..Options::default() }).unwrap();
    s.join(address).unwrap();
    s
}

fn lease(ms: u64) -> LeaseOptions {
    LeaseOptions { period: Duration::from_millis(ms) }
}

fn held(s: &PgStore) -> BTreeSet<u32> {
    match s.held() {
        Parts::Some { ids, .. } => ids,
        Parts::All => unreachable!("a member holds some"),
    }
}

/// A workflow id in partition `p`.
fn in_partition(p: u32) -> WorkflowId {
    (0..).map(|i| WorkflowId::new(format!("wf_t.k{i}"))).find(|w| w.partition(PARTS) == p).unwrap()
}

/// A commit that writes one workflow's row (meta only).
fn touch(s: &PgStore, wf: &WorkflowId) -> Result<(), Error> {
    s.commit(&[Commit { workflow: wf, output: &start_of(wf), request_id: None, epoch: None }])
}

#[test]
fn servers_share_partitions_evenly_and_know_each_others_addresses() {
    let pg = shared_postgres();
    let url = pg.url(&fresh_database(&pg));
    let a = store(&url, "a:1");
    let first = a.tick(lease(5000)).unwrap();
    assert_eq!((first.held.len(), first.gained.len(), first.fair_share), (16, 16, 16));
    let b = store(&url, "b:1");
    let c = store(&url, "c:1");
    // B and C see three members; A gives back its surplus, as a server does.
    b.tick(lease(5000)).unwrap();
    c.tick(lease(5000)).unwrap();
    let t = a.tick(lease(5000)).unwrap();
    assert_eq!(t.fair_share, 6);
    let surplus: Vec<u32> = t.held.keys().copied().skip(t.fair_share).collect();
    a.release(&surplus).unwrap();
    let (tb, tc) = (b.tick(lease(5000)).unwrap(), c.tick(lease(5000)).unwrap());
    let ta = a.tick(lease(5000)).unwrap();
    let (ha, hb, hc) = (held(&a), held(&b), held(&c));
    assert_eq!(ha.len() + hb.len() + hc.len(), 16, "{ha:?} {hb:?} {hc:?}");
    assert!(ha.is_disjoint(&hb) && hb.is_disjoint(&hc) && ha.is_disjoint(&hc));
    assert!([ha.len(), hb.len(), hc.len()].iter().all(|n| (4..=6).contains(n)), "{ha:?} {hb:?} {hc:?}");
    assert!(tb.gained.len() + tc.gained.len() >= 10);
    let mut members = ta.members.clone();
    members.sort();
    assert_eq!(members, ["a:1", "b:1", "c:1"]);
    for (p, owner) in ta.owners.iter().enumerate() {
        let want = if ha.contains(&(p as u32)) {
            "a:1"
        } else if hb.contains(&(p as u32)) {
            "b:1"
        } else {
            "c:1"
        };
        assert_eq!(owner.as_deref(), Some(want), "partition {p}");
    }
    // Leaving hands everything back at once.
    a.leave().unwrap();
    b.tick(lease(5000)).unwrap();
    c.tick(lease(5000)).unwrap();
    assert_eq!(held(&b).len() + held(&c).len(), 16);
}

/// A lease another server still renews is never taken; one that ran out
/// is, at a new epoch; the old owner's commit to it then writes nothing,
/// and its next tick reports the partition lost.
#[test]
fn an_expired_lease_moves_and_fences_its_old_owner() {
    let pg = shared_postgres();
    let db = fresh_database(&pg);
    let url = pg.url(&db);
    let a = store(&url, "a:1");
    a.tick(lease(800)).unwrap();
    let b = store(&url, "b:1");
    assert!(b.tick(lease(800)).unwrap().held.is_empty(), "A's leases are live");
    let wf = in_partition(3);
    touch(&a, &wf).unwrap();
    // A stops renewing (frozen); B takes over once the leases ran out.
    let deadline = Instant::now() + Duration::from_secs(10);
    let taken = loop {
        let t = b.tick(lease(800)).unwrap();
        if t.held.contains_key(&3) {
            break t;
        }
        assert!(Instant::now() < deadline, "B never took partition 3");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(taken.gained.contains(&3));
    let epoch = pg.psql(&db, "SELECT epoch FROM partitions WHERE id = 3").unwrap();
    assert_eq!(epoch, "2", "claimed twice: by A, then by B");
    let before = pg.psql(&db, "SELECT md5(string_agg(meta::text, ',')) FROM workflows").unwrap();
    let other = in_partition(4);
    let refused = a.commit(&[
        Commit { workflow: &wf, output: &TurnOutput::default(), request_id: None, epoch: None },
        Commit { workflow: &other, output: &start_of(&other), request_id: None, epoch: None },
    ]);
    // Partition 4 moved too: both turns are refused, since a later turn
    // of either would otherwise land on a state the new owner never saw.
    match refused {
        Err(Error::Fenced { partitions, workflows }) => {
            assert!(partitions.contains(&3) && partitions.contains(&4), "{partitions:?}");
            assert_eq!(workflows, vec![wf.clone(), other.clone()]);
        }
        other => panic!("not fenced: {other:?}"),
    }
    assert_eq!(pg.psql(&db, "SELECT md5(string_agg(meta::text, ',')) FROM workflows").unwrap(), before);
    assert!(touch(&a, &in_partition(3)).is_err(), "refused here now, without asking the database");
    let t = a.tick(lease(800)).unwrap();
    assert!(t.lost.contains(&3) && t.lost.contains(&4), "{:?}", t.lost);
    touch(&b, &wf).unwrap();
}

/// The check runs inside the commit's transaction: with the partition
/// taken over between the server's last tick and its commit, the commit
/// is refused by the database itself.
#[test]
fn a_commit_racing_a_takeover_is_refused_by_the_database() {
    let pg = shared_postgres();
    let db = fresh_database(&pg);
    let url = pg.url(&db);
    let a = store(&url, "a:1");
    a.tick(lease(60_000)).unwrap();
    let wf = in_partition(7);
    // Another server took it (as after A's lease ran out): A still thinks
    // it holds it.
    pg.psql(&db, "UPDATE partitions SET owner = 'other', epoch = epoch + 1 WHERE id = 7").unwrap();
    match touch(&a, &wf) {
        Err(Error::Fenced { partitions, workflows }) => {
            assert_eq!((partitions, workflows), (vec![7], vec![wf.clone()]));
        }
        other => panic!("not fenced: {other:?}"),
    }
    assert_eq!(pg.psql(&db, "SELECT count(*) FROM workflows").unwrap(), "0");
    assert!(a.tick(lease(60_000)).unwrap().lost.contains(&7));
}

/// The first turn of a workflow without facts: its meta row.
fn start_of(wf: &WorkflowId) -> TurnOutput {
    let meta = Meta {
        id: wf.clone(),
        pack: "p".into(),
        pack_version: "1".into(),
        status: Status::Running,
        result: Default::default(),
        reason: None,
        next_fact_id: 1,
        next_invocation: 1,
        turn: 1,
        timeline_seq: 0,
        next_tag: 0,
        created_ms: 1,
        updated_ms: 1,
        next_timer: 1,
        next_signal: 1,
        origin: Default::default(),
        request: None,
        cancelling: None,
        traceparent: None,
        waiting: 0,
        timers: 0,
    };
    TurnOutput { turn: 1, meta: Some(meta), ..TurnOutput::default() }
}

/// A server frozen mid-commit holds share locks on its partitions. A tick
/// of another server waiting for them gives up after `lock_timeout`
/// instead of hanging, and claims them once the frozen session is gone
/// (the database ends it after `idle_in_transaction_session_timeout`;
/// here the test ends it).
#[test]
fn a_tick_does_not_hang_on_a_frozen_commits_locks() {
    let pg = shared_postgres();
    let db = fresh_database(&pg);
    let url = pg.url(&db);
    let a = store(&url, "a:1");
    a.tick(lease(400)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // A's commit, frozen before its COMMIT: its share locks stay.
    let frozen = rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
        let conn = tokio::spawn(connection);
        client.batch_execute("BEGIN").await.unwrap();
        client
            .query("SELECT id FROM partitions WHERE id = ANY($1) ORDER BY id FOR SHARE", &[&vec![3i32]])
            .await
            .unwrap();
        (client, conn)
    });
    std::thread::sleep(Duration::from_millis(600));
    let b = store(&url, "b:1");
    let t = Instant::now();
    let blocked = b.tick(lease(400));
    assert!(blocked.is_err(), "the claim went through a held lock: {blocked:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "the tick waited {:?}", t.elapsed());
    // The frozen session ends (its runtime, and so its socket, is gone).
    drop(frozen);
    drop(rt);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.tick(lease(400)).is_ok_and(|t| t.held.contains_key(&3)) {
        assert!(Instant::now() < deadline, "partition 3 was never claimed");
        std::thread::sleep(Duration::from_millis(100));
    }
}
