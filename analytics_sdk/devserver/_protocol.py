"""What the dev server accepts: the data plane's limits and reasons (DESIGN 4 and 8).

Pure functions over bytes and dicts, so every rule is tested without a socket.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from datetime import datetime, timezone
from typing import Any

from analytics_sdk._serialization import format_time

__all__ = [
    "CALL_TYPES",
    "MAX_MESSAGE_BYTES",
    "MAX_REQUEST_BYTES",
    "Refused",
    "decode_body",
    "received",
    "validate_messages",
]

MAX_REQUEST_BYTES = 4 * 1024 * 1024  # a request body, compressed or not
MAX_MESSAGE_BYTES = 32 * 1024  # one message, as JSON
CALL_TYPES = ("identify", "track", "page", "screen", "group", "alias")
_REQUIRED = {"track": "event", "group": "groupId", "alias": "previousId"}


class Refused(Exception):  # noqa: N818 - an answer, not a bug
    """The request is refused with `status` and a one-line `reason` (the response text)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def decode_body(raw: bytes, encoding: str | None) -> Any:
    """Request bytes -> JSON value: gunzip within the size limit, then parse."""
    if encoding and encoding.strip().lower() == "gzip":
        inflater = zlib.decompressobj(wbits=31)
        try:
            raw = inflater.decompress(raw, MAX_REQUEST_BYTES + 1)
        except zlib.error:
            raise Refused(400, "invalid gzip body") from None
        if len(raw) > MAX_REQUEST_BYTES or inflater.unconsumed_tail:
            raise Refused(413, f"request body over {MAX_REQUEST_BYTES} bytes once decompressed")
    elif encoding and encoding.strip().lower() not in ("identity", ""):
        raise Refused(400, f"unsupported Content-Encoding {encoding.strip()[:20]!r}")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        where = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        raise Refused(400, f"invalid JSON: {where}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Refused(400, f"invalid JSON: {type(exc).__name__}") from None


def validate_messages(body: Any, call_type: str | None) -> list[dict[str, Any]]:
    """The messages of a `/v1/batch` body (call_type None) or a `/v1/<type>` body.

    One bad message refuses the whole request, as RudderStack does (the SDK bisects a 400).
    """
    if call_type is None:
        if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
            raise Refused(400, 'the body must be an object with a "batch" list')
        messages = body["batch"]
        if not messages:
            raise Refused(400, "empty batch")
        where = "batch[{}]"
    else:
        if not isinstance(body, dict):
            raise Refused(400, "the body must be a message object")
        body.setdefault("type", call_type)
        if body["type"] != call_type:
            raise Refused(400, f"type {body['type']!r} sent to /v1/{call_type}")
        messages = [body]
        where = "message{}"
    sent_at = body.get("sentAt") if isinstance(body, dict) else None
    checked: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        place = where.format(index if call_type is None else "")
        _check_message(message, place)
        if sent_at is not None and "sentAt" not in message:
            message["sentAt"] = sent_at
        checked.append(message)
    return checked


def _check_message(message: Any, place: str) -> None:
    if not isinstance(message, dict):
        raise Refused(400, f"{place}: must be an object")
    kind = message.get("type")
    if kind not in CALL_TYPES:
        raise Refused(400, f"{place}.type: must be one of {', '.join(CALL_TYPES)}")
    if not _present(message.get("userId")) and not _present(message.get("anonymousId")):
        raise Refused(400, f"{place}: neither userId nor anonymousId is set")
    field = _REQUIRED.get(kind)
    if field and not _present(message.get(field)):
        raise Refused(400, f"{place}.{field}: required for a {kind} call")
    if not _present(message.get("messageId")):
        raise Refused(400, f"{place}.messageId: required (it is the dedupe key)")
    size = len(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_MESSAGE_BYTES:
        raise Refused(400, f"{place}: {size} bytes, over the limit of {MAX_MESSAGE_BYTES}")


def _present(value: Any) -> bool:
    return value is not None and str(value) != ""


def received(message: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The message as stored: receivedAt, and a skew-corrected timestamp when none was given.

    timestamp = receivedAt - (sentAt - originalTimestamp): the device clock's offset
    cancels out (DESIGN 4).
    """
    stored = dict(message)
    stored["receivedAt"] = format_time(now)
    if "timestamp" not in stored:
        original = _parse_time(stored.get("originalTimestamp"))
        sent = _parse_time(stored.get("sentAt"))
        stored["timestamp"] = stored.get("originalTimestamp") or stored["receivedAt"]
        if original is not None and sent is not None:
            with contextlib.suppress(OverflowError):  # absurd clocks: keep the device's time
                stored["timestamp"] = format_time(now - (sent - original))
    return stored


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
