"""A third-party integration, installed as its own package, is discovered and enabled.

Uses the example in examples/custom_integration, installed by the README's test command
(`pip install -e '.[dev]' -e examples/custom_integration`): real entry points, no
monkeypatched discover().
"""

from __future__ import annotations

import json
import time
from importlib.metadata import PackageNotFoundError, distribution, entry_points
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeClient
from support.servers import DataPlane

from analytics_sdk._factory import ENTRY_POINT_GROUP, discover

try:
    distribution("analytics-sdk-example-eventlog")
except PackageNotFoundError:
    pytest.skip(
        "the example integration is not installed: "
        "pip install -e examples/custom_integration (the README's test command does it)",
        allow_module_level=True,
    )

from analytics_sdk_eventlog import EventLogIntegration, verify_line

SIGNING_KEY = "whsec_test_456"


def document(path: Path, **config: Any) -> dict[str, Any]:
    return {
        "source": {
            "id": "src_1",
            "name": "backend",
            "enabled": True,
            "writeKey": "wk_test_key",
            "config": {},
            "destinations": [
                {
                    "id": "dst_log",
                    "name": "Audit log",
                    "enabled": True,
                    "destinationDefinition": {"name": "EVENT_LOG", "displayName": "Event Log"},
                    "config": {
                        "connectionMode": "device",
                        "path": str(path),
                        "signingKey": SIGNING_KEY,
                        "eventFilteringOption": "blacklistedEvents",
                        "blacklistedEvents": [{"eventName": "Heartbeat"}],
                        **config,
                    },
                }
            ],
        }
    }


def wait_until_active(client: Any, key: str, timeout: float = 5.0) -> dict[str, Any]:
    """The config arrives on the config thread; flush() cannot wait for it (see the report)."""
    deadline = time.monotonic() + timeout
    while True:
        status = {s["key"]: s for s in client.integrations_status()}
        if (key in status and status[key]["active"]) or time.monotonic() > deadline:
            found: dict[str, Any] = status.get(key, {})
            return found
        time.sleep(0.01)  # polling a condition the test cannot be notified of


def test_the_entry_point_is_registered_and_discovered() -> None:
    names = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert names["eventlog"] == "analytics_sdk_eventlog:EventLogIntegration"
    found = discover()["eventlog"]
    assert found.installed
    assert found.cls is EventLogIntegration
    assert found.error is None


def test_a_source_config_enables_it_and_tracked_events_reach_its_file(
    make_client: MakeClient, data_plane: DataPlane, tmp_path: Path
) -> None:
    log = tmp_path / "audit" / "events.jsonl"
    client = make_client(source_config=document(log))
    ids = [
        client.identify("u1", {"plan": "pro"}),
        client.track("u1", "Order Completed", {"revenue": 25.5}),
        client.track("u1", "Heartbeat"),  # filtered out by the destination's deny-list
        client.page("u1", "Docs", "Home"),
        client.alias("anon-1", "u1"),
    ]
    status = wait_until_active(client, "eventlog")
    assert status.get("active"), status
    assert status["enabled_by_config"]
    assert status["installed"]
    assert client.flush(timeout=5)
    records = [verify_line(line, SIGNING_KEY) for line in log.read_text().splitlines()]
    assert [r["messageId"] for r in records] == [ids[0], ids[1], ids[3], ids[4]]
    assert records[1]["event"] == "Order Completed"
    assert records[1]["properties"] == {"revenue": 25.5}
    assert client.stats().integrations["eventlog"]["handled"] == 4
    assert len(data_plane.events) == 5  # cloud delivery got everything, the heartbeat too


def test_invalid_options_keep_it_off_without_echoing_the_value(
    make_client: MakeClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "events.jsonl"
    client = make_client(source_config=document(log, maxLineBytes="huge-lines-please"))
    client.track("u1", "Order Completed")
    deadline = time.monotonic() + 5
    while "stays off" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.01)  # polling a condition the test cannot be notified of
    (status,) = [s for s in client.integrations_status() if s["key"] == "eventlog"]
    assert status["active"] is False
    assert "maxLineBytes" in status["options_error"]
    assert "huge-lines-please" not in caplog.text + json.dumps(status)
    assert client.flush(timeout=5)
    assert not log.exists()
