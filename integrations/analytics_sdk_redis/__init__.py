"""Redis destination: user and group traits as hashes, optionally each user's latest events.

Matches RudderStack's Redis destination (`address`, `password`, `database`, `clusterMode`,
`secure`, `skipVerify`, `caCertificate`, `prefix`) and its key layout: an identify becomes
`HSET {prefix}:user:{userId}` with the traits flattened into dotted fields. Each batch is one
pipeline (one round trip per node); a command Redis refuses rejects only its message, a
connection that stays down after the bounded retries rejects the batch with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import FullJitterBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.typing import EncodableT, FieldT

from analytics_sdk.integration import (
    Integration,
    IntegrationContext,
    Rejected,
    RejectedMessage,
)
from analytics_sdk.models import Message
from analytics_sdk_redis._mapping import EventEntry, HashWrite, plan
from analytics_sdk_redis._options import RedisOptions, parse_address

__all__ = ["RedisIntegration", "RedisOptions"]

_BACKOFF_BASE = 0.05  # seconds before the first retry, before jitter
_BACKOFF_CAP = 1.0  # seconds: the longest wait between two attempts
_ALL_TYPES = frozenset({"identify", "group", "track"})

RedisClient = redis.Redis | RedisCluster


class RedisIntegration(Integration[RedisOptions]):
    """Stores identify and group traits (and track events when `track_events` is on)."""

    key = "redis"
    display_name = "Redis"
    destination_names = frozenset({"REDIS"})
    options_model = RedisOptions
    batch_size = 100
    supported_types = _ALL_TYPES

    def __init__(self, options: RedisOptions, context: IntegrationContext | None = None) -> None:
        super().__init__(options, context)
        if not options.track_events:
            # The factory reads this per instance: track calls are not even queued for us.
            self.supported_types = _ALL_TYPES - {"track"}
        self._client: RedisClient | None = None
        self._secrets = _secret_texts(options)

    def setup(self) -> None:
        if self.options.cluster_mode and self.options.database:
            self.logger.warning(
                "Redis: database %d is ignored in cluster mode (a cluster has only database 0)",
                self.options.database,
            )
        try:
            self._client = self._connect()
        except (RedisError, RedisClusterException) as exc:
            # Only a cluster client talks to Redis here (to learn the slots); try again later.
            self.logger.warning(
                "Redis cluster not reachable yet (%s); retrying with the next batch",
                self._masked(_describe(exc)),
            )

    def handle(self, message: Message) -> None:
        for rejection in self.handle_batch([message]):
            raise RejectedMessage(rejection.reason)

    def handle_batch(self, messages: Sequence[Message]) -> list[Rejected]:
        keep = self.options.max_events_per_user if self.options.track_events else None
        rejected: list[Rejected] = []
        planned: list[tuple[Message, HashWrite | EventEntry]] = []
        for message in messages:
            try:
                planned.append((message, plan(message, self.options.prefix, keep)))
            except RejectedMessage as exc:
                rejected.append(Rejected(message.message_id, exc.reason))
        if not planned:
            return rejected
        try:
            outcomes = self._write([write for _, write in planned])
        except (RedisError, RedisClusterException) as exc:
            reason = self._masked(self._failure(exc))
            self.logger.debug("Redis: %d writes not done: %s", len(planned), reason)
            return rejected + [Rejected(message.message_id, reason) for message, _ in planned]
        for (message, _), problem in zip(planned, outcomes, strict=True):
            if problem is not None:
                rejected.append(Rejected(message.message_id, self._masked(problem)))
        return rejected

    def shutdown(self, timeout: float) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()  # closes the sockets; nothing is buffered client-side

    # -- internals ------------------------------------------------------------------------

    def _connect(self) -> RedisClient:
        options = self.options
        retry = Retry(
            FullJitterBackoff(cap=_BACKOFF_CAP, base=_BACKOFF_BASE),
            options.max_retries,
        )
        url = options.url.get_secret_value() if options.url is not None else None
        tls = options.secure or (url is not None and url.startswith("rediss:"))
        kwargs: dict[str, Any] = {
            "password": options.password.get_secret_value() if options.password else None,
            "socket_timeout": options.socket_timeout,
            "socket_connect_timeout": options.socket_connect_timeout,
        }
        if tls:
            if url is None:
                kwargs["ssl"] = True  # a rediss:// URL picks the TLS connection class itself
            kwargs["ssl_cert_reqs"] = "none" if options.skip_verify else "required"
            kwargs["ssl_check_hostname"] = not options.skip_verify
            if options.ca_certificate is not None:
                kwargs["ssl_ca_data"] = options.ca_certificate.get_secret_value()
        if options.cluster_mode:
            if url is not None:
                return RedisCluster(url=url, retry=retry, **kwargs)
            nodes = [
                ClusterNode(host, port)  # type: ignore[no-untyped-call]  # redis-py left it bare
                for host, port in parse_address(options.address or "")
            ]
            return RedisCluster(startup_nodes=nodes, retry=retry, **kwargs)
        if url is not None:
            return redis.Redis.from_url(url, db=options.database, retry=retry, **kwargs)
        ((host, port),) = parse_address(options.address or "")
        return redis.Redis(host=host, port=port, db=options.database, retry=retry, **kwargs)

    def _write(self, writes: list[HashWrite | EventEntry]) -> list[str | None]:
        """One pipeline for all writes; per write, None or why Redis refused it."""
        if self._client is None:
            self._client = self._connect()
        pipe = self._client.pipeline(transaction=False)  # a cluster splits it by node
        try:
            for write in writes:
                if isinstance(write, HashWrite):
                    fields: dict[FieldT, EncodableT] = {k: v for k, v in write.fields.items()}
                    pipe.hset(write.key, mapping=fields)
                else:
                    pipe.zadd(write.key, {write.member: write.score})
                    pipe.zremrangebyrank(write.key, 0, -write.keep - 1)  # keep the newest
            replies: list[Any] = pipe.execute(raise_on_error=False)
        finally:
            pipe.reset()  # gives the connection back to the pool
        outcomes: list[str | None] = []
        position = 0
        for write in writes:
            count = 1 if isinstance(write, HashWrite) else 2
            errors = [r for r in replies[position : position + count] if isinstance(r, Exception)]
            position += count
            command = "HSET" if isinstance(write, HashWrite) else "ZADD"
            outcomes.append(f"Redis refused {command} {write.key}: {errors[0]}" if errors else None)
        return outcomes

    def _failure(self, exc: Exception) -> str:
        if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
            attempts = self.options.max_retries + 1
            plural = "s" if attempts > 1 else ""
            return f"Redis connection failed after {attempts} attempt{plural} ({_describe(exc)})"
        return f"Redis failed ({_describe(exc)})"

    def _masked(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "**********")
        return text


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _secret_texts(options: RedisOptions) -> list[str]:
    """Every form of a secret that an error text could carry, longest first."""
    found: set[str] = set()
    if options.password is not None:
        found.add(options.password.get_secret_value())
    if options.url is not None:
        url = options.url.get_secret_value()
        found.add(url)
        password = urlsplit(url).password
        if password:
            found.update({password, unquote(password)})
    return sorted((s for s in found if len(s) >= 3), key=len, reverse=True)
