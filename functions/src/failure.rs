//! `Failure`: how a handler says that it did not succeed, and whether
//! another attempt may.

use std::fmt;

use stoa_proto::v1 as proto;

/// A handler's failure: a message and whether a retry may succeed. The
/// server retries a retryable failure per the pack's retry policy; a fatal one
/// goes straight to the rule's `error` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    message: String,
    retryable: bool,
    not_started: bool,
}

impl Failure {
    /// A failure that another attempt may not repeat (a timeout, a busy
    /// dependency).
    pub fn retryable(message: impl Into<String>) -> Failure {
        Failure { message: message.into(), retryable: true, not_started: false }
    }

    /// A failure that every attempt would repeat (bad input, a missing file).
    pub fn fatal(message: impl Into<String>) -> Failure {
        Failure { message: message.into(), retryable: false, not_started: false }
    }

    /// The worker did not start the work (a local resource is missing, it
    /// is overloaded): the server offers the same attempt again, to another
    /// worker if it can, and it counts neither as an attempt nor against the
    /// retry policy. Only correct if nothing of the work was done.
    pub fn not_started(message: impl Into<String>) -> Failure {
        Failure { message: message.into(), retryable: true, not_started: true }
    }

    /// Whether this is a [`Failure::not_started`].
    pub fn is_not_started(&self) -> bool {
        self.not_started
    }

    /// The message, as the rule's `error.message` will see it.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    pub(crate) fn into_proto(self) -> proto::Failure {
        let kind = if self.not_started { proto::FailureKind::NotStarted } else { proto::FailureKind::Failed };
        proto::Failure { message: self.message, retryable: self.retryable, kind: kind.into() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match (self.not_started, self.retryable) {
            (true, _) => "not started",
            (false, true) => "retryable",
            (false, false) => "fatal",
        };
        write!(f, "{kind}: {}", self.message)
    }
}

/// Any error converts with `?` into a *retryable* failure carrying its chain
/// of causes: an error the handler did not foresee is more often transient
/// (I/O, a dependency) than a verdict on the input, and the pack's retry
/// policy bounds the cost of being wrong. Return `Failure::fatal` to say
/// otherwise.
///
/// `Failure` deliberately does not implement `std::error::Error`, or this
/// blanket conversion would overlap with `From<T> for T`.
impl<E: std::error::Error + Send + Sync + 'static> From<E> for Failure {
    fn from(error: E) -> Failure {
        Failure::retryable(crate::error::chain(&error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_become_retryable_with_their_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let failure = Failure::from(Outer(std::io::Error::other("inner")));
        assert_eq!(failure, Failure::retryable("outer: inner"));
    }

    #[test]
    fn maps_to_the_wire() {
        let wire = Failure::fatal("no such file").into_proto();
        assert_eq!(wire, proto::Failure { message: "no such file".into(), retryable: false, kind: 0 });
        let wire = Failure::not_started("draining").into_proto();
        assert_eq!(wire.kind(), proto::FailureKind::NotStarted);
        assert_eq!(Failure::not_started("draining").to_string(), "not started: draining");
        assert_eq!(Failure::retryable("busy").to_string(), "retryable: busy");
    }
}
