"""The durable queue behind `storage_path`: a SQLite file that outlives the process.

One table of rows (id, body) in insertion order, the body being a message's JSON as the
wire gets it. A call's row is committed before the call returns; the delivery thread reads
batches from the head and deletes a batch's rows once the batch is settled (delivered with
a 2xx, or reported). What is left when a process ends, however it ends, is the next
process's to send.

Ownership: one process at a time holds a file, through an exclusive lock on `<file>.lock`
taken when the client starts and released when it shuts down (or by the OS when the
process dies, kill -9 included). A second process, or a second client in the same process,
gets a ConfigurationError naming the owner's pid: two senders of one queue would send
every message twice. A forked child does not inherit the ownership (see Consumer).

Every method is called with the consumer's lock held, so one connection serves the caller
threads and the delivery thread in turn. The connection uses SQLite's exclusive locking
mode: we own the file anyway, and without per-transaction file locks a call's commit costs
about a third less (benchmarks/README.md). Other programs cannot read the file while a
client has it open; inspect it after shutdown(). SQLite checkpoints the log into the file
every 1,000 pages (about every 500 calls, deletes included), a few milliseconds each.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
import sys
import time
from pathlib import Path

from analytics_sdk._files import make_private_dirs
from analytics_sdk._logging import logger
from analytics_sdk.errors import ConfigurationError

if sys.platform == "win32":  # pragma: no cover - tested on POSIX only
    import msvcrt

    def _lock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


_TABLE = "analytics_sdk_queue_v1"  # a new schema gets a new table (and a migration)
_SYNC = {"normal": "NORMAL", "full": "FULL"}
_BUSY_TIMEOUT_MS = 1_000  # another program may hold the file a moment (before we lock it)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # a planted symlink must not redirect our writes
_LOG_LIMIT_BYTES = 8 * 1024 * 1024  # the log file is cut back to this after a checkpoint

# The SQLite connections of stores a forked child gave up (see Storage.forsake).
_forsaken: list[sqlite3.Connection] = []


class StorageError(Exception):
    """The file could not be read (I/O error); the text says why."""


class Storage:
    """An exclusive, open queue file. `count` and `size` describe what it held at start;
    `problem` why the last write failed."""

    def __init__(self, path: Path, sync: str = "normal") -> None:
        """Open and own the file at `path`, creating it (and its directory) if needed.

        Raises:
            ConfigurationError: another process (or client) owns the file, or it cannot be
                created, opened or read (the text has the OS's or SQLite's reason).
        """
        self.path = path = path.expanduser()
        try:
            make_private_dirs(path.parent)
            self._lock_fd = _claim(path.with_name(path.name + ".lock"), path)
        except OSError as exc:
            raise _unusable(path, exc) from None
        try:
            self._db, self.count, self.size = _open(path, sync)
        except (OSError, sqlite3.Error) as exc:
            _release(self._lock_fd)
            raise _unusable(path, exc) from None
        except BaseException:
            _release(self._lock_fd)
            raise
        self.closed = False
        self.problem = ""

    def changes(self) -> int:
        """Rows written or deleted through this connection so far (SQLite's count)."""
        return self._db.total_changes

    def append(self, body: bytes) -> bool:
        """Commit one row: it is in the file when this returns True. False: it could not
        be written (disk full, I/O error, closed), and `problem` says why."""
        try:
            self._db.execute(f"INSERT INTO {_TABLE} (body) VALUES (?)", (body,))
        except sqlite3.Error as exc:
            self.problem = f"cannot write to storage_path {self.path}: {exc}"
            return False
        return True

    def head(self, limit: int, after: int = 0) -> list[tuple[int, bytes]]:
        """The oldest `limit` rows with an id above `after`, oldest first.

        Raises:
            StorageError: the file could not be read.
        """
        try:
            rows: list[tuple[int, bytes]] = self._db.execute(
                f"SELECT id, body FROM {_TABLE} WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read storage_path {self.path}: {exc}") from None
        return rows

    def delete_through(self, row_id: int) -> bool:
        """Delete every row up to `row_id`: they are settled. False if that failed (logged:
        the rows stay, and a later run sends them again, with the same messageIds)."""
        if self.closed:
            return False
        try:
            self._db.execute(f"DELETE FROM {_TABLE} WHERE id <= ?", (row_id,))
        except sqlite3.Error as exc:
            logger.error("cannot delete sent messages from storage_path %s: %s", self.path, exc)
            return False
        return True

    def close(self) -> None:
        """Close the file and give up ownership. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            self._db.close()  # SQLite checkpoints and removes the log
        except sqlite3.Error as exc:  # pragma: no cover - close fails only on misuse
            logger.debug("closing storage_path %s: %s", self.path, exc)
        _release(self._lock_fd)

    def forsake(self) -> None:
        """In a forked child: let go of the parent's file without touching it.

        The child's copy of the connection must never be closed, not even when the
        interpreter is torn down: it believes it holds the exclusive lock (the parent does),
        so closing it would checkpoint from a stale view and unlink the parent's live log.
        It is kept alive for good: a reference that module teardown does not drop.
        """
        self.closed = True
        _forsaken.append(self._db)
        try:
            import ctypes

            ctypes.pythonapi.Py_IncRef(ctypes.py_object(self._db))
        except (ImportError, AttributeError, OSError):  # pragma: no cover - no ctypes here
            logger.debug("ctypes unavailable: the forsaken connection is only referenced")
        with contextlib.suppress(OSError):
            # Our copy of the lock descriptor: if it stayed open here, the lock would outlive
            # the parent, and its successor could not start while this child runs.
            os.close(self._lock_fd)


def _unusable(path: Path, exc: Exception) -> ConfigurationError:
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in why:
        why += " (another program has it open: a client elsewhere whose lock file was removed?)"
    return ConfigurationError(f"invalid client options: storage_path {path} cannot be used: {why}")


def _claim(lock_path: Path, path: Path) -> int:
    """Take the exclusive lock of a queue file, or raise naming the process that has it."""
    fd = _open_private(lock_path)
    try:
        _lock(fd)
    except OSError:
        owner = _read_owner(fd)
        os.close(fd)
        whose = (
            "this process (another Client)"
            if owner == str(os.getpid())
            else (f"process {owner}" if owner else "another process")
        )
        raise ConfigurationError(
            f"invalid client options: storage_path {path} is in use by {whose}; a queue file "
            "has one owner at a time, so give each process (or worker) its own file"
        ) from None
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _release(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)  # closing the descriptor drops the lock


def _read_owner(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


def _open_private(path: Path) -> int:
    """Open or create `path` as a regular file of mode 0600, never through a symlink."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path.name} is not a regular file")
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # an older file may have been created looser
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open(path: Path, sync: str) -> tuple[sqlite3.Connection, int, int]:
    """Open (or create, mode 0600) the queue file: the connection, and the count and size
    of the rows it holds. A file that is not a usable SQLite database, or a damaged one, is
    moved aside (kept for inspection) and a new one is started."""
    try:
        return _connect(path, sync)
    except sqlite3.DatabaseError as exc:
        # Not a database, or a corrupt one: plain DatabaseError. Its subclasses (can't
        # open, locked, I/O error) are about the place, not the file: the caller says so.
        if type(exc) is not sqlite3.DatabaseError:
            raise
        aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
        logger.error(
            "storage_path %s is not a usable queue (%s); moved it to %s and started an "
            "empty one: messages it held, if any, are not sent",
            path,
            exc,
            aside,
        )
        for suffix in ("", "-wal", "-shm"):
            source = path.with_name(path.name + suffix)
            if source.exists():
                os.replace(source, aside.with_name(aside.name + suffix))
        return _connect(path, sync)


def _connect(path: Path, sync: str) -> tuple[sqlite3.Connection, int, int]:
    os.close(_open_private(path))  # SQLite gives its log the mode of this file
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        # Before the first access in WAL mode: then SQLite keeps the log's index in memory
        # (no -shm file) and takes no file lock per transaction.
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"cannot use write-ahead logging (journal mode {mode})")
        db.execute(f"PRAGMA synchronous = {_SYNC[sync]}")
        db.execute(f"PRAGMA journal_size_limit = {_LOG_LIMIT_BYTES}")
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {_TABLE} (id INTEGER PRIMARY KEY, body BLOB NOT NULL)"
        )
        count, size = db.execute(
            f"SELECT count(*), coalesce(sum(length(body)), 0) FROM {_TABLE}"
        ).fetchone()
        if count:  # leftovers: make sure every page of them can be read before we rely on it
            problems = [row[0] for row in db.execute("PRAGMA quick_check(3)").fetchall()]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError(f"damaged: {'; '.join(map(str, problems))}")
    except BaseException:
        db.close()
        raise
    return db, int(count), int(size)
