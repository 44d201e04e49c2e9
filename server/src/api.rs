//! The `Stoa` service: what clients call. Each handler checks its input
//! (naming the field that is wrong), then asks the runtime.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use stoa_engine::timeline::{Entry, Event};
use stoa_engine::workflow::{Input, Signal, Status as WfStatus, Workflow};
use stoa_engine::{Fact, WorkflowId};
use stoa_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::auth::tenant;
use crate::input;
use crate::placement::Place;
use crate::rollout::Rollout;
use crate::runtime::Runtime;
use crate::schedule::api as sched;
use crate::upgrade::{Mode, UpgradeJob};

pub struct StoaService {
    pub runtime: Arc<Runtime>,
    pub schedules: Arc<crate::schedule::Scheduler>,
}

/// Marks a call sent on to the cluster's coordinator: not sent on again.
const FORWARDED: &str = "x-stoa-forwarded";

impl StoaService {
    /// Where a call the cluster answers once goes (schedules, deploys,
    /// rollouts and their upgrade jobs): `None` here, else a channel to the
    /// coordinator (see `placement`).
    fn coordinator_elsewhere<T>(&self, req: &Request<T>) -> Result<Option<tonic::transport::Channel>, Status> {
        let unavailable = |m: &str| Err(Status::unavailable(format!("{m}; retry")));
        match self.runtime.opts.placement.coordinator() {
            Place::Here(_) => Ok(None),
            _ if req.metadata().get(FORWARDED).is_some() => unavailable("the cluster's coordinator is moving"),
            Place::There(address) => match &self.runtime.opts.peers {
                Some(peers) => Ok(Some(peers.channel(&address)?)),
                None => unavailable("no peers"),
            },
            Place::Nobody(_) => unavailable("the cluster has no coordinator now (a server left)"),
        }
    }
}

impl StoaService {
    /// A page of a tenant's workflows newest first (by start time, then
    /// id), after the page token's place in that order.
    ///
    /// The store keeps workflows in id order (ids are hashes), so each page
    /// reads every workflow of the tenant once, in chunks, and keeps only
    /// the `size` first in this order (a bounded heap: memory for one
    /// page, time linear in the tenant's workflows). The token is the last
    /// one shown (`<created ms hex>:<id>`), so paging neither repeats nor
    /// skips a workflow; ones started meanwhile come before the first page.
    /// A page newest first, from the store's list index: reads the page,
    /// not the workflows before it.
    fn newest_first(
        &self,
        tenant: &str,
        token: &str,
        size: usize,
        pack: &str,
        status: &str,
        summary: impl Fn(stoa_engine::workflow::Meta) -> pb::WorkflowSummary,
    ) -> Result<(Vec<pb::WorkflowSummary>, String), Status> {
        use stoa_engine::store::{Family, ListQuery, ListStatus};
        let cursor = match token {
            "" => None,
            t => {
                let bad = || Status::invalid_argument("page_token: not a token from this API (with newest_first)");
                let (ms, id) = t.split_once(':').ok_or_else(bad)?;
                let id = workflow_id(id).map_err(|_| bad())?;
                Some((u64::from_str_radix(ms, 16).map_err(|_| bad())?, id))
            }
        };
        let q = ListQuery {
            tenant,
            family: if pack.is_empty() { Family::All } else { Family::Pack(pack) },
            status: ListStatus::parse(status),
            since_ms: None,
            until_ms: None,
            before: cursor.as_ref().map(|(ms, id)| (*ms, id)),
            limit: size + 1,
        };
        let mut metas = self.runtime.list_page(tenant, &q)?;
        let more = metas.len() > size;
        metas.truncate(size);
        let next = match metas.last() {
            Some(m) if more => format!("{:x}:{}", m.created_ms, m.id),
            _ => String::new(),
        };
        Ok((metas.into_iter().map(summary).collect(), next))
    }
}

/// A client's call, as the coordinator gets it: the same body and token,
/// in this server's span of it.
fn onward<T>(req: Request<T>) -> Request<T> {
    let auth = req.metadata().get("authorization").cloned();
    let mut out = Request::new(req.into_inner());
    if let Some(a) = auth {
        out.metadata_mut().insert("authorization", a);
    }
    stoa_telemetry::inject(&tracing::Span::current(), out.metadata_mut());
    out.metadata_mut().insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    out
}

/// Sends the call on to the coordinator unless this server is it.
macro_rules! at_coordinator {
    ($self:ident, $req:ident, $method:ident) => {
        if let Some(channel) = $self.coordinator_elsewhere(&$req)? {
            let mut client = pb::stoa_client::StoaClient::new(channel)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX);
            return client.$method(onward($req)).await;
        }
    };
}

fn workflow_id(s: &str) -> Result<WorkflowId, Status> {
    if s.is_empty() {
        return Err(Status::invalid_argument("workflow_id: required"));
    }
    WorkflowId::parse(s).map_err(|e| Status::invalid_argument(format!("workflow_id: {e}")))
}

fn fact_out(f: &Fact) -> pb::Fact {
    pb::Fact { id: f.id, r#type: f.ty.to_string(), version: f.version, fields_json: f.fields.to_json().to_string() }
}

pub fn entry_out(e: &Entry) -> pb::TimelineEntry {
    let json = serde_json::to_value(e).unwrap_or_default();
    pb::TimelineEntry {
        seq: e.seq,
        turn: e.turn,
        at_ms: e.at_ms,
        kind: json["event"]["kind"].as_str().unwrap_or_default().to_string(),
        json: json.to_string(),
        text: e.line(),
    }
}

fn turn_out(out: &stoa_engine::TurnOutput) -> pb::TurnResponse {
    pb::TurnResponse {
        turn: out.turn,
        status: out.meta.as_ref().map(|m| m.status.as_str()).unwrap_or_default().to_string(),
        error: out.error.clone().unwrap_or_default(),
    }
}

fn diag_out(d: &stoa_rules::Diagnostic) -> pb::Diagnostic {
    pb::Diagnostic {
        path: d.path.display().to_string(),
        line: d.pos.line,
        col: d.pos.col,
        severity: if d.is_error() { "error" } else { "warning" }.into(),
        code: d.code.as_str().into(),
        message: d.message.clone(),
    }
}

/// A workflow as `GetWorkflow` answers, with what the dispatcher knows of
/// its waiting invocations (`inspected`, in the order of `snap.waiting`).
fn workflow_out(
    snap: stoa_engine::workflow::Snapshot,
    without_facts: bool,
    inspected: Option<Vec<crate::dispatch_handle::Inspected>>,
) -> pb::Workflow {
    let m = &snap.meta;
    let mut inspected = inspected.unwrap_or_default().into_iter();
    pb::Workflow {
        id: m.id.to_string(),
        pack: m.pack.clone(),
        pack_version: m.pack_version.clone(),
        status: m.status.as_str().into(),
        result_json: m.result.to_string(),
        reason: m.reason.clone().unwrap_or_default(),
        turn: m.turn,
        created_ms: m.created_ms,
        updated_ms: m.updated_ms,
        fact_count: snap.facts.len() as u64,
        facts: if without_facts { vec![] } else { snap.facts.iter().map(fact_out).collect() },
        waiting: snap
            .waiting
            .iter()
            .map(|w| {
                let d = inspected.next().unwrap_or_default();
                pb::WaitingActivation {
                    invocation_id: w.invocation.id.to_string(),
                    rule: w.rule.clone(),
                    function: w.invocation.function.clone(),
                    args_json: w.invocation.args.to_string(),
                    fact_ids: w.matched.iter().map(|(id, _)| *id).collect(),
                    state: d.state.into(),
                    attempt: d.attempt,
                    last_error: d.failed.last().map(|f| f.error.clone()).unwrap_or_default(),
                    retry_at_ms: d.retry_at_ms,
                    workers: d.workers,
                    failed_attempts: d
                        .failed
                        .into_iter()
                        .map(|f| pb::FailedAttempt { attempt: f.attempt, at_ms: f.at_ms, error: f.error })
                        .collect(),
                }
            })
            .collect(),
        origin_json: serde_json::to_string(&m.origin).unwrap_or_default(),
        timers: snap
            .timers
            .iter()
            .map(|t| pb::PendingTimer { id: t.id, due_ms: t.due_ms, r#type: t.ty.to_string(), rule: t.rule.clone() })
            .collect(),
        traceparent: m.traceparent.clone().unwrap_or_default(),
        timeline_seq: m.timeline_seq,
    }
}

/// Runs a turn on its own task: a client that hangs up must not cancel it
/// between its commit and what follows (dispatching its invocations,
/// timers, signals), which only a restart would otherwise redo. The task
/// stays in the request's span, so the turn continues the caller's trace.
async fn detached<T: Send + 'static>(
    f: impl std::future::Future<Output = Result<T, crate::error::ApiError>> + Send + 'static,
) -> Result<T, Status> {
    use tracing::Instrument;
    match tokio::spawn(f.in_current_span()).await {
        Ok(r) => r.map_err(Status::from),
        Err(e) => Err(Status::internal(format!("the turn's task ended: {e}"))),
    }
}

fn rollout_mode(rollout: i32, fraction: f64) -> Result<Mode, Status> {
    match pb::Rollout::try_from(rollout) {
        Ok(pb::Rollout::All) => Ok(Mode::All),
        Ok(pb::Rollout::NewOnly) => Ok(Mode::NewOnly),
        Ok(pb::Rollout::Canary) => {
            if fraction > 0.0 && fraction <= 1.0 {
                Ok(Mode::Canary(fraction))
            } else {
                Err(Status::invalid_argument(format!("canary_fraction: {fraction} is not in (0, 1]")))
            }
        }
        Err(_) => Err(Status::invalid_argument(format!("rollout: unknown value {rollout}"))),
    }
}

fn same_rollout(r: &Rollout, version: &str, mode: Mode) -> bool {
    match mode {
        Mode::All | Mode::NewOnly => r.stable == version && r.canary.is_none(),
        Mode::Canary(f) => r.canary.as_ref().is_some_and(|c| c.version == version && c.fraction == f),
    }
}

fn job_out(j: &UpgradeJob) -> pb::UpgradeJob {
    pb::UpgradeJob {
        pack: j.pack.clone(),
        version: j.version.clone(),
        state: j.state.clone(),
        total: j.total,
        scanned: j.scanned,
        upgraded: j.upgraded,
        failed: j.failed,
        skipped: j.skipped,
        started_ms: j.started_ms,
        finished_ms: j.finished_ms,
        firings: j.firings,
    }
}

fn impact_out(i: crate::compat::Impact) -> pb::SchemaImpact {
    pb::SchemaImpact {
        r#type: i.change.ty,
        field: i.change.field.unwrap_or_default(),
        what: i.change.what,
        compatible: i.change.compatible,
        from_version: i.from,
        workflows: i.workflows,
        facts: i.facts,
    }
}

fn rollout_out(r: Rollout, job: Option<UpgradeJob>) -> pb::RolloutPackResponse {
    pb::RolloutPackResponse {
        stable: r.stable,
        canary_version: r.canary.as_ref().map(|c| c.version.clone()).unwrap_or_default(),
        canary_fraction: r.canary.map(|c| c.fraction).unwrap_or_default(),
        upgrade: job.as_ref().map(job_out),
    }
}

type Watch = Pin<Box<dyn Stream<Item = Result<pb::TimelineEntry, Status>> + Send>>;

#[tonic::async_trait]
impl pb::stoa_server::Stoa for StoaService {
    async fn deploy_pack(
        &self,
        req: Request<pb::DeployPackRequest>,
    ) -> Result<Response<pb::DeployPackResponse>, Status> {
        at_coordinator!(self, req, deploy_pack);
        let tenant = tenant(&req)?;
        let req = req.into_inner();
        if req.files.is_empty() {
            return Err(Status::invalid_argument("files: the pack has no files"));
        }
        let mut files = BTreeMap::new();
        for (i, f) in req.files.into_iter().enumerate() {
            if f.path.is_empty()
                || f.path.len() > 256
                || f.path.starts_with('/')
                || f.path.split('/').any(|p| p == "..")
                || f.path.chars().any(char::is_control)
            {
                return Err(Status::invalid_argument(format!(
                    "files[{i}].path: `{}` must be a relative path of at most 256 bytes, without `..`",
                    stoa_rules::diagnostic::shown(&f.path)
                )));
            }
            let text = stoa_rules::compile::file_text(std::path::Path::new(&f.path), f.content)
                .map_err(|d| Status::invalid_argument(format!("files[{i}].content: {d}")))?;
            files.insert(f.path, text);
        }
        let mode = rollout_mode(req.rollout, req.canary_fraction)?;
        let rt = self.runtime.clone();
        let t = tenant.clone();
        let dry_run = req.dry_run;
        let gate = (!req.force).then_some(mode);
        let (pack, diags, changed) = detached(async move {
            // A definition (workflow.yaml or .json, no pack.toml) is
            // compiled here; its foreach bodies' packs go first.
            let mut packs = crate::definitions::expand(files)?;
            let own = packs.pop().unwrap_or_default();
            for body in packs {
                rt.deploy(&t, body, dry_run, gate).await?;
            }
            rt.deploy(&t, own, dry_run, gate).await
        })
        .await?;
        let name = pack.manifest.name.clone();
        let stable =
            self.runtime.rollout_of(&tenant, &name).and_then(|r| self.runtime.pack_version(&tenant, &name, &r.stable));
        let changes = stable.as_ref().map(|old| Workflow::rule_changes(old, &pack)).unwrap_or_default();
        let mut resp = pb::DeployPackResponse {
            name: name.clone(),
            version: pack.manifest.version.clone(),
            digest: format!("{:016x}", pack.digest),
            diagnostics: diags.iter().map(diag_out).collect(),
            changed,
            rules_added: changes.added,
            rules_changed: changes.changed,
            rules_removed: changes.removed,
            ..Default::default()
        };
        // Also when unchanged: a deploy restores the pack's schedules.
        // A failure answers the deploy with it: deploying again installs them.
        if !req.dry_run {
            self.schedules.install_pack(&tenant, &name, &pack.manifest.schedules)?;
        }
        if req.dry_run || req.force {
            let all = req.dry_run;
            let impacts = self.runtime.schema_impact(&tenant, &name, &pack, mode, all).await?;
            resp.schema_changes = impacts.into_iter().filter(|i| all || i.blocks()).map(impact_out).collect();
        }
        if req.dry_run {
            let preview = self.runtime.preview(&tenant, &pack, mode).await?;
            resp.live_workflows = preview.workflows;
            resp.preview = preview
                .gains
                .into_iter()
                .map(|(rule, (activations, workflows))| pb::RuleGain { rule, activations, workflows })
                .collect();
        } else if changed
            || self.runtime.rollout_of(&tenant, &name).is_some_and(|r| !same_rollout(&r, &pack.manifest.version, mode))
        {
            // A new version, or the same one rolled out another way (say, a canary promoted).
            // `deploy` checked the schemas (unless forced).
            let (_, job) = self.runtime.rollout(&tenant, &name, &pack.manifest.version, mode, true).await?;
            resp.upgrade = job.as_ref().map(job_out);
        }
        Ok(Response::new(resp))
    }

    async fn rollout_pack(
        &self,
        req: Request<pb::RolloutPackRequest>,
    ) -> Result<Response<pb::RolloutPackResponse>, Status> {
        at_coordinator!(self, req, rollout_pack);
        let tenant = tenant(&req)?;
        let req = req.into_inner();
        input::pack_name("name", &req.name)?;
        input::version("version", &req.version)?;
        let mode = rollout_mode(req.rollout, req.canary_fraction)?;
        let (rollout, job) = self.runtime.rollout(&tenant, &req.name, &req.version, mode, req.force).await?;
        Ok(Response::new(rollout_out(rollout, job)))
    }

    async fn rollback_pack(
        &self,
        req: Request<pb::RollbackPackRequest>,
    ) -> Result<Response<pb::RolloutPackResponse>, Status> {
        at_coordinator!(self, req, rollback_pack);
        let tenant = tenant(&req)?;
        let req = req.into_inner();
        input::pack_name("name", &req.name)?;
        let (rollout, job) = self.runtime.rollback(&tenant, &req.name, req.force).await?;
        Ok(Response::new(rollout_out(rollout, job)))
    }

    async fn get_upgrade(&self, req: Request<pb::GetUpgradeRequest>) -> Result<Response<pb::UpgradeJob>, Status> {
        at_coordinator!(self, req, get_upgrade);
        let tenant = tenant(&req)?;
        let req = req.into_inner();
        input::pack_name("name", &req.name)?;
        let job = self
            .runtime
            .upgrade_job(&tenant, &req.name)?
            .ok_or_else(|| Status::not_found(format!("pack `{}` has no upgrade", req.name)))?;
        Ok(Response::new(job_out(&job)))
    }

    async fn send_signal(
        &self,
        req: Request<pb::SendSignalRequest>,
    ) -> Result<Response<pb::SendSignalResponse>, Status> {
        // One router per signal id in a cluster: a retry sent to another
        // server waits for the first routing, as on one server.
        at_coordinator!(self, req, send_signal);
        let tenant = tenant(&req)?;
        let req = req.into_inner();
        if req.name.is_empty() || req.name.len() > 200 || req.name.chars().any(char::is_control) {
            return Err(Status::invalid_argument("name: required, at most 200 bytes, without control characters"));
        }
        input::client_id("signal_id", &req.signal_id)?;
        if req.signal_id.contains('/') {
            return Err(Status::invalid_argument("signal_id: `/` is not allowed in a signal id"));
        }
        let payload = if req.payload_json.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&req.payload_json)
                .map_err(|e| Status::invalid_argument(format!("payload_json: not JSON: {e}")))?
        };
        let target = if req.workflow_id.is_empty() { None } else { Some(workflow_id(&req.workflow_id)?) };
        if let Some(t) = &target {
            // Another tenant's workflow does not exist for this caller.
            self.runtime.get(&tenant, t)?;
        }
        let signal = Signal {
            id: req.signal_id,
            name: req.name,
            payload: stoa_rules::Value::from_json(&payload),
            from: None,
            at_ms: self.runtime.clock.now_ms(),
        };
        let rt = self.runtime.clone();
        let (rec, created) = detached(async move { rt.route_signal(&tenant, signal, target).await }).await?;
        Ok(Response::new(pb::SendSignalResponse {
            created,
            started: rec.started.iter().map(|w| w.to_string()).collect(),
            delivered: rec.delivered.iter().map(|w| w.to_string()).collect(),
        }))
    }

    async fn get_lineage(
        &self,
        req: Request<pb::GetLineageRequest>,
    ) -> Result<Response<pb::GetLineageResponse>, Status> {
        let tenant = tenant(&req)?;
        let req = req.into_inner();
        input::client_id("signal_id", &req.signal_id)?;
        let chain = self.runtime.lineage(&tenant, &req.signal_id)?;
        let signals = chain
            .into_iter()
            .map(|(depth, r)| pb::LineageSignal {
                id: r.signal.id,
                name: r.signal.name,
                payload_json: r.signal.payload.to_string(),
                from_workflow: r.signal.from.map(|w| w.to_string()).unwrap_or_default(),
                started: r.started.iter().map(|w| w.to_string()).collect(),
                delivered: r.delivered.iter().map(|w| w.to_string()).collect(),
                at_ms: r.signal.at_ms,
                depth,
            })
            .collect();
        Ok(Response::new(pb::GetLineageResponse { signals }))
    }

    async fn list_packs(&self, req: Request<pb::ListPacksRequest>) -> Result<Response<pb::ListPacksResponse>, Status> {
        let tenant = tenant(&req)?;
        let packs = self
            .runtime
            .packs(&tenant)
            .into_iter()
            .map(|(name, versions, p)| {
                let rollout = self.runtime.rollout_of(&tenant, &name);
                let canary = rollout.as_ref().and_then(|r| r.canary.clone());
                pb::PackInfo {
                    stable: rollout.map(|r| r.stable).unwrap_or_default(),
                    canary_version: canary.as_ref().map(|c| c.version.clone()).unwrap_or_default(),
                    canary_fraction: canary.map(|c| c.fraction).unwrap_or_default(),
                    name,
                    versions,
                    description: p.manifest.description.clone(),
                    functions: p.manifest.functions.keys().cloned().collect(),
                }
            })
            .collect();
        Ok(Response::new(pb::ListPacksResponse { packs }))
    }

    async fn start_workflow(
        &self,
        req: Request<pb::StartWorkflowRequest>,
    ) -> Result<Response<pb::StartWorkflowResponse>, Status> {
        let tenant = tenant(&req)?;
        let req = req.into_inner();
        input::pack_name("pack", &req.pack)?;
        input::client_id("request_id", &req.request_id)?;
        let facts = input::facts_in(req.facts)?;
        let rt = self.runtime.clone();
        let (id, created, queued) = detached(async move {
            let (id, created) = rt.start(&tenant, &req.pack, facts, &req.request_id).await?;
            let queued = rt.run_strategy_of(&tenant, &req.pack).is_some()
                && rt.is_queued(&tenant, &req.pack, &req.request_id)?;
            Ok::<_, crate::error::ApiError>((id, created, queued))
        })
        .await?;
        Ok(Response::new(pb::StartWorkflowResponse { workflow_id: id.to_string(), created, queued }))
    }

    async fn assert_facts(&self, req: Request<pb::AssertFactsRequest>) -> Result<Response<pb::TurnResponse>, Status> {
        let tenant = tenant(&req)?;
        let req = req.into_inner();
        let id = workflow_id(&req.workflow_id)?;
        if req.facts.is_empty() {
            return Err(Status::invalid_argument("facts: nothing to assert"));
        }
        let facts = input::facts_in(req.facts)?;
        let rt = self.runtime.clone();
        let out = detached(async move { rt.turn(&tenant, &id, Input::Assert { facts }).await }).await?;
        Ok(Response::new(turn_out(&out)))
    }

    async fn retract_facts(&self, req: Request<pb::RetractFactsRequest>) -> Result<Response<pb::TurnResponse>, Status> {
        let tenant = tenant(&req)?;
        let req = req.into_inner();
        let id = workflow_id(&req.workflow_id)?;
        if req.fact_ids.is_empty() {
            return Err(Status::invalid_argument("fact_ids: nothing to retract"));
        }
        let rt = self.runtime.clone();
        let out = detached(async move { rt.turn(&tenant, &id, Input::Retract { ids: req.fact_ids }).await }).await?;
        Ok(Response::new(turn_out(&out)))
    }

    async fn get_workflow(&self, req: Request<pb::GetWorkflowRequest>) -> Result<Response<pb::Workflow>, Status> {
        let tenant = tenant(&req)?;
        let forwarded = req.metadata().get(FORWARDED).is_some();
        let body = req.get_ref().clone();
        let id = workflow_id(&body.workflow_id)?;
        let snap = self.runtime.get(&tenant, &id)?;
        // What its invocations are doing is known to the dispatcher of the
        // server that owns the workflow: in a cluster, ask that one (it reads
        // the same store); if it does not answer, say nothing of them.
        if !snap.waiting.is_empty() && !forwarded {
            if let Place::There(address) = self.runtime.opts.placement.place(&id) {
                if let Some(peers) = &self.runtime.opts.peers {
                    if let Ok(channel) = peers.channel(&address) {
                        let mut client =
                            pb::stoa_client::StoaClient::new(channel).max_decoding_message_size(usize::MAX);
                        match client.get_workflow(onward(req)).await {
                            Ok(r) => return Ok(r),
                            Err(e) => tracing::debug!(%address, error = %e, "the owner did not describe the workflow"),
                        }
                    }
                }
                return Ok(Response::new(workflow_out(snap, body.without_facts, None)));
            }
        }
        let asked = snap.waiting.iter().map(|w| (w.invocation.id.clone(), w.invocation.function.clone())).collect();
        let inspected = self.runtime.dispatch_state(&tenant, asked).await;
        Ok(Response::new(workflow_out(snap, body.without_facts, inspected)))
    }

    async fn list_workflows(
        &self,
        req: Request<pb::ListWorkflowsRequest>,
    ) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
        let tenant = tenant(&req)?;
        let req = req.into_inner();
        let size = match req.page_size {
            0 => 100,
            n if n > 1000 => return Err(Status::invalid_argument("page_size: at most 1000")),
            n => n as usize,
        };
        if !req.pack.is_empty() {
            input::pack_name("pack", &req.pack)?;
        }
        if !req.status.is_empty() && !matches!(req.status.as_str(), "running" | "completed" | "failed" | "cancelled") {
            return Err(Status::invalid_argument("status: one of running, completed, failed, cancelled"));
        }
        let keep = |m: &stoa_engine::workflow::Meta| {
            (req.pack.is_empty() || m.pack == req.pack) && (req.status.is_empty() || m.status.as_str() == req.status)
        };
        let summary = |m: stoa_engine::workflow::Meta| pb::WorkflowSummary {
            id: m.id.to_string(),
            pack: m.pack,
            pack_version: m.pack_version,
            status: m.status.as_str().into(),
            updated_ms: m.updated_ms,
            created_ms: m.created_ms,
        };
        if req.newest_first {
            let (workflows, next_page_token) =
                self.newest_first(&tenant, &req.page_token, size, &req.pack, &req.status, summary)?;
            return Ok(Response::new(pb::ListWorkflowsResponse { workflows, next_page_token }));
        }
        let mut after = if req.page_token.is_empty() {
            None
        } else {
            Some(
                workflow_id(&req.page_token)
                    .map_err(|_| Status::invalid_argument("page_token: not a token from this API"))?,
            )
        };
        // Filters apply while scanning, so a page is full unless the scan ends.
        let mut out = Vec::new();
        let mut next = String::new();
        'scan: loop {
            let metas = self.runtime.list(&tenant, after.as_ref(), 1000)?;
            let done = metas.len() < 1000;
            for m in metas {
                after = Some(m.id.clone());
                if keep(&m) {
                    let id = m.id.to_string();
                    out.push(summary(m));
                    if out.len() == size {
                        next = id;
                        break 'scan;
                    }
                }
            }
            if done {
                break;
            }
        }
        Ok(Response::new(pb::ListWorkflowsResponse { workflows: out, next_page_token: next }))
    }

    type WatchWorkflowStream = Watch;

    async fn watch_workflow(&self, req: Request<pb::WatchWorkflowRequest>) -> Result<Response<Watch>, Status> {
        let tenant = tenant(&req)?;
        let req = req.into_inner();
        let id = workflow_id(&req.workflow_id)?;
        // Subscribe before reading the stored part, so nothing falls between.
        let mut live = self.runtime.subscribe(&id);
        let stored = match self.runtime.timeline(&tenant, &id, req.from_seq.max(1), usize::MAX) {
            Ok(s) => s,
            Err(e) => {
                drop(live);
                self.runtime.unsubscribe_if_idle(&id);
                return Err(e.into());
            }
        };
        let snap = self.runtime.get(&tenant, &id)?;
        let (tx, rx) = mpsc::channel(256);
        let runtime = self.runtime.clone();
        tokio::spawn(async move {
            let mut next = req.from_seq.max(1);
            let ended =
                |e: &Entry| matches!(e.event, Event::Completed { .. } | Event::Failed { .. } | Event::Cancelled { .. });
            for e in &stored {
                if tx.send(Ok(entry_out(e))).await.is_err() {
                    return;
                }
                next = e.seq + 1;
            }
            if snap.meta.status != WfStatus::Running && next > snap.meta.timeline_seq {
                return;
            }
            // In a cluster the workflow may live on another server (or move
            // there): entries its turns make elsewhere are read from the store.
            let poll = runtime.opts.placement.is_cluster().then_some(std::time::Duration::from_millis(500));
            loop {
                let received = match poll {
                    Some(every) => match tokio::time::timeout(every, live.recv()).await {
                        Ok(r) => r,
                        Err(_) => Err(tokio::sync::broadcast::error::RecvError::Lagged(0)),
                    },
                    None => live.recv().await,
                };
                match received {
                    Ok(e) if e.seq < next => {}
                    Ok(e) => {
                        next = e.seq + 1;
                        let end = ended(&e);
                        if tx.send(Ok(entry_out(&e))).await.is_err() || end {
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow a reader: catch up from the store.
                        let Ok(missed) = runtime.timeline(&tenant, &id, next, usize::MAX) else { break };
                        let mut over = false;
                        for e in missed {
                            next = e.seq + 1;
                            if tx.send(Ok(entry_out(&e))).await.is_err() || ended(&e) {
                                over = true;
                                break;
                            }
                        }
                        if over {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            drop(live);
            runtime.unsubscribe_if_idle(&id);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_timeline(
        &self,
        req: Request<pb::GetTimelineRequest>,
    ) -> Result<Response<pb::GetTimelineResponse>, Status> {
        let tenant = tenant(&req)?;
        let req = req.into_inner();
        let id = workflow_id(&req.workflow_id)?;
        let limit = match req.limit {
            0 => 1000,
            n => n as usize,
        };
        let entries = self.runtime.timeline(&tenant, &id, req.from_seq.max(1), limit)?;
        if entries.is_empty() {
            self.runtime.get(&tenant, &id)?; // NOT_FOUND for a workflow that does not exist
        }
        Ok(Response::new(pb::GetTimelineResponse { entries: entries.iter().map(entry_out).collect() }))
    }

    async fn cancel_workflow(
        &self,
        req: Request<pb::CancelWorkflowRequest>,
    ) -> Result<Response<pb::TurnResponse>, Status> {
        let tenant = tenant(&req)?;
        let req = req.into_inner();
        let id = workflow_id(&req.workflow_id)?;
        let reason = if req.reason.is_empty() { "cancelled by request".to_string() } else { req.reason };
        const MAX_GRACE_MS: u64 = 30 * 24 * 3600 * 1000;
        if req.grace_ms > MAX_GRACE_MS {
            return Err(Status::invalid_argument(format!("grace_ms: {} is more than 30 days", req.grace_ms)));
        }
        let input = match req.terminate {
            true => Input::Terminate { reason },
            false => Input::Cancel { reason, grace_ms: (req.grace_ms > 0).then_some(req.grace_ms) },
        };
        let rt = self.runtime.clone();
        let out = detached(async move { rt.turn(&tenant, &id, input).await }).await?;
        Ok(Response::new(turn_out(&out)))
    }

    async fn explain(&self, req: Request<pb::ExplainRequest>) -> Result<Response<pb::ExplainResponse>, Status> {
        let tenant = tenant(&req)?;
        let req = req.into_inner();
        let id = workflow_id(&req.workflow_id)?;
        let json = crate::explain::explain(&self.runtime, &tenant, id, req).await?;
        Ok(Response::new(pb::ExplainResponse { json }))
    }

    // ---- schedules (crate::schedule::api)

    async fn put_schedule(&self, req: Request<pb::PutScheduleRequest>) -> Result<Response<pb::Schedule>, Status> {
        at_coordinator!(self, req, put_schedule);
        let tenant = tenant(&req)?;
        Ok(Response::new(sched::put(&self.schedules, &tenant, req.into_inner())?))
    }

    async fn list_schedules(
        &self,
        req: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        at_coordinator!(self, req, list_schedules);
        let tenant = tenant(&req)?;
        Ok(Response::new(sched::list(&self.schedules, &tenant)))
    }

    async fn get_schedule(&self, req: Request<pb::ScheduleRef>) -> Result<Response<pb::Schedule>, Status> {
        at_coordinator!(self, req, get_schedule);
        let tenant = tenant(&req)?;
        Ok(Response::new(sched::get(&self.schedules, &tenant, req.into_inner())?))
    }

    async fn pause_schedule(&self, req: Request<pb::ScheduleRef>) -> Result<Response<pb::Schedule>, Status> {
        at_coordinator!(self, req, pause_schedule);
        let tenant = tenant(&req)?;
        Ok(Response::new(sched::pause(&self.schedules, &tenant, req.into_inner(), true)?))
    }

    async fn resume_schedule(&self, req: Request<pb::ScheduleRef>) -> Result<Response<pb::Schedule>, Status> {
        at_coordinator!(self, req, resume_schedule);
        let tenant = tenant(&req)?;
        Ok(Response::new(sched::pause(&self.schedules, &tenant, req.into_inner(), false)?))
    }

    async fn trigger_schedule(
        &self,
        req: Request<pb::TriggerScheduleRequest>,
    ) -> Result<Response<pb::TriggerScheduleResponse>, Status> {
        at_coordinator!(self, req, trigger_schedule);
        let tenant = tenant(&req)?;
        Ok(Response::new(sched::trigger(&self.schedules, &tenant, req.into_inner()).await?))
    }

    async fn delete_schedule(
        &self,
        req: Request<pb::ScheduleRef>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        at_coordinator!(self, req, delete_schedule);
        let tenant = tenant(&req)?;
        Ok(Response::new(sched::delete(&self.schedules, &tenant, req.into_inner())?))
    }
}
