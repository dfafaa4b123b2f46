"""The JSON-RPC wrapper against the example connector (examples/jsonrpc_connector) on 127.0.0.1.

Behaviour the example connector cannot show (JSON-RPC errors, 5xx, hangs, bad answers) is
played by the recording DataPlane of tests/support, answering JSON-RPC bodies.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
from analytics_sdk_jsonrpc import JsonRpcIntegration, JsonRpcOptions
from conftest import MakeClient
from pydantic import ValidationError
from support.servers import DataPlane, Reply, Request

from analytics_sdk import AnalyticsError
from analytics_sdk.errors import IntegrationUnavailableError
from analytics_sdk.integration import Integration, IntegrationOptions, RejectedMessage
from analytics_sdk.models import AliasMessage, IdentifyMessage, TrackMessage
from analytics_sdk.testing import IntegrationContract
from examples.jsonrpc_connector.connector import ConnectorServer, start_connector

ROOT = Path(__file__).resolve().parents[2]
WHEN = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)


class TestJsonRpcContract(IntegrationContract):
    integration_class = JsonRpcIntegration
    valid_config: ClassVar[dict[str, Any]] = {
        "url": "http://127.0.0.1:9/rpc",
        "configuration": {"requiredFields": ["userId"]},
        "headers": [{"from": "Authorization", "to": "Bearer contract-token-1"}],
        "connectionMode": "device",
    }
    invalid_config: ClassVar[dict[str, Any]] = {"url": "ftp://nowhere", "timeout": -5}
    connector: ClassVar[ConnectorServer]

    @classmethod
    def setup_class(cls) -> None:
        cls.connector = start_connector(token="contract-token-1")

    @classmethod
    def teardown_class(cls) -> None:
        cls.connector.stop()

    def make_integration(self, options: IntegrationOptions) -> Integration[Any]:
        assert isinstance(options, JsonRpcOptions)
        return JsonRpcIntegration(options.model_copy(update={"url": self.connector.url}))


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("analytics_sdk_jsonrpc._BACKOFF_BASE", 0.01)


@pytest.fixture
def connector() -> Iterator[ConnectorServer]:
    server = start_connector()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake() -> Iterator[DataPlane]:
    """A scriptable stand-in connector: see `answer_with`."""
    server = DataPlane().start()
    try:
        yield server
    finally:
        server.stop()


def jsonrpc(url: str, **settings: Any) -> JsonRpcIntegration:
    config = {"url": url, "maxRetries": 2, "timeout": 2, **settings}
    return JsonRpcIntegration(JsonRpcOptions.model_validate(config))


def result(request: Request, value: Any) -> Reply:
    return Reply(body=json.dumps({"jsonrpc": "2.0", "id": request.json["id"], "result": value}))


def answer_with(
    fake: DataPlane,
    write: Callable[[Request], Reply],
    behavior: Any = None,
    errors: Any = None,
) -> None:
    """behavior and validate answered like a healthy connector (or as given); writes by `write`."""
    declared = behavior if behavior is not None else {"batchSize": 50, "operations": ["add"]}
    errors = [] if errors is None else errors

    def respond(request: Request) -> Reply:
        method = request.json["method"]
        if method == "behavior":
            return result(request, declared)
        if method == "validate":
            return result(request, errors)
        return write(request)

    fake.respond = respond


def writes(fake: DataPlane) -> list[Request]:
    with fake.lock:
        return [r for r in fake.requests if r.json["method"] in ("add", "change")]


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def same_message(row: dict[str, Any], cloud: dict[str, Any]) -> bool:
    """Equal but for sentAt (the data plane's) and the timestamps' precision: the data plane
    gets milliseconds, to_wire() microseconds (the same instants)."""
    times = ("timestamp", "originalTimestamp")
    if {k: instant(row[k]) for k in times if k in row} != {
        k: instant(cloud[k]) for k in times if k in cloud
    }:
        return False
    strip = ("sentAt", *times)
    return {k: v for k, v in row.items() if k not in strip} == {
        k: v for k, v in cloud.items() if k not in strip
    }


def track(n: int = 0, **fields: Any) -> TrackMessage:
    return TrackMessage.model_validate(
        {"messageId": f"m-{n}", "userId": "u1", "event": f"E{n}", **fields}
    )


class Reports:
    """An on_error callback that keeps what it is told (it runs on a worker thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.errors: list[tuple[AnalyticsError, list[dict[str, Any]]]] = []

    def __call__(self, error: AnalyticsError, messages: list[dict[str, Any]]) -> None:
        with self.lock:
            self.errors.append((error, messages))

    def by_id(self) -> dict[str, str]:
        with self.lock:
            return {m["messageId"]: str(e) for e, ms in self.errors for m in ms}


# -- the mapping, through the client and the real connector ------------------------------------


def test_every_call_reaches_its_operation_as_the_data_plane_gets_it(
    make_client: MakeClient, connector: ConnectorServer, data_plane: DataPlane
) -> None:
    client = make_client(integrations=[jsonrpc(connector.url)])
    ids = {
        "identify": client.identify("u1", {"plan": "pro"}, timestamp=WHEN),
        "track": client.track("u1", "Order Completed", {"revenue": 25.5}, timestamp=WHEN),
        "page": client.page("u1", "Docs", "Pricing", {"url": "https://x.test/p"}),
        "screen": client.screen(None, "App", "Settings", anonymous_id="anon-1"),
        "group": client.group("u1", "org-1", {"name": "Acme"}),
        "alias": client.alias("old-id", "u1"),
    }
    assert client.flush(timeout=5)
    assert data_plane.wait_for_events(6)
    server = connector.connector
    added, changed = server.stored("add"), server.stored("change")
    assert [r["messageId"] for r in added] == [ids["track"], ids["page"], ids["screen"]]
    assert [r["messageId"] for r in changed] == [ids["identify"], ids["group"]]
    assert ids["alias"] not in {r["messageId"] for r in server.stored()}  # no operation
    cloud = {e["messageId"]: e for e in data_plane.events}
    for row in added + changed:  # each row is the message as the data plane got it
        assert same_message(row, cloud[row["messageId"]])
    assert instant(added[0]["timestamp"]) == WHEN  # the message's own time, not the send time
    assert added[0]["properties"] == {"revenue": 25.5}
    assert added[2]["anonymousId"] == "anon-1"
    assert "userId" not in added[2]
    assert changed[0]["traits"] == {"plan": "pro"}
    assert changed[1]["groupId"] == "org-1"
    calls = server.requests()
    assert [c.method for c in calls[:2]] == ["behavior", "validate"]
    assert [c.id for c in calls] == list(range(1, len(calls) + 1))  # one id per call, increasing
    assert client.stats().integrations["jsonrpc"] == {
        "handled": 5, "failed": 0, "rejected": 0, "dropped": 0,
    }  # fmt: skip


def test_the_request_envelope_names_the_id_column_and_carries_headers(fake: DataPlane) -> None:
    answer_with(fake, lambda request: result(request, {}))
    integration = jsonrpc(
        f"{fake.url}/rpc",
        configuration={"table": "events", "apiKey": "conf-secret-9"},
        headers=[{"from": "Authorization", "to": "Bearer hdr-secret-7"}],
    )
    integration.setup()
    try:
        message = track(1, properties={"sku": "A"}, originalTimestamp=WHEN)
        assert integration.handle_batch([message]) == []
    finally:
        integration.shutdown(1)
    behavior, validate, add = fake.requests
    assert behavior.json == {"jsonrpc": "2.0", "id": 1, "method": "behavior", "params": {}}
    assert validate.json == {
        "jsonrpc": "2.0", "id": 2, "method": "validate",
        "params": {"configuration": {"table": "events", "apiKey": "conf-secret-9"}},
    }  # fmt: skip
    assert add.json == {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "add",
        "params": {
            "idColumn": "messageId",
            "configuration": {"table": "events", "apiKey": "conf-secret-9"},
            "rows": [message.to_wire()],
        },
    }
    assert add.json["params"]["rows"][0]["originalTimestamp"].startswith("2024-05-01T12:30:00")
    assert all(r.path == "/rpc" for r in fake.requests)
    assert add.headers["Authorization"] == "Bearer hdr-secret-7"
    assert add.headers["Content-Type"] == "application/json"
    assert "hdr-secret-7" not in repr(integration.options)
    assert "conf-secret-9" not in repr(integration.options)


def test_rejected_rows_are_reported_through_on_error(
    make_client: MakeClient, connector: ConnectorServer
) -> None:
    reports = Reports()
    integration = jsonrpc(connector.url, configuration={"requiredFields": ["properties.orderId"]})
    client = make_client(integrations=[integration], on_error=reports)
    good = client.track("u1", "Order Completed", {"orderId": "A-1"})
    bad = client.track("u1", "Order Completed", {"total": 3})
    assert client.flush(timeout=5)
    assert [r["messageId"] for r in connector.connector.stored()] == [good]
    assert list(reports.by_id()) == [bad]
    ((error, messages),) = reports.errors
    assert error.reason == "rejected_by_integration"
    # The connector quotes its configuration, which is masked like any secret (README).
    assert str(error).endswith("the connector refused it: missing required field ***")
    assert messages[0]["properties"] == {"total": 3}
    assert client.stats().integrations["jsonrpc"] == {
        "handled": 1, "failed": 0, "rejected": 1, "dropped": 0,
    }  # fmt: skip


def test_calls_carry_at_most_the_declared_batch_size_in_order() -> None:
    server = start_connector(batch_size=3)
    integration = jsonrpc(server.url)
    try:
        integration.setup()
        messages = [track(n) for n in range(7)]
        assert integration.handle_batch(messages) == []
        assert [c.rows for c in server.connector.requests("add")] == [3, 3, 1]
        assert [r["messageId"] for r in server.connector.stored()] == [f"m-{n}" for n in range(7)]
    finally:
        integration.shutdown(1)
        server.stop()


def test_through_the_client_no_call_exceeds_the_batch_size(make_client: MakeClient) -> None:
    server = start_connector(batch_size=4)
    try:
        client = make_client(integrations=[jsonrpc(server.url)])
        ids = [client.track("u1", f"E{n}") for n in range(10)]
        assert client.flush(timeout=5)
        sizes = [c.rows for c in server.connector.requests("add")]
        assert max(sizes) <= 4
        assert sum(sizes) == 10
        assert [r["messageId"] for r in server.connector.stored()] == ids
    finally:
        server.stop()


def test_operations_are_grouped_by_first_appearance_with_order_kept_in_each(
    connector: ConnectorServer,
) -> None:
    identify = IdentifyMessage.model_validate({"messageId": "i-1", "userId": "u1"})
    integration = jsonrpc(connector.url)
    integration.setup()
    try:
        assert integration.handle_batch([track(1), identify, track(2)]) == []
    finally:
        integration.shutdown(1)
    server = connector.connector
    assert [(c.method, c.rows) for c in server.requests()[2:]] == [("add", 2), ("change", 1)]
    assert [r["messageId"] for r in server.stored()] == ["m-1", "m-2", "i-1"]


def test_alias_is_not_routed_here_and_is_rejected_if_handed_over_anyway(
    connector: ConnectorServer,
) -> None:
    assert "alias" not in JsonRpcIntegration.supported_types  # the factory never queues it
    alias = AliasMessage.model_validate({"messageId": "a-1", "userId": "u1", "previousId": "p"})
    integration = jsonrpc(connector.url)
    integration.setup()
    try:
        with pytest.raises(RejectedMessage, match="alias calls have no JSON-RPC operation"):
            integration.handle(alias)
    finally:
        integration.shutdown(1)
    assert [c.method for c in connector.connector.requests()] == ["behavior", "validate"]


# -- what the connector declares -----------------------------------------------------------


def test_validate_errors_keep_it_off_and_show_in_integrations_status(
    make_client: MakeClient, connector: ConnectorServer, data_plane: DataPlane
) -> None:
    document = source_config(connector.url, configuration={"requiredFields": "orderId"})
    client = make_client(source_config=document)
    message_id = client.track("u1", "Not Routed")
    assert client.flush(timeout=10)
    assert data_plane.message_ids() == [message_id]  # cloud delivery goes on
    status = {s["key"]: s for s in client.integrations_status()}["jsonrpc"]
    assert status["active"] is False
    assert status["options_error"].startswith("unavailable: ")
    assert "requiredFields must be a list of field paths" in status["options_error"]
    assert [c.method for c in connector.connector.requests()] == ["behavior", "validate"]


def test_an_operation_the_connector_does_not_declare_is_rejected_with_a_reason(
    make_client: MakeClient,
) -> None:
    server = start_connector(operations=["add"])
    reports = Reports()
    try:
        client = make_client(integrations=[jsonrpc(server.url)], on_error=reports)
        identified = client.identify("u1", {"plan": "pro"})
        tracked = client.track("u1", "Taken")
        assert client.flush(timeout=5)
        assert [r["messageId"] for r in server.connector.stored()] == [tracked]
        assert server.connector.requests("change") == []  # never asked
        assert reports.by_id() == {
            identified: "integration 'jsonrpc' rejected the message: "
            "the connector does not take change rows (identify calls)"
        }
    finally:
        server.stop()


ADD_ONLY = {"batchSize": 10, "operations": ["add"]}


@pytest.mark.parametrize(
    ("declared", "errors", "expected"),
    [
        ({**ADD_ONLY, "batchSize": 5000}, [], "batchSize: Input should be less than or equal to"
                                              " 1000"),
        ({**ADD_ONLY, "batchSize": 0}, [], "batchSize: Input should be greater than or equal to 1"),
        ({**ADD_ONLY, "batchSize": "10"}, [], "batchSize: Input should be a valid integer"),
        ({**ADD_ONLY, "operations": ["delete"]}, [], "operations: Value error, must name add"),
        ({"batchSize": 10}, [], "operations: Field required"),
        (ADD_ONLY, {"errors": []}, "validate is not understood: result: Input should be a valid"),
        (ADD_ONLY, [3], "validate is not understood: 0: Input should be a valid string"),
    ],
)  # fmt: skip
def test_a_behavior_or_validate_answer_out_of_bounds_fails_setup(
    fake: DataPlane, declared: Any, errors: Any, expected: str
) -> None:
    answer_with(fake, lambda request: result(request, {}), behavior=declared, errors=errors)
    integration = jsonrpc(fake.url)
    with pytest.raises(IntegrationUnavailableError, match="the connector's answer to") as info:
        integration.setup()
    assert expected in str(info.value)
    integration.shutdown(1)


def test_many_validate_errors_are_shown_clipped(fake: DataPlane) -> None:
    answer_with(fake, lambda r: result(r, {}), errors=[f"e{n} " + "x" * 400 for n in range(12)])
    with pytest.raises(IntegrationUnavailableError) as info:
        jsonrpc(fake.url).setup()
    text = str(info.value)
    assert text.startswith("the connector refused the configuration: e0 ")
    assert "e9 " in text
    assert "e10 " not in text
    assert text.endswith("(and 2 more)")
    assert "x" * 300 not in text


# -- failures ------------------------------------------------------------------------------


def test_a_jsonrpc_error_rejects_the_rows_of_that_call_without_retry(
    make_client: MakeClient, fake: DataPlane
) -> None:
    error = {"code": -32000, "message": "disk full"}
    answer_with(
        fake,
        lambda request: Reply(
            body=json.dumps({"jsonrpc": "2.0", "id": request.json["id"], "error": error})
        ),
    )
    reports = Reports()
    client = make_client(integrations=[jsonrpc(fake.url)], on_error=reports)
    ids = [client.track("u1", "One"), client.track("u1", "Two")]
    assert client.flush(timeout=5)
    calls = writes(fake)
    assert sum(len(r.json["params"]["rows"]) for r in calls) == 2
    assert len({r.json["id"] for r in calls}) == len(calls)  # an answer is never retried
    by_id = reports.by_id()
    assert set(by_id) == set(ids)
    assert all(
        text.endswith("the connector answered add with JSON-RPC error -32000: disk full")
        for text in by_id.values()
    )
    assert {e.reason for e, _ in reports.errors} == {"rejected_by_integration"}
    assert client.stats().integrations["jsonrpc"]["rejected"] == 2


def test_5xx_and_network_errors_are_retried_with_the_same_request(
    make_client: MakeClient, fake: DataPlane
) -> None:
    replies = [Reply(status=503), Reply(reset=True), Reply(status=429)]
    answer_with(fake, lambda request: replies.pop(0) if replies else result(request, {}))
    client = make_client(integrations=[jsonrpc(fake.url, maxRetries=3)])
    message_id = client.track("u1", "Retried")
    assert client.flush(timeout=5)
    attempts = writes(fake)
    assert len(attempts) == 4  # 503, connection reset, 429, then taken
    assert (attempts[0].status, attempts[2].status, attempts[3].status) == (503, 429, 200)
    assert len({r.body for r in attempts}) == 1  # byte for byte, id included
    assert attempts[0].json["params"]["rows"][0]["messageId"] == message_id
    assert client.stats().integrations["jsonrpc"] == {
        "handled": 1, "failed": 0, "rejected": 0, "dropped": 0,
    }  # fmt: skip


def test_retries_are_bounded_then_the_rows_are_rejected(fake: DataPlane) -> None:
    answer_with(fake, lambda request: Reply(status=502))
    integration = jsonrpc(fake.url, maxRetries=2)
    integration.setup()
    try:
        with pytest.raises(RejectedMessage) as info:
            integration.handle(track(1))
    finally:
        integration.shutdown(1)
    assert info.value.reason == "add failed after 3 attempt(s) (HTTP 502)"
    assert len(writes(fake)) == 3


def test_a_hanging_connector_times_out_and_is_retried_within_bounds(fake: DataPlane) -> None:
    answer_with(fake, lambda request: Reply(hang=True))
    integration = jsonrpc(fake.url, maxRetries=1, timeout=0.2)
    integration.setup()
    try:
        with pytest.raises(RejectedMessage) as info:
            integration.handle(track(1))
    finally:
        integration.shutdown(1)
    assert info.value.reason == "add failed after 2 attempt(s) (ReadTimeout)"
    assert len(writes(fake)) == 2


def test_an_unreachable_connector_fails_setup_naming_the_cause() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    integration = jsonrpc(f"http://127.0.0.1:{port}/rpc", maxRetries=1)
    with pytest.raises(IntegrationUnavailableError) as info:
        integration.setup()
    assert str(info.value) == (
        "the connector is not usable: behavior failed after 2 attempt(s) (ConnectionError)"
    )


def test_a_4xx_is_not_retried_and_a_bearer_token_opens_the_door() -> None:
    server = start_connector(token="tok-secret-3")
    try:
        with pytest.raises(IntegrationUnavailableError) as info:
            jsonrpc(server.url).setup()
        assert str(info.value) == (
            "the connector is not usable: the connector answered behavior with HTTP 401"
        )
        assert server.connector.requests() == []  # refused before the connector read it
        integration = jsonrpc(
            server.url, headers=[{"from": "Authorization", "to": "Bearer tok-secret-3"}]
        )
        integration.setup()
        integration.handle(track(1))
        integration.shutdown(1)
        assert [r["messageId"] for r in server.connector.stored()] == ["m-1"]
    finally:
        server.stop()


def body_of(text: str) -> Callable[[Request], Reply]:
    return lambda request: Reply(body=text.replace("ID", str(request.json["id"])))


NOT_JSONRPC = "the connector's answer to add is not a JSON-RPC 2.0 response"
ANSWER = "the connector's answer to add"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (body_of("not json"), NOT_JSONRPC),
        (body_of('{"jsonrpc": "1.0", "id": ID, "result": {}}'), f"{NOT_JSONRPC}: jsonrpc"),
        (body_of('{"jsonrpc": "2.0", "id": 999, "result": {}}'), f"{ANSWER} has id 999, not 3"),
        (body_of('{"jsonrpc": "2.0", "id": ID}'), f"{ANSWER} has neither result nor error"),
        (body_of('{"jsonrpc": "2.0", "id": ID, "result": null}'), f"{ANSWER} is not understood"),
        (
            body_of('{"jsonrpc": "2.0", "id": ID, "result": {"rejectedRows": [{"reason": "r"}]}}'),
            f"{ANSWER} is not understood: rejectedRows.0.id: Field required",
        ),
        (lambda request: Reply(status=404), "the connector answered add with HTTP 404"),
    ],
)
def test_an_answer_not_understood_rejects_every_row_of_the_call(
    fake: DataPlane, answer: Callable[[Request], Reply], expected: str
) -> None:
    answer_with(fake, answer)
    integration = jsonrpc(fake.url)
    integration.setup()
    try:
        rejected = integration.handle_batch([track(1), track(2)])
    finally:
        integration.shutdown(1)
    assert [r.message_id for r in rejected] == ["m-1", "m-2"]
    assert all(expected in r.reason for r in rejected), rejected[0].reason
    assert len(writes(fake)) == 1  # none of these is retried


def test_rejected_rows_naming_unknown_ids_are_ignored_and_logged(
    fake: DataPlane, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [{"id": "m-2", "reason": "too late"}, {"id": "elsewhere", "reason": "?"}]
    answer_with(fake, lambda request: result(request, {"rejectedRows": rows}))
    integration = jsonrpc(fake.url)
    integration.setup()
    try:
        rejected = integration.handle_batch([track(1), track(2)])
    finally:
        integration.shutdown(1)
    assert [(r.message_id, r.reason) for r in rejected] == [
        ("m-2", "the connector refused it: too late")
    ]
    assert "names 1 id(s) not in the call" in caplog.text


def test_shutdown_ends_a_retry_wait_at_once(
    fake: DataPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("backoff.full_jitter", lambda value: 60.0)  # a wait that must be cut
    first_write = threading.Event()

    def refuse(request: Request) -> Reply:
        first_write.set()
        return Reply(status=503)

    answer_with(fake, refuse)
    integration = jsonrpc(fake.url, maxRetries=5)
    integration.setup()
    outcome: list[str] = []

    def deliver() -> None:
        try:
            integration.handle(track(1))
        except RejectedMessage as exc:
            outcome.append(exc.reason)

    worker = threading.Thread(target=deliver, daemon=True)
    worker.start()
    assert first_write.wait(5)
    integration.shutdown(1)
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert outcome == ["shutdown while retrying add (HTTP 503)"]


def worker_thread(key: str, before: set[threading.Thread]) -> threading.Thread:
    """The integration's worker thread, started since `before` was taken."""
    (thread,) = [
        t
        for t in threading.enumerate()
        if t.name == f"analytics_sdk.integration.{key}" and t not in before
    ]
    return thread


def test_a_shutdown_that_gives_up_interrupts_the_retries_and_the_worker_ends(
    make_client: MakeClient, fake: DataPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("backoff.full_jitter", lambda value: 60.0)  # only interrupt() cuts it
    first_write = threading.Event()

    def refuse(request: Request) -> Reply:
        first_write.set()
        return Reply(status=503)

    answer_with(fake, refuse)
    reports = Reports()
    before = set(threading.enumerate())
    client = make_client(integrations=[jsonrpc(fake.url, maxRetries=5)], on_error=reports)
    first = client.track("u1", "First")
    assert first_write.wait(5)
    worker = worker_thread("jsonrpc", before)
    queued = client.track("u1", "Queued Behind")  # waits behind the retrying handler

    assert client.shutdown(timeout=0.5) is False  # the deadline passed: abandoned, interrupted
    worker.join(timeout=3)

    assert not worker.is_alive()  # the retry wait ended: the thread did not outlive shutdown
    assert len(writes(fake)) == 1  # the first try only: nothing sent afterwards
    assert first is not None
    assert queued is not None
    by_id = reports.by_id()
    assert by_id[first].endswith("shutdown while retrying add (HTTP 503)")
    assert by_id[queued].endswith("shutdown before add was sent")
    counters = client.stats().integrations["jsonrpc"]
    assert (counters["handled"], counters["rejected"]) == (0, 2)


def test_interrupt_before_setup_sticks_and_nothing_is_sent(fake: DataPlane) -> None:
    answer_with(fake, lambda request: result(request, {}))
    jsonrpc(fake.url).shutdown(1)  # a worker that never started is shut down without setup()
    integration = jsonrpc(fake.url)
    integration.interrupt()  # the factory gave up before the worker even set it up
    with pytest.raises(IntegrationUnavailableError) as info:
        integration.setup()
    integration.shutdown(1)
    integration.interrupt()  # after shutdown too: harmless
    assert str(info.value) == "the connector is not usable: shutdown before behavior was sent"
    assert fake.requests == []


# -- an unreachable connector, secrets, repeated ids ----------------------------------------


@pytest.mark.parametrize(
    ("reply", "settings", "reason", "attempts"),
    [
        (Reply(hang=True), {"timeout": 0.2, "maxRetries": 0}, "(ReadTimeout)", 1),
        (Reply(status=503), {"maxRetries": 1}, "(HTTP 503)", 2),
    ],
)
def test_once_the_connector_is_unreachable_the_rest_of_the_batch_is_not_sent(
    fake: DataPlane,
    caplog: pytest.LogCaptureFixture,
    reply: Reply,
    settings: dict[str, Any],
    reason: str,
    attempts: int,
) -> None:
    answer_with(
        fake, lambda request: reply, behavior={"batchSize": 1, "operations": ["add", "change"]}
    )
    identify = IdentifyMessage.model_validate({"messageId": "i-1", "userId": "u1"})
    messages = [track(1), track(2), identify, track(3)]
    integration = jsonrpc(fake.url, **settings)
    integration.setup()
    try:
        rejected = integration.handle_batch(messages)
    finally:
        integration.shutdown(1)
    assert len(writes(fake)) == attempts  # one call's attempts, not four calls' worth
    assert [r.message_id for r in rejected] == ["m-1", "m-2", "m-3", "i-1"]
    assert {r.reason for r in rejected} == {f"add failed after {attempts} attempt(s) {reason}"}
    assert "2 add row(s), 1 change row(s) not sent: the connector is unreachable" in caplog.text


def test_an_answer_fails_only_its_own_call(fake: DataPlane) -> None:
    error = {"code": -32000, "message": "disk full"}
    answer_with(
        fake,
        lambda request: Reply(
            body=json.dumps({"jsonrpc": "2.0", "id": request.json["id"], "error": error})
        ),
        behavior={"batchSize": 1, "operations": ["add"]},
    )
    integration = jsonrpc(fake.url)
    integration.setup()
    try:
        rejected = integration.handle_batch([track(1), track(2)])
    finally:
        integration.shutdown(1)
    assert len(writes(fake)) == 2  # the connector answered: it is not down
    assert len(rejected) == 2


HEADER_TOKEN = "hdr-leak-token-1"
CONF_SECRET = "conf-leak-secret-2"
URL_PASSWORD = "url-leak-pass-3"
SECRETS = (HEADER_TOKEN, CONF_SECRET, URL_PASSWORD)


def test_secrets_the_connector_echoes_are_masked_in_reasons_and_logs(
    fake: DataPlane, caplog: pytest.LogCaptureFixture
) -> None:
    def echo(request: Request) -> Reply:
        """Echoes what it was sent: the header, the configuration, the URL's password."""
        leak = (
            f"key {request.headers.get('X-Api-Key')!r} token {HEADER_TOKEN} "
            f"configuration {json.dumps(request.json['params']['configuration'])} "
            f"password {URL_PASSWORD}"
        )
        row = request.json["params"]["rows"][0]["messageId"]
        if row == "m-1":  # a JSON-RPC error quoting them
            error = {"code": -32001, "message": leak}
            return Reply(
                body=json.dumps({"jsonrpc": "2.0", "id": request.json["id"], "error": error})
            )
        if row == "m-2":  # a refused row quoting them
            return result(request, {"rejectedRows": [{"id": row, "reason": leak}]})
        # A secret astride the 300-character cut: masked before clipping, so no half of it.
        error = {"code": -32001, "message": "x" * 290 + HEADER_TOKEN}
        return Reply(body=json.dumps({"jsonrpc": "2.0", "id": request.json["id"], "error": error}))

    answer_with(fake, echo, behavior={"batchSize": 1, "operations": ["add"]})
    url = fake.url.replace("http://", f"http://rpc-user:{URL_PASSWORD}@") + "/rpc"
    integration = jsonrpc(
        url,
        headers=[{"from": "X-Api-Key", "to": f"Token {HEADER_TOKEN}"}],
        configuration={"database": {"password": CONF_SECRET}, "tables": ["events"]},
    )
    integration.setup()
    try:
        rejected = integration.handle_batch([track(1), track(2), track(3)])
    finally:
        integration.shutdown(1)

    assert len(rejected) == 3
    texts = [r.reason for r in rejected] + [caplog.text]
    for secret in SECRETS:
        assert not any(secret in text for text in texts), secret
    assert not any(HEADER_TOKEN[:6] in r.reason for r in rejected)  # not even a clipped half
    assert "key '***' token ***" in rejected[0].reason
    assert '{"database": {"password": "***"}, "tables": ["***"]}' in rejected[1].reason
    assert "password ***" in rejected[0].reason


def test_validate_errors_echoing_secrets_are_masked(fake: DataPlane) -> None:
    answer_with(fake, lambda request: result(request, {}), errors=[f"bad password {CONF_SECRET}"])
    integration = jsonrpc(fake.url, configuration={"password": CONF_SECRET})
    with pytest.raises(IntegrationUnavailableError) as info:
        integration.setup()
    assert str(info.value) == "the connector refused the configuration: bad password ***"


def test_rows_sharing_a_refused_id_are_each_rejected(connector: ConnectorServer) -> None:
    first = track(1, messageId="X-1")
    second = track(2, messageId="X-1")  # a replayed message next to another, same id
    integration = jsonrpc(connector.url, configuration={"requiredFields": ["properties.orderId"]})
    integration.setup()
    try:
        rejected = integration.handle_batch([first, second])
    finally:
        integration.shutdown(1)
    assert connector.connector.stored() == []  # the connector refused both rows
    assert [r.message_id for r in rejected] == ["X-1", "X-1"]  # so both are rejected


# -- options ------------------------------------------------------------------------------


def test_options_validate_the_url_and_the_limits() -> None:
    with pytest.raises(ValidationError) as info:
        JsonRpcOptions.model_validate({"url": "localhost:8080", "maxRetries": 11, "timeout": 0})
    fields = {str(e["loc"][0]) for e in info.value.errors()}
    assert fields == {"url", "maxRetries", "timeout"}
    text = str(info.value)
    assert "must be an http:// or https:// URL with a host" in text
    assert "less than or equal to 10" in text
    assert "greater than 0" in text
    options = JsonRpcOptions.model_validate({"url": "https://rpc.example.com/v1"})
    assert (options.timeout, options.max_retries, options.configuration) == (10.0, 3, {})


# -- discovery ------------------------------------------------------------------------------


def source_config(url: str, **config: Any) -> dict[str, Any]:
    return {
        "source": {
            "id": "src",
            "destinations": [
                {
                    "id": "dst_rpc",
                    "enabled": True,
                    "destinationDefinition": {"name": "JSONRPC", "displayName": "JSON-RPC"},
                    "config": {"url": url, "connectionMode": "device", **config},
                }
            ],
        }
    }


def test_the_factory_discovers_and_enables_it_from_a_source_config(
    make_client: MakeClient, connector: ConnectorServer, data_plane: DataPlane
) -> None:
    document = source_config(connector.url, configuration={"requiredFields": ["event"]})
    client = make_client(source_config=document)
    message_id = client.track("u1", "Via Config")
    assert client.flush(timeout=10)
    assert [r["messageId"] for r in connector.connector.stored("add")] == [message_id]
    assert data_plane.message_ids() == [message_id]  # the data plane copy keeps the messageId
    status = {s["key"]: s for s in client.integrations_status()}["jsonrpc"]
    assert status["active"] is True
    assert status["options_error"] is None
    assert status["counters"]["handled"] == 1


# -- the example connector as a program -------------------------------------------------------


def test_the_example_connector_runs_from_the_command_line(tmp_path: Path) -> None:
    store = tmp_path / "rows.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_SDK_")}
    script = ROOT / "examples" / "jsonrpc_connector" / "connector.py"
    process = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--store", str(store), "--batch-size", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 10)
        assert ready, "the connector printed nothing within 10 s"
        line = process.stdout.readline()
        assert line.startswith("JSON-RPC connector listening on http://127.0.0.1:")
        url = line.split()[-1]
        integration = jsonrpc(url)
        integration.setup()
        assert integration.handle_batch([track(n) for n in range(3)]) == []
        integration.shutdown(1)
        behavior = requests.post(
            url, json={"jsonrpc": "2.0", "id": 7, "method": "behavior"}, timeout=5
        ).json()
        assert behavior == {
            "jsonrpc": "2.0", "id": 7, "result": {"batchSize": 2, "operations": ["add", "change"]},
        }  # fmt: skip
        unknown = requests.post(
            url, json={"jsonrpc": "2.0", "id": 8, "method": "delete", "params": {}}, timeout=5
        ).json()
        assert unknown["error"]["code"] == -32601
    finally:
        process.terminate()
        process.wait(timeout=5)
        assert process.stdout is not None
        assert process.stderr is not None
        process.stdout.close()
        process.stderr.close()
    lines = [json.loads(line) for line in store.read_text().splitlines()]
    assert [(e["operation"], e["row"]["messageId"]) for e in lines] == [
        ("add", "m-0"), ("add", "m-1"), ("add", "m-2"),
    ]  # fmt: skip
