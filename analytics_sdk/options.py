"""Client configuration: one frozen, validated object, its defaults and its environment."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypedDict
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from analytics_sdk._logging import logger
from analytics_sdk.errors import AnalyticsError, ConfigurationError, describe

__all__ = [
    "DEFAULT_FLUSH_AT",
    "DEFAULT_FLUSH_INTERVAL",
    "DEFAULT_FLUSH_TIMEOUT",
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_QUEUE_BYTES",
    "DEFAULT_MAX_QUEUE_SIZE",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "ClientOptions",
    "ClientOptionsKwargs",
    "ErrorCallback",
    "Middleware",
]

DEFAULT_FLUSH_AT = 100  # messages per batch
DEFAULT_FLUSH_INTERVAL = 0.5  # seconds a partial batch may wait
DEFAULT_MAX_BATCH_BYTES = 500_000  # request body before gzip: Segment's documented limit
DEFAULT_MAX_MESSAGE_BYTES = 32_000  # one serialized message: Segment's and RudderStack's
DEFAULT_MAX_QUEUE_SIZE = 100_000  # messages waiting in memory
DEFAULT_MAX_QUEUE_BYTES = 64 * 1024 * 1024  # their serialized size
DEFAULT_TIMEOUT = 10.0  # seconds per HTTP request
DEFAULT_MAX_RETRIES = 10  # retries per batch, so 11 attempts at most
DEFAULT_SHUTDOWN_TIMEOUT = 5.0  # seconds the exit-time flush may take
DEFAULT_FLUSH_TIMEOUT = 10.0  # seconds flush() waits unless told otherwise
DEFAULT_CONFIG_REFRESH_INTERVAL = 300.0  # seconds between sourceConfig fetches

# Bytes a batch envelope adds around its messages and each message adds inside it: the
# body is {"batch":[m1,m2],"sentAt":"<24 chars>"} and every message gets ,"sentAt":"..."
SENT_AT_LENGTH = len("2026-01-01T00:00:00.000Z")
ENVELOPE_BYTES = len('{"batch":[],"sentAt":""}') + SENT_AT_LENGTH
MESSAGE_OVERHEAD_BYTES = len(',"sentAt":""') + SENT_AT_LENGTH + 1  # +1: the comma between

ErrorCallback = Callable[[AnalyticsError, list[dict[str, Any]]], object]
Middleware = Callable[[dict[str, Any]], dict[str, Any] | None]

_ENV_WRITE_KEY = "ANALYTICS_SDK_WRITE_KEY"
_ENV_DATA_PLANE_URL = "ANALYTICS_SDK_DATA_PLANE_URL"
_ENV_CONTROL_PLANE_URL = "ANALYTICS_SDK_CONTROL_PLANE_URL"
_ENV_DISABLED = "ANALYTICS_SDK_DISABLED"


def _check_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain a user or password (the write key is the credential)")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"must be an http:// or https:// URL with a host (got scheme {parts.scheme!r})"
        )
    if parts.query or parts.fragment:
        raise ValueError("must not have a query string or fragment")
    return value.rstrip("/")


class ClientOptions(BaseModel):
    """Every knob of `Client`, validated once at construction. Durations are seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    write_key: SecretStr  # repr() and logs show '**********'
    data_plane_url: str | None = None  # None only when nothing is sent (send=False)
    control_plane_url: str | None = None
    source_config: dict[str, Any] | Path | None = Field(default=None, repr=False)  # API keys
    flush_at: int = Field(default=DEFAULT_FLUSH_AT, ge=1, le=100_000)
    flush_interval: float = Field(
        default=DEFAULT_FLUSH_INTERVAL, gt=0, le=3600, allow_inf_nan=False
    )
    max_batch_bytes: int = Field(default=DEFAULT_MAX_BATCH_BYTES, ge=1024)
    max_message_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, ge=256)
    max_queue_size: int = Field(default=DEFAULT_MAX_QUEUE_SIZE, ge=1)
    max_queue_bytes: int = Field(default=DEFAULT_MAX_QUEUE_BYTES, ge=1024)
    gzip: bool = True
    timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0, le=86_400, allow_inf_nan=False)
    max_retries: int = Field(default=DEFAULT_MAX_RETRIES, ge=0, le=100)
    sync_mode: bool = False
    send: bool = True
    strict: bool = False
    on_error: ErrorCallback | None = None
    stateful: bool = False
    identity_path: Path | None = None
    storage_path: Path | None = None
    # "normal": a row survives a crash or kill -9 of the process; "full": an OS crash or a
    # power cut too, at about a sixth of the speed (an fsync per call). README: durability.
    storage_sync: Literal["normal", "full"] = "normal"
    middleware: tuple[Middleware, ...] = ()
    integrations: tuple[Any, ...] = ()  # Integration instances (issue 3)
    config_refresh_interval: float = Field(
        default=DEFAULT_CONFIG_REFRESH_INTERVAL, gt=0, le=86_400, allow_inf_nan=False
    )
    config_cache_path: Path | None = None
    shutdown_timeout: float = Field(
        default=DEFAULT_SHUTDOWN_TIMEOUT, ge=0, le=86_400, allow_inf_nan=False
    )
    context: dict[str, Any] | None = None
    # A requests.Session (duck-typed so that importing the SDK does not import requests).
    session: Any = None
    proxies: dict[str, str] | None = Field(default=None, repr=False)  # may hold a password
    verify: bool | str | None = None  # None: requests' default (verify, with certifi)

    @field_validator("data_plane_url")
    @classmethod
    def _data_plane_url_is_http(cls, value: str | None) -> str | None:
        return _check_url(value)

    @field_validator("control_plane_url")
    @classmethod
    def _control_plane_url_is_http(cls, value: str | None) -> str | None:
        return _check_url(value)

    @field_validator("verify")
    @classmethod
    def _blank_verify_is_the_default(cls, value: bool | str | None) -> bool | str | None:
        if isinstance(value, str) and not value.strip():
            # requests reads a blank CA bundle path as "do not verify". A blank setting (an
            # unset environment variable passed through, say) must not switch TLS checks off.
            logger.warning("verify is blank, not a CA bundle path: TLS verification stays on")
            return None
        return value

    @field_validator("session")
    @classmethod
    def _session_is_a_requests_session(cls, value: Any) -> Any:
        needed = ("send", "prepare_request", "merge_environment_settings", "close")
        if value is not None and not all(callable(getattr(value, m, None)) for m in needed):
            raise ValueError("must be a requests.Session (or a subclass of it)")
        return value

    @model_validator(mode="after")
    def _limits_fit_together(self) -> ClientOptions:
        if self.flush_at > self.max_queue_size:
            raise ValueError(
                f"flush_at ({self.flush_at}) must be <= max_queue_size ({self.max_queue_size})"
            )
        largest_body = self.max_message_bytes + MESSAGE_OVERHEAD_BYTES + ENVELOPE_BYTES
        if largest_body > self.max_batch_bytes:
            raise ValueError(
                f"max_message_bytes ({self.max_message_bytes}) plus the batch envelope "
                f"({largest_body - self.max_message_bytes} bytes) must fit in "
                f"max_batch_bytes ({self.max_batch_bytes})"
            )
        if self.max_message_bytes > self.max_queue_bytes:
            raise ValueError(
                f"max_message_bytes ({self.max_message_bytes}) must be <= "
                f"max_queue_bytes ({self.max_queue_bytes})"
            )
        if self.send and self.data_plane_url is None:
            raise ValueError(
                f"data_plane_url is required (or set {_ENV_DATA_PLANE_URL}); "
                "only a client with send=False may go without one"
            )
        if self.send and not self.write_key.get_secret_value():
            raise ValueError(f"write_key is required (or set {_ENV_WRITE_KEY})")
        if self.storage_path is not None and self.sync_mode:
            raise ValueError(
                "storage_path cannot be combined with sync_mode: sync_mode sends before the "
                "call returns, so there is no queue to keep"
            )
        return self

    @classmethod
    def build(
        cls,
        write_key: str | None,
        data_plane_url: str | None,
        options: Mapping[str, Any],
        environ: Mapping[str, str] | None = None,
    ) -> ClientOptions:
        """Validate explicit arguments over the ANALYTICS_SDK_* environment.

        Raises:
            ConfigurationError: naming each bad field, what was wrong and the limit; the
                rejected values are never echoed (one of them may be the write key).
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = dict(options)
        values["write_key"] = write_key if write_key is not None else env.get(_ENV_WRITE_KEY, "")
        values["data_plane_url"] = data_plane_url or env.get(_ENV_DATA_PLANE_URL) or None
        if "control_plane_url" not in values and env.get(_ENV_CONTROL_PLANE_URL):
            values["control_plane_url"] = env[_ENV_CONTROL_PLANE_URL]
        if env.get(_ENV_DISABLED, "").strip().lower() in ("1", "true", "yes", "on"):
            values["send"] = False
        if not isinstance(values["write_key"], str):
            raise ConfigurationError("invalid client options: write_key: must be a string")
        try:
            values["write_key"].encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: no header or hash can carry it
            raise ConfigurationError(
                "invalid client options: write_key: is not valid Unicode text (it holds a "
                "lone surrogate; was it decoded from bytes with errors='surrogateescape'?)"
            ) from None
        try:
            return cls(**values)
        except ValidationError as exc:
            # `from None`: pydantic's own message would echo the input, maybe the key.
            raise ConfigurationError(f"invalid client options: {describe(exc)}") from None


class ClientOptionsKwargs(TypedDict, total=False):
    """The keyword options of `Client(...)`, for type checkers (see `ClientOptions`)."""

    control_plane_url: str | None
    source_config: dict[str, Any] | Path | None
    flush_at: int
    flush_interval: float
    max_batch_bytes: int
    max_message_bytes: int
    max_queue_size: int
    max_queue_bytes: int
    gzip: bool
    timeout: float
    max_retries: int
    sync_mode: bool
    send: bool
    strict: bool
    on_error: ErrorCallback | None
    stateful: bool
    identity_path: Path | str | None
    storage_path: Path | str | None
    storage_sync: Literal["normal", "full"]
    middleware: tuple[Middleware, ...] | list[Middleware]
    integrations: tuple[Any, ...] | list[Any]
    config_refresh_interval: float
    config_cache_path: Path | str | None
    shutdown_timeout: float
    context: dict[str, Any] | None
    session: Any
    proxies: dict[str, str] | None
    verify: bool | str | None
