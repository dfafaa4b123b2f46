"""The public integration interface and the typed messages integrations receive."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from analytics_sdk._serialization import dumps
from analytics_sdk.integration import (
    Integration,
    IntegrationContext,
    IntegrationOptions,
    Rejected,
    RejectedMessage,
)
from analytics_sdk.models import (
    AliasMessage,
    GroupMessage,
    IdentifyMessage,
    Message,
    PageMessage,
    TrackMessage,
    parse_message,
)

WIRE_TRACK: dict[str, Any] = {
    "type": "track",
    "event": "Order Completed",
    "properties": {"revenue": 25.5},
    "userId": "u1",
    "messageId": "m-1",
    "originalTimestamp": "2026-01-02T03:04:05.678Z",
    "context": {"library": {"name": "analytics-sdk-python", "version": "0"}},
    "integrations": {"All": True},
    "channel": "server",
    "sentAt": "2026-01-02T03:04:06.000Z",
}


def test_a_wire_message_parses_into_its_typed_model_and_back() -> None:
    message = parse_message(WIRE_TRACK)

    assert isinstance(message, TrackMessage)
    assert (message.event, message.properties, message.distinct_id) == (
        "Order Completed",
        {"revenue": 25.5},
        "u1",
    )
    assert message.event_time == datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    wire = message.to_wire()
    assert wire["sentAt"] == WIRE_TRACK["sentAt"]  # fields the model does not name survive
    assert wire["originalTimestamp"] == "2026-01-02T03:04:05.678Z"  # the wire's own form
    assert wire["messageId"] == "m-1"


@pytest.mark.parametrize(
    ("wire", "model"),
    [
        ({"type": "identify", "traits": {"a": 1}}, IdentifyMessage),
        ({"type": "page", "name": "Home"}, PageMessage),
        ({"type": "group", "groupId": "g1"}, GroupMessage),
        ({"type": "alias", "previousId": "p", "userId": "u"}, AliasMessage),
    ],
)
def test_each_call_type_has_its_model(wire: dict[str, Any], model: type[Message]) -> None:
    parsed = parse_message({"messageId": "m", "anonymousId": "a", **wire})
    assert type(parsed) is model


def test_messages_are_frozen() -> None:
    message = parse_message(WIRE_TRACK)
    with pytest.raises(ValidationError):
        message.user_id = "someone else"  # type: ignore[misc]


class AcmeOptions(IntegrationOptions):
    api_key: SecretStr
    region: str = "us"


class RecordingIntegration(Integration[AcmeOptions]):
    key = "acme"
    display_name = "Acme"
    destination_names = frozenset({"ACME"})
    options_model = AcmeOptions

    def __init__(self, options: AcmeOptions, context: IntegrationContext) -> None:
        super().__init__(options, context)
        self.seen: list[str] = []

    def track(self, message: TrackMessage) -> None:
        if message.event == "Refused":
            raise RejectedMessage("Acme does not take that event")
        self.seen.append(f"track {message.event}")

    def identify(self, message: IdentifyMessage) -> None:
        self.seen.append(f"identify {message.distinct_id}")


def context() -> IntegrationContext:
    return IntegrationContext(
        logger=logging.getLogger("analytics_sdk.integrations.acme"),
        anonymous_id=lambda: "anon-1",
        library_version="0.1.0",
    )


def test_options_take_camel_case_keys_ignore_unknown_ones_and_hide_secrets() -> None:
    options = AcmeOptions.model_validate(
        {"apiKey": "sk_live_123", "region": "eu", "connectionMode": "device", "newThing": 1}
    )
    assert options.api_key.get_secret_value() == "sk_live_123"
    assert options.region == "eu"
    assert "sk_live_123" not in repr(options)
    with pytest.raises(ValidationError) as info:
        AcmeOptions.model_validate({"region": "eu"})
    assert "api_key" in str(info.value) or "apiKey" in str(info.value)


def test_handlers_dispatch_by_type_and_default_to_no_ops() -> None:
    integration = RecordingIntegration(AcmeOptions.model_validate({"apiKey": "k"}), context())
    integration.setup()
    for wire in (
        WIRE_TRACK,
        {"type": "identify", "messageId": "m2", "userId": "u2"},
        {"type": "page", "messageId": "m3", "userId": "u2"},  # not overridden: a no-op
    ):
        integration.handle(parse_message(wire))
    assert integration.seen == ["track Order Completed", "identify u2"]


def test_handle_batch_collects_rejections_and_delivers_the_rest() -> None:
    integration = RecordingIntegration(AcmeOptions.model_validate({"apiKey": "k"}), context())
    refused = parse_message({**WIRE_TRACK, "event": "Refused", "messageId": "m-refused"})
    fine = parse_message(WIRE_TRACK)

    rejected = integration.handle_batch([fine, refused, fine])

    assert rejected == [Rejected("m-refused", "Acme does not take that event")]
    assert integration.seen == ["track Order Completed", "track Order Completed"]
    assert integration.flush(1.0) is True
    integration.shutdown(1.0)


def test_the_client_snapshot_parses_as_the_integration_will_see_it() -> None:
    import json

    wire = json.loads(dumps({**WIRE_TRACK, "properties": {"price": 9.99, "tags": ["a"]}}))
    message = parse_message(wire)
    assert isinstance(message, TrackMessage)
    assert message.properties == {"price": 9.99, "tags": ["a"]}


def test_the_shared_option_checks() -> None:
    from analytics_sdk.integration import blank_is_unset, http_url

    assert http_url("https://api.example.com/x") == "https://api.example.com/x"
    for bad in ("ftp://example.com", "https://", "example.com", "http://:80"):
        with pytest.raises(ValueError, match="must be an http:// or https:// URL with a host"):
            http_url(bad)
    assert [blank_is_unset(v) for v in ("", "  ", "x", None, 0)] == [None, None, "x", None, 0]
