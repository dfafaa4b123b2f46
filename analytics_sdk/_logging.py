"""The "analytics_sdk" logger, the secret-redacting filter and rate-limited error lines."""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger("analytics_sdk")
# A library never configures logging for the application: no handler, no level, no
# basicConfig. Deliberately no NullHandler either: in an application that configured no
# logging at all, Python's last-resort handler then prints our WARNING and ERROR lines to
# stderr, so lost events are never silent (they are rate-limited, so never a flood).

_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
# Longest first: a secret that contains another (a "key:secret" pair) is masked whole.
_MASK_ORDER: tuple[str, ...] = ()


class _RedactSecrets(logging.Filter):
    """Second line of defence: we never log secrets, but a record that would is masked.

    The message, the traceback (an exception's text may quote a wrapper's API key) and the
    stack are all checked. A traceback with a secret is kept as masked text only: `exc_info`
    is dropped, so no handler can format the exception anew and print the secret.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not _SECRETS:
            return True
        text = record.getMessage()
        masked = mask_secrets(text)
        if masked != text:
            record.msg, record.args = masked, None
        trace = record.exc_text
        if not trace and record.exc_info and _mentions_secret(record.exc_info[1]):
            # Formatted only then: a filter runs before any handler's level, so formatting
            # every traceback would cost even for records nobody prints.
            trace = _TRACEBACKS.formatException(record.exc_info)
        if trace:
            masked = mask_secrets(trace)
            if masked != trace:
                record.exc_info, record.exc_text = None, masked
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


_TRACEBACKS = logging.Formatter()  # formats exc_info exactly as a handler's formatter would


_REDACT = _RedactSecrets()
logger.addFilter(_REDACT)


def child_logger(name: str) -> logging.Logger:
    """`analytics_sdk.<name>`, masking secrets too: a parent logger's filters do not apply to
    records its children log (they go straight to the handlers)."""
    child = logging.getLogger(f"analytics_sdk.{name}")
    if _REDACT not in child.filters:
        child.addFilter(_REDACT)
    return child


def _mentions_secret(error: BaseException | None) -> bool:
    """True if the text of `error`, its notes, causes, contexts or group members holds a
    registered secret: the only parts of a traceback that carry values."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        try:
            text = " ".join([str(current), *map(str, getattr(current, "__notes__", ()) or ())])
        except Exception:  # noqa: BLE001 - a __str__ that raises: the formatter copes with it
            text = ""
        if mask_secrets(text) != text:
            return True
        pending += [current.__cause__, current.__context__]
        pending += list(getattr(current, "exceptions", ()) or ())
    return False


def mask_secrets(text: str) -> str:
    """`text` with every registered secret replaced (for status texts and tracebacks)."""
    for secret in _MASK_ORDER:
        if secret in text:
            text = text.replace(secret, "**********")
    return text


def register_secret(secret: str) -> None:
    """Mask `secret` in every record the analytics_sdk logger emits from now on."""
    global _MASK_ORDER
    if len(secret) >= 4:  # masking "a" would shred every line
        with _SECRETS_LOCK:
            if secret not in _SECRETS:
                _SECRETS.add(secret)
                _MASK_ORDER = tuple(sorted(_SECRETS, key=len, reverse=True))


class RateLimitedLog:
    """Logs the first failure of each reason at once, then one line per window with a count.

    An outage produces thousands of identical failures; the log keeps one line per reason
    per `window` seconds (LESSONS R7.3, R16.4) and says how many it held back.
    """

    def __init__(self, window: float = 10.0) -> None:
        self._window = window
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held_back: dict[str, int] = {}

    def error(self, reason: str, msg: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(reason)
            if last is not None and now - last < self._window:
                self._held_back[reason] = self._held_back.get(reason, 0) + 1
                return
            self._last[reason] = now
            held = self._held_back.pop(reason, 0)
        if held:
            msg += " (%d more like this in the last %.0f s)"
            args = (*args, held, self._window)
        logger.error(msg, *args, exc_info=exc_info)

    def reset(self) -> None:
        with self._lock:
            self._last.clear()
            self._held_back.clear()
