//! `stoa dag restart` and `stoa dag runs`: operations on DAG instances of
//! a server. What a restart carries over, and how runs are linked, is
//! decided in `stoa_dag::restart`; this is the client around it.

use std::process::ExitCode;

use stoa_dag::restart::{plan, view, view_json, From, Run};
use stoa_proto::v1 as pb;

use crate::remote::{connect, print_json, status_err, Client, Conn};

#[derive(clap::Args)]
pub struct RestartArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// The run to restart: a failed or cancelled instance (or a completed
    /// one, with --from or --all).
    pub workflow: String,
    /// Run this step and what is downstream of it again.
    #[arg(long, conflicts_with = "all")]
    pub from: Option<String>,
    /// Run every step again, with the same parameters.
    #[arg(long)]
    pub all: bool,
    /// Follow the new run's timeline until it ends.
    #[arg(long)]
    pub watch: bool,
}

#[derive(clap::Args)]
pub struct RunsArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// The newest run's id.
    pub workflow: String,
}

/// The most runs `stoa dag runs` follows back.
const MAX_RUNS: usize = 1000;

async fn fetch(c: &mut Client, id: &str) -> anyhow::Result<Run> {
    let w = c
        .get_workflow(pb::GetWorkflowRequest { workflow_id: id.to_string(), without_facts: false })
        .await
        .map_err(status_err)?
        .into_inner();
    let facts = w
        .facts
        .iter()
        .map(|f| Ok((f.r#type.clone(), serde_json::from_str(&f.fields_json)?)))
        .collect::<Result<Vec<_>, serde_json::Error>>()?;
    Ok(Run { id: w.id, pack: w.pack, status: w.status, reason: w.reason, facts })
}

fn block_on(f: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

pub fn restart(args: RestartArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let mut c = connect(&args.conn).await?;
        let run = fetch(&mut c, &args.workflow).await?;
        let from = match (args.from, args.all) {
            (Some(s), _) => From::Step(s),
            (None, true) => From::Start,
            (None, false) => From::Unfinished,
        };
        let (facts, request_id) = plan(&run, &from).map_err(crate::exit::usage)?;
        let facts = facts
            .into_iter()
            .map(|(ty, fields)| pb::FactInput { r#type: ty, fields_json: fields.to_string() })
            .collect();
        let r = c
            .start_workflow(pb::StartWorkflowRequest { pack: run.pack.clone(), facts, request_id: request_id.clone() })
            .await
            .map_err(status_err)?
            .into_inner();
        if args.conn.json {
            print_json(&serde_json::json!({
                "workflow_id": r.workflow_id, "created": r.created, "restart_of": run.id, "request_id": request_id,
            }));
        } else {
            println!(
                "{} {} (a restart of {})",
                r.workflow_id,
                if r.created { "started" } else { "already started by this same restart" },
                run.id
            );
        }
        if args.watch {
            return crate::remote::follow(&mut c, &r.workflow_id, 1, args.conn.json).await;
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn runs(args: RunsArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let mut c = connect(&args.conn).await?;
        let mut runs = vec![fetch(&mut c, &args.workflow).await?];
        while let Some(prev) = runs.last().and_then(|r| r.previous()).map(str::to_string) {
            if runs.len() >= MAX_RUNS || runs.iter().any(|r| r.id == prev) {
                break;
            }
            runs.push(fetch(&mut c, &prev).await?);
        }
        runs.reverse();
        if args.conn.json {
            print_json(&view_json(&runs));
        } else {
            print!("{}", view(&runs));
        }
        Ok(ExitCode::SUCCESS)
    })
}
