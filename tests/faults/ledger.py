"""Where every message went: what the caller got, what the client saw, what the server kept.

Three views of one run, recorded independently:

- the caller's: every messageId `track()` returned (accepted) and every message passed to
  `on_error` with its reason (reported);
- the wire's: every HTTP attempt the client made, with the messageIds in its body and the
  answer the client got (a status, or the exception when it got none) — recorded around
  `requests.adapters.HTTPAdapter.send`, the call the SDK's transport makes;
- the server's: every request received and every batch it kept (2xx).

The wire view makes the books exact. The server may keep a batch whose answer the client
never saw (a stall past the client's timeout, a connection cut after the work was done);
the client then retries it (a duplicate) or gives up (reported *and* delivered). Both are
legitimate only when the wire shows that unanswered attempt, and `account()` checks that.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from support.servers import DataPlane, JsonDict

from analytics_sdk import AnalyticsError, Client, Stats

# The client retries these answers (DESIGN.md section 4); None is "no answer at all".
RETRY_STATUSES = frozenset({408, 429, *range(500, 600)})
# A batch refused with these is split until only the culprits are left (DESIGN.md section 4).
SPLIT_STATUSES = frozenset({400, 413})
# Reasons a message may end with although the server kept a copy the client never heard of.
GAVE_UP_REASONS = frozenset({"retries_exhausted", "shutdown"})
# flush(timeout) returning False must return about then; generous: a correctness bound.
FLUSH_LATE = 2.0  # seconds
FLUSH_EARLY = 0.01  # seconds of clock granularity


@dataclass(frozen=True)
class Attempt:
    """One HTTP request as the client saw it."""

    ids: tuple[str, ...]
    status: int | None  # None: no answer (timeout, reset, refused)
    problem: str = ""  # the exception's type when there was no answer

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status in RETRY_STATUSES

    @property
    def reached_server(self) -> bool:
        """The server read the request: it answered, or the client stopped waiting for it."""
        return self.status is not None or self.problem == "ReadTimeout"


@dataclass(frozen=True)
class Report:
    """One on_error call."""

    reason: str
    status: int | None
    ids: tuple[str, ...]


@dataclass(frozen=True)
class FlushCheck:
    """One flush(timeout) call and what was not settled when it returned True."""

    timeout: float
    elapsed: float  # seconds
    result: bool
    unsettled: tuple[str, ...]  # accepted before the call, neither delivered nor reported


@dataclass
class Accounts:
    """The books of one scenario; `problems` lists every broken promise in words."""

    sent: int = 0
    accepted: int = 0
    delivered: int = 0  # unique messageIds the server kept
    reported: int = 0  # accepted messages passed to on_error
    lost: int = 0
    duplicates: int = 0  # deliveries beyond the first per messageId
    explained: int = 0  # reported although the server kept an unanswered copy
    requests: int = 0
    flushes: Counter[bool] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


class Ledger:
    """Records the caller's and the wire's view of one client while a scenario runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._grew = threading.Condition(self._lock)
        self.sent = 0  # calls made
        self.accepted: dict[str, JsonDict] = {}  # messageId returned -> its properties
        self.duplicate_ids: list[str] = []  # a messageId returned twice (never legitimate)
        self.reports: list[Report] = []
        self.attempts: list[Attempt] = []
        self.flushes: list[FlushCheck] = []
        self._acknowledged: set[str] = set()
        self._reported: set[str] = set()

    # -- the caller's view ---------------------------------------------------------------

    def track(
        self, client: Client, user_id: str, event: str, properties: JsonDict | None = None
    ) -> str | None:
        """client.track(...), with the returned messageId written down."""
        message_id = client.track(user_id, event, properties)
        with self._grew:
            self.sent += 1
            if message_id is not None:
                if message_id in self.accepted:
                    self.duplicate_ids.append(message_id)
                self.accepted[message_id] = properties or {}
                self._grew.notify_all()
        return message_id

    def on_error(self, error: AnalyticsError, messages: list[dict[str, Any]]) -> None:
        """The client's on_error callback."""
        ids = tuple(str(message.get("messageId")) for message in messages)
        with self._lock:
            self.reports.append(Report(error.reason, getattr(error, "status", None), ids))
            self._reported.update(ids)

    def accepted_with(self, mark: str) -> set[str]:
        """The accepted messageIds whose properties have `mark` set to true."""
        with self._lock:
            return {i for i, properties in self.accepted.items() if properties.get(mark) is True}

    def wait_accepted(self, count: int, timeout: float) -> bool:
        """Block until `count` calls were accepted (producers are on other threads)."""
        deadline = time.monotonic() + timeout
        with self._grew:
            while len(self.accepted) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._grew.wait(remaining)
            return True

    def flush(self, client: Client, timeout: float) -> bool:
        """client.flush(timeout), checking its promise the moment it returns."""
        with self._lock:
            before = list(self.accepted)
        started = time.monotonic()
        result = client.flush(timeout)
        elapsed = time.monotonic() - started
        with self._lock:
            settled = self._acknowledged | self._reported
            unsettled = tuple(i for i in before if i not in settled) if result else ()
            self.flushes.append(FlushCheck(timeout, elapsed, result, unsettled))
        return result

    # -- the wire's view -----------------------------------------------------------------

    def record_wire(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Record every batch request the client makes, and the answer it gets.

        The SDK's transport binds `HTTPAdapter.send` when it is created, so this must run
        before the client sends its first batch; the code path stays the SDK's own.
        """
        original = requests.adapters.HTTPAdapter.send

        def send(
            adapter: requests.adapters.HTTPAdapter,
            request: requests.PreparedRequest,
            *args: Any,
            **kwargs: Any,
        ) -> requests.Response:
            ids = _batch_ids(request)
            if ids is None:
                return original(adapter, request, *args, **kwargs)
            try:
                response = original(adapter, request, *args, **kwargs)
                response.content  # noqa: B018 - a body cut short is no answer either
            except Exception as exc:
                self._attempt(Attempt(ids, None, type(exc).__name__))
                raise
            self._attempt(Attempt(ids, response.status_code))
            return response

        monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)

    def _attempt(self, attempt: Attempt) -> None:
        with self._lock:
            self.attempts.append(attempt)
            if attempt.acknowledged:
                self._acknowledged.update(attempt.ids)

    def reached_server(self) -> int:
        with self._lock:
            return sum(1 for attempt in self.attempts if attempt.reached_server)

    def acknowledged(self, ids: Iterable[str]) -> bool:
        with self._lock:
            return all(i in self._acknowledged for i in ids)


def _batch_ids(request: requests.PreparedRequest) -> tuple[str, ...] | None:
    """The messageIds in a /v1/batch body; None for any other request."""
    if not (request.url or "").endswith("/v1/batch") or not isinstance(request.body, bytes):
        return None
    body = request.body
    if request.headers.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    return tuple(message["messageId"] for message in json.loads(body)["batch"])


def account(ledger: Ledger, server: DataPlane, stats: Stats, max_retries: int) -> Accounts:
    """Balance the three views once everything is settled and the server is idle."""
    books = Accounts()
    problems = books.problems
    accepted = ledger.accepted
    books.sent, books.accepted = ledger.sent, len(accepted)
    if ledger.duplicate_ids:
        problems.append(f"track() returned a messageId twice: {ledger.duplicate_ids[:3]}")

    # The caller's view: one report at most per accepted message.
    reported: dict[str, str] = {}
    refused: Counter[str] = Counter()  # calls rejected before they were accepted
    for report in ledger.reports:
        for message_id in report.ids:
            if message_id not in accepted:
                refused[report.reason] += 1
            elif message_id in reported:
                problems.append(f"{message_id} reported twice ({reported[message_id]}, "
                                f"{report.reason})")  # fmt: skip
            else:
                reported[message_id] = report.reason
    for report in ledger.reports:
        if report.status in SPLIT_STATUSES and len(report.ids) != 1:
            problems.append(f"HTTP {report.status} reported for {len(report.ids)} messages "
                            "at once: the batch was not split down to the culprit")  # fmt: skip
        if report.reason == "retries_exhausted":
            tries = sum(1 for a in ledger.attempts if a.ids == report.ids and a.retryable)
            if tries != max_retries + 1:
                problems.append(f"a batch of {len(report.ids)} was given up on after {tries} "
                                f"failed attempt(s), not {max_retries + 1}")  # fmt: skip
    books.reported = len(reported)
    books.reasons = Counter(reported.values())
    if sum(refused.values()) != ledger.sent - len(accepted):
        problems.append(f"{ledger.sent - len(accepted)} call(s) returned None, but on_error "
                        f"reported {sum(refused.values())} refused call(s)")  # fmt: skip

    # The wire's view: acknowledged once at most, never sent again after, never reported.
    acknowledged: Counter[str] = Counter()
    unanswered: Counter[str] = Counter()
    last_attempt: dict[str, int] = {}
    acknowledged_at: dict[str, int] = {}
    for n, attempt in enumerate(ledger.attempts):
        for message_id in attempt.ids:
            last_attempt[message_id] = n
            if attempt.acknowledged:
                acknowledged[message_id] += 1
                acknowledged_at[message_id] = n
            elif attempt.status is None:
                unanswered[message_id] += 1
    for message_id, times in acknowledged.items():
        if times > 1:
            problems.append(f"{message_id} was acknowledged {times} times (sent again)")
        elif last_attempt[message_id] != acknowledged_at[message_id]:
            problems.append(f"{message_id} was sent again after a 2xx")
        if message_id in reported:
            problems.append(f"{message_id} was acknowledged and reported ({reported[message_id]})")

    # The server's view: what it kept, and every copy of each message it was sent.
    with server.lock:
        requests_seen = list(server.requests)
        kept_batches = list(server.batches)
    deliveries = Counter(message["messageId"] for batch in kept_batches for message in batch)
    copies: dict[str, list[JsonDict]] = defaultdict(list)
    for request in requests_seen:
        for message in request.batch:
            copies[message["messageId"]].append(message)
    books.requests = len(requests_seen)
    books.delivered = sum(1 for message_id in deliveries if message_id in accepted)
    phantoms = [message_id for message_id in deliveries if message_id not in accepted]
    if phantoms:
        problems.append(f"the server kept {len(phantoms)} message(s) never accepted: "
                        f"{phantoms[:3]}")  # fmt: skip
    lost = [i for i in accepted if i not in deliveries and i not in reported]
    books.lost = len(lost)
    if lost:
        problems.append(f"lost {len(lost)} accepted message(s), e.g. {lost[:3]}")
    not_kept = [i for i in acknowledged if i not in deliveries]
    if not_kept:
        problems.append(f"the client saw a 2xx for {len(not_kept)} message(s) the server "
                        f"never kept, e.g. {not_kept[:3]}")  # fmt: skip

    # Every copy the server kept beyond an acknowledged one needs an unanswered attempt.
    for message_id, kept in deliveries.items():
        books.duplicates += kept - 1
        unseen = kept - (1 if acknowledged[message_id] else 0)
        if unseen > unanswered[message_id]:
            problems.append(f"{message_id}: the server kept {kept} cop(ies), the client saw "
                            f"{acknowledged[message_id]} 2xx and {unanswered[message_id]} "
                            "unanswered attempt(s)")  # fmt: skip
        reason = reported.get(message_id)
        if reason is not None:
            books.explained += 1
            if reason not in GAVE_UP_REASONS:
                problems.append(f"{message_id} reported as {reason} but delivered")
    for message_id, versions in copies.items():
        first = _without_sent_at(versions[0])
        if any(_without_sent_at(v) != first for v in versions[1:]):
            problems.append(f"{message_id}: copies differ beyond sentAt")

    # flush(timeout) kept its promise every time.
    for check in ledger.flushes:
        books.flushes[check.result] += 1
        if check.result and check.unsettled:
            problems.append(f"flush({check.timeout}) returned True with "
                            f"{len(check.unsettled)} message(s) unsettled, "
                            f"e.g. {check.unsettled[:3]}")  # fmt: skip
        if not check.result and not (
            check.timeout - FLUSH_EARLY <= check.elapsed <= check.timeout + FLUSH_LATE
        ):
            problems.append(f"flush({check.timeout}) returned False after "
                            f"{check.elapsed:.2f} s")  # fmt: skip

    # stats() tells the same story.
    exhausted = sum(1 for report in ledger.reports if report.reason == "retries_exhausted")
    retryable = sum(1 for attempt in ledger.attempts if attempt.retryable)
    expected = {
        "accepted": len(accepted),
        "delivered": sum(acknowledged.values()),
        "failed": len(reported),
        "queued": 0,
        "retried": retryable - exhausted,
        "dropped": dict(books.reasons + refused),
    }
    actual = {
        "accepted": stats.accepted,
        "delivered": stats.delivered,
        "failed": stats.failed,
        "queued": stats.queued,
        "retried": stats.retried,
        "dropped": stats.dropped,
    }
    for key, value in expected.items():
        if actual[key] != value:
            problems.append(f"stats().{key} is {actual[key]}, the ledger says {value}")
    return books


def _without_sent_at(message: JsonDict) -> JsonDict:
    return {key: value for key, value in message.items() if key != "sentAt"}
