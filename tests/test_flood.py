"""A flood: a producer far faster than a slow data plane (LESSONS 7, R7.1-R7.3; DESIGN 7).

The producer runs in its own process, so the memory measured is its own: 200 k tracks of
~1 KB against a data plane on 127.0.0.1 that takes a quarter of a second per batch. The
queue must stay within max_queue_bytes, every overflow must be a counted, reported
`queue_full` (logged a few times, not thousands), and once the data plane speeds up,
everything accepted must arrive, exactly once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections import Counter
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import MakeClient
from support.processes import ROOT
from support.servers import DataPlane, Reply, Request

TOTAL = 200_000
MAX_QUEUE_BYTES = 16 * 1024 * 1024
# Peak RSS growth allowed beyond MAX_QUEUE_BYTES: the batch in flight (max_batch_bytes before
# gzip, plus the copies requests and zlib make), the accepted-seq array and per-object
# overhead (~1 MB at most), and what malloc keeps after 200 k short-lived 1 KB messages.
# An unbounded queue needs ~200 MB here (see the module docstring), so this still fails it.
ALLOWANCE = 16 * 1024 * 1024
SLOW_REPLY = 0.25  # seconds per batch until the producer is done: ~400 messages/s drain

PRODUCER = textwrap.dedent(
    """
    import array, gc, json, logging, sys, time
    from collections import Counter

    from analytics_sdk import Client

    url, total, max_queue_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


    def memory(field):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # kB
        raise LookupError(field)


    class Lines(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.count, self.first = 0, []

        def emit(self, record):
            self.count += 1
            if len(self.first) < 20:  # a flood of lines must not inflate the peak itself
                self.first.append(record.getMessage())


    lines = Lines()
    logging.getLogger("analytics_sdk").addHandler(lines)
    reported = Counter()
    client = Client(
        "wk_flood_test", url, max_queue_bytes=max_queue_bytes,
        on_error=lambda error, messages: reported.update({error.reason: len(messages)}),
    )
    properties = {"seq": -1, "sku": "SKU-0001", "note": "n" * 880, "price": 9.99}
    # Warm up: thread, transport and HTTP session exist before the baseline.
    warm_up = client.track("u-flood", "Warm Up", properties)
    assert warm_up is not None and client.flush(timeout=10)
    gc.collect()
    try:  # "5" resets VmHWM to the current RSS (Linux 4.0+): the peak is the flood's own
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    baseline = memory("VmRSS")
    accepted = array.array("l")
    rejected = 0
    started = time.monotonic()
    for seq in range(total):
        properties["seq"] = seq  # serialized at call time: changing it after is fine
        if client.track("u-flood", "Flooded", properties) is None:
            rejected += 1
        else:
            accepted.append(seq)
    seconds = time.monotonic() - started
    peak = memory("VmHWM")
    stats = client.stats()
    print(json.dumps({
        "baseline": baseline, "peak": peak, "hwm_reset": hwm_reset, "seconds": seconds,
        "accepted": len(accepted), "rejected": rejected, "reported": dict(reported),
        "dropped": stats.dropped, "stats_accepted": stats.accepted,
        "lines": lines.count, "first_lines": lines.first,
    }), flush=True)

    sys.stdin.readline()  # the test speeds the data plane up, then says go
    flushed = client.flush(timeout=60)
    stats = client.stats()
    print(json.dumps({
        "flushed": flushed, "delivered": stats.delivered, "failed": stats.failed,
        "queued": stats.queued, "dropped": stats.dropped, "accepted_seqs": accepted.tolist(),
        "lines": lines.count,
    }), flush=True)
    client.shutdown()
    """
)


class Producer:
    """The producer process: JSON lines out, a "go" line in; every wait bounded."""

    def __init__(self, data_plane: DataPlane, stderr: IO[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", PRODUCER, data_plane.url, str(TOTAL), str(MAX_QUEUE_BYTES)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put("")  # end of output

    def report(self, timeout: float) -> dict[str, Any]:
        line = self._lines.get(timeout=timeout)
        assert line, f"the producer exited early (status {self.process.wait(timeout=5)})"
        report: dict[str, Any] = json.loads(line)
        return report

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._reader.join(timeout=10)  # it reads to the end of output, then the pipes close
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


@pytest.mark.stress
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc")
def test_flood_stays_bounded_reports_every_drop_and_recovers(data_plane: DataPlane) -> None:
    slow = threading.Event()
    slow.set()

    def respond(_request: Request) -> Reply | None:
        return Reply(delay=SLOW_REPLY) if slow.is_set() else None

    data_plane.respond = respond
    with tempfile.TemporaryFile("w+") as stderr:
        producer = Producer(data_plane, stderr)
        try:
            flood = producer.report(timeout=60)
            slow.clear()  # the data plane recovers
            producer.go()
            final = producer.report(timeout=90)
            assert producer.process.wait(timeout=30) == 0
        finally:
            producer.stop()
            stderr.seek(0)
            errors = stderr.read()
    assert "Traceback" not in errors, errors

    # Bounded: the queue's bytes, not the 200 k messages, decide the peak.
    growth = flood["peak"] - flood["baseline"]
    summary = (
        f"RSS baseline {flood['baseline'] / 2**20:.1f} MiB, peak {flood['peak'] / 2**20:.1f} "
        f"MiB (VmHWM reset: {flood['hwm_reset']}), growth {growth / 2**20:.1f} MiB, "
        f"max_queue_bytes {MAX_QUEUE_BYTES / 2**20:.0f} MiB; accepted {flood['accepted']}, "
        f"rejected {flood['rejected']} in {flood['seconds']:.1f} s; "
        f"log lines {flood['lines']}"
    )
    assert growth <= MAX_QUEUE_BYTES + ALLOWANCE, summary
    # Every overflow is rejected, counted, reported: the same number everywhere.
    assert flood["accepted"] + flood["rejected"] == TOTAL
    assert flood["stats_accepted"] == flood["accepted"] + 1, summary  # + the warm-up
    assert flood["dropped"] == {"queue_full": flood["rejected"]}
    assert flood["reported"] == {"queue_full": flood["rejected"]}
    assert flood["rejected"] > TOTAL // 2, "the data plane kept up: no flood happened"
    # Rate-limited: one line per reason per 10 s window, not one per drop.
    allowed = 1 + math.ceil(flood["seconds"] / 10)
    assert 1 <= flood["lines"] <= allowed, summary
    assert all("queue_full" in line for line in flood["first_lines"]), flood["first_lines"]

    # Recovery: everything accepted is delivered, exactly once.
    assert final["flushed"] is True
    delivered_seqs = [e["properties"]["seq"] for e in data_plane.events if e["event"] == "Flooded"]
    assert sorted(delivered_seqs) == final["accepted_seqs"]
    assert len({e["messageId"] for e in data_plane.events}) == len(data_plane.events)
    assert final["delivered"] == flood["accepted"] + 1
    assert (final["failed"], final["queued"]) == (0, 0)
    assert final["dropped"] == {"queue_full": flood["rejected"]}
    assert final["delivered"] + sum(final["dropped"].values()) == TOTAL + 1
    assert final["lines"] == flood["lines"]  # nothing more went wrong
    # The bound was the bytes: the queue filled up before it rejected anything.
    message_bytes = len(json.dumps(data_plane.events[-1], separators=(",", ":")))
    assert flood["accepted"] * message_bytes >= MAX_QUEUE_BYTES * 0.9
    assert Counter(e["event"] for e in data_plane.events) == {
        "Warm Up": 1,
        "Flooded": flood["accepted"],
    }


def test_count_bound_with_the_data_plane_paused(
    make_client: MakeClient, data_plane: DataPlane, caplog: pytest.LogCaptureFixture
) -> None:
    """LESSONS R7.3 as written: max_queue_size=10, the sink paused, 1,000 tracks."""
    resumed = threading.Event()

    def respond(_request: Request) -> Reply | None:
        resumed.wait(timeout=30)  # paused: the request waits (bounded) until resumed
        return None

    data_plane.respond = respond
    reported: Counter[str] = Counter()
    client = make_client(
        max_queue_size=10,
        flush_at=10,
        on_error=lambda error, messages: reported.update({error.reason: len(messages)}),
    )

    results = [client.track("u-paused", "Paused", {"seq": seq}) for seq in range(1000)]
    accepted = [seq for seq, result in enumerate(results) if result is not None]
    resumed.set()

    assert client.flush(timeout=20)
    rejected = 1000 - len(accepted)
    assert len(accepted) <= 2 * 10  # the queue, and at most one batch in flight
    assert client.stats().dropped == {"queue_full": rejected}
    assert reported == {"queue_full": rejected}
    assert sorted(e["properties"]["seq"] for e in data_plane.events) == accepted
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines  # one line for 980-odd drops
    assert "queue_full" in lines[0]
