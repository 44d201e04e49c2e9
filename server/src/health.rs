//! The server's health follows its store's: while the store fails (a full
//! disk), gRPC health answers NOT_SERVING for `stoa.v1.Stoa` and for the
//! whole server (`""`), and SERVING again once it healed. `stoa.v1.Workers`
//! stays SERVING: workers keep their sessions, and their answers are
//! applied once the store is back.
//!
//! After each heal, what the store holds is acted on again, as at start-up:
//! a turn whose flush failed may still have been recovered by sled when it
//! reopened, and nothing acted on its invocations, children, timers or
//! signals. Each of them is idempotent, so doing it again is harmless.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use stoa_engine::store::{Health, Parts};
use stoa_proto::v1 as pb;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::dispatch_handle::DispatchHandle;
use crate::followup::Background;
use crate::runtime::{tenant_of, Runtime};

/// The health name of the `Stoa` service.
const STOA: &str = <pb::stoa_server::StoaServer<crate::api::StoaService> as tonic::server::NamedService>::NAME;

/// Hands the dispatcher the invocations waiting in the store in `parts`,
/// with how far they got, and the background the children to start (or
/// answer for). Invocations the dispatcher holds already are not taken
/// twice.
pub(crate) fn restore_outbox(rt: &Runtime, dispatch: &DispatchHandle, parts: &Parts) -> Result<(), String> {
    let attempts: HashMap<_, _> = rt.store.attempts(parts).map_err(|e| e.to_string())?.into_iter().collect();
    let outbox = rt.stored_outbox(parts)?;
    // Tenant by tenant in name order, so that a simulated run replays.
    let mut by_tenant: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for inv in outbox {
        let tried = attempts.get(&inv.id).copied().unwrap_or_default();
        by_tenant.entry(tenant_of(&inv.workflow).to_string()).or_default().push((inv, tried));
    }
    for (t, invs) in by_tenant {
        tracing::info!(tenant = %t, invocations = invs.len(), "dispatching stored invocations");
        dispatch.restore(t, invs);
    }
    Ok(())
}

/// Follows the store's health until `shutdown`: reports it (to gRPC health,
/// if served), and after each heal re-reads what the store holds.
pub(crate) async fn run(
    reporter: Option<HealthReporter>,
    runtime: Arc<Runtime>,
    dispatch: DispatchHandle,
    shutdown: CancellationToken,
) {
    // The health now, and how many heals so far: a failure and its heal
    // between two looks of this task still count.
    let (tx, mut rx) = watch::channel((Health::Serving, 0u64));
    runtime.store.on_health(Box::new(move |h| {
        tx.send_modify(|(now, heals)| {
            if *now == Health::Failing && h == Health::Serving {
                *heals += 1;
            }
            *now = h;
        })
    }));
    let (mut reported, mut heals_seen) = (Health::Serving, 0);
    loop {
        let (health, heals) = *rx.borrow_and_update();
        if health != reported {
            tracing::warn!(?health, "storage health changed");
            let status = match health {
                Health::Serving => ServingStatus::Serving,
                Health::Failing => ServingStatus::NotServing,
            };
            if let Some(reporter) = &reporter {
                reporter.set_service_status("", status).await;
                reporter.set_service_status(STOA, status).await;
            }
            reported = health;
        }
        if heals != heals_seen {
            heals_seen = heals;
            let (rt, d) = (runtime.clone(), dispatch.clone());
            let parts = runtime.opts.placement.here();
            match runtime.blocking(move || restore_outbox(&rt, &d, &parts)).await {
                Ok(Ok(())) => {}
                // It failed again; the next heal does it.
                Ok(Err(e)) => tracing::warn!(error = %e, "re-reading the store after it healed"),
                Err(e) => tracing::error!(error = %e, "re-reading the store after it healed"),
            }
            let _ = runtime.background.send(Background::Healed);
            runtime.settle_unsure().await;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}
