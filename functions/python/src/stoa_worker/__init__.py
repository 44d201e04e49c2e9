"""The Stoa worker SDK for Python.

A worker serves functions that Stoa workflows call: it holds a gRPC session
with the server (`stoa.v1.Workers/Session`), runs the invocations it is sent,
and answers them. Handlers are typed, sync or async::

    from dataclasses import dataclass
    from stoa_worker import Context, Failure, Worker

    @dataclass
    class Encode:
        uri: str
        codec: str
        index: int

    worker = Worker("http://127.0.0.1:7233", token="t-secret", max_in_flight=8)

    @worker.function("media.encode")
    async def encode(args: Encode, ctx: Context) -> dict:
        if args.index < 0:
            raise Failure.fatal("index must not be negative")  # no retry
        ...
        return {"uri": f"s3://encoded/{args.index:05d}-{args.codec}.mp4"}

    worker.run()  # until SIGTERM/SIGINT, then drains the work in flight

See functions/README.md (Python) in the Stoa repository.
"""

from ._context import Context
from ._failure import Failure, Refused
from ._worker import SDK_NAME, Worker

__all__ = ["Context", "Failure", "Refused", "Worker", "SDK_NAME"]
__version__ = "0.1.0"
