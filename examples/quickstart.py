"""Quickstart: send each of the six calls and see what the data plane received.

Run it as it is: with no ANALYTICS_SDK_DATA_PLANE_URL set, it starts a tiny data plane of its
own on 127.0.0.1 (no account, no network) and prints what arrived. Point it at a real
RudderStack or Segment-compatible data plane by setting ANALYTICS_SDK_WRITE_KEY and
ANALYTICS_SDK_DATA_PLANE_URL.
"""

from __future__ import annotations

import gzip
import json
import os
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from analytics_sdk import AnalyticsError, Client

received: list[dict[str, Any]] = []


class LocalDataPlane(BaseHTTPRequestHandler):
    """Accepts POST /v1/batch like a data plane does, and keeps the events in memory."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        received.extend(json.loads(body)["batch"])
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def report(error: AnalyticsError, messages: list[dict[str, Any]]) -> None:
    print(f"not delivered ({error.reason}): {error} [{len(messages)} message(s)]")


def main() -> None:
    url = os.environ.get("ANALYTICS_SDK_DATA_PLANE_URL")
    server = None
    if url is None:
        server = ThreadingHTTPServer(("127.0.0.1", 0), LocalDataPlane)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        print(f"no data plane configured: started a local one at {url}")
    write_key = os.environ.get("ANALYTICS_SDK_WRITE_KEY", "quickstart-write-key")

    with Client(write_key, url, on_error=report) as client:
        client.identify("user-42", {"name": "Ada", "plan": "pro"})
        client.track("user-42", "Order Completed", {"order_id": "A-1", "revenue": Decimal("25.50")})
        client.page("user-42", "Docs", "Quickstart", {"path": "/docs/quickstart"})
        client.screen("user-42", "Settings", "Notifications")
        client.group("user-42", "acme", {"name": "Acme Inc.", "employees": 120})
        client.alias("anonymous-7", "user-42")
        client.track(event="Viewed Pricing")  # no ids: the client's anonymousId is used
        print("flushed:", client.flush(timeout=10))
        stats = client.stats()
    print(f"accepted {stats.accepted}, delivered {stats.delivered}, failed {stats.failed}")

    if server is not None:
        print(f"\nthe local data plane stored {len(received)} events:")
        for event in received:
            who = event.get("userId") or f"anonymous {event.get('anonymousId')}"
            what = event.get("event") or event.get("name") or event.get("groupId") or ""
            detail = event.get("properties") or event.get("traits") or {}
            print(f"  {event['type']:<8} {who:<45} {what:<18} {json.dumps(detail)}")
        server.shutdown()


if __name__ == "__main__":
    main()
