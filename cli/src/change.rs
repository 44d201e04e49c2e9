//! `stoa assert` and `stoa retract`: one turn of a running workflow, and
//! what it did.

use std::path::PathBuf;
use std::process::ExitCode;

use stoa_proto::v1 as pb;

use crate::remote::{facts_in, print_json, status_err, Client, Conn};

#[derive(clap::Args)]
pub struct AssertArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// The workflow id.
    pub workflow: String,
    /// The facts: a file (a JSON array of {"type", "fields"}, or TOML
    /// [[fact]] tables), or that JSON inline (one object is one fact).
    #[arg(long, value_name = "FILE|JSON")]
    pub facts: PathBuf,
}

#[derive(clap::Args)]
pub struct RetractArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// The workflow id.
    pub workflow: String,
    /// Ids of the facts to retract (`f12` or `12`), as `stoa get` shows them.
    #[arg(required = true, value_name = "FACT", value_parser = fact_id)]
    pub facts: Vec<u64>,
}

/// `f12` or `12`.
pub fn fact_id(s: &str) -> Result<u64, String> {
    s.strip_prefix('f').unwrap_or(s).parse().map_err(|_| format!("`{s}` is not a fact id (f12 or 12)"))
}

pub async fn assert(c: &mut Client, args: AssertArgs, json: bool) -> anyhow::Result<ExitCode> {
    let facts = facts_in(&args.facts)?;
    let before = seq(c, &args.workflow).await?;
    let r = c
        .assert_facts(pb::AssertFactsRequest { workflow_id: args.workflow.clone(), facts })
        .await
        .map_err(status_err)?
        .into_inner();
    report(c, &args.workflow, before, r, json).await
}

pub async fn retract(c: &mut Client, args: RetractArgs, json: bool) -> anyhow::Result<ExitCode> {
    let before = seq(c, &args.workflow).await?;
    let r = c
        .retract_facts(pb::RetractFactsRequest { workflow_id: args.workflow.clone(), fact_ids: args.facts })
        .await
        .map_err(status_err)?
        .into_inner();
    report(c, &args.workflow, before, r, json).await
}

/// The workflow's timeline length before the turn: its entries come after.
async fn seq(c: &mut Client, workflow: &str) -> anyhow::Result<u64> {
    let w = c
        .get_workflow(pb::GetWorkflowRequest { workflow_id: workflow.to_string(), without_facts: true })
        .await
        .map_err(status_err)?
        .into_inner();
    Ok(w.timeline_seq)
}

/// The turn's result and its timeline entries (of that turn only: others
/// may have committed meanwhile).
async fn report(
    c: &mut Client,
    workflow: &str,
    before: u64,
    r: pb::TurnResponse,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let entries: Vec<pb::TimelineEntry> = c
        .get_timeline(pb::GetTimelineRequest { workflow_id: workflow.to_string(), from_seq: before + 1, limit: 1000 })
        .await
        .map_err(status_err)?
        .into_inner()
        .entries
        .into_iter()
        .filter(|e| e.turn == r.turn)
        .collect();
    if json {
        let timeline: Vec<serde_json::Value> =
            entries.iter().map(|e| serde_json::from_str(&e.json).unwrap_or_default()).collect();
        print_json(&serde_json::json!({"workflow_id": workflow, "turn": r.turn, "status": r.status, "error": r.error,
            "timeline": timeline}));
    } else {
        for e in &entries {
            println!("{}", crate::describe::timeline_line(e));
        }
        println!("{workflow} turn {}: {}", r.turn, r.status);
        if !r.error.is_empty() {
            println!("error: {}", r.error);
        }
    }
    Ok(if r.error.is_empty() && r.status != "failed" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::exit::WORKFLOW_FAILED)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn fact_ids_read_with_or_without_their_f() {
        assert_eq!(super::fact_id("f12"), Ok(12));
        assert_eq!(super::fact_id("7"), Ok(7));
        assert!(super::fact_id("x1").unwrap_err().contains("f12 or 12"));
    }
}
