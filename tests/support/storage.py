"""Helpers for storage_path tests: read a queue file, and send what it holds."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from analytics_sdk import Client
from analytics_sdk.client import Stats


def rows_in(path: Path) -> list[dict[str, Any]]:
    """The messages in a queue file no client has open, oldest first."""
    db = sqlite3.connect(path)  # closed at once: an open reader would keep the file locked
    try:
        bodies = db.execute("SELECT body FROM analytics_sdk_queue_v1 ORDER BY id").fetchall()
    finally:
        db.close()
    return [json.loads(body) for (body,) in bodies]


def send_leftovers(url: str, path: Path, timeout: float = 20.0) -> Stats:
    """A new client on `path` (the next run): flush what it found, shut down, its stats.

    Asserts that the flush settled everything within `timeout` seconds.
    """
    client = Client("wk_test_key", url, storage_path=path)
    try:
        assert client.flush(timeout=timeout) is True
    finally:
        client.shutdown(timeout=2)
    return client.stats()
