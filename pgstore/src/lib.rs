//! Stoa's store on PostgreSQL: the records of the engine's `Store` in
//! tables (`schema`), a group commit as one SERIALIZABLE transaction of
//! multi-row statements (`rows`), schema migrations applied at open, and a
//! throwaway server for tests and benchmarks (`throwaway`).
//!
//! Why `tokio-postgres` with `deadpool-postgres` rather than `sqlx`: the
//! store needs a driver and a pool, not a query builder or compile-time
//! checked SQL against a live database; tokio-postgres pipelines the
//! statements of a transaction on one connection, takes arrays as
//! parameters (one statement writes thousands of rows through `unnest`),
//! and adds a dozen crates, not a hundred.
//!
//! The `Store` trait is synchronous (the committer is a thread of its own,
//! and `stoa run` has no async runtime), so the store runs its connections
//! on a small runtime of its own and each call waits for its answer. A call
//! from a worker thread of the server's multi-thread runtime waits inside
//! `block_in_place`, so the other tasks of that thread move elsewhere
//! meanwhile.
//!
//! Health: an operation that cannot reach the database marks the store
//! failing (watchers are told), and a probe on the store's runtime marks it
//! serving again once a query goes through. Unlike sled, nothing held in
//! memory can be wrong meanwhile, so operations are not refused: they fail
//! while the database is away and work as soon as it is back.

mod leases;
mod rows;
pub mod schema;
pub mod throwaway;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use stoa_engine::fact::{InvocationId, WorkflowId};
use stoa_engine::store::codec::{decode, encode};
use stoa_engine::store::{
    decode_run, Attempts, Commit, Error, Family, Health, HealthWatcher, ListCounts, ListQuery, ListStatus, PackRecord,
    Parts, Store, SIGNAL_OUTBOX,
};
use stoa_engine::timeline::Entry;
use stoa_engine::workflow::{Invocation, Meta, Snapshot, Timer, Waiting};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, NoTls};

pub use leases::{LeaseOptions, Tick};
use rows::{int, Rows};

/// How the store connects.
#[derive(Clone, Debug)]
pub struct Options {
    /// Connections at most (each call holds one while it runs).
    pub pool_size: usize,
    /// Partitions of a cluster this store creates; an existing cluster
    /// keeps its own.
    pub partitions: u32,
    /// How long a call waits for a connection before it fails.
    pub connect_timeout: Duration,
    /// The longest a call waits for the database: a frozen or partitioned
    /// server answers nothing, and the committer must not wait forever. A
    /// commit cut short may or may not have landed, as the `Store`
    /// contract allows; its connection stays usable, since an unfinished
    /// transaction sends its `ROLLBACK` when dropped, ahead of the next use.
    pub call_timeout: Duration,
    /// How long the database lets a transaction of this store sit idle
    /// before it ends the session: a server frozen mid-commit (SIGSTOP, a
    /// VM paused) holds the share locks of its partitions, and a takeover
    /// waits for them. A server sets it to its lease period.
    pub idle_in_transaction: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            pool_size: 16,
            partitions: schema::DEFAULT_PARTITIONS,
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(30),
            idle_in_transaction: Duration::from_secs(5),
        }
    }
}

/// Serialization failures (SQLSTATE 40001) are normal at SERIALIZABLE
/// isolation: the transaction is run again, this many times at most.
const MAX_TRIES: u32 = 20;
/// How often the probe tries the database while the store fails.
const PROBE_EVERY: Duration = Duration::from_millis(250);

pub struct PgStore {
    /// The connections' runtime; `None` once dropped (shut down in the
    /// background: dropping a runtime may happen on an async thread).
    rt: Option<tokio::runtime::Runtime>,
    pool: Pool,
    partitions: u32,
    call_timeout: Duration,
    health: Arc<HealthState>,
    /// The partitions this server holds (see `leases`).
    held: leases::Shared,
    secret: String,
}

#[derive(Default)]
struct HealthState {
    failing: AtomicBool,
    watchers: Mutex<Vec<HealthWatcher>>,
    /// Whether a probe runs (one at a time).
    probing: AtomicBool,
}

impl HealthState {
    fn get(&self) -> Health {
        if self.failing.load(Ordering::Acquire) {
            Health::Failing
        } else {
            Health::Serving
        }
    }

    fn notify(&self) {
        let watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        let h = self.get();
        for w in watchers.iter() {
            w(h);
        }
    }
}

/// A failure of a statement or of the pool, before it becomes an `Error`.
enum Fail {
    /// The database is out of reach (the store fails until a probe works).
    Unreachable(String),
    /// A serialization failure or a deadlock: run the transaction again.
    Retry(String),
    Other(Error),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Fail {
        let text = describe(&e);
        match e.code() {
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED => {
                Fail::Retry(text)
            }
            // Class 08 (connection exception), 57P01-57P03 (shutdown,
            // crash, starting up): the database is away.
            Some(c) if c.code().starts_with("08") || c.code().starts_with("57P") => Fail::Unreachable(text),
            Some(_) => Fail::Other(Error::Io(text)),
            None => Fail::Unreachable(text),
        }
    }
}

impl From<deadpool_postgres::PoolError> for Fail {
    fn from(e: deadpool_postgres::PoolError) -> Fail {
        match e {
            deadpool_postgres::PoolError::Backend(e) => Fail::from(e),
            other => Fail::Unreachable(format!("postgres: no connection: {other}")),
        }
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail::Other(e)
    }
}

/// The error's own text with the database's detail, which `Display` leaves out.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("postgres: {} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("postgres: {e}: {cause}"),
            None => format!("postgres: {e}"),
        },
    }
}

type Client = deadpool_postgres::Object;

impl PgStore {
    /// Connects to `url` (a `postgres://` URL or `key=value` pairs, as
    /// libpq takes them), applies the migrations this build has and the
    /// database lacks, and refuses a database whose schema is newer.
    pub fn open(url: &str, options: Options) -> Result<PgStore, Error> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| Error::Setup(format!("invalid PostgreSQL connection string: {e}")))?;
        let idle = format!("-c idle_in_transaction_session_timeout={}", options.idle_in_transaction.as_millis().max(1));
        let joined = match config.get_options() {
            Some(theirs) => format!("{theirs} {idle}"),
            None => idle,
        };
        config.options(&joined);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("stoa-pg")
            .enable_all()
            .build()
            .map_err(|e| Error::Setup(format!("starting the store's runtime: {e}")))?;
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| Error::Setup(format!("PostgreSQL pool: {e}")))?;
        let mut store = PgStore {
            rt: Some(rt),
            pool,
            partitions: 0,
            call_timeout: options.call_timeout,
            health: Arc::default(),
            held: Default::default(),
            secret: String::new(),
        };
        let (pool, wanted) = (store.pool.clone(), options.partitions);
        (store.partitions, store.secret) = store
            .wait(async move {
                let client = pool.get().await.map_err(|e| setup(Fail::from(e)))?;
                let migrated = migrate(&client, wanted).await?;
                fill_list_columns(&client).await?;
                Ok(migrated)
            })
            .map_err(|e| match e {
                Error::Io(m) => Error::Setup(format!("opening the PostgreSQL store: {m}")),
                other => other,
            })?;
        Ok(store)
    }

    /// Partitions of the cluster this database holds.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// What servers of this cluster show each other (see `schema`).
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The commit's refusal: which of its workflows are in `partitions`.
    fn fenced_error(&self, turns: &[Commit<'_>], partitions: Vec<u32>) -> Error {
        let workflows = turns
            .iter()
            .filter(|c| partitions.contains(&c.workflow.partition(self.partitions)))
            .map(|c| c.workflow.clone())
            .collect();
        Error::Fenced { partitions, workflows }
    }

    /// Runs `fut` on the store's runtime and waits for it.
    fn wait<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Result<T, Error> {
        let rt = self.rt.as_ref().expect("the runtime lives as long as the store");
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        let recv = move || rx.recv().unwrap_or_else(|_| Err(Error::Io("the store's runtime stopped".into())));
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(recv)
            }
            _ => recv(),
        }
    }

    /// Runs `f` with a connection of the pool; a failure to reach the
    /// database marks the store failing. `f` runs once: see `transaction`
    /// for what is tried again.
    fn call<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Fail>> + Send,
    {
        let (pool, health, limit) = (self.pool.clone(), self.health.clone(), self.call_timeout);
        let handle = self.rt.as_ref().expect("runtime").handle().clone();
        self.wait(async move {
            let run = async {
                match pool.get().await {
                    Ok(client) => f(client).await,
                    Err(e) => Err(Fail::from(e)),
                }
            };
            let res = tokio::time::timeout(limit, run)
                .await
                .unwrap_or_else(|_| Err(Fail::Unreachable(format!("postgres: no answer within {limit:?}"))));
            match res {
                Ok(v) => Ok(v),
                Err(Fail::Unreachable(m)) => {
                    mark_failing(&health, &pool, &handle, &m, limit);
                    Err(Error::Io(m))
                }
                Err(Fail::Retry(m)) => Err(Error::Io(format!("{m}: gave up after {MAX_TRIES} tries"))),
                Err(Fail::Other(e)) => Err(e),
            }
        })
    }
}

fn setup(f: Fail) -> Error {
    match f {
        Fail::Unreachable(m) | Fail::Retry(m) => Error::Io(m),
        Fail::Other(e) => e,
    }
}

/// Marks the store failing and starts a probe that marks it serving again.
fn mark_failing(health: &Arc<HealthState>, pool: &Pool, rt: &tokio::runtime::Handle, cause: &str, limit: Duration) {
    if !health.failing.swap(true, Ordering::AcqRel) {
        tracing::error!(error = %cause, "the PostgreSQL store cannot reach its database");
        health.notify();
    }
    if health.probing.swap(true, Ordering::AcqRel) {
        return;
    }
    let (health, pool) = (health.clone(), pool.clone());
    rt.spawn(async move {
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            let probe = async {
                match pool.get().await {
                    Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
                    Err(_) => false,
                }
            };
            let ok = tokio::time::timeout(limit, probe).await.unwrap_or(false);
            if ok {
                health.probing.store(false, Ordering::Release);
                health.failing.store(false, Ordering::Release);
                tracing::info!("the PostgreSQL store reaches its database again");
                health.notify();
                return;
            }
        }
    });
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Runs `body` in a SERIALIZABLE transaction, again after a serialization
/// failure (with a short random pause, so that two contenders part).
async fn transaction<T, F>(client: &mut Client, body: F) -> Result<T, Fail>
where
    F: for<'t> Fn(&'t deadpool_postgres::Transaction<'t>) -> futures_util::future::BoxFuture<'t, Result<T, Fail>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        let tx = client.build_transaction().isolation_level(IsolationLevel::Serializable).start().await?;
        let res = match body(&tx).await {
            Ok(v) => tx.commit().await.map(|()| v).map_err(Fail::from),
            Err(e) => {
                drop(tx);
                Err(e)
            }
        };
        match res {
            Err(Fail::Retry(m)) if tries < MAX_TRIES => {
                tracing::debug!(tries, error = %m, "serialization failure; running the transaction again");
                let jitter = u64::from(std::time::SystemTime::now().elapsed().unwrap_or_default().subsec_nanos() % 5);
                tokio::time::sleep(Duration::from_millis(u64::from(tries) + jitter)).await;
            }
            other => return other,
        }
    }
}

/// Creates the schema-version table, then applies what is missing.
/// Returns the cluster's partitions.
async fn migrate(client: &Client, partitions: u32) -> Result<(u32, String), Error> {
    let io = |e: tokio_postgres::Error| Error::Io(describe(&e));
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| Error::Setup(format!("no randomness for the cluster's secret: {e}")))?;
    let secret: String = random.iter().map(|b| format!("{b:02x}")).collect();
    // Two servers creating the table at once: one may fail on PostgreSQL's
    // catalog; it finds the table the next time.
    for attempt in 0.. {
        match client.batch_execute(schema::SCHEMA_TABLE).await {
            Ok(()) => break,
            Err(e) if attempt < 5 && e.code().is_some() => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => return Err(io(e)),
        }
    }
    loop {
        let row = client.query_one("SELECT COALESCE(MAX(version), 0) FROM stoa_schema", &[]).await.map_err(io)?;
        let current: i32 = row.get(0);
        if current > schema::VERSION {
            return Err(Error::Setup(format!(
                "the database's Stoa schema is version {current}, newer than this build's ({}): run a newer stoa",
                schema::VERSION
            )));
        }
        if current == schema::VERSION {
            break;
        }
        let (version, sql) = schema::MIGRATIONS[current as usize];
        let applied = async {
            client.batch_execute("BEGIN").await?;
            client.execute("INSERT INTO stoa_schema (version) VALUES ($1)", &[&version]).await?;
            client.batch_execute(sql).await?;
            if version == 1 {
                let p = partitions.max(1) as i32;
                client.execute("INSERT INTO cluster (id, partitions) VALUES (1, $1)", &[&p]).await?;
                client.execute("INSERT INTO partitions (id) SELECT generate_series(0, $1 - 1)", &[&p]).await?;
            }
            if version == 2 {
                client.execute("UPDATE cluster SET secret = $1 WHERE id = 1", &[&secret]).await?;
            }
            client.batch_execute("COMMIT").await
        }
        .await;
        if let Err(e) = applied {
            let _ = client.batch_execute("ROLLBACK").await;
            // Another server applied it first: read the version again.
            let raced =
                e.code() == Some(&SqlState::UNIQUE_VIOLATION) || e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE);
            if !raced {
                return Err(Error::Io(format!("applying schema migration {version}: {}", describe(&e))));
            }
            continue;
        }
        tracing::info!(version, "applied a schema migration");
    }
    let row = client.query_one("SELECT partitions, secret FROM cluster WHERE id = 1", &[]).await.map_err(io)?;
    let stored: i32 = row.get(0);
    if stored as u32 != partitions {
        tracing::info!(partitions = stored, asked = partitions, "the cluster keeps the partitions it was created with");
    }
    Ok((stored as u32, row.get(1)))
}

/// Gives rows an older build wrote their list index columns (schema 3),
/// a batch at a time; a running workflow's waits from its rows in
/// `waiting` and `timers`, since its meta did not carry them yet. Each
/// batch is one statement: a server stopped half-way leaves the rest to
/// the next open.
async fn fill_list_columns(client: &Client) -> Result<(), Error> {
    let io = |e: tokio_postgres::Error| Error::Io(format!("filling the list index: {}", describe(&e)));
    loop {
        let rows = client
            .query(
                "SELECT w.id, w.meta, EXISTS (SELECT 1 FROM waiting x WHERE x.wf = w.id), \
                 EXISTS (SELECT 1 FROM timers x WHERE x.wf = w.id) FROM workflows w WHERE w.tenant IS NULL LIMIT 500",
                &[],
            )
            .await
            .map_err(io)?;
        if rows.is_empty() {
            return Ok(());
        }
        let (mut id, mut tenant, mut created, mut version, mut waits) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in &rows {
            let key: &str = r.get(0);
            let meta: Meta = decode(key.as_bytes(), r.get(1))?;
            let meta = stoa_engine::store::index::with_stored_waits(meta, r.get(2), r.get(3));
            tenant.push(stoa_engine::store::index::tenant(&meta.id).to_string());
            created.push(int(meta.created_ms));
            version.push(meta.pack_version.clone());
            waits.push(rows::waits(&meta));
            id.push(key.to_string());
        }
        client
            .execute(
                "UPDATE workflows w SET tenant = t.tenant, created_ms = t.created, version = t.version, waits = t.waits \
                 FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[]) \
                 AS t(id, tenant, created, version, waits) WHERE w.id = t.id",
                &[&id, &tenant, &created, &version, &waits],
            )
            .await
            .map_err(io)?;
    }
}

/// The first string after every string that starts with `prefix`, if
/// there is one (`None` for the empty prefix: no upper bound).
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = last as u32 + 1;
        // Skip the surrogates, which are not characters.
        if (0xD800..0xE000).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Limits a read to the partitions of its first parameter (`only`).
const IN_PARTS: &str = "WHERE $1::int4[] IS NULL OR part = ANY($1)";

/// The partitions a read is limited to (`None`: all). Their count must be
/// the cluster's: rows carry the partition they were written with.
fn only(parts: &Parts) -> Option<Vec<i32>> {
    match parts {
        Parts::All => None,
        Parts::Some { ids, .. } => Some(ids.iter().map(|p| *p as i32).collect()),
    }
}

fn decoded<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, Fail> {
    decode(key.as_bytes(), bytes).map_err(Fail::Other)
}

const UPSERT_WORKFLOWS: &str =
    "INSERT INTO workflows (id, part, status, pack, finished_ms, meta, tenant, created_ms, version, waits) \
     SELECT * FROM unnest($1::text[], $2::int4[], $3::text[], $4::text[], $5::int8[], $6::bytea[], $7::text[], \
     $8::int8[], $9::text[], $10::text[]) \
     ON CONFLICT (id) DO UPDATE SET part = excluded.part, status = excluded.status, pack = excluded.pack, \
     finished_ms = excluded.finished_ms, meta = excluded.meta, tenant = excluded.tenant, \
     created_ms = excluded.created_ms, version = excluded.version, waits = excluded.waits";
const UPSERT_FACTS: &str =
    "INSERT INTO facts (wf, id, body) SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[]) \
     ON CONFLICT (wf, id) DO UPDATE SET body = excluded.body";
const DELETE_FACTS: &str = "DELETE FROM facts WHERE (wf, id) IN (SELECT * FROM unnest($1::text[], $2::int8[]))";
const UPSERT_WAITING: &str = "INSERT INTO waiting (wf, inv, part, body) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::bytea[]) \
     ON CONFLICT (wf, inv) DO UPDATE SET part = excluded.part, body = excluded.body";
const DELETE_WAITING: &str = "DELETE FROM waiting WHERE (wf, inv) IN (SELECT * FROM unnest($1::text[], $2::text[]))";
const DELETE_ATTEMPTS: &str = "DELETE FROM attempts WHERE inv = ANY($1::text[])";
const UPSERT_TIMELINE: &str = "INSERT INTO timeline (wf, seq, body) \
     SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[]) \
     ON CONFLICT (wf, seq) DO UPDATE SET body = excluded.body";
const UPSERT_TIMERS: &str = "INSERT INTO timers (wf, due_ms, part, body) \
     SELECT * FROM unnest($1::text[], $2::int8[], $3::int4[], $4::bytea[]) \
     ON CONFLICT (wf, due_ms) DO UPDATE SET part = excluded.part, body = excluded.body";
const DELETE_TIMERS: &str = "DELETE FROM timers WHERE (wf, due_ms) IN (SELECT * FROM unnest($1::text[], $2::int8[]))";
const UPSERT_AUX: &str = "INSERT INTO aux (kind, key, part, value) \
     SELECT $1, k, p, v FROM unnest($2::text[], $3::int4[], $4::bytea[]) AS t(k, p, v) \
     ON CONFLICT (kind, key) DO UPDATE SET part = excluded.part, value = excluded.value";
const DELETE_AUX: &str = "DELETE FROM aux WHERE kind = $1 AND key = ANY($2::text[])";
const UPSERT_REQUESTS: &str = "INSERT INTO requests (key, wf) SELECT * FROM unnest($1::text[], $2::text[]) \
     ON CONFLICT (key) DO UPDATE SET wf = excluded.wf";

/// One statement of a commit: its SQL and its parameters, owned.
struct Statement {
    sql: &'static str,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

fn statement(sql: &'static str, params: Vec<Box<dyn ToSql + Sync + Send>>) -> Statement {
    Statement { sql, params }
}

/// Rows as columns, one vector each, as `unnest` takes them.
fn split3<T, A, B, C>(rows: Vec<T>, f: impl FnMut(T) -> (A, B, C)) -> (Vec<A>, Vec<B>, Vec<C>) {
    let mut cols = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
    for (a, b, c) in rows.into_iter().map(f) {
        cols.0.push(a);
        cols.1.push(b);
        cols.2.push(c);
    }
    cols
}

/// `split3`, with a fourth column.
fn split4<T, A, B, C, D>(rows: Vec<T>, f: impl Fn(T) -> (A, B, C, D)) -> (Vec<A>, Vec<B>, Vec<C>, Vec<D>) {
    let mut d = Vec::with_capacity(rows.len());
    let (a, b, c) = split3(rows, |row| {
        let (a, b, c, x) = f(row);
        d.push(x);
        (a, b, c)
    });
    (a, b, c, d)
}

/// Boxes a statement's parameters.
macro_rules! params {
    ($($p:expr),*) => { vec![$(Box::new($p) as Box<dyn ToSql + Sync + Send>),*] };
}

/// The statements of a group commit: for each table, one upsert and one
/// delete of many rows (none for a table the commit does not touch).
fn statements(rows: Rows) -> Vec<Statement> {
    let mut out = Vec::new();
    let mut add = |sql, params: Vec<Box<dyn ToSql + Sync + Send>>| out.push(statement(sql, params));
    let (puts, _) = rows.workflows.split();
    if !puts.is_empty() {
        let (id, part, status, rest) = split4(puts, |(id, r)| {
            (id, r.part, r.status, (r.pack, r.finished_ms, r.meta, r.tenant, r.created_ms, r.version, r.waits))
        });
        let (mut pack, mut finished, mut meta) = (Vec::new(), Vec::new(), Vec::new());
        let (mut tenant, mut created, mut version, mut waits) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (p, f, m, t, c, v, w) in rest {
            pack.push(p);
            finished.push(f);
            meta.push(m);
            tenant.push(t);
            created.push(c);
            version.push(v);
            waits.push(w);
        }
        add(UPSERT_WORKFLOWS, params![id, part, status, pack, finished, meta, tenant, created, version, waits]);
    }
    let (puts, deletes) = rows.facts.split();
    if !puts.is_empty() {
        let (wf, id, body) = split3(puts, |((wf, id), body)| (wf, id, body));
        add(UPSERT_FACTS, params![wf, id, body]);
    }
    if !deletes.is_empty() {
        let (wf, id): (Vec<String>, Vec<i64>) = deletes.into_iter().unzip();
        add(DELETE_FACTS, params![wf, id]);
    }
    let (puts, deletes) = rows.waiting.split();
    if !puts.is_empty() {
        let (wf, inv, part, body) = split4(puts, |((wf, inv), (part, body))| (wf, inv, part, body));
        add(UPSERT_WAITING, params![wf, inv, part, body]);
    }
    if !deletes.is_empty() {
        let (wf, inv): (Vec<String>, Vec<String>) = deletes.into_iter().unzip();
        add(DELETE_WAITING, params![wf, inv]);
    }
    let (_, gone) = rows.attempts_gone.split();
    if !gone.is_empty() {
        add(DELETE_ATTEMPTS, params![gone]);
    }
    let (puts, _) = rows.timeline.split();
    if !puts.is_empty() {
        let (wf, seq, body) = split3(puts, |((wf, seq), body)| (wf, seq, body));
        add(UPSERT_TIMELINE, params![wf, seq, body]);
    }
    let (puts, deletes) = rows.timers.split();
    if !puts.is_empty() {
        let (wf, due, part, body) = split4(puts, |((wf, due), (part, body))| (wf, due, part, body));
        add(UPSERT_TIMERS, params![wf, due, part, body]);
    }
    if !deletes.is_empty() {
        let (wf, due): (Vec<String>, Vec<i64>) = deletes.into_iter().unzip();
        add(DELETE_TIMERS, params![wf, due]);
    }
    let (puts, _) = rows.signals.split();
    if !puts.is_empty() {
        let (key, part, value) = split3(puts, |(key, (part, value))| (key, part, value));
        add(UPSERT_AUX, params![SIGNAL_OUTBOX.to_string(), key, part, value]);
    }
    let (puts, _) = rows.requests.split();
    if !puts.is_empty() {
        let (key, wf): (Vec<String>, Vec<String>) = puts.into_iter().unzip();
        add(UPSERT_REQUESTS, params![key, wf]);
    }
    out
}

/// Runs statements on one connection, pipelined: all are sent before the
/// first answer is awaited.
async fn run_all(tx: &deadpool_postgres::Transaction<'_>, stmts: &[Statement]) -> Result<(), Fail> {
    let prepared =
        futures_util::future::try_join_all(stmts.iter().map(|s| tx.prepare_cached(s.sql))).await.map_err(Fail::from)?;
    let runs = stmts.iter().zip(&prepared).map(|(s, p)| {
        let params: Vec<&(dyn ToSql + Sync)> = s.params.iter().map(|b| &**b as &(dyn ToSql + Sync)).collect();
        async move { tx.execute(p, &params).await }
    });
    futures_util::future::try_join_all(runs).await.map_err(Fail::from)?;
    Ok(())
}

impl Store for PgStore {
    fn health(&self) -> Health {
        self.health.get()
    }

    /// The whole database's (a cluster's servers all say the same).
    fn size_bytes(&self) -> Result<Option<u64>, Error> {
        self.call(|client| async move {
            let row = client.query_one("SELECT pg_database_size(current_database())", &[]).await?;
            Ok(u64::try_from(row.get::<_, i64>(0)).ok())
        })
    }

    fn on_health(&self, f: HealthWatcher) {
        let mut watchers = self.health.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        f(self.health.get());
        watchers.push(f);
    }

    fn commit(&self, turns: &[Commit<'_>]) -> Result<(), Error> {
        let stmts = Arc::new(statements(Rows::of(turns, self.partitions)));
        if stmts.is_empty() {
            return Ok(());
        }
        let parts = turns.iter().map(|c| c.workflow.partition(self.partitions)).collect();
        let stale = self.stale(turns);
        if !stale.is_empty() {
            return Err(Error::Fenced { partitions: Vec::new(), workflows: stale });
        }
        let fence = match self.expected(&parts) {
            Ok(fence) => Arc::new(fence),
            Err(missing) => return Err(self.fenced_error(turns, missing)),
        };
        let res = self.call(move |mut client| async move {
            transaction(&mut client, |tx| {
                let (stmts, fence) = (stmts.clone(), fence.clone());
                Box::pin(async move {
                    let Some(fence) = &*fence else { return run_all(tx, &stmts).await };
                    // Sent with the writes; read before the commit.
                    let ids: Vec<i32> = fence.epochs.iter().map(|e| e.0).collect();
                    let check = async {
                        let st = tx.prepare_cached(leases::FENCE).await?;
                        tx.query(&st, &[&ids]).await.map_err(Fail::from)
                    };
                    let (rows, ()) = futures_util::future::try_join(check, run_all(tx, &stmts)).await?;
                    let lost = leases::moved(&rows, &fence.member, &fence.epochs);
                    if lost.is_empty() {
                        Ok(())
                    } else {
                        Err(Fail::from(lost))
                    }
                })
            })
            .await
        });
        match res {
            Err(Error::Fenced { partitions, .. }) => {
                self.fenced(&partitions);
                Err(self.fenced_error(turns, partitions))
            }
            other => other,
        }
    }

    fn load(&self, id: &WorkflowId) -> Result<Option<Snapshot>, Error> {
        let wf = id.as_str().to_string();
        self.call(move |client| async move {
            // One statement: one snapshot of the four tables.
            let sql = "SELECT 0 AS k, 0::int8 AS o, meta AS b FROM workflows WHERE id = $1 \
                 UNION ALL SELECT 1, id, body FROM facts WHERE wf = $1 \
                 UNION ALL SELECT 2, 0, body FROM waiting WHERE wf = $1 \
                 UNION ALL SELECT 3, due_ms, body FROM timers WHERE wf = $1 \
                 ORDER BY 1, 2";
            let st = client.prepare_cached(sql).await?;
            let rows = client.query(&st, &[&wf]).await?;
            let mut meta: Option<Meta> = None;
            let (mut facts, mut waiting, mut timers) = (Vec::new(), Vec::<Waiting>::new(), Vec::<Timer>::new());
            for r in rows {
                let (k, b): (i32, &[u8]) = (r.get(0), r.get(2));
                match k {
                    0 => meta = Some(decoded(&wf, b)?),
                    1 => facts.push(decoded(&wf, b)?),
                    2 => waiting.push(decoded(&wf, b)?),
                    _ => timers.extend(decoded::<Vec<Timer>>(&wf, b)?),
                }
            }
            // In invocation id order, as the embedded store keeps them.
            waiting.sort_by(|a, b| a.invocation.id.as_str().cmp(b.invocation.id.as_str()));
            Ok(meta.map(|meta| Snapshot { meta, facts, waiting, timers }))
        })
    }

    fn workflows(&self, prefix: &str, after: Option<&WorkflowId>, limit: usize) -> Result<Vec<Meta>, Error> {
        let from = after.map_or(prefix.to_string(), |a| a.as_str().to_string());
        let exclusive = after.is_some();
        let end = prefix_end(prefix);
        let limit = int(limit as u64);
        self.call(move |client| async move {
            let cmp = if exclusive { ">" } else { ">=" };
            let sql = match &end {
                Some(_) => format!("SELECT id, meta FROM workflows WHERE id {cmp} $1 AND id < $2 ORDER BY id LIMIT $3"),
                None => format!("SELECT id, meta FROM workflows WHERE id {cmp} $1 ORDER BY id LIMIT $2"),
            };
            let st = client.prepare_cached(&sql).await?;
            let rows = match &end {
                Some(end) => client.query(&st, &[&from, end, &limit]).await?,
                None => client.query(&st, &[&from, &limit]).await?,
            };
            rows.iter().map(|r| decoded(r.get(0), r.get(1))).collect()
        })
    }

    fn list(&self, q: &ListQuery<'_>) -> Result<Vec<Meta>, Error> {
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = params![q.tenant.to_string()];
        let mut conds = vec!["tenant = $1".to_string()];
        let mut param = |p: Box<dyn ToSql + Sync + Send>| {
            params.push(p);
            format!("${}", params.len())
        };
        match q.family {
            Family::All => {}
            Family::Pack(p) => conds.push(format!("pack = {}", param(Box::new(p.to_string())))),
            Family::Version(p, v) => {
                conds.push(format!("pack = {}", param(Box::new(p.to_string()))));
                conds.push(format!("version = {}", param(Box::new(v.to_string()))));
            }
        }
        if let Some(s) = q.status {
            // Constants of this build, never a tenant's text.
            conds.push(match s {
                ListStatus::WaitingInvocation => "waits = 'invocation'".into(),
                ListStatus::WaitingTimer => "waits = 'timer'".into(),
                other => format!("status = '{}'", other.as_str()),
            });
        }
        if let Some(t) = q.since_ms {
            conds.push(format!("created_ms >= {}", param(Box::new(int(t)))));
        }
        if let Some(t) = q.until_ms {
            conds.push(format!("created_ms < {}", param(Box::new(int(t)))));
        }
        if let Some((ms, id)) = q.before {
            let (a, b) = (param(Box::new(int(ms))), param(Box::new(id.as_str().to_string())));
            conds.push(format!("(created_ms, id) < ({a}, {b})"));
        }
        let limit = param(Box::new(int(q.limit as u64)));
        let sql = format!(
            "SELECT id, meta FROM workflows WHERE {} ORDER BY created_ms DESC, id DESC LIMIT {limit}",
            conds.join(" AND ")
        );
        self.call(move |client| async move {
            let st = client.prepare_cached(&sql).await?;
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|b| &**b as &(dyn ToSql + Sync)).collect();
            let rows = client.query(&st, &refs).await?;
            rows.iter().map(|r| decoded(r.get(0), r.get(1))).collect()
        })
    }

    fn list_counts(&self, tenant: &str, family: Family<'_>) -> Result<ListCounts, Error> {
        let (pack, version) = match family {
            Family::All => (None, None),
            Family::Pack(p) => (Some(p.to_string()), None),
            Family::Version(p, v) => (Some(p.to_string()), Some(v.to_string())),
        };
        let tenant = tenant.to_string();
        self.call(move |client| async move {
            let sql = "SELECT status, waits, count(*) FROM workflows WHERE tenant = $1 \
                       AND ($2::text IS NULL OR pack = $2) AND ($3::text IS NULL OR version = $3) GROUP BY status, waits";
            let st = client.prepare_cached(sql).await?;
            let mut c = ListCounts::default();
            for r in client.query(&st, &[&tenant, &pack, &version]).await? {
                let (status, waits, n): (String, Option<String>, i64) = (r.get(0), r.get(1), r.get(2));
                let n = n.max(0) as u64;
                c.all += n;
                let mut add = |s: ListStatus| c.by_status[s as usize] += n;
                match status.as_str() {
                    "running" => {
                        add(ListStatus::Running);
                        match waits.as_deref() {
                            Some("invocation") => add(ListStatus::WaitingInvocation),
                            Some("timer") => add(ListStatus::WaitingTimer),
                            _ => {}
                        }
                    }
                    "completed" => add(ListStatus::Completed),
                    "failed" => add(ListStatus::Failed),
                    "cancelled" => add(ListStatus::Cancelled),
                    _ => {}
                }
            }
            Ok(c)
        })
    }

    fn put_pack(&self, pack: &PackRecord) -> Result<(), Error> {
        let (tenant, name, seq, body) = (pack.tenant.clone(), pack.name.clone(), int(pack.seq), encode(pack));
        self.call(move |client| async move {
            let sql = "INSERT INTO packs (tenant, name, seq, body) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (tenant, name, seq) DO UPDATE SET body = excluded.body";
            client.execute(sql, &[&tenant, &name, &seq, &body]).await?;
            Ok(())
        })
    }

    fn packs(&self, tenant: &str) -> Result<Vec<PackRecord>, Error> {
        let tenant = tenant.to_string();
        self.call(move |client| async move {
            let st = client.prepare_cached("SELECT name, body FROM packs WHERE tenant = $1 ORDER BY name, seq").await?;
            let rows = client.query(&st, &[&tenant]).await?;
            rows.iter().map(|r| decoded(r.get(0), r.get(1))).collect()
        })
    }

    fn pack_seqs(&self, tenant: &str) -> Result<Vec<(String, u64)>, Error> {
        let tenant = tenant.to_string();
        self.call(move |client| async move {
            let st = client.prepare_cached("SELECT name, seq FROM packs WHERE tenant = $1").await?;
            let rows = client.query(&st, &[&tenant]).await?;
            Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64)).collect())
        })
    }

    fn pack(&self, tenant: &str, name: &str, seq: u64) -> Result<Option<PackRecord>, Error> {
        let (tenant, name, seq) = (tenant.to_string(), name.to_string(), int(seq));
        self.call(move |client| async move {
            let st =
                client.prepare_cached("SELECT body FROM packs WHERE tenant = $1 AND name = $2 AND seq = $3").await?;
            match client.query_opt(&st, &[&tenant, &name, &seq]).await? {
                Some(r) => Ok(Some(decoded(&name, r.get(0))?)),
                None => Ok(None),
            }
        })
    }

    fn timeline(&self, id: &WorkflowId, from: u64, limit: usize) -> Result<Vec<Entry>, Error> {
        let (wf, from) = (id.as_str().to_string(), int(from));
        self.call(move |client| async move {
            // From the run holding `from` (it starts at or before it), a
            // page of runs at a time until `limit` entries.
            let first = client
                .prepare_cached(
                    "SELECT seq, body FROM timeline WHERE wf = $1 AND seq >= \
                     COALESCE((SELECT MAX(seq) FROM timeline WHERE wf = $1 AND seq <= $2), $2) \
                     ORDER BY seq LIMIT $3",
                )
                .await?;
            let next = client
                .prepare_cached("SELECT seq, body FROM timeline WHERE wf = $1 AND seq > $2 ORDER BY seq LIMIT $3")
                .await?;
            let mut out: Vec<Entry> = Vec::new();
            let mut last: Option<i64> = None;
            while out.len() < limit {
                let page = ((limit - out.len()).min(64)) as i64;
                let rows = match last {
                    None => client.query(&first, &[&wf, &from, &page]).await?,
                    Some(seq) => client.query(&next, &[&wf, &seq, &page]).await?,
                };
                if rows.is_empty() {
                    break;
                }
                for r in &rows {
                    let run = decode_run(wf.as_bytes(), r.get(1)).map_err(Fail::Other)?;
                    let room = limit - out.len();
                    out.extend(run.filter(|e| e.seq >= from as u64).take(room));
                    last = Some(r.get(0));
                }
            }
            Ok(out)
        })
    }

    fn outbox(&self, parts: &Parts) -> Result<Vec<Invocation>, Error> {
        let only = only(parts);
        self.call(|client| async move {
            let rows = client.query(&format!("SELECT wf, body FROM waiting {IN_PARTS}"), &[&only]).await?;
            rows.iter().map(|r| Ok(decoded::<Waiting>(r.get(0), r.get(1))?.invocation)).collect()
        })
    }

    fn record_attempts(&self, attempts: &[(InvocationId, Attempts)]) -> Result<(), Error> {
        if attempts.is_empty() {
            return Ok(());
        }
        let partitions = self.partitions;
        let mut cols = (Vec::new(), Vec::new(), Vec::new());
        let mut seen = std::collections::HashMap::new();
        // A later record of one invocation replaces an earlier one.
        for (id, a) in attempts {
            seen.insert(id.as_str().to_string(), (id, a));
        }
        for (k, (id, a)) in seen {
            let part = id.workflow().map_or(0, |wf| wf.partition(partitions) as i32);
            cols.0.push(k);
            cols.1.push(part);
            cols.2.push(encode(a));
        }
        self.call(move |client| async move {
            let sql =
                "INSERT INTO attempts (inv, part, body) SELECT * FROM unnest($1::text[], $2::int4[], $3::bytea[]) \
                 ON CONFLICT (inv) DO UPDATE SET part = excluded.part, body = excluded.body";
            client.execute(sql, &[&cols.0, &cols.1, &cols.2]).await?;
            Ok(())
        })
    }

    fn attempts(&self, parts: &Parts) -> Result<Vec<(InvocationId, Attempts)>, Error> {
        let only = only(parts);
        self.call(|client| async move {
            let rows =
                client.query(&format!("SELECT inv, body FROM attempts {IN_PARTS} ORDER BY inv"), &[&only]).await?;
            rows.iter()
                .map(|r| {
                    let inv: &str = r.get(0);
                    Ok((InvocationId::new(inv), decoded(inv, r.get(1))?))
                })
                .collect()
        })
    }

    fn request(&self, request_id: &str) -> Result<Option<WorkflowId>, Error> {
        let key = request_id.to_string();
        self.call(move |client| async move {
            let st = client.prepare_cached("SELECT wf FROM requests WHERE key = $1").await?;
            Ok(client.query_opt(&st, &[&key]).await?.map(|r| WorkflowId::new(r.get::<_, &str>(0))))
        })
    }

    fn requests(&self, prefix: &str, limit: usize) -> Result<Vec<(String, WorkflowId)>, Error> {
        let (from, end, limit) = (prefix.to_string(), prefix_end(prefix), int(limit as u64));
        self.call(move |client| async move {
            let rows = match &end {
                Some(end) => {
                    let sql = "SELECT key, wf FROM requests WHERE key >= $1 AND key < $2 ORDER BY key LIMIT $3";
                    client.query(&client.prepare_cached(sql).await?, &[&from, end, &limit]).await?
                }
                None => {
                    let sql = "SELECT key, wf FROM requests WHERE key >= $1 ORDER BY key LIMIT $2";
                    client.query(&client.prepare_cached(sql).await?, &[&from, &limit]).await?
                }
            };
            Ok(rows.iter().map(|r| (r.get::<_, String>(0), WorkflowId::new(r.get::<_, &str>(1)))).collect())
        })
    }

    fn pending(&self, id: &InvocationId) -> Result<bool, Error> {
        let Some(wf) = id.workflow() else { return Ok(false) };
        let (wf, inv) = (wf.as_str().to_string(), id.as_str().to_string());
        self.call(move |client| async move {
            let st = client.prepare_cached("SELECT 1 FROM waiting WHERE wf = $1 AND inv = $2").await?;
            Ok(client.query_opt(&st, &[&wf, &inv]).await?.is_some())
        })
    }

    fn timers(&self, parts: &Parts) -> Result<Vec<Timer>, Error> {
        let only = only(parts);
        self.call(|client| async move {
            let rows = client.query(&format!("SELECT wf, body FROM timers {IN_PARTS}"), &[&only]).await?;
            let mut out = Vec::new();
            for r in &rows {
                out.extend(decoded::<Vec<Timer>>(r.get(0), r.get(1))?);
            }
            Ok(out)
        })
    }

    fn finished_before(&self, before_ms: u64, limit: usize) -> Result<Vec<WorkflowId>, Error> {
        let (before, limit) = (int(before_ms), int(limit as u64));
        self.call(move |client| async move {
            let st = client
                .prepare_cached(
                    "SELECT id FROM workflows WHERE finished_ms IS NOT NULL AND finished_ms < $1 \
                     ORDER BY finished_ms, id LIMIT $2",
                )
                .await?;
            let rows = client.query(&st, &[&before, &limit]).await?;
            Ok(rows.iter().map(|r| WorkflowId::new(r.get::<_, &str>(0))).collect())
        })
    }

    fn delete_finished(&self, ids: &[WorkflowId]) -> Result<usize, Error> {
        let ids: Arc<Vec<String>> = Arc::new(ids.iter().map(|i| i.as_str().to_string()).collect());
        self.call(move |mut client| async move {
            transaction(&mut client, |tx| {
                let ids = ids.clone();
                Box::pin(async move {
                    let gone = tx
                        .query(
                            "DELETE FROM workflows WHERE id = ANY($1::text[]) AND finished_ms IS NOT NULL \
                             RETURNING id, meta",
                            &[&*ids],
                        )
                        .await?;
                    let (mut wfs, mut requests) = (Vec::new(), Vec::new());
                    for r in &gone {
                        let id: &str = r.get(0);
                        let meta: Meta = decoded(id, r.get(1))?;
                        if let Some(req) = meta.request {
                            requests.push(req);
                        }
                        wfs.push(id.to_string());
                    }
                    if wfs.is_empty() {
                        return Ok(0);
                    }
                    for table in ["facts", "waiting", "timeline", "timers"] {
                        tx.execute(&format!("DELETE FROM {table} WHERE wf = ANY($1::text[])"), &[&wfs]).await?;
                    }
                    // Only its own request record: never a later workflow's.
                    tx.execute(
                        "DELETE FROM requests WHERE (key, wf) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
                        &[&requests, &wfs],
                    )
                    .await?;
                    Ok(wfs.len())
                })
            })
            .await
        })
    }

    fn put_aux(&self, kind: &str, key: &str, value: &serde_json::Value) -> Result<(), Error> {
        self.put_aux_batch(&[(kind, key, Some(value))])
    }

    fn get_aux(&self, kind: &str, key: &str) -> Result<Option<serde_json::Value>, Error> {
        let (kind, key) = (kind.to_string(), key.to_string());
        self.call(move |client| async move {
            let st = client.prepare_cached("SELECT value FROM aux WHERE kind = $1 AND key = $2").await?;
            match client.query_opt(&st, &[&kind, &key]).await? {
                Some(r) => Ok(Some(decoded(&key, r.get(0))?)),
                None => Ok(None),
            }
        })
    }

    fn scan_aux(&self, kind: &str, prefix: &str) -> Result<Vec<(String, serde_json::Value)>, Error> {
        let (kind, prefix, end) = (kind.to_string(), prefix.to_string(), prefix_end(prefix));
        self.call(move |client| async move {
            let rows = match &end {
                Some(end) => {
                    let sql = "SELECT key, value FROM aux WHERE kind = $1 AND key >= $2 AND key < $3 ORDER BY key";
                    client.query(sql, &[&kind, &prefix, end]).await?
                }
                None => client.query("SELECT key, value FROM aux WHERE kind = $1 ORDER BY key", &[&kind]).await?,
            };
            rows.iter()
                .map(|r| {
                    let key: &str = r.get(0);
                    Ok((key.to_string(), decoded(key, r.get(1))?))
                })
                .collect()
        })
    }

    fn delete_aux(&self, kind: &str, key: &str) -> Result<(), Error> {
        self.put_aux_batch(&[(kind, key, None)])
    }

    fn put_aux_batch(&self, records: &[(&str, &str, Option<&serde_json::Value>)]) -> Result<(), Error> {
        // Grouped by kind, the last write of a key winning, in one
        // transaction: all or none, as the embedded store does.
        let mut by_kind: std::collections::BTreeMap<String, std::collections::HashMap<String, Option<Vec<u8>>>> =
            Default::default();
        for (kind, key, value) in records {
            by_kind.entry(kind.to_string()).or_default().insert(key.to_string(), value.map(encode));
        }
        let mut stmts = Vec::new();
        for (kind, keys) in by_kind {
            let (mut put_k, mut put_v, mut del) = (Vec::new(), Vec::new(), Vec::new());
            for (k, v) in keys {
                match v {
                    Some(v) => {
                        put_k.push(k);
                        put_v.push(v);
                    }
                    None => del.push(k),
                }
            }
            if !put_k.is_empty() {
                let parts: Vec<Option<i32>> = vec![None; put_k.len()];
                stmts.push(statement(UPSERT_AUX, params![kind.clone(), put_k, parts, put_v]));
            }
            if !del.is_empty() {
                stmts.push(statement(DELETE_AUX, params![kind, del]));
            }
        }
        if stmts.is_empty() {
            return Ok(());
        }
        let stmts = Arc::new(stmts);
        self.call(move |mut client| async move {
            transaction(&mut client, |tx| {
                let stmts = stmts.clone();
                Box::pin(async move { run_all(tx, &stmts).await })
            })
            .await
        })
    }
}

#[cfg(test)]
mod leases_tests;
#[cfg(test)]
mod tests;
