"""Test helpers: a contract kit for integration authors, a capture client for applications.

For an integration author, a pytest mixin that checks a wrapper against the contract the
factory relies on (DESIGN 6)::

    from analytics_sdk.testing import IntegrationContract

    class TestAcmeContract(IntegrationContract):
        integration_class = AcmeIntegration
        valid_config = {"apiKey": "k", "connectionMode": "device"}  # as the control plane sends it
        invalid_config = {"apiKey": 42}                              # must fail validation

        def make_integration(self, options: IntegrationOptions) -> Integration[Any]:
            return AcmeIntegration(options)  # optional: aim it at a local fake server here

A check that does not apply is switched off by overriding its method (with `pytest.skip`
inside, or an empty body).

For an application author, a real `Client` that sends nothing and records every accepted
message, in wire form, as the data plane would get it::

    from analytics_sdk.testing import capture_client

    client = capture_client()
    client.track("u1", "Order Completed", {"revenue": 25.0})
    assert client.last["event"] == "Order Completed"

and the pytest fixture `analytics_capture` (`from analytics_sdk.testing import
analytics_capture` in a conftest.py). pytest is imported only when that fixture is asked for
or when a contract check needs it; importing this module does not import it.
"""

from __future__ import annotations

import contextlib
import copy
import re
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import uuid4

from pydantic import ValidationError

from analytics_sdk._factory import Factory
from analytics_sdk._logging import child_logger
from analytics_sdk._serialization import dumps
from analytics_sdk._version import __version__
from analytics_sdk.client import Client
from analytics_sdk.errors import DeliveryError, describe
from analytics_sdk.integration import (
    Integration,
    IntegrationContext,
    IntegrationOptions,
    Rejected,
    RejectedMessage,
)
from analytics_sdk.models import Message, parse_message

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from analytics_sdk.options import ClientOptionsKwargs

    def analytics_capture() -> Iterator[CaptureClient]:
        """A pytest fixture: a `CaptureClient`, shut down after the test (see module doc)."""
        ...


__all__ = [
    "CALL_TYPES",
    "CaptureClient",
    "IntegrationContract",
    "analytics_capture",
    "capture_client",
    "sample_messages",
]

CALL_TYPES: frozenset[str] = frozenset({"identify", "track", "page", "screen", "group", "alias"})
CAPTURE_TIMEOUT = 5.0  # seconds the capture client waits for its recorder to catch up
_KEY = re.compile(r"[a-z][a-z0-9_]*")
_ORDER = ("identify", "track", "page", "screen", "group", "alias")


# -- sample messages -------------------------------------------------------------------------


def sample_messages() -> list[Message]:
    """One well-formed message per call type, in spec order, with fresh messageIds.

    Shaped like what the client hands device mode: ids, context with the library,
    the integrations map, channel and originalTimestamp.
    """
    common: dict[str, Any] = {
        "userId": "contract-user-1",
        "anonymousId": "contract-anon-1",
        "context": {
            "library": {"name": "analytics-sdk-python", "version": __version__},
            "ip": "203.0.113.7",
        },
        "integrations": {"All": True},
        "channel": "server",
        "originalTimestamp": "2024-05-01T12:00:00.000Z",
    }
    calls: list[dict[str, Any]] = [
        {"type": "identify", "traits": {"email": "ada@example.com", "plan": "pro"}},
        {
            "type": "track",
            "event": "Order Completed",
            "properties": {"order_id": "A-1", "revenue": 25.5, "currency": "EUR"},
        },
        {
            "type": "page",
            "name": "Pricing",
            "category": "Docs",
            "properties": {"url": "https://example.com/pricing", "title": "Pricing"},
        },
        {"type": "screen", "name": "Settings", "category": "App", "properties": {"tab": "billing"}},
        {"type": "group", "groupId": "org-1", "traits": {"name": "Acme Inc", "employees": 42}},
        {"type": "alias", "previousId": "contract-anon-1"},
    ]
    return [
        parse_message({**common, **call, "messageId": f"contract-{call['type']}-{uuid4().hex}"})
        for call in calls
    ]


# -- the contract kit ------------------------------------------------------------------------


def _require(condition: object, message: str) -> None:
    """An assertion that `python -O` keeps (this module is not rewritten by pytest)."""
    if not condition:
        raise AssertionError(message)


class _ContractRecorder(Integration[IntegrationOptions]):
    """The second integration of the isolation check: records what the factory routes to it."""

    key = "contract_recorder"
    display_name = "Contract Recorder"

    def setup(self) -> None:
        self.received: list[str] = []  # messageIds, in the order handled
        self._lock = threading.Lock()

    def handle(self, message: Message) -> None:
        with self._lock:
            self.received.append(message.message_id)

    def seen(self) -> list[str]:
        with self._lock:
            return list(self.received)


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


class IntegrationContract:
    """A pytest mixin: subclass it as `Test<Name>Contract` and set the class attributes.

    Attributes:
        integration_class: the wrapper under test.
        valid_config: a destination `config` as the control plane sends it (camelCase keys;
            `connectionMode` and the like may be in it: unknown keys must be ignored).
        invalid_config: a `config` the options model must refuse (required unless
            `test_contract_invalid_config_is_refused_without_echoing_values` is overridden).
        call_timeout: the timeout handed to `flush()` and `shutdown()`; each must return
            within it plus one second.

    Override `make_integration(options)` to build the wrapper pointing at a fake or local
    server. Every check is a `test_contract_*` method; override one to skip it.
    """

    integration_class: ClassVar[type[Integration[Any]]]
    valid_config: ClassVar[Mapping[str, Any]]
    invalid_config: ClassVar[Mapping[str, Any]]
    call_timeout: ClassVar[float] = 2.0

    # -- hooks and helpers -----------------------------------------------------------------

    def make_integration(self, options: IntegrationOptions) -> Integration[Any]:
        """The wrapper to check, built from validated options (override to aim it locally)."""
        return self.integration_class(options)

    def contract_messages(self) -> list[Message]:
        """The messages of the call types the wrapper supports (override to add fields)."""
        types = self.integration_class.supported_types
        return [m for m in sample_messages() if m.type in types]

    def contract_options(self) -> IntegrationOptions:
        return self.integration_class.options_model.model_validate(dict(self.valid_config))

    def contract_integration(self) -> Integration[Any]:
        """`make_integration()` with a context bound, as the factory binds one."""
        integration = self.make_integration(self.contract_options())
        if integration.context is None:
            integration.context = IntegrationContext(
                logger=child_logger(f"integrations.{integration.key}"),
                anonymous_id=lambda: "contract-anon-1",
                library_version=__version__,
                destination_id="contract-destination",
            )
        return integration

    def _started(self) -> Integration[Any]:
        integration = self.contract_integration()
        try:
            integration.setup()
        except Exception as exc:
            raise AssertionError(
                f"{self._name()}.setup() raised {type(exc).__name__}: {exc} "
                "(make_integration() can aim the wrapper at a local fake)"
            ) from exc
        return integration

    def _stop(self, integration: Integration[Any]) -> None:
        integration.shutdown(self.call_timeout)

    def _name(self) -> str:
        return self.integration_class.__name__

    # -- the checks --------------------------------------------------------------------------

    def test_contract_class_attributes(self) -> None:
        cls = self.integration_class
        _require(
            isinstance(cls, type) and issubclass(cls, Integration),
            f"{cls!r} is not an analytics_sdk.integration.Integration subclass",
        )
        key = getattr(cls, "key", None)
        _require(
            isinstance(key, str) and _KEY.fullmatch(key),
            f"{self._name()}.key must be a lowercase identifier (the entry-point name and "
            f"extra name), got {key!r}",
        )
        display_name = getattr(cls, "display_name", None)
        _require(
            isinstance(display_name, str) and display_name.strip(),
            f"{self._name()}.display_name must be a non-empty string (the control plane's "
            f"destinationDefinition.displayName), got {display_name!r}",
        )
        _require(
            isinstance(cls.destination_names, frozenset)
            and all(isinstance(name, str) and name for name in cls.destination_names),
            f"{self._name()}.destination_names must be a frozenset of non-empty strings",
        )
        model = cls.options_model
        _require(
            isinstance(model, type) and issubclass(model, IntegrationOptions),
            f"{self._name()}.options_model must subclass IntegrationOptions, got {model!r}",
        )
        batch = cls.batch_size
        _require(
            isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1,
            f"{self._name()}.batch_size must be an int >= 1, got {batch!r}",
        )
        types = cls.supported_types
        _require(
            isinstance(types, frozenset) and types and types <= CALL_TYPES,
            f"{self._name()}.supported_types must be a non-empty subset of "
            f"{sorted(CALL_TYPES)}, got {sorted(types) if types else types!r}",
        )

    def test_contract_options_validate_from_the_control_plane_config(self) -> None:
        model = self.integration_class.options_model
        try:
            options = model.model_validate(dict(self.valid_config))
        except ValidationError as exc:
            raise AssertionError(f"valid_config does not validate: {describe(exc)}") from None
        _require(isinstance(options, model), "check failed: isinstance(options, model)")
        future = {
            **self.valid_config,
            "connectionMode": "device",
            "aSettingAddedLater": {"nested": [1, 2]},
            "contractUnknownFlag": True,
        }
        try:
            again = model.model_validate(future)
        except ValidationError as exc:
            raise AssertionError(
                f"unknown config keys must be ignored (extra='ignore'): {describe(exc)}"
            ) from None
        _require(again == options, "unknown config keys changed the options")
        _require(not hasattr(again, "aSettingAddedLater"), "unknown config keys were kept")

    def test_contract_invalid_config_is_refused_without_echoing_values(self) -> None:
        invalid: Mapping[str, Any] | None = getattr(self, "invalid_config", None)
        if invalid is None:
            raise AssertionError(
                "set invalid_config (a config the options model refuses), or override "
                "test_contract_invalid_config_is_refused_without_echoing_values to skip it"
            )
        model = self.integration_class.options_model
        try:
            model.model_validate(dict(invalid))
        except ValidationError as exc:
            text = describe(exc)  # what the factory logs and shows in integrations_status()
            errors = exc.errors(include_input=False, include_url=False)
        else:
            raise AssertionError("invalid_config validated; it must raise ValidationError")
        known = (
            set(model.model_fields)
            | {field.alias for field in model.model_fields.values() if field.alias}
            | set(invalid)
        )
        fields = {str(error["loc"][0]) for error in errors if error["loc"]}
        _require(fields, f"the errors name no field (a model-level check?): {text!r}")
        _require(fields <= known, f"the errors name unknown fields {sorted(fields - known)}")
        for field in fields:
            _require(field in text, f"the error text does not name {field!r}: {text!r}")
        for value in _leaves(dict(invalid)):
            if value is None or isinstance(value, bool):
                continue
            shown = str(value)
            if len(shown) >= 2:  # a one-character value would match by chance
                _require(
                    shown not in text,
                    f"the error text echoes a rejected value (it may be a secret): {text!r}",
                )

    def test_contract_each_call_is_handled_or_rejected(self) -> None:
        integration = self._started()
        try:
            for message in self.contract_messages():
                try:
                    integration.handle(message)
                except RejectedMessage as exc:
                    _require(
                        isinstance(exc.reason, str) and exc.reason,
                        f"RejectedMessage from the {message.type} call needs a reason",
                    )
                except Exception as exc:
                    raise AssertionError(
                        f"the {message.type} call raised {type(exc).__name__}: {exc}; a "
                        "handler either succeeds or raises RejectedMessage"
                    ) from exc
        finally:
            self._stop(integration)

    def test_contract_handle_batch_returns_rejected_entries(self) -> None:
        integration = self._started()
        try:
            messages = self.contract_messages()
            batch = self.integration_class.batch_size
            if batch > 1:
                messages = messages[:batch]
            result: object = integration.handle_batch(messages)
            if not isinstance(result, list):
                raise AssertionError(
                    f"handle_batch must return a list of Rejected, got {type(result).__name__}"
                )
            ids = {m.message_id for m in messages}
            for entry in result:
                if not isinstance(entry, Rejected):
                    raise AssertionError(f"handle_batch returned {entry!r}, not a Rejected")
                _require(entry.message_id in ids, f"{entry!r} names a message not in the batch")
                _require(isinstance(entry.reason, str) and entry.reason, f"{entry!r} has no reason")
        finally:
            self._stop(integration)

    def test_contract_flush_returns_a_bool_within_its_timeout(self) -> None:
        integration = self._started()
        try:
            for message in self.contract_messages():
                with contextlib.suppress(RejectedMessage):
                    integration.handle(message)
            started = time.monotonic()
            result: object = integration.flush(self.call_timeout)
            took = time.monotonic() - started
            _require(isinstance(result, bool), f"flush() returned {result!r}, not a bool")
            _require(
                took <= self.call_timeout + 1,
                f"flush({self.call_timeout}) took {took:.2f}s, over its timeout",
            )
            started = time.monotonic()
            empty: object = integration.flush(self.call_timeout)  # nothing buffered now
            _require(isinstance(empty, bool), "check failed: isinstance(empty, bool)")
            _require(
                time.monotonic() - started <= self.call_timeout + 1,
                "check failed: time.monotonic() - started <= self.call_timeout + 1",
            )
        finally:
            self._stop(integration)

    def test_contract_reset_and_shutdown_do_not_raise(self) -> None:
        integration = self._started()
        messages = self.contract_messages()
        with contextlib.suppress(RejectedMessage):
            integration.handle(messages[0])
        try:
            integration.reset()
        except Exception as exc:
            raise AssertionError(f"reset() raised {type(exc).__name__}: {exc}") from exc
        started = time.monotonic()
        try:
            integration.shutdown(self.call_timeout)
        except Exception as exc:
            raise AssertionError(f"shutdown() raised {type(exc).__name__}: {exc}") from exc
        took = time.monotonic() - started
        _require(
            took <= self.call_timeout + 1,
            f"shutdown({self.call_timeout}) took {took:.2f}s, over its timeout",
        )

    def test_contract_is_isolated_in_a_real_factory(self) -> None:
        """Through the real factory, beside a recording integration: nothing leaks, all counted."""
        integration = self.contract_integration()
        recorder = _ContractRecorder(IntegrationOptions())
        _require(integration.key != recorder.key, f"pick another key than {recorder.key!r}")
        reports: list[tuple[DeliveryError, list[dict[str, Any]]]] = []
        factory = Factory(
            lambda: "contract-anon-1",
            lambda error, messages: reports.append((error, messages)),
            [integration, recorder],
        )
        try:
            factory.setup_custom()  # as Client(integrations=[...]) does: setup() at construction
        except Exception as exc:
            raise AssertionError(
                f"{self._name()}.setup() raised {type(exc).__name__}: {exc}"
            ) from exc
        factory.start()
        factory.without_config()
        messages = sample_messages()
        expected = [m.message_id for m in messages]
        supported = [m for m in messages if m.type in integration.supported_types]
        try:
            for message in messages:
                factory.dispatch(dumps(message.to_wire()))
            flushed = factory.flush(time.monotonic() + self.call_timeout + 3)
            _require(flushed, "the factory could not flush the integrations in time (a hang?)")
            _require(
                recorder.seen() == expected,
                "the other integration did not receive all six calls in order: "
                f"{recorder.seen()} != {expected}",
            )
            counters = factory.counters()[integration.key]
            total = counters["handled"] + counters["rejected"] + counters["failed"]
            _require(
                total == len(supported),
                f"counters {counters} do not account for the {len(supported)} messages sent",
            )
            _require(counters["dropped"] == 0, f"messages were dropped: {counters}")
            _require(
                counters["failed"] == 0,
                f"the wrapper raised on {counters['failed']} message(s) (see the "
                "analytics_sdk log); handlers must succeed or raise RejectedMessage",
            )
            _require(
                len(reports) == counters["rejected"],
                f"{counters['rejected']} rejections but {len(reports)} reports",
            )
        finally:
            factory.shutdown(time.monotonic() + self.call_timeout + 1)


# -- the capture client ----------------------------------------------------------------------


class _Capture(Integration[IntegrationOptions]):
    """Records every message device mode hands it, in wire form, in order."""

    key = "capture"
    display_name = "Capture"

    def __init__(self) -> None:
        super().__init__(IntegrationOptions())
        self._lock = threading.Lock()
        self._messages: list[dict[str, Any]] = []

    def handle(self, message: Message) -> None:
        wire = message.to_wire()
        with self._lock:
            self._messages.append(wire)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._messages)  # tests may edit what they get

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()


class CaptureClient(Client):
    """A real `Client` for tests that sends nothing and records every accepted message.

    Defaults: `send=False` (no network, no data plane, no write key), `strict=True` (bad
    input raises `InvalidMessageError` in the test instead of being reported), and no
    control plane (`ANALYTICS_SDK_CONTROL_PLANE_URL` is not read). Any `Client` option may
    be passed, `integrations=[...]` and `middleware=[...]` included.

    Messages are recorded by an in-code integration, so `messages` holds what the data
    plane would receive (after context enrichment and middleware), as JSON dicts. Reading
    `messages`, `events()` or `last` flushes first, so they are complete at once.

    Limit: the capture integration is routed like any integration, so a message sent with
    an `integrations` map that switches it off (`{"All": False}` without `"Capture": True`)
    is accepted but not recorded.
    """

    def __init__(
        self,
        write_key: str | None = "",
        data_plane_url: str | None = None,
        **options: Unpack[ClientOptionsKwargs],
    ) -> None:
        self._capture = _Capture()
        self._capture_closed = False
        options.setdefault("send", False)
        options.setdefault("strict", True)
        options.setdefault("control_plane_url", None)
        options["integrations"] = [*options.get("integrations", ()), self._capture]
        super().__init__(write_key, data_plane_url, **options)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Every recorded message, oldest first (a copy)."""
        self._catch_up()
        return self._capture.snapshot()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The recorded track calls, optionally only those of one event name."""
        return [
            m
            for m in self.messages
            if m.get("type") == "track" and (name is None or m.get("event") == name)
        ]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """The recorded messages of one call type ("identify", "page", ...)."""
        return [m for m in self.messages if m.get("type") == kind]

    @property
    def last(self) -> dict[str, Any]:
        """The most recent recorded message (LookupError when there is none)."""
        messages = self.messages
        if not messages:
            raise LookupError("no message was captured")
        return messages[-1]

    def clear(self) -> None:
        """Forget what was recorded so far (after waiting for it to arrive)."""
        self._catch_up()
        self._capture.clear()

    def shutdown(self, timeout: float | None = None) -> bool:
        self._capture_closed = True
        return super().shutdown(timeout)

    def _catch_up(self) -> None:
        if self._capture_closed:
            return  # shutdown() delivered everything to the recorder already
        if not self.flush(timeout=CAPTURE_TIMEOUT):
            raise AssertionError(
                f"the capture client did not catch up within {CAPTURE_TIMEOUT} s "
                "(another integration passed to it may be hanging)"
            )


def capture_client(**options: Unpack[ClientOptionsKwargs]) -> CaptureClient:
    """A `CaptureClient` (send=False, strict=True unless given); shut it down when done."""
    return CaptureClient(**options)


# -- the pytest fixture, defined on first use ------------------------------------------------


def _define_fixture() -> Any:
    try:
        import pytest
    except ImportError as exc:
        raise ImportError(
            "analytics_sdk.testing.analytics_capture is a pytest fixture and needs pytest "
            "(pip install pytest); CaptureClient and capture_client() work without it"
        ) from exc

    @pytest.fixture
    def analytics_capture() -> Iterator[CaptureClient]:
        """A `CaptureClient` with the default options, shut down after the test."""
        client = CaptureClient()
        try:
            yield client
        finally:
            client.shutdown(timeout=CAPTURE_TIMEOUT)

    return analytics_capture


def __getattr__(name: str) -> Any:
    if name == "analytics_capture":
        fixture = _define_fixture()
        globals()[name] = fixture  # defined once; later lookups find it directly
        return fixture
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
