"""Typed handlers: arguments checked against type hints, naming the field;
results encoded; the Context for unit tests."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Union

import pytest

from stoa_worker import Context, Failure
from stoa_worker._args import Decoder, decoder_for, encode_result

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:  # pragma: no cover
    from typing_extensions import NotRequired, TypedDict


@dataclass
class Part:
    uri: str
    size: int = 0


@dataclass
class Assemble:
    source: str
    parts: List[Part]
    codec: Literal["h264", "av1"] = "h264"
    tags: Dict[str, str] = field(default_factory=dict)
    note: Optional[str] = None
    ratio: float = 1.0


class Charge(TypedDict):
    card: str
    amount: int
    memo: NotRequired[str]


def fails(decoder: Decoder, args: Any) -> str:
    with pytest.raises(Failure) as caught:
        decoder(json.dumps(args) if not isinstance(args, str) else args)
    assert not caught.value.retryable, "bad arguments are fatal: every attempt gets the same"
    return caught.value.message


def test_dataclass_arguments() -> None:
    def handler(args: Assemble, ctx: Context) -> None: ...

    decode = decoder_for("media.assemble", handler)
    got = decode(json.dumps({"source": "s", "parts": [{"uri": "a"}, {"uri": "b", "size": 2}], "ratio": 2, "x": 1}))
    assert got == Assemble("s", [Part("a"), Part("b", 2)], ratio=2.0)
    assert isinstance(got.ratio, float)
    assert fails(decode, {"parts": []}) == "bad arguments for media.assemble: missing field `source`"
    assert (
        fails(decode, {"source": "s", "parts": [{"uri": "a"}, {"uri": 2}]})
        == "bad arguments for media.assemble: field `parts[1].uri`: expected str, got int"
    )
    assert "field `parts[0]`: missing field `uri`" in fails(decode, {"source": "s", "parts": [{}]})
    assert "field `codec`: expected one of \"h264\", \"av1\", got \"vp9\"" in fails(
        decode, {"source": "s", "parts": [], "codec": "vp9"}
    )
    assert "field `tags.k`: expected str, got int" in fails(decode, {"source": "s", "parts": [], "tags": {"k": 1}})
    assert "field `note`: expected str, got int" in fails(decode, {"source": "s", "parts": [], "note": 3})
    assert decode('{"source": "s", "parts": [], "note": null}').note is None
    assert fails(decode, "[1]") == "bad arguments for media.assemble: expected object, got list"


def test_typeddict_and_plain_arguments() -> None:
    def charge(args: Charge, ctx: Context) -> None: ...

    decode = decoder_for("payments.charge", charge)
    assert decode('{"card": "c", "amount": 5}') == {"card": "c", "amount": 5}
    assert fails(decode, {"card": "c"}) == "bad arguments for payments.charge: missing field `amount`"
    # JSON true is not a number, though Python's bool is an int.
    assert "field `amount`: expected int, got bool" in fails(decode, {"card": "c", "amount": True})
    assert "field `memo`: expected str" in fails(decode, {"card": "c", "amount": 1, "memo": 1})

    def untyped(args, ctx):  # type: ignore[no-untyped-def]
        ...

    assert decoder_for("f", untyped)("[1, {}]") == [1, {}]

    def union(args: Union[int, str], ctx: Context) -> None: ...

    assert decoder_for("f", union)('"x"') == "x"
    assert "expected int | str, got list" in fails(decoder_for("f", union), [])


def test_an_explicit_field_spec() -> None:
    decode = decoder_for("media.encode", lambda a, c: None, {"uri": str, "index": int})
    assert decode('{"uri": "u", "index": 1, "more": 2}') == {"uri": "u", "index": 1, "more": 2}
    assert fails(decode, {"uri": "u"}) == "bad arguments for media.encode: missing field `index`"
    assert fails(decode, {"uri": "u", "index": "1"}) == "bad arguments for media.encode: field `index`: expected int, got str"


def test_results_are_json() -> None:
    assert json.loads(encode_result(Part("a", 1))) == {"uri": "a", "size": 1}
    assert json.loads(encode_result({"parts": [Part("a")], "t": (1, 2)})) == {"parts": [{"uri": "a", "size": 0}], "t": [1, 2]}
    with pytest.raises(Failure) as caught:
        encode_result({"x": object()})
    assert not caught.value.retryable and "could not encode the result" in caught.value.message
    with pytest.raises(Failure):
        encode_result(float("nan"))


def test_a_detached_context_for_unit_tests() -> None:
    ctx = Context.detached("media.encode", "inv-1", attempt=2, timeout=30.0)
    ctx.heartbeat()  # goes nowhere
    assert (ctx.function, ctx.invocation_id, ctx.attempt, ctx.cancelled) == ("media.encode", "inv-1", 2, False)
    assert ctx.remaining() is not None and 29 < ctx.remaining() <= 30
    assert Context.detached("f").deadline is None


def test_failures() -> None:
    assert Failure("x").retryable and not Failure("x").is_not_started
    assert not Failure.fatal("x").retryable
    assert Failure.not_started("x").is_not_started
    assert repr(Failure.fatal("x")) == "Failure('x', fatal)"
