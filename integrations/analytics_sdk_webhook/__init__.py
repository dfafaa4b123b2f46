"""Webhook destination: each message (or a batch of them) as JSON to a URL of yours.

No extra to install: it uses requests, which analytics-sdk depends on already. Options follow
RudderStack's Webhook destination (`webhookUrl`, `webhookMethod`, `headers` as
`[{"from": name, "to": value}]`); 408/429/5xx and network errors are retried with
exponential backoff and full jitter, other 4xx are rejected (reported through on_error).
`shutdown()` and `interrupt()` end a retry wait at once; after either, nothing more is sent.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any, Literal

import backoff
import requests
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from analytics_sdk import __version__
from analytics_sdk.integration import (
    Integration,
    IntegrationContext,
    IntegrationOptions,
    Rejected,
    RejectedMessage,
    http_url,
)
from analytics_sdk.models import Message

__all__ = ["WebhookHeader", "WebhookIntegration", "WebhookOptions"]

_RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
_BACKOFF_BASE = 0.5  # seconds before the first retry, before jitter
_BACKOFF_CAP = 30.0  # seconds: the longest step


class WebhookHeader(BaseModel):
    """One header to send: `{"from": "X-Api-Key", "to": "secret"}` in the control plane."""

    model_config = ConfigDict(frozen=True, extra="ignore", validate_by_name=True)

    name: str = Field(alias="from", min_length=1)
    value: SecretStr = Field(alias="to")  # header values are often credentials


class WebhookOptions(IntegrationOptions):
    webhook_url: str  # webhookUrl
    webhook_method: Literal["POST", "PUT", "PATCH"] = "POST"  # webhookMethod
    headers: list[WebhookHeader] = Field(default_factory=list)
    batch: bool = False  # one request with a JSON array of up to 20 messages
    timeout: float = Field(default=10.0, gt=0, le=300)  # seconds per request
    max_retries: int = Field(default=3, ge=0, le=10)

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value)


class WebhookIntegration(Integration[WebhookOptions]):
    """Sends every call type; a refused message is rejected with the receiver's status."""

    key = "webhook"
    display_name = "Webhook"
    destination_names = frozenset({"WEBHOOK"})
    options_model = WebhookOptions
    batch_size = 20

    def __init__(self, options: WebhookOptions, context: IntegrationContext | None = None) -> None:
        super().__init__(options, context)
        # Set by shutdown() or interrupt(): ends a retry wait at once, and nothing is sent
        # after it. Made here, not in setup(): interrupt() may come first and must stick.
        self._stop = threading.Event()

    def setup(self) -> None:
        self._session = requests.Session()
        self._headers = {
            "Content-Type": "application/json",
            "User-Agent": f"analytics-sdk-python/{__version__} (webhook)",
        }
        for header in self.options.headers:
            self._headers[header.name] = header.value.get_secret_value()

    def handle(self, message: Message) -> None:
        reason = self._send(message.to_wire())
        if reason is not None:
            raise RejectedMessage(reason)

    def handle_batch(self, messages: Sequence[Message]) -> list[Rejected]:
        if self.options.batch:
            reason = self._send([m.to_wire() for m in messages])
            return [] if reason is None else [Rejected(m.message_id, reason) for m in messages]
        rejected = []
        for message in messages:
            reason = self._send(message.to_wire())
            if reason is not None:
                rejected.append(Rejected(message.message_id, reason))
        return rejected

    def interrupt(self) -> None:
        """The factory stopped waiting (from another thread): end a retry wait at once and
        send nothing more; the handler in progress rejects what it could not send."""
        self._stop.set()

    def shutdown(self, timeout: float) -> None:
        self._stop.set()  # ends a backoff wait at once
        session: requests.Session | None = getattr(self, "_session", None)
        if session is not None:  # None: setup() never ran
            session.close()

    def _send(self, payload: Any) -> str | None:
        """None when the receiver took it; else why it was not delivered."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        waits = backoff.expo(base=2, factor=_BACKOFF_BASE, max_value=_BACKOFF_CAP)
        next(waits)  # backoff's generators are primed once before use
        problem = ""
        for attempt in range(self.options.max_retries + 1):
            if self._stop.is_set():  # interrupted, or shut down: the deadline has passed
                return (
                    f"shutdown while retrying ({problem})" if attempt else "shutdown before sending"
                )
            try:
                response = self._session.request(
                    self.options.webhook_method,
                    self.options.webhook_url,
                    data=body,
                    headers=self._headers,
                    timeout=self.options.timeout,
                )
            except requests.RequestException as exc:
                problem = type(exc).__name__
            else:
                if 200 <= response.status_code < 300:
                    return None
                if response.status_code not in _RETRY_STATUSES:
                    return f"the webhook answered HTTP {response.status_code}"
                problem = f"HTTP {response.status_code}"
            if self._stop.wait(backoff.full_jitter(next(waits))):
                return f"shutdown while retrying ({problem})"
        return f"gave up after {self.options.max_retries + 1} attempts ({problem})"
