//! `stoa bench engine`: the engine's own figures, printed as a table or as
//! JSON lines. Timers cover the turn only (matching, firing, scripts), not
//! process start or pack compilation.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use stoa_engine::store::{Commit, SledStore, Store};
use stoa_engine::workflow::{Input, Workflow};
use stoa_engine::WorkflowId;
use stoa_rules::compile::{compile, Pack, PackSource};
use stoa_rules::testcase::FactSpec;
use stoa_rules::{Fields, Sym, Value};

#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object per case instead of a table.
    #[arg(long)]
    json: bool,
    /// Run only the cases whose name contains this text.
    #[arg(long)]
    only: Option<String>,
    /// Scale the sizes down (e.g. 0.1) for a quick run.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
}

struct Figure {
    case: String,
    seconds: f64,
    count: u64,
    unit: &'static str,
    extra: Vec<(&'static str, serde_json::Value)>,
}

fn pack(rules: &str) -> Arc<Pack> {
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
                let commits: Vec<Commit> =
                    pending.iter().map(|(id, o)| Commit { workflow: id, output: o, request_id: None }).collect();
                store.commit(&commits).expect("commit");
                total += pending.len() as u64;
                pending.clear();
            }
        }
    }
    let commits: Vec<Commit> =
        pending.iter().map(|(id, o)| Commit { workflow: id, output: o, request_id: None }).collect();
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

pub fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let scale = args.scale;
    let n = move |x: f64| ((x * scale) as u64).max(1);
    type Case = Box<dyn Fn() -> Figure>;
    let cases: Vec<(&str, Case)> = vec![
        ("throughput", Box::new(move || throughput(n(100_000.0)))),
        ("insert-100k", Box::new(move || insert_scale(n(100_000.0)))),
        ("insert-1m", Box::new(move || insert_scale(n(1_000_000.0)))),
        ("durable-single", Box::new(move || durable_turns(n(100.0), 20, 1))),
        ("durable-grouped", Box::new(move || durable_turns(n(1000.0), 20, 256))),
    ];
    if !args.json {
        println!("{:<52} {:>10} {:>12} {:>14}  extra", "case", "seconds", "count", "per second");
    }
    for (name, f) in cases {
        if args.only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let fig = f();
        let rate = fig.count as f64 / fig.seconds.max(1e-9);
        if args.json {
            let mut obj = serde_json::json!({"case": name, "description": fig.case, "stoa_s": fig.seconds, "count": fig.count, "unit": fig.unit, "per_second": rate});
            for (k, v) in &fig.extra {
                obj[*k] = v.clone();
            }
            println!("{obj}");
        } else {
            let extra: Vec<String> = fig.extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "{:<52} {:>10.3} {:>12} {:>10.0} {:<3}  {}",
                fig.case,
                fig.seconds,
                fig.count,
                rate,
                &fig.unit[..3],
                extra.join(" ")
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
