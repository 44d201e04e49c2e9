//! Rollouts and the background upgrade of live workflows.
//!
//! A rollout change (see `rollout` for what a rollout is) starts an upgrade
//! job that walks the pack's live workflows in id order and moves each to
//! the version the rollout gives it, one turn per workflow (see
//! `Workflow::upgrade`). The job's cursor is stored after every page, so a
//! restart resumes it; upgrading a workflow twice is harmless (it is
//! already on the version). While the store cannot write, the job waits and
//! tries again (`retry`): no workflow is skipped for it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use stoa_engine::workflow::{Status, Workflow};
use stoa_engine::WorkflowId;
use stoa_rules::compile::Pack;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::metrics::{TenantMetrics, Upgraded};
use crate::retry::until_stored;
use crate::rollout::{in_fraction, Canary, Plans, Rollout};
use crate::runtime::Runtime;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    All,
    Canary(f64),
    NewOnly,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UpgradeJob {
    pub tenant: String,
    pub pack: String,
    pub version: String,
    /// "running" or "done".
    pub state: String,
    pub cursor: Option<WorkflowId>,
    pub total: u64,
    pub scanned: u64,
    pub upgraded: u64,
    pub failed: u64,
    pub skipped: u64,
    pub firings: u64,
    pub started_ms: u64,
    pub finished_ms: u64,
}

/// Workflows upgraded at once: their turns commit in the same flushes.
const PAGE: usize = 256;
const CONCURRENCY: usize = 32;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// What an upgrade to a version would schedule over the live workflows.
#[derive(Debug, Default)]
pub struct Preview {
    pub workflows: u64,
    /// rule → (activations, workflows)
    pub gains: std::collections::BTreeMap<String, (u64, u64)>,
}

impl Runtime {
    /// Changes which version runs and upgrades live workflows to match in
    /// the background. Returns the job (None for `NewOnly`).
    pub async fn rollout(
        self: &Arc<Self>,
        tenant: &str,
        name: &str,
        version: &str,
        mode: Mode,
        force: bool,
    ) -> Result<(Rollout, Option<UpgradeJob>), ApiError> {
        if let Mode::Canary(f) = mode {
            if !(f > 0.0 && f <= 1.0) {
                return Err(ApiError::InvalidArgument(format!("canary_fraction: {f} is not in (0, 1]")));
            }
        }
        // What runs is compiled and kept.
        let pack = self.keep_version(tenant, name, version).await?;
        if !force {
            let impacts = self.schema_impact(tenant, name, &pack, mode, false).await?;
            crate::compat::refuse_blocking(&impacts, &format!("rolling {name} out to {version}"))?;
        }
        let _deploying = self.deploy_lock(tenant, name).lock().await;
        let key = (tenant.to_string(), name.to_string());
        let stable = {
            let versions =
                self.packs.get(&key).ok_or_else(|| ApiError::NotFound(format!("pack `{name}` is not deployed")))?;
            versions.stable_version().map(str::to_string).unwrap_or_else(|| version.to_string())
        };
        let rollout = match mode {
            Mode::All | Mode::NewOnly => Rollout { stable: version.to_string(), canary: None },
            Mode::Canary(fraction) => {
                Rollout { stable, canary: Some(Canary { version: version.to_string(), fraction }) }
            }
        };
        let v = serde_json::to_value(&rollout).map_err(internal)?;
        self.store.put_aux("rollout", &format!("{tenant}/{name}"), &v)?;
        self.set_rollout(tenant, name, rollout.clone(), pack);
        tracing::info!(tenant, pack = name, version, mode = ?mode, "rollout: {} runs {version}", match mode {
            Mode::All => "every workflow",
            Mode::NewOnly => "every new workflow",
            Mode::Canary(_) => "a canary of the workflows",
        });
        if mode == Mode::NewOnly {
            return Ok((rollout, None));
        }
        let live = self.running_of(tenant, name)?.len() as u64;
        let job = UpgradeJob {
            tenant: tenant.to_string(),
            pack: name.to_string(),
            version: version.to_string(),
            state: "running".into(),
            total: live,
            started_ms: self.clock.now_ms(),
            ..UpgradeJob::default()
        };
        self.save_job(&job)?;
        tokio::spawn(self.clone().run_job(job.clone()));
        Ok((rollout, Some(job)))
    }

    /// Drops a canary, or else returns to the version that was stable
    /// before the current one.
    pub async fn rollback(
        self: &Arc<Self>,
        tenant: &str,
        name: &str,
        force: bool,
    ) -> Result<(Rollout, Option<UpgradeJob>), ApiError> {
        let target = {
            let versions = self
                .packs
                .get(&(tenant.to_string(), name.to_string()))
                .ok_or_else(|| ApiError::NotFound(format!("pack `{name}` is not deployed")))?;
            let stable = versions.stable_version().unwrap_or_default().to_string();
            if versions.rollout.as_ref().is_some_and(|r| r.canary.is_some()) {
                stable
            } else {
                let pos = versions.list.iter().rposition(|v| v.version == stable).unwrap_or(0);
                match pos.checked_sub(1).map(|p| versions.list[p].version.clone()) {
                    Some(v) => v,
                    None => {
                        return Err(ApiError::FailedPrecondition(format!(
                            "pack `{name}` has no version before {stable} to roll back to"
                        )))
                    }
                }
            }
        };
        if !force {
            let pack = self.keep_version(tenant, name, &target).await?;
            let impacts = self.schema_impact(tenant, name, &pack, Mode::All, false).await?;
            crate::compat::refuse_blocking(&impacts, &format!("rolling {name} back to {target}"))?;
        }
        self.rollout(tenant, name, &target, Mode::All, true).await
    }

    fn save_job(&self, job: &UpgradeJob) -> Result<(), ApiError> {
        let v = serde_json::to_value(job).map_err(internal)?;
        self.store.put_aux("upgrade", &format!("{}/{}", job.tenant, job.pack), &v).map_err(ApiError::from)
    }

    pub fn upgrade_job(&self, tenant: &str, name: &str) -> Result<Option<UpgradeJob>, ApiError> {
        let v = self.store.get_aux("upgrade", &format!("{tenant}/{name}")).map_err(ApiError::from)?;
        v.map(|v| serde_json::from_value(v).map_err(internal)).transpose()
    }

    /// Restarts the jobs a stop interrupted, from their cursors.
    pub(crate) fn resume_upgrades(self: &Arc<Self>) {
        let jobs = match self.store.scan_aux("upgrade", "") {
            Ok(j) => j,
            Err(e) => return tracing::error!(error = %e, "loading upgrade jobs"),
        };
        for (_, v) in jobs {
            if let Ok(job) = serde_json::from_value::<UpgradeJob>(v) {
                if job.state == "running" {
                    tracing::info!(pack = %job.pack, version = %job.version, scanned = job.scanned, "resuming upgrade");
                    tokio::spawn(self.clone().run_job(job));
                }
            }
        }
    }

    async fn run_job(self: Arc<Self>, mut job: UpgradeJob) {
        let _running = Running::new(self.opts.metrics.tenant(&job.tenant));
        // Jobs have no owner that stops them; they end with the process.
        let forever = CancellationToken::new();
        let mut backoff = crate::retry::Backoff::new(&self.clock);
        loop {
            match self.drive_job(&mut job, &forever).await {
                Ok(()) => return,
                // From its cursor again: a workflow upgraded twice is fine.
                Err(ApiError::Unavailable(e)) => {
                    tracing::warn!(pack = %job.pack, error = %e, "upgrade waits for the storage");
                    backoff.pause(&*self.store, &forever).await;
                }
                Err(e) => {
                    return tracing::error!(pack = %job.pack, error = %e, "upgrade stopped; it resumes at the next start")
                }
            }
        }
    }

    async fn drive_job(self: &Arc<Self>, job: &mut UpgradeJob, stop: &CancellationToken) -> Result<(), ApiError> {
        let plans = Plans::default();
        let metrics = self.opts.metrics.tenant(&job.tenant);
        loop {
            // A newer rollout of the same pack replaced this job.
            if self.upgrade_job(&job.tenant, &job.pack)?.is_some_and(|j| j.started_ms != job.started_ms) {
                return Ok(());
            }
            let page = self.list(&job.tenant, job.cursor.as_ref(), PAGE)?;
            let Some(last) = page.last() else { break };
            job.cursor = Some(last.id.clone());
            let mut set = tokio::task::JoinSet::new();
            for meta in page {
                if meta.pack != job.pack || meta.status != Status::Running {
                    continue;
                }
                job.scanned += 1;
                let target = {
                    let versions = self.packs.get(&(job.tenant.clone(), job.pack.clone()));
                    versions.and_then(|v| v.for_workflow(&meta.id))
                };
                let Some(target) = target else { continue };
                if set.len() >= CONCURRENCY {
                    tally(job, set.join_next().await, &metrics);
                }
                let (rt, stop, plans) = (self.clone(), stop.clone(), plans.clone());
                set.spawn(async move {
                    let what = format!("upgrading {}", meta.id);
                    let upgrade = || rt.upgrade_workflow(&meta.id, target.clone(), plans.clone());
                    until_stored(&*rt.store, &rt.clock, &stop, &what, upgrade).await
                });
            }
            while let Some(r) = set.join_next().await {
                tally(job, Some(r), &metrics);
            }
            self.save_job(job)?;
        }
        job.state = "done".into();
        job.finished_ms = self.clock.now_ms();
        self.save_job(job)?;
        tracing::info!(pack = %job.pack, version = %job.version, upgraded = job.upgraded, failed = job.failed, "upgrade done");
        Ok(())
    }

    /// What moving the pack's live workflows (those `mode` selects) to
    /// `pack` would schedule. Loads each; changes nothing.
    pub async fn preview(self: &Arc<Self>, tenant: &str, pack: &Arc<Pack>, mode: Mode) -> Result<Preview, ApiError> {
        let mut p = Preview::default();
        if mode == Mode::NewOnly {
            return Ok(p);
        }
        let plans = Plans::default();
        for id in self.running_of(tenant, &pack.manifest.name)? {
            if let Mode::Canary(f) = mode {
                if !in_fraction(&id, f) {
                    continue;
                }
            }
            let (pack, plans) = (pack.clone(), plans.clone());
            let gains = self
                .inspect(&id, move |wf: &Workflow| {
                    if wf.meta().pack_version == pack.manifest.version {
                        Ok(None)
                    } else {
                        wf.upgrade_preview_by(&plans.get(wf.pack(), &pack)).map(Some)
                    }
                })
                .await?;
            let Some(Ok(Some(gains))) = gains else { continue };
            p.workflows += 1;
            for (rule, n) in gains {
                let e = p.gains.entry(rule).or_default();
                e.0 += n;
                e.1 += 1;
            }
        }
        Ok(p)
    }
}

type Turned = Result<Option<stoa_engine::TurnOutput>, ApiError>;

fn tally(job: &mut UpgradeJob, r: Option<Result<Turned, tokio::task::JoinError>>, metrics: &TenantMetrics) {
    match r {
        Some(Ok(Ok(Some(out)))) if out.error.is_none() => {
            job.upgraded += 1;
            job.firings += out.firings;
            metrics.upgrade(Upgraded::Upgraded);
        }
        Some(Ok(Ok(None))) => {
            job.skipped += 1;
            metrics.upgrade(Upgraded::Skipped);
        }
        _ => {
            job.failed += 1;
            metrics.upgrade(Upgraded::Failed);
        }
    }
}

/// Counts a job as running for as long as it lives, however it ends.
struct Running(Arc<TenantMetrics>);

impl Running {
    fn new(metrics: Arc<TenantMetrics>) -> Running {
        metrics.upgrade_jobs.increment(1);
        Running(metrics)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.upgrade_jobs.decrement(1);
    }
}
