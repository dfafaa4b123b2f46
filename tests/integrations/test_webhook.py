"""The webhook wrapper: its contract, a real receiver on 127.0.0.1, and discovery from config."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from analytics_sdk_webhook import WebhookIntegration, WebhookOptions
from conftest import MakeClient
from support.servers import DataPlane, Reply, Request

from analytics_sdk import AnalyticsError
from analytics_sdk.integration import Integration, IntegrationOptions, RejectedMessage
from analytics_sdk.models import TrackMessage
from analytics_sdk.testing import IntegrationContract


class TestWebhookContract(IntegrationContract):
    integration_class = WebhookIntegration
    valid_config: ClassVar[dict[str, Any]] = {
        "webhookUrl": "http://127.0.0.1:9/hook",
        "webhookMethod": "POST",
        "headers": [{"from": "X-Api-Key", "to": "hook-secret-1"}],
        "connectionMode": "device",
    }
    invalid_config: ClassVar[dict[str, Any]] = {"webhookUrl": "ftp://nowhere"}
    receiver: ClassVar[DataPlane]

    @classmethod
    def setup_class(cls) -> None:
        cls.receiver = DataPlane().start()

    @classmethod
    def teardown_class(cls) -> None:
        cls.receiver.stop()

    def make_integration(self, options: IntegrationOptions) -> Integration[Any]:
        assert isinstance(options, WebhookOptions)
        local = options.model_copy(update={"webhook_url": f"{self.receiver.url}/hook"})
        return WebhookIntegration(local)


@pytest.fixture
def receiver() -> Iterator[DataPlane]:
    server = DataPlane().start()
    try:
        yield server
    finally:
        server.stop()


def webhook(receiver: DataPlane, **settings: Any) -> WebhookIntegration:
    config = {"webhookUrl": f"{receiver.url}/hook", "maxRetries": 2, **settings}
    return WebhookIntegration(WebhookOptions.model_validate(config))


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("analytics_sdk_webhook._BACKOFF_BASE", 0.01)


def test_every_call_reaches_the_webhook_with_its_headers(
    make_client: MakeClient, receiver: DataPlane
) -> None:
    hook = webhook(receiver, headers=[{"from": "X-Api-Key", "to": "hook-secret-1"}])
    client = make_client(integrations=[hook])
    ids = [
        client.track("u1", "Order Completed", {"revenue": 25.0}),
        client.identify("u1", {"plan": "pro"}),
        client.group("u1", "g1"),
    ]
    assert client.flush(timeout=5)
    assert [e["messageId"] for e in receiver.events] == ids  # one request per message
    assert all(r.path == "/hook" for r in receiver.requests)
    assert receiver.requests[0].headers["X-Api-Key"] == "hook-secret-1"
    assert receiver.events[0]["properties"] == {"revenue": 25.0}
    assert "hook-secret-1" not in repr(hook.options)


def test_batch_mode_sends_one_json_array(make_client: MakeClient, receiver: DataPlane) -> None:
    client = make_client(integrations=[webhook(receiver, batch=True)], flush_interval=60)
    for n in range(5):
        client.track("u1", f"E{n}")
    assert client.flush(timeout=5)
    assert sum(len(r.batch) for r in receiver.requests) == 5
    assert len(receiver.requests) < 5


def test_5xx_and_429_are_retried(make_client: MakeClient, receiver: DataPlane) -> None:
    receiver.script = [Reply(status=503), Reply(status=429)]
    client = make_client(integrations=[webhook(receiver)])
    client.track("u1", "Retried")
    assert client.flush(timeout=5)
    assert [r.status for r in receiver.requests] == [503, 429, 200]
    assert client.stats().integrations["webhook"]["handled"] == 1


def test_a_refusal_is_reported_with_the_status(
    make_client: MakeClient, receiver: DataPlane
) -> None:
    receiver.respond = lambda request: Reply(status=422, body="bad")
    reports: list[AnalyticsError] = []
    lock = threading.Lock()

    def on_error(error: AnalyticsError, messages: list[dict[str, Any]]) -> None:
        with lock:
            reports.append(error)

    client = make_client(integrations=[webhook(receiver)], on_error=on_error)
    client.track("u1", "Refused")
    assert client.flush(timeout=5)
    assert len(receiver.requests) == 1  # a 422 is not retried
    (error,) = reports
    assert error.reason == "rejected_by_integration"
    assert "HTTP 422" in str(error)


def test_a_shutdown_that_gives_up_interrupts_the_retries_and_the_worker_ends(
    make_client: MakeClient, receiver: DataPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("backoff.full_jitter", lambda value: 60.0)  # only interrupt() cuts it
    first_try = threading.Event()

    def busy(request: Request) -> Reply:
        first_try.set()
        return Reply(status=503)

    receiver.respond = busy
    reports: list[AnalyticsError] = []
    lock = threading.Lock()

    def on_error(error: AnalyticsError, messages: list[dict[str, Any]]) -> None:
        with lock:
            reports.append(error)

    before = set(threading.enumerate())
    client = make_client(integrations=[webhook(receiver, maxRetries=5)], on_error=on_error)
    client.track("u1", "First")
    assert first_try.wait(5)
    (worker,) = [
        t
        for t in threading.enumerate()
        if t.name == "analytics_sdk.integration.webhook" and t not in before
    ]
    client.track("u1", "Queued Behind")  # waits behind the retrying handler

    assert client.shutdown(timeout=0.5) is False  # the deadline passed: abandoned, interrupted
    worker.join(timeout=3)

    assert not worker.is_alive()  # the retry wait ended: the thread did not outlive shutdown
    assert len(receiver.requests) == 1  # the first try only: nothing sent afterwards
    assert sorted(str(e).split(": ", 1)[1] for e in reports) == [
        "shutdown before sending",
        "shutdown while retrying (HTTP 503)",
    ]
    counters = client.stats().integrations["webhook"]
    assert (counters["handled"], counters["rejected"]) == (0, 2)


def test_interrupt_and_shutdown_before_setup_are_safe_and_interrupt_sticks(
    receiver: DataPlane,
) -> None:
    webhook(receiver).shutdown(1.0)  # a worker that never started is shut down without setup()
    hook = webhook(receiver)
    hook.interrupt()  # the factory gave up before the worker even set it up
    hook.setup()
    try:
        with pytest.raises(RejectedMessage) as info:
            hook.handle(
                TrackMessage.model_validate({"messageId": "m-1", "userId": "u1", "event": "E"})
            )
    finally:
        hook.shutdown(1.0)
    hook.interrupt()  # after shutdown too: harmless
    assert info.value.reason == "shutdown before sending"
    assert receiver.requests == []


def test_the_factory_discovers_and_enables_it_from_a_source_config(
    make_client: MakeClient, receiver: DataPlane, data_plane: DataPlane
) -> None:
    document = {
        "source": {
            "id": "src",
            "destinations": [
                {
                    "id": "dst_hook",
                    "enabled": True,
                    "destinationDefinition": {"name": "WEBHOOK", "displayName": "Webhook"},
                    "config": {"webhookUrl": f"{receiver.url}/hook", "connectionMode": "device"},
                }
            ],
        }
    }
    client = make_client(source_config=document)
    message_id = client.track("u1", "Via Config")
    assert client.flush(timeout=10)
    assert receiver.message_ids() == [message_id]
    assert data_plane.message_ids() == [message_id]  # the data plane copy keeps the messageId
    status = {s["key"]: s for s in client.integrations_status()}
    assert status["webhook"]["active"] is True
