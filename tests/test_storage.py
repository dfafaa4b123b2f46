"""storage_path: the durable SQLite queue (DESIGN 7). In-process behaviour; the crash and
kill -9 cases, which need processes of their own, are in tests/e2e/test_durability.py."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeClient
from support.processes import run_script
from support.servers import DataPlane, Reply
from support.storage import rows_in, send_leftovers

from analytics_sdk import Client, ConfigurationError, Reason
from analytics_sdk.errors import AnalyticsError

pytestmark = pytest.mark.usefixtures("fast_retries")


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("analytics_sdk._transport.BACKOFF_BASE", 0.01)


@pytest.fixture
def queue_file(tmp_path: Path) -> Path:
    return tmp_path / "queue" / "events.sqlite"


class Reports:
    """An on_error that keeps what it is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[AnalyticsError, list[dict[str, Any]]]] = []

    def __call__(self, error: AnalyticsError, messages: list[dict[str, Any]]) -> None:
        self.calls.append((error, messages))

    def ids(self, reason: str) -> list[str]:
        return [m["messageId"] for e, ms in self.calls if e.reason == reason for m in ms]


@pytest.fixture
def hung(data_plane: DataPlane) -> DataPlane:
    """The data plane takes requests and never answers (until the test ends)."""
    data_plane.respond = lambda request: Reply(hang=True)
    return data_plane


# -- the happy path --------------------------------------------------------------------------


def test_delivered_messages_leave_the_file(
    make_client: MakeClient, data_plane: DataPlane, queue_file: Path
) -> None:
    client = make_client(storage_path=queue_file, flush_at=10)
    ids = [client.track("u1", "Stored", {"n": n}) for n in range(25)]

    assert client.flush(timeout=5) is True
    assert data_plane.message_ids() == ids
    assert [len(b) for b in data_plane.batches] == [10, 10, 5]
    client.shutdown(timeout=1)
    assert rows_in(queue_file) == []
    stats = client.stats()
    assert (stats.accepted, stats.delivered, stats.queued, stats.recovered) == (25, 25, 0, 0)


def test_what_a_client_left_is_sent_by_the_next_one_in_order(
    hung: DataPlane, queue_file: Path
) -> None:
    reports = Reports()
    first = Client("wk_test", hung.url, storage_path=queue_file, on_error=reports, timeout=1.0)
    ids = [first.track("u1", "Kept", {"n": n}) for n in range(30)]
    assert first.shutdown(timeout=0.3) is False

    # Reported as not delivered in time, and kept: the report says where.
    assert sorted(reports.ids(Reason.SHUTDOWN)) == sorted(i for i in ids if i)
    assert "stay in storage_path" in str(reports.calls[0][0])
    assert [m["messageId"] for m in rows_in(queue_file)] == ids

    hung.respond = None
    second = Client("wk_test", hung.url, storage_path=queue_file)
    try:
        assert second.stats().recovered == 30
        assert second.flush(timeout=5) is True  # the leftovers count as accepted here
        delivered = hung.message_ids()
        assert sorted(set(delivered)) == sorted(i for i in ids if i)
        # Byte-identical apart from sentAt: the file keeps what the first client built.
        firsts = {e["messageId"]: e for e in hung.events}
        assert [firsts[i]["properties"]["n"] for i in ids] == list(range(30))
        stats = second.stats()
        assert (stats.accepted, stats.delivered, stats.queued) == (30, 30, 0)
    finally:
        second.shutdown(timeout=1)
    assert rows_in(queue_file) == []


def test_leftovers_are_sent_without_waiting_for_a_call(hung: DataPlane, queue_file: Path) -> None:
    first = Client("wk_test", hung.url, storage_path=queue_file, timeout=1.0)
    first.track("u1", "Left")
    first.shutdown(timeout=0.2)
    hung.respond = None

    second = Client("wk_test", hung.url, storage_path=queue_file, flush_interval=3600)
    try:
        assert hung.wait_for_events(1, timeout=5)  # no flush(), no track(): sent at start
    finally:
        second.shutdown(timeout=1)


def test_storage_sync_full_delivers_the_same(
    make_client: MakeClient, data_plane: DataPlane, queue_file: Path
) -> None:
    client = make_client(storage_path=queue_file, storage_sync="full")
    ids = [client.track("u1", "Synced", {"n": n}) for n in range(5)]

    assert client.flush(timeout=5) is True
    assert data_plane.message_ids() == ids


def test_send_false_never_creates_the_file(queue_file: Path) -> None:
    client = Client("wk_test", send=False, storage_path=queue_file)
    client.track("u1", "Nothing")
    client.shutdown(timeout=1)

    assert not queue_file.parent.exists()


# -- settled means gone: reports delete rows too -----------------------------------------------


def test_a_rejected_message_is_reported_once_and_not_kept(
    make_client: MakeClient, data_plane: DataPlane, queue_file: Path
) -> None:
    def poisoned(request: Any) -> Reply | None:
        bad = any(e.get("properties", {}).get("poison") for e in request.batch)
        return Reply(status=400, body="bad message") if bad else None

    data_plane.respond = poisoned
    reports = Reports()
    client = make_client(storage_path=queue_file, on_error=reports, flush_at=8)
    ids = [client.track("u1", "Mixed", {"poison": n == 3}) for n in range(8)]

    assert client.flush(timeout=5) is True
    assert reports.ids(Reason.REJECTED_4XX) == [ids[3]]
    assert sorted(data_plane.message_ids()) == sorted(str(i) for i in ids[:3] + ids[4:])
    client.shutdown(timeout=1)
    assert rows_in(queue_file) == []


def test_exhausted_retries_are_reported_and_not_kept(
    make_client: MakeClient, data_plane: DataPlane, queue_file: Path
) -> None:
    data_plane.respond = lambda request: Reply(status=503)
    reports = Reports()
    client = make_client(storage_path=queue_file, on_error=reports, max_retries=1)
    ids = [client.track("u1", "Failing") for _ in range(3)]

    assert client.flush(timeout=5) is True
    assert reports.ids(Reason.RETRIES_EXHAUSTED) == ids
    client.shutdown(timeout=1)
    assert rows_in(queue_file) == []


# -- bounds and failures -----------------------------------------------------------------------


def test_the_file_is_bounded_like_the_memory_queue(hung: DataPlane, queue_file: Path) -> None:
    reports = Reports()
    client = Client(
        "wk_test",
        hung.url,
        storage_path=queue_file,
        max_queue_size=20,
        flush_at=5,
        on_error=reports,
        timeout=1.0,
    )
    try:
        results = [client.track("u1", "Flood", {"n": n}) for n in range(60)]
        accepted = [r for r in results if r is not None]
        # One batch of 5 is in flight (taken from the file), 20 wait: 25 accepted at most.
        assert 20 <= len(accepted) <= 25
        dropped = client.stats().dropped[Reason.QUEUE_FULL]
        assert dropped == 60 - len(accepted) == len(reports.ids(Reason.QUEUE_FULL))
        assert "max_queue_size 20" in str(reports.calls[0][0])
    finally:
        client.shutdown(timeout=0.2)
    assert len(rows_in(queue_file)) == len(accepted)


def test_a_write_that_fails_is_rejected_with_the_reason(
    make_client: MakeClient, queue_file: Path, tmp_path: Path
) -> None:
    reports = Reports()
    client = make_client(storage_path=queue_file, on_error=reports)
    store = client._consumer._store
    assert store is not None
    sqlite3.connect(tmp_path / "readonly.sqlite").close()
    # Another file, opened read-only: the next INSERT fails as a full disk would.
    original = store._db
    store._db = sqlite3.connect(f"file:{tmp_path / 'readonly.sqlite'}?mode=ro", uri=True)
    try:
        assert client.track("u1", "Unwritable") is None
    finally:
        store._db.close()
        store._db = original

    assert client.stats().dropped == {Reason.STORAGE_ERROR: 1}
    assert "cannot write to storage_path" in str(reports.calls[0][0])


def test_a_file_that_is_not_a_queue_is_moved_aside(
    make_client: MakeClient,
    data_plane: DataPlane,
    queue_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue_file.parent.mkdir()
    queue_file.write_bytes(b"this is not a SQLite database, it is a text file\n" * 100)

    client = make_client(storage_path=queue_file)
    client.track("u1", "After")

    assert client.flush(timeout=5) is True
    assert len(data_plane.events) == 1
    aside = [p for p in queue_file.parent.iterdir() if ".unreadable-" in p.name]
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not")
    assert any("not a usable queue" in r.getMessage() for r in caplog.records)


def test_an_unusable_place_is_a_configuration_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")

    with pytest.raises(ConfigurationError, match=r"storage_path .* cannot be used"):
        Client("wk_secret_key", "http://127.0.0.1:9", storage_path=blocker / "events.sqlite")


# -- ownership -----------------------------------------------------------------------------


def test_a_second_client_on_the_same_file_is_refused_until_the_first_shuts_down(
    make_client: MakeClient, queue_file: Path
) -> None:
    first = make_client(storage_path=queue_file)

    with pytest.raises(ConfigurationError, match="in use by this process"):
        make_client(storage_path=queue_file)
    first.shutdown(timeout=1)
    make_client(storage_path=queue_file).track("u1", "Now mine")


def test_another_process_on_the_same_file_is_refused_by_pid(
    data_plane: DataPlane, queue_file: Path
) -> None:
    client = Client("wk_test", data_plane.url, storage_path=queue_file)
    try:
        other = run_script(
            """
            import sys
            from analytics_sdk import Client, ConfigurationError
            try:
                Client("wk_test", sys.argv[1], storage_path=sys.argv[2])
            except ConfigurationError as exc:
                print(exc)
            """,
            data_plane.url,
            str(queue_file),
            timeout=30,
        )
    finally:
        client.shutdown(timeout=1)

    assert f"in use by process {os.getpid()}" in other.stdout, other.stderr


def test_files_are_private_whatever_the_umask(
    make_client: MakeClient, hung: DataPlane, queue_file: Path
) -> None:
    old = os.umask(0)
    try:
        client = make_client(storage_path=queue_file)
        client.track("u1", "Private")
        names = sorted(p.name for p in queue_file.parent.iterdir())
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in queue_file.parent.iterdir()}
        parent = stat.S_IMODE(queue_file.parent.stat().st_mode)
    finally:
        os.umask(old)

    assert "events.sqlite" in names
    assert "events.sqlite.lock" in names
    assert set(modes.values()) == {0o600}, modes
    assert parent == 0o700


# -- fork ----------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_queues_in_memory_and_the_parent_keeps_its_file(
    data_plane: DataPlane, queue_file: Path
) -> None:
    result = run_script(
        """
        import logging, os, sys
        from analytics_sdk import Client
        logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
        client = Client("wk_test", sys.argv[1], storage_path=sys.argv[2])
        client.track("parent", "Before fork")
        pid = os.fork()
        if pid == 0:
            client.track("child", "In child")
            ok = client.flush(timeout=5)
            print("child flushed", ok, client._consumer._store is None, flush=True)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        client.track("parent", "After fork")
        print("parent flushed", client.flush(timeout=5), os.waitstatus_to_exitcode(status))
        client.shutdown(timeout=2)
        """,
        data_plane.url,
        str(queue_file),
        timeout=60,
    )

    assert "child flushed True True" in result.stdout, result.stderr
    assert "parent flushed True 0" in result.stdout, result.stderr
    assert result.stdout.count("queues in memory") == 1
    users = sorted(e["userId"] for e in data_plane.events)
    assert users == ["child", "parent", "parent"]  # nothing twice, nothing lost
    assert rows_in(queue_file) == []


def test_no_secret_in_the_storage_file_names(make_client: MakeClient, queue_file: Path) -> None:
    make_client(write_key="wk_live_secret_123", storage_path=queue_file).track("u1", "x")

    assert all("secret" not in p.name for p in queue_file.parent.iterdir())


def test_storage_logs_hold_no_key(
    hung: DataPlane, queue_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="analytics_sdk")
    client = Client("wk_live_secret_123", hung.url, storage_path=queue_file, timeout=1.0)
    client.track("u1", "x")
    client.shutdown(timeout=0.2)
    Client("wk_live_secret_123", hung.url, storage_path=queue_file).shutdown(timeout=0.2)

    assert caplog.records
    assert all("wk_live_secret_123" not in r.getMessage() for r in caplog.records)


# -- regressions found in review -------------------------------------------------------------


def test_ctrl_c_after_the_commit_still_counts_the_message(
    make_client: MakeClient,
    data_plane: DataPlane,
    queue_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = make_client(storage_path=queue_file)
    store = client._consumer._store
    assert store is not None
    append = store.append

    def interrupted(body: bytes) -> bool:
        append(body)  # committed: then Ctrl-C arrives as the GIL comes back
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "append", interrupted)
    with pytest.raises(KeyboardInterrupt):
        client.track("u1", "Interrupted")
    monkeypatch.undo()
    client.track("u1", "After")

    assert client.flush(timeout=5) is True
    stats = client.stats()
    assert (stats.accepted, stats.delivered, stats.failed, stats.queued) == (2, 2, 0, 0)
    assert [e["event"] for e in data_plane.events] == ["Interrupted", "After"]


def test_a_file_that_cannot_be_read_at_shutdown_is_still_released(
    hung: DataPlane, queue_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from analytics_sdk._storage import Storage, StorageError

    def broken(self: Storage, limit: int, after: int = 0) -> list[tuple[int, bytes]]:
        raise StorageError("cannot read storage_path: disk I/O error")

    monkeypatch.setattr(Storage, "head", broken)
    client = Client("wk_test", hung.url, storage_path=queue_file, timeout=1, flush_interval=0.01)
    client.track("u1", "Unreadable")  # the delivery thread cannot read it back, and retries
    assert client.shutdown(timeout=0.3) is False  # no exception, the budget is kept
    monkeypatch.undo()

    assert client.stats().dropped == {Reason.SHUTDOWN: 1}  # reported by count
    Client("wk_test", hung.url, storage_path=queue_file).shutdown(timeout=0.1)  # free again


def test_a_file_with_damaged_pages_is_moved_aside(
    hung: DataPlane, queue_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = Client("wk_test", hung.url, storage_path=queue_file, timeout=1)
    for n in range(300):
        first.track("u1", "Doomed", {"pad": "x" * 200, "n": n})
    first.shutdown(timeout=0.2)
    data = bytearray(queue_file.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    data[2 * page : 3 * page] = b"\xa5" * page  # a table page, not the header
    queue_file.write_bytes(bytes(data))

    client = Client("wk_test", hung.url, storage_path=queue_file)
    client.shutdown(timeout=0.1)

    assert client.stats().recovered == 0
    assert any(".unreadable-" in p.name for p in queue_file.parent.iterdir())
    assert any("not a usable queue" in r.getMessage() for r in caplog.records)


def test_a_client_that_fails_to_build_frees_the_file_and_sends_nothing(
    hung: DataPlane, queue_file: Path
) -> None:
    first = Client("wk_test", hung.url, storage_path=queue_file, timeout=1)
    first.track("u1", "Left")
    first.shutdown(timeout=0.2)
    hung.respond = None
    requests_before = len(hung.requests)

    with pytest.raises(ConfigurationError, match="integrations"):
        Client("wk_test", hung.url, storage_path=queue_file, integrations=["not one"])
    assert send_leftovers(hung.url, queue_file).recovered == 1
    assert len(hung.requests) == requests_before + 1  # only the second client sent


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_planted_symlinks_are_refused_not_followed(queue_file: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    victim.chmod(0o644)
    queue_file.parent.mkdir()
    (queue_file.parent / "events.sqlite.lock").symlink_to(victim)

    with pytest.raises(ConfigurationError, match="cannot be used"):
        Client("wk_test", "http://127.0.0.1:9", storage_path=queue_file)
    (queue_file.parent / "events.sqlite.lock").unlink()
    queue_file.symlink_to(victim)
    with pytest.raises(ConfigurationError, match="cannot be used"):
        Client("wk_test", "http://127.0.0.1:9", storage_path=queue_file)

    assert victim.read_text() == "precious"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
