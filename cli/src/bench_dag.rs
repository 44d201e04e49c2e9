//! `stoa bench dag`: DAG definitions on a real server process, each case on
//! a fresh one (so its peak RSS is the case's):
//! - `foreach`: one foreach of N `noop` iterations (each a child workflow)
//!   with concurrency C: time, iterations/s, the server's peak RSS;
//! - `nested`: a foreach of R rows, each a foreach of K `noop` cells;
//! - `steps`: a DAG of S function steps with random dependencies (each on
//!   up to three earlier ones), every step a call to `bench.noop` served
//!   by the example worker, against the same steps written by hand as
//!   rules, on one server in one run: time to complete, and the DAG's
//!   overhead per step.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use stoa_proto::v1 as pb;

use crate::bench_e2e::{rss_mib, sibling, spawn_server, Kill, TOKEN};
use crate::remote::{pack_file_sets, Bearer};

#[derive(clap::Args)]
pub struct Args {
    /// Cases to run: foreach, nested, steps.
    #[arg(long, value_delimiter = ',', default_values_t = ["foreach".to_string(), "nested".to_string(), "steps".to_string()])]
    cases: Vec<String>,
    /// Iterations of the `foreach` case.
    #[arg(long, default_value_t = 100_000)]
    iterations: u64,
    /// Iterations of the `foreach` case running at once.
    #[arg(long, default_value_t = 1000)]
    concurrency: u32,
    /// Rows and cells per row of the `nested` case (rows x cells
    /// iterations of the inner body).
    #[arg(long, default_value_t = 300)]
    nested: u64,
    /// Steps of the `steps` case.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Instances of each variant of the `steps` case, run one after the
    /// other (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Give up on a case after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_s: u64,
    /// Print one JSON object per case.
    #[arg(long)]
    json: bool,
}

type Client =
    pb::stoa_client::StoaClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>>;

pub fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    for c in &args.cases {
        anyhow::ensure!(["foreach", "nested", "steps"].contains(&c.as_str()), "--cases: unknown case `{c}`");
    }
    anyhow::ensure!(args.iterations > 0 && args.steps > 0 && args.runs > 0 && args.nested > 0, "nothing to measure");
    anyhow::ensure!(
        (1..=stoa_dag::model::MAX_CONCURRENCY).contains(&args.concurrency),
        "--concurrency: from 1 to {}",
        stoa_dag::model::MAX_CONCURRENCY
    );
    let tmp = std::env::temp_dir().join(format!("stoa-bench-dag-{}", std::process::id()));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut figures = Vec::new();
    for case in &args.cases {
        let dir = tmp.join(case);
        let (server, addr) = spawn_server(&dir.join("store"), None, None)?;
        let pid = server.0.id();
        let f = match case.as_str() {
            "foreach" => rt.block_on(foreach(&args, &dir, &addr, pid, args.iterations, None)),
            "nested" => rt.block_on(foreach(&args, &dir, &addr, pid, args.nested, Some(args.nested))),
            _ => rt.block_on(steps(&args, &dir, &addr, pid)),
        };
        let disk = crate::bench_safety::dir_bytes(&dir.join("store"));
        drop(server);
        let mut f = f?;
        f["store_mib"] = serde_json::json!(disk as f64 / (1 << 20) as f64);
        if args.json {
            println!("{f}");
        } else {
            println!("{}", summary(&f));
        }
        figures.push(f);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(std::process::ExitCode::SUCCESS)
}

fn summary(f: &serde_json::Value) -> String {
    match f["case"].as_str() {
        Some("steps") => format!(
            "steps: {} function steps, random dependencies: DAG {:.0} ms, rules {:.0} ms (median of {}); overhead {:.2} ms per step ({:.2}x); server peak RSS {:.0} MiB",
            f["steps"],
            num(&f["dag_ms"]),
            num(&f["rules_ms"]),
            f["runs"],
            num(&f["overhead_ms_per_step"]),
            num(&f["ratio"]),
            num(&f["server_peak_rss_mib"])
        ),
        _ => format!(
            "{}: {} iterations ({}), concurrency {}: {:.1} s, {:.0} iterations/s, most running at once {}; server peak RSS {:.0} MiB, store {:.0} MiB",
            f["case"].as_str().unwrap_or_default(),
            f["iterations"],
            f["shape"].as_str().unwrap_or_default(),
            f["concurrency"],
            f["seconds"].as_f64().unwrap_or(0.0),
            f["iterations_per_s"].as_f64().unwrap_or(0.0),
            f["most_running"],
            f["server_peak_rss_mib"].as_f64().unwrap_or(0.0),
            f["store_mib"].as_f64().unwrap_or(0.0),
        ),
    }
}

fn num(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

async fn connect(addr: &str) -> anyhow::Result<Client> {
    let channel = tonic::transport::Channel::from_shared(addr.to_string())?.connect().await?;
    let bearer = Bearer(format!("Bearer {TOKEN}").parse()?);
    Ok(pb::stoa_client::StoaClient::with_interceptor(channel, bearer).max_decoding_message_size(256 << 20))
}

/// Writes a definition (or pack) and deploys every pack it is.
async fn deploy(c: &mut Client, dir: &Path, files: &[(&str, String)]) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap_or(dir))?;
        std::fs::write(&p, text)?;
    }
    for files in pack_file_sets(dir)? {
        c.deploy_pack(pb::DeployPackRequest { files, ..Default::default() }).await.context("deploy")?;
    }
    Ok(())
}

async fn start(c: &mut Client, pack: &str, params: serde_json::Value) -> anyhow::Result<String> {
    let facts = vec![pb::FactInput { r#type: "Params".into(), fields_json: params.to_string() }];
    let r = c
        .start_workflow(pb::StartWorkflowRequest { pack: pack.into(), facts, request_id: request_id() })
        .await
        .context("start")?;
    Ok(r.into_inner().workflow_id)
}

/// Polls a workflow until it ends; `progress` sees its facts meanwhile.
async fn wait(
    c: &mut Client,
    id: &str,
    within: Duration,
    mut progress: impl FnMut(&pb::Workflow),
) -> anyhow::Result<pb::Workflow> {
    let deadline = Instant::now() + within;
    loop {
        let w =
            c.get_workflow(pb::GetWorkflowRequest { workflow_id: id.into(), without_facts: false }).await?.into_inner();
        if w.status != "running" {
            return Ok(w);
        }
        progress(&w);
        anyhow::ensure!(Instant::now() < deadline, "{id} still runs after {within:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The `foreach` case (`rows` None) or the `nested` one.
async fn foreach(
    args: &Args,
    dir: &Path,
    addr: &str,
    pid: u32,
    n: u64,
    rows: Option<u64>,
) -> anyhow::Result<serde_json::Value> {
    let mut c = connect(addr).await?;
    let (yaml, total, conc, shape) = match rows {
        None => (
            format!(
                "id: bench-foreach\nsteps:\n  - id: each\n    foreach:\n      range: {{ to: {n} }}\n      concurrency: {}\n      steps:\n        - {{ id: work, type: noop, params: {{ i: \"${{index}}\" }} }}\n",
                args.concurrency
            ),
            n,
            args.concurrency,
            "one foreach of noop".to_string(),
        ),
        Some(r) => {
            // At most 10 rows at once, 100 cells per row: 1,000 cells in flight.
            (
                format!(
                    "id: bench-nested\nsteps:\n  - id: rows\n    foreach:\n      range: {{ to: {r} }}\n      as: row\n      index: ri\n      concurrency: 10\n      steps:\n        - id: cells\n          foreach:\n            range: {{ to: {n} }}\n            concurrency: 100\n            steps:\n              - {{ id: work, type: noop, params: {{ r: \"${{row}}\", c: \"${{index}}\" }} }}\n"
                ),
                r * n,
                1000,
                format!("{r} rows x {n} cells, 10 rows x 100 cells at once"),
            )
        }
    };
    let name = if rows.is_some() { "bench-nested" } else { "bench-foreach" };
    deploy(&mut c, &dir.join("def"), &[("workflow.yaml", yaml)]).await?;
    let t = Instant::now();
    let id = start(&mut c, name, serde_json::json!({})).await?;
    let mut last = Instant::now();
    let mut most = 0i64;
    let w = wait(&mut c, &id, Duration::from_secs(args.timeout_s), |w| {
        // The parent's `Loop` fact: iterations started, running, done.
        for f in w.facts.iter().filter(|f| f.r#type == "Loop") {
            let v: serde_json::Value = serde_json::from_str(&f.fields_json).unwrap_or_default();
            most = most.max(v["running"].as_i64().unwrap_or(0));
            if last.elapsed() > Duration::from_secs(5) && !args.json {
                eprintln!(
                    "  {:.0} s: {} done, {} running, of {}",
                    t.elapsed().as_secs_f64(),
                    v["done"],
                    v["running"],
                    v["total"]
                );
                last = Instant::now();
            }
        }
    })
    .await?;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(w.status == "completed", "{id} ended {}: {}", w.status, w.reason);
    let (peak, _) = rss_mib(pid);
    Ok(serde_json::json!({
        "case": if rows.is_some() { "nested" } else { "foreach" },
        "shape": shape,
        "iterations": total,
        "concurrency": conc,
        "seconds": secs,
        "iterations_per_s": total as f64 / secs,
        // Sampled every 250 ms from the outer loop's counts.
        "most_running": most,
        "server_peak_rss_mib": peak,
    }))
}

/// Per step, the earlier steps it depends on (up to three, a fixed LCG).
fn random_deps(n: usize) -> Vec<Vec<usize>> {
    let mut seed: u64 = 7;
    (0..n)
        .map(|i| {
            let mut deps = Vec::new();
            for _ in 0..3.min(i) {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let j = (seed >> 33) as usize % i;
                if !deps.contains(&j) {
                    deps.push(j);
                }
            }
            deps
        })
        .collect()
}

fn dag_yaml(deps: &[Vec<usize>]) -> String {
    let mut y = String::from("id: bench-steps\nsteps:\n");
    for (i, ds) in deps.iter().enumerate() {
        let ds: Vec<String> = ds.iter().map(|j| format!("s{j}")).collect();
        let _ = writeln!(
            y,
            "  - {{ id: s{i}, function: bench.noop, params: {{ step: s{i} }}, depends_on: [{}] }}",
            ds.join(", ")
        );
    }
    y
}

/// The same steps as rules a person would write: a `Done` fact per step
/// ended, a rule per step that calls the function once its dependencies
/// are done.
fn rules_pack(deps: &[Vec<usize>]) -> (String, String) {
    let manifest = "[pack]\nname = \"bench-steps-rules\"\nversion = \"1\"\n\n[functions.\"bench.noop\"]\n\n[facts.Go]\n\n[facts.Started]\nstep = \"int\"\n\n[facts.Done]\nstep = \"int\"\n".to_string();
    let mut r = String::new();
    for (i, ds) in deps.iter().enumerate() {
        let _ = writeln!(r, "rule \"s{i}\" {{\n    match {{\n        Go()");
        for j in ds {
            let _ = writeln!(r, "        Done(step == {j})");
        }
        let _ = writeln!(
            r,
            "        not Started(step == {i})\n    }}\n    action {{ insert(\"Started\", #{{ step: {i} }}); call(\"bench.noop\", #{{ step: \"s{i}\" }}); }}\n    reaction {{ insert(\"Done\", #{{ step: {i} }}); }}\n}}\n"
        );
    }
    let _ = writeln!(
        r,
        "rule \"all done\" {{\n    salience -1\n    match {{\n        Go()\n        n: count(Done())\n        test(n == {})\n    }}\n    action {{ complete(#{{}}); }}\n}}",
        deps.len()
    );
    (manifest, r)
}

async fn steps(args: &Args, dir: &Path, addr: &str, pid: u32) -> anyhow::Result<serde_json::Value> {
    let worker_bin = sibling("stoa-worker-media")?;
    let _worker: Kill = Command::new(&worker_bin)
        .args(["--server", addr, "--token", TOKEN, "--functions", "bench.noop", "--work-scale", "0"])
        .args(["--concurrency", "64"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Kill)
        .context("starting the worker")?;
    let mut c = connect(addr).await?;
    let deps = random_deps(args.steps);
    deploy(&mut c, &dir.join("dag"), &[("workflow.yaml", dag_yaml(&deps))]).await?;
    let (manifest, rules) = rules_pack(&deps);
    deploy(&mut c, &dir.join("rules"), &[("pack.toml", manifest), ("steps.rules", rules)]).await?;
    let within = Duration::from_secs(args.timeout_s);
    // Alternate the two, so that a machine slowing down mid-run weighs on
    // both alike.
    let (mut dag, mut hand) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        for (pack, facts, out) in [("bench-steps", "Params", &mut dag), ("bench-steps-rules", "Go", &mut hand)] {
            let t = Instant::now();
            let r = c
                .start_workflow(pb::StartWorkflowRequest {
                    pack: pack.into(),
                    facts: vec![pb::FactInput { r#type: facts.into(), fields_json: "{}".into() }],
                    request_id: request_id(),
                })
                .await?
                .into_inner();
            let w = wait(&mut c, &r.workflow_id, within, |_| {}).await?;
            anyhow::ensure!(w.status == "completed", "{pack}: {} {}", w.status, w.reason);
            out.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (d, h) = (median(&mut dag), median(&mut hand));
    let (peak, _) = rss_mib(pid);
    Ok(serde_json::json!({
        "case": "steps",
        "steps": args.steps,
        "runs": args.runs,
        "dag_ms": d,
        "rules_ms": h,
        "overhead_ms_per_step": (d - h) / args.steps as f64,
        "ratio": d / h,
        "server_peak_rss_mib": peak,
    }))
}

fn request_id() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("bench-dag-{}-{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}
