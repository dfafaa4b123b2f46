"""The sourceConfig client: parsing, the device-mode decision, fetch, refresh, cache and fork.

Network tests run against a real control plane on 127.0.0.1 (tests/support/control_plane.py)
and synchronise on the callbacks and on requests the server saw, never on sleeps: the client
handles one answer completely before it sends the next request, so once the server has seen
request n + 1, everything request n caused has happened.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import logging
import re
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from support.control_plane import ControlPlane, sample_document

from analytics_sdk import __version__
from analytics_sdk._source_config import (
    MAX_DOCUMENT_BYTES,
    THREAD_NAME,
    ConfigOrigin,
    Destination,
    SourceConfig,
    SourceConfigClient,
    SourceConfigError,
)
from analytics_sdk.options import ClientOptions

WRITE_KEY = "wk_test_key"
TOKEN = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
SECRETS = ("am-secret-123", "mp-secret-456")  # the destination configs' keys in sample_document
WAIT = 5.0  # seconds any single wait may take before the test fails


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries of the first fetch wait 0-8 ms instead of 0.5 s and up: same code path."""
    monkeypatch.setattr("analytics_sdk._source_config.BACKOFF_BASE", 0.001)


class Recorder:
    """The factory's side: records on_config / on_unavailable and lets a test wait for them."""

    def __init__(self) -> None:
        self.configs: list[tuple[SourceConfig, ConfigOrigin]] = []
        self.unavailable: list[str] = []
        self.threads: set[str] = set()
        self._changed = threading.Condition()

    def on_config(self, config: SourceConfig, origin: ConfigOrigin) -> None:
        with self._changed:
            self.configs.append((config, origin))
            self.threads.add(threading.current_thread().name)
            self._changed.notify_all()

    def on_unavailable(self, reason: str) -> None:
        with self._changed:
            self.unavailable.append(reason)
            self.threads.add(threading.current_thread().name)
            self._changed.notify_all()

    def wait_configs(self, count: int, timeout: float = WAIT) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.configs) >= count, timeout)

    def wait_unavailable(self, count: int = 1, timeout: float = WAIT) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.unavailable) >= count, timeout)


MakeConfigClient = Callable[..., tuple[SourceConfigClient, Recorder]]


def make_options(cache_dir: Path, **overrides: Any) -> ClientOptions:
    """Validated defaults plus `overrides`, which skip validation: ClientOptions still
    refuses control_plane_url and source_config until the factory is wired into Client."""
    write_key = overrides.pop("write_key", WRITE_KEY)
    base = ClientOptions.build(write_key, "http://127.0.0.1:9", {"timeout": 2.0}, environ={})
    values: dict[str, Any] = {"config_cache_path": cache_dir, "config_refresh_interval": 0.05}
    return base.model_copy(update={**values, **overrides})


@pytest.fixture
def control_plane() -> Iterator[ControlPlane]:
    server = ControlPlane(WRITE_KEY).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dead_url() -> str:
    """A 127.0.0.1 port nobody listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def make_config_client(cache_dir: Path) -> Iterator[MakeConfigClient]:
    """SourceConfigClient(make_options(cache_dir, **overrides), recorder...), stopped after."""
    made: list[SourceConfigClient] = []

    def make(**overrides: Any) -> tuple[SourceConfigClient, Recorder]:
        recorder = Recorder()
        options = make_options(cache_dir, **overrides)
        client = SourceConfigClient(options, recorder.on_config, recorder.on_unavailable)
        made.append(client)
        return client, recorder

    yield make
    for client in made:
        client.stop(2.0)


def populate_cache(make: MakeConfigClient, server: ControlPlane) -> SourceConfig:
    """Run one client against `server` until its config is cached; return that config."""
    client, recorder = make(control_plane_url=server.url, config_refresh_interval=60.0)
    client.start()
    assert recorder.wait_configs(1)
    client.stop(2.0)
    path = client.cache_path()
    assert path is not None
    assert path.exists()
    return recorder.configs[0][0]


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.DEBUG) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("analytics_sdk") and r.levelno >= level
    ]


# -- parsing ------------------------------------------------------------------------------


def test_parse_reads_a_rudderstack_document() -> None:
    config = SourceConfig.parse(json.dumps(sample_document()).encode())

    assert config.source.id == "src_1"
    assert config.source.name == "backend"
    assert config.source.enabled is True
    amplitude, mixpanel = config.source.destinations
    assert amplitude.id == "dst_am"
    assert amplitude.name == "Amplitude prod"
    assert amplitude.destination_definition.name == "AM"
    assert amplitude.destination_definition.display_name == "Amplitude"
    assert amplitude.config["apiKey"] == "am-secret-123"
    assert amplitude.device_mode is True
    assert mixpanel.device_mode is False


def test_parse_accepts_bytes_text_and_a_dict_alike() -> None:
    document = sample_document()
    from_bytes = SourceConfig.parse(json.dumps(document).encode())
    from_text = SourceConfig.parse(json.dumps(document))
    from_dict = SourceConfig.parse(document)

    assert from_bytes == from_text == from_dict


def test_parse_ignores_unknown_fields() -> None:
    document = sample_document()
    document["updatedAt"] = "2026-01-01"
    document["source"]["workspaceId"] = "ws_1"
    document["source"]["destinations"][0]["transformations"] = [{"id": "t1"}]
    document["source"]["destinations"][0]["destinationDefinition"]["category"] = "analytics"

    config = SourceConfig.parse(document)

    assert [d.id for d in config.source.destinations] == ["dst_am", "dst_mp"]
    assert "workspaceId" not in config.source.model_dump()


def test_the_models_accept_python_names_too() -> None:
    destination = Destination.model_validate(
        {"id": "d", "destination_definition": {"name": "AM", "display_name": "Amplitude"}}
    )

    assert destination.destination_definition.display_name == "Amplitude"
    assert destination.config == {}


def test_the_write_key_is_not_kept_in_the_model() -> None:
    config = SourceConfig.parse(sample_document(write_key="wk_do_not_keep"))

    assert "wk_do_not_keep" not in config.model_dump_json()
    assert "wk_do_not_keep" not in repr(config)
    assert not hasattr(config.source, "write_key")
    assert not hasattr(config.source, "writeKey")


def test_nulls_take_the_defaults() -> None:
    config = SourceConfig.parse(
        {
            "source": {
                "id": "src_1",
                "name": None,
                "config": None,
                "enabled": None,
                "destinations": [
                    {
                        "id": "d1",
                        "name": None,
                        "enabled": None,
                        "config": None,
                        "destinationDefinition": {"name": "AM", "displayName": "Amplitude"},
                    }
                ],
            }
        }
    )

    assert config.source.name == ""
    assert config.source.config == {}
    assert config.source.enabled is True
    (destination,) = config.source.destinations
    assert destination.config == {}
    assert destination.device_mode is False
    no_destinations = SourceConfig.parse({"source": {"id": "s", "destinations": None}})
    assert no_destinations.source.destinations == []


def test_malformed_json_is_refused_without_echoing_it() -> None:
    with pytest.raises(SourceConfigError, match="not valid JSON") as raised:
        SourceConfig.parse(b'{"source": {"id": "am-secret-123"')

    assert "am-secret-123" not in str(raised.value)
    assert "line 1" in str(raised.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"[]", "must be a JSON object (got an array)"),
        (b'"text"', "must be a JSON object (got a string)"),
        (b"null", "must be a JSON object (got null)"),
        (b"\xff\xfe\xfa", "not"),
    ],
)
def test_a_document_that_is_not_an_object_is_refused(raw: bytes, expected: str) -> None:
    with pytest.raises(SourceConfigError, match=re.escape(expected)):
        SourceConfig.parse(raw)


def test_an_oversized_document_is_refused_before_it_is_parsed() -> None:
    raw = b'{"source": {"id": "' + b"x" * MAX_DOCUMENT_BYTES + b'"}}'

    with pytest.raises(SourceConfigError, match=f"over the limit of {MAX_DOCUMENT_BYTES}"):
        SourceConfig.parse(raw)
    with pytest.raises(SourceConfigError, match="over the limit"):
        SourceConfig.parse(raw.decode())


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({}, r"source: missing"),
        ({"source": None}, r"source: missing"),
        ({"source": []}, r"source: must be an object \(got an array\)"),
        ({"source": {"name": "backend"}}, r"source\.id: Field required"),
        ({"source": {"id": "s", "destinations": "all"}}, r"source\.destinations: "),
        ({"source": {"id": "s", "config": "am-secret-123"}}, r"source\.config: "),
    ],
)
def test_a_missing_or_invalid_source_is_refused_naming_the_path(
    document: dict[str, Any], expected: str
) -> None:
    with pytest.raises(SourceConfigError, match=expected) as raised:
        SourceConfig.parse(document)

    assert "am-secret-123" not in str(raised.value)


def test_parse_errors_never_quote_values() -> None:
    document = {"source": {"id": {"apiKey": "am-secret-123"}, "enabled": "mp-secret-456"}}

    with pytest.raises(SourceConfigError) as raised:
        SourceConfig.parse(json.dumps(document))

    text = str(raised.value)
    assert "source.id" in text
    assert "source.enabled" in text
    assert not any(secret in text for secret in SECRETS)
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__


def test_a_malformed_destination_is_skipped_and_the_others_are_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    document = sample_document()
    destinations = document["source"]["destinations"]
    del destinations[0]["destinationDefinition"]  # dst_am is unusable
    destinations.append("not an object")
    destinations.append({"id": "dst_x", "destinationDefinition": {"name": "X"}, "config": {}})

    config = SourceConfig.parse(document)

    assert [d.id for d in config.source.destinations] == ["dst_mp"]
    warnings = messages(caplog, logging.WARNING)
    assert len(warnings) == 3
    assert "destination 0 (id 'dst_am') skipped" in warnings[0]
    assert "destinations[0].destinationDefinition: Field required" in warnings[0]
    assert "destination 2 skipped" in warnings[1]
    assert "destinations[3].destinationDefinition.displayName: Field required" in warnings[2]
    assert not any(secret in line for line in warnings for secret in SECRETS)


@pytest.mark.parametrize(
    ("enabled", "config", "expected"),
    [
        (True, {"connectionMode": "device"}, True),
        (True, {"connectionMode": "hybrid"}, True),
        (True, {"connectionMode": "Device"}, True),
        (True, {"connectionMode": "cloud"}, False),
        (True, {}, False),
        (False, {"connectionMode": "device"}, False),
        (True, {"useNativeSDK": True}, True),
        (True, {"useNativeSDK": False}, False),
        (True, {"useNativeSDK": "true"}, False),
        (False, {"useNativeSDK": True}, False),
        (True, {"connectionMode": "cloud", "useNativeSDK": True}, True),
    ],
)
def test_device_mode_decision(enabled: bool, config: dict[str, Any], expected: bool) -> None:
    destination = Destination.model_validate(
        {
            "id": "d",
            "enabled": enabled,
            "destinationDefinition": {"name": "AM", "displayName": "Amplitude"},
            "config": config,
        }
    )

    assert destination.device_mode is expected


# -- fetching from the control plane ------------------------------------------------------


def test_constructing_the_client_does_no_io_and_starts_no_thread(
    make_config_client: MakeConfigClient, control_plane: ControlPlane, cache_dir: Path
) -> None:
    client, recorder = make_config_client(control_plane_url=control_plane.url)

    assert THREAD_NAME not in {t.name for t in threading.enumerate()}
    assert control_plane.count == 0
    assert not cache_dir.exists()
    assert client.etag is None
    assert not recorder.configs
    assert not recorder.unavailable


def test_first_fetch_delivers_the_config_from_the_control_plane(
    make_config_client: MakeConfigClient, control_plane: ControlPlane
) -> None:
    client, recorder = make_config_client(
        control_plane_url=control_plane.url + "/", config_refresh_interval=60.0
    )
    client.start()

    assert recorder.wait_configs(1)
    config, origin = recorder.configs[0]
    assert origin == "control_plane"
    assert config == SourceConfig.parse(sample_document())
    assert recorder.threads == {THREAD_NAME}
    assert client.etag == control_plane.etag
    (request,) = control_plane.requests
    assert request.path == "/sourceConfig/"
    assert request.query == {"p": ["python"], "v": [__version__]}
    assert request.headers["Authorization"] == f"Basic {TOKEN}"
    assert request.headers["User-Agent"] == f"analytics-sdk-python/{__version__}"
    assert "If-None-Match" not in request.headers
    assert request.status == 200


def test_304_keeps_the_current_config(
    make_config_client: MakeConfigClient, control_plane: ControlPlane
) -> None:
    client, recorder = make_config_client(control_plane_url=control_plane.url)
    client.start()
    assert recorder.wait_configs(1)

    assert control_plane.wait_for_requests(4)
    refreshes = control_plane.requests[1:3]  # answered and handled: a later request exists
    assert all(r.headers.get("If-None-Match") == control_plane.etag for r in refreshes)
    assert all(r.status == 304 for r in refreshes)
    assert len(recorder.configs) == 1
    assert client.etag == control_plane.etag


def test_a_changed_document_triggers_on_config_again(
    make_config_client: MakeConfigClient, control_plane: ControlPlane
) -> None:
    client, recorder = make_config_client(control_plane_url=control_plane.url)
    client.start()
    assert recorder.wait_configs(1)

    changed = sample_document()
    changed["source"]["destinations"][1]["config"]["connectionMode"] = "hybrid"
    control_plane.set_config(changed)

    assert recorder.wait_configs(2)
    config, origin = recorder.configs[1]
    assert origin == "control_plane"
    assert [d.device_mode for d in config.source.destinations] == [True, True]
    assert client.etag == control_plane.etag
    assert control_plane.wait_for_requests(control_plane.count + 2)
    assert len(recorder.configs) == 2


def test_the_same_document_without_etags_changes_nothing(
    make_config_client: MakeConfigClient, control_plane: ControlPlane
) -> None:
    control_plane.etags = False
    client, recorder = make_config_client(control_plane_url=control_plane.url)
    client.start()
    assert recorder.wait_configs(1)

    assert control_plane.wait_for_requests(4)
    assert all(r.status == 200 for r in control_plane.requests[:3])
    assert len(recorder.configs) == 1
    assert client.etag is None


def test_a_malformed_refresh_keeps_the_last_good_config(
    make_config_client: MakeConfigClient,
    control_plane: ControlPlane,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, recorder = make_config_client(control_plane_url=control_plane.url)
    client.start()
    assert recorder.wait_configs(1)
    good_etag = client.etag

    control_plane.set_config(b'{"source": {"id": "am-secret-123", "destinations": [')
    seen = control_plane.count
    assert control_plane.wait_for_requests(seen + 4)

    assert len(recorder.configs) == 1
    assert client.etag == good_etag  # the next refresh still asks about the good document
    unusable = [m for m in messages(caplog, logging.WARNING) if "unusable document" in m]
    assert len(unusable) == 1  # the same bad document is not reported at every refresh
    assert "keeping the current config" in unusable[0]
    assert "am-secret-123" not in caplog.text

    control_plane.set_config(sample_document(name="renamed"))
    assert recorder.wait_configs(2)
    assert recorder.configs[1][0].source.name == "renamed"


def test_refresh_failures_keep_the_config_and_warn_once_per_streak(
    make_config_client: MakeConfigClient,
    control_plane: ControlPlane,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, recorder = make_config_client(control_plane_url=control_plane.url)
    client.start()
    assert recorder.wait_configs(1)

    control_plane.fail(503, times=4)
    seen = control_plane.count
    assert control_plane.wait_for_requests(seen + 6)  # four failures, then 304s again

    assert len(recorder.configs) == 1
    failed = [m for m in messages(caplog, logging.WARNING) if "refresh failed" in m]
    assert len(failed) == 1
    assert "HTTP 503" in failed[0]
    assert any("answers again (4 failed attempts)" in m for m in messages(caplog, logging.INFO))


def test_initial_fetch_retries_until_the_control_plane_answers(
    make_config_client: MakeConfigClient, control_plane: ControlPlane
) -> None:
    control_plane.fail(503, times=2)
    control_plane.fail(429, times=1, headers={"Retry-After": "0"})
    client, recorder = make_config_client(
        control_plane_url=control_plane.url, config_refresh_interval=60.0
    )
    client.start()

    assert recorder.wait_configs(1)
    assert recorder.configs[0][1] == "control_plane"
    assert [r.status for r in control_plane.requests] == [503, 503, 429, 200]
    assert not recorder.unavailable


def test_control_plane_down_at_start_uses_the_cache(
    make_config_client: MakeConfigClient,
    control_plane: ControlPlane,
    dead_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cached = populate_cache(make_config_client, control_plane)
    caplog.clear()

    client, recorder = make_config_client(control_plane_url=dead_url, config_refresh_interval=60)
    client.start()

    assert recorder.wait_configs(1)
    assert recorder.configs == [(cached, "cache")]
    assert not recorder.unavailable
    assert any(
        "unreachable" in m and "using the cached sourceConfig" in m
        for m in messages(caplog, logging.INFO)
    )


def test_control_plane_down_with_no_cache_reports_unavailable_once(
    make_config_client: MakeConfigClient,
    control_plane: ControlPlane,
    caplog: pytest.LogCaptureFixture,
) -> None:
    control_plane.fail(503, times=1000)
    client, recorder = make_config_client(control_plane_url=control_plane.url)
    client.start()

    assert recorder.wait_unavailable()
    assert control_plane.wait_for_requests(10)  # the five first attempts, then refreshes
    assert recorder.unavailable == ["control plane unreachable and no cached config"]
    assert not recorder.configs
    assert not messages(caplog, logging.WARNING)  # the outage is one story, told once


def test_a_session_from_the_options_is_used(
    make_config_client: MakeConfigClient, control_plane: ControlPlane
) -> None:
    sent: list[str] = []

    class CountingSession(requests.Session):
        def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
            sent.append(request.url or "")
            return super().send(request, **kwargs)

    session = CountingSession()
    client, recorder = make_config_client(
        control_plane_url=control_plane.url, session=session, config_refresh_interval=60.0
    )
    client.start()

    assert recorder.wait_configs(1)
    assert sent == [f"{control_plane.url}/sourceConfig/?p=python&v={__version__}"]
    client.stop(2.0)
    session.close()


def test_a_refused_connection_reports_unavailable(
    make_config_client: MakeConfigClient, dead_url: str, cache_dir: Path
) -> None:
    client, recorder = make_config_client(control_plane_url=dead_url)
    client.start()

    assert recorder.wait_unavailable()
    assert recorder.unavailable == ["control plane unreachable and no cached config"]
    assert not cache_dir.exists()


def test_recovery_after_an_outage_needs_no_user_action(
    make_config_client: MakeConfigClient, control_plane: ControlPlane
) -> None:
    control_plane.fail(503, times=8)  # the five first attempts and three refreshes
    client, recorder = make_config_client(control_plane_url=control_plane.url)
    client.start()

    assert recorder.wait_unavailable()
    assert recorder.wait_configs(1)
    assert recorder.configs[0][1] == "control_plane"
    assert len(recorder.unavailable) == 1
    assert control_plane.requests[8].status == 200


@pytest.mark.parametrize("status", [401, 403, 404])
def test_401_403_404_are_not_retried_and_name_the_status(
    make_config_client: MakeConfigClient,
    control_plane: ControlPlane,
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    if status == 401:
        control_plane.write_key = "another_key"
    else:
        control_plane.fail(status)
    client, recorder = make_config_client(
        control_plane_url=control_plane.url, config_refresh_interval=60.0
    )
    client.start()

    assert recorder.wait_unavailable()
    assert control_plane.count == 1  # on_unavailable comes after the retries there would be
    (reason,) = recorder.unavailable
    assert f"HTTP {status}" in reason
    assert "no cached config" in reason
    assert WRITE_KEY not in caplog.text
    assert TOKEN not in caplog.text


def test_a_401_with_a_cache_uses_the_cache(
    make_config_client: MakeConfigClient, control_plane: ControlPlane
) -> None:
    cached = populate_cache(make_config_client, control_plane)
    control_plane.write_key = "a_rotated_key"
    seen = control_plane.count

    client, recorder = make_config_client(
        control_plane_url=control_plane.url, config_refresh_interval=60.0
    )
    client.start()

    assert recorder.wait_configs(1)
    assert recorder.configs == [(cached, "cache")]
    assert control_plane.count == seen + 1
    assert not recorder.unavailable


def test_an_unusable_first_document_reports_unavailable(
    make_config_client: MakeConfigClient, control_plane: ControlPlane
) -> None:
    control_plane.set_config(b"<html>maintenance</html>")
    client, recorder = make_config_client(
        control_plane_url=control_plane.url, config_refresh_interval=60.0
    )
    client.start()

    assert recorder.wait_unavailable()
    assert control_plane.count == 1
    assert "invalid sourceConfig" in recorder.unavailable[0]


def test_an_oversized_answer_is_not_read_to_the_end(
    make_config_client: MakeConfigClient,
    control_plane: ControlPlane,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("analytics_sdk._source_config.MAX_DOCUMENT_BYTES", 1000)
    control_plane.set_config(sample_document(name="x" * 2000))
    client, recorder = make_config_client(
        control_plane_url=control_plane.url, config_refresh_interval=60.0
    )
    client.start()

    assert recorder.wait_unavailable()
    assert "over the limit of 1000 bytes" in recorder.unavailable[0]


@pytest.mark.allow_sdk_errors
def test_a_raising_on_config_does_not_end_the_thread(
    control_plane: ControlPlane, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    calls: list[ConfigOrigin] = []

    def on_config(config: SourceConfig, origin: ConfigOrigin) -> None:
        calls.append(origin)
        if len(calls) == 1:
            raise RuntimeError("a bug in the factory")
        recorder.on_config(config, origin)

    options = make_options(cache_dir, control_plane_url=control_plane.url)
    client = SourceConfigClient(options, on_config, recorder.on_unavailable)
    try:
        client.start()
        assert control_plane.wait_for_requests(2)
        control_plane.set_config(sample_document(name="second"))

        assert recorder.wait_configs(1)
        assert recorder.configs[0][0].source.name == "second"
        assert any("on_config raised" in m for m in messages(caplog, logging.ERROR))
    finally:
        client.stop(2.0)


# -- the cache ----------------------------------------------------------------------------


def test_the_cache_file_is_private_and_named_by_a_hash_of_the_write_key(
    make_config_client: MakeConfigClient, control_plane: ControlPlane, cache_dir: Path
) -> None:
    populate_cache(make_config_client, control_plane)

    (path,) = cache_dir.iterdir()
    assert re.fullmatch(r"sourceconfig-[0-9a-f]{32}\.json", path.name)
    assert WRITE_KEY not in path.name
    # Not a plain fast hash either: those are reversed by trying likely keys (see test_security).
    for algorithm in ("md5", "sha1", "sha256", "sha512", "blake2b"):
        assert hashlib.new(algorithm, WRITE_KEY.encode()).hexdigest()[:8] not in path.name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert f'"{WRITE_KEY}"' not in text  # the document's writeKey is not stored either
    assert "am-secret-123" in text  # the rest of the document is: the reason for 0600
    assert json.loads(text)["etag"] == control_plane.etag


def test_the_cached_etag_makes_the_first_fetch_conditional(
    make_config_client: MakeConfigClient, control_plane: ControlPlane
) -> None:
    cached = populate_cache(make_config_client, control_plane)

    client, recorder = make_config_client(
        control_plane_url=control_plane.url, config_refresh_interval=60.0
    )
    client.start()

    assert recorder.wait_configs(1)
    assert recorder.configs == [(cached, "control_plane")]
    first = control_plane.requests[-1]
    assert first.headers.get("If-None-Match") == control_plane.etag
    assert first.status == 304
    assert client.etag == control_plane.etag


def test_the_cache_is_confirmed_when_the_control_plane_comes_back(
    make_config_client: MakeConfigClient, control_plane: ControlPlane
) -> None:
    cached = populate_cache(make_config_client, control_plane)
    control_plane.fail(503, times=5)  # the whole first fetch fails

    client, recorder = make_config_client(control_plane_url=control_plane.url)
    client.start()

    assert recorder.wait_configs(2)
    assert recorder.configs == [(cached, "cache"), (cached, "control_plane")]


def test_default_cache_directory_follows_xdg_then_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    options = make_options(tmp_path, config_cache_path=None, control_plane_url="http://x.test")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    xdg = SourceConfigClient(options, Recorder().on_config, Recorder().on_unavailable)
    xdg_path = xdg.cache_path()
    assert xdg_path is not None
    name = xdg_path.name  # the same for every client with this write key
    assert xdg_path == tmp_path / "xdg" / "analytics-sdk" / name

    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = SourceConfigClient(options, Recorder().on_config, Recorder().on_unavailable)
    assert home.cache_path() == tmp_path / "home" / ".cache" / "analytics-sdk" / name

    given = SourceConfigClient(
        make_options(tmp_path, source_config={"source": {"id": "s"}}),
        Recorder().on_config,
        Recorder().on_unavailable,
    )
    assert given.cache_path() is None


def test_a_corrupt_cache_file_is_ignored_with_a_warning(
    make_config_client: MakeConfigClient, dead_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client, recorder = make_config_client(control_plane_url=dead_url)
    path = client.cache_path()
    assert path is not None
    path.parent.mkdir(parents=True)
    path.write_text('{"format": 1, "etag": null, "document": {"source": {"id": ')
    client.start()

    assert recorder.wait_unavailable()
    assert not recorder.configs
    assert any("ignoring the sourceConfig cache" in m for m in messages(caplog, logging.WARNING))


def test_an_unwritable_cache_directory_warns_once_and_the_config_still_arrives(
    make_config_client: MakeConfigClient,
    control_plane: ControlPlane,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    client, recorder = make_config_client(
        control_plane_url=control_plane.url, config_cache_path=not_a_directory / "cache"
    )
    client.start()
    assert recorder.wait_configs(1)
    control_plane.set_config(sample_document(name="second"))
    assert recorder.wait_configs(2)

    cannot = [m for m in messages(caplog, logging.WARNING) if "cannot write the sourceConfig" in m]
    assert len(cannot) == 1


# -- source_config= -----------------------------------------------------------------------


def test_source_config_dict_is_delivered_without_a_control_plane(
    make_config_client: MakeConfigClient, cache_dir: Path
) -> None:
    document = sample_document()
    client, recorder = make_config_client(source_config=copy.deepcopy(document))
    client.start()

    assert recorder.wait_configs(1)
    assert recorder.configs == [(SourceConfig.parse(document), "dict")]
    assert recorder.threads == {THREAD_NAME}
    assert client.cache_path() is None
    assert not cache_dir.exists()
    thread = client._thread
    assert thread is not None
    thread.join(WAIT)
    assert not thread.is_alive()  # nothing to refresh: the thread ends
    client.start()
    assert client._thread is thread


def test_source_config_file_is_delivered_with_origin_file(
    make_config_client: MakeConfigClient, tmp_path: Path
) -> None:
    path = tmp_path / "sourceConfig.json"
    path.write_text(json.dumps(sample_document()))
    client, recorder = make_config_client(source_config=path)
    client.start()

    assert recorder.wait_configs(1)
    assert recorder.configs == [(SourceConfig.parse(sample_document()), "file")]


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "cannot read the file (FileNotFoundError)"), ("[1, 2]", "must be a JSON object")],
)
def test_a_bad_source_config_file_reports_unavailable(
    make_config_client: MakeConfigClient, tmp_path: Path, content: str | None, expected: str
) -> None:
    path = tmp_path / "sourceConfig.json"
    if content is not None:
        path.write_text(content)
    client, recorder = make_config_client(source_config=path)
    client.start()

    assert recorder.wait_unavailable()
    (reason,) = recorder.unavailable
    assert str(path) in reason
    assert expected in reason
    assert not recorder.configs


def test_an_invalid_source_config_dict_reports_unavailable(
    make_config_client: MakeConfigClient,
) -> None:
    client, recorder = make_config_client(source_config={"source": {"name": "no id"}})
    client.start()

    assert recorder.wait_unavailable()
    assert "source.id: Field required" in recorder.unavailable[0]


# -- lifecycle ----------------------------------------------------------------------------


def test_start_is_idempotent_and_stop_never_raises(
    make_config_client: MakeConfigClient, control_plane: ControlPlane
) -> None:
    client, recorder = make_config_client(control_plane_url=control_plane.url)
    client.stop(0.1)  # before start: nothing to stop
    client.start()
    assert client._thread is None  # stopped is final: start() does nothing more

    again, recorder = make_config_client(control_plane_url=control_plane.url)
    again.start()
    thread = again._thread
    again.start()
    assert again._thread is thread
    assert recorder.wait_configs(1)
    again.stop(2.0)
    again.stop(2.0)
    assert thread is not None
    assert not thread.is_alive()
    seen = control_plane.count
    again.start()
    assert again._thread is thread
    assert control_plane.count == seen


def test_stop_returns_within_its_timeout_while_a_fetch_hangs(
    make_config_client: MakeConfigClient, control_plane: ControlPlane
) -> None:
    control_plane.hang()
    client, recorder = make_config_client(control_plane_url=control_plane.url, timeout=30.0)
    client.start()
    assert control_plane.wait_for_requests(1)

    began = time.monotonic()
    client.stop(0.2)
    assert time.monotonic() - began < 2.0  # a loose bound: the request would take 30 s

    control_plane.release()  # the hung request ends; the thread leaves without a callback
    thread = client._thread
    assert thread is not None
    thread.join(WAIT)
    assert not thread.is_alive()
    assert not recorder.configs
    assert not recorder.unavailable


def simulate_fork(client: SourceConfigClient) -> None:
    """after_fork() as in a child, then end the parent's thread, which a child would not have."""
    parent_thread, parent_stop = client._thread, client._stop
    client.after_fork()
    parent_stop.set()
    if parent_thread is not None:
        parent_thread.join(WAIT)
        assert not parent_thread.is_alive()


def test_after_fork_gives_a_fresh_thread_that_replays_the_config_and_keeps_refreshing(
    make_config_client: MakeConfigClient, control_plane: ControlPlane
) -> None:
    client, recorder = make_config_client(control_plane_url=control_plane.url)
    client.start()
    assert recorder.wait_configs(1)
    parent_thread = client._thread

    simulate_fork(client)
    seen = control_plane.count
    client.start()

    child_thread = client._thread
    assert child_thread is not None
    assert child_thread is not parent_thread
    assert child_thread.is_alive()
    assert child_thread.name == THREAD_NAME
    # The child's factory starts from nothing: it gets the config again, with no request.
    assert recorder.wait_configs(2)
    assert recorder.configs[1] == recorder.configs[0]
    assert control_plane.wait_for_requests(seen + 3)
    # ... and the child goes on with the ETag it inherited: conditional refreshes only.
    assert all(
        r.headers.get("If-None-Match") == control_plane.etag for r in control_plane.requests[seen:]
    )
    assert len(recorder.configs) == 2


def test_after_fork_replays_a_dict_config(make_config_client: MakeConfigClient) -> None:
    client, recorder = make_config_client(source_config=sample_document())
    client.start()
    assert recorder.wait_configs(1)

    simulate_fork(client)
    client.start()

    assert recorder.wait_configs(2)
    assert recorder.configs[1] == recorder.configs[0]


def test_after_fork_reports_unavailable_again_in_the_child(
    make_config_client: MakeConfigClient, dead_url: str
) -> None:
    client, recorder = make_config_client(control_plane_url=dead_url, config_refresh_interval=60)
    client.start()
    assert recorder.wait_unavailable()

    simulate_fork(client)
    client.start()

    assert recorder.wait_unavailable(2)
    assert recorder.unavailable[1] == recorder.unavailable[0]


def test_after_fork_before_the_first_config_fetches_it(
    make_config_client: MakeConfigClient, control_plane: ControlPlane
) -> None:
    client, recorder = make_config_client(control_plane_url=control_plane.url)
    client.after_fork()
    client.start()

    assert recorder.wait_configs(1)
    assert recorder.configs[0][1] == "control_plane"


def test_logs_never_contain_the_write_key_or_destination_secrets(
    make_config_client: MakeConfigClient,
    control_plane: ControlPlane,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = sample_document()
    del bad["source"]["destinations"][0]["destinationDefinition"]["displayName"]
    control_plane.set_config(bad)
    client, recorder = make_config_client(control_plane_url=control_plane.url)
    client.start()
    assert recorder.wait_configs(1)
    broken = b'{"source": {"id": "am-secret-123", "writeKey": "' + WRITE_KEY.encode()
    control_plane.set_config(broken)
    control_plane.fail(500, times=2)
    seen = control_plane.count
    assert control_plane.wait_for_requests(seen + 4)

    text = "\n".join(messages(caplog))
    assert "destination 0 (id 'dst_am') skipped" in text
    assert not any(secret in text for secret in (*SECRETS, WRITE_KEY, TOKEN))
