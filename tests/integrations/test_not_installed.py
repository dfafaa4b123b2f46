"""Each SDK-backed wrapper without its destination SDK: listed as not installed, with its
pip line, and the client works normally (cloud delivery, the other integrations)."""

from __future__ import annotations

import sys

import pytest
from conftest import MakeClient
from support.servers import DataPlane

from analytics_sdk._factory import discover

SDKS = {"amplitude": "amplitude", "mixpanel": "mixpanel", "posthog": "posthog", "redis": "redis"}
DESTINATIONS = {
    "amplitude": ("AM", "Amplitude", {"apiKey": "am-key-123"}),
    "mixpanel": ("MP", "Mixpanel", {"token": "mp-token-123"}),
    "posthog": ("POSTHOG", "PostHog", {"teamApiKey": "phc_key_123"}),
    "redis": ("REDIS", "Redis", {"address": "127.0.0.1:9"}),
}


def hide_sdk(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    """As if `pip install 'analytics-sdk[<key>]'` had not been run: its SDK cannot import."""
    sdk = SDKS[key]
    for name in list(sys.modules):
        if name == sdk or name.startswith(f"{sdk}.") or name.startswith(f"analytics_sdk_{key}"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, sdk, None)  # None in sys.modules: ImportError on import


@pytest.mark.parametrize("key", sorted(SDKS))
def test_discovery_reports_the_pip_line(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    hide_sdk(monkeypatch, key)
    found = discover()
    assert found[key].installed is False
    assert found[key].hint == f"pip install 'analytics-sdk[{key}]'"
    assert found[key].error is None  # not installed is not broken
    assert found["webhook"].installed is True  # the others are unaffected


@pytest.mark.parametrize("key", sorted(SDKS))
def test_the_client_works_normally_without_it(
    monkeypatch: pytest.MonkeyPatch, make_client: MakeClient, data_plane: DataPlane, key: str
) -> None:
    hide_sdk(monkeypatch, key)
    name, display, config = DESTINATIONS[key]
    document = {"source": {"id": "src", "destinations": [{
        "id": f"dst_{key}", "enabled": True,
        "destinationDefinition": {"name": name, "displayName": display},
        "config": {**config, "connectionMode": "device"},
    }]}}  # fmt: skip
    client = make_client(source_config=document)
    message_id = client.track("u1", "Still Delivered")
    assert client.flush(timeout=10)
    assert data_plane.message_ids() == [message_id]
    status = {s["key"]: s for s in client.integrations_status()}[key]
    assert (status["installed"], status["enabled_by_config"], status["active"]) == (
        False, True, False,
    )  # fmt: skip
    assert status["hint"] == f"pip install 'analytics-sdk[{key}]'"
    assert client.stats().dropped == {}
