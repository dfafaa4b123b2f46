"""The Amplitude wrapper: the real Amplitude SDK against a fake Amplitude API on 127.0.0.1.

The fake answers like Amplitude's HTTP API v2 (`{"code": 200, ...}`); the assertions read the
JSON bodies the SDK actually posted. Retry waits are shortened through the wrapper's retry
tick and the SDK's request timeout (both module constants), never by sleeping.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import uuid
import weakref
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, ClassVar

import amplitude.constants
import pytest
from analytics_sdk_amplitude import (
    DEFAULT_GROUP_TYPE,
    AmplitudeIntegration,
    AmplitudeOptions,
)
from conftest import MakeClient
from pydantic import ValidationError
from support.servers import DataPlane, Reply, Request

from analytics_sdk import AnalyticsError
from analytics_sdk.integration import Integration, IntegrationOptions, Rejected
from analytics_sdk.models import Message, parse_message
from analytics_sdk.testing import IntegrationContract
from integrations.exit_flush import EXPECTED_EVENTS, run_exit_script

API_KEY = "amp-secret-key-4242"
JsonDict = dict[str, Any]


def amplitude_ok(request: Request) -> Reply:
    """What Amplitude's HTTP API v2 answers to an accepted upload."""
    events = request.json.get("events", [])
    return Reply(body=json.dumps({"code": 200, "events_ingested": len(events)}))


def fake_amplitude() -> DataPlane:
    server = DataPlane().start()
    server.respond = amplitude_ok
    return server


def refusal(status: int, **body: Any) -> Reply:
    return Reply(status=status, body=json.dumps({"code": status, **body}))


def accepted_events(api: DataPlane) -> list[JsonDict]:
    """The events of every request the fake accepted, in order."""
    return [e for r in api.requests if 200 <= r.status < 300 for e in r.json["events"]]


def attempts(api: DataPlane) -> dict[str, int]:
    """How many requests carried each insert_id."""
    counts: dict[str, int] = {}
    for request in api.requests:
        for event in request.json["events"]:
            counts[event["insert_id"]] = counts.get(event["insert_id"], 0) + 1
    return counts


def millis(iso: str) -> int:
    when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return round((when - datetime(1970, 1, 1, tzinfo=timezone.utc)).total_seconds() * 1000)


def message(kind: str, **fields: Any) -> Message:
    wire = {
        "type": kind,
        "messageId": f"m-{uuid.uuid4().hex[:12]}",
        "userId": "u1",
        "anonymousId": "anon-1",
        "originalTimestamp": "2024-05-01T12:00:00.250Z",
        **fields,
    }
    return parse_message(wire)


def integration(api: DataPlane, **settings: Any) -> AmplitudeIntegration:
    config = {
        "apiKey": API_KEY,
        "serverUrl": f"{api.url}/2/httpapi",
        "maxRetries": 2,
        "timeout": 5,
        **settings,
    }
    return AmplitudeIntegration(AmplitudeOptions.model_validate(config))


@pytest.fixture
def api() -> Iterator[DataPlane]:
    server = fake_amplitude()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def started(api: DataPlane) -> Iterator[list[AmplitudeIntegration]]:
    """Integrations a test starts itself (`started.append(...)`), shut down afterwards."""
    running: list[AmplitudeIntegration] = []
    yield running
    for item in running:
        item.shutdown(1.0)


def start(started: list[AmplitudeIntegration], item: AmplitudeIntegration) -> AmplitudeIntegration:
    item.setup()
    started.append(item)
    return item


@pytest.fixture(autouse=True)
def _fast_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("analytics_sdk_amplitude._RETRY_TICK_MS", 10)
    monkeypatch.setattr(amplitude.constants, "CONNECTION_TIMEOUT", 0.5)  # read per request


class Reports:
    """A client's on_error callback, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.errors: list[tuple[AnalyticsError, list[JsonDict]]] = []

    def __call__(self, error: AnalyticsError, messages: list[JsonDict]) -> None:
        with self._lock:
            self.errors.append((error, messages))


# -- the contract ------------------------------------------------------------------------------


class TestAmplitudeContract(IntegrationContract):
    integration_class = AmplitudeIntegration
    valid_config: ClassVar[dict[str, Any]] = {
        "apiKey": API_KEY,
        "residencyServer": "EU",
        "trackAllPages": True,
        "groupTypeTrait": "",
        "traitsToIncrement": [{"traits": "logins"}, {"traits": ""}],
        "connectionMode": "device",
    }
    invalid_config: ClassVar[dict[str, Any]] = {
        "apiKey": API_KEY,
        "residencyServer": "Mars",
        "serverUrl": "ftp://amplitude.example",
        "timeout": 0,
    }
    receiver: ClassVar[DataPlane]

    @classmethod
    def setup_class(cls) -> None:
        cls.receiver = fake_amplitude()

    @classmethod
    def teardown_class(cls) -> None:
        cls.receiver.stop()

    def make_integration(self, options: IntegrationOptions) -> Integration[Any]:
        assert isinstance(options, AmplitudeOptions)
        local = options.model_copy(update={"server_url": f"{self.receiver.url}/2/httpapi"})
        return AmplitudeIntegration(local)


# -- what the SDK sends ------------------------------------------------------------------------


def test_every_call_reaches_amplitude_with_its_ids_time_and_user(
    make_client: MakeClient, api: DataPlane
) -> None:
    amp = integration(api)
    client = make_client(integrations=[amp])
    when = "2024-03-04T05:06:07.891Z"
    ids = [
        client.identify("u1", {"plan": "pro", "logins": 3}, anonymous_id="anon-1", timestamp=when),
        client.track("u1", "Signed Up", {"source": "ad"}, anonymous_id="anon-1", timestamp=when),
        client.track(event="Browsed", anonymous_id="anon-2", timestamp=when),
        client.page("u1", "Docs", "Pricing", {"url": "https://x.test/p"}, timestamp=when),
        client.screen("u1", name="Settings", timestamp=when),
        client.group("u1", "org-1", {"name": "Acme"}, timestamp=when),
    ]
    assert client.flush(timeout=5)
    assert {r.path for r in api.requests} == {"/2/httpapi"}
    body = api.requests[0].json
    assert body["api_key"] == API_KEY
    assert body["options"] == {"min_id_length": 1}  # short ids like "u1" are accepted
    events = accepted_events(api)
    by_id = {e["insert_id"]: e for e in events}
    identify, signed_up, browsed, page, screen, group = (by_id[str(i)] for i in ids)
    assert all(e["time"] == millis(when) for e in events)  # the message time, not "now"
    assert identify["event_type"] == "$identify"
    assert identify["user_properties"] == {"$set": {"plan": "pro", "logins": 3}}
    assert (identify["user_id"], identify["device_id"]) == ("u1", "anon-1")
    assert signed_up["event_type"] == "Signed Up"
    assert signed_up["event_properties"] == {"source": "ad"}
    assert (signed_up["user_id"], signed_up["device_id"]) == ("u1", "anon-1")
    assert browsed["device_id"] == "anon-2"
    assert "user_id" not in browsed
    assert page["event_type"] == "Viewed Docs Page"  # and "Viewed Pricing Page", id "-1"
    assert by_id[f"{ids[3]}-1"]["event_type"] == "Viewed Pricing Page"
    assert page["event_properties"] == {
        "url": "https://x.test/p",
        "name": "Pricing",
        "category": "Docs",
    }
    assert screen["event_type"] == "Viewed Settings Screen"
    assert group["groups"] == {DEFAULT_GROUP_TYPE: "org-1"}
    assert by_id[f"{ids[5]}-1"]["group_properties"] == {"$set": {"name": "Acme"}}
    assert client.stats().integrations["amplitude"]["handled"] == 6


def test_a_batch_of_messages_is_one_request(
    api: DataPlane, started: list[AmplitudeIntegration]
) -> None:
    amp = start(started, integration(api))
    batch = [message("track", event=f"E{n}") for n in range(30)]
    assert amp.handle_batch(batch) == []
    assert len(api.requests) == 1
    assert [e["insert_id"] for e in accepted_events(api)] == [m.message_id for m in batch]
    assert amp.flush(1.0) is True  # nothing is left buffered in the SDK


def test_context_fields_and_the_caller_timestamp(
    api: DataPlane, started: list[AmplitudeIntegration]
) -> None:
    amp = start(started, integration(api, versionName="9.9"))
    context = {
        "ip": "203.0.113.7",
        "locale": "de-DE",
        "os": {"name": "Linux", "version": "6.1"},
        "location": {"country": "DE", "city": "Berlin", "latitude": 52.5, "longitude": 13.4},
        "sessionId": 1714564800000,
    }
    sent = message("track", event="E", context=context, timestamp="2023-01-01T00:00:00.007Z")
    assert amp.handle_batch([sent]) == []
    (event,) = accepted_events(api)
    assert event["time"] == millis("2023-01-01T00:00:00.007Z")  # timestamp beats originalTimestamp
    assert (event["ip"], event["language"], event["os_name"], event["os_version"]) == (
        "203.0.113.7", "de-DE", "Linux", "6.1",
    )  # fmt: skip
    assert (event["country"], event["city"]) == ("DE", "Berlin")
    assert (event["location_lat"], event["location_lng"]) == (52.5, 13.4)
    assert event["session_id"] == 1714564800000
    assert event["app_version"] == "9.9"  # versionName, as the context has no app.version


# -- revenue and products ----------------------------------------------------------------------


def test_revenue_goes_into_amplitude_revenue_fields(
    api: DataPlane, started: list[AmplitudeIntegration]
) -> None:
    amp = start(started, integration(api))
    order = message("track", event="Order Completed", properties={"revenue": 30, "currency": "EUR"})
    item = message(
        "track",
        event="Item Sold",
        properties={
            "revenue": 25, "price": 12.5, "quantity": 2, "product_id": "sku-1",
            "revenue_type": "Sale",
        },
    )  # fmt: skip
    browse = message("track", event="Product Viewed", properties={"price": 10})
    assert amp.handle_batch([order, item, browse]) == []
    by_id = {e["insert_id"]: e for e in accepted_events(api)}
    first = by_id[order.message_id]
    assert (first["revenue"], first["price"], first["quantity"]) == (30.0, 30.0, 1)
    assert first["currency"] == "EUR"
    second = by_id[item.message_id]
    assert (second["revenue"], second["price"], second["quantity"]) == (25.0, 12.5, 2)
    assert (second["productId"], second["revenueType"]) == ("sku-1", "Sale")
    third = by_id[browse.message_id]
    assert "price" not in third  # a price alone is no purchase
    assert "revenue" not in third
    assert third["event_properties"] == {"price": 10}


PRODUCTS = [
    {"product_id": "p1", "name": "Pen", "price": 20, "quantity": 1},
    {"product_id": "p2", "name": "Ink", "price": 15, "quantity": 2},
]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param(
            {},
            [("Order Completed", "", 50.0, False), ("Product Purchased", "-1", None, False),
             ("Product Purchased", "-2", None, False)],
            id="default: an event per product, revenue on the order",
        ),
        pytest.param(
            {"trackRevenuePerProduct": True},
            [("Order Completed", "", None, False), ("Product Purchased", "-1", 20.0, False),
             ("Product Purchased", "-2", 30.0, False)],
            id="revenue per product",
        ),
        pytest.param(
            {"trackProductsOnce": True},
            [("Order Completed", "", 50.0, True)],
            id="products once",
        ),
        pytest.param(
            {"trackProductsOnce": True, "trackRevenuePerProduct": True},
            [("Order Completed", "", None, True), ("revenue_amount", "-1", 20.0, False),
             ("revenue_amount", "-2", 30.0, False)],
            id="products once, revenue events per product",
        ),
    ],
)  # fmt: skip
def test_order_products_follow_the_product_options(
    api: DataPlane,
    started: list[AmplitudeIntegration],
    settings: dict[str, bool],
    expected: list[tuple[str, str, float | None, bool]],
) -> None:
    amp = start(started, integration(api, **settings))
    order = message(
        "track", event="Order Completed", properties={"revenue": 50, "products": PRODUCTS}
    )
    assert amp.handle_batch([order]) == []
    events = accepted_events(api)
    seen = []
    for event in events:
        properties = event.get("event_properties", {})
        revenue = event.get("revenue", properties.get("$revenue"))
        seen.append(
            (
                event["event_type"],
                event["insert_id"].removeprefix(order.message_id),
                revenue,
                "products" in properties,
            )
        )
    assert seen == expected
    for event in events:
        if event["event_type"] == "Product Purchased":  # the product's own fields
            assert event["event_properties"]["product_id"] in ("p1", "p2")
        if event["event_type"] == "revenue_amount":
            assert event["event_properties"]["$productId"] in ("p1", "p2")


# -- page, screen, group, identify, alias ------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "name", "category", "expected"),
    [
        ({}, "Pricing", "Docs", ["Viewed Docs Page", "Viewed Pricing Page"]),
        ({"trackAllPages": True}, None, None, ["Loaded a Page"]),
        ({"trackCategorizedPages": False}, "Pricing", "Docs", ["Viewed Pricing Page"]),
        ({"trackNamedPages": False}, "Pricing", None, []),
    ],
)
def test_page_event_names_follow_the_page_options(
    api: DataPlane,
    started: list[AmplitudeIntegration],
    settings: dict[str, bool],
    name: str | None,
    category: str | None,
    expected: list[str],
) -> None:
    amp = start(started, integration(api, **settings))
    page = message("page", name=name, category=category)
    rejected = amp.handle_batch([page])
    assert [e["event_type"] for e in accepted_events(api)] == expected
    if not expected:  # nothing to send is said, not swallowed
        (entry,) = rejected
        assert "trackAllPages" in entry.reason
    else:
        assert rejected == []


def test_screens_are_viewed_or_loaded(api: DataPlane, started: list[AmplitudeIntegration]) -> None:
    amp = start(started, integration(api))
    assert amp.handle_batch([message("screen", name="Cart"), message("screen")]) == []
    assert [e["event_type"] for e in accepted_events(api)] == [
        "Viewed Cart Screen",
        "Loaded a Screen",
    ]


def test_group_type_and_name_come_from_the_traits_the_options_name(
    api: DataPlane, started: list[AmplitudeIntegration]
) -> None:
    amp = start(started, integration(api, groupTypeTrait="kind", groupValueTrait="org"))
    traits = {"kind": "company", "org": "acme", "employees": 5}
    good = message("group", groupId="g-1", traits=traits)
    bad = message("group", groupId="g-2", traits={"employees": 5})
    rejected = amp.handle_batch([good, bad])
    assert [r.message_id for r in rejected] == [bad.message_id]
    assert "'kind' (groupTypeTrait)" in rejected[0].reason
    membership, properties = accepted_events(api)
    assert membership["insert_id"] == good.message_id
    assert membership["event_type"] == "$identify"
    assert membership["groups"] == {"company": "acme"}
    assert membership["user_properties"] == {"$set": {"company": "acme"}}
    assert properties["insert_id"] == f"{good.message_id}-1"
    assert properties["event_type"] == "$groupidentify"
    assert properties["groups"] == {"company": "acme"}
    assert properties["group_properties"] == {"$set": traits}


def test_identify_trait_operations_follow_the_options(
    api: DataPlane, started: list[AmplitudeIntegration]
) -> None:
    amp = start(
        started,
        integration(
            api,
            traitsToIncrement=[{"traits": "logins"}],
            traitsToSetOnce=["first_seen"],  # plain names are accepted too
            traitsToAppend=[{"traits": "tags"}],
            traitsToPrepend=[{"traits": "recent"}],
        ),
    )
    traits = {"logins": 1, "first_seen": "2024-01-01", "tags": "vip", "recent": "a", "plan": "pro"}
    sent = message("identify", traits=traits)
    empty = message("identify", traits={})
    not_a_number = message("identify", traits={"logins": "many"})
    rejected = {r.message_id: r.reason for r in amp.handle_batch([sent, empty, not_a_number])}
    assert rejected.keys() == {empty.message_id, not_a_number.message_id}
    assert "nothing to set" in rejected[empty.message_id]
    assert "traitsToIncrement" in rejected[not_a_number.message_id]
    (event,) = accepted_events(api)
    assert event["user_properties"] == {
        "$add": {"logins": 1.0},
        "$setOnce": {"first_seen": "2024-01-01"},
        "$append": {"tags": "vip"},
        "$prepend": {"recent": "a"},
        "$set": {"plan": "pro"},
    }


def test_alias_and_unsendable_properties_are_reported_not_swallowed(
    make_client: MakeClient, api: DataPlane
) -> None:
    reports = Reports()
    client = make_client(integrations=[integration(api)], on_error=reports)
    client.alias("old-id", "u1")
    client.track("u1", "Matrix", {"grid": [[1, 2], [3, 4]], "ok": 1})
    assert client.flush(timeout=5)
    assert api.requests == []  # neither reached Amplitude
    reasons = sorted(str(error) for error, _ in reports.errors)
    assert len(reasons) == 2
    assert "no alias call" in reasons[0]
    assert "'grid'" in reasons[1]
    assert "'ok'" not in reasons[1]
    assert {error.reason for error, _ in reports.errors} == {"rejected_by_integration"}
    assert client.stats().integrations["amplitude"]["rejected"] == 2


# -- refusals and failures ---------------------------------------------------------------------


def test_a_400_rejects_only_the_events_amplitude_names(
    make_client: MakeClient, api: DataPlane
) -> None:
    api.script = [
        refusal(400, error="Invalid field values on some events",
                events_with_invalid_fields={"event_properties": [1]}),
    ]  # fmt: skip
    reports = Reports()
    amp = integration(api)
    client = make_client(integrations=[amp], on_error=reports)
    batch = [message("track", event=f"E{n}") for n in range(3)]
    assert amp.handle_batch(batch) == [
        Rejected(
            batch[1].message_id,
            "Amplitude answered 400: Invalid field values on some events "
            "(invalid event_properties)",
        )
    ]
    # the two valid ones were resent (the SDK's retry), the invalid one was not
    assert attempts(api) == {batch[0].message_id: 2, batch[1].message_id: 1, batch[2].message_id: 2}
    # and through the client: the refusal reaches on_error and the counters
    api.script = [refusal(400, error="Invalid field values on some events",
                          events_with_invalid_fields={"time": [0]})]  # fmt: skip
    message_id = client.track("u1", "Refused")
    assert client.flush(timeout=5)
    ((error, messages),) = reports.errors
    assert error.reason == "rejected_by_integration"
    assert "Amplitude answered 400" in str(error)
    assert "invalid time" in str(error)
    assert [m["messageId"] for m in messages] == [message_id]
    counters = client.stats().integrations["amplitude"]
    assert (counters["handled"], counters["rejected"], counters["failed"]) == (0, 1, 0)


@pytest.mark.allow_sdk_errors  # the client logs each rejection it reports
@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        pytest.param(
            {"error": f"Invalid API key: {API_KEY}"},
            "Amplitude answered 400: Invalid API key",
            id="invalid key (the SDK alone drops the events)",
        ),
        pytest.param(
            {"error": f"Project of {API_KEY} is closed", "events_with_invalid_fields": {"x": [0]}},
            "Amplitude answered 400: Project of *** is closed",
            id="any answer quoting the key",
        ),
    ],
)
def test_a_refusal_naming_the_api_key_is_reported_without_it(
    make_client: MakeClient,
    api: DataPlane,
    caplog: pytest.LogCaptureFixture,
    answer: JsonDict,
    expected: str,
) -> None:
    api.respond = lambda request: refusal(400, **answer)
    reports = Reports()
    client = make_client(integrations=[integration(api)], on_error=reports)
    client.track("u1", "E1")
    assert client.flush(timeout=5)
    assert len(api.requests) == 1
    ((error, _),) = reports.errors
    assert expected in str(error)
    assert API_KEY not in str(error)
    assert API_KEY not in caplog.text
    assert client.stats().integrations["amplitude"]["rejected"] == 1


def test_a_batch_is_sent_at_once_not_at_the_sdk_next_tick(
    api: DataPlane, started: list[AmplitudeIntegration], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("analytics_sdk_amplitude._RETRY_TICK_MS", 10_000)
    amp = start(started, integration(api, timeout=1))
    assert amp.handle_batch([message("track", event="Now")]) == []
    assert len(api.requests) == 1
    storage = amp._storage.storage
    assert storage is not None
    with storage.lock:  # wake the SDK's consumer thread, so it ends now, not in 10 s
        storage.lock.notify_all()


@pytest.mark.parametrize(
    "first_reply",
    [
        pytest.param(Reply(status=503, body="busy"), id="503"),
        pytest.param(Reply(status=429, body='{"code": 429, "error": "slow down"}'), id="429"),
        pytest.param(Reply(hang=True), id="timeout"),
        pytest.param(Reply(reset=True), id="connection reset"),
        pytest.param(Reply(body="<html>proxy</html>"), id="2xx that is not Amplitude's"),
    ],
)
def test_a_transient_failure_is_retried_by_the_sdk(
    make_client: MakeClient, api: DataPlane, first_reply: Reply
) -> None:
    api.script = [first_reply]
    client = make_client(integrations=[integration(api)])
    message_id = client.track("u1", "Retried", {"n": 1})
    assert client.flush(timeout=5)
    assert attempts(api) == {message_id: 2}
    (event,) = accepted_events(api)[-1:]
    assert (event["insert_id"], event["event_properties"]) == (message_id, {"n": 1})
    counters = client.stats().integrations["amplitude"]
    assert (counters["handled"], counters["rejected"], counters["failed"]) == (1, 0, 0)


def test_retries_are_bounded_and_the_last_problem_is_reported(
    make_client: MakeClient, api: DataPlane
) -> None:
    api.respond = lambda request: Reply(status=503, body="busy")
    reports = Reports()
    client = make_client(integrations=[integration(api, maxRetries=1)], on_error=reports)
    message_id = client.track("u1", "Doomed")
    assert client.flush(timeout=5)
    assert attempts(api) == {message_id: 2}  # the first try and one retry
    ((error, _),) = reports.errors
    assert "gave up after 2 attempts (last: Amplitude answered 503" in str(error)
    assert client.stats().integrations["amplitude"]["rejected"] == 1


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(Reply(hang=True), id="request in flight"),
        # a throttled event waits 30 s in the SDK's buffer before its retry
        pytest.param(refusal(429, error="Too many requests", throttled_events=[0]), id="429"),
    ],
)
def test_an_unanswered_batch_is_rejected_at_the_timeout_and_not_kept(
    api: DataPlane,
    started: list[AmplitudeIntegration],
    monkeypatch: pytest.MonkeyPatch,
    reply: Reply,
) -> None:
    monkeypatch.setattr(amplitude.constants, "CONNECTION_TIMEOUT", 30)  # beyond our timeout
    api.respond = lambda request: reply
    amp = start(started, integration(api, timeout=0.3))
    sent = message("track", event="Stuck")
    (entry,) = amp.handle_batch([sent])
    assert entry.message_id == sent.message_id
    assert "confirmed nothing within 0.3 s" in entry.reason
    storage = amp._storage.storage
    assert storage is not None
    assert storage.total_events == 0  # nothing left in the SDK's buffer


def test_a_message_the_sdk_drops_unsent_is_rejected(
    api: DataPlane, started: list[AmplitudeIntegration]
) -> None:
    amp = start(started, integration(api))
    unnamed = message("track", event=" ")
    (entry,) = amp.handle_batch([unnamed])  # the SDK would drop it: said here, and why
    assert "needs an event name" in entry.reason
    amp._client.configuration.opt_out = True  # the SDK now skips events (it logs, no callback)
    (entry,) = amp.handle_batch([message("track", event="Skipped")])
    assert "dropped the event before sending it" in entry.reason
    assert api.requests == []


# -- exit and shutdown -------------------------------------------------------------------------


def test_events_still_queued_at_exit_are_delivered_by_the_exit_flush(
    api: DataPlane, data_plane: DataPlane
) -> None:
    """The SDK's own exit hook must not close it before analytics_sdk's exit flush, and the
    SDK must still send once concurrent.futures refuses new work (threading's exit hooks)."""

    def slow_first(request: Request) -> Reply:
        reply = amplitude_ok(request)
        if any(e["event_type"] == "E0" for e in request.json["events"]):
            reply.delay = 0.5
        return reply

    api.respond = slow_first
    result = run_exit_script(
        data_plane.url,
        api.url,
        "analytics_sdk_amplitude:AmplitudeIntegration",
        {"apiKey": "amp-exit-key", "serverUrl": api.url + "/2/httpapi", "maxRetries": 0,
         "timeout": 5},
    )
    assert result.returncode == 0, result.stderr
    assert "exiting" in result.stdout
    assert "ON_ERROR" not in result.stdout, result.stdout
    assert sorted(e["event_type"] for e in accepted_events(api)) == EXPECTED_EVENTS
    assert len(data_plane.events) == 21


def test_the_sdks_exit_hook_is_removed_so_a_stopped_client_is_released(api: DataPlane) -> None:
    before = set(threading.enumerate())
    amp = integration(api)
    amp.setup()
    sdk_client = amp._client
    exit_hooks = threading._threading_atexits  # type: ignore[attr-defined]  # run before atexit's
    assert [h for h in exit_hooks if getattr(h, "func", None) == sdk_client.shutdown] == []
    assert amp.handle_batch([message("track", event="E")]) == []
    amp.shutdown(2.0)
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=2.0)
        assert not thread.is_alive()
    collected = weakref.ref(sdk_client)
    del sdk_client, amp  # what a restart drops: the SDK's exit hook would have kept it
    gc.collect()
    assert collected() is None


# -- options -----------------------------------------------------------------------------------


def test_endpoint_options_pick_the_sdk_server_url(started: list[AmplitudeIntegration]) -> None:
    def url(**settings: Any) -> str:
        amp = AmplitudeIntegration(AmplitudeOptions.model_validate({"apiKey": API_KEY, **settings}))
        start(started, amp)
        server_url: str = amp._client.configuration.server_url
        return server_url

    assert url() == "https://api2.amplitude.com/2/httpapi"
    assert url(residencyServer="EU") == "https://api.eu.amplitude.com/2/httpapi"
    assert url(residencyServer="EU", useBatch=True) == "https://api.eu.amplitude.com/batch"
    assert url(residencyServer="EU", serverUrl="http://127.0.0.1:9/x") == "http://127.0.0.1:9/x"


def test_options_read_the_control_plane_config() -> None:
    options = AmplitudeOptions.model_validate(
        {
            "apiKey": API_KEY,
            "groupTypeTrait": " ",
            "versionName": "",
            "serverUrl": "",
            "traitsToSetOnce": [{"traits": "first_seen"}],
            "trackProductsOnce": True,
        }
    )
    assert options.group_type_trait is None
    assert options.version_name is None
    assert options.server_url is None
    assert [t.traits for t in options.traits_to_set_once] == ["first_seen"]
    assert options.track_products_once is True
    assert API_KEY not in repr(options)
    for bad in ({"apiKey": ""}, {"apiKey": API_KEY, "maxRetries": 11}):
        with pytest.raises(ValidationError):
            AmplitudeOptions.model_validate(bad)


# -- discovery ---------------------------------------------------------------------------------


def test_the_factory_discovers_and_enables_it_from_a_source_config(
    make_client: MakeClient, api: DataPlane, data_plane: DataPlane, caplog: pytest.LogCaptureFixture
) -> None:
    document = {
        "source": {
            "id": "src",
            "destinations": [
                {
                    "id": "dst_amplitude",
                    "enabled": True,
                    "destinationDefinition": {"name": "AM", "displayName": "Amplitude"},
                    "config": {
                        "apiKey": API_KEY,
                        "serverUrl": f"{api.url}/2/httpapi",
                        "residencyServer": "standard",
                        "connectionMode": "device",
                    },
                }
            ],
        }
    }
    caplog.set_level(logging.DEBUG)
    client = make_client(source_config=document)
    message_id = client.track("u1", "Via Config", timestamp="2024-05-01T00:00:00Z")
    assert client.flush(timeout=10)
    (event,) = accepted_events(api)
    assert (event["insert_id"], event["event_type"]) == (message_id, "Via Config")
    assert event["time"] == millis("2024-05-01T00:00:00Z")
    assert data_plane.message_ids() == [message_id]  # the data plane copy keeps the messageId
    status = {s["key"]: s for s in client.integrations_status()}
    assert status["amplitude"]["active"] is True
    assert API_KEY not in caplog.text
