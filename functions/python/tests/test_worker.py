"""The worker against a fake server: the session protocol (Hello, Welcome,
results, heartbeats, Cancel, Drain both ways, Members), reconnecting, and
refusal."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, List

import pytest

from fake import TOKEN, FakeServer, FakeSession, invocation
from stoa_worker import Context, Failure, Refused, Worker
from stoa_worker._proto import stoa_pb2 as pb

DEADLINE = 30.0


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), DEADLINE))


@dataclass
class Pair:
    a: int
    b: int


def worker_for(server: FakeServer, **options: Any) -> Worker:
    options.setdefault("backoff", (0.05, 0.2))
    worker = Worker(f"http://{server.address}", token=options.pop("token", TOKEN), **options)

    @worker.function("t.add")
    def add(args: Pair, ctx: Context) -> dict:
        return {"sum": args.a + args.b, "attempt": ctx.attempt, "thread": threading.current_thread().name}

    @worker.function("t.mul")
    async def mul(args: Pair, ctx: Context) -> dict:
        await asyncio.sleep(0)
        return {"product": args.a * args.b, "workflow": ctx.workflow_id}

    @worker.function("t.sleep")
    async def sleep(args: dict, ctx: Context) -> dict:
        await asyncio.sleep(args["seconds"])
        return {"slept": args["seconds"]}

    @worker.function("t.block")
    def block(args: dict, ctx: Context) -> dict:
        time.sleep(args["seconds"])
        return {"blocked": args["seconds"]}

    @worker.function("t.fail")
    def fail(args: dict, ctx: Context) -> None:
        kind = args["kind"]
        if kind == "fatal":
            raise Failure.fatal("no such card")
        if kind == "retryable":
            raise Failure("the bank is down")
        if kind == "not_started":
            raise Failure.not_started("not now")
        raise ValueError("a bug")

    return worker


async def serving(worker: Worker) -> "asyncio.Task[None]":
    task = asyncio.ensure_future(worker.serve())
    await asyncio.sleep(0)
    return task


def value(result: Any) -> Any:
    assert result.WhichOneof("outcome") == "value_json", result
    return json.loads(result.value_json)


def failure(result: Any) -> Any:
    assert result.WhichOneof("outcome") == "failure", result
    return result.failure


def test_hello_and_typed_sync_and_async_handlers() -> None:
    async def body() -> None:
        server = await FakeServer().start()
        worker = worker_for(server, max_in_flight=3, name="tester")
        task = await serving(worker)
        session = await server.session()
        assert list(session.hello.functions) == ["t.add", "t.mul", "t.sleep", "t.block", "t.fail"]
        assert session.hello.max_in_flight == 3
        assert session.hello.name == "tester"

        await session.invoke(
            invocation("i1", "t.add", '{"a": 2, "b": 3}', attempt=2),
            invocation("i2", "t.mul", '{"a": 2, "b": 3, "extra": true}', workflow_id="wf_1"),
        )
        results = {r.invocation_id: r for r in [await session.result(), await session.result()]}
        add = value(results["i1"])
        assert (add["sum"], add["attempt"], results["i1"].attempt) == (5, 2, 2)
        assert add["thread"] == "stoa-t.add", "a sync handler runs on a thread of its own"
        assert value(results["i2"]) == {"product": 6, "workflow": "wf_1"}

        worker.shutdown()
        await task
        await server.stop()

    run(body)


def test_failures_are_retryable_fatal_or_not_started() -> None:
    async def body() -> None:
        server = await FakeServer().start()
        worker = worker_for(server)
        task = await serving(worker)
        session = await server.session()
        cases = {
            "fatal": invocation("fatal", "t.fail", '{"kind": "fatal"}'),
            "retryable": invocation("retryable", "t.fail", '{"kind": "retryable"}'),
            "bug": invocation("bug", "t.fail", '{"kind": "bug"}'),
            "not_started": invocation("not_started", "t.fail", '{"kind": "not_started"}'),
            "bad_args": invocation("bad_args", "t.add", '{"a": 1, "b": "2"}'),
            "missing": invocation("missing", "t.mul", '{"a": 1}'),
            "not_json": invocation("not_json", "t.add", "{"),
            "unknown": invocation("unknown", "t.nothing", "{}"),
        }
        await session.invoke(*cases.values())
        got = {}
        for _ in cases:
            result = await session.result()
            got[result.invocation_id] = failure(result)
        failed, not_started = pb.FAILURE_KIND_FAILED, pb.FAILURE_KIND_NOT_STARTED
        assert (got["fatal"].message, got["fatal"].retryable, got["fatal"].kind) == ("no such card", False, failed)
        assert (got["retryable"].retryable, got["retryable"].kind) == (True, failed)
        assert got["bug"].retryable and got["bug"].message == "handler raised ValueError: a bug"
        assert got["not_started"].kind == not_started
        assert not got["bad_args"].retryable
        assert got["bad_args"].message == "bad arguments for t.add: field `b`: expected int, got str"
        assert got["missing"].message == "bad arguments for t.mul: missing field `b`"
        assert not got["not_json"].retryable and "not JSON" in got["not_json"].message
        assert got["unknown"].kind == not_started and "t.nothing" in got["unknown"].message
        worker.shutdown()
        await task
        await server.stop()

    run(body)


def test_heartbeats_at_a_third_of_the_timeout_and_on_demand() -> None:
    async def body() -> None:
        server = await FakeServer().start()
        worker = worker_for(server)
        task = await serving(worker)
        session = await server.session()
        await session.invoke(invocation("slow", "t.block", '{"seconds": 0.4}', heartbeat_timeout_ms=90, attempt=3))
        kinds: List[str] = []
        while True:
            message = await session.recv()
            kinds.append(message.WhichOneof("msg"))
            if kinds[-1] == "heartbeat":
                assert (message.heartbeat.invocation_id, message.heartbeat.attempt) == ("slow", 3)
            if kinds[-1] == "result":
                break
        assert kinds.count("heartbeat") >= 4, kinds
        worker.shutdown()
        await task
        await server.stop()

    run(body)


def test_cancel_stops_an_async_handler_and_drops_its_answer() -> None:
    async def body() -> None:
        server = await FakeServer().start()
        worker = Worker(f"http://{server.address}", token=TOKEN, backoff=(0.05, 0.2))
        started, cancelled = asyncio.Event(), asyncio.Event()

        @worker.function("t.wait")
        async def wait(args: Any, ctx: Context) -> str:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return "late"

        @worker.function("t.echo")
        def echo(args: Any, ctx: Context) -> Any:
            return args

        task = await serving(worker)
        session = await server.session()
        await session.invoke(invocation("w", "t.wait", attempt=2))
        await asyncio.wait_for(started.wait(), 5)
        # Another attempt than the running one: it goes on.
        await session.send(cancel=pb.Cancel(invocation_id="w", attempt=1))
        await asyncio.sleep(0.1)
        assert not cancelled.is_set()
        await session.send(cancel=pb.Cancel(invocation_id="w", attempt=2))
        await asyncio.wait_for(cancelled.wait(), 5)
        await session.invoke(invocation("e", "t.echo", "[1]"))
        result = await session.result()
        assert result.invocation_id == "e" and value(result) == [1], "no answer for the cancelled attempt"
        worker.shutdown()
        await task
        await server.stop()

    run(body)


def test_shutdown_drains_answers_in_flight_and_refuses_new_work() -> None:
    async def body() -> None:
        server = await FakeServer().start()
        worker = worker_for(server)
        task = await serving(worker)
        session = await server.session()
        await session.invoke(
            invocation("sync", "t.block", '{"seconds": 0.5}'), invocation("async", "t.sleep", '{"seconds": 0.5}')
        )
        await asyncio.sleep(0.1)
        worker.shutdown()
        message = await session.recv()
        assert message.WhichOneof("msg") == "drain", message
        await session.invoke(invocation("late", "t.add", '{"a": 1, "b": 1}'))
        rest = await session.results_until_closed()
        results = {m.result.invocation_id: m.result for m in rest if m.WhichOneof("msg") == "result"}
        assert value(results["sync"]) == {"blocked": 0.5}
        assert value(results["async"]) == {"slept": 0.5}
        assert failure(results["late"]).kind == pb.FAILURE_KIND_NOT_STARTED
        await asyncio.wait_for(task, 5)
        await server.stop()

    run(body)


def test_drain_timeout_drops_what_is_still_running() -> None:
    async def body() -> None:
        server = await FakeServer().start()
        worker = worker_for(server, drain_timeout=0.2)
        task = await serving(worker)
        session = await server.session()
        await session.invoke(invocation("long", "t.sleep", '{"seconds": 20}'))
        await asyncio.sleep(0.1)
        began = time.monotonic()
        worker.shutdown()
        rest = await session.results_until_closed()
        assert [m.WhichOneof("msg") for m in rest] == ["drain"]
        await asyncio.wait_for(task, 5)
        assert time.monotonic() - began < 3
        await server.stop()

    run(body)


def test_a_server_drain_is_answered_then_the_worker_comes_back() -> None:
    async def body() -> None:
        server = await FakeServer().start()
        worker = worker_for(server)
        task = await serving(worker)
        session = await server.session()
        await session.invoke(invocation("run", "t.sleep", '{"seconds": 0.3}'))
        await session.send(drain=pb.Drain(reason="server shutting down", deadline_ms=10_000))
        await session.invoke(invocation("late", "t.add", '{"a": 1, "b": 1}'))
        rest = await session.results_until_closed()
        results = {m.result.invocation_id: m.result for m in rest if m.WhichOneof("msg") == "result"}
        assert value(results["run"]) == {"slept": 0.3}
        assert failure(results["late"]).kind == pb.FAILURE_KIND_NOT_STARTED
        assert all(m.WhichOneof("msg") != "drain" for m in rest), "the worker itself is not stopping"
        again = await server.session()
        await again.invoke(invocation("late", "t.add", '{"a": 1, "b": 1}'))
        assert value(await again.result())["sum"] == 2
        worker.shutdown()
        await task
        await server.stop()

    run(body)


def test_reconnects_after_the_server_restarts() -> None:
    async def body() -> None:
        server = await FakeServer().start()
        port = server.port
        worker = worker_for(server)
        task = await serving(worker)
        await server.session()
        await server.stop()
        await asyncio.sleep(0.3)  # a few failed attempts, with backoff
        server = await FakeServer().start(port)
        session = await server.session()
        await session.invoke(invocation("x", "t.mul", '{"a": 4, "b": 5}'))
        assert value(await session.result())["product"] == 20
        worker.shutdown()
        await task
        await server.stop()

    run(body)


def test_a_bad_token_is_refused_for_good() -> None:
    async def body() -> None:
        server = await FakeServer().start()
        worker = worker_for(server, token="wrong")
        with pytest.raises(Refused) as refused:
            await worker.serve()
        assert refused.value.code == "UNAUTHENTICATED"
        await server.stop()

    run(body)


def test_a_session_to_every_member_of_a_cluster() -> None:
    async def body() -> None:
        other = await FakeServer().start()
        first = FakeServer()
        await first.start()
        first.members = [first.address, other.address]
        worker = worker_for(first)
        task = await serving(worker)
        session_a = await first.session()
        session_b = await other.session()
        await session_b.invoke(invocation("b", "t.add", '{"a": 1, "b": 2}'))
        assert value(await session_b.result())["sum"] == 3
        await session_a.invoke(invocation("a", "t.add", '{"a": 3, "b": 4}'))
        assert value(await session_a.result())["sum"] == 7
        worker.shutdown()
        await task
        assert session_a.ended.is_set() and session_b.ended.is_set()
        await first.stop()
        await other.stop()

    run(body)


def test_max_in_flight_bounds_the_handlers_running_at_once() -> None:
    async def body() -> None:
        server = await FakeServer().start()
        worker = Worker(f"http://{server.address}", token=TOKEN, max_in_flight=2)
        running, most = [0], [0]
        lock = threading.Lock()

        @worker.function("t.busy")
        def busy(args: Any, ctx: Context) -> None:
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.1)
            with lock:
                running[0] -= 1

        task = await serving(worker)
        session = await server.session()
        # A server that sends more than asked: the extra ones wait.
        await session.invoke(*(invocation(f"b{i}", "t.busy") for i in range(5)))
        for _ in range(5):
            await session.result()
        assert most[0] == 2
        worker.shutdown()
        await task
        await server.stop()

    run(body)


def test_run_blocks_until_the_stop_event() -> None:
    async def start() -> FakeServer:
        return await FakeServer().start()

    # The fake server runs on a loop of its own thread; `run` makes its own.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    worker = worker_for(server)
    stop = threading.Event()
    sessions: List[FakeSession] = []

    def stop_soon() -> None:
        sessions.append(asyncio.run_coroutine_threadsafe(server.session(), loop).result(10))
        stop.set()

    threading.Thread(target=stop_soon, daemon=True).start()
    began = time.monotonic()
    worker.run(stop, handle_signals=False)
    assert sessions and time.monotonic() - began < 10
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
