"""The interface every device-mode destination wrapper implements (DESIGN 6).

A wrapper is its own import package, registered in the `analytics_sdk.integrations`
entry-point group under its `key`, and looks like this::

    class AcmeOptions(IntegrationOptions):
        api_key: SecretStr               # "apiKey" in the control plane's config
        region: str = "us"

    class AcmeIntegration(Integration[AcmeOptions]):
        key = "acme"                     # entry-point name and extra name
        display_name = "Acme"            # the control plane's destinationDefinition.displayName
        destination_names = frozenset({"ACME"})
        options_model = AcmeOptions

        def setup(self) -> None:
            self._client = acme.Client(self.options.api_key.get_secret_value())

        def track(self, message: TrackMessage) -> None:
            self._client.send(message.distinct_id, message.event, message.properties)

Lifecycle: `__init__` (cheap, no I/O) -> `setup()` once -> handlers, called from the
integration's own worker thread only, one at a time -> `flush()` any number of times ->
`shutdown()` once. Handlers never see the caller's thread: a slow destination never slows
`track()`. A handler that cannot deliver one particular message raises `RejectedMessage`;
anything else it raises is counted as a failure and logged (once with a traceback).
`interrupt()` is the one call from another thread: the factory gave up waiting (a stop or
shutdown deadline passed), so retry waits must end now.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from analytics_sdk._logging import child_logger
from analytics_sdk.models import (
    AliasMessage,
    GroupMessage,
    IdentifyMessage,
    Message,
    PageMessage,
    ScreenMessage,
    TrackMessage,
)

__all__ = [
    "Integration",
    "IntegrationContext",
    "IntegrationOptions",
    "Rejected",
    "RejectedMessage",
    "blank_is_unset",
    "http_url",
]


class IntegrationOptions(BaseModel):
    """Base of each destination's settings, as the control plane sends them.

    Field names are snake_case; the control plane's camelCase keys are accepted too
    (`api_key` or `apiKey`). Unknown keys are ignored (the control plane adds settings
    before wrappers know them), the model is frozen, and secrets should be `SecretStr`.
    """

    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        hide_input_in_errors=True,  # str(ValidationError) would echo a rejected secret
    )


def http_url(value: str) -> str:
    """For an options validator: `value` if it is an http:// or https:// URL with a host."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


def blank_is_unset(value: Any) -> Any:
    """For a `mode="before"` options validator: the control plane sends "" (or spaces) for a
    text box left empty; that means unset (None), not an empty setting."""
    return None if isinstance(value, str) and not value.strip() else value


OptionsT = TypeVar("OptionsT", bound=IntegrationOptions)


@dataclass(frozen=True)
class IntegrationContext:
    """What the factory tells an integration about where it runs.

    Attributes:
        logger: `analytics_sdk.integrations.<key>`; log through it, never print.
        anonymous_id: the client's anonymousId, on demand (stateful apps and devices).
        library_version: the analytics-sdk version (for User-Agent headers and the like).
        destination_id: the control plane's id of this destination, when configured there.
    """

    logger: logging.Logger
    anonymous_id: Callable[[], str]
    library_version: str
    destination_id: str | None = None


class RejectedMessage(Exception):  # noqa: N818 - the name DESIGN 6 gives it
    """Raised by a handler for a message the destination cannot take (not retried).

    The message is counted as rejected for this integration and reported through the
    client's `on_error` with `reason`; other messages and integrations are unaffected.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Rejected:
    """One message `handle_batch` could not deliver, and why."""

    message_id: str
    reason: str


class Integration(Generic[OptionsT]):
    """One destination. Handlers default to no-ops: override the calls you support.

    Class attributes every wrapper sets: `key`, `display_name`, `destination_names`,
    `options_model`; optionally `batch_size` (> 1: the factory calls `handle_batch` with up
    to that many messages) and `supported_types` (the calls it handles; the factory does
    not queue the others for it). `supported_types` may also be narrowed per instance in
    `__init__`, from the options (a wrapper whose track support is an option, say).
    """

    key: ClassVar[str]
    display_name: ClassVar[str]
    destination_names: ClassVar[frozenset[str]] = frozenset()
    options_model: ClassVar[type[IntegrationOptions]] = IntegrationOptions
    batch_size: ClassVar[int] = 1
    supported_types: frozenset[str] = frozenset(
        {"identify", "track", "page", "screen", "group", "alias"}
    )

    def __init__(self, options: OptionsT, context: IntegrationContext | None = None) -> None:
        """Keep the options; no I/O here (the factory may build and drop instances).

        An in-code integration (`Client(integrations=[...])`) is built without a context;
        the factory binds one before `setup()`.
        """
        self.options = options
        self.context = context

    @property
    def logger(self) -> logging.Logger:
        """`analytics_sdk.integrations.<key>`: log through it, never print."""
        if self.context is not None:
            return self.context.logger
        return child_logger(f"integrations.{self.key}")

    def setup(self) -> None:
        """Create the destination client. Raise `IntegrationUnavailableError` to opt out."""

    def identify(self, message: IdentifyMessage) -> None:
        """Handle an identify call (default: nothing)."""

    def track(self, message: TrackMessage) -> None:
        """Handle a track call (default: nothing)."""

    def page(self, message: PageMessage) -> None:
        """Handle a page call (default: nothing)."""

    def screen(self, message: ScreenMessage) -> None:
        """Handle a screen call (default: nothing)."""

    def group(self, message: GroupMessage) -> None:
        """Handle a group call (default: nothing)."""

    def alias(self, message: AliasMessage) -> None:
        """Handle an alias call (default: nothing)."""

    def handle(self, message: Message) -> None:
        """Dispatch one message to its handler by type."""
        match message:
            case TrackMessage():
                self.track(message)
            case IdentifyMessage():
                self.identify(message)
            case PageMessage():
                self.page(message)
            case ScreenMessage():
                self.screen(message)
            case GroupMessage():
                self.group(message)
            case AliasMessage():
                self.alias(message)

    def handle_batch(self, messages: Sequence[Message]) -> list[Rejected]:
        """Deliver several messages (batch_size > 1). Default: one by one.

        Returns the messages the destination refused; raising fails the whole batch.
        """
        rejected: list[Rejected] = []
        for message in messages:
            try:
                self.handle(message)
            except RejectedMessage as exc:
                rejected.append(Rejected(message.message_id, exc.reason))
        return rejected

    def flush(self, timeout: float) -> bool:
        """Push buffered data out within `timeout` seconds; False if it could not."""
        return True

    def reset(self) -> None:
        """Forget the current user (the client's `reset()` was called)."""

    def shutdown(self, timeout: float) -> None:
        """Flush and release resources within `timeout` seconds. Called once."""
        self.flush(timeout)

    def interrupt(self) -> None:
        """Give up now: called from another thread when the factory stops waiting for this
        integration (its stop or shutdown overran the deadline). End retry waits and let the
        handler in progress return soon (rejecting what it could not send); must be quick,
        thread-safe, and may come before, during or after any handler. Default: nothing."""
