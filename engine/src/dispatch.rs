//! The dispatcher interface between workflows and function workers, and the
//! in-process dispatcher that answers from mocks (for `stoa test` and
//! `stoa run`). The server's dispatcher speaks gRPC to real workers.

use std::collections::VecDeque;

use stoa_rules::testcase::{partial_match, Answer, Mock};
use stoa_rules::Value;

use crate::fact::InvocationId;
use crate::workflow::{ErrorKind, Invocation, Outcome};

/// Where invocations go. Outcomes come back after retries, as inputs.
pub trait Dispatcher {
    fn dispatch(&mut self, inv: Invocation);
    /// The invocation is no longer awaited; drop it if not yet run.
    fn cancel(&mut self, id: &InvocationId);
    /// The next finished invocation, if any.
    fn next_outcome(&mut self) -> Option<(Invocation, Outcome)>;
}

/// Answers invocations in the order they were dispatched, from mocks,
/// applying each function's retry policy (on virtual time: no waiting).
pub struct MockDispatcher {
    mocks: Vec<(Mock, Vec<Answer>, usize)>,
    queue: VecDeque<Invocation>,
    /// Calls no mock answered: `(function, args)`.
    pub unmocked: Vec<(String, Value)>,
}

impl MockDispatcher {
    pub fn new(mocks: &[Mock]) -> MockDispatcher {
        MockDispatcher {
            mocks: mocks.iter().map(|m| (m.clone(), m.answers(), 0)).collect(),
            queue: VecDeque::new(),
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

    fn answer(&mut self, inv: &Invocation) -> Option<Answer> {
        let pick = self.mock_for(inv)?;
        let (_, answers, next) = &mut self.mocks[pick];
        let a = answers[(*next).min(answers.len() - 1)].clone();
        *next += 1;
        Some(a)
    }
}

impl Dispatcher for MockDispatcher {
    fn dispatch(&mut self, inv: Invocation) {
        self.queue.push_back(inv);
    }

    fn cancel(&mut self, id: &InvocationId) {
        self.queue.retain(|i| &i.id != id);
    }

    fn next_outcome(&mut self) -> Option<(Invocation, Outcome)> {
        // A call of a mock that never answers stays waiting: it leaves the
        // queue unanswered (the workflow keeps waiting on it).
        let inv = loop {
            let inv = self.queue.pop_front()?;
            if !self.mock_for(&inv).is_some_and(|m| self.mocks[m].0.never) {
                break inv;
            }
        };
        let max = inv.retry.max_attempts.max(1);
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            let Some(answer) = self.answer(&inv) else {
                self.unmocked.push((inv.function.clone(), inv.args.clone()));
                break Outcome::Error {
                    kind: ErrorKind::Failed,
                    message: format!("no mock answers `{}` with args {}", inv.function, inv.args),
                    attempts: attempt,
                    retryable: false,
                    failed: vec![],
                };
            };
            match answer.error {
                None => {
                    break Outcome::Ok {
                        value: answer.returns.unwrap_or(Value::Null),
                        attempts: attempt,
                        failed: vec![],
                    }
                }
                Some(e) if e.retryable && attempt < max => continue,
                Some(e) => {
                    break Outcome::Error {
                        kind: ErrorKind::Failed,
                        message: e.message,
                        attempts: attempt,
                        retryable: e.retryable,
                        failed: vec![],
                    }
                }
            }
        };
        Some((inv, outcome))
    }
}
