"""Fixtures for the integration tests: real `redis-server` processes on 127.0.0.1.

A missing `redis-server` fails these tests with the install line; it never skips them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from integrations.redis_server import CLUSTER_OK, RedisServer, free_port, start_or_fail

StartRedis = Callable[..., RedisServer]


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[StartRedis]:
    """start_redis(*redis_server_args, tls=False): a fresh server, stopped after the test."""
    servers: list[RedisServer] = []

    def start(*args: str, tls: bool = False) -> RedisServer:
        server = start_or_fail(tmp_path / f"redis-{len(servers)}", *args, tls=tls)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def redis_server(start_redis: StartRedis) -> RedisServer:
    """An empty redis-server of its own for one test."""
    return start_redis()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A one-node Redis Cluster owning every slot (module-scoped: it takes ~2 s to turn ok)."""
    directory = tmp_path_factory.mktemp("redis-cluster")
    server = start_or_fail(
        directory,
        "--cluster-enabled", "yes",
        "--cluster-port", str(free_port()),  # the default (port + 10000) may not exist
        "--cluster-config-file", str(directory / "nodes.conf"),
    )  # fmt: skip
    try:
        with server.client() as admin:
            admin.execute_command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        # A fresh master waits up to 2 s before it declares the cluster writable.
        if not server.wait_for_log(CLUSTER_OK, timeout=10):
            pytest.fail("the one-node cluster did not turn ok:\n" + "".join(server.output[-10:]))
        yield server
    finally:
        server.stop()
