//! `stoa serve`: the server, on the embedded store or PostgreSQL.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use stoa_server::config::{LogFormat, TenantConfig};
use stoa_server::Config;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub struct Args {
    /// Config file (TOML): listen, http_listen, metrics_listen, store, data_dir, cache_mb, [postgres], [[tenants]] with
    /// name and tokens, [limits], [function_concurrency] (docs/operations.md). Flags override it.
    /// Default: none (the defaults shown here).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port; the address is
    /// printed as `listening on ADDR`). Default: 127.0.0.1:7233.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Where state is kept: sled:DIR (the embedded store, the default:
    /// sled:stoa-data) or postgres://USER@HOST:PORT/DATABASE (PostgreSQL,
    /// which several servers can share; its schema is made or migrated at
    /// start). Also `store` in the config file, or STOA_STORE.
    #[arg(long, env = "STOA_STORE", value_name = "sled:DIR|postgres://…", hide_env_values = true)]
    store: Option<String>,
    /// Directory of the embedded store (the same as --store sled:DIR).
    /// Default: ./stoa-data (`data_dir` in the config file).
    #[arg(long, conflicts_with = "store", value_name = "DIR")]
    data: Option<PathBuf>,
    /// sled's page cache, in MiB. Default: 32.
    #[arg(long, value_name = "MIB")]
    cache_mb: Option<u64>,
    /// With PostgreSQL: the address the cluster's other servers and its
    /// workers reach this server at (default: the listen address).
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// With PostgreSQL: how long a partition's lease lasts without renewal,
    /// in milliseconds; a dead server's workflows move this long after its
    /// last renewal (default 5000).
    #[arg(long, value_name = "MS")]
    lease_ms: Option<u64>,
    /// Serve HTTP on this address: the web console (log in with a tenant's
    /// token; see docs/console.md) and Prometheus metrics at /metrics
    /// (unless --metrics-listen names another address). Port 0 picks a
    /// free port, printed as `console on http://ADDR/`. Also `http_listen`
    /// in the config file, or STOA_HTTP_LISTEN.
    #[arg(long, env = "STOA_HTTP_LISTEN", value_name = "ADDR")]
    http_listen: Option<std::net::SocketAddr>,
    /// Serve Prometheus metrics over HTTP on this address, at /metrics (the
    /// backlog per function for autoscalers, latencies, outcomes, turns,
    /// commits, firings; see docs/operations.md). Off unless given; port 0
    /// picks a free port, printed as `metrics listening on ADDR`. Also
    /// `metrics_listen` in the config file, or STOA_METRICS_LISTEN. Alone,
    /// the console is served there too (as with --http-listen); with
    /// --http-listen at another address, this one serves /metrics only.
    #[arg(long, env = "STOA_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// A tenant and one of its tokens, as TENANT=TOKEN; repeatable. Clients
    /// pass the token (`--token` or STOA_TOKEN); it names their tenant.
    #[arg(long = "token", value_name = "TENANT=TOKEN")]
    tokens: Vec<String>,
    /// Log lines on stderr as `text` (default) or `json` (one object a
    /// line, with tenant, workflow, invocation and trace ids as fields where
    /// they apply). Also `log_format` in the config file. STOA_LOG sets the
    /// level (default info: workflows started and ended, workers connected
    /// and gone, deploys, rollouts; `STOA_LOG=debug`, or an env_filter
    /// expression such as `info,stoa_server::dispatcher=debug`). Traces: set OTEL_EXPORTER_OTLP_ENDPOINT (and
    /// OTEL_SERVICE_NAME, default stoa-server) to export spans over
    /// OTLP/gRPC; see docs/operations.md.
    #[arg(long, env = "STOA_LOG_FORMAT", value_name = "text|json")]
    log_format: Option<LogFormatArg>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        Some(p) => Config::load(p).map_err(anyhow::Error::msg)?,
        None => Config::default(),
    };
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(h) = args.http_listen {
        config.http_listen = Some(h);
    }
    if let Some(m) = args.metrics_listen {
        config.metrics_listen = Some(m);
    }
    if let Some(d) = args.data {
        config.data_dir = d;
        config.store = None;
    }
    if let Some(s) = args.store {
        config.store = Some(s);
    }
    if let Some(c) = args.cache_mb {
        config.cache_mb = c;
    }
    if let Some(a) = args.advertise {
        config.postgres.advertise = Some(a);
    }
    if let Some(l) = args.lease_ms {
        config.postgres.lease_ms = l;
    }
    if let Some(f) = args.log_format {
        config.log_format = match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        };
    }
    let mut telemetry = stoa_telemetry::init(stoa_telemetry::Options {
        service: "stoa-server",
        filter_var: "STOA_LOG",
        default_filter: "info",
        format: match config.log_format {
            LogFormat::Text => stoa_telemetry::LogFormat::Text,
            LogFormat::Json => stoa_telemetry::LogFormat::Json,
        },
    });
    let exporting = telemetry.exporting();
    for t in &args.tokens {
        let (tenant, token) = t.split_once('=').with_context(|| format!("--token {t}: expected TENANT=TOKEN"))?;
        match config.tenants.iter_mut().find(|x| x.name == tenant) {
            Some(x) => x.tokens.push(token.to_string()),
            None => config.tenants.push(TenantConfig::new(tenant, token)),
        }
    }
    // Store calls that wait on a network store (PostgreSQL) leave their
    // worker thread through `block_in_place`, which hands the worker's
    // tasks to a thread of the blocking pool. Unbounded, a burst of a
    // thousand starts made a thread each (300 measured), and every thread
    // keeps its allocator heap: 190 MiB of RSS against 100 on sled. 64 is
    // ample for waits of a millisecond; past it, hand-offs queue.
    let rt = tokio::runtime::Builder::new_multi_thread().max_blocking_threads(64).enable_all().build()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down: finishing in-flight commits");
            signals.cancel();
        });
        // The metrics address first: whoever reads the output has it once
        // it sees the gRPC one.
        let on_listen = |at: stoa_server::Listening| {
            use std::io::Write;
            if let Some(http) = at.http {
                println!("metrics listening on {http}");
            }
            if let Some(console) = at.console {
                println!("console on http://{console}/");
            }
            tracing::info!(address = %at.grpc, metrics = ?at.http, console = ?at.console, traces_exported = exporting, "serving");
            println!("listening on {}", at.grpc);
            let _ = std::io::stdout().flush();
        };
        match std::env::var("STOA_TEST_CRASH_AFTER_TICK") {
            Ok(schedule) => {
                stoa_server::serve_with_faults(config, shutdown, on_listen, Arc::new(CrashAfterTick(schedule))).await
            }
            Err(_) => stoa_server::serve(config, shutdown, on_listen).await,
        }
        .map_err(anyhow::Error::msg)
    })?;
    // After the last commit: the spans still batched go out.
    telemetry.shutdown();
    Ok(ExitCode::SUCCESS)
}

/// Test hook: `STOA_TEST_CRASH_AFTER_TICK=<schedule>` aborts the process
/// right after that schedule's tick started a new workflow and before the
/// tick is recorded, the window the deterministic request ids protect
/// (`tests/e2e/schedules.rs`; the simulation crashes there on its own).
struct CrashAfterTick(String);

impl stoa_server::Faults for CrashAfterTick {
    fn tick_started(&self, _tenant: &str, schedule: &str, created: bool) {
        if created && schedule == self.0 {
            eprintln!("STOA_TEST_CRASH_AFTER_TICK: aborting after a tick of {schedule}");
            std::process::abort();
        }
    }
}
