//! Runs one workflow in this process: each turn is committed to an optional
//! store before its invocations are handed to the dispatcher, and answers
//! are fed back as turns until nothing is left to do.

use std::sync::Arc;

use stoa_rules::compile::Pack;
use stoa_rules::testcase::FactSpec;

use crate::dispatch::Dispatcher;
use crate::fact::WorkflowId;
use crate::store::{self, Commit, Store};
use crate::timeline::Entry;
use crate::workflow::{Input, Rejected, TurnOutput, Workflow};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Rejected(#[from] Rejected),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("workflow {0} is not in the store")]
    NotFound(WorkflowId),
    #[error("workflow {0} already exists in the store; resume it instead")]
    Exists(WorkflowId),
    #[error("workflow {id} was stored by pack {stored}, not {given}")]
    WrongPack { id: WorkflowId, stored: String, given: String },
    #[error("cannot rebuild workflow: {0}")]
    Restore(String),
    /// A scripted step (a test's, `stoa run`'s) that cannot be done.
    #[error("{0}")]
    Step(String),
}

/// Virtual time: every turn is one millisecond after the previous one, so
/// timelines of test runs are the same every time.
pub struct Local<'s> {
    pub workflow: Workflow,
    store: Option<&'s dyn Store>,
    /// Entries of the turns run by this `Local` (not earlier ones).
    pub timeline: Vec<Entry>,
    now: u64,
    virtual_time: bool,
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl<'s> Local<'s> {
    /// Starts a workflow; its invocations go to `dispatcher`.
    pub fn start(
        pack: Arc<Pack>,
        id: WorkflowId,
        facts: Vec<FactSpec>,
        store: Option<&'s dyn Store>,
        virtual_time: bool,
        dispatcher: &mut dyn Dispatcher,
    ) -> Result<Local<'s>, Error> {
        let mut local = Local::create(pack, id, store, virtual_time)?;
        local.apply(Input::Start { facts }, dispatcher)?;
        Ok(local)
    }

    /// A workflow not started yet: `apply(Input::Start { .. })` next.
    pub fn create(
        pack: Arc<Pack>,
        id: WorkflowId,
        store: Option<&'s dyn Store>,
        virtual_time: bool,
    ) -> Result<Local<'s>, Error> {
        if let Some(s) = store {
            if s.load(&id)?.is_some() {
                return Err(Error::Exists(id));
            }
        }
        let now = if virtual_time { 0 } else { wall_ms() };
        Ok(Local { workflow: Workflow::new(id, pack, now), store, timeline: Vec::new(), now, virtual_time })
    }

    /// Reopens a stored workflow and hands its pending invocations to
    /// `dispatcher` again (they are delivered at least once).
    pub fn resume(
        pack: Arc<Pack>,
        id: WorkflowId,
        store: &'s dyn Store,
        dispatcher: &mut dyn Dispatcher,
    ) -> Result<Local<'s>, Error> {
        let snap = store.load(&id)?.ok_or_else(|| Error::NotFound(id.clone()))?;
        if snap.meta.pack != pack.manifest.name {
            return Err(Error::WrongPack { id, stored: snap.meta.pack, given: pack.manifest.name.clone() });
        }
        let now = wall_ms();
        let workflow = Workflow::restore(pack, snap).map_err(Error::Restore)?;
        let mut pending: Vec<_> = workflow.waiting().map(|w| w.invocation.clone()).collect();
        pending.sort_by_key(|i| i.created_ms);
        for inv in pending {
            dispatcher.dispatch(inv, now);
        }
        Ok(Local { workflow, store: Some(store), timeline: Vec::new(), now, virtual_time: false })
    }

    /// From now on the clock moves only as told (`advance`), from where it
    /// is: a scripted local run need not wait for its timers.
    pub fn use_virtual_time(&mut self) {
        self.virtual_time = true;
    }

    /// The time the next turn runs at (`tick` without moving the clock).
    fn turn_time(&self) -> u64 {
        if self.virtual_time {
            self.now + 1
        } else {
            wall_ms().max(self.now)
        }
    }

    fn tick(&mut self) -> u64 {
        self.now = if self.virtual_time { self.now + 1 } else { wall_ms().max(self.now) };
        self.now
    }

    /// One turn: apply, commit, then dispatch.
    pub fn apply(&mut self, input: Input, dispatcher: &mut dyn Dispatcher) -> Result<TurnOutput, Error> {
        let now = self.tick();
        let out = self.workflow.apply(input, now)?;
        if let Some(s) = self.store {
            s.commit(&[Commit { workflow: self.workflow.id(), output: &out, request_id: None, epoch: None }])?;
        }
        for id in &out.cancelled {
            dispatcher.cancel(id);
        }
        for inv in &out.invocations {
            if !out.cancelled.contains(&inv.id) {
                dispatcher.dispatch(inv.clone(), now);
            }
        }
        self.timeline.extend(out.entries.iter().cloned());
        Ok(out)
    }

    /// Moves the clock forward by `by_ms`: the timers due by then fire and
    /// the answers due by then arrive, in time order (a timer first when
    /// both fall on one instant), each turn with the clock at its time;
    /// answers are fed back after each. Virtual time does not wait; wall
    /// time sleeps.
    pub fn advance(
        &mut self,
        by_ms: u64,
        dispatcher: &mut dyn Dispatcher,
        on_turn: &mut dyn FnMut(&TurnOutput),
    ) -> Result<(), Error> {
        let base = if self.virtual_time { self.now } else { wall_ms().max(self.now) };
        let until = base.saturating_add(by_ms);
        loop {
            let timer = self.next_timer().map(|t| t.1).filter(|&due| due <= until);
            let answer = dispatcher.next_due().filter(|&due| due <= until);
            let at = match (timer, answer) {
                (None, None) => break,
                (Some(t), Some(a)) => t.min(a),
                (t, a) => t.or(a).expect("one is set"),
            };
            self.wait_until(at);
            if timer == Some(at) {
                let ids = self.workflow.timers().filter(|x| x.due_ms == at).map(|x| x.id).collect();
                match self.apply(Input::Timers { ids }, dispatcher) {
                    Ok(out) => on_turn(&out),
                    // Finished: its timers are gone; answers still drain.
                    Err(Error::Rejected(Rejected::NotRunning(_))) => {
                        if self.next_timer().is_some_and(|t| t.1 == at) {
                            break;
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            self.drive(dispatcher, on_turn)?;
        }
        self.wait_until(until);
        Ok(())
    }

    /// (id, due) of the timer due first.
    pub fn next_timer(&self) -> Option<(u64, u64)> {
        self.workflow.timers().map(|t| (t.id, t.due_ms)).min_by_key(|&(id, due)| (due, id))
    }

    fn wait_until(&mut self, at_ms: u64) {
        if self.virtual_time {
            // `apply` ticks once more, so the turn runs at `at_ms`.
            self.now = self.now.max(at_ms.saturating_sub(1));
        } else {
            let now = wall_ms();
            if at_ms > now {
                std::thread::sleep(std::time::Duration::from_millis(at_ms - now));
            }
        }
    }

    /// Feeds outcomes back until the dispatcher has none; `on_turn` sees
    /// each turn once it is committed. A duplicate or late answer is
    /// ignored, as the exactly-once rule requires.
    pub fn drive(
        &mut self,
        dispatcher: &mut dyn Dispatcher,
        on_turn: &mut dyn FnMut(&TurnOutput),
    ) -> Result<(), Error> {
        // An answer is ready if it is due by the time the next turn runs.
        while let Some((inv, outcome)) = dispatcher.next_outcome(self.turn_time()) {
            match self.apply(Input::Result { invocation: inv.id, outcome }, dispatcher) {
                Ok(out) => on_turn(&out),
                Err(Error::Rejected(Rejected::UnknownInvocation(_) | Rejected::NotRunning(_))) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
