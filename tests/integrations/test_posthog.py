"""The PostHog wrapper: its contract, the real posthog SDK against a fake PostHog on 127.0.0.1."""

from __future__ import annotations

import gc
import logging
import re
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, ClassVar

import analytics_sdk_posthog as posthog_wrapper
import posthog.capture_v1
import pytest
from analytics_sdk_posthog import (
    DEFAULT_HOST,
    PostHogIntegration,
    PostHogOptions,
)
from analytics_sdk_posthog._mapping import event_uuid
from conftest import MakeClient
from posthog.consumer import BATCH_SIZE_LIMIT, MAX_MSG_SIZE
from pydantic import ValidationError
from support.servers import DataPlane, Reply, Request, _Handler

from analytics_sdk import AnalyticsError
from analytics_sdk.integration import Integration, IntegrationOptions, RejectedMessage
from analytics_sdk.models import Message, parse_message
from analytics_sdk.testing import IntegrationContract, sample_messages
from integrations.exit_flush import EXPECTED_EVENTS, run_exit_script

KEY = "phc_test_key_9f8e7d"
JsonDict = dict[str, Any]


class _AnyMethod(_Handler):
    """The data plane's handler, plus a record of every request that is not a POST."""

    server: FakePostHog

    def _other(self) -> None:
        with self.server.lock:
            self.server.other_requests.append(f"{self.command} {self.path}")
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_PUT = do_DELETE = do_HEAD = _other  # noqa: N815 - http.server's names


class FakePostHog(DataPlane):
    """PostHog's ingestion API as far as the SDK sees it: POST /batch/, JSON (gzip or not)."""

    def __init__(self) -> None:
        super().__init__()
        self.RequestHandlerClass = _AnyMethod
        self.other_requests: list[str] = []

    def start(self) -> FakePostHog:
        super().start()
        return self

    def by_uuid(self) -> dict[str, JsonDict]:
        return {event["uuid"]: event for event in self.events}


class TestPostHogContract(IntegrationContract):
    integration_class = PostHogIntegration
    valid_config: ClassVar[dict[str, Any]] = {
        "teamApiKey": "phc_contract_secret_1",
        "yourInstance": "https://eu.i.posthog.com",
        "propertyBlackList": [{"property": "password"}, {"property": ""}],
        "useV2Group": True,
        "connectionMode": "device",
    }
    invalid_config: ClassVar[dict[str, Any]] = {"yourInstance": "ftp://nowhere", "maxRetries": 99}
    fake: ClassVar[FakePostHog]

    @classmethod
    def setup_class(cls) -> None:
        cls.fake = FakePostHog().start()

    @classmethod
    def teardown_class(cls) -> None:
        cls.fake.stop()

    def make_integration(self, options: IntegrationOptions) -> Integration[Any]:
        assert isinstance(options, PostHogOptions)
        return PostHogIntegration(options.model_copy(update={"your_instance": self.fake.url}))


@pytest.fixture
def fake() -> Iterator[FakePostHog]:
    server = FakePostHog().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def retry_waits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The SDK's backoff between retries, made instant; records each attempt index."""
    waits: list[int] = []
    monkeypatch.setattr(
        "posthog.consumer._backoff", lambda attempt, retry_after: waits.append(attempt)
    )
    return waits


def posthog_options(fake: FakePostHog, **settings: Any) -> PostHogOptions:
    config = {"teamApiKey": KEY, "yourInstance": fake.url, "maxRetries": 2, **settings}
    return PostHogOptions.model_validate(config)


def posthog_integration(fake: FakePostHog, **settings: Any) -> PostHogIntegration:
    return PostHogIntegration(posthog_options(fake, **settings))


@pytest.fixture
def started(fake: FakePostHog) -> Iterator[PostHogIntegration]:
    integration = posthog_integration(fake)
    integration.setup()
    try:
        yield integration
    finally:
        integration.shutdown(2.0)


def message(**wire: Any) -> Message:
    base: JsonDict = {"messageId": str(uuid.uuid4()), "userId": "u1", "context": {}}
    return parse_message({**base, **wire})


class Reports:
    """A thread-safe on_error recorder for the client."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.errors: list[tuple[AnalyticsError, list[JsonDict]]] = []

    def __call__(self, error: AnalyticsError, messages: list[JsonDict]) -> None:
        with self.lock:
            self.errors.append((error, messages))


# -- the real SDK's payloads, through the client ------------------------------------------------


def test_each_call_reaches_the_batch_endpoint_as_posthog_expects(
    make_client: MakeClient, fake: FakePostHog, data_plane: DataPlane
) -> None:
    client = make_client(integrations=[posthog_integration(fake)])
    when = datetime(2023, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    page_context = {
        "page": {"url": "https://shop.example/cart?x=1", "referrer": "https://ref.example/"},
        "ip": "198.51.100.4",
        "campaign": {"source": "news", "name": "spring"},
    }
    track_id = client.track(
        "u1",
        "Order Completed",
        {"revenue": 25.5, "currency": "EUR"},
        context=page_context,
        timestamp=when,
        anonymous_id="anon-1",
    )
    identify_id = client.identify("u1", {"email": "ada@example.com"}, anonymous_id="anon-1")
    page_id = client.page("u1", "Docs", "Pricing", {"url": "https://example.com/pricing?a=b"})
    screen_id = client.screen("u1", "App", "Settings", {"tab": "billing"})
    group_id = client.group("u1", "org-1", {"name": "Acme", "groupType": "team"})
    alias_id = client.alias("anon-1", "u1")
    ids = [track_id, identify_id, page_id, screen_id, group_id, alias_id]
    assert all(ids)
    assert client.flush(timeout=10)

    assert fake.other_requests == []  # nothing but /batch/: no /flags, no /decide, no GETs
    assert {r.path for r in fake.requests} == {"/batch/"}
    assert all(r.headers.get("Content-Encoding") == "gzip" for r in fake.requests)
    assert {r.json["api_key"] for r in fake.requests} == {KEY}
    events = fake.by_uuid()
    assert sorted(events) == sorted(str(i) for i in ids)  # messageId (a UUID) is the event uuid

    track = events[str(track_id)]
    assert track["event"] == "Order Completed"
    assert track["distinct_id"] == "u1"
    assert track["timestamp"] == "2023-01-02T03:04:05+00:00"  # the message's time, not now
    props = track["properties"]
    assert props["revenue"] == 25.5
    assert props["currency"] == "EUR"
    assert props["$anon_distinct_id"] == "anon-1"
    assert props["$current_url"] == "https://shop.example/cart?x=1"
    assert props["$host"] == "shop.example"
    assert props["$referrer"] == "https://ref.example/"
    assert props["$ip"] == "198.51.100.4"
    assert props["utm_source"] == "news"
    assert props["utm_campaign"] == "spring"
    assert props["$geoip_disable"] is True
    assert "messageId" not in props  # only a non-UUID messageId is kept as a property

    identify = events[str(identify_id)]
    assert identify["event"] == "$identify"
    assert identify["distinct_id"] == "u1"
    assert identify["properties"]["$set"] == {"email": "ada@example.com"}
    assert identify["properties"]["$anon_distinct_id"] == "anon-1"
    sent = {e["messageId"]: e for e in data_plane.events}
    original = datetime.fromisoformat(sent[identify_id]["originalTimestamp"].replace("Z", "+00:00"))
    assert datetime.fromisoformat(identify["timestamp"]) == original  # call time, not send time

    page = events[str(page_id)]
    assert page["event"] == "$pageview"
    assert page["properties"]["$current_url"] == "https://example.com/pricing?a=b"
    assert page["properties"]["$pathname"] == "/pricing"
    assert page["properties"]["$host"] == "example.com"
    assert page["properties"]["name"] == "Pricing"
    assert page["properties"]["category"] == "Docs"
    assert page["properties"]["url"] == "https://example.com/pricing?a=b"

    screen = events[str(screen_id)]
    assert screen["event"] == "$screen"
    assert screen["properties"]["$screen_name"] == "Settings"
    assert screen["properties"]["tab"] == "billing"

    group = events[str(group_id)]
    assert group["event"] == "$groupidentify"
    assert group["distinct_id"] == "u1"
    assert group["properties"]["$group_type"] == "team"  # traits.groupType wins over the option
    assert group["properties"]["$group_key"] == "org-1"
    assert group["properties"]["$group_set"] == {"name": "Acme"}

    alias = events[str(alias_id)]
    assert alias["event"] == "$create_alias"
    assert alias["distinct_id"] == "anon-1"
    assert alias["properties"]["alias"] == "u1"
    assert alias["properties"]["distinct_id"] == "anon-1"

    counters = client.stats().integrations["posthog"]
    assert counters["handled"] == 6
    assert counters["rejected"] == counters["failed"] == counters["dropped"] == 0


def test_a_batch_goes_out_as_one_request_before_handle_batch_returns(
    fake: FakePostHog, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    monkeypatch.setenv("POSTHOG_CAPTURE_MODE", "v1")  # the wrapper pins the /batch/ protocol
    started = posthog_integration(fake)
    started.setup()
    request.addfinalizer(lambda: started.shutdown(2.0))
    messages = sample_messages()
    assert started.handle_batch(messages) == []
    # Returned means sent: nothing is left in the SDK to flush.
    assert [r.path for r in fake.requests] == ["/batch/"]
    assert len(fake.requests[0].batch) == len(messages)
    assert started._client is not None
    assert started._client.queue.unfinished_tasks == 0
    assert started.flush(1.0) is True


def test_a_message_id_that_is_not_a_uuid_gives_a_stable_uuid_and_a_property(
    started: PostHogIntegration, fake: FakePostHog
) -> None:
    first = message(type="track", event="E", messageId="order-42")
    again = message(type="track", event="E", messageId="order-42")
    other = message(type="track", event="E", messageId="order-43")
    assert started.handle_batch([first]) == []
    assert started.handle_batch([again, other]) == []
    uuids = [e["uuid"] for e in fake.events]
    assert uuids[0] == uuids[1] != uuids[2]  # a re-sent message dedupes at PostHog
    assert uuids[0] == event_uuid("order-42")[0]
    assert uuid.UUID(uuids[0]).version == 5
    assert [e["properties"]["messageId"] for e in fake.events] == [
        "order-42",
        "order-42",
        "order-43",
    ]


def test_the_group_type_option_applies_when_traits_name_none(fake: FakePostHog) -> None:
    integration = posthog_integration(fake, groupType="organization")
    integration.setup()
    try:
        group = message(type="group", groupId="g-7", traits={"plan": "pro"})
        assert integration.handle_batch([group]) == []
    finally:
        integration.shutdown(2.0)
    (event,) = fake.events
    assert event["properties"]["$group_type"] == "organization"
    assert event["properties"]["$group_set"] == {"plan": "pro"}


def test_blacklisted_properties_are_never_sent(fake: FakePostHog) -> None:
    integration = posthog_integration(
        fake, propertyBlackList=[{"property": "password"}, {"property": "$os"}, {"property": ""}]
    )
    integration.setup()
    try:
        track = message(type="track", event="Signed Up", properties={"password": "x", "ok": 1})
        assert integration.handle_batch([track]) == []
    finally:
        integration.shutdown(2.0)
    properties = fake.events[0]["properties"]
    assert "password" not in properties
    assert "$os" not in properties  # added by the SDK itself, removed all the same
    assert properties["ok"] == 1
    assert "$lib" in properties  # the rest of the SDK's properties stay


def test_calls_posthog_cannot_take_are_rejected_with_a_reason(
    started: PostHogIntegration, fake: FakePostHog
) -> None:
    alias = message(type="alias", userId=None, anonymousId="a-1", previousId="old")
    nameless = message(type="track", event="  ")
    fine = message(type="track", event="Fine")
    result = started.handle_batch([alias, nameless, fine])
    reasons = {r.message_id: r.reason for r in result}
    assert reasons == {
        alias.message_id: "PostHog's alias needs a userId to merge previousId into",
        nameless.message_id: "a track call needs an event name for PostHog",
    }
    assert [e["event"] for e in fake.events] == ["Fine"]
    with pytest.raises(RejectedMessage, match="needs a userId"):
        started.handle(alias)


def test_an_event_over_posthogs_size_limit_is_rejected_not_dropped(
    started: PostHogIntegration, fake: FakePostHog
) -> None:
    huge = message(type="track", event="Huge", properties={"blob": "x" * (MAX_MSG_SIZE + 1)})
    fine = message(type="track", event="Fine")
    (rejected,) = started.handle_batch([huge, fine])
    assert rejected.message_id == huge.message_id
    assert re.fullmatch(r"the event is \d+ bytes, over PostHog's 900 KiB limit", rejected.reason)
    assert [e["event"] for e in fake.events] == ["Fine"]


# -- refusals, retries, timeouts -----------------------------------------------------------------


def test_a_refusal_is_reported_through_on_error_with_posthogs_answer(
    make_client: MakeClient, fake: FakePostHog
) -> None:
    fake.respond = lambda request: Reply(status=400, body='{"detail": "Invalid input: event"}')
    reports = Reports()
    client = make_client(integrations=[posthog_integration(fake)], on_error=reports)
    message_id = client.track("u1", "Refused")
    assert client.flush(timeout=10)
    assert len(fake.requests) == 1  # a 400 is not retried
    ((error, messages),) = reports.errors
    assert error.reason == "rejected_by_integration"
    assert "PostHog answered 400: Invalid input: event" in str(error)
    assert [m["messageId"] for m in messages] == [message_id]
    counters = client.stats().integrations["posthog"]
    assert (counters["handled"], counters["rejected"], counters["failed"]) == (0, 1, 0)


def test_a_rejection_reason_never_carries_the_api_key(
    started: PostHogIntegration, fake: FakePostHog
) -> None:
    fake.respond = lambda request: Reply(status=401, body=f'{{"detail": "bad key {KEY}"}}')
    (rejected,) = started.handle_batch([message(type="track", event="E")])
    assert KEY not in rejected.reason
    assert rejected.reason == "PostHog answered 401: bad key [redacted]"


def test_a_5xx_is_retried_by_the_sdk_and_then_delivered(
    make_client: MakeClient, fake: FakePostHog, retry_waits: list[int]
) -> None:
    fake.script = [Reply(status=503), Reply(status=502)]
    reports = Reports()
    client = make_client(integrations=[posthog_integration(fake)], on_error=reports)
    message_id = client.track("u1", "Retried")
    assert client.flush(timeout=10)
    assert [r.status for r in fake.requests] == [503, 502, 200]
    assert [r.batch[0]["uuid"] for r in fake.requests] == [message_id] * 3  # same event uuid
    assert retry_waits == [0, 1]
    assert reports.errors == []
    counters = client.stats().integrations["posthog"]
    assert (counters["handled"], counters["rejected"], counters["failed"]) == (1, 0, 0)


def test_a_5xx_that_outlasts_the_retries_is_rejected(
    make_client: MakeClient, fake: FakePostHog
) -> None:
    fake.respond = lambda request: Reply(status=503, body="busy")
    reports = Reports()
    client = make_client(integrations=[posthog_integration(fake, maxRetries=1)], on_error=reports)
    client.track("u1", "Lost")
    assert client.flush(timeout=10)
    assert len(fake.requests) == 2  # one try and max_retries=1 retry
    ((error, _),) = reports.errors
    assert error.reason == "rejected_by_integration"
    assert "PostHog answered 503: busy, after 2 attempts" in str(error)
    assert client.stats().integrations["posthog"]["rejected"] == 1


def test_a_request_timeout_is_retried_then_rejected(fake: FakePostHog) -> None:
    fake.respond = lambda request: Reply(delay=1.0)
    integration = posthog_integration(fake, timeout=0.2, maxRetries=1)
    integration.setup()
    try:
        (rejected,) = integration.handle_batch([message(type="track", event="Slow")])
    finally:
        integration.shutdown(2.0)
    assert rejected.reason == "PostHog could not be reached (ReadTimeout), after 2 attempts"
    assert len(fake.requests) == 2


def test_a_batch_the_sdk_cannot_finish_in_time_is_rejected_and_shutdown_stays_bounded(
    fake: FakePostHog, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.respond = lambda request: Reply(hang=True)  # until the server stops
    integration = posthog_integration(fake, timeout=30)
    monkeypatch.setattr(integration, "_delivery_budget", lambda: 0.3)
    integration.setup()
    (rejected,) = integration.handle_batch([message(type="track", event="Stuck")])
    assert rejected.reason == "PostHog had not answered after 0.3 s (the event may still arrive)"
    assert integration.flush(0.1) is False  # it really is still in the SDK
    started = time.monotonic()
    integration.shutdown(0.5)
    assert time.monotonic() - started < 2.0  # the SDK's consumer is still stuck in a request


def test_a_message_is_counted_exactly_once_when_the_batch_mixes_fates(
    make_client: MakeClient, fake: FakePostHog
) -> None:
    """The factory hands the wrapper whatever is queued: every message ends counted."""
    fake.script = [Reply(status=400, body='{"detail": "no"}')]
    reports = Reports()
    client = make_client(integrations=[posthog_integration(fake)], on_error=reports)
    client.track("u1", "First")  # refused with whatever batch it travels in
    assert client.flush(timeout=10)
    client.track("u1", "Second")
    assert client.flush(timeout=10)
    counters = client.stats().integrations["posthog"]
    assert counters["handled"] + counters["rejected"] + counters["failed"] == 2
    assert (counters["handled"], counters["rejected"]) == (1, 1)
    assert [e["event"] for e in fake.events] == ["Second"]


def big_events(count: int) -> list[Message]:
    """Events of ~600 kB each (under PostHog's 900 KiB limit): 9 of them fill a request."""
    blob = "x" * 600_000
    return [
        message(type="track", event=f"Big {n}", properties={"blob": blob}) for n in range(count)
    ]


class Gate:
    """A fake PostHog's answers: the first `passes` requests at once, later ones only once the
    test opens the gate (or 10 s passed)."""

    def __init__(self, passes: int = 0) -> None:
        self.opened = threading.Event()
        self._lock = threading.Lock()
        self._passes = passes

    def __call__(self, request: Request) -> None:
        with self._lock:
            self._passes -= 1
            held = self._passes < 0
        if held:
            self.opened.wait(10)


def test_a_batch_over_5_mib_gets_the_time_bound_once_per_request(
    fake: FakePostHog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK sends at most 5 MiB per request: a big batch takes several, one after another."""
    fake.respond = lambda request: Reply(delay=0.4)  # every request; the bound is 1 s
    integration = posthog_integration(fake, maxRetries=0, gzip=False)
    monkeypatch.setattr(integration, "_delivery_budget", lambda: 1.0)
    integration.setup()
    try:
        messages = big_events(30)  # 18 MB: four requests, 1.6 s in all
        assert integration.handle_batch(messages) == []
    finally:
        integration.shutdown(2.0)
    assert len(fake.requests) >= 4
    assert all(len(r.body) < BATCH_SIZE_LIMIT + MAX_MSG_SIZE for r in fake.requests)
    assert sorted(e["uuid"] for e in fake.events) == sorted(m.message_id for m in messages)


def test_a_request_that_outlives_its_bound_rejects_only_what_posthog_did_not_take(
    fake: FakePostHog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests answered before count as delivered; nothing after is ever sent uncounted."""
    gate = fake.respond = Gate(passes=1)  # the first request is answered, the second waits
    integration = posthog_integration(fake, maxRetries=0, gzip=False)
    monkeypatch.setattr(integration, "_delivery_budget", lambda: 0.5)
    integration.setup()
    try:
        messages = big_events(20)
        rejected = integration.handle_batch(messages)
        gate.opened.set()
        assert integration.flush(5.0) is True  # the late request was answered, nothing else
    finally:
        gate.opened.set()
        integration.shutdown(2.0)
    first, second = ([e["uuid"] for e in r.batch] for r in fake.requests)
    reasons = {r.message_id: r.reason for r in rejected}
    never_sent = [m.message_id for m in messages if m.message_id not in first + second]
    assert first
    assert second
    assert never_sent
    late = "PostHog had not answered after 0.5 s (the event may still arrive)"
    not_sent = "not sent: PostHog had not answered an earlier request after 0.5 s"
    assert reasons == {**dict.fromkeys(second, late), **dict.fromkeys(never_sent, not_sent)}
    assert len(fake.requests) == 2
    assert sorted(e["uuid"] for e in fake.events) == sorted(first + second)


def test_a_batch_queued_behind_an_unanswered_request_is_taken_back_not_sent_later(
    fake: FakePostHog, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = fake.respond = Gate()
    integration = posthog_integration(fake, maxRetries=0)
    monkeypatch.setattr(integration, "_delivery_budget", lambda: 0.3)
    integration.setup()
    try:
        held = message(type="track", event="Held")
        (late,) = integration.handle_batch([held])
        behind = [message(type="track", event="Behind"), message(type="track", event="Too")]
        rejected = integration.handle_batch(behind)  # the SDK is still busy with "Held"
        gate.opened.set()
        assert integration.flush(5.0) is True
    finally:
        gate.opened.set()
        integration.shutdown(2.0)
    assert late.message_id == held.message_id
    assert "may still arrive" in late.reason
    assert [(r.message_id, r.reason) for r in rejected] == [
        (m.message_id, "not sent: PostHog had not answered an earlier request after 0.3 s")
        for m in behind
    ]
    assert [e["event"] for e in fake.events] == ["Held"]  # "Behind" never went out


def test_a_refusal_is_reported_for_each_message_sharing_a_message_id(
    started: PostHogIntegration, fake: FakePostHog
) -> None:
    """A second message with the same messageId that is not queued leaves the first counted."""
    fake.respond = lambda request: Reply(status=400, body='{"detail": "invalid batch"}')
    small = message(type="track", event="Small", messageId="same-id")
    huge = message(
        type="track", event="Huge", messageId="same-id", properties={"blob": "x" * MAX_MSG_SIZE}
    )
    rejected = started.handle_batch([small, huge])
    assert [e["event"] for r in fake.requests for e in r.batch] == ["Small"]
    assert [r.message_id for r in rejected] == ["same-id", "same-id"]
    assert rejected[0].reason == "PostHog answered 400: invalid batch"
    assert "over PostHog's 900 KiB limit" in rejected[1].reason


def test_events_still_queued_at_exit_are_delivered_by_the_exit_flush(
    fake: FakePostHog, data_plane: DataPlane
) -> None:
    """posthog's own exit hook must not close the SDK before analytics_sdk's exit flush."""
    fake.respond = lambda request: Reply(delay=0.5) if "E0" in request.body.decode() else None
    result = run_exit_script(
        data_plane.url,
        fake.url,
        "analytics_sdk_posthog:PostHogIntegration",
        {"teamApiKey": "phc_exit", "yourInstance": fake.url, "maxRetries": 0},
    )
    assert result.returncode == 0, result.stderr
    assert "exiting" in result.stdout
    assert "ON_ERROR" not in result.stdout, result.stdout
    assert sorted(e["event"] for e in fake.events) == EXPECTED_EVENTS
    assert len(data_plane.events) == 21


def test_the_wait_bound_covers_the_sdks_own_retry_schedule(fake: FakePostHog) -> None:
    """handle_batch waits this long at most; it must not cut the SDK's retries short."""
    integration = posthog_integration(fake, timeout=2, maxRetries=3)
    assert posthog_wrapper._BACKOFF_CEILING >= posthog.capture_v1._MAX_BACKOFF_SECONDS
    worst = 4 * 3 * 2 + 3 * posthog.capture_v1._MAX_BACKOFF_SECONDS  # attempts, connects, waits
    assert integration._delivery_budget() >= worst


# -- the SDK's footprint ---------------------------------------------------------------------


def test_the_sdk_runs_one_consumer_thread_and_releases_it(fake: FakePostHog) -> None:
    before = set(threading.enumerate())
    integration = posthog_integration(fake)
    integration.setup()
    sdk_client = integration._client
    assert sdk_client is not None
    assert sdk_client.poller is None
    new = set(threading.enumerate()) - before
    assert len(new) == 1  # the event consumer; no flag poller, no metrics or exception hooks
    assert integration.handle_batch([message(type="track", event="E")]) == []
    integration.shutdown(2.0)
    for thread in new:
        thread.join(timeout=2.0)
        assert not thread.is_alive()
    # posthog registers an atexit hook per client that holds it for good; shutdown removes it.
    collected = weakref.ref(sdk_client)
    del sdk_client
    gc.collect()
    assert collected() is None
    assert fake.other_requests == []


def test_setup_leaves_the_posthog_loggers_level_alone(fake: FakePostHog) -> None:
    sdk_logger = logging.getLogger("posthog")
    level = sdk_logger.level
    sdk_logger.setLevel(logging.INFO)
    integration = posthog_integration(fake)
    try:
        integration.setup()
        assert sdk_logger.level == logging.INFO  # posthog.Client() sets WARNING on its own
    finally:
        integration.shutdown(1.0)
        sdk_logger.setLevel(level)


def test_shutdown_without_setup_and_twice_is_harmless(fake: FakePostHog) -> None:
    never_started = posthog_integration(fake)
    never_started.shutdown(0.5)  # the factory does this for a worker that never got a message
    assert never_started.flush(0.5) is True
    integration = posthog_integration(fake)
    integration.setup()
    integration.shutdown(1.0)
    integration.shutdown(1.0)
    with pytest.raises(RuntimeError, match="not set up"):
        integration.handle_batch([message(type="track", event="Late")])


# -- options -------------------------------------------------------------------------------------


def test_options_take_the_control_planes_keys_and_validate() -> None:
    options = PostHogOptions.model_validate(
        {"teamApiKey": f" {KEY} ", "yourInstance": "https://ph.example.com/ingest/"}
    )
    assert options.team_api_key.get_secret_value() == KEY
    assert options.your_instance == "https://ph.example.com/ingest"
    assert KEY not in repr(options)
    defaults = PostHogOptions.model_validate({"teamApiKey": KEY, "yourInstance": ""})
    assert defaults.your_instance == DEFAULT_HOST
    assert (defaults.gzip, defaults.timeout, defaults.max_retries) == (True, 10.0, 3)
    assert defaults.group_type == "company"
    with pytest.raises(ValidationError, match="must not be empty"):
        PostHogOptions.model_validate({"teamApiKey": "  "})
    with pytest.raises(ValidationError, match="http:// or https:// URL with a host"):
        PostHogOptions.model_validate({"teamApiKey": KEY, "yourInstance": "us.posthog.com"})
    with pytest.raises(ValidationError, match="less than or equal to 60"):
        PostHogOptions.model_validate({"teamApiKey": KEY, "timeout": 61})


# -- discovery through the real entry point ------------------------------------------------------


def test_the_factory_discovers_and_enables_it_from_a_source_config(
    make_client: MakeClient, fake: FakePostHog, data_plane: DataPlane
) -> None:
    document = {
        "source": {
            "id": "src",
            "destinations": [
                {
                    "id": "dst_posthog",
                    "enabled": True,
                    "destinationDefinition": {"name": "POSTHOG", "displayName": "PostHog"},
                    "config": {
                        "teamApiKey": KEY,
                        "yourInstance": fake.url,
                        "useV2Group": True,
                        "connectionMode": "device",
                    },
                }
            ],
        }
    }
    client = make_client(source_config=document)
    message_id = client.track("u1", "Via Config")
    assert client.flush(timeout=10)
    assert [e["uuid"] for e in fake.events] == [message_id]
    assert data_plane.message_ids() == [message_id]  # the data plane copy keeps the messageId
    status = {s["key"]: s for s in client.integrations_status()}
    assert status["posthog"]["active"] is True
    assert status["posthog"]["counters"]["handled"] == 1
