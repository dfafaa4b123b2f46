"""Who the process speaks for: the anonymousId, and the remembered user of stateful clients."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

from analytics_sdk._files import write_private
from analytics_sdk._logging import logger

__all__ = ["Identity"]


class Identity:
    """The anonymousId (a uuid4, created on first use) and, when stateful, the known user.

    With `path`, the state is a JSON file written atomically with mode 0600, so the
    anonymousId survives restarts like a device id or a cookie. The file is read once, here,
    and written only when the state changes (never on track()).
    """

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._anonymous_id: str | None = None
        self._user_id: str | None = None
        self._traits: dict[str, Any] = {}
        if path is not None:
            self._load(path)

    def after_fork(self) -> None:
        """In a forked child: the lock may be held by a thread that is not there."""
        self._lock = threading.Lock()

    @property
    def anonymous_id(self) -> str:
        """The anonymousId, created (and persisted, with a path) on first use."""
        current = self._anonymous_id
        if current is not None:
            return current
        with self._lock:
            if self._anonymous_id is None:
                self._anonymous_id = str(uuid.uuid4())
                self._save_locked()
            return self._anonymous_id

    @property
    def user_id(self) -> str | None:
        """The user a stateful client remembers from identify() or alias(); else None."""
        return self._user_id

    @property
    def traits(self) -> dict[str, Any]:
        """A copy of the remembered traits (JSON values)."""
        with self._lock:
            return dict(self._traits)

    def remember(self, user_id: str, traits: dict[str, Any] | None = None) -> None:
        """Remember `user_id`; merge `traits` (a new user starts from no traits)."""
        if traits:
            # A deep copy: later changes to the caller's nested dicts must not leak into
            # the next message's context.traits (traits are JSON values already).
            traits = json.loads(json.dumps(traits))
        with self._lock:
            if user_id != self._user_id:
                self._traits = {}
            changed = user_id != self._user_id or bool(traits)
            self._user_id = user_id
            if traits:
                self._traits.update(traits)
            if changed:
                self._save_locked()

    def reset(self) -> None:
        """Forget the user and traits; the next anonymousId is a new one."""
        with self._lock:
            self._user_id = None
            self._traits = {}
            self._anonymous_id = str(uuid.uuid4())
            self._save_locked()

    def _load(self, path: Path) -> None:
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:  # ValueError: not UTF-8 at all
            logger.warning("cannot read identity file (%s); starting a new identity", exc)
            return
        try:
            state = json.loads(raw)
            anonymous_id = state.get("anonymousId")
            user_id = state.get("userId")
            traits = state.get("traits") or {}
            if not isinstance(anonymous_id, str) or not anonymous_id:
                raise ValueError("anonymousId missing")
            if user_id is not None and not isinstance(user_id, str):
                raise ValueError("userId is not a string")
            if not isinstance(traits, dict):
                raise ValueError("traits is not an object")
        except (ValueError, AttributeError) as exc:
            logger.warning("identity file is malformed (%s); starting a new identity", exc)
            return
        self._anonymous_id, self._user_id, self._traits = anonymous_id, user_id, traits

    def _save_locked(self) -> None:
        path = self._path
        if path is None:
            return
        state = {"anonymousId": self._anonymous_id, "userId": self._user_id, "traits": self._traits}
        try:
            write_private(path, json.dumps(state).encode("utf-8"))
        except OSError as exc:
            # The identity still works in memory; losing persistence must not break calls.
            logger.warning("cannot write identity file (%s); the anonymousId lives in memory", exc)
