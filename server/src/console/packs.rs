//! Packs (versions, the stable one, the canary and its fraction, the
//! upgrade job's progress) and schedules (next ticks, last runs), read from
//! this server's runtime and scheduler.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;
use stoa_proto::v1 as pb;

use stoa_engine::WorkflowId;

use super::layout::{self, time};
use super::{PageError, St, Tenant};
use crate::upgrade::Mode;

pub async fn list(State(console): St, tenant: Tenant, Query(q): Query<Done>) -> Result<Response, PageError> {
    let rt = &console.runtime;
    let notice = match q.done.as_str() {
        "rollout" => Some("Rollout started."),
        "rollback" => Some("Rolled back."),
        _ => None,
    };
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
        @if let Some(n) = notice { (layout::notice(n)) }
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
                    div.actions {
                        form.inline method="post" action={ "/packs/" (super::percent_encode(name)) "/rollout" } {
                            input type="hidden" name="csrf" value=(tenant.csrf);
                            label { "Roll out "
                                select name="version" { @for v in versions.iter().rev() { option value=(v) { (v) } } }
                            }
                            select name="mode" {
                                option value="all" { "to all workflows" }
                                option value="canary" { "as a canary on" }
                                option value="new_only" { "to new workflows only" }
                            }
                            input type="number" name="percent" value="10" min="0.1" max="100" step="0.1" size="5" aria-label="canary percent";
                            "% "
                            button type="submit" { "Roll out" }
                        }
                        @if versions.len() > 1 || canary.is_some() {
                            " "
                            form.inline method="post" action={ "/packs/" (super::percent_encode(name)) "/rollback" }
                                data-confirm={ "Roll " (name) " back?" } {
                                input type="hidden" name="csrf" value=(tenant.csrf);
                                button.danger type="submit" {
                                    @if canary.is_some() { "Drop the canary" } @else { "Roll back" }
                                }
                            }
                        }
                    }
                    form.inline method="get" action={ "/packs/" (super::percent_encode(name)) "/diff" } {
                        label { "Dry run of "
                            select name="version" { @for v in versions.iter().rev() { option value=(v) { (v) } } }
                        }
                        select name="mode" {
                            option value="all" { "to all workflows" }
                            option value="canary" { "as a canary on" }
                        }
                        input type="number" name="percent" value="10" min="0.1" max="100" step="0.1" size="5" aria-label="canary percent";
                        "% "
                        button type="submit" { "Show the diff" }
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

/// Changing which version runs is the coordinator's (as the rollout RPCs).
fn coordinator_only(console: &super::Console) -> Result<(), PageError> {
    if matches!(console.runtime.opts.placement.coordinator(), crate::placement::Place::Here(_)) {
        return Ok(());
    }
    Err(PageError::Conflict("the cluster's coordinator does this: use its console".into()))
}

#[derive(Deserialize)]
pub struct RolloutForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    percent: Option<f64>,
}

/// `POST /packs/{name}/rollout`: a version to all, as a canary, or to new
/// workflows only.
pub async fn rollout(
    State(console): St,
    tenant: Tenant,
    Path(name): Path<String>,
    Form(form): Form<RolloutForm>,
) -> Result<Response, PageError> {
    tenant.check_csrf(&form.csrf)?;
    coordinator_only(&console)?;
    versions_with(&console.runtime, &tenant.name, &name, &form.version)?;
    let mode = mode_of(&form.mode, form.percent)?;
    let (rt, t, n, v) = (console.runtime.clone(), tenant.name.clone(), name.clone(), form.version.clone());
    super::workflows::detached(async move { rt.rollout(&t, &n, &v, mode, false).await }).await?;
    Ok(Redirect::to(&format!("/packs?done=rollout#{}", super::percent_encode(&name))).into_response())
}

/// `POST /packs/{name}/rollback`: the canary dropped, or the version before
/// the stable one made stable.
pub async fn rollback(
    State(console): St,
    tenant: Tenant,
    Path(name): Path<String>,
    Form(form): Form<super::CsrfForm>,
) -> Result<Response, PageError> {
    tenant.check_csrf(&form.csrf)?;
    coordinator_only(&console)?;
    let (rt, t, n) = (console.runtime.clone(), tenant.name.clone(), name.clone());
    super::workflows::detached(async move { rt.rollback(&t, &n, false).await }).await?;
    Ok(Redirect::to(&format!("/packs?done=rollback#{}", super::percent_encode(&name))).into_response())
}

/// The deployed versions of a tenant's pack, if it has `version` (else
/// the page is a 404: another tenant's pack is no different from none).
fn versions_with(
    rt: &crate::runtime::Runtime,
    tenant: &str,
    name: &str,
    version: &str,
) -> Result<Vec<String>, PageError> {
    let known = rt.packs(tenant).into_iter().find(|(n, _, _)| n == name);
    let Some((_, versions, _)) = known else { return Err(PageError::NotFound(format!("no pack {}", shown(name)))) };
    if !versions.contains(&version.to_string()) {
        return Err(PageError::NotFound(format!("pack {} has no version {}", shown(name), shown(version))));
    }
    Ok(versions)
}

/// A rollout mode from a form.
fn mode_of(mode: &str, percent: Option<f64>) -> Result<Mode, PageError> {
    Ok(match (mode, percent) {
        ("all", _) => Mode::All,
        ("new_only", _) => Mode::NewOnly,
        ("canary", Some(p)) if p > 0.0 && p <= 100.0 => Mode::Canary(p / 100.0),
        ("canary", _) => {
            return Err(PageError::BadRequest("percent: a canary is on more than 0% and at most 100%".into()))
        }
        _ => return Err(PageError::BadRequest("mode: all, canary or new_only".into())),
    })
}

#[derive(Deserialize)]
pub struct DiffQuery {
    #[serde(default)]
    version: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    percent: Option<f64>,
}

/// `/packs/{name}/diff?version=V&mode=M&percent=P`: the dry run of rolling
/// a deployed version out, as `stoa deploy --dry-run` reports it: rules
/// new, changed and removed against the stable version, the schema
/// changes and the live facts they reach, and the activations the live
/// workflows the mode selects would gain (each of those workflows is
/// loaded and previewed on the turn pool; nothing changes).
pub async fn diff(
    State(console): St,
    tenant: Tenant,
    Path(name): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Result<Response, PageError> {
    let rt = &console.runtime;
    let versions = versions_with(rt, &tenant.name, &name, &q.version)?;
    let mode = mode_of(if q.mode.is_empty() { "all" } else { &q.mode }, q.percent)?;
    let stable_version = rt.rollout_of(&tenant.name, &name).map(|r| r.stable).or_else(|| versions.last().cloned());
    let target = rt.pack_compiled(&tenant.name, &name, &q.version).await?;
    let stable = match &stable_version {
        Some(v) => Some(rt.pack_compiled(&tenant.name, &name, v).await?),
        None => None,
    };
    let changes = stable.as_ref().map(|old| stoa_engine::Workflow::rule_changes(old, &target)).unwrap_or_default();
    let impacts = rt.schema_impact(&tenant.name, &name, &target, mode, true).await?;
    let preview = rt.preview(&tenant.name, &target, mode).await?;
    let mode_text = match mode {
        Mode::All => "to all workflows".to_string(),
        Mode::NewOnly => "to new workflows only".to_string(),
        Mode::Canary(f) => format!("as a canary on {:.1}% of workflows", f * 100.0),
    };
    let rule_list = |title: &str, class: &str, rules: &[String]| {
        html! {
            @if !rules.is_empty() {
                h3 { (title) " (" (rules.len()) ")" }
                ul class=(class) { @for r in rules { li { code { (r) } } } }
            }
        }
    };
    let body = html! {
        h1 { "Dry run: " (name) " " (q.version) " " span.muted { (mode_text) } }
        p { a href={ "/packs#" (super::percent_encode(&name)) } { "« Packs" } }
        section #rules {
            h2 { "Rules against the stable version " @if let Some(v) = &stable_version { b { (v) } } }
            @if changes.added.is_empty() && changes.changed.is_empty() && changes.removed.is_empty() {
                p.muted { "No rule is new, changed or removed." }
            }
            (rule_list("New", "diff added", &changes.added))
            (rule_list("Changed", "diff changed", &changes.changed))
            (rule_list("Removed", "diff removed", &changes.removed))
        }
        section #schemas {
            h2 { "Schema changes" }
            @if impacts.is_empty() { p.muted { "None." } } @else {
                table.grid {
                    thead { tr { th { "Change" } th { "Compatible" } th { "From version" } th { "Live workflows" } th { "Live facts" } } }
                    tbody { @for i in &impacts {
                        tr class=[i.blocks().then_some("dies")] {
                            td { code { (i.change.ty) @if let Some(f) = &i.change.field { "." (f) } } " " (i.change.what) }
                            td { @if i.change.compatible { "yes" } @else { span.error { "no" } } }
                            td { (i.from) }
                            td.num { (i.workflows) }
                            td.num { (i.facts) }
                        }
                    } }
                }
                @if impacts.iter().any(|i| i.blocks()) {
                    p.error { "A rollout would move live facts across an incompatible change: it is refused unless forced." }
                }
            }
        }
        section #gains {
            h2 { "Activations gained" }
            p.muted { (preview.workflows) " live workflow(s) would move to " (q.version) "." }
            @if preview.gains.is_empty() { p.muted { "No rule would get a new activation." } } @else {
                table.grid {
                    thead { tr { th { "Rule" } th { "Activations" } th { "Workflows" } } }
                    tbody { @for (rule, (acts, wfs)) in &preview.gains {
                        tr { td { code { (rule) } } td.num { (acts) } td.num { (wfs) } }
                    } }
                }
            }
        }
    };
    Ok(layout::page(&format!("Dry run of {name} {}", q.version), Some(&tenant), body).into_response())
}

fn shown(s: &str) -> String {
    stoa_rules::diagnostic::shown(s).to_string()
}

#[derive(Deserialize, Default)]
pub struct Done {
    #[serde(default)]
    done: String,
    #[serde(default)]
    workflow: String,
}

pub async fn schedules(State(console): St, tenant: Tenant, Query(q): Query<Done>) -> Result<Response, PageError> {
    let list = crate::schedule::api::list(&console.schedules, &tenant.name).schedules;
    let notice = match q.done.as_str() {
        "pause" => Some("Paused."),
        "resume" => Some("Resumed."),
        "trigger" => Some("Triggered."),
        _ => None,
    };
    let started = WorkflowId::parse(&q.workflow).ok().filter(|w| crate::runtime::tenant_of(w) == tenant.name);
    let ms = |t: i64| time(t.max(0) as u64);
    let body = html! {
        @if let Some(n) = notice {
            p.notice role="status" { (n) @if let Some(w) = &started { " Started " a href={ "/workflows/" (w) } { code { (w) } } "." } }
        }
        h1 { "Schedules" }
        @if list.is_empty() { p.muted { "No schedule. A pack's " code { "[schedules]" } " or " code { "stoa schedule put" } " makes one." } }
        @else {
            table.grid {
                thead { tr { th { "Schedule" } th { "Pack" } th { "Cron" } th { "State" } th { "Next ticks" } th { "Last runs" } th { "Actions" } } }
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
                        td {
                            @let base = format!("/schedules/{}", super::percent_encode(&s.name));
                            @let toggle = if s.paused { "resume" } else { "pause" };
                            form.inline method="post" action={ (base) "/" (toggle) } {
                                input type="hidden" name="csrf" value=(tenant.csrf);
                                button type="submit" { (toggle) }
                            }
                            " "
                            form.inline method="post" action={ (base) "/trigger" } data-confirm={ "Start a workflow of " (s.name) " now?" } {
                                input type="hidden" name="csrf" value=(tenant.csrf);
                                button type="submit" { "trigger" }
                            }
                        }
                    }
                } }
            }
        }
    };
    Ok(layout::page("Schedules", Some(&tenant), body).into_response())
}

/// `POST /schedules/{name}/{pause|resume|trigger}`, as the schedule RPCs
/// do; on the cluster's coordinator only (which runs the schedules).
pub async fn schedule_action(
    State(console): St,
    tenant: Tenant,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<super::CsrfForm>,
) -> Result<Response, PageError> {
    tenant.check_csrf(&form.csrf)?;
    coordinator_only(&console)?;
    let s = &console.schedules;
    let r = pb::ScheduleRef { name };
    let workflow = match action.as_str() {
        "pause" => crate::schedule::api::pause(s, &tenant.name, r, true).map(|_| String::new())?,
        "resume" => crate::schedule::api::pause(s, &tenant.name, r, false).map(|_| String::new())?,
        "trigger" => {
            let req = pb::TriggerScheduleRequest { name: r.name, request_id: String::new() };
            crate::schedule::api::trigger(s, &tenant.name, req).await?.workflow_id
        }
        _ => return Err(PageError::NotFound("no such action".into())),
    };
    let mut to = format!("/schedules?done={action}");
    if !workflow.is_empty() {
        to.push_str(&format!("&workflow={}", super::percent_encode(&workflow)));
    }
    Ok(Redirect::to(&to).into_response())
}

/// `/workers`: this server's worker sessions of the tenant (functions,
/// slots, in flight, draining) and the backlog per function (queued,
/// running, backing off) against the workers and free slots serving it.
pub async fn workers(State(console): St, tenant: Tenant) -> Result<Response, PageError> {
    let view = console.runtime.workers_of(&tenant.name).await.ok_or(PageError::Internal)?;
    let body = html! {
        h1 { "Workers" }
        p.muted { "On this server; in a cluster each server has its own sessions and backlog." }
        section {
            h2 { "Backlog per function" }
            @if view.functions.is_empty() {
                p.muted { "No worker session and no invocation." }
            } @else {
                table.grid {
                    thead { tr { th { "Function" } th { "Queued" } th { "Running" } th { "Backing off" } th { "Workers" } th { "Free slots" } } }
                    tbody {
                        @for f in &view.functions {
                            tr class=[(f.queued > 0 && f.workers == 0).then_some("invalid")] {
                                td { code { (f.function) } }
                                td.num { (f.queued) } td.num { (f.running) } td.num { (f.backoff) }
                                td.num { (f.workers) } td.num { (f.free_slots) }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Sessions (" (view.sessions.len()) ")" }
            @if !view.sessions.is_empty() {
                table.grid {
                    thead { tr { th { "Session" } th { "Functions" } th { "In flight" } th { "Slots" } th { "State" } } }
                    tbody {
                        @for s in &view.sessions {
                            tr {
                                td.num { (s.session) }
                                td { (s.functions.join(", ")) }
                                td.num { (s.in_flight) } td.num { (s.max_in_flight) }
                                td { @if s.draining { "draining" } @else { "serving" } }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page("Workers", Some(&tenant), body).into_response())
}
