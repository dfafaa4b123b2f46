"""An AWS-Lambda-style handler: the client outlives invocations, each invocation flushes.

A frozen Lambda sandbox runs no background thread between invocations and may never run
atexit hooks, so an event still queued at the end of an invocation may be lost. Two ways
out, both shown here:

- `flush(timeout)` at the end of each invocation (batches the invocation's events), or
- `Client(..., sync_mode=True)`: each call sends before it returns (simplest, slower).

    python examples/lambda_handler.py    # three simulated invocations against the dev server
"""

from __future__ import annotations

import os
from typing import Any

from analytics_sdk import Client

_client: Client | None = None


def client() -> Client:
    """Created on the first invocation, reused by the warm sandbox's later ones."""
    global _client
    if _client is None:
        _client = Client(shutdown_timeout=2.0)  # ANALYTICS_SDK_WRITE_KEY / _DATA_PLANE_URL
    return _client


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    analytics = client()
    user = str(event.get("user", "anonymous"))
    analytics.track(user, "Invocation Started", {"path": event.get("path")})
    result = {"statusCode": 200, "body": f"hello {user}"}
    analytics.track(user, "Invocation Finished", {"status": result["statusCode"]})
    delivered = analytics.flush(timeout=2.0)  # before the sandbox freezes
    result["analyticsDelivered"] = delivered
    return result


def main() -> None:
    from analytics_sdk.devserver import DevServer

    with DevServer() as server:
        os.environ.setdefault("ANALYTICS_SDK_WRITE_KEY", server.write_key)
        os.environ.setdefault("ANALYTICS_SDK_DATA_PLANE_URL", server.url)
        for n in range(3):
            print(handler({"user": f"user-{n}", "path": "/hello"}, None))
        print(f"the dev server stored {len(server.events())} events")
        client().shutdown()


if __name__ == "__main__":
    main()
