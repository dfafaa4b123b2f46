"""The exceptions analytics_sdk raises or reports, and secret-safe validation messages.

    AnalyticsError                      every error of the SDK; `.reason` is its stats() key
    ├── ConfigurationError              bad Client options (raised at construction)
    ├── InvalidMessageError (ValueError) a call's arguments are invalid, too large or not JSON
    ├── DeliveryError                   accepted messages that could not be delivered
    └── IntegrationUnavailableError     a destination SDK is missing or unusable

Only `ConfigurationError` (and `InvalidMessageError` with `strict=True`) is raised into
application code. Everything else is reported: counted under its `reason` in
`Client.stats()`, logged, and passed to the `on_error(error, messages)` callback.
No message of these exceptions ever contains the write key or a destination secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "AnalyticsError",
    "ConfigurationError",
    "DeliveryError",
    "IntegrationUnavailableError",
    "InvalidMessageError",
    "Reason",
]


class Reason:
    """The reasons a message can end undelivered: the keys of `stats().dropped`."""

    INVALID_INPUT = "invalid_input"  # a call's arguments broke a rule (field named)
    TOO_LARGE = "too_large"  # over max_message_bytes, or a 413 for a single message
    SERIALIZATION_ERROR = "serialization_error"  # a value that has no JSON form
    QUEUE_FULL = "queue_full"  # max_queue_size or max_queue_bytes reached
    SHUTDOWN = "shutdown"  # called after shutdown(), or left over when its budget ran out
    MIDDLEWARE_ERROR = "middleware_error"  # a middleware raised or returned a non-dict
    FILTERED = "filtered"  # a middleware returned None (on purpose; not an error)
    RETRIES_EXHAUSTED = "retries_exhausted"  # 408/429/5xx/network errors past max_retries
    REJECTED_4XX = "rejected_4xx"  # the data plane refused it (400, 401, 403, 404, 422...)
    REQUEST_ERROR = "request_error"  # no request could be made (malformed URL, proxy scheme)
    INTERNAL_ERROR = "internal_error"  # a bug of ours, caught so delivery goes on
    REJECTED_BY_INTEGRATION = "rejected_by_integration"  # a device-mode wrapper refused it
    SOURCE_DISABLED = "source_disabled"  # the source config says the source is disabled
    STORAGE_ERROR = "storage_error"  # storage_path could not be written (disk full, I/O)


class AnalyticsError(Exception):
    """Base class of every analytics_sdk error."""

    reason: ClassVar[str] = Reason.INTERNAL_ERROR


class ConfigurationError(AnalyticsError):
    """`Client(...)` got options it cannot work with; the message names each bad field."""


class InvalidMessageError(AnalyticsError, ValueError):
    """A call was rejected: which field, what was wrong and, where one applies, the limit.

    Attributes:
        field: the argument or key path at fault (`"properties.price"`), or None.
        reason: `invalid_input`, `too_large` or `serialization_error`.
    """

    reason: str  # type: ignore[misc]  # per instance here, a class constant elsewhere

    def __init__(
        self, message: str, *, field: str | None = None, reason: str = Reason.INVALID_INPUT
    ) -> None:
        super().__init__(message)
        self.field = field
        self.reason = reason


class DeliveryError(AnalyticsError):
    """Accepted messages that were not delivered, with why.

    Attributes:
        reason: one of `Reason` (`retries_exhausted`, `rejected_4xx`, `queue_full`, ...).
        status: the data plane's HTTP status, when it answered; else None.
        count: how many messages this error is about.
    """

    reason: str  # type: ignore[misc]

    def __init__(
        self, message: str, *, reason: str, status: int | None = None, count: int = 1
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.count = count


class IntegrationUnavailableError(AnalyticsError):
    """A destination SDK is not installed or not usable; the message has the pip line."""


def describe(exc: ValidationError) -> str:
    """One clause per bad field, without echoing the rejected input (it may be a secret)."""
    problems = (
        f"{'.'.join(map(str, err['loc'])) or '<options>'}: {err['msg']}"
        for err in exc.errors(include_input=False, include_url=False, include_context=False)
    )
    return "; ".join(problems)
