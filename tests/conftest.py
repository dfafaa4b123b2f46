"""Fixtures: a real data plane on 127.0.0.1, clients that always shut down, log policing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.report import write_summary
from support.servers import DataPlane

from analytics_sdk import Client
from analytics_sdk._lifecycle import live_clients as _live_clients

MakeClient = Callable[..., Client]


@pytest.fixture
def data_plane() -> Iterator[DataPlane]:
    server = DataPlane().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_client(data_plane: DataPlane) -> Iterator[MakeClient]:
    """Client("wk_test_key", data_plane.url, **options), shut down after the test."""
    clients: list[Client] = []

    def make(**options: Any) -> Client:
        client = Client(options.pop("write_key", "wk_test_key"),
                        options.pop("data_plane_url", data_plane.url), **options)  # fmt: skip
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.shutdown(timeout=1.0)


@pytest.fixture(autouse=True)
def _no_leftover_clients() -> Iterator[None]:
    """Clients a test forgot to shut down would run the atexit flush at pytest's end."""
    yield
    for client in list(_live_clients):
        client.shutdown(timeout=0.2)


@pytest.fixture(autouse=True)
def _fail_on_sdk_tracebacks(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """An ERROR with a traceback from our logger is a bug unless the test expects it."""
    caplog.set_level(logging.DEBUG, logger="analytics_sdk")
    yield
    if request.node.get_closest_marker("allow_sdk_errors"):
        return
    bugs = [
        r
        for r in caplog.get_records("call")
        if r.name.startswith("analytics_sdk")
        and r.levelno >= logging.ERROR
        and (r.exc_info or r.exc_text)  # exc_text only: a traceback whose secret was masked
    ]
    assert not bugs, f"the SDK logged tracebacks: {[r.getMessage() for r in bugs]}"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    write_summary(terminalreporter, config)  # the fault and crash scenarios' table
