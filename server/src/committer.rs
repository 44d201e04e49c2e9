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
//!
//! The simulation runs the same loop as a task (`Committer::task`), with a
//! pause before each flush standing for its I/O, so that nothing runs on a
//! thread of its own and a run replays exactly.

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use stoa_engine::store::{Attempts, Commit, Error, Store};
use stoa_engine::workflow::TurnOutput;
use stoa_engine::{InvocationId, WorkflowId};
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::metrics::{CommitMetrics, Metrics};

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
    /// Its partition's epoch when the workflow was loaded (in a cluster).
    epoch: Option<u64>,
    done: oneshot::Sender<Result<TurnOutput, Error>>,
}

/// A cheap handle; the thread (or task) ends at `close` (or when every
/// handle is dropped), after committing what was queued.
#[derive(Clone)]
pub struct Committer {
    tx: Tx,
}

#[derive(Clone)]
enum Tx {
    Thread(mpsc::Sender<Msg>),
    #[cfg_attr(not(test), allow(dead_code))] // the simulation's
    Task(tokio::sync::mpsc::UnboundedSender<Msg>),
}

impl Tx {
    /// Hands the message back if the committer has stopped.
    fn send(&self, m: Msg) -> Result<(), Msg> {
        match self {
            Tx::Thread(tx) => tx.send(m).map_err(|e| e.0),
            Tx::Task(tx) => tx.send(m).map_err(|e| e.0),
        }
    }
}

/// How long a flush takes in the simulation (virtual time).
#[cfg_attr(not(test), allow(dead_code))]
pub type Pace = Arc<dyn Fn() -> Duration + Send + Sync>;

/// Turns per flush at most: bounds the latency of the first turn of a batch.
const MAX_BATCH: usize = 4096;
/// How long attempt records of a failed flush wait for the next flush
/// before they are written by themselves.
const ATTEMPTS_RETRY: Duration = Duration::from_secs(1);

/// The committer's state between flushes, whatever runs it.
struct Writer {
    store: Arc<dyn Store>,
    clock: Clock,
    /// Workflows whose turns are refused until forgiven.
    failed: HashSet<WorkflowId>,
    /// Attempt records a failed flush could not write.
    carried: Vec<(InvocationId, Attempts)>,
    jobs: Vec<Job>,
    attempts: Vec<(InvocationId, Attempts)>,
    closing: bool,
    metrics: CommitMetrics,
}

impl Writer {
    fn new(store: Arc<dyn Store>, clock: Clock, metrics: &Metrics) -> Writer {
        Writer {
            store,
            clock,
            failed: HashSet::new(),
            carried: Vec::new(),
            jobs: Vec::new(),
            attempts: Vec::new(),
            closing: false,
            metrics: metrics.commit(),
        }
    }

    /// Starts a batch: the attempt records carried over from a failed flush.
    fn begin(&mut self) {
        self.attempts = std::mem::take(&mut self.carried);
    }

    /// Files one message; `closing` is set at `Close`.
    fn sort(&mut self, m: Msg) {
        match m {
            Msg::Job(j) if self.failed.contains(&j.workflow) => {
                let why = "an earlier turn of this workflow failed to commit; it is reloaded from the store";
                let _ = j.done.send(Err(Error::Io(why.into())));
            }
            Msg::Job(j) => self.jobs.push(*j),
            Msg::Attempts(id, a) => self.attempts.push((id, a)),
            Msg::Forgive(wf) => {
                self.failed.remove(&wf);
            }
            Msg::Close => self.closing = true,
        }
    }

    fn full(&self) -> bool {
        self.jobs.len() >= MAX_BATCH || self.closing
    }

    /// Writes the batch in one flush and answers its turns.
    fn flush(&mut self) {
        let mut jobs = std::mem::take(&mut self.jobs);
        let mut attempts = std::mem::take(&mut self.attempts);
        // The record of an invocation that is no longer pending in the
        // store is dropped: written, it would outlive the invocation for
        // good. It ended in an earlier flush while the dispatcher retried
        // it: its outcome was applied once the store healed, or the turn
        // that ended it (a cancel) failed to commit as far as the server
        // knew, yet the store kept it. A read each; attempt records come
        // only from retries and lost workers.
        attempts.retain(|(id, _)| self.store.pending(id).unwrap_or(true));
        let at_us = self.clock.now_us();
        for j in &mut jobs {
            for e in &mut j.output.entries {
                e.at_us = at_us;
            }
        }
        if !jobs.is_empty() {
            self.metrics.batch.record(jobs.len() as f64);
        }
        let began = std::time::Instant::now();
        // Before the turns: a turn of this flush that ends an invocation
        // also drops its attempts record.
        let mut res = self.store.record_attempts(&attempts);
        while res.is_ok() {
            let commits: Vec<Commit> = jobs
                .iter()
                .map(|j| Commit {
                    workflow: &j.workflow,
                    output: &j.output,
                    request_id: j.request_id.as_deref(),
                    epoch: j.epoch,
                })
                .collect();
            res = self.store.commit(&commits);
            drop(commits);
            // Turns of partitions that moved away are refused, and nothing
            // was written: those fail, the others commit without them.
            let Err(Error::Fenced { workflows, .. }) = &res else { break };
            let moved: HashSet<&WorkflowId> = workflows.iter().collect();
            let (gone, kept): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| moved.contains(&j.workflow));
            if gone.is_empty() {
                // Nothing to take out: no progress to make.
                jobs = kept;
                break;
            }
            tracing::warn!(error = %res.as_ref().expect_err("fenced"), turns = gone.len(), "turns refused: their partition moved");
            for j in gone {
                self.failed.insert(j.workflow.clone());
                let _ = j.done.send(res.clone().map(|()| j.output));
            }
            jobs = kept;
            res = Ok(());
            if jobs.is_empty() {
                break;
            }
        }
        self.metrics.flush.record(began.elapsed().as_secs_f64());
        if let Err(e) = &res {
            self.metrics.failures.increment(1);
            tracing::error!(error = %e, turns = jobs.len(), "commit failed");
            self.failed.extend(jobs.iter().map(|j| j.workflow.clone()));
            self.carried = attempts;
        }
        for j in jobs {
            let _ = j.done.send(res.clone().map(|()| j.output));
        }
    }
}

impl Committer {
    /// The committer on a thread of its own, as the server runs it.
    pub fn spawn(store: Arc<dyn Store>, clock: Clock, metrics: &Metrics) -> (Committer, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<Msg>();
        let mut w = Writer::new(store, clock, metrics);
        let thread = std::thread::Builder::new()
            .name("stoa-committer".into())
            .spawn(move || {
                while !w.closing {
                    w.begin();
                    let first = if w.attempts.is_empty() {
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
                        Some(Msg::Close) if w.attempts.is_empty() => break,
                        Some(m) => w.sort(m),
                        None if w.attempts.is_empty() => break,
                        None => {}
                    }
                    while !w.full() {
                        match rx.try_recv() {
                            Ok(m) => w.sort(m),
                            Err(_) => break,
                        }
                    }
                    w.flush();
                }
            })
            .expect("spawn committer thread");
        (Committer { tx: Tx::Thread(tx) }, thread)
    }

    /// The same committer as a future to run on a task (the simulation):
    /// each flush first waits the pause `pace` gives.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn task(
        store: Arc<dyn Store>,
        clock: Clock,
        pace: Pace,
    ) -> (Committer, impl std::future::Future<Output = ()> + Send + 'static) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Msg>();
        let mut w = Writer::new(store, clock, &Metrics::off());
        let run = async move {
            while !w.closing {
                w.begin();
                let first = if w.attempts.is_empty() {
                    rx.recv().await
                } else {
                    match tokio::time::timeout(ATTEMPTS_RETRY, rx.recv()).await {
                        Ok(Some(m)) => Some(m),
                        Err(_) => None,
                        Ok(None) => Some(Msg::Close),
                    }
                };
                match first {
                    Some(Msg::Close) if w.attempts.is_empty() => break,
                    Some(m) => w.sort(m),
                    None if w.attempts.is_empty() => break,
                    None => {}
                }
                tokio::time::sleep(pace()).await;
                while !w.full() {
                    match rx.try_recv() {
                        Ok(m) => w.sort(m),
                        Err(_) => break,
                    }
                }
                w.flush();
            }
        };
        (Committer { tx: Tx::Task(tx) }, run)
    }

    /// Queues a turn; the receiver resolves once it is durable.
    pub fn submit(
        &self,
        workflow: WorkflowId,
        output: TurnOutput,
        request_id: Option<String>,
        epoch: Option<u64>,
    ) -> oneshot::Receiver<Result<TurnOutput, Error>> {
        let (done, rx) = oneshot::channel();
        let job = Job { workflow, output, request_id, epoch, done };
        if let Err(Msg::Job(job)) = self.tx.send(Msg::Job(Box::new(job))) {
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
