"""Client: the six spec calls, identity, flush and shutdown (process hooks: _lifecycle.py)."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Mapping
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from analytics_sdk._arguments import as_id, as_text, as_time, as_unicode, invalid
from analytics_sdk._consumer import Consumer, deadline_for
from analytics_sdk._lifecycle import live_clients, warn_if_duplicate
from analytics_sdk._logging import logger, register_secret
from analytics_sdk._outcomes import Reporter
from analytics_sdk._serialization import (
    ALL_INTEGRATIONS,
    LIBRARY,
    LIBRARY_CONTEXT,
    clean,
    dumps,
    now_iso,
    reseed_ids,
    uuid4,
)
from analytics_sdk.errors import (
    AnalyticsError,
    ConfigurationError,
    DeliveryError,
    InvalidMessageError,
    Reason,
)
from analytics_sdk.identity import Identity
from analytics_sdk.options import (
    DEFAULT_FLUSH_TIMEOUT,
    MESSAGE_OVERHEAD_BYTES,
    ClientOptions,
    ClientOptionsKwargs,
)

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self, Unpack

    from analytics_sdk._device_mode import DeviceMode

__all__ = ["Client", "Stats"]

JsonDict = dict[str, Any]
Timestamp = datetime | date | str

_SENT_AT_BYTES = MESSAGE_OVERHEAD_BYTES - 1  # ,"sentAt":"..." added to each message on upload


@dataclasses.dataclass(frozen=True)
class Stats:
    """Counters of one client since it started (or since a fork, in the child).

    `accepted == delivered + failed + discarded + queued` at every moment; calls that were
    rejected at once are in `dropped` only (they were never accepted).

    Attributes:
        accepted: messages that passed validation and entered delivery (every call that
            returned a messageId; in sync_mode also a call that returned None because its
            delivery failed, which is then in `failed` too).
        delivered: messages the data plane acknowledged with a 2xx.
        failed: accepted messages reported undeliverable (their reasons are in `dropped`).
        discarded: accepted messages not sent because `send=False` (or ANALYTICS_SDK_DISABLED).
        queued: accepted messages waiting or in flight.
        retried: HTTP attempts after a failed one.
        dropped: every message lost, by reason: rejected calls and failed messages alike.
        integrations: per-integration counters (device mode; empty until it is enabled).
        recovered: messages an earlier process left in `storage_path`, found at start
            (they are in `accepted` too).
    """

    accepted: int
    delivered: int
    failed: int
    discarded: int
    queued: int
    retried: int
    dropped: dict[str, int]
    integrations: dict[str, dict[str, int]]
    recovered: int = 0


class Client:
    """Validates, queues and delivers the six spec calls to a data plane.

    Calls never block on the network (unless `sync_mode=True`) and never raise for bad
    input (unless `strict=True`): each returns the accepted message's `messageId`, or
    None when the message was rejected, and every rejection is counted in `stats()`,
    logged with its reason, and passed to `on_error`.

    Args:
        write_key: the source's write key (default: ANALYTICS_SDK_WRITE_KEY).
        data_plane_url: the data plane's base URL (default: ANALYTICS_SDK_DATA_PLANE_URL).
        **options: see `ClientOptions` and the README's option table.

    Raises:
        ConfigurationError: an option is invalid; the message names the field and limit.
    """

    def __init__(
        self,
        write_key: str | None = None,
        data_plane_url: str | None = None,
        **options: Unpack[ClientOptionsKwargs],
    ) -> None:
        self._options = opts = ClientOptions.build(write_key, data_plane_url, options)
        register_secret(opts.write_key.get_secret_value())
        try:
            self._base_context = clean(opts.context, "context") if opts.context else None
        except InvalidMessageError as exc:
            raise ConfigurationError(f"invalid client options: {exc}") from None
        self._reporter = Reporter(opts.on_error)
        self._consumer = Consumer(opts, self._reporter, on_fork=self._after_fork)
        try:
            self._identity = Identity(opts.identity_path)
            self._discarded = 0
            self._discarded_lock = threading.Lock()
            self._closed = False
            self._middleware = opts.middleware
            self._device: DeviceMode | None = None
            if opts.integrations or opts.control_plane_url or opts.source_config is not None:
                from analytics_sdk._device_mode import DeviceMode

                self._device = DeviceMode(opts, self._reporter, self._identity_anonymous_id)
        except BaseException:
            self._consumer.close_store()  # the file is free again; its rows stay in it
            raise
        live_clients.add(self)
        warn_if_duplicate(self)
        self._consumer.start()

    def __repr__(self) -> str:
        return (
            f"Client(data_plane_url={self._options.data_plane_url!r}, "
            f"send={self._options.send}, sync_mode={self._options.sync_mode})"
        )

    @property
    def options(self) -> ClientOptions:
        """The validated options (the write key shows as '**********')."""
        return self._options

    @property
    def anonymous_id(self) -> str:
        """This client's anonymousId: created on first use, persisted with identity_path."""
        return self._identity.anonymous_id

    @property
    def user_id(self) -> str | None:
        """The remembered user of a stateful client; None otherwise."""
        return self._identity.user_id

    # -- the six calls -----------------------------------------------------------------------

    def identify(
        self,
        user_id: str | int | None = None,
        traits: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: Timestamp | None = None,
        anonymous_id: str | int | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> str | None:
        """Tie a user to their traits. Traits are also sent as `context.traits`.

        Returns:
            The messageId, or None when the message was rejected (see `stats()`).
        """
        try:
            clean_traits = self._object(traits, "traits")
            message: JsonDict = {"type": "identify", "traits": clean_traits}
            message_id = self._finish(
                message, user_id, anonymous_id, context, timestamp, integrations, message_id
            )
            if message_id is not None and self._options.stateful and "userId" in message:
                self._remember(message["userId"], clean_traits)
            return message_id
        except Exception as exc:  # noqa: BLE001 - public-method guard: bad input never raises (unless strict)
            return self._reject(exc, "identify")

    def track(
        self,
        user_id: str | int | None = None,
        event: str | None = None,
        properties: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: Timestamp | None = None,
        anonymous_id: str | int | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> str | None:
        """Record that a user did something (`event`, with its `properties`).

        Returns:
            The messageId, or None when the message was rejected (see `stats()`).
        """
        try:
            if type(event) is not str or not event:
                if not isinstance(event, str) or not event:
                    raise invalid("event", "is required and must be a non-empty string")
                event = str.__str__(event)  # a StrEnum member: its text
            message: JsonDict = {
                "type": "track",
                "event": as_unicode(event, "event"),
                "properties": self._object(properties, "properties"),
            }
            return self._finish(
                message, user_id, anonymous_id, context, timestamp, integrations, message_id
            )
        except Exception as exc:  # noqa: BLE001 - public-method guard
            return self._reject(exc, "track")

    def page(
        self,
        user_id: str | int | None = None,
        category: str | None = None,
        name: str | None = None,
        properties: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: Timestamp | None = None,
        anonymous_id: str | int | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> str | None:
        """Record a page view (web). Returns the messageId, or None when rejected."""
        return self._view("page", user_id, category, name, properties, context, timestamp,
                          anonymous_id, integrations, message_id)  # fmt: skip

    def screen(
        self,
        user_id: str | int | None = None,
        category: str | None = None,
        name: str | None = None,
        properties: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: Timestamp | None = None,
        anonymous_id: str | int | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> str | None:
        """Record a screen view (apps). Returns the messageId, or None when rejected."""
        return self._view("screen", user_id, category, name, properties, context, timestamp,
                          anonymous_id, integrations, message_id)  # fmt: skip

    def group(
        self,
        user_id: str | int | None = None,
        group_id: str | int | None = None,
        traits: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: Timestamp | None = None,
        anonymous_id: str | int | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> str | None:
        """Tie a user to a group (company, team) and its traits.

        Returns:
            The messageId, or None when the message was rejected (see `stats()`).
        """
        try:
            group = as_id(group_id, "group_id")
            if group is None:
                raise invalid("group_id", "is required (a non-empty string or an int)")
            message: JsonDict = {
                "type": "group",
                "groupId": group,
                "traits": self._object(traits, "traits"),
            }
            return self._finish(
                message, user_id, anonymous_id, context, timestamp, integrations, message_id
            )
        except Exception as exc:  # noqa: BLE001 - public-method guard
            return self._reject(exc, "group")

    def alias(
        self,
        previous_id: str | int | None = None,
        user_id: str | int | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: Timestamp | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> str | None:
        """Merge `previous_id` into `user_id`.

        A stateful client defaults `previous_id` to the remembered user (else to its
        anonymousId) and remembers `user_id` from then on.

        Returns:
            The messageId, or None when the message was rejected (see `stats()`).
        """
        try:
            new_id = as_id(user_id, "user_id")
            if new_id is None:
                raise invalid("user_id", "is required for alias")
            previous = as_id(previous_id, "previous_id")
            if previous is None and self._options.stateful:
                previous = self._identity.user_id or self._identity.anonymous_id
            if previous is None:
                raise invalid("previous_id", "is required for alias")
            message: JsonDict = {"type": "alias", "previousId": previous}
            message_id = self._finish(
                message, new_id, None, context, timestamp, integrations, message_id
            )
            if message_id is not None and self._options.stateful:
                self._remember(new_id, None)
            return message_id
        except Exception as exc:  # noqa: BLE001 - public-method guard
            return self._reject(exc, "alias")

    def _remember(self, user_id: str, traits: JsonDict | None) -> None:
        # The message is accepted already: a failure here must not turn it into None.
        try:
            self._identity.remember(user_id, traits)
        except Exception:  # noqa: BLE001 - identity is a convenience; delivery goes on
            logger.exception("could not remember the stateful identity")

    # -- lifecycle ---------------------------------------------------------------------------

    def flush(self, timeout: float | None = DEFAULT_FLUSH_TIMEOUT) -> bool:
        """Deliver everything accepted before this call, or report it.

        Sends partial batches at once (no flush_interval wait) and waits for batches
        already in flight. Use it at the end of a serverless invocation or a task.

        Args:
            timeout: seconds to wait at most (None: no limit).

        Returns:
            True when every message accepted before the call was delivered or reported;
            False when `timeout` ran out first (delivery goes on in the background).
        """
        deadline = deadline_for(timeout)
        cloud = True if not self._options.send else self._consumer.flush(timeout)
        if self._device is not None:
            far = time.monotonic() + DEFAULT_FLUSH_TIMEOUT  # integrations: bounded even if None
            return self._device.flush(far if deadline is None else deadline) and cloud
        return cloud

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush within `timeout` (default `shutdown_timeout`) and stop. Idempotent.

        Later calls return None, counted under `shutdown`. What cannot be delivered within
        the budget is reported (`on_error`, `stats().dropped["shutdown"]`).

        Returns:
            True when everything accepted was delivered or reported in time.
        """
        return self._shutdown(timeout, at_exit=False)

    def _shutdown(self, timeout: float | None, *, at_exit: bool) -> bool:
        budget = self._options.shutdown_timeout if timeout is None else timeout
        self._closed = True
        devices_done = True
        if self._device is not None:
            devices_done = self._device.shutdown(time.monotonic() + budget)
        if not self._options.send:
            live_clients.discard(self)
            return devices_done
        drained = self._consumer.shutdown(budget, at_exit=at_exit) and devices_done
        if self._consumer.finished():
            # Until then the exit hook keeps it: a shutdown() called from on_error returns
            # at once, and someone must still bound and report the rest.
            live_clients.discard(self)
        return drained

    async def aflush(self, timeout: float | None = DEFAULT_FLUSH_TIMEOUT) -> bool:
        """`flush()` for asyncio code: waits in a worker thread, never on the event loop."""
        import asyncio  # here, not at the top: most users never pay its import time

        return await asyncio.get_running_loop().run_in_executor(None, self.flush, timeout)

    async def ashutdown(self, timeout: float | None = None) -> bool:
        """`shutdown()` for asyncio code (a FastAPI lifespan, say), off the event loop."""
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(None, self.shutdown, timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def reset(self) -> None:
        """Forget the remembered user and traits and start a new anonymousId.

        Device-mode integrations' `reset()` is called too.
        """
        self._identity.reset()
        if self._device is not None:
            self._device.reset()

    def integrations_status(self) -> list[dict[str, Any]]:
        """Every discovered or configured integration: installed or not (with the pip line),
        enabled by the source config, active, options error, counters (handled, failed,
        rejected, dropped). Empty when device mode is off."""
        return [] if self._device is None else self._device.status()

    def stats(self) -> Stats:
        """A snapshot of this client's counters (see `Stats`)."""
        counts = self._consumer.counts()
        return Stats(
            accepted=counts["accepted"] + self._discarded,
            delivered=counts["delivered"],
            failed=counts["failed"],
            discarded=self._discarded,
            queued=counts["queued"],
            retried=counts["retried"],
            dropped=self._reporter.dropped(),
            integrations={} if self._device is None else self._device.counters(),
            recovered=counts["recovered"],
        )

    # -- building messages -------------------------------------------------------------------

    def _view(
        self,
        kind: str,
        user_id: str | int | None,
        category: str | None,
        name: str | None,
        properties: Mapping[str, Any] | None,
        context: Mapping[str, Any] | None,
        timestamp: Timestamp | None,
        anonymous_id: str | int | None,
        integrations: Mapping[str, Any] | None,
        message_id: str | None,
    ) -> str | None:
        try:
            message: JsonDict = {"type": kind}
            if name is not None:
                message["name"] = as_text(name, "name")
            if category is not None:
                message["category"] = as_text(category, "category")
            message["properties"] = self._object(properties, "properties")
            return self._finish(
                message, user_id, anonymous_id, context, timestamp, integrations, message_id
            )
        except Exception as exc:  # noqa: BLE001 - public-method guard
            return self._reject(exc, kind)

    def _object(self, value: Mapping[str, Any] | None, field: str) -> JsonDict:
        if value is None:
            return {}
        if type(value) is not dict and not isinstance(value, Mapping):  # dict: the fast way
            raise invalid(field, f"must be a dict (got {type(value).__name__})")
        cleaned: JsonDict = clean(value, field)
        return cleaned

    def _finish(
        self,
        message: JsonDict,
        user_id: str | int | None,
        anonymous_id: str | int | None,
        context: Mapping[str, Any] | None,
        timestamp: Timestamp | None,
        integrations: Mapping[str, Any] | None,
        message_id: str | None,
    ) -> str | None:
        """Identity, context, ids and times; then middleware, serialization and the queue."""
        opts = self._options
        if self._closed:
            self._reporter.report(
                DeliveryError("the client is shut down", reason=Reason.SHUTDOWN),
                [message],
                what=message["type"],
            )
            return None
        uid = as_id(user_id, "user_id")
        aid = as_id(anonymous_id, "anonymous_id")
        remembered_traits: JsonDict | None = None
        if opts.stateful:
            if uid is None and aid is None and self._identity.user_id is not None:
                uid = self._identity.user_id
                remembered_traits = self._identity.traits
            if aid is None:
                aid = self._identity.anonymous_id
        elif uid is None and aid is None:
            aid = self._identity.anonymous_id
        if uid is not None:
            message["userId"] = uid
        if aid is not None:
            message["anonymousId"] = aid
        if message_id is None:
            message_id = uuid4()
        else:
            message_id = as_id(message_id, "message_id")
            if message_id is None:
                raise invalid("message_id", "must be a non-empty string")
        message["messageId"] = message_id
        message["originalTimestamp"] = now_iso()
        if timestamp is not None:
            message["timestamp"] = as_time(timestamp)
        # Last, in this order: when they are the defaults, the queue stores the message
        # without them and the upload puts them back (see DEFAULT_TAIL).
        message["context"] = self._context(context, message, remembered_traits)
        if integrations is None:
            message["integrations"] = ALL_INTEGRATIONS  # shared: only ever serialized
        else:
            message["integrations"] = self._object(integrations, "integrations")
        message["channel"] = "server"
        if self._middleware:
            kept = self._run_middleware(message)
            if kept is None:
                return None
            message = kept
            message_id = str(message.get("messageId", message_id))
        if self._device is not None and self._device.source_disabled:
            error = DeliveryError(
                "the source is disabled in its config", reason=Reason.SOURCE_DISABLED
            )
            self._reporter.report(error, [message], what=message["type"])
            return None
        data = dumps(message)
        if len(data) + _SENT_AT_BYTES > opts.max_message_bytes:
            raise InvalidMessageError(
                f"message is {len(data) + _SENT_AT_BYTES} bytes serialized; the limit "
                f"(max_message_bytes) is {opts.max_message_bytes}",
                field="message",
                reason=Reason.TOO_LARGE,
            )
        if self._device is not None:
            self._device.dispatch(data)  # device mode sees what was accepted, cloud or not
        if not opts.send:
            with self._discarded_lock:
                self._discarded += 1
            return message_id
        if opts.sync_mode:
            try:
                delivered = self._consumer.send_now(data)
            except DeliveryError as exc:
                self._reporter.report(exc, [data], what=message["type"])
                return None
            return message_id if delivered else None  # a failure is reported already
        reason = self._consumer.put(data)
        if reason is not None:
            error = _drop_error(reason, opts, self._consumer.storage_problem)
            self._reporter.report(error, [data], what=message["type"])
            return None
        return message_id

    def _context(
        self,
        context: Mapping[str, Any] | None,
        message: JsonDict,
        remembered_traits: JsonDict | None,
    ) -> JsonDict:
        if (
            context is None
            and not self._base_context
            and remembered_traits is None
            and message["type"] != "identify"
        ):
            return LIBRARY_CONTEXT  # shared: middleware gets a copy, to_json only reads
        merged: JsonDict = dict(self._base_context) if self._base_context else {}
        if context is not None:
            merged.update(self._object(context, "context"))
        if message["type"] == "identify":
            given = merged.get("traits")
            base = given if isinstance(given, dict) else {}
            merged["traits"] = {**base, **message["traits"]}
        elif remembered_traits and "traits" not in merged:
            merged["traits"] = remembered_traits
        merged["library"] = LIBRARY
        return merged

    def _run_middleware(self, message: JsonDict) -> JsonDict | None:
        # Middleware may edit freely: it gets a deep, JSON-native copy, never caller dicts.
        current: JsonDict | None = json.loads(dumps(message))
        for middleware in self._middleware:
            assert current is not None
            try:
                result: object = middleware(current)
            except Exception as exc:  # noqa: BLE001 - isolation boundary: user code
                error = InvalidMessageError(
                    f"middleware {_name(middleware)} raised {type(exc).__name__}: {exc}",
                    reason=Reason.MIDDLEWARE_ERROR,
                )
                self._reporter.report(error, [current], what=message["type"])
                return None
            if result is None:
                error = InvalidMessageError(
                    f"middleware {_name(middleware)} dropped the message", reason=Reason.FILTERED
                )
                self._reporter.report(error, [current], what=message["type"])
                return None
            if not isinstance(result, dict):
                error = InvalidMessageError(
                    f"middleware {_name(middleware)} returned {type(result).__name__}, "
                    "not a dict or None",
                    reason=Reason.MIDDLEWARE_ERROR,
                )
                self._reporter.report(error, [current], what=message["type"])
                return None
            current = result
        assert current is not None
        if type(current.get("messageId")) is not str or not current["messageId"]:
            current["messageId"] = message["messageId"]  # the dedupe key must survive
        cleaned: JsonDict = clean(current, "message")
        return cleaned

    def _reject(self, exc: Exception, kind: str) -> str | None:
        if not isinstance(exc, AnalyticsError):
            # A bug of ours or a hostile object (a __str__ that raises): never the caller's.
            logger.exception("internal error in %s(); the message is dropped", kind)
            exc = DeliveryError(
                f"internal error: {type(exc).__name__}", reason=Reason.INTERNAL_ERROR
            )
        elif isinstance(exc, InvalidMessageError) and self._options.strict:
            raise exc
        self._reporter.report(exc, [], count=1, what=kind)
        return None

    # -- process lifecycle -------------------------------------------------------------------

    def _identity_anonymous_id(self) -> str:
        return self._identity.anonymous_id

    def _after_fork(self) -> None:
        if self._device is not None:
            self._device.after_fork()
        self._consumer.after_fork()
        self._reporter.after_fork()
        self._identity.after_fork()
        reseed_ids()  # the at-fork hook does it too; a fork only the pid check saw needs it
        self._discarded = 0
        self._discarded_lock = threading.Lock()

    def _exit(self) -> None:
        """The exit-time shutdown of this one client (a multiprocessing child's finalizer)."""
        self._begin_exit()
        self._finish_exit(time.monotonic() + self._options.shutdown_timeout)

    def _begin_exit(self) -> None:
        self._closed = True
        if self._options.send:
            self._consumer.begin_shutdown()

    def _finish_exit(self, deadline: float) -> None:
        if self._device is not None:
            self._device.shutdown(deadline)
        if self._options.send:
            self._consumer.finish_shutdown(deadline, at_exit=True)
        live_clients.discard(self)


def _name(function: object) -> str:
    return getattr(function, "__qualname__", None) or type(function).__name__


def _drop_error(reason: str, opts: ClientOptions, storage_problem: str) -> DeliveryError:
    if reason == Reason.QUEUE_FULL:
        return DeliveryError(
            f"the queue is full (max_queue_size {opts.max_queue_size}, "
            f"max_queue_bytes {opts.max_queue_bytes}); is the data plane reachable?",
            reason=reason,
        )
    if reason == Reason.STORAGE_ERROR:
        return DeliveryError(storage_problem, reason=reason)
    return DeliveryError("the client is shut down", reason=reason)
