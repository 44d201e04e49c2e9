"""`Context`: what a handler knows about the invocation it runs, and its way
to keep the invocation's lease alive."""

from __future__ import annotations

import time
from typing import Callable, Optional

__all__ = ["Context"]


class Context:
    """The invocation a handler runs.

    Safe to use from the handler's thread (sync handlers) or task (async
    handlers). `heartbeat()` never blocks; when the session is gone there is
    no one to tell, and it does nothing.
    """

    __slots__ = (
        "invocation_id",
        "function",
        "attempt",
        "workflow_id",
        "priority",
        "timeout",
        "deadline",
        "traceparent",
        "_beat",
        "_cancelled",
    )

    def __init__(
        self,
        invocation_id: str,
        function: str,
        attempt: int = 1,
        *,
        workflow_id: str = "",
        priority: int = 0,
        timeout: Optional[float] = None,
        traceparent: str = "",
        heartbeat: Optional[Callable[[], None]] = None,
    ):
        #: The invocation's stable id (the same across attempts): the key for
        #: making side effects idempotent.
        self.invocation_id: str = invocation_id
        #: The function called, e.g. ``media.encode``.
        self.function: str = function
        #: The attempt, 1 for the first; it continues across server restarts.
        self.attempt: int = attempt
        #: The workflow whose rule made the call.
        self.workflow_id: str = workflow_id
        #: The invocation's priority (higher first).
        self.priority: int = priority
        #: Seconds this attempt may take, if the server set a limit.
        self.timeout: Optional[float] = timeout
        #: When this attempt's time runs out, on the `time.monotonic()` clock,
        #: measured from its arrival here; None without a limit.
        self.deadline: Optional[float] = None if timeout is None else time.monotonic() + timeout
        #: W3C trace context of the server's dispatch span ("" if untraced).
        #: The SDK's span for the call is already its child.
        self.traceparent: str = traceparent
        self._beat = heartbeat
        self._cancelled = False

    @classmethod
    def detached(cls, function: str, invocation_id: str = "test", attempt: int = 1, **fields) -> "Context":
        """A context connected to no server, for calling handlers in unit
        tests; its heartbeats go nowhere."""
        return cls(invocation_id, function, attempt, **fields)

    def heartbeat(self) -> None:
        """Tells the server this attempt is alive, renewing its lease. The SDK
        also heartbeats by itself, at a third of the invocation's heartbeat
        timeout, while the handler runs."""
        if self._beat is not None and not self._cancelled:
            self._beat()

    @property
    def cancelled(self) -> bool:
        """True once the server no longer wants the answer (a Cancel, a newer
        attempt, or a lost session). An async handler is also cancelled
        (`asyncio.CancelledError`); a sync one cannot be interrupted, and a
        long one should check this and return."""
        return self._cancelled

    def remaining(self) -> Optional[float]:
        """Seconds left before the deadline (may be negative), or None."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def __repr__(self) -> str:
        return f"Context({self.function} {self.invocation_id} attempt {self.attempt})"
