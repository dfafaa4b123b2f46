"""Typed, read-only views of accepted messages: what device-mode integrations receive.

The client serializes each message once, at call time; the data plane gets those bytes, and
an integration gets the same snapshot parsed into one of these frozen models. Python names
in code, the wire's camelCase in `to_wire()`; fields the spec does not name stay available
through `to_wire()` (the models ignore nothing the wire carried).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer
from pydantic.alias_generators import to_camel

from analytics_sdk._serialization import format_time

__all__ = [
    "AliasMessage",
    "GroupMessage",
    "IdentifyMessage",
    "Message",
    "PageMessage",
    "ScreenMessage",
    "TrackMessage",
    "parse_message",
]

JsonDict = dict[str, Any]


class Message(BaseModel):
    """Fields shared by all six calls. Validation guarantees a userId or an anonymousId."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        extra="allow",  # the wire may carry more (sentAt, custom fields): keep, don't fail
        frozen=True,  # every integration gets the same instance; nobody may rebind fields
    )

    type: str
    message_id: str
    user_id: str | None = None
    anonymous_id: str | None = None
    context: JsonDict = Field(default_factory=dict)
    integrations: JsonDict = Field(default_factory=dict)
    channel: str | None = None
    original_timestamp: datetime | None = None
    timestamp: datetime | None = None  # given by the caller (a back-fill), else None

    @field_serializer("original_timestamp", "timestamp", when_used="json-unless-none")
    def _wire_time(self, value: datetime) -> str:
        return format_time(value)  # the wire's own form: UTC, milliseconds, `Z`

    @property
    def distinct_id(self) -> str:
        """user_id when known, else anonymous_id: the id most destinations key on."""
        return self.user_id or self.anonymous_id or ""

    @property
    def event_time(self) -> datetime | None:
        """When it happened: the caller's timestamp if given, else the call time."""
        return self.timestamp or self.original_timestamp

    def to_wire(self) -> JsonDict:
        """The message as the data plane received it (camelCase, JSON values)."""
        wire: JsonDict = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return wire


class TrackMessage(Message):
    type: Literal["track"] = "track"
    event: str
    properties: JsonDict = Field(default_factory=dict)


class IdentifyMessage(Message):
    type: Literal["identify"] = "identify"
    traits: JsonDict = Field(default_factory=dict)


class _ViewMessage(Message):
    """What page and screen calls share: a view, named and categorized."""

    name: str | None = None
    category: str | None = None
    properties: JsonDict = Field(default_factory=dict)


class PageMessage(_ViewMessage):
    type: Literal["page"] = "page"


class ScreenMessage(_ViewMessage):
    type: Literal["screen"] = "screen"


class GroupMessage(Message):
    type: Literal["group"] = "group"
    group_id: str
    traits: JsonDict = Field(default_factory=dict)


class AliasMessage(Message):
    type: Literal["alias"] = "alias"
    previous_id: str


_BY_TYPE: dict[str, type[Message]] = {
    "track": TrackMessage,
    "identify": IdentifyMessage,
    "page": PageMessage,
    "screen": ScreenMessage,
    "group": GroupMessage,
    "alias": AliasMessage,
}


def parse_message(wire: JsonDict) -> Message:
    """The typed model of one wire message (raises pydantic's ValidationError if malformed)."""
    model = _BY_TYPE.get(str(wire.get("type")), Message)
    return model.model_validate(wire)
