//! A server's part in a cluster on PostgreSQL: it ticks its leases (see
//! `stoa_pgstore::leases`) a few times per lease period, and acts on what
//! each tick found. Partitions it gained: their pending invocations go to
//! the dispatcher, their timers and signals to route to the background.
//! Partitions it lost (taken over while it was frozen or cut off, or
//! refused at a commit): their workflows leave memory, their invocations
//! and timers are dropped. Past its fair share (a server joined), it hands
//! the surplus back once it stopped acting on it, so that the newcomer
//! claims it at its next tick. At a stop, it hands everything back.

use std::sync::Arc;
use std::time::Duration;

use stoa_pgstore::{LeaseOptions, PgStore, Tick};
use tokio_util::sync::CancellationToken;

use crate::dispatch_handle::{DispatchHandle, Event};
use crate::followup::Background;
use crate::placement::{Placement, View};
use crate::runtime::Runtime;
use crate::schedule::Scheduler;

/// Ticks per lease period at least: a lease survives three missed ticks.
const TICKS_PER_LEASE: u32 = 4;
/// The longest pause between ticks: a dead server's partitions are
/// claimed at most this long after its leases ran out (failover within
/// a lease period and a second).
const MAX_TICK: Duration = Duration::from_millis(500);

pub(crate) struct Member {
    pub store: Arc<PgStore>,
    pub placement: Arc<Placement>,
    pub lease: LeaseOptions,
}

impl Member {
    /// Joins, and ticks once, so that the server starts with its share
    /// (all of it, if it is the first).
    pub fn join(store: Arc<PgStore>, address: &str, lease: LeaseOptions) -> Result<Member, String> {
        let placement = Arc::new(Placement::cluster(store.partitions()));
        let id = store.join(address).map_err(|e| format!("joining the cluster: {e}"))?;
        let member = Member { store, placement, lease };
        let tick = member.store.tick(lease).map_err(|e| format!("claiming partitions: {e}"))?;
        tracing::info!(member = %id, %address, partitions = tick.held.len(), members = tick.members.len(), "joined the cluster");
        member.placement.set(view(&tick));
        Ok(member)
    }

    /// Ticks until `shutdown`. The holder of partition 0 is the
    /// coordinator: it runs the schedules and the upgrade jobs.
    pub async fn run(
        &self,
        rt: Arc<Runtime>,
        dispatch: DispatchHandle,
        schedules: Arc<Scheduler>,
        shutdown: CancellationToken,
    ) {
        let mut every = tokio::time::interval((self.lease.period / TICKS_PER_LEASE).min(MAX_TICK));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut members = self.placement.members();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            let (store, lease) = (self.store.clone(), self.lease);
            let tick = match rt.blocking(move || store.tick(lease)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    // The leases run out unless a later tick renews them;
                    // commits are fenced meanwhile, whatever this server thinks.
                    tracing::warn!(error = %e, "lease tick failed");
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "lease tick panicked");
                    continue;
                }
            };
            self.placement.set(view(&tick));
            let r = rt.clone();
            let _ = rt.blocking(move || r.refresh_all_packs()).await;
            if !tick.lost.is_empty() {
                tracing::warn!(partitions = ?tick.lost, "partitions moved to other servers");
                self.forget(&rt, &dispatch, &tick.lost);
            }
            if !tick.gained.is_empty() {
                tracing::info!(count = tick.gained.len(), "claimed partitions");
                adopt(&rt, &dispatch, self.placement.parts(&tick.gained)).await;
            }
            let surplus: Vec<u32> =
                tick.held.keys().rev().take(tick.held.len().saturating_sub(tick.fair_share)).copied().collect();
            if !surplus.is_empty() {
                self.placement.drop_parts(&surplus);
                self.forget(&rt, &dispatch, &surplus);
                let store = self.store.clone();
                let parts = surplus.clone();
                match rt.blocking(move || store.release(&parts)).await {
                    Ok(Ok(())) => tracing::info!(count = surplus.len(), "handed partitions over"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "handing partitions over"),
                    Err(e) => tracing::error!(error = %e, "handing partitions over"),
                }
            }
            // The coordinator's work follows partition 0 (tried again at
            // the next tick if the store cannot be read now).
            let coordinator = self.placement.is_coordinator();
            if coordinator && !schedules.is_active() {
                let s = schedules.clone();
                match rt.blocking(move || s.activate()).await {
                    Ok(Ok(())) => rt.resume_upgrades(),
                    Ok(Err(e)) => tracing::warn!(error = %e, "reading the schedules"),
                    Err(e) => tracing::error!(error = %e, "reading the schedules"),
                }
            } else if !coordinator && schedules.is_active() {
                schedules.deactivate();
            }
            let now = self.placement.members();
            if now != members {
                tracing::info!(members = ?now, "the cluster's servers changed");
                dispatch.send(Event::Members(now.clone()));
                members = now;
            }
        }
    }

    fn forget(&self, rt: &Runtime, dispatch: &DispatchHandle, parts: &[u32]) {
        let parts = self.placement.parts(parts);
        rt.forget(&parts);
        dispatch.send(Event::Forget(parts.clone()));
        let _ = rt.background.send(Background::Forget(parts));
    }

    /// Hands every partition back (after the last commit).
    pub fn leave(&self) {
        match self.store.leave() {
            Ok(()) => tracing::info!("left the cluster; partitions handed back"),
            Err(e) => tracing::warn!(error = %e, "leaving the cluster (the leases run out instead)"),
        }
    }
}

/// Acts on the stored work of partitions that came here.
async fn adopt(rt: &Arc<Runtime>, dispatch: &DispatchHandle, parts: stoa_engine::store::Parts) {
    let (r, d, p) = (rt.clone(), dispatch.clone(), parts.clone());
    match rt.blocking(move || crate::health::restore_outbox(&r, &d, &p)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "reading the invocations of claimed partitions"),
        Err(e) => tracing::error!(error = %e, "reading the invocations of claimed partitions"),
    }
    let _ = rt.background.send(Background::Adopt(parts));
}

fn view(t: &Tick) -> View {
    View { here: t.held.clone(), owners: t.owners.clone(), members: t.members.clone() }
}

/// Lease timing from the configuration (checked there: 400 ms up).
pub(crate) fn lease(period_ms: u64) -> LeaseOptions {
    LeaseOptions { period: Duration::from_millis(period_ms) }
}
