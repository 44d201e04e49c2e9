//! The simulation's world around the server: workers on the dispatcher's
//! session events, clients on the `Stoa` service (as gRPC would call it,
//! minus the wire), and the store's healer.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stoa_engine::store::{Health, Store};
use stoa_proto::v1 as pb;
use stoa_proto::v1::stoa_server::Stoa;
use tokio::sync::{mpsc, Notify};

use super::rng::{with, Rng, Shared};
use super::{packs, Ctl};
use crate::api::StoaService;
use crate::auth::Tenant;
use crate::dispatch_handle::{DispatchHandle, Event};

fn request<T>(tenant: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.extensions_mut().insert(Tenant(tenant.to_string()));
    r
}

fn deploy_request(files: &std::collections::BTreeMap<String, String>) -> pb::DeployPackRequest {
    pb::DeployPackRequest {
        files: files.iter().map(|(p, c)| pb::PackFile { path: p.clone(), content: c.clone().into_bytes() }).collect(),
        ..Default::default()
    }
}

/// Deploys every pack to every tenant (before faults are armed).
pub async fn deploy(svc: &StoaService) -> Result<(), tonic::Status> {
    for t in super::TENANTS {
        for (_, files) in packs::all() {
            svc.deploy_pack(request(t, deploy_request(&files))).await?;
        }
    }
    Ok(())
}

/// Heals the store some time after it fails, recovering some of what was
/// written since its last flush (as sled's reopening does).
pub async fn healer(ctl: Arc<Ctl>, mut r: Rng) {
    let failed = Arc::new(Notify::new());
    ctl.store.on_health(Box::new({
        let failed = failed.clone();
        move |h| {
            if h == Health::Failing {
                failed.notify_one();
            }
        }
    }));
    loop {
        failed.notified().await;
        if ctl.store.health() != Health::Failing {
            continue;
        }
        ctl.history.lock().expect("history").stats.store_failures += 1;
        let after = if ctl.calm() { 0 } else { r.between(10, 3_000) };
        ctl.event(format!("store fails; heals in {after} ms"));
        tokio::time::sleep(Duration::from_millis(after)).await;
        let unflushed = ctl.store.unflushed() as u64;
        let kept = r.below(unflushed + 1) as usize;
        ctl.store.heal(kept);
        ctl.event(format!("store healed, {kept} of {unflushed} unflushed batches kept"));
    }
}

// ---- workers ---------------------------------------------------------------

/// A worker process: sessions one after the other, each until it
/// disconnects (by choice while the chaos lasts).
pub async fn worker(ctl: Arc<Ctl>, tenant: &'static str, dispatch: DispatchHandle, r: Rng) {
    let r = r.shared();
    loop {
        let session = ctl.next_session.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(16);
        let max_in_flight = with(&r, |r| r.between(1, 6)) as usize;
        let functions = packs::FUNCTIONS.iter().map(|f| f.to_string()).collect();
        dispatch.send(Event::Connect { session, tenant: tenant.to_string(), functions, max_in_flight, tx });
        ctl.event(format!("worker {tenant}#{session} connects ({max_in_flight} at once)"));
        let alive = Arc::new(AtomicBool::new(true));
        let cancelled = Arc::new(Mutex::new(BTreeSet::new()));
        let lifetime = if with(&r, |r| r.chance(ctl.knobs.w_disconnect)) {
            Duration::from_millis(with(&r, |r| r.between(200, 15_000)))
        } else {
            Duration::MAX / 4
        };
        let end = tokio::time::sleep(lifetime);
        tokio::pin!(end);
        loop {
            tokio::select! {
                biased;
                _ = &mut end, if !ctl.calm() => break,
                m = rx.recv() => match m.and_then(|m| m.msg) {
                    Some(pb::server_message::Msg::Invocations(batch)) => {
                        for inv in batch.invocations {
                            let job = Job {
                                ctl: ctl.clone(),
                                session,
                                dispatch: dispatch.clone(),
                                alive: alive.clone(),
                                cancelled: cancelled.clone(),
                                rng: Rng::new(with(&r, |r| r.next())).shared(),
                            };
                            tokio::spawn(job.run(inv));
                        }
                    }
                    Some(pb::server_message::Msg::Cancel(c)) => {
                        cancelled.lock().expect("cancelled").insert((c.invocation_id, c.attempt));
                    }
                    Some(_) => {}
                    // The dispatcher dropped the session.
                    None if rx.is_closed() => return,
                    None => {}
                },
            }
        }
        alive.store(false, Ordering::Relaxed);
        dispatch.send(Event::Disconnect(session));
        ctl.event(format!("worker {tenant}#{session} disconnects"));
        let pause = with(&r, |r| r.between(1, 3_000));
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// One invocation on a worker.
struct Job {
    ctl: Arc<Ctl>,
    session: u64,
    dispatch: DispatchHandle,
    alive: Arc<AtomicBool>,
    cancelled: Arc<Mutex<BTreeSet<(String, u32)>>>,
    rng: Shared,
}

enum Answer {
    Value,
    Fail { retryable: bool },
    Refuse,
    Never,
}

impl Job {
    async fn run(self, inv: pb::Invocation) {
        let k = self.ctl.knobs.clone();
        let calm = self.ctl.calm();
        let r = &self.rng;
        let (answer, took_ms, mute, twice) = with(r, |r| {
            let quick = r.between(1, 300);
            if calm {
                return (Answer::Value, quick, false, false);
            }
            let answer = if r.chance(k.w_refuse) {
                Answer::Refuse
            } else if r.chance(k.w_hang) {
                Answer::Never
            } else if r.chance(k.w_fatal) {
                Answer::Fail { retryable: false }
            } else if r.chance(k.w_fail) {
                Answer::Fail { retryable: true }
            } else {
                Answer::Value
            };
            let took = if r.chance(k.w_late) { inv.timeout_ms + r.between(1, 1_000) } else { quick };
            (answer, took, r.chance(k.w_mute), r.chance(k.w_twice))
        });
        if matches!(answer, Answer::Refuse) {
            self.send(&inv, Some(failure(&inv, false, pb::FailureKind::NotStarted)));
            return;
        }
        // Heartbeats while working, at half the timeout (unless mute).
        let start = self.ctl.clock.now();
        let done = start + Duration::from_millis(took_ms);
        if inv.heartbeat_timeout_ms > 0 && !mute {
            let every = Duration::from_millis((inv.heartbeat_timeout_ms / 2).max(1));
            while self.ctl.clock.now() + every < done {
                tokio::time::sleep(every).await;
                if !self.alive.load(Ordering::Relaxed) {
                    return;
                }
                self.dispatch.send(Event::Heartbeat {
                    session: self.session,
                    invocation: inv.id.clone(),
                    attempt: inv.attempt,
                });
            }
        }
        tokio::time::sleep_until(done).await;
        let outcome = match answer {
            Answer::Never | Answer::Refuse => return,
            Answer::Value => {
                let v = format!("{}#{}", inv.id, inv.attempt);
                Some(pb::invocation_result::Outcome::ValueJson(serde_json::json!({ "v": v }).to_string()))
            }
            Answer::Fail { retryable } => Some(failure(&inv, retryable, pb::FailureKind::Failed)),
        };
        // A cancelled attempt's worker may stop, or answer anyway.
        let cancelled = self.cancelled.lock().expect("cancelled").contains(&(inv.id.clone(), inv.attempt));
        if cancelled && with(r, |r| r.chance(0.5)) {
            return;
        }
        self.send(&inv, outcome.clone());
        if twice {
            let again = with(r, |r| r.between(0, 500));
            tokio::time::sleep(Duration::from_millis(again)).await;
            self.send(&inv, outcome);
        }
    }

    fn send(&self, inv: &pb::Invocation, outcome: Option<pb::invocation_result::Outcome>) {
        if !self.alive.load(Ordering::Relaxed) {
            return;
        }
        let value = match &outcome {
            Some(pb::invocation_result::Outcome::ValueJson(v)) => Some(v.clone()),
            _ => None,
        };
        {
            let mut h = self.ctl.history.lock().expect("history");
            h.stats.results_sent += 1;
            if let Some(v) = &value {
                h.answers.insert((inv.id.clone(), inv.attempt), v.clone());
            }
        }
        let what = match &value {
            Some(_) => "value".to_string(),
            None => format!("{:?}", outcome.as_ref().map(|_| "failure")),
        };
        self.ctl.event(format!("worker #{} answers {} attempt {}: {what}", self.session, inv.id, inv.attempt));
        let result = pb::InvocationResult { invocation_id: inv.id.clone(), attempt: inv.attempt, outcome };
        self.dispatch.send(Event::Result { session: self.session, result });
    }
}

fn failure(inv: &pb::Invocation, retryable: bool, kind: pb::FailureKind) -> pb::invocation_result::Outcome {
    pb::invocation_result::Outcome::Failure(pb::Failure {
        message: format!("simulated failure of {} attempt {}", inv.id, inv.attempt),
        retryable,
        kind: kind.into(),
    })
}

// ---- clients ---------------------------------------------------------------

/// A client of one tenant: a few operations at random moments, each
/// perhaps abandoned (the client hangs up) before its answer.
pub async fn client(ctl: Arc<Ctl>, tenant: &'static str, svc: Arc<StoaService>, mut r: Rng) {
    for _ in 0..ctl.knobs.ops {
        let pause = r.between(10, 2_500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if ctl.calm() {
            return;
        }
        let patience = if r.chance(ctl.knobs.hang_up) { Some(r.between(0, 2_000)) } else { None };
        let op = r.below(100);
        let op = Op::choose(op, &ctl, tenant, &mut r);
        let Some(op) = op else { continue };
        let work = op.clone().call(ctl.clone(), tenant, svc.clone());
        match patience {
            None => work.await,
            Some(ms) => {
                if tokio::time::timeout(Duration::from_millis(ms), work).await.is_err() {
                    ctl.event(format!("client {tenant} hangs up on {op:?}"));
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Start {
        pack: &'static str,
        request: String,
        n: u64,
    },
    Poke(String),
    Cancel(String),
    Signal(String),
    Upgrade,
    Get(String),
    /// Pauses (`true`) or resumes a schedule of the pack `ticker`.
    Pause {
        schedule: &'static str,
        pause: bool,
    },
}

impl Op {
    fn choose(roll: u64, ctl: &Ctl, tenant: &str, r: &mut Rng) -> Option<Op> {
        let known: Vec<String> = {
            let h = ctl.history.lock().expect("history");
            h.starts.iter().filter(|((t, _), _)| t == tenant).map(|(_, (id, _))| id.to_string()).collect()
        };
        let pick = |r: &mut Rng| (!known.is_empty()).then(|| r.pick(&known).clone());
        Some(match roll {
            0..=44 => {
                let pack = *r.pick(&["job", "job", "parent", "waiter"]);
                let k = r.below(ctl.knobs.requests);
                Op::Start { pack, request: format!("{pack}-{k}"), n: k }
            }
            45..=59 => Op::Poke(pick(r)?),
            60..=69 => Op::Cancel(pick(r)?),
            70..=86 => Op::Signal(format!("s{}", r.below(6))),
            87..=89 => Op::Upgrade,
            90..=96 => Op::Get(pick(r)?),
            _ => Op::Pause { schedule: if r.chance(0.5) { "often" } else { "all" }, pause: r.chance(0.5) },
        })
    }

    async fn call(self, ctl: Arc<Ctl>, tenant: &'static str, svc: Arc<StoaService>) {
        let fact =
            |ty: &str, fields: serde_json::Value| pb::FactInput { r#type: ty.into(), fields_json: fields.to_string() };
        match self {
            Op::Start { pack, request: req, n } => {
                let facts = match pack {
                    "job" => vec![fact("Job", serde_json::json!({ "n": n, "state": "new", "pokes": 0 }))],
                    "parent" => vec![fact("Parent", serde_json::json!({ "n": n, "state": "new" }))],
                    _ => vec![fact("Wait", serde_json::json!({ "k": n, "state": "new" }))],
                };
                let msg = pb::StartWorkflowRequest { pack: pack.into(), facts, request_id: req.clone() };
                let r = svc.start_workflow(request(tenant, msg)).await;
                match r {
                    Ok(resp) if ctl.alive() => {
                        let resp = resp.into_inner();
                        let id = stoa_engine::WorkflowId::new(
                            resp.workflow_id.strip_prefix(stoa_engine::WorkflowId::PREFIX).unwrap_or(&resp.workflow_id),
                        );
                        ctl.event(format!("client {tenant} started {req}: {id} created {}", resp.created));
                        let mut h = ctl.history.lock().expect("history");
                        h.stats.acked_starts += 1;
                        let e = h.starts.entry((tenant.to_string(), req)).or_insert((id.clone(), 0));
                        if e.0 != id {
                            let was = e.0.clone();
                            h.events.push(format!("VIOLATION: request answered with {id} after {was}"));
                        } else if resp.created {
                            e.1 += 1;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => ctl.event(format!("client {tenant} start {req}: {:?} {}", e.code(), e.message())),
                }
            }
            Op::Poke(wf) => {
                let msg = pb::AssertFactsRequest {
                    workflow_id: wf.clone(),
                    facts: vec![fact("Poke", serde_json::json!({}))],
                };
                match svc.assert_facts(request(tenant, msg)).await {
                    Ok(t) if ctl.alive() => {
                        let turn = t.into_inner().turn;
                        ctl.event(format!("client {tenant} poked {wf}: turn {turn}"));
                        ctl.history.lock().expect("history").asserts.insert((id_of(&wf), turn));
                    }
                    Ok(_) => {}
                    Err(e) => ctl.event(format!("client {tenant} poke {wf}: {:?}", e.code())),
                }
            }
            Op::Cancel(wf) => {
                let msg = pb::CancelWorkflowRequest {
                    workflow_id: wf.clone(),
                    reason: "by the simulation".into(),
                    ..Default::default()
                };
                match svc.cancel_workflow(request(tenant, msg)).await {
                    Ok(t) if ctl.alive() => {
                        let turn = t.into_inner().turn;
                        ctl.event(format!("client {tenant} cancelled {wf}: turn {turn}"));
                        ctl.history.lock().expect("history").cancels.insert((id_of(&wf), turn));
                    }
                    Ok(_) => {}
                    Err(e) => ctl.event(format!("client {tenant} cancel {wf}: {:?}", e.code())),
                }
            }
            Op::Signal(id) => {
                let msg = pb::SendSignalRequest {
                    name: "go".into(),
                    signal_id: id.clone(),
                    payload_json: "{}".into(),
                    workflow_id: String::new(),
                };
                match svc.send_signal(request(tenant, msg)).await {
                    Ok(s) if ctl.alive() => {
                        let s = s.into_inner();
                        ctl.event(format!("client {tenant} signalled {id}: delivered to {}", s.delivered.len()));
                        ctl.history.lock().expect("history").signals.insert((tenant.to_string(), id));
                    }
                    Ok(_) => {}
                    Err(e) => ctl.event(format!("client {tenant} signal {id}: {:?}", e.code())),
                }
            }
            Op::Upgrade => match svc.deploy_pack(request(tenant, deploy_request(&packs::job_v2()))).await {
                Ok(_) if ctl.alive() => {
                    ctl.event(format!("client {tenant} deployed job v2"));
                    ctl.history.lock().expect("history").upgraded.insert(tenant.to_string());
                }
                Ok(_) => {}
                Err(e) => ctl.event(format!("client {tenant} deploy: {:?} {}", e.code(), e.message())),
            },
            Op::Pause { schedule, pause } => {
                let msg = pb::ScheduleRef { name: schedule.into() };
                let r = if pause {
                    svc.pause_schedule(request(tenant, msg)).await
                } else {
                    svc.resume_schedule(request(tenant, msg)).await
                };
                let what = if pause { "pauses" } else { "resumes" };
                match r {
                    Ok(_) => ctl.event(format!("client {tenant} {what} schedule {schedule}")),
                    Err(e) => {
                        ctl.event(format!("client {tenant} {what} schedule {schedule}: {:?} {}", e.code(), e.message()))
                    }
                }
            }
            Op::Get(wf) => {
                let msg = pb::GetWorkflowRequest { workflow_id: wf.clone(), without_facts: true };
                match svc.get_workflow(request(tenant, msg)).await {
                    Ok(w) if ctl.alive() => {
                        let w = w.into_inner();
                        // A read shows durable state only.
                        let durable = super::check::durable_turn(&ctl.store, &id_of(&wf));
                        if durable < w.turn {
                            ctl.event(format!("VIOLATION: read {wf} at turn {}, durable only to {durable}", w.turn));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => ctl.event(format!("client {tenant} get {wf}: {:?}", e.code())),
                }
            }
        }
    }
}

fn id_of(wf: &str) -> stoa_engine::WorkflowId {
    stoa_engine::WorkflowId::new(wf.strip_prefix(stoa_engine::WorkflowId::PREFIX).unwrap_or(wf))
}
