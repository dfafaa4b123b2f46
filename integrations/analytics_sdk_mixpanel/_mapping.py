"""Our six calls as Mixpanel records, built by the Mixpanel SDK itself (no I/O here).

`Mapper.records(message)` drives a `mixpanel.Mixpanel` whose consumer only collects what the
SDK serialised, so payload shapes (`token`, `mp_lib`, `$token`, `$set`, `$group_key`...) stay
the SDK's; the integration sends the collected records in batches and maps failures back to
the messages they came from.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeGuard

import mixpanel

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

if TYPE_CHECKING:
    from analytics_sdk_mixpanel import MixpanelOptions

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
TRACK_MAX_AGE = timedelta(days=5)  # Mixpanel's /track refuses older events; /import takes them
_INSERT_ID = re.compile(r"[A-Za-z0-9-]{1,36}")  # what Mixpanel accepts as $insert_id
_RESERVED_EVENT_PROPERTIES = ("token", "distinct_id")  # would override the SDK's own values
# Identify traits Mixpanel shows as built-in profile fields (RudderStack's device mode names).
_TRAIT_ALIASES = {
    "email": "$email",
    "phone": "$phone",
    "name": "$name",
    "firstName": "$first_name",
    "first_name": "$first_name",
    "lastName": "$last_name",
    "last_name": "$last_name",
    "username": "$username",
    "created": "$created",
    "createdAt": "$created",
    "lastSeen": "$last_seen",
}


@dataclass(frozen=True)
class Record:
    """One Mixpanel record: its SDK endpoint name, its JSON, and the message it came from."""

    endpoint: str  # "events" | "people" | "groups" | "imports", as mixpanel.Consumer names them
    body: str
    message_id: str


class _Collector:
    """The consumer handed to `mixpanel.Mixpanel`: it keeps what the SDK built, sends nothing."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(
        self, endpoint: str, json_message: str, api_key: Any = None, api_secret: Any = None
    ) -> None:
        self.sent.append((endpoint, json_message))


class Mapper:
    """Builds the records for one message; raises `RejectedMessage` when there are none."""

    def __init__(self, options: MixpanelOptions, can_import: bool) -> None:
        self._options = options
        self._can_import = can_import  # an API secret or a service account is configured
        self._collector = _Collector()
        self._sdk = mixpanel.Mixpanel(options.token.get_secret_value(), consumer=self._collector)

    def records(self, message: Message, now: datetime | None = None) -> list[Record]:
        self._collector.sent.clear()
        match message:
            case TrackMessage():
                self._track(message, now or datetime.now(timezone.utc))
            case IdentifyMessage():
                self._identify(message)
            case PageMessage() | ScreenMessage():
                self._view(message, now or datetime.now(timezone.utc))
            case GroupMessage():
                self._group(message)
            case AliasMessage():
                self._alias(message)
            case _:
                raise RejectedMessage(f"Mixpanel has no mapping for a {message.type!r} call")
        return [Record(e, body, message.message_id) for e, body in self._collector.sent]

    # -- the calls ---------------------------------------------------------------------------

    def _track(self, message: TrackMessage, now: datetime) -> None:
        properties = self._event_properties(message, message.properties)
        self._send_event(message, message.event, properties, now)
        if self._options.people:
            self._track_people(message)

    def _track_people(self, message: TrackMessage) -> None:
        distinct_id, meta = self._distinct_id(message), self._profile_meta(message)
        increments: dict[str, float] = {}
        if message.event in self._options.event_increments:
            increments[message.event] = 1
            self._sdk.people_set(distinct_id, {f"Last {message.event}": _iso(message)}, meta)
        for name in self._options.prop_increments:
            value = message.properties.get(name)
            if _is_number(value) and value:
                increments[name] = value
        if increments:
            self._sdk.people_increment(distinct_id, increments, meta)
        revenue = _number(message.properties.get("revenue"))
        if revenue is not None:
            charge = {"$time": _iso(message)}
            self._sdk.people_track_charge(distinct_id, revenue, charge, meta)

    def _identify(self, message: IdentifyMessage) -> None:
        options = self._options
        if (
            options.identity_merge_api == "original"
            and self._can_import
            and message.user_id
            and message.anonymous_id
            and message.user_id != message.anonymous_id
        ):
            # Original ID Merge links the anonymous history to the user (needs /import).
            self._sdk.merge(None, message.user_id, message.anonymous_id)
        if not options.people:
            if not self._collector.sent:
                raise RejectedMessage(
                    "identify sends nothing to Mixpanel while people is off "
                    "(turn on people to update profiles)"
                )
            return
        traits = {**_mapping(message.context.get("traits")), **message.traits}
        once = {
            _TRAIT_ALIASES.get(k, k): v
            for k, v in traits.items()
            if k in options.set_once_properties
        }
        chosen = {
            _TRAIT_ALIASES.get(k, k): v
            for k, v in traits.items()
            if k not in options.set_once_properties
            and (
                options.set_all_traits_by_default
                or k in _TRAIT_ALIASES
                or k in options.people_properties
            )
        }
        if "$name" not in chosen and "$name" not in once:
            parts = (traits.get("firstName") or traits.get("first_name"),
                     traits.get("lastName") or traits.get("last_name"))  # fmt: skip
            full = " ".join(str(part) for part in parts if part)
            if full:
                chosen["$name"] = full
        distinct_id, meta = self._distinct_id(message), self._profile_meta(message)
        if chosen:
            self._sdk.people_set(distinct_id, chosen, meta)
        if once:
            self._sdk.people_set_once(distinct_id, once, meta)
        if not self._collector.sent:
            raise RejectedMessage("identify has no traits to set on the Mixpanel profile")

    def _view(self, message: PageMessage | ScreenMessage, now: datetime) -> None:
        kind = "Page" if message.type == "page" else "Screen"
        options, name, category = self._options, message.name, message.category
        if options.consolidated_page_calls:
            event = f"Loaded a {kind}"
        elif options.track_categorized_pages and category:
            event = f"Viewed {category} {name} {kind}" if name else f"Viewed {category} {kind}"
        elif options.track_named_pages and name:
            event = f"Viewed {name} {kind}"
        else:
            raise RejectedMessage(
                f"no Mixpanel event for this {message.type}: consolidatedPageCalls is off and "
                "trackCategorizedPages/trackNamedPages need a category/name it does not have"
            )
        extra = {k: v for k, v in (("name", name), ("category", category)) if v is not None}
        properties = self._event_properties(message, {**message.properties, **extra})
        self._send_event(message, event, properties, now)

    def _group(self, message: GroupMessage) -> None:
        keys = self._options.group_key_settings
        if not keys:
            raise RejectedMessage(
                "groupKeySettings is empty: Mixpanel needs a group key for group calls"
            )
        meta = {"$time": _seconds(when)} if (when := _when(message)) else {}
        for key in keys:
            self._sdk.group_set(key, message.group_id, dict(message.traits), meta)
        if self._options.people:
            # The user's profile lists its groups: union, so other groups are kept.
            union = {key: [message.group_id] for key in keys}
            self._sdk.people_union(self._distinct_id(message), union, self._profile_meta(message))

    def _alias(self, message: AliasMessage) -> None:
        if self._options.identity_merge_api == "simplified":
            raise RejectedMessage(
                "alias is not supported with Simplified ID Merge (identityMergeApi: simplified)"
            )
        if not message.user_id:
            raise RejectedMessage("alias needs a userId (the new id) for Mixpanel's $create_alias")
        if message.user_id == message.previous_id:
            raise RejectedMessage("alias previousId equals userId: nothing to link")
        # Built as an event, not with Mixpanel.alias(): that one sends at once through a
        # Consumer of its own (default host, no timeout), bypassing residency and batching.
        properties: dict[str, Any] = {"alias": message.user_id}
        properties.update(self._ids_and_time(message))
        self._sdk.track(message.previous_id, "$create_alias", properties)

    # -- helpers -----------------------------------------------------------------------------

    def _send_event(
        self, message: Message, event: str, properties: dict[str, Any], now: datetime
    ) -> None:
        distinct_id, when = self._distinct_id(message), _when(message)
        if self._can_import:
            time = properties.setdefault("time", _ms(when or now))
            self._sdk.import_data(None, distinct_id, event, time, properties)
            return
        if when is not None and now - when > TRACK_MAX_AGE:
            raise RejectedMessage(
                f"the event is {(now - when).days} days old: Mixpanel's /track refuses events "
                "older than 5 days (set apiSecret or a service account to use /import)"
            )
        self._sdk.track(distinct_id, event, properties)

    def _event_properties(self, message: Message, given: Mapping[str, Any]) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        ip = message.context.get("ip")
        if isinstance(ip, str) and ip:
            properties["ip"] = ip  # geolocation from the end user's address, not ours
        for key, value in _mapping(message.context.get("campaign")).items():
            properties["utm_campaign" if key == "name" else f"utm_{key}"] = value
        properties.update((k, v) for k, v in given.items() if k not in _RESERVED_EVENT_PROPERTIES)
        if self._options.source_name:
            properties["rudderstack_source_name"] = self._options.source_name
        properties.update(self._ids_and_time(message))
        return properties

    def _ids_and_time(self, message: Message) -> dict[str, Any]:
        ids: dict[str, Any] = {"$insert_id": insert_id(message.message_id)}
        when = _when(message)
        if when is not None:
            ids["time"] = _ms(when)  # Mixpanel takes seconds or ms: ms keeps the precision
        if self._options.identity_merge_api == "simplified":
            if message.anonymous_id:
                ids["$device_id"] = message.anonymous_id
            if message.user_id:
                ids["$user_id"] = message.user_id
        return ids

    def _distinct_id(self, message: Message) -> str:
        if self._options.identity_merge_api == "simplified" and not message.user_id:
            return f"$device:{message.anonymous_id}"
        return message.distinct_id

    def _profile_meta(self, message: Message) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        when = _when(message)
        if when is not None:
            meta["$time"] = _seconds(when)  # engage orders updates by $time, in seconds
        ip = message.context.get("ip")
        if isinstance(ip, str) and ip:
            meta["$ip"] = ip
        return meta


def insert_id(message_id: str) -> str:
    """The messageId when Mixpanel accepts it as `$insert_id`, else a stable uuid5 of it."""
    if _INSERT_ID.fullmatch(message_id):
        return message_id
    return str(uuid.uuid5(uuid.NAMESPACE_OID, message_id))


def _mapping(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: object) -> float | None:
    """A revenue amount: a number or a numeric string; None when absent or not a number."""
    if _is_number(value):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _when(message: Message) -> datetime | None:
    """The message's own time, timezone-aware (a time without an offset is taken as UTC)."""
    when = message.event_time
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when


def _ms(when: datetime) -> int:
    return (when - _EPOCH) // timedelta(milliseconds=1)  # exact: no float rounding


def _seconds(when: datetime) -> float:
    return round(when.timestamp(), 3)


def _iso(message: Message) -> str:
    """Mixpanel's profile date format (UTC, no offset), from the message's own time."""
    when = _when(message) or datetime.now(timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
