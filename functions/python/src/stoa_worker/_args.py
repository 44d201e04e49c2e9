"""Typed handlers: arguments decoded from JSON and checked against the
handler's type hints, results encoded back to JSON.

The first parameter's annotation says what the arguments are: a dataclass
(built from the JSON object), a TypedDict (checked, passed as a dict), a
plain type (`dict`, `list`, `str`, `int`, ...), or nothing / `Any` (the
decoded JSON as it is). Arguments that do not fit are a fatal failure naming
the field, as in the Rust SDK: every attempt would get the same arguments.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import sys
import typing
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ._failure import Failure

__all__ = ["Decoder", "decoder_for", "encode_result"]

_NONE = type(None)

try:  # Python 3.10+: `int | None`
    from types import UnionType as _UnionType  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    _UnionType = None  # type: ignore[assignment,misc]


class _Mismatch(Exception):
    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path
        self.message = message


def _name(hint: Any) -> str:
    if hint is _NONE:
        return "null"
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _join(path: str, field: str) -> str:
    return f"{path}.{field}" if path else field


def _is_typeddict(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, dict) and hasattr(hint, "__required_keys__")


def _hints(cls: Any) -> Dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable forward references: check nothing
        return {k: Any for k in getattr(cls, "__annotations__", {})}


def _required_keys(cls: Any) -> List[str]:
    """A TypedDict's required keys. With postponed annotations (`from
    __future__ import annotations`) the class cannot see `NotRequired[...]`
    itself, so the resolved hints have the last word."""
    required = set(cls.__required_keys__)
    try:
        extras = typing.get_type_hints(cls, include_extras=True)
    except Exception:
        extras = {}
    modules = [m for m in (typing, sys.modules.get("typing_extensions")) if m is not None]
    not_required = [getattr(m, "NotRequired") for m in modules if hasattr(m, "NotRequired")]
    marked_required = [getattr(m, "Required") for m in modules if hasattr(m, "Required")]
    for key, hint in extras.items():
        origin = typing.get_origin(hint)
        if origin is None:
            continue
        if any(origin is marker for marker in not_required):
            required.discard(key)
        elif any(origin is marker for marker in marked_required):
            required.add(key)
    return sorted(required)


def convert(value: Any, hint: Any, path: str = "") -> Any:
    """`value` (decoded JSON) as `hint` says, or _Mismatch naming the path."""
    if hint is Any or hint is object or hint is inspect.Parameter.empty:
        return value
    if hint is None or hint is _NONE:
        if value is not None:
            raise _Mismatch(path, f"expected null, got {_kind(value)}")
        return None
    origin = typing.get_origin(hint)
    if origin is Union or (_UnionType is not None and isinstance(hint, _UnionType)):
        options = typing.get_args(hint)
        if value is None and _NONE in options:
            return None
        errors = []
        for option in options:
            if option is _NONE:
                continue
            try:
                return convert(value, option, path)
            except _Mismatch as error:
                errors.append(error)
        # One non-null option (Optional[X]): its own message is the clearest.
        if len(errors) == 1:
            raise errors[0]
        raise _Mismatch(path, f"expected {' | '.join(_name(o) for o in options)}, got {_kind(value)}")
    if origin is typing.Literal:
        options = typing.get_args(hint)
        if not any(value == o and type(value) is type(o) for o in options):
            raise _Mismatch(path, f"expected one of {', '.join(json.dumps(o) for o in options)}, got {json.dumps(value)}")
        return value
    if origin in (list, typing.List) or hint in (list, typing.List):
        if not isinstance(value, list):
            raise _Mismatch(path, f"expected list, got {_kind(value)}")
        (item,) = typing.get_args(hint) or (Any,)
        return [convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (tuple, typing.Tuple):
        if not isinstance(value, list):
            raise _Mismatch(path, f"expected list, got {_kind(value)}")
        items = typing.get_args(hint)
        if len(items) == 2 and items[1] is Ellipsis:
            return tuple(convert(v, items[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(items) != len(value):
            raise _Mismatch(path, f"expected {len(items)} items, got {len(value)}")
        return tuple(convert(v, t, f"{path}[{i}]") for i, (v, t) in enumerate(zip(value, items)))
    if origin in (dict, typing.Dict) or hint in (dict, typing.Dict):
        if not isinstance(value, dict):
            raise _Mismatch(path, f"expected object, got {_kind(value)}")
        args = typing.get_args(hint)
        item = args[1] if len(args) == 2 else Any
        return {k: convert(v, item, _join(path, k)) for k, v in value.items()}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise _Mismatch(path, f"expected object, got {_kind(value)}")
        hints = _hints(hint)
        fields = {}
        for field in dataclasses.fields(hint):
            if not field.init:
                continue
            if field.name not in value:
                if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                    raise _Mismatch(path, f"missing field `{field.name}`")
                continue
            fields[field.name] = convert(value[field.name], hints.get(field.name, Any), _join(path, field.name))
        # Fields the handler does not know are ignored, as serde does.
        return hint(**fields)
    if _is_typeddict(hint):
        if not isinstance(value, dict):
            raise _Mismatch(path, f"expected object, got {_kind(value)}")
        hints = _hints(hint)
        out = dict(value)
        for key in _required_keys(hint):
            if key not in value:
                raise _Mismatch(path, f"missing field `{key}`")
        for key, field_hint in hints.items():
            if key in value:
                out[key] = convert(value[key], field_hint, _join(path, key))
        return out
    if hint is bool:
        if not isinstance(value, bool):
            raise _Mismatch(path, f"expected bool, got {_kind(value)}")
        return value
    if hint is int:
        # JSON true is not a number, though Python's bool is an int.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Mismatch(path, f"expected int, got {_kind(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Mismatch(path, f"expected float, got {_kind(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _Mismatch(path, f"expected str, got {_kind(value)}")
        return value
    if isinstance(hint, type):
        if not isinstance(value, hint):
            raise _Mismatch(path, f"expected {hint.__name__}, got {_kind(value)}")
        return value
    return value  # a hint this checker does not know: unchecked


class _FieldSpec:
    """The `args={"uri": str, ...}` form: every field required, of its type."""

    def __init__(self, spec: Dict[str, Any]):
        self.spec = spec

    def convert(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise _Mismatch("", f"expected an object, got {_kind(value)}")
        out = dict(value)
        for field, hint in self.spec.items():
            if field not in value:
                raise _Mismatch("", f"missing field `{field}`")
            out[field] = convert(value[field], hint, field)
        return out


class Decoder:
    """Turns an invocation's JSON arguments into the handler's argument."""

    def __init__(self, function: str, hint: Any = Any, spec: Optional[Dict[str, Any]] = None):
        self.function = function
        self.hint = hint
        self.spec = _FieldSpec(spec) if spec is not None else None

    def __call__(self, args_json: str) -> Any:
        try:
            value = json.loads(args_json) if args_json else None
        except ValueError as error:
            raise Failure.fatal(f"bad arguments for {self.function}: not JSON: {error}") from None
        try:
            if self.spec is not None:
                return self.spec.convert(value)
            return convert(value, self.hint)
        except _Mismatch as error:
            where = f"field `{error.path}`: " if error.path else ""
            raise Failure.fatal(f"bad arguments for {self.function}: {where}{error.message}") from None


def _first_parameter_hint(handler: Callable) -> Any:
    try:
        parameters = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):
        return Any
    if not parameters:
        raise TypeError(f"handler {handler!r} must take (args, ctx)")
    first = parameters[0]
    try:
        target = handler.__call__ if not inspect.isroutine(handler) and not inspect.isclass(handler) else handler
        hints = typing.get_type_hints(target)
    except Exception:
        hints = {}
    hint = hints.get(first.name, first.annotation)
    if isinstance(hint, str):
        # Postponed annotations that do not resolve (a class defined inside a
        # function, say): the arguments go unchecked rather than fail.
        logging.getLogger("stoa_worker").warning(
            "the type hint %r of %s's arguments does not resolve: they are passed unchecked", hint, handler
        )
        return Any
    return hint


def decoder_for(function: str, handler: Callable, spec: Optional[Dict[str, Any]] = None) -> Decoder:
    """The decoder for `handler`'s first parameter (or for an explicit spec)."""
    if spec is not None:
        return Decoder(function, spec=spec)
    return Decoder(function, _first_parameter_hint(handler))


def _default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode_result(value: Any) -> str:
    """The handler's return value as JSON (dataclasses become objects); a
    value that cannot be encoded is a fatal failure."""
    try:
        return json.dumps(value, default=_default, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise Failure.fatal(f"could not encode the result: {error}") from None


def handler_arity(handler: Callable) -> Tuple[bool, int]:
    """(is the handler async, number of positional parameters)."""
    target = handler
    if not inspect.isroutine(handler) and hasattr(handler, "__call__"):
        target = handler.__call__  # type: ignore[assignment]
    is_async = inspect.iscoroutinefunction(target)
    try:
        count = len(inspect.signature(handler).parameters)
    except (TypeError, ValueError):
        count = 2
    return is_async, count

