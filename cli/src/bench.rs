//! `stoa bench engine`: the engine side by side with CLIPS 6.30 (the
//! `clips` binary) and CLIPS 6.4 (clipspy, in a virtual environment), on
//! Miss Manners, Waltz, a throughput case and insert scale; plus Stoa's own
//! durable-turn figures.
//!
//! Every run is a separate process (so peak memory is per case), runs of
//! the engines alternate, and the median is reported. The timers cover the
//! same phase in every engine: asserting the case's facts and firing to
//! quiescence, after the program and the data are loaded (process start,
//! pack compilation and JSON parsing are outside). For Stoa that is one
//! start turn (`Workflow::apply`); for CLIPS, `(load-facts)` or the assert
//! loop, then `(run)`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use stoa_engine::store::{Commit, SledStore, Store};
use stoa_engine::workflow::{Input, Workflow};
use stoa_engine::WorkflowId;
use stoa_rules::compile::{compile, Pack, PackSource};
use stoa_rules::testcase::FactSpec;
use stoa_rules::{Fields, Sym, Value};

#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object per case (fields: case, stoa_s, peer, peer_s,
    /// ratio, firings, stoa_rss_mib, peer_rss_mib, ...).
    #[arg(long)]
    json: bool,
    /// Run only the cases whose name contains this text (e.g. manners128).
    #[arg(long)]
    only: Option<String>,
    /// Runs of each engine per case; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The published data sets (mannersN.fct, waltzN.fct).
    #[arg(long, default_value = "../shared/bench-data")]
    data: PathBuf,
    /// Create bench/.venv-clips with clipspy (CLIPS 6.4) if it is missing.
    #[arg(long)]
    setup_clipspy: bool,
    /// Stoa only: skip the CLIPS peers.
    #[arg(long)]
    no_peers: bool,
}

/// `stoa bench case NAME`: one run of one case in this process (used by
/// `stoa bench engine`, which runs each case in a fresh process).
#[derive(clap::Args)]
pub struct CaseArgs {
    case: String,
}

struct Figure {
    case: String,
    seconds: f64,
    count: u64,
    unit: &'static str,
    extra: Vec<(&'static str, serde_json::Value)>,
}

pub(crate) fn pack(rules: &str) -> Arc<Pack> {
    let mut src = PackSource { root: PathBuf::from("bench"), ..PackSource::default() };
    src.files.insert(
        "pack.toml".into(),
        "[pack]\nname = \"bench\"\nversion = \"1\"\n[limits]\nmax_firings_per_turn = 100000000\nmax_facts = 100000000\n".into(),
    );
    src.files.insert("bench.rules".into(), rules.into());
    let (p, d) = compile(&src);
    Arc::new(p.unwrap_or_else(|| panic!("bench pack: {d:?}")))
}

fn items(n: u64) -> Vec<FactSpec> {
    let (k, done) = (Sym::new("n"), Sym::new("done"));
    (0..n)
        .map(|i| FactSpec {
            ty: "Item".into(),
            fields: [(k, Value::Int(i as i64)), (done, Value::Bool(false))].into_iter().collect::<Fields>(),
        })
        .collect()
}

/// Resident set size in bytes (Linux), 0 elsewhere.
pub fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

fn throughput(n: u64) -> Figure {
    let p = pack(r#"rule "touch" { match { i: Item(done == false) } action { modify(i, #{ done: true }); } }"#);
    let mut wf = Workflow::new(WorkflowId::new("b"), p, 0);
    let facts = items(n);
    let t = Instant::now();
    let out = wf.apply(Input::Start { facts }, 1).expect("start");
    let s = t.elapsed().as_secs_f64();
    assert_eq!(out.firings, n);
    Figure {
        case: format!("throughput {n} facts, 1 rule, modify each"),
        seconds: s,
        count: n,
        unit: "firings",
        extra: vec![],
    }
}

fn insert_scale(n: u64) -> Figure {
    // A join rule that matches nothing keeps every fact in alpha memory and
    // probes an index on each insert, without firing.
    let p = pack(r#"rule "pair" { match { a: Item(done == true) b: Item(n == a.n) } action { } }"#);
    let mut wf = Workflow::new(WorkflowId::new("b"), p, 0);
    let facts = items(n);
    let before = rss();
    let t = Instant::now();
    wf.apply(Input::Start { facts }, 1).expect("start");
    let s = t.elapsed().as_secs_f64();
    let bytes = rss().saturating_sub(before);
    Figure {
        case: format!("insert {n} facts"),
        seconds: s,
        count: n,
        unit: "facts",
        extra: vec![("bytes_per_fact", serde_json::json!(bytes / n.max(1)))],
    }
}

fn durable_turns(workflows: u64, turns: u64, group: usize) -> Figure {
    let dir = tempfile_dir();
    let store = SledStore::open(&dir, 64).expect("store");
    let p = pack(r#"rule "count" { match { i: Item(done == false) } action { modify(i, #{ done: true }); } }"#);
    let mut wfs: Vec<Workflow> =
        (0..workflows).map(|i| Workflow::new(WorkflowId::new(format!("d{i}")), p.clone(), 0)).collect();
    let t = Instant::now();
    let mut pending = Vec::new();
    let mut total = 0;
    for turn in 0..turns {
        for wf in wfs.iter_mut() {
            let input = if turn == 0 { Input::Start { facts: items(1) } } else { Input::Assert { facts: items(1) } };
            let out = wf.apply(input, turn + 1).expect("turn");
            pending.push((wf.id().clone(), out));
            if pending.len() >= group {
                let commits: Vec<Commit> = pending
                    .iter()
                    .map(|(id, o)| Commit { workflow: id, output: o, request_id: None, epoch: None })
                    .collect();
                store.commit(&commits).expect("commit");
                total += pending.len() as u64;
                pending.clear();
            }
        }
    }
    let commits: Vec<Commit> =
        pending.iter().map(|(id, o)| Commit { workflow: id, output: o, request_id: None, epoch: None }).collect();
    store.commit(&commits).expect("commit");
    total += pending.len() as u64;
    let s = t.elapsed().as_secs_f64();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Figure {
        case: format!("durable turns, {workflows} workflows, {group} turn(s) per flush"),
        seconds: s,
        count: total,
        unit: "turns",
        extra: vec![],
    }
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("stoa-bench-{}-{}", std::process::id(), rss()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Peak resident set of this process, in MiB (Linux; 0 elsewhere).
fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn program(dir: &str, facts: &Path) -> anyhow::Result<Figure> {
    let src = PackSource::read_dir(Path::new(dir)).with_context(|| format!("{dir}: run from the repository root"))?;
    let (p, d) = compile(&src);
    let p = Arc::new(p.ok_or_else(|| anyhow::anyhow!("{dir}: {}", d[0]))?);
    let facts: Vec<FactSpec> = serde_json::from_str(&std::fs::read_to_string(facts)?)?;
    let mut wf = Workflow::new(WorkflowId::new("bench"), p, 0);
    let t = Instant::now();
    let out = wf.apply(Input::Start { facts }, 1).map_err(|e| anyhow::anyhow!("{e}"))?;
    let s = t.elapsed().as_secs_f64();
    anyhow::ensure!(out.error.is_none(), "{dir}: {:?}", out.error);
    Ok(Figure { case: dir.into(), seconds: s, count: out.firings, unit: "firings", extra: vec![] })
}

/// One case in this process; prints a JSON line.
pub fn run_case(args: CaseArgs) -> anyhow::Result<std::process::ExitCode> {
    let c = args.case.as_str();
    let fig = if let Some(n) = c.strip_prefix("manners") {
        program("bench/manners", Path::new(&format!("bench/manners/data/manners{n}.json")))?
    } else if let Some(n) = c.strip_prefix("waltz") {
        program("bench/waltz", Path::new(&format!("bench/waltz/data/waltz{n}.json")))?
    } else {
        match c {
            "throughput" => throughput(100_000),
            "insert-100k" => insert_scale(100_000),
            "insert-1m" => insert_scale(1_000_000),
            "durable-single" => durable_turns(100, 20, 1),
            "durable-grouped" => durable_turns(1000, 20, 256),
            other => anyhow::bail!("unknown case {other}"),
        }
    };
    let mut obj = serde_json::json!({"seconds": fig.seconds, "count": fig.count, "unit": fig.unit, "rss_mib": peak_rss_mib(), "description": fig.case});
    for (k, v) in fig.extra {
        obj[k] = v;
    }
    println!("{obj}");
    Ok(std::process::ExitCode::SUCCESS)
}

struct Case {
    name: &'static str,
    /// Arguments of bench/clips/time.sh and time64.py, if CLIPS runs it.
    clips: Option<(&'static str, String)>,
}

fn cases(data: &Path) -> Vec<Case> {
    let fct = |p: &str, n: u32| data.join(format!("{p}/{p}{n}.fct")).to_string_lossy().into_owned();
    let mut v = Vec::new();
    for (name, n) in [("manners16", 16), ("manners32", 32), ("manners64", 64), ("manners128", 128)] {
        v.push(Case { name, clips: Some(("manners", fct("manners", n))) });
    }
    for (name, n) in [("waltz12", 12), ("waltz25", 25), ("waltz37", 37), ("waltz50", 50)] {
        v.push(Case { name, clips: Some(("waltz", fct("waltz", n))) });
    }
    v.push(Case { name: "throughput", clips: Some(("touch", "100000".into())) });
    v.push(Case { name: "insert-100k", clips: Some(("insert", "100000".into())) });
    v.push(Case { name: "insert-1m", clips: Some(("insert", "1000000".into())) });
    v.push(Case { name: "durable-single", clips: None });
    v.push(Case { name: "durable-grouped", clips: None });
    v
}

/// Runs a command, under GNU time for its peak memory when available;
/// returns (stdout, peak RSS MiB).
fn measured(cmd: Command) -> anyhow::Result<(String, Option<f64>)> {
    let gnu_time = Path::new("/usr/bin/time");
    let mut c = if gnu_time.exists() {
        let mut t = Command::new(gnu_time);
        t.args(["-f", "STOA-RSS %M"]).arg(cmd.get_program()).args(cmd.get_args());
        if let Some(d) = cmd.get_current_dir() {
            t.current_dir(d);
        }
        t
    } else {
        cmd
    };
    let out = c.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success(), "{:?} failed: {stderr}", c.get_program());
    let rss = stderr
        .lines()
        .find_map(|l| l.strip_prefix("STOA-RSS "))
        .and_then(|k| k.trim().parse::<f64>().ok())
        .map(|k| k / 1024.0);
    Ok((stdout, rss))
}

/// Seconds and firings from a peer's output.
fn parse_peer(out: &str) -> Option<(f64, Option<u64>)> {
    let secs = out.lines().find_map(|l| l.strip_prefix("STOA-BENCH "))?;
    let mut parts = secs.split_whitespace();
    let s: f64 = parts.next()?.parse().ok()?;
    let fired = parts.next().and_then(|n| n.parse().ok()).or_else(|| {
        out.lines().find_map(|l| l.trim().strip_suffix(" rules fired").and_then(|n| n.trim().parse().ok()))
    });
    Some((s, fired))
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

struct Peer {
    name: &'static str,
    command: fn(&str, &str) -> Command,
}

fn peers(args: &Args) -> anyhow::Result<Vec<Peer>> {
    let mut v = Vec::new();
    if args.no_peers {
        return Ok(v);
    }
    // Look clips up on PATH rather than running it: without a batch file it
    // waits for input forever.
    let on_path =
        std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("clips").is_file()));
    if on_path {
        v.push(Peer {
            name: "clips-6.30",
            command: |kind, arg| {
                let mut c = Command::new("bench/clips/time.sh");
                c.args([kind, arg]);
                c
            },
        });
    } else {
        eprintln!("note: `clips` (CLIPS 6.30) not found; apt-get install clips to compare with it");
    }
    let venv = Path::new("bench/.venv-clips");
    if !venv.exists() && args.setup_clipspy {
        eprintln!("creating {} with clipspy (CLIPS 6.4) from PyPI", venv.display());
        let ok = Command::new("python3").args(["-m", "venv"]).arg(venv).status()?.success()
            && Command::new(venv.join("bin/pip")).args(["install", "-q", "clipspy"]).status()?.success();
        anyhow::ensure!(ok, "could not set up clipspy");
    }
    if venv.join("bin/python").exists() {
        v.push(Peer {
            name: "clips-6.4",
            command: |kind, arg| {
                let mut c = Command::new("bench/.venv-clips/bin/python");
                c.args(["bench/clips/time64.py", kind, arg]);
                c
            },
        });
    } else {
        eprintln!("note: CLIPS 6.4 (clipspy) not set up; add --setup-clipspy to compare with it");
    }
    Ok(v)
}

pub fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(Path::new("bench/manners").is_dir(), "run `stoa bench engine` from the repository root");
    let me = std::env::current_exe()?;
    let peers = peers(&args)?;
    let runs = args.runs.max(1);
    if !args.json {
        println!(
            "{:<16} {:>10} {:>10} {:<11} {:>10} {:>8} {:>10} {:>10}",
            "case", "firings", "stoa s", "peer", "peer s", "ratio", "stoa MiB", "peer MiB"
        );
    }
    for case in cases(&args.data) {
        if args.only.as_deref().is_some_and(|o| !case.name.contains(o)) {
            continue;
        }
        let mut stoa_s = Vec::new();
        let mut stoa_rss = 0.0f64;
        let mut count = 0;
        let mut desc = serde_json::Value::Null;
        let mut peer_s: Vec<Vec<f64>> = vec![Vec::new(); peers.len()];
        let mut peer_rss: Vec<Option<f64>> = vec![None; peers.len()];
        let mut peer_fired: Vec<Option<u64>> = vec![None; peers.len()];
        for _ in 0..runs {
            let mut c = Command::new(&me);
            c.args(["bench", "case", case.name]);
            let (out, _) = measured(c)?;
            let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or_default())
                .with_context(|| format!("case {}: {out}", case.name))?;
            stoa_s.push(v["seconds"].as_f64().unwrap_or(0.0));
            stoa_rss = stoa_rss.max(v["rss_mib"].as_f64().unwrap_or(0.0));
            count = v["count"].as_u64().unwrap_or(0);
            desc = v.clone();
            if let Some((kind, arg)) = &case.clips {
                for (i, p) in peers.iter().enumerate() {
                    let (out, rss) = measured((p.command)(kind, arg))?;
                    let (s, fired) = parse_peer(&out).with_context(|| format!("{} on {}: {out}", p.name, case.name))?;
                    peer_s[i].push(s);
                    peer_rss[i] = rss.or(peer_rss[i]);
                    peer_fired[i] = fired.or(peer_fired[i]);
                }
            }
        }
        let stoa_med = median(&mut stoa_s);
        let mut rows = Vec::new();
        for (i, p) in peers.iter().enumerate() {
            if peer_s[i].is_empty() {
                continue;
            }
            let s = median(&mut peer_s[i]);
            rows.push((p.name, Some(s), peer_rss[i], peer_fired[i]));
        }
        if rows.is_empty() {
            rows.push(("-", None, None, None));
        }
        for (peer, s, rss, fired) in rows {
            let ratio = s.map(|s| stoa_med / s.max(1e-9));
            if args.json {
                let mut obj = serde_json::json!({
                    "case": case.name, "stoa_s": stoa_med, "peer": peer, "peer_s": s, "ratio": ratio,
                    "firings": count, "peer_firings": fired, "stoa_rss_mib": stoa_rss, "peer_rss_mib": rss,
                    "runs": runs, "unit": desc["unit"],
                });
                for k in ["bytes_per_fact", "description"] {
                    if !desc[k].is_null() {
                        obj[k] = desc[k].clone();
                    }
                }
                println!("{obj}");
            } else {
                let f = |x: Option<f64>, p: usize| x.map(|x| format!("{x:.p$}")).unwrap_or_else(|| "-".into());
                println!(
                    "{:<16} {:>10} {:>10.3} {:<11} {:>10} {:>8} {:>10.1} {:>10}",
                    case.name,
                    count,
                    stoa_med,
                    peer,
                    f(s, 3),
                    f(ratio, 2),
                    stoa_rss,
                    f(rss, 1)
                );
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
