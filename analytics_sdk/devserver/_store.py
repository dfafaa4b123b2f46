"""The dev server's event store: SQLite (WAL), one row per (source, messageId)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["EventStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    source_id    TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    type         TEXT NOT NULL,
    user_id      TEXT,
    anonymous_id TEXT,
    received_at  TEXT NOT NULL,
    payload      TEXT NOT NULL,
    UNIQUE (source_id, message_id)
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id);
"""


class EventStore:
    """Thread-safe: one connection behind a lock, one transaction per request.

    A request's messages are committed before the server answers it, so whatever the
    server acknowledged survives a stop (or a crash, with a file database).
    """

    def __init__(self, path: str = ":memory:") -> None:
        self._lock = threading.Lock()
        self._stored = threading.Condition(self._lock)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at each checkpoint
        self._db.executescript(_SCHEMA)
        self._count: int = self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def insert(self, source_id: str, messages: Sequence[dict[str, Any]]) -> list[bool]:
        """Store messages (each already carries receivedAt); True where it was new."""
        fresh: list[bool] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for message in messages:
                    cursor = self._db.execute(
                        "INSERT OR IGNORE INTO events (source_id, message_id, type, user_id,"
                        " anonymous_id, received_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            source_id,
                            str(message["messageId"]),
                            message["type"],
                            _text(message.get("userId")),
                            _text(message.get("anonymousId")),
                            message["receivedAt"],
                            json.dumps(message, separators=(",", ":"), ensure_ascii=False),
                        ),
                    )
                    fresh.append(cursor.rowcount == 1)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count += sum(fresh)
            self._stored.notify_all()
        return fresh

    def query(
        self,
        *,
        limit: int = 100,
        type: str | None = None,
        user_id: str | None = None,
        source_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """The newest `limit` matching events, oldest first, as stored (with receivedAt)."""
        clauses, values = [], []
        for column, value in (("type", type), ("user_id", user_id), ("source_id", source_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                values.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT payload FROM events {where} ORDER BY seq DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*values, limit)).fetchall()
        return [json.loads(row[0]) for row in reversed(rows)]

    def count(self) -> int:
        with self._lock:
            return self._count

    def wait_for(self, count: int, timeout: float) -> bool:
        """Block until at least `count` events are stored, or `timeout` seconds pass."""
        with self._stored:
            return self._stored.wait_for(lambda: self._count >= count, timeout)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
