//! Packs (versions, the stable one, the canary and its fraction, the
//! upgrade job's progress) and schedules (next ticks, last runs), read from
//! this server's runtime and scheduler.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::html;

use super::layout::{self, time};
use super::{PageError, St, Tenant};

pub async fn list(State(console): St, tenant: Tenant) -> Result<Response, PageError> {
    let rt = &console.runtime;
    let packs = rt.packs(&tenant.name);
    let mut running_job = false;
    let mut rows = Vec::new();
    for (name, versions, pack) in packs {
        let rollout = rt.rollout_of(&tenant.name, &name);
        let job = rt.upgrade_job(&tenant.name, &name)?;
        running_job |= job.as_ref().is_some_and(|j| j.state == "running");
        rows.push((name, versions, pack, rollout, job));
    }
    let body = html! {
        h1 { "Packs" }
        // Reloaded every 2 s while an upgrade job runs (with scripts on).
        section #packs hx-get=[running_job.then_some("/packs")] hx-trigger=[running_job.then_some("every 2s")]
            hx-select=[running_job.then_some("#packs")] hx-swap=[running_job.then_some("outerHTML")] {
            @if rows.is_empty() { p.muted { "No pack is deployed. Deploy one with " code { "stoa deploy PACK_DIR" } "." } }
            @for (name, versions, pack, rollout, job) in &rows {
                @let stable = rollout.as_ref().map(|r| r.stable.clone()).or_else(|| versions.last().cloned()).unwrap_or_default();
                @let canary = rollout.as_ref().and_then(|r| r.canary.clone());
                article.pack id=(name) {
                    h2 { (name) " " a.small href={ "/workflows?pack=" (super::percent_encode(name)) } { "workflows" } }
                    @if !pack.manifest.description.is_empty() { p.muted { (pack.manifest.description) } }
                    dl.meta {
                        dt { "Stable" } dd { b { (stable) } }
                        dt { "Canary" } dd {
                            @match &canary {
                                Some(c) => { b { (c.version) } " on " (format!("{:.1}", c.fraction * 100.0)) "% of workflows" }
                                None => { span.muted { "none" } }
                            }
                        }
                        dt { "Versions" } dd {
                            @for v in versions.iter().rev() {
                                span.version class=[(*v == stable).then_some("stable")] { (v) } " "
                            }
                        }
                        dt { "Rules" } dd { (pack.rules.len()) }
                        dt { "Functions" } dd { @for f in pack.manifest.functions.keys() { code { (f) } " " } }
                    }
                    @if let Some(j) = job {
                        div.job {
                            "Upgrade to " b { (j.version) } ": " (j.state) " — "
                            progress max=(j.total.max(1)) value=(j.scanned) { (j.scanned) "/" (j.total) }
                            " " (j.scanned) "/" (j.total) " scanned, " (j.upgraded) " upgraded, " (j.failed) " failed, " (j.skipped) " skipped"
                            " · started " (time(j.started_ms))
                            @if j.finished_ms > 0 { " · finished " (time(j.finished_ms)) }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page("Packs", Some(&tenant), body).into_response())
}

pub async fn schedules(State(console): St, tenant: Tenant) -> Result<Response, PageError> {
    let list = crate::schedule::api::list(&console.schedules, &tenant.name).schedules;
    let ms = |t: i64| time(t.max(0) as u64);
    let body = html! {
        h1 { "Schedules" }
        @if list.is_empty() { p.muted { "No schedule. A pack's " code { "[schedules]" } " or " code { "stoa schedule put" } " makes one." } }
        @else {
            table.grid {
                thead { tr { th { "Schedule" } th { "Pack" } th { "Cron" } th { "State" } th { "Next ticks" } th { "Last runs" } } }
                tbody { @for s in &list {
                    tr id={ "schedule-" (s.name) } {
                        td { b { (s.name) } @if s.from_pack { " " span.muted { "(from the pack)" } } }
                        td { a href={ "/packs#" (s.pack) } { (s.pack) } }
                        td { code { (s.cron) } " " span.muted { (s.timezone) } }
                        td {
                            @if s.paused { span.badge.cancelled { "paused" } } @else { span.badge.running { "active" } }
                            @if !s.last_error.is_empty() { p.error { (s.last_error) } }
                        }
                        td { @for n in s.next_ms.iter().take(3) { (ms(*n)) br; } }
                        td { @for r in s.runs.iter().rev().take(5) {
                            a href={ "/workflows/" (r.workflow_id) } { (ms(r.due_ms)) } " " span.muted { (r.kind) } br;
                        } }
                    }
                } }
            }
        }
    };
    Ok(layout::page("Schedules", Some(&tenant), body).into_response())
}
