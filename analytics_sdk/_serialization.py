"""JSON values and times: converts caller values once, at call time, with the key path on error.

The rules of DESIGN 4: datetime/date -> ISO-8601 (naive = UTC); Decimal -> JSON number;
UUID -> str; Enum -> its value; set/tuple/frozenset -> list; bytes -> UTF-8 text;
dataclasses and pydantic models -> objects; NaN/Infinity, cycles, invalid UTF-8, unknown
objects, objects whose conversion raises and keys that become the same string are rejected
naming the key path. A value that needs nothing converted is returned as it is (no copy):
the snapshot is the serialized bytes, made right after.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import random
import time
import uuid
from collections.abc import Mapping
from datetime import date, datetime
from datetime import time as dt_time
from decimal import Decimal
from math import isfinite
from os import urandom
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError, to_json

from analytics_sdk._version import __version__
from analytics_sdk.errors import InvalidMessageError, Reason

LIBRARY = {"name": "analytics-sdk-python", "version": __version__}
LIBRARY_CONTEXT = {"library": LIBRARY}  # the context of a message nobody added to
ALL_INTEGRATIONS = {"All": True}
# A message whose context, integrations and channel are the defaults ends with exactly
# these bytes (the client puts those fields last). The queue keeps such messages without
# them, and the upload appends them again: a third less memory per queued message.
DEFAULT_TAIL = (
    b","
    + to_json({"context": LIBRARY_CONTEXT, "integrations": ALL_INTEGRATIONS, "channel": "server"})[
        1:-1
    ]
    + b"}"
)

_TAIL = len(DEFAULT_TAIL)
_QUOTE, _BRACE = ord('"'), ord("}")


def compact(data: bytes) -> bytes:
    """`data` without DEFAULT_TAIL when it ends with it. A compact message ends with the
    closing quote of its timestamp; a full one with "}": that last byte tells them apart."""
    if data.endswith(DEFAULT_TAIL) and data[-_TAIL - 1] == _QUOTE:
        return data[:-_TAIL]
    return data


def expand(stored: bytes) -> bytes:
    """The full message JSON of a queued message (compact or not)."""
    return stored if stored[-1] == _BRACE else stored + DEFAULT_TAIL


def wire_size(stored: bytes) -> int:
    """How many bytes a queued message has on the wire (before sentAt)."""
    return len(stored) if stored[-1] == _BRACE else len(stored) + _TAIL


MAX_DEPTH = 64  # containers nested in properties/traits/context; deeper is surely a bug

_NoneType = type(None)


class _BadValueError(Exception):
    """Raised inside the walk; collects the key path while it unwinds."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path: list[str | int] = []


def format_time(value: datetime) -> str:
    """ISO-8601 in UTC with milliseconds and `Z`; a naive datetime is taken as UTC.

    Raises:
        OverflowError: an aware datetime whose UTC instant is outside year 1..9999.
    """
    # Not `tzinfo is not None`: a tzinfo whose utcoffset() is None leaves the datetime
    # naive (Python's definition), and astimezone() would read it as *local* time.
    offset = value.utcoffset()
    if offset is not None:
        value = value - offset  # the UTC wall time; the tzinfo left on it is not read
    # Explicit padding: strftime("%Y") gives "999", not "0999", on glibc.
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:"
        f"{value.minute:02d}:{value.second:02d}.{value.microsecond // 1000:03d}Z"
    )


_second_cache: tuple[int, str] = (-1, "")


def now_iso() -> str:
    """The current UTC time as ISO-8601 with milliseconds: the hot path's clock (~0.4 µs)."""
    global _second_cache
    now = time.time()
    second = int(now)
    cached_second, prefix = _second_cache
    if cached_second != second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        _second_cache = (second, prefix)  # one tuple: readers see old or new, never half
    return f"{prefix}{int((now - second) * 1000):03d}Z"


def clean(value: Any, field: str) -> Any:
    """`value` in JSON-native types: the same object when nothing needs converting.

    Raises:
        InvalidMessageError: reason `serialization_error`, naming the key path under `field`.
    """
    if _is_plain(value, 0):  # the common case: a check that allocates nothing
        return value
    try:
        return _clean(value, 0, set())
    except _BadValueError as exc:
        path = _format_path(field, exc.path)
        raise InvalidMessageError(
            f"{path}: {exc.problem}", field=path, reason=Reason.SERIALIZATION_ERROR
        ) from None
    except RecursionError:
        raise InvalidMessageError(
            f"{field}: nested too deeply to serialize",
            field=field,
            reason=Reason.SERIALIZATION_ERROR,
        ) from None


# Message ids come from a private generator seeded from os.urandom. Not os.urandom per id:
# CPython releases the GIL around that syscall, and under load the caller then waits for
# the delivery thread to hand it back (12 µs a call, measured). Not the module-level
# `random` either: an application's random.seed(42) would make ids repeat across runs,
# and the data plane would drop the repeats as duplicates.
_ids = random.Random()
_UUID_V4_BITS = (0x4 << 76) | (0x2 << 62)  # version 4, RFC 4122 variant
_UUID_KEEP = ((1 << 128) - 1) ^ ((0xF << 76) | (0x3 << 62))


def uuid4() -> str:
    """A random (version 4) UUID string, in a third of uuid.uuid4()'s time."""
    h = "%032x" % ((_ids.getrandbits(128) & _UUID_KEEP) | _UUID_V4_BITS)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def reseed_ids() -> None:
    """A forked child must not repeat its parent's ids: new seed from os.urandom."""
    _ids.seed(urandom(32))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=reseed_ids)


def _is_plain(value: Any, depth: int) -> bool:
    """True when `value` is JSON as it stands: str keys, finite floats, dicts and lists only.

    A cycle fails the depth limit here; the full walk then names it properly.
    """
    kind = type(value)
    if kind is dict:
        if depth >= MAX_DEPTH:
            return False
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                return False
            kind = type(item)
            if kind is str:
                if not item.isascii():
                    return False
            elif kind is int or kind is bool or kind is _NoneType:
                continue
            elif kind is float:
                if not isfinite(item):
                    return False
            elif not _is_plain(item, depth + 1):
                return False
        return True
    if kind is list:
        if depth >= MAX_DEPTH:
            return False
        for item in value:
            kind = type(item)
            if kind is str:
                if not item.isascii():
                    return False
            elif kind is not int and kind is not bool and not _is_plain(item, depth + 1):
                return False
        return True
    if kind is str:
        return bool(value.isascii())
    if kind is int or kind is bool or kind is _NoneType:
        return True
    if kind is float:
        return isfinite(value)
    return False


def dumps(message: dict[str, Any]) -> bytes:
    """Serialize a message whose caller values went through `clean()`: compact UTF-8 JSON."""
    try:
        return to_json(message)
    except PydanticSerializationError as exc:  # only our own values reach here: a bug
        raise InvalidMessageError(
            f"message could not be serialized: {exc}", reason=Reason.SERIALIZATION_ERROR
        ) from None


def _format_path(field: str, path: list[str | int]) -> str:
    parts = [field]
    for key in reversed(path):
        if isinstance(key, int):
            parts.append(f"[{key}]")
        else:  # a key with a lone surrogate must not break the error message itself
            parts.append("." + key.encode("utf-8", "backslashreplace").decode("utf-8"))
    return "".join(parts)


def _clean(value: Any, depth: int, active: set[int]) -> Any:
    """The full walk (the rare path): converts, copies containers, names what is wrong."""
    kind = type(value)
    if kind is str:
        if not value.isascii():
            _check_text(value)
        return value
    if kind is int or kind is bool or kind is _NoneType:
        return value
    if kind is float:
        if isfinite(value):
            return value
        raise _BadValueError(f"{value} is not a JSON number (NaN and Infinity are rejected)")
    if kind is dict:
        return _clean_dict(value, depth, active)
    if kind is list:
        return _clean_list(value, depth, active)
    try:
        return _convert(value, depth, active)
    except (_BadValueError, RecursionError):
        raise
    except Exception as exc:  # noqa: BLE001 - a hostile value is the caller's problem
        # A property, a tzinfo or a Mapping that raises: the value is rejected naming its
        # path like any other bad value, not counted as an internal error of ours.
        raise _BadValueError(
            f"has type {type(value).__name__}; converting it raised {type(exc).__name__}"
        ) from None


def _enter(container: object, depth: int, active: set[int]) -> int:
    """Depth and cycle check; `container` is the caller's object (not a copy made of it)."""
    if depth >= MAX_DEPTH:
        raise _BadValueError(f"nested deeper than {MAX_DEPTH} levels")
    ident = id(container)
    if ident in active:
        raise _BadValueError("refers back to itself (a cycle); JSON cannot express it")
    active.add(ident)
    return ident


def _clean_dict(
    value: Mapping[Any, Any], depth: int, active: set[int], owner: object = None
) -> dict[str, Any]:
    """`owner`: the caller's object `value` was made from (a Mapping, dataclass, model)."""
    ident = _enter(value if owner is None else owner, depth, active)
    out: dict[str, Any] = {}
    for key, item in value.items():
        new_key = key if type(key) is str else None
        try:
            if new_key is None:
                new_key = _clean_key(key)
            if new_key in out:  # {1: "a", "1": "b"}: one value would vanish silently
                raise _BadValueError(
                    "is the same key as another once converted to a string "
                    "(JSON keys must be unique)"
                )
            if not new_key.isascii():
                _check_text(new_key)
            out[new_key] = _clean(item, depth + 1, active)
        except _BadValueError as exc:
            exc.path.append(_describe_key(key) if new_key is None else new_key)
            raise
    active.discard(ident)
    return out


def _clean_list(value: list[Any], depth: int, active: set[int], owner: object = None) -> list[Any]:
    ident = _enter(value if owner is None else owner, depth, active)
    out: list[Any] = []
    for index, item in enumerate(value):
        try:
            out.append(_clean(item, depth + 1, active))
        except _BadValueError as exc:
            exc.path.append(index)
            raise
    active.discard(ident)
    return out


def _clean_key(key: Any) -> str:
    try:
        if isinstance(key, enum.Enum) and isinstance(key.value, (str, int)):
            key = key.value
        if isinstance(key, str):
            return str.__str__(key)
        if isinstance(key, int) and not isinstance(key, bool):
            return int.__repr__(key)  # as json.dumps does: {1: "a"} -> {"1": "a"}
    except Exception as exc:  # noqa: BLE001 - a hostile key: rejected like a bad value
        raise _BadValueError(
            f"has a key of type {type(key).__name__}; converting it raised {type(exc).__name__}"
        ) from None
    raise _BadValueError(f"has a key of type {type(key).__name__}; JSON keys must be strings")


def _describe_key(key: Any) -> str:
    """A key that could not become a string, as the key path shows it (repr may raise)."""
    try:
        return repr(key)
    except Exception:  # noqa: BLE001 - a hostile __repr__ must not hide the real problem
        return f"<{type(key).__name__} object>"


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _BadValueError("is a string with a lone surrogate (not valid UTF-8)") from None


def _convert(value: Any, depth: int, active: set[int]) -> Any:
    """Everything that is not already a JSON-native type (the rare path)."""
    if isinstance(value, enum.Enum):  # before str/int: IntEnum and StrEnum are both
        return _clean(value.value, depth, active)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)  # not int(): a subclass's own __int__ may say anything
    if isinstance(value, float):
        return _clean(float.__float__(value), depth, active)
    if isinstance(value, str):
        return _clean(str.__str__(value), depth, active)
    if isinstance(value, Decimal):
        number = float(value) if value.is_finite() else math.nan
        if not math.isfinite(number):
            raise _BadValueError(f"Decimal {value} is not a finite JSON number")
        return number
    if isinstance(value, datetime):
        try:
            return format_time(value)
        except OverflowError:
            raise _BadValueError("is a datetime outside the range of UTC datetimes") from None
    if isinstance(value, (date, dt_time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        return _clean_dict(dict(value), depth, active, owner=value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return _clean_list(list(value), depth, active, owner=value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise _BadValueError("is bytes that are not valid UTF-8 text") from None
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, BaseModel):
        return _clean_dict(value.model_dump(), depth, active, owner=value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return _clean_dict(fields, depth, active, owner=value)
    if callable(getattr(value, "tolist", None)) and hasattr(value, "dtype"):
        return _clean(value.tolist(), depth, active)  # numpy scalars and arrays, duck-typed
    raise _BadValueError(f"has type {type(value).__name__}, which has no JSON form")
