"""stoa-worker-media in Python: the functions of the video-encode pack.

Serves media.split, media.encode, media.assemble and media.index (and
bench.noop for benchmarks) with the same definitions as the Rust worker
(functions/src/bin/media_worker/media.rs): outputs derived only from the
arguments, so both workers answer alike; simulated CPU work sized by the
arguments. Change both together.

Uses the installed stoa-worker package (`pip install ./functions/python`;
functions/python/setup.sh installs it into functions/python/.venv):
    functions/python/.venv/bin/python functions/python/examples/media_worker.py \
        --server http://127.0.0.1:7233 --token t-secret
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from dataclasses import dataclass
from typing import List

from stoa_worker import Context, Failure, Refused, Worker

MEDIA_FUNCTIONS = ["media.split", "media.encode", "media.assemble", "media.index"]
ALL_FUNCTIONS = MEDIA_FUNCTIONS + ["bench.noop"]
# SHA-256 rounds in one unit of work: about 1 ms in CPython here. (The Rust
# worker burns the same units with a different hash: only the outputs must
# match, not the work.)
ROUNDS_PER_UNIT = 3000
CODEC_COST = {"h264": 4, "vp9": 6, "hevc": 8, "h265": 8, "av1": 10}
MASK64 = (1 << 64) - 1


def fnv1a(*fields: str) -> int:
    """FNV-1a (64 bits) over the fields, each after the first preceded by 0x1f."""
    value = 0xCBF29CE484222325
    for i, field in enumerate(fields):
        data = field.encode("utf-8")
        if i > 0:
            data = b"\x1f" + data
        for byte in data:
            value ^= byte
            value = (value * 0x100000001B3) & MASK64
    return value


def hex8(value: int) -> str:
    return f"{value:016x}"[:8]


def stem(uri: str) -> str:
    """The last path segment without its extension: s3://in/movie.mov -> movie."""
    name = uri.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    if dot > 0:
        name = name[:dot]
    return name or "media"


def without_extension(uri: str) -> str:
    name_start = uri.rfind("/") + 1
    dot = uri[name_start:].rfind(".")
    return uri[: name_start + dot] if dot > 0 else uri


def work(seed: int, units: int, scale: float) -> None:
    digest = seed.to_bytes(8, "little")
    for _ in range(int(units * ROUNDS_PER_UNIT * max(scale, 0.0))):
        digest = hashlib.sha256(digest).digest()


# The arguments of each function; the SDK checks them against these types
# and fails an attempt fatally, naming the field, when they do not fit.
@dataclass
class SplitArgs:
    uri: str
    chunk_seconds: int


@dataclass
class EncodeArgs:
    uri: str
    codec: str
    index: int


@dataclass
class AssembleArgs:
    source: str
    parts: List[str]


@dataclass
class IndexArgs:
    uri: str


class Media:
    def __init__(self, work_scale: float, fail_rate: float):
        self.work_scale = work_scale
        self.fail_rate = fail_rate

    def check_fail(self, ctx: Context) -> None:
        """Fails this attempt on purpose at --fail-rate, chosen from the
        invocation id and attempt like the Rust worker."""
        if self.fail_rate > 0 and fnv1a(ctx.invocation_id, str(ctx.attempt)) / MASK64 < self.fail_rate:
            raise Failure(f"simulated failure of attempt {ctx.attempt} (--fail-rate)")

    def split(self, args: SplitArgs, ctx: Context) -> dict:
        self.check_fail(ctx)
        if args.chunk_seconds < 1:
            raise Failure.fatal("chunk_seconds must be at least 1")
        value = fnv1a(args.uri)
        duration_seconds = 60 + value % 3541
        chunks = -(-duration_seconds // args.chunk_seconds)
        work(value, 1 + min(chunks // 100, 3), self.work_scale)
        return {"chunks": chunks, "prefix": f"s3://chunks/{stem(args.uri)}-{hex8(value)}"}

    def encode(self, args: EncodeArgs, ctx: Context) -> dict:
        self.check_fail(ctx)
        codec, index = args.codec, args.index
        if not codec:
            raise Failure.fatal("codec is empty")
        if index < 0:
            raise Failure.fatal("bad arguments for media.encode: field `index`: must not be negative")
        value = fnv1a(args.uri, codec, str(index))
        work(value, CODEC_COST.get(codec, 5), self.work_scale)
        return {"uri": f"s3://encoded/{hex8(value)}/{index:05d}-{codec}.mp4"}

    def assemble(self, args: AssembleArgs, ctx: Context) -> dict:
        self.check_fail(ctx)
        parts = args.parts
        if not parts:
            raise Failure.fatal("no parts to assemble")
        value = fnv1a(args.source, *parts)
        work(value, 1 + min(len(parts) // 50, 9), self.work_scale)
        return {"uri": f"s3://out/{stem(args.source)}-{hex8(value)}.mp4"}

    def index(self, args: IndexArgs, ctx: Context) -> dict:
        self.check_fail(ctx)
        value = fnv1a(args.uri)
        work(value, 2, self.work_scale)
        return {"index": f"{without_extension(args.uri)}.idx"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="media_worker.py",
        description="Serves the functions of the video-encode example pack (media.split, media.encode, "
        "media.assemble, media.index) to a Stoa server, with simulated CPU work and outputs derived only "
        "from the arguments (the same as the Rust stoa-worker-media). Stops on Ctrl-C or SIGTERM after "
        "answering the work in flight.",
    )
    parser.add_argument("--server", default=os.environ.get("STOA_SERVER", "http://127.0.0.1:7233"),
                        help="the Stoa server's worker endpoint [env STOA_SERVER]")
    parser.add_argument("--token", default=os.environ.get("STOA_TOKEN"),
                        help="bearer token naming the tenant [env STOA_TOKEN]; required")
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("STOA_CONCURRENCY", "8")),
                        help="invocations run at once [env STOA_CONCURRENCY] (default 8)")
    parser.add_argument("--name", default=f"stoa-worker-media.py pid {os.getpid()}",
                        help="name shown in the server's logs")
    parser.add_argument("--functions", default=",".join(MEDIA_FUNCTIONS),
                        help="functions to serve, comma-separated, from: " + ", ".join(ALL_FUNCTIONS))
    parser.add_argument("--work-scale", type=float, default=float(os.environ.get("STOA_WORK_SCALE", "1")),
                        help="multiplies the simulated CPU work; 0 for none [env STOA_WORK_SCALE]")
    parser.add_argument("--fail-rate", type=float, default=0.0,
                        help="fraction of attempts in [0, 1] that fail with a retryable failure")
    parser.add_argument("--drain-timeout", type=float, default=60.0,
                        help="seconds a shutdown waits for the work in flight")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("--token or STOA_TOKEN is required")
    if not 0.0 <= args.fail_rate <= 1.0:
        parser.error("--fail-rate must be within [0, 1]")
    return args


def main(argv=None) -> int:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    worker = Worker(args.server, token=args.token, name=args.name, max_in_flight=args.concurrency,
                    drain_timeout=args.drain_timeout, service_name="stoa-worker-media.py")
    media = Media(args.work_scale, args.fail_rate)
    handlers = {
        "media.split": media.split,
        "media.encode": media.encode,
        "media.assemble": media.assemble,
        "media.index": media.index,
    }
    for name in filter(None, args.functions.split(",")):
        if name == "bench.noop":
            # Raw: the JSON text goes back as it came, not decoded at all.
            worker.function("bench.noop", lambda args_json, ctx: args_json, raw=True)
        elif name in handlers:
            # Plain (sync) handlers: each runs on a thread of its own.
            worker.function(name, handlers[name])
        else:
            print(f"unknown function `{name}`: choose from {', '.join(ALL_FUNCTIONS)}", file=sys.stderr)
            return 2

    logging.info("starting: server %s, functions %s, concurrency %d", args.server, args.functions, args.concurrency)
    try:
        # Until SIGTERM or Ctrl-C; then the work in flight is answered first.
        worker.run()
    except Refused as error:
        logging.error("the server refused the worker: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
