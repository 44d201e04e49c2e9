//! `stoa explain`: why a rule of a workflow fired or does not, or where a
//! fact came from; from a server, or from a store `stoa run --data` wrote.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use stoa_engine::explain::{self, FactExplain, History, RuleExplain, Subject};
use stoa_engine::store::{SledStore, Store};
use stoa_engine::WorkflowId;
use stoa_proto::v1 as pb;

use crate::remote::{connect, status_err, Conn};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  stoa explain wf_acme.1a2b \"encode chunk\"\n  stoa explain wf_acme.1a2b --fact f12 --json\n  stoa explain run-1 \"encode chunk\" --data ./runs --pack examples/packs/video-encode"
)]
pub struct Args {
    /// The workflow id.
    workflow: String,
    /// The rule to explain: its firings, and why it matches or not now
    /// (per condition, how many facts pass and how many partial matches
    /// survive; the constraint that stops the closest one, with values).
    #[arg(required_unless_present = "fact", conflicts_with = "fact")]
    rule: Option<String>,
    /// Explain a fact instead (`f12` or `12`): which firing made each of
    /// its versions, back to the inputs.
    #[arg(long, value_name = "FACT")]
    fact: Option<String>,
    /// Read a workflow stored by `stoa run --data DIR` instead of asking a
    /// server (needs --pack).
    #[arg(long, requires = "pack")]
    data: Option<PathBuf>,
    /// The pack directory of the stored workflow (with --data).
    #[arg(long)]
    pack: Option<PathBuf>,
    #[command(flatten)]
    conn: Conn,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let fact = match &args.fact {
        Some(f) => Some(
            f.strip_prefix('f')
                .unwrap_or(f)
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("--fact {f}: a fact id is like f12"))?,
        ),
        None => None,
    };
    let json = match (&args.data, &args.pack) {
        (Some(data), Some(pack)) => local(&args, data, pack, fact)?,
        _ => remote(&args, fact)?,
    };
    let mut out = std::io::stdout().lock();
    let text = if args.conn.json {
        json
    } else if fact.is_some() {
        explain::fact_text(&serde_json::from_str::<FactExplain>(&json)?)
    } else {
        explain::rule_text(&serde_json::from_str::<RuleExplain>(&json)?)
    };
    let _ = writeln!(out, "{}", text.trim_end());
    Ok(ExitCode::SUCCESS)
}

fn remote(args: &Args, fact: Option<u64>) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut c = connect(&args.conn).await?;
        let req = pb::ExplainRequest {
            workflow_id: args.workflow.clone(),
            rule: args.rule.clone().unwrap_or_default(),
            fact: fact.unwrap_or(0),
        };
        Ok(c.explain(req).await.map_err(status_err)?.into_inner().json)
    })
}

fn local(args: &Args, data: &std::path::Path, pack: &std::path::Path, fact: Option<u64>) -> anyhow::Result<String> {
    let pack = crate::pack::load_ok(pack)?;
    let store = SledStore::open(data, 64).with_context(|| format!("opening store {}", data.display()))?;
    let id = WorkflowId::parse(&args.workflow).map_err(anyhow::Error::msg)?;
    let snap = store.load(&id)?.with_context(|| format!("no workflow {id} in {}", data.display()))?;
    if snap.meta.pack != pack.manifest.name {
        anyhow::bail!("{id} runs pack {}, not {}", snap.meta.pack, pack.manifest.name);
    }
    let mut history = History::new(args.rule.as_deref());
    let mut from = 1;
    loop {
        let page = store.timeline(&id, from, 10_000)?;
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        page.iter().for_each(|e| history.push(e));
    }
    let subject = Subject::of_snapshot(&pack, &snap);
    Ok(match (fact, &args.rule) {
        (Some(f), _) => serde_json::to_string(&explain::fact(&subject, &history, f)?)?,
        (None, Some(rule)) => serde_json::to_string(&explain::rule(&subject, &history, rule)?)?,
        (None, None) => unreachable!("clap requires a rule or --fact"),
    })
}
