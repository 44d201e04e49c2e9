//! `stoa bench safety` and `stoa bench soak`: what the server's limits
//! cost and what they protect, on a real `stoa serve` process over
//! loopback gRPC (this process is the client, `stoa-worker-media` the
//! worker).
//!
//! Cases of `bench safety`:
//! - live: W workflows each waiting on a timer an hour away; the server's
//!   RSS once they are started, and once idle ones are unloaded.
//! - load: C clients starting workflows of K steps (a worker answers) as
//!   fast as they can for S seconds; the server's RSS every second, and its
//!   drift from the end of the warm-up (the first third) to the end (each
//!   the median of a tenth of the run).
//! - backlog: the same without a worker and with the default quotas: the
//!   invocations pile up to `max_pending`, later starts are refused, and the
//!   RSS must stop growing there.
//! - rules: a pack of R rules (`rule "rN" { match { x: X(n == N) } ... }`):
//!   deploy, first start, an upgrade of L live workflows to a version with
//!   one rule changed; meanwhile another tenant starts small workflows, and
//!   their latency (p50, p99, max) is reported beside an idle baseline.
//!
//! `bench soak`: the load case at half the rate a short probe measured, for
//! an hour by default, with the RSS drift (target: flat within 10 %).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use stoa_proto::v1 as pb;

use crate::bench_e2e::{percentile, print_figures, rss_mib, sibling, start, Client, Kill, TOKEN};
use crate::remote::Bearer;

/// The second tenant: the bystander of the `rules` case.
const TOKEN_B: &str = "bench-token-0002";

#[derive(clap::Args)]
pub struct Args {
    /// Cases to run, in this order: live, load, backlog, rules.
    #[arg(long, value_delimiter = ',', default_value = "live,load,backlog,rules")]
    cases: Vec<String>,
    /// Workflows of the live case.
    #[arg(long, default_value_t = 100_000)]
    live: usize,
    /// Clients of the load case.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Seconds of the load case.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Steps of each workflow of the load case.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Rules of the pack of the rules case.
    #[arg(long, default_value_t = 50_000)]
    rules: usize,
    /// Live workflows upgraded in the rules case.
    #[arg(long, default_value_t = 10)]
    upgrade_live: usize,
    /// The `stoa` binary that serves (default: this one), to compare builds.
    #[arg(long)]
    server_bin: Option<std::path::PathBuf>,
    /// Print one JSON object per case.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct SoakArgs {
    /// Minutes to run at half capacity.
    #[arg(long, default_value_t = 60)]
    minutes: u64,
    /// Clients.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Steps of each workflow.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// How long the server keeps finished workflows (`[limits]
    /// retain_finished_ms`), in seconds: short, so that the store, and the
    /// memory that grows with it, reach their steady size within the run.
    #[arg(long, default_value_t = 60)]
    retain_finished_s: u64,
    /// The `stoa` binary that serves (default: this one).
    #[arg(long)]
    server_bin: Option<std::path::PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// A server for tenants `bench` and `other`, with `quotas` and `limits`
/// (TOML lines).
fn spawn(dir: &Path, bin: Option<&Path>, quotas: &str, limits: &str) -> anyhow::Result<(Kill, String)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[quotas]\n{quotas}\n[limits]\n{limits}\n[[tenants]]\nname = \"bench\"\ntokens = [\"{TOKEN}\"]\n[[tenants]]\nname = \"other\"\ntokens = [\"{TOKEN_B}\"]\n",
            dir.join("data")
        ),
    )?;
    let mut serve = crate::bench_e2e::serve_command(bin)?;
    serve.arg("--config").arg(&config);
    crate::bench_e2e::start_serving(serve)
}

fn worker(addr: &str) -> anyhow::Result<Kill> {
    let child = Command::new(sibling("stoa-worker-media")?)
        .args(["--server", addr, "--token", TOKEN, "--functions", "bench.noop", "--work-scale", "0"])
        .args(["--concurrency", "256"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting stoa-worker-media")?;
    Ok(Kill(child))
}

async fn client(addr: &str, token: &str) -> anyhow::Result<Client> {
    let channel = tonic::transport::Channel::from_shared(addr.to_string())?.connect().await?;
    Ok(pb::stoa_client::StoaClient::with_interceptor(channel, Bearer(format!("Bearer {token}").parse()?))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

fn files(name: &str, version: &str, manifest_extra: &str, rules: &str) -> Vec<pb::PackFile> {
    let manifest = format!("[pack]\nname = \"{name}\"\nversion = \"{version}\"\n{manifest_extra}");
    vec![
        pb::PackFile { path: "pack.toml".into(), content: manifest.into_bytes() },
        pb::PackFile { path: "main.rules".into(), content: rules.as_bytes().to_vec() },
    ]
}

fn steps_pack() -> anyhow::Result<Vec<pb::PackFile>> {
    let dir = Path::new("bench/e2e/steps");
    anyhow::ensure!(dir.is_dir(), "{} not found: run the benchmark from the repository root", dir.display());
    crate::remote::pack_files(dir)
}

fn steps_facts(steps: usize) -> serde_json::Value {
    serde_json::json!([{"type": "Steps", "fields": {"done": 0, "total": steps, "waiting": false}}])
}

pub fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    for c in &args.cases {
        anyhow::ensure!(["live", "load", "backlog", "rules"].contains(&c.as_str()), "--cases: unknown case `{c}`");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut figures = Vec::new();
    for case in &args.cases {
        // A server of its own per case: each RSS figure is that case's.
        let dir = std::env::temp_dir().join(format!("stoa-bench-safety-{}-{case}", std::process::id()));
        // The live case measures memory, not admission: room for all of it.
        let quotas = match case.as_str() {
            "live" => "max_pending = 1000000",
            "rules" => "max_pack_bytes = 16777216",
            _ => "",
        };
        let (server, addr) = spawn(&dir, args.server_bin.as_deref(), quotas, "")?;
        let pid = server.0.id();
        let seconds = Duration::from_secs(args.seconds);
        let f = rt.block_on(async {
            match case.as_str() {
                "live" => live(&args, &addr, pid).await,
                "load" => {
                    let _worker = worker(&addr)?;
                    load(&addr, pid, args.clients, args.steps, seconds, None).await
                }
                "backlog" => {
                    let mut f = load(&addr, pid, args.clients, args.steps, seconds, None).await?;
                    f["case"] =
                        serde_json::json!(format!("backlog {} clients {}s, no worker", args.clients, args.seconds));
                    Ok(f)
                }
                _ => rules(&args, &addr, pid).await,
            }
        });
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
        figures.push(f?);
        eprintln!("{case}: done");
    }
    print_figures(&figures, args.json, 24);
    Ok(std::process::ExitCode::SUCCESS)
}

async fn live(args: &Args, addr: &str, pid: u32) -> anyhow::Result<serde_json::Value> {
    let c = client(addr, TOKEN).await?;
    let rules = r#"rule "wait" { match { w: Wait() } action { after("1h", "Wake", #{}); } }
rule "wake" { match { w: Wait() k: Wake() } action { complete(); } }"#;
    c.clone().deploy_pack(pb::DeployPackRequest { files: files("live", "1", "", rules), ..Default::default() }).await?;
    let n = args.live;
    let idle_before = rss_mib(pid).1;
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut c = c.clone();
        set.spawn(async move {
            start(&mut c, "live", serde_json::json!([{"type": "Wait", "fields": {}}]), format!("l{i}")).await
        });
        if set.len() >= 64 {
            set.join_next().await.context("task")???;
        }
        if i % 10_000 == 9_999 {
            eprintln!("live: {} started, server RSS {:.0} MiB", i + 1, rss_mib(pid).1);
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let started_s = t.elapsed().as_secs_f64();
    let after_start = rss_mib(pid).1;
    // Idle workflows are unloaded after `unload_idle_ms` (30 s by default).
    tokio::time::sleep(Duration::from_secs(35)).await;
    let settled = rss_mib(pid);
    Ok(serde_json::json!({
        "case": format!("live {n} workflows (each waiting on a timer)"),
        "starts_per_s": n as f64 / started_s,
        "server_rss_idle_mib": idle_before,
        "server_rss_started_mib": after_start,
        "server_rss_settled_mib": settled.1,
        "server_peak_rss_mib": settled.0,
        "kib_per_live_workflow": (settled.1 - idle_before) * 1024.0 / n as f64,
    }))
}

/// `clients` tasks start workflows of `steps` steps until `duration` ends,
/// each at most one start every `pace` if given; the server's RSS is
/// sampled every second.
async fn load(
    addr: &str,
    pid: u32,
    clients: usize,
    steps: usize,
    duration: Duration,
    pace: Option<Duration>,
) -> anyhow::Result<serde_json::Value> {
    let c = client(addr, TOKEN).await?;
    c.clone().deploy_pack(pb::DeployPackRequest { files: steps_pack()?, ..Default::default() }).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (started, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..clients {
        let (mut c, stop, started, refused) = (c.clone(), stop.clone(), started.clone(), refused.clone());
        tasks.spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match start(&mut c, "bench-steps", steps_facts(steps), format!("c{k}-{i}")).await {
                    Ok(_) => {
                        started.fetch_add(1, Ordering::Relaxed);
                    }
                    // Backpressure: wait a little, as a client should.
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                i += 1;
                if let Some(p) = pace {
                    tokio::time::sleep(p.saturating_sub(t.elapsed())).await;
                }
            }
        });
    }
    let mut samples = Vec::new();
    let t = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while t.elapsed() < duration {
        tick.tick().await;
        samples.push(rss_mib(pid).1);
        let minute = samples.len() % 60 == 0;
        if minute {
            eprintln!(
                "load: {:?}: {} started, server RSS {:.0} MiB",
                t.elapsed(),
                started.load(Ordering::Relaxed),
                rss_mib(pid).1
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let secs = t.elapsed().as_secs_f64();
    let warm = samples.len() / 3;
    // Medians of a tenth of the run each, right after the warm-up and at
    // the end: a single sample would measure the allocator's swings.
    let tenth = (samples.len() / 10).max(1);
    let (at_warm, at_end) =
        (median(&samples, warm, tenth), median(&samples, samples.len().saturating_sub(tenth), tenth));
    let mut sorted = samples[warm..].to_vec();
    sorted.sort_by(f64::total_cmp);
    Ok(serde_json::json!({
        "case": format!("load {clients} clients {}s, {steps}-step workflows", duration.as_secs()),
        "starts_per_s": started.load(Ordering::Relaxed) as f64 / secs,
        "refused": refused.load(Ordering::Relaxed),
        "server_rss_after_warmup_mib": at_warm,
        "server_rss_end_mib": at_end,
        "server_rss_max_after_warmup_mib": sorted.last().copied().unwrap_or(0.0),
        "server_peak_rss_mib": rss_mib(pid).0,
        "rss_drift_pct": if at_warm > 0.0 { (at_end - at_warm) / at_warm * 100.0 } else { 0.0 },
    }))
}

/// The median of `len` samples from `from` (0 if there are none).
fn median(samples: &[f64], from: usize, len: usize) -> f64 {
    let mut w: Vec<f64> = samples.iter().skip(from).take(len).copied().collect();
    w.sort_by(f64::total_cmp);
    w.get(w.len() / 2).copied().unwrap_or(0.0)
}

/// Starts of tenant `other` one after another until `stop`: their latencies.
async fn bystander(addr: String, stop: Arc<AtomicBool>) -> anyhow::Result<Vec<f64>> {
    let mut c = client(&addr, TOKEN_B).await?;
    let mut out = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        start(
            &mut c,
            "quick",
            serde_json::json!([{"type": "Go", "fields": {}}]),
            format!("b{}-{i}", crate::bench_e2e::now_ms()),
        )
        .await?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(out)
}

fn latency(mut ms: Vec<f64>) -> serde_json::Value {
    ms.sort_by(f64::total_cmp);
    serde_json::json!({"n": ms.len(), "p50": percentile(&ms, 0.5), "p99": percentile(&ms, 0.99), "max": ms.last().copied().unwrap_or(0.0)})
}

/// Runs `f` while tenant `other` starts workflows: (its result, seconds,
/// the bystander's latencies).
async fn beside<T>(
    addr: &str,
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, f64, serde_json::Value)> {
    let stop = Arc::new(AtomicBool::new(false));
    let b = tokio::spawn(bystander(addr.to_string(), stop.clone()));
    let t = Instant::now();
    let r = f.await?;
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    Ok((r, secs, latency(b.await??)))
}

async fn rules(args: &Args, addr: &str, pid: u32) -> anyhow::Result<serde_json::Value> {
    let mut a = client(addr, TOKEN).await?;
    let mut b = client(addr, TOKEN_B).await?;
    let quick = r#"rule "done" { match { g: Go() } action { complete(); } }"#;
    b.deploy_pack(pb::DeployPackRequest { files: files("quick", "1", "", quick), ..Default::default() }).await?;
    let (_, _, idle) = beside(addr, async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        anyhow::Ok(())
    })
    .await?;
    let big = |changed: Option<usize>| {
        let mut s = String::with_capacity(args.rules * 80);
        for i in 0..args.rules {
            let what = if Some(i) == changed { "hit v2" } else { "hit" };
            s.push_str(&format!("rule \"r{i}\" {{ match {{ x: X(n == {i}) }} action {{ log(\"{what}\"); }} }}\n"));
        }
        s
    };
    let v1 = files("big", "1", "", &big(None));
    let bytes: usize = v1.iter().map(|f| f.content.len()).sum();
    let (_, deploy_s, during_deploy) = beside(addr, async {
        a.deploy_pack(pb::DeployPackRequest { files: v1, ..Default::default() }).await?;
        anyhow::Ok(())
    })
    .await?;
    let mut a2 = a.clone();
    let (_, first_start_s, during_start) = beside(addr, async {
        start(&mut a2, "big", serde_json::json!([{"type": "X", "fields": {"n": 5}}]), "first".into()).await
    })
    .await?;
    for i in 1..args.upgrade_live {
        start(&mut a, "big", serde_json::json!([{"type": "X", "fields": {"n": i}}]), format!("live{i}")).await?;
    }
    let v2 = files("big", "2", "", &big(Some(5)));
    let mut a3 = a.clone();
    let (job, upgrade_s, during_upgrade) = beside(addr, async {
        a3.deploy_pack(pb::DeployPackRequest { files: v2, ..Default::default() }).await?;
        let t = Instant::now();
        loop {
            let j = a3.get_upgrade(pb::GetUpgradeRequest { name: "big".into() }).await?.into_inner();
            if j.state == "done" {
                return anyhow::Ok(j);
            }
            anyhow::ensure!(t.elapsed() < Duration::from_secs(900), "the upgrade did not finish in 15 minutes");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    Ok(serde_json::json!({
        "case": format!("rules {} ({} KiB), upgrade {} live", args.rules, bytes / 1024, args.upgrade_live),
        "deploy_s": deploy_s,
        "first_start_s": first_start_s,
        "upgrade_s": upgrade_s,
        "upgraded": job.upgraded,
        "other_tenant_idle_ms": idle,
        "other_tenant_during_deploy_ms": during_deploy,
        "other_tenant_during_start_ms": during_start,
        "other_tenant_during_upgrade_ms": during_upgrade,
        "server_peak_rss_mib": rss_mib(pid).0,
    }))
}

/// Bytes of the files under `dir`.
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

pub fn soak(args: SoakArgs) -> anyhow::Result<std::process::ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let dir = std::env::temp_dir().join(format!("stoa-bench-soak-{}", std::process::id()));
    let limits = format!("retain_finished_ms = {}", args.retain_finished_s * 1000);
    let (server, addr) = spawn(&dir, args.server_bin.as_deref(), "", &limits)?;
    let pid = server.0.id();
    let _worker = worker(&addr)?;
    let figure = rt.block_on(async {
        // Capacity: the same load, as fast as it goes, for a while.
        let probe = load(&addr, pid, args.clients, args.steps, Duration::from_secs(20), None).await?;
        let capacity = probe["starts_per_s"].as_f64().unwrap_or(1.0).max(1.0);
        let pace = Duration::from_secs_f64(args.clients as f64 / (capacity / 2.0));
        eprintln!("soak: capacity {capacity:.0} starts/s; running at half for {} minutes", args.minutes);
        // The store's size each minute, beside the RSS.
        let data = dir.join("data");
        let sizes = tokio::spawn({
            let (data, minutes) = (data.clone(), args.minutes);
            async move {
                let mut sizes = Vec::new();
                for _ in 0..minutes {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    sizes.push(dir_bytes(&data) as f64 / (1u64 << 30) as f64);
                }
                sizes
            }
        });
        let mut f =
            load(&addr, pid, args.clients, args.steps, Duration::from_secs(args.minutes * 60), Some(pace)).await?;
        let sizes = sizes.await?;
        eprintln!("soak: the store each minute (GiB): {sizes:.2?}");
        f["store_gib_after_warmup"] = serde_json::json!(sizes.get(sizes.len() / 3).copied().unwrap_or(0.0));
        f["capacity_starts_per_s"] = serde_json::json!(capacity);
        // What the store holds at the end: the workflows finished within
        // the retention, and the space sled has not reclaimed.
        f["retain_finished_s"] = serde_json::json!(args.retain_finished_s);
        f["store_gib_end"] = serde_json::json!(dir_bytes(&data) as f64 / (1u64 << 30) as f64);
        f["case"] = serde_json::json!(format!("soak {} min at half capacity", args.minutes));
        anyhow::Ok(f)
    });
    drop(server);
    // Removed, failed run or not.
    let _ = std::fs::remove_dir_all(&dir);
    let figure = figure?;
    print_figures(&[figure], args.json, 24);
    Ok(std::process::ExitCode::SUCCESS)
}
