//! `stoa bench e2e`: the platform end to end over loopback gRPC: a real
//! `stoa serve` process, a real worker process (`stoa-worker-media` serving
//! `bench.noop`), and this process as the client.
//!
//! Cases: N workflows of K sequential durable steps (workflows and steps per
//! second); one workflow of K steps followed live (the mean latency of one
//! action → worker → reaction hop, and the tail of the gaps between results
//! arriving on the watch stream); one workflow fanning out F invocations
//! in parallel. The server's peak RSS is read from /proc.

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
    /// Worker processes.
    #[arg(long, default_value_t = 1)]
    worker_processes: usize,
    /// Invocations each worker takes at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Print one JSON object per case.
    #[arg(long)]
    json: bool,
}

const TOKEN: &str = "bench-token-0001";

pub(crate) struct Kill(pub(crate) Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.with_file_name(name);
    anyhow::ensure!(
        p.exists(),
        "{} not found; build it first: cargo build --release -p stoa-functions --bin {name}",
        p.display()
    );
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

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

type Client =
    pb::stoa_client::StoaClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>>;

async fn start(c: &mut Client, pack: &str, facts: serde_json::Value, request_id: String) -> anyhow::Result<String> {
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

async fn wait_completed(c: &mut Client, pack: &str, n: usize, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let mut done = 0;
        let mut token = String::new();
        loop {
            let r = c
                .list_workflows(pb::ListWorkflowsRequest {
                    pack: pack.into(),
                    status: "completed".into(),
                    page_size: 1000,
                    page_token: token,
                })
                .await?
                .into_inner();
            done += r.workflows.len();
            token = r.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        if done >= n {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "only {done} of {n} {pack} workflows completed within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let stoa = std::env::current_exe()?;
    let worker = sibling("stoa-worker-media")?;
    let dir = std::env::temp_dir().join(format!("stoa-bench-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut server = Command::new(&stoa)
        .args(["serve", "--listen", "127.0.0.1:0", "--token", &format!("bench={TOKEN}")])
        .arg("--data")
        .arg(&dir)
        .env("STOA_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting stoa serve")?;
    let out = server.stdout.take().context("server stdout")?;
    let server = Kill(server);
    let mut addr = String::new();
    for line in std::io::BufReader::new(out).lines() {
        let line = line?;
        if let Some(a) = line.strip_prefix("listening on ") {
            addr = format!("http://{a}");
            break;
        }
    }
    anyhow::ensure!(!addr.is_empty(), "the server did not start");
    let _workers: Vec<Kill> = (0..args.worker_processes)
        .map(|_| {
            Command::new(&worker)
                .args(["--server", &addr, "--token", TOKEN, "--functions", "bench.noop", "--work-scale", "0"])
                .args(["--concurrency", &args.concurrency.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map(Kill)
        })
        .collect::<Result<_, _>>()
        .context("starting the worker")?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let figures = rt.block_on(cases(&args, &addr, server.0.id()))?;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    for f in figures {
        if args.json {
            println!("{f}");
        } else {
            println!("{:<44} {}", f["case"].as_str().unwrap_or_default(), summary(&f));
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
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
        c.deploy_pack(pb::DeployPackRequest { files: pack_files(dir)?, dry_run: false }).await?;
    }
    let mut figures = Vec::new();
    let steps_facts =
        |k: usize| serde_json::json!([{"type": "Steps", "fields": {"done": 0, "total": k, "waiting": false}}]);

    // Warm-up: connections, worker session, pack caches.
    start(&mut c, "bench-steps", steps_facts(5), "warm".into()).await?;
    wait_completed(&mut c, "bench-steps", 1, Duration::from_secs(30)).await?;

    // 1. N workflows × K sequential steps, started together.
    let t = Instant::now();
    let mut starts = Vec::new();
    for i in 0..args.workflows {
        let mut c2 = c.clone();
        let facts = steps_facts(args.steps);
        starts.push(tokio::spawn(async move { start(&mut c2, "bench-steps", facts, format!("s-{i}")).await }));
    }
    for s in starts {
        s.await??;
    }
    wait_completed(&mut c, "bench-steps", args.workflows + 1, Duration::from_secs(600)).await?;
    let secs = t.elapsed().as_secs_f64();
    let steps = (args.workflows * args.steps) as f64;
    let (peak, now) = rss_mib(server_pid);
    figures.push(serde_json::json!({
        "case": format!("{} workflows x {} sequential steps", args.workflows, args.steps),
        "seconds": secs,
        "workflows_per_s": args.workflows as f64 / secs,
        "steps_per_s": steps / secs,
        "server_rss_mib": now,
        "server_peak_rss_mib": peak,
    }));

    // 2. Hop latency: one workflow, its results followed live.
    let id = start(&mut c, "bench-steps", steps_facts(args.hops), "latency".into()).await?;
    let mut stream = c.watch_workflow(pb::WatchWorkflowRequest { workflow_id: id, from_seq: 1 }).await?.into_inner();
    let t = Instant::now();
    let mut last: Option<Instant> = None;
    let mut gaps = Vec::with_capacity(args.hops);
    while let Some(e) = stream.message().await? {
        if e.kind == "result_applied" {
            let now = Instant::now();
            if let Some(l) = last {
                gaps.push(now.duration_since(l).as_secs_f64() * 1000.0);
            }
            last = Some(now);
        }
    }
    let secs = t.elapsed().as_secs_f64();
    gaps.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    // The watch stream delivers several turns' entries at once, so the gaps
    // between arrivals bound the tail, not the median; the mean hop is the
    // honest central figure.
    figures.push(serde_json::json!({
        "case": format!("1 workflow x {} steps, hop latency", args.hops),
        "seconds": secs,
        "hop_mean_ms": secs * 1000.0 / args.hops.max(1) as f64,
        "watch_gap_p99_ms": percentile(&gaps, 0.99),
        "watch_gap_max_ms": gaps.last().copied().unwrap_or(0.0),
    }));

    // 3. Fan-out: one workflow, F invocations in parallel.
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
    Ok(figures)
}
