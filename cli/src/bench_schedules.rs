//! `stoa bench schedules`: the delay the scheduler adds to cron ticks when
//! many schedules are due at the same instant. A real `stoa serve` process;
//! N schedules `@every P` (all due together at each multiple of P); each
//! tick starts a workflow that completes in its first turn. The delay of a
//! tick is the moment its workflow's start was durable minus its due time,
//! as the server records it in the schedule's runs.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use stoa_proto::v1 as pb;

use crate::bench_e2e::{percentile, rss_mib, Kill};
use crate::remote::{pack_files, Bearer};

#[derive(clap::Args)]
pub struct Args {
    /// Schedules, all due at the same instants.
    #[arg(long, default_value_t = 10_000)]
    schedules: usize,
    /// Seconds between ticks.
    #[arg(long, default_value_t = 10)]
    period: u64,
    /// Ticks measured.
    #[arg(long, default_value_t = 3)]
    ticks: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

const TOKEN: &str = "bench-token-0001";

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(args.schedules > 0 && args.ticks > 0 && args.period > 0, "nothing to measure");
    let stoa = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("stoa-bench-schedules-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut server = Command::new(&stoa)
        .args(["serve", "--listen", "127.0.0.1:0", "--token", &format!("bench={TOKEN}")])
        .arg("--data")
        .arg(&dir)
        .env("STOA_LOG", std::env::var("STOA_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .spawn()
        .context("starting stoa serve")?;
    let out = server.stdout.take().context("server stdout")?;
    let server = Kill(server);
    let mut addr = String::new();
    for line in std::io::BufReader::new(out).lines() {
        if let Some(a) = line?.strip_prefix("listening on ") {
            addr = format!("http://{a}");
            break;
        }
    }
    anyhow::ensure!(!addr.is_empty(), "the server did not start");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let figures = rt.block_on(measure(&args, &addr, server.0.id()))?;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    if args.json {
        println!("{figures}");
    } else {
        println!(
            "schedules: {} schedules due together, {} tick(s): scheduler delay p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {} ticks; server peak RSS {:.0} MiB",
            figures["schedules"], figures["ticks"], figures["delay_p50_ms"], figures["delay_p99_ms"], figures["delay_max_ms"], figures["measured"], figures["server_peak_rss_mib"]
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn measure(args: &Args, addr: &str, server_pid: u32) -> anyhow::Result<serde_json::Value> {
    let channel = tonic::transport::Channel::from_shared(addr.to_string())?.connect().await?;
    let bearer = Bearer(format!("Bearer {TOKEN}").parse()?);
    let mut c = pb::stoa_client::StoaClient::with_interceptor(channel, bearer).max_decoding_message_size(256 << 20);
    c.deploy_pack(pb::DeployPackRequest {
        files: pack_files(std::path::Path::new("bench/schedules"))?,
        ..Default::default()
    })
    .await
    .context("deploying bench/schedules (run from the repository root)")?;
    let created = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let per = args.schedules.div_ceil(8);
    for part in 0..8 {
        let mut c = c.clone();
        let (from, to) = (part * per, ((part + 1) * per).min(args.schedules));
        let period = args.period;
        set.spawn(async move {
            for i in from..to {
                c.put_schedule(pb::PutScheduleRequest {
                    name: format!("s{i:05}"),
                    pack: "bench-schedules".into(),
                    cron: format!("@every {period}s"),
                    facts: vec![pb::FactInput { r#type: "Tick".into(), fields_json: format!("{{\"n\":{i}}}") }],
                    catch_up: "one".into(),
                    ..Default::default()
                })
                .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let setup_s = created.elapsed().as_secs_f64();
    // Measure whole ticks only: from the first tick after every schedule exists.
    let period_ms = args.period as i64 * 1000;
    let first = (now_ms() / period_ms + 1) * period_ms;
    let last = first + (args.ticks as i64 - 1) * period_ms;
    let mut delays = Vec::new();
    let deadline = Instant::now() + Duration::from_millis((last - now_ms()).max(0) as u64) + Duration::from_secs(120);
    loop {
        // Reading 10,000 schedules is work for the server: not while a tick runs.
        tokio::time::sleep(Duration::from_millis((last + period_ms / 2 - now_ms()).max(500) as u64)).await;
        let list = c.list_schedules(pb::ListSchedulesRequest {}).await?.into_inner().schedules;
        delays.clear();
        let mut missing = 0;
        for s in &list {
            for t in 0..args.ticks as i64 {
                let due = first + t * period_ms;
                match s.runs.iter().find(|r| r.due_ms == due) {
                    Some(r) => delays.push((r.started_ms as i64 - due) as f64),
                    None => missing += 1,
                }
            }
        }
        if missing == 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{missing} tick(s) never started");
    }
    delays.sort_by(|a, b| a.total_cmp(b));
    let (peak, _) = rss_mib(server_pid);
    Ok(serde_json::json!({
        "case": "schedules",
        "schedules": args.schedules,
        "ticks": args.ticks,
        "period_s": args.period,
        "measured": delays.len(),
        "setup_s": setup_s,
        "delay_p50_ms": percentile(&delays, 0.50),
        "delay_p99_ms": percentile(&delays, 0.99),
        "delay_max_ms": delays.last().copied().unwrap_or(0.0),
        "server_peak_rss_mib": peak,
    }))
}
