//! The live side of the server: deployed packs, workflows in memory, turns
//! (apply on a turn thread, group-commit, then dispatch and publish),
//! watchers.
//!
//! A turn runs on the turn pool (`pool`), never on the async runtime, while
//! it holds its workflow's lock (an async mutex: waiting for it blocks no
//! thread). It is queued for commit before the lock is released, so one
//! workflow's turns commit in order; its invocations leave and its entries
//! are published only once it is durable.
//!
//! A workflow in memory is a cache of the store: it is unloaded when it
//! finishes, when it has been idle a while or memory holds too many, when
//! a commit of it failed, when a turn of it was interrupted, and when a
//! turn of it panicked; its next turn reloads it. Never while a commit of
//! it is queued: the store would not have that turn yet.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use dashmap::DashMap;
use stoa_engine::store::{Error as StoreError, PackRecord, Store};
use stoa_engine::timeline::Entry;
use stoa_engine::workflow::{Input, Meta, Origin, Outcome, Rejected, Status, TurnOutput, Workflow, CHILD_PREFIX};
use stoa_engine::{InvocationId, WorkflowId};
use stoa_rules::compile::{compile_within, fnv1a, Pack, PackSource};
use stoa_rules::limits::Ceilings;
use stoa_rules::testcase::FactSpec;
use stoa_rules::Diagnostic;
use tokio::sync::{broadcast, mpsc, oneshot, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::committer::Committer;
use crate::config::Policy;
use crate::dispatch_handle::DispatchHandle;
use crate::error::ApiError;
use crate::followup::Background;
use crate::peer::{Op, Peers, Reply};
use crate::placement::{Place, Placement};
use crate::pool::Pool;
use crate::rollout::{in_fraction, Plans, Rollout};
use crate::route_locks::RouteLocks;
use crate::trace::TurnSpan;

/// One deployed version of a pack.
pub(crate) struct Version {
    pub version: String,
    pub seq: u64,
    pub digest: u64,
    /// Compiled and kept: the newest versions and the running ones.
    kept: Option<Arc<Pack>>,
    /// Compiled again on demand (a workflow of an old version loading),
    /// for as long as something holds it.
    cached: Weak<Pack>,
}

impl Version {
    fn pack(&self) -> Option<Arc<Pack>> {
        self.kept.clone().or_else(|| self.cached.upgrade())
    }
}

/// The deployed versions of one pack, oldest first, and which of them new
/// and live workflows run.
#[derive(Default)]
pub(crate) struct Versions {
    pub list: Vec<Version>,
    /// Unset: the newest version is stable.
    pub rollout: Option<Rollout>,
}

impl Versions {
    fn find(&self, version: &str) -> Option<&Version> {
        self.list.iter().rev().find(|v| v.version == version)
    }

    /// A version that is compiled now (the stable and canary ones always are).
    pub fn get(&self, version: &str) -> Option<Arc<Pack>> {
        self.find(version)?.pack()
    }

    pub fn stable_version(&self) -> Option<&str> {
        match &self.rollout {
            Some(r) => Some(&r.stable),
            None => self.list.last().map(|v| v.version.as_str()),
        }
    }

    pub fn stable(&self) -> Option<Arc<Pack>> {
        self.get(self.stable_version()?)
    }

    /// The version a workflow with this id runs on (canary by id hash).
    pub fn for_workflow(&self, id: &WorkflowId) -> Option<Arc<Pack>> {
        self.get(self.version_for(id)?)
    }

    /// `for_workflow`'s version, compiled or not.
    fn version_for(&self, id: &WorkflowId) -> Option<&str> {
        match self.rollout.as_ref().and_then(|r| r.canary.as_ref()) {
            Some(c) if in_fraction(id, c.fraction) => Some(&c.version),
            _ => self.stable_version(),
        }
    }

    /// Keeps the newest `keep` versions and the running ones compiled; the
    /// others stay in the store only.
    fn trim(&mut self, keep: usize) {
        let running: Vec<String> = self
            .stable_version()
            .into_iter()
            .chain(self.rollout.as_ref().and_then(|r| r.canary.as_ref()).map(|c| c.version.as_str()))
            .map(str::to_string)
            .collect();
        let n = self.list.len();
        for (i, v) in self.list.iter_mut().enumerate() {
            if i + keep < n && !running.contains(&v.version) {
                if let Some(p) = v.kept.take() {
                    v.cached = Arc::downgrade(&p);
                }
            }
        }
    }
}

/// A workflow's place in memory.
struct Slot {
    held: Arc<tokio::sync::Mutex<Held>>,
    /// Turns of it queued for commit and not yet durable.
    committing: AtomicUsize,
    /// When a request last took it (milliseconds since the epoch).
    used_ms: AtomicU64,
    /// The epoch of its partition when it was loaded (see `placement`).
    epoch: AtomicU64,
}

#[derive(Default)]
pub(crate) enum Held {
    /// Not in memory yet: the first turn loads it from the store.
    #[default]
    Unloaded,
    Loaded(Box<Workflow>),
    /// Taken out of the map: whoever waited for it takes a fresh slot.
    Gone,
}

pub(crate) type Guard = OwnedMutexGuard<Held>;

/// Who asked for a turn: a client's turns are admitted against the
/// tenant's quotas exactly (the invocations they make are reserved before
/// they commit); the server's own (results, timers, children, signals
/// routed) always go on, since they finish work already admitted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    Client,
    Server,
}

/// What a commit of a turn waits on, and what it reserved.
struct Queued {
    rx: oneshot::Receiver<Result<TurnOutput, StoreError>>,
    /// Invocations reserved against the tenant's `max_pending`.
    reserved: usize,
    admit: Admit,
}

pub struct Options {
    pub policies: BTreeMap<String, Policy>,
    pub max_loaded: usize,
    pub unload_idle_ms: u64,
    /// How long finished workflows stay stored (see `retention`).
    pub retain_finished_ms: u64,
    /// What every part of the server reads time from.
    pub clock: Clock,
    /// How a pack's files become a pack: `compiler()`, unless a test
    /// memoizes it.
    pub compile: Compile,
    /// Where each workflow lives (everything here for a server alone).
    pub placement: Arc<Placement>,
    /// The other servers of the cluster, to forward turns to.
    pub peers: Option<Arc<Peers>>,
    pub metrics: crate::metrics::Metrics,
}

/// Compiles a pack's files under ceilings (see `compile_within`).
pub type Compile = Arc<dyn Fn(&PackSource, &Ceilings<'_>) -> (Option<Arc<Pack>>, Vec<Diagnostic>) + Send + Sync>;

/// The compiler: `compile_within`. The simulation memoizes it, since its
/// runs build the same few packs thousands of times (a Rhai engine each).
pub fn compiler() -> Compile {
    Arc::new(|src, ceilings| {
        let (pack, diags) = compile_within(src, Some(ceilings));
        (pack.map(Arc::new), diags)
    })
}

pub struct Runtime {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Clock,
    committer: Committer,
    pool: Pool,
    pub(crate) opts: Options,
    pub(crate) packs: DashMap<(String, String), Versions>,
    /// One deploy of a pack at a time (striped by name).
    deploy_locks: [tokio::sync::Mutex<()>; 16],
    workflows: DashMap<WorkflowId, Arc<Slot>>,
    /// Running workflows per tenant (their quota).
    live: DashMap<String, AtomicU64>,
    /// Workflows whose last commit failed: counted in `live` until the store
    /// says whether it holds them running (a failed flush may still be
    /// recovered when the store heals), at their next load or the heal.
    unsure: std::sync::Mutex<std::collections::BTreeSet<WorkflowId>>,
    watchers: DashMap<WorkflowId, broadcast::Sender<Arc<Entry>>>,
    dispatch: DispatchHandle,
    /// Work that outlives a turn: timers, signals, children, upgrades.
    pub(crate) background: mpsc::UnboundedSender<Background>,
    pub(crate) route_locks: RouteLocks,
    /// Upgrade plans of turns forwarded here (see `apply_here`).
    forwarded_plans: Plans,
}

/// The tenant part of a workflow id (`wf_<tenant>.<key>`).
pub fn tenant_of(id: &WorkflowId) -> &str {
    let body = &id.as_str()[WorkflowId::PREFIX.len()..];
    body.split_once('.').map(|(t, _)| t).unwrap_or("")
}

fn source_of(files: &BTreeMap<String, String>) -> PackSource {
    PackSource { root: PathBuf::new(), files: files.iter().map(|(k, v)| (PathBuf::from(k), v.clone())).collect() }
}

fn reject(r: Rejected) -> ApiError {
    ApiError::Rejected(r)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

impl Runtime {
    pub fn new(
        store: Arc<dyn Store>,
        committer: Committer,
        pool: Pool,
        dispatch: DispatchHandle,
        opts: Options,
        background: mpsc::UnboundedSender<Background>,
    ) -> Result<Runtime, String> {
        let rt = Runtime {
            store,
            clock: opts.clock.clone(),
            committer,
            pool,
            opts,
            packs: DashMap::new(),
            deploy_locks: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
            workflows: DashMap::new(),
            live: DashMap::new(),
            unsure: Default::default(),
            watchers: DashMap::new(),
            dispatch,
            background,
            route_locks: Default::default(),
            forwarded_plans: Plans::default(),
        };
        let tenants: Vec<String> = rt.opts.policies.keys().cloned().collect();
        for t in &tenants {
            let mut by_name: BTreeMap<String, Versions> = BTreeMap::new();
            for rec in rt.store.packs(t).map_err(|e| e.to_string())? {
                by_name.entry(rec.name.clone()).or_default().list.push(Version {
                    version: rec.version,
                    seq: rec.seq,
                    digest: rec.digest,
                    kept: None,
                    cached: Weak::new(),
                });
            }
            let keep = rt.policy(t).quotas.max_versions_kept as usize;
            for (name, mut versions) in by_name {
                versions.rollout = rt.load_rollout(t, &name)?;
                // Compile what is kept: stable, canary and the newest.
                versions.trim(keep);
                let n = versions.list.len();
                let running: Vec<String> = versions
                    .stable_version()
                    .into_iter()
                    .chain(versions.rollout.as_ref().and_then(|r| r.canary.as_ref()).map(|c| c.version.as_str()))
                    .map(str::to_string)
                    .collect();
                for i in 0..n {
                    if i + keep >= n || running.contains(&versions.list[i].version) {
                        let seq = versions.list[i].seq;
                        let pack = rt.compile_stored(t, &name, seq).map_err(|e| e.to_string())?;
                        versions.list[i].kept = Some(pack);
                    }
                }
                rt.packs.insert((t.clone(), name), versions);
            }
            let mut live = 0;
            let mut after = None;
            loop {
                let page = rt.list(t, after.as_ref(), 1000).map_err(|e| e.to_string())?;
                let Some(last) = page.last() else { break };
                after = Some(last.id.clone());
                live += page.iter().filter(|m| m.status == Status::Running).count() as u64;
            }
            rt.live.insert(t.clone(), AtomicU64::new(live));
        }
        Ok(rt)
    }

    pub(crate) fn policy(&self, tenant: &str) -> &Policy {
        self.opts.policies.get(tenant).expect("a tenant has a policy (auth admits configured tenants only)")
    }

    /// A stored pack version, compiled under its tenant's ceilings. Those
    /// may have been lowered since it was deployed: its limits are lowered
    /// with them, since its workflows exist.
    fn compile_stored(&self, tenant: &str, name: &str, seq: u64) -> Result<Arc<Pack>, ApiError> {
        let rec = self
            .store
            .pack(tenant, name, seq)?
            .ok_or_else(|| internal(format!("pack {tenant}/{name} #{seq} is not in the store")))?;
        let ceilings = Ceilings { limits: &self.policy(tenant).ceilings, owner: "", reject_explicit: false };
        let (pack, diags) = (self.opts.compile)(&source_of(&rec.files), &ceilings);
        pack.ok_or_else(|| {
            let first = diags.iter().find(|d| d.is_error()).map(|d| d.to_string()).unwrap_or_default();
            internal(format!("stored pack {tenant}/{name} {} no longer compiles: {first}", rec.version))
        })
    }

    // ---- packs ----------------------------------------------------------

    /// Compiles (on a turn thread) and, unless `dry_run`, deploys a pack.
    /// With `gate`, first refuses a pack whose rollout in that mode would
    /// move live facts across an incompatible schema change (`compat`).
    /// Returns the compiled pack, its diagnostics (warnings) and whether
    /// anything changed.
    pub async fn deploy(
        self: &Arc<Self>,
        tenant: &str,
        files: BTreeMap<String, String>,
        dry_run: bool,
        gate: Option<crate::upgrade::Mode>,
    ) -> Result<(Arc<Pack>, Vec<stoa_rules::Diagnostic>, bool), ApiError> {
        let quotas = self.policy(tenant).quotas.clone();
        let bytes: u64 = files.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        if bytes > quotas.max_pack_bytes {
            return Err(ApiError::ResourceExhausted(format!(
                "the pack has {bytes} bytes; tenant `{tenant}` may deploy at most {} (quota max_pack_bytes)",
                quotas.max_pack_bytes
            )));
        }
        if files.len() as u64 > quotas.max_files_per_pack {
            return Err(ApiError::ResourceExhausted(format!(
                "the pack has {} files; tenant `{tenant}` may deploy at most {} (quota max_files_per_pack)",
                files.len(),
                quotas.max_files_per_pack
            )));
        }
        let rt = self.clone();
        let owner = format!("tenant `{tenant}`");
        let t = tenant.to_string();
        let compiled = self
            .pool
            .run(tenant, move || {
                let src = source_of(&files);
                let ceilings = Ceilings { limits: &rt.policy(&t).ceilings, owner: &owner, reject_explicit: true };
                let (pack, diags) = (rt.opts.compile)(&src, &ceilings);
                let Some(pack) = pack else {
                    let text = src.render(diags.iter().filter(|d| d.is_error()));
                    return Err(ApiError::InvalidArgument(format!(
                        "the pack has {} error(s); the deployed version is unchanged\n{}",
                        text.len(),
                        text.join("\n\n")
                    )));
                };
                Ok((pack, diags, files))
            })
            .await
            .map_err(internal)?;
        let (pack, diags, files) = compiled?;
        if pack.rules.len() as u64 > quotas.max_rules_per_pack {
            return Err(ApiError::ResourceExhausted(format!(
                "the pack has {} rules; tenant `{tenant}` may deploy at most {} (quota max_rules_per_pack)",
                pack.rules.len(),
                quotas.max_rules_per_pack
            )));
        }
        let name = pack.manifest.name.clone();
        if let (false, Some(mode)) = (dry_run, gate) {
            let impacts = self.schema_impact(tenant, &name, &pack, mode, false).await?;
            let what = format!("deploying {name} {}", pack.manifest.version);
            crate::compat::refuse_blocking(&impacts, &what)?;
        }
        let key = (tenant.to_string(), name.clone());
        let _deploying = self.deploy_lock(tenant, &name).lock().await;
        let (last, seq) = match self.packs.get(&key) {
            Some(v) => {
                if let Some(same) = v.find(&pack.manifest.version).filter(|same| same.digest != pack.digest) {
                    return Err(ApiError::FailedPrecondition(format!(
                        "version {} of pack {name} is already deployed with other content; give the new one another version",
                        same.version
                    )));
                }
                (v.list.last().map(|l| (l.version.clone(), l.digest)), v.list.len() as u64 + 1)
            }
            None => (None, 1),
        };
        if last.as_ref().is_some_and(|(_, digest)| *digest == pack.digest) {
            return Ok((pack, diags, false));
        }
        if dry_run {
            return Ok((pack, diags, true));
        }
        // A stored version is not live until its rollout says so: pin the
        // one running now first, durably, so neither a canary deploy nor a
        // crash before the rollout makes the new version stable by default.
        let pinned = self.packs.get(&key).is_some_and(|v| v.rollout.is_some());
        if let (false, Some((version, _))) = (pinned, &last) {
            let pinned = Rollout { stable: version.clone(), canary: None };
            let v = serde_json::to_value(&pinned).map_err(internal)?;
            self.store.put_aux("rollout", &format!("{tenant}/{name}"), &v)?;
            self.packs.entry(key.clone()).or_default().rollout = Some(pinned);
        }
        let rec = PackRecord {
            tenant: tenant.to_string(),
            name: name.clone(),
            version: pack.manifest.version.clone(),
            seq,
            digest: pack.digest,
            deployed_ms: self.clock.now_ms(),
            files,
        };
        self.store.put_pack(&rec)?;
        tracing::info!(tenant, pack = %name, version = %rec.version, rules = pack.rules.len(), "pack deployed");
        let mut versions = self.packs.entry(key).or_default();
        versions.list.push(Version {
            version: rec.version,
            seq,
            digest: rec.digest,
            kept: Some(pack.clone()),
            cached: Weak::new(),
        });
        versions.trim(quotas.max_versions_kept as usize);
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
                Some((e.key().1.clone(), e.value().list.iter().map(|v| v.version.clone()).collect(), current))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// One version of a pack, compiled again from the store if it is not
    /// kept in memory (call it on a turn thread).
    pub(crate) fn pack(&self, tenant: &str, name: &str, version: Option<&str>) -> Result<Arc<Pack>, ApiError> {
        match self.pack_known(tenant, name, version) {
            // Deployed through another server of the cluster, maybe.
            Err(ApiError::NotFound(_)) if self.opts.placement.is_cluster() => {
                self.refresh_packs(tenant)?;
                self.pack_known(tenant, name, version)
            }
            other => other,
        }
    }

    /// Versions and rollouts deployed through the cluster's other servers
    /// (a server alone deploys them all itself): versions it lacks are
    /// added, compiled when first needed; rollouts are read again.
    pub(crate) fn refresh_packs(&self, tenant: &str) -> Result<(), ApiError> {
        let known: std::collections::HashSet<(String, u64)> = self
            .packs
            .iter()
            .filter(|e| e.key().0 == tenant)
            .flat_map(|e| e.value().list.iter().map(|v| (e.key().1.clone(), v.seq)).collect::<Vec<_>>())
            .collect();
        let stored = self.store.pack_seqs(tenant)?;
        if stored.iter().any(|k| !known.contains(k)) {
            let mut records = self.store.packs(tenant)?;
            records.sort_by_key(|r| r.seq);
            for rec in records.into_iter().filter(|r| !known.contains(&(r.name.clone(), r.seq))) {
                let mut versions = self.packs.entry((tenant.to_string(), rec.name.clone())).or_default();
                if !versions.list.iter().any(|v| v.seq == rec.seq) {
                    let at = versions.list.iter().position(|v| v.seq > rec.seq).unwrap_or(versions.list.len());
                    let v = Version {
                        version: rec.version,
                        seq: rec.seq,
                        digest: rec.digest,
                        kept: None,
                        cached: Weak::new(),
                    };
                    versions.list.insert(at, v);
                }
            }
        }
        for (key, value) in self.store.scan_aux("rollout", &format!("{tenant}/"))? {
            let Some((_, name)) = key.split_once('/') else { continue };
            let rollout: Rollout = serde_json::from_value(value).map_err(internal)?;
            if let Some(mut versions) = self.packs.get_mut(&(tenant.to_string(), name.to_string())) {
                if versions.rollout.as_ref() != Some(&rollout) {
                    versions.rollout = Some(rollout);
                }
            }
        }
        // What runs is kept compiled, as after a deploy here.
        let keep = self.policy(tenant).quotas.max_versions_kept as usize;
        let names: Vec<String> = self.packs.iter().filter(|e| e.key().0 == tenant).map(|e| e.key().1.clone()).collect();
        for name in names {
            let key = (tenant.to_string(), name.clone());
            let running: Vec<String> = match self.packs.get(&key) {
                Some(v) => v
                    .stable_version()
                    .into_iter()
                    .chain(v.rollout.as_ref().and_then(|r| r.canary.as_ref()).map(|c| c.version.as_str()))
                    .filter(|version| v.get(version).is_none())
                    .map(str::to_string)
                    .collect(),
                None => continue,
            };
            for version in running {
                let pack = self.pack_known(tenant, &name, Some(&version))?;
                if let Some(mut versions) = self.packs.get_mut(&key) {
                    if let Some(v) = versions.list.iter_mut().rev().find(|v| v.version == version) {
                        v.kept = Some(pack);
                    }
                    versions.trim(keep);
                }
            }
        }
        Ok(())
    }

    /// `refresh_packs` for every tenant (each lease tick of a cluster).
    pub(crate) fn refresh_all_packs(&self) {
        for tenant in self.opts.policies.keys() {
            if let Err(e) = self.refresh_packs(tenant) {
                tracing::warn!(%tenant, error = %e, "reading the packs deployed through other servers");
            }
        }
    }

    /// `pack`, from what this server knows.
    fn pack_known(&self, tenant: &str, name: &str, version: Option<&str>) -> Result<Arc<Pack>, ApiError> {
        let missing = || ApiError::NotFound(format!("pack `{name}` is not deployed"));
        let seq = {
            let versions = self.packs.get(&(tenant.to_string(), name.to_string())).ok_or_else(missing)?;
            let v = match version {
                None => versions.stable_version().and_then(|s| versions.find(s)),
                Some(v) => versions.find(v),
            };
            let v = v.ok_or_else(|| {
                ApiError::NotFound(format!("pack `{name}` has no version {}", version.unwrap_or("deployed")))
            })?;
            if let Some(p) = v.pack() {
                return Ok(p);
            }
            v.seq
        };
        let pack = self.compile_stored(tenant, name, seq)?;
        if let Some(mut versions) = self.packs.get_mut(&(tenant.to_string(), name.to_string())) {
            if let Some(v) = versions.list.iter_mut().find(|v| v.seq == seq) {
                match v.pack() {
                    Some(other) => return Ok(other),
                    None => v.cached = Arc::downgrade(&pack),
                }
            }
        }
        Ok(pack)
    }

    /// One deploy or rollout of a pack at a time.
    pub(crate) fn deploy_lock(&self, tenant: &str, name: &str) -> &tokio::sync::Mutex<()> {
        &self.deploy_locks[fnv1a(format!("{tenant}/{name}").as_bytes(), 0xcbf29ce484222325) as usize % 16]
    }

    /// Compiles a version (on a turn thread) if it is not in memory, and
    /// keeps it there: it is about to run.
    pub(crate) async fn keep_version(
        self: &Arc<Self>,
        tenant: &str,
        name: &str,
        version: &str,
    ) -> Result<Arc<Pack>, ApiError> {
        let rt = self.clone();
        let (t, n, v) = (tenant.to_string(), name.to_string(), version.to_string());
        self.pool.run(tenant, move || rt.pack(&t, &n, Some(&v))).await.map_err(internal)?
    }

    /// Makes `rollout` the pack's, keeping what it runs compiled.
    pub(crate) fn set_rollout(&self, tenant: &str, name: &str, rollout: Rollout, runs: Arc<Pack>) {
        let keep = self.policy(tenant).quotas.max_versions_kept as usize;
        let Some(mut versions) = self.packs.get_mut(&(tenant.to_string(), name.to_string())) else { return };
        if let Some(v) = versions.list.iter_mut().rev().find(|v| v.version == runs.manifest.version) {
            v.kept = Some(runs);
        }
        versions.rollout = Some(rollout);
        versions.trim(keep);
    }

    /// One deployed version of a pack, compiled again on the turn pool if
    /// it is not kept in memory.
    pub async fn pack_compiled(
        self: &Arc<Self>,
        tenant: &str,
        name: &str,
        version: &str,
    ) -> Result<Arc<Pack>, ApiError> {
        if let Some(p) = self.pack_version(tenant, name, version) {
            return Ok(p);
        }
        let (rt, t, n, v) = (self.clone(), tenant.to_string(), name.to_string(), version.to_string());
        self.pool.run(tenant, move || rt.pack(&t, &n, Some(&v))).await.map_err(internal)?
    }

    /// One deployed version of a pack, if it is compiled now.
    pub fn pack_version(&self, tenant: &str, name: &str, version: &str) -> Option<Arc<Pack>> {
        self.packs.get(&(tenant.to_string(), name.to_string()))?.get(version)
    }

    /// The version a new workflow with this id starts on (compiled from
    /// the store if it is not in memory: deployed through another server).
    fn pack_for_new(&self, tenant: &str, name: &str, id: &WorkflowId) -> Result<Arc<Pack>, ApiError> {
        let version = self.packs.get(&(tenant.to_string(), name.to_string())).and_then(|v| {
            let compiled = v.for_workflow(id);
            compiled.map(Ok).or_else(|| v.version_for(id).map(|s| Err(s.to_string())))
        });
        match version {
            Some(Ok(pack)) => Ok(pack),
            Some(Err(version)) => self.pack(tenant, name, Some(&version)),
            None => self.pack(tenant, name, None),
        }
    }

    /// The rollout of a pack (stable version and canary).
    pub fn rollout_of(&self, tenant: &str, name: &str) -> Option<Rollout> {
        let v = self.packs.get(&(tenant.to_string(), name.to_string()))?;
        let stable = v.stable_version()?.to_string();
        Some(v.rollout.clone().unwrap_or(Rollout { stable, canary: None }))
    }

    // ---- workflows in memory --------------------------------------------

    /// The workflow's slot, locked (waiting without blocking a thread).
    async fn lock(&self, id: &WorkflowId) -> (Arc<Slot>, Guard) {
        loop {
            let slot = self
                .workflows
                .entry(id.clone())
                .or_insert_with(|| {
                    Arc::new(Slot {
                        held: Default::default(),
                        committing: AtomicUsize::new(0),
                        used_ms: AtomicU64::new(0),
                        epoch: AtomicU64::new(0),
                    })
                })
                .clone();
            let guard = slot.held.clone().lock_owned().await;
            if !matches!(*guard, Held::Gone) {
                slot.used_ms.store(self.clock.now_ms(), Ordering::Relaxed);
                return (slot, guard);
            }
        }
    }

    /// The epoch of the workflow's partition if it is held here (its
    /// guard held): memory loaded at another epoch is dropped, since the
    /// partition was elsewhere meanwhile. `Moved` if it is not here.
    fn here_at(&self, id: &WorkflowId, slot: &Arc<Slot>, guard: &mut Guard) -> Result<u64, ApiError> {
        let Some(epoch) = self.opts.placement.epoch(id) else {
            if slot.committing.load(Ordering::Acquire) == 0 {
                self.unload(id, slot, guard);
            }
            return Err(ApiError::Moved(format!("workflow {id} is not on this server (its partition moved)")));
        };
        if slot.epoch.swap(epoch, Ordering::AcqRel) != epoch && matches!(**guard, Held::Loaded(_)) {
            **guard = Held::Unloaded;
        }
        Ok(epoch)
    }

    /// Takes a workflow out of memory (its guard held); its next turn
    /// reloads it from the store.
    fn unload(&self, id: &WorkflowId, slot: &Arc<Slot>, guard: &mut Guard) {
        **guard = Held::Gone;
        self.workflows.remove_if(id, |_, s| Arc::ptr_eq(s, slot));
    }

    /// Loads the workflow into its slot if needed (on a turn thread).
    /// `Ok(false)`: no such workflow.
    fn ensure_loaded(&self, id: &WorkflowId, held: &mut Held) -> Result<bool, ApiError> {
        if matches!(held, Held::Loaded(_)) {
            return Ok(true);
        }
        let stored = self.store.load(id)?;
        self.settle(id, stored.as_ref().is_some_and(|s| s.meta.status == Status::Running));
        let Some(snap) = stored else {
            return Ok(false);
        };
        let pack = self.pack(tenant_of(id), &snap.meta.pack, Some(&snap.meta.pack_version))?;
        *held = Held::Loaded(Box::new(Workflow::restore(pack, snap).map_err(ApiError::Internal)?));
        Ok(true)
    }

    /// Takes these finished workflows out of memory so that they can be
    /// deleted from the store: returns those it could, with their locks,
    /// which keep any request off them until the delete is done (a request
    /// then finds no workflow). One whose lock is taken, or with a commit
    /// queued, is left for the next sweep.
    pub(crate) fn hold_for_delete(&self, ids: Vec<WorkflowId>) -> (Vec<WorkflowId>, Vec<Guard>) {
        let mut guards = Vec::new();
        let ids = ids
            .into_iter()
            .filter(|id| {
                let Some(slot) = self.workflows.get(id).map(|e| e.value().clone()) else { return true };
                let Ok(mut guard) = slot.held.clone().try_lock_owned() else { return false };
                if slot.committing.load(Ordering::Acquire) != 0 {
                    return false;
                }
                self.unload(id, &slot, &mut guard);
                guards.push(guard);
                true
            })
            .collect();
        (ids, guards)
    }

    /// Unloads idle workflows, and the least recently used ones while more
    /// than `max_loaded` are in memory; never one with a commit queued.
    pub(crate) async fn unload_idle(self: Arc<Self>, shutdown: CancellationToken) {
        crate::clock::every(std::time::Duration::from_millis(500), shutdown, || self.unload_some()).await
    }

    fn unload_some(&self) {
        let idle_before = self.clock.now_ms().saturating_sub(self.opts.unload_idle_ms);
        let over = self.workflows.len().saturating_sub(self.opts.max_loaded);
        // Past the limit, every slot is a candidate, oldest first;
        // otherwise only the idle ones are looked at.
        let mut slots: Vec<(u64, WorkflowId, Arc<Slot>)> = self
            .workflows
            .iter()
            .map(|e| (e.value().used_ms.load(Ordering::Relaxed), e))
            .filter(|(used, _)| over > 0 || *used <= idle_before)
            .map(|(used, e)| (used, e.key().clone(), e.value().clone()))
            .collect();
        if over > 0 {
            // By id among the equally old: the map's order is no order.
            slots.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        }
        let mut unloaded = 0;
        for (i, (used, id, slot)) in slots.into_iter().enumerate() {
            if i >= over && used > idle_before {
                continue;
            }
            let Ok(mut guard) = slot.held.clone().try_lock_owned() else { continue };
            if slot.committing.load(Ordering::Acquire) == 0 && !matches!(*guard, Held::Gone) {
                self.unload(&id, &slot, &mut guard);
                unloaded += 1;
            }
        }
        if unloaded > 0 {
            tracing::debug!(unloaded, loaded = self.workflows.len(), "unloaded idle workflows");
        }
    }

    // ---- turns -----------------------------------------------------------

    fn check_backpressure(&self, tenant: &str) -> Result<(), ApiError> {
        let pending = self.dispatch.pending(tenant);
        let max = self.policy(tenant).quotas.max_pending as usize;
        if pending >= max {
            return Err(ApiError::ResourceExhausted(format!(
                "tenant `{tenant}` has {pending} invocations pending (quota max_pending {max}); retry later"
            )));
        }
        Ok(())
    }

    /// Runs `work` on the workflow's slot, on a turn thread, holding its
    /// lock; queues the turn it makes for commit before releasing the lock,
    /// then waits until it is durable and acts on it. `Ok(None)`: no turn.
    async fn run_turn(
        self: &Arc<Self>,
        id: &WorkflowId,
        key: Option<String>,
        admit: Admit,
        work: impl FnOnce(&Runtime, &mut Held, &TurnSpan) -> Result<Option<TurnOutput>, ApiError> + Send + 'static,
    ) -> Result<Option<TurnOutput>, ApiError> {
        let trace = TurnSpan::new(id);
        let (slot, guard) = self.lock(id).await;
        let rt = self.clone();
        let (wid, s, t) = (id.clone(), slot.clone(), trace.clone());
        let queued = self
            .pool
            .run(tenant_of(id), move || rt.turn_on_thread(&wid, &s, guard, key, admit, &t, work))
            .await
            .map_err(internal)??;
        let Some(q) = queued else { return Ok(None) };
        let tenant = tenant_of(id);
        let commit = trace.commit();
        let committed = q.rx.await;
        drop(commit);
        match committed {
            Ok(Ok(out)) => {
                slot.committing.fetch_sub(1, Ordering::AcqRel);
                self.after_commit(id, &out, q.admit == Admit::Client);
                Ok(Some(out))
            }
            failed => {
                self.dispatch.release(tenant, q.reserved);
                // Memory is ahead of the store: start again from the store.
                // The committer refuses this workflow's turns from the failed
                // flush on, until told to take them again: under the lock,
                // so after every turn made from the memory now dropped.
                // (Still counted as committing, so nothing unloads it first.)
                let mut guard = slot.held.clone().lock_owned().await;
                if !matches!(*guard, Held::Gone) {
                    // Counted as live (a start's reservation included) until
                    // the store says; before the unload, so the next load
                    // settles it. At once if the store already healed.
                    self.unsure.lock().expect("unsure").insert(id.clone());
                    if self.store.health() == stoa_engine::store::Health::Serving {
                        if let Ok(stored) = self.store.load(id) {
                            self.settle(id, stored.is_some_and(|s| s.meta.status == Status::Running));
                        }
                    }
                    self.committer.forgive(id.clone());
                    self.unload(id, &slot, &mut guard);
                }
                slot.committing.fetch_sub(1, Ordering::AcqRel);
                drop(guard);
                match failed {
                    Ok(Err(e)) => Err(e.into()),
                    _ => Err(internal("commit lost")),
                }
            }
        }
    }

    /// The part of a turn that runs on a turn thread.
    #[allow(clippy::too_many_arguments)]
    fn turn_on_thread(
        &self,
        id: &WorkflowId,
        slot: &Arc<Slot>,
        mut guard: Guard,
        key: Option<String>,
        mut admit: Admit,
        trace: &TurnSpan,
        work: impl FnOnce(&Runtime, &mut Held, &TurnSpan) -> Result<Option<TurnOutput>, ApiError>,
    ) -> Result<Option<Queued>, ApiError> {
        let epoch = self.here_at(id, slot, &mut guard)?;
        let was_loaded = matches!(*guard, Held::Loaded(_));
        let made = std::panic::catch_unwind(AssertUnwindSafe(|| work(self, &mut guard, trace)));
        let metrics = &self.opts.metrics;
        let out = match made {
            Ok(Ok(Some(out))) => {
                if let Some(error) = &out.error {
                    metrics.turn_failed(tenant_of(id), crate::metrics::failure_kind(error));
                } else if let (true, Held::Loaded(wf)) = (metrics.is_on(), &*guard) {
                    use stoa_engine::timeline::{Event, SectionKind};
                    let rules = out.entries.iter().filter_map(|e| match &e.event {
                        Event::Fired { rule, section, .. } => Some((
                            rule.as_str(),
                            match section {
                                SectionKind::Action => 0,
                                SectionKind::Reaction => 1,
                                SectionKind::Error => 2,
                            },
                        )),
                        _ => None,
                    });
                    metrics.fired(tenant_of(id), &wf.meta().pack, rules);
                }
                out
            }
            Ok(Err(ApiError::Rejected(Rejected::Interrupted))) => {
                metrics.turn_failed(tenant_of(id), "interrupted");
                self.unload(id, slot, &mut guard);
                return Err(ApiError::Unavailable("the server is stopping; retry".into()));
            }
            Ok(other) => {
                // No turn: a workflow that does not exist leaves no slot.
                if matches!(*guard, Held::Unloaded) {
                    self.unload(id, slot, &mut guard);
                }
                return other.map(|_| None);
            }
            Err(panic) => {
                crate::pool::retire_this_thread();
                metrics.turn_failed(tenant_of(id), "panic");
                let message = crate::pool::panic_message(&*panic);
                tracing::error!(tenant = tenant_of(id), workflow = %id, panic = %message, "a turn panicked; the workflow is failed");
                let reason = format!("internal error in the engine (a turn panicked: {message}); see the server log");
                match self.aborted(id, &mut guard, &reason) {
                    Some(out) => {
                        admit = Admit::Server;
                        out
                    }
                    None => {
                        self.unload(id, slot, &mut guard);
                        return Err(ApiError::Internal(reason));
                    }
                }
            }
        };
        trace.record(&out);
        let tenant = tenant_of(id);
        let quotas = &self.policy(tenant).quotas;
        // A new workflow counts as live from its first turn (a finished
        // one is counted off in `after_commit`).
        let started = !was_loaded && out.turn == 1;
        let mut reserved = 0;
        if admit == Admit::Client {
            let n = dispatched(&out).count();
            if !self.dispatch.reserve(tenant, n, quotas.max_pending as usize) {
                self.unload(id, slot, &mut guard);
                return Err(ApiError::ResourceExhausted(format!(
                    "tenant `{tenant}` has {} invocations pending and this would add {n} (quota max_pending {}); retry later",
                    self.dispatch.pending(tenant),
                    quotas.max_pending
                )));
            }
            reserved = n;
            if started && !self.live_reserve(tenant, quotas.max_live_workflows) {
                self.dispatch.release(tenant, reserved);
                self.unload(id, slot, &mut guard);
                return Err(ApiError::ResourceExhausted(format!(
                    "tenant `{tenant}` has {} workflows running (quota max_live_workflows); retry later",
                    quotas.max_live_workflows
                )));
            }
        } else if started {
            self.live_add(tenant, 1);
        }
        slot.committing.fetch_add(1, Ordering::AcqRel);
        let epoch = self.opts.placement.is_cluster().then_some(epoch);
        Ok(Some(Queued { rx: self.committer.submit(id.clone(), out, key, epoch), reserved, admit }))
    }

    /// After a panic in a turn (an engine bug), the workflow as stored,
    /// failed with `reason` by a turn of its own, so that nothing retries
    /// the input forever. `None`: it cannot be loaded, or is not running.
    fn aborted(&self, id: &WorkflowId, held: &mut Held, reason: &str) -> Option<TurnOutput> {
        *held = Held::Unloaded;
        let out = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<Option<TurnOutput>, ApiError> {
            if !self.ensure_loaded(id, held)? {
                return Ok(None);
            }
            let Held::Loaded(wf) = held else { unreachable!("loaded") };
            Ok(wf.abort(reason, self.clock.now_ms()))
        }));
        match out {
            Ok(Ok(Some(out))) => Some(out),
            _ => {
                *held = Held::Unloaded;
                None
            }
        }
    }

    /// The store says whether a workflow runs: one whose commit failed is
    /// counted off if not.
    fn settle(&self, id: &WorkflowId, running: bool) {
        if self.unsure.lock().expect("unsure").remove(id) && !running {
            self.live_add(tenant_of(id), -1);
        }
    }

    /// After the store healed: settles the workflows whose commit failed
    /// (each under its lock, so that no turn of it runs meanwhile).
    pub(crate) async fn settle_unsure(self: &Arc<Self>) {
        let ids: Vec<WorkflowId> = self.unsure.lock().expect("unsure").iter().cloned().collect();
        for id in ids {
            let (slot, mut guard) = self.lock(&id).await;
            if self.unsure.lock().expect("unsure").contains(&id) {
                if let Ok(stored) = self.store.load(&id) {
                    self.settle(&id, stored.is_some_and(|s| s.meta.status == Status::Running));
                }
            }
            if matches!(*guard, Held::Unloaded) {
                self.unload(&id, &slot, &mut guard);
            }
        }
    }

    fn live_add(&self, tenant: &str, n: i64) {
        let e = self.live.entry(tenant.to_string()).or_default();
        let _ = e.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_add_signed(n)));
    }

    /// Running workflows of a tenant, as counted against its quota.
    #[cfg(test)]
    pub(crate) fn live_workflows(&self, tenant: &str) -> u64 {
        self.live.get(tenant).map_or(0, |n| n.load(Ordering::Acquire))
    }

    /// Counts one more running workflow if the tenant is under `max`.
    fn live_reserve(&self, tenant: &str, max: u64) -> bool {
        let e = self.live.entry(tenant.to_string()).or_default();
        e.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| (v < max).then_some(v + 1)).is_ok()
    }

    /// Starts a workflow; the request id makes it idempotent.
    pub async fn start(
        self: &Arc<Self>,
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
        self: &Arc<Self>,
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
    /// the same slot, even while the first is still committing. 128 bits of
    /// SHA-256, so that two request ids of a tenant never meet in practice
    /// (nor when chosen to: the hash resists that too).
    pub(crate) fn id_for_request(tenant: &str, request_id: &str) -> WorkflowId {
        use sha2::Digest;
        let digest = sha2::Sha256::new().chain_update(tenant).chain_update("/").chain_update(request_id).finalize();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        WorkflowId::new(format!("{tenant}.{hex}"))
    }

    /// The workflow of a request id: the one recorded with it, else the one
    /// it would start. Servers before 128-bit ids hashed request ids to 64
    /// bits; their workflows keep their ids, found through the record.
    pub(crate) fn workflow_for_request(&self, tenant: &str, request_id: &str) -> Result<WorkflowId, ApiError> {
        match self.store.request(&format!("{tenant}/{request_id}"))? {
            Some(id) => Ok(id),
            None => Ok(Self::id_for_request(tenant, request_id)),
        }
    }

    /// `start` for every start, the server's own (children, signals,
    /// schedules) included, made by the workflow's owner.
    pub(crate) async fn start_as(
        self: &Arc<Self>,
        tenant: &str,
        pack: &str,
        facts: Vec<FactSpec>,
        request_id: &str,
        origin: Origin,
    ) -> Result<(WorkflowId, bool), ApiError> {
        if let Some(strategy) = self.run_strategy_of(tenant, pack) {
            return self.start_by_strategy(strategy, tenant, pack, facts, request_id, origin).await;
        }
        self.start_now(tenant, pack, facts, request_id, origin).await
    }

    /// `start_as` without the pack's run strategy (see `run_strategy`).
    pub(crate) async fn start_now(
        self: &Arc<Self>,
        tenant: &str,
        pack: &str,
        facts: Vec<FactSpec>,
        request_id: &str,
        origin: Origin,
    ) -> Result<(WorkflowId, bool), ApiError> {
        // Where it lives: ids of a cluster are all the 128-bit kind (the
        // older kind exists in the embedded store only, on a server alone).
        let id = Self::id_for_request(tenant, request_id);
        let op = || Op::Start {
            tenant: tenant.to_string(),
            pack: pack.to_string(),
            facts: facts.clone(),
            request_id: request_id.to_string(),
            origin: origin.clone(),
        };
        let here =
            || Box::pin(self.start_here(tenant, pack, facts.clone(), request_id, origin.clone())) as Local<'_, _>;
        self.routed(&id, op, here, |r| match r {
            Reply::Started { workflow, created } => Ok((workflow, created)),
            other => Err(unexpected(other)),
        })
        .await
    }

    /// `start_as` on this server.
    async fn start_here(
        self: &Arc<Self>,
        tenant: &str,
        pack: &str,
        facts: Vec<FactSpec>,
        request_id: &str,
        origin: Origin,
    ) -> Result<(WorkflowId, bool), ApiError> {
        let id = self.workflow_for_request(tenant, request_id)?;
        let request = format!("{tenant}/{request_id}");
        let (t, p, wid, request_key) = (tenant.to_string(), pack.to_string(), id.clone(), request.clone());
        // Set for a repeat: whether its first start is known durable.
        let repeat = Arc::new(std::sync::OnceLock::<bool>::new());
        let is_repeat = repeat.clone();
        let admit =
            if matches!(origin, Origin::Parent { .. } | Origin::Signal { .. }) { Admit::Server } else { Admit::Client };
        let out = self
            .run_turn(&id, Some(request.clone()), admit, move |rt, held, trace| {
                let in_memory = matches!(held, Held::Loaded(_));
                if rt.ensure_loaded(&wid, held)? {
                    // The first start may still be committing. The committer
                    // flushes in order, so an empty turn queued now is
                    // durable only once the first start is. Read from the
                    // store, or with no commit queued, it is durable now.
                    let queued =
                        in_memory && rt.workflows.get(&wid).is_some_and(|s| s.committing.load(Ordering::Acquire) != 0);
                    let _ = is_repeat.set(!queued);
                    return Ok(Some(TurnOutput::default()));
                }
                let pack = rt.pack_for_new(&t, &p, &wid)?;
                let now = rt.clock.now_ms();
                let mut wf = Workflow::new(wid.clone(), pack, now).with_origin(origin).with_request(request_key);
                let traceparent = trace.attach(&mut wf, None);
                let mut wf = wf.with_traceparent(traceparent);
                let out = wf.apply(Input::Start { facts }, now).map_err(reject)?;
                *held = Held::Loaded(Box::new(wf));
                Ok(Some(out))
            })
            .await?;
        match repeat.get() {
            None => {
                debug_assert!(out.is_some());
                Ok((id, true))
            }
            // Not read again when known durable: retention may have deleted
            // the finished workflow, and its request record, meanwhile.
            Some(true) => Ok((id, false)),
            Some(false) => match self.store.request(&request)? {
                Some(_) => Ok((id, false)),
                None => Err(internal(format!("the first start of request {request} did not commit"))),
            },
        }
    }

    /// Applies one input to a workflow of `tenant` as a turn and waits until
    /// it is durable.
    pub async fn turn(self: &Arc<Self>, tenant: &str, id: &WorkflowId, input: Input) -> Result<TurnOutput, ApiError> {
        self.turn_keyed(tenant, id, input, None).await
    }

    /// `turn`, recording `key` in the same commit (see `Store::request`), so
    /// that whoever retries the input can see it was applied. Made by the
    /// workflow's owner; a turn made elsewhere comes back as its summary
    /// (turn, error, meta).
    pub(crate) async fn turn_keyed(
        self: &Arc<Self>,
        tenant: &str,
        id: &WorkflowId,
        input: Input,
        key: Option<String>,
    ) -> Result<TurnOutput, ApiError> {
        if tenant_of(id) != tenant {
            return Err(ApiError::NotFound(format!("workflow {id} does not exist")));
        }
        let op =
            || Op::Turn { tenant: tenant.to_string(), workflow: id.clone(), input: input.clone(), key: key.clone() };
        let here = || Box::pin(self.turn_here(tenant, id, input.clone(), key.clone())) as Local<'_, _>;
        self.routed(id, op, here, |r| match r {
            Reply::Turned { turn, error, meta } => {
                Ok(TurnOutput { turn, error, meta: meta.map(|m| *m), ..TurnOutput::default() })
            }
            other => Err(unexpected(other)),
        })
        .await
    }

    /// `turn_keyed` on this server (`Moved` if the workflow is not here).
    pub(crate) async fn turn_here(
        self: &Arc<Self>,
        tenant: &str,
        id: &WorkflowId,
        input: Input,
        key: Option<String>,
    ) -> Result<TurnOutput, ApiError> {
        if tenant_of(id) != tenant {
            return Err(ApiError::NotFound(format!("workflow {id} does not exist")));
        }
        let admit = match input {
            Input::Assert { .. } => {
                self.check_backpressure(tenant)?;
                Admit::Client
            }
            _ => Admit::Server,
        };
        let wid = id.clone();
        self.run_turn(id, key, admit, move |rt, held, trace| {
            if !rt.ensure_loaded(&wid, held)? {
                return Ok(None);
            }
            let Held::Loaded(wf) = held else { unreachable!("loaded") };
            trace.attach(wf, Some(&input));
            wf.apply(input, rt.clock.now_ms()).map(Some).map_err(reject)
        })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("workflow {id} does not exist")))
    }

    /// Applies a function's final outcome, at the workflow's owner; a
    /// duplicate or late one is ignored (`Ok(false)`).
    pub async fn deliver(self: &Arc<Self>, inv: &InvocationId, outcome: Outcome) -> Result<bool, ApiError> {
        let Some(id) = inv.workflow() else { return Ok(false) };
        let op = || Op::Deliver { invocation: inv.clone(), outcome: outcome.clone() };
        let here = || Box::pin(self.deliver_here(inv, outcome.clone())) as Local<'_, _>;
        self.routed(&id, op, here, |r| match r {
            Reply::Delivered(applied) => Ok(applied),
            other => Err(unexpected(other)),
        })
        .await
    }

    async fn deliver_here(self: &Arc<Self>, inv: &InvocationId, outcome: Outcome) -> Result<bool, ApiError> {
        let Some(id) = inv.workflow() else { return Ok(false) };
        let tenant = tenant_of(&id).to_string();
        let input = Input::Result { invocation: inv.clone(), outcome };
        match self.turn_here(&tenant, &id, input, None).await {
            Ok(_) => Ok(true),
            Err(ApiError::Rejected(_)) | Err(ApiError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Moves a loaded or stored workflow to `pack` (another version of its
    /// pack) as a turn, at its owner. `Ok(None)`: it no longer needs it
    /// (finished, gone, or already on that version). Made elsewhere, the
    /// turn comes back as its error and firings.
    pub(crate) async fn upgrade_workflow(
        self: &Arc<Self>,
        id: &WorkflowId,
        pack: Arc<Pack>,
        plans: Plans,
    ) -> Result<Option<TurnOutput>, ApiError> {
        let op = || Op::Upgrade {
            workflow: id.clone(),
            pack: pack.manifest.name.clone(),
            version: pack.manifest.version.clone(),
        };
        let here = || Box::pin(self.upgrade_here(id, pack.clone(), plans.clone())) as Local<'_, _>;
        self.routed(id, op, here, |r| match r {
            Reply::Upgraded(out) => {
                Ok(out.map(|(error, firings)| TurnOutput { error, firings, ..TurnOutput::default() }))
            }
            other => Err(unexpected(other)),
        })
        .await
    }

    async fn upgrade_here(
        self: &Arc<Self>,
        id: &WorkflowId,
        pack: Arc<Pack>,
        plans: Plans,
    ) -> Result<Option<TurnOutput>, ApiError> {
        let wid = id.clone();
        self.run_turn(id, None, Admit::Server, move |rt, held, trace| {
            if !rt.ensure_loaded(&wid, held)? {
                return Ok(None);
            }
            let Held::Loaded(wf) = held else { unreachable!("loaded") };
            if wf.status() != Status::Running || wf.meta().pack_version == pack.manifest.version {
                return Ok(None);
            }
            trace.attach(wf, None);
            let plan = plans.get(wf.pack(), &pack);
            wf.upgrade_by(&plan, rt.clock.now_ms()).map(Some).map_err(reject)
        })
        .await
    }

    /// Runs `f` on a workflow's current state (loading it if needed), on a
    /// turn thread.
    pub(crate) async fn inspect<T: Send + 'static>(
        self: &Arc<Self>,
        id: &WorkflowId,
        f: impl FnOnce(&Workflow) -> T + Send + 'static,
    ) -> Result<Option<T>, ApiError> {
        if !matches!(self.opts.placement.place(id), Place::Here(_)) {
            // Owned elsewhere: read as stored, and keep nothing in memory.
            let (rt, wid) = (self.clone(), id.clone());
            return self
                .pool
                .run(tenant_of(id), move || {
                    let mut held = Held::Unloaded;
                    if !rt.ensure_loaded(&wid, &mut held)? {
                        return Ok(None);
                    }
                    let Held::Loaded(wf) = &held else { unreachable!("loaded") };
                    Ok(Some(f(wf)))
                })
                .await
                .map_err(internal)?;
        }
        let (slot, mut guard) = self.lock(id).await;
        let rt = self.clone();
        let wid = id.clone();
        self.pool
            .run(tenant_of(id), move || {
                let loaded = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<Option<T>, ApiError> {
                    if !rt.ensure_loaded(&wid, &mut guard)? {
                        return Ok(None);
                    }
                    let Held::Loaded(wf) = &*guard else { unreachable!("loaded") };
                    Ok(Some(f(wf)))
                }));
                match loaded {
                    Ok(Ok(Some(t))) => Ok(Some(t)),
                    Ok(r) => {
                        if matches!(*guard, Held::Unloaded) {
                            rt.unload(&wid, &slot, &mut guard);
                        }
                        r
                    }
                    Err(_) => {
                        crate::pool::retire_this_thread();
                        rt.unload(&wid, &slot, &mut guard);
                        Err(internal("inspecting the workflow panicked"))
                    }
                }
            })
            .await
            .map_err(internal)?
    }

    /// Makes a turn where its workflow lives: `here` on this server, or
    /// `op` at the owner. While the workflow's partition moves (its owner
    /// died, or handed it over), looks again until `MOVE_WAIT`; then the
    /// caller is told to retry.
    async fn routed<'a, T>(
        self: &'a Arc<Self>,
        id: &WorkflowId,
        op: impl Fn() -> Op,
        here: impl Fn() -> Local<'a, T>,
        reply: impl Fn(Reply) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let give_up = std::time::Instant::now() + MOVE_WAIT;
        loop {
            let tried = match self.opts.placement.place(id) {
                Place::Here(_) => here().await,
                Place::There(address) => match &self.opts.peers {
                    Some(peers) => peers.forward(&address, &op()).await.and_then(&reply),
                    None => Err(internal("a workflow placed on another server, with no peers")),
                },
                Place::Nobody(p) => Err(ApiError::Moved(format!("partition {p} has no owner now"))),
            };
            match tried {
                Err(ApiError::Moved(why)) if std::time::Instant::now() < give_up => {
                    tracing::debug!(workflow = %id, %why, "the workflow's partition moves; looking again");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(ApiError::Moved(why)) => {
                    return Err(ApiError::Unavailable(format!("{why}; the cluster is moving it: retry")))
                }
                other => return other,
            }
        }
    }

    /// Makes a turn another server forwarded (see `peer`).
    pub(crate) async fn apply_here(self: &Arc<Self>, op: Op) -> Result<Reply, ApiError> {
        let tenant = match &op {
            Op::Start { tenant, .. } | Op::Turn { tenant, .. } => tenant.clone(),
            Op::Deliver { invocation, .. } => {
                invocation.workflow().map(|w| tenant_of(&w).to_string()).unwrap_or_default()
            }
            Op::Upgrade { workflow, .. } => tenant_of(workflow).to_string(),
        };
        if !self.opts.policies.contains_key(&tenant) {
            return Err(ApiError::FailedPrecondition(format!(
                "tenant `{tenant}` is not configured on this server: the servers of a cluster share their tenants"
            )));
        }
        match op {
            Op::Start { tenant, pack, facts, request_id, origin } => {
                let (workflow, created) = self.start_here(&tenant, &pack, facts, &request_id, origin).await?;
                Ok(Reply::Started { workflow, created })
            }
            Op::Turn { tenant, workflow, input, key } => {
                let out = self.turn_here(&tenant, &workflow, input, key).await?;
                Ok(Reply::Turned { turn: out.turn, error: out.error, meta: out.meta.map(Box::new) })
            }
            Op::Deliver { invocation, outcome } => Ok(Reply::Delivered(self.deliver_here(&invocation, outcome).await?)),
            Op::Upgrade { workflow, pack, version } => {
                let target = self.keep_version(&tenant, &pack, &version).await?;
                let out = self.upgrade_here(&workflow, target, self.forwarded_plans.clone()).await?;
                Ok(Reply::Upgraded(out.map(|o| (o.error, o.firings))))
            }
        }
    }

    /// Stops acting on workflows of partitions no longer held here: takes
    /// them out of memory (one in a turn or with a commit queued is left:
    /// that commit is refused, and its turn unloads it).
    pub(crate) fn forget(&self, parts: &stoa_engine::store::Parts) {
        let ids: Vec<WorkflowId> =
            self.workflows.iter().filter(|e| parts.has(e.key())).map(|e| e.key().clone()).collect();
        let mut unloaded = 0;
        for id in ids {
            let Some(slot) = self.workflows.get(&id).map(|s| s.clone()) else { continue };
            let Ok(mut guard) = slot.held.clone().try_lock_owned() else { continue };
            if slot.committing.load(Ordering::Acquire) == 0 {
                self.unload(&id, &slot, &mut guard);
                unloaded += 1;
            }
        }
        tracing::info!(unloaded, "unloaded the workflows of partitions that left this server");
    }

    /// Acts on a durable turn: its invocations, children, timers, signals,
    /// watchers; frees a finished workflow's memory.
    fn after_commit(&self, id: &WorkflowId, out: &TurnOutput, reserved: bool) {
        let tenant = tenant_of(id);
        if let Some(meta) = &out.meta {
            log_lifecycle(tenant, out.turn, meta);
        }
        self.opts.metrics.tenant(tenant).turns_committed.increment(1);
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
        if !live.is_empty() || reserved {
            self.dispatch.enqueue(tenant.to_string(), live, reserved);
        }
        for inv in children {
            let _ = self.background.send(Background::StartChild(inv));
        }
        for t in &out.timers_put {
            let _ = self.background.send(Background::Timer { workflow: id.clone(), id: t.id, due_ms: t.due_ms });
        }
        for s in &out.signals {
            let _ = self.background.send(Background::Signal { tenant: tenant.to_string(), signal: s.clone() });
        }
        if let Some(meta) = out.meta.as_ref().filter(|m| m.status != Status::Running) {
            if let Origin::Parent { invocation, .. } = &meta.origin {
                let _ = self
                    .background
                    .send(Background::ChildDone { parent: invocation.clone(), outcome: child_outcome(meta) });
            }
        }
        if let Some(meta) = out.meta.as_ref().filter(|m| m.status != Status::Running) {
            if self.run_strategy_of(tenant, &meta.pack).is_some() {
                let _ = self.background.send(Background::RunNext {
                    tenant: tenant.to_string(),
                    pack: meta.pack.clone(),
                    ended: (meta.id.clone(), meta.status, meta.request.clone()),
                });
            }
        }
        if let Some(tx) = self.watchers.get(id) {
            for e in &out.entries {
                let _ = tx.send(Arc::new(e.clone()));
            }
        }
        // Finished workflows take no more input: free their memory.
        if out.meta.as_ref().is_some_and(|m| m.status != Status::Running) {
            self.live_add(tenant, -1);
            if let Some(slot) = self.workflows.get(id).map(|s| s.clone()) {
                if let Ok(mut guard) = slot.held.clone().try_lock_owned() {
                    if slot.committing.load(Ordering::Acquire) == 0 {
                        self.unload(id, &slot, &mut guard);
                    }
                }
            }
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

    /// What this server's dispatcher knows of these invocations (each with
    /// its function); `None` once it has stopped.
    pub async fn dispatch_state(
        &self,
        tenant: &str,
        invocations: Vec<(stoa_engine::InvocationId, String)>,
    ) -> Option<Vec<crate::dispatch_handle::Inspected>> {
        self.dispatch.inspect(tenant.to_string(), invocations).await
    }

    /// The tenant's worker sessions on this server and its backlog per
    /// function; `None` once the dispatcher has stopped.
    pub async fn workers_of(&self, tenant: &str) -> Option<crate::dispatch_handle::WorkersView> {
        self.dispatch.workers(tenant.to_string()).await
    }

    pub fn list(&self, tenant: &str, after: Option<&WorkflowId>, limit: usize) -> Result<Vec<Meta>, ApiError> {
        self.store.workflows(&format!("{}{tenant}.", WorkflowId::PREFIX), after, limit).map_err(ApiError::from)
    }

    /// The meta of one of the tenant's workflows, without its facts.
    pub fn meta_of(&self, tenant: &str, id: &WorkflowId) -> Result<Option<Meta>, ApiError> {
        if tenant_of(id) != tenant {
            return Ok(None);
        }
        let metas = self.store.workflows(id.as_str(), None, 1).map_err(ApiError::from)?;
        Ok(metas.into_iter().next().filter(|m| m.id == *id))
    }

    /// The children a workflow started (at most `limit`): the workflows of
    /// the requests `child:<its invocation ids>`.
    pub fn children_of(&self, tenant: &str, id: &WorkflowId, limit: usize) -> Result<Vec<Meta>, ApiError> {
        if tenant_of(id) != tenant {
            return Ok(Vec::new());
        }
        // `InvocationId::of` without the counter: the prefix of them all.
        let invs = format!("inv_{}.", &id.as_str()[WorkflowId::PREFIX.len()..]);
        let requests = self.store.requests(&format!("{tenant}/child:{invs}"), limit).map_err(ApiError::from)?;
        let mut out = Vec::new();
        for (_, child) in requests {
            // An id with dots of its own shares the prefix: keep only
            // those this workflow's invocations started.
            let Some(m) = self.meta_of(tenant, &child)? else { continue };
            if matches!(&m.origin, Origin::Parent { invocation, .. } if invocation.workflow().as_ref() == Some(id)) {
                out.push(m);
            }
        }
        out.sort_by_key(|m| m.created_ms);
        Ok(out)
    }

    /// A page of the tenant's workflows newest first, from the store's list
    /// index: whatever `q.tenant` says, only `tenant`'s.
    pub fn list_page(&self, tenant: &str, q: &stoa_engine::store::ListQuery<'_>) -> Result<Vec<Meta>, ApiError> {
        let q = stoa_engine::store::ListQuery { tenant, ..q.clone() };
        self.store.list(&q).map_err(ApiError::from)
    }

    /// How many workflows of the tenant's family there are, per status.
    pub fn list_counts(
        &self,
        tenant: &str,
        family: stoa_engine::store::Family<'_>,
    ) -> Result<stoa_engine::store::ListCounts, ApiError> {
        self.store.list_counts(tenant, family).map_err(ApiError::from)
    }

    /// `list` of the workflows whose key (the id after `wf_<tenant>.`)
    /// starts with `key_prefix`: a search by id prefix reads only those.
    pub fn list_prefix(
        &self,
        tenant: &str,
        key_prefix: &str,
        after: Option<&WorkflowId>,
        limit: usize,
    ) -> Result<Vec<Meta>, ApiError> {
        let prefix = format!("{}{tenant}.{key_prefix}", WorkflowId::PREFIX);
        self.store.workflows(&prefix, after, limit).map_err(ApiError::from)
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
    pub fn stored_outbox(
        &self,
        parts: &stoa_engine::store::Parts,
    ) -> Result<Vec<stoa_engine::workflow::Invocation>, String> {
        let (children, functions): (Vec<_>, Vec<_>) = self
            .store
            .outbox(parts)
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

    /// Stops every running and later turn at its next check.
    pub(crate) fn stop_turns(&self) {
        self.pool.stop_turns();
    }

    /// Runs `f`, tenant code outside a turn (an explanation), on a turn
    /// thread in the tenant's share.
    pub(crate) async fn run_tenant_job<T: Send + 'static>(
        &self,
        tenant: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        self.pool.run(tenant, f).await.map_err(internal)
    }

    /// For a scrape: running workflows (as counted for the quota) and
    /// workflows in memory, per tenant.
    pub(crate) fn gauges(&self) -> crate::metrics::Gauges {
        use crate::metrics::{name, tenant_label};
        let mut g = crate::metrics::Gauges::default();
        for t in self.opts.policies.keys() {
            let live = self.live.get(t).map_or(0, |n| n.load(Ordering::Acquire));
            g.set(name::WORKFLOWS_LIVE, vec![tenant_label(t)], live as f64);
        }
        let mut loaded: HashMap<&str, usize> = self.opts.policies.keys().map(|t| (t.as_str(), 0)).collect();
        for e in self.workflows.iter() {
            if let Some(n) = loaded.get_mut(tenant_of(e.key())) {
                *n += 1;
            }
        }
        for (t, n) in loaded {
            g.set(name::WORKFLOWS_LOADED, vec![tenant_label(t)], n as f64);
        }
        g
    }

    /// Runs `f`, store work too long to block an async thread with, off the
    /// async threads (inline in the simulation).
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, crate::pool::Panicked> {
        self.pool.blocking(f).await
    }
}

/// How long a turn waits for its workflow's partition to find an owner:
/// a lease period and then some (a dead server's partitions are claimed
/// once their leases run out).
const MOVE_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// A turn made on this server, as `routed` takes it.
type Local<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, ApiError>> + Send + 'a>>;

/// A workflow's start and end in the log, at `info`: what a server does
/// is what its default log says. A busy server starts thousands a second;
/// `STOA_LOG=warn` (or `info,stoa_server::runtime=warn`) keeps them out
/// (the benchmarks do). Field values are computed only when the line is
/// written.
fn log_lifecycle(tenant: &str, turn: u64, meta: &Meta) {
    let trace_id = || meta.traceparent.as_deref().and_then(stoa_telemetry::traceparent::trace_id_of);
    match meta.status {
        Status::Running if turn == 1 => {
            tracing::info!(tenant, workflow = %meta.id, pack = %meta.pack, version = %meta.pack_version, trace_id = trace_id(), "workflow started")
        }
        Status::Running => {}
        Status::Completed => {
            tracing::info!(tenant, workflow = %meta.id, turn, trace_id = trace_id(), "workflow completed")
        }
        Status::Failed | Status::Cancelled => tracing::info!(
            tenant,
            workflow = %meta.id,
            turn,
            reason = meta.reason.as_deref().unwrap_or_default(),
            trace_id = trace_id(),
            "workflow {}",
            meta.status.as_str()
        ),
    }
}

fn unexpected(r: Reply) -> ApiError {
    internal(format!("a peer answered {r:?} to another question"))
}

/// The invocations of a turn that go to workers (children are started by
/// the server, not queued).
fn dispatched(out: &TurnOutput) -> impl Iterator<Item = &stoa_engine::workflow::Invocation> {
    out.invocations.iter().filter(|i| !out.cancelled.contains(&i.id) && !i.function.starts_with(CHILD_PREFIX))
}

/// What a finished child workflow answers its parent.
pub(crate) fn child_outcome(meta: &Meta) -> Outcome {
    match meta.status {
        Status::Completed => Outcome::Ok { value: meta.result.clone(), attempts: 1, failed: vec![] },
        _ => Outcome::Error {
            kind: stoa_engine::workflow::ErrorKind::Failed,
            message: format!("child workflow {} failed: {}", meta.id, meta.reason.clone().unwrap_or_default()),
            attempts: 1,
            retryable: false,
            failed: vec![],
        },
    }
}

/// Per-tenant turn-thread shares, from the policies.
pub(crate) fn turn_shares(policies: &BTreeMap<String, Policy>) -> HashMap<String, usize> {
    policies.iter().map(|(t, p)| (t.clone(), p.quotas.max_turn_threads as usize)).collect()
}
