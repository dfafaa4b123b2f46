"""Crashes with storage_path, in real subprocesses: kill -9 mid-burst, exit with the data
plane down. Whatever a call accepted arrives after a restart; duplicates share a messageId."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import pytest
from support.processes import ROOT
from support.processes import run_script as run_support_script
from support.report import add_row
from support.servers import DataPlane, Reply
from support.storage import send_leftovers

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

# Tracks as fast as it can; writes each messageId to stdout once track() has returned it.
PRODUCER = """
import os, sys
from analytics_sdk import Client
client = Client("wk_test_key", sys.argv[1], storage_path=sys.argv[2], flush_at=50)
n = 0
while True:
    message_id = client.track(f"user-{n % 7}", "Crash Test", {"n": n, "pid": os.getpid()})
    if message_id is not None:
        os.write(1, (message_id + "\\n").encode())
    n += 1
"""


def start_producer(url: str, queue_file: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(PRODUCER), url, str(queue_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def kill_after(process: subprocess.Popen[bytes], accepted: int, timeout: float = 30) -> list[str]:
    """Read messageIds until `accepted` came, kill -9, then read what was written before."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"\n") < accepted and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    data += process.stdout.read()
    process.stdout.close()
    ids = data.decode().split("\n")
    return [i for i in ids[:-1] if i]  # a last id cut in half by the kill is not complete


def duplicates_are_identical(data_plane: DataPlane) -> int:
    """How many deliveries were repeats; asserts each repeat is the same message."""
    seen: dict[str, list[dict[str, object]]] = defaultdict(list)
    for event in data_plane.events:
        seen[str(event["messageId"])].append(event)
    repeats = 0
    for copies in seen.values():
        first = {k: v for k, v in copies[0].items() if k != "sentAt"}
        for other in copies[1:]:
            assert {k: v for k, v in other.items() if k != "sentAt"} == first
            repeats += 1
    return repeats


@pytest.mark.parametrize("server", ["fast", "slow"])
def test_kill_9_during_heavy_tracking_loses_nothing_accepted(
    data_plane: DataPlane, tmp_path: Path, server: str, request: pytest.FixtureRequest
) -> None:
    """Three producers in a row on one file, each killed mid-burst; then a clean client."""
    if server == "slow":  # a backlog builds up in the file: most rows wait for the restart
        data_plane.respond = lambda request: Reply(delay=0.05)
    queue_file = tmp_path / "events.sqlite"
    accepted: list[str] = []
    for round_ in range(3):
        producer = start_producer(data_plane.url, queue_file)
        accepted += kill_after(producer, accepted=1500 + 700 * round_)

    data_plane.respond = None
    send_leftovers(data_plane.url, queue_file, timeout=30)
    delivered = set(data_plane.message_ids())
    lost = set(accepted) - delivered
    duplicates = duplicates_are_identical(data_plane)
    add_row(
        request.config,
        scenario=f"kill -9 x3 mid-burst, storage_path, {server} server",
        sent_accepted=f"{len(accepted)}/{len(accepted)}",
        delivered=len(set(accepted) & delivered),
        reported=0,
        lost=len(lost),
        duplicates=duplicates,
        requests=len(data_plane.requests),
    )
    assert not lost, f"{len(lost)} of {len(accepted)} accepted messages never arrived"


def test_exit_with_the_data_plane_down_reports_and_keeps_for_the_next_run(
    data_plane: DataPlane, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    queue_file = tmp_path / "events.sqlite"
    started = time.monotonic()
    result = run_support_script(
        """
        import atexit, json, sys
        reported = []
        atexit.register(lambda: print(json.dumps(reported), flush=True))  # LIFO: after ours
        from analytics_sdk import Client
        client = Client("wk_test_key", "http://127.0.0.1:9", storage_path=sys.argv[1],
                        shutdown_timeout=1.0,
                        on_error=lambda e, ms: reported.append([e.reason, len(ms), str(e)]))
        ids = [client.track("u1", "Down", {"n": n}) for n in range(200)]
        print(json.dumps(ids), flush=True)
        """,
        str(queue_file),
        strict_warnings=True,
    )
    elapsed = time.monotonic() - started

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 20  # the exit flush is bounded by shutdown_timeout (1 s), not hung
    ids_line, reported_line = result.stdout.strip().splitlines()[-2:]
    ids = json.loads(ids_line)
    reported = json.loads(reported_line)
    assert sum(count for reason, count, _ in reported if reason == "shutdown") == 200
    assert all("stay in storage_path" in text for _, _, text in reported)

    # The next run, with the data plane up, sends exactly those.
    assert send_leftovers(data_plane.url, queue_file).recovered == 200
    add_row(
        request.config,
        scenario="exit with the data plane down, storage_path, then a restart",
        sent_accepted=f"{len(ids)}/{len(ids)}",
        delivered=f"{len(set(data_plane.message_ids()))} (next run)",
        reported=f"{sum(c for r, c, _ in reported if r == 'shutdown')} shutdown (kept)",
        lost=len(set(ids) - set(data_plane.message_ids())),
        duplicates=duplicates_are_identical(data_plane),
        requests=len(data_plane.requests),
    )
    assert sorted(data_plane.message_ids()) == sorted(ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_that_exits_normally_leaves_the_parents_file_intact(
    data_plane: DataPlane, tmp_path: Path
) -> None:
    """The child inherits the parent's SQLite connection. When it exits normally (atexit,
    interpreter teardown), that copy must not close: closing would checkpoint and unlink
    the log the parent is still writing. The parent then crashes; nothing may be missing."""
    queue_file = tmp_path / "events.sqlite"
    data_plane.respond = lambda request: Reply(hang=True)  # rows stay in the file
    result = run_support_script(
        """
        import json, os, sys, gc
        from analytics_sdk import Client
        client = Client("wk_test_key", sys.argv[1], storage_path=sys.argv[2], timeout=30)
        ids = [client.track("parent", "Before") for _ in range(50)]
        pid = os.fork()
        if pid == 0:
            client.track("child", "In the child")
            del client
            gc.collect()
            sys.exit(0)  # a normal exit: atexit hooks and interpreter teardown run
        os.waitpid(pid, 0)
        ids += [client.track("parent", "After") for _ in range(50)]
        print(json.dumps(ids), flush=True)
        os._exit(0)  # the parent crashes: only the file can tell what it accepted
        """,
        data_plane.url,
        str(queue_file),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    ids = json.loads(result.stdout.strip().splitlines()[-1])

    data_plane.respond = None
    send_leftovers(data_plane.url, queue_file)
    parents = {e["messageId"] for e in data_plane.events if e["userId"] == "parent"}
    assert parents == set(ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forks_during_heavy_tracking_never_hang_a_child_in_sqlite(
    data_plane: DataPlane, tmp_path: Path
) -> None:
    """A fork while another thread is inside SQLite would hand the child SQLite's global
    mutex, locked: the child's first SQLite call (its own client's file, Django's sqlite
    backend) then hangs for ever. The fork hook keeps our threads out of SQLite meanwhile."""
    result = run_support_script(
        """
        import os, sqlite3, sys, threading, time
        from analytics_sdk import Client
        client = Client("wk_test_key", sys.argv[1], storage_path=sys.argv[2], flush_at=20)
        stop = threading.Event()

        def produce():
            while not stop.is_set():
                client.track("u1", "Busy", {"pad": "x" * 100})

        producers = [threading.Thread(target=produce) for _ in range(2)]
        for thread in producers:
            thread.start()
        hung = 0
        for _ in range(120):
            pid = os.fork()
            if pid == 0:
                sqlite3.connect(":memory:").execute("SELECT 1").fetchall()
                os._exit(0)
            deadline = time.monotonic() + 10
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    hung += 1
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.002)
        stop.set()
        for thread in producers:
            thread.join()
        print("hung", hung, flush=True)
        client.shutdown(timeout=5)
        """,
        data_plane.url,
        str(tmp_path / "events.sqlite"),
        timeout=240,
    )
    assert "hung 0" in result.stdout, (result.stdout, result.stderr[-2000:])
