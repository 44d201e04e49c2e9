//! The dispatcher interface between workflows and function workers, and the
//! in-process dispatcher that answers from mocks (for `stoa test` and
//! `stoa run`). The server's dispatcher speaks gRPC to real workers.

use std::collections::BTreeMap;

use stoa_rules::testcase::{after_ms, partial_match, Answer, Mock};
use stoa_rules::Value;

use crate::fact::InvocationId;
use crate::workflow::{ErrorKind, FailedAttempt, Invocation, Outcome};

/// Where invocations go. Outcomes come back after retries, as inputs.
pub trait Dispatcher {
    /// `inv` was made (and committed) at `now_ms`.
    fn dispatch(&mut self, inv: Invocation, now_ms: u64);
    /// The invocation is no longer awaited; drop it if not yet run.
    fn cancel(&mut self, id: &InvocationId);
    /// The next outcome ready by `now_ms`, if any.
    fn next_outcome(&mut self, now_ms: u64) -> Option<(Invocation, Outcome)>;
    /// When the first outcome not ready yet will be.
    fn next_due(&self) -> Option<u64>;
}

/// Answers invocations from mocks, in the order they are ready (then in
/// the order they were dispatched), applying each function's timeouts and
/// retry policy on the caller's clock: an answer `after` some time, or an
/// attempt timing out, moves its ready time on.
pub struct MockDispatcher {
    mocks: Vec<(Mock, Vec<Answer>, usize)>,
    /// Outcomes by (ready at, dispatch order).
    ready: BTreeMap<(u64, u64), (Invocation, Outcome)>,
    seq: u64,
    /// Calls no mock answered: `(function, args)`.
    pub unmocked: Vec<(String, Value)>,
}

impl MockDispatcher {
    pub fn new(mocks: &[Mock]) -> MockDispatcher {
        MockDispatcher {
            mocks: mocks.iter().map(|m| (m.clone(), m.answers(), 0)).collect(),
            ready: BTreeMap::new(),
            seq: 0,
            unmocked: Vec::new(),
        }
    }

    /// The mock that answers `inv`, by index.
    fn mock_for(&self, inv: &Invocation) -> Option<usize> {
        // Mocks with argument patterns win over catch-all ones.
        self.mocks
            .iter()
            .enumerate()
            .filter(|(_, (m, _, _))| m.function.get_ref() == &inv.function)
            .filter(|(_, (m, _, _))| m.args.as_ref().is_none_or(|a| partial_match(a, &inv.args)))
            .max_by_key(|(i, (m, _, _))| (m.args.is_some(), usize::MAX - i))
            .map(|(i, _)| i)
    }

    fn answer(&mut self, pick: usize) -> Answer {
        let (_, answers, next) = &mut self.mocks[pick];
        let a = answers[(*next).min(answers.len() - 1)].clone();
        *next += 1;
        a
    }

    /// Runs every attempt of `inv` from `now`: the outcome and when it is
    /// ready, or `None` if it never ends (a mock that never answers, with
    /// no timeout to end its attempts).
    fn settle(&mut self, inv: &Invocation, now: u64) -> Option<(u64, Outcome)> {
        let Some(pick) = self.mock_for(inv) else {
            self.unmocked.push((inv.function.clone(), inv.args.clone()));
            let message = format!("no mock answers `{}` with args {}", inv.function, inv.args);
            let outcome =
                Outcome::Error { kind: ErrorKind::Failed, message, attempts: 1, retryable: false, failed: vec![] };
            return Some((now, outcome));
        };
        let (never, heartbeats) = (self.mocks[pick].0.never, self.mocks[pick].0.heartbeats);
        // What ends an attempt that runs too long: its start-to-close
        // timeout, or its heartbeat timeout if the worker stalls.
        let limits = [(inv.timeout_ms, "start-to-close"), (if heartbeats { 0 } else { inv.heartbeat_ms }, "heartbeat")];
        let limit = limits.into_iter().filter(|(ms, _)| *ms > 0).min_by_key(|(ms, _)| *ms);
        let max = inv.retry.max_attempts.max(1);
        let mut at = now;
        let mut attempt = 0;
        // The attempts that failed and were tried again, as the server
        // records them on the timeline.
        let mut failed: Vec<FailedAttempt> = Vec::new();
        loop {
            attempt += 1;
            let answer = if never { None } else { Some(self.answer(pick)) };
            let runs = answer.as_ref().map(|a| after_ms(a.after.as_deref()));
            let outcome = match (runs, limit) {
                (runs, Some((ms, which))) if runs.is_none_or(|r| r > ms) => {
                    at = at.saturating_add(ms);
                    // The server's words for it.
                    let message = format!("attempt {attempt} ran past its {which} timeout");
                    Outcome::Error {
                        kind: ErrorKind::Timeout,
                        message,
                        attempts: attempt,
                        retryable: true,
                        failed: vec![],
                    }
                }
                (None, _) => return None,
                (Some(runs), _) => {
                    at = at.saturating_add(runs);
                    let answer = answer.expect("runs implies an answer");
                    match answer.error {
                        None => Outcome::Ok {
                            value: answer.returns.unwrap_or(Value::Null),
                            attempts: attempt,
                            failed: vec![],
                        },
                        Some(e) => Outcome::Error {
                            kind: ErrorKind::Failed,
                            message: e.message,
                            attempts: attempt,
                            retryable: e.retryable,
                            failed: vec![],
                        },
                    }
                }
            };
            // Backoffs take no time here: a test's clock moves only where
            // its steps say, and a call retried at once reads the same.
            match outcome {
                Outcome::Error { retryable: true, message, .. } if attempt < max => {
                    failed.push(FailedAttempt { attempt, at_ms: at, error: message });
                }
                mut outcome => {
                    match &mut outcome {
                        Outcome::Ok { failed: f, .. } | Outcome::Error { failed: f, .. } => *f = failed,
                    }
                    return Some((at, outcome));
                }
            }
        }
    }
}

impl Dispatcher for MockDispatcher {
    fn dispatch(&mut self, inv: Invocation, now_ms: u64) {
        if let Some((at, outcome)) = self.settle(&inv, now_ms) {
            self.seq += 1;
            self.ready.insert((at, self.seq), (inv, outcome));
        }
    }

    fn cancel(&mut self, id: &InvocationId) {
        self.ready.retain(|_, (i, _)| &i.id != id);
    }

    fn next_outcome(&mut self, now_ms: u64) -> Option<(Invocation, Outcome)> {
        let (&key, _) = self.ready.iter().next().filter(|((at, _), _)| *at <= now_ms)?;
        self.ready.remove(&key)
    }

    fn next_due(&self) -> Option<u64> {
        self.ready.keys().next().map(|(at, _)| *at)
    }
}
