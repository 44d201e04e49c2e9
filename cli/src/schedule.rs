//! `stoa schedule ...`: the schedule RPCs from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use stoa_proto::v1 as pb;

use crate::remote::{connect, facts_in, print_json, status_err, Conn};

#[derive(clap::Subcommand)]
pub enum Command {
    /// List the tenant's schedules with their next tick.
    ///
    /// Example: stoa schedule ls --json
    Ls {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a schedule: timing, policy, next ticks, recent runs.
    ///
    /// Example: stoa schedule get nightly-report
    Get {
        #[command(flatten)]
        conn: Conn,
        /// The schedule's name.
        name: String,
    },
    /// Create a schedule, or replace the one of that name. Ticks count
    /// from now (a replacement with the same cron and time zone keeps its
    /// place).
    ///
    /// Example: stoa schedule create nightly-report --pack report --cron "0 2 * * *" --timezone Europe/Paris --facts facts.json
    Create {
        #[command(flatten)]
        conn: Conn,
        /// Letters, digits, `-`, `_` or `.`.
        name: String,
        /// The deployed pack each tick starts a workflow of.
        #[arg(long)]
        pack: String,
        /// Cron with 5 fields (minute hour day month weekday) or 6 (seconds
        /// first), or a preset: @yearly @monthly @weekly @daily @hourly,
        /// @every 30s.
        #[arg(long)]
        cron: String,
        /// IANA time zone of the cron fields, e.g. Europe/Paris.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// Start facts: a file (a JSON array of {"type", "fields"}, or TOML
        /// [[fact]] tables), or that JSON inline. Default: none.
        #[arg(long, value_name = "FILE|JSON")]
        facts: Option<PathBuf>,
        /// Ticks missed while the server was down: skip (none), one (the
        /// latest) or all.
        #[arg(long, default_value = "one")]
        catch_up: String,
        /// With --catch-up all: run at most this many missed ticks (the latest).
        #[arg(long)]
        max_catch_up: Option<u32>,
        /// Create it paused.
        #[arg(long)]
        paused: bool,
    },
    /// Stop running ticks until `resume`.
    ///
    /// Example: stoa schedule pause nightly-report
    Pause {
        #[command(flatten)]
        conn: Conn,
        /// The schedule's name.
        name: String,
    },
    /// Run ticks again, from now on (the ticks of the pause are not run).
    ///
    /// Example: stoa schedule resume nightly-report
    Resume {
        #[command(flatten)]
        conn: Conn,
        /// The schedule's name.
        name: String,
    },
    /// Start the schedule's workflow now, outside its ticks.
    ///
    /// Example: stoa schedule trigger nightly-report --request-id rerun-2026-12-05
    Trigger {
        #[command(flatten)]
        conn: Conn,
        /// The schedule's name.
        name: String,
        /// Idempotency key: the same id triggers one workflow. Default: new.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Delete a schedule (the workflows it started stay).
    ///
    /// Example: stoa schedule delete nightly-report
    Delete {
        #[command(flatten)]
        conn: Conn,
        /// The schedule's name.
        name: String,
    },
}

impl Command {
    fn conn(&self) -> &Conn {
        match self {
            Command::Ls { conn }
            | Command::Get { conn, .. }
            | Command::Create { conn, .. }
            | Command::Pause { conn, .. }
            | Command::Resume { conn, .. }
            | Command::Trigger { conn, .. }
            | Command::Delete { conn, .. } => conn,
        }
    }
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    use tracing::Instrument;
    let span = cmd.conn().span("schedule")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run_async(cmd).instrument(span))
}

fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| format!("{t:.3}")).unwrap_or_else(|_| ms.to_string())
}

fn json(s: &pb::Schedule) -> serde_json::Value {
    let facts: Vec<_> = s
        .facts
        .iter()
        .map(|f| serde_json::json!({"type": f.r#type, "fields": serde_json::from_str::<serde_json::Value>(&f.fields_json).unwrap_or_default()}))
        .collect();
    let runs: Vec<_> = s
        .runs
        .iter()
        .map(|r| serde_json::json!({"due_ms": r.due_ms, "started_ms": r.started_ms, "workflow_id": r.workflow_id, "created": r.created, "kind": r.kind}))
        .collect();
    serde_json::json!({
        "name": s.name, "pack": s.pack, "cron": s.cron, "timezone": s.timezone, "facts": facts,
        "catch_up": s.catch_up, "max_catch_up": s.max_catch_up, "paused": s.paused, "from_pack": s.from_pack,
        "created_ms": s.created_ms, "updated_ms": s.updated_ms, "done_until_ms": s.done_until_ms,
        "next_ms": s.next_ms, "runs": runs, "last_error": s.last_error,
    })
}

fn line(s: &pb::Schedule) -> String {
    let state = if s.paused {
        "paused".to_string()
    } else {
        s.next_ms.first().map(|&t| format!("next {}", time(t))).unwrap_or_else(|| "no next tick".into())
    };
    format!("{:<24} {:<20} {:<18} {:<14} {:<5} {}", s.name, s.pack, s.cron, s.timezone, s.catch_up, state)
}

fn show(s: &pb::Schedule) {
    println!("{}", line(s));
    if s.from_pack {
        println!("defined by pack {}", s.pack);
    }
    if s.max_catch_up > 0 {
        println!("max_catch_up {}", s.max_catch_up);
    }
    for f in &s.facts {
        println!("  fact {} {}", f.r#type, f.fields_json);
    }
    println!("done until {}", time(s.done_until_ms));
    for t in &s.next_ms {
        println!("  next {}", time(*t));
    }
    for r in &s.runs {
        println!(
            "  ran  {} {:<8} {} {}{}",
            time(r.due_ms),
            r.kind,
            r.workflow_id,
            if r.created { "started" } else { "already started" },
            format_args!(" (+{} ms)", r.started_ms as i64 - r.due_ms)
        );
    }
    if !s.last_error.is_empty() {
        println!("last error: {}", s.last_error);
    }
}

async fn run_async(cmd: Command) -> anyhow::Result<ExitCode> {
    let conn = cmd.conn().clone();
    let mut c = connect(&conn).await?;
    let as_json = conn.json;
    let print = |s: &pb::Schedule| if as_json { print_json(&json(s)) } else { show(s) };
    match cmd {
        Command::Ls { .. } => {
            let r = c.list_schedules(pb::ListSchedulesRequest {}).await.map_err(status_err)?.into_inner();
            for s in &r.schedules {
                if as_json {
                    print_json(&json(s));
                } else {
                    println!("{}", line(s));
                }
            }
        }
        Command::Get { name, .. } => {
            print(&c.get_schedule(pb::ScheduleRef { name }).await.map_err(status_err)?.into_inner());
        }
        Command::Create { name, pack, cron, timezone, facts, catch_up, max_catch_up, paused, .. } => {
            let facts = match facts {
                Some(p) => facts_in(&p)?,
                None => Vec::new(),
            };
            let req = pb::PutScheduleRequest {
                name,
                pack,
                cron,
                timezone,
                facts,
                catch_up,
                max_catch_up: max_catch_up.unwrap_or(0),
                paused,
            };
            match c.put_schedule(req).await {
                Ok(r) => print(&r.into_inner()),
                Err(s) if s.code() == tonic::Code::InvalidArgument => {
                    eprintln!("error: {}", s.message());
                    return Ok(ExitCode::from(1));
                }
                Err(s) => return Err(status_err(s)),
            }
        }
        Command::Pause { name, .. } => {
            print(&c.pause_schedule(pb::ScheduleRef { name }).await.map_err(status_err)?.into_inner());
        }
        Command::Resume { name, .. } => {
            print(&c.resume_schedule(pb::ScheduleRef { name }).await.map_err(status_err)?.into_inner());
        }
        Command::Trigger { name, request_id, .. } => {
            let r = c
                .trigger_schedule(pb::TriggerScheduleRequest { name, request_id: request_id.unwrap_or_default() })
                .await
                .map_err(status_err)?
                .into_inner();
            if as_json {
                print_json(&serde_json::json!({"workflow_id": r.workflow_id, "created": r.created}));
            } else {
                println!(
                    "{} {}",
                    r.workflow_id,
                    if r.created { "started" } else { "already started by this request id" }
                );
            }
        }
        Command::Delete { name, .. } => {
            c.delete_schedule(pb::ScheduleRef { name: name.clone() }).await.map_err(status_err)?;
            if as_json {
                print_json(&serde_json::json!({"deleted": name}));
            } else {
                println!("{name} deleted");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
