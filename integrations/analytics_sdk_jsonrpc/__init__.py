"""JSON-RPC destination: rows to a connector of yours, in any language, over JSON-RPC 2.0.

No extra to install: it uses requests, which analytics-sdk depends on already. The protocol
(README.md next to this file is the contract connectors implement):

* `setup()` calls `behavior` (the connector's `batchSize` and `operations`) and `validate`
  (the `configuration` option -> a list of errors; any error keeps the integration off).
* track, page and screen messages are `add` rows; identify and group messages are `change`
  rows; each row is the message as the data plane gets it, and `"idColumn": "messageId"`
  names its id. Alias has no operation and is not routed here.
* Each call carries at most `batchSize` rows; the connector answers the ids it refused in
  `rejectedRows`, which are reported through `on_error`. A call that fails as a whole (HTTP
  error, JSON-RPC error, retries exhausted, an answer not understood) rejects all its rows.

HTTP 408/429/5xx and network errors are retried with exponential backoff and full jitter,
up to `max_retries`; the retried request is the same, id included.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import backoff
import requests
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic.alias_generators import to_camel

from analytics_sdk import __version__
from analytics_sdk.errors import IntegrationUnavailableError
from analytics_sdk.integration import Integration, IntegrationOptions, Rejected, RejectedMessage
from analytics_sdk.models import Message

__all__ = [
    "ID_COLUMN",
    "MAX_BATCH_SIZE",
    "OPERATIONS",
    "JsonRpcHeader",
    "JsonRpcIntegration",
    "JsonRpcOptions",
]

ID_COLUMN = "messageId"  # the row field the connector names in rejectedRows
MAX_BATCH_SIZE = 1000  # the largest batchSize a connector may declare
OPERATIONS: dict[str, str] = {  # call type -> the method its rows go to
    "track": "add",
    "page": "add",
    "screen": "add",
    "identify": "change",
    "group": "change",
}
_RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
_BACKOFF_BASE = 0.5  # seconds before the first retry, before jitter
_BACKOFF_CAP = 30.0  # seconds: the longest step
_MAX_TEXT = 300  # characters kept of a text the connector sends (errors, reasons)
_MAX_ERRORS = 10  # validate errors shown


class JsonRpcHeader(BaseModel):
    """One header to send: `{"from": "Authorization", "to": "Bearer ..."}` in the config."""

    model_config = ConfigDict(frozen=True, extra="ignore", validate_by_name=True)

    name: str = Field(alias="from", min_length=1)
    value: SecretStr = Field(alias="to")  # header values are often credentials


class JsonRpcOptions(IntegrationOptions):
    url: str  # where the connector listens; every call is a POST here
    configuration: dict[str, Any] = Field(default_factory=dict, repr=False)  # may hold secrets
    headers: list[JsonRpcHeader] = Field(default_factory=list)
    timeout: float = Field(default=10.0, gt=0, le=300)  # seconds to connect, and to read
    max_retries: int = Field(default=3, ge=0, le=10)  # per call, for 408/429/5xx and network

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value


# -- what the connector answers ----------------------------------------------------------------


class _Answer(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        hide_input_in_errors=True,
    )


class _Behavior(_Answer):
    batch_size: int = Field(ge=1, le=MAX_BATCH_SIZE, strict=True)
    operations: frozenset[Literal["add", "change"]]

    @field_validator("operations", mode="before")
    @classmethod
    def _known_only(cls, value: Any) -> Any:
        if isinstance(value, list):  # operations added later to the protocol are skipped
            value = [op for op in value if op in ("add", "change")]
            if not value:
                raise ValueError("must name add, change or both")
        return value


class _RejectedRow(_Answer):
    id: str
    reason: str = "no reason given"


class _WriteResult(_Answer):
    rejected_rows: list[_RejectedRow] = Field(default_factory=list)


class _RpcError(_Answer):
    code: int
    message: str = ""


class _Response(_Answer):
    jsonrpc: Literal["2.0"]
    id: int | str | None
    result: Any = None
    error: _RpcError | None = None


T = TypeVar("T")
_ERRORS: TypeAdapter[list[str]] = TypeAdapter(list[str])


def _errors(value: Any) -> list[str]:
    """validate's result: a JSON array of strings, nothing else (strict: no coercion)."""
    return _ERRORS.validate_python(value, strict=True)


class _CallFailedError(Exception):
    """A call that brought no usable result; `reason` says why (never a secret)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _explain(exc: ValidationError) -> str:
    """One clause per problem, by path in the answer (never echoing the answer itself)."""
    problems = (
        f"{'.'.join(map(str, err['loc'])) or 'result'}: {err['msg']}"
        for err in exc.errors(include_input=False, include_url=False, include_context=False)
    )
    return _clip("; ".join(problems))


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


# -- the integration -------------------------------------------------------------------------


class JsonRpcIntegration(Integration[JsonRpcOptions]):
    """Rows to a JSON-RPC 2.0 connector; the rows it refuses are rejected with its reason."""

    key = "jsonrpc"
    display_name = "JSON-RPC"
    destination_names = frozenset({"JSONRPC"})
    options_model = JsonRpcOptions
    batch_size = MAX_BATCH_SIZE  # the factory's batch; calls carry the connector's batchSize
    supported_types = frozenset(OPERATIONS)  # alias: no operation takes it

    def setup(self) -> None:
        self._session = requests.Session()
        self._stop = threading.Event()
        self._ids = itertools.count(1)
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"analytics-sdk-python/{__version__} (jsonrpc)",
        }
        for header in self.options.headers:
            self._headers[header.name] = header.value.get_secret_value()
        try:
            self._behavior = self._ask("behavior", {}, _Behavior.model_validate)
            configuration = {"configuration": self.options.configuration}
            errors = self._ask("validate", configuration, _errors)
        except IntegrationUnavailableError:
            self._session.close()
            raise
        if errors:
            self._session.close()
            shown = "; ".join(_clip(e) for e in errors[:_MAX_ERRORS])
            more = f" (and {len(errors) - _MAX_ERRORS} more)" if len(errors) > _MAX_ERRORS else ""
            raise IntegrationUnavailableError(
                f"the connector refused the configuration: {shown}{more}"
            )
        missing = [t for t, op in OPERATIONS.items() if op not in self._behavior.operations]
        if missing:
            self.logger.warning(
                "the connector takes only %s rows: %s calls will be rejected",
                " and ".join(sorted(self._behavior.operations)),
                ", ".join(missing),
            )
        self.logger.info(
            "connector ready: batchSize %d, operations %s",
            self._behavior.batch_size,
            ", ".join(sorted(self._behavior.operations)),
        )

    def handle(self, message: Message) -> None:
        for rejected in self.handle_batch([message]):
            raise RejectedMessage(rejected.reason)

    def handle_batch(self, messages: Sequence[Message]) -> list[Rejected]:
        """Rows grouped by operation (in order of first appearance, order kept within each),
        sent in calls of at most batchSize rows; returns what was refused or not delivered."""
        rejected: list[Rejected] = []
        groups: dict[str, list[Message]] = {}
        for message in messages:
            operation = OPERATIONS.get(message.type)
            if operation is None:
                reason = f"{message.type} calls have no JSON-RPC operation"
                rejected.append(Rejected(message.message_id, reason))
            elif operation not in self._behavior.operations:
                reason = f"the connector does not take {operation} rows ({message.type} calls)"
                rejected.append(Rejected(message.message_id, reason))
            else:
                groups.setdefault(operation, []).append(message)
        size = self._behavior.batch_size
        for operation, group in groups.items():
            for start in range(0, len(group), size):
                rejected.extend(self._write(operation, group[start : start + size]))
        return rejected

    def shutdown(self, timeout: float) -> None:
        stop: threading.Event | None = getattr(self, "_stop", None)
        session: requests.Session | None = getattr(self, "_session", None)
        if stop is not None and session is not None:  # None: setup() never ran
            stop.set()  # ends a backoff wait at once
            session.close()

    # -- calls -------------------------------------------------------------------------------

    def _ask(self, method: str, params: dict[str, Any], parse: Callable[[Any], T]) -> T:
        """A setup call: its parsed result, or IntegrationUnavailableError saying why not."""
        try:
            return parse(self._call(method, params))
        except _CallFailedError as exc:
            raise IntegrationUnavailableError(
                f"the connector is not usable: {exc.reason}"
            ) from None
        except ValidationError as exc:
            raise IntegrationUnavailableError(
                f"the connector's answer to {method} is not understood: {_explain(exc)}"
            ) from None

    def _write(self, operation: str, chunk: Sequence[Message]) -> list[Rejected]:
        """One add or change call; the rows it did not deliver, with why."""
        params = {
            "idColumn": ID_COLUMN,
            "configuration": self.options.configuration,
            "rows": [message.to_wire() for message in chunk],
        }
        try:
            result = _WriteResult.model_validate(self._call(operation, params))
        except _CallFailedError as exc:
            reason = exc.reason
        except ValidationError as exc:
            reason = f"the connector's answer to {operation} is not understood: {_explain(exc)}"
        else:
            ids = {message.message_id for message in chunk}
            refused: dict[str, str] = {}
            for row in result.rejected_rows:
                if row.id in ids:
                    refused.setdefault(row.id, f"the connector refused it: {_clip(row.reason)}")
            strays = len({row.id for row in result.rejected_rows} - ids)
            if strays:
                self.logger.warning(
                    "the connector's answer to %s names %d id(s) not in the call; ignored",
                    operation,
                    strays,
                )
            return [Rejected(message_id, reason) for message_id, reason in refused.items()]
        self.logger.warning("%d %s row(s) not delivered: %s", len(chunk), operation, reason)
        return [Rejected(message.message_id, reason) for message in chunk]

    def _call(self, method: str, params: dict[str, Any]) -> Any:
        """The result of one JSON-RPC call, retried on transport failures; else _CallFailedError."""
        request_id = next(self._ids)
        request = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        body = json.dumps(request, separators=(",", ":")).encode()
        waits = backoff.expo(base=2, factor=_BACKOFF_BASE, max_value=_BACKOFF_CAP)
        next(waits)  # backoff's generators are primed once before use
        attempts = self.options.max_retries + 1
        problem = ""
        for attempt in range(1, attempts + 1):
            try:
                response = self._session.post(
                    self.options.url, data=body, headers=self._headers, timeout=self.options.timeout
                )
            except requests.RequestException as exc:
                problem = type(exc).__name__  # its text may repeat the URL: not shown
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return _result(method, request_id, response.content)
                if status not in _RETRY_STATUSES:
                    raise _CallFailedError(f"the connector answered {method} with HTTP {status}")
                problem = f"HTTP {status}"
            if attempt == attempts:
                break
            if self._stop.wait(backoff.full_jitter(next(waits))):
                raise _CallFailedError(f"shutdown while retrying {method} ({problem})")
        raise _CallFailedError(f"{method} failed after {attempts} attempt(s) ({problem})")


def _result(method: str, request_id: int, content: bytes) -> Any:
    """The `result` of a JSON-RPC response body, or _CallFailedError saying what was wrong."""
    try:
        response = _Response.model_validate_json(content)
    except ValidationError as exc:
        raise _CallFailedError(
            f"the connector's answer to {method} is not a JSON-RPC 2.0 response: {_explain(exc)}"
        ) from None
    if response.error is not None:
        error = response.error
        raise _CallFailedError(
            f"the connector answered {method} with JSON-RPC error {error.code}: "
            f"{_clip(error.message)}"
        )
    if response.id != request_id:
        raise _CallFailedError(
            f"the connector's answer to {method} has id {response.id!r}, not {request_id}"
        )
    if "result" not in response.model_fields_set:
        raise _CallFailedError(f"the connector's answer to {method} has neither result nor error")
    return response.result
