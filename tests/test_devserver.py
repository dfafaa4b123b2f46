"""The dev server: the SDK end to end against it, and raw HTTP for every refusal and its text."""

from __future__ import annotations

import gzip
import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from analytics_sdk import AnalyticsError, Client
from analytics_sdk.devserver import (
    MAX_MESSAGE_BYTES,
    MAX_REQUEST_BYTES,
    DevServer,
    Faults,
    Workspace,
    WorkspaceError,
)

KEY = "dev-write-key"


@pytest.fixture
def server() -> Iterator[DevServer]:
    with DevServer() as dev:
        yield dev


def post(server: DevServer, body: Any, path: str = "/v1/batch", key: str = KEY,
         **kwargs: Any) -> requests.Response:  # fmt: skip
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(f"{server.url}{path}", data=data, auth=(key, ""), timeout=5, **kwargs)


def message(**fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": "E", "userId": "u1", "messageId": "m1", **fields}


def test_every_call_type_from_the_sdk_is_stored_with_received_time(server: DevServer) -> None:
    client = Client(server.write_key, server.url)
    ids = [
        client.identify("u1", {"plan": "pro"}),
        client.track("u1", "Order Completed", {"revenue": 25.5}),
        client.page("u1", "Docs", "Intro"),
        client.screen("u1", "Home"),
        client.group("u1", "acme", {"employees": 12}),
        client.alias("anon-7", "u1"),
    ]
    assert client.flush(timeout=5)
    client.shutdown()
    events = server.events()
    assert [e["messageId"] for e in events] == ids  # gzip bodies included: it is on by default
    assert [e["type"] for e in events] == [
        "identify", "track", "page", "screen", "group", "alias",
    ]  # fmt: skip
    assert events[1]["properties"] == {"revenue": 25.5}
    for event in events:
        assert event["receivedAt"].endswith("Z")
        assert event["timestamp"].endswith("Z")  # skew-corrected from sentAt/originalTimestamp
    assert server.events(type="group")[0]["groupId"] == "acme"
    listed = requests.get(f"{server.url}/v1/events?type=track&userId=u1&limit=5", timeout=5)
    assert [e["messageId"] for e in listed.json()["events"]] == [ids[1]]


def test_a_back_filled_timestamp_is_kept_and_a_missing_one_is_skew_corrected(
    server: DevServer,
) -> None:
    given = message(messageId="m-given", timestamp="2026-01-01T00:00:00.000Z")
    skewed = message(
        messageId="m-skew",
        originalTimestamp="2030-01-01T00:00:00.000Z",  # a device clock years ahead...
        sentAt="2030-01-01T00:00:10.000Z",  # ...sent 10 s after the call
    )
    assert post(server, {"batch": [given, skewed]}).status_code == 200
    stored = {e["messageId"]: e for e in server.events()}
    assert stored["m-given"]["timestamp"] == "2026-01-01T00:00:00.000Z"
    received_at = stored["m-skew"]["receivedAt"]
    assert stored["m-skew"]["timestamp"] < received_at  # 10 s before receipt, not in 2030
    assert stored["m-skew"]["timestamp"][:4] == received_at[:4]


def test_a_repeated_message_id_is_stored_once(server: DevServer) -> None:
    client = Client(server.write_key, server.url)
    for _ in range(3):
        client.track("u1", "Once", message_id="fixed-id")
    assert client.flush(timeout=5)
    client.shutdown()
    assert [e["messageId"] for e in server.events()] == ["fixed-id"]
    assert server.counts.duplicates == 2


def test_a_wrong_write_key_reaches_on_error_as_a_401(server: DevServer) -> None:
    reports: list[AnalyticsError] = []
    lock = threading.Lock()

    def on_error(error: AnalyticsError, messages: list[dict[str, Any]]) -> None:
        with lock:
            reports.append(error)

    client = Client("not-a-key", server.url, on_error=on_error)
    client.track("u1", "Refused")
    client.flush(timeout=5)
    client.shutdown()
    assert [(e.reason, getattr(e, "status", None)) for e in reports] == [("rejected_4xx", 401)]
    assert "invalid write key" in str(reports[0])
    assert server.events() == []


@pytest.mark.parametrize(
    ("body", "path", "status", "reason"),
    [
        (b"{not json", "/v1/batch", 400, "invalid JSON: "),
        ({"batch": []}, "/v1/batch", 400, "empty batch"),
        ({"events": []}, "/v1/batch", 400, 'must be an object with a "batch" list'),
        ({"batch": [message(userId=None)]}, "/v1/batch", 400,
         "batch[0]: neither userId nor anonymousId is set"),
        ({"batch": [message(), message(event="")]}, "/v1/batch", 400,
         "batch[1].event: required for a track call"),
        ({"batch": [message(type="click")]}, "/v1/batch", 400, "batch[0].type: must be one of"),
        ({"batch": [message(messageId=None)]}, "/v1/batch", 400, "batch[0].messageId: required"),
        ({"batch": [message(properties={"x": "y" * MAX_MESSAGE_BYTES})]}, "/v1/batch", 400,
         f"over the limit of {MAX_MESSAGE_BYTES}"),
        ({"type": "group", "userId": "u1", "messageId": "g"}, "/v1/group", 400,
         "message.groupId: required for a group call"),
        ({"type": "page", "userId": "u1", "messageId": "p"}, "/v1/track", 400,
         "type 'page' sent to /v1/track"),
        (message(), "/v1/click", 404, "no such endpoint: POST /v1/click"),
    ],
)  # fmt: skip
def test_each_refusal_has_its_status_and_reason(
    server: DevServer, body: Any, path: str, status: int, reason: str
) -> None:
    answer = post(server, body, path)
    assert answer.status_code == status
    assert reason in answer.text
    assert server.events() == []  # one bad message refuses the whole request


def test_single_message_endpoints_store_the_message(server: DevServer) -> None:
    answer = post(server, {"userId": "u1", "messageId": "i1", "traits": {"a": 1}}, "/v1/identify")
    assert answer.status_code == 200
    assert server.events()[0]["type"] == "identify"


def test_authentication_and_a_disabled_source(server: DevServer) -> None:
    assert post(server, {"batch": [message()]}, key="nope").status_code == 401
    answer = requests.post(f"{server.url}/v1/batch", json={"batch": [message()]}, timeout=5)
    assert (answer.status_code, answer.text) == (
        401, "invalid write key (send it as the Basic auth user name)",
    )  # fmt: skip
    server.set_workspace({"sources": [{"id": "off", "writeKey": KEY, "enabled": False}]})
    answer = post(server, {"batch": [message()]})
    assert (answer.status_code, answer.text) == (404, "source 'off' is disabled")


def test_gzip_bodies_and_the_size_limits(server: DevServer) -> None:
    packed = gzip.compress(json.dumps({"batch": [message()]}).encode())
    assert post(server, packed, headers={"Content-Encoding": "gzip"}).status_code == 200
    answer = post(server, b"not gzip", headers={"Content-Encoding": "gzip"})
    assert (answer.status_code, answer.text) == (400, "invalid gzip body")
    bomb = gzip.compress(b" " * (MAX_REQUEST_BYTES + 10))  # small on the wire, huge inside
    answer = post(server, bomb, headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 413
    assert "once decompressed" in answer.text
    answer = post(server, b" " * (MAX_REQUEST_BYTES + 1))
    assert answer.status_code == 413
    assert f"over the limit of {MAX_REQUEST_BYTES}" in answer.text
    assert len(server.events()) == 1


def test_source_config_with_etag_and_a_changed_workspace(server: DevServer) -> None:
    url = f"{server.url}/sourceConfig/"
    first = requests.get(url, auth=(KEY, ""), timeout=5)
    assert first.status_code == 200
    assert first.json()["source"]["id"] == "dev"
    etag = first.headers["ETag"]
    again = requests.get(url, auth=(KEY, ""), headers={"If-None-Match": etag}, timeout=5)
    assert (again.status_code, again.content) == (304, b"")
    assert requests.get(url, auth=("nope", ""), timeout=5).status_code == 401
    server.set_workspace({"sources": [{"id": "dev", "writeKey": KEY, "name": "renamed"}]})
    changed = requests.get(url, auth=(KEY, ""), headers={"If-None-Match": etag}, timeout=5)
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag


def test_the_workspace_file_is_read_and_reloaded_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "workspace.json"
    path.write_text(json.dumps({"sources": [{"id": "a", "writeKey": "key-a"}]}))
    with DevServer(workspace=path) as server:
        assert post(server, {"batch": [message()]}, key="key-a").status_code == 200
        path.write_text(json.dumps({"sources": [{"id": "b", "writeKey": "key-b"}]}))
        os.utime(path, (1, 1))  # a different mtime, whatever the clock's resolution
        assert post(server, {"batch": [message(messageId="m2")]}, key="key-b").status_code == 200
        assert post(server, {"batch": [message()]}, key="key-a").status_code == 401


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ({}, '"sources" must be a non-empty list'),
        ({"sources": [{"id": "a"}]}, "sources[0].writeKey: must be a non-empty string"),
        ({"sources": [{"id": "a", "writeKey": "k"}, {"id": "b", "writeKey": "k"}]},
         "sources[1].writeKey: the same key is used by another source"),
        ({"sources": [{"writeKey": "k"}]}, "sources[0]: invalid sourceConfig: source.id"),
    ],
)  # fmt: skip
def test_a_bad_workspace_is_refused_with_its_path(document: dict[str, Any], error: str) -> None:
    with pytest.raises(WorkspaceError, match=re.escape(error)):
        Workspace(document)


def test_events_survive_a_stop_in_the_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "events.sqlite"
    with DevServer(db=db) as server:
        client = Client(server.write_key, server.url)
        sent = [client.track("u1", f"E{n}") for n in range(50)]
        assert client.flush(timeout=5)
        client.shutdown()
    with DevServer(db=db) as again:
        assert [e["messageId"] for e in again.events()] == sent


def test_fault_injection_answers_the_configured_failure(server: DevServer) -> None:
    server.set_faults(Faults(fail_rate=1.0, status=429, retry_after=2))
    answer = post(server, {"batch": [message()]})
    assert (answer.status_code, answer.headers["Retry-After"]) == (429, "2")
    server.set_faults(Faults(fail_rate=0.5, seed=7))
    statuses = [post(server, {"batch": [message(messageId=f"m{n}")]}).status_code
                for n in range(40)]  # fmt: skip
    assert set(statuses) == {200, 503}
    assert len(server.events()) == statuses.count(200)
    with pytest.raises(ValueError, match=r"fail_rate must be within 0\.\.1"):
        Faults(fail_rate=2)


def test_the_sdk_delivers_everything_through_injected_failures(
    server: DevServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("analytics_sdk._transport.BACKOFF_BASE", 0.01)
    server.set_faults(Faults(fail_rate=0.5, status=503, seed=3))
    client = Client(server.write_key, server.url, flush_at=10, max_retries=30)
    sent = [client.track("u1", f"E{n}") for n in range(200)]
    assert None not in sent
    assert client.flush(timeout=20)
    client.shutdown()
    assert sorted(e["messageId"] for e in server.events(limit=500)) == sorted(m for m in sent if m)
    assert server.counts.faults > 0


def test_health_and_unknown_paths(server: DevServer) -> None:
    assert requests.get(f"{server.url}/health", timeout=5).json() == {"status": "ok"}
    assert requests.get(f"{server.url}/nope", timeout=5).status_code == 404
    assert requests.get(f"{server.url}/v1/events?limit=0", timeout=5).status_code == 400


def test_stop_does_not_wait_for_idle_keep_alive_connections() -> None:
    server = DevServer().start()
    session = requests.Session()
    assert session.get(f"{server.url}/health", timeout=5).status_code == 200  # kept alive
    done = threading.Event()

    def stop() -> None:
        server.stop(timeout=30)
        done.set()

    threading.Thread(target=stop, daemon=True).start()
    assert done.wait(10)  # an idle connection is closed, not waited out for 30 s
    session.close()
