"""Device mode: discovers wrappers, enables them from the source config, routes and isolates.

Threads: one router (`analytics_sdk.integrations`) parses each accepted message once and
routes it; every active integration has its own worker (`analytics_sdk.integration.<key>`)
with a bounded queue, so a slow or failing destination never touches the caller, cloud
delivery or another integration (DESIGN 6, rules 6-8).
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from analytics_sdk._logging import child_logger, logger, mask_secrets
from analytics_sdk._secrets import register_model_secrets, register_setting_secrets
from analytics_sdk._serialization import expand
from analytics_sdk._version import __version__
from analytics_sdk.errors import DeliveryError, IntegrationUnavailableError, Reason, describe
from analytics_sdk.integration import (
    Integration,
    IntegrationContext,
    Rejected,
    RejectedMessage,
)
from analytics_sdk.models import Message, TrackMessage, parse_message

ENTRY_POINT_GROUP = "analytics_sdk.integrations"
PRE_CONFIG_BUFFER = 1000  # messages kept for device mode until the first config arrives
WORKER_QUEUE = 10_000  # messages waiting per integration before new ones are dropped
STOP_TIMEOUT = 5.0  # seconds a disabled or reconfigured integration gets to stop
_STOP, _FLUSH, _RESET = "stop", "flush", "reset"


def install_hint(key: str) -> str:
    return f"pip install 'analytics-sdk[{key}]'"


@dataclass
class Discovered:
    """One entry point of the group: loadable or not, and why."""

    key: str
    cls: type[Integration[Any]] | None = None
    hint: str | None = None  # the pip line when its destination SDK is missing
    error: str | None = None  # a broken wrapper: what went wrong (the traceback is logged)

    @property
    def installed(self) -> bool:
        return self.cls is not None


def discover() -> dict[str, Discovered]:
    """Every wrapper registered in the entry-point group, loaded (this imports them)."""
    found: dict[str, Discovered] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        entry = Discovered(ep.name)
        found[ep.name] = entry
        try:
            cls = ep.load()  # a wrapper whose SDK is missing raises at import
        except (IntegrationUnavailableError, ImportError) as exc:
            entry.hint = install_hint(ep.name)
            logger.debug("integration %r is not installed: %s", ep.name, exc)
            continue
        except Exception as exc:  # noqa: BLE001 - a broken wrapper must not break the others
            entry.error = f"failed to import: {type(exc).__name__}: {exc}"
            logger.exception("integration %r failed to import; it is skipped", ep.name)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Integration)):
            entry.error = "the entry point does not name an Integration subclass"
        elif getattr(cls, "key", None) != ep.name:
            entry.error = f"its key {getattr(cls, 'key', None)!r} differs from the entry point"
        else:
            entry.cls = cls
        if entry.error:
            logger.warning("integration %r is skipped: %s", ep.name, entry.error)
    return found


@dataclass
class Counters:
    handled: int = 0
    failed: int = 0
    rejected: int = 0
    dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "handled": self.handled,
            "failed": self.failed,
            "rejected": self.rejected,
            "dropped": self.dropped,
        }


@dataclass(frozen=True)
class Route:
    """What a destination's config says about which messages an integration gets."""

    allow: frozenset[str] | None = None  # track event names; None: all
    deny: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Route:
        option = config.get("eventFilteringOption")
        if option == "whitelistedEvents":
            return cls(allow=_event_names(config.get("whitelistedEvents")))
        if option == "blacklistedEvents":
            return cls(deny=_event_names(config.get("blacklistedEvents")))
        return cls()

    def takes(self, message: Message) -> bool:
        if not isinstance(message, TrackMessage):
            return True  # event filtering applies to track calls only (DESIGN 6, rule 6)
        name = message.event.strip()
        if self.allow is not None and name not in self.allow:
            return False
        return name not in self.deny


def _event_names(entries: Any) -> frozenset[str]:
    names: set[str] = set()
    if entries is None:
        return frozenset()
    if not isinstance(entries, (list, tuple)):
        # Fail closed: an allow-list that cannot be read lets nothing through (a deny-list,
        # nothing out); either way it must not raise into the other destinations.
        logger.warning("an event filtering list is not a list; it is read as empty")
        return frozenset()
    for entry in entries:
        name = entry.get("eventName") if isinstance(entry, Mapping) else entry
        if isinstance(name, str) and name.strip():
            names.add(name.strip())
    return frozenset(names)


class Worker:
    """One active integration: its own thread and bounded queue, and its counters.

    Every call into the wrapper happens on this thread, one at a time; whatever the wrapper
    raises is caught here, counted, and logged once with a traceback (repeats at DEBUG).
    Once stopping or dead, the worker refuses messages (the router hands them to its
    replacement or counts them) and answers every request at once: nobody waits on it.
    """

    def __init__(
        self,
        integration: Integration[Any],
        route: Route,
        report_rejected: Callable[[str, list[tuple[Message, str]]], None],
        *,
        config_key: str | None = None,
        max_queue: int = WORKER_QUEUE,
    ) -> None:
        self.integration = integration
        self.key = integration.key
        self.route = route
        self.config_key = config_key  # the destination config it was built from, if any
        self.counters = Counters()
        self._report_rejected = report_rejected
        self._max_queue = max_queue
        self._types = integration.supported_types
        self._batch = max(1, integration.batch_size)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[Message | tuple[str, threading.Event, float]] = deque()
        self._failures_logged = 0
        self._thread: threading.Thread | None = None
        self.stopping = False  # a stop is queued: new messages go to the replacement
        self.dead = False  # the thread ended (stopped, or setup failed)
        self.setup_error: str | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def on_own_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def start(self, setup: bool = True) -> None:
        self._thread = threading.Thread(
            target=self._run,
            args=(setup,),
            name=f"analytics_sdk.integration.{self.key}",
            daemon=True,
        )
        self._thread.start()

    def wants(self, message: Message, enabled: bool) -> bool:
        return enabled and message.type in self._types and self.route.takes(message)

    def put(self, message: Message) -> bool:
        """Queue one message; False when stopping or dead (the caller re-routes it)."""
        with self._lock:
            if self.stopping or self.dead:
                return False
            if len(self._queue) >= self._max_queue:
                self.counters.dropped += 1
                return True
            self._queue.append(message)
            self._wake.notify()
            return True

    def request(self, what: str, deadline: float | None) -> threading.Event:
        """Queue a flush/reset/stop for the worker thread; the Event is set when done."""
        done = threading.Event()
        with self._lock:
            if self.dead:
                done.set()
                return done
            if what == _STOP:
                self.stopping = True
            self._queue.append((what, done, deadline or 0.0))
            self._wake.notify()
        return done

    def interrupt(self) -> None:
        """From the stopping thread, once the worker is abandoned: the wrapper ends its waits."""
        try:
            self.integration.interrupt()
        except Exception:  # noqa: BLE001 - a wrapper's bug must not escape a stop
            logger.debug("integration %r failed to interrupt", self.key, exc_info=True)

    def _run(self, setup: bool) -> None:
        try:
            if setup and not self._setup():
                return
            self._loop()
        finally:
            with self._lock:
                self.dead = True
                leftovers = list(self._queue)
                self._queue.clear()
            for item in leftovers:  # nobody waits on a dead worker, nothing is kept silently
                if isinstance(item, Message):
                    self.counters.dropped += 1
                else:
                    item[1].set()

    def _setup(self) -> bool:
        try:
            self.integration.setup()
        except IntegrationUnavailableError as exc:  # the documented opt-out: no traceback
            self.setup_error = mask_secrets(f"unavailable: {exc}")
            logger.error("integration %r is unavailable; it stays off: %s", self.key, exc)
            return False
        except BaseException as exc:  # noqa: BLE001 - isolation boundary: a wrapper's bug
            self.setup_error = mask_secrets(f"setup failed: {type(exc).__name__}: {exc}")
            logger.error(
                "integration %r could not start (%s); it stays off\n%s",
                self.key,
                self.setup_error,
                mask_secrets(traceback.format_exc()),
            )
            return False
        return True

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue:
                    self._wake.wait()
                head = self._queue.popleft()
                batch: list[Message] = []
                if isinstance(head, Message):
                    batch.append(head)
                    while self._queue and len(batch) < self._batch:
                        if not isinstance(self._queue[0], Message):
                            break
                        item = self._queue.popleft()
                        assert isinstance(item, Message)
                        batch.append(item)
            if batch:
                self._deliver(batch)
                continue
            assert not isinstance(head, Message)
            what, done, deadline = head
            budget = max(0.0, deadline - time.monotonic()) if deadline else 5.0
            if what == _FLUSH:
                self._call("flush", partial(self.integration.flush, budget))
            elif what == _RESET:
                self._call("reset", self.integration.reset)
            elif what == _STOP:
                self._call("shutdown", partial(self.integration.shutdown, budget))
            done.set()
            if what == _STOP:
                return

    def _deliver(self, batch: list[Message]) -> None:
        rejected: list[tuple[Message, str]] = []
        if self._batch > 1:
            try:
                result = self.integration.handle_batch(batch)
            except RejectedMessage as exc:
                result = [Rejected(m.message_id, exc.reason) for m in batch]
            except BaseException:  # noqa: BLE001 - isolation boundary: a wrapper's bug
                self.counters.failed += len(batch)
                self._log_failure("batch")
                return
            # Each Rejected claims one message with its id, in batch order: two messages
            # sharing an id are two outcomes, and a repeated Rejected cannot count twice.
            by_id: dict[str, deque[Message]] = {}
            for message in batch:
                by_id.setdefault(message.message_id, deque()).append(message)
            for item in result or ():  # None: nothing rejected
                if isinstance(item, Rejected) and by_id.get(item.message_id):
                    rejected.append((by_id[item.message_id].popleft(), item.reason))
            self.counters.handled += len(batch) - len(rejected)
        else:
            message = batch[0]
            try:
                self.integration.handle(message)
                self.counters.handled += 1
            except RejectedMessage as exc:
                rejected.append((message, exc.reason))
            except BaseException:  # noqa: BLE001 - isolation boundary: a wrapper's bug
                self.counters.failed += 1
                self._log_failure(f"{message.type} call")
        if rejected:
            self.counters.rejected += len(rejected)
            self._report_rejected(self.key, rejected)

    def _call(self, what: str, call: Callable[[], Any]) -> None:
        try:
            call()
        except RejectedMessage as exc:
            logger.debug("integration %r rejected a %s: %s", self.key, what, exc.reason)
        except BaseException:  # noqa: BLE001 - isolation boundary: a wrapper's bug stays here
            self._log_failure(what)

    def _log_failure(self, what: str) -> None:
        self._failures_logged += 1
        if self._failures_logged == 1:
            logger.error(
                "integration %r failed on a %s (repeats are logged at DEBUG)\n%s",
                self.key,
                what,
                mask_secrets(traceback.format_exc()),
            )
        else:
            logger.debug(
                "integration %r failed again on a %s (%d)", self.key, what, self._failures_logged
            )


@dataclass
class StatusEntry:
    key: str
    display_name: str | None = None
    installed: bool = True
    hint: str | None = None
    enabled_by_config: bool = False
    active: bool = False
    options_error: str | None = None
    counters: dict[str, int] = field(default_factory=lambda: Counters().as_dict())


class Factory:
    """Turns source configs into running workers, and accepted messages into their input.

    `dispatch()` is the only call on the caller's thread: it appends the serialized
    message to an inbox (bounded by the pre-config buffer before the first config, by the
    workers' queues after it). The router thread parses and routes.
    """

    def __init__(
        self,
        anonymous_id: Callable[[], str],
        report: Callable[[DeliveryError, list[dict[str, Any]]], None],
        custom: Sequence[Integration[Any]] = (),
        discover_entry_points: Callable[[], dict[str, Discovered]] | None = None,
    ) -> None:
        self._anonymous_id = anonymous_id
        self._report = report
        self._discover = discover_entry_points
        self._lock = threading.Lock()
        self._inbox_ready = threading.Condition(self._lock)  # the router waits here
        self._routed = threading.Condition(self._lock)  # flush/shutdown wait here
        self._routing = False  # the router holds a taken batch not yet handed out
        self._inbox: deque[bytes] = deque()
        self._buffer: deque[bytes] = deque(maxlen=PRE_CONFIG_BUFFER)
        self.buffer_dropped = 0
        self._configured = False  # a config arrived (or there is no control plane at all)
        self._discovered: dict[str, Discovered] | None = None
        self._workers: dict[str, Worker] = {}  # by integration key
        self._status: dict[str, StatusEntry] = {}
        self._router: threading.Thread | None = None
        self._closed = False
        self._shut_down = False
        self._setup_again = False  # set in a forked child: in-code integrations set up anew
        self._warned_missing: set[str] = set()  # destinations said to have no integration
        for integration in custom:
            if integration.context is None:
                integration.context = self._context(integration.key, None)
            worker = Worker(integration, Route(), self._rejected)
            self._workers[integration.key] = worker
            self._status[integration.key] = StatusEntry(
                integration.key, integration.display_name, enabled_by_config=True, active=True
            )

    # -- the caller's thread -----------------------------------------------------------------

    @property
    def active(self) -> bool:
        """False when no message can reach any integration: dispatch() may be skipped."""
        return bool(self._workers) or not self._configured

    def dispatch(self, data: bytes) -> None:
        with self._lock:
            if self._closed:
                return
            if not self._configured:
                if len(self._buffer) == PRE_CONFIG_BUFFER:
                    self.buffer_dropped += 1  # the oldest goes: counted (DESIGN 6, rule 4)
                self._buffer.append(data)
                return
            if not self._workers:
                return
            self._inbox.append(data)
            if len(self._inbox) == 1:
                self._inbox_ready.notify()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the custom integrations' workers and the router (custom setup ran already,
        except in a forked child, where the destination SDKs' threads are gone: again)."""
        for worker in list(self._workers.values()):
            worker.start(setup=self._setup_again)
        self._router = threading.Thread(
            target=self._route_forever, name="analytics_sdk.integrations", daemon=True
        )
        self._router.start()

    def after_fork(self) -> None:
        """In a forked child: no thread of ours exists and locks may be held. Keep the
        in-code integrations, forget config-made workers: the child's config client
        delivers the config again, and start() runs everything anew."""
        self._lock = threading.Lock()
        self._inbox_ready = threading.Condition(self._lock)
        self._routed = threading.Condition(self._lock)
        self._routing = False
        self._inbox = deque()
        self._buffer = deque(maxlen=PRE_CONFIG_BUFFER)
        self._router = None
        self._closed = False
        custom = [w.integration for w in self._workers.values() if w.config_key is None]
        self._workers = {i.key: Worker(i, Route(), self._rejected) for i in custom}
        self._configured = False
        self._setup_again = True
        self._status = {}
        self.buffer_dropped = 0

    def setup_custom(self) -> None:
        """Set up in-code integrations now: one that is unavailable raises at construction."""
        for worker in self._workers.values():
            worker.integration.setup()

    def apply(self, config: Any) -> None:
        """Start, stop or restart integrations for a new source config (device mode).

        Everything that runs wrapper code or reads a destination's config (options, filters,
        constructors) happens here, per destination, outside the lock and guarded: one bad
        destination keeps itself off, never the others (LESSONS R24.3).
        """
        with self._lock:
            current = {key: w.config_key for key, w in self._workers.items()}
        prepared, status = self._prepare(config, current)
        self._reconcile(prepared, status)

    def check(self, config: Any) -> list[dict[str, Any]]:
        """What `apply` would do with a config, without starting anything (`doctor`):
        each integration's installed/enabled state and options error; nothing is built."""
        _, status = self._prepare(config, None)
        return [vars(entry) for entry in sorted(status.values(), key=lambda e: e.key)]

    def _prepare(
        self, config: Any, current: dict[str, str | None] | None
    ) -> tuple[dict[str, Worker], dict[str, StatusEntry]]:
        """Match, validate and (unless `current` is None: a dry run) build each wanted worker."""
        if self._discovered is None:
            self._discovered = (self._discover or discover)()  # discover: looked up now
        prepared: dict[str, Worker] = {}
        status: dict[str, StatusEntry] = {
            key: StatusEntry(
                key,
                entry.cls.display_name if entry.cls else None,
                installed=entry.installed,
                hint=entry.hint,
                options_error=entry.error,
            )
            for key, entry in self._discovered.items()
        }
        for destination in config.source.destinations:
            if not destination.device_mode:
                continue
            definition = destination.destination_definition
            register_setting_secrets(destination.config)  # before anything may quote them
            entry = self._match(definition.display_name, definition.name)
            # Once per name: a config may list the same destination type a thousand times.
            warn = current is not None and definition.display_name not in self._warned_missing
            if entry is None:
                key = definition.name.lower()
                status.setdefault(key, StatusEntry(key, definition.display_name, installed=False))
                status[key].enabled_by_config = True
                if warn:
                    self._warned_missing.add(definition.display_name)
                    logger.warning(
                        "device mode is on for %r but no integration for it is installed",
                        definition.display_name,
                    )
                continue
            key = entry.key
            status[key].enabled_by_config = True
            if entry.cls is None:
                if warn:
                    self._warned_missing.add(definition.display_name)
                    logger.warning(
                        "device mode is on for %r but its integration is not installed: %s",
                        definition.display_name,
                        entry.hint or entry.error,
                    )
                continue
            config_key = _config_key(destination.config)
            if current is not None and current.get(key) == config_key:
                prepared[key] = self._workers[key]  # unchanged: keep it running
                continue
            try:
                options = entry.cls.options_model.model_validate(destination.config)
            except ValidationError as exc:
                # describe() never quotes input, but a wrapper's validator message might.
                error = mask_secrets(f"invalid options: {describe(exc)}")
                if current is not None and status[key].options_error != error:
                    logger.error("integration %r stays off: %s", key, error)
                status[key].options_error = error
                continue
            if current is None:
                continue  # a dry run: valid options are all it checks
            register_model_secrets(options)
            try:
                integration = entry.cls(options, self._context(key, destination.id))
                route = Route.from_config(destination.config)
            except Exception as exc:  # noqa: BLE001 - a wrapper's constructor is its own bug
                status[key].options_error = mask_secrets(
                    f"could not be built: {type(exc).__name__}: {exc}"
                )
                logger.error("integration %r stays off: %s", key, status[key].options_error)
                continue
            prepared[key] = Worker(integration, route, self._rejected, config_key=config_key)
        return prepared, status

    def _context(self, key: str, destination_id: str | None) -> IntegrationContext:
        return IntegrationContext(
            logger=child_logger(f"integrations.{key}"),
            anonymous_id=self._anonymous_id,
            library_version=__version__,
            destination_id=destination_id,
        )

    def _match(self, display_name: str, name: str) -> Discovered | None:
        assert self._discovered is not None
        for entry in self._discovered.values():
            cls = entry.cls
            if cls is not None and (
                cls.display_name == display_name or name in cls.destination_names
            ):
                return entry
        for entry in self._discovered.values():  # not installed: match by key as a fallback
            if entry.cls is None and entry.key in (display_name.lower(), name.lower()):
                return entry
        return None

    def _reconcile(self, wanted: dict[str, Worker], status: dict[str, StatusEntry]) -> None:
        to_stop: list[Worker] = []
        started: list[Worker] = []
        with self._lock:
            if self._closed:
                return  # shutdown began while the config was applied: start nothing
            for key, worker in list(self._workers.items()):
                if worker.config_key is not None and wanted.get(key) is not worker:
                    to_stop.append(self._workers.pop(key))  # disabled, or changed
            for key, worker in wanted.items():
                if key not in self._workers:
                    self._workers[key] = worker
                    started.append(worker)
            for key, worker in self._workers.items():
                entry = status.setdefault(key, StatusEntry(key, worker.integration.display_name))
                entry.active = True
                entry.enabled_by_config = entry.enabled_by_config or worker.config_key is None
            self._status = status
            first = not self._configured
            self._configured = True
            for worker in started:
                worker.start()  # under the lock: the router cannot route to an unstarted one
            if first:
                self._inbox.extend(self._buffer)  # replayed once, after the workers exist
                self._buffer.clear()
                self._inbox_ready.notify()
                self._routed.notify_all()
        # On the config thread, so waiting is fine; an overrunning wrapper is abandoned.
        # Messages routed after a stop was queued go to the replacement (Worker.put).
        deadline = time.monotonic() + STOP_TIMEOUT
        stopping = [(worker, worker.request(_STOP, deadline)) for worker in to_stop]
        for worker, done in stopping:
            if done.wait(max(0.0, deadline - time.monotonic())):
                logger.info(
                    "integration %r stopped (disabled or changed in the config)", worker.key
                )
            else:
                worker.interrupt()
                logger.warning("integration %r did not stop in time; abandoned", worker.key)

    def without_config(self) -> None:
        """No control plane and no source_config: only in-code integrations, from now on."""
        with self._lock:
            self._configured = True
            self._inbox.extend(self._buffer)
            self._buffer.clear()
            self._inbox_ready.notify()
            self._routed.notify_all()

    def no_config(self, reason: str) -> None:
        """No config now or soon: device mode stays off; stop buffering for it."""
        with self._lock:
            first = not self._configured
            self._configured = True
            dropped = len(self._buffer)
            self._buffer.clear()
            self._routed.notify_all()
        if first:
            logger.warning(
                "device mode stays off: %s (%d buffered messages not replayed)", reason, dropped
            )

    def flush(self, deadline: float) -> bool:
        """Ask every worker to drain and flush; wait until the deadline at most.

        Messages held for the first config count too: until it arrives (or is known not to
        come) they are not delivered, so flush waits for it within the same deadline.
        """
        if self._shut_down:
            return True
        if not self._wait_configured(deadline):
            return False
        return self._fan_out(_FLUSH, deadline)

    def reset(self) -> None:
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.request(_RESET, None)

    def shutdown(self, deadline: float, *, config_coming: bool = True) -> bool:
        """Flush and stop every worker within the deadline; overrunning ones are abandoned.

        Waits for the first config too (messages are held for it); what is still held when
        the deadline passes is reported as lost, never dropped silently. Idempotent.
        """
        if self._shut_down:
            return True
        configured = self._wait_configured(deadline) if config_coming else True
        with self._lock:
            self._closed = True
            held = list(self._buffer)
            self._buffer.clear()
            self._inbox_ready.notify()
        if held:
            self.buffer_dropped += len(held)
            error = DeliveryError(
                f"{len(held)} message(s) held for device mode were not handed to integrations: "
                "no source config arrived before shutdown",
                reason=Reason.SHUTDOWN,
                count=len(held),
            )
            self._report(error, [json.loads(expand(m)) for m in held])
        drained = self._wait_inbox(deadline)
        with self._lock:
            never_started = [w for w in self._workers.values() if not w.started]
        for worker in never_started:  # no message ever came: shut them down right here
            try:
                worker.integration.shutdown(max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - a wrapper's bug must not escape shutdown()
                logger.debug("integration %r failed to shut down", worker.key, exc_info=True)
        stopped = self._fan_out(_STOP, deadline)
        self._shut_down = True
        return configured and drained and stopped

    def _wait_configured(self, deadline: float) -> bool:
        with self._lock:
            while not self._configured and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._routed.wait(remaining)
            return True

    def _fan_out(self, what: str, deadline: float) -> bool:
        self._wait_inbox(deadline)
        with self._lock:
            # A handler calling client.flush() runs on its worker's thread: never wait on it.
            workers = [w for w in self._workers.values() if w.started and not w.on_own_thread()]
        done = [(worker, worker.request(what, deadline)) for worker in workers]
        ok = True
        for worker, event in done:
            if not event.wait(max(0.0, deadline - time.monotonic())):
                if what == _STOP:
                    worker.interrupt()  # end its retry waits: the thread must not outlive us
                logger.warning(
                    "integration %r did not finish its %s in time; abandoned", worker.key, what
                )
                ok = False
        return ok

    def _wait_inbox(self, deadline: float) -> bool:
        """Wait until the router has handed everything in the inbox to the workers."""
        with self._lock:
            while self._inbox or self._routing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._routed.wait(remaining)
            return True

    # -- the router thread -------------------------------------------------------------------

    def _route_forever(self) -> None:
        while True:
            with self._lock:
                while not self._inbox and not self._closed:
                    self._inbox_ready.wait()
                if not self._inbox and self._closed:
                    return
                batch = list(self._inbox)
                self._inbox.clear()
                self._routing = True
                workers = list(self._workers.values())
            try:
                for data in batch:
                    self._route(data, workers)
            except Exception:  # noqa: BLE001 - the router must survive anything
                logger.exception("routing to integrations failed; continuing")
            finally:
                with self._lock:
                    self._routing = False
                    self._routed.notify_all()

    def _route(self, data: bytes, workers: Iterable[Worker]) -> None:
        try:
            wire = json.loads(expand(data))
            message = parse_message(wire)
        except (ValueError, ValidationError):
            logger.debug("a message could not be parsed for device mode; skipped")
            return
        switches = message.integrations
        default = bool(switches.get("All", True))
        for worker in workers:
            value = switches.get(worker.integration.display_name, default)
            if worker.wants(message, value is not False and bool(value)) and not worker.put(
                message
            ):
                # Stopping (a config change) or dead: its replacement takes the message.
                with self._lock:
                    replacement = self._workers.get(worker.key)
                if replacement is None or replacement is worker or not replacement.put(message):
                    worker.counters.dropped += 1

    def _rejected(self, key: str, rejected: list[tuple[Message, str]]) -> None:
        for message, reason in rejected:
            error = DeliveryError(  # the wrapper's reason may quote its own API key
                f"integration {key!r} rejected the message: {mask_secrets(reason)}",
                reason=Reason.REJECTED_BY_INTEGRATION,
            )
            self._report(error, [message.to_wire()])

    # -- numbers -----------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """Every discovered or configured integration, with its state and counters.

        Discovers installed wrappers itself when no config was applied yet (control plane
        down, say): what is installed is worth knowing either way.
        """
        if self._discovered is None:
            self._discovered = (self._discover or discover)()
        with self._lock:
            entries = {key: StatusEntry(**vars(entry)) for key, entry in self._status.items()}
            for key, found in self._discovered.items():
                if key not in entries:
                    display = found.cls.display_name if found.cls else None
                    entries[key] = StatusEntry(
                        key, display, installed=found.installed, hint=found.hint,
                        options_error=found.error,
                    )  # fmt: skip
            for key, worker in self._workers.items():
                entry = entries.setdefault(key, StatusEntry(key, worker.integration.display_name))
                entry.counters = worker.counters.as_dict()
                entry.active = True
                if worker.setup_error:
                    entry.active = False
                    entry.options_error = worker.setup_error
        return [vars(entry) for entry in sorted(entries.values(), key=lambda e: e.key)]

    def counters(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {key: worker.counters.as_dict() for key, worker in self._workers.items()}


def _config_key(config: Mapping[str, Any]) -> str:
    """A stable fingerprint of a destination's config: a change restarts the integration."""
    return json.dumps(config, sort_keys=True, default=str)
