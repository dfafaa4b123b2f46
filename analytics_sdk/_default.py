"""The module-level API: one explicitly configured default client and thin proxies to it."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

from analytics_sdk._logging import logger
from analytics_sdk.client import Client
from analytics_sdk.errors import ConfigurationError

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from analytics_sdk.options import ClientOptionsKwargs

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_default: Client | None = None
_warned = False


def configure(
    write_key: str | None = None,
    data_plane_url: str | None = None,
    **options: Unpack[ClientOptionsKwargs],
) -> Client:
    """Create the default client used by `analytics_sdk.track(...)` and the other proxies.

    Calling it again replaces the default client; the previous one is shut down (flushed).
    Without a call, the first proxy call creates the default client from the ANALYTICS_SDK_*
    environment variables when ANALYTICS_SDK_WRITE_KEY is set.

    Raises:
        ConfigurationError: as `Client(...)` does.
    """
    global _default
    client = Client(write_key, data_plane_url, **options)
    with _lock:
        previous, _default = _default, client
    if previous is not None:
        previous.shutdown()
    return client


def default_client() -> Client | None:
    """The default client, created from the environment on first use; None if there is none."""
    global _default, _warned
    client = _default
    if client is not None:
        return client
    with _lock:  # many threads may race here at start: build exactly one client
        if _default is None and os.environ.get("ANALYTICS_SDK_WRITE_KEY"):
            try:
                _default = Client()
            except ConfigurationError as exc:
                logger.error("cannot create the default client from the environment: %s", exc)
        if _default is None and not _warned:
            _warned = True
            logger.error(
                "analytics_sdk.configure(...) was not called and ANALYTICS_SDK_WRITE_KEY is "
                "not set: module-level calls are dropped"
            )
        return _default


def _proxy(method: Callable[Concatenate[Client, P], R], fallback: R) -> Callable[P, R]:
    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        client = default_client()
        return fallback if client is None else method(client, *args, **kwargs)

    return call


def _reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()


identify = _proxy(Client.identify, None)
track = _proxy(Client.track, None)
page = _proxy(Client.page, None)
screen = _proxy(Client.screen, None)
group = _proxy(Client.group, None)
alias = _proxy(Client.alias, None)
flush = _proxy(Client.flush, True)
shutdown = _proxy(Client.shutdown, True)
reset = _proxy(Client.reset, None)

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)

__all__: list[str] = [
    "alias",
    "configure",
    "default_client",
    "flush",
    "group",
    "identify",
    "page",
    "reset",
    "screen",
    "shutdown",
    "track",
]
