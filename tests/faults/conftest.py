"""The fault-injection harness: a misbehaving data plane, a ledger, and the report table.

Every scenario runs once per entry of `QUEUES`: extra client options that change where
accepted messages wait (memory, or the durable SQLite queue of `storage_path`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from support.report import add_row
from support.servers import DataPlane, JsonDict

from analytics_sdk import Client
from faults.injector import FaultInjector
from faults.ledger import Accounts, Ledger, account

QUEUES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "memory": lambda tmp: {},
    "sqlite": lambda tmp: {"storage_path": tmp / "queue.sqlite"},
}
SETTLE_TIMEOUT = 60.0  # seconds the final flush may take: a bound, not a performance goal
RECOVERY_EVENTS = 20


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries wait 0-10 ms and up instead of 0.5 s and up: same code path, shorter sleeps."""
    monkeypatch.setattr("analytics_sdk._transport.BACKOFF_BASE", 0.01)


@pytest.fixture(params=list(QUEUES))
def client_options(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Options every scenario's client gets on top of its own (one set per queue kind)."""
    options: dict[str, Any] = QUEUES[request.param](tmp_path)
    return options


@dataclass
class Scenario:
    """One client against one misbehaving server, with the books kept by a ledger."""

    name: str
    server: DataPlane
    ledger: Ledger
    base_options: dict[str, Any]
    config: pytest.Config  # where the report rows go (support.report)
    injector: FaultInjector | None = None
    clients: list[Client] = field(default_factory=list)

    def client(self, injector: FaultInjector | None = None, **options: Any) -> Client:
        """The scenario's client: `base_options`, then `options`; on_error is the ledger's."""
        assert not self.clients, "one client per scenario: stats() must match the ledger"
        self.injector = injector
        self.server.respond = injector
        merged = {**self.base_options, **options, "on_error": self.ledger.on_error}
        client = Client("wk_faults", self.server.url, **merged)
        self.clients.append(client)
        return client

    def produce(
        self,
        client: Client,
        count: int,
        *,
        threads: int = 1,
        properties: Callable[[int], JsonDict] = lambda i: {"i": i},
        flush_every: int = 0,
        flush_timeout: float = 0.2,
        alongside: Callable[[], None] | None = None,
    ) -> None:
        """Track `count` events from `threads` threads, each flushing (and checking that
        flush) every `flush_every` events, while one more thread flushes as it goes and
        `alongside` (an outage, say) runs on another."""
        done = threading.Event()
        errors: list[BaseException] = []

        def guarded(target: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                try:
                    target()
                except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
                    errors.append(exc)

            return run

        def producer(n: int) -> None:
            for i in range(n, count, threads):
                self.ledger.track(client, f"user-{n}", "Fault Tested", properties(i))
                if flush_every and i % flush_every == flush_every - 1:
                    self.ledger.flush(client, flush_timeout)

        def flusher() -> None:
            while not done.is_set():
                self.ledger.flush(client, flush_timeout)
                done.wait(0.02)

        workers = [threading.Thread(target=guarded(partial(producer, n))) for n in range(threads)]
        helpers = [threading.Thread(target=guarded(flusher))]
        if alongside is not None:
            helpers.append(threading.Thread(target=guarded(alongside)))
        for thread in [*helpers, *workers]:
            thread.start()
        for worker in workers:
            worker.join(60)
        done.set()
        for helper in helpers:
            helper.join(60)
        assert not any(t.is_alive() for t in [*workers, *helpers]), "a producer is stuck"
        if errors:
            raise errors[0]

    def settle(self, client: Client) -> Accounts:
        """End the faults, prove the client still works, and balance the books.

        The row goes into the report table before the books are asserted, so a failing
        scenario shows its numbers too.
        """
        settled = self.ledger.flush(client, SETTLE_TIMEOUT)
        if self.injector is not None:
            self.injector.enabled = False
        self.server.max_body = None
        if self.server.down:
            self.server.bring_back()
        recovered = [
            self.ledger.track(client, "user-after", "Recovered", {"i": i})
            for i in range(RECOVERY_EVENTS)
        ]
        recovery_flushed = self.ledger.flush(client, 5)
        idle = self.server.wait_idle(self.ledger.reached_server(), timeout=10)
        books = account(self.ledger, self.server, client.stats(), client.options.max_retries)
        _row(self, books)
        assert settled, f"flush({SETTLE_TIMEOUT}) did not settle everything"
        assert recovery_flushed, "the client did not recover once the faults ended"
        assert all(recovered), "the client refused calls once the faults ended"
        assert self.ledger.acknowledged(i for i in recovered if i), "recovery not delivered"
        assert idle, "the server never received every request the client sent"
        assert not books.problems, "\n".join(books.problems[:20])
        assert books.lost == 0
        assert client.shutdown(timeout=5), "shutdown had work left after a settled flush"
        return books


def _row(scenario: Scenario, books: Accounts) -> None:
    faults = dict(scenario.injector.injected) if scenario.injector else {}
    too_large = sum(1 for r in scenario.server.requests if r.status == 413)
    if too_large:
        faults["413"] = too_large
    add_row(
        scenario.config,
        scenario=scenario.name,
        sent_accepted=f"{books.sent}/{books.accepted}",
        delivered=books.delivered,
        reported=" ".join(
            [str(books.reported), *(f"{k}={v}" for k, v in sorted(books.reasons.items()))]
        ),
        lost=books.lost,
        duplicates=books.duplicates,
        reported_delivered=books.explained,
        requests=books.requests,
        faults=" ".join(f"{k}={v}" for k, v in sorted(faults.items())) or "-",
        flush_True_False=f"{books.flushes[True]}/{books.flushes[False]}",
    )


@pytest.fixture
def scenario(
    request: pytest.FixtureRequest, client_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Scenario]:
    ledger = Ledger()
    ledger.record_wire(monkeypatch)
    server = DataPlane().start()
    name = request.node.name.removeprefix("test_")
    harness = Scenario(name, server, ledger, client_options, request.config)
    try:
        yield harness
    finally:
        for client in harness.clients:
            client.shutdown(timeout=1)
        server.stop()
