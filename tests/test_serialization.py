"""Caller values -> JSON (DESIGN 4, LESSONS 13) and the SDK's clock and ids (LESSONS 14).

`clean()` is tested on its own for every rule, then the same values go through a real
client to a real data plane, so the wire is what the tests read.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from datetime import time as dt_time
from decimal import Decimal
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Any

import pytest
from conftest import MakeClient
from pydantic import BaseModel
from support.servers import DataPlane

from analytics_sdk import AnalyticsError, InvalidMessageError, Reason
from analytics_sdk._serialization import MAX_DEPTH, clean, format_time, now_iso, uuid4

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
IST = timezone(timedelta(hours=5, minutes=30))


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Plan(str, enum.Enum):  # StrEnum before 3.11
    PRO = "pro"


@dataclasses.dataclass
class Item:
    sku: str
    qty: int
    tags: tuple[str, ...]
    added: date


class Subscription(BaseModel):
    plan: str
    price: Decimal
    renews: datetime


class FakeArray:
    """Quacks like a numpy array or scalar: `dtype` and `tolist()`, nothing imported."""

    def __init__(self, values: Any, dtype: str = "int64") -> None:
        self._values = values
        self.dtype = dtype

    def tolist(self) -> Any:
        return self._values


class Opaque:
    pass


def nested(levels: int) -> dict[str, Any]:
    """`levels` dicts, each inside the one before: nested(1) == {}."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def rejected(value: Any, field: str = "properties") -> InvalidMessageError:
    with pytest.raises(InvalidMessageError) as info:
        clean(value, field)
    assert info.value.reason == Reason.SERIALIZATION_ERROR
    return info.value


# -- clean(): conversions -------------------------------------------------------------------


def test_aware_datetime_is_converted_to_utc_with_milliseconds() -> None:
    value = datetime(2024, 5, 6, 12, 30, 15, 123456, tzinfo=IST)

    assert clean({"at": value}, "properties") == {"at": "2024-05-06T07:00:15.123Z"}


def test_naive_datetime_is_taken_as_utc() -> None:
    value = datetime(2024, 5, 6, 12, 30, 15, 123456)

    assert clean({"at": value}, "properties") == {"at": "2024-05-06T12:30:15.123Z"}


def test_format_time_truncates_microseconds_without_rolling_over() -> None:
    assert format_time(datetime(2024, 12, 31, 23, 59, 59, 999999)) == "2024-12-31T23:59:59.999Z"
    assert format_time(datetime(2024, 1, 1, 0, 0, 0, 0, tzinfo=timezone.utc)) == (
        "2024-01-01T00:00:00.000Z"
    )
    assert format_time(datetime(2024, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))) == (
        "2023-12-31T23:00:00.000Z"
    )


def test_date_and_time_are_iso_8601() -> None:
    assert clean({"d": date(2024, 2, 29), "t": dt_time(8, 5, 1)}, "properties") == {
        "d": "2024-02-29",
        "t": "08:05:01",
    }


def test_decimal_is_a_json_number() -> None:
    cleaned = clean({"price": Decimal("10.50"), "n": Decimal("3")}, "properties")

    assert cleaned == {"price": 10.5, "n": 3.0}
    assert type(cleaned["price"]) is float


@pytest.mark.parametrize("value", ["NaN", "sNaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_decimal_is_rejected(value: str) -> None:
    error = rejected({"price": Decimal(value)})

    assert error.field == "properties.price"


def test_uuid_is_its_string() -> None:
    value = uuid.UUID("12345678-1234-5678-1234-567812345678")

    assert clean({"id": value}, "properties") == {"id": "12345678-1234-5678-1234-567812345678"}


def test_enums_are_their_values() -> None:
    cleaned = clean({"color": Color.RED, "level": Level.HIGH, "plan": Plan.PRO}, "properties")

    assert cleaned == {"color": "red", "level": 3, "plan": "pro"}
    assert type(cleaned["level"]) is int  # not the IntEnum: json would write "Level.HIGH"
    assert type(cleaned["plan"]) is str
    assert json.dumps(cleaned) == '{"color": "red", "level": 3, "plan": "pro"}'


def test_sets_tuples_and_frozensets_are_lists() -> None:
    cleaned = clean(
        {"s": {3, 1, 2}, "t": (1, "two"), "f": frozenset({"x"}), "nested": [(1, 2)]},
        "properties",
    )

    assert sorted(cleaned["s"]) == [1, 2, 3]
    assert type(cleaned["s"]) is list
    assert cleaned["t"] == [1, "two"]
    assert cleaned["f"] == ["x"]
    assert cleaned["nested"] == [[1, 2]]


def test_bytes_are_utf8_text() -> None:
    cleaned = clean(
        {"b": "héllo".encode(), "ba": bytearray(b"abc"), "mv": memoryview(b"xyz")}, "properties"
    )

    assert cleaned == {"b": "héllo", "ba": "abc", "mv": "xyz"}


def test_invalid_utf8_bytes_are_rejected() -> None:
    error = rejected({"blob": b"\xff\xfe\x00"})

    assert error.field == "properties.blob"
    assert "UTF-8" in str(error)


def test_dataclass_is_an_object_with_its_values_converted() -> None:
    item = Item(sku="A-1", qty=2, tags=("new", "sale"), added=date(2024, 1, 2))

    assert clean({"item": item}, "properties") == {
        "item": {"sku": "A-1", "qty": 2, "tags": ["new", "sale"], "added": "2024-01-02"}
    }


def test_pydantic_model_is_an_object_with_its_values_converted() -> None:
    sub = Subscription(plan="pro", price=Decimal("9.90"), renews=datetime(2025, 1, 1, 0, 0))

    assert clean({"sub": sub}, "traits") == {
        "sub": {"plan": "pro", "price": 9.9, "renews": "2025-01-01T00:00:00.000Z"}
    }


def test_numpy_like_values_are_duck_typed() -> None:
    cleaned = clean(
        {
            "array": FakeArray([[1, 2], [3, 4]]),
            "scalar": FakeArray(1.5, dtype="float64"),
            "count": FakeArray(7),
        },
        "properties",
    )

    assert cleaned == {"array": [[1, 2], [3, 4]], "scalar": 1.5, "count": 7}


def test_numpy_like_nan_is_rejected() -> None:
    error = rejected({"score": FakeArray(float("nan"), dtype="float64")})

    assert error.field == "properties.score"


def test_path_and_mapping_types_are_converted() -> None:
    cleaned = clean(
        {"path": PurePosixPath("/tmp/x.csv"), "map": MappingProxyType({"k": (1,)})}, "context"
    )

    assert cleaned == {"path": "/tmp/x.csv", "map": {"k": [1]}}


def test_int_keys_become_strings() -> None:
    assert clean({"by_id": {1: "a", 20: "b"}}, "properties") == {"by_id": {"1": "a", "20": "b"}}


def test_tuple_keys_are_rejected_naming_the_path() -> None:
    error = rejected({"grid": {(1, 2): "x"}})

    assert error.field is not None
    assert error.field.startswith("properties.grid")
    assert "tuple" in str(error)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_rejected_with_the_key_path(bad: float) -> None:
    error = rejected({"a": {"b": [1.0, bad]}})

    assert error.field == "properties.a.b[1]"
    assert str(error).startswith("properties.a.b[1]: ")


def test_dict_cycle_is_rejected_with_the_path() -> None:
    value: dict[str, Any] = {"ok": 1, "inner": {}}
    value["inner"]["back"] = value

    error = rejected(value)

    assert error.field == "properties.inner.back"
    assert "cycle" in str(error)


def test_list_cycle_is_rejected_with_the_path() -> None:
    items: list[Any] = [1]
    items.append(items)

    error = rejected({"items": items})

    assert error.field == "properties.items[1]"
    assert "cycle" in str(error)


def test_dataclass_cycle_is_rejected_not_recursed_forever() -> None:
    @dataclasses.dataclass
    class Node:
        child: Any = None

    node = Node()
    node.child = node

    error = rejected({"node": node})

    assert error.field is not None
    assert error.field.startswith("properties.node.child")


def test_shared_value_that_is_not_a_cycle_is_accepted() -> None:
    shared = [Decimal("1.5")]

    assert clean({"a": shared, "b": shared, "c": [shared, shared]}, "properties") == {
        "a": [1.5],
        "b": [1.5],
        "c": [[1.5], [1.5]],
    }


def test_nesting_up_to_the_depth_limit_is_accepted() -> None:
    assert MAX_DEPTH == 64
    value = nested(MAX_DEPTH)  # properties itself and 63 levels below it

    assert clean(value, "properties") is value


@pytest.mark.parametrize("levels", [MAX_DEPTH + 2, 1000])
def test_nesting_deeper_than_64_levels_is_rejected(levels: int) -> None:
    error = rejected(nested(levels))

    assert "64" in str(error)
    assert error.field is not None
    assert error.field.startswith("properties.a.a.a")


def test_deep_list_nesting_is_rejected_too() -> None:
    value: list[Any] = [Decimal(1)]
    for _ in range(200):
        value = [value]

    error = rejected({"deep": value})

    assert error.field is not None
    assert error.field.startswith("properties.deep[0][0]")


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"name": "ok \ud800 broken"}, "properties.name"),
        ({"list": ["fine", "\udfff"]}, "properties.list[1]"),
    ],
)
def test_lone_surrogates_are_rejected(value: dict[str, Any], field: str) -> None:
    error = rejected(value)

    assert error.field == field
    assert "surrogate" in str(error)


def test_lone_surrogate_in_a_key_is_rejected() -> None:
    error = rejected({"k\ud800": 1})

    assert error.field is not None
    assert error.field.startswith("properties.k")
    str(error).encode("utf-8")  # the error message itself stays valid UTF-8


def test_unknown_object_is_rejected_naming_the_path_and_type() -> None:
    error = rejected({"order": {"lines": [1, Opaque()]}})

    assert error.field == "properties.order.lines[1]"
    assert "Opaque" in str(error)


def test_non_ascii_text_is_kept() -> None:
    value = {"city": "Zürich", "emoji": "🎉", "ключ": "значение"}

    assert clean(value, "properties") == value


# -- clean(): identity, copies, and never mutating the caller ------------------------------


def test_plain_json_is_returned_as_the_very_same_object() -> None:
    value = {"a": 1, "b": [1, 2.5, None, True, "x"], "c": {"d": {"e": "f"}}}

    assert clean(value, "properties") is value


def test_value_needing_conversion_returns_a_copy_and_leaves_the_original() -> None:
    inner = {"when": datetime(2024, 1, 1), "ids": (1, 2)}
    value = {"inner": inner, "price": Decimal("1.25"), "plain": {"x": 1}}
    before = copy.deepcopy(value)

    cleaned = clean(value, "properties")

    assert cleaned is not value
    assert cleaned["inner"] is not inner
    assert cleaned == {
        "inner": {"when": "2024-01-01T00:00:00.000Z", "ids": [1, 2]},
        "price": 1.25,
        "plain": {"x": 1},
    }
    assert value == before
    assert type(value["price"]) is Decimal
    assert type(inner["ids"]) is tuple


# -- the same rules through a client and a real data plane --------------------------------


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (datetime(2024, 5, 6, 12, 30, 15, 123456, tzinfo=IST), "2024-05-06T07:00:15.123Z"),
        (datetime(2024, 5, 6, 12, 30, 15, 123456), "2024-05-06T12:30:15.123Z"),
        (date(2024, 2, 29), "2024-02-29"),
        (Decimal("10.50"), 10.5),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (Color.RED, "red"),
        (Level.HIGH, 3),
        (Plan.PRO, "pro"),
        ({"b", "a"}, ["a", "b"]),
        ((1, 2), [1, 2]),
        (frozenset({5}), [5]),
        (b"bytes", "bytes"),
        (
            Item(sku="A", qty=1, tags=(), added=date(2024, 1, 1)),
            {"sku": "A", "qty": 1, "tags": [], "added": "2024-01-01"},
        ),
        (
            Subscription(plan="pro", price=Decimal("5"), renews=datetime(2025, 1, 1)),
            {"plan": "pro", "price": 5.0, "renews": "2025-01-01T00:00:00.000Z"},
        ),
        (FakeArray([1, 2, 3]), [1, 2, 3]),
        ({1: "one"}, {"1": "one"}),
    ],
    ids=[
        "aware",
        "naive",
        "date",
        "decimal",
        "uuid",
        "enum",
        "intenum",
        "strenum",
        "set",
        "tuple",
        "frozenset",
        "bytes",
        "dataclass",
        "pydantic",
        "numpy-like",
        "int-keys",
    ],
)
def test_rich_values_arrive_as_json(
    make_client: MakeClient, data_plane: DataPlane, value: Any, wire: Any
) -> None:
    client = make_client()

    assert client.track("u1", "Typed", {"v": value}) is not None
    assert client.flush(timeout=10)

    (event,) = data_plane.events
    received = event["properties"]["v"]
    if isinstance(value, set):
        received = sorted(received)
    assert received == wire


def test_decimal_is_a_json_number_on_the_wire_never_a_string(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    client = make_client(gzip=False)

    client.track("u1", "Paid", {"price": Decimal("10.50")})
    assert client.flush(timeout=10)

    (request,) = data_plane.requests
    assert b'"price":10.5' in request.body
    assert type(request.batch[0]["properties"]["price"]) is float


def test_timestamp_argument_follows_the_same_time_rules(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    client = make_client()

    client.track("u1", "Aware", timestamp=datetime(2024, 5, 6, 12, 0, 0, 5000, tzinfo=IST))
    client.track("u1", "Naive", timestamp=datetime(2024, 5, 6, 12, 0, 0, 5000))
    assert client.flush(timeout=10)

    by_event = {e["event"]: e for e in data_plane.events}
    assert by_event["Aware"]["timestamp"] == "2024-05-06T06:30:00.005Z"
    assert by_event["Naive"]["timestamp"] == "2024-05-06T12:00:00.005Z"


def test_callers_dicts_are_never_mutated(make_client: MakeClient, data_plane: DataPlane) -> None:
    client = make_client()
    properties = {"price": Decimal("2.5"), "tags": ("a",), "plain": {"x": 1}}
    context = {"ip": "10.0.0.1", "traits": {"email": "a@example.com"}}
    traits = {"plan": Plan.PRO, "seen": datetime(2024, 1, 1)}
    integrations = {"All": False, "Amplitude": True}
    before = copy.deepcopy((properties, context, traits, integrations))

    client.track("u1", "Bought", properties, context=context, integrations=integrations)
    client.identify("u1", traits, context=context)
    assert client.flush(timeout=10)

    assert (properties, context, traits, integrations) == before
    assert "library" not in context
    assert len(data_plane.events) == 2


def test_mutation_after_track_changes_nothing_on_the_wire(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    client = make_client(flush_interval=60)  # the message waits in the queue meanwhile
    plain: dict[str, Any] = {"plan": "pro", "nested": {"n": 1}, "items": [1]}
    rich: dict[str, Any] = {"when": datetime(2024, 1, 1), "nested": {"n": 1}}
    context: dict[str, Any] = {"page": {"path": "/a"}}

    client.track("u1", "Plain", plain, context=context)
    client.track("u1", "Rich", rich)
    plain["plan"] = "free"
    plain["nested"]["n"] = 2
    plain["items"].append(2)
    plain["added"] = True
    rich["nested"]["n"] = 2
    context["page"]["path"] = "/b"
    assert client.flush(timeout=10)

    by_event = {e["event"]: e for e in data_plane.events}
    assert by_event["Plain"]["properties"] == {"plan": "pro", "nested": {"n": 1}, "items": [1]}
    assert by_event["Plain"]["context"]["page"] == {"path": "/a"}
    assert by_event["Rich"]["properties"] == {
        "when": "2024-01-01T00:00:00.000Z",
        "nested": {"n": 1},
    }


@pytest.mark.parametrize(
    ("properties", "field"),
    [
        ({"a": {"b": [1.0, float("nan")]}}, "properties.a.b[1]"),
        ({"when": Opaque()}, "properties.when"),
        ({"blob": b"\xff"}, "properties.blob"),
        ({"price": Decimal("NaN")}, "properties.price"),
    ],
    ids=["nan", "unknown", "bad-bytes", "decimal-nan"],
)
def test_strict_client_raises_invalid_message_error_with_the_path(
    make_client: MakeClient, data_plane: DataPlane, properties: dict[str, Any], field: str
) -> None:
    client = make_client(strict=True)

    with pytest.raises(InvalidMessageError) as info:
        client.track("u1", "Bad", properties)

    assert info.value.field == field
    assert info.value.reason == Reason.SERIALIZATION_ERROR
    assert isinstance(info.value, ValueError)
    assert client.flush(timeout=10)
    assert data_plane.requests == []


def test_strict_client_rejects_a_cycle(make_client: MakeClient) -> None:
    client = make_client(strict=True)
    traits: dict[str, Any] = {}
    traits["self"] = traits

    with pytest.raises(InvalidMessageError) as info:
        client.identify("u1", traits)

    assert info.value.field == "traits.self"
    assert info.value.reason == Reason.SERIALIZATION_ERROR


def test_non_strict_client_drops_counts_and_reports_a_bad_value(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    seen: list[tuple[AnalyticsError, list[dict[str, Any]]]] = []
    client = make_client(on_error=lambda error, messages: seen.append((error, messages)))

    result = client.track("u1", "Bad", {"a": {"b": [1.0, float("inf")]}})
    kept = client.track("u1", "Good", {"a": 1})

    assert result is None
    assert kept is not None
    stats = client.stats()
    assert stats.dropped == {"serialization_error": 1}
    assert stats.accepted == 1
    ((error, _messages),) = seen
    assert isinstance(error, InvalidMessageError)
    assert error.field == "properties.a.b[1]"
    assert error.reason == Reason.SERIALIZATION_ERROR
    assert client.flush(timeout=10)
    assert [e["event"] for e in data_plane.events] == ["Good"]


def test_client_accepts_nesting_at_the_limit_and_drops_beyond_it(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    client = make_client()

    ok = client.track("u1", "Deep", nested(MAX_DEPTH))
    too_deep = client.track("u1", "Deeper", nested(MAX_DEPTH + 2))

    assert ok is not None
    assert too_deep is None
    assert client.stats().dropped == {"serialization_error": 1}
    assert client.flush(timeout=10)
    assert [e["event"] for e in data_plane.events] == ["Deep"]


# -- the clock ------------------------------------------------------------------------------


def parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def test_now_iso_is_utc_with_milliseconds() -> None:
    before = datetime.now(timezone.utc)
    stamp = now_iso()
    after = datetime.now(timezone.utc)

    assert ISO_MS.match(stamp)
    # millisecond truncation: at most 1 ms before `before`
    assert before - timedelta(milliseconds=1) <= parse_iso(stamp) <= after


_TZ_PROBE = """
import json, time
from datetime import datetime, timedelta
from analytics_sdk._serialization import format_time, now_iso
naive = datetime(2024, 1, 1, 12, 0, 0)
print(json.dumps({
    "gmtoff": time.localtime().tm_gmtoff,
    "now_iso": now_iso(),
    "utc_now": time.time(),
    "naive": format_time(naive),
    "local_aware": format_time(naive.astimezone()),
}))
"""


@pytest.mark.parametrize(
    ("tz", "offset"),
    [("Asia/Kolkata", 19800), ("America/St_Johns", None), ("UTC", 0)],
)
def test_clock_is_utc_under_any_local_time_zone(tz: str, offset: int | None) -> None:
    env = {**os.environ, "TZ": tz}
    result = subprocess.run(
        [sys.executable, "-c", _TZ_PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    probe = json.loads(result.stdout)

    if offset is not None:
        assert probe["gmtoff"] == offset  # the time zone really was in effect
    else:
        assert probe["gmtoff"] in (-12600, -9000)  # Newfoundland: -3:30 or -2:30 (DST)
    assert ISO_MS.match(probe["now_iso"])
    skew = parse_iso(probe["now_iso"]).timestamp() - probe["utc_now"]
    assert abs(skew) < 5.0
    assert probe["naive"] == "2024-01-01T12:00:00.000Z"  # naive is UTC, never local
    expected_local = datetime(2024, 1, 1, 12, 0, 0) - timedelta(seconds=probe["gmtoff"])
    if tz == "America/St_Johns":  # January: standard time, -3:30
        expected_local = datetime(2024, 1, 1, 15, 30, 0)
    assert probe["local_aware"] == format_time(expected_local)


@pytest.fixture
def local_time_is_kolkata() -> Iterator[None]:
    """This process's local time zone is UTC+5:30 for the test."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"
    time.tzset()
    try:
        assert time.localtime().tm_gmtoff == 19800
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.mark.usefixtures("local_time_is_kolkata")
def test_naive_datetimes_follow_one_rule_whatever_their_age(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    """Segment takes a naive datetime under 5 s old as local time; we always take UTC."""
    client = make_client()
    local_now = datetime.now()  # naive, local (UTC+5:30)
    one_second_old = local_now - timedelta(seconds=1)
    one_hour_old = local_now - timedelta(hours=1)

    client.track("u1", "Recent", {"at": one_second_old}, timestamp=one_second_old)
    client.track("u1", "Older", {"at": one_hour_old}, timestamp=one_hour_old)
    assert client.flush(timeout=10)

    by_event = {e["event"]: e for e in data_plane.events}
    for name, value in (("Recent", one_second_old), ("Older", one_hour_old)):
        expected = value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
        assert by_event[name]["timestamp"] == expected
        assert by_event[name]["properties"]["at"] == expected


@pytest.mark.usefixtures("local_time_is_kolkata")
def test_generated_times_are_utc_when_local_time_is_not(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    client = make_client()
    before = datetime.now(timezone.utc)

    client.track("u1", "Now")
    assert client.flush(timeout=10)

    after = datetime.now(timezone.utc)
    ((event,),) = data_plane.batches
    (request,) = data_plane.requests
    for stamp in (event["originalTimestamp"], event["sentAt"], request.json["sentAt"]):
        assert ISO_MS.match(stamp)
        assert before - timedelta(seconds=1) <= parse_iso(stamp) <= after + timedelta(seconds=1)
    assert "timestamp" not in event  # only a caller's back-fill sets it


# -- ids ------------------------------------------------------------------------------------


def test_uuid4_is_a_valid_version_4_rfc_4122_uuid() -> None:
    for _ in range(1000):
        text = uuid4()
        parsed = uuid.UUID(text)
        assert UUID4.match(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_uuid4_has_no_duplicates_in_100_000() -> None:
    ids = [uuid4() for _ in range(100_000)]

    assert len(set(ids)) == 100_000
    assert all(UUID4.match(i) for i in ids)
    assert {i[19] for i in ids} == set("89ab")  # every variant nibble turns up
    assert {i[0] for i in ids} == set("0123456789abcdef")  # and the random digits vary
