"""Event Log: a device-mode destination that appends one JSON line per message to a file.

An example of a third-party integration for analytics-sdk, in its own package and found
through the `analytics_sdk.integrations` entry point `eventlog`. It uses the standard
library only. Each line is a small JSON record (type, ids, timestamp and the call's own
fields), optionally signed with HMAC-SHA256 so a reader can tell the file was not edited.

Writes are batched: the factory hands it up to `batch_size` messages at a time and each
batch is one `write()` to a file opened in append mode, so lines from several processes
never interleave mid-line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import Field, SecretStr

from analytics_sdk.errors import IntegrationUnavailableError
from analytics_sdk.integration import Integration, IntegrationOptions, Rejected, RejectedMessage
from analytics_sdk.models import (
    AliasMessage,
    GroupMessage,
    IdentifyMessage,
    Message,
    PageMessage,
    ScreenMessage,
    TrackMessage,
)

__all__ = ["EventLogIntegration", "EventLogOptions", "verify_line"]

__version__ = "0.1.0"


class EventLogOptions(IntegrationOptions):
    """The destination's settings, as the control plane sends them (camelCase there)."""

    path: str = Field(min_length=1)  # "path": the JSON-lines file (created if missing)
    signing_key: SecretStr | None = None  # "signingKey": adds an HMAC-SHA256 "signature"
    include_context: bool = False  # "includeContext": copy the message context into the line
    max_line_bytes: int = Field(default=32_768, ge=256, le=1_048_576)  # "maxLineBytes"
    buffer_lines: int = Field(default=100, ge=1, le=10_000)  # "bufferLines": kept before a write
    fsync: bool = False  # "fsync": force each write to disk (slower, survives power loss)


class EventLogIntegration(Integration[EventLogOptions]):
    """Appends every call to a JSON-lines file; refuses lines it must not write."""

    key = "eventlog"
    display_name = "Event Log"  # destinationDefinition.displayName in the sourceConfig
    destination_names = frozenset({"EVENT_LOG"})  # destinationDefinition.name
    options_model = EventLogOptions
    batch_size = 50

    def setup(self) -> None:
        path = Path(self.options.path).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file: BinaryIO | None = path.open("ab")  # open until shutdown()
        except OSError as exc:
            raise IntegrationUnavailableError(
                f"Event Log cannot open its file {str(path)!r}: {exc.strerror}"
            ) from None
        secret = self.options.signing_key
        self._key = secret.get_secret_value().encode() if secret is not None else None
        self._pending: list[bytes] = []
        self.lines_written = 0
        self.lines_lost = 0  # lines a failed write dropped (each failure is logged)

    # -- the six calls -------------------------------------------------------------------------

    def identify(self, message: IdentifyMessage) -> None:
        self._append(message, traits=message.to_wire().get("traits", {}))

    def track(self, message: TrackMessage) -> None:
        event = message.event.strip()
        if not event:
            raise RejectedMessage("a track call needs a non-blank event name")
        self._append(message, event=event, properties=message.to_wire().get("properties", {}))

    def page(self, message: PageMessage) -> None:
        wire = message.to_wire()
        self._append(message, name=message.name, category=message.category,
                     properties=wire.get("properties", {}))  # fmt: skip

    def screen(self, message: ScreenMessage) -> None:
        wire = message.to_wire()
        self._append(message, name=message.name, category=message.category,
                     properties=wire.get("properties", {}))  # fmt: skip

    def group(self, message: GroupMessage) -> None:
        self._append(message, groupId=message.group_id, traits=message.to_wire().get("traits", {}))

    def alias(self, message: AliasMessage) -> None:
        self._append(message, previousId=message.previous_id)

    def handle_batch(self, messages: Sequence[Message]) -> list[Rejected]:
        """One write per batch; if it fails, the batch's lines are reported as rejected."""
        rejected = super().handle_batch(messages)
        if not self._write():
            refused = {r.message_id for r in rejected}
            reason = "the event log file could not be written"
            rejected += [Rejected(m.message_id, reason) for m in messages
                         if m.message_id not in refused]  # fmt: skip
        return rejected

    # -- lifecycle -----------------------------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        # A local write cannot be given a timeout; it is one write() of at most
        # buffer_lines * max_line_bytes bytes, which is quick unless the disk is stuck.
        return self._write()

    def shutdown(self, timeout: float) -> None:
        self._write()
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError as exc:
                self.logger.warning("Event Log could not close its file: %s", exc.strerror)

    # -- internals -----------------------------------------------------------------------------

    def _append(self, message: Message, **fields: Any) -> None:
        if self._file is None:
            raise RejectedMessage("the event log is shut down")
        wire = message.to_wire()
        record: dict[str, Any] = {
            "type": message.type,
            "messageId": message.message_id,
            "userId": message.user_id,
            "anonymousId": message.anonymous_id,
            "timestamp": wire.get("timestamp") or wire.get("originalTimestamp"),
            **fields,
        }
        if self.options.include_context:
            record["context"] = wire.get("context", {})
        if self._key is not None:
            record["signature"] = _sign(self._key, record)
        line = _canonical(record) + b"\n"
        if len(line) > self.options.max_line_bytes:
            raise RejectedMessage(
                f"the line would be {len(line)} bytes, over maxLineBytes "
                f"({self.options.max_line_bytes})"
            )
        self._pending.append(line)
        if len(self._pending) >= self.options.buffer_lines:
            self._write()

    def _write(self) -> bool:
        """Write what is pending; on failure drop it (never retried), log, return False."""
        if not self._pending:
            return True
        data, count = b"".join(self._pending), len(self._pending)
        self._pending.clear()
        try:
            if self._file is None:
                raise OSError("the file is closed")
            self._file.write(data)
            self._file.flush()
            if self.options.fsync:
                os.fsync(self._file.fileno())
        except OSError as exc:
            self.lines_lost += count
            self.logger.warning("Event Log could not write %d line(s): %s", count, exc)
            return False
        self.lines_written += count
        return True


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _sign(key: bytes, record: dict[str, Any]) -> str:
    return hmac.new(key, _canonical(record), hashlib.sha256).hexdigest()


def verify_line(line: str | bytes, signing_key: str) -> dict[str, Any]:
    """The record of one line, after checking its signature (ValueError if it does not match)."""
    record: dict[str, Any] = json.loads(line)
    signature = record.pop("signature", None)
    expected = _sign(signing_key.encode(), record)
    if not isinstance(signature, str) or not hmac.compare_digest(signature, expected):
        raise ValueError("the line's signature does not match")
    return record
