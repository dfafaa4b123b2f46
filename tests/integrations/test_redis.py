"""The Redis wrapper: its contract, the real redis-py against a real redis-server, discovery."""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest
import redis
from analytics_sdk_redis import RedisIntegration, RedisOptions
from conftest import MakeClient
from pydantic import ValidationError
from support.servers import DataPlane

from analytics_sdk import AnalyticsError
from analytics_sdk.errors import describe
from analytics_sdk.integration import Integration, IntegrationOptions
from analytics_sdk.models import Message, parse_message
from analytics_sdk.testing import IntegrationContract
from integrations.conftest import StartRedis
from integrations.redis_server import (
    FlakyProxy,
    RedisServer,
    self_signed_certificate,
    start_or_fail,
)

CONTRACT_PASSWORD = "contract-redis-pw-7"
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
T0_MS = 1714564800000  # T0 in milliseconds since the epoch


class TestRedisContract(IntegrationContract):
    integration_class = RedisIntegration
    valid_config: ClassVar[dict[str, Any]] = {
        "address": "redis.internal:6379",
        "password": CONTRACT_PASSWORD,
        "database": "2",
        "clusterMode": False,
        "prefix": "contract",
        "trackEvents": True,
        "connectionMode": "device",
    }
    invalid_config: ClassVar[dict[str, Any]] = {"address": "cache.example:99999"}
    server: ClassVar[RedisServer]
    _directory: ClassVar[tempfile.TemporaryDirectory[str]]

    @classmethod
    def setup_class(cls) -> None:
        cls._directory = tempfile.TemporaryDirectory()
        cls.server = start_or_fail(Path(cls._directory.name), "--requirepass", CONTRACT_PASSWORD)

    @classmethod
    def teardown_class(cls) -> None:
        cls.server.stop()
        cls._directory.cleanup()

    def make_integration(self, options: IntegrationOptions) -> Integration[Any]:
        assert isinstance(options, RedisOptions)
        return RedisIntegration(options.model_copy(update={"address": self.server.address}))

    def test_the_contract_messages_reached_database_2(self) -> None:
        with self.server.client(password=CONTRACT_PASSWORD, db=2) as inspect:
            inspect.flushdb()  # the other contract checks wrote here too
            self.test_contract_each_call_is_handled_or_rejected()
            assert inspect.hget("contract:user:contract-user-1", "plan") == "pro"
            assert inspect.hget("contract:group:org-1", "employees") == "42"
            assert inspect.zcard("contract:events:contract-user-1") == 1


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("analytics_sdk_redis._BACKOFF_BASE", 0.001)
    monkeypatch.setattr("analytics_sdk_redis._BACKOFF_CAP", 0.01)


def integration(address: str, **settings: Any) -> RedisIntegration:
    config = {"address": address, "clusterMode": False, "socketTimeout": 2.0, **settings}
    return RedisIntegration(RedisOptions.model_validate(config))


def message(**wire: Any) -> Message:
    defaults = {"messageId": f"m-{wire.get('userId')}-{wire.get('type')}",
                "originalTimestamp": T0.isoformat()}  # fmt: skip
    return parse_message({**defaults, **wire})


def scored(client: redis.Redis, key: str) -> list[tuple[str, float]]:
    """The members of a sorted set with their scores, lowest score first."""
    reply = cast("list[tuple[str, float]]", client.zrange(key, 0, -1, withscores=True))
    return [(str(member), float(score)) for member, score in reply]


class Reports:
    """An on_error callback that keeps (error, messageId) pairs."""

    def __init__(self) -> None:
        self.items: list[tuple[AnalyticsError, str]] = []
        self._lock = threading.Lock()

    def __call__(self, error: AnalyticsError, messages: list[dict[str, Any]]) -> None:
        with self._lock:
            self.items.extend((error, m["messageId"]) for m in messages)

    def reasons(self) -> dict[str, str]:
        with self._lock:
            return {message_id: str(error) for error, message_id in self.items}


@pytest.fixture
def inspect(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis_server.client() as client:
        yield client


# -- what each call writes -------------------------------------------------------------------


def test_identify_writes_rudderstack_hash_layout(
    make_client: MakeClient, redis_server: RedisServer, inspect: redis.Redis
) -> None:
    client = make_client(integrations=[integration(redis_server.address, prefix=" app ")])
    traits = {
        "email": "ada@example.com",
        "address": {"city": "Berlin", "geo": {"lat": 52.52}},
        "tags": ["a", "b"],
        "vip": True,
        "visits": 3.0,
        "age": 42,
        "nickname": None,
        "empty": {},
    }
    context = {"traits": {"plan": "pro", "email": "old@example.com"}}
    assert client.identify("u1", traits, context=context)
    assert client.flush(timeout=5)
    assert inspect.keys("*") == ["app:user:u1"]  # prefix trimmed, then ":"
    assert inspect.hgetall("app:user:u1") == {
        "email": "ada@example.com",  # the call's traits win over context.traits
        "plan": "pro",
        "address.city": "Berlin",
        "address.geo.lat": "52.52",
        "tags": '["a","b"]',
        "vip": "true",
        "visits": "3",
        "age": "42",
    }
    client.identify("u1", {"age": 43})  # merged into the hash, other fields kept
    assert client.flush(timeout=5)
    assert inspect.hget("app:user:u1", "age") == "43"
    assert inspect.hget("app:user:u1", "email") == "ada@example.com"
    assert client.stats().integrations["redis"]["handled"] == 2


def test_group_traits_are_a_hash_per_group(
    make_client: MakeClient, redis_server: RedisServer, inspect: redis.Redis
) -> None:
    client = make_client(integrations=[integration(redis_server.address)])
    client.group("u1", "g1", {"name": "Acme", "plan": {"tier": "gold"}, "seats": 12})
    assert client.flush(timeout=5)
    assert inspect.hgetall("group:g1") == {"name": "Acme", "plan.tier": "gold", "seats": "12"}


def test_track_keeps_each_users_newest_events_by_event_time(
    make_client: MakeClient, redis_server: RedisServer, inspect: redis.Redis
) -> None:
    hook = integration(redis_server.address, trackEvents=True, maxEventsPerUser=3, prefix="p")
    client = make_client(integrations=[hook])
    ids = {}
    for n in (3, 0, 4, 1, 2):  # sent out of order; each one's own timestamp decides
        sent = client.track("u1", f"E{n}", {"revenue": 9.5 + n}, timestamp=T0 + timedelta(hours=n))
        assert sent is not None
        ids[n] = sent
    assert client.flush(timeout=5)
    stored = scored(inspect, "p:events:u1")
    assert [score for _, score in stored] == [T0_MS + n * 3_600_000 for n in (2, 3, 4)]
    entries = [json.loads(member) for member, _ in stored]
    assert [e["messageId"] for e in entries] == [ids[2], ids[3], ids[4]]
    assert entries[0] == {
        "messageId": ids[2],
        "event": "E2",
        "properties": {"revenue": 11.5},
        "timestamp": "2024-05-01T14:00:00.000Z",
    }
    assert client.stats().integrations["redis"]["handled"] == 5


def test_the_same_message_twice_is_stored_once(
    redis_server: RedisServer, inspect: redis.Redis
) -> None:
    hook = integration(redis_server.address, trackEvents=True)
    hook.setup()
    track = message(type="track", userId="u1", event="Paid", messageId="dup-1")
    assert hook.handle_batch([track]) == []
    assert hook.handle_batch([track]) == []  # a redelivery: same member, same score
    hook.shutdown(1)
    assert inspect.zcard("events:u1") == 1


def test_unsupported_calls_are_not_routed_and_track_is_opt_in(
    make_client: MakeClient, redis_server: RedisServer, inspect: redis.Redis
) -> None:
    hook = integration(redis_server.address)
    assert hook.supported_types == {"identify", "group"}  # trackEvents is off by default
    assert RedisIntegration.supported_types == {"identify", "group", "track"}
    client = make_client(integrations=[hook])
    client.page("u1", name="Pricing")
    client.screen("u1", name="Settings")
    client.alias("old-id", "u1")
    client.track("u1", "Not Stored")
    client.identify("u1", {"plan": "pro"})
    assert client.flush(timeout=5)
    counters = client.stats().integrations["redis"]
    assert (counters["handled"], counters["rejected"], counters["failed"]) == (1, 0, 0)
    assert inspect.keys("*") == ["user:u1"]


def test_messages_redis_cannot_key_are_rejected_with_a_reason(
    make_client: MakeClient, redis_server: RedisServer, inspect: redis.Redis
) -> None:
    reports = Reports()
    hook = integration(redis_server.address, trackEvents=True)
    client = make_client(integrations=[hook], on_error=reports)
    anonymous = client.identify(anonymous_id="anon-1", traits={"plan": "pro"})
    bare = client.identify("u1", {"nickname": None})
    anonymous_track = client.track(anonymous_id="anon-1", event="Clicked")
    empty_group = client.group("u1", "g1")
    assert client.flush(timeout=5)
    reasons = reports.reasons()
    assert {error.reason for error, _ in reports.items} == {"rejected_by_integration"}
    assert "has none" in reasons[str(anonymous)]
    assert "no traits" in reasons[str(bare)]
    assert "has none" in reasons[str(anonymous_track)]
    assert "no traits" in reasons[str(empty_group)]
    assert client.stats().integrations["redis"]["rejected"] == 4
    assert inspect.keys("*") == []


# -- batching and failures -------------------------------------------------------------------


def test_a_batch_is_one_pipeline(
    monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer, inspect: redis.Redis
) -> None:
    executions: list[int] = []
    real_execute = redis.client.Pipeline.execute

    def counting(self: redis.client.Pipeline, raise_on_error: bool = True) -> list[Any]:
        executions.append(len(self.command_stack))
        return real_execute(self, raise_on_error)

    monkeypatch.setattr(redis.client.Pipeline, "execute", counting)
    hook = integration(redis_server.address, trackEvents=True)
    hook.setup()
    batch = [message(type="identify", userId=f"u{n}", traits={"n": n}) for n in range(60)]
    batch += [message(type="track", userId=f"u{n}", event="E") for n in range(40)]
    assert len(batch) == RedisIntegration.batch_size
    assert hook.handle_batch(batch) == []
    hook.shutdown(1)
    assert executions == [60 + 40 * 2]  # one round trip: HSET each, ZADD + trim each
    assert inspect.dbsize() == 100


def test_a_command_redis_refuses_rejects_only_its_message(
    make_client: MakeClient, redis_server: RedisServer, inspect: redis.Redis
) -> None:
    inspect.set("user:u2", "a plain string")  # HSET on it answers WRONGTYPE
    reports = Reports()
    hook = integration(redis_server.address)
    hook.setup()
    first, second = (message(type="identify", userId=u, traits={"a": 1}) for u in ("u1", "u2"))
    (refused,) = hook.handle_batch([first, second])
    assert refused.message_id == second.message_id
    assert refused.reason.startswith("Redis refused HSET user:u2: WRONGTYPE")
    hook.shutdown(1)

    client = make_client(integrations=[integration(redis_server.address)], on_error=reports)
    sent = client.identify("u2", {"plan": "pro"})
    assert client.flush(timeout=5)
    ((error, message_id),) = reports.items
    assert (error.reason, message_id) == ("rejected_by_integration", sent)
    assert "WRONGTYPE" in str(error)
    assert inspect.hget("user:u1", "a") == "1"
    counters = client.stats().integrations["redis"]
    assert (counters["handled"], counters["rejected"]) == (0, 1)


def test_a_dropped_connection_is_retried_within_max_retries(
    make_client: MakeClient, redis_server: RedisServer, inspect: redis.Redis
) -> None:
    proxy = FlakyProxy(redis_server.port, drop=2).start()
    try:
        client = make_client(integrations=[integration(proxy.address, maxRetries=2)])
        client.identify("u1", {"plan": "pro"})
        assert client.flush(timeout=5)
        assert proxy.accepted == 3  # two dropped, the third attempt delivered
        assert client.stats().integrations["redis"]["handled"] == 1
        assert inspect.hget("user:u1", "plan") == "pro"
    finally:
        proxy.stop()


def test_retries_are_bounded_then_the_batch_is_rejected(
    make_client: MakeClient, redis_server: RedisServer, inspect: redis.Redis
) -> None:
    proxy = FlakyProxy(redis_server.port, drop=100).start()
    reports = Reports()
    try:
        client = make_client(
            integrations=[integration(proxy.address, maxRetries=1)], on_error=reports
        )
        sent = client.identify("u1", {"plan": "pro"})
        assert client.flush(timeout=5)
        assert proxy.accepted == 2  # the first attempt and one retry, no more
    finally:
        proxy.stop()
    assert (
        "Redis connection failed after 2 attempts (ConnectionError" in reports.reasons()[str(sent)]
    )
    counters = client.stats().integrations["redis"]
    assert (counters["handled"], counters["rejected"], counters["failed"]) == (0, 1, 0)
    assert inspect.keys("*") == []


def test_a_server_that_is_down_is_reported_without_the_password(
    make_client: MakeClient, start_redis: StartRedis, caplog: pytest.LogCaptureFixture
) -> None:
    password = "never-shown-pw-42"
    server = start_redis("--requirepass", password)
    address = server.address
    server.stop()  # nothing listens there any more: connection refused
    reports = Reports()
    hook = integration(address, password=password, maxRetries=2)
    assert password not in repr(hook.options)
    client = make_client(integrations=[hook], on_error=reports)
    sent = client.identify("u1", {"plan": "pro"})
    assert client.flush(timeout=5)
    reason = reports.reasons()[str(sent)]
    assert "Redis connection failed after 3 attempts" in reason
    assert "Connection refused" in reason
    everything = [reason, *(r.getMessage() for r in caplog.records)]
    everything += [str(s) for s in client.integrations_status()]
    assert not [text for text in everything if password in text]


# -- connection settings ---------------------------------------------------------------------


def test_password_and_database_select(make_client: MakeClient, start_redis: StartRedis) -> None:
    server = start_redis("--requirepass", "s3cret-pass")
    client = make_client(
        integrations=[integration(server.address, password="s3cret-pass", database="3")]
    )
    client.identify("u1", {"plan": "pro"})
    assert client.flush(timeout=5)
    with server.client(password="s3cret-pass", db=3) as db3:
        assert db3.hgetall("user:u1") == {"plan": "pro"}
    with server.client(password="s3cret-pass") as db0:
        assert db0.dbsize() == 0


def test_a_wrong_password_is_rejected_without_echoing_it(
    make_client: MakeClient, start_redis: StartRedis, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_redis("--requirepass", "the-right-pass")
    reports = Reports()
    client = make_client(
        integrations=[integration(server.address, password="a-wrong-pass", maxRetries=0)],
        on_error=reports,
    )
    sent = client.identify("u1", {"plan": "pro"})
    assert client.flush(timeout=5)
    reason = reports.reasons()[str(sent)]
    assert "AuthenticationError" in reason
    texts = [reason, *(r.getMessage() for r in caplog.records)]
    assert not [t for t in texts if "a-wrong-pass" in t or "the-right-pass" in t]


def test_a_url_overrides_address_password_and_database(
    make_client: MakeClient, start_redis: StartRedis
) -> None:
    server = start_redis("--requirepass", "url-pass")
    url = f"redis://:url-pass@{server.address}/5"
    hook = integration("unused.example:1", url=url, password="not-this-one")
    assert "url-pass" not in repr(hook.options)
    client = make_client(integrations=[hook])
    client.identify("u1", {"plan": "pro"})
    assert client.flush(timeout=5)
    with server.client(password="url-pass", db=5) as db5:
        assert db5.hgetall("user:u1") == {"plan": "pro"}


def test_cluster_mode_writes_through_the_cluster_client(
    make_client: MakeClient, redis_cluster: RedisServer
) -> None:
    config = {"address": redis_cluster.address, "prefix": "cl", "trackEvents": True}
    hook = RedisIntegration(RedisOptions.model_validate(config))  # clusterMode defaults to true
    assert hook.options.cluster_mode is True
    client = make_client(integrations=[hook])
    client.identify("u1", {"plan": "pro"})
    client.group("u1", "g1", {"name": "Acme"})
    sent = client.track("u1", "Paid", timestamp=T0)
    assert client.flush(timeout=5)
    assert client.stats().integrations["redis"]["handled"] == 3
    with redis_cluster.client() as node:
        assert node.hgetall("cl:user:u1") == {"plan": "pro"}
        assert node.hgetall("cl:group:g1") == {"name": "Acme"}
        ((member, score),) = scored(node, "cl:events:u1")
    assert (json.loads(member)["messageId"], score) == (sent, T0_MS)


def test_tls_with_the_ca_certificate_or_skip_verify(
    make_client: MakeClient, start_redis: StartRedis, tmp_path: Path
) -> None:
    cert, key = self_signed_certificate(tmp_path / "tls")
    server = start_redis(
        "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", tls=True,
    )  # fmt: skip
    reports = Reports()
    pem = cert.read_text()
    client = make_client(
        integrations=[integration(server.address, secure=True, caCertificate=pem, prefix="ca")],
        on_error=reports,
    )
    client.identify("u1", {"plan": "pro"})
    assert client.flush(timeout=5)
    skip = make_client(integrations=[integration(server.address, secure=True, skipVerify=True,
                                                 prefix="skip")])  # fmt: skip
    skip.identify("u1", {"plan": "pro"})
    assert skip.flush(timeout=5)
    strict = make_client(
        integrations=[integration(server.address, secure=True, maxRetries=0, prefix="no")],
        on_error=reports,
    )
    refused = strict.identify("u1", {"plan": "pro"})
    assert strict.flush(timeout=5)
    assert list(reports.reasons()) == [refused]  # only the untrusted certificate failed
    assert "CERTIFICATE_VERIFY_FAILED" in reports.reasons()[str(refused)]
    with server.client(ssl=True, ssl_ca_certs=str(cert)) as inspect:
        assert sorted(inspect.keys("*")) == ["ca:user:u1", "skip:user:u1"]


# -- options ---------------------------------------------------------------------------------


def test_options_follow_the_control_plane_config() -> None:
    options = RedisOptions.model_validate(
        {
            "address": "cache:6380",
            "password": "",
            "database": "",
            "caCertificate": "",
            "prefix": "  app  ",
            "secure": False,
        }
    )
    assert options.cluster_mode is True  # RudderStack's default when the key is missing
    assert (options.password, options.database, options.ca_certificate) == (None, 0, None)
    assert options.prefix == "app"
    several = RedisOptions.model_validate({"address": "a:1, b:2,[::1]:7000", "clusterMode": True})
    assert several.address == "a:1, b:2,[::1]:7000"


@pytest.mark.parametrize(
    ("config", "key", "secret"),
    [
        ({"address": "cache-host:70000", "clusterMode": False}, "address", "cache-host"),
        ({"address": "h1:1,h2:2", "clusterMode": False}, "address", "h1:1"),
        ({"address": "redis://:pw-in-address@h:1"}, "address", "pw-in-address"),
        ({"clusterMode": False}, "address", None),
        ({"url": "http://user:pw-in-url@h:1"}, "url", "pw-in-url"),
        ({"url": "redis://:pw-in-url@h:1/3"}, "url", "pw-in-url"),  # a database in cluster mode
        ({"url": "redis://:pw-in-url@h:1", "secure": True}, "url", "pw-in-url"),
        ({"address": "h:1", "database": "db-three", "clusterMode": False}, "database", "db-three"),
        ({"address": "h:1", "database": -1, "clusterMode": False}, "database", None),
        ({"address": "h:1", "prefix": "x" * 101}, "prefix", "x" * 101),
        ({"address": "h:1", "maxEventsPerUser": 0}, "maxEventsPerUser", None),
        ({"address": "h:1", "socketTimeout": 0}, "socketTimeout", None),
    ],
)
def test_invalid_options_name_the_key_not_the_value(
    config: dict[str, Any], key: str, secret: str | None
) -> None:
    with pytest.raises(ValidationError) as info:
        RedisOptions.model_validate(config)
    text = describe(info.value)  # what integrations_status() and the log show
    assert [e["loc"] for e in info.value.errors()] == [(key,)]
    assert text.startswith(f"{key}: ")
    if secret is not None:
        assert secret not in text


# -- discovery -------------------------------------------------------------------------------


def test_the_factory_discovers_and_enables_it_from_a_source_config(
    make_client: MakeClient,
    redis_server: RedisServer,
    inspect: redis.Redis,
    data_plane: DataPlane,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    document = {
        "source": {
            "id": "src",
            "destinations": [
                {
                    "id": "dst_redis",
                    "enabled": True,
                    "destinationDefinition": {"name": "REDIS", "displayName": "Redis"},
                    "config": {
                        "address": redis_server.address,
                        "clusterMode": False,
                        "database": "",
                        "prefix": "cfg",
                        "connectionMode": "device",
                    },
                }
            ],
        }
    }
    client = make_client(source_config=document)
    message_id = client.identify("u1", {"plan": "pro"})
    assert client.flush(timeout=10)
    assert inspect.hgetall("cfg:user:u1") == {"plan": "pro"}
    assert data_plane.message_ids() == [message_id]  # the data plane copy keeps the messageId
    status = {s["key"]: s for s in client.integrations_status()}
    assert status["redis"]["active"] is True
    assert client.stats().integrations["redis"]["handled"] == 1


def test_a_cluster_unreachable_at_setup_is_tried_again_with_each_batch(
    redis_cluster: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = FlakyProxy(redis_cluster.port, drop=2).start()  # down for setup and one batch
    hook = RedisIntegration(RedisOptions(address=proxy.address, prefix="late", max_retries=0))
    try:
        hook.setup()  # a cluster client asks for the slot map when it is created
        assert any("not reachable yet" in r.getMessage() for r in caplog.records)
        first, second = (message(type="identify", userId=u, traits={"a": 1}) for u in ("u1", "u2"))
        (rejected,) = hook.handle_batch([first])
        assert rejected.message_id == first.message_id
        assert rejected.reason.startswith("Redis failed (RedisClusterException")
        assert hook.handle_batch([second]) == []  # the proxy forwards from now on
        hook.shutdown(1)
    finally:
        proxy.stop()
    assert proxy.accepted == 3
    with redis_cluster.client() as node:
        assert node.hgetall("late:user:u2") == {"a": "1"}
        assert node.exists("late:user:u1") == 0


def test_a_secret_in_a_reason_is_masked(redis_server: RedisServer, inspect: redis.Redis) -> None:
    secret = "pw-used-as-user-id"  # absurd, but a reason must never carry it
    inspect.set(f"user:{secret}", "a plain string")
    hook = integration(redis_server.address, password=secret)  # the default user takes any
    hook.setup()
    (refused,) = hook.handle_batch([message(type="identify", userId=secret, traits={"a": 1})])
    hook.shutdown(1)
    assert refused.reason == "Redis refused HSET user:**********: WRONGTYPE " + (
        "Operation against a key holding the wrong kind of value"
    )
