//! `stoa bench e2e`: the platform end to end over loopback gRPC: a real
//! `stoa serve` process, a real worker process (`stoa-worker-media` serving
//! `bench.noop`), and this process as the client.
//!
//! Cases: N workflows of K sequential durable steps (workflows and steps per
//! second); one workflow of K steps followed live (p50, p99 and mean of one
//! action → worker → reaction hop, from the server's commit stamps); a long
//! run of R invocations (W workflows of R/W steps) with the server's RSS
//! sampled along the way; one workflow fanning out F invocations in
//! parallel. The server's peak RSS is read from /proc.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use stoa_proto::v1 as pb;

use crate::remote::{pack_files, Bearer};

#[derive(clap::Args)]
pub struct Args {
    /// Workflows in the throughput case.
    #[arg(long, default_value_t = 200)]
    workflows: usize,
    /// Sequential steps per workflow.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Steps of the latency case (one workflow, followed live).
    #[arg(long, default_value_t = 1000)]
    hops: usize,
    /// Parallel invocations of the fan-out case.
    #[arg(long, default_value_t = 10_000)]
    fanout: usize,
    /// Invocations of the long-run case...
    #[arg(long, default_value_t = 100_000)]
    run_invocations: usize,
    /// ...spread over this many workflows of sequential steps.
    #[arg(long, default_value_t = 1000)]
    run_workflows: usize,
    /// Cases to run, in this order: steps, latency, run, fanout.
    #[arg(long, value_delimiter = ',', default_value = "steps,latency,run,fanout")]
    cases: Vec<String>,
    /// The server's page cache (`stoa serve --cache-mb`); its default if unset.
    #[arg(long)]
    cache_mb: Option<u64>,
    /// Stores to run every case on, one after the other in this run:
    /// `sled` (the embedded store), `postgres` (a throwaway PostgreSQL this
    /// command starts from the installed binaries, with fsync on, on a
    /// Unix socket; a new database per store), `postgres3` (three servers
    /// on one such database: clients and the worker know the first; it
    /// adds the failover case, SIGKILL of the third server to the first
    /// committed turn of one of its workflows elsewhere).
    #[arg(long, value_delimiter = ',', default_value = "sled")]
    stores: Vec<String>,
    /// Lease period of the PostgreSQL servers, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    lease_ms: u64,
    /// The `stoa` binary that serves (default: this one), to compare builds.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Worker processes.
    #[arg(long, default_value_t = 1)]
    worker_processes: usize,
    /// Invocations each worker takes at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Print one JSON object per case.
    #[arg(long)]
    json: bool,
    /// Observability of each store's runs, one run per value in this order:
    /// `off`; `metrics`: the server serves metrics (`--metrics-listen`,
    /// scraped every second); `traces`: the server and workers export spans
    /// to an OTLP collector in this process (it counts them); `on`: both.
    /// Compare `--observe off,on,off,on` side by side in one run.
    #[arg(long, value_delimiter = ',', default_value = "off")]
    observe: Vec<String>,
    /// With `--observe on`: the share of new traces sampled (the servers'
    /// and workers' `OTEL_TRACES_SAMPLER=parentbased_traceidratio`); 1
    /// exports every span.
    #[arg(long, default_value_t = 1.0)]
    trace_ratio: f64,
}

pub(crate) const TOKEN: &str = "bench-token-0001";

pub(crate) struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.with_file_name(name);
    anyhow::ensure!(
        p.exists(),
        "{} not found; build it first: cargo build --release -p stoa-functions --bin {name}",
        p.display()
    );
    // A worker built before this stoa may not speak what the server now
    // says (a bench once ran with one that ignored the cluster's members).
    let built = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(theirs), Some(mine)) = (built(&p), built(&me)) {
        if theirs + std::time::Duration::from_secs(60) < mine {
            eprintln!(
                "warning: {} is older than this stoa; rebuild both: cargo build --release --workspace",
                p.display()
            );
        }
    }
    Ok(p)
}

/// Peak and current resident set of a process, in MiB.
pub(crate) fn rss_mib(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kb("VmHWM:"), kb("VmRSS:"))
}

/// CPU time a process has used so far (user and system), in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which may itself hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let ticks: Vec<f64> = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
    // procfs counts in USER_HZ, 100 on Linux.
    ticks.iter().sum::<f64>() / 100.0
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub(crate) type Client =
    pb::stoa_client::StoaClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>>;

pub(crate) async fn start(
    c: &mut Client,
    pack: &str,
    facts: serde_json::Value,
    request_id: String,
) -> anyhow::Result<String> {
    let facts = facts
        .as_array()
        .context("facts")?
        .iter()
        .map(|f| pb::FactInput {
            r#type: f["type"].as_str().unwrap_or_default().into(),
            fields_json: f["fields"].to_string(),
        })
        .collect();
    Ok(c.start_workflow(pb::StartWorkflowRequest { pack: pack.into(), facts, request_id })
        .await?
        .into_inner()
        .workflow_id)
}

/// Completed workflows of `pack`.
pub(crate) async fn count_completed(c: &mut Client, pack: &str) -> anyhow::Result<usize> {
    let mut done = 0;
    let mut token = String::new();
    loop {
        let r = c
            .list_workflows(pb::ListWorkflowsRequest {
                pack: pack.into(),
                status: "completed".into(),
                page_size: 1000,
                page_token: token,
                newest_first: false,
            })
            .await?
            .into_inner();
        done += r.workflows.len();
        token = r.next_page_token;
        if token.is_empty() {
            return Ok(done);
        }
    }
}

pub(crate) async fn wait_completed(c: &mut Client, pack: &str, n: usize, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let done = count_completed(c, pack).await?;
        if done >= n {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "only {done} of {n} {pack} workflows completed within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let worker = sibling("stoa-worker-media")?;
    for c in &args.cases {
        anyhow::ensure!(["steps", "latency", "run", "fanout"].contains(&c.as_str()), "--cases: unknown case `{c}`");
    }
    for s in &args.stores {
        anyhow::ensure!(
            ["sled", "postgres", "postgres3"].contains(&s.as_str()),
            "--stores: unknown store `{s}` (sled, postgres, postgres3)"
        );
    }
    for o in &args.observe {
        anyhow::ensure!(
            ["off", "metrics", "traces", "on"].contains(&o.as_str()),
            "--observe: `{o}` is none of off, metrics, traces, on"
        );
    }
    anyhow::ensure!((0.0..=1.0).contains(&args.trace_ratio), "--trace-ratio: a share from 0 to 1");
    // The collector runs only for observed runs.
    let collector_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let (collector, otlp) = match args.observe.iter().any(|o| o == "on" || o == "traces") {
        true => crate::bench_collector::Collector::start(&collector_rt)?,
        false => (crate::bench_collector::Collector::default(), String::new()),
    };
    let ratio = args.trace_ratio.to_string();
    let otel_env = |on: bool| -> Vec<(&str, &str)> {
        match on {
            true => vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", ratio.as_str()),
            ],
            false => vec![],
        }
    };
    let postgres = match args.stores.iter().any(|s| s.starts_with("postgres")) {
        true => Some(
            stoa_pgstore::throwaway::TempPostgres::start(stoa_pgstore::throwaway::Durability::Real)
                .map_err(anyhow::Error::msg)?,
        ),
        false => None,
    };
    let mut figures = Vec::new();
    let runs: Vec<(&String, &String)> =
        args.stores.iter().flat_map(|s| args.observe.iter().map(move |o| (s, o))).collect();
    for (k, (store, observe)) in runs.into_iter().enumerate() {
        let on = observe != "off";
        let (metered, traced) = (observe == "on" || observe == "metrics", observe == "on" || observe == "traces");
        let dir = std::env::temp_dir().join(format!("stoa-bench-e2e-{}-{k}", std::process::id()));
        let db = format!("bench{k}");
        let place = match &postgres {
            Some(pg) if store.starts_with("postgres") => {
                pg.create_database(&db).map_err(anyhow::Error::msg)?;
                Place::Postgres(pg.url(&db))
            }
            _ => Place::Sled(dir.clone()),
        };
        let lease = format!("--lease-ms={}", args.lease_ms);
        let spawn = || -> anyhow::Result<(Kill, String, Option<String>)> {
            let mut serve = serve_command(args.server_bin.as_deref())?;
            serve.args(["--token", &format!("bench={TOKEN}")]);
            match &place {
                Place::Sled(dir) => {
                    let _ = std::fs::remove_dir_all(dir);
                    serve.arg("--data").arg(dir);
                }
                Place::Postgres(url) => {
                    serve.arg("--store").arg(url).arg(&lease);
                }
            }
            serve.args(args.cache_mb.map(|c| format!("--cache-mb={c}")));
            if metered {
                serve.arg("--metrics-listen=127.0.0.1:0");
            }
            serve.envs(otel_env(traced));
            start_serving_observed(serve)
        };
        let (server, addr, metrics) = spawn()?;
        let scraper = metrics.map(Scraper::start);
        let spans_before = collector.spans();
        // The others of a three-server cluster; clients know the first.
        let mut others = Vec::new();
        if store == "postgres3" {
            for _ in 0..2 {
                let (kill, addr, _) = spawn()?;
                others.push((kill, addr));
            }
        }
        let _workers: Vec<Kill> = (0..args.worker_processes)
            .map(|_| {
                Command::new(&worker)
                    .args(["--server", &addr, "--token", TOKEN, "--functions", "bench.noop", "--work-scale", "0"])
                    .args(["--concurrency", &args.concurrency.to_string()])
                    .envs(otel_env(traced))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map(Kill)
            })
            .collect::<Result<_, _>>()
            .context("starting the worker")?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let mut got = rt.block_on(cases(&args, &addr, server.0.id()))?;
        // The cases measure the first server; the others' memory beside it.
        if !others.is_empty() {
            let rss: Vec<f64> = others.iter().map(|(k, _)| rss_mib(k.0.id()).1).collect();
            for f in got.iter_mut().filter(|f| f.get("server_rss_mib").is_some()) {
                f["other_servers_rss_mib"] = serde_json::json!(rss);
            }
        }
        if let (Some(pg), Some((victim, victim_addr))) = (&postgres, others.pop()) {
            got.push(rt.block_on(failover(pg, &db, &addr, victim, &victim_addr, args.lease_ms))?);
        }
        let scrapes = scraper.map(Scraper::stop);
        // Exports are batched: give the last batches a moment to arrive.
        std::thread::sleep(Duration::from_millis(if traced { 1500 } else { 0 }));
        let spans = collector.spans() - spans_before;
        for mut f in got {
            let mut prefix = Vec::new();
            if args.stores.len() > 1 {
                prefix.push(store.as_str());
                f["store"] = store.as_str().into();
            }
            if args.observe.len() > 1 || on {
                prefix.push(match observe.as_str() {
                    "off" => "unobserved",
                    "on" => "observed",
                    other => other,
                });
                f["observe"] = observe.as_str().into();
            }
            if !prefix.is_empty() {
                let case = format!("{}: {}", prefix.join(" "), f["case"].as_str().unwrap_or_default());
                f["case"] = case.into();
            }
            if let Some((n, ok)) = scrapes {
                (f["scrapes"], f["scrapes_ok"], f["spans_exported"]) = (n.into(), ok.into(), spans.into());
            }
            figures.push(f);
        }
        drop(server);
        drop(others);
        let _ = std::fs::remove_dir_all(&dir);
    }
    print_figures(&figures, args.json, 54);
    Ok(std::process::ExitCode::SUCCESS)
}

/// Where a benchmarked server keeps its state.
pub(crate) enum Place {
    Sled(PathBuf),
    /// A `postgresql://` URL.
    Postgres(String),
}

/// One line per case (name, then `key=value`s), or one JSON object per case.
pub(crate) fn print_figures(figures: &[serde_json::Value], json: bool, width: usize) {
    for f in figures {
        if json {
            println!("{f}");
        } else {
            println!("{:<width$} {}", f["case"].as_str().unwrap_or_default(), summary(f));
        }
    }
}

/// A `stoa serve` (this binary unless `bin`) on an ephemeral loopback
/// port over `dir` (emptied first); killed when dropped.
pub(crate) fn spawn_server(dir: &Path, bin: Option<&Path>, cache_mb: Option<u64>) -> anyhow::Result<(Kill, String)> {
    spawn_server_on(&Place::Sled(dir.to_path_buf()), bin, cache_mb)
}

/// `spawn_server` on any store.
pub(crate) fn spawn_server_on(
    place: &Place,
    bin: Option<&Path>,
    cache_mb: Option<u64>,
) -> anyhow::Result<(Kill, String)> {
    let mut serve = serve_command(bin)?;
    serve.args(["--token", &format!("bench={TOKEN}")]);
    match place {
        Place::Sled(dir) => {
            let _ = std::fs::remove_dir_all(dir);
            serve.arg("--data").arg(dir);
        }
        Place::Postgres(url) => {
            serve.arg("--store").arg(url);
        }
    }
    serve.args(cache_mb.map(|c| format!("--cache-mb={c}")));
    start_serving(serve)
}

/// `stoa serve` (this binary unless `bin`) on an ephemeral loopback port,
/// logging warnings only; the caller adds its store and tenants.
pub(crate) fn serve_command(bin: Option<&Path>) -> anyhow::Result<Command> {
    let me = std::env::current_exe()?;
    let mut serve = Command::new(bin.unwrap_or(&me));
    serve.args(["serve", "--listen", "127.0.0.1:0"]).env("STOA_LOG", "warn").stdout(Stdio::piped());
    Ok(serve)
}

/// Starts `serve` and waits for its address (`listening on ADDR`).
pub(crate) fn start_serving(serve: Command) -> anyhow::Result<(Kill, String)> {
    start_serving_observed(serve).map(|(k, a, _)| (k, a))
}

/// `start_serving`, with the metrics address if it serves metrics.
fn start_serving_observed(mut serve: Command) -> anyhow::Result<(Kill, String, Option<String>)> {
    let mut server = serve.spawn().context("starting stoa serve")?;
    let out = server.stdout.take().context("server stdout")?;
    let server = Kill(server);
    let mut metrics = None;
    for line in std::io::BufReader::new(out).lines() {
        let line = line?;
        if let Some(a) = line.strip_prefix("metrics listening on ") {
            metrics = Some(a.to_string());
        } else if let Some(a) = line.strip_prefix("listening on ") {
            return Ok((server, format!("http://{a}"), metrics));
        }
    }
    anyhow::bail!("the server did not start")
}

/// Scrapes `/metrics` every second, as Prometheus would (more often than
/// its usual 15 s), for as long as the cases run.
struct Scraper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, u64)>,
}

impl Scraper {
    fn start(addr: String) -> Scraper {
        use std::io::{Read, Write};
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut n, mut ok) = (0, 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let got = std::net::TcpStream::connect(&addr).and_then(|mut c| {
                    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
                    let mut body = String::new();
                    c.read_to_string(&mut body)?;
                    Ok(body)
                });
                if got.is_ok_and(|b| b.starts_with("HTTP/1.1 200") && b.contains("stoa_turns_committed_total")) {
                    ok += 1;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            (n, ok)
        });
        Scraper { stop, thread }
    }

    /// Scrapes made, and those that answered with metrics.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or((0, 0))
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn summary(f: &serde_json::Value) -> String {
    let mut parts = Vec::new();
    for (k, v) in f.as_object().into_iter().flatten() {
        if k == "case" {
            continue;
        }
        match v.as_f64() {
            Some(x) if x.fract() != 0.0 => parts.push(format!("{k}={x:.3}")),
            _ => parts.push(format!("{k}={v}")),
        }
    }
    parts.join("  ")
}

async fn cases(args: &Args, addr: &str, server_pid: u32) -> anyhow::Result<Vec<serde_json::Value>> {
    let channel = tonic::transport::Channel::from_shared(addr.to_string())?.connect().await?;
    let mut c: Client =
        pb::stoa_client::StoaClient::with_interceptor(channel, Bearer(format!("Bearer {TOKEN}").parse()?))
            .max_decoding_message_size(256 << 20);
    for p in ["bench/e2e/steps", "bench/e2e/fanout"] {
        let dir = Path::new(p);
        anyhow::ensure!(dir.is_dir(), "{p} not found: run `stoa bench e2e` from the repository root");
        c.deploy_pack(pb::DeployPackRequest { files: pack_files(dir)?, ..Default::default() }).await?;
    }
    let mut figures = Vec::new();
    let steps_facts =
        |k: usize| serde_json::json!([{"type": "Steps", "fields": {"done": 0, "total": k, "waiting": false}}]);

    // Warm-up: connections, worker session, pack caches.
    start(&mut c, "bench-steps", steps_facts(5), "warm".into()).await?;
    wait_completed(&mut c, "bench-steps", 1, Duration::from_secs(30)).await?;

    let want = |c: &str| args.cases.iter().any(|x| x == c);
    // Completed bench-steps workflows so far (the warm-up's).
    let mut finished = 1;

    // 1. N workflows × K sequential steps, started together.
    if want("steps") {
        let t = Instant::now();
        let cpu = cpu_seconds(server_pid);
        start_many(&c, "s", args.workflows, steps_facts(args.steps)).await?;
        finished += args.workflows;
        wait_completed(&mut c, "bench-steps", finished, Duration::from_secs(600)).await?;
        let secs = t.elapsed().as_secs_f64();
        let steps = (args.workflows * args.steps) as f64;
        let cpu = cpu_seconds(server_pid) - cpu;
        let (peak, now) = rss_mib(server_pid);
        figures.push(serde_json::json!({
            "case": format!("{} workflows x {} sequential steps", args.workflows, args.steps),
            "seconds": secs,
            "workflows_per_s": args.workflows as f64 / secs,
            "steps_per_s": steps / secs,
            // Steadier than throughput on a shared machine: what the
            // server itself spent on each step.
            "server_cpu_us_per_step": cpu * 1e6 / steps,
            "server_rss_mib": now,
            "server_peak_rss_mib": peak,
        }));
    }

    // 2. Hop latency: one workflow of sequential steps. Each hop (commit of
    // the action's turn → worker → commit of the reaction's turn) is the
    // gap between the server's commit stamps of consecutive results.
    if want("latency") {
        let id = start(&mut c, "bench-steps", steps_facts(args.hops), "latency".into()).await?;
        let mut stream =
            c.watch_workflow(pb::WatchWorkflowRequest { workflow_id: id, from_seq: 1 }).await?.into_inner();
        let t = Instant::now();
        let mut stamps = Vec::with_capacity(args.hops);
        while let Some(e) = stream.message().await? {
            if e.kind == "result_applied" {
                let v: serde_json::Value = serde_json::from_str(&e.json)?;
                stamps.push(v["at_us"].as_u64().context("a result entry without at_us")?);
            }
        }
        finished += 1;
        let secs = t.elapsed().as_secs_f64();
        let mut hops: Vec<f64> = stamps.windows(2).map(|w| w[1].saturating_sub(w[0]) as f64 / 1000.0).collect();
        hops.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        figures.push(serde_json::json!({
            "case": format!("1 workflow x {} steps, hop latency", args.hops),
            "seconds": secs,
            "hop_p50_ms": percentile(&hops, 0.50),
            "hop_p99_ms": percentile(&hops, 0.99),
            "hop_max_ms": hops.last().copied().unwrap_or(0.0),
            "hop_mean_ms": hops.iter().sum::<f64>() / hops.len().max(1) as f64,
        }));
    }

    // 3. A long run: W workflows of R/W sequential steps, the server's RSS
    // sampled as it goes; steady memory keeps the late samples near the
    // early ones.
    if want("run") {
        let per = (args.run_invocations / args.run_workflows.max(1)).max(1);
        let n = args.run_invocations / per;
        let (_, before) = rss_mib(server_pid);
        let t = Instant::now();
        start_many(&c, "r", n, steps_facts(per)).await?;
        finished += n;
        let mut samples = vec![(0.0, before)];
        let deadline = t + Duration::from_secs(1200);
        loop {
            let done = count_completed(&mut c, "bench-steps").await?;
            samples.push((t.elapsed().as_secs_f64(), rss_mib(server_pid).1));
            if done >= finished {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "the long run did not finish within 20 minutes");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let secs = t.elapsed().as_secs_f64();
        let at = |f: f64| samples.iter().find(|(s, _)| *s >= secs * f).map(|(_, r)| *r).unwrap_or(0.0);
        let (peak, now) = rss_mib(server_pid);
        figures.push(serde_json::json!({
            "case": format!("{} invocations: {n} workflows x {per} steps", n * per),
            "seconds": secs,
            "invocations_per_s": (n * per) as f64 / secs,
            "server_rss_mib_start": before,
            "server_rss_mib_25pct": at(0.25),
            "server_rss_mib_50pct": at(0.50),
            "server_rss_mib_75pct": at(0.75),
            "server_rss_mib": now,
            "server_peak_rss_mib": peak,
        }));
    }

    // 4. Fan-out: one workflow, F invocations in parallel.
    if want("fanout") {
        let tasks: Vec<serde_json::Value> =
            (0..args.fanout).map(|n| serde_json::json!({"type": "Task", "fields": {"n": n, "state": "new"}})).collect();
        let t = Instant::now();
        start(&mut c, "bench-fanout", serde_json::Value::Array(tasks), "fanout".into()).await?;
        wait_completed(&mut c, "bench-fanout", 1, Duration::from_secs(600)).await?;
        let secs = t.elapsed().as_secs_f64();
        let (peak, now) = rss_mib(server_pid);
        figures.push(serde_json::json!({
            "case": format!("1 workflow fanning out {} invocations", args.fanout),
            "seconds": secs,
            "invocations_per_s": args.fanout as f64 / secs,
            "server_rss_mib": now,
            "server_peak_rss_mib": peak,
        }));
    }
    Ok(figures)
}

/// Starts `n` workflows of `pack` at once, with request ids `<tag>-<i>`.
async fn start_many(c: &Client, tag: &str, n: usize, facts: serde_json::Value) -> anyhow::Result<()> {
    let mut starts = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut c2 = c.clone();
        let (facts, id) = (facts.clone(), format!("{tag}-{i}"));
        starts.spawn(async move { start(&mut c2, "bench-steps", facts, id).await });
    }
    while let Some(r) = starts.join_next().await {
        r??;
    }
    Ok(())
}

/// Failover: workflows of many sequential steps run on three servers; the
/// third is SIGKILLed, and the time until the first turn of one of its
/// workflows commits on another server is read from that turn's commit
/// stamp (the timeline entry's `at_us`), not from polling.
async fn failover(
    pg: &stoa_pgstore::throwaway::TempPostgres,
    db: &str,
    addr: &str,
    victim: Kill,
    victim_addr: &str,
    lease_ms: u64,
) -> anyhow::Result<serde_json::Value> {
    let channel = tonic::transport::Channel::from_shared(addr.to_string())?.connect().await?;
    let c: Client = pb::stoa_client::StoaClient::with_interceptor(channel, Bearer(format!("Bearer {TOKEN}").parse()?));
    let steps = serde_json::json!([{"type": "Steps", "fields": {"done": 0, "total": 1_000_000, "waiting": false}}]);
    start_many(&c, "failover", 60, steps).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim_addr = victim_addr.trim_start_matches("http://");
    let theirs = pg
        .psql(
            db,
            &format!(
                "SELECT w.id FROM workflows w JOIN partitions p ON p.id = w.part JOIN members m ON m.id = p.owner \
                 WHERE m.address = '{victim_addr}' AND w.id LIKE 'wf_bench.%' AND w.status = 'running' LIMIT 5"
            ),
        )
        .map_err(anyhow::Error::msg)?;
    let theirs: Vec<String> = theirs.lines().map(str::to_string).collect();
    anyhow::ensure!(!theirs.is_empty(), "no running workflow on the third server to fail over");
    let mut c = c;
    let mut last = Vec::new();
    for id in &theirs {
        last.push(timeline_end(&mut c, id).await?);
    }
    let killed_us = now_ms() * 1000;
    drop(victim);
    let deadline = Instant::now() + Duration::from_millis(lease_ms * 4 + 30_000);
    let first_us = 'found: loop {
        for (id, from) in theirs.iter().zip(&last) {
            let t = c
                .get_timeline(pb::GetTimelineRequest { workflow_id: id.clone(), from_seq: *from, limit: 1000 })
                .await?
                .into_inner();
            let after: Option<u64> = t
                .entries
                .iter()
                .filter_map(|e| serde_json::from_str::<serde_json::Value>(&e.json).ok()?["at_us"].as_u64())
                .filter(|at| *at > killed_us)
                .min();
            if let Some(at) = after {
                break 'found at;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "no workflow of the killed server moved on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Ok(serde_json::json!({
        "case": format!("failover: SIGKILL of 1 of 3 servers, lease {lease_ms} ms"),
        "failover_s": (first_us - killed_us) as f64 / 1e6,
        "lease_s": lease_ms as f64 / 1000.0,
    }))
}

/// The next timeline position of a workflow.
async fn timeline_end(c: &mut Client, id: &str) -> anyhow::Result<u64> {
    let mut from = 1;
    loop {
        let t = c
            .get_timeline(pb::GetTimelineRequest { workflow_id: id.to_string(), from_seq: from, limit: 10_000 })
            .await?
            .into_inner();
        match t.entries.last() {
            Some(e) => from = e.seq + 1,
            None => return Ok(from),
        }
    }
}
