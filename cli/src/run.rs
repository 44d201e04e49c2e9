//! `stoa run`: one workflow in-process, with mocks, optionally stored.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use stoa_engine::dispatch::{Dispatcher, MockDispatcher};
use stoa_engine::local::Local;
use stoa_engine::store::{SledStore, Store};
use stoa_engine::workflow::{Input, Status};
use stoa_engine::WorkflowId;
use stoa_rules::testcase::{FactSpec, Mock, SignalSpec, Step};

#[derive(clap::Args)]
pub struct Args {
    /// The pack directory.
    pack: PathBuf,
    /// Initial facts: a JSON array of `{"type": "T", "fields": {...}}`, or a
    /// TOML file of `[[fact]]` tables with `type` and `fields`. When resuming,
    /// these facts are asserted into the workflow.
    #[arg(long)]
    facts: Option<PathBuf>,
    /// Function mocks: a TOML file of `[[mock]]` tables, in the format of test
    /// files. Calls no mock answers fail (and run the rule's `error` section).
    #[arg(long)]
    mocks: Option<PathBuf>,
    /// Store the workflow in this directory (sled), so it can be resumed.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Workflow id: 1 to 128 letters, digits, `-`, `_` or `.`; `wf_` is
    /// put in front unless it starts with it (`order-7` is `wf_order-7`).
    /// With --data and an existing id, the workflow is resumed: its pending
    /// invocations are answered again by the mocks. Default: run-<pid>.
    #[arg(long)]
    id: Option<String>,
    /// Print timeline entries as JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// Stay until no timer or mock answer (`after = "..."`) is pending,
    /// each turn when it comes due (in real time). Without it, the run ends
    /// when no answer is ready to feed back, and what is pending is listed.
    #[arg(long)]
    wait_timers: bool,
    /// After the start: the steps of this TOML file of `[[step]]` tables,
    /// in order, with the keys of test steps (`advance`, `assert`, `modify`,
    /// `retract`, `signal`, `cancel`). With any step (this, --signal or
    /// --advance), the run's clock is virtual from the start on: it moves
    /// only by `advance`, so a 15-minute timer fires at once.
    #[arg(long, value_name = "FILE")]
    steps: Option<PathBuf>,
    /// Send a signal after the --steps: `NAME` or `NAME=JSON` (the
    /// payload). May be given several times; sent in order.
    #[arg(long, value_name = "NAME[=JSON]")]
    signal: Vec<String>,
    /// Last, move the virtual clock by this much (e.g. `15m`): due timers
    /// fire and due mock answers arrive, in time order.
    #[arg(long, value_name = "DURATION")]
    advance: Option<humantime::Duration>,
    /// At the end, explain this rule: its firings, and why it matches or
    /// not (as `stoa explain`). May be given several times.
    #[arg(long, value_name = "RULE")]
    explain: Vec<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FactsToml {
    #[serde(default)]
    fact: Vec<FactSpec>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StepsToml {
    #[serde(default)]
    step: Vec<Step>,
}

/// The steps `--steps`, `--signal` and `--advance` ask for, in that order.
fn scripted_steps(args: &Args) -> anyhow::Result<Vec<Step>> {
    let mut steps = match &args.steps {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let steps = toml::from_str::<StepsToml>(&text).map_err(|e| toml_error(p, &text, &e))?.step;
            for (n, d) in steps.iter().enumerate().filter_map(|(n, s)| s.advance.as_ref().map(|d| (n, d))) {
                if let Err(e) = humantime::parse_duration(d.get_ref()) {
                    anyhow::bail!(
                        "{}: step {}: `advance = \"{}\"` is not a duration ({e})",
                        p.display(),
                        n + 1,
                        d.get_ref()
                    );
                }
            }
            steps
        }
        None => Vec::new(),
    };
    for s in &args.signal {
        let (name, payload) = match s.split_once('=') {
            Some((name, json)) => {
                let v: serde_json::Value =
                    serde_json::from_str(json).with_context(|| format!("--signal {name}: the payload is not JSON"))?;
                (name, stoa_rules::Value::from_json(&v))
            }
            None => (s.as_str(), stoa_rules::Value::Null),
        };
        anyhow::ensure!(!name.trim().is_empty(), "--signal `{s}`: a signal needs a name");
        let signal = SignalSpec { name: name.to_string(), id: None, payload };
        steps.push(Step { signal: Some(signal), ..Step::default() });
    }
    if let Some(d) = &args.advance {
        steps.push(Step { advance: Some(toml::Spanned::new(0..0, d.to_string())), ..Step::default() });
    }
    Ok(steps)
}

/// A TOML error with its place, as `file:line:col: message`.
fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
    anyhow::anyhow!("{}:{line}:{col}: {}", path.display(), e.message().trim())
}

fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MocksToml {
    #[serde(default)]
    mock: Vec<Mock>,
}

pub fn read_facts(path: &Path) -> anyhow::Result<Vec<FactSpec>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "toml") {
        let f: FactsToml = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e))?;
        Ok(f.fact)
    } else {
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}:{}:{}: {}", path.display(), e.line(), e.column(), e))
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let pack = crate::pack::load_ok(&args.pack)?;
    let facts = match &args.facts {
        Some(p) => read_facts(p)?,
        None => Vec::new(),
    };
    let mocks = match &args.mocks {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str::<MocksToml>(&text).map_err(|e| anyhow::anyhow!("{}: {}", p.display(), e))?.mock
        }
        None => Vec::new(),
    };
    if let Some(e) = mocks.iter().find_map(|m| m.check().err()) {
        anyhow::bail!("{}: {e}", args.mocks.as_deref().unwrap_or(Path::new("--mocks")).display());
    }
    let steps = scripted_steps(&args)?;
    let mut dispatcher = MockDispatcher::new(&mocks);
    let store = match &args.data {
        Some(d) => Some(SledStore::open(d, 64).with_context(|| format!("opening store {}", d.display()))?),
        None => None,
    };
    let id = match &args.id {
        Some(i) => WorkflowId::parse(i).map_err(anyhow::Error::msg)?,
        None => WorkflowId::new(format!("run-{}", std::process::id())),
    };
    let store_ref: Option<&dyn Store> = store.as_ref().map(|s| s as &dyn Store);
    let existing = match store_ref {
        Some(s) => s.load(&id)?.is_some(),
        None => false,
    };
    let json = args.json;
    let print = move |entries: &[stoa_engine::timeline::Entry]| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for e in entries {
            let line = if json { serde_json::to_string(e).expect("entries serialize") } else { e.line() };
            // A closed pipe (e.g. `| head`) ends the output, not the run.
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    };
    let mut local = if existing {
        let s = store_ref.expect("existing implies a store");
        let mut l = Local::resume(pack, id.clone(), s, &mut dispatcher)?;
        eprintln!(
            "resumed {id}: {} fact(s), {} waiting invocation(s)",
            l.workflow.fact_count(),
            l.workflow.waiting().count()
        );
        if !facts.is_empty() {
            let out = l.apply(Input::Assert { facts }, &mut dispatcher)?;
            print(&out.entries);
        }
        l
    } else {
        if args.facts.is_none() {
            anyhow::bail!("--facts is required to start a workflow");
        }
        let l = Local::start(pack, id.clone(), facts, store_ref, false, &mut dispatcher)?;
        print(&l.timeline);
        l
    };
    // Entries are printed as each turn commits: a `commit` line means the
    // turn is durable (with --data).
    local.drive(&mut dispatcher, &mut |out| print(&out.entries))?;
    if !steps.is_empty() {
        local.use_virtual_time();
        for (n, step) in steps.iter().enumerate() {
            let printed = local.timeline.len();
            stoa_engine::harness::run_step(&mut local, n, step, &mut dispatcher)?;
            print(&local.timeline[printed..]);
        }
    }
    while args.wait_timers && local.workflow.status() == Status::Running {
        let next = [local.next_timer().map(|t| t.1), dispatcher.next_due()].into_iter().flatten().min();
        let Some(due) = next else { break };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
        local.advance(due.saturating_sub(now), &mut dispatcher, &mut |out| print(&out.entries))?;
    }
    let meta = local.workflow.meta();
    let extra = match meta.status {
        Status::Completed => format!(" result {}", meta.result),
        Status::Failed | Status::Cancelled => format!(": {}", meta.reason.clone().unwrap_or_default()),
        Status::Running => {
            let timers = match local.next_timer() {
                Some((_, due)) => format!(
                    ", {} timer(s) pending (next due at {due} ms; --wait-timers waits for them)",
                    local.workflow.timers().count()
                ),
                None => String::new(),
            };
            format!(", {} invocation(s) waiting{timers}", local.workflow.waiting().count())
        }
    };
    {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "workflow {id} {}{extra}", meta.status.as_str());
    }
    for (f, a) in &dispatcher.unmocked {
        eprintln!("warning: no mock answered `{f}` with args {a}");
    }
    for rule in &args.explain {
        // A resumed run's own timeline starts at the resume: read it all.
        let timeline = match store_ref {
            Some(s) => s.timeline(&id, 1, usize::MAX)?,
            None => local.timeline.clone(),
        };
        let history = stoa_engine::explain::History::of(&timeline, Some(rule));
        let subject = stoa_engine::explain::Subject::of_workflow(&local.workflow);
        let e = stoa_engine::explain::rule(&subject, &history, rule)?;
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "\n{}", stoa_engine::explain::rule_text(&e).trim_end());
    }
    Ok(if meta.status == Status::Failed { ExitCode::from(crate::exit::WORKFLOW_FAILED) } else { ExitCode::SUCCESS })
}
