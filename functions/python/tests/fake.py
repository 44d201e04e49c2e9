"""A fake Stoa server for the SDK's tests: the `Workers` service in-process
(grpc.aio), driven message by message by the test."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, List, Optional

import grpc
import grpc.aio

from stoa_worker._proto import stoa_pb2 as pb
from stoa_worker._proto import stoa_pb2_grpc

TOKEN = "t-secret"
TIMEOUT = 10.0


class FakeSession:
    def __init__(self, hello: Any, number: int):
        self.hello = hello
        self.number = number
        self.inbox: "asyncio.Queue[Optional[Any]]" = asyncio.Queue()
        self.outbox: "asyncio.Queue[Optional[Any]]" = asyncio.Queue()
        self.ended = asyncio.Event()

    async def send(self, **message: Any) -> None:
        await self.outbox.put(pb.ServerMessage(**message))

    async def invoke(self, *invocations: Any) -> None:
        await self.send(invocations=pb.InvocationBatch(invocations=list(invocations)))

    async def recv(self, timeout: float = TIMEOUT) -> Optional[Any]:
        """The worker's next message; None once it closed its side."""
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def result(self, timeout: float = TIMEOUT) -> Any:
        """The next InvocationResult, skipping heartbeats."""
        while True:
            message = await self.recv(timeout)
            assert message is not None, "the worker closed the session"
            if message.WhichOneof("msg") == "result":
                return message.result

    async def results_until_closed(self, timeout: float = TIMEOUT) -> List[Any]:
        """Every message up to the worker's end of the stream."""
        out = []
        while True:
            message = await self.recv(timeout)
            if message is None:
                return out
            out.append(message)


class FakeServer(stoa_pb2_grpc.WorkersServicer):
    def __init__(self, members: Optional[List[str]] = None, max_in_flight: Optional[int] = None):
        self.members = members or []
        self.max_in_flight = max_in_flight
        self.sessions: "asyncio.Queue[FakeSession]" = asyncio.Queue()
        self.server: Optional[grpc.aio.Server] = None
        self.port = 0
        self._numbers = itertools.count(1)

    async def start(self, port: int = 0) -> "FakeServer":
        self.server = grpc.aio.server()
        stoa_pb2_grpc.add_WorkersServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        await self.server.start()
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        assert self.server is not None
        await self.server.stop(grace=None)

    async def session(self, timeout: float = TIMEOUT) -> FakeSession:
        return await asyncio.wait_for(self.sessions.get(), timeout)

    async def Session(self, request_iterator: Any, context: Any) -> Any:  # noqa: N802 - gRPC's name
        metadata = dict(context.invocation_metadata())
        if metadata.get("authorization") != f"Bearer {TOKEN}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown token")
        first = await request_iterator.__anext__()
        assert first.WhichOneof("msg") == "hello", first
        session = FakeSession(first.hello, next(self._numbers))
        granted = self.max_in_flight or first.hello.max_in_flight
        yield pb.ServerMessage(
            welcome=pb.Welcome(session_id=f"s{session.number}", max_in_flight=granted, members=self.members)
        )

        async def read() -> None:
            try:
                async for message in request_iterator:
                    await session.inbox.put(message)
            finally:
                await session.inbox.put(None)
                # As the real server: it ends its side once the worker did.
                await session.outbox.put(None)
                session.ended.set()

        reader = asyncio.ensure_future(read())
        await self.sessions.put(session)
        try:
            while True:
                message = await session.outbox.get()
                if message is None:
                    return
                yield message
        finally:
            reader.cancel()


def invocation(id: str, function: str, args_json: str = "{}", attempt: int = 1, **fields: Any) -> Any:
    return pb.Invocation(id=id, function=function, args_json=args_json, attempt=attempt, **fields)
