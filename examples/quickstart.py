"""Quickstart: send each of the six calls, see what the data plane stored, and device mode at work.

Run it as it is: with no ANALYTICS_SDK_DATA_PLANE_URL set, it starts the embedded dev server
(a local data plane + control plane, `analytics_sdk.devserver`) on 127.0.0.1: no account, no
network. The dev server's source config turns on the Webhook destination in device mode, so
the SDK also delivers each message itself to a small receiver this script starts.

Point it at a real RudderStack or Segment-compatible data plane by setting
ANALYTICS_SDK_WRITE_KEY and ANALYTICS_SDK_DATA_PLANE_URL (and, for device mode,
ANALYTICS_SDK_CONTROL_PLANE_URL).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from contextlib import ExitStack
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from analytics_sdk import AnalyticsError, Client
from analytics_sdk.devserver import DevServer

hooked: list[dict[str, Any]] = []  # what device mode delivered to the webhook receiver


class WebhookReceiver(BaseHTTPRequestHandler):
    """Stands in for a destination: keeps each JSON message posted to it."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        hooked.append(json.loads(body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def report(error: AnalyticsError, messages: list[dict[str, Any]]) -> None:
    print(f"not delivered ({error.reason}): {error} [{len(messages)} message(s)]")


def local_setup(stack: ExitStack) -> tuple[DevServer, str]:
    """A webhook receiver, and a dev server whose source enables it in device mode."""
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), WebhookReceiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    stack.callback(receiver.server_close)
    stack.callback(receiver.shutdown)
    hook_url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    workspace = {
        "sources": [
            {
                "id": "quickstart",
                "name": "Quickstart",
                "writeKey": "quickstart-write-key",
                "destinations": [
                    {
                        "id": "hook",
                        "name": "My webhook",
                        "enabled": True,
                        "destinationDefinition": {"name": "WEBHOOK", "displayName": "Webhook"},
                        "config": {"webhookUrl": hook_url, "connectionMode": "device"},
                    }
                ],
            }
        ]
    }
    server = stack.enter_context(DevServer(workspace=workspace))
    print(f"no data plane configured: started the dev server at {server.url}")
    return server, hook_url


def main() -> None:
    url = os.environ.get("ANALYTICS_SDK_DATA_PLANE_URL")
    with ExitStack() as stack:
        server = None
        options: dict[str, Any] = {"on_error": report}
        if url is None:
            server, _ = local_setup(stack)
            url = server.url
            options["control_plane_url"] = server.url  # the dev server is both planes
            # the source config is cached for offline starts; keep this demo's cache apart
            cache = tempfile.TemporaryDirectory(prefix="analytics-sdk-quickstart-")
            options["config_cache_path"] = stack.enter_context(cache)
        write_key = os.environ.get("ANALYTICS_SDK_WRITE_KEY", "quickstart-write-key")

        with Client(write_key, url, **options) as client:
            client.identify("user-42", {"name": "Ada", "plan": "pro"})
            client.track(
                "user-42", "Order Completed", {"order_id": "A-1", "revenue": Decimal("25.50")}
            )
            client.page("user-42", "Docs", "Quickstart", {"path": "/docs/quickstart"})
            client.screen("user-42", "Settings", "Notifications")
            client.group("user-42", "acme", {"name": "Acme Inc.", "employees": 120})
            client.alias("anonymous-7", "user-42")
            client.track(event="Viewed Pricing")  # no ids: the client's anonymousId is used
            print("flushed:", client.flush(timeout=10))
            stats = client.stats()
            status = {s["key"]: s for s in client.integrations_status()}
        print(f"accepted {stats.accepted}, delivered {stats.delivered}, failed {stats.failed}")

        if server is not None:
            events = server.events()
            print(f"\nthe dev server stored {len(events)} events:")
            for event in events:
                who = event.get("userId") or f"anonymous {event.get('anonymousId')}"
                what = event.get("event") or event.get("name") or event.get("groupId") or ""
                detail = event.get("properties") or event.get("traits") or {}
                print(f"  {event['type']:<8} {who:<45} {what:<18} {json.dumps(detail)}")
            webhook = status.get("webhook", {})
            handled = webhook.get("counters", {}).get("handled", 0)
            print(
                f"\ndevice mode: the dev control plane enabled the Webhook destination "
                f"(active: {webhook.get('active')}); it received {len(hooked)} messages "
                f"directly from this process ({handled} handled)"
            )


if __name__ == "__main__":
    main()
