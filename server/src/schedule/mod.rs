//! Cron schedules: each tick starts one workflow, exactly once, even across
//! restarts and crashes.
//!
//! One task sleeps until the earliest due tick of all schedules (a
//! `BTreeSet` by due time) and is woken when a schedule changes. A pass
//! first records the ticks it is about to start (its intent, kind
//! `schedule-pass`), then starts each tick's workflow through the runtime's
//! idempotent start, with a request id derived from the schedule and the
//! tick; only then is the schedule's cursor ("done up to") recorded, and
//! the intent dropped. After a crash in between, the restart finds the
//! workflows the intent's ticks started by their request ids and records
//! them: a tick that ran is never left out of the runs, nor decided again
//! by a catch-up policy (the intent matters because a pass's ticks are not
//! the first after the cursor when a policy skipped missed ones).
//! Ticks missed while the server was down go through the schedule's
//! catch-up policy (`plan`). A tick whose start fails for a passing reason
//! (backpressure, storage) is tried again after `RETRY_MS`, and cursors a
//! pass could not record are recorded again as often, until they are.

pub mod api;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stoa_engine::store::Store;
use stoa_rules::cron::{Spec, SpecError};
use stoa_rules::manifest::{valid_schedule_name, CatchUp, ScheduleSpec};
use stoa_rules::testcase::FactSpec;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::faults::Faults;
use crate::runtime::Runtime;
use plan::{plan, request_id, RunKind};

/// Record kind in the store; keys are `<tenant>/<name>`.
const KIND: &str = "schedule";
/// The ticks a pass is starting, until its cursor is recorded (same keys):
/// a list of due times.
const PASS: &str = "schedule-pass";
/// Runs kept per schedule, for `get` and for tests that count them.
const RUNS_KEPT: usize = 32;
/// Ticks starting at once at most. Starts share group commits, so many in
/// flight is fast; but all of a burst in flight at once finish together at
/// the end, while waves let the first ones finish early.
const MAX_STARTS_IN_FLIGHT: usize = 512;
/// A start that failed for a passing reason (backpressure, storage) is
/// tried again after this.
const RETRY_MS: i64 = 1000;

/// A schedule as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Schedule {
    pub tenant: String,
    pub name: String,
    pub pack: String,
    pub cron: String,
    pub timezone: String,
    pub facts: Vec<FactSpec>,
    pub catch_up: CatchUp,
    pub max_catch_up: Option<u32>,
    pub paused: bool,
    pub from_pack: bool,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Every tick at or before this instant is done: started, or skipped
    /// by the policy.
    pub cursor_ms: i64,
    pub runs: VecDeque<Run>,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    pub due_ms: i64,
    pub started_ms: u64,
    pub workflow_id: String,
    pub created: bool,
    pub kind: RunKind,
}

/// What an API call or a pack asks for.
#[derive(Clone, Debug)]
pub struct Definition {
    pub name: String,
    pub pack: String,
    pub spec: ScheduleSpec,
    pub paused: bool,
}

struct Entry {
    rec: Schedule,
    spec: Spec,
    /// Its key in the queue, if queued.
    due: Option<i64>,
    /// A tick's start failed in a way that may still have started it (the
    /// store failed, and may recover the commit when it heals): the next
    /// pass first finds what the intent's ticks started, as a restart does,
    /// rather than let its policy decide about them again.
    unsure: bool,
}

#[derive(Default)]
struct State {
    entries: BTreeMap<(String, String), Entry>,
    queue: BTreeSet<(i64, String, String)>,
    /// Schedules whose record a pass could not write (the store failed):
    /// written again every `RETRY_MS` until it works.
    unsaved: BTreeSet<(String, String)>,
}

impl State {
    /// (Re)queues an entry at its next tick (or retry time).
    fn requeue(&mut self, key: &(String, String), at: Option<i64>) {
        let Some(e) = self.entries.get_mut(key) else { return };
        let before = e.due.take();
        if let Some(d) = before {
            self.queue.remove(&(d, key.0.clone(), key.1.clone()));
        }
        // A paused schedule runs no tick, but one it may have started
        // before the pause is still looked for (see `unsure`).
        if e.rec.paused && !e.unsure {
            return;
        }
        let due = if e.rec.paused { at.or(before) } else { at.or_else(|| e.spec.next_after(e.rec.cursor_ms)) };
        if let Some(d) = due {
            e.due = Some(d);
            self.queue.insert((d, key.0.clone(), key.1.clone()));
        }
    }
}

pub struct Scheduler {
    runtime: Arc<Runtime>,
    store: Arc<dyn Store>,
    state: Mutex<State>,
    wake: Notify,
    faults: Arc<dyn Faults>,
    /// Whether this server runs the schedules: always alone; in a cluster,
    /// only the coordinator (see `cluster`), so that one server ticks.
    active: std::sync::atomic::AtomicBool,
}

fn key_of(tenant: &str, name: &str) -> (String, String) {
    (tenant.to_string(), name.to_string())
}

impl Scheduler {
    /// Loads the stored schedules; ticks missed while the server was down
    /// are due at once, and the first pass applies their policies.
    pub fn load(runtime: Arc<Runtime>, store: Arc<dyn Store>, faults: Arc<dyn Faults>) -> Result<Scheduler, String> {
        let active = runtime.opts.placement.is_coordinator();
        let now = runtime.clock.now_ms();
        let state = if active { read_state(&*store, now)? } else { State::default() };
        Ok(Scheduler {
            runtime,
            store,
            state: Mutex::new(state),
            wake: Notify::new(),
            faults,
            active: std::sync::atomic::AtomicBool::new(active),
        })
    }

    /// This server became the cluster's coordinator: it reads the
    /// schedules as stored (ticks missed meanwhile go through their
    /// policies) and runs them.
    pub fn activate(&self) -> Result<(), String> {
        let state = read_state(&*self.store, self.runtime.clock.now_ms())?;
        *self.state.lock().expect("scheduler lock") = state;
        self.active.store(true, std::sync::atomic::Ordering::Release);
        self.wake.notify_one();
        tracing::info!("this server runs the cluster's schedules");
        Ok(())
    }

    /// Another server coordinates now: this one stops ticking.
    pub fn deactivate(&self) {
        if self.active.swap(false, std::sync::atomic::Ordering::AcqRel) {
            *self.state.lock().expect("scheduler lock") = State::default();
            self.wake.notify_one();
            tracing::info!("the cluster's schedules moved to another server");
        }
    }

    pub(crate) fn is_active(&self) -> bool {
        self.active.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Refuses a change or a read where the schedules do not run.
    fn here(&self) -> Result<(), ApiError> {
        if self.is_active() {
            Ok(())
        } else {
            Err(ApiError::Unavailable("the cluster's schedules are moving to another server; retry".into()))
        }
    }
}

/// The stored schedules, as a scheduler runs them.
fn read_state(store: &dyn Store, now: u64) -> Result<State, String> {
    let mut state = State::default();
    {
        for (key, value) in store.scan_aux(KIND, "").map_err(|e| e.to_string())? {
            let rec: Schedule = serde_json::from_value(value).map_err(|e| format!("schedule record {key}: {e}"))?;
            // One schedule this build cannot read must not keep the server
            // (and every other schedule) down: it stays stored, inactive.
            let spec = match Spec::parse(&rec.cron, &rec.timezone) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(schedule = %key, error = %e, "stored schedule no longer parses; it will not run");
                    continue;
                }
            };
            let mut rec = rec;
            if recover(store, &spec, &mut rec, now).map_err(|e| format!("schedule record {key}: {e}"))? {
                store
                    .put_aux(KIND, &key, &serde_json::to_value(&rec).expect("schedules serialize"))
                    .map_err(|e| format!("schedule record {key}: {e}"))?;
            }
            let k = key_of(&rec.tenant, &rec.name);
            state.entries.insert(k.clone(), Entry { rec, spec, due: None, unsure: false });
            state.requeue(&k, None);
        }
    }
    Ok(state)
}

impl Scheduler {
    /// Writes schedule records; `passed`: after a pass, whose intents they
    /// make moot (dropped in the same write).
    fn persist(&self, recs: &[&Schedule], passed: bool) -> Result<(), ApiError> {
        let values: Vec<(String, serde_json::Value)> = recs
            .iter()
            .map(|r| (format!("{}/{}", r.tenant, r.name), serde_json::to_value(r).expect("schedules serialize")))
            .collect();
        let mut records: Vec<_> = values.iter().map(|(k, v)| (KIND, k.as_str(), Some(v))).collect();
        if passed {
            records.extend(values.iter().map(|(k, _)| (PASS, k.as_str(), None)));
        }
        self.store.put_aux_batch(&records).map_err(ApiError::from)
    }

    // ---- the clock --------------------------------------------------------

    /// Runs until `shutdown`. A pass in progress finishes first, so its
    /// ticks are recorded.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if !self.is_active() {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = self.wake.notified() => continue,
                }
            }
            let unsaved = !self.save_unsaved();
            let first = self.state.lock().expect("scheduler lock").queue.first().map(|(d, _, _)| *d);
            let now = self.runtime.clock.now_ms() as i64;
            // Records to write again wake the loop as a tick would.
            let first = if unsaved { Some(first.map_or(now + RETRY_MS, |d| d.min(now + RETRY_MS))) } else { first };
            match first {
                Some(due) if due <= now => self.pass(now).await,
                Some(due) => {
                    let wait = Duration::from_millis((due - now) as u64);
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return,
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                None => {
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return,
                        _ = self.wake.notified() => {}
                    }
                }
            }
        }
    }

    /// Starts every tick due by `now`: schedules in parallel, each one's
    /// ticks in order; then records the cursors in one durable write.
    async fn pass(&self, now: i64) {
        let mut jobs = Vec::new();
        {
            let mut st = self.state.lock().expect("scheduler lock");
            while let Some((due, t, n)) = st.queue.first().cloned() {
                if due > now {
                    break;
                }
                st.queue.remove(&(due, t.clone(), n.clone()));
                let k = (t.clone(), n.clone());
                let st = &mut *st;
                let Some(e) = st.entries.get_mut(&k) else { continue };
                e.due = None;
                if e.unsure {
                    match recover(&*self.store, &e.spec, &mut e.rec, now as u64) {
                        Ok(changed) => {
                            e.unsure = false;
                            if changed || e.rec.paused {
                                st.unsaved.insert(k.clone());
                            }
                            if e.rec.paused {
                                continue;
                            }
                        }
                        Err(err) => {
                            tracing::warn!(tenant = %t, schedule = %n, error = %err, "schedule tick will be retried");
                            let retry = self.runtime.clock.now_ms() as i64 + RETRY_MS;
                            st.requeue(&k, Some(retry));
                            continue;
                        }
                    }
                }
                let p = plan(&e.spec, e.rec.cursor_ms, now, e.rec.catch_up, e.rec.max_catch_up);
                jobs.push((t, n, e.rec.pack.clone(), e.rec.facts.clone(), p));
            }
        }
        // What earlier passes started is recorded before a new intent
        // replaces theirs: a restart finds ticks through the record or the
        // intent, and would skip those only the lost intent named.
        if !jobs.is_empty() && !self.save_unsaved() {
            let mut st = self.state.lock().expect("scheduler lock");
            let retry = self.runtime.clock.now_ms() as i64 + RETRY_MS;
            for (t, n, ..) in jobs {
                st.requeue(&(t, n), Some(retry));
            }
            return;
        }
        // The intent first: a crash after a tick started must find it.
        let intents: Vec<(String, serde_json::Value)> = jobs
            .iter()
            .filter(|j| !j.4.run.is_empty())
            .map(|(t, n, _, _, p)| (format!("{t}/{n}"), p.run.iter().map(|(due, _)| *due).collect()))
            .collect();
        let records: Vec<_> = intents.iter().map(|(k, v)| (PASS, k.as_str(), Some(v))).collect();
        if !records.is_empty() {
            if let Err(e) = self.store.put_aux_batch(&records) {
                // Late rather than never: the pass is tried again.
                tracing::warn!(error = %e, "recording a schedule pass failed; retrying");
                let mut st = self.state.lock().expect("scheduler lock");
                let retry = self.runtime.clock.now_ms() as i64 + RETRY_MS;
                for (t, n, ..) in jobs {
                    st.requeue(&(t, n), Some(retry));
                }
                return;
            }
        }
        let clock = self.runtime.clock.clone();
        let started = clock.now();
        let schedules = jobs.len();
        let mut set = tokio::task::JoinSet::new();
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_STARTS_IN_FLIGHT));
        for (tenant, name, pack, facts, p) in jobs {
            let rt = self.runtime.clone();
            let faults = self.faults.clone();
            let permits = permits.clone();
            set.spawn(async move {
                let _permit = permits.acquire_owned().await.expect("never closed");
                let mut runs = Vec::new();
                let mut cursor = p.cursor;
                let mut error = None;
                let mut retry = false;
                for (due, kind) in p.run {
                    match rt.start_scheduled(&tenant, &pack, facts.clone(), &request_id(&name, due), &name).await {
                        Ok((id, created)) => {
                            faults.tick_started(&tenant, &name, created);
                            let started_ms = rt.clock.now_ms();
                            let late_ms = (started_ms as i64).saturating_sub(due).max(0);
                            rt.opts.metrics.tenant(&tenant).tick_lateness.record(late_ms as f64 / 1000.0);
                            runs.push(Run { due_ms: due, started_ms, workflow_id: id.to_string(), created, kind });
                        }
                        Err(e @ (ApiError::ResourceExhausted(_) | ApiError::Unavailable(_) | ApiError::Internal(_))) => {
                            // Late rather than never: this tick and the
                            // next are tried again.
                            tracing::warn!(tenant = %tenant, schedule = %name, error = %e, "schedule tick will be retried");
                            error = Some(e.to_string());
                            cursor = due - 1;
                            retry = true;
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(tenant = %tenant, schedule = %name, error = %e, "schedule tick could not start");
                            error = Some(e.to_string());
                        }
                    }
                }
                (tenant, name, cursor, runs, error, retry)
            });
        }
        let mut done = Vec::new();
        while let Some(r) = set.join_next().await {
            match r {
                Ok(r) => done.push(r),
                Err(e) => tracing::error!(error = %e, "a schedule tick task failed"),
            }
        }
        if done.is_empty() {
            return;
        }
        let ran = clock.now() - started;
        let mut st = self.state.lock().expect("scheduler lock");
        let mut keys = Vec::new();
        for (tenant, name, cursor, runs, error, retry) in done {
            let k = key_of(&tenant, &name);
            let Some(e) = st.entries.get_mut(&k) else { continue }; // deleted meanwhile
            e.rec.cursor_ms = e.rec.cursor_ms.max(cursor);
            e.rec.runs.extend(runs);
            while e.rec.runs.len() > RUNS_KEPT {
                e.rec.runs.pop_front();
            }
            if error.is_some() || !retry {
                e.rec.last_error = error;
            }
            e.unsure |= retry;
            st.requeue(&k, retry.then(|| clock.now_ms() as i64 + RETRY_MS));
            keys.push(k);
        }
        let recs: Vec<&Schedule> = keys.iter().filter_map(|k| st.entries.get(k)).map(|e| &e.rec).collect();
        if let Err(e) = self.persist(&recs, true) {
            // The ticks' workflows exist (a crash meanwhile finds them again
            // by their request ids); the records are written again later.
            tracing::warn!(error = %e, "recording schedule ticks failed; retrying");
            st.unsaved.extend(keys);
        }
        tracing::debug!(
            schedules,
            late_ms = clock.now_ms() as i64 - now,
            starts_ms = ran.as_millis() as u64,
            total_ms = (clock.now() - started).as_millis() as u64,
            "schedule pass"
        );
    }

    /// Writes the records a pass could not; `true` once none is left.
    fn save_unsaved(&self) -> bool {
        let mut st = self.state.lock().expect("scheduler lock");
        if st.unsaved.is_empty() {
            return true;
        }
        let recs: Vec<&Schedule> = st.unsaved.iter().filter_map(|k| st.entries.get(k)).map(|e| &e.rec).collect();
        match self.persist(&recs, true) {
            Ok(()) => {
                st.unsaved.clear();
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "recording schedule ticks failed again");
                false
            }
        }
    }

    // ---- changes ------------------------------------------------------------

    /// Creates or replaces a schedule. Its ticks count from now, unless it
    /// existed with the same timing (a redeploy keeps its place).
    pub fn put(&self, tenant: &str, def: Definition, from_pack: bool) -> Result<Schedule, ApiError> {
        self.here()?;
        let spec = validate(&def)?;
        if !from_pack && !self.runtime.packs(tenant).iter().any(|(n, _, _)| *n == def.pack) {
            return Err(ApiError::InvalidArgument(format!("pack: `{}` is not deployed", def.pack)));
        }
        let now = self.runtime.clock.now_ms();
        let k = key_of(tenant, &def.name);
        let mut st = self.state.lock().expect("scheduler lock");
        let old = st.entries.get(&k).map(|e| &e.rec);
        let same_timing = old.is_some_and(|o| o.cron == def.spec.cron && o.timezone == def.spec.timezone);
        let rec = Schedule {
            tenant: tenant.to_string(),
            name: def.name.clone(),
            pack: def.pack,
            cron: def.spec.cron,
            timezone: def.spec.timezone,
            facts: def.spec.facts,
            catch_up: def.spec.catch_up,
            max_catch_up: def.spec.max_catch_up,
            paused: def.paused,
            from_pack,
            created_ms: old.map(|o| o.created_ms).unwrap_or(now),
            updated_ms: now,
            cursor_ms: match old {
                Some(o) if same_timing && !o.paused => o.cursor_ms,
                _ => now as i64,
            },
            runs: old.map(|o| o.runs.clone()).unwrap_or_default(),
            last_error: None,
        };
        self.persist(&[&rec], false)?;
        let due = st.entries.get(&k).and_then(|e| e.due);
        st.entries.insert(k.clone(), Entry { rec: rec.clone(), spec, due, unsure: false });
        st.requeue(&k, None);
        drop(st);
        self.wake.notify_one();
        Ok(rec)
    }

    /// Installs the `[schedules]` of a deployed pack version, and removes the
    /// ones an earlier version defined and this one does not. A pack's
    /// schedule keeps its pause and its place across deploys. When the store
    /// cannot write, the rest is still tried and `Unavailable` returned:
    /// deploying again installs the schedules again.
    pub fn install_pack(
        &self,
        tenant: &str,
        pack: &str,
        schedules: &BTreeMap<String, ScheduleSpec>,
    ) -> Result<(), ApiError> {
        let mut first_error = None;
        for (name, spec) in schedules {
            let paused = {
                let st = self.state.lock().expect("scheduler lock");
                st.entries.get(&key_of(tenant, name)).is_some_and(|e| e.rec.paused && e.rec.from_pack)
            };
            let def = Definition { name: name.clone(), pack: pack.to_string(), spec: spec.clone(), paused };
            if let Err(e) = self.put(tenant, def, true) {
                tracing::error!(tenant, pack, schedule = %name, error = %e, "installing a pack's schedule failed");
                if let ApiError::Unavailable(_) = e {
                    first_error.get_or_insert(e);
                }
            }
        }
        let stale: Vec<String> = {
            let st = self.state.lock().expect("scheduler lock");
            st.entries
                .values()
                .filter(|e| e.rec.tenant == tenant && e.rec.from_pack && e.rec.pack == pack)
                .filter(|e| !schedules.contains_key(&e.rec.name))
                .map(|e| e.rec.name.clone())
                .collect()
        };
        for name in stale {
            if let Err(e @ ApiError::Unavailable(_)) = self.delete(tenant, &name) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn update(&self, tenant: &str, name: &str, f: impl FnOnce(&mut Schedule)) -> Result<Schedule, ApiError> {
        self.here()?;
        let k = key_of(tenant, name);
        let mut st = self.state.lock().expect("scheduler lock");
        let e = st.entries.get(&k).ok_or_else(|| not_found(name))?;
        let mut rec = e.rec.clone();
        // A tick that may have started before the store failed is looked
        // for first: a resume moves the cursor past it, and the next pass
        // would no longer find it.
        let unsure = e.unsure;
        if unsure {
            recover(&*self.store, &e.spec, &mut rec, self.runtime.clock.now_ms()).map_err(ApiError::from)?;
        }
        f(&mut rec);
        rec.updated_ms = self.runtime.clock.now_ms();
        self.persist(&[&rec], false)?;
        let e = st.entries.get_mut(&k).expect("present");
        e.rec = rec.clone();
        if unsure {
            e.unsure = false;
        }
        st.requeue(&k, None);
        drop(st);
        self.wake.notify_one();
        Ok(rec)
    }

    pub fn pause(&self, tenant: &str, name: &str) -> Result<Schedule, ApiError> {
        self.update(tenant, name, |r| r.paused = true)
    }

    /// The ticks of the pause are not run: the schedule goes on from now.
    pub fn resume(&self, tenant: &str, name: &str) -> Result<Schedule, ApiError> {
        let now = self.runtime.clock.now_ms() as i64;
        self.update(tenant, name, |r| {
            if r.paused {
                r.paused = false;
                r.cursor_ms = r.cursor_ms.max(now);
            }
        })
    }

    pub fn delete(&self, tenant: &str, name: &str) -> Result<(), ApiError> {
        self.here()?;
        let k = key_of(tenant, name);
        let mut st = self.state.lock().expect("scheduler lock");
        if !st.entries.contains_key(&k) {
            return Err(not_found(name));
        }
        let key = format!("{tenant}/{name}");
        self.store.put_aux_batch(&[(KIND, &key, None), (PASS, &key, None)]).map_err(ApiError::from)?;
        if let Some(e) = st.entries.remove(&k) {
            if let Some(d) = e.due {
                st.queue.remove(&(d, k.0, k.1));
            }
        }
        Ok(())
    }

    /// Starts the schedule's workflow now; `request` makes it idempotent.
    pub async fn trigger(&self, tenant: &str, name: &str, request: &str) -> Result<(String, bool), ApiError> {
        self.here()?;
        let (pack, facts) = {
            let st = self.state.lock().expect("scheduler lock");
            let e = st.entries.get(&key_of(tenant, name)).ok_or_else(|| not_found(name))?;
            (e.rec.pack.clone(), e.rec.facts.clone())
        };
        let now = self.runtime.clock.now_ms();
        let (id, created) = self
            .runtime
            .start_scheduled(tenant, &pack, facts, &format!("schedule:{name}:manual:{request}"), name)
            .await?;
        let run = Run {
            due_ms: now as i64,
            started_ms: self.runtime.clock.now_ms(),
            workflow_id: id.to_string(),
            created,
            kind: RunKind::Manual,
        };
        self.update(tenant, name, |r| {
            r.runs.push_back(run);
            while r.runs.len() > RUNS_KEPT {
                r.runs.pop_front();
            }
        })?;
        Ok((id.to_string(), created))
    }

    pub fn get(&self, tenant: &str, name: &str) -> Result<(Schedule, Vec<i64>), ApiError> {
        self.here()?;
        let st = self.state.lock().expect("scheduler lock");
        let e = st.entries.get(&key_of(tenant, name)).ok_or_else(|| not_found(name))?;
        Ok((e.rec.clone(), next_ticks(e, self.runtime.clock.now_ms())))
    }

    pub fn list(&self, tenant: &str) -> Vec<(Schedule, Vec<i64>)> {
        let st = self.state.lock().expect("scheduler lock");
        let now = self.runtime.clock.now_ms();
        let mut out: Vec<_> = st
            .entries
            .values()
            .filter(|e| e.rec.tenant == tenant)
            .map(|e| (e.rec.clone(), next_ticks(e, now)))
            .collect();
        out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        out
    }
}

/// Ticks after the cursor whose workflows were started before a crash that
/// came before they were recorded: the start is durable (its request id is
/// stored), the cursor is not. They are recorded as runs and passed, so a
/// catch-up policy never decides about a tick that already ran (`skip` would
/// leave its workflow out of the runs, `one` would run a second missed tick,
/// `all` would report it found rather than started). They are among the
/// ticks of the pass's intent, which it starts oldest first (a pass whose
/// policy skipped missed ticks starts later ones than the first after the
/// cursor); and, for records written before intents, the first ticks after
/// the cursor. Returns whether `rec` changed.
fn recover(store: &dyn Store, spec: &Spec, rec: &mut Schedule, now: u64) -> Result<bool, stoa_engine::store::Error> {
    let key = format!("{}/{}", rec.tenant, rec.name);
    let intent: Vec<i64> = match store.get_aux(PASS, &key)? {
        Some(v) => serde_json::from_value(v).unwrap_or_default(),
        None => Vec::new(),
    };
    let mut changed = false;
    let mut found = |due: i64, rec: &mut Schedule| -> Result<bool, stoa_engine::store::Error> {
        let request = format!("{}/{}", rec.tenant, request_id(&rec.name, due));
        let Some(id) = store.request(&request)? else { return Ok(false) };
        // When it started: its first turn's time.
        let started_ms = store.timeline(&id, 1, 1)?.first().map_or(now, |e| e.at_ms);
        rec.runs.push_back(Run {
            due_ms: due,
            started_ms,
            workflow_id: id.to_string(),
            created: true,
            kind: RunKind::Recovered,
        });
        while rec.runs.len() > RUNS_KEPT {
            rec.runs.pop_front();
        }
        rec.cursor_ms = due;
        changed = true;
        Ok(true)
    };
    for due in intent {
        if due > rec.cursor_ms && due <= now as i64 && !found(due, rec)? {
            break;
        }
    }
    for _ in 0..plan::DEFAULT_MAX_CATCH_UP {
        let Some(due) = spec.next_after(rec.cursor_ms) else { break };
        if due > now as i64 || !found(due, rec)? {
            break;
        }
    }
    Ok(changed)
}

fn next_ticks(e: &Entry, now: u64) -> Vec<i64> {
    if e.rec.paused {
        return Vec::new();
    }
    e.spec.ticks(e.rec.cursor_ms.max(now as i64 - plan::GRACE_MS), i64::MAX, 5)
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("schedule `{name}` does not exist"))
}

fn validate(def: &Definition) -> Result<Spec, ApiError> {
    if !valid_schedule_name(&def.name) {
        return Err(ApiError::InvalidArgument("name: required; letters, digits, `-`, `_` or `.` (at most 128)".into()));
    }
    if def.pack.is_empty() {
        return Err(ApiError::InvalidArgument("pack: required".into()));
    }
    Spec::parse(&def.spec.cron, &def.spec.timezone).map_err(|e| match e {
        SpecError::Cron(m) => ApiError::InvalidArgument(format!("cron: {m}")),
        SpecError::TimeZone(m) => ApiError::InvalidArgument(format!("timezone: {m}")),
    })
}
