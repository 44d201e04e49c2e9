//! The Stoa server: the `Stoa` and `Workers` gRPC services over the engine,
//! with the embedded store, group commit and the function dispatcher.
//!
//! Architecture invariant: this crate is the only one that knows both the
//! engine and the wire types; the engine knows neither gRPC nor protobuf.

mod api;
mod auth;
mod background;
mod children;
mod clock;
mod cluster;
mod committer;
mod compat;
pub mod config;
mod console;
mod definitions;
mod dispatch_handle;
mod dispatcher;
mod error;
mod explain;
pub mod faults;
mod followup;
mod health;
mod http;
mod input;
pub mod metrics;
mod peer;
mod placement;
mod pool;
mod retention;
mod retry;
mod rollout;
mod route_locks;
mod run_strategy;
mod runtime;
mod schedule;
mod scrape;
mod signals;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
mod trace;
mod upgrade;
mod workers;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use stoa_engine::store::{SledStore, Store};
use stoa_engine::workflow::Outcome;
use stoa_engine::InvocationId;
use stoa_proto::v1 as pb;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use faults::Faults;

/// A store, and the same store as PostgreSQL (the cluster's leases live
/// there), if it is.
type Opened = (Arc<dyn Store>, Option<Arc<stoa_pgstore::PgStore>>);

/// The store `config` names: sled in a directory, or PostgreSQL.
fn open_store(config: &Config) -> Result<Opened, String> {
    match config.store_spec()? {
        config::StoreSpec::Sled(dir) => {
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let store =
                SledStore::open(&dir, config.cache_mb).map_err(|e| format!("opening {}: {e}", dir.display()))?;
            Ok((Arc::new(store), None))
        }
        config::StoreSpec::Postgres(url) => {
            let options = stoa_pgstore::Options {
                pool_size: config.postgres.pool_size,
                partitions: config.postgres.partitions,
                idle_in_transaction: std::time::Duration::from_millis(config.postgres.lease_ms),
                ..stoa_pgstore::Options::default()
            };
            let pg = Arc::new(stoa_pgstore::PgStore::open(&url, options).map_err(|e| e.to_string())?);
            Ok((pg.clone(), Some(pg)))
        }
    }
}

/// The address a cluster's other servers and workers reach this one at.
fn advertised(config: &Config, bound: SocketAddr) -> Result<String, String> {
    match &config.postgres.advertise {
        Some(a) => Ok(a.clone()),
        None if bound.ip().is_unspecified() => Err(format!(
            "listening on {bound}: set postgres.advertise to the address other servers and workers reach this one at"
        )),
        None => Ok(bound.to_string()),
    }
}

/// The addresses the server listens on, as bound (port 0 picks one).
#[derive(Clone, Copy, Debug)]
pub struct Listening {
    pub grpc: SocketAddr,
    /// HTTP serving `/metrics`, with `metrics_listen` or `http_listen` set.
    pub http: Option<SocketAddr>,
    /// HTTP serving the web console, with `http_listen` or `metrics_listen` set.
    pub console: Option<SocketAddr>,
}

/// Runs the server until `shutdown` is cancelled. `on_listen` receives the
/// bound addresses (useful with port 0). On shutdown, in-flight turns finish
/// committing before this returns.
pub async fn serve(
    config: Config,
    shutdown: CancellationToken,
    on_listen: impl FnOnce(Listening),
) -> Result<(), String> {
    serve_with_faults(config, shutdown, on_listen, Arc::new(faults::Off)).await
}

/// `serve`, calling `faults` at its fault points (tests that crash a real
/// server at a chosen moment).
pub async fn serve_with_faults(
    config: Config,
    shutdown: CancellationToken,
    on_listen: impl FnOnce(Listening),
    faults: Arc<dyn Faults>,
) -> Result<(), String> {
    config.validate()?;
    let policies = config.policies()?;
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.map_err(|e| format!("listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut http_listeners = Vec::new();
    let (mut http_addr, mut console_addr) = (None, None);
    for (a, serves) in config.http_listeners() {
        let what = if config.http_listen == Some(a) { "http" } else { "metrics" };
        let l = tokio::net::TcpListener::bind(a).await.map_err(|e| format!("{what} listen on {a}: {e}"))?;
        let bound = l.local_addr().map_err(|e| e.to_string())?;
        if serves.metrics {
            http_addr = Some(bound);
        }
        if serves.console {
            console_addr = Some(bound);
        }
        http_listeners.push((l, serves));
    }
    // Counted only when someone can read them.
    let metrics = if http_addr.is_some() { metrics::Metrics::on() } else { metrics::Metrics::off() };
    let (store, pg) = open_store(&config)?;
    let member = match pg {
        Some(pg) => {
            let address = advertised(&config, addr)?;
            let lease = cluster::lease(config.postgres.lease_ms);
            let joined = tokio::task::spawn_blocking(move || cluster::Member::join(pg, &address, lease));
            Some(Arc::new(joined.await.map_err(|e| e.to_string())??))
        }
        None => None,
    };
    let placement = member.as_ref().map_or_else(|| Arc::new(placement::Placement::alone()), |m| m.placement.clone());
    let peers = member.as_ref().map(|m| Arc::new(peer::Peers::new(m.store.secret().to_string())));
    let clock = clock::Clock::system();
    let (committer, committer_thread) = committer::Committer::spawn(store.clone(), clock.clone(), &metrics);
    let threads = config.turn_threads();
    let pool = pool::Pool::start(pool::Options {
        threads,
        share: (threads / 2).max(1),
        shares: runtime::turn_shares(&policies),
        stack_bytes: pool::stack_bytes(&config.highest_ceilings()?),
    })
    .map_err(|e| format!("starting the turn threads: {e}"))?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<pb::stoa_server::StoaServer<api::StoaService>>().await;
    health_reporter.set_serving::<pb::workers_server::WorkersServer<workers::WorkersService>>().await;
    let store_for_size = store.clone();
    let parts = Parts {
        store,
        clock,
        pool,
        committer,
        faults,
        compile: runtime::compiler(),
        placement: placement.clone(),
        peers,
        member: member.clone(),
        metrics: metrics.clone(),
    };
    let core = Core::start(&config, policies, parts, &shutdown, Some(health_reporter))?;
    let mut tokens = HashMap::new();
    for t in &config.tenants {
        for tok in &t.tokens {
            tokens.insert(tok.clone(), t.name.clone());
        }
    }
    let auth = auth::Auth::new(tokens);
    if !http_listeners.is_empty() {
        let scrape =
            Arc::new(scrape::Scrape::new(metrics.clone(), core.runtime.clone(), core.dispatch.clone(), store_for_size));
        let console =
            console::Console::new(core.runtime.clone(), core.schedules.clone(), auth.clone(), shutdown.child_token());
        for (l, serves) in http_listeners {
            let router = http::router(serves.metrics.then(|| scrape.clone()), serves.console.then(|| console.clone()));
            tokio::spawn(http::serve(l, router, shutdown.clone()));
        }
        if http_addr.is_some() {
            tokio::spawn(metrics.clone().upkeep(shutdown.clone()));
        }
    }
    let max = config.limits.max_request_bytes;
    use tonic::service::interceptor::InterceptedService;
    let stoa = InterceptedService::new(
        pb::stoa_server::StoaServer::new(api::StoaService {
            runtime: core.runtime.clone(),
            schedules: core.schedules.clone(),
        })
        .max_decoding_message_size(max),
        {
            let a = auth.clone();
            move |r| a.check(r)
        },
    );
    let workers = InterceptedService::new(
        pb::workers_server::WorkersServer::new(workers::WorkersService {
            dispatch: core.dispatch.clone(),
            next_session: Arc::new(AtomicU64::new(1)),
            closed: core.sessions_closed.clone(),
            placement,
        })
        .max_decoding_message_size(max),
        move |r| auth.check(r),
    );
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| e.to_string())?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| e.to_string())?;

    // Only with a cluster's secret to check.
    let peer = member.as_ref().map(|m| {
        pb::peer_server::PeerServer::new(peer::PeerService {
            runtime: core.runtime.clone(),
            secret: m.store.secret().to_string(),
        })
        .max_decoding_message_size(max)
    });
    on_listen(Listening { grpc: addr, http: http_addr, console: console_addr });
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let result = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .trace_fn(trace::request_span)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(stoa)
        .add_service(workers)
        .add_optional_service(peer)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
        .await
        .map_err(|e| e.to_string());
    core.stopped().await;
    let _ = tokio::task::spawn_blocking(move || committer_thread.join()).await;
    // After the last commit: the others claim the partitions at once.
    if let Some(m) = member {
        let _ = tokio::task::spawn_blocking(move || m.leave()).await;
    }
    result
}

/// What the core runs on: the store, the clock, where turns run and how
/// they commit, the fault points, the pack compiler. `serve` gives it
/// sled, the system clock, threads; the simulation an in-memory store,
/// virtual time, tasks, and compiled packs from a memo.
pub(crate) struct Parts {
    pub store: Arc<dyn Store>,
    pub clock: clock::Clock,
    pub pool: pool::Pool,
    pub committer: committer::Committer,
    pub faults: Arc<dyn Faults>,
    pub compile: runtime::Compile,
    pub placement: Arc<placement::Placement>,
    pub peers: Option<Arc<peer::Peers>>,
    /// This server's membership of a cluster (PostgreSQL), if any.
    pub member: Option<Arc<cluster::Member>>,
    pub metrics: metrics::Metrics,
}

/// The server without gRPC: the runtime, the dispatcher, the background,
/// the scheduler, the health follower, the unloader, each on a task.
pub(crate) struct Core {
    pub runtime: Arc<runtime::Runtime>,
    pub schedules: Arc<schedule::Scheduler>,
    pub dispatch: dispatch_handle::DispatchHandle,
    /// Cancelled once the dispatcher has stopped: worker sessions end then.
    pub sessions_closed: CancellationToken,
    pool: pool::Pool,
    committer: committer::Committer,
    /// Awaited in this order at the stop.
    tasks: Vec<JoinHandle<()>>,
    stopper: JoinHandle<()>,
}

/// Final outcomes from the dispatcher become turns of their workflows.
/// Here, above both: the dispatcher knows the runtime only as `Outcomes`.
impl dispatcher::Outcomes for runtime::Runtime {
    fn apply(
        self: Arc<Self>,
        id: InvocationId,
        outcome: Outcome,
    ) -> Pin<Box<dyn Future<Output = Result<bool, error::ApiError>> + Send>> {
        Box::pin(async move { self.deliver(&id, outcome).await })
    }
}

impl Core {
    /// Loads what the store holds and starts every part; they run until
    /// `shutdown`.
    pub(crate) fn start(
        config: &Config,
        policies: BTreeMap<String, config::Policy>,
        parts: Parts,
        shutdown: &CancellationToken,
        health: Option<tonic_health::server::HealthReporter>,
    ) -> Result<Core, String> {
        let Parts { store, clock, pool, committer, faults, compile, placement, peers, member, metrics } = parts;
        let (dispatch, dispatch_rx) = dispatch_handle::channel();
        let (background_tx, background_rx) = tokio::sync::mpsc::unbounded_channel();
        let in_flight = policies.iter().map(|(t, p)| (t.clone(), p.quotas.max_in_flight as usize)).collect();
        let runtime = Arc::new(runtime::Runtime::new(
            store.clone(),
            committer.clone(),
            pool.clone(),
            dispatch.clone(),
            runtime::Options {
                policies,
                max_loaded: config.limits.max_loaded_workflows,
                unload_idle_ms: config.limits.unload_idle_ms,
                retain_finished_ms: config.limits.retain_finished_ms,
                clock: clock.clone(),
                compile,
                placement: placement.clone(),
                peers,
                metrics: metrics.clone(),
            },
            background_tx,
        )?);
        // Invocations that were pending when the server stopped go out again
        // (those of the partitions it holds).
        health::restore_outbox(&runtime, &dispatch, &placement.here())?;
        let schedules = Arc::new(schedule::Scheduler::load(runtime.clone(), store.clone(), faults)?);
        let scheduler_task = tokio::spawn(schedules.clone().run(shutdown.child_token()));
        let background_task = tokio::spawn(background::run(runtime.clone(), background_rx, shutdown.child_token()));
        let unload_task = tokio::spawn(runtime.clone().unload_idle(shutdown.child_token()));
        let retention_task = tokio::spawn(retention::run(runtime.clone(), shutdown.child_token()));
        // Turns still running when the grace period ends are stopped: a pack
        // cannot hold the server past it.
        let grace = std::time::Duration::from_millis(config.limits.worker_drain_ms);
        let stopper = tokio::spawn({
            let (shutdown, runtime) = (shutdown.clone(), runtime.clone());
            async move {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
                runtime.stop_turns();
            }
        });
        // Worker sessions outlive the shutdown signal by the drain: their
        // answers still count until the dispatcher stops, and then they end.
        let sessions_closed = CancellationToken::new();
        let dispatcher_run = dispatcher::run(
            dispatcher::Options {
                tenant_max_in_flight: in_flight,
                function_concurrency: config.function_concurrency.clone(),
                max_batch: config.limits.max_batch.max(1),
                drain: std::time::Duration::from_millis(config.limits.worker_drain_ms),
                clock,
                metrics,
            },
            dispatch.clone(),
            dispatch_rx,
            runtime.clone(),
            store,
            committer.clone(),
            shutdown.child_token(),
        );
        let dispatcher_task = tokio::spawn({
            let closed = sessions_closed.clone();
            async move {
                dispatcher_run.await;
                closed.cancel();
            }
        });
        // `""` (the whole server) and `stoa.v1.Stoa` follow the store's health.
        let health_task = tokio::spawn(health::run(health, runtime.clone(), dispatch.clone(), shutdown.child_token()));
        let mut tasks =
            vec![scheduler_task, dispatcher_task, background_task, health_task, unload_task, retention_task];
        if let Some(member) = member {
            let (rt, d, s, stop) = (runtime.clone(), dispatch.clone(), schedules.clone(), shutdown.child_token());
            tasks.push(tokio::spawn(async move { member.run(rt, d, s, stop).await }));
        }
        Ok(Core { runtime, schedules, dispatch, sessions_closed, pool, committer, tasks, stopper })
    }

    /// Once `shutdown` is cancelled: ticks stop, workers drain, outcomes
    /// already decided commit; then the turns stop and the committer
    /// commits what is queued and ends.
    pub(crate) async fn stopped(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        self.stopper.abort();
        self.runtime.stop_turns();
        self.pool.close();
        self.committer.close();
    }
}
