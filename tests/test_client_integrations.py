"""In-code integrations through the Client: the same snapshot as the data plane, isolated."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from conftest import MakeClient
from support.servers import DataPlane

from analytics_sdk import Client, ConfigurationError, IntegrationUnavailableError
from analytics_sdk.integration import Integration, IntegrationOptions, RejectedMessage
from analytics_sdk.models import Message, TrackMessage


class Recording(Integration[IntegrationOptions]):
    key = "recording"
    display_name = "Recording"

    def setup(self) -> None:
        self.messages: list[Message] = []
        self.resets = 0
        self.flushes = 0
        self.lock = threading.Lock()

    def handle(self, message: Message) -> None:
        if isinstance(message, TrackMessage) and message.event == "Refused":
            raise RejectedMessage("not wanted here")
        with self.lock:
            self.messages.append(message)

    def flush(self, timeout: float) -> bool:
        self.flushes += 1
        return True

    def reset(self) -> None:
        self.resets += 1


class Unavailable(Integration[IntegrationOptions]):
    key = "missing"
    display_name = "Missing"

    def setup(self) -> None:
        raise IntegrationUnavailableError(
            "Missing needs its SDK: pip install 'analytics-sdk[missing]'"
        )


def test_an_in_code_integration_sees_what_the_data_plane_gets(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    recording = Recording(IntegrationOptions())
    client = make_client(integrations=[recording])
    ids = [
        client.track("u1", "Order Completed", {"revenue": 25.0}),
        client.identify("u1", {"plan": "pro"}),
        client.page("u1", "Docs", "Home"),
    ]
    assert client.flush(timeout=5)
    assert [m.message_id for m in recording.messages] == ids
    assert data_plane.message_ids() == ids
    track = recording.messages[0]
    assert isinstance(track, TrackMessage)
    assert track.properties == {"revenue": 25.0}
    assert track.context["library"]["name"] == "analytics-sdk-python"
    assert recording.flushes >= 1
    assert client.stats().integrations["recording"]["handled"] == 3
    status = {entry["key"]: entry for entry in client.integrations_status()}["recording"]
    assert (status["active"], status["installed"]) == (True, True)


def test_rejections_by_an_integration_are_reported_through_on_error(
    make_client: MakeClient,
) -> None:
    reasons: list[str] = []
    recording = Recording(IntegrationOptions())
    client = make_client(integrations=[recording], on_error=lambda e, m: reasons.append(e.reason))
    client.track("u1", "Refused")
    assert client.flush(timeout=5)
    assert reasons == ["rejected_by_integration"]
    assert client.stats().integrations["recording"]["rejected"] == 1


def test_reset_reaches_the_integrations(make_client: MakeClient) -> None:
    recording = Recording(IntegrationOptions())
    client = make_client(integrations=[recording])
    client.track("u1", "E")
    client.reset()
    assert client.flush(timeout=5)
    assert recording.resets == 1


def test_an_unavailable_in_code_integration_raises_at_construction() -> None:
    with pytest.raises(IntegrationUnavailableError, match="pip install"):
        Client("wk_test_key", send=False, integrations=[Unavailable(IntegrationOptions())])


def test_integrations_must_be_integration_instances() -> None:
    not_one: Any = object()
    with pytest.raises(ConfigurationError, match="integrations"):
        Client("wk_test_key", send=False, integrations=[not_one])


def test_send_false_still_feeds_in_code_integrations() -> None:
    recording = Recording(IntegrationOptions())
    client = Client("wk_test_key", send=False, integrations=[recording])
    client.track("u1", "Captured")
    assert client.flush(timeout=5)
    assert [m.type for m in recording.messages] == ["track"]
    client.shutdown()


class AlwaysRaises(Integration[IntegrationOptions]):
    key = "raises"
    display_name = "Raises"

    def handle(self, message: Message) -> None:
        raise RuntimeError("this wrapper is broken")


class SleepsFiveSeconds(Integration[IntegrationOptions]):
    key = "sleeps"
    display_name = "Sleeps"

    def handle(self, message: Message) -> None:
        time.sleep(5)


@pytest.mark.allow_sdk_errors
def test_a_raising_and_a_sleeping_integration_hurt_neither_the_caller_nor_the_others(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    recording = Recording(IntegrationOptions())
    client = make_client(
        integrations=[AlwaysRaises(IntegrationOptions()), SleepsFiveSeconds(IntegrationOptions()),
                      recording],
        shutdown_timeout=1.0,
    )  # fmt: skip
    started = time.monotonic()
    ids = [client.track("u1", f"E{n}") for n in range(50)]
    assert time.monotonic() - started < 1.0  # track() never waits for a wrapper
    assert client.flush(timeout=2) is False  # the sleeper cannot finish: flush says so, in time
    assert time.monotonic() - started < 5
    assert data_plane.message_ids() == ids  # cloud delivery got everything
    assert [m.message_id for m in recording.messages] == ids
    counters = client.stats().integrations
    assert counters["raises"]["failed"] == 50
    assert counters["recording"]["handled"] == 50
