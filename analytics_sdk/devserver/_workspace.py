"""The dev server's workspace: sources, their write keys and destinations, from one JSON file.

Format (the `source` objects are what `GET /sourceConfig/` serves, as RudderStack does)::

    {"sources": [{"id": "backend", "name": "Backend", "writeKey": "dev-write-key",
                  "enabled": true,
                  "destinations": [{"id": "hook", "enabled": true,
                                    "destinationDefinition": {"name": "WEBHOOK",
                                                              "displayName": "Webhook"},
                                    "config": {"webhookUrl": "http://127.0.0.1:9000/hook",
                                               "connectionMode": "device"}}]}]}
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analytics_sdk._source_config import SourceConfig, SourceConfigError

__all__ = ["DEFAULT_WRITE_KEY", "Workspace", "WorkspaceError"]

DEFAULT_WRITE_KEY = "dev-write-key"


class WorkspaceError(ValueError):
    """The workspace file or document is unusable; the message says where and why."""


@dataclass(frozen=True)
class SourceEntry:
    """One source: its id, whether it takes events, and its sourceConfig document."""

    id: str
    enabled: bool
    document: dict[str, Any]  # {"isHosted": false, "source": {...}}
    etag: str


class Workspace:
    """Sources by write key. Immutable: build a new one to change it (the server swaps it)."""

    def __init__(self, document: dict[str, Any]) -> None:
        """Validate a workspace document.

        Raises:
            WorkspaceError: no sources, a source without a write key, a repeated write key,
                or a source the SDK's own sourceConfig parser refuses (the path is named).
        """
        sources = document.get("sources") if isinstance(document, dict) else None
        if not isinstance(sources, list) or not sources:
            raise WorkspaceError('workspace: "sources" must be a non-empty list')
        self._by_key: dict[str, SourceEntry] = {}
        for index, raw in enumerate(sources):
            where = f"workspace: sources[{index}]"
            if not isinstance(raw, dict):
                raise WorkspaceError(f"{where}: must be an object")
            key = raw.get("writeKey")
            if not isinstance(key, str) or not key:
                raise WorkspaceError(f"{where}.writeKey: must be a non-empty string")
            if key in self._by_key:
                raise WorkspaceError(f"{where}.writeKey: the same key is used by another source")
            served = {"isHosted": False, "source": copy.deepcopy(raw)}
            try:
                parsed = SourceConfig.parse(served)
            except SourceConfigError as exc:
                raise WorkspaceError(f"{where}: {exc}") from None
            body = json.dumps(served, sort_keys=True, separators=(",", ":")).encode()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            self._by_key[key] = SourceEntry(parsed.source.id, parsed.source.enabled, served, etag)

    @classmethod
    def default(cls, write_key: str = DEFAULT_WRITE_KEY) -> Workspace:
        """One enabled source, `dev`, with no destinations."""
        source = {"id": "dev", "name": "Development", "writeKey": write_key, "enabled": True}
        return cls({"sources": [{**source, "destinations": []}]})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Workspace:
        """Read a workspace JSON file (WorkspaceError names the file and the problem)."""
        name = Path(path).name
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise WorkspaceError(f"workspace {name}: cannot read it ({exc.strerror})") from None
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise WorkspaceError(
                f"workspace {name}: not valid JSON ({exc.msg} at line {exc.lineno} "
                f"column {exc.colno})"
            ) from None
        return cls(document)

    def source(self, write_key: str) -> SourceEntry | None:
        return self._by_key.get(write_key)

    @property
    def write_keys(self) -> list[str]:
        return list(self._by_key)
