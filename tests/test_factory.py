"""The integration factory: enabling from config, routing, the pre-config buffer, isolation."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from pydantic import SecretStr

from analytics_sdk._factory import Discovered, Factory, install_hint
from analytics_sdk._serialization import dumps
from analytics_sdk.errors import DeliveryError
from analytics_sdk.integration import Integration, IntegrationOptions, RejectedMessage
from analytics_sdk.models import Message, TrackMessage

# -- stand-ins for the parsed sourceConfig (the factory reads only these fields) ---------------


@dataclass(frozen=True)
class Definition:
    name: str
    display_name: str


@dataclass(frozen=True)
class Destination:
    id: str
    destination_definition: Definition
    config: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True

    @property
    def device_mode(self) -> bool:
        mode = self.config.get("connectionMode")
        return self.enabled and (
            mode in ("device", "hybrid") or self.config.get("useNativeSDK") is True
        )


@dataclass(frozen=True)
class Source:
    destinations: list[Destination]


@dataclass(frozen=True)
class Config:
    source: Source


def config(*destinations: Destination) -> Config:
    return Config(Source(list(destinations)))


def acme(**settings: Any) -> Destination:
    return Destination(
        "dst_acme",
        Definition("ACME", "Acme"),
        {"apiKey": "sk_1", "connectionMode": "device", **settings},
    )


# -- integrations that record ----------------------------------------------------------------


class AcmeOptions(IntegrationOptions):
    api_key: SecretStr


class Recorder(Integration[AcmeOptions]):
    key = "acme"
    display_name = "Acme"
    destination_names = frozenset({"ACME"})
    options_model = AcmeOptions
    instances: ClassVar[list[Recorder]] = []

    def setup(self) -> None:
        self.seen: list[str] = []
        self.lock = threading.Lock()
        self.stopped = False
        Recorder.instances.append(self)

    def handle(self, message: Message) -> None:
        if isinstance(message, TrackMessage) and message.event == "Refused":
            raise RejectedMessage("not for Acme")
        with self.lock:
            self.seen.append(f"{message.type}:{getattr(message, 'event', '')}")

    def shutdown(self, timeout: float) -> None:
        self.stopped = True


class Exploder(Integration[IntegrationOptions]):
    key = "boom"
    display_name = "Boom"

    def track(self, message: TrackMessage) -> None:
        raise RuntimeError("wrapper bug")


class Sleeper(Integration[IntegrationOptions]):
    key = "slow"
    display_name = "Slow"

    def track(self, message: TrackMessage) -> None:
        time.sleep(5)


def discovered(*classes: type[Integration[Any]], missing: tuple[str, ...] = ()) -> Any:
    found = {cls.key: Discovered(cls.key, cls) for cls in classes}
    for key in missing:
        found[key] = Discovered(key, hint=install_hint(key))
    return lambda: found


Reports = list[tuple[DeliveryError, list[dict[str, Any]]]]


def make_factory(
    *classes: type[Integration[Any]],
    custom: tuple[Integration[Any], ...] = (),
    missing: tuple[str, ...] = (),
) -> tuple[Factory, Reports]:
    Recorder.instances = []
    reports: Reports = []
    factory = Factory(lambda: "anon-1", lambda e, m: reports.append((e, m)), custom,
                      discovered(*classes, missing=missing))  # fmt: skip
    factory.start()
    return factory, reports


def wire(kind: str = "track", **fields: Any) -> bytes:
    base: dict[str, Any] = {"type": kind, "messageId": f"m-{time.monotonic_ns()}", "userId": "u1"}
    if kind == "track":
        base["event"] = "Order Completed"
    return dumps({**base, **fields})


def settle(factory: Factory) -> None:
    assert factory.flush(time.monotonic() + 5)


def recorder() -> Recorder:
    (instance,) = Recorder.instances
    return instance


# -- tests -----------------------------------------------------------------------------------


def test_a_device_mode_destination_enables_its_integration_and_routes_every_call() -> None:
    factory, _ = make_factory(Recorder)
    factory.apply(config(acme()))
    for kind in ("track", "identify", "page", "screen", "group", "alias"):
        extra = (
            {"groupId": "g"} if kind == "group" else {"previousId": "p"} if kind == "alias" else {}
        )
        factory.dispatch(wire(kind, **extra))
    settle(factory)
    assert [s.split(":")[0] for s in recorder().seen] == [
        "track",
        "identify",
        "page",
        "screen",
        "group",
        "alias",
    ]
    (status,) = factory.status()
    assert status["key"] == "acme"
    assert status["active"]
    assert status["enabled_by_config"]
    assert status["installed"]
    assert status["counters"]["handled"] == 6


def test_cloud_mode_and_disabled_destinations_stay_off() -> None:
    factory, _ = make_factory(Recorder)
    factory.apply(config(acme(connectionMode="cloud")))
    factory.dispatch(wire())
    settle(factory)
    assert Recorder.instances == []
    assert factory.active is False  # nothing can receive: the client may skip dispatch()


def test_legacy_use_native_sdk_enables_device_mode() -> None:
    factory, _ = make_factory(Recorder)
    factory.apply(
        config(Destination("d", Definition("ACME", "Acme"), {"apiKey": "k", "useNativeSDK": True}))
    )
    factory.dispatch(wire())
    settle(factory)
    assert recorder().seen == ["track:Order Completed"]


def test_event_filtering_allow_and_deny_lists_apply_to_track_only() -> None:
    factory, _ = make_factory(Recorder)
    factory.apply(config(acme(eventFilteringOption="whitelistedEvents",
                              whitelistedEvents=[{"eventName": " Order Completed "}])))  # fmt: skip
    factory.dispatch(wire(event="Order Completed"))
    factory.dispatch(wire(event="Page Scrolled"))
    factory.dispatch(wire("identify"))
    settle(factory)
    assert recorder().seen == ["track:Order Completed", "identify:"]

    factory2, _ = make_factory(Recorder)
    factory2.apply(config(acme(eventFilteringOption="blacklistedEvents",
                               blacklistedEvents=[{"eventName": "Page Scrolled"}])))  # fmt: skip
    factory2.dispatch(wire(event="Order Completed"))
    factory2.dispatch(wire(event="Page Scrolled"))
    settle(factory2)
    assert recorder().seen == ["track:Order Completed"]


@pytest.mark.parametrize(
    ("switches", "delivered"),
    [({"All": False}, False), ({"All": False, "Acme": True}, True), ({"Acme": False}, False),
     ({"All": True}, True), ({"Acme": {"option": 1}}, True)],
)  # fmt: skip
def test_the_integrations_map_switches_destinations(
    switches: dict[str, Any], delivered: bool
) -> None:
    factory, _ = make_factory(Recorder)
    factory.apply(config(acme()))
    factory.dispatch(wire(integrations=switches))
    settle(factory)
    assert bool(recorder().seen) is delivered


def test_invalid_options_keep_one_integration_off_and_name_the_field() -> None:
    class Other(Recorder):
        key = "other"
        display_name = "Other"
        destination_names = frozenset({"OTHER"})

    factory, _ = make_factory(Recorder, Other)
    bad = Destination("d1", Definition("ACME", "Acme"), {"connectionMode": "device", "apiKey": 42})
    good = Destination(
        "d2", Definition("OTHER", "Other"), {"connectionMode": "device", "apiKey": "k"}
    )
    factory.apply(config(bad, good))
    factory.dispatch(wire())
    settle(factory)
    statuses = {s["key"]: s for s in factory.status()}
    assert statuses["acme"]["active"] is False
    assert "apiKey" in statuses["acme"]["options_error"]  # named as the control plane names it
    assert "42" not in statuses["acme"]["options_error"]  # values are never echoed
    assert statuses["other"]["active"] is True
    assert [i.key for i in Recorder.instances] == ["other"]


def test_a_missing_destination_sdk_is_reported_with_its_pip_line() -> None:
    factory, _ = make_factory(missing=("acme",))
    factory.apply(config(acme()))
    (status,) = factory.status()
    assert status["key"] == "acme"
    assert status["installed"] is False
    assert status["hint"] == "pip install 'analytics-sdk[acme]'"
    assert status["enabled_by_config"] is True
    assert status["active"] is False


def test_events_tracked_before_the_config_are_replayed_once() -> None:
    factory, _ = make_factory(Recorder)
    for n in range(3):
        factory.dispatch(wire(event=f"Early {n}"))
    factory.apply(config(acme()))
    factory.dispatch(wire(event="Late"))
    factory.apply(config(acme()))  # a refresh with the same config replays nothing
    settle(factory)
    assert recorder().seen == ["track:Early 0", "track:Early 1", "track:Early 2", "track:Late"]


def test_the_pre_config_buffer_drops_the_oldest_and_counts() -> None:
    factory, _ = make_factory(Recorder)
    for n in range(1005):
        factory.dispatch(wire(event=f"E{n}"))
    assert factory.buffer_dropped == 5
    factory.apply(config(acme()))
    settle(factory)
    assert recorder().seen[0] == "track:E5"
    assert len(recorder().seen) == 1000


def test_disabling_stops_and_changing_options_restarts() -> None:
    factory, _ = make_factory(Recorder)
    factory.apply(config(acme()))
    first = recorder()
    factory.apply(config(acme(apiKey="sk_2")))
    settle(factory)
    assert first.stopped is True
    assert len(Recorder.instances) == 2
    factory.apply(config())
    settle(factory)
    assert Recorder.instances[1].stopped is True
    assert factory.status()[0]["active"] is False


@pytest.mark.allow_sdk_errors
def test_a_raising_and_a_slow_integration_never_hold_up_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = Recorder(AcmeOptions.model_validate({"apiKey": "k"}))
    factory, _ = make_factory(
        custom=(good, Exploder(IntegrationOptions()), Sleeper(IntegrationOptions()))
    )
    factory.setup_custom()
    factory.without_config()
    started = time.monotonic()
    for n in range(20):
        factory.dispatch(wire(event=f"E{n}"))
    assert time.monotonic() - started < 0.5  # the caller never waits for a wrapper
    assert factory.flush(time.monotonic() + 1.0) is False  # the sleeper overruns: abandoned
    assert len(good.seen) == 20
    counters = factory.counters()
    assert counters["boom"]["failed"] == 20
    tracebacks = [  # formatted into the message, so that secrets can be masked in it
        r for r in caplog.records
        if r.levelname == "ERROR" and "boom" in r.getMessage() and "Traceback" in r.getMessage()
    ]  # fmt: skip
    assert len(tracebacks) == 1  # the first failure only; repeats at DEBUG


def test_a_rejected_message_is_reported_and_counted() -> None:
    factory, reports = make_factory(Recorder)
    factory.apply(config(acme()))
    factory.dispatch(wire(event="Refused"))
    factory.dispatch(wire(event="Fine"))
    settle(factory)
    ((error, messages),) = reports
    assert error.reason == "rejected_by_integration"
    assert messages[0]["event"] == "Refused"
    assert factory.counters()["acme"] == {"handled": 1, "failed": 0, "rejected": 1, "dropped": 0}


def test_shutdown_stops_every_worker_within_its_deadline() -> None:
    factory, _ = make_factory(Recorder)
    factory.apply(config(acme()))
    factory.dispatch(wire())
    assert factory.shutdown(time.monotonic() + 5)
    assert recorder().stopped is True
    assert recorder().seen == ["track:Order Completed"]
    factory.dispatch(wire())  # after shutdown: ignored, never raises
