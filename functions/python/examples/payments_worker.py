"""A worker for the inventory example pack (examples/packs/inventory): it
serves `payments.charge`, declining one card for good and charging the rest.

Uses the installed stoa-worker package (`pip install ./functions/python`):
    python functions/python/examples/payments_worker.py --server http://127.0.0.1:7233 --token t-secret
See functions/README.md, "Writing a worker in Python", for the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os

from typing import TypedDict

from stoa_worker import Context, Failure, Worker


class Charge(TypedDict):
    order: str
    customer: str
    card: str
    amount: int  # cents


async def charge(args: Charge, ctx: Context) -> dict:
    """`async def` handlers run on the worker's event loop; plain `def`
    handlers run on a thread each, and may block."""
    if args["card"] == "visa-0000":
        # Not retryable: the rule's `error` section runs at once.
        raise Failure.fatal("card declined")
    if args["amount"] <= 0:
        raise Failure.fatal(f"nothing to charge for {args['order']}")
    await asyncio.sleep(0.05)  # the payment provider; any other exception is retried
    # The invocation id is the same for every attempt: an idempotency key.
    charge_id = "ch_" + hashlib.sha256(ctx.invocation_id.encode()).hexdigest()[:12]
    return {"charge_id": charge_id}


def main() -> None:
    parser = argparse.ArgumentParser(description="Serves payments.charge for the inventory example pack.")
    parser.add_argument("--server", default=os.environ.get("STOA_SERVER", "http://127.0.0.1:7233"))
    parser.add_argument("--token", default=os.environ.get("STOA_TOKEN"), required="STOA_TOKEN" not in os.environ)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)

    worker = Worker(args.server, token=args.token, max_in_flight=8)
    worker.function("payments.charge", charge)
    worker.run()  # until SIGTERM or Ctrl-C, then finishes the charges in flight


if __name__ == "__main__":
    main()
