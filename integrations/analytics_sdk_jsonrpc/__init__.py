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
  Once a call found the connector unreachable (retries exhausted on timeouts, network errors
  or 408/429/5xx), the rest of the batch is rejected with the same reason, unsent.

HTTP 408/429/5xx and network errors are retried with exponential backoff and full jitter,
up to `max_retries`; the retried request is the same, id included. `shutdown()` and
`interrupt()` end a retry wait at once; after either, nothing more is sent.

Header values, the `configuration`'s strings and the URL's user:password are secrets here:
they are masked (`***`) in every reason and log line, whatever the connector echoes.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, TypeVar
from urllib.parse import unquote, urlsplit

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
from analytics_sdk.integration import (
    Integration,
    IntegrationContext,
    IntegrationOptions,
    Rejected,
    RejectedMessage,
    http_url,
)
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
_MIN_SECRET = 4  # shorter values are not masked: masking "a" would shred every text
_MAX_DEPTH = 16  # how deep configuration values are searched for strings to mask


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
        return http_url(value)


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
    """A call that brought no usable result; `reason` says why (never a secret).

    `unreachable`: the connector did not answer usefully after every attempt (timeouts,
    network errors, 408/429/5xx) or a stop came: the rest of the batch is not sent.
    """

    def __init__(self, reason: str, *, unreachable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unreachable = unreachable


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


def _secrets(options: JsonRpcOptions) -> list[str]:
    """What must never reach a reason or a log line, longest first (so a header value goes
    before the token inside it): header values and their credential part ("Bearer <token>"
    -> the token too), every string in `configuration` (nested), the URL's user and password.
    """
    found: set[str] = set()
    for header in options.headers:
        value = header.value.get_secret_value()
        found.add(value)
        found.update(value.split()[1:])  # "Bearer t0ken", "Basic dXNlcjpw": the credential
    found.update(_strings(options.configuration))
    parts = urlsplit(options.url)
    userinfo = parts.netloc.rpartition("@")[0]
    if userinfo:
        found.add(userinfo)
        found.update(userinfo.split(":", 1))
        found.update(unquote(part) for part in userinfo.split(":", 1))
    return sorted((s for s in found if len(s) >= _MIN_SECRET), key=len, reverse=True)


def _strings(value: Any, depth: int = 0) -> Iterator[str]:
    """Every string in a JSON-like value: dict values (not keys) and list items, nested."""
    if isinstance(value, str):
        yield value
    elif depth < _MAX_DEPTH and isinstance(value, dict):
        for item in value.values():
            yield from _strings(item, depth + 1)
    elif depth < _MAX_DEPTH and isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item, depth + 1)


# -- the integration -------------------------------------------------------------------------


class JsonRpcIntegration(Integration[JsonRpcOptions]):
    """Rows to a JSON-RPC 2.0 connector; the rows it refuses are rejected with its reason."""

    key = "jsonrpc"
    display_name = "JSON-RPC"
    destination_names = frozenset({"JSONRPC"})
    options_model = JsonRpcOptions
    batch_size = MAX_BATCH_SIZE  # the factory's batch; calls carry the connector's batchSize
    supported_types = frozenset(OPERATIONS)  # alias: no operation takes it

    def __init__(self, options: JsonRpcOptions, context: IntegrationContext | None = None) -> None:
        super().__init__(options, context)
        # Set by shutdown() or interrupt(): ends a retry wait at once, and nothing is sent
        # after it. Made here, not in setup(): interrupt() may come first and must stick.
        self._stop = threading.Event()
        self._secrets = _secrets(options)

    def setup(self) -> None:
        self._session = requests.Session()
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
            shown = "; ".join(self._text(e) for e in errors[:_MAX_ERRORS])
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
        down: str | None = None  # the connector proved unreachable: send nothing more
        unsent: dict[str, int] = {}
        for operation, group in groups.items():
            for start in range(0, len(group), size):
                chunk = group[start : start + size]
                if down is not None:
                    rejected.extend(Rejected(message.message_id, down) for message in chunk)
                    unsent[operation] = unsent.get(operation, 0) + len(chunk)
                    continue
                refused, down = self._write(operation, chunk)
                rejected.extend(refused)
        if unsent:
            self.logger.warning(
                "%s not sent: the connector is unreachable (%s)",
                ", ".join(f"{count} {operation} row(s)" for operation, count in unsent.items()),
                down,
            )
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

    # -- calls -------------------------------------------------------------------------------

    def _ask(self, method: str, params: dict[str, Any], parse: Callable[[Any], T]) -> T:
        """A setup call: its parsed result, or IntegrationUnavailableError saying why not."""
        try:
            return parse(self._call(method, params))
        except _CallFailedError as exc:
            raise IntegrationUnavailableError(
                self._scrub(f"the connector is not usable: {exc.reason}")
            ) from None
        except ValidationError as exc:
            raise IntegrationUnavailableError(
                self._scrub(
                    f"the connector's answer to {method} is not understood: {_explain(exc)}"
                )
            ) from None

    def _write(self, operation: str, chunk: Sequence[Message]) -> tuple[list[Rejected], str | None]:
        """One add or change call: the rows it did not deliver, with why, and the reason
        when the connector proved unreachable (else None)."""
        params = {
            "idColumn": ID_COLUMN,
            "configuration": self.options.configuration,
            "rows": [message.to_wire() for message in chunk],
        }
        down: str | None = None
        try:
            result = _WriteResult.model_validate(self._call(operation, params))
        except _CallFailedError as exc:
            reason = self._scrub(exc.reason)
            down = reason if exc.unreachable else None
        except ValidationError as exc:
            reason = self._scrub(
                f"the connector's answer to {operation} is not understood: {_explain(exc)}"
            )
        else:
            ids = {message.message_id for message in chunk}
            refused: dict[str, str] = {}
            for row in result.rejected_rows:
                if row.id in ids:
                    refused.setdefault(
                        row.id, f"the connector refused it: {self._text(row.reason)}"
                    )
            strays = len({row.id for row in result.rejected_rows} - ids)
            if strays:
                self.logger.warning(
                    "the connector's answer to %s names %d id(s) not in the call; ignored",
                    operation,
                    strays,
                )
            # One per message, not per id: two rows sharing a refused id are both refused.
            return [
                Rejected(message.message_id, refused[message.message_id])
                for message in chunk
                if message.message_id in refused
            ], None
        self.logger.warning("%d %s row(s) not delivered: %s", len(chunk), operation, reason)
        return [Rejected(message.message_id, reason) for message in chunk], down

    def _scrub(self, text: str) -> str:
        """`text` with every secret of the options (see `_secrets`) replaced by `***`."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _text(self, text: str) -> str:
        """A text the connector sent, for a reason: masked first, then clipped (clipping
        first could cut a secret in two, and leave half of it)."""
        return _clip(self._scrub(text))

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
            if self._stop.is_set():  # interrupted, or shut down: the deadline has passed
                if attempt == 1:
                    raise _CallFailedError(f"shutdown before {method} was sent", unreachable=True)
                raise _CallFailedError(
                    f"shutdown while retrying {method} ({problem})", unreachable=True
                )
            try:
                response = self._session.post(
                    self.options.url, data=body, headers=self._headers, timeout=self.options.timeout
                )
            except requests.RequestException as exc:
                problem = type(exc).__name__  # its text may repeat the URL: not shown
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return self._result(method, request_id, response.content)
                if status not in _RETRY_STATUSES:
                    raise _CallFailedError(f"the connector answered {method} with HTTP {status}")
                problem = f"HTTP {status}"
            if attempt == attempts:
                break
            if self._stop.wait(backoff.full_jitter(next(waits))):
                raise _CallFailedError(
                    f"shutdown while retrying {method} ({problem})", unreachable=True
                )
        raise _CallFailedError(
            f"{method} failed after {attempts} attempt(s) ({problem})", unreachable=True
        )

    def _result(self, method: str, request_id: int, content: bytes) -> Any:
        """The `result` of a JSON-RPC response body, or _CallFailedError saying what was wrong."""
        try:
            response = _Response.model_validate_json(content)
        except ValidationError as exc:
            raise _CallFailedError(
                f"the connector's answer to {method} is not a JSON-RPC 2.0 response: "
                f"{_explain(exc)}"
            ) from None
        if response.error is not None:
            error = response.error
            raise _CallFailedError(
                f"the connector answered {method} with JSON-RPC error {error.code}: "
                f"{self._text(error.message)}"
            )
        if response.id != request_id:
            raise _CallFailedError(
                f"the connector's answer to {method} has id {response.id!r}, not {request_id}"
            )
        if "result" not in response.model_fields_set:
            raise _CallFailedError(
                f"the connector's answer to {method} has neither result nor error"
            )
        return response.result
