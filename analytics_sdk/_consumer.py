"""The bounded queue and the one delivery thread that turns it into batches."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from analytics_sdk._logging import logger
from analytics_sdk._outcomes import Reporter
from analytics_sdk._serialization import DEFAULT_TAIL, compact, wire_size
from analytics_sdk.errors import DeliveryError, Reason
from analytics_sdk.options import ENVELOPE_BYTES, MESSAGE_OVERHEAD_BYTES, ClientOptions

if TYPE_CHECKING:
    from analytics_sdk._storage import Storage
    from analytics_sdk._transport import Transport

TransportFactory = Callable[[ClientOptions, threading.Event], "Transport"]
_SPLIT_STATUSES = frozenset({400, 413})
_BRACE = ord("}")  # a smaller batch may pass: bisect, don't give up


def _default_transport(options: ClientOptions, stop: threading.Event) -> Transport:
    # Loaded by Consumer.__init__ on the caller's thread already (see there): this import
    # only looks the module up.
    from analytics_sdk._transport import Transport

    return Transport(options, stop)


_threads_checked = False


def _check_threads_can_run() -> None:
    """uWSGI without enable-threads never runs Python threads: say so once, loudly.

    Events would wait in the queue until the process exits (LESSONS R4.1). The fix is the
    server's: `enable-threads = true` (and `py-call-uwsgi-fork-hooks = true` with preforking),
    or `sync_mode=True` here.
    """
    global _threads_checked
    _threads_checked = True
    uwsgi = sys.modules.get("uwsgi")
    options = getattr(uwsgi, "opt", None)
    if (
        isinstance(options, dict)
        and not options.get("enable-threads")
        and not options.get("threads")
    ):
        logger.warning(
            "uWSGI runs without Python threads: events are only sent at exit. Set "
            "enable-threads = true (and py-call-uwsgi-fork-hooks = true), or sync_mode=True"
        )


class Consumer:
    """Serialized messages in, batches out. `put` never blocks; `flush` keeps its deadline.

    Accepted messages are numbered in order. One thread takes them in order and finishes
    each batch (delivered, split, or reported) before it takes the next, so the settled
    messages are always a prefix of the accepted ones: `flush()` waits for the number
    accepted before it was called, covering queued, partial and in-flight batches alike.

    With `storage_path` the queue is a SQLite file instead of a deque (see _storage.py):
    put() commits a row before it returns, batches are read from the file's head, and a
    batch's rows are deleted once it is settled. Memory then holds counters only.
    """

    def __init__(
        self,
        options: ClientOptions,
        reporter: Reporter,
        transport_factory: TransportFactory = _default_transport,
        on_fork: Callable[[], None] | None = None,
    ) -> None:
        self._options = options
        self._reporter = reporter
        self._transport_factory = transport_factory
        self._on_fork = on_fork  # the client's whole reset, when a fork is noticed here
        # A producer in a tight loop holds the GIL for whole switch intervals (5 ms) and
        # starves this thread, which needs the GIL back after every socket and zlib call.
        # Once ten batches wait, put() yields the GIL once per batch. Ten, not two: earlier
        # yielding kept memory lower still but cost the caller ~40% more per call in the
        # benchmark (benchmarks/README.md), and an app that tracks now and then never
        # gets here at all.
        self._yield_at = 10 * options.flush_at
        self._yield_every = options.flush_at
        self._flush_at = options.flush_at
        self._max_queue_size = options.max_queue_size
        self._max_queue_bytes = options.max_queue_bytes
        # A batch is full once its messages (with their overhead) reach this many bytes.
        self._batch_bytes = options.max_batch_bytes - ENVELOPE_BYTES + 1
        self._closing = False
        self._reset_state()
        self._store: Storage | None = None
        self.recovered = 0  # messages an earlier process left in storage_path
        self.storage_problem = ""  # why the last write to storage_path failed
        if options.send and options.storage_path is not None:
            self._open_store(options.storage_path)
        if options.send:
            # Import requests now, on the constructing thread, not lazily on the delivery
            # thread: a fork during that import would leave the child a half-initialized
            # module and an ImportError on its first batch.
            import analytics_sdk._transport

            analytics_sdk._transport.warn_if_cleartext("data_plane_url", options.data_plane_url)

    def _reset_state(self) -> None:
        """Fresh locks, queue, counters and thread: at start and in a forked child."""
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the delivery thread waits here
        self._settled_cond = threading.Condition(self._lock)  # flush() waits here
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0  # including MESSAGE_OVERHEAD_BYTES each
        self._oldest = 0.0  # monotonic time the oldest queued message has waited since
        self._accepted = 0
        self._settled = 0
        self._delivered = 0
        self._failed = 0
        self._flush_target = 0
        self._inflight: list[bytes] | None = None
        self._inflight_done = 0
        self._abandoned = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = False
        self._pid = os.getpid()
        self._transport: Transport | None = None
        self._transport_lock = threading.Lock()
        # storage_path: rows waiting in the file (not in flight), the ids of the batch in
        # flight, how many of those are settled, and the id the next batch starts after
        # (0, unless deleting settled rows failed and they are still in the file).
        self._stored = 0
        self._inflight_ids: list[int] = []
        self._inflight_forgotten = 0
        self._cursor = 0
        self._vanished = 0

    def _open_store(self, path: Path) -> None:
        """Own the queue file; what an earlier process left in it is accepted here, and
        sent as soon as the client is built (start()), not at the first call."""
        from analytics_sdk._storage import Storage

        store = Storage(path, self._options.storage_sync)
        self._store = store
        if store.count:
            self.recovered = self._stored = self._accepted = store.count
            self._queued_bytes = store.size + store.count * MESSAGE_OVERHEAD_BYTES
            self._flush_target = store.count  # due now, whatever flush_interval says
            logger.info(
                "storage_path %s holds %d message(s) from an earlier run; sending them",
                store.path,
                store.count,
            )

    def after_fork(self) -> None:
        """In a forked child: the parent's queue is the parent's; start from nothing.

        Locks may be held by threads that do not exist here, and the HTTP session's
        sockets are shared with the parent: replace all of it, keep only the options.
        A storage_path file stays the parent's: the child queues in memory.
        """
        self._reset_state()
        store, self._store = self._store, None
        if store is not None and not store.closed:
            store.forsake()
            logger.warning(
                "this forked process (pid %d) queues in memory: storage_path %s belongs to "
                "the process that opened it; create the client after the fork to keep a "
                "file per process",
                os.getpid(),
                store.path,
            )

    def _check_fork(self) -> None:
        """A fork the at-fork hook did not see (a C-level fork, uWSGI without its fork
        hooks): reset before touching anything inherited."""
        if self._pid != os.getpid():
            (self._on_fork or self.after_fork)()

    # -- intake (the caller's thread) ------------------------------------------------------

    def put(self, data: bytes) -> str | None:
        """Queue one serialized message: None when accepted, else the drop reason."""
        if self._pid != os.getpid():
            self._check_fork()
        if self._store is not None:
            return self._put_stored(data)
        size = len(data) + MESSAGE_OVERHEAD_BYTES  # what it will weigh on the wire
        data = compact(data)
        with self._lock:
            if self._closing:
                return Reason.SHUTDOWN
            count = len(self._queue)
            if count >= self._max_queue_size or self._queued_bytes + size > self._max_queue_bytes:
                return Reason.QUEUE_FULL
            self._queue.append(data)
            self._count_in_locked(count, size)
        if not self._running:
            self._ensure_thread()
        elif count >= self._yield_at and count % self._yield_every == 0:
            time.sleep(0)  # let the delivery thread have the GIL: it is falling behind
        return None

    def _count_in_locked(self, count: int, size: int) -> None:
        """One more message of `size` wire bytes is queued behind `count` others."""
        self._queued_bytes += size
        self._accepted += 1
        if count == 0:
            self._oldest = time.monotonic()
            self._work.notify()  # starts the flush_interval timer
        elif count + 1 == self._flush_at or (
            self._queued_bytes >= self._batch_bytes > self._queued_bytes - size
        ):
            self._work.notify()  # a full batch is waiting

    def _put_stored(self, data: bytes) -> str | None:
        """put() with storage_path: the row is committed before the call returns."""
        size = len(data) + MESSAGE_OVERHEAD_BYTES
        with self._lock:
            store = self._store
            if self._closing or store is None or store.closed:
                return Reason.SHUTDOWN
            count = self._stored
            if count >= self._max_queue_size or self._queued_bytes + size > self._max_queue_bytes:
                return Reason.QUEUE_FULL
            before = store.changes()
            try:
                written = store.append(data)
            finally:
                # Counted by what SQLite committed, not by how append() returned: Ctrl-C lands
                # once the commit is done, as the GIL comes back, and that row will be sent.
                if store.changes() != before:
                    self._stored += 1
                    self._count_in_locked(count, size)
            if not written:
                self.storage_problem = store.problem
                return Reason.STORAGE_ERROR
        if not self._running:
            self._ensure_thread()
        return None

    def send_now(self, data: bytes) -> bool:
        """sync_mode: deliver one message on the caller's thread, same retries and reports.

        Returns True when delivered; False when it failed (and was reported).
        """
        self._check_fork()
        with self._lock:
            if self._closing:
                raise DeliveryError("the client is shut down", reason=Reason.SHUTDOWN)
            self._accepted += 1
        try:
            return self._deliver([data], self._get_transport()) == 1
        except Exception:  # noqa: BLE001 - the message is accepted: it must be settled
            logger.exception("delivery failed unexpectedly; reporting the message")
            error = DeliveryError("internal error while delivering", reason=Reason.INTERNAL_ERROR)
            self._settle([data], error)
            return False

    # -- flush and shutdown ----------------------------------------------------------------

    def flush(self, timeout: float | None) -> bool:
        """Wait until everything accepted before this call is delivered or reported.

        Returns False if `timeout` seconds ran out first, or when called from the delivery
        thread itself (an `on_error` callback), where waiting could never end.
        """
        self._check_fork()
        deadline = deadline_for(timeout)
        if threading.current_thread() is self._thread or self._reporter.in_callback():
            return False  # waiting here would wait for ourselves
        with self._lock:
            target = self._accepted
            if self._settled >= target:
                return True
            self._flush_target = max(self._flush_target, target)
            self._work.notify()
        self._ensure_thread()  # a dead or missing thread must not make flush wait forever
        return self._wait_settled(target, deadline)

    def shutdown(self, timeout: float | None, *, at_exit: bool = False) -> bool:
        """Stop intake, deliver within `timeout` seconds, report what is left. Idempotent.

        Returns True when everything accepted was delivered or reported before the budget
        ran out; False when leftovers had to be reported as `shutdown`, or when called from
        an `on_error` callback (the exit hook finishes the job then).
        """
        self.begin_shutdown()
        return self.finish_shutdown(deadline_for(timeout), at_exit=at_exit, budget=timeout)

    def begin_shutdown(self) -> None:
        """Stop intake and send what is queued without waiting (the exit hook starts every
        client first, then waits once, so N clients share one budget)."""
        self._check_fork()
        with self._lock:
            self._closing = True
            self._work.notify()

    def finish_shutdown(
        self, deadline: float | None, *, at_exit: bool = False, budget: float | None = None
    ) -> bool:
        """Wait for the drain until `deadline`; then report what is left and stop.

        At interpreter exit the HTTP session is left to the OS: closing urllib3's pool from
        an atexit hook can finalize a half-closed socket and print a ResourceWarning.
        """
        if threading.current_thread() is self._thread or self._reporter.in_callback():
            return False  # from on_error: waiting for ourselves would never end
        with self._lock:
            target = self._accepted
        try:
            self._ensure_thread()
            drained = self._wait_settled(target, deadline)
            if not drained:
                self._abandon(self._options.shutdown_timeout if budget is None else budget)
            thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                # Drained: the thread is leaving now. Abandoned: it may sit in a request that
                # only its own timeout ends; it is a daemon and reports nothing more.
                wait = 0.1 if not drained else _remaining(deadline, default=1.0)
                thread.join(wait)
            if self._transport is not None and not at_exit and not (thread and thread.is_alive()):
                self._transport.close()
        finally:
            self.close_store()  # a thread still in a request finds it closed, leaves its rows
        return drained

    def close_store(self) -> None:
        """Close storage_path's file and give up its ownership (shutdown, or a Client whose
        construction failed: its rows stay for the next client)."""
        with self._lock:
            if self._store is not None:
                self._store.close()

    def start(self) -> None:
        """The client is fully built: send what an earlier run left in storage_path now."""
        if self._stored:
            self._ensure_thread()

    def hold_for_fork(self) -> bool:
        """Before os.fork(): keep our threads out of SQLite, whose global mutexes a child
        would inherit locked (and hang on at its first SQLite call). True if held."""
        if self._store is None or self._pid != os.getpid():
            return False
        return self._lock.acquire(timeout=5.0)

    def release_after_fork(self) -> None:
        """In the parent, after os.fork(): undo hold_for_fork()."""
        self._lock.release()

    def finished(self) -> bool:
        """True once shutdown began and every accepted message is settled."""
        with self._lock:
            return self._closing and self._settled >= self._accepted

    def _wait_settled(self, target: int, deadline: float | None) -> bool:
        with self._lock:
            while self._settled < target:
                if deadline is None:
                    self._settled_cond.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._settled_cond.wait(min(remaining, threading.TIMEOUT_MAX))
            return True

    def _abandon(self, budget: float) -> None:
        """Shutdown's budget is spent: report the queue and the unsettled in-flight rest."""
        with self._lock:
            self._stop.set()  # wakes a backoff wait; no new batch is taken
            lost, unread = self._take_all_locked()
            if self._inflight is not None and not self._abandoned:
                # Claim the unsettled rest once: a second shutdown must not report it again.
                lost[:0] = self._inflight[self._inflight_done :]
                self._inflight_done = len(self._inflight)
            self._abandoned = True
            count = len(lost) + unread
            self._failed += count
            self._work.notify()
        if count:
            kept = (
                ""
                if self._store is None
                else (f"; they stay in storage_path {self._store.path} for the next client on it")
            )
            error = DeliveryError(
                f"{count} message(s) not delivered within the shutdown budget ({budget} s){kept}",
                reason=Reason.SHUTDOWN,
                count=count,
            )
            self._reporter.report(error, lost, count=count)
        with self._lock:
            self._settled += count
            self._settled_cond.notify_all()

    def _take_all_locked(self) -> tuple[list[bytes], int]:
        """Everything queued and not in flight, taken out of the queue, and how many of
        them could not be read. With storage_path the rows stay in the file: this process
        only stops counting them as queued."""
        unread = 0
        if self._store is None:
            lost = list(self._queue)
            self._queue.clear()
        else:
            from analytics_sdk._storage import StorageError

            in_flight = self._inflight and self._inflight_ids
            after = self._inflight_ids[-1] if in_flight else self._cursor
            try:
                lost = [body for _, body in self._store.head(self._stored, after=after)]
            except StorageError as exc:
                logger.error("%s", exc)
                lost = []
            unread = self._stored - len(lost)  # reported by count all the same
            self._stored = 0
        self._queued_bytes = 0
        return lost, unread

    # -- the delivery thread ---------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if not _threads_checked:
            _check_threads_can_run()
        self._check_fork()
        if self._options.sync_mode:
            return
        with self._lock:
            idle = not (self._queue or self._stored)
            if self._running or (self._closing and idle) or self._stop.is_set():
                return
            self._running = True
        thread = threading.Thread(target=self._run, name="analytics_sdk.consumer", daemon=True)
        self._thread = thread  # before start(): the thread must recognise itself at once
        try:
            thread.start()
        except RuntimeError as exc:  # interpreter shutting down, or no threads left
            with self._lock:
                self._running = False
            logger.error("cannot start the delivery thread (%s); messages stay queued", exc)

    def _run(self) -> None:
        try:
            transport = self._get_transport()
            while True:
                with self._lock:
                    batch = self._next_batch_locked()
                    if batch is None:
                        return
                    self._inflight, self._inflight_done = batch, 0
                if not batch:  # storage_path could not be read, or lost rows: see there
                    with self._lock:
                        self._inflight = None
                    self._report_vanished()
                    continue
                try:
                    self._deliver(batch, transport)
                except Exception:  # noqa: BLE001 - isolation boundary: the thread must outlive any bug
                    logger.exception("delivery failed unexpectedly; reporting the batch")
                    self._settle_rest_as_internal_error()
                with self._lock:
                    self._inflight = None
        except Exception:  # noqa: BLE001 - logged; the next put() or flush() restarts us
            logger.exception("the delivery thread stopped; the next call restarts it")
        finally:
            with self._lock:
                self._running = False

    def _get_transport(self) -> Transport:
        with self._transport_lock:
            if self._transport is None:
                self._transport = self._transport_factory(self._options, self._stop)
            return self._transport

    def _next_batch_locked(self) -> list[bytes] | None:
        """Wait (lock held) for a batch that is due, and take it; None: time to stop."""
        while True:
            if self._stop.is_set():
                return None
            count = len(self._queue) + self._stored
            if count:
                if (
                    count >= self._flush_at
                    or self._queued_bytes >= self._batch_bytes
                    or self._closing
                    or self._flush_target > self._settled
                ):
                    return self._take_locked()
                wait = self._oldest + self._options.flush_interval - time.monotonic()
                if wait <= 0:
                    return self._take_locked()
                self._work.wait(wait)
            elif self._closing:
                return None
            else:
                self._work.wait()

    def _take_locked(self) -> list[bytes]:
        """Up to flush_at messages whose request body stays within max_batch_bytes.

        Takes flush_at at once and gives back from the end if the bytes overshoot: the lock
        is held for one pass in C, not a Python loop per message (put() waits on it).
        """
        if self._store is not None:
            return self._take_stored_locked(self._store)
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(len(queue), self._flush_at))]
        full = sum(1 for m in batch if m[-1] == _BRACE)  # the others are compact (no tail)
        size = sum(map(len, batch)) + len(batch) * MESSAGE_OVERHEAD_BYTES
        size += (len(batch) - full) * len(DEFAULT_TAIL)
        while size > self._batch_bytes and len(batch) > 1:  # the first always fits
            last = batch.pop()
            queue.appendleft(last)
            size -= wire_size(last) + MESSAGE_OVERHEAD_BYTES
        self._queued_bytes -= size
        if queue:
            self._oldest = time.monotonic()
        return batch

    def _take_stored_locked(self, store: Storage) -> list[bytes]:
        """_take_locked() from the file: the oldest rows, within flush_at and the bytes."""
        from analytics_sdk._storage import StorageError

        try:
            rows = store.head(self._flush_at, after=self._cursor)
        except StorageError as exc:
            logger.error("%s; retrying in %s s", exc, self._options.flush_interval)
            self._work.wait(self._options.flush_interval)
            return []
        if not rows:  # another program deleted rows: settle them, as lost, to keep count
            self._vanished, self._stored, self._queued_bytes = max(self._stored, 0), 0, 0
            self._failed += self._vanished
            return []
        batch: list[bytes] = []
        ids: list[int] = []
        size = 0
        for row_id, body in rows:
            weight = len(body) + MESSAGE_OVERHEAD_BYTES
            if batch and size + weight > self._batch_bytes:
                break
            batch.append(body)
            ids.append(row_id)
            size += weight
        uncounted = len(batch) - self._stored
        if uncounted > 0:  # committed by a call interrupted before it counted them
            self._accepted += uncounted
            self._stored += uncounted
        self._stored -= len(batch)
        self._queued_bytes = max(0, self._queued_bytes - size)
        self._inflight_ids, self._inflight_forgotten = ids, 0
        if self._stored:
            self._oldest = time.monotonic()
        return batch

    def _report_vanished(self) -> None:
        with self._lock:
            count, self._vanished = self._vanished, 0
        if count:
            error = DeliveryError(
                f"{count} message(s) disappeared from storage_path (another program changed "
                "the file)",
                reason=Reason.INTERNAL_ERROR,
                count=count,
            )
            self._reporter.report(error, [], count=count)
            with self._lock:
                self._settled += count
                self._settled_cond.notify_all()

    def _forget_locked(self, count: int) -> None:
        """storage_path: the next `count` in-flight messages are settled; delete their rows."""
        start = self._inflight_forgotten
        self._inflight_forgotten = start + count
        if self._store is None or start + count > len(self._inflight_ids):
            return
        last = self._inflight_ids[start + count - 1]
        # Deleted: the next batch starts at the head. Not: skip these rows (a later delete
        # takes them too; until then no id is reused, as the newest row is still there).
        self._cursor = 0 if self._store.delete_through(last) else last

    def _deliver(self, messages: list[bytes], transport: Transport) -> int:
        """Send, bisecting on 400/413 so only the offending messages are reported.

        Returns how many of `messages` were delivered; the others were reported.
        """
        if self._stop.is_set():
            error = DeliveryError("shutdown budget spent", reason=Reason.SHUTDOWN)
            self._settle(messages, error)
            return 0
        try:
            transport.send(messages)
        except DeliveryError as exc:
            if exc.status in _SPLIT_STATUSES and len(messages) > 1:
                middle = len(messages) // 2
                logger.debug("HTTP %s for %d messages: splitting", exc.status, len(messages))
                return self._deliver(messages[:middle], transport) + self._deliver(
                    messages[middle:], transport
                )
            if exc.status == 413:
                exc = DeliveryError(
                    "the data plane refused a single message as too large (HTTP 413)",
                    reason=Reason.TOO_LARGE,
                    status=413,
                )
            exc.count = len(messages)
            self._settle(messages, exc)
            return 0
        self._settle(messages, None)
        return len(messages)

    def _settle(self, messages: list[bytes], error: DeliveryError | None) -> None:
        count = len(messages)
        with self._lock:
            if self._abandoned and threading.current_thread() is self._thread:
                if error is None:
                    self._forget_locked(count)  # sent after all: not again by the next run
                return  # shutdown reported these already
            self._inflight_done += count
            if error is None:
                self._delivered += count
            else:
                self._failed += count
        try:
            if error is not None:
                self._reporter.report(error, messages)  # before settling: flush() promises it
        finally:
            with self._lock:
                self._forget_locked(count)
                self._settled += count
                self._settled_cond.notify_all()

    def _settle_rest_as_internal_error(self) -> None:
        with self._lock:
            rest = [] if self._inflight is None else self._inflight[self._inflight_done :]
        if rest:
            error = DeliveryError("internal error while delivering", reason=Reason.INTERNAL_ERROR)
            self._settle(rest, error)

    # -- numbers -----------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        self._check_fork()
        with self._lock:
            in_flight = 0 if self._inflight is None else len(self._inflight) - self._inflight_done
            return {
                "accepted": self._accepted,
                "delivered": self._delivered,
                "failed": self._failed,
                "queued": len(self._queue) + self._stored + in_flight,
                "recovered": self.recovered,
                "retried": 0 if self._transport is None else self._transport.retries,
            }


def deadline_for(timeout: float | None) -> float | None:
    """A monotonic deadline for `timeout` seconds; None (no limit) for None or infinity."""
    if timeout is None:
        return None
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        logger.error("timeout must be a number of seconds or None; using %s", 10.0)
        seconds = 10.0
    if seconds != seconds:  # NaN
        seconds = 10.0
    if seconds >= threading.TIMEOUT_MAX:
        return None
    return time.monotonic() + max(0.0, seconds)


def _remaining(deadline: float | None, default: float) -> float:
    if deadline is None:
        return default
    return max(0.0, deadline - time.monotonic())
