//! `stoa test`: runs a pack's test cases and reports like a test runner.

use std::path::Path;
use std::process::ExitCode;

use stoa_engine::harness::{run_tests, unfired_rules};

pub fn run(dir: &Path, filter: Option<&str>) -> anyhow::Result<ExitCode> {
    let pack = crate::pack::load_ok(dir)?;
    let reports = run_tests(&pack, filter);
    for r in &reports {
        let file = r.file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        println!("test {file} :: {} ... {}", r.name, if r.passed() { "ok" } else { "FAILED" });
    }
    let failed: Vec<_> = reports.iter().filter(|r| !r.passed()).collect();
    if !failed.is_empty() {
        println!("\nfailures:");
        for r in &failed {
            println!("\n---- {} ({}) ----", r.name, r.file.display());
            for f in &r.failures {
                println!("  {f}");
            }
            println!("  timeline:");
            for line in r.timeline_excerpt(40) {
                println!("    {line}");
            }
        }
        println!();
    }
    if filter.is_none() {
        let unfired = unfired_rules(&pack, &reports);
        if !unfired.is_empty() {
            let names: Vec<String> = unfired.iter().map(|n| format!("\"{n}\"")).collect();
            println!("rules no test fired: {}", names.join(", "));
        }
    }
    println!("{} passed, {} failed", reports.len() - failed.len(), failed.len());
    Ok(if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
