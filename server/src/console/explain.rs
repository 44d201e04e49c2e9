//! Why / why not: a rule's explanation for one workflow (the `Explain`
//! RPC's, in process), with the condition where every partial match dies
//! and its failing constraint's values highlighted; and a fact's
//! derivation, each version linked to the firing that made it.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use stoa_engine::explain::{By, FactExplain, Now, Origin, Reason, RuleExplain};
use stoa_engine::WorkflowId;
use stoa_proto::v1 as pb;

use super::layout::{self, status, time, value};
use super::{PageError, St, Tenant};

fn parse_id(s: &str) -> Result<WorkflowId, PageError> {
    WorkflowId::parse(s).map_err(|_| PageError::NotFound("no such workflow".into()))
}

async fn explained(
    console: &super::Console,
    tenant: &Tenant,
    id: &WorkflowId,
    rule: String,
    fact: u64,
) -> Result<String, PageError> {
    // The tenant's own workflow, or a 404 before any tenant code runs.
    console.runtime.get(&tenant.name, id)?;
    let req = pb::ExplainRequest { workflow_id: id.to_string(), rule, fact };
    Ok(crate::explain::explain(&console.runtime, &tenant.name, id.clone(), req).await?)
}

pub async fn rule(
    State(console): St,
    tenant: Tenant,
    Path((id, rule)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let id = parse_id(&id)?;
    if rule.is_empty() || rule.len() > 512 {
        return Err(PageError::NotFound("no such rule".into()));
    }
    let json = explained(&console, &tenant, &id, rule, 0).await?;
    let e: RuleExplain = serde_json::from_str(&json).map_err(|_| PageError::Internal)?;
    let base = format!("/workflows/{id}");
    let dies_at = match &e.now {
        Now::NoMatch { dies_at, .. } => Some(*dies_at),
        Now::Matches { .. } => None,
    };
    let body = html! {
        p.crumbs { a href=(base) { "← workflow " code { (id) } } }
        h1 { "Rule " q { (e.rule) } }
        dl.meta {
            dt { "Pack" } dd { (e.pack) " " (e.version) " · " code { (e.at) } " · salience " (e.salience) }
            dt { "Workflow" } dd { (status(&e.status)) }
            dt { "Fired" } dd { (e.fired) " time" @if e.fired != 1 { "s" } }
        }
        section {
            h2 { "Now" }
            @match &e.now {
                Now::Matches { total, matches } => {
                    p.ok { "It matches: " (total) " complete match" @if *total != 1 { "es" } "." }
                    table.grid {
                        thead { tr { th { "Facts" } th { "Why it is not firing now" } } }
                        tbody { @for m in matches {
                            tr {
                                td { @for f in &m.facts { a href={ (base) "/facts/" (f.id) } { "f" (f.id) } " " (f.ty) "@" (f.version) " " } }
                                td { (reason(&base, &m.reason)) }
                            }
                        } }
                    }
                }
                Now::NoMatch { dies_at, why, closest } => {
                    p.bad { "It does not match: every partial match dies at condition " (dies_at) "." }
                    p { (why) }
                    @if let Some(c) = closest {
                        div.closest {
                            h3 { "The closest partial match" }
                            @if !c.bound.is_empty() {
                                p { "Bound: " @for (name, f) in &c.bound { code { (name) } " = " a href={ (base) "/facts/" (f.id) } { "f" (f.id) } " " (f.ty) "@" (f.version) "; " } }
                            }
                            @if let Some(f) = &c.candidate {
                                p { "Tried: " a href={ (base) "/facts/" (f.id) } { "f" (f.id) } " " (f.ty) "@" (f.version) }
                            }
                            p { "Failing constraint " code { (c.at) } ": " code.failing { (c.constraint) } }
                            p { "With its values: " code.failing.values { (c.evaluated) } }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Conditions" }
            table.grid.conditions {
                thead { tr { th { "#" } th { "Condition" } th { "Kind" } th { "Facts of its type" } th { "Passing its own tests" } th { "Partial matches after it" } } }
                tbody { @for c in &e.conditions {
                    tr class=[(dies_at == Some(c.index)).then_some("dies")] {
                        td.num { (c.index) }
                        td { code { (c.text) } br; span.muted { (c.at) } }
                        td { (format!("{:?}", c.kind).to_lowercase()) }
                        td.num { (c.facts) }
                        td.num { (c.passing) }
                        td.num { @match c.partial_matches { Some(n) => { (n) @if c.truncated { "+" } }, None => { span.muted { "—" } } } }
                    }
                    @if !c.blockers.is_empty() {
                        tr.blockers { td {} td colspan="5" { "blocked by " @for f in &c.blockers { a href={ (base) "/facts/" (f.id) } { "f" (f.id) } " " } } }
                    }
                } }
            }
        }
        @if !e.firings.is_empty() {
            section {
                h2 { "Firings" @if e.fired as usize > e.firings.len() { " (the last " (e.firings.len()) ")" } }
                table.grid {
                    thead { tr { th { "Turn" } th { "Entry" } th { "Section" } th { "At" } th { "Matched" } th { "Changes" } } }
                    tbody { @for f in &e.firings {
                        tr id={ "firing-" (f.seq) } {
                            td.num { (f.turn) }
                            td.num { a href={ (base) "?from=" (f.seq) "#e" (f.seq) } { (f.seq) } }
                            td { (f.section.as_str()) }
                            td { (time(f.at_ms)) }
                            td { @for (id, v) in &f.matched { a href={ (base) "/facts/" (id) } { "f" (id) } "@" (v) " " } }
                            td { @for c in &f.changes { (c) br; } }
                        }
                    } }
                }
            }
        }
    };
    Ok(layout::page(&format!("Rule {}", e.rule), Some(&tenant), body).into_response())
}

fn reason(base: &str, r: &Reason) -> Markup {
    match r {
        Reason::AlreadyFired { turn, seq } => {
            html! { "already fired for these versions, " a href={ (base) "?from=" (seq) "#e" (seq) } { "turn " (turn) } }
        }
        Reason::NoLoop { turn, seq } => {
            html! { "no-loop: its own change made these versions, " a href={ (base) "?from=" (seq) "#e" (seq) } { "turn " (turn) } }
        }
        Reason::Waiting { invocation, function } => {
            html! { "waiting for " code { (function) } " (" code { (invocation) } ")" }
        }
        Reason::Queued { position, ahead } => html! { "queued at " (position) " behind " (ahead.join(", ")) },
        Reason::Finished { status: s } => html! { "the workflow is " (status(s)) },
        Reason::Refracted => html! { "matched when the state was rebuilt; nothing new since" },
    }
}

pub async fn fact(
    State(console): St,
    tenant: Tenant,
    Path((id, fact)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let id = parse_id(&id)?;
    let n: u64 = fact
        .trim_start_matches('f')
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| PageError::NotFound("no such fact".into()))?;
    let json = explained(&console, &tenant, &id, String::new(), n).await?;
    let e: FactExplain = serde_json::from_str(&json).map_err(|_| PageError::Internal)?;
    let base = format!("/workflows/{id}");
    let body = html! {
        p.crumbs { a href=(base) { "← workflow " code { (id) } } }
        h1 { "Fact f" (e.fact) " " (e.ty) }
        dl.meta {
            dt { "Version" } dd { @match e.current { Some(v) => { (v) }, None => { span.muted { "retracted" } } } }
        }
        @if let Some(stoa_rules::Value::Map(fields)) = &e.fields {
            table.grid {
                thead { tr { th { "Field" } th { "Value" } } }
                tbody { @for (k, v) in fields.iter() { tr { td { (k.as_ref() as &str) } td { (value(v)) } } } }
            }
        }
        section {
            h2 { "Versions" }
            (origins(&base, &e.versions))
        }
        @if !e.derivation.is_empty() {
            section {
                h2 { "Derivation" }
                p.muted { "The facts the firings above matched, and where they came from." @if e.truncated { " (truncated)" } }
                (origins(&base, &e.derivation))
            }
        }
    };
    Ok(layout::page(&format!("Fact f{}", e.fact), Some(&tenant), body).into_response())
}

fn origins(base: &str, list: &[Origin]) -> Markup {
    html! {
        table.grid {
            thead { tr { th { "Fact" } th { "Change" } th { "Turn" } th { "At" } th { "Made by" } } }
            tbody { @for o in list {
                tr {
                    td { a href={ (base) "/facts/" (o.fact.id) } { "f" (o.fact.id) } " " (o.fact.ty) "@" (o.fact.version) }
                    td { (o.change) }
                    td.num { a href={ (base) "?from=" (o.seq) "#e" (o.seq) } { (o.turn) } }
                    td { (time(o.at_ms)) }
                    td { @match &o.by {
                        By::Firing { rule, section, seq, .. } => {
                            "rule " a href={ (base) "/rules/" (super::percent_encode(rule)) } { (rule) }
                            " (" (section.as_str()) ", " a href={ (base) "?from=" (seq) "#e" (seq) } { "entry " (seq) } ")"
                        }
                        By::Input { input } => { "input: " (input) }
                    } }
                }
            } }
        }
    }
}
