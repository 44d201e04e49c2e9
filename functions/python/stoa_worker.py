"""A tiny SDK for Stoa function workers in Python.

A worker opens a `stoa.v1.Workers/Session` stream, says `Hello` (the functions
it serves and how many invocations it takes at once), waits for `Welcome`,
then runs the invocations the server sends in a thread pool and answers each
with an `InvocationResult` on the same stream. When the stream breaks, or the
server is not up, it reconnects with exponential backoff and jitter; work in
flight on a broken session is dropped, since the server hands it out again
when its lease runs out.

With a cluster of servers (on PostgreSQL), each server leases a worker only
the work of the workflows it owns, and names the cluster's members in
`Welcome` and in `Members` messages: the worker holds a session to each
(`max_in_flight` bounds each session), and lets go of a member that left once
its session fails.

    worker = Worker("http://127.0.0.1:7233", token="t-secret", max_in_flight=8)

    @worker.function("media.encode", args={"uri": str, "codec": str, "index": int})
    def encode(args, ctx):
        ctx.heartbeat()
        return {"uri": args["uri"] + ".mp4"}

    worker.run(stop_event)  # returns once stop_event is set and work drained

Needs the stubs that setup.sh generates into generated/.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import sys
import threading
import time
from typing import Any, Callable, Dict, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "generated"))

import grpc  # noqa: E402
from stoa.v1 import stoa_pb2, stoa_pb2_grpc  # noqa: E402

from stoa_tracing import Tracing  # noqa: E402

__all__ = ["Context", "Failure", "Refused", "Worker"]

SDK_NAME = "stoa-python-sdk/0.1"
WELCOME_TIMEOUT = 10.0  # seconds the server has to answer Hello
CLOSE_TIMEOUT = 5.0  # seconds a closing session waits for the server's end
# Statuses that reconnecting with the same token and Hello cannot fix.
REFUSED_CODES = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
)

log = logging.getLogger("stoa_worker")


class Failure(Exception):
    """A handler's failure; `retryable` says whether another attempt may
    succeed. `Failure(msg)` is retryable, `Failure.fatal(msg)` is not. Any
    other exception a handler raises becomes a retryable failure.
    `Failure.not_started(msg)` says the work was not started at all: the
    server offers the same attempt again, and it does not count.
    """

    def __init__(self, message: str, retryable: bool = True, not_started: bool = False):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.not_started = not_started

    @classmethod
    def fatal(cls, message: str) -> "Failure":
        return cls(message, retryable=False)

    @classmethod
    def not_started(cls, message: str) -> "Failure":
        return cls(message, not_started=True)


class Refused(Exception):
    """The server refused the worker for good (bad token, bad Hello)."""


class Context:
    """The invocation a handler runs, and its way to renew the lease."""

    def __init__(self, invocation, session: "_Session"):
        self.invocation_id: str = invocation.id
        self.function: str = invocation.function
        self.attempt: int = invocation.attempt
        self.workflow_id: str = invocation.workflow_id
        self.priority: int = invocation.priority
        self.timeout: Optional[float] = invocation.timeout_ms / 1000 if invocation.timeout_ms else None
        # W3C trace context of the server's dispatch span ("" if untraced).
        self.traceparent: str = invocation.traceparent
        self._session = session
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        """True once the server no longer wants the answer; a long handler
        should check it and stop (Python threads cannot be aborted)."""
        return self._cancelled.is_set()

    def heartbeat(self) -> None:
        """Tells the server this attempt is alive. The SDK also heartbeats by
        itself when the invocation asks for it."""
        self._session.send_heartbeat(self.invocation_id, self.attempt)


class _Function:
    def __init__(self, name: str, handler: Callable, args: Optional[Dict[str, type]], raw: bool):
        self.name = name
        self.handler = handler
        self.args = args
        self.raw = raw

    def call(self, args_json: str, ctx: Context) -> str:
        """Runs the handler; returns the JSON result or raises Failure."""
        if self.raw:
            return self.handler(args_json, ctx)
        try:
            args = json.loads(args_json)
        except ValueError as error:
            raise Failure.fatal(f"bad arguments for {self.name}: {error}") from None
        if self.args is not None:
            _check_args(self.name, args, self.args)
        value = self.handler(args, ctx)
        try:
            return json.dumps(value)
        except (TypeError, ValueError) as error:
            raise Failure.fatal(f"could not encode the result: {error}") from None


def _check_args(function: str, args: Any, spec: Dict[str, type]) -> None:
    """Fails fatally, naming the field, when arguments miss the declared shape."""
    if not isinstance(args, dict):
        raise Failure.fatal(f"bad arguments for {function}: expected an object, got {type(args).__name__}")
    for field, kind in spec.items():
        if field not in args:
            raise Failure.fatal(f"bad arguments for {function}: missing field `{field}`")
        value = args[field]
        # JSON true is not a number, though Python's bool is an int.
        ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise Failure.fatal(
                f"bad arguments for {function}: field `{field}`: expected {kind.__name__}, got {type(value).__name__}"
            )


class _Backoff:
    """Exponential delays with equal jitter, so that workers cut off together
    do not reconnect in lockstep."""

    def __init__(self, low: float, high: float):
        self.low, self.high, self.step = low, max(low, high), low

    def next_delay(self) -> float:
        step = self.step
        self.step = min(self.step * 2, self.high)
        return step / 2 + random.uniform(0, step / 2)

    def reset(self) -> None:
        self.step = self.low


class Worker:
    """Serves registered functions to a Stoa server until stopped."""

    def __init__(
        self,
        server: str,
        token: str,
        name: str = SDK_NAME,
        max_in_flight: int = 4,
        backoff: tuple = (0.1, 10.0),
        drain_timeout: Optional[float] = 60.0,
        service_name: str = "stoa-worker-python",
    ):
        if not token:
            raise ValueError("a token is required")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.target = _target(server)
        self.token = token
        self.name = name
        self.max_in_flight = max_in_flight
        self.backoff = backoff
        self.drain_timeout = drain_timeout
        self.functions: Dict[str, _Function] = {}
        self._members_lock = threading.Lock()
        self._latest_members: list = []
        self._member_threads: Dict[str, threading.Thread] = {}
        # Function spans, exported when OTEL_EXPORTER_OTLP_ENDPOINT is set.
        self.tracing = Tracing(service_name)

    def function(self, name: str, args: Optional[Dict[str, type]] = None, raw: bool = False):
        """Registers a handler `handler(args, ctx)`. With `args` (field -> type)
        the arguments are checked first, and a mismatch is a fatal failure
        naming the field. With `raw=True` the handler gets and returns JSON
        text unchanged."""

        def register(handler: Callable) -> Callable:
            if not name:
                raise ValueError("a function name is empty")
            if name in self.functions:
                raise ValueError(f"function `{name}` registered twice")
            self.functions[name] = _Function(name, handler, args, raw)
            return handler

        return register

    def run(self, stop: threading.Event) -> None:
        """Serves until `stop` is set, then answers the work in flight and
        closes. Raises Refused if the server refuses the worker for good.

        The sessions run on a thread of their own; this thread only waits, so
        that signal handlers (which set `stop`) run promptly."""
        if not self.functions:
            raise ValueError("no function registered")
        outcome: Dict[str, BaseException] = {}

        def loop() -> None:
            try:
                self._loop(stop)
            except BaseException as error:  # handed to the caller below
                outcome["error"] = error

        thread = threading.Thread(target=loop, name="stoa-worker", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.2)
        while True:
            with self._members_lock:
                others = [t for t in self._member_threads.values() if t.is_alive()]
            if not others:
                break
            for t in others:
                t.join(0.2)
        self.tracing.shutdown()
        if "error" in outcome:
            raise outcome["error"]

    def _announce(self, addresses, stop: threading.Event) -> None:
        """A server named the cluster's members: a session loop starts for
        each one not served yet."""
        with self._members_lock:
            self._latest_members = list(addresses)
            for target in addresses:
                running = self._member_threads.get(target)
                if target == self.target or (running is not None and running.is_alive()) or stop.is_set():
                    continue
                log.info("opening a session to %s, another server of the cluster", target)

                def member(target=target) -> None:
                    try:
                        self._loop(stop, target, lambda: target in self._latest_members)
                    except Refused as error:
                        log.error("%s refused the worker: %s", target, error)

                thread = threading.Thread(target=member, name=f"stoa-worker-{target}", daemon=True)
                self._member_threads[target] = thread
                thread.start()

    def _loop(self, stop: threading.Event, target: Optional[str] = None, wanted=lambda: True) -> None:
        target = target or self.target
        backoff = _Backoff(*self.backoff)
        # One bound for the session loop's life: a handler of a broken session
        # still holds its slot until it returns, so a new session cannot push
        # the number running past max_in_flight.
        slots = threading.BoundedSemaphore(self.max_in_flight)
        while not stop.is_set():
            session = _Session(self, target, slots, stop, backoff)
            try:
                session.run()
                return
            except grpc.RpcError as error:
                if error.code() in REFUSED_CODES:
                    raise Refused(f"{error.code().name}: {error.details()}") from None
                reason = f"{error.code().name}: {error.details()}"
            except _SessionLost as error:
                reason = str(error)
            if stop.is_set():
                log.warning("session lost during shutdown: %s", reason)
                return
            if not wanted():
                log.info("%s left the cluster: no more sessions with it", target)
                return
            delay = backoff.next_delay()
            log.warning("no session with the server (%s); retrying in %.2fs", reason, delay)
            stop.wait(delay)


class _SessionLost(Exception):
    pass


_CLOSE = object()  # ends the request stream


class _Session:
    """One session: its request queue, its in-flight invocations, its threads."""

    def __init__(
        self, worker: Worker, target: str, slots: threading.BoundedSemaphore, stop: threading.Event, backoff: _Backoff
    ):
        self.worker = worker
        self.target = target
        self.slots = slots
        self.stop = stop
        self.backoff = backoff
        self.outbound: "queue.Queue[Any]" = queue.Queue()
        self.lock = threading.Condition()
        self.in_flight: Dict[str, list] = {}  # id -> [ctx, heartbeat period, next beat]
        self.draining = False
        # Set when the server asked for the drain (the worker reconnects after).
        self.server_drain = threading.Event()
        self.dead = threading.Event()

    def requests(self):
        yield stoa_pb2.WorkerMessage(
            hello=stoa_pb2.Hello(
                functions=list(self.worker.functions),
                max_in_flight=self.worker.max_in_flight,
                name=self.worker.name,
            )
        )
        while True:
            message = self.outbound.get()
            if message is _CLOSE:
                return
            yield message

    def run(self) -> None:
        options = [
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        with grpc.insecure_channel(self.target, options=options) as channel:
            stub = stoa_pb2_grpc.WorkersStub(channel)
            call = stub.Session(self.requests(), metadata=[("authorization", f"Bearer {self.worker.token}")])
            try:
                self._serve(call)
            finally:
                # However the session ended: stop its threads, drop its work
                # (the server redelivers it), and end the request stream so
                # grpc's sending thread does not wait forever.
                self.dead.set()
                with self.lock:
                    for ctx, _, _ in self.in_flight.values():
                        ctx._cancelled.set()
                    self.in_flight.clear()
                    self.lock.notify_all()
                self.outbound.put(_CLOSE)

    def _serve(self, call) -> None:
        # The stream API has no per-message timeout: a timer cancels the call
        # if Welcome is late.
        watchdog = threading.Timer(WELCOME_TIMEOUT, call.cancel)
        watchdog.start()
        try:
            first = next(call, None)
        finally:
            watchdog.cancel()
        if first is None or first.WhichOneof("msg") != "welcome":
            raise _SessionLost(f"expected Welcome, got {first}")
        self.backoff.reset()
        if first.welcome.members:
            self.worker._announce(list(first.welcome.members), self.stop)
        log.info(
            "session %s with %s open, serving %s, %d at once",
            first.welcome.session_id,
            self.target,
            list(self.worker.functions),
            first.welcome.max_in_flight,
        )
        for target in (self._heartbeats, self._drain_on_stop):
            threading.Thread(target=target, args=(call,), daemon=True).start()
        try:
            for message in call:
                self._received(message)
        except grpc.RpcError as error:
            # A cut after the close timeout is still a finished shutdown.
            if not (self.draining and error.code() == grpc.StatusCode.CANCELLED):
                raise
        if not self.draining:
            raise _SessionLost("the server ended the session")
        log.info("session closed")
        if self.server_drain.is_set() and not self.stop.is_set():
            raise _SessionLost("drained at the server's request")

    def _received(self, message) -> None:
        kind = message.WhichOneof("msg")
        if kind == "invocations":
            for invocation in message.invocations.invocations:
                self._start(invocation)
        elif kind == "cancel":
            cancel = message.cancel
            with self.lock:
                entry = self.in_flight.get(cancel.invocation_id)
                # Another attempt than the running one: that one goes on.
                if entry is not None and cancel.attempt in (0, entry[0].attempt):
                    del self.in_flight[cancel.invocation_id]
                else:
                    entry = None
                self.lock.notify_all()
            if entry is not None:
                entry[0]._cancelled.set()
        elif kind == "rejected":
            rejected = message.rejected
            log.warning(
                "server rejected a message for %s attempt %d (%s): %s",
                rejected.invocation_id,
                rejected.attempt,
                stoa_pb2.RejectedCode.Name(rejected.code),
                rejected.message,
            )
        elif kind == "drain":
            log.info("the server asks for a drain: %s", message.drain.reason)
            self.server_drain.set()
        elif kind == "members":
            self.worker._announce(list(message.members.addresses), self.stop)
        else:
            log.debug("ignored a %s message", kind)

    def _start(self, invocation) -> None:
        function = self.worker.functions.get(invocation.function)
        if self.draining or self.server_drain.is_set():
            # Refusing at once lets the server give it to another worker now,
            # as the same attempt, instead of after its lease runs out.
            return self._answer(invocation.id, invocation.attempt, Failure.not_started("the worker is draining"))
        if function is None:
            failure = Failure.not_started(f"this worker does not serve `{invocation.function}`")
            return self._answer(invocation.id, invocation.attempt, failure)
        ctx = Context(invocation, self)
        period = invocation.heartbeat_timeout_ms / 3000 if invocation.heartbeat_timeout_ms else None
        with self.lock:
            previous = self.in_flight.pop(invocation.id, None)
            if previous is not None:  # a newer attempt: only its answer counts
                previous[0]._cancelled.set()
            if len(self.in_flight) >= self.worker.max_in_flight:
                log.warning("the server sent more than max_in_flight; %s waits for a slot", invocation.id)
            next_beat = time.monotonic() + period if period else None
            self.in_flight[invocation.id] = [ctx, period, next_beat]
        # Daemon threads, not a pool: a handler that never returns must not
        # keep the process from exiting after the drain timeout.
        thread = threading.Thread(target=self._call, args=(function, invocation.args_json, ctx), daemon=True)
        thread.start()

    def _call(self, function: _Function, args_json: str, ctx: Context) -> None:
        with self.slots:
            if ctx.cancelled:
                outcome = None
            else:
                tracing = self.worker.tracing
                with tracing.function_span(ctx) as span:
                    try:
                        outcome = function.call(args_json, ctx)
                        tracing.outcome(span, "ok")
                    except Failure as failure:
                        outcome = failure
                        tracing.outcome(span, "retryable failure" if failure.retryable else "failure", failure.message)
                    except Exception as error:  # a bug in a handler fails one attempt, not the worker
                        log.warning("handler of %s raised %r", ctx.function, error)
                        outcome = Failure(f"handler raised {type(error).__name__}: {error}")
                        tracing.outcome(span, "failure", outcome.message)
        with self.lock:
            entry = self.in_flight.get(ctx.invocation_id)
            if entry is not None and entry[0] is ctx:
                del self.in_flight[ctx.invocation_id]
            self.lock.notify_all()
        if ctx.cancelled or self.dead.is_set():
            return
        self._answer(ctx.invocation_id, ctx.attempt, outcome)

    def _answer(self, invocation_id: str, attempt: int, outcome) -> None:
        if isinstance(outcome, Failure):
            result = stoa_pb2.InvocationResult(
                invocation_id=invocation_id,
                attempt=attempt,
                failure=stoa_pb2.Failure(
                    message=outcome.message,
                    retryable=outcome.retryable,
                    kind=stoa_pb2.FAILURE_KIND_NOT_STARTED if outcome.not_started else stoa_pb2.FAILURE_KIND_FAILED,
                ),
            )
        else:
            result = stoa_pb2.InvocationResult(invocation_id=invocation_id, attempt=attempt, value_json=outcome)
        self.outbound.put(stoa_pb2.WorkerMessage(result=result))

    def send_heartbeat(self, invocation_id: str, attempt: int) -> None:
        if not self.dead.is_set():
            beat = stoa_pb2.Heartbeat(invocation_id=invocation_id, attempt=attempt)
            self.outbound.put(stoa_pb2.WorkerMessage(heartbeat=beat))

    def _heartbeats(self, _call) -> None:
        """Beats for every invocation that asked, at a third of its timeout."""
        while not self.dead.wait(0.01):
            now = time.monotonic()
            due = []
            with self.lock:
                for entry in self.in_flight.values():
                    ctx, period, next_beat = entry
                    if period and next_beat <= now:
                        due.append(ctx)
                        entry[2] = now + period
            for ctx in due:
                ctx.heartbeat()

    def _drain_on_stop(self, call) -> None:
        """On stop, or when the server asks: take no new work, wait for the
        work in flight, close."""
        while not (self.stop.wait(0.1) or self.server_drain.is_set()):
            if self.dead.is_set():
                return
        if self.stop.is_set():
            # Tells the server to lease nothing more here.
            self.outbound.put(stoa_pb2.WorkerMessage(drain=stoa_pb2.Drain(reason="the worker is shutting down")))
        with self.lock:
            self.draining = True
            log.info("draining: finishing %d invocations in flight", len(self.in_flight))
            deadline = None if self.worker.drain_timeout is None else time.monotonic() + self.worker.drain_timeout
            while self.in_flight and not self.dead.is_set():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    log.warning("drain timeout: dropping %d invocations in flight", len(self.in_flight))
                    break
                self.lock.wait(0.1 if left is None else min(left, 0.1))
        # Our side ends after the queued answers; the server then ends its
        # side, which ends `run`. If it does not, the call is cut.
        self.outbound.put(_CLOSE)
        if not self.dead.wait(CLOSE_TIMEOUT):
            log.warning("the server did not close the session within %.0fs", CLOSE_TIMEOUT)
            call.cancel()


def _target(server: str) -> str:
    """gRPC Python wants host:port; accept the http:// form the Rust SDK takes."""
    for scheme in ("http://", "grpc://"):
        if server.startswith(scheme):
            return server[len(scheme):].rstrip("/")
    if "://" in server:
        raise ValueError(f"unsupported server address {server!r}: use http://host:port")
    return server
