"""Reconnect delays: exponential, bounded, with jitter, so that workers cut
off by one server restart do not reconnect in lockstep (as the Rust SDK's
backoff.rs)."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    def __init__(self, low: float, high: float):
        self.low, self.high, self.step = low, max(low, high), low

    def next_delay(self) -> float:
        """Uniformly in [d/2, d] for the current step d ("equal jitter"), so a
        delay never collapses to zero and hammers a server coming up."""
        step = self.step
        self.step = min(self.step * 2, self.high)
        return step / 2 + random.uniform(0, step / 2)

    def reset(self) -> None:
        """After a session got as far as Welcome, the next break starts over."""
        self.step = self.low
