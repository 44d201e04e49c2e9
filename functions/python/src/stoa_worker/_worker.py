"""The worker: sessions with the server, and the invocations they run.

A worker opens a `stoa.v1.Workers/Session` stream, says `Hello` (the
functions it serves and how many invocations it takes at once), waits for
`Welcome`, then runs the invocations the server sends and answers each with
an `InvocationResult` on the same stream. The protocol, and how this module
behaves, follow the Rust SDK (functions/src/session.rs, worker.rs,
members.rs):

- A broken session, or a server that is not up, is retried with jittered
  exponential backoff; invocations in flight on a broken session are dropped,
  since the server hands them out again when their lease runs out.
- Invocations asking for heartbeats get one at a third of their heartbeat
  timeout while they wait for a slot and while they run.
- Shutdown (`Worker.shutdown`, SIGTERM/SIGINT under `Worker.run`, or the
  `stop` event): the worker sends `Drain` (the server leases it nothing more),
  answers invocations that arrive after with NOT_STARTED, finishes the work
  in flight within the drain timeout, then closes.
- A server's `Drain` (it is going away): the same, within the server's
  deadline, then the worker reconnects with backoff.
- `Cancel` names an attempt: a running async handler is cancelled, a sync
  one sees `ctx.cancelled`; either way its answer is dropped.
- With a cluster, servers name their members in `Welcome` and `Members`: the
  worker holds a session to each (max_in_flight holds per session), and lets
  go of a member that left once its session fails.
- UNAUTHENTICATED, PERMISSION_DENIED and INVALID_ARGUMENT end the worker with
  `Refused`: reconnecting with the same token and Hello cannot fix them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set, Tuple, TypeVar, Union

import grpc
import grpc.aio

from ._args import Decoder, decoder_for, encode_result, handler_arity
from ._backoff import Backoff
from ._context import Context
from ._failure import Failure, Refused
try:
    from ._proto import stoa_pb2, stoa_pb2_grpc
except ImportError as error:  # pragma: no cover - a source tree, not a built package
    raise ImportError(
        f"the gRPC stubs of stoa_worker are missing ({error}): they are generated when the package is built; "
        "install it (pip install ./functions/python) rather than importing it from src/"
    ) from error
from ._tracing import Tracing

__all__ = ["Worker", "SDK_NAME"]

SDK_NAME = "stoa-python-sdk/0.1"
WELCOME_TIMEOUT = 10.0  # seconds the server has to answer Hello
CLOSE_TIMEOUT = 5.0  # seconds a closing session waits for the server's end
# Statuses that reconnecting with the same token and Hello cannot fix.
REFUSED_CODES = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
)
CHANNEL_OPTIONS = [
    # A server that vanished without closing the connection shows up as
    # missed pings, not as a stream that waits forever.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Reconnecting is this SDK's business (with its own backoff).
    ("grpc.enable_retries", 0),
]

log = logging.getLogger("stoa_worker")

H = TypeVar("H", bound=Callable[..., Any])


class _Function:
    """A registered handler: JSON text in, JSON text (or Failure) out."""

    def __init__(self, name: str, handler: Callable[..., Any], decoder: Optional[Decoder], raw: bool):
        self.name = name
        self.handler = handler
        self.decoder = decoder
        self.raw = raw
        self.is_async, _ = handler_arity(handler)

    def prepare(self, args_json: str) -> Any:
        """The handler's argument (Failure.fatal if it does not decode)."""
        if self.raw or self.decoder is None:
            return args_json
        return self.decoder(args_json)

    def finish(self, value: Any) -> str:
        if self.raw:
            if not isinstance(value, str):
                raise Failure.fatal(f"raw handler of {self.name} returned {type(value).__name__}, not JSON text")
            return value
        return encode_result(value)


class Worker:
    """Serves registered functions to a Stoa server until stopped.

    ``server`` is the server's worker endpoint, ``http://host:port`` (or
    ``host:port``); ``token`` the bearer token naming the tenant;
    ``max_in_flight`` the number of invocations run at once per session (the
    number of CPUs by default); ``backoff`` the bounds of the reconnect delay
    in seconds; ``drain_timeout`` how long a shutdown waits for the work in
    flight (None: as long as it takes).
    """

    def __init__(
        self,
        server: str,
        token: str,
        *,
        name: str = SDK_NAME,
        max_in_flight: Optional[int] = None,
        backoff: Tuple[float, float] = (0.1, 10.0),
        drain_timeout: Optional[float] = 60.0,
        service_name: str = "stoa-worker-python",
    ):
        if not token:
            raise ValueError("a token is required")
        if any(ord(c) < 0x21 or ord(c) > 0x7E for c in token):
            raise ValueError("the token must be visible ASCII (it travels in a header)")
        if max_in_flight is None:
            max_in_flight = os.cpu_count() or 1
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.target = _target(server)
        self.token = token
        self.name = name
        self.max_in_flight = max_in_flight
        self.backoff = backoff
        self.drain_timeout = drain_timeout
        self.service_name = service_name
        self.functions: Dict[str, _Function] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stopping: Optional[asyncio.Event] = None
        self._stop_early = threading.Event()  # shutdown() before serve() began
        self._members: Optional[_Members] = None
        self.tracing: Optional[Tracing] = None

    # ------------------------------------------------------------ handlers

    def function(
        self,
        name: str,
        handler: Optional[H] = None,
        *,
        args: Optional[Dict[str, Any]] = None,
        raw: bool = False,
    ) -> Any:
        """Registers ``handler(args, ctx)`` for the function ``name``; use it
        as a decorator (``@worker.function("media.encode")``) or call it with
        the handler.

        The handler may be a plain function (run on a thread of its own, so
        it may block) or an ``async def`` (run on the worker's event loop: it
        must not block it). Its first parameter's type hint says what the
        arguments are: a dataclass, a TypedDict, ``dict``, ... (see
        `stoa_worker._args`); arguments that do not fit are a fatal failure
        naming the field. ``args={"uri": str, ...}`` declares the fields
        instead. The return value is encoded as JSON (dataclasses become
        objects). With ``raw=True`` the handler gets and returns JSON text,
        unchecked.
        """

        def register(handler: H) -> H:
            if not name:
                raise ValueError("a function name is empty")
            if name in self.functions:
                raise ValueError(f"function `{name}` registered twice")
            if not callable(handler):
                raise TypeError(f"the handler of `{name}` is not callable")
            decoder = None if raw else decoder_for(name, handler, args)
            self.functions[name] = _Function(name, handler, decoder, raw)
            return handler

        if handler is not None:
            return register(handler)
        return register

    # ------------------------------------------------------------ running

    def run(self, stop: Optional[threading.Event] = None, *, handle_signals: bool = True) -> None:
        """Serves until stopped, then answers the work in flight and closes;
        blocks meanwhile. Raises `Refused` if the server refuses the worker.

        Stops when ``stop`` is set, when `shutdown` is called, or (with
        ``handle_signals``, in the main thread) on SIGTERM or SIGINT."""
        if not self.functions:
            raise ValueError("no function registered")

        async def main() -> None:
            loop = asyncio.get_running_loop()
            installed: List[int] = []
            if handle_signals and threading.current_thread() is threading.main_thread():
                for signum in (signal.SIGTERM, signal.SIGINT):
                    try:
                        loop.add_signal_handler(signum, self._on_signal, signum)
                        installed.append(signum)
                    except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Unix
                        pass
            watcher = None
            if stop is not None:
                watcher = threading.Thread(target=self._watch, args=(stop,), name="stoa-worker-stop", daemon=True)
            try:
                serving = asyncio.ensure_future(self.serve())
                await asyncio.sleep(0)  # serve() has set its loop and event
                if watcher is not None:
                    watcher.start()
                await serving
            finally:
                for signum in installed:
                    loop.remove_signal_handler(signum)

        asyncio.run(main())

    def _watch(self, stop: threading.Event) -> None:
        while not stop.wait(0.2):
            if self._stopping is not None and self._loop is not None and self._loop.is_closed():
                return
        self.shutdown()

    def _on_signal(self, signum: int) -> None:
        log.info("stopping (%s): finishing the work in flight", signal.Signals(signum).name)
        self.shutdown()

    def shutdown(self) -> None:
        """Asks the worker to stop: no new work, the work in flight answered,
        then `run`/`serve` return. Safe from any thread and from signal
        handlers."""
        self._stop_early.set()
        loop, stopping = self._loop, self._stopping
        if loop is None or stopping is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            stopping.set()
        else:
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:  # the loop is closed: nothing left to stop
                pass

    async def serve(self, stop: Optional[asyncio.Event] = None) -> None:
        """The async form of `run`: serves on the running event loop until
        ``stop`` is set or `shutdown` is called, then drains and returns.
        Installs no signal handlers."""
        if not self.functions:
            raise ValueError("no function registered")
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        if self._stop_early.is_set():
            self._stopping.set()
        self.tracing = Tracing(self.service_name)
        self._members = _Members(self)
        forward = None
        if stop is not None:
            stopping = self._stopping

            async def follow() -> None:
                await stop.wait()
                stopping.set()

            forward = asyncio.ensure_future(follow())
        try:
            await self._session_loop(self.target, lambda: True)
        except Refused:
            self._stopping.set()  # the members' sessions end too
            raise
        finally:
            await self._members.stopped()
            if forward is not None:
                forward.cancel()
            self.tracing.shutdown()

    @property
    def stopping(self) -> bool:
        return self._stopping is not None and self._stopping.is_set()

    async def _session_loop(self, target: str, wanted: Callable[[], bool]) -> None:
        """Keeps a session open with ``target`` until shutdown, or until a
        session fails while ``wanted`` says the server left the cluster."""
        assert self._stopping is not None
        backoff = Backoff(*self.backoff)
        # One bound for the loop's life: a sync handler of a broken session
        # still holds its slot until it returns, so a new session cannot push
        # the number running past max_in_flight.
        slots = asyncio.Semaphore(self.max_in_flight)
        while not self._stopping.is_set():
            session = _Session(self, target, slots, backoff)
            try:
                await session.run()
                return
            except _SessionLost as error:
                reason = str(error)
            if self._stopping.is_set():
                # What was in flight is lost either way, and reconnecting
                # would only take new work.
                log.warning("session with %s lost during shutdown: %s", target, reason)
                return
            if not wanted():
                log.info("%s left the cluster: no more sessions with it", target)
                return
            delay = backoff.next_delay()
            log.warning("no session with %s (%s); retrying in %.2fs", target, reason, delay)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except asyncio.TimeoutError:
                pass


class _Members:
    """The cluster's servers as the worker knows them: a session loop for
    each member other than the address the worker was given."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.latest: List[str] = []
        self.running: Set[str] = set()
        self.loops: List["asyncio.Task[None]"] = []

    def announce(self, addresses: List[str]) -> None:
        self.latest = list(addresses)
        for address in addresses:
            if address == self.worker.target or address in self.running or self.worker.stopping:
                continue
            log.info("opening a session to %s, another server of the cluster", address)
            self.running.add(address)
            self.loops.append(asyncio.ensure_future(self._member(address)))

    async def _member(self, address: str) -> None:
        try:
            await self.worker._session_loop(address, lambda: address in self.latest)
        except Refused as error:
            log.error("%s refused the worker: %s", address, error)
        finally:
            self.running.discard(address)

    async def stopped(self) -> None:
        """Waits for the members' loops (they end with the shutdown)."""
        while self.loops:
            loops, self.loops = self.loops, []
            await asyncio.gather(*loops, return_exceptions=True)


class _SessionLost(Exception):
    pass


_CLOSE = object()  # ends the request stream


class _Running:
    """An invocation in flight: its context and task."""

    __slots__ = ("ctx", "task")

    def __init__(self, ctx: Context, task: "asyncio.Task[None]"):
        self.ctx = ctx
        self.task = task


class _Session:
    """One session with one server."""

    def __init__(self, worker: Worker, target: str, slots: asyncio.Semaphore, backoff: Backoff):
        self.worker = worker
        self.target = target
        self.slots = slots
        self.backoff = backoff
        self.loop = asyncio.get_running_loop()
        self.outbound: "asyncio.Queue[Any]" = asyncio.Queue()
        self.in_flight: Dict[str, _Running] = {}
        self.tasks: Set["asyncio.Task[None]"] = set()
        self.changed = asyncio.Event()  # in_flight lost an entry
        self.draining: Optional[str] = None  # "shutdown" or "server"
        self.server_drain = asyncio.Event()
        self.server_deadline: Optional[float] = None
        self.closed = False  # our side of the stream ended: send nothing more
        self.dead = False

    # ---------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """One session; returns once a shutdown drained it, raises
        _SessionLost or Refused otherwise."""
        stopping = self.worker._stopping
        assert stopping is not None
        channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        call = None
        try:
            stub = stoa_pb2_grpc.WorkersStub(channel)
            call = stub.Session(metadata=(("authorization", f"Bearer {self.worker.token}"),))
            hello = stoa_pb2.Hello(
                functions=list(self.worker.functions),
                max_in_flight=self.worker.max_in_flight,
                name=self.worker.name,
            )
            try:
                await call.write(stoa_pb2.WorkerMessage(hello=hello))
                first = await _or_stop(asyncio.wait_for(call.read(), WELCOME_TIMEOUT), stopping)
            except _Stopped:
                return
            except asyncio.TimeoutError:
                raise _SessionLost(f"no Welcome within {WELCOME_TIMEOUT:.0f}s") from None
            except grpc.aio.AioRpcError as error:
                raise _classify(error) from None
            except (asyncio.InvalidStateError, grpc.aio.UsageError) as error:
                raise _SessionLost(await _status_of(call, error)) from None
            if first is grpc.aio.EOF:
                raise _SessionLost(await _status_of(call, "the server ended the session"))
            if first.WhichOneof("msg") != "welcome":
                raise _SessionLost(f"protocol error: expected Welcome, got {first.WhichOneof('msg')}")
            welcome = first.welcome
            self.backoff.reset()
            if welcome.members:
                self.worker._members.announce(list(welcome.members))  # type: ignore[union-attr]
            log.info(
                "session %s with %s open, serving %s, %d at once",
                welcome.session_id,
                self.target,
                ", ".join(self.worker.functions),
                welcome.max_in_flight,
            )
            if 0 < welcome.max_in_flight < self.worker.max_in_flight:
                log.warning(
                    "the server leases %d invocations at once, fewer than the %d asked",
                    welcome.max_in_flight,
                    self.worker.max_in_flight,
                )
            await self._serve(call)
        finally:
            self._end()
            if call is not None:
                call.cancel()
            await channel.close(grace=None)

    def _end(self) -> None:
        """However the session ended: drop its work (the server redelivers it)."""
        self.dead = True
        for running in list(self.in_flight.values()):
            running.ctx._cancelled = True
        self.in_flight.clear()
        for task in self.tasks:
            task.cancel()

    async def _serve(self, call: Any) -> None:
        stopping = self.worker._stopping
        assert stopping is not None
        reader = asyncio.ensure_future(self._read(call))
        writer = asyncio.ensure_future(self._write(call))
        stop_wait = asyncio.ensure_future(stopping.wait())
        drain_wait = asyncio.ensure_future(self.server_drain.wait())
        try:
            # Serving: until the stream breaks, or someone asks for a drain.
            while True:
                await asyncio.wait({reader, writer, stop_wait, drain_wait}, return_when=asyncio.FIRST_COMPLETED)
                if reader.done():
                    raise self._broken(reader)
                if writer.done():
                    raise self._broken(writer)
                if stop_wait.done() or drain_wait.done():
                    break

            # Draining: no new work, the work in flight answered.
            deadline = None
            if stop_wait.done():
                self._drain_for_shutdown()
                if self.worker.drain_timeout is not None:
                    deadline = self.loop.time() + self.worker.drain_timeout
            else:
                self.draining = "server"
                timeout = self.server_deadline if self.server_deadline is not None else self.worker.drain_timeout
                if timeout is not None:
                    deadline = self.loop.time() + timeout
            log.info("draining: finishing %d invocations in flight", len(self.in_flight))
            while self.in_flight:
                left = None if deadline is None else deadline - self.loop.time()
                if left is not None and left <= 0:
                    log.warning("drain timeout: dropping %d invocations in flight", len(self.in_flight))
                    break
                self.changed.clear()
                changed = asyncio.ensure_future(self.changed.wait())
                waits = {reader, writer, changed}
                if self.draining == "server":
                    waits.add(stop_wait)
                try:
                    await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
                if reader.done():
                    raise self._broken(reader)
                if writer.done():
                    raise self._broken(writer)
                if self.draining == "server" and stop_wait.done():
                    # Stopping too: the server hears of it, the deadline stays.
                    self._drain_for_shutdown()

            # Closing: our side ends after the queued answers; the server then
            # ends its side, which ends the reader. If not, the call is cut.
            self.closed = True
            self.outbound.put_nowait(_CLOSE)
            done, _ = await asyncio.wait({reader}, timeout=CLOSE_TIMEOUT)
            if not done:
                log.warning("the server did not close the session within %.0fs", CLOSE_TIMEOUT)
            log.info("session with %s closed", self.target)
            if self.draining == "server" and not stopping.is_set():
                raise _SessionLost("drained at the server's request")
        finally:
            for task in (reader, writer, stop_wait, drain_wait):
                task.cancel()
            await asyncio.gather(reader, writer, stop_wait, drain_wait, return_exceptions=True)

    def _drain_for_shutdown(self) -> None:
        if self.draining != "shutdown":
            self.draining = "shutdown"
            # Tells the server to lease nothing more here.
            drain = stoa_pb2.Drain(reason="the worker is shutting down")
            self.outbound.put_nowait(stoa_pb2.WorkerMessage(drain=drain))

    def _broken(self, task: "asyncio.Task[Any]") -> BaseException:
        """The error a finished reader or writer task ends the session with."""
        error = task.exception() if not task.cancelled() else None
        if isinstance(error, (Refused, _SessionLost)):
            return error
        if isinstance(error, grpc.aio.AioRpcError):
            return _classify(error)
        if error is not None:
            return _SessionLost(f"stream broke: {error!r}")
        return _SessionLost("the server ended the session")

    async def _read(self, call: Any) -> None:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                code = await call.code()
                if code not in (grpc.StatusCode.OK, None):
                    raise _classify_status(code, await call.details())
                return
            if self.closed:
                log.debug("ignored while closing: %s", message.WhichOneof("msg"))
                continue
            self._received(message)

    async def _write(self, call: Any) -> None:
        while True:
            message = await self.outbound.get()
            if message is _CLOSE:
                await call.done_writing()
                # Stay alive: a finished writer is a broken session.
                await asyncio.Event().wait()
            await call.write(message)

    # ---------------------------------------------------------- messages

    def _received(self, message: Any) -> None:
        kind = message.WhichOneof("msg")
        if kind == "invocations":
            for invocation in message.invocations.invocations:
                self._start(invocation)
        elif kind == "cancel":
            cancel = message.cancel
            running = self.in_flight.get(cancel.invocation_id)
            if running is None:
                log.debug("cancel for %s: nothing in flight", cancel.invocation_id)
            elif cancel.attempt in (0, running.ctx.attempt):
                self._forget(cancel.invocation_id, running)
                self._stop_running(running)
                log.debug("cancelled %s attempt %d", cancel.invocation_id, running.ctx.attempt)
            else:
                log.debug(
                    "cancel of %s attempt %d: attempt %d goes on",
                    cancel.invocation_id,
                    cancel.attempt,
                    running.ctx.attempt,
                )
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
            if self.draining is None and not self.server_drain.is_set():
                log.info("the server asks for a drain: %s", message.drain.reason)
                if message.drain.deadline_ms > 0:
                    self.server_deadline = message.drain.deadline_ms / 1000
                self.server_drain.set()
        elif kind == "members":
            self.worker._members.announce(list(message.members.addresses))  # type: ignore[union-attr]
        elif kind == "welcome":
            log.warning("ignored a second Welcome")
        else:  # a message kind newer than this SDK
            log.debug("ignored a server message of kind %s", kind)

    def _start(self, invocation: Any) -> None:
        if self.draining is not None or self.server_drain.is_set():
            # Running it would hold up the drain; dropping it would leave it
            # waiting for its lease to run out. Refusing it at once lets the
            # server give it to another worker now, as the same attempt.
            self._answer(invocation.id, invocation.attempt, Failure.not_started("the worker is draining"))
            return
        function = self.worker.functions.get(invocation.function)
        if function is None:
            # Another worker may serve it (a rolling upgrade).
            failure = Failure.not_started(f"this worker does not serve `{invocation.function}`")
            self._answer(invocation.id, invocation.attempt, failure)
            return
        previous = self.in_flight.pop(invocation.id, None)
        if previous is not None:
            # A newer attempt of something still running here: only the
            # newer attempt's answer counts.
            self._stop_running(previous)
            log.debug("%s attempt %d replaces the running one", invocation.id, invocation.attempt)
        if len(self.in_flight) >= self.worker.max_in_flight:
            log.warning("the server sent more than max_in_flight; %s waits for a slot", invocation.id)
        ctx = Context(
            invocation.id,
            invocation.function,
            invocation.attempt,
            workflow_id=invocation.workflow_id,
            priority=invocation.priority,
            timeout=invocation.timeout_ms / 1000 if invocation.timeout_ms else None,
            traceparent=invocation.traceparent,
        )
        ctx._beat = self._beater(invocation.id, invocation.attempt)
        period = max(invocation.heartbeat_timeout_ms / 3000, 0.001) if invocation.heartbeat_timeout_ms else None
        task = asyncio.ensure_future(self._invoke(function, invocation.args_json, ctx, period))
        running = _Running(ctx, task)
        self.in_flight[invocation.id] = running
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _stop_running(self, running: _Running) -> None:
        running.ctx._cancelled = True
        # An async handler is cancelled. A sync one runs on (a thread cannot
        # be interrupted), holding its slot until it returns; its answer is
        # dropped.
        running.task.cancel()

    def _forget(self, invocation_id: str, running: _Running) -> bool:
        """Drops ``running`` from in_flight if it is still the current attempt."""
        if self.in_flight.get(invocation_id) is running:
            del self.in_flight[invocation_id]
            self.changed.set()
            return True
        return False

    # ---------------------------------------------------------- invocations

    async def _invoke(self, function: _Function, args_json: str, ctx: Context, period: Optional[float]) -> None:
        beats = asyncio.ensure_future(self._heartbeats(ctx, period)) if period else None
        try:
            outcome = await self._call(function, args_json, ctx)
        except asyncio.CancelledError:
            return
        finally:
            if beats is not None:
                beats.cancel()
        running = self.in_flight.get(ctx.invocation_id)
        if running is None or running.ctx is not ctx:
            return  # cancelled, or replaced by a newer attempt
        self._forget(ctx.invocation_id, running)
        if not ctx._cancelled:
            self._answer(ctx.invocation_id, ctx.attempt, outcome)

    async def _call(self, function: _Function, args_json: str, ctx: Context) -> Union[str, Failure]:
        """Runs the handler once a slot is free: the JSON result, or a Failure."""
        tracing = self.worker.tracing
        assert tracing is not None
        if function.is_async:
            async with self.slots:
                with tracing.function_span(ctx) as span:
                    try:
                        value = function.finish(await function.handler(function.prepare(args_json), ctx))
                        tracing.outcome(span, "ok")
                        return value
                    except asyncio.CancelledError:
                        tracing.outcome(span, "cancelled")
                        raise
                    except Failure as failure:
                        tracing.outcome(span, _outcome(failure), failure.message)
                        return failure
                    except Exception as error:  # a bug in a handler fails one attempt, not the worker
                        failure = _unexpected(ctx, error)
                        tracing.outcome(span, "retryable failure", failure.message)
                        return failure
        # A sync handler runs on a daemon thread of its own (not a pool: one
        # that never returns must not keep the process from exiting after the
        # drain timeout). The slot is held until the thread returns, even if
        # the attempt was cancelled meanwhile.
        await self.slots.acquire()
        done: "asyncio.Future[Union[str, Failure]]" = self.loop.create_future()

        def settle(outcome: Union[str, Failure]) -> None:
            self.slots.release()
            if not done.done():
                done.set_result(outcome)

        def work() -> None:
            outcome: Union[str, Failure]
            with tracing.function_span(ctx) as span:
                try:
                    if ctx._cancelled:
                        raise Failure.not_started("cancelled before it started")
                    outcome = function.finish(function.handler(function.prepare(args_json), ctx))
                    tracing.outcome(span, "ok")
                except Failure as failure:
                    outcome = failure
                    tracing.outcome(span, _outcome(failure), failure.message)
                except BaseException as error:  # noqa: BLE001 - reported as the attempt's failure
                    outcome = _unexpected(ctx, error)
                    tracing.outcome(span, "retryable failure", outcome.message)
            try:
                self.loop.call_soon_threadsafe(settle, outcome)
            except RuntimeError:  # the loop is gone: the worker has exited
                pass

        try:
            threading.Thread(target=work, name=f"stoa-{function.name}", daemon=True).start()
        except BaseException:
            self.slots.release()
            raise
        # Shielded: cancelling the attempt must not release the slot early.
        return await asyncio.shield(done)

    async def _heartbeats(self, ctx: Context, period: float) -> None:
        """Beats at ``period`` (a third of the heartbeat timeout, so one late
        beat does not lose the lease), while waiting for a slot and running."""
        while True:
            await asyncio.sleep(period)
            ctx.heartbeat()

    def _beater(self, invocation_id: str, attempt: int) -> Callable[[], None]:
        message = stoa_pb2.WorkerMessage(heartbeat=stoa_pb2.Heartbeat(invocation_id=invocation_id, attempt=attempt))
        loop = self.loop

        def send() -> None:
            if not (self.dead or self.closed):
                self.outbound.put_nowait(message)

        def beat() -> None:
            try:
                on_loop = asyncio.get_running_loop() is loop
            except RuntimeError:
                on_loop = False
            if on_loop:
                send()
            else:
                try:
                    loop.call_soon_threadsafe(send)
                except RuntimeError:  # the loop is closed
                    pass

        return beat

    def _answer(self, invocation_id: str, attempt: int, outcome: Union[str, Failure]) -> None:
        if self.dead or self.closed:
            return
        if isinstance(outcome, Failure):
            kind = stoa_pb2.FAILURE_KIND_NOT_STARTED if outcome.is_not_started else stoa_pb2.FAILURE_KIND_FAILED
            result = stoa_pb2.InvocationResult(
                invocation_id=invocation_id,
                attempt=attempt,
                failure=stoa_pb2.Failure(message=outcome.message, retryable=outcome.retryable, kind=kind),
            )
        else:
            result = stoa_pb2.InvocationResult(invocation_id=invocation_id, attempt=attempt, value_json=outcome)
        self.outbound.put_nowait(stoa_pb2.WorkerMessage(result=result))


def _outcome(failure: Failure) -> str:
    if failure.is_not_started:
        return "not started"
    return "retryable failure" if failure.retryable else "failure"


def _unexpected(ctx: Context, error: BaseException) -> Failure:
    log.warning("handler of %s raised %r", ctx.function, error)
    return Failure(f"handler raised {type(error).__name__}: {error}")


class _Stopped(Exception):
    pass


async def _or_stop(awaitable: Awaitable[Any], stopping: asyncio.Event) -> Any:
    """``awaitable``'s result, or _Stopped if a shutdown comes first."""
    task = asyncio.ensure_future(awaitable)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if task.done():
        return task.result()
    task.cancel()
    raise _Stopped


def _classify(error: "grpc.aio.AioRpcError") -> BaseException:
    return _classify_status(error.code(), error.details())


def _classify_status(code: Any, details: Optional[str]) -> BaseException:
    name = getattr(code, "name", str(code))
    if code in REFUSED_CODES:
        return Refused(name, details or "")
    return _SessionLost(f"{name}: {details}")


async def _status_of(call: Any, fallback: Any) -> str:
    """The call's final status, when it has one, for a log line."""
    try:
        if call.done():
            code = await call.code()
            details = await call.details()
            if code in REFUSED_CODES:
                raise _classify_status(code, details)
            return f"{getattr(code, 'name', code)}: {details}"
    except (Refused, _SessionLost):
        raise
    except Exception:
        pass
    return str(fallback)


def _target(server: str) -> str:
    """gRPC Python wants host:port; accept the http:// form the Rust SDK takes."""
    for scheme in ("http://", "grpc://"):
        if server.startswith(scheme):
            return server[len(scheme) :].rstrip("/")
    if "://" in server:
        raise ValueError(f"unsupported server address {server!r}: use http://host:port")
    if not server:
        raise ValueError("the server address is empty")
    return server
