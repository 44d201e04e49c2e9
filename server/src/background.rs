//! Work that outlives the turn that caused it: timers coming due, signals
//! to route, child workflows to start, cancel or answer for. Turns send it
//! here after they commit; at start-up it is rebuilt from the store, so
//! none of it is lost to a restart (each kind is idempotent: a timer fires
//! once because its turn deletes it (timers of a workflow due at the same
//! instant share one turn), a child starts once because its id
//! derives from the parent's invocation, a signal routes once per id).
//!
//! None of it is lost to a storage failure either: a timer's turn is tried
//! again a second later, the others until they commit (`retry`); and once
//! the store heals (`Background::Healed`), timers and signals to route are
//! read from it again, for the turns whose commit failed but that sled
//! recovered when it reopened (their follow-up work never started).

use std::collections::BTreeSet;
use std::sync::Arc;

use stoa_engine::store::{Parts, SIGNAL_OUTBOX};
use stoa_engine::workflow::{Input, Rejected, Signal};
use stoa_engine::WorkflowId;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::followup::Background;
use crate::retry::until_stored;
use crate::runtime::{tenant_of, Runtime};

/// Timer turns in flight at most: a burst of due timers queues here
/// instead of flooding the committer. Several group commits' worth, so
/// that turns are computed while a flush runs. Measured with `stoa bench
/// always-on` (10,000 workflows × 10 timers), against 2,048: the last
/// commit began 10 % sooner and the last turn ran 30 % sooner, for about
/// 100 MiB more at the peak of the burst; 512 was 10 % slower than 2,048.
const TIMER_CONCURRENCY: usize = 8192;

/// Runs until `shutdown`; `rx` receives what turns ask for.
pub async fn run(rt: Arc<Runtime>, mut rx: mpsc::UnboundedReceiver<Background>, shutdown: CancellationToken) {
    let mut due: BTreeSet<(u64, WorkflowId, u64)> = BTreeSet::new();
    let here = rt.opts.placement.here();
    load_timers(&rt, &mut due, &here);
    resume_signals(&rt, &shutdown, &here);
    rt.resume_run_queues();
    // Upgrade jobs run on one server of a cluster (see `cluster`).
    if rt.opts.placement.is_coordinator() {
        rt.resume_upgrades();
    }
    let permits = Arc::new(Semaphore::new(TIMER_CONCURRENCY));
    loop {
        rt.opts.metrics.timers_pending(due.len());
        let wait = match due.first() {
            Some((at, _, _)) => std::time::Duration::from_millis(at.saturating_sub(rt.clock.now_ms())),
            None => std::time::Duration::from_secs(3600),
        };
        // In a fixed order (a random one would not replay): due timers
        // before new messages, which could otherwise hold them back.
        tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {
                    let now = rt.clock.now_ms();
                    while due.first().is_some_and(|t| t.0 <= now) {
                        let (at, wf, id) = due.pop_first().expect("checked");
                        // Timers of one workflow due at the same instant: one turn.
                        let mut ids = vec![id];
                        while let Some(next) = due.first().filter(|t| t.0 == at && t.1 == wf) {
                            ids.push(next.2);
                            due.pop_first();
                        }
                        let permit = permits.clone().acquire_owned().await.expect("never closed");
                        let rt = rt.clone();
                        tokio::spawn(async move {
                            fire(&rt, wf, ids, at).await;
                            drop(permit);
                        });
                    }
                }
                msg = rx.recv() => match msg {
                    None => break,
                    Some(Background::Timer { workflow, id, due_ms }) => {
                        due.insert((due_ms, workflow, id));
                    }
                    Some(Background::Healed) => {
                        // Firing a timer twice is harmless: its turn deletes it.
                        let here = rt.opts.placement.here();
                        load_timers(&rt, &mut due, &here);
                        resume_signals(&rt, &shutdown, &here);
        rt.resume_run_queues();
                    }
                    Some(Background::Adopt(parts)) => {
                        load_timers(&rt, &mut due, &parts);
                        resume_signals(&rt, &shutdown, &parts);
                    }
                    Some(Background::Forget(parts)) => due.retain(|(_, wf, _)| !parts.has(wf)),
                    Some(other) => handle(&rt, other, &shutdown),
                },
            }
    }
}

async fn fire(rt: &Arc<Runtime>, wf: WorkflowId, mut ids: Vec<u64>, due_ms: u64) {
    let tenant = tenant_of(&wf).to_string();
    let late_ms = rt.clock.now_ms().saturating_sub(due_ms);
    rt.opts.metrics.tenant(&tenant).timer_lateness.record(late_ms as f64 / 1000.0);
    loop {
        // Here only: the partition's owner fires its timers.
        match rt.turn_here(&tenant, &wf, Input::Timers { ids: ids.clone() }, None).await {
            // Gone or finished, or its partition left: nothing to do here.
            Ok(_)
            | Err(ApiError::NotFound(_))
            | Err(ApiError::Rejected(Rejected::NotRunning(_)))
            | Err(ApiError::Moved(_)) => return,
            // One was cancelled meanwhile: fire the others.
            Err(ApiError::Rejected(Rejected::UnknownTimer(gone))) => {
                ids.retain(|i| *i != gone);
                if ids.is_empty() {
                    return;
                }
            }
            Err(e) => {
                // Late rather than never: try again in a second.
                tracing::warn!(workflow = %wf, timers = ?ids, error = %e, "timer turn failed; retrying");
                for id in ids {
                    let (workflow, due_ms) = (wf.clone(), due_ms.max(rt.clock.now_ms() + 1000));
                    let _ = rt.background.send(Background::Timer { workflow, id, due_ms });
                }
                return;
            }
        }
    }
}

fn load_timers(rt: &Runtime, due: &mut BTreeSet<(u64, WorkflowId, u64)>, parts: &Parts) {
    match rt.store.timers(parts) {
        Ok(ts) => due.extend(ts.into_iter().map(|t| (t.due_ms, t.workflow, t.id))),
        Err(e) => tracing::error!(error = %e, "loading timers"),
    }
}

/// Acts on one message on a task of its own; each tries again while the
/// store cannot write, until `stop`.
fn handle(rt: &Arc<Runtime>, msg: Background, stop: &CancellationToken) {
    let (rt, stop) = (rt.clone(), stop.clone());
    tokio::spawn(async move {
        match msg {
            Background::Timer { .. } | Background::Healed | Background::Adopt(_) | Background::Forget(_) => {
                unreachable!("handled by the loop")
            }
            Background::Signal { tenant, signal } => {
                let what = format!("routing signal {}", signal.id);
                let routed = until_stored(&*rt.store, &rt.clock, &stop, &what, || {
                    rt.route_signal(&tenant, signal.clone(), None)
                });
                if let Err(e) = routed.await {
                    tracing::error!(error = %e, "routing a signal");
                }
            }
            Background::StartChild(inv) => {
                use tracing::Instrument;
                let span = crate::trace::child_span(&inv);
                rt.start_child(inv, &stop).instrument(span).await
            }
            Background::CancelChild(inv) => rt.cancel_child(inv, &stop).await,
            Background::RunNext { tenant, pack, ended } => {
                let what = format!("starting queued workflows of {pack}");
                let next = until_stored(&*rt.store, &rt.clock, &stop, &what, || {
                    rt.run_next(&tenant, &pack, Some(ended.clone()))
                });
                if let Err(e) = next.await {
                    tracing::error!(tenant, pack, error = %e, "starting queued workflows");
                }
            }
            Background::ChildDone { parent, outcome } => {
                let what = format!("answering parent invocation {parent}");
                if let Err(e) =
                    until_stored(&*rt.store, &rt.clock, &stop, &what, || rt.deliver(&parent, outcome.clone())).await
                {
                    tracing::error!(invocation = %parent, error = %e, "answering a parent");
                }
            }
        }
    });
}

/// Re-sends emitted signals not yet routed (interrupted by a stop, or
/// committed by a turn whose flush failed but that sled recovered).
fn resume_signals(rt: &Arc<Runtime>, stop: &CancellationToken, parts: &Parts) {
    match rt.store.scan_aux(SIGNAL_OUTBOX, "") {
        Ok(list) => {
            for (_, v) in list {
                match serde_json::from_value::<Signal>(v) {
                    // Routed by the owner of the workflow that emitted it.
                    Ok(signal) if signal.from.as_ref().is_some_and(|w| !parts.has(w)) => {}
                    Ok(signal) => {
                        let tenant = signal.from.as_ref().map(|w| tenant_of(w).to_string()).unwrap_or_default();
                        handle(rt, Background::Signal { tenant, signal }, stop);
                    }
                    Err(e) => tracing::error!(error = %e, "a stored signal does not decode"),
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "loading signals to route"),
    }
}
