//! `stoa bench always-on`: a real `stoa serve` process and this process as
//! the client over loopback gRPC.
//!
//! Cases:
//! - upgrade: W live workflows (each waiting on a call no worker serves);
//!   a second version adds a rule; the time from the deploy until the
//!   background upgrade is done, and the upgrade turns per second.
//! - timers: W workflows each set K timers due at the same instant; the
//!   scheduler-introduced delay of each (the turn's time minus the due
//!   time, from the timelines): p50, p99, max; and the delay until its
//!   turn's commit began (the committer's stamp), p50 and p99.
//!
//! The server's peak RSS is read from /proc after each case.

use std::time::{Duration, Instant};

use anyhow::Context;
use stoa_proto::v1 as pb;

use crate::bench_e2e::{count_completed, percentile, print_figures, rss_mib, spawn_server, start, Client, TOKEN};
use crate::remote::Bearer;

#[derive(clap::Args)]
pub struct Args {
    /// Live workflows of the upgrade case.
    #[arg(long, default_value_t = 10_000)]
    upgrade_workflows: usize,
    /// Workflows of the timer case.
    #[arg(long, default_value_t = 10_000)]
    timer_workflows: usize,
    /// Timers per workflow, all due at the same instant.
    #[arg(long, default_value_t = 10)]
    timers_per_workflow: usize,
    /// The server's page cache (`stoa serve --cache-mb`); its default if unset.
    #[arg(long)]
    cache_mb: Option<u64>,
    /// The `stoa` binary that serves (default: this one), to compare builds.
    #[arg(long)]
    server_bin: Option<std::path::PathBuf>,
    /// Print one JSON object per case.
    #[arg(long)]
    json: bool,
}

const V1: &str = r#"rule "wait" { match { i: Item(state == "new") } action { modify(i, #{ state: "waiting" }); call("bench.never", #{}); } }"#;
const V2_EXTRA: &str = r#"rule "tag" { match { i: Item() not Tag() } action { insert("Tag", #{ v: 2 }); } }"#;
const TIMERS: &str = r#"
rule "arm" {
    match { c: Counter(armed == false) }
    action { for i in 0..c.k { at(c.due, "Tick", #{ i: i }); } modify(c, #{ armed: true }); }
}
rule "tick" {
    match { t: Tick() c: Counter(armed == true) }
    action { retract(t); modify(c, #{ n: c.n + 1 }); if c.n + 1 == c.k { complete(); } }
}
"#;

fn pack(name: &str, version: &str, rules: &[&str]) -> Vec<pb::PackFile> {
    let manifest = format!("[pack]\nname = \"{name}\"\nversion = \"{version}\"\n[functions.\"bench.never\"]\n");
    let mut files = vec![pb::PackFile { path: "pack.toml".into(), content: manifest.into_bytes() }];
    for (i, r) in rules.iter().enumerate() {
        files.push(pb::PackFile { path: format!("r{i}.rules"), content: r.as_bytes().to_vec() });
    }
    files
}

pub fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let dir = std::env::temp_dir().join(format!("stoa-bench-always-on-{}", std::process::id()));
    let (server, addr) = spawn_server(&dir, args.server_bin.as_deref(), args.cache_mb)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let figures = rt.block_on(cases(&args, &addr, server.0.id()));
    drop(server);
    // Its store, failed run or not: hundreds of MB each.
    let _ = std::fs::remove_dir_all(&dir);
    let figures = figures?;
    print_figures(&figures, args.json, 28);
    Ok(std::process::ExitCode::SUCCESS)
}

async fn start_many(
    c: &Client,
    pack: &str,
    n: usize,
    facts: impl Fn(usize) -> serde_json::Value,
) -> anyhow::Result<()> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut c = c.clone();
        let (pack, f) = (pack.to_string(), facts(i));
        set.spawn(async move { start(&mut c, &pack, f, format!("{pack}-{i}")).await });
        if set.len() >= 64 {
            set.join_next().await.context("task")???;
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

async fn cases(args: &Args, addr: &str, pid: u32) -> anyhow::Result<Vec<serde_json::Value>> {
    let channel = tonic::transport::Channel::from_shared(addr.to_string())?.connect().await?;
    let mut c: Client =
        pb::stoa_client::StoaClient::with_interceptor(channel, Bearer(format!("Bearer {TOKEN}").parse()?))
            .max_decoding_message_size(64 << 20);
    let mut out = Vec::new();

    // Upgrade.
    let w = args.upgrade_workflows;
    c.deploy_pack(pb::DeployPackRequest { files: pack("up", "1", &[V1]), ..Default::default() }).await?;
    let t = Instant::now();
    start_many(&c, "up", w, |_| serde_json::json!([{"type": "Item", "fields": {"state": "new"}}])).await?;
    let start_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    c.deploy_pack(pb::DeployPackRequest { files: pack("up", "2", &[V1, V2_EXTRA]), ..Default::default() }).await?;
    let job = loop {
        let j = c.get_upgrade(pb::GetUpgradeRequest { name: "up".into() }).await?.into_inner();
        if j.state == "done" {
            break j;
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "the upgrade did not finish in 10 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(job.upgraded as usize == w && job.failed == 0, "upgrade: {job:?}");
    out.push(serde_json::json!({
        "case": format!("upgrade {w} live workflows"),
        "seconds": secs,
        "upgrades_per_s": w as f64 / secs,
        "firings": job.firings,
        "start_s": start_s,
        "server_peak_rss_mib": rss_mib(pid).0,
    }));

    // Timers.
    let (w, k) = (args.timer_workflows, args.timers_per_workflow);
    c.deploy_pack(pb::DeployPackRequest { files: pack("timers", "1", &[TIMERS]), ..Default::default() }).await?;
    // Due once every workflow is started (measured: starting takes a while).
    let margin_ms = (start_s / args.upgrade_workflows.max(1) as f64 * w as f64 * 1000.0 * 1.5) as u64 + 2000;
    let due = crate::bench_e2e::now_ms() + margin_ms;
    start_many(
        &c,
        "timers",
        w,
        |_| serde_json::json!([{"type": "Counter", "fields": {"n": 0, "k": k, "due": due, "armed": false}}]),
    )
    .await?;
    let armed_at = crate::bench_e2e::now_ms();
    anyhow::ensure!(armed_at < due, "starting took longer than the margin; lower --timer-workflows");
    // Polled from the due time on, slowly: listing 10,000 workflows is work
    // for the server too, which would compete with the timers' turns, and
    // the delays are read from the timelines afterwards anyway.
    tokio::time::sleep(Duration::from_millis(due.saturating_sub(crate::bench_e2e::now_ms()) + 1000)).await;
    let deadline = Instant::now() + Duration::from_secs(600);
    while count_completed(&mut c, "timers").await? < w {
        anyhow::ensure!(Instant::now() < deadline, "the timers did not all fire within 10 minutes");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut delays = Vec::with_capacity(w * k);
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        let mut token = String::new();
        loop {
            let r = c
                .list_workflows(pb::ListWorkflowsRequest {
                    pack: "timers".into(),
                    page_size: 1000,
                    page_token: token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            ids.extend(r.workflows.into_iter().map(|w| w.id));
            token = r.next_page_token;
            if token.is_empty() {
                break ids;
            }
        }
    };
    let mut set = tokio::task::JoinSet::new();
    for id in ids {
        let mut c = c.clone();
        set.spawn(async move {
            let t = c.get_timeline(pb::GetTimelineRequest { workflow_id: id, from_seq: 1, limit: 0 }).await?;
            let fired = t.into_inner().entries.into_iter().filter(|e| e.kind == "timer_fired");
            // When the turn ran, and when its commit began (`at_us`, the
            // committer's stamp): the second counts the wait for the store.
            let delays = fired.map(|e| {
                let at_us = serde_json::from_str::<serde_json::Value>(&e.json).ok().and_then(|j| j["at_us"].as_u64());
                (e.at_ms.saturating_sub(due) as f64, at_us.map_or(0.0, |us| (us / 1000).saturating_sub(due) as f64))
            });
            anyhow::Ok(delays.collect::<Vec<_>>())
        });
        if set.len() >= 32 {
            delays.extend(set.join_next().await.context("task")???);
        }
    }
    while let Some(r) = set.join_next().await {
        delays.extend(r??);
    }
    let mut commits: Vec<f64> = delays.iter().map(|d| d.1).collect();
    let mut delays: Vec<f64> = delays.into_iter().map(|d| d.0).collect();
    commits.sort_by(f64::total_cmp);
    anyhow::ensure!(delays.len() == w * k, "{} of {} timers fired", delays.len(), w * k);
    delays.sort_by(f64::total_cmp);
    out.push(serde_json::json!({
        "case": format!("timers {} due at once", w * k),
        "delay_p50_ms": percentile(&delays, 0.5),
        "delay_p99_ms": percentile(&delays, 0.99),
        "delay_max_ms": delays.last().copied().unwrap_or(0.0),
        "commit_delay_p50_ms": percentile(&commits, 0.5),
        "commit_delay_p99_ms": percentile(&commits, 0.99),
        // All fired within the largest delay.
        "timers_per_s": (w * k) as f64 / (delays.last().copied().unwrap_or(0.0) / 1000.0).max(0.001),
        "server_peak_rss_mib": rss_mib(pid).0,
    }));
    Ok(out)
}
