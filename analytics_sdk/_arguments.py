"""The checks of a call's scalar arguments: ids, texts and timestamps, with clear errors."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timezone

from analytics_sdk._serialization import format_time
from analytics_sdk.errors import InvalidMessageError

__all__ = ["as_id", "as_text", "as_time", "as_unicode", "invalid"]


def invalid(field: str, problem: str) -> InvalidMessageError:
    return InvalidMessageError(f"{field} {problem}", field=field)


def as_id(value: object, field: str) -> str | None:
    """An id as a non-empty string: ints (0 included), UUIDs and str subclasses (a StrEnum)
    are converted."""
    if value is None:
        return None
    kind = type(value)
    if kind is not str and isinstance(value, str):
        value, kind = str.__str__(value), str  # the text itself, whatever __str__ says
    if kind is str:
        if value:
            return as_unicode(value, field)  # type: ignore[arg-type]  # narrowed by the type check
        raise invalid(field, "must not be empty (pass None to leave it out)")
    if kind is int or isinstance(value, uuid.UUID):
        return str(value)
    raise invalid(field, f"must be a string or an int (got {kind.__name__})")


def as_text(value: object, field: str) -> str:
    """A string argument; a str subclass (a StrEnum member) is taken as its text."""
    if not isinstance(value, str):
        raise invalid(field, f"must be a string (got {type(value).__name__})")
    return as_unicode(value if type(value) is str else str.__str__(value), field)


def as_unicode(value: str, field: str) -> str:
    """`value` if it has a UTF-8 form: a lone surrogate ('\\ud800', from a bad decode) has none."""
    if value.isascii():  # the common case, in one C pass
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise invalid(
            field, f"holds a lone surrogate at index {exc.start}, which is not valid Unicode text"
        ) from None
    return value


def as_time(value: object) -> str:
    try:
        if isinstance(value, datetime):
            return format_time(value)
        if isinstance(value, date):
            return format_time(datetime(value.year, value.month, value.day, tzinfo=timezone.utc))
    except (OverflowError, ValueError):
        raise invalid("timestamp", "is outside the range of UTC datetimes") from None
    except Exception as exc:  # noqa: BLE001 - a tzinfo of the caller's that raises
        raise invalid(
            "timestamp", f"could not be read: its tzinfo raised {type(exc).__name__}"
        ) from None
    if isinstance(value, str):
        try:  # Python 3.10's fromisoformat does not take a trailing Z
            parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
        except ValueError:
            raise invalid("timestamp", "is not an ISO-8601 date or time") from None
        try:
            return format_time(parsed)
        except OverflowError:  # 9999-12-31T23:00-05:00 is past year 9999 in UTC
            raise invalid("timestamp", "is outside the range of UTC datetimes") from None
    raise invalid(
        "timestamp", f"must be a datetime or an ISO-8601 string (got {type(value).__name__})"
    )
