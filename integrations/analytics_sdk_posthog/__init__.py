"""PostHog destination: every call through PostHog's own Python SDK (`posthog`).

Options follow RudderStack's PostHog destination (`teamApiKey`, `yourInstance`,
`propertyBlackList`). Each batch handed to the wrapper is queued into the SDK, which sends it
as one `POST {host}/batch/` from its consumer thread; the wrapper then flushes the SDK and
waits (bounded) until every event was sent or reported through the SDK's `on_error`. Events
PostHog refused, or could not get after the SDK's retries, come back as `Rejected` with
PostHog's status and answer, matched by event uuid (the messageId when it is a UUID).
Nothing stays queued in the SDK when a handler returns.

Switched off in the SDK: feature-flag polling and `/flags` calls (no personal API key, no
`send_feature_flags`), exception autocapture, metrics and traces, GeoIP enrichment
(`$geoip_disable`), and the capture-v1 protocol a `POSTHOG_CAPTURE_MODE` variable could
select.
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from posthog import CaptureMode
from posthog.client import Client as PostHogClient
from posthog.consumer import MAX_MSG_SIZE
from posthog.request import APIError
from posthog.utils import system_context
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from analytics_sdk.integration import Integration, IntegrationOptions, Rejected, RejectedMessage
from analytics_sdk.models import Message

from ._mapping import Alias, Capture, GroupIdentify, PostHogCall, event_uuid, to_posthog

__all__ = [
    "DEFAULT_HOST",
    "BlacklistedProperty",
    "PostHogDeliveryTimeout",
    "PostHogIntegration",
    "PostHogOptions",
]

DEFAULT_HOST = "https://us.i.posthog.com"  # PostHog Cloud US ingestion, the SDK's default
_BACKOFF_CEILING = 30.0  # seconds: posthog caps each retry wait (backoff or Retry-After) here
_CONNECTS_PER_ATTEMPT = 3  # posthog's https adapter retries a failed connect twice
_REASON_CHARS = 200  # how much of PostHog's answer a rejection reason keeps


class BlacklistedProperty(BaseModel):
    """One `propertyBlackList` row: `{"property": "name"}` (empty rows are ignored)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    property: str = ""


class PostHogOptions(IntegrationOptions):
    team_api_key: SecretStr  # teamApiKey: the project API key (phc_...)
    your_instance: str = DEFAULT_HOST  # yourInstance: the PostHog host; "" means the default
    property_black_list: list[BlacklistedProperty] = Field(default_factory=list)
    group_type: str = Field(default="company", min_length=1)  # when traits carry no groupType
    gzip: bool = True  # gzip each /batch/ request body
    timeout: float = Field(default=10.0, gt=0, le=60)  # seconds per HTTP request
    max_retries: int = Field(default=3, ge=0, le=10)  # retries of a batch on 408/429/5xx/network

    @field_validator("team_api_key")
    @classmethod
    def _not_blank(cls, value: SecretStr) -> SecretStr:
        key = value.get_secret_value().strip()
        if not key:
            raise ValueError("must not be empty (the PostHog project API key)")
        return SecretStr(key)

    @field_validator("your_instance")
    @classmethod
    def _http_url(cls, value: str) -> str:
        host = value.strip()
        if not host:
            return DEFAULT_HOST
        parts = urlsplit(host)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL with a host")
        return host.rstrip("/")

    @property
    def blocked_properties(self) -> frozenset[str]:
        """The event property names never sent to PostHog."""
        return frozenset(row.property for row in self.property_black_list if row.property)


class PostHogDeliveryTimeout(Exception):  # noqa: N818 - reads as what happened
    """PostHog's SDK had not finished a batch within the bound its own retries allow."""


class PostHogIntegration(Integration[PostHogOptions]):
    """All six calls: capture, $identify, $pageview, $screen, group_identify, alias."""

    key = "posthog"
    display_name = "PostHog"
    destination_names = frozenset({"POSTHOG"})
    options_model = PostHogOptions
    batch_size = 100  # one /batch/ request per handle_batch (the SDK's own flush_at)

    _client: PostHogClient | None = None

    def setup(self) -> None:
        options = self.options
        self._lock = threading.Lock()
        self._pending: dict[str, list[str]] = {}  # event uuid -> messageIds of this batch
        self._refused: dict[str, str] = {}  # event uuid -> why PostHog did not take it
        self._derived: dict[str, str] = {}  # event uuid -> the non-UUID messageId it came from
        self._oversized: dict[str, int] = {}  # event uuid -> its size, when over PostHog's limit
        self._blocked = options.blocked_properties
        self._api_key = options.team_api_key.get_secret_value()
        system_context()  # posthog probes the OS per event; its first, slow probe happens here
        sdk_logger = logging.getLogger("posthog")
        level = sdk_logger.level
        self._client = PostHogClient(
            self._api_key,
            host=options.your_instance,
            on_error=self._on_error,
            before_send=self._before_send,
            flush_at=self.batch_size,
            flush_interval=5.0,  # flush() drains at once; the timer only matters between calls
            max_queue_size=self.batch_size * 10,
            gzip=options.gzip,
            max_retries=options.max_retries,
            timeout=options.timeout,
            thread=1,
            sync_mode=False,
            disable_geoip=True,
            enable_exception_autocapture=False,
            capture_mode=CaptureMode.V0,  # /batch/, whatever POSTHOG_CAPTURE_MODE says
        )
        sdk_logger.setLevel(level)  # the SDK sets its logger to WARNING: the app decides that

    # -- delivery ---------------------------------------------------------------------------

    def handle(self, message: Message) -> None:
        for rejected in self.handle_batch([message]):
            raise RejectedMessage(rejected.reason)

    def handle_batch(self, messages: Sequence[Message]) -> list[Rejected]:
        client = self._require_client()
        rejected: list[Rejected] = []
        with self._lock:
            self._pending.clear()
            self._refused.clear()
            self._derived.clear()
            self._oversized.clear()
        queued = 0
        for message in messages:
            try:
                self._submit(client, message)
                queued += 1
            except RejectedMessage as exc:
                rejected.append(Rejected(message.message_id, exc.reason))
        if queued:
            budget = self._delivery_budget()
            client.flush(timeout_seconds=budget)
            left = client.queue.unfinished_tasks
            if left:
                raise PostHogDeliveryTimeout(
                    f"PostHog's SDK still held {left} event(s) after {budget:.1f} s "
                    "(they may still arrive)"
                )
        with self._lock:
            for event_id, reason in self._refused.items():
                rejected.extend(Rejected(mid, reason) for mid in self._pending.get(event_id, ()))
            self._pending.clear()
            self._refused.clear()
            self._derived.clear()
        return rejected

    def flush(self, timeout: float) -> bool:
        """True: handlers return only once the SDK is empty (this waits out a timed-out one)."""
        client = self._client
        if client is None:
            return True
        client.flush(timeout_seconds=timeout)
        return not client.queue.unfinished_tasks

    def shutdown(self, timeout: float) -> None:
        client, self._client = self._client, None
        if client is None:
            return  # setup() never ran
        # The SDK's shutdown drains without a time limit: run it aside, wait `timeout` at most.
        done = threading.Event()

        def stop() -> None:
            try:
                client.shutdown()
            finally:
                done.set()

        threading.Thread(target=stop, name="analytics_sdk.posthog.shutdown", daemon=True).start()
        if not done.wait(timeout):
            self.logger.warning(
                "PostHog's SDK did not shut down within %.1f s; its thread is left to finish",
                timeout,
            )
        atexit.unregister(client._atexit)  # posthog registers one exit hook per client

    # -- internals --------------------------------------------------------------------------

    def _require_client(self) -> PostHogClient:
        if self._client is None:
            raise RuntimeError("PostHogIntegration is not set up (or already shut down)")
        return self._client

    def _submit(self, client: PostHogClient, message: Message) -> None:
        """Queue one message in the SDK (registered first: on_error may come at once)."""
        call = to_posthog(message, self.options.group_type)
        _, derived = event_uuid(message.message_id)
        with self._lock:
            self._pending.setdefault(call.uuid, []).append(message.message_id)
            if derived:
                self._derived[call.uuid] = message.message_id
        if self._send(client, call) is None:
            with self._lock:
                self._pending.pop(call.uuid, None)
                size = self._oversized.pop(call.uuid, None)
            if size is not None:
                raise RejectedMessage(
                    f"the event is {size} bytes, over PostHog's {MAX_MSG_SIZE // 1024} KiB limit"
                )
            raise RejectedMessage(
                "PostHog's SDK did not queue the event (queue full, shut down, or dropped "
                "by the SDK; see the 'posthog' logger)"
            )

    def _send(self, client: PostHogClient, call: PostHogCall) -> str | None:
        """The SDK call for one mapped message; the event uuid, or None if it was not queued."""
        result: Any
        match call:
            case Capture():
                result = client.capture(
                    call.event,
                    distinct_id=call.distinct_id,
                    properties=call.properties,
                    timestamp=call.timestamp,
                    uuid=call.uuid,
                )
            case GroupIdentify():
                result = client.group_identify(
                    call.group_type,
                    call.group_key,
                    properties=call.properties,
                    timestamp=call.timestamp,
                    uuid=call.uuid,
                    distinct_id=call.distinct_id,
                )
            case Alias():
                result = client.alias(
                    call.previous_id,
                    call.distinct_id,
                    timestamp=call.timestamp,
                    uuid=call.uuid,
                )
        return result if isinstance(result, str) else None

    def _before_send(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The SDK's last look at each event: drop blacklisted keys, keep a non-UUID messageId.

        An event over PostHog's size limit is refused here (None) with its size on record:
        the SDK's consumer would drop it later without telling on_error.
        """
        event_id = str(event.get("uuid"))
        properties = event.get("properties")
        if isinstance(properties, dict):
            for name in self._blocked & properties.keys():
                del properties[name]
            with self._lock:
                original = self._derived.get(event_id)
            if original is not None:
                properties.setdefault("messageId", original)
        size = len(json.dumps(event, default=str).encode())
        if size > MAX_MSG_SIZE:
            with self._lock:
                self._oversized[event_id] = size
            return None
        return event

    def _on_error(self, error: Exception, batch: list[dict[str, Any]]) -> None:
        """Called by the SDK's consumer thread for a batch it gave up on."""
        try:
            reason = self._reason(error)
            with self._lock:
                for event in batch:
                    event_id = str(event.get("uuid"))
                    if event_id in self._pending:
                        self._refused[event_id] = reason
                    else:
                        self.logger.debug("PostHog refused an event of no current batch")
        except Exception:  # never let a bookkeeping bug kill the SDK's thread
            self.logger.debug("could not record a PostHog failure", exc_info=True)

    def _reason(self, error: Exception) -> str:
        if isinstance(error, APIError):
            text = f"PostHog answered {error.status}: {error.message}"
        else:
            text = f"PostHog could not be reached ({type(error).__name__})"
        if self.options.max_retries and _retryable(error):
            text += f", after {self.options.max_retries + 1} attempts"
        if self._api_key:
            text = text.replace(self._api_key, "[redacted]")
        return text[:_REASON_CHARS]

    def _delivery_budget(self) -> float:
        """Seconds the SDK may need for one batch: every attempt, connect retry and wait."""
        options = self.options
        attempts = options.max_retries + 1
        per_attempt = _CONNECTS_PER_ATTEMPT * options.timeout
        return attempts * per_attempt + options.max_retries * _BACKOFF_CEILING + 1.0


def _retryable(error: Exception) -> bool:
    """What posthog's consumer retries: network errors, 408, 429 and 5xx."""
    if isinstance(error, APIError):
        status = error.status
        return isinstance(status, int) and (status in (408, 429) or status >= 500)
    return True
