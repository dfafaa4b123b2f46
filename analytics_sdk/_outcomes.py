"""The documented error path: every lost message is counted by reason, logged and reported."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

from analytics_sdk._logging import RateLimitedLog, logger
from analytics_sdk._serialization import expand
from analytics_sdk.errors import AnalyticsError, Reason
from analytics_sdk.options import ErrorCallback

# Reasons that are the caller's choice, not a failure: counted, logged at DEBUG only.
_QUIET_REASONS = frozenset({Reason.FILTERED})


class Reporter:
    """Counts drops by reason, logs one line per reason per window, calls `on_error`.

    `on_error(error, messages)` runs on the thread that found the failure (the caller's for
    rejected calls, the delivery thread for failed batches), with no lock of ours held, so
    it may call `flush()` or `shutdown()`. Whatever it raises is logged, never propagated.
    """

    def __init__(self, on_error: ErrorCallback | None) -> None:
        self._on_error = on_error
        self._log = RateLimitedLog()
        self._lock = threading.Lock()
        self._dropped: Counter[str] = Counter()
        self._callback_failures = 0
        self._local = threading.local()  # .active: this thread is inside on_error

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._log = RateLimitedLog()
        self._dropped = Counter()
        self._local = threading.local()

    def in_callback(self) -> bool:
        """True on a thread that is running on_error: flush/shutdown must not wait there."""
        return bool(getattr(self._local, "active", False))

    def dropped(self) -> dict[str, int]:
        with self._lock:
            return dict(self._dropped)

    def report(
        self,
        error: AnalyticsError,
        messages: Sequence[bytes | dict[str, Any]],
        count: int | None = None,
        what: str = "",
    ) -> None:
        """Count `count` (default: len(messages)) under `error.reason`, log, call on_error."""
        count = len(messages) if count is None else count
        with self._lock:
            self._dropped[error.reason] += count
        if error.reason in _QUIET_REASONS:
            logger.debug("dropped %d message(s) (%s): %s", count, error.reason, error)
        else:
            self._log.error(
                error.reason,
                "dropped %d message(s)%s [%s]: %s",
                count,
                f" of a {what} call" if what else "",
                error.reason,
                error,
            )
        if self._on_error is not None:
            self._call_on_error(error, messages)

    def _call_on_error(
        self, error: AnalyticsError, messages: Sequence[bytes | dict[str, Any]]
    ) -> None:
        assert self._on_error is not None
        self._local.active = True
        try:
            decoded = [json.loads(expand(m)) if isinstance(m, bytes) else m for m in messages]
            self._on_error(error, decoded)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt) and (
                threading.current_thread() is threading.main_thread()
            ):
                raise  # Ctrl-C belongs to the application
            self._callback_failures += 1
            if self._callback_failures == 1:
                logger.exception("on_error callback raised; it is ignored (logged once)")
            else:
                logger.debug("on_error callback raised again (%d)", self._callback_failures)
        finally:
            self._local.active = False
