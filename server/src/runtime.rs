//! The live side of the server: deployed packs, workflows in memory, turns
//! (apply, group-commit, then dispatch and publish), watchers.
//!
//! A turn is applied under its workflow's lock and queued for commit before
//! the lock is released, so one workflow's turns commit in order; its
//! invocations leave and its entries are published only once it is durable.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use stoa_engine::store::{PackRecord, SledStore, Store};
use stoa_engine::timeline::Entry;
use stoa_engine::workflow::{Input, Meta, Origin, Outcome, Rejected, Status, TurnOutput, Workflow, CHILD_PREFIX};
use stoa_engine::{InvocationId, WorkflowId};
use stoa_rules::compile::{compile, fnv1a, Pack, PackSource};
use stoa_rules::testcase::FactSpec;
use tokio::sync::{broadcast, mpsc};

use crate::background::Background;
use crate::committer::Committer;
use crate::dispatcher::DispatchHandle;
use crate::error::ApiError;
use crate::upgrade::Rollout;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The deployed versions of one pack, oldest first, and which of them new
/// and live workflows run.
#[derive(Default)]
pub(crate) struct Versions {
    pub list: Vec<(PackRecord, Arc<Pack>)>,
    /// Unset: the newest version is stable.
    pub rollout: Option<Rollout>,
}

impl Versions {
    pub fn get(&self, version: &str) -> Option<&Arc<Pack>> {
        self.list.iter().rev().find(|(r, _)| r.version == version).map(|(_, p)| p)
    }

    pub fn stable(&self) -> Option<&Arc<Pack>> {
        match &self.rollout {
            Some(r) => self.get(&r.stable),
            None => self.list.last().map(|(_, p)| p),
        }
    }

    /// The version a workflow with this id runs on (canary by id hash).
    pub fn for_workflow(&self, id: &WorkflowId) -> Option<&Arc<Pack>> {
        match self.rollout.as_ref().and_then(|r| r.canary.as_ref()) {
            Some(c) if crate::upgrade::in_fraction(id, c.fraction) => self.get(&c.version),
            _ => self.stable(),
        }
    }
}

/// A workflow's place in memory; `None` until loaded or created.
#[derive(Default)]
struct Slot {
    wf: Mutex<Option<Workflow>>,
}

pub struct Runtime {
    pub(crate) store: Arc<SledStore>,
    committer: Committer,
    pub(crate) packs: DashMap<(String, String), Versions>,
    workflows: DashMap<WorkflowId, Arc<Slot>>,
    watchers: DashMap<WorkflowId, broadcast::Sender<Arc<Entry>>>,
    dispatch: DispatchHandle,
    max_pending: usize,
    /// Work that outlives a turn: timers, signals, children, upgrades.
    pub(crate) background: mpsc::UnboundedSender<Background>,
    pub(crate) route_locks: crate::signals::RouteLocks,
}

/// The tenant part of a workflow id (`wf_<tenant>.<key>`).
pub fn tenant_of(id: &WorkflowId) -> &str {
    let body = &id.as_str()[WorkflowId::PREFIX.len()..];
    body.split_once('.').map(|(t, _)| t).unwrap_or("")
}

fn compile_record(rec: &PackRecord) -> Result<Pack, Vec<stoa_rules::Diagnostic>> {
    let src = PackSource {
        root: PathBuf::new(),
        files: rec.files.iter().map(|(k, v)| (PathBuf::from(k), v.clone())).collect(),
    };
    let (pack, diags) = compile(&src);
    pack.ok_or(diags)
}

impl Runtime {
    pub fn new(
        store: Arc<SledStore>,
        committer: Committer,
        dispatch: DispatchHandle,
        tenants: &[String],
        max_pending: usize,
        background: mpsc::UnboundedSender<Background>,
    ) -> Result<Runtime, String> {
        let rt = Runtime {
            store,
            committer,
            packs: DashMap::new(),
            workflows: DashMap::new(),
            watchers: DashMap::new(),
            dispatch,
            max_pending,
            background,
            route_locks: Default::default(),
        };
        for t in tenants {
            for rec in rt.store.packs(t).map_err(|e| e.to_string())? {
                let pack = compile_record(&rec).map_err(|d| {
                    format!("stored pack {}/{} {} no longer compiles: {}", t, rec.name, rec.version, d[0])
                })?;
                let name = rec.name.clone();
                let mut v = rt.packs.entry((t.clone(), name.clone())).or_default();
                v.list.push((rec, Arc::new(pack)));
                if v.rollout.is_none() {
                    v.rollout = rt.load_rollout(t, &name)?;
                }
            }
        }
        Ok(rt)
    }

    // ---- packs ----------------------------------------------------------

    /// Compiles and (unless `dry_run`) deploys a pack. Returns the compiled
    /// pack, its diagnostics (warnings) and whether anything changed.
    pub fn deploy(
        &self,
        tenant: &str,
        files: BTreeMap<String, String>,
        dry_run: bool,
    ) -> Result<(Arc<Pack>, Vec<stoa_rules::Diagnostic>, bool), ApiError> {
        let src = PackSource {
            root: PathBuf::new(),
            files: files.iter().map(|(k, v)| (PathBuf::from(k), v.clone())).collect(),
        };
        let (pack, diags) = compile(&src);
        let Some(pack) = pack else {
            let text: Vec<String> =
                diags.iter().filter(|d| d.is_error()).map(|d| d.render(src.text_at(&d.path))).collect();
            return Err(ApiError::InvalidArgument(format!(
                "the pack has {} error(s); the deployed version is unchanged\n{}",
                text.len(),
                text.join("\n\n")
            )));
        };
        let pack = Arc::new(pack);
        let key = (tenant.to_string(), pack.manifest.name.clone());
        let mut versions = self.packs.entry(key).or_default();
        if let Some((last, _)) = versions.list.last() {
            if last.digest == pack.digest {
                return Ok((pack, diags, false));
            }
        }
        if let Some((same, _)) = versions.list.iter().find(|(r, _)| r.version == pack.manifest.version) {
            if same.digest != pack.digest {
                return Err(ApiError::FailedPrecondition(format!(
                    "version {} of pack {} is already deployed with other content; give the new one another version",
                    pack.manifest.version, pack.manifest.name
                )));
            }
        }
        if dry_run {
            return Ok((pack, diags, true));
        }
        let rec = PackRecord {
            tenant: tenant.to_string(),
            name: pack.manifest.name.clone(),
            version: pack.manifest.version.clone(),
            seq: versions.list.len() as u64 + 1,
            digest: pack.digest,
            deployed_ms: now_ms(),
            files,
        };
        // A stored version is not live until its rollout says so: pin the
        // one running now first, durably, so neither a canary deploy nor a
        // crash before the rollout makes the new version stable by default.
        if versions.rollout.is_none() {
            if let Some((last, _)) = versions.list.last() {
                let pinned = Rollout { stable: last.version.clone(), canary: None };
                let v = serde_json::to_value(&pinned).map_err(|e| ApiError::Internal(e.to_string()))?;
                self.store.put_aux("rollout", &format!("{tenant}/{}", rec.name), &v).map_err(ApiError::from)?;
                versions.rollout = Some(pinned);
            }
        }
        self.store.put_pack(&rec)?;
        versions.list.push((rec, pack.clone()));
        Ok((pack, diags, true))
    }

    /// (name, versions oldest first, stable pack) of each of a tenant's packs.
    pub fn packs(&self, tenant: &str) -> Vec<(String, Vec<String>, Arc<Pack>)> {
        let mut out: Vec<_> = self
            .packs
            .iter()
            .filter(|e| e.key().0 == tenant)
            .filter_map(|e| {
                let current = e.value().stable()?;
                Some((
                    e.key().1.clone(),
                    e.value().list.iter().map(|(r, _)| r.version.clone()).collect(),
                    current.clone(),
                ))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub(crate) fn pack(&self, tenant: &str, name: &str, version: Option<&str>) -> Result<Arc<Pack>, ApiError> {
        let versions = self
            .packs
            .get(&(tenant.to_string(), name.to_string()))
            .ok_or_else(|| ApiError::NotFound(format!("pack `{name}` is not deployed")))?;
        let found = match version {
            None => versions.stable(),
            Some(v) => versions.get(v),
        };
        found.cloned().ok_or_else(|| {
            ApiError::NotFound(format!("pack `{name}` has no version {}", version.unwrap_or("deployed")))
        })
    }

    /// One deployed version of a pack.
    pub fn pack_version(&self, tenant: &str, name: &str, version: &str) -> Option<Arc<Pack>> {
        self.packs.get(&(tenant.to_string(), name.to_string()))?.get(version).cloned()
    }

    /// The version a new workflow with this id starts on.
    fn pack_for_new(&self, tenant: &str, name: &str, id: &WorkflowId) -> Result<Arc<Pack>, ApiError> {
        let versions = self
            .packs
            .get(&(tenant.to_string(), name.to_string()))
            .ok_or_else(|| ApiError::NotFound(format!("pack `{name}` is not deployed")))?;
        versions.for_workflow(id).cloned().ok_or_else(|| ApiError::NotFound(format!("pack `{name}` is not deployed")))
    }

    /// The rollout of a pack (stable version and canary).
    pub fn rollout_of(&self, tenant: &str, name: &str) -> Option<crate::upgrade::Rollout> {
        let v = self.packs.get(&(tenant.to_string(), name.to_string()))?;
        let stable = v.stable()?.manifest.version.clone();
        Some(v.rollout.clone().unwrap_or(crate::upgrade::Rollout { stable, canary: None }))
    }

    // ---- workflows ------------------------------------------------------

    fn slot(&self, id: &WorkflowId) -> Arc<Slot> {
        self.workflows.entry(id.clone()).or_default().clone()
    }

    /// Loads the workflow into its slot if needed. `Ok(false)`: no such
    /// workflow.
    fn ensure_loaded(&self, id: &WorkflowId, guard: &mut Option<Workflow>) -> Result<bool, ApiError> {
        if guard.is_some() {
            return Ok(true);
        }
        let Some(snap) = self.store.load(id)? else {
            return Ok(false);
        };
        let pack = self.pack(tenant_of(id), &snap.meta.pack, Some(&snap.meta.pack_version))?;
        *guard = Some(Workflow::restore(pack, snap).map_err(ApiError::Internal)?);
        Ok(true)
    }

    fn check_backpressure(&self, tenant: &str) -> Result<(), ApiError> {
        let pending = self.dispatch.pending(tenant);
        if pending >= self.max_pending {
            return Err(ApiError::ResourceExhausted(format!(
                "tenant `{tenant}` has {pending} invocations pending (limit {}); retry later",
                self.max_pending
            )));
        }
        Ok(())
    }

    /// Starts a workflow; the request id makes it idempotent.
    pub async fn start(
        &self,
        tenant: &str,
        pack: &str,
        facts: Vec<FactSpec>,
        request_id: &str,
    ) -> Result<(WorkflowId, bool), ApiError> {
        if request_id.is_empty() || request_id.len() > 256 {
            return Err(ApiError::InvalidArgument("request_id: required, at most 256 bytes".into()));
        }
        self.check_backpressure(tenant)?;
        self.start_as(tenant, pack, facts, request_id, Origin::Request).await
    }

    /// `start` for a schedule's tick: its workflow records the schedule.
    pub(crate) async fn start_scheduled(
        &self,
        tenant: &str,
        pack: &str,
        facts: Vec<FactSpec>,
        request_id: &str,
        schedule: &str,
    ) -> Result<(WorkflowId, bool), ApiError> {
        self.check_backpressure(tenant)?;
        self.start_as(tenant, pack, facts, request_id, Origin::Schedule { schedule: schedule.to_string() }).await
    }

    /// The id of the workflow a request id starts: a repeated request finds
    /// the same slot, even while the first is still committing.
    pub(crate) fn id_for_request(tenant: &str, request_id: &str) -> WorkflowId {
        WorkflowId::new(format!("{tenant}.{:016x}", fnv1a(request_id.as_bytes(), 0xcbf29ce484222325)))
    }

    /// `start` for the server's own starts (children, signals, schedules).
    pub(crate) async fn start_as(
        &self,
        tenant: &str,
        pack: &str,
        facts: Vec<FactSpec>,
        request_id: &str,
        origin: Origin,
    ) -> Result<(WorkflowId, bool), ApiError> {
        let id = Self::id_for_request(tenant, request_id);
        let slot = self.slot(&id);
        let request = format!("{tenant}/{request_id}");
        let mut first = true;
        let rx = 'start: {
            let mut g = slot.wf.lock().expect("workflow lock");
            if self.ensure_loaded(&id, &mut g)? {
                // The first start may still be committing. The committer
                // flushes in order, so an empty turn queued now is durable
                // only once the first start is.
                first = false;
                break 'start self.committer.submit(id.clone(), TurnOutput::default(), None);
            }
            let created = self.pack_for_new(tenant, pack, &id).and_then(|pack| {
                let mut wf = Workflow::new(id.clone(), pack, now_ms()).with_origin(origin);
                let out = wf.apply(Input::Start { facts }, now_ms()).map_err(reject)?;
                Ok((wf, out))
            });
            let (wf, out) = match created {
                Ok(x) => x,
                Err(e) => {
                    drop(g);
                    // Nothing was created: leave no empty slot behind.
                    self.workflows.remove_if(&id, |_, s| s.wf.lock().map(|w| w.is_none()).unwrap_or(false));
                    return Err(e);
                }
            };
            *g = Some(wf);
            self.committer.submit(id.clone(), out, Some(request.clone()))
        };
        let out = rx.await.map_err(|_| ApiError::Internal("commit lost".into()))??;
        if !first {
            return match self.store.request(&request)? {
                Some(_) => Ok((id, false)),
                None => Err(ApiError::Internal(format!("the first start of request {request} did not commit"))),
            };
        }
        self.after_commit(&id, &out);
        Ok((id, true))
    }

    /// Applies one input to a workflow of `tenant` as a turn and waits until
    /// it is durable.
    pub async fn turn(&self, tenant: &str, id: &WorkflowId, input: Input) -> Result<TurnOutput, ApiError> {
        self.turn_keyed(tenant, id, input, None).await
    }

    /// `turn`, recording `key` in the same commit (see `Store::request`), so
    /// that whoever retries the input can see it was applied.
    pub(crate) async fn turn_keyed(
        &self,
        tenant: &str,
        id: &WorkflowId,
        input: Input,
        key: Option<String>,
    ) -> Result<TurnOutput, ApiError> {
        if tenant_of(id) != tenant {
            return Err(ApiError::NotFound(format!("workflow {id} does not exist")));
        }
        if matches!(input, Input::Assert { .. }) {
            self.check_backpressure(tenant)?;
        }
        let turn = |wf: &mut Workflow| wf.apply(input, now_ms()).map(Some).map_err(reject);
        self.locked_turn(id, key, turn)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("workflow {id} does not exist")))
    }

    /// Runs `f` as a turn under the workflow's lock (loading it if needed),
    /// queues its output for commit before releasing the lock (so one
    /// workflow's turns commit in order), and acts on it once durable.
    /// `Ok(None)`: no such workflow, or `f` made no turn.
    async fn locked_turn(
        &self,
        id: &WorkflowId,
        key: Option<String>,
        f: impl FnOnce(&mut Workflow) -> Result<Option<TurnOutput>, ApiError>,
    ) -> Result<Option<TurnOutput>, ApiError> {
        let slot = self.slot(id);
        let rx = {
            let mut g = slot.wf.lock().expect("workflow lock");
            if !self.ensure_loaded(id, &mut g)? {
                drop(g);
                self.workflows.remove(id);
                return Ok(None);
            }
            let Some(out) = f(g.as_mut().expect("loaded"))? else { return Ok(None) };
            self.committer.submit(id.clone(), out, key)
        };
        let out = rx.await.map_err(|_| ApiError::Internal("commit lost".into()))??;
        self.after_commit(id, &out);
        Ok(Some(out))
    }

    /// Applies a function's final outcome; a duplicate or late one is
    /// ignored (`Ok(false)`).
    pub async fn deliver(&self, inv: &InvocationId, outcome: Outcome) -> Result<bool, ApiError> {
        let Some(id) = inv.workflow() else { return Ok(false) };
        let tenant = tenant_of(&id).to_string();
        match self.turn(&tenant, &id, Input::Result { invocation: inv.clone(), outcome }).await {
            Ok(_) => Ok(true),
            Err(ApiError::Rejected(_)) | Err(ApiError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Moves a loaded or stored workflow to `pack` (another version of its
    /// pack) as a turn. `Ok(None)`: it no longer needs it (finished, gone,
    /// or already on that version).
    pub(crate) async fn upgrade_workflow(
        &self,
        id: &WorkflowId,
        pack: Arc<Pack>,
    ) -> Result<Option<TurnOutput>, ApiError> {
        self.locked_turn(id, None, |wf| {
            if wf.status() != Status::Running || wf.meta().pack_version == pack.manifest.version {
                return Ok(None);
            }
            wf.upgrade(pack, now_ms()).map(Some).map_err(reject)
        })
        .await
    }

    /// Runs `f` on a workflow's current state (loading it if needed).
    pub(crate) fn inspect<T>(&self, id: &WorkflowId, f: impl FnOnce(&Workflow) -> T) -> Result<Option<T>, ApiError> {
        let slot = self.slot(id);
        let mut g = slot.wf.lock().expect("workflow lock");
        if !self.ensure_loaded(id, &mut g)? {
            drop(g);
            self.workflows.remove(id);
            return Ok(None);
        }
        Ok(Some(f(g.as_ref().expect("loaded"))))
    }

    fn after_commit(&self, id: &WorkflowId, out: &TurnOutput) {
        if !out.cancelled.is_empty() {
            self.dispatch.cancel(out.cancelled.clone());
            for inv in &out.cancelled {
                let _ = self.background.send(Background::CancelChild(inv.clone()));
            }
        }
        let (children, live): (Vec<_>, Vec<_>) = out
            .invocations
            .iter()
            .filter(|i| !out.cancelled.contains(&i.id))
            .cloned()
            .partition(|i| i.function.starts_with(CHILD_PREFIX));
        if !live.is_empty() {
            self.dispatch.enqueue(tenant_of(id).to_string(), live);
        }
        for inv in children {
            let _ = self.background.send(Background::StartChild(inv));
        }
        for t in &out.timers_put {
            let _ = self.background.send(Background::Timer { workflow: id.clone(), id: t.id, due_ms: t.due_ms });
        }
        for s in &out.signals {
            let _ = self.background.send(Background::Signal { tenant: tenant_of(id).to_string(), signal: s.clone() });
        }
        if let Some(meta) = out.meta.as_ref().filter(|m| m.status != Status::Running) {
            if let Origin::Parent { invocation, .. } = &meta.origin {
                let _ = self
                    .background
                    .send(Background::ChildDone { parent: invocation.clone(), outcome: child_outcome(meta) });
            }
        }
        if let Some(tx) = self.watchers.get(id) {
            for e in &out.entries {
                let _ = tx.send(Arc::new(e.clone()));
            }
        }
        // Finished workflows take no more input: free their memory.
        if out.meta.as_ref().is_some_and(|m| m.status != Status::Running) {
            self.workflows.remove(id);
        }
    }

    /// Reads a workflow of `tenant` as it is durable. Not from memory: a
    /// loaded workflow may hold a turn still being committed, and a reader
    /// must never see what a crash could take back.
    pub fn get(&self, tenant: &str, id: &WorkflowId) -> Result<stoa_engine::workflow::Snapshot, ApiError> {
        let missing = || ApiError::NotFound(format!("workflow {id} does not exist"));
        if tenant_of(id) != tenant {
            return Err(missing());
        }
        self.store.load(id)?.ok_or_else(missing)
    }

    pub fn list(&self, tenant: &str, after: Option<&WorkflowId>, limit: usize) -> Result<Vec<Meta>, ApiError> {
        self.store.workflows(&format!("{}{tenant}.", WorkflowId::PREFIX), after, limit).map_err(ApiError::from)
    }

    pub fn timeline(&self, tenant: &str, id: &WorkflowId, from: u64, limit: usize) -> Result<Vec<Entry>, ApiError> {
        if tenant_of(id) != tenant {
            return Err(ApiError::NotFound(format!("workflow {id} does not exist")));
        }
        self.store.timeline(id, from, limit).map_err(ApiError::from)
    }

    /// Live entries of a workflow from now on.
    pub fn subscribe(&self, id: &WorkflowId) -> broadcast::Receiver<Arc<Entry>> {
        self.watchers.entry(id.clone()).or_insert_with(|| broadcast::channel(1024).0).subscribe()
    }

    /// Drops the channel of a workflow nobody watches any more.
    pub fn unsubscribe_if_idle(&self, id: &WorkflowId) {
        self.watchers.remove_if(id, |_, tx| tx.receiver_count() == 0);
    }

    /// Invocations waiting in the store (to dispatch again after a
    /// restart); children to start (or whose end to deliver) go to the
    /// background.
    pub fn stored_outbox(&self) -> Result<Vec<stoa_engine::workflow::Invocation>, String> {
        let (children, functions): (Vec<_>, Vec<_>) = self
            .store
            .outbox()
            .map_err(|e| e.to_string())?
            .into_iter()
            .partition(|i| i.function.starts_with(CHILD_PREFIX));
        for inv in children {
            let _ = self.background.send(Background::StartChild(inv));
        }
        Ok(functions)
    }

    pub(crate) fn load_rollout(&self, tenant: &str, name: &str) -> Result<Option<Rollout>, String> {
        let v = self.store.get_aux("rollout", &format!("{tenant}/{name}")).map_err(|e| e.to_string())?;
        v.map(|v| serde_json::from_value(v).map_err(|e| e.to_string())).transpose()
    }
}

/// What a finished child workflow answers its parent.
pub(crate) fn child_outcome(meta: &Meta) -> Outcome {
    match meta.status {
        Status::Completed => Outcome::Ok { value: meta.result.clone(), attempts: 1 },
        _ => Outcome::Error {
            kind: stoa_engine::workflow::ErrorKind::Failed,
            message: format!("child workflow {} failed: {}", meta.id, meta.reason.clone().unwrap_or_default()),
            attempts: 1,
            retryable: false,
        },
    }
}

fn reject(r: Rejected) -> ApiError {
    ApiError::Rejected(r)
}
