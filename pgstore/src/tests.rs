//! The store conformance checks on a throwaway PostgreSQL, and what only
//! this store has: migrations, a newer schema refused, an unreachable
//! database, serialization failures retried.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use stoa_engine::store::conformance::Backend;
use stoa_engine::store::Store;

use super::throwaway::{Durability, TempPostgres};
use super::{Options, PgStore};

/// One server for the tests that run at once; it stops when the last of
/// them ends (a static would never be dropped, and would outlive the tests).
pub fn shared_postgres() -> Arc<TempPostgres> {
    static SHARED: Mutex<Weak<TempPostgres>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(pg) = shared.upgrade() {
        return pg;
    }
    let pg = Arc::new(TempPostgres::start(Durability::Fast).expect("a throwaway PostgreSQL"));
    *shared = Arc::downgrade(&pg);
    pg
}

/// A database of its own for each store.
pub fn fresh_database(pg: &TempPostgres) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let name = format!("t{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    pg.create_database(&name).expect("create database");
    name
}

struct Pg {
    pg: Arc<TempPostgres>,
    db: Option<String>,
}

impl Pg {
    fn new() -> Pg {
        Pg { pg: shared_postgres(), db: None }
    }
}

impl Backend for Pg {
    fn fresh(&mut self) -> Arc<dyn Store> {
        let db = fresh_database(&self.pg);
        let store = PgStore::open(&self.pg.url(&db), Options::default()).expect("open");
        self.db = Some(db);
        Arc::new(store)
    }

    fn reopen(&mut self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        drop(store);
        Arc::new(PgStore::open(&self.pg.url(self.db.as_ref().unwrap()), Options::default()).expect("reopen"))
    }
}

stoa_engine::store_conformance!(Pg::new());

#[test]
fn its_size_is_the_database_s() {
    let pg = shared_postgres();
    let db = fresh_database(&pg);
    let store = PgStore::open(&pg.url(&db), Options::default()).unwrap();
    let size = store.size_bytes().unwrap().expect("PostgreSQL knows its size");
    let expected: u64 = pg.psql(&db, "SELECT pg_database_size(current_database())").unwrap().parse().unwrap();
    // Within a page or two of what psql read just after.
    assert!(size.abs_diff(expected) < 1 << 20, "{size} vs {expected}");
}

#[test]
fn a_database_with_a_newer_schema_is_refused_and_left_alone() {
    let pg = shared_postgres();
    let db = fresh_database(&pg);
    drop(PgStore::open(&pg.url(&db), Options::default()).unwrap());
    pg.psql(&db, "INSERT INTO stoa_schema (version) VALUES (99)").unwrap();
    let err = PgStore::open(&pg.url(&db), Options::default()).err().expect("refused").to_string();
    assert_eq!(err, "the database's Stoa schema is version 99, newer than this build's (3): run a newer stoa");
    assert_eq!(pg.psql(&db, "SELECT count(*) FROM stoa_schema").unwrap(), "4");
}

/// A database made by the first schema gets the later ones at open: the
/// cluster's secret, the same for every server after; the list index's
/// columns, filled for the workflows already there (a running one's waits
/// from its rows).
#[test]
fn an_older_schema_is_migrated_at_open() {
    use stoa_engine::store::{Commit, Family, ListQuery, ListStatus};
    use stoa_engine::workflow::{Input, Workflow};
    let pg = shared_postgres();
    let db = fresh_database(&pg);
    {
        let store = PgStore::open(&pg.url(&db), Options::default()).unwrap();
        let p = stoa_engine::store::conformance::rules_pack();
        let mut wf = Workflow::new(stoa_engine::WorkflowId::new("wf_t.a"), p, 7);
        let out = wf.apply(Input::Start { facts: stoa_engine::store::conformance::chunks(1) }, 7).unwrap();
        store.commit(&[Commit { workflow: wf.id(), output: &out, request_id: None, epoch: None }]).unwrap();
    }
    pg.psql(
        &db,
        "DELETE FROM stoa_schema WHERE version >= 2; ALTER TABLE cluster DROP COLUMN secret; \
         ALTER TABLE workflows DROP COLUMN tenant, DROP COLUMN created_ms, DROP COLUMN version, DROP COLUMN waits",
    )
    .unwrap();
    let a = PgStore::open(&pg.url(&db), Options::default()).unwrap();
    let b = PgStore::open(&pg.url(&db), Options::default()).unwrap();
    assert_eq!(a.secret().len(), 64);
    assert_eq!(a.secret(), b.secret());
    assert_eq!(pg.psql(&db, "SELECT max(version) FROM stoa_schema").unwrap(), "3");
    let q = ListQuery {
        tenant: "t",
        family: Family::Version("test", "1"),
        status: Some(ListStatus::WaitingInvocation),
        since_ms: Some(7),
        until_ms: None,
        before: None,
        limit: 5,
    };
    assert_eq!(a.list(&q).unwrap().len(), 1);
    assert_eq!(a.list_counts("t", Family::All).unwrap().by_status, [1, 1, 0, 0, 0, 0]);
}

#[test]
fn migrations_apply_once_with_servers_starting_together() {
    let pg = shared_postgres();
    let db = fresh_database(&pg);
    let url = pg.url(&db);
    let opened: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                PgStore::open(&url, Options { partitions: 64, ..Options::default() }).map(|s| s.partitions())
            })
        })
        .collect();
    for o in opened {
        assert_eq!(o.join().unwrap().unwrap(), 64);
    }
    assert_eq!(pg.psql(&db, "SELECT count(*) FROM stoa_schema").unwrap(), "3");
    assert_eq!(pg.psql(&db, "SELECT count(*) FROM partitions").unwrap(), "64");
    // An existing cluster keeps its partitions.
    let again = PgStore::open(&url, Options { partitions: 8, ..Options::default() }).unwrap();
    assert_eq!(again.partitions(), 64);
}

#[test]
fn bad_connection_strings_and_unreachable_databases_say_so() {
    let err = PgStore::open("postgres://[::1", Options::default()).err().unwrap().to_string();
    assert!(err.starts_with("invalid PostgreSQL connection string"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("host={} user=postgres dbname=none", dir.path().display());
    let options = Options { connect_timeout: std::time::Duration::from_millis(500), ..Options::default() };
    let err = PgStore::open(&url, options).err().unwrap().to_string();
    assert!(err.starts_with("opening the PostgreSQL store: postgres"), "{err}");
    let pg = shared_postgres();
    let err = PgStore::open(&pg.url("no_such_db"), Options::default()).err().unwrap().to_string();
    assert!(err.contains("database \"no_such_db\" does not exist"), "{err}");
}

/// Called from a worker of a multi-thread runtime, a call waits without
/// taking the worker from the runtime's other tasks.
#[test]
fn calls_from_async_workers_and_blocking_threads_both_work() {
    let pg = shared_postgres();
    let db = fresh_database(&pg);
    let store = Arc::new(PgStore::open(&pg.url(&db), Options::default()).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store.put_aux("k", &format!("{i}"), &serde_json::json!(i)).unwrap();
                    store.get_aux("k", &format!("{i}")).unwrap()
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap(), Some(serde_json::json!(i)));
        }
        let s = store.clone();
        let n = tokio::task::spawn_blocking(move || s.scan_aux("k", "").unwrap().len()).await.unwrap();
        assert_eq!(n, 8);
    });
    let current = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    current.block_on(async { assert_eq!(store.scan_aux("k", "").unwrap().len(), 8) });
    // Dropped on an async thread: no panic.
    rt.block_on(async move { drop(store) });
}

#[test]
fn prefix_ends_are_the_next_strings() {
    use super::prefix_end;
    assert_eq!(prefix_end(""), None);
    assert_eq!(prefix_end("wf_a."), Some("wf_a/".into()));
    assert_eq!(prefix_end("a\u{10FFFF}"), Some("b".into()));
    assert_eq!(prefix_end("\u{D7FF}"), Some("\u{E000}".into()));
    assert_eq!(prefix_end("\u{10FFFF}"), None);
}

/// A database that stops answering (frozen, as by a network partition)
/// fails calls after `call_timeout`, marks the store failing, and the
/// store serves again, with nothing lost, once it answers.
#[test]
fn a_frozen_database_fails_calls_after_the_timeout_and_heals() {
    use std::time::{Duration, Instant};
    use stoa_engine::store::Health;
    let pg = TempPostgres::start(Durability::Fast).expect("a throwaway PostgreSQL");
    let db = fresh_database(&pg);
    let options = Options { call_timeout: Duration::from_secs(1), ..Options::default() };
    let store = PgStore::open(&pg.url(&db), options).unwrap();
    store.put_aux("k", "a", &serde_json::json!(1)).unwrap();
    pg.freeze(true);
    let t = Instant::now();
    let err = store.get_aux("k", "a").unwrap_err().to_string();
    let waited = t.elapsed();
    pg.freeze(false);
    assert!(err.contains("no answer within 1s"), "{err}");
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(5), "{waited:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.health() != Health::Serving {
        assert!(Instant::now() < deadline, "the store did not heal");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(store.get_aux("k", "a").unwrap(), Some(serde_json::json!(1)));
}
