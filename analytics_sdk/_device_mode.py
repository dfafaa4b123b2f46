"""Device mode for one client: its integration factory and its source-config client."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from analytics_sdk._factory import Factory
from analytics_sdk._logging import logger
from analytics_sdk._outcomes import Reporter
from analytics_sdk.errors import ConfigurationError
from analytics_sdk.integration import Integration
from analytics_sdk.options import ClientOptions

if TYPE_CHECKING:
    from analytics_sdk._source_config import ConfigOrigin, SourceConfig, SourceConfigClient


class DeviceMode:
    """Owns the factory and the config client; starts both with the first message.

    Constructing it sets up the in-code integrations (an unavailable one raises there, at
    `Client(...)`); no thread starts and nothing is fetched until a message is accepted.
    """

    def __init__(
        self, options: ClientOptions, reporter: Reporter, anonymous_id: Callable[[], str]
    ) -> None:
        custom = list(options.integrations)
        for integration in custom:
            if not isinstance(integration, Integration):
                kind = type(integration).__name__
                raise ConfigurationError(
                    "invalid client options: integrations: each must be an "
                    f"analytics_sdk.integration.Integration instance (got {kind})"
                )
        self._options = options
        self._reporter = reporter
        self._anonymous_id = anonymous_id
        self._factory = Factory(anonymous_id, reporter.report, custom)
        self._factory.setup_custom()
        self._config: SourceConfigClient | None = None
        if options.control_plane_url or options.source_config is not None:
            from analytics_sdk._source_config import SourceConfigClient

            self._config = SourceConfigClient(options, self._on_config, self._factory.no_config)
        self._lock = threading.Lock()
        self._started = False
        self.source_disabled = False

    def dispatch(self, data: bytes) -> None:
        """Hand one accepted message to device mode (cheap; never blocks, never raises)."""
        try:
            if not self._started:
                self._start()
            if self._factory.active:
                self._factory.dispatch(data)
        except Exception:  # noqa: BLE001 - device mode must never cost the cloud message
            logger.exception("device mode could not take a message; cloud delivery goes on")

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._factory.start()  # may raise (no threads left): then not started, retried
            self._started = True
        if self._config is not None:
            self._config.start()
        else:
            self._factory.without_config()

    def _on_config(self, config: SourceConfig, origin: ConfigOrigin) -> None:
        if not config.source.enabled:
            if not self.source_disabled:
                logger.error(
                    "the source is disabled in its config: the client stops sending until it is "
                    "enabled again (calls are counted as source_disabled)"
                )
            self.source_disabled = True
        elif self.source_disabled:
            logger.warning("the source is enabled again: sending resumes")
            self.source_disabled = False
        logger.debug("source config applied (from %s)", origin)
        self._factory.apply(config)

    def flush(self, deadline: float) -> bool:
        return self._factory.flush(deadline) if self._started else True

    def reset(self) -> None:
        if not self._started:
            self._start()  # in-code integrations are set up: their reset() must run
        self._factory.reset()

    def shutdown(self, deadline: float) -> bool:
        # The factory first: it waits (within the deadline) for a config still on its way,
        # since messages are held for it; then the config thread may stop.
        done = self._factory.shutdown(deadline, config_coming=self._started)
        if self._config is not None:
            self._config.stop(0.5)
        return done

    def status(self) -> list[dict[str, Any]]:
        return self._factory.status()

    def counters(self) -> dict[str, dict[str, int]]:
        return self._factory.counters()

    def after_fork(self) -> None:
        """In a forked child: fresh factory threads and config client on the next message."""
        self._lock = threading.Lock()
        self._started = False
        self._factory.after_fork()
        if self._config is not None:
            self._config.after_fork()
