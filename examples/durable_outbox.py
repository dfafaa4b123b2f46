"""A durable outbox: events survive a crash that happens while the data plane is down.

    python examples/durable_outbox.py
    python examples/durable_outbox.py --storage /var/lib/myapp/analytics.sqlite

With `storage_path`, each call returns only once its event is committed to a SQLite file.
The story, in two processes:

1. a worker records 25 orders while the data plane cannot be reached, then crashes
   (`os._exit`: no exit hook, no flush, as with kill -9 or the OOM killer);
2. the next process opens a client on the same file: it finds the 25 events, sends them at
   once, and the dev server stores them.

Without ANALYTICS_SDK_DATA_PLANE_URL the second step uses the embedded dev server.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from analytics_sdk import Client
from analytics_sdk.devserver import DevServer

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the request fails
ORDERS = 25


def crash_while_offline(storage: Path) -> None:
    """Step 1 (a child process): track with the data plane down, then die abruptly."""
    client = Client("wk_outbox_demo", UNREACHABLE, storage_path=storage)
    for n in range(ORDERS):
        client.track(f"customer-{n % 5}", "Order Completed", {"order_id": f"A-{n}", "total": 9.5})
    print(f"worker: {client.stats().accepted} orders accepted, all in {storage.name}; crashing")
    sys.stdout.flush()
    os._exit(1)  # a crash: no exit flush runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="durable_outbox")
    parser.add_argument("--storage", type=Path, help="the queue file (default: a temp dir)")
    parser.add_argument("--crash", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    storage = args.storage or Path(tempfile.mkdtemp(prefix="outbox-")) / "analytics.sqlite"
    if args.crash:
        crash_while_offline(storage)

    worker = subprocess.run(
        [sys.executable, __file__, "--crash", "--storage", str(storage)], check=False
    )
    print(f"worker exited with status {worker.returncode}")

    url = os.environ.get("ANALYTICS_SDK_DATA_PLANE_URL")
    server = None if url else DevServer().start()
    client = Client(
        os.environ.get("ANALYTICS_SDK_WRITE_KEY") or (server.write_key if server else None),
        url or (server.url if server else None),
        storage_path=storage,
    )
    print(f"restart: found {client.stats().recovered} events the worker left; sending them")
    delivered = client.flush(timeout=10)
    print(f"delivered: {delivered} ({client.stats().delivered} events)")
    client.shutdown()
    if server is not None:
        orders = [e for e in server.events() if e.get("event") == "Order Completed"]
        print(f"the dev server stored {len(orders)} orders")
        server.stop()
    return 0 if delivered else 1


if __name__ == "__main__":
    raise SystemExit(main())
