"""Our six calls as Amplitude SDK calls: what each message becomes (the README has the table).

One message may become several Amplitude events (a page tracked by name and by category, an
order and its products, a group and its properties). The first carries the messageId as its
insert_id, Amplitude's dedup key; the n-th extra one carries `{messageId}-{n}`, so a message
sent twice is counted once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from amplitude import BaseEvent, EventOptions, Identify, Revenue

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
    from analytics_sdk_amplitude import AmplitudeOptions

__all__ = ["DEFAULT_GROUP_TYPE", "PRODUCT_EVENT", "EventMapper", "Send"]

DEFAULT_GROUP_TYPE = "[Rudderstack] Group"  # RudderStack's device mode uses it: same data
PRODUCT_EVENT = "Product Purchased"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MILLISECOND = timedelta(milliseconds=1)

# Amplitude event field: where it is in the message's context.
_CONTEXT_TEXT: dict[str, tuple[str, ...]] = {
    "ip": ("ip",),
    "user_agent": ("userAgent",),
    "app_version": ("app", "version"),
    "os_name": ("os", "name"),
    "os_version": ("os", "version"),
    "device_model": ("device", "model"),
    "device_manufacturer": ("device", "manufacturer"),
    "carrier": ("network", "carrier"),
    "language": ("locale",),
    "country": ("location", "country"),
    "region": ("location", "region"),
    "city": ("location", "city"),
}
_CONTEXT_NUMBER: dict[str, tuple[str, ...]] = {
    "location_lat": ("location", "latitude"),
    "location_lng": ("location", "longitude"),
}


@dataclass(frozen=True)
class Send:
    """One call on the `amplitude.Amplitude` client, for the event with `insert_id`."""

    insert_id: str
    method: str  # "track", "identify", "revenue", "set_group" or "group_identify"
    args: tuple[Any, ...]

    def __call__(self, client: Any) -> None:
        getattr(client, self.method)(*self.args)


class EventMapper:
    """Turns messages into the Amplitude SDK calls that deliver them (see the module doc).

    `plan()` raises `RejectedMessage` for a message Amplitude cannot take as it is.
    """

    def __init__(self, options: AmplitudeOptions) -> None:
        self._options = options
        # trait -> Identify method; a trait named in several lists gets the first listed here
        self._trait_ops: dict[str, str] = {}
        for method, refs in (
            ("prepend", options.traits_to_prepend),
            ("append", options.traits_to_append),
            ("set_once", options.traits_to_set_once),
            ("add", options.traits_to_increment),
        ):
            for ref in refs:
                if ref.traits:
                    self._trait_ops[ref.traits] = method

    def plan(self, message: Message) -> list[Send]:
        match message:
            case TrackMessage():
                return self._track(message)
            case IdentifyMessage():
                return self._identify(message)
            case PageMessage():
                return self._page(message)
            case ScreenMessage():
                return self._screen(message)
            case GroupMessage():
                return self._group(message)
            case AliasMessage():
                raise RejectedMessage(
                    "Amplitude has no alias call: its SDK cannot merge user ids "
                    "(that is Amplitude's separate user-mapping API); not sent"
                )
        raise RejectedMessage(f"unknown call type {message.type!r}")

    # -- the calls ---------------------------------------------------------------------------

    def _track(self, message: TrackMessage) -> list[Send]:
        if not message.event.strip():
            raise RejectedMessage("Amplitude needs an event name (event_type); it is empty")
        properties = dict(message.properties)
        _check(properties, "properties")
        revenue = _number(properties.get("revenue"))
        if revenue is None:  # not a purchase: the event as it is, products included
            return [self._event(message, 0, message.event, properties)]
        revenue_type = _text(properties.get("revenueType")) or _text(properties.get("revenue_type"))
        products = _products(properties.get("products"))
        if not products:
            order = _revenue_fields(properties, revenue_type)
            return [self._event(message, 0, message.event, properties, order)]
        per_product = self._options.track_revenue_per_product
        once = self._options.track_products_once
        main = properties if once else {k: v for k, v in properties.items() if k != "products"}
        order = {} if per_product else _revenue_fields(properties, revenue_type)
        sends = [self._event(message, 0, message.event, main, order)]
        for n, product in enumerate(products, start=1):
            fields = _revenue_fields(product, revenue_type) if per_product else {}
            if not once:
                sends.append(self._event(message, n, PRODUCT_EVENT, product, fields))
            elif fields:  # products tracked once: their revenue as Amplitude revenue events
                revenue_of = Revenue(
                    price=fields["price"],
                    quantity=fields["quantity"],
                    product_id=fields.get("product_id"),
                    revenue_type=fields.get("revenue_type"),
                    properties=product,
                    revenue=fields["revenue"],
                    currency=fields.get("currency"),
                )
                options = EventOptions(**self._common(message, n))
                sends.append(Send(_insert_id(message, n), "revenue", (revenue_of, options)))
        return sends

    def _identify(self, message: IdentifyMessage) -> list[Send]:
        identify = self._user_operations(message.traits)
        if identify is None:
            raise RejectedMessage("an identify without traits has nothing to set in Amplitude")
        options = EventOptions(**self._common(message, 0))
        return [Send(_insert_id(message, 0), "identify", (identify, options))]

    def _page(self, message: PageMessage) -> list[Send]:
        properties = _with_view_fields(message.properties, message.name, message.category)
        _check(properties, "properties")
        names: list[str] = []
        if self._options.track_all_pages:
            names.append("Loaded a Page")
        if self._options.track_categorized_pages and message.category:
            names.append(f"Viewed {message.category} Page")
        if self._options.track_named_pages and message.name:
            names.append(f"Viewed {message.name} Page")
        if not names:
            raise RejectedMessage(
                "no Amplitude event for this page: the options track none of its kind "
                "(trackAllPages, trackNamedPages, trackCategorizedPages)"
            )
        return [self._event(message, n, name, properties) for n, name in enumerate(names)]

    def _screen(self, message: ScreenMessage) -> list[Send]:
        properties = _with_view_fields(message.properties, message.name, message.category)
        _check(properties, "properties")
        name = f"Viewed {message.name} Screen" if message.name else "Loaded a Screen"
        return [self._event(message, 0, name, properties)]

    def _group(self, message: GroupMessage) -> list[Send]:
        group_type, group_value = self._group_of(message)
        options = EventOptions(**self._common(message, 0))
        sends = [Send(_insert_id(message, 0), "set_group", (group_type, group_value, options))]
        traits = {k: v for k, v in message.traits.items() if v is not None}
        if traits:
            _check(traits, "group traits")
            properties = Identify()
            for key, value in traits.items():
                properties.set(key, value)
            options = EventOptions(**self._common(message, 1))
            sends.append(
                Send(
                    _insert_id(message, 1),
                    "group_identify",
                    (group_type, group_value, properties, options),
                )
            )
        return sends

    # -- helpers -----------------------------------------------------------------------------

    def _event(
        self,
        message: Message,
        n: int,
        event_type: str,
        properties: dict[str, Any],
        revenue: dict[str, Any] | None = None,
    ) -> Send:
        fields = {**self._common(message, n), **(revenue or {})}
        event = BaseEvent(event_type, event_properties=properties, **fields)
        return Send(fields["insert_id"], "track", (event,))

    def _common(self, message: Message, n: int) -> dict[str, Any]:
        """Ids, time and device fields every Amplitude event of `message` carries."""
        fields: dict[str, Any] = {"insert_id": _insert_id(message, n)}
        if message.user_id:
            fields["user_id"] = message.user_id
        if message.anonymous_id:
            fields["device_id"] = message.anonymous_id
        when = message.event_time
        if when is not None:
            fields["time"] = _millis(when)
        for field, path in _CONTEXT_TEXT.items():
            value = _text(_lookup(message.context, path))
            if value:
                fields[field] = value
        for field, path in _CONTEXT_NUMBER.items():
            number = _number(_lookup(message.context, path))
            if number is not None:
                fields[field] = number
        session = message.context.get("sessionId")
        if isinstance(session, int) and not isinstance(session, bool):
            fields["session_id"] = session
        if "app_version" not in fields and self._options.version_name:
            fields["app_version"] = self._options.version_name
        return fields

    def _user_operations(self, traits: Mapping[str, Any]) -> Identify | None:
        """An Identify with one operation per trait ($set unless an option says otherwise)."""
        values = {k: v for k, v in traits.items() if v is not None}
        if not values:
            return None
        _check(values, "traits")
        identify = Identify()
        for key, value in values.items():
            method = self._trait_ops.get(key, "set")
            if method == "add" and _number(value) is None:
                raise RejectedMessage(f"trait {key!r} is in traitsToIncrement but is no number")
            getattr(identify, method)(key, _number(value) if method == "add" else value)
        return identify

    def _group_of(self, message: GroupMessage) -> tuple[str, str]:
        """The Amplitude group type and name: from the traits the options name, or groupId."""
        type_trait = self._options.group_type_trait
        value_trait = self._options.group_value_trait
        if not (type_trait and value_trait):
            return DEFAULT_GROUP_TYPE, message.group_id
        group_type = _text(message.traits.get(type_trait))
        raw = message.traits.get(value_trait)
        group_value = _text(raw) or (_format_number(raw) if _number(raw) is not None else None)
        if not (group_type and group_value):
            raise RejectedMessage(
                f"the group traits lack a text {type_trait!r} (groupTypeTrait) or a text or "
                f"number {value_trait!r} (groupValueTrait)"
            )
        return group_type, group_value


# -- values ------------------------------------------------------------------------------------


def _insert_id(message: Message, n: int) -> str:
    return message.message_id if n == 0 else f"{message.message_id}-{n}"


def _millis(when: datetime) -> int:
    """Milliseconds since the epoch, exactly (no float rounding); naive means UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (when - _EPOCH) // _MILLISECOND


def _lookup(data: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = data
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _number(value: Any) -> float | None:
    """A finite number from an int, a float or a numeric string ("25.50"); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _format_number(value: Any) -> str:
    number = _number(value)
    assert number is not None
    return str(int(number)) if number.is_integer() else str(number)


def _count(value: Any) -> int | None:
    number = _number(value)
    if number is None or number <= 0 or not number.is_integer():
        return None
    return int(number)


def _revenue_fields(values: Mapping[str, Any], revenue_type: str | None) -> dict[str, Any]:
    """Amplitude's revenue fields for an order or a product; {} without revenue or price.

    price and quantity come from the values when a price is there, else price = revenue and
    quantity = 1; revenue is the values' revenue, else price * quantity.
    """
    revenue = _number(values.get("revenue"))
    price = _number(values.get("price"))
    quantity = _count(values.get("quantity")) or 1
    if price is None:
        if revenue is None:
            return {}
        price, quantity = revenue, 1
    fields: dict[str, Any] = {
        "price": price,
        "quantity": quantity,
        "revenue": revenue if revenue is not None else price * quantity,
    }
    product_id = values.get("product_id", values.get("productId"))
    if isinstance(product_id, (str, int)) and not isinstance(product_id, bool):
        fields["product_id"] = str(product_id)
    kind = _text(values.get("revenueType")) or _text(values.get("revenue_type")) or revenue_type
    if kind:
        fields["revenue_type"] = kind
    currency = _text(values.get("currency"))
    if currency:
        fields["currency"] = currency
    return fields


def _products(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        return []
    return [dict(item) for item in value if isinstance(item, dict)]


def _with_view_fields(
    properties: Mapping[str, Any], name: str | None, category: str | None
) -> dict[str, Any]:
    """The view's properties plus its name and category (the properties' own values win)."""
    result = dict(properties)
    if name:
        result.setdefault("name", name)
    if category:
        result.setdefault("category", category)
    return result


def _check(values: Mapping[str, Any], what: str) -> None:
    """Reject what Amplitude's SDK would drop silently: the whole dict, for one bad value."""
    refused = [key for key, value in values.items() if not _acceptable(value)]
    if refused:
        raise RejectedMessage(
            f"Amplitude's SDK refuses {what} holding a null or a list inside a list: "
            + ", ".join(repr(key) for key in refused)
        )


def _acceptable(value: Any, in_list: bool = False) -> bool:
    """The SDK's property rules: JSON values, but no list in a list and no null in a list."""
    if value is None:
        return not in_list
    if isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, dict):
        return all(isinstance(k, str) and _acceptable(v) for k, v in value.items())
    if isinstance(value, list):
        return not in_list and all(_acceptable(item, in_list=True) for item in value)
    return False
