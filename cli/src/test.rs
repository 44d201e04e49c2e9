//! `stoa test`: runs a pack's test cases and reports like a test runner.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use stoa_engine::coverage::{coverage, Coverage};
use stoa_engine::harness::{run_tests, unfired_rules};

#[derive(clap::Args)]
pub struct Args {
    /// The pack directory (holding pack.toml).
    pack: PathBuf,
    /// Run only the tests whose name contains this text.
    #[arg(long)]
    filter: Option<String>,
    /// Report coverage across the tests: per rule, how often each section
    /// (action, reaction, error) ran, the first condition no partial match
    /// ever passed, the functions never called, and an overall figure
    /// (docs/rules.md, "Coverage"). Always checked against the pack's
    /// `[tests] min_coverage` when it sets one.
    #[arg(long)]
    coverage: bool,
    /// Print the results (and coverage) as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let pack = crate::pack::load_ok(&args.pack)?;
    let filter = args.filter.as_deref();
    let reports = run_tests(&pack, filter);
    let failed: Vec<_> = reports.iter().filter(|r| !r.passed()).collect();
    // Coverage of a filtered run would be of part of the tests: only the
    // whole suite is held to the minimum.
    let min = pack.manifest.tests.min_coverage.filter(|_| filter.is_none());
    let cov = (args.coverage || min.is_some()).then(|| coverage(&pack, &reports));
    let below = match (min, &cov) {
        (Some(min), Some(c)) if c.percent < min => Some(min),
        _ => None,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let tests: Vec<_> = reports
            .iter()
            .map(|r| {
                serde_json::json!({
                    "file": r.file.display().to_string(),
                    "name": r.name,
                    "passed": r.passed(),
                    "failures": r.failures,
                    "explained": r.explained,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "tests": tests,
            "passed": reports.len() - failed.len(),
            "failed": failed.len(),
            "coverage": cov.as_ref().filter(|_| args.coverage),
            "min_coverage": min,
        });
        let _ = writeln!(out, "{doc}");
    } else {
        for r in &reports {
            let file = r.file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            let _ = writeln!(out, "test {file} :: {} ... {}", r.name, if r.passed() { "ok" } else { "FAILED" });
        }
        if !failed.is_empty() {
            let _ = writeln!(out, "\nfailures:");
            for r in &failed {
                let _ = writeln!(out, "\n---- {} ({}) ----", r.name, r.file.display());
                for f in &r.failures {
                    let _ = writeln!(out, "  {f}");
                }
                for e in &r.explained {
                    let _ = writeln!(out, "  why:");
                    for line in e.lines() {
                        let _ = writeln!(out, "    {line}");
                    }
                }
                let _ = writeln!(out, "  timeline:");
                for line in r.timeline_excerpt(40) {
                    let _ = writeln!(out, "    {line}");
                }
            }
            let _ = writeln!(out);
        }
        if filter.is_none() {
            let unfired = unfired_rules(&pack, &reports);
            if !unfired.is_empty() {
                let names: Vec<String> = unfired.iter().map(|n| format!("\"{n}\"")).collect();
                let _ = writeln!(out, "rules no test fired: {}", names.join(", "));
            }
        }
        if let Some(c) = cov.as_ref().filter(|_| args.coverage) {
            let _ = write!(out, "{}", coverage_text(c));
        }
        let _ = writeln!(out, "{} passed, {} failed", reports.len() - failed.len(), failed.len());
    }
    if let (Some(min), Some(c)) = (below, &cov) {
        eprintln!("error: coverage {:.1}% is below the pack's [tests] min_coverage = {min}", c.percent);
    }
    Ok(if failed.is_empty() && below.is_none() { ExitCode::SUCCESS } else { ExitCode::from(crate::exit::CHECK_FAILED) })
}

fn coverage_text(c: &Coverage) -> String {
    let mut s = String::from("\ncoverage:\n");
    let width = c.rules.iter().map(|r| r.rule.chars().count() + 2).max().unwrap_or(0).min(48);
    let cell = |n: Option<u64>| n.map_or("-".to_string(), |n| n.to_string());
    s.push_str(&format!("  {:<width$}  {:>7} {:>8} {:>6}  conditions\n", "rule", "action", "reaction", "error"));
    for r in &c.rules {
        let name = format!("\"{}\"", r.rule);
        let action = if r.action.is_some() { cell(r.action) } else { format!("({})", r.fired) };
        let conds = match &r.never_matched {
            None => format!("{}/{}", r.deepest, r.conditions),
            Some((text, at)) => format!("{}/{}; never matched: {text} ({at})", r.deepest, r.conditions),
        };
        s.push_str(&format!("  {name:<width$}  {action:>7} {:>8} {:>6}  {conds}\n", cell(r.reaction), cell(r.error)));
    }
    let untested: Vec<String> = c
        .rules
        .iter()
        .flat_map(|r| {
            [("reaction", r.reaction), ("error", r.error)]
                .into_iter()
                .filter(|(_, n)| *n == Some(0))
                .map(move |(sec, _)| format!("\"{}\" {sec}", r.rule))
        })
        .collect();
    if !untested.is_empty() {
        s.push_str(&format!("  sections never run: {}\n", untested.join(", ")));
    }
    if !c.functions_never_called.is_empty() {
        s.push_str(&format!("  functions never called: {}\n", c.functions_never_called.join(", ")));
    }
    s.push_str(&format!("  overall: {:.1}% ({} of {} sections and conditions)\n\n", c.percent, c.covered, c.items));
    s
}
