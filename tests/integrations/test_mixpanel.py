"""The Mixpanel wrapper: its contract, the real Mixpanel SDK against a fake API on 127.0.0.1,
the mapping of each call, refusals and retries, and discovery from a source config."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar
from uuid import uuid4

import pytest
from analytics_sdk_mixpanel import MixpanelIntegration, MixpanelOptions, insert_id
from conftest import MakeClient
from pydantic import ValidationError
from support.servers import DataPlane

from analytics_sdk import AnalyticsError
from analytics_sdk._factory import discover
from analytics_sdk.errors import describe
from analytics_sdk.integration import Integration, IntegrationOptions, Rejected, RejectedMessage
from analytics_sdk.models import Message, parse_message
from analytics_sdk.testing import IntegrationContract
from integrations.mixpanel_api import Answer, FakeMixpanel, Received, write_certificate

TOKEN = "mp-project-token-1"
SECRET = "mp-api-secret-1"
# A recent time with milliseconds, in the past: the messages' own time, never "now".
WHEN = (datetime.now(timezone.utc) - timedelta(hours=1)).replace(microsecond=123000)
WHEN_MS = int(WHEN.timestamp()) * 1000 + 123
WHEN_ISO = WHEN.strftime("%Y-%m-%dT%H:%M:%S")

MakeMixpanel = Callable[..., MixpanelIntegration]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_certificate(tmp_path_factory.mktemp("mixpanel-tls"))


@pytest.fixture(autouse=True)
def _trust_the_fake_api(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("analytics_sdk_mixpanel._BACKOFF_BASE", 0.001)


@pytest.fixture
def api(certificate: tuple[Path, Path]) -> Iterator[FakeMixpanel]:
    server = FakeMixpanel(certificate).start()
    try:
        yield server
    finally:
        server.stop()


def options(api: FakeMixpanel, **settings: Any) -> MixpanelOptions:
    """As the control plane sends them (camelCase), aimed at the fake API."""
    config = {"token": TOKEN, "apiHost": api.host, "timeout": 2, "maxRetries": 2, **settings}
    return MixpanelOptions.model_validate(config)


@pytest.fixture
def make_mixpanel(api: FakeMixpanel) -> Iterator[MakeMixpanel]:
    """A set-up wrapper to call directly (no client), shut down after the test."""
    made: list[MixpanelIntegration] = []

    def make(**settings: Any) -> MixpanelIntegration:
        integration = MixpanelIntegration(options(api, **settings))
        integration.setup()
        made.append(integration)
        return integration

    yield make
    for integration in made:
        integration.shutdown(1.0)


def message(kind: str, **fields: Any) -> Message:
    wire = {
        "type": kind,
        "messageId": str(uuid4()),
        "userId": "u1",
        "originalTimestamp": WHEN.isoformat(),
        **fields,
    }
    return parse_message({k: v for k, v in wire.items() if v is not None})


class TestMixpanelContract(IntegrationContract):
    integration_class = MixpanelIntegration
    valid_config: ClassVar[dict[str, Any]] = {
        "token": "contract-token-1",
        "apiSecret": "contract-secret-1",  # /import: the sample messages are years old
        "people": True,
        "groupKeySettings": [{"groupKey": "company"}],
        "connectionMode": "device",
    }
    invalid_config: ClassVar[dict[str, Any]] = {
        "token": "contract-token-1",
        "dataResidency": "mars",
        "apiHost": "https://nowhere.example/x",
    }
    api: ClassVar[FakeMixpanel]

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _fake_api(cls, certificate: tuple[Path, Path]) -> Iterator[None]:
        cls.api = FakeMixpanel(certificate).start()
        yield
        cls.api.stop()

    def make_integration(self, options: IntegrationOptions) -> Integration[Any]:
        assert isinstance(options, MixpanelOptions)
        return MixpanelIntegration(options.model_copy(update={"api_host": self.api.host}))


# -- what the real SDK sends -------------------------------------------------------------------


def test_track_reaches_mixpanel_with_its_ids_time_and_properties(
    make_client: MakeClient, api: FakeMixpanel
) -> None:
    client = make_client(integrations=[MixpanelIntegration(options(api))])
    message_id = client.track(
        "u1",
        "Order Completed",
        {"order_id": "A-1", "revenue": 25.5, "token": "spoofed", "distinct_id": "spoofed"},
        context={"ip": "203.0.113.7", "campaign": {"name": "spring", "source": "news"}},
        timestamp=WHEN,
    )
    assert client.flush(timeout=5)

    (request,) = api.requests_to("/track")
    (record,) = request.records
    assert record["event"] == "Order Completed"
    properties = record["properties"]
    assert properties["$insert_id"] == message_id  # Mixpanel deduplicates on it
    assert properties["time"] == WHEN_MS  # the message's time, in ms
    assert properties["token"] == TOKEN  # a "token" property cannot replace the project token
    assert properties["distinct_id"] == "u1"
    assert properties["order_id"] == "A-1"
    assert properties["revenue"] == 25.5
    assert properties["ip"] == "203.0.113.7"
    assert (properties["utm_campaign"], properties["utm_source"]) == ("spring", "news")
    assert properties["mp_lib"] == "python"  # built by the SDK's own Mixpanel.track
    assert request.form["verbose"] == "1"  # so a refusal comes back with Mixpanel's reason
    assert "Authorization" not in request.headers  # /track needs the token only
    assert api.requests_to("/engage") == []  # people is off: no profile update
    assert client.stats().integrations["mixpanel"]["handled"] == 1


def test_a_batch_is_one_request_per_endpoint_with_up_to_50_records(
    make_mixpanel: MakeMixpanel, api: FakeMixpanel
) -> None:
    integration = make_mixpanel(people=True)
    tracks = [message("track", event=f"E{n}") for n in range(60)]
    identifies = [
        message("identify", userId=f"u{n}", traits={"email": "a@x.test"}) for n in range(3)
    ]

    assert integration.handle_batch([*tracks[:30], *identifies, *tracks[30:]]) == []

    assert [len(r.records) for r in api.requests_to("/track")] == [50, 10]
    assert [len(r.records) for r in api.requests_to("/engage")] == [3]
    sent = [record["properties"]["$insert_id"] for record in api.records("/track")]
    assert sent == [m.message_id for m in tracks]
    assert integration.flush(1.0) is True  # nothing stays buffered after a handler returns


def test_identify_sets_the_chosen_traits_and_the_set_once_ones(
    make_mixpanel: MakeMixpanel, api: FakeMixpanel
) -> None:
    integration = make_mixpanel(
        people=True,
        peopleProperties=[{"property": "plan"}, {"property": ""}],
        setOnceProperties=[{"property": "signup_source"}],
    )
    traits = {"email": "ada@example.com", "firstName": "Ada", "lastName": "Lovelace",
              "plan": "pro", "signup_source": "ads", "internal_score": 7}  # fmt: skip
    integration.handle(message("identify", traits=traits, context={"ip": "203.0.113.7"}))

    set_record, once_record = api.records("/engage")
    assert set_record["$set"] == {
        "$email": "ada@example.com",
        "$first_name": "Ada",
        "$last_name": "Lovelace",
        "$name": "Ada Lovelace",
        "plan": "pro",
    }  # internal_score is neither a people property nor setAllTraitsByDefault
    assert once_record["$set_once"] == {"signup_source": "ads"}
    for record in (set_record, once_record):
        assert record["$distinct_id"] == "u1"
        assert record["$token"] == TOKEN
        assert record["$time"] == pytest.approx(WHEN.timestamp())  # seconds, for /engage
        assert record["$ip"] == "203.0.113.7"


def test_set_all_traits_by_default_sends_every_trait(
    make_mixpanel: MakeMixpanel, api: FakeMixpanel
) -> None:
    integration = make_mixpanel(people=True, setAllTraitsByDefault=True)
    integration.handle(message("identify", traits={"plan": "pro", "internal_score": 7}))
    (record,) = api.records("/engage")
    assert record["$set"] == {"plan": "pro", "internal_score": 7}


def test_identify_with_people_off_is_rejected_not_dropped(
    make_mixpanel: MakeMixpanel, api: FakeMixpanel
) -> None:
    integration = make_mixpanel()  # people defaults to off, as in RudderStack
    with pytest.raises(RejectedMessage, match="people is off"):
        integration.handle(message("identify", traits={"plan": "pro"}))
    assert api.received == []


def test_identify_merges_the_anonymous_id_through_import_with_the_api_secret(
    make_mixpanel: MakeMixpanel, api: FakeMixpanel
) -> None:
    integration = make_mixpanel(apiSecret=SECRET)
    integration.handle(message("identify", anonymousId="anon-1", traits={"plan": "pro"}))

    (request,) = api.requests_to("/import")
    assert request.records == [
        {"event": "$merge", "properties": {"$distinct_ids": ["u1", "anon-1"], "token": TOKEN}}
    ]
    assert request.basic_user == SECRET
    assert api.requests_to("/engage") == []  # people off: the merge only


def test_revenue_and_increments_update_the_profile(
    make_mixpanel: MakeMixpanel, api: FakeMixpanel
) -> None:
    integration = make_mixpanel(
        people=True,
        eventIncrements=[{"property": "Order Completed"}],
        propIncrements=[{"property": "items"}],
    )
    integration.handle(
        message("track", event="Order Completed", properties={"revenue": "25.5", "items": 3})
    )

    last, added, charge = api.records("/engage")
    assert last["$set"] == {"Last Order Completed": WHEN_ISO}
    assert added["$add"] == {"Order Completed": 1, "items": 3}
    assert charge["$append"] == {"$transactions": {"$time": WHEN_ISO, "$amount": 25.5}}
    assert {r["$distinct_id"] for r in (last, added, charge)} == {"u1"}
    assert len(api.records("/track")) == 1  # and the event itself


def test_events_older_than_five_days_need_the_import_api(
    make_mixpanel: MakeMixpanel, api: FakeMixpanel
) -> None:
    old = (WHEN - timedelta(days=30)).isoformat()
    with pytest.raises(RejectedMessage, match="older than 5 days"):
        make_mixpanel().handle(message("track", event="Old", originalTimestamp=old))
    assert api.received == []

    make_mixpanel(apiSecret=SECRET).handle(message("track", event="Old", originalTimestamp=old))
    (request,) = api.requests_to("/import")
    assert request.basic_user == SECRET
    assert "api_key" not in request.form
    assert request.records[0]["properties"]["time"] == WHEN_MS - 30 * 86_400_000


def test_a_service_account_authenticates_the_import_api(
    make_mixpanel: MakeMixpanel, api: FakeMixpanel
) -> None:
    integration = make_mixpanel(
        serviceAccountUserName="sa-user", serviceAccountSecret="sa-secret", projectId="12345"
    )
    integration.handle(message("track", event="Imported"))
    (request,) = api.requests_to("/import")
    assert request.basic_user == "sa-user"
    assert request.query["project_id"] == "12345"
    assert request.records[0]["event"] == "Imported"


@pytest.mark.parametrize(
    ("settings", "kind", "expected"),
    [
        ({}, "page", "Loaded a Page"),
        ({}, "screen", "Loaded a Screen"),
        ({"consolidatedPageCalls": False, "trackCategorizedPages": True}, "page",
         "Viewed Docs Pricing Page"),
        ({"consolidatedPageCalls": False, "trackNamedPages": True}, "page", "Viewed Pricing Page"),
        ({"consolidatedPageCalls": False, "trackNamedPages": True}, "screen",
         "Viewed Pricing Screen"),
    ],
)  # fmt: skip
def test_page_and_screen_become_events(
    make_mixpanel: MakeMixpanel,
    api: FakeMixpanel,
    settings: dict[str, Any],
    kind: str,
    expected: str,
) -> None:
    view = message(kind, name="Pricing", category="Docs", properties={"url": "https://x.test/p"})
    make_mixpanel(**settings).handle(view)
    (record,) = api.records("/track")
    assert record["event"] == expected
    properties = record["properties"]
    assert (properties["name"], properties["category"]) == ("Pricing", "Docs")
    assert properties["url"] == "https://x.test/p"
    assert properties["$insert_id"] == view.message_id
    assert properties["time"] == WHEN_MS


def test_a_page_no_setting_covers_is_rejected(
    make_mixpanel: MakeMixpanel, api: FakeMixpanel
) -> None:
    integration = make_mixpanel(consolidatedPageCalls=False, trackNamedPages=True)
    with pytest.raises(RejectedMessage, match="consolidatedPageCalls is off"):
        integration.handle(message("page", category="Docs"))  # no name to name it by
    assert api.received == []


def test_group_sets_the_group_profile_under_each_group_key(
    make_mixpanel: MakeMixpanel, api: FakeMixpanel
) -> None:
    integration = make_mixpanel(
        people=True, groupKeySettings=[{"groupKey": "company"}, {"groupKey": "account"}]
    )
    integration.handle(message("group", groupId="org-1", traits={"name": "Acme", "seats": 42}))

    groups = api.records("/groups")
    assert [(g["$group_key"], g["$group_id"]) for g in groups] == [
        ("company", "org-1"),
        ("account", "org-1"),
    ]
    assert all(g["$set"] == {"name": "Acme", "seats": 42} and g["$token"] == TOKEN for g in groups)
    (link,) = api.records("/engage")  # the user's profile lists the group
    assert link["$union"] == {"company": ["org-1"], "account": ["org-1"]}
    assert link["$distinct_id"] == "u1"


def test_group_without_group_keys_is_rejected(make_mixpanel: MakeMixpanel) -> None:
    with pytest.raises(RejectedMessage, match="groupKeySettings is empty"):
        make_mixpanel().handle(message("group", groupId="org-1"))


def test_alias_is_a_create_alias_event_on_the_configured_host(
    make_mixpanel: MakeMixpanel, api: FakeMixpanel
) -> None:
    alias = message("alias", previousId="anon-1", userId="u1")
    make_mixpanel().handle(alias)
    (record,) = api.records("/track")  # sent by our consumer, not Mixpanel.alias()'s own
    assert record["event"] == "$create_alias"
    assert record["properties"]["distinct_id"] == "anon-1"
    assert record["properties"]["alias"] == "u1"
    assert record["properties"]["$insert_id"] == alias.message_id


@pytest.mark.parametrize(
    ("settings", "fields", "reason"),
    [
        ({"identityMergeApi": "simplified"}, {"previousId": "anon-1"}, "Simplified ID Merge"),
        ({}, {"previousId": "anon-1", "userId": None, "anonymousId": "anon-1"}, "needs a userId"),
        ({}, {"previousId": "u1"}, "equals userId"),
    ],
)
def test_alias_that_mixpanel_cannot_take_is_rejected(
    make_mixpanel: MakeMixpanel,
    api: FakeMixpanel,
    settings: dict[str, Any],
    fields: dict[str, Any],
    reason: str,
) -> None:
    with pytest.raises(RejectedMessage, match=reason):
        make_mixpanel(**settings).handle(message("alias", **fields))
    assert api.received == []


def test_simplified_id_merge_sends_device_and_user_ids(
    make_mixpanel: MakeMixpanel, api: FakeMixpanel
) -> None:
    integration = make_mixpanel(identityMergeApi="simplified")
    integration.handle(message("track", event="Anonymous", userId=None, anonymousId="anon-1"))
    integration.handle(message("track", event="Known", anonymousId="anon-1"))

    anonymous, known = (r["properties"] for r in api.records("/track"))
    assert anonymous["distinct_id"] == "$device:anon-1"
    assert anonymous["$device_id"] == "anon-1"
    assert "$user_id" not in anonymous
    assert (known["distinct_id"], known["$device_id"], known["$user_id"]) == (
        "u1",
        "anon-1",
        "u1",
    )


def test_a_message_id_mixpanel_cannot_take_becomes_a_stable_insert_id(
    make_mixpanel: MakeMixpanel, api: FakeMixpanel
) -> None:
    long_id = f"server-{uuid4().hex}-{uuid4().hex}"  # > 36 characters
    make_mixpanel().handle(message("track", event="E", messageId=long_id))
    sent = api.records("/track")[0]["properties"]["$insert_id"]
    assert sent == insert_id(long_id) == insert_id(long_id)  # the same on every retry
    assert len(sent) == 36
    assert sent != long_id[:36]
    valid = "0b6f8f5e-6c1a-4b8e-9a57-2b1f0f3c9d11"
    assert insert_id(valid) == valid


@pytest.mark.parametrize(
    ("settings", "host"),
    [
        ({}, "api.mixpanel.com"),
        ({"dataResidency": "eu"}, "api-eu.mixpanel.com"),
        ({"dataResidency": "in"}, "api-in.mixpanel.com"),
        ({"dataResidency": "eu", "apiHost": "mp-proxy.internal:8443"}, "mp-proxy.internal:8443"),
    ],
)
def test_data_residency_picks_the_mixpanel_servers(settings: dict[str, Any], host: str) -> None:
    integration = MixpanelIntegration(MixpanelOptions.model_validate({"token": "t", **settings}))
    integration.setup()  # no I/O: the SDK's Consumer only builds its endpoints
    try:
        assert integration.options.host == host
        assert integration._consumer._endpoints["events"] == f"https://{host}/track"
    finally:
        integration.shutdown(1.0)


# -- refusals and failures ---------------------------------------------------------------------


@pytest.fixture
def reports() -> list[AnalyticsError]:
    return []


def collector(reports: list[AnalyticsError]) -> Callable[[AnalyticsError, list[Any]], None]:
    lock = threading.Lock()

    def on_error(error: AnalyticsError, messages: list[dict[str, Any]]) -> None:
        with lock:
            reports.append(error)

    return on_error


def test_a_refusal_is_reported_with_mixpanels_reason_and_no_secret(
    make_client: MakeClient, api: FakeMixpanel, reports: list[AnalyticsError]
) -> None:
    api.respond = lambda request: Answer(400, f'{{"status":0,"error":"invalid token {TOKEN}"}}')
    client = make_client(
        integrations=[MixpanelIntegration(options(api))], on_error=collector(reports)
    )
    client.track("u1", "Refused")
    assert client.flush(timeout=5)

    assert len(api.requests_to("/track")) == 1  # a refusal is not retried
    (error,) = reports
    assert error.reason == "rejected_by_integration"
    assert "Mixpanel refused the /track request: invalid token ***" in str(error)
    assert TOKEN not in str(error)
    counters = client.stats().integrations["mixpanel"]
    assert (counters["handled"], counters["rejected"]) == (0, 1)


def test_5xx_and_timeouts_are_retried_then_delivered(
    make_client: MakeClient, api: FakeMixpanel
) -> None:
    api.script = [Answer(503, "busy"), Answer(hang=True)]
    client = make_client(integrations=[MixpanelIntegration(options(api, timeout=0.5))])
    message_id = client.track("u1", "Retried")
    assert client.flush(timeout=10)

    attempts = api.requests_to("/track")
    assert [r.status for r in attempts] == [503, 0, 200]  # 0: no answer, timed out
    assert {r.records[0]["properties"]["$insert_id"] for r in attempts} == {message_id}
    counters = client.stats().integrations["mixpanel"]
    assert (counters["handled"], counters["rejected"]) == (1, 0)


def test_retries_are_bounded_and_giving_up_is_reported(
    make_client: MakeClient, api: FakeMixpanel, reports: list[AnalyticsError]
) -> None:
    api.respond = lambda request: Answer(503, "busy")
    integration = MixpanelIntegration(options(api, maxRetries=1))
    client = make_client(integrations=[integration], on_error=collector(reports))
    client.track("u1", "Never Lands")
    assert client.flush(timeout=10)

    assert len(api.requests_to("/track")) == 2  # the first try and one retry
    (error,) = reports
    assert error.reason == "rejected_by_integration"
    assert "Mixpanel /track failed 2 time(s): HTTP 503" in str(error)
    assert client.stats().integrations["mixpanel"]["rejected"] == 1


def test_an_unreachable_endpoint_is_not_waited_on_twice_in_one_batch(
    make_mixpanel: MakeMixpanel, api: FakeMixpanel
) -> None:
    api.respond = lambda request: Answer(503, "busy")
    tracks = [message("track", event=f"E{n}") for n in range(60)]
    rejected = make_mixpanel(maxRetries=0).handle_batch(tracks)
    assert len(api.requests_to("/track")) == 1  # the second chunk of 10 was not tried
    assert [r.message_id for r in rejected] == [m.message_id for m in tracks]
    assert {r.reason for r in rejected} == {"Mixpanel /track failed 1 time(s): HTTP 503"}


def test_only_messages_whose_records_failed_are_rejected(
    make_mixpanel: MakeMixpanel, api: FakeMixpanel
) -> None:
    def refuse_profiles(request: Received) -> Answer | None:
        if request.path == "/engage":
            return Answer(400, '{"status":0,"error":"$set must be an object"}')
        return None

    api.respond = refuse_profiles
    paid = message("track", event="Paid", properties={"revenue": 5})
    identify = message("identify", traits={"email": "ada@example.com"})
    plain = message("track", event="Viewed")

    rejected = make_mixpanel(people=True).handle_batch([paid, identify, plain])

    reason = "Mixpanel refused the /engage request: $set must be an object"
    assert rejected == [Rejected(paid.message_id, reason), Rejected(identify.message_id, reason)]
    landed = [r["properties"]["$insert_id"] for r in api.records("/track")]
    assert landed == [paid.message_id, plain.message_id]  # the events themselves arrived


def test_shutdown_ends_a_retry_wait_at_once(
    make_mixpanel: MakeMixpanel, api: FakeMixpanel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("analytics_sdk_mixpanel._BACKOFF_BASE", 10.0)
    first_try = threading.Event()

    def busy(request: Received) -> Answer:
        first_try.set()
        return Answer(503, "busy")

    api.respond = busy
    integration = make_mixpanel(maxRetries=3)
    result: list[list[Rejected]] = []
    worker = threading.Thread(
        target=lambda: result.append(integration.handle_batch([message("track", event="E")]))
    )
    worker.start()
    assert first_try.wait(5)
    integration.shutdown(1.0)
    worker.join(timeout=3)

    assert not worker.is_alive()
    ((rejected,),) = result
    assert rejected.reason.startswith("shutdown while retrying Mixpanel /track")


def worker_thread(key: str, before: set[threading.Thread]) -> threading.Thread:
    """The integration's worker thread, started since `before` was taken."""
    (thread,) = [
        t
        for t in threading.enumerate()
        if t.name == f"analytics_sdk.integration.{key}" and t not in before
    ]
    return thread


def test_a_shutdown_that_gives_up_interrupts_the_retries_and_the_worker_ends(
    make_client: MakeClient,
    api: FakeMixpanel,
    reports: list[AnalyticsError],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("backoff.full_jitter", lambda value: 60.0)  # only interrupt() cuts it
    first_try = threading.Event()

    def busy(request: Received) -> Answer:
        first_try.set()
        return Answer(503, "busy")

    api.respond = busy
    before = set(threading.enumerate())
    integration = MixpanelIntegration(options(api, maxRetries=5))
    client = make_client(integrations=[integration], on_error=collector(reports))
    client.track("u1", "First")
    assert first_try.wait(5)
    worker = worker_thread("mixpanel", before)
    client.track("u1", "Queued Behind")  # in the worker's queue, behind the retrying handler

    assert client.shutdown(timeout=0.5) is False  # the deadline passed: abandoned, interrupted
    worker.join(timeout=3)

    assert not worker.is_alive()  # the retry wait ended: the thread did not outlive shutdown
    assert len(api.requests_to("/track")) == 1  # the first try only: nothing sent afterwards
    assert sorted(str(e).split(": ", 1)[1] for e in reports) == [
        "shutdown before sending to Mixpanel /track",  # the queued one: rejected, unsent
        "shutdown while retrying Mixpanel /track (HTTP 503)",
    ]
    counters = client.stats().integrations["mixpanel"]
    assert (counters["handled"], counters["rejected"]) == (0, 2)


def test_interrupt_before_setup_sticks_and_nothing_is_sent(api: FakeMixpanel) -> None:
    integration = MixpanelIntegration(options(api))
    integration.interrupt()  # the factory gave up before the worker even set it up
    integration.setup()
    try:
        (rejected,) = integration.handle_batch([message("track", event="E")])
    finally:
        integration.shutdown(1.0)
    integration.interrupt()  # after shutdown too: harmless
    assert rejected.reason == "shutdown before sending to Mixpanel /track"
    assert api.requests_to("/track") == []


def test_messages_sharing_a_message_id_are_answered_each_for_itself(
    make_mixpanel: MakeMixpanel, api: FakeMixpanel
) -> None:
    bought = message("track", messageId="X-1", event="Bought")
    identify = message("identify", messageId="X-1", traits={"plan": "pro"})  # people is off

    rejected = make_mixpanel().handle_batch([bought, identify])

    assert [r["event"] for r in api.records("/track")] == ["Bought"]  # the track landed...
    (only,) = rejected  # ...so only the identify is rejected, not both
    assert only.message_id == "X-1"
    assert only.reason.startswith("identify sends nothing to Mixpanel while people is off")


# -- options and discovery ---------------------------------------------------------------------


def test_options_read_the_control_plane_config() -> None:
    parsed = MixpanelOptions.model_validate(
        {
            "token": TOKEN,
            "apiSecret": "",  # the control plane sends unset secrets as ""
            "peopleProperties": [{"property": " plan "}, {"property": ""}],
            "groupKeySettings": [{"groupKey": "company"}],
            "eventIncrements": [],
            "dataResidency": "eu",
        }
    )
    assert parsed.api_secret is None
    assert parsed.can_import is False
    assert parsed.people_properties == ("plan",)
    assert parsed.group_key_settings == ("company",)
    assert parsed.host == "api-eu.mixpanel.com"
    assert TOKEN not in repr(parsed)


@pytest.mark.parametrize(
    ("config", "field", "says"),
    [
        ({"apiHost": "https://proxy/x"}, "apiHost", "without scheme or path"),
        ({"serviceAccountUserName": "sa"}, "project_id", "set all three or none"),
        ({"token": "t" * 101}, "token", "at most 100"),
        ({"timeout": 0}, "timeout", "greater than 0"),
        ({"peopleProperties": "plan"}, "peopleProperties", "must be a list"),
    ],
)
def test_options_refuse_what_cannot_work(config: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(ValidationError) as info:
        MixpanelOptions.model_validate({"token": "t", **config})
    text = describe(info.value)
    assert field in text
    assert says in text


def test_the_factory_discovers_and_enables_it_from_a_source_config(
    make_client: MakeClient, api: FakeMixpanel, data_plane: DataPlane
) -> None:
    document = {
        "source": {
            "id": "src",
            "destinations": [
                {
                    "id": "dst_mp",
                    "enabled": True,
                    "destinationDefinition": {"name": "MP", "displayName": "Mixpanel"},
                    "config": {
                        "token": TOKEN,
                        "apiHost": api.host,
                        "dataResidency": "eu",
                        "connectionMode": "device",
                    },
                }
            ],
        }
    }
    client = make_client(source_config=document)
    message_id = client.track("u1", "Via Config")
    assert client.flush(timeout=10)

    assert [r["properties"]["$insert_id"] for r in api.records("/track")] == [message_id]
    assert data_plane.message_ids() == [message_id]  # the data plane copy keeps the messageId
    status = {s["key"]: s for s in client.integrations_status()}
    assert status["mixpanel"]["active"] is True


def test_without_the_mixpanel_sdk_it_is_listed_as_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "mixpanel", None)  # `import mixpanel` now fails
    for name in ("analytics_sdk_mixpanel", "analytics_sdk_mixpanel._mapping"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    entry = discover()["mixpanel"]

    assert entry.cls is None
    assert entry.hint == "pip install 'analytics-sdk[mixpanel]'"
