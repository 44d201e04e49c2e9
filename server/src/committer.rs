//! Group commit: one thread owns the store's write path; turns from many
//! workflows queue up while a flush runs, and the next flush takes them all.
//! A turn is acknowledged only after the flush that made it durable; the
//! turns of a failed flush get its error. Attempt records of a failed flush
//! are kept and written with the next one (a second later at the latest),
//! before its turns, so a turn that ends an invocation still drops them.
//!
//! When a flush fails, its workflows' later turns fail too without being
//! written, until the runtime says it reloaded them (`forgive`): each was
//! made from memory that assumed the failed turn, and writing it would
//! put a delta on a state the store does not have.

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use stoa_engine::store::{Attempts, Commit, Error, Store};
use stoa_engine::workflow::TurnOutput;
use stoa_engine::{InvocationId, WorkflowId};
use tokio::sync::oneshot;

enum Msg {
    Job(Box<Job>),
    /// Written with the next flush; nobody waits for it.
    Attempts(InvocationId, Attempts),
    /// The runtime reloaded this workflow from the store: take its turns again.
    Forgive(WorkflowId),
    /// Commit what is queued, then stop.
    Close,
}

struct Job {
    workflow: WorkflowId,
    output: TurnOutput,
    request_id: Option<String>,
    done: oneshot::Sender<Result<TurnOutput, Error>>,
}

/// A cheap handle; the thread ends at `close` (or when every handle is
/// dropped), after committing what was queued.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Msg>,
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Turns per flush at most: bounds the latency of the first turn of a batch.
const MAX_BATCH: usize = 4096;
/// How long attempt records of a failed flush wait for the next flush
/// before they are written by themselves.
const ATTEMPTS_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Files one message; `true` at `Close`.
fn sort(
    m: Msg,
    jobs: &mut Vec<Job>,
    attempts: &mut Vec<(InvocationId, Attempts)>,
    failed: &mut HashSet<WorkflowId>,
) -> bool {
    match m {
        Msg::Job(j) if failed.contains(&j.workflow) => {
            let why = "an earlier turn of this workflow failed to commit; it is reloaded from the store";
            let _ = j.done.send(Err(Error::Io(why.into())));
        }
        Msg::Job(j) => jobs.push(*j),
        Msg::Attempts(id, a) => attempts.push((id, a)),
        Msg::Forgive(wf) => {
            failed.remove(&wf);
        }
        Msg::Close => return true,
    }
    false
}

impl Committer {
    pub fn spawn(store: Arc<dyn Store>) -> (Committer, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<Msg>();
        let thread = std::thread::Builder::new()
            .name("stoa-committer".into())
            .spawn(move || {
                let mut closing = false;
                let mut failed: HashSet<WorkflowId> = HashSet::new();
                // Attempt records a failed flush could not write.
                let mut carried: Vec<(InvocationId, Attempts)> = Vec::new();
                while !closing {
                    let (mut jobs, mut attempts) = (Vec::new(), std::mem::take(&mut carried));
                    let first = if attempts.is_empty() {
                        rx.recv().ok()
                    } else {
                        match rx.recv_timeout(ATTEMPTS_RETRY) {
                            Ok(m) => Some(m),
                            Err(mpsc::RecvTimeoutError::Timeout) => None,
                            Err(mpsc::RecvTimeoutError::Disconnected) => Some(Msg::Close),
                        }
                    };
                    match first {
                        // With attempts carried over: one last try.
                        Some(Msg::Close) if attempts.is_empty() => break,
                        Some(m) => closing = sort(m, &mut jobs, &mut attempts, &mut failed),
                        None if attempts.is_empty() => break,
                        None => {}
                    }
                    while jobs.len() < MAX_BATCH && !closing {
                        match rx.try_recv() {
                            Ok(m) => closing = sort(m, &mut jobs, &mut attempts, &mut failed),
                            Err(_) => break,
                        }
                    }
                    let at_us = now_us();
                    for j in &mut jobs {
                        for e in &mut j.output.entries {
                            e.at_us = at_us;
                        }
                    }
                    let commits: Vec<Commit> = jobs
                        .iter()
                        .map(|j| Commit {
                            workflow: &j.workflow,
                            output: &j.output,
                            request_id: j.request_id.as_deref(),
                        })
                        .collect();
                    // Before the turns: a turn of this flush that ends an
                    // invocation also drops its attempts record.
                    let mut res = store.record_attempts(&attempts);
                    if res.is_ok() {
                        res = store.commit(&commits);
                    }
                    drop(commits);
                    if let Err(e) = &res {
                        tracing::error!(error = %e, turns = jobs.len(), "commit failed");
                        failed.extend(jobs.iter().map(|j| j.workflow.clone()));
                        carried = attempts;
                    }
                    for j in jobs {
                        let _ = j.done.send(res.clone().map(|()| j.output));
                    }
                }
            })
            .expect("spawn committer thread");
        (Committer { tx }, thread)
    }

    /// Queues a turn; the receiver resolves once it is durable.
    pub fn submit(
        &self,
        workflow: WorkflowId,
        output: TurnOutput,
        request_id: Option<String>,
    ) -> oneshot::Receiver<Result<TurnOutput, Error>> {
        let (done, rx) = oneshot::channel();
        if let Err(mpsc::SendError(Msg::Job(job))) =
            self.tx.send(Msg::Job(Box::new(Job { workflow, output, request_id, done })))
        {
            let _ = job.done.send(Err(Error::Io("the server is shutting down".into())));
        }
        rx
    }

    /// Records how far an invocation got, durably with the next flush.
    pub fn record_attempts(&self, id: InvocationId, attempts: Attempts) {
        let _ = self.tx.send(Msg::Attempts(id, attempts));
    }

    /// Takes turns of `workflow` again after a failed flush (see the
    /// module comment): send it once no turn made before the reload can
    /// still be queued.
    pub fn forgive(&self, workflow: WorkflowId) {
        let _ = self.tx.send(Msg::Forgive(workflow));
    }

    /// Commits what is queued, then stops the thread; later turns fail.
    pub fn close(&self) {
        let _ = self.tx.send(Msg::Close);
    }
}
