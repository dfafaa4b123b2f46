"""Exactly-once outcomes under hostile timing: overlapping shutdowns, re-entrant callbacks,
forks the hook never saw, internal errors, odd timeouts. Each test pins a bug found in review."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
import requests
from conftest import MakeClient
from support.processes import run_script
from support.servers import DataPlane, Reply

from analytics_sdk import AnalyticsError, Client, ConfigurationError, InvalidMessageError


def invariant_holds(client: Client) -> bool:
    s = client.stats()
    return s.accepted == s.delivered + s.failed + s.discarded + s.queued


@pytest.mark.allow_sdk_errors
def test_overlapping_shutdowns_report_an_in_flight_batch_once(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    data_plane.respond = lambda request: Reply(hang=True)
    reported: list[int] = []
    lock = threading.Lock()

    def slow_on_error(error: AnalyticsError, messages: list[dict[str, Any]]) -> None:
        time.sleep(0.2)
        with lock:
            reported.append(len(messages))

    client = make_client(on_error=slow_on_error, timeout=30)
    for i in range(10):
        client.track("u1", f"E{i}")
    client.flush(timeout=0.3)  # the batch is in flight now, held by the server
    threads = [threading.Thread(target=client.shutdown, args=(0.3,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert sum(reported) == 10
    stats = client.stats()
    assert (stats.failed, stats.queued) == (10, 0)
    assert invariant_holds(client)


@pytest.mark.allow_sdk_errors
@pytest.mark.parametrize("call", ["flush", "shutdown"])
def test_on_error_may_flush_or_shut_down_during_a_shutdown(
    make_client: MakeClient, data_plane: DataPlane, call: str
) -> None:
    data_plane.respond = lambda request: Reply(hang=True)
    holder: dict[str, Client] = {}
    results: list[bool] = []

    def on_error(error: AnalyticsError, messages: list[dict[str, Any]]) -> None:
        method = getattr(holder["client"], call)
        results.append(method(None))  # no limit: must still return at once

    client = make_client(on_error=on_error, timeout=30)
    holder["client"] = client
    client.track("u1", "E")
    started = time.monotonic()
    client.shutdown(timeout=0.3)
    assert time.monotonic() - started < 3
    assert results == [False]


def test_on_error_may_flush_in_sync_mode(make_client: MakeClient, data_plane: DataPlane) -> None:
    data_plane.respond = lambda request: Reply(status=401)
    holder: dict[str, Client] = {}

    def on_error(error: AnalyticsError, messages: list[dict[str, Any]]) -> None:
        holder["client"].flush(None)

    client = make_client(sync_mode=True, on_error=on_error)
    holder["client"] = client
    started = time.monotonic()
    assert client.track("u1", "E") is None
    assert time.monotonic() - started < 3


def test_shutdown_from_on_error_still_delivers_the_rest_at_exit(data_plane: DataPlane) -> None:
    data_plane.script = [Reply(status=400, body="first batch refused")]
    result = run_script(
        """
        import atexit, sys
        accepted, reasons = [], []
        atexit.register(lambda: print(len(accepted), reasons))  # LIFO: runs after our hook
        from analytics_sdk import Client
        holder = {}

        def on_error(error, messages):
            reasons.append(error.reason)
            holder["c"].shutdown()

        client = Client("wk_test_key", sys.argv[1], flush_at=1, shutdown_timeout=10,
                        on_error=on_error)
        holder["c"] = client
        for i in range(20):
            if client.track("u1", f"E{i}"):
                accepted.append(i)
        """,
        data_plane.url,
    )
    assert result.returncode == 0, result.stderr
    accepted, reasons = result.stdout.split(" ", 1)
    # Calls after the shutdown are rejected (reported); every accepted one but the refused
    # first is delivered, although shutdown() was called from inside on_error.
    assert len(data_plane.events) == int(accepted) - 1
    assert reasons.count("rejected_4xx") == 1


def test_a_fork_the_hook_never_saw_is_caught_by_the_pid_check(data_plane: DataPlane) -> None:
    result = run_script(
        """
        import os, sys
        from analytics_sdk import Client
        from analytics_sdk._lifecycle import live_clients as _live_clients
        client = Client("wk_test_key", sys.argv[1], flush_interval=60)
        client.track("parent", "Parent")
        _live_clients.discard(client)  # the at-fork hook will not see it: as a C-level fork
        pid = os.fork()
        if pid == 0:
            message_id = client.track("child", "Child")
            ok = client.flush(timeout=5)
            stats = client.stats()
            print("child", bool(message_id), ok, stats.accepted, stats.delivered, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print("parent", client.flush(timeout=5), flush=True)
        """,
        data_plane.url,
    )
    assert result.returncode == 0, result.stderr
    assert "child True True 1 1" in result.stdout
    assert sorted(e["event"] for e in data_plane.events) == ["Child", "Parent"]


class ExplodingSession(requests.Session):
    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        raise RuntimeError("a bug deep in an adapter")


@pytest.mark.allow_sdk_errors
def test_an_internal_error_in_sync_mode_settles_the_message(data_plane: DataPlane) -> None:
    reasons: list[str] = []
    client = Client("wk_test_key", data_plane.url, sync_mode=True, session=ExplodingSession(),
                    on_error=lambda error, messages: reasons.append(error.reason))  # fmt: skip
    assert client.track("u1", "E") is None
    assert reasons == ["internal_error"]
    started = time.monotonic()
    assert client.flush(timeout=2)
    assert client.shutdown(timeout=2)
    assert time.monotonic() - started < 1
    assert invariant_holds(client)


@pytest.mark.allow_sdk_errors
def test_on_error_raising_system_exit_does_not_stop_delivery(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    data_plane.script = [Reply(status=400)]

    def on_error(error: AnalyticsError, messages: list[dict[str, Any]]) -> None:
        raise SystemExit(3)

    client = make_client(on_error=on_error)
    client.track("u1", "Refused")
    assert client.flush(timeout=5)
    client.track("u1", "Later")
    assert client.flush(timeout=5)
    assert [e["event"] for e in data_plane.events] == ["Later"]


def test_the_stats_invariant_holds_inside_on_error(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    data_plane.respond = lambda request: Reply(status=400)
    seen: list[bool] = []
    holder: dict[str, Client] = {}
    client = make_client(on_error=lambda e, m: seen.append(invariant_holds(holder["client"])))
    holder["client"] = client
    for i in range(5):
        client.track("u1", f"E{i}")
    assert client.flush(timeout=5)
    assert seen
    assert all(seen)


@pytest.mark.parametrize("option", ["timeout", "shutdown_timeout", "flush_interval"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_infinite_durations_are_configuration_errors(option: str, value: float) -> None:
    with pytest.raises(ConfigurationError, match=option):
        Client("wk_test_key", "http://127.0.0.1:9", **{option: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [float("inf"), 1e12, "2", -5, None])
def test_odd_flush_timeouts_never_raise(
    make_client: MakeClient, data_plane: DataPlane, timeout: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client()
    client.track("u1", "E")
    if timeout == -5:  # a negative timeout means "do not wait": False is the honest answer
        assert client.flush(timeout=timeout) is False
        assert client.flush(timeout=5) is True
    else:
        assert client.flush(timeout=timeout) is True
    assert client.shutdown(timeout=timeout) is True  # nothing left to wait for


def test_stateful_traits_are_a_snapshot(make_client: MakeClient, data_plane: DataPlane) -> None:
    client = make_client(stateful=True)
    traits: dict[str, Any] = {"address": {"city": "Paris"}}
    client.identify("u1", traits)
    traits["address"]["city"] = "Berlin"
    traits["address"]["tags"] = {1, 2}  # not JSON: must not break anything either
    assert client.track(event="Later") is not None
    assert client.flush(timeout=5)
    assert data_plane.events[-1]["context"]["traits"] == {"address": {"city": "Paris"}}


def test_an_identity_file_that_is_not_text_starts_a_new_identity(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    client = Client("wk_test_key", send=False, identity_path=path)
    assert len(client.anonymous_id) == 36
    assert json.loads(path.read_text())["anonymousId"] == client.anonymous_id


@pytest.mark.parametrize(
    ("when", "sent"),
    [
        (datetime(999, 1, 2, 3, 4, 5), "0999-01-02T03:04:05.000Z"),
        (datetime(5, 1, 1), "0005-01-01T00:00:00.000Z"),
    ],
)
def test_early_years_are_zero_padded(
    make_client: MakeClient, data_plane: DataPlane, when: datetime, sent: str
) -> None:
    client = make_client()
    client.track("u1", "Ancient", {"at": when}, timestamp=when)
    assert client.flush(timeout=5)
    assert data_plane.events[0]["timestamp"] == sent
    assert data_plane.events[0]["properties"]["at"] == sent


def test_a_timestamp_outside_utc_range_is_invalid_input() -> None:
    edge = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))
    client = Client("wk_test_key", send=False, strict=True)
    with pytest.raises(InvalidMessageError, match="timestamp"):
        client.track("u1", "E", timestamp=edge)
    with pytest.raises(InvalidMessageError, match=r"properties\.at"):
        client.track("u1", "E", {"at": edge})


def test_a_bad_context_option_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"context\.a"):
        Client("wk_test_key", send=False, context={"a": float("nan")})


def test_the_exit_flush_shares_one_budget_across_clients() -> None:
    started = time.monotonic()
    result = run_script(
        """
        from analytics_sdk import Client
        clients = [Client(f"wk_{n}_key", "http://127.0.0.1:9", shutdown_timeout=1.0)
                   for n in range(4)]
        for client in clients:
            client.track("u1", "Doomed")
        """
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 4.0  # one budget (1 s) plus start-up, not four
    assert result.stderr.count("dropped 1 message(s)") == 4  # each loss is still reported


# -- the compact queue form ----------------------------------------------------------------


def test_default_fields_are_stored_compact_and_restored_on_the_wire() -> None:
    from analytics_sdk._serialization import (
        ALL_INTEGRATIONS,
        DEFAULT_TAIL,
        LIBRARY_CONTEXT,
        compact,
        dumps,
        expand,
        wire_size,
    )

    defaults = {"context": LIBRARY_CONTEXT, "integrations": ALL_INTEGRATIONS, "channel": "server"}
    full = dumps({"type": "track", "messageId": "m1", "originalTimestamp": "t", **defaults})
    stored = compact(full)
    assert len(stored) == len(full) - len(DEFAULT_TAIL)
    assert expand(stored) == full
    assert wire_size(stored) == len(full)
    # A middleware may reorder fields: a tail after a non-string value is never cut.
    after_a_number = dumps({"type": "track", "n": 1, **defaults})
    assert compact(after_a_number) == after_a_number
    assert expand(after_a_number) == after_a_number


def test_compact_and_full_messages_arrive_identical(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    client = make_client(flush_interval=60)
    client.track("u1", "Plain")  # compact in the queue
    client.track("u1", "Custom", context={"ip": "10.0.0.1"}, integrations={"All": False})
    client.identify("u1", {"plan": "pro"})  # context.traits: full in the queue
    assert client.flush(timeout=5)
    plain, custom, identify = data_plane.events
    assert plain["context"] == {"library": {"name": "analytics-sdk-python", "version": ANY}}
    assert plain["integrations"] == {"All": True}
    assert plain["channel"] == "server"
    assert custom["context"]["ip"] == "10.0.0.1"
    assert custom["integrations"] == {"All": False}
    assert identify["context"]["traits"] == {"plan": "pro"}
    assert all(
        event["sentAt"] == data_plane.requests[0].json["sentAt"] for event in (plain, custom)
    )


def test_on_error_gets_whole_messages_from_the_compact_queue(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    data_plane.respond = lambda request: Reply(status=422)
    got: list[dict[str, Any]] = []
    client = make_client(on_error=lambda error, messages: got.extend(messages))
    client.track("u1", "Refused")
    assert client.flush(timeout=5)
    (message,) = got
    assert message["channel"] == "server"
    assert message["integrations"] == {"All": True}
    assert "library" in message["context"]
