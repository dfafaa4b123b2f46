"""One exit hook and one set of fork hooks per process, holding clients weakly (LESSONS R1.6).

At exit every live client drains within one budget; around a fork, storage clients keep
their threads out of SQLite, and in the child every client starts afresh.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from analytics_sdk._logging import logger

if TYPE_CHECKING:
    from analytics_sdk._consumer import Consumer
    from analytics_sdk.client import Client

__all__ = ["live_clients", "warn_if_duplicate"]

live_clients: weakref.WeakSet[Client] = weakref.WeakSet()  # every client not shut down


def warn_if_duplicate(client: Client) -> None:
    opts = client.options
    if not opts.send:
        return
    for other in list(live_clients):
        if (
            other is not client
            and not other._closed
            and (
                other.options.write_key == opts.write_key
                and other.options.data_plane_url == opts.data_plane_url
            )
        ):
            logger.warning(
                "another live Client has the same write key and data plane; create one "
                "client per process and share it (each has its own queue and thread)"
            )
            return


def _shutdown_all_at_exit() -> None:
    """Flush every live client at exit within one budget: the largest shutdown_timeout.

    All clients start draining first, then the hook waits once, so N clients cost the time
    of the slowest, not the sum (LESSONS R1.1).
    """
    clients = list(live_clients)
    if not clients:
        return
    try:
        budget = max(client.options.shutdown_timeout for client in clients)
        deadline = time.monotonic() + budget
        for client in clients:
            _guarded(client._begin_exit)
        for client in clients:
            _guarded(lambda: client._finish_exit(deadline))  # noqa: B023 - called at once
    except KeyboardInterrupt:  # Ctrl-C during the exit drain: stop quietly (R1.5)
        logger.warning(
            "exit-time flush interrupted; undelivered messages are lost (with storage_path "
            "they stay in the file for the next run)"
        )


def _guarded(step: Callable[[], object]) -> None:
    try:
        step()
    except Exception:  # noqa: BLE001 - one client's failure must not skip the others
        logger.error("exit-time flush of a client failed", exc_info=True)


def _reinit_all_after_fork() -> None:
    clients = list(live_clients)
    for client in clients:
        client._after_fork()
    # A multiprocessing child ends with os._exit(), which skips atexit: its own exit
    # function runs "finalizers" instead. That registry is cleared after this hook runs,
    # so ask multiprocessing to call us back once the child is set up (R3.1).
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        for client in clients:
            mp_util.register_after_fork(client, _flush_at_multiprocessing_exit)


def _flush_at_multiprocessing_exit(client: Client) -> None:
    import multiprocessing.util

    multiprocessing.util.Finalize(client, client._exit, exitpriority=10)


_fork_holds = threading.local()  # .consumers: what hold_all_before_fork took, per thread


def _hold_all_before_fork() -> None:
    """No delivery thread or caller may be inside SQLite when the process forks."""
    held: list[Consumer] = []
    for client in list(live_clients):
        try:
            if client._consumer.hold_for_fork():
                held.append(client._consumer)
        except Exception:  # noqa: BLE001 - a fork must never fail because of us
            logger.debug("holding a client before fork failed", exc_info=True)
    _fork_holds.consumers = held


def _release_all_after_fork_in_parent() -> None:
    for consumer in getattr(_fork_holds, "consumers", ()):
        consumer.release_after_fork()
    _fork_holds.consumers = []


atexit.register(_shutdown_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_hold_all_before_fork,
        after_in_parent=_release_all_after_fork_in_parent,
        after_in_child=_reinit_all_after_fork,
    )
