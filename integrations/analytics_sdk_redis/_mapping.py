"""What each call writes to Redis: keys, hash fields and event entries (no I/O here).

The identify layout is RudderStack's Redis destination's: a hash at `{prefix}:user:{userId}`
whose fields are the traits flattened with dots (`address.city`), values as text, arrays as
JSON, nulls skipped. Group and track are device-mode additions documented in README.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from analytics_sdk.integration import RejectedMessage
from analytics_sdk.models import GroupMessage, IdentifyMessage, Message, TrackMessage

__all__ = ["EventEntry", "HashWrite", "flatten_traits", "key_prefix", "plan"]


@dataclass(frozen=True)
class HashWrite:
    """HSET key field value...: fields are merged into what the hash holds."""

    key: str
    fields: dict[str, str]


@dataclass(frozen=True)
class EventEntry:
    """ZADD key score member, then trim the sorted set to its newest `keep` members."""

    key: str
    member: str  # compact JSON with sorted keys: the same message always gives the same text
    score: float  # event time, milliseconds since the epoch
    keep: int


def key_prefix(prefix: str) -> str:
    """`"app"` -> `"app:"`; no prefix, no colon (RudderStack's key layout)."""
    return f"{prefix}:" if prefix else ""


def text_value(value: Any) -> str:
    """A JSON value as a hash field: the text RudderStack's transformer would store."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))  # 3.0 is stored as "3", as JavaScript prints it
    if isinstance(value, (list, tuple)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def flatten_traits(traits: Mapping[str, Any], into: dict[str, str], path: str = "") -> None:
    """Nested objects become dotted field names; nulls and empty objects are left out."""
    for name, value in traits.items():
        field = f"{path}{name}"
        if isinstance(value, Mapping):
            flatten_traits(value, into, f"{field}.")
        elif value is not None:
            into[field] = text_value(value)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _epoch_ms(moment: datetime) -> float:
    return round(_utc(moment).timestamp() * 1000, 3)


def _iso(moment: datetime) -> str:
    return _utc(moment).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def plan(message: Message, prefix: str, keep_events: int | None) -> HashWrite | EventEntry:
    """The write for one message, or RejectedMessage saying why there is none.

    `keep_events` is None when track calls are not stored.
    """
    base = key_prefix(prefix)
    if isinstance(message, IdentifyMessage):
        if not message.user_id:
            raise RejectedMessage("Redis stores identify calls by userId and this one has none")
        fields: dict[str, str] = {}
        context_traits = message.context.get("traits")
        if isinstance(context_traits, Mapping):
            flatten_traits(context_traits, fields)
        flatten_traits(message.traits, fields)  # the call's own traits win over context.traits
        if not fields:
            raise RejectedMessage("identify has no traits to store in Redis")
        return HashWrite(f"{base}user:{message.user_id}", fields)
    if isinstance(message, GroupMessage):
        fields = {}
        flatten_traits(message.traits, fields)
        if not fields:
            raise RejectedMessage("group has no traits to store in Redis")
        return HashWrite(f"{base}group:{message.group_id}", fields)
    if isinstance(message, TrackMessage) and keep_events is not None:
        if not message.user_id:
            raise RejectedMessage("Redis stores track events by userId and this one has none")
        moment = message.event_time
        if moment is None:
            raise RejectedMessage("track has no timestamp to order it by")
        entry = {
            "messageId": message.message_id,
            "event": message.event,
            "properties": message.properties,
            "timestamp": _iso(moment),
        }
        member = json.dumps(entry, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
        return EventEntry(f"{base}events:{message.user_id}", member, _epoch_ms(moment), keep_events)
    if isinstance(message, TrackMessage):
        raise RejectedMessage("Redis stores track calls only when trackEvents is on")
    raise RejectedMessage(f"Redis does not store {message.type} calls")
