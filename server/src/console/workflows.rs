//! Workflow pages: the filtered list with counts per status, one
//! workflow (facts, waiting invocations, timers, timeline by turn, rules),
//! its live timeline (server-sent events), and the cancel and assert
//! actions.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use stoa_engine::store::{Family, ListQuery as IndexQuery, ListStatus};
use stoa_engine::timeline::{Entry, Event};
use stoa_engine::workflow::{Input, Meta, Origin, Snapshot, Status, CHILD_PREFIX};
use stoa_engine::WorkflowId;
use stoa_rules::testcase::FactSpec;
use stoa_rules::Fields;

use super::layout::{self, copyable, status, time, value};
use super::{Console, PageError, St, Tenant};
use crate::error::ApiError;
use crate::runtime::{tenant_of, Runtime};

/// Rows of a list page.
pub const PAGE_SIZE: usize = 50;
/// Workflows a search by id prefix reads at most looking for a page of
/// matches; past it the page ends early with a link to go on from there.
const MAX_SCAN: usize = 20_000;
/// Timeline entries on one page.
pub const TIMELINE_PAGE: usize = 200;
/// Facts shown on a workflow's page at most.
const MAX_FACTS_SHOWN: usize = 1_000;

/// The filter of the workflow list, as its URL (and the bulk forms) carry
/// it. Every field is a tenant's text: `parse` checks it all.
#[derive(Deserialize, Default, Clone)]
pub struct Filter {
    #[serde(default)]
    pack: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    q: String,
    /// Created at or after, UTC (`YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS]`).
    #[serde(default)]
    since: String,
    /// Created before, UTC.
    #[serde(default)]
    until: String,
}

/// A filter, checked.
struct Parsed<'a> {
    family: Family<'a>,
    status: Option<ListStatus>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
    text: &'a str,
}

impl Parsed<'_> {
    fn query<'q>(&'q self, tenant: &'q str, before: Option<(u64, &'q WorkflowId)>, limit: usize) -> IndexQuery<'q> {
        IndexQuery {
            tenant,
            family: self.family,
            status: self.status,
            since_ms: self.since_ms,
            until_ms: self.until_ms,
            before,
            limit,
        }
    }
}

/// A UTC time from a form: a date, or a date and time (what
/// `<input type="datetime-local">` sends), as milliseconds.
fn utc_ms(field: &str, s: &str) -> Result<Option<u64>, PageError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let bad = || PageError::BadRequest(format!("{field}: a UTC date (2026-01-31) or date and time (2026-01-31T09:30)"));
    if s.len() > 32 {
        return Err(bad());
    }
    let dt = match s.parse::<jiff::civil::DateTime>() {
        Ok(dt) => dt,
        Err(_) => s.parse::<jiff::civil::Date>().map_err(|_| bad())?.to_datetime(jiff::civil::Time::midnight()),
    };
    let ms = jiff::tz::TimeZone::UTC.to_timestamp(dt).map_err(|_| bad())?.as_millisecond();
    Ok(Some(u64::try_from(ms).unwrap_or(0)))
}

impl Filter {
    fn parse(&self) -> Result<Parsed<'_>, PageError> {
        if !self.pack.is_empty() && !stoa_rules::manifest::valid_pack_name(&self.pack) {
            return Err(PageError::BadRequest("pack: not a pack name".into()));
        }
        let family = match (self.pack.as_str(), self.version.as_str()) {
            ("", "") => Family::All,
            ("", _) => return Err(PageError::BadRequest("version: choose a pack too".into())),
            (p, "") => Family::Pack(p),
            (p, v) if stoa_rules::manifest::valid_version(v) => Family::Version(p, v),
            _ => return Err(PageError::BadRequest("version: 1 to 64 characters, without spaces".into())),
        };
        let status = match self.status.as_str() {
            "" => None,
            s => Some(ListStatus::parse(s).ok_or_else(|| {
                PageError::BadRequest(format!("status: one of {}", ListStatus::ALL.map(|s| s.as_str()).join(", ")))
            })?),
        };
        if self.q.len() > 256 || self.q.chars().any(char::is_control) {
            return Err(PageError::BadRequest("q: at most 256 characters, without control characters".into()));
        }
        let (since_ms, until_ms) = (utc_ms("since", &self.since)?, utc_ms("until", &self.until)?);
        Ok(Parsed { family, status, since_ms, until_ms, text: self.q.trim() })
    }

    /// The filter's fields as URL query pairs (those set).
    fn pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("pack", self.pack.as_str()),
            ("version", self.version.as_str()),
            ("status", self.status.as_str()),
            ("q", self.q.as_str()),
            ("since", self.since.as_str()),
            ("until", self.until.as_str()),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect()
    }

    /// This filter's list URL, with `extra` pairs.
    fn url(&self, extra: &[(&str, &str)]) -> String {
        let parts: Vec<String> = self
            .pairs()
            .into_iter()
            .chain(extra.iter().copied())
            .map(|(k, v)| format!("{k}={}", super::percent_encode(v)))
            .collect();
        if parts.is_empty() {
            "/workflows".into()
        } else {
            format!("/workflows?{}", parts.join("&"))
        }
    }

    fn with_status(&self, status: &str) -> Filter {
        Filter { status: status.to_string(), ..self.clone() }
    }

    /// Hidden fields that carry this filter in a form.
    fn hidden(&self) -> Markup {
        html! {
            @for (k, v) in self.pairs() { input type="hidden" name=(k) value=(v); }
        }
    }
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(flatten)]
    filter: Filter,
    /// The page after this row of the index (`<created ms>:<id>`).
    #[serde(default)]
    before: String,
    /// A search by id prefix goes on after this id.
    #[serde(default)]
    after: String,
    /// Rows a page, 1 to `MAX_PAGE_SIZE` (default `PAGE_SIZE`).
    #[serde(default)]
    size: String,
    /// What the last action did (`cancelled-N`, `signalled-N`).
    #[serde(default)]
    done: String,
}

/// Rows a page at most, whatever the URL asks.
const MAX_PAGE_SIZE: usize = 200;

/// One page of a filtered list.
struct Listing {
    rows: Vec<Meta>,
    /// The URL pair of the next page, if there may be one.
    next: Option<(&'static str, String)>,
    /// The page ended early: `MAX_SCAN` workflows read.
    stopped: bool,
}

/// A page token of the index path: `<created ms>:<id>`, the id this
/// tenant's.
fn parse_before(s: &str, tenant: &str) -> Result<Option<(u64, WorkflowId)>, PageError> {
    if s.is_empty() {
        return Ok(None);
    }
    let bad = || PageError::BadRequest("before: not a page of this list".into());
    let (ms, id) = s.split_once(':').ok_or_else(bad)?;
    if ms.len() > 20 {
        return Err(bad());
    }
    let ms = ms.parse::<u64>().map_err(|_| bad())?;
    match WorkflowId::parse(id) {
        Ok(id) if tenant_of(&id) == tenant => Ok(Some((ms, id))),
        _ => Err(bad()),
    }
}

/// Reads the tenant's workflows whose key starts with `key_prefix`, from
/// `after`, until a page of those `keep` accepts (or `MAX_SCAN` read).
fn scan(
    rt: &Runtime,
    tenant: &str,
    key_prefix: &str,
    mut after: Option<WorkflowId>,
    size: usize,
    keep: impl Fn(&Meta) -> bool,
) -> Result<Listing, ApiError> {
    let mut rows = Vec::new();
    let mut read = 0;
    loop {
        let metas = rt.list_prefix(tenant, key_prefix, after.as_ref(), 1000)?;
        let done = metas.len() < 1000;
        for m in metas {
            read += 1;
            after = Some(m.id.clone());
            if keep(&m) {
                rows.push(m);
                if rows.len() == size {
                    return Ok(Listing { rows, next: after.map(|a| ("after", a.to_string())), stopped: false });
                }
            }
        }
        if done {
            return Ok(Listing { rows, next: None, stopped: false });
        }
        if read >= MAX_SCAN {
            return Ok(Listing { rows, next: after.map(|a| ("after", a.to_string())), stopped: true });
        }
    }
}

/// A page of the workflows a filter matches: newest first from the
/// store's list index, or, with a text, the one a request id names or
/// those whose id starts with it (in id order).
fn page(
    rt: &Runtime,
    tenant: &str,
    f: &Parsed<'_>,
    before: Option<(u64, &WorkflowId)>,
    after: Option<WorkflowId>,
    size: usize,
) -> Result<Listing, ApiError> {
    let everything = f.query(tenant, None, size);
    let keep = |m: &Meta| everything.has(m);
    let own = format!("{}{tenant}.", WorkflowId::PREFIX);
    let text = f.text;
    if text.is_empty() {
        let mut rows = rt.list_page(tenant, &f.query(tenant, before, size + 1))?;
        let more = rows.len() > size;
        rows.truncate(size);
        let next = rows.last().filter(|_| more).map(|m| ("before", format!("{}:{}", m.created_ms, m.id)));
        return Ok(Listing { rows, next, stopped: false });
    }
    if let Some(key) = text.strip_prefix(&own) {
        return scan(rt, tenant, key, after, size, keep);
    }
    if text.starts_with(WorkflowId::PREFIX) {
        // Another tenant's id, or none: nothing of this tenant starts so.
        return Ok(Listing { rows: vec![], next: None, stopped: false });
    }
    // A request id names one workflow; else the text may start a key.
    let by_request = rt.workflow_for_request(tenant, text).ok().and_then(|id| rt.get(tenant, &id).ok());
    match by_request {
        Some(snap) if after.is_none() => {
            let rows = if keep(&snap.meta) { vec![snap.meta] } else { vec![] };
            Ok(Listing { rows, next: None, stopped: false })
        }
        _ if text.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) => {
            scan(rt, tenant, text, after, size, keep)
        }
        _ => Ok(Listing { rows: vec![], next: None, stopped: false }),
    }
}

/// The status shown for a workflow: a running one says what it waits on.
fn list_status(m: &Meta) -> Markup {
    html! {
        (status(m.status.as_str()))
        @if ListStatus::WaitingInvocation.has(m) { " " span.muted { "waiting on an invocation" } }
        @else if ListStatus::WaitingTimer.has(m) { " " span.muted { "waiting on a timer" } }
    }
}

pub async fn list(State(console): St, tenant: Tenant, Query(q): Query<ListQuery>) -> Result<Response, PageError> {
    let f = q.filter.parse()?;
    let before = parse_before(&q.before, &tenant.name)?;
    let after = match q.after.as_str() {
        "" => None,
        a => match WorkflowId::parse(a) {
            Ok(id) if tenant_of(&id) == tenant.name => Some(id),
            _ => return Err(PageError::BadRequest("after: not a workflow of this list".into())),
        },
    };
    let size = match q.size.as_str() {
        "" => PAGE_SIZE,
        n => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
            .ok_or_else(|| PageError::BadRequest(format!("size: 1 to {MAX_PAGE_SIZE} rows")))?,
    };
    let rt = &console.runtime;
    let listing = page(rt, &tenant.name, &f, before.as_ref().map(|(ms, id)| (*ms, id)), after, size)?;
    let size_pair = [("size", q.size.as_str())];
    let size_pair: &[(&str, &str)] = if q.size.is_empty() { &[] } else { &size_pair };
    let counts = rt.list_counts(&tenant.name, f.family)?;
    let packs: Vec<(String, Vec<String>)> = rt.packs(&tenant.name).into_iter().map(|(n, v, _)| (n, v)).collect();
    let versions: &[String] = packs.iter().find(|(n, _)| *n == q.filter.pack).map(|(_, v)| v.as_slice()).unwrap_or(&[]);
    let done = q.done.split_once('-').and_then(|(what, n)| Some((what, n.parse::<usize>().ok()?)));
    let filter = &q.filter;
    let first_page = q.before.is_empty() && q.after.is_empty();
    let running =
        f.status.is_none_or(|s| s != ListStatus::Completed && s != ListStatus::Failed && s != ListStatus::Cancelled);
    let body = html! {
        h1 { "Workflows" }
        @match done {
            Some(("cancelled", n)) => p.notice { "Cancelled " (n) " workflow(s); their cleanup rules run now." },
            Some(("signalled", n)) => p.notice { "Sent the signal to " (n) " workflow(s)." },
            _ => {},
        }
        nav.counts aria-label="Counts per status" {
            a href=(filter.with_status("").url(&[])) class=[filter.status.is_empty().then_some("on")] {
                "all " span.n { (counts.all) }
            }
            @for s in ListStatus::ALL {
                a href=(filter.with_status(s.as_str()).url(&[])) class=[(filter.status == s.as_str()).then_some("on")] {
                    (status(s.as_str())) " " span.n { (counts.of(s)) }
                }
            }
            @if f.since_ms.is_some() || f.until_ms.is_some() || !f.text.is_empty() {
                span.muted { " (counts of the pack and version, whatever the time or text)" }
            }
        }
        // The whole page follows the filter: its counts and the bulk forms
        // carry it too.
        form.filters method="get" action="/workflows" hx-get="/workflows" hx-trigger="change, submit" hx-target="main" hx-select="main" hx-swap="outerHTML" hx-push-url="true" {
            label { "Pack "
                select name="pack" {
                    option value="" { "any" }
                    @for (p, _) in &packs { option value=(p) selected[*p == filter.pack] { (p) } }
                }
            }
            label { "Version "
                select name="version" {
                    option value="" { "any" }
                    @for v in versions { option value=(v) selected[*v == filter.version] { (v) } }
                }
            }
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for s in ListStatus::ALL { option value=(s.as_str()) selected[s.as_str() == filter.status] { (s.as_str()) } }
                }
            }
            label { "Id or request id " input type="search" name="q" value=(filter.q) placeholder="wf_… or a request id" size="28"; }
            label { "Created from " input type="datetime-local" name="since" value=(filter.since) title="UTC"; }
            label { "before " input type="datetime-local" name="until" value=(filter.until) title="UTC"; " UTC" }
            button type="submit" { "Filter" }
        }
        @if running {
            div.bulk {
                form method="post" action="/workflows/cancel" {
                    input type="hidden" name="csrf" value=(tenant.csrf);
                    (filter.hidden())
                    button type="submit" { "Cancel the running workflows of this filter…" }
                }
                form method="post" action="/workflows/signal" {
                    input type="hidden" name="csrf" value=(tenant.csrf);
                    (filter.hidden())
                    button type="submit" { "Signal them…" }
                }
                span.muted { " (each asks to confirm, with how many)" }
            }
        }
        section #list {
            @if listing.rows.is_empty() {
                p.muted { "No workflow matches." }
            } @else {
                table.grid {
                    thead { tr { th { "Workflow" } th { "Pack" } th { "Version" } th { "Status" } th { "Turn" } th { "Created" } th { "Updated" } } }
                    tbody {
                        @for m in &listing.rows {
                            tr {
                                td { a href={ "/workflows/" (m.id) } { code { (m.id) } } }
                                td { (m.pack) }
                                td { (m.pack_version) }
                                td { (list_status(m)) }
                                td.num { (m.turn) }
                                td { (time(m.created_ms)) }
                                td { (time(m.updated_ms)) }
                            }
                        }
                    }
                }
            }
            nav.pager {
                @if !first_page { a href=(filter.url(size_pair)) { "« Newest" } }
                @if let Some((k, v)) = &listing.next {
                    a rel="next" href=(filter.url(&[size_pair, &[(k, v.as_str())]].concat())) { "Older »" }
                    @if listing.stopped { span.muted { " (read " (MAX_SCAN) " workflows without filling the page)" } }
                }
            }
        }
    };
    Ok(layout::page("Workflows", Some(&tenant), body).into_response())
}

/// A workflow id from a URL; a malformed one is a page that does not exist.
pub(super) fn parse_id(s: &str) -> Result<WorkflowId, PageError> {
    WorkflowId::parse(s).map_err(|_| PageError::NotFound(format!("workflow {} does not exist", shown(s))))
}

fn shown(s: &str) -> String {
    stoa_rules::diagnostic::shown(s).to_string()
}

#[derive(Deserialize, Default)]
pub struct ShowQuery {
    /// First timeline entry shown; unset: the latest page.
    #[serde(default)]
    from: Option<u64>,
    /// What the last action did (`cancelled`, `asserted`).
    #[serde(default)]
    done: String,
}

/// The assert form as sent, with what is wrong with it.
#[derive(Default)]
pub struct AssertState {
    ty: String,
    fields: String,
    type_errors: Vec<String>,
    field_errors: Vec<String>,
    /// Fields the errors name (marked in the schema table).
    bad_fields: BTreeSet<String>,
}

pub async fn show(
    State(console): St,
    tenant: Tenant,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Result<Response, PageError> {
    let id = parse_id(&id)?;
    let notice = match q.done.as_str() {
        "cancelled" => Some("Cancel requested."),
        "asserted" => Some("Fact asserted."),
        "signalled" => Some("Signal sent."),
        _ => None,
    };
    let page = workflow_page(&console, &tenant, &id, q.from, notice, AssertState::default()).await?;
    Ok(page.into_response())
}

/// Children shown at most, per workflow of the tree.
const MAX_CHILDREN: usize = 200;
/// Ancestors shown at most.
const MAX_ANCESTORS: usize = 16;
/// Signals emitted shown at most.
const MAX_SIGNALS_OUT: usize = 200;

async fn workflow_page(
    console: &Console,
    tenant: &Tenant,
    id: &WorkflowId,
    from: Option<u64>,
    notice: Option<&str>,
    assert: AssertState,
) -> Result<Markup, PageError> {
    let rt = &console.runtime;
    let snap = rt.get(&tenant.name, id)?;
    // What this server's dispatcher knows of the invocations it waits on:
    // in a cluster another server may hold them (their rows say so).
    let asked =
        snap.waiting.iter().take(500).map(|w| (w.invocation.id.clone(), w.invocation.function.clone())).collect();
    let inspected = rt.dispatch_state(&tenant.name, asked).await.unwrap_or_default();
    let m = &snap.meta;
    let last = m.timeline_seq;
    let from = from.unwrap_or_else(|| last.saturating_sub(TIMELINE_PAGE as u64 - 1)).max(1);
    let entries = rt.timeline(&tenant.name, id, from, TIMELINE_PAGE)?;
    let pack = rt.pack_version(&tenant.name, &m.pack, &m.pack_version);
    let running = m.status == Status::Running;
    let at_end = entries.last().is_none_or(|e| e.seq >= last);
    let base = format!("/workflows/{id}");
    let body = html! {
        @if let Some(n) = notice { (layout::notice(n)) }
        h1 { "Workflow " (copyable(id.as_str())) }
        dl.meta {
            dt { "Status" } dd #status { (status(m.status.as_str()))
                @if let Some(c) = &m.cancelling { " " span.muted { "cancelling: " (c.reason) } } }
            dt { "Pack" } dd { a href={ "/packs#" (m.pack) } { (m.pack) } " version " (m.pack_version) }
            dt { "Turn" } dd { (m.turn) }
            dt { "Created" } dd { (time(m.created_ms)) }
            dt { "Updated" } dd { (time(m.updated_ms)) }
            dt { "Origin" } dd { (origin(rt, &tenant.name, m)) }
            @if let Some(r) = &m.reason { dt { "Reason" } dd.error { (r) } }
            @if m.status == Status::Completed { dt { "Result" } dd { code { (m.result.to_string()) } } }
        }
        @if running && m.cancelling.is_none() {
            form.inline.danger method="post" action={ (base) "/cancel" } data-confirm="Cancel this workflow?" {
                input type="hidden" name="csrf" value=(tenant.csrf);
                input type="text" name="reason" placeholder="reason (optional)" maxlength="500";
                button.danger type="submit" { "Cancel workflow" }
            }
        }
        @if running {
            form.inline method="post" action={ (base) "/signal" } {
                input type="hidden" name="csrf" value=(tenant.csrf);
                input type="text" name="name" placeholder="signal name" required maxlength="200";
                input type="text" name="payload" placeholder="payload (JSON, optional)" size="30";
                button type="submit" { "Send signal" }
            }
        }
        (facts_section(&snap, &base))
        (waiting_section(rt, &tenant.name, &snap, &base, &inspected))
        (family_section(rt, &tenant.name, m)?)
        (signals_section(rt, &tenant.name, &snap)?)
        @if !snap.timers.is_empty() {
            section {
                h2 { "Pending timers (" (snap.timers.len()) ")" }
                table.grid { thead { tr { th { "Timer" } th { "Due" } th { "Fact type" } th { "Set by rule" } } }
                    tbody { @for t in &snap.timers { tr { td.num { (t.id) } td { (time(t.due_ms)) } td { (t.ty) } td { (rule_link(&base, &t.rule)) } } } } }
            }
        }
        @if running { (assert_section(tenant, &base, pack.as_deref(), &assert)) }
        section {
            h2 { "Timeline" }
            p { a href={ (base) "/graph?from=" (from) } { "Firing graph of these entries" } }
            (timeline_pager(&base, from, last, entries.len()))
            div #timeline data-live=[(running && at_end).then(|| format!("{base}/events?from={}", entries.last().map_or(from, |e| e.seq + 1)))] {
                @for (turn, group) in by_turn(&entries) { (turn_group(&base, turn, group)) }
            }
            (timeline_pager(&base, from, last, entries.len()))
        }
        @if let Some(p) = &pack {
            section {
                h2 { "Rules of " (m.pack) " " (m.pack_version) }
                p.muted { "Why does a rule fire, or not? Pick it:" }
                ul.rules { @for r in &p.rules { li { (rule_link(&base, &r.name)) } } }
            }
        }
    };
    Ok(layout::page(&format!("Workflow {id}"), Some(tenant), body))
}

fn rule_link(base: &str, rule: &str) -> Markup {
    html! { a href={ (base) "/rules/" (super::percent_encode(rule)) } { (rule) } }
}

fn fact_link(base: &str, id: u64) -> Markup {
    html! { a href={ (base) "/facts/" (id) } { "f" (id) } }
}

fn origin(rt: &Runtime, tenant: &str, m: &Meta) -> Markup {
    match &m.origin {
        Origin::Request => {
            let request = m.request.as_deref().and_then(|r| r.split_once('/')).map(|(_, r)| r).unwrap_or("");
            html! { "a client's start" @if !request.is_empty() { " (request id " code { (request) } ")" } }
        }
        Origin::Parent { invocation, .. } => match invocation.workflow() {
            Some(parent) if rt.get(tenant, &parent).is_ok() => {
                html! { "child of " a href={ "/workflows/" (parent) } { code { (parent) } } " (" code { (invocation) } ")" }
            }
            _ => html! { "child of a workflow no longer stored (" code { (invocation) } ")" },
        },
        Origin::Signal { signal } => html! { "signal " code { (signal) } },
        Origin::Schedule { schedule } => html! { "schedule " a href="/schedules" { (schedule) } },
    }
}

fn facts_section(snap: &Snapshot, base: &str) -> Markup {
    let mut by_type: BTreeMap<String, Vec<&stoa_engine::Fact>> = BTreeMap::new();
    for f in snap.facts.iter().take(MAX_FACTS_SHOWN) {
        by_type.entry(f.ty.to_string()).or_default().push(f);
    }
    html! {
        section {
            h2 { "Facts (" (snap.facts.len()) ")" }
            @if snap.facts.len() > MAX_FACTS_SHOWN { p.muted { "The first " (MAX_FACTS_SHOWN) " are shown." } }
            @for (ty, facts) in &by_type {
                @let columns: BTreeSet<String> = facts.iter().flat_map(|f| f.fields.iter().map(|(k, _)| k.to_string())).collect();
                h3 { (ty) " " span.muted { "(" (facts.len()) ")" } }
                div.scroll { table.grid.facts {
                    thead { tr { th { "Fact" } th { "Version" } @for c in &columns { th { (c) } } } }
                    tbody { @for f in facts {
                        tr {
                            td { (fact_link(base, f.id)) }
                            td.num { (f.version) }
                            @for c in &columns {
                                td { @if let Some(v) = f.fields.get(stoa_rules::Sym::new(c)) { (value(v)) } }
                            }
                        }
                    } }
                } }
            }
        }
    }
}

fn waiting_section(
    rt: &Runtime,
    tenant: &str,
    snap: &Snapshot,
    base: &str,
    inspected: &[crate::dispatch_handle::Inspected],
) -> Markup {
    if snap.waiting.is_empty() {
        return html! {};
    }
    html! {
        section {
            h2 { "Waiting invocations (" (snap.waiting.len()) ")" }
            table.grid {
                thead { tr {
                    th { "Invocation" } th { "Function" } th { "Rule" } th { "Matched" } th { "Arguments" } th { "Since" }
                    th { "State" } th { "Attempt" } th { "Worker" } th { "Deadline" }
                } }
                tbody { @for (i, w) in snap.waiting.iter().take(500).enumerate() {
                    @let d = inspected.get(i);
                    tr {
                        td { code { (w.invocation.id) } }
                        td {
                            @if let Some(pack) = w.invocation.function.strip_prefix(CHILD_PREFIX) {
                                "child " (pack)
                                @if let Ok(child) = rt.workflow_for_request(tenant, &format!("child:{}", w.invocation.id)) {
                                    " " a href={ "/workflows/" (child) } { "open" }
                                }
                            } @else { (w.invocation.function) }
                        }
                        td { (rule_link(base, &w.rule)) }
                        td { @for (id, v) in &w.matched { (fact_link(base, *id)) "@" (v) " " } }
                        td { code.clip { (clip(&w.invocation.args.to_string(), 200)) } }
                        td { (time(w.invocation.created_ms)) }
                        @match d {
                            Some(d) if !d.state.is_empty() => {
                                td { (d.state) @if d.state == "queued" && d.workers == 0 { " " span.error { "(no worker)" } } }
                                td.num title=[d.failed.last().map(|f| format!("last failure: {}", clip(&f.error, 300)))] {
                                    (d.attempt) " of " (w.invocation.retry.max_attempts)
                                    @if !d.failed.is_empty() { " " span.muted { "(" (d.failed.len()) " failed)" } }
                                }
                                td { @if let Some(sid) = d.session { a href="/workers" { "session " (sid) } } }
                                td {
                                    @if d.deadline_ms > 0 { (time(d.deadline_ms)) }
                                    @else if d.retry_at_ms > 0 { "retry " (time(d.retry_at_ms)) }
                                }
                            }
                            _ => { td.muted colspan="4" { "not on this server's dispatcher" } }
                        }
                    }
                } }
            }
        }
    }
}

/// The workflow among its own: its ancestors, it, and the children it
/// started (two levels down), each linked, with its status.
fn family_section(rt: &Runtime, tenant: &str, m: &Meta) -> Result<Markup, PageError> {
    let mut ancestors = Vec::new();
    let mut cur = m.origin.clone();
    while let Origin::Parent { invocation, .. } = cur {
        let Some(parent) = invocation.workflow().and_then(|p| rt.meta_of(tenant, &p).ok().flatten()) else { break };
        if ancestors.len() == MAX_ANCESTORS {
            break;
        }
        cur = parent.origin.clone();
        ancestors.push(parent);
    }
    let children = rt.children_of(tenant, &m.id, MAX_CHILDREN)?;
    if ancestors.is_empty() && children.is_empty() {
        return Ok(html! {});
    }
    let mut grandchildren = Vec::with_capacity(children.len());
    for c in &children {
        grandchildren.push(rt.children_of(tenant, &c.id, MAX_CHILDREN)?);
    }
    ancestors.reverse();
    let node = |w: &Meta, this: bool| {
        html! {
            @if this { b { code { (w.id) } } " (this one)" }
            @else { a href={ "/workflows/" (w.id) } { code { (w.id) } } }
            " " span.muted { (w.pack) " " (w.pack_version) } " " (list_status(w))
        }
    };
    fn nest(levels: &[Markup], inner: Markup) -> Markup {
        match levels.split_first() {
            None => inner,
            Some((first, rest)) => html! { ul.tree { li { (first) (nest(rest, inner)) } } },
        }
    }
    let up: Vec<Markup> = ancestors.iter().map(|a| node(a, false)).collect();
    let this = html! {
        ul.tree { li {
            (node(m, true))
            @if !children.is_empty() {
                ul.tree { @for (c, gc) in children.iter().zip(&grandchildren) {
                    li {
                        (node(c, false))
                        @if !gc.is_empty() { ul.tree { @for g in gc { li { (node(g, false)) } } } }
                    }
                } }
            }
        } }
    };
    Ok(html! {
        section #family {
            h2 { "Parent and children" }
            (nest(&up, this))
            @if children.len() == MAX_CHILDREN { p.muted { "The first " (MAX_CHILDREN) " children are shown." } }
        }
    })
}

/// Signals in (the `Signal` facts it holds, and the one that started it)
/// and out (those it emitted, with what they started and unblocked), each
/// linked to its lineage.
fn signals_section(rt: &Runtime, tenant: &str, snap: &Snapshot) -> Result<Markup, PageError> {
    let incoming: Vec<(String, String)> = snap
        .facts
        .iter()
        .filter(|f| &*f.ty.name() == "Signal")
        .filter_map(|f| {
            let j = f.fields.to_json();
            Some((j["id"].as_str()?.to_string(), j["name"].as_str().unwrap_or("").to_string()))
        })
        .take(MAX_SIGNALS_OUT)
        .collect();
    let started_by = match &snap.meta.origin {
        Origin::Signal { signal } => Some(signal.clone()),
        _ => None,
    };
    let out = rt.emitted_by(tenant, &snap.meta.id, MAX_SIGNALS_OUT)?;
    if incoming.is_empty() && started_by.is_none() && out.is_empty() {
        return Ok(html! {});
    }
    let link = |id: &str| html! { a href={ "/signals/" (super::percent_encode(id)) } { code { (id) } } };
    let wf_links = |ids: &[WorkflowId]| html! { @for w in ids { a href={ "/workflows/" (w) } { code { (w) } } " " } };
    Ok(html! {
        section #signals {
            h2 { "Signals" }
            @if let Some(s) = &started_by { p { "Started by signal " (link(s)) "." } }
            @if !incoming.is_empty() {
                h3 { "In (" (incoming.len()) ")" }
                table.grid { thead { tr { th { "Signal" } th { "Name" } } }
                    tbody { @for (id, name) in &incoming { tr { td { (link(id)) } td { (name) } } } } }
            }
            @if !out.is_empty() {
                h3 { "Out (" (out.len()) ")" }
                table.grid { thead { tr { th { "Signal" } th { "Name" } th { "Started" } th { "Delivered to" } } }
                    tbody { @for r in &out { tr {
                        td { (link(&r.signal.id)) } td { (r.signal.name) }
                        td { (wf_links(&r.started)) } td { (wf_links(&r.delivered)) }
                    } } } }
            }
        }
    })
}

/// `/signals/{id}`: a signal's lineage: the signals upstream of it, it,
/// and what its workflows emitted in turn, each with the workflows it
/// started and unblocked. Another tenant's signal does not exist here.
pub async fn signal_page(State(console): St, tenant: Tenant, Path(id): Path<String>) -> Result<Response, PageError> {
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        return Err(PageError::NotFound(format!("signal {} was never sent", shown(&id))));
    }
    let chain = console.runtime.lineage(&tenant.name, &id)?;
    let wf_link = |w: &WorkflowId| html! { a href={ "/workflows/" (w) } { code { (w) } } };
    let body = html! {
        h1 { "Signal " (copyable(&id)) }
        p.muted { "Its lineage: the signals upstream of it, then it and what the workflows it reached emitted." }
        table.grid {
            thead { tr { th { "Signal" } th { "Name" } th { "Emitted by" } th { "At" } th { "Started" } th { "Delivered to" } } }
            tbody { @for (depth, r) in &chain {
                tr class=[(r.signal.id == id).then_some("on")] {
                    td class={ "depth d" ((*depth).min(8)) } {
                        a href={ "/signals/" (super::percent_encode(&r.signal.id)) } { code { (r.signal.id) } }
                    }
                    td { (r.signal.name) }
                    td { @match &r.signal.from { Some(w) => (wf_link(w)), None => span.muted { "a client" } } }
                    td { (time(r.signal.at_ms)) }
                    td { @for w in &r.started { (wf_link(w)) " " } }
                    td { @for w in &r.delivered { (wf_link(w)) " " } }
                }
            } }
        }
    };
    Ok(layout::page(&format!("Signal {id}"), Some(&tenant), body).into_response())
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn assert_section(tenant: &Tenant, base: &str, pack: Option<&stoa_rules::compile::Pack>, a: &AssertState) -> Markup {
    let schemas = pack.map(|p| &p.manifest.facts);
    let schema = schemas.and_then(|s| s.get(&a.ty));
    html! {
        details.assert open[!a.type_errors.is_empty() || !a.field_errors.is_empty()] {
            summary { "Assert a fact" }
            form.assert method="post" action={ (base) "/facts" } {
                input type="hidden" name="csrf" value=(tenant.csrf);
                div.field class=[(!a.type_errors.is_empty()).then_some("invalid")] {
                    label for="assert-type" { "Type" }
                    input #assert-type type="text" name="type" value=(a.ty) list="fact-types" required maxlength="128"
                        aria-invalid=[(!a.type_errors.is_empty()).then_some("true")];
                    @if let Some(s) = schemas { datalist #fact-types { @for t in s.keys() { option value=(t) {} } } }
                    @for e in &a.type_errors { p.error role="alert" { (e) } }
                }
                div.field class=[(!a.field_errors.is_empty()).then_some("invalid")] {
                    label for="assert-fields" { "Fields (a JSON object)" }
                    textarea #assert-fields name="fields" rows="3" cols="60" placeholder=r#"{"status": "approved"}"#
                        aria-invalid=[(!a.field_errors.is_empty()).then_some("true")] { (a.fields) }
                    @for e in &a.field_errors { p.error role="alert" { (e) } }
                }
                @if let Some(s) = schema {
                    table.grid.schema {
                        caption { "Schema of " (a.ty) }
                        thead { tr { th { "Field" } th { "Type" } th { "Required" } } }
                        tbody { @for (name, spec) in &s.fields {
                            tr class=[a.bad_fields.contains(name).then_some("invalid")] {
                                td { (name) } td { (spec.ty.name()) }
                                td { @if spec.optional { "no" } @else if spec.default.is_some() { "default " (value(spec.default.as_ref().unwrap_or(&stoa_rules::Value::Null))) } @else { "yes" } }
                            }
                        } }
                    }
                }
                button type="submit" { "Assert" }
            }
        }
    }
}

pub(super) fn timeline_pager(base: &str, from: u64, last: u64, shown: usize) -> Markup {
    let page = TIMELINE_PAGE as u64;
    let end = from + shown as u64; // first entry after this page
    html! {
        nav.pager {
            span.muted { "entries " (from) "–" (end.saturating_sub(1).max(from)) " of " (last) " " }
            @if from > 1 {
                a href={ (base) "?from=1" } { "« First" } " "
                a href={ (base) "?from=" (from.saturating_sub(page).max(1)) } { "‹ Older" } " "
            }
            @if end <= last {
                a href={ (base) "?from=" (end) } { "Newer ›" } " "
                a href={ (base) } { "Latest »" }
            }
        }
    }
}

/// Entries grouped by turn, in order.
fn by_turn(entries: &[Entry]) -> Vec<(u64, &[Entry])> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=entries.len() {
        if i == entries.len() || entries[i].turn != entries[start].turn {
            out.push((entries[start].turn, &entries[start..i]));
            start = i;
        }
    }
    out
}

fn turn_group(base: &str, turn: u64, entries: &[Entry]) -> Markup {
    let input = entries.iter().find_map(|e| match &e.event {
        Event::TurnStarted { input } => Some(input.as_str()),
        _ => None,
    });
    let failed = entries.iter().any(|e| matches!(e.event, Event::TurnFailed { .. }));
    html! {
        details.turn open class=[failed.then_some("failed")] data-turn=(turn) {
            summary {
                "turn " (turn)
                @if let Some(i) = input { " · " (clip(i, 160)) }
                @if let Some(e) = entries.first() { " · " (time(e.at_ms)) }
            }
            ol.entries { @for e in entries { (entry_item(base, e)) } }
        }
    }
}

pub fn entry_kind(e: &Event) -> &'static str {
    match e {
        Event::TurnStarted { .. } => "turn_started",
        Event::Fired { .. } => "fired",
        Event::Inserted { .. } => "inserted",
        Event::Modified { .. } => "modified",
        Event::Retracted { .. } => "retracted",
        Event::Invoked(_) => "invoked",
        Event::ResultApplied { .. } => "result_applied",
        Event::AttemptFailed(_) => "attempt_failed",
        Event::InvocationCancelled { .. } => "invocation_cancelled",
        Event::Log { .. } => "log",
        Event::Completed { .. } => "completed",
        Event::Failed { .. } => "failed",
        Event::Cancelled { .. } => "cancelled",
        Event::TurnFailed { .. } => "turn_failed",
        Event::TurnCommitted { .. } => "turn_committed",
        Event::TimerSet { .. } => "timer_set",
        Event::TimerFired { .. } => "timer_fired",
        Event::TimerCancelled { .. } => "timer_cancelled",
        Event::SignalEmitted(_) => "signal_emitted",
        Event::Upgraded(_) => "upgraded",
        Event::UpgradeFailed { .. } => "upgrade_failed",
    }
}

fn entry_item(base: &str, e: &Entry) -> Markup {
    let link = match &e.event {
        Event::Fired { rule, .. } => {
            Some(html! { a.why href={ (base) "/rules/" (super::percent_encode(rule)) } { "why" } })
        }
        Event::Inserted { id, .. } | Event::Modified { id, .. } => Some(fact_link(base, *id)),
        _ => None,
    };
    html! {
        li class={ "e " (entry_kind(&e.event)) } id={ "e" (e.seq) } {
            span.seq { (e.seq) } " "
            span.text { (clip(&e.line(), 2000)) }
            @if let Some(l) = link { " " (l) }
        }
    }
}

/// `/workflows/{id}/events?from=N`: the timeline from entry N on, as
/// server-sent events (`turn`: a new turn's group; `entry`: an entry of
/// the last group; `end`: the workflow finished). Read from the store
/// (durable entries only); the runtime's live feed only wakes it.
pub async fn events(
    State(console): St,
    tenant: Tenant,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let id = parse_id(&id)?;
    let rt = console.runtime.clone();
    let mut live = rt.subscribe(&id);
    let snap = match rt.get(&tenant.name, &id) {
        Ok(s) => s,
        Err(e) => {
            drop(live);
            rt.unsubscribe_if_idle(&id);
            return Err(e.into());
        }
    };
    // A reconnecting EventSource says where it was.
    let resumed = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let mut next = resumed.map(|s| s + 1).or(q.from).unwrap_or(snap.meta.timeline_seq + 1).max(1);
    let mut last_turn = if next > 1 {
        rt.timeline(&tenant.name, &id, next - 1, 1).ok().and_then(|e| e.first().map(|e| e.turn)).unwrap_or(0)
    } else {
        0
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, Infallible>>(16);
    let base = format!("/workflows/{id}");
    let stop = console.stop.clone();
    // Owned by the connection: it ends when the browser goes (its next
    // send fails, within a second), the workflow ends, or the server stops.
    tokio::spawn(async move {
        let started = Instant::now();
        while let Ok(entries) = rt.timeline(&tenant.name, &id, next, TIMELINE_PAGE) {
            let mut out = String::new();
            let mut ended = false;
            for e in &entries {
                next = e.seq + 1;
                ended |= matches!(e.event, Event::Completed { .. } | Event::Failed { .. } | Event::Cancelled { .. });
                if e.turn != last_turn {
                    last_turn = e.turn;
                    sse(&mut out, "turn", e.seq, &turn_group(&base, e.turn, std::slice::from_ref(e)).into_string());
                } else {
                    sse(&mut out, "entry", e.seq, &entry_item(&base, e).into_string());
                }
            }
            if entries.is_empty() {
                // Finished with nothing left to send.
                match rt.get(&tenant.name, &id) {
                    Ok(s) if s.meta.status != Status::Running && next > s.meta.timeline_seq => ended = true,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            if ended {
                out.push_str("event: end\ndata: \n\n");
            }
            if !out.is_empty() && tx.send(Ok(out)).await.is_err() {
                break;
            }
            if ended || started.elapsed() > Duration::from_secs(1800) {
                break;
            }
            if entries.len() == TIMELINE_PAGE {
                continue;
            }
            // A new entry, or a second: in a cluster the workflow may
            // run elsewhere, and its entries reach this store only.
            tokio::select! {
                _ = stop.cancelled() => break,
                r = live.recv() => if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) { break },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if tx.send(Ok(": keep-alive\n\n".into())).await.is_err() { break }
                }
            }
        }
        drop(live);
        rt.unsubscribe_if_idle(&id);
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-store")], body).into_response())
}

/// One server-sent event; every line of `data` gets its own `data:`.
fn sse(out: &mut String, event: &str, id: u64, data: &str) {
    out.push_str("event: ");
    out.push_str(event);
    out.push_str("\nid: ");
    out.push_str(&id.to_string());
    out.push('\n');
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.trim_end_matches('\r'));
        out.push('\n');
    }
    out.push('\n');
}

#[derive(Deserialize)]
pub struct CancelForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

/// Runs a turn on its own task: a browser that goes away must not cancel
/// it between its commit and what follows (see `api::detached`).
pub(crate) async fn detached<T: Send + 'static>(
    f: impl std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, PageError> {
    match tokio::spawn(f).await {
        Ok(r) => r.map_err(PageError::from),
        Err(_) => Err(PageError::Internal),
    }
}

pub async fn cancel(
    State(console): St,
    tenant: Tenant,
    Path(id): Path<String>,
    Form(form): Form<CancelForm>,
) -> Result<Response, PageError> {
    tenant.check_csrf(&form.csrf)?;
    let id = parse_id(&id)?;
    let reason = form.reason.trim();
    if reason.len() > 500 || reason.chars().any(char::is_control) {
        return Err(PageError::BadRequest("reason: at most 500 characters, without control characters".into()));
    }
    let reason = if reason.is_empty() { "cancelled from the console".to_string() } else { reason.to_string() };
    console.runtime.get(&tenant.name, &id)?;
    let (rt, t, wf) = (console.runtime.clone(), tenant.name.clone(), id.clone());
    let out = detached(async move { rt.turn(&t, &wf, Input::Cancel { reason, grace_ms: None }).await }).await?;
    if let Some(e) = out.error {
        return Err(PageError::Conflict(e));
    }
    Ok(Redirect::to(&format!("/workflows/{id}?done=cancelled")).into_response())
}

/// At most this many workflows are cancelled or signalled by one bulk
/// action.
const BULK_MAX: usize = 10_000;

/// A bulk action's form: the list's filter, what to do, and on the
/// second post the count the confirmation showed.
#[derive(Deserialize)]
pub struct BulkForm {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    filter: Filter,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    payload: String,
    /// How many the confirmation page said; absent: show it. A string,
    /// since flattened forms hand every value over as text.
    #[serde(default)]
    confirm: String,
}

/// The running workflows a filter matches (whatever status it names
/// besides, bulk actions only act on running ones), at most `BULK_MAX`;
/// whether there may be more.
fn running_matches(rt: &Runtime, tenant: &str, filter: &Filter) -> Result<(Vec<WorkflowId>, bool), PageError> {
    let f = filter.parse()?;
    let status = match f.status {
        None => ListStatus::Running,
        Some(s) if ListStatus::Running.includes(s) => s,
        Some(_) => return Ok((Vec::new(), false)),
    };
    let f = Parsed { status: Some(status), ..f };
    let (mut out, mut before, mut after): (Vec<WorkflowId>, Option<(u64, WorkflowId)>, Option<WorkflowId>) =
        (Vec::new(), None, None);
    loop {
        let l = page(rt, tenant, &f, before.as_ref().map(|(ms, id)| (*ms, id)), after.clone(), 1000)?;
        if let Some(last) = l.rows.last() {
            before = Some((last.created_ms, last.id.clone()));
        }
        for m in l.rows {
            if out.len() == BULK_MAX {
                return Ok((out, true));
            }
            out.push(m.id);
        }
        match l.next {
            Some(("after", a)) => after = Some(WorkflowId::new(a)),
            Some(_) => {}
            None => return Ok((out, false)),
        }
    }
}

/// The confirmation of a bulk action: how many, what, and the form that
/// does it carrying that count.
fn confirm_page(tenant: &Tenant, action: &str, form: &BulkForm, n: usize, more: bool, fields: Markup) -> Response {
    let verb = if action == "cancel" { "Cancel" } else { "Signal" };
    let body = html! {
        h1 { (verb) " " (n) " running workflow(s)?" }
        p { "Matching the filter: " (describe(&form.filter)) "." }
        @if more { p.muted { "(at most " (BULK_MAX) " at once; run it again for the rest)" } }
        @if action == "cancel" {
            p { "Each runs its pack's cleanup rules (a Cancelled fact), then ends as cancelled. This cannot be undone." }
        } @else {
            p { "Each gets a Signal fact with this name and payload (a signal id of its own)." }
        }
        form method="post" action={ "/workflows/" (action) } {
            input type="hidden" name="csrf" value=(tenant.csrf);
            (form.filter.hidden())
            input type="hidden" name="confirm" value=(n);
            (fields)
            " "
            button.danger type="submit" disabled[n == 0] { (verb) " " (n) }
            " " a href=(form.filter.url(&[])) { "Back" }
        }
    };
    layout::page(&format!("{verb} workflows"), Some(tenant), body).into_response()
}

/// A filter in words, for a confirmation.
fn describe(f: &Filter) -> String {
    let mut parts = Vec::new();
    for (k, v) in f.pairs() {
        let v = shown(v);
        parts.push(match k {
            "since" => format!("created from {v} UTC"),
            "until" => format!("created before {v} UTC"),
            "q" => format!("id or request id “{v}”"),
            k => format!("{k} {v}"),
        });
    }
    if parts.is_empty() {
        "every workflow".into()
    } else {
        parts.join(", ")
    }
}

/// The count confirmed, if this is the second post; refused when more
/// match now than were confirmed (nothing is done then).
fn confirmed(form: &BulkForm, matching: usize) -> Result<Option<usize>, PageError> {
    if form.confirm.is_empty() {
        return Ok(None);
    }
    let n: usize =
        form.confirm.parse().map_err(|_| PageError::BadRequest("confirm: the count the confirmation showed".into()))?;
    if matching > n {
        return Err(PageError::Conflict(format!(
            "{matching} running workflows match now, {n} confirmed; nothing was done: confirm again"
        )));
    }
    Ok(Some(n))
}

fn reason_of(form: &BulkForm) -> Result<String, PageError> {
    let reason = form.reason.trim();
    if reason.len() > 500 || reason.chars().any(char::is_control) {
        return Err(PageError::BadRequest("reason: at most 500 characters, without control characters".into()));
    }
    Ok(if reason.is_empty() { "cancelled from the console".to_string() } else { reason.to_string() })
}

/// `POST /workflows/cancel`: cancels the running workflows of the list's
/// filter. The first post shows how many and asks to confirm; the second,
/// carrying that number, cancels them (their cleanup rules run, as `stoa
/// cancel`).
pub async fn cancel_many(
    State(console): St,
    tenant: Tenant,
    Form(form): Form<BulkForm>,
) -> Result<Response, PageError> {
    tenant.check_csrf(&form.csrf)?;
    let reason = reason_of(&form)?;
    let (rt, t, filter) = (console.runtime.clone(), tenant.name.clone(), form.filter.clone());
    let (ids, more) = console
        .runtime
        .blocking(move || running_matches(&rt, &t, &filter))
        .await
        .map_err(|_| PageError::Internal)??;
    if confirmed(&form, ids.len())?.is_none() {
        let fields = html! { label { "Reason " input type="text" name="reason" value=(reason) size="40"; } };
        return Ok(confirm_page(&tenant, "cancel", &form, ids.len(), more, fields));
    }
    let (rt, t) = (console.runtime.clone(), tenant.name.clone());
    let cancelled = detached(async move {
        let mut n = 0usize;
        for id in ids {
            // Ended meanwhile, or moved: not this action's concern.
            if let Ok(out) = rt.turn(&t, &id, Input::Cancel { reason: reason.clone(), grace_ms: None }).await {
                n += usize::from(out.error.is_none());
            }
        }
        Ok(n)
    })
    .await?;
    Ok(Redirect::to(&form.filter.url(&[("done", &format!("cancelled-{cancelled}"))])).into_response())
}

/// A signal's name and JSON payload from a form, checked.
fn signal_input(name: &str, payload: &str) -> Result<(String, serde_json::Value), PageError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(PageError::BadRequest("name: required, at most 200 bytes, without control characters".into()));
    }
    if payload.len() > 64 * 1024 {
        return Err(PageError::BadRequest("payload: at most 64 KiB".into()));
    }
    let payload = match payload.trim() {
        "" => serde_json::Value::Null,
        text => serde_json::from_str(text).map_err(|e| PageError::BadRequest(format!("payload: not JSON: {e}")))?,
    };
    Ok((name.to_string(), payload))
}

/// A new signal id of the console's: `console-` and 96 random bits.
fn console_signal_id() -> Result<String, PageError> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|_| PageError::Internal)?;
    Ok(format!("console-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// `POST /workflows/signal`: a signal to each running workflow of the
/// list's filter, confirmed as `cancel_many` is. Each gets a signal id of
/// its own (`console-<random>-<n>`), routed by the coordinator.
pub async fn signal_many(
    State(console): St,
    tenant: Tenant,
    Form(form): Form<BulkForm>,
) -> Result<Response, PageError> {
    tenant.check_csrf(&form.csrf)?;
    let (rt, t, filter) = (console.runtime.clone(), tenant.name.clone(), form.filter.clone());
    let (ids, more) = console
        .runtime
        .blocking(move || running_matches(&rt, &t, &filter))
        .await
        .map_err(|_| PageError::Internal)??;
    if confirmed(&form, ids.len())?.is_none() {
        let fields = html! {
            label { "Signal name " input type="text" name="name" value=(form.name) required size="20"; }
            " "
            label { "Payload (JSON) " input type="text" name="payload" value=(form.payload) placeholder="{}" size="30"; }
        };
        return Ok(confirm_page(&tenant, "signal", &form, ids.len(), more, fields));
    }
    let (name, payload) = signal_input(&form.name, &form.payload)?;
    if !matches!(console.runtime.opts.placement.coordinator(), crate::placement::Place::Here(_)) {
        return Err(PageError::Conflict("the cluster's coordinator routes signals: use its console".into()));
    }
    let base = console_signal_id()?;
    let (rt, t) = (console.runtime.clone(), tenant.name.clone());
    let payload = stoa_rules::Value::from_json(&payload);
    let sent = detached(async move {
        let mut n = 0usize;
        for (i, id) in ids.into_iter().enumerate() {
            let signal = stoa_engine::workflow::Signal {
                id: format!("{base}-{i}"),
                name: name.clone(),
                payload: payload.clone(),
                from: None,
                at_ms: rt.clock.now_ms(),
            };
            n += usize::from(rt.route_signal(&t, signal, Some(id)).await.is_ok());
        }
        Ok(n)
    })
    .await?;
    Ok(Redirect::to(&form.filter.url(&[("done", &format!("signalled-{sent}"))])).into_response())
}

#[derive(Deserialize)]
pub struct SignalForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    payload: String,
}

/// `POST /workflows/{id}/signal`: a signal to this workflow (a `Signal`
/// fact with the name and JSON payload), with a new signal id; routed as
/// the API routes it, so the cluster's coordinator does it.
pub async fn signal(
    State(console): St,
    tenant: Tenant,
    Path(id): Path<String>,
    Form(form): Form<SignalForm>,
) -> Result<Response, PageError> {
    tenant.check_csrf(&form.csrf)?;
    let id = parse_id(&id)?;
    let (name, payload) = signal_input(&form.name, &form.payload)?;
    // Another tenant's workflow does not exist for this one.
    console.runtime.get(&tenant.name, &id)?;
    if !matches!(console.runtime.opts.placement.coordinator(), crate::placement::Place::Here(_)) {
        return Err(PageError::Conflict("the cluster's coordinator routes signals: use its console".into()));
    }
    let signal = stoa_engine::workflow::Signal {
        id: console_signal_id()?,
        name,
        payload: stoa_rules::Value::from_json(&payload),
        from: None,
        at_ms: console.runtime.clock.now_ms(),
    };
    let (rt, t, wf) = (console.runtime.clone(), tenant.name.clone(), id.clone());
    detached(async move { rt.route_signal(&t, signal, Some(wf)).await }).await?;
    Ok(Redirect::to(&format!("/workflows/{id}?done=signalled")).into_response())
}

#[derive(Deserialize)]
pub struct AssertForm {
    #[serde(default)]
    csrf: String,
    #[serde(default, rename = "type")]
    ty: String,
    #[serde(default)]
    fields: String,
}

pub async fn assert(
    State(console): St,
    tenant: Tenant,
    Path(id): Path<String>,
    Form(form): Form<AssertForm>,
) -> Result<Response, PageError> {
    tenant.check_csrf(&form.csrf)?;
    let id = parse_id(&id)?;
    let snap = console.runtime.get(&tenant.name, &id)?;
    let pack = console.runtime.pack_version(&tenant.name, &snap.meta.pack, &snap.meta.pack_version);
    let mut state =
        AssertState { ty: form.ty.trim().to_string(), fields: form.fields.clone(), ..AssertState::default() };
    let fields = check_assert(pack.as_deref(), &mut state);
    if let Some(fields) = fields {
        let facts = vec![FactSpec { ty: state.ty.clone(), fields }];
        let (rt, t, wf) = (console.runtime.clone(), tenant.name.clone(), id.clone());
        match detached(async move { rt.turn(&t, &wf, Input::Assert { facts }).await }).await {
            Ok(out) if out.error.is_none() => {
                return Ok(Redirect::to(&format!("/workflows/{id}?done=asserted")).into_response());
            }
            Ok(out) => state.field_errors.push(format!("the turn failed: {}", out.error.unwrap_or_default())),
            Err(PageError::BadRequest(m) | PageError::Conflict(m)) => state.field_errors.push(m),
            Err(e) => return Err(e),
        }
    }
    let page = workflow_page(&console, &tenant, &id, None, None, state).await?;
    Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
}

/// The fields of a fact to assert, or `None` with the errors in `state`:
/// the type's name, the JSON, field names, then the pack's schema (every
/// violation, each naming its field).
pub(crate) fn check_assert(pack: Option<&stoa_rules::compile::Pack>, state: &mut AssertState) -> Option<Fields> {
    if !stoa_rules::value::valid_type_name(&state.ty) {
        state.type_errors.push(format!("`{}`: {}", shown(&state.ty), stoa_rules::sandbox::TYPE_NAME_RULE));
    }
    let text = if state.fields.trim().is_empty() { "{}" } else { state.fields.as_str() };
    let fields = match serde_json::from_str::<serde_json::Value>(text) {
        Err(e) => {
            state.field_errors.push(format!("not JSON: {e}"));
            None
        }
        Ok(v) => match Fields::from_json(&v) {
            None => {
                state.field_errors.push("must be a JSON object".into());
                None
            }
            Some(f) => Some(f),
        },
    };
    let fields = fields?;
    for (k, _) in fields.iter() {
        let name = k.to_string();
        if name.is_empty() || name.len() > 128 || name.starts_with('_') || name.chars().any(char::is_control) {
            state.field_errors.push(format!("field `{}`: 1 to 128 characters, not starting with `_`", shown(&name)));
            state.bad_fields.insert(name);
        }
    }
    if let Some(pack) = pack.filter(|_| state.type_errors.is_empty()) {
        match pack.manifest.facts.get(&state.ty) {
            Some(schema) => {
                for v in schema.violations_new(&state.ty, &fields) {
                    // "Type.field …": mark the field.
                    if let Some(f) = v.strip_prefix(&format!("{}.", state.ty)).and_then(|r| r.split(' ').next()) {
                        state.bad_fields.insert(f.to_string());
                    }
                    state.field_errors.push(v);
                }
            }
            None if pack.manifest.strict_facts && !stoa_rules::manifest::BUILTIN_TYPES.contains(&state.ty.as_str()) => {
                state.type_errors.push(format!(
                    "{} has no schema in pack.toml, and the pack is strict (`[facts] strict = true`)",
                    shown(&state.ty)
                ));
            }
            None => {}
        }
    }
    (state.type_errors.is_empty() && state.field_errors.is_empty()).then_some(fields)
}
