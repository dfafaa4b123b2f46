"""Exit and fork, in real subprocesses: atexit really runs, fork really forks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pytest
from support.processes import ROOT
from support.processes import run_script as run_support_script
from support.report import add_row
from support.servers import DataPlane, Reply


def run_script(source: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_support_script(source, *args, strict_warnings=True)


def test_events_tracked_without_flush_are_delivered_at_exit(
    data_plane: DataPlane, request: pytest.FixtureRequest
) -> None:
    result = run_script(
        """
        import atexit, sys, time
        atexit.register(lambda: print("exit flush took", time.monotonic() - ended))  # LIFO: last
        from analytics_sdk import Client
        client = Client("wk_test_key", sys.argv[1], flush_interval=60, shutdown_timeout=5.0)
        for i in range(10_000):
            client.track(f"user-{i % 50}", "Exited Without Flush", {"i": i})
        print("tracked")
        ended = time.monotonic()
        """,
        data_plane.url,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    took = float(result.stdout.split("exit flush took")[1])
    add_row(
        request.config,
        scenario="exit without flush, in memory (flush_interval=60)",
        sent_accepted="10000/10000",
        delivered=len(set(data_plane.message_ids())),
        reported=0,
        lost=10_000 - len(set(data_plane.message_ids())),
        duplicates=len(data_plane.events) - len(set(data_plane.message_ids())),
        requests=len(data_plane.requests),
    )
    assert took <= 5.0 + 0.5  # within shutdown_timeout (R1.1): a bound, not a speed target
    assert len(set(data_plane.message_ids())) == 10_000
    assert len(data_plane.events) == 10_000


def test_exit_with_the_data_plane_down_is_bounded_and_reports_the_loss() -> None:
    started = time.monotonic()
    result = run_script(
        """
        import atexit, sys
        lost = []
        atexit.register(lambda: print("reported", lost, flush=True))  # LIFO: runs after ours
        from analytics_sdk import Client
        client = Client("wk_test_key", "http://127.0.0.1:9", shutdown_timeout=1.0,
                        on_error=lambda error, messages: lost.append((error.reason, len(messages))))
        for i in range(500):
            client.track("u1", "Doomed")
        """
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 15
    assert "Traceback" not in result.stderr
    reported = eval(result.stdout.split("reported", 1)[1])
    assert sum(count for reason, count in reported if reason == "shutdown") == 500


def test_ctrl_c_during_the_exit_flush_prints_no_traceback(data_plane: DataPlane) -> None:
    data_plane.respond = lambda request: Reply(hang=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = textwrap.dedent(
        """
        import sys
        from analytics_sdk import Client
        client = Client("wk_test_key", sys.argv[1], shutdown_timeout=30, timeout=30)
        client.track("u1", "Hanging")
        print("exiting", flush=True)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, data_plane.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as process:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "exiting"
        time.sleep(0.5)  # let it reach the exit-time drain (the server holds the request)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
    assert "Traceback" not in stderr
    assert "KeyboardInterrupt" not in stderr


def test_a_forked_child_delivers_its_own_events_and_never_the_parents(
    data_plane: DataPlane,
) -> None:
    result = run_script(
        """
        import os, sys
        from analytics_sdk import Client
        client = Client("wk_test_key", sys.argv[1], flush_interval=60)
        for i in range(10):
            client.track("parent", "Before Fork", {"i": i})
        pid = os.fork()
        if pid == 0:
            client.track("child", "In Child", {"pid": os.getpid()})
            sys.exit(0)  # a normal exit: no flush call, atexit delivers
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status))
        client.track("parent", "After Fork")
        """,
        data_plane.url,
    )
    assert result.returncode == 0, result.stderr
    assert "child exit 0" in result.stdout
    events = Counter(event["event"] for event in data_plane.events)
    assert events == {"Before Fork": 10, "In Child": 1, "After Fork": 1}
    assert len(set(data_plane.message_ids())) == 12


def test_a_multiprocessing_fork_child_delivers_without_flushing(data_plane: DataPlane) -> None:
    result = run_script(
        """
        import multiprocessing, sys
        from analytics_sdk import Client
        client = Client("wk_test_key", sys.argv[1], flush_interval=60)
        client.track("parent", "Before")

        def work(n):
            client.track(f"worker-{n}", "In Worker")

        if __name__ == "__main__":
            context = multiprocessing.get_context("fork")
            workers = [context.Process(target=work, args=(n,)) for n in range(3)]
            for w in workers:
                w.start()
            for w in workers:
                w.join(30)
            print("codes", [w.exitcode for w in workers])
        """,
        data_plane.url,
    )
    assert result.returncode == 0, result.stderr
    assert "codes [0, 0, 0]" in result.stdout
    events = Counter(event["event"] for event in data_plane.events)
    assert events == {"Before": 1, "In Worker": 3}


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_while_a_batch_is_in_flight_does_not_deadlock_the_child(
    data_plane: DataPlane,
) -> None:
    data_plane.script = [Reply(delay=2.0)]  # the parent's first request is held
    result = run_script(
        """
        import os, sys, time
        from analytics_sdk import Client
        client = Client("wk_test_key", sys.argv[1])
        client.track("parent", "Held")
        time.sleep(0.5)  # the delivery thread is inside its request now
        pid = os.fork()
        if pid == 0:
            started = time.monotonic()
            client.track("child", "Free")
            ok = client.flush(timeout=3)
            print("child", ok, round(time.monotonic() - started, 1), flush=True)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status))
        """,
        data_plane.url,
    )
    assert result.returncode == 0, result.stderr
    assert "child exit 0" in result.stdout
    events = Counter(event["event"] for event in data_plane.events)
    assert events == {"Held": 1, "Free": 1}
