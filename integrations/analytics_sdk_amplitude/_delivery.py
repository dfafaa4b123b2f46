"""What became of each event handed to Amplitude's SDK, learnt from the SDK itself.

The SDK reports each event's fate through `Config(callback=...)`, called from its sending
threads. Two paths of its own lose events without that callback: an "Invalid API key" answer
(it only logs) and a request that raises something urllib does not wrap (a connection reset
while reading the answer, a 2xx whose body is not Amplitude's JSON). The storage below is the
SDK's documented extension point (`Config(storage_provider=...)`); it hands us the SDK's
workers, whose two methods we wrap on this one client so those events get a result too.
Their thread pool is wrapped as well, so that the SDK still sends while the interpreter
exits (analytics_sdk's exit flush).
"""

from __future__ import annotations

import concurrent.futures.thread
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any

from amplitude.exception import InvalidAPIKeyError
from amplitude.http_client import HttpStatus, Response
from amplitude.storage import InMemoryStorage, StorageProvider

__all__ = ["OutcomeStorage", "OutcomeStorageProvider", "Outcomes"]

_MAX_ABANDONED = 10_000  # insert_ids remembered after giving up on them (late answers ignored)
_NUDGE_EVERY = 1.0  # seconds between checks that the SDK's retry thread is running


class Outcomes:
    """Each pending event's result by insert_id, filled from the SDK's threads.

    `secret` (the API key) is masked out of every reason; `attempts` is how many times the
    SDK sends an event before it gives up (for the reason text).
    """

    def __init__(self, secret: str, attempts: int) -> None:
        self._changed = threading.Condition()
        self._secret = secret
        self._attempts = attempts
        self._pending: set[str] = set()
        self._queued: set[str] = set()  # pending ones the SDK put in its storage
        self._failed: dict[str, str] = {}
        self._problems: dict[str, str] = {}  # the last failed attempt, for "gave up" reasons
        self._details: dict[str, str] = {}  # what a 400 said about this one event
        self._abandoned: dict[str, None] = {}  # an ordered set, trimmed

    def expect(self, insert_ids: Iterable[str]) -> None:
        with self._changed:
            self._pending.update(insert_ids)

    def queued(self, insert_id: str) -> None:
        with self._changed:
            if insert_id in self._pending:
                self._queued.add(insert_id)

    def abandoned(self, insert_id: str) -> bool:
        with self._changed:
            return insert_id in self._abandoned

    def settle(self, event: Any, code: int, message: str | None) -> None:
        """The SDK's callback: one event was sent (2xx) or given up on."""
        insert_id = event["insert_id"]
        with self._changed:
            if insert_id not in self._pending:
                return  # abandoned earlier, or not ours
            self._pending.discard(insert_id)
            if not 200 <= code < 300:
                self._failed[insert_id] = self._reason(insert_id, code, message or "")
            self._changed.notify_all()

    def attempt_failed(self, events: Sequence[Any], code: int, error: str, body: Any) -> None:
        """One request for `events` failed; the SDK may retry them (remembered for the reason)."""
        problem = _describe(code, error)
        details = _event_details(body)
        with self._changed:
            for index, event in enumerate(events):
                insert_id = event["insert_id"]
                if insert_id in self._pending:
                    self._problems[insert_id] = problem
                    if index in details:
                        self._details[insert_id] = details[index]

    def refuse_unqueued(self, insert_ids: Iterable[str]) -> None:
        """Events the SDK dropped before queueing them (it logs why, it calls no callback)."""
        with self._changed:
            for insert_id in insert_ids:
                if insert_id in self._pending and insert_id not in self._queued:
                    self._pending.discard(insert_id)
                    self._failed[insert_id] = (
                        "the Amplitude SDK dropped the event before sending it "
                        "(its 'amplitude' logger says why)"
                    )

    def wait(
        self, insert_ids: Sequence[str], deadline: float, nudge: Callable[[], None]
    ) -> list[str]:
        """Block until each of `insert_ids` has a result or `deadline` passes; the unanswered."""
        while True:
            with self._changed:
                unanswered = [i for i in insert_ids if i in self._pending]
                remaining = deadline - time.monotonic()
                if not unanswered or remaining <= 0:
                    return unanswered
                answered = self._changed.wait(min(remaining, _NUDGE_EVERY))
            if not answered:
                nudge()  # outside our lock: it takes the SDK's

    def finish(self, insert_ids: Iterable[str], unanswered_reason: str) -> dict[str, str]:
        """The failures among `insert_ids`, by insert_id; forgets them all.

        Events still without a result get `unanswered_reason` and are abandoned: a late
        answer is ignored and the SDK may not retry them.
        """
        failures: dict[str, str] = {}
        with self._changed:
            for insert_id in insert_ids:
                if insert_id in self._pending:
                    self._pending.discard(insert_id)
                    self._abandoned[insert_id] = None
                    failures[insert_id] = unanswered_reason
                elif insert_id in self._failed:
                    failures[insert_id] = self._failed.pop(insert_id)
                self._queued.discard(insert_id)
                self._problems.pop(insert_id, None)
                self._details.pop(insert_id, None)
            while len(self._abandoned) > _MAX_ABANDONED:
                del self._abandoned[next(iter(self._abandoned))]
        return failures

    def _reason(self, insert_id: str, code: int, message: str) -> str:
        last = self._problems.get(insert_id)
        suffix = f" (last: {last})" if last else ""
        if message.startswith("Event reached max retry"):  # the SDK's words: retries used up
            text = f"gave up after {self._attempts} attempts{suffix}"
        elif message.startswith("Destination buffer full"):
            text = f"the Amplitude SDK's retry buffer is full{suffix}"
        else:
            text = _describe(code, message)
            if insert_id in self._details:
                text = f"{text} ({self._details[insert_id]})"
        return self.mask(text)

    def mask(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text


def _describe(code: int, error: str) -> str:
    if code == HttpStatus.TIMEOUT.value and not error:
        return "no answer from Amplitude in time"  # the SDK reports a read timeout as 408
    if code > 0:
        return f"Amplitude answered {code}: {error}" if error else f"Amplitude answered {code}"
    return f"could not reach Amplitude: {error or 'network error'}"


def _event_details(body: Any) -> dict[int, str]:
    """What a 400 body says about each event of the request, by index ("invalid time")."""
    found: dict[int, list[str]] = {}
    if not isinstance(body, dict):
        return {}
    for section, label in (
        ("events_with_invalid_fields", "invalid"),
        ("events_with_missing_fields", "missing"),
        ("events_with_invalid_id_lengths", "id too short:"),
    ):
        fields = body.get(section)
        if isinstance(fields, dict):
            for field, indexes in fields.items():
                for index in indexes if isinstance(indexes, list) else ():
                    if isinstance(index, int):
                        found.setdefault(index, []).append(f"{label} {field}")
    silenced = body.get("silenced_events")
    for index in silenced if isinstance(silenced, list) else ():
        if isinstance(index, int):
            found.setdefault(index, []).append("device silenced")
    return {index: ", ".join(labels) for index, labels in found.items()}


class OutcomeStorage(InMemoryStorage):  # type: ignore[misc]  # the SDK ships no types
    """The SDK's in-memory buffer, telling `Outcomes` what it queues and hooking the workers."""

    def __init__(self, outcomes: Outcomes) -> None:
        super().__init__()
        self._outcomes = outcomes

    def setup(self, configuration: Any, workers: Any) -> None:
        super().setup(configuration, workers)
        _hook_workers(workers, self._outcomes)

    def push(self, event: Any, delay: int = 0) -> tuple[bool, str | None]:
        if event.retry and self._outcomes.abandoned(event["insert_id"]):
            return True, None  # its result was reported already: no retry
        accepted, message = super().push(event, delay=delay)
        if accepted and not event.retry:
            self._outcomes.queued(event["insert_id"])
        return accepted, message

    def nudge(self) -> None:
        """Start the SDK's consumer thread if retries wait and it has ended (an SDK race)."""
        if self.total_events and self.workers is not None:
            self.workers.start()


class OutcomeStorageProvider(StorageProvider):  # type: ignore[misc]  # the SDK ships no types
    """`Config(storage_provider=...)`: the one `OutcomeStorage` of one client."""

    def __init__(self, outcomes: Outcomes) -> None:
        self._outcomes = outcomes
        self.storage: OutcomeStorage | None = None

    def get_storage(self) -> OutcomeStorage:
        self.storage = OutcomeStorage(self._outcomes)
        return self.storage


def _hook_workers(workers: Any, outcomes: Outcomes) -> None:
    """Give a result to the events the SDK's sending code would drop silently."""
    processor = workers.response_processor
    process = processor.process_response
    send = workers.send

    def process_response(response: Any, events: list[Any]) -> None:
        if response.status != HttpStatus.SUCCESS:
            error = outcomes.mask(str(response.error))
            outcomes.attempt_failed(events, response.code, error, response.body)
        try:
            process(response, events)
        except InvalidAPIKeyError:
            # The SDK would log "Invalid API Key" and drop the events without a callback;
            # its own error text quotes the key, so it is not passed on.
            processor.callback(events, response.code, "Invalid API key")

    def send_and_report(events: list[Any]) -> None:
        try:
            send(events)
        except Exception as exc:  # noqa: BLE001 - the SDK would lose these events in a future
            error = outcomes.mask(f"{type(exc).__name__}: {exc}")
            process_response(Response(HttpStatus.UNKNOWN, {"error": error}), events)

    # Instance attributes shadow the methods on this client's objects only.
    processor.process_response = process_response
    workers.send = send_and_report
    workers.threads_pool = _ExitSafePool(workers.threads_pool)


class _ExitSafePool:
    """The SDK's thread pool, still usable while the interpreter exits.

    concurrent.futures refuses new work once threading's exit hooks have run, which is before
    atexit hooks such as analytics_sdk's exit flush (and some Pythons refuse new threads
    then). The SDK would drop what it is asked to send; the work runs on the calling thread
    instead: the integration's worker for a flush, the SDK's consumer thread for a retry.
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        try:
            future: Future[Any] = self._pool.submit(fn, *args, **kwargs)
            return future
        except RuntimeError as exc:
            # At exit the pool's own threads mark it shut down too; any other shutdown is
            # its client's, and the SDK's own handling applies.
            exiting = getattr(concurrent.futures.thread, "_shutdown", False)
            if not (exiting or "interpreter shutdown" in str(exc)):
                raise
        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - the future carries it, as in the pool
            future.set_exception(exc)
        return future

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        self._pool.shutdown(*args, **kwargs)
