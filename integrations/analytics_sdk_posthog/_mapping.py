"""Our six calls as PostHog calls: pure functions, no SDK and no I/O here.

What PostHog gets for each call is documented in this package's README (the mapping table);
keep the two in step.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from analytics_sdk.integration import RejectedMessage
from analytics_sdk.models import (
    AliasMessage,
    GroupMessage,
    IdentifyMessage,
    Message,
    PageMessage,
    ScreenMessage,
    TrackMessage,
)

__all__ = ["Alias", "Capture", "GroupIdentify", "PostHogCall", "event_uuid", "to_posthog"]

JsonDict = dict[str, Any]

# uuid5 namespace for messageIds that are not UUIDs: the same messageId always gives the same
# event uuid, so PostHog still deduplicates a message sent twice.
_MESSAGE_ID_NAMESPACE = uuid.UUID("6c1f6a5e-2b0e-5d8e-9a47-3f5d0c2b8e71")

# context.campaign field -> the utm_* property PostHog's web SDK records
_CAMPAIGN = {
    "source": "utm_source",
    "medium": "utm_medium",
    "name": "utm_campaign",
    "content": "utm_content",
    "term": "utm_term",
}


@dataclass(frozen=True)
class Capture:
    """`client.capture(event, distinct_id=..., properties=..., timestamp=..., uuid=...)`."""

    event: str
    distinct_id: str
    properties: JsonDict
    timestamp: datetime | None
    uuid: str


@dataclass(frozen=True)
class GroupIdentify:
    """`client.group_identify(group_type, group_key, properties, ...)`."""

    group_type: str
    group_key: str
    properties: JsonDict
    distinct_id: str
    timestamp: datetime | None
    uuid: str


@dataclass(frozen=True)
class Alias:
    """`client.alias(previous_id, distinct_id, ...)`."""

    previous_id: str
    distinct_id: str
    timestamp: datetime | None
    uuid: str


PostHogCall = Capture | GroupIdentify | Alias


def event_uuid(message_id: str) -> tuple[str, bool]:
    """The PostHog event uuid for a messageId, and whether it had to be derived.

    A messageId that is a UUID is the event uuid (canonical form). Any other messageId
    gives a uuid5 derived from it: stable, so PostHog's dedup by uuid still works.
    """
    try:
        return str(uuid.UUID(message_id)), False
    except ValueError:
        return str(uuid.uuid5(_MESSAGE_ID_NAMESPACE, message_id)), True


def to_posthog(message: Message, default_group_type: str) -> PostHogCall:
    """The PostHog call for one message; RejectedMessage when PostHog cannot take it."""
    event_id, _ = event_uuid(message.message_id)
    when = message.event_time
    match message:
        case TrackMessage():
            if not message.event.strip():
                raise RejectedMessage("a track call needs an event name for PostHog")
            properties = {**_context_properties(message), **message.properties}
            return Capture(message.event, message.distinct_id, properties, when, event_id)
        case IdentifyMessage():
            properties = _context_properties(message, set_traits=False)
            properties["$set"] = dict(message.traits)
            return Capture("$identify", message.distinct_id, properties, when, event_id)
        case PageMessage():
            properties = _page_properties(message)
            return Capture("$pageview", message.distinct_id, properties, when, event_id)
        case ScreenMessage():
            properties = {**_context_properties(message), **_view_names(message)}
            if message.name:
                properties["$screen_name"] = message.name
            properties.update(message.properties)
            return Capture("$screen", message.distinct_id, properties, when, event_id)
        case GroupMessage():
            traits = dict(message.traits)
            named = traits.pop("groupType", None)
            group_type = named.strip() if isinstance(named, str) and named.strip() else None
            return GroupIdentify(
                group_type or default_group_type,
                message.group_id,
                traits,
                message.distinct_id,
                when,
                event_id,
            )
        case AliasMessage():
            if not message.user_id:
                raise RejectedMessage("PostHog's alias needs a userId to merge previousId into")
            return Alias(message.previous_id, message.user_id, when, event_id)
    raise RejectedMessage(f"PostHog has no mapping for a {message.type!r} call")


def _context_properties(message: Message, *, set_traits: bool = True) -> JsonDict:
    """Event properties PostHog's own SDKs record, taken from the message's context."""
    context = message.context
    page = _mapping(context.get("page"))
    properties: JsonDict = {}
    _put(properties, "$current_url", page.get("url"))
    _put(properties, "$pathname", page.get("path"))
    _put(properties, "$referrer", page.get("referrer"))
    _put(properties, "$ip", context.get("ip"))
    _put(properties, "$device_id", _mapping(context.get("device")).get("id"))
    for field, key in _CAMPAIGN.items():
        _put(properties, key, _mapping(context.get("campaign")).get(field))
    if message.user_id and message.anonymous_id and message.user_id != message.anonymous_id:
        properties["$anon_distinct_id"] = message.anonymous_id  # links the anonymous person
    traits = _mapping(context.get("traits"))
    if set_traits and traits:
        properties["$set"] = dict(traits)  # keeps the person's properties current
    _put_host(properties)
    return properties


def _page_properties(message: PageMessage) -> JsonDict:
    """A page as $pageview properties: its url/path/referrer over the context's, then its own."""
    own = message.properties
    properties = {**_context_properties(message), **_view_names(message)}
    _put(properties, "$current_url", own.get("url"))
    _put(properties, "$pathname", own.get("path"))
    _put(properties, "$referrer", own.get("referrer"))
    url = properties.get("$current_url")
    if isinstance(url, str) and "$pathname" not in properties:
        _put(properties, "$pathname", urlsplit(url).path)
    _put_host(properties)
    properties.update(own)
    return properties


def _view_names(message: PageMessage | ScreenMessage) -> JsonDict:
    names: JsonDict = {}
    _put(names, "name", message.name)
    _put(names, "category", message.category)
    return names


def _put_host(properties: JsonDict) -> None:
    url = properties.get("$current_url")
    if isinstance(url, str):
        _put(properties, "$host", urlsplit(url).netloc or None)


def _put(target: JsonDict, key: str, value: Any) -> None:
    if value is not None and value != "":
        target[key] = value


def _mapping(value: Any) -> JsonDict:
    return value if isinstance(value, dict) else {}
