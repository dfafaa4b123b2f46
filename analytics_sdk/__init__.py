"""analytics-sdk: a Python client for customer event data (RudderStack and Segment compatible).

    from analytics_sdk import Client

    client = Client("WRITE_KEY", "https://your-data-plane.example.com")
    client.track("user-42", "Order Completed", {"order_id": "A-1", "revenue": 25.0})
    client.flush()

Names load on first use, so `import analytics_sdk` stays cheap: pydantic loads with the
client, requests with the first batch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from analytics_sdk._version import __version__
from analytics_sdk.errors import (
    AnalyticsError,
    ConfigurationError,
    DeliveryError,
    IntegrationUnavailableError,
    InvalidMessageError,
    Reason,
)

if TYPE_CHECKING:
    from analytics_sdk._default import (
        alias,
        configure,
        default_client,
        flush,
        group,
        identify,
        page,
        reset,
        screen,
        shutdown,
        track,
    )
    from analytics_sdk.client import Client, Stats
    from analytics_sdk.identity import Identity
    from analytics_sdk.options import ClientOptions

_LAZY = {
    "Client": "analytics_sdk.client",
    "Stats": "analytics_sdk.client",
    "ClientOptions": "analytics_sdk.options",
    "Identity": "analytics_sdk.identity",
    **dict.fromkeys(
        [
            "alias",
            "configure",
            "default_client",
            "flush",
            "group",
            "identify",
            "page",
            "reset",
            "screen",
            "shutdown",
            "track",
        ],
        "analytics_sdk._default",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'analytics_sdk' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AnalyticsError",
    "Client",
    "ClientOptions",
    "ConfigurationError",
    "DeliveryError",
    "Identity",
    "IntegrationUnavailableError",
    "InvalidMessageError",
    "Reason",
    "Stats",
    "__version__",
    "alias",
    "configure",
    "default_client",
    "flush",
    "group",
    "identify",
    "page",
    "reset",
    "screen",
    "shutdown",
    "track",
]
