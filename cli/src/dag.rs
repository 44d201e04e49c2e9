//! `stoa dag`: Maestro-style DAG definitions (`workflow.yaml`, see
//! docs/dags.md) checked, and compiled to the rule pack they become.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use stoa_rules::compile::{compile, PackSource};
use stoa_rules::Diagnostic;

#[derive(Subcommand)]
pub enum Command {
    /// Check a definition (a directory holding workflow.yaml, or the file):
    /// its format, step ids, dependencies and cycles, parameter types,
    /// references to parameters and upstream outputs; then the rule pack it
    /// compiles to. Prints every problem as `path:line:col:
    /// error[CODE]: message`; exits 3 if there is an error.
    ///
    /// Example: stoa dag check examples/dags/etl
    Check {
        /// The definition directory, or its workflow.yaml.
        path: PathBuf,
    },
    /// Compile a definition to a rule pack directory (pack.toml,
    /// workflow.rules, and the definition's tests/*.toml), which `stoa
    /// check`, `stoa test`, `stoa run` and `stoa deploy` take (they also take
    /// the definition directory itself). Exits 3 if the definition has an
    /// error, writing nothing.
    ///
    /// Example: stoa dag compile examples/dags/etl --out /tmp/etl-pack
    Compile {
        /// The definition directory, or its workflow.yaml.
        path: PathBuf,
        /// The pack directory to write (created if missing; its pack.toml,
        /// workflow.rules and tests are replaced).
        #[arg(long)]
        out: PathBuf,
    },
    /// Restart a DAG instance as a new instance of its definition, keeping
    /// the outputs of the steps that are done upstream of where it starts
    /// again: by default the steps that did not finish (failed, or never
    /// reached) run again; --from STEP runs that step and what is
    /// downstream of it; --all runs everything with the same parameters.
    /// The new run is linked to this one (`stoa dag runs`); the same
    /// restart asked twice gives the same run. Prints the new run's id.
    ///
    /// Example: stoa dag restart wf_acme.1a2b --from transform
    Restart(crate::dag_ops::RestartArgs),
    /// Show an instance across its restarts: each run (oldest first) with
    /// its status and where it started again, then each step of the last
    /// run with the run that produced its state. Give the newest run's id.
    ///
    /// Example: stoa dag runs wf_acme.9f8e
    Runs(crate::dag_ops::RunsArgs),
}

/// Whether `dir` is a definition directory (workflow.yaml or
/// workflow.json) rather than a pack.
pub fn is_definition(dir: &Path) -> bool {
    stoa_dag::definition_file(dir).is_some() && !dir.join("pack.toml").exists()
}

/// The pack a definition compiles to, shown under `root`; prints the
/// definition's diagnostics to stderr. `None` if it has an error.
pub fn source(path: &Path, root: &Path) -> anyhow::Result<(Option<PackSource>, Vec<Diagnostic>)> {
    let (packs, diags) = sources(path, root)?;
    Ok((packs.and_then(|mut p| p.pop()), diags))
}

/// Every pack a definition compiles to: its foreach bodies' (innermost
/// first), then its own, last; the order to deploy them in.
pub fn sources(path: &Path, root: &Path) -> anyhow::Result<(Option<Vec<PackSource>>, Vec<Diagnostic>)> {
    let src = stoa_dag::Source::read(path).map_err(|d| anyhow::anyhow!("{d}"))?;
    let (packs, diags) = src.compile_all(root);
    for d in &diags {
        eprintln!("{}\n", src.render(d));
    }
    Ok((packs, diags))
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Restart(args) => crate::dag_ops::restart(args),
        Command::Runs(args) => crate::dag_ops::runs(args),
        Command::Check { path } => {
            // The compiled files are shown under a directory that says what
            // they are (they exist only in memory).
            let dir = if path.is_dir() { path.clone() } else { path.parent().unwrap_or(Path::new(".")).to_path_buf() };
            let root = dir.join("(compiled)");
            let (packs, diags) = sources(&path, &root)?;
            let Some(packs) = packs else {
                let errors = diags.iter().filter(|d| d.is_error()).count();
                println!("{}: {errors} error(s), {} warning(s)", path.display(), diags.len() - errors);
                return Ok(ExitCode::from(crate::exit::CHECK_FAILED));
            };
            // The definition is sound; what is left to find is in the rules
            // it became (a condition that is not a valid expression).
            let mut failed = false;
            for pack in &packs {
                let (compiled, rdiags) = compile(pack);
                for d in pack.render(&rdiags) {
                    eprintln!("{d}\n");
                }
                match compiled {
                    Some(p) => println!(
                        "{} {}: compiles to {} rule(s), {} test(s), {} warning(s), no errors",
                        p.manifest.name,
                        p.manifest.version,
                        p.rules.len(),
                        p.tests.len(),
                        diags.len() + rdiags.len()
                    ),
                    None => {
                        let errors = rdiags.iter().filter(|d| d.is_error()).count();
                        println!("{}: {errors} error(s) in the compiled rules", pack.root.display());
                        failed = true;
                    }
                }
            }
            Ok(if failed { ExitCode::from(crate::exit::CHECK_FAILED) } else { ExitCode::SUCCESS })
        }
        Command::Compile { path, out } => {
            let (packs, diags) = sources(&path, &out)?;
            let Some(packs) = packs else {
                let errors = diags.iter().filter(|d| d.is_error()).count();
                println!("{}: {errors} error(s); nothing written", path.display());
                return Ok(ExitCode::from(crate::exit::CHECK_FAILED));
            };
            let mut failed = false;
            for pack in &packs {
                let (compiled, rdiags) = compile(pack);
                for d in pack.render(&rdiags) {
                    eprintln!("{d}\n");
                }
                for (rel, text) in &pack.files {
                    let p = pack.root.join(rel);
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
                    }
                    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
                }
                match compiled {
                    Some(p) => println!(
                        "wrote {}: {} {}, {} rule(s), {} test(s)",
                        pack.root.display(),
                        p.manifest.name,
                        p.manifest.version,
                        p.rules.len(),
                        p.tests.len()
                    ),
                    None => {
                        println!("wrote {}, but its rules do not compile (see above)", pack.root.display());
                        failed = true;
                    }
                }
            }
            Ok(if failed { ExitCode::from(crate::exit::CHECK_FAILED) } else { ExitCode::SUCCESS })
        }
    }
}
