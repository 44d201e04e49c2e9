"""The worker of the SDK's end-to-end tests (tests/e2e/python_sdk.rs), for
the pack tests/packs/pysdk: an async and a sync handler, one that fails
retryably twice, one that fails fatally, a slow one. Uses the installed
package. Arguments: SERVER TOKEN."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass

from stoa_worker import Context, Failure, Worker


@dataclass
class Pair:
    a: int
    b: int


@dataclass
class Slow:
    seconds: float
    marker: str


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="e2e_worker %(levelname)s %(message)s")
    server, token = sys.argv[1], sys.argv[2]
    worker = Worker(server, token=token, max_in_flight=4, backoff=(0.05, 0.5), name=f"e2e_worker pid {os.getpid()}")

    @worker.function("py.mul")
    async def mul(args: Pair, ctx: Context) -> dict:
        await asyncio.sleep(0.01)
        return {"product": args.a * args.b, "attempt": ctx.attempt, "async": True}

    @worker.function("py.add")
    def add(args: Pair, ctx: Context) -> dict:
        return {"sum": args.a + args.b, "thread": threading.current_thread().name, "pid": os.getpid()}

    @worker.function("py.flaky")
    def flaky(args: dict, ctx: Context) -> dict:
        if ctx.attempt == 1:
            raise Failure("the bank is down")
        if ctx.attempt == 2:
            raise ConnectionError("reset by peer")  # any exception: retryable
        return {"attempt": ctx.attempt}

    @worker.function("py.declined")
    async def declined(args: dict, ctx: Context) -> dict:
        raise Failure.fatal(f"card declined on attempt {ctx.attempt}")

    @worker.function("py.slow")
    def slow(args: Slow, ctx: Context) -> dict:
        with open(args.marker, "w") as f:
            f.write(str(ctx.attempt))
        time.sleep(args.seconds)
        return {"slept": args.seconds, "attempt": ctx.attempt, "pid": os.getpid()}

    worker.run()
    logging.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
