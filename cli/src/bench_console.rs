//! `stoa bench console`: the web console's server time with 100,000
//! workflows stored, and on a workflow of 20,000 timeline entries.
//!
//! The store is written first by this process (the pack's record, then
//! start turns committed straight to a sled store, as a server would have
//! committed them), so that filling it does not take a server's worth of
//! time; then a `stoa serve` process opens it and the console is asked
//! over loopback HTTP. Each figure is the server's own time for the page
//! (the `Server-Timing` header the console sends: from the request to the
//! response's head, the page rendered), p50, p95 and max over `--runs`
//! requests; the client's round trip is shown beside it.

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use stoa_engine::store::{Commit, PackRecord, SledStore, Store};
use stoa_engine::workflow::{Input, Workflow};
use stoa_engine::WorkflowId;
use stoa_rules::compile::{compile, Pack, PackSource};
use stoa_rules::testcase::FactSpec;

use crate::bench_e2e::{serve_command, TOKEN};

#[derive(clap::Args)]
pub struct Args {
    /// Workflows stored.
    #[arg(long, default_value_t = 100_000)]
    workflows: u64,
    /// Item facts of the large workflow (three timeline entries each).
    #[arg(long, default_value_t = 7_000)]
    items: u64,
    /// Requests per page measured.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Print one JSON object per case.
    #[arg(long)]
    json: bool,
    /// Keep the store here (reused by a later run if its workflows are
    /// there) instead of a temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
}

const PACK_TOML: &str = r#"
[pack]
name = "bench-console"
version = "1"

[functions."bench.work"]
timeout = "1h"

[limits]
max_facts = 1000000
max_firings_per_turn = 10000000
"#;

const RULES: &str = r#"
rule "call" {
    match { j: Job(kind == "call") }
    action { call("bench.work", #{ n: j.n }); }
}
rule "wait" {
    match { j: Job(kind == "wait") }
    action { after("30d", "Tick", #{}); }
}
rule "done" {
    match { j: Job(kind == "done") }
    action { complete(#{ n: j.n }); }
}
rule "fail" {
    match { j: Job(kind == "fail") }
    action { fail("bench"); }
}
rule "see" {
    match { i: Item(state == "new") }
    action { modify(i, #{ state: "seen" }); }
}
"#;

/// Workflows created this far apart (ms), the last one a minute ago.
const SPACING_MS: u64 = 7;

fn pack_files() -> std::collections::BTreeMap<String, String> {
    [("pack.toml".to_string(), PACK_TOML.to_string()), ("console.rules".to_string(), RULES.to_string())].into()
}

fn compiled() -> anyhow::Result<Arc<Pack>> {
    let src = PackSource {
        root: PathBuf::from("bench"),
        files: pack_files().into_iter().map(|(k, v)| (PathBuf::from(k), v)).collect(),
    };
    let (p, d) = compile(&src);
    p.map(Arc::new).with_context(|| format!("the bench pack: {d:?}"))
}

fn facts(v: serde_json::Value) -> Vec<FactSpec> {
    serde_json::from_value(v).expect("facts")
}

/// The id of workflow `i` (its key sorts as it was created).
fn wf(i: u64) -> WorkflowId {
    WorkflowId::new(format!("wf_bench.c{i:08}"))
}

/// Writes the pack's record and `n` workflows (a quarter each waiting on
/// an invocation, waiting on a timer, completed, failed), then the large
/// one; returns its id.
fn fill(dir: &std::path::Path, n: u64, items: u64) -> anyhow::Result<WorkflowId> {
    let big = WorkflowId::new("wf_bench.big");
    let store = SledStore::open(dir, 64)?;
    if store.load(&big)?.is_some() && store.load(&wf(n - 1))?.is_some() {
        eprintln!("reusing the store in {}", dir.display());
        return Ok(big);
    }
    let pack = compiled()?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    store.put_pack(&PackRecord {
        tenant: "bench".into(),
        name: "bench-console".into(),
        version: "1".into(),
        seq: 1,
        digest: pack.digest,
        deployed_ms: now,
        files: pack_files(),
    })?;
    let first = now - 60_000 - n * SPACING_MS;
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let group: Vec<u64> = (i..n.min(i + 500)).collect();
        let mut made = Vec::with_capacity(group.len());
        for &k in &group {
            let kind = ["call", "wait", "done", "fail"][(k % 4) as usize];
            let request = format!("bench/req-{k}");
            let mut w = Workflow::new(wf(k), pack.clone(), first + k * SPACING_MS).with_request(request.clone());
            let start = facts(serde_json::json!([{"type": "Job", "fields": {"kind": kind, "n": k}}]));
            let out =
                w.apply(Input::Start { facts: start }, first + k * SPACING_MS).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            made.push((w, out, request));
        }
        let commits: Vec<Commit<'_>> = made
            .iter()
            .map(|(w, out, r)| Commit { workflow: w.id(), output: out, request_id: Some(r), epoch: None })
            .collect();
        store.commit(&commits)?;
        i += group.len() as u64;
        if i % 20_000 == 0 {
            eprintln!("{i} workflows stored ({:.0} s)", started.elapsed().as_secs_f64());
        }
    }
    let mut w = Workflow::new(big.clone(), pack.clone(), now);
    let items: Vec<serde_json::Value> =
        (0..items).map(|k| serde_json::json!({"type": "Item", "fields": {"k": k, "state": "new"}})).collect();
    let out = w
        .apply(Input::Start { facts: facts(serde_json::Value::Array(items)) }, now)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    store.commit(&[Commit { workflow: &big, output: &out, request_id: None, epoch: None }])?;
    eprintln!(
        "stored in {:.0} s; the large workflow has {} timeline entries",
        started.elapsed().as_secs_f64(),
        w.meta().timeline_seq
    );
    Ok(big)
}

/// One HTTP/1.1 request on a new loopback connection: status, the head's
/// lines, the body.
fn http(addr: &str, req: &str) -> anyhow::Result<(u16, Vec<String>, String)> {
    let mut c = std::net::TcpStream::connect(addr)?;
    c.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    c.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("an HTTP answer")?;
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).context("a status")?;
    Ok((status, lines.map(str::to_string).collect(), body.to_string()))
}

fn get(addr: &str, path: &str, cookie: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n")
}

/// The server's time for one page (ms) from its `Server-Timing` header,
/// and the client's round trip.
fn timed(addr: &str, path: &str, cookie: &str) -> anyhow::Result<(f64, f64, String)> {
    let t = Instant::now();
    let (status, head, body) = http(addr, &get(addr, path, cookie))?;
    let round = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(status == 200, "{path}: HTTP {status}: {}", body.chars().take(300).collect::<String>());
    let server = head
        .iter()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("server-timing: app;dur=").map(str::to_string))
        .and_then(|d| d.trim().parse::<f64>().ok())
        .context("a Server-Timing header")?;
    Ok((server, round, body))
}

/// A directory removed when dropped (the bench's own store).
struct Removed(Option<PathBuf>);

impl Drop for Removed {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(args.workflows >= 4, "--workflows: at least 4");
    anyhow::ensure!(args.runs >= 1, "--runs: at least 1");
    let tmp = std::env::temp_dir().join(format!("stoa-bench-console-{}", std::process::id()));
    let _cleanup = Removed(args.dir.is_none().then(|| tmp.clone()));
    let dir = args.dir.clone().unwrap_or_else(|| tmp.clone());
    let big = fill(&dir, args.workflows, args.items)?;

    let mut serve = serve_command(None)?;
    serve.args(["--token", &format!("bench={TOKEN}"), "--http-listen", "127.0.0.1:0"]).arg("--data").arg(&dir);
    serve.stdout(Stdio::piped());
    let mut child = serve.spawn().context("starting stoa serve")?;
    let out = child.stdout.take().context("server stdout")?;
    let _server = crate::bench_e2e::Kill(child);
    let mut console = None;
    for line in std::io::BufReader::new(out).lines() {
        let line = line?;
        if let Some(a) = line.strip_prefix("console on http://") {
            console = Some(a.trim_end_matches('/').to_string());
        }
        if line.starts_with("listening on ") {
            break;
        }
    }
    let addr = console.context("the server printed no console address")?;
    let login = format!(
        "POST /login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\ntoken={TOKEN}",
        TOKEN.len() + 6
    );
    let (_, head, _) = http(&addr, &login)?;
    let cookie = head
        .iter()
        .find_map(|l| l.to_ascii_lowercase().starts_with("set-cookie:").then(|| l[11..].trim().to_string()))
        .and_then(|c| c.split(';').next().map(str::to_string))
        .context("a session cookie")?;

    // A page in the middle of the completed ones (the index's cursor).
    let mid = args.workflows / 2 / 4 * 4 + 2;
    let (_, _, body) = timed(&addr, &format!("/workflows?q=req-{mid}"), &cookie)?;
    anyhow::ensure!(body.contains(wf(mid).as_str()), "the request id search finds workflow {mid}");
    let cases: Vec<(&str, String)> = vec![
        ("list: first page", "/workflows".into()),
        ("list: waiting on a timer", "/workflows?pack=bench-console&status=waiting-timer".into()),
        (
            "list: failed, version 1, time window",
            format!("/workflows?pack=bench-console&version=1&status=failed&since={}", since_text(args.workflows)),
        ),
        ("list: a page deep in completed", deep_page(&addr, &cookie)?),
        ("list: by request id", format!("/workflows?q=req-{mid}")),
        ("workflow of 20,000 entries: open", format!("/workflows/{big}")),
        ("workflow of 20,000 entries: a middle page", format!("/workflows/{big}?from=10000")),
        ("workflow of 20,000 entries: first page", format!("/workflows/{big}?from=1")),
        ("firing graph of a page of it", format!("/workflows/{big}/graph?from=10000")),
    ];
    let width = cases.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    if !args.json {
        println!("{} workflows; server time per page (Server-Timing), ms; {} requests each", args.workflows, args.runs);
        println!("{:<width$} {:>8} {:>8} {:>8} {:>10}", "case", "p50", "p95", "max", "rtt p95");
    }
    for (name, path) in cases {
        // Warm: the first request compiles the pack, fills caches.
        let (_, _, body) = timed(&addr, &path, &cookie)?;
        anyhow::ensure!(body.contains("/workflows/wf_bench."), "{name}: the page shows no workflow");
        let (mut server, mut round) = (Vec::new(), Vec::new());
        for _ in 0..args.runs {
            let (s, r, _) = timed(&addr, &path, &cookie)?;
            server.push(s);
            round.push(r);
        }
        server.sort_by(f64::total_cmp);
        round.sort_by(f64::total_cmp);
        let (p50, p95, max, rtt) = (pct(&server, 0.5), pct(&server, 0.95), pct(&server, 1.0), pct(&round, 0.95));
        if args.json {
            println!(
                "{}",
                serde_json::json!({"case": name, "path": path, "p50_ms": p50, "p95_ms": p95, "max_ms": max, "rtt_p95_ms": rtt, "workflows": args.workflows})
            );
        } else {
            println!("{name:<width$} {p50:>8.2} {p95:>8.2} {max:>8.2} {rtt:>10.2}");
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// A UTC time a tenth of the way from the first workflow's creation to
/// the last's (to the minute).
fn since_text(n: u64) -> String {
    let now = jiff::Timestamp::now();
    let first = now.as_millisecond() - 60_000 - (n * SPACING_MS * 9 / 10) as i64;
    jiff::Timestamp::from_millisecond(first).map(|t| t.strftime("%Y-%m-%dT%H:%M").to_string()).unwrap_or_default()
}

/// The URL of a page of completed workflows half-way down the list: the
/// first page's "Older" link, followed until the middle.
fn deep_page(addr: &str, cookie: &str) -> anyhow::Result<String> {
    let mut path = "/workflows?status=completed&size=200".to_string();
    for _ in 0..60 {
        let (_, _, body) = timed(addr, &path, cookie)?;
        let Some(next) = body.split("rel=\"next\" href=\"").nth(1).and_then(|r| r.split('"').next()) else { break };
        path = next.replace("&amp;", "&");
    }
    Ok(path)
}
