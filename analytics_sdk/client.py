"""Client: the six spec calls, identity, flush, shutdown and the process lifecycle."""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any

from analytics_sdk._consumer import Consumer, deadline_for
from analytics_sdk._logging import logger, register_secret
from analytics_sdk._outcomes import Reporter
from analytics_sdk._serialization import (
    ALL_INTEGRATIONS,
    LIBRARY,
    LIBRARY_CONTEXT,
    clean,
    dumps,
    format_time,
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
        _live_clients.add(self)
        _warn_if_duplicate(self)
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
                raise _invalid("event", "is required and must be a non-empty string")
            message: JsonDict = {
                "type": "track",
                "event": _unicode(event, "event"),
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
            group = _id(group_id, "group_id")
            if group is None:
                raise _invalid("group_id", "is required (a non-empty string or an int)")
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
            new_id = _id(user_id, "user_id")
            if new_id is None:
                raise _invalid("user_id", "is required for alias")
            previous = _id(previous_id, "previous_id")
            if previous is None and self._options.stateful:
                previous = self._identity.user_id or self._identity.anonymous_id
            if previous is None:
                raise _invalid("previous_id", "is required for alias")
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
            _live_clients.discard(self)
            return devices_done
        drained = self._consumer.shutdown(budget, at_exit=at_exit) and devices_done
        if self._consumer.finished():
            # Until then the exit hook keeps it: a shutdown() called from on_error returns
            # at once, and someone must still bound and report the rest.
            _live_clients.discard(self)
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
                message["name"] = _text(name, "name")
            if category is not None:
                message["category"] = _text(category, "category")
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
            raise _invalid(field, f"must be a dict (got {type(value).__name__})")
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
        uid = _id(user_id, "user_id")
        aid = _id(anonymous_id, "anonymous_id")
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
            message_id = _id(message_id, "message_id")
            if message_id is None:
                raise _invalid("message_id", "must be a non-empty string")
        message["messageId"] = message_id
        message["originalTimestamp"] = now_iso()
        if timestamp is not None:
            message["timestamp"] = _time(timestamp)
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
        _live_clients.discard(self)


def _invalid(field: str, problem: str) -> InvalidMessageError:
    return InvalidMessageError(f"{field} {problem}", field=field)


def _id(value: object, field: str) -> str | None:
    """An id as a non-empty string: ints (0 included) and UUIDs are converted."""
    if value is None:
        return None
    kind = type(value)
    if kind is str:
        if value:
            return _unicode(value, field)  # type: ignore[arg-type]  # narrowed by the type check
        raise _invalid(field, "must not be empty (pass None to leave it out)")
    if kind is int or isinstance(value, uuid.UUID):
        return str(value)
    raise _invalid(field, f"must be a string or an int (got {kind.__name__})")


def _text(value: object, field: str) -> str:
    if not isinstance(value, str) or type(value) is not str:
        raise _invalid(field, f"must be a string (got {type(value).__name__})")
    return _unicode(value, field)


def _unicode(value: str, field: str) -> str:
    """`value` if it has a UTF-8 form: a lone surrogate ('\\ud800', from a bad decode) has none."""
    if value.isascii():  # the common case, in one C pass
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _invalid(
            field, f"holds a lone surrogate at index {exc.start}, which is not valid Unicode text"
        ) from None
    return value


def _time(value: object) -> str:
    try:
        if isinstance(value, datetime):
            return format_time(value)
        if isinstance(value, date):
            return format_time(datetime(value.year, value.month, value.day, tzinfo=timezone.utc))
    except (OverflowError, ValueError):
        raise _invalid("timestamp", "is outside the range of UTC datetimes") from None
    except Exception as exc:  # noqa: BLE001 - a tzinfo of the caller's that raises
        raise _invalid(
            "timestamp", f"could not be read: its tzinfo raised {type(exc).__name__}"
        ) from None
    if isinstance(value, str):
        try:  # Python 3.10's fromisoformat does not take a trailing Z
            parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
        except ValueError:
            raise _invalid("timestamp", "is not an ISO-8601 date or time") from None
        return format_time(parsed)
    raise _invalid(
        "timestamp", f"must be a datetime or an ISO-8601 string (got {type(value).__name__})"
    )


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


# -- one exit hook and one fork hook per process, holding clients weakly (LESSONS R1.6) ------

_live_clients: weakref.WeakSet[Client] = weakref.WeakSet()


def _warn_if_duplicate(client: Client) -> None:
    opts = client.options
    if not opts.send:
        return
    for other in list(_live_clients):
        if (
            other is not client
            and not other._closed
            and (
                other.options.write_key == opts.write_key
                and other.options.data_plane_url == opts.data_plane_url
            )
        ):
            logger.warning(
                "another live Client has the same write key and data plane; create one "
                "client per process and share it (each has its own queue and thread)"
            )
            return


def _shutdown_all_at_exit() -> None:
    """Flush every live client at exit within one budget: the largest shutdown_timeout.

    All clients start draining first, then the hook waits once, so N clients cost the time
    of the slowest, not the sum (LESSONS R1.1).
    """
    clients = list(_live_clients)
    if not clients:
        return
    try:
        budget = max(client.options.shutdown_timeout for client in clients)
        deadline = time.monotonic() + budget
        for client in clients:
            _guarded(client._begin_exit)
        for client in clients:
            _guarded(lambda: client._finish_exit(deadline))  # noqa: B023 - called at once
    except KeyboardInterrupt:  # Ctrl-C during the exit drain: stop quietly (R1.5)
        logger.warning(
            "exit-time flush interrupted; undelivered messages are lost (with storage_path "
            "they stay in the file for the next run)"
        )


def _guarded(step: Callable[[], object]) -> None:
    try:
        step()
    except Exception:  # noqa: BLE001 - one client's failure must not skip the others
        logger.error("exit-time flush of a client failed", exc_info=True)


def _reinit_all_after_fork() -> None:
    clients = list(_live_clients)
    for client in clients:
        client._after_fork()
    # A multiprocessing child ends with os._exit(), which skips atexit: its own exit
    # function runs "finalizers" instead. That registry is cleared after this hook runs,
    # so ask multiprocessing to call us back once the child is set up (R3.1).
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        for client in clients:
            mp_util.register_after_fork(client, _flush_at_multiprocessing_exit)


def _flush_at_multiprocessing_exit(client: Client) -> None:
    import multiprocessing.util

    multiprocessing.util.Finalize(client, client._exit, exitpriority=10)


_fork_holds = threading.local()  # .consumers: what hold_all_before_fork took, per thread


def _hold_all_before_fork() -> None:
    """No delivery thread or caller may be inside SQLite when the process forks."""
    held = []
    for client in list(_live_clients):
        try:
            if client._consumer.hold_for_fork():
                held.append(client._consumer)
        except Exception:  # noqa: BLE001 - a fork must never fail because of us
            logger.debug("holding a client before fork failed", exc_info=True)
    _fork_holds.consumers = held


def _release_all_after_fork_in_parent() -> None:
    for consumer in getattr(_fork_holds, "consumers", ()):
        consumer.release_after_fork()
    _fork_holds.consumers = []


atexit.register(_shutdown_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_hold_all_before_fork,
        after_in_parent=_release_all_after_fork_in_parent,
        after_in_child=_reinit_all_after_fork,
    )
