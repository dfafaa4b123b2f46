"""The six calls: exact wire shapes, identity rules, validation, middleware, strict mode."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from conftest import MakeClient
from support.servers import DataPlane

from analytics_sdk import AnalyticsError, Client, InvalidMessageError
from analytics_sdk._version import __version__

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
LIBRARY = {"name": "analytics-sdk-python", "version": __version__}


def delivered_one(client: Client, data_plane: DataPlane) -> dict[str, Any]:
    """Flush and return the single event the data plane got, with volatile fields checked."""
    assert client.flush(timeout=5)
    (event,) = data_plane.events
    assert UUID4.match(event.pop("messageId"))
    assert ISO_MS.match(event.pop("originalTimestamp"))
    assert ISO_MS.match(event.pop("sentAt"))
    return event


def test_track_wire_shape(make_client: MakeClient, data_plane: DataPlane) -> None:
    client = make_client()
    message_id = client.track("user-42", "Order Completed", {"order_id": "A-1", "revenue": 25.0})

    assert message_id is not None
    assert UUID4.match(message_id)
    assert client.flush(timeout=5)
    (event,) = data_plane.events
    assert event["messageId"] == message_id
    assert delivered_one(client, data_plane) == {
        "type": "track",
        "event": "Order Completed",
        "properties": {"order_id": "A-1", "revenue": 25.0},
        "userId": "user-42",
        "context": {"library": LIBRARY},
        "integrations": {"All": True},
        "channel": "server",
    }


def test_identify_wire_shape_copies_traits_into_context(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    client = make_client()
    client.identify("user-42", {"plan": "pro"}, context={"ip": "10.0.0.1", "traits": {"a": 1}})

    assert delivered_one(client, data_plane) == {
        "type": "identify",
        "traits": {"plan": "pro"},
        "userId": "user-42",
        "context": {"ip": "10.0.0.1", "traits": {"a": 1, "plan": "pro"}, "library": LIBRARY},
        "integrations": {"All": True},
        "channel": "server",
    }


def test_page_wire_shape(make_client: MakeClient, data_plane: DataPlane) -> None:
    client = make_client()
    client.page("user-42", "Docs", "Install", {"path": "/docs/install"})

    assert delivered_one(client, data_plane) == {
        "type": "page",
        "name": "Install",
        "category": "Docs",
        "properties": {"path": "/docs/install"},
        "userId": "user-42",
        "context": {"library": LIBRARY},
        "integrations": {"All": True},
        "channel": "server",
    }


def test_screen_wire_shape(make_client: MakeClient, data_plane: DataPlane) -> None:
    client = make_client()
    client.screen(None, None, "Settings", anonymous_id="device-1")

    assert delivered_one(client, data_plane) == {
        "type": "screen",
        "name": "Settings",
        "properties": {},
        "anonymousId": "device-1",
        "context": {"library": LIBRARY},
        "integrations": {"All": True},
        "channel": "server",
    }


def test_group_wire_shape(make_client: MakeClient, data_plane: DataPlane) -> None:
    client = make_client()
    client.group("user-42", 1234, {"name": "Acme"}, integrations={"All": False, "Mixpanel": True})

    assert delivered_one(client, data_plane) == {
        "type": "group",
        "groupId": "1234",
        "traits": {"name": "Acme"},
        "userId": "user-42",
        "context": {"library": LIBRARY},
        "integrations": {"All": False, "Mixpanel": True},
        "channel": "server",
    }


def test_alias_wire_shape(make_client: MakeClient, data_plane: DataPlane) -> None:
    client = make_client()
    client.alias("anon-7", "user-42")

    assert delivered_one(client, data_plane) == {
        "type": "alias",
        "previousId": "anon-7",
        "userId": "user-42",
        "context": {"library": LIBRARY},
        "integrations": {"All": True},
        "channel": "server",
    }


def test_timestamp_and_message_id_are_kept_as_given(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    client = make_client()
    when = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))

    returned = client.track("u1", "Backfilled", timestamp=when, message_id="my-id-1")

    assert returned == "my-id-1"
    assert client.flush(timeout=5)
    (event,) = data_plane.events
    assert event["messageId"] == "my-id-1"
    assert event["timestamp"] == "2024-05-01T10:30:15.123Z"
    assert event["originalTimestamp"] != event["timestamp"]


def test_iso_string_timestamps_are_normalized(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    client = make_client()
    client.track("u1", "E", timestamp="2024-05-01T10:30:15Z")
    assert client.flush(timeout=5)
    assert data_plane.events[0]["timestamp"] == "2024-05-01T10:30:15.000Z"


def test_client_context_is_merged_under_the_call_context(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    client = make_client(context={"app": {"name": "shop"}, "locale": "en"})
    client.track("u1", "E", context={"locale": "fr", "library": {"name": "spoof"}})
    assert client.flush(timeout=5)
    assert data_plane.events[0]["context"] == {
        "app": {"name": "shop"},
        "locale": "fr",
        "library": LIBRARY,  # ours: the caller cannot override what sent the message
    }


def test_caller_dicts_are_never_mutated(make_client: MakeClient, data_plane: DataPlane) -> None:
    client = make_client()
    traits = {"plan": "pro"}
    context = {"traits": {"a": 1}}
    client.identify("u1", traits, context=context)
    traits["plan"] = "free"  # after the call: the snapshot is already taken
    assert client.flush(timeout=5)
    assert context == {"traits": {"a": 1}}
    assert data_plane.events[0]["traits"] == {"plan": "pro"}


# -- identity --------------------------------------------------------------------------------


def test_a_call_without_ids_gets_the_client_anonymous_id(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    client = make_client()
    client.track(None, "E1")
    client.track(event="E2")
    assert client.flush(timeout=5)
    assert [e.get("anonymousId") for e in data_plane.events] == [client.anonymous_id] * 2
    assert all("userId" not in e for e in data_plane.events)


def test_a_call_with_a_user_id_gets_no_process_wide_anonymous_id(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    client = make_client()
    client.track("u1", "E")
    assert client.flush(timeout=5)
    assert "anonymousId" not in data_plane.events[0]


@pytest.mark.parametrize(("given", "sent"), [(0, "0"), (42, "42"), ("0", "0")])
def test_falsy_and_int_user_ids_are_valid_and_stringified(
    make_client: MakeClient, data_plane: DataPlane, given: Any, sent: str
) -> None:
    client = make_client()
    assert client.track(given, "E") is not None
    assert client.flush(timeout=5)
    assert data_plane.events[0]["userId"] == sent


def test_stateful_client_remembers_the_user_and_traits(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    client = make_client(stateful=True)
    anonymous_id = client.anonymous_id
    client.identify("u1", {"plan": "pro"})
    client.identify(traits={"seats": 3})
    client.track(event="Clicked")
    client.alias(user_id="u2")
    client.track(event="After alias")
    client.reset()
    client.track(event="After reset")
    assert client.flush(timeout=5)

    identify_1, identify_2, clicked, alias, after_alias, after_reset = data_plane.events
    assert (identify_1["userId"], identify_1["anonymousId"]) == ("u1", anonymous_id)
    assert identify_2["userId"] == "u1"
    assert clicked["userId"] == "u1"
    assert clicked["anonymousId"] == anonymous_id
    assert clicked["context"]["traits"] == {"plan": "pro", "seats": 3}
    assert (alias["previousId"], alias["userId"]) == ("u1", "u2")
    assert after_alias["userId"] == "u2"
    assert "userId" not in after_reset
    assert after_reset["anonymousId"] not in (None, anonymous_id)


def test_reset_rotates_the_anonymous_id(make_client: MakeClient) -> None:
    client = make_client()
    before = client.anonymous_id
    client.reset()
    assert client.anonymous_id != before
    assert client.user_id is None


# -- validation ------------------------------------------------------------------------------


def call(client: Client, kind: str, **kwargs: Any) -> str | None:
    method = getattr(client, kind)
    result: str | None = method(**kwargs)
    return result


INVALID_CALLS: list[tuple[str, dict[str, Any], str, str]] = [
    ("track", {"user_id": "u"}, "event", "non-empty string"),
    ("track", {"user_id": "u", "event": ""}, "event", "non-empty string"),
    ("track", {"user_id": "u", "event": 42}, "event", "non-empty string"),
    ("track", {"user_id": "", "event": "E"}, "user_id", "must not be empty"),
    ("track", {"user_id": 1.5, "event": "E"}, "user_id", "string or an int"),
    ("track", {"user_id": "u", "event": "E", "properties": [1]}, "properties", "must be a dict"),
    ("track", {"user_id": "u", "event": "E", "context": "x"}, "context", "must be a dict"),
    ("track", {"user_id": "u", "event": "E", "timestamp": "yesterday"}, "timestamp", "ISO-8601"),
    ("track", {"user_id": "u", "event": "E", "timestamp": 1700000000}, "timestamp", "datetime"),
    ("track", {"user_id": "u", "event": "E", "message_id": ""}, "message_id", "empty"),
    ("identify", {"user_id": "u", "traits": "pro"}, "traits", "must be a dict"),
    ("page", {"user_id": "u", "name": 3}, "name", "must be a string"),
    ("group", {"user_id": "u"}, "group_id", "is required"),
    ("alias", {"user_id": "u"}, "previous_id", "is required"),
    ("alias", {"previous_id": "p"}, "user_id", "is required"),
]


@pytest.mark.parametrize(("kind", "kwargs", "field", "problem"), INVALID_CALLS)
def test_strict_mode_raises_naming_the_field(
    kind: str, kwargs: dict[str, Any], field: str, problem: str
) -> None:
    client = Client("wk_test_key", send=False, strict=True)
    with pytest.raises(InvalidMessageError) as info:
        call(client, kind, **kwargs)
    assert info.value.field == field
    assert problem in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("kind", "kwargs", "field", "problem"), INVALID_CALLS)
def test_lenient_mode_returns_none_counts_logs_and_reports(
    kind: str,
    kwargs: dict[str, Any],
    field: str,
    problem: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[tuple[AnalyticsError, list[dict[str, Any]]]] = []
    client = Client("wk_test_key", send=False, on_error=lambda e, m: seen.append((e, m)))

    assert call(client, kind, **kwargs) is None

    assert client.stats().dropped == {"invalid_input": 1}
    assert client.stats().accepted == 0
    ((error, _messages),) = seen
    assert isinstance(error, InvalidMessageError)
    assert error.field == field
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert field in errors[0].getMessage()


def test_rejection_logs_are_one_line_per_reason_per_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = Client("wk_test_key", send=False)
    for _ in range(100):
        client.track("u", "")
    assert client.stats().dropped == {"invalid_input": 100}
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 1


def test_a_message_over_max_message_bytes_is_rejected_as_too_large() -> None:
    client = Client("wk_test_key", send=False, max_message_bytes=1000, max_batch_bytes=2000)
    assert client.track("u", "E", {"blob": "x" * 2000}) is None
    assert client.stats().dropped == {"too_large": 1}

    strict = Client("wk_test_key", send=False, strict=True, max_message_bytes=1000,
                    max_batch_bytes=2000)  # fmt: skip
    with pytest.raises(InvalidMessageError, match=r"max_message_bytes\) is 1000") as info:
        strict.track("u", "E", {"blob": "x" * 2000})
    assert info.value.reason == "too_large"


def test_send_false_validates_and_counts_but_sends_nothing(data_plane: DataPlane) -> None:
    client = Client("wk_test_key", data_plane.url, send=False)
    assert client.track("u", "E") is not None
    assert client.flush(timeout=1)
    assert client.shutdown()
    stats = client.stats()
    assert (stats.accepted, stats.discarded, stats.delivered) == (1, 1, 0)
    assert data_plane.requests == []


# -- middleware ------------------------------------------------------------------------------


def test_middleware_edits_drops_and_sees_a_copy(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    properties = {"email": "a@example.com", "plan": "pro"}

    def scrub(message: dict[str, Any]) -> dict[str, Any] | None:
        if message.get("event") == "Internal":
            return None
        message.get("properties", {}).pop("email", None)
        return message

    client = make_client(middleware=[scrub])
    kept = client.track("u1", "Signed Up", properties)
    dropped = client.track("u1", "Internal")

    assert kept is not None
    assert dropped is None
    assert client.flush(timeout=5)
    (event,) = data_plane.events
    assert event["properties"] == {"plan": "pro"}
    assert event["messageId"] == kept
    assert properties == {"email": "a@example.com", "plan": "pro"}  # the caller's dict
    assert client.stats().dropped == {"filtered": 1}


@pytest.mark.allow_sdk_errors
def test_a_crashing_middleware_or_on_error_never_breaks_delivery(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    def explode(message: dict[str, Any]) -> dict[str, Any]:
        if message.get("event") == "Boom":
            raise RuntimeError("middleware bug")
        return message

    def bad_callback(error: AnalyticsError, messages: list[dict[str, Any]]) -> None:
        raise ValueError("callback bug")

    client = make_client(middleware=[explode], on_error=bad_callback)
    assert client.track("u1", "Boom") is None
    assert client.track("u1", "Fine") is not None
    assert client.track("u1", "") is None  # invalid: on_error raises again

    assert client.flush(timeout=5)
    assert [e["event"] for e in data_plane.events] == ["Fine"]
    assert client.stats().dropped == {"middleware_error": 1, "invalid_input": 1}


def test_calls_after_shutdown_return_none_and_count(make_client: MakeClient) -> None:
    client = make_client()
    assert client.shutdown()
    assert client.shutdown()  # idempotent
    assert client.track("u1", "Late") is None
    assert client.stats().dropped == {"shutdown": 1}
    assert client.flush(timeout=1)


def test_str_subclasses_are_taken_as_their_text(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    import enum

    class Events(str, enum.Enum):
        ORDER_COMPLETED = "Order Completed"

    class UserId(str):
        def __str__(self) -> str:
            return "not what is sent"

    client = make_client(strict=True)
    assert client.track(UserId("user-7"), Events.ORDER_COMPLETED) is not None
    assert client.page("user-7", Events.ORDER_COMPLETED, UserId("Home")) is not None

    assert client.flush(timeout=5) is True
    track, page = data_plane.events
    assert (track["userId"], track["event"]) == ("user-7", "Order Completed")
    assert (page["category"], page["name"]) == ("Order Completed", "Home")


@pytest.mark.parametrize("when", ["9999-12-31T23:00:00-05:00", "0001-01-01T00:30:00+01:00"])
def test_a_timestamp_string_outside_utc_range_is_invalid_input(
    make_client: MakeClient, when: str
) -> None:
    client = make_client(strict=True, send=False)

    with pytest.raises(InvalidMessageError, match="outside the range of UTC datetimes"):
        client.track("u1", "Late", timestamp=when)
