"""The whole product on one machine: the dev server's control plane enables Amplitude and a
webhook in device mode; each event reaches the data plane and both destinations, and every
copy carries the same messageId."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("amplitude", reason="the amplitude extra is not installed")

from support.servers import DataPlane, Reply, Request

from analytics_sdk import Client
from analytics_sdk.devserver import DevServer


def amplitude_ok(request: Request) -> Reply:
    events = request.json.get("events", [])
    return Reply(body=json.dumps({"code": 200, "events_ingested": len(events)}))


def test_the_dev_control_plane_enables_amplitude_and_a_webhook(tmp_path: Path) -> None:
    amplitude_api, hook = DataPlane().start(), DataPlane().start()
    amplitude_api.respond = amplitude_ok
    workspace = {"sources": [{
        "id": "backend", "name": "Backend", "writeKey": "e2e-write-key", "enabled": True,
        "destinations": [
            {"id": "dst_am", "name": "Amplitude", "enabled": True,
             "destinationDefinition": {"name": "AM", "displayName": "Amplitude"},
             "config": {"apiKey": "am-e2e-key", "connectionMode": "device",
                        "serverUrl": f"{amplitude_api.url}/2/httpapi"}},
            {"id": "dst_hook", "name": "Hook", "enabled": True,
             "destinationDefinition": {"name": "WEBHOOK", "displayName": "Webhook"},
             "config": {"webhookUrl": f"{hook.url}/hook", "connectionMode": "device"}},
            {"id": "dst_mp", "name": "Mixpanel (cloud mode)", "enabled": True,
             "destinationDefinition": {"name": "MP", "displayName": "Mixpanel"},
             "config": {"token": "mp-token", "connectionMode": "cloud"}},
        ],
    }]}  # fmt: skip
    try:
        with DevServer(workspace=workspace) as server:
            client = Client(server.write_key, server.url, control_plane_url=server.url,
                            config_cache_path=tmp_path)  # fmt: skip
            ids = [
                client.identify("u1", {"plan": "pro"}),
                client.track("u1", "Order Completed", {"revenue": 25.0}),
                client.page("u1", "Docs", "Intro"),
            ]
            assert client.flush(timeout=20)
            status = {s["key"]: s for s in client.integrations_status()}
            client.shutdown()
            stored = [e["messageId"] for e in server.events()]
    finally:
        amplitude_api.stop()
        hook.stop()

    assert stored == ids  # the data plane copy, each with its messageId
    assert hook.message_ids() == ids  # the webhook got the same messages, same ids
    amplitude_events = [e for r in amplitude_api.requests for e in r.json["events"]]
    insert_ids = {e["insert_id"] for e in amplitude_events}
    assert set(ids) <= insert_ids  # one event per call carries its messageId as insert_id...
    assert all(any(i.startswith(m) for m in ids) for i in insert_ids)  # ...extra ones derive it
    tracked = next(e for e in amplitude_events if e["event_type"] == "Order Completed")
    assert (tracked["user_id"], tracked["insert_id"]) == ("u1", ids[1])
    assert status["amplitude"]["active"]
    assert status["webhook"]["active"]
    assert status["amplitude"]["counters"]["handled"] == 3
    assert status["webhook"]["counters"]["handled"] == 3
    assert status["mixpanel"]["enabled_by_config"] is False  # cloud mode is the data plane's
