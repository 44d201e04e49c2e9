//! `stoa bench explain`: how long `explain` takes on a workflow of many
//! facts, per kind of answer (a constraint failing on every fact, a join
//! dying after 100,000 partial matches, a `not` blocked, complete matches
//! already fired, a fact's derivation). The workflow is built first and not
//! timed; each figure covers reading its timeline and explaining.

use std::process::ExitCode;
use std::time::Instant;

use stoa_engine::explain::{self, History, Subject};
use stoa_engine::workflow::{Input, Workflow};
use stoa_engine::WorkflowId;
use stoa_rules::testcase::FactSpec;
use stoa_rules::{Fields, Sym, Value};

#[derive(clap::Args)]
pub struct Args {
    /// Chunk facts in the workflow (one Job besides).
    #[arg(long, default_value_t = 100_000)]
    facts: u64,
    /// Runs of each explanation; the median is printed.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

const RULES: &str = r#"
rule "encode chunk" {
    match { job: Job(status == "encoding") chunk: Chunk(job == job.source, status == "pending") }
    action { modify(chunk, #{ status: "encoding" }); }
}
rule "assign owner" {
    match { chunk: Chunk(status == "encoding") owner: Owner(id == chunk.owner) }
    action { log("owned"); }
}
rule "no failures" {
    match { job: Job() not Chunk(job == job.source, index == 7) }
    action { log("none failed"); }
}
rule "mark" {
    match { chunk: Chunk(index < 1000) }
    action { modify(chunk, #{ marked: true }); }
}
"#;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let pack = crate::bench::pack(RULES);
    let field = |pairs: &[(&str, Value)]| pairs.iter().map(|(k, v)| (Sym::new(k), v.clone())).collect::<Fields>();
    let mut facts = vec![FactSpec {
        ty: "Job".into(),
        fields: field(&[("source", Value::Str("s3://in".into())), ("status", Value::Str("encoding".into()))]),
    }];
    facts.extend((0..args.facts).map(|i| FactSpec {
        ty: "Chunk".into(),
        fields: field(&[
            ("job", Value::Str("s3://in".into())),
            ("index", Value::Int(i as i64)),
            ("status", Value::Str("pending".into())),
            ("owner", Value::Int(i as i64 % 97)),
        ]),
    }));
    let built = Instant::now();
    let mut wf = Workflow::new(WorkflowId::new("bench-explain"), pack, 0);
    let out = wf.apply(Input::Start { facts }, 1).map_err(|e| anyhow::anyhow!("start: {e}"))?;
    anyhow::ensure!(wf.meta().reason.is_none(), "the start turn failed: {:?}", wf.meta().reason);
    let timeline = out.entries;
    println!(
        "workflow of {} facts and {} timeline entries built in {:.1} s",
        wf.fact_count(),
        timeline.len(),
        built.elapsed().as_secs_f64()
    );
    let snap = wf.snapshot();
    let subject = Subject::of_snapshot(wf.pack(), &snap);
    let cases = [
        ("a constraint fails on every fact", Some("encode chunk")),
        ("a join dies after every partial match", Some("assign owner")),
        ("a not is blocked", Some("no failures")),
        ("1,000 matches already fired", Some("mark")),
        ("a fact's derivation", None),
    ];
    // One explanation, from the timeline as a store would hand it over.
    let explain_once = |rule: Option<&str>| -> String {
        let history = History::of(timeline.iter(), rule);
        match rule {
            Some(r) => explain::rule_text(&explain::rule(&subject, &history, r).expect("rule")),
            None => explain::fact_text(&explain::fact(&subject, &history, 2).expect("fact")),
        }
    };
    println!("explain on a workflow of {} facts (median of {} runs)", args.facts + 1, args.runs);
    for (label, rule) in cases {
        let mut times: Vec<f64> = (0..args.runs.max(1))
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(explain_once(rule));
                t.elapsed().as_secs_f64()
            })
            .collect();
        let m = crate::bench::median(&mut times);
        println!("  {label:<40} {:>8.1} ms", m * 1000.0);
    }
    Ok(ExitCode::SUCCESS)
}
