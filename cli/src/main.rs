//! `stoa`: check, test and run rule packs.

mod bench;
mod bench_always_on;
mod bench_collector;
mod bench_console;
mod bench_dag;
mod bench_e2e;
mod bench_explain;
mod bench_safety;
mod bench_schedules;
mod change;
mod dag;
mod dag_ops;
mod describe;
mod exit;
mod explain;
mod init;
mod pack;
mod remote;
mod run;
mod schedule;
mod serve;
mod test;
mod when;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Matching allocates and frees many small, short-lived objects (tokens,
// keys, values); mimalloc is much better at that than glibc's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "stoa",
    version,
    about = "Stoa: workflows as packs of forward-chaining rules",
    long_about = None,
    after_help = exit::HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a new pack: a directory with pack.toml (a fact schema and a
    /// function), a rule that calls the function, and a test with a mock;
    /// it passes `stoa check` and `stoa test` as it is.
    ///
    /// Example: stoa init orders && stoa test orders
    Init(init::Args),
    /// Check a pack without running it: syntax of every file, undefined
    /// variables, unknown functions, calls to undeclared functions, rules
    /// and test data against the fact schemas. Prints every problem as
    /// `path:line:col: error[CODE]: message`; exits 3 if there is an error.
    ///
    /// Example: stoa check examples/packs/video-encode
    Check {
        /// The pack directory (holding pack.toml).
        pack: PathBuf,
    },
    /// Run the pack's test cases (tests/*.toml) in-process with mocked
    /// functions on virtual time. Ends with `N passed, N failed` and lists
    /// the rules no test fired; a failed test that expected a rule to fire
    /// shows why it did not (as `stoa explain`). Exits 3 if any test failed
    /// or coverage is below the pack's `[tests] min_coverage`.
    ///
    /// Example: stoa test examples/packs/video-encode --coverage
    Test(test::Args),
    /// Run one workflow in-process with mocked functions and print its
    /// timeline. With --data it is stored and can be resumed with --id.
    /// Exits 4 if the workflow failed.
    ///
    /// Example: stoa run examples/packs/video-encode --facts examples/packs/video-encode/facts.json --mocks examples/packs/video-encode/mocks.toml
    Run(run::Args),
    /// Why a rule of a workflow fired, or why it does not fire now; or,
    /// with --fact, where a fact came from. Reads the workflow's committed
    /// state and timeline, and changes nothing (docs/rules.md, "Explain").
    ///
    /// Example: stoa explain wf_acme.1a2b "encode chunk"
    Explain(explain::Args),
    /// Benchmarks (for developers of Stoa; not listed in `stoa --help`).
    /// `stoa bench engine` prints the engine's figures (firings per second,
    /// insert cost and bytes per fact, durable turns per second); timers
    /// cover the turns, not process start.
    ///
    /// Example: stoa bench engine --quick
    #[command(subcommand, hide = true)]
    Bench(BenchCommand),
    /// Run the server: multi-tenant gRPC API, function dispatcher, embedded
    /// store (./stoa-data unless --data, --store or the config file say
    /// otherwise). Stops gracefully on SIGINT/SIGTERM.
    ///
    /// Logs go to stderr at `info`: workflows started and ended, workers
    /// connected and gone, deploys and rollouts. STOA_LOG sets the level or
    /// an env_filter expression (`STOA_LOG=debug`,
    /// `STOA_LOG=info,stoa_server::dispatcher=debug`); h2, hyper, tower,
    /// sled and tokio_postgres stay at `warn` unless it names them.
    ///
    /// Example: stoa serve --listen 127.0.0.1:7233 --token acme=s3cret --data ./stoa-data
    Serve(serve::Args),
    #[command(flatten)]
    Remote(remote::Command),
    /// Cron schedules of your tenant: each tick starts one workflow of a
    /// pack with the schedule's facts, exactly once even across server
    /// restarts. A pack can define them too (`[schedules.NAME]` in
    /// pack.toml; see docs/schedules.md).
    ///
    /// Example: stoa schedule ls
    #[command(subcommand)]
    Schedule(schedule::Command),
    /// DAG definitions (workflow.yaml): check them, compile them to packs
    /// (docs/dags.md).
    ///
    /// Example: stoa dag check examples/dags/etl
    #[command(subcommand)]
    Dag(dag::Command),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The engine side by side with CLIPS 6.30 and 6.4: Miss Manners, Waltz,
    /// throughput, insert scale; and durable turns (run from the repository
    /// root).
    Engine(bench::Args),
    /// How long `explain` takes on a workflow of 100,000 facts, per kind
    /// of answer (in this process).
    Explain(bench_explain::Args),
    /// The web console's server time per page with 100,000 workflows
    /// stored (the list: first page, filtered pages, a deep page) and on a
    /// workflow of 20,000 timeline entries (a server process over loopback).
    Console(bench_console::Args),
    /// One run of one engine case, in this process (used by `bench engine`).
    #[command(hide = true)]
    Case(bench::CaseArgs),
    /// The platform end to end: a server process, worker processes and
    /// this client over loopback gRPC (run from the repository root).
    E2e(bench_e2e::Args),
    /// Always-on workflows: upgrading 10,000 live workflows, and the delay
    /// of 100,000 timers due at once (a server process over loopback).
    AlwaysOn(bench_always_on::Args),
    /// The delay the scheduler adds to cron ticks: many schedules due at
    /// the same instant, a server process, p50/p99/max of start time minus
    /// due time (run from the repository root).
    Schedules(bench_schedules::Args),
    /// DAG definitions on a server process: a foreach of 100,000 noop
    /// iterations 1,000 at a time, a nested foreach of 300 x 300, and a
    /// 1,000-step DAG against the same steps written as rules (run from
    /// the repository root, after `cargo build --release --workspace`).
    Dag(bench_dag::Args),
    /// What the server's limits protect: the RSS of 100,000 live
    /// workflows, RSS drift under 50 clients for a minute, a 50,000-rule
    /// pack's deploy, first start and upgrade beside another tenant's
    /// latency (run from the repository root).
    Safety(bench_safety::Args),
    /// An hour at half the capacity a short probe measures, with the
    /// server's RSS drift and the disk its store took (run from the
    /// repository root). The server keeps finished workflows a minute
    /// (`--retain-finished-s`); the store in the temp directory is removed
    /// at the end.
    Soak(bench_safety::SoakArgs),
}

fn main() -> ExitCode {
    // With transparent huge pages, mimalloc's arenas keep whole 2 MiB pages
    // resident for a few live objects, and the kernel zeroes 2 MiB at each
    // first touch. Measured with `stoa bench e2e`, same binary, THP on then
    // off: peak RSS over the 100,000-invocation run 196-220 -> 153-162 MiB,
    // fan-out of 10,000 alone 230 -> 175-183 MiB, with the same throughput
    // and hop latency. `stoa bench case waltz50` / `manners128`: 57 -> 45
    // and 58 -> 33 MiB, same median time, no slow outliers. A kernel
    // without the flag just keeps them.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let cli = Cli::parse();
    // Rust ignores SIGPIPE, so `println!` to a closed pipe (`stoa ls --json
    // | head -2`) panics. Commands that print for a reader get the Unix
    // default back: they end quietly when the reader goes. Not the server
    // nor the benchmarks: they must outlive a reader of their output.
    if !matches!(cli.command, Command::Serve(_) | Command::Bench(_)) {
        sigpipe::reset();
    }
    // `stoa serve` sets up its own once it has read its config (the log
    // format may be there); the other commands log warnings and errors.
    let telemetry = (!matches!(cli.command, Command::Serve(_))).then(|| {
        stoa_telemetry::init(stoa_telemetry::Options {
            service: "stoa-cli",
            filter_var: "STOA_LOG",
            default_filter: "warn",
            format: stoa_telemetry::LogFormat::Text,
        })
    });
    let result = match cli.command {
        Command::Init(args) => init::run(args),
        Command::Check { pack } => check(&pack),
        Command::Test(args) => test::run(args),
        Command::Run(args) => run::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Bench(BenchCommand::Engine(args)) => bench::run(args),
        Command::Bench(BenchCommand::E2e(args)) => bench_e2e::run(args),
        Command::Bench(BenchCommand::AlwaysOn(args)) => bench_always_on::run(args),
        Command::Bench(BenchCommand::Case(args)) => bench::run_case(args),
        Command::Bench(BenchCommand::Explain(args)) => bench_explain::run(args),
        Command::Bench(BenchCommand::Console(args)) => bench_console::run(args),
        Command::Bench(BenchCommand::Schedules(args)) => bench_schedules::run(args),
        Command::Bench(BenchCommand::Dag(args)) => bench_dag::run(args),
        Command::Bench(BenchCommand::Safety(args)) => bench_safety::run(args),
        Command::Bench(BenchCommand::Soak(args)) => bench_safety::soak(args),
        Command::Serve(args) => serve::run(args),
        Command::Remote(cmd) => remote::run(cmd),
        Command::Schedule(cmd) => schedule::run(cmd),
        Command::Dag(cmd) => dag::run(cmd),
    };
    // Exports the command's span before the process ends.
    drop(telemetry);
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::code_of(&e)
        }
    }
}

fn check(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let (pack, diags) = pack::load(dir)?;
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    match pack {
        Some(p) => {
            println!(
                "{} {}: {} rule(s), {} test(s), {} warning(s), no errors",
                p.manifest.name,
                p.manifest.version,
                p.rules.len(),
                p.tests.len(),
                warnings
            );
            Ok(ExitCode::SUCCESS)
        }
        None => {
            println!("{}: {errors} error(s), {warnings} warning(s)", dir.display());
            Ok(ExitCode::from(exit::CHECK_FAILED))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    /// Every command a user sees has an example, and every argument a
    /// description; benchmarks are not in the list.
    #[test]
    fn every_command_explains_itself() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
                let path = format!("{path} {}", sub.get_name());
                let long = sub.get_long_about().or(sub.get_about()).map(|a| a.to_string()).unwrap_or_default();
                if sub.get_subcommands().next().is_none() {
                    if !long.contains("Example: stoa ") {
                        missing.push(format!("{path}: no `Example: stoa …`"));
                    }
                    for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                        if arg.get_help().is_none() && arg.get_long_help().is_none() && arg.get_id() != "help" {
                            missing.push(format!("{path}: argument {} has no description", arg.get_id()));
                        }
                    }
                }
                walk(sub, &path, missing);
            }
        }
        let cli = super::Cli::command();
        let mut missing = Vec::new();
        walk(&cli, "stoa", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
        let bench = cli.find_subcommand("bench").expect("bench");
        assert!(bench.is_hide_set(), "bench is out of the user commands' list");
        assert!(super::exit::HELP.contains("stoa bench"));
    }
}
