//! `stoa run`: one workflow in-process, with mocks, optionally stored.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use stoa_engine::dispatch::MockDispatcher;
use stoa_engine::local::Local;
use stoa_engine::store::{SledStore, Store};
use stoa_engine::workflow::{Input, Status};
use stoa_engine::WorkflowId;
use stoa_rules::testcase::{FactSpec, Mock};

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
    /// Stay until no timer is pending, firing each when it comes due (in
    /// real time). Without it, the run ends when no answer is left to feed
    /// back, and pending timers are listed.
    #[arg(long)]
    wait_timers: bool,
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
    while args.wait_timers && local.workflow.status() == Status::Running {
        let Some((_, due)) = local.next_timer() else { break };
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
