"""Mixpanel destination: Mixpanel's Python SDK, fed by device mode, batched, every record accounted.

Options follow RudderStack's Mixpanel destination (`token`, `apiSecret`, `dataResidency`,
`people`, `groupKeySettings`...). The SDK builds every record (`Mixpanel.track`,
`people_set`, `group_set`...) into a collecting consumer; `handle_batch` then sends them with
the SDK's own `Consumer`, up to 50 records per request and endpoint, and returns each
message whose records Mixpanel refused or could not get, with the reason.

Why not `BufferedConsumer`: on a failed flush it keeps the whole buffer, batches already
delivered included (mixpanel-python#191: they are sent again), stops at the first failing
endpoint, and its exception names a batch, not the messages in it. Sending each batch
ourselves gives an exact answer per message and leaves nothing buffered after a handler
returns. The SDK's urllib3 retries are off (`retry_limit=0`): they honour a `Retry-After` of
up to six hours and cannot be interrupted; this wrapper retries timeouts, connection errors
and 5xx itself, a bounded number of times, with jittered backoff that `shutdown()` or
`interrupt()` ends; once either was called nothing more is sent (what is left is rejected).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any, Literal

import backoff
import mixpanel
import requests
from pydantic import Field, SecretStr, ValidationInfo, field_validator
from requests.exceptions import RetryError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from analytics_sdk.integration import (
    Integration,
    IntegrationContext,
    IntegrationOptions,
    Rejected,
    RejectedMessage,
    blank_is_unset,
)
from analytics_sdk.models import Message
from analytics_sdk_mixpanel._mapping import Mapper, Record, insert_id

if not hasattr(mixpanel, "ServiceAccountCredentials"):  # Consumer(credentials=) came in 5.2
    raise ImportError("the Mixpanel integration needs mixpanel>=5.2")

__all__ = ["MixpanelIntegration", "MixpanelOptions", "insert_id"]

HOSTS = {"us": "api.mixpanel.com", "eu": "api-eu.mixpanel.com", "in": "api-in.mixpanel.com"}
MAX_RECORDS = 50  # per request and endpoint, as the SDK's BufferedConsumer sends them
_PATHS = {"events": "/track", "people": "/engage", "groups": "/groups", "imports": "/import"}
_BACKOFF_BASE = 0.5  # seconds before the first retry, before jitter
_BACKOFF_CAP = 10.0  # seconds: the longest wait between two attempts
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::\d{1,5})?")
_5XX = re.compile(r"too many (\d{3}) error responses")
_LIST_KEYS = {  # the control plane sends these lists as [{"<key>": "value"}, ...]
    "people_properties": "property",
    "set_once_properties": "property",
    "event_increments": "property",
    "prop_increments": "property",
    "group_key_settings": "groupKey",
}


class MixpanelOptions(IntegrationOptions):
    token: SecretStr = Field(min_length=1, max_length=100)  # the project token
    api_secret: SecretStr | None = None  # apiSecret: enables /import (old events, $merge)
    service_account_user_name: str | None = None  # serviceAccountUserName, with the two below
    service_account_secret: SecretStr | None = None  # serviceAccountSecret
    project_id: str | None = Field(default=None, validate_default=True)  # projectId
    data_residency: Literal["us", "eu", "in"] = "us"  # dataResidency: which Mixpanel servers
    api_host: str | None = None  # host[:port] to send to instead (a proxy, a test server)
    identity_merge_api: Literal["original", "simplified"] = "original"  # identityMergeApi
    people: bool = False  # people: update user profiles (identify, revenue, increments)
    set_all_traits_by_default: bool = False  # setAllTraitsByDefault: every trait to the profile
    people_properties: tuple[str, ...] = ()  # peopleProperties: traits set on the profile
    set_once_properties: tuple[str, ...] = ()  # setOnceProperties: traits set only once
    event_increments: tuple[str, ...] = ()  # eventIncrements: events counted on the profile
    prop_increments: tuple[str, ...] = ()  # propIncrements: numeric properties added up
    group_key_settings: tuple[str, ...] = ()  # groupKeySettings: group keys for group calls
    consolidated_page_calls: bool = True  # consolidatedPageCalls: "Loaded a Page" for all
    track_categorized_pages: bool = False  # trackCategorizedPages: "Viewed <cat> <name> Page"
    track_named_pages: bool = False  # trackNamedPages: "Viewed <name> Page"
    source_name: str | None = Field(default=None, max_length=100)  # sourceName: a property
    timeout: float = Field(default=10.0, gt=0, le=120)  # seconds per request (connect, read)
    max_retries: int = Field(default=3, ge=0, le=10)  # retries of a timed-out or 5xx request

    @field_validator(
        "api_secret",
        "service_account_user_name",
        "service_account_secret",
        "api_host",
        "source_name",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return blank_is_unset(value)

    @field_validator("data_residency", mode="before")
    @classmethod
    def _residency(cls, value: Any) -> Any:
        return "us" if value in (None, "") else value

    @field_validator(*_LIST_KEYS, mode="before")
    @classmethod
    def _names(cls, value: Any, info: ValidationInfo) -> Any:
        """`[{"property": "plan"}, {"property": ""}]` or `["plan"]` -> `("plan",)`."""
        if value is None:
            return ()
        if not isinstance(value, (list, tuple)):
            raise ValueError(f'must be a list of {{"{_LIST_KEYS[str(info.field_name)]}": name}}')
        key = _LIST_KEYS[str(info.field_name)]
        names = (item.get(key) if isinstance(item, dict) else item for item in value)
        return tuple(name.strip() for name in names if isinstance(name, str) and name.strip())

    @field_validator("api_host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and not _HOST.fullmatch(value):
            raise ValueError(
                "must be a host name with an optional :port (like api-eu.mixpanel.com), "
                "without scheme or path"
            )
        return value

    @field_validator("project_id", mode="before")
    @classmethod
    def _project(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("project_id")
    @classmethod
    def _service_account(cls, value: str | None, info: ValidationInfo) -> str | None:
        given = (
            info.data.get("service_account_user_name") is not None,
            info.data.get("service_account_secret") is not None,
            value is not None,
        )
        if any(given) and not all(given):
            raise ValueError(
                "serviceAccountUserName, serviceAccountSecret and projectId go together: "
                "set all three or none"
            )
        return value

    @property
    def host(self) -> str:
        """Where requests go: `api_host`, else the `data_residency` servers."""
        return self.api_host or HOSTS[self.data_residency]

    @property
    def can_import(self) -> bool:
        """An API secret or a service account is set: events go to /import."""
        return self.api_secret is not None or self.project_id is not None


class MixpanelIntegration(Integration[MixpanelOptions]):
    """Every call type; see the package README for the mapping and what is rejected."""

    key = "mixpanel"
    display_name = "Mixpanel"
    destination_names = frozenset({"MP"})
    options_model = MixpanelOptions
    batch_size = MAX_RECORDS

    def __init__(self, options: MixpanelOptions, context: IntegrationContext | None = None) -> None:
        super().__init__(options, context)
        # Set by shutdown() or interrupt(): ends a retry wait at once, and nothing is sent
        # after it. Made here, not in setup(): interrupt() may come first and must stick.
        self._stop = threading.Event()
        self._consumer: Any = None

    def setup(self) -> None:
        options = self.options
        credentials = None
        if options.project_id is not None:
            assert options.service_account_user_name is not None  # the validator saw to it
            assert options.service_account_secret is not None
            credentials = mixpanel.ServiceAccountCredentials(
                options.service_account_user_name,
                options.service_account_secret.get_secret_value(),
                options.project_id,
            )
        self._consumer = mixpanel.Consumer(
            api_host=options.host,
            request_timeout=options.timeout,
            retry_limit=0,  # retried here: bounded, interruptible (module docstring)
            retry_backoff_factor=0,
            credentials=credentials,
        )
        self._mapper = Mapper(options, can_import=options.can_import)
        secrets = (options.token, options.api_secret, options.service_account_secret)
        self._secrets = [s.get_secret_value() for s in secrets if s is not None]

    def handle(self, message: Message) -> None:
        for rejected in self.handle_batch([message]):
            raise RejectedMessage(rejected.reason)

    def handle_batch(self, messages: Sequence[Message]) -> list[Rejected]:
        # Outcomes by position in `messages`, not by messageId: two messages may share one
        # (a replayed message next to another), and each is answered for itself.
        reasons: dict[int, str] = {}  # position -> why it did not (fully) reach Mixpanel
        by_endpoint: dict[str, list[tuple[int, Record]]] = {}
        for position, message in enumerate(messages):
            try:
                records = self._mapper.records(message)
            except RejectedMessage as exc:
                reasons[position] = exc.reason
                continue
            for record in records:
                by_endpoint.setdefault(record.endpoint, []).append((position, record))
        for endpoint, placed in by_endpoint.items():
            down: str | None = None  # this endpoint was unreachable: do not wait on it again
            for start in range(0, len(placed), MAX_RECORDS):
                chunk = placed[start : start + MAX_RECORDS]
                reason = down
                if reason is None:
                    reason, unreachable = self._send(endpoint, [record for _, record in chunk])
                    down = reason if unreachable else None
                if reason is not None:
                    for position, _ in chunk:
                        reasons.setdefault(position, reason)
        return [
            Rejected(message.message_id, reasons[position])
            for position, message in enumerate(messages)
            if position in reasons
        ]

    def interrupt(self) -> None:
        """The factory stopped waiting (from another thread): end a retry wait at once and
        send nothing more; the handler in progress rejects what it could not send."""
        self._stop.set()

    def shutdown(self, timeout: float) -> None:
        self._stop.set()
        # The SDK's Consumer has no close(); its pooled connections would linger until GC.
        session = getattr(self._consumer, "_session", None)
        if isinstance(session, requests.Session):
            session.close()

    def _send(self, endpoint: str, records: Sequence[Record]) -> tuple[str | None, bool]:
        """Post one batch: (None, False) when Mixpanel took it, else (why, unreachable)."""
        path = _PATHS[endpoint]
        body = "[" + ",".join(record.body for record in records) + "]"
        secret = self.options.api_secret if endpoint == "imports" else None
        waits = backoff.expo(base=2, factor=_BACKOFF_BASE, max_value=_BACKOFF_CAP)
        next(waits)  # backoff's generators are primed once before use
        attempts = self.options.max_retries + 1
        problem = ""
        for attempt in range(1, attempts + 1):
            if self._stop.is_set():  # interrupted, or shut down: the deadline has passed
                if attempt == 1:
                    return f"shutdown before sending to Mixpanel {path}", True
                return f"shutdown while retrying Mixpanel {path} ({problem})", True
            try:
                self._consumer.send(
                    endpoint, body, api_secret=secret.get_secret_value() if secret else None
                )
            except mixpanel.MixpanelException as exc:
                transient, problem = self._classify(exc)
                if not transient:
                    return self._scrub(f"Mixpanel refused the {path} request: {problem}"), False
            except (KeyError, TypeError) as exc:  # a reply the SDK cannot read (no "status")
                problem = f"unexpected reply ({type(exc).__name__})"
                return self._scrub(f"Mixpanel {path}: {problem}"), False
            else:
                return None, False
            if attempt < attempts:
                self.logger.debug("Mixpanel %s attempt %d failed (%s)", path, attempt, problem)
                if self._stop.wait(backoff.full_jitter(next(waits))):
                    return f"shutdown while retrying Mixpanel {path} ({problem})", True
        return self._scrub(f"Mixpanel {path} failed {attempts} time(s): {problem}"), True

    def _classify(self, exc: mixpanel.MixpanelException) -> tuple[bool, str]:
        """(worth retrying, what happened) for a failed `Consumer.send`."""
        cause = exc.__cause__
        if isinstance(cause, RetryError):  # a 5xx, turned into an error by retry_limit=0
            status = _5XX.search(str(cause))
            return True, f"HTTP {status.group(1) if status else '5xx'}"
        if isinstance(cause, (requests.ConnectionError, requests.Timeout)):
            inner = getattr(cause.args[0], "reason", None) if cause.args else None
            if isinstance(cause, requests.Timeout) or isinstance(inner, Urllib3Timeout):
                return True, f"no answer within {self.options.timeout:g} s"
            return True, type(inner if isinstance(inner, Exception) else cause).__name__
        if cause is not None:
            return False, type(cause).__name__
        text = str(exc)
        return False, (text.removeprefix("Mixpanel error: ") or "no reason given")[:300]

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text
