"""The Event Log integration against analytics-sdk's contract kit, plus what it writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from analytics_sdk_eventlog import EventLogIntegration, EventLogOptions, verify_line

from analytics_sdk.integration import Integration, IntegrationOptions, RejectedMessage
from analytics_sdk.models import parse_message
from analytics_sdk.testing import IntegrationContract, sample_messages

SIGNING_KEY = "whsec_example_123"


class TestEventLogContract(IntegrationContract):
    integration_class = EventLogIntegration
    valid_config: ClassVar[dict[str, Any]] = {
        "path": "replaced-by-make_integration.jsonl",
        "signingKey": SIGNING_KEY,
        "bufferLines": 2,
        "connectionMode": "device",
    }
    invalid_config: ClassVar[dict[str, Any]] = {"path": 12345, "maxLineBytes": -10}

    @pytest.fixture(autouse=True)
    def _in_tmp_path(self, tmp_path: Path) -> None:
        self.log_path = tmp_path / "logs" / "events.jsonl"

    def make_integration(self, options: IntegrationOptions) -> Integration[Any]:
        assert isinstance(options, EventLogOptions)
        return EventLogIntegration(options.model_copy(update={"path": str(self.log_path)}))

    def test_every_call_becomes_one_signed_line(self) -> None:
        integration = self.contract_integration()
        integration.setup()
        messages = sample_messages()
        for message in messages:
            integration.handle(message)
        assert integration.flush(1.0)
        integration.shutdown(1.0)
        records = [
            verify_line(line, SIGNING_KEY) for line in self.log_path.read_text().splitlines()
        ]
        assert [r["messageId"] for r in records] == [m.message_id for m in messages]
        track = records[1]
        assert track["event"] == "Order Completed"
        assert track["properties"]["revenue"] == 25.5
        assert records[4]["groupId"] == "org-1"
        assert records[5]["previousId"] == "contract-anon-1"
        assert "context" not in track  # includeContext is off

    def test_a_tampered_line_fails_verification(self) -> None:
        integration = self.contract_integration()
        integration.setup()
        integration.handle(sample_messages()[1])
        integration.shutdown(1.0)
        line = self.log_path.read_text().replace("Order Completed", "Order Refunded")
        with pytest.raises(ValueError, match="signature"):
            verify_line(line, SIGNING_KEY)

    def test_blank_events_and_oversized_lines_are_rejected(self) -> None:
        options = EventLogOptions(path=str(self.log_path), max_line_bytes=512)
        integration = EventLogIntegration(options)
        integration.setup()
        base = {"type": "track", "messageId": "m1", "userId": "u1"}
        blank = parse_message({**base, "event": "  "})
        huge = parse_message(
            {**base, "messageId": "m2", "event": "Big", "properties": {"x": "y" * 600}}
        )
        fine = parse_message({**base, "messageId": "m3", "event": "Small"})
        rejected = integration.handle_batch([blank, huge, fine])
        assert [(r.message_id, r.reason.split(" ")[0]) for r in rejected] == [
            ("m1", "a"), ("m2", "the")
        ]  # fmt: skip
        integration.shutdown(1.0)
        assert len(self.log_path.read_text().splitlines()) == 1
        with pytest.raises(RejectedMessage, match="shut down"):
            integration.handle(fine)
