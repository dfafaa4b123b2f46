"""Seeded faults for DataPlane.respond: the same seed misbehaves the same way per request."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from support.servers import JsonDict, Reply, Request

POISON = "poison"  # a message with properties.poison == true makes its whole batch a 400
STUCK = "stuck"  # one with properties.stuck == true stalls its batch on every attempt


@dataclass(frozen=True)
class Fault:
    """One kind of misbehaviour, applied to a `rate` (0..1) of the requests."""

    name: str
    rate: float
    reply: Callable[[random.Random], Reply]


def server_errors(rate: float) -> Fault:
    return Fault("5xx", rate, lambda rng: Reply(status=rng.choice((500, 502, 503))))


def rate_limited(rate: float, retry_after: int = 1) -> Fault:
    """429 with Retry-After in seconds (keep it at 1: every one costs the suite a second)."""
    return Fault(
        "429", rate, lambda rng: Reply(status=429, headers={"Retry-After": str(retry_after)})
    )


def resets(rate: float) -> Fault:
    return Fault("reset", rate, lambda rng: Reply(reset=True))


def stalls(rate: float, delay: float) -> Fault:
    """The server records the batch but answers `delay` seconds late (past the client's
    timeout): the client retries what the server already has."""
    return Fault("stall", rate, lambda rng: Reply(delay=delay))


def marked(message: JsonDict, mark: str) -> bool:
    properties = message.get("properties")
    return isinstance(properties, dict) and properties.get(mark) is True


class FaultInjector:
    """A `DataPlane.respond` hook: draws one number per request from a seeded generator.

    A request carrying a STUCK message stalls by `stuck_delay` seconds, every time.
    Otherwise faults are tried in order, each taking its `rate` of the draws; a request
    that draws no fault is still refused with 400 when it carries a POISON message and
    `reject_poison` is on. `enabled = False` switches everything off.
    """

    def __init__(
        self,
        seed: int,
        *faults: Fault,
        reject_poison: bool = False,
        stuck_delay: float = 0.0,
    ) -> None:
        assert sum(fault.rate for fault in faults) <= 1.0
        self._rng = random.Random(seed)
        self._faults = faults
        self._lock = threading.Lock()  # the server answers on a thread per connection
        self.reject_poison = reject_poison
        self.stuck_delay = stuck_delay
        self.enabled = True
        self.injected: Counter[str] = Counter()  # fault name -> requests it hit

    def __call__(self, request: Request) -> Reply | None:
        batch = request.batch
        poisoned = self.reject_poison and any(marked(m, POISON) for m in batch)
        with self._lock:
            if not self.enabled:
                return None
            reply: Reply | None = None
            if self.stuck_delay and any(marked(m, STUCK) for m in batch):
                self.injected["stuck"] += 1
                reply = Reply(delay=self.stuck_delay)
            else:
                draw = self._rng.random()
                floor = 0.0
                for fault in self._faults:
                    floor += fault.rate
                    if draw < floor:
                        self.injected[fault.name] += 1
                        reply = fault.reply(self._rng)
                        break
            if poisoned and (reply is None or (200 <= reply.status < 300 and not reply.reset)):
                # A slow server still refuses a poisoned batch: it never keeps one.
                self.injected["400"] += 1
                delay = 0.0 if reply is None else reply.delay
                reply = Reply(status=400, body="invalid message in batch", delay=delay)
            return reply
