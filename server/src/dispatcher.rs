//! The dispatcher: per-tenant, per-function priority queues of invocations,
//! leases to worker sessions, retries with backoff and jitter, timeouts.
//!
//! One task owns all of its state and handles one closed set of events;
//! others talk to it through a cheap `DispatchHandle`. Final outcomes go to
//! the runtime as turns (through `Outcomes`), from tasks the dispatcher
//! owns (a `JoinSet`), tried again while the store cannot write (`retry`)
//! until they commit or the server stops (then the invocation, still
//! waiting in the store, is dispatched again after the restart).
//!
//! Time comes from the injected `Clock` (virtual in the simulation), and
//! so does the jitter of backoffs; whatever is acted on in a batch (leases
//! expiring, a lost worker's invocations) is taken in id order, so that a
//! simulated run replays exactly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use stoa_engine::store::{Attempts, Store};
use stoa_engine::workflow::{ErrorKind, Invocation, Outcome};
use stoa_engine::InvocationId;
use stoa_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, Instant};
use crate::committer::Committer;
use crate::dispatch_handle::{DispatchHandle, Event, FailedAttempt, Inspected, SessionId, KEPT_FAILURES};
use crate::error::ApiError;
use crate::metrics::{name, tenant_label, Attempt, FunctionMetrics, Gauges, Metrics};

/// Where final outcomes go: the runtime, which applies each as a turn of
/// its workflow. All the dispatcher needs of the runtime, so that it does
/// not depend on it.
pub trait Outcomes: Send + Sync {
    /// Applies a function's final outcome; `Ok(false)`: a duplicate or a
    /// late one, ignored.
    fn apply(
        self: Arc<Self>,
        id: InvocationId,
        outcome: Outcome,
    ) -> Pin<Box<dyn Future<Output = Result<bool, ApiError>> + Send>>;
}

pub struct Options {
    /// Invocations of each tenant running on workers at once.
    pub tenant_max_in_flight: HashMap<String, usize>,
    pub function_concurrency: BTreeMap<String, usize>,
    pub max_batch: usize,
    /// On shutdown, how long workers get to answer what they hold.
    pub drain: Duration,
    pub clock: Clock,
    pub metrics: Metrics,
}

enum State {
    Queued,
    /// `since`: when it was leased (start-to-close latency).
    Leased {
        session: SessionId,
        deadline: Instant,
        heartbeat_deadline: Option<Instant>,
        since: Instant,
    },
    Backoff {
        until: Instant,
    },
}

struct Item {
    inv: Invocation,
    tenant: String,
    /// The attempt being (or to be) delivered, from 1.
    attempt: u32,
    /// Attempts that ended in a function failure or timeout (retry budget).
    failures: u32,
    /// The last failed attempts, for `stoa describe` (memory only).
    failed: Vec<FailedAttempt>,
    /// Workers that refused this attempt in a row (`NOT_STARTED`); paces
    /// the next offer so that refusals cannot spin.
    refusals: u32,
    state: State,
    /// The leased attempt's `dispatch` span (disabled when untraced); it
    /// ends with the attempt.
    span: tracing::Span,
    /// When this attempt became ready to lease (schedule-to-start latency).
    ready: Instant,
    metrics: Arc<FunctionMetrics>,
}

/// Queue order: higher priority, then older (smaller sequence number).
type QueueKey = (i64, Reverse<u64>, InvocationId);

struct Session {
    tenant: String,
    functions: Vec<String>,
    max_in_flight: usize,
    in_flight: HashSet<InvocationId>,
    tx: mpsc::Sender<pb::ServerMessage>,
    /// It announced a drain: it gets no new leases.
    draining: bool,
}

struct Dispatcher {
    opts: Options,
    outcomes: Arc<dyn Outcomes>,
    /// Whose health paces the retries of deliveries.
    store: Arc<dyn Store>,
    committer: Committer,
    /// Set at shutdown: no new leases; answers are taken until then.
    draining_until: Option<Instant>,
    items: HashMap<InvocationId, Item>,
    queues: HashMap<(String, String), BinaryHeap<QueueKey>>,
    sessions: BTreeMap<SessionId, Session>,
    tenant_in_flight: HashMap<String, usize>,
    function_in_flight: HashMap<String, usize>,
    /// Per tenant, then function, running calls that carry a pack's
    /// `concurrency` of their function (only those: uncapped calls, the
    /// common case, cost nothing here).
    capped_in_flight: HashMap<String, HashMap<String, usize>>,
    pending: Arc<DashMap<String, AtomicUsize>>,
    seq: u64,
    /// Each ends with the invocation whose outcome it applied (or gave up
    /// on at shutdown).
    deliveries: JoinSet<InvocationId>,
    /// Invocations whose outcome is being applied: still waiting in the
    /// store until it commits, so not to be taken on again meanwhile.
    delivering: HashSet<InvocationId>,
    /// Ends the retries of deliveries.
    shutdown: CancellationToken,
    /// The handles of each tenant's functions, made at first use.
    function_metrics: HashMap<String, HashMap<String, Arc<FunctionMetrics>>>,
}

/// Runs the dispatcher until `shutdown`.
pub async fn run(
    opts: Options,
    handle: DispatchHandle,
    mut rx: mpsc::UnboundedReceiver<Event>,
    outcomes: Arc<dyn Outcomes>,
    store: Arc<dyn Store>,
    committer: Committer,
    shutdown: CancellationToken,
) {
    let mut d = Dispatcher {
        opts,
        outcomes,
        store,
        committer,
        draining_until: None,
        items: HashMap::new(),
        queues: HashMap::new(),
        sessions: BTreeMap::new(),
        tenant_in_flight: HashMap::new(),
        function_in_flight: HashMap::new(),
        capped_in_flight: HashMap::new(),
        pending: handle.pending.clone(),
        seq: 0,
        deliveries: JoinSet::new(),
        delivering: HashSet::new(),
        shutdown: shutdown.clone(),
        function_metrics: HashMap::new(),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if d.draining_until.is_some_and(|until| d.opts.clock.now() >= until || d.leased() == 0) {
            break;
        }
        // In a fixed order (a random one would not replay): the branches
        // ready least often first, so none starves the event queue's.
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if d.draining_until.is_none() => d.drain_all(),
            _ = tick.tick() => {
                d.expire(d.opts.clock.now());
                d.pump();
            }
            Some(done) = d.deliveries.join_next(), if !d.deliveries.is_empty() => {
                if let Ok(id) = done {
                    d.delivering.remove(&id);
                }
            }
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                d.handle(ev);
                // Take whatever else is queued before scheduling once.
                while let Ok(ev) = rx.try_recv() {
                    d.handle(ev);
                }
                d.pump();
            }
        }
    }
    // Let outcomes already decided reach their workflows.
    while d.deliveries.join_next().await.is_some() {}
}

impl Dispatcher {
    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Enqueue { tenant, invocations } => {
                for inv in invocations {
                    self.add(&tenant, inv, Attempts::default());
                }
            }
            Event::Restore { tenant, invocations } => {
                for (inv, attempts) in invocations {
                    self.add(&tenant, inv, attempts);
                }
            }
            Event::Drain(session) => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.draining = true;
                }
            }
            Event::Unexpected { session, what } => {
                if let Some(s) = self.sessions.get(&session) {
                    let _ = s.tx.try_send(msg(pb::server_message::Msg::Rejected(pb::Rejected {
                        invocation_id: String::new(),
                        message: format!("unexpected {what}; ignored"),
                        code: pb::RejectedCode::Unexpected.into(),
                        attempt: 0,
                    })));
                }
            }
            Event::Cancel(ids) => {
                for id in ids {
                    if let Some(item) = self.items.remove(&id) {
                        if let State::Leased { session, .. } = item.state {
                            item.metrics.attempt(Attempt::Cancelled);
                            self.release(session, &item);
                            if let Some(s) = self.sessions.get(&session) {
                                let _ = s.tx.try_send(msg(pb::server_message::Msg::Cancel(pb::Cancel {
                                    invocation_id: id.to_string(),
                                    attempt: item.attempt,
                                })));
                            }
                        }
                        self.dec_pending(&item.tenant, 1);
                    }
                }
            }
            Event::Forget(parts) => {
                let mut gone: Vec<InvocationId> =
                    self.items.iter().filter(|(_, i)| parts.has(&i.inv.workflow)).map(|(id, _)| id.clone()).collect();
                gone.sort_unstable();
                tracing::info!(invocations = gone.len(), "dropping the invocations of partitions that left");
                self.handle(Event::Cancel(gone));
            }
            Event::Members(addresses) => {
                // Never dropped for a full session (as a batch may be): a
                // worker that misses it would never serve the new member.
                let m = msg(pb::server_message::Msg::Members(pb::Members { addresses }));
                for s in self.sessions.values() {
                    let (tx, m) = (s.tx.clone(), m.clone());
                    tokio::spawn(async move { tx.send(m).await });
                }
            }
            Event::Connect { session, tenant, functions, max_in_flight, tx } => {
                let s = Session {
                    tenant,
                    functions,
                    max_in_flight: max_in_flight.max(1),
                    in_flight: HashSet::new(),
                    tx,
                    draining: false,
                };
                if let Some(until) = self.draining_until {
                    let _ = s.tx.try_send(drain_msg(until, self.opts.clock.now()));
                }
                self.sessions.insert(session, s);
            }
            Event::Disconnect(session) => {
                if let Some(s) = self.sessions.remove(&session) {
                    // The worker is gone: its invocations go to another one
                    // at once. Not a function failure: no retry budget used.
                    let mut lost: Vec<InvocationId> = s.in_flight.into_iter().collect();
                    lost.sort_unstable();
                    for id in lost {
                        // Past the function's `max_lost`, a lost attempt
                        // is the invocation's failure, of kind `lost`: a
                        // poison input that kills every worker ends.
                        let over = self.items.get(&id).and_then(|i| {
                            let times = i.attempt.saturating_sub(i.failures);
                            i.inv.retry.max_lost.filter(|m| times >= *m).map(|_| times)
                        });
                        if let Some((times, item)) = over.and_then(|t| self.items.remove(&id).map(|i| (t, i))) {
                            let (t, f, c) =
                                (item.tenant.clone(), item.inv.function.clone(), item.inv.concurrency.is_some());
                            self.dec_in_flight(&t, &f, c);
                            let message = format!("the worker running it was lost {times} time(s), as many as the function's max_lost allows");
                            self.fail(item, ErrorKind::Lost, message, false);
                            continue;
                        }
                        if let Some(item) = self.items.get_mut(&id) {
                            let made = Attempts { made: item.attempt, failures: item.failures, retry_at_ms: 0 };
                            self.committer.record_attempts(id.clone(), made);
                            let error = "the worker disconnected (not counted against the retry policy)";
                            note_failure(item, self.opts.clock.now_ms(), error.into());
                            item.metrics.attempt(Attempt::LostWorker);
                            item.attempt += 1;
                            item.state = State::Queued;
                            item.ready = self.opts.clock.now();
                            let (t, f, c) =
                                (item.tenant.clone(), item.inv.function.clone(), item.inv.concurrency.is_some());
                            self.dec_in_flight(&t, &f, c);
                            self.queue(&id);
                        }
                    }
                }
            }
            Event::Result { session, result } => self.result(session, result),
            Event::Gauges(tx) => {
                let _ = tx.send(self.gauges());
            }
            Event::Workers { tenant, tx } => {
                let _ = tx.send(self.workers_of(&tenant));
            }
            Event::Inspect { tenant, invocations, tx } => {
                let _ = tx.send(invocations.iter().map(|(id, f)| self.inspect(&tenant, id, f)).collect());
            }
            Event::Heartbeat { session, invocation, attempt } => {
                let id = InvocationId::new(invocation);
                if let Some(Item {
                    state: State::Leased { session: s, heartbeat_deadline: Some(hb), .. },
                    attempt: a,
                    inv,
                    ..
                }) = self.items.get_mut(&id)
                {
                    if *s == session && *a == attempt {
                        *hb = self.opts.clock.now() + Duration::from_millis(inv.heartbeat_ms);
                    }
                }
            }
        }
    }

    /// Takes an invocation on, unless it is here already (or its outcome is
    /// being applied).
    fn add(&mut self, tenant: &str, inv: Invocation, attempts: Attempts) {
        let id = inv.id.clone();
        if self.items.contains_key(&id) || self.delivering.contains(&id) {
            self.dec_pending(tenant, 1); // delivered twice: once is enough
            return;
        }
        let now = self.opts.clock.now_ms();
        let state = if attempts.retry_at_ms > now {
            State::Backoff { until: self.opts.clock.now() + Duration::from_millis(attempts.retry_at_ms - now) }
        } else {
            State::Queued
        };
        let queued = matches!(state, State::Queued);
        let metrics = self.function_metrics(tenant, &inv.function);
        let item = Item {
            inv,
            tenant: tenant.to_string(),
            attempt: attempts.made + 1,
            failures: attempts.failures,
            failed: Vec::new(),
            refusals: 0,
            state,
            span: tracing::Span::none(),
            ready: self.opts.clock.now(),
            metrics,
        };
        self.items.insert(id.clone(), item);
        if queued {
            self.queue(&id);
        }
    }

    /// The handles of a tenant's function, made once (metrics off: one
    /// set of no-op handles for all).
    fn function_metrics(&mut self, tenant: &str, function: &str) -> Arc<FunctionMetrics> {
        if let Some(m) = self.function_metrics.get(tenant).and_then(|f| f.get(function)) {
            return m.clone();
        }
        if !self.opts.metrics.is_on() {
            let noop = self.function_metrics.entry(String::new()).or_default();
            return noop.entry(String::new()).or_insert_with(|| Arc::new(Metrics::off().function("", ""))).clone();
        }
        let m = Arc::new(self.opts.metrics.function(tenant, function));
        let by_function = self.function_metrics.entry(tenant.to_string()).or_default();
        by_function.insert(function.to_string(), m.clone());
        m
    }

    /// For a scrape: invocations by tenant, function, priority and state;
    /// how long the oldest queued one of each function has waited; workers
    /// and their free slots per function.
    fn gauges(&self) -> Gauges {
        let now = self.opts.clock.now();
        let mut g = Gauges::default();
        if !self.opts.metrics.is_on() {
            return g;
        }
        // Counted by cheap keys first: items may be many.
        let mut pending: HashMap<(&str, &str, i64, &'static str), usize> = HashMap::new();
        let mut oldest: HashMap<(&str, &str), Instant> = HashMap::new();
        for item in self.items.values() {
            let state = match item.state {
                State::Queued => "queued",
                State::Leased { .. } => "running",
                State::Backoff { .. } => "backoff",
            };
            let f: &str = &item.metrics.function;
            *pending.entry((&item.tenant, f, item.inv.priority, state)).or_default() += 1;
            if matches!(item.state, State::Queued) {
                let o = oldest.entry((&item.tenant, f)).or_insert(item.ready);
                *o = (*o).min(item.ready);
            }
        }
        let metrics = &self.opts.metrics;
        for ((tenant, f, priority, state), n) in pending {
            let labels = vec![
                tenant_label(tenant),
                metrics::Label::new("function", f.to_string()),
                metrics::Label::new("priority", metrics.priority_label(tenant, priority)),
                metrics::Label::new("state", state),
            ];
            g.add(name::INVOCATIONS_PENDING, labels, n as f64);
        }
        // Every function with a queue reads 0 when nothing waits.
        for by_function in self.function_metrics.iter() {
            for m in by_function.1.values() {
                let (tenant, f) = (by_function.0.as_str(), &*m.function);
                let age = oldest.get(&(tenant, f)).map_or(0.0, |t| now.saturating_duration_since(*t).as_secs_f64());
                let labels = vec![tenant_label(tenant), metrics::Label::new("function", f.to_string())];
                g.set(name::OLDEST_QUEUED, labels, age);
            }
        }
        // Labels only: a worker may name functions no invocation has.
        let mut workers: HashMap<(&str, String), (usize, usize)> = HashMap::new();
        for s in self.sessions.values().filter(|s| !s.draining) {
            let free = s.max_in_flight.saturating_sub(s.in_flight.len());
            for f in &s.functions {
                let w = workers.entry((&s.tenant, metrics.function_label(&s.tenant, f).to_string())).or_default();
                w.0 += 1;
                w.1 += free;
            }
        }
        for ((tenant, f), (n, free)) in workers {
            let labels = || vec![tenant_label(tenant), metrics::Label::new("function", f.clone())];
            g.set(name::WORKERS, labels(), n as f64);
            g.set(name::SLOTS_FREE, labels(), free as f64);
        }
        g
    }

    /// Leases held by workers.
    fn leased(&self) -> usize {
        self.sessions.values().map(|s| s.in_flight.len()).sum()
    }

    /// Shutdown: every worker is asked to answer what it holds, and nothing
    /// new is leased.
    fn drain_all(&mut self) {
        let until = self.opts.clock.now() + self.opts.drain;
        self.draining_until = Some(until);
        tracing::info!(leased = self.leased(), "draining workers");
        for s in self.sessions.values() {
            let _ = s.tx.try_send(drain_msg(until, self.opts.clock.now()));
        }
    }

    fn queue(&mut self, id: &InvocationId) {
        let item = &self.items[id];
        self.seq += 1;
        self.queues.entry((item.tenant.clone(), item.inv.function.clone())).or_default().push((
            item.inv.priority,
            Reverse(self.seq),
            id.clone(),
        ));
    }

    fn dec_pending(&self, tenant: &str, n: usize) {
        if let Some(p) = self.pending.get(tenant) {
            let _ = p.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(n)));
        }
    }

    fn dec_in_flight(&mut self, tenant: &str, function: &str, capped: bool) {
        if let Some(n) = self.tenant_in_flight.get_mut(tenant) {
            *n = n.saturating_sub(1);
        }
        if let Some(n) = self.function_in_flight.get_mut(function) {
            *n = n.saturating_sub(1);
        }
        if capped {
            if let Some(n) = self.capped_in_flight.get_mut(tenant).and_then(|m| m.get_mut(function)) {
                *n = n.saturating_sub(1);
            }
        }
    }

    fn release(&mut self, session: SessionId, item: &Item) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.in_flight.remove(&item.inv.id);
        }
        let (t, f, c) = (item.tenant.clone(), item.inv.function.clone(), item.inv.concurrency.is_some());
        self.dec_in_flight(&t, &f, c);
    }

    fn result(&mut self, session: SessionId, r: pb::InvocationResult) {
        let id = InvocationId::new(r.invocation_id.clone());
        let holds = matches!(
            self.items.get(&id),
            Some(Item { state: State::Leased { session: s, .. }, attempt, .. }) if *s == session && *attempt == r.attempt
        );
        if !holds {
            if let Some(s) = self.sessions.get(&session) {
                let _ = s.tx.try_send(msg(pb::server_message::Msg::Rejected(pb::Rejected {
                    invocation_id: r.invocation_id.clone(),
                    code: pb::RejectedCode::NotHeld.into(),
                    attempt: r.attempt,
                    message: format!(
                        "this session does not hold invocation {} attempt {} (unknown, answered, cancelled, timed out or leased elsewhere); the answer is ignored",
                        r.invocation_id, r.attempt
                    ),
                })));
            }
            return;
        }
        let item = self.items.remove(&id).expect("held");
        self.release(session, &item);
        let not_started = matches!(&r.outcome,
            Some(pb::invocation_result::Outcome::Failure(f)) if f.kind() == pb::FailureKind::NotStarted);
        if let (State::Leased { since, .. }, false) = (&item.state, not_started) {
            item.metrics.start_to_close.record(self.opts.clock.now().saturating_duration_since(*since).as_secs_f64());
        }
        match r.outcome {
            Some(pb::invocation_result::Outcome::ValueJson(json)) => {
                match serde_json::from_str::<serde_json::Value>(&json) {
                    Ok(v) => {
                        let attempts = item.attempt;
                        item.metrics.attempt(Attempt::Ok);
                        let failed = item.failed.clone();
                        self.finish(item, Outcome::Ok { value: stoa_rules::Value::from_json(&v), attempts, failed })
                    }
                    Err(e) => {
                        self.fail(item, ErrorKind::Failed, format!("the worker's answer is not JSON: {e}"), false)
                    }
                }
            }
            Some(pb::invocation_result::Outcome::Failure(f)) if f.kind() == pb::FailureKind::NotStarted => {
                self.refused(item, &f.message)
            }
            Some(pb::invocation_result::Outcome::Failure(f)) => {
                self.fail(item, ErrorKind::Failed, f.message, f.retryable)
            }
            None => self.fail(item, ErrorKind::Failed, "the worker sent a result without an outcome".into(), false),
        }
    }

    /// A worker did not start the attempt: it is offered again, after a
    /// pause that doubles with each refusal in a row (10 ms to 2.5 s), and
    /// counts neither as an attempt nor against the retry budget.
    fn refused(&mut self, mut item: Item, message: &str) {
        item.span.record("stoa.outcome", "not started");
        item.span = tracing::Span::none();
        item.refusals += 1;
        item.metrics.attempt(Attempt::NotStarted);
        let delay = self.opts.clock.jitter(Duration::from_millis(10 << item.refusals.min(8)));
        tracing::debug!(tenant = %item.tenant, workflow = %item.inv.workflow, invocation = %item.inv.id, attempt = item.attempt, ?delay, %message, "not started");
        item.state = State::Backoff { until: self.opts.clock.now() + delay };
        self.items.insert(item.inv.id.clone(), item);
    }

    /// A failed attempt: retry after a backoff if the policy allows, else
    /// the final outcome is an error.
    fn fail(&mut self, mut item: Item, kind: ErrorKind, message: String, retryable: bool) {
        item.span.record("stoa.outcome", if kind == ErrorKind::Timeout { "timeout" } else { "failed" });
        item.span = tracing::Span::none();
        item.failures += 1;
        item.refusals = 0;
        note_failure(&mut item, self.opts.clock.now_ms(), message.clone());
        let timeout = kind == ErrorKind::Timeout;
        if retryable && item.failures < item.inv.retry.max_attempts.max(1) {
            item.metrics.attempt(if timeout { Attempt::Timeout } else { Attempt::Retry });
            let delay = self.opts.clock.jitter(item.inv.retry.backoff(item.failures));
            tracing::debug!(
                tenant = %item.tenant,
                workflow = %item.inv.workflow,
                invocation = %item.inv.id,
                attempt = item.attempt,
                trace_id = item.inv.traceparent.as_deref().and_then(stoa_telemetry::traceparent::trace_id_of),
                ?delay,
                %message,
                "retrying"
            );
            // Kept so that a restart neither resets the budget nor skips the backoff.
            let made = Attempts {
                made: item.attempt,
                failures: item.failures,
                retry_at_ms: self.opts.clock.now_ms() + delay.as_millis() as u64,
            };
            self.committer.record_attempts(item.inv.id.clone(), made);
            item.attempt += 1;
            item.state = State::Backoff { until: self.opts.clock.now() + delay };
            self.items.insert(item.inv.id.clone(), item);
        } else {
            let attempts = item.attempt;
            item.metrics.attempt(if timeout { Attempt::Timeout } else { Attempt::Error });
            // The last failure is the outcome itself; those before it go
            // on the timeline as failed attempts.
            let mut failed = std::mem::take(&mut item.failed);
            failed.pop();
            self.finish(item, Outcome::Error { kind, message, attempts, retryable, failed });
        }
    }

    /// Hands the final outcome to the workflow, as a turn of its own,
    /// tried again while the store cannot write.
    fn finish(&mut self, item: Item, outcome: Outcome) {
        self.dec_pending(&item.tenant, 1);
        item.span.record("stoa.outcome", if matches!(outcome, Outcome::Ok { .. }) { "ok" } else { "error" });
        item.metrics.finished(matches!(outcome, Outcome::Ok { .. }));
        let (outcomes, store) = (self.outcomes.clone(), self.store.clone());
        let (stop, clock) = (self.shutdown.clone(), self.opts.clock.clone());
        let id = item.inv.id;
        self.delivering.insert(id.clone());
        self.deliveries.spawn(async move {
            let what = format!("applying the outcome of {id}");
            let deliver = || outcomes.clone().apply(id.clone(), outcome.clone());
            let applied = crate::retry::until_stored(&*store, &clock, &stop, &what, deliver).await;
            if let Err(e) = applied {
                tracing::error!(invocation = %id, error = %e, "could not apply an outcome");
            }
            id
        });
    }

    /// Leases past their deadline time out; backoffs that are due requeue.
    fn expire(&mut self, now: Instant) {
        let mut timed_out = Vec::new();
        let mut due = Vec::new();
        for (id, item) in &self.items {
            match item.state {
                State::Leased { deadline, heartbeat_deadline, .. }
                    if now >= deadline || heartbeat_deadline.is_some_and(|h| now >= h) =>
                {
                    timed_out.push(id.clone())
                }
                State::Backoff { until } if now >= until => due.push(id.clone()),
                _ => {}
            }
        }
        // In id order: the map's is no order.
        due.sort_unstable();
        timed_out.sort_unstable();
        for id in due {
            if let Some(item) = self.items.get_mut(&id) {
                item.state = State::Queued;
                item.ready = now;
                self.queue(&id);
            }
        }
        for id in timed_out {
            let item = self.items.remove(&id).expect("listed");
            let State::Leased { session, deadline, .. } = item.state else { unreachable!("leased") };
            self.release(session, &item);
            if let Some(s) = self.sessions.get(&session) {
                let _ = s.tx.try_send(msg(pb::server_message::Msg::Cancel(pb::Cancel {
                    invocation_id: id.to_string(),
                    attempt: item.attempt,
                })));
            }
            let what = if now >= deadline { "start-to-close timeout" } else { "heartbeat timeout" };
            let message = format!("attempt {} ran past its {what}", item.attempt);
            self.fail(item, ErrorKind::Timeout, message, true);
        }
    }

    /// Leases queued invocations to sessions with room: per session, the
    /// highest priority first, in micro-batches.
    fn pump(&mut self) {
        if self.draining_until.is_some() {
            return;
        }
        let now = self.opts.clock.now();
        let session_ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for sid in session_ids {
            let mut batch = Vec::new();
            loop {
                let s = &self.sessions[&sid];
                if s.draining || s.in_flight.len() >= s.max_in_flight || batch.len() >= self.opts.max_batch {
                    break;
                }
                let max = self.opts.tenant_max_in_flight.get(&s.tenant).copied().unwrap_or(0);
                if self.tenant_in_flight.get(&s.tenant).copied().unwrap_or(0) >= max {
                    break;
                }
                let Some(id) = self.best_for(sid) else { break };
                let item = self.items.get_mut(&id).expect("queued item");
                let hb = (item.inv.heartbeat_ms > 0).then(|| now + Duration::from_millis(item.inv.heartbeat_ms));
                item.state = State::Leased {
                    session: sid,
                    deadline: now + Duration::from_millis(item.inv.timeout_ms.max(1)),
                    heartbeat_deadline: hb,
                    since: now,
                };
                item.span = crate::trace::dispatch_span(&item.inv, &item.tenant, item.attempt);
                // Untraced here (a trace the sampler left out): the stored
                // context goes on as it is, so the worker leaves it out too.
                let traceparent = stoa_telemetry::traceparent_of(&item.span)
                    .or_else(|| item.inv.traceparent.clone())
                    .unwrap_or_default();
                item.metrics.schedule_to_start.record(now.saturating_duration_since(item.ready).as_secs_f64());
                let (tenant, function, capped) =
                    (item.tenant.clone(), item.inv.function.clone(), item.inv.concurrency.is_some());
                batch.push(pb::Invocation {
                    id: id.to_string(),
                    function: item.inv.function.clone(),
                    args_json: item.inv.args.to_string(),
                    attempt: item.attempt,
                    priority: item.inv.priority,
                    timeout_ms: item.inv.timeout_ms,
                    heartbeat_timeout_ms: item.inv.heartbeat_ms,
                    workflow_id: item.inv.workflow.to_string(),
                    traceparent,
                });
                if capped {
                    *self.capped_in_flight.entry(tenant.clone()).or_default().entry(function.clone()).or_default() += 1;
                }
                *self.tenant_in_flight.entry(tenant).or_default() += 1;
                *self.function_in_flight.entry(function).or_default() += 1;
                self.sessions.get_mut(&sid).expect("session").in_flight.insert(id);
            }
            if batch.is_empty() {
                continue;
            }
            let m = msg(pb::server_message::Msg::Invocations(pb::InvocationBatch { invocations: batch }));
            if let Err(e) = self.sessions[&sid].tx.try_send(m) {
                // The session cannot take more now (or is closing): undo.
                let pb::ServerMessage { msg: Some(pb::server_message::Msg::Invocations(b)) } = e.into_inner() else {
                    unreachable!("sent a batch")
                };
                for inv in b.invocations {
                    let id = InvocationId::new(inv.id);
                    if let Some(item) = self.items.get_mut(&id) {
                        item.state = State::Queued;
                        item.span = tracing::Span::none();
                        let (t, f, c) =
                            (item.tenant.clone(), item.inv.function.clone(), item.inv.concurrency.is_some());
                        self.dec_in_flight(&t, &f, c);
                        self.sessions.get_mut(&sid).expect("session").in_flight.remove(&id);
                        self.queue(&id);
                    }
                }
            }
        }
    }

    /// The best queued invocation this session may take, popped from its queue.
    fn best_for(&mut self, sid: SessionId) -> Option<InvocationId> {
        let s = &self.sessions[&sid];
        let mut best: Option<(QueueKey, (String, String))> = None;
        for f in &s.functions {
            let limit = self.opts.function_concurrency.get(f).copied().unwrap_or(usize::MAX);
            if self.function_in_flight.get(f).copied().unwrap_or(0) >= limit {
                continue;
            }
            let key = (s.tenant.clone(), f.clone());
            let Some(q) = self.queues.get_mut(&key) else { continue };
            // Drop entries whose item was answered, cancelled or requeued.
            while let Some(top) = q.peek() {
                if matches!(self.items.get(&top.2), Some(Item { state: State::Queued, .. })) {
                    break;
                }
                q.pop();
            }
            if let Some(top) = q.peek() {
                // The pack's own cap on the function, for this tenant (the
                // first queued call's: packs that call it may differ).
                let cap = self.items.get(&top.2).and_then(|i| i.inv.concurrency);
                let running = self.capped_in_flight.get(&key.0).and_then(|m| m.get(&key.1)).copied().unwrap_or(0);
                if cap.is_some_and(|c| running >= c as usize) {
                    continue;
                }
                if best.as_ref().is_none_or(|(b, _)| top > b) {
                    best = Some((top.clone(), key));
                }
            }
        }
        let (top, key) = best?;
        self.queues.get_mut(&key).expect("queue").pop();
        Some(top.2)
    }
}

impl Dispatcher {
    fn workers_of(&self, tenant: &str) -> crate::dispatch_handle::WorkersView {
        use crate::dispatch_handle::{FunctionLoad, WorkerSession, WorkersView};
        let mut functions: BTreeMap<String, FunctionLoad> = BTreeMap::new();
        fn load<'m>(functions: &'m mut BTreeMap<String, FunctionLoad>, f: &str) -> &'m mut FunctionLoad {
            functions
                .entry(f.to_string())
                .or_insert_with(|| FunctionLoad { function: f.to_string(), ..Default::default() })
        }
        let mut sessions = Vec::new();
        for (id, s) in self.sessions.iter().filter(|(_, s)| s.tenant == tenant) {
            for f in &s.functions {
                let l = load(&mut functions, f);
                if !s.draining {
                    l.workers += 1;
                    l.free_slots += s.max_in_flight.saturating_sub(s.in_flight.len());
                }
            }
            sessions.push(WorkerSession {
                session: *id,
                functions: s.functions.clone(),
                max_in_flight: s.max_in_flight,
                in_flight: s.in_flight.len(),
                draining: s.draining,
            });
        }
        for item in self.items.values().filter(|i| i.tenant == tenant) {
            let l = load(&mut functions, &item.inv.function);
            match item.state {
                State::Queued => l.queued += 1,
                State::Leased { .. } => l.running += 1,
                State::Backoff { .. } => l.backoff += 1,
            }
        }
        WorkersView { sessions, functions: functions.into_values().collect() }
    }

    fn inspect(&self, tenant: &str, id: &InvocationId, function: &str) -> Inspected {
        let workers = self
            .sessions
            .values()
            .filter(|s| !s.draining && s.tenant == tenant && s.functions.iter().any(|f| f == function))
            .count() as u32;
        let Some(item) = self.items.get(id).filter(|i| i.tenant == tenant) else {
            let state = if self.delivering.contains(id) { "answered" } else { "" };
            return Inspected { state, workers, ..Inspected::default() };
        };
        let (now, now_ms) = (self.opts.clock.now(), self.opts.clock.now_ms());
        let at_ms = |t: Instant| now_ms + t.saturating_duration_since(now).as_millis() as u64;
        let (state, retry_at_ms, session, deadline_ms) = match item.state {
            State::Queued => ("queued", 0, None, 0),
            State::Leased { session, deadline, .. } => ("running", 0, Some(session), at_ms(deadline)),
            State::Backoff { until } => ("backoff", at_ms(until), None, 0),
        };
        Inspected {
            state,
            attempt: item.attempt,
            retry_at_ms,
            failed: item.failed.clone(),
            workers,
            session,
            deadline_ms,
        }
    }
}

/// Keeps a failed attempt's error for `stoa describe` and the timeline
/// (the last few, each cut to `KEPT_ERROR_BYTES`: a worker chooses them).
fn note_failure(item: &mut Item, at_ms: u64, mut error: String) {
    const KEPT_ERROR_BYTES: usize = 1024;
    if error.len() > KEPT_ERROR_BYTES {
        let mut end = KEPT_ERROR_BYTES;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
        error.push('…');
    }
    if item.failed.len() == KEPT_FAILURES {
        item.failed.remove(0);
    }
    item.failed.push(FailedAttempt { attempt: item.attempt, at_ms, error });
}

fn drain_msg(until: Instant, now: Instant) -> pb::ServerMessage {
    msg(pb::server_message::Msg::Drain(pb::Drain {
        reason: "the server is shutting down".into(),
        deadline_ms: until.saturating_duration_since(now).as_millis() as u64,
    }))
}

fn msg(m: pb::server_message::Msg) -> pb::ServerMessage {
    pb::ServerMessage { msg: Some(m) }
}
