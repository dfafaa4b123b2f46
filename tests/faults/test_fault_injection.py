"""One fault per scenario against a real data plane on 127.0.0.1, and then all of them.

Each scenario ends in `Scenario.settle()`: the faults stop, the client must still deliver,
and the ledger must balance — nothing lost, duplicates only from answers the client never
saw, every flush() true to its word, stats() telling the same story (see ledger.py).
"""

from __future__ import annotations

import itertools
import random
import time

import pytest
from support.servers import JsonDict

from faults.conftest import Scenario
from faults.injector import (
    POISON,
    STUCK,
    Fault,
    FaultInjector,
    rate_limited,
    resets,
    server_errors,
    stalls,
)
from faults.ledger import Accounts

SEED = 20240611
CLIENT_TIMEOUT = 0.3  # seconds: the client's per-request timeout where stalls are injected
STALL = 1.2  # seconds a stalled answer takes: four times the client's timeout
MAX_BODY = 20_000  # bytes of request body the data plane takes before it answers 413
OVERSIZED = 25_000  # bytes of padding: alone over MAX_BODY, under max_message_bytes
BIG = "big"  # marks the oversized messages


def kept_ids(scenario: Scenario) -> set[str]:
    return set(scenario.server.message_ids())


def reported_as(scenario: Scenario, reason: str) -> set[str]:
    return {i for report in scenario.ledger.reports if report.reason == reason for i in report.ids}


def only_marked_were_reported(
    scenario: Scenario, books: Accounts, marker: str, reason: str, count: int
) -> None:
    """The `count` messages carrying `marker` were reported as `reason`, never delivered;
    nothing else was reported, and nothing was delivered twice."""
    marked = scenario.ledger.accepted_with(marker)
    assert len(marked) == count
    assert books.reasons == {reason: count}
    assert reported_as(scenario, reason) == marked
    assert not marked & kept_ids(scenario)
    assert books.duplicates == 0


# Neither fault lets the server keep anything (a 5xx answers without keeping, a reset comes
# before the answer), so there is nothing to send twice.
@pytest.mark.parametrize(
    ("fault", "kind"),
    [(server_errors(0.3), "5xx"), (resets(0.3), "reset")],
    ids=["5xx", "connection_reset"],
)
def test_30_percent_of_requests_fail(scenario: Scenario, fault: Fault, kind: str) -> None:
    client = scenario.client(FaultInjector(SEED, fault), flush_at=50, max_retries=2)

    scenario.produce(client, 2_000, flush_every=250)
    books = scenario.settle(client)

    assert scenario.injector is not None
    assert scenario.injector.injected[kind] > 0
    assert set(books.reasons) <= {"retries_exhausted"}
    assert books.duplicates == 0


def test_429_with_retry_after(scenario: Scenario) -> None:
    client = scenario.client(FaultInjector(SEED, rate_limited(0.3, retry_after=1)), flush_at=50)

    scenario.produce(client, 400)
    books = scenario.settle(client)

    assert books.reported == 0  # default retries outlast a few seconds of 429s
    assert books.duplicates == 0
    pairs = itertools.pairwise(scenario.server.requests)
    waits = [b.received_at - a.received_at for a, b in pairs if a.status == 429]
    assert waits, "no 429 was injected: change the seed"
    assert min(waits) >= 0.95  # Retry-After: 1 honoured (the next attempt waits 1 s)




def test_stalls_past_the_client_timeout(scenario: Scenario) -> None:
    """A stalled answer comes after the client gave up: the server has the batch, the client
    sends it again. One batch stalls on every attempt: reported and delivered (3 times)."""
    injector = FaultInjector(SEED, stalls(0.2, STALL), stuck_delay=STALL)
    client = scenario.client(injector, flush_at=50, timeout=CLIENT_TIMEOUT, max_retries=2)

    def properties(i: int) -> JsonDict:
        return {"i": i, STUCK: True} if i == 300 else {"i": i}

    scenario.produce(client, 600, properties=properties)
    books = scenario.settle(client)

    assert injector.injected["stall"] > 0
    assert set(books.reasons) <= {"retries_exhausted"}
    stuck = scenario.ledger.accepted_with(STUCK)
    assert len(stuck) == 1
    assert books.explained >= 1  # the stuck batch: given up on, yet the server has it
    assert books.duplicates >= 2  # ... three times, one per attempt


def test_server_down_then_back_on_the_same_port(scenario: Scenario) -> None:
    client = scenario.client(flush_at=50, max_retries=12)
    port = scenario.server.server_address[1]

    scenario.produce(client, 500)
    down_at = time.monotonic()
    scenario.server.take_down()
    # Producing while down: the producers' own flush(0.2) calls must return False in time.
    scenario.produce(client, 500, flush_every=100)
    assert scenario.ledger.flush(client, 0.5) is False
    time.sleep(max(0.0, 1.0 - (time.monotonic() - down_at)))  # down for a second at least
    scenario.server.bring_back()
    assert scenario.server.server_address[1] == port
    scenario.produce(client, 500)
    books = scenario.settle(client)

    assert books.reported == 0  # 12 retries outlast a one-second outage
    assert books.duplicates == 0
    assert books.flushes[False] >= 1


def test_413_splits_until_every_fitting_message_is_delivered(scenario: Scenario) -> None:
    scenario.server.max_body = MAX_BODY
    client = scenario.client(flush_interval=60)
    rng = random.Random(SEED)
    oversized = set(rng.sample(range(500), 5))

    def properties(i: int) -> JsonDict:
        if i in oversized:
            return {"i": i, BIG: True, "pad": "x" * OVERSIZED}
        return {"i": i, "pad": "x" * rng.randrange(300, 1_500)}

    scenario.produce(client, 500, properties=properties)
    books = scenario.settle(client)

    only_marked_were_reported(scenario, books, BIG, "too_large", 5)
    kept = kept_ids(scenario)
    assert len(kept) == len(scenario.ledger.accepted) - 5  # everything that fits arrived
    kept_sizes = [len(r.body) for r in scenario.server.requests if r.status == 200]
    assert max(kept_sizes) <= MAX_BODY


def test_400_for_a_poisoned_message_costs_only_that_message(scenario: Scenario) -> None:
    client = scenario.client(FaultInjector(SEED, reject_poison=True), flush_interval=60)
    poisoned = set(random.Random(SEED).sample(range(1_000), 10))

    def properties(i: int) -> JsonDict:
        return {"i": i, POISON: True} if i in poisoned else {"i": i}

    scenario.produce(client, 1_000, properties=properties)
    books = scenario.settle(client)

    # Bisection never resends a half that was delivered: no duplicates either.
    only_marked_were_reported(scenario, books, POISON, "rejected_4xx", 10)


# threads, events per thread, and the share of requests that cost wall time (a 429 waits
# its Retry-After second, a stall the client's timeout): smaller in the bigger run, which
# is about volume and contention, so that it stays a matter of seconds.
CHAOS = [
    pytest.param(4, 500, 0.05, id="4x500"),
    pytest.param(8, 1_000, 0.015, id="8x1000", marks=pytest.mark.stress),
]


@pytest.mark.parametrize(("threads", "per_thread", "slow"), CHAOS)
def test_chaos(scenario: Scenario, threads: int, per_thread: int, slow: float) -> None:
    """Every fault at once, an outage in the middle, several producers, flushes as they go."""
    count = threads * per_thread
    injector = FaultInjector(
        SEED,
        server_errors(0.08),
        rate_limited(slow / 5, retry_after=1),
        resets(0.08),
        stalls(slow * 4 / 5, STALL),
        reject_poison=True,
    )
    scenario.server.max_body = MAX_BODY
    client = scenario.client(injector, flush_at=50, timeout=0.4, max_retries=6)
    rng = random.Random(SEED)
    poisoned = set(rng.sample(range(count), count // 200))
    oversized = set(rng.sample(range(count), count // 200)) - poisoned

    def properties(i: int) -> JsonDict:
        if i in poisoned:
            return {"i": i, POISON: True}
        if i in oversized:
            return {"i": i, BIG: True, "pad": "x" * OVERSIZED}
        return {"i": i, "pad": "x" * (i % 150)}  # 50 of these fit MAX_BODY, most of the time

    def outage() -> None:
        assert scenario.ledger.wait_accepted(count // 2, timeout=30)
        scenario.server.take_down()
        time.sleep(1.0)  # stay down for a second
        scenario.server.bring_back()

    scenario.produce(
        client, count, threads=threads, properties=properties, flush_every=100, alongside=outage
    )
    books = scenario.settle(client)

    assert set(books.reasons) <= {"retries_exhausted", "too_large", "rejected_4xx"}
    poison, big = scenario.ledger.accepted_with(POISON), scenario.ledger.accepted_with(BIG)
    kept = kept_ids(scenario)
    assert len(poison) == len(poisoned)
    assert len(big) == len(oversized)
    assert not (poison | big) & kept  # never delivered: refused, or given up on before
    assert reported_as(scenario, "rejected_4xx") <= poison
    assert reported_as(scenario, "too_large") <= big
