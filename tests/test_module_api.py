"""analytics_sdk.configure() and the module-level proxies."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from support.servers import DataPlane

import analytics_sdk
from analytics_sdk import Client, _default


@pytest.fixture(autouse=True)
def _no_default_client() -> Iterator[None]:
    _default._default = None
    _default._warned = False
    yield
    leftover: Client | None = getattr(_default, "_default", None)  # set by the test
    if leftover is not None:
        leftover.shutdown(timeout=1)
    _default._default = None


def test_configure_then_track_through_the_module(data_plane: DataPlane) -> None:
    client = analytics_sdk.configure("wk_test_key", data_plane.url)
    message_id = analytics_sdk.track("u1", "Via Module", {"a": 1})
    analytics_sdk.identify("u1", {"plan": "pro"})
    assert analytics_sdk.flush(timeout=5)
    assert analytics_sdk.default_client() is client
    assert data_plane.message_ids()[0] == message_id
    assert [e["type"] for e in data_plane.events] == ["track", "identify"]


def test_configure_again_replaces_and_flushes_the_previous_client(data_plane: DataPlane) -> None:
    first = analytics_sdk.configure("wk_test_key", data_plane.url, flush_interval=60)
    analytics_sdk.track("u1", "Before")
    analytics_sdk.configure("wk_test_key", data_plane.url)
    assert first.stats().delivered == 1
    assert first.track("u1", "Late") is None  # the old client is shut down


def test_without_configuration_calls_are_dropped_with_one_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("ANALYTICS_SDK_WRITE_KEY", raising=False)
    assert analytics_sdk.track("u1", "Nowhere") is None
    assert analytics_sdk.track("u1", "Nowhere") is None
    assert analytics_sdk.flush() is True
    assert len([r for r in caplog.records if "configure" in r.getMessage()]) == 1


def test_a_cold_start_from_many_threads_builds_exactly_one_client(
    monkeypatch: pytest.MonkeyPatch, data_plane: DataPlane
) -> None:
    monkeypatch.setenv("ANALYTICS_SDK_WRITE_KEY", "wk_test_key")
    monkeypatch.setenv("ANALYTICS_SDK_DATA_PLANE_URL", data_plane.url)
    barrier = threading.Barrier(64)
    seen: list[int] = []
    lock = threading.Lock()

    def cold_call() -> None:
        barrier.wait()
        analytics_sdk.track("u1", "Cold Start")
        client = analytics_sdk.default_client()
        with lock:
            seen.append(id(client))

    threads = [threading.Thread(target=cold_call) for _ in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(set(seen)) == 1
    assert analytics_sdk.flush(timeout=10)
    assert len(data_plane.events) == 64
