"""What a handler raises to fail an attempt, and what the worker raises when
the server refuses it for good."""

from __future__ import annotations

__all__ = ["Failure", "Refused"]


class Failure(Exception):
    """A handler's failure of one attempt.

    `Failure(msg)` is retryable: the server may run another attempt, as the
    function's retry policy allows. `Failure.fatal(msg)` is not: the
    workflow's `error` section runs at once. `Failure.not_started(msg)` says
    the handler did none of the work: the server offers the same attempt
    again (elsewhere if it can), and it counts neither as an attempt nor
    against the retry policy.

    Any other exception a handler raises is a retryable failure, as a panic
    is in the Rust SDK.
    """

    def __init__(self, message: str, retryable: bool = True, not_started: bool = False):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self._not_started = not_started

    @property
    def is_not_started(self) -> bool:
        return self._not_started

    @classmethod
    def fatal(cls, message: str) -> "Failure":
        """A failure no other attempt can fix (bad arguments, a refused input)."""
        return cls(message, retryable=False)

    @classmethod
    def not_started(cls, message: str) -> "Failure":
        """The handler did none of the work; the attempt does not count."""
        return cls(message, not_started=True)

    def __repr__(self) -> str:
        kind = "not_started" if self._not_started else ("retryable" if self.retryable else "fatal")
        return f"Failure({self.message!r}, {kind})"


class Refused(Exception):
    """The server refused the worker for good (bad token, a Hello it does not
    accept): reconnecting with the same settings cannot help."""

    def __init__(self, code: str, details: str):
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details
