"""Uses the whole public API the way an application would; `mypy --strict` checks this file.

If a public signature loses its types, or an option name is misspelled here, mypy fails.
"""

from __future__ import annotations

from typing import Any

import analytics_sdk
from analytics_sdk import AnalyticsError, Client, DeliveryError, InvalidMessageError, Stats


def on_error(error: AnalyticsError, messages: list[dict[str, Any]]) -> None:
    if isinstance(error, DeliveryError):
        print(error.reason, error.status, error.count, len(messages))  # noqa: T201


def drop_internal(message: dict[str, Any]) -> dict[str, Any] | None:
    return None if message.get("event") == "Internal" else message


def use_everything(url: str) -> Stats:
    client = Client("wk", url, flush_at=50, flush_interval=1.0, on_error=on_error,
                    middleware=[drop_internal], gzip=True, timeout=5.0, max_retries=3)  # fmt: skip
    ids: list[str | None] = [
        client.identify("u1", {"plan": "pro"}),
        client.track("u1", "Order Completed", {"revenue": 25.0}),
        client.page("u1", "Docs", "Install", {"path": "/install"}),
        client.screen("u1", None, "Settings"),
        client.group("u1", "g1", {"name": "Acme"}),
        client.alias("anon-1", "u1"),
    ]
    try:
        Client("wk", url, strict=True).track("u1", "")
    except InvalidMessageError as exc:
        print(exc.field, exc.reason)  # noqa: T201
    delivered: bool = client.flush(timeout=2.0)
    anonymous_id: str = client.anonymous_id
    client.reset()
    with Client("wk", url, sync_mode=True) as other:
        other.track(user_id=0, event="Zero")
    analytics_sdk.configure("wk", url)
    module_id: str | None = analytics_sdk.track("u1", "From Module")
    analytics_sdk.flush()
    print(ids, delivered, anonymous_id, module_id)  # noqa: T201
    stats = client.stats()
    client.shutdown()
    return stats
