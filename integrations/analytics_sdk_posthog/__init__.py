"""PostHog destination: every call through PostHog's own Python SDK (`posthog`).

Options follow RudderStack's PostHog destination (`teamApiKey`, `yourInstance`,
`propertyBlackList`). Each batch handed to the wrapper is queued into the SDK one request's
worth at a time (what the SDK's consumer sends as one `POST {host}/batch/`: up to 100 events
and 5 MiB); after each, the wrapper flushes the SDK and waits (bounded, per request) until
every event was sent or reported through the SDK's `on_error`. Events PostHog refused, or
could not get after the SDK's retries, come back as `Rejected` with PostHog's status and
answer, matched by event uuid (the messageId when it is a UUID). A request that outlives its
bound rejects its own events (they may still arrive) and everything after it, which is taken
back out of the SDK or never handed to it: nothing the SDK still holds is sent later
uncounted. The SDK's exit hook is removed: analytics_sdk's own exit flush delivers what is
still queued at exit, and then shuts the SDK down.

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
from posthog.consumer import BATCH_SIZE_LIMIT, MAX_MSG_SIZE
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
# Bytes of events handed to the SDK per flush. Its consumer ends a request at the event that
# brings it to BATCH_SIZE_LIMIT; it measures after `before_send` as we do, give or take a few
# bytes per event, so staying this far under it keeps each flush to one request.
_REQUEST_BYTES = BATCH_SIZE_LIMIT - 64 * 1024


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
    """Kept for compatibility; no longer raised.

    A request the SDK has not finished within the bound its own retries allow now rejects
    its events (and the rest of the batch) instead of failing the whole batch.
    """


class PostHogIntegration(Integration[PostHogOptions]):
    """All six calls: capture, $identify, $pageview, $screen, group_identify, alias."""

    key = "posthog"
    display_name = "PostHog"
    destination_names = frozenset({"POSTHOG"})
    options_model = PostHogOptions
    batch_size = 100  # the SDK's own flush_at: at most one /batch/ request per 5 MiB

    _client: PostHogClient | None = None

    def setup(self) -> None:
        options = self.options
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}  # event uuid -> how many of ours the SDK holds
        self._refused: dict[str, str] = {}  # event uuid -> why PostHog did not take it
        self._derived: dict[str, str] = {}  # event uuid -> the non-UUID messageId it came from
        self._oversized: dict[str, int] = {}  # event uuid -> its size, when over PostHog's limit
        self._size = 0  # the size of the event before_send passed last (the handler's thread)
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
        # posthog registers an exit hook per client. atexit runs hooks last-in first-out, so
        # it would run before analytics_sdk's exit flush (registered at import) and close the
        # SDK: what is still queued at exit would be rejected. Our exit flush ends with
        # shutdown(), which shuts the SDK down itself.
        atexit.unregister(self._client._atexit)
        sdk_logger.setLevel(level)  # the SDK sets its logger to WARNING: the app decides that

    # -- delivery ---------------------------------------------------------------------------

    def handle(self, message: Message) -> None:
        for rejected in self.handle_batch([message]):
            raise RejectedMessage(rejected.reason)

    def handle_batch(self, messages: Sequence[Message]) -> list[Rejected]:
        client = self._require_client()
        with self._lock:
            self._pending.clear()
            self._refused.clear()
            self._derived.clear()
            self._oversized.clear()
        reasons: list[str | None] = [None] * len(messages)  # by position; None: delivered
        request: list[tuple[int, str]] = []  # (position, event uuid), in the SDK's queue order
        request_bytes = 0
        not_sent: str | None = None  # once a request outlived its bound: hand over nothing more
        for index, message in enumerate(messages):
            if not_sent is not None:
                reasons[index] = not_sent
                continue
            try:
                event_id, size = self._submit(client, message)
            except RejectedMessage as exc:
                reasons[index] = exc.reason
                continue
            request.append((index, event_id))
            request_bytes += size
            if request_bytes >= _REQUEST_BYTES or len(request) >= self.batch_size:
                not_sent = self._deliver(client, request, reasons)
                request, request_bytes = [], 0
        if request:
            self._deliver(client, request, reasons)
        with self._lock:
            self._pending.clear()
            self._refused.clear()
            self._derived.clear()
        return [
            Rejected(message.message_id, reason)
            for message, reason in zip(messages, reasons, strict=True)
            if reason is not None
        ]

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

    def _deliver(
        self, client: PostHogClient, request: list[tuple[int, str]], reasons: list[str | None]
    ) -> str | None:
        """Flush what `request` queued and record each event's fate in `reasons`.

        Returns None when the SDK finished in time. Otherwise the reason for the messages of
        the batch not handed over yet: the events the SDK had not started to send are taken
        back out of its queue, the ones in the request it is still busy with may arrive.
        """
        budget = self._delivery_budget()
        client.flush(timeout_seconds=budget)
        unanswered, withdrawn = _withdraw(client, [event_id for _, event_id in request])
        answered = len(request) - unanswered  # the SDK sends in queue order, one request at once
        late = f"PostHog had not answered after {budget:.1f} s (the event may still arrive)"
        not_sent = f"not sent: PostHog had not answered an earlier request after {budget:.1f} s"
        with self._lock:
            for position, (index, event_id) in enumerate(request):
                if position < answered:
                    reasons[index] = self._refused.get(event_id)
                elif position < len(request) - withdrawn:
                    reasons[index] = late
                else:
                    reasons[index] = not_sent
            for _, event_id in request:
                self._refused.pop(event_id, None)
                self._release(event_id)
        return not_sent if unanswered else None

    def _release(self, event_id: str) -> None:
        """One event of ours with this uuid is no longer in the SDK (another may be)."""
        left = self._pending.get(event_id, 0) - 1
        if left > 0:
            self._pending[event_id] = left
        else:
            self._pending.pop(event_id, None)

    def _submit(self, client: PostHogClient, message: Message) -> tuple[str, int]:
        """Queue one message in the SDK (registered first: on_error may come at once).

        Returns the event uuid and its size in bytes.
        """
        call = to_posthog(message, self.options.group_type)
        _, derived = event_uuid(message.message_id)
        with self._lock:
            self._pending[call.uuid] = self._pending.get(call.uuid, 0) + 1
            if derived:
                self._derived[call.uuid] = message.message_id
        self._size = 0
        if self._send(client, call) is None:
            with self._lock:
                self._release(call.uuid)  # only this message's: another may share the uuid
                size = self._oversized.pop(call.uuid, None)
            if size is not None:
                raise RejectedMessage(
                    f"the event is {size} bytes, over PostHog's {MAX_MSG_SIZE // 1024} KiB limit"
                )
            raise RejectedMessage(
                "PostHog's SDK did not queue the event (queue full, shut down, or dropped "
                "by the SDK; see the 'posthog' logger)"
            )
        return call.uuid, self._size

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
        self._size = size
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
        """Seconds the SDK may need for one request: every attempt, connect retry and wait."""
        options = self.options
        attempts = options.max_retries + 1
        per_attempt = _CONNECTS_PER_ATTEMPT * options.timeout
        return attempts * per_attempt + options.max_retries * _BACKOFF_CEILING + 1.0


def _withdraw(client: PostHogClient, request: list[str]) -> tuple[int, int]:
    """After flushing `request` (event uuids): how many of its events the SDK has not finished,
    and how many of those were still in its queue, now taken out so they are never sent."""
    ours = set(request)
    queue = client.queue
    with queue.mutex:  # the consumer takes events and acknowledges them under this lock
        unfinished = queue.unfinished_tasks
        if not unfinished:
            return 0, 0
        kept = [
            event
            for event in queue.queue
            if not (isinstance(event, dict) and str(event.get("uuid")) in ours)
        ]
        withdrawn = len(queue.queue) - len(kept)
        if withdrawn:
            queue.queue.clear()
            queue.queue.extend(kept)
            queue.unfinished_tasks -= withdrawn
            if not queue.unfinished_tasks:
                queue.all_tasks_done.notify_all()
            queue.not_full.notify_all()
    # Events of an earlier request still unanswered (a batch that timed out) come first in
    # the SDK's order: while one of them is left, none of ours was answered.
    return min(len(request), unfinished), withdrawn


def _retryable(error: Exception) -> bool:
    """What posthog's consumer retries: network errors, 408, 429 and 5xx."""
    if isinstance(error, APIError):
        status = error.status
        return isinstance(status, int) and (status in (408, 429) or status >= 500)
    return True
