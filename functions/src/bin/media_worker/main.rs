//! `stoa-worker-media`: an example function worker serving the functions of
//! the `video-encode` pack (simulated media work), and `bench.noop` for
//! measuring the platform's own overhead.

mod media;

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use serde::de::DeserializeOwned;
use serde::Serialize;
use stoa_functions::{Builder, Context, Failure, Worker};
use tokio_util::sync::CancellationToken;

/// Serves the functions of the video-encode example pack (media.split,
/// media.encode, media.assemble, media.index) to a Stoa server. The media work
/// is simulated: CPU work sized by the arguments (a few milliseconds a call at
/// --work-scale 1) and outputs derived only from the arguments, so runs are
/// repeatable. Stops on Ctrl-C or SIGTERM after answering the work in flight.
/// Logs go to stderr; set STOA_LOG (or RUST_LOG; e.g. STOA_LOG=debug) for
/// more. With OTEL_EXPORTER_OTLP_ENDPOINT set, each call's span (a child of
/// the server's dispatch span) is exported over OTLP/gRPC, as service
/// OTEL_SERVICE_NAME (default stoa-worker-media).
#[derive(Debug, Parser)]
#[command(name = "stoa-worker-media", version)]
struct Args {
    /// The Stoa server's worker endpoint.
    #[arg(long, env = "STOA_SERVER", default_value = "http://127.0.0.1:7233")]
    server: String,

    /// Bearer token naming the tenant whose functions this worker serves.
    #[arg(long, env = "STOA_TOKEN", hide_env_values = true)]
    token: String,

    /// Invocations run at once (the server sends no more than this).
    #[arg(long, env = "STOA_CONCURRENCY", default_value_t = 8)]
    concurrency: u32,

    /// Name shown in the server's logs.
    #[arg(long)]
    name: Option<String>,

    /// Functions to serve, comma-separated: any of media.split, media.encode,
    /// media.assemble, media.index, and bench.noop (returns its arguments
    /// unchanged, for benchmarks).
    #[arg(long, value_delimiter = ',', default_value = "media.split,media.encode,media.assemble,media.index")]
    functions: Vec<String>,

    /// Multiplies the simulated CPU work (0 for none; 1 keeps each call
    /// under about 20 ms in a release build).
    #[arg(long, env = "STOA_WORK_SCALE", default_value_t = 1.0)]
    work_scale: f64,

    /// Fraction of attempts, in [0, 1], that fail with a retryable failure,
    /// chosen deterministically from the invocation id and attempt (so a
    /// retry may succeed). For testing retry policies.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,

    /// Seconds a shutdown waits for the work in flight.
    #[arg(long, default_value_t = 60)]
    drain_timeout: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Dropped when `main` returns: the spans still batched are exported.
    let _telemetry = stoa_telemetry::init(stoa_telemetry::Options {
        service: "stoa-worker-media",
        filter_var: if std::env::var_os("STOA_LOG").is_some() { "STOA_LOG" } else { "RUST_LOG" },
        default_filter: "info",
        format: stoa_telemetry::LogFormat::Text,
    });
    anyhow::ensure!((0.0..=1.0).contains(&args.fail_rate), "--fail-rate must be within [0, 1]");
    anyhow::ensure!(args.work_scale >= 0.0, "--work-scale must not be negative");

    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("stoa-worker-media/{} pid {}", env!("CARGO_PKG_VERSION"), std::process::id()));
    let mut builder = Worker::builder(&args.server)
        .token(&args.token)
        .name(name)
        .max_in_flight(args.concurrency)
        .drain_timeout(Some(Duration::from_secs(args.drain_timeout)));
    let settings = Settings { work_scale: args.work_scale, fail_rate: args.fail_rate };
    for function in &args.functions {
        builder = match function.as_str() {
            "media.split" => serve(builder, function, settings, media::split),
            "media.encode" => serve(builder, function, settings, media::encode),
            "media.assemble" => serve(builder, function, settings, media::assemble),
            "media.index" => serve(builder, function, settings, media::index),
            "bench.noop" => builder.function_raw("bench.noop", |args: String, _ctx: Context| async move { Ok(args) }),
            other => {
                anyhow::bail!("unknown function `{other}`: choose from {}, bench.noop", media::FUNCTIONS.join(", "))
            }
        };
    }
    let worker = builder.build().context("bad worker configuration")?;

    let shutdown = CancellationToken::new();
    tracing::info!(server = %args.server, functions = ?args.functions, concurrency = args.concurrency, "starting");
    // The worker keeps running after a signal, to drain; so the signal
    // listener is raced against it rather than spawned off on its own.
    let run = worker.run(shutdown.clone());
    tokio::pin!(run);
    tokio::select! {
        outcome = &mut run => return Ok(outcome?),
        () = stop_on_signal(shutdown) => {}
    }
    run.await?;
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    work_scale: f64,
    fail_rate: f64,
}

/// Registers a media function: its CPU work runs on the blocking pool, so it
/// never stalls the session's I/O or the automatic heartbeats.
fn serve<A, R>(builder: Builder, function: &str, settings: Settings, work: fn(&A, f64) -> Result<R, Failure>) -> Builder
where
    A: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
{
    builder.function(function, move |args: A, ctx: Context| async move {
        if fails(&ctx, settings.fail_rate) {
            return Err(Failure::retryable(format!("simulated failure of attempt {} (--fail-rate)", ctx.attempt())));
        }
        tokio::task::spawn_blocking(move || work(&args, settings.work_scale)).await?
    })
}

/// Whether this attempt fails on purpose: a hash of the invocation id and
/// attempt against the rate, so that reruns fail the same attempts.
fn fails(ctx: &Context, fail_rate: f64) -> bool {
    if fail_rate <= 0.0 {
        return false;
    }
    let hash = media::fnv1a(&[ctx.invocation_id(), &ctx.attempt().to_string()]);
    (hash as f64 / u64::MAX as f64) < fail_rate
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("stopping: finishing the work in flight");
    shutdown.cancel();
}
