"""analytics_sdk.testing: the contract kit catches broken wrappers; the capture client records."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import Field, SecretStr, field_validator

from analytics_sdk import InvalidMessageError
from analytics_sdk.integration import Integration, IntegrationOptions, RejectedMessage
from analytics_sdk.models import Message, TrackMessage
from analytics_sdk.testing import (
    CaptureClient,
    IntegrationContract,
    analytics_capture,
    capture_client,
    sample_messages,
)

# -- a small, correct integration and broken variants -----------------------------------------


class TallyOptions(IntegrationOptions):
    api_key: SecretStr
    max_properties: int = Field(default=20, ge=1)


class Tally(Integration[TallyOptions]):
    """Counts calls per type; refuses track calls with too many properties."""

    key = "tally"
    display_name = "Tally"
    destination_names = frozenset({"TALLY"})
    options_model = TallyOptions
    batch_size = 3

    def setup(self) -> None:
        self.counts: dict[str, int] = {}
        self.pending = 0

    def handle(self, message: Message) -> None:
        if isinstance(message, TrackMessage) and len(message.properties) > (
            self.options.max_properties
        ):
            raise RejectedMessage("too many properties")
        self.counts[message.type] = self.counts.get(message.type, 0) + 1
        self.pending += 1

    def flush(self, timeout: float) -> bool:
        self.pending = 0
        return True


class TestTallyContract(IntegrationContract):
    integration_class = Tally
    valid_config: ClassVar[dict[str, Any]] = {"apiKey": "tk_123", "connectionMode": "device"}
    invalid_config: ClassVar[dict[str, Any]] = {"apiKey": 424242, "maxProperties": -7}


class RejectsEverything(Tally):
    key = "picky"
    display_name = "Picky"

    def handle(self, message: Message) -> None:
        raise RejectedMessage(f"no {message.type} calls here")


class TestRejectingContract(IntegrationContract):
    """Rejecting is within the contract: counted, reported, never a failure."""

    integration_class = RejectsEverything
    valid_config: ClassVar[dict[str, Any]] = {"apiKey": "tk_123"}
    invalid_config: ClassVar[dict[str, Any]] = {}  # apiKey is required


class TrackOnly(Integration[IntegrationOptions]):
    key = "track_only"
    display_name = "Track Only"
    supported_types = frozenset({"track"})


class TestTrackOnlyContract(IntegrationContract):
    integration_class = TrackOnly
    valid_config: ClassVar[dict[str, Any]] = {}

    def test_contract_invalid_config_is_refused_without_echoing_values(self) -> None:
        pytest.skip("no setting can be invalid: the options model is empty")


class BrokenTrack(Tally):
    key = "broken"
    display_name = "Broken"
    batch_size = 1  # one message per call: the failure is counted for the track call alone

    def track(self, message: TrackMessage) -> None:
        raise ValueError("a wrapper bug")

    def handle(self, message: Message) -> None:
        Integration.handle(self, message)


class BrokenContract(IntegrationContract):  # not collected: its checks are run by hand below
    integration_class: ClassVar[type[Integration[Any]]] = BrokenTrack
    valid_config: ClassVar[dict[str, Any]] = {"apiKey": "tk_123"}
    invalid_config: ClassVar[dict[str, Any]] = {"apiKey": 424242}


# -- the kit catches what is broken ------------------------------------------------------------


@pytest.mark.allow_sdk_errors  # the factory logs the wrapper's ValueError with its traceback
def test_the_isolation_check_fails_for_a_wrapper_that_raises() -> None:
    with pytest.raises(AssertionError, match=r"raised on 1 message"):
        BrokenContract().test_contract_is_isolated_in_a_real_factory()


def test_the_six_calls_check_fails_for_a_wrapper_that_raises() -> None:
    with pytest.raises(AssertionError, match=r"track call raised ValueError: a wrapper bug"):
        BrokenContract().test_contract_each_call_is_handled_or_rejected()


def test_the_options_check_fails_when_an_error_echoes_the_value() -> None:
    class Leaky(IntegrationOptions):
        api_key: str

        @field_validator("api_key")
        @classmethod
        def _known_prefix(cls, value: str) -> str:
            if not value.startswith("tk_ok"):
                raise ValueError(f"bad key {value}")  # the bug the check is for
            return value

    class LeakyIntegration(Integration[Leaky]):
        key = "leaky"
        display_name = "Leaky"
        options_model = Leaky

    class LeakyContract(IntegrationContract):
        integration_class = LeakyIntegration
        valid_config: ClassVar[dict[str, Any]] = {"apiKey": "tk_ok"}
        invalid_config: ClassVar[dict[str, Any]] = {"apiKey": "tk_leak"}

    with pytest.raises(AssertionError, match=r"echoes a rejected value"):
        LeakyContract().test_contract_invalid_config_is_refused_without_echoing_values()


def test_the_options_check_fails_when_the_invalid_config_validates() -> None:
    class Lenient(BrokenContract):
        invalid_config: ClassVar[dict[str, Any]] = {"apiKey": "fine"}

    with pytest.raises(AssertionError, match="invalid_config validated"):
        Lenient().test_contract_invalid_config_is_refused_without_echoing_values()


def test_the_attribute_check_fails_for_a_bad_key_and_batch_size() -> None:
    class BadKey(Tally):
        key = "Bad-Key"

    class BadBatch(Tally):
        batch_size = 0

    class BadTypes(Tally):
        supported_types = frozenset({"track", "purchase"})

    for cls, problem in ((BadKey, "lowercase identifier"), (BadBatch, "batch_size"),
                         (BadTypes, "supported_types")):  # fmt: skip

        class Contract(BrokenContract):
            integration_class = cls

        with pytest.raises(AssertionError, match=problem):
            Contract().test_contract_class_attributes()


def test_the_flush_check_fails_when_flush_returns_no_bool() -> None:
    class NoBool(Tally):
        def flush(self, timeout: float) -> Any:
            return "done"

    class Contract(BrokenContract):
        integration_class = NoBool

    with pytest.raises(AssertionError, match="not a bool"):
        Contract().test_contract_flush_returns_a_bool_within_its_timeout()


def test_sample_messages_cover_the_six_calls_in_order_with_fresh_ids() -> None:
    first, second = sample_messages(), sample_messages()
    assert [m.type for m in first] == ["identify", "track", "page", "screen", "group", "alias"]
    assert {m.message_id for m in first}.isdisjoint(m.message_id for m in second)


# -- the capture client ------------------------------------------------------------------------


def six_calls(client: CaptureClient) -> list[str | None]:
    return [
        client.identify("u1", {"plan": "pro"}),
        client.track("u1", "Order Completed", {"revenue": 25.5}),
        client.page("u1", "Docs", "Home", {"url": "https://example.com/docs"}),
        client.screen("u1", "App", "Settings"),
        client.group("u1", "org-1", {"name": "Acme"}),
        client.alias("anon-1", "u1"),
    ]


def test_the_capture_client_records_the_six_calls_in_order_in_wire_form() -> None:
    client = capture_client()
    try:
        ids = six_calls(client)
        assert client.flush(timeout=5)
        messages = client.messages
        assert [m["type"] for m in messages] == [
            "identify", "track", "page", "screen", "group", "alias"
        ]  # fmt: skip
        assert [m["messageId"] for m in messages] == ids
        track = messages[1]
        assert track["event"] == "Order Completed"
        assert track["properties"] == {"revenue": 25.5}
        assert track["userId"] == "u1"
        assert track["context"]["library"]["name"] == "analytics-sdk-python"
        assert "originalTimestamp" in track
        assert messages[4]["groupId"] == "org-1"
        assert messages[5]["previousId"] == "anon-1"
        assert messages[5]["userId"] == "u1"
        assert client.events("Order Completed") == [track]
        assert client.events("Nope") == []
        assert client.of_type("page")[0]["name"] == "Home"
        assert client.last["type"] == "alias"
        assert client.stats().discarded == 6
    finally:
        assert client.shutdown(timeout=5)


def test_reading_the_capture_flushes_first_and_clear_forgets() -> None:
    with CaptureClient() as client:
        for n in range(50):
            client.track("u1", f"Event {n}")
        assert len(client.events()) == 50  # no explicit flush: reading catches up
        client.clear()
        assert client.messages == []
        with pytest.raises(LookupError):
            _ = client.last
        client.track("u1", "After Clear")
        assert client.last["event"] == "After Clear"


def test_the_capture_is_what_middleware_left_and_other_integrations_see_the_same() -> None:
    seen: list[str] = []

    class Other(Integration[IntegrationOptions]):
        key = "other"
        display_name = "Other"

        def track(self, message: TrackMessage) -> None:
            seen.append(message.message_id)

    def scrub(message: dict[str, Any]) -> dict[str, Any]:
        message.get("properties", {}).pop("email", None)
        return message

    with CaptureClient(middleware=[scrub], integrations=[Other(IntegrationOptions())]) as client:
        message_id = client.track("u1", "Signed Up", {"email": "a@example.com", "plan": "pro"})
        assert client.last["properties"] == {"plan": "pro"}
        assert seen == [message_id]


def test_strict_mode_raises_on_bad_input_and_records_nothing() -> None:
    with CaptureClient() as client:
        with pytest.raises(InvalidMessageError):
            client.track("u1", "")
        with pytest.raises(InvalidMessageError):
            client.identify("u1", ["not", "a", "dict"])  # type: ignore[arg-type]
        assert client.messages == []
    lenient = CaptureClient(strict=False)
    try:
        assert lenient.track("u1", "") is None
        assert lenient.messages == []
    finally:
        lenient.shutdown(timeout=5)


def test_the_capture_client_needs_no_write_key_and_never_touches_the_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("ANALYTICS_SDK_WRITE_KEY", "ANALYTICS_SDK_DATA_PLANE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ANALYTICS_SDK_CONTROL_PLANE_URL", "http://127.0.0.1:9")
    connections: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        connections.append(address)
        raise OSError("the capture client must not connect anywhere")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    before = {t.ident for t in threading.enumerate()}
    client = CaptureClient()
    try:
        six_calls(client)
        assert len(client.messages) == 6
        started = [t.name for t in threading.enumerate() if t.ident not in before]
        # device mode's router and the capture worker only: no sender, no config fetcher
        assert sorted(started) == ["analytics_sdk.integration.capture",
                                   "analytics_sdk.integrations"]  # fmt: skip
        assert client.options.control_plane_url is None
    finally:
        assert client.shutdown(timeout=5)
    assert connections == []
    assert client.stats().delivered == 0


def test_importing_the_testing_module_does_not_import_pytest() -> None:
    code = (
        "import sys, analytics_sdk.testing as t; "
        "assert 'pytest' not in sys.modules, 'pytest imported'; "
        "c = t.capture_client(); c.track('u1', 'E'); assert c.last['event'] == 'E'; "
        "c.shutdown(); assert 'pytest' not in sys.modules; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_fixture_without_pytest_says_what_is_missing() -> None:
    code = (
        "import sys; sys.modules['pytest'] = None\n"
        "try:\n"
        "    from analytics_sdk.testing import analytics_capture\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "needs pytest" in result.stdout


def test_the_analytics_capture_fixture_yields_a_capture_client(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        "from analytics_sdk.testing import analytics_capture  # noqa: F401\n"
    )
    (tmp_path / "test_app.py").write_text(
        textwrap.dedent(
            """
            from analytics_sdk.testing import CaptureClient

            def test_signup(analytics_capture: CaptureClient) -> None:
                analytics_capture.track("u1", "Signed Up", {"plan": "pro"})
                assert analytics_capture.last["properties"] == {"plan": "pro"}

            def test_fresh_per_test(analytics_capture: CaptureClient) -> None:
                assert analytics_capture.messages == []
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error",
         "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


assert analytics_capture is not None  # importable from the module, as a conftest would
