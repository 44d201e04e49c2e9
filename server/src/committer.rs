//! Group commit: one thread owns the store's write path; turns from many
//! workflows queue up while a flush runs, and the next flush takes them all.
//! A turn is acknowledged only after the flush that made it durable; the
//! turns of a failed flush get its error. Attempt records of a failed flush
//! are kept and written with the next one (a second later at the latest),
//! before its turns, so a turn that ends an invocation still drops them.

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

impl Committer {
    pub fn spawn(store: Arc<dyn Store>) -> (Committer, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<Msg>();
        let thread = std::thread::Builder::new()
            .name("stoa-committer".into())
            .spawn(move || {
                let mut closing = false;
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
                        Some(Msg::Job(j)) => jobs.push(*j),
                        Some(Msg::Attempts(id, a)) => attempts.push((id, a)),
                        // With attempts carried over: one last try.
                        Some(Msg::Close) if !attempts.is_empty() => closing = true,
                        Some(Msg::Close) => break,
                        None if attempts.is_empty() => break,
                        None => {}
                    }
                    while jobs.len() < MAX_BATCH && !closing {
                        match rx.try_recv() {
                            Ok(Msg::Job(j)) => jobs.push(*j),
                            Ok(Msg::Attempts(id, a)) => attempts.push((id, a)),
                            Ok(Msg::Close) => {
                                closing = true;
                                break;
                            }
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

    /// Commits what is queued, then stops the thread; later turns fail.
    pub fn close(&self) {
        let _ = self.tx.send(Msg::Close);
    }
}
