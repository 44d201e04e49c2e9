//! `stoa describe`, and the text and JSON of `stoa get`: a workflow as a
//! person reads it (wall-clock times in the local time zone, what each
//! waiting invocation is doing, how far off its timers are).

use std::process::ExitCode;

use stoa_proto::v1 as pb;

use crate::remote::{print_json, status_err, Client, Conn};
use crate::when;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub conn: Conn,
    /// The workflow id (`wf_…`, as `stoa start` or `stoa ls` print it).
    pub workflow: String,
    /// How many of the most recent timeline entries to show (0: none).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub timeline: u64,
    /// Show the facts too (`stoa get` shows them by default).
    #[arg(long)]
    pub facts: bool,
}

pub async fn run(c: &mut Client, args: Args, json: bool) -> anyhow::Result<ExitCode> {
    let w = c
        .get_workflow(pb::GetWorkflowRequest { workflow_id: args.workflow.clone(), without_facts: !args.facts })
        .await
        .map_err(status_err)?
        .into_inner();
    let entries = match args.timeline {
        0 => Vec::new(),
        n => {
            let from = w.timeline_seq.saturating_sub(n - 1).max(1);
            let limit = n.min(1000) as u32;
            c.get_timeline(pb::GetTimelineRequest { workflow_id: w.id.clone(), from_seq: from, limit })
                .await
                .map_err(status_err)?
                .into_inner()
                .entries
        }
    };
    if json {
        let mut v = workflow_json(&w);
        let timeline: Vec<serde_json::Value> =
            entries.iter().map(|e| serde_json::from_str(&e.json).unwrap_or_default()).collect();
        v["timeline"] = timeline.into();
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    print_workflow(&w, when::now_ms());
    if !entries.is_empty() {
        let first = entries.first().map_or(1, |e| e.seq);
        if first > 1 {
            println!(
                "timeline (entries {first} to {} of {}; `stoa watch {} --from 1` for all):",
                w.timeline_seq, w.timeline_seq, w.id
            );
        } else {
            println!("timeline:");
        }
        for e in &entries {
            println!("{}", timeline_line(e));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A timeline entry's line: a turn's first line carries its wall-clock
/// time, and so does a failed attempt.
pub fn timeline_line(e: &pb::TimelineEntry) -> String {
    match e.kind.as_str() {
        "turn_started" => format!("{}  · {}", e.text, when::local_precise(e.at_ms)),
        "attempt_failed" => {
            let v: serde_json::Value = serde_json::from_str(&e.json).unwrap_or_default();
            let a = &v["event"];
            match (a["invocation"].as_str(), a["attempt"].as_u64(), a["at_ms"].as_u64(), a["error"].as_str()) {
                (Some(inv), Some(n), Some(at), Some(error)) => {
                    format!("  failed {inv} attempt {n} at {}: {error}", when::local_precise(at))
                }
                _ => e.text.clone(),
            }
        }
        _ => e.text.clone(),
    }
}

/// `stoa get --json` and `stoa describe --json` (without the timeline).
pub fn workflow_json(w: &pb::Workflow) -> serde_json::Value {
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or_default();
    let facts: Vec<_> = w
        .facts
        .iter()
        .map(|f| serde_json::json!({"id": f.id, "type": f.r#type, "version": f.version, "fields": parse(&f.fields_json)}))
        .collect();
    let waiting: Vec<_> = w
        .waiting
        .iter()
        .map(|x| {
            let failed: Vec<_> = x
                .failed_attempts
                .iter()
                .map(|f| serde_json::json!({"attempt": f.attempt, "at_ms": f.at_ms, "error": f.error}))
                .collect();
            serde_json::json!({"invocation": x.invocation_id, "rule": x.rule, "function": x.function, "facts": x.fact_ids,
                "state": x.state, "attempt": x.attempt, "last_error": x.last_error, "retry_at_ms": x.retry_at_ms,
                "workers": x.workers, "failed_attempts": failed})
        })
        .collect();
    let timers: Vec<_> = w
        .timers
        .iter()
        .map(|t| serde_json::json!({"id": t.id, "type": t.r#type, "due_ms": t.due_ms, "rule": t.rule}))
        .collect();
    serde_json::json!({"id": w.id, "pack": w.pack, "pack_version": w.pack_version, "status": w.status,
        "result": parse(&w.result_json), "reason": w.reason, "turn": w.turn, "created_ms": w.created_ms,
        "updated_ms": w.updated_ms, "fact_count": w.fact_count, "facts": facts, "waiting": waiting, "timers": timers,
        "origin": parse(&w.origin_json), "traceparent": w.traceparent, "timeline_seq": w.timeline_seq})
}

/// The text of `stoa get` and the head of `stoa describe`.
pub fn print_workflow(w: &pb::Workflow, now: u64) {
    println!("{}  {} {}  {}  turn {}", w.id, w.pack, w.pack_version, w.status, w.turn);
    println!("started:  {}", when::both(w.created_ms, now));
    let changed = if w.status == "running" { "updated:  " } else { "ended:    " };
    println!("{changed}{}", when::both(w.updated_ms, now));
    if !w.reason.is_empty() {
        println!("reason: {}", w.reason);
    }
    if w.result_json != "null" && !w.result_json.is_empty() {
        println!("result: {}", w.result_json);
    }
    println!("{} fact(s)", w.fact_count);
    for f in &w.facts {
        println!("  f{}@{} {} {}", f.id, f.version, f.r#type, f.fields_json);
    }
    if !w.waiting.is_empty() {
        println!("{} waiting activation(s)", w.waiting.len());
        for x in &w.waiting {
            println!("  {} {} <- rule \"{}\" {}", x.invocation_id, x.function, x.rule, x.args_json);
            println!("    {}", dispatch_line(x, now));
            for f in &x.failed_attempts {
                println!("    attempt {} failed {}: {}", f.attempt, when::both(f.at_ms, now), f.error);
            }
        }
    }
    if !w.timers.is_empty() {
        println!("{} pending timer(s)", w.timers.len());
        for t in &w.timers {
            println!("  timer {} {} due {} <- rule \"{}\"", t.id, t.r#type, when::both(t.due_ms, now), t.rule);
        }
    }
    if !w.origin_json.is_empty() && !w.origin_json.contains(r#""by":"request""#) {
        println!("started by: {}", w.origin_json);
    }
    if !w.traceparent.is_empty() {
        println!("trace: {}", w.traceparent);
    }
}

/// What a waiting invocation is doing, in one line.
fn dispatch_line(x: &pb::WaitingActivation, now: u64) -> String {
    let workers = match x.workers {
        0 => format!("no connected worker serves {}", x.function),
        1 => "1 connected worker serves it".to_string(),
        n => format!("{n} connected workers serve it"),
    };
    match x.state.as_str() {
        "" => "dispatch: not known here (not dispatched yet, or its server did not answer)".to_string(),
        "queued" => format!("attempt {}: queued, waiting for a worker; {workers}", x.attempt),
        "running" => format!("attempt {}: running on a worker; {workers}", x.attempt),
        "backoff" => format!(
            "attempt {} due {} after attempt {} failed; {workers}",
            x.attempt,
            when::both(x.retry_at_ms, now),
            x.attempt.saturating_sub(1)
        ),
        "answered" => "answered: its outcome is being applied".to_string(),
        other => format!("{other}; {workers}"),
    }
}
