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
use stoa_engine::workflow::{Input, Meta, Outcome, Rejected, Status, TurnOutput, Workflow};
use stoa_engine::{InvocationId, WorkflowId};
use stoa_rules::compile::{compile, fnv1a, Pack, PackSource};
use stoa_rules::testcase::FactSpec;
use tokio::sync::broadcast;

use crate::committer::Committer;
use crate::dispatcher::DispatchHandle;
use crate::error::ApiError;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The deployed versions of one pack, oldest first; the last is current.
#[derive(Default)]
struct Versions {
    list: Vec<(PackRecord, Arc<Pack>)>,
}

/// A workflow's place in memory; `None` until loaded or created.
#[derive(Default)]
struct Slot {
    wf: Mutex<Option<Workflow>>,
}

pub struct Runtime {
    store: Arc<SledStore>,
    committer: Committer,
    packs: DashMap<(String, String), Versions>,
    workflows: DashMap<WorkflowId, Arc<Slot>>,
    watchers: DashMap<WorkflowId, broadcast::Sender<Arc<Entry>>>,
    dispatch: DispatchHandle,
    max_pending: usize,
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
    ) -> Result<Runtime, String> {
        let rt = Runtime {
            store,
            committer,
            packs: DashMap::new(),
            workflows: DashMap::new(),
            watchers: DashMap::new(),
            dispatch,
            max_pending,
        };
        for t in tenants {
            for rec in rt.store.packs(t).map_err(|e| e.to_string())? {
                let pack = compile_record(&rec).map_err(|d| {
                    format!("stored pack {}/{} {} no longer compiles: {}", t, rec.name, rec.version, d[0])
                })?;
                rt.packs.entry((t.clone(), rec.name.clone())).or_default().list.push((rec, Arc::new(pack)));
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
        self.store.put_pack(&rec).map_err(|e| ApiError::Internal(e.to_string()))?;
        versions.list.push((rec, pack.clone()));
        Ok((pack, diags, true))
    }

    /// (name, versions oldest first, current pack) of each of a tenant's packs.
    pub fn packs(&self, tenant: &str) -> Vec<(String, Vec<String>, Arc<Pack>)> {
        let mut out: Vec<_> = self
            .packs
            .iter()
            .filter(|e| e.key().0 == tenant)
            .filter_map(|e| {
                let (_, current) = e.value().list.last()?;
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

    fn pack(&self, tenant: &str, name: &str, version: Option<&str>) -> Result<Arc<Pack>, ApiError> {
        let versions = self
            .packs
            .get(&(tenant.to_string(), name.to_string()))
            .ok_or_else(|| ApiError::NotFound(format!("pack `{name}` is not deployed")))?;
        let found = match version {
            None => versions.list.last(),
            Some(v) => versions.list.iter().rev().find(|(r, _)| r.version == v),
        };
        found.map(|(_, p)| p.clone()).ok_or_else(|| {
            ApiError::NotFound(format!("pack `{name}` has no version {}", version.unwrap_or("deployed")))
        })
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
        let Some(snap) = self.store.load(id).map_err(|e| ApiError::Internal(e.to_string()))? else {
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
        // The id derives from the request id: a repeated request finds the
        // same slot, even while the first is still committing.
        let id = WorkflowId::new(format!("{tenant}.{:016x}", fnv1a(request_id.as_bytes(), 0xcbf29ce484222325)));
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
            let created = self.pack(tenant, pack, None).and_then(|pack| {
                let mut wf = Workflow::new(id.clone(), pack, now_ms());
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
        let out = rx.await.map_err(|_| ApiError::Internal("commit lost".into()))?.map_err(ApiError::Internal)?;
        if !first {
            return match self.store.request(&request).map_err(|e| ApiError::Internal(e.to_string()))? {
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
        if tenant_of(id) != tenant {
            return Err(ApiError::NotFound(format!("workflow {id} does not exist")));
        }
        if matches!(input, Input::Assert { .. }) {
            self.check_backpressure(tenant)?;
        }
        let slot = self.slot(id);
        let rx = {
            let mut g = slot.wf.lock().expect("workflow lock");
            if !self.ensure_loaded(id, &mut g)? {
                drop(g);
                self.workflows.remove(id);
                return Err(ApiError::NotFound(format!("workflow {id} does not exist")));
            }
            let wf = g.as_mut().expect("loaded");
            let out = wf.apply(input, now_ms()).map_err(reject)?;
            self.committer.submit(id.clone(), out, None)
        };
        let out = rx.await.map_err(|_| ApiError::Internal("commit lost".into()))?.map_err(ApiError::Internal)?;
        self.after_commit(id, &out);
        Ok(out)
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

    fn after_commit(&self, id: &WorkflowId, out: &TurnOutput) {
        if !out.cancelled.is_empty() {
            self.dispatch.cancel(out.cancelled.clone());
        }
        let live: Vec<_> = out.invocations.iter().filter(|i| !out.cancelled.contains(&i.id)).cloned().collect();
        if !live.is_empty() {
            self.dispatch.enqueue(tenant_of(id).to_string(), live);
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

    /// Reads a workflow of `tenant` (from memory if loaded, else the store).
    pub fn get(&self, tenant: &str, id: &WorkflowId) -> Result<stoa_engine::workflow::Snapshot, ApiError> {
        let missing = || ApiError::NotFound(format!("workflow {id} does not exist"));
        if tenant_of(id) != tenant {
            return Err(missing());
        }
        if let Some(slot) = self.workflows.get(id).map(|s| s.clone()) {
            if let Some(wf) = slot.wf.lock().expect("workflow lock").as_ref() {
                return Ok(wf.snapshot());
            }
        }
        self.store.load(id).map_err(|e| ApiError::Internal(e.to_string()))?.ok_or_else(missing)
    }

    pub fn list(&self, tenant: &str, after: Option<&WorkflowId>, limit: usize) -> Result<Vec<Meta>, ApiError> {
        self.store
            .workflows(&format!("{}{tenant}.", WorkflowId::PREFIX), after, limit)
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    pub fn timeline(&self, tenant: &str, id: &WorkflowId, from: u64, limit: usize) -> Result<Vec<Entry>, ApiError> {
        if tenant_of(id) != tenant {
            return Err(ApiError::NotFound(format!("workflow {id} does not exist")));
        }
        self.store.timeline(id, from, limit).map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// Live entries of a workflow from now on.
    pub fn subscribe(&self, id: &WorkflowId) -> broadcast::Receiver<Arc<Entry>> {
        self.watchers.entry(id.clone()).or_insert_with(|| broadcast::channel(1024).0).subscribe()
    }

    /// Drops the channel of a workflow nobody watches any more.
    pub fn unsubscribe_if_idle(&self, id: &WorkflowId) {
        self.watchers.remove_if(id, |_, tx| tx.receiver_count() == 0);
    }

    /// Invocations waiting in the store (to dispatch again after a restart).
    pub fn stored_outbox(&self) -> Result<Vec<stoa_engine::workflow::Invocation>, String> {
        self.store.outbox().map_err(|e| e.to_string())
    }
}

fn reject(r: Rejected) -> ApiError {
    ApiError::Rejected(r)
}
