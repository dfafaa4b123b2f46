"""Device mode end to end: a real control plane on 127.0.0.1 enables integrations in a Client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import MakeClient
from pydantic import SecretStr
from support.control_plane import ControlPlane, sample_document
from support.servers import DataPlane

from analytics_sdk._factory import Discovered, install_hint
from analytics_sdk.integration import Integration, IntegrationOptions
from analytics_sdk.models import Message


class AmplitudeOptions(IntegrationOptions):
    api_key: SecretStr


class FakeAmplitude(Integration[AmplitudeOptions]):
    """Stands in for the Amplitude wrapper (issue 4): records what device mode hands it."""

    key = "amplitude"
    display_name = "Amplitude"
    destination_names = frozenset({"AM"})
    options_model = AmplitudeOptions
    instances: ClassVar[list[FakeAmplitude]] = []

    def setup(self) -> None:
        self.events: list[str] = []
        self.stopped = False
        self.lock = threading.Lock()
        FakeAmplitude.instances.append(self)

    def handle(self, message: Message) -> None:
        with self.lock:
            self.events.append(getattr(message, "event", message.type))

    def shutdown(self, timeout: float) -> None:
        self.stopped = True


@pytest.fixture(autouse=True)
def _installed_integrations(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if analytics-sdk[amplitude] were installed and mixpanel were not."""
    FakeAmplitude.instances = []
    found = {
        "amplitude": Discovered("amplitude", FakeAmplitude),
        "mixpanel": Discovered("mixpanel", hint=install_hint("mixpanel")),
    }
    monkeypatch.setattr("analytics_sdk._factory.discover", lambda: found)


@pytest.fixture
def control_plane() -> Iterator[ControlPlane]:
    server = ControlPlane("wk_test_key", sample_document()).start()
    try:
        yield server
    finally:
        server.stop()


def wait_until(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)  # polling a condition the test cannot be notified of
    return bool(condition())


def test_a_device_mode_destination_gets_events_and_the_data_plane_still_does(
    make_client: MakeClient, data_plane: DataPlane, control_plane: ControlPlane, tmp_path: Path
) -> None:
    client = make_client(control_plane_url=control_plane.url, config_cache_path=tmp_path)
    ids = [client.track("u1", f"E{n}") for n in range(3)]  # before the config arrives

    assert wait_until(lambda: FakeAmplitude.instances)
    assert client.flush(timeout=5)
    (amplitude,) = FakeAmplitude.instances
    assert wait_until(lambda: amplitude.events == ["E0", "E1", "E2"])  # replayed, once
    assert data_plane.message_ids() == ids  # cloud delivery never waited
    status = {s["key"]: s for s in client.integrations_status()}
    assert status["amplitude"]["active"] is True
    assert status["mixpanel"]["installed"] is False  # cloud mode in config: not enabled
    assert "am-secret-123" not in repr(status)


def test_disabling_the_destination_in_the_control_plane_stops_it(
    make_client: MakeClient, control_plane: ControlPlane, tmp_path: Path
) -> None:
    client = make_client(control_plane_url=control_plane.url, config_cache_path=tmp_path,
                         config_refresh_interval=0.05)  # fmt: skip
    client.track("u1", "Before")
    assert wait_until(lambda: FakeAmplitude.instances)
    document = sample_document()
    document["source"]["destinations"][0]["enabled"] = False
    control_plane.set_config(document)
    assert wait_until(lambda: FakeAmplitude.instances[0].stopped)
    client.track("u1", "After")
    assert client.flush(timeout=5)
    assert FakeAmplitude.instances[0].events == ["Before"]


def test_a_disabled_source_stops_sending_and_says_so(
    make_client: MakeClient, data_plane: DataPlane, control_plane: ControlPlane, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    control_plane.set_config(sample_document(enabled=False))
    client = make_client(control_plane_url=control_plane.url, config_cache_path=tmp_path)
    client.track("u1", "First")  # starts device mode; the config arrives in the background
    assert wait_until(lambda: "source is disabled" in caplog.text)
    assert client.track("u1", "Refused") is None
    assert client.stats().dropped.get("source_disabled") == 1


def test_with_the_control_plane_down_at_start_the_cache_brings_integrations_up(
    make_client: MakeClient, control_plane: ControlPlane, tmp_path: Path
) -> None:
    first = make_client(control_plane_url=control_plane.url, config_cache_path=tmp_path)
    first.track("u1", "Warm Up")
    assert wait_until(lambda: FakeAmplitude.instances)
    first.shutdown(timeout=2)
    FakeAmplitude.instances = []
    control_plane.stop()

    second = make_client(control_plane_url=control_plane.url, config_cache_path=tmp_path)
    second.track("u1", "From Cache")
    assert wait_until(lambda: FakeAmplitude.instances, timeout=15)
    assert second.flush(timeout=5)
    assert FakeAmplitude.instances[0].events == ["From Cache"]


def test_a_source_config_dict_works_without_a_control_plane(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    client = make_client(source_config=sample_document())
    client.track("u1", "Local Config")
    assert wait_until(lambda: FakeAmplitude.instances)
    assert client.flush(timeout=5)
    assert FakeAmplitude.instances[0].events == ["Local Config"]
    assert len(data_plane.events) == 1


def test_no_control_plane_and_no_cache_keeps_cloud_delivery_going(
    make_client: MakeClient, data_plane: DataPlane, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr("analytics_sdk._source_config.BACKOFF_BASE", 0.01)
    client = make_client(control_plane_url="http://127.0.0.1:9", config_cache_path=tmp_path)
    assert client.track("u1", "Cloud Only") is not None
    assert client.flush(timeout=5)
    assert len(data_plane.events) == 1
    assert wait_until(lambda: "device mode stays off" in caplog.text, timeout=30)
    assert FakeAmplitude.instances == []
    assert caplog.text.count("device mode stays off") == 1


def test_an_option_change_restarts_the_integration_with_the_new_options(
    make_client: MakeClient, control_plane: ControlPlane, tmp_path: Path
) -> None:
    client = make_client(control_plane_url=control_plane.url, config_cache_path=tmp_path,
                         config_refresh_interval=0.05)  # fmt: skip
    client.track("u1", "First")
    assert wait_until(lambda: FakeAmplitude.instances)
    document = sample_document()
    document["source"]["destinations"][0]["config"]["apiKey"] = "am-rotated-789"
    control_plane.set_config(document)
    assert wait_until(lambda: len(FakeAmplitude.instances) == 2)
    old, new = FakeAmplitude.instances
    assert old.stopped is True
    assert new.options.api_key.get_secret_value() == "am-rotated-789"
    client.track("u1", "Second")
    assert client.flush(timeout=5)
    assert new.events == ["Second"]


def test_a_source_disabled_while_running_stops_sending_until_enabled_again(
    make_client: MakeClient, data_plane: DataPlane, control_plane: ControlPlane, tmp_path: Path
) -> None:
    client = make_client(control_plane_url=control_plane.url, config_cache_path=tmp_path,
                         config_refresh_interval=0.05)  # fmt: skip
    assert client.track("u1", "Sent") is not None
    assert wait_until(lambda: FakeAmplitude.instances)
    control_plane.set_config(sample_document(enabled=False))
    assert wait_until(lambda: client.track("u1", "Probe") is None)
    control_plane.set_config(sample_document())
    assert wait_until(lambda: client.track("u1", "Back") is not None)
    assert client.flush(timeout=5)
    assert client.stats().dropped.get("source_disabled", 0) >= 1
    assert data_plane.events[0]["event"] == "Sent"
    assert data_plane.events[-1]["event"] == "Back"


def test_a_forked_child_brings_device_mode_up_again(
    data_plane: DataPlane, control_plane: ControlPlane, tmp_path: Path
) -> None:
    from support.processes import run_script

    result = run_script(
        """
        import os, sys, time
        import analytics_sdk._factory as factory
        from analytics_sdk import Client
        from analytics_sdk.integration import Integration, IntegrationOptions

        seen = []

        class Options(IntegrationOptions):
            api_key: str

        class Amp(Integration[Options]):
            key, display_name, destination_names, options_model = (
                "amplitude", "Amplitude", frozenset({"AM"}), Options)
            def track(self, message):
                seen.append((os.getpid(), message.event))

        factory.discover = lambda: {"amplitude": factory.Discovered("amplitude", Amp)}
        client = Client("wk_test_key", sys.argv[1], control_plane_url=sys.argv[2],
                        config_cache_path=sys.argv[3])
        client.track("parent", "In Parent")
        client.flush(timeout=5)
        pid = os.fork()
        if pid == 0:
            client.track("child", "In Child")
            deadline = time.monotonic() + 10
            while not any(event == "In Child" for _, event in seen) and (
                time.monotonic() < deadline
            ):
                client.flush(timeout=1)
            mine = [event for pid, event in seen if pid == os.getpid()]  # seen is a copy
            print("child saw", mine, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        """,
        data_plane.url,
        control_plane.url,
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("child saw"))
    assert "In Child" in line
    assert "In Parent" not in line  # the parent's messages stay the parent's


def test_status_lists_installed_integrations_even_without_a_config(
    make_client: MakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("analytics_sdk._source_config.BACKOFF_BASE", 0.01)
    client = make_client(control_plane_url="http://127.0.0.1:9", config_cache_path=tmp_path)
    status = {entry["key"]: entry for entry in client.integrations_status()}
    assert status["amplitude"]["installed"] is True
    assert status["amplitude"]["active"] is False
    assert status["mixpanel"]["installed"] is False
    assert status["mixpanel"]["hint"] == "pip install 'analytics-sdk[mixpanel]'"
